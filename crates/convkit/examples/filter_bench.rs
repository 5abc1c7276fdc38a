//! Runs the filter benchmark suite (issue 6's table):
//! `cargo run --release -p convkit --example filter_bench -- [THREADS] [FILTER] [--json]`.
//! `scripts/compare_filters.py` runs it next to OpenCV.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    let mut pos = args.iter().filter(|a| !a.starts_with("--"));
    let threads = pos.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let filter = pos.next().cloned().unwrap_or_default();
    for r in convkit::filter::bench::bench_suite(threads, &filter) {
        if json {
            let row = serde_json::json!({
                "image": r.image, "case": r.case, "path": r.path, "threads": r.threads,
                "median_ms": r.median_ms, "min_ms": r.min_ms, "runs": r.runs,
            });
            println!("{row}");
        } else {
            println!(
                "{:<20} {:<32} {:<13} t={} median {:>8.3} ms  min {:>8.3} ms  ({} runs)",
                r.image, r.case, r.path, r.threads, r.median_ms, r.min_ms, r.runs
            );
        }
    }
}
