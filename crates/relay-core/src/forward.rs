//! The last step of the consumer: POST the enriched event to the user's system, signed per
//! Standard Webhooks, and say what the answer means (done, retry later, give up, stop sending).
//! The retry schedule lives here too, so every delay the consumer asks SQS for is explained here.

use crate::error::{ConfigError, ForwardError};
use crate::secret::Secret;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{Duration, SystemTime};

/// A receiver that has not answered by then is treated as down (retry), not as a refusal.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);

/// SQS refuses a visibility timeout above 12 hours, so no delay may exceed it.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(12 * 60 * 60);
/// Shortest signing key accepted (Standard Webhooks secrets are 24 to 64 bytes).
pub const MIN_SIGNING_KEY_BYTES: usize = 24;

/// Signs outgoing requests with one or more `whsec_` secrets (several during rotation: the
/// receiver accepts the request if any signature matches).
#[derive(Clone)]
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} key(s), redacted)", self.keys.len())
    }
}

impl Signer {
    /// `secrets`: `whsec_<base64>` values separated by spaces. The prefix is optional, as in
    /// the reference libraries; an empty list or a value that is not base64 is a config error.
    /// Each space-separated `whsec_<base64>` must decode to at least
    /// [`MIN_SIGNING_KEY_BYTES`]: a short key is guessable offline from one signed request.
    pub fn from_secret(secrets: &Secret) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        for item in secrets.expose().split_whitespace() {
            let encoded = item.strip_prefix("whsec_").unwrap_or(item);
            let key = BASE64.decode(encoded).map_err(|_| ConfigError::Invalid {
                name: "RELAY_SIGNING_SECRET",
                reason: "each secret must be whsec_ followed by base64".into(),
            })?;
            if key.len() < MIN_SIGNING_KEY_BYTES {
                return Err(ConfigError::Invalid {
                    name: "RELAY_SIGNING_SECRET",
                    reason: format!(
                        "a secret decodes to {} bytes; at least {MIN_SIGNING_KEY_BYTES} are needed",
                        key.len()
                    ),
                });
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(ConfigError::Missing("RELAY_SIGNING_SECRET"));
        }
        Ok(Signer { keys })
    }

    /// The `webhook-signature` header value: `v1,<base64>` per key, space-separated.
    pub fn signature_header(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        self.keys
            .iter()
            .map(|key| format!("v1,{}", sign_one(key, msg_id, timestamp, body)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn sign_one(key: &[u8], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    // new_from_slice only fails for fixed-size-key MACs; HMAC takes any length.
    let mut mac = match <Hmac<Sha256>>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    BASE64.encode(mac.finalize().into_bytes())
}

/// Exponential backoff with jitter: attempt n waits a random time in the top quarter of
/// `min(cap, base * 2^(n-1))` (never below `min`), which still spreads the retries of a burst
/// but keeps a known lower bound on the whole retry window (`min_window`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetrySchedule {
    pub base: Duration,
    pub cap: Duration,
    /// Never retry sooner: a zero delay would hand the message straight back.
    pub min: Duration,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(60 * 60),
            min: Duration::from_secs(1),
        }
    }
}

impl RetrySchedule {
    /// Delay before delivery number `receive_count + 1`. A `Retry-After` from the receiver
    /// wins over the schedule; everything stays within SQS's 12-hour visibility limit.
    pub fn delay(&self, receive_count: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(asked) = retry_after {
            return asked.clamp(self.min, MAX_RETRY_DELAY);
        }
        let ceiling = self.ceiling(receive_count);
        let floor = (ceiling * 3 / 4).max(self.min);
        let span_ms = (ceiling - floor).as_millis() as u64;
        floor + Duration::from_millis(fastrand::u64(0..=span_ms))
    }

    /// The shortest and longest time from the first delivery to the last of `tries`
    /// deliveries when every try fails without a `Retry-After` (what a dead destination gets
    /// before the event is parked in the DLQ).
    pub fn window(&self, tries: u32) -> (Duration, Duration) {
        (1..tries).fold((Duration::ZERO, Duration::ZERO), |(low, high), try_no| {
            let ceiling = self.ceiling(try_no);
            (low + (ceiling * 3 / 4).max(self.min), high + ceiling)
        })
    }

    fn ceiling(&self, receive_count: u32) -> Duration {
        let exponent = receive_count.saturating_sub(1).min(30);
        self.base
            .saturating_mul(1u32 << exponent)
            .min(self.cap)
            .min(MAX_RETRY_DELAY)
            .max(self.min)
    }
}

/// Deliveries before a message goes to the dead-letter queue (SQS `maxReceiveCount`, the
/// embedded queue's limit): with the default schedule the last try comes at least 24 h after
/// the first (`RetrySchedule::window`), as Svix and Stripe retry for days, not minutes.
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 42;

/// `Retry-After` as delta-seconds or an HTTP date; a date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What a destination's answer means for the event.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Result<(), ForwardError> {
    match status {
        200..=299 => Ok(()),
        410 => Err(ForwardError::Gone),
        408 | 425 | 429 | 500..=599 => Err(ForwardError::Retryable {
            status: Some(status),
            retry_after,
            reason: format!("destination answered {status}"),
        }),
        _ => Err(ForwardError::Permanent {
            status,
            reason: format!("destination answered {status}"),
        }),
    }
}

/// One POST of an already-serialised body. `signer: None` sends no signature header (only
/// when the operator configured no secret; the consumer warns about it at start-up).
pub struct Delivery<'a> {
    pub url: &'a str,
    pub msg_id: &'a str,
    pub timestamp: i64,
    pub body: &'a [u8],
    pub signer: Option<&'a Signer>,
    pub timeout: Duration,
    /// A route destination's own headers. Never one `deliver` sets itself: those are skipped,
    /// so no configuration can forge a signature or an id.
    pub headers: &'a [(String, String)],
}

/// Headers `deliver` sets itself; a route's extra headers may not replace them.
pub const RESERVED_HEADERS: [&str; 4] = [
    "content-type",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Sends one delivery. `Ok(status)` only for 2xx; the error says whether to retry.
pub async fn deliver(http: &reqwest::Client, delivery: &Delivery<'_>) -> Result<u16, ForwardError> {
    let mut request = http
        .post(delivery.url)
        .timeout(delivery.timeout)
        .header("content-type", "application/json")
        .header("webhook-id", delivery.msg_id)
        .header("webhook-timestamp", delivery.timestamp.to_string())
        .body(delivery.body.to_vec());
    for (name, value) in delivery.headers {
        if !RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    if let Some(signer) = delivery.signer {
        request = request.header(
            "webhook-signature",
            signer.signature_header(delivery.msg_id, delivery.timestamp, delivery.body),
        );
    }
    let response = request.send().await.map_err(|e| ForwardError::Retryable {
        status: None,
        retry_after: None,
        // reqwest's message names the URL, which may hold a token in its query: say only what.
        reason: if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            "connection failed".to_string()
        } else {
            "request failed".to_string()
        },
    })?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    if (300..=399).contains(&status) {
        // Never followed: a 302 would turn the signed POST into a bodiless GET that looks
        // delivered, a 307 would send the signed body to whatever host `Location` names.
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| redact_url(&resolve_location(delivery.url, l)))
            .unwrap_or_else(|| "nowhere".to_string());
        return Err(ForwardError::Permanent {
            status,
            reason: format!(
                "destination answered {status}, a redirect to {location}; redirects are not followed: configure the final URL"
            ),
        });
    }
    classify_status(status, retry_after).map(|()| status)
}

/// `Location` may be relative to the URL that answered.
fn resolve_location(base: &str, location: &str) -> String {
    reqwest::Url::parse(base)
        .and_then(|b| b.join(location))
        .map(|u| u.to_string())
        .unwrap_or_else(|_| location.to_string())
}

/// A URL as the attempt log and the banner show it: no user info, no query, no fragment
/// (each may hold a key).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_query(None);
            parsed.set_fragment(None);
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => "<invalid url>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example in the Standard Webhooks specification (and its reference libraries' tests).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_spec_example() {
        let signer = Signer::from_secret(&Secret::new(SPEC_SECRET)).unwrap();
        assert_eq!(
            signer.signature_header(SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes()),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn rotation_gives_one_signature_per_secret() {
        // "test-secret-two-0123456789" (26 bytes).
        let other = "whsec_dGVzdC1zZWNyZXQtdHdvLTAxMjM0NTY3ODk=";
        let signer = Signer::from_secret(&Secret::new(format!("{SPEC_SECRET}  {other}"))).unwrap();
        let header = signer.signature_header(SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes());
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], SPEC_SIGNATURE);
        assert!(parts[1].starts_with("v1,") && parts[1] != SPEC_SIGNATURE);
    }

    #[test]
    fn refuses_secrets_that_are_not_base64() {
        assert!(Signer::from_secret(&Secret::new("whsec_not base64!")).is_err());
        assert!(Signer::from_secret(&Secret::new("whsec_%%%")).is_err());
        assert!(Signer::from_secret(&Secret::new("   ")).is_err());
    }

    #[test]
    fn debug_does_not_print_keys() {
        let signer = Signer::from_secret(&Secret::new(SPEC_SECRET)).unwrap();
        assert!(!format!("{signer:?}").contains("MfKQ9"));
    }

    #[test]
    fn classifies_statuses() {
        assert!(classify_status(200, None).is_ok());
        assert!(classify_status(204, None).is_ok());
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify_status(s, None), Err(ForwardError::Retryable { status: Some(x), .. }) if x == s),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(
                matches!(classify_status(s, None), Err(ForwardError::Permanent { status: x, .. }) if x == s),
                "{s}"
            );
        }
        assert!(matches!(
            classify_status(410, None),
            Err(ForwardError::Gone)
        ));
        // 3xx are not followed to another host with our signature: the user must fix the URL.
        assert!(matches!(
            classify_status(301, None),
            Err(ForwardError::Permanent { .. })
        ));
    }

    #[test]
    fn redirect_targets_are_resolved_and_redacted() {
        assert_eq!(
            redact_url(&resolve_location(
                "https://dest.example/hook",
                "/moved?key=s3cret"
            )),
            "https://dest.example/moved"
        );
        assert_eq!(
            redact_url("https://u:p@example.com/hook?token=s3cret#x"),
            "https://example.com/hook"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn schedule_grows_with_full_jitter_and_stays_capped() {
        let schedule = RetrySchedule::default();
        for attempt in 1..=40u32 {
            let ceiling = (Duration::from_secs(5) * 2u32.saturating_pow(attempt - 1).min(1 << 30))
                .min(schedule.cap);
            for _ in 0..50 {
                let d = schedule.delay(attempt, None);
                assert!(
                    d >= schedule.min && d <= ceiling.max(schedule.min),
                    "{attempt}: {d:?}"
                );
            }
        }
        // Full jitter really spreads: 200 draws at attempt 10 are not all equal.
        let draws: std::collections::HashSet<_> =
            (0..200).map(|_| schedule.delay(10, None)).collect();
        assert!(draws.len() > 10);
    }

    #[test]
    fn default_retry_window_is_at_least_a_day_with_at_most_an_hour_between_tries() {
        let schedule = RetrySchedule::default();
        let (low, high) = schedule.window(DEFAULT_MAX_RECEIVE_COUNT);
        assert!(low >= Duration::from_secs(24 * 60 * 60), "{low:?}");
        assert!(high <= Duration::from_secs(33 * 60 * 60), "{high:?}");
        // One try fewer would fall short of a day: the count is not padded blindly.
        let (shorter, _) = schedule.window(DEFAULT_MAX_RECEIVE_COUNT - 1);
        assert!(shorter < Duration::from_secs(24 * 60 * 60), "{shorter:?}");
        for attempt in 1..=DEFAULT_MAX_RECEIVE_COUNT {
            assert!(schedule.delay(attempt, None) <= Duration::from_secs(60 * 60));
        }
    }

    #[test]
    fn retry_after_wins_but_is_clamped_to_the_visibility_limit() {
        let schedule = RetrySchedule::default();
        assert_eq!(
            schedule.delay(1, Some(Duration::from_secs(300))),
            Duration::from_secs(300)
        );
        assert_eq!(
            schedule.delay(1, Some(Duration::from_secs(48 * 3600))),
            MAX_RETRY_DELAY
        );
        assert_eq!(schedule.delay(1, Some(Duration::ZERO)), schedule.min);
    }
}
