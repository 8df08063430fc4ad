//! Ingress behaviour through `Ingress::handle` only: what is answered and what is queued.

use super::recording_queue::RecordingQueue;
use super::*;
use crate::config::AppTokens;
use crate::secret::Secret;
use crate::verify::test_tokens::StoredPortal;
use std::time::{Duration, UNIX_EPOCH};

const APP_TOKEN: &str = "local-dev-app-token";
const SALESMAN_SECRET: &str = "local-dev-salesman-secret";
const MEMBER: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
const JSON: Option<&str> = Some("application/json");
const GOOD_QUERY: Option<&str> = Some("token=local-dev-salesman-secret");

fn config() -> RelayConfig {
    RelayConfig {
        b24_app_tokens: AppTokens::parse(&format!("{APP_TOKEN},other-member:other-token")).unwrap(),
        salesman_secret: Some(Secret::new(SALESMAN_SECRET)),
        ..RelayConfig::default()
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn request<'a>(
    family: Family,
    content_type: Option<&'a str>,
    query: Option<&'a str>,
    header: Option<&'a str>,
    body: &'a [u8],
) -> IngestRequest<'a> {
    IngestRequest {
        family,
        content_type,
        query,
        relay_token_header: header,
        body,
    }
}

/// A Bitrix24 deal update as PHP's http_build_query writes it (brackets percent-encoded).
fn b24_form(event: &str, token: &str) -> String {
    format!(
        "event={event}&event_handler_id=25&data%5BFIELDS%5D%5BID%5D=7405&ts=1766047124\
         &auth%5Bdomain%5D=example.bitrix24.ru\
         &auth%5Bclient_endpoint%5D=https%3A%2F%2Fexample.bitrix24.ru%2Frest%2F\
         &auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2Frest%2F\
         &auth%5Bmember_id%5D={MEMBER}&auth%5Bapplication_token%5D={token}"
    )
}

fn b24_json(event: &str, token: &str) -> String {
    json!({
        "event": event, "event_handler_id": "25",
        "data": {"FIELDS": {"ID": "7405"}}, "ts": "1766047124",
        "auth": {
            "domain": "example.bitrix24.ru",
            "client_endpoint": "https://example.bitrix24.ru/rest/",
            "server_endpoint": "https://oauth.bitrix.info/rest/",
            "member_id": MEMBER, "application_token": token
        }
    })
    .to_string()
}

fn salesman_json(event: &str) -> String {
    json!({"event": event, "identity": "1", "iduser1": "3", "did": "812", "clid": "77",
           "autor": "3", "stepOld": "20", "stepNew": "60"})
    .to_string()
}

async fn handle_with(queue: Arc<RecordingQueue>, req: IngestRequest<'_>) -> IngestReply {
    Ingress::new(queue, config())
        .handle(req, at(1_766_047_200))
        .await
}

/// An ONCRMDEALUPDATE form carrying `token`, posted to the deal URL.
async fn post_deal_update(queue: Arc<RecordingQueue>, token: &str) -> IngestReply {
    let body = b24_form("ONCRMDEALUPDATE", token);
    handle_with(
        queue,
        request(Family::Deal, FORM, None, None, body.as_bytes()),
    )
    .await
}

struct Case {
    name: &'static str,
    family: Family,
    content_type: Option<&'static str>,
    query: Option<&'static str>,
    header: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
}

fn case(
    name: &'static str,
    family: Family,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Case {
    Case {
        name,
        family,
        content_type,
        query: None,
        header: None,
        body: body.into(),
        status,
    }
}

fn salesman_case(
    name: &'static str,
    family: Family,
    query: Option<&'static str>,
    header: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Case {
    Case {
        query,
        header,
        ..case(name, family, JSON, body, status)
    }
}

fn bad_inputs() -> Vec<Case> {
    use Family::*;
    let huge = {
        let mut body = b24_form("ONCRMDEALUPDATE", APP_TOKEN).into_bytes();
        body.extend(b"&pad=".iter());
        body.resize(MAX_BODY_BYTES + 1, b'x');
        body
    };
    let depth_form = format!(
        "{}&data{}=1",
        b24_form("ONCRMDEALUPDATE", APP_TOKEN),
        "%5Bx%5D".repeat(40)
    );
    let depth_json = format!(
        "{{\"event\":\"ONCRMDEALUPDATE\",\"data\":{}1{}}}",
        "{\"x\":".repeat(40),
        "}".repeat(40)
    );
    let many_fields = format!(
        "{}{}",
        b24_form("ONCRMDEALUPDATE", APP_TOKEN),
        "&data[L][]=1".repeat(10_001)
    );
    let b24_without = |drop: &str| {
        b24_form("ONCRMDEALUPDATE", APP_TOKEN)
            .split('&')
            .filter(|pair| !pair.starts_with(drop))
            .collect::<Vec<_>>()
            .join("&")
    };
    vec![
        // 413: size is checked before anything else.
        case("over 1 MiB", Deal, FORM, huge.clone(), 413),
        case("over 1 MiB, bad type", Deal, Some("text/plain"), huge, 413),
        // 415: neither form nor JSON.
        case(
            "text/plain",
            Deal,
            Some("text/plain"),
            b24_form("ONCRMDEALUPDATE", APP_TOKEN),
            415,
        ),
        case(
            "multipart",
            Deal,
            Some("multipart/form-data; boundary=x"),
            "--x--",
            415,
        ),
        case("xml", Deal, Some("application/xml"), "<event/>", 415),
        case(
            "non-UTF-8 charset",
            Deal,
            Some("application/x-www-form-urlencoded; charset=windows-1251"),
            b24_form("ONCRMDEALUPDATE", APP_TOKEN),
            415,
        ),
        // 400: unreadable or incomplete.
        case("truncated JSON", Deal, JSON, "{\"event\":", 400),
        case("JSON array", Deal, JSON, "[]", 400),
        case("JSON string", Deal, JSON, "\"ONCRMDEALUPDATE\"", 400),
        case("empty form", Deal, FORM, "", 400),
        case("empty body, no type", Deal, None, "", 400),
        case(
            "binary garbage, no type",
            Deal,
            None,
            vec![0xff, 0xfe, 0x00, 0x01],
            400,
        ),
        case(
            "JSON sent as form",
            Deal,
            FORM,
            b24_json("ONCRMDEALUPDATE", APP_TOKEN),
            400,
        ),
        case("no event", Deal, FORM, b24_without("event="), 400),
        case("empty event", Deal, FORM, b24_form("", APP_TOKEN), 400),
        case(
            "event with spaces",
            Deal,
            FORM,
            b24_form("ON+CRM+DEAL", APP_TOKEN),
            400,
        ),
        case(
            "event too long",
            Deal,
            FORM,
            b24_form(&"A".repeat(200), APP_TOKEN),
            400,
        ),
        case(
            "event is a number",
            Deal,
            JSON,
            "{\"event\":5,\"identity\":\"1\"}",
            400,
        ),
        case("depth bomb, form", Deal, FORM, depth_form, 400),
        case("depth bomb, JSON", Deal, JSON, depth_json, 400),
        case("too many fields", Deal, FORM, many_fields, 400),
        case(
            "bitrix24 without auth",
            Deal,
            FORM,
            "event=ONCRMDEALUPDATE&data[FIELDS][ID]=1",
            400,
        ),
        case(
            "bitrix24 without member_id",
            Deal,
            FORM,
            b24_without("auth%5Bmember_id%5D"),
            400,
        ),
        case(
            "member_id with a space",
            Deal,
            FORM,
            b24_form("ONCRMDEALUPDATE", APP_TOKEN).replace(MEMBER, "a+b"),
            400,
        ),
        case(
            "ts not a number",
            Deal,
            FORM,
            b24_form("ONCRMDEALUPDATE", APP_TOKEN).replace("ts=1766047124", "ts=soon"),
            400,
        ),
        case(
            "entity id with #",
            Deal,
            FORM,
            b24_form("ONCRMDEALUPDATE", APP_TOKEN).replace("=7405", "=74%2305"),
            400,
        ),
        case(
            "data is a string",
            Deal,
            JSON,
            b24_json("ONCRMDEALUPDATE", APP_TOKEN)
                .replace("{\"FIELDS\":{\"ID\":\"7405\"}}", "\"x\""),
            400,
        ),
        // 401: the credential is missing, empty or wrong.
        case(
            "no application_token",
            Deal,
            FORM,
            b24_without("auth%5Bapplication_token%5D"),
            401,
        ),
        case(
            "empty application_token",
            Deal,
            FORM,
            b24_form("ONCRMDEALUPDATE", ""),
            401,
        ),
        case(
            "wrong application_token",
            Deal,
            FORM,
            b24_form("ONCRMDEALUPDATE", "guess"),
            401,
        ),
        case(
            "token differs in case",
            Deal,
            FORM,
            b24_form("ONCRMDEALUPDATE", &APP_TOKEN.to_uppercase()),
            401,
        ),
        case(
            "another portal's token",
            Deal,
            FORM,
            b24_form("ONCRMDEALUPDATE", "other-token"),
            401,
        ),
        case(
            "token as JSON, wrong",
            Deal,
            JSON,
            b24_json("ONCRMDEALUPDATE", "guess"),
            401,
        ),
        salesman_case(
            "salesman, no token",
            Deal,
            None,
            None,
            salesman_json("deal.add"),
            401,
        ),
        salesman_case(
            "salesman, wrong query token",
            Deal,
            Some("token=guess"),
            None,
            salesman_json("deal.add"),
            401,
        ),
        salesman_case(
            "salesman, empty query token",
            Deal,
            Some("token="),
            None,
            salesman_json("deal.add"),
            401,
        ),
        salesman_case(
            "salesman, wrong header",
            Deal,
            None,
            Some("guess"),
            salesman_json("deal.add"),
            401,
        ),
        salesman_case(
            "salesman, right header but wrong query",
            Deal,
            Some("token=guess"),
            Some(SALESMAN_SECRET),
            salesman_json("deal.add"),
            401,
        ),
        salesman_case(
            "salesman, token only in the body",
            Deal,
            None,
            None,
            json!({"event": "deal.add", "identity": "1", "did": "1", "token": SALESMAN_SECRET})
                .to_string(),
            401,
        ),
        salesman_case(
            "salesman, no identity",
            Deal,
            GOOD_QUERY,
            None,
            json!({"event": "deal.add", "did": "1"}).to_string(),
            400,
        ),
        // 422: unknown event, or another family's event.
        case(
            "bitrix24 unknown event",
            Deal,
            FORM,
            b24_form("ONUSERADD", APP_TOKEN),
            422,
        ),
        case(
            "deal event at lead",
            Lead,
            FORM,
            b24_form("ONCRMDEALUPDATE", APP_TOKEN),
            422,
        ),
        case(
            "smart process other than invoices",
            Invoice,
            FORM,
            b24_form("ONCRMDYNAMICITEMADD_128", APP_TOKEN),
            422,
        ),
        case(
            "task event at deal",
            Deal,
            JSON,
            b24_json("ONTASKADD", APP_TOKEN),
            422,
        ),
        salesman_case(
            "salesman requisites at company",
            Company,
            GOOD_QUERY,
            None,
            salesman_json("client.change.recv"),
            422,
        ),
        salesman_case(
            "salesman unknown event",
            Deal,
            GOOD_QUERY,
            None,
            salesman_json("email.send"),
            422,
        ),
    ]
}

#[tokio::test]
async fn bad_input_matrix_gets_its_status_and_queues_nothing() {
    let cases = bad_inputs();
    assert!(cases.len() >= 30, "the matrix must keep at least 30 cases");
    let mut failures = Vec::new();
    for c in &cases {
        let queue = Arc::new(RecordingQueue::default());
        let reply = handle_with(
            queue.clone(),
            request(c.family, c.content_type, c.query, c.header, &c.body),
        )
        .await;
        if reply.status != c.status {
            failures.push(format!(
                "{}: expected {}, got {} {}",
                c.name, c.status, reply.status, reply.body
            ));
        }
        if !queue.sent().is_empty() {
            failures.push(format!("{}: something was queued", c.name));
        }
        if reply.body.get("error").and_then(|e| e.as_str()).is_none() {
            failures.push(format!("{}: no error message in {}", c.name, reply.body));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn unauthorized_says_nothing_about_why() {
    let mut bodies = Vec::new();
    for token in ["", "guess", "other-token"] {
        let reply = post_deal_update(Arc::new(RecordingQueue::default()), token).await;
        bodies.push(reply);
    }
    assert!(bodies
        .iter()
        .all(|r| r.status == 401 && r.body == json!({"error": "unauthorized"})));
}

#[tokio::test]
async fn wrong_family_names_the_family_that_takes_it() {
    let body = b24_form("onCrmDealUpdate", APP_TOKEN);
    let reply = handle_with(
        Arc::new(RecordingQueue::default()),
        request(Family::Lead, FORM, None, None, body.as_bytes()),
    )
    .await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.body["family"], json!("deal"));
    let reply = handle_with(
        Arc::new(RecordingQueue::default()),
        request(
            Family::Company,
            JSON,
            GOOD_QUERY,
            None,
            salesman_json("client.change.recv").as_bytes(),
        ),
    )
    .await;
    assert_eq!(
        (reply.status, &reply.body["family"]),
        (422, &json!("requisite"))
    );
}

#[tokio::test]
async fn bitrix24_form_is_queued_as_an_envelope() {
    let queue = Arc::new(RecordingQueue::default());
    let reply = post_deal_update(queue.clone(), APP_TOKEN).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let sent = queue.sent();
    assert_eq!(sent.len(), 1);
    let ev = &sent[0];
    assert_eq!(reply.body, json!({"id": ev.id}));
    assert_eq!(ev.v, 1);
    assert_eq!(ev.source, Source::Bitrix24);
    assert_eq!(ev.portal, MEMBER);
    assert_eq!(ev.domain.as_deref(), Some("example.bitrix24.ru"));
    assert_eq!(ev.family, Family::Deal);
    assert_eq!(ev.event, "ONCRMDEALUPDATE");
    assert_eq!(ev.entity_id.as_deref(), Some("7405"));
    assert_eq!(ev.ts, 1766047124);
    assert_eq!(ev.received_at, "2025-12-18T08:40:00Z");
    assert_eq!(ev.data, json!({"FIELDS": {"ID": "7405"}}));
    assert_eq!(
        ev.id,
        crate::event::envelope_id(
            Source::Bitrix24,
            MEMBER,
            "ONCRMDEALUPDATE",
            &ev.data,
            1766047124
        )
    );
    assert_eq!(
        ev.message_group_id(),
        format!("bitrix24#{MEMBER}#deal#7405")
    );
}

#[tokio::test]
async fn salesman_json_is_queued_with_the_receive_second() {
    let queue = Arc::new(RecordingQueue::default());
    let body = salesman_json("Deal.Change.Step");
    let reply = handle_with(
        queue.clone(),
        request(
            Family::Deal,
            JSON,
            Some("token=local-dev-salesman-secret"),
            None,
            body.as_bytes(),
        ),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let ev = &queue.sent()[0];
    assert_eq!(ev.source, Source::Salesman);
    assert_eq!(ev.portal, "1");
    assert_eq!(ev.domain, None);
    assert_eq!(ev.event, "deal.change.step");
    assert_eq!(ev.entity_id.as_deref(), Some("812"));
    assert_eq!(ev.ts, 1_766_047_200);
    assert_eq!(ev.data["stepNew"], json!("60"));
}

#[tokio::test]
async fn salesman_header_token_and_form_body_work_too() {
    let queue = Arc::new(RecordingQueue::default());
    let body = "event=client.import&identity=1&clids%5B%5D=101&clids%5B%5D=102&autor=3";
    let reply = handle_with(
        queue.clone(),
        request(
            Family::Company,
            None,
            None,
            Some(SALESMAN_SECRET),
            body.as_bytes(),
        ),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    // An import fans out: one envelope per client, each with its own id and group.
    let mut sent = queue.sent();
    assert_eq!(sent.len(), 2);
    // Sent concurrently: in any order.
    sent.sort_by(|a, b| a.entity_id.cmp(&b.entity_id));
    for (ev, clid) in sent.iter().zip(["101", "102"]) {
        assert_eq!(ev.event, "client.import");
        assert_eq!(ev.entity_id.as_deref(), Some(clid));
        assert_eq!(ev.data["clid"], json!(clid));
        assert_eq!(ev.data.get("clids"), None);
        assert_eq!(ev.message_group_id(), format!("salesman#1#company#{clid}"));
    }
    assert_ne!(sent[0].id, sent[1].id);
    let mut ids: Vec<String> = serde_json::from_value(reply.body["ids"].clone()).unwrap();
    ids.sort();
    let mut queued = vec![sent[0].id.clone(), sent[1].id.clone()];
    queued.sort();
    assert_eq!(ids, queued);
}

#[tokio::test]
async fn no_token_or_secret_reaches_the_envelope() {
    let install = format!(
        "event=ONAPPINSTALL&data%5BVERSION%5D=1&data%5BLANGUAGE_ID%5D=ru\
         &data%5Bauth%5D%5Baccess_token%5D=nested-access-token-1\
         &data%5Becho%5D={APP_TOKEN}&ts=1766047124\
         &auth%5Baccess_token%5D=oauth-access-token-1&auth%5Bexpires_in%5D=3600\
         &auth%5Brefresh_token%5D=oauth-refresh-token-1&auth%5Bmember_id%5D={MEMBER}\
         &auth%5Bdomain%5D=example.bitrix24.ru&auth%5Bapplication_token%5D={APP_TOKEN}"
    );
    let salesman = json!({
        "event": "deal.edit", "identity": "1", "did": "812", "token": SALESMAN_SECRET,
        "ses": "session-cookie-1", "apikey": "salesman-api-key-1",
        "note": SALESMAN_SECRET, "nested": {"Password": "pw-123456789"}
    })
    .to_string();
    let queue = Arc::new(RecordingQueue::default());
    let ingress = Ingress::new(queue.clone(), config());
    let now = at(1_766_047_200);
    let r1 = ingress
        .handle(
            request(Family::App, FORM, None, None, install.as_bytes()),
            now,
        )
        .await;
    let r2 = ingress
        .handle(
            request(
                Family::Deal,
                JSON,
                GOOD_QUERY,
                Some(SALESMAN_SECRET),
                salesman.as_bytes(),
            ),
            now,
        )
        .await;
    assert_eq!(
        (r1.status, r2.status),
        (202, 202),
        "{} {}",
        r1.body,
        r2.body
    );
    let sent = queue.sent();
    assert_eq!(sent.len(), 2);
    let wire = serde_json::to_string(&sent).unwrap();
    for secret in [
        APP_TOKEN,
        SALESMAN_SECRET,
        "nested-access-token-1",
        "oauth-access-token-1",
        "oauth-refresh-token-1",
        "session-cookie-1",
        "salesman-api-key-1",
        "pw-123456789",
    ] {
        assert!(!wire.contains(secret), "{secret} leaked into {wire}");
    }
    // What is not a secret survives.
    assert_eq!(sent[0].data, json!({"VERSION": "1", "LANGUAGE_ID": "ru"}));
    assert_eq!(sent[0].entity_id, None);
    assert_eq!(sent[1].data["did"], json!("812"));
}

#[tokio::test]
async fn envelope_id_is_stable_across_encodings_and_event_case() {
    let queue = Arc::new(RecordingQueue::default());
    let ingress = Ingress::new(queue.clone(), config());
    let deliveries = [
        (FORM, b24_form("ONCRMDEALUPDATE", APP_TOKEN)),
        (JSON, b24_json("ONCRMDEALUPDATE", APP_TOKEN)),
        (FORM, b24_form("onCrmDealUpdate", APP_TOKEN)),
        (None, b24_json("OnCrmDealUpdate", APP_TOKEN)),
        // Literal brackets and a different key order are the same delivery too.
        (
            None,
            format!(
                "auth[application_token]={APP_TOKEN}&auth[member_id]={MEMBER}\
                 &auth[domain]=example.bitrix24.ru&ts=1766047124&data[FIELDS][ID]=7405\
                 &event=ONCRMDEALUPDATE"
            ),
        ),
    ];
    for (i, (content_type, body)) in deliveries.iter().enumerate() {
        // Received at different seconds: Bitrix24's `ts` is what counts.
        let reply = ingress
            .handle(
                request(Family::Deal, *content_type, None, None, body.as_bytes()),
                at(1_766_047_200 + i as u64),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    let ids: Vec<String> = queue.sent().into_iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), deliveries.len());
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    // A different entity is a different event.
    let other = b24_form("ONCRMDEALUPDATE", APP_TOKEN).replace("=7405", "=7406");
    let reply = ingress
        .handle(
            request(Family::Deal, FORM, None, None, other.as_bytes()),
            at(1),
        )
        .await;
    assert_ne!(reply.body["id"], json!(ids[0]));
}

#[tokio::test]
async fn queue_outage_is_503_never_202() {
    let queue = Arc::new(RecordingQueue::down());
    let reply = post_deal_update(queue.clone(), APP_TOKEN).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, json!({"error": "queue unavailable"}));
    assert!(queue.sent().is_empty());
}

#[tokio::test]
async fn source_without_a_secret_rejects_everything() {
    let queue = Arc::new(RecordingQueue::default());
    let ingress = Ingress::new(queue.clone(), RelayConfig::default());
    let b24 = b24_form("ONCRMDEALUPDATE", APP_TOKEN);
    let sm = salesman_json("deal.add");
    let r1 = ingress
        .handle(
            request(Family::Deal, FORM, None, None, b24.as_bytes()),
            at(1),
        )
        .await;
    let r2 = ingress
        .handle(
            request(
                Family::Deal,
                JSON,
                GOOD_QUERY,
                Some(SALESMAN_SECRET),
                sm.as_bytes(),
            ),
            at(1),
        )
        .await;
    assert_eq!((r1.status, r2.status), (401, 401));
    assert!(queue.sent().is_empty());
}

#[tokio::test]
async fn stored_application_token_is_accepted_when_a_store_is_wired() {
    let body = b24_form("ONCRMDEALUPDATE", "installed-app-token");
    let req = request(Family::Deal, FORM, None, None, body.as_bytes());

    let queue = Arc::new(RecordingQueue::default());
    let without_store = Ingress::new(queue.clone(), config());
    assert_eq!(without_store.handle(req, at(1)).await.status, 401);

    let with_store = Ingress::new(queue.clone(), config())
        .with_token_store(Arc::new(StoredPortal::new(MEMBER, "installed-app-token")));
    assert_eq!(with_store.handle(req, at(1)).await.status, 202);
    assert!(!serde_json::to_string(&queue.sent())
        .unwrap()
        .contains("installed-app-token"));

    // The configured token still works without touching a (broken) store.
    let broken =
        Ingress::new(queue.clone(), config()).with_token_store(Arc::new(StoredPortal::down()));
    let good = b24_form("ONCRMDEALUPDATE", APP_TOKEN);
    let good_req = request(Family::Deal, FORM, None, None, good.as_bytes());
    assert_eq!(broken.handle(good_req, at(1)).await.status, 202);
    // An unknown token with the store down may be genuine: 503, not 401.
    assert_eq!(broken.handle(req, at(1)).await.status, 503);
    assert_eq!(queue.sent().len(), 2);
}

/// A stored token that matched is trusted for the cache time without a read; a wrong token
/// still reads the store and gets 401; a reinstall's new token is accepted at once; an
/// uninstall refuses the old token once the cache time has passed.
#[tokio::test]
async fn stored_tokens_are_cached_briefly_and_never_let_a_wrong_token_in() {
    let ttl = Duration::from_secs(60);
    let portal = Arc::new(StoredPortal::new(MEMBER, "installed-app-token"));
    let queue = Arc::new(RecordingQueue::default());
    let ingress = Ingress::new(queue.clone(), config())
        .with_token_store(portal.clone())
        .with_stored_token_cache(ttl);
    let post = |token: &str, secs: u64| {
        let body = b24_form("ONCRMDEALUPDATE", token);
        let ingress = &ingress;
        async move {
            ingress
                .handle(
                    request(Family::Deal, FORM, None, None, body.as_bytes()),
                    at(secs),
                )
                .await
                .status
        }
    };
    assert_eq!(post("installed-app-token", 1_000).await, 202);
    assert_eq!(post("installed-app-token", 1_030).await, 202);
    assert_eq!(
        portal.reads(),
        1,
        "the second event is verified from the cache"
    );

    assert_eq!(post("forged-token", 1_031).await, 401);
    assert_eq!(post("", 1_031).await, 401);
    assert_eq!(
        portal.reads(),
        2,
        "a wrong token is checked against the store"
    );

    // Reinstall: a new token is stored. It is accepted at once; the old one, no longer in
    // the cache, is refused.
    portal.set_token(Some("reinstalled-token"));
    assert_eq!(post("reinstalled-token", 1_032).await, 202);
    assert_eq!(post("installed-app-token", 1_033).await, 401);

    // Uninstall: the tokens are deleted. The cached token passes until its time is up.
    portal.set_token(None);
    assert_eq!(post("reinstalled-token", 1_032 + 59).await, 202);
    assert_eq!(post("reinstalled-token", 1_032 + 60).await, 401);
    // A clock that went back does not stretch the cache.
    assert_eq!(post("reinstalled-token", 900).await, 401);
    assert_eq!(queue.sent().len(), 4);

    // Without a cache time every event reads the store.
    let uncached = Arc::new(StoredPortal::new(MEMBER, "installed-app-token"));
    let ingress = Ingress::new(queue.clone(), config()).with_token_store(uncached.clone());
    let body = b24_form("ONCRMDEALUPDATE", "installed-app-token");
    for secs in [1, 2] {
        let req = request(Family::Deal, FORM, None, None, body.as_bytes());
        assert_eq!(ingress.handle(req, at(secs)).await.status, 202);
    }
    assert_eq!(uncached.reads(), 2);
}

#[tokio::test]
async fn salesman_envelope_id_ignores_event_case_and_encoding_within_a_second() {
    let queue = Arc::new(RecordingQueue::default());
    let ingress = Ingress::new(queue.clone(), config());
    let json_body = salesman_json("deal.change.step");
    let upper = salesman_json("DEAL.CHANGE.STEP");
    let form = "event=Deal.Change.Step&identity=1&iduser1=3&did=812&clid=77&autor=3\
                &stepOld=20&stepNew=60";
    for (content_type, body) in [(JSON, json_body.as_str()), (JSON, &upper), (FORM, form)] {
        let reply = ingress
            .handle(
                request(
                    Family::Deal,
                    content_type,
                    GOOD_QUERY,
                    None,
                    body.as_bytes(),
                ),
                at(1_766_047_200),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    let sent = queue.sent();
    assert!(sent
        .iter()
        .all(|e| e.id == sent[0].id && e.event == "deal.change.step"));
    // A later second is a new delivery: SalesMan has no `ts` of its own.
    let later = ingress
        .handle(
            request(Family::Deal, JSON, GOOD_QUERY, None, json_body.as_bytes()),
            at(1_766_047_201),
        )
        .await;
    assert_ne!(later.body["id"], json!(sent[0].id));
}

/// Collects what the JSON log layer writes, so a test can read the log lines.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut out) = self.0.lock() {
            out.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_name_the_event_but_never_a_secret_or_the_body() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber =
        crate::logging::json_lines(tracing_subscriber::EnvFilter::new("info"), move || {
            writer.clone()
        });
    // `#[tokio::test]` runs on this thread, so a thread-local default sees every event.
    let _guard = tracing::subscriber::set_default(subscriber);

    let queue = Arc::new(RecordingQueue::default());
    let ingress = Ingress::new(queue.clone(), config());
    let good = b24_form("ONCRMDEALUPDATE", APP_TOKEN);
    let wrong = b24_form("ONCRMDEALUPDATE", "guessed-token-123");
    let salesman = salesman_json("deal.add");
    for (query, body) in [
        (None, good.as_str()),
        (None, wrong.as_str()),
        (GOOD_QUERY, salesman.as_str()),
        (Some("token=guessed-secret-456"), salesman.as_str()),
    ] {
        let ct = if body.starts_with('{') { JSON } else { FORM };
        ingress
            .handle(
                request(Family::Deal, ct, query, None, body.as_bytes()),
                at(1),
            )
            .await;
    }
    let down = Ingress::new(Arc::new(RecordingQueue::down()), config());
    down.handle(
        request(Family::Deal, FORM, None, None, good.as_bytes()),
        at(1),
    )
    .await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let queued = lines
        .iter()
        .find(|l| l["message"] == "event queued")
        .expect("a line for the queued event");
    let id = &queue.sent()[0].id;
    assert_eq!(queued["event"], "ONCRMDEALUPDATE");
    assert_eq!(
        queued["family"],
        serde_json::Value::Null,
        "the function's own family"
    );
    assert_eq!(queued["portal"], MEMBER);
    assert_eq!(&queued["event_id"], id);
    assert!(lines.iter().any(|l| l["status"] == 401));
    assert!(lines.iter().any(|l| l["status"] == 503));
    for secret in [
        APP_TOKEN,
        SALESMAN_SECRET,
        "guessed-token-123",
        "guessed-secret-456",
        "auth%5B",
        "stepOld",
    ] {
        assert!(!text.contains(secret), "{secret} in logs:\n{text}");
    }
}

#[tokio::test]
async fn a_large_import_queues_every_entity_once_and_a_down_queue_answers_503() {
    // content/helpers/client.import.php lists every imported client and contact.
    let mut body = String::from("event=client.import&identity=1&autor=3");
    for clid in 1..=300 {
        body.push_str(&format!("&clids%5B%5D={clid}"));
    }
    for pid in 1..=40 {
        body.push_str(&format!("&pids%5B%5D={pid}"));
    }
    let queue = Arc::new(RecordingQueue::default());
    let reply = handle_with(
        queue.clone(),
        request(
            Family::Company,
            FORM,
            Some(&format!("token={SALESMAN_SECRET}")),
            None,
            body.as_bytes(),
        ),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let sent = queue.sent();
    assert_eq!(sent.len(), 340);
    assert_eq!(reply.body["ids"].as_array().map(Vec::len), Some(340));
    let groups: std::collections::HashSet<String> =
        sent.iter().map(|e| e.message_group_id()).collect();
    assert_eq!(groups.len(), 340, "one FIFO group per entity");
    assert_eq!(
        sent.iter()
            .filter(|e| e.family == Family::Contact && e.event == "person.import")
            .count(),
        40
    );

    let reply = handle_with(
        Arc::new(RecordingQueue::down()),
        request(
            Family::Company,
            FORM,
            Some(&format!("token={SALESMAN_SECRET}")),
            None,
            body.as_bytes(),
        ),
    )
    .await;
    assert_eq!(
        reply.status, 503,
        "valid input is never acknowledged unqueued"
    );
}
