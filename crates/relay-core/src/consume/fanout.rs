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

use super::attempts::{AttemptLine, NOWHERE, OUTBOX};
use super::dispatch::{Sent, Target};
use super::prepare::PreparedDelivery;
use super::{Consumer, Hold, InBatch, Outcome};
use crate::event::{Family, RelayEvent, ENVELOPE_VERSION};
use crate::forward::redact_url;
use crate::ports::{AttemptOutcome, OutgoingMessage, QueueMessage};
use crate::routes::Delivery as RouteDelivery;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

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

/// What became of an event on one route, as the template's metric filters spell it.
#[derive(Clone, Copy)]
pub(super) enum RouteOutcome {
    Matched,
    Delivered,
    Failed,
}

impl RouteOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RouteOutcome::Matched => "matched",
            RouteOutcome::Delivered => "delivered",
            RouteOutcome::Failed => "failed",
        }
    }
}

/// One log line per route and outcome: the template's metric filters count them per route.
/// Only for a routes file: the implicit routes are one destination, whose own log lines (and
/// Forwarded/Retries/Parked metrics) say it all, so a deployment without routes keeps one log
/// line per event.
pub(super) fn route_outcome(
    routes: &crate::routes::Routes,
    event_id: &str,
    route: &str,
    outcome: RouteOutcome,
) {
    if !routes.implicit {
        let outcome = outcome.as_str();
        tracing::info!(%event_id, %route, outcome, "route outcome");
    }
}

impl Consumer {
    /// The body of a claimed event goes to its routes: inline to one destination, through
    /// the queue to several, nowhere (recorded, completed) when a routes file matches none.
    pub(super) async fn route_body(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        prepared: PreparedDelivery<'_>,
        now_ms: i64,
    ) -> Outcome {
        let deliveries = self.routes.deliveries(&prepared.body);
        for delivery in &deliveries {
            route_outcome(
                &self.routes,
                &event.id,
                delivery.route,
                RouteOutcome::Matched,
            );
        }
        match deliveries.as_slice() {
            [] if self.routes.implicit => {
                self.no_destination(message, event, prepared, now_ms).await
            }
            [] => {
                tracing::info!(event_id = %event.id, "no route matches the event; nothing to deliver");
                let line = AttemptLine::new(&event.id, now_ms, NOWHERE, AttemptOutcome::Unmatched)
                    .because("no route matches");
                self.record(line).await;
                self.finish_delivered(event, prepared.hold, prepared.snapshot, now_ms)
                    .await
            }
            [one] => {
                let target = Target {
                    event_id: &event.id,
                    webhook_id: prepared.webhook_id,
                    family: event.family,
                    route: one.route,
                    destination: one.destination,
                    body: &one.body,
                };
                match self.post_to(message, prepared.hold, &target, now_ms).await {
                    Sent::Delivered => {
                        self.finish_delivered(event, prepared.hold, prepared.snapshot, now_ms)
                            .await
                    }
                    Sent::NotDelivered(outcome) => outcome,
                }
            }
            several => match self
                .fan_out(message, event, &prepared, several, now_ms)
                .await
            {
                Ok(()) => {
                    self.finish_delivered(event, prepared.hold, prepared.snapshot, now_ms)
                        .await
                }
                Err(outcome) => outcome,
            },
        }
    }

    /// Implicit routes and no URL for the family: `relay serve`'s outbox, else the DLQ.
    async fn no_destination(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        prepared: PreparedDelivery<'_>,
        now_ms: i64,
    ) -> Outcome {
        match &self.outbox {
            Some(outbox) => match outbox.append(&prepared.body).await {
                Ok(()) => {
                    tracing::info!(event_id = %event.id, family = %event.family, "written to the outbox");
                    let line =
                        AttemptLine::new(&event.id, now_ms, OUTBOX, AttemptOutcome::Delivered);
                    self.record(line).await;
                    self.finish_delivered(event, prepared.hold, prepared.snapshot, now_ms)
                        .await
                }
                Err(e) => {
                    tracing::warn!(event_id = %event.id, error = %e, "outbox unavailable");
                    Outcome::RetryAfter(self.schedule.delay(message.receive_count, None))
                }
            },
            None => {
                let reason = format!("no destination configured for family {}", event.family);
                let line = AttemptLine::new(&event.id, now_ms, NOWHERE, AttemptOutcome::DeadLetter)
                    .because(reason.clone());
                self.record(line).await;
                self.park_held(message, prepared.hold, &reason).await
            }
        }
    }

    /// One delivery message per destination; `Ok` once all are queued, and the event is then
    /// done (snapshot, COMPLETED). A send that fails retries the whole event (`Err`): the
    /// messages already sent are dropped by the queue's deduplication or, later than its
    /// window, by their claim once delivered.
    async fn fan_out(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        prepared: &PreparedDelivery<'_>,
        deliveries: &[RouteDelivery<'_>],
        now_ms: i64,
    ) -> Result<(), Outcome> {
        let webhook_id = prepared.webhook_id;
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
                body: delivery.body.clone().into_owned(),
            };
            let body = match serde_json::to_string(&queued) {
                Ok(body) => body,
                Err(e) => {
                    let reason = format!("delivery message not serialisable: {e}");
                    return Err(self.park_held(message, prepared.hold, &reason).await);
                }
            };
            let outgoing = OutgoingMessage {
                body,
                group_id: delivery_group(&entity_group, delivery.route, position),
                dedup_id: queued.claim_id(),
            };
            if let Err(e) = self.ports.queue.send_message(&outgoing).await {
                tracing::warn!(event_id = %event.id, route = %delivery.route, error = %e, "could not queue a destination's delivery; retrying the event");
                return Err(Outcome::RetryAfter(
                    self.schedule.delay(message.receive_count, None),
                ));
            }
        }
        for delivery in deliveries {
            let shown = redact_url(&delivery.destination.url);
            let line = AttemptLine::new(&event.id, now_ms, &shown, AttemptOutcome::Queued)
                .on_route(Some(delivery.route));
            self.record(line).await;
        }
        tracing::info!(event_id = %event.id, destinations = deliveries.len(), "fanned out");
        Ok(())
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
            let line = AttemptLine::new(
                &queued.id,
                clock.now_ms,
                &queued.target,
                AttemptOutcome::DeadLetter,
            );
            self.record(line.on_route(Some(&queued.route)).because(reason.clone()))
                .await;
            return self.park(message, &reason).await;
        };
        let hold = match self.claim(message, &queued.claim_id(), clock).await {
            Err(outcome) => return outcome,
            Ok(Err(_completed)) => {
                tracing::info!(event_id = %queued.id, route = %queued.route, "already delivered to this destination; skipping duplicate");
                return Outcome::Done;
            }
            Ok(Ok(claim)) => Hold::Claimed(claim),
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
            match self.post_to(message, &hold, &target, clock.now_ms).await {
                Sent::Delivered => {
                    self.record_completed(&hold, clock.now_ms).await;
                    Outcome::Done
                }
                Sent::NotDelivered(outcome) => outcome,
            }
        };
        self.while_holding(message, &hold, clock, work).await
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
