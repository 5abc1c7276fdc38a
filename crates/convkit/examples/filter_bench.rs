//! Runs the filter benchmark suite: `cargo run --release -p convkit --example filter_bench -- [THREADS] [FILTER]`.

fn main() {
    let mut args = std::env::args().skip(1);
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let filter = args.next().unwrap_or_default();
    for r in convkit::filter::bench::bench_suite(threads, &filter) {
        println!(
            "{:<20} {:<32} {:<13} t={} median {:>8.3} ms  min {:>8.3} ms  ({} runs)",
            r.image, r.case, r.path, r.threads, r.median_ms, r.min_ms, r.runs
        );
    }
}
