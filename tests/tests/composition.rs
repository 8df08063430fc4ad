//! The composition root (`relay_core::compose`) is the one place the Lambdas, `relay serve` and
//! `relay invoke` get their parts from. These cases pin the two drifts it replaced: a consumer
//! built without Bitrix24 credentials that dropped the client (so stored portal tokens went
//! unused on one caller and used on another), and a `relay serve --poll-offline` that built a
//! second Bitrix24 client, giving each portal two rate-limit buckets.

use integration_tests::memory::MemoryStore;
use relay_core::compose::{AppStores, ProcessParts};
use relay_core::config::RelayConfig;
use relay_core::routes::Routes;
use std::sync::Arc;

#[test]
fn without_credentials_the_consumer_still_holds_the_process_bitrix24_client() {
    // No webhook URL and no OAuth app: only tokens an install stored could authenticate.
    let config = RelayConfig::default();
    assert!(config.b24_webhook_url.is_none() && config.b24_client_secret.is_none());
    let store = MemoryStore::new();
    let parts = ProcessParts::new(config.clone(), store.clone()).expect("parts");
    let client = parts.bitrix24();
    let holders = Arc::strong_count(&client);

    let consumer = parts.consumer(store.ports(), Routes::implicit(&config));

    assert_eq!(
        Arc::strong_count(&client),
        holders + 1,
        "the consumer must enrich through the process's Bitrix24 client, credentials or not"
    );
    drop(consumer);
    assert_eq!(Arc::strong_count(&client), holders);
}

#[test]
fn consumer_poller_and_app_ingress_share_one_bitrix24_client() {
    let config = RelayConfig::default();
    let store = MemoryStore::new();
    let parts = ProcessParts::new(config.clone(), store.clone()).expect("parts");
    let client = parts.bitrix24();
    let holders = Arc::strong_count(&client);

    // What `relay serve --poll-offline` builds: consumer, poller, app ingress (whose bind-plan
    // rebind calls Bitrix24 too); and the app Lambda's inline ONOFFLINEEVENT poll.
    let consumer = parts.consumer(store.ports(), Routes::implicit(&config));
    let poller = parts.offline_poller(store.clone());
    let ingress = parts.app_ingress(store.clone(), AppStores::on(store.clone()), true, None);
    let wake = parts.inline_poll_wake(store.clone(), store.clone());

    // Every one holds this client and none a client of its own: one rate-limit bucket per
    // portal in the process.
    assert_eq!(Arc::strong_count(&client), holders + 4);
    drop((consumer, poller, ingress, wake));
    assert_eq!(Arc::strong_count(&client), holders);
}
