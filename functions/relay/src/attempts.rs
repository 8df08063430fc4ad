//! `relay attempts <id>`: every delivery attempt of one event, oldest first, so a user can
//! see why an event did not arrive (status, latency, error), from the embedded store or, when
//! RELAY_TABLE is set, from DynamoDB.

use crate::backend::Backend;
use crate::cli_error::CliError;
use relay_core::ports::Attempt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// DynamoDB's attempt log keeps what went wrong, not each delivery (a write per event).
pub const AWS_KEEPS_FAILURES_ONLY: &str = "note: on AWS only failed attempts are kept; a \
    delivery is the consumer's \"delivered\" log line (event_id, webhook_id, status)";

#[derive(clap::Args)]
pub struct AttemptsArgs {
    /// The envelope id (the `id` of a 202 answer, the `webhook-id` header of a forward).
    id: String,
}

pub async fn run(args: AttemptsArgs, data_dir: &Path) -> Result<(), CliError> {
    let backend = Backend::from_env(data_dir).await?;
    let attempts = backend.attempt_log()?.list(&args.id).await?;
    if attempts.is_empty() {
        println!(
            "no attempts recorded for {} ({})",
            args.id,
            backend.describe()
        );
    } else {
        println!("attempts for {} ({}):", args.id, backend.describe());
        for attempt in &attempts {
            println!("{}", attempt_line(attempt));
        }
    }
    if matches!(backend, Backend::Aws { .. }) {
        println!("{AWS_KEEPS_FAILURES_ONLY}");
    }
    Ok(())
}

/// `2026-11-23T19:00:00.123Z  delivered    200     35 ms  https://…  route won-deals  error`
pub fn attempt_line(attempt: &Attempt) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(attempt.at_ms).unwrap_or(0));
    let status = attempt
        .status
        .map_or_else(|| "-".to_string(), |s| s.to_string());
    let mut line = format!(
        "  {}  {:<11} {:>4} {:>7} ms  {}",
        humantime::format_rfc3339_millis(at),
        attempt.outcome.as_str(),
        status,
        attempt.latency_ms,
        attempt.destination,
    );
    if let Some(route) = &attempt.route {
        line.push_str("  route ");
        line.push_str(route);
    }
    if let Some(error) = &attempt.error {
        line.push_str("  ");
        line.push_str(error);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::ports::AttemptOutcome;

    #[test]
    fn attempt_line_shows_time_outcome_status_latency_destination_and_error() {
        let line = attempt_line(&Attempt {
            event_id: "e1".into(),
            at_ms: 1_766_047_124_123,
            destination: "http://127.0.0.1:9/hook".into(),
            status: Some(400),
            latency_ms: 35,
            outcome: AttemptOutcome::DeadLetter,
            error: Some("destination answered 400".into()),
            route: Some("won-deals".into()),
        });
        for part in [
            "2025-12-18T08:38:44.123Z",
            "dead_letter",
            "400",
            "35 ms",
            "http://127.0.0.1:9/hook",
            "answered 400",
            "route won-deals",
        ] {
            assert!(line.contains(part), "{line} lacks {part}");
        }
    }
}
