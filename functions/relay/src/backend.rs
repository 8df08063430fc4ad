//! Which store a command works on: the embedded SQLite store in the data dir, or, when the
//! AWS variables are set (RELAY_QUEUE_URL, RELAY_TABLE), the real SQS queue and DynamoDB table
//! through the same ports. `serve` is always embedded; the other commands follow the env.

use crate::cli_error::CliError;
use crate::printing_outbox::PrintingOutbox;
use relay_aws::dynamo::DynamoStore;
use relay_aws::sqs::SqsQueue;
use relay_core::compose::ProcessParts;
use relay_core::config::RelayConfig;
use relay_core::consume::{Consumer, ConsumerPorts};
use relay_core::ports::{
    AttemptLog, BindPlanStore, PollingQueue, Queue, RedriveFilter, SnapshotStore, TokenStore,
};
use relay_core::routes::Routes;
use relay_local::SqliteStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The embedded store of one data dir, shared by every port of `relay serve`.
pub struct LocalBackend {
    store: Arc<SqliteStore>,
    data_dir: PathBuf,
}

impl LocalBackend {
    pub fn open(data_dir: &Path) -> Result<Self, CliError> {
        relay_local::private_files::create_private_dir(data_dir)
            .map_err(|e| CliError::io(format!("creating {}", data_dir.display()), e))?;
        // Absolute, so the banner and messages name the folder unambiguously.
        let data_dir = std::fs::canonicalize(data_dir)
            .map_err(|e| CliError::io(format!("resolving {}", data_dir.display()), e))?;
        let store = Arc::new(SqliteStore::open(&data_dir)?);
        Ok(LocalBackend { store, data_dir })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// How long a snapshot stays after its last change (`RELAY_SNAPSHOT_TTL_DAYS`).
    pub fn set_snapshot_ttl(&self, ttl: Option<std::time::Duration>) {
        self.store.set_snapshot_ttl(ttl);
    }

    pub fn outbox_path(&self) -> &Path {
        self.store.outbox_path()
    }

    pub fn queue(&self) -> Arc<dyn Queue> {
        self.store.clone()
    }

    pub fn polling_queue(&self) -> Arc<dyn PollingQueue> {
        self.store.clone()
    }

    /// The embedded queue itself, for the drain loop: it deletes a batch in one write.
    pub fn embedded_queue(&self) -> Arc<SqliteStore> {
        self.store.clone()
    }

    pub fn attempt_log(&self) -> Arc<dyn AttemptLog> {
        self.store.clone()
    }

    pub fn token_store(&self) -> Arc<dyn TokenStore> {
        self.store.clone()
    }

    pub fn snapshot_store(&self) -> Arc<dyn SnapshotStore> {
        self.store.clone()
    }

    pub fn bind_plan_store(&self) -> Arc<dyn BindPlanStore> {
        self.store.clone()
    }

    /// The parts `relay serve` shares between its consumer, poller and app ingress, over this
    /// store's tokens.
    pub fn process_parts(&self, config: RelayConfig) -> Result<ProcessParts, CliError> {
        Ok(ProcessParts::new(config, self.token_store())?)
    }

    /// The consumer of `relay serve`: every port on the embedded store, and the outbox file
    /// (with one printed line per event) for families without a destination.
    /// `outbox_to_stderr`: where the outbox lines are printed (stdout for `serve`).
    pub fn consumer(
        &self,
        parts: &ProcessParts,
        routes: Routes,
        outbox_to_stderr: bool,
    ) -> Consumer {
        let ports = ConsumerPorts {
            queue: self.store.clone(),
            dedup: self.store.clone(),
            snapshots: self.store.clone(),
            tokens: self.store.clone(),
            attempts: self.store.clone(),
            destinations: self.store.clone(),
        };
        parts
            .consumer(ports, routes)
            .with_outbox(Arc::new(PrintingOutbox::new(
                self.store.clone(),
                outbox_to_stderr,
            )))
    }
}

/// Token and bind-plan stores, for `relay bind`.
pub type BindStores = (Arc<dyn TokenStore>, Arc<dyn BindPlanStore>);

/// Token, snapshot and bind-plan stores, for app mode.
pub type LifecycleStores = (
    Arc<dyn TokenStore>,
    Arc<dyn SnapshotStore>,
    Arc<dyn BindPlanStore>,
);

/// The store `invoke`, `replay` and `attempts` work on.
pub enum Backend {
    Local(LocalBackend),
    /// Either part may be missing; a command that needs it says which variable to set.
    Aws {
        sqs: Option<Arc<SqsQueue>>,
        dynamo: Option<Arc<DynamoStore>>,
    },
}

impl Backend {
    /// AWS as soon as RELAY_QUEUE_URL or RELAY_TABLE is set (the SDK reads region, endpoint and
    /// credentials from the usual AWS_* variables); the embedded store otherwise.
    pub async fn from_env(data_dir: &Path) -> Result<Self, CliError> {
        let config = RelayConfig::from_env()?;
        if config.queue_url.is_none() && config.table.is_none() {
            return Ok(Backend::Local(LocalBackend::open(data_dir)?));
        }
        let sdk = relay_aws::sdk_config().await;
        Ok(Backend::Aws {
            sqs: config
                .queue_url
                .as_ref()
                .map(|url| Arc::new(SqsQueue::from_conf(&sdk, url, config.dlq_url.clone()))),
            dynamo: config.table.as_ref().map(|table| {
                Arc::new(
                    DynamoStore::from_conf(&sdk, table).with_snapshot_ttl(config.snapshot_ttl()),
                )
            }),
        })
    }

    /// Where the command looked, for its output.
    pub fn describe(&self) -> String {
        match self {
            Backend::Local(local) => format!("embedded store {}", local.data_dir().display()),
            Backend::Aws { sqs, dynamo } => {
                let mut parts = Vec::new();
                if let Some(sqs) = sqs {
                    parts.push(format!("SQS {}", sqs.queue_url()));
                }
                if let Some(dynamo) = dynamo {
                    parts.push(format!("DynamoDB table {}", dynamo.table()));
                }
                parts.join(", ")
            }
        }
    }

    fn sqs(&self, command: &str) -> Result<&Arc<SqsQueue>, CliError> {
        match self {
            Backend::Aws { sqs: Some(sqs), .. } => Ok(sqs),
            _ => Err(CliError::Usage(format!(
                "{command} on AWS needs RELAY_QUEUE_URL (or unset RELAY_TABLE to use the embedded store)"
            ))),
        }
    }

    fn dynamo(&self, command: &str) -> Result<&Arc<DynamoStore>, CliError> {
        match self {
            Backend::Aws {
                dynamo: Some(dynamo),
                ..
            } => Ok(dynamo),
            _ => Err(CliError::Usage(format!(
                "{command} on AWS needs RELAY_TABLE (or unset RELAY_QUEUE_URL to use the embedded store)"
            ))),
        }
    }

    pub fn attempt_log(&self) -> Result<Arc<dyn AttemptLog>, CliError> {
        match self {
            Backend::Local(local) => Ok(local.attempt_log()),
            Backend::Aws { .. } => Ok(self.dynamo("relay attempts")?.clone()),
        }
    }

    /// What `relay bind` reads and writes: the portals' tokens and their bind plans.
    pub fn bind_stores(&self) -> Result<BindStores, CliError> {
        match self {
            Backend::Local(local) => Ok((local.token_store(), local.bind_plan_store())),
            Backend::Aws { .. } => {
                let table = self.dynamo("relay bind")?;
                Ok((table.clone(), table.clone()))
            }
        }
    }

    /// The token and snapshot stores app mode needs (installed portals' tokens; snapshots
    /// dropped on uninstall).
    pub fn lifecycle_stores(&self) -> Result<LifecycleStores, CliError> {
        match self {
            Backend::Local(local) => Ok((
                local.token_store(),
                local.snapshot_store(),
                local.bind_plan_store(),
            )),
            Backend::Aws { .. } => {
                let table = self.dynamo("relay invoke ingest-*")?;
                Ok((table.clone(), table.clone(), table.clone()))
            }
        }
    }

    pub fn queue(&self) -> Result<Arc<dyn Queue>, CliError> {
        match self {
            Backend::Local(local) => Ok(local.queue()),
            Backend::Aws { .. } => Ok(self.sqs("relay invoke ingest-*")?.clone()),
        }
    }

    /// The consumer as the Lambda builds it (through `relay_core::compose`); on the embedded
    /// store with the outbox (its lines on stderr, as stdout carries the handler's response).
    pub fn consumer(&self, config: RelayConfig, routes: Routes) -> Result<Consumer, CliError> {
        match self {
            Backend::Local(local) => {
                Ok(local.consumer(&local.process_parts(config)?, routes, true))
            }
            Backend::Aws { .. } => {
                let queue = self.sqs("relay invoke consumer")?.clone();
                let table = self.dynamo("relay invoke consumer")?.clone();
                let ports = ConsumerPorts {
                    queue,
                    dedup: table.clone(),
                    snapshots: table.clone(),
                    tokens: table.clone(),
                    attempts: table.clone(),
                    destinations: table.clone(),
                };
                Ok(ProcessParts::new(config, table)?.consumer(ports, routes))
            }
        }
    }

    /// Moves dead letters back; says what happened in a sentence.
    pub async fn redrive(&self, filter: &RedriveFilter) -> Result<String, CliError> {
        match self {
            Backend::Local(local) => {
                let moved = local.polling_queue().redrive(filter).await?;
                Ok(format!(
                    "moved {moved} dead letter(s) back to the queue of {}",
                    local.data_dir().display()
                ))
            }
            Backend::Aws { .. } => {
                let sqs = self.sqs("relay replay")?;
                if sqs.dlq_url().is_none() {
                    return Err(CliError::Usage(
                        "relay replay on AWS needs RELAY_DLQ_URL as well as RELAY_QUEUE_URL".into(),
                    ));
                }
                let moved = sqs.redrive_dead_letters(filter).await?;
                Ok(format!(
                    "moved {moved} dead letter(s) back to {}",
                    sqs.queue_url()
                ))
            }
        }
    }
}
