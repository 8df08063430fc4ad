//! The embedded store's promises beyond the shared contract: what was committed survives a
//! restart, a burst of concurrent sends all land exactly once (group commit), and the outbox
//! gets one JSON line per forward.

use integration_tests::contract::{now_ms, sample_event};
use integration_tests::scratch::ScratchDir;
use relay_core::ports::{Claim, DedupStore, Outbox, PollingQueue, Queue};
use relay_local::SqliteStore;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test]
async fn committed_state_survives_reopening() {
    let dir = ScratchDir::new("reopen");
    let events: Vec<_> = (0..5)
        .map(|n| sample_event("portal", &n.to_string(), n))
        .collect();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        for e in &events {
            store.send(e).await.unwrap();
        }
        store
            .complete("done-id", "consumer-a", i64::MAX)
            .await
            .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.queue_depth().await.unwrap(), 5);
    assert_eq!(
        store.claim("done-id", "consumer-a", 1, 0).await.unwrap(),
        Claim::AlreadyCompleted
    );
    let got = store
        .receive(10, Duration::from_secs(30), now_ms())
        .await
        .unwrap();
    let ids: HashSet<String> = got
        .iter()
        .map(|m| {
            serde_json::from_str::<relay_core::event::RelayEvent>(&m.body)
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(ids, events.iter().map(|e| e.id.clone()).collect());
}

/// 10,000 events from 32 concurrent senders (the load script's shape): every one is queued,
/// none twice. Prints the rate; the rate itself is not asserted (no timed tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_concurrent_sends_lands_exactly_once() {
    const SENDERS: usize = 32;
    const EVENTS: usize = 10_000;
    let dir = ScratchDir::new("burst");
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let started = Instant::now();
    let tasks: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for n in (sender..EVENTS).step_by(SENDERS) {
                    let event = sample_event("burst", &(n % 500).to_string(), n as i64);
                    store.send(&event).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "sqlite burst: {EVENTS} sends from {SENDERS} senders in {:.2?} ({:.0}/s)",
        elapsed,
        EVENTS as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(store.queue_depth().await.unwrap(), EVENTS);
    // Drain: each of the 500 groups gives one message per receive.
    let mut seen = HashSet::new();
    for _ in 0..EVENTS {
        let got = store
            .receive(500, Duration::from_secs(60), now_ms())
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for m in got {
            let id = serde_json::from_str::<relay_core::event::RelayEvent>(&m.body)
                .unwrap()
                .id;
            assert!(seen.insert(id), "delivered twice");
            PollingQueue::delete(&*store, &m.receipt).await.unwrap();
        }
    }
    assert_eq!(seen.len(), EVENTS);
}

#[tokio::test]
async fn outbox_appends_one_json_line_per_forward() {
    let dir = ScratchDir::new("outbox");
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let bodies: Vec<serde_json::Value> = (0..20)
        .map(|n| serde_json::json!({"id": n, "entity": {"TITLE": "строка\nс переводом"}, "changes": []}))
        .collect();
    let writes: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|body| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.append(&body).await.unwrap() })
        })
        .collect();
    for w in writes {
        w.await.unwrap();
    }
    assert_eq!(store.outbox_path(), dir.path().join("outbox.jsonl"));
    let text = std::fs::read_to_string(store.outbox_path()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON document"))
        .collect();
    assert_eq!(lines.len(), bodies.len());
    for body in &bodies {
        assert!(lines.contains(body));
    }
}

/// A fan-out delivery message has its own group and dedup id, but `relay replay --id <event
/// id>` must still find it: the embedded queue selects it by the event id its body names.
#[tokio::test]
async fn a_parked_delivery_message_is_replayed_by_its_event_id() {
    let dir = ScratchDir::new("delivery-replay");
    let store = SqliteStore::open(dir.path()).unwrap();
    let body = r#"{"v":1,"kind":"delivery","id":"event-7","webhook_id":"event-7"}"#;
    let message = relay_core::ports::OutgoingMessage {
        body: body.to_string(),
        group_id: "bitrix24#m#deal#7#won#1".into(),
        dedup_id: "delivery-abc".into(),
    };
    store.send_message(&message).await.unwrap();
    // Sent twice within the window: stored once, as SQS FIFO does.
    store.send_message(&message).await.unwrap();
    let got = store
        .receive(10, Duration::from_secs(30), now_ms())
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].group_id, message.group_id);
    store.park_dead_letter(&got[0], "gone").await.unwrap();

    let other = relay_core::ports::RedriveFilter {
        ids: vec!["event-8".into()],
        since_ms: None,
    };
    assert_eq!(store.redrive(&other).await.unwrap(), 0);
    let this = relay_core::ports::RedriveFilter {
        ids: vec!["event-7".into()],
        since_ms: None,
    };
    assert_eq!(store.redrive(&this).await.unwrap(), 1);
    let again = store
        .receive(10, Duration::from_secs(30), now_ms())
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].body, body);
    assert_eq!(again[0].group_id, message.group_id);
}
