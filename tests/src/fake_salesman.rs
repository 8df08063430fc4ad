//! A loopback SalesMan CRM API v3 (`vladandreevg/salesmancrm`, `developer/v3/index.php` and
//! `developer/v3/methods/*.php`): `POST /developer/v3/<method>/<action>` with `login`/`apikey`
//! headers and a JSON body. Every answer is HTTP 200, as v3 sets no status; errors are
//! `{"result":"Error","error":{"code","text"}}` with each method's own codes and texts.

use crate::loopback::{serve, LoopbackServer};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

pub struct SalesmanState {
    pub login: String,
    pub apikey: String,
    /// Records by v3 method (`client`, `person`, `deal`, `lead`, `entry`, `invoice`, `task`,
    /// `history`, `document`, `akt`) and id.
    pub records: HashMap<String, HashMap<String, Value>>,
    /// (method, id) of records that exist but lie outside the API user's visibility; only
    /// `client/info` and `deal/info` filter by it (`get_people`).
    pub hidden: HashSet<(String, String)>,
    /// Method files this installation lacks (an older SalesMan): index.php then answers
    /// an empty body.
    pub missing_methods: HashSet<String>,
    pub requests: u64,
    /// Every request as (method, action, JSON body), in order.
    pub calls: Vec<(String, String, Value)>,
}

pub struct FakeSalesman {
    state: Arc<Mutex<SalesmanState>>,
    server: LoopbackServer,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeSalesman {
    pub async fn start(login: &str, apikey: &str) -> Self {
        let state = Arc::new(Mutex::new(SalesmanState {
            login: login.into(),
            apikey: apikey.into(),
            records: HashMap::new(),
            hidden: HashSet::new(),
            missing_methods: HashSet::new(),
            requests: 0,
            calls: Vec::new(),
        }));
        let router = axum::Router::new()
            .route("/developer/v3/{method}/{action}", post(answer))
            .with_state(state.clone());
        FakeSalesman {
            state,
            server: serve(router).await,
        }
    }

    /// `RELAY_SALESMAN_URL`.
    pub fn url(&self) -> String {
        self.server.base_url.clone()
    }

    pub fn state(&self) -> MutexGuard<'_, SalesmanState> {
        lock(&self.state)
    }

    /// Stores a record under its v3 method (`document` for contracts).
    pub fn set_record(&self, method: &str, id: &str, value: Value) {
        self.state()
            .records
            .entry(method.into())
            .or_default()
            .insert(id.into(), value);
    }

    pub fn remove_record(&self, method: &str, id: &str) {
        if let Some(records) = self.state().records.get_mut(method) {
            records.remove(id);
        }
    }

    /// Makes an existing record invisible to the API user.
    pub fn hide(&self, method: &str, id: &str) {
        self.state().hidden.insert((method.into(), id.into()));
    }
}

fn error(code: Value, text: &str) -> Response {
    Json(json!({"result": "Error", "error": {"code": code, "text": text}})).into_response()
}

fn data(value: Value) -> Response {
    Json(json!({"data": value})).into_response()
}

/// The `default:` branch of each method file: code and text for an unknown action.
fn unknown_action(method: &str) -> Response {
    match method {
        // person.php, lead.php, task.php
        "person" | "lead" | "task" => error(json!(404), "Неизвестный метод"),
        // history.php
        "history" => error(
            json!(404),
            "Не понимаю чЁ происходит. Может в следующий раз?",
        ),
        // client.php, deal.php, entry.php, invoice.php, document.php, akt.php
        _ => error(json!(402), "Неизвестный метод"),
    }
}

const METHODS: [&str; 10] = [
    "client", "person", "deal", "lead", "entry", "invoice", "task", "history", "document", "akt",
];

fn param(body: &Value, key: &str) -> String {
    match body.get(key) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn truthy(body: &Value, key: &str) -> bool {
    match body.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64() != Some(0),
        Some(Value::String(s)) => !s.is_empty() && s != "0",
        _ => false,
    }
}

async fn answer(
    State(state): State<Arc<Mutex<SalesmanState>>>,
    Path((method, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let mut s = lock(&state);
    s.requests += 1;
    s.calls.push((method.clone(), action.clone(), body.clone()));
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    // index.php: the account by API key first, then the user by login.
    if header("apikey") != s.apikey {
        return error(json!(400), "Не верный API key");
    }
    if header("login") != s.login {
        return error(json!(401), "Неизвестный пользователь");
    }
    // index.php includes methods/<method>.php; a missing file prints nothing at all.
    if !METHODS.contains(&method.as_str()) || s.missing_methods.contains(&method) {
        return ().into_response();
    }
    if action != "info" {
        return unknown_action(&method);
    }
    let key = match method.as_str() {
        "client" => "clid",
        "person" => "pid",
        "deal" => "did",
        "history" => "cid",
        _ => "id",
    };
    let id = param(&body, key);
    let hidden = s.hidden.contains(&(method.clone(), id.clone()));
    let record = s.records.get(&method).and_then(|r| r.get(&id)).cloned();
    match method.as_str() {
        // client.php `case 'info'`: filtered by the user's visibility; `recv` always dropped,
        // `bankinfo` and `uids` only when asked.
        "client" => match record.filter(|_| !hidden) {
            Some(Value::Object(mut client)) => {
                client.remove("recv");
                if !truthy(&body, "bankinfo") {
                    client.remove("bankinfo");
                }
                if !truthy(&body, "uids") {
                    client.remove("uids");
                }
                data(Value::Object(client))
            }
            Some(other) => data(other),
            None if id.is_empty() => error(
                json!(405),
                "Отсутствуют параметры поиска клиента - clid, uid или inn",
            ),
            None => error(
                json!(403),
                "Клиент не найден в пределах аккаунта указанного пользователя.",
            ),
        },
        // deal.php: filtered by `get_people` too.
        "deal" => match record.filter(|_| !hidden) {
            Some(deal) => data(deal),
            None => error(
                json!(403),
                "Сделка не найдена в пределах аккаунта указанного пользователя.",
            ),
        },
        // person.php: no existence check; a missing person is every field empty.
        "person" => match record {
            Some(person) => data(person),
            None => data(json!({
                "pid": null, "date_create": null, "date_edit": null, "person": null,
                "ptitle": null, "clid": null, "client": "", "iduser": "", "tel": null,
                "mob": null, "mail": null
            })),
        },
        // lead.php: Leads::info of a missing id is empty; the derived names are still set.
        "lead" => match record {
            Some(lead) => Json(json!({"data": lead, "id": id.parse::<i64>().unwrap_or(0)}))
                .into_response(),
            None => Json(json!({
                "data": {"statusName": "", "rezultName": null, "clientpathName": "",
                         "userName": null, "client": null, "person": null, "deal": null},
                "id": id.parse::<i64>().unwrap_or(0)
            }))
            .into_response(),
        },
        // entry.php: the row (none) plus its products (none).
        "entry" => match record {
            Some(entry) => data(entry),
            None => data(json!({"products": []})),
        },
        // invoice.php
        "invoice" => match record {
            Some(invoice) => data(invoice),
            None if body.get("id").is_none() => {
                error(json!(405), "Отсутствуют параметры - id Счета")
            }
            None => error(json!(403), "Счет не найден"),
        },
        // task.php
        "task" => match record {
            Some(task) => data(task),
            None => error(
                json!(403),
                "Напоминание с указанным id не найдено в пределах аккаунта указанного пользователя.",
            ),
        },
        // history.php: its code is a string.
        "history" => match record {
            Some(history) => data(history),
            None => error(
                json!("403"),
                "Не найдено в пределах аккаунта указанного пользователя.",
            ),
        },
        // document.php, akt.php
        _ => match record {
            Some(document) => data(document),
            None if method == "akt" && body.get("id").is_none() => {
                error(json!(405), "Отсутствуют параметры - id Акта")
            }
            None => error(json!(404), "Документ не найден"),
        },
    }
}
