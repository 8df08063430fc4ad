//! The composition root: where every function's parts are built, for the Lambdas
//! (`relay-lambda`), `relay serve` and `relay invoke` alike, so they cannot drift apart. One
//! process gets one outbound HTTP client and one Bitrix24 client (one rate-limit bucket per
//! portal), shared by its consumer, offline poller and app ingress; the caller brings the
//! configuration, the store ports and the routes.

use crate::config::RelayConfig;
use crate::consume::{Consumer, ConsumerPorts};
use crate::enrich::bitrix24::Bitrix24Client;
use crate::error::ConfigError;
use crate::ingest::Ingress;
use crate::lifecycle::bind::PlanRebind;
use crate::lifecycle::install::{AppInfoVerifier, AppLifecycle, OfflineWake};
use crate::lifecycle::offline::{InlinePollWake, OfflinePoller};
use crate::ports::{BindPlanStore, Bitrix24Rest, Queue, SnapshotStore, TokenStore};
use crate::routes::Routes;
use std::sync::Arc;

/// Pages one ONOFFLINEEVENT may drain inline: Bitrix24 throttles handlers that answer
/// slowly, and the scheduled poller takes whatever is left.
pub const INLINE_POLL_MAX_PAGES: u32 = 4;

/// The stores app mode works on: the portals' tokens, the snapshots an uninstall drops, and
/// the bind plans `relay bind` stored.
pub struct AppStores {
    pub tokens: Arc<dyn TokenStore>,
    pub snapshots: Arc<dyn SnapshotStore>,
    pub bind_plans: Arc<dyn BindPlanStore>,
}

impl AppStores {
    /// All three on one store (one DynamoDB table, or the embedded store's `relay.db`).
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

/// What one process builds once and shares: the configuration, the outbound HTTP client and
/// the Bitrix24 client over the portals' token store.
pub struct ProcessParts {
    config: RelayConfig,
    http: reqwest::Client,
    bitrix24: Arc<Bitrix24Client>,
}

impl ProcessParts {
    /// `tokens`: where the Bitrix24 client finds installed portals' OAuth tokens. The client is
    /// built whether or not any credential is configured: a portal without credentials is the
    /// client's answer to give (`NoCredentials`, forwarded without entity), the same on every
    /// caller.
    pub fn new(config: RelayConfig, tokens: Arc<dyn TokenStore>) -> Result<Self, ConfigError> {
        let http = crate::http_client::outbound_client().map_err(|e| ConfigError::Invalid {
            name: "HTTP client",
            reason: e.to_string(),
        })?;
        let bitrix24 = Arc::new(Bitrix24Client::new(http.clone(), &config, tokens));
        Ok(ProcessParts {
            config,
            http,
            bitrix24,
        })
    }

    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The process's one outbound HTTP client (connect timeout, no redirects).
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// The process's one Bitrix24 client, with its per-portal rate limiter.
    pub fn bitrix24(&self) -> Arc<Bitrix24Client> {
        self.bitrix24.clone()
    }

    fn bitrix24_rest(&self) -> Arc<dyn Bitrix24Rest> {
        self.bitrix24.clone()
    }

    /// The consumer on the given ports, delivering along `routes`; it builds its SalesMan
    /// client from the configuration over the shared HTTP client.
    pub fn consumer(&self, ports: ConsumerPorts, routes: Routes) -> Consumer {
        Consumer::new(
            ports,
            self.config.clone(),
            Some(self.bitrix24_rest()),
            self.http(),
        )
        .with_routes(routes)
    }

    /// The offline poller that drains portals' offline-event logs onto `queue`.
    pub fn offline_poller(&self, queue: Arc<dyn Queue>) -> OfflinePoller {
        OfflinePoller::new(self.bitrix24_rest(), queue)
    }

    /// Lambda's ONOFFLINEEVENT: the app function drains that portal (a few pages) before it
    /// answers.
    pub fn inline_poll_wake(
        &self,
        queue: Arc<dyn Queue>,
        tokens: Arc<dyn TokenStore>,
    ) -> Arc<dyn OfflineWake> {
        Arc::new(InlinePollWake {
            poller: Arc::new(
                self.offline_poller(queue)
                    .with_max_pages(INLINE_POLL_MAX_PAGES),
            ),
            tokens,
        })
    }

    /// Ingress in app mode: accepts the stored application tokens and hands the app family to
    /// the lifecycle, with installs confirmed by `app.info` on the OAuth server. `wake`: what
    /// ONOFFLINEEVENT triggers (a notify in `relay serve`, [`Self::inline_poll_wake`] on
    /// Lambda); `None` leaves it to the schedule. The stored bind plan is bound again after a
    /// confirmed ONAPPUPDATE, on a task of its own when `rebind_in_background` (a long-running
    /// `relay serve`; never on Lambda).
    pub fn app_ingress(
        &self,
        queue: Arc<dyn Queue>,
        stores: AppStores,
        rebind_in_background: bool,
        wake: Option<Arc<dyn OfflineWake>>,
    ) -> Ingress {
        let AppStores {
            tokens,
            snapshots,
            bind_plans,
        } = stores;
        let config = &self.config;
        let verifier = AppInfoVerifier::via_oauth_server(
            self.http(),
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
            PlanRebind::new(self.bitrix24_rest(), bind_plans).in_background(rebind_in_background),
        ));
        if let Some(wake) = wake {
            lifecycle = lifecycle.with_offline_wake(wake);
        }
        Ingress::new(queue, config.clone())
            .with_token_store(tokens)
            .with_app_lifecycle(Arc::new(lifecycle))
    }
}
