//! The consumer cases on the embedded SQLite store (`relay serve`'s ports).

use integration_tests::probe::QueueProbe;
use relay_core::consume::ConsumerPorts;
use std::sync::Arc;

async fn sqlite() -> (ConsumerPorts, Arc<dyn QueueProbe>) {
    integration_tests::probe::sqlite_ports("consumer")
}

integration_tests::consumer_case_tests!(sqlite);
