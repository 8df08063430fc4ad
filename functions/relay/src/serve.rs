//! `relay serve`: every function of the flow in one process on the embedded store. The HTTP
//! routes are the nine Function URLs, the drain loop is the consumer; both call the same
//! `relay-core` code as on Lambda, only the ports differ. Ctrl-C stops intake, then the loop.

use crate::backend::LocalBackend;
use crate::cli_error::CliError;
use crate::drain::{drain_queue, DrainSettings};
use crate::routes::{router, RouteState};
use relay_core::config::RelayConfig;
use relay_core::consume::Consumer;
use relay_core::event::Family;
use relay_core::forward::{redact_url, RetrySchedule};
use relay_core::routes::Routes;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Listen address; port 0 picks a free port (the banner names it).
    #[arg(long, env = "RELAY_ADDR", default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// The consumer's lease (the consumer Lambda's timeout): a killed relay's claims and
    /// messages come back after it (claims) and six times it (messages); the heartbeat renews
    /// both while a batch runs.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    batch_timeout: Duration,
    /// How long one POST to the destination may take before it counts as failed and is retried.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    forward_timeout: Duration,
    /// The first retry delay of a failed delivery; each next one doubles (jittered), up to
    /// `--retry-cap`. The defaults give 42 tries over at least 24 h.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    retry_base: Duration,
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    retry_cap: Duration,
    /// Drain installed portals' Bitrix24 offline-event logs every SECONDS (and on
    /// ONOFFLINEEVENT); off unless given.
    #[arg(long, value_name = "SECONDS")]
    poll_offline: Option<u64>,
    /// Batches processed at once, like concurrent consumer Lambdas. Each works on up to 10 of
    /// its batch's entities side by side, so up to 10 × this many requests go to a destination
    /// at a time; lower it for a destination that cannot take that many.
    /// Order per entity holds whatever the number: the queue hands out one message per entity
    /// at a time. 0 only accepts and queues (a later `relay serve` forwards the backlog).
    /// 10 by default: on two cores (README, Performance) 8 left delivery near half the intake
    /// rate whenever intake ran fast, 16 took the CPU intake needed; more consumers also share
    /// each writer round among more events, so each event costs less.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(0..=64))]
    consumers: u16,
}

pub async fn run(args: ServeArgs, data_dir: &Path) -> Result<(), CliError> {
    crate::logs::init_readable_logs();
    let config = RelayConfig::from_env()?;
    config.check_signing(false)?;
    let routes = relay_aws::routes_source::load_routes(&config).await?;
    let backend = LocalBackend::open(data_dir)?;
    backend.set_snapshot_ttl(config.snapshot_ttl());
    let queued = Arc::new(Notify::new());
    let offline_wake = Arc::new(Notify::new());
    // One set of parts for the whole process: the consumer, the poller and app ingress share
    // one Bitrix24 client, so each portal has one rate-limit bucket.
    let parts = backend.process_parts(config.clone())?;
    let ingress = Arc::new(crate::app_mode::serve_ingress(
        &backend,
        &parts,
        offline_wake.clone(),
    ));
    // Nothing kills a batch here: the heartbeat (every third of the lease) keeps a batch's
    // messages invisible and its claims held for as long as it runs.
    let consumer = Arc::new(
        backend
            .consumer(&parts, routes.clone(), false)
            .with_lease(args.batch_timeout)
            .with_forward_timeout(args.forward_timeout)
            .with_retry_schedule(RetrySchedule {
                base: args.retry_base,
                cap: args.retry_cap,
                ..RetrySchedule::default()
            })
            .with_soft_deadline(),
    );

    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| CliError::io(format!("listening on {}", args.addr), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::io("reading the listen address", e))?;
    print_banner(addr, &config, &routes, &backend);

    let (stop_tx, stop_rx) = watch::channel(false);
    let offline_poller = crate::poll::spawn_serve_poller(
        args.poll_offline,
        &parts,
        &backend,
        offline_wake.clone(),
        stop_rx.clone(),
    );
    let settings = DrainSettings {
        batch_timeout: args.batch_timeout,
    };
    let (drain_runtime, drains) = start_drains(
        args.consumers,
        &backend,
        &consumer,
        &queued,
        &stop_rx,
        settings,
    )?;
    let app = router(RouteState { ingress, queued });
    let served = crate::http_server::serve(listener, app, shutdown_signal()).await;
    println!("relay: stopping: no new requests; finishing the batch in flight");
    let _ = stop_tx.send(true);
    for drain in drains {
        if let Err(err) = drain.await {
            tracing::error!(error = %err, "a consumer task ended abnormally");
        }
    }
    if let Some(poller) = offline_poller {
        let _ = poller.await;
    }
    // Its loops have ended; what is left (idle pooled connections) needs no waiting for, and
    // a runtime cannot be dropped from inside another's task.
    drain_runtime.shutdown_background();
    served.map_err(|e| CliError::io("serving HTTP", e))?;
    println!("relay: stopped");
    Ok(())
}

/// The consumers: `count` drain loops on a runtime of their own (`drain_runtime`).
fn start_drains(
    count: u16,
    backend: &LocalBackend,
    consumer: &Arc<Consumer>,
    queued: &Arc<Notify>,
    stop: &watch::Receiver<bool>,
    settings: DrainSettings,
) -> Result<(tokio::runtime::Runtime, Vec<JoinHandle<()>>), CliError> {
    let runtime = crate::drain_runtime::build()
        .map_err(|e| CliError::io("starting the consumers' threads", e))?;
    let drains = (0..count)
        .map(|_| {
            runtime.spawn(drain_queue(
                backend.embedded_queue(),
                consumer.clone(),
                queued.clone(),
                stop.clone(),
                settings,
            ))
        })
        .collect();
    Ok((runtime, drains))
}

/// The first line (`relay: listening on http://…`) is what scripts and tests wait for.
fn print_banner(addr: SocketAddr, config: &RelayConfig, routes: &Routes, backend: &LocalBackend) {
    let base = format!("http://{addr}");
    println!("relay: listening on {base}");
    println!();
    println!(
        "  Function URLs (Bitrix24: POST as is; SalesMan: add ?token=<RELAY_SALESMAN_SECRET>)"
    );
    for family in Family::ALL {
        println!("    POST {base}/{family}");
    }
    println!("    GET  {base}/healthz");
    println!();
    println!("  Secrets (values never shown):");
    for (name, state) in secret_states(config) {
        println!("    {name:<26} {state}");
    }
    println!();
    println!("  Store:       {} (SQLite)", backend.data_dir().display());
    if !routes.implicit {
        println!("  Routes ({}):", routes.routes.len());
        for line in routes.summary() {
            println!("    {line}");
        }
        println!();
        return;
    }
    let destinations: Vec<String> = Family::ALL
        .into_iter()
        .filter_map(|f| {
            config
                .destination_for(f)
                .map(|url| format!("{f} -> {}", redact_url(url)))
        })
        .collect();
    if destinations.is_empty() {
        println!(
            "  Destination: none set (RELAY_DESTINATION_URL); forwarded events are appended to {}\n               and printed below, one line each",
            backend.outbox_path().display()
        );
    } else {
        println!("  Destinations:");
        for line in destinations {
            println!("    {line}");
        }
    }
    println!();
}

fn secret_states(config: &RelayConfig) -> Vec<(&'static str, String)> {
    let set = |yes: bool, otherwise: &str| {
        if yes {
            "set".to_string()
        } else {
            format!("not set: {otherwise}")
        }
    };
    let tokens = &config.b24_app_tokens;
    vec![
        (
            "RELAY_B24_APP_TOKENS",
            if tokens.is_empty() {
                "not set: every Bitrix24 event is refused (401)".to_string()
            } else {
                format!(
                    "set ({} for any portal, {} per portal)",
                    tokens.any_portal.len(),
                    tokens.per_portal.len()
                )
            },
        ),
        (
            "RELAY_SALESMAN_SECRET",
            set(
                config.salesman_secret.is_some(),
                "every SalesMan event is refused (401)",
            ),
        ),
        (
            "RELAY_B24_WEBHOOK_URL",
            set(
                config.b24_webhook_url.is_some(),
                "without it (or an OAuth app below) Bitrix24 events go out with entity null",
            ),
        ),
        (
            "RELAY_B24_CLIENT_SECRET",
            set(
                config.b24_client_id.is_some() && config.b24_client_secret.is_some(),
                "no OAuth app: installed portals' tokens are not used or refreshed",
            ),
        ),
        (
            "RELAY_SALESMAN_APIKEY",
            set(
                config.salesman_url.is_some()
                    && config.salesman_login.is_some()
                    && config.salesman_apikey.is_some(),
                "SalesMan events are forwarded without entity",
            ),
        ),
        (
            "RELAY_SIGNING_SECRET",
            set(
                config.signing_secret.is_some(),
                "forwarded requests are not signed",
            ),
        ),
    ]
}

async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
