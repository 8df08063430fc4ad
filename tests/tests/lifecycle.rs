//! The Bitrix24 app lifecycle against a loopback portal: verified install, token checks of
//! later events, uninstall, the offline-event poller (paging, clearing, errors, online twins)
//! and `relay bind`'s idempotence. REST calls go through the real client with its limiter.

use async_trait::async_trait;
use integration_tests::destination::Destination;
use integration_tests::fake_bitrix24_events::{post_as_bitrix24, FakePortal};
use integration_tests::memory::MemoryStore;
use relay_core::config::{AppTokens, RelayConfig};
use relay_core::consume::Consumer;
use relay_core::enrich::bitrix24::{Bitrix24Client, RateLimit};
use relay_core::error::{IngestError, StoreError};
use relay_core::event::{Family, RelayEvent, Source};
use relay_core::ingest::{IngestReply, Ingress};
use relay_core::lifecycle::bind::{
    bind_all, list_bindings, plan_bindings, removal_plan, unbind_all, urls_from_base, Binding,
    PlanRebind,
};
use relay_core::lifecycle::install::{AppInfoVerifier, AppLifecycle, AppOutcome};
use relay_core::lifecycle::offline::{OfflinePoller, PollError, PortalRef};
use relay_core::ports::{
    BindPlanStore, Bitrix24Rest, Queue, QueueMessage, Snapshot, SnapshotKey, SnapshotStore,
    TokenStore,
};
use relay_core::secret::Secret;
use serde_json::json;
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const APP_TOKEN: &str = "51856fefc120afa4b628cc82d3935cce";
const NOW_MS: i64 = 1_790_000_000_000;

/// Keeps what was sent, dropping a repeated id as SQS FIFO does with MessageDeduplicationId;
/// refuses events whose entity is in `refuse` (a queue that cannot take them).
#[derive(Default)]
struct RecordingQueue {
    sent: Mutex<Vec<RelayEvent>>,
    /// Every accepted send, repeats included: what a consumer sees once SQS's 5-minute
    /// deduplication window has passed.
    every_send: Mutex<Vec<RelayEvent>>,
    refuse: Mutex<HashSet<String>>,
}

impl RecordingQueue {
    fn unique(&self) -> Vec<RelayEvent> {
        self.sent.lock().unwrap().clone()
    }
}

#[async_trait]
impl Queue for RecordingQueue {
    async fn send(&self, event: &RelayEvent) -> Result<(), StoreError> {
        let entity = event.entity_id.clone().unwrap_or_default();
        if self.refuse.lock().unwrap().contains(&entity) {
            return Err(StoreError::Unavailable("queue refused".into()));
        }
        self.every_send.lock().unwrap().push(event.clone());
        let mut sent = self.sent.lock().unwrap();
        if !sent.iter().any(|e| e.id == event.id) {
            sent.push(event.clone());
        }
        Ok(())
    }
    async fn retry_after(&self, _: &str, _: Duration) -> Result<(), StoreError> {
        Ok(())
    }
    async fn park_dead_letter(&self, _: &QueueMessage, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

struct Setup {
    portal: FakePortal,
    /// Tokens and snapshots (and, for the consumer, everything else) in memory.
    store: Arc<MemoryStore>,
    tokens: Arc<MemoryStore>,
    snapshots: Arc<MemoryStore>,
    lifecycle: Arc<AppLifecycle>,
    /// What ingress queued.
    queue: Arc<RecordingQueue>,
    /// Ingress as the functions build it in app mode: stored tokens and the app lifecycle.
    ingress: Ingress,
}

/// A portal and the lifecycle, with `app.info` asked of the portal itself as the trusted
/// endpoint (in production: the OAuth server), so no forged `client_endpoint` is believed.
async fn setup(member_id: &str) -> Setup {
    setup_with(member_id, false).await
}

/// `rebind_in_background`: as `relay serve` re-binds after an update (Lambda: inline).
async fn setup_with(member_id: &str, rebind_in_background: bool) -> Setup {
    let portal = FakePortal::start(member_id).await;
    let store = MemoryStore::new();
    let (tokens, snapshots) = (store.clone(), store.clone());
    let verifier = AppInfoVerifier::new(
        reqwest::Client::new(),
        &portal.client_endpoint,
        Some(portal.client_id.clone()),
    )
    .allowing_loopback(true);
    let lifecycle = Arc::new(
        AppLifecycle::new(
            Arc::new(verifier),
            tokens.clone(),
            snapshots.clone(),
            AppTokens::default(),
        )
        .with_plan_rebind(Arc::new(
            PlanRebind::new(rest_client(tokens.clone()), store.clone())
                .in_background(rebind_in_background),
        )),
    );
    let queue = Arc::new(RecordingQueue::default());
    let ingress = Ingress::new(queue.clone(), RelayConfig::default())
        .with_token_store(tokens.clone())
        .with_app_lifecycle(lifecycle.clone());
    Setup {
        portal,
        store,
        tokens,
        snapshots,
        lifecycle,
        queue,
        ingress,
    }
}

async fn post(s: &Setup, family: Family, document: &serde_json::Value) -> IngestReply {
    post_as_bitrix24(&s.ingress, family, document).await
}

fn rest_client(tokens: Arc<MemoryStore>) -> Arc<dyn Bitrix24Rest> {
    Arc::new(
        Bitrix24Client::new(reqwest::Client::new(), &RelayConfig::default(), tokens)
            .with_rate_limit(RateLimit {
                per_second: 1000.0,
                burst: 1000.0,
            }),
    )
}

async fn install(s: &Setup) {
    s.portal.issue_access_token("access-1");
    let body = s
        .portal
        .install_body("access-1", "refresh-1", APP_TOKEN, 1_790_003_600);
    let reply = post(s, Family::App, &body).await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
}

#[tokio::test]
async fn forged_install_is_refused_and_stores_nothing() {
    let s = setup("victim01").await;
    s.portal.issue_access_token("genuine-access");
    // A forger runs his own "portal" that vouches for his token under the victim's member_id.
    let evil = FakePortal::start("victim01").await;
    evil.issue_access_token("forged-access");
    let mut body = evil.install_body("forged-access", "r", "attacker-app-token", 1_790_003_600);
    let reply = post(&s, Family::App, &body).await;
    assert_eq!(reply.status, 401, "{:?}", reply.body);
    assert_eq!(evil.requests(), 0, "the forged endpoint was asked");
    assert_eq!(
        s.portal.requests(),
        1,
        "app.info asked of the trusted endpoint"
    );

    // Pointing at the genuine portal with a token it never issued fails the same way.
    body["auth"]["client_endpoint"] = json!(s.portal.client_endpoint);
    let reply = post(&s, Family::App, &body).await;
    assert_eq!(reply.status, 401, "{:?}", reply.body);
    assert!(s.tokens.list().await.unwrap().is_empty(), "nothing stored");
    assert!(s.queue.unique().is_empty(), "nothing queued");

    // The forger's application token then opens no door: a deal event carrying it is refused.
    let deal = evil.record_change("ONCRMDEALADD", "1", 1_790_000_000, "attacker-app-token");
    assert_eq!(post(&s, Family::Deal, &deal).await.status, 401);

    // And the forger's application token opens nothing afterwards.
    let accepted = s
        .lifecycle
        .accepts_application_token("victim01", &Secret::new("attacker-app-token"))
        .await
        .unwrap();
    assert!(!accepted);
}

#[tokio::test]
async fn install_is_refused_for_a_token_bitrix24_rejects() {
    let portal = FakePortal::start("portal02").await;
    let tokens = MemoryStore::new();
    let lifecycle = AppLifecycle::new(
        Arc::new(
            AppInfoVerifier::new(
                reqwest::Client::new(),
                &portal.client_endpoint,
                Some(portal.client_id.clone()),
            )
            .allowing_loopback(true),
        ),
        tokens.clone(),
        tokens.clone(),
        AppTokens::default(),
    );
    let body = portal.install_body("never-issued", "r", APP_TOKEN, 1_790_003_600);
    let err = lifecycle.handle(&body, NOW_MS).await.unwrap_err();
    assert!(matches!(err, IngestError::Unauthorized), "{err:?}");
    assert!(tokens.list().await.unwrap().is_empty());
    portal.issue_access_token("never-issued");
    lifecycle.handle(&body, NOW_MS).await.unwrap();
    assert_eq!(tokens.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn genuine_install_then_events_are_verified_by_the_stored_token() {
    let s = setup("portal03").await;
    install(&s).await;
    let stored = s.tokens.get("portal03").await.unwrap().unwrap();
    assert_eq!(stored.application_token.expose(), APP_TOKEN);
    assert_eq!(stored.access_token.expose(), "access-1");
    assert_eq!(stored.refresh_token.expose(), "refresh-1");
    assert_eq!(stored.expires_at_ms, 1_790_003_600_000);
    assert_eq!(stored.client_endpoint, s.portal.client_endpoint);
    assert_eq!(stored.domain, s.portal.domain);
    assert_eq!(stored.scope, "crm,task,user");
    assert!(!format!("{stored:?}").contains("access-1"));

    // The install itself is queued for the user's system, without a single token in it.
    let queued = s.queue.unique();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].event, "ONAPPINSTALL");
    let wire = serde_json::to_string(&queued[0]).unwrap();
    for secret in [APP_TOKEN, "access-1", "refresh-1"] {
        assert!(!wire.contains(secret), "{secret} leaked into the envelope");
    }

    // Later events of the portal pass ingress on the stored token alone (none is configured).
    let deal = s
        .portal
        .record_change("ONCRMDEALUPDATE", "7405", 1_790_000_100, APP_TOKEN);
    let reply = post(&s, Family::Deal, &deal).await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    let forged = s
        .portal
        .record_change("ONCRMDEALUPDATE", "7405", 1_790_000_101, "not-the-token");
    assert_eq!(post(&s, Family::Deal, &forged).await.status, 401);
    assert_eq!(s.queue.unique().len(), 2);

    let ok = s
        .lifecycle
        .accepts_application_token("portal03", &Secret::new(APP_TOKEN))
        .await
        .unwrap();
    assert!(ok, "a later event with the stored token is accepted");
    for (member, token) in [
        ("portal03", "wrong"),
        ("other", APP_TOKEN),
        ("portal03", ""),
    ] {
        let ok = s
            .lifecycle
            .accepts_application_token(member, &Secret::new(token))
            .await
            .unwrap();
        assert!(!ok, "{member}/{token} must be refused");
    }

    let test_event = json!({"event": "ONAPPTEST", "data": {"FOO": "bar"}, "ts": "1",
        "auth": {"member_id": "portal03", "application_token": APP_TOKEN}});
    let reply = post(&s, Family::App, &test_event).await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    assert_eq!(
        s.lifecycle.handle(&test_event, NOW_MS).await.unwrap(),
        AppOutcome::Tested {
            portal: "portal03".into()
        }
    );
    let mut wrong = test_event.clone();
    wrong["auth"]["application_token"] = json!("nope");
    assert_eq!(post(&s, Family::App, &wrong).await.status, 401);
    let queued = s.queue.unique();
    assert_eq!(
        queued.len(),
        3,
        "the test travels to the destination like any event"
    );
    assert_eq!(queued[2].event, "ONAPPTEST");
}

#[tokio::test]
async fn uninstall_with_a_wrong_token_is_refused() {
    let s = setup("portal04").await;
    install(&s).await;
    let key = SnapshotKey {
        source: Source::Bitrix24,
        portal: "portal04".into(),
        family: Family::Deal,
        entity_type: relay_core::catalogue::EntityType::Deal,
        entity_id: "7".into(),
    };
    s.snapshots
        .save(
            &key,
            &Snapshot {
                entity: json!({"ID": "7"}),
                version: 1,
                delivered: Vec::new(),
            },
        )
        .await
        .unwrap();
    let uninstall = |token: &str| {
        json!({"event": "ONAPPUNINSTALL", "data": {"CLEAN": "0"}, "ts": "2",
            "auth": {"member_id": "portal04", "application_token": token, "domain": "x"}})
    };
    let reply = post(&s, Family::App, &uninstall("guess")).await;
    assert_eq!(reply.status, 401, "{:?}", reply.body);
    assert!(s.tokens.get("portal04").await.unwrap().is_some());
    assert!(s.snapshots.load(&key).await.unwrap().is_some());

    let outcome = s
        .lifecycle
        .handle(&uninstall(APP_TOKEN), NOW_MS)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        AppOutcome::Uninstalled {
            portal: "portal04".into(),
            snapshots_deleted: 1
        }
    );
    assert!(s.tokens.get("portal04").await.unwrap().is_none());
    assert!(s.snapshots.load(&key).await.unwrap().is_none());
    // Gone means gone: the old token no longer verifies anything.
    assert!(!s
        .lifecycle
        .accepts_application_token("portal04", &Secret::new(APP_TOKEN))
        .await
        .unwrap());
}

/// Snapshots whose first portal-wide delete fails, as a table throttling an uninstall would.
struct SnapshotsFailingOnce {
    inner: Arc<MemoryStore>,
    failed: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl SnapshotStore for SnapshotsFailingOnce {
    async fn load(&self, key: &SnapshotKey) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load(key).await
    }
    async fn save(
        &self,
        key: &SnapshotKey,
        snapshot: &Snapshot,
    ) -> Result<relay_core::ports::SnapshotSave, StoreError> {
        self.inner.save(key, snapshot).await
    }
    async fn delete(&self, key: &SnapshotKey) -> Result<(), StoreError> {
        SnapshotStore::delete(self.inner.as_ref(), key).await
    }
    async fn delete_portal(&self, source: Source, portal: &str) -> Result<usize, StoreError> {
        if !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable("throttled".into()));
        }
        self.inner.delete_portal(source, portal).await
    }
}

/// An uninstall cut short answers 5xx and keeps the portal's tokens, so Bitrix24's retry still
/// authenticates and finishes the job: tokens go last.
#[tokio::test]
async fn an_uninstall_cut_short_still_authenticates_its_retry() {
    let s = setup("portal05").await;
    install(&s).await;
    let key = SnapshotKey {
        source: Source::Bitrix24,
        portal: "portal05".into(),
        family: Family::Deal,
        entity_type: relay_core::catalogue::EntityType::Deal,
        entity_id: "8".into(),
    };
    let snap = Snapshot {
        entity: json!({"ID": "8"}),
        version: 1,
        delivered: Vec::new(),
    };
    s.snapshots.save(&key, &snap).await.unwrap();
    let verifier = AppInfoVerifier::new(
        reqwest::Client::new(),
        &s.portal.client_endpoint,
        Some(s.portal.client_id.clone()),
    )
    .allowing_loopback(true);
    let lifecycle = AppLifecycle::new(
        Arc::new(verifier),
        s.tokens.clone(),
        Arc::new(SnapshotsFailingOnce {
            inner: s.snapshots.clone(),
            failed: Default::default(),
        }),
        AppTokens::default(),
    );
    let uninstall = json!({"event": "ONAPPUNINSTALL", "data": {"CLEAN": "0"}, "ts": "2",
        "auth": {"member_id": "portal05", "application_token": APP_TOKEN, "domain": "x"}});
    assert!(lifecycle.handle(&uninstall, NOW_MS).await.is_err());
    assert!(
        s.tokens.get("portal05").await.unwrap().is_some(),
        "tokens outlive a failed uninstall"
    );
    assert_eq!(
        lifecycle.handle(&uninstall, NOW_MS).await.unwrap(),
        AppOutcome::Uninstalled {
            portal: "portal05".into(),
            snapshots_deleted: 1
        }
    );
    assert!(s.tokens.get("portal05").await.unwrap().is_none());
    assert!(s.snapshots.load(&key).await.unwrap().is_none());
}

/// offline-events.md, feature-get.md: without `rest_offline_extended` there is no
/// `clear=0`, so the poller reads nothing and says why, instead of risking records.
#[tokio::test]
async fn a_portal_without_extended_offline_events_is_not_drained() {
    let s = setup("portal19").await;
    install(&s).await;
    s.portal
        .record_change("ONCRMDEALUPDATE", "1", 1_790_000_001, APP_TOKEN);
    s.portal.set_extended_offline_events(false);
    let poller = OfflinePoller::new(rest_client(s.tokens.clone()), s.queue.clone());
    let portal = PortalRef {
        member_id: "portal19".into(),
        domain: Some(s.portal.domain.clone()),
    };
    let outcome = poller.poll_portal(&portal, SystemTime::now()).await;
    assert!(
        matches!(outcome, Err(PollError::NoExtendedOfflineEvents)),
        "{outcome:?}"
    );
    assert_eq!(s.portal.calls("event.offline.get"), 0);
    assert_eq!(
        s.portal.offline_records().len(),
        1,
        "the record stays in the log"
    );
    s.portal.set_extended_offline_events(true);
    let report = poller
        .poll_portal(&portal, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(report.enqueued, 1);
}

#[tokio::test]
async fn offline_drain_of_120_records_loses_none_and_forwards_none_twice() {
    let s = setup("portal05").await;
    install(&s).await;
    let queue = s.queue.clone();
    queue.sent.lock().unwrap().clear();
    let base_ts = 1_790_000_000;
    for n in 1..=120i64 {
        let body =
            s.portal
                .record_change("ONCRMDEALUPDATE", &n.to_string(), base_ts + n, APP_TOKEN);
        // Half of them also arrived online, through ingress, before the poll.
        if n % 2 == 0 {
            assert_eq!(post(&s, Family::Deal, &body).await.status, 202);
        }
    }
    assert_eq!(queue.unique().len(), 60);
    // A repeated change of a waiting entity is coalesced into its record, as Bitrix24 does.
    s.portal
        .record_change("ONCRMDEALUPDATE", "3", base_ts + 3, APP_TOKEN);
    assert_eq!(s.portal.offline_records().len(), 120);

    let poller = OfflinePoller::new(rest_client(s.tokens.clone()), queue.clone());
    let portal = PortalRef {
        member_id: "portal05".into(),
        domain: Some(s.portal.domain.clone()),
    };
    let report = poller
        .poll_portal(&portal, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(report.fetched, 120);
    assert_eq!(report.enqueued, 120);
    assert_eq!(report.cleared, 120);
    assert_eq!(report.marked_error, 0);
    assert_eq!(report.pages, 3, "50 + 50 + 20");
    assert!(s.portal.offline_records().is_empty(), "everything cleared");
    assert_eq!(s.portal.calls("event.offline.clear"), 3);

    let sent = queue.unique();
    assert_eq!(
        sent.len(),
        120,
        "one envelope per change, online twins included"
    );
    let entities: BTreeSet<i64> = sent
        .iter()
        .map(|e| e.entity_id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(entities, (1..=120).collect::<BTreeSet<_>>());
    assert!(sent
        .iter()
        .all(|e| e.family == Family::Deal && e.event == "ONCRMDEALUPDATE"));

    // A second run finds nothing and sends nothing.
    let again = poller
        .poll_portal(&portal, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(again.fetched, 0);
    assert_eq!(queue.unique().len(), 120);
}

#[tokio::test]
async fn enqueue_failure_marks_records_as_errors_and_leaves_them_for_the_next_run() {
    let s = setup("portal06").await;
    install(&s).await;
    let queue = Arc::new(RecordingQueue::default());
    for n in 1..=30i64 {
        s.portal
            .record_change("ONCRMLEADADD", &n.to_string(), 1_790_000_000 + n, APP_TOKEN);
    }
    let refused: HashSet<String> = (1..=10).map(|n| (n * 3).to_string()).collect();
    *queue.refuse.lock().unwrap() = refused.clone();

    let poller = OfflinePoller::new(rest_client(s.tokens.clone()), queue.clone()).with_page_size(8);
    let portal = PortalRef {
        member_id: "portal06".into(),
        domain: None,
    };
    let first = poller
        .poll_portal(&portal, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(first.enqueued, 20);
    assert_eq!(first.marked_error, 10);
    let left = s.portal.offline_records();
    assert_eq!(left.len(), 10, "refused records stay in the portal's log");
    assert!(left.iter().all(|r| r.error && r.process_id.is_none()));
    assert!(s.portal.calls("event.offline.error") >= 1);
    let queued: BTreeSet<String> = queue
        .unique()
        .iter()
        .filter_map(|e| e.entity_id.clone())
        .collect();
    assert!(queued.is_disjoint(&refused.iter().cloned().collect()));

    // The queue recovers: the next run takes the erroneous records and clears them.
    queue.refuse.lock().unwrap().clear();
    let second = poller
        .poll_portal(&portal, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(second.enqueued, 10);
    assert_eq!(second.marked_error, 0);
    assert!(s.portal.offline_records().is_empty());
    assert_eq!(queue.unique().len(), 30);
    assert!(queue.unique().iter().all(|e| e.family == Family::Lead));
}

#[tokio::test]
async fn a_queue_that_keeps_failing_does_not_loop_within_a_run() {
    let s = setup("portal07").await;
    install(&s).await;
    let queue = Arc::new(RecordingQueue::default());
    for n in 1..=5i64 {
        s.portal.record_change(
            "ONCRMCONTACTUPDATE",
            &n.to_string(),
            1_790_000_000 + n,
            APP_TOKEN,
        );
    }
    *queue.refuse.lock().unwrap() = (1..=5).map(|n: i64| n.to_string()).collect();
    let poller = OfflinePoller::new(rest_client(s.tokens.clone()), queue.clone()).with_page_size(2);
    let portal = PortalRef {
        member_id: "portal07".into(),
        domain: None,
    };
    poller
        .poll_portal(&portal, SystemTime::now())
        .await
        .unwrap();
    // Second run: the error records are retried once each, fail again, and the run ends.
    let second = poller
        .poll_portal(&portal, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(second.enqueued, 0);
    assert!(second.pages <= 4, "pages: {}", second.pages);
    assert_eq!(s.portal.offline_records().len(), 5);
    assert!(queue.unique().is_empty());
}

#[tokio::test]
async fn relay_bind_twice_produces_one_handler_per_event() {
    let s = setup("portal08").await;
    install(&s).await;
    let rest = rest_client(s.tokens.clone());
    let urls = urls_from_base("https://relay.example.com/");
    let plan = plan_bindings(&urls, true);

    let first = bind_all(rest.as_ref(), "portal08", &plan).await.unwrap();
    assert_eq!(first.bound, plan.len());
    let second = bind_all(rest.as_ref(), "portal08", &plan).await.unwrap();
    assert_eq!(second.bound, 0);
    assert_eq!(second.already_bound, plan.len());

    let rows = s.portal.bound();
    assert_eq!(rows.len(), plan.len(), "one handler per event");
    let unique: BTreeSet<_> = rows
        .iter()
        .map(|r| (r.event.clone(), r.handler.clone(), r.offline))
        .collect();
    assert_eq!(unique.len(), rows.len());
    assert!(rows
        .iter()
        .any(|r| r.event == "ONCRMDEALUPDATE" && r.handler == "https://relay.example.com/deal"));
    assert!(rows
        .iter()
        .any(|r| r.event == "ONCRMDEALUPDATE" && r.offline));
    assert!(rows
        .iter()
        .any(|r| r.event == "ONOFFLINEEVENT" && r.handler == "https://relay.example.com/app"));

    // The portal's own duplicate refusal, which bind_all also takes as success.
    let dup = rest
        .call(
            "portal08",
            "event.bind",
            json!({"event": "ONCRMDEALADD", "handler": "https://relay.example.com/deal"}),
        )
        .await;
    assert!(dup.is_err());
    assert_eq!(s.portal.bound().len(), plan.len());

    let listed = list_bindings(rest.as_ref(), "portal08").await.unwrap();
    assert_eq!(listed.len(), plan.len());

    let removed = unbind_all(rest.as_ref(), "portal08", &plan).await.unwrap();
    assert_eq!(removed.removed, plan.len());
    assert!(s.portal.bound().is_empty());
}

/// Defect 9: `relay bind --remove` (no `--offline` this time) leaves nothing behind: not the
/// offline-log bindings, not ONOFFLINEEVENT (event-unbind.md: `event_type: offline`).
#[tokio::test]
async fn relay_bind_remove_unbinds_offline_bindings_and_the_wake_up_too() {
    let s = setup("portal18").await;
    install(&s).await;
    let rest = rest_client(s.tokens.clone());
    let urls = urls_from_base("https://relay.example.com/");
    let plan = plan_bindings(&urls, true);
    bind_all(rest.as_ref(), "portal18", &plan).await.unwrap();
    assert!(s.portal.bound().iter().any(|r| r.offline));
    let removed = unbind_all(rest.as_ref(), "portal18", &removal_plan(&urls))
        .await
        .unwrap();
    assert_eq!(removed.removed, plan.len());
    assert!(s.portal.bound().is_empty(), "{:?}", s.portal.bound());
}

#[tokio::test]
async fn offline_wake_event_is_verified_and_wakes_the_poller() {
    let s = setup("portal09").await;
    install(&s).await;
    let notify = Arc::new(tokio::sync::Notify::new());
    let lifecycle = AppLifecycle::new(
        Arc::new(AppInfoVerifier::new(
            reqwest::Client::new(),
            &s.portal.client_endpoint,
            Some(s.portal.client_id.clone()),
        )),
        s.tokens.clone(),
        s.snapshots.clone(),
        AppTokens::default(),
    )
    .with_offline_wake(Arc::new(relay_core::lifecycle::offline::NotifyWake(
        notify.clone(),
    )));
    let wake = json!({"event": "ONOFFLINEEVENT", "data": {"type": "update", "event": "ONCRMDEALUPDATE", "minTimeout": "5"},
        "ts": "3", "auth": {"member_id": "portal09", "application_token": APP_TOKEN}});
    let outcome = lifecycle.handle(&wake, NOW_MS).await.unwrap();
    assert_eq!(
        outcome,
        AppOutcome::OfflineWake {
            portal: "portal09".into()
        }
    );
    // The wake left a permit, so this returns at once; the bound only keeps a broken wake
    // from hanging the suite.
    tokio::time::timeout(Duration::from_secs(5), notify.notified())
        .await
        .expect("ONOFFLINEEVENT did not wake the poller");

    let mut forged = wake.clone();
    forged["auth"]["application_token"] = json!("x");
    assert!(matches!(
        lifecycle.handle(&forged, NOW_MS).await,
        Err(IngestError::Unauthorized)
    ));
}

#[tokio::test]
async fn scheduled_run_drains_every_installed_portal() {
    let s = setup("portal10").await;
    install(&s).await;
    for n in 1..=3i64 {
        s.portal
            .record_change("ONTASKUPDATE", &n.to_string(), 1_790_000_000 + n, APP_TOKEN);
    }
    let queue = Arc::new(RecordingQueue::default());
    let poller = OfflinePoller::new(rest_client(s.tokens.clone()), queue.clone());
    let schedule: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../events/offline-poller-schedule.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let event = lambda_runtime::LambdaEvent::new(schedule, lambda_runtime::Context::default());
    let summary = relay_lambda::offline_poller::handle_schedule(&poller, s.tokens.as_ref(), event)
        .await
        .unwrap();
    assert_eq!(summary["portals"], 1);
    assert_eq!(summary["enqueued"], 3);
    let sent = queue.unique();
    assert_eq!(sent.len(), 3);
    assert!(sent
        .iter()
        .all(|e| e.family == Family::Activity
            && e.domain.as_deref() == Some(s.portal.domain.as_str())));
    assert!(s.portal.offline_records().is_empty());
}

#[tokio::test]
async fn online_and_offline_copies_reach_the_destination_once() {
    let s = setup("portal11").await;
    install(&s).await;
    let destination = Destination::start().await;
    let base_ts = 1_790_000_000;
    for n in 1..=20i64 {
        let id = n.to_string();
        s.portal
            .set_entity("deal", &id, json!({"ID": id, "TITLE": format!("deal {n}")}));
        let body = s
            .portal
            .record_change("ONCRMDEALUPDATE", &id, base_ts + n, APP_TOKEN);
        if n % 2 == 0 {
            assert_eq!(post(&s, Family::Deal, &body).await.status, 202);
        }
    }
    let poller = OfflinePoller::new(rest_client(s.tokens.clone()), s.queue.clone());
    let portal = PortalRef {
        member_id: "portal11".into(),
        domain: Some(s.portal.domain.clone()),
    };
    assert_eq!(
        poller
            .poll_portal(&portal, SystemTime::now())
            .await
            .unwrap()
            .enqueued,
        20
    );

    // Every copy reaches the consumer (the install, 10 online, 20 offline), as if SQS's
    // deduplication window had passed; the consumer's dedup record must drop the twins.
    let copies = s.queue.every_send.lock().unwrap().clone();
    assert_eq!(copies.len(), 31);
    let config = RelayConfig {
        destination_url: Some(destination.url()),
        ..RelayConfig::default()
    };
    let consumer = Consumer::new(
        s.store.ports(),
        config,
        Some(rest_client(s.tokens.clone())),
        reqwest::Client::new(),
    );
    for (n, copy) in copies.iter().enumerate() {
        let message = QueueMessage {
            message_id: format!("m{n}"),
            receipt: format!("r{n}"),
            body: serde_json::to_string(copy).unwrap(),
            group_id: copy.message_group_id(),
            receive_count: 1,
            received_at_ms: Some(integration_tests::contract::now_ms()),
        };
        let report = consumer
            .process_batch(&[message], Duration::from_secs(30), NOW_MS + n as i64)
            .await;
        assert!(report.failed.is_empty(), "{:?}", report.failed);
    }

    let received = destination.received();
    let ids: BTreeSet<&str> = received.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(
        received.len(),
        21,
        "each change forwarded once, plus the install"
    );
    assert_eq!(ids.len(), 21);
    let deals: BTreeSet<String> = received
        .iter()
        .map(|r| r.json())
        .filter(|b| b["family"] == "deal")
        .map(|b| b["entity"]["TITLE"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deals.len(), 20, "every deal forwarded, enriched");
}

#[tokio::test]
async fn app_update_with_the_stored_token_keeps_the_fresh_oauth_tokens() {
    let s = setup("portal12").await;
    install(&s).await;
    let update = |token: &str| {
        json!({"event": "ONAPPUPDATE", "data": {"VERSION": "2", "LANGUAGE_ID": "ru"}, "ts": "5",
            "auth": {"member_id": "portal12", "application_token": token, "domain": s.portal.domain,
                "access_token": "access-2", "refresh_token": "refresh-2", "expires": "1790007200",
                "client_endpoint": s.portal.client_endpoint, "scope": "crm,task,user"}})
    };
    assert_eq!(post(&s, Family::App, &update("forged")).await.status, 401);
    let kept = s.tokens.get("portal12").await.unwrap().unwrap();
    assert_eq!(
        kept.access_token.expose(),
        "access-1",
        "a forged update changes nothing"
    );

    // The right application token with an access token Bitrix24 never issued: app.info does
    // not confirm it, so nothing moves (one leaked event must not redirect the portal).
    let mut unconfirmed = update(APP_TOKEN);
    unconfirmed["auth"]["client_endpoint"] = json!("http://127.0.0.1:1/steal/");
    assert_eq!(post(&s, Family::App, &unconfirmed).await.status, 401);
    let kept = s.tokens.get("portal12").await.unwrap().unwrap();
    assert_eq!(kept.access_token.expose(), "access-1");

    s.portal.issue_access_token("access-2");
    assert_eq!(post(&s, Family::App, &unconfirmed).await.status, 202);
    let fresh = s.tokens.get("portal12").await.unwrap().unwrap();
    assert_eq!(
        fresh.client_endpoint, s.portal.client_endpoint,
        "the endpoint is the one app.info names, not the event's"
    );
    assert_eq!(fresh.access_token.expose(), "access-2");
    assert_eq!(fresh.refresh_token.expose(), "refresh-2");
    assert_eq!(fresh.expires_at_ms, 1_790_007_200_000);
    assert_eq!(fresh.application_token.expose(), APP_TOKEN);
}

#[tokio::test]
async fn a_coalesced_record_matches_the_latest_online_call_and_recovers_a_lost_one() {
    let s = setup("portal13").await;
    install(&s).await;
    s.queue.sent.lock().unwrap().clear();
    // Deal 5 changes twice; both online calls arrive. The log keeps one record, stamped
    // with the second change.
    for at in [1_790_000_010, 1_790_000_020] {
        let body = s
            .portal
            .record_change("ONCRMDEALUPDATE", "5", at, APP_TOKEN);
        assert_eq!(post(&s, Family::Deal, &body).await.status, 202);
    }
    // Deal 6 changes twice; the second online call is lost.
    let first = s
        .portal
        .record_change("ONCRMDEALUPDATE", "6", 1_790_000_030, APP_TOKEN);
    assert_eq!(post(&s, Family::Deal, &first).await.status, 202);
    s.portal
        .record_change("ONCRMDEALUPDATE", "6", 1_790_000_040, APP_TOKEN);
    assert_eq!(s.portal.offline_records().len(), 2);

    let poller = OfflinePoller::new(rest_client(s.tokens.clone()), s.queue.clone());
    let portal = PortalRef {
        member_id: "portal13".into(),
        domain: None,
    };
    poller
        .poll_portal(&portal, SystemTime::now())
        .await
        .unwrap();
    let ts_by_entity: BTreeSet<(String, i64)> = s
        .queue
        .unique()
        .iter()
        .map(|e| (e.entity_id.clone().unwrap(), e.ts))
        .collect();
    let expected: BTreeSet<(String, i64)> = [
        ("5".to_string(), 1_790_000_010),
        ("5".to_string(), 1_790_000_020),
        ("6".to_string(), 1_790_000_030),
        ("6".to_string(), 1_790_000_040),
    ]
    .into();
    assert_eq!(
        ts_by_entity, expected,
        "deal 5's record is its second call again; deal 6's lost call is recovered"
    );
}

/// What the portal has bound, as comparable rows (event, handler or "" offline, offline).
fn bound_set(portal: &FakePortal) -> BTreeSet<(String, String, bool)> {
    portal
        .bound()
        .into_iter()
        .map(|r| (r.event, r.handler, r.offline))
        .collect()
}

fn plan_set(plan: &[Binding]) -> BTreeSet<(String, String, bool)> {
    plan.iter()
        .map(|b| {
            (
                b.event.clone(),
                b.handler.clone().unwrap_or_default(),
                b.offline,
            )
        })
        .collect()
}

/// `relay bind --offline` as the CLI does it: the plan stored for the portal, then bound.
async fn bind_and_store_plan(s: &Setup, member_id: &str) -> Vec<Binding> {
    let plan = plan_bindings(&urls_from_base("https://relay.example.com/"), true);
    s.store.save_plan(member_id, &plan).await.unwrap();
    let rest = rest_client(s.tokens.clone());
    bind_all(rest.as_ref(), member_id, &plan).await.unwrap();
    assert_eq!(bound_set(&s.portal), plan_set(&plan));
    plan
}

/// Bitrix24 drops the app's handlers on update (event-bind.md); the verified
/// ONAPPUPDATE binds the stored plan again, online and offline, with the update's new token
/// (the portal no longer accepts the old one), exactly as planned and nothing more.
#[tokio::test]
async fn verified_app_update_binds_the_stored_plan_again() {
    let s = setup("portal19").await;
    install(&s).await;
    let plan = bind_and_store_plan(&s, "portal19").await;
    assert!(plan.iter().any(|b| b.offline) && plan.iter().any(|b| !b.offline));

    let update = s
        .portal
        .update_app("access-2", "refresh-2", APP_TOKEN, 1_790_007_200);
    assert!(
        s.portal.bound().is_empty(),
        "the update removed the handlers"
    );
    assert_eq!(post(&s, Family::App, &update).await.status, 202);

    assert_eq!(
        bound_set(&s.portal),
        plan_set(&plan),
        "bound again as planned"
    );
    assert_eq!(s.portal.bound().len(), plan.len(), "each handler once");
    let tokens = s.tokens.get("portal19").await.unwrap().unwrap();
    assert_eq!(tokens.access_token.expose(), "access-2");
    assert_eq!(
        s.store.load_plan("portal19").await.unwrap(),
        Some(plan),
        "the plan stays for the next update"
    );
}

/// `relay serve` answers the update first and re-binds on a task of its own; the plan is
/// bound all the same, once.
#[tokio::test]
async fn background_rebind_after_update_binds_the_plan_too() {
    let s = setup_with("portal23", true).await;
    install(&s).await;
    let plan = bind_and_store_plan(&s, "portal23").await;
    let update = s
        .portal
        .update_app("access-2", "refresh-2", APP_TOKEN, 1_790_007_200);
    assert_eq!(post(&s, Family::App, &update).await.status, 202);
    for _ in 0..200 {
        if s.portal.bound().len() >= plan.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(bound_set(&s.portal), plan_set(&plan));
    assert_eq!(s.portal.bound().len(), plan.len());
}

/// An update that is not confirmed (a wrong application token, or an access token app.info
/// does not vouch for) binds nothing and changes no token.
#[tokio::test]
async fn unverified_app_update_binds_nothing() {
    let s = setup("portal20").await;
    install(&s).await;
    bind_and_store_plan(&s, "portal20").await;
    let binds_before = s.portal.calls("event.bind");

    let mut forged = s
        .portal
        .update_app("access-2", "refresh-2", APP_TOKEN, 1_790_007_200);
    forged["auth"]["application_token"] = json!("guessed-app-token");
    assert_eq!(post(&s, Family::App, &forged).await.status, 401);

    let mut unconfirmed = forged.clone();
    unconfirmed["auth"]["application_token"] = json!(APP_TOKEN);
    unconfirmed["auth"]["access_token"] = json!("never-issued");
    assert_eq!(post(&s, Family::App, &unconfirmed).await.status, 401);

    assert!(s.portal.bound().is_empty(), "{:?}", s.portal.bound());
    assert_eq!(s.portal.calls("event.bind"), binds_before);
    assert_eq!(s.portal.calls("event.get"), 1, "only the first bind listed");
    let tokens = s.tokens.get("portal20").await.unwrap().unwrap();
    assert_eq!(tokens.access_token.expose(), "access-1");
}

/// A re-bind the portal refuses does not fail the update: its new tokens are kept (so
/// `relay bind --again` can retry), and the log names the portal and the refused event
/// without any token.
#[tokio::test]
async fn failed_rebind_keeps_the_update_tokens_and_says_why() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let s = setup("portal21").await;
    install(&s).await;
    // A plan naming an event this portal does not know: event.bind answers
    // ERROR_EVENT_NOT_FOUND (event-bind.md, "Possible Error Codes").
    let plan = vec![Binding {
        event: "ONNOSUCHEVENT".into(),
        handler: Some("https://relay.example.com/deal".into()),
        offline: false,
    }];
    s.store.save_plan("portal21", &plan).await.unwrap();

    let update = s
        .portal
        .update_app("access-2", "refresh-2", APP_TOKEN, 1_790_007_200);
    assert_eq!(post(&s, Family::App, &update).await.status, 202);
    let tokens = s.tokens.get("portal21").await.unwrap().unwrap();
    assert_eq!(tokens.access_token.expose(), "access-2");
    assert_eq!(tokens.refresh_token.expose(), "refresh-2");

    let text = logs.text();
    assert!(text.contains("could NOT be bound again"), "{text}");
    assert!(
        text.contains("ONNOSUCHEVENT") && text.contains("portal21"),
        "{text}"
    );
    for secret in ["access-1", "access-2", "refresh-2", APP_TOKEN] {
        assert!(!text.contains(secret), "{secret} in the log: {text}");
    }
}

/// The uninstall forgets the portal's plan with its tokens.
#[tokio::test]
async fn uninstall_forgets_the_bind_plan() {
    let s = setup("portal22").await;
    install(&s).await;
    bind_and_store_plan(&s, "portal22").await;
    let uninstall = json!({"event": "ONAPPUNINSTALL", "data": {"CLEAN": "0"}, "ts": "1790000100",
        "auth": {"member_id": "portal22", "application_token": APP_TOKEN}});
    assert_eq!(post(&s, Family::App, &uninstall).await.status, 202);
    assert_eq!(s.store.load_plan("portal22").await.unwrap(), None);
}

#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
