//! Routes at the consumer, after the forwarded body is built: it goes to every destination
//! whose route matches it. One destination is posted inline, as before routes existed; two or
//! more each get a queue message of their own (`DeliveryMessage`), then the event completes.
//!
//! Why one queue message per destination rather than one POST loop per event: each message is
//! claimed (its own dedup key), retried with its own backoff, parked in the dead-letter queue
//! and replayed on its own, and its FIFO group is the entity's group plus route and
//! destination, so order per entity per destination holds while one destination's retries
//! hold back only its own group. Retrying the event as a whole would make every destination
//! of the entity wait for the slowest one, and a dead letter could not say which destination
//! it is for. The body is built once (enrich, diff, snapshot) and travels in the message, so
//! every destination gets the same state; the webhook-id stays the event's for all of them.

use super::{Consumer, Finish, HeldClaim, InBatch, Outcome};
use crate::error::ForwardError;
use crate::event::{Family, RelayEvent, ENVELOPE_VERSION};
use crate::forward::{deliver, redact_url, Delivery, Signer};
use crate::ports::{Attempt, OutgoingMessage, QueueMessage};
use crate::routes::{Delivery as RouteDelivery, RouteDestination};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Instant;

/// The `kind` that tells a delivery message from an ingress envelope (which has none).
pub const DELIVERY_KIND: &str = "delivery";
/// SQS FIFO caps MessageGroupId at 128 characters.
const MAX_GROUP_ID_CHARS: usize = 128;

/// One destination's share of a fanned-out event, as it waits on the queue. It names its
/// destination by route and position, never by URL or secret: nothing secret sits in the queue,
/// and a replay after the routes file was fixed goes where the file now says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryMessage {
    pub v: u32,
    pub kind: String,
    /// The event's envelope id: what `relay attempts` and `relay replay` take.
    pub id: String,
    pub webhook_id: String,
    pub family: Family,
    pub route: String,
    /// Position of the destination in its route.
    pub destination: usize,
    /// The destination as the attempt log shows it (`redact_url`), so a destination that the
    /// routes file moved to another position is noticed rather than posted to.
    pub target: String,
    /// Exactly what the destination receives (the route's projection applied).
    pub body: Value,
}

impl DeliveryMessage {
    /// `Some` only for a delivery message this build understands.
    pub fn from_body(body: &str) -> Option<DeliveryMessage> {
        serde_json::from_str::<DeliveryMessage>(body)
            .ok()
            .filter(|m| m.kind == DELIVERY_KIND && m.v == ENVELOPE_VERSION && !m.id.is_empty())
    }

    /// The dedup key of this destination's delivery of this webhook-id: claimed before the
    /// POST, completed after it, so a redelivered message never posts twice.
    pub fn claim_id(&self) -> String {
        delivery_key(&self.webhook_id, &self.route, self.destination)
    }
}

/// SHA-256 (hex) of webhook-id, route and position: the claim key and the queue's
/// deduplication id of one destination's delivery.
fn delivery_key(webhook_id: &str, route: &str, destination: usize) -> String {
    let mut hash = Sha256::new();
    hash.update(webhook_id.as_bytes());
    hash.update([0]);
    hash.update(route.as_bytes());
    hash.update([0]);
    hash.update(destination.to_string().as_bytes());
    format!("delivery-{}", hex(&hash.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The FIFO group of one destination's deliveries for one entity: the entity's group, the
/// route and the position, readable when it fits SQS's limits, else with the route hashed.
pub fn delivery_group(entity_group: &str, route: &str, destination: usize) -> String {
    let readable = format!("{entity_group}#{route}#{destination}");
    if readable.len() <= MAX_GROUP_ID_CHARS && readable.chars().all(|c| c.is_ascii_graphic()) {
        return readable;
    }
    let digest = hex(&Sha256::digest(route.as_bytes()));
    let tail = format!("#{}#{destination}", &digest[..16]);
    let head: String = entity_group
        .chars()
        .filter(char::is_ascii_graphic)
        .take(MAX_GROUP_ID_CHARS - tail.len())
        .collect();
    format!("{head}{tail}")
}

/// One log line per route and outcome (`matched`, `delivered`, `failed`): the template's
/// metric filters count them per route. Only for a routes file: the implicit routes are one
/// destination, whose own log lines (and Forwarded/Retries/Parked metrics) say it all, so a
/// deployment without routes keeps one log line per event.
fn route_outcome(
    routes: &crate::routes::Routes,
    event_id: &str,
    route: &str,
    outcome: &'static str,
) {
    if !routes.implicit {
        tracing::info!(%event_id, %route, outcome, "route outcome");
    }
}

/// One POST of one body to one route destination.
struct Target<'a> {
    event_id: &'a str,
    webhook_id: &'a str,
    family: Family,
    route: &'a str,
    destination: &'a RouteDestination,
    body: &'a Value,
}

/// What a POST came to: delivered (the caller completes), or the message's outcome (retry,
/// or parked, already recorded).
enum Sent {
    Delivered,
    NotDelivered(Outcome),
}

impl Consumer {
    /// The body of a claimed event goes to its routes: inline to one destination, through
    /// the queue to several, nowhere (recorded, completed) when a routes file matches none.
    pub(super) async fn route_body(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        finish: Finish<'_>,
        body: Value,
        webhook_id: &str,
        now_ms: i64,
    ) -> Outcome {
        let deliveries = self.routes.deliveries(&body);
        for delivery in &deliveries {
            route_outcome(&self.routes, &event.id, delivery.route, "matched");
        }
        match deliveries.as_slice() {
            [] if self.routes.implicit => {
                self.no_destination(message, event, finish, &body, now_ms)
                    .await
            }
            [] => {
                tracing::info!(event_id = %event.id, "no route matches the event; nothing to deliver");
                self.record_route(
                    &event.id,
                    now_ms,
                    None,
                    "-",
                    "unmatched",
                    Some("no route matches".into()),
                )
                .await;
                self.finish_delivered(event, finish, now_ms).await
            }
            [one] => {
                let target = Target {
                    event_id: &event.id,
                    webhook_id,
                    family: event.family,
                    route: one.route,
                    destination: one.destination,
                    body: &one.body,
                };
                match self.post_to(message, finish.claim, &target, now_ms).await {
                    Sent::Delivered => self.finish_delivered(event, finish, now_ms).await,
                    Sent::NotDelivered(outcome) => outcome,
                }
            }
            several => {
                self.fan_out(message, event, finish, several, webhook_id, now_ms)
                    .await
            }
        }
    }

    /// Implicit routes and no URL for the family: `relay serve`'s outbox, else the DLQ.
    async fn no_destination(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        finish: Finish<'_>,
        body: &Value,
        now_ms: i64,
    ) -> Outcome {
        match &self.outbox {
            Some(outbox) => match outbox.append(body).await {
                Ok(()) => {
                    tracing::info!(event_id = %event.id, family = %event.family, "written to the outbox");
                    self.record(event, now_ms, "outbox", None, 0, "delivered", None)
                        .await;
                    self.finish_delivered(event, finish, now_ms).await
                }
                Err(e) => {
                    tracing::warn!(event_id = %event.id, error = %e, "outbox unavailable");
                    Outcome::RetryAfter(self.schedule.delay(message.receive_count, None))
                }
            },
            None => {
                let reason = format!("no destination configured for family {}", event.family);
                self.record(
                    event,
                    now_ms,
                    "-",
                    None,
                    0,
                    "dead_letter",
                    Some(reason.clone()),
                )
                .await;
                self.park_claimed(message, finish.claim, &reason).await
            }
        }
    }

    /// One delivery message per destination, then the event is done (snapshot, COMPLETED).
    /// A send that fails retries the whole event: the messages already sent are dropped by
    /// the queue's deduplication or, later than its window, by their claim once delivered.
    async fn fan_out(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        finish: Finish<'_>,
        deliveries: &[RouteDelivery<'_>],
        webhook_id: &str,
        now_ms: i64,
    ) -> Outcome {
        let entity_group = event.message_group_id();
        for delivery in deliveries {
            let position = self.position(delivery);
            let queued = DeliveryMessage {
                v: ENVELOPE_VERSION,
                kind: DELIVERY_KIND.to_string(),
                id: event.id.clone(),
                webhook_id: webhook_id.to_string(),
                family: event.family,
                route: delivery.route.to_string(),
                destination: position,
                target: redact_url(&delivery.destination.url),
                body: delivery.body.clone(),
            };
            let body = match serde_json::to_string(&queued) {
                Ok(body) => body,
                Err(e) => {
                    let reason = format!("delivery message not serialisable: {e}");
                    return self.park_claimed(message, finish.claim, &reason).await;
                }
            };
            let outgoing = OutgoingMessage {
                body,
                group_id: delivery_group(&entity_group, delivery.route, position),
                dedup_id: queued.claim_id(),
            };
            if let Err(e) = self.ports.queue.send_message(&outgoing).await {
                tracing::warn!(event_id = %event.id, route = %delivery.route, error = %e, "could not queue a destination's delivery; retrying the event");
                return Outcome::RetryAfter(self.schedule.delay(message.receive_count, None));
            }
        }
        for delivery in deliveries {
            let shown = redact_url(&delivery.destination.url);
            self.record_route(
                &event.id,
                now_ms,
                Some(delivery.route),
                &shown,
                "queued",
                None,
            )
            .await;
        }
        tracing::info!(event_id = %event.id, destinations = deliveries.len(), "fanned out");
        self.finish_delivered(event, finish, now_ms).await
    }

    /// Where a delivery's destination sits in its route (its identity in the queue).
    fn position(&self, delivery: &RouteDelivery<'_>) -> usize {
        self.routes
            .routes
            .iter()
            .filter(|r| r.name == delivery.route)
            .find_map(|r| {
                r.destinations
                    .iter()
                    .position(|d| std::ptr::eq(d, delivery.destination))
            })
            .unwrap_or(0)
    }

    /// One destination's delivery message: claimed under its own key, posted, completed; a
    /// failure retries or parks this message only.
    pub(super) async fn process_delivery(
        &self,
        message: &QueueMessage,
        queued: &DeliveryMessage,
        clock: InBatch<'_>,
    ) -> Outcome {
        let destination = self
            .routes
            .routes
            .iter()
            .find(|r| r.name == queued.route)
            .and_then(|r| r.destinations.get(queued.destination))
            .filter(|d| redact_url(&d.url) == queued.target);
        let Some(destination) = destination else {
            let reason = format!(
                "route {:?} has no destination {} at {} any more; fix the routes file, then replay",
                queued.route, queued.destination, queued.target
            );
            tracing::error!(event_id = %queued.id, route = %queued.route, "{reason}");
            self.record_route(
                &queued.id,
                clock.now_ms,
                Some(&queued.route),
                &queued.target,
                "dead_letter",
                Some(reason.clone()),
            )
            .await;
            return self.park(message, &reason).await;
        };
        let claim = match self.claim(message, &queued.claim_id(), clock).await {
            Err(outcome) => return outcome,
            Ok(Err(_completed)) => {
                tracing::info!(event_id = %queued.id, route = %queued.route, "already delivered to this destination; skipping duplicate");
                return Outcome::Done;
            }
            Ok(Ok(claim)) => claim,
        };
        let target = Target {
            event_id: &queued.id,
            webhook_id: &queued.webhook_id,
            family: queued.family,
            route: &queued.route,
            destination,
            body: &queued.body,
        };
        let work = async {
            match self.post_to(message, &claim, &target, clock.now_ms).await {
                Sent::Delivered => {
                    self.complete_claim(&claim, clock.now_ms).await;
                    Outcome::Done
                }
                Sent::NotDelivered(outcome) => outcome,
            }
        };
        self.while_holding(message, &claim, clock, work).await
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

    /// POSTs one body to one destination and records the attempt under its route. Gone (410)
    /// disables that destination's URL only; every other answer touches this message only.
    async fn post_to(
        &self,
        message: &QueueMessage,
        claim: &HeldClaim,
        target: &Target<'_>,
        now_ms: i64,
    ) -> Sent {
        let retry = |hint| {
            Sent::NotDelivered(Outcome::RetryAfter(
                self.schedule.delay(message.receive_count, hint),
            ))
        };
        let url = target.destination.url.as_str();
        let shown = redact_url(url);
        let route = Some(target.route);
        let signer = match self.signer_for(target.destination) {
            Ok(signer) => signer,
            Err(reason) => {
                tracing::error!(event_id = %target.event_id, route = %target.route, %reason, "signing secret unusable; holding event");
                return retry(None);
            }
        };
        match self.ports.destinations.disabled(url).await {
            Ok(None) => {}
            Ok(Some(why)) => {
                let reason = format!("destination disabled: {why}");
                route_outcome(&self.routes, target.event_id, target.route, "failed");
                self.record_route(
                    target.event_id,
                    now_ms,
                    route,
                    &shown,
                    "disabled",
                    Some(reason.clone()),
                )
                .await;
                return Sent::NotDelivered(self.park_claimed(message, claim, &reason).await);
            }
            Err(e) => {
                tracing::warn!(event_id = %target.event_id, error = %e, "destination status unavailable");
                return retry(None);
            }
        }
        let bytes = match serde_json::to_vec(target.body) {
            Ok(bytes) => bytes,
            Err(e) => {
                let reason = format!("body not serialisable: {e}");
                return Sent::NotDelivered(self.park_claimed(message, claim, &reason).await);
            }
        };
        let started = Instant::now();
        let result = deliver(
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
        let attempt = |status, outcome: &str, error| Attempt {
            event_id: target.event_id.to_string(),
            at_ms: now_ms,
            destination: shown.clone(),
            status,
            latency_ms,
            outcome: outcome.to_string(),
            error,
            route: Some(target.route.to_string()),
        };
        match result {
            Ok(status) => {
                tracing::info!(event_id = %target.event_id, webhook_id = %target.webhook_id, family = %target.family, route = %target.route, status, latency_ms, "delivered");
                route_outcome(&self.routes, target.event_id, target.route, "delivered");
                self.store_attempt(attempt(Some(status), "delivered", None))
                    .await;
                Sent::Delivered
            }
            Err(ForwardError::Retryable {
                status,
                retry_after,
                reason,
            }) => {
                tracing::warn!(event_id = %target.event_id, route = %target.route, ?status, %reason, "delivery failed; will retry");
                route_outcome(&self.routes, target.event_id, target.route, "failed");
                self.store_attempt(attempt(status, "retry", Some(reason)))
                    .await;
                retry(retry_after)
            }
            Err(ForwardError::Permanent { status, reason }) => {
                tracing::error!(event_id = %target.event_id, route = %target.route, status, "destination refused the event; parking it");
                route_outcome(&self.routes, target.event_id, target.route, "failed");
                self.store_attempt(attempt(Some(status), "dead_letter", Some(reason.clone())))
                    .await;
                Sent::NotDelivered(self.park_claimed(message, claim, &reason).await)
            }
            Err(ForwardError::Gone) => {
                let reason = "destination answered 410 Gone".to_string();
                tracing::error!(destination_host = %super::url_host(url), route = %target.route, "DESTINATION DISABLED: it answered 410 Gone; \
                    no event goes there until it is re-enabled; events are parked in the DLQ");
                route_outcome(&self.routes, target.event_id, target.route, "failed");
                if let Err(e) = self.ports.destinations.disable(url, &reason, now_ms).await {
                    tracing::error!(error = %e, "could not store the disabled destination");
                }
                self.store_attempt(attempt(Some(410), "disabled", Some(reason.clone())))
                    .await;
                Sent::NotDelivered(self.park_claimed(message, claim, &reason).await)
            }
        }
    }

    async fn record_route(
        &self,
        event_id: &str,
        at_ms: i64,
        route: Option<&str>,
        destination: &str,
        outcome: &str,
        error: Option<String>,
    ) {
        self.store_attempt(Attempt {
            event_id: event_id.to_string(),
            at_ms,
            destination: destination.to_string(),
            status: None,
            latency_ms: 0,
            outcome: outcome.to_string(),
            error,
            route: route.map(str::to_string),
        })
        .await;
    }

    async fn store_attempt(&self, attempt: Attempt) {
        if let Err(e) = self.ports.attempts.record(&attempt).await {
            tracing::warn!(event_id = %attempt.event_id, error = %e, "attempt not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn delivery_messages_are_told_apart_from_envelopes() {
        let queued = DeliveryMessage {
            v: ENVELOPE_VERSION,
            kind: DELIVERY_KIND.into(),
            id: "e1".into(),
            webhook_id: "e1".into(),
            family: Family::Deal,
            route: "won".into(),
            destination: 1,
            target: "https://example.com/hook".into(),
            body: json!({"id": "e1"}),
        };
        let text = serde_json::to_string(&queued).unwrap();
        assert_eq!(DeliveryMessage::from_body(&text), Some(queued.clone()));
        assert!(crate::consume::parse_envelope(&text).is_err());
        let other_kind = text.replace("\"delivery\"", "\"other\"");
        assert_eq!(DeliveryMessage::from_body(&other_kind), None);
        assert_eq!(DeliveryMessage::from_body(r#"{"v":1,"id":"e1"}"#), None);
        // Same webhook-id, other destination or route: other keys.
        let mut second = queued.clone();
        second.destination = 0;
        assert_ne!(second.claim_id(), queued.claim_id());
        assert!(queued.claim_id().len() <= 128);
    }

    #[test]
    fn delivery_groups_keep_to_sqs_limits() {
        assert_eq!(
            delivery_group("bitrix24#m#deal#7", "won", 1),
            "bitrix24#m#deal#7#won#1"
        );
        let long = delivery_group(&"g".repeat(120), "сделки", 0);
        assert!(long.len() <= 128 && long.chars().all(|c| c.is_ascii_graphic()));
        assert_ne!(long, delivery_group(&"g".repeat(120), "другое", 0));
        assert_ne!(long, delivery_group(&"g".repeat(120), "сделки", 1));
    }
}
