//! The embedded FIFO queue: what SQS FIFO and the Lambda event source mapping do for the
//! cloud build. Per-group order with one message in flight per group, visibility timeouts,
//! receive counts, a dead-letter table after too many receives, and redrive.

use super::{db, duration_ms, unix_ms_now, CachedStatements, SqliteStore, Undo};
use async_trait::async_trait;
use relay_core::error::StoreError;
use relay_core::event::RelayEvent;
use relay_core::ports::{
    DeadLetter, OutgoingMessage, PollingQueue, Queue, QueueMessage, RedriveFilter,
};
use rusqlite::{params, Connection, OptionalExtension};
use std::time::Duration;

/// SQS FIFO drops a send whose deduplication id it saw in the last 5 minutes; so do we.
pub const DEDUP_WINDOW_MS: i64 = 5 * 60 * 1000;
/// A `receive` call stops after this many rounds of dead-lettering heads; each round moves
/// at least one message, so this only bounds a pathological backlog of poison messages.
const MAX_DEAD_LETTER_ROUNDS: usize = 1000;

/// `queue.db`'s schema version (its own `PRAGMA user_version`).
/// 2: no UNIQUE index on `message_id` or `receipt` (`rebuild_queue_without_unique_indexes`).
const QUEUE_SCHEMA_VERSION: i64 = 2;

/// The queue table's columns. Neither `message_id` nor `receipt` is UNIQUE: each UNIQUE
/// constraint is an index that every send, receive and delete would write, and nothing needs
/// them. A receipt starts with its message's `seq` (`new_receipt`), so the receipt's lookups
/// go by the table's own key and compare the receipt there; a message id is 64 random bits
/// after the send time, so two never meet.
macro_rules! queue_columns {
    () => {
        "seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at_ms INTEGER NOT NULL DEFAULT 0,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    is_head INTEGER NOT NULL DEFAULT 0"
    };
}

/// `queue.db`: the queue, the send deduplication window and the dead letters.
///
/// Group heads: `is_head` marks the oldest message of each group, and a partial index over
/// the heads by (visible_at_ms, seq) lets `receive` read the next visible heads directly
/// instead of grouping the whole queue per call. `seq` only grows, so a new message is a head
/// exactly when its group was empty: `INSERT_MESSAGE` sets the mark as it inserts. A removed
/// head hands the mark to the next oldest of its group, by a trigger, so every path that
/// removes a message (delete, park, dead-letter) keeps the heads right.
const QUEUE_SCHEMA: &str = concat!(
    "CREATE TABLE IF NOT EXISTS queue (",
    queue_columns!(),
    ");
CREATE INDEX IF NOT EXISTS queue_group_order ON queue(group_id, seq);
CREATE INDEX IF NOT EXISTS queue_visible_heads ON queue(visible_at_ms, seq) WHERE is_head = 1;
CREATE TRIGGER IF NOT EXISTS queue_head_on_delete AFTER DELETE ON queue
WHEN OLD.is_head = 1
BEGIN
    UPDATE queue SET is_head = 1
    WHERE seq = (SELECT MIN(seq) FROM queue WHERE group_id = OLD.group_id);
END;
CREATE TABLE IF NOT EXISTS sent_dedup (
    dedup_id TEXT PRIMARY KEY,
    sent_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sent_dedup_age ON sent_dedup(sent_at_ms);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    parked_at_ms INTEGER NOT NULL
);
"
);

/// Creates `queue.db`'s tables, or brings an older file's up to date; one transaction, so a
/// second process opening the same directory never sees half a schema.
pub(super) fn configure_queue(conn: &Connection) -> Result<(), StoreError> {
    let version = super::schema_version_known(conn, super::QUEUE_DB_FILE, QUEUE_SCHEMA_VERSION)?;
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)
        .map_err(db("queue schema: begin"))?;
    if version == 1 {
        rebuild_queue_without_unique_indexes(&tx)?;
    }
    tx.execute_batch(QUEUE_SCHEMA).map_err(db("queue schema"))?;
    tx.pragma_update(None, "user_version", QUEUE_SCHEMA_VERSION)
        .map_err(db("queue user_version"))?;
    tx.commit().map_err(db("queue schema: commit"))
}

/// Schema 1 -> 2: SQLite drops a UNIQUE constraint only with its table, so the queue is
/// copied into a table without them, in order, and takes the old one's name and its
/// AUTOINCREMENT counter (a `seq` is never handed out twice). `QUEUE_SCHEMA` then puts the
/// indexes and the trigger back. Receipts written by schema 1 match nothing afterwards:
/// their messages come back once their visibility timeout ends, as after any restart.
fn rebuild_queue_without_unique_indexes(tx: &Connection) -> Result<(), StoreError> {
    const COLUMNS: &str =
        "seq, message_id, dedup_id, group_id, body, visible_at_ms, receive_count, receipt, is_head";
    tx.execute_batch(&format!(
        "CREATE TABLE queue_rebuilt ({});
         INSERT INTO queue_rebuilt ({COLUMNS}) SELECT {COLUMNS} FROM queue ORDER BY seq;
         DELETE FROM sqlite_sequence WHERE name = 'queue_rebuilt';
         UPDATE sqlite_sequence SET name = 'queue_rebuilt' WHERE name = 'queue';
         DROP TABLE queue;
         ALTER TABLE queue_rebuilt RENAME TO queue;",
        queue_columns!()
    ))
    .map_err(db("queue schema 1 -> 2"))
}

/// A table that moved to `queue.db` at schema 5: the columns it had in `relay.db` (every
/// schema's), and what `queue.db`'s table adds to them.
struct MovedTable {
    name: &'static str,
    columns: &'static str,
    /// (column, value computed from the old row): the queue's `is_head`, each group's oldest
    /// message, since a schema-1 queue has no marks.
    added: Option<(&'static str, &'static str)>,
}

const MOVED_TABLES: [MovedTable; 3] = [
    MovedTable {
        name: "queue",
        columns: "seq, message_id, dedup_id, group_id, body, visible_at_ms, receive_count, receipt",
        added: Some((
            "is_head",
            "seq = (SELECT MIN(seq) FROM main.queue AS older
                    WHERE older.group_id = main.queue.group_id)",
        )),
    },
    MovedTable {
        name: "sent_dedup",
        columns: "dedup_id, sent_at_ms",
        added: None,
    },
    MovedTable {
        name: "dead_letters",
        columns: "seq, message_id, dedup_id, group_id, body, reason, parked_at_ms",
        added: None,
    },
];

impl MovedTable {
    /// Replaces `queue.db`'s rows with `relay.db`'s: a copy interrupted after its commit is
    /// simply done again, and nothing can have written `queue.db` meanwhile (every open moves
    /// the queue before it serves).
    fn copy_sql(&self) -> String {
        let (name, columns) = (self.name, self.columns);
        let (added_column, added_value) = match self.added {
            Some((column, value)) => (format!(", {column}"), format!(", {value}")),
            None => (String::new(), String::new()),
        };
        format!(
            "DELETE FROM moved.{name};
             INSERT INTO moved.{name} ({columns}{added_column})
             SELECT {columns}{added_value} FROM main.{name} ORDER BY rowid;"
        )
    }

    /// Whether the two files' rows differ in any column, either way: a row another process
    /// added, changed (a receive, a retry delay) or removed after the copy.
    fn differs_sql(&self) -> String {
        let (name, columns) = (self.name, self.columns);
        format!(
            "SELECT EXISTS (SELECT {columns} FROM main.{name} EXCEPT SELECT {columns} FROM moved.{name})
                 OR EXISTS (SELECT {columns} FROM moved.{name} EXCEPT SELECT {columns} FROM main.{name})"
        )
    }
}

/// The moved tables `relay.db` still holds.
fn tables_still_in_main(conn: &Connection) -> Result<Vec<&'static MovedTable>, StoreError> {
    let mut present = Vec::new();
    for table in &MOVED_TABLES {
        let holds = conn
            .prepare("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?1")
            .and_then(|mut stmt| stmt.exists(params![table.name]))
            .map_err(db("move queue: find"))?;
        if holds {
            present.push(table);
        }
    }
    Ok(present)
}

/// Schema 5: a `relay.db` that still holds the queue (written before the queue had a file of
/// its own) hands it to `queue.db`. Two transactions, each writing one file, because a
/// transaction over two WAL databases is atomic per file only: first the copy into
/// `queue.db`; then, with both files locked against writers, a check that the two copies
/// are the same and the old tables dropped. Both commits are fsynced, the copy's first: a
/// power cut can leave both copies (the next open copies again and drops), never neither,
/// and never an old queue that comes back after `queue.db` has moved on. If another process
/// (an older relay) changed the old tables in between, the check sees it and the copy runs
/// again; two new ones opening at once find the move done and leave it.
pub(super) fn move_queue_to_its_own_file(
    main: &Connection,
    queue_path: &std::path::Path,
) -> Result<(), StoreError> {
    if tables_still_in_main(main)?.is_empty() {
        return Ok(());
    }
    let queue_path = queue_path
        .to_str()
        .ok_or_else(|| StoreError::Unavailable("move queue: data path is not UTF-8".into()))?;
    main.execute("ATTACH DATABASE ?1 AS moved", params![queue_path])
        .map_err(db("move queue: attach"))?;
    let moved = main
        .execute_batch("PRAGMA main.synchronous = FULL; PRAGMA moved.synchronous = FULL;")
        .map_err(db("move queue: synchronous"))
        .and_then(|()| copy_then_drop(main));
    let restored = main
        .execute_batch("PRAGMA main.synchronous = NORMAL; DETACH DATABASE moved;")
        .map_err(db("move queue: detach"));
    moved.and(restored)
}

fn copy_then_drop(main: &Connection) -> Result<(), StoreError> {
    const ATTEMPTS: usize = 5;
    let immediate = || {
        rusqlite::Transaction::new_unchecked(main, rusqlite::TransactionBehavior::Immediate)
            .map_err(db("move queue: begin"))
    };
    for _ in 0..ATTEMPTS {
        let copy = immediate()?;
        let tables = tables_still_in_main(&copy)?;
        if tables.is_empty() {
            return Ok(()); // another process moved it while we waited for the lock
        }
        for table in &tables {
            copy.execute_batch(&table.copy_sql())
                .map_err(db("move queue: copy"))?;
        }
        copy.commit().map_err(db("move queue: commit copy"))?;

        let check_and_drop = immediate()?;
        let tables = tables_still_in_main(&check_and_drop)?;
        let mut differs = false;
        for table in &tables {
            differs |= check_and_drop
                .query_row(&table.differs_sql(), [], |row| row.get::<_, bool>(0))
                .map_err(db("move queue: check"))?;
        }
        if differs {
            continue; // rolled back as it goes out of scope: copy again
        }
        for table in &tables {
            check_and_drop
                .execute_batch(&format!("DROP TABLE main.{}", table.name))
                .map_err(db("move queue: drop"))?;
        }
        return check_and_drop
            .commit()
            .map_err(db("move queue: commit drop"));
    }
    Err(StoreError::Unavailable(
        "move queue: relay.db's queue kept changing; is an older relay still running on this directory?".into(),
    ))
}

/// Appends a message to its group, marked as the group's head when the group is empty
/// (`?3` is the group). Every path that adds a message uses it.
const INSERT_MESSAGE: &str = "INSERT INTO queue (message_id, dedup_id, group_id, body, is_head)
     VALUES (?1, ?2, ?3, ?4, NOT EXISTS (SELECT 1 FROM queue WHERE group_id = ?3))";

struct NewMessage {
    dedup_id: String,
    group_id: String,
    body: String,
    /// The deduplication id was made for this send, with 64 random bits
    /// (`RelayEvent::send_deduplication_id`): no earlier send can carry it, so the window is
    /// neither consulted nor kept for it. Keeping it would cost every event a write to a
    /// random page of the `sent_dedup` index, for a lookup that can never match.
    fresh_dedup_id: bool,
}

/// Unique and time-ordered: the send time in microseconds, then 64 random bits. A random id
/// would put every insert (and every receipt, which starts with it) on its own page of the
/// `message_id` and `receipt` indexes, so each event would write two more pages to the WAL;
/// in send order, the inserts of a round share the index's last page.
fn new_message_id() -> String {
    let sent_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{sent_us:016x}{:016x}", fastrand::u64(..))
}

/// A receipt for one receive of the message at `seq`: the key first, so every lookup by
/// receipt finds its row by the table's key (`receipt_seq`) and then compares the whole
/// receipt, which the next receive replaces. The random part keeps a stale receipt from
/// ever matching a later receive, even one with the same count after a `defer`.
fn new_receipt(seq: i64, receive_count: u32) -> String {
    format!("{seq}.{receive_count}.{:016x}", fastrand::u64(..))
}

/// The `seq` a receipt names; `None` for anything `new_receipt` did not make, which then
/// matches no message, as a stale receipt does.
fn receipt_seq(receipt: &str) -> Option<i64> {
    receipt.split('.').next()?.parse().ok()
}

/// Enqueues one send unless its deduplication id was sent within the window. Runs in the
/// writer's round: concurrent sends share one transaction and one fsync.
fn enqueue(conn: &Connection, m: &NewMessage, now_ms: i64) -> Result<(), StoreError> {
    if !m.fresh_dedup_id {
        // An index range on the send time: finds nothing to do in O(log n) most of the time.
        conn.prepare_cached("DELETE FROM sent_dedup WHERE sent_at_ms < ?1")
            .and_then(|mut stmt| stmt.execute(params![now_ms - DEDUP_WINDOW_MS]))
            .map_err(db("send: expire dedup ids"))?;
        let remembered = conn
            .prepare_cached(
                "INSERT INTO sent_dedup (dedup_id, sent_at_ms) VALUES (?1, ?2)
                 ON CONFLICT (dedup_id) DO NOTHING",
            )
            .and_then(|mut stmt| stmt.execute(params![m.dedup_id, now_ms]))
            .map_err(db("send: dedup"))?;
        if remembered == 0 {
            return Ok(());
        }
    }
    conn.prepare_cached(INSERT_MESSAGE)
        .and_then(|mut stmt| {
            stmt.execute(params![new_message_id(), m.dedup_id, m.group_id, m.body])
        })
        .map_err(db("send: insert"))?;
    Ok(())
}

impl SqliteStore {
    /// Runs `enqueue` in the queue writer's next fsynced round. With a fresh dedup id it is
    /// one INSERT and needs no savepoint; otherwise it also writes the dedup window, and an
    /// insert that fails must take that write back with it.
    async fn enqueue_durably(&self, message: NewMessage) -> Result<(), StoreError> {
        let undo = if message.fresh_dedup_id {
            Undo::OneStatement
        } else {
            Undo::Savepoint
        };
        self.inner
            .queue_writer
            .write(true, undo, move |conn| {
                enqueue(conn, &message, unix_ms_now())
            })
            .await
    }
}

#[async_trait]
impl Queue for SqliteStore {
    /// Returns once the event is committed (and fsynced). Sends that arrive while a commit
    /// runs are committed together in the writer's next round.
    async fn send(&self, event: &RelayEvent) -> Result<(), StoreError> {
        let body = serde_json::to_string(event)
            .map_err(|e| StoreError::Corrupt(format!("envelope does not serialize: {e}")))?;
        let message = NewMessage {
            dedup_id: event.send_deduplication_id(),
            group_id: event.message_group_id(),
            body,
            fresh_dedup_id: true,
        };
        self.enqueue_durably(message).await
    }

    async fn send_message(&self, message: &OutgoingMessage) -> Result<(), StoreError> {
        let message = NewMessage {
            dedup_id: message.dedup_id.clone(),
            group_id: message.group_id.clone(),
            body: message.body.clone(),
            fresh_dedup_id: false,
        };
        self.enqueue_durably(message).await
    }

    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        let receipt = receipt.to_string();
        self.with_queue_conn(move |conn| {
            let changed = conn
                .execute_cached(
                    "UPDATE queue SET visible_at_ms = ?1 WHERE seq = ?2 AND receipt = ?3",
                    params![
                        unix_ms_now().saturating_add(duration_ms(delay)),
                        receipt_seq(&receipt),
                        receipt
                    ],
                )
                .map_err(db("retry_after"))?;
            // A stale receipt (the message was deleted or received again) changes nothing, and
            // says so, as SQS refuses one (ReceiptHandleIsInvalid, MessageNotInflight): a
            // heartbeat must never count it as the message kept hidden.
            if changed == 0 {
                return Err(StoreError::Unavailable(
                    "retry_after: the receipt is not current (message deleted or received again)"
                        .into(),
                ));
            }
            Ok(())
        })
        .await
    }

    /// As `retry_after`, and the receive that brought the message is given back: a wait the
    /// CRM asked for never moves a message toward the dead-letter table.
    async fn defer(&self, receipt: &str, wait: Duration) -> Result<(), StoreError> {
        let receipt = receipt.to_string();
        self.with_queue_conn(move |conn| {
            conn.execute_cached(
                "UPDATE queue SET visible_at_ms = ?1, receive_count = MAX(receive_count - 1, 0)
                 WHERE seq = ?2 AND receipt = ?3",
                params![
                    unix_ms_now().saturating_add(duration_ms(wait)),
                    receipt_seq(&receipt),
                    receipt
                ],
            )
            .map_err(db("defer"))?;
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
        self.with_queue_conn(move |tx| {
            let found = find_received(tx, &message)?;
            let dedup_id = found.as_ref().map(|(_, dedup_id)| dedup_id.clone());
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
            if let Some((seq, _)) = found {
                tx.execute("DELETE FROM queue WHERE seq = ?1", params![seq])
                    .map_err(db("park: delete"))?;
            }
            Ok(())
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

/// Up to `limit` heads visible at `now_ms`, oldest first. Only the oldest message of a group
/// may be delivered, and only while it is visible: a message in flight (or waiting out a
/// retry delay) holds its whole group back. Two ranges of the visible-heads index, each read
/// no further than `limit` rows: heads never received (`visible_at_ms = 0`) in queue order,
/// and heads whose visibility timeout or retry delay has ended, soonest visible first.
fn visible_heads(conn: &Connection, now_ms: i64, limit: usize) -> Result<Vec<Head>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut heads = Vec::new();
    for sql in [NEVER_RECEIVED_HEADS, RETURNED_HEADS] {
        let mut stmt = conn.prepare_cached(sql).map_err(db("receive: prepare"))?;
        let rows = stmt
            .query_map(params![now_ms, limit], |row| {
                Ok(Head {
                    seq: row.get(0)?,
                    message_id: row.get(1)?,
                    group_id: row.get(2)?,
                    body: row.get(3)?,
                    receive_count: row.get(4)?,
                })
            })
            .map_err(db("receive: select"))?;
        for row in rows {
            heads.push(row.map_err(db("receive: select"))?);
        }
    }
    heads.sort_by_key(|head| head.seq);
    heads.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(heads)
}

/// `?1` is now (unused here: a head never received is visible), `?2` the limit.
const NEVER_RECEIVED_HEADS: &str =
    "SELECT seq, message_id, group_id, body, receive_count FROM queue
     WHERE is_head = 1 AND visible_at_ms = 0
     ORDER BY seq LIMIT ?2";
const RETURNED_HEADS: &str = "SELECT seq, message_id, group_id, body, receive_count FROM queue
     WHERE is_head = 1 AND visible_at_ms > 0 AND visible_at_ms <= ?1
     ORDER BY visible_at_ms, seq LIMIT ?2";

#[async_trait]
impl PollingQueue for SqliteStore {
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        now_ms: i64,
    ) -> Result<Vec<QueueMessage>, StoreError> {
        let max_receive_count = self.max_receive_count();
        self.with_queue_conn(move |tx| {
            let mut out = Vec::new();
            for _ in 0..MAX_DEAD_LETTER_ROUNDS {
                if out.len() >= max {
                    break;
                }
                let heads = visible_heads(tx, now_ms, max - out.len())?;
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
                    let receipt = new_receipt(head.seq, receive_count);
                    tx.execute_cached(
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
                        received_at_ms: Some(now_ms),
                    });
                }
                // Only a dead-lettered head can uncover a deliverable message behind it.
                if !dead_lettered {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        let receipt = receipt.to_string();
        self.with_queue_conn(move |conn| delete_received(conn, &receipt))
            .await
    }

    async fn list_dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.with_queue_reader(|conn| {
            Ok(dead_letter_rows(conn)?
                .into_iter()
                .map(|(_, _, letter)| letter)
                .collect())
        })
        .await
    }

    async fn redrive(&self, filter: &RedriveFilter) -> Result<usize, StoreError> {
        let filter = filter.clone();
        self.with_queue_conn(move |tx| {
            let mut moved = 0;
            for (seq, dedup_id, letter) in dead_letter_rows(tx)? {
                // The body names the event (a fan-out delivery's dedup id is its own, and a
                // send's is `<envelope id>.<per-send suffix>`).
                let envelope = body_id(&letter.body)
                    .unwrap_or_else(|| dedup_id.split('.').next().unwrap_or_default().to_string());
                if !filter.selects(&letter, Some(&envelope)) {
                    continue;
                }
                // A fresh message at the end of its group, past the dedup window on purpose:
                // the user asked for this event again.
                tx.execute(
                    INSERT_MESSAGE,
                    params![new_message_id(), dedup_id, letter.group_id, letter.body],
                )
                .map_err(db("redrive: enqueue"))?;
                tx.execute("DELETE FROM dead_letters WHERE seq = ?1", params![seq])
                    .map_err(db("redrive: delete"))?;
                moved += 1;
            }
            Ok(moved)
        })
        .await
    }
}

/// The row (`seq`, dedup id) of a received message, by its receipt's key and its id. A
/// receipt this store did not make names no row: the message is not in this queue.
fn find_received(
    conn: &Connection,
    message: &QueueMessage,
) -> Result<Option<(i64, String)>, StoreError> {
    let Some(seq) = receipt_seq(&message.receipt) else {
        return Ok(None);
    };
    conn.query_row(
        "SELECT seq, dedup_id FROM queue WHERE seq = ?1 AND message_id = ?2",
        params![seq, message.message_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
    .map_err(db("park: find"))
}

/// Removes the message `receipt` came with, if that receipt is still its current one.
fn delete_received(conn: &Connection, receipt: &str) -> Result<(), StoreError> {
    conn.execute_cached(
        "DELETE FROM queue WHERE seq = ?1 AND receipt = ?2",
        params![receipt_seq(receipt), receipt],
    )
    .map_err(db("delete"))?;
    Ok(())
}

/// The `id` of a message body (the envelope id, or the event id of a fan-out delivery).
fn body_id(body: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("id")?
        .as_str()
        .map(str::to_string)
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
    /// `PollingQueue::delete` for every message of a finished batch, in one write: one
    /// savepoint and one wait for the writer's round instead of one per message. All or
    /// nothing: if it fails, the messages come back after their visibility timeout and the
    /// consumer skips them as delivered, as after a failed `delete`.
    pub async fn delete_batch(&self, receipts: Vec<String>) -> Result<(), StoreError> {
        if receipts.is_empty() {
            return Ok(());
        }
        self.with_queue_conn(move |conn| {
            for receipt in &receipts {
                delete_received(conn, receipt)?;
            }
            Ok(())
        })
        .await
    }

    /// Messages in the queue, in flight or not (for `relay` status lines and tests).
    pub async fn queue_depth(&self) -> Result<usize, StoreError> {
        self.with_queue_reader(|conn| {
            let n: i64 = conn
                .query_row("SELECT COUNT(*) FROM queue", [], |row| row.get(0))
                .map_err(db("queue depth"))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch_dir;

    /// The receive queries read the visible-heads index in its own order: no scan of the
    /// queue and no sort, which is what keeps a receive O(batch) in a deep backlog.
    #[test]
    fn receive_reads_heads_from_the_index_without_sorting() {
        let conn = Connection::open_in_memory().unwrap();
        configure_queue(&conn).unwrap();
        for sql in [NEVER_RECEIVED_HEADS, RETURNED_HEADS] {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = stmt
                .query_map(params![0, 10], |row| row.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("\n");
            assert!(
                plan.contains("USING INDEX queue_visible_heads"),
                "{sql}\n{plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "{sql}\n{plan}");
        }
    }

    /// A message given back as a wait (`defer`) keeps its receive count, so even a queue that
    /// parks on the second receive hands it out again; a retry (`retry_after`) counts.
    #[tokio::test]
    async fn a_deferred_receive_does_not_count_toward_the_dead_letters() {
        let dir = scratch_dir("defer");
        let store = SqliteStore::open(&dir).unwrap();
        store.set_max_receive_count(1);
        let event: RelayEvent = serde_json::from_value(serde_json::json!({
            "v": 1, "id": "e1", "source": "bitrix24", "portal": "m", "family": "deal",
            "event": "ONCRMDEALUPDATE", "entity_id": "7", "ts": 1,
            "received_at": "2026-11-22T10:00:00Z", "data": {}
        }))
        .unwrap();
        store.send(&event).await.unwrap();
        let hide = Duration::from_secs(30);
        let later = unix_ms_now() + 60_000;
        let mut held = store.receive(10, hide, unix_ms_now()).await.unwrap();
        assert_eq!(held[0].receive_count, 1);
        for wait in 1..=2 {
            store.defer(&held[0].receipt, Duration::ZERO).await.unwrap();
            held = store.receive(10, hide, later * wait).await.unwrap();
            assert_eq!(held.len(), 1, "handed out again after wait {wait}");
            assert_eq!(held[0].receive_count, 1, "wait {wait} was not counted");
        }
        store
            .retry_after(&held[0].receipt, Duration::ZERO)
            .await
            .unwrap();
        assert!(store.receive(10, hide, later * 3).await.unwrap().is_empty());
        assert_eq!(
            store.list_dead_letters().await.unwrap().len(),
            1,
            "a retry counts"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The queue table (UNIQUE `message_id` and `receipt`, as every schema before `queue.db`'s
    /// 2 had it) and the dead letters, as both old layouts wrote them.
    const OLD_QUEUE_AND_DEAD_LETTERS: &str = "CREATE TABLE queue (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL UNIQUE,
            dedup_id TEXT NOT NULL, group_id TEXT NOT NULL, body TEXT NOT NULL,
            visible_at_ms INTEGER NOT NULL DEFAULT 0,
            receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT UNIQUE,
            is_head INTEGER NOT NULL DEFAULT 0);
         CREATE INDEX queue_group_order ON queue(group_id, seq);
         CREATE TABLE dead_letters (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL,
            dedup_id TEXT NOT NULL, group_id TEXT NOT NULL, body TEXT NOT NULL,
            reason TEXT NOT NULL, parked_at_ms INTEGER NOT NULL);";

    /// Message `a1` in flight for 30 s more under `a1_receipt`, holding `a2` back in group
    /// `a`; `b1` waiting alone in group `b`.
    fn insert_a1_in_flight_a2_b1(conn: &Connection, a1_receipt: &str, now_ms: i64) {
        conn.execute(
            "INSERT INTO queue (seq, message_id, dedup_id, group_id, body, visible_at_ms,
                                receive_count, receipt, is_head) VALUES
                (7, 'a1', 'a1', 'a', 'a1', ?1, 1, ?2, 1),
                (8, 'a2', 'a2', 'a', 'a2', 0, 0, NULL, 0),
                (9, 'b1', 'b1', 'b', 'b1', 0, 0, NULL, 1)",
            params![now_ms + 30_000, a1_receipt],
        )
        .unwrap();
    }

    /// `relay.db` as a schema-4 relay left it: the queue tables in it, with one message in
    /// flight in group `a` behind nothing, one waiting behind it, one in group `b`, a send
    /// dedup id from a minute ago and a dead letter.
    fn write_schema_4_queue(db_path: &std::path::Path, now_ms: i64) {
        let conn = Connection::open(db_path).unwrap();
        conn.execute_batch(&format!(
            "{OLD_QUEUE_AND_DEAD_LETTERS}
             CREATE TABLE sent_dedup (dedup_id TEXT PRIMARY KEY, sent_at_ms INTEGER NOT NULL);
             PRAGMA user_version = 4;"
        ))
        .unwrap();
        insert_a1_in_flight_a2_b1(&conn, "a1.1.x", now_ms);
        conn.execute(
            "INSERT INTO sent_dedup VALUES ('seen', ?1)",
            params![now_ms - 60_000],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO dead_letters (message_id, dedup_id, group_id, body, reason, parked_at_ms)
             VALUES ('d1', 'd1', 'd', 'd1', 'gone', 1)",
            [],
        )
        .unwrap();
    }

    fn table_names(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A schema-4 directory opens with its queue moved to `queue.db`: the message in flight
    /// stays in flight and holds its group, the rest come out in order, the dedup window
    /// still drops a repeat, the dead letter is still listed, a new message goes behind the
    /// old ones, and `relay.db` no longer has the tables.
    #[tokio::test]
    async fn a_schema_4_queue_moves_to_its_own_file_intact() {
        let dir = scratch_dir("move");
        let now = unix_ms_now();
        write_schema_4_queue(&dir.join(super::super::DB_FILE), now);
        let store = SqliteStore::open(&dir).unwrap();
        let tables = table_names(&Connection::open(dir.join(super::super::DB_FILE)).unwrap());
        for moved in ["queue", "sent_dedup", "dead_letters"] {
            assert!(!tables.contains(&moved.to_string()), "{tables:?}");
        }
        assert_eq!(store.list_dead_letters().await.unwrap().len(), 1);
        let repeat = OutgoingMessage {
            body: "repeat".into(),
            group_id: "r".into(),
            dedup_id: "seen".into(),
        };
        store.send_message(&repeat).await.unwrap();
        let fresh = OutgoingMessage {
            body: "a3".into(),
            group_id: "a".into(),
            dedup_id: "a3".into(),
        };
        store.send_message(&fresh).await.unwrap();
        let hide = Duration::from_secs(30);
        let first = store.receive(10, hide, now).await.unwrap();
        let bodies: Vec<&str> = first.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["b1"], "a1 is still in flight and holds a2 and a3");
        store.delete(&first[0].receipt).await.unwrap();
        let later = store.receive(10, hide, now + 31_000).await.unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!((later[0].body.as_str(), later[0].receive_count), ("a1", 2));
        store.delete(&later[0].receipt).await.unwrap();
        let next = store.receive(10, hide, now + 31_000).await.unwrap();
        assert_eq!(next[0].body, "a2");
        store.delete(&next[0].receipt).await.unwrap();
        let last = store.receive(10, hide, now + 31_000).await.unwrap();
        assert_eq!(last[0].body, "a3");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The check before the drop sees any change another process made to the old tables
    /// after the copy: a receive (new receipt), a delete, a send, a dead letter.
    #[test]
    fn the_move_check_sees_every_change_after_the_copy() {
        let dir = scratch_dir("move-check");
        let now = unix_ms_now();
        write_schema_4_queue(&dir.join(super::super::DB_FILE), now);
        let queue_path = dir.join(super::super::QUEUE_DB_FILE);
        configure_queue(&Connection::open(&queue_path).unwrap()).unwrap();
        let main = Connection::open(dir.join(super::super::DB_FILE)).unwrap();
        main.execute(
            "ATTACH DATABASE ?1 AS moved",
            params![queue_path.to_str().unwrap()],
        )
        .unwrap();
        let differs = |main: &Connection| {
            MOVED_TABLES.iter().any(|table| {
                main.query_row(&table.differs_sql(), [], |row| row.get::<_, bool>(0))
                    .unwrap()
            })
        };
        let changes = [
            "UPDATE main.queue SET receipt = 'a1.2.y', receive_count = 2 WHERE seq = 7",
            "DELETE FROM main.queue WHERE seq = 9",
            "INSERT INTO main.queue (message_id, dedup_id, group_id, body) VALUES ('c1', 'c1', 'c', 'c1')",
            "INSERT INTO main.sent_dedup VALUES ('other', 1)",
            "UPDATE main.dead_letters SET reason = 'redriven elsewhere'",
        ];
        for change in changes {
            for table in &MOVED_TABLES {
                main.execute_batch(&table.copy_sql()).unwrap();
            }
            assert!(!differs(&main), "right after the copy");
            main.execute_batch(change).unwrap();
            assert!(differs(&main), "{change}");
        }
        drop(main);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A move interrupted after its copy committed (both files hold the queue) finishes on
    /// the next open without a message twice.
    #[tokio::test]
    async fn an_interrupted_move_finishes_without_duplicates() {
        let dir = scratch_dir("move-again");
        let now = unix_ms_now();
        let db_path = dir.join(super::super::DB_FILE);
        write_schema_4_queue(&db_path, now);
        drop(SqliteStore::open(&dir).unwrap());
        write_schema_4_queue(&db_path, now);
        let store = SqliteStore::open(&dir).unwrap();
        assert_eq!(store.queue_depth().await.unwrap(), 3);
        assert_eq!(store.list_dead_letters().await.unwrap().len(), 1);
        assert!(!table_names(&Connection::open(&db_path).unwrap()).contains(&"queue".into()));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `queue.db` as its schema 1 left it: UNIQUE `message_id` and `receipt`, message `a1` in
    /// flight under a receipt of that schema and holding `a2` back, `b1` waiting, and the
    /// AUTOINCREMENT counter at 20 (messages up to 20 were sent and deleted).
    fn write_queue_schema_1(queue_path: &std::path::Path, now_ms: i64) {
        let conn = Connection::open(queue_path).unwrap();
        conn.execute_batch(&format!(
            "{OLD_QUEUE_AND_DEAD_LETTERS}
             CREATE INDEX queue_visible_heads ON queue(visible_at_ms, seq) WHERE is_head = 1;
             CREATE TABLE sent_dedup (dedup_id TEXT PRIMARY KEY, sent_at_ms INTEGER NOT NULL);
             CREATE INDEX sent_dedup_age ON sent_dedup(sent_at_ms);
             INSERT INTO queue (seq, message_id, dedup_id, group_id, body) VALUES (20, 'z', 'z', 'z', 'z');
             DELETE FROM queue;
             PRAGMA user_version = 1;"
        ))
        .unwrap();
        insert_a1_in_flight_a2_b1(&conn, "a1.1.0000abcd", now_ms);
    }

    /// A schema-1 `queue.db` opens rebuilt without the two UNIQUE indexes and keeps what it
    /// held: the message in flight stays in flight (its old receipt now matches nothing),
    /// order within each group holds, and `seq` goes on from the old counter.
    #[tokio::test]
    async fn a_schema_1_queue_file_is_rebuilt_without_unique_indexes() {
        let dir = scratch_dir("queue-schema1");
        let now = unix_ms_now();
        let queue_path = dir.join(super::super::QUEUE_DB_FILE);
        write_queue_schema_1(&queue_path, now);
        let store = SqliteStore::open(&dir).unwrap();
        let conn = Connection::open(&queue_path).unwrap();
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'queue' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, ["queue_group_order", "queue_visible_heads"]);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, QUEUE_SCHEMA_VERSION);

        let hide = Duration::from_secs(30);
        let first = store.receive(10, hide, now).await.unwrap();
        let bodies: Vec<&str> = first.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["b1"], "a1 is still in flight and holds a2");
        store.delete("a1.1.0000abcd").await.unwrap();
        store.delete(&first[0].receipt).await.unwrap();
        let fresh = OutgoingMessage {
            body: "c1".into(),
            group_id: "c".into(),
            dedup_id: "c1".into(),
        };
        store.send_message(&fresh).await.unwrap();
        let seq_of_c1: i64 = conn
            .query_row("SELECT seq FROM queue WHERE body = 'c1'", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(seq_of_c1, 21, "seq goes on from the old counter");
        let later = store.receive(10, hide, now + 31_000).await.unwrap();
        let got: Vec<(&str, u32)> = later
            .iter()
            .map(|m| (m.body.as_str(), m.receive_count))
            .collect();
        assert_eq!(
            got,
            [("a1", 2), ("c1", 1)],
            "the old receipt deleted nothing"
        );
        for message in &later {
            store.delete(&message.receipt).await.unwrap();
        }
        let last = store.receive(10, hide, now + 31_000).await.unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].body, "a2");
        drop((store, conn));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A queue written by schema 1 (no `is_head`) opens with the heads of what it holds
    /// marked: one message per group comes out, oldest first, and the rest follow in order.
    #[tokio::test]
    async fn a_schema_1_queue_keeps_its_group_order_after_the_upgrade() {
        let dir = scratch_dir("schema1");
        {
            let conn = Connection::open(dir.join(super::super::DB_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE queue (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL UNIQUE,
                    dedup_id TEXT NOT NULL, group_id TEXT NOT NULL, body TEXT NOT NULL,
                    visible_at_ms INTEGER NOT NULL DEFAULT 0,
                    receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT UNIQUE);
                 CREATE INDEX queue_group_order ON queue(group_id, seq);
                 INSERT INTO queue (message_id, dedup_id, group_id, body) VALUES
                    ('a1', 'a1', 'a', 'a1'), ('b1', 'b1', 'b', 'b1'),
                    ('a2', 'a2', 'a', 'a2'), ('b2', 'b2', 'b', 'b2');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&dir).unwrap();
        let hide = Duration::from_secs(30);
        let first = store.receive(10, hide, 1).await.unwrap();
        let bodies: Vec<&str> = first.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["a1", "b1"]);
        for message in &first {
            store.delete(&message.receipt).await.unwrap();
        }
        let second = store.receive(10, hide, 1).await.unwrap();
        let bodies: Vec<&str> = second.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["a2", "b2"]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
