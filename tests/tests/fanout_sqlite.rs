//! Fan-out to several route destinations on the embedded SQLite store (`relay serve`'s claims,
//! attempts and destination status), with a FIFO queue on a simulated clock.

use integration_tests::probe::QueueProbe;
use relay_core::consume::ConsumerPorts;
use std::sync::Arc;

async fn sqlite() -> (ConsumerPorts, Arc<dyn QueueProbe>) {
    integration_tests::probe::sqlite_ports("fanout")
}

integration_tests::fanout_case_tests!(sqlite);
