//! Warm runs allocate nothing: `SeparablePlan::run` (fused and unfused), the plans it is made
//! of (the depthwise kernel, the 1×1 GEMM) and every forward algorithm, counted through a
//! global allocator, on a pool worker (nothing at all) and from outside the pool (nothing but
//! the small jobs that hand tasks to the other threads). Its own test binary, so that no other
//! test allocates meanwhile.
//!
//! Regression: the implicit GEMM once built its per-tile depth-chunk lists in every task (two
//! `Vec`s a task, ~20 allocations a run); they are now made at plan time.

use convkit::dwsep::DepthwiseSeparable;
use convkit::dwsep_plan::{FuseMode, SeparablePlan};
use convkit::plan::{Algo, Plan};
use ndarray::Array4;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Held by each test: the counter is global, and the harness runs tests concurrently.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Most allocations 20 warm calls may show without any being the engines': rayon's
/// work-stealing deques and epoch-based reclamation (crossbeam) allocate now and then on their
/// own (3 seen once on a heavily loaded machine, so 2 was flaky). A per-run allocation of
/// ours shows up 20 times.
const RAYON_NOISE: usize = 5;

/// Bytes one hand-off job may take: a call from outside rayon's pool runs a share of its
/// tasks itself and spawns one small job per other thread (`kernels::tasks`), a boxed closure
/// of a few pointers (40 bytes). A buffer of an engine (a band, a panel) is kilobytes, and one
/// made per run shows up 20 times.
const JOB_BYTES: usize = 128;

/// Bytes rayon's own occasional allocations may take in 20 calls (a work-stealing deque grown:
/// 1.5 and 13 KiB seen).
const RAYON_NOISE_BYTES: usize = 64 * 1024;

/// Allocations and bytes of 20 calls of `f` once warm.
fn measure(mut f: impl FnMut()) -> (usize, usize) {
    for _ in 0..10 {
        f();
    }
    let region = Region::new(GLOBAL);
    for _ in 0..20 {
        f();
    }
    let st = region.change();
    (
        st.allocations + st.reallocations,
        st.bytes_allocated + st.bytes_reallocated.max(0) as usize,
    )
}

/// Checks that 20 warm runs of `f` allocate nothing of their own, and returns the count:
/// strictly none (up to rayon's noise) when run on a worker of a two-thread pool, where the
/// parallel loops need no hand-off, and from outside the pool (the global one, as a model's
/// own thread calls it) nothing but the hand-off jobs: at most `threads − 1` per parallel
/// region, each at most [`JOB_BYTES`].
fn allocs(what: &str, mut f: impl FnMut() + Send) -> usize {
    // One pool for every check, warm like the global one (a fresh pool's deques and
    // epochs allocate as they settle).
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
    });
    let (inside, _) = pool.install(|| measure(&mut f));
    assert!(
        inside <= RAYON_NOISE,
        "{what}: {inside} allocations per 20 runs on a pool worker"
    );
    // The least of three: a helper thread that claimed no task while warming up grows its
    // workspace once when it first does (a one-time allocation, not a per-run one).
    let (n, bytes) = (0..3)
        .map(|_| measure(&mut f))
        .min_by_key(|&(_, b)| b)
        .unwrap();
    let helpers = rayon::current_num_threads().saturating_sub(1);
    // Up to three regions a run (the unfused separable block: depthwise, then 1×1).
    let jobs = 20 * 3 * helpers;
    assert!(
        n <= RAYON_NOISE + jobs && bytes <= n.min(jobs) * JOB_BYTES + RAYON_NOISE_BYTES,
        "{what}: {n} allocations, {bytes} bytes per 20 runs from outside the pool"
    );
    inside
}

#[test]
fn warm_runs_add_no_allocation() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let block = DepthwiseSeparable::builder(24, 16, 3)
        .stride(2)
        .padding(1)
        .multiplier(2)
        .bias(true, true)
        .build()
        .unwrap();
    let input = [2, 24, 45, 33];
    let x = Array4::from_shape_fn(input, |(a, b, c, d)| {
        ((a + 3 * b + 5 * c + 7 * d) % 11) as f32
    });
    let wd = Array4::from_elem(block.depthwise().weight_shape(), 0.25f32);
    let wp = Array4::from_elem(block.pointwise().weight_shape(), 0.5f32);
    let bd = ndarray::Array1::from_elem(48, 0.1f32);
    let bp = ndarray::Array1::from_elem(16, -0.1f32);
    let (bd, bp) = (Some(bd.view()), Some(bp.view()));
    let dw = Plan::new(block.depthwise(), input, wd.view(), bd, Algo::Auto).unwrap();
    let mid = dw.geometry().output_shape();
    assert_eq!(mid, [2, 48, 23, 17]);
    let pw_at = |shape: [usize; 4]| {
        let pw = Plan::new(block.pointwise(), shape, wp.view(), bp, Algo::Auto).unwrap();
        let m = Array4::<f32>::zeros(shape);
        let mut o = Array4::<f32>::zeros(pw.geometry().output_shape());
        allocs(&format!("pointwise plan on {shape:?}"), || {
            pw.run(m.view(), o.view_mut()).unwrap()
        })
    };
    let mut m = Array4::<f32>::zeros(mid);
    allocs("depthwise plan", || dw.run(x.view(), m.view_mut()).unwrap());
    for shape in [mid, [1, 48, 4, 17], [1, 48, 3, 17]] {
        pw_at(shape);
    }
    let unfused = SeparablePlan::new(
        &block,
        input,
        wd.view(),
        bd,
        wp.view(),
        bp,
        FuseMode::Unfused,
    )
    .unwrap();
    let fused =
        SeparablePlan::with_band_rows(&block, input, wd.view(), bd, wp.view(), bp, 4).unwrap();
    let mut y = Array4::<f32>::zeros(unfused.output_shape());
    allocs("unfused block", || {
        unfused.run(x.view(), y.view_mut()).unwrap()
    });
    // 23 rows per image: five bands of 4 and one of 3, two images.
    allocs("fused block", || fused.run(x.view(), y.view_mut()).unwrap());
}

/// Every forward algorithm: a warm `Plan::run` into a contiguous output allocates nothing
/// (the Plan API's promise), on layers that pick each one.
#[test]
fn warm_plan_runs_allocate_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use convkit::ConvSpec;
    let cases: Vec<(convkit::ValidSpec, [usize; 4], Algo)> = vec![
        (
            ConvSpec::conv2d(16, 24, 3).padding(1).build().unwrap(),
            [1, 16, 20, 19],
            Algo::Winograd,
        ),
        (
            ConvSpec::conv2d(16, 24, 3).padding(1).build().unwrap(),
            [1, 16, 20, 19],
            Algo::Direct,
        ),
        (
            ConvSpec::conv2d(3, 16, 7)
                .stride(2)
                .padding(3)
                .build()
                .unwrap(),
            [1, 3, 33, 30],
            Algo::Direct,
        ),
        (
            ConvSpec::conv2d(16, 16, 3)
                .padding(4)
                .dilation(4)
                .build()
                .unwrap(),
            [1, 16, 17, 18],
            Algo::ImplicitGemm,
        ),
        (
            ConvSpec::conv2d(24, 16, 1).build().unwrap(),
            [2, 24, 9, 11],
            Algo::Gemm1x1,
        ),
        (
            ConvSpec::conv2d(8, 16, 3)
                .padding(1)
                .groups(8)
                .build()
                .unwrap(),
            [1, 8, 14, 13],
            Algo::Depthwise,
        ),
        (
            ConvSpec::conv_transpose2d(16, 8, 4)
                .stride(2)
                .padding(1)
                .build()
                .unwrap(),
            [1, 16, 9, 10],
            Algo::Subpixel,
        ),
        (
            ConvSpec::conv_transpose2d(16, 8, 3)
                .padding(1)
                .build()
                .unwrap(),
            [1, 16, 9, 10],
            Algo::Subpixel,
        ),
        (
            ConvSpec::conv_transpose2d(16, 8, 4)
                .stride(2)
                .padding(1)
                .build()
                .unwrap(),
            [1, 16, 9, 10],
            Algo::Col2im,
        ),
        // Stride 2 with three taps a row: the scatter's temporary phase rows.
        (
            ConvSpec::conv_transpose2d(16, 8, 3)
                .stride(2)
                .padding(1)
                .output_padding(1)
                .groups(2)
                .build()
                .unwrap(),
            [2, 16, 9, 10],
            Algo::Col2im,
        ),
        // A row too wide for one chunk of whole rows: chunks of pixels, cut rows.
        (
            ConvSpec::conv_transpose1d(16, 8, 3)
                .stride(2)
                .build()
                .unwrap(),
            [1, 16, 1, 40_000],
            Algo::Col2im,
        ),
    ];
    for (spec, input, algo) in cases {
        let x = Array4::from_shape_fn(input, |(a, b, c, d)| ((a + b + 2 * c + 3 * d) % 7) as f32);
        let w = Array4::from_elem(spec.weight_shape(), 0.125f32);
        let plan = Plan::new(&spec, input, w.view(), None, algo).unwrap();
        assert_eq!(plan.algo(), algo);
        let mut y = Array4::<f32>::zeros(plan.geometry().output_shape());
        allocs(&format!("{spec} on {input:?} ({algo})"), || {
            plan.run(x.view(), y.view_mut()).unwrap()
        });
    }
}
