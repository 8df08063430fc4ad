//! `RELAY_ROUTES` at the real `relay serve`: a routes file or SSM parameter that does not load
//! refuses the start with the loader's error (non-zero exit, nothing listening), and a good
//! routes file is listed in the banner and fans one event out to each of its destinations.

mod harness;

use harness::crm::{self, B24_TOKEN, SIGNING_SECRET};
use harness::{now_s, post, relay_command, run_relay, wait_for, RelayProcess, TempDir, FORM};
use integration_tests::destination::Destination;
use serde_json::json;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long a refused start may take (it reads one file or one SSM parameter).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(30);

fn base_env() -> Vec<(&'static str, String)> {
    vec![
        ("RELAY_B24_APP_TOKENS", B24_TOKEN.to_string()),
        ("RELAY_SIGNING_SECRET", SIGNING_SECRET.to_string()),
        ("RELAY_B24_OAUTH_URL", "http://127.0.0.1:9".to_string()),
    ]
}

/// Starts `relay serve` and expects it to exit on its own, unsuccessfully; returns
/// (stdout, stderr). A relay that starts anyway is killed and the test fails.
fn refused_start(dir: &TempDir, env: &[(&str, String)]) -> (String, String) {
    let mut child = relay_command(dir.path(), env)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("relay binary starts");
    let deadline = Instant::now() + REFUSAL_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("relay status") {
            assert!(!status.success(), "relay serve exited 0 with bad routes");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("relay serve did not refuse its routes within {REFUSAL_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let output = child.wait_with_output().expect("relay output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stdout.contains("listening"), "{stdout}");
    (stdout, stderr)
}

#[test]
fn serve_refuses_a_routes_file_it_cannot_read() {
    let dir = TempDir::new("routes-missing");
    let path = dir.path().join("no-such-routes.json");
    let mut env = base_env();
    env.push(("RELAY_ROUTES", path.display().to_string()));
    let (_, stderr) = refused_start(&dir, &env);
    assert!(stderr.contains("RELAY_ROUTES"), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read routes file {}", path.display())),
        "{stderr}"
    );
}

/// Needs the routes file parser (the routes-match branch): the skeleton refuses every file.
#[test]
fn serve_refuses_a_bad_routes_file_naming_its_line() {
    let dir = TempDir::new("routes-bad");
    let path = dir.path().join("routes.json");
    // Line 3 has two commas in a row: no JSON parser reads past it.
    std::fs::write(
        &path,
        "{\"routes\": [\n  {\"name\": \"deals\",\n   \"match\": {\"family\": [\"deal\"]},,\n   \"destinations\": [{\"url\": \"http://127.0.0.1:9/hook\"}]}\n]}\n",
    )
    .expect("write routes");
    let mut env = base_env();
    env.push(("RELAY_ROUTES", path.display().to_string()));
    let (_, stderr) = refused_start(&dir, &env);
    assert!(stderr.contains("RELAY_ROUTES"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:", path.display())),
        "the error names the file and line 3: {stderr}"
    );
}

/// `ssm:<name>` reads the routes from SSM at start; a parameter that does not exist refuses
/// the start by name. Against the moto server scripts/test.sh starts.
#[test]
fn serve_refuses_a_missing_ssm_routes_parameter() {
    let moto = std::env::var("RELAY_TEST_MOTO_URL")
        .expect("RELAY_TEST_MOTO_URL is not set: run scripts/test.sh (it starts moto)");
    let dir = TempDir::new("routes-ssm");
    let mut env = base_env();
    env.extend([
        ("RELAY_ROUTES", "ssm:/crm-relay/no-such-routes".to_string()),
        ("AWS_ENDPOINT_URL", moto),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]);
    let (_, stderr) = refused_start(&dir, &env);
    assert!(stderr.contains("RELAY_ROUTES"), "{stderr}");
    assert!(
        stderr.contains("SSM parameter /crm-relay/no-such-routes does not exist"),
        "{stderr}"
    );
}

/// Needs the routes file parser (the routes-match branch). A routes file with one route and
/// two destinations: the banner lists the route, each destination gets the event once under
/// the event's id, the second signed with its own secret, and `relay attempts` names the route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_lists_its_routes_and_fans_an_event_out() {
    let (first, second) = (Destination::start().await, Destination::start().await);
    let dir = TempDir::new("routes-fanout");
    let path = dir.path().join("routes.json");
    let routes = json!({"routes": [{
        "name": "all-deals",
        "match": {"family": ["deal"]},
        "destinations": [
            {"url": first.url()},
            {"url": second.url(), "secret_env": "SECOND_SIGNING_SECRET"},
        ],
    }]});
    std::fs::write(&path, serde_json::to_vec_pretty(&routes).unwrap()).expect("write routes");
    let second_secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let mut env = base_env();
    env.extend([
        ("RELAY_ROUTES", path.display().to_string()),
        ("SECOND_SIGNING_SECRET", second_secret.to_string()),
    ]);
    let relay = RelayProcess::start(dir.path(), &env);
    // The banner's route lines follow its "listening" line; stdout is read as it comes.
    let banner = wait_for(Duration::from_secs(10), "the routes in the banner", || {
        let banner = relay.lines().join("\n");
        banner.contains("all-deals").then_some(banner)
    })
    .await;
    assert!(!banner.contains(second_secret), "{banner}");

    let (status, reply) = post(
        &relay.url("/deal"),
        FORM,
        crm::b24_event("ONCRMDEALUPDATE", "42", now_s(), B24_TOKEN),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let id = reply["id"].as_str().expect("envelope id").to_string();
    wait_for(
        Duration::from_secs(60),
        "the event at both destinations",
        || (!first.delivered().is_empty() && !second.delivered().is_empty()).then_some(()),
    )
    .await;
    assert_eq!(first.delivered_webhook_ids(), vec![id.clone()]);
    assert_eq!(second.delivered_webhook_ids(), vec![id.clone()]);
    let got = &first.delivered()[0];
    assert!(crm::signature_is_valid(
        &id,
        got.header("webhook-timestamp"),
        &got.body,
        got.header("webhook-signature")
    ));
    let got = &second.delivered()[0];
    assert!(!crm::signature_is_valid(
        &id,
        got.header("webhook-timestamp"),
        &got.body,
        got.header("webhook-signature")
    ));

    let (ok, stdout, stderr) = run_relay(dir.path(), &[], &["attempts", &id]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("route all-deals"), "{stdout}");
}

/// On Lambda no secret sits in the environment: the routes come from SSM, and a destination's
/// signing secret is another SSM SecureString named by `secret_ssm`. Both are read at start
/// (moto here); the destination gets the event signed with that secret (checked with an
/// independent HMAC), and the banner never shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_destination_secrets_come_from_ssm() {
    let moto = std::env::var("RELAY_TEST_MOTO_URL")
        .expect("RELAY_TEST_MOTO_URL is not set: run scripts/test.sh (it starts moto)");
    let destination = Destination::start().await;
    let unique = format!("{}-{}", std::process::id(), now_s());
    let (routes_name, secret_name) = (
        format!("/crm-relay/routes/test-{unique}"),
        format!("/crm-relay/routes/test-{unique}/erp-secret"),
    );
    let secret_key = b"erp-signing-key-of-32-bytes-long";
    let secret = {
        use base64::Engine;
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(secret_key)
        )
    };
    let routes = json!({"routes": [{
        "name": "erp",
        "match": {"family": ["deal"]},
        "destinations": [{"url": destination.url(), "secret_ssm": secret_name}],
    }]});
    integration_tests::moto::put_secure_string(&routes_name, &routes.to_string()).await;
    integration_tests::moto::put_secure_string(&secret_name, &secret).await;

    let dir = TempDir::new("routes-ssm-secret");
    let mut env = base_env();
    env.extend([
        ("RELAY_ROUTES", format!("ssm:{routes_name}")),
        ("AWS_ENDPOINT_URL", moto),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]);
    let relay = RelayProcess::start(dir.path(), &env);
    let banner = wait_for(Duration::from_secs(10), "the route in the banner", || {
        let banner = relay.lines().join("\n");
        banner.contains("erp").then_some(banner)
    })
    .await;
    assert!(!banner.contains(&secret), "{banner}");

    let (status, reply) = post(
        &relay.url("/deal"),
        FORM,
        crm::b24_event("ONCRMDEALUPDATE", "43", now_s(), B24_TOKEN),
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let id = reply["id"].as_str().expect("envelope id").to_string();
    wait_for(Duration::from_secs(60), "the event at the ERP", || {
        (!destination.delivered().is_empty()).then_some(())
    })
    .await;
    let got = &destination.delivered()[0];
    assert_eq!(got.header("webhook-id"), id);
    let expected = {
        use base64::Engine;
        use hmac::Mac;
        let mut mac = <hmac::Hmac<sha2::Sha256>>::new_from_slice(secret_key).unwrap();
        mac.update(format!("{id}.{}.", got.header("webhook-timestamp")).as_bytes());
        mac.update(&got.body);
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    };
    assert!(
        got.header("webhook-signature")
            .split(' ')
            .any(|sig| sig.strip_prefix("v1,") == Some(expected.as_str())),
        "signed with the SSM secret"
    );
}
