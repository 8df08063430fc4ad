//! Middle stage of a delivery: dispatch. A prepared body goes to one route destination, signed
//! (`forward`), and comes back as a `ForwardResult`; `settle_forward` turns that into the
//! attempt line, the route's log line and what the message does next (`Sent`).

use super::attempts::AttemptLine;
use super::fanout::{route_outcome, RouteOutcome};
use super::{url_host, Consumer, Hold, Outcome};
use crate::error::ForwardError;
use crate::event::Family;
use crate::forward::{deliver, redact_url, Delivery, Signer};
use crate::ports::{AttemptOutcome, QueueMessage};
use crate::routes::RouteDestination;
use serde_json::Value;
use std::time::{Duration, Instant};

/// One POST of one body to one route destination.
pub(super) struct Target<'a> {
    pub(super) event_id: &'a str,
    pub(super) webhook_id: &'a str,
    pub(super) family: Family,
    pub(super) route: &'a str,
    pub(super) destination: &'a RouteDestination,
    pub(super) body: &'a Value,
}

/// What a POST came to: delivered (the caller completes), or the message's outcome (retry,
/// or parked, already recorded).
pub(super) enum Sent {
    Delivered,
    NotDelivered(Outcome),
}

/// What dispatching one body to one destination came to, before anything is recorded.
enum ForwardResult {
    /// The destination answered 2xx.
    Delivered { status: u16, latency_ms: u64 },
    /// The destination failed or refused (`ForwardError` says whether to retry).
    Failed {
        error: ForwardError,
        latency_ms: u64,
    },
    /// Not sent: the destination was disabled before (it answered 410 Gone).
    Disabled { why: String },
    /// Not sent for a fault on this side (a store down, an unusable secret: retry) or in the
    /// body itself (park, with the reason). Already logged; no attempt line.
    Held { park: Option<String> },
}

impl Consumer {
    /// POSTs one body to one destination and records the attempt under its route. Gone (410)
    /// disables that destination's URL only; every other answer touches this message only.
    pub(super) async fn post_to(
        &self,
        message: &QueueMessage,
        hold: &Hold,
        target: &Target<'_>,
        now_ms: i64,
    ) -> Sent {
        let result = self.dispatch(target, now_ms).await;
        self.settle_forward(message, hold, target, result, now_ms)
            .await
    }

    /// The destination's own secret, else the relay's. `Err`: a secret that cannot sign, so
    /// the delivery is held rather than sent unsigned.
    fn signer_for(&self, destination: &RouteDestination) -> Result<Option<Signer>, String> {
        match &destination.secret {
            Some(secret) => Signer::from_secret(secret)
                .map(Some)
                .map_err(|e| format!("the route destination's secret is unusable: {e}")),
            None => self.signer.clone(),
        }
    }

    async fn dispatch(&self, target: &Target<'_>, now_ms: i64) -> ForwardResult {
        let url = target.destination.url.as_str();
        let signer = match self.signer_for(target.destination) {
            Ok(signer) => signer,
            Err(reason) => {
                tracing::error!(event_id = %target.event_id, route = %target.route, %reason, "signing secret unusable; holding event");
                return ForwardResult::Held { park: None };
            }
        };
        if let Some(disabled) = self.destination_disabled(target).await {
            return disabled;
        }
        let bytes = match serde_json::to_vec(target.body) {
            Ok(bytes) => bytes,
            Err(e) => {
                return ForwardResult::Held {
                    park: Some(format!("body not serialisable: {e}")),
                }
            }
        };
        let started = Instant::now();
        let answer = deliver(
            &self.http,
            &Delivery {
                url,
                msg_id: target.webhook_id,
                timestamp: now_ms.div_euclid(1000),
                body: &bytes,
                signer: signer.as_ref(),
                timeout: self.forward_timeout,
                headers: &target.destination.headers,
            },
        )
        .await;
        let latency_ms = started.elapsed().as_millis() as u64;
        match answer {
            Ok(status) => ForwardResult::Delivered { status, latency_ms },
            Err(error) => ForwardResult::Failed { error, latency_ms },
        }
    }

    /// `Some`: the destination answered 410 before and stays disabled, or its status is
    /// unknown (the store is down: held). An "enabled" answer stands for a second.
    async fn destination_disabled(&self, target: &Target<'_>) -> Option<ForwardResult> {
        let url = target.destination.url.as_str();
        let now = Instant::now();
        if self.enabled_destinations.recently_enabled(url, now) {
            return None;
        }
        match self.ports.destinations.disabled(url).await {
            Ok(None) => {
                self.enabled_destinations.remember(url, now);
                None
            }
            Ok(Some(why)) => Some(ForwardResult::Disabled { why }),
            Err(e) => {
                tracing::warn!(event_id = %target.event_id, error = %e, "destination status unavailable");
                Some(ForwardResult::Held { park: None })
            }
        }
    }

    /// The attempt line, the route's log line and the message's next step for one result.
    async fn settle_forward(
        &self,
        message: &QueueMessage,
        hold: &Hold,
        target: &Target<'_>,
        result: ForwardResult,
        now_ms: i64,
    ) -> Sent {
        let retry = |hint: Option<Duration>| {
            Sent::NotDelivered(Outcome::RetryAfter(
                self.schedule.delay(message.receive_count, hint),
            ))
        };
        let shown = redact_url(&target.destination.url);
        let line = |outcome| {
            AttemptLine::new(target.event_id, now_ms, &shown, outcome).on_route(Some(target.route))
        };
        let (event_id, route) = (target.event_id, target.route);
        let (latency_ms, error) = match result {
            ForwardResult::Held { park: None } => return retry(None),
            ForwardResult::Held { park: Some(reason) } => {
                return Sent::NotDelivered(self.park_held(message, hold, &reason).await)
            }
            ForwardResult::Disabled { why } => {
                let reason = format!("destination disabled: {why}");
                route_outcome(&self.routes, event_id, route, RouteOutcome::Failed);
                let line = line(AttemptOutcome::Disabled).because(reason.clone());
                self.record(line).await;
                return Sent::NotDelivered(self.park_held(message, hold, &reason).await);
            }
            ForwardResult::Delivered { status, latency_ms } => {
                // Billed by the byte: the webhook-id only where it is not the event id (news on a
                // redelivery), the route only where a routes file names it.
                let webhook_id = (target.webhook_id != event_id).then_some(target.webhook_id);
                let named_route = (!self.routes.implicit).then_some(route);
                tracing::info!(%event_id, webhook_id, family = %target.family, route = named_route, status, latency_ms, "delivered");
                route_outcome(&self.routes, event_id, route, RouteOutcome::Delivered);
                let line = line(AttemptOutcome::Delivered).answered(Some(status), latency_ms);
                self.record(line).await;
                return Sent::Delivered;
            }
            ForwardResult::Failed { error, latency_ms } => (latency_ms, error),
        };
        match error {
            ForwardError::Retryable {
                status,
                retry_after,
                reason,
            } => {
                tracing::warn!(%event_id, %route, ?status, %reason, "delivery failed; will retry");
                route_outcome(&self.routes, event_id, route, RouteOutcome::Failed);
                let line = line(AttemptOutcome::Retry).answered(status, latency_ms);
                self.record(line.because(reason)).await;
                retry(retry_after)
            }
            ForwardError::Permanent { status, reason } => {
                tracing::error!(%event_id, %route, status, "destination refused the event; parking it");
                route_outcome(&self.routes, event_id, route, RouteOutcome::Failed);
                let line = line(AttemptOutcome::DeadLetter).answered(Some(status), latency_ms);
                self.record(line.because(reason.clone())).await;
                Sent::NotDelivered(self.park_held(message, hold, &reason).await)
            }
            ForwardError::Gone => {
                let url = target.destination.url.as_str();
                let reason = "destination answered 410 Gone".to_string();
                tracing::error!(destination_host = %url_host(url), %route, "DESTINATION DISABLED: it answered 410 Gone; \
                    no event goes there until it is re-enabled; events are parked in the DLQ");
                route_outcome(&self.routes, event_id, route, RouteOutcome::Failed);
                if let Err(e) = self.ports.destinations.disable(url, &reason, now_ms).await {
                    tracing::error!(error = %e, "could not store the disabled destination");
                }
                // After the store knows: a delivery asking it from now on hears "disabled".
                self.enabled_destinations.forget(url);
                let line = line(AttemptOutcome::Disabled).answered(Some(410), latency_ms);
                self.record(line.because(reason.clone())).await;
                Sent::NotDelivered(self.park_held(message, hold, &reason).await)
            }
        }
    }
}
