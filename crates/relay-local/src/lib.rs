//! The embedded store behind `relay serve`: two SQLite files (WAL) that play SQS and DynamoDB
//! for every port, `<dir>/queue.db` (the queue, its dead letters and send dedup ids) and
//! `<dir>/relay.db` (everything else: claims, snapshots, portals, attempts), plus
//! `<dir>/outbox.jsonl` for forwards that have no destination. Same contract as the AWS
//! adapters; the contract tests hold both to it. Each file has one writer connection that
//! commits its writes in rounds (`writer`); reads use their own connections (`readers`).
//! Two files so that ingest's fsynced sends never wait behind the consumers' bookkeeping:
//! each file's rounds run on their own thread and flush only their own pages.

mod attempts;
mod bind_plans;
mod dedup;
mod destinations;
mod outbox;
pub mod private_files;
mod queue;
mod readers;
mod snapshots;
mod tokens;
mod writer;

pub use outbox::JsonlOutbox;

use readers::Readers;
use relay_core::error::StoreError;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use writer::Undo;

/// The database file inside the data directory.
pub const DB_FILE: &str = "relay.db";
/// The queue's database file inside the data directory.
pub const QUEUE_DB_FILE: &str = "queue.db";
/// Receives after which a message moves to the dead-letter table: the template's
/// maxReceiveCount, a retry window of at least 24 h.
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = relay_core::forward::DEFAULT_MAX_RECEIVE_COUNT;

/// Schema version in `PRAGMA user_version`; bump with a migration step when tables change.
/// 2: dedup claims carry their `owner`; `queue.is_head` and the visible-heads index;
/// `portals.server_endpoint`.
/// 3: `snapshots.changed_at_ms`, so snapshots expire as DynamoDB's TTL expires them.
/// 4: `snapshots.delivered`, the events last delivered about the entity.
/// 5: the queue, its dead letters and send dedup ids live in `queue.db`
/// (`queue::move_queue_to_its_own_file`).
const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dedup (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    lease_until_ms INTEGER,
    expires_at_ms INTEGER,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS snapshots (
    pk TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    portal TEXT NOT NULL,
    entity TEXT NOT NULL,
    version INTEGER NOT NULL
    -- changed_at_ms: added by snapshots::add_change_time (schema 3)
    -- delivered: added at schema 4 (JSON, the events last delivered about the entity)
);
CREATE INDEX IF NOT EXISTS snapshots_portal ON snapshots(source, portal);
CREATE TABLE IF NOT EXISTS portals (
    member_id TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    application_token TEXT NOT NULL,
    access_token TEXT NOT NULL,
    refresh_token TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    client_endpoint TEXT NOT NULL,
    scope TEXT NOT NULL,
    server_endpoint TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS attempts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    destination TEXT NOT NULL,
    status INTEGER,
    latency_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    route TEXT
);
CREATE INDEX IF NOT EXISTS attempts_by_event ON attempts(event_id, at_ms, seq);
-- A table of its own, created on open like every other: no schema step needed.
CREATE TABLE IF NOT EXISTS bind_plans (
    member_id TEXT PRIMARY KEY,
    plan TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS destinations (
    destination TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    disabled_at_ms INTEGER NOT NULL
);
";

/// Every port on the embedded store's two SQLite files. Cheap to clone: clones share the
/// connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// The one write connection; SQLite has one writer at a time anyway, and batching the
    /// writes of concurrent callers into one transaction is what makes a burst cheap.
    writer: writer::Writer,
    /// Read-only connections: one-row lookups by key run on the caller's thread (a WAL
    /// reader never waits for the writer), anything larger on the blocking pool, so no long
    /// query blocks the async runtime.
    readers: Readers,
    /// The same two for `queue.db`.
    queue_writer: writer::Writer,
    queue_readers: Readers,
    max_receive_count: AtomicU32,
    /// Milliseconds a snapshot stays after its last change; 0: forever.
    snapshot_ttl_ms: AtomicI64,
    outbox: JsonlOutbox,
}

impl SqliteStore {
    /// Opens (creating if needed) `<dir>/relay.db`, `<dir>/queue.db` and `<dir>/outbox.jsonl`;
    /// a queue still in `relay.db` (written before schema 5) moves to `queue.db`.
    ///
    /// WAL mode. Sends commit with `synchronous=FULL`: ingress answers 202 right after `send`
    /// returns, so an accepted event must survive a power cut, not only a killed process;
    /// group commit keeps that to one fsync per round of waiting writes. Everything else
    /// (receive, delete, claims, attempts) commits at NORMAL, which in WAL mode survives a
    /// killed process; a power cut may undo the last of those steps, which only replays
    /// work: the message is delivered again and forwarded with the same `webhook-id`, as
    /// after a crash between forward and complete. The two files are fsynced apart (a send's
    /// fsync flushes only `queue.db`), which changes none of this: a claim or completion lost
    /// with its message's delete means a replay, and one lost while the delete survived
    /// means nothing, the message being gone.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        private_files::create_private_dir(dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(DB_FILE);
        let conn = open_writer_connection(&path)?;
        configure(&conn)?;
        let queue_path = dir.join(QUEUE_DB_FILE);
        let queue_conn = open_writer_connection(&queue_path)?;
        queue::configure_queue(&queue_conn)?;
        queue::move_queue_to_its_own_file(&conn, &queue_path)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                writer: writer::Writer::new(conn, DB_FILE)?,
                readers: Readers::new(path),
                queue_writer: writer::Writer::new(queue_conn, QUEUE_DB_FILE)?,
                queue_readers: Readers::new(queue_path),
                max_receive_count: AtomicU32::new(DEFAULT_MAX_RECEIVE_COUNT),
                snapshot_ttl_ms: AtomicI64::new(duration_ms(
                    relay_core::config::DEFAULT_SNAPSHOT_TTL,
                )),
                outbox: JsonlOutbox::new(dir.join(outbox::OUTBOX_FILE)),
            }),
        })
    }

    /// The data directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The outbox file (`<dir>/outbox.jsonl`).
    pub fn outbox_path(&self) -> &Path {
        self.inner.outbox.path()
    }

    /// Receives after which `receive` moves a message to the dead-letter table (≥ 1).
    pub fn set_max_receive_count(&self, count: u32) {
        self.inner
            .max_receive_count
            .store(count.max(1), Ordering::Relaxed);
    }

    fn max_receive_count(&self) -> u32 {
        self.inner.max_receive_count.load(Ordering::Relaxed)
    }

    /// How long a snapshot stays after its last change (`None`: forever), as on DynamoDB.
    pub fn set_snapshot_ttl(&self, ttl: Option<Duration>) {
        self.inner
            .snapshot_ttl_ms
            .store(ttl.map_or(0, duration_ms).max(0), Ordering::Relaxed);
    }

    fn snapshot_ttl_ms(&self) -> i64 {
        self.inner.snapshot_ttl_ms.load(Ordering::Relaxed)
    }

    /// Runs one write statement in the writer's next round; `operation` names it in the error.
    async fn execute_write<P>(
        &self,
        operation: &'static str,
        sql: &'static str,
        params: P,
    ) -> Result<(), StoreError>
    where
        P: rusqlite::Params + Send + 'static,
    {
        self.with_conn_one_statement(move |conn| {
            conn.execute_cached(sql, params).map_err(db(operation))?;
            Ok(())
        })
        .await
    }

    /// Runs `work` on the write connection in the writer's next round (its own savepoint:
    /// an error undoes all of `work` and nothing else); returns once the round is committed.
    async fn with_conn<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.writer.write(false, Undo::Savepoint, work).await
    }

    /// `with_conn` for a write that is one statement changing the database (any others only
    /// read): SQLite undoes it alone if it fails, so it needs no savepoint (`writer::Undo`).
    async fn with_conn_one_statement<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner
            .writer
            .write(false, Undo::OneStatement, work)
            .await
    }

    /// `with_conn` in a round that is fsynced before it returns.
    async fn with_durable_conn<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.writer.write(true, Undo::Savepoint, work).await
    }

    /// `with_conn` on `queue.db`'s writer.
    async fn with_queue_conn<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner
            .queue_writer
            .write(false, Undo::Savepoint, work)
            .await
    }

    /// `with_reader` on `queue.db`.
    async fn with_queue_reader<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.read_on_pool(|inner| &inner.queue_readers, work).await
    }

    /// Runs one read-only point lookup (a row by its key) on a reader connection, on the
    /// calling thread; it sees every write that returned before it started. A WAL reader
    /// never waits for the writer, and a cached one-row lookup takes microseconds, less than
    /// the two thread hand-offs of the blocking pool (measured: with every read on the pool,
    /// over half of `relay serve`'s CPU under load was the kernel switching threads).
    /// Anything that reads more than a row per key goes through `with_reader`.
    fn with_point_reader<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError>,
    {
        self.inner.readers.run(work)
    }

    /// Runs read-only `work` on a reader connection on the blocking pool; it sees every
    /// write that returned before it started.
    async fn with_reader<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.read_on_pool(|inner| &inner.readers, work).await
    }

    /// Runs `work` on one of `readers`' connections on the blocking pool.
    async fn read_on_pool<T, F>(
        &self,
        readers: fn(&Inner) -> &Readers,
        work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || readers(&inner).run(work))
            .await
            .map_err(|e| StoreError::Unavailable(format!("sqlite reader failed: {e}")))?
    }
}

/// Turns on SQLite's query planner stability guarantee. Without it, a statement whose plan
/// could depend on a bound value (a `LIMIT ?`, a term checked against a partial index's
/// `WHERE`) is marked to be parsed and planned again every time that value is bound, so the
/// statement cache saved nothing for it: `receive`'s two queries were re-prepared on every
/// call (measured: 2% of `relay serve`'s CPU under load). Every statement here has one
/// right plan whatever it is given.
fn keep_plans_stable(conn: &Connection) -> Result<(), StoreError> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(|_| ())
    .map_err(db("query planner stability"))
}

/// A writer connection on `path`, its file (and WAL) private to the owner.
fn open_writer_connection(path: &Path) -> Result<Connection, StoreError> {
    private_files::prepare_private_file(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", path.display())))?;
    let conn = Connection::open(path).map_err(db("open"))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    configure_connection(&conn)?;
    Ok(conn)
}

/// What every writer connection sets, whichever file it writes.
fn configure_connection(conn: &Connection) -> Result<(), StoreError> {
    keep_plans_stable(conn)?;
    // A second process (relay replay while serve runs) waits for the lock instead of failing.
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(db("busy_timeout"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .map_err(db("journal_mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "sqlite refused WAL mode (got {mode}); is the data directory on a network share?"
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(db("synchronous"))?;
    // The queue's hot pages (its last leaf, the heads index) change in every round; a
    // checkpoint copies only a page's last version, so checkpointing every 32 MiB of WAL
    // instead of SQLite's 4 MiB copies each hot page an eighth as often, with an eighth of
    // the checkpoints' fsyncs in the commit path.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
        .map_err(db("wal_autocheckpoint"))?;
    // Savepoint and statement journals in memory: SQLite writes a page's old content to the
    // sub-journal before a statement or a savepoint changes it, and past 64 KiB (every
    // round of the queue's deletes, whose trigger gives each DELETE a statement journal) it
    // spilled to a temporary file: created, written and deleted on every commit, 6% of
    // `relay serve`'s CPU under load (`perf`). A round's journal is a few hundred KiB.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(db("temp_store"))?;
    // The writer's cache outlives its transactions (a write by another process, such as
    // `relay replay`, only makes SQLite drop it); see WRITER_CACHE_KIB for its size.
    conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
        .map_err(db("cache_size"))
}

/// `relay.db`'s tables, and its schema steps.
fn configure(conn: &Connection) -> Result<(), StoreError> {
    let version = schema_version_known(conn, DB_FILE, SCHEMA_VERSION)?;
    // One transaction: a second process opening the same directory never sees half a schema.
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)
        .map_err(db("schema: begin"))?;
    tx.execute_batch(SCHEMA).map_err(db("schema"))?;
    if version == 1 {
        // Claims of a schema-1 store have no owner: none can be extended, they only expire.
        add_column_if_missing(&tx, "dedup", "owner", "TEXT")?;
        // Portals installed before keep refreshing through the configured OAuth server.
        add_column_if_missing(
            &tx,
            "portals",
            "server_endpoint",
            "TEXT NOT NULL DEFAULT ''",
        )?;
    }
    // Attempts logged before routes existed have no route; any store may predate them.
    add_column_if_missing(&tx, "attempts", "route", "TEXT")?;
    snapshots::add_change_time(&tx, unix_ms_now())?;
    add_column_if_missing(&tx, "snapshots", "delivered", "TEXT NOT NULL DEFAULT '[]'")?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(db("user_version"))?;
    tx.commit().map_err(db("schema: commit"))
}

/// The file's schema version (`PRAGMA user_version`), refused if a newer relay wrote it.
fn schema_version_known(conn: &Connection, file: &str, known: i64) -> Result<i64, StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(db("user_version"))?;
    if version > known {
        return Err(StoreError::Corrupt(format!(
            "{file} in the data directory was written by a newer relay (schema {version}, this build knows {known})"
        )));
    }
    Ok(version)
}

/// Schema steps that add a column run once per column, whatever order the steps of earlier
/// builds ran in.
fn add_column_if_missing(
    conn: &Connection,
    table: &str,
    column: &str,
    declaration: &str,
) -> Result<(), StoreError> {
    let present = conn
        .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")
        .and_then(|mut stmt| stmt.exists(rusqlite::params![table, column]))
        .map_err(db("schema: columns"))?;
    if present {
        return Ok(());
    }
    conn.execute_batch(&format!(
        "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
    ))
    .map_err(db("schema 1 -> 2"))
}

/// The statements of every hot path go through the connection's statement cache: parsing
/// and planning a statement costs more CPU than running one of these one-row statements,
/// and each writer runs every write to its file on one thread.
trait CachedStatements {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, row: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl CachedStatements for Connection {
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, row: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, row)
    }
}

/// Pages of WAL (4 KiB each) after which a commit checkpoints them into the database file.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 8192;

/// Each writer's page cache, in KiB (a negative `cache_size` counts KiB, not pages). Enough
/// for a round's dirty pages and the indexes' upper levels; a miss is a read from the OS's
/// page cache. Not larger: SQLite's cache scans its whole hash table at many COMMITs (a page
/// split briefly renumbers a page to the pending-byte page, 262,145 with 4 KiB pages, so the
/// cache believes it holds a page that far out and truncates it away), and that scan was
/// 14% of the writer thread's CPU with 64 MiB (`perf` under `scripts/load.py`).
const WRITER_CACHE_KIB: i64 = -8_192;

/// Statements kept prepared per connection: every distinct statement of the ports fits.
const STATEMENT_CACHE: usize = 64;

/// A poisoned lock only means another query panicked; SQLite rolled its transaction back
/// when the statement was dropped, so the connection is still sound.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Maps a SQLite error to `StoreError`, naming the operation (never the values bound).
fn db(operation: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::Unavailable(format!("sqlite {operation}: {e}"))
}

use relay_core::clock::now_unix_ms as unix_ms_now;

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A new, empty folder under the system's temporary folder for one test; `name` says which.
#[cfg(test)]
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "crm-relay-{name}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
