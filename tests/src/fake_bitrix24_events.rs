//! The app lifecycle's methods on the loopback portal of `fake_bitrix24`: `app.info`,
//! `event.bind/unbind/get` (with the real "Handler already binded" refusal) and the
//! offline-event log with `process_id` claims and latest-state coalescing, registered into
//! `FakeBitrix24`'s method table, so the same URL forms, tokens and leaky bucket apply.
//!
//! Offline semantics, after offline-events.md and event.offline.*.md:
//! - a change of an entity already waiting in the log (same `MESSAGE_ID`, not claimed by a
//!   process) updates that record's `TIMESTAMP_X` instead of adding one (one record per entity);
//! - `event.offline.get` with `clear=0` claims up to `limit` records (default 50) under a
//!   `process_id` (the caller's, or a new one) and hides them from other callers; with the
//!   caller's `process_id` it first re-selects that process's uncleared records;
//!   `error=1` returns the records marked erroneous instead of fresh ones;
//! - `event.offline.clear` deletes records of the process (by `id`, `message_id` or all);
//! - `event.offline.error` marks records of the process erroneous and releases the claim.

use crate::fake_bitrix24::{param, FakeBitrix24, MethodReply, PortalLimits, PortalState};
use relay_core::event::Family;
use relay_core::ingest::{IngestReply, IngestRequest, Ingress};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// One registered handler (`event.get` row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundRow {
    pub event: String,
    pub handler: String,
    pub auth_type: String,
    pub offline: bool,
}

/// One record of the offline log.
#[derive(Clone, Debug, PartialEq)]
pub struct OfflineRecord {
    pub id: u64,
    /// Unix seconds.
    pub timestamp_x: i64,
    pub event_name: String,
    pub event_data: Value,
    pub message_id: String,
    pub process_id: Option<String>,
    pub error: bool,
}

#[derive(Default)]
struct EventsState {
    handlers: Vec<BoundRow>,
    offline: Vec<OfflineRecord>,
    next_record_id: u64,
    next_process: u64,
}

/// A `FakeBitrix24` with the lifecycle's methods; derefs to the portal for everything else.
pub struct FakePortal {
    pub fake: FakeBitrix24,
    pub member_id: String,
    pub domain: String,
    pub client_id: String,
    /// `http://127.0.0.1:<port>/rest/`: the portal's `client_endpoint`.
    pub client_endpoint: String,
    events: Arc<Mutex<EventsState>>,
}

impl std::ops::Deref for FakePortal {
    type Target = FakeBitrix24;
    fn deref(&self) -> &FakeBitrix24 {
        &self.fake
    }
}

fn lock(events: &Mutex<EventsState>) -> MutexGuard<'_, EventsState> {
    events.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakePortal {
    /// A portal with a bucket wide enough that only the client's own limiter paces calls.
    pub async fn start(member_id: &str) -> FakePortal {
        FakePortal::start_with_limits(
            member_id,
            PortalLimits {
                per_second: 1000.0,
                burst: 1000.0,
            },
        )
        .await
    }

    pub async fn start_with_limits(member_id: &str, limits: PortalLimits) -> FakePortal {
        let fake = FakeBitrix24::start(member_id, limits).await;
        let (domain, client_id) = {
            let s = fake.state();
            (s.domain.clone(), s.client_id.clone())
        };
        let portal = FakePortal {
            client_endpoint: fake.client_endpoint(),
            fake,
            member_id: member_id.to_string(),
            domain,
            client_id,
            events: Arc::new(Mutex::new(EventsState {
                next_record_id: 1,
                ..EventsState::default()
            })),
        };
        portal.register_methods();
        portal
    }

    /// The access token the portal accepts from now on (what it hands out at install).
    pub fn issue_access_token(&self, token: &str) {
        self.fake.state().access_token = token.to_string();
    }

    /// How many times `method` was called.
    pub fn calls(&self, method: &str) -> usize {
        self.fake
            .state()
            .calls
            .iter()
            .filter(|m| *m == method)
            .count()
    }

    pub fn offline_records(&self) -> Vec<OfflineRecord> {
        lock(&self.events).offline.clone()
    }

    pub fn bound(&self) -> Vec<BoundRow> {
        lock(&self.events).handlers.clone()
    }

    /// One change of an entity: written to the offline log (coalesced per entity) as Bitrix24
    /// does when an offline handler is bound, and returned as the online POST body Bitrix24
    /// sends the same second (`ts` = change time).
    pub fn record_change(
        &self,
        event: &str,
        entity_id: &str,
        at_secs: i64,
        application_token: &str,
    ) -> Value {
        let event = event.to_ascii_uppercase();
        let data_key = if event.starts_with("ONTASK") {
            "FIELDS_AFTER"
        } else {
            "FIELDS"
        };
        // The log keeps the typed value; the online form body has every scalar as a string.
        let typed_id = entity_id
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| json!(entity_id));
        let logged = json!({ data_key: {"ID": typed_id} });
        let message_id = message_id_of(&event, &logged);
        {
            let mut state = lock(&self.events);
            let waiting = state
                .offline
                .iter_mut()
                .find(|r| r.message_id == message_id && r.process_id.is_none());
            match waiting {
                Some(record) => {
                    record.timestamp_x = at_secs;
                    record.error = false;
                }
                None => {
                    let id = state.next_record_id;
                    state.next_record_id += 1;
                    state.offline.push(OfflineRecord {
                        id,
                        timestamp_x: at_secs,
                        event_name: event.clone(),
                        event_data: logged,
                        message_id,
                        process_id: None,
                        error: false,
                    });
                }
            }
        }
        json!({
            "event": event,
            "event_handler_id": "17",
            "data": { data_key: {"ID": entity_id} },
            "ts": at_secs.to_string(),
            "auth": {
                "domain": self.domain,
                "client_endpoint": self.client_endpoint,
                "server_endpoint": "https://oauth.bitrix.info/rest/",
                "member_id": self.member_id,
                "application_token": application_token,
            }
        })
    }

    /// The ONAPPINSTALL body Bitrix24 posts to the app's install handler.
    pub fn install_body(
        &self,
        access_token: &str,
        refresh_token: &str,
        application_token: &str,
        expires: i64,
    ) -> Value {
        json!({
            "event": "ONAPPINSTALL",
            "data": {"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "ru"},
            "ts": expires.saturating_sub(3600).to_string(),
            "auth": {
                "access_token": access_token,
                "expires": expires.to_string(),
                "expires_in": "3600",
                "scope": "crm,task,user",
                "domain": self.domain,
                "server_endpoint": "https://oauth.bitrix.info/rest/",
                "status": "L",
                "client_endpoint": self.client_endpoint,
                "member_id": self.member_id,
                "user_id": "1",
                "refresh_token": refresh_token,
                "application_token": application_token,
            }
        })
    }

    /// The app is updated to a new version: Bitrix24 removes every handler the app bound
    /// (b24restdocs api-reference/events/event-bind.md: "When deleting and updating the
    /// application, its actions will be removed"), issues `access_token`, and returns the
    /// ONAPPUPDATE body it posts to the app (same `auth` block as the install).
    pub fn update_app(
        &self,
        access_token: &str,
        refresh_token: &str,
        application_token: &str,
        expires: i64,
    ) -> Value {
        lock(&self.events).handlers.clear();
        self.issue_access_token(access_token);
        let mut body = self.install_body(access_token, refresh_token, application_token, expires);
        body["event"] = json!("ONAPPUPDATE");
        body["data"] = json!({"VERSION": "2", "LANGUAGE_ID": "ru"});
        body
    }

    /// Whether `feature.get {CODE: rest_offline_extended}` answers `Y` (the default) or `N`.
    pub fn set_extended_offline_events(&self, available: bool) {
        self.fake.state().extra.insert(
            "feature:rest_offline_extended".into(),
            json!(if available { "Y" } else { "N" }),
        );
    }

    fn register_methods(&self) {
        // feature-get.md: `{result: {value: "Y"}}`.
        self.fake
            .register("feature.get", |s: &mut PortalState, p: &Value| {
                let code = param(p, "CODE").unwrap_or_default();
                let value = s
                    .extra
                    .get(&format!("feature:{code}"))
                    .cloned()
                    .unwrap_or_else(|| json!("Y"));
                MethodReply::Result(json!({ "value": value }))
            });
        let client_endpoint = self.client_endpoint.clone();
        self.fake
            .register("app.info", move |s: &mut PortalState, _: &Value| {
                app_info(s, &client_endpoint)
            });
        let events = self.events.clone();
        self.fake
            .register("event.bind", move |_, p| event_bind(&mut lock(&events), p));
        let events = self.events.clone();
        self.fake.register("event.unbind", move |_, p| {
            event_unbind(&mut lock(&events), p)
        });
        let events = self.events.clone();
        self.fake.register("event.get", move |_, _| {
            let rows: Vec<Value> = lock(&events)
                .handlers
                .iter()
                .map(|h| {
                    json!({"event": h.event, "handler": h.handler, "auth_type": h.auth_type,
                           "offline": if h.offline { 1 } else { 0 }})
                })
                .collect();
            MethodReply::Result(Value::Array(rows))
        });
        let events = self.events.clone();
        self.fake.register("event.offline.get", move |_, p| {
            offline_get(&mut lock(&events), p)
        });
        let events = self.events.clone();
        self.fake.register("event.offline.clear", move |_, p| {
            offline_clear(&mut lock(&events), p)
        });
        let events = self.events.clone();
        self.fake.register("event.offline.error", move |_, p| {
            offline_error(&mut lock(&events), p)
        });
    }
}

/// `app.info` as the OAuth server answers it for an app's access token. The portal's own page
/// (b24restdocs api-reference/common/system/app-info.md) documents ID, CODE, VERSION, STATUS,
/// INSTALLED…; the `install` block (member_id, domain, client_endpoint, server_endpoint) carries
/// the fields the token exchange documents (b24restdocs settings/oauth/index.md), and is what
/// crm-relay takes the portal's REST endpoint from.
fn app_info(s: &PortalState, client_endpoint: &str) -> MethodReply {
    MethodReply::Result(json!({
        "ID": 7,
        "CODE": s.client_id,
        "VERSION": 1,
        "STATUS": "L",
        "INSTALLED": true,
        "PAYMENT_EXPIRED": "N",
        "DAYS": null,
        "LANGUAGE_ID": "ru",
        "LICENSE": "ru_project",
        "client_id": s.client_id,
        "install": {
            "installed": true,
            "version": 1,
            "status": "L",
            "scope": "crm,task,user",
            "domain": s.domain,
            "uri": format!("https://{}", s.domain),
            "client_endpoint": client_endpoint,
            "server_endpoint": "https://oauth.bitrix.info/rest/",
            "member_id": s.member_id,
        }
    }))
}

fn list(params: &Value, key: &str) -> Option<Vec<String>> {
    match params.get(key) {
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

fn event_bind(state: &mut EventsState, params: &Value) -> MethodReply {
    let Some(event) = param(params, "event") else {
        return MethodReply::error(400, "ERROR_ARGUMENT", "Event name is empty");
    };
    if !known_event(&event) {
        return MethodReply::error(400, "ERROR_EVENT_NOT_FOUND", "Event not found");
    }
    let offline = param(params, "event_type").as_deref() == Some("offline");
    let handler = param(params, "handler").unwrap_or_default();
    if !offline && handler.is_empty() {
        return MethodReply::error(400, "ERROR_ARGUMENT", "Handler is empty");
    }
    let row = BoundRow {
        event: event.to_ascii_uppercase(),
        handler: if offline { String::new() } else { handler },
        auth_type: param(params, "auth_type").unwrap_or_else(|| "0".into()),
        offline,
    };
    if state.handlers.contains(&row) {
        return MethodReply::error(400, "ERROR_CORE", "Handler already binded");
    }
    state.handlers.push(row);
    MethodReply::Result(json!(true))
}

fn event_unbind(state: &mut EventsState, params: &Value) -> MethodReply {
    let event = param(params, "event").map(|e| e.to_ascii_uppercase());
    let handler = param(params, "handler");
    let offline = param(params, "event_type").as_deref() == Some("offline");
    let before = state.handlers.len();
    state.handlers.retain(|h| {
        !(event.as_deref().is_none_or(|e| h.event == e)
            && h.offline == offline
            && (offline || handler.as_deref().is_none_or(|x| h.handler == x)))
    });
    MethodReply::Result(json!({"count": before - state.handlers.len()}))
}

fn offline_get(state: &mut EventsState, params: &Value) -> MethodReply {
    let clear = param(params, "clear").as_deref() != Some("0");
    let want_errors = param(params, "error").as_deref() == Some("1");
    let limit = param(params, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(50)
        .max(1);
    let process_id = match param(params, "process_id").filter(|p| !p.is_empty()) {
        Some(p) => p,
        None => {
            state.next_process += 1;
            format!("{:032x}", state.next_process)
        }
    };
    let mut order: Vec<usize> = (0..state.offline.len()).collect();
    order.sort_by_key(|&i| (state.offline[i].timestamp_x, state.offline[i].id));
    let mut picked = Vec::new();
    // The caller's own uncleared records first, then unclaimed ones.
    for &i in &order {
        let r = &state.offline[i];
        if picked.len() < limit
            && r.process_id.as_deref() == Some(process_id.as_str())
            && r.error == want_errors
        {
            picked.push(i);
        }
    }
    for &i in &order {
        let r = &state.offline[i];
        if picked.len() < limit && r.process_id.is_none() && r.error == want_errors {
            picked.push(i);
        }
    }
    let events: Vec<Value> = picked
        .iter()
        .map(|&i| record_json(&state.offline[i]))
        .collect();
    if clear {
        let drop: HashSet<u64> = picked.iter().map(|&i| state.offline[i].id).collect();
        state.offline.retain(|r| !drop.contains(&r.id));
        MethodReply::Result(json!({"process_id": null, "events": events}))
    } else {
        for &i in &picked {
            state.offline[i].process_id = Some(process_id.clone());
        }
        MethodReply::Result(json!({"process_id": process_id, "events": events}))
    }
}

fn offline_clear(state: &mut EventsState, params: &Value) -> MethodReply {
    let Some(process_id) = param(params, "process_id") else {
        return MethodReply::error(400, "ERROR_ARGUMENT", "process_id is required");
    };
    let ids = list(params, "id");
    let message_ids = list(params, "message_id");
    state.offline.retain(|r| {
        let of_process = r.process_id.as_deref() == Some(process_id.as_str());
        let selected = match (&ids, &message_ids) {
            (Some(ids), _) => ids.contains(&r.id.to_string()),
            (None, Some(m)) => m.contains(&r.message_id),
            (None, None) => true,
        };
        !(of_process && selected)
    });
    MethodReply::Result(json!(true))
}

fn offline_error(state: &mut EventsState, params: &Value) -> MethodReply {
    let Some(process_id) = param(params, "process_id") else {
        return MethodReply::error(400, "ERROR_ARGUMENT", "process_id is required");
    };
    let message_ids = list(params, "message_id").unwrap_or_default();
    for r in state.offline.iter_mut() {
        if r.process_id.as_deref() == Some(process_id.as_str())
            && message_ids.contains(&r.message_id)
        {
            r.error = true;
            r.process_id = None;
        }
    }
    MethodReply::Result(json!(true))
}

/// POSTs `document` to a family's URL the way Bitrix24 does: a PHP-style form, no query, no
/// relay token header.
pub async fn post_as_bitrix24(ingress: &Ingress, family: Family, document: &Value) -> IngestReply {
    let body = php_form(document);
    ingress
        .handle(
            IngestRequest {
                family,
                content_type: Some("application/x-www-form-urlencoded"),
                query: None,
                relay_token_header: None,
                body: body.as_bytes(),
            },
            SystemTime::now(),
        )
        .await
}

/// A document as PHP's `http_build_query` sends it: nested keys in brackets
/// (`data[FIELDS][ID]=7`), percent-encoded, every scalar a string.
pub fn php_form(document: &Value) -> String {
    fn walk(prefix: &str, value: &Value, out: &mut form_urlencoded::Serializer<'_, String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}[{k}]")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
            }
            Value::String(s) => {
                out.append_pair(prefix, s);
            }
            Value::Number(n) => {
                out.append_pair(prefix, &n.to_string());
            }
            Value::Bool(b) => {
                out.append_pair(prefix, if *b { "1" } else { "0" });
            }
            Value::Null => {}
        }
    }
    let mut out = form_urlencoded::Serializer::new(String::new());
    walk("", document, &mut out);
    out.finish()
}

/// Bitrix24 keys its coalescing on the event and its data; any stable digest will do here.
fn message_id_of(event: &str, data: &Value) -> String {
    let digest = Sha256::digest(format!("{event}|{data}").as_bytes());
    hex_prefix(&digest[..16])
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn timestamp_x(secs: i64) -> String {
    // Bitrix24 writes the portal's local time with its offset; Moscow time here.
    let local = secs + 3 * 3600;
    let days = local.div_euclid(86_400);
    let rem = local.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+03:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn record_json(r: &OfflineRecord) -> Value {
    json!({
        "ID": r.id.to_string(),
        "TIMESTAMP_X": timestamp_x(r.timestamp_x),
        "EVENT_NAME": r.event_name,
        "EVENT_DATA": r.event_data,
        "EVENT_ADDITIONAL": {"user_id": "1"},
        "MESSAGE_ID": r.message_id,
    })
}

/// Events this portal knows (anything crm-relay binds, plus ONOFFLINEEVENT).
fn known_event(event: &str) -> bool {
    relay_core::lifecycle::events::family_of_bound_event(event).is_some()
        || event.eq_ignore_ascii_case(relay_core::lifecycle::events::ONOFFLINEEVENT)
}
