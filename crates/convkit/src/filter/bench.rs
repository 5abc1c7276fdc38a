//! The filter benchmark suite (issue 6's table), callable from `convkit bench --suite filters`.
//!
//! Images: gray u8 1920×1080, RGB u8 1920×1080, gray f32 4096×4096 (deterministic pseudo-random
//! pixels); kernels: Sobel-x 3×3 (auto, which runs it in 2D; forced separable; forced 2D),
//! Gaussian 5×5 σ=1 (separable), Gaussian 15×15 σ=3 (separable and forced 2D), box 31×31,
//! random 7×7 (2D); border
//! reflect-101; output f32 into a reused buffer. Each cell: warm-up, then the median of
//! `runs` timings (at least 10, more while under ~0.3 s).

use super::kernels::{box_kernel, gaussian_1d};
use super::{FilterOp, FilterOptions, FilterPlan, Image, Kernel, Path, PathChoice, Sample};
use std::time::Instant;

/// One benchmark cell.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    /// Image description, e.g. `"gray u8 1920x1080"`.
    pub image: String,
    /// Case name as in issue 6's table, e.g. `"sobel_x 3x3 (sep)"`.
    pub case: String,
    /// The path that ran: `"separable x1"`, `"2D"`, ...
    pub path: String,
    /// Threads in the pool.
    pub threads: usize,
    /// Median wall time in milliseconds.
    pub median_ms: f64,
    /// Fastest run in milliseconds.
    pub min_ms: f64,
    /// Number of timed runs.
    pub runs: usize,
    /// Output megapixels per second at the median (pixels, not samples).
    pub mpix_per_s: f64,
    /// Process CPU time per run in ms (all threads; Linux `/proc/self/task/*/schedstat`),
    /// which a loaded machine inflates far less than wall time; `None` where unavailable.
    pub cpu_ms: Option<f64>,
}

/// CPU nanoseconds used so far by every thread of this process, or `None` off Linux.
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// The cases: name, filter, forced path.
fn cases() -> Vec<(&'static str, FilterOp, PathChoice)> {
    let sobel = super::kernels::sobel_x();
    let g15 = gaussian_op(15, 3.0);
    let g15_2d = match &g15 {
        // The same weights without the known factors, as a user's 2D kernel would be.
        FilterOp::Linear(k) => {
            FilterOp::Linear(Kernel::new(k.rows(), k.cols(), k.data().to_vec()).expect("valid"))
        }
        FilterOp::Magnitude(..) => unreachable!("a Gaussian is linear"),
    };
    let mut seed = 0x5eed_u64;
    let random7 = Kernel::new(
        7,
        7,
        (0..49)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect(),
    )
    .expect("valid");
    vec![
        (
            "sobel_x 3x3 (sep)",
            FilterOp::Linear(sobel.clone()),
            PathChoice::Auto,
        ),
        (
            "sobel_x 3x3 (sep, forced)",
            FilterOp::Linear(sobel.clone()),
            PathChoice::Separable,
        ),
        (
            "sobel_x 3x3 (2D)",
            FilterOp::Linear(sobel),
            PathChoice::Direct,
        ),
        ("gauss 5x5 (sep)", gaussian_op(5, 1.0), PathChoice::Auto),
        ("gauss 15x15 (sep)", g15.clone(), PathChoice::Auto),
        ("gauss 15x15 (2D)", g15_2d.clone(), PathChoice::Direct),
        ("gauss 15x15 (2D kernel, auto)", g15_2d, PathChoice::Auto),
        ("box 31x31", box_kernel_op(31, 31), PathChoice::Auto),
        (
            "random 7x7 (2D)",
            FilterOp::Linear(random7),
            PathChoice::Auto,
        ),
    ]
}

fn pixels<T>(n: usize, f: impl Fn(u32) -> T) -> Vec<T> {
    let mut s = 0x1234_5678_u32;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            f(s)
        })
        .collect()
}

/// `(median ms, min ms, runs, CPU ms per run)`.
type Timing = (f64, f64, usize, Option<f64>);

fn time_cell<T: Sample>(plan: &FilterPlan, img: &Image<T>, dst: &mut [f32]) -> Timing {
    for _ in 0..2 {
        plan.run(img, dst).expect("bench shapes are valid");
    }
    let mut times = Vec::new();
    let cpu0 = process_cpu_ns();
    let start = Instant::now();
    while times.len() < 10 || (times.len() < 200 && start.elapsed().as_secs_f64() < 0.3) {
        let t = Instant::now();
        plan.run(img, dst).expect("bench shapes are valid");
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let cpu = match (cpu0, process_cpu_ns()) {
        (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / 1e6 / times.len() as f64),
        _ => None,
    };
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0], times.len(), cpu)
}

/// Runs the whole suite on `threads` threads (`filter` picks cases whose image or case name
/// contains it; `IMAGE/CASE` picks cells whose image contains `IMAGE` and case contains
/// `CASE`; empty = all).
///
/// Sizes rayon's global pool when it does not exist yet (a benchmark process), so that the
/// timing loop runs outside the pool as a program's calls do; a private pool entered with
/// `install` would run it on one of its workers, and short calls would then finish before
/// the other workers wake. Otherwise (global pool of another size) a private pool is used.
pub fn bench_suite(threads: usize, filter: &str) -> Vec<BenchRow> {
    let threads = threads.max(1);
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    if rayon::current_num_threads() == threads {
        return suite_rows(filter);
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
        .install(|| suite_rows(filter))
}

/// The suite's rows, on the current pool.
fn suite_rows(filter: &str) -> Vec<BenchRow> {
    let mut rows = Vec::new();
    let gray = pixels(1920 * 1080, |v| (v >> 24) as u8);
    let rgb = pixels(1920 * 1080 * 3, |v| (v >> 24) as u8);
    let gf = pixels(4096 * 4096, |v| (v >> 8) as f32 / (1u32 << 24) as f32);
    for (case, op, path) in cases() {
        let opts = FilterOptions {
            path,
            ..Default::default()
        };
        let plan = FilterPlan::new(&op, &opts).expect("bench kernels are valid");
        let path_name = match plan.parts()[0].path {
            Path::Separable { pairs } => format!("separable x{pairs}"),
            Path::Direct2D => "2D".to_string(),
            Path::BoxSums => "box sums".to_string(),
        };
        let wanted = |image: &str| match filter.split_once('/') {
            Some((i, c)) => image.contains(i) && case.contains(c),
            None => image.contains(filter) || case.contains(filter),
        };
        let mut cell = |image: &str, r: Timing, px: usize| {
            rows.push(BenchRow {
                image: image.to_string(),
                case: case.to_string(),
                path: path_name.clone(),
                threads: rayon::current_num_threads(),
                median_ms: r.0,
                min_ms: r.1,
                runs: r.2,
                mpix_per_s: px as f64 / r.0 / 1e3,
                cpu_ms: r.3,
            });
        };
        let mut dst = vec![0.0f32; 4096 * 4096];
        if wanted("gray u8 1920x1080") {
            let img = Image::new(&gray, 1920, 1080, 1).expect("valid");
            let r = time_cell(&plan, &img, &mut dst[..gray.len()]);
            cell("gray u8 1920x1080", r, gray.len());
        }
        if wanted("RGB u8 1920x1080") {
            let img = Image::new(&rgb, 1920, 1080, 3).expect("valid");
            let r = time_cell(&plan, &img, &mut dst[..rgb.len()]);
            cell("RGB u8 1920x1080", r, 1920 * 1080);
        }
        if wanted("gray f32 4096x4096") {
            let img = Image::new(&gf, 4096, 4096, 1).expect("valid");
            let r = time_cell(&plan, &img, &mut dst);
            cell("gray f32 4096x4096", r, gf.len());
        }
    }
    rows
}

fn gaussian_op(n: usize, sigma: f64) -> FilterOp {
    let g = gaussian_1d(n, sigma);
    FilterOp::Linear(Kernel::outer(&g, &g).expect("valid"))
}

fn box_kernel_op(n: usize, m: usize) -> FilterOp {
    FilterOp::Linear(box_kernel(n, m).expect("valid"))
}
