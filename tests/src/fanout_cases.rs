//! Routes with several destinations, written once over the consumer's stores so the cases run
//! on the embedded SQLite store and on DynamoDB (moto). The queue is `SimQueue`, a FIFO queue
//! on a simulated clock, so an hour of retries takes a second. Every case asserts on what the
//! fake destinations received.

use crate::consumer_cases::{b24_event, REMAINING, SIGNING_SECRET, T0_MS};
use crate::destination::{Destination, Received};
use crate::sim_queue::SimQueue;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use relay_core::config::RelayConfig;
use relay_core::consume::{Consumer, ConsumerPorts, DeliveryMessage};
use relay_core::event::{Family, RelayEvent};
use relay_core::forward::RetrySchedule;
use relay_core::ports::{Claim, Queue};
use relay_core::routes::{EventPattern, Route, RouteDestination, Routes};
use relay_core::secret::Secret;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The second destination's own secret (32 bytes, base64).
pub const SECOND_SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const HOUR_MS: i64 = 60 * 60 * 1000;
/// SQS `maxReceiveCount` of the template's queue.
const MAX_RECEIVE_COUNT: u32 = 42;

/// Minutes between retries, as a deployment would have them, capped at 10 minutes.
fn schedule() -> RetrySchedule {
    RetrySchedule {
        base: Duration::from_secs(60),
        cap: Duration::from_secs(600),
        min: Duration::from_secs(1),
    }
}

fn route(name: &str, pattern: Value, destinations: Vec<RouteDestination>) -> Route {
    Route {
        name: name.into(),
        pattern: EventPattern::from_json(&pattern).expect("pattern"),
        destinations,
        projection: None,
    }
}

fn routes(list: Vec<Route>) -> Routes {
    Routes {
        routes: list,
        implicit: false,
    }
}

/// A consumer with no CRM credentials (bodies carry `entity: null`) over `stores` and `queue`.
fn consumer(stores: &ConsumerPorts, queue: &Arc<SimQueue>, routes: Routes) -> Consumer {
    let ports = ConsumerPorts {
        queue: queue.clone(),
        ..stores.clone()
    };
    let config = RelayConfig {
        signing_secret: Some(Secret::new(SIGNING_SECRET)),
        ..RelayConfig::default()
    };
    Consumer::new(ports, config, None, reqwest::Client::new())
        .with_routes(routes)
        .with_retry_schedule(schedule())
}

/// Runs the consumer over the queue, moving the clock to the next visible message whenever
/// nothing is visible, until the queue is empty or the next message is due after `until_ms`.
async fn drain(queue: &SimQueue, consumer: &Consumer, until_ms: i64) {
    for _ in 0..10_000 {
        let now = queue.now_ms();
        let batch = queue.receive(10, Duration::from_secs(30));
        if batch.is_empty() {
            match queue.next_visible_at() {
                Some(at) if at <= until_ms => {
                    queue.advance_to(at.max(now + 1));
                    continue;
                }
                _ => return,
            }
        }
        let report = consumer.process_batch(&batch, REMAINING, now).await;
        for message in &batch {
            if !report.failed.contains(&message.message_id) {
                queue.delete(&message.receipt);
            }
        }
        // A batch takes time: what it queued is received a millisecond later at least, so
        // the attempt log (ordered by time) sees queued before delivered.
        queue.advance_to(now + 1);
    }
    panic!("the queue did not drain in 10,000 batches");
}

/// Deal updates alternating over `entities` deals, one second apart.
fn deal_updates(count: usize, entities: usize) -> Vec<RelayEvent> {
    (0..count)
        .map(|i| {
            b24_event(
                Family::Deal,
                "ONCRMDEALUPDATE",
                &(1 + i % entities).to_string(),
                100 + i as i64,
            )
        })
        .collect()
}

async fn enqueue(queue: &SimQueue, events: &[RelayEvent]) {
    for event in events {
        queue.send(event).await.expect("sim queue accepts");
    }
}

/// The webhook-ids of `received`, grouped by the entity their body names, in arrival order.
fn ids_per_entity(received: &[Received]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in received {
        let entity = r.json()["entity_id"].as_str().unwrap_or("-").to_string();
        out.entry(entity)
            .or_default()
            .push(r.header("webhook-id").to_string());
    }
    out
}

fn sent_per_entity(events: &[RelayEvent]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        out.entry(e.entity_id.clone().unwrap_or_default())
            .or_default()
            .push(e.id.clone());
    }
    out
}

/// Verifies a request as a Standard Webhooks receiver holding `secret` would.
fn signed_with(received: &Received, secret: &str) -> bool {
    let key = BASE64
        .decode(secret.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let mut mac = <Hmac<Sha256>>::new_from_slice(&key).expect("hmac key");
    mac.update(
        format!(
            "{}.{}.",
            received.header("webhook-id"),
            received.header("webhook-timestamp")
        )
        .as_bytes(),
    );
    mac.update(&received.body);
    received.header("webhook-signature")
        == format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// Two destinations of one route; the second answers 503 for an hour. The first gets every
/// event at once, in order per entity, exactly once; the second gets every event exactly once,
/// in order per entity, once it recovers. Each is signed with its own secret, and both carry
/// the event's id as webhook-id.
pub async fn one_destination_failing_for_an_hour_delays_only_itself(stores: ConsumerPorts) {
    let healthy = Destination::start().await;
    let failing = Destination::start().await;
    let queue = SimQueue::new(T0_MS, MAX_RECEIVE_COUNT);
    let consumer = consumer(
        &stores,
        &queue,
        routes(vec![route(
            "all-deals",
            json!({"family": ["deal"]}),
            vec![
                RouteDestination {
                    url: healthy.url(),
                    secret: None,
                    headers: vec![
                        ("X-Tenant".into(), "acme".into()),
                        // A route may not forge the relay's own headers.
                        ("webhook-id".into(), "forged".into()),
                    ],
                },
                RouteDestination {
                    url: failing.url(),
                    secret: Some(Secret::new(SECOND_SECRET)),
                    headers: Vec::new(),
                },
            ],
        )]),
    );
    let events = deal_updates(6, 2);
    let expected = sent_per_entity(&events);
    failing.fail_at_random(100);
    enqueue(&queue, &events).await;

    drain(&queue, &consumer, T0_MS + HOUR_MS).await;
    // An hour in: the healthy destination has everything, once, each on its first try.
    assert_eq!(healthy.received().len(), events.len());
    assert_eq!(ids_per_entity(&healthy.delivered()), expected);
    assert!(healthy
        .received()
        .iter()
        .all(|r| signed_with(r, SIGNING_SECRET) && r.header("x-tenant") == "acme"));
    assert!(failing.delivered().is_empty());
    let tries_while_down = failing.received().len();
    assert!(
        tries_while_down >= 2 * 5,
        "both entities' heads were retried through the hour: {tries_while_down} tries"
    );
    // FIFO per destination: while the head of an entity fails, its later events wait.
    let first_of_each: Vec<&String> = expected.values().map(|ids| &ids[0]).collect();
    assert!(failing
        .received_webhook_ids()
        .iter()
        .all(|id| first_of_each.contains(&id)));
    assert!(!queue.is_empty());

    failing.fail_at_random(0);
    drain(&queue, &consumer, T0_MS + 3 * HOUR_MS).await;
    assert!(queue.is_empty(), "every delivery done");
    assert!(
        queue.dead_letters().is_empty(),
        "{:?}",
        queue.dead_letters()
    );
    assert_eq!(ids_per_entity(&failing.delivered()), expected);
    assert!(failing
        .delivered()
        .iter()
        .all(|r| signed_with(r, SECOND_SECRET) && !signed_with(r, SIGNING_SECRET)));
    // The healthy one got nothing more: no duplicate from the other's retries.
    assert_eq!(healthy.received().len(), events.len());

    // `relay attempts` shows both destinations of the first event under their route.
    let attempts = stores
        .attempts
        .list(&events[0].id)
        .await
        .expect("attempt log readable");
    let outcomes = |host: &str| -> Vec<String> {
        attempts
            .iter()
            .filter(|a| a.destination.starts_with(host))
            .map(|a| a.outcome.as_str().to_string())
            .collect()
    };
    assert!(attempts
        .iter()
        .all(|a| a.route.as_deref() == Some("all-deals")));
    let healthy_outcomes = outcomes(&healthy.url());
    assert_eq!(healthy_outcomes, vec!["queued", "delivered"]);
    let failing_outcomes = outcomes(&failing.url());
    assert_eq!(failing_outcomes.first().map(String::as_str), Some("queued"));
    assert_eq!(
        failing_outcomes.last().map(String::as_str),
        Some("delivered")
    );
    assert!(failing_outcomes.iter().filter(|o| *o == "retry").count() >= 5);
}

/// A routes file whose routes match nothing: nothing is posted, the event completes (its
/// claim answers "already delivered") and the attempt log says why.
pub async fn unmatched_event_delivers_nothing_and_completes(stores: ConsumerPorts) {
    let destination = Destination::start().await;
    let queue = SimQueue::new(T0_MS, MAX_RECEIVE_COUNT);
    let consumer = consumer(
        &stores,
        &queue,
        routes(vec![route(
            "leads-only",
            json!({"family": ["lead"]}),
            vec![RouteDestination::plain(&destination.url())],
        )]),
    );
    let events = deal_updates(1, 1);
    enqueue(&queue, &events).await;
    drain(&queue, &consumer, T0_MS + HOUR_MS).await;

    assert!(destination.received().is_empty());
    assert!(queue.is_empty() && queue.dead_letters().is_empty());
    let attempts = stores.attempts.list(&events[0].id).await.expect("attempts");
    assert_eq!(
        attempts
            .iter()
            .map(|a| a.outcome.as_str())
            .collect::<Vec<_>>(),
        vec!["unmatched"]
    );
    let claim = stores
        .dedup
        .claim(&events[0].id, "someone-else", T0_MS + 60_000, T0_MS + 1)
        .await
        .expect("dedup store");
    assert_eq!(claim, Claim::AlreadyCompleted);
}

/// 410 from one destination disables that destination only: the other keeps receiving, the
/// gone one's deliveries are parked without a POST, and once re-enabled a replay of its dead
/// letters brings it exactly what it missed, and the other nothing again.
pub async fn gone_disables_only_that_destination(stores: ConsumerPorts) {
    let staying = Destination::start().await;
    let gone = Destination::start().await;
    let queue = SimQueue::new(T0_MS, MAX_RECEIVE_COUNT);
    let consumer = consumer(
        &stores,
        &queue,
        routes(vec![
            route(
                "crm-copy",
                json!({"family": ["deal"]}),
                vec![RouteDestination::plain(&staying.url())],
            ),
            route(
                "analytics",
                json!({"event": ["ONCRMDEALUPDATE"]}),
                vec![RouteDestination::plain(&gone.url())],
            ),
        ]),
    );
    let events = deal_updates(2, 2);
    gone.fail_next(410, 1);
    enqueue(&queue, &events[..1]).await;
    drain(&queue, &consumer, T0_MS + HOUR_MS).await;
    enqueue(&queue, &events[1..]).await;
    drain(&queue, &consumer, T0_MS + HOUR_MS).await;

    let all: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(staying.delivered_webhook_ids(), all);
    assert_eq!(gone.received().len(), 1, "no POST after the 410");
    assert!(stores
        .destinations
        .disabled(&gone.url())
        .await
        .expect("status")
        .is_some());
    assert_eq!(
        stores
            .destinations
            .disabled(&staying.url())
            .await
            .expect("status"),
        None
    );
    let parked: Vec<DeliveryMessage> = queue
        .dead_letters()
        .iter()
        .map(|(body, _)| DeliveryMessage::from_body(body).expect("a delivery message"))
        .collect();
    assert_eq!(parked.len(), 2);
    assert!(parked.iter().all(|m| m.route == "analytics"));

    stores
        .destinations
        .enable(&gone.url())
        .await
        .expect("re-enable");
    assert_eq!(queue.redrive_all(), 2);
    drain(&queue, &consumer, T0_MS + 2 * HOUR_MS).await;
    // The two redriven messages are two entities, so two FIFO groups the consumer works on
    // side by side: each arrives once, in either order.
    let mut redelivered = gone.delivered_webhook_ids();
    redelivered.sort();
    let mut expected = all.clone();
    expected.sort();
    assert_eq!(redelivered, expected);
    assert_eq!(staying.received().len(), 2);
    assert!(queue.is_empty() && queue.dead_letters().is_empty());
}

/// One matching destination is posted inline, as before routes: no delivery message is
/// queued, the POST carries the destination's secret and headers, and the attempt its route.
pub async fn a_single_destination_is_posted_inline(stores: ConsumerPorts) {
    let destination = Destination::start().await;
    let other = Destination::start().await;
    let queue = SimQueue::new(T0_MS, MAX_RECEIVE_COUNT);
    let consumer = consumer(
        &stores,
        &queue,
        routes(vec![
            route(
                "deals",
                json!({"family": ["deal"]}),
                vec![RouteDestination {
                    url: destination.url(),
                    secret: Some(Secret::new(SECOND_SECRET)),
                    headers: vec![("Authorization".into(), "Bearer receiver-key".into())],
                }],
            ),
            route(
                "leads",
                json!({"family": ["lead"]}),
                vec![RouteDestination::plain(&other.url())],
            ),
        ]),
    );
    let events = deal_updates(1, 1);
    enqueue(&queue, &events).await;
    let batch = queue.receive(10, Duration::from_secs(30));
    let report = consumer.process_batch(&batch, REMAINING, T0_MS).await;
    assert!(report.failed.is_empty());
    queue.delete(&batch[0].receipt);
    assert!(queue.is_empty(), "nothing queued for a single destination");

    let got = destination.delivered();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("webhook-id"), events[0].id);
    assert!(signed_with(&got[0], SECOND_SECRET));
    assert_eq!(got[0].header("authorization"), "Bearer receiver-key");
    assert!(other.received().is_empty());
    let attempts = stores.attempts.list(&events[0].id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_str(), "delivered");
    assert_eq!(attempts[0].route.as_deref(), Some("deals"));
}

#[macro_export]
macro_rules! fanout_case_tests {
    ($setup:path) => {
        $crate::fanout_case_tests!(@each $setup;
            one_destination_failing_for_an_hour_delays_only_itself,
            unmatched_event_delivers_nothing_and_completes,
            gone_disables_only_that_destination,
            a_single_destination_is_posted_inline,
        );
    };
    (@each $setup:path; $($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            // The second half keeps the store alive (the SQLite scratch directory).
            let (stores, _keep) = $setup().await;
            $crate::fanout_cases::$name(stores).await;
        }
    )*};
}
