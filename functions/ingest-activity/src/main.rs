//! Function URL for Bitrix24/SalesMan activity events: everything happens in `relay-lambda` and `relay-core`.

// One thread: an ingest function handles one event at a time, and a cold start need not
// spawn a worker pool first.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    relay_lambda::ingest::run(relay_core::event::Family::Activity).await
}
