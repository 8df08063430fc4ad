//! The AWS side of the ports: SQS (the ingress queue and its DLQ) and DynamoDB (dedup,
//! snapshots, portal tokens, attempts, disabled destinations). Mains build one `SdkConfig`
//! with [`sdk_config`] and hand clients to [`sqs::SqsQueue`] and [`dynamo::DynamoStore`].

pub mod dynamo;
pub mod packed_snapshot;
pub mod routes_source;
pub mod secrets;
pub mod sqs;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider, TlsContext, TrustStore};
use base64::Engine;
use relay_core::error::StoreError;
use std::time::Duration;

/// A TCP connect to SQS or DynamoDB that takes longer than this is an outage, not slowness.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// One try of one call.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// All tries of one call together: ingress must answer 5xx while the CRM still waits,
/// and a consumer must not burn its Lambda time on a dead store.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(6);
/// First try plus one retry: the SDK's standard mode (with its retry-token bucket).
pub const MAX_ATTEMPTS: u32 = 2;

/// The SDK configuration every function uses, from the environment (`AWS_REGION`,
/// `AWS_ENDPOINT_URL`, credentials, …, as aws-config reads them) with one rustls+ring HTTPS
/// client and short timeouts, so an outage becomes an error fast instead of a hung Lambda.
/// The client verifies servers against Mozilla's roots compiled in ([`compiled_in_roots`]).
///
/// To aim one client somewhere else, set `endpoint_url` on that service's config builder
/// (`aws_sdk_sqs::config::Builder::from(&config)`): an `AWS_ENDPOINT_URL` in the environment
/// outranks an endpoint set on the `SdkConfig` itself.
pub async fn sdk_config() -> SdkConfig {
    // `build` only moves its fields today; were it ever to fail, the SDK's default context
    // still verifies every server, against the system's roots.
    let tls_context = TlsContext::builder()
        .with_trust_store(compiled_in_roots())
        .build()
        .unwrap_or_default();
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .tls_context(tls_context)
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(Duration::from_millis(100))
                .with_max_backoff(Duration::from_secs(1)),
        )
        .load()
        .await
}

/// Mozilla's root certificates (webpki-root-certs, the set reqwest's webpki-roots carries for
/// the outbound client too), in the PEM form the SDK's trust store takes. The SDK's default,
/// the system's roots, cost an ingest cold start 8 ms on the measuring Debian host (README,
/// "Cold start"): rustls-native-certs reads the bundle file and then every file of
/// /etc/ssl/certs, the same certificates again under their hash names, and parses them all.
/// With these the SDK builds its connector in about 1 ms, and verifies the server certificate
/// exactly as before, only against a set that changes with this crate instead of the host.
pub fn compiled_in_roots() -> TrustStore {
    TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(roots_pem())
}

fn roots_pem() -> Vec<u8> {
    const LINE: usize = 64;
    let mut pem = Vec::with_capacity(webpki_root_certs::TLS_SERVER_ROOT_CERTS.len() * 2048);
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in encoded.as_bytes().chunks(LINE) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem
}

/// Turns an SDK error into a `StoreError` naming the operation and the kind of failure.
pub(crate) fn store_error<E, R>(operation: &'static str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    StoreError::Unavailable(format!("{operation}: {}", describe_sdk_error(&err)))
}

/// The kind of failure of an SDK call, safe to log and to put in an error: service errors
/// keep only their code (a DynamoDB message may quote item values, and items hold portal
/// tokens), an unreadable response is not quoted (it may hold SSM parameter values).
pub(crate) fn describe_sdk_error<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(service) => format!(
            "service error {}",
            service.err().code().unwrap_or("without a code")
        ),
        SdkError::TimeoutError(_) => "timed out".to_string(),
        // Connection refused, DNS, TLS: the cause chain names the endpoint, never a credential.
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) => {
            DisplayErrorContext(err).to_string()
        }
        SdkError::ResponseError(_) => "unreadable response".to_string(),
        _ => "unexpected SDK error".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ssm::config::{Credentials, Region};
    use std::net::TcpListener;

    /// The SDK parses every root of the trust store when it builds its first connector and
    /// panics on one it cannot parse: a call that gets as far as connecting proves the
    /// compiled-in roots are all accepted.
    #[tokio::test]
    async fn a_call_over_https_gets_past_loading_the_compiled_in_roots() {
        // A port that was free a moment ago: the connect is refused, after the TLS set-up.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let sdk = sdk_config().await;
        let conf = aws_sdk_ssm::config::Builder::from(&sdk)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::for_tests())
            .endpoint_url(format!("https://127.0.0.1:{port}"))
            .build();
        let error = aws_sdk_ssm::Client::from_conf(conf)
            .get_parameters()
            .names("/crm-relay/test")
            .send()
            .await
            .unwrap_err();
        assert!(
            matches!(error, SdkError::DispatchFailure(_)),
            "{}",
            DisplayErrorContext(&error)
        );
    }

    /// The PEM the trust store gets decodes back to exactly the compiled-in certificates.
    #[test]
    fn the_roots_pem_holds_every_compiled_in_certificate() {
        let store = format!("{:?}", compiled_in_roots());
        assert!(store.contains("enable_native_roots: false"), "{store}");
        let pem = roots_pem();
        let text = String::from_utf8(pem).unwrap();
        let decoded: Vec<Vec<u8>> = text
            .split("-----END CERTIFICATE-----\n")
            .filter(|block| !block.is_empty())
            .map(|block| {
                let body = block.strip_prefix("-----BEGIN CERTIFICATE-----\n").unwrap();
                assert!(body.lines().all(|line| line.len() <= 64));
                base64::engine::general_purpose::STANDARD
                    .decode(body.replace('\n', ""))
                    .unwrap()
            })
            .collect();
        let expected: Vec<Vec<u8>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .map(|cert| cert.as_ref().to_vec())
            .collect();
        assert!(expected.len() > 100, "{} roots", expected.len());
        assert_eq!(decoded, expected);
    }
}
