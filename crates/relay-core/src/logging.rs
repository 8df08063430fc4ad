//! Log set-up for every binary: JSON lines through `tracing` (what CloudWatch and
//! `AWS_LAMBDA_LOG_FORMAT: JSON` expect). Fields are chosen at the call sites; no call site
//! logs a body, a token or a secret, and `Secret` prints `***` if one ever slips through.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// JSON logs to stdout, level from `RUST_LOG` (default `info`). Safe to call twice.
pub fn init_json_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = json_lines(filter, std::io::stdout).try_init();
}

/// The one line format, to any writer (tests capture lines through it): a flat JSON object,
/// `{"level":"INFO","message":…,<fields>}`. CloudWatch bills every byte, so no time (Lambda
/// stamps each line), no module path and no `fields` wrapper; metric filters read `$.message`.
pub fn json_lines<W>(filter: EnvFilter, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(filter)
        .with_current_span(false)
        .with_target(false)
        .without_time()
        .with_writer(writer)
        .finish()
}
