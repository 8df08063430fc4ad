//! App mode on the AWS adapters over the wire (moto): the install's tokens land in DynamoDB,
//! online events and the offline drain land on SQS FIFO, where the twins of one change are
//! one message, an update binds the portal's stored plan again, and the uninstall removes
//! the portal's items.

use aws_sdk_sqs::types::MessageSystemAttributeName;
use integration_tests::fake_bitrix24_events::{post_as_bitrix24, FakePortal};
use integration_tests::moto::{create_fifo_queues, create_table, moto_config, MAX_RECEIVE_COUNT};
use relay_aws::dynamo::DynamoStore;
use relay_aws::sqs::SqsQueue;
use relay_core::compose::{AppStores, ProcessParts};
use relay_core::config::RelayConfig;
use relay_core::enrich::bitrix24::{Bitrix24Client, RateLimit};
use relay_core::event::{Family, RelayEvent};
use relay_core::ingest::Ingress;
use relay_core::lifecycle::bind::{bind_all, plan_bindings, urls_from_base};
use relay_core::lifecycle::offline::{OfflinePoller, PortalRef};
use relay_core::ports::{BindPlanStore, TokenStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

const APP_TOKEN: &str = "moto-app-token";

async fn post(ingress: &Ingress, family: Family, document: &serde_json::Value) -> u16 {
    post_as_bitrix24(ingress, family, document).await.status
}

#[tokio::test]
async fn app_mode_on_dynamodb_and_sqs_installs_drains_once_and_uninstalls() {
    let sdk = moto_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queues = create_fifo_queues(&sqs, MAX_RECEIVE_COUNT).await;
    let table = create_table(&aws_sdk_dynamodb::Client::new(&sdk)).await;
    let store = Arc::new(DynamoStore::from_conf(&sdk, &table));
    let queue = Arc::new(SqsQueue::from_conf(
        &sdk,
        &queues.queue_url,
        Some(queues.dlq_url.clone()),
    ));

    let portal = FakePortal::start("motoportal").await;
    // The OAuth server that answers app.info is the fake portal here.
    let config = RelayConfig {
        b24_oauth_url: portal.oauth_url(),
        b24_client_id: Some(portal.client_id.clone()),
        allow_loopback_crm: true,
        ..RelayConfig::default()
    };
    let ingress = ProcessParts::new(config.clone(), store.clone())
        .unwrap()
        .app_ingress(queue.clone(), AppStores::on(store.clone()), false, None);

    portal.issue_access_token("moto-access");
    let mut install = portal.install_body("moto-access", "moto-refresh", APP_TOKEN, 4_000_000_000);
    // The Lambda wiring, like relay serve, ignores the endpoint an install claims.
    install["auth"]["client_endpoint"] = serde_json::json!("http://169.254.169.254/latest/");
    assert_eq!(post(&ingress, Family::App, &install).await, 202);
    let stored = store
        .get("motoportal")
        .await
        .unwrap()
        .expect("tokens in DynamoDB");
    assert_eq!(stored.application_token.expose(), APP_TOKEN);
    assert_eq!(stored.access_token.expose(), "moto-access");
    assert_eq!(stored.client_endpoint, portal.client_endpoint);

    let base_ts = 1_790_000_000;
    for n in 1..=20i64 {
        let body = portal.record_change("ONCRMLEADUPDATE", &n.to_string(), base_ts + n, APP_TOKEN);
        if n % 2 == 1 {
            assert_eq!(post(&ingress, Family::Lead, &body).await, 202);
        }
    }
    let rest = Arc::new(
        Bitrix24Client::new(reqwest::Client::new(), &config, store.clone()).with_rate_limit(
            RateLimit {
                per_second: 1000.0,
                burst: 1000.0,
            },
        ),
    );
    let poller = OfflinePoller::new(rest, queue.clone()).with_page_size(7);
    let report = poller
        .poll_portal(
            &PortalRef {
                member_id: "motoportal".into(),
                domain: Some(portal.domain.clone()),
            },
            SystemTime::now(),
        )
        .await
        .unwrap();
    assert_eq!((report.enqueued, report.cleared, report.pages), (20, 20, 3));
    assert!(portal.offline_records().is_empty());

    // Read the queue dry (bounded). Every send has its own deduplication id, so each
    // online/offline pair is two messages; they share the envelope id, and the consumer's
    // dedup record (not the queue) keeps the second from being forwarded.
    let mut by_id: BTreeMap<String, RelayEvent> = BTreeMap::new();
    let mut receives = 0;
    for _ in 0..30 {
        let out = sqs
            .receive_message()
            .queue_url(&queues.queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive from moto");
        if out.messages().is_empty() {
            break;
        }
        for message in out.messages() {
            receives += 1;
            let event: RelayEvent = serde_json::from_str(message.body().unwrap()).unwrap();
            assert!(!message.body().unwrap().contains(APP_TOKEN));
            assert!(!message.body().unwrap().contains("moto-access"));
            by_id.insert(event.id.clone(), event);
            // Deleted as read: a pair's second copy waits behind the first in its group.
            sqs.delete_message()
                .queue_url(&queues.queue_url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .expect("delete from moto");
        }
    }
    assert_eq!(
        receives, 31,
        "the install, 10 online leads and 20 offline records"
    );
    assert_eq!(by_id.len(), 21);
    let leads = by_id.values().filter(|e| e.family == Family::Lead).count();
    assert_eq!(leads, 20);

    // `relay bind --offline` stored its plan in DynamoDB; the update (which drops the handlers,
    // event-bind.md) binds it again through the portal with the update's own token.
    // Two families keep the plan inside the client's default burst (the ingress's own client).
    let urls = urls_from_base("https://relay.example.com")
        .into_iter()
        .filter(|(family, _)| matches!(family, Family::Deal | Family::App))
        .collect();
    let plan = plan_bindings(&urls, true);
    store.save_plan("motoportal", &plan).await.unwrap();
    let bind_rest = Bitrix24Client::new(reqwest::Client::new(), &config, store.clone())
        .with_rate_limit(RateLimit {
            per_second: 1000.0,
            burst: 1000.0,
        });
    bind_all(&bind_rest, "motoportal", &plan).await.unwrap();
    let update = portal.update_app("moto-access-2", "moto-refresh-2", APP_TOKEN, 4_000_000_000);
    assert!(portal.bound().is_empty());
    assert_eq!(post(&ingress, Family::App, &update).await, 202);
    let rebound: std::collections::BTreeSet<_> = portal
        .bound()
        .into_iter()
        .map(|r| (r.event, r.offline))
        .collect();
    let planned: std::collections::BTreeSet<_> =
        plan.iter().map(|b| (b.event.clone(), b.offline)).collect();
    assert_eq!(rebound, planned);
    assert_eq!(portal.bound().len(), plan.len());
    assert_eq!(
        store
            .get("motoportal")
            .await
            .unwrap()
            .unwrap()
            .access_token
            .expose(),
        "moto-access-2"
    );

    let uninstall = serde_json::json!({"event": "ONAPPUNINSTALL", "data": {"CLEAN": "0"},
        "ts": "1790000100", "auth": {"member_id": "motoportal", "application_token": APP_TOKEN}});
    assert_eq!(post(&ingress, Family::App, &uninstall).await, 202);
    assert!(store.get("motoportal").await.unwrap().is_none());
    assert!(store.load_plan("motoportal").await.unwrap().is_none());
}
