//! Configuration from the environment: the same names in Lambda and `relay serve`
//! (README, "Configuration"). Read once at start-up by a `main`; secrets are wrapped in
//! `Secret` the moment they are read, so no later `Debug` can print them.

use crate::enrich::bitrix24::RateLimit;
use crate::error::ConfigError;
use crate::event::Family;
use crate::secret::Secret;
use std::collections::BTreeMap;

/// Accepted Bitrix24 `application_token` values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppTokens {
    /// Bare tokens: accepted from any portal.
    pub any_portal: Vec<Secret>,
    /// `member_id:token` pairs: accepted only from that portal.
    pub per_portal: Vec<(String, Secret)>,
}

impl AppTokens {
    /// Parses `token` or `member_id:token`, comma-separated; blanks are ignored.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        let mut tokens = AppTokens::default();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.split_once(':') {
                Some((member, token)) => {
                    let (member, token) = (member.trim(), token.trim());
                    if member.is_empty() || token.is_empty() {
                        return Err(ConfigError::Invalid {
                            name: "RELAY_B24_APP_TOKENS",
                            reason: "an entry has an empty member_id or token".into(),
                        });
                    }
                    tokens
                        .per_portal
                        .push((member.to_string(), Secret::new(token)));
                }
                None => tokens.any_portal.push(Secret::new(item)),
            }
        }
        Ok(tokens)
    }

    pub fn is_empty(&self) -> bool {
        self.any_portal.is_empty() && self.per_portal.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
pub struct RelayConfig {
    pub b24_app_tokens: AppTokens,
    pub salesman_secret: Option<Secret>,
    /// Inbound webhook base URL, `https://x.bitrix24.ru/rest/1/xxxx/`: it holds a secret.
    pub b24_webhook_url: Option<Secret>,
    pub b24_client_id: Option<String>,
    pub b24_client_secret: Option<Secret>,
    /// OAuth server for refresh; default `https://oauth.bitrix.info`.
    pub b24_oauth_url: String,
    /// `RELAY_B24_CONSUMERS`: how many consumers may call one portal at once (the consumer's
    /// maximum concurrency). Each client then keeps to 1/(consumers + 2) of the portal's
    /// budget: the offline poller and the app function's inline drain take a share each.
    pub b24_consumers: u32,
    /// `RELAY_B24_RATE_LIMIT`, `<requests per second>/<bucket size>`: the portal's leaky
    /// bucket (b24restdocs `limits.md`: `2/50` on most plans, `5/250` on Enterprise). `None`:
    /// the standard `2/50`.
    pub b24_rate_limit: Option<RateLimit>,
    pub salesman_url: Option<String>,
    pub salesman_login: Option<String>,
    pub salesman_apikey: Option<Secret>,
    pub destination_url: Option<String>,
    pub destination_per_family: BTreeMap<Family, String>,
    /// `whsec_…`; several space-separated during rotation, each adds a signature.
    pub signing_secret: Option<Secret>,
    pub queue_url: Option<String>,
    pub dlq_url: Option<String>,
    pub table: Option<String>,
    /// RELAY_ALLOW_LOOPBACK_CRM=1, for tests only: a portal endpoint that app.info names may be
    /// `http` on a loopback address (a fake portal on 127.0.0.1). Allows nothing else.
    pub allow_loopback_crm: bool,
    /// RELAY_ALLOW_UNSIGNED=1: on AWS the consumer starts without a signing secret.
    pub allow_unsigned: bool,
    /// `RELAY_SNAPSHOT_TTL_DAYS`: days a snapshot stays after its entity last changed;
    /// unset means [`DEFAULT_SNAPSHOT_TTL_DAYS`], `0` keeps snapshots forever.
    pub snapshot_ttl_days: Option<u32>,
}

/// Days a snapshot stays after its last change when `RELAY_SNAPSHOT_TTL_DAYS` is unset: more
/// than a year, so an entity edited once a year still gets its `changes`.
pub const DEFAULT_SNAPSHOT_TTL_DAYS: u32 = 400;
/// [`DEFAULT_SNAPSHOT_TTL_DAYS`] as a duration, for the stores that start from it.
pub const DEFAULT_SNAPSHOT_TTL: std::time::Duration =
    std::time::Duration::from_secs(DEFAULT_SNAPSHOT_TTL_DAYS as u64 * 24 * 60 * 60);

fn non_empty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `1`/`true`/`yes` turns a switch on; anything else leaves it off.
fn switch(name: &str) -> bool {
    non_empty(name).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

impl RelayConfig {
    /// Reads every `RELAY_*` variable. Missing optional values stay `None`: a source with no
    /// secret configured then rejects everything from it (fail closed), it does not crash.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut destination_per_family = BTreeMap::new();
        for family in Family::ALL {
            let name = format!("RELAY_DESTINATION_URL_{}", family.as_str().to_uppercase());
            if let Some(url) = non_empty(&name) {
                destination_per_family.insert(family, url);
            }
        }
        Ok(RelayConfig {
            b24_app_tokens: AppTokens::parse(
                &non_empty("RELAY_B24_APP_TOKENS").unwrap_or_default(),
            )?,
            salesman_secret: non_empty("RELAY_SALESMAN_SECRET").map(Secret::new),
            b24_webhook_url: non_empty("RELAY_B24_WEBHOOK_URL").map(Secret::new),
            b24_client_id: non_empty("RELAY_B24_CLIENT_ID"),
            b24_client_secret: non_empty("RELAY_B24_CLIENT_SECRET").map(Secret::new),
            b24_oauth_url: non_empty("RELAY_B24_OAUTH_URL")
                .unwrap_or_else(|| "https://oauth.bitrix.info".to_string()),
            b24_consumers: match non_empty("RELAY_B24_CONSUMERS") {
                None => 0,
                Some(n) => n
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or(ConfigError::Invalid {
                        name: "RELAY_B24_CONSUMERS",
                        reason: "a whole number of at least 1".into(),
                    })?,
            },
            b24_rate_limit: non_empty("RELAY_B24_RATE_LIMIT")
                .map(|raw| {
                    RateLimit::parse(&raw).ok_or(ConfigError::Invalid {
                        name: "RELAY_B24_RATE_LIMIT",
                        reason: "<requests per second>/<bucket size>, both above 0, e.g. 2/50"
                            .into(),
                    })
                })
                .transpose()?,
            salesman_url: non_empty("RELAY_SALESMAN_URL"),
            salesman_login: non_empty("RELAY_SALESMAN_LOGIN"),
            salesman_apikey: non_empty("RELAY_SALESMAN_APIKEY").map(Secret::new),
            destination_url: non_empty("RELAY_DESTINATION_URL"),
            destination_per_family,
            signing_secret: non_empty("RELAY_SIGNING_SECRET").map(Secret::new),
            queue_url: non_empty("RELAY_QUEUE_URL"),
            dlq_url: non_empty("RELAY_DLQ_URL"),
            table: non_empty("RELAY_TABLE"),
            allow_loopback_crm: switch("RELAY_ALLOW_LOOPBACK_CRM"),
            allow_unsigned: switch("RELAY_ALLOW_UNSIGNED"),
            snapshot_ttl_days: match non_empty("RELAY_SNAPSHOT_TTL_DAYS") {
                None => None,
                Some(days) => Some(days.parse().map_err(|_| ConfigError::Invalid {
                    name: "RELAY_SNAPSHOT_TTL_DAYS",
                    reason: "a whole number of days (0 keeps snapshots forever)".into(),
                })?),
            },
        })
    }

    /// How long a snapshot stays after its last change; `None`: forever.
    pub fn snapshot_ttl(&self) -> Option<std::time::Duration> {
        match self.snapshot_ttl_days.unwrap_or(DEFAULT_SNAPSHOT_TTL_DAYS) {
            0 => None,
            days => Some(std::time::Duration::from_secs(
                u64::from(days) * 24 * 60 * 60,
            )),
        }
    }

    /// Refused at start rather than discovered per event: a signing secret that is not
    /// `whsec_` + base64 of at least 24 bytes, and, where events leave for real (`on_aws`), no
    /// secret at all unless RELAY_ALLOW_UNSIGNED=1 says unsigned forwards are meant.
    pub fn check_signing(&self, on_aws: bool) -> Result<(), ConfigError> {
        match &self.signing_secret {
            Some(secret) => crate::forward::Signer::from_secret(secret).map(|_| ()),
            None if on_aws && !self.allow_unsigned => Err(ConfigError::Invalid {
                name: "RELAY_SIGNING_SECRET",
                reason: "not set: forwards would go out unsigned; set it, or set \
                         RELAY_ALLOW_UNSIGNED=1 if that is really meant"
                    .into(),
            }),
            None => Ok(()),
        }
    }

    /// The family's own destination, else the general one.
    pub fn destination_for(&self, family: Family) -> Option<&str> {
        self.destination_per_family
            .get(&family)
            .map(String::as_str)
            .or(self.destination_url.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_tokens_accept_bare_and_pairs() {
        let t = AppTokens::parse(" abc , m1:def,,m2:ghi ").unwrap();
        assert_eq!(t.any_portal, vec![Secret::new("abc")]);
        assert_eq!(
            t.per_portal,
            vec![
                ("m1".to_string(), Secret::new("def")),
                ("m2".to_string(), Secret::new("ghi"))
            ]
        );
        assert!(AppTokens::parse("").unwrap().is_empty());
        assert!(AppTokens::parse("m1:").is_err());
        assert!(AppTokens::parse(":tok").is_err());
    }

    #[test]
    fn snapshots_expire_after_400_days_unless_configured() {
        let days = |d: Option<u32>| {
            RelayConfig {
                snapshot_ttl_days: d,
                ..RelayConfig::default()
            }
            .snapshot_ttl()
        };
        assert_eq!(
            days(None),
            Some(std::time::Duration::from_secs(400 * 86_400))
        );
        assert_eq!(
            days(Some(30)),
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        assert_eq!(days(Some(0)), None);
    }

    #[test]
    fn signing_secrets_are_checked_at_start() {
        let with = |secret: Option<&str>, allow_unsigned: bool| RelayConfig {
            signing_secret: secret.map(Secret::new),
            allow_unsigned,
            ..RelayConfig::default()
        };
        // 24 bytes: the Standard Webhooks example.
        assert!(with(Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), false)
            .check_signing(true)
            .is_ok());
        // "secret-for-test", 15 bytes.
        let short = with(Some("whsec_c2VjcmV0LWZvci10ZXN0"), false);
        assert!(short.check_signing(false).is_err());
        assert!(short.check_signing(true).is_err());
        assert!(with(None, false).check_signing(true).is_err());
        assert!(with(None, true).check_signing(true).is_ok());
        assert!(with(None, false).check_signing(false).is_ok());
    }
}
