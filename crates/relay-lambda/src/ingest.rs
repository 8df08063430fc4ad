//! Lambda glue for the ingest functions: Function URL request -> `Ingress::handle` -> response.
//! Nothing here decides about an event; it only moves bytes and headers between lambda_http
//! and the transport-free `Ingress`, which it builds on the first event (`LazyIngress`).

use crate::resources::{app_ingress, check_required_env, FunctionResources};
use lambda_http::http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use lambda_http::http::{Method, StatusCode};
use lambda_http::{service_fn, Body, Request, Response};
use relay_aws::dynamo::DynamoStore;
use relay_aws::sqs::SqsQueue;
use relay_core::config::RelayConfig;
use relay_core::error::ConfigError;
use relay_core::event::Family;
use relay_core::ingest::{IngestRequest, Ingress};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::OnceCell;

/// The header SalesMan callers may use instead of `?token=`.
pub const RELAY_TOKEN_HEADER: &str = "x-relay-token";

/// One Function URL request. lambda_http has already decoded a base64 body
/// (`isBase64Encoded`) into `Body::Binary`; text, binary and empty bodies all reach `Ingress`
/// as the same bytes. Anything but POST is 405: CRMs only POST, and a GET would otherwise be
/// reported as a malformed event.
pub async fn handle_function_url_request(
    ingress: &Ingress,
    family: Family,
    request: Request,
) -> Response<Body> {
    if request.method() != Method::POST {
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "only POST is accepted"}),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let body: &[u8] = request.body().as_ref();
    let reply = ingress
        .handle(
            IngestRequest {
                family,
                content_type: header(CONTENT_TYPE.as_str()),
                query: request.uri().query(),
                relay_token_header: header(RELAY_TOKEN_HEADER),
                body,
            },
            SystemTime::now(),
        )
        .await;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &reply.body)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::Text(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// One family's `Ingress`, built by the first event that needs it rather than at cold start:
/// the SDK configuration, the SSM round trip for the secrets and the TLS set-up are work the
/// first event waits for either way, and left out of the init they do not hold up the
/// runtime's first `next`. A build that fails (SSM throttled or down) answers that event 503,
/// which the CRM retries, and the next event tries again.
pub struct LazyIngress {
    family: Family,
    ingress: OnceCell<Ingress>,
}

impl LazyIngress {
    /// Checks the environment now (a missing RELAY_QUEUE_URL, or RELAY_TABLE for the app
    /// family, fails the cold start with its name); builds nothing.
    pub fn from_env(family: Family) -> Result<Self, ConfigError> {
        check_required_env(family == Family::App)?;
        Ok(LazyIngress {
            family,
            ingress: OnceCell::new(),
        })
    }

    /// The `Ingress`, built on the first call (concurrent first calls wait for one build).
    pub async fn get(&self) -> Result<&Ingress, ConfigError> {
        self.ingress
            .get_or_try_init(|| build_ingress(self.family))
            .await
    }
}

/// The queue (and, with RELAY_TABLE, the token store for installed apps) behind one family's
/// `Ingress`.
async fn build_ingress(family: Family) -> Result<Ingress, ConfigError> {
    let FunctionResources {
        config,
        queue,
        store,
    } = FunctionResources::from_env().await?;
    Ok(match (family, store) {
        (Family::App, Some(store)) => app_ingress(config, queue, store)?,
        (Family::App, None) => return Err(ConfigError::Missing("RELAY_TABLE")),
        (_, store) => family_ingress(queue, config, store),
    })
}

/// How long a family ingest container trusts a portal's stored application_token after it
/// matched: a portal's events then read the table once a minute per container, not once
/// each. An uninstall or a reinstall's new token takes effect within this time; a token that
/// is not the remembered one is always checked against the table (so a wrong one is 401 and
/// a reinstall's new one is accepted at once; see `RecentStoredTokens`).
pub const STORED_TOKEN_CACHE: Duration = Duration::from_secs(60);

/// A family's (not the app's) `Ingress`: with the table, the portals' stored tokens are
/// accepted too, cached for [`STORED_TOKEN_CACHE`].
pub fn family_ingress(
    queue: Arc<SqsQueue>,
    config: RelayConfig,
    store: Option<Arc<DynamoStore>>,
) -> Ingress {
    let ingress = Ingress::new(queue, config);
    match store {
        Some(store) => ingress
            .with_token_store(store)
            .with_stored_token_cache(STORED_TOKEN_CACHE),
        None => ingress,
    }
}

/// One request on a lazily built `Ingress`: a failed build is logged (a `ConfigError` names
/// variables and SDK failure kinds, never a secret) and answered 503, never 202.
async fn handle_on_lazy_ingress(
    lazy: &LazyIngress,
    family: Family,
    request: Request,
) -> Response<Body> {
    match lazy.get().await {
        Ok(ingress) => handle_function_url_request(ingress, family, request).await,
        Err(error) => {
            tracing::error!(%error, "could not build the ingress; answering 503");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": "temporarily unavailable, retry later"}),
            )
        }
    }
}

/// Runs one family's ingest function: the cold start checks the environment and goes straight
/// to the runtime's first `next`; the first event builds the `Ingress` (`LazyIngress`).
pub async fn run(family: Family) -> Result<(), lambda_http::Error> {
    relay_core::logging::init_json_logs();
    let lazy = Arc::new(LazyIngress::from_env(family)?);
    lambda_http::run(service_fn(move |request: Request| {
        let lazy = Arc::clone(&lazy);
        async move {
            Ok::<_, std::convert::Infallible>(handle_on_lazy_ingress(&lazy, family, request).await)
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::config::{AppTokens, RelayConfig};
    use relay_core::ingest::recording_queue::RecordingQueue;
    use relay_core::secret::Secret;
    use std::path::{Path, PathBuf};

    /// The placeholders documented in events/README.md.
    fn local_dev_config() -> RelayConfig {
        RelayConfig {
            b24_app_tokens: AppTokens::parse("local-dev-app-token").unwrap(),
            salesman_secret: Some(Secret::new("local-dev-salesman-secret")),
            ..RelayConfig::default()
        }
    }

    fn events_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events")
    }

    fn response_json(response: &Response<Body>) -> serde_json::Value {
        serde_json::from_slice(response.body().as_ref()).unwrap()
    }

    #[tokio::test]
    async fn every_sample_event_is_accepted_by_its_family() {
        let mut families_seen = Vec::new();
        let mut checked = 0;
        let mut dirs: Vec<_> = std::fs::read_dir(events_dir())
            .expect("events/ exists at the repository root")
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            let Some(family) = name.strip_prefix("ingest-") else {
                continue;
            };
            let family: Family = family.parse().unwrap();
            families_seen.push(family);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort();
            assert!(!files.is_empty(), "{name} has no sample");
            for file in files {
                let text = std::fs::read_to_string(&file).unwrap();
                let request = lambda_http::request::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let queue = Arc::new(RecordingQueue::default());
                let ingress = Ingress::new(queue.clone(), local_dev_config());
                let response = handle_function_url_request(&ingress, family, request).await;
                let body = response_json(&response);
                assert_eq!(
                    response.status(),
                    StatusCode::ACCEPTED,
                    "{}: {body}",
                    file.display()
                );
                // One envelope, or one per entity for a SalesMan bulk event, each listed in
                // the reply's `ids`.
                let sent = queue.sent();
                let listed = body
                    .get("ids")
                    .map_or(1, |ids| ids.as_array().map_or(0, Vec::len));
                assert_eq!(sent.len(), listed, "{}", file.display());
                let first = sent
                    .iter()
                    .find(|e| body["id"] == serde_json::json!(e.id))
                    .unwrap_or_else(|| panic!("{}: reply id not queued", file.display()));
                assert_eq!(first.family, family);
                let wire = serde_json::to_string(&sent).unwrap();
                for placeholder in [
                    "local-dev-app-token",
                    "local-dev-salesman-secret",
                    "local-dev-access-token",
                    "local-dev-refresh-token",
                ] {
                    assert!(!wire.contains(placeholder), "{}: {wire}", file.display());
                }
                checked += 1;
            }
        }
        families_seen.sort();
        assert_eq!(families_seen, Family::ALL.to_vec(), "one folder per family");
        assert!(checked >= 20, "only {checked} samples");
    }

    /// The raw bodies are what a user posts with `curl --data-binary @file`: byte for byte,
    /// each must be accepted by the family its event name routes to (a trailing newline in a
    /// form file, for one, would end up in the token and get 401).
    #[tokio::test]
    async fn every_raw_body_is_accepted_as_curl_sends_it() {
        let mut checked = 0;
        for (folder, source) in [
            ("bitrix24", relay_core::event::Source::Bitrix24),
            ("salesman", relay_core::event::Source::Salesman),
        ] {
            let mut files: Vec<_> = std::fs::read_dir(events_dir().join("raw").join(folder))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            for file in files {
                let event = file.file_stem().unwrap().to_string_lossy().to_string();
                // App events need the install check (lifecycle tests cover them).
                if event.to_uppercase().starts_with("ONAPP") {
                    continue;
                }
                let family = relay_core::routing::family_of(source, &event)
                    .unwrap_or_else(|| panic!("{}: no family", file.display()));
                let content_type = match file.extension().and_then(|x| x.to_str()) {
                    Some("form") => "application/x-www-form-urlencoded",
                    _ => "application/json",
                };
                let body = std::fs::read(&file).unwrap();
                let queue = Arc::new(RecordingQueue::default());
                let ingress = Ingress::new(queue.clone(), local_dev_config());
                let request = IngestRequest {
                    family,
                    content_type: Some(content_type),
                    query: Some("token=local-dev-salesman-secret"),
                    relay_token_header: None,
                    body: &body,
                };
                let reply = ingress.handle(request, SystemTime::now()).await;
                assert_eq!(reply.status, 202, "{}: {}", file.display(), reply.body);
                let listed = reply
                    .body
                    .get("ids")
                    .map_or(1, |ids| ids.as_array().map_or(0, Vec::len));
                assert_eq!(queue.sent().len(), listed, "{}", file.display());
                checked += 1;
            }
        }
        assert!(checked >= 20, "only {checked} raw bodies");
    }

    fn function_url_event(method: &str, query: &str, body: Option<&str>, base64: bool) -> String {
        serde_json::json!({
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/",
            "rawQueryString": query,
            "headers": {"content-type": "application/json", "host": "abc.lambda-url.eu-central-1.on.aws"},
            "requestContext": {
                "accountId": "anonymous", "apiId": "abc",
                "domainName": "abc.lambda-url.eu-central-1.on.aws", "domainPrefix": "abc",
                "http": {"method": method, "path": "/", "protocol": "HTTP/1.1",
                         "sourceIp": "127.0.0.1", "userAgent": "test"},
                "requestId": "r1", "routeKey": "$default", "stage": "$default",
                "time": "18/Dec/2025:08:38:44 +0000", "timeEpoch": 1766047124000u64
            },
            "body": body,
            "isBase64Encoded": base64
        })
        .to_string()
    }

    async fn invoke(event: &str) -> (Response<Body>, Arc<RecordingQueue>) {
        let queue = Arc::new(RecordingQueue::default());
        let ingress = Ingress::new(queue.clone(), local_dev_config());
        let request = lambda_http::request::from_str(event).unwrap();
        let response = handle_function_url_request(&ingress, Family::Deal, request).await;
        (response, queue)
    }

    const SALESMAN_DEAL: &str = r#"{"event":"deal.add","identity":"1","did":"812","autor":"3"}"#;

    #[tokio::test]
    async fn base64_text_and_header_token_bodies_are_read() {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(SALESMAN_DEAL);
        let event = function_url_event(
            "POST",
            "token=local-dev-salesman-secret",
            Some(&encoded),
            true,
        );
        let request = lambda_http::request::from_str(&event).unwrap();
        assert!(matches!(request.body(), Body::Binary(_)));
        let (response, queue) = invoke(&event).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(
            response.headers().get(CONTENT_TYPE).unwrap(),
            "application/json"
        );
        assert_eq!(queue.sent()[0].entity_id.as_deref(), Some("812"));

        let text = function_url_event("POST", "", Some(SALESMAN_DEAL), false);
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
        value["headers"]["x-relay-token"] = serde_json::json!("local-dev-salesman-secret");
        let (response, queue) = invoke(&value.to_string()).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(queue.sent().len(), 1);
    }

    #[tokio::test]
    async fn a_repeated_relay_token_header_is_refused() {
        // A Function URL joins a repeated header's values with commas; relay serve does the
        // same, so one right and one wrong token never pass as the right one.
        let text = function_url_event("POST", "", Some(SALESMAN_DEAL), false);
        for joined in [
            "local-dev-salesman-secret,wrong",
            "wrong,local-dev-salesman-secret",
        ] {
            let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
            value["headers"]["x-relay-token"] = serde_json::json!(joined);
            let (response, queue) = invoke(&value.to_string()).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{joined}");
            assert!(queue.sent().is_empty());
        }
    }

    #[tokio::test]
    async fn an_ingress_that_cannot_be_built_answers_503_and_is_built_again_on_the_next_event() {
        // No test sets RELAY_QUEUE_URL, so the build fails (as SSM down would) after
        // `from_env`'s check has been passed by; the event must get a 5xx the CRM retries.
        assert!(std::env::var("RELAY_QUEUE_URL").is_err());
        let lazy = LazyIngress {
            family: Family::Deal,
            ingress: OnceCell::new(),
        };
        for _ in 0..2 {
            let event = function_url_event(
                "POST",
                "token=local-dev-salesman-secret",
                Some(SALESMAN_DEAL),
                false,
            );
            let request = lambda_http::request::from_str(&event).unwrap();
            let response = handle_on_lazy_ingress(&lazy, Family::Deal, request).await;
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(!response_json(&response).to_string().contains("RELAY_"));
            assert!(!lazy.ingress.initialized(), "a failed build is not kept");
        }
    }

    #[tokio::test]
    async fn empty_body_is_400_and_get_is_405() {
        let (response, queue) = invoke(&function_url_event("POST", "", None, false)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(queue.sent().is_empty());

        let (response, queue) = invoke(&function_url_event(
            "GET",
            "token=local-dev-salesman-secret",
            Some(SALESMAN_DEAL),
            false,
        ))
        .await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers().get(ALLOW).unwrap(), "POST");
        assert!(queue.sent().is_empty());
    }
}
