//! Scheduled Bitrix24 offline-event drain (EventBridge schedule): everything happens in `relay-lambda`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    relay_lambda::offline_poller::run().await
}
