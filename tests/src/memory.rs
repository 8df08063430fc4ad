//! In-memory ports for the consumer tests (the serverless-rust-demo pattern): the same
//! semantics as the SQLite and DynamoDB stores (conditional claim, conditional snapshot),
//! plus a look at what was queued, delayed and parked.

use crate::probe::QueueProbe;
use async_trait::async_trait;
use relay_core::consume::ConsumerPorts;
use relay_core::error::StoreError;
use relay_core::event::{RelayEvent, Source};
use relay_core::lifecycle::bind::Binding;
use relay_core::ports::{
    Attempt, AttemptLog, BindPlanStore, Claim, DedupStore, DestinationStatus, Outbox, Ownership,
    PortalTokens, Queue, QueueMessage, Snapshot, SnapshotKey, SnapshotSave, SnapshotStore,
    TokenStore,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
enum DedupRecord {
    InProgress { owner: String, lease_until_ms: i64 },
    Completed { expires_at_ms: i64 },
}

#[derive(Default)]
struct Inner {
    sent: Vec<RelayEvent>,
    delays: Vec<(String, Duration)>,
    parked: Vec<(QueueMessage, String)>,
    dedup: HashMap<String, DedupRecord>,
    snapshots: HashMap<SnapshotKey, Snapshot>,
    tokens: HashMap<String, PortalTokens>,
    bind_plans: HashMap<String, Vec<Binding>>,
    attempts: Vec<Attempt>,
    disabled: HashMap<String, String>,
    outbox: Vec<serde_json::Value>,
}

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryStore::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ports(self: &Arc<Self>) -> ConsumerPorts {
        ConsumerPorts {
            queue: self.clone(),
            dedup: self.clone(),
            snapshots: self.clone(),
            tokens: self.clone(),
            attempts: self.clone(),
            destinations: self.clone(),
        }
    }

    /// `Queue::retry_after` calls: (receipt, delay).
    pub fn delays(&self) -> Vec<(String, Duration)> {
        self.lock().delays.clone()
    }

    pub fn outbox(&self) -> Vec<serde_json::Value> {
        self.lock().outbox.clone()
    }
}

#[async_trait]
impl QueueProbe for MemoryStore {
    async fn parked(&self) -> Vec<(String, String)> {
        self.lock()
            .parked
            .iter()
            .map(|(m, r)| (m.body.clone(), r.clone()))
            .collect()
    }
}

#[async_trait]
impl Queue for MemoryStore {
    async fn send(&self, event: &RelayEvent) -> Result<(), StoreError> {
        self.lock().sent.push(event.clone());
        Ok(())
    }

    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        self.lock().delays.push((receipt.to_string(), delay));
        Ok(())
    }

    async fn park_dead_letter(
        &self,
        message: &QueueMessage,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.lock()
            .parked
            .push((message.clone(), reason.to_string()));
        Ok(())
    }
}

#[async_trait]
impl DedupStore for MemoryStore {
    async fn claim(
        &self,
        id: &str,
        owner: &str,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<Claim, StoreError> {
        let mut inner = self.lock();
        match inner.dedup.get(id) {
            Some(DedupRecord::Completed { expires_at_ms }) if *expires_at_ms > now_ms => {
                return Ok(Claim::AlreadyCompleted)
            }
            Some(DedupRecord::InProgress {
                lease_until_ms: held,
                ..
            }) if *held > now_ms => {
                return Ok(Claim::HeldElsewhere {
                    lease_until_ms: *held,
                })
            }
            _ => {}
        }
        inner.dedup.insert(
            id.to_string(),
            DedupRecord::InProgress {
                owner: owner.to_string(),
                lease_until_ms,
            },
        );
        Ok(Claim::Acquired)
    }

    async fn extend(
        &self,
        id: &str,
        owner: &str,
        lease_until_ms: i64,
    ) -> Result<Ownership, StoreError> {
        let mut inner = self.lock();
        match inner.dedup.get_mut(id) {
            Some(DedupRecord::InProgress {
                owner: holder,
                lease_until_ms: lease,
            }) if holder == owner => {
                *lease = lease_until_ms;
                Ok(Ownership::Held)
            }
            _ => Ok(Ownership::Lost),
        }
    }

    async fn complete(
        &self,
        id: &str,
        owner: &str,
        expires_at_ms: i64,
    ) -> Result<Ownership, StoreError> {
        let mut inner = self.lock();
        if let Some(DedupRecord::InProgress { owner: holder, .. }) = inner.dedup.get(id) {
            if holder != owner {
                return Ok(Ownership::Lost);
            }
        }
        inner
            .dedup
            .insert(id.to_string(), DedupRecord::Completed { expires_at_ms });
        Ok(Ownership::Held)
    }

    async fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(DedupRecord::InProgress { owner: holder, .. }) = inner.dedup.get(id) {
            if holder == owner {
                inner.dedup.remove(id);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl SnapshotStore for MemoryStore {
    async fn load(&self, key: &SnapshotKey) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.lock().snapshots.get(key).cloned())
    }

    async fn save(
        &self,
        key: &SnapshotKey,
        snapshot: &Snapshot,
    ) -> Result<SnapshotSave, StoreError> {
        let mut inner = self.lock();
        if let Some(stored) = inner.snapshots.get(key) {
            if stored.version > snapshot.version {
                return Ok(SnapshotSave::Stale);
            }
        }
        inner.snapshots.insert(key.clone(), snapshot.clone());
        Ok(SnapshotSave::Saved)
    }

    async fn delete(&self, key: &SnapshotKey) -> Result<(), StoreError> {
        self.lock().snapshots.remove(key);
        Ok(())
    }

    async fn delete_portal(&self, source: Source, portal: &str) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let before = inner.snapshots.len();
        inner
            .snapshots
            .retain(|k, _| !(k.source == source && k.portal == portal));
        Ok(before - inner.snapshots.len())
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
    async fn get(&self, member_id: &str) -> Result<Option<PortalTokens>, StoreError> {
        Ok(self.lock().tokens.get(member_id).cloned())
    }

    async fn put(&self, tokens: &PortalTokens) -> Result<(), StoreError> {
        self.lock()
            .tokens
            .insert(tokens.member_id.clone(), tokens.clone());
        Ok(())
    }

    async fn delete(&self, member_id: &str) -> Result<(), StoreError> {
        self.lock().tokens.remove(member_id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<PortalTokens>, StoreError> {
        Ok(self.lock().tokens.values().cloned().collect())
    }
}

#[async_trait]
impl BindPlanStore for MemoryStore {
    async fn load_plan(&self, member_id: &str) -> Result<Option<Vec<Binding>>, StoreError> {
        Ok(self.lock().bind_plans.get(member_id).cloned())
    }

    async fn save_plan(&self, member_id: &str, plan: &[Binding]) -> Result<(), StoreError> {
        self.lock()
            .bind_plans
            .insert(member_id.to_string(), plan.to_vec());
        Ok(())
    }

    async fn forget_plan(&self, member_id: &str) -> Result<(), StoreError> {
        self.lock().bind_plans.remove(member_id);
        Ok(())
    }
}

#[async_trait]
impl AttemptLog for MemoryStore {
    async fn record(&self, attempt: &Attempt) -> Result<(), StoreError> {
        self.lock().attempts.push(attempt.clone());
        Ok(())
    }

    async fn list(&self, event_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let mut found: Vec<Attempt> = self
            .lock()
            .attempts
            .iter()
            .filter(|a| a.event_id == event_id)
            .cloned()
            .collect();
        found.sort_by_key(|a| a.at_ms);
        Ok(found)
    }
}

#[async_trait]
impl DestinationStatus for MemoryStore {
    async fn disabled(&self, destination: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().disabled.get(destination).cloned())
    }

    async fn disable(
        &self,
        destination: &str,
        reason: &str,
        _now_ms: i64,
    ) -> Result<(), StoreError> {
        self.lock()
            .disabled
            .insert(destination.to_string(), reason.to_string());
        Ok(())
    }

    async fn enable(&self, destination: &str) -> Result<(), StoreError> {
        self.lock().disabled.remove(destination);
        Ok(())
    }
}

#[async_trait]
impl Outbox for MemoryStore {
    async fn append(&self, body: &serde_json::Value) -> Result<(), StoreError> {
        self.lock().outbox.push(body.clone());
        Ok(())
    }
}
