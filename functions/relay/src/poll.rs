//! `relay poll` and `relay serve --poll-offline`: drain the Bitrix24 offline-event log of every
//! installed portal (or one) onto the queue, with the same `OfflinePoller` as the scheduled
//! Lambda. Works on the embedded store, or on SQS + DynamoDB when the AWS variables are set.

use crate::backend::Backend;
use crate::cli_error::CliError;
use relay_core::compose::ProcessParts;
use relay_core::config::RelayConfig;
use relay_core::lifecycle::offline::{OfflinePoller, PollReport, PortalRef, DEFAULT_PAGE_SIZE};
use relay_core::ports::{Queue, TokenStore};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

#[derive(clap::Args)]
pub struct PollArgs {
    /// Only this portal (its member_id); by default every portal installed in the token store.
    #[arg(long)]
    member_id: Option<String>,
    /// Records per `event.offline.get` page.
    #[arg(long, default_value_t = DEFAULT_PAGE_SIZE)]
    page_size: u32,
}

/// The token store and the queue a poll reads from and writes to.
pub struct PollPorts {
    pub tokens: Arc<dyn TokenStore>,
    pub queue: Arc<dyn Queue>,
}

/// The ports of the backend the environment selects.
pub fn poll_ports(backend: &Backend) -> Result<PollPorts, CliError> {
    match backend {
        Backend::Local(local) => Ok(PollPorts {
            tokens: local.token_store(),
            queue: local.queue(),
        }),
        Backend::Aws {
            sqs: Some(sqs),
            dynamo: Some(dynamo),
        } => Ok(PollPorts {
            tokens: dynamo.clone(),
            queue: sqs.clone(),
        }),
        Backend::Aws { .. } => Err(CliError::Usage(
            "relay poll on AWS needs both RELAY_QUEUE_URL and RELAY_TABLE".into(),
        )),
    }
}

pub async fn run(args: PollArgs, data_dir: &Path) -> Result<(), CliError> {
    crate::logs::init_readable_logs();
    let config = RelayConfig::from_env()?;
    let backend = Backend::from_env(data_dir).await?;
    let PollPorts { tokens, queue } = poll_ports(&backend)?;
    let poller = ProcessParts::new(config, tokens.clone())?
        .offline_poller(queue)
        .with_page_size(args.page_size);
    let results = match args.member_id {
        Some(member_id) => {
            let domain = tokens
                .get(&member_id)
                .await?
                .map(|t| t.domain)
                .filter(|d| !d.is_empty());
            let portal = PortalRef {
                member_id: member_id.clone(),
                domain,
            };
            vec![(
                member_id,
                poller.poll_portal(&portal, relay_core::clock::now()).await,
            )]
        }
        None => poller
            .poll_all(tokens.as_ref(), relay_core::clock::now())
            .await
            .map_err(|e| CliError::Handler(e.to_string()))?,
    };
    if results.is_empty() {
        println!(
            "no installed portal in {}: offline events need app mode (see README.md, section 'Bitrix24: outgoing webhook or app')",
            backend.describe()
        );
        return Ok(());
    }
    let mut failed = 0;
    for (portal, outcome) in &results {
        match outcome {
            Ok(report) => println!("{portal}: {}", describe(report)),
            Err(e) => {
                failed += 1;
                println!("{portal}: failed: {e}");
            }
        }
    }
    if failed > 0 {
        return Err(CliError::Handler(format!(
            "{failed} portal(s) could not be polled"
        )));
    }
    Ok(())
}

fn describe(report: &PollReport) -> String {
    format!(
        "{} record(s) in {} page(s): {} queued and cleared, {} marked with event.offline.error",
        report.fetched, report.pages, report.enqueued, report.marked_error
    )
}

/// Starts the `relay serve` poller when `--poll-offline` asked for it; `wake` is what
/// ONOFFLINEEVENT notifies. The poller shares `parts`' Bitrix24 client with the consumer and
/// app ingress: one rate-limit bucket per portal.
pub fn spawn_serve_poller(
    every_secs: Option<u64>,
    parts: &ProcessParts,
    local: &crate::backend::LocalBackend,
    wake: Arc<Notify>,
    stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let every_secs = every_secs?;
    let poller = parts.offline_poller(local.queue());
    Some(tokio::spawn(poll_every(
        Arc::new(poller),
        local.token_store(),
        Duration::from_secs(every_secs.max(1)),
        wake,
        stop,
    )))
}

/// `relay serve --poll-offline`: polls every installed portal every `every`, and at once when
/// `wake` is notified (ONOFFLINEEVENT), until `stop` turns true.
pub async fn poll_every(
    poller: Arc<OfflinePoller>,
    tokens: Arc<dyn TokenStore>,
    every: Duration,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match poller
            .poll_all(tokens.as_ref(), relay_core::clock::now())
            .await
        {
            Ok(results) => {
                for (portal, outcome) in results {
                    match outcome {
                        Ok(report) if report.fetched > 0 => {
                            tracing::info!(%portal, "offline poll: {}", describe(&report))
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(%portal, error = %e, "offline poll failed"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "offline poll: token store unavailable"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = wake.notified() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}
