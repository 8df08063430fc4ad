//! Dedup claims on the embedded store, with the DynamoDB record's rules: one statement
//! claims an absent, expired or abandoned record, so two consumers never both win.

use super::{db, SqliteStore};
use crate::error::StoreError;
use crate::ports::{Claim, DedupStore};
use async_trait::async_trait;
use rusqlite::params;

#[async_trait]
impl DedupStore for SqliteStore {
    async fn claim(&self, id: &str, lease_until_ms: i64, now_ms: i64) -> Result<Claim, StoreError> {
        let id = id.to_string();
        self.with_conn(move |conn| {
            let claimed = conn
                .execute(
                    "INSERT INTO dedup (id, status, lease_until_ms, expires_at_ms)
                     VALUES (?1, 'IN_PROGRESS', ?2, NULL)
                     ON CONFLICT (id) DO UPDATE
                        SET status = 'IN_PROGRESS', lease_until_ms = ?2, expires_at_ms = NULL
                        WHERE (dedup.status = 'COMPLETED' AND dedup.expires_at_ms <= ?3)
                           OR (dedup.status = 'IN_PROGRESS' AND dedup.lease_until_ms <= ?3)",
                    params![id, lease_until_ms, now_ms],
                )
                .map_err(db("dedup claim"))?;
            if claimed == 1 {
                return Ok(Claim::Acquired);
            }
            // Same connection, under the same lock: the record that refused us is still it.
            let (status, lease): (String, Option<i64>) = conn
                .query_row(
                    "SELECT status, lease_until_ms FROM dedup WHERE id = ?1",
                    params![id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .map_err(db("dedup read"))?;
            match (status.as_str(), lease) {
                ("COMPLETED", _) => Ok(Claim::AlreadyCompleted),
                ("IN_PROGRESS", Some(lease_until_ms)) => {
                    Ok(Claim::HeldElsewhere { lease_until_ms })
                }
                _ => Err(StoreError::Corrupt(
                    "dedup record has an unknown status".into(),
                )),
            }
        })
        .await
    }

    async fn complete(&self, id: &str, expires_at_ms: i64) -> Result<(), StoreError> {
        self.execute_write(
            "dedup complete",
            "INSERT INTO dedup (id, status, lease_until_ms, expires_at_ms)
             VALUES (?1, 'COMPLETED', NULL, ?2)
             ON CONFLICT (id) DO UPDATE
                SET status = 'COMPLETED', lease_until_ms = NULL, expires_at_ms = ?2",
            (id.to_string(), expires_at_ms),
        )
        .await
    }

    async fn release(&self, id: &str) -> Result<(), StoreError> {
        // Never a COMPLETED record: releasing it would forward the event again.
        self.execute_write(
            "dedup release",
            "DELETE FROM dedup WHERE id = ?1 AND status = 'IN_PROGRESS'",
            (id.to_string(),),
        )
        .await
    }
}
