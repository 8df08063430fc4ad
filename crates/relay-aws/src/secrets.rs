//! Secrets on Lambda: the template gives each function SSM Parameter Store *names*
//! (`RELAY_<NAME>_PARAM=/crm-relay/...`), never values. Once per process (at cold start, or
//! on the first event for an ingest function) each is fetched, decrypted, and merged into the
//! `RelayConfig` that `from_env` built, as if `RELAY_<NAME>` held it.
//!
//! The values are merged into the config rather than written back with `std::env::set_var`:
//! by the time a `main` runs, the tokio runtime's threads exist, and setting the environment
//! while another thread may read it is unsound on Linux (Rust 2024 marks it `unsafe`).

use super::describe_sdk_error;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::operation::get_parameters::GetParametersOutput;
use relay_core::config::{AppTokens, RelayConfig};
use relay_core::error::ConfigError;
use relay_core::secret::Secret;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// `RELAY_SIGNING_SECRET_PARAM` names the SSM parameter that holds `RELAY_SIGNING_SECRET`.
pub const PARAM_SUFFIX: &str = "_PARAM";
const RELAY_PREFIX: &str = "RELAY_";
/// GetParameters takes at most ten names per call.
const GET_PARAMETERS_MAX_NAMES: usize = 10;
/// How long a cold start keeps retrying a throttled or unreachable SSM before it fails: a burst
/// that cold-starts many functions at once hits GetParameters' per-account rate limit, and a
/// failed init costs the whole invocation.
pub const SSM_RETRY_BUDGET: Duration = Duration::from_secs(5);
/// The first back-off; each next one doubles, at most `SSM_MAX_BACKOFF`, with full jitter.
const SSM_FIRST_BACKOFF: Duration = Duration::from_millis(100);
const SSM_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The `name` in a `ConfigError` about the SSM references as a whole.
const PARAM_VARIABLES: &str = "RELAY_*_PARAM";

/// The settings that may come from SSM: exactly the secret ones of `RelayConfig`.
pub const SECRET_VARIABLES: [&str; 6] = [
    "RELAY_B24_APP_TOKENS",
    "RELAY_SALESMAN_SECRET",
    "RELAY_B24_WEBHOOK_URL",
    "RELAY_B24_CLIENT_SECRET",
    "RELAY_SALESMAN_APIKEY",
    "RELAY_SIGNING_SECRET",
];

/// One `RELAY_<NAME>_PARAM` found in the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterRef {
    /// The setting it fills: `RELAY_<NAME>`.
    pub variable: String,
    /// The SSM parameter name (or ARN), e.g. `/crm-relay/signing-secret`.
    pub parameter: String,
}

/// The setting a `RELAY_<NAME>_PARAM` variable fills: `RELAY_<NAME>`; `None` for any other
/// variable (so `AWS_*` and `RELAY_QUEUE_URL` are never taken for references).
pub fn setting_for_param_variable(variable: &str) -> Option<&str> {
    let setting = variable.strip_suffix(PARAM_SUFFIX)?;
    (setting.starts_with(RELAY_PREFIX) && setting.len() > RELAY_PREFIX.len()).then_some(setting)
}

/// Every SSM reference among `vars` (the process environment in a `main`), sorted by setting.
/// Blank references are ignored, as `from_env` ignores blank settings.
pub fn parameter_refs(vars: impl IntoIterator<Item = (String, String)>) -> Vec<ParameterRef> {
    let mut refs: Vec<ParameterRef> = vars
        .into_iter()
        .filter_map(|(variable, parameter)| {
            let setting = setting_for_param_variable(&variable)?;
            let parameter = parameter.trim();
            (!parameter.is_empty()).then(|| ParameterRef {
                variable: setting.to_string(),
                parameter: parameter.to_string(),
            })
        })
        .collect();
    refs.sort_by(|a, b| a.variable.cmp(&b.variable));
    refs
}

/// Puts one fetched secret where `from_env` would have put `RELAY_<NAME>`. A blank value leaves
/// the setting unset (fail closed, as a blank variable does). A reference to a setting that is
/// not a secret is refused: plain settings belong in plain environment variables.
pub fn apply_secret(
    config: &mut RelayConfig,
    setting: &str,
    value: Secret,
) -> Result<(), ConfigError> {
    let trimmed = value.expose().trim();
    let value = (!trimmed.is_empty()).then(|| Secret::new(trimmed));
    match setting {
        "RELAY_B24_APP_TOKENS" => {
            config.b24_app_tokens = match value {
                Some(tokens) => AppTokens::parse(tokens.expose())?,
                None => AppTokens::default(),
            }
        }
        "RELAY_SALESMAN_SECRET" => config.salesman_secret = value,
        "RELAY_B24_WEBHOOK_URL" => config.b24_webhook_url = value,
        "RELAY_B24_CLIENT_SECRET" => config.b24_client_secret = value,
        "RELAY_SALESMAN_APIKEY" => config.salesman_apikey = value,
        "RELAY_SIGNING_SECRET" => config.signing_secret = value,
        other => {
            return Err(ConfigError::Invalid {
                name: PARAM_VARIABLES,
                reason: format!(
                    "{other}{PARAM_SUFFIX} names no secret setting; SSM can fill only {}",
                    SECRET_VARIABLES.join(", ")
                ),
            })
        }
    }
    Ok(())
}

/// Fetches every referenced parameter with decryption, ten names per GetParameters call.
/// A parameter that does not exist is logged (by name, never a value) and left out, so a
/// deployment that uses only one CRM need not create the other's secrets; any other failure
/// (access denied, throttled, unreachable) is an error, so the cold start fails and is retried.
pub async fn fetch_secrets(
    client: &aws_sdk_ssm::Client,
    refs: &[ParameterRef],
) -> Result<Vec<(String, Secret)>, ConfigError> {
    let mut names: Vec<&str> = refs.iter().map(|r| r.parameter.as_str()).collect();
    names.sort_unstable();
    names.dedup();

    let mut fetched = Vec::with_capacity(refs.len());
    let started = Instant::now();
    for chunk in names.chunks(GET_PARAMETERS_MAX_NAMES) {
        let answer = get_parameters_retrying(client, chunk, started).await?;
        for parameter in answer.parameters() {
            let (Some(name), Some(value)) = (parameter.name(), parameter.value()) else {
                continue;
            };
            for reference in refs.iter().filter(|r| refers_to(&r.parameter, name)) {
                fetched.push((reference.variable.clone(), Secret::new(value)));
            }
        }
        for missing in answer.invalid_parameters() {
            for reference in refs.iter().filter(|r| r.parameter == *missing) {
                tracing::warn!(
                    parameter = %missing,
                    setting = %reference.variable,
                    "SSM parameter does not exist; the setting stays unset"
                );
            }
        }
    }
    Ok(fetched)
}

/// One GetParameters call, retried with jittered exponential back-off while the failure is
/// transient (throttled, 5xx, timeout, unreachable) and `SSM_RETRY_BUDGET` since `started`
/// is not spent. Access denied, a bad key and the like fail at once: no retry fixes them.
async fn get_parameters_retrying(
    client: &aws_sdk_ssm::Client,
    names: &[&str],
    started: Instant,
) -> Result<GetParametersOutput, ConfigError> {
    let mut backoff = SSM_FIRST_BACKOFF;
    loop {
        let result = client
            .get_parameters()
            .set_names(Some(names.iter().map(|n| n.to_string()).collect()))
            .with_decryption(true)
            .send()
            .await;
        let err = match result {
            Ok(answer) => return Ok(answer),
            Err(err) => err,
        };
        let wait = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64));
        if !is_transient(&err) || started.elapsed() + wait > SSM_RETRY_BUDGET {
            return Err(ssm_error(err));
        }
        tracing::warn!(error = %describe_sdk_error(&err), wait_ms = wait.as_millis() as u64,
            "ssm GetParameters failed; retrying");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(SSM_MAX_BACKOFF);
    }
}

/// Failures a later try may not meet: SSM's throttling codes, server errors, timeouts and
/// connection failures.
fn is_transient<E, R>(err: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => matches!(
            service.err().code(),
            Some(
                "ThrottlingException"
                    | "Throttling"
                    | "TooManyRequestsException"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
                    | "ServiceUnavailable"
            )
        ),
        _ => false,
    }
}

/// Whether a reference (a name or an ARN) is the parameter SSM answered with `name`: SSM
/// answers with the name as stored, also when it was asked by ARN.
fn refers_to(reference: &str, name: &str) -> bool {
    reference == name
        || reference
            .split_once(":parameter")
            .is_some_and(|(_, path)| path == name || path.strip_prefix('/') == Some(name))
}

fn ssm_error<E, R>(err: SdkError<E, R>) -> ConfigError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    ConfigError::Invalid {
        name: PARAM_VARIABLES,
        reason: format!("ssm GetParameters: {}", describe_sdk_error(&err)),
    }
}

/// Secrets fetched by this process: once per cold start, whatever asks again.
static FETCHED: OnceCell<Vec<(String, Secret)>> = OnceCell::const_new();

/// The configuration a Lambda `main` runs with: `RelayConfig::from_env`, then every
/// `RELAY_<NAME>_PARAM` fetched from SSM (once per process, cached) over `RELAY_<NAME>`.
/// Without any reference (`relay serve`, tests) no SSM client is even built.
pub async fn load_config(sdk: &aws_config::SdkConfig) -> Result<RelayConfig, ConfigError> {
    let mut config = RelayConfig::from_env()?;
    let refs = parameter_refs(std::env::vars());
    if refs.is_empty() {
        return Ok(config);
    }
    let fetched = FETCHED
        .get_or_try_init(|| async {
            let client = aws_sdk_ssm::Client::new(sdk);
            fetch_secrets(&client, &refs).await
        })
        .await?;
    for (setting, value) in fetched {
        apply_secret(&mut config, setting, value.clone())?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn param_variable_names_its_setting() {
        assert_eq!(
            setting_for_param_variable("RELAY_SIGNING_SECRET_PARAM"),
            Some("RELAY_SIGNING_SECRET")
        );
        assert_eq!(
            setting_for_param_variable("RELAY_B24_APP_TOKENS_PARAM"),
            Some("RELAY_B24_APP_TOKENS")
        );
        assert_eq!(setting_for_param_variable("RELAY_SIGNING_SECRET"), None);
        assert_eq!(setting_for_param_variable("AWS_SECRET_PARAM"), None);
        assert_eq!(setting_for_param_variable("RELAY__PARAM"), None);
        assert_eq!(setting_for_param_variable("RELAY_PARAM"), None);
        assert_eq!(
            setting_for_param_variable("relay_signing_secret_param"),
            None
        );
    }

    #[test]
    fn only_non_blank_relay_references_are_collected_in_order() {
        let refs = parameter_refs(vars(&[
            ("RELAY_SIGNING_SECRET_PARAM", " /crm-relay/signing-secret "),
            ("RELAY_QUEUE_URL", "https://sqs.example/q.fifo"),
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
            ("RELAY_B24_APP_TOKENS_PARAM", "/crm-relay/b24-app-tokens"),
            ("RELAY_SALESMAN_SECRET_PARAM", "  "),
        ]));
        assert_eq!(
            refs,
            vec![
                ParameterRef {
                    variable: "RELAY_B24_APP_TOKENS".into(),
                    parameter: "/crm-relay/b24-app-tokens".into()
                },
                ParameterRef {
                    variable: "RELAY_SIGNING_SECRET".into(),
                    parameter: "/crm-relay/signing-secret".into()
                },
            ]
        );
    }

    #[test]
    fn an_arn_reference_matches_the_name_ssm_answers_with() {
        let arn = "arn:aws:ssm:us-east-1:123456789012:parameter";
        assert!(refers_to("/crm-relay/x", "/crm-relay/x"));
        assert!(refers_to(&format!("{arn}/crm-relay/x"), "/crm-relay/x"));
        assert!(refers_to(&format!("{arn}/plain"), "plain"));
        assert!(!refers_to(&format!("{arn}/crm-relay/y"), "/crm-relay/x"));
        assert!(!refers_to("/crm-relay/xy", "/crm-relay/x"));
    }

    #[test]
    fn every_secret_setting_lands_in_its_field() {
        let mut config = RelayConfig::default();
        for setting in SECRET_VARIABLES {
            apply_secret(&mut config, setting, Secret::new(format!(" m1:{setting} "))).unwrap();
        }
        let expected = |setting: &str| Some(Secret::new(format!("m1:{setting}")));
        assert_eq!(
            config.b24_app_tokens.per_portal,
            vec![("m1".to_string(), Secret::new("RELAY_B24_APP_TOKENS"))]
        );
        assert_eq!(config.salesman_secret, expected("RELAY_SALESMAN_SECRET"));
        assert_eq!(config.b24_webhook_url, expected("RELAY_B24_WEBHOOK_URL"));
        assert_eq!(
            config.b24_client_secret,
            expected("RELAY_B24_CLIENT_SECRET")
        );
        assert_eq!(config.salesman_apikey, expected("RELAY_SALESMAN_APIKEY"));
        assert_eq!(config.signing_secret, expected("RELAY_SIGNING_SECRET"));
    }

    #[test]
    fn a_blank_secret_leaves_the_setting_unset() {
        let mut config = RelayConfig {
            signing_secret: Some(Secret::new("whsec_old")),
            ..RelayConfig::default()
        };
        apply_secret(&mut config, "RELAY_SIGNING_SECRET", Secret::new("  ")).unwrap();
        assert_eq!(config.signing_secret, None);
    }

    #[test]
    fn plain_settings_and_bad_tokens_are_refused_without_echoing_values() {
        let mut config = RelayConfig::default();
        let err = apply_secret(&mut config, "RELAY_QUEUE_URL", Secret::new("hunter2")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("RELAY_QUEUE_URL_PARAM"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(config.queue_url.is_none());

        let err =
            apply_secret(&mut config, "RELAY_B24_APP_TOKENS", Secret::new("m1:")).unwrap_err();
        assert!(err.to_string().contains("RELAY_B24_APP_TOKENS"), "{err}");
    }
}
