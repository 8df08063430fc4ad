//! Last stage of a delivery: settle. What the dispatch came to becomes the message's
//! `Outcome`: a delivery is recorded by one write (its snapshot, which keeps the entity's last
//! delivered event ids, or the dedup record completed for an event with no snapshot); a
//! refusal parks the message in the dead-letter queue and releases a claim for `relay replay`.

use super::claim::HeldClaim;
use super::prepare::SnapshotToSave;
use super::{Consumer, Hold, Outcome, DEDUP_RETENTION};
use crate::enrich::Enriched;
use crate::event::RelayEvent;
use crate::ports::{Ownership, QueueMessage, Snapshot, SnapshotKey, SnapshotSave};

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

    /// Parks a held event for good. A claim is released, not completed: `relay replay`
    /// re-drives the DLQ after the cause is fixed, and a COMPLETED record would skip it.
    pub(super) async fn park_held(
        &self,
        message: &QueueMessage,
        hold: &Hold,
        reason: &str,
    ) -> Outcome {
        let outcome = self.park(message, reason).await;
        if let (Outcome::Done, Some(claim)) = (outcome, hold.claim()) {
            self.release(claim).await;
        }
        outcome
    }

    /// After a delivery, one write records it: the new snapshot (never over a newer one) with
    /// the event among its deliveries; for an older event, or one the CRM answered without an
    /// entity, the stored snapshot with the event added. Where no snapshot stands for the
    /// entity (a delete removes it; an event about no entity, or whose entity the CRM did not
    /// give, has none), the claim is completed instead. A claim left IN_PROGRESS by a saved
    /// snapshot lapses with its lease; a redelivery then finds the event in the snapshot.
    /// None of it failing undoes the delivery, so each only warns; a lost write at worst
    /// re-forwards with the same `webhook-id`, which the receiver drops.
    pub(super) async fn finish_delivered(
        &self,
        event: &RelayEvent,
        hold: &Hold,
        snapshot: SnapshotToSave,
        now_ms: i64,
    ) -> Outcome {
        let SnapshotToSave {
            key,
            enriched,
            version,
            previous,
        } = snapshot;
        let Some(key) = key else {
            self.record_completed(hold, now_ms).await;
            return Outcome::Done;
        };
        if enriched == Enriched::Deleted {
            if let Err(e) = self.ports.snapshots.delete(&key).await {
                tracing::warn!(event_id = %event.id, error = %e, "snapshot of a deleted entity not removed");
            }
            self.record_completed(hold, now_ms).await;
            return Outcome::Done;
        }
        let mut saved = match (enriched.into_entity(), previous) {
            (Some(entity), Some(previous)) if version >= previous.version => Snapshot {
                entity,
                version,
                delivered: previous.delivered,
            },
            // A late event: the stored state is newer, and stays.
            (_, Some(previous)) => previous,
            (Some(entity), None) => Snapshot {
                entity,
                version,
                delivered: Vec::new(),
            },
            (None, None) => {
                self.record_completed(hold, now_ms).await;
                return Outcome::Done;
            }
        };
        saved.remember(&event.id, now_ms, DEDUP_RETENTION);
        self.save_snapshot(event, &key, &saved).await;
        Outcome::Done
    }

    /// Saves a snapshot after its event was dealt with; a failure only warns (see
    /// `finish_delivered`).
    pub(super) async fn save_snapshot(
        &self,
        event: &RelayEvent,
        key: &SnapshotKey,
        saved: &Snapshot,
    ) {
        match self.ports.snapshots.save(key, saved).await {
            Ok(SnapshotSave::Saved) => {}
            Ok(SnapshotSave::Stale) => {
                tracing::info!(event_id = %event.id, "a newer snapshot is stored; kept it")
            }
            Err(e) => tracing::warn!(event_id = %event.id, error = %e, "snapshot not saved"),
        }
    }

    /// Marks the held id COMPLETED for [`DEDUP_RETENTION`]: a claim if this consumer still
    /// owns it; a first receive, which wrote no claim, claims and completes it now (a delete,
    /// or an entity the CRM no longer gives: no snapshot is left to remember the delivery).
    pub(super) async fn record_completed(&self, hold: &Hold, now_ms: i64) {
        let claim = match hold {
            Hold::Claimed(claim) => claim,
            Hold::FirstReceive { id, claimed } => {
                // The heartbeat may be claiming it at this moment too: one claim, shared.
                let claim = claimed.get_or_try_init(|| async {
                    let lease_until_ms =
                        now_ms.saturating_add(self.lease_span.as_millis() as i64);
                    match self.take_claim(id, lease_until_ms, now_ms).await {
                        Ok(Ok(claim)) => Ok(claim),
                        Ok(Err(other)) => {
                            tracing::warn!(claim_id = %id, ?other, "delivered, but its dedup record is already taken");
                            Err(())
                        }
                        Err(e) => {
                            tracing::warn!(claim_id = %id, error = %e, "could not record the delivery");
                            Err(())
                        }
                    }
                });
                match claim.await {
                    Ok(claim) => claim,
                    Err(()) => return,
                }
            }
        };
        self.complete_claim(claim, now_ms).await;
    }

    async fn complete_claim(&self, claim: &HeldClaim, now_ms: i64) {
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
