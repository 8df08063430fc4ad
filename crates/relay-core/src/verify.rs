//! Proof of origin, checked by ingress after parsing and before anything is queued: Bitrix24's
//! `auth[application_token]` and SalesMan's URL secret. Fail closed: missing, empty or wrong is
//! `Unauthorized` without saying which, and a source with no configured secret is refused.

use crate::config::AppTokens;
use crate::error::{IngestError, StoreError};
use crate::ports::TokenStore;
use crate::secret::Secret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Equal in constant time: hashing both sides first hides the length of the expected value
/// and gives `subtle` two equal-length inputs.
pub fn constant_time_eq(presented: &str, expected: &str) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    presented.ct_eq(&expected).into()
}

/// Bitrix24: `presented` (`auth[application_token]`) must equal a bare configured token, or
/// the token configured for this `member_id`. Every candidate is compared, so the time taken
/// does not tell which (if any) matched.
pub fn verify_configured_application_token(
    tokens: &AppTokens,
    portal: &str,
    presented: Option<&Secret>,
) -> Result<(), IngestError> {
    let presented = presented
        .map(Secret::expose)
        .filter(|p| !p.is_empty())
        .ok_or(IngestError::Unauthorized)?;
    let candidates = tokens.any_portal.iter().chain(
        tokens
            .per_portal
            .iter()
            .filter(|(member, _)| member == portal)
            .map(|(_, token)| token),
    );
    let mut matched = false;
    for candidate in candidates {
        // An empty configured token must never match (AppTokens::parse drops them already).
        matched |= !candidate.is_empty() & constant_time_eq(presented, candidate.expose());
    }
    if matched {
        Ok(())
    } else {
        Err(IngestError::Unauthorized)
    }
}

/// Bitrix24, second chance: the application_token stored for this portal when its app was
/// installed (ONAPPINSTALL, confirmed with `app.info` before it was stored). `Ok(false)` when
/// the portal has none or it differs; a store failure is not a refusal, the caller answers 5xx.
pub async fn verify_stored_application_token(
    store: &dyn TokenStore,
    portal: &str,
    presented: Option<&Secret>,
) -> Result<bool, StoreError> {
    let Some(presented) = presented.map(Secret::expose).filter(|p| !p.is_empty()) else {
        return Ok(false);
    };
    let Some(stored) = store.get(portal).await? else {
        return Ok(false);
    };
    let expected = stored.application_token.expose();
    Ok(!expected.is_empty() && constant_time_eq(presented, expected))
}

/// Stored application tokens this process lately found matching, per portal, so that a
/// portal's steady stream of events costs one table read per `ttl` instead of one each.
///
/// Only a match is remembered, never an absence or a mismatch, so the cache can only let
/// through, for at most `ttl` after it was read, a token that was then the portal's stored
/// one: an uninstall (tokens deleted) or a reinstall (a new application_token) takes effect
/// within `ttl`. Any token that is not the remembered one is checked against the store
/// again: a new token after a reinstall is accepted at once, and a wrong token still reads
/// the store and is refused. Entries are as many as portals that sent a genuine event.
pub struct RecentStoredTokens {
    ttl: std::time::Duration,
    entries: std::sync::Mutex<std::collections::HashMap<String, (std::time::SystemTime, Secret)>>,
}

impl RecentStoredTokens {
    /// `ttl` zero: remembers nothing (every event reads the store).
    pub fn new(ttl: std::time::Duration) -> Self {
        RecentStoredTokens {
            ttl,
            entries: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Whether `presented` is the token remembered for `portal` and read less than `ttl`
    /// before `now` (a clock that went back counts as stale).
    pub fn matches(
        &self,
        portal: &str,
        presented: Option<&Secret>,
        now: std::time::SystemTime,
    ) -> bool {
        let Some(presented) = presented.map(Secret::expose).filter(|p| !p.is_empty()) else {
            return false;
        };
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.get(portal).is_some_and(|(read_at, token)| {
            now.duration_since(*read_at).is_ok_and(|age| age < self.ttl)
                && constant_time_eq(presented, token.expose())
        })
    }

    /// Remembers `token` as `portal`'s stored one, read at `now`.
    pub fn remember(&self, portal: &str, token: &Secret, now: std::time::SystemTime) {
        if self.ttl.is_zero() {
            return;
        }
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(portal.to_string(), (now, token.clone()));
    }
}

/// SalesMan: the relay's shared secret, from the URL's `token=` or the `X-Relay-Token` header
/// (SalesMan itself signs nothing). Every credential presented must match, so a right header
/// cannot excuse a wrong query token.
pub fn verify_salesman_secret(
    configured: Option<&Secret>,
    query: Option<&str>,
    header: Option<&str>,
) -> Result<(), IngestError> {
    let expected = configured
        .map(Secret::expose)
        .filter(|s| !s.is_empty())
        .ok_or(IngestError::Unauthorized)?;
    let presented = salesman_presented_secrets(query, header);
    if presented.is_empty() {
        return Err(IngestError::Unauthorized);
    }
    let mut all_match = true;
    for token in &presented {
        all_match &= !token.is_empty() & constant_time_eq(token, expected);
    }
    if all_match {
        Ok(())
    } else {
        Err(IngestError::Unauthorized)
    }
}

/// The credential values a request carried in its URL or headers, so ingest can also strip
/// them by value from the queued data.
pub fn salesman_presented_secrets(query: Option<&str>, header: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.extend(header.map(str::to_string));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(raw: &str) -> AppTokens {
        AppTokens::parse(raw).unwrap()
    }

    fn s(v: &str) -> Secret {
        Secret::new(v)
    }

    #[test]
    fn bare_tokens_accept_any_portal() {
        let t = tokens("tok-a");
        assert!(verify_configured_application_token(&t, "m1", Some(&s("tok-a"))).is_ok());
        assert!(verify_configured_application_token(&t, "m2", Some(&s("tok-a"))).is_ok());
        assert!(verify_configured_application_token(&t, "m1", Some(&s("tok-b"))).is_err());
    }

    #[test]
    fn pair_tokens_accept_only_their_portal() {
        let t = tokens("m1:tok-a,m2:tok-b");
        assert!(verify_configured_application_token(&t, "m1", Some(&s("tok-a"))).is_ok());
        assert!(verify_configured_application_token(&t, "m2", Some(&s("tok-b"))).is_ok());
        assert!(verify_configured_application_token(&t, "m2", Some(&s("tok-a"))).is_err());
        assert!(verify_configured_application_token(&t, "m3", Some(&s("tok-a"))).is_err());
    }

    #[test]
    fn missing_empty_or_unconfigured_is_unauthorized() {
        let t = tokens("tok-a");
        for presented in [None, Some(s(""))] {
            assert!(matches!(
                verify_configured_application_token(&t, "m1", presented.as_ref()),
                Err(IngestError::Unauthorized)
            ));
        }
        assert!(
            verify_configured_application_token(&AppTokens::default(), "m1", Some(&s("x")))
                .is_err()
        );
        // A prefix or a longer token is not the token.
        assert!(verify_configured_application_token(&t, "m1", Some(&s("tok-"))).is_err());
        assert!(verify_configured_application_token(&t, "m1", Some(&s("tok-aa"))).is_err());
    }

    #[test]
    fn salesman_secret_from_query_or_header() {
        let secret = s("sm-secret");
        let ok = Some(&secret);
        assert!(verify_salesman_secret(ok, Some("token=sm-secret"), None).is_ok());
        assert!(verify_salesman_secret(ok, Some("a=1&token=sm%2Dsecret"), None).is_ok());
        assert!(verify_salesman_secret(ok, None, Some("sm-secret")).is_ok());
        assert!(verify_salesman_secret(ok, Some("token=sm-secret"), Some("sm-secret")).is_ok());
        for (query, header) in [
            (None, None),
            (Some(""), None),
            (Some("token="), None),
            (Some("token=wrong"), None),
            (Some("tokens=sm-secret"), None),
            (None, Some("")),
            (None, Some("wrong")),
            (Some("token=sm-secret"), Some("wrong")),
            (Some("token=sm-secret&token=wrong"), None),
        ] {
            assert!(
                verify_salesman_secret(ok, query, header).is_err(),
                "{query:?} {header:?}"
            );
        }
    }

    #[test]
    fn salesman_without_a_configured_secret_rejects_everything() {
        assert!(verify_salesman_secret(None, Some("token=x"), Some("x")).is_err());
        let empty = s("");
        assert!(verify_salesman_secret(Some(&empty), Some("token="), Some("")).is_err());
    }

    #[tokio::test]
    async fn stored_token_is_checked_per_portal() {
        let store = super::test_tokens::StoredPortal::new("m1", "stored-app-token");
        let right = s("stored-app-token");
        assert!(verify_stored_application_token(&store, "m1", Some(&right))
            .await
            .unwrap());
        assert!(!verify_stored_application_token(&store, "m2", Some(&right))
            .await
            .unwrap());
        assert!(
            !verify_stored_application_token(&store, "m1", Some(&s("other")))
                .await
                .unwrap()
        );
        assert!(!verify_stored_application_token(&store, "m1", None)
            .await
            .unwrap());
    }
}

/// Test double shared by the verify and ingest tests: a token store holding one installed
/// portal, or failing every read as DynamoDB does when it cannot be reached.
#[cfg(test)]
pub(crate) mod test_tokens {
    use crate::error::StoreError;
    use crate::ports::{PortalTokens, TokenStore};
    use crate::secret::Secret;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    pub(crate) struct StoredPortal {
        member_id: String,
        /// `None`: the portal is not installed (or was uninstalled).
        application_token: Mutex<Option<String>>,
        down: bool,
        reads: AtomicUsize,
    }

    impl StoredPortal {
        pub(crate) fn new(member_id: &str, application_token: &str) -> Self {
            StoredPortal {
                member_id: member_id.into(),
                application_token: Mutex::new(Some(application_token.into())),
                down: false,
                reads: AtomicUsize::new(0),
            }
        }

        pub(crate) fn down() -> Self {
            StoredPortal {
                down: true,
                ..StoredPortal::new("", "")
            }
        }

        /// A reinstall (`Some`, a new token) or an uninstall (`None`).
        pub(crate) fn set_token(&self, token: Option<&str>) {
            *self.application_token.lock().unwrap() = token.map(str::to_string);
        }

        /// How many times the store was read.
        pub(crate) fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl TokenStore for StoredPortal {
        async fn get(&self, member_id: &str) -> Result<Option<PortalTokens>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.down {
                return Err(StoreError::Unavailable("test store is down".into()));
            }
            let token = self.application_token.lock().unwrap().clone();
            Ok(token
                .filter(|_| member_id == self.member_id)
                .map(|token| PortalTokens {
                    member_id: self.member_id.clone(),
                    domain: "example.bitrix24.ru".into(),
                    application_token: Secret::new(token),
                    access_token: Secret::new("a"),
                    refresh_token: Secret::new("r"),
                    expires_at_ms: 0,
                    client_endpoint: "https://example.bitrix24.ru/rest/".into(),
                    server_endpoint: String::new(),
                    scope: "crm".into(),
                }))
        }
        async fn put(&self, _: &PortalTokens) -> Result<(), StoreError> {
            Ok(())
        }
        async fn delete(&self, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
        async fn list(&self) -> Result<Vec<PortalTokens>, StoreError> {
            Ok(Vec::new())
        }
    }
}
