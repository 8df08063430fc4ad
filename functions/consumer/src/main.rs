//! SQS FIFO consumer: claims, enriches, diffs and forwards each event (all in `relay-lambda` and `relay-core`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    relay_lambda::consumer::run().await
}
