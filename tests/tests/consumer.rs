//! The consumer cases (`integration_tests::consumer_cases`) on the in-memory store, plus the
//! Lambda glue on the sample SQS events in `events/consumer/`.

use integration_tests::consumer_cases::{self as cases, Auth, World, REMAINING, T0_MS};
use integration_tests::fake_bitrix24::PortalLimits;
use integration_tests::memory::MemoryStore;
use integration_tests::probe::QueueProbe;
use relay_core::consume::ConsumerPorts;
use relay_core::ports::Bitrix24Rest;
use std::sync::Arc;

async fn memory() -> (ConsumerPorts, Arc<dyn QueueProbe>) {
    let store = MemoryStore::new();
    (store.ports(), store)
}

integration_tests::consumer_case_tests!(memory);

/// A consumer world on `store` with webhook auth and the portal's real limits.
async fn webhook_world(store: &Arc<MemoryStore>) -> World {
    World::new(
        store.ports(),
        store.clone(),
        Auth::Webhook,
        PortalLimits::default(),
    )
    .await
}

fn sample(name: &str) -> aws_lambda_events::event::sqs::SqsEvent {
    let path = format!("{}/../events/consumer/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not an SQS event: {e}"))
}

fn lambda_event(
    event: aws_lambda_events::event::sqs::SqsEvent,
) -> lambda_runtime::LambdaEvent<aws_lambda_events::event::sqs::SqsEvent> {
    let mut context = lambda_runtime::Context::default();
    let deadline = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    context.deadline = deadline
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    lambda_runtime::LambdaEvent::new(event, context)
}

fn failures(response: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

#[tokio::test]
async fn sample_fifo_batch_reports_the_failed_group_only() {
    let store = MemoryStore::new();
    let world = webhook_world(&store).await;
    world.portal.set_entity(
        "deal",
        "7405",
        serde_json::json!({"ID": "7405", "TITLE": "x"}),
    );
    world.portal.set_entity(
        "deal",
        "7406",
        serde_json::json!({"ID": "7406", "TITLE": "y"}),
    );
    let event = sample("sqs-fifo-deal-batch.json");
    let ids: Vec<String> = event
        .records
        .iter()
        .filter_map(|r| r.message_id.clone())
        .collect();
    // The groups go side by side: the failure is the first record's, whichever POST is first.
    let first = event.records[0].body.as_deref().expect("a body");
    let first_id = relay_core::consume::parse_envelope(first)
        .expect("an envelope")
        .id;
    world.destination.fail_next_for(&first_id, 503, None);

    let response =
        relay_lambda::consumer::handle_sqs_event(&world.consumer(), lambda_event(event)).await;

    // Records 1 and 2 share deal 7405's group: 1 failed, so 2 is held back; 3 is delivered.
    assert_eq!(failures(&response), vec![ids[0].clone(), ids[1].clone()]);
    assert_eq!(world.destination.delivered().len(), 1);
    assert_eq!(world.destination.delivered()[0].json()["entity_id"], "7406");
    // The failed message was given a retry delay through its receipt handle.
    let delays = store.delays();
    assert_eq!(delays.len(), 2);
    assert_eq!(delays[0].0, "AQEBexampleReceiptHandle1==");
}

#[tokio::test]
async fn sample_with_a_non_json_body_fails_no_record() {
    let store = MemoryStore::new();
    let world = webhook_world(&store).await;
    world
        .portal
        .set_entity("deal", "7406", serde_json::json!({"ID": "7406"}));
    let response = relay_lambda::consumer::handle_sqs_event(
        &world.consumer(),
        lambda_event(sample("sqs-fifo-malformed.json")),
    )
    .await;
    assert!(failures(&response).is_empty());
    let parked = store.parked().await;
    assert_eq!(parked.len(), 1);
    assert!(parked[0].1.contains("malformed"));
    assert_eq!(
        world.destination.delivered().len(),
        1,
        "the good record of the group went on"
    );
}

#[tokio::test]
async fn without_destination_events_go_to_the_outbox() {
    let store = MemoryStore::new();
    let mut world = webhook_world(&store).await;
    world.config.destination_url = None;
    world.portal.set_entity(
        "deal",
        "1",
        serde_json::json!({"ID": "1", "TITLE": "local"}),
    );
    let consumer = world.consumer().with_outbox(store.clone());
    let event = cases::b24_event(relay_core::event::Family::Deal, "ONCRMDEALUPDATE", "1", 100);
    let report = consumer
        .process_batch(&[cases::message(&event, 1)], REMAINING, T0_MS)
        .await;
    assert!(report.failed.is_empty());
    let outbox = store.outbox();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0]["id"], event.id);
    assert_eq!(outbox[0]["entity"]["TITLE"], "local");
    assert!(world.destination.received().is_empty());
}

#[tokio::test]
async fn without_destination_or_outbox_events_are_parked_not_lost() {
    let store = MemoryStore::new();
    let mut world = webhook_world(&store).await;
    world.config.destination_url = None;
    let event = cases::b24_event(relay_core::event::Family::Deal, "ONCRMDEALDELETE", "1", 100);
    let report = world
        .consumer()
        .process_batch(&[cases::message(&event, 1)], REMAINING, T0_MS)
        .await;
    assert!(report.failed.is_empty());
    let parked = store.parked().await;
    assert_eq!(parked.len(), 1);
    assert!(parked[0].1.contains("no destination"));
}

#[tokio::test]
async fn unusable_signing_secret_holds_events_instead_of_sending_unsigned() {
    let store = MemoryStore::new();
    let mut world = webhook_world(&store).await;
    world.config.signing_secret = Some(relay_core::secret::Secret::new("whsec_***not-base64***"));
    let event = cases::b24_event(relay_core::event::Family::Deal, "ONCRMDEALDELETE", "1", 100);
    let report = world
        .consumer()
        .process_batch(&[cases::message(&event, 1)], REMAINING, T0_MS)
        .await;
    assert_eq!(report.failed.len(), 1);
    assert!(world.destination.received().is_empty());
}

#[tokio::test]
async fn retry_after_from_the_destination_sets_the_visibility_delay() {
    let store = MemoryStore::new();
    let world = webhook_world(&store).await;
    world
        .destination
        .fail_next_with_retry_after(503, 1, Some("120"));
    let event = cases::b24_event(relay_core::event::Family::Deal, "ONCRMDEALDELETE", "1", 100);
    let msg = cases::message(&event, 1);
    let report = world
        .consumer()
        .process_batch(std::slice::from_ref(&msg), REMAINING, T0_MS)
        .await;
    assert_eq!(report.failed, vec![msg.message_id.clone()]);
    assert_eq!(
        store.delays(),
        vec![(msg.receipt.clone(), std::time::Duration::from_secs(120))]
    );
}

/// Hands out a stale token pair on the first read, as a consumer that read the store just
/// before another instance refreshed would have.
struct StaleFirstRead {
    inner: Arc<MemoryStore>,
    stale: std::sync::Mutex<Option<relay_core::ports::PortalTokens>>,
}

#[async_trait::async_trait]
impl relay_core::ports::TokenStore for StaleFirstRead {
    async fn get(
        &self,
        member_id: &str,
    ) -> Result<Option<relay_core::ports::PortalTokens>, relay_core::error::StoreError> {
        let stale = self.stale.lock().unwrap_or_else(|p| p.into_inner()).take();
        match stale {
            Some(tokens) => Ok(Some(tokens)),
            None => relay_core::ports::TokenStore::get(self.inner.as_ref(), member_id).await,
        }
    }
    async fn put(
        &self,
        t: &relay_core::ports::PortalTokens,
    ) -> Result<(), relay_core::error::StoreError> {
        relay_core::ports::TokenStore::put(self.inner.as_ref(), t).await
    }
    async fn delete(&self, m: &str) -> Result<(), relay_core::error::StoreError> {
        relay_core::ports::TokenStore::delete(self.inner.as_ref(), m).await
    }
    async fn list(
        &self,
    ) -> Result<Vec<relay_core::ports::PortalTokens>, relay_core::error::StoreError> {
        relay_core::ports::TokenStore::list(self.inner.as_ref()).await
    }
}

#[tokio::test]
async fn a_refresh_done_elsewhere_is_picked_up_from_the_token_store() {
    let store = MemoryStore::new();
    let mut world = World::new(
        store.ports(),
        store.clone(),
        Auth::OAuth,
        PortalLimits::default(),
    )
    .await;
    world.portal.set_entity(
        "deal",
        "1",
        serde_json::json!({"ID": "1", "TITLE": "raced"}),
    );
    let stale = relay_core::ports::TokenStore::get(store.as_ref(), cases::PORTAL)
        .await
        .expect("tokens")
        .expect("stored");
    // Another consumer refreshes: the portal rotates both tokens and the store has the new pair.
    world.portal.expire_access_token();
    let rotated = world
        .bitrix24_client()
        .call(
            cases::PORTAL,
            "crm.deal.get",
            serde_json::json!({"id": "1"}),
        )
        .await
        .expect("the other consumer's call succeeds after its refresh");
    assert_eq!(rotated.result["TITLE"], "raced");
    assert_eq!(world.portal.state().refreshes, 1);

    world.ports.tokens = Arc::new(StaleFirstRead {
        inner: store.clone(),
        stale: std::sync::Mutex::new(Some(stale)),
    });
    let event = cases::b24_event(relay_core::event::Family::Deal, "ONCRMDEALUPDATE", "1", 100);
    let report = world
        .consumer()
        .process_batch(&[cases::message(&event, 1)], REMAINING, T0_MS)
        .await;
    assert!(
        report.failed.is_empty(),
        "not parked because of the lost refresh race"
    );
    assert_eq!(
        world.destination.delivered()[0].json()["entity"]["TITLE"],
        "raced"
    );
    assert_eq!(world.portal.state().refreshes, 1, "no second rotation");
}

/// The heartbeat of a slow delivery keeps every unfinished message of the batch invisible,
/// whichever group it is in, and leaves alone one another group already handed back: its
/// retry delay stands.
#[tokio::test]
async fn heartbeat_covers_the_unfinished_messages_of_every_group() {
    let store = MemoryStore::new();
    let world = webhook_world(&store).await;
    for id in ["1", "2"] {
        world
            .portal
            .set_entity("deal", id, serde_json::json!({"ID": id, "TITLE": "x"}));
    }
    let family = relay_core::event::Family::Deal;
    let slow = cases::b24_event(family, "ONCRMDEALUPDATE", "1", 100);
    let behind = cases::b24_event(family, "ONCRMDEALUPDATE", "1", 1_000);
    let failing = cases::b24_event(family, "ONCRMDEALUPDATE", "2", 100);
    let lease = std::time::Duration::from_millis(600);
    // Five lease thirds: the slow one's heartbeat beats four times or so.
    world
        .destination
        .hold_answers_to(&slow.id, std::time::Duration::from_millis(1_000));
    world
        .destination
        .fail_next_for(&failing.id, 503, Some("120"));
    let batch = [
        cases::message(&slow, 1),
        cases::message(&failing, 1),
        cases::message(&behind, 1),
    ];
    let report = world
        .consumer()
        .with_lease(lease)
        .process_batch(&batch, REMAINING, T0_MS)
        .await;
    assert_eq!(report.failed, vec![batch[1].message_id.clone()]);
    let delays = store.delays();
    let of = |receipt: &str| -> Vec<std::time::Duration> {
        delays
            .iter()
            .filter(|(r, _)| r == receipt)
            .map(|(_, d)| *d)
            .collect()
    };
    assert!(
        of(&batch[2].receipt).contains(&lease),
        "the message waiting behind the slow one was kept invisible: {delays:?}"
    );
    assert!(of(&batch[0].receipt).contains(&lease));
    assert_eq!(
        of(&batch[1].receipt).last(),
        Some(&std::time::Duration::from_secs(120)),
        "no beat overrode the failed message's retry delay: {delays:?}"
    );
}
