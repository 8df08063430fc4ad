//! A loopback destination (the user's system): records every request's headers and body,
//! and answers with a chosen failure the next N times (or for one webhook-id), optionally with
//! `Retry-After`, or at random; it counts how many POSTs were in flight at once (in all, and
//! of one webhook-id), and can hold the first N requests until N are in flight together.

use crate::loopback::{serve, LoopbackServer};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Received {
    /// Header names lower-case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// What this destination answered; 0 for a request it held past the relay's timeout.
    pub answered: u16,
    /// When the request arrived.
    pub arrived_at: std::time::Instant,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("destination got JSON")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

#[derive(Default)]
struct DestinationState {
    received: Vec<Received>,
    /// (status, Retry-After) answers still to give, in order.
    failures: VecDeque<(u16, Option<String>)>,
    /// Held before answering: lets a test keep a delivery in flight.
    delay: Duration,
    /// The next requests held this long before they are answered (past the relay's forward
    /// timeout, so the relay gives up on them first).
    hangs: VecDeque<Duration>,
    /// Percent of requests (beyond `failures`) answered 503 at random.
    random_failure_percent: u8,
    /// Answers for one webhook-id, given before `failures`.
    failures_for: BTreeMap<String, VecDeque<(u16, Option<String>)>>,
    /// Held before answering one webhook-id, instead of `delay`.
    delay_for: BTreeMap<String, Duration>,
    /// The first requests, up to the barrier's size, wait at it until that many are in
    /// flight together (or its bound passes).
    together: Option<(Arc<tokio::sync::Barrier>, Duration)>,
    together_left: usize,
    /// POSTs being answered right now, and the most there ever were.
    in_flight_total: usize,
    most_in_flight_total: usize,
    /// POSTs of each webhook-id being answered right now, and the most there ever were.
    in_flight: BTreeMap<String, usize>,
    most_in_flight: usize,
}

/// Counts one POST out of `in_flight` when its handler ends, also when the client hung up
/// (axum then drops the handler mid-sleep).
struct InFlight {
    state: Arc<Mutex<DestinationState>>,
    webhook_id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        if let Some(count) = s.in_flight.get_mut(&self.webhook_id) {
            *count = count.saturating_sub(1);
        }
        s.in_flight_total = s.in_flight_total.saturating_sub(1);
    }
}

pub struct Destination {
    state: Arc<Mutex<DestinationState>>,
    server: LoopbackServer,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Destination {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(DestinationState::default()));
        let router = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        Destination {
            state,
            server: serve(router).await,
        }
    }

    pub fn url(&self) -> String {
        format!("{}/hooks/crm", self.server.base_url)
    }

    /// The next `times` requests answer `status`.
    pub fn fail_next(&self, status: u16, times: usize) {
        self.fail_next_with_retry_after(status, times, None);
    }

    pub fn fail_next_with_retry_after(&self, status: u16, times: usize, retry_after: Option<&str>) {
        let mut s = lock(&self.state);
        for _ in 0..times {
            s.failures
                .push_back((status, retry_after.map(str::to_string)));
        }
    }

    /// Answers `percent` % of requests 503 (after any `fail_next` answers), at random.
    pub fn fail_at_random(&self, percent: u8) {
        lock(&self.state).random_failure_percent = percent.min(100);
    }

    /// The next `times` requests carrying `webhook_id` answer `status`, whatever others get.
    pub fn fail_next_for(&self, webhook_id: &str, status: u16, retry_after: Option<&str>) {
        lock(&self.state)
            .failures_for
            .entry(webhook_id.to_string())
            .or_default()
            .push_back((status, retry_after.map(str::to_string)));
    }

    /// Requests carrying `webhook_id` are held this long before their answer.
    pub fn hold_answers_to(&self, webhook_id: &str, delay: Duration) {
        lock(&self.state)
            .delay_for
            .insert(webhook_id.to_string(), delay);
    }

    /// The next `count` requests are not answered until all `count` are in flight at once,
    /// or `at_most` has passed: a client that sends one at a time gets its first answer only
    /// then (after its own timeout, if shorter).
    pub fn answer_together(&self, count: usize, at_most: Duration) {
        let mut s = lock(&self.state);
        s.together = Some((Arc::new(tokio::sync::Barrier::new(count)), at_most));
        s.together_left = count;
    }

    /// The most POSTs (of any webhook-ids) that were ever in flight at the same time.
    pub fn most_concurrent(&self) -> usize {
        lock(&self.state).most_in_flight_total
    }

    /// The most POSTs of one webhook-id that were ever in flight at the same time.
    pub fn most_concurrent_per_webhook_id(&self) -> usize {
        lock(&self.state).most_in_flight
    }

    /// The next `times` requests hang for `delay` before their answer; they are recorded
    /// with `answered` 0, as the relay has hung up on them by then.
    pub fn hang_next(&self, times: usize, delay: Duration) {
        let mut s = lock(&self.state);
        s.hangs.extend(std::iter::repeat_n(delay, times));
    }

    pub fn hold_answers_for(&self, delay: Duration) {
        lock(&self.state).delay = delay;
    }

    /// Every request, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    /// Requests answered 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }

    /// The JSON bodies of the requests answered 2xx, in arrival order.
    pub fn delivered_bodies(&self) -> Vec<serde_json::Value> {
        self.delivered().iter().map(Received::json).collect()
    }

    /// The `webhook-id` of every request, in arrival order.
    pub fn received_webhook_ids(&self) -> Vec<String> {
        webhook_ids(&self.received())
    }

    /// The `webhook-id` of the requests answered 2xx, in arrival order.
    pub fn delivered_webhook_ids(&self) -> Vec<String> {
        webhook_ids(&self.delivered())
    }
}

fn webhook_ids(requests: &[Received]) -> Vec<String> {
    requests
        .iter()
        .map(|r| r.header("webhook-id").to_string())
        .collect()
}

async fn receive(
    State(state): State<Arc<Mutex<DestinationState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let recorded = |answered: u16| Received {
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
        answered,
        arrived_at: std::time::Instant::now(),
    };
    let hang = {
        let mut s = lock(&state);
        let hang = s.hangs.pop_front();
        if hang.is_some() {
            s.received.push(recorded(0));
        }
        hang
    };
    if let Some(hang) = hang {
        // Not counted in flight: the relay hangs up at its timeout, while this handler may
        // sleep on (the server notices the closed connection only when it writes).
        tokio::time::sleep(hang).await;
        return (StatusCode::SERVICE_UNAVAILABLE, "hung").into_response();
    }
    let (answer, delay, together) = {
        let mut s = lock(&state);
        let count = s.in_flight.entry(webhook_id.clone()).or_default();
        *count += 1;
        let now_in_flight = *count;
        s.most_in_flight = s.most_in_flight.max(now_in_flight);
        s.in_flight_total += 1;
        s.most_in_flight_total = s.most_in_flight_total.max(s.in_flight_total);
        let percent = s.random_failure_percent;
        let answer = s
            .failures_for
            .get_mut(&webhook_id)
            .and_then(VecDeque::pop_front)
            .or_else(|| s.failures.pop_front())
            .or_else(|| (percent > 0 && fastrand::u8(0..100) < percent).then_some((503, None)));
        let status = answer.as_ref().map(|a| a.0).unwrap_or(200);
        s.received.push(recorded(status));
        let together = match s.together.clone() {
            Some(barrier) if s.together_left > 0 => {
                s.together_left -= 1;
                Some(barrier)
            }
            _ => None,
        };
        let delay = s.delay_for.get(&webhook_id).copied().unwrap_or(s.delay);
        (answer, delay, together)
    };
    let _in_flight = InFlight {
        state: Arc::clone(&state),
        webhook_id,
    };
    if let Some((barrier, at_most)) = together {
        // Past the bound the request is answered anyway (the barrier stays short of its count).
        let _ = tokio::time::timeout(at_most, barrier.wait()).await;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match answer {
        None => (StatusCode::OK, "ok").into_response(),
        Some((status, retry_after)) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match retry_after {
                Some(value) => (code, [("retry-after", value)], "failed").into_response(),
                None => (code, "failed").into_response(),
            }
        }
    }
}
