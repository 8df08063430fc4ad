//! A writer of the embedded store, one per database file: every write to its file runs on its
//! one connection, on the writer's own thread, and the writes that arrive while a commit runs
//! are committed together in the next transaction (group commit), each undone alone if it
//! fails (`Undo`).

use super::{db, lock};
use relay_core::error::StoreError;
use rusqlite::Connection;
use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type Outcome = Result<Box<dyn Any + Send>, StoreError>;
type Work = Box<dyn FnOnce(&Connection) -> Outcome + Send>;

/// A round of only non-durable writes (the consumer's bookkeeping) starts at least this long
/// after the round before it, so the writes of many events share it: each round rewrites
/// every page it touches to the WAL, and the random-key indexes (claims, send dedup ids,
/// groups) touch a page per write, so a thousand rounds of three writes write far more than
/// a hundred of thirty, and the next durable round's fsync has all of it to flush. A durable
/// write (ingress waiting to answer 202) ends the pause at once.
const GATHER: Duration = Duration::from_millis(2);
/// The pause applies only after a round of at least this many writes, i.e. while many
/// writers are at work: a lone writer awaiting each write in turn (a CLI command, a test, the
/// sqlite_burst bench's receive-and-delete) would only wait, with nobody to share a round.
const GATHER_MIN_JOBS: usize = 4;

/// How a failing write is undone while the rest of its round goes on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Undo {
    /// In a savepoint of its own: for a write of several statements.
    Savepoint,
    /// By SQLite itself: the write is one statement that changes the database (any others
    /// only read), and a failing statement is undone by SQLite with the transaction left
    /// going. A savepoint around it would only cost two more statements and a copy of every
    /// page it touches into the savepoint's journal; most writes (claims, attempts,
    /// completions, ingest's sends) are one statement.
    OneStatement,
}

/// One write waiting for the next round.
struct Job {
    /// The caller answers a client on this write (ingress's 202): the round is fsynced.
    durable: bool,
    undo: Undo,
    work: Work,
    done: oneshot::Sender<Outcome>,
}

/// Writes not yet committed. The committer takes everything that queued up while it
/// committed, so a burst costs one commit per round instead of one per write.
#[derive(Default)]
struct Pending {
    jobs: Vec<Job>,
    /// The committer is asleep waiting for a job: the next write wakes it.
    committer_idle: bool,
    /// The committer is pausing to gather a round: a durable write wakes it.
    committer_gathering: bool,
    /// Every `Writer` is gone: the committer finishes what is queued and ends.
    closed: bool,
}

struct Shared {
    conn: Mutex<Connection>,
    pending: Mutex<Pending>,
    /// Signalled when a job arrives for an idle committer, when a durable write arrives (it
    /// ends a gathering pause at once) and when the writer closes.
    job_arrived: Condvar,
}

/// Cheap to clone: clones share the connection and its committer thread.
#[derive(Clone)]
pub(super) struct Writer {
    committer: Arc<Committer>,
}

/// The committer thread of a writer: a thread of its own, started with the writer, not a
/// task on the caller's runtime. `relay serve` runs intake and the consumers on runtimes of
/// their own, and both write to `queue.db`: its committer belongs to neither, so intake's
/// fsynced sends never depend on a thread of the consumers' pool, and a write never pays for
/// starting a blocking task. Ends once every clone of its `Writer` is dropped and what they
/// queued is committed; the connection closes as the last clone's drop returns.
struct Committer {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.job_arrived.notify_one();
        if let Some(thread) = self.thread.take() {
            // Joined, so the file is closed once its store is: a test or a command that opens
            // the directory next finds no connection left over. Never joined from the thread
            // itself (a job holding the last clone), which would wait forever.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Writer {
    /// `name` names the committer thread (the file it writes), for `top -H` and profiles.
    pub(super) fn new(conn: Connection, name: &str) -> Result<Writer, StoreError> {
        let shared = Arc::new(Shared {
            conn: Mutex::new(conn),
            pending: Mutex::new(Pending::default()),
            job_arrived: Condvar::new(),
        });
        let committing = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("writer-{name}"))
            .spawn(move || run_committer(&committing))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            committer: Arc::new(Committer {
                shared,
                thread: Some(thread),
            }),
        })
    }

    /// Runs `work` in the next round and returns once that round is committed. `durable`:
    /// the round commits with `synchronous=FULL` (the WAL is fsynced before anyone hears Ok);
    /// one such commit also makes every earlier WAL frame durable.
    pub(super) async fn write<T, F>(
        &self,
        durable: bool,
        undo: Undo,
        work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, committed) = oneshot::channel();
        let job = Job {
            durable,
            undo,
            work: Box::new(move |conn| {
                work(conn).map(|value| Box::new(value) as Box<dyn Any + Send>)
            }),
            done,
        };
        {
            let shared = &self.committer.shared;
            let mut pending = lock(&shared.pending);
            pending.jobs.push(job);
            // One wake-up per sleep, not per write: a busy committer finds the job anyway,
            // and each wake-up is a system call.
            if pending.committer_idle || (durable && pending.committer_gathering) {
                pending.committer_idle = false;
                pending.committer_gathering = false;
                shared.job_arrived.notify_one();
            }
        }
        match committed.await {
            Ok(Ok(value)) => value.downcast::<T>().map(|value| *value).map_err(|_| {
                StoreError::Unavailable("sqlite write: the writer answered another type".into())
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Unavailable(
                "sqlite write: the committing worker stopped".into(),
            )),
        }
    }
}

/// Commits rounds of pending writes; sleeps while there are none; ends once the writer is
/// closed and nothing is left.
fn run_committer(shared: &Shared) {
    let mut last_round = Instant::now();
    let mut last_round_jobs = 0;
    loop {
        let jobs = {
            let mut pending = lock(&shared.pending);
            while pending.jobs.is_empty() {
                if pending.closed {
                    return;
                }
                pending.committer_idle = true;
                pending = shared
                    .job_arrived
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
                last_round_jobs = 0;
            }
            pending.committer_idle = false;
            let gather = GATHER.saturating_sub(last_round.elapsed());
            let concurrent = last_round_jobs >= GATHER_MIN_JOBS;
            if concurrent && !gather.is_zero() && !pending.jobs.iter().any(|job| job.durable) {
                pending.committer_gathering = true;
                pending = shared
                    .job_arrived
                    .wait_timeout_while(pending, gather, |p| {
                        !p.closed && !p.jobs.iter().any(|j| j.durable)
                    })
                    .map(|(pending, _)| pending)
                    .unwrap_or_else(|e| e.into_inner().0);
                pending.committer_gathering = false;
            }
            std::mem::take(&mut pending.jobs)
        };
        last_round = Instant::now();
        last_round_jobs = jobs.len();
        // A write that panics loses its round, not the committer: the round's transaction is
        // rolled back and its writers see their channel closed (the store unavailable), and
        // the writes queued meanwhile still get their rounds.
        let round = AssertUnwindSafe(|| commit_round(&mut lock(&shared.conn), jobs));
        let _ = std::panic::catch_unwind(round);
    }
}

/// Runs a round in one transaction and tells every writer its outcome: its own error, or
/// the commit's.
fn commit_round(conn: &mut Connection, jobs: Vec<Job>) {
    let durable = jobs.iter().any(|job| job.durable);
    let mut finished = Vec::with_capacity(jobs.len());
    let committed = if durable {
        let full = conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(db("write: synchronous"));
        let committed = full.and_then(|()| run_round(conn, jobs, &mut finished));
        let restored = conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(db("write: synchronous"));
        committed.and(restored)
    } else {
        run_round(conn, jobs, &mut finished)
    };
    for (done, outcome) in finished {
        let outcome = match (&committed, outcome) {
            (Ok(()), outcome) => outcome,
            (Err(e), Ok(_)) => Err(same_error(e)),
            (Err(_), Err(own)) => Err(own),
        };
        let _ = done.send(outcome);
    }
}

fn run_round(
    conn: &mut Connection,
    jobs: Vec<Job>,
    finished: &mut Vec<(oneshot::Sender<Outcome>, Outcome)>,
) -> Result<(), StoreError> {
    // IMMEDIATE: take the write lock up front, so another process (relay replay) makes us
    // wait at BEGIN instead of failing a write half-way through the round.
    let tx = match RoundTransaction::begin(conn) {
        Ok(tx) => tx,
        Err(e) => {
            for job in jobs {
                finished.push((job.done, Err(same_error(&e))));
            }
            return Err(e);
        }
    };
    for job in jobs {
        // An error that ends the whole transaction (a full disk, an I/O error) leaves the
        // connection in autocommit: the writes after it would each commit on their own, then
        // be told the round failed. They fail without running instead.
        if tx.conn.is_autocommit() {
            let ended = StoreError::Unavailable("sqlite write: the round was rolled back".into());
            finished.push((job.done, Err(ended)));
            continue;
        }
        let outcome = match job.undo {
            Undo::Savepoint => in_savepoint(tx.conn, job.work),
            Undo::OneStatement => (job.work)(tx.conn),
        };
        finished.push((job.done, outcome));
    }
    tx.commit()
}

/// A round's transaction, begun and committed through the statement cache (rusqlite's
/// `Transaction` parses `BEGIN` and `COMMIT` anew every round). Rolled back if dropped while
/// still open (the connection is not back in autocommit): a failed COMMIT (busy) or a write
/// that panicked must not leave the connection inside a transaction, or every later round's
/// BEGIN would fail.
struct RoundTransaction<'a> {
    conn: &'a Connection,
}

impl<'a> RoundTransaction<'a> {
    fn begin(conn: &'a Connection) -> Result<Self, StoreError> {
        run_cached(conn, "BEGIN IMMEDIATE", "write: begin")?;
        Ok(RoundTransaction { conn })
    }

    fn commit(self) -> Result<(), StoreError> {
        run_cached(self.conn, "COMMIT", "write: commit")
    }
}

impl Drop for RoundTransaction<'_> {
    fn drop(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = run_cached(self.conn, "ROLLBACK", "write: rollback");
        }
    }
}

/// Runs a statement without parameters or rows through the connection's statement cache.
fn run_cached(conn: &Connection, sql: &str, operation: &'static str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(|_| ())
        .map_err(db(operation))
}

/// Runs one write in its own savepoint: its error rolls back only itself. The savepoint
/// statements are cached (rusqlite's `Savepoint` parses them anew for every write, a
/// measurable share of the writer's thread at thousands of writes a second).
fn in_savepoint(conn: &Connection, work: Work) -> Outcome {
    run_cached(conn, "SAVEPOINT relay_write", "write: savepoint")?;
    let outcome = work(conn).and_then(|value| {
        run_cached(conn, "RELEASE relay_write", "write: release").map(|()| value)
    });
    if outcome.is_err() {
        // As dropping rusqlite's `Savepoint` does: undo this write, keep the round going.
        let _ = conn.execute_batch("ROLLBACK TO relay_write; RELEASE relay_write");
    }
    outcome
}

/// `StoreError` is not `Clone`; every writer of a failed round gets its own copy.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(reason) => StoreError::Unavailable(reason.clone()),
        StoreError::Corrupt(reason) => StoreError::Corrupt(reason.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer_on_a_fresh_table() -> Writer {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL)")
            .unwrap();
        Writer::new(conn, "test").unwrap()
    }

    async fn values(writer: &Writer) -> Vec<i64> {
        writer
            .write(false, Undo::Savepoint, |conn| {
                let mut stmt = conn.prepare("SELECT v FROM t ORDER BY v").unwrap();
                let rows = stmt.query_map([], |row| row.get(0)).unwrap();
                Ok(rows.map(Result::unwrap).collect())
            })
            .await
            .unwrap()
    }

    /// Inserts `value` and waits for its round's commit.
    async fn insert_committed(writer: &Writer, durable: bool, undo: Undo, value: i64) {
        writer
            .write(durable, undo, move |conn| {
                conn.execute("INSERT INTO t VALUES (?1)", [value]).unwrap();
                Ok(())
            })
            .await
            .unwrap()
    }

    /// The last clone of a writer to go ends its thread and closes its connection before the
    /// drop returns (a file's last connection to close removes its WAL); any other clone
    /// keeps both.
    #[tokio::test]
    async fn dropping_the_last_writer_closes_its_file() {
        let dir = crate::scratch_dir("writer-close");
        let (path, wal) = (dir.join("w.db"), dir.join("w.db-wal"));
        let conn = Connection::open(&path).unwrap();
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL)")
            .unwrap();
        let writer = Writer::new(conn, "test").unwrap();
        let clone = writer.clone();
        insert_committed(&clone, false, Undo::OneStatement, 1).await;
        drop(writer);
        assert!(wal.exists(), "a clone is left: the file stays open");
        let (dropped, returned) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(clone);
            let _ = dropped.send(());
        });
        returned
            .recv_timeout(Duration::from_secs(10))
            .expect("the drop returned: the writer's thread ended");
        assert!(!wal.exists(), "the last drop closed the connection");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A write that panics loses its round (its caller hears the store is unavailable), and
    /// leaves no transaction open behind it: the next round begins, commits and is kept.
    #[tokio::test]
    async fn a_panicking_write_leaves_the_connection_usable() {
        let writer = writer_on_a_fresh_table();
        let lost = writer
            .write(false, Undo::Savepoint, |conn| {
                conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
                if conn.is_autocommit() {
                    return Ok(());
                }
                panic!("a write failed in an unexpected way");
            })
            .await;
        assert!(matches!(lost, Err(StoreError::Unavailable(_))), "{lost:?}");
        insert_committed(&writer, true, Undo::Savepoint, 2).await;
        assert_eq!(
            values(&writer).await,
            [2],
            "the panicking round was rolled back"
        );
    }

    /// A write that fails undoes itself only; the other writes of its round are committed.
    #[tokio::test]
    async fn a_failing_write_undoes_only_itself() {
        let writer = writer_on_a_fresh_table();
        let (kept, failed) = tokio::join!(
            writer.write(false, Undo::Savepoint, |conn| {
                conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
                Ok(())
            }),
            writer.write(false, Undo::Savepoint, |conn| {
                conn.execute("INSERT INTO t VALUES (9)", []).unwrap();
                Err::<(), _>(StoreError::Unavailable("refused".into()))
            }),
        );
        kept.unwrap();
        assert!(failed.is_err());
        assert_eq!(values(&writer).await, [1]);
    }

    /// A one-statement write that fails half-way (its first row inserted, its second
    /// refused) is undone whole by SQLite, without a savepoint, and the writes around it in
    /// its round are committed.
    #[tokio::test]
    async fn a_failing_one_statement_write_undoes_only_itself() {
        let writer = writer_on_a_fresh_table();
        let insert = |sql: &'static str| {
            writer.write(false, Undo::OneStatement, move |conn| {
                conn.execute(sql, [])
                    .map(|_| ())
                    .map_err(|e| StoreError::Unavailable(e.to_string()))
            })
        };
        let (before, failed, after) = tokio::join!(
            insert("INSERT INTO t VALUES (1)"),
            insert("INSERT INTO t VALUES (5), (NULL)"),
            insert("INSERT INTO t VALUES (7)"),
        );
        before.unwrap();
        assert!(failed.is_err());
        after.unwrap();
        assert_eq!(values(&writer).await, [1, 7]);
    }
}
