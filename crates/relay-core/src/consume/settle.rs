//! Last stage of a delivery: settle. What the dispatch came to becomes the message's
//! `Outcome`: a delivery saves its snapshot and completes its claim; a refusal parks the
//! message in the dead-letter queue and releases the claim for `relay replay`.

use super::prepare::SnapshotToSave;
use super::{Consumer, HeldClaim, Outcome, DEDUP_RETENTION};
use crate::enrich::Enriched;
use crate::event::RelayEvent;
use crate::ports::{Ownership, QueueMessage, Snapshot, SnapshotSave};

impl Consumer {
    /// A message no retry can fix goes to the DLQ at once instead of blocking its group.
    pub(super) async fn park_malformed(&self, message: &QueueMessage, reason: &str) -> Outcome {
        tracing::error!(message_id = %message.message_id, %reason, "malformed queue message; parking it");
        self.park(message, &format!("malformed message: {reason}"))
            .await
    }

    pub(super) async fn park(&self, message: &QueueMessage, reason: &str) -> Outcome {
        match self.ports.queue.park_dead_letter(message, reason).await {
            Ok(()) => Outcome::Done,
            Err(e) => {
                tracing::error!(message_id = %message.message_id, error = %e, "could not park in the dead-letter queue; retrying");
                Outcome::RetryAfter(self.schedule.delay(message.receive_count, None))
            }
        }
    }

    pub(super) async fn release(&self, claim: &HeldClaim) {
        if let Err(e) = self.ports.dedup.release(&claim.id, &claim.owner).await {
            // The lease still runs out, so the retry can claim it then.
            tracing::warn!(claim_id = %claim.id, error = %e, "could not release claim");
        }
    }

    /// Parks a claimed event for good. The claim is released, not completed: `relay replay`
    /// re-drives the DLQ after the cause is fixed, and a COMPLETED record would skip it.
    pub(super) async fn park_claimed(
        &self,
        message: &QueueMessage,
        claim: &HeldClaim,
        reason: &str,
    ) -> Outcome {
        let outcome = self.park(message, reason).await;
        if let Outcome::Done = outcome {
            self.release(claim).await;
        }
        outcome
    }

    /// After a delivery: the new snapshot (never over a newer one), or for a delete the
    /// snapshot removed, then COMPLETED. None of it failing undoes the delivery, so each only
    /// warns; a lost COMPLETED at worst re-forwards with the same `webhook-id`.
    pub(super) async fn finish_delivered(
        &self,
        event: &RelayEvent,
        claim: &HeldClaim,
        snapshot: SnapshotToSave,
        now_ms: i64,
    ) -> Outcome {
        if let (Some(key), Enriched::Deleted) = (&snapshot.key, &snapshot.enriched) {
            if let Err(e) = self.ports.snapshots.delete(key).await {
                tracing::warn!(event_id = %event.id, error = %e, "snapshot of a deleted entity not removed");
            }
        }
        if let (Some(key), Some(entity)) = (snapshot.key, snapshot.enriched.into_entity()) {
            let saved = Snapshot {
                entity,
                version: snapshot.version,
            };
            match self.ports.snapshots.save(&key, &saved).await {
                Ok(SnapshotSave::Saved) => {}
                Ok(SnapshotSave::Stale) => {
                    tracing::info!(event_id = %event.id, "a newer snapshot is stored; kept it")
                }
                Err(e) => tracing::warn!(event_id = %event.id, error = %e, "snapshot not saved"),
            }
        }
        self.complete_claim(claim, now_ms).await;
        Outcome::Done
    }

    /// Marks the claim COMPLETED for [`DEDUP_RETENTION`], if this consumer still owns it.
    pub(super) async fn complete_claim(&self, claim: &HeldClaim, now_ms: i64) {
        let expires_at_ms = now_ms.saturating_add(DEDUP_RETENTION.as_millis() as i64);
        match self
            .ports
            .dedup
            .complete(&claim.id, &claim.owner, expires_at_ms)
            .await
        {
            Ok(Ownership::Held) => {}
            Ok(Ownership::Lost) => {
                tracing::warn!(claim_id = %claim.id, "delivered, but another consumer holds the claim now; it completes it")
            }
            Err(e) => {
                tracing::warn!(claim_id = %claim.id, error = %e, "could not mark claim completed")
            }
        }
    }
}
