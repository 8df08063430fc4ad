//! Log set-up for every binary: JSON lines through `tracing` (what CloudWatch and
//! `AWS_LAMBDA_LOG_FORMAT: JSON` expect). Fields are chosen at the call sites; no call site
//! logs a body, a token or a secret, and `Secret` prints `***` if one ever slips through.

use tracing_subscriber::EnvFilter;

/// JSON logs, level from `RUST_LOG` (default `info`). Safe to call twice.
pub fn init_json_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_target(false)
        .without_time()
        .try_init();
}
