//! Transport-free ingress: (family, content type, query, headers, body) -> reply.
//! The Lambda entrypoints and `relay serve` both call `Ingress::handle`; it parses, verifies,
//! routes, strips secrets, builds the envelope and answers only after the queue has it.

use crate::config::RelayConfig;
use crate::error::IngestError;
use crate::event::{envelope_id, rfc3339_seconds, Family, RelayEvent, Source, ENVELOPE_VERSION};
use crate::lifecycle::install::AppLifecycle;
use crate::parse::bitrix24::{form_credentials, parse_bitrix24, Bitrix24Auth};
use crate::parse::salesman::{fan_out, parse_salesman};
use crate::parse::{
    body_encoding, decode_document, detect_source, strip_secrets, BodyEncoding, ParseError,
};
use crate::ports::{Queue, TokenStore};
use crate::routing::{family_of, route};
use crate::verify::{
    salesman_presented_secrets, verify_configured_application_token, verify_salesman_secret,
    verify_stored_application_token, RecentStoredTokens,
};
use serde_json::json;
use std::sync::Arc;
use std::time::SystemTime;

/// Bodies above this get 413 before anything is parsed.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What ingress needs of an HTTP request, whatever carried it.
#[derive(Clone, Copy, Debug)]
pub struct IngestRequest<'a> {
    /// The family of the URL that was called (`/deal`, `ingest-deal`).
    pub family: Family,
    pub content_type: Option<&'a str>,
    /// Raw query string without `?` (SalesMan's `token=`).
    pub query: Option<&'a str>,
    /// Value of the `X-Relay-Token` header.
    pub relay_token_header: Option<&'a str>,
    pub body: &'a [u8],
}

/// Status and JSON body: `{"id": "<envelope id>"}` on 202, `{"error": "..."}` otherwise
/// (422 adds `"family"`: the family whose URL takes the event).
#[derive(Clone, Debug, PartialEq)]
pub struct IngestReply {
    pub status: u16,
    pub body: serde_json::Value,
}

impl IngestReply {
    /// The one place an `IngestError` becomes an HTTP status.
    pub fn from_error(error: &IngestError) -> Self {
        let status = match error {
            IngestError::Malformed(_) => 400,
            IngestError::Unauthorized => 401,
            IngestError::TooLarge { .. } => 413,
            IngestError::UnsupportedContentType => 415,
            IngestError::WrongFamily { .. }
            | IngestError::UnknownEvent(_)
            | IngestError::NotTaken(_) => 422,
            IngestError::Queue(_)
            | IngestError::TokenStore(_)
            | IngestError::VerifierUnavailable => 503,
        };
        let body = match error {
            IngestError::WrongFamily { expected, .. } => {
                json!({"error": error.to_string(), "family": expected})
            }
            _ => json!({"error": error.to_string()}),
        };
        IngestReply { status, body }
    }

    /// The reply to a request that failed, logged once: `error!` with the adapter's cause
    /// when the relay is at fault (5xx: `not_done`), `warn!` when the request is (`refused`).
    fn from_error_logged(
        family: Family,
        error: &IngestError,
        not_done: &'static str,
        refused: &'static str,
    ) -> Self {
        let reply = Self::from_error(error);
        if reply.status >= 500 {
            // The cause is the adapter's message (SQS, DynamoDB), never request data.
            let cause = std::error::Error::source(error)
                .map(ToString::to_string)
                .unwrap_or_default();
            tracing::error!(
                family = %family,
                status = reply.status,
                error = %error,
                cause = %cause,
                "{not_done}"
            );
        } else {
            tracing::warn!(family = %family, status = reply.status, error = %error, "{refused}");
        }
        reply
    }
}

pub struct Ingress {
    queue: Arc<dyn Queue>,
    config: RelayConfig,
    /// Extension point: application_tokens stored per portal at install time, accepted in
    /// addition to `RELAY_B24_APP_TOKENS`. `None`: only the configured tokens count.
    token_store: Option<Arc<dyn TokenStore>>,
    /// Stored tokens lately matched, so a portal's events do not each read the store.
    recent_stored_tokens: RecentStoredTokens,
    /// The app family's install/uninstall handling (`ingest::app`); `None`: app events are
    /// verified and queued like any other.
    app_lifecycle: Option<Arc<AppLifecycle>>,
}

impl Ingress {
    pub fn new(queue: Arc<dyn Queue>, config: RelayConfig) -> Self {
        Ingress {
            queue,
            config,
            token_store: None,
            recent_stored_tokens: RecentStoredTokens::new(std::time::Duration::ZERO),
            app_lifecycle: None,
        }
    }

    /// Hands the app family's events to `lifecycle` (see `ingest::app`).
    pub fn with_app_lifecycle(mut self, lifecycle: Arc<AppLifecycle>) -> Self {
        self.app_lifecycle = Some(lifecycle);
        self
    }

    /// Also accepts a Bitrix24 event whose application_token equals the one stored for its
    /// portal (`PORTALS` / `<member_id>`), for apps installed through ONAPPINSTALL.
    pub fn with_token_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.token_store = Some(store);
        self
    }

    /// Trusts a stored token that matched for `ttl` before reading it again (see
    /// [`RecentStoredTokens`] for what that allows); zero, the default, reads every time.
    pub fn with_stored_token_cache(mut self, ttl: std::time::Duration) -> Self {
        self.recent_stored_tokens = RecentStoredTokens::new(ttl);
        self
    }

    pub async fn handle(&self, req: IngestRequest<'_>, now: SystemTime) -> IngestReply {
        if req.family == Family::App && self.app_lifecycle.is_some() {
            return self.handle_app(req, now).await;
        }
        let function_family = req.family;
        match self.accept(req, now).await {
            Ok(events) => {
                for event in &events {
                    log_queued(event, function_family);
                }
                let first = events.first().map(|e| e.id.clone()).unwrap_or_default();
                let body = if events.len() > 1 {
                    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
                    json!({"id": first, "ids": ids})
                } else {
                    json!({"id": first})
                };
                IngestReply { status: 202, body }
            }
            Err(error) => IngestReply::from_error_logged(
                req.family,
                &error,
                "event not queued",
                "event refused",
            ),
        }
    }

    /// Everything up to and including the queue: the envelopes once `Queue::send` said Ok for
    /// each (one, except for SalesMan deliveries naming several entities).
    async fn accept(
        &self,
        req: IngestRequest<'_>,
        now: SystemTime,
    ) -> Result<Vec<RelayEvent>, IngestError> {
        // Size first: nothing of an oversized body is read.
        if req.body.len() > MAX_BODY_BYTES {
            return Err(IngestError::TooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        let encoding = body_encoding(req.content_type, req.body)
            .map_err(|_| IngestError::UnsupportedContentType)?;
        // A Bitrix24 form's token is found by one pass over its pairs: a forger's body then
        // costs a scan, not a decoded tree. (The app family's installs carry no known token
        // yet; JSON has no such shortcut, its decoder's budget bounds it instead.)
        let mut verified_early = None;
        if encoding == BodyEncoding::Form && req.family != Family::App {
            if let Some((event, auth)) = form_credentials(req.body) {
                self.verify_bitrix24(&auth, &event, now).await?;
                verified_early = Some(auth);
            }
        }
        let document = decode_document(encoding, req.body).map_err(malformed)?;
        let received_second = crate::clock::unix_ms(now) / 1000;

        let drafts = match detect_source(&document).map_err(malformed)? {
            Source::Salesman => self.salesman_drafts(&req, &document, received_second)?,
            Source::Bitrix24 => vec![(
                req.family,
                self.bitrix24_draft(&req, &document, now, verified_early)
                    .await?,
            )],
        };

        let events: Vec<RelayEvent> = drafts
            .into_iter()
            .map(|(family, draft)| draft.into_envelope(family, now))
            .collect();
        send_all(&self.queue, &events).await?;
        Ok(events)
    }

    /// One draft per entity the delivery names (`parse::salesman::fan_out`), each with the
    /// family of its own kind: a `client.import` sent to the company URL also queues its
    /// contacts (`person.import`) for the contact family.
    fn salesman_drafts(
        &self,
        req: &IngestRequest<'_>,
        document: &serde_json::Map<String, serde_json::Value>,
        received_second: i64,
    ) -> Result<Vec<(Family, Draft)>, IngestError> {
        // The secret is in the URL, so it is checked before the body's fields are.
        verify_salesman_secret(
            self.config.salesman_secret.as_ref(),
            req.query,
            req.relay_token_header,
        )?;
        let delivery = parse_salesman(document).map_err(malformed)?;
        route(
            Source::Salesman,
            &delivery.event,
            &delivery.data,
            req.family,
        )?;
        let presented = salesman_presented_secrets(req.query, req.relay_token_header);
        let mut known: Vec<&str> = presented.iter().map(String::as_str).collect();
        known.extend(self.config.salesman_secret.as_ref().map(|s| s.expose()));
        let mut delivery = delivery;
        strip_secrets(&mut delivery.data, &known);
        let items = fan_out(&delivery).map_err(malformed)?;
        Ok(items
            .into_iter()
            .map(|item| {
                // What the sender named keeps the routed family (`client.change.recv` is
                // requisite); a derived event takes its own (`person.import`: contact).
                let family = if item.event == delivery.event {
                    req.family
                } else {
                    family_of(Source::Salesman, &item.event).unwrap_or(req.family)
                };
                let draft = Draft {
                    source: Source::Salesman,
                    portal: delivery.portal.clone(),
                    domain: None,
                    event: item.event,
                    entity_id: item.entity_id,
                    // SalesMan sends no timestamp and never retries, so there is no second
                    // delivery to recognise: the receive second stands in for `ts`. Two
                    // identical bodies in one second are then one event (SQS FIFO drops the
                    // duplicate), which is harmless since the consumer fetches the entity's
                    // current state anyway.
                    ts: received_second,
                    data: item.data,
                };
                (family, draft)
            })
            .collect())
    }

    /// Where ONAPPINSTALL handling (confirm with `app.info`, store the portal's tokens) hooks
    /// in: `delivery.auth` holds the OAuth tokens as `Secret`s, and they go no further.
    async fn bitrix24_draft(
        &self,
        req: &IngestRequest<'_>,
        document: &serde_json::Map<String, serde_json::Value>,
        now: SystemTime,
        verified_early: Option<Bitrix24Auth>,
    ) -> Result<Draft, IngestError> {
        let received_second = crate::clock::unix_ms(now) / 1000;
        let delivery = parse_bitrix24(document).map_err(malformed)?;
        // The decoded document names the same portal and token the early scan verified
        // unless PHP's key rules read the body differently; then it is verified again.
        let same = verified_early.is_some_and(|early| {
            early.member_id == delivery.auth.member_id
                && early.application_token == delivery.auth.application_token
        });
        if !same {
            self.verify_bitrix24(&delivery.auth, &delivery.event, now)
                .await?;
        }
        route(
            Source::Bitrix24,
            &delivery.event,
            &delivery.data,
            req.family,
        )?;
        let mut data = delivery.data;
        strip_secrets(&mut data, &delivery.auth.secrets());
        Ok(Draft {
            source: Source::Bitrix24,
            portal: delivery.auth.member_id,
            domain: delivery.auth.domain,
            event: delivery.event,
            entity_id: delivery.entity_id,
            // Bitrix24 always sends `ts`; should a sender omit it, the receive second keeps
            // the event rather than refusing it.
            ts: delivery.ts.unwrap_or(received_second),
            data,
        })
    }

    /// Configured tokens first (no I/O), then the portal's stored token if a store is wired.
    async fn verify_bitrix24(
        &self,
        auth: &Bitrix24Auth,
        event: &str,
        now: SystemTime,
    ) -> Result<(), IngestError> {
        let presented = auth.application_token.as_ref();
        if verify_configured_application_token(
            &self.config.b24_app_tokens,
            &auth.member_id,
            presented,
        )
        .is_ok()
        {
            return Ok(());
        }
        if let Some(store) = &self.token_store {
            let recent = &self.recent_stored_tokens;
            if recent.matches(&auth.member_id, presented, now) {
                return Ok(());
            }
            if verify_stored_application_token(store.as_ref(), &auth.member_id, presented)
                .await
                .map_err(IngestError::TokenStore)?
            {
                if let Some(token) = presented {
                    recent.remember(&auth.member_id, token, now);
                }
                return Ok(());
            }
        }
        tracing::warn!(portal = %auth.member_id, event = %event, "application_token rejected");
        Err(IngestError::Unauthorized)
    }
}

/// The one line per queued event: its id (the consumer's `event_id`), what it is and whose.
/// The source is in the event's name (Bitrix24's `ONCRM…`, SalesMan's `deal.add`), the family
/// in the function's log group, unless a SalesMan delivery fans out to another family.
fn log_queued(event: &RelayEvent, function_family: Family) {
    let entity_id = event.entity_id.as_deref().unwrap_or("-");
    if event.family == function_family {
        tracing::info!(event_id = %event.id, event = %event.event, portal = %event.portal,
            entity_id, "event queued");
    } else {
        tracing::info!(event_id = %event.id, event = %event.event, portal = %event.portal,
            entity_id, family = %event.family, "event queued");
    }
}

/// Sends at most this many envelopes of one delivery at a time: a SalesMan import of
/// thousands of ids must be queued within the ingest function's timeout.
const SEND_CONCURRENCY: usize = 16;

/// Queues every envelope of one delivery. They belong to different entities (FIFO groups),
/// so their order does not matter and they go out concurrently. A failure answers 5xx even if
/// some were queued: a resend of the same body gives the same envelope ids, which the queue
/// and the consumer deduplicate.
async fn send_all(queue: &Arc<dyn Queue>, events: &[RelayEvent]) -> Result<(), IngestError> {
    if let [event] = events {
        return queue.send(event).await.map_err(IngestError::Queue);
    }
    for chunk in events.chunks(SEND_CONCURRENCY) {
        let mut sends = tokio::task::JoinSet::new();
        for event in chunk {
            let (queue, event) = (queue.clone(), event.clone());
            sends.spawn(async move { queue.send(&event).await });
        }
        while let Some(joined) = sends.join_next().await {
            match joined {
                Ok(sent) => sent.map_err(IngestError::Queue)?,
                Err(_) => {
                    return Err(IngestError::Queue(crate::error::StoreError::Unavailable(
                        "queue send task failed".into(),
                    )))
                }
            }
        }
    }
    Ok(())
}

fn malformed(error: ParseError) -> IngestError {
    match error {
        ParseError::UnsupportedContentType => IngestError::UnsupportedContentType,
        other => IngestError::Malformed(other.to_string()),
    }
}

/// The envelope's fields once parsed, verified and stripped.
struct Draft {
    source: Source,
    portal: String,
    domain: Option<String>,
    event: String,
    entity_id: Option<String>,
    ts: i64,
    data: serde_json::Value,
}

impl Draft {
    fn into_envelope(self, family: Family, now: SystemTime) -> RelayEvent {
        RelayEvent {
            v: ENVELOPE_VERSION,
            id: envelope_id(self.source, &self.portal, &self.event, &self.data, self.ts),
            source: self.source,
            portal: self.portal,
            domain: self.domain,
            family,
            entity_type: crate::event::entity_type_of(self.source, &self.event, &self.data),
            event: self.event,
            entity_id: self.entity_id,
            ts: self.ts,
            received_at: rfc3339_seconds(now),
            data: self.data,
        }
    }
}

mod app;
/// Shared with relay-lambda's handler tests through the `test-support` feature.
#[cfg(any(test, feature = "test-support"))]
pub mod recording_queue;
#[cfg(test)]
mod tests;
