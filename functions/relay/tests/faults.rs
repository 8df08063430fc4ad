//! Fault injection against the real `relay serve` process: a kill -9 in the middle of a burst,
//! a destination that fails at random, answers slower than the batch timeout or hangs past
//! the forward timeout, and a Bitrix24 portal that refuses REST calls for a while. Each case
//! asserts, by webhook-id, what the destination got, and prints its figures (`FIGURES …`)
//! for the README's reliability table. Every wait is bounded; no case asserts a duration.

mod harness;

use harness::crm::{self, B24_TOKEN, SIGNING_SECRET};
use harness::{
    delivered_ids, now_s, run_relay, wait_for, wait_until_delivered, RelayProcess, TempDir,
    CONSUMERS, FORM, FORWARD_DEADLINE,
};
use integration_tests::destination::Destination;
use integration_tests::fake_bitrix24::{FakeBitrix24, MethodReply, PortalLimits};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn base_env(destination: &Destination) -> Vec<(&'static str, String)> {
    vec![
        ("RELAY_B24_APP_TOKENS", B24_TOKEN.to_string()),
        ("RELAY_SIGNING_SECRET", SIGNING_SECRET.to_string()),
        ("RELAY_DESTINATION_URL", destination.url()),
        ("RELAY_B24_OAUTH_URL", "http://127.0.0.1:9".to_string()),
    ]
}

/// Fast retries for the cases that retry a lot (the schedule's floor is 1 s per retry).
const QUICK_RETRIES: [&str; 4] = ["--retry-base", "100ms", "--retry-cap", "1s"];

/// Posts one Bitrix24 event; `Some(envelope id)` when the relay answered 202.
async fn post_event(client: &reqwest::Client, url: &str, body: String) -> Option<String> {
    let response = client
        .post(url)
        .header("content-type", FORM)
        .body(body)
        .send()
        .await
        .ok()?;
    if response.status().as_u16() != 202 {
        return None;
    }
    let reply: serde_json::Value = response.json().await.ok()?;
    reply["id"].as_str().map(str::to_string)
}

async fn accept_all(relay: &RelayProcess, bodies: Vec<String>) -> BTreeSet<String> {
    let client = reqwest::Client::new();
    let mut accepted = BTreeSet::new();
    for body in bodies {
        let id = post_event(&client, &relay.url("/deal"), body)
            .await
            .expect("the relay accepts the event");
        accepted.insert(id);
    }
    accepted
}

fn no_dead_letters(dir: &TempDir) {
    let (ok, stdout, stderr) = run_relay(dir.path(), &[], &["dead-letters"]);
    assert!(ok, "relay dead-letters failed: {stderr}");
    assert!(stdout.starts_with("no dead letters"), "{stdout}");
}

/// The events of one case: `count` deal updates over `entities` deals, each its own id.
fn deal_events(count: usize, entities: usize, first_entity: usize) -> Vec<String> {
    let ts = now_s();
    (0..count)
        .map(|i| {
            crm::b24_event(
                "ONCRMDEALUPDATE",
                &(first_entity + i % entities).to_string(),
                ts + i as i64,
                B24_TOKEN,
            )
        })
        .collect()
}

/// Posts `bodies` from `clients` concurrent clients; `on_answer` sees the count of 202s so
/// far. Returns the envelope ids answered 202 and the bodies that were not.
async fn burst(
    url: String,
    bodies: Vec<String>,
    clients: usize,
    answered: Arc<AtomicUsize>,
) -> (BTreeSet<String>, Vec<String>) {
    let queue = Arc::new(Mutex::new(bodies));
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let unanswered = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (queue, accepted, unanswered, answered, url) = (
                queue.clone(),
                accepted.clone(),
                unanswered.clone(),
                answered.clone(),
                url.clone(),
            );
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                loop {
                    let Some(body) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    match post_event(&client, &url, body.clone()).await {
                        Some(id) => {
                            accepted.lock().unwrap().insert(id);
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        None => unanswered.lock().unwrap().push(body),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let unanswered = unanswered.lock().unwrap().clone();
    (accepted, unanswered)
}

/// The burst: 2,000 events from 32 clients, the relay killed with SIGKILL once about
/// a third are accepted, restarted, and the events it did not answer sent again, as a CRM
/// would. Every event answered 202 arrives; the only repeats allowed are the deliveries in
/// flight at the kill (one per message group a consumer task had in flight), which the
/// receiver drops by webhook-id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_burst_loses_no_accepted_event() {
    const EVENTS: usize = 2_000;
    const CLIENTS: usize = 32;
    let destination = Destination::start().await;
    destination.hold_answers_for(Duration::from_millis(20));
    let dir = TempDir::new("fault-kill");
    let env = base_env(&destination);
    let mut relay = RelayProcess::start(dir.path(), &env);

    let answered = Arc::new(AtomicUsize::new(0));
    let first = tokio::spawn(burst(
        relay.url("/deal"),
        deal_events(EVENTS, 400, 10_000),
        CLIENTS,
        answered.clone(),
    ));
    wait_for(FORWARD_DEADLINE, "a third of the burst accepted", || {
        (answered.load(Ordering::Relaxed) >= EVENTS / 3).then_some(())
    })
    .await;
    relay.kill_hard();
    let (accepted_before, unanswered) = first.await.unwrap();
    let delivered_before_restart = delivered_ids(&destination).len();
    assert!(
        delivered_before_restart < accepted_before.len(),
        "the kill must leave accepted events undelivered ({delivered_before_restart} of {})",
        accepted_before.len()
    );

    let relay = RelayProcess::start(dir.path(), &env);
    let resent = unanswered.len();
    let (accepted_after, refused) = burst(
        relay.url("/deal"),
        unanswered,
        CLIENTS,
        Arc::new(AtomicUsize::new(0)),
    )
    .await;
    assert!(
        refused.is_empty(),
        "the restarted relay accepts every event"
    );
    let accepted: BTreeSet<String> = accepted_before.union(&accepted_after).cloned().collect();
    wait_until_delivered(&destination, &accepted).await;
    let seen = delivered_ids(&destination);
    let lost = accepted.iter().filter(|id| !seen.contains_key(*id)).count();
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "FIGURES kill-9: events {EVENTS}, clients {CLIENTS}, answered 202 before the kill {}, \
         sent again after restart {resent}, delivered before restart {delivered_before_restart}, \
         delivered {}, lost {lost}, delivered twice {}",
        accepted_before.len(),
        seen.len(),
        repeated.len()
    );
    assert_eq!(lost, 0, "every event answered 202 arrives");
    assert_eq!(
        seen.len(),
        EVENTS,
        "every event of the burst arrives, nothing else"
    );
    // Each consumer task works on up to GROUPS_IN_FLIGHT groups of its batch at once, so that
    // many deliveries per task may be in flight at the kill.
    let in_flight_at_most = CONSUMERS * relay_core::consume::GROUPS_IN_FLIGHT;
    assert!(
        repeated.len() <= in_flight_at_most && repeated.iter().all(|(_, n)| **n == 2),
        "only the deliveries in flight at the kill may repeat: {repeated:?}"
    );
    no_dead_letters(&dir);
    drop(relay);
}

/// Half of all POSTs answered 503 at random: every event still arrives, each webhook-id is
/// answered 2xx once, and nothing is parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_failing_half_the_calls_at_random_gets_every_event_once() {
    const EVENTS: usize = 200;
    let destination = Destination::start().await;
    destination.fail_at_random(50);
    let dir = TempDir::new("fault-flaky");
    let mut options = vec!["--batch-timeout", "2s"];
    options.extend(QUICK_RETRIES);
    let relay = RelayProcess::start_with(dir.path(), &base_env(&destination), &options);
    let accepted = accept_all(&relay, deal_events(EVENTS, 100, 20_000)).await;
    wait_until_delivered(&destination, &accepted).await;
    let seen = delivered_ids(&destination);
    let requests = destination.received().len();
    let refused = requests - destination.delivered().len();
    let twice = seen.values().filter(|n| **n > 1).count();
    eprintln!(
        "FIGURES flaky-destination: events {EVENTS}, POSTs {requests}, answered 503 {refused}, \
         lost 0, delivered twice {twice}"
    );
    assert!(
        refused > EVENTS / 4,
        "the fault must bite: {refused} refusals"
    );
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), accepted);
    assert_eq!(twice, 0, "{seen:?}");
    no_dead_letters(&dir);
}

/// The case: answers slower than the batch timeout (so slower than the queue's
/// visibility, six times it). The heartbeat keeps each message invisible and its claim held,
/// so each event is POSTed once, never twice at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_slower_than_the_batch_timeout_gets_one_post_per_event() {
    let destination = Destination::start().await;
    destination.hold_answers_for(Duration::from_millis(3_500));
    let dir = TempDir::new("fault-slow");
    let relay = RelayProcess::start_with(
        dir.path(),
        &base_env(&destination),
        &["--batch-timeout", "500ms", "--forward-timeout", "10s"],
    );
    let accepted = accept_all(&relay, deal_events(3, 3, 30_000)).await;
    wait_until_delivered(&destination, &accepted).await;
    // Past another visibility period: a second POST would have arrived by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let posts = destination.received_webhook_ids();
    eprintln!(
        "FIGURES slow-destination: events {}, POSTs {}, most in flight per id {}",
        accepted.len(),
        posts.len(),
        destination.most_concurrent_per_webhook_id()
    );
    assert_eq!(
        posts.iter().cloned().collect::<BTreeSet<_>>(),
        accepted,
        "{posts:?}"
    );
    assert_eq!(posts.len(), accepted.len(), "one POST per event: {posts:?}");
    assert_eq!(destination.most_concurrent_per_webhook_id(), 1);
}

/// A destination that hangs past the forward timeout: the relay gives up on the POST and
/// retries later, never while the first is still its own; each event ends delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_hanging_past_the_forward_timeout_is_retried_one_post_at_a_time() {
    const EVENTS: usize = 4;
    let forward_timeout = Duration::from_secs(1);
    let destination = Destination::start().await;
    destination.hang_next(EVENTS, Duration::from_secs(3));
    let dir = TempDir::new("fault-hang");
    let mut options = vec!["--batch-timeout", "2s", "--forward-timeout", "1s"];
    options.extend(QUICK_RETRIES);
    let relay = RelayProcess::start_with(dir.path(), &base_env(&destination), &options);
    let accepted = accept_all(&relay, deal_events(EVENTS, EVENTS, 40_000)).await;
    wait_until_delivered(&destination, &accepted).await;
    let received = destination.received();
    let hung = received.iter().filter(|r| r.answered == 0).count();
    let seen = delivered_ids(&destination);
    eprintln!(
        "FIGURES hanging-destination: events {EVENTS}, POSTs {}, hung {hung}, delivered twice {}",
        received.len(),
        seen.values().filter(|n| **n > 1).count()
    );
    assert_eq!(hung, EVENTS, "the fault must bite");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    // A retry of an id comes only after the relay gave up on the previous POST.
    for id in &accepted {
        let arrivals: Vec<_> = received
            .iter()
            .filter(|r| r.header("webhook-id") == id)
            .map(|r| r.arrived_at)
            .collect();
        for pair in arrivals.windows(2) {
            assert!(
                pair[1].duration_since(pair[0]) >= forward_timeout,
                "{id}: a second POST while the first was in flight"
            );
        }
    }
}

/// Bitrix24 refuses every REST call for a while, as an overloaded portal does: 503
/// `QUERY_LIMIT_EXCEEDED` "Too many requests", then 500 `INTERNAL_SERVER_ERROR` (both in the
/// table of errors any method may return, bitrix24/b24restdocs `_includes/system-errors.md`,
/// apidocs.bitrix24.com). The events wait and are forwarded enriched afterwards; none goes
/// out with `entity: null` because of the outage. The minute is 4 s here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_refusing_calls_for_a_while_delays_events_but_never_empties_them() {
    const EVENTS: usize = 12;
    let portal = FakeBitrix24::start(crm::B24_MEMBER, PortalLimits::default()).await;
    for i in 0..EVENTS {
        let id = (50_000 + i).to_string();
        portal.set_entity(
            "deal",
            &id,
            json!({"ID": id, "TITLE": format!("deal {id}")}),
        );
    }
    let destination = Destination::start().await;
    let dir = TempDir::new("fault-crm");
    let mut env = base_env(&destination);
    // `member_id=url`: a bare webhook URL serves only events of its own host's portal.
    env.push((
        "RELAY_B24_WEBHOOK_URL",
        format!("{}={}", crm::B24_MEMBER, portal.webhook_url()),
    ));
    let mut options = vec!["--batch-timeout", "2s"];
    options.extend(QUICK_RETRIES);
    let relay = RelayProcess::start_with(dir.path(), &env, &options);
    portal.fail_for(
        Duration::from_secs(2),
        MethodReply::error(503, "QUERY_LIMIT_EXCEEDED", "Too many requests"),
    );
    let accepted = accept_all(&relay, deal_events(EVENTS, EVENTS, 50_000)).await;
    // The first refusals reach the consumer before the outage changes its kind.
    wait_for(FORWARD_DEADLINE, "the portal refusing calls", || {
        (portal.requests() > 0).then_some(())
    })
    .await;
    portal.fail_for(
        Duration::from_secs(2),
        MethodReply::error(500, "INTERNAL_SERVER_ERROR", "Internal server error"),
    );
    wait_until_delivered(&destination, &accepted).await;
    let bodies = destination.delivered_bodies();
    let empty = bodies.iter().filter(|b| b["entity"].is_null()).count();
    eprintln!(
        "FIGURES crm-outage: events {EVENTS}, REST calls {}, forwarded {}, forwarded with entity null {empty}",
        portal.requests(),
        bodies.len()
    );
    assert_eq!(empty, 0, "no event may go out empty because of the outage");
    for body in &bodies {
        let id = body["entity"]["ID"].as_str().expect("entity has its ID");
        assert_eq!(body["entity"]["TITLE"], format!("deal {id}"));
    }
    assert_eq!(delivered_ids(&destination).len(), EVENTS);
}

/// Bitrix24 posts identical bytes twice when a deal changes twice in one second (same `ts`,
/// same body, so the same envelope id). Both requests are queued (each send its own
/// deduplication id); the consumer's news-only rule decides. Here the deal changed after
/// the first delivery was fetched: the second request is forwarded under `<id>.v<ts>` with
/// that change. A third identical request, with nothing new, is recorded and not forwarded.
/// The receiver's view is asserted; a later event of the same deal proves the group drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_forward_each_change_once() {
    let portal = FakeBitrix24::start(crm::B24_MEMBER, PortalLimits::default()).await;
    let deal = |stage: &str, title: &str| json!({"ID": "60000", "TITLE": title, "STAGE_ID": stage});
    portal.set_entity("deal", "60000", deal("NEW", "twice"));
    let destination = Destination::start().await;
    let dir = TempDir::new("fault-identical");
    let mut env = base_env(&destination);
    env.push((
        "RELAY_B24_WEBHOOK_URL",
        format!("{}={}", crm::B24_MEMBER, portal.webhook_url()),
    ));
    let relay = RelayProcess::start_with(dir.path(), &env, &QUICK_RETRIES);
    let client = reqwest::Client::new();
    let ts = now_s();
    let same_bytes = crm::b24_event("ONCRMDEALUPDATE", "60000", ts, B24_TOKEN);
    let url = relay.url("/deal");
    let post = |body: String| post_event(&client, &url, body);
    let delivered_count = |n: usize| {
        let destination = &destination;
        move || (destination.delivered().len() >= n).then_some(())
    };

    let id = post(same_bytes.clone()).await.expect("202");
    wait_for(FORWARD_DEADLINE, "the first delivery", delivered_count(1)).await;
    portal.set_entity("deal", "60000", deal("WON", "twice"));
    assert_eq!(post(same_bytes.clone()).await.as_deref(), Some(id.as_str()));
    wait_for(FORWARD_DEADLINE, "the second change", delivered_count(2)).await;
    assert_eq!(post(same_bytes).await.as_deref(), Some(id.as_str()));
    let skipped = || {
        let (ok, stdout, _) = run_relay(dir.path(), &[], &["attempts", &id]);
        (ok && stdout.contains("skipped")).then_some(())
    };
    wait_for(
        FORWARD_DEADLINE,
        "the third copy recorded as skipped",
        skipped,
    )
    .await;
    // Beyond the twin window, with a real change.
    portal.set_entity("deal", "60000", deal("WON", "renamed"));
    let later = crm::b24_event("ONCRMDEALUPDATE", "60000", ts + 600, B24_TOKEN);
    let later_id = post(later).await.expect("202");
    wait_for(FORWARD_DEADLINE, "the later event", delivered_count(3)).await;

    let ids = destination.delivered_webhook_ids();
    assert_eq!(
        ids,
        vec![id.clone(), format!("{id}.v{ts}"), later_id],
        "each change once; the copy without news not at all"
    );
    let bodies = destination.delivered_bodies();
    assert_eq!(
        bodies[1]["changes"],
        json!([{"field": "STAGE_ID", "old": "NEW", "new": "WON"}])
    );
    assert_eq!(
        bodies[2]["changes"],
        json!([{"field": "TITLE", "old": "twice", "new": "renamed"}])
    );
    no_dead_letters(&dir);
}
