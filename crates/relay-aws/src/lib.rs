//! The AWS side of the ports: SQS (the ingress queue and its DLQ) and DynamoDB (dedup,
//! snapshots, portal tokens, attempts, disabled destinations). Mains build one `SdkConfig`
//! with [`sdk_config`] and hand clients to [`sqs::SqsQueue`] and [`dynamo::DynamoStore`].

pub mod dynamo;
pub mod routes_source;
pub mod secrets;
pub mod sqs;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
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
///
/// To aim one client somewhere else, set `endpoint_url` on that service's config builder
/// (`aws_sdk_sqs::config::Builder::from(&config)`): an `AWS_ENDPOINT_URL` in the environment
/// outranks an endpoint set on the `SdkConfig` itself.
pub async fn sdk_config() -> SdkConfig {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
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
