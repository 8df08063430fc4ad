//! Lambda glue for the consumer: SQS batch -> `Consumer::process_batch` -> partial failures.
//! The consumer stops starting messages when the invocation's time runs short and keeps the
//! message it works on invisible (ChangeMessageVisibility with its receipt handle) meanwhile.
//! Record bodies stay strings until `consume` parses them, so one message that is not even
//! JSON fails alone instead of failing the whole invocation (and so its whole batch).

use crate::resources::{process_parts, FunctionResources};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use relay_core::consume::{Consumer, ConsumerPorts};
use std::sync::Arc;
use std::time::Duration;

use relay_core::ports::QueueMessage;

/// Counted off the invocation's deadline before the consumer plans its batch: returning the
/// batch response after the last message takes a moment too.
const RESPONSE_MARGIN: Duration = Duration::from_secs(1);

/// One SQS batch: every record becomes a `QueueMessage`; the ones the consumer reports failed
/// (and every record it could not even read) go back as `batchItemFailures`.
pub async fn handle_sqs_event(
    consumer: &Consumer,
    event: LambdaEvent<SqsEvent>,
) -> SqsBatchResponse {
    let now = relay_core::clock::now();
    let now_ms = relay_core::clock::unix_ms(now);
    let remaining = event
        .context
        .deadline()
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .saturating_sub(RESPONSE_MARGIN);

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
            // Unknown counts as received before: only a known first receive goes out without a
            // dedup claim (see relay_core::consume).
            receive_count: record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|n| n.parse().ok())
                .unwrap_or(2),
            received_at_ms: relay_aws::sqs::first_receive_ms(
                record
                    .attributes
                    .get("ApproximateReceiveCount")
                    .map(String::as_str),
                record
                    .attributes
                    .get("ApproximateFirstReceiveTimestamp")
                    .map(String::as_str),
            ),
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

/// Runs the consumer function: the AWS stores and the consumer's parts (the Bitrix24 client's
/// per-portal rate limiter must outlive single invocations) are built once per cold start;
/// every SQS batch then goes to `serve`.
pub async fn run() -> Result<(), Error> {
    relay_core::logging::init_json_logs();
    let resources = FunctionResources::from_env().await?;
    resources.config.check_signing(true)?;
    // A routes file that does not load fails the init, with the loader's error in the log.
    let routes = relay_aws::routes_source::load_routes(&resources.config).await?;
    let store = resources.require_store()?;
    let ports = ConsumerPorts {
        queue: resources.queue.clone(),
        dedup: store.clone(),
        snapshots: store.clone(),
        tokens: store.clone(),
        attempts: store.clone(),
        destinations: store.clone(),
    };
    let consumer = process_parts(resources.config, store)?.consumer(ports, routes);
    serve(Arc::new(consumer)).await
}
