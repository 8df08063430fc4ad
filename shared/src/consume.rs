//! Transport-free consumer: a batch of queue messages -> which of them failed.
//! For each event: claim its dedup key, fetch the entity's current state, diff it against the
//! last snapshot, forward it signed, record the attempt, then complete the claim.
//! (Interface fixed; the body is written by the consumer issue.)

use crate::config::RelayConfig;
use crate::ports::{
    AttemptLog, Bitrix24Rest, DedupStore, Queue, QueueMessage, SnapshotStore, TokenStore,
};
use std::sync::Arc;
use std::time::Duration;

/// The stores the consumer talks to: SQS + DynamoDB on AWS, SQLite in `relay serve`.
#[derive(Clone)]
pub struct ConsumerPorts {
    pub queue: Arc<dyn Queue>,
    pub dedup: Arc<dyn DedupStore>,
    pub snapshots: Arc<dyn SnapshotStore>,
    pub tokens: Arc<dyn TokenStore>,
    pub attempts: Arc<dyn AttemptLog>,
}

/// What became of a batch. Every message not listed in `failed` is done and may be deleted
/// (forwarded, skipped as a duplicate, or parked in the dead-letter queue). Failed messages
/// have already been given their retry delay through `Queue::retry_after`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchReport {
    pub failed: Vec<String>,
}

pub struct Consumer {
    #[allow(dead_code)]
    ports: ConsumerPorts,
    #[allow(dead_code)]
    config: RelayConfig,
}

impl Consumer {
    /// `bitrix24`: the REST client for enrichment, `None` when no credentials are configured.
    pub fn new(
        ports: ConsumerPorts,
        config: RelayConfig,
        bitrix24: Option<Arc<dyn Bitrix24Rest>>,
        http: reqwest::Client,
    ) -> Self {
        let _ = (bitrix24, http);
        Consumer { ports, config }
    }

    /// `remaining`: how long this invocation may still run; the dedup lease ends then.
    pub async fn process_batch(
        &self,
        messages: &[QueueMessage],
        remaining: Duration,
        now_ms: i64,
    ) -> BatchReport {
        let _ = (remaining, now_ms);
        BatchReport {
            failed: messages.iter().map(|m| m.message_id.clone()).collect(),
        }
    }
}
