//! SQS FIFO consumer: claims, enriches, diffs and forwards each event (all in `shared`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shared::lambda::consumer::run().await
}
