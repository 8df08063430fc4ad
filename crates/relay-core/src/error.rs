//! Typed errors shared by every stage. They say what went wrong in domain terms; only the
//! edges (ingest reply, SQS batch response, CLI exit) turn them into HTTP or SQS outcomes.

use crate::event::Family;

/// A store or queue (SQS, DynamoDB, SQLite) could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or refused the call; worth retrying later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with something this build cannot read.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Why ingress refused a request. Each maps to one HTTP status in `ingest`.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error(
        "unsupported content type: expected application/x-www-form-urlencoded or application/json"
    )]
    UnsupportedContentType,
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// Deliberately without detail: a caller probing tokens learns nothing.
    #[error("unauthorized")]
    Unauthorized,
    #[error("event {event} belongs to family {expected}, not {got}")]
    WrongFamily {
        event: String,
        expected: Family,
        got: Family,
    },
    #[error("unknown event {0}")]
    UnknownEvent(String),
    /// A Bitrix24 event the catalogue refuses on purpose, or a smart-process type other than
    /// invoices: the message says which and why.
    #[error("{0}")]
    NotTaken(String),
    #[error("queue unavailable")]
    Queue(#[source] StoreError),
    /// `app.info` could not be reached to confirm an ONAPPINSTALL: 503, nothing stored.
    #[error("install verification unavailable")]
    VerifierUnavailable,
    /// The token store (stored application_token per portal) could not be read: the request
    /// may be genuine, so it is not refused as unauthorized but answered 5xx.
    #[error("token store unavailable")]
    TokenStore(#[source] StoreError),
}

/// Why the CRM could not give an entity's current state.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// Rate limit, 5xx, timeout: try again after the delay (if the CRM named one).
    #[error("CRM temporarily unavailable: {reason}")]
    Transient {
        reason: String,
        retry_after: Option<std::time::Duration>,
    },
    /// Bitrix24 429 `OPERATION_TIME_LIMIT`: this one method is blocked for the app or webhook
    /// for minutes (b24restdocs `limits.md`). Not a failure of the event: it waits out
    /// `retry_after` without counting as a failed try where the queue allows it.
    #[error("CRM method {method} is blocked (OPERATION_TIME_LIMIT) for {}s", retry_after.as_secs())]
    MethodBlocked {
        method: String,
        retry_after: std::time::Duration,
    },
    /// Bad credentials that a refresh could not fix, malformed answers, 4xx: retrying won't help.
    #[error("CRM refused: {0}")]
    Permanent(String),
    /// The entity does not exist (any more): forwarded with `entity: null`, not an error.
    #[error("entity not found")]
    NotFound,
    /// Nothing configured or stored to call this CRM portal with: forwarded with
    /// `entity: null` (ARCHITECTURE.md, "The forwarded body").
    #[error("no credentials for {0}")]
    NoCredentials(String),
}

/// Why a forward to the destination did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("destination failed ({reason}); will retry")]
    Retryable {
        status: Option<u16>,
        retry_after: Option<std::time::Duration>,
        reason: String,
    },
    #[error("destination answered {status}; not retried")]
    Permanent { status: u16, reason: String },
    /// 410 Gone: the receiver asked us to stop sending.
    #[error("destination is gone (410); it is disabled until reconfigured")]
    Gone,
}

/// Configuration that cannot work, found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("{0} is required")]
    Missing(&'static str),
}
