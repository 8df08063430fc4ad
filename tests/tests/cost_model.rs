#![recursion_limit = "256"]
//! The cost model, measured: a typical app-mode flow (ingest, consumer, one offline-poller
//! run) against moto through SDK clients that record every DynamoDB and SQS call on the wire,
//! with a budget of calls per event that a code change may not exceed. With RELAY_COST_OUT
//! set, the calls are written there for `scripts/cost.py` to price.
//!
//! SQS receive and delete are the Lambda event source mapping's, not the relay's: they are
//! read here through an uncounted client, and the script prices them from the batch size.

use aws_sdk_sqs::types::MessageSystemAttributeName;
use integration_tests::counting::{Call, CallLog};
use integration_tests::destination::Destination;
use integration_tests::fake_bitrix24_events::{post_as_bitrix24, FakePortal};
use integration_tests::moto::{create_fifo_queues, create_table, moto_config, MAX_RECEIVE_COUNT};
use relay_aws::dynamo::DynamoStore;
use relay_aws::sqs::SqsQueue;
use relay_core::config::RelayConfig;
use relay_core::consume::{Consumer, ConsumerPorts};
use relay_core::enrich::bitrix24::{Bitrix24Client, RateLimit};
use relay_core::event::Family;
use relay_core::lifecycle::offline::OfflinePoller;
use relay_core::ports::{Bitrix24Rest, PortalTokens, QueueMessage, TokenStore};
use relay_core::secret::Secret;
use relay_lambda::ingest::family_ingress;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing_subscriber::util::SubscriberInitExt;

const APP_TOKEN: &str = "cost-app-token";
const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Entities per run: each gets an add (first sight) and an update (the typical event).
const ENTITIES: usize = 8;

// ---- The budget: calls per event on the happy path. Raise one only with a reason. ----------
/// Ingest: one SendMessage; the portal's stored application token is read once per container
/// and minute (`STORED_TOKEN_CACHE`), so not per event.
const INGEST_SENDS: f64 = 1.0;
const INGEST_TABLE_READS: f64 = 0.0;
/// Consumer, an update of a known entity on its first receive: the snapshot only, which records
/// the delivery (it keeps the entity's last delivered event ids); no dedup claim, since the
/// message's own invisibility keeps its POST single.
const CONSUMER_TABLE_WRITES: f64 = 1.0;
/// Consumer: the snapshot; destination status and tokens come from the per-container cache.
const CONSUMER_TABLE_READS: f64 = 1.5;
/// A log line at INFO, at most (CloudWatch bills ingestion by the byte).
const LOG_LINE_BYTES: usize = 400;
/// The poller, per portal and run with nothing to drain: the tokens of each REST call it makes.
const POLLER_TOKEN_READS_PER_PORTAL: usize = 3;
/// A snapshot of this 3.5 KB entity with its last deliveries, packed, is one write unit
/// (1 KB, key and attribute names included; four when it was stored as text, two deflated).
const SNAPSHOT_ITEM_BYTES: usize = 1024;
/// Portals as Bitrix24 names them: `member_id` is 32 hex digits, and it is in every
/// snapshot's key, so a shorter made-up one would understate the item.
const MEMBER_ID: &str = "5c3f0e4b9a2d4c1e8f7a6b5d4c3e2f1a";
const OTHER_MEMBER_ID: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
/// Deal ids of a portal in use: five digits, as they appear in each snapshot's key.
const FIRST_DEAL_ID: usize = 40_001;

/// A deal as `crm.deal.get` answers it (bitrix24/b24restdocs
/// api-reference/crm/deals/crm-deal-get.md: the same standard fields in the same order,
/// `null` where a field is empty): ~3.5 KB of JSON, the standard fields and a few dozen
/// user fields (`UF_CRM_*`: strings, empty, multiple values, numbers), as a real portal's
/// deals carry.
fn deal(id: usize, stage: &str, amount: u32) -> Value {
    let mut deal = json!({
        "ID": id.to_string(), "TITLE": format!("Поставка оборудования №{id}"),
        "TYPE_ID": "SALE", "STAGE_ID": stage, "PROBABILITY": null, "CURRENCY_ID": "RUB",
        "OPPORTUNITY": format!("{amount}.00"), "IS_MANUAL_OPPORTUNITY": "N", "TAX_VALUE": "0.00",
        "LEAD_ID": null, "COMPANY_ID": "12", "CONTACT_ID": "31", "QUOTE_ID": null,
        "BEGINDATE": "2026-11-01T03:00:00+03:00", "CLOSEDATE": "2026-11-30T03:00:00+03:00",
        "ASSIGNED_BY_ID": "1", "CREATED_BY_ID": "1", "MODIFY_BY_ID": "1",
        "DATE_CREATE": "2026-11-01T10:00:00+03:00", "DATE_MODIFY": "2026-11-22T10:00:00+03:00",
        "OPENED": "Y", "CLOSED": "N", "COMMENTS": "Клиент просит доставку до конца месяца",
        "ADDITIONAL_INFO": null, "LOCATION_ID": null, "CATEGORY_ID": "0",
        "STAGE_SEMANTIC_ID": "P", "IS_NEW": "N", "IS_RECURRING": "N", "IS_RETURN_CUSTOMER": "N",
        "IS_REPEATED_APPROACH": "N", "SOURCE_ID": "WEB", "SOURCE_DESCRIPTION": null,
        "ORIGINATOR_ID": null, "ORIGIN_ID": null, "MOVED_BY_ID": "1",
        "MOVED_TIME": "2026-11-22T10:00:00+03:00", "LAST_ACTIVITY_TIME": "2026-11-22T10:00:00+03:00",
        "UTM_SOURCE": "yandex", "UTM_MEDIUM": "cpc", "UTM_CAMPAIGN": "autumn", "UTM_CONTENT": null,
        "UTM_TERM": null, "LAST_ACTIVITY_BY": "1"
    });
    let map = deal.as_object_mut().expect("an object");
    for n in 0..64 {
        let value = match n % 4 {
            0 => json!(format!("значение поля {n} сделки {id}")),
            1 => json!(null),
            2 => json!([format!("{}", 100 + n), format!("{}", 200 + n)]),
            _ => json!(format!("{}", 1000 * n)),
        };
        map.insert(format!("UF_CRM_17000000{n:02}"), value);
    }
    deal
}

/// An event as Bitrix24 posts it to the app's handler.
fn b24_post(portal: &FakePortal, event: &str, id: usize, ts: i64) -> Value {
    json!({
        "event": event, "event_handler_id": "17",
        "data": {"FIELDS": {"ID": id.to_string()}}, "ts": ts.to_string(),
        "auth": {"domain": portal.domain, "client_endpoint": portal.client_endpoint,
                 "server_endpoint": "https://oauth.bitrix.info/rest/",
                 "member_id": portal.member_id, "application_token": APP_TOKEN}
    })
}

fn tokens_of(portal: &FakePortal) -> PortalTokens {
    let s = portal.state();
    PortalTokens {
        member_id: portal.member_id.clone(),
        domain: portal.domain.clone(),
        application_token: Secret::new(APP_TOKEN),
        access_token: Secret::new(s.access_token.clone()),
        refresh_token: Secret::new(s.refresh_token.clone()),
        expires_at_ms: now_ms() + 3_600_000,
        client_endpoint: portal.client_endpoint.clone(),
        scope: "crm".into(),
        server_endpoint: String::new(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn count(calls: &[Call], service: &str, operations: &[&str]) -> usize {
    calls
        .iter()
        .filter(|c| c.service == service && operations.contains(&c.operation.as_str()))
        .count()
}

const TABLE_WRITES: &[&str] = &["PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"];
const TABLE_READS: &[&str] = &["GetItem", "Query", "Scan", "BatchGetItem"];

/// Reads the queue as the event source mapping does (uncounted) and hands each batch to
/// the consumer; deletes what it finished. Returns how many messages were processed.
async fn drain(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    consumer: &Consumer,
    expected: usize,
) -> usize {
    let mut done = 0;
    for _ in 0..(expected * 3 + 10) {
        if done == expected {
            break;
        }
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive from moto");
        let messages: Vec<QueueMessage> = out
            .messages()
            .iter()
            .map(|m| QueueMessage {
                message_id: m.message_id().unwrap_or_default().to_string(),
                receipt: m.receipt_handle().unwrap_or_default().to_string(),
                body: m.body().unwrap_or_default().to_string(),
                group_id: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                    .cloned()
                    .unwrap_or_default(),
                receive_count: 1,
                received_at_ms: m
                    .attributes()
                    .and_then(|a| {
                        a.get(&MessageSystemAttributeName::ApproximateFirstReceiveTimestamp)
                    })
                    .and_then(|t| t.parse().ok()),
            })
            .collect();
        if messages.is_empty() {
            continue;
        }
        let report = consumer
            .process_batch(&messages, Duration::from_secs(60), now_ms())
            .await;
        assert!(
            report.failed.is_empty(),
            "a happy-path event failed: {report:?}"
        );
        for m in &messages {
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(&m.receipt)
                .send()
                .await
                .expect("delete on moto");
        }
        done += messages.len();
    }
    done
}

/// Every log line the functions write, in `relay_core::logging`'s format (as on Lambda),
/// tagged with the phase that wrote it. This test binary holds one test, so the global
/// subscriber is its own.
/// Per phase: lines, bytes, and the longest single write (a line).
type LogSizes = BTreeMap<String, (usize, usize, usize)>;

#[derive(Clone, Default)]
struct LogBytes {
    phase: Arc<Mutex<String>>,
    by_phase: Arc<Mutex<LogSizes>>,
}

impl LogBytes {
    fn set_phase(&self, phase: &str) {
        *self.phase.lock().unwrap() = phase.to_string();
    }

    /// (lines, bytes, longest write) in `phase`: the formatter writes a line at a time.
    fn of(&self, phase: &str) -> (usize, usize, usize) {
        self.by_phase
            .lock()
            .unwrap()
            .get(phase)
            .copied()
            .unwrap_or_default()
    }
}

impl std::io::Write for LogBytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let phase = self.phase.lock().unwrap().clone();
        let mut by_phase = self.by_phase.lock().unwrap();
        let entry = by_phase.entry(phase).or_default();
        entry.0 += buf.iter().filter(|b| **b == b'\n').count();
        entry.1 += buf.len();
        entry.2 = entry.2.max(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> LogBytes {
    let logs = LogBytes::default();
    let writer = logs.clone();
    relay_core::logging::json_lines(tracing_subscriber::EnvFilter::new("info"), move || {
        writer.clone()
    })
    .init();
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_per_event_stay_within_the_budget() {
    let logs = capture_logs();
    let sdk = moto_config().await;
    let plain_sqs = aws_sdk_sqs::Client::new(&sdk);
    let queues = create_fifo_queues(&plain_sqs, MAX_RECEIVE_COUNT).await;
    let table = create_table(&aws_sdk_dynamodb::Client::new(&sdk)).await;

    let log = CallLog::new();
    log.set_phase("setup");
    let store = Arc::new(DynamoStore::new(log.dynamodb(&sdk), &table));
    let queue = Arc::new(SqsQueue::new(
        log.sqs(&sdk),
        queues.queue_url.clone(),
        Some(queues.dlq_url.clone()),
    ));

    let portal = FakePortal::start(MEMBER_ID).await;
    let other = FakePortal::start(OTHER_MEMBER_ID).await;
    let destination = Destination::start().await;
    let config = RelayConfig {
        destination_url: Some(destination.url()),
        signing_secret: Some(Secret::new(SIGNING_SECRET)),
        b24_client_id: Some(portal.client_id.clone()),
        b24_client_secret: Some(Secret::new(portal.state().client_secret.clone())),
        b24_oauth_url: portal.oauth_url(),
        allow_loopback_crm: true,
        ..RelayConfig::default()
    };
    // As ONAPPINSTALL leaves them (the install is once per portal, not per event).
    store.put(&tokens_of(&portal)).await.unwrap();
    store.put(&tokens_of(&other)).await.unwrap();

    // As the ingest function builds it: stored tokens cached per container.
    let ingress = family_ingress(queue.clone(), config.clone(), Some(store.clone()));
    let rest: Arc<dyn Bitrix24Rest> = Arc::new(
        Bitrix24Client::new(reqwest::Client::new(), &config, store.clone()).with_rate_limit(
            RateLimit {
                per_second: 1000.0,
                burst: 1000.0,
            },
        ),
    );
    let ports = ConsumerPorts {
        queue: queue.clone(),
        dedup: store.clone(),
        snapshots: store.clone(),
        tokens: store.clone(),
        attempts: store.clone(),
        destinations: store.clone(),
    };
    let consumer = Consumer::new(
        ports,
        config.clone(),
        Some(rest.clone()),
        reqwest::Client::new(),
    );

    let entity_bytes = deal(FIRST_DEAL_ID, "NEW", 100).to_string().len();
    assert!(
        (3_000..=4_200).contains(&entity_bytes),
        "the typical entity is 3-4 KB, this one {entity_bytes} B"
    );
    let base_ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    // First sight of each entity, then the typical event: an update of a known entity.
    for (round, (event, stage)) in [("ONCRMDEALADD", "NEW"), ("ONCRMDEALUPDATE", "WON")]
        .into_iter()
        .enumerate()
    {
        let phase = if round == 0 { "first" } else { "update" };
        log.set_phase(&format!("ingest_{phase}"));
        logs.set_phase(&format!("ingest_{phase}"));
        for id in FIRST_DEAL_ID..FIRST_DEAL_ID + ENTITIES {
            portal.set_entity("deal", &id.to_string(), deal(id, stage, 100 * id as u32));
            let body = b24_post(&portal, event, id, base_ts + round as i64);
            assert_eq!(
                post_as_bitrix24(&ingress, Family::Deal, &body).await.status,
                202
            );
        }
        log.set_phase(&format!("consumer_{phase}"));
        logs.set_phase(&format!("consumer_{phase}"));
        assert_eq!(
            drain(&plain_sqs, &queues.queue_url, &consumer, ENTITIES).await,
            ENTITIES
        );
    }
    assert_eq!(
        destination.received().len(),
        2 * ENTITIES,
        "every event arrived"
    );

    // One scheduled poller run over the two installed portals, with nothing to drain.
    log.set_phase("poller");
    logs.set_phase("poller");
    let poller = OfflinePoller::new(rest.clone(), queue.clone());
    let polled = poller
        .poll_all(store.as_ref(), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(polled.len(), 2, "both portals polled");
    for (member, outcome) in &polled {
        assert!(outcome.is_ok(), "portal {member}: {outcome:?}");
    }

    let calls = log.calls();
    assert!(
        calls.iter().all(|c| c.operation != "Scan"),
        "no Scan, anywhere"
    );
    let per_event = |phase: &str, service: &str, ops: &[&str]| {
        count(&log.in_phase(phase), service, ops) as f64 / ENTITIES as f64
    };
    let sends = per_event("ingest_update", "sqs", &["SendMessage"]);
    let ingest_reads = per_event("ingest_update", "dynamodb", TABLE_READS);
    let ingest_writes = per_event("ingest_update", "dynamodb", TABLE_WRITES);
    let writes = per_event("consumer_update", "dynamodb", TABLE_WRITES);
    let reads = per_event("consumer_update", "dynamodb", TABLE_READS);
    let consumer_sqs = per_event(
        "consumer_update",
        "sqs",
        &["SendMessage", "ChangeMessageVisibility"],
    );
    let summary = format!(
        "per update event: ingest {sends} SendMessage, {ingest_reads} reads, {ingest_writes} writes; \
         consumer {writes} writes, {reads} reads, {consumer_sqs} SQS calls"
    );
    println!("{summary}");

    let log_sizes: LogSizes = [
        "ingest_first",
        "consumer_first",
        "ingest_update",
        "consumer_update",
        "poller",
    ]
    .iter()
    .map(|phase| (phase.to_string(), logs.of(phase)))
    .collect();
    if let Ok(path) = std::env::var("RELAY_COST_OUT") {
        let out = json!({
            "entities": ENTITIES,
            "entity_bytes": entity_bytes,
            "portals_polled": polled.len(),
            "log_lines_and_bytes": log_sizes,
            "calls": calls,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap())
            .unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }

    assert_eq!(sends, INGEST_SENDS, "{summary}");
    assert!(ingest_reads <= INGEST_TABLE_READS, "{summary}");
    assert_eq!(ingest_writes, 0.0, "{summary}");
    assert!(writes <= CONSUMER_TABLE_WRITES, "{summary}");
    assert!(reads <= CONSUMER_TABLE_READS, "{summary}");
    assert_eq!(consumer_sqs, 0.0, "{summary}");

    // One compact JSON line per event per function on the happy path.
    for phase in ["ingest_update", "consumer_update"] {
        let (lines, _, longest) = log_sizes[phase];
        assert!(
            lines <= ENTITIES,
            "{phase}: {lines} log lines for {ENTITIES} events"
        );
        assert!(
            longest <= LOG_LINE_BYTES,
            "{phase}: a log line of {longest} B"
        );
    }

    // The snapshot item as written: one write unit for a typical entity.
    let snapshot_puts: Vec<&Call> = calls
        .iter()
        .filter(|c| c.operation == "PutItem" && c.pk().is_some_and(|pk| pk.starts_with("SNAP#")))
        .collect();
    assert_eq!(snapshot_puts.len(), 2 * ENTITIES);
    // Here an entity has seen two events; in steady state its snapshot keeps the last
    // DELIVERED_KEPT, each a 16-byte id, a tag and a u32 time in the packed snapshot.
    let unseen_deliveries = (relay_core::ports::DELIVERED_KEPT - 2) * (16 + 1 + 4);
    for put in snapshot_puts {
        let bytes = item_bytes(&put.request["Item"]) + unseen_deliveries;
        assert!(
            bytes <= SNAPSHOT_ITEM_BYTES,
            "a snapshot item of {bytes} B (with a full delivery list) is more than the budget \
             of {SNAPSHOT_ITEM_BYTES} B"
        );
    }

    // The poller: one Query for the portals, then per portal only its token reads.
    let poller_calls = log.in_phase("poller");
    assert_eq!(count(&poller_calls, "dynamodb", &["Query"]), 1);
    assert_eq!(count(&poller_calls, "dynamodb", TABLE_WRITES), 0);
    assert!(
        count(&poller_calls, "dynamodb", &["GetItem"])
            <= POLLER_TOKEN_READS_PER_PORTAL * polled.len()
    );
}

/// An item's size as DynamoDB bills it: attribute names plus values (strings and binaries by
/// length, numbers ~1 byte per two digits + 1).
fn item_bytes(item: &Value) -> usize {
    fn value_bytes(v: &Value) -> usize {
        let Some((kind, inner)) = v.as_object().and_then(|o| o.iter().next()) else {
            return 0;
        };
        match kind.as_str() {
            "S" => inner.as_str().map_or(0, str::len),
            // Base64 on the wire; billed by the raw bytes.
            "B" => inner.as_str().map_or(0, |s| s.len() * 3 / 4),
            "N" => inner.as_str().map_or(0, |s| s.len().div_ceil(2) + 1),
            "BOOL" | "NULL" => 1,
            "L" => {
                3 + inner
                    .as_array()
                    .map_or(0, |l| l.iter().map(|e| 1 + value_bytes(e)).sum())
            }
            "M" => {
                3 + inner.as_object().map_or(0, |m| {
                    m.iter().map(|(k, e)| 1 + k.len() + value_bytes(e)).sum()
                })
            }
            _ => inner.to_string().len(),
        }
    }
    item.as_object().map_or(0, |m| {
        m.iter().map(|(name, v)| name.len() + value_bytes(v)).sum()
    })
}
