//! What criterion measured in this run, read back from its output: each bench prints its hot
//! paths as ratios against a baseline measured in the same run (figures from one machine at
//! one moment compare; absolute times across runs do not).

use std::path::{Path, PathBuf};

/// Criterion's output directory. Benches run with the package as working directory; the
/// workspace target is one up.
pub fn criterion_dir() -> Option<PathBuf> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_string());
    [
        Path::new(&target).join("criterion"),
        Path::new("..").join(&target).join("criterion"),
    ]
    .into_iter()
    .find(|d| d.is_dir())
}

/// The mean time of `group/bench` in this run, in nanoseconds.
pub fn mean_ns(criterion_dir: &Path, group: &str, bench: &str) -> Option<f64> {
    let path = criterion_dir
        .join(group)
        .join(bench)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}
