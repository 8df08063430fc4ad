//! The consumer cases on the embedded SQLite store (`relay serve`'s ports).

use integration_tests::probe::QueueProbe;
use relay_core::consume::ConsumerPorts;
use std::sync::Arc;

async fn sqlite() -> (ConsumerPorts, Arc<dyn QueueProbe>) {
    integration_tests::probe::sqlite_ports("consumer")
}

integration_tests::consumer_case_tests!(sqlite);

#[tokio::test]
async fn first_receive_stays_hidden_while_its_post_is_slow() {
    let (ports, probe, store) = integration_tests::probe::sqlite_ports_and_store("hidden");
    integration_tests::consumer_cases::first_receive_stays_hidden_while_its_post_is_slow(
        ports, probe, store,
    )
    .await;
}
