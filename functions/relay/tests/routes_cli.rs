//! `relay routes check` and `relay routes test` as a user runs them: the real binary on the
//! sample routes file (`events/routes/`), and on a file with mistakes.

mod harness;

use harness::{events_dir, run_relay, TempDir};

/// 24 bytes: the Standard Webhooks specification's example secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn sample(name: &str) -> String {
    events_dir().join("routes").join(name).display().to_string()
}

fn relay(env: &[(&str, String)], args: &[&str]) -> (bool, String, String) {
    let dir = TempDir::new("routes-cli");
    run_relay(dir.path(), env, args)
}

fn with_secret() -> Vec<(&'static str, String)> {
    vec![("WAREHOUSE_SIGNING_SECRET", SECRET.to_string())]
}

#[test]
fn check_prints_one_line_per_route_and_no_secret() {
    let file = sample("warehouse.routes.json");
    let (ok, out, err) = relay(&with_secret(), &["routes", "check", &file]);
    assert!(ok, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("warehouse "), "{out}");
    assert!(
        lines[0].contains("-> https://warehouse.example/… "),
        "{out}"
    );
    assert!(!out.contains("reg-deal"), "a URL path was printed: {out}");
    assert!(
        lines[0].contains("only ID, TITLE, STAGE_ID, OPPORTUNITY"),
        "{out}"
    );
    assert!(lines[1].starts_with("stage-board "), "{out}");
    assert!(
        !out.contains("MfKQ9r8") && !err.contains("MfKQ9r8"),
        "{out}{err}"
    );
    assert!(!out.contains("sales"), "a header value was printed: {out}");
}

#[test]
fn check_refuses_a_missing_secret_variable_unless_told_to_skip_env() {
    let file = sample("warehouse.routes.json");
    let (ok, out, err) = relay(&[], &["routes", "check", &file]);
    assert!(!ok, "{out}");
    assert!(
        err.contains(&format!("{file}:15: route `warehouse`: secret_env: environment variable WAREHOUSE_SIGNING_SECRET is not set")),
        "{err}"
    );
    assert!(err.contains("refused, 1 problem"), "{err}");

    let (ok, out, err) = relay(&[], &["routes", "check", "--skip-env", &file]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
}

#[test]
fn check_lists_every_problem_with_its_line() {
    let dir = TempDir::new("routes-bad");
    let file = dir.path().join("routes.json");
    std::fs::write(
        &file,
        r#"{"routes": [
  {"name": "a",
   "match": {"entity": {"OPPORTUNITY": [{"numeric": [">", "1000"]}]}},
   "destinations": [{"url": "https://a.example/"}]},
  {"name": "a",
   "match": {},
   "destinations": [{"url": "https://b.example/", "headers": {"Content-Type": "text/plain"}}]}
]}"#,
    )
    .unwrap();
    let file = file.display().to_string();
    let (ok, out, err) = run_relay(dir.path(), &[], &["routes", "check", &file]);
    assert!(!ok, "{out}");
    assert!(out.is_empty(), "{out}");
    let expected = [
        format!("{file}:3: route `a`: match: entity.OPPORTUNITY[0].numeric: "),
        format!("{file}:5: duplicate route name `a`"),
        format!("{file}:7: route `a`: header `Content-Type` is the relay's own"),
    ];
    for line in &expected {
        assert!(err.contains(line.as_str()), "{line:?} missing from:\n{err}");
    }
    assert!(err.contains("refused, 3 problems"), "{err}");

    // Not JSON at all: the line serde_json stopped at.
    std::fs::write(&file, "{\"routes\": [\n  {\"name\": \"a\",}\n]}").unwrap();
    let (ok, _, err) = run_relay(dir.path(), &[], &["routes", "check", &file]);
    assert!(!ok);
    assert!(err.contains(&format!("{file}:2: not valid JSON")), "{err}");
}

#[test]
fn test_shows_which_routes_match_and_the_projected_bodies() {
    let file = sample("warehouse.routes.json");
    let moved = sample("deal-moved.forwarded.json");
    let (ok, out, err) = relay(&with_secret(), &["routes", "test", &file, &moved]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("route warehouse: matches\n"), "{out}");
    assert!(out.contains("route stage-board: matches\n"), "{out}");
    assert!(
        out.contains("warehouse -> POST https://warehouse.example/… (signed with its own secret)"),
        "{out}"
    );
    assert!(
        out.contains(
            "stage-board -> POST https://board.example/… (signed with RELAY_SIGNING_SECRET)"
        ),
        "{out}"
    );
    assert!(out.contains("X-Board-Team: <set>"), "{out}");
    // Title, stage and amount reach the warehouse; the comment reaches nobody.
    assert!(out.contains("\"OPPORTUNITY\": \"1500000.00\""), "{out}");
    assert!(out.contains("\"TITLE\": \"Сталь 09Г2С, 12 т\""), "{out}");
    assert!(!out.contains("скидку"), "{out}");
    assert!(!out.contains("COMMENTS"), "{out}");

    let new = sample("deal-new.forwarded.json");
    let (ok, out, err) = relay(&with_secret(), &["routes", "test", &file, &new]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("route warehouse: does not match\n"), "{out}");
    assert!(out.contains("route stage-board: does not match\n"), "{out}");
    assert!(
        out.contains("no destination would receive this body"),
        "{out}"
    );
}

#[test]
fn test_refuses_a_body_that_is_not_a_json_object() {
    let dir = TempDir::new("routes-body");
    let body = dir.path().join("body.json");
    std::fs::write(&body, "[1, 2]").unwrap();
    let file = sample("warehouse.routes.json");
    let body = body.display().to_string();
    let (ok, _, err) = run_relay(
        dir.path(),
        &[],
        &["routes", "test", "--skip-env", &file, &body],
    );
    assert!(!ok);
    assert!(err.contains("a forwarded body is a JSON object"), "{err}");
}
