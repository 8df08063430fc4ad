//! Bitrix24's two REST limits (b24restdocs `limits.md`) with several consumers on one portal,
//! as several consumer Lambdas would run: each its own `Consumer` and its own REST client,
//! over one embedded queue, against one fake portal whose limits are scaled in time.

use integration_tests::consumer_cases::{b24_event, PORTAL, SIGNING_SECRET};
use integration_tests::destination::Destination;
use integration_tests::fake_bitrix24::{FakeBitrix24, OperatingLimits, PortalLimits};
use integration_tests::scratch::ScratchDir;
use relay_core::config::RelayConfig;
use relay_core::consume::{Consumer, ConsumerPorts};
use relay_core::enrich::bitrix24::{client_share, Bitrix24Client, RateLimit};
use relay_core::event::Family;
use relay_core::ports::{Bitrix24Rest, PollingQueue};
use relay_core::secret::Secret;
use relay_local::SqliteStore;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The consumer Lambdas of the test: `ConsumerMaxConcurrency`, so `RELAY_B24_CONSUMERS`.
const CONSUMERS: u32 = 5;
/// Far beyond what the runs need; only a hung run reaches it.
const GIVE_UP: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct Relay {
    store: Arc<SqliteStore>,
    ports: ConsumerPorts,
    config: RelayConfig,
    portal: FakeBitrix24,
    destination: Destination,
    _dir: ScratchDir,
}

impl Relay {
    /// `portal_limits`: the fake portal's bucket; the relay is configured with the same
    /// numbers through `RELAY_B24_RATE_LIMIT`, as an operator would set them for the plan.
    async fn start(label: &str, portal_limits: PortalLimits) -> Relay {
        let dir = ScratchDir::new(label);
        let store = Arc::new(SqliteStore::open(dir.path()).expect("open the embedded store"));
        let ports = ConsumerPorts {
            queue: store.clone(),
            dedup: store.clone(),
            snapshots: store.clone(),
            tokens: store.clone(),
            attempts: store.clone(),
            destinations: store.clone(),
        };
        let portal = FakeBitrix24::start(PORTAL, portal_limits).await;
        let destination = Destination::start().await;
        let config = RelayConfig {
            destination_url: Some(destination.url()),
            signing_secret: Some(Secret::new(SIGNING_SECRET)),
            b24_webhook_url: Some(Secret::new(format!("{PORTAL}={}", portal.webhook_url()))),
            b24_consumers: CONSUMERS,
            b24_rate_limit: RateLimit::parse(&format!(
                "{}/{}",
                portal_limits.per_second, portal_limits.burst
            )),
            ..RelayConfig::default()
        };
        Relay {
            store,
            ports,
            config,
            portal,
            destination,
            _dir: dir,
        }
    }

    /// A REST client as one Lambda builds it from the configuration.
    fn client(&self, basket: Duration) -> Bitrix24Client {
        Bitrix24Client::new(
            reqwest::Client::new(),
            &self.config,
            self.ports.tokens.clone(),
        )
        .with_backoff(Duration::from_millis(20), 5)
        .with_operating_basket(basket)
    }

    fn consumer(&self, basket: Duration) -> Consumer {
        let client: Arc<dyn Bitrix24Rest> = Arc::new(self.client(basket));
        Consumer::new(
            self.ports.clone(),
            self.config.clone(),
            Some(client),
            reqwest::Client::new(),
        )
    }

    /// Runs `CONSUMERS` consumers, each receiving `batch` messages at a time as the SQS event
    /// source would, until `done` says so (or `GIVE_UP`).
    async fn drain(&self, batch: usize, basket: Duration, done: impl Fn() -> bool) {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..CONSUMERS {
            let consumer = self.consumer(basket);
            let queue: Arc<dyn PollingQueue> = self.store.clone();
            let stop = stop.clone();
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let now = now_ms();
                    let messages = queue
                        .receive(batch, Duration::from_secs(60), now)
                        .await
                        .expect("receive");
                    if messages.is_empty() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let report = consumer
                        .process_batch(&messages, Duration::from_secs(60), now)
                        .await;
                    for message in &messages {
                        if !report.failed.contains(&message.message_id) {
                            queue.delete(&message.receipt).await.expect("delete");
                        }
                    }
                }
            }));
        }
        let started = Instant::now();
        while !done() && started.elapsed() < GIVE_UP {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.await.expect("consumer task");
        }
    }

    /// Every delivered webhook-id exactly once, and how many there were.
    fn delivered_once(&self) -> usize {
        let ids = self.destination.delivered_webhook_ids();
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(
            distinct.len(),
            ids.len(),
            "a webhook-id was delivered twice"
        );
        ids.len()
    }
}

/// The standard plan's bucket with time running 50 times faster: it drains 100 requests/s
/// instead of 2 and still holds 50.
fn fifty_times_faster() -> PortalLimits {
    PortalLimits {
        per_second: PortalLimits::STANDARD.per_second * 50.0,
        burst: PortalLimits::STANDARD.burst,
    }
}

fn deal(id: &str) -> serde_json::Value {
    json!({"ID": id, "TITLE": format!("Deal {id}"), "STAGE_ID": "NEW"})
}

/// limits.md: the portal's bucket counts every request of the app together. 1,000 events,
/// five consumers each with its own client, and the offline poller's client polling beside
/// them at its full share: every client keeps to 1/(consumers + 2) of the bucket, so the
/// portal never answers 503. The portal runs 50 times faster than a real one, and the relay
/// is told so through RELAY_B24_RATE_LIMIT. Consumers receive one message at a time, so each event is one REST
/// request (no `batch` folds them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_events_through_five_consumers_stays_inside_the_portals_bucket() {
    let scaled = fifty_times_faster();
    let relay = Relay::start("rate-burst", scaled).await;
    let share = client_share(&relay.config);
    assert!((share.per_second * f64::from(CONSUMERS + 2) - scaled.per_second).abs() < 1e-9);

    const DEALS: usize = 250;
    const UPDATES: usize = 4;
    for id in 1..=DEALS {
        relay
            .portal
            .set_entity("deal", &id.to_string(), deal(&id.to_string()));
    }
    for update in 0..UPDATES {
        for id in 1..=DEALS {
            let event = b24_event(
                Family::Deal,
                "ONCRMDEALUPDATE",
                &id.to_string(),
                // Stamped beyond each other's twin window: an unchanged deal is still news.
                1_000 + update as i64 * (relay_core::consume::TWIN_WINDOW_S + 1),
            );
            relay.ports.queue.send(&event).await.expect("enqueue");
        }
    }
    let events = DEALS * UPDATES;

    // The poller: its own client, calling the portal as fast as its share lets it.
    let poller = Arc::new(relay.client(Duration::from_secs(60)));
    let polling = Arc::new(AtomicBool::new(true));
    let poller_task = {
        let (poller, polling) = (poller.clone(), polling.clone());
        tokio::spawn(async move {
            let (mut calls, mut failed) = (0u64, 0u64);
            while polling.load(Ordering::Relaxed) {
                match poller
                    .call(PORTAL, "crm.deal.get", json!({"id": "1"}))
                    .await
                {
                    Ok(_) => calls += 1,
                    Err(_) => failed += 1,
                }
            }
            (calls, failed)
        })
    };

    let started = Instant::now();
    relay
        .drain(1, Duration::from_secs(60), || {
            // A refusal has failed the run already: no need to wait for the retries.
            relay.destination.delivered().len() >= events || relay.portal.limited() > 0
        })
        .await;
    let took = started.elapsed();
    polling.store(false, Ordering::Relaxed);
    let (poller_calls, poller_failures) = poller_task.await.expect("poller task");
    let requests = relay.portal.requests();
    assert_eq!(
        relay.portal.limited(),
        0,
        "no QUERY_LIMIT_EXCEEDED in {requests} requests ({poller_calls} by the poller) in {took:?}"
    );
    assert_eq!(poller_failures, 0, "every poll answered");

    assert_eq!(relay.delivered_once(), events, "every event delivered once");
    let bodies = relay.destination.delivered_bodies();
    assert!(bodies
        .iter()
        .all(|b| b["entity"]["ID"] == b["entity_id"] && b["enrichment"] == "fetched"));
    assert!(relay
        .store
        .list_dead_letters()
        .await
        .expect("dlq")
        .is_empty());
    assert!(
        requests >= events as u64 + poller_calls,
        "one request per event and per poll: {requests}"
    );
    eprintln!("{events} events, {requests} requests ({poller_calls} by the poller) in {took:?}, 0 refused");
}

/// limits.md, "Resource Intensity Limits": a method whose accumulated execution time is over
/// the limit answers 429 OPERATION_TIME_LIMIT until its oldest basket is dropped at
/// `operating_reset_at`. Scaled: a basket of 200 ms instead of a minute, so the ten-basket
/// block of up to ten minutes lasts up to two seconds (plus the second the reset is rounded
/// to). The embedded queue parks a message on its second receive here
/// (`max_receive_count` 1), so a single wait counted as a failed try would park it: every
/// waiting message must still be delivered once, none parked; the blocked method is asked at
/// most once per basket per client meanwhile; other methods go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_method_waits_for_its_reset_without_parking_or_hammering() {
    let basket = Duration::from_millis(200);
    let relay = Relay::start("rate-blocked", fifty_times_faster()).await;
    relay.store.set_max_receive_count(1);
    relay.portal.set_operating_limits(OperatingLimits {
        limit_s: 480.0,
        basket,
    });
    // Five reads of 100 s put crm.deal.get over 480 s: the sixth call is refused.
    relay.portal.set_operating_cost("crm.deal.get", 100.0);

    const DEALS: usize = 30;
    const LEADS: usize = 10;
    for id in 1..=DEALS {
        relay
            .portal
            .set_entity("deal", &id.to_string(), deal(&id.to_string()));
        let event = b24_event(Family::Deal, "ONCRMDEALUPDATE", &id.to_string(), 1_000);
        relay.ports.queue.send(&event).await.expect("enqueue");
    }
    for id in 1..=LEADS {
        relay.portal.set_entity(
            "lead",
            &id.to_string(),
            json!({"ID": id.to_string(), "TITLE": format!("Lead {id}")}),
        );
        let event = b24_event(Family::Lead, "ONCRMLEADUPDATE", &id.to_string(), 1_000);
        relay.ports.queue.send(&event).await.expect("enqueue");
    }

    let blocked_at: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let started = Instant::now();
    relay
        .drain(10, basket, || {
            if relay.portal.blocked("crm.deal.get") > 0 {
                let mut at = blocked_at.lock().expect("lock");
                if at.is_none() {
                    *at = Some(Instant::now());
                    // Lighter reads from now on: once the heavy basket is dropped, the
                    // method stays open, so the run shows one block and its end.
                    relay.portal.set_operating_cost("crm.deal.get", 0.0);
                }
            }
            relay.destination.delivered().len() >= DEALS + LEADS
        })
        .await;
    let took = started.elapsed();
    let blocked_at = blocked_at
        .lock()
        .expect("lock")
        .expect("crm.deal.get was blocked");

    assert_eq!(
        relay.delivered_once(),
        DEALS + LEADS,
        "every event delivered once"
    );
    assert!(
        relay
            .store
            .list_dead_letters()
            .await
            .expect("dlq")
            .is_empty(),
        "waiting for the reset parked nothing"
    );

    // Who waited, and how often.
    let mut deferred: HashMap<String, usize> = HashMap::new();
    for body in relay.destination.delivered_bodies() {
        let id = body["id"].as_str().expect("event id").to_string();
        let waits = relay
            .ports
            .attempts
            .list(&id)
            .await
            .expect("attempts")
            .iter()
            .filter(|a| a.outcome.as_str() == "deferred")
            .count();
        if waits > 0 {
            assert_eq!(body["family"], "deal", "only the blocked method waits");
        }
        deferred.insert(id, waits);
    }
    let waited: usize = deferred.values().filter(|w| **w > 0).count();
    let waits: usize = deferred.values().sum();
    assert!(
        waited >= DEALS - 5 - 5,
        "most deal events met the block: {waited}"
    );

    // The block lasted until the reset: ten baskets after the first heavy read, rounded
    // up to the second; the method was asked again at most once per basket per client.
    let refusals = relay.portal.blocked("crm.deal.get");
    let per_client = 10 + 1 + 5; // baskets of the block, the rounded second, scheduling slack
    assert!(
        refusals <= u64::from(CONSUMERS) * per_client,
        "{refusals} refused calls of the blocked method for {waits} waits"
    );
    let lead_deliveries = relay
        .destination
        .delivered_bodies()
        .iter()
        .filter(|b| b["family"] == "lead")
        .count();
    assert_eq!(lead_deliveries, LEADS, "other methods went on");
    eprintln!(
        "{waited} events waited {waits} times in all; {refusals} refused calls; blocked after {:?}, all delivered after {took:?}",
        blocked_at.duration_since(started)
    );
}
