//! The attempt log on the embedded store: every delivery attempt of an event, oldest first,
//! so `relay attempts <id>` can say why an event did not arrive.

use super::{db, SqliteStore};
use async_trait::async_trait;
use relay_core::error::StoreError;
use relay_core::ports::{Attempt, AttemptLog};
use rusqlite::params;

#[async_trait]
impl AttemptLog for SqliteStore {
    async fn record(&self, attempt: &Attempt) -> Result<(), StoreError> {
        let a = attempt.clone();
        self.execute_write(
            "attempt record",
            "INSERT INTO attempts (event_id, at_ms, destination, status, latency_ms, outcome, error, route)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            (
                a.event_id,
                a.at_ms,
                a.destination,
                a.status,
                i64::try_from(a.latency_ms).unwrap_or(i64::MAX),
                a.outcome.as_str(),
                a.error,
                a.route,
            ),
        )
        .await
    }

    async fn list(&self, event_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let event_id = event_id.to_string();
        self.with_reader(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT event_id, at_ms, destination, status, latency_ms, outcome, error, route
                     FROM attempts WHERE event_id = ?1 ORDER BY at_ms, seq",
                )
                .map_err(db("attempt list"))?;
            let rows = stmt
                .query_map(params![event_id], |row| {
                    Ok(Attempt {
                        event_id: row.get(0)?,
                        at_ms: row.get(1)?,
                        destination: row.get(2)?,
                        status: row.get(3)?,
                        latency_ms: row.get::<_, i64>(4)?.max(0) as u64,
                        outcome: row.get::<_, String>(5)?.parse().map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                5,
                                rusqlite::types::Type::Text,
                                Box::new(e),
                            )
                        })?,
                        error: row.get(6)?,
                        route: row.get(7)?,
                    })
                })
                .map_err(db("attempt list"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(db("attempt list"))
        })
        .await
    }
}
