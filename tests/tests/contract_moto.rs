//! The ports' contract on the AWS adapters (`DynamoStore`, `SqsQueue`) over the wire against
//! the moto server that scripts/test.sh starts: the same checks as contract_sqlite.rs.

use integration_tests::contract;
use integration_tests::moto::{create_fifo_queues, create_table, moto_config, MAX_RECEIVE_COUNT};
use shared::aws::dynamo::DynamoStore;
use shared::aws::sqs::SqsQueue;
use shared::ports::DedupStore;
use std::sync::Arc;

/// A fresh table per test, through the functions' own SDK configuration.
async fn dynamo_store() -> DynamoStore {
    let config = moto_config().await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = create_table(&client).await;
    DynamoStore::new(client, table)
}

/// A fresh FIFO queue + DLQ per test.
async fn sqs_queue() -> SqsQueue {
    let config = moto_config().await;
    let client = aws_sdk_sqs::Client::new(&config);
    let queues = create_fifo_queues(&client, MAX_RECEIVE_COUNT).await;
    SqsQueue::new(client, queues.queue_url, Some(queues.dlq_url))
}

macro_rules! on_dynamo {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let store = dynamo_store().await;
            contract::$name(&store).await;
        }
    )*};
}

macro_rules! queue_on_sqs {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let queue = sqs_queue().await;
            contract::$name(&queue, &queue).await;
        }
    )*};
}

integration_tests::store_contract_tests!(on_dynamo);

integration_tests::queue_contract_tests!(queue_on_sqs);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedup_racing_claims_have_one_winner() {
    let store: Arc<dyn DedupStore> = Arc::new(dynamo_store().await);
    contract::dedup_racing_claims_have_one_winner(store).await;
}
