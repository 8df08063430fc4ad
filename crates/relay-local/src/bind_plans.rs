//! Each portal's bind plan on the embedded store (`BINDPLAN#<member_id>` on DynamoDB): what
//! `relay bind` registered, so an app update can register it again. One JSON row per portal.

use super::{db, CachedStatements, SqliteStore};
use async_trait::async_trait;
use relay_core::error::StoreError;
use relay_core::lifecycle::bind::Binding;
use relay_core::ports::BindPlanStore;
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl BindPlanStore for SqliteStore {
    async fn load_plan(&self, portal: &str) -> Result<Option<Vec<Binding>>, StoreError> {
        let text: Option<String> = self.with_point_reader(|conn| {
            conn.query_row_cached(
                "SELECT plan FROM bind_plans WHERE member_id = ?1",
                params![portal],
                |row| row.get(0),
            )
            .optional()
            .map_err(db("bind plan get"))
        })?;
        text.map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("stored bind plan is not JSON: {e}")))
        })
        .transpose()
    }

    async fn save_plan(&self, portal: &str, plan: &[Binding]) -> Result<(), StoreError> {
        let text = serde_json::to_string(plan)
            .map_err(|e| StoreError::Corrupt(format!("bind plan not serializable: {e}")))?;
        self.execute_write(
            "bind plan put",
            "INSERT OR REPLACE INTO bind_plans (member_id, plan) VALUES (?1, ?2)",
            (portal.to_string(), text),
        )
        .await
    }

    async fn forget_plan(&self, portal: &str) -> Result<(), StoreError> {
        self.execute_write(
            "bind plan delete",
            "DELETE FROM bind_plans WHERE member_id = ?1",
            (portal.to_string(),),
        )
        .await
    }
}
