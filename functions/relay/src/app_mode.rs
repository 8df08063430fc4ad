//! `relay serve` in Bitrix24 app mode: ingress accepts the application tokens stored at
//! install, hands the app family to the lifecycle (installs confirmed by `app.info`), and
//! ONOFFLINEEVENT wakes the `--poll-offline` loop. Built by `relay_core::compose`.

use crate::backend::LocalBackend;
use relay_core::compose::{AppStores, ProcessParts};
use relay_core::ingest::Ingress;
use relay_core::lifecycle::offline::NotifyWake;
use std::sync::Arc;
use tokio::sync::Notify;

pub fn serve_ingress(
    backend: &LocalBackend,
    parts: &ProcessParts,
    offline_wake: Arc<Notify>,
) -> Ingress {
    parts.app_ingress(
        backend.queue(),
        AppStores {
            tokens: backend.token_store(),
            snapshots: backend.snapshot_store(),
            bind_plans: backend.bind_plan_store(),
        },
        true,
        Some(Arc::new(NotifyWake(offline_wake))),
    )
}
