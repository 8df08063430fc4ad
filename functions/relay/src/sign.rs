//! `relay sign`: the Standard Webhooks headers crm-relay would send with a body, signed with
//! RELAY_SIGNING_SECRET by the consumer's own `Signer`, so a user can test their receiver's
//! verification with curl before any CRM event arrives.

use crate::cli_error::CliError;
use relay_core::error::ConfigError;
use relay_core::forward::Signer;
use relay_core::secret::Secret;
use std::io::Read;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct SignArgs {
    /// File with the exact body to sign; stdin when absent.
    body: Option<PathBuf>,
    /// `webhook-id` to sign (default: `msg_test_<timestamp>`).
    #[arg(long)]
    id: Option<String>,
    /// `webhook-timestamp`, Unix seconds (default: now).
    #[arg(long)]
    timestamp: Option<i64>,
    #[arg(long, env = "RELAY_SIGNING_SECRET", hide_env_values = true)]
    signing_secret: Option<String>,
}

pub fn run(args: SignArgs) -> Result<(), CliError> {
    let secret = args
        .signing_secret
        .filter(|s| !s.trim().is_empty())
        .map(Secret::new)
        .ok_or(ConfigError::Missing("RELAY_SIGNING_SECRET"))?;
    let signer = Signer::from_secret(&secret)?;
    let body = read_body(args.body.as_ref())?;
    let timestamp = args
        .timestamp
        .unwrap_or_else(|| relay_core::clock::now_unix_ms() / 1000);
    let id = args.id.unwrap_or_else(|| format!("msg_test_{timestamp}"));
    println!("webhook-id: {id}");
    println!("webhook-timestamp: {timestamp}");
    println!(
        "webhook-signature: {}",
        signer.signature_header(&id, timestamp, &body)
    );
    Ok(())
}

fn read_body(path: Option<&PathBuf>) -> Result<Vec<u8>, CliError> {
    match path {
        Some(path) => {
            std::fs::read(path).map_err(|e| CliError::io(format!("reading {}", path.display()), e))
        }
        None => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .map_err(|e| CliError::io("reading stdin", e))?;
            Ok(body)
        }
    }
}
