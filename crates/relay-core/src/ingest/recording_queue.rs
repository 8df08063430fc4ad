//! Test double for ingress tests: a `Queue` that keeps what it was sent in memory, or fails
//! every send to stand in for an SQS outage. The real adapters live in `aws` and `local`.

use crate::error::StoreError;
use crate::event::RelayEvent;
use crate::ports::{Queue, QueueMessage};
use async_trait::async_trait;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct RecordingQueue {
    sent: Mutex<Vec<RelayEvent>>,
    down: bool,
}

impl RecordingQueue {
    /// A queue whose every send fails, as SQS does when it cannot be reached.
    pub fn down() -> Self {
        RecordingQueue {
            sent: Mutex::new(Vec::new()),
            down: true,
        }
    }

    pub fn sent(&self) -> Vec<RelayEvent> {
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Queue for RecordingQueue {
    async fn send(&self, event: &RelayEvent) -> Result<(), StoreError> {
        if self.down {
            return Err(StoreError::Unavailable("test queue is down".into()));
        }
        self.sent
            .lock()
            .map_err(|_| StoreError::Unavailable("poisoned".into()))?
            .push(event.clone());
        Ok(())
    }

    async fn retry_after(&self, _receipt: &str, _delay: Duration) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("ingress never retries".into()))
    }

    async fn park_dead_letter(&self, _: &QueueMessage, _: &str) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("ingress never parks".into()))
    }
}
