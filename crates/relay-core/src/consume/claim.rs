//! What every delivery runs under, so one event has one POST in flight: a `Hold`. A first
//! receive of a known entity holds the message's own invisibility (no other consumer has had
//! the message, and none gets it while a heartbeat keeps it hidden); everything else holds a
//! dedup claim (owner token, lease) in the store. A first receive that cannot keep its
//! message hidden claims it before the invisibility can end; hold lost, no POST.

use super::{Consumer, InBatch, Outcome};
use crate::error::StoreError;
use crate::forward::MAX_RETRY_DELAY;
use crate::ports::{Claim, Ownership, QueueMessage};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// What keeps one event's (or one destination delivery's) POST single while the stages work.
pub(super) enum Hold {
    /// A dedup claim in the store: redeliveries (a consumer of an older build may still hold
    /// the message under a claim), first sightings (whose claim is also their dedup record,
    /// see `process_one`), events with no snapshot and destination deliveries.
    Claimed(HeldClaim),
    /// A first receive (`receive_count` 1, received moments ago) of an entity with a
    /// snapshot. The queue has handed the message to nobody else, and hands it to nobody while
    /// it stays invisible: the heartbeat extends that. No dedup write: the snapshot, saved
    /// after the POST, records the delivery. `claimed`: a claim taken after all, when the
    /// invisibility could not be kept (`while_holding`) or to record a delivery no snapshot
    /// remembers (`settle`); whichever comes first takes it, the other uses it.
    FirstReceive {
        id: String,
        claimed: OnceCell<HeldClaim>,
    },
}

impl Hold {
    pub(super) fn first_receive(id: &str) -> Self {
        Hold::FirstReceive {
            id: id.to_string(),
            claimed: OnceCell::new(),
        }
    }

    /// The dedup claim this hold has in the store, if any.
    pub(super) fn claim(&self) -> Option<&HeldClaim> {
        match self {
            Hold::Claimed(claim) => Some(claim),
            Hold::FirstReceive { claimed, .. } => claimed.get(),
        }
    }
}

/// A dedup claim this consumer holds: the record id (the webhook-id) and its owner token.
pub(super) struct HeldClaim {
    pub(super) id: String,
    pub(super) owner: String,
}

/// A fresh owner token per claim: it only has to differ between claims, not be secret.
fn owner_token() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

impl Consumer {
    /// Claims `id` for this consumer: `Ok` with the claim, or the outcome of not getting it.
    pub(super) async fn claim(
        &self,
        message: &QueueMessage,
        id: &str,
        clock: InBatch<'_>,
    ) -> Result<Result<HeldClaim, Claim>, Outcome> {
        match self
            .take_claim(id, clock.now_plus(self.lease_span), clock.now_ms)
            .await
        {
            Ok(Ok(claim)) => Ok(Ok(claim)),
            Ok(Err(Claim::HeldElsewhere { lease_until_ms })) => {
                tracing::info!(claim_id = %id, "another consumer holds this event; retrying after its lease");
                let wait = Duration::from_millis(
                    lease_until_ms.saturating_sub(clock.now_ms).max(0) as u64,
                );
                Err(Outcome::RetryAfter(
                    wait.clamp(Duration::from_secs(1), MAX_RETRY_DELAY),
                ))
            }
            Ok(Err(other)) => Ok(Err(other)),
            Err(e) => {
                tracing::warn!(claim_id = %id, error = %e, "dedup store unavailable");
                Err(Outcome::RetryAfter(
                    self.schedule.delay(message.receive_count, None),
                ))
            }
        }
    }

    /// How often a hold is renewed: a third of the lease, so two beats can fail before it ends.
    fn beat_period(&self) -> Duration {
        self.lease_span / 3
    }

    /// How long before the end of a message's known invisibility its last beat comes (see
    /// `beat_visibility`): a message with less than this left goes out claimed instead.
    pub(super) fn last_beat_before_end(&self) -> Duration {
        let period = self.beat_period();
        period + period / 2
    }

    /// One claim write: `id` under a fresh owner token, leased until `lease_until_ms`; the
    /// claim if acquired, else what the store holds.
    pub(super) async fn take_claim(
        &self,
        id: &str,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<Result<HeldClaim, Claim>, StoreError> {
        let claim = HeldClaim {
            id: id.to_string(),
            owner: owner_token(),
        };
        match self
            .ports
            .dedup
            .claim(&claim.id, &claim.owner, lease_until_ms, now_ms)
            .await?
        {
            Claim::Acquired => Ok(Ok(claim)),
            other => Ok(Err(other)),
        }
    }

    /// Runs `work` under `hold`: a heartbeat renews the hold (a claim's lease, and the
    /// invisibility of the batch's unfinished messages), so no other consumer starts the same
    /// event while its POST is in flight. A first receive whose invisibility could not be
    /// extended claims the event before that invisibility can end, and goes on under the
    /// claim: a consumer that receives the message afterwards finds it held. If the hold is
    /// lost anyway (a claim's store unreachable for a whole lease and another consumer took
    /// over, or no claim to be had), the work is dropped, which aborts its POST. A claim whose
    /// work ends in a retry is released for the retry.
    pub(super) async fn while_holding<F>(
        &self,
        message: &QueueMessage,
        hold: &Hold,
        clock: InBatch<'_>,
        work: F,
    ) -> Outcome
    where
        F: Future<Output = Outcome>,
    {
        let period = self.beat_period();
        let mut work = std::pin::pin!(work);
        let (id, claimed) = match hold {
            Hold::Claimed(claim) => {
                return self.under_claim(message, claim, clock, work.as_mut()).await
            }
            Hold::FirstReceive { id, claimed } => (id, claimed),
        };
        // The beats run beside the work, not between its steps, so a slow queue call in a beat
        // never holds up the POST, and a slow POST never holds up the beats; the claim taken
        // after all is taken in the beats too, while the work goes on.
        let beats = async {
            let until = self.beat_visibility(message, clock, period).await;
            // Bounded by the invisibility left: a claim that lands later may find another
            // consumer's, and this one must not still be POSTing then.
            let left = until.saturating_duration_since(Instant::now());
            let claim = claimed.get_or_try_init(|| self.claim_after_all(message, id, clock));
            let Ok(Ok(claim)) = tokio::time::timeout(left, claim).await else {
                return;
            };
            tracing::warn!(hold_id = %id, "could not keep the message invisible; holding it by a claim instead");
            self.beat_claim(claim, clock, period).await;
        };
        let outcome = tokio::select! {
            outcome = work.as_mut() => outcome,
            () = beats => self.abandon(message, id),
        };
        self.release_for_retry(outcome, claimed.get()).await
    }

    /// A claim whose work ends in a retry (or a wait) is released for that retry; `outcome`
    /// passes through.
    async fn release_for_retry(&self, outcome: Outcome, claim: Option<&HeldClaim>) -> Outcome {
        if let (Outcome::RetryAfter(_) | Outcome::Defer(_), Some(claim)) = (outcome, claim) {
            self.release(claim).await;
        }
        outcome
    }

    /// A first receive's claim, taken after all; `Err` when it cannot be had.
    async fn claim_after_all(
        &self,
        message: &QueueMessage,
        id: &str,
        clock: InBatch<'_>,
    ) -> Result<HeldClaim, ()> {
        match self.claim(message, id, clock).await {
            Ok(Ok(claim)) => Ok(claim),
            Ok(Err(_)) | Err(_) => Err(()),
        }
    }

    /// The rest of `work` under `claim`, which a heartbeat renews; released if the work ends
    /// in a retry.
    async fn under_claim(
        &self,
        message: &QueueMessage,
        claim: &HeldClaim,
        clock: InBatch<'_>,
        work: Pin<&mut impl Future<Output = Outcome>>,
    ) -> Outcome {
        let period = self.beat_period();
        let outcome = tokio::select! {
            outcome = work => outcome,
            () = self.beat_claim(claim, clock, period) => self.abandon(message, &claim.id),
        };
        self.release_for_retry(outcome, Some(claim)).await
    }

    fn abandon(&self, message: &QueueMessage, hold_id: &str) -> Outcome {
        tracing::warn!(%hold_id, "hold lost (claim taken over, or the message neither kept invisible nor claimed); abandoning this attempt");
        Outcome::RetryAfter(self.schedule.delay(message.receive_count, None))
    }

    /// A claim's beats, every `period`, until the claim is lost.
    async fn beat_claim(&self, claim: &HeldClaim, clock: InBatch<'_>, period: Duration) {
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            ticks.tick().await;
            if let Ownership::Lost = self.heartbeat(claim, clock, period).await {
                return;
            }
        }
    }

    /// A first receive's beats: the batch's unfinished messages kept invisible every
    /// `period`, and at least one and a half periods before `message`'s known invisibility
    /// ends; returns that end once it is a period away (the beats failed), so the caller can
    /// claim the message before another consumer can receive it.
    pub(super) async fn beat_visibility(
        &self,
        message: &QueueMessage,
        clock: InBatch<'_>,
        period: Duration,
    ) -> Instant {
        let mut last_beat = Instant::now();
        loop {
            let until = clock.pending.invisible_until(message);
            let give_up_at = until - period;
            if Instant::now() >= give_up_at {
                return until;
            }
            // Spaced a little even when the end is near, so failing calls do not spin.
            let next_beat = (last_beat + period)
                .min(until - self.last_beat_before_end())
                .max(last_beat + period / 8);
            let beat = async {
                tokio::time::sleep_until(next_beat).await;
                self.keep_batch_invisible(clock, period).await;
            };
            // The give-up time is kept even while a beat hangs on a slow queue; the loop then
            // looks again, since another group's beat may have extended the message meanwhile.
            tokio::select! {
                () = tokio::time::sleep_until(give_up_at) => {}
                () = beat => last_beat = Instant::now(),
            }
        }
    }

    /// One beat: the lease, and the invisibility of every message of the batch not finished
    /// yet (SQS ChangeMessageVisibility with its receipt handle), so none is handed to another
    /// consumer while this one still means to process it. A store error is not a loss: the
    /// lease still runs, and the next beat retries.
    async fn heartbeat(
        &self,
        claim: &HeldClaim,
        clock: InBatch<'_>,
        period: Duration,
    ) -> Ownership {
        // The lease first: it is what keeps a second POST out.
        let ownership = match self
            .ports
            .dedup
            .extend(&claim.id, &claim.owner, clock.now_plus(self.lease_span))
            .await
        {
            Ok(ownership) => ownership,
            Err(e) => {
                tracing::warn!(claim_id = %claim.id, error = %e, "heartbeat: could not extend the lease");
                Ownership::Held
            }
        };
        if ownership == Ownership::Lost {
            return ownership;
        }
        self.keep_batch_invisible(clock, period).await;
        ownership
    }

    /// The batch's unfinished messages invisible for a lease more. Bounded by `period`, so a
    /// slow queue cannot make the next beat late.
    async fn keep_batch_invisible(&self, clock: InBatch<'_>, period: Duration) {
        let invisible =
            clock
                .pending
                .keep_invisible(self.ports.queue.as_ref(), self.lease_span, period);
        if tokio::time::timeout(period, invisible).await.is_err() {
            tracing::warn!("heartbeat: extending visibility took too long");
        }
    }
}
