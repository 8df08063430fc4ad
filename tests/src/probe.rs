//! What the consumer cases need to see of a queue beyond the `Queue` port: the parked
//! messages. Each backend (memory, SQLite, SQS on moto) implements it its own way.

use async_trait::async_trait;
use relay_core::ports::DeadLetter;

#[async_trait]
pub trait QueueProbe: Send + Sync {
    /// (body, reason) of every message parked in the dead-letter queue, oldest first. Bodies,
    /// not message ids: SQS gives a parked message a new id in the DLQ.
    async fn parked(&self) -> Vec<(String, String)>;
}

fn oldest_first(mut letters: Vec<DeadLetter>) -> Vec<(String, String)> {
    letters.sort_by_key(|d| d.parked_at_ms);
    letters.into_iter().map(|d| (d.body, d.reason)).collect()
}

/// The probe for any queue that lists its own dead letters (the embedded SQLite queue).
/// `keep` holds whatever must live as long as the store (its scratch directory).
pub struct PollingQueueProbe<K: Send + Sync = ()> {
    pub queue: std::sync::Arc<dyn relay_core::ports::PollingQueue>,
    pub keep: K,
}

#[async_trait]
impl<K: Send + Sync> QueueProbe for PollingQueueProbe<K> {
    async fn parked(&self) -> Vec<(String, String)> {
        oldest_first(
            self.queue
                .list_dead_letters()
                .await
                .expect("dead letters readable"),
        )
    }
}

#[async_trait]
impl QueueProbe for relay_aws::sqs::SqsQueue {
    async fn parked(&self) -> Vec<(String, String)> {
        oldest_first(
            self.list_dead_letters()
                .await
                .expect("DLQ readable on moto"),
        )
    }
}

/// The consumer's ports on a fresh embedded SQLite store in a scratch directory named after
/// `label`, with its probe (which keeps the directory alive).
pub fn sqlite_ports(
    label: &str,
) -> (
    relay_core::consume::ConsumerPorts,
    std::sync::Arc<dyn QueueProbe>,
) {
    let (ports, probe, _) = sqlite_ports_and_store(label);
    (ports, probe)
}

/// As `sqlite_ports`, and the store itself, for a test that receives from its queue.
pub fn sqlite_ports_and_store(
    label: &str,
) -> (
    relay_core::consume::ConsumerPorts,
    std::sync::Arc<dyn QueueProbe>,
    std::sync::Arc<relay_local::SqliteStore>,
) {
    let dir = crate::scratch::ScratchDir::new(label);
    let store = std::sync::Arc::new(
        relay_local::SqliteStore::open(dir.path()).expect("open the embedded store"),
    );
    let ports = relay_core::consume::ConsumerPorts {
        queue: store.clone(),
        dedup: store.clone(),
        snapshots: store.clone(),
        tokens: store.clone(),
        attempts: store.clone(),
        destinations: store.clone(),
    };
    let probe = PollingQueueProbe {
        queue: store.clone(),
        keep: dir,
    };
    (ports, std::sync::Arc::new(probe), store)
}
