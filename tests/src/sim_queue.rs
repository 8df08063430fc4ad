//! A FIFO queue on a simulated clock, for cases that need hours of retries in a second: it
//! keeps what SQS FIFO promises (docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/
//! FIFO-queues-understanding-logic.html): within a group, messages come out in order and none
//! while an earlier one is in flight or waiting out its visibility timeout; a deduplication id
//! seen in the last 5 minutes drops the send; past `maxReceiveCount` a message moves to the
//! dead-letter queue. Time moves only when `advance_to` says so.

use async_trait::async_trait;
use relay_core::error::StoreError;
use relay_core::event::RelayEvent;
use relay_core::ports::{OutgoingMessage, Queue, QueueMessage};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// SQS FIFO's deduplication interval.
const DEDUP_WINDOW_MS: i64 = 5 * 60 * 1000;

struct Stored {
    seq: u64,
    message_id: String,
    receipt: String,
    body: String,
    group_id: String,
    receive_count: u32,
    visible_at_ms: i64,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    messages: Vec<Stored>,
    dead: Vec<(QueueMessage, String)>,
    dedup_seen: HashMap<String, i64>,
}

pub struct SimQueue {
    state: Mutex<State>,
    clock: AtomicI64,
    max_receive_count: u32,
}

impl SimQueue {
    pub fn new(start_ms: i64, max_receive_count: u32) -> Arc<SimQueue> {
        Arc::new(SimQueue {
            state: Mutex::new(State::default()),
            clock: AtomicI64::new(start_ms),
            max_receive_count,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    pub fn advance_to(&self, at_ms: i64) {
        self.clock.fetch_max(at_ms, Ordering::SeqCst);
    }

    fn push(&self, body: String, group_id: String, dedup_id: String) {
        let now = self.now_ms();
        let mut s = self.lock();
        s.dedup_seen.retain(|_, at| *at > now - DEDUP_WINDOW_MS);
        if s.dedup_seen.contains_key(&dedup_id) {
            return;
        }
        s.dedup_seen.insert(dedup_id, now);
        s.next_seq += 1;
        let seq = s.next_seq;
        s.messages.push(Stored {
            seq,
            message_id: format!("sim-{seq}"),
            receipt: String::new(),
            body,
            group_id,
            receive_count: 0,
            visible_at_ms: now,
        });
    }

    /// Up to `max` messages, the head of each group that is visible now; each is hidden for
    /// `visibility`. A head received more than `max_receive_count` times is dead-lettered.
    pub fn receive(&self, max: usize, visibility: Duration) -> Vec<QueueMessage> {
        let now = self.now_ms();
        let mut s = self.lock();
        let mut heads: HashMap<String, u64> = HashMap::new();
        for m in &s.messages {
            let head = heads.entry(m.group_id.clone()).or_insert(m.seq);
            *head = (*head).min(m.seq);
        }
        let mut out = Vec::new();
        let mut order: Vec<u64> = heads.into_values().collect();
        order.sort_unstable();
        for seq in order {
            if out.len() >= max {
                break;
            }
            let Some(index) = s.messages.iter().position(|m| m.seq == seq) else {
                continue;
            };
            if s.messages[index].visible_at_ms > now {
                continue;
            }
            if s.messages[index].receive_count >= self.max_receive_count {
                let m = s.messages.remove(index);
                let letter = QueueMessage {
                    message_id: m.message_id,
                    receipt: m.receipt,
                    body: m.body,
                    group_id: m.group_id,
                    receive_count: m.receive_count,
                    // Simulated time: no wall-clock receive, so every event is claimed.
                    received_at_ms: None,
                };
                s.dead.push((letter, "maxReceiveCount exceeded".into()));
                continue;
            }
            let m = &mut s.messages[index];
            m.receive_count += 1;
            m.receipt = format!("{}-r{}", m.message_id, m.receive_count);
            m.visible_at_ms = now + visibility.as_millis() as i64;
            out.push(QueueMessage {
                message_id: m.message_id.clone(),
                receipt: m.receipt.clone(),
                body: m.body.clone(),
                group_id: m.group_id.clone(),
                receive_count: m.receive_count,
                received_at_ms: None,
            });
        }
        out
    }

    pub fn delete(&self, receipt: &str) {
        self.lock().messages.retain(|m| m.receipt != receipt);
    }

    /// When the next group's head becomes visible; `None` when the queue is empty.
    pub fn next_visible_at(&self) -> Option<i64> {
        let s = self.lock();
        let mut heads: HashMap<&str, &Stored> = HashMap::new();
        for m in &s.messages {
            let head = heads.entry(m.group_id.as_str()).or_insert(m);
            if m.seq < head.seq {
                *head = m;
            }
        }
        heads.values().map(|m| m.visible_at_ms).min()
    }

    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (body, reason) of every dead letter, oldest first.
    pub fn dead_letters(&self) -> Vec<(String, String)> {
        self.lock()
            .dead
            .iter()
            .map(|(m, r)| (m.body.clone(), r.clone()))
            .collect()
    }

    /// `relay replay`: every dead letter back at the end of its group, with a fresh id.
    pub fn redrive_all(&self) -> usize {
        let letters: Vec<(QueueMessage, String)> = std::mem::take(&mut self.lock().dead);
        let moved = letters.len();
        for (letter, _) in letters {
            let fresh = format!("{}.redrive.{}", letter.message_id, self.now_ms());
            self.push(letter.body, letter.group_id, fresh);
        }
        moved
    }
}

#[async_trait]
impl Queue for SimQueue {
    async fn send(&self, event: &RelayEvent) -> Result<(), StoreError> {
        let body = serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.push(
            body,
            event.message_group_id(),
            event.send_deduplication_id(),
        );
        Ok(())
    }

    async fn send_message(&self, message: &OutgoingMessage) -> Result<(), StoreError> {
        assert!(message.group_id.len() <= 128 && message.dedup_id.len() <= 128);
        self.push(
            message.body.clone(),
            message.group_id.clone(),
            message.dedup_id.clone(),
        );
        Ok(())
    }

    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut s = self.lock();
        if let Some(m) = s.messages.iter_mut().find(|m| m.receipt == receipt) {
            m.visible_at_ms = now + delay.as_millis() as i64;
        }
        Ok(())
    }

    async fn park_dead_letter(
        &self,
        message: &QueueMessage,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut s = self.lock();
        s.messages.retain(|m| m.message_id != message.message_id);
        s.dead.push((message.clone(), reason.to_string()));
        Ok(())
    }
}
