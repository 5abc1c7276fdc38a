//! Warm runs allocate nothing: `SeparablePlan::run` (fused and unfused) and the plans it is
//! made of (the depthwise kernel, the 1×1 GEMM), counted through a global allocator. Its own
//! test binary, so that no other test allocates meanwhile.
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

/// Allocations of 20 calls of `f` once warm.
fn allocs(mut f: impl FnMut()) -> usize {
    for _ in 0..10 {
        f();
    }
    let region = Region::new(GLOBAL);
    for _ in 0..20 {
        f();
    }
    let st = region.change();
    st.allocations + st.reallocations
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
        allocs(|| pw.run(m.view(), o.view_mut()).unwrap())
    };
    let mut m = Array4::<f32>::zeros(mid);
    assert!(allocs(|| dw.run(x.view(), m.view_mut()).unwrap()) <= RAYON_NOISE);
    for shape in [mid, [1, 48, 4, 17], [1, 48, 3, 17]] {
        let n = pw_at(shape);
        assert!(
            n <= RAYON_NOISE,
            "pointwise plan on {shape:?}: {n} allocations"
        );
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
    assert!(allocs(|| unfused.run(x.view(), y.view_mut()).unwrap()) <= RAYON_NOISE);
    // 23 rows per image: five bands of 4 and one of 3, two images.
    assert!(allocs(|| fused.run(x.view(), y.view_mut()).unwrap()) <= RAYON_NOISE);
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
        let n = allocs(|| plan.run(x.view(), y.view_mut()).unwrap());
        assert!(
            n <= RAYON_NOISE,
            "{spec} on {input:?} ({algo}) allocates {n} times per 20 runs"
        );
    }
}
