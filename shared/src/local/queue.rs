//! The embedded FIFO queue: what SQS FIFO and the Lambda event source mapping do for the
//! cloud build. Per-group order with one message in flight per group, visibility timeouts,
//! receive counts, a dead-letter table after too many receives, and redrive.

use super::{db, duration_ms, lock, unix_ms_now, Inner, SqliteStore};
use crate::error::StoreError;
use crate::event::RelayEvent;
use crate::ports::{DeadLetter, PollingQueue, Queue, QueueMessage, RedriveFilter};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// SQS FIFO drops a send whose deduplication id it saw in the last 5 minutes; so do we.
pub const DEDUP_WINDOW_MS: i64 = 5 * 60 * 1000;
/// A `receive` call stops after this many rounds of dead-lettering heads; each round moves
/// at least one message, so this only bounds a pathological backlog of poison messages.
const MAX_DEAD_LETTER_ROUNDS: usize = 1000;

/// One send waiting for the next group commit.
struct PendingSend {
    message: NewMessage,
    done: oneshot::Sender<Result<(), String>>,
}

/// Sends not yet committed, and whether a committer is running. One committer at a time
/// drains everything that queued up while it committed, so a burst costs one fsync per
/// round instead of one per event.
#[derive(Default)]
pub(super) struct PendingSends {
    queue: Vec<PendingSend>,
    committer_running: bool,
}

struct NewMessage {
    dedup_id: String,
    group_id: String,
    body: String,
}

fn new_message_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Commits rounds of pending sends until none are left, then steps down.
fn run_committer(inner: &Inner) {
    // If a commit panics, the next sender must be able to start a committer again; the
    // senders of the lost round see their channel closed and report the store unavailable.
    struct StepDownOnPanic<'a>(&'a Inner);
    impl Drop for StepDownOnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                lock(&self.0.pending).committer_running = false;
            }
        }
    }
    let _guard = StepDownOnPanic(inner);
    loop {
        let batch = {
            let mut pending = lock(&inner.pending);
            if pending.queue.is_empty() {
                pending.committer_running = false;
                return;
            }
            std::mem::take(&mut pending.queue)
        };
        let result = commit_durably(&mut lock(&inner.conn), &batch).map_err(|e| e.to_string());
        for pending in batch {
            let _ = pending.done.send(result.clone());
        }
    }
}

/// Commits a round of sends with `synchronous=FULL`: the WAL is fsynced before the senders
/// hear Ok, because ingress answers 202 on it. The rest of the store runs at NORMAL (see
/// `SqliteStore::open`); one FULL commit also makes every earlier WAL frame durable.
fn commit_durably(conn: &mut Connection, batch: &[PendingSend]) -> Result<(), StoreError> {
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db("send: synchronous"))?;
    let result = commit_sends(conn, batch, unix_ms_now());
    let restored = conn
        .pragma_update(None, "synchronous", "NORMAL")
        .map_err(db("send: synchronous"));
    result.and(restored)
}

/// Commits a round of sends in one transaction: one fsync for all of them.
fn commit_sends(
    conn: &mut Connection,
    batch: &[PendingSend],
    now_ms: i64,
) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(db("send: begin"))?;
    tx.execute(
        "DELETE FROM sent_dedup WHERE sent_at_ms < ?1",
        params![now_ms - DEDUP_WINDOW_MS],
    )
    .map_err(db("send: expire dedup ids"))?;
    {
        let mut seen = tx
            .prepare_cached("SELECT 1 FROM sent_dedup WHERE dedup_id = ?1")
            .map_err(db("send: prepare"))?;
        let mut remember = tx
            .prepare_cached("INSERT INTO sent_dedup (dedup_id, sent_at_ms) VALUES (?1, ?2)")
            .map_err(db("send: prepare"))?;
        let mut enqueue = tx
            .prepare_cached(
                "INSERT INTO queue (message_id, dedup_id, group_id, body) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(db("send: prepare"))?;
        for pending in batch {
            let m = &pending.message;
            if seen
                .exists(params![m.dedup_id])
                .map_err(db("send: dedup"))?
            {
                continue;
            }
            remember
                .execute(params![m.dedup_id, now_ms])
                .map_err(db("send: dedup"))?;
            enqueue
                .execute(params![new_message_id(), m.dedup_id, m.group_id, m.body])
                .map_err(db("send: insert"))?;
        }
    }
    tx.commit().map_err(db("send: commit"))
}

#[async_trait]
impl Queue for SqliteStore {
    /// Returns once the event is committed (and fsynced). Sends that arrive while a commit
    /// runs are committed together in the committer's next round.
    async fn send(&self, event: &RelayEvent) -> Result<(), StoreError> {
        let body = serde_json::to_string(event)
            .map_err(|e| StoreError::Corrupt(format!("envelope does not serialize: {e}")))?;
        let (done, committed) = oneshot::channel();
        let start_committer = {
            let mut pending = lock(&self.inner.pending);
            pending.queue.push(PendingSend {
                message: NewMessage {
                    dedup_id: event.deduplication_id().to_string(),
                    group_id: event.message_group_id(),
                    body,
                },
                done,
            });
            !std::mem::replace(&mut pending.committer_running, true)
        };
        if start_committer {
            let inner = Arc::clone(&self.inner);
            // Detached on purpose: it keeps committing for later senders after ours is done.
            tokio::task::spawn_blocking(move || run_committer(&inner));
        }
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StoreError::Unavailable(reason)),
            Err(_) => Err(StoreError::Unavailable(
                "sqlite send: the committing worker stopped".into(),
            )),
        }
    }

    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        let receipt = receipt.to_string();
        self.with_conn(move |conn| {
            // A stale receipt (the message was deleted or received again) changes nothing,
            // as SQS ignores it once the message is gone.
            conn.execute(
                "UPDATE queue SET visible_at_ms = ?1 WHERE receipt = ?2",
                params![unix_ms_now().saturating_add(duration_ms(delay)), receipt],
            )
            .map_err(db("retry_after"))?;
            Ok(())
        })
        .await
    }

    async fn park_dead_letter(
        &self,
        message: &QueueMessage,
        reason: &str,
    ) -> Result<(), StoreError> {
        let message = message.clone();
        let reason = reason.to_string();
        self.with_conn(move |conn| {
            let tx = conn.transaction().map_err(db("park: begin"))?;
            let dedup_id: Option<String> = tx
                .query_row(
                    "SELECT dedup_id FROM queue WHERE message_id = ?1",
                    params![message.message_id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db("park: find"))?;
            tx.execute(
                "INSERT INTO dead_letters (message_id, dedup_id, group_id, body, reason, parked_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    message.message_id,
                    dedup_id.unwrap_or_else(|| message.message_id.clone()),
                    message.group_id,
                    message.body,
                    reason,
                    unix_ms_now()
                ],
            )
            .map_err(db("park: insert"))?;
            tx.execute(
                "DELETE FROM queue WHERE message_id = ?1",
                params![message.message_id],
            )
            .map_err(db("park: delete"))?;
            tx.commit().map_err(db("park: commit"))
        })
        .await
    }
}

struct Head {
    seq: i64,
    message_id: String,
    group_id: String,
    body: String,
    receive_count: u32,
}

fn visible_heads(conn: &Connection, now_ms: i64, limit: usize) -> Result<Vec<Head>, StoreError> {
    // Only the oldest message of a group may be delivered, and only while it is visible:
    // a message in flight (or waiting out a retry delay) holds its whole group back.
    let mut stmt = conn
        .prepare_cached(
            "SELECT q.seq, q.message_id, q.group_id, q.body, q.receive_count
             FROM (SELECT MIN(seq) AS seq FROM queue GROUP BY group_id) AS heads
             JOIN queue AS q ON q.seq = heads.seq
             WHERE q.visible_at_ms <= ?1
             ORDER BY q.seq
             LIMIT ?2",
        )
        .map_err(db("receive: prepare"))?;
    let rows = stmt
        .query_map(params![now_ms, limit as i64], |row| {
            Ok(Head {
                seq: row.get(0)?,
                message_id: row.get(1)?,
                group_id: row.get(2)?,
                body: row.get(3)?,
                receive_count: row.get(4)?,
            })
        })
        .map_err(db("receive: select"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(db("receive: select"))
}

#[async_trait]
impl PollingQueue for SqliteStore {
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        now_ms: i64,
    ) -> Result<Vec<QueueMessage>, StoreError> {
        let max_receive_count = self.max_receive_count();
        self.with_conn(move |conn| {
            let tx = conn.transaction().map_err(db("receive: begin"))?;
            let mut out = Vec::new();
            for _ in 0..MAX_DEAD_LETTER_ROUNDS {
                if out.len() >= max {
                    break;
                }
                let heads = visible_heads(&tx, now_ms, max - out.len())?;
                if heads.is_empty() {
                    break;
                }
                let mut dead_lettered = false;
                for head in heads {
                    if head.receive_count >= max_receive_count {
                        tx.execute(
                            "INSERT INTO dead_letters (message_id, dedup_id, group_id, body, reason, parked_at_ms)
                             SELECT message_id, dedup_id, group_id, body, ?2, ?3 FROM queue WHERE seq = ?1",
                            params![
                                head.seq,
                                format!("received {} times without success", head.receive_count),
                                now_ms
                            ],
                        )
                        .map_err(db("receive: dead-letter"))?;
                        tx.execute("DELETE FROM queue WHERE seq = ?1", params![head.seq])
                            .map_err(db("receive: dead-letter"))?;
                        dead_lettered = true;
                        continue;
                    }
                    let receive_count = head.receive_count + 1;
                    let receipt = format!("{}.{}.{:08x}", head.message_id, receive_count, fastrand::u32(..));
                    tx.execute(
                        "UPDATE queue SET receive_count = ?2, visible_at_ms = ?3, receipt = ?4 WHERE seq = ?1",
                        params![
                            head.seq,
                            receive_count,
                            now_ms.saturating_add(duration_ms(visibility)),
                            receipt
                        ],
                    )
                    .map_err(db("receive: mark in flight"))?;
                    out.push(QueueMessage {
                        message_id: head.message_id,
                        receipt,
                        body: head.body,
                        group_id: head.group_id,
                        receive_count,
                    });
                }
                // Only a dead-lettered head can uncover a deliverable message behind it.
                if !dead_lettered {
                    break;
                }
            }
            tx.commit().map_err(db("receive: commit"))?;
            Ok(out)
        })
        .await
    }

    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        let receipt = receipt.to_string();
        self.with_conn(move |conn| {
            conn.execute("DELETE FROM queue WHERE receipt = ?1", params![receipt])
                .map_err(db("delete"))?;
            Ok(())
        })
        .await
    }

    async fn list_dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.with_conn(|conn| {
            Ok(dead_letter_rows(conn)?
                .into_iter()
                .map(|(_, _, letter)| letter)
                .collect())
        })
        .await
    }

    async fn redrive(&self, filter: &RedriveFilter) -> Result<usize, StoreError> {
        let filter = filter.clone();
        self.with_conn(move |conn| {
            let tx = conn.transaction().map_err(db("redrive: begin"))?;
            let mut moved = 0;
            for (seq, dedup_id, letter) in dead_letter_rows(&tx)? {
                if !filter.selects(&letter, Some(&dedup_id)) {
                    continue;
                }
                // A fresh message at the end of its group, past the dedup window on purpose:
                // the user asked for this event again.
                tx.execute(
                    "INSERT INTO queue (message_id, dedup_id, group_id, body) VALUES (?1, ?2, ?3, ?4)",
                    params![new_message_id(), dedup_id, letter.group_id, letter.body],
                )
                .map_err(db("redrive: enqueue"))?;
                tx.execute("DELETE FROM dead_letters WHERE seq = ?1", params![seq])
                    .map_err(db("redrive: delete"))?;
                moved += 1;
            }
            tx.commit().map_err(db("redrive: commit"))?;
            Ok(moved)
        })
        .await
    }
}

/// Dead letters oldest first, with their row and envelope (dedup) id.
fn dead_letter_rows(conn: &Connection) -> Result<Vec<(i64, String, DeadLetter)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, dedup_id, message_id, body, group_id, reason, parked_at_ms
             FROM dead_letters ORDER BY seq",
        )
        .map_err(db("dead letters: prepare"))?;
    let rows = stmt
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                DeadLetter {
                    message_id: row.get(2)?,
                    body: row.get(3)?,
                    group_id: row.get(4)?,
                    reason: row.get(5)?,
                    parked_at_ms: row.get(6)?,
                },
            ))
        })
        .map_err(db("dead letters: select"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(db("dead letters: select"))
}

impl SqliteStore {
    /// Messages in the queue, in flight or not (for `relay` status lines and tests).
    pub async fn queue_depth(&self) -> Result<usize, StoreError> {
        self.with_conn(|conn| {
            let n: i64 = conn
                .query_row("SELECT COUNT(*) FROM queue", [], |row| row.get(0))
                .map_err(db("queue depth"))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
        .await
    }
}
