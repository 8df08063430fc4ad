//! Read-only connections of the embedded store. In WAL mode a reader sees the last commit
//! while the writer works, so a snapshot load or a status lookup never queues behind a
//! round of writes.

use super::{db, keep_plans_stable, lock};
use relay_core::error::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Idle connections kept for the next read; more readers than this at once open their own
/// connection and close it afterwards.
const MAX_IDLE: usize = 8;

pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(super) fn new(path: PathBuf) -> Readers {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `work` on an idle reader (or a new one). Blocking: call it from the blocking
    /// pool, or directly only for a one-row lookup by key (`SqliteStore::with_point_reader`).
    pub(super) fn run<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = lock(&self.idle).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open()?,
        };
        let result = work(&conn);
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        result
    }

    fn open(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db("open reader"))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(db("reader busy_timeout"))?;
        keep_plans_stable(&conn)?;
        Ok(conn)
    }
}
