//! The consumer half of `relay serve`: what the SQS event source mapping does on AWS, done
//! by hand on the embedded queue. Receive a batch, hand it to `Consumer::process_batch`,
//! delete what is done; back off while the queue is empty; stop between batches on shutdown.

use relay_core::consume::Consumer;
use relay_core::ports::PollingQueue;
use relay_local::SqliteStore;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// SQS's largest batch, as the Lambda event source mapping would deliver.
pub const BATCH_SIZE: usize = 10;
/// Polls while idle start at this interval and double up to `IDLE_MAX`; a new event wakes
/// the loop at once anyway (through `queued`).
const IDLE_MIN: Duration = Duration::from_millis(25);
const IDLE_MAX: Duration = Duration::from_secs(1);
/// After a store error, wait this long before trying again.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
pub struct DrainSettings {
    /// How long one batch may take, like the consumer Lambda's timeout: the dedup lease of
    /// its events ends then.
    pub batch_timeout: Duration,
}

impl DrainSettings {
    /// Visibility timeout at least 6 × the consumer timeout, AWS's rule for SQS event sources
    /// (and template.yaml's), so a batch that is still running is never handed out twice.
    pub fn visibility(&self) -> Duration {
        self.batch_timeout * 6
    }
}

/// Runs until `stop` turns true; a batch already received is always finished first.
pub async fn drain_queue(
    queue: Arc<SqliteStore>,
    consumer: Arc<Consumer>,
    queued: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    settings: DrainSettings,
) {
    let mut idle = IDLE_MIN;
    while !*stop.borrow() {
        let now_ms = relay_core::clock::now_unix_ms();
        let messages = match queue
            .receive(BATCH_SIZE, settings.visibility(), now_ms)
            .await
        {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(error = %err, "embedded queue: receive failed; retrying");
                pause(&mut stop, &queued, STORE_ERROR_PAUSE).await;
                continue;
            }
        };
        if messages.is_empty() {
            pause(&mut stop, &queued, idle).await;
            idle = (idle * 2).min(IDLE_MAX);
            continue;
        }
        idle = IDLE_MIN;
        let report = consumer
            .process_batch(&messages, settings.batch_timeout, now_ms)
            .await;
        let failed: HashSet<&str> = report.failed.iter().map(String::as_str).collect();
        let done: Vec<String> = messages
            .iter()
            .filter(|m| !failed.contains(m.message_id.as_str()))
            .map(|m| m.receipt.clone())
            .collect();
        // A failed delete only means the messages come back after their visibility timeout;
        // the consumer then skips them as delivered, so nothing is forwarded twice.
        if let Err(err) = queue.delete_batch(done).await {
            tracing::warn!(error = %err, messages = messages.len() - failed.len(),
                "embedded queue: delete failed; the messages will be skipped as duplicates");
        }
    }
}

/// Sleeps for `period`, or less when an event is queued or shutdown begins.
async fn pause(stop: &mut watch::Receiver<bool>, queued: &Notify, period: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(period) => {}
        _ = queued.notified() => {}
        _ = stop.changed() => {}
    }
}

pub use relay_core::clock::unix_ms;
