//! `relay serve` attacked as it would be on the internet: forged installs and updates that try
//! to move a portal's REST calls to an internal host, destinations that redirect, nesting
//! bombs (peak RSS read from /proc), half-sent requests, and the modes of the files that hold
//! tokens. Each test drives the real process and asserts on what the hosts involved received.

mod harness;

use harness::crm::{self, SALESMAN_SECRET, SIGNING_SECRET};
use harness::{now_s, post, run_relay, wait_for, RelayProcess, TempDir, FORM, FORWARD_DEADLINE};
use integration_tests::destination::Destination;
use integration_tests::fake_bitrix24_events::{php_form, FakePortal};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const APP_TOKEN: &str = "adv-application-token";

/// App mode against a fake portal that is also the OAuth server (it answers `app.info`, as
/// oauth.bitrix.info does in production), with the loopback switch tests need.
fn app_env(portal: &FakePortal, destination: &Destination) -> Vec<(&'static str, String)> {
    vec![
        ("RELAY_B24_OAUTH_URL", portal.oauth_url()),
        ("RELAY_B24_CLIENT_ID", portal.client_id.clone()),
        (
            "RELAY_B24_CLIENT_SECRET",
            portal.state().client_secret.clone(),
        ),
        ("RELAY_ALLOW_LOOPBACK_CRM", "1".to_string()),
        ("RELAY_SIGNING_SECRET", SIGNING_SECRET.to_string()),
        ("RELAY_DESTINATION_URL", destination.url()),
    ]
}

/// Forwards whose envelope is a deal event, as the destination got them.
fn delivered_deals(destination: &Destination) -> Vec<Value> {
    destination
        .delivered_bodies()
        .into_iter()
        .filter(|b| b["family"] == "deal")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_client_endpoint_never_receives_the_portals_token() {
    let portal = FakePortal::start("advportal1").await;
    portal.set_entity("deal", "41", json!({"ID": "41", "TITLE": "genuine"}));
    // The internal host an attacker wants the relay to call with the portal's token.
    let internal = Destination::start().await;
    let destination = Destination::start().await;
    let dir = TempDir::new("adv-forged-install");
    let relay = RelayProcess::start(dir.path(), &app_env(&portal, &destination));

    portal.issue_access_token("adv-access-1");
    let mut install =
        portal.install_body("adv-access-1", "adv-refresh-1", APP_TOKEN, now_s() + 3600);
    install["auth"]["client_endpoint"] = json!(format!("{}/", internal.url()));
    install["auth"]["domain"] = json!("attacker.example");
    let (status, reply) = post(&relay.url("/app"), FORM, php_form(&install)).await;
    assert_eq!(status, 202, "a genuine token installs: {reply}");

    let change = portal.record_change("ONCRMDEALUPDATE", "41", now_s(), APP_TOKEN);
    let (status, reply) = post(&relay.url("/deal"), FORM, php_form(&change)).await;
    assert_eq!(status, 202, "{reply}");
    let deals = wait_for(FORWARD_DEADLINE, "the deal at the destination", || {
        let deals = delivered_deals(&destination);
        (!deals.is_empty()).then_some(deals)
    })
    .await;
    assert_eq!(deals[0]["entity"]["TITLE"], "genuine", "{}", deals[0]);
    assert!(portal.calls("crm.deal.get") >= 1);
    assert!(
        internal.received().is_empty(),
        "the forged endpoint was called: {:?}",
        internal.received()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_id_no_install_is_accepted() {
    let portal = FakePortal::start("advportal2").await;
    let destination = Destination::start().await;
    let dir = TempDir::new("adv-no-client-id");
    let env: Vec<_> = app_env(&portal, &destination)
        .into_iter()
        .filter(|(k, _)| *k != "RELAY_B24_CLIENT_ID")
        .collect();
    let relay = RelayProcess::start(dir.path(), &env);
    portal.issue_access_token("adv-access-2");
    let install = portal.install_body("adv-access-2", "r", APP_TOKEN, now_s() + 3600);
    let (status, _) = post(&relay.url("/app"), FORM, php_form(&install)).await;
    assert_eq!(status, 401);
    // Nothing was stored: the application token opens no door.
    let change = portal.record_change("ONCRMDEALUPDATE", "1", now_s(), APP_TOKEN);
    let (status, _) = post(&relay.url("/deal"), FORM, php_form(&change)).await;
    assert_eq!(status, 401);

    // An empty application token is refused even with everything else genuine.
    let relay_with_id = RelayProcess::start(
        TempDir::new("adv-empty-token").path(),
        &app_env(&portal, &destination),
    );
    let install = portal.install_body("adv-access-2", "r", "", now_s() + 3600);
    let (status, _) = post(&relay_with_id.url("/app"), FORM, php_form(&install)).await;
    assert_eq!(status, 401);
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_is_confirmed_with_app_info_before_it_moves_anything() {
    let portal = FakePortal::start("advportal3").await;
    portal.set_entity("deal", "7", json!({"ID": "7", "TITLE": "kept"}));
    let internal = Destination::start().await;
    let destination = Destination::start().await;
    let dir = TempDir::new("adv-update");
    let relay = RelayProcess::start(dir.path(), &app_env(&portal, &destination));
    portal.issue_access_token("adv-access-3");
    let install = portal.install_body("adv-access-3", "adv-refresh-3", APP_TOKEN, now_s() + 3600);
    assert_eq!(
        post(&relay.url("/app"), FORM, php_form(&install)).await.0,
        202
    );

    // A leaked event gives the attacker the application token; the access token is his own.
    let update = json!({"event": "ONAPPUPDATE", "data": {"VERSION": "2"}, "ts": now_s().to_string(),
        "auth": {"member_id": "advportal3", "application_token": APP_TOKEN,
            "access_token": "attacker-access", "refresh_token": "attacker-refresh",
            "expires": (now_s() + 3600).to_string(), "domain": "attacker.example",
            "client_endpoint": format!("{}/", internal.url())}});
    let (status, _) = post(&relay.url("/app"), FORM, php_form(&update)).await;
    assert_eq!(
        status, 401,
        "an update app.info does not confirm is refused"
    );

    let change = portal.record_change("ONCRMDEALUPDATE", "7", now_s(), APP_TOKEN);
    assert_eq!(
        post(&relay.url("/deal"), FORM, php_form(&change)).await.0,
        202
    );
    let deals = wait_for(FORWARD_DEADLINE, "the deal at the destination", || {
        let deals = delivered_deals(&destination);
        (!deals.is_empty()).then_some(deals)
    })
    .await;
    assert_eq!(deals[0]["entity"]["TITLE"], "kept");
    assert!(internal.received().is_empty(), "{:?}", internal.received());
}

/// A destination that answers every request with `status` and `Location: location`, and
/// records each request's head and body.
struct Redirector {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Redirector {
    fn start(status: u16, location: String) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut raw = Vec::new();
                let mut buf = [0u8; 65536];
                // Head, then as much body as Content-Length says.
                loop {
                    let n = stream.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&raw).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if raw.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&raw).to_string());
                let answer = format!(
                    "HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        Redirector { url, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirecting_destinations_are_parked_and_never_followed() {
    let attacker = Destination::start().await;
    let stolen = format!("{}?key=s3cret-in-location", attacker.url());
    let found = Redirector::start(302, stolen.clone());
    let temporary = Redirector::start(307, stolen);
    let dir = TempDir::new("adv-redirects");
    let env = vec![
        ("RELAY_B24_APP_TOKENS", crm::B24_TOKEN.to_string()),
        ("RELAY_SIGNING_SECRET", SIGNING_SECRET.to_string()),
        ("RELAY_DESTINATION_URL_DEAL", found.url.clone()),
        ("RELAY_DESTINATION_URL_LEAD", temporary.url.clone()),
        ("RELAY_B24_OAUTH_URL", "http://127.0.0.1:9".to_string()),
    ];
    let relay = RelayProcess::start(dir.path(), &env);
    let mut ids = Vec::new();
    for (family, event) in [("deal", "ONCRMDEALUPDATE"), ("lead", "ONCRMLEADUPDATE")] {
        let body = crm::b24_event(event, "5", now_s(), crm::B24_TOKEN);
        let (status, reply) = post(&relay.url(&format!("/{family}")), FORM, body).await;
        assert_eq!(status, 202, "{reply}");
        ids.push(reply["id"].as_str().unwrap().to_string());
    }
    for (id, status) in ids.iter().zip(["302", "307"]) {
        let attempts = wait_for(FORWARD_DEADLINE, "the redirect parked", || {
            let (_, out, _) = run_relay(dir.path(), &env, &["attempts", id]);
            out.contains("dead_letter").then_some(out)
        })
        .await;
        assert!(attempts.contains(&format!(" {status} ")), "{attempts}");
        assert!(
            attempts.contains(&attacker.url()),
            "the log names where it pointed: {attempts}"
        );
        assert!(
            !attempts.contains("s3cret"),
            "Location is redacted: {attempts}"
        );
    }
    // Each redirector got its one signed POST with the body, and nothing followed it.
    for redirector in [&found, &temporary] {
        let requests = redirector.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert!(requests[0].starts_with("POST "), "{}", requests[0]);
        assert!(requests[0].contains("webhook-signature"));
    }
    assert!(
        attacker.received().is_empty(),
        "the redirect target got {:?}",
        attacker.received()
    );
    let (_, letters, _) = run_relay(dir.path(), &env, &["dead-letters"]);
    assert!(
        letters.contains(&ids[0]) && letters.contains(&ids[1]),
        "{letters}"
    );
    drop(relay);
}

/// Peak resident set of a process, in KiB (`VmHWM` in /proc/<pid>/status).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nesting_bombs_are_refused_within_a_memory_budget() {
    let destination = Destination::start().await;
    let dir = TempDir::new("adv-bombs");
    let env = vec![
        ("RELAY_B24_APP_TOKENS", crm::B24_TOKEN.to_string()),
        ("RELAY_SALESMAN_SECRET", SALESMAN_SECRET.to_string()),
        ("RELAY_DESTINATION_URL", destination.url()),
        ("RELAY_B24_OAUTH_URL", "http://127.0.0.1:9".to_string()),
    ];
    let relay = RelayProcess::start(dir.path(), &env);
    const MIB: usize = 1024 * 1024;
    // JSON: nested one-key objects, no scalar at all.
    let unit = r#"{"a":{"a":{"a":{}}}},"#;
    let json_bomb = format!("[{}{{}}]", unit.repeat(MIB / unit.len() - 1));
    // Form: many keys 31 brackets deep, empty values.
    let pair = format!("k{}=&", "[a]".repeat(31));
    let form_bomb: String = (0..MIB / (pair.len() + 6))
        .map(|n| pair.replacen('k', &format!("k{n}"), 1))
        .collect();
    assert!(json_bomb.len() <= MIB && form_bomb.len() <= MIB);
    let mut sends = Vec::new();
    for n in 0..8 {
        let (content_type, body) = if n % 2 == 0 {
            ("application/json", json_bomb.clone())
        } else {
            (FORM, form_bomb.clone())
        };
        let url = relay.url("/deal");
        sends.push(tokio::spawn(async move {
            post(&url, content_type, body).await.0
        }));
    }
    for send in sends {
        let status = send.await.unwrap();
        assert!((400..500).contains(&status), "a bomb got {status}");
    }
    let peak_mib = peak_rss_kib(relay.pid()) / 1024;
    eprintln!("relay serve peak RSS after 8 concurrent 1 MiB bombs: {peak_mib} MiB");
    assert!(peak_mib < 100, "peak RSS {peak_mib} MiB");
    // Still serving.
    let health = reqwest::get(relay.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(destination.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_cut_off_and_healthz_keeps_answering() {
    let destination = Destination::start().await;
    let dir = TempDir::new("adv-slow");
    let env = vec![
        ("RELAY_B24_APP_TOKENS", crm::B24_TOKEN.to_string()),
        ("RELAY_DESTINATION_URL", destination.url()),
    ];
    let relay = RelayProcess::start(dir.path(), &env);
    let addr = relay.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..200 {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .write_all(b"POST /deal HTTP/1.1\r\nHost: x\r\nContent-Type: applic")
            .unwrap();
        held.push(stream);
    }
    let health = reqwest::get(relay.url("/healthz")).await.unwrap();
    assert_eq!(
        health.status(),
        200,
        "healthz answers beside 200 half-sent requests"
    );
    // The header read timeout (10 s) closes every one of them; the wait is bounded.
    let closed = tokio::task::spawn_blocking(move || {
        held.into_iter()
            .filter_map(|mut stream| {
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let mut buf = [0u8; 512];
                // EOF, a reset, or a 408 answer followed by EOF: the server let go.
                match stream.read(&mut buf) {
                    Ok(_) => Some(()),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(()),
                    Err(_) => None,
                }
            })
            .count()
    })
    .await
    .unwrap();
    assert_eq!(closed, 200, "every half-sent request was cut off");
    let health = reqwest::get(relay.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_relay_token_header_is_refused() {
    let destination = Destination::start().await;
    let dir = TempDir::new("adv-repeated-token");
    let env = vec![
        ("RELAY_SALESMAN_SECRET", SALESMAN_SECRET.to_string()),
        ("RELAY_DESTINATION_URL", destination.url()),
    ];
    let relay = RelayProcess::start(dir.path(), &env);
    let body = json!({"event": "deal.edit", "identity": "1", "did": "812"}).to_string();
    let send = |tokens: &'static [&'static str]| {
        let mut request = reqwest::Client::new()
            .post(relay.url("/deal"))
            .header("content-type", "application/json")
            .body(body.clone());
        for token in tokens {
            request = request.header("x-relay-token", *token);
        }
        request.send()
    };
    let status = send(&[SALESMAN_SECRET, "wrong"]).await.unwrap().status();
    assert_eq!(status, 401);
    let status = send(&["wrong", SALESMAN_SECRET]).await.unwrap().status();
    assert_eq!(status, 401);
    let status = send(&[SALESMAN_SECRET]).await.unwrap().status();
    assert_eq!(status, 202);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_folder_and_database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let destination = Destination::start().await;
    let base = TempDir::new("adv-modes");
    let data = base.path().join("data");
    let env = vec![
        ("RELAY_B24_APP_TOKENS", crm::B24_TOKEN.to_string()),
        ("RELAY_DESTINATION_URL", destination.url()),
    ];
    let relay = RelayProcess::start(&data, &env);
    let body = crm::b24_event("ONCRMDEALUPDATE", "3", now_s(), crm::B24_TOKEN);
    assert_eq!(post(&relay.url("/deal"), FORM, body).await.0, 202);
    wait_for(FORWARD_DEADLINE, "the forward", || {
        (!destination.delivered().is_empty()).then_some(())
    })
    .await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    let files: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("relay.db") || name.starts_with("queue.db")
        })
        .collect();
    assert!(
        files.len() >= 4,
        "relay.db, queue.db and their WALs: {files:?}"
    );
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[test]
fn a_short_signing_secret_stops_relay_serve_at_start() {
    let dir = TempDir::new("adv-short-secret");
    // "secret-for-test": 15 bytes.
    let env = vec![(
        "RELAY_SIGNING_SECRET",
        "whsec_c2VjcmV0LWZvci10ZXN0".to_string(),
    )];
    let (ok, _, err) = run_relay(dir.path(), &env, &["serve", "--addr", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(
        err.contains("RELAY_SIGNING_SECRET") && err.contains("24"),
        "{err}"
    );
}

#[test]
fn the_banner_shows_destinations_redacted() {
    let dir = TempDir::new("adv-banner");
    let env = vec![
        ("RELAY_B24_APP_TOKENS", crm::B24_TOKEN.to_string()),
        (
            "RELAY_DESTINATION_URL",
            "https://user:pa55word@hooks.example/in?key=s3cret-key#frag".to_string(),
        ),
    ];
    let relay = RelayProcess::start(dir.path(), &env);
    // The destination lines follow the listening line; wait for them.
    let banner = {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let lines = relay.lines();
            if lines.iter().any(|l| l.contains("hooks.example")) {
                break lines.join("\n");
            }
            assert!(
                std::time::Instant::now() < until,
                "no destination line: {lines:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(banner.contains("https://hooks.example/in"), "{banner}");
    for secret in ["pa55word", "s3cret-key", "user:", "frag"] {
        assert!(
            !banner.contains(secret),
            "{secret} in the banner:\n{banner}"
        );
    }
}
