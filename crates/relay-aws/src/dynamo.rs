//! The consumer's records in one DynamoDB table (`pk`/`sk`, TTL attribute `expires_at` in
//! Unix seconds): dedup claims, entity snapshots, portal tokens and bind plans, delivery
//! attempts and disabled destinations. Every check-and-write is one conditional write, never a read first.
//!
//! Every read is a GetItem or a Query on one partition, never a Scan: portals share the
//! partition `PORTALS` (sort key: member id), and a portal's snapshots share
//! `SNAP#<source>#<portal>` (sort key: family, kind, entity), so listing portals and
//! forgetting a portal read only what they need, whatever else the table holds.
//! A partition takes 1,000 write and 3,000 read units a second. A portal's snapshots are
//! written at most once per event, and every event costs a REST call within the portal's
//! rate limit (a few a second), far below that; a sparse index by portal instead would have
//! doubled every snapshot write. Each event reads one `PORTALS` item; DynamoDB splits a hot
//! partition by sort key, so portals spread out, and one portal's item bounds its reads.

use super::store_error;
use crate::packed_snapshot;
use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use relay_core::error::StoreError;
use relay_core::event::Source;
use relay_core::ports::{
    Attempt, AttemptLog, AttemptOutcome, BindPlanStore, Claim, DedupStore, DeliveredEvent,
    DestinationStatus, Ownership, PortalTokens, Snapshot, SnapshotKey, SnapshotSave, SnapshotStore,
    TokenStore,
};
use relay_core::secret::Secret;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

type Item = HashMap<String, AttributeValue>;

/// Sort key of every item that is alone in its partition (dedup, bind plans, destinations).
pub const ITEM_SK: &str = "item";
/// The one partition of every portal's tokens (sort key: member id). Portals are few and
/// each event reads one item by its full key, so one partition holds them; listing them is
/// one Query.
pub const PORTALS_PK: &str = "PORTALS";
/// The TTL attribute the table is configured with (Unix seconds).
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// An abandoned IN_PROGRESS claim is claimable once its lease passes; TTL only tidies it.
const CLAIM_TIDY_AFTER_SECS: i64 = 24 * 60 * 60;
/// Snapshot keys per Query page when a portal is forgotten: each page's deletes finish
/// before the next page is read, so an uninstall cut short leaves a bounded tail for its retry.
const DELETE_PAGE_ITEMS: i32 = 100;
/// How long a snapshot stays after its last change unless configured otherwise
/// (`RELAY_SNAPSHOT_TTL_DAYS`): an entity untouched for this long is forgotten, and its next
/// event is forwarded without `changes`.
pub use relay_core::config::DEFAULT_SNAPSHOT_TTL;
/// The snapshot's entity and delivered events, packed into one binary (see
/// [`packed_snapshot`]): a short name, since attribute names are billed on every write.
pub const PACKED_ATTRIBUTE: &str = "snap";
/// An item is at most 400 KB; a legacy entity inflated past this is not a CRM entity.
const MAX_ENTITY_BYTES: usize = 16 * 1024 * 1024;
/// How long a container trusts what it learned of a destination's status: a destination
/// disabled by another container (after a 410) is seen this late at most, and meanwhile a
/// POST there only gets the 410 again. Every event would otherwise pay a read for it.
pub const DESTINATION_STATUS_TTL: Duration = Duration::from_secs(30);
/// The attempt outcome of a successful delivery. The attempt log on DynamoDB keeps only what
/// went wrong (retries, dead letters, disabled destinations, skipped duplicates): a
/// delivery is the consumer's `delivered` log line and the Forwards metric, not a write per
/// event. `relay attempts` then lists the failures before an event arrived.
pub const DELIVERED_OUTCOME: AttemptOutcome = AttemptOutcome::Delivered;
/// How long the attempt log keeps a delivery's history.
pub const ATTEMPT_RETENTION_MS: i64 = 30 * 24 * 60 * 60 * 1000;

const STATUS_IN_PROGRESS: &str = "IN_PROGRESS";
const STATUS_COMPLETED: &str = "COMPLETED";

pub struct DynamoStore {
    client: Client,
    table: String,
    /// `None`: snapshots never expire.
    snapshot_ttl: Option<Duration>,
    /// Destination statuses this container read or wrote, by key, with when it learned them.
    destination_statuses: Mutex<HashMap<String, (Instant, Option<String>)>>,
    destination_status_ttl: Duration,
    /// Whether the attempt log also keeps deliveries (see [`DELIVERED_OUTCOME`]).
    record_deliveries: bool,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoStore {
            client,
            table: table.into(),
            snapshot_ttl: Some(DEFAULT_SNAPSHOT_TTL),
            destination_statuses: Mutex::new(HashMap::new()),
            destination_status_ttl: DESTINATION_STATUS_TTL,
            record_deliveries: false,
        }
    }

    /// Keeps successful deliveries in the attempt log too (a write per event; off on AWS).
    pub fn with_deliveries_recorded(mut self, record: bool) -> Self {
        self.record_deliveries = record;
        self
    }

    /// How long a destination's status, once read, is trusted without reading it again
    /// (zero: read every time).
    pub fn with_destination_status_ttl(mut self, ttl: Duration) -> Self {
        self.destination_status_ttl = ttl;
        self
    }

    fn remember_status(&self, key: String, status: Option<String>) {
        self.destination_statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (Instant::now(), status));
    }

    fn remembered_status(&self, key: &str) -> Option<Option<String>> {
        let statuses = self
            .destination_statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        statuses
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.destination_status_ttl)
            .map(|(_, status)| status.clone())
    }

    /// How long a snapshot stays after its last change; `None` keeps snapshots forever.
    pub fn with_snapshot_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.snapshot_ttl = ttl;
        self
    }

    /// Builds the DynamoDB client from a shared SDK configuration (see [`super::sdk_config`]).
    pub fn from_conf(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        DynamoStore::new(Client::new(config), table)
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Strongly consistent, at twice an eventual read's price, because no per-event read here
    /// may be stale: a snapshot is read right after the entity's previous event wrote it (FIFO
    /// hands the next event over as soon as that one is deleted), and an eventual read could
    /// return the one before, giving wrong `changes` and missing a delivered id; a portal's
    /// tokens may have just been refreshed by another container, and a stale read would hand
    /// back the pair it replaced. Reads that a stale answer cannot hurt are rare and cached
    /// instead (destination status, and ingest's application token in `RecentStoredTokens`).
    async fn get_item(
        &self,
        (pk, sk): (String, String),
        operation: &'static str,
    ) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error(operation, e))?;
        Ok(out.item)
    }

    /// Writes the item at `(pk, sk)` whatever is there: `attributes` besides the key.
    async fn put_item<const N: usize>(
        &self,
        (pk, sk): (String, String),
        attributes: [(&'static str, AttributeValue); N],
        operation: &'static str,
    ) -> Result<(), StoreError> {
        let item: Item = [("pk", s(pk)), ("sk", s(sk))]
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

    async fn delete_item(
        &self,
        (pk, sk): (String, String),
        operation: &'static str,
    ) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .send()
            .await
            .map_err(|e| store_error(operation, e))?;
        Ok(())
    }

    /// Every item of one partition, page by page (a Query: it reads that partition only).
    /// `consistent`: false where a read a moment stale is harmless, at half the price.
    async fn query_partition(
        &self,
        pk: String,
        consistent: bool,
        operation: &'static str,
    ) -> Result<Vec<Item>, StoreError> {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk))
            .consistent_read(consistent)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| store_error(operation, e))
    }
}

/// The key of an item alone in its partition.
fn single(pk: String) -> (String, String) {
    (pk, ITEM_SK.to_string())
}

fn dedup_pk(id: &str) -> String {
    format!("DEDUP#{id}")
}

fn portal_key(portal: &str) -> (String, String) {
    (PORTALS_PK.to_string(), portal.to_string())
}

/// The partition of one portal's snapshots. `source` holds no `#`, so two portals never
/// share a partition.
pub fn snapshot_partition(source: Source, portal: &str) -> String {
    format!("SNAP#{source}#{portal}")
}

fn snapshot_key(key: &SnapshotKey) -> (String, String) {
    (
        snapshot_partition(key.source, &key.portal),
        format!("{}#{}#{}", key.family, key.entity_type, key.entity_id),
    )
}

fn bind_plan_pk(portal: &str) -> String {
    format!("BINDPLAN#{portal}")
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
                            .get_item(single(dedup_pk(id)), "dynamodb GetItem (dedup)")
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
            .get_item(snapshot_key(key), "dynamodb GetItem (snapshot)")
            .await?
        else {
            return Ok(None);
        };
        let (entity, delivered) = match item.get(PACKED_ATTRIBUTE) {
            Some(AttributeValue::B(packed)) => packed_snapshot::unpack(packed.as_ref())?,
            Some(_) => return Err(StoreError::Corrupt("packed snapshot is not binary".into())),
            // Written before snapshots were packed: the entity and deliveries apart.
            None => (entity_from(&item)?, delivered_from(&item)?),
        };
        Ok(Some(Snapshot {
            entity,
            version: req_n(&item, "version")?,
            delivered,
        }))
    }

    async fn save(
        &self,
        key: &SnapshotKey,
        snapshot: &Snapshot,
    ) -> Result<SnapshotSave, StoreError> {
        let (pk, sk) = snapshot_key(key);
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("sk", s(sk))
            // The key already names source, portal, family, kind and id: every byte more is
            // paid on each write. A put replaces the whole item, so an older item's `entity`
            // and `delivered` go with it.
            .item(
                PACKED_ATTRIBUTE,
                AttributeValue::B(Blob::new(packed_snapshot::pack(
                    &snapshot.entity,
                    &snapshot.delivered,
                )?)),
            )
            .item("version", n(snapshot.version))
            .condition_expression("attribute_not_exists(pk) OR version <= :version")
            .expression_attribute_values(":version", n(snapshot.version));
        if let Some(ttl) = self.snapshot_ttl {
            put = put.item(TTL_ATTRIBUTE, n(snapshot_expires_at(unix_secs_now(), ttl)));
        }
        let result = put.send().await;
        settle_conditional(
            result,
            SnapshotSave::Saved,
            SnapshotSave::Stale,
            "dynamodb PutItem (snapshot)",
        )
    }

    async fn delete(&self, key: &SnapshotKey) -> Result<(), StoreError> {
        self.delete_item(snapshot_key(key), "dynamodb DeleteItem (snapshot)")
            .await
    }

    /// A Query of the portal's partition, page by page, deleting each page before reading
    /// the next: a retry after a failure finds only what is left, so it is idempotent.
    async fn delete_portal(&self, source: Source, portal: &str) -> Result<usize, StoreError> {
        let pk = snapshot_partition(source, portal);
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(&pk))
            // Keys only: a page of keys is 1 MB of items' keys, not of their entities.
            .projection_expression("pk, sk")
            .consistent_read(true)
            .limit(DELETE_PAGE_ITEMS)
            .into_paginator()
            .send();
        let mut deleted = 0;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| store_error("dynamodb Query (snapshots)", e))?;
            for item in page.items() {
                self.delete_item(
                    (pk.clone(), req_s(item, "sk")?),
                    "dynamodb DeleteItem (snapshot)",
                )
                .await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// The entity of a snapshot written before snapshots were packed: its JSON text deflated
/// without a dictionary (`B`) or plain (`S`, from before compression).
fn entity_from(item: &Item) -> Result<serde_json::Value, StoreError> {
    let parsed = match item.get("entity") {
        Some(AttributeValue::S(text)) => serde_json::from_str(text),
        Some(AttributeValue::B(blob)) => {
            let text =
                miniz_oxide::inflate::decompress_to_vec_with_limit(blob.as_ref(), MAX_ENTITY_BYTES)
                    .map_err(|e| {
                        StoreError::Corrupt(format!("snapshot entity does not inflate: {e}"))
                    })?;
            serde_json::from_slice(&text)
        }
        _ => return Err(StoreError::Corrupt("snapshot lacks its entity".into())),
    };
    parsed.map_err(|e| StoreError::Corrupt(format!("snapshot entity is not JSON: {e}")))
}

/// The deliveries of a snapshot written before snapshots were packed, as one JSON text;
/// absent on snapshots written before a snapshot recorded its deliveries.
fn delivered_from(item: &Item) -> Result<Vec<DeliveredEvent>, StoreError> {
    match opt_s(item, "delivered") {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| StoreError::Corrupt(format!("snapshot's delivered events: {e}"))),
    }
}

/// The TTL of a snapshot written at `now_secs`: `ttl` after its last change.
fn snapshot_expires_at(now_secs: i64, ttl: Duration) -> i64 {
    now_secs.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX))
}

fn unix_secs_now() -> i64 {
    relay_core::clock::now_unix_ms() / 1000
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
    async fn get(&self, portal: &str) -> Result<Option<PortalTokens>, StoreError> {
        self.get_item(portal_key(portal), "dynamodb GetItem (portal)")
            .await?
            .as_ref()
            .map(tokens_from)
            .transpose()
    }

    async fn put(&self, tokens: &PortalTokens) -> Result<(), StoreError> {
        self.put_item(
            portal_key(&tokens.member_id),
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

    async fn delete(&self, portal: &str) -> Result<(), StoreError> {
        self.delete_item(portal_key(portal), "dynamodb DeleteItem (portal)")
            .await
    }

    async fn list(&self) -> Result<Vec<PortalTokens>, StoreError> {
        // Eventually consistent: a portal installed a moment ago is listed on the next run.
        let mut all: Vec<PortalTokens> = self
            .query_partition(PORTALS_PK.to_string(), false, "dynamodb Query (portals)")
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
        portal: &str,
    ) -> Result<Option<Vec<relay_core::lifecycle::bind::Binding>>, StoreError> {
        let Some(item) = self
            .get_item(single(bind_plan_pk(portal)), "dynamodb GetItem (bind plan)")
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
        portal: &str,
        plan: &[relay_core::lifecycle::bind::Binding],
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(plan)
            .map_err(|e| StoreError::Corrupt(format!("bind plan not serializable: {e}")))?;
        self.put_item(
            single(bind_plan_pk(portal)),
            [("member_id", s(portal)), ("plan", s(text))],
            "dynamodb PutItem (bind plan)",
        )
        .await
    }

    async fn forget_plan(&self, portal: &str) -> Result<(), StoreError> {
        self.delete_item(
            single(bind_plan_pk(portal)),
            "dynamodb DeleteItem (bind plan)",
        )
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
        outcome: req_s(item, "outcome")?.parse()?,
        error: opt_s(item, "error").map(str::to_string),
        route: opt_s(item, "route").map(str::to_string),
    })
}

#[async_trait]
impl AttemptLog for DynamoStore {
    async fn record(&self, attempt: &Attempt) -> Result<(), StoreError> {
        if attempt.outcome == DELIVERED_OUTCOME && !self.record_deliveries {
            return Ok(());
        }
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
            .item("outcome", s(attempt.outcome.as_str()))
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
        let pk = destination_pk(destination);
        if let Some(status) = self.remembered_status(&pk) {
            return Ok(status);
        }
        let item = self
            .get_item(single(pk.clone()), "dynamodb GetItem (destination)")
            .await?;
        let status = item.map(|item| opt_s(&item, "reason").unwrap_or("disabled").to_string());
        self.remember_status(pk, status.clone());
        Ok(status)
    }

    async fn disable(
        &self,
        destination: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let pk = destination_pk(destination);
        self.put_item(
            single(pk.clone()),
            [("reason", s(reason)), ("disabled_at_ms", n(now_ms))],
            "dynamodb PutItem (destination)",
        )
        .await?;
        self.remember_status(pk, Some(reason.to_string()));
        Ok(())
    }

    async fn enable(&self, destination: &str) -> Result<(), StoreError> {
        let pk = destination_pk(destination);
        self.delete_item(single(pk.clone()), "dynamodb DeleteItem (destination)")
            .await?;
        self.remember_status(pk, None);
        Ok(())
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

    /// A snapshot item's entity as it was written before snapshots were packed.
    fn legacy_entity_value(entity: &serde_json::Value) -> AttributeValue {
        let text = entity.to_string();
        let deflated = miniz_oxide::deflate::compress_to_vec(text.as_bytes(), 9);
        if deflated.len() < text.len() {
            AttributeValue::B(Blob::new(deflated))
        } else {
            AttributeValue::S(text)
        }
    }

    #[test]
    fn legacy_entities_deflated_or_plain_are_read_back_exactly() {
        let small = serde_json::json!({"ID": "1"});
        assert!(matches!(legacy_entity_value(&small), AttributeValue::S(_)));
        let fields: serde_json::Map<String, serde_json::Value> = (0..80)
            .map(|n| {
                (
                    format!("UF_CRM_{n}"),
                    serde_json::json!(format!("значение {n}")),
                )
            })
            .collect();
        let big = serde_json::Value::Object(fields);
        let stored = legacy_entity_value(&big);
        assert!(matches!(stored, AttributeValue::B(_)));
        for value in [stored, legacy_entity_value(&small), s(big.to_string())] {
            let item: Item = [("entity".to_string(), value)].into_iter().collect();
            let back = entity_from(&item).unwrap();
            assert!(back == big || back == small);
        }
        let broken: Item = [(
            "entity".to_string(),
            AttributeValue::B(Blob::new(vec![1, 2, 3])),
        )]
        .into_iter()
        .collect();
        assert!(matches!(entity_from(&broken), Err(StoreError::Corrupt(_))));
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
