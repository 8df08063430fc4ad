//! How fast the embedded store takes a Bitrix24-style burst: 10,000 envelopes from 32
//! concurrent senders, each `send` returning only once its event is committed (FULL fsync,
//! group commit). `cargo bench -p shared --bench sqlite_burst`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shared::event::{envelope_id, Family, RelayEvent, Source};
use shared::local::SqliteStore;
use shared::ports::Queue;
use std::sync::Arc;
use std::time::{Duration, Instant};

const EVENTS: usize = 10_000;
const SENDERS: usize = 32;

fn event(n: usize) -> RelayEvent {
    let entity = (n % 500).to_string();
    let data = serde_json::json!({"FIELDS": {"ID": entity}, "n": n});
    RelayEvent {
        v: 1,
        id: envelope_id(
            Source::Bitrix24,
            "bench",
            "ONCRMDEALUPDATE",
            &data,
            n as i64,
        ),
        source: Source::Bitrix24,
        portal: "bench".into(),
        domain: Some("bench.bitrix24.ru".into()),
        family: Family::Deal,
        event: "ONCRMDEALUPDATE".into(),
        entity_type: None,
        entity_id: Some(entity),
        ts: n as i64,
        received_at: "2026-11-22T10:00:00Z".into(),
        data,
    }
}

/// One burst into a fresh store; returns the time from first send to last commit.
async fn burst(dir: &std::path::Path) -> Duration {
    let store = Arc::new(SqliteStore::open(dir).expect("open store"));
    let started = Instant::now();
    let senders: Vec<_> = (0..SENDERS)
        .map(|sender| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for n in (sender..EVENTS).step_by(SENDERS) {
                    store.send(&event(n)).await.expect("send");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("sender task");
    }
    started.elapsed()
}

fn sqlite_burst(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let root = std::env::temp_dir().join(format!("crm-relay-bench-{}", std::process::id()));
    let mut group = c.benchmark_group("sqlite_store");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("burst_10k_sends_32_senders", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let dir = root.join(i.to_string());
                let _ = std::fs::remove_dir_all(&dir);
                total += runtime.block_on(burst(&dir));
                let _ = std::fs::remove_dir_all(&dir);
            }
            total
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&root);
}

criterion_group!(benches, sqlite_burst);
criterion_main!(benches);
