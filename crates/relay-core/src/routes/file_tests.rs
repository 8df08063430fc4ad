//! Tests of the routes file: parsing with line-numbered errors, secrets by reference, the
//! warehouse example, and that the README shows exactly the file in `events/routes/`.

use super::*;
use crate::consume::{changes, forward_body, Forwarded};
use crate::event::RelayEvent;
use serde_json::json;

/// 24 bytes: the Standard Webhooks specification's example secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const WAREHOUSE_ROUTES: &str = include_str!("../../../../events/routes/warehouse.routes.json");
const DEAL_MOVED: &str = include_str!("../../../../events/routes/deal-moved.forwarded.json");
const DEAL_NEW: &str = include_str!("../../../../events/routes/deal-new.forwarded.json");

fn env_with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn parse(text: &str) -> Result<Routes, RoutesError> {
    let env = env_with(&[
        ("WAREHOUSE_SIGNING_SECRET", SECRET),
        ("AUTH", "Bearer t0ken"),
    ]);
    parse_with_env(text, "routes.json", &env)
}

/// Every problem as `line: message`.
fn problems(text: &str) -> Vec<(usize, String)> {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(RoutesError::Invalid { line, message, .. }) => vec![(line, message)],
        Err(RoutesError::Several(all)) => all
            .into_iter()
            .map(|e| match e {
                RoutesError::Invalid { line, message, .. } => (line, message),
                other => (0, other.to_string()),
            })
            .collect(),
        Err(other) => vec![(0, other.to_string())],
    }
}

fn one_problem(text: &str) -> (usize, String) {
    let all = problems(text);
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().unwrap_or_default()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn the_sample_bodies_are_what_the_consumer_forwards() {
    for text in [DEAL_MOVED, DEAL_NEW] {
        let sample = json(text);
        let event: RelayEvent = serde_json::from_value(sample.clone()).unwrap();
        let entity = sample.get("entity").filter(|v| !v.is_null());
        let previous = sample.get("previous").filter(|v| !v.is_null());
        let forwarded = Forwarded {
            entity,
            previous,
            deleted: false,
            first_seen: previous.is_none(),
            enrichment: "fetched",
        };
        assert_eq!(
            forward_body(&event, &forwarded, &changes(previous, entity)),
            sample
        );
    }
}

#[test]
fn warehouse_routes_skip_first_stage_deals_and_forwards_title_stage_and_amount() {
    let routes = parse(WAREHOUSE_ROUTES).unwrap();
    assert!(!routes.implicit);
    let names: Vec<&str> = routes.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["warehouse", "stage-board"]);

    // A deal created in stage NEW of the default pipeline: nobody gets it.
    assert!(routes.deliveries(&json(DEAL_NEW)).is_empty());

    // The deal left C3:NEW: the warehouse gets title, stage and amount (plus ID), the board
    // gets the stage move; the comment never leaves, not even as a change.
    let moved = json(DEAL_MOVED);
    let deliveries = routes.deliveries(&moved);
    assert_eq!(deliveries.len(), 2);
    let warehouse = &deliveries[0];
    assert_eq!(warehouse.route, "warehouse");
    assert_eq!(
        warehouse.destination.url,
        "https://warehouse.example/integration/reg-deal"
    );
    assert_eq!(
        warehouse.destination.secret.as_ref().map(|s| s.expose()),
        Some(SECRET)
    );
    assert_eq!(
        warehouse.body["entity"],
        json!({"ID": "7405", "TITLE": "Сталь 09Г2С, 12 т", "STAGE_ID": "C3:PREPARATION",
               "OPPORTUNITY": "1500000.00"})
    );
    assert_eq!(
        warehouse.body["changes"],
        json!([{"field": "STAGE_ID", "old": "C3:NEW", "new": "C3:PREPARATION"}])
    );
    assert!(!warehouse.body.to_string().contains("скидку"));
    assert_eq!(
        warehouse.body["id"], moved["id"],
        "the event's id, per destination"
    );

    let board = &deliveries[1];
    assert_eq!(board.route, "stage-board");
    assert_eq!(
        board.destination.secret, None,
        "signed with RELAY_SIGNING_SECRET"
    );
    assert_eq!(
        board.destination.headers,
        vec![("X-Board-Team".to_string(), "sales".to_string())]
    );
    assert_eq!(
        board.body["entity"],
        json!({"ID": "7405", "STAGE_ID": "C3:PREPARATION"})
    );

    // Still in a first stage, but another pipeline's (C3:NEW): skipped; a title edit there
    // is no stage move either.
    let mut still_new = moved.clone();
    still_new["entity"]["STAGE_ID"] = json!("C3:NEW");
    still_new["changes"] = json!([{"field": "TITLE", "old": "a", "new": "b"}]);
    assert!(routes.deliveries(&still_new).is_empty());
}

#[test]
fn the_readmes_worked_example_is_the_sample_file() {
    for readme in [
        include_str!("../../../../README.md"),
        include_str!("../../../../README.ru.md"),
    ] {
        assert!(
            readme.contains(WAREHOUSE_ROUTES.trim_end()),
            "README lost the example"
        );
    }
}

#[test]
fn reads_destinations_headers_from_env_and_projections() {
    let routes = parse(
        r#"{"routes": [{
            "name": "all",
            "match": {},
            "project": {"exclude": ["COMMENTS"]},
            "destinations": [
                {"url": "http://127.0.0.1:9/a", "headers": {"Authorization": {"env": "AUTH"}}},
                {"url": "https://b.example/b?k=v", "secret_env": "WAREHOUSE_SIGNING_SECRET"}
            ]
        }]}"#,
    )
    .unwrap();
    let route = &routes.routes[0];
    assert_eq!(route.pattern, EventPattern::match_all());
    assert_eq!(
        route.projection,
        Some(Projection::Exclude(vec!["COMMENTS".into()]))
    );
    assert_eq!(
        route.destinations[0].headers,
        vec![("Authorization".to_string(), "Bearer t0ken".to_string())]
    );
    assert_eq!(
        route.destinations[1].secret.as_ref().map(|s| s.expose()),
        Some(SECRET)
    );
}

#[test]
fn the_summary_names_routes_and_hosts_but_no_secret() {
    let routes = parse(
        r#"{"routes": [{"name": "r1", "match": {"family": ["deal"]},
            "destinations": [{"url": "https://hooks.example/t/SECRETPATH?token=q",
                              "secret_env": "WAREHOUSE_SIGNING_SECRET",
                              "headers": {"Authorization": {"env": "AUTH"}, "X-Plain": "visible-value"}}]}]}"#,
    )
    .unwrap();
    let summary = routes.summary().join("\n");
    assert!(summary.contains("r1"), "{summary}");
    assert!(summary.contains("hooks.example"), "{summary}");
    assert!(summary.contains("deal"), "{summary}");
    for secret in [SECRET, "t0ken", "token=q", "visible-value", "SECRETPATH"] {
        assert!(!summary.contains(secret), "{secret} in {summary}");
    }
    // Debug output (a stray `?routes` in a log line) is no leak either.
    let debug = format!("{routes:?}");
    assert!(
        !debug.contains(SECRET) && !debug.contains("MfKQ9r8"),
        "{debug}"
    );
}

#[test]
fn names_the_line_of_each_mistake() {
    let text = r#"{"routes": [
  {
    "name": "a",
    "match": {"entity": {"STAGE_ID": [{"begins-with": "C"}]}},
    "destinations": [{"url": "https://a.example/"}]
  },
  {
    "name": "a",
    "match": {},
    "destinations": [{"url": "ftp://b.example/"}]
  },
  {
    "name": "c",
    "match": {},
    "colour": "red",
    "destinations": []
  },
  {
    "name": "d",
    "match": {},
    "destinations": [{"url": "https://d.example/",
                      "headers": {"Webhook-Signature": "v1,forged"},
                      "secret_env": "MISSING_SECRET"}]
  }
]}"#;
    let all = problems(text);
    let lines: Vec<usize> = all.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [4, 8, 10, 15, 16, 22, 23], "{all:?}");
    assert!(all[0]
        .1
        .contains("route `a`: match: entity.STAGE_ID[0].begins-with: unknown operator"));
    assert!(all[1].1.contains("duplicate route name `a`"));
    assert!(all[2].1.contains("http:// or https://"));
    assert!(all[3].1.contains("route `c`: unknown key `colour`"));
    assert!(all[4].1.contains("route `c`: no destinations"));
    assert!(all[5]
        .1
        .contains("header `Webhook-Signature` is the relay's own"));
    assert!(all[6].1.contains("MISSING_SECRET is not set"));
    // Display: one `origin:line: message` per line, as `relay routes check` prints it.
    let shown = parse(text).unwrap_err().to_string();
    assert!(
        shown.lines().all(|l| l.starts_with("routes.json:")),
        "{shown}"
    );
    assert_eq!(shown.lines().count(), 7);
}

#[test]
fn refuses_json_that_does_not_parse_with_its_line() {
    let (line, message) = one_problem("{\"routes\": [\n  {\"name\": \"a\",}\n]}");
    assert_eq!(line, 2);
    assert!(message.starts_with("not valid JSON"), "{message}");
}

#[test]
fn refuses_each_kind_of_bad_destination() {
    let with_destination = |d: &str| {
        format!(r#"{{"routes": [{{"name": "r", "match": {{}}, "destinations": [{d}]}}]}}"#)
    };
    for (destination, expected) in [
        (r#"{"url": "file:///etc/passwd"}"#, "http:// or https://"),
        (r#"{"url": "not a url"}"#, "not a URL"),
        (r#"{"url": "https://user:pw@x.example/"}"#, "credentials"),
        (r#"{}"#, "without `url`"),
        (r#"{"url": 5}"#, "`url` must be a string"),
        (
            r#"{"url": "https://x.example/", "secret": "whsec_x"}"#,
            "unknown key `secret`",
        ),
        (
            r#"{"url": "https://x.example/", "secret_env": "BAD NAME"}"#,
            "not an environment variable name",
        ),
        (
            r#"{"url": "https://x.example/", "secret_env": "AUTH"}"#,
            "secret_env AUTH:",
        ),
        (
            r#"{"url": "https://x.example/", "headers": {"content-type": "text/plain"}}"#,
            "relay's own",
        ),
        (
            r#"{"url": "https://x.example/", "headers": {"webhook-id": "x"}}"#,
            "relay's own",
        ),
        (
            r#"{"url": "https://x.example/", "headers": {"WEBHOOK-TIMESTAMP": "1"}}"#,
            "relay's own",
        ),
        (
            r#"{"url": "https://x.example/", "headers": {"Bad Name": "x"}}"#,
            "not a header name",
        ),
        (
            r#"{"url": "https://x.example/", "headers": {"X-A": "a\nX-Injected: 1"}}"#,
            "control characters",
        ),
        (
            r#"{"url": "https://x.example/", "headers": {"X-A": "1", "x-a": "2"}}"#,
            "given twice",
        ),
        (
            r#"{"url": "https://x.example/", "headers": {"X-A": 1}}"#,
            "a string, or",
        ),
        (
            r#"{"url": "https://x.example/", "headers": {"X-A": {"env": "NOPE"}}}"#,
            "NOPE is not set",
        ),
        (
            r#"{"url": "https://x.example/", "headers": {"Authorization": "Bearer abc"}}"#,
            "carries a credential",
        ),
        (
            r#"{"url": "https://x.example/", "headers": {"X-Api-Key": "Bearer abc"}}"#,
            "carries a credential",
        ),
        (
            r#"{"url": "https://x.example/", "headers": {"X-Auth-Token": "Bearer abc"}}"#,
            "carries a credential",
        ),
    ] {
        let (line, message) = one_problem(&with_destination(destination));
        assert_eq!(line, 1);
        assert!(message.contains(expected), "{destination}: {message}");
        assert!(message.starts_with("route `r`: "), "{message}");
        assert!(!message.contains("Bearer abc"), "{message}");
    }
}

#[test]
fn refuses_a_bad_secret_without_showing_it() {
    let text = r#"{"routes": [{"name": "r", "match": {}, "destinations": [
        {"url": "https://x.example/", "secret_env": "AUTH"}]}]}"#;
    let (line, message) = one_problem(text);
    assert_eq!(line, 2);
    assert!(!message.contains("t0ken"), "{message}");
}

#[test]
fn refuses_bad_shapes() {
    for (text, expected) in [
        (r#"[]"#, "must be a JSON object"),
        (r#"{}"#, "no `routes` list"),
        (r#"{"routes": {}}"#, "must be a list"),
        (r#"{"routes": []}"#, "`routes` is empty"),
        (r#"{"routes": [], "extra": 1}"#, "unknown key `extra`"),
        (r#"{"routes": [5]}"#, "must be a JSON object"),
        (
            r#"{"routes": [{"match": {}, "destinations": [{"url": "https://x.example/"}]}]}"#,
            "has no `name`",
        ),
        (
            r#"{"routes": [{"name": "a b", "match": {}, "destinations": [{"url": "https://x.example/"}]}]}"#,
            "route name `a b`",
        ),
        (
            r#"{"routes": [{"name": "r", "destinations": [{"url": "https://x.example/"}]}]}"#,
            "no `match`",
        ),
        (
            r#"{"routes": [{"name": "r", "match": {}}]}"#,
            "no `destinations`",
        ),
        (
            r#"{"routes": [{"name": "r", "match": {"family": "deal"}, "destinations": [{"url": "https://x.example/"}]}]}"#,
            "match: family: ",
        ),
        (
            r#"{"routes": [{"name": "r", "match": [], "destinations": [{"url": "https://x.example/"}]}]}"#,
            "a pattern is a JSON object",
        ),
        (
            r#"{"routes": [{"name": "r", "match": {}, "project": {"include": []}, "destinations": [{"url": "https://x.example/"}]}]}"#,
            "empty field list",
        ),
        (
            r#"{"routes": [{"name": "r", "match": {}, "project": {"only": ["ID"]}, "destinations": [{"url": "https://x.example/"}]}]}"#,
            "`project` is",
        ),
        (
            r#"{"routes": [{"name": "r", "match": {}, "project": {"include": ["ID"], "exclude": ["X"]}, "destinations": [{"url": "https://x.example/"}]}]}"#,
            "`project` is",
        ),
        (
            r#"{"routes": [{"name": "r", "match": {}, "project": {"include": ["ID", "ID"]}, "destinations": [{"url": "https://x.example/"}]}]}"#,
            "listed twice",
        ),
        (
            r#"{"routes": [{"name": "r", "name": "s", "match": {}, "destinations": [{"url": "https://x.example/"}]}]}"#,
            "given twice in one object",
        ),
    ] {
        let all = problems(text);
        assert!(
            all.iter().any(|(_, m)| m.contains(expected)),
            "{text}: expected {expected:?}, got {all:?}"
        );
    }
}

#[test]
fn reads_a_file_from_disk_and_names_it_in_errors() {
    let dir = std::env::temp_dir().join(format!("routes-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("routes.json");
    std::fs::write(&path, "{\"routes\": 1}").unwrap();
    let shown = Routes::load(&path).unwrap_err().to_string();
    assert!(
        shown.starts_with(&format!("{}:1: ", path.display())),
        "{shown}"
    );
    let missing = Routes::load(&dir.join("nope.json")).unwrap_err();
    assert!(matches!(missing, RoutesError::Read { .. }));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn located_json_keeps_every_line() {
    let text = "{\n \"a\": [\n  1,\n  {\"b\": \"x\\\"y\"}\n ],\n \"c\": null\n}";
    let tree = located::parse(text).unwrap();
    assert_eq!(tree.to_value(), json(text));
    assert_eq!(tree.line_of(&[PathStep::Key("a".into())]), 2);
    assert_eq!(
        tree.line_of(&[
            PathStep::Key("a".into()),
            PathStep::Index(1),
            PathStep::Key("b".into())
        ]),
        4
    );
    assert_eq!(tree.line_of(&[PathStep::Key("c".into())]), 6);
    assert_eq!(tree.line_of(&[PathStep::Key("zzz".into())]), 1);
}

#[test]
fn implicit_routes_send_each_family_to_its_own_url_or_the_general_one() {
    // Built from patterns too: a pattern that failed to compile there would silently become
    // "every event" and send deals to the general URL as well.
    let mut config = crate::config::RelayConfig {
        destination_url: Some("https://all.example/".into()),
        ..Default::default()
    };
    config
        .destination_per_family
        .insert(crate::event::Family::Deal, "https://deals.example/".into());
    let routes = Routes::implicit(&config);
    let urls = |family: &str| -> Vec<String> {
        routes
            .deliveries(&json!({"family": family}))
            .iter()
            .map(|d| d.destination.url.clone())
            .collect()
    };
    assert_eq!(urls("deal"), ["https://deals.example/"]);
    assert_eq!(urls("lead"), ["https://all.example/"]);
}

mod properties {
    use super::super::located;
    use proptest::prelude::*;
    use serde_json::Value;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The line-keeping reader and serde_json read every document the same way (escapes,
        /// numbers, nesting), compact or pretty.
        #[test]
        fn located_reads_what_serde_json_reads(value in json_value(), pretty in any::<bool>()) {
            let text = if pretty {
                serde_json::to_string_pretty(&value)
            } else {
                serde_json::to_string(&value)
            }
            .unwrap();
            let expected: Value = serde_json::from_str(&text).unwrap();
            let tree = located::parse(&text).unwrap();
            prop_assert_eq!(tree.to_value(), expected);
        }
    }
}

#[test]
fn a_destination_secret_may_be_an_ssm_parameter_named_once() {
    let ssm_secret = "whsec_ZXJwLXNpZ25pbmcta2V5LW9mLTMyLWJ5dGVzLWxvbmc=";
    let env = |name: &str| (name == "ssm:/crm-relay/routes/erp").then(|| ssm_secret.to_string());
    let text = r#"{"routes": [{"name": "erp", "match": {"family": ["deal"]},
        "destinations": [{"url": "https://erp.example/hook", "secret_ssm": "/crm-relay/routes/erp"}]}]}"#;
    let routes = parse_with_env(text, "routes.json", &env).expect("loads");
    assert_eq!(
        routes.routes[0].destinations[0]
            .secret
            .as_ref()
            .map(|s| s.expose()),
        Some(ssm_secret)
    );

    let missing = r#"{"routes": [{"name": "erp", "match": {"family": ["deal"]},
        "destinations": [{"url": "https://erp.example/hook",
                          "secret_ssm": "/crm-relay/routes/gone"}]}]}"#;
    let error = parse_with_env(missing, "routes.json", &env)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("routes.json:3:") && error.contains("/crm-relay/routes/gone does not exist"),
        "{error}"
    );

    let both = r#"{"routes": [{"name": "erp", "match": {"family": ["deal"]},
        "destinations": [{"url": "https://erp.example/hook", "secret_env": "X",
                          "secret_ssm": "/crm-relay/routes/erp"}]}]}"#;
    let error = parse_with_env(both, "routes.json", &env)
        .unwrap_err()
        .to_string();
    assert!(error.contains("name the secret once"), "{error}");

    let not_a_name = r#"{"routes": [{"name": "erp", "match": {"family": ["deal"]},
        "destinations": [{"url": "https://erp.example/hook", "secret_ssm": "erp secret"}]}]}"#;
    let error = parse_with_env(not_a_name, "routes.json", &env)
        .unwrap_err()
        .to_string();
    assert!(error.contains("not an SSM parameter name"), "{error}");
}
