//! The per-event hot paths, each beside a baseline measured in the same run, so the result
//! reads as a ratio that does not depend on the machine: how much more ingress costs than
//! merely splitting the form, how much signing costs over one bare HMAC, and so on.
//! `cargo bench -p relay-core --bench hot_paths`; the ratios are printed after criterion's output.

mod criterion_output;
use async_trait::async_trait;
use criterion::Criterion;
use criterion_output::print_ratios;
use hmac::{Hmac, Mac};
use relay_core::config::{AppTokens, RelayConfig};
use relay_core::error::StoreError;
use relay_core::event::{envelope_id, Family, RelayEvent, Source};
use relay_core::forward::Signer;
use relay_core::ingest::{IngestRequest, Ingress};
use relay_core::parse::php_form::decode_php_form;
use relay_core::ports::{Queue, QueueMessage};
use relay_core::secret::Secret;
use sha2::{Digest, Sha256};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A deal update as Bitrix24 posts it: PHP's http_build_query, brackets percent-encoded.
const DEAL_FORM: &[u8] = b"event=ONCRMDEALUPDATE&event_handler_id=17&data%5BFIELDS%5D%5BID%5D=7405\
&ts=1766047124&auth%5Bdomain%5D=example.bitrix24.ru&auth%5Bclient_endpoint%5D=https%3A%2F%2Fexample.bitrix24.ru%2Frest%2F\
&auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2Frest%2F\
&auth%5Bmember_id%5D=a1b2c3d4e5f60718293a4b5c6d7e8f90&auth%5Bapplication_token%5D=local-dev-app-token";

/// Counts sends and keeps nothing: the bench measures ingress, not a store.
#[derive(Default)]
struct CountingQueue(AtomicUsize);

#[async_trait]
impl Queue for CountingQueue {
    async fn send(&self, _event: &RelayEvent) -> Result<(), StoreError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn retry_after(&self, _receipt: &str, _delay: Duration) -> Result<(), StoreError> {
        Ok(())
    }
    async fn park_dead_letter(&self, _m: &QueueMessage, _reason: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

fn ingress_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingress");
    group.bench_function("baseline_split_form_pairs", |b| {
        b.iter(|| form_urlencoded::parse(black_box(DEAL_FORM)).count())
    });
    group.bench_function("decode_php_form", |b| {
        b.iter(|| decode_php_form(black_box(DEAL_FORM)))
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    let config = RelayConfig {
        b24_app_tokens: AppTokens::parse("local-dev-app-token").expect("tokens"),
        ..RelayConfig::default()
    };
    let ingress = Ingress::new(Arc::new(CountingQueue::default()), config);
    group.bench_function("handle_bitrix24_form", |b| {
        b.iter(|| {
            let request = IngestRequest {
                family: Family::Deal,
                content_type: Some("application/x-www-form-urlencoded"),
                query: None,
                relay_token_header: None,
                body: black_box(DEAL_FORM),
            };
            let reply = runtime.block_on(ingress.handle(request, SystemTime::now()));
            assert_eq!(reply.status, 202);
        })
    });
    group.finish();
}

fn envelope_benches(c: &mut Criterion) {
    let data = serde_json::json!({"FIELDS": {"ID": "7405"}});
    let mut group = c.benchmark_group("envelope");
    group.bench_function("baseline_sha256_of_body", |b| {
        b.iter(|| Sha256::digest(black_box(DEAL_FORM)))
    });
    group.bench_function("envelope_id", |b| {
        b.iter(|| {
            envelope_id(
                Source::Bitrix24,
                "a1b2c3d4e5f60718293a4b5c6d7e8f90",
                "ONCRMDEALUPDATE",
                black_box(&data),
                1_766_047_124,
            )
        })
    });
    group.finish();
}

fn signing_benches(c: &mut Criterion) {
    // A forwarded body of typical size: envelope plus a 40-field entity.
    let entity: serde_json::Map<String, serde_json::Value> = (0..40)
        .map(|i| {
            (
                format!("UF_CRM_{i}"),
                serde_json::json!(format!("value {i}")),
            )
        })
        .collect();
    let body =
        serde_json::to_vec(&serde_json::json!({"entity": entity, "changes": []})).expect("body");
    let key = [7u8; 32];
    let signer = Signer::from_secret(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
        .expect("signer");
    let mut group = c.benchmark_group("signing");
    group.bench_function("baseline_bare_hmac_sha256", |b| {
        b.iter(|| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
            mac.update(black_box(&body));
            mac.finalize()
        })
    });
    group.bench_function("signature_header", |b| {
        b.iter(|| signer.signature_header("msg_1", 1_614_265_330, black_box(&body)))
    });
    group.finish();
}

/// The hot paths, each against the baseline of its group.
const RATIOS: &[criterion_output::RatioGroup<'static>] = &[
    (
        "ingress",
        "baseline_split_form_pairs",
        &["decode_php_form", "handle_bitrix24_form"],
    ),
    ("envelope", "baseline_sha256_of_body", &["envelope_id"]),
    (
        "signing",
        "baseline_bare_hmac_sha256",
        &["signature_header"],
    ),
];

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    ingress_benches(&mut criterion);
    envelope_benches(&mut criterion);
    signing_benches(&mut criterion);
    criterion.final_summary();
    print_ratios(RATIOS);
}
