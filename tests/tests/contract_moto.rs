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
    ($($name:ident => $check:path;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let store = dynamo_store().await;
            $check(&store).await;
        }
    )*};
}

macro_rules! queue_on_sqs {
    ($($name:ident => $check:path;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let queue = sqs_queue().await;
            $check(&queue, &queue).await;
        }
    )*};
}

on_dynamo! {
    dedup_claim_then_held => contract::dedup_claim_then_held;
    dedup_expired_lease_is_taken_over => contract::dedup_expired_lease_is_taken_over;
    dedup_completed_until_it_expires => contract::dedup_completed_until_it_expires;
    dedup_release => contract::dedup_release;
    snapshot_versions => contract::snapshot_versions;
    snapshot_delete_portal => contract::snapshot_delete_portal;
    tokens_crud => contract::tokens_crud;
    attempts_oldest_first => contract::attempts_oldest_first;
    destination_disable_enable => contract::destination_disable_enable;
}

queue_on_sqs! {
    queue_send_receive => contract::queue_send_receive;
    queue_group_order => contract::queue_group_order;
    queue_retry_after => contract::queue_retry_after;
    queue_park_dead_letter => contract::queue_park_dead_letter;
    queue_redrive => contract::queue_redrive;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedup_racing_claims_have_one_winner() {
    let store: Arc<dyn DedupStore> = Arc::new(dynamo_store().await);
    contract::dedup_racing_claims_have_one_winner(store).await;
}
