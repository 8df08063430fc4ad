//! A loopback Bitrix24 portal for the app lifecycle: `app.info`, `event.bind/unbind/get` (with
//! the real "Handler already binded" refusal) and the offline-event log with `process_id`
//! claims and latest-state coalescing, at the real URL form `<client_endpoint><method>.json`.
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

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

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
struct PortalState {
    access_tokens: HashSet<String>,
    handlers: Vec<BoundRow>,
    offline: Vec<OfflineRecord>,
    next_record_id: u64,
    next_process: u64,
    calls: Vec<String>,
}

pub struct FakePortal {
    pub member_id: String,
    pub domain: String,
    pub client_id: String,
    /// `http://127.0.0.1:<port>/rest/`: the portal's `client_endpoint`.
    pub client_endpoint: String,
    state: Arc<Mutex<PortalState>>,
    _server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    member_id: String,
    domain: String,
    client_id: String,
    client_endpoint: String,
    state: Arc<Mutex<PortalState>>,
}

impl FakePortal {
    /// Starts the portal on an ephemeral loopback port.
    pub async fn start(member_id: &str) -> FakePortal {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind fake portal");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(PortalState {
            next_record_id: 1,
            ..PortalState::default()
        }));
        let shared = Shared {
            member_id: member_id.to_string(),
            domain: format!("{member_id}.bitrix24.test"),
            client_id: "local.5f0000000000a1.00000001".to_string(),
            client_endpoint: format!("http://{addr}/rest/"),
            state: state.clone(),
        };
        let app = Router::new()
            .route("/rest/{method}", any(rest_call))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakePortal {
            member_id: shared.member_id,
            domain: shared.domain,
            client_id: shared.client_id,
            client_endpoint: shared.client_endpoint,
            state,
            _server: server,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PortalState> {
        self.state.lock().expect("portal state")
    }

    /// An access token this portal accepts (what it hands out at install).
    pub fn issue_access_token(&self, token: &str) {
        self.lock().access_tokens.insert(token.to_string());
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
        let logged = json!({ data_key: {"ID": entity_id.parse::<i64>().map(Value::from).unwrap_or_else(|_| json!(entity_id))} });
        let message_id = message_id_of(&event, &logged);
        {
            let mut state = self.lock();
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

    pub fn offline_records(&self) -> Vec<OfflineRecord> {
        self.lock().offline.clone()
    }

    pub fn bound(&self) -> Vec<BoundRow> {
        self.lock().handlers.clone()
    }

    /// How many times `method` was called.
    pub fn calls(&self, method: &str) -> usize {
        self.lock().calls.iter().filter(|m| *m == method).count()
    }
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

fn rest_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

fn ok(result: Value) -> Response {
    Json(json!({"result": result, "time": {"start": 0, "finish": 0, "duration": 0}}))
        .into_response()
}

/// Query string, then form or JSON body, as Bitrix24 accepts all three.
fn params_of(query: Option<String>, headers: &HeaderMap, body: &[u8]) -> Map<String, Value> {
    let mut params = Map::new();
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
            params.extend(map);
        }
    } else {
        for (k, v) in form_urlencoded::parse(body) {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    params
}

fn text(params: &Map<String, Value>, key: &str) -> Option<String> {
    match params.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn list(params: &Map<String, Value>, key: &str) -> Option<Vec<String>> {
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
    shared::lifecycle::events::family_of_bound_event(event).is_some()
        || event.eq_ignore_ascii_case(shared::lifecycle::events::ONOFFLINEEVENT)
}

async fn rest_call(
    State(portal): State<Shared>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let method = method
        .strip_suffix(".json")
        .unwrap_or(&method)
        .to_ascii_lowercase();
    let params = params_of(query, &headers, &body);
    let mut state = portal.state.lock().expect("portal state");
    state.calls.push(method.clone());
    let token = text(&params, "auth").unwrap_or_default();
    if !state.access_tokens.contains(&token) {
        return rest_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The access token provided is invalid.",
        );
    }
    match method.as_str() {
        "app.info" => ok(json!({
            "ID": 7,
            "CODE": portal.client_id,
            "VERSION": 1,
            "STATUS": "L",
            "INSTALLED": true,
            "PAYMENT_EXPIRED": "N",
            "DAYS": null,
            "LANGUAGE_ID": "ru",
            "LICENSE": "ru_project",
            "client_id": portal.client_id,
            "install": {
                "installed": true,
                "version": 1,
                "status": "L",
                "scope": "crm,task,user",
                "domain": portal.domain,
                "uri": format!("https://{}", portal.domain),
                "client_endpoint": portal.client_endpoint,
                "server_endpoint": "https://oauth.bitrix.info/rest/",
                "member_id": portal.member_id,
            }
        })),
        "event.bind" => {
            let Some(event) = text(&params, "event") else {
                return rest_error(
                    StatusCode::BAD_REQUEST,
                    "ERROR_ARGUMENT",
                    "Event name is empty",
                );
            };
            if !known_event(&event) {
                return rest_error(
                    StatusCode::BAD_REQUEST,
                    "ERROR_EVENT_NOT_FOUND",
                    "Event not found",
                );
            }
            let offline = text(&params, "event_type").as_deref() == Some("offline");
            let handler = text(&params, "handler").unwrap_or_default();
            if !offline && handler.is_empty() {
                return rest_error(
                    StatusCode::BAD_REQUEST,
                    "ERROR_ARGUMENT",
                    "Handler is empty",
                );
            }
            let row = BoundRow {
                event: event.to_ascii_uppercase(),
                handler: if offline { String::new() } else { handler },
                auth_type: text(&params, "auth_type").unwrap_or_else(|| "0".into()),
                offline,
            };
            if state.handlers.contains(&row) {
                return rest_error(
                    StatusCode::BAD_REQUEST,
                    "ERROR_CORE",
                    "Handler already binded",
                );
            }
            state.handlers.push(row);
            ok(json!(true))
        }
        "event.unbind" => {
            let event = text(&params, "event").map(|e| e.to_ascii_uppercase());
            let handler = text(&params, "handler");
            let offline = text(&params, "event_type").as_deref() == Some("offline");
            let before = state.handlers.len();
            state.handlers.retain(|h| {
                !(event.as_deref().is_none_or(|e| h.event == e)
                    && h.offline == offline
                    && (offline || handler.as_deref().is_none_or(|x| h.handler == x)))
            });
            ok(json!({"count": before - state.handlers.len()}))
        }
        "event.get" => {
            let rows: Vec<Value> = state
                .handlers
                .iter()
                .map(|h| {
                    json!({"event": h.event, "handler": h.handler, "auth_type": h.auth_type,
                           "offline": if h.offline { 1 } else { 0 }})
                })
                .collect();
            ok(Value::Array(rows))
        }
        "event.offline.get" => {
            let clear = text(&params, "clear").as_deref() != Some("0");
            let want_errors = text(&params, "error").as_deref() == Some("1");
            let limit = text(&params, "limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(50)
                .max(1);
            let process_id = match text(&params, "process_id").filter(|p| !p.is_empty()) {
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
                ok(json!({"process_id": null, "events": events}))
            } else {
                for &i in &picked {
                    state.offline[i].process_id = Some(process_id.clone());
                }
                ok(json!({"process_id": process_id, "events": events}))
            }
        }
        "event.offline.clear" => {
            let Some(process_id) = text(&params, "process_id") else {
                return rest_error(
                    StatusCode::BAD_REQUEST,
                    "ERROR_ARGUMENT",
                    "process_id is required",
                );
            };
            let ids = list(&params, "id");
            let message_ids = list(&params, "message_id");
            state.offline.retain(|r| {
                let of_process = r.process_id.as_deref() == Some(process_id.as_str());
                let selected = match (&ids, &message_ids) {
                    (Some(ids), _) => ids.contains(&r.id.to_string()),
                    (None, Some(m)) => m.contains(&r.message_id),
                    (None, None) => true,
                };
                !(of_process && selected)
            });
            ok(json!(true))
        }
        "event.offline.error" => {
            let Some(process_id) = text(&params, "process_id") else {
                return rest_error(
                    StatusCode::BAD_REQUEST,
                    "ERROR_ARGUMENT",
                    "process_id is required",
                );
            };
            let message_ids = list(&params, "message_id").unwrap_or_default();
            for r in state.offline.iter_mut() {
                if r.process_id.as_deref() == Some(process_id.as_str())
                    && message_ids.contains(&r.message_id)
                {
                    r.error = true;
                    r.process_id = None;
                }
            }
            ok(json!(true))
        }
        _ => rest_error(
            StatusCode::NOT_FOUND,
            "ERROR_METHOD_NOT_FOUND",
            "Method not found!",
        ),
    }
}
