//! Lambda glue for the consumer: SQS batch -> `Consumer::process_batch` -> partial failures.
//! Record bodies stay strings until `consume` parses them, so one message that is not even
//! JSON fails alone instead of failing the whole invocation (and so its whole batch).

use crate::consume::Consumer;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ports::QueueMessage;

/// Leave this much of the invocation unclaimed: the lease must end before Lambda kills us,
/// or a crashed run would hold its events for a whole extra timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// One SQS batch: every record becomes a `QueueMessage`; the ones the consumer reports failed
/// (and every record it could not even read) go back as `batchItemFailures`.
pub async fn handle_sqs_event(
    consumer: &Consumer,
    event: LambdaEvent<SqsEvent>,
) -> SqsBatchResponse {
    let now = SystemTime::now();
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let remaining = event
        .context
        .deadline()
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .saturating_sub(LEASE_MARGIN);

    let mut messages = Vec::with_capacity(event.payload.records.len());
    let mut failures = Vec::new();
    for record in event.payload.records {
        let Some(message_id) = record.message_id else {
            // Without an id the record cannot even be reported; SQS redelivers it anyway.
            tracing::error!("SQS record without messageId");
            continue;
        };
        let (Some(receipt), Some(body)) = (record.receipt_handle, record.body) else {
            tracing::error!(%message_id, "SQS record without receipt handle or body");
            failures.push(message_id);
            continue;
        };
        messages.push(QueueMessage {
            group_id: record
                .attributes
                .get("MessageGroupId")
                .cloned()
                .unwrap_or_default(),
            receive_count: record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1),
            message_id,
            receipt,
            body,
        });
    }
    let report = consumer.process_batch(&messages, remaining, now_ms).await;
    failures.extend(report.failed);

    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures
        .into_iter()
        .map(|id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    response
}

/// Runs the Lambda loop around an already built consumer.
pub async fn serve(consumer: Arc<Consumer>) -> Result<(), Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let consumer = Arc::clone(&consumer);
        async move { Ok::<_, Error>(handle_sqs_event(&consumer, event).await) }
    }))
    .await
}

/// Runs the consumer function: builds clients once, then handles SQS batches.
///
/// TODO(integrator): build `ConsumerPorts` from the AWS adapters in `crate::aws` (SQS queue,
/// DynamoDB dedup/snapshots/tokens/attempts/destinations, written by the stores work), the
/// `Bitrix24Client` over the token store, then `serve(Arc::new(Consumer::new(..)))`.
pub async fn run() -> Result<(), Error> {
    crate::logging::init_json_logs();
    Err("consumer function is not wired yet: AWS ports are built by the integrator (see lambda::consumer::run)".into())
}
