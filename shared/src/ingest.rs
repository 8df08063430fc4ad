//! Transport-free ingress: (family, content type, query, headers, body) -> reply.
//! The Lambda entrypoints and `relay serve` both call `Ingress::handle`; it parses, verifies,
//! routes, strips secrets, builds the envelope and answers only after the queue has it.
//! (Interface fixed; the body is written by the ingress issue.)

use crate::config::RelayConfig;
use crate::event::Family;
use crate::ports::Queue;
use std::sync::Arc;
use std::time::SystemTime;

/// Bodies above this get 413 before anything is parsed.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What ingress needs of an HTTP request, whatever carried it.
#[derive(Clone, Copy, Debug)]
pub struct IngestRequest<'a> {
    /// The family of the URL that was called (`/deal`, `ingest-deal`).
    pub family: Family,
    pub content_type: Option<&'a str>,
    /// Raw query string without `?` (SalesMan's `token=`).
    pub query: Option<&'a str>,
    /// Value of the `X-Relay-Token` header.
    pub relay_token_header: Option<&'a str>,
    pub body: &'a [u8],
}

/// Status and JSON body: `{"id": "<envelope id>"}` on 202, `{"error": "..."}` otherwise
/// (422 adds `"family"`: the family whose URL takes the event).
#[derive(Clone, Debug, PartialEq)]
pub struct IngestReply {
    pub status: u16,
    pub body: serde_json::Value,
}

pub struct Ingress {
    queue: Arc<dyn Queue>,
    #[allow(dead_code)]
    config: RelayConfig,
}

impl Ingress {
    pub fn new(queue: Arc<dyn Queue>, config: RelayConfig) -> Self {
        Ingress { queue, config }
    }

    pub async fn handle(&self, req: IngestRequest<'_>, now: SystemTime) -> IngestReply {
        let _ = (&self.queue, req, now);
        IngestReply {
            status: 501,
            body: serde_json::json!({"error": "not implemented yet"}),
        }
    }
}
