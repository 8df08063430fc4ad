//! The ports' contract: plain async checks that every implementation (SQLite in `relay serve`,
//! SQS + DynamoDB on moto) must pass, run by `contract_sqlite.rs` and `contract_moto.rs`, so
//! the embedded store and the cloud cannot drift apart. Each check panics with what broke.

use async_trait::async_trait;
use relay_aws::sqs::SqsQueue;
use relay_core::catalogue::EntityType;
use relay_core::event::{envelope_id, Family, RelayEvent, Source};
use relay_core::lifecycle::bind::Binding;
use relay_core::ports::{
    Attempt, AttemptLog, BindPlanStore, Claim, DeadLetter, DedupStore, DestinationStatus,
    Ownership, PollingQueue, PortalTokens, Queue, QueueMessage, RedriveFilter, Snapshot,
    SnapshotKey, SnapshotSave, SnapshotStore, TokenStore,
};
use relay_core::secret::Secret;
use relay_local::SqliteStore;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An arbitrary fixed "now" for the clock-driven checks (2026-11-22T10:00:00Z).
const T0: i64 = 1_795_860_000_000;

/// The claim owner of the single-consumer checks.
const OWNER: &str = "consumer-a";

fn unique(label: &str) -> String {
    crate::moto::unique_name(label)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A Bitrix24 deal event about `entity_id` (`n` varies the data, so the id).
pub fn sample_event(portal: &str, entity_id: &str, n: i64) -> RelayEvent {
    let data = serde_json::json!({"FIELDS": {"ID": entity_id}, "n": n});
    RelayEvent {
        v: 1,
        id: envelope_id(
            Source::Bitrix24,
            portal,
            "ONCRMDEALUPDATE",
            &data,
            1_766_047_124 + n,
        ),
        source: Source::Bitrix24,
        portal: portal.to_string(),
        domain: Some("example.bitrix24.ru".into()),
        family: Family::Deal,
        event: "ONCRMDEALUPDATE".into(),
        entity_type: Some(EntityType::Deal),
        entity_id: Some(entity_id.to_string()),
        ts: 1_766_047_124 + n,
        received_at: "2026-11-22T10:00:00Z".into(),
        data,
    }
}

// ---- DedupStore ------------------------------------------------------------------------------

/// Absent → Acquired; a second claim while the lease is live → HeldElsewhere with that lease.
pub async fn dedup_claim_then_held(store: &dyn DedupStore) {
    let id = unique("dedup");
    assert_eq!(
        store.claim(&id, OWNER, T0 + 1_000, T0).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(
        store.claim(&id, OWNER, T0 + 5_000, T0 + 10).await.unwrap(),
        Claim::HeldElsewhere {
            lease_until_ms: T0 + 1_000
        },
        "a live lease must refuse a second claim and name its end"
    );
}

/// A lease that has passed (a consumer died after claiming) is taken over, with the new lease.
pub async fn dedup_expired_lease_is_taken_over(store: &dyn DedupStore) {
    let id = unique("dedup");
    assert_eq!(
        store.claim(&id, OWNER, T0 + 1_000, T0).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(
        store
            .claim(&id, OWNER, T0 + 9_000, T0 + 1_000)
            .await
            .unwrap(),
        Claim::Acquired,
        "a lease ending at now has passed"
    );
    assert_eq!(
        store
            .claim(&id, OWNER, T0 + 9_500, T0 + 2_000)
            .await
            .unwrap(),
        Claim::HeldElsewhere {
            lease_until_ms: T0 + 9_000
        },
        "the take-over's own lease must hold"
    );
}

/// COMPLETED refuses claims until its own expiry (read from the record, not TTL), then a
/// claim succeeds again.
pub async fn dedup_completed_until_it_expires(store: &dyn DedupStore) {
    let id = unique("dedup");
    assert_eq!(
        store.claim(&id, OWNER, T0 + 1_000, T0).await.unwrap(),
        Claim::Acquired
    );
    store.complete(&id, OWNER, T0 + 60_000).await.unwrap();
    assert_eq!(
        store
            .claim(&id, OWNER, T0 + 3_000, T0 + 2_000)
            .await
            .unwrap(),
        Claim::AlreadyCompleted
    );
    assert_eq!(
        store
            .claim(&id, OWNER, T0 + 62_000, T0 + 59_999)
            .await
            .unwrap(),
        Claim::AlreadyCompleted,
        "still completed one millisecond before its expiry"
    );
    assert_eq!(
        store
            .claim(&id, OWNER, T0 + 61_000, T0 + 60_000)
            .await
            .unwrap(),
        Claim::Acquired,
        "an expired COMPLETED record must not block the event forever"
    );
}

/// Release after a failure lets the retry claim at once; release never drops a COMPLETED record.
pub async fn dedup_release(store: &dyn DedupStore) {
    let id = unique("dedup");
    assert_eq!(
        store.claim(&id, OWNER, T0 + 60_000, T0).await.unwrap(),
        Claim::Acquired
    );
    store.release(&id, OWNER).await.unwrap();
    assert_eq!(
        store.claim(&id, OWNER, T0 + 60_000, T0 + 1).await.unwrap(),
        Claim::Acquired,
        "a released claim is free before its lease ends"
    );
    store.complete(&id, OWNER, T0 + 600_000).await.unwrap();
    store.release(&id, OWNER).await.unwrap();
    assert_eq!(
        store.claim(&id, OWNER, T0 + 60_000, T0 + 2).await.unwrap(),
        Claim::AlreadyCompleted,
        "release must not undo a completion (that would forward twice)"
    );
}

/// The owner token: a consumer whose lease ran out and was taken over cannot extend, release
/// or complete the new holder's claim; the holder can, and a heartbeat keeps the lease live.
pub async fn dedup_only_the_owner_extends_releases_completes(store: &dyn DedupStore) {
    let id = unique("dedup");
    let (stale, fresh) = ("consumer-stale", "consumer-fresh");
    assert_eq!(
        store.claim(&id, stale, T0 + 1_000, T0).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(
        store.extend(&id, stale, T0 + 5_000).await.unwrap(),
        Ownership::Held
    );
    assert_eq!(
        store
            .claim(&id, fresh, T0 + 9_000, T0 + 4_999)
            .await
            .unwrap(),
        Claim::HeldElsewhere {
            lease_until_ms: T0 + 5_000
        },
        "the heartbeat moved the lease"
    );
    // The stale holder stalls past its lease; the fresh one takes over.
    assert_eq!(
        store
            .claim(&id, fresh, T0 + 9_000, T0 + 5_000)
            .await
            .unwrap(),
        Claim::Acquired
    );
    assert_eq!(
        store.extend(&id, stale, T0 + 20_000).await.unwrap(),
        Ownership::Lost
    );
    store.release(&id, stale).await.unwrap();
    assert_eq!(
        store.complete(&id, stale, T0 + 600_000).await.unwrap(),
        Ownership::Lost
    );
    assert_eq!(
        store
            .claim(&id, "consumer-third", T0 + 9_500, T0 + 6_000)
            .await
            .unwrap(),
        Claim::HeldElsewhere {
            lease_until_ms: T0 + 9_000
        },
        "a stale holder's release/complete/extend must leave the new claim as it was"
    );
    assert_eq!(
        store.complete(&id, fresh, T0 + 600_000).await.unwrap(),
        Ownership::Held
    );
    assert_eq!(
        store
            .claim(&id, stale, T0 + 9_500, T0 + 7_000)
            .await
            .unwrap(),
        Claim::AlreadyCompleted
    );
    assert_eq!(
        store.extend(&id, fresh, T0 + 20_000).await.unwrap(),
        Ownership::Lost,
        "a completed record has no lease to extend"
    );
}

/// Eight consumers claim one id at the same moment: exactly one wins, the rest see its lease.
pub async fn dedup_racing_claims_have_one_winner(store: Arc<dyn DedupStore>) {
    let id = unique("dedup");
    let claims: Vec<_> = (0..8)
        .map(|i| {
            let (store, id) = (Arc::clone(&store), id.clone());
            tokio::spawn(async move {
                store
                    .claim(&id, &format!("consumer-{i}"), T0 + 30_000 + i, T0)
                    .await
            })
        })
        .collect();
    let mut acquired = 0;
    let mut held = 0;
    for claim in claims {
        match claim.await.unwrap().unwrap() {
            Claim::Acquired => acquired += 1,
            Claim::HeldElsewhere { lease_until_ms } => {
                assert!((T0 + 30_000..T0 + 30_008).contains(&lease_until_ms));
                held += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((acquired, held), (1, 7), "exactly one claim may win");
}

// ---- SnapshotStore ---------------------------------------------------------------------------

fn snapshot_key(portal: &str, entity_id: &str) -> SnapshotKey {
    SnapshotKey {
        source: Source::Bitrix24,
        portal: portal.to_string(),
        family: Family::Deal,
        entity_type: EntityType::Deal,
        entity_id: entity_id.to_string(),
    }
}

/// Two kinds in one family with the same id are two snapshots (a requisite and a bank detail
/// may both be 5); `delete` forgets one entity and leaves the other kind alone.
pub async fn snapshot_kinds_are_apart_and_delete_forgets_one(store: &dyn SnapshotStore) {
    let portal = unique("portal");
    let requisite = SnapshotKey {
        family: Family::Requisite,
        entity_type: EntityType::Requisite,
        ..snapshot_key(&portal, "5")
    };
    let bankdetail = SnapshotKey {
        entity_type: EntityType::Bankdetail,
        ..requisite.clone()
    };
    let snap = |name: &str| Snapshot {
        entity: serde_json::json!({"ID": "5", "NAME": name}),
        version: 1,
        delivered: Vec::new(),
    };
    store.save(&requisite, &snap("Requisite 5")).await.unwrap();
    store.save(&bankdetail, &snap("Bank 5")).await.unwrap();
    assert_eq!(
        store.load(&requisite).await.unwrap(),
        Some(snap("Requisite 5"))
    );
    assert_eq!(store.load(&bankdetail).await.unwrap(), Some(snap("Bank 5")));
    store.delete(&bankdetail).await.unwrap();
    assert_eq!(store.load(&bankdetail).await.unwrap(), None);
    assert_eq!(
        store.load(&requisite).await.unwrap(),
        Some(snap("Requisite 5"))
    );
    // Deleting what is not there is not an error.
    store.delete(&bankdetail).await.unwrap();
}

/// Save and load round-trip the entity and its delivered events exactly; an older version is
/// Stale and changes nothing; the same version may be written again (a redelivery, or a twin
/// added to the deliveries); a newer one replaces it.
pub async fn snapshot_versions(store: &dyn SnapshotStore) {
    let key = snapshot_key(&unique("portal"), "7405");
    assert_eq!(store.load(&key).await.unwrap(), None);
    let mut v2 = Snapshot {
        entity: serde_json::json!({"ID": "7405", "TITLE": "Сделка №1", "OPPORTUNITY": "100.00", "UF_CRM_1": ["a", null]}),
        version: 2,
        delivered: Vec::new(),
    };
    let retention = std::time::Duration::from_secs(7 * 86_400);
    v2.remember(&"a".repeat(64), T0, retention);
    assert_eq!(store.save(&key, &v2).await.unwrap(), SnapshotSave::Saved);
    assert_eq!(store.load(&key).await.unwrap(), Some(v2.clone()));
    v2.remember(&"b".repeat(64), T0 + 1_000, retention);
    let loaded = store.load(&key).await.unwrap();
    assert!(loaded
        .as_ref()
        .is_some_and(|s| s.remembers(&"a".repeat(64))));
    assert!(loaded.is_some_and(|s| !s.remembers(&"b".repeat(64))));
    assert_eq!(store.save(&key, &v2).await.unwrap(), SnapshotSave::Saved);
    assert_eq!(store.load(&key).await.unwrap(), Some(v2.clone()));
    let v1 = Snapshot {
        entity: serde_json::json!({"ID": "7405", "TITLE": "old"}),
        version: 1,
        delivered: Vec::new(),
    };
    assert_eq!(store.save(&key, &v1).await.unwrap(), SnapshotSave::Stale);
    assert_eq!(
        store.load(&key).await.unwrap(),
        Some(v2.clone()),
        "a stale save must not write"
    );
    assert_eq!(store.save(&key, &v2).await.unwrap(), SnapshotSave::Saved);
    let v3 = Snapshot {
        entity: serde_json::json!({"ID": "7405", "TITLE": "new"}),
        version: 3,
        delivered: Vec::new(),
    };
    assert_eq!(store.save(&key, &v3).await.unwrap(), SnapshotSave::Saved);
    assert_eq!(store.load(&key).await.unwrap(), Some(v3));
}

/// What a snapshot holds comes back exactly, whatever the store packs it into: a deal as
/// `crm.deal.get` answers it (nulls, empty strings, arrays, Cyrillic; bitrix24/b24restdocs
/// api-reference/crm/deals/crm-deal-get.md) and a full list of delivered events whose ids are
/// relay ids (hex), shorter, upper-case or not hex at all.
pub async fn snapshot_round_trips_exactly(store: &dyn SnapshotStore) {
    let key = snapshot_key(&unique("portal"), "410");
    let mut entity = serde_json::json!({
        "ID": "410", "TITLE": "Сделка №1 \"Ромашка\"", "TYPE_ID": "COMPLEX", "STAGE_ID": "PREPARATION",
        "PROBABILITY": "99", "CURRENCY_ID": "EUR", "OPPORTUNITY": "1000000.00", "LEAD_ID": null,
        "COMMENTS": "[B]Example comment[/B]\nстрока 2", "ADDITIONAL_INFO": "",
        "UF_CRM_1721244482250": ["a", null, "", "б"], "UF_CRM_1721244482251": false,
        "UF_CRM_1721244482252": 12.5, "UF_CRM_1721244482253": {"nested": [1, {"k": null}]}
    });
    for n in 0..30 {
        entity[format!("UF_CRM_17212445{n:05}")] = serde_json::json!(format!("значение {n}"));
    }
    let mut snapshot = Snapshot {
        entity,
        version: 7,
        delivered: Vec::new(),
    };
    let retention = std::time::Duration::from_secs(7 * 86_400);
    let ids = [
        "00ff".repeat(16),
        "AB".repeat(32),
        "abc.v2".to_string(),
        "событие".to_string(),
        "0123456789abcdef".repeat(4),
        "fe".repeat(32),
        "1".repeat(32),
        "9a".repeat(32),
        "last".repeat(16),
    ];
    for (n, id) in ids.iter().enumerate() {
        snapshot.remember(id, T0 + n as i64 * 1_000, retention);
    }
    assert_eq!(snapshot.delivered.len(), relay_core::ports::DELIVERED_KEPT);
    assert_eq!(
        store.save(&key, &snapshot).await.unwrap(),
        SnapshotSave::Saved
    );
    let loaded = store.load(&key).await.unwrap().expect("saved");
    assert_eq!(loaded, snapshot);
    assert!(ids[1..].iter().all(|id| loaded.remembers(id)));
    assert!(!loaded.remembers(&ids[0]), "only the last few are kept");
}

/// Uninstall deletes every snapshot of that portal and source, and nothing else (not portal
/// `<p>x`, whose key shares the prefix, nor the same portal id under the other source).
pub async fn snapshot_delete_portal(store: &dyn SnapshotStore) {
    let portal = unique("portal");
    let snap = Snapshot {
        entity: serde_json::json!({"ID": "1"}),
        version: 1,
        delivered: Vec::new(),
    };
    let mine = [snapshot_key(&portal, "1"), snapshot_key(&portal, "2")];
    let neighbour = snapshot_key(&format!("{portal}x"), "1");
    let other_source = SnapshotKey {
        source: Source::Salesman,
        ..snapshot_key(&portal, "1")
    };
    for key in mine.iter().chain([&neighbour, &other_source]) {
        assert_eq!(store.save(key, &snap).await.unwrap(), SnapshotSave::Saved);
    }
    assert_eq!(
        store
            .delete_portal(Source::Bitrix24, &portal)
            .await
            .unwrap(),
        2
    );
    for key in &mine {
        assert_eq!(store.load(key).await.unwrap(), None);
    }
    assert!(store.load(&neighbour).await.unwrap().is_some());
    assert!(store.load(&other_source).await.unwrap().is_some());
    // An uninstall retried after a failure finds nothing more to delete, and is no error.
    assert_eq!(
        store
            .delete_portal(Source::Bitrix24, &portal)
            .await
            .unwrap(),
        0
    );
}

// ---- TokenStore ------------------------------------------------------------------------------

fn tokens(member_id: &str, refresh: &str) -> PortalTokens {
    PortalTokens {
        member_id: member_id.to_string(),
        domain: "example.bitrix24.ru".into(),
        application_token: Secret::new("app-token-1"),
        access_token: Secret::new("access-1"),
        refresh_token: Secret::new(refresh),
        // Long past: an expired access token must not make the record vanish (it is how the
        // refresh token renews it).
        expires_at_ms: 1_000,
        client_endpoint: "https://example.bitrix24.ru/rest/".into(),
        scope: "crm,task".into(),
        server_endpoint: String::new(),
    }
}

/// Put, get, overwrite (a refresh), list and delete portal tokens.
pub async fn tokens_crud(store: &dyn TokenStore) {
    let member = unique("member");
    let other = unique("member");
    assert_eq!(store.get(&member).await.unwrap(), None);
    store.put(&tokens(&member, "refresh-1")).await.unwrap();
    store.put(&tokens(&other, "refresh-x")).await.unwrap();
    assert_eq!(
        store.get(&member).await.unwrap(),
        Some(tokens(&member, "refresh-1"))
    );
    store.put(&tokens(&member, "refresh-2")).await.unwrap();
    let got = store.get(&member).await.unwrap().unwrap();
    assert_eq!(got.refresh_token.expose(), "refresh-2");
    let listed = store.list().await.unwrap();
    assert!(listed.contains(&tokens(&member, "refresh-2")));
    assert!(listed.contains(&tokens(&other, "refresh-x")));
    store.delete(&member).await.unwrap();
    assert_eq!(store.get(&member).await.unwrap(), None);
    assert!(store.get(&other).await.unwrap().is_some());
}

// ---- BindPlanStore ---------------------------------------------------------------------------

/// A plan with online handlers, an offline-log binding (no handler) and the wake-up.
fn bind_plan(base: &str) -> Vec<Binding> {
    vec![
        Binding {
            event: "ONCRMDEALUPDATE".into(),
            handler: Some(format!("{base}/deal")),
            offline: false,
        },
        Binding {
            event: "ONCRMDEALUPDATE".into(),
            handler: None,
            offline: true,
        },
        Binding {
            event: "ONOFFLINEEVENT".into(),
            handler: Some(format!("{base}/app")),
            offline: false,
        },
    ]
}

/// A portal's plan comes back exactly as saved, a new `relay bind` replaces it, one portal's
/// plan is not another's, and a forgotten plan is gone (forgetting twice is fine).
pub async fn bind_plan_save_load_replace_forget(store: &dyn BindPlanStore) {
    let member = unique("member");
    let other = unique("member");
    assert_eq!(store.load_plan(&member).await.unwrap(), None);
    store
        .save_plan(&member, &bind_plan("https://a.example"))
        .await
        .unwrap();
    store
        .save_plan(&other, &bind_plan("https://b.example"))
        .await
        .unwrap();
    assert_eq!(
        store.load_plan(&member).await.unwrap(),
        Some(bind_plan("https://a.example"))
    );
    store
        .save_plan(&member, &bind_plan("https://c.example")[..1])
        .await
        .unwrap();
    assert_eq!(
        store.load_plan(&member).await.unwrap(),
        Some(bind_plan("https://c.example")[..1].to_vec())
    );
    store.forget_plan(&member).await.unwrap();
    store.forget_plan(&member).await.unwrap();
    assert_eq!(store.load_plan(&member).await.unwrap(), None);
    assert_eq!(
        store.load_plan(&other).await.unwrap(),
        Some(bind_plan("https://b.example"))
    );
}

// ---- AttemptLog ------------------------------------------------------------------------------

fn attempt(event_id: &str, at_ms: i64, status: Option<u16>, outcome: &str) -> Attempt {
    Attempt {
        event_id: event_id.to_string(),
        at_ms,
        destination: "https://hooks.example/crm".into(),
        status,
        latency_ms: 12,
        outcome: outcome.parse().expect("an outcome the consumer writes"),
        error: status
            .filter(|s| *s >= 500)
            .map(|s| format!("destination answered {s}")),
        route: (outcome == "delivered").then(|| "won-deals".to_string()),
    }
}

/// Attempts of one event come back oldest first whatever order they were recorded in, two in
/// the same millisecond both kept, and no other event's attempts mixed in.
pub async fn attempts_oldest_first(log: &dyn AttemptLog) {
    let id = unique("event");
    let recorded = [
        attempt(&id, T0 + 300, Some(200), "delivered"),
        attempt(&id, T0 + 100, None, "retry"),
        attempt(&id, T0 + 200, Some(503), "retry"),
        attempt(&id, T0 + 200, Some(502), "retry"),
    ];
    for a in &recorded {
        log.record(a).await.unwrap();
    }
    log.record(&attempt(&unique("event"), T0, Some(200), "delivered"))
        .await
        .unwrap();
    let listed = log.list(&id).await.unwrap();
    assert_eq!(listed.len(), 4);
    let times: Vec<i64> = listed.iter().map(|a| a.at_ms).collect();
    assert_eq!(times, vec![T0 + 100, T0 + 200, T0 + 200, T0 + 300]);
    assert_eq!(listed[0], recorded[1]);
    assert_eq!(listed[3], recorded[0]);
    assert!(listed.contains(&recorded[2]) && listed.contains(&recorded[3]));
    assert_eq!(log.list(&unique("event")).await.unwrap(), vec![]);
}

// ---- DestinationStatus -----------------------------------------------------------------------

/// 410 disables one destination (with its reason) until enabled again; others stay enabled.
pub async fn destination_disable_enable(status: &dyn DestinationStatus) {
    let dest = format!("https://hooks.example/{}?token=abc", unique("d"));
    let other = format!("https://hooks.example/{}", unique("d"));
    assert_eq!(status.disabled(&dest).await.unwrap(), None);
    status
        .disable(&dest, "answered 410 Gone", T0)
        .await
        .unwrap();
    assert_eq!(
        status.disabled(&dest).await.unwrap().as_deref(),
        Some("answered 410 Gone")
    );
    assert_eq!(status.disabled(&other).await.unwrap(), None);
    status.enable(&dest).await.unwrap();
    assert_eq!(status.disabled(&dest).await.unwrap(), None);
}

// ---- Queue -----------------------------------------------------------------------------------

/// What a queue check needs besides `Queue`: the consumer's side of the same queue (Lambda's
/// event source mapping on SQS, `PollingQueue` on SQLite) and its dead letters.
#[async_trait]
pub trait QueueProbe: Send + Sync {
    /// Messages visible now (up to 10), hidden for `visibility` once received.
    async fn receive_now(&self, visibility: Duration) -> Vec<QueueMessage>;
    async fn delete(&self, receipt: &str);
    async fn dead_letters(&self) -> Vec<DeadLetter>;
    async fn redrive(&self, filter: &RedriveFilter) -> usize;
}

#[async_trait]
impl QueueProbe for SqsQueue {
    async fn receive_now(&self, visibility: Duration) -> Vec<QueueMessage> {
        self.receive(10, visibility).await.unwrap()
    }
    async fn delete(&self, receipt: &str) {
        SqsQueue::delete(self, receipt).await.unwrap()
    }
    async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.list_dead_letters().await.unwrap()
    }
    async fn redrive(&self, filter: &RedriveFilter) -> usize {
        self.redrive_dead_letters(filter).await.unwrap()
    }
}

#[async_trait]
impl QueueProbe for SqliteStore {
    async fn receive_now(&self, visibility: Duration) -> Vec<QueueMessage> {
        PollingQueue::receive(self, 10, visibility, now_ms())
            .await
            .unwrap()
    }
    async fn delete(&self, receipt: &str) {
        PollingQueue::delete(self, receipt).await.unwrap()
    }
    async fn dead_letters(&self) -> Vec<DeadLetter> {
        PollingQueue::list_dead_letters(self).await.unwrap()
    }
    async fn redrive(&self, filter: &RedriveFilter) -> usize {
        PollingQueue::redrive(self, filter).await.unwrap()
    }
}

fn body_event(message: &QueueMessage) -> RelayEvent {
    serde_json::from_str(&message.body).expect("queue body is an envelope")
}

const HIDE: Duration = Duration::from_secs(30);

/// A sent envelope comes back whole, in its entity's group, on its first receive. The same
/// envelope sent twice (two identical CRM requests) is two messages, one after the other in
/// the group: the consumer, not the queue, decides whether the second carries news.
pub async fn queue_send_receive(queue: &dyn Queue, probe: &dyn QueueProbe) {
    let event = sample_event(&unique("portal"), "7405", 1);
    queue.send(&event).await.unwrap();
    queue.send(&event).await.unwrap();
    // SQS may hand out both in one receive (in order); the embedded queue hands out a
    // group's head only. Either way nothing more comes while they are in flight.
    let mut got = probe.receive_now(HIDE).await;
    assert!(!got.is_empty());
    assert_eq!(body_event(&got[0]), event);
    assert_eq!(got[0].group_id, event.message_group_id());
    assert_eq!(got[0].receive_count, 1);
    assert!(!got[0].receipt.is_empty() && !got[0].message_id.is_empty());
    assert!(
        probe.receive_now(HIDE).await.is_empty(),
        "received messages stay hidden, and hold their group"
    );
    for message in &got {
        probe.delete(&message.receipt).await;
    }
    if got.len() < 2 {
        let twin = probe.receive_now(HIDE).await;
        for message in &twin {
            probe.delete(&message.receipt).await;
        }
        got.extend(twin);
    }
    assert_eq!(got.len(), 2, "the identical second send is queued too");
    assert_eq!(body_event(&got[1]), event);
    assert_ne!(got[0].message_id, got[1].message_id);
}

/// Messages of one entity come out in the order they were sent.
pub async fn queue_group_order(queue: &dyn Queue, probe: &dyn QueueProbe) {
    let portal = unique("portal");
    let sent: Vec<RelayEvent> = (0..3).map(|n| sample_event(&portal, "1", n)).collect();
    for event in &sent {
        queue.send(event).await.unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..10 {
        if order.len() == sent.len() {
            break;
        }
        for message in probe.receive_now(HIDE).await {
            order.push(body_event(&message).id);
            probe.delete(&message.receipt).await;
        }
    }
    let expected: Vec<String> = sent.iter().map(|e| e.id.clone()).collect();
    assert_eq!(order, expected);
}

/// `retry_after(0)` makes a received message visible again at once (with a higher receive
/// count); a longer delay keeps it hidden.
pub async fn queue_retry_after(queue: &dyn Queue, probe: &dyn QueueProbe) {
    let event = sample_event(&unique("portal"), "9", 1);
    queue.send(&event).await.unwrap();
    let first = probe.receive_now(HIDE).await;
    assert_eq!(first.len(), 1);
    assert!(probe.receive_now(HIDE).await.is_empty());
    queue
        .retry_after(&first[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    let again = probe.receive_now(HIDE).await;
    assert_eq!(
        again.len(),
        1,
        "retry_after(0) must make the message visible"
    );
    assert_eq!(body_event(&again[0]).id, event.id);
    assert_eq!(again[0].receive_count, 2);
    queue
        .retry_after(&again[0].receipt, Duration::from_secs(600))
        .await
        .unwrap();
    assert!(probe.receive_now(HIDE).await.is_empty());
}

/// A parked message lands in the dead-letter queue with its body, group and reason, and is
/// gone from the queue once the consumer treats it as handled.
pub async fn queue_park_dead_letter(queue: &dyn Queue, probe: &dyn QueueProbe) {
    let event = sample_event(&unique("portal"), "11", 1);
    queue.send(&event).await.unwrap();
    let got = probe.receive_now(HIDE).await;
    assert_eq!(got.len(), 1);
    let before_ms = now_ms() - 1_000;
    queue
        .park_dead_letter(&got[0], "destination answered 400")
        .await
        .unwrap();
    probe.delete(&got[0].receipt).await;
    let letters = probe.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].body, got[0].body);
    assert_eq!(letters[0].group_id, event.message_group_id());
    assert_eq!(letters[0].reason, "destination answered 400");
    assert!(letters[0].parked_at_ms >= before_ms);
    // Listing does not consume: the letter is still there.
    assert_eq!(probe.dead_letters().await.len(), 1);
    assert!(
        probe.receive_now(HIDE).await.is_empty(),
        "a parked message must not be delivered again"
    );
}

/// Redrive moves selected dead letters back: by envelope id, by time, then all.
pub async fn queue_redrive(queue: &dyn Queue, probe: &dyn QueueProbe) {
    let portal = unique("portal");
    let (a, b) = (sample_event(&portal, "1", 1), sample_event(&portal, "2", 1));
    queue.send(&a).await.unwrap();
    queue.send(&b).await.unwrap();
    let got = probe.receive_now(HIDE).await;
    assert_eq!(got.len(), 2);
    for message in &got {
        queue.park_dead_letter(message, "permanent").await.unwrap();
        probe.delete(&message.receipt).await;
    }
    assert_eq!(probe.dead_letters().await.len(), 2);
    let by_id = RedriveFilter {
        ids: vec![a.id.clone()],
        since_ms: None,
    };
    assert_eq!(probe.redrive(&by_id).await, 1);
    let back = probe.receive_now(HIDE).await;
    assert_eq!(back.len(), 1);
    assert_eq!(body_event(&back[0]), a);
    assert_eq!(back[0].group_id, a.message_group_id());
    probe.delete(&back[0].receipt).await;
    let left = probe.dead_letters().await;
    assert_eq!(left.len(), 1);
    assert_eq!(body_event_of(&left[0]).id, b.id);
    let future = RedriveFilter {
        ids: vec![],
        since_ms: Some(now_ms() + 3_600_000),
    };
    assert_eq!(probe.redrive(&future).await, 0);
    assert_eq!(probe.redrive(&RedriveFilter::default()).await, 1);
    assert!(probe.dead_letters().await.is_empty());
    let back = probe.receive_now(HIDE).await;
    assert_eq!(back.len(), 1);
    assert_eq!(body_event(&back[0]).id, b.id);
}

fn body_event_of(letter: &DeadLetter) -> RelayEvent {
    serde_json::from_str(&letter.body).expect("dead letter body is an envelope")
}

// ---- PollingQueue (the embedded queue's own delivery rules) ----------------------------------

/// One message in flight per group: the next of a group waits until the first is deleted,
/// while other groups are delivered meanwhile.
pub async fn polling_one_in_flight_per_group(queue: &dyn PollingQueue) {
    let portal = unique("portal");
    let (a1, a2, b1) = (
        sample_event(&portal, "a", 1),
        sample_event(&portal, "a", 2),
        sample_event(&portal, "b", 1),
    );
    for e in [&a1, &a2, &b1] {
        queue.send(e).await.unwrap();
    }
    let got = queue.receive(10, HIDE, T0).await.unwrap();
    let ids: Vec<String> = got.iter().map(|m| body_event(m).id).collect();
    assert_eq!(ids, vec![a1.id.clone(), b1.id.clone()]);
    assert!(queue.receive(10, HIDE, T0).await.unwrap().is_empty());
    queue.delete(&got[0].receipt).await.unwrap();
    let next = queue.receive(10, HIDE, T0).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(body_event(&next[0]).id, a2.id);
}

/// An unfinished message reappears when its visibility ends; after `max_receive_count`
/// receives it moves to the dead-letter table, and its group moves on.
pub async fn polling_visibility_and_max_receives(queue: &dyn PollingQueue, max_receive_count: u32) {
    let portal = unique("portal");
    let (poison, next) = (sample_event(&portal, "p", 1), sample_event(&portal, "p", 2));
    queue.send(&poison).await.unwrap();
    queue.send(&next).await.unwrap();
    let step = HIDE.as_millis() as i64;
    let mut now = T0;
    for expected_count in 1..=max_receive_count {
        let got = queue.receive(10, HIDE, now).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(body_event(&got[0]).id, poison.id);
        assert_eq!(got[0].receive_count, expected_count);
        assert!(queue
            .receive(10, HIDE, now + step - 1)
            .await
            .unwrap()
            .is_empty());
        now += step;
    }
    let got = queue.receive(10, HIDE, now).await.unwrap();
    assert_eq!(
        got.len(),
        1,
        "the group must move on past a dead-lettered message"
    );
    assert_eq!(body_event(&got[0]).id, next.id);
    let letters = queue.list_dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(body_event_of(&letters[0]).id, poison.id);
    assert!(letters[0].reason.contains(&max_receive_count.to_string()));
}

/// A retry delay holds the whole group: the next message of the entity never overtakes the
/// one waiting out its delay, while other groups go on; once the delay ends the same message
/// comes back first.
pub async fn polling_retry_delay_holds_group(queue: &dyn PollingQueue) {
    let portal = unique("portal");
    let (a1, a2, b1) = (
        sample_event(&portal, "a", 1),
        sample_event(&portal, "a", 2),
        sample_event(&portal, "b", 1),
    );
    for e in [&a1, &a2, &b1] {
        queue.send(e).await.unwrap();
    }
    let now = now_ms();
    let got = queue.receive(10, HIDE, now).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(body_event(&got[0]).id, a1.id);
    queue
        .retry_after(&got[0].receipt, Duration::from_secs(600))
        .await
        .unwrap();
    queue.delete(&got[1].receipt).await.unwrap();
    assert!(
        queue.receive(10, HIDE, now).await.unwrap().is_empty(),
        "a2 must wait behind a1's retry delay"
    );
    let after_delay = now + 601_000;
    let again = queue.receive(10, HIDE, after_delay).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(body_event(&again[0]).id, a1.id);
    assert_eq!(again[0].receive_count, 2);
    queue.delete(&again[0].receipt).await.unwrap();
    let next = queue.receive(10, HIDE, after_delay).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(body_event(&next[0]).id, a2.id);
}

/// A message whose visibility timeout ended keeps its place: it comes out before messages
/// of other entities sent after it, however many of those are waiting.
pub async fn polling_returned_message_is_not_overtaken(queue: &dyn PollingQueue) {
    let portal = unique("portal");
    let first = sample_event(&portal, "first", 1);
    queue.send(&first).await.unwrap();
    let got = queue.receive(1, HIDE, T0).await.unwrap();
    assert_eq!(body_event(&got[0]).id, first.id);
    let later: Vec<RelayEvent> = (0..20)
        .map(|n| sample_event(&portal, &format!("later-{n}"), 1))
        .collect();
    for e in &later {
        queue.send(e).await.unwrap();
    }
    let expired = T0 + HIDE.as_millis() as i64;
    let next = queue.receive(1, HIDE, expired).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(
        body_event(&next[0]).id,
        first.id,
        "the returned message goes first"
    );
    assert_eq!(next[0].receive_count, 2);
    let rest = queue.receive(10, HIDE, expired).await.unwrap();
    let ids: Vec<String> = rest.iter().map(|m| body_event(m).id).collect();
    let expected: Vec<String> = later[..10].iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, expected, "other entities in the order they were sent");
}

/// Parking the message in flight hands its entity's group to the next message. (SQS may
/// hand out several messages of a group in one batch, so this rule is the embedded queue's.)
pub async fn polling_park_moves_group_on(queue: &dyn PollingQueue) {
    let portal = unique("portal");
    let (a1, a2) = (sample_event(&portal, "a", 1), sample_event(&portal, "a", 2));
    queue.send(&a1).await.unwrap();
    queue.send(&a2).await.unwrap();
    let got = queue.receive(10, HIDE, T0).await.unwrap();
    assert_eq!(got.len(), 1, "one message in flight per group");
    assert_eq!(body_event(&got[0]).id, a1.id);
    queue.park_dead_letter(&got[0], "permanent").await.unwrap();
    queue.delete(&got[0].receipt).await.unwrap();
    let next = queue.receive(10, HIDE, T0).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(body_event(&next[0]).id, a2.id);
}

/// A receipt is good for one receive only. Once the message was handed out again, the old
/// receipt deletes nothing, delays nothing and gives nothing back (SQS refuses such a
/// receipt too), and a receipt the queue never made matches nothing: the message is still
/// in flight under its new receipt and only that one deletes it.
pub async fn polling_stale_receipt_changes_nothing(queue: &dyn PollingQueue) {
    let portal = unique("portal");
    let event = sample_event(&portal, "stale", 1);
    queue.send(&event).await.unwrap();
    let first = queue.receive(10, HIDE, T0).await.unwrap();
    let expired = T0 + HIDE.as_millis() as i64;
    let second = queue.receive(10, HIDE, expired).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_ne!(second[0].receipt, first[0].receipt);
    assert!(queue
        .retry_after(&first[0].receipt, Duration::ZERO)
        .await
        .is_err());
    queue
        .defer(&first[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    queue.delete(&first[0].receipt).await.unwrap();
    queue.delete("not-a-receipt").await.unwrap();
    queue
        .delete(&format!("{}x", second[0].receipt))
        .await
        .unwrap();
    assert!(
        queue.receive(10, HIDE, expired).await.unwrap().is_empty(),
        "still in flight under the second receipt"
    );
    let third = queue
        .receive(10, HIDE, expired + HIDE.as_millis() as i64)
        .await
        .unwrap();
    assert_eq!(third.len(), 1, "the stale receipt deleted nothing");
    assert_eq!(
        (third[0].receive_count, body_event(&third[0]).id),
        (3, event.id)
    );
    queue.delete(&third[0].receipt).await.unwrap();
    let later = expired + 3 * HIDE.as_millis() as i64;
    assert!(queue.receive(10, HIDE, later).await.unwrap().is_empty());
}

/// Hands `$on_store` (a test file's macro taking `$($name:ident),*`) the store checks every
/// backend must pass, so SQLite and DynamoDB run the same list.
#[macro_export]
macro_rules! store_contract_tests {
    ($on_store:ident) => {
        $on_store! {
            dedup_claim_then_held,
            dedup_expired_lease_is_taken_over,
            dedup_completed_until_it_expires,
            dedup_release,
            dedup_only_the_owner_extends_releases_completes,
            snapshot_versions,
            snapshot_round_trips_exactly,
            snapshot_delete_portal,
            snapshot_kinds_are_apart_and_delete_forgets_one,
            tokens_crud,
            bind_plan_save_load_replace_forget,
            attempts_oldest_first,
            destination_disable_enable,
        }
    };
}

/// Hands `$on_queue` (a test file's macro taking `$($name:ident),*`) the queue checks every
/// backend must pass, so the embedded queue and SQS run the same list.
#[macro_export]
macro_rules! queue_contract_tests {
    ($on_queue:ident) => {
        $on_queue! {
            queue_send_receive,
            queue_group_order,
            queue_retry_after,
            queue_park_dead_letter,
            queue_redrive,
        }
    };
}
