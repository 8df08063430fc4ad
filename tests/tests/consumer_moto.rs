//! The consumer cases on DynamoDB + SQS over the wire, against the moto server that
//! scripts/test.sh starts (a fresh table and FIFO queue + DLQ per case).

use integration_tests::probe::QueueProbe;
use relay_core::consume::ConsumerPorts;
use std::sync::Arc;

async fn moto() -> (ConsumerPorts, Arc<dyn QueueProbe>) {
    let (ports, queue) = integration_tests::moto::consumer_ports().await;
    (ports, queue)
}

integration_tests::consumer_case_tests!(moto);

#[tokio::test]
async fn first_receive_stays_hidden_while_its_post_is_slow() {
    let (ports, queue) = integration_tests::moto::consumer_ports().await;
    integration_tests::consumer_cases::first_receive_stays_hidden_while_its_post_is_slow(
        ports,
        queue.clone(),
        queue,
    )
    .await;
}
