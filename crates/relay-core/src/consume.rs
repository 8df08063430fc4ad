//! Transport-free consumer: a batch of queue messages -> which of them failed.
//! For each event: hold it (`claim`), then three typed stages, as svix-server splits its
//! dispatch: `prepare` (fetch the entity, diff it against the last snapshot: a
//! `PreparedDelivery`), `dispatch` (sign and POST it to each destination its routes name,
//! through `fanout` when there are several: a `ForwardResult`), `settle` (save the snapshot
//! with the event among its deliveries, or park: the message's `Outcome`). Each stage writes
//! its `attempts` line.
//!
//! One event, one POST in flight: a first receive of a known entity is held by the message's
//! own invisibility (claimed after all if that cannot be kept), every other event by a dedup
//! claim (owner token, lease); a heartbeat renews either while the event is worked on, and a batch does not start a message when less
//! than a whole forward's time is left. The snapshot written after the POST carries the
//! entity's last delivered event ids, so it is also the record that the event was delivered:
//! the typical event (an update of a known entity) costs that one write; a claimed one, two
//! (an event with no snapshot completes its claim instead). A batch's FIFO groups run side
//! by side (`groups`), each in order, so a batch costs about one round trip, not ten.
//!
//! Redelivery rule (news only): an event whose id was already delivered is fetched again. If
//! the entity now differs from its stored snapshot, it is forwarded as a new delivery whose
//! webhook-id is `<event id>.v<snapshot version>` (`redelivery_id`); if nothing changed it is
//! recorded as a skipped duplicate and not forwarded. A twin (another id for the same change,
//! such as the offline log's copy stamped a second off) whose entity is unchanged since a
//! delivery stamped within `TWIN_WINDOW_S` is skipped the same way.

use crate::config::RelayConfig;
use crate::enrich::salesman::SalesmanClient;
use crate::enrich::{Enricher, Prefetched};
use crate::event::{RelayEvent, ENVELOPE_VERSION};
use crate::forward::{RetrySchedule, Signer, FORWARD_TIMEOUT};
use crate::ports::{
    AttemptLog, AttemptOutcome, Bitrix24Rest, DedupStore, DestinationStatus, Outbox, Queue,
    QueueMessage, SnapshotKey, SnapshotStore, TokenStore,
};
use crate::routes::Routes;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod attempts;
mod claim;
mod dispatch;
mod enabled_destinations;
mod fanout;
mod groups;
mod prepare;
mod settle;
use attempts::{AttemptLine, NOWHERE};
use claim::Hold;
pub use fanout::{delivery_group, DeliveryMessage};
use groups::Pending;
pub use prepare::{changes, forward_body, Forwarded};
use prepare::{is_twin_of_delivered, prepare, EntityState, StateFailure};

/// How long a COMPLETED record (or a snapshot's delivered id) keeps answering "already
/// delivered". Bitrix24 offline events
/// and `relay replay` can bring an event back days later; SQS's own dedup lasts 5 minutes.
pub const DEDUP_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How long a claim holds without a heartbeat. Also how soon a message held by a consumer
/// that died is handed out again (the heartbeat sets its visibility to this), and how long a
/// receive is assumed to hide a message before the first beat (queues receive with more).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Time a message needs besides its POST (claim, CRM fetch, snapshot, bookkeeping); a batch
/// does not start a message when less than `forward_timeout` plus this is left.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

/// Two events about one entity whose stamps are at most this far apart, and between which
/// the entity did not change, are one change seen twice: Bitrix24 writes an event both to
/// the handler and to the offline log, stamping the two copies a second or so apart, so they
/// get different envelope ids. Wide enough for Bitrix24's own send queue to lag; narrow
/// enough that a later, real edit the CRM does not show us is still forwarded.
pub const TWIN_WINDOW_S: i64 = 120;

/// Groups of one batch worked on at once: an SQS batch holds at most ten messages, so a Lambda
/// batch never waits for a slot; a bigger batch (a test's, or a backlog) does not open
/// hundreds of store connections and POSTs at once.
pub const GROUPS_IN_FLIGHT: usize = 10;

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
#[derive(Clone, Copy)]
enum Outcome {
    Done,
    RetryAfter(Duration),
    /// A wait that is no failure of the message (a Bitrix24 method blocked until its reset):
    /// given back through `Queue::defer`, so it does not count toward the dead-letter queue.
    Defer(Duration),
}

/// Where a message stands in its batch: the batch's clock (`now_ms` as passed in, which tests
/// fix, plus the real time since `started`) and the batch's messages not finished yet (in any
/// group), which the heartbeat keeps invisible.
#[derive(Clone, Copy)]
struct InBatch<'a> {
    now_ms: i64,
    started: Instant,
    pending: &'a Pending<'a>,
}

/// What every group of a batch works from.
struct BatchWork<'a> {
    /// One per group in flight (`GROUPS_IN_FLIGHT`), held for the group's whole run.
    slots: &'a tokio::sync::Semaphore,
    messages: &'a [QueueMessage],
    parsed: &'a [Result<RelayEvent, String>],
    prefetched: &'a Prefetched,
    remaining: Duration,
    clock: InBatch<'a>,
}

impl InBatch<'_> {
    /// Unix ms at `started + elapsed + span`, where elapsed is the real time since the start.
    fn now_plus(&self, span: Duration) -> i64 {
        let since = self.started.elapsed() + span;
        self.now_ms
            .saturating_add(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The webhook-id of a redelivered event that carries news: the event id and the version of
/// the snapshot it differs from, so the same news redelivered again gets the same id.
pub fn redelivery_id(event_id: &str, snapshot_version: i64) -> String {
    format!("{event_id}.v{snapshot_version}")
}

pub struct Consumer {
    ports: ConsumerPorts,
    http: reqwest::Client,
    enricher: Enricher,
    /// `Err`: a secret is configured but unusable; nothing is sent unsigned because of it.
    signer: Result<Option<Signer>, String>,
    outbox: Option<Arc<dyn Outbox>>,
    schedule: RetrySchedule,
    forward_timeout: Duration,
    lease_span: Duration,
    /// Whether the invocation is killed at its deadline (Lambda), see `with_soft_deadline`.
    hard_deadline: bool,
    /// Where bodies go: `RELAY_ROUTES`, else `Routes::implicit` (the destination URLs).
    routes: Routes,
    /// Destinations the store said were enabled a moment ago (`dispatch` asks it once a
    /// second per destination, not per POST).
    enabled_destinations: enabled_destinations::EnabledDestinations,
}

impl Consumer {
    /// `bitrix24`: the process's one REST client for enrichment (`compose::ProcessParts` builds
    /// it, with or without credentials); `None` only where no Bitrix24 call can happen.
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
            routes: Routes::implicit(&config),
            http,
            signer,
            outbox: None,
            schedule: RetrySchedule::default(),
            forward_timeout: FORWARD_TIMEOUT,
            lease_span: DEFAULT_LEASE,
            hard_deadline: true,
            enabled_destinations: Default::default(),
        }
    }

    /// Where events go when their family has no destination URL (`relay serve`'s outbox file).
    pub fn with_outbox(mut self, outbox: Arc<dyn Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// The routes of `RELAY_ROUTES` instead of the destination URLs' implicit ones.
    pub fn with_routes(mut self, routes: Routes) -> Self {
        self.routes = routes;
        self
    }

    /// Another back-off than the default: how `relay serve` applies `--retry-base` and
    /// `--retry-cap` (its only way to set one), and how the suites shorten the wait.
    pub fn with_retry_schedule(mut self, schedule: RetrySchedule) -> Self {
        self.schedule = schedule;
        self
    }

    pub fn with_forward_timeout(mut self, timeout: Duration) -> Self {
        self.forward_timeout = timeout;
        self
    }

    /// How long a claim (and the message's invisibility) lasts without a heartbeat; the
    /// heartbeat renews both every third of it while the message is worked on.
    pub fn with_lease(mut self, span: Duration) -> Self {
        self.lease_span = span.max(Duration::from_millis(30));
        self
    }

    /// Where nothing kills a batch at its timeout (`relay serve`): every message is started,
    /// however long the batch runs, since the heartbeat keeps its messages invisible.
    pub fn with_soft_deadline(mut self) -> Self {
        self.hard_deadline = false;
        self
    }

    /// `remaining`: how long this invocation may still run. The batch's FIFO groups are
    /// worked on side by side (`GROUPS_IN_FLIGHT` at most), each group's messages in order.
    /// A message is only started while the time left at that moment covers a whole forward
    /// (`forward_timeout` + `DEADLINE_MARGIN`), except the batch's first, so a batch never
    /// times out in the middle of a POST; the messages not started are reported failed and
    /// come back at once.
    pub async fn process_batch(
        &self,
        messages: &[QueueMessage],
        remaining: Duration,
        now_ms: i64,
    ) -> BatchReport {
        let started = Instant::now();
        let parsed: Vec<Result<RelayEvent, String>> =
            messages.iter().map(|m| parse_envelope(&m.body)).collect();
        let events: Vec<&RelayEvent> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
        let prefetched = self.enricher.prefetch(&events).await;

        let pending = Pending::new(messages, self.lease_span);
        let clock = InBatch {
            now_ms,
            started,
            pending: &pending,
        };
        let slots = tokio::sync::Semaphore::new(GROUPS_IN_FLIGHT);
        let batch = BatchWork {
            slots: &slots,
            messages,
            parsed: &parsed,
            prefetched: &prefetched,
            remaining,
            clock,
        };
        let groups = groups::group_indices(messages)
            .into_iter()
            .map(|members| self.process_group(&batch, members));
        let mut failed: Vec<usize> = groups::join_all(groups.collect())
            .await
            .into_iter()
            .flatten()
            .collect();
        failed.sort_unstable();
        BatchReport {
            failed: failed
                .into_iter()
                .map(|index| messages[index].message_id.clone())
                .collect(),
        }
    }

    /// One FIFO group's messages (`members`, indices in batch order), one after the other:
    /// once one fails, the later ones must not overtake it, so they fail too, with the same
    /// delay (and wait, not fail, behind a wait). Gives the indices of the failed ones.
    async fn process_group(&self, batch: &BatchWork<'_>, members: Vec<usize>) -> Vec<usize> {
        // Never closed, so never `Err`; a group without a slot would only run beyond the cap.
        let _slot = batch.slots.acquire().await.ok();
        let mut failed = Vec::new();
        let mut held: Option<Outcome> = None;
        for index in members {
            let message = &batch.messages[index];
            let outcome = match held {
                Some(held) => held,
                None if index > 0
                    && self.hard_deadline
                    && !self.time_for_one_more(batch.remaining, batch.clock.started.elapsed()) =>
                {
                    tracing::info!(message_id = %message.message_id, "batch deadline near; not starting this message");
                    Outcome::RetryAfter(Duration::ZERO)
                }
                None => match &batch.parsed[index] {
                    Err(reason) => match DeliveryMessage::from_body(&message.body) {
                        Some(queued) => self.process_delivery(message, &queued, batch.clock).await,
                        None => self.park_malformed(message, reason).await,
                    },
                    Ok(event) => {
                        self.process_one(message, event, batch.prefetched, batch.clock)
                            .await
                    }
                },
            };
            let pending = batch.clock.pending;
            let handed_back = async {
                let handed_back = match outcome {
                    Outcome::Done => return,
                    Outcome::RetryAfter(delay) => {
                        self.ports.queue.retry_after(&message.receipt, delay).await
                    }
                    Outcome::Defer(wait) => self.ports.queue.defer(&message.receipt, wait).await,
                };
                if let Err(e) = handed_back {
                    // The message still comes back after its visibility timeout.
                    tracing::warn!(message_id = %message.message_id, error = %e, "could not set retry delay");
                }
            };
            pending.finish_with(index, handed_back).await;
            if let Outcome::Done = outcome {
                continue;
            }
            held = Some(outcome);
            failed.push(index);
        }
        failed
    }

    fn time_for_one_more(&self, remaining: Duration, elapsed: Duration) -> bool {
        remaining.saturating_sub(elapsed) >= self.forward_timeout + DEADLINE_MARGIN
    }

    /// One event. A first receive of an entity with a snapshot that does not list the event
    /// goes out under the message's own invisibility (`Hold::FirstReceive`): no dedup write,
    /// the snapshot saved after the POST records it. Any other event is claimed, then its
    /// state (the CRM's entity and its snapshot) is fetched: an event the snapshot lists as
    /// delivered takes the news-only rule, a twin is skipped, any other is delivered. An event
    /// whose claim is COMPLETED (an event with no snapshot) takes the news-only rule too.
    ///
    /// A first sighting (no snapshot yet) is claimed even on its first receive: its claim is
    /// what tells a later copy of a delete, or of an event about an entity the CRM did not
    /// give, that it was delivered, since no snapshot remembers those.
    async fn process_one(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        prefetched: &Prefetched,
        clock: InBatch<'_>,
    ) -> Outcome {
        if self.may_hold_by_invisibility(message, clock) {
            if let Some(key) = SnapshotKey::of(event) {
                match self.ports.snapshots.load(&key).await {
                    // An event not newer than the snapshot is a late copy (an offline record
                    // drained again, a replay), perhaps of an event delivered before the
                    // entity had a snapshot: its claim says whether it was (the news-only rule).
                    Ok(Some(previous))
                        if !previous.remembers(&event.id) && event.ts > previous.version =>
                    {
                        let known = KnownEntity { key, previous };
                        return self
                            .first_receive(message, event, known, prefetched, clock)
                            .await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(event_id = %event.id, error = %e, "snapshot store unavailable");
                        return Outcome::RetryAfter(
                            self.schedule.delay(message.receive_count, None),
                        );
                    }
                }
            }
        }
        let now_ms = clock.now_ms;
        match self.claim(message, &event.id, clock).await {
            // The claim of a delivery that saved its snapshot lapses with its lease; until it
            // does, the snapshot says the event was delivered.
            Err(outcome) => match self.snapshot_remembers(event).await {
                true => {
                    self.redelivered_unclaimed(message, event, prefetched, clock)
                        .await
                }
                false => outcome,
            },
            Ok(Ok(claim)) => {
                let hold = Hold::Claimed(claim);
                let work = async {
                    match self.fetch_state(event, prefetched, now_ms).await {
                        Ok(state) if remembered(event, &state) => {
                            self.redelivered(message, event, state, clock).await
                        }
                        Ok(state) if is_twin_of_delivered(event, &state) => {
                            self.skip_twin(event, state, now_ms).await
                        }
                        Ok(state) => {
                            let prepared = prepare(event, &hold, &event.id, event.ts, state);
                            self.route_body(message, event, prepared, now_ms).await
                        }
                        Err(StateFailure::Refused(reason)) => {
                            self.refused(message, event, &hold, reason, now_ms).await
                        }
                        Err(failure) => {
                            self.state_unavailable(message, event, &hold, failure, now_ms)
                                .await
                        }
                    }
                };
                self.while_holding(message, &hold, clock, work).await
            }
            Ok(Err(_completed)) => {
                self.redelivered_unclaimed(message, event, prefetched, clock)
                    .await
            }
        }
    }

    /// Whether `message` can go out held by its own invisibility: its first receive, and known
    /// to stay hidden at least until its last beat would be due (`last_beat_before_end`).
    fn may_hold_by_invisibility(&self, message: &QueueMessage, clock: InBatch<'_>) -> bool {
        message.receive_count == 1
            && clock.pending.invisible_until(message)
                >= tokio::time::Instant::now() + self.last_beat_before_end()
    }

    /// A first receive of a known entity (see `process_one`): fetched, skipped as a twin or
    /// delivered, all under the message's invisibility.
    async fn first_receive(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        known: KnownEntity,
        prefetched: &Prefetched,
        clock: InBatch<'_>,
    ) -> Outcome {
        let now_ms = clock.now_ms;
        let hold = Hold::first_receive(&event.id);
        let work = async {
            let enriched = match self.fetch_entity(event, prefetched, now_ms).await {
                Ok(enriched) => enriched,
                Err(failure) => {
                    return self
                        .state_unavailable(message, event, &hold, failure, now_ms)
                        .await
                }
            };
            let state = EntityState {
                enriched,
                snapshot_key: Some(known.key),
                previous: Some(known.previous),
            };
            if is_twin_of_delivered(event, &state) {
                return self.skip_twin(event, state, now_ms).await;
            }
            let prepared = prepare(event, &hold, &event.id, event.ts, state);
            self.route_body(message, event, prepared, now_ms).await
        };
        self.while_holding(message, &hold, clock, work).await
    }

    /// Whether the entity's snapshot lists `event` as delivered; a store error says no.
    async fn snapshot_remembers(&self, event: &RelayEvent) -> bool {
        let Some(key) = SnapshotKey::of(event) else {
            return false;
        };
        matches!(self.ports.snapshots.load(&key).await, Ok(Some(s)) if s.remembers(&event.id))
    }

    /// The news-only rule for a delivered event whose own claim is not ours (COMPLETED, or
    /// the lapsing claim of the delivery its snapshot remembers).
    async fn redelivered_unclaimed(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        prefetched: &Prefetched,
        clock: InBatch<'_>,
    ) -> Outcome {
        match self.fetch_state(event, prefetched, clock.now_ms).await {
            Ok(state) => self.redelivered(message, event, state, clock).await,
            Err(StateFailure::Transient { retry_after }) => {
                Outcome::RetryAfter(self.schedule.delay(message.receive_count, retry_after))
            }
            Err(StateFailure::Blocked { wait }) => Outcome::Defer(wait),
            // The event itself was delivered; a refused re-fetch only means no news.
            Err(StateFailure::Refused(_)) => self.skip_duplicate(event, clock.now_ms).await,
        }
    }

    /// The CRM refused the entity: a duplicate if the entity's snapshot lists the event as
    /// delivered (a refused re-fetch only means no news), else parked.
    async fn refused(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        hold: &Hold,
        reason: String,
        now_ms: i64,
    ) -> Outcome {
        let snapshot = match SnapshotKey::of(event) {
            None => Ok(None),
            Some(key) => self.ports.snapshots.load(&key).await,
        };
        match snapshot {
            Ok(Some(snapshot)) if snapshot.remembers(&event.id) => {
                self.skip_duplicate(event, now_ms).await
            }
            Ok(_) => {
                let failure = StateFailure::Refused(reason);
                self.state_unavailable(message, event, hold, failure, now_ms)
                    .await
            }
            Err(e) => {
                tracing::warn!(event_id = %event.id, error = %e, "snapshot store unavailable");
                Outcome::RetryAfter(self.schedule.delay(message.receive_count, None))
            }
        }
    }

    /// The news-only rule for an event that was already delivered: if the entity now differs
    /// from the stored snapshot, forward it as a new delivery whose webhook-id is the event id
    /// plus the snapshot version it is news against, claimed under that webhook-id (so two
    /// consumers never POST the same news at once); otherwise it is a duplicate.
    async fn redelivered(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        state: EntityState,
        clock: InBatch<'_>,
    ) -> Outcome {
        let now_ms = clock.now_ms;
        let Some(previous) = state.previous.as_ref() else {
            return self.skip_duplicate(event, now_ms).await;
        };
        // Only a fetched entity that differs is news; an entity the CRM no longer gives (or
        // that cannot be read) says nothing new about a delivered event.
        if state
            .enriched
            .entity()
            .is_none_or(|entity| *entity == previous.entity)
        {
            return self.skip_duplicate(event, now_ms).await;
        }
        let webhook_id = redelivery_id(&event.id, previous.version);
        let snapshot_version = previous.version.saturating_add(1).max(event.ts);
        match self.claim(message, &webhook_id, clock).await {
            Err(outcome) => outcome,
            Ok(Err(_completed)) => self.skip_duplicate(event, now_ms).await,
            Ok(Ok(claim)) => {
                tracing::info!(event_id = %event.id, %webhook_id, "redelivered event carries news; forwarding it");
                let hold = Hold::Claimed(claim);
                let prepared = prepare(event, &hold, &webhook_id, snapshot_version, state);
                let work = self.route_body(message, event, prepared, now_ms);
                self.while_holding(message, &hold, clock, work).await
            }
        }
    }

    async fn skip_duplicate(&self, event: &RelayEvent, now_ms: i64) -> Outcome {
        tracing::info!(event_id = %event.id, "already delivered and nothing changed; skipping duplicate");
        let line = AttemptLine::new(&event.id, now_ms, NOWHERE, AttemptOutcome::Skipped)
            .because("duplicate of a delivered event");
        self.record(line).await;
        Outcome::Done
    }

    /// A twin (see [`TWIN_WINDOW_S`]) is not forwarded: the receiver already has this exact
    /// state. It is added to the snapshot's deliveries, so a redelivery of it takes the
    /// news-only path.
    async fn skip_twin(&self, event: &RelayEvent, state: EntityState, now_ms: i64) -> Outcome {
        let delivered_ts = state.previous.as_ref().map_or(0, |s| s.version);
        tracing::info!(event_id = %event.id, event_ts = event.ts, delivered_ts,
            "same state as the delivery stamped within the twin window; not forwarded");
        let line =
            AttemptLine::new(&event.id, now_ms, NOWHERE, AttemptOutcome::Skipped).because(format!(
                "twin of the delivery stamped {delivered_ts}: the entity has not changed since"
            ));
        self.record(line).await;
        if let (Some(key), Some(mut previous)) = (state.snapshot_key, state.previous) {
            previous.remember(&event.id, now_ms, DEDUP_RETENTION);
            self.save_snapshot(event, &key, &previous).await;
        }
        Outcome::Done
    }
}

/// An entity with a snapshot: where it is kept, and what it holds.
struct KnownEntity {
    key: SnapshotKey,
    previous: crate::ports::Snapshot,
}

/// Whether the entity's snapshot lists `event` among its deliveries.
fn remembered(event: &RelayEvent, state: &EntityState) -> bool {
    state
        .previous
        .as_ref()
        .is_some_and(|previous| previous.remembers(&event.id))
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

/// Only the host goes into log lines: some receivers put a secret in the path.
fn url_host(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "<invalid url>".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_urls_for_the_attempt_log() {
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
