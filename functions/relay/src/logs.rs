//! Logs of the command line: readable lines on stderr, because stdout carries what the user
//! asked for (the serve banner, outbox lines, command output). Lambda keeps JSON logs.

/// Level from RUST_LOG, default info. Safe to call twice.
pub fn init_readable_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
