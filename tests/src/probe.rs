//! What the consumer cases need to see of a queue beyond the `Queue` port: the parked
//! messages. Each backend (memory, SQLite, SQS on moto) implements it its own way.

use async_trait::async_trait;

#[async_trait]
pub trait QueueProbe: Send + Sync {
    /// (message id, reason) of every message parked in the dead-letter queue, oldest first.
    async fn parked(&self) -> Vec<(String, String)>;
}
