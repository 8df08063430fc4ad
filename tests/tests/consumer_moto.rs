//! The consumer cases on DynamoDB + SQS over the wire, against the moto server that
//! scripts/test.sh starts (a fresh table and FIFO queue + DLQ per case).

use integration_tests::moto::{create_fifo_queues, create_table, moto_config, MAX_RECEIVE_COUNT};
use integration_tests::probe::QueueProbe;
use shared::aws::dynamo::DynamoStore;
use shared::aws::sqs::SqsQueue;
use shared::consume::ConsumerPorts;
use std::sync::Arc;

async fn moto() -> (ConsumerPorts, Arc<dyn QueueProbe>) {
    let config = moto_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    let table = create_table(&dynamo).await;
    // The cases read each event's whole history, deliveries included; the production
    // default (failures only) is held by cost_model.rs and contract_moto.rs.
    let store = Arc::new(DynamoStore::new(dynamo, table).with_deliveries_recorded(true));
    let sqs = aws_sdk_sqs::Client::new(&config);
    let queues = create_fifo_queues(&sqs, MAX_RECEIVE_COUNT).await;
    let queue = Arc::new(SqsQueue::new(sqs, queues.queue_url, Some(queues.dlq_url)));
    let ports = ConsumerPorts {
        queue: queue.clone(),
        dedup: store.clone(),
        snapshots: store.clone(),
        tokens: store.clone(),
        attempts: store.clone(),
        destinations: store,
    };
    (ports, queue)
}

integration_tests::consumer_case_tests!(moto);
