//! `relay replay` and `relay attempts` against SQS and DynamoDB (moto on loopback, started by
//! scripts/test.sh): with RELAY_QUEUE_URL / RELAY_DLQ_URL / RELAY_TABLE set, the commands leave
//! the embedded store alone and work on the AWS resources through the same adapters.

mod harness;

use harness::{run_relay, TempDir};
use integration_tests::moto::{
    create_fifo_queues, create_table, moto_config, moto_endpoint, MAX_RECEIVE_COUNT,
};
use relay_aws::dynamo::DynamoStore;
use relay_aws::sqs::SqsQueue;
use relay_core::event::{Family, RelayEvent, Source};
use relay_core::ports::{Attempt, AttemptLog, Queue};
use serde_json::json;
use std::time::Duration;

/// The AWS_* variables that point the relay's SDK at moto.
fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", moto_endpoint()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

fn event(entity: &str) -> RelayEvent {
    let data = json!({"FIELDS": {"ID": entity}});
    RelayEvent {
        v: 1,
        id: relay_core::event::envelope_id(Source::Bitrix24, "m1", "ONCRMDEALUPDATE", &data, 1),
        source: Source::Bitrix24,
        portal: "m1".into(),
        domain: None,
        family: Family::Deal,
        event: "ONCRMDEALUPDATE".into(),
        entity_type: None,
        entity_id: Some(entity.into()),
        ts: 1,
        received_at: "2026-11-23T10:00:00Z".into(),
        data,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_moves_the_sqs_dead_letter_back_to_the_queue() {
    let config = moto_config().await;
    let queues = create_fifo_queues(&aws_sdk_sqs::Client::new(&config), MAX_RECEIVE_COUNT).await;
    let sqs = SqsQueue::from_conf(&config, &queues.queue_url, Some(queues.dlq_url.clone()));
    let ev = event("42");
    sqs.send(&ev).await.unwrap();
    let received = sqs.receive(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(received.len(), 1);
    sqs.park_dead_letter(&received[0], "destination answered 400")
        .await
        .unwrap();
    sqs.delete(&received[0].receipt).await.unwrap();
    assert!(sqs
        .receive(10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());

    let dir = TempDir::new("aws-replay");
    let mut env = aws_env();
    env.push(("RELAY_QUEUE_URL", queues.queue_url.clone()));
    // Without the DLQ the command says what is missing and moves nothing.
    let (ok, _, err) =
        tokio::task::block_in_place(|| run_relay(dir.path(), &env, &["replay", "--all"]));
    assert!(!ok && err.contains("RELAY_DLQ_URL"), "{err}");

    env.push(("RELAY_DLQ_URL", queues.dlq_url.clone()));
    let (ok, out, err) =
        tokio::task::block_in_place(|| run_relay(dir.path(), &env, &["replay", "--id", &ev.id]));
    assert!(ok, "relay replay failed: {err}");
    assert!(
        out.contains("moved 1 ") && out.contains(&queues.queue_url),
        "{out}"
    );
    let back = sqs.receive(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(back.len(), 1, "the dead letter is on the main queue again");
    assert_eq!(
        serde_json::from_str::<RelayEvent>(&back[0].body).unwrap(),
        ev
    );
    for file in ["relay.db", "queue.db"] {
        assert!(
            !dir.path().join(file).exists(),
            "the embedded store is not touched when AWS is configured: {file}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_reads_the_dynamodb_attempt_log() {
    let config = moto_config().await;
    let table = create_table(&aws_sdk_dynamodb::Client::new(&config)).await;
    let store = DynamoStore::from_conf(&config, &table);
    for (at_ms, status, outcome) in [(1_000, Some(503), "retry"), (2_000, Some(200), "delivered")] {
        store
            .record(&Attempt {
                event_id: "ev-1".into(),
                at_ms: 1_795_428_000_000 + at_ms,
                destination: "https://example.test/hook".into(),
                status,
                latency_ms: 12,
                outcome: outcome.parse().expect("an outcome the consumer writes"),
                error: (outcome == "retry").then(|| "destination answered 503".to_string()),
                route: Some("default".into()),
            })
            .await
            .unwrap();
    }
    let dir = TempDir::new("aws-attempts");
    let mut env = aws_env();
    env.push(("RELAY_TABLE", table.clone()));
    let (ok, out, err) =
        tokio::task::block_in_place(|| run_relay(dir.path(), &env, &["attempts", "ev-1"]));
    assert!(ok, "relay attempts failed: {err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("  ")).collect();
    // The delivery is not kept on AWS (a write per event): the failure before it is.
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains("retry") && lines[0].contains("503") && lines[0].contains("answered 503"),
        "{out}"
    );
    assert!(out.contains("only failed attempts are kept"), "{out}");
    assert!(out.contains(&table), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_runs_the_handlers_on_sqs_and_dynamodb_when_they_are_configured() {
    let config = moto_config().await;
    let queues = create_fifo_queues(&aws_sdk_sqs::Client::new(&config), MAX_RECEIVE_COUNT).await;
    let table = create_table(&aws_sdk_dynamodb::Client::new(&config)).await;
    let destination = integration_tests::destination::Destination::start().await;
    let dir = TempDir::new("aws-invoke");
    let mut env = aws_env();
    env.extend([
        ("RELAY_QUEUE_URL", queues.queue_url.clone()),
        ("RELAY_DLQ_URL", queues.dlq_url.clone()),
        ("RELAY_TABLE", table.clone()),
        ("RELAY_B24_APP_TOKENS", "local-dev-app-token".to_string()),
        ("RELAY_DESTINATION_URL", destination.url()),
    ]);

    // Ingest: the Function URL sample lands on the SQS queue.
    let sample = harness::events_dir().join("ingest-deal/bitrix24-form.json");
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run_relay(
            dir.path(),
            &env,
            &["invoke", "ingest-deal", sample.to_str().unwrap()],
        )
    });
    assert!(ok, "{err}");
    let response: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(response["statusCode"], 202, "{response}");
    let id = serde_json::from_str::<serde_json::Value>(response["body"].as_str().unwrap()).unwrap()
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sqs = SqsQueue::from_conf(&config, &queues.queue_url, Some(queues.dlq_url.clone()));
    let queued = sqs.receive(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(
        serde_json::from_str::<RelayEvent>(&queued[0].body)
            .unwrap()
            .id,
        id
    );

    // Consumer: the sample SQS batch is forwarded once; the dedup records are in DynamoDB, so
    // the same batch again forwards nothing.
    let batch = harness::events_dir().join("consumer/sqs-fifo-deal-batch.json");
    for _ in 0..2 {
        let (ok, out, err) = tokio::task::block_in_place(|| {
            run_relay(
                dir.path(),
                &env,
                &["invoke", "consumer", batch.to_str().unwrap()],
            )
        });
        assert!(ok, "{err}");
        let response: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(response["batchItemFailures"], json!([]), "{response}");
    }
    assert_eq!(
        destination.delivered().len(),
        3,
        "three events in the sample batch, each once"
    );
    for file in ["relay.db", "queue.db"] {
        assert!(
            !dir.path().join(file).exists(),
            "the embedded store is not touched: {file}"
        );
    }
}
