//! The app family's door into ingress: when an `AppLifecycle` is wired, ONAPPINSTALL,
//! ONAPPUNINSTALL, ONAPPUPDATE, ONAPPTEST and ONOFFLINEEVENT are verified and acted on by it
//! (app.info for installs, the stored token otherwise), and only then queued if it says so.

use super::{malformed, Draft, IngestReply, IngestRequest, Ingress, MAX_BODY_BYTES};
use crate::error::IngestError;
use crate::event::{RelayEvent, Source};
use crate::lifecycle::install::AppOutcome;
use crate::parse::bitrix24::parse_bitrix24;
use crate::parse::{body_encoding, decode_document, detect_source, strip_secrets};
use crate::routing::route;
use serde_json::json;
use std::time::SystemTime;

/// What became of an app event.
pub(super) enum AppAccepted {
    /// Acted on and queued for the destination too.
    Queued(AppOutcome, RelayEvent),
    /// Acted on; nothing to forward (ONOFFLINEEVENT; ONAPPTEST is forwarded, see install.rs).
    Answered(AppOutcome),
}

impl Ingress {
    /// `handle` for the app family's URL when a lifecycle is wired.
    pub(super) async fn handle_app(&self, req: IngestRequest<'_>, now: SystemTime) -> IngestReply {
        match self.accept_app(req, now).await {
            Ok(AppAccepted::Queued(outcome, event)) => {
                tracing::info!(event = %event.event, family = %event.family, portal = %outcome.portal(),
                    event_id = %event.id, "app event handled and queued");
                IngestReply {
                    status: 202,
                    body: json!({"id": event.id}),
                }
            }
            Ok(AppAccepted::Answered(outcome)) => {
                tracing::info!(portal = %outcome.portal(), ?outcome, "app event handled");
                IngestReply {
                    status: 200,
                    body: json!({"ok": true}),
                }
            }
            Err(error) => IngestReply::from_error_logged(
                req.family,
                &error,
                "app event not handled",
                "app event refused",
            ),
        }
    }

    async fn accept_app(
        &self,
        req: IngestRequest<'_>,
        now: SystemTime,
    ) -> Result<AppAccepted, IngestError> {
        let Some(lifecycle) = &self.app_lifecycle else {
            return Err(IngestError::Unauthorized);
        };
        if req.body.len() > MAX_BODY_BYTES {
            return Err(IngestError::TooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        let encoding = body_encoding(req.content_type, req.body)
            .map_err(|_| IngestError::UnsupportedContentType)?;
        let document = decode_document(encoding, req.body).map_err(malformed)?;
        let delivery = match detect_source(&document).map_err(malformed)? {
            Source::Bitrix24 => parse_bitrix24(&document).map_err(malformed)?,
            // The app family has no SalesMan events.
            Source::Salesman => {
                let event = document
                    .get("event")
                    .and_then(|e| e.as_str())
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                return Err(IngestError::UnknownEvent(event));
            }
        };
        // An entity event posted to the app URL is refused as for any other family (422),
        // before anything is verified or stored.
        route(
            Source::Bitrix24,
            &delivery.event,
            &delivery.data,
            req.family,
        )?;
        let now_ms = crate::clock::unix_ms(now);
        let outcome = lifecycle
            .handle(&serde_json::Value::Object(document), now_ms)
            .await?;
        if !outcome.forward_to_destination() {
            return Ok(AppAccepted::Answered(outcome));
        }
        let mut data = delivery.data;
        strip_secrets(&mut data, &delivery.auth.secrets());
        let draft = Draft {
            source: Source::Bitrix24,
            portal: delivery.auth.member_id,
            domain: delivery.auth.domain,
            event: delivery.event,
            entity_id: None,
            ts: delivery.ts.unwrap_or(now_ms / 1000),
            data,
        };
        let event = draft.into_envelope(req.family, now);
        self.queue.send(&event).await.map_err(IngestError::Queue)?;
        Ok(AppAccepted::Queued(outcome, event))
    }
}
