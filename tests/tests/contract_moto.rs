//! The ports' contract on the AWS adapters (`DynamoStore`, `SqsQueue`) over the wire against
//! the moto server that scripts/test.sh starts: the same checks as contract_sqlite.rs.

use aws_sdk_dynamodb::types::AttributeValue;
use integration_tests::contract;
use integration_tests::moto::{create_fifo_queues, create_table, moto_config, MAX_RECEIVE_COUNT};
use relay_aws::dynamo::DynamoStore;
use relay_aws::sqs::SqsQueue;
use relay_core::catalogue::EntityType;
use relay_core::event::{Family, Source};
use relay_core::ports::{DedupStore, Snapshot, SnapshotKey, SnapshotSave, SnapshotStore};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh table per test, through the functions' own SDK configuration.
async fn dynamo_store() -> DynamoStore {
    let config = moto_config().await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = create_table(&client).await;
    // The contract: what is recorded is listed. Which outcomes the consumer's AWS store keeps
    // is `the_aws_attempt_log_keeps_failures_only` below.
    DynamoStore::new(client, table).with_deliveries_recorded(true)
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

fn deal_key(portal: &str, id: usize) -> SnapshotKey {
    SnapshotKey {
        source: Source::Bitrix24,
        portal: portal.to_string(),
        family: Family::Deal,
        entity_type: EntityType::Deal,
        entity_id: id.to_string(),
    }
}

/// The raw snapshot item of `key`, read as the table holds it.
async fn raw_snapshot(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &SnapshotKey,
) -> std::collections::HashMap<String, AttributeValue> {
    client
        .get_item()
        .table_name(table)
        .key(
            "pk",
            AttributeValue::S(format!("SNAP#{}#{}", key.source, key.portal)),
        )
        .key(
            "sk",
            AttributeValue::S(format!(
                "{}#{}#{}",
                key.family, key.entity_type, key.entity_id
            )),
        )
        .send()
        .await
        .unwrap()
        .item
        .expect("the snapshot lives in its portal's partition")
}

/// A snapshot expires `ttl` after it was last written (DynamoDB's TTL attribute, Unix
/// seconds); with no TTL configured it carries none.
#[tokio::test]
async fn snapshots_carry_their_expiry_from_the_last_write() {
    let config = moto_config().await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = create_table(&client).await;
    let ttl = std::time::Duration::from_secs(30 * 86_400);
    let store = DynamoStore::new(client.clone(), &table).with_snapshot_ttl(Some(ttl));
    let key = deal_key("ttl-portal", 1);
    let snap = Snapshot {
        entity: serde_json::json!({"ID": "1"}),
        version: 1,
        delivered: Vec::new(),
    };
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(store.save(&key, &snap).await.unwrap(), SnapshotSave::Saved);
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let item = raw_snapshot(&client, &table, &key).await;
    let expires: i64 = item[relay_aws::dynamo::TTL_ATTRIBUTE]
        .as_n()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (before + 30 * 86_400..=after + 30 * 86_400).contains(&expires),
        "expires_at {expires} is not 30 days after the write ({before}..{after})"
    );

    let forever = DynamoStore::new(client.clone(), &table).with_snapshot_ttl(None);
    let key = deal_key("ttl-portal", 2);
    assert_eq!(
        forever.save(&key, &snap).await.unwrap(),
        SnapshotSave::Saved
    );
    let item = raw_snapshot(&client, &table, &key).await;
    assert!(!item.contains_key(relay_aws::dynamo::TTL_ATTRIBUTE));
}

/// Snapshot items written before snapshots were packed (the entity deflated or plain text,
/// the deliveries a JSON text, apart) are still read; the next save rewrites the item packed,
/// and nothing of the old layout is left in it.
#[tokio::test]
async fn snapshots_written_before_packing_are_read_and_rewritten_packed() {
    let config = moto_config().await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = create_table(&client).await;
    let store = DynamoStore::new(client.clone(), &table);
    let entity =
        serde_json::json!({"ID": "1", "TITLE": "Сделка", "LEAD_ID": null, "UF_CRM_1": ["a"]});
    let text = entity.to_string();
    let delivered = r#"[{"id":"0123456789abcdef0123456789abcdef","at":1796000000}]"#;
    let legacy_entities = [
        AttributeValue::B(miniz_oxide::deflate::compress_to_vec(text.as_bytes(), 9).into()),
        AttributeValue::S(text.clone()),
    ];
    for (id, legacy) in legacy_entities.into_iter().enumerate() {
        let key = deal_key("legacy-portal", id);
        client
            .put_item()
            .table_name(&table)
            .item(
                "pk",
                AttributeValue::S("SNAP#bitrix24#legacy-portal".into()),
            )
            .item("sk", AttributeValue::S(format!("deal#deal#{id}")))
            .item("entity", legacy)
            .item("version", AttributeValue::N("3".into()))
            .item("delivered", AttributeValue::S(delivered.into()))
            .send()
            .await
            .unwrap();
        let loaded = store.load(&key).await.unwrap().expect("a legacy snapshot");
        assert_eq!(loaded.entity, entity);
        assert_eq!(loaded.version, 3);
        assert!(loaded.remembers("0123456789abcdef0123456789abcdef"));

        assert_eq!(
            store.save(&key, &loaded).await.unwrap(),
            SnapshotSave::Saved
        );
        let item = raw_snapshot(&client, &table, &key).await;
        assert!(item.contains_key(relay_aws::dynamo::PACKED_ATTRIBUTE));
        assert!(!item.contains_key("entity") && !item.contains_key("delivered"));
        assert_eq!(store.load(&key).await.unwrap(), Some(loaded));
    }
}

/// More snapshots than one Query page: the uninstall pages through the portal's partition
/// and deletes them all, and nothing of another portal.
#[tokio::test]
async fn a_portal_with_many_snapshots_is_forgotten_page_by_page() {
    let store = dynamo_store().await;
    let snap = Snapshot {
        entity: serde_json::json!({"ID": "x"}),
        version: 1,
        delivered: Vec::new(),
    };
    let count = 230;
    for id in 0..count {
        store.save(&deal_key("busy", id), &snap).await.unwrap();
    }
    store.save(&deal_key("quiet", 1), &snap).await.unwrap();
    assert_eq!(
        store.delete_portal(Source::Bitrix24, "busy").await.unwrap(),
        count
    );
    for id in [0, 99, 100, 229] {
        assert_eq!(store.load(&deal_key("busy", id)).await.unwrap(), None);
    }
    assert!(store.load(&deal_key("quiet", 1)).await.unwrap().is_some());
}

/// On AWS a delivery costs no attempt write: the log keeps retries, dead letters and the like.
#[tokio::test]
async fn the_aws_attempt_log_keeps_failures_only() {
    use relay_core::ports::{Attempt, AttemptLog};
    let config = moto_config().await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let store = DynamoStore::new(client.clone(), create_table(&client).await);
    let attempt = |at_ms: i64, outcome: &str| Attempt {
        event_id: "ev-kept".into(),
        at_ms,
        destination: "https://example.test/hook".into(),
        status: Some(if outcome == "retry" { 503 } else { 200 }),
        latency_ms: 5,
        outcome: outcome.parse().expect("an outcome the consumer writes"),
        error: None,
        route: None,
    };
    store.record(&attempt(1_000, "retry")).await.unwrap();
    store.record(&attempt(2_000, "delivered")).await.unwrap();
    store.record(&attempt(3_000, "skipped")).await.unwrap();
    let kept: Vec<String> = store
        .list("ev-kept")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.outcome.as_str().to_string())
        .collect();
    assert_eq!(kept, ["retry", "skipped"]);
}
