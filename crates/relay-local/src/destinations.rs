//! Disabled destinations on the embedded store: a destination that answered 410 Gone stays
//! disabled across restarts until the user enables it again.

use super::{db, CachedStatements, SqliteStore};
use async_trait::async_trait;
use relay_core::error::StoreError;
use relay_core::ports::DestinationStatus;
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl DestinationStatus for SqliteStore {
    async fn disabled(&self, destination: &str) -> Result<Option<String>, StoreError> {
        self.with_point_reader(|conn| {
            conn.query_row_cached(
                "SELECT reason FROM destinations WHERE destination = ?1",
                params![destination],
                |row| row.get(0),
            )
            .optional()
            .map_err(db("destination status"))
        })
    }

    async fn disable(
        &self,
        destination: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.execute_write(
            "destination disable",
            "INSERT OR REPLACE INTO destinations (destination, reason, disabled_at_ms) VALUES (?1, ?2, ?3)",
            (destination.to_string(), reason.to_string(), now_ms),
        )
        .await
    }

    async fn enable(&self, destination: &str) -> Result<(), StoreError> {
        self.execute_write(
            "destination enable",
            "DELETE FROM destinations WHERE destination = ?1",
            (destination.to_string(),),
        )
        .await
    }
}
