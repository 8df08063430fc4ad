//! Every SalesMan webhook event (the events list of `developer/events.php` and the
//! list in `developer/webhooks.php` of `vladandreevg/salesmancrm`), sent as SalesMan's sender
//! builds it (a form from `http_build_query`, and the same document as JSON) through ingress
//! and the consumer against the fake v3 API: each envelope's family, entity kind, entity and
//! snapshot key, as the destination received them.

use async_trait::async_trait;
use integration_tests::consumer_cases::{message, Auth, World, REMAINING, T0_MS};
use integration_tests::fake_bitrix24::PortalLimits;
use integration_tests::memory::MemoryStore;
use relay_core::catalogue::EntityType;
use relay_core::config::RelayConfig;
use relay_core::enrich::salesman::{InfoOutcome, SalesmanClient};
use relay_core::enrich::Enricher;
use relay_core::error::StoreError;
use relay_core::event::{Family, RelayEvent, Source};
use relay_core::ingest::{IngestRequest, Ingress};
use relay_core::ports::{Queue, QueueMessage, SnapshotKey};
use relay_core::secret::Secret;
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

const SECRET: &str = "sm-webhook-secret-1";
const IDENTITY: &str = "1";

/// The queue ingress writes to: keeps the envelopes for the consumer step.
#[derive(Default)]
struct Captured(Mutex<Vec<RelayEvent>>);

impl Captured {
    fn take(&self) -> Vec<RelayEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[async_trait]
impl Queue for Captured {
    async fn send(&self, event: &RelayEvent) -> Result<(), StoreError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
    async fn retry_after(&self, _: &str, _: Duration) -> Result<(), StoreError> {
        Ok(())
    }
    async fn park_dead_letter(&self, _: &QueueMessage, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// `http_build_query`: nested arrays as `key[index]`, brackets percent-encoded.
fn php_form(doc: &Map<String, Value>) -> String {
    fn add(out: &mut form_urlencoded::Serializer<String>, key: &str, value: &Value) {
        match value {
            Value::Object(map) => map
                .iter()
                .for_each(|(k, v)| add(out, &format!("{key}[{k}]"), v)),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .for_each(|(i, v)| add(out, &format!("{key}[{i}]"), v)),
            Value::String(s) => {
                out.append_pair(key, s);
            }
            Value::Null => {}
            other => {
                out.append_pair(key, &other.to_string());
            }
        }
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in doc {
        add(&mut out, k, v);
    }
    out.finish()
}

/// One envelope the relay must make of a delivery.
struct Expect {
    event: &'static str,
    family: Family,
    kind: &'static str,
    id: &'static str,
    /// The record's `title` in the forwarded entity; `None`: entity null.
    title: Option<&'static str>,
}

fn ex(
    event: &'static str,
    family: Family,
    kind: &'static str,
    id: &'static str,
    title: Option<&'static str>,
) -> Expect {
    Expect {
        event,
        family,
        kind,
        id,
        title,
    }
}

/// The fake's records: one per kind, under its v3 method; `title` names the record.
fn seed_records(world: &World) {
    let sm = &world.salesman;
    sm.set_record(
        "client",
        "101",
        json!({"clid": 101, "title": "client 101", "recv": "7707;770701001",
               "bankinfo": {"castInn": "7707083893", "castBankBik": "044525225"}}),
    );
    sm.set_record("client", "103", json!({"clid": 103, "title": "client 103"}));
    sm.set_record(
        "person",
        "201",
        json!({"pid": 201, "person": "Ann", "title": "person 201"}),
    );
    sm.set_record("deal", "401", json!({"did": 401, "title": "deal 401"}));
    sm.set_record("deal", "402", json!({"did": 402, "title": "deal 402"}));
    sm.set_record(
        "invoice",
        "501",
        json!({"crid": 501, "title": "invoice 501"}),
    );
    sm.set_record("task", "301", json!({"tid": 301, "title": "task 301"}));
    sm.set_record(
        "history",
        "601",
        json!({"cid": 601, "title": "history 601"}),
    );
    sm.set_record("lead", "701", json!({"id": 701, "title": "lead 701"}));
    sm.set_record(
        "entry",
        "801",
        json!({"ide": 801, "title": "entry 801", "products": []}),
    );
    sm.set_record(
        "document",
        "901",
        json!({"deid": 901, "title": "contract 901"}),
    );
    sm.set_record("akt", "911", json!({"deid": 911, "title": "akt 911"}));
}

/// Every event of `developer/events.php` and `developer/webhooks.php`, with the fields the `event::fire`
/// calls of SalesMan's source pass (and `identity`/`iduser1`/`ses` its sender adds).
fn cases() -> Vec<(&'static str, Value, Vec<Expect>)> {
    use Family::*;
    let client = |e| ex(e, Company, "client", "101", Some("client 101"));
    let person = |e| ex(e, Contact, "person", "201", Some("person 201"));
    let deal = |e| ex(e, Deal, "deal", "401", Some("deal 401"));
    let invoice = |e| ex(e, Invoice, "invoice", "501", Some("invoice 501"));
    let task = |e| ex(e, Activity, "task", "301", Some("task 301"));
    let history = |e| ex(e, Activity, "history", "601", Some("history 601"));
    let lead = |e| ex(e, Lead, "lead", "701", Some("lead 701"));
    let entry = |e| ex(e, Lead, "entry", "801", Some("entry 801"));
    let contract = |e| ex(e, Document, "contract", "901", Some("contract 901"));
    let akt = |e| ex(e, Document, "akt", "911", Some("akt 911"));
    let express = json!({"clid": 101, "did": 0, "autor": 3, "user": 3, "pid": 201, "tid": 301});
    let doc = json!({"id": 901, "number": "Д-1", "datum": "2026-11-29", "did": 401,
                     "payer": 101, "clid": 101, "pid": 201, "autor": 3});
    let akt_doc = json!({"id": 911, "number": "А-1", "datum": "2026-11-29", "did": 401,
                         "payer": 101, "clid": 101, "pid": 201, "autor": 3});
    let bill = json!({"did": 401, "autor": 3, "user": 3, "userUID": "", "id": 501,
                      "summa": "10340.00", "invoice": "55"});
    let paid = json!({"id": 501, "did": 401, "autor": 3, "userUID": "", "invoice": "55",
                      "summa": "10340.00", "summaNew": "0"});
    vec![
        (
            "client.import",
            json!({"clids": [101, 103], "pids": [201], "autor": 3, "user": 3}),
            vec![
                client("client.import"),
                ex(
                    "client.import",
                    Company,
                    "client",
                    "103",
                    Some("client 103"),
                ),
                person("person.import"),
            ],
        ),
        (
            "client.expressadd",
            json!({"pid": 201, "clid": 101, "autor": 3, "user": 3}),
            vec![client("client.expressadd")],
        ),
        // events.php turns client.expressadd into client.add, person.add and task.add,
        // each with all of the express form's ids.
        ("client.add", express.clone(), vec![client("client.add")]),
        ("person.add", express.clone(), vec![person("person.add")]),
        ("task.add", express, vec![task("task.add")]),
        (
            "client.edit",
            json!({"clid": 101, "autor": 3, "user": 3, "newparam": {"title": "client 101"}}),
            vec![client("client.edit")],
        ),
        (
            "client.delete",
            json!({"clid": 102, "autor": 3, "user": 3}),
            vec![ex("client.delete", Company, "client", "102", None)],
        ),
        (
            "client.change.recv",
            json!({"clid": 101, "autor": 3, "user": 3}),
            vec![ex(
                "client.change.recv",
                Requisite,
                "client",
                "101",
                Some("client 101"),
            )],
        ),
        (
            "client.change.user",
            json!({"clid": 101, "autor": 3, "olduser": 2, "newuser": 4, "comment": "x"}),
            vec![client("client.change.user")],
        ),
        // content/core/core.client.php, bulk: rows from index 1.
        (
            "client.change.user",
            json!({"info": {"1": {"clid": 101, "title": "A", "olduser": 2},
                            "2": {"clid": 103, "title": "B", "olduser": 2}},
                   "autor": 3, "newuser": 4, "comment": "x"}),
            vec![
                client("client.change.user"),
                ex(
                    "client.change.user",
                    Company,
                    "client",
                    "103",
                    Some("client 103"),
                ),
            ],
        ),
        (
            "person.edit",
            json!({"pid": 201, "autor": 3, "user": 3}),
            vec![person("person.edit")],
        ),
        (
            "person.delete",
            json!({"pid": 202, "autor": 3, "user": 3}),
            vec![ex("person.delete", Contact, "person", "202", None)],
        ),
        (
            "person.change.user",
            json!({"pid": 201, "autor": 3, "user": 4, "olduser": 2, "newuser": 4}),
            vec![person("person.change.user")],
        ),
        (
            "deal.import",
            json!({"clids": [101], "dids": [401, 402], "autor": 3, "user": 3}),
            vec![
                client("client.import"),
                deal("deal.import"),
                ex("deal.import", Deal, "deal", "402", Some("deal 402")),
            ],
        ),
        (
            "deal.add",
            json!({"did": 401, "autor": 3, "userUID": ""}),
            vec![deal("deal.add")],
        ),
        (
            "deal.edit",
            json!({"did": 401, "autor": 3, "newparam": {"title": "deal 401"}}),
            vec![deal("deal.edit")],
        ),
        (
            "deal.delete",
            json!({"did": 403, "autor": 3}),
            vec![ex("deal.delete", Deal, "deal", "403", None)],
        ),
        (
            "deal.change.user",
            json!({"did": 401, "autor": 3, "olduser": 2, "newuser": 4, "comment": "x"}),
            vec![deal("deal.change.user")],
        ),
        (
            "deal.change.user",
            json!({"info": [{"did": 401, "title": "D", "olduser": 2}], "autor": 3,
                   "newuser": 4, "comment": "x"}),
            vec![deal("deal.change.user")],
        ),
        (
            "deal.change.step",
            json!({"did": 401, "autor": 3, "stepOld": 20, "stepNew": 60, "comment": "x"}),
            vec![deal("deal.change.step")],
        ),
        (
            "deal.close",
            json!({"did": 401, "autor": 3, "summa": "10340.00", "status": "Победа"}),
            vec![deal("deal.close")],
        ),
        ("invoice.add", bill.clone(), vec![invoice("invoice.add")]),
        ("invoice.edit", bill, vec![invoice("invoice.edit")]),
        ("invoice.doit", paid.clone(), vec![invoice("invoice.doit")]),
        (
            "invoice.expressadd",
            paid,
            vec![invoice("invoice.expressadd")],
        ),
        (
            "task.edit",
            json!({"id": 301, "autor": 3}),
            vec![task("task.edit")],
        ),
        (
            "task.doit",
            json!({"id": 301, "autor": 3}),
            vec![task("task.doit")],
        ),
        (
            "history.add",
            json!({"id": 601, "autor": 3}),
            vec![history("history.add")],
        ),
        (
            "history.edit",
            json!({"id": 601, "autor": 3}),
            vec![history("history.edit")],
        ),
        (
            "history.doit",
            json!({"id": 601, "autor": 3}),
            vec![history("history.doit")],
        ),
        (
            "lead.add",
            json!({"id": 701, "clid": 0, "pid": 0, "did": 0, "iduser": 2}),
            vec![lead("lead.add")],
        ),
        (
            "lead.setuser",
            json!({"id": 701, "iduser": 4, "coordinator": 2}),
            vec![lead("lead.setuser")],
        ),
        // inc/class/Leads.php: lead.do with what it created; no other event fires.
        (
            "lead.do",
            json!({"id": 701, "autor": 3, "clid": 101, "pid": 0, "did": 402, "coordinator": 2}),
            vec![
                lead("lead.do"),
                client("client.add"),
                ex("deal.add", Deal, "deal", "402", Some("deal 402")),
            ],
        ),
        (
            "entry.add",
            json!({"id": 801, "clid": 101, "pid": 201, "did": 0, "iduser": 3, "autor": 3}),
            vec![entry("entry.add")],
        ),
        (
            "entry.status",
            json!({"id": 801, "status": 2, "autor": 3}),
            vec![entry("entry.status")],
        ),
        ("contract.add", doc.clone(), vec![contract("contract.add")]),
        ("contract.edit", doc, vec![contract("contract.edit")]),
        // The events list documents `id`; inc/class/Document.php sends `deid`.
        (
            "contract.delete",
            json!({"id": 902, "did": 401, "autor": 3}),
            vec![ex("contract.delete", Document, "contract", "902", None)],
        ),
        (
            "contract.delete",
            json!({"deid": 903, "did": 401}),
            vec![ex("contract.delete", Document, "contract", "903", None)],
        ),
        ("akt.add", akt_doc.clone(), vec![akt("akt.add")]),
        ("akt.edit", akt_doc, vec![akt("akt.edit")]),
        (
            "akt.delete",
            json!({"id": 912, "did": 401, "autor": 3}),
            vec![ex("akt.delete", Document, "akt", "912", None)],
        ),
    ]
}

fn ingress(queue: Arc<Captured>) -> Ingress {
    let config = RelayConfig {
        salesman_secret: Some(Secret::new(SECRET)),
        ..RelayConfig::default()
    };
    Ingress::new(queue, config)
}

fn document(event: &str, fields: &Value) -> Map<String, Value> {
    let mut doc = fields.as_object().cloned().unwrap_or_default();
    doc.insert("event".into(), json!(event));
    doc.insert("identity".into(), json!(IDENTITY));
    doc.insert("iduser1".into(), json!(3));
    // events.php `outSender` adds the session cookie; ingress must drop it.
    doc.insert("ses".into(), json!("session-cookie-1"));
    doc
}

#[tokio::test]
async fn every_seed_event_as_form_and_json_reaches_the_destination_enriched() {
    let store = MemoryStore::new();
    let world = World::new(
        store.ports(),
        store.clone(),
        Auth::Webhook,
        PortalLimits::default(),
    )
    .await;
    seed_records(&world);
    let queue = Arc::new(Captured::default());
    let ingress = ingress(queue.clone());
    let consumer = world.consumer();
    let mut second = 1_766_047_200u64;
    for (event, fields, expected) in cases() {
        for json_body in [false, true] {
            // Each delivery stamped beyond the twin window of the last: the fake answers the
            // same record every time, and an unchanged record stamped within the window of
            // its last delivery is the same change seen twice, not forwarded.
            second += relay_core::consume::TWIN_WINDOW_S as u64 + 1;
            let doc = document(event, &fields);
            let (body, content_type) = if json_body {
                (Value::Object(doc).to_string(), "application/json")
            } else {
                (php_form(&doc), "application/x-www-form-urlencoded")
            };
            let family = relay_core::routing::family_of(Source::Salesman, event).expect("routed");
            let query = format!("token={SECRET}");
            let reply = ingress
                .handle(
                    IngestRequest {
                        family,
                        content_type: Some(content_type),
                        query: Some(&query),
                        relay_token_header: None,
                        body: body.as_bytes(),
                    },
                    UNIX_EPOCH + Duration::from_secs(second),
                )
                .await;
            let label = format!("{event} ({content_type}) {fields}");
            assert_eq!(reply.status, 202, "{label}: {}", reply.body);
            // Several envelopes of one delivery are queued concurrently: put them in the
            // order the reply lists them (the order fan-out made them).
            let mut envelopes = queue.take();
            let listed: Vec<String> = match reply.body.get("ids") {
                Some(ids) => serde_json::from_value(ids.clone()).expect("ids"),
                None => vec![reply.body["id"].as_str().unwrap_or_default().to_string()],
            };
            envelopes.sort_by_key(|e| listed.iter().position(|id| *id == e.id));
            assert_eq!(envelopes.len(), listed.len(), "{label}");
            let got: Vec<(String, Family, Option<&str>, Option<String>)> = envelopes
                .iter()
                .map(|e| {
                    (
                        e.event.clone(),
                        e.family,
                        e.kind().map(EntityType::as_str),
                        e.entity_id.clone(),
                    )
                })
                .collect();
            let want: Vec<(String, Family, Option<&str>, Option<String>)> = expected
                .iter()
                .map(|x| (x.event.into(), x.family, Some(x.kind), Some(x.id.into())))
                .collect();
            assert_eq!(got, want, "{label}");

            let before = world.destination.delivered().len();
            let messages: Vec<QueueMessage> = envelopes.iter().map(|e| message(e, 1)).collect();
            let report = consumer
                .process_batch(&messages, REMAINING, T0_MS + second as i64)
                .await;
            assert!(report.failed.is_empty(), "{label}: {report:?}");
            let bodies: Vec<Value> = world.destination.delivered_bodies()[before..].to_vec();
            assert_eq!(bodies.len(), expected.len(), "{label}");
            for ((body, want), envelope) in bodies.iter().zip(&expected).zip(&envelopes) {
                assert_eq!(body["event"], want.event, "{label}");
                assert_eq!(body["family"], want.family.as_str(), "{label}");
                assert_eq!(body["entity_id"], want.id, "{label}");
                assert_eq!(body["data"].get("ses"), None, "{label}: session cookie");
                let key = SnapshotKey {
                    source: Source::Salesman,
                    portal: IDENTITY.into(),
                    family: want.family,
                    entity_type: EntityType::of_salesman_event(want.event).expect("a kind"),
                    entity_id: want.id.into(),
                };
                assert_eq!(body["entity_type"], want.kind, "{label}");
                let snapshot = world.ports.snapshots.load(&key).await.expect("snapshots");
                match want.title {
                    Some(title) => {
                        assert_eq!(body["entity"]["title"], title, "{label}");
                        let snapshot = snapshot.expect("a snapshot of what was forwarded");
                        assert_eq!(snapshot.entity, body["entity"], "{label}");
                        assert_eq!(snapshot.version, envelope.ts, "{label}");
                    }
                    None => assert!(body["entity"].is_null(), "{label}: {body}"),
                }
                if want.event != event {
                    // Derived from the delivery: lead.do's adds, an import's other kind.
                    assert_eq!(body["data"]["derived_from"], event, "{label}");
                }
            }
            if event == "client.change.recv" {
                // v3 client/info drops `recv` always and `bankinfo` unless asked.
                let entity = &bodies[0]["entity"];
                assert_eq!(entity["bankinfo"]["castInn"], "7707083893", "{label}");
                assert_eq!(entity.get("recv"), None, "{label}");
            }
            if event == "client.edit" {
                assert_eq!(bodies[0]["entity"].get("bankinfo"), None, "{label}");
            }
        }
    }
    // Each kind was read with the parameter its v3 `info` action reads.
    let calls = world.salesman.state().calls.clone();
    for (method, key) in [
        ("client", "clid"),
        ("person", "pid"),
        ("deal", "did"),
        ("lead", "id"),
        ("entry", "id"),
        ("invoice", "id"),
        ("task", "id"),
        ("history", "cid"),
        ("document", "id"),
        ("akt", "id"),
    ] {
        let call = calls
            .iter()
            .find(|(m, _, _)| m == method)
            .unwrap_or_else(|| panic!("{method}/info was never called"));
        assert_eq!(call.1, "info");
        assert!(call.2.get(key).is_some(), "{method}: {:?}", call.2);
    }
}

fn envelope(event: &str, family: Family, id: &str, ts: i64) -> RelayEvent {
    let data = json!({"id": id, "ts": ts});
    RelayEvent {
        v: 1,
        id: relay_core::event::envelope_id(Source::Salesman, IDENTITY, event, &data, ts),
        source: Source::Salesman,
        portal: IDENTITY.into(),
        domain: None,
        family,
        event: event.into(),
        entity_id: Some(id.into()),
        entity_type: EntityType::of_salesman_event(event),
        ts,
        received_at: "2026-11-29T21:00:00Z".into(),
        data,
    }
}

fn enricher(world: &World) -> Enricher {
    Enricher::new(
        None,
        SalesmanClient::from_config(reqwest::Client::new(), &world.config),
    )
}

async fn world() -> World {
    let store = MemoryStore::new();
    World::new(
        store.ports(),
        store.clone(),
        Auth::Webhook,
        PortalLimits::default(),
    )
    .await
}

#[tokio::test]
async fn a_record_the_api_user_cannot_see_is_no_access_not_gone() {
    let world = world().await;
    world
        .salesman
        .set_record("deal", "401", json!({"did": 401, "title": "deal 401"}));
    world.salesman.hide("deal", "401");
    let edit = envelope("deal.edit", Family::Deal, "401", 100);
    assert_eq!(
        enricher(&world).salesman_outcome(&edit).await.unwrap(),
        Some(InfoOutcome::NoAccess)
    );
    let report = world
        .consumer()
        .process_batch(&[message(&edit, 1)], REMAINING, T0_MS)
        .await;
    assert!(report.failed.is_empty());
    let body = &world.destination.delivered_bodies()[0];
    assert!(body["entity"].is_null(), "{body}");
    assert_eq!(body["enrichment"], "no access", "{body}");
    assert_eq!(body["deleted"], false, "{body}");
    // A delete is gone without asking.
    let calls = world.salesman.state().requests;
    let delete = envelope("deal.delete", Family::Deal, "401", 101);
    assert_eq!(
        enricher(&world).salesman_outcome(&delete).await.unwrap(),
        Some(InfoOutcome::Gone)
    );
    assert_eq!(world.salesman.state().requests, calls);
}

#[tokio::test]
async fn a_deleted_person_answered_with_empty_fields_keeps_its_snapshot() {
    let world = world().await;
    world.salesman.set_record(
        "person",
        "201",
        json!({"pid": 201, "person": "Ann", "title": "person 201"}),
    );
    let consumer = world.consumer();
    let first = envelope("person.edit", Family::Contact, "201", 100);
    consumer
        .process_batch(&[message(&first, 1)], REMAINING, T0_MS)
        .await;
    // person.php answers 200 with every field null for a person that is gone.
    world.salesman.remove_record("person", "201");
    let second = envelope("person.edit", Family::Contact, "201", 101);
    assert_eq!(
        enricher(&world).salesman_outcome(&second).await.unwrap(),
        Some(InfoOutcome::Gone)
    );
    let report = consumer
        .process_batch(&[message(&second, 1)], REMAINING, T0_MS + 1000)
        .await;
    assert!(report.failed.is_empty());
    let bodies = world.destination.delivered_bodies();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["entity"]["person"], "Ann");
    // Gone is forwarded as a Bitrix24 delete is: no entity, what was last seen as
    // `previous`, `deleted: true`; the empty answer never becomes a snapshot.
    assert!(bodies[1]["entity"].is_null(), "{}", bodies[1]);
    assert_eq!(bodies[1]["deleted"], true, "{}", bodies[1]);
    assert_eq!(bodies[1]["previous"]["person"], "Ann", "{}", bodies[1]);
    assert!(bodies[1]["changes"].as_array().is_some_and(Vec::is_empty));
    let key = SnapshotKey {
        source: Source::Salesman,
        portal: IDENTITY.into(),
        family: Family::Contact,
        entity_type: EntityType::Person,
        entity_id: "201".into(),
    };
    assert_eq!(
        world.ports.snapshots.load(&key).await.unwrap(),
        None,
        "the snapshot of a gone record is removed, as for a delete"
    );
}

#[tokio::test]
async fn an_unknown_v3_method_is_retried_never_forwarded_null() {
    let world = world().await;
    // An installation without developer/v3/methods/akt.php: index.php answers nothing.
    world.salesman.state().missing_methods.insert("akt".into());
    let event = envelope("akt.edit", Family::Document, "911", 100);
    let outcome = enricher(&world).salesman_outcome(&event).await;
    assert!(
        matches!(&outcome, Err(relay_core::error::EnrichError::Transient { reason, .. }) if reason.contains("unknown method")),
        "{outcome:?}"
    );
    let report = world
        .consumer()
        .process_batch(&[message(&event, 1)], REMAINING, T0_MS)
        .await;
    assert_eq!(report.failed.len(), 1, "retried");
    assert!(world.destination.received().is_empty(), "nothing forwarded");
}
