//! Disabled destinations on the embedded store: a destination that answered 410 Gone stays
//! disabled across restarts until the user enables it again.

use super::{db, SqliteStore};
use crate::error::StoreError;
use crate::ports::DestinationStatus;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl DestinationStatus for SqliteStore {
    async fn disabled(&self, destination: &str) -> Result<Option<String>, StoreError> {
        let destination = destination.to_string();
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT reason FROM destinations WHERE destination = ?1",
                params![destination],
                |row| row.get(0),
            )
            .optional()
            .map_err(db("destination status"))
        })
        .await
    }

    async fn disable(
        &self,
        destination: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (destination, reason) = (destination.to_string(), reason.to_string());
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO destinations (destination, reason, disabled_at_ms) VALUES (?1, ?2, ?3)",
                params![destination, reason, now_ms],
            )
            .map_err(db("destination disable"))?;
            Ok(())
        })
        .await
    }

    async fn enable(&self, destination: &str) -> Result<(), StoreError> {
        let destination = destination.to_string();
        self.with_conn(move |conn| {
            conn.execute(
                "DELETE FROM destinations WHERE destination = ?1",
                params![destination],
            )
            .map_err(db("destination enable"))?;
            Ok(())
        })
        .await
    }
}
