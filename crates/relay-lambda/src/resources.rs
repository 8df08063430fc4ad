//! What every function builds once per cold start, outside its handler: the configuration
//! (with secrets from SSM), the SQS queue and the DynamoDB store; and, for the functions that
//! call a CRM or a destination, their parts from `relay_core::compose`. One place, so the
//! three kinds of function cannot disagree on a variable name or a timeout.

use relay_aws::dynamo::DynamoStore;
use relay_aws::sqs::SqsQueue;
use relay_core::compose::{AppStores, ProcessParts};
use relay_core::config::RelayConfig;
use relay_core::error::ConfigError;
use relay_core::ingest::Ingress;
use std::sync::Arc;

pub struct FunctionResources {
    pub config: RelayConfig,
    pub queue: Arc<SqsQueue>,
    /// `None` only where RELAY_TABLE is unset (an ingest function without stored tokens).
    pub store: Option<Arc<DynamoStore>>,
}

impl FunctionResources {
    /// Reads the environment (RELAY_QUEUE_URL is required, RELAY_TABLE optional) and SSM.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let sdk = relay_aws::sdk_config().await;
        let config = relay_aws::secrets::load_config(&sdk).await?;
        let queue_url = config
            .queue_url
            .clone()
            .ok_or(ConfigError::Missing("RELAY_QUEUE_URL"))?;
        let queue = Arc::new(SqsQueue::from_conf(&sdk, queue_url, config.dlq_url.clone()));
        let store = config.table.as_ref().map(|table| {
            Arc::new(DynamoStore::from_conf(&sdk, table).with_snapshot_ttl(config.snapshot_ttl()))
        });
        Ok(FunctionResources {
            config,
            queue,
            store,
        })
    }

    /// The table, for functions that cannot work without it (consumer, poller, app ingress).
    pub fn require_store(&self) -> Result<Arc<DynamoStore>, ConfigError> {
        self.store
            .clone()
            .ok_or(ConfigError::Missing("RELAY_TABLE"))
    }
}

/// The parts of a function that calls out (consumer, poller, app ingress), built by the one
/// composition root (`relay_core::compose`) over the table's token store: a family ingest
/// function never calls out, and its cold start skips building a TLS client it would not use.
pub fn process_parts(
    config: RelayConfig,
    store: Arc<DynamoStore>,
) -> Result<ProcessParts, ConfigError> {
    ProcessParts::new(config, store)
}

/// The app family's ingress on Lambda: app mode on the table, ONOFFLINEEVENT drained inline,
/// both with the process's one Bitrix24 client.
pub fn app_ingress(
    config: RelayConfig,
    queue: Arc<SqsQueue>,
    store: Arc<DynamoStore>,
) -> Result<Ingress, ConfigError> {
    let parts = process_parts(config, store.clone())?;
    let wake = parts.inline_poll_wake(queue.clone(), store.clone());
    Ok(parts.app_ingress(queue, AppStores::on(store), false, Some(wake)))
}

/// The variables a function cannot run without, read from the environment alone (no SDK, no
/// SSM): a function that builds its clients lazily calls this at cold start, so one missing
/// RELAY_QUEUE_URL (or RELAY_TABLE, where `needs_table`) still fails the start with its name
/// instead of the first event.
pub fn check_required_env(needs_table: bool) -> Result<(), ConfigError> {
    let config = RelayConfig::from_env()?;
    if config.queue_url.is_none() {
        return Err(ConfigError::Missing("RELAY_QUEUE_URL"));
    }
    if needs_table && config.table.is_none() {
        return Err(ConfigError::Missing("RELAY_TABLE"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_function_without_its_queue_url_names_the_missing_variable() {
        // No test sets RELAY_QUEUE_URL: a cold start without it must say which name is missing
        // instead of failing later on the first event.
        assert!(std::env::var("RELAY_QUEUE_URL").is_err());
        let error = FunctionResources::from_env()
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(error, "RELAY_QUEUE_URL is required");
    }

    #[test]
    fn the_cold_start_check_names_the_missing_queue_url_before_any_client_exists() {
        assert!(std::env::var("RELAY_QUEUE_URL").is_err());
        for needs_table in [false, true] {
            let error = check_required_env(needs_table)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert_eq!(error, "RELAY_QUEUE_URL is required");
        }
    }
}
