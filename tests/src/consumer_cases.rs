//! The consumer's behaviour, written once as functions over `ConsumerPorts`, so the same cases
//! run on the in-memory store, the embedded SQLite store and DynamoDB + SQS on moto.
//! Each case starts its own fake portal, SalesMan and destination on loopback.

use crate::destination::Destination;
use crate::fake_bitrix24::{FakeBitrix24, MethodReply, PortalLimits};
use crate::fake_salesman::FakeSalesman;
use crate::probe::QueueProbe;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use relay_core::catalogue::EntityType;
use relay_core::config::RelayConfig;
use relay_core::consume::{Consumer, ConsumerPorts};
use relay_core::enrich::bitrix24::{Bitrix24Client, RateLimit};
use relay_core::event::{envelope_id, Family, RelayEvent, Source};
use relay_core::ports::{Bitrix24Rest, Claim, PortalTokens, QueueMessage, SnapshotKey};
use relay_core::secret::Secret;
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The Standard Webhooks specification's example secret.
pub const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const PORTAL: &str = "a1b2c3d4member";
pub const SALESMAN_IDENTITY: &str = "1";
/// A fixed clock: tests pass time in, so leases and expiries are exact.
pub const T0_MS: i64 = 1_766_000_000_000;
pub const REMAINING: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Auth {
    /// `RELAY_B24_WEBHOOK_URL`.
    Webhook,
    /// Stored portal tokens + OAuth app credentials.
    OAuth,
}

/// One case's surroundings: fakes on loopback and the ports under test.
pub struct World {
    pub portal: FakeBitrix24,
    pub salesman: FakeSalesman,
    pub destination: Destination,
    pub ports: ConsumerPorts,
    pub probe: Arc<dyn QueueProbe>,
    pub config: RelayConfig,
    pub limits: PortalLimits,
}

impl World {
    pub async fn new(
        ports: ConsumerPorts,
        probe: Arc<dyn QueueProbe>,
        auth: Auth,
        limits: PortalLimits,
    ) -> World {
        let portal = FakeBitrix24::start(PORTAL, limits).await;
        let salesman = FakeSalesman::start("robot", "sm-apikey-SECRET").await;
        let destination = Destination::start().await;
        let mut config = RelayConfig {
            destination_url: Some(destination.url()),
            signing_secret: Some(Secret::new(SIGNING_SECRET)),
            salesman_url: Some(salesman.url()),
            salesman_login: Some("robot".into()),
            salesman_apikey: Some(Secret::new("sm-apikey-SECRET")),
            b24_oauth_url: portal.oauth_url(),
            ..RelayConfig::default()
        };
        match auth {
            // A `member_id=url` pair: a webhook reads its own portal only.
            Auth::Webhook => {
                config.b24_webhook_url =
                    Some(Secret::new(format!("{PORTAL}={}", portal.webhook_url())))
            }
            Auth::OAuth => {
                let (client_id, client_secret, access, refresh) = {
                    let s = portal.state();
                    (
                        s.client_id.clone(),
                        s.client_secret.clone(),
                        s.access_token.clone(),
                        s.refresh_token.clone(),
                    )
                };
                config.b24_client_id = Some(client_id);
                config.b24_client_secret = Some(Secret::new(client_secret));
                ports
                    .tokens
                    .put(&PortalTokens {
                        member_id: PORTAL.into(),
                        domain: format!("{PORTAL}.bitrix24.test"),
                        application_token: Secret::new("app-token-SECRET"),
                        access_token: Secret::new(access),
                        refresh_token: Secret::new(refresh),
                        expires_at_ms: T0_MS + 3_600_000,
                        client_endpoint: portal.client_endpoint(),
                        scope: "crm,task".into(),
                        server_endpoint: String::new(),
                    })
                    .await
                    .expect("store portal tokens");
            }
        }
        World {
            portal,
            salesman,
            destination,
            ports,
            probe,
            config,
            limits,
        }
    }

    /// The REST client a consumer uses: the portal's bucket with a margin of two requests
    /// (requests reach the portal a little later than the client counts them).
    pub fn bitrix24_client(&self) -> Bitrix24Client {
        Bitrix24Client::new(
            reqwest::Client::new(),
            &self.config,
            self.ports.tokens.clone(),
        )
        .with_rate_limit(RateLimit {
            per_second: self.limits.per_second,
            burst: (self.limits.burst - 2.0).max(1.0),
        })
        .with_backoff(Duration::from_millis(10), 5)
    }

    /// A fresh consumer instance (as another Lambda would be) over the same ports.
    pub fn consumer(&self) -> Consumer {
        let client: Arc<dyn Bitrix24Rest> = Arc::new(self.bitrix24_client());
        Consumer::new(
            self.ports.clone(),
            self.config.clone(),
            Some(client),
            reqwest::Client::new(),
        )
    }
}

fn fast_limits() -> PortalLimits {
    PortalLimits::default()
}

static MESSAGE_SERIAL: AtomicU64 = AtomicU64::new(0);

/// A Bitrix24 envelope as ingress builds it (data carries only the ID).
pub fn b24_event(family: Family, name: &str, entity_id: &str, ts: i64) -> RelayEvent {
    let data = if name.starts_with("ONTASK") {
        json!({"FIELDS_AFTER": {"ID": entity_id}})
    } else {
        json!({"FIELDS": {"ID": entity_id}})
    };
    RelayEvent {
        v: 1,
        id: envelope_id(Source::Bitrix24, PORTAL, name, &data, ts),
        source: Source::Bitrix24,
        portal: PORTAL.into(),
        domain: Some(format!("{PORTAL}.bitrix24.test")),
        family,
        event: name.into(),
        entity_type: None,
        entity_id: Some(entity_id.into()),
        ts,
        received_at: "2026-11-22T10:00:00Z".into(),
        data,
    }
}

/// An SQS message carrying `event` (a new message id each time, as SQS gives).
/// A message as a queue hands it out just now (received at this moment, by the wall clock).
pub fn message(event: &RelayEvent, receive_count: u32) -> QueueMessage {
    let serial = MESSAGE_SERIAL.fetch_add(1, Ordering::Relaxed);
    QueueMessage {
        message_id: format!("msg-{serial}"),
        receipt: format!("receipt-{serial}"),
        body: serde_json::to_string(event).expect("envelope serialises"),
        group_id: event.message_group_id(),
        receive_count,
        received_at_ms: Some(crate::contract::now_ms()),
    }
}

fn deal(id: &str, title: &str, stage: &str, amount: &str) -> Value {
    json!({"ID": id, "TITLE": title, "STAGE_ID": stage, "OPPORTUNITY": amount, "CURRENCY_ID": "RUB"})
}

async fn outcomes(world: &World, event_id: &str) -> Vec<(String, Option<u16>)> {
    world
        .ports
        .attempts
        .list(event_id)
        .await
        .expect("attempt log readable")
        .into_iter()
        .map(|a| (a.outcome.as_str().to_string(), a.status))
        .collect()
}

pub async fn duplicate_delivery_forwards_once(ports: ConsumerPorts, probe: Arc<dyn QueueProbe>) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "7405", deal("7405", "Big", "NEW", "100"));
    let consumer = world.consumer();
    let event = b24_event(Family::Deal, "ONCRMDEALUPDATE", "7405", 100);

    let first = consumer
        .process_batch(&[message(&event, 1)], REMAINING, T0_MS)
        .await;
    // The same delivery again, as a second SQS message (ingress saw it twice).
    let second = consumer
        .process_batch(&[message(&event, 1)], REMAINING, T0_MS + 5_000)
        .await;

    assert!(first.failed.is_empty() && second.failed.is_empty());
    assert_eq!(
        world.destination.received().len(),
        1,
        "forwarded exactly once"
    );
    assert_eq!(
        outcomes(&world, &event.id).await,
        vec![("delivered".into(), Some(200)), ("skipped".into(), None)]
    );
}

/// The news-only rule: the same event again after it was delivered is fetched again; a
/// changed entity is forwarded under a webhook-id of its own (event id + the snapshot
/// version it is news against), an unchanged one is a duplicate that is not forwarded.
pub async fn redelivery_forwards_only_news(ports: ConsumerPorts, probe: Arc<dyn QueueProbe>) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "31", deal("31", "Twice", "NEW", "1"));
    let consumer = world.consumer();
    let event = b24_event(Family::Deal, "ONCRMDEALUPDATE", "31", 100);
    let first = consumer
        .process_batch(&[message(&event, 1)], REMAINING, T0_MS)
        .await;
    // The deal changed again in the same second: Bitrix24 sends identical bytes, so the same id.
    world
        .portal
        .set_entity("deal", "31", deal("31", "Twice", "WON", "1"));
    let second = consumer
        .process_batch(&[message(&event, 1)], REMAINING, T0_MS + 1_000)
        .await;
    // And once more with nothing new (an offline-log copy of the same event).
    let third = consumer
        .process_batch(&[message(&event, 1)], REMAINING, T0_MS + 2_000)
        .await;
    assert!(first.failed.is_empty() && second.failed.is_empty() && third.failed.is_empty());
    assert_eq!(
        world.destination.delivered_webhook_ids(),
        vec![
            event.id.clone(),
            relay_core::consume::redelivery_id(&event.id, event.ts)
        ],
        "the news goes out once under its own id; the copy without news not at all"
    );
    let bodies = world.destination.delivered_bodies();
    assert_eq!(
        bodies[1]["changes"],
        json!([{"field": "STAGE_ID", "old": "NEW", "new": "WON"}])
    );
    assert_eq!(bodies[1]["entity"]["STAGE_ID"], "WON");
    assert_eq!(
        outcomes(&world, &event.id).await,
        vec![
            ("delivered".into(), Some(200)),
            ("delivered".into(), Some(200)),
            ("skipped".into(), None)
        ]
    );
}

/// The offline log's copy of a change the handler already delivered: event.offline.get
/// stamps it (TIMESTAMP_X) a second later than the online call's `ts`, so it gets another
/// envelope id (bitrix24/b24restdocs `api-reference/events/offline-events.md`: a change goes
/// to the offline queue and to online handlers; the record's fields are those of
/// `api-reference/events/event-offline-get.md`). The entity did not change between them:
/// not forwarded again, recorded as skipped. A real change after it still goes out, and so
/// does an unchanged copy stamped beyond the twin window (it is not the same change).
pub async fn offline_twin_in_another_second_is_not_forwarded_again(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "33", deal("33", "Twin", "NEW", "1"));
    let consumer = world.consumer();
    let online_ts = 1_766_000_000;
    let online = b24_event(Family::Deal, "ONCRMDEALUPDATE", "33", online_ts);
    let stamp = |ts: i64| {
        let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(ts as u64);
        relay_core::event::rfc3339_seconds(at)
    };
    let offline_record = |ts: i64| {
        json!({"ID": "9", "TIMESTAMP_X": stamp(ts), "EVENT_NAME": "ONCRMDEALUPDATE",
            "EVENT_DATA": {"FIELDS": {"ID": 33}}, "EVENT_ADDITIONAL": {"user_id": 1},
            "MESSAGE_ID": "abc"})
    };
    let envelope = |ts: i64| {
        relay_core::lifecycle::offline::offline_record_envelope(
            PORTAL,
            online.domain.as_deref(),
            &offline_record(ts),
            std::time::SystemTime::UNIX_EPOCH,
        )
        .expect("a routable offline record")
    };
    let twin = envelope(online_ts + 1);
    assert_ne!(twin.id, online.id, "stamped in another second: another id");
    // Beyond the window of the change below (stamped online_ts + 5).
    let late_copy = envelope(online_ts + 5 + relay_core::consume::TWIN_WINDOW_S + 1);

    for (n, event) in [&online, &twin].into_iter().enumerate() {
        let report = consumer
            .process_batch(&[message(event, 1)], REMAINING, T0_MS + n as i64 * 1_000)
            .await;
        assert!(report.failed.is_empty());
    }
    assert_eq!(
        world.destination.delivered_webhook_ids(),
        vec![online.id.clone()]
    );
    let twin_outcomes = outcomes(&world, &twin.id).await;
    assert_eq!(twin_outcomes, vec![("skipped".into(), None)]);

    world
        .portal
        .set_entity("deal", "33", deal("33", "Twin", "WON", "1"));
    let change = b24_event(Family::Deal, "ONCRMDEALUPDATE", "33", online_ts + 5);
    for (n, event) in [&change, &twin, &late_copy].into_iter().enumerate() {
        let report = consumer
            .process_batch(&[message(event, 1)], REMAINING, T0_MS + 10_000 + n as i64)
            .await;
        assert!(report.failed.is_empty());
    }
    assert_eq!(
        world.destination.delivered_webhook_ids(),
        vec![online.id.clone(), change.id.clone(), late_copy.id.clone()],
        "the change goes out; the twin, redelivered, is still no news; a copy beyond the window is"
    );
    let bodies = world.destination.delivered_bodies();
    assert_eq!(
        bodies[1]["changes"],
        json!([{"field": "STAGE_ID", "old": "NEW", "new": "WON"}])
    );
    assert_eq!(bodies[2]["changes"], json!([]));
}

/// A POST slower than the lease: the heartbeat keeps the claim, so a second consumer that
/// gets the message meanwhile (its visibility ran out) does not POST it again.
pub async fn heartbeat_keeps_a_slow_delivery_claimed(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "32", deal("32", "Slow", "NEW", "1"));
    world
        .destination
        .hold_answers_for(Duration::from_millis(3_000));
    let lease = Duration::from_millis(600);
    let (a, b) = (
        world.consumer().with_lease(lease),
        world.consumer().with_lease(lease),
    );
    let event = b24_event(Family::Deal, "ONCRMDEALUPDATE", "32", 100);
    let (ma, mb) = (message(&event, 1), message(&event, 2));
    // The real clock: a store with TTL (moto) may treat a lease renewed in the past as gone.
    let t0 = crate::contract::now_ms();
    let slow = a.process_batch(std::slice::from_ref(&ma), REMAINING, t0);
    let late = async {
        // Well past the first lease: without a heartbeat the claim would be free by now.
        tokio::time::sleep(Duration::from_millis(1_800)).await;
        b.process_batch(std::slice::from_ref(&mb), REMAINING, t0 + 1_800)
            .await
    };
    let (ra, rb) = tokio::join!(slow, late);
    assert!(ra.failed.is_empty(), "the slow delivery completes");
    assert_eq!(
        rb.failed,
        vec![mb.message_id.clone()],
        "the late consumer backs off"
    );
    assert_eq!(
        world.destination.received_webhook_ids(),
        vec![event.id.clone()]
    );
    assert_eq!(world.destination.most_concurrent_per_webhook_id(), 1);
}

/// A known entity: deal `id` delivered once (its first sighting, stamped 100), then changed
/// in the CRM; gives that first event, the update event about the change (stamped 200, not
/// queued) and the clock the first was processed at.
async fn known_entity_changed(world: &World, id: &str) -> (RelayEvent, RelayEvent, i64) {
    world
        .portal
        .set_entity("deal", id, deal(id, "Known", "NEW", "1"));
    // The real clock: a store with TTL (moto) may treat a lease in the past as gone.
    let t0 = crate::contract::now_ms();
    let first = b24_event(Family::Deal, "ONCRMDEALUPDATE", id, 100);
    let report = world
        .consumer()
        .process_batch(&[message(&first, 1)], REMAINING, t0)
        .await;
    assert!(report.failed.is_empty(), "the first sighting is delivered");
    world
        .portal
        .set_entity("deal", id, deal(id, "Known", "WON", "1"));
    let update = b24_event(Family::Deal, "ONCRMDEALUPDATE", id, 200);
    (first, update, t0)
}

/// The destination got exactly one POST of each of `events`, in that order, never two of one
/// webhook-id at once.
fn assert_posted_once_each(world: &World, events: &[&RelayEvent]) {
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(world.destination.received_webhook_ids(), ids);
    assert_eq!(world.destination.most_concurrent_per_webhook_id(), 1);
}

/// A first receive of an entity the relay already has a snapshot of writes no dedup claim:
/// the queue has given the message to no one else, and the snapshot saved after the POST is
/// the record. A redelivery of it afterwards (receive 2) is still a skipped duplicate.
pub async fn first_receive_of_a_known_entity_claims_nothing(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    let (first, update, t0) = known_entity_changed(&world, "34").await;
    let consumer = world.consumer();
    let report = consumer
        .process_batch(&[message(&update, 1)], REMAINING, t0 + 1)
        .await;
    assert!(report.failed.is_empty());

    let probe_lease = t0 + 60_000;
    assert!(
        matches!(
            world
                .ports
                .dedup
                .claim(&first.id, "probe", probe_lease, t0 + 2)
                .await,
            Ok(Claim::HeldElsewhere { .. })
        ),
        "a first sighting is claimed: its claim is its record until the lease lapses"
    );
    assert_eq!(
        world
            .ports
            .dedup
            .claim(&update.id, "probe", probe_lease, t0 + 2)
            .await
            .expect("claim"),
        Claim::Acquired,
        "the known entity's update left no claim behind"
    );
    let again = consumer
        .process_batch(&[message(&update, 2)], REMAINING, t0 + 3)
        .await;
    assert!(again.failed.is_empty());
    assert_eq!(
        world.destination.received_webhook_ids(),
        vec![first.id.clone(), update.id.clone()],
        "the redelivery is a duplicate: the snapshot remembers the update"
    );
}

/// A queue whose visibility cannot be changed (ChangeMessageVisibility failing): everything
/// else goes to the real queue underneath.
struct VisibilityStuck(Arc<dyn relay_core::ports::Queue>);

#[async_trait::async_trait]
impl relay_core::ports::Queue for VisibilityStuck {
    async fn send(&self, event: &RelayEvent) -> Result<(), relay_core::error::StoreError> {
        self.0.send(event).await
    }
    async fn retry_after(
        &self,
        _receipt: &str,
        _delay: Duration,
    ) -> Result<(), relay_core::error::StoreError> {
        Err(relay_core::error::StoreError::Unavailable(
            "ChangeMessageVisibility: connection refused".into(),
        ))
    }
    async fn park_dead_letter(
        &self,
        message: &QueueMessage,
        reason: &str,
    ) -> Result<(), relay_core::error::StoreError> {
        self.0.park_dead_letter(message, reason).await
    }
}

/// A first receive runs under the message's invisibility, so when the heartbeat cannot extend
/// it, the consumer claims the event before that invisibility can end and finishes under the
/// claim: a second consumer that receives the message afterwards (its receive 2) finds it
/// claimed and backs off, while the first one's POST (held 5 s by the destination) is still
/// in flight. Either side without its rule shows here: a first receive that gave up would
/// fail its batch; one that went on unclaimed would meet the second consumer's POST.
pub async fn first_receive_that_cannot_stay_hidden_is_claimed_instead(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    let (first, update, t0) = known_entity_changed(&world, "36").await;
    world
        .destination
        .hold_answers_to(&update.id, Duration::from_millis(5_000));
    let stuck = ConsumerPorts {
        queue: Arc::new(VisibilityStuck(world.ports.queue.clone())),
        ..world.ports.clone()
    };
    let client: Arc<dyn Bitrix24Rest> = Arc::new(world.bitrix24_client());
    let blind = Consumer::new(
        stuck,
        world.config.clone(),
        Some(client),
        reqwest::Client::new(),
    )
    .with_lease(Duration::from_millis(1_500));
    let received = [message(&update, 1)];
    let slow = blind.process_batch(&received, REMAINING, t0 + 1);
    let late = async {
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        world
            .consumer()
            .process_batch(&[message(&update, 2)], REMAINING, crate::contract::now_ms())
            .await
    };
    let (ra, rb) = tokio::join!(slow, late);
    assert!(
        ra.failed.is_empty(),
        "the first receive finishes under its claim"
    );
    assert_eq!(
        rb.failed.len(),
        1,
        "the second consumer finds the event claimed"
    );
    assert_posted_once_each(&world, &[&first, &update]);
}

/// A first receive whose receive was long ago (an invocation the event source mapping started
/// late, a batch that waited) may no longer be hidden, so the event is claimed, as any other.
pub async fn first_receive_received_long_ago_is_claimed(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    let (first, update, t0) = known_entity_changed(&world, "39").await;
    let mut stale = message(&update, 1);
    stale.received_at_ms = Some(crate::contract::now_ms() - 10 * 60_000);
    let report = world
        .consumer()
        .process_batch(&[stale], REMAINING, t0 + 1)
        .await;
    assert!(report.failed.is_empty());
    assert!(
        matches!(
            world
                .ports
                .dedup
                .claim(&update.id, "probe", t0 + 60_000, t0 + 2)
                .await,
            Ok(Claim::HeldElsewhere { .. })
        ),
        "the stale first receive was claimed"
    );
    assert_eq!(
        world.destination.received_webhook_ids(),
        vec![first.id.clone(), update.id.clone()]
    );
}

/// An event delivered before its entity had a snapshot (the CRM did not give the entity then)
/// is recorded by its claim only. A later copy of it, received once (the offline log drained
/// again, a replay), after a newer event gave the entity a snapshot, is older than that
/// snapshot: it is claimed, finds its claim COMPLETED and takes the news-only rule, instead
/// of going out again as a first receive.
pub async fn late_copy_delivered_before_the_snapshot_is_not_forwarded_again(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    let consumer = world.consumer();
    let t0 = crate::contract::now_ms();
    let early = b24_event(Family::Deal, "ONCRMDEALUPDATE", "38", 100);
    let report = consumer
        .process_batch(&[message(&early, 1)], REMAINING, t0)
        .await;
    assert!(report.failed.is_empty());
    assert_eq!(
        world.destination.delivered_bodies()[0]["entity"],
        Value::Null
    );
    world
        .portal
        .set_entity("deal", "38", deal("38", "Late", "NEW", "1"));
    let later = b24_event(Family::Deal, "ONCRMDEALUPDATE", "38", 300);
    let copy = b24_event(Family::Deal, "ONCRMDEALUPDATE", "38", 100);
    for (n, event) in [&later, &copy].into_iter().enumerate() {
        let report = consumer
            .process_batch(&[message(event, 1)], REMAINING, t0 + 1 + n as i64)
            .await;
        assert!(report.failed.is_empty());
    }
    assert_eq!(
        world.destination.received_webhook_ids(),
        vec![early.id.clone(), later.id.clone()],
        "the copy of the early event is not forwarded again"
    );
}

/// Receives from a real queue (the embedded one, or SQS on moto), hidden for `visibility`.
#[async_trait::async_trait]
pub trait ReceiveFromQueue: Send + Sync {
    async fn receive_one(&self, visibility: Duration) -> Option<QueueMessage>;
}

#[async_trait::async_trait]
impl ReceiveFromQueue for relay_aws::sqs::SqsQueue {
    async fn receive_one(&self, visibility: Duration) -> Option<QueueMessage> {
        self.receive(1, visibility)
            .await
            .expect("sqs ReceiveMessage")
            .pop()
    }
}

#[async_trait::async_trait]
impl ReceiveFromQueue for relay_local::SqliteStore {
    async fn receive_one(&self, visibility: Duration) -> Option<QueueMessage> {
        relay_core::ports::PollingQueue::receive(self, 1, visibility, crate::contract::now_ms())
            .await
            .expect("embedded queue receive")
            .pop()
    }
}

/// Through a real queue: a first receive whose POST outlasts the visibility it was received
/// with is kept hidden by the heartbeat, so a second consumer polling meanwhile gets nothing,
/// and the destination gets one POST. Without the beats the message would be handed out
/// again after 3 s (receive visibility and lease: SQS counts visibility in whole seconds).
pub async fn first_receive_stays_hidden_while_its_post_is_slow(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
    queue: Arc<dyn ReceiveFromQueue>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    let (first, update, t0) = known_entity_changed(&world, "37").await;
    world.ports.queue.send(&update).await.expect("queued");
    world
        .destination
        .hold_answers_to(&update.id, Duration::from_millis(5_500));

    let lease = Duration::from_secs(3);
    let received = queue
        .receive_one(lease)
        .await
        .expect("the update is queued");
    assert_eq!(received.receive_count, 1);
    let worker = world.consumer().with_lease(lease);
    let slow = worker.process_batch(std::slice::from_ref(&received), REMAINING, t0 + 1);
    let second_poll = async {
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        queue.receive_one(lease).await
    };
    let (report, stolen) = tokio::join!(slow, second_poll);
    assert!(report.failed.is_empty(), "the slow delivery completes");
    assert!(
        stolen.is_none(),
        "the message stayed hidden while its POST was in flight"
    );
    assert_posted_once_each(&world, &[&first, &update]);
}

/// A batch does not start a message it could not finish: each group, before each message,
/// looks at the time left then. With less than a whole forward left, the rest of a group is
/// reported failed, unstarted, and nothing is POSTed for it; another group's first message,
/// started at once beside the batch's first, still goes out.
pub async fn batch_stops_taking_messages_before_its_deadline(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    for id in ["41", "42"] {
        world
            .portal
            .set_entity("deal", id, deal(id, "Deadline", "NEW", "1"));
    }
    world
        .destination
        .hold_answers_for(Duration::from_millis(800));
    let forward_timeout = Duration::from_secs(2);
    let consumer = world.consumer().with_forward_timeout(forward_timeout);
    // Deal 41 three times (stamped beyond the twin window, so each is forwarded), deal 42 once.
    let events = [
        b24_event(Family::Deal, "ONCRMDEALUPDATE", "41", 100),
        b24_event(Family::Deal, "ONCRMDEALUPDATE", "42", 100),
        b24_event(Family::Deal, "ONCRMDEALUPDATE", "41", 1_000),
        b24_event(Family::Deal, "ONCRMDEALUPDATE", "41", 2_000),
    ];
    let messages: Vec<_> = events.iter().map(|e| message(e, 1)).collect();
    // Enough for the first forwards and a little more, not for a second whole one after them.
    let remaining =
        forward_timeout + relay_core::consume::DEADLINE_MARGIN + Duration::from_millis(400);
    let report = consumer.process_batch(&messages, remaining, T0_MS).await;
    assert_eq!(
        report.failed,
        vec![
            messages[2].message_id.clone(),
            messages[3].message_id.clone()
        ]
    );
    let mut received = world.destination.received_webhook_ids();
    received.sort();
    let mut started = vec![events[0].id.clone(), events[1].id.clone()];
    started.sort();
    assert_eq!(
        received, started,
        "both groups' first messages, nothing after"
    );
    // Unstarted means unclaimed: the next batch takes them at once.
    let next = consumer
        .process_batch(&messages[2..], REMAINING, T0_MS + 1_000)
        .await;
    assert!(next.failed.is_empty());
    assert_eq!(world.destination.delivered().len(), 4);
}

/// The groups of a batch go side by side: ten events about ten deals are all POSTed before
/// the first answer comes (the destination answers none until all ten are in flight; one at a
/// time, the first POST would time out). Then, for the record, a batch of ten over ten groups
/// against one of ten in a single group (the cost of every batch before), each answer held.
pub async fn groups_of_a_batch_are_posted_side_by_side(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    let ids: Vec<String> = (1..=10).map(|i| (60 + i).to_string()).collect();
    for id in &ids {
        world
            .portal
            .set_entity("deal", id, deal(id, "Side by side", "NEW", "1"));
    }
    world
        .destination
        .answer_together(ids.len(), Duration::from_secs(20));
    let consumer = world
        .consumer()
        .with_forward_timeout(Duration::from_secs(5));
    let batch: Vec<_> = ids
        .iter()
        .map(|id| message(&b24_event(Family::Deal, "ONCRMDEALUPDATE", id, 100), 1))
        .collect();
    let report = consumer.process_batch(&batch, REMAINING, T0_MS).await;
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    assert_eq!(world.destination.delivered().len(), 10);
    assert_eq!(world.destination.most_concurrent(), 10);
    assert_eq!(
        world.portal.requests(),
        1,
        "the ten lookups went as one batch call"
    );

    // Informational, not asserted: wall time of ten groups against one group of ten.
    let hold = Duration::from_millis(200);
    world.destination.hold_answers_for(hold);
    let over_groups: Vec<_> = ids
        .iter()
        .map(|id| message(&b24_event(Family::Deal, "ONCRMDEALUPDATE", id, 1_000), 1))
        .collect();
    let one_group: Vec<_> = (0..10)
        .map(|i| {
            let ts = 1_000 + i * 1_000;
            message(&b24_event(Family::Deal, "ONCRMDEALUPDATE", &ids[0], ts), 1)
        })
        .collect();
    let started = std::time::Instant::now();
    let report = consumer
        .process_batch(&over_groups, REMAINING, T0_MS + 1_000)
        .await;
    let side_by_side = started.elapsed();
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    let started = std::time::Instant::now();
    let report = consumer
        .process_batch(&one_group, REMAINING, T0_MS + 2_000)
        .await;
    let in_order = started.elapsed();
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    println!(
        "batch of 10, each answer held {hold:?}: 10 groups {side_by_side:?}, 1 group {in_order:?} \
         (ratio {:.1})",
        in_order.as_secs_f64() / side_by_side.as_secs_f64().max(f64::EPSILON)
    );
}

/// Within a group the deliveries keep the order they were sent in, while the other groups
/// go on: the first message of each of three groups is in flight at once (the destination
/// answers none before all three are), the group's later ones follow one by one.
pub async fn a_group_keeps_its_order_while_other_groups_proceed(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    for id in ["71", "72", "73"] {
        world
            .portal
            .set_entity("deal", id, deal(id, "Ordered", "NEW", "1"));
    }
    world
        .destination
        .answer_together(3, Duration::from_secs(20));
    // Deal 71 three times, stamped beyond the twin window so each is forwarded.
    let a: Vec<RelayEvent> = [100, 1_000, 2_000]
        .into_iter()
        .map(|ts| b24_event(Family::Deal, "ONCRMDEALUPDATE", "71", ts))
        .collect();
    let b1 = b24_event(Family::Deal, "ONCRMDEALUPDATE", "72", 100);
    let c1 = b24_event(Family::Deal, "ONCRMDEALUPDATE", "73", 100);
    let batch = [
        message(&a[0], 1),
        message(&b1, 1),
        message(&a[1], 1),
        message(&c1, 1),
        message(&a[2], 1),
    ];
    let report = world
        .consumer()
        .with_forward_timeout(Duration::from_secs(5))
        .process_batch(&batch, REMAINING, T0_MS)
        .await;
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    assert_eq!(world.destination.most_concurrent(), 3);
    let received = world.destination.received_webhook_ids();
    let first_three: std::collections::BTreeSet<&String> = received[..3].iter().collect();
    assert_eq!(
        first_three,
        [&a[0].id, &b1.id, &c1.id].into_iter().collect(),
        "each group's first message went out before any answer"
    );
    let group_a: Vec<&String> = received
        .iter()
        .filter(|id| a.iter().any(|e| &e.id == *id))
        .collect();
    assert_eq!(group_a, vec![&a[0].id, &a[1].id, &a[2].id], "in send order");
    assert_eq!(world.destination.delivered().len(), 5);
}

pub async fn racing_consumers_forward_once(ports: ConsumerPorts, probe: Arc<dyn QueueProbe>) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "1", deal("1", "Race", "NEW", "1"));
    // Keep the first delivery in flight while the second consumer tries to claim.
    world
        .destination
        .hold_answers_for(Duration::from_millis(200));
    let (a, b) = (world.consumer(), world.consumer());
    let event = b24_event(Family::Deal, "ONCRMDEALUPDATE", "1", 100);
    let (ma, mb) = (message(&event, 1), message(&event, 1));

    let (ra, rb) = tokio::join!(
        a.process_batch(std::slice::from_ref(&ma), REMAINING, T0_MS),
        b.process_batch(std::slice::from_ref(&mb), REMAINING, T0_MS)
    );
    assert_eq!(
        world.destination.received().len(),
        1,
        "one of the racers forwarded"
    );
    assert_eq!(
        ra.failed.len() + rb.failed.len(),
        1,
        "the loser is told to retry later"
    );
    // The loser's retry, after the winner completed, is a skipped duplicate.
    let loser = if ra.failed.is_empty() { &mb } else { &ma };
    let retry = a
        .process_batch(std::slice::from_ref(loser), REMAINING, T0_MS + 61_000)
        .await;
    assert!(retry.failed.is_empty());
    assert_eq!(world.destination.received().len(), 1);
}

pub async fn dead_consumer_is_taken_over_after_its_lease(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "9", deal("9", "Crash", "NEW", "1"));
    let event = b24_event(Family::Deal, "ONCRMDEALUPDATE", "9", 100);
    // A consumer claimed it with a 30 s lease and then died.
    let claimed = world
        .ports
        .dedup
        .claim(&event.id, "dead-consumer", T0_MS + 30_000, T0_MS)
        .await
        .expect("claim");
    assert_eq!(claimed, Claim::Acquired);

    let consumer = world.consumer();
    let during = consumer
        .process_batch(&[message(&event, 2)], REMAINING, T0_MS + 10_000)
        .await;
    assert_eq!(during.failed.len(), 1, "the live lease is respected");
    assert!(world.destination.received().is_empty());

    let after = consumer
        .process_batch(&[message(&event, 3)], REMAINING, T0_MS + 31_000)
        .await;
    assert!(after.failed.is_empty(), "the expired lease is taken over");
    assert_eq!(world.destination.delivered().len(), 1);
}

pub async fn destination_failing_three_times_then_delivers_once(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "5", deal("5", "Flaky", "NEW", "1"));
    world.destination.fail_next(503, 2);
    world
        .destination
        .fail_next_with_retry_after(429, 1, Some("120"));
    let consumer = world.consumer();
    let event = b24_event(Family::Deal, "ONCRMDEALUPDATE", "5", 100);

    for receive in 1..=3u32 {
        let report = consumer
            .process_batch(
                &[message(&event, receive)],
                REMAINING,
                T0_MS + receive as i64 * 1000,
            )
            .await;
        assert_eq!(report.failed.len(), 1, "attempt {receive} must be retried");
    }
    let last = consumer
        .process_batch(&[message(&event, 4)], REMAINING, T0_MS + 10_000)
        .await;
    assert!(last.failed.is_empty());

    assert_eq!(world.destination.delivered().len(), 1, "delivered once");
    let ids: Vec<String> = world.destination.received_webhook_ids();
    assert_eq!(
        ids,
        vec![event.id.clone(); 4],
        "every try carries the same webhook-id"
    );
    assert_eq!(
        outcomes(&world, &event.id).await,
        vec![
            ("retry".into(), Some(503)),
            ("retry".into(), Some(503)),
            ("retry".into(), Some(429)),
            ("delivered".into(), Some(200)),
        ]
    );
}

pub async fn permanent_4xx_goes_to_the_dead_letter_queue(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "6", deal("6", "Refused", "NEW", "1"));
    world.destination.fail_next(422, 1);
    let consumer = world.consumer();
    let event = b24_event(Family::Deal, "ONCRMDEALUPDATE", "6", 100);
    let msg = message(&event, 1);

    let report = consumer
        .process_batch(std::slice::from_ref(&msg), REMAINING, T0_MS)
        .await;
    assert!(
        report.failed.is_empty(),
        "a permanent failure is not retried by SQS"
    );
    let parked = world.probe.parked().await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].0, msg.body, "the message itself is parked");
    assert!(
        parked[0].1.contains("422"),
        "reason names the status: {}",
        parked[0].1
    );
    assert_eq!(
        outcomes(&world, &event.id).await,
        vec![("dead_letter".into(), Some(422))]
    );
    // Replayed from the DLQ once the receiver is fixed, it is delivered (claim was released).
    let replay = consumer
        .process_batch(&[message(&event, 1)], REMAINING, T0_MS + 60_000)
        .await;
    assert!(replay.failed.is_empty());
    assert_eq!(world.destination.delivered().len(), 1);
}

pub async fn gone_disables_the_destination(ports: ConsumerPorts, probe: Arc<dyn QueueProbe>) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "1", deal("1", "A", "NEW", "1"));
    world
        .portal
        .set_entity("deal", "2", deal("2", "B", "NEW", "1"));
    world.destination.fail_next(410, 1);
    let consumer = world.consumer();
    let first = b24_event(Family::Deal, "ONCRMDEALUPDATE", "1", 100);
    let second = b24_event(Family::Deal, "ONCRMDEALUPDATE", "2", 101);

    let r1 = consumer
        .process_batch(&[message(&first, 1)], REMAINING, T0_MS)
        .await;
    assert!(r1.failed.is_empty());
    let disabled = world
        .ports
        .destinations
        .disabled(&world.destination.url())
        .await
        .expect("destination status readable");
    assert!(disabled.is_some(), "410 disables the destination");

    let r2 = consumer
        .process_batch(&[message(&second, 1)], REMAINING, T0_MS + 1000)
        .await;
    assert!(r2.failed.is_empty());
    assert_eq!(
        world.destination.received().len(),
        1,
        "nothing more is sent there"
    );
    assert_eq!(
        world.probe.parked().await.len(),
        2,
        "both events are kept in the DLQ"
    );
    assert_eq!(
        outcomes(&world, &second.id).await,
        vec![("disabled".into(), None)]
    );

    // Enabled again (`relay destinations enable`, perhaps from another process): the very
    // next event goes there, since only "enabled" answers are remembered.
    world
        .ports
        .destinations
        .enable(&world.destination.url())
        .await
        .expect("destination enabled");
    let third = b24_event(Family::Deal, "ONCRMDEALUPDATE", "1", 102);
    let r3 = consumer
        .process_batch(&[message(&third, 1)], REMAINING, T0_MS + 2000)
        .await;
    assert!(r3.failed.is_empty());
    assert_eq!(world.destination.delivered().len(), 1, "delivered at once");
}

pub async fn batch_of_200_events_stays_under_the_portal_bucket(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, PortalLimits::default()).await;
    let mut messages = Vec::new();
    for i in 1..=200 {
        let id = i.to_string();
        world
            .portal
            .set_entity("deal", &id, deal(&id, "Bulk", "NEW", "1"));
        messages.push(message(
            &b24_event(Family::Deal, "ONCRMDEALUPDATE", &id, 100),
            1,
        ));
    }
    // 200 messages is no Lambda batch (SQS gives 10): this is about the portal's bucket, so
    // the batch may run as long as it needs.
    let report = world
        .consumer()
        .with_soft_deadline()
        .process_batch(&messages, REMAINING, T0_MS)
        .await;

    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    assert_eq!(world.destination.delivered().len(), 200);
    assert_eq!(world.portal.limited(), 0, "the portal never answered 503");
    assert_eq!(
        world.portal.requests(),
        4,
        "200 lookups go as 4 batch calls of 50"
    );
    assert!(world.portal.state().calls.iter().all(|c| c == "batch"));
    // Every forwarded entity is the portal's own record.
    for r in world.destination.delivered() {
        let body = r.json();
        assert_eq!(body["entity"]["ID"], body["entity_id"]);
    }
}

/// Single calls, more than the bucket holds: the client-side limiter spreads them out.
pub async fn single_calls_beyond_the_burst_wait_for_the_bucket(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    // Slow enough that scheduling jitter on a loaded machine (up to ~80 ms between the client's
    // count and the portal's) stays inside the client's two-request margin.
    let limits = PortalLimits {
        per_second: 25.0,
        burst: 10.0,
    };
    let world = World::new(ports, probe, Auth::Webhook, limits).await;
    world
        .portal
        .set_entity("deal", "1", deal("1", "A", "NEW", "1"));
    let client = world.bitrix24_client();
    for _ in 0..30 {
        let answer = client
            .call(PORTAL, "crm.deal.get", json!({"id": "1"}))
            .await
            .expect("crm.deal.get answers");
        assert_eq!(answer.result["TITLE"], "A");
    }
    assert_eq!(world.portal.requests(), 30);
    assert_eq!(world.portal.limited(), 0, "the portal never answered 503");
}

pub async fn rate_limit_answers_back_off_and_retry(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "3", deal("3", "Busy", "NEW", "1"));
    // QUERY_LIMIT_EXCEEDED is backed off in-process; OPERATION_TIME_LIMIT blocks a method for
    // minutes and is given back to the queue instead (fidelity_cases covers it).
    world.portal.inject(MethodReply::query_limit_exceeded());
    world.portal.inject(MethodReply::query_limit_exceeded());
    let event = b24_event(Family::Deal, "ONCRMDEALUPDATE", "3", 100);
    let report = world
        .consumer()
        .process_batch(&[message(&event, 1)], REMAINING, T0_MS)
        .await;
    assert!(report.failed.is_empty());
    assert_eq!(world.portal.requests(), 3, "two refusals, then the answer");
    assert_eq!(
        world.destination.delivered()[0].json()["entity"]["TITLE"],
        "Busy"
    );
}

pub async fn changes_across_add_update_update(ports: ConsumerPorts, probe: Arc<dyn QueueProbe>) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    let consumer = world.consumer();
    let steps = [
        ("ONCRMDEALADD", deal("42", "New deal", "NEW", "100")),
        ("ONCRMDEALUPDATE", deal("42", "Renamed", "NEW", "100")),
        ("ONCRMDEALUPDATE", deal("42", "Renamed", "WON", "250")),
    ];
    for (i, (name, state)) in steps.iter().enumerate() {
        world.portal.set_entity("deal", "42", state.clone());
        let event = b24_event(Family::Deal, name, "42", 100 + i as i64);
        let report = consumer
            .process_batch(&[message(&event, 1)], REMAINING, T0_MS + i as i64 * 1000)
            .await;
        assert!(report.failed.is_empty());
    }
    let bodies: Vec<Value> = world.destination.delivered_bodies();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[0]["changes"], json!([]), "empty on first sight");
    assert_eq!(bodies[0]["entity"], steps[0].1);
    assert_eq!(
        bodies[1]["changes"],
        json!([{"field": "TITLE", "old": "New deal", "new": "Renamed"}])
    );
    assert_eq!(
        bodies[2]["changes"],
        json!([
            {"field": "OPPORTUNITY", "old": "100", "new": "250"},
            {"field": "STAGE_ID", "old": "NEW", "new": "WON"},
        ])
    );
    assert_eq!(bodies[2]["entity"], steps[2].1);
    let key = SnapshotKey {
        source: Source::Bitrix24,
        portal: PORTAL.into(),
        family: Family::Deal,
        entity_type: EntityType::Deal,
        entity_id: "42".into(),
    };
    let stored = world.ports.snapshots.load(&key).await.expect("snapshot");
    assert_eq!(
        stored.map(|s| (s.entity, s.version)),
        Some((steps[2].1.clone(), 102))
    );
}

pub async fn signature_verifies_with_an_independent_hmac(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "8", deal("8", "Signed", "NEW", "1"));
    let event = b24_event(Family::Deal, "ONCRMDEALUPDATE", "8", 100);
    let report = world
        .consumer()
        .process_batch(&[message(&event, 1)], REMAINING, T0_MS)
        .await;
    assert!(report.failed.is_empty());

    let got = &world.destination.delivered()[0];
    let (id, ts, sig) = (
        got.header("webhook-id"),
        got.header("webhook-timestamp"),
        got.header("webhook-signature"),
    );
    assert_eq!(id, event.id);
    assert_eq!(ts, (T0_MS / 1000).to_string());
    assert_eq!(got.header("content-type"), "application/json");
    // Verify as a receiver would, straight from the spec: HMAC-SHA256 over "id.ts.body"
    // with the base64-decoded secret after `whsec_`.
    let key = BASE64
        .decode(SIGNING_SECRET.trim_start_matches("whsec_"))
        .expect("secret is base64");
    let mut mac = <Hmac<Sha256>>::new_from_slice(&key).expect("hmac key");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&got.body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    assert_eq!(sig, expected);
    // And a body changed by one byte would not verify.
    let mut tampered = <Hmac<Sha256>>::new_from_slice(&key).expect("hmac key");
    tampered.update(format!("{id}.{ts}.").as_bytes());
    tampered.update(&got.body[1..]);
    assert_ne!(
        sig,
        format!("v1,{}", BASE64.encode(tampered.finalize().into_bytes()))
    );
}

pub async fn malformed_message_parks_alone(ports: ConsumerPorts, probe: Arc<dyn QueueProbe>) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "11", deal("11", "After", "NEW", "1"));
    let good = b24_event(Family::Deal, "ONCRMDEALUPDATE", "11", 100);
    let good_msg = message(&good, 1);
    let bad = QueueMessage {
        message_id: "bad-1".into(),
        receipt: "bad-receipt".into(),
        body: "{\"v\":1,\"id\":".into(),
        group_id: good.message_group_id(),
        receive_count: 1,
        received_at_ms: Some(crate::contract::now_ms()),
    };
    let report = world
        .consumer()
        .process_batch(&[bad, good_msg], REMAINING, T0_MS)
        .await;
    assert!(
        report.failed.is_empty(),
        "neither fails: {:?}",
        report.failed
    );
    let parked = world.probe.parked().await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].0, "{\"v\":1,\"id\":");
    assert!(parked[0].1.contains("malformed"));
    assert_eq!(world.destination.delivered().len(), 1, "its group goes on");
}

/// A failed message holds back the later ones of its group, and only those: the other group,
/// in flight beside it (the destination answers neither before both are), goes on in order.
pub async fn fifo_group_failure_holds_back_later_messages(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "1", deal("1", "A", "NEW", "1"));
    world
        .portal
        .set_entity("deal", "2", deal("2", "B", "NEW", "1"));
    let a1 = b24_event(Family::Deal, "ONCRMDEALADD", "1", 100);
    // Stamped beyond the twin window: an unchanged entity then still goes out, so the
    // order of the two deliveries is visible.
    let a2 = b24_event(Family::Deal, "ONCRMDEALUPDATE", "1", 1_000);
    let b1 = b24_event(Family::Deal, "ONCRMDEALADD", "2", 100);
    let b2 = b24_event(Family::Deal, "ONCRMDEALUPDATE", "2", 1_000);
    world.destination.fail_next_for(&a1.id, 503, None);
    world
        .destination
        .answer_together(2, Duration::from_secs(20));
    let batch = [
        message(&a1, 1),
        message(&a2, 1),
        message(&b1, 1),
        message(&b2, 1),
    ];
    let report = world
        .consumer()
        .with_forward_timeout(Duration::from_secs(5))
        .process_batch(&batch, REMAINING, T0_MS)
        .await;

    assert_eq!(
        report.failed,
        vec![batch[0].message_id.clone(), batch[1].message_id.clone()],
        "the failed message and the later one of its group"
    );
    let mut ids: Vec<String> = world.destination.received_webhook_ids();
    assert!(!ids.contains(&a2.id), "a2 was not sent ahead of a1");
    ids.sort();
    let mut expected = vec![a1.id.clone(), b1.id.clone(), b2.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(
        world.destination.delivered_webhook_ids(),
        vec![b1.id.clone(), b2.id.clone()],
        "the other group went on, in order"
    );
    assert!(
        outcomes(&world, &a2.id).await.is_empty(),
        "a2 was not processed"
    );
    // a2 was released, not claimed: the next delivery processes it in order.
    let next = world
        .consumer()
        .process_batch(&batch[..2], REMAINING, T0_MS + 10_000)
        .await;
    assert!(next.failed.is_empty());
    let delivered: Vec<String> = world.destination.delivered_webhook_ids();
    assert_eq!(
        delivered,
        vec![b1.id.clone(), b2.id.clone(), a1.id.clone(), a2.id.clone()]
    );
}

pub async fn no_token_in_forwarded_body_or_snapshot(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::OAuth, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "77", deal("77", "Secret-free", "NEW", "1"));
    // An old-style message whose data still holds `auth`: it must not leave either.
    let mut event = b24_event(Family::Deal, "ONCRMDEALUPDATE", "77", 100);
    event.data["auth"] =
        json!({"access_token": "access-0-SECRET", "application_token": "app-token-SECRET"});
    let report = world
        .consumer()
        .process_batch(&[message(&event, 1)], REMAINING, T0_MS)
        .await;
    assert!(report.failed.is_empty());
    let body = String::from_utf8(world.destination.delivered()[0].body.clone()).expect("utf8");
    assert!(body.contains("Secret-free"), "entity came through OAuth");
    assert!(
        !body.contains("SECRET"),
        "no token in the forwarded body: {body}"
    );
    let key = SnapshotKey {
        source: Source::Bitrix24,
        portal: PORTAL.into(),
        family: Family::Deal,
        entity_type: EntityType::Deal,
        entity_id: "77".into(),
    };
    let snapshot = world
        .ports
        .snapshots
        .load(&key)
        .await
        .expect("snapshot")
        .expect("saved");
    assert!(!snapshot.entity.to_string().contains("SECRET"));
}

pub async fn expired_token_is_refreshed_once_and_saved(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::OAuth, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "12", deal("12", "Fresh", "NEW", "1"));
    world.portal.expire_access_token();
    let event = b24_event(Family::Deal, "ONCRMDEALUPDATE", "12", 100);
    let report = world
        .consumer()
        .process_batch(&[message(&event, 1)], REMAINING, T0_MS)
        .await;
    assert!(report.failed.is_empty());
    assert_eq!(world.portal.state().refreshes, 1);
    assert_eq!(
        world.destination.delivered()[0].json()["entity"]["TITLE"],
        "Fresh"
    );
    let stored = world
        .ports
        .tokens
        .get(PORTAL)
        .await
        .expect("tokens")
        .expect("stored");
    let (access, refresh) = {
        let s = world.portal.state();
        (s.access_token.clone(), s.refresh_token.clone())
    };
    assert_eq!(stored.access_token.expose(), access);
    assert_eq!(
        stored.refresh_token.expose(),
        refresh,
        "the new refresh token is saved"
    );
    assert_eq!(stored.application_token.expose(), "app-token-SECRET");
}

pub async fn missing_and_deleted_entities_forward_null(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    let consumer = world.consumer();
    let gone = b24_event(Family::Deal, "ONCRMDEALUPDATE", "404", 100);
    let task_gone = b24_event(Family::Activity, "ONTASKUPDATE", "405", 100);
    let deleted = b24_event(Family::Deal, "ONCRMDEALDELETE", "406", 100);
    for event in [&gone, &task_gone, &deleted] {
        let report = consumer
            .process_batch(&[message(event, 1)], REMAINING, T0_MS)
            .await;
        assert!(report.failed.is_empty(), "{} is not an error", event.event);
    }
    assert_eq!(world.portal.requests(), 2, "a delete event asks nothing");
    let bodies: Vec<Value> = world.destination.delivered_bodies();
    assert_eq!(bodies.len(), 3);
    assert!(bodies
        .iter()
        .all(|b| b["entity"].is_null() && b["changes"] == json!([])));
}

pub async fn tasks_and_smart_invoices_unwrap_their_entity(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("task", "31", json!({"id": "31", "title": "Call back"}));
    world
        .portal
        .set_entity("item:31", "5", json!({"id": 5, "title": "Invoice #5"}));
    let consumer = world.consumer();
    for event in [
        b24_event(Family::Activity, "ONTASKUPDATE", "31", 100),
        b24_event(Family::Invoice, "ONCRMDYNAMICITEMUPDATE_31", "5", 100),
    ] {
        let report = consumer
            .process_batch(&[message(&event, 1)], REMAINING, T0_MS)
            .await;
        assert!(report.failed.is_empty());
    }
    let bodies: Vec<Value> = world.destination.delivered_bodies();
    assert_eq!(bodies[0]["entity"]["title"], "Call back");
    assert_eq!(bodies[1]["entity"]["title"], "Invoice #5");
}

pub async fn salesman_events_are_enriched_through_v3(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world.salesman.set_record(
        "deal",
        "12",
        json!({"did": 12, "title": "SM deal", "step": "40"}),
    );
    world
        .salesman
        .set_record("lead", "12", json!({"id": 12, "title": "SM lead"}));
    let data = json!({"did": "12", "stepOld": "20", "stepNew": "40"});
    let name = "deal.change.step";
    let event = RelayEvent {
        v: 1,
        id: envelope_id(Source::Salesman, SALESMAN_IDENTITY, name, &data, 200),
        source: Source::Salesman,
        portal: SALESMAN_IDENTITY.into(),
        domain: None,
        family: Family::Deal,
        event: name.into(),
        entity_type: None,
        entity_id: Some("12".into()),
        ts: 200,
        received_at: "2026-11-22T10:00:00Z".into(),
        data,
    };
    let lead = RelayEvent {
        event: "lead.add".into(),
        family: Family::Lead,
        id: "f".repeat(64),
        ..event.clone()
    };
    let report = world
        .consumer()
        .process_batch(&[message(&event, 1), message(&lead, 1)], REMAINING, T0_MS)
        .await;
    assert!(report.failed.is_empty());
    // The two are of two groups, worked on side by side: found by id, not by order.
    let bodies: Vec<Value> = world.destination.delivered_bodies();
    let body_of = |id: &str| {
        bodies
            .iter()
            .find(|b| b["id"] == id)
            .unwrap_or_else(|| panic!("{id} delivered"))
    };
    assert_eq!(body_of(&event.id)["entity"]["title"], "SM deal");
    // developer/v3/methods/lead.php `info`: the lead is read too, with `id`.
    assert_eq!(body_of(&lead.id)["entity"]["title"], "SM lead");
    assert_eq!(world.salesman.state().requests, 2);
    assert!(world.salesman.state().calls.contains(&(
        "lead".to_string(),
        "info".to_string(),
        json!({"id": 12})
    )));
}

pub async fn destination_timeout_is_retried(ports: ConsumerPorts, probe: Arc<dyn QueueProbe>) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .destination
        .hold_answers_for(Duration::from_millis(500));
    let event = b24_event(Family::Deal, "ONCRMDEALDELETE", "13", 100);
    let report = world
        .consumer()
        .with_forward_timeout(Duration::from_millis(50))
        .process_batch(&[message(&event, 1)], REMAINING, T0_MS)
        .await;
    assert_eq!(report.failed.len(), 1, "a timeout is retried, not dropped");
    let attempts = world
        .ports
        .attempts
        .list(&event.id)
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_str(), "retry");
    assert_eq!(attempts[0].status, None);
    assert_eq!(attempts[0].error.as_deref(), Some("timed out"));
}

pub async fn crm_outage_is_retried_and_recorded(ports: ConsumerPorts, probe: Arc<dyn QueueProbe>) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    world
        .portal
        .set_entity("deal", "14", deal("14", "Later", "NEW", "1"));
    world.portal.inject(MethodReply::error(
        500,
        "INTERNAL_SERVER_ERROR",
        "Internal server error",
    ));
    let event = b24_event(Family::Deal, "ONCRMDEALUPDATE", "14", 100);
    let consumer = world.consumer();
    let first = consumer
        .process_batch(&[message(&event, 1)], REMAINING, T0_MS)
        .await;
    assert_eq!(first.failed.len(), 1);
    assert!(
        world.destination.received().is_empty(),
        "nothing half-enriched is sent"
    );
    let second = consumer
        .process_batch(&[message(&event, 2)], REMAINING, T0_MS + 5_000)
        .await;
    assert!(second.failed.is_empty());
    assert_eq!(
        outcomes(&world, &event.id).await,
        vec![("retry".into(), None), ("delivered".into(), Some(200))]
    );
}

pub async fn salesman_missing_record_is_null_and_bad_key_parks(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, fast_limits()).await;
    let sm_event = |name: &str, family, id: &str, ts| {
        let data = json!({"clid": id});
        RelayEvent {
            v: 1,
            id: envelope_id(Source::Salesman, SALESMAN_IDENTITY, name, &data, ts),
            source: Source::Salesman,
            portal: SALESMAN_IDENTITY.into(),
            domain: None,
            family,
            event: name.into(),
            entity_type: None,
            entity_id: Some(id.into()),
            ts,
            received_at: "2026-11-22T10:00:00Z".into(),
            data,
        }
    };
    let missing = sm_event("client.edit", Family::Company, "999", 300);
    let report = world
        .consumer()
        .process_batch(&[message(&missing, 1)], REMAINING, T0_MS)
        .await;
    assert!(report.failed.is_empty());
    assert!(world.destination.delivered()[0].json()["entity"].is_null());

    // A wrong API key is not fixed by retrying: parked with the reason, nothing forwarded.
    world.salesman.state().apikey = "rotated".into();
    let refused = sm_event("client.edit", Family::Company, "1000", 301);
    let report = world
        .consumer()
        .process_batch(&[message(&refused, 1)], REMAINING, T0_MS + 1000)
        .await;
    assert!(report.failed.is_empty());
    assert_eq!(world.destination.received().len(), 1);
    let parked = world.probe.parked().await;
    assert_eq!(parked.len(), 1);
    assert!(
        parked[0].1.contains("enrichment refused"),
        "{}",
        parked[0].1
    );
    assert!(!parked[0].1.contains("sm-apikey"), "no key in the reason");
}

/// Generates one `#[tokio::test]` per consumer case for a backend. `$setup` is an async fn
/// returning `(ConsumerPorts, Arc<dyn QueueProbe>)` on fresh (or freshly keyed) storage.
#[macro_export]
macro_rules! consumer_case_tests {
    ($setup:path) => {
        $crate::consumer_case_tests!(@each $setup;
            duplicate_delivery_forwards_once,
            redelivery_forwards_only_news,
            offline_twin_in_another_second_is_not_forwarded_again,
            heartbeat_keeps_a_slow_delivery_claimed,
            first_receive_of_a_known_entity_claims_nothing,
            first_receive_that_cannot_stay_hidden_is_claimed_instead,
            first_receive_received_long_ago_is_claimed,
            late_copy_delivered_before_the_snapshot_is_not_forwarded_again,
            batch_stops_taking_messages_before_its_deadline,
            groups_of_a_batch_are_posted_side_by_side,
            a_group_keeps_its_order_while_other_groups_proceed,
            racing_consumers_forward_once,
            dead_consumer_is_taken_over_after_its_lease,
            destination_failing_three_times_then_delivers_once,
            permanent_4xx_goes_to_the_dead_letter_queue,
            gone_disables_the_destination,
            batch_of_200_events_stays_under_the_portal_bucket,
            single_calls_beyond_the_burst_wait_for_the_bucket,
            rate_limit_answers_back_off_and_retry,
            changes_across_add_update_update,
            signature_verifies_with_an_independent_hmac,
            malformed_message_parks_alone,
            fifo_group_failure_holds_back_later_messages,
            no_token_in_forwarded_body_or_snapshot,
            expired_token_is_refreshed_once_and_saved,
            missing_and_deleted_entities_forward_null,
            tasks_and_smart_invoices_unwrap_their_entity,
            salesman_events_are_enriched_through_v3,
            salesman_missing_record_is_null_and_bad_key_parks,
            destination_timeout_is_retried,
            crm_outage_is_retried_and_recorded,
        );
    };
    (@each $setup:path; $($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let (ports, probe) = $setup().await;
            $crate::consumer_cases::$name(ports, probe).await;
        }
    )*};
}
