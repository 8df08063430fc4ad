//! Property-based fuzzing of everything that reads a body before authentication: the PHP form
//! and JSON decoders, the Bitrix24 and SalesMan parsers, the envelope id and the whole ingress
//! handler. Each property must hold for every input: no panic, no 5xx, no allocation past the
//! budget. Stable Rust (proptest), run as ordinary tests: a bounded slice in CI, and a long
//! campaign with `scripts/fuzz.sh [SECONDS]`, which sets RELAY_FUZZ_SECONDS.

use async_trait::async_trait;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use relay_core::config::{AppTokens, RelayConfig};
use relay_core::error::StoreError;
use relay_core::event::{envelope_id, Family, RelayEvent, Source};
use relay_core::ingest::{IngestRequest, Ingress, MAX_BODY_BYTES};
use relay_core::parse::bitrix24::parse_bitrix24;
use relay_core::parse::salesman::parse_salesman;
use relay_core::parse::{decode_document, BodyEncoding};
use relay_core::ports::{Queue, QueueMessage};
use relay_core::secret::Secret;
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

// ---------------------------------------------------------------- allocation budget

/// Counts the bytes each thread holds, so one decode's peak can be measured.
struct CountingAllocator;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        account(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Bytes allocated at the peak of `f` above what the thread held before it.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - start).max(0) as usize)
}

/// What decoding any body up to MAX_BODY_BYTES may hold at once: the limits (fields,
/// containers, depth) keep a 1 MiB body to a small multiple of its size.
const DECODE_BUDGET: usize = 32 * 1024 * 1024;

// ---------------------------------------------------------------- inputs

const APP_TOKEN: &str = "fuzz-app-token";
const SALESMAN_SECRET: &str = "fuzz-salesman-secret";

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("event".to_string()),
        Just("auth".to_string()),
        Just("data".to_string()),
        Just("ts".to_string()),
        Just("FIELDS".to_string()),
        Just("ID".to_string()),
        Just("application_token".to_string()),
        Just("member_id".to_string()),
        Just("identity".to_string()),
        Just("token".to_string()),
        text_from(NAME_CHARS, 8),
        text_from(DIGITS, 20),
    ]
}

const NAME_CHARS: &[char] = &[
    'a', 'b', 'Z', '0', '7', '_', ' ', '.', '%', '-', '[', ']', '&', '=', '+', 'é', '\0',
];
const DIGITS: &[char] = &['0', '1', '5', '9', '-'];

/// Text of up to `max` characters from `alphabet` (regex strategies cost ~100 times more to
/// generate, which a campaign would spend on generating instead of testing).
fn text_from(alphabet: &'static [char], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(alphabet), 0..=max)
        .prop_map(|chars| chars.into_iter().collect())
}

fn scalar_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(APP_TOKEN.to_string()),
        Just(SALESMAN_SECRET.to_string()),
        Just("ONCRMDEALUPDATE".to_string()),
        Just("ONAPPINSTALL".to_string()),
        Just("deal.edit".to_string()),
        Just("m1".to_string()),
        text_from(DIGITS, 12),
        prop::collection::vec(any::<char>(), 0..24).prop_map(|c| c.into_iter().collect()),
    ]
}

/// A form key as PHP reads it: a name, then bracket segments, some of them broken.
fn form_key() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        name().prop_map(|n| format!("[{n}]")),
        Just("[]".to_string()),
        Just("[ ]".to_string()),
        name().prop_map(|n| format!("[{n}")),
        Just("]".to_string()),
        name(),
    ];
    (name(), prop::collection::vec(segment, 0..40)).prop_map(|(base, segments)| {
        let mut key = base;
        for s in segments {
            key.push_str(&s);
        }
        key
    })
}

fn form_body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((form_key(), scalar_text()), 0..40).prop_map(|pairs| {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            out.append_pair(k, v);
        }
        out.finish().into_bytes()
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        scalar_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(40, 400, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((name(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A document shaped like a CRM's: a Bitrix24 or SalesMan event with random extras.
fn crm_document() -> impl Strategy<Value = Value> {
    (json_value(), any::<bool>(), scalar_text(), scalar_text()).prop_map(
        |(extra, bitrix, event, id)| {
            if bitrix {
                serde_json::json!({"event": event, "ts": "1700000000",
                    "data": {"FIELDS": {"ID": id}, "extra": extra},
                    "auth": {"member_id": "m1", "application_token": APP_TOKEN,
                             "domain": "a.bitrix24.ru"}})
            } else {
                serde_json::json!({"event": event, "identity": "1", "did": id, "extra": extra})
            }
        },
    )
}

/// Text cut or flipped at a random place: near-valid input finds the edge cases.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    (0..=len, any::<u8>(), 0..3u8).prop_map(move |(at, byte, how)| {
        let mut out = base.clone();
        match how {
            0 => out.truncate(at),
            1 if at < out.len() => out[at] = byte,
            _ => out.insert(at.min(out.len()), byte),
        }
        out
    })
}

/// Bodies built to cost memory: repeated nesting units, as an attacker would send them.
fn bomb() -> impl Strategy<Value = (BodyEncoding, Vec<u8>)> {
    let unit = prop_oneof![
        Just((BodyEncoding::Json, r#"{"a":{"a":{}}},"#.to_string())),
        Just((BodyEncoding::Json, "[],".to_string())),
        Just((BodyEncoding::Json, "{},".to_string())),
        Just((BodyEncoding::Json, r#"{"k":"v","l":[1]},"#.to_string())),
        Just((BodyEncoding::Form, "a[][][][][][][][]=&".to_string())),
        Just((BodyEncoding::Form, "k[a][b][c][d][e][f]=&".to_string())),
        Just((BodyEncoding::Form, "x[]=1&".to_string())),
    ];
    (unit, 1..60_000usize).prop_map(|((encoding, unit), times)| {
        let times = times.min(MAX_BODY_BYTES / unit.len());
        let body = match encoding {
            BodyEncoding::Json => format!("[{}0]", unit.repeat(times)),
            BodyEncoding::Form => unit.repeat(times),
        };
        (encoding, body.into_bytes())
    })
}

// ---------------------------------------------------------------- properties

fn decode_within_budget(encoding: BodyEncoding, body: &[u8]) -> Result<(), TestCaseError> {
    let (decoded, peak) = peak_allocation(|| decode_document(encoding, body));
    prop_assert!(
        peak <= DECODE_BUDGET,
        "decoding {} bytes held {peak} bytes",
        body.len()
    );
    if let Ok(document) = decoded {
        // What the parsers do with any decoded document: never panic.
        let _ = parse_bitrix24(&document);
        let _ = parse_salesman(&document);
        let data = Value::Object(document);
        let id = envelope_id(Source::Bitrix24, "m1", "E", &data, 1);
        prop_assert_eq!(id.len(), 64);
        // The same document with its keys written in the opposite order gets the same id.
        // (Both texts are re-parsed: serde_json does not round-trip every float exactly, and
        // ingress computes an id once, from the text it received.)
        let parse = |text: String| serde_json::from_str::<Value>(&text);
        let forward = parse(key_ordered_text(&data, false));
        let backward = parse(key_ordered_text(&data, true));
        if let (Ok(forward), Ok(backward)) = (forward, backward) {
            prop_assert_eq!(
                envelope_id(Source::Bitrix24, "m1", "E", &forward, 1),
                envelope_id(Source::Bitrix24, "m1", "E", &backward, 1)
            );
        }
    }
    Ok(())
}

/// JSON text with object keys in sorted or reversed order.
fn key_ordered_text(value: &Value, reversed: bool) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            if reversed {
                keys.reverse();
            }
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String(k.clone()),
                        key_ordered_text(&map[k], reversed)
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items
                .iter()
                .map(|v| key_ordered_text(v, reversed))
                .collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// A queue that takes everything: a 5xx can then only come from ingress itself.
struct AcceptingQueue;

#[async_trait]
impl Queue for AcceptingQueue {
    async fn send(&self, _: &RelayEvent) -> Result<(), StoreError> {
        Ok(())
    }
    async fn retry_after(&self, _: &str, _: Duration) -> Result<(), StoreError> {
        Ok(())
    }
    async fn park_dead_letter(&self, _: &QueueMessage, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

fn ingress() -> Ingress {
    let config = RelayConfig {
        b24_app_tokens: AppTokens::parse(APP_TOKEN).unwrap_or_default(),
        salesman_secret: Some(Secret::new(SALESMAN_SECRET)),
        ..RelayConfig::default()
    };
    Ingress::new(Arc::new(AcceptingQueue), config)
}

#[derive(Debug, Clone)]
struct HttpInput {
    family: Family,
    content_type: Option<&'static str>,
    query: Option<String>,
    header: Option<String>,
    body: Vec<u8>,
}

fn http_input() -> impl Strategy<Value = HttpInput> {
    let body = prop_oneof![
        form_body(),
        crm_document().prop_map(|d| d.to_string().into_bytes()),
        crm_document()
            .prop_map(|d| d.to_string().into_bytes())
            .prop_flat_map(mutated),
        prop::collection::vec(any::<u8>(), 0..512),
    ];
    let content_type = prop_oneof![
        Just(None),
        Just(Some("application/json")),
        Just(Some("application/x-www-form-urlencoded")),
        Just(Some("application/json; charset=latin1")),
        Just(Some("text/plain")),
        Just(Some("multipart/form-data; boundary=x")),
    ];
    let query = prop_oneof![
        Just(None),
        Just(Some(format!("token={SALESMAN_SECRET}"))),
        Just(Some(format!("token={SALESMAN_SECRET}&token=x"))),
        text_from(NAME_CHARS, 16).prop_map(Some),
    ];
    let header = prop_oneof![
        Just(None),
        Just(Some(SALESMAN_SECRET.to_string())),
        text_from(NAME_CHARS, 16).prop_map(Some),
    ];
    (
        prop::sample::select(Family::ALL.to_vec()),
        content_type,
        query,
        header,
        body,
    )
        .prop_map(|(family, content_type, query, header, body)| HttpInput {
            family,
            content_type,
            query,
            header,
            body,
        })
}

fn ingress_answers_without_5xx(
    runtime: &tokio::runtime::Runtime,
    ingress: &Ingress,
    input: &HttpInput,
) -> Result<(), TestCaseError> {
    let reply = runtime.block_on(ingress.handle(
        IngestRequest {
            family: input.family,
            content_type: input.content_type,
            query: input.query.as_deref(),
            relay_token_header: input.header.as_deref(),
            body: &input.body,
        },
        SystemTime::now(),
    ));
    prop_assert!(
        [202, 400, 401, 413, 415, 422].contains(&reply.status),
        "status {} for {:?}: {}",
        reply.status,
        input,
        reply.body
    );
    Ok(())
}

// ---------------------------------------------------------------- runner

/// CI runs each target for a fixed number of cases; RELAY_FUZZ_SECONDS (scripts/fuzz.sh)
/// turns every target into a campaign of that many seconds with fresh seeds per round.
fn campaign<S: Strategy>(
    target: &str,
    ci_cases: u32,
    share: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let seconds: Option<u64> = std::env::var("RELAY_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let started = Instant::now();
    let deadline = seconds.map(|s| started + Duration::from_secs(s * u64::from(share) / 100));
    let round = |cases: u32| {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(failure) = runner.run(&strategy, &property) {
            panic!("{target}: {failure}");
        }
    };
    let mut total = 0u64;
    match deadline {
        None => {
            round(ci_cases);
            total += u64::from(ci_cases);
        }
        Some(deadline) => {
            while Instant::now() < deadline {
                round(ci_cases);
                total += u64::from(ci_cases);
            }
        }
    }
    println!(
        "fuzz: {target}: {total} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// Shares of a campaign's time (percent) sum to 100 across the targets.

#[test]
fn fuzz_form_decoder() {
    campaign(
        "form decoder",
        200,
        20,
        form_body().prop_flat_map(mutated),
        |body| decode_within_budget(BodyEncoding::Form, &body),
    );
}

#[test]
fn fuzz_json_decoder() {
    let text = prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        json_value()
            .prop_map(|v| v.to_string().into_bytes())
            .prop_flat_map(mutated),
        prop::collection::vec(any::<u8>(), 0..256),
    ];
    campaign("json decoder", 600, 20, text, |body| {
        decode_within_budget(BodyEncoding::Json, &body)
    });
}

#[test]
fn fuzz_bombs_stay_within_the_allocation_budget() {
    campaign("bombs", 8, 20, bomb(), |(encoding, body)| {
        decode_within_budget(encoding, &body)
    });
}

#[test]
fn fuzz_ingress_handler() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let ingress = ingress();
    campaign("ingress handler", 600, 40, http_input(), |input| {
        ingress_answers_without_5xx(&runtime, &ingress, &input)
    });
}
