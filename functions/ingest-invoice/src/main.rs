//! Function URL for Bitrix24/SalesMan invoice events: everything happens in `shared`.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::lambda::ingest::run(shared::event::Family::Invoice).await
}
