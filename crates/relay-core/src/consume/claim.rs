//! The claim every delivery runs under: one owner per dedup key (the event's webhook-id, or a
//! destination's delivery key), held by a lease that a heartbeat renews, together with the
//! invisibility of the batch's unfinished messages, while the stages work. Lost claim, no POST.

use super::{Consumer, InBatch, Outcome};
use crate::forward::MAX_RETRY_DELAY;
use crate::ports::{Claim, Ownership, QueueMessage};
use std::time::Duration;

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
        let claim = HeldClaim {
            id: id.to_string(),
            owner: owner_token(),
        };
        let lease_until_ms = clock.now_plus(self.lease_span);
        match self
            .ports
            .dedup
            .claim(&claim.id, &claim.owner, lease_until_ms, clock.now_ms)
            .await
        {
            Ok(Claim::Acquired) => Ok(Ok(claim)),
            Ok(Claim::HeldElsewhere { lease_until_ms }) => {
                tracing::info!(claim_id = %id, "another consumer holds this event; retrying after its lease");
                let wait = Duration::from_millis(
                    lease_until_ms.saturating_sub(clock.now_ms).max(0) as u64,
                );
                Err(Outcome::RetryAfter(
                    wait.clamp(Duration::from_secs(1), MAX_RETRY_DELAY),
                ))
            }
            Ok(other) => Ok(Err(other)),
            Err(e) => {
                tracing::warn!(claim_id = %id, error = %e, "dedup store unavailable");
                Err(Outcome::RetryAfter(
                    self.schedule.delay(message.receive_count, None),
                ))
            }
        }
    }

    /// Runs `work` under `claim`: a heartbeat renews the dedup lease and the message's
    /// invisibility, so no other consumer starts the same event while its POST is in flight.
    /// If the claim is lost anyway (the store was unreachable for a whole lease and another
    /// consumer took over), the work is dropped, which aborts its POST. A claim whose work
    /// ends in a retry is released for the retry.
    pub(super) async fn while_holding<F>(
        &self,
        message: &QueueMessage,
        claim: &HeldClaim,
        clock: InBatch<'_>,
        work: F,
    ) -> Outcome
    where
        F: std::future::Future<Output = Outcome>,
    {
        let period = self.lease_span / 3;
        // The beats run beside the work, not between its steps, so a slow store call in a
        // beat never holds up the POST, and a slow POST never holds up the beats.
        let beats = async {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                ticks.tick().await;
                if let Ownership::Lost = self.heartbeat(claim, clock, period).await {
                    return;
                }
            }
        };
        let outcome = tokio::select! {
            outcome = work => outcome,
            () = beats => {
                tracing::warn!(claim_id = %claim.id, "claim lost to another consumer; abandoning this attempt");
                Outcome::RetryAfter(self.schedule.delay(message.receive_count, None))
            }
        };
        if let Outcome::RetryAfter(_) | Outcome::Defer(_) = outcome {
            self.release(claim).await;
        }
        outcome
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
        let invisible =
            clock
                .pending
                .keep_invisible(self.ports.queue.as_ref(), self.lease_span, period);
        // Bounded, so a slow queue cannot make the next lease renewal late.
        if tokio::time::timeout(period, invisible).await.is_err() {
            tracing::warn!(claim_id = %claim.id, "heartbeat: extending visibility took too long");
        }
        ownership
    }
}
