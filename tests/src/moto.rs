//! moto for the integration tests: the shared server `scripts/test.sh` starts (found through
//! `RELAY_TEST_MOTO_URL`), fresh FIFO queues and tables with unique names per test, and a
//! private server a test may kill to stage a queue outage.

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The template's maxReceiveCount for the queue's redrive policy.
pub const MAX_RECEIVE_COUNT: u32 = 5;

/// The shared moto server's URL. Panics (never skips) when the test was not started by
/// `scripts/test.sh`, which installs and starts moto.
pub fn moto_endpoint() -> String {
    match std::env::var("RELAY_TEST_MOTO_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "RELAY_TEST_MOTO_URL is not set: these tests need a moto server. \
             Run scripts/test.sh (it installs moto into .venv-moto, starts it and sets the variable)"
        ),
    }
}

/// The SDK configuration for the shared moto server: exactly what the functions build
/// (`relay_aws::sdk_config()`), which finds moto through `AWS_ENDPOINT_URL`.
pub async fn moto_config() -> SdkConfig {
    // Fail with the clear message before the SDK fails with a connection error.
    let _ = moto_endpoint();
    relay_aws::sdk_config().await
}

/// Stores a SecureString in the shared moto server's SSM, as a deployment stores a secret.
pub async fn put_secure_string(name: &str, value: &str) {
    let client = aws_sdk_ssm::Client::new(&moto_config().await);
    client
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("moto put_parameter {name}: {e:?}"));
}

/// An SQS client with the functions' configuration, aimed at `endpoint` (a private server).
/// Set on the service config: `AWS_ENDPOINT_URL` in the environment outranks an endpoint set
/// on the shared `SdkConfig`.
pub async fn sqs_client_for(endpoint: &str) -> aws_sdk_sqs::Client {
    let config = relay_aws::sdk_config().await;
    aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&config)
            .endpoint_url(endpoint)
            .build(),
    )
}

/// A DynamoDB client with the functions' configuration, aimed at `endpoint`.
pub async fn dynamo_client_for(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = relay_aws::sdk_config().await;
    aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&config)
            .endpoint_url(endpoint)
            .build(),
    )
}

/// A name no other test (in this or another test binary) uses: prefix, process, counter, time.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A FIFO queue and its FIFO dead-letter queue, as the template creates them.
#[derive(Clone, Debug)]
pub struct TestQueues {
    pub queue_url: String,
    pub dlq_url: String,
}

/// Creates a fresh FIFO queue whose redrive policy moves a message to a fresh FIFO DLQ after
/// `max_receive_count` receives.
pub async fn create_fifo_queues(sqs: &aws_sdk_sqs::Client, max_receive_count: u32) -> TestQueues {
    let base = unique_name("relay");
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{base}-dlq.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .expect("create DLQ on moto")
        .queue_url
        .expect("DLQ url");
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("DLQ attributes")
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("DLQ arn");
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": max_receive_count.to_string(),
    });
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("{base}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::VisibilityTimeout, "30")
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .expect("create queue on moto")
        .queue_url
        .expect("queue url");
    TestQueues { queue_url, dlq_url }
}

/// Creates a fresh table with the template's shape: `pk`/`sk` strings, TTL on `expires_at`.
pub async fn create_table(ddb: &aws_sdk_dynamodb::Client) -> String {
    let table = unique_name("relay-table");
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("attribute definition")
    };
    let key = |name: &str, key_type: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(key_type)
            .build()
            .expect("key schema")
    };
    ddb.create_table()
        .table_name(&table)
        .attribute_definitions(attribute("pk"))
        .attribute_definitions(attribute("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create table on moto");
    ddb.update_time_to_live()
        .table_name(&table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(relay_aws::dynamo::TTL_ATTRIBUTE)
                .build()
                .expect("ttl spec"),
        )
        .send()
        .await
        .expect("enable TTL on moto");
    table
}

/// A private moto server on its own free port, for tests that stop it (a queue outage).
/// Killed on drop.
pub struct MotoServer {
    child: Option<Child>,
    endpoint: String,
}

impl MotoServer {
    /// Starts `RELAY_TEST_MOTO_BIN` on 127.0.0.1 and waits (bounded) until it accepts.
    pub fn spawn() -> MotoServer {
        let bin = match std::env::var("RELAY_TEST_MOTO_BIN") {
            Ok(bin) if !bin.trim().is_empty() => bin,
            _ => panic!(
                "RELAY_TEST_MOTO_BIN is not set: run scripts/test.sh (it exports the moto_server path)"
            ),
        };
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let mut server = MotoServer {
            child: Some(child),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // 200 x 50 ms: moto starts in well under a second; 10 s means it is broken.
        for _ in 0..200 {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return server;
            }
            if let Some(Ok(Some(status))) = server.child.as_mut().map(Child::try_wait) {
                panic!("private moto_server exited during start-up: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server.kill();
        panic!("private moto_server did not accept connections on {addr} within 10 s");
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Stops the server and waits for it to exit: the port then refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The consumer's ports on moto, as the consumer Lambda wires them: one DynamoDB table for
/// every store and a fresh FIFO queue with its DLQ. Deliveries are recorded in the attempt
/// log (the production default keeps failures only, held by cost_model.rs and
/// contract_moto.rs) because the shared cases read each event's whole history back.
pub async fn consumer_ports() -> (
    relay_core::consume::ConsumerPorts,
    std::sync::Arc<relay_aws::sqs::SqsQueue>,
) {
    use relay_aws::dynamo::DynamoStore;
    use relay_aws::sqs::SqsQueue;
    use std::sync::Arc;
    let config = moto_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    let table = create_table(&dynamo).await;
    let store = Arc::new(DynamoStore::new(dynamo, table).with_deliveries_recorded(true));
    let sqs = aws_sdk_sqs::Client::new(&config);
    let queues = create_fifo_queues(&sqs, MAX_RECEIVE_COUNT).await;
    let queue = Arc::new(SqsQueue::new(sqs, queues.queue_url, Some(queues.dlq_url)));
    let ports = relay_core::consume::ConsumerPorts {
        queue: queue.clone(),
        dedup: store.clone(),
        snapshots: store.clone(),
        tokens: store.clone(),
        attempts: store.clone(),
        destinations: store,
    };
    (ports, queue)
}
