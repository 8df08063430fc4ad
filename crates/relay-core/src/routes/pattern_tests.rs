//! Tests of EventBridge pattern matching, from the examples of the AWS EventBridge user guide
//! ("Creating event patterns", content filtering) and event-ruler's README, plus edge cases.

use super::*;
use serde_json::json;

fn pattern(p: Value) -> EventPattern {
    match EventPattern::from_json(&p) {
        Ok(compiled) => compiled,
        Err(e) => panic!("pattern {p} refused: {e}"),
    }
}

fn matches(p: Value, body: &Value) -> bool {
    pattern(p).matches(body)
}

fn refused(p: Value) -> String {
    match EventPattern::from_json(&p) {
        Ok(_) => panic!("pattern {p} was accepted"),
        Err(e) => e.to_string(),
    }
}

/// The EC2 event of the AWS EventBridge user guide, "Creating event patterns" and event-ruler's
/// README ("Ruler by Example"), with its `detail` numbers.
fn ec2_event() -> Value {
    json!({
        "version": "0",
        "id": "ddddd4-aaaa-7777-4444-345dd43cc333",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "012345679012",
        "time": "2017-10-02T16:24:49Z",
        "region": "us-east-1",
        "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-000000aaaaaa00000"],
        "detail": {
            "c-count": 5,
            "d-count": 3,
            "x-limit": 301.8,
            "source-ip": "10.0.0.33",
            "instance-id": "i-000000aaaaaa00000",
            "state": "running"
        }
    })
}

/// A forwarded body as `consume::forward_body` builds it: a Bitrix24 deal moved from the first
/// stage of pipeline 3 to its next stage.
fn deal_moved() -> Value {
    json!({
        "v": 1, "id": "e1", "source": "bitrix24", "portal": "m1", "domain": "b24.example",
        "family": "deal", "event": "ONCRMDEALUPDATE", "entity_type": "deal", "entity_id": "7",
        "ts": 1700000000, "received_at": "2026-11-29T10:00:00Z",
        "data": {"FIELDS": {"ID": "7"}},
        "entity": {"ID": "7", "TITLE": "Steel order", "STAGE_ID": "C3:PREPARATION",
                   "OPPORTUNITY": "1500.00", "CATEGORY_ID": "3", "COMMENTS": "call back"},
        "previous": {"ID": "7", "TITLE": "Steel order", "STAGE_ID": "C3:NEW",
                     "OPPORTUNITY": "1500.00", "CATEGORY_ID": "3", "COMMENTS": "call back"},
        "deleted": false, "first_seen": false, "enrichment": "fetched",
        "changes": [{"field": "STAGE_ID", "old": "C3:NEW", "new": "C3:PREPARATION"}]
    })
}

// ---- AWS EventBridge user guide, "Creating event patterns" ----

#[test]
fn aws_creating_event_patterns_ec2_termination() {
    let terminated = json!({
        "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
        "account": "111122223333", "time": "2017-12-22T18:43:48Z", "region": "us-west-1",
        "resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"],
        "detail": {"instance-id": "i-1234567890abcdef0", "state": "terminated"}
    });
    let p = json!({
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Instance State-change Notification"],
        "detail": {"state": ["terminated"]}
    });
    assert!(matches(p.clone(), &terminated));
    assert!(!matches(p, &ec2_event()), "state is running");
    assert!(matches(
        json!({"source": ["aws.ec2", "aws.fargate"]}),
        &terminated
    ));
}

// ---- event-ruler README "Simple matching" (the matcher EventBridge documents) ----

#[test]
fn aws_simple_matching_with_array_intersection() {
    let p = json!({
        "detail-type": ["EC2 Instance State-change Notification"],
        "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-000000aaaaaa00000"],
        "detail": {"state": ["initializing", "running"]}
    });
    assert!(matches(p, &ec2_event()));
}

// ---- AWS EventBridge user guide, "Arrays in Amazon EventBridge event patterns" ----

#[test]
fn aws_arrays_match_when_the_intersection_is_not_empty() {
    let p = json!({"resources": [
        "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
        "arn:aws:ec2:us-east-1:111122223333:instance/i-b188560f",
        "arn:aws:ec2:us-east-1:444455556666:instance/i-b188560f"
    ]});
    let event = json!({"resources": [
        "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:eb56d16b-bbf0-401d-b893-d5978ed4a025:autoScalingGroupName/ASGTerminate",
        "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f"
    ]});
    assert!(matches(p.clone(), &event));
    assert!(!matches(
        p,
        &json!({"resources": ["arn:aws:ec2:us-east-1:1:instance/other"]})
    ));
}

// ---- AWS EventBridge user guide, "Matching null values and empty strings" ----

#[test]
fn aws_null_and_empty_string_are_different_values() {
    let event = json!({
        "source": "aws.autoscaling",
        "detail": {"eventVersion": "", "responseElements": null}
    });
    assert!(matches(json!({"detail": {"eventVersion": [""]}}), &event));
    assert!(matches(
        json!({"detail": {"responseElements": [null]}}),
        &event
    ));
    assert!(!matches(
        json!({"detail": {"eventVersion": [null]}}),
        &event
    ));
    assert!(!matches(
        json!({"detail": {"responseElements": [""]}}),
        &event
    ));
}

// ---- AWS EventBridge user guide, "Content filtering in event patterns" / "Comparison operators" ----

#[test]
fn aws_prefix_matching() {
    let p = json!({"time": [{"prefix": "2017-10-02"}]});
    assert!(matches(p.clone(), &ec2_event()));
    assert!(!matches(p, &json!({"time": "2017-10-03T00:00:00Z"})));
    // Prefix matching works on strings only.
    assert!(!matches(json!({"n": [{"prefix": "1"}]}), &json!({"n": 12})));
}

#[test]
fn aws_prefix_and_suffix_ignoring_case() {
    let p = json!({"detail": {"service": [{"prefix": {"equals-ignore-case": "EventB"}}]}});
    for service in ["EventBridge", "EVENTBRIDGE", "eventbus"] {
        assert!(
            matches(p.clone(), &json!({"detail": {"service": service}})),
            "{service}"
        );
    }
    assert!(!matches(p, &json!({"detail": {"service": "SNS"}})));

    let p = json!({"detail": {"FileName": [{"suffix": {"equals-ignore-case": ".png"}}]}});
    assert!(matches(
        p.clone(),
        &json!({"detail": {"FileName": "a.PNG"}})
    ));
    assert!(!matches(p, &json!({"detail": {"FileName": "a.jpg"}})));
}

#[test]
fn aws_suffix_matching() {
    let p = json!({"FileName": [{"suffix": ".png"}]});
    assert!(matches(p.clone(), &json!({"FileName": "dir/image.png"})));
    assert!(!matches(p.clone(), &json!({"FileName": "dir/image.PNG"})));
    assert!(matches(
        json!({"source": [{"suffix": "ec2"}]}),
        &ec2_event()
    ));
}

#[test]
fn aws_equals_ignore_case() {
    let p = json!({"Name": [{"equals-ignore-case": "alice"}]});
    assert!(matches(p.clone(), &json!({"Name": "Alice"})));
    assert!(!matches(p, &json!({"Name": "Alicia"})));
    // Unicode, not just ASCII: Bitrix24 titles are often Cyrillic.
    let p = json!({"entity": {"TITLE": [{"equals-ignore-case": "сделка"}]}});
    assert!(matches(p, &json!({"entity": {"TITLE": "СДЕЛКА"}})));
}

#[test]
fn aws_wildcard_matching() {
    // "Any file with a .png extension, located within the folder dir".
    let p = json!({"FileName": [{"wildcard": "dir/*.png"}]});
    assert!(matches(p.clone(), &json!({"FileName": "dir/a.png"})));
    assert!(matches(p.clone(), &json!({"FileName": "dir/sub/b.png"})));
    assert!(!matches(p.clone(), &json!({"FileName": "other/a.png"})));
    assert!(!matches(p, &json!({"FileName": "dir/a.png.txt"})));
    // event-ruler's README: "Simple*Service".
    let p = json!({"source": [{"wildcard": "Simple*Service"}]});
    assert!(matches(
        p.clone(),
        &json!({"source": "Simple Queue Service"})
    ));
    assert!(matches(p.clone(), &json!({"source": "SimpleService"})));
    assert!(!matches(p, &json!({"source": "Simple Queue Services"})));
    // Escapes: `\*` is a literal star.
    let p = json!({"v": [{"wildcard": "a\\*b*"}]});
    assert!(matches(p.clone(), &json!({"v": "a*bcd"})));
    assert!(!matches(p, &json!({"v": "axbcd"})));
    assert!(refused(json!({"v": [{"wildcard": "a**b"}]})).contains("two `*`"));
    assert!(refused(json!({"v": [{"wildcard": "a\\b"}]})).contains("escapes only"));
}

#[test]
fn aws_anything_but_values_and_lists() {
    let running = ec2_event();
    assert!(!matches(
        json!({"detail": {"state": [{"anything-but": "running"}]}}),
        &running
    ));
    assert!(matches(
        json!({"detail": {"state": [{"anything-but": "initializing"}]}}),
        &running
    ));
    assert!(matches(
        json!({"detail": {"x-limit": [{"anything-but": 123}]}}),
        &running
    ));
    assert!(matches(
        json!({"detail": {"state": [{"anything-but": ["stopped", "overloaded"]}]}}),
        &running
    ));
    assert!(!matches(
        json!({"detail": {"state": [{"anything-but": ["stopped", "running"]}]}}),
        &running
    ));
    assert!(matches(
        json!({"detail": {"x-limit": [{"anything-but": [100, 200, 300]}]}}),
        &running
    ));
    assert!(!matches(
        json!({"detail": {"x-limit": [{"anything-but": [100, 301.8]}]}}),
        &running
    ));
    // A missing field is not "anything but": there is nothing to compare.
    assert!(!matches(
        json!({"detail": {"absent": [{"anything-but": "x"}]}}),
        &running
    ));
    assert!(
        refused(json!({"v": [{"anything-but": ["a", 1]}]})).contains("all strings or all numbers")
    );
}

#[test]
fn aws_anything_but_prefix_suffix_ignore_case_wildcard() {
    let p = json!({"detail": {"state": [{"anything-but": {"prefix": "init"}}]}});
    assert!(matches(p.clone(), &ec2_event()));
    assert!(!matches(p, &json!({"detail": {"state": "initializing"}})));
    // "Region is not in the US".
    let p = json!({"Region": [{"anything-but": {"prefix": "us-"}}]});
    assert!(matches(p.clone(), &json!({"Region": "eu-west-1"})));
    assert!(!matches(p, &json!({"Region": "us-east-1"})));
    // "FileName does not end with a .png extension".
    let p = json!({"FileName": [{"anything-but": {"suffix": ".png"}}]});
    assert!(matches(p.clone(), &json!({"FileName": "a.jpg"})));
    assert!(!matches(p, &json!({"FileName": "a.png"})));
    // "State is any value besides initializing, in any casing".
    let p = json!({"state": [{"anything-but": {"equals-ignore-case": "initializing"}}]});
    assert!(!matches(p.clone(), &json!({"state": "INITIALIZING"})));
    assert!(matches(p, &json!({"state": "running"})));
    let p = json!({"state": [{"anything-but": {"equals-ignore-case": ["a", "B"]}}]});
    assert!(!matches(p.clone(), &json!({"state": "b"})));
    // "FilePath is not a file path that includes /lib/".
    let p = json!({"FilePath": [{"anything-but": {"wildcard": "*/lib/*"}}]});
    assert!(matches(p.clone(), &json!({"FilePath": "/usr/bin/x"})));
    assert!(!matches(p, &json!({"FilePath": "/usr/lib/x"})));
}

#[test]
fn aws_numeric_matching() {
    let p = json!({"detail": {
        "c-count": [{"numeric": [">", 0, "<=", 5]}],
        "d-count": [{"numeric": ["<", 10]}],
        "x-limit": [{"numeric": ["=", 3.018e2]}]
    }});
    assert!(matches(p.clone(), &ec2_event()));
    let mut six = ec2_event();
    six["detail"]["c-count"] = json!(6);
    assert!(!matches(p, &six));
    // "Price is more than 10, and less than or equal to 20".
    let p = json!({"Price": [{"numeric": [">", 10, "<=", 20]}]});
    assert!(matches(p.clone(), &json!({"Price": 20})));
    assert!(!matches(p.clone(), &json!({"Price": 10})));
    assert!(!matches(p, &json!({"Price": 20.5})));
    // "Price is 100", as an exact number.
    assert!(matches(json!({"Price": [100]}), &json!({"Price": 100.0})));
}

#[test]
fn aws_exists_matching_works_on_leaves_only() {
    // Present: the guide's `detail.state` example.
    let p = json!({"detail": {"state": [{"exists": true}]}});
    assert!(matches(p.clone(), &ec2_event()));
    let no_state = json!({
        "detail-type": ["EC2 Instance State-change Notification"],
        "detail": {"c-count": {"c1": 100}}
    });
    assert!(!matches(p, &no_state));
    // Absent: `detail.c-count` is not a leaf there, so it "does not exist".
    let p = json!({"detail": {"c-count": [{"exists": false}]}});
    assert!(matches(p.clone(), &no_state));
    assert!(!matches(p.clone(), &ec2_event()));
    let without = json!({"detail": {"state": ["initializing", "running"]}});
    assert!(matches(p, &without));
    // A null is a value: it exists.
    assert!(matches(
        json!({"v": [{"exists": true}]}),
        &json!({"v": null})
    ));
}

#[test]
fn aws_complex_example_with_multiple_matching() {
    let p = json!({
        "time": [{"prefix": "2017-10-02"}],
        "detail": {
            "state": [{"anything-but": "initializing"}],
            "c-count": [{"numeric": [">", 0, "<=", 5]}],
            "d-count": [{"numeric": ["<", 10]}],
            "x-limit": [{"anything-but": [100, 200, 300]}]
        }
    });
    assert!(matches(p.clone(), &ec2_event()));
    let mut initializing = ec2_event();
    initializing["detail"]["state"] = json!("initializing");
    assert!(!matches(p, &initializing));
}

#[test]
fn aws_or_examples() {
    // "PaymentType is Credit or Debit".
    assert!(matches(
        json!({"PaymentType": ["Credit", "Debit"]}),
        &json!({"PaymentType": "Debit"})
    ));
    // "Location is New York, or Day is Monday".
    let p = json!({"$or": [{"Location": ["New York"]}, {"Day": ["Monday"]}]});
    assert!(matches(
        p.clone(),
        &json!({"Location": "Boston", "Day": "Monday"})
    ));
    assert!(matches(
        p.clone(),
        &json!({"Location": "New York", "Day": "Friday"})
    ));
    assert!(!matches(p, &json!({"Location": "Boston", "Day": "Friday"})));
    // event-ruler: source && (metricName || (metricType && namespace && (metricId || spaceId)) || scope).
    let p = json!({
        "source": ["aws.cloudwatch"],
        "$or": [
            {"metricName": ["CPUUtilization", "ReadLatency"]},
            {"metricType": ["MetricType"], "namespace": ["AWS/EC2", "AWS/ES"],
             "$or": [{"metricId": [1234]}, {"spaceId": [1000]}]},
            {"scope": ["Service"]}
        ]
    });
    let nested = json!({"source": "aws.cloudwatch", "metricType": "MetricType",
                        "namespace": "AWS/EC2", "spaceId": 1000});
    assert!(matches(p.clone(), &nested));
    let mut no_id = nested.clone();
    no_id["spaceId"] = json!(1);
    assert!(!matches(p.clone(), &no_id));
    assert!(matches(
        p.clone(),
        &json!({"source": "aws.cloudwatch", "scope": "Service"})
    ));
    assert!(!matches(
        p,
        &json!({"source": "aws.ec2", "scope": "Service"})
    ));
    // Parallel $or inside a nested object.
    let p = json!({
        "$or": [{"metricName": ["CPUUtilization"]}, {"namespace": ["AWS/EC2"]}],
        "detail": {"$or": [{"source": ["aws.cloudwatch"]},
                           {"detail-type": ["CloudWatch Alarm State Change"]}]}
    });
    assert!(matches(
        p.clone(),
        &json!({"namespace": "AWS/EC2", "detail": {"source": "aws.cloudwatch"}})
    ));
    assert!(!matches(
        p,
        &json!({"namespace": "AWS/EC2", "detail": {"source": "aws.ec2"}})
    ));
}

#[test]
fn aws_array_consistent_matching_never_mixes_two_elements() {
    // event-ruler README, "JSON Array Matching".
    let event = json!({"employees": [
        {"firstName": "John", "lastName": "Doe"},
        {"firstName": "Anna", "lastName": "Smith"},
        {"firstName": "Peter", "lastName": "Jones"}
    ]});
    assert!(matches(
        json!({"employees": {"firstName": ["Anna"]}}),
        &event
    ));
    assert!(!matches(
        json!({"employees": {"firstName": ["Anna"], "lastName": ["Jones"]}}),
        &event
    ));
    assert!(matches(
        json!({"employees": {"firstName": ["Anna"], "lastName": ["Smith"]}}),
        &event
    ));
}

// ---- the forwarded body ----

#[test]
fn matches_the_envelope_and_any_entity_field() {
    let body = deal_moved();
    assert!(matches(
        json!({"source": ["bitrix24"], "family": ["deal"], "event": ["ONCRMDEALUPDATE"],
                           "entity_type": ["deal"]}),
        &body
    ));
    assert!(matches(json!({"entity": {"CATEGORY_ID": ["3"]}}), &body));
    assert!(!matches(json!({"family": ["lead"]}), &body));
    assert!(matches(
        json!({"first_seen": [false], "deleted": [false]}),
        &body
    ));
    assert!(EventPattern::match_all().matches(&body));
}

#[test]
fn only_when_stage_changed() {
    let p = json!({"changes": {"field": ["STAGE_ID"]}});
    assert!(matches(p.clone(), &deal_moved()));
    let mut title_only = deal_moved();
    title_only["changes"] = json!([{"field": "TITLE", "old": "a", "new": "b"}]);
    assert!(!matches(p.clone(), &title_only));
    let mut first_sight = deal_moved();
    first_sight["changes"] = json!([]);
    assert!(!matches(p, &first_sight));
    // One change, both conditions: STAGE_ID moved *to* a won stage.
    let won = json!({"changes": {"field": ["STAGE_ID"], "new": [{"suffix": "WON"}]}});
    assert!(!matches(won.clone(), &deal_moved()));
    let mut two = deal_moved();
    two["changes"] = json!([
        {"field": "STAGE_ID", "old": "C3:NEW", "new": "C3:PREPARATION"},
        {"field": "COMMENTS", "old": "x", "new": "C3:WON"}
    ]);
    assert!(
        !matches(won, &two),
        "two different changes must not combine"
    );
}

#[test]
fn numbers_in_patterns_compare_by_value_with_bitrix24_number_strings() {
    let body = deal_moved(); // OPPORTUNITY "1500.00"
    assert!(matches(
        json!({"entity": {"OPPORTUNITY": [{"numeric": [">=", 1000]}]}}),
        &body
    ));
    assert!(!matches(
        json!({"entity": {"OPPORTUNITY": [{"numeric": [">", 1500]}]}}),
        &body
    ));
    assert!(matches(json!({"entity": {"OPPORTUNITY": [1500]}}), &body));
    assert!(!matches(
        json!({"entity": {"OPPORTUNITY": [{"anything-but": [1500]}]}}),
        &body
    ));
    // A string in a pattern is a string.
    assert!(!matches(
        json!({"entity": {"OPPORTUNITY": ["1500"]}}),
        &body
    ));
    // Only what spells a number is one.
    for not_a_number in [
        "", " 1500", "1 500", "1,5", "inf", "NaN", "0x10", "1.", ".5", "1e",
    ] {
        let body = json!({"v": not_a_number});
        assert!(
            !matches(json!({"v": [{"numeric": [">", -1e300]}]}), &body),
            "{not_a_number:?}"
        );
    }
    for number in ["0", "-3", "1500.00", "1e3", "2.5E-1"] {
        assert!(
            matches(
                json!({"v": [{"numeric": [">", -1e300]}]}),
                &json!({"v": number})
            ),
            "{number}"
        );
    }
}

#[test]
fn skips_deals_still_in_the_first_stage_of_any_pipeline() {
    // A user's rule, "deals with the initial status NEW are skipped"; pipelines other than the
    // default one name their first stage `C<n>:NEW`.
    // Two exclusions on one field are one `anything-but` with a list of wildcards: a
    // wildcard without `*` is the exact value.
    let p = json!({
        "family": ["deal"],
        "entity": {"STAGE_ID": [{"anything-but": {"wildcard": ["NEW", "*:NEW"]}}]}
    });
    let with_stage = |stage: &str| {
        let mut b = deal_moved();
        b["entity"]["STAGE_ID"] = json!(stage);
        b
    };
    assert!(!matches(p.clone(), &with_stage("NEW")));
    assert!(!matches(p.clone(), &with_stage("C3:NEW")));
    assert!(matches(p.clone(), &with_stage("C3:PREPARATION")));
    assert!(matches(p.clone(), &with_stage("WON")));
    assert!(
        matches(p.clone(), &with_stage("RENEWAL")),
        "only the whole stage NEW"
    );
    // No entity (deleted, not fetched): nothing to compare, so no match.
    let mut gone = deal_moved();
    gone["entity"] = Value::Null;
    assert!(!matches(p, &gone));
}

#[test]
fn refuses_mistakes_with_their_place() {
    assert_eq!(
        refused(json!({"entity": {"STAGE_ID": [{"begins-with": "C"}]}})),
        "entity.STAGE_ID[0].begins-with: unknown operator `begins-with`; known: prefix, suffix, \
         equals-ignore-case, wildcard, anything-but, numeric, exists"
    );
    assert!(refused(json!({"family": "deal"})).starts_with("family: "));
    assert!(refused(json!({"family": []})).contains("matches nothing"));
    assert!(refused(json!({"v": [{"exists": "yes"}]})).contains("true or false"));
    assert!(refused(json!({"v": [{"prefix": 1}]})).contains("takes a string"));
    assert!(refused(json!({"v": [{"numeric": ["<", "10"]}]})).contains("numeric"));
    assert!(refused(json!({"v": [{"numeric": ["<", 10, ">", 0]}]})).contains("numeric"));
    assert!(refused(json!({"v": [{"numeric": [">", 5, "<", 1]}]})).contains("lower bound"));
    assert!(refused(json!({"v": [{"prefix": "a", "suffix": "b"}]})).contains("exactly one key"));
    assert!(refused(json!({"v": [["a"]]})).contains("list inside a list"));
    assert!(refused(json!({"$or": [{"a": ["1"]}]})).contains("at least two"));
    assert!(refused(json!({"$or": {"a": ["1"]}})).contains("list of patterns"));
    assert!(refused(json!({"$or": [{"a": ["1"]}, {}]})).starts_with("$or[1]: "));
    assert!(refused(json!({"ip": [{"cidr": "10.0.0.0/24"}]})).contains("not supported"));
    assert!(refused(json!(["deal"])).contains("JSON object"));
    let e = EventPattern::from_json(&json!({"a": {"b": [1, {"numeric": []}]}})).unwrap_err();
    assert_eq!(
        e.at,
        vec![
            PathStep::Key("a".into()),
            PathStep::Key("b".into()),
            PathStep::Index(1),
            PathStep::Key("numeric".into())
        ]
    );
}

#[test]
fn equal_when_written_the_same() {
    assert_eq!(pattern(json!({"a": ["1"]})), pattern(json!({"a": ["1"]})));
    assert_ne!(pattern(json!({"a": ["1"]})), pattern(json!({"a": ["2"]})));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            prop_oneof![
                Just("NEW"),
                Just("C3:NEW"),
                Just("1500.00"),
                Just("-1e3"),
                Just(""),
                Just("STAGE_ID"),
                Just("deal"),
                Just("сделка"),
                Just("a*b\\")
            ]
            .prop_map(|s| Value::String(s.to_string())),
            any::<String>().prop_map(Value::String),
        ];
        let key = prop_oneof![
            Just("entity"),
            Just("changes"),
            Just("field"),
            Just("new"),
            Just("STAGE_ID"),
            Just("OPPORTUNITY"),
            Just("family"),
            Just("$or")
        ]
        .prop_map(str::to_string);
        leaf.prop_recursive(5, 48, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn patterns() -> Vec<EventPattern> {
        [
            json!({"family": ["deal"], "entity": {"STAGE_ID": [{"anything-but": {"wildcard": ["NEW", "*:NEW"]}}]}}),
            json!({"changes": {"field": ["STAGE_ID"], "new": [{"suffix": ":WON"}, {"exists": false}]}}),
            json!({"entity": {"OPPORTUNITY": [{"numeric": [">", 0, "<=", 5000]}, 1500, {"anything-but": [0]}]}}),
            json!({"$or": [{"entity": {"STAGE_ID": [{"prefix": {"equals-ignore-case": "c3:"}}]}},
                           {"family": [{"equals-ignore-case": "DEAL"}, {"wildcard": "d*l"}, null]}]}),
        ]
        .iter()
        .map(|p| EventPattern::from_json(p).unwrap())
        .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a CRM and the enrichment put in a body, matching answers (no panic), and
        /// a pattern matches a body exactly when `$or` of it with itself does.
        #[test]
        fn any_body_gets_an_answer(body in json_value()) {
            for p in patterns() {
                let doubled = EventPattern::from_json(&json!({"$or": [p.as_json(), p.as_json()]})).unwrap();
                prop_assert_eq!(p.matches(&body), doubled.matches(&body));
            }
        }

        /// Any JSON is either a pattern or refused with a message; never a panic.
        #[test]
        fn any_json_compiles_or_is_refused(pattern in json_value(), body in json_value()) {
            match EventPattern::from_json(&pattern) {
                Ok(p) => { let _ = p.matches(&body); }
                Err(e) => prop_assert!(!e.message.is_empty()),
            }
        }
    }
}
