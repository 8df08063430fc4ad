//! What the consumer cases need to see of a queue beyond the `Queue` port: the parked
//! messages. Each backend (memory, SQLite, SQS on moto) implements it its own way.

use async_trait::async_trait;

#[async_trait]
pub trait QueueProbe: Send + Sync {
    /// (message id, reason) of every message parked in the dead-letter queue, oldest first.
    async fn parked(&self) -> Vec<(String, String)>;
}

/// The probe for any queue that lists its own dead letters (the embedded SQLite queue).
pub struct PollingQueueProbe(pub std::sync::Arc<dyn shared::ports::PollingQueue>);

#[async_trait]
impl QueueProbe for PollingQueueProbe {
    async fn parked(&self) -> Vec<(String, String)> {
        let mut letters = self
            .0
            .list_dead_letters()
            .await
            .expect("dead letters readable");
        letters.sort_by_key(|d| d.parked_at_ms);
        letters
            .into_iter()
            .map(|d| (d.message_id, d.reason))
            .collect()
    }
}
