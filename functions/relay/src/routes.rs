//! HTTP face of `relay serve`: `POST /<family>` is that family's Function URL, answered by
//! the same `Ingress::handle` as on Lambda; `GET /healthz` says the process is up. Anything
//! else is a 404 in the same JSON shape as every other error.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use shared::error::IngestError;
use shared::event::Family;
use shared::ingest::{IngestReply, IngestRequest, Ingress, MAX_BODY_BYTES};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::Notify;

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
    let body = match read_body_capped(body).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": IngestError::TooLarge { limit: MAX_BODY_BYTES }.to_string()}),
            )
        }
        Err(_) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "the request body could not be read"}),
            )
        }
    };
    let request = IngestRequest {
        family,
        content_type: header_str(&headers, header::CONTENT_TYPE.as_str()),
        query: query.as_deref(),
        relay_token_header: header_str(&headers, "x-relay-token"),
        body: &body,
    };
    let IngestReply { status, body } = state.ingress.handle(request, SystemTime::now()).await;
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

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}
