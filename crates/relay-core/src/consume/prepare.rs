//! First stage of a held event's delivery: enrich. The entity is fetched from the CRM and
//! diffed against its last snapshot, and the result is a `PreparedDelivery` (the body to sign,
//! its webhook-id, the snapshot to save after it, the hold it runs under) for `dispatch`.

use super::attempts::{AttemptLine, CRM};
use super::{Consumer, Hold, Outcome};
use crate::enrich::{Enriched, Prefetched};
use crate::error::EnrichError;
use crate::event::RelayEvent;
use crate::ports::{AttemptOutcome, QueueMessage, Snapshot, SnapshotKey};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

use super::TWIN_WINDOW_S;

/// The entity as the CRM has it now, and the last snapshot to diff it against.
pub(super) struct EntityState {
    pub(super) enriched: Enriched,
    pub(super) snapshot_key: Option<SnapshotKey>,
    pub(super) previous: Option<Snapshot>,
}

/// Why the entity's state could not be had: for now (the CRM or the store is down; the
/// reason is already logged and recorded), or for good (the CRM refused).
pub(super) enum StateFailure {
    Transient {
        retry_after: Option<Duration>,
    },
    /// The CRM method is blocked until its reset (`EnrichError::MethodBlocked`).
    Blocked {
        wait: Duration,
    },
    Refused(String),
}

/// The snapshot a delivery leaves behind once delivered (`settle`): the entity as forwarded,
/// under the version the delivery stands for (or, for a delete, the snapshot removed), with
/// the event added to the deliveries of the snapshot it was diffed against (`previous`).
pub(super) struct SnapshotToSave {
    pub(super) key: Option<SnapshotKey>,
    pub(super) enriched: Enriched,
    pub(super) version: i64,
    pub(super) previous: Option<Snapshot>,
}

/// A held event ready to go out: what `dispatch` sends and `settle` records.
pub(super) struct PreparedDelivery<'a> {
    /// Exactly what is signed and POSTed (before a route's projection).
    pub(super) body: Value,
    pub(super) webhook_id: &'a str,
    pub(super) snapshot: SnapshotToSave,
    pub(super) hold: &'a Hold,
}

impl Consumer {
    /// The entity now (the CRM's answer) and its last snapshot.
    pub(super) async fn fetch_state(
        &self,
        event: &RelayEvent,
        prefetched: &Prefetched,
        now_ms: i64,
    ) -> Result<EntityState, StateFailure> {
        let enriched = self.fetch_entity(event, prefetched, now_ms).await?;
        let snapshot_key = SnapshotKey::of(event);
        let previous = match &snapshot_key {
            None => None,
            Some(key) => self.ports.snapshots.load(key).await.map_err(|e| {
                tracing::warn!(event_id = %event.id, error = %e, "snapshot store unavailable");
                StateFailure::Transient { retry_after: None }
            })?,
        };
        Ok(EntityState {
            enriched,
            snapshot_key,
            previous,
        })
    }

    /// The entity now, as the CRM answers for it; a failure is logged and recorded.
    pub(super) async fn fetch_entity(
        &self,
        event: &RelayEvent,
        prefetched: &Prefetched,
        now_ms: i64,
    ) -> Result<Enriched, StateFailure> {
        match self.enricher.entity(event, prefetched).await {
            Ok(enriched) => Ok(enriched),
            Err(EnrichError::Transient {
                reason,
                retry_after,
            }) => {
                tracing::warn!(event_id = %event.id, %reason, "enrichment failed; will retry");
                // Recorded too: "the CRM was down" is a reason the event has not arrived yet.
                self.record(
                    AttemptLine::new(&event.id, now_ms, CRM, AttemptOutcome::Retry).because(reason),
                )
                .await;
                Err(StateFailure::Transient { retry_after })
            }
            Err(EnrichError::MethodBlocked {
                method,
                retry_after,
            }) => {
                tracing::info!(event_id = %event.id, %method, wait_ms = retry_after.as_millis() as u64,
                    "CRM method blocked until its reset; the event waits");
                let line = AttemptLine::new(&event.id, now_ms, CRM, AttemptOutcome::Deferred)
                    .because(format!("{method}: OPERATION_TIME_LIMIT"));
                self.record(line).await;
                Err(StateFailure::Blocked { wait: retry_after })
            }
            Err(e) => Err(StateFailure::Refused(format!("enrichment refused: {e}"))),
        }
    }

    /// The outcome of an event whose state could not be had: retry, wait, or park.
    pub(super) async fn state_unavailable(
        &self,
        message: &QueueMessage,
        event: &RelayEvent,
        hold: &Hold,
        failure: StateFailure,
        now_ms: i64,
    ) -> Outcome {
        match failure {
            StateFailure::Transient { retry_after } => {
                Outcome::RetryAfter(self.schedule.delay(message.receive_count, retry_after))
            }
            StateFailure::Blocked { wait } => Outcome::Defer(wait),
            StateFailure::Refused(reason) => {
                tracing::error!(event_id = %event.id, %reason, "parking event");
                let line = AttemptLine::new(&event.id, now_ms, CRM, AttemptOutcome::DeadLetter)
                    .because(reason.clone());
                self.record(line).await;
                self.park_held(message, hold, &reason).await
            }
        }
    }
}

/// The body and bookkeeping of one delivery of `event` under `webhook_id`, whose snapshot is
/// saved as `snapshot_version`.
pub(super) fn prepare<'a>(
    event: &RelayEvent,
    hold: &'a Hold,
    webhook_id: &'a str,
    snapshot_version: i64,
    state: EntityState,
) -> PreparedDelivery<'a> {
    let EntityState {
        enriched,
        snapshot_key,
        previous,
    } = state;
    let previous_entity = previous.as_ref().map(|s| &s.entity);
    let changes = changes(previous_entity, enriched.entity());
    let body = forward_body(
        event,
        &Forwarded {
            entity: enriched.entity(),
            previous: previous_entity,
            deleted: enriched == Enriched::Deleted,
            first_seen: snapshot_key.is_some() && previous.is_none(),
            enrichment: enriched.note(),
        },
        &changes,
    );
    PreparedDelivery {
        body,
        webhook_id,
        snapshot: SnapshotToSave {
            key: snapshot_key,
            enriched,
            version: snapshot_version,
            previous,
        },
        hold,
    }
}

/// True when `state` shows nothing new against a snapshot stamped within [`TWIN_WINDOW_S`]
/// of this event: the same change, seen a second time under another id. Deletes, first
/// sightings and events the CRM answered without an entity are never twins.
pub(super) fn is_twin_of_delivered(event: &RelayEvent, state: &EntityState) -> bool {
    let (Some(previous), Some(entity)) = (&state.previous, state.enriched.entity()) else {
        return false;
    };
    *entity == previous.entity && event.ts.abs_diff(previous.version) <= TWIN_WINDOW_S as u64
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
}
