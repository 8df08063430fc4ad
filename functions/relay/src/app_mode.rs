//! `relay serve` in Bitrix24 app mode: ingress accepts the application tokens stored at
//! install, hands the app family to the lifecycle (installs confirmed by `app.info`), and
//! ONOFFLINEEVENT wakes the `--poll-offline` loop. Built by `relay_core::lifecycle::wiring`.

use crate::backend::{http_client, LocalBackend};
use crate::cli_error::CliError;
use relay_core::config::RelayConfig;
use relay_core::ingest::Ingress;
use relay_core::lifecycle::offline::NotifyWake;
use relay_core::lifecycle::wiring::{app_mode_ingress, AppStores};
use std::sync::Arc;
use tokio::sync::Notify;

pub fn serve_ingress(
    backend: &LocalBackend,
    config: RelayConfig,
    offline_wake: Arc<Notify>,
) -> Result<Ingress, CliError> {
    Ok(app_mode_ingress(
        backend.queue(),
        config,
        AppStores {
            tokens: backend.token_store(),
            snapshots: backend.snapshot_store(),
            bind_plans: backend.bind_plan_store(),
        },
        true,
        http_client()?,
        Some(Arc::new(NotifyWake(offline_wake))),
    ))
}
