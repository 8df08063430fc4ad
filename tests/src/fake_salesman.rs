//! A loopback SalesMan CRM API v3: `POST /developer/v3/{client|person|deal}/info` with
//! `login`/`apikey` headers and a JSON body naming `clid`/`pid`/`did`; answers `{"data":{…}}`
//! or `{"result":"Error","error":{"code","text"}}`.

use crate::loopback::{serve, LoopbackServer};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

pub struct SalesmanState {
    pub login: String,
    pub apikey: String,
    /// Records by kind (`client`, `person`, `deal`) and id.
    pub records: HashMap<String, HashMap<String, Value>>,
    pub requests: u64,
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
            requests: 0,
        }));
        let router = axum::Router::new()
            .route("/developer/v3/{kind}/info", post(info))
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

    pub fn set_record(&self, kind: &str, id: &str, value: Value) {
        self.state()
            .records
            .entry(kind.into())
            .or_default()
            .insert(id.into(), value);
    }
}

fn error(code: u16, text: &str) -> Json<Value> {
    Json(json!({"result": "Error", "error": {"code": code, "text": text}}))
}

async fn info(
    State(state): State<Arc<Mutex<SalesmanState>>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let mut s = lock(&state);
    s.requests += 1;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    if header("login") != s.login || header("apikey") != s.apikey {
        return error(401, "Wrong login or apikey");
    }
    let key = match kind.as_str() {
        "client" => "clid",
        "person" => "pid",
        "deal" => "did",
        _ => return error(404, "Unknown method"),
    };
    let id = match body.get(key) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => return error(400, &format!("{key} is required")),
    };
    match s.records.get(&kind).and_then(|r| r.get(&id)) {
        Some(record) => Json(json!({"data": record})),
        None => error(404, "Record not found"),
    }
}
