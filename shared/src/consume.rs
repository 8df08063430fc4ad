//! Transport-free consumer: a batch of queue messages -> which of them failed.
//! For each event: claim its dedup key, fetch the entity's current state, diff it against the
//! last snapshot, forward it signed, record the attempt, then complete the claim.

use crate::config::RelayConfig;
use crate::enrich::salesman::SalesmanClient;
use crate::enrich::{Enriched, Enricher, Prefetched};
use crate::error::{EnrichError, ForwardError};
use crate::event::{RelayEvent, ENVELOPE_VERSION};
use crate::forward::{deliver, Delivery, RetrySchedule, Signer, FORWARD_TIMEOUT, MAX_RETRY_DELAY};
use crate::ports::{
    Attempt, AttemptLog, Bitrix24Rest, Claim, DedupStore, DestinationStatus, Outbox, Queue,
    QueueMessage, Snapshot, SnapshotKey, SnapshotSave, SnapshotStore, TokenStore,
};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a COMPLETED record keeps answering "already delivered". Bitrix24 offline events
/// and `relay replay` can bring an event back days later; SQS's own dedup lasts 5 minutes.
pub const DEDUP_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The stores the consumer talks to: SQS + DynamoDB on AWS, SQLite in `relay serve`.
#[derive(Clone)]
pub struct ConsumerPorts {
    pub queue: Arc<dyn Queue>,
    pub dedup: Arc<dyn DedupStore>,
    pub snapshots: Arc<dyn SnapshotStore>,
    pub tokens: Arc<dyn TokenStore>,
    pub attempts: Arc<dyn AttemptLog>,
    pub destinations: Arc<dyn DestinationStatus>,
}

/// What became of a batch. Every message not listed in `failed` is done and may be deleted
/// (forwarded, skipped as a duplicate, or parked in the dead-letter queue). Failed messages
/// have already been given their retry delay through `Queue::retry_after`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchReport {
    pub failed: Vec<String>,
}

/// One message's fate.
enum Outcome {
    Done,
    RetryAfter(Duration),
}

pub struct Consumer {
    ports: ConsumerPorts,
    config: RelayConfig,
    http: reqwest::Client,
    enricher: Enricher,
    /// `Err`: a secret is configured but unusable; nothing is sent unsigned because of it.
    signer: Result<Option<Signer>, String>,
    outbox: Option<Arc<dyn Outbox>>,
    schedule: RetrySchedule,
    forward_timeout: Duration,
}

impl Consumer {
    /// `bitrix24`: the REST client for enrichment, `None` when no credentials are configured.
    pub fn new(
        ports: ConsumerPorts,
        config: RelayConfig,
        bitrix24: Option<Arc<dyn Bitrix24Rest>>,
        http: reqwest::Client,
    ) -> Self {
        let signer = match &config.signing_secret {
            None => {
                tracing::warn!("RELAY_SIGNING_SECRET is not set: forwarded events are unsigned");
                Ok(None)
            }
            Some(secret) => Signer::from_secret(secret).map(Some).map_err(|e| {
                tracing::error!(error = %e, "RELAY_SIGNING_SECRET is unusable; holding every event");
                e.to_string()
            }),
        };
        let salesman = SalesmanClient::from_config(http.clone(), &config);
        Consumer {
            enricher: Enricher::new(bitrix24, salesman),
            ports,
            config,
            http,
            signer,
            outbox: None,
            schedule: RetrySchedule::default(),
            forward_timeout: FORWARD_TIMEOUT,
        }
    }

    /// Where events go when their family has no destination URL (`relay serve`'s outbox file).
    pub fn with_outbox(mut self, outbox: Arc<dyn Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    pub fn with_retry_schedule(mut self, schedule: RetrySchedule) -> Self {
        self.schedule = schedule;
        self
    }

    pub fn with_forward_timeout(mut self, timeout: Duration) -> Self {
        self.forward_timeout = timeout;
        self
    }

    /// `remaining`: how long this invocation may still run; the dedup lease ends then.
    pub async fn process_batch(
        &self,
        messages: &[QueueMessage],
        remaining: Duration,
        now_ms: i64,
    ) -> BatchReport {
        let lease_until_ms = now_ms.saturating_add(remaining.as_millis() as i64);
        let parsed: Vec<Result<RelayEvent, String>> =
            messages.iter().map(|m| parse_envelope(&m.body)).collect();
        let events: Vec<&RelayEvent> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
        let prefetched = self.enricher.prefetch(&events).await;

        let mut report = BatchReport::default();
        // FIFO: once a message of a group fails, the later ones of that group must not overtake
        // it, so they fail too, with the same delay.
        let mut failed_groups: HashMap<&str, Duration> = HashMap::new();
        for (message, parsed) in messages.iter().zip(&parsed) {
            let outcome = match failed_groups.get(message.group_id.as_str()) {
                Some(delay) => Outcome::RetryAfter(*delay),
                None => match parsed {
                    Err(reason) => self.park_malformed(message, reason).await,
                    Ok(event) => {
                        self.process_one(message, event, &prefetched, lease_until_ms, now_ms)
                            .await
                    }
                },
            };
            if let Outcome::RetryAfter(delay) = outcome {
                if let Err(e) = self.ports.queue.retry_after(&message.receipt, delay).await {
                    // The message still comes back after its visibility timeout.
                    tracing::warn!(message_id = %message.message_id, error = %e, "could not set retry delay");
                }
                failed_groups.insert(message.group_id.as_str(), delay);
                report.failed.push(message.message_id.clone());
            }
        }
        report
    }

    /// A message no retry can fix goes to the DLQ at once instead of blocking its group.
    async fn park_malformed(&self, message: &QueueMessage, reason: &str) -> Outcome {
        tracing::error!(message_id = %message.message_id, %reason, "malformed queue message; parking it");
        self.park(message, &format!("malformed message: {reason}"))
            .await
    }

    async fn park(&self, message: &QueueMessage, reason: &str) -> Outcome {
        match self.ports.queue.park_dead_letter(message, reason).await {
            Ok(()) => Outcome::Done,
            Err(e) => {
                tracing::error!(message_id = %message.message_id, error = %e, "could not park in the dead-letter queue; retrying");
                Outcome::RetryAfter(self.schedule.delay(message.receive_count, None))
            }
        }
    }

    async fn process_one(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        prefetched: &Prefetched,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Outcome {
        match self
            .ports
            .dedup
            .claim(&event.id, lease_until_ms, now_ms)
            .await
        {
            Ok(Claim::Acquired) => {}
            Ok(Claim::AlreadyCompleted) => {
                tracing::info!(event_id = %event.id, "already delivered; skipping duplicate");
                self.record(
                    event,
                    now_ms,
                    "-",
                    None,
                    0,
                    "skipped",
                    Some("duplicate of a delivered event".into()),
                )
                .await;
                return Outcome::Done;
            }
            Ok(Claim::HeldElsewhere { lease_until_ms }) => {
                tracing::info!(event_id = %event.id, "another consumer holds this event; retrying after its lease");
                let wait =
                    Duration::from_millis(lease_until_ms.saturating_sub(now_ms).max(0) as u64);
                return Outcome::RetryAfter(wait.clamp(Duration::from_secs(1), MAX_RETRY_DELAY));
            }
            Err(e) => {
                tracing::warn!(event_id = %event.id, error = %e, "dedup store unavailable");
                return Outcome::RetryAfter(self.schedule.delay(message.receive_count, None));
            }
        }
        let outcome = self
            .deliver_claimed(message, event, prefetched, now_ms)
            .await;
        if let Outcome::RetryAfter(_) = outcome {
            self.release(event).await;
        }
        outcome
    }

    async fn release(&self, event: &RelayEvent) {
        if let Err(e) = self.ports.dedup.release(&event.id).await {
            // The lease still runs out, so the retry can claim it then.
            tracing::warn!(event_id = %event.id, error = %e, "could not release claim");
        }
    }

    /// Parks a claimed event for good. The claim is released, not completed: `relay replay`
    /// re-drives the DLQ after the cause is fixed, and a COMPLETED record would skip it.
    async fn park_claimed(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        reason: &str,
    ) -> Outcome {
        let outcome = self.park(message, reason).await;
        if let Outcome::Done = outcome {
            self.release(event).await;
        }
        outcome
    }

    async fn deliver_claimed(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        prefetched: &Prefetched,
        now_ms: i64,
    ) -> Outcome {
        let retry = |hint: Option<Duration>| {
            Outcome::RetryAfter(self.schedule.delay(message.receive_count, hint))
        };
        let signer = match &self.signer {
            Ok(signer) => signer.as_ref(),
            Err(reason) => {
                tracing::error!(event_id = %event.id, %reason, "signing secret unusable; holding event");
                return retry(None);
            }
        };
        let enriched = match self.enricher.entity(event, prefetched).await {
            Ok(enriched) => enriched,
            Err(EnrichError::Transient {
                reason,
                retry_after,
            }) => {
                tracing::warn!(event_id = %event.id, %reason, "enrichment failed; will retry");
                // Recorded too: "the CRM was down" is a reason the event has not arrived yet.
                self.record(event, now_ms, "crm", None, 0, "retry", Some(reason))
                    .await;
                return retry(retry_after);
            }
            Err(e) => {
                let reason = format!("enrichment refused: {e}");
                tracing::error!(event_id = %event.id, %reason, "parking event");
                self.record(
                    event,
                    now_ms,
                    "crm",
                    None,
                    0,
                    "dead_letter",
                    Some(reason.clone()),
                )
                .await;
                return self.park_claimed(message, event, &reason).await;
            }
        };
        let snapshot_key = SnapshotKey::of(event);
        let previous = match &snapshot_key {
            None => None,
            Some(key) => match self.ports.snapshots.load(key).await {
                Ok(previous) => previous,
                Err(e) => {
                    tracing::warn!(event_id = %event.id, error = %e, "snapshot store unavailable");
                    return retry(None);
                }
            },
        };
        let previous = previous.map(|s| s.entity);
        let changes = changes(previous.as_ref(), enriched.entity());
        let body = forward_body(
            event,
            &Forwarded {
                entity: enriched.entity(),
                previous: previous.as_ref(),
                deleted: enriched == Enriched::Deleted,
                first_seen: snapshot_key.is_some() && previous.is_none(),
                enrichment: enriched.note(),
            },
            &changes,
        );

        let Some(url) = self.config.destination_for(event.family) else {
            return match &self.outbox {
                Some(outbox) => match outbox.append(&body).await {
                    Ok(()) => {
                        tracing::info!(event_id = %event.id, family = %event.family, "written to the outbox");
                        self.record(event, now_ms, "outbox", None, 0, "delivered", None)
                            .await;
                        self.finish_delivered(event, snapshot_key, enriched, now_ms)
                            .await
                    }
                    Err(e) => {
                        tracing::warn!(event_id = %event.id, error = %e, "outbox unavailable");
                        retry(None)
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
                    self.park_claimed(message, event, &reason).await
                }
            };
        };
        let shown = redact_url(url);
        match self.ports.destinations.disabled(url).await {
            Ok(None) => {}
            Ok(Some(why)) => {
                let reason = format!("destination disabled: {why}");
                self.record(
                    event,
                    now_ms,
                    &shown,
                    None,
                    0,
                    "disabled",
                    Some(reason.clone()),
                )
                .await;
                return self.park_claimed(message, event, &reason).await;
            }
            Err(e) => {
                tracing::warn!(event_id = %event.id, error = %e, "destination status unavailable");
                return retry(None);
            }
        }
        let bytes = match serde_json::to_vec(&body) {
            Ok(bytes) => bytes,
            Err(e) => {
                let reason = format!("body not serialisable: {e}");
                return self.park_claimed(message, event, &reason).await;
            }
        };
        let started = Instant::now();
        let result = deliver(
            &self.http,
            &Delivery {
                url,
                msg_id: &event.id,
                timestamp: now_ms.div_euclid(1000),
                body: &bytes,
                signer,
                timeout: self.forward_timeout,
            },
        )
        .await;
        let latency_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(status) => {
                tracing::info!(event_id = %event.id, family = %event.family, status, latency_ms, "delivered");
                self.record(
                    event,
                    now_ms,
                    &shown,
                    Some(status),
                    latency_ms,
                    "delivered",
                    None,
                )
                .await;
                self.finish_delivered(event, snapshot_key, enriched, now_ms)
                    .await
            }
            Err(ForwardError::Retryable {
                status,
                retry_after,
                reason,
            }) => {
                tracing::warn!(event_id = %event.id, ?status, %reason, "delivery failed; will retry");
                self.record(
                    event,
                    now_ms,
                    &shown,
                    status,
                    latency_ms,
                    "retry",
                    Some(reason),
                )
                .await;
                retry(retry_after)
            }
            Err(ForwardError::Permanent { status, reason }) => {
                tracing::error!(event_id = %event.id, status, "destination refused the event; parking it");
                self.record(
                    event,
                    now_ms,
                    &shown,
                    Some(status),
                    latency_ms,
                    "dead_letter",
                    Some(reason.clone()),
                )
                .await;
                self.park_claimed(message, event, &reason).await
            }
            Err(ForwardError::Gone) => {
                let reason = "destination answered 410 Gone".to_string();
                tracing::error!(destination_host = %url_host(url), "DESTINATION DISABLED: it answered 410 Gone; \
                    no event goes there until it is re-enabled; events are parked in the DLQ");
                if let Err(e) = self.ports.destinations.disable(url, &reason, now_ms).await {
                    tracing::error!(error = %e, "could not store the disabled destination");
                }
                self.record(
                    event,
                    now_ms,
                    &shown,
                    Some(410),
                    latency_ms,
                    "disabled",
                    Some(reason.clone()),
                )
                .await;
                self.park_claimed(message, event, &reason).await
            }
        }
    }

    /// After a delivery: the new snapshot (never over a newer one), or for a delete the
    /// snapshot removed, then COMPLETED. None of it failing undoes the delivery, so each only
    /// warns; a lost COMPLETED at worst re-forwards with the same `webhook-id`.
    async fn finish_delivered(
        &self,
        event: &RelayEvent,
        key: Option<SnapshotKey>,
        enriched: Enriched,
        now_ms: i64,
    ) -> Outcome {
        if let (Some(key), Enriched::Deleted) = (&key, &enriched) {
            if let Err(e) = self.ports.snapshots.delete(key).await {
                tracing::warn!(event_id = %event.id, error = %e, "snapshot of a deleted entity not removed");
            }
        }
        if let (Some(key), Some(entity)) = (key, enriched.into_entity()) {
            let snapshot = Snapshot {
                entity,
                version: event.ts,
            };
            match self.ports.snapshots.save(&key, &snapshot).await {
                Ok(SnapshotSave::Saved) => {}
                Ok(SnapshotSave::Stale) => {
                    tracing::info!(event_id = %event.id, "a newer snapshot is stored; kept it")
                }
                Err(e) => tracing::warn!(event_id = %event.id, error = %e, "snapshot not saved"),
            }
        }
        let expires_at_ms = now_ms.saturating_add(DEDUP_RETENTION.as_millis() as i64);
        if let Err(e) = self.ports.dedup.complete(&event.id, expires_at_ms).await {
            tracing::warn!(event_id = %event.id, error = %e, "could not mark event completed");
        }
        Outcome::Done
    }

    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        event: &RelayEvent,
        at_ms: i64,
        destination: &str,
        status: Option<u16>,
        latency_ms: u64,
        outcome: &str,
        error: Option<String>,
    ) {
        let attempt = Attempt {
            event_id: event.id.clone(),
            at_ms,
            destination: destination.to_string(),
            status,
            latency_ms,
            outcome: outcome.to_string(),
            error,
        };
        if let Err(e) = self.ports.attempts.record(&attempt).await {
            tracing::warn!(event_id = %event.id, error = %e, "attempt not recorded");
        }
    }
}

/// The queue body as an envelope this build understands.
pub fn parse_envelope(body: &str) -> Result<RelayEvent, String> {
    let event: RelayEvent =
        serde_json::from_str(body).map_err(|e| format!("not an envelope: {e}"))?;
    if event.v != ENVELOPE_VERSION {
        return Err(format!(
            "envelope version {} is not {ENVELOPE_VERSION}",
            event.v
        ));
    }
    if event.id.is_empty() {
        return Err("envelope has an empty id".into());
    }
    Ok(event)
}

/// `[{field, old, new}]` over top-level fields, in field-name order; empty on first sight
/// (nothing to compare with) and when the entity is gone.
pub fn changes(old: Option<&Value>, new: Option<&Value>) -> Vec<Value> {
    let (Some(Value::Object(old)), Some(Value::Object(new))) = (old, new) else {
        return Vec::new();
    };
    let fields: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    fields
        .into_iter()
        .filter_map(|field| {
            let (before, after) = (old.get(field), new.get(field));
            (before != after).then(|| {
                json!({
                    "field": field,
                    "old": before.cloned().unwrap_or(Value::Null),
                    "new": after.cloned().unwrap_or(Value::Null),
                })
            })
        })
        .collect()
}

/// What the consumer learned about an event's entity, for its forwarded body.
#[derive(Clone, Copy, Debug)]
pub struct Forwarded<'a> {
    /// The entity now, as the CRM answered; `None` when not fetched or gone.
    pub entity: Option<&'a Value>,
    /// The last-known snapshot; `None` when never seen.
    pub previous: Option<&'a Value>,
    /// A delete event: `previous` is what was deleted.
    pub deleted: bool,
    /// No snapshot existed, so empty `changes` mean "first sight", not "nothing changed".
    pub first_seen: bool,
    /// How enrichment went (`fetched`, `not found`, `deleted`, `not fetched`,
    /// `no credentials for this portal`).
    pub enrichment: &'a str,
}

/// The envelope plus `entity_type`, `entity`, `previous`, `deleted`, `first_seen`,
/// `enrichment` and `changes`: exactly what is signed and POSTed.
pub fn forward_body(event: &RelayEvent, forwarded: &Forwarded<'_>, changes: &[Value]) -> Value {
    let mut body = serde_json::to_value(event).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut body {
        // Ingress never puts `auth` in `data`; if an old or hand-made message did, the CRM
        // tokens in it must still not leave.
        if let Some(Value::Object(data)) = map.get_mut("data") {
            data.remove("auth");
        }
        // Old envelopes have none stored: the kind ingress would give them today.
        map.insert("entity_type".into(), json!(event.kind()));
        map.insert(
            "entity".into(),
            forwarded.entity.cloned().unwrap_or(Value::Null),
        );
        map.insert(
            "previous".into(),
            forwarded.previous.cloned().unwrap_or(Value::Null),
        );
        map.insert("deleted".into(), json!(forwarded.deleted));
        map.insert("first_seen".into(), json!(forwarded.first_seen));
        map.insert("enrichment".into(), json!(forwarded.enrichment));
        map.insert("changes".into(), Value::Array(changes.to_vec()));
    }
    body
}

/// Only the host goes into log lines: some receivers put a secret in the path.
fn url_host(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "<invalid url>".to_string())
}

/// A destination as shown in the attempt log: no user info, no query (either may hold a key).
fn redact_url(url: &str) -> String {
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

    #[test]
    fn changes_are_empty_on_first_sight_and_list_differences_after() {
        let v1 = json!({"ID": "7", "TITLE": "a", "STAGE_ID": "NEW"});
        let v2 = json!({"ID": "7", "TITLE": "b", "STAGE_ID": "NEW", "OPPORTUNITY": "10"});
        assert!(changes(None, Some(&v1)).is_empty());
        assert_eq!(
            changes(Some(&v1), Some(&v2)),
            vec![
                json!({"field": "OPPORTUNITY", "old": null, "new": "10"}),
                json!({"field": "TITLE", "old": "a", "new": "b"}),
            ]
        );
        assert!(changes(Some(&v2), Some(&v2)).is_empty());
        assert!(changes(Some(&v2), None).is_empty());
    }

    #[test]
    fn redacts_urls_for_the_attempt_log() {
        assert_eq!(
            redact_url("https://u:p@example.com/hook?token=s3cret#x"),
            "https://example.com/hook"
        );
        assert_eq!(
            url_host("https://u:p@example.com/hook/s3cret"),
            "example.com"
        );
    }

    #[test]
    fn refuses_unknown_envelope_versions() {
        assert!(parse_envelope("not json").is_err());
        assert!(parse_envelope(r#"{"v":2}"#).is_err());
    }
}
