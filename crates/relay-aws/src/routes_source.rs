//! Where the consumer's routes come from, read once at start by `relay serve`, `relay invoke`
//! and the consumer Lambda: `RELAY_ROUTES` names a routes file (on AWS a path inside the
//! package) or `ssm:<parameter>`; unset, the destination URLs' implicit routes apply.
//! A routes file that does not load refuses the start: events are never routed by a guess.

use relay_core::config::RelayConfig;
use relay_core::error::ConfigError;
use relay_core::forward::Signer;
use relay_core::routes::{Routes, SSM_REFERENCE};
use std::collections::HashMap;
use std::path::PathBuf;

pub const ROUTES_VARIABLE: &str = "RELAY_ROUTES";
/// `RELAY_ROUTES=ssm:/crm-relay/routes` reads the routes from that SSM parameter.
pub const SSM_PREFIX: &str = "ssm:";

#[derive(Clone, Debug, PartialEq)]
pub enum RoutesSource {
    /// `RELAY_ROUTES` unset or blank: `Routes::implicit`.
    Implicit,
    File(PathBuf),
    /// An SSM parameter name (or ARN).
    Ssm(String),
}

impl RoutesSource {
    pub fn parse(setting: Option<&str>) -> RoutesSource {
        match setting.map(str::trim).filter(|s| !s.is_empty()) {
            None => RoutesSource::Implicit,
            Some(value) => match value.strip_prefix(SSM_PREFIX) {
                Some(name) => RoutesSource::Ssm(name.trim().to_string()),
                None => RoutesSource::File(PathBuf::from(value)),
            },
        }
    }

    pub fn from_env() -> RoutesSource {
        RoutesSource::parse(std::env::var(ROUTES_VARIABLE).ok().as_deref())
    }
}

/// The routes `RELAY_ROUTES` names, checked: every error says where (file and line, or
/// parameter) and what.
pub async fn load_routes(config: &RelayConfig) -> Result<Routes, ConfigError> {
    let (text, origin) = match RoutesSource::from_env() {
        RoutesSource::Implicit => return Ok(Routes::implicit(config)),
        RoutesSource::File(path) => match std::fs::read_to_string(&path) {
            Ok(text) => (text, path.display().to_string()),
            Err(source) => {
                return Err(invalid(relay_core::routes::RoutesError::Read {
                    path: path.display().to_string(),
                    source,
                }))
            }
        },
        RoutesSource::Ssm(name) => (fetch_parameter(&name).await?, format!("{SSM_PREFIX}{name}")),
    };
    let ssm_secrets = match ssm_secret_names(&text, &origin) {
        names if names.is_empty() => HashMap::new(),
        names => fetch_ssm_secrets(&names).await?,
    };
    let routes = parse_with_ssm_secrets(&text, &origin, &ssm_secrets).map_err(invalid)?;
    check_secrets(&routes)?;
    Ok(routes)
}

/// Parses routes whose `secret_ssm` parameters were fetched into `ssm_secrets` (by name);
/// every other reference is an environment variable.
pub fn parse_with_ssm_secrets(
    text: &str,
    origin: &str,
    ssm_secrets: &HashMap<String, String>,
) -> Result<Routes, relay_core::routes::RoutesError> {
    Routes::parse_with_env(
        text,
        origin,
        &|name| match name.strip_prefix(SSM_REFERENCE) {
            Some(parameter) => ssm_secrets.get(parameter).cloned(),
            None => std::env::var(name).ok(),
        },
    )
}

/// The `secret_ssm` parameters a routes text names: a first parse whose answers are
/// placeholders records what it is asked for (its errors come again in the real parse).
pub fn ssm_secret_names(text: &str, origin: &str) -> Vec<String> {
    let asked = std::cell::RefCell::new(Vec::new());
    let _ = Routes::parse_with_env(text, origin, &|name| {
        if let Some(parameter) = name.strip_prefix(SSM_REFERENCE) {
            asked.borrow_mut().push(parameter.to_string());
        }
        Some(PLACEHOLDER_SECRET.to_string())
    });
    let mut names = asked.into_inner();
    names.sort_unstable();
    names.dedup();
    names
}

/// Signs like a real secret (32 bytes), so the first parse asks for every name it would.
const PLACEHOLDER_SECRET: &str = "whsec_cGxhY2Vob2xkZXItcGxhY2Vob2xkZXItcGxhY2Vob2w=";

/// Every `secret_ssm` parameter, decrypted, through the cold start's SSM client. A missing
/// one is left out, and the parse then names it with its line.
async fn fetch_ssm_secrets(names: &[String]) -> Result<HashMap<String, String>, ConfigError> {
    use crate::secrets::{fetch_secrets, ParameterRef};
    let sdk = crate::sdk_config().await;
    let client = aws_sdk_ssm::Client::new(&sdk);
    let refs: Vec<ParameterRef> = names
        .iter()
        .map(|name| ParameterRef {
            variable: name.clone(),
            parameter: name.clone(),
        })
        .collect();
    Ok(fetch_secrets(&client, &refs)
        .await?
        .into_iter()
        .map(|(name, value)| (name, value.expose().to_string()))
        .collect())
}

fn invalid(error: relay_core::routes::RoutesError) -> ConfigError {
    ConfigError::Invalid {
        name: ROUTES_VARIABLE,
        reason: error.to_string(),
    }
}

/// A destination secret that cannot sign is found at start, not on the first event.
pub fn check_secrets(routes: &Routes) -> Result<(), ConfigError> {
    for route in &routes.routes {
        for (position, destination) in route.destinations.iter().enumerate() {
            if let Some(secret) = &destination.secret {
                Signer::from_secret(secret).map_err(|e| ConfigError::Invalid {
                    name: ROUTES_VARIABLE,
                    reason: format!(
                        "route {:?}, destination {}: its signing secret is unusable: {e}",
                        route.name,
                        position + 1
                    ),
                })?;
            }
        }
    }
    Ok(())
}

/// One SSM parameter through the cold start's client (retried while SSM throttles).
async fn fetch_parameter(name: &str) -> Result<String, ConfigError> {
    use crate::secrets::{fetch_secrets, ParameterRef};
    let sdk = crate::sdk_config().await;
    let client = aws_sdk_ssm::Client::new(&sdk);
    let reference = ParameterRef {
        variable: ROUTES_VARIABLE.to_string(),
        parameter: name.to_string(),
    };
    let fetched = fetch_secrets(&client, &[reference]).await?;
    fetched
        .into_iter()
        .next()
        .map(|(_, value)| value.expose().to_string())
        .ok_or_else(|| ConfigError::Invalid {
            name: ROUTES_VARIABLE,
            reason: format!("SSM parameter {name} does not exist"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::routes::{EventPattern, Route, RouteDestination};
    use relay_core::secret::Secret;
    use serde_json::json;

    #[test]
    fn the_setting_names_a_file_an_ssm_parameter_or_nothing() {
        assert_eq!(RoutesSource::parse(None), RoutesSource::Implicit);
        assert_eq!(RoutesSource::parse(Some("  ")), RoutesSource::Implicit);
        assert_eq!(
            RoutesSource::parse(Some("routes.json")),
            RoutesSource::File("routes.json".into())
        );
        assert_eq!(
            RoutesSource::parse(Some("ssm:/crm-relay/routes")),
            RoutesSource::Ssm("/crm-relay/routes".into())
        );
    }

    #[test]
    fn an_unusable_destination_secret_is_refused_with_its_route() {
        let routes = Routes {
            routes: vec![Route {
                name: "won".into(),
                pattern: EventPattern::from_json(&json!({"family": ["deal"]})).unwrap(),
                destinations: vec![
                    RouteDestination::plain("https://a.example/hook"),
                    RouteDestination {
                        url: "https://b.example/hook".into(),
                        // "secret-for-test": 15 bytes, too short to sign with.
                        secret: Some(Secret::new("whsec_c2VjcmV0LWZvci10ZXN0")),
                        headers: Vec::new(),
                    },
                ],
                projection: None,
            }],
            implicit: false,
        };
        let error = check_secrets(&routes).unwrap_err().to_string();
        assert!(error.contains("RELAY_ROUTES"), "{error}");
        assert!(error.contains("\"won\", destination 2"), "{error}");
        assert!(!error.contains("c2VjcmV0"), "{error}");
    }
}
