//! The app family's own events: ONAPPINSTALL and ONAPPUPDATE are trusted only after `app.info`
//! confirms their access token, and the portal's REST endpoint is the one Bitrix24 names there;
//! ONAPPUNINSTALL forgets the portal; ONAPPTEST answers; ONOFFLINEEVENT wakes the poller.

use crate::config::AppTokens;
use crate::error::{EnrichError, IngestError};
use crate::lifecycle::bind::PlanRebind;
use crate::lifecycle::portal_endpoint::{confirm_endpoint, ConfirmedPortal};
use crate::ports::{InstallVerifier, PortalTokens, SnapshotStore, TokenStore};
use crate::secret::Secret;
use crate::verify::{
    constant_time_eq, verify_configured_application_token, verify_stored_application_token,
};
use async_trait::async_trait;
use std::sync::Arc;

/// What an app event did; ingress turns it into its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppOutcome {
    /// ONAPPINSTALL confirmed by `app.info`; the portal's tokens are stored.
    Installed { portal: String },
    /// ONAPPUPDATE with the stored application token; the OAuth tokens are refreshed.
    Updated { portal: String },
    /// ONAPPUNINSTALL with the stored application token: tokens and snapshots are gone.
    Uninstalled {
        portal: String,
        snapshots_deleted: usize,
    },
    /// ONAPPTEST: the URL works and the token is right.
    Tested { portal: String },
    /// ONOFFLINEEVENT: offline records are waiting; the poller was woken.
    OfflineWake { portal: String },
}

impl AppOutcome {
    pub fn portal(&self) -> &str {
        match self {
            AppOutcome::Installed { portal }
            | AppOutcome::Updated { portal }
            | AppOutcome::Uninstalled { portal, .. }
            | AppOutcome::Tested { portal }
            | AppOutcome::OfflineWake { portal } => portal,
        }
    }

    /// Whether ingress should also queue the event (with `auth` stripped, as always) so the
    /// user's system learns of installs and uninstalls, and sees an ONAPPTEST arrive: a test
    /// is worth most when it travels the whole way. Only the poller's wake-up is plumbing.
    pub fn forward_to_destination(&self) -> bool {
        !matches!(self, AppOutcome::OfflineWake { .. })
    }
}

/// Something that starts an offline poll of one portal: a notify in `relay serve`, an inline
/// poll in Lambda. Failure to wake is not the sender's problem: the schedule polls anyway.
#[async_trait]
pub trait OfflineWake: Send + Sync {
    async fn wake(&self, portal: &str);
}

/// The app family's event handling, called by ingress for every event of that family, and
/// the application-token check every Bitrix24 event of a portal goes through.
pub struct AppLifecycle {
    verifier: Arc<dyn InstallVerifier>,
    tokens: Arc<dyn TokenStore>,
    snapshots: Arc<dyn SnapshotStore>,
    configured_tokens: AppTokens,
    wake: Option<Arc<dyn OfflineWake>>,
    rebind: Option<Arc<PlanRebind>>,
}

impl AppLifecycle {
    pub fn new(
        verifier: Arc<dyn InstallVerifier>,
        tokens: Arc<dyn TokenStore>,
        snapshots: Arc<dyn SnapshotStore>,
        configured_tokens: AppTokens,
    ) -> Self {
        AppLifecycle {
            verifier,
            tokens,
            snapshots,
            configured_tokens,
            wake: None,
            rebind: None,
        }
    }

    pub fn with_offline_wake(mut self, wake: Arc<dyn OfflineWake>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Binds the portal's stored plan again after a confirmed ONAPPUPDATE (Bitrix24 removes an
    /// app's handlers on update) and forgets it at uninstall.
    pub fn with_plan_rebind(mut self, rebind: Arc<PlanRebind>) -> Self {
        self.rebind = Some(rebind);
        self
    }

    /// `body`: the whole parsed Bitrix24 document (`event`, `data`, `ts`, `auth`), as the
    /// form or JSON parser produced it. Every refusal is `Unauthorized` without detail.
    pub async fn handle(
        &self,
        body: &serde_json::Value,
        now_ms: i64,
    ) -> Result<AppOutcome, IngestError> {
        let event = text_at(body, &["event"])
            .ok_or_else(|| IngestError::Malformed("missing event".into()))?
            .to_ascii_uppercase();
        let portal = text_at(body, &["auth", "member_id"]).ok_or(IngestError::Unauthorized)?;
        // An empty token would make every later event of this portal match an empty one.
        let application_token = text_at(body, &["auth", "application_token"])
            .filter(|t| !t.is_empty())
            .ok_or(IngestError::Unauthorized)?;
        let application_token = Secret::new(application_token);
        match event.as_str() {
            "ONAPPINSTALL" => self.install(body, portal, application_token, now_ms).await,
            "ONAPPUNINSTALL" => self.uninstall(portal, &application_token).await,
            "ONAPPUPDATE" => self.update(body, portal, application_token, now_ms).await,
            "ONAPPTEST" => {
                if !self
                    .accepts_application_token(&portal, &application_token)
                    .await?
                {
                    return Err(IngestError::Unauthorized);
                }
                Ok(AppOutcome::Tested { portal })
            }
            "ONOFFLINEEVENT" => {
                if !self
                    .accepts_application_token(&portal, &application_token)
                    .await?
                {
                    return Err(IngestError::Unauthorized);
                }
                if let Some(wake) = &self.wake {
                    wake.wake(&portal).await;
                }
                Ok(AppOutcome::OfflineWake { portal })
            }
            _ => Err(IngestError::UnknownEvent(event)),
        }
    }

    /// ONAPPUNINSTALL: forgets the portal (snapshots, bind plan, then tokens).
    async fn uninstall(
        &self,
        portal: String,
        application_token: &Secret,
    ) -> Result<AppOutcome, IngestError> {
        self.require_stored_token(&portal, application_token)
            .await?;
        // Tokens go last: an uninstall cut short (a 5xx, Bitrix24 sends it again)
        // still authenticates on its retry, which finds only what is left to delete.
        // Snapshots live in the same store as the tokens (one DynamoDB table, or `relay.db`).
        let snapshots_deleted = self
            .snapshots
            .delete_portal(crate::event::Source::Bitrix24, &portal)
            .await
            .map_err(IngestError::TokenStore)?;
        if let Some(rebind) = &self.rebind {
            rebind
                .forget(&portal)
                .await
                .map_err(IngestError::TokenStore)?;
        }
        self.tokens
            .delete(&portal)
            .await
            .map_err(IngestError::TokenStore)?;
        tracing::info!(portal = %portal, snapshots_deleted, "app uninstalled; portal forgotten");
        Ok(AppOutcome::Uninstalled {
            portal,
            snapshots_deleted,
        })
    }

    /// ONAPPUPDATE: stores the portal's fresh tokens once `app.info` confirms them, then binds
    /// the stored plan again.
    async fn update(
        &self,
        body: &serde_json::Value,
        portal: String,
        application_token: Secret,
        now_ms: i64,
    ) -> Result<AppOutcome, IngestError> {
        let stored = self
            .require_stored_token(&portal, &application_token)
            .await?;
        // The application token travels with every event of the portal, so it alone
        // may not move the portal's calls or replace its tokens: the fresh access token
        // is confirmed with `app.info` exactly as at install.
        if let Some(fresh) = tokens_from_auth(body, &portal, application_token, now_ms) {
            let fresh = self.confirmed(fresh, "ONAPPUPDATE").await?;
            let merged = PortalTokens {
                scope: if fresh.scope.is_empty() {
                    stored.scope
                } else {
                    fresh.scope
                },
                ..fresh
            };
            self.tokens
                .put(&merged)
                .await
                .map_err(IngestError::TokenStore)?;
            // Only a confirmed update re-binds: the plan's URLs are ours, but the
            // calls go out with the portal's tokens to the endpoint app.info named.
            if let Some(rebind) = &self.rebind {
                rebind.after_update(&portal).await;
            }
        }
        Ok(AppOutcome::Updated { portal })
    }

    /// True when `token` is one of `RELAY_B24_APP_TOKENS` (a bare token, or this portal's
    /// `member_id:token`) or the application token stored for this portal at install: the
    /// same checks (`verify`) ingress applies to every other family.
    pub async fn accepts_application_token(
        &self,
        portal: &str,
        token: &Secret,
    ) -> Result<bool, IngestError> {
        if verify_configured_application_token(&self.configured_tokens, portal, Some(token)).is_ok()
        {
            return Ok(true);
        }
        verify_stored_application_token(self.tokens.as_ref(), portal, Some(token))
            .await
            .map_err(IngestError::TokenStore)
    }

    /// Uninstall and update change stored state, so only the token Bitrix24 gave this portal
    /// at install may ask for them (a configured outgoing-webhook token may not).
    async fn require_stored_token(
        &self,
        portal: &str,
        token: &Secret,
    ) -> Result<PortalTokens, IngestError> {
        match self
            .tokens
            .get(portal)
            .await
            .map_err(IngestError::TokenStore)?
        {
            Some(stored)
                if !token.is_empty()
                    && constant_time_eq(token.expose(), stored.application_token.expose()) =>
            {
                Ok(stored)
            }
            _ => Err(IngestError::Unauthorized),
        }
    }

    async fn install(
        &self,
        body: &serde_json::Value,
        portal: String,
        application_token: Secret,
        now_ms: i64,
    ) -> Result<AppOutcome, IngestError> {
        let tokens = tokens_from_auth(body, &portal, application_token, now_ms)
            .ok_or(IngestError::Unauthorized)?;
        let tokens = self.confirmed(tokens, "ONAPPINSTALL").await?;
        self.tokens
            .put(&tokens)
            .await
            .map_err(IngestError::TokenStore)?;
        tracing::info!(portal = %portal, domain = %tokens.domain, "app installed; portal tokens stored");
        Ok(AppOutcome::Installed { portal })
    }

    /// `tokens` with the endpoint and domain Bitrix24 confirmed, once `app.info` has said the
    /// access token is this app's on this portal; whatever the event claimed for them is dropped.
    async fn confirmed(
        &self,
        tokens: PortalTokens,
        event: &str,
    ) -> Result<PortalTokens, IngestError> {
        let confirmed = self
            .verifier
            .confirm_portal(&tokens.access_token, &tokens.member_id)
            .await
            .map_err(|e| match e {
                EnrichError::Transient { .. } | EnrichError::MethodBlocked { .. } => {
                    IngestError::VerifierUnavailable
                }
                _ => IngestError::Unauthorized,
            })?;
        let Some(ConfirmedPortal {
            client_endpoint,
            domain,
        }) = confirmed
        else {
            tracing::warn!(portal = %tokens.member_id, event, "refused: app.info did not confirm the access token");
            return Err(IngestError::Unauthorized);
        };
        Ok(PortalTokens {
            client_endpoint,
            domain,
            ..tokens
        })
    }
}

/// The portal's tokens from an install/update `auth` block; `None` when a required one is
/// missing. `expires` is absolute (Unix seconds); older senders give only `expires_in`.
fn tokens_from_auth(
    body: &serde_json::Value,
    portal: &str,
    application_token: Secret,
    now_ms: i64,
) -> Option<PortalTokens> {
    let access_token = text_at(body, &["auth", "access_token"]).filter(|t| !t.is_empty())?;
    let refresh_token = text_at(body, &["auth", "refresh_token"]).unwrap_or_default();
    let domain = text_at(body, &["auth", "domain"]).unwrap_or_default();
    let client_endpoint = text_at(body, &["auth", "client_endpoint"])
        .filter(|e| !e.is_empty())
        .or_else(|| (!domain.is_empty()).then(|| format!("https://{domain}/rest/")))?;
    let expires_at_ms =
        match text_at(body, &["auth", "expires"]).and_then(|s| s.parse::<i64>().ok()) {
            Some(expires) => expires.saturating_mul(1000),
            None => {
                let expires_in = text_at(body, &["auth", "expires_in"])
                    .and_then(|s| s.parse::<i64>().ok())
                    .unwrap_or(3600);
                now_ms.saturating_add(expires_in.saturating_mul(1000))
            }
        };
    Some(PortalTokens {
        member_id: portal.to_string(),
        domain,
        application_token,
        access_token: Secret::new(access_token),
        refresh_token: Secret::new(refresh_token),
        expires_at_ms,
        client_endpoint: with_trailing_slash(&client_endpoint),
        scope: text_at(body, &["auth", "scope"]).unwrap_or_default(),
        // Where this portal's tokens are refreshed (its region's OAuth server).
        server_endpoint: text_at(body, &["auth", "server_endpoint"]).unwrap_or_default(),
    })
}

/// A string or number at `path` as text: form bodies give strings, JSON bodies may not.
pub(crate) fn text_at(value: &serde_json::Value, path: &[&str]) -> Option<String> {
    let mut cur = value;
    for key in path {
        cur = cur.get(*key)?;
    }
    match cur {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn with_trailing_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

/// Confirms an install or update with `app.info` asked of Bitrix24 itself (the OAuth server,
/// `<RELAY_B24_OAUTH_URL>/rest/`), whatever the event claims: an event names its own
/// `client_endpoint`, and a forger would point it at a server that vouches for anything.
pub struct AppInfoVerifier {
    http: reqwest::Client,
    endpoint: String,
    /// The answer's `client_id` must be this app's (RELAY_B24_CLIENT_ID); without it nothing is
    /// confirmed, since any app's token on any portal would pass.
    client_id: Option<String>,
    /// RELAY_ALLOW_LOOPBACK_CRM: a fake portal on 127.0.0.1 in tests.
    allow_loopback: bool,
}

impl AppInfoVerifier {
    /// `endpoint`: the REST base `app.info` is asked of.
    pub fn new(http: reqwest::Client, endpoint: &str, client_id: Option<String>) -> Self {
        AppInfoVerifier {
            http,
            endpoint: with_trailing_slash(endpoint),
            client_id,
            allow_loopback: false,
        }
    }

    /// The production setup: `app.info` on the OAuth server (`<oauth_url>/rest/`).
    pub fn via_oauth_server(
        http: reqwest::Client,
        oauth_url: &str,
        client_id: Option<String>,
    ) -> Self {
        let base = format!("{}/rest/", oauth_url.trim_end_matches('/'));
        AppInfoVerifier::new(http, &base, client_id)
    }

    /// Accept `http` portal endpoints on loopback addresses (tests only).
    pub fn allowing_loopback(mut self, allow: bool) -> Self {
        self.allow_loopback = allow;
        self
    }
}

#[async_trait]
impl InstallVerifier for AppInfoVerifier {
    async fn confirm_portal(
        &self,
        access_token: &Secret,
        portal: &str,
    ) -> Result<Option<ConfirmedPortal>, EnrichError> {
        let Some(client_id) = self.client_id.as_deref() else {
            tracing::warn!(portal = %portal, "app event refused: RELAY_B24_CLIENT_ID is not set, so no token can be confirmed as this app's");
            return Ok(None);
        };
        // No `.json` suffix: portals accept both forms, the OAuth server documents this one.
        let url = format!("{}app.info", self.endpoint);
        // The token goes in the form body, not the query string, so no proxy log holds it.
        let response = self
            .http
            .post(&url)
            .form(&[("auth", access_token.expose())])
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| EnrichError::Transient {
                reason: format!("app.info unreachable: {}", e.without_url()),
                retry_after: None,
            })?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(EnrichError::Transient {
                reason: format!("app.info answered {status}"),
                retry_after: None,
            });
        }
        let answer = match crate::http_client::read_json(response).await {
            Ok(answer) => answer,
            Err(_) => return Ok(None),
        };
        if !status.is_success() || answer.get("error").is_some() {
            return Ok(None);
        }
        if !app_info_confirms(&answer, portal, client_id) {
            return Ok(None);
        }
        match confirm_endpoint(
            text_at(&answer, &["result", "install", "client_endpoint"]).as_deref(),
            text_at(&answer, &["result", "install", "domain"]).as_deref(),
            self.allow_loopback,
        ) {
            Ok(confirmed) => Ok(Some(confirmed)),
            Err(refused) => {
                tracing::warn!(portal = %portal, reason = %refused, "app event refused: the portal endpoint app.info names is not acceptable");
                Ok(None)
            }
        }
    }
}

/// The portal `app.info` names is in `result.install.member_id`, its domain and REST endpoint in
/// `result.install.domain`/`client_endpoint`; `result.client_id` is the app's. The portal's own
/// `app.info` page (b24restdocs api-reference/common/system/app-info.md) lists only ID, CODE,
/// STATUS…; the OAuth server's answer adds the `install` block, whose fields match what the
/// token exchange returns (b24restdocs settings/oauth/index.md: client_endpoint, member_id).
fn app_info_confirms(answer: &serde_json::Value, portal: &str, client_id: &str) -> bool {
    let answered_member = text_at(answer, &["result", "install", "member_id"]);
    let member_ok = answered_member.as_deref() == Some(portal) && !portal.is_empty();
    let client_ok = !client_id.is_empty()
        && text_at(answer, &["result", "client_id"]).as_deref() == Some(client_id);
    member_ok && client_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn app_info_must_name_the_same_portal_and_app() {
        let answer = json!({"result": {"ID": 7, "CODE": "local.1", "client_id": "local.1",
            "install": {"installed": true, "member_id": "m1", "domain": "a.bitrix24.ru"}}});
        assert!(app_info_confirms(&answer, "m1", "local.1"));
        assert!(!app_info_confirms(&answer, "m2", "local.1"));
        assert!(!app_info_confirms(&answer, "m1", "local.2"));
        assert!(!app_info_confirms(&answer, "m1", ""));
        assert!(!app_info_confirms(
            &json!({"result": {"ID": 7}}),
            "m1",
            "local.1"
        ));
        assert!(!app_info_confirms(&answer, "", "local.1"));
    }

    #[test]
    fn install_tokens_use_absolute_expiry_and_endpoint() {
        let body = json!({"auth": {"access_token": "a", "refresh_token": "r", "expires": "1700000000",
            "domain": "x.bitrix24.ru", "scope": "crm", "client_endpoint": "https://x.bitrix24.ru/rest"}});
        let t = tokens_from_auth(&body, "m1", Secret::new("app"), 5).unwrap();
        assert_eq!(t.expires_at_ms, 1_700_000_000_000);
        assert_eq!(t.client_endpoint, "https://x.bitrix24.ru/rest/");
        assert_eq!(t.access_token.expose(), "a");
        let no_access = json!({"auth": {"domain": "x.bitrix24.ru"}});
        assert!(tokens_from_auth(&no_access, "m1", Secret::new("app"), 5).is_none());
        let relative =
            json!({"auth": {"access_token": "a", "expires_in": "60", "domain": "x.bitrix24.ru"}});
        let t = tokens_from_auth(&relative, "m1", Secret::new("app"), 1_000).unwrap();
        assert_eq!(t.expires_at_ms, 61_000);
        assert_eq!(t.client_endpoint, "https://x.bitrix24.ru/rest/");
    }
}
