//! What routes cost per forwarded body, beside a baseline measured in the same run: the
//! consumer serialises every body it sends, so matching and projecting are read against one
//! `serde_json::to_vec` of the same body. `cargo bench -p relay-core --bench routes_match`; the
//! ratios are printed after criterion's output.

mod criterion_output;
use criterion::Criterion;
use criterion_output::print_ratios;
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

/// Matching and projecting, against serialising the same body once.
const RATIOS: &[criterion_output::RatioGroup<'static>] = &[(
    "routes",
    "baseline_serialize_body",
    &["match_two_routes", "deliveries_two_routes_projected"],
)];

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    routes_benches(&mut criterion);
    criterion.final_summary();
    print_ratios(RATIOS);
}
