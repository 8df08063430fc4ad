//! Bitrix24 fidelity cases: each event kind is read with the method its doc page names and
//! lands in its own snapshot; deletes forward what was deleted; a webhook never reads another
//! portal. Run on every store through `fidelity_case_tests!` (bodies shaped as the docs show).

use crate::consumer_cases::{message, Auth, World, PORTAL, REMAINING, T0_MS};
use crate::fake_bitrix24::PortalLimits;
use crate::probe::QueueProbe;
use relay_core::config::RelayConfig;
use relay_core::consume::{Consumer, ConsumerPorts};
use relay_core::enrich::bitrix24::Bitrix24Client;
use relay_core::event::{entity_type_of, envelope_id, RelayEvent, Source};
use relay_core::parse::bitrix24::parse_bitrix24;
use relay_core::ports::Bitrix24Rest;
use relay_core::secret::Secret;
use serde_json::{json, Value};
use std::sync::Arc;

/// The envelope ingress builds from a delivery of `event` with `data` from `portal`/`domain`.
pub fn delivered(portal: &str, domain: &str, event: &str, data: Value, ts: i64) -> RelayEvent {
    let document = json!({"event": event, "data": data, "ts": ts.to_string(),
        "auth": {"member_id": portal, "domain": domain}});
    let Value::Object(document) = document else {
        unreachable!()
    };
    let parsed = parse_bitrix24(&document).expect("a well-formed delivery");
    let family = relay_core::catalogue::resolve(&parsed.event, &parsed.data)
        .expect("an event the catalogue takes")
        .family;
    RelayEvent {
        v: 1,
        id: envelope_id(Source::Bitrix24, portal, &parsed.event, &parsed.data, ts),
        source: Source::Bitrix24,
        portal: portal.into(),
        domain: Some(domain.into()),
        family,
        entity_type: entity_type_of(Source::Bitrix24, &parsed.event, &parsed.data),
        event: parsed.event,
        entity_id: parsed.entity_id,
        ts,
        received_at: "2026-11-22T10:00:00Z".into(),
        data: parsed.data,
    }
}

fn ours(event: &str, data: Value, ts: i64) -> RelayEvent {
    delivered(PORTAL, &format!("{PORTAL}.bitrix24.test"), event, data, ts)
}

async fn forward(consumer: &Consumer, event: &RelayEvent) {
    let report = consumer
        .process_batch(&[message(event, 1)], REMAINING, T0_MS)
        .await;
    assert!(report.failed.is_empty(), "{} failed", event.event);
}

fn calls(world: &World) -> Vec<String> {
    world.portal.state().calls.clone()
}

/// Requisite 5 and bank detail 5 are different records (on-crm-bank-detail-update.md,
/// crm-requisite-bank-detail-get.md); neither is compared with the other.
pub async fn requisite_and_bank_detail_with_one_id_keep_apart(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, PortalLimits::default()).await;
    world.portal.set_entity(
        "requisite",
        "5",
        json!({"ID": "5", "NAME": "Requisite 5", "RQ_INN": "7700000000"}),
    );
    world
        .portal
        .set_entity("bankdetail", "5", json!({"ID": "5", "NAME": "Bank 5"}));
    let consumer = world.consumer();
    forward(
        &consumer,
        &ours("ONCRMREQUISITEUPDATE", json!({"FIELDS": {"ID": "5"}}), 100),
    )
    .await;
    forward(
        &consumer,
        &ours("ONCRMBANKDETAILUPDATE", json!({"FIELDS": {"ID": "5"}}), 101),
    )
    .await;
    world.portal.set_entity(
        "requisite",
        "5",
        json!({"ID": "5", "NAME": "Requisite 5b", "RQ_INN": "7700000000"}),
    );
    forward(
        &consumer,
        &ours("ONCRMREQUISITEUPDATE", json!({"FIELDS": {"ID": "5"}}), 102),
    )
    .await;
    let bodies = world.destination.delivered_bodies();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[0]["entity_type"], "requisite");
    assert_eq!(bodies[0]["first_seen"], true);
    assert_eq!(bodies[1]["entity_type"], "bankdetail");
    assert_eq!(bodies[1]["entity"]["NAME"], "Bank 5");
    assert_eq!(
        bodies[1]["first_seen"], true,
        "a bank detail is not requisite 5"
    );
    assert_eq!(bodies[1]["changes"], json!([]));
    assert_eq!(bodies[2]["first_seen"], false);
    assert_eq!(bodies[2]["enrichment"], "fetched");
    assert_eq!(
        bodies[2]["changes"],
        json!([{"field": "NAME", "old": "Requisite 5", "new": "Requisite 5b"}])
    );
    assert!(calls(&world).contains(&"crm.requisite.bankdetail.get".to_string()));
}

/// In on-crm-deal-recurring-add.md FIELDS.ID is a recurring-settings row; deal 11 is
/// an unrelated deal and must never be read. EXPOSE names the new deal in FIELDS.DEAL_ID.
pub async fn recurring_events_never_read_an_unrelated_record(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, PortalLimits::default()).await;
    world.portal.set_entity(
        "deal",
        "11",
        json!({"ID": "11", "TITLE": "someone else's deal"}),
    );
    world.portal.set_entity(
        "deal_recurring",
        "11",
        json!({"ID": "11", "DEAL_ID": "6797", "ACTIVE": "Y"}),
    );
    world.portal.set_entity(
        "deal",
        "6799",
        json!({"ID": "6799", "TITLE": "made from template"}),
    );
    world.portal.set_entity(
        "invoice_recurring",
        "4",
        json!({"ID": "4", "INVOICE_ID": "70", "ACTIVE": "Y"}),
    );
    let consumer = world.consumer();
    forward(
        &consumer,
        &ours(
            "ONCRMDEALRECURRINGADD",
            json!({"FIELDS": {"ID": "11", "RECURRING_DEAL_ID": "6797"}}),
            100,
        ),
    )
    .await;
    forward(
        &consumer,
        &ours(
            "ONCRMDEALRECURRINGEXPOSE",
            json!({"FIELDS": {"ID": "9", "RECURRING_DEAL_ID": "6791", "DEAL_ID": "6799"}}),
            101,
        ),
    )
    .await;
    forward(
        &consumer,
        &ours(
            "ONCRMINVOICERECURRINGUPDATE",
            json!({"FIELDS": {"ID": "4", "RECURRING_INVOICE_ID": "70"}}),
            102,
        ),
    )
    .await;
    let bodies = world.destination.delivered_bodies();
    assert_eq!(bodies[0]["entity_type"], "deal_recurring");
    assert_eq!(bodies[0]["entity"]["DEAL_ID"], "6797");
    assert_eq!(bodies[1]["entity_type"], "deal");
    assert_eq!(bodies[1]["entity_id"], "6799");
    assert_eq!(bodies[1]["entity"]["TITLE"], "made from template");
    assert_eq!(bodies[2]["entity_type"], "invoice_recurring");
    assert_eq!(bodies[2]["entity"]["INVOICE_ID"], "70");
    assert!(bodies
        .iter()
        .all(|b| b["entity"]["TITLE"] != "someone else's deal"));
    assert_eq!(
        calls(&world),
        [
            "crm.deal.recurring.get",
            "crm.deal.get",
            "crm.invoice.recurring.get"
        ]
    );
}

/// The base onCrmDynamicItem* names (on-crm-dynamic-item-update.md) with
/// ENTITY_TYPE_ID 31 read `crm.item.get {entityTypeId: 31, id}`; the delete reads nothing,
/// forwards the last snapshot as `previous` with `deleted: true` and forgets it.
pub async fn smart_invoice_base_names_and_delete_forward_previous(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, PortalLimits::default()).await;
    world
        .portal
        .set_entity("item:31", "22", json!({"id": 22, "title": "Invoice 22"}));
    let consumer = world.consumer();
    let fields = json!({"FIELDS": {"ID": "22", "ENTITY_TYPE_ID": "31"}});
    forward(
        &consumer,
        &ours("ONCRMDYNAMICITEMUPDATE", fields.clone(), 100),
    )
    .await;
    forward(
        &consumer,
        &ours("ONCRMDYNAMICITEMDELETE", fields.clone(), 101),
    )
    .await;
    world.portal.set_entity(
        "item:31",
        "22",
        json!({"id": 22, "title": "Invoice 22 again"}),
    );
    forward(
        &consumer,
        &ours(
            "ONCRMDYNAMICITEMADD_31",
            json!({"FIELDS": {"ID": "22"}}),
            102,
        ),
    )
    .await;
    let bodies = world.destination.delivered_bodies();
    assert_eq!(bodies[0]["entity_type"], "smart_invoice");
    assert_eq!(bodies[0]["family"], "invoice");
    assert_eq!(bodies[0]["entity"]["title"], "Invoice 22");
    assert_eq!(bodies[0]["deleted"], false);
    assert_eq!(bodies[1]["deleted"], true);
    assert_eq!(bodies[1]["entity"], Value::Null);
    assert_eq!(bodies[1]["enrichment"], "deleted");
    assert_eq!(bodies[1]["previous"]["title"], "Invoice 22");
    assert_eq!(
        bodies[2]["first_seen"], true,
        "the delete removed the snapshot"
    );
    assert_eq!(bodies[2]["previous"], Value::Null);
    assert_eq!(
        calls(&world),
        ["crm.item.get", "crm.item.get"],
        "a delete asks nothing"
    );
}

/// on-crm-requisite-user-field-update.md: FIELDS.ID is the user field's
/// id; the field's definition is read (crm-requisite-userfield-get.md), not requisite 235.
pub async fn user_field_events_read_the_field_definition(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, PortalLimits::default()).await;
    world.portal.set_entity(
        "requisite",
        "235",
        json!({"ID": "235", "NAME": "not a field"}),
    );
    world.portal.set_entity(
        "userfield:requisite",
        "235",
        json!({"ID": "235", "ENTITY_ID": "CRM_REQUISITE", "FIELD_NAME": "UF_CRM_NEWTECH_v1_STRING"}),
    );
    let consumer = world.consumer();
    let data = json!({"FIELDS": {"ID": 235, "ENTITY_ID": "CRM_REQUISITE", "FIELD_NAME": "NEWTECH_v1_STRING"}});
    forward(&consumer, &ours("onCrmRequisiteUserFieldUpdate", data, 100)).await;
    let bodies = world.destination.delivered_bodies();
    assert_eq!(bodies[0]["entity_type"], "userfield");
    assert_eq!(
        bodies[0]["entity"]["FIELD_NAME"],
        "UF_CRM_NEWTECH_v1_STRING"
    );
    assert_eq!(calls(&world), ["crm.requisite.userfield.get"]);
}

/// on-crm-address-register.md, crm-address-list.md: no FIELDS.ID; the address is
/// found by type and owner, and the unregister forwards it as `previous`.
pub async fn address_events_are_keyed_by_type_and_owner(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::Webhook, PortalLimits::default()).await;
    world.portal.set_entity(
        "address",
        "1-8-3",
        json!({"TYPE_ID": "1", "ENTITY_TYPE_ID": "8", "ENTITY_ID": "3", "CITY": "Kazan"}),
    );
    world.portal.set_entity(
        "address",
        "6-8-3",
        json!({"TYPE_ID": "6", "ENTITY_TYPE_ID": "8", "ENTITY_ID": "3", "CITY": "Moscow"}),
    );
    let consumer = world.consumer();
    let data = json!({"FIELDS": {"TYPE_ID": 1, "ENTITY_TYPE_ID": 8, "ENTITY_ID": 3,
        "ANCHOR_ID": 17192, "ANCHOR_TYPE_ID": 4}});
    forward(&consumer, &ours("onCrmAddressRegister", data.clone(), 100)).await;
    forward(&consumer, &ours("onCrmAddressUnregister", data, 101)).await;
    let bodies = world.destination.delivered_bodies();
    assert_eq!(bodies[0]["entity_type"], "address");
    assert_eq!(bodies[0]["entity_id"], "1-8-3");
    assert_eq!(bodies[0]["entity"]["CITY"], "Kazan");
    assert_eq!(bodies[1]["deleted"], true);
    assert_eq!(bodies[1]["previous"]["CITY"], "Kazan");
    assert_eq!(calls(&world), ["crm.address.list"]);
}

/// One webhook, two portals. Portal B's deal 7407 is never answered with portal A's
/// deal 7407, whether the webhook is given as a `member_id=url` pair or as a bare URL (whose
/// host must then be the event's domain).
pub async fn two_portals_one_webhook_never_cross(ports: ConsumerPorts, probe: Arc<dyn QueueProbe>) {
    let world = World::new(ports, probe, Auth::Webhook, PortalLimits::default()).await;
    world.portal.set_entity(
        "deal",
        "7407",
        json!({"ID": "7407", "TITLE": "portal A's deal"}),
    );
    let consumer = world.consumer();
    let deal = json!({"FIELDS": {"ID": "7407"}});
    forward(&consumer, &ours("ONCRMDEALUPDATE", deal.clone(), 100)).await;
    let portal_b = delivered(
        "portal-b-member",
        "b.bitrix24.test",
        "ONCRMDEALUPDATE",
        deal.clone(),
        100,
    );
    forward(&consumer, &portal_b).await;

    // The same with a bare URL: it reads the portal whose domain is its host, only.
    let bare = RelayConfig {
        b24_webhook_url: Some(Secret::new(world.portal.webhook_url())),
        ..world.config.clone()
    };
    let client: Arc<dyn Bitrix24Rest> = Arc::new(Bitrix24Client::new(
        reqwest::Client::new(),
        &bare,
        world.ports.tokens.clone(),
    ));
    let bare_consumer = Consumer::new(
        world.ports.clone(),
        bare,
        Some(client),
        reqwest::Client::new(),
    );
    let portal_b_again = delivered(
        "portal-b-member",
        "b.bitrix24.test",
        "ONCRMDEALUPDATE",
        deal.clone(),
        101,
    );
    forward(&bare_consumer, &portal_b_again).await;
    let host = world
        .portal
        .base_url()
        .trim_start_matches("http://")
        .to_string();
    // Stamped beyond the twin window of portal A's first delivery (same deal, unchanged).
    let by_host = delivered(PORTAL, &host, "ONCRMDEALUPDATE", deal, 1_000);
    forward(&bare_consumer, &by_host).await;

    let bodies = world.destination.delivered_bodies();
    assert_eq!(bodies.len(), 4);
    assert_eq!(bodies[0]["entity"]["TITLE"], "portal A's deal");
    for b in [&bodies[1], &bodies[2]] {
        assert_eq!(b["portal"], "portal-b-member");
        assert_eq!(b["entity"], Value::Null, "{b}");
        assert_eq!(b["enrichment"], "no credentials for this portal");
    }
    assert_eq!(bodies[3]["entity"]["TITLE"], "portal A's deal");
    assert_eq!(
        world.portal.requests(),
        2,
        "portal B's events asked portal A nothing"
    );
}

/// The refresh answer's `domain` is the OAuth server's (settings/oauth/index.md);
/// the stored portal keeps its own domain, and a `server_endpoint` naming an unknown host is
/// never sent the client secret (the refresh goes to the configured server instead).
pub async fn token_refresh_keeps_the_portal_domain(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    let world = World::new(ports, probe, Auth::OAuth, PortalLimits::default()).await;
    let mut stored = world
        .ports
        .tokens
        .get(PORTAL)
        .await
        .expect("token store")
        .expect("installed");
    stored.server_endpoint = "https://oauth.attacker.example/rest/".into();
    world.ports.tokens.put(&stored).await.expect("token store");
    world
        .portal
        .set_entity("deal", "8", json!({"ID": "8", "TITLE": "after refresh"}));
    world.portal.expire_access_token();
    forward(
        &world.consumer(),
        &ours("ONCRMDEALUPDATE", json!({"FIELDS": {"ID": "8"}}), 100),
    )
    .await;
    assert_eq!(
        world.portal.state().refreshes,
        1,
        "refreshed through the configured server"
    );
    let after = world
        .ports
        .tokens
        .get(PORTAL)
        .await
        .expect("token store")
        .expect("still installed");
    assert_eq!(after.domain, format!("{PORTAL}.bitrix24.test"));
    assert_eq!(
        after.server_endpoint,
        "https://oauth.attacker.example/rest/"
    );
    assert_ne!(after.access_token, stored.access_token);
    let bodies = world.destination.delivered_bodies();
    assert_eq!(bodies[0]["entity"]["TITLE"], "after refresh");
}

/// limits.md: 429 OPERATION_TIME_LIMIT blocks a method for minutes. The client
/// does not hammer it with in-process retries: it gives the message back with the wait until
/// `operating_reset_at` of the last successful answer.
pub async fn operation_time_limit_waits_until_the_reset(
    ports: ConsumerPorts,
    probe: Arc<dyn QueueProbe>,
) {
    use crate::fake_bitrix24::MethodReply;
    use relay_core::error::EnrichError;
    let world = World::new(ports, probe, Auth::Webhook, PortalLimits::default()).await;
    world
        .portal
        .set_entity("deal", "1", json!({"ID": "1", "TITLE": "one"}));
    let client = world.bitrix24_client();
    client
        .call(PORTAL, "crm.deal.get", json!({"id": "1"}))
        .await
        .expect("first call answers");
    world.portal.inject(MethodReply::operation_time_limit());
    let before = world.portal.requests();
    match client
        .call(PORTAL, "crm.deal.get", json!({"id": "1"}))
        .await
    {
        Err(EnrichError::MethodBlocked {
            retry_after: wait, ..
        }) => assert!(
            (590..=600).contains(&wait.as_secs()),
            "waits until operating_reset_at, not a back-off: {wait:?}"
        ),
        other => panic!("expected the method blocked with a wait, got {other:?}"),
    }
    assert_eq!(world.portal.requests(), before + 1, "no in-process retry");
    // Remembered: the blocked method is not asked again before its reset.
    assert!(matches!(
        client
            .call(PORTAL, "crm.deal.get", json!({"id": "1"}))
            .await,
        Err(EnrichError::MethodBlocked { .. })
    ));
    assert_eq!(world.portal.requests(), before + 1, "no call while blocked");
}

#[macro_export]
macro_rules! fidelity_case_tests {
    ($setup:path) => {
        $crate::fidelity_case_tests!(@each $setup;
            requisite_and_bank_detail_with_one_id_keep_apart,
            recurring_events_never_read_an_unrelated_record,
            smart_invoice_base_names_and_delete_forward_previous,
            user_field_events_read_the_field_definition,
            address_events_are_keyed_by_type_and_owner,
            two_portals_one_webhook_never_cross,
            token_refresh_keeps_the_portal_domain,
            operation_time_limit_waits_until_the_reset,
        );
    };
    (@each $setup:path; $($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let (ports, probe) = $setup().await;
            $crate::fidelity_cases::$name(ports, probe).await;
        }
    )*};
}
