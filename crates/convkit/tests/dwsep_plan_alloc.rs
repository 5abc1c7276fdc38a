//! `SeparablePlan::run` adds no allocation of its own once warm (fused and unfused): a warm
//! run allocates exactly what its pointwise sub-plans' GEMM allocates (the implicit GEMM's
//! per-task depth-chunk lists, `ConvGemm::chunks`), counted through a global allocator. Its
//! own test binary, so that no other test allocates meanwhile.

use convkit::dwsep::DepthwiseSeparable;
use convkit::dwsep_plan::{FuseMode, SeparablePlan};
use convkit::plan::{Algo, Plan};
use ndarray::Array4;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations of 20 calls of `f` once warm.
fn allocs(mut f: impl FnMut()) -> usize {
    for _ in 0..10 {
        f();
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..20 {
        f();
    }
    ALLOCS.load(Ordering::Relaxed) - before
}

#[test]
fn warm_runs_add_no_allocation() {
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
    assert_eq!(allocs(|| dw.run(x.view(), m.view_mut()).unwrap()), 0);
    let (whole, band4, band3) = (pw_at(mid), pw_at([1, 48, 4, 17]), pw_at([1, 48, 3, 17]));
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
    assert_eq!(
        allocs(|| unfused.run(x.view(), y.view_mut()).unwrap()),
        whole
    );
    // 23 rows per image: five bands of 4 and one of 3, two images.
    assert_eq!(
        allocs(|| fused.run(x.view(), y.view_mut()).unwrap()),
        2 * (5 * band4 + band3)
    );
}
