//! Bitrix24 REST client behind `ports::Bitrix24Rest`: the consumer's way to ask a portal for an
//! entity. It authenticates (portal's stored OAuth tokens, else that portal's inbound webhook),
//! refreshes an expired token once, keeps under the portal's leaky bucket and retries its limits.
//!
//! The two limits of b24restdocs `limits.md` are handled apart, because they differ in kind:
//! - The leaky bucket (503 `QUERY_LIMIT_EXCEEDED`) counts every request of the portal from
//!   our address together, so every client keeps to its share of it (`RELAY_B24_RATE_LIMIT`
//!   divided by `RELAY_B24_CONSUMERS` + 2) and a refusal is backed off here, in seconds.
//! - 429 `OPERATION_TIME_LIMIT` blocks one method for minutes. The client remembers the block
//!   per (portal, method) until the reset time of the last successful answer (else one basket,
//!   a minute, as the docs say), refuses calls of that method meanwhile without asking the
//!   portal (also inside a `batch`), and answers `EnrichError::MethodBlocked`: the consumer
//!   then gives the message back until the reset as a wait, not as a failed try, so a block
//!   never brings a message nearer to the dead-letter queue.

use crate::clock::now_unix_ms as unix_ms_now;
use crate::config::RelayConfig;
use crate::error::EnrichError;
use crate::lifecycle::portal_endpoint::confirm_endpoint;
use crate::ports::{Bitrix24Rest, PortalTokens, RestAnswer, TokenStore};
use crate::secret::Secret;
use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A portal's leaky bucket as Bitrix24 documents it: each request adds one, the bucket drains
/// at `per_second`, and a request that would overflow `burst` is refused with 503.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for RateLimit {
    /// Standard plans: 2 requests/s sustained, blocked above 50 (Enterprise drains at 5/s).
    fn default() -> Self {
        RateLimit {
            per_second: 2.0,
            burst: 50.0,
        }
    }
}

impl RateLimit {
    /// `RELAY_B24_RATE_LIMIT`: `<requests per second>/<bucket size>`, e.g. `2/50`.
    pub fn parse(raw: &str) -> Option<RateLimit> {
        let (rate, burst) = raw.split_once('/')?;
        let number = |s: &str| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n > 0.0)
        };
        Some(RateLimit {
            per_second: number(rate)?,
            burst: number(burst)?,
        })
    }

    /// One of `shares` clients' part of a portal's budget: the portal counts every client of
    /// the app together, so N clients each at the full rate are N times over it.
    pub fn shared_by(self, shares: u32) -> RateLimit {
        let shares = f64::from(shares.max(1));
        RateLimit {
            per_second: self.per_second / shares,
            burst: (self.burst / shares).max(1.0),
        }
    }
}

struct Bucket {
    level: f64,
    at: Instant,
}

/// Per-portal client-side copy of the portal's bucket: waits before a request would overflow
/// it, so a burst of events is spread out instead of being refused.
struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    async fn acquire(&self, portal: &str) {
        loop {
            let wait = {
                let mut buckets = match self.buckets.lock() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                let now = Instant::now();
                let bucket = buckets.entry(portal.to_string()).or_insert(Bucket {
                    level: 0.0,
                    at: now,
                });
                let drained = now.duration_since(bucket.at).as_secs_f64() * self.limit.per_second;
                bucket.level = (bucket.level - drained).max(0.0);
                bucket.at = now;
                if bucket.level + 1.0 <= self.limit.burst {
                    bucket.level += 1.0;
                    None
                } else {
                    let excess = bucket.level + 1.0 - self.limit.burst;
                    Some(Duration::from_secs_f64(excess / self.limit.per_second))
                }
            };
            match wait {
                None => return,
                Some(delay) => tokio::time::sleep(delay).await,
            }
        }
    }
}

fn lock_map<K, V>(m: &Mutex<HashMap<K, V>>) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The OAuth application, for refreshing a portal's tokens.
#[derive(Clone)]
struct OAuthApp {
    server: String,
    client_id: String,
    client_secret: Secret,
}

enum Credentials {
    Webhook(Secret),
    OAuth(PortalTokens),
}

/// What the client knows of one method on one portal (limits.md, "Resource Intensity Limits").
#[derive(Clone, Copy, Debug, Default)]
struct MethodClock {
    /// `time.operating_reset_at` of the last successful answer, Unix ms: when the oldest
    /// basket of the method's accumulated time is dropped.
    reset_at_ms: Option<i64>,
    /// Until when the method answered `OPERATION_TIME_LIMIT`, Unix ms.
    blocked_until_ms: Option<i64>,
}

/// The longest a method stays blocked: its ten one-minute baskets (limits.md).
const LONGEST_BLOCK: Duration = Duration::from_secs(600);

/// The method of one `batch` command, `crm.deal.get?id=1` -> `crm.deal.get`.
fn command_method(command: &Value) -> &str {
    let command = command.as_str().unwrap_or_default();
    command
        .split_once('?')
        .map_or(command, |(method, _)| method)
}

/// `operating_reset_at` of a `time` object (Unix seconds) in Unix ms.
fn reset_at_ms(time: Option<&Value>) -> Option<i64> {
    let seconds = time?.get("operating_reset_at")?.as_f64()?;
    Some((seconds * 1000.0).ceil() as i64)
}

/// How one HTTP answer went, before retry decisions.
enum Failure {
    ExpiredToken,
    RateLimited,
    /// 429 `OPERATION_TIME_LIMIT`: this method is blocked for minutes (limits.md).
    MethodBlocked,
    Enrich(EnrichError),
}

/// `RELAY_B24_WEBHOOK_URL`: `member_id=url` pairs (comma-separated), or one bare URL. An
/// inbound webhook reads one portal only, so an event is read through the pair of its own
/// `member_id`, or through the bare URL when the URL's host is the event's `domain`.
#[derive(Clone, Default)]
pub struct WebhookUrls {
    per_portal: Vec<(String, Secret)>,
    any: Option<Secret>,
}

impl WebhookUrls {
    pub fn parse(raw: &Secret) -> WebhookUrls {
        let mut urls = WebhookUrls::default();
        for item in raw
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            match item.split_once('=') {
                // A member_id never holds ':' or '/'; a URL's scheme does.
                Some((member, url)) if !member.contains([':', '/']) && !member.is_empty() => {
                    urls.per_portal
                        .push((member.trim().to_string(), Secret::new(url.trim())));
                }
                _ => urls.any = Some(Secret::new(item)),
            }
        }
        urls
    }

    /// The webhook for a portal. `domain: None` is an operator's command (`relay bind`,
    /// `relay poll`) naming the portal itself: the bare URL serves it.
    fn for_portal(&self, portal: &str, domain: Option<Option<&str>>) -> Option<&Secret> {
        if let Some((_, url)) = self.per_portal.iter().find(|(m, _)| m == portal) {
            return Some(url);
        }
        let any = self.any.as_ref()?;
        match domain {
            None => Some(any),
            Some(Some(domain))
                if url_host(any.expose()).is_some_and(|h| h.eq_ignore_ascii_case(domain)) =>
            {
                Some(any)
            }
            Some(_) => None,
        }
    }
}

fn url_host(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?;
    Some(match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    })
}

pub struct Bitrix24Client {
    http: reqwest::Client,
    webhooks: WebhookUrls,
    oauth: Option<OAuthApp>,
    tokens: Arc<dyn TokenStore>,
    limiter: Limiter,
    /// Per (portal, method): when a blocked method may run again (limits.md: "refer to
    /// operating_reset_at from the last successful response").
    methods: Mutex<HashMap<(String, String), MethodClock>>,
    /// One basket of the method's accumulated time (limits.md: a minute): how long a block
    /// is waited out when no reset time is known or the known one has passed.
    operating_basket: Duration,
    /// First wait after `QUERY_LIMIT_EXCEEDED`; doubles per try.
    backoff: Duration,
    max_tries: u32,
    timeout: Duration,
    /// RELAY_ALLOW_LOOPBACK_CRM (tests).
    allow_loopback: bool,
}

impl Bitrix24Client {
    pub fn new(http: reqwest::Client, config: &RelayConfig, tokens: Arc<dyn TokenStore>) -> Self {
        let oauth = match (&config.b24_client_id, &config.b24_client_secret) {
            (Some(id), Some(secret)) => Some(OAuthApp {
                server: config.b24_oauth_url.trim_end_matches('/').to_string(),
                client_id: id.clone(),
                client_secret: secret.clone(),
            }),
            _ => None,
        };
        Bitrix24Client {
            http,
            webhooks: config
                .b24_webhook_url
                .as_ref()
                .map(WebhookUrls::parse)
                .unwrap_or_default(),
            oauth,
            tokens,
            limiter: Limiter {
                limit: client_share(config),
                buckets: Mutex::new(HashMap::new()),
            },
            methods: Mutex::new(HashMap::new()),
            operating_basket: Duration::from_secs(60),
            backoff: Duration::from_secs(1),
            max_tries: 5,
            timeout: Duration::from_secs(20),
            allow_loopback: config.allow_loopback_crm,
        }
    }

    /// Tests use a fast bucket; production keeps the documented default.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.limiter.limit = limit;
        self
    }

    /// Tests scale Bitrix24's one-minute operating-time basket down with their fake portal.
    pub fn with_operating_basket(mut self, basket: Duration) -> Self {
        self.operating_basket = basket.max(Duration::from_millis(1));
        self
    }

    /// Wait after the first refusal for rate limits, and how many tries in all.
    pub fn with_backoff(mut self, first: Duration, max_tries: u32) -> Self {
        self.backoff = first;
        self.max_tries = max_tries.max(1);
        self
    }

    /// `domain`: see [`WebhookUrls::for_portal`].
    async fn credentials(
        &self,
        portal: &str,
        domain: Option<Option<&str>>,
    ) -> Result<Credentials, EnrichError> {
        let stored = self
            .tokens
            .get(portal)
            .await
            .map_err(|e| EnrichError::Transient {
                reason: format!("token store: {e}"),
                retry_after: None,
            })?;
        match (stored, self.webhooks.for_portal(portal, domain)) {
            (Some(tokens), _) if !tokens.access_token.is_empty() => Ok(Credentials::OAuth(tokens)),
            (_, Some(url)) => Ok(Credentials::Webhook(url.clone())),
            _ => Err(EnrichError::NoCredentials(format!(
                "bitrix24 portal {portal}"
            ))),
        }
    }

    async fn send(
        &self,
        credentials: &Credentials,
        method: &str,
        params: &Value,
    ) -> Result<RestAnswer, Failure> {
        let mut body = match params {
            Value::Object(map) => map.clone(),
            Value::Null => serde_json::Map::new(),
            _ => {
                return Err(Failure::Enrich(EnrichError::Permanent(
                    "REST params must be an object".into(),
                )))
            }
        };
        let url = match credentials {
            Credentials::Webhook(base) => {
                format!("{}/{method}.json", base.expose().trim_end_matches('/'))
            }
            Credentials::OAuth(tokens) => {
                // In the body, not the query string: URLs end up in proxy and access logs.
                body.insert("auth".into(), json!(tokens.access_token.expose()));
                format!(
                    "{}/{method}.json",
                    tokens.client_endpoint.trim_end_matches('/')
                )
            }
        };
        let response = self
            .http
            .post(url)
            .timeout(self.timeout)
            .json(&Value::Object(body))
            .send()
            .await
            .map_err(|e| {
                Failure::Enrich(EnrichError::Transient {
                    reason: if e.is_timeout() {
                        format!("{method}: timed out")
                    } else {
                        format!("{method}: request failed")
                    },
                    retry_after: None,
                })
            })?;
        let status = response.status().as_u16();
        let answer: Value = match crate::http_client::read_json(response).await {
            Ok(v) => v,
            Err(_) if status >= 500 => {
                return Err(Failure::Enrich(EnrichError::Transient {
                    reason: format!("{method}: portal answered {status}"),
                    retry_after: None,
                }))
            }
            Err(_) => {
                return Err(Failure::Enrich(EnrichError::Permanent(format!(
                    "{method}: answer {status} is not JSON"
                ))))
            }
        };
        if let Some(error) = answer.get("error") {
            let code = error.as_str().unwrap_or_default();
            let description = answer
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(classify_error(status, code, description, method));
        }
        match answer.get("result") {
            Some(result) if (200..300).contains(&status) => Ok(RestAnswer {
                result: result.clone(),
                time: answer.get("time").cloned(),
            }),
            _ => Err(Failure::Enrich(EnrichError::Permanent(format!(
                "{method}: answer {status} has no result"
            )))),
        }
    }

    /// A refresh token works once: when another consumer refreshed first, ours is refused,
    /// and the pair it saved in the token store is the one to use.
    async fn refresh_or_reload(&self, old: &PortalTokens) -> Result<PortalTokens, EnrichError> {
        match self.refresh(old).await {
            Ok(fresh) => Ok(fresh),
            Err(EnrichError::Permanent(reason)) => {
                match self.credentials(&old.member_id, None).await {
                    Ok(Credentials::OAuth(stored)) if stored.access_token != old.access_token => {
                        tracing::info!(portal = %old.member_id, "tokens were refreshed elsewhere; using them");
                        Ok(stored)
                    }
                    _ => Err(EnrichError::Permanent(reason)),
                }
            }
            Err(other) => Err(other),
        }
    }

    /// `grant_type=refresh_token` on the OAuth server; the new pair replaces the old one in the
    /// token store (a refresh token works once).
    async fn refresh(&self, old: &PortalTokens) -> Result<PortalTokens, EnrichError> {
        let app = self.oauth.as_ref().ok_or_else(|| {
            EnrichError::Permanent(
                "access token expired and RELAY_B24_CLIENT_ID/_SECRET are not set".into(),
            )
        })?;
        // The OAuth server documents this call only as a GET with the parameters in the query
        // string (b24restdocs settings/oauth/auto-renewal.md); a POST body is not documented,
        // so the secret stays in the query of this one HTTPS request, which is never logged.
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("client_id", &app.client_id)
            .append_pair("client_secret", app.client_secret.expose())
            .append_pair("refresh_token", old.refresh_token.expose())
            .finish();
        let server = oauth_server_for(old, &app.server);
        let response = self
            .http
            .get(format!("{server}/oauth/token/?{query}"))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|_| EnrichError::Transient {
                reason: "token refresh: request failed".into(),
                retry_after: None,
            })?;
        let status = response.status().as_u16();
        let answer: Value = crate::http_client::read_json(response)
            .await
            .unwrap_or(Value::Null);
        let text = |k: &str| answer.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(access), Some(refresh)) = (text("access_token"), text("refresh_token")) else {
            let code = text("error").unwrap_or_default();
            return Err(if status >= 500 {
                EnrichError::Transient {
                    reason: format!("token refresh: OAuth server answered {status}"),
                    retry_after: None,
                }
            } else {
                EnrichError::Permanent(format!("token refresh refused ({status} {code})"))
            });
        };
        let now_ms = unix_ms_now();
        let expires_in = answer
            .get("expires_in")
            .and_then(Value::as_i64)
            .unwrap_or(3600);
        let fresh = PortalTokens {
            member_id: old.member_id.clone(),
            // The refresh answer's `domain` is the OAuth server's (`oauth.bitrix.info`), not
            // the portal's (settings/oauth/index.md): the portal keeps its own.
            domain: old.domain.clone(),
            application_token: old.application_token.clone(),
            access_token: Secret::new(access),
            refresh_token: Secret::new(refresh),
            expires_at_ms: now_ms + expires_in * 1000,
            // Even from the OAuth server, only an endpoint on the portal's own domain is taken.
            client_endpoint: confirm_endpoint(
                text("client_endpoint").as_deref(),
                Some(&old.domain),
                self.allow_loopback,
            )
            .map(|portal| portal.client_endpoint)
            .unwrap_or_else(|_| old.client_endpoint.clone()),
            scope: text("scope").unwrap_or_else(|| old.scope.clone()),
            server_endpoint: old.server_endpoint.clone(),
        };
        self.tokens
            .put(&fresh)
            .await
            .map_err(|e| EnrichError::Transient {
                reason: format!("token store: {e}"),
                retry_after: None,
            })?;
        tracing::info!(portal = %old.member_id, "bitrix24 tokens refreshed");
        Ok(fresh)
    }
}

/// This client's part of the portal's bucket: consumers, the poller and the app function's
/// inline drain each run their own client against the one bucket of the portal.
pub fn client_share(config: &RelayConfig) -> RateLimit {
    let portal = config.b24_rate_limit.unwrap_or_default();
    if config.b24_consumers == 0 {
        portal
    } else {
        portal.shared_by(config.b24_consumers.saturating_add(2))
    }
}

/// Bitrix24's OAuth servers as its docs and events name them in `server_endpoint`:
/// `oauth.bitrix.info` (settings/oauth/index.md), `oauth.bitrix24.tech` (on-app-uninstall.md's sample),
/// `oauth.bitrix24.info` (landing/embedding/block.md).
pub const KNOWN_OAUTH_HOSTS: &[&str] = &[
    "oauth.bitrix.info",
    "oauth.bitrix24.tech",
    "oauth.bitrix24.info",
];

/// Where a portal's refresh goes: the OAuth server its install named, when that host is a
/// known Bitrix24 one or the configured server's; otherwise the configured server. A refresh
/// carries `client_secret`, so no host an event merely names ever gets it.
pub fn oauth_server_for(tokens: &PortalTokens, configured: &str) -> String {
    let origin = |url: &str| {
        let parsed = reqwest::Url::parse(url).ok()?;
        let host = parsed.host_str()?.to_ascii_lowercase();
        let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
        Some((parsed.scheme().to_string(), host, port))
    };
    let Some((scheme, host, port)) = origin(&tokens.server_endpoint) else {
        return configured.to_string();
    };
    let configured_host = origin(configured).map(|(_, h, p)| format!("{h}{p}"));
    let known =
        (scheme == "https" && port.is_empty() && KNOWN_OAUTH_HOSTS.contains(&host.as_str()))
            || configured_host.as_deref() == Some(format!("{host}{port}").as_str());
    if known {
        format!("{scheme}://{host}{port}")
    } else {
        tracing::warn!(portal = %tokens.member_id, "stored server_endpoint is not a known Bitrix24 OAuth server; refreshing through RELAY_B24_OAUTH_URL");
        configured.to_string()
    }
}

/// Bitrix24 error codes as its docs and real answers give them. `Not found` comes with an
/// empty `error` from crm.*.get (`{"error":"","error_description":"Not found"}`).
fn classify_error(status: u16, code: &str, description: &str, method: &str) -> Failure {
    match code {
        "OPERATION_TIME_LIMIT" => Failure::MethodBlocked,
        "QUERY_LIMIT_EXCEEDED" => Failure::RateLimited,
        "expired_token" => Failure::ExpiredToken,
        _ if is_not_found(code, description) => Failure::Enrich(EnrichError::NotFound),
        _ if status == 503 || status == 429 => Failure::RateLimited,
        _ if status >= 500 || code == "INTERNAL_SERVER_ERROR" => {
            Failure::Enrich(EnrichError::Transient {
                reason: format!("{method}: {status} {code}"),
                retry_after: None,
            })
        }
        _ => Failure::Enrich(EnrichError::Permanent(format!("{method}: {status} {code}"))),
    }
}

/// Also used for the per-command errors inside a `batch` answer.
pub fn is_not_found(code: &str, description: &str) -> bool {
    let code = code.to_ascii_uppercase();
    let description = description.to_lowercase();
    code == "NOT_FOUND"
        || code == "ERROR_NOT_FOUND"
        || description.contains("not found")
        || description.contains("item_not_found")
        || description.contains("не найден")
}

#[async_trait]
impl Bitrix24Rest for Bitrix24Client {
    async fn call(
        &self,
        portal: &str,
        method: &str,
        params: Value,
    ) -> Result<RestAnswer, EnrichError> {
        self.call_with(portal, None, method, params).await
    }

    async fn call_on(
        &self,
        portal: &str,
        domain: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<RestAnswer, EnrichError> {
        self.call_with(portal, Some(domain), method, params).await
    }
}

impl Bitrix24Client {
    fn clocks(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), MethodClock>> {
        lock_map(&self.methods)
    }

    /// How long `method` stays blocked on this portal, if it is.
    fn blocked_for(&self, portal: &str, method: &str, now_ms: i64) -> Option<Duration> {
        let until = self
            .clocks()
            .get(&(portal.to_string(), method.to_string()))?
            .blocked_until_ms
            .filter(|until| *until > now_ms)?;
        Some(Duration::from_millis((until - now_ms) as u64))
    }

    /// Remembers an `OPERATION_TIME_LIMIT` answer: blocked until the reset the portal gave
    /// with its last successful answer, or, when that is unknown or has passed already (the
    /// block outlived it), for one more basket; never longer than the ten baskets.
    fn block(&self, portal: &str, method: &str) -> Duration {
        let now_ms = unix_ms_now();
        let basket = i64::try_from(self.operating_basket.as_millis()).unwrap_or(60_000);
        let longest = i64::try_from(LONGEST_BLOCK.as_millis()).unwrap_or(600_000);
        let mut clocks = self.clocks();
        let clock = clocks
            .entry((portal.to_string(), method.to_string()))
            .or_default();
        let until = clock
            .reset_at_ms
            .filter(|reset| *reset > now_ms)
            .unwrap_or(now_ms + basket)
            .min(now_ms + longest);
        clock.blocked_until_ms = Some(until);
        Duration::from_millis((until - now_ms) as u64)
    }

    /// Learns from a successful answer: the method's reset time, and that it runs again;
    /// for a `batch`, the same per command, and which commands' methods were blocked.
    fn learn(&self, portal: &str, method: &str, params: &Value, answer: &RestAnswer) {
        if method != "batch" {
            let mut clocks = self.clocks();
            let clock = clocks
                .entry((portal.to_string(), method.to_string()))
                .or_default();
            clock.blocked_until_ms = None;
            if let Some(reset) = reset_at_ms(answer.time.as_ref()) {
                clock.reset_at_ms = Some(reset);
            }
            return;
        }
        let Some(Value::Object(commands)) = params.get("cmd") else {
            return;
        };
        for (key, command) in commands {
            let nested = command_method(command);
            let error = answer
                .result
                .pointer(&format!("/result_error/{key}/error"))
                .and_then(Value::as_str);
            if error == Some("OPERATION_TIME_LIMIT") {
                let wait = self.block(portal, nested);
                tracing::warn!(portal = %portal, method = nested, wait_ms = wait.as_millis() as u64,
                    "bitrix24 OPERATION_TIME_LIMIT inside a batch: method blocked until its reset");
                continue;
            }
            let time = answer.result.pointer(&format!("/result_time/{key}"));
            if let Some(reset) = reset_at_ms(time) {
                let mut clocks = self.clocks();
                let clock = clocks
                    .entry((portal.to_string(), nested.to_string()))
                    .or_default();
                clock.reset_at_ms = Some(reset);
                clock.blocked_until_ms = None;
            }
        }
    }

    /// Whether `method` was blocked and its wait is over without a successful answer since:
    /// the next call finds out whether the block persists.
    fn probing(&self, portal: &str, method: &str, now_ms: i64) -> bool {
        self.clocks()
            .get(&(portal.to_string(), method.to_string()))
            .and_then(|clock| clock.blocked_until_ms)
            .is_some_and(|until| until <= now_ms)
    }

    /// A `batch` without the commands of blocked methods (nested calls are checked against
    /// their own method's limit, limits.md), and with one command only of a method whose
    /// block may have ended: if it persists, one refusal says so, not fifty. The commands
    /// left out are asked one by one later, when the client knows. `MethodBlocked` when
    /// none is left to send.
    fn without_blocked_commands(
        &self,
        portal: &str,
        params: Value,
        now_ms: i64,
    ) -> Result<Value, EnrichError> {
        let Value::Object(mut map) = params else {
            return Ok(params);
        };
        let Some(Value::Object(commands)) = map.get_mut("cmd") else {
            return Ok(Value::Object(map));
        };
        let mut soonest: Option<(String, Duration)> = None;
        let mut probed: Vec<String> = Vec::new();
        commands.retain(|_, command| {
            let nested = command_method(command);
            match self.blocked_for(portal, nested, now_ms) {
                None if self.probing(portal, nested, now_ms) => {
                    if probed.iter().any(|m| m == nested) {
                        false
                    } else {
                        probed.push(nested.to_string());
                        true
                    }
                }
                None => true,
                Some(wait) => {
                    if soonest.as_ref().is_none_or(|(_, w)| wait < *w) {
                        soonest = Some((nested.to_string(), wait));
                    }
                    false
                }
            }
        });
        match soonest {
            Some((method, retry_after)) if commands.is_empty() => Err(EnrichError::MethodBlocked {
                method,
                retry_after,
            }),
            _ => Ok(Value::Object(map)),
        }
    }

    async fn call_with(
        &self,
        portal: &str,
        domain: Option<Option<&str>>,
        method: &str,
        params: Value,
    ) -> Result<RestAnswer, EnrichError> {
        let now_ms = unix_ms_now();
        let params = if method == "batch" {
            self.without_blocked_commands(portal, params, now_ms)?
        } else {
            if let Some(retry_after) = self.blocked_for(portal, method, now_ms) {
                // No call: a blocked method answers nothing but the block until its reset.
                return Err(EnrichError::MethodBlocked {
                    method: method.to_string(),
                    retry_after,
                });
            }
            params
        };
        let mut credentials = self.credentials(portal, domain).await?;
        let mut refreshed = false;
        let mut delay = self.backoff;
        for _ in 0..self.max_tries {
            self.limiter.acquire(portal).await;
            match self.send(&credentials, method, &params).await {
                Ok(answer) => {
                    self.learn(portal, method, &params, &answer);
                    return Ok(answer);
                }
                Err(Failure::MethodBlocked) => {
                    // Minutes, not seconds: the message waits in the queue, not this process.
                    let retry_after = self.block(portal, method);
                    tracing::warn!(portal = %portal, method, wait_ms = retry_after.as_millis() as u64,
                        "bitrix24 OPERATION_TIME_LIMIT: method blocked; no call to it until its reset");
                    return Err(EnrichError::MethodBlocked {
                        method: method.to_string(),
                        retry_after,
                    });
                }
                Err(Failure::Enrich(e)) => return Err(e),
                Err(Failure::ExpiredToken) => match (&credentials, refreshed) {
                    (Credentials::OAuth(tokens), false) => {
                        credentials = Credentials::OAuth(self.refresh_or_reload(tokens).await?);
                        refreshed = true;
                    }
                    _ => {
                        return Err(EnrichError::Permanent(format!(
                            "{method}: token still expired after refresh"
                        )))
                    }
                },
                Err(Failure::RateLimited) => {
                    tracing::warn!(portal = %portal, method, delay_ms = delay.as_millis() as u64,
                        "bitrix24 rate limit hit; backing off");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
            }
        }
        Err(EnrichError::Transient {
            reason: format!("{method}: portal kept refusing (rate limit)"),
            retry_after: Some(delay),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(server_endpoint: &str) -> PortalTokens {
        PortalTokens {
            member_id: "m".into(),
            domain: "x.bitrix24.ru".into(),
            application_token: Secret::new("a"),
            access_token: Secret::new("b"),
            refresh_token: Secret::new("c"),
            expires_at_ms: 0,
            client_endpoint: "https://x.bitrix24.ru/rest/".into(),
            server_endpoint: server_endpoint.into(),
            scope: "crm".into(),
        }
    }

    /// on-app-uninstall.md's sample names oauth.bitrix24.tech as the portal's OAuth server.
    #[test]
    fn refresh_goes_to_the_portals_known_oauth_server_only() {
        let configured = "https://oauth.bitrix.info";
        assert_eq!(
            oauth_server_for(&tokens("https://oauth.bitrix24.tech/rest/"), configured),
            "https://oauth.bitrix24.tech"
        );
        assert_eq!(oauth_server_for(&tokens(""), configured), configured);
        for hostile in [
            "https://evil.example/rest/",
            "http://oauth.bitrix24.tech/rest/",
            "https://oauth.bitrix24.tech:8443/rest/",
            "https://oauth.bitrix24.tech.evil.example/rest/",
        ] {
            assert_eq!(
                oauth_server_for(&tokens(hostile), configured),
                configured,
                "{hostile}"
            );
        }
        // The configured server's own host (a test's loopback OAuth server) is trusted.
        assert_eq!(
            oauth_server_for(&tokens("http://127.0.0.1:9/rest/"), "http://127.0.0.1:9"),
            "http://127.0.0.1:9"
        );
    }

    /// Five consumers, the poller and the app's drain together stay within 2 requests/s.
    #[test]
    fn consumers_share_the_portal_budget() {
        let share = RateLimit::default().shared_by(5 + 2);
        assert!((share.per_second * 7.0 - 2.0).abs() < 1e-9);
        assert!(share.burst * 7.0 <= 50.0 + 1e-9);
        assert_eq!(RateLimit::default().shared_by(0), RateLimit::default());
    }

    /// limits.md's plans as RELAY_B24_RATE_LIMIT spells them; anything else is refused.
    #[test]
    fn rate_limit_setting_reads_rate_and_bucket() {
        assert_eq!(RateLimit::parse("2/50"), Some(RateLimit::default()));
        assert_eq!(
            RateLimit::parse(" 5 / 250 "),
            Some(RateLimit {
                per_second: 5.0,
                burst: 250.0
            })
        );
        for bad in [
            "2", "2/", "/50", "0/50", "2/0", "-2/50", "two/50", "inf/50", "NaN/50",
        ] {
            assert_eq!(RateLimit::parse(bad), None, "{bad}");
        }
        let config = RelayConfig {
            b24_consumers: 5,
            b24_rate_limit: RateLimit::parse("5/250"),
            ..RelayConfig::default()
        };
        let share = client_share(&config);
        assert!((share.per_second * 7.0 - 5.0).abs() < 1e-9);
        assert!((share.burst * 7.0 - 250.0).abs() < 1e-9);
        assert_eq!(
            client_share(&RelayConfig::default()),
            RateLimit::default(),
            "one process alone takes the standard plan's whole bucket"
        );
    }

    #[test]
    fn batch_commands_name_their_method() {
        assert_eq!(command_method(&json!("crm.deal.get?id=1")), "crm.deal.get");
        assert_eq!(command_method(&json!("app.info")), "app.info");
    }

    #[test]
    fn webhook_urls_serve_their_own_portal_only() {
        let urls = WebhookUrls::parse(&Secret::new(
            "m1=https://a.bitrix24.ru/rest/1/x/, https://b.bitrix24.ru/rest/1/y/",
        ));
        assert!(urls.for_portal("m1", Some(Some("other"))).is_some());
        assert!(urls.for_portal("m2", Some(Some("b.bitrix24.ru"))).is_some());
        assert!(urls.for_portal("m2", Some(Some("c.bitrix24.ru"))).is_none());
        assert!(urls.for_portal("m2", Some(None)).is_none());
        // An operator's command names the portal itself.
        assert!(urls.for_portal("m2", None).is_some());
    }
}
