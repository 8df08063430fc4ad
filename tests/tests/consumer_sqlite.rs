//! The consumer cases on the embedded SQLite store (`relay serve`'s ports).

use integration_tests::probe::{PollingQueueProbe, QueueProbe};
use integration_tests::scratch::ScratchDir;
use shared::consume::ConsumerPorts;
use shared::local::SqliteStore;
use std::sync::Arc;

async fn sqlite() -> (ConsumerPorts, Arc<dyn QueueProbe>) {
    let dir = ScratchDir::new("consumer");
    let store = Arc::new(SqliteStore::open(dir.path()).expect("open the embedded store"));
    let ports = ConsumerPorts {
        queue: store.clone(),
        dedup: store.clone(),
        snapshots: store.clone(),
        tokens: store.clone(),
        attempts: store.clone(),
        destinations: store.clone(),
    };
    let probe = PollingQueueProbe {
        queue: store,
        keep: dir,
    };
    (ports, Arc::new(probe))
}

integration_tests::consumer_case_tests!(sqlite);
