//! `relay dead-letters`: the events parked in the embedded dead-letter table, with why, so a
//! user can pick what to `relay replay --id`. (On AWS the DLQ is read with the SQS console.)

use crate::backend::LocalBackend;
use crate::cli_error::CliError;
use relay_core::consume::DeliveryMessage;
use relay_core::event::RelayEvent;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

pub async fn run(data_dir: &Path) -> Result<(), CliError> {
    let backend = LocalBackend::open(data_dir)?;
    let letters = backend.polling_queue().list_dead_letters().await?;
    if letters.is_empty() {
        println!("no dead letters in {}", backend.data_dir().display());
        return Ok(());
    }
    for letter in &letters {
        let parked =
            UNIX_EPOCH + Duration::from_millis(u64::try_from(letter.parked_at_ms).unwrap_or(0));
        let (id, what) = match serde_json::from_str::<RelayEvent>(&letter.body) {
            Ok(ev) => (
                ev.id,
                format!(
                    "{} {} entity={}",
                    ev.family,
                    ev.event,
                    ev.entity_id.as_deref().unwrap_or("-")
                ),
            ),
            Err(_) => match DeliveryMessage::from_body(&letter.body) {
                // One destination's share of a fanned-out event.
                Some(queued) => (
                    queued.id,
                    format!(
                        "{} delivery: route {} -> {}",
                        queued.family, queued.route, queued.target
                    ),
                ),
                None => (
                    letter.message_id.clone(),
                    "(unreadable envelope)".to_string(),
                ),
            },
        };
        println!(
            "{}  {id}  {what}  reason: {}",
            humantime::format_rfc3339_seconds(parked),
            letter.reason
        );
    }
    println!(
        "{} dead letter(s); `relay replay --all` or `--id <id>` moves them back",
        letters.len()
    );
    Ok(())
}
