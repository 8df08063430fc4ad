//! A loopback Bitrix24 portal: the same URL forms (inbound webhook `/rest/<user>/<code>/<method>.json`,
//! OAuth `/rest/<method>.json` with `auth`), the same error bodies and statuses, `batch`, and an
//! `/oauth/token/` refresh endpoint. One server is one portal.
//!
//! Both limits of b24restdocs `limits.md` are enforced as documented there: the portal's leaky
//! bucket (503 `QUERY_LIMIT_EXCEEDED`) and the per-method accumulated execution time in ten
//! one-minute baskets (429 `OPERATION_TIME_LIMIT`, `time.operating` and
//! `time.operating_reset_at` in every answer). Tests scale the rates and the basket length
//! (`PortalLimits`, `OperatingLimits`) and keep the algorithms.
//!
//! Methods live in a table (`register`), so tests and other suites can add `app.info`,
//! `event.bind`… with a closure over the portal's state.

use crate::loopback::{serve, LoopbackServer};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a method answers: the `result`, or an error as Bitrix24 writes it.
#[derive(Clone, Debug, PartialEq)]
pub enum MethodReply {
    Result(Value),
    Error {
        status: u16,
        error: String,
        description: String,
    },
}

impl MethodReply {
    pub fn error(status: u16, error: &str, description: &str) -> Self {
        MethodReply::Error {
            status,
            error: error.into(),
            description: description.into(),
        }
    }

    /// `crm.*.get` for a missing id: 400 with an empty `error` (as real portals answer).
    pub fn crm_not_found() -> Self {
        MethodReply::error(400, "", "Not found")
    }

    pub fn query_limit_exceeded() -> Self {
        MethodReply::error(503, "QUERY_LIMIT_EXCEEDED", "Too many requests")
    }

    /// b24restdocs `limits.md`: a method's accumulated time is over the limit: 429.
    pub fn operation_time_limit() -> Self {
        MethodReply::error(
            429,
            "OPERATION_TIME_LIMIT",
            "Method is blocked due to operation time limit.",
        )
    }
}

/// A method: reads or changes the portal's state given the call's params.
pub type MethodHandler = Arc<dyn Fn(&mut PortalState, &Value) -> MethodReply + Send + Sync>;

/// Everything a test may look at or change. Entities are kept per kind (`deal`, `lead`,
/// `task`, `item:31`…) by id, exactly as the methods return them.
pub struct PortalState {
    pub member_id: String,
    pub domain: String,
    pub webhook_user: String,
    pub webhook_code: String,
    pub client_id: String,
    pub client_secret: String,
    pub access_token: String,
    pub refresh_token: String,
    /// Tokens that now answer `expired_token`.
    pub expired_tokens: HashSet<String>,
    pub entities: HashMap<String, BTreeMap<String, Value>>,
    /// Free room for methods added later (event bindings, offline events…).
    pub extra: HashMap<String, Value>,
    /// REST requests received (a `batch` is one), refused ones included.
    pub requests: u64,
    /// Requests refused with 503 `QUERY_LIMIT_EXCEEDED` by the bucket.
    pub limited: u64,
    /// Calls refused with 429 `OPERATION_TIME_LIMIT` (nested `batch` commands included), by
    /// method.
    pub blocked: BTreeMap<String, u64>,
    /// Seconds of execution time one call of a method adds to its `operating` (limits.md:
    /// "Resource Intensity Limits"); methods not named cost nothing.
    pub operating_cost: HashMap<String, f64>,
    operating: OperatingLimits,
    /// Per (app or webhook, method): the baskets of accumulated time, oldest first.
    baskets: HashMap<(String, String), VecDeque<Basket>>,
    pub refreshes: u64,
    /// Method names in arrival order (`batch` once per batch).
    pub calls: Vec<String>,
    /// Answers forced on the next REST requests, before any method runs.
    pub injected: VecDeque<MethodReply>,
    /// Until this instant every REST request gets this answer (a portal overloaded for a while).
    pub outage: Option<(Instant, MethodReply)>,
    bucket_rate: f64,
    bucket_burst: f64,
    bucket_level: f64,
    bucket_at: Instant,
    token_serial: u64,
}

impl PortalState {
    pub fn entity(&self, kind: &str, id: &str) -> Option<&Value> {
        self.entities.get(kind).and_then(|m| m.get(id))
    }

    pub fn set_entity(&mut self, kind: &str, id: &str, value: Value) {
        self.entities
            .entry(kind.to_string())
            .or_default()
            .insert(id.to_string(), value);
    }

    /// The leaky bucket of limits.md: each request adds one, the counter drains by `rate`
    /// each second, and once it is above `burst` the next request is refused.
    fn admit(&mut self) -> bool {
        let now = Instant::now();
        let drained = now.duration_since(self.bucket_at).as_secs_f64() * self.bucket_rate;
        self.bucket_level = (self.bucket_level - drained).max(0.0);
        self.bucket_at = now;
        if self.bucket_level + 1.0 > self.bucket_burst {
            false
        } else {
            self.bucket_level += 1.0;
            true
        }
    }

    /// The method's baskets without those whose ten baskets' time has passed.
    fn live_baskets(&mut self, caller: &str, method: &str) -> &mut VecDeque<Basket> {
        let window = self.operating.basket * 10;
        let baskets = self
            .baskets
            .entry((caller.to_string(), method.to_string()))
            .or_default();
        let now = Instant::now();
        while baskets
            .front()
            .is_some_and(|b| now.duration_since(b.started) >= window)
        {
            baskets.pop_front();
        }
        baskets
    }

    /// Runs one call of `method` for `caller` under its operating-time limit: refused while
    /// the accumulated time is over the limit ("checked before executing each call"),
    /// otherwise run and its cost added to the basket of the current minute. The answer's
    /// `time` object carries `operating` and `operating_reset_at`.
    fn run_timed(
        &mut self,
        caller: &str,
        method: &str,
        run: impl FnOnce(&mut PortalState) -> MethodReply,
    ) -> (MethodReply, Value) {
        let limit = self.operating.limit_s;
        let over = self
            .live_baskets(caller, method)
            .iter()
            .map(|b| b.seconds)
            .sum::<f64>()
            > limit;
        if over {
            *self.blocked.entry(method.to_string()).or_default() += 1;
            return (MethodReply::operation_time_limit(), Value::Null);
        }
        let reply = run(self);
        let cost = self.operating_cost.get(method).copied().unwrap_or(0.0);
        let basket_span = self.operating.basket;
        let window = basket_span * 10;
        let baskets = self.live_baskets(caller, method);
        let now = Instant::now();
        match baskets.back_mut() {
            Some(last) if now.duration_since(last.started) < basket_span => last.seconds += cost,
            _ => baskets.push_back(Basket {
                started: now,
                started_unix: SystemTime::now(),
                seconds: cost,
            }),
        }
        let operating: f64 = baskets.iter().map(|b| b.seconds).sum();
        // When the oldest basket leaves the count, in whole seconds as the docs show it,
        // rounded up so it is never earlier than the real moment.
        let reset_at = baskets
            .front()
            .and_then(|b| (b.started_unix + window).duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .unwrap_or_default();
        (
            reply,
            json!({"start": 0.0, "finish": 0.0, "duration": 0.001, "processing": 0.0,
                   "operating": operating, "operating_reset_at": reset_at}),
        )
    }
}

/// One minute's sum of a method's execution time (limits.md: ten one-minute baskets; a
/// basket's ten minutes count from the first call in it).
struct Basket {
    started: Instant,
    started_unix: SystemTime,
    seconds: f64,
}

/// limits.md, "Resource Intensity Limits": a method whose execution time over the last ten
/// baskets exceeds `limit_s` is blocked. The cloud's limit is 480 s in ten one-minute baskets.
#[derive(Clone, Copy, Debug)]
pub struct OperatingLimits {
    pub limit_s: f64,
    pub basket: Duration,
}

impl Default for OperatingLimits {
    fn default() -> Self {
        OperatingLimits {
            limit_s: 480.0,
            basket: Duration::from_secs(60),
        }
    }
}

/// The bucket the portal enforces (limits.md, "Request Rate Limits"): the counter drains by
/// `per_second` (Y) and requests above `burst` (X) are refused.
#[derive(Clone, Copy, Debug)]
pub struct PortalLimits {
    pub per_second: f64,
    pub burst: f64,
}

impl PortalLimits {
    /// Every plan but Enterprise: Y = 2 per second, X = 50.
    pub const STANDARD: PortalLimits = PortalLimits {
        per_second: 2.0,
        burst: 50.0,
    };
    /// Enterprise: Y = 5 per second, X = 250.
    pub const ENTERPRISE: PortalLimits = PortalLimits {
        per_second: 5.0,
        burst: 250.0,
    };
}

impl Default for PortalLimits {
    fn default() -> Self {
        PortalLimits::STANDARD
    }
}

type Methods = Arc<Mutex<HashMap<String, MethodHandler>>>;

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<PortalState>>,
    methods: Methods,
    base_url: Arc<Mutex<String>>,
}

pub struct FakeBitrix24 {
    shared: Shared,
    server: LoopbackServer,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeBitrix24 {
    pub async fn start(member_id: &str, limits: PortalLimits) -> Self {
        let state = PortalState {
            member_id: member_id.to_string(),
            domain: format!("{member_id}.bitrix24.test"),
            webhook_user: "1".into(),
            webhook_code: "whcode0123456789".into(),
            client_id: "local.app.1".into(),
            client_secret: "client-secret-xyz".into(),
            access_token: "access-0-SECRET".into(),
            refresh_token: "refresh-0-SECRET".into(),
            expired_tokens: HashSet::new(),
            entities: HashMap::new(),
            extra: HashMap::new(),
            requests: 0,
            limited: 0,
            blocked: BTreeMap::new(),
            operating_cost: HashMap::new(),
            operating: OperatingLimits::default(),
            baskets: HashMap::new(),
            refreshes: 0,
            calls: Vec::new(),
            injected: VecDeque::new(),
            outage: None,
            bucket_rate: limits.per_second,
            bucket_burst: limits.burst,
            bucket_level: 0.0,
            bucket_at: Instant::now(),
            token_serial: 0,
        };
        let shared = Shared {
            state: Arc::new(Mutex::new(state)),
            methods: Arc::new(Mutex::new(default_methods())),
            base_url: Arc::new(Mutex::new(String::new())),
        };
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let server = serve(router).await;
        *lock(&shared.base_url) = server.base_url.clone();
        FakeBitrix24 { shared, server }
    }

    pub fn base_url(&self) -> &str {
        &self.server.base_url
    }

    /// Inbound webhook base, as Bitrix24 shows it: `…/rest/<user>/<code>/`.
    pub fn webhook_url(&self) -> String {
        let s = self.state();
        format!(
            "{}/rest/{}/{}/",
            self.server.base_url, s.webhook_user, s.webhook_code
        )
    }

    /// OAuth `client_endpoint`: `…/rest/`.
    pub fn client_endpoint(&self) -> String {
        format!("{}/rest/", self.server.base_url)
    }

    /// The OAuth server (`RELAY_B24_OAUTH_URL`); here the same server.
    pub fn oauth_url(&self) -> String {
        self.server.base_url.clone()
    }

    pub fn state(&self) -> MutexGuard<'_, PortalState> {
        lock(&self.shared.state)
    }

    /// Adds or replaces a method.
    pub fn register(
        &self,
        method: &str,
        handler: impl Fn(&mut PortalState, &Value) -> MethodReply + Send + Sync + 'static,
    ) {
        lock(&self.shared.methods).insert(method.to_string(), Arc::new(handler));
    }

    pub fn set_entity(&self, kind: &str, id: &str, value: Value) {
        self.state().set_entity(kind, id, value);
    }

    pub fn remove_entity(&self, kind: &str, id: &str) {
        if let Some(m) = self.state().entities.get_mut(kind) {
            m.remove(id);
        }
    }

    /// The current access token starts answering 401 `expired_token`.
    pub fn expire_access_token(&self) {
        let mut s = self.state();
        let token = s.access_token.clone();
        s.expired_tokens.insert(token);
    }

    /// Every REST request answers `reply` for the next `period`.
    pub fn fail_for(&self, period: std::time::Duration, reply: MethodReply) {
        self.state().outage = Some((Instant::now() + period, reply));
    }

    pub fn inject(&self, reply: MethodReply) {
        self.state().injected.push_back(reply);
    }

    pub fn requests(&self) -> u64 {
        self.state().requests
    }

    pub fn limited(&self) -> u64 {
        self.state().limited
    }

    /// Scales the operating-time limit (its basket length) for a test.
    pub fn set_operating_limits(&self, limits: OperatingLimits) {
        self.state().operating = limits;
    }

    /// Every call of `method` now adds `seconds` to its accumulated execution time.
    pub fn set_operating_cost(&self, method: &str, seconds: f64) {
        self.state()
            .operating_cost
            .insert(method.to_string(), seconds);
    }

    /// Calls of `method` refused with `OPERATION_TIME_LIMIT`.
    pub fn blocked(&self, method: &str) -> u64 {
        self.state().blocked.get(method).copied().unwrap_or(0)
    }
}

/// `crm.<x>.get` over entities of kind `kind`, param `id`.
fn crm_get(kind: &'static str) -> MethodHandler {
    Arc::new(move |s: &mut PortalState, p: &Value| {
        let id = param(p, "id").or_else(|| param(p, "ID"));
        match id {
            None => MethodReply::error(400, "", "ID is not defined or invalid."),
            Some(id) => match s.entity(kind, &id) {
                Some(v) => MethodReply::Result(v.clone()),
                None => MethodReply::crm_not_found(),
            },
        }
    })
}

fn default_methods() -> HashMap<String, MethodHandler> {
    let mut m: HashMap<String, MethodHandler> = HashMap::new();
    for (method, kind) in [
        ("crm.deal.get", "deal"),
        ("crm.lead.get", "lead"),
        ("crm.contact.get", "contact"),
        ("crm.company.get", "company"),
        ("crm.requisite.get", "requisite"),
        ("crm.requisite.bankdetail.get", "bankdetail"),
        ("crm.invoice.get", "invoice"),
        ("crm.activity.get", "activity"),
        // crm-deal-recurring-get.md, crm-invoice-recurring-get.md: the settings row by id.
        ("crm.deal.recurring.get", "deal_recurring"),
        ("crm.invoice.recurring.get", "invoice_recurring"),
        // crm-<x>-userfield-get.md: a field definition by id, per owner kind.
        ("crm.deal.userfield.get", "userfield:deal"),
        ("crm.lead.userfield.get", "userfield:lead"),
        ("crm.contact.userfield.get", "userfield:contact"),
        ("crm.company.userfield.get", "userfield:company"),
        ("crm.requisite.userfield.get", "userfield:requisite"),
        ("crm.invoice.userfield.get", "userfield:invoice"),
    ] {
        m.insert(method.into(), crm_get(kind));
    }
    m.insert(
        "crm.item.get".into(),
        Arc::new(|s: &mut PortalState, p: &Value| {
            let (Some(etid), Some(id)) = (param(p, "entityTypeId"), param(p, "id")) else {
                return MethodReply::error(400, "400", "entityTypeId and id are required");
            };
            match s.entity(&format!("item:{etid}"), &id) {
                Some(v) => MethodReply::Result(json!({ "item": v })),
                None => MethodReply::error(400, "NOT_FOUND", "Element not found"),
            }
        }),
    );
    // crm-address-list.md: `filter` by TYPE_ID, ENTITY_TYPE_ID, ENTITY_ID; a list of rows.
    // Addresses are kept under "address" by `<TYPE_ID>-<ENTITY_TYPE_ID>-<ENTITY_ID>`.
    m.insert(
        "crm.address.list".into(),
        Arc::new(|s: &mut PortalState, p: &Value| {
            let filter = p.get("filter").cloned().unwrap_or(Value::Null);
            let part = |k: &str| param(&filter, k);
            let rows: Vec<Value> = s
                .entities
                .get("address")
                .map(|all| {
                    all.iter()
                        .filter(|(key, _)| {
                            let mut it = key.split('-');
                            [it.next(), it.next(), it.next()]
                                .into_iter()
                                .zip(["TYPE_ID", "ENTITY_TYPE_ID", "ENTITY_ID"])
                                .all(|(have, k)| {
                                    part(k).is_none_or(|want| Some(want.as_str()) == have)
                                })
                        })
                        .map(|(_, v)| v.clone())
                        .collect()
                })
                .unwrap_or_default();
            MethodReply::Result(Value::Array(rows))
        }),
    );
    m.insert(
        "tasks.task.get".into(),
        Arc::new(|s: &mut PortalState, p: &Value| {
            let id = param(p, "taskId").unwrap_or_default();
            match s.entity("task", &id) {
                Some(v) => MethodReply::Result(json!({ "task": v })),
                None => MethodReply::error(
                    400,
                    "ERROR_CORE",
                    "TASKS_ERROR_EXCEPTION_#256; Task not found or access denied.; 256/TE/ITEM_NOT_FOUND_OR_NOT_ACCESSIBLE<br>",
                ),
            }
        }),
    );
    m
}

/// A param as a string, whether sent as a JSON number or string.
pub fn param(params: &Value, key: &str) -> Option<String> {
    match params.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An answer without a method's own time (errors before any method ran, `batch` itself).
fn answer(reply: MethodReply) -> Response {
    answer_timed(
        reply,
        json!({"start": 0.0, "finish": 0.0, "duration": 0.001, "processing": 0.0}),
    )
}

/// `time`: limits.md's `time` object, with `operating` and `operating_reset_at` for a method.
fn answer_timed(reply: MethodReply, time: Value) -> Response {
    match reply {
        MethodReply::Result(result) => {
            Json(json!({"result": result, "time": time})).into_response()
        }
        MethodReply::Error {
            status,
            error,
            description,
        } => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            Json(json!({"error": error, "error_description": description})),
        )
            .into_response(),
    }
}

/// Params from the query string and the body (JSON, or a flat form with `cmd[key]=`).
fn params_of(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Value {
    let mut map = Map::new();
    let add_pairs = |raw: &[u8], map: &mut Map<String, Value>| {
        for (k, v) in form_urlencoded::parse(raw) {
            if let Some(key) = k.strip_prefix("cmd[").and_then(|r| r.strip_suffix(']')) {
                let cmd = map.entry("cmd").or_insert_with(|| json!({}));
                if let Value::Object(cmd) = cmd {
                    cmd.insert(key.to_string(), json!(v));
                }
            } else {
                map.insert(k.into_owned(), json!(v));
            }
        }
    };
    if let Some(q) = uri.query() {
        add_pairs(q.as_bytes(), &mut map);
    }
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if is_json {
        if let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) {
            map.extend(body);
        }
    } else {
        add_pairs(body, &mut map);
    }
    Value::Object(map)
}

async fn handle(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = params_of(&uri, &headers, &body);
    let path = uri.path().to_string();
    if path.trim_end_matches('/') == "/oauth/token" {
        return refresh(&shared, &params);
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut state = lock(&shared.state);
    // Authenticate by URL form: webhook `/rest/<user>/<code>/<method>.json`, OAuth `/rest/<method>.json`.
    // limits.md: operating time is kept "separately for an application or a webhook".
    let (caller, method) = match segments.as_slice() {
        ["rest", user, code, method] => {
            if *user != state.webhook_user || *code != state.webhook_code {
                return answer(MethodReply::error(
                    401,
                    "INVALID_CREDENTIALS",
                    "Invalid request credentials",
                ));
            }
            (
                format!("webhook:{user}"),
                method.trim_end_matches(".json").to_string(),
            )
        }
        ["rest", method] => {
            let auth = param(&params, "auth").unwrap_or_default();
            if state.expired_tokens.contains(&auth) {
                state.requests += 1;
                return answer(MethodReply::error(
                    401,
                    "expired_token",
                    "The access token provided has expired.",
                ));
            }
            if auth.is_empty() || auth != state.access_token {
                state.requests += 1;
                return answer(MethodReply::error(
                    401,
                    "invalid_token",
                    "The access token provided is invalid.",
                ));
            }
            (
                format!("app:{}", state.client_id),
                method.trim_end_matches(".json").to_string(),
            )
        }
        _ => return (StatusCode::NOT_FOUND, "not a REST path").into_response(),
    };
    state.requests += 1;
    state.calls.push(method.clone());
    if !state.admit() {
        state.limited += 1;
        return answer(MethodReply::query_limit_exceeded());
    }
    if let Some((until, reply)) = &state.outage {
        if Instant::now() < *until {
            return answer(reply.clone());
        }
    }
    if let Some(forced) = state.injected.pop_front() {
        return answer(forced);
    }
    let methods = lock(&shared.methods).clone();
    if method == "batch" {
        return answer(run_batch(&mut state, &caller, &methods, &params));
    }
    match methods.get(&method) {
        Some(handler) => {
            let (reply, time) = state.run_timed(&caller, &method, |s| handler(s, &params));
            answer_timed(reply, time)
        }
        None => answer(MethodReply::error(
            404,
            "ERROR_METHOD_NOT_FOUND",
            "Method not found!",
        )),
    }
}

/// `batch`: each `cmd[key]` is `method?query`; results and errors keyed alike. Empty maps
/// are `[]`, as PHP writes them.
fn run_batch(
    state: &mut PortalState,
    caller: &str,
    methods: &HashMap<String, MethodHandler>,
    params: &Value,
) -> MethodReply {
    let Some(Value::Object(cmd)) = params.get("cmd") else {
        return MethodReply::error(400, "INVALID_ARG_VALUE", "cmd is required");
    };
    if cmd.len() > 50 {
        return MethodReply::error(
            400,
            "ERROR_BATCH_LENGTH_EXCEEDED",
            "Max batch length exceeded",
        );
    }
    let halt = param(params, "halt").is_some_and(|h| h == "1" || h == "true");
    let mut results = Map::new();
    let mut errors = Map::new();
    let mut times = Map::new();
    for (key, command) in cmd {
        let command = command.as_str().unwrap_or_default();
        let (method, query) = command.split_once('?').unwrap_or((command, ""));
        // PHP reads `filter[X]=v` of a command's query as `filter: {X: v}`.
        let mut sub = Map::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.split_once('[') {
                Some((outer, inner)) => {
                    let nested = sub.entry(outer.to_string()).or_insert_with(|| json!({}));
                    if let Value::Object(nested) = nested {
                        nested.insert(inner.trim_end_matches(']').to_string(), json!(v));
                    }
                }
                None => {
                    sub.insert(k.into_owned(), json!(v));
                }
            }
        }
        // limits.md: "Nested calls are executed as separate methods", each under its own
        // method's operating-time limit; `batch` itself is not counted.
        let reply = match methods.get(method) {
            Some(handler) => {
                let (reply, time) =
                    state.run_timed(caller, method, |s| handler(s, &Value::Object(sub)));
                if !time.is_null() {
                    times.insert(key.clone(), time);
                }
                reply
            }
            None => MethodReply::error(404, "ERROR_METHOD_NOT_FOUND", "Method not found!"),
        };
        match reply {
            MethodReply::Result(r) => {
                results.insert(key.clone(), r);
            }
            MethodReply::Error {
                error, description, ..
            } => {
                errors.insert(
                    key.clone(),
                    json!({"error": error, "error_description": description}),
                );
                if halt {
                    break;
                }
            }
        }
    }
    let php = |m: Map<String, Value>| {
        if m.is_empty() {
            json!([])
        } else {
            Value::Object(m)
        }
    };
    MethodReply::Result(json!({
        "result": php(results),
        "result_error": php(errors),
        "result_total": [],
        "result_next": [],
        "result_time": php(times),
    }))
}

/// The refresh as b24restdocs settings/oauth/auto-renewal.md documents it (a GET with the
/// parameters in the query string; the answer's `domain` is the OAuth server's).
/// `GET /oauth/token/?grant_type=refresh_token&client_id&client_secret&refresh_token`: a new
/// pair; the old refresh token stops working (Bitrix24 refresh tokens are single-use).
fn refresh(shared: &Shared, params: &Value) -> Response {
    let mut s = lock(&shared.state);
    let ok = param(params, "grant_type").as_deref() == Some("refresh_token")
        && param(params, "client_id").as_deref() == Some(s.client_id.as_str())
        && param(params, "client_secret").as_deref() == Some(s.client_secret.as_str())
        && param(params, "refresh_token").as_deref() == Some(s.refresh_token.as_str());
    if !ok {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "Invalid refresh token"})),
        )
            .into_response();
    }
    s.token_serial += 1;
    s.refreshes += 1;
    let old = s.access_token.clone();
    s.expired_tokens.insert(old);
    s.access_token = format!("access-{}-SECRET", s.token_serial);
    s.refresh_token = format!("refresh-{}-SECRET", s.token_serial);
    let base = lock(&shared.base_url).clone();
    Json(json!({
        "access_token": s.access_token,
        "expires": 4102444800i64,
        "expires_in": 3600,
        "scope": "crm,task",
        "domain": "oauth.bitrix.info",
        "server_endpoint": "https://oauth.bitrix.info/rest/",
        "status": "L",
        "client_endpoint": format!("{base}/rest/"),
        "member_id": s.member_id,
        "user_id": 1,
        "refresh_token": s.refresh_token,
    }))
    .into_response()
}
