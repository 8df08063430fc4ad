//! How ONOFFLINEEVENT reaches the poller: `relay serve` notifies its poller loop; a Lambda
//! polls that portal inline before it answers. Install calls one of them (`OfflineWake`).

use super::{OfflinePoller, PortalRef};
use crate::lifecycle::install::OfflineWake;
use crate::ports::TokenStore;
use async_trait::async_trait;
use std::sync::Arc;

/// `relay serve`'s wake-up: ONOFFLINEEVENT notifies the poller loop, which polls at once.
pub struct NotifyWake(pub Arc<tokio::sync::Notify>);

#[async_trait]
impl OfflineWake for NotifyWake {
    async fn wake(&self, member_id: &str) {
        let _ = member_id;
        self.0.notify_one();
    }
}

/// Lambda's wake-up: the app function polls that portal before it answers (a Lambda is
/// frozen after its reply, so nothing may run after it). Bounded by the poller's page limit.
pub struct InlinePollWake {
    pub poller: Arc<OfflinePoller>,
    pub tokens: Arc<dyn TokenStore>,
}

#[async_trait]
impl OfflineWake for InlinePollWake {
    async fn wake(&self, member_id: &str) {
        let domain = match self.tokens.get(member_id).await {
            Ok(Some(t)) => Some(t.domain).filter(|d| !d.is_empty()),
            _ => None,
        };
        let portal = PortalRef {
            member_id: member_id.to_string(),
            domain,
        };
        if let Err(e) = self.poller.poll_portal(&portal, crate::clock::now()).await {
            tracing::warn!(portal = %member_id, error = %e, "offline poll on ONOFFLINEEVENT failed; the schedule retries");
        }
    }
}
