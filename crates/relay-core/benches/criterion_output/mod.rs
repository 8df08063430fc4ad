//! What criterion measured in this run, read back from its output: each bench prints its hot
//! paths as ratios against a baseline measured in the same run (figures from one machine at
//! one moment compare; absolute times across runs do not).

use std::path::{Path, PathBuf};

/// One criterion group's benches and the baseline they are divided by: (group, baseline, benches).
pub type RatioGroup<'a> = (&'a str, &'a str, &'a [&'a str]);

/// Criterion's output directory: `$CARGO_TARGET_DIR/criterion`, or the `target/criterion` of
/// the nearest folder up from the package (benches run with the package as working
/// directory, and the workspace's target is at its root, two levels up from `crates/<name>`).
pub fn criterion_dir() -> Option<PathBuf> {
    if let Ok(target) = std::env::var("CARGO_TARGET_DIR") {
        return Some(Path::new(&target).join("criterion")).filter(|d| d.is_dir());
    }
    let here = std::env::current_dir().ok()?;
    here.ancestors()
        .map(|dir| dir.join("target").join("criterion"))
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

/// Prints each bench's mean as a multiple of its group's baseline, both from this run; a group
/// whose baseline was not measured (e.g. filtered out on the command line) is left out.
pub fn print_ratios(groups: &[RatioGroup<'_>]) {
    let Some(dir) = criterion_dir() else {
        println!("ratios: no criterion output found");
        return;
    };
    println!("\nratios against the baseline of the same run (mean time, lower is cheaper):");
    for &(group, baseline, benches) in groups {
        let Some(base) = mean_ns(&dir, group, baseline) else {
            println!("  {group}: no baseline measured");
            continue;
        };
        for bench in benches {
            if let Some(mean) = mean_ns(&dir, group, bench) {
                println!(
                    "  {group}/{bench}: {:.2}x {baseline} ({mean:.0} ns vs {base:.0} ns)",
                    mean / base
                );
            }
        }
    }
}
