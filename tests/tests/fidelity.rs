//! The Bitrix24 fidelity cases (`integration_tests::fidelity_cases`) on the in-memory store
//! and on the embedded SQLite store, against the loopback portal.

use integration_tests::memory::MemoryStore;
use integration_tests::probe::QueueProbe;
use relay_core::consume::ConsumerPorts;
use std::sync::Arc;

async fn memory() -> (ConsumerPorts, Arc<dyn QueueProbe>) {
    let store = MemoryStore::new();
    (store.ports(), store)
}

async fn sqlite() -> (ConsumerPorts, Arc<dyn QueueProbe>) {
    integration_tests::probe::sqlite_ports("fidelity")
}

mod on_memory {
    use super::*;
    integration_tests::fidelity_case_tests!(memory);
}

mod on_sqlite {
    use super::*;
    integration_tests::fidelity_case_tests!(sqlite);
}
