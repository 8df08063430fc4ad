//! What routes cost per forwarded body, beside a baseline measured in the same run: the
//! consumer serialises every body it sends, so matching and projecting are read against one
//! `serde_json::to_vec` of the same body. `cargo bench -p relay-core --bench routes_match`; the
//! ratios are printed after criterion's output.

mod criterion_output;
use criterion::Criterion;
use criterion_output::{criterion_dir, mean_ns};
use relay_core::routes::Routes;
use serde_json::Value;
use std::hint::black_box;
use std::time::Duration;

const WAREHOUSE_ROUTES: &str = include_str!("../../../events/routes/warehouse.routes.json");
const DEAL_MOVED: &str = include_str!("../../../events/routes/deal-moved.forwarded.json");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn routes_benches(c: &mut Criterion) {
    let routes =
        Routes::parse_with_env(WAREHOUSE_ROUTES, "warehouse", &|_| Some(SECRET.to_string()))
            .expect("the sample routes file loads");
    let body: Value = serde_json::from_str(DEAL_MOVED).expect("the sample body is JSON");
    let mut group = c.benchmark_group("routes");
    group.bench_function("baseline_serialize_body", |b| {
        b.iter(|| serde_json::to_vec(black_box(&body)))
    });
    group.bench_function("match_two_routes", |b| {
        b.iter(|| {
            routes
                .routes
                .iter()
                .filter(|r| r.pattern.matches(black_box(&body)))
                .count()
        })
    });
    group.bench_function("deliveries_two_routes_projected", |b| {
        b.iter(|| routes.deliveries(black_box(&body)).len())
    });
    group.finish();
}

/// Criterion's point estimate (mean, ns) for one bench, from its own output files.
fn print_ratios() {
    let Some(dir) = criterion_dir() else {
        println!("ratios: no criterion output found");
        return;
    };
    let baseline = "baseline_serialize_body";
    let Some(base) = mean_ns(&dir, "routes", baseline) else {
        println!("ratios: no baseline measured");
        return;
    };
    println!("\nratios against the baseline of the same run (mean time, lower is cheaper):");
    for bench in ["match_two_routes", "deliveries_two_routes_projected"] {
        if let Some(mean) = mean_ns(&dir, "routes", bench) {
            println!(
                "  routes/{bench}: {:.2}x {baseline} ({mean:.0} ns vs {base:.0} ns)",
                mean / base
            );
        }
    }
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    routes_benches(&mut criterion);
    criterion.final_summary();
    print_ratios();
}
