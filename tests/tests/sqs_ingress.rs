//! Ingress onto SQS FIFO on moto, over the wire: sample Function URL events through the
//! Lambda glue and `Ingress::handle` into `SqsQueue`, read back with a plain SQS client
//! (body, MessageGroupId, MessageDeduplicationId); a stopped or silent queue gives 503 / an
//! error within the SDK timeouts, never a 202 and never a hang.

use aws_sdk_sqs::types::MessageSystemAttributeName;
use integration_tests::contract::sample_event;
use integration_tests::moto::{
    create_fifo_queues, create_table, dynamo_client_for, moto_config, sqs_client_for, unique_name,
    MotoServer, MAX_RECEIVE_COUNT,
};
use relay_aws::dynamo::DynamoStore;
use relay_aws::sqs::SqsQueue;
use relay_aws::OPERATION_TIMEOUT;
use relay_core::config::{AppTokens, RelayConfig};
use relay_core::error::StoreError;
use relay_core::event::{Family, RelayEvent};
use relay_core::ingest::Ingress;
use relay_core::ports::{Claim, DedupStore, Queue};
use relay_lambda::ingest::handle_function_url_request;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Longer than the SDK's own operation timeout: if this fires, the timeouts are not applied.
const HANG_GUARD: Duration = Duration::from_secs(OPERATION_TIMEOUT.as_secs() * 3);

/// The application token of the samples in events/ (see events/README.md).
const SAMPLE_APP_TOKEN: &str = "local-dev-app-token";

fn ingress_on(queue: SqsQueue) -> Ingress {
    let config = RelayConfig {
        b24_app_tokens: AppTokens::parse(SAMPLE_APP_TOKEN).unwrap(),
        ..RelayConfig::default()
    };
    Ingress::new(Arc::new(queue), config)
}

/// Up to 10 messages with their system attributes (group and deduplication ids), straight
/// from SQS rather than through the adapter under test.
async fn receive_with_attributes(
    client: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> aws_sdk_sqs::operation::receive_message::ReceiveMessageOutput {
    client
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .expect("receive from moto")
}

/// A Function URL event from events/, as Lambda would hand it to the ingest function.
fn sample_request(path: &str) -> lambda_http::Request {
    let file = format!("{}/../events/{path}", env!("CARGO_MANIFEST_DIR"));
    let json = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    lambda_http::request::from_str(&json).unwrap_or_else(|e| panic!("{file}: {e}"))
}

async fn post(ingress: &Ingress, path: &str) -> (u16, serde_json::Value) {
    let response = handle_function_url_request(ingress, Family::Deal, sample_request(path)).await;
    let body: serde_json::Value =
        serde_json::from_slice(response.body().as_ref()).expect("JSON answer");
    (response.status().as_u16(), body)
}

#[tokio::test]
async fn a_function_url_event_is_queued_on_sqs_before_202() {
    let config = moto_config().await;
    let client = aws_sdk_sqs::Client::new(&config);
    let queues = create_fifo_queues(&client, MAX_RECEIVE_COUNT).await;
    let ingress = ingress_on(SqsQueue::from_conf(
        &config,
        &queues.queue_url,
        Some(queues.dlq_url),
    ));

    let (status, body) = post(&ingress, "ingest-deal/bitrix24-form.json").await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"]
        .as_str()
        .expect("202 names the envelope id")
        .to_string();

    let out = receive_with_attributes(&client, &queues.queue_url).await;
    assert_eq!(out.messages().len(), 1);
    let message = &out.messages()[0];
    let raw = message.body().unwrap();
    assert!(
        !raw.contains(SAMPLE_APP_TOKEN),
        "no token may enter the queue"
    );
    let event: RelayEvent = serde_json::from_str(raw).expect("body is the envelope");
    assert_eq!(event.id, id);
    assert_eq!(event.event, "ONCRMDEALUPDATE");
    assert_eq!(event.entity_id.as_deref(), Some("7405"));
    let attrs = message.attributes().expect("system attributes");
    assert_eq!(
        attrs[&MessageSystemAttributeName::MessageGroupId],
        "bitrix24#a1b2c3d4e5f60718293a4b5c6d7e8f90#deal#7405"
    );
    let dedup = &attrs[&MessageSystemAttributeName::MessageDeduplicationId];
    assert!(dedup.starts_with(&format!("{id}.")), "{dedup}");
}

#[tokio::test]
async fn ingress_answers_503_once_the_queue_is_down() {
    let mut moto = MotoServer::spawn();
    let client = sqs_client_for(moto.endpoint()).await;
    let queues = create_fifo_queues(&client, MAX_RECEIVE_COUNT).await;
    let ingress = ingress_on(SqsQueue::new(
        client,
        &queues.queue_url,
        Some(queues.dlq_url),
    ));
    let (status, body) = post(&ingress, "ingest-deal/bitrix24-form.json").await;
    assert_eq!(status, 202, "{body}");

    moto.kill();
    let (status, body) =
        tokio::time::timeout(HANG_GUARD, post(&ingress, "ingest-deal/bitrix24-json.json"))
            .await
            .expect("ingress must answer within the SDK timeouts when the queue is down");
    assert_eq!(
        status, 503,
        "an event the queue did not take must not get a 2xx: {body}"
    );
    assert!(body.get("id").is_none());
}

#[tokio::test]
async fn envelopes_arrive_with_their_group_and_dedup_ids() {
    let config = moto_config().await;
    let client = aws_sdk_sqs::Client::new(&config);
    let queues = create_fifo_queues(&client, MAX_RECEIVE_COUNT).await;
    let queue = SqsQueue::from_conf(&config, &queues.queue_url, Some(queues.dlq_url.clone()));
    let portal = unique_name("portal");
    let sent = [
        sample_event(&portal, "7405", 1),
        sample_event(&portal, "7406", 1),
        sample_event(&portal, "7405", 2),
    ];
    for event in &sent {
        queue.send(event).await.expect("send to moto");
    }

    let mut received: HashMap<String, (RelayEvent, String, String)> = HashMap::new();
    for _ in 0..10 {
        if received.len() == sent.len() {
            break;
        }
        let out = receive_with_attributes(&client, &queues.queue_url).await;
        for message in out.messages() {
            let event: RelayEvent =
                serde_json::from_str(message.body().unwrap()).expect("body is the envelope");
            let attrs = message.attributes().expect("system attributes");
            let group = attrs[&MessageSystemAttributeName::MessageGroupId].clone();
            let dedup = attrs[&MessageSystemAttributeName::MessageDeduplicationId].clone();
            received.insert(event.id.clone(), (event, group, dedup));
            client
                .delete_message()
                .queue_url(&queues.queue_url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    assert_eq!(received.len(), sent.len());
    for event in &sent {
        let (body, group, dedup) = &received[&event.id];
        assert_eq!(body, event, "the body is the envelope, unchanged");
        assert_eq!(
            group,
            &format!(
                "bitrix24#{portal}#deal#{}",
                event.entity_id.as_deref().unwrap()
            )
        );
        // The envelope id plus a per-send suffix: identical requests are two messages.
        assert!(
            dedup.starts_with(&format!("{}.", event.id)) && dedup.len() <= 128,
            "{dedup}"
        );
    }
}

#[tokio::test]
async fn a_stopped_queue_is_an_error_not_a_loss() {
    let mut moto = MotoServer::spawn();
    let client = sqs_client_for(moto.endpoint()).await;
    let queues = create_fifo_queues(&client, MAX_RECEIVE_COUNT).await;
    let queue = SqsQueue::new(client, &queues.queue_url, Some(queues.dlq_url));
    let portal = unique_name("portal");
    queue
        .send(&sample_event(&portal, "1", 1))
        .await
        .expect("send while the queue is up");

    moto.kill();
    let outcome = tokio::time::timeout(HANG_GUARD, queue.send(&sample_event(&portal, "1", 2)))
        .await
        .expect("a send to a stopped queue must fail within the SDK timeouts, not hang");
    match outcome {
        Err(StoreError::Unavailable(reason)) => {
            assert!(reason.starts_with("sqs SendMessage"), "{reason}");
            assert!(
                !reason.contains("testing"),
                "no credential in errors: {reason}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stopped_table_is_an_error_for_the_consumer() {
    let mut moto = MotoServer::spawn();
    let client = dynamo_client_for(moto.endpoint()).await;
    let table = create_table(&client).await;
    let store = DynamoStore::new(client, table);
    assert_eq!(
        store.claim("e1", "consumer-a", 2_000, 1_000).await.unwrap(),
        Claim::Acquired
    );

    moto.kill();
    let outcome = tokio::time::timeout(HANG_GUARD, store.claim("e2", "consumer-a", 2_000, 1_000))
        .await
        .expect("a claim on a stopped table must fail within the SDK timeouts");
    assert!(
        matches!(&outcome, Err(StoreError::Unavailable(r)) if r.contains("dedup claim")),
        "{outcome:?}"
    );
}

/// A server that accepts connections and never answers (a network black hole): only the
/// attempt and operation timeouts stop the call.
#[tokio::test]
async fn a_silent_queue_times_out_instead_of_hanging() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: the SDK makes at most a few connections before giving up.
        for _ in 0..16 {
            match listener.accept().await {
                Ok((socket, _)) => held.push(socket),
                Err(_) => break,
            }
        }
    });
    let client = sqs_client_for(&endpoint).await;
    let queue = SqsQueue::new(client, format!("{endpoint}/123456789012/q.fifo"), None);
    let outcome = tokio::time::timeout(HANG_GUARD, queue.send(&sample_event("p", "1", 1)))
        .await
        .expect("the SDK timeouts must end a call to a silent server");
    assert!(
        matches!(&outcome, Err(StoreError::Unavailable(r)) if r.contains("timed out")),
        "{outcome:?}"
    );
    hold.abort();
}

/// An ONCRMDEALUPDATE as Bitrix24 posts it to an app's handler (bitrix24/b24restdocs
/// api-reference/events/index.md: `event`, `data`, `ts`, `auth[...]`), with `token` as its
/// `auth[application_token]`.
fn deal_update_form(member_id: &str, token: &str, ts: u64) -> String {
    format!(
        "event=ONCRMDEALUPDATE&event_handler_id=25&data%5BFIELDS%5D%5BID%5D=7405&ts={ts}\
         &auth%5Bdomain%5D=example.bitrix24.ru\
         &auth%5Bclient_endpoint%5D=https%3A%2F%2Fexample.bitrix24.ru%2Frest%2F\
         &auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2Frest%2F\
         &auth%5Bmember_id%5D={member_id}&auth%5Bapplication_token%5D={token}"
    )
}

/// The family ingest function as the Lambda builds it, on DynamoDB: a portal's stored
/// application token is read once and then trusted from the container's cache, but a wrong
/// token is checked against the table again and refused, and a reinstall's new token is
/// accepted at once (the uninstall's minute is `relay_core`'s ingest test).
#[tokio::test]
async fn a_stored_token_is_read_once_and_a_wrong_one_is_still_refused() {
    use integration_tests::counting::CallLog;
    use relay_core::ingest::IngestRequest;
    use relay_core::ports::{PortalTokens, TokenStore};
    use relay_core::secret::Secret;

    const MEMBER: &str = "5c3f0e4b9a2d4c1e8f7a6b5d4c3e2f1a";
    let sdk = moto_config().await;
    let plain_sqs = aws_sdk_sqs::Client::new(&sdk);
    let queues = create_fifo_queues(&plain_sqs, MAX_RECEIVE_COUNT).await;
    let table = create_table(&aws_sdk_dynamodb::Client::new(&sdk)).await;
    let log = CallLog::new();
    let store = Arc::new(DynamoStore::new(log.dynamodb(&sdk), &table));
    let install = |token: &str| PortalTokens {
        member_id: MEMBER.into(),
        domain: "example.bitrix24.ru".into(),
        application_token: Secret::new(token),
        access_token: Secret::new("access"),
        refresh_token: Secret::new("refresh"),
        expires_at_ms: 0,
        client_endpoint: "https://example.bitrix24.ru/rest/".into(),
        scope: "crm".into(),
        server_endpoint: String::new(),
    };
    store.put(&install("stored-app-token")).await.unwrap();
    let queue = Arc::new(SqsQueue::new(
        plain_sqs.clone(),
        queues.queue_url.clone(),
        None,
    ));
    // No configured tokens: only the stored one can let an event in.
    let ingress =
        relay_lambda::ingest::family_ingress(queue, RelayConfig::default(), Some(store.clone()));
    let mut ts = 1_766_047_124;
    let mut post = |token: &str| {
        ts += 1;
        let body = deal_update_form(MEMBER, token, ts);
        let ingress = &ingress;
        async move {
            let request = IngestRequest {
                family: Family::Deal,
                content_type: Some("application/x-www-form-urlencoded"),
                query: None,
                relay_token_header: None,
                body: body.as_bytes(),
            };
            ingress
                .handle(request, std::time::SystemTime::now())
                .await
                .status
        }
    };
    let token_reads = || {
        log.calls()
            .iter()
            .filter(|c| c.operation == "GetItem")
            .count()
    };

    assert_eq!(post("stored-app-token").await, 202);
    assert_eq!(post("stored-app-token").await, 202);
    assert_eq!(post("stored-app-token").await, 202);
    assert_eq!(token_reads(), 1, "the token is read once, then cached");

    assert_eq!(post("forged-token").await, 401);
    assert_eq!(post("").await, 401);
    assert_eq!(
        token_reads(),
        2,
        "a wrong token reads the table again; an empty one never"
    );

    // Reinstall: a new application token is stored and is accepted at once; the old one,
    // no longer the remembered one, is checked against the table and refused.
    store.put(&install("reinstalled-token")).await.unwrap();
    assert_eq!(post("reinstalled-token").await, 202);
    assert_eq!(post("stored-app-token").await, 401);

    let queued = plain_sqs
        .get_queue_attributes()
        .queue_url(&queues.queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    let count = queued
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages))
        .cloned();
    assert_eq!(
        count.as_deref(),
        Some("4"),
        "only the accepted events are queued"
    );
}
