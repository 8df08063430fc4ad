//! Dedup claims on the embedded store, with the DynamoDB record's rules: one statement
//! claims an absent, expired or abandoned record, so two consumers never both win; only the
//! claim's owner may extend, release or complete it.

use super::{db, CachedStatements, SqliteStore};
use async_trait::async_trait;
use relay_core::error::StoreError;
use relay_core::ports::{Claim, DedupStore, Ownership};
use rusqlite::params;

#[async_trait]
impl DedupStore for SqliteStore {
    async fn claim(
        &self,
        id: &str,
        owner: &str,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<Claim, StoreError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.with_conn_one_statement(move |conn| {
            let claimed = conn
                .execute_cached(
                    "INSERT INTO dedup (id, status, lease_until_ms, expires_at_ms, owner)
                     VALUES (?1, 'IN_PROGRESS', ?2, NULL, ?4)
                     ON CONFLICT (id) DO UPDATE
                        SET status = 'IN_PROGRESS', lease_until_ms = ?2, expires_at_ms = NULL,
                            owner = ?4
                        WHERE (dedup.status = 'COMPLETED' AND dedup.expires_at_ms <= ?3)
                           OR (dedup.status = 'IN_PROGRESS' AND dedup.lease_until_ms <= ?3)",
                    params![id, lease_until_ms, now_ms, owner],
                )
                .map_err(db("dedup claim"))?;
            if claimed == 1 {
                return Ok(Claim::Acquired);
            }
            // Same connection, under the same lock: the record that refused us is still it.
            let (status, lease): (String, Option<i64>) = conn
                .query_row_cached(
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

    async fn extend(
        &self,
        id: &str,
        owner: &str,
        lease_until_ms: i64,
    ) -> Result<Ownership, StoreError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.with_conn_one_statement(move |conn| {
            let changed = conn
                .execute_cached(
                    "UPDATE dedup SET lease_until_ms = ?3
                     WHERE id = ?1 AND status = 'IN_PROGRESS' AND owner = ?2",
                    params![id, owner, lease_until_ms],
                )
                .map_err(db("dedup extend"))?;
            Ok(ownership(changed))
        })
        .await
    }

    async fn complete(
        &self,
        id: &str,
        owner: &str,
        expires_at_ms: i64,
    ) -> Result<Ownership, StoreError> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.with_conn_one_statement(move |conn| {
            let changed = conn
                .execute_cached(
                    "INSERT INTO dedup (id, status, lease_until_ms, expires_at_ms, owner)
                     VALUES (?1, 'COMPLETED', NULL, ?3, ?2)
                     ON CONFLICT (id) DO UPDATE
                        SET status = 'COMPLETED', lease_until_ms = NULL, expires_at_ms = ?3,
                            owner = ?2
                        WHERE dedup.status = 'COMPLETED' OR dedup.owner IS ?2",
                    params![id, owner, expires_at_ms],
                )
                .map_err(db("dedup complete"))?;
            Ok(ownership(changed))
        })
        .await
    }

    async fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        // Never a COMPLETED record (that would forward the event again), never another's claim.
        self.execute_write(
            "dedup release",
            "DELETE FROM dedup WHERE id = ?1 AND status = 'IN_PROGRESS' AND owner = ?2",
            (id.to_string(), owner.to_string()),
        )
        .await
    }
}

fn ownership(changed_rows: usize) -> Ownership {
    if changed_rows == 1 {
        Ownership::Held
    } else {
        Ownership::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DB_FILE;

    /// A data directory written by a schema-1 relay (claims without owners) opens, gains the
    /// column, and its old claims still answer; new claims carry owners.
    #[tokio::test]
    async fn a_schema_1_store_is_migrated_to_owned_claims() {
        let dir = crate::scratch_dir("schema1-claims");
        {
            let conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE dedup (id TEXT PRIMARY KEY, status TEXT NOT NULL,
                     lease_until_ms INTEGER, expires_at_ms INTEGER);
                 INSERT INTO dedup VALUES ('old-done', 'COMPLETED', NULL, 9000000000000);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&dir).unwrap();
        assert_eq!(
            store.claim("old-done", "a", 2_000, 1_000).await.unwrap(),
            Claim::AlreadyCompleted
        );
        assert_eq!(
            store.claim("new", "a", 2_000, 1_000).await.unwrap(),
            Claim::Acquired
        );
        assert_eq!(
            store.extend("new", "b", 3_000).await.unwrap(),
            Ownership::Lost
        );
        assert_eq!(
            store.extend("new", "a", 3_000).await.unwrap(),
            Ownership::Held
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
