//! Every fast algorithm × every ISA level on this CPU against the reference oracle, on fixed
//! cases and on random specs (odd sizes, tails of every blocking dimension, groups, dilation,
//! asymmetric padding, every padding mode, conv1d, batch > 1), plus thread-count determinism.

use convkit::kernels::Isa;
use convkit::plan::{forward, Algo, Plan};
use convkit::{reference, ConvError, ConvSpec, Padding, PaddingMode, ValidSpec};
use ndarray::{Array1, Array4};
use proptest::prelude::*;

mod common;
use common::rand_vec;

fn operands(
    spec: &ValidSpec,
    input: [usize; 4],
    seed: u64,
) -> (Array4<f32>, Array4<f32>, Option<Array1<f32>>) {
    let x = Array4::from_shape_vec(input, rand_vec(input.iter().product(), seed)).unwrap();
    let ws = spec.weight_shape();
    let w = Array4::from_shape_vec(ws, rand_vec(ws.iter().product(), seed + 1)).unwrap();
    let b = spec
        .has_bias()
        .then(|| Array1::from(rand_vec(spec.out_channels(), seed + 2)));
    (x, w, b)
}

/// Checks `algo` at `isa` against the reference; returns Ok(false) if the algo does not apply.
fn check(
    spec: &ValidSpec,
    input: [usize; 4],
    algo: Algo,
    isa: Isa,
    seed: u64,
) -> Result<bool, String> {
    let (x, w, b) = operands(spec, input, seed);
    let want = reference::forward(spec, x.view(), w.view(), b.as_ref().map(|b| b.view())).unwrap();
    let plan = match Plan::with_isa(
        spec,
        input,
        w.view(),
        b.as_ref().map(|b| b.view()),
        algo,
        isa,
    ) {
        Ok(p) => p,
        Err(ConvError::AlgorithmUnavailable { .. }) => return Ok(false),
        Err(e) => return Err(format!("plan failed: {e}")),
    };
    let mut got = Array4::<f32>::from_elem(plan.geometry().output_shape(), f32::NAN);
    plan.run(x.view(), got.view_mut())
        .map_err(|e| e.to_string())?;
    let depth = (spec.in_channels() / spec.groups()) * spec.kernel()[0] * spec.kernel()[1];
    let tol = 1e-5 * (depth as f32 + 1.0);
    for (i, (g, r)) in got.iter().zip(want.iter()).enumerate() {
        let close = (g - r).abs() <= tol; // false for NaN too
        if !close {
            return Err(format!(
                "{spec} input {input:?} algo {algo} isa {isa}: element {i}: got {g}, want {r}"
            ));
        }
    }
    Ok(true)
}

fn check_all(spec: &ValidSpec, input: [usize; 4], seed: u64) -> Result<(), String> {
    for isa in Isa::available_levels() {
        for algo in [
            Algo::Auto,
            Algo::ImplicitGemm,
            Algo::Indirect,
            Algo::Gemm1x1,
            Algo::Direct,
            Algo::Depthwise,
        ] {
            check(spec, input, algo, isa, seed)?;
        }
    }
    Ok(())
}

#[test]
fn fixed_cases() {
    let cases: Vec<(ConvSpec, [usize; 4])> = vec![
        (ConvSpec::conv2d(3, 8, 3).padding(1), [1, 3, 9, 11]),
        (
            ConvSpec::conv2d(3, 64, 7).stride(2).padding(3),
            [1, 3, 31, 29],
        ),
        (ConvSpec::conv2d(20, 13, 1), [2, 20, 7, 9]),
        (ConvSpec::conv2d(20, 13, 1).stride(2), [1, 20, 9, 9]),
        (
            ConvSpec::conv2d(16, 16, 3).padding(6).dilation(6),
            [1, 16, 14, 13],
        ),
        (
            ConvSpec::conv2d(16, 16, 3).padding(12).dilation(12),
            [1, 16, 16, 16],
        ),
        (
            ConvSpec::conv2d(32, 32, 3).padding(1).groups(8),
            [1, 32, 10, 10],
        ),
        (ConvSpec::conv2d(8, 8, 3).padding(1).groups(8), [1, 8, 6, 7]),
        (ConvSpec::conv1d(24, 17, 3).padding(1), [2, 24, 1, 101]),
        (
            ConvSpec::conv2d(5, 7, [2, 4])
                .padding_sides([0, 2, 3, 1])
                .stride([2, 1]),
            [1, 5, 8, 9],
        ),
        (
            ConvSpec::conv2d(4, 9, 3)
                .padding(2)
                .padding_mode(PaddingMode::Reflect),
            [1, 4, 6, 7],
        ),
        (
            ConvSpec::conv2d(4, 9, 3)
                .padding(3)
                .padding_mode(PaddingMode::Replicate)
                .dilation(2),
            [1, 4, 6, 7],
        ),
        (
            ConvSpec::conv2d(4, 9, 3)
                .padding(2)
                .padding_mode(PaddingMode::Circular)
                .stride(2),
            [1, 4, 6, 7],
        ),
        (
            ConvSpec::conv2d(6, 10, 3)
                .padding_rule(Padding::SameTf)
                .stride(2)
                .bias(false),
            [3, 6, 11, 8],
        ),
        (
            ConvSpec::conv2d(6, 10, 5)
                .padding_rule(Padding::Same)
                .dilation(2),
            [1, 6, 12, 12],
        ),
        // Rows wider than one direct band (several column bands, border modes at both ends).
        (
            ConvSpec::conv1d(5, 9, 3)
                .padding(2)
                .padding_mode(PaddingMode::Reflect),
            [1, 5, 1, 900],
        ),
        (ConvSpec::conv2d(3, 4, [2, 5]).padding(2), [1, 3, 3, 800]),
        // Deep enough for several depth chunks and channel blocks.
        (ConvSpec::conv2d(64, 40, 3).padding(1), [1, 64, 9, 9]),
        (ConvSpec::conv2d(300, 20, 1), [1, 300, 5, 10]),
    ];
    for (i, (s, input)) in cases.into_iter().enumerate() {
        let spec = s.build().unwrap();
        check_all(&spec, input, i as u64).unwrap();
    }
}

#[test]
fn auto_always_works_including_transposed() {
    let spec = ConvSpec::conv_transpose2d(4, 6, 3)
        .stride(2)
        .padding(1)
        .build()
        .unwrap();
    let (x, w, b) = operands(&spec, [1, 4, 5, 5], 9);
    let y = forward(
        &spec,
        x.view(),
        w.view(),
        b.as_ref().map(|b| b.view()),
        Algo::Auto,
    )
    .unwrap();
    let r = reference::forward(&spec, x.view(), w.view(), b.as_ref().map(|b| b.view())).unwrap();
    // Auto runs transposed layers as sub-pixel phases on the fast engine.
    assert_eq!(
        Plan::new(&spec, [1, 4, 5, 5], w.view(), None, Algo::Auto)
            .unwrap()
            .algo(),
        Algo::Subpixel
    );
    for (a, e) in y.iter().zip(r.iter()) {
        assert!((a - e).abs() <= 1e-5 + 1e-5 * e.abs(), "{a} vs {e}");
    }
    let e = Plan::new(&spec, [1, 4, 5, 5], w.view(), None, Algo::ImplicitGemm).unwrap_err();
    assert!(matches!(e, ConvError::AlgorithmUnavailable { .. }));
    // And the transposed algorithms refuse direct layers.
    let direct = ConvSpec::conv2d(4, 6, 3).build().unwrap();
    let wd = Array4::<f32>::zeros(direct.weight_shape());
    for algo in [Algo::Subpixel, Algo::Col2im] {
        let e = Plan::new(&direct, [1, 4, 8, 8], wd.view(), None, algo).unwrap_err();
        assert!(
            matches!(e, ConvError::AlgorithmUnavailable { .. }),
            "{algo}"
        );
    }
}

/// Both transposed algorithms (and `Auto`) × every ISA level against the reference on fixed
/// transposed layers: the suite's decoder shapes scaled down, output padding, groups,
/// dilation, asymmetric crops, `output_size`, output padding ≥ stride (below the dilation),
/// stride 1, kernels within and beyond their stride, 1D, batches, and deep layers (several
/// depth chunks).
#[test]
fn transposed_algorithms_match_reference() {
    let cases: Vec<(ConvSpec, [usize; 4])> = vec![
        (
            ConvSpec::conv_transpose2d(16, 8, 4).stride(2).padding(1),
            [1, 16, 9, 10],
        ),
        (
            ConvSpec::conv_transpose2d(16, 8, 2).stride(2),
            [2, 16, 7, 6],
        ),
        (
            ConvSpec::conv_transpose2d(12, 6, 3)
                .stride(2)
                .padding(1)
                .output_padding(1),
            [1, 12, 11, 9],
        ),
        (ConvSpec::conv_transpose2d(8, 6, 3).padding(1), [1, 8, 9, 8]),
        (
            ConvSpec::conv_transpose2d(8, 12, 3)
                .stride(2)
                .dilation(2)
                .padding(2)
                .output_padding(1)
                .groups(4),
            [1, 8, 6, 7],
        ),
        (
            ConvSpec::conv_transpose2d(6, 9, [3, 5])
                .stride([3, 2])
                .padding_sides([2, 0, 1, 3])
                .output_padding([2, 1])
                .groups(3),
            [2, 6, 5, 6],
        ),
        (
            ConvSpec::conv_transpose2d(4, 4, 3)
                .stride(2)
                .padding(1)
                .output_size([12, 11]),
            [1, 4, 6, 6],
        ),
        (
            ConvSpec::conv_transpose2d(4, 5, 2)
                .dilation(3)
                .output_padding(2),
            [1, 4, 5, 6],
        ),
        (
            ConvSpec::conv_transpose2d(10, 7, 1).stride(3),
            [1, 10, 5, 4],
        ),
        (
            ConvSpec::conv_transpose1d(6, 5, 4).stride(2).padding(1),
            [3, 6, 1, 40],
        ),
        (
            ConvSpec::conv_transpose2d(300, 24, 3).stride(2).padding(1),
            [1, 300, 5, 6],
        ),
        (
            ConvSpec::conv_transpose2d(64, 20, 4)
                .stride(2)
                .padding(1)
                .bias(false),
            [1, 64, 13, 29],
        ),
    ];
    for (i, (s, input)) in cases.into_iter().enumerate() {
        let spec = s.build().unwrap();
        for isa in Isa::available_levels() {
            for algo in [Algo::Auto, Algo::Subpixel, Algo::Col2im] {
                let ran = check(&spec, input, algo, isa, 60 + i as u64).unwrap();
                assert!(ran, "{spec} on {input:?}: {algo} refused");
            }
        }
    }
}

fn arb_transposed() -> impl Strategy<Value = (ValidSpec, [usize; 4])> {
    (
        (1usize..4, 1usize..5, 1usize..4), // groups, c per group, k per group
        (1usize..5, 1usize..5, 1usize..4, 1usize..4), // kh, kw, sh, sw
        (1usize..3, 1usize..4),            // dh, dw
        (0usize..4, 0usize..4, 0usize..4, 0usize..4),
        (0usize..3, 0usize..3),
        (1usize..3, 1usize..9, 1usize..14, any::<bool>()),
        any::<bool>(),
    )
        .prop_filter_map(
            "invalid layer",
            |((g, cg, kg), (kh, kw, sh, sw), (dh, dw), pads, op, (n, h, w, bias), one_d)| {
                let (c, k) = (g * cg, g * kg);
                let spec = if one_d {
                    ConvSpec::conv_transpose1d(c, k, kw)
                        .stride(sw)
                        .dilation(dw)
                        .padding_sides([0, 0, pads.2, pads.3])
                        .output_padding(op.1 % sw.max(dw))
                } else {
                    ConvSpec::conv_transpose2d(c, k, [kh, kw])
                        .stride([sh, sw])
                        .dilation([dh, dw])
                        .padding_sides([pads.0, pads.1, pads.2, pads.3])
                        .output_padding([op.0 % sh.max(dh), op.1 % sw.max(dw)])
                }
                .groups(g)
                .bias(bias)
                .build()
                .ok()?;
                let input = [n, c, if one_d { 1 } else { h }, w];
                spec.geometry(input).ok()?;
                Some((spec, input))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Random transposed layers: sub-pixel, col2im and Auto at every ISA level.
    #[test]
    fn random_transposed_layers_match_reference(
        (spec, input) in arb_transposed(),
        seed in any::<u64>(),
    ) {
        for isa in Isa::available_levels() {
            for algo in [Algo::Auto, Algo::Subpixel, Algo::Col2im] {
                let ran = check(&spec, input, algo, isa, seed).map_err(TestCaseError::fail)?;
                prop_assert!(ran, "{} on {:?}: {} refused", spec, input, algo);
            }
        }
    }
}

/// `Auto` on transposed layers follows the documented cost rule (`plan::transposed_algo`):
/// sub-pixel at stride 1 and for narrow groups with overlapping taps, col2im when the dilated
/// kernel fits in the stride or the groups are ≥ 64 channels wide, except that with AVX-512
/// the DCGAN row's even phases run as sub-pixel (on the indirect kernel).
#[test]
fn auto_picks_the_transposed_algorithm_by_the_cost_rule() {
    let cases: Vec<(ConvSpec, [usize; 4], Algo)> = vec![
        // The suite rows.
        (
            ConvSpec::conv_transpose2d(128, 64, 4).stride(2).padding(1),
            [1, 128, 32, 32],
            if Isa::Avx512.available() {
                Algo::Subpixel
            } else {
                Algo::Col2im
            },
        ),
        // Even phases, but an 8×8 map: col2im.
        (
            ConvSpec::conv_transpose2d(512, 256, 4).stride(2).padding(1),
            [1, 512, 8, 8],
            Algo::Col2im,
        ),
        (
            ConvSpec::conv_transpose2d(128, 64, 2).stride(2),
            [1, 128, 64, 64],
            Algo::Col2im,
        ),
        (
            ConvSpec::conv_transpose2d(64, 32, 3)
                .stride(2)
                .padding(1)
                .output_padding(1),
            [1, 64, 56, 56],
            Algo::Col2im,
        ),
        // Stride 1: one phase, a direct convolution.
        (
            ConvSpec::conv_transpose2d(64, 64, 3).padding(1),
            [1, 64, 56, 56],
            Algo::Subpixel,
        ),
        // Narrow groups with overlapping taps.
        (
            ConvSpec::conv_transpose2d(16, 8, 4).stride(2).padding(1),
            [1, 16, 64, 64],
            Algo::Subpixel,
        ),
        (
            ConvSpec::conv_transpose2d(128, 64, 4)
                .stride(2)
                .padding(1)
                .groups(4),
            [1, 128, 32, 32],
            Algo::Subpixel,
        ),
        // Taps within the stride, however narrow.
        (
            ConvSpec::conv_transpose2d(8, 8, 1)
                .stride(2)
                .output_padding(1),
            [1, 8, 32, 32],
            Algo::Col2im,
        ),
        (
            ConvSpec::conv_transpose2d(8, 8, 3).stride(3),
            [1, 8, 32, 32],
            Algo::Col2im,
        ),
        // A dilated 2×2 reaches past a stride of 2: overlapping, narrow → sub-pixel.
        (
            ConvSpec::conv_transpose2d(8, 8, 2).stride(2).dilation(2),
            [1, 8, 32, 32],
            Algo::Subpixel,
        ),
    ];
    for (s, input, want) in cases {
        let spec = s.build().unwrap();
        let w = Array4::<f32>::zeros(spec.weight_shape());
        let plan = Plan::new(&spec, input, w.view(), None, Algo::Auto).unwrap();
        assert_eq!(plan.algo(), want, "{spec} on {input:?}");
    }
}

#[test]
fn gemm1x1_refuses_other_layers_and_bad_shapes_are_errors() {
    let spec = ConvSpec::conv2d(4, 6, 3).build().unwrap();
    let w = Array4::<f32>::zeros((6, 4, 3, 3));
    let e = Plan::new(&spec, [1, 4, 8, 8], w.view(), None, Algo::Gemm1x1).unwrap_err();
    assert!(matches!(e, ConvError::AlgorithmUnavailable { .. }));
    let plan = Plan::new(&spec, [1, 4, 8, 8], w.view(), None, Algo::Auto).unwrap();
    assert_eq!(plan.algo(), Algo::ImplicitGemm);
    let x = Array4::<f32>::zeros((1, 4, 9, 8));
    let mut y = Array4::<f32>::zeros((1, 6, 6, 6));
    assert!(matches!(
        plan.run(x.view(), y.view_mut()),
        Err(ConvError::ShapeMismatch { .. })
    ));
    let bad_w = Array4::<f32>::zeros((6, 4, 3, 2));
    assert!(Plan::new(&spec, [1, 4, 8, 8], bad_w.view(), None, Algo::Auto).is_err());
    assert_eq!("gemm1x1".parse::<Algo>().unwrap(), Algo::Gemm1x1);
    assert!("fast".parse::<Algo>().is_err());
}

/// Regression: `Algo::ALL` once left out `direct` and `winograd`, so `--algo direct` (the
/// exact alternative to Winograd the issue asks for) could not be selected by name.
#[test]
fn every_algorithm_parses_from_its_name() {
    for a in [
        Algo::Auto,
        Algo::Reference,
        Algo::ImplicitGemm,
        Algo::Indirect,
        Algo::Gemm1x1,
        Algo::Direct,
        Algo::Winograd,
        Algo::Depthwise,
        Algo::Subpixel,
        Algo::Col2im,
    ] {
        assert!(Algo::ALL.contains(&a), "{a} missing from Algo::ALL");
        assert_eq!(a.name().parse::<Algo>().unwrap(), a);
    }
}

#[test]
fn non_contiguous_views_work() {
    let spec = ConvSpec::conv2d(3, 5, 3).padding(1).build().unwrap();
    let (x, w, b) = operands(&spec, [1, 3, 8, 8], 3);
    let xt = x
        .clone()
        .reversed_axes()
        .as_standard_layout()
        .to_owned()
        .reversed_axes();
    assert!(xt.as_slice().is_none());
    let plan = Plan::new(
        &spec,
        [1, 3, 8, 8],
        w.view(),
        b.as_ref().map(|b| b.view()),
        Algo::Auto,
    )
    .unwrap();
    let mut y1 = Array4::<f32>::zeros((1, 5, 8, 8));
    plan.run(x.view(), y1.view_mut()).unwrap();
    let mut y2 = Array4::<f32>::zeros((1, 5, 8, 8))
        .reversed_axes()
        .as_standard_layout()
        .to_owned()
        .reversed_axes();
    plan.run(xt.view(), y2.view_mut()).unwrap();
    assert_eq!(y1, y2);
}

/// Both transposed algorithms give bit-identical results for any thread count (col2im's
/// scatter is split by output channels, or for exact covers by input rows whose output rows
/// no other task touches, never by racing adds).
#[test]
fn transposed_bit_identical_across_thread_counts() {
    let specs = [
        // Exact covers (kernel = stride): col2im's pixel tasks, U-Net's 2×2/2 and grouped.
        (
            ConvSpec::conv_transpose2d(48, 40, 2)
                .stride(2)
                .build()
                .unwrap(),
            [1, 48, 19, 13],
        ),
        (
            ConvSpec::conv_transpose2d(24, 18, 3)
                .stride(3)
                .padding(1)
                .groups(3)
                .build()
                .unwrap(),
            [2, 24, 7, 9],
        ),
        (
            ConvSpec::conv_transpose2d(64, 48, 4)
                .stride(2)
                .padding(1)
                .build()
                .unwrap(),
            [1, 64, 13, 17],
        ),
        (
            ConvSpec::conv_transpose2d(32, 24, 3)
                .stride(2)
                .padding(1)
                .output_padding(1)
                .groups(2)
                .build()
                .unwrap(),
            [2, 32, 9, 11],
        ),
    ];
    for (spec, input) in specs {
        let (x, w, b) = operands(&spec, input, 11);
        for algo in [Algo::Subpixel, Algo::Col2im] {
            let plan =
                Plan::new(&spec, input, w.view(), b.as_ref().map(|b| b.view()), algo).unwrap();
            let run_with = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut y = Array4::<f32>::zeros(plan.geometry().output_shape());
                pool.install(|| plan.run(x.view(), y.view_mut())).unwrap();
                y
            };
            let one = run_with(1);
            for t in [2, 3, 5] {
                let other = run_with(t);
                assert!(
                    one.iter()
                        .zip(other.iter())
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{algo} {spec}: {t} threads differ from 1"
                );
            }
        }
    }
}

#[test]
fn bit_identical_across_thread_counts() {
    let specs = [
        (
            ConvSpec::conv2d(64, 48, 3).padding(1).build().unwrap(),
            [1, 64, 20, 20],
        ),
        (
            ConvSpec::conv2d(96, 32, 1).build().unwrap(),
            [2, 96, 15, 15],
        ),
        (
            ConvSpec::conv2d(32, 32, 3)
                .padding(4)
                .dilation(4)
                .groups(2)
                .build()
                .unwrap(),
            [1, 32, 17, 17],
        ),
    ];
    for (spec, input) in specs {
        let (x, w, b) = operands(&spec, input, 5);
        let plan = Plan::new(
            &spec,
            input,
            w.view(),
            b.as_ref().map(|b| b.view()),
            Algo::Auto,
        )
        .unwrap();
        let run_with = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut y = Array4::<f32>::zeros(plan.geometry().output_shape());
            pool.install(|| plan.run(x.view(), y.view_mut())).unwrap();
            y
        };
        let one = run_with(1);
        for t in [2, 3, 5] {
            let other = run_with(t);
            assert!(one
                .iter()
                .zip(other.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

#[test]
fn plan_is_send_sync_and_shared() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Plan>();
    let spec = ConvSpec::conv2d(8, 8, 3).padding(1).build().unwrap();
    let (x, w, b) = operands(&spec, [1, 8, 12, 12], 7);
    let plan = Plan::new(
        &spec,
        [1, 8, 12, 12],
        w.view(),
        b.as_ref().map(|b| b.view()),
        Algo::Auto,
    )
    .unwrap();
    let mut base = Array4::<f32>::zeros((1, 8, 12, 12));
    plan.run(x.view(), base.view_mut()).unwrap();
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                let mut y = Array4::<f32>::zeros((1, 8, 12, 12));
                plan.run(x.view(), y.view_mut()).unwrap();
                assert_eq!(y, base);
            });
        }
    });
}

fn arb_case() -> impl Strategy<Value = (ValidSpec, [usize; 4])> {
    (
        (1usize..4, 1usize..5, 1usize..4), // groups, c per group, k per group
        (1usize..4, 1usize..4, 1usize..3, 1usize..3), // kh, kw, sh, sw
        (1usize..3, 1usize..4),            // dh, dw
        (0usize..4, 0usize..4, 0usize..4, 0usize..4),
        0usize..4, // padding mode
        (1usize..3, 1usize..12, 1usize..14, any::<bool>()),
        any::<bool>(),
    )
        .prop_filter_map(
            "invalid layer",
            |((g, cg, kg), (kh, kw, sh, sw), (dh, dw), pads, mode, (n, h, w, bias), one_d)| {
                let mode = [
                    PaddingMode::Zeros,
                    PaddingMode::Reflect,
                    PaddingMode::Replicate,
                    PaddingMode::Circular,
                ][mode];
                let (c, k) = (
                    g * cg * if cg == 4 { 5 } else { 1 },
                    g * kg * if kg == 3 { 7 } else { 1 },
                );
                let spec = if one_d {
                    ConvSpec::conv1d(c, k, kw)
                        .stride(sw)
                        .dilation(dw)
                        .padding_sides([0, 0, pads.2, pads.3])
                } else {
                    ConvSpec::conv2d(c, k, [kh, kw])
                        .stride([sh, sw])
                        .dilation([dh, dw])
                        .padding_sides([pads.0, pads.1, pads.2, pads.3])
                }
                .groups(g)
                .padding_mode(mode)
                .bias(bias)
                .build()
                .ok()?;
                let input = [n, c, if one_d { 1 } else { h }, w];
                spec.geometry(input).ok()?;
                Some((spec, input))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_layers_match_reference((spec, input) in arb_case(), seed in any::<u64>()) {
        check_all(&spec, input, seed).map_err(TestCaseError::fail)?;
    }
}

/// Winograd's documented tolerance: |error| ≤ 4e-6 · Σ|x·w| + 1e-6 per output, against the
/// f64 reference (Σ|x·w| computed by the reference on |x|, |w|). Prints the measured worst
/// ratio |error| / Σ|x·w| next to the direct kernel's (run with --nocapture).
#[test]
fn winograd_error_is_bounded() {
    // Dilated layers Winograd cannot split into phases: padding not a multiple of the
    // dilation, or a border mode that mixes the phases.
    for s in [
        ConvSpec::conv2d(8, 8, 3).dilation(2).padding(1),
        ConvSpec::conv2d(8, 8, 3)
            .dilation(2)
            .padding(2)
            .padding_mode(PaddingMode::Reflect),
    ] {
        let spec = s.build().unwrap();
        let (_, w, _) = operands(&spec, [1, 8, 12, 12], 1);
        let err = Plan::new(&spec, [1, 8, 12, 12], w.view(), None, Algo::Winograd).unwrap_err();
        assert!(
            matches!(err, ConvError::AlgorithmUnavailable { .. }),
            "{spec}: {err}"
        );
    }
    let cases = [
        (ConvSpec::conv2d(64, 64, 3).padding(1), [1, 64, 30, 29]),
        (ConvSpec::conv2d(256, 32, 3).padding(1), [1, 256, 14, 14]),
        (
            ConvSpec::conv2d(17, 23, 3).padding_sides([0, 2, 1, 0]),
            [2, 17, 9, 12],
        ),
        (
            ConvSpec::conv2d(16, 20, 3)
                .padding(1)
                .padding_mode(PaddingMode::Reflect),
            [1, 16, 7, 8],
        ),
        // Dilated layers, split into stride phases of unequal sizes: odd maps, unequal
        // dilations with asymmetric padding, batch 2, an ASPP-like dilation 6.
        (
            ConvSpec::conv2d(16, 24, 3).dilation(2).padding(2),
            [1, 16, 19, 22],
        ),
        (
            ConvSpec::conv2d(8, 8, 3)
                .dilation([3, 2])
                .padding_sides([3, 1, 4, 0]),
            [2, 8, 17, 13],
        ),
        (
            ConvSpec::conv2d(32, 16, 3).dilation(6).padding(6),
            [1, 32, 20, 20],
        ),
        // Dilated along rows only: the output transform writes the phase rows in place.
        (
            ConvSpec::conv2d(8, 12, 3)
                .dilation([2, 1])
                .padding_sides([2, 1, 1, 1]),
            [1, 8, 15, 11],
        ),
    ];
    for (i, (s, input)) in cases.into_iter().enumerate() {
        let spec = s.build().unwrap();
        let (x, w, b) = operands(&spec, input, 40 + i as u64);
        let want =
            reference::forward(&spec, x.view(), w.view(), b.as_ref().map(|b| b.view())).unwrap();
        let scale = reference::forward(
            &spec,
            x.mapv(f32::abs).view(),
            w.mapv(f32::abs).view(),
            None,
        )
        .unwrap();
        let mut worst = [0f64; 2];
        for (j, algo) in [Algo::Winograd, Algo::Direct].into_iter().enumerate() {
            for isa in Isa::available_levels() {
                let plan = Plan::with_isa(
                    &spec,
                    input,
                    w.view(),
                    b.as_ref().map(|b| b.view()),
                    algo,
                    isa,
                )
                .unwrap();
                assert_eq!(plan.algo(), algo);
                let mut got = Array4::<f32>::zeros(plan.geometry().output_shape());
                plan.run(x.view(), got.view_mut()).unwrap();
                for ((g, r), s) in got.iter().zip(want.iter()).zip(scale.iter()) {
                    let err = (g - r).abs() as f64;
                    assert!(
                        err <= 4e-6 * *s as f64 + 1e-6,
                        "{algo} {isa} {spec}: {g} vs {r} (scale {s})"
                    );
                    worst[j] = worst[j].max(err / (*s as f64).max(1e-30));
                }
            }
        }
        println!(
            "{spec}: max |err|/sum|x*w|: winograd {:.2e}, direct {:.2e}",
            worst[0], worst[1]
        );
    }
}

/// The direct kernel on strided layers (phase-split bands): the RGB stem, stride 3 with
/// dilation, a 1×1 stride-2 subsample, every padding mode, odd sizes; each must apply.
#[test]
fn direct_runs_strided_layers() {
    let modes = [
        PaddingMode::Zeros,
        PaddingMode::Reflect,
        PaddingMode::Replicate,
        PaddingMode::Circular,
    ];
    let cases: Vec<(ConvSpec, [usize; 4])> = vec![
        (
            ConvSpec::conv2d(3, 64, 7).stride(2).padding(3),
            [1, 3, 37, 41],
        ),
        (
            ConvSpec::conv2d(6, 10, [3, 2])
                .stride([3, 2])
                .dilation([2, 3])
                .padding_sides([2, 1, 0, 3]),
            [2, 6, 19, 17],
        ),
        (ConvSpec::conv2d(20, 13, 1).stride(2), [1, 20, 9, 11]),
        (
            ConvSpec::conv2d(8, 8, 3).stride(2).padding(1).groups(2),
            [1, 8, 12, 9],
        ),
    ];
    for (i, (spec, input)) in cases.into_iter().enumerate() {
        for mode in modes {
            let Ok(spec) = spec.padding_mode(mode).build() else {
                continue;
            };
            for isa in Isa::available_levels() {
                let ran = check(&spec, input, Algo::Direct, isa, 40 + i as u64).unwrap();
                assert!(ran, "{spec}: direct refused");
            }
        }
    }
}

/// The direct kernel reuses the input band a thread's previous task filled (same band, next
/// channel block), and Winograd the transformed input block. That must never carry over
/// between runs or between plans: the same plan on different inputs back to back, and two
/// plans (same layout, different weights) run many times from several threads at once on a
/// 2-worker pool, each run checked against its reference.
#[test]
fn workspace_reuse_never_leaks_between_runs() {
    // Many output channels: several channel blocks share each band / tile block.
    let cases = [
        (
            ConvSpec::conv2d(48, 256, 1).stride(2).build().unwrap(),
            [1, 48, 14, 14],
            Algo::Direct,
        ),
        (
            ConvSpec::conv2d(32, 128, 3).padding(1).build().unwrap(),
            [1, 32, 12, 12],
            Algo::Winograd,
        ),
    ];
    for (spec, input, algo) in cases {
        reuse_case(&spec, input, algo);
    }
}

fn reuse_case(spec: &ValidSpec, input: [usize; 4], algo: Algo) {
    let (_, w, b) = operands(spec, input, 60);
    let len: usize = input.iter().product();
    let xs: Vec<Array4<f32>> = (0..3)
        .map(|i| Array4::from_shape_vec(input, rand_vec(len, 61 + i)).unwrap())
        .collect();
    let w2 = w.mapv(|v| -v);
    let refs = |w: &Array4<f32>| -> Vec<Array4<f32>> {
        xs.iter()
            .map(|x| {
                reference::forward(spec, x.view(), w.view(), b.as_ref().map(|b| b.view())).unwrap()
            })
            .collect()
    };
    let (want, want2) = (refs(&w), refs(&w2));
    let plan = |w: &Array4<f32>| {
        Plan::new(spec, input, w.view(), b.as_ref().map(|b| b.view()), algo).unwrap()
    };
    let (p1, p2) = (plan(&w), plan(&w2));
    let close = |y: &Array4<f32>, r: &Array4<f32>| {
        y.iter()
            .zip(r.iter())
            .all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs()))
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    pool.install(|| {
        for (x, r) in xs.iter().zip(&want) {
            let mut y = Array4::<f32>::zeros(p1.geometry().output_shape());
            p1.run(x.view(), y.view_mut()).unwrap();
            assert!(close(&y, r), "{algo:?}: back-to-back runs on one thread");
        }
    });
    std::thread::scope(|s| {
        for t in 0..4 {
            let (xs, want, want2, p1, p2) = (&xs, &want, &want2, &p1, &p2);
            s.spawn(move || {
                for i in 0..20 {
                    let k = (t + i) % 3;
                    let (p, r) = if (t + i) % 2 == 0 {
                        (p1, &want[k])
                    } else {
                        (p2, &want2[k])
                    };
                    let mut y = Array4::<f32>::zeros(p.geometry().output_shape());
                    p.run(xs[k].view(), y.view_mut()).unwrap();
                    assert!(
                        close(&y, r),
                        "{algo:?}: concurrent runs: thread {t} run {i}"
                    );
                }
            });
        }
    });
}

/// Auto runs a dilated 3×3 on Winograd only when its stride phases are wide (≥ 12 tiles a
/// row): 128 → 128 on 64×64 at dilation 2 yes, the suite's ASPP (dilation 6 on 32×32, 3 tiles)
/// no (the indirect kernel with AVX-512, else the implicit GEMM); an undilated 3×3 with
/// channels as before.
#[test]
fn auto_picks_dilated_winograd_only_on_wide_phases() {
    if !Isa::Avx512.available() && !Isa::Avx2.available() {
        return;
    }
    let cases = [
        (
            ConvSpec::conv2d(128, 128, 3).dilation(2).padding(2),
            [1, 128, 64, 64],
            Algo::Winograd,
        ),
        (
            ConvSpec::conv2d(256, 256, 3).dilation(6).padding(6),
            [1, 256, 32, 32],
            if Isa::Avx512.available() {
                Algo::Indirect
            } else {
                Algo::ImplicitGemm
            },
        ),
        (
            ConvSpec::conv2d(64, 64, 3).padding(1),
            [1, 64, 56, 56],
            Algo::Winograd,
        ),
    ];
    for (s, input, want) in cases {
        let spec = s.build().unwrap();
        let (_, w, _) = operands(&spec, input, 3);
        let plan = Plan::new(&spec, input, w.view(), None, Algo::Auto).unwrap();
        assert_eq!(plan.algo(), want, "{spec}");
    }
}

/// With AVX-512, Auto runs on the indirect kernel the layers it was measured faster on
/// (dilated, strided 3×3, grouped and small-map stride-1 layers of ≥ 64 output and ≥ 16 input
/// channels per group) and keeps the others where they were: 1×1 strided and long-row layers
/// on the direct kernel, few channels (the RGB stem, ResNeXt's 4-channel groups) likewise,
/// Winograd's and the 1×1 GEMM's layers on those. Without AVX-512 it never picks it.
#[test]
fn auto_picks_the_indirect_kernel_where_measured() {
    let indirect = if Isa::Avx512.available() {
        Algo::Indirect
    } else {
        return;
    };
    let cases: Vec<(ConvSpec, [usize; 4], Algo)> = vec![
        (
            ConvSpec::conv2d(256, 256, 3).padding(6).dilation(6),
            [1, 256, 32, 32],
            indirect,
        ),
        (
            ConvSpec::conv2d(128, 128, 3).stride(2).padding(1),
            [1, 128, 56, 56],
            indirect,
        ),
        (
            ConvSpec::conv2d(128, 128, 3).padding(1).groups(2),
            [1, 128, 28, 28],
            indirect,
        ),
        (
            ConvSpec::conv2d(512, 1024, 1).stride(2),
            [1, 512, 28, 28],
            Algo::Direct,
        ),
        (
            ConvSpec::conv1d(512, 512, 3).padding(1),
            [1, 512, 1, 3000],
            Algo::Direct,
        ),
        (
            ConvSpec::conv2d(3, 64, 7).stride(2).padding(3),
            [1, 3, 224, 224],
            Algo::Direct,
        ),
        (
            ConvSpec::conv2d(128, 128, 3).padding(1).groups(32),
            [1, 128, 56, 56],
            Algo::Direct,
        ),
        (
            ConvSpec::conv2d(64, 64, 3).padding(1),
            [1, 64, 56, 56],
            Algo::Winograd,
        ),
        (
            ConvSpec::conv2d(256, 64, 1),
            [1, 256, 56, 56],
            Algo::Gemm1x1,
        ),
    ];
    for (s, input, want) in cases {
        let spec = s.build().unwrap();
        let (_, w, _) = operands(&spec, input, 3);
        let plan = Plan::new(&spec, input, w.view(), None, Algo::Auto).unwrap();
        assert_eq!(plan.algo(), want, "{spec}");
        let avx2 = Plan::with_isa(&spec, input, w.view(), None, Algo::Auto, Isa::Avx2).unwrap();
        assert_ne!(avx2.algo(), Algo::Indirect, "{spec} on AVX2");
    }
}
