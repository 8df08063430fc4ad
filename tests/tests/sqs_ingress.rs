//! Envelopes through `SqsQueue` to SQS FIFO on moto, read back with a plain SQS client, and
//! what ingress sees when the queue is down: an error, fast, never a hang. (`Ingress::handle`
//! has not landed on the ingress branch yet, so these drive `SqsQueue` directly; the 202/503
//! mapping is the ingress issue's to test on top.)

use aws_sdk_sqs::types::MessageSystemAttributeName;
use integration_tests::contract::sample_event;
use integration_tests::moto::{
    create_fifo_queues, create_table, dynamo_client_for, moto_config, sqs_client_for, unique_name,
    MotoServer, MAX_RECEIVE_COUNT,
};
use shared::aws::dynamo::DynamoStore;
use shared::aws::sqs::SqsQueue;
use shared::aws::OPERATION_TIMEOUT;
use shared::error::StoreError;
use shared::event::RelayEvent;
use shared::ports::{Claim, DedupStore, Queue};
use std::collections::HashMap;
use std::time::Duration;

/// Longer than the SDK's own operation timeout: if this fires, the timeouts are not applied.
const HANG_GUARD: Duration = Duration::from_secs(OPERATION_TIMEOUT.as_secs() * 3);

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
        let out = client
            .receive_message()
            .queue_url(&queues.queue_url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive from moto");
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
        assert_eq!(dedup, &event.id);
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
        store.claim("e1", 2_000, 1_000).await.unwrap(),
        Claim::Acquired
    );

    moto.kill();
    let outcome = tokio::time::timeout(HANG_GUARD, store.claim("e2", 2_000, 1_000))
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
