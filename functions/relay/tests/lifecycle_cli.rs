//! `relay bind` and `relay poll` as a user runs them: the real binary, an embedded store with
//! one installed portal, and a loopback Bitrix24 portal that keeps what was bound and logged.

mod harness;

use harness::{run_relay, TempDir};
use integration_tests::fake_bitrix24_events::FakePortal;
use relay_core::ports::{PollingQueue, PortalTokens, TokenStore};
use relay_core::secret::Secret;
use relay_local::SqliteStore;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// A portal whose app is installed in the data dir. Its bucket is wide: each `relay` process
/// starts with an empty client-side limiter, so pacing across processes is not under test.
async fn installed_portal(member_id: &str, data_dir: &TempDir) -> FakePortal {
    let portal = FakePortal::start(member_id).await;
    portal.issue_access_token("cli-access");
    let store = SqliteStore::open(data_dir.path()).unwrap();
    store
        .put(&PortalTokens {
            member_id: member_id.into(),
            domain: portal.domain.clone(),
            application_token: Secret::new("app-token"),
            access_token: Secret::new("cli-access"),
            refresh_token: Secret::new("cli-refresh"),
            // Far in the future: no refresh is needed.
            expires_at_ms: 4_000_000_000_000,
            client_endpoint: portal.client_endpoint.clone(),
            scope: "crm,task".into(),
            server_endpoint: String::new(),
        })
        .await
        .unwrap();
    portal
}

async fn relay(data_dir: PathBuf, args: Vec<&'static str>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || run_relay(&data_dir, &[], &args))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_bind_twice_produces_one_handler_per_event() {
    let dir = TempDir::new("bind");
    let portal = installed_portal("cliportal1", &dir).await;
    let args = vec![
        "bind",
        "--base-url",
        "https://relay.example.com",
        "--offline",
    ];
    let (ok, first, err) = relay(dir.path().to_path_buf(), args.clone()).await;
    assert!(ok, "first bind failed: {first}{err}");
    let bound_once = portal.bound();
    assert!(!bound_once.is_empty());
    assert!(
        first.contains(&format!(
            "bound {} handler(s), 0 already bound",
            bound_once.len()
        )),
        "{first}"
    );

    let (ok, second, err) = relay(dir.path().to_path_buf(), args).await;
    assert!(ok, "second bind failed: {second}{err}");
    assert!(
        second.contains(&format!(
            "bound 0 handler(s), {} already bound",
            bound_once.len()
        )),
        "{second}"
    );
    let rows = portal.bound();
    assert_eq!(rows, bound_once, "the second run changed nothing");
    let unique: BTreeSet<_> = rows
        .iter()
        .map(|r| (r.event.clone(), r.handler.clone(), r.offline))
        .collect();
    assert_eq!(unique.len(), rows.len(), "one handler per event");
    assert!(rows
        .iter()
        .any(|r| r.event == "ONCRMLEADADD" && r.handler == "https://relay.example.com/lead"));

    let (ok, listed, _) = relay(dir.path().to_path_buf(), vec!["bind", "--list"]).await;
    assert!(ok);
    assert!(
        listed.contains("ONCRMDEALUPDATE") && listed.contains("https://relay.example.com/deal")
    );

    let (ok, removed, err) = relay(
        dir.path().to_path_buf(),
        vec![
            "bind",
            "--base-url",
            "https://relay.example.com",
            "--offline",
            "--remove",
        ],
    )
    .await;
    assert!(ok, "{removed}{err}");
    assert!(portal.bound().is_empty(), "{removed}");
}

/// Bitrix24 drops the handlers when the app is updated (b24restdocs
/// api-reference/events/event-bind.md); `relay bind --again` binds what the last `relay bind`
/// stored, online and offline, without being told the URLs again; `--remove` forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_bind_again_restores_the_stored_plan_after_an_update() {
    let dir = TempDir::new("bind-again");
    let portal = installed_portal("cliportal3", &dir).await;
    let (ok, out, err) = relay(dir.path().to_path_buf(), vec!["bind", "--again"]).await;
    assert!(!ok, "nothing stored yet, yet --again succeeded: {out}");
    assert!(err.contains("no bind plan stored"), "{err}");
    assert!(portal.bound().is_empty());

    // Two families (the stack-outputs form) keep the plan inside the CLI's default burst, so
    // the test is not paced at 2 requests/s.
    let outputs = dir.path().join("outputs.json");
    std::fs::write(
        &outputs,
        r#"{"DealIngestUrl": "https://deal.example.com/", "AppIngestUrl": "https://app.example.com/"}"#,
    )
    .unwrap();
    let outputs = outputs.to_str().unwrap().to_string();
    let (ok, out, err) = relay_owned(
        dir.path().to_path_buf(),
        vec!["bind", "--stack-outputs", &outputs, "--offline"],
    )
    .await;
    assert!(ok, "{out}{err}");
    let planned = rows(&portal);
    assert!(planned.contains(&(
        "ONCRMDEALUPDATE".into(),
        "https://deal.example.com/".into(),
        false
    )));
    assert!(planned.contains(&(
        "ONOFFLINEEVENT".into(),
        "https://app.example.com/".into(),
        false
    )));
    assert!(planned.iter().any(|(_, _, offline)| *offline));

    // The update keeps the token valid here (the CLI holds the stored one) but drops every handler.
    portal.update_app("cli-access", "cli-refresh", "app-token", 4_000_000_000);
    assert!(portal.bound().is_empty());
    let (ok, out, err) = relay(dir.path().to_path_buf(), vec!["bind", "--again"]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(rows(&portal), planned, "bound again exactly as planned");
    assert_eq!(portal.bound().len(), planned.len(), "each handler once");
    assert!(
        out.contains(&format!(
            "bound {} handler(s) again, 0 already bound, of {} in the stored plan",
            planned.len(),
            planned.len()
        )),
        "{out}"
    );

    let (ok, out, err) = relay_owned(
        dir.path().to_path_buf(),
        vec!["bind", "--stack-outputs", &outputs, "--remove"],
    )
    .await;
    assert!(ok, "{out}{err}");
    let (ok, _, err) = relay(dir.path().to_path_buf(), vec!["bind", "--again"]).await;
    assert!(!ok && err.contains("no bind plan stored"), "{err}");
    assert!(
        portal.bound().is_empty(),
        "a removed plan is not bound back"
    );
}

async fn relay_owned(data_dir: PathBuf, args: Vec<&str>) -> (bool, String, String) {
    let args: Vec<String> = args.into_iter().map(str::to_string).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_relay(&data_dir, &[], &args)
    })
    .await
    .unwrap()
}

fn rows(portal: &FakePortal) -> BTreeSet<(String, String, bool)> {
    portal
        .bound()
        .into_iter()
        .map(|r| (r.event, r.handler, r.offline))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_poll_drains_the_offline_log_into_the_embedded_queue() {
    let dir = TempDir::new("poll");
    let portal = installed_portal("cliportal2", &dir).await;
    for n in 1..=7i64 {
        portal.record_change(
            "ONCRMCOMPANYUPDATE",
            &n.to_string(),
            1_790_000_000 + n,
            "app-token",
        );
    }
    let (ok, out, err) = relay(dir.path().to_path_buf(), vec!["poll", "--page-size", "3"]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("7 record(s) in 3 page(s): 7 queued and cleared"),
        "{out}"
    );
    assert!(portal.offline_records().is_empty());

    let store = SqliteStore::open(dir.path()).unwrap();
    let messages = store
        .receive(100, Duration::from_secs(30), now_ms())
        .await
        .unwrap();
    let entities: BTreeSet<String> = messages
        .iter()
        .map(|m| {
            let body: serde_json::Value = serde_json::from_str(&m.body).unwrap();
            assert_eq!(body["family"], "company");
            assert_eq!(body["portal"], "cliportal2");
            body["entity_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(entities, (1..=7).map(|n| n.to_string()).collect());
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
