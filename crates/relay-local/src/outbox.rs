//! The outbox file: with no destination configured, `relay serve` appends each forward to
//! `<data-dir>/outbox.jsonl` (one JSON document per line) so a newcomer sees results at once.

use super::{lock, SqliteStore};
use async_trait::async_trait;
use relay_core::error::StoreError;
use relay_core::ports::Outbox;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The outbox file name inside the data directory.
pub const OUTBOX_FILE: &str = "outbox.jsonl";

/// Appends one line per forwarded body; lines from concurrent forwards never interleave.
#[derive(Clone)]
pub struct JsonlOutbox {
    path: PathBuf,
    write_lock: Arc<Mutex<()>>,
}

impl JsonlOutbox {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonlOutbox {
            path: path.into(),
            write_lock: Arc::new(Mutex::new(())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl Outbox for JsonlOutbox {
    async fn append(&self, body: &serde_json::Value) -> Result<(), StoreError> {
        // serde_json never writes a raw newline inside a document, so one line is one body.
        let mut line = body.to_string();
        line.push('\n');
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = lock(&this.write_lock);
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&this.path)?;
            file.write_all(line.as_bytes())?;
            file.flush()
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("outbox worker failed: {e}")))?
        .map_err(|e| StoreError::Unavailable(format!("outbox {}: {e}", self.path.display())))
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn append(&self, body: &serde_json::Value) -> Result<(), StoreError> {
        self.inner.outbox.append(body).await
    }
}
