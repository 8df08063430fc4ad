//! Entity snapshots on the embedded store: the last enriched state per entity, written only
//! when no newer version is stored, so an event that arrives late cannot roll `changes` back.
//! A snapshot untouched for the configured TTL is gone, as DynamoDB's TTL removes it on AWS.

use super::{db, unix_ms_now, CachedStatements, SqliteStore};
use async_trait::async_trait;
use relay_core::error::StoreError;
use relay_core::event::Source;
use relay_core::ports::{Snapshot, SnapshotKey, SnapshotSave, SnapshotStore};
use rusqlite::{params, Connection, OptionalExtension};

/// Schema 3: each snapshot's last change time. Snapshots of an older store count as changed
/// at `now_ms` (the upgrade), so none expires the moment the store is opened.
pub(super) fn add_change_time(conn: &Connection, now_ms: i64) -> Result<(), StoreError> {
    let has_column = conn
        .prepare("SELECT 1 FROM pragma_table_info('snapshots') WHERE name = 'changed_at_ms'")
        .and_then(|mut stmt| stmt.exists([]))
        .map_err(db("schema: snapshot columns"))?;
    if !has_column {
        conn.execute_batch(
            "ALTER TABLE snapshots ADD COLUMN changed_at_ms INTEGER NOT NULL DEFAULT 0",
        )
        .map_err(db("schema: snapshot change time"))?;
        conn.execute("UPDATE snapshots SET changed_at_ms = ?1", params![now_ms])
            .map_err(db("schema: snapshot change time"))?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS snapshots_changed ON snapshots(changed_at_ms)")
        .map_err(db("schema: snapshot change index"))
}

/// The oldest change time a live snapshot may have at `now_ms`; `i64::MIN` when they never
/// expire.
fn live_since(now_ms: i64, ttl_ms: i64) -> i64 {
    if ttl_ms == 0 {
        i64::MIN
    } else {
        now_ms.saturating_sub(ttl_ms)
    }
}

#[async_trait]
impl SnapshotStore for SqliteStore {
    async fn load(&self, key: &SnapshotKey) -> Result<Option<Snapshot>, StoreError> {
        let pk = key.pk();
        let since = live_since(unix_ms_now(), self.snapshot_ttl_ms());
        self.with_point_reader(|conn| {
            let row: Option<(String, i64, String)> = conn
                .query_row_cached(
                    "SELECT entity, version, delivered FROM snapshots
                     WHERE pk = ?1 AND changed_at_ms >= ?2",
                    params![pk, since],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()
                .map_err(db("snapshot load"))?;
            row.map(|(entity, version, delivered)| {
                let entity = serde_json::from_str(&entity).map_err(|e| {
                    StoreError::Corrupt(format!("snapshot entity is not JSON: {e}"))
                })?;
                let delivered = serde_json::from_str(&delivered).map_err(|e| {
                    StoreError::Corrupt(format!("snapshot's delivered events: {e}"))
                })?;
                Ok(Snapshot {
                    entity,
                    version,
                    delivered,
                })
            })
            .transpose()
        })
    }

    async fn save(
        &self,
        key: &SnapshotKey,
        snapshot: &Snapshot,
    ) -> Result<SnapshotSave, StoreError> {
        let (pk, source, portal) = (key.pk(), key.source.as_str(), key.portal.clone());
        let (entity, version) = (snapshot.entity.to_string(), snapshot.version);
        let delivered = serde_json::to_string(&snapshot.delivered)
            .map_err(|e| StoreError::Corrupt(format!("delivered events not serialisable: {e}")))?;
        let now_ms = unix_ms_now();
        let since = live_since(now_ms, self.snapshot_ttl_ms());
        self.with_conn(move |conn| {
            // Expired snapshots go first (the index keeps it a short range read), so an
            // expired one never blocks a write with its newer version, and the file does not
            // grow with entities nobody changes any more.
            conn.execute_cached(
                "DELETE FROM snapshots WHERE changed_at_ms < ?1",
                params![since],
            )
            .map_err(db("snapshot expire"))?;
            let written = conn
                .execute_cached(
                    "INSERT INTO snapshots
                        (pk, source, portal, entity, version, changed_at_ms, delivered)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (pk) DO UPDATE
                        SET entity = excluded.entity, version = excluded.version,
                            changed_at_ms = excluded.changed_at_ms,
                            delivered = excluded.delivered
                        WHERE snapshots.version <= excluded.version",
                    params![pk, source, portal, entity, version, now_ms, delivered],
                )
                .map_err(db("snapshot save"))?;
            Ok(if written == 1 {
                SnapshotSave::Saved
            } else {
                SnapshotSave::Stale
            })
        })
        .await
    }

    async fn delete(&self, key: &SnapshotKey) -> Result<(), StoreError> {
        let pk = key.pk();
        self.with_conn(move |conn| {
            conn.execute("DELETE FROM snapshots WHERE pk = ?1", params![pk])
                .map(|_| ())
                .map_err(db("snapshot delete"))
        })
        .await
    }

    async fn delete_portal(&self, source: Source, portal: &str) -> Result<usize, StoreError> {
        let portal = portal.to_string();
        self.with_conn(move |conn| {
            conn.execute(
                "DELETE FROM snapshots WHERE source = ?1 AND portal = ?2",
                params![source.as_str(), portal],
            )
            .map_err(db("snapshot delete_portal"))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{scratch_dir, DB_FILE};
    use relay_core::catalogue::EntityType;
    use relay_core::event::Family;
    use std::time::Duration;

    fn deal(id: &str) -> SnapshotKey {
        SnapshotKey {
            source: Source::Bitrix24,
            portal: "p1".into(),
            family: Family::Deal,
            entity_type: EntityType::Deal,
            entity_id: id.into(),
        }
    }

    fn rows(dir: &std::path::Path) -> i64 {
        rusqlite::Connection::open(dir.join(DB_FILE))
            .unwrap()
            .query_row("SELECT COUNT(*) FROM snapshots", [], |r| r.get(0))
            .unwrap()
    }

    /// A snapshot unchanged for longer than the TTL is not a base for `changes` any more, and
    /// the next save removes it from the file; with no TTL it stays.
    #[tokio::test]
    async fn snapshots_expire_after_their_ttl() {
        let dir = scratch_dir("snap-ttl");
        let store = SqliteStore::open(&dir).unwrap();
        store.set_snapshot_ttl(Some(Duration::from_secs(86_400)));
        let snap = Snapshot {
            entity: serde_json::json!({"ID": "1"}),
            version: 1,
            delivered: Vec::new(),
        };
        assert_eq!(
            store.save(&deal("1"), &snap).await.unwrap(),
            SnapshotSave::Saved
        );
        assert!(store.load(&deal("1")).await.unwrap().is_some());
        // Two days ago, as far as the store can tell.
        rusqlite::Connection::open(dir.join(DB_FILE))
            .unwrap()
            .execute(
                "UPDATE snapshots SET changed_at_ms = changed_at_ms - 2 * 86400000",
                [],
            )
            .unwrap();
        assert_eq!(store.load(&deal("1")).await.unwrap(), None);
        store.set_snapshot_ttl(None);
        assert!(store.load(&deal("1")).await.unwrap().is_some());
        store.set_snapshot_ttl(Some(Duration::from_secs(86_400)));
        assert_eq!(
            store.save(&deal("2"), &snap).await.unwrap(),
            SnapshotSave::Saved
        );
        assert_eq!(rows(&dir), 1, "the expired snapshot is gone from the file");
        assert!(store.load(&deal("2")).await.unwrap().is_some());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A schema-2 store's snapshots count as changed at the upgrade: none is lost on opening.
    #[tokio::test]
    async fn a_schema_2_store_keeps_its_snapshots() {
        let dir = scratch_dir("schema2");
        {
            let conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
            conn.execute_batch(&format!(
                "CREATE TABLE snapshots (pk TEXT PRIMARY KEY, source TEXT NOT NULL,
                     portal TEXT NOT NULL, entity TEXT NOT NULL, version INTEGER NOT NULL);
                 INSERT INTO snapshots VALUES ('{}', 'bitrix24', 'p1', '{{\"ID\":\"7\"}}', 3);
                 PRAGMA user_version = 2;",
                deal("7").pk()
            ))
            .unwrap();
        }
        let store = SqliteStore::open(&dir).unwrap();
        store.set_snapshot_ttl(Some(Duration::from_secs(86_400)));
        let loaded = store.load(&deal("7")).await.unwrap().unwrap();
        assert_eq!(loaded.version, 3);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
