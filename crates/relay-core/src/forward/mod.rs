//! The last step of the consumer: POST the enriched event to the user's system, signed per
//! Standard Webhooks, and say what the answer means (done, retry later, give up, stop sending).
//! One idea per module: `signing`, `retry` (back-off, `Retry-After`), `status`, `http`.

mod http;
mod retry;
mod signing;
mod status;

pub use http::{deliver, redact_url, Delivery, RESERVED_HEADERS};
pub use retry::{parse_retry_after, RetrySchedule, DEFAULT_MAX_RECEIVE_COUNT, MAX_RETRY_DELAY};
pub use signing::{Signer, MIN_SIGNING_KEY_BYTES};
pub use status::classify_status;

use std::time::Duration;

/// A receiver that has not answered by then is treated as down (retry), not as a refusal.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
