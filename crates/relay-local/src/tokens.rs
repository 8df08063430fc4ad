//! Portal tokens on the embedded store (`pk = PORTALS`, `sk = <member_id>` on DynamoDB): what ONAPPINSTALL
//! and each OAuth refresh gave a Bitrix24 portal. The file is the user's own machine's.

use super::{db, CachedStatements, SqliteStore};
use async_trait::async_trait;
use relay_core::error::StoreError;
use relay_core::ports::{PortalTokens, TokenStore};
use relay_core::secret::Secret;
use rusqlite::{params, OptionalExtension, Row};

macro_rules! columns {
    () => {
        "member_id, domain, application_token, access_token, refresh_token, expires_at_ms, \
         client_endpoint, scope, server_endpoint"
    };
}
const COLUMNS: &str = columns!();
/// The consumer reads a portal's tokens for every event: a literal, so the reader's statement
/// cache keeps it prepared.
const SELECT_ONE: &str = concat!("SELECT ", columns!(), " FROM portals WHERE member_id = ?1");

fn tokens_from(row: &Row<'_>) -> rusqlite::Result<PortalTokens> {
    Ok(PortalTokens {
        member_id: row.get(0)?,
        domain: row.get(1)?,
        application_token: Secret::new(row.get::<_, String>(2)?),
        access_token: Secret::new(row.get::<_, String>(3)?),
        refresh_token: Secret::new(row.get::<_, String>(4)?),
        expires_at_ms: row.get(5)?,
        client_endpoint: row.get(6)?,
        scope: row.get(7)?,
        server_endpoint: row.get(8)?,
    })
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn get(&self, portal: &str) -> Result<Option<PortalTokens>, StoreError> {
        self.with_point_reader(|conn| {
            conn.query_row_cached(SELECT_ONE, params![portal], tokens_from)
                .optional()
                .map_err(db("tokens get"))
        })
    }

    /// Fsynced before it returns: a refresh replaces the refresh token, and once the OAuth
    /// server has handed out a new one the old one may no longer be taken, so tokens lost to
    /// a power cut could leave the portal to be installed again. Sends no longer flush
    /// `relay.db` (the queue has its own file), and installs and refreshes are rare enough for
    /// a commit of their own.
    async fn put(&self, tokens: &PortalTokens) -> Result<(), StoreError> {
        let t = tokens.clone();
        self.with_durable_conn(move |conn| {
            conn.execute(
                &format!("INSERT OR REPLACE INTO portals ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    t.member_id,
                    t.domain,
                    t.application_token.expose(),
                    t.access_token.expose(),
                    t.refresh_token.expose(),
                    t.expires_at_ms,
                    t.client_endpoint,
                    t.scope,
                    t.server_endpoint
                ],
            )
            .map_err(db("tokens put"))?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, portal: &str) -> Result<(), StoreError> {
        self.execute_write(
            "tokens delete",
            "DELETE FROM portals WHERE member_id = ?1",
            (portal.to_string(),),
        )
        .await
    }

    async fn list(&self) -> Result<Vec<PortalTokens>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn
                .prepare(&format!("SELECT {COLUMNS} FROM portals ORDER BY member_id"))
                .map_err(db("tokens list"))?;
            let rows = stmt.query_map([], tokens_from).map_err(db("tokens list"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(db("tokens list"))
        })
        .await
    }
}
