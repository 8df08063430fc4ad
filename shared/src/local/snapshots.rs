//! Entity snapshots on the embedded store: the last enriched state per entity, written only
//! when no newer version is stored, so an event that arrives late cannot roll `changes` back.

use super::{db, SqliteStore};
use crate::error::StoreError;
use crate::event::Source;
use crate::ports::{Snapshot, SnapshotKey, SnapshotSave, SnapshotStore};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl SnapshotStore for SqliteStore {
    async fn load(&self, key: &SnapshotKey) -> Result<Option<Snapshot>, StoreError> {
        let pk = key.pk();
        self.with_reader(move |conn| {
            let row: Option<(String, i64)> = conn
                .query_row(
                    "SELECT entity, version FROM snapshots WHERE pk = ?1",
                    params![pk],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(db("snapshot load"))?;
            row.map(|(entity, version)| {
                let entity = serde_json::from_str(&entity).map_err(|e| {
                    StoreError::Corrupt(format!("snapshot entity is not JSON: {e}"))
                })?;
                Ok(Snapshot { entity, version })
            })
            .transpose()
        })
        .await
    }

    async fn save(
        &self,
        key: &SnapshotKey,
        snapshot: &Snapshot,
    ) -> Result<SnapshotSave, StoreError> {
        let (pk, source, portal) = (key.pk(), key.source.as_str(), key.portal.clone());
        let (entity, version) = (snapshot.entity.to_string(), snapshot.version);
        self.with_conn(move |conn| {
            let written = conn
                .execute(
                    "INSERT INTO snapshots (pk, source, portal, entity, version)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (pk) DO UPDATE
                        SET entity = excluded.entity, version = excluded.version
                        WHERE snapshots.version <= excluded.version",
                    params![pk, source, portal, entity, version],
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
