//! `relay replay`: moves dead-lettered events back to the queue, all, by envelope id, or those
//! parked since a time. Locally through the embedded queue's redrive; on AWS (RELAY_QUEUE_URL
//! and RELAY_DLQ_URL set) through SQS's own redrive, StartMessageMoveTask.

use crate::backend::Backend;
use crate::cli_error::CliError;
use relay_core::ports::RedriveFilter;
use std::path::Path;
use std::time::UNIX_EPOCH;

#[derive(clap::Args)]
#[group(id = "which", required = true, multiple = false)]
pub struct ReplayArgs {
    /// Every dead letter.
    #[arg(long, group = "which")]
    all: bool,
    /// Only these envelope ids (repeatable).
    #[arg(long = "id", group = "which", num_args = 1..)]
    ids: Vec<String>,
    /// Only those parked at or after this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
    #[arg(long, group = "which", value_parser = parse_since_ms)]
    since: Option<i64>,
}

pub async fn run(args: ReplayArgs, data_dir: &Path) -> Result<(), CliError> {
    let filter = RedriveFilter {
        ids: args.ids,
        since_ms: args.since,
    };
    let _ = args.all; // `--all` is the empty filter; clap makes sure one choice was given
    let backend = Backend::from_env(data_dir).await?;
    println!("{}", backend.redrive(&filter).await?);
    Ok(())
}

fn parse_since_ms(raw: &str) -> Result<i64, String> {
    let at = humantime::parse_rfc3339_weak(raw)
        .map_err(|e| format!("expected RFC 3339 like 2026-11-23T10:00:00Z: {e}"))?;
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "a time before 1970".to_string())?
        .as_millis();
    i64::try_from(ms).map_err(|_| "time out of range".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_parses_rfc3339_to_unix_ms() {
        assert_eq!(
            parse_since_ms("2026-11-23T10:00:00Z"),
            Ok(1_795_428_000_000)
        );
        assert!(parse_since_ms("yesterday").is_err());
    }
}
