//! Secrets from SSM Parameter Store over the wire (moto): what a Lambda does at cold start with
//! the `RELAY_<NAME>_PARAM` names the template gives it. Needs the moto server that
//! `scripts/test.sh` starts (with the `ssm` extra); fails, never skips, without it.

use aws_config::timeout::TimeoutConfig;
use aws_sdk_ssm::types::ParameterType;
use relay_aws::secrets::{apply_secret, fetch_secrets, parameter_refs};
use relay_core::config::RelayConfig;
use relay_core::secret::Secret;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn moto_endpoint() -> String {
    match std::env::var("RELAY_TEST_MOTO_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "RELAY_TEST_MOTO_URL is not set: this test needs a moto server with SSM. \
             Run scripts/test.sh (it installs moto[dynamodb,sqs,ssm] and starts it)"
        ),
    }
}

/// The functions' SDK configuration aimed at `endpoint`, with a longer operation timeout:
/// moto builds its SSM backend (every public `/aws/service/...` parameter) on the first SSM
/// call, which takes seconds on a loaded machine; production keeps the short timeouts.
async fn ssm_client(endpoint: &str) -> aws_sdk_ssm::Client {
    let sdk = relay_aws::sdk_config().await;
    // Set on the service config: `AWS_ENDPOINT_URL` in the environment outranks an endpoint
    // set on the shared `SdkConfig`, and the unreachable-store test must not reach moto.
    let config = aws_sdk_ssm::config::Builder::from(&sdk)
        .endpoint_url(endpoint)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(60))
                .operation_timeout(Duration::from_secs(120))
                .build(),
        )
        .build();
    aws_sdk_ssm::Client::from_conf(config)
}

/// A parameter path no other test run uses.
fn unique_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("/crm-relay-test/{}-{nanos}", std::process::id())
}

async fn put_secure(client: &aws_sdk_ssm::Client, name: &str, value: &str) {
    client
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(ParameterType::SecureString)
        .send()
        .await
        .unwrap_or_else(|e| panic!("moto put_parameter {name}: {e:?}"));
}

#[tokio::test]
async fn secure_strings_are_fetched_decrypted_and_merged_into_the_config() {
    let client = ssm_client(&moto_endpoint()).await;
    let prefix = unique_prefix();
    put_secure(
        &client,
        &format!("{prefix}/signing-secret"),
        "whsec_c2VjcmV0LWZvci10ZXN0",
    )
    .await;
    put_secure(
        &client,
        &format!("{prefix}/b24-app-tokens"),
        "m1:tok-one, tok-any",
    )
    .await;

    // Twelve references: more than one GetParameters call takes (ten names at most).
    let mut vars = vec![
        (
            "RELAY_SIGNING_SECRET_PARAM".to_string(),
            format!("{prefix}/signing-secret"),
        ),
        (
            "RELAY_B24_APP_TOKENS_PARAM".to_string(),
            format!("{prefix}/b24-app-tokens"),
        ),
        (
            "RELAY_SALESMAN_SECRET_PARAM".to_string(),
            format!("{prefix}/never-created"),
        ),
        (
            "RELAY_QUEUE_URL".to_string(),
            "https://not-a-reference".into(),
        ),
    ];
    for i in 0..9 {
        put_secure(&client, &format!("{prefix}/filler-{i}"), "filler").await;
        vars.push((
            format!("RELAY_FILLER_{i}_PARAM"),
            format!("{prefix}/filler-{i}"),
        ));
    }
    let refs = parameter_refs(vars);
    assert_eq!(refs.len(), 12);

    let fetched = fetch_secrets(&client, &refs)
        .await
        .expect("fetch from moto");
    let value_of = |setting: &str| {
        fetched
            .iter()
            .find(|(s, _)| s == setting)
            .map(|(_, v)| v.expose().to_string())
    };
    // Decrypted: moto, like SSM, answers `kms:alias/aws/ssm:<value>` without decryption.
    assert_eq!(
        value_of("RELAY_SIGNING_SECRET").as_deref(),
        Some("whsec_c2VjcmV0LWZvci10ZXN0")
    );
    assert_eq!(
        value_of("RELAY_B24_APP_TOKENS").as_deref(),
        Some("m1:tok-one, tok-any")
    );
    assert_eq!(value_of("RELAY_FILLER_8").as_deref(), Some("filler"));
    // A parameter that does not exist stays unset instead of failing the cold start.
    assert_eq!(value_of("RELAY_SALESMAN_SECRET"), None);
    assert_eq!(fetched.len(), 11);

    let mut config = RelayConfig::default();
    for (setting, value) in fetched.into_iter().filter(|(s, _)| !s.contains("FILLER")) {
        apply_secret(&mut config, &setting, value).expect("secret setting");
    }
    assert_eq!(
        config.signing_secret,
        Some(Secret::new("whsec_c2VjcmV0LWZvci10ZXN0"))
    );
    assert_eq!(
        config.b24_app_tokens.per_portal,
        vec![("m1".to_string(), Secret::new("tok-one"))]
    );
    assert_eq!(
        config.b24_app_tokens.any_portal,
        vec![Secret::new("tok-any")]
    );
    assert_eq!(config.salesman_secret, None);
}

#[tokio::test]
async fn an_unreachable_parameter_store_fails_the_cold_start_with_a_clear_error() {
    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    let client = ssm_client("http://127.0.0.1:9").await;
    let refs = parameter_refs(vec![(
        "RELAY_SIGNING_SECRET_PARAM".to_string(),
        "/crm-relay/signing-secret".to_string(),
    )]);
    let err = fetch_secrets(&client, &refs)
        .await
        .expect_err("no SSM to answer");
    let text = err.to_string();
    assert!(text.contains("ssm GetParameters"), "{text}");
    assert!(text.contains("RELAY_*_PARAM"), "{text}");
}

/// A Parameter Store that throttles: the first `throttled` GetParameters calls answer HTTP 400
/// `ThrottlingException` "Rate exceeded" (the common error of every AWS API, AWS Systems
/// Manager API Reference, "Common Errors"), then it answers the parameter. AWS JSON 1.1:
/// the error's type in `__type`, the answer's `Parameters` and `InvalidParameters`.
async fn throttling_ssm(
    throttled: usize,
) -> (
    integration_tests::loopback::LoopbackServer,
    Arc<AtomicUsize>,
) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let router = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let seen = seen.clone();
        async move {
            let call = seen.fetch_add(1, Ordering::SeqCst);
            if call < throttled {
                return (
                    StatusCode::BAD_REQUEST,
                    [("content-type", "application/x-amz-json-1.1")],
                    r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_string(),
                )
                    .into_response();
            }
            let asked: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let name = asked["Names"][0].as_str().unwrap_or_default().to_string();
            let answer = serde_json::json!({
                "Parameters": [{"Name": name, "Type": "SecureString",
                                "Value": "whsec_dGhyb3R0bGVk", "Version": 1}],
                "InvalidParameters": []
            });
            (
                StatusCode::OK,
                [("content-type", "application/x-amz-json-1.1")],
                answer.to_string(),
            )
                .into_response()
        }
    });
    (integration_tests::loopback::serve(router).await, calls)
}

#[tokio::test]
async fn a_throttled_parameter_store_is_retried_at_cold_start() {
    let (server, calls) = throttling_ssm(4).await;
    let client = ssm_client(&server.base_url).await;
    let refs = parameter_refs(vec![(
        "RELAY_SIGNING_SECRET_PARAM".to_string(),
        "/crm-relay/signing-secret".to_string(),
    )]);
    let fetched = fetch_secrets(&client, &refs)
        .await
        .expect("throttling passes within the retry budget");
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].1.expose(), "whsec_dGhyb3R0bGVk");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "four throttled calls, then the answer"
    );
}

#[tokio::test]
async fn a_parameter_store_throttling_past_the_budget_fails_the_cold_start() {
    let (server, calls) = throttling_ssm(usize::MAX).await;
    let client = ssm_client(&server.base_url).await;
    let refs = parameter_refs(vec![(
        "RELAY_SIGNING_SECRET_PARAM".to_string(),
        "/crm-relay/signing-secret".to_string(),
    )]);
    // Bounded by the retry budget; the guard only turns a hang into a failure.
    let err = tokio::time::timeout(
        relay_aws::secrets::SSM_RETRY_BUDGET * 6,
        fetch_secrets(&client, &refs),
    )
    .await
    .expect("the retries end within their budget")
    .expect_err("never answered");
    assert!(err.to_string().contains("ThrottlingException"), "{err}");
    assert!(
        calls.load(Ordering::SeqCst) > 2,
        "more than the SDK's own two tries"
    );
}
