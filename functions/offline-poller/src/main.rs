//! Scheduled Bitrix24 offline-event drain (EventBridge schedule): everything happens in `shared`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::offline_poller::run().await
}
