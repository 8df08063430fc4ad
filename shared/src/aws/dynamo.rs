//! The consumer's records in one DynamoDB table (`pk`/`sk`, TTL attribute `expires_at` in
//! Unix seconds): dedup claims, entity snapshots, portal tokens and bind plans, delivery
//! attempts and disabled destinations. Every check-and-write is one conditional write, never a read first.

use super::store_error;
use crate::error::StoreError;
use crate::event::Source;
use crate::ports::{
    Attempt, AttemptLog, BindPlanStore, Claim, DedupStore, DestinationStatus, Ownership,
    PortalTokens, Snapshot, SnapshotKey, SnapshotSave, SnapshotStore, TokenStore,
};
use crate::secret::Secret;
use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

type Item = HashMap<String, AttributeValue>;

/// Sort key of every item that is alone in its partition (all but attempts).
pub const ITEM_SK: &str = "item";
/// The TTL attribute the table is configured with (Unix seconds).
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// An abandoned IN_PROGRESS claim is claimable once its lease passes; TTL only tidies it.
const CLAIM_TIDY_AFTER_SECS: i64 = 24 * 60 * 60;
/// How long the attempt log keeps a delivery's history.
pub const ATTEMPT_RETENTION_MS: i64 = 30 * 24 * 60 * 60 * 1000;

const STATUS_IN_PROGRESS: &str = "IN_PROGRESS";
const STATUS_COMPLETED: &str = "COMPLETED";

pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoStore {
            client,
            table: table.into(),
        }
    }

    /// Builds the DynamoDB client from a shared SDK configuration (see [`super::sdk_config`]).
    pub fn from_conf(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        DynamoStore::new(Client::new(config), table)
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    async fn get_item(
        &self,
        pk: String,
        operation: &'static str,
    ) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(ITEM_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error(operation, e))?;
        Ok(out.item)
    }

    /// Writes the item at `pk` whatever is there: `attributes` besides the key.
    async fn put_item<const N: usize>(
        &self,
        pk: String,
        attributes: [(&'static str, AttributeValue); N],
        operation: &'static str,
    ) -> Result<(), StoreError> {
        let item: Item = [("pk", s(pk)), ("sk", s(ITEM_SK))]
            .into_iter()
            .chain(attributes)
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| store_error(operation, e))?;
        Ok(())
    }

    async fn delete_item(&self, pk: String, operation: &'static str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(ITEM_SK))
            .send()
            .await
            .map_err(|e| store_error(operation, e))?;
        Ok(())
    }

    /// Every item whose pk starts with `prefix` (a Scan: only for rare, small sets such as
    /// an uninstall or listing portals).
    async fn scan_prefix(
        &self,
        prefix: &str,
        operation: &'static str,
    ) -> Result<Vec<Item>, StoreError> {
        self.client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(pk, :prefix)")
            .expression_attribute_values(":prefix", s(prefix))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| store_error(operation, e))
    }
}

fn dedup_pk(id: &str) -> String {
    format!("DEDUP#{id}")
}

fn portal_pk(member_id: &str) -> String {
    format!("PORTAL#{member_id}")
}

fn bind_plan_pk(member_id: &str) -> String {
    format!("BINDPLAN#{member_id}")
}

fn attempt_pk(event_id: &str) -> String {
    format!("ATTEMPT#{event_id}")
}

/// Destination URLs may carry credentials in their query, so the key is a hash of it.
pub fn destination_pk(destination: &str) -> String {
    format!(
        "DEST#{}",
        hex::encode(Sha256::digest(destination.as_bytes()))
    )
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Unix seconds for the TTL attribute, rounded up so TTL never deletes early.
fn ttl_secs(ms: i64) -> i64 {
    ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) > 0)
}

fn opt_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.as_str()),
        _ => None,
    }
}

fn req_s(item: &Item, name: &str) -> Result<String, StoreError> {
    opt_s(item, name)
        .map(str::to_string)
        .ok_or_else(|| StoreError::Corrupt(format!("item lacks string attribute {name}")))
}

fn opt_n(item: &Item, name: &str) -> Result<Option<i64>, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("attribute {name} is not an integer"))),
        _ => Ok(None),
    }
}

fn req_n(item: &Item, name: &str) -> Result<i64, StoreError> {
    opt_n(item, name)?
        .ok_or_else(|| StoreError::Corrupt(format!("item lacks number attribute {name}")))
}

/// What a dedup record that refused a claim says about the event.
fn claim_refused_by(item: &Item) -> Result<Claim, StoreError> {
    match opt_s(item, "status") {
        Some(STATUS_COMPLETED) => Ok(Claim::AlreadyCompleted),
        Some(STATUS_IN_PROGRESS) => Ok(Claim::HeldElsewhere {
            lease_until_ms: req_n(item, "lease_until_ms")?,
        }),
        _ => Err(StoreError::Corrupt(
            "dedup record has an unknown status".into(),
        )),
    }
}

#[async_trait]
impl DedupStore for DynamoStore {
    async fn claim(
        &self,
        id: &str,
        owner: &str,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<Claim, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(dedup_pk(id)))
            .item("sk", s(ITEM_SK))
            .item("status", s(STATUS_IN_PROGRESS))
            .item("owner", s(owner))
            .item("lease_until_ms", n(lease_until_ms))
            .item(
                TTL_ATTRIBUTE,
                n(ttl_secs(lease_until_ms) + CLAIM_TIDY_AFTER_SECS),
            )
            // COMPLETED records are checked against their own expiry: DynamoDB's TTL deletes
            // up to days late, so a record past `expires_at_ms` may still be there.
            .condition_expression(
                "attribute_not_exists(pk) \
                 OR (#status = :completed AND expires_at_ms <= :now) \
                 OR (#status = :in_progress AND lease_until_ms <= :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":completed", s(STATUS_COMPLETED))
            .expression_attribute_values(":in_progress", s(STATUS_IN_PROGRESS))
            .expression_attribute_values(":now", n(now_ms))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Claim::Acquired),
            Err(err) => match err.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(refused)) => {
                    match refused.item() {
                        Some(item) => claim_refused_by(item),
                        // Older emulators omit ALL_OLD: read the record that refused us.
                        None => match self
                            .get_item(dedup_pk(id), "dynamodb GetItem (dedup)")
                            .await?
                        {
                            Some(item) => claim_refused_by(&item),
                            None => Err(StoreError::Unavailable(
                                "dedup claim refused by a record that is gone; retry".into(),
                            )),
                        },
                    }
                }
                _ => Err(store_error("dynamodb PutItem (dedup claim)", err)),
            },
        }
    }

    async fn extend(
        &self,
        id: &str,
        owner: &str,
        lease_until_ms: i64,
    ) -> Result<Ownership, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(dedup_pk(id)))
            .key("sk", s(ITEM_SK))
            .update_expression("SET lease_until_ms = :lease, #ttl = :ttl")
            .condition_expression("#status = :in_progress AND #owner = :owner")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":in_progress", s(STATUS_IN_PROGRESS))
            .expression_attribute_values(":owner", s(owner))
            .expression_attribute_values(":lease", n(lease_until_ms))
            .expression_attribute_values(
                ":ttl",
                n(ttl_secs(lease_until_ms) + CLAIM_TIDY_AFTER_SECS),
            )
            .send()
            .await;
        settle_conditional(
            result,
            Ownership::Held,
            Ownership::Lost,
            "dynamodb UpdateItem (dedup extend)",
        )
    }

    async fn complete(
        &self,
        id: &str,
        owner: &str,
        expires_at_ms: i64,
    ) -> Result<Ownership, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(dedup_pk(id)))
            .item("sk", s(ITEM_SK))
            .item("status", s(STATUS_COMPLETED))
            .item("owner", s(owner))
            .item("expires_at_ms", n(expires_at_ms))
            .item(TTL_ATTRIBUTE, n(ttl_secs(expires_at_ms)))
            // A record that vanished is written anyway: the event was delivered.
            .condition_expression(
                "attribute_not_exists(pk) OR #status = :completed OR #owner = :owner",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":completed", s(STATUS_COMPLETED))
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        settle_conditional(
            result,
            Ownership::Held,
            Ownership::Lost,
            "dynamodb PutItem (dedup complete)",
        )
    }

    async fn release(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(dedup_pk(id)))
            .key("sk", s(ITEM_SK))
            // Never a COMPLETED record (that would forward the event again), never another
            // owner's claim.
            .condition_expression("#status = :in_progress AND #owner = :owner")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":in_progress", s(STATUS_IN_PROGRESS))
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        settle_conditional(result, (), (), "dynamodb DeleteItem (dedup release)")
    }
}

#[async_trait]
impl SnapshotStore for DynamoStore {
    async fn load(&self, key: &SnapshotKey) -> Result<Option<Snapshot>, StoreError> {
        let Some(item) = self
            .get_item(key.pk(), "dynamodb GetItem (snapshot)")
            .await?
        else {
            return Ok(None);
        };
        let entity = serde_json::from_str(&req_s(&item, "entity")?)
            .map_err(|e| StoreError::Corrupt(format!("snapshot entity is not JSON: {e}")))?;
        Ok(Some(Snapshot {
            entity,
            version: req_n(&item, "version")?,
        }))
    }

    async fn save(
        &self,
        key: &SnapshotKey,
        snapshot: &Snapshot,
    ) -> Result<SnapshotSave, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(key.pk()))
            .item("sk", s(ITEM_SK))
            .item("source", s(key.source.as_str()))
            .item("portal", s(&key.portal))
            .item("family", s(key.family.as_str()))
            .item("entity_type", s(key.entity_type.as_str()))
            .item("entity_id", s(&key.entity_id))
            // A string, not a map: the entity is kept exactly as the CRM answered it.
            .item("entity", s(snapshot.entity.to_string()))
            .item("version", n(snapshot.version))
            .condition_expression("attribute_not_exists(pk) OR version <= :version")
            .expression_attribute_values(":version", n(snapshot.version))
            .send()
            .await;
        settle_conditional(
            result,
            SnapshotSave::Saved,
            SnapshotSave::Stale,
            "dynamodb PutItem (snapshot)",
        )
    }

    async fn delete(&self, key: &SnapshotKey) -> Result<(), StoreError> {
        self.delete_item(key.pk(), "dynamodb DeleteItem (snapshot)")
            .await
    }

    async fn delete_portal(&self, source: Source, portal: &str) -> Result<usize, StoreError> {
        // The trailing '#' keeps portal "ab" from matching portal "abc".
        let prefix = format!("SNAP#{source}#{portal}#");
        let items = self
            .scan_prefix(&prefix, "dynamodb Scan (snapshots)")
            .await?;
        let mut deleted = 0;
        for item in &items {
            self.delete_item(req_s(item, "pk")?, "dynamodb DeleteItem (snapshot)")
                .await?;
            deleted += 1;
        }
        Ok(deleted)
    }
}

fn tokens_from(item: &Item) -> Result<PortalTokens, StoreError> {
    Ok(PortalTokens {
        member_id: req_s(item, "member_id")?,
        domain: req_s(item, "domain")?,
        application_token: Secret::new(req_s(item, "application_token")?),
        access_token: Secret::new(req_s(item, "access_token")?),
        refresh_token: Secret::new(req_s(item, "refresh_token")?),
        expires_at_ms: req_n(item, "access_expires_at_ms")?,
        client_endpoint: req_s(item, "client_endpoint")?,
        scope: req_s(item, "scope")?,
        // Absent on items written before it was kept.
        server_endpoint: item
            .get("server_endpoint")
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default(),
    })
}

#[async_trait]
impl TokenStore for DynamoStore {
    async fn get(&self, member_id: &str) -> Result<Option<PortalTokens>, StoreError> {
        self.get_item(portal_pk(member_id), "dynamodb GetItem (portal)")
            .await?
            .as_ref()
            .map(tokens_from)
            .transpose()
    }

    async fn put(&self, tokens: &PortalTokens) -> Result<(), StoreError> {
        self.put_item(
            portal_pk(&tokens.member_id),
            [
                ("member_id", s(&tokens.member_id)),
                ("domain", s(&tokens.domain)),
                ("application_token", s(tokens.application_token.expose())),
                ("access_token", s(tokens.access_token.expose())),
                ("refresh_token", s(tokens.refresh_token.expose())),
                // Not `expires_at`: that is the TTL attribute, and an expired access token
                // must not delete the refresh token that renews it.
                ("access_expires_at_ms", n(tokens.expires_at_ms)),
                ("client_endpoint", s(&tokens.client_endpoint)),
                ("scope", s(&tokens.scope)),
                ("server_endpoint", s(&tokens.server_endpoint)),
            ],
            "dynamodb PutItem (portal)",
        )
        .await
    }

    async fn delete(&self, member_id: &str) -> Result<(), StoreError> {
        self.delete_item(portal_pk(member_id), "dynamodb DeleteItem (portal)")
            .await
    }

    async fn list(&self) -> Result<Vec<PortalTokens>, StoreError> {
        let mut all: Vec<PortalTokens> = self
            .scan_prefix("PORTAL#", "dynamodb Scan (portals)")
            .await?
            .iter()
            .map(tokens_from)
            .collect::<Result<_, _>>()?;
        all.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        Ok(all)
    }
}

#[async_trait]
impl BindPlanStore for DynamoStore {
    async fn load_plan(
        &self,
        member_id: &str,
    ) -> Result<Option<Vec<crate::lifecycle::bind::Binding>>, StoreError> {
        let Some(item) = self
            .get_item(bind_plan_pk(member_id), "dynamodb GetItem (bind plan)")
            .await?
        else {
            return Ok(None);
        };
        serde_json::from_str(&req_s(&item, "plan")?)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("stored bind plan is not JSON: {e}")))
    }

    async fn save_plan(
        &self,
        member_id: &str,
        plan: &[crate::lifecycle::bind::Binding],
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(plan)
            .map_err(|e| StoreError::Corrupt(format!("bind plan not serializable: {e}")))?;
        self.put_item(
            bind_plan_pk(member_id),
            [("member_id", s(member_id)), ("plan", s(text))],
            "dynamodb PutItem (bind plan)",
        )
        .await
    }

    async fn forget_plan(&self, member_id: &str) -> Result<(), StoreError> {
        self.delete_item(bind_plan_pk(member_id), "dynamodb DeleteItem (bind plan)")
            .await
    }
}

fn attempt_from(item: &Item) -> Result<Attempt, StoreError> {
    Ok(Attempt {
        event_id: req_s(item, "event_id")?,
        at_ms: req_n(item, "at_ms")?,
        destination: req_s(item, "destination")?,
        status: opt_n(item, "status")?
            .map(|v| {
                u16::try_from(v)
                    .map_err(|_| StoreError::Corrupt("attempt status out of range".into()))
            })
            .transpose()?,
        latency_ms: u64::try_from(req_n(item, "latency_ms")?)
            .map_err(|_| StoreError::Corrupt("attempt latency is negative".into()))?,
        outcome: req_s(item, "outcome")?,
        error: opt_s(item, "error").map(str::to_string),
        route: opt_s(item, "route").map(str::to_string),
    })
}

#[async_trait]
impl AttemptLog for DynamoStore {
    async fn record(&self, attempt: &Attempt) -> Result<(), StoreError> {
        // Zero-padded time first, so sk order is time order; the random tail keeps two
        // attempts in one millisecond apart.
        let sk = format!("{:015}#{:08x}", attempt.at_ms.max(0), fastrand::u32(..));
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(attempt_pk(&attempt.event_id)))
            .item("sk", s(sk))
            .item("event_id", s(&attempt.event_id))
            .item("at_ms", n(attempt.at_ms))
            .item("destination", s(&attempt.destination))
            .item(
                "latency_ms",
                n(i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX)),
            )
            .item("outcome", s(&attempt.outcome))
            .item(
                TTL_ATTRIBUTE,
                n(ttl_secs(attempt.at_ms + ATTEMPT_RETENTION_MS)),
            );
        if let Some(status) = attempt.status {
            put = put.item("status", n(i64::from(status)));
        }
        if let Some(error) = &attempt.error {
            put = put.item("error", s(error));
        }
        if let Some(route) = &attempt.route {
            put = put.item("route", s(route));
        }
        put.send()
            .await
            .map_err(|e| store_error("dynamodb PutItem (attempt)", e))?;
        Ok(())
    }

    async fn list(&self, event_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let items: Vec<Item> = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(attempt_pk(event_id)))
            .scan_index_forward(true)
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| store_error("dynamodb Query (attempts)", e))?;
        items.iter().map(attempt_from).collect()
    }
}

#[async_trait]
impl DestinationStatus for DynamoStore {
    async fn disabled(&self, destination: &str) -> Result<Option<String>, StoreError> {
        let item = self
            .get_item(
                destination_pk(destination),
                "dynamodb GetItem (destination)",
            )
            .await?;
        Ok(item.map(|item| opt_s(&item, "reason").unwrap_or("disabled").to_string()))
    }

    async fn disable(
        &self,
        destination: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.put_item(
            destination_pk(destination),
            [("reason", s(reason)), ("disabled_at_ms", n(now_ms))],
            "dynamodb PutItem (destination)",
        )
        .await
    }

    async fn enable(&self, destination: &str) -> Result<(), StoreError> {
        self.delete_item(
            destination_pk(destination),
            "dynamodb DeleteItem (destination)",
        )
        .await
    }
}

/// One conditional write's outcome: `met` when it was written, `failed` when its condition
/// did not hold (an expected answer, not an error), any other failure a `StoreError`.
fn settle_conditional<T, O, E, R>(
    result: Result<O, SdkError<E, R>>,
    met: T,
    failed: T,
    operation: &'static str,
) -> Result<T, StoreError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(met),
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.code() == Some("ConditionalCheckFailedException")) =>
        {
            Ok(failed)
        }
        Err(err) => Err(store_error(operation, err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_secs(1_000), 1);
        assert_eq!(ttl_secs(1_001), 2);
        assert_eq!(ttl_secs(0), 0);
    }

    #[test]
    fn destination_key_hides_the_url() {
        let pk = destination_pk("https://hooks.example/x?token=s3cret");
        assert!(pk.starts_with("DEST#"));
        assert!(!pk.contains("s3cret"));
        assert_eq!(pk.len(), 5 + 64);
    }

    #[test]
    fn a_refusing_record_names_its_state() {
        let mut item = Item::new();
        item.insert("status".into(), s(STATUS_IN_PROGRESS));
        item.insert("lease_until_ms".into(), n(42));
        assert_eq!(
            claim_refused_by(&item).unwrap(),
            Claim::HeldElsewhere { lease_until_ms: 42 }
        );
        item.insert("status".into(), s(STATUS_COMPLETED));
        assert_eq!(claim_refused_by(&item).unwrap(), Claim::AlreadyCompleted);
    }
}
