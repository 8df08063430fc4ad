//! Function URL for Bitrix24/SalesMan requisite events: everything happens in `shared`.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::lambda::ingest::run(shared::event::Family::Requisite).await
}
