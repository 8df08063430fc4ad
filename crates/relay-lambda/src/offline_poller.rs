//! Lambda glue for the offline poller: an EventBridge schedule (any JSON; its content does
//! not matter) -> `OfflinePoller::poll_all` over every installed portal -> a summary.
//! Clients are built once per container; the schedule is the only trigger.

use crate::resources::{process_parts, FunctionResources};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use relay_core::lifecycle::offline::OfflinePoller;
use relay_core::ports::TokenStore;
use serde_json::{json, Value};
use std::sync::Arc;

/// One scheduled run: drains every portal in the token store. Errs (so the Lambda's error
/// metric and alarm see it) when a portal could not be polled, after trying all of them.
pub async fn handle_schedule(
    poller: &OfflinePoller,
    tokens: &dyn TokenStore,
    event: LambdaEvent<Value>,
) -> Result<Value, Error> {
    let _ = event.payload;
    let results = poller.poll_all(tokens, relay_core::clock::now()).await?;
    let (mut enqueued, mut marked_error) = (0, 0);
    let mut failed = Vec::new();
    for (portal, outcome) in &results {
        match outcome {
            Ok(report) => {
                enqueued += report.enqueued;
                marked_error += report.marked_error;
            }
            Err(_) => failed.push(portal.clone()),
        }
    }
    let summary = json!({"portals": results.len(), "enqueued": enqueued,
        "marked_error": marked_error, "failed_portals": failed});
    if failed.is_empty() {
        Ok(summary)
    } else {
        Err(format!(
            "offline poll failed for {} portal(s): {summary}",
            failed.len()
        )
        .into())
    }
}

/// Runs the offline-poller function: builds the SDK clients, the token store and the poller
/// (through `relay_core::compose`) once, then polls on every scheduled invocation.
pub async fn run() -> Result<(), Error> {
    relay_core::logging::init_json_logs();
    let resources = FunctionResources::from_env().await?;
    let store = resources.require_store()?;
    let poller =
        Arc::new(process_parts(resources.config, store.clone())?.offline_poller(resources.queue));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let poller = Arc::clone(&poller);
        let store = Arc::clone(&store);
        async move { handle_schedule(&poller, store.as_ref(), event).await }
    }))
    .await
}
