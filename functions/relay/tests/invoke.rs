//! `relay invoke`: one Lambda handler run in-process on a sample event from `events/`, on the
//! embedded store, printing the handler's response, as `sam local invoke` would without Docker.

mod harness;

use harness::{events_dir, run_relay, TempDir};
use integration_tests::destination::Destination;
use serde_json::Value;
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_invoke_forwards_the_sample_batch_once_and_prints_the_batch_response() {
    let destination = Destination::start().await;
    let dir = TempDir::new("invoke-consumer");
    let env = [("RELAY_DESTINATION_URL", destination.url())];
    let sample = events_dir().join("consumer/sqs-fifo-deal-batch.json");
    let sample_ids: BTreeSet<String> =
        serde_json::from_str::<Value>(&std::fs::read_to_string(&sample).unwrap()).unwrap()
            ["Records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                serde_json::from_str::<Value>(r["body"].as_str().unwrap()).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();

    // The handler runs in a child process; block_in_place keeps a worker serving the destination.
    let args = ["invoke", "consumer", sample.to_str().unwrap()];
    let (ok, out, err) = tokio::task::block_in_place(|| run_relay(dir.path(), &env, &args));
    assert!(ok, "relay invoke consumer failed: {err}");
    let response: Value =
        serde_json::from_str(&out).expect("stdout is the handler's JSON response");
    assert_eq!(
        response["batchItemFailures"],
        serde_json::json!([]),
        "{response}"
    );
    assert_eq!(
        destination
            .delivered_webhook_ids()
            .into_iter()
            .collect::<BTreeSet<_>>(),
        sample_ids
    );

    // The same batch again (SQS redelivery): the embedded dedup store skips every event.
    let (ok, out, err) = tokio::task::block_in_place(|| run_relay(dir.path(), &env, &args));
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["batchItemFailures"],
        serde_json::json!([])
    );
    assert_eq!(
        destination.delivered_webhook_ids().len(),
        sample_ids.len(),
        "forwarded once"
    );
}

#[test]
fn invoke_names_the_functions_it_knows_when_given_another() {
    let dir = TempDir::new("invoke-unknown");
    let (ok, _, err) = run_relay(dir.path(), &[], &["invoke", "ingest-deals", "x.json"]);
    assert!(!ok);
    assert!(
        err.contains("ingest-<family>") && err.contains("consumer"),
        "{err}"
    );
}

#[test]
fn sign_prints_standard_webhooks_headers_that_verify() {
    let dir = TempDir::new("sign");
    let body_path = dir.path().join("body.json");
    std::fs::write(&body_path, br#"{"hello":"world"}"#).unwrap();
    let env = [(
        "RELAY_SIGNING_SECRET",
        harness::crm::SIGNING_SECRET.to_string(),
    )];
    let (ok, out, err) = run_relay(
        dir.path(),
        &env,
        &[
            "sign",
            body_path.to_str().unwrap(),
            "--id",
            "msg_1",
            "--timestamp",
            "1700000000",
        ],
    );
    assert!(ok, "{err}");
    let header = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} in {out}"))
            .to_string()
    };
    assert_eq!(header("webhook-id"), "msg_1");
    assert_eq!(header("webhook-timestamp"), "1700000000");
    assert!(harness::crm::signature_is_valid(
        "msg_1",
        "1700000000",
        br#"{"hello":"world"}"#,
        &header("webhook-signature")
    ));
    let (ok, _, err) = run_relay(dir.path(), &[], &["sign", body_path.to_str().unwrap()]);
    assert!(!ok && err.contains("RELAY_SIGNING_SECRET"), "{err}");
}

#[test]
fn ingest_invoke_queues_the_sample_on_the_embedded_store_and_prints_the_function_url_response() {
    let dir = TempDir::new("invoke-ingest");
    let env = [("RELAY_B24_APP_TOKENS", "local-dev-app-token".to_string())];
    let sample = events_dir().join("ingest-deal/bitrix24-form.json");
    let sample = sample.to_str().unwrap();
    let (ok, out, err) = run_relay(dir.path(), &env, &["invoke", "ingest-deal", sample]);
    assert!(ok, "{err}");
    let response: Value = serde_json::from_str(&out).expect("stdout is the response JSON");
    assert_eq!(response["statusCode"], 202, "{response}");
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["id"].as_str().map(str::len), Some(64), "{body}");
    assert!(
        dir.path().join("relay.db").exists(),
        "queued on the embedded store in the data dir"
    );

    // The deal sample at the lead function: refused, naming the family that takes it.
    let (ok, out, err) = run_relay(dir.path(), &env, &["invoke", "ingest-lead", sample]);
    assert!(ok, "the handler ran (its answer is the refusal): {err}");
    let response: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(response["statusCode"], 422, "{response}");
    assert!(
        response["body"].as_str().unwrap().contains("deal"),
        "{response}"
    );
}
