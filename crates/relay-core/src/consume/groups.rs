//! A batch's message groups side by side: `process_batch` runs each FIFO group's messages in
//! order on a future of its own and joins the groups here, in the batch's one task, so a batch
//! of ten events about ten entities costs about one round trip to the CRM and the destination.
//!
//! What the groups share is the batch's `Pending` set: which messages are not finished yet,
//! and until when each is known to be invisible. Every hold's heartbeat keeps those invisible;
//! a message handed back with its retry delay leaves the set under the same lock, so no beat
//! of another group overrides that delay afterwards.

use crate::ports::{Queue, QueueMessage};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The batch's messages in batch order, split into their groups (each in batch order), groups
/// ordered by their first message.
pub(super) fn group_indices(messages: &[QueueMessage]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|(group, _)| *group == message.group_id)
        {
            Some((_, members)) => members.push(index),
            None => groups.push((message.group_id.as_str(), vec![index])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
}

#[derive(Clone, Copy, Default)]
struct Standing {
    finished: bool,
    /// When a heartbeat last made it invisible for a whole lease.
    extended_at: Option<Instant>,
}

/// The messages of a batch not finished yet (being worked on, or waiting behind another of
/// their group). Every change of a message's visibility goes through the one lock, so a hand-
/// back and a heartbeat never race each other at the queue.
pub(super) struct Pending<'a> {
    messages: &'a [QueueMessage],
    standing: Mutex<Vec<Standing>>,
    /// Per message, the earliest its invisibility can end, from what this batch asked of the
    /// queue. Its own lock, never held across a call: a first receive's work reads it to stop
    /// in time even while a beat waits on a slow queue under `standing`.
    invisible_until: std::sync::Mutex<Vec<Instant>>,
}

impl<'a> Pending<'a> {
    /// `lease`: a span every receive is known to hide a message for, counted from the receive
    /// (`QueueMessage::received_at_ms`). Queues receive with more than the lease (SQS: the
    /// queue's visibility timeout, 6 x the consumer's timeout; `relay serve`: 6 x its batch
    /// timeout), so the lease is such a span. A message whose receive time is not known is
    /// taken as already visible again.
    pub(super) fn new(messages: &'a [QueueMessage], lease: Duration) -> Self {
        let (now, now_ms) = (Instant::now(), crate::clock::now_unix_ms());
        let until = messages
            .iter()
            .map(|m| match m.received_at_ms {
                Some(at) => {
                    let age = Duration::from_millis(now_ms.saturating_sub(at).max(0) as u64);
                    now + lease.saturating_sub(age)
                }
                None => now,
            })
            .collect();
        Pending {
            messages,
            standing: Mutex::new(vec![Standing::default(); messages.len()]),
            invisible_until: std::sync::Mutex::new(until),
        }
    }

    /// The earliest `message`'s invisibility can end. A message not of this batch (never the
    /// case) reads as ended.
    pub(super) fn invisible_until(&self, message: &QueueMessage) -> Instant {
        let index = self.messages.iter().position(|m| std::ptr::eq(m, message));
        let until = self
            .invisible_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        index
            .and_then(|i| until.get(i).copied())
            .unwrap_or_else(Instant::now)
    }

    /// Records one visibility change of message `index` asked at `asked_at` for `lease`: if
    /// the queue applied it, the message is hidden until at least `asked_at + lease`; if not,
    /// until what it was. `applied`: the queue said it did.
    fn note_visibility(&self, index: usize, asked_at: Instant, lease: Duration, applied: bool) {
        let mut until = self
            .invisible_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(until) = until.get_mut(index) {
            let asked = asked_at + lease;
            *until = if applied { asked } else { (*until).min(asked) };
        }
    }

    /// Finished: done (deleted after the batch), or given back by `hand_back` (its retry
    /// delay, or its wait) under the lock, so that no heartbeat extends its visibility after.
    pub(super) async fn finish_with(&self, index: usize, hand_back: impl Future<Output = ()>) {
        let mut standing = self.standing.lock().await;
        if let Some(standing) = standing.get_mut(index) {
            standing.finished = true;
        }
        hand_back.await;
    }

    /// One heartbeat's share: every unfinished message of the batch invisible for `lease`
    /// more. Several groups beat at once; a message another beat extended within the last
    /// half `period` is skipped, so each is extended about once a period whatever the number
    /// of groups in flight (a beat then comes at most 1.5 periods after the last, well inside
    /// the lease of 3 periods).
    pub(super) async fn keep_invisible(
        &self,
        queue: &dyn Queue,
        lease: Duration,
        period: Duration,
    ) {
        let mut standing = self.standing.lock().await;
        for (index, (message, standing)) in
            self.messages.iter().zip(standing.iter_mut()).enumerate()
        {
            let recent = standing
                .extended_at
                .is_some_and(|at| at.elapsed() < period / 2);
            if standing.finished || recent {
                continue;
            }
            let asked_at = Instant::now();
            // Counted before the answer: a call cut short (timeout) may still be applied.
            self.note_visibility(index, asked_at, lease, false);
            match queue.retry_after(&message.receipt, lease).await {
                Ok(()) => {
                    standing.extended_at = Some(Instant::now());
                    self.note_visibility(index, asked_at, lease, true);
                }
                Err(e) => {
                    tracing::warn!(message_id = %message.message_id, error = %e, "heartbeat: could not extend visibility")
                }
            }
        }
    }
}

/// Runs `futures` side by side in the calling task and gives their outputs in their order.
/// Each is polled only when the task is woken and only until it is done; ten or so groups
/// make polling them all on each wake cheaper than any bookkeeping of which one woke.
pub(super) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut running: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = running.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (future, output) in running.iter_mut().zip(outputs.iter_mut()) {
            if output.is_some() {
                continue;
            }
            match future.as_mut().poll(cx) {
                Poll::Ready(value) => *output = Some(value),
                Poll::Pending => all_done = false,
            }
        }
        if all_done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, group: &str) -> QueueMessage {
        QueueMessage {
            message_id: id.into(),
            receipt: format!("r-{id}"),
            body: String::new(),
            group_id: group.into(),
            receive_count: 1,
            received_at_ms: None,
        }
    }

    #[test]
    fn groups_keep_batch_order_within_and_between_them() {
        let batch = [
            message("1", "a"),
            message("2", "b"),
            message("3", "a"),
            message("4", "c"),
            message("5", "b"),
        ];
        assert_eq!(group_indices(&batch), vec![vec![0, 2], vec![1, 4], vec![3]]);
        assert!(group_indices(&[]).is_empty());
    }

    #[tokio::test]
    async fn join_all_runs_the_futures_side_by_side_and_keeps_their_order() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        // The first waits for the second: run one after the other, this would never end.
        let waits =
            Box::pin(async move { rx.await.unwrap_or(0) }) as Pin<Box<dyn Future<Output = u8>>>;
        let sends = Box::pin(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(7);
            1u8
        }) as Pin<Box<dyn Future<Output = u8>>>;
        let joined = tokio::time::timeout(Duration::from_secs(5), join_all(vec![waits, sends]))
            .await
            .expect("joined");
        assert_eq!(joined, vec![7, 1]);
    }
}
