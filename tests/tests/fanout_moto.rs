//! Fan-out to several route destinations on DynamoDB over the wire (moto, which
//! scripts/test.sh starts): claims, attempts and destination status in a fresh table per case,
//! with a FIFO queue on a simulated clock. The real SQS path of a delivery message is
//! `delivery_messages_travel_through_sqs_fifo` below.

use integration_tests::consumer_cases::{b24_event, REMAINING, SIGNING_SECRET, T0_MS};
use integration_tests::destination::Destination;
use relay_aws::sqs::SqsQueue;
use relay_core::config::RelayConfig;
use relay_core::consume::{Consumer, ConsumerPorts};
use relay_core::event::Family;
use relay_core::ports::Queue;
use relay_core::routes::{EventPattern, Route, RouteDestination, Routes};
use relay_core::secret::Secret;
use std::sync::Arc;
use std::time::Duration;

async fn moto_ports() -> (ConsumerPorts, Arc<SqsQueue>) {
    integration_tests::moto::consumer_ports().await
}

async fn moto() -> (ConsumerPorts, ()) {
    (moto_ports().await.0, ())
}

integration_tests::fanout_case_tests!(moto);

/// One event, two destinations, through a real FIFO queue: the event's message fans out into
/// two delivery messages (their own groups), and each reaches its destination once.
#[tokio::test]
async fn delivery_messages_travel_through_sqs_fifo() {
    let (ports, queue) = moto_ports().await;
    let (first, second) = (Destination::start().await, Destination::start().await);
    let routes = Routes {
        routes: vec![Route {
            name: "all-deals".into(),
            pattern: EventPattern::from_json(&serde_json::json!({"family": ["deal"]}))
                .expect("pattern"),
            destinations: vec![
                RouteDestination::plain(&first.url()),
                RouteDestination::plain(&second.url()),
            ],
            projection: None,
        }],
        implicit: false,
    };
    let config = RelayConfig {
        signing_secret: Some(Secret::new(SIGNING_SECRET)),
        ..RelayConfig::default()
    };
    let consumer = Consumer::new(ports, config, None, reqwest::Client::new()).with_routes(routes);
    let event = b24_event(Family::Deal, "ONCRMDEALUPDATE", "5", 100);
    queue.send(&event).await.expect("send");

    let mut groups = Vec::new();
    for _ in 0..10 {
        let batch = queue
            .receive(10, Duration::from_secs(30))
            .await
            .expect("receive");
        if batch.is_empty() {
            break;
        }
        groups.extend(batch.iter().map(|m| m.group_id.clone()));
        let report = consumer.process_batch(&batch, REMAINING, T0_MS).await;
        assert!(report.failed.is_empty());
        for message in &batch {
            queue.delete(&message.receipt).await.expect("delete");
        }
    }
    assert_eq!(first.delivered_webhook_ids(), vec![event.id.clone()]);
    assert_eq!(second.delivered_webhook_ids(), vec![event.id.clone()]);
    let entity = event.message_group_id();
    groups.sort();
    assert_eq!(
        groups,
        vec![
            entity.clone(),
            format!("{entity}#all-deals#0"),
            format!("{entity}#all-deals#1"),
        ]
    );
}
