//! Fault injection on the AWS side, over the wire against moto (scripts/test.sh starts it):
//! the queue cut off in the middle of an ingest burst, and a consumer invocation killed in the
//! middle of its batch. Each case asserts what reached the queue or the destination, by id,
//! and prints its figures (`FIGURES …`) for the README. Every wait is bounded.

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use integration_tests::consumer_cases::{b24_event, Auth, World};
use integration_tests::fake_bitrix24::PortalLimits;
use integration_tests::moto::{create_fifo_queues, create_table, moto_config, MAX_RECEIVE_COUNT};
use relay_aws::dynamo::DynamoStore;
use relay_aws::sqs::SqsQueue;
use relay_core::config::{AppTokens, RelayConfig};
use relay_core::consume::ConsumerPorts;
use relay_core::event::{Family, RelayEvent};
use relay_core::ingest::Ingress;
use relay_core::ports::Queue;
use relay_lambda::consumer::handle_sqs_event;
use relay_lambda::ingest::handle_function_url_request;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Every wait in this file ends by then or fails.
const BOUND: Duration = Duration::from_secs(60);

/// A loopback TCP proxy in front of moto that can be cut: while cut it closes new connections
/// at once and drops the open ones, as a network partition or a regional SQS outage looks to
/// the SDK; restored, it forwards again. moto keeps its state, so nothing accepted can vanish
/// behind the test's back.
struct CutProxy {
    endpoint: String,
    cut: watch::Sender<bool>,
}

impl CutProxy {
    async fn start(upstream: String) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let (cut, cut_rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    continue; // dropped: the client sees the connection closed
                }
                let (upstream, mut cut_rx) = (upstream.clone(), cut_rx.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        CutProxy { endpoint, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

fn moto_url() -> String {
    integration_tests::moto::moto_endpoint()
}

/// The functions' SDK configuration aimed at `endpoint` (the proxy), short timeouts kept.
async fn sqs_through(endpoint: &str) -> aws_sdk_sqs::Client {
    let sdk = moto_config().await;
    let config = aws_sdk_sqs::config::Builder::from(&sdk)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// The sample Function URL request of `events/` for deal `entity` at `ts`: each its own event.
fn function_url_request(entity: usize, ts: i64) -> lambda_http::Request {
    let file = format!(
        "{}/../events/ingest-deal/bitrix24-form.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut request: serde_json::Value = serde_json::from_str(&text).expect("sample JSON");
    let body = request["body"]
        .as_str()
        .expect("sample body")
        .replace("%5BID%5D=7405", &format!("%5BID%5D={entity}"))
        .replace("ts=1766047124", &format!("ts={ts}"));
    request["body"] = serde_json::Value::String(body);
    lambda_http::request::from_str(&request.to_string()).expect("a Function URL request")
}

/// The queue cut off for the middle third of a burst of ingest calls: every call during the
/// cut is answered 5xx (the CRM keeps the event and the offline log has it), none 2xx; every
/// call answered 202 is on the queue after the queue returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_cut_off_during_an_ingest_burst_answers_5xx_and_loses_nothing_accepted() {
    const PER_PHASE: usize = 30;
    let direct = sqs_through(&moto_url()).await;
    let queues = create_fifo_queues(&direct, MAX_RECEIVE_COUNT).await;
    let proxy = CutProxy::start(moto_url()).await;
    let queue = SqsQueue::new(
        sqs_through(&proxy.endpoint).await,
        &queues.queue_url,
        Some(queues.dlq_url.clone()),
    );
    let config = RelayConfig {
        b24_app_tokens: AppTokens::parse("local-dev-app-token").unwrap(),
        ..RelayConfig::default()
    };
    let ingress = Ingress::new(Arc::new(queue), config);
    let ts = 1_795_900_000i64;

    let mut statuses: BTreeMap<&str, Vec<u16>> = BTreeMap::new();
    let mut accepted = BTreeSet::new();
    for (phase, cut) in [("before", false), ("cut", true), ("after", false)] {
        proxy.set_cut(cut);
        for i in 0..PER_PHASE {
            let n = statuses.values().map(Vec::len).sum::<usize>();
            let request = function_url_request(100 + i % 7, ts + n as i64);
            let response = tokio::time::timeout(
                BOUND,
                handle_function_url_request(&ingress, Family::Deal, request),
            )
            .await
            .expect("ingress answers within the SDK timeouts, never hangs");
            let status = response.status().as_u16();
            if status == 202 {
                let body: serde_json::Value =
                    serde_json::from_slice(response.body().as_ref()).expect("a JSON answer");
                accepted.insert(body["id"].as_str().expect("202 names the id").to_string());
            }
            statuses.entry(phase).or_default().push(status);
        }
    }
    proxy.set_cut(false);

    let queued = drain_ids(&direct, &queues.queue_url).await;
    let cut_5xx = statuses["cut"].iter().filter(|s| **s >= 500).count();
    let lost = accepted.difference(&queued).count();
    eprintln!(
        "FIGURES queue-cut: calls {}, during the cut {PER_PHASE} (5xx {cut_5xx}, 2xx {}), \
         answered 202 {}, on the queue {}, lost {lost}",
        PER_PHASE * 3,
        statuses["cut"]
            .iter()
            .filter(|s| (200..300).contains(*s))
            .count(),
        accepted.len(),
        queued.len()
    );
    assert!(statuses["before"].iter().all(|s| *s == 202), "{statuses:?}");
    assert!(statuses["after"].iter().all(|s| *s == 202), "{statuses:?}");
    assert_eq!(
        cut_5xx, PER_PHASE,
        "every call during the cut is a 5xx: {statuses:?}"
    );
    assert_eq!(lost, 0, "every 202 is on the queue");
    assert_eq!(accepted.len(), 2 * PER_PHASE);
}

/// Every envelope id on the queue, read (and deleted) with a plain SQS client.
async fn drain_ids(client: &aws_sdk_sqs::Client, queue_url: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let until = Instant::now() + BOUND;
    loop {
        let out = client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive from moto");
        if out.messages().is_empty() {
            return ids;
        }
        for message in out.messages() {
            let event: RelayEvent =
                serde_json::from_str(message.body().unwrap()).expect("an envelope");
            ids.insert(event.id);
            client
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .expect("delete");
        }
        assert!(Instant::now() < until, "the queue did not drain");
    }
}

/// Received messages as the Lambda event source mapping hands them to the consumer.
fn sqs_event(messages: &[aws_sdk_sqs::types::Message]) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = messages
        .iter()
        .map(|m| {
            let attrs = m.attributes().cloned().unwrap_or_default();
            let mut record = SqsMessage::default();
            record.message_id = m.message_id().map(str::to_string);
            record.receipt_handle = m.receipt_handle().map(str::to_string);
            record.body = m.body().map(str::to_string);
            record.attributes = HashMap::from([
                (
                    "MessageGroupId".to_string(),
                    attrs
                        .get(&MessageSystemAttributeName::MessageGroupId)
                        .cloned()
                        .unwrap_or_default(),
                ),
                (
                    "ApproximateReceiveCount".to_string(),
                    attrs
                        .get(&MessageSystemAttributeName::ApproximateReceiveCount)
                        .cloned()
                        .unwrap_or_else(|| "1".into()),
                ),
            ]);
            record
        })
        .collect();
    event
}

fn lambda_event(event: SqsEvent) -> lambda_runtime::LambdaEvent<SqsEvent> {
    let mut context = lambda_runtime::Context::default();
    let deadline = std::time::SystemTime::now() + Duration::from_secs(60);
    context.deadline = deadline
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    lambda_runtime::LambdaEvent::new(event, context)
}

/// A consumer invocation killed in the middle of its batch (the handler future dropped while
/// a POST is in flight): the messages it had not finished come back after their visibility
/// and the next invocations deliver each of them; nothing is lost, nothing runs twice at once,
/// and only the POSTs cut off by the kill may be sent again (same webhook-id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_mid_batch_redelivers_its_unfinished_messages_once() {
    const EVENTS: usize = 6;
    let config = moto_config().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    let table = create_table(&dynamo).await;
    let store = Arc::new(DynamoStore::new(dynamo, table));
    let sqs = aws_sdk_sqs::Client::new(&config);
    let queues = create_fifo_queues(&sqs, MAX_RECEIVE_COUNT).await;
    let queue = Arc::new(SqsQueue::new(
        sqs.clone(),
        &queues.queue_url,
        Some(queues.dlq_url.clone()),
    ));
    let ports = ConsumerPorts {
        queue: queue.clone(),
        dedup: store.clone(),
        snapshots: store.clone(),
        tokens: store.clone(),
        attempts: store.clone(),
        destinations: store,
    };
    let world = World::new(ports, queue.clone(), Auth::Webhook, PortalLimits::default()).await;
    let events: Vec<_> = (0..EVENTS)
        .map(|i| {
            let id = (700 + i).to_string();
            world.portal.set_entity(
                "deal",
                &id,
                serde_json::json!({"ID": id, "TITLE": "killed"}),
            );
            b24_event(Family::Deal, "ONCRMDEALUPDATE", &id, 100)
        })
        .collect();
    for event in &events {
        queue.send(event).await.expect("queued");
    }
    world
        .destination
        .hold_answers_for(Duration::from_millis(400));
    // Short leases, so the kill's leftovers come back within seconds.
    let lease = Duration::from_secs(1);

    let batch = receive(&sqs, &queues.queue_url).await;
    assert!(
        batch.len() >= 3,
        "a batch to kill in the middle of: {}",
        batch.len()
    );
    let killed = world.consumer().with_lease(lease);
    let invocation = handle_sqs_event(&killed, lambda_event(sqs_event(&batch)));
    let two_posts_seen = async {
        while world.destination.received().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        _ = invocation => panic!("the invocation finished before the kill"),
        _ = two_posts_seen => {}
    }
    // The invocation is gone (future dropped) with the second POST in flight.
    let at_kill = world.destination.received_webhook_ids();

    let survivor = world.consumer().with_lease(lease);
    let until = Instant::now() + BOUND;
    let mut done = false;
    while !done {
        assert!(
            Instant::now() < until,
            "the unfinished messages did not come back"
        );
        let batch = receive(&sqs, &queues.queue_url).await;
        if batch.is_empty() {
            let delivered: BTreeSet<_> = world
                .destination
                .delivered_webhook_ids()
                .into_iter()
                .collect();
            if events.iter().all(|e| delivered.contains(&e.id)) {
                done = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let response = handle_sqs_event(&survivor, lambda_event(sqs_event(&batch))).await;
        let failed: BTreeSet<_> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        for message in batch
            .iter()
            .filter(|m| !failed.contains(m.message_id().unwrap_or_default()))
        {
            sqs.delete_message()
                .queue_url(&queues.queue_url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .expect("delete as the event source mapping does");
        }
    }

    let mut posts: BTreeMap<String, usize> = BTreeMap::new();
    for id in world.destination.received_webhook_ids() {
        *posts.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = posts.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "FIGURES consumer-killed: events {EVENTS}, POSTs before the kill {}, POSTs {}, lost 0, \
         sent twice {}",
        at_kill.len(),
        posts.values().sum::<usize>(),
        twice.len()
    );
    assert_eq!(posts.len(), EVENTS, "every event arrives: {posts:?}");
    assert_eq!(world.destination.most_concurrent_per_webhook_id(), 1);
    // Only the POSTs cut off by the kill may go out again (the batch's groups run side by
    // side, so every message started by then was in flight), each once more, with its own
    // webhook-id.
    assert!(
        twice.iter().all(|(id, n)| **n == 2 && at_kill.contains(id)),
        "{twice:?} (in flight at the kill: {at_kill:?})"
    );
    assert!(
        events
            .iter()
            .filter(|e| !at_kill.contains(&e.id))
            .all(|e| posts[&e.id] == 1),
        "the messages never started are delivered once: {posts:?}"
    );
}

async fn receive(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .expect("receive from moto");
    let messages = out.messages().to_vec();
    // A consumer with a short timeout has a short visibility: 2 s instead of the test queue's 30.
    for message in &messages {
        sqs.change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(message.receipt_handle().unwrap())
            .visibility_timeout(2)
            .send()
            .await
            .expect("visibility");
    }
    messages
}
