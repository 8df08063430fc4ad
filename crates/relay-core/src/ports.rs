//! The traits the domain talks to. AWS (SQS + DynamoDB) implements them in `aws`, the
//! embedded store (SQLite) in `local`; `consume` and `ingest` see only these, and the same
//! contract tests run against both implementations so they cannot drift.
//! Every time is Unix milliseconds (`*_ms`) and is passed in by the caller, so tests control
//! the clock; what a store does on its own (TTLs, visibility) reads `crate::clock`.

use crate::error::StoreError;
use crate::event::{RelayEvent, Source};
use crate::secret::Secret;
use async_trait::async_trait;
use std::time::Duration;

/// Where ingress puts events. `send` returns only once the event is durably stored: ingress
/// answers 202 after it, so an `Ok` here is a promise that nothing is lost.
#[async_trait]
pub trait Queue: Send + Sync {
    async fn send(&self, event: &RelayEvent) -> Result<(), StoreError>;

    /// Hides a received message for `delay` before it is delivered again: the consumer's
    /// retry with backoff (SQS ChangeMessageVisibility).
    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), StoreError>;

    /// Hides a received message for `wait` because the CRM asked to wait (a Bitrix24 method
    /// blocked until its reset), not because the message failed: where the queue can, this
    /// receive is not counted toward the dead-letter queue (the embedded queue). SQS cannot
    /// uncount a receive (and a FIFO queue has no per-message delay for a re-sent copy), so
    /// there it is `retry_after`: one receive per block, since the wait lasts until the reset.
    async fn defer(&self, receipt: &str, wait: Duration) -> Result<(), StoreError> {
        self.retry_after(receipt, wait).await
    }

    /// Parks a message in the dead-letter queue at once (permanent failure) with the reason.
    /// The caller then treats the message as handled, so it is not retried.
    async fn park_dead_letter(
        &self,
        message: &QueueMessage,
        reason: &str,
    ) -> Result<(), StoreError>;

    /// Enqueues a message the consumer built itself (one destination's share of a fanned-out
    /// event), with its own FIFO group and deduplication id. Like `send`, `Ok` means stored.
    /// A queue that only ever carries ingress envelopes (test doubles, benches) refuses it,
    /// and the consumer then retries the event instead of losing a destination.
    async fn send_message(&self, message: &OutgoingMessage) -> Result<(), StoreError> {
        let _ = message;
        Err(StoreError::Unavailable(
            "this queue does not carry fan-out deliveries".into(),
        ))
    }
}

/// A message for `Queue::send_message`. `group_id` and `dedup_id` keep to SQS FIFO's limits
/// (at most 128 printable ASCII characters).
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingMessage {
    pub body: String,
    pub group_id: String,
    pub dedup_id: String,
}

/// One message as the consumer receives it, from SQS (via Lambda) or the embedded queue.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueMessage {
    pub message_id: String,
    /// Receipt handle: what `retry_after` and deletes need.
    pub receipt: String,
    pub body: String,
    pub group_id: String,
    /// 1 on first delivery.
    pub receive_count: u32,
    /// When the receive that handed this message out happened (Unix ms), where the queue
    /// tells: the embedded queue's receive, SQS's `ApproximateFirstReceiveTimestamp` on a
    /// first receive. `None`: not known, and the consumer then claims the event (`consume`).
    pub received_at_ms: Option<i64>,
}

/// A queue that hands out messages itself (the embedded store). SQS does this through the
/// Lambda event source mapping instead, so only `relay serve` needs it.
#[async_trait]
pub trait PollingQueue: Queue {
    /// Up to `max` visible messages, at most one in flight per group (FIFO order per group);
    /// each becomes invisible for `visibility`. Messages received more than
    /// `max_receive_count` times move to the dead-letter table instead.
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        now_ms: i64,
    ) -> Result<Vec<QueueMessage>, StoreError>;
    /// Done: removes the message.
    async fn delete(&self, receipt: &str) -> Result<(), StoreError>;
    async fn list_dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError>;
    /// Moves dead letters back to the queue: all, those with these envelope ids, or those
    /// parked since a time. Returns how many moved.
    async fn redrive(&self, filter: &RedriveFilter) -> Result<usize, StoreError>;
}

#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub message_id: String,
    pub body: String,
    pub group_id: String,
    pub reason: String,
    pub parked_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct RedriveFilter {
    pub ids: Vec<String>,
    pub since_ms: Option<i64>,
}

impl RedriveFilter {
    /// The one rule both queues use: an empty filter selects every dead letter; `ids` match
    /// the envelope id or the message id; `since_ms` selects letters parked at or after it;
    /// when both are given, both must hold.
    pub fn selects(&self, letter: &DeadLetter, envelope_id: Option<&str>) -> bool {
        let id_ok = self.ids.is_empty()
            || self
                .ids
                .iter()
                .any(|id| *id == letter.message_id || envelope_id == Some(id.as_str()));
        let since_ok = self
            .since_ms
            .is_none_or(|since| letter.parked_at_ms >= since);
        id_ok && since_ok
    }
}

/// The idempotency record (`DEDUP#<id>`), after AWS Lambda Powertools. Every claim carries
/// its holder's `owner` token (fresh per claim), and only that holder may extend, release or
/// complete it: a consumer whose lease ran out cannot undo the claim of the one that took over.
#[async_trait]
pub trait DedupStore: Send + Sync {
    /// One conditional write: succeeds when the record is absent, expired, or IN_PROGRESS with
    /// a lease that has passed. Never check-then-insert.
    async fn claim(
        &self,
        id: &str,
        owner: &str,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<Claim, StoreError>;
    /// The heartbeat: moves the lease of a claim `owner` still holds to `lease_until_ms`.
    async fn extend(
        &self,
        id: &str,
        owner: &str,
        lease_until_ms: i64,
    ) -> Result<Ownership, StoreError>;
    /// Marks the record COMPLETED; it stays until `expires_at_ms`. Refused (`Lost`) only when
    /// another owner holds the record IN_PROGRESS; a record that vanished is written anyway,
    /// because the event was delivered.
    async fn complete(
        &self,
        id: &str,
        owner: &str,
        expires_at_ms: i64,
    ) -> Result<Ownership, StoreError>;
    /// Drops `owner`'s IN_PROGRESS claim after a failure, so the retry can claim it at once.
    /// Never drops a COMPLETED record or another owner's claim.
    async fn release(&self, id: &str, owner: &str) -> Result<(), StoreError>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    Acquired,
    /// Forwarded before: skip.
    AlreadyCompleted,
    /// Another consumer holds a live lease: retry after it.
    HeldElsewhere {
        lease_until_ms: i64,
    },
}

/// Whether a claim's holder still owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    Held,
    /// Another owner claimed the record (or it is no longer IN_PROGRESS): nothing was written.
    Lost,
}

/// The last enriched state of an entity, for `changes`, and the events last delivered about
/// it: the snapshot write after a POST is also the record that the event was delivered, so a
/// delivery on the happy path costs one write.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Snapshot {
    /// The entity exactly as the CRM answered (no CRM token is ever in it).
    pub entity: serde_json::Value,
    /// Orders snapshots: the envelope `ts` of the event that produced it.
    pub version: i64,
    /// The last [`DELIVERED_KEPT`] events delivered about this entity, oldest first.
    pub delivered: Vec<DeliveredEvent>,
}

/// How many delivered event ids a snapshot keeps. FIFO hands out an entity's events one at a
/// time, so a redelivery (a retried batch, an offline copy of the same id, `relay replay`)
/// comes back within the entity's last few deliveries.
pub const DELIVERED_KEPT: usize = 8;

/// The part of an event id a snapshot keeps: 32 hex digits (128 bits) of the SHA-256 name one
/// event among an entity's last few without a collision, in half the bytes billed per write.
const DELIVERED_ID_CHARS: usize = 32;

/// One event delivered about an entity: (a prefix of) its id and when it was delivered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeliveredEvent {
    pub id: String,
    /// Unix seconds of the delivery.
    pub at: i64,
}

fn kept_id(id: &str) -> &str {
    id.char_indices()
        .nth(DELIVERED_ID_CHARS)
        .map_or(id, |(end, _)| &id[..end])
}

impl Snapshot {
    /// Whether the event `id` was delivered about this entity within its last deliveries.
    pub fn remembers(&self, id: &str) -> bool {
        let id = kept_id(id);
        self.delivered.iter().any(|d| d.id == id)
    }

    /// Adds `id` as delivered at `now_ms`, keeping the last [`DELIVERED_KEPT`] deliveries of
    /// the last `retention` (as long as a dedup record answers "already delivered").
    pub fn remember(&mut self, id: &str, now_ms: i64, retention: std::time::Duration) {
        let now = now_ms.div_euclid(1000);
        let oldest = now.saturating_sub(i64::try_from(retention.as_secs()).unwrap_or(i64::MAX));
        let id = kept_id(id).to_string();
        self.delivered.retain(|d| d.at > oldest && d.id != id);
        self.delivered.push(DeliveredEvent { id, at: now });
        let excess = self.delivered.len().saturating_sub(DELIVERED_KEPT);
        self.delivered.drain(..excess);
    }
}

/// One entity's snapshot. The kind is part of it: a family holds kinds with separate id
/// sequences (requisite 5 and bank detail 5 are different records).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotKey {
    pub source: Source,
    pub portal: String,
    pub family: crate::event::Family,
    pub entity_type: crate::catalogue::EntityType,
    pub entity_id: String,
}

impl SnapshotKey {
    /// The key of an event's entity; `None` for events about no entity (or of no known kind).
    pub fn of(event: &RelayEvent) -> Option<SnapshotKey> {
        Some(SnapshotKey {
            source: event.source,
            portal: event.portal.clone(),
            family: event.family,
            entity_type: event.kind()?,
            entity_id: event.entity_id.clone().filter(|id| !id.is_empty())?,
        })
    }

    /// The embedded store's key: `SNAP#<source>#<portal>#<family>#<kind>#<entity>` (DynamoDB
    /// splits it: the portal's partition, then family, kind and entity as the sort key).
    pub fn pk(&self) -> String {
        format!(
            "SNAP#{}#{}#{}#{}#{}",
            self.source, self.portal, self.family, self.entity_type, self.entity_id
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotSave {
    Saved,
    /// A snapshot with a newer version is already stored; nothing was written.
    Stale,
}

#[async_trait]
pub trait SnapshotStore: Send + Sync {
    async fn load(&self, key: &SnapshotKey) -> Result<Option<Snapshot>, StoreError>;
    /// Conditional: writes only if no stored snapshot has a greater `version`.
    async fn save(
        &self,
        key: &SnapshotKey,
        snapshot: &Snapshot,
    ) -> Result<SnapshotSave, StoreError>;
    /// Forgets one entity (after its delete was forwarded). Absent is not an error.
    async fn delete(&self, key: &SnapshotKey) -> Result<(), StoreError>;
    /// Deletes every snapshot of one portal (app uninstall). Returns how many.
    async fn delete_portal(&self, source: Source, portal: &str) -> Result<usize, StoreError>;
}

/// What Bitrix24 gave one portal's app (`PORTALS` / `<member_id>` on DynamoDB). Debug redacts every token.
#[derive(Clone, Debug, PartialEq)]
pub struct PortalTokens {
    pub member_id: String,
    pub domain: String,
    pub application_token: Secret,
    pub access_token: Secret,
    pub refresh_token: Secret,
    pub expires_at_ms: i64,
    /// e.g. `https://x.bitrix24.ru/rest/`
    pub client_endpoint: String,
    /// The portal's OAuth server as its install named it (`auth[server_endpoint]`,
    /// `https://oauth.bitrix.info/rest/`); empty when unknown. Refreshes go there only when
    /// its host is a known Bitrix24 OAuth server.
    pub server_endpoint: String,
    pub scope: String,
}

#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn get(&self, portal: &str) -> Result<Option<PortalTokens>, StoreError>;
    async fn put(&self, tokens: &PortalTokens) -> Result<(), StoreError>;
    async fn delete(&self, portal: &str) -> Result<(), StoreError>;
    async fn list(&self) -> Result<Vec<PortalTokens>, StoreError>;
}

/// What `relay bind` registered on one portal (`BINDPLAN#<member_id>`): Bitrix24 drops an
/// app's handlers when the app is updated, so a verified ONAPPUPDATE (and `relay bind
/// --again`) registers this plan again. Kept apart from the tokens, which every refresh rewrites.
#[async_trait]
pub trait BindPlanStore: Send + Sync {
    async fn load_plan(
        &self,
        portal: &str,
    ) -> Result<Option<Vec<crate::lifecycle::bind::Binding>>, StoreError>;
    /// Replaces the portal's plan.
    async fn save_plan(
        &self,
        portal: &str,
        plan: &[crate::lifecycle::bind::Binding],
    ) -> Result<(), StoreError>;
    /// Absent is not an error.
    async fn forget_plan(&self, portal: &str) -> Result<(), StoreError>;
}

/// One delivery attempt, so a user can see why an event did not arrive (`ATTEMPT#<id>`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    pub event_id: String,
    pub at_ms: i64,
    pub destination: String,
    /// HTTP status, if the destination answered at all.
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// Stored and shown as [`AttemptOutcome::as_str`].
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    /// The route the attempt was for; `None` for steps before routing (the CRM fetch) and
    /// for attempts logged before routes existed.
    #[serde(default)]
    pub route: Option<String>,
}

/// What one step did to an event, as the attempt log, `relay attempts` and the template's
/// metric filters spell it. The consumer writes only these; the strings never change, since
/// stored lines and dashboards hold them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The destination answered 2xx (or the event went to `relay serve`'s outbox).
    Delivered,
    /// A retryable failure (the CRM or the destination was down); the message comes back.
    Retry,
    /// The CRM asked to wait (`OPERATION_TIME_LIMIT`): no failure of the event.
    Deferred,
    /// Parked in the dead-letter queue for `relay replay`.
    DeadLetter,
    /// The destination is disabled (it answered 410 Gone, now or before).
    Disabled,
    /// Not forwarded: a duplicate of a delivered event, or its twin.
    Skipped,
    /// One destination's delivery message of a fanned-out event was queued.
    Queued,
    /// A routes file matched no route.
    Unmatched,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 8] = [
        AttemptOutcome::Delivered,
        AttemptOutcome::Retry,
        AttemptOutcome::Deferred,
        AttemptOutcome::DeadLetter,
        AttemptOutcome::Disabled,
        AttemptOutcome::Skipped,
        AttemptOutcome::Queued,
        AttemptOutcome::Unmatched,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Deferred => "deferred",
            AttemptOutcome::DeadLetter => "dead_letter",
            AttemptOutcome::Disabled => "disabled",
            AttemptOutcome::Skipped => "skipped",
            AttemptOutcome::Queued => "queued",
            AttemptOutcome::Unmatched => "unmatched",
        }
    }
}

impl std::str::FromStr for AttemptOutcome {
    type Err = StoreError;

    /// A stored outcome read back; a string no build writes is corrupt data, named.
    fn from_str(stored: &str) -> Result<Self, StoreError> {
        AttemptOutcome::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == stored)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown attempt outcome {stored:?}")))
    }
}

impl std::fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[async_trait]
pub trait AttemptLog: Send + Sync {
    async fn record(&self, attempt: &Attempt) -> Result<(), StoreError>;
    /// Oldest first.
    async fn list(&self, event_id: &str) -> Result<Vec<Attempt>, StoreError>;
}

/// One Bitrix24 REST call on a portal's behalf, with authentication (inbound webhook URL or
/// the portal's stored OAuth tokens, refreshed once on `expired_token`), the per-portal rate
/// limiter and retries on `QUERY_LIMIT_EXCEEDED` handled inside. Returns the answer's `result`
/// and its `time`.
#[async_trait]
pub trait Bitrix24Rest: Send + Sync {
    async fn call(
        &self,
        portal: &str,
        method: &str,
        params: serde_json::Value,
    ) -> Result<RestAnswer, crate::error::EnrichError>;

    /// The same call for an event's portal, named by `portal` and the event's `domain`:
    /// credentials that are not that portal's are never used (a webhook of another portal
    /// would answer with its own record of the same id). Clients with one portal's
    /// credentials only need not override it.
    async fn call_on(
        &self,
        portal: &str,
        domain: Option<&str>,
        method: &str,
        params: serde_json::Value,
    ) -> Result<RestAnswer, crate::error::EnrichError> {
        let _ = domain;
        self.call(portal, method, params).await
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RestAnswer {
    /// The answer's `result`.
    pub result: serde_json::Value,
    /// The answer's `time` (the method's operating time and `operating_reset_at`), from which
    /// the client learns when a blocked method runs again; `None` when absent.
    pub time: Option<serde_json::Value>,
}

/// Where forwarded events go when no destination URL is configured (`relay serve` appends to
/// `<data-dir>/outbox.jsonl`), so a newcomer sees the result without running a receiver.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// `body`: exactly the JSON that would have been POSTed.
    async fn append(&self, body: &serde_json::Value) -> Result<(), StoreError>;
}

/// Destinations that answered 410 Gone: disabled until the user reconfigures or re-enables
/// them (`DEST#<url hash>` on DynamoDB). Kept in the store so every consumer instance agrees.
#[async_trait]
pub trait DestinationStatus: Send + Sync {
    /// `Some(reason)` when the destination is disabled.
    async fn disabled(&self, destination: &str) -> Result<Option<String>, StoreError>;
    async fn disable(&self, destination: &str, reason: &str, now_ms: i64)
        -> Result<(), StoreError>;
    async fn enable(&self, destination: &str) -> Result<(), StoreError>;
}

/// Confirms an ONAPPINSTALL or ONAPPUPDATE before its tokens are trusted: asks Bitrix24
/// (`app.info` with the event's `access_token`) whether the token is this app's on this portal,
/// and learns from the answer, not from the event, where the portal's REST calls go.
#[async_trait]
pub trait InstallVerifier: Send + Sync {
    /// `Ok(None)`: not confirmed (wrong portal, wrong app, refused endpoint, no client id).
    async fn confirm_portal(
        &self,
        access_token: &Secret,
        portal: &str,
    ) -> Result<Option<crate::lifecycle::portal_endpoint::ConfirmedPortal>, crate::error::EnrichError>;
}

#[cfg(test)]
mod tests {
    use super::AttemptOutcome;

    /// Stored attempt lines, `relay attempts` and dashboards hold these strings: a rename of a
    /// variant must not change them.
    #[test]
    fn attempt_outcomes_keep_their_stored_names() {
        let all = [
            (AttemptOutcome::Delivered, "delivered"),
            (AttemptOutcome::Retry, "retry"),
            (AttemptOutcome::Deferred, "deferred"),
            (AttemptOutcome::DeadLetter, "dead_letter"),
            (AttemptOutcome::Disabled, "disabled"),
            (AttemptOutcome::Skipped, "skipped"),
            (AttemptOutcome::Queued, "queued"),
            (AttemptOutcome::Unmatched, "unmatched"),
        ];
        assert_eq!(all.len(), AttemptOutcome::ALL.len());
        for (outcome, stored) in all {
            assert_eq!(outcome.as_str(), stored);
            assert_eq!(outcome.to_string(), stored);
            assert_eq!(stored.parse::<AttemptOutcome>().ok(), Some(outcome));
            assert_eq!(
                serde_json::to_value(outcome).ok(),
                Some(serde_json::json!(stored))
            );
        }
    }

    #[test]
    fn an_outcome_no_build_writes_reads_back_as_corrupt_data_naming_it() {
        let error = "fanned_out"
            .parse::<AttemptOutcome>()
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("stored data is corrupt: unknown attempt outcome \"fanned_out\"")
        );
    }
}
