//! How fast the embedded store takes a Bitrix24-style burst: 10,000 envelopes from 32
//! concurrent senders, each `send` returning only once its event is committed (FULL fsync,
//! group commit); and what one consumer step (receive a batch of 10, delete it) costs with a
//! 100,000-message backlog against a 1,000-message one, ratio printed at the end.
//! `cargo bench -p relay-local --bench sqlite_burst`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use relay_core::event::{envelope_id, Family, RelayEvent, Source};
use relay_core::ports::{PollingQueue, Queue};
use relay_local::SqliteStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

const EVENTS: usize = 10_000;
const SENDERS: usize = 32;
/// Backlogs for the receive bench; every message its own entity (group), as in a burst of
/// distinct deals, so every message is a group head.
const DEEP_BACKLOG: usize = 100_000;
const SHALLOW_BACKLOG: usize = 1_000;
const BATCH: usize = 10;
/// Senders filling a backlog: more of them make bigger group-commit rounds, so the 100,000
/// sends of the setup take seconds, not minutes.
const FILL_SENDERS: usize = 256;

fn event(n: usize) -> RelayEvent {
    event_of(n, n % 500)
}

fn event_of(n: usize, entity: usize) -> RelayEvent {
    let entity = entity.to_string();
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

/// Sends events `from..to` (each its own entity) from `FILL_SENDERS` concurrent senders.
async fn fill(store: &Arc<SqliteStore>, from: usize, to: usize) {
    let senders: Vec<_> = (0..FILL_SENDERS)
        .map(|sender| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                for n in (from + sender..to).step_by(FILL_SENDERS) {
                    store.send(&event_of(n, n)).await.expect("send");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("sender task");
    }
}

/// Times `iters` consumer steps (receive 10, delete them) on a store holding about
/// `backlog` messages; refills outside the timed part so the backlog stays within 5% of it.
fn receive_steps(
    runtime: &tokio::runtime::Runtime,
    store: &Arc<SqliteStore>,
    backlog: usize,
    next: &mut usize,
    iters: u64,
) -> Duration {
    let refill_after = (backlog / 20).max(BATCH);
    let mut total = Duration::ZERO;
    let mut taken = 0;
    for _ in 0..iters {
        if taken >= refill_after {
            runtime.block_on(fill(store, *next, *next + taken));
            *next += taken;
            taken = 0;
        }
        total += runtime.block_on(async {
            let started = Instant::now();
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let got = store
                .receive(BATCH, Duration::from_secs(300), now_ms)
                .await
                .expect("receive");
            for message in &got {
                store.delete(&message.receipt).await.expect("delete");
            }
            assert_eq!(got.len(), BATCH, "the backlog ran dry");
            started.elapsed()
        });
        taken += BATCH;
    }
    total
}

fn receive_by_backlog(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let root = std::env::temp_dir().join(format!("crm-relay-bench-rx-{}", std::process::id()));
    let mut group = c.benchmark_group("sqlite_receive");
    group.sample_size(20);
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut means = Vec::new();
    for backlog in [SHALLOW_BACKLOG, DEEP_BACKLOG] {
        let dir = root.join(backlog.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(SqliteStore::open(&dir).expect("open store"));
        runtime.block_on(fill(&store, 0, backlog));
        let mut next = backlog;
        let mut timed = (Duration::ZERO, 0u64);
        group.bench_function(format!("receive_10_delete_10_backlog_{backlog}"), |b| {
            b.iter_custom(|iters| {
                let spent = receive_steps(&runtime, &store, backlog, &mut next, iters);
                timed = (timed.0 + spent, timed.1 + iters);
                spent
            })
        });
        means.push((
            backlog,
            timed.0 / u32::try_from(timed.1.max(1)).unwrap_or(u32::MAX),
        ));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&root);
    if let [(small, shallow), (large, deep)] = means[..] {
        println!(
            "receive+delete of {BATCH}: {shallow:.2?} at a backlog of {small}, {deep:.2?} at {large}: \
             deep / shallow = {:.2}",
            deep.as_secs_f64() / shallow.as_secs_f64()
        );
    }
}

criterion_group!(benches, sqlite_burst, receive_by_backlog);
criterion_main!(benches);
