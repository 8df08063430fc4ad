//! Function URL for Bitrix24/SalesMan contact events: everything happens in `shared`.

// One thread: an ingest function handles one event at a time, and a cold start need not
// spawn a worker pool first.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::lambda::ingest::run(shared::event::Family::Contact).await
}
