//! HTTP face of `relay serve`: `POST /<family>` is that family's Function URL, answered by
//! the same `Ingress::handle` as on Lambda; `GET /healthz` says the process is up. Anything
//! else is a 404 in the same JSON shape as every other error.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use relay_core::error::IngestError;
use relay_core::event::Family;
use relay_core::ingest::{IngestReply, IngestRequest, Ingress, MAX_BODY_BYTES};
use serde_json::json;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The whole body must arrive within this once the head is in; a client that trickles it
/// gets 408 instead of holding a connection and a buffer.
pub const BODY_READ_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct RouteState {
    pub ingress: Arc<Ingress>,
    /// Woken on every 202 so the drain loop picks the event up without waiting out its idle
    /// back-off.
    pub queued: Arc<Notify>,
}

pub fn router(state: RouteState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/{family}", post(ingest))
        .fallback(not_found)
        // The body limit is Ingress's to enforce (413 in its own words): axum's own default
        // (2 MiB, plain text) is switched off and `ingest` reads at most one byte past it.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": "not found: POST /<family> with one of deal, lead, contact, company, requisite, invoice, document, activity, app"}),
    )
}

async fn ingest(
    State(state): State<RouteState>,
    Path(family): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(family) = family.parse::<Family>() else {
        return not_found().await;
    };
    let body = match tokio::time::timeout(BODY_READ_DEADLINE, read_body_capped(body)).await {
        Err(_elapsed) => {
            return json_response(
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "the request body was not sent in time"}),
            )
        }
        Ok(Ok(Some(body))) => body,
        Ok(Ok(None)) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": IngestError::TooLarge { limit: MAX_BODY_BYTES }.to_string()}),
            )
        }
        Ok(Err(_)) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "the request body could not be read"}),
            )
        }
    };
    let relay_token = joined_header(&headers, "x-relay-token");
    let request = IngestRequest {
        family,
        content_type: header_str(&headers, header::CONTENT_TYPE.as_str()),
        query: query.as_deref(),
        relay_token_header: relay_token.as_deref(),
        body: &body,
    };
    let IngestReply { status, body } = state
        .ingress
        .handle(request, relay_core::clock::now())
        .await;
    if status == 202 {
        state.queued.notify_one();
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, body)
}

/// The body, or `None` when it is longer than one byte past `MAX_BODY_BYTES` (a body of
/// exactly that length still reaches Ingress, which answers 413 itself). Reading stops at the
/// cap, so an endless body costs at most that much memory.
async fn read_body_capped(mut body: Body) -> Result<Option<Bytes>, axum::Error> {
    let cap = MAX_BODY_BYTES + 1;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > cap {
            return Ok(None);
        }
        buf.extend_from_slice(&data);
    }
    Ok(Some(Bytes::from(buf)))
}

/// Every value of a repeated header joined with `,`, as a Lambda Function URL hands them to
/// the function: two `X-Relay-Token` headers then never pass as the one that happens to be first.
fn joined_header(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}
