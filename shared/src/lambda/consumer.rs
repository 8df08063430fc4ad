//! Lambda glue for the consumer: SQS batch -> `Consumer::process_batch` -> partial failures.
//! (Stub: filled by the consumer issue.)

/// Runs the consumer function: builds clients once, then handles SQS batches.
pub async fn run() -> Result<(), lambda_runtime::Error> {
    Err("consumer function not implemented yet".into())
}
