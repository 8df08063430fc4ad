//! The Bitrix24 fidelity cases (`integration_tests::fidelity_cases`) on the in-memory store
//! and on the embedded SQLite store, against the loopback portal.

use integration_tests::memory::MemoryStore;
use integration_tests::probe::{PollingQueueProbe, QueueProbe};
use integration_tests::scratch::ScratchDir;
use shared::consume::ConsumerPorts;
use shared::local::SqliteStore;
use std::sync::Arc;

async fn memory() -> (ConsumerPorts, Arc<dyn QueueProbe>) {
    let store = MemoryStore::new();
    (store.ports(), store)
}

async fn sqlite() -> (ConsumerPorts, Arc<dyn QueueProbe>) {
    let dir = ScratchDir::new("fidelity");
    let store = Arc::new(SqliteStore::open(dir.path()).expect("open the embedded store"));
    let ports = ConsumerPorts {
        queue: store.clone(),
        dedup: store.clone(),
        snapshots: store.clone(),
        tokens: store.clone(),
        attempts: store.clone(),
        destinations: store.clone(),
    };
    (
        ports,
        Arc::new(PollingQueueProbe {
            queue: store,
            keep: dir,
        }),
    )
}

mod on_memory {
    use super::*;
    integration_tests::fidelity_case_tests!(memory);
}

mod on_sqlite {
    use super::*;
    integration_tests::fidelity_case_tests!(sqlite);
}
