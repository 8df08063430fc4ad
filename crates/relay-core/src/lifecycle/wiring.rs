//! How a `main` turns on app mode: ingress that accepts the stored application tokens and
//! hands the app family to the lifecycle, with installs confirmed by `app.info` on the OAuth
//! server. Used by `relay serve` and by the Lambda glue, so both behave the same.

use crate::config::RelayConfig;
use crate::enrich::bitrix24::Bitrix24Client;
use crate::ingest::Ingress;
use crate::lifecycle::bind::PlanRebind;
use crate::lifecycle::install::{AppInfoVerifier, AppLifecycle, OfflineWake};
use crate::lifecycle::offline::{InlinePollWake, OfflinePoller};
use crate::ports::{BindPlanStore, Queue, SnapshotStore, TokenStore};
use std::sync::Arc;

/// The stores app mode works on: the portals' tokens, the snapshots an uninstall drops, and
/// the bind plans `relay bind` stored.
pub struct AppStores {
    pub tokens: Arc<dyn TokenStore>,
    pub snapshots: Arc<dyn SnapshotStore>,
    pub bind_plans: Arc<dyn BindPlanStore>,
}

impl AppStores {
    /// All three on one store (one DynamoDB table, one SQLite file).
    pub fn on<S>(store: Arc<S>) -> AppStores
    where
        S: TokenStore + SnapshotStore + BindPlanStore + 'static,
    {
        AppStores {
            tokens: store.clone(),
            snapshots: store.clone(),
            bind_plans: store,
        }
    }
}

/// Ingress in app mode. `wake`: what ONOFFLINEEVENT triggers (a notify in `relay serve`,
/// [`inline_poll_wake`] on Lambda); `None` leaves it to the schedule. The stored bind plan is
/// bound again after a confirmed ONAPPUPDATE, on a task of its own when
/// `rebind_in_background` (a long-running `relay serve`; never on Lambda).
pub fn app_mode_ingress(
    queue: Arc<dyn Queue>,
    config: RelayConfig,
    stores: AppStores,
    rebind_in_background: bool,
    http: reqwest::Client,
    wake: Option<Arc<dyn OfflineWake>>,
) -> Ingress {
    let AppStores {
        tokens,
        snapshots,
        bind_plans,
    } = stores;
    let rest = Arc::new(Bitrix24Client::new(http.clone(), &config, tokens.clone()));
    let verifier = AppInfoVerifier::via_oauth_server(
        http,
        &config.b24_oauth_url,
        config.b24_client_id.clone(),
    )
    .allowing_loopback(config.allow_loopback_crm);
    let mut lifecycle = AppLifecycle::new(
        Arc::new(verifier),
        tokens.clone(),
        snapshots,
        config.b24_app_tokens.clone(),
    )
    .with_plan_rebind(Arc::new(
        PlanRebind::new(rest, bind_plans).in_background(rebind_in_background),
    ));
    if let Some(wake) = wake {
        lifecycle = lifecycle.with_offline_wake(wake);
    }
    Ingress::new(queue, config)
        .with_token_store(tokens)
        .with_app_lifecycle(Arc::new(lifecycle))
}

/// Pages one ONOFFLINEEVENT may drain inline: Bitrix24 throttles handlers that answer
/// slowly, and the scheduled poller takes whatever is left.
pub const INLINE_POLL_MAX_PAGES: u32 = 4;

/// Lambda's ONOFFLINEEVENT: the app function drains that portal (a few pages) before it
/// answers.
pub fn inline_poll_wake(
    queue: Arc<dyn Queue>,
    config: &RelayConfig,
    tokens: Arc<dyn TokenStore>,
    http: reqwest::Client,
) -> Arc<dyn OfflineWake> {
    let rest = Arc::new(Bitrix24Client::new(http, config, tokens.clone()));
    Arc::new(InlinePollWake {
        poller: Arc::new(OfflinePoller::new(rest, queue).with_max_pages(INLINE_POLL_MAX_PAGES)),
        tokens,
    })
}
