//! The depthwise separable block as one plan: fused (band by band) == unfused ==
//! `DepthwiseSeparable::forward_reference`, on fixed cases (odd sizes, stride, multiplier,
//! dilation, every padding mode, batch, band heights that do not divide the output) and on
//! random small blocks; bad operands are errors; results do not depend on the thread count.

use convkit::dwsep::DepthwiseSeparable;
use convkit::dwsep_plan::{FuseMode, SeparablePlan};
use convkit::{ConvError, Padding, PaddingMode};
use ndarray::{Array1, Array4};
use proptest::prelude::*;

mod common;
use common::rand_vec;

fn rand4(shape: [usize; 4], seed: u64) -> Array4<f32> {
    Array4::from_shape_vec(shape, rand_vec(shape.iter().product(), seed)).unwrap()
}

struct Operands {
    x: Array4<f32>,
    wd: Array4<f32>,
    bd: Option<Array1<f32>>,
    wp: Array4<f32>,
    bp: Option<Array1<f32>>,
}

fn operands(block: &DepthwiseSeparable, input: [usize; 4], seed: u64) -> Operands {
    let (dw, pw) = (block.depthwise(), block.pointwise());
    Operands {
        x: rand4(input, seed),
        wd: rand4(dw.weight_shape(), seed + 1),
        bd: dw
            .has_bias()
            .then(|| Array1::from(rand_vec(dw.out_channels(), seed + 2))),
        wp: rand4(pw.weight_shape(), seed + 3),
        bp: pw
            .has_bias()
            .then(|| Array1::from(rand_vec(pw.out_channels(), seed + 4))),
    }
}

fn plan(
    block: &DepthwiseSeparable,
    input: [usize; 4],
    o: &Operands,
    band_rows: Option<usize>,
    mode: FuseMode,
) -> Result<SeparablePlan, ConvError> {
    let (bd, bp) = (
        o.bd.as_ref().map(|b| b.view()),
        o.bp.as_ref().map(|b| b.view()),
    );
    match band_rows {
        Some(r) => SeparablePlan::with_band_rows(block, input, o.wd.view(), bd, o.wp.view(), bp, r),
        None => SeparablePlan::new(block, input, o.wd.view(), bd, o.wp.view(), bp, mode),
    }
}

fn run(p: &SeparablePlan, x: &Array4<f32>) -> Array4<f32> {
    let mut y = Array4::<f32>::from_elem(p.output_shape(), f32::NAN);
    p.run(x.view(), y.view_mut()).unwrap();
    y
}

/// Fused at several band heights and unfused against the reference.
fn check(block: &DepthwiseSeparable, input: [usize; 4], seed: u64) -> Result<(), String> {
    let o = operands(block, input, seed);
    let want = block
        .forward_reference(
            o.x.view(),
            o.wd.view(),
            o.bd.as_ref().map(|b| b.view()),
            o.wp.view(),
            o.bp.as_ref().map(|b| b.view()),
        )
        .map_err(|e| format!("reference: {e}"))?;
    let [kh, kw] = block.depthwise().kernel();
    // Depth of the two sums one output goes through, as in the other plan tests.
    let depth = kh * kw + block.pointwise().in_channels();
    let tol = 1e-5 * (depth as f32 + 1.0);
    let oh = want.shape()[2];
    let unfused = plan(block, input, &o, None, FuseMode::Unfused).map_err(|e| e.to_string())?;
    let mut runs = vec![("unfused".to_string(), run(&unfused, &o.x))];
    for rows in [1, 2, 3, 5, oh.saturating_sub(1).max(1), oh] {
        let p = plan(block, input, &o, Some(rows), FuseMode::Fused).map_err(|e| e.to_string())?;
        runs.push((format!("fused rows={rows} ({:?})", p.mode()), run(&p, &o.x)));
    }
    let auto = plan(block, input, &o, None, FuseMode::Auto).map_err(|e| e.to_string())?;
    runs.push(("auto".into(), run(&auto, &o.x)));
    for (name, got) in &runs {
        if got.shape() != want.shape() {
            return Err(format!("{name}: shape {:?}", got.shape()));
        }
        for ((i, g), r) in got.indexed_iter().zip(want.iter()) {
            if (g - r).abs() > tol || g.is_nan() {
                return Err(format!("{name}: at {i:?} got {g}, want {r} (tol {tol})"));
            }
        }
    }
    // Fused and unfused run the same sub-kernels on the same values: bit-identical.
    for (name, got) in &runs[1..runs.len() - 1] {
        if *got != runs[0].1 {
            return Err(format!("{name} differs from unfused"));
        }
    }
    Ok(())
}

fn block(c: usize, k: usize, kernel: [usize; 2]) -> convkit::dwsep::DepthwiseSeparableSpec {
    DepthwiseSeparable::builder(c, k, kernel)
}

#[test]
fn fixed_cases() {
    let modes = [
        PaddingMode::Zeros,
        PaddingMode::Reflect,
        PaddingMode::Replicate,
        PaddingMode::Circular,
    ];
    let mut cases = Vec::new();
    for mode in modes {
        cases.push((
            block(3, 5, [3, 3]).padding(1).padding_mode(mode),
            [1, 3, 11, 9],
        ));
        cases.push((
            block(4, 6, [3, 3]).stride(2).padding(1).padding_mode(mode),
            [2, 4, 13, 10],
        ));
        cases.push((
            block(3, 7, [3, 3])
                .multiplier(2)
                .padding([2, 1])
                .padding_mode(mode)
                .bias(true, true),
            [1, 3, 9, 7],
        ));
        cases.push((
            block(5, 4, [3, 3])
                .dilation(2)
                .padding(2)
                .padding_mode(mode)
                .bias(true, false),
            [2, 5, 12, 11],
        ));
        cases.push((
            block(2, 3, [5, 3])
                .stride([2, 1])
                .padding([2, 1])
                .padding_mode(mode)
                .bias(false, true),
            [1, 2, 17, 6],
        ));
    }
    cases.push((block(6, 4, [3, 3]), [1, 6, 10, 10])); // unpadded
    cases.push((
        block(3, 4, [3, 3]).padding_rule(Padding::Same),
        [1, 3, 8, 5],
    ));
    cases.push((
        block(3, 4, [3, 3]).stride(2).padding_rule(Padding::SameTf),
        [2, 3, 10, 9],
    ));
    cases.push((
        block(4, 8, [3, 3]).padding_rule(Padding::Explicit([0, 2, 1, 0])),
        [1, 4, 7, 7],
    ));
    cases.push((
        block(16, 24, [3, 3]).stride(2).padding(1).multiplier(2),
        [1, 16, 23, 21],
    ));
    for (i, (spec, input)) in cases.into_iter().enumerate() {
        let b = spec.build().unwrap();
        check(&b, input, 100 + i as u64).unwrap_or_else(|e| panic!("case {i} {input:?}: {e}"));
    }
}

#[test]
fn default_bands_on_a_large_map_match() {
    // 144 × 56 × 4 B = 32 KiB per row: several L2-sized bands, last one shorter.
    let b = block(144, 24, [3, 3]).padding(1).build().unwrap();
    let input = [1, 144, 57, 56];
    let o = operands(&b, input, 7);
    let f = plan(&b, input, &o, None, FuseMode::Fused).unwrap();
    assert_eq!(f.mode(), FuseMode::Fused);
    let rows = f.band_rows().unwrap();
    assert!(rows < 57 && 57 % rows != 0, "band rows {rows}");
    assert!(f.band_shapes() >= 2);
    let u = plan(&b, input, &o, None, FuseMode::Unfused).unwrap();
    assert_eq!(u.mode(), FuseMode::Unfused);
    assert_eq!(run(&f, &o.x), run(&u, &o.x));
    let a = plan(&b, input, &o, None, FuseMode::Auto).unwrap();
    assert_eq!(a.mode(), FuseMode::Fused); // 1.8 MiB intermediate, several bands
    let small = block(8, 8, [3, 3]).padding(1).build().unwrap();
    let o = operands(&small, [1, 8, 9, 9], 8);
    let a = plan(&small, [1, 8, 9, 9], &o, None, FuseMode::Auto).unwrap();
    assert_eq!(a.mode(), FuseMode::Unfused);
    // Expanding pointwise (K > m·C): unfused even on a large map.
    let wide = block(32, 64, [3, 3]).padding(1).build().unwrap();
    let o = operands(&wide, [1, 32, 112, 112], 9);
    let a = plan(&wide, [1, 32, 112, 112], &o, None, FuseMode::Auto).unwrap();
    assert_eq!(a.mode(), FuseMode::Unfused);
    let f = plan(&wide, [1, 32, 112, 112], &o, None, FuseMode::Fused).unwrap();
    assert_eq!(f.mode(), FuseMode::Fused);
    assert_eq!(run(&f, &o.x), run(&a, &o.x));
}

#[test]
fn circular_with_several_bands_runs_unfused() {
    let b = block(3, 4, [3, 3])
        .padding(1)
        .padding_mode(PaddingMode::Circular)
        .build()
        .unwrap();
    let o = operands(&b, [1, 3, 9, 9], 3);
    let p = plan(&b, [1, 3, 9, 9], &o, Some(2), FuseMode::Fused).unwrap();
    assert_eq!(p.mode(), FuseMode::Unfused);
    let p = plan(&b, [1, 3, 9, 9], &o, Some(9), FuseMode::Fused).unwrap();
    assert_eq!(p.mode(), FuseMode::Fused);
}

#[test]
fn bad_operands_are_errors() {
    let b = block(4, 6, [3, 3])
        .padding(1)
        .bias(false, true)
        .build()
        .unwrap();
    let input = [1, 4, 8, 8];
    let o = operands(&b, input, 1);
    let bp = o.bp.as_ref().map(|b| b.view());
    let mk = |input, wd: &Array4<f32>, wp: &Array4<f32>, bd, bp| {
        SeparablePlan::new(&b, input, wd.view(), bd, wp.view(), bp, FuseMode::Fused)
    };
    assert!(matches!(
        mk([1, 5, 8, 8], &o.wd, &o.wp, None, bp),
        Err(ConvError::ChannelMismatch { .. })
    ));
    assert!(mk([0, 4, 8, 8], &o.wd, &o.wp, None, bp).is_err());
    assert!(mk([1, 4, 0, 8], &o.wd, &o.wp, None, bp).is_err());
    assert!(matches!(
        mk(input, &Array4::zeros((4, 1, 5, 5)), &o.wp, None, bp),
        Err(ConvError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        mk(input, &o.wd, &Array4::zeros((6, 3, 1, 1)), None, bp),
        Err(ConvError::ShapeMismatch { .. })
    ));
    let stray = Array1::<f32>::zeros(4);
    assert!(mk(input, &o.wd, &o.wp, Some(stray.view()), bp).is_err());
    // Kernel larger than the padded input.
    let tiny = block(4, 6, [5, 5]).build().unwrap();
    let ot = operands(&tiny, [1, 4, 3, 3], 2);
    assert!(plan(&tiny, [1, 4, 3, 3], &ot, None, FuseMode::Fused).is_err());
    // Reflect padding wider than the input.
    let refl = block(2, 2, [3, 3])
        .padding(3)
        .padding_mode(PaddingMode::Reflect)
        .build()
        .unwrap();
    let orf = operands(&refl, [1, 2, 3, 3], 2);
    assert!(matches!(
        plan(&refl, [1, 2, 3, 3], &orf, None, FuseMode::Fused),
        Err(ConvError::PaddingTooLarge { .. })
    ));
    // Wrong shapes at run time.
    let p = mk(input, &o.wd, &o.wp, None, bp).unwrap();
    let mut y = Array4::<f32>::zeros((1, 6, 8, 8));
    assert!(matches!(
        p.run(Array4::zeros((1, 4, 8, 9)).view(), y.view_mut()),
        Err(ConvError::ShapeMismatch { .. })
    ));
    let mut y = Array4::<f32>::zeros((1, 6, 8, 7));
    assert!(p.run(o.x.view(), y.view_mut()).is_err());
}

#[test]
fn non_contiguous_views_work() {
    let b = block(3, 5, [3, 3]).padding(1).build().unwrap();
    let input = [2, 3, 9, 8];
    let o = operands(&b, input, 11);
    let p = plan(&b, input, &o, Some(2), FuseMode::Fused).unwrap();
    let want = run(&p, &o.x);
    // Input: a transposed copy viewed back; output: a transposed array.
    let xt = o.x.view().permuted_axes([0, 1, 3, 2]).to_owned();
    let xv = xt.view().permuted_axes([0, 1, 3, 2]);
    let mut yt = Array4::<f32>::zeros((2, 5, 8, 9));
    p.run(xv, yt.view_mut().permuted_axes([0, 1, 3, 2]))
        .unwrap();
    assert_eq!(yt.view().permuted_axes([0, 1, 3, 2]), want.view());
}

#[test]
fn bit_identical_across_thread_counts() {
    let b = block(32, 24, [3, 3])
        .stride(2)
        .padding(1)
        .multiplier(2)
        .bias(true, true)
        .build()
        .unwrap();
    let input = [3, 32, 41, 37];
    let o = operands(&b, input, 5);
    for rows in [None, Some(3)] {
        let p = plan(&b, input, &o, rows, FuseMode::Fused).unwrap();
        let run_with = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run(&p, &o.x))
        };
        let one = run_with(1);
        for t in [2, 3, 4] {
            assert_eq!(run_with(t), one, "{t} threads, rows {rows:?}");
        }
    }
}

#[test]
fn plan_is_send_sync_and_shared() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SeparablePlan>();
    let b = block(4, 4, [3, 3]).padding(1).build().unwrap();
    let input = [1, 4, 12, 12];
    let o = operands(&b, input, 9);
    let p = plan(&b, input, &o, Some(5), FuseMode::Fused).unwrap();
    let want = run(&p, &o.x);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..3 {
                    assert_eq!(run(&p, &o.x), want);
                }
            });
        }
    });
}

fn arb_block() -> impl Strategy<Value = (DepthwiseSeparable, [usize; 4])> {
    (
        (1usize..6, 1usize..7, 1usize..3, 1usize..4, 1usize..4),
        (1usize..3, 1usize..3, 1usize..3, 0usize..3, 0usize..3),
        (0usize..4, 1usize..3, 3usize..14, 3usize..12),
        (any::<bool>(), any::<bool>()),
    )
        .prop_filter_map(
            "invalid block",
            |((c, k, m, kh, kw), (sh, sw, d, ph, pw), (mode, n, h, w), (bd, bp))| {
                let mode = [
                    PaddingMode::Zeros,
                    PaddingMode::Reflect,
                    PaddingMode::Replicate,
                    PaddingMode::Circular,
                ][mode];
                let b = DepthwiseSeparable::builder(c, k, [kh, kw])
                    .multiplier(m)
                    .stride([sh, sw])
                    .dilation(d)
                    .padding([ph, pw])
                    .padding_mode(mode)
                    .bias(bd, bp)
                    .build()
                    .ok()?;
                let input = [n, c, h, w];
                b.output_shape(input).ok()?;
                Some((b, input))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_blocks_match_reference((b, input) in arb_block(), seed in any::<u64>()) {
        if let Err(e) = check(&b, input, seed) {
            return Err(TestCaseError::fail(e));
        }
    }
}
