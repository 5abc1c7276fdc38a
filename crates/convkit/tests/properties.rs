//! Property tests of the spec and the reference engine over random small layers with every
//! option (1D/2D, direct/transposed, per-side/symmetric/valid/same/TF-same padding, every border
//! mode, groups, dilation, output_padding/output_size, bias, batch):
//!
//! * adjointness: ⟨conv(x), y⟩ = ⟨x, convᵀ(y)⟩ with the transposed layer from
//!   `Geometry::equivalent` (and the other way round), and `backward` is the adjoint of
//!   `forward` for every border mode;
//! * a transposed layer equals its equivalent direct convolution (zero insertion, padding
//!   d(k−1)−p, flipped kernel);
//! * linearity in x and in w;
//! * the shape formula (`Geometry::output_shape`) is the shape of the computed output;
//! * random (zero, huge) parameters validate or give an error, never panic or wrap; layers
//!   small enough to run are run through the reference and the planned GEMM paths;
//! * finite-difference check of all three gradients in f64;
//! * spatially separable two-pass = 2D depthwise convolution;
//! * receptive fields of random stacks against a brute-force walk.
//!
//! Case counts are kept small (the reference is plain loops) so the file runs in a few seconds
//! in release mode.

use convkit::arith::{self, ReceptiveField};
use convkit::backward;
use convkit::border::{self, Border};
use convkit::plan::{self, Algo};
use convkit::reference::{self, GradRequest};
use convkit::separable;
use convkit::{ConvError, ConvSpec, Equivalent, Geometry, Padding, PaddingMode, Rank, ValidSpec};
use ndarray::{s, Array1, Array2, Array4, ArrayView4, Axis};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Random small layers
// ---------------------------------------------------------------------------------------------

/// The raw draws a small layer is built from.
#[derive(Debug, Clone, Copy)]
struct Raw {
    two_d: bool,
    transposed: bool,
    groups: usize,
    cin_per_group: usize,
    cout_per_group: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pad_kind: u8,
    sides: [usize; 4],
    mode: u8,
    bias: bool,
    output_padding: [usize; 2],
    output_size_extra: Option<[usize; 2]>,
    batch: usize,
    hw: [usize; 2],
}

fn raw_layer() -> impl Strategy<Value = Raw> {
    (
        (
            any::<bool>(),
            any::<bool>(),
            1usize..=3,
            1usize..=2,
            1usize..=2,
        ),
        (
            [1usize..=3, 1..=3],
            [1usize..=3, 1..=3],
            [1usize..=2, 1..=3],
        ),
        (
            0u8..5,
            [0usize..=2, 0..=2, 0..=2, 0..=2],
            0u8..4,
            any::<bool>(),
        ),
        (
            [0usize..=2, 0..=2],
            proptest::option::of([0usize..=2, 0..=2]),
        ),
        (1usize..=2, [1usize..=6, 1..=7]),
    )
        .prop_map(|(a, b, c, d, e)| Raw {
            two_d: a.0,
            transposed: a.1,
            groups: a.2,
            cin_per_group: a.3,
            cout_per_group: a.4,
            kernel: b.0,
            stride: b.1,
            dilation: b.2,
            pad_kind: c.0,
            sides: c.1,
            mode: c.2,
            bias: c.3,
            output_padding: d.0,
            output_size_extra: d.1,
            batch: e.0,
            hw: e.1,
        })
}

const MODES: [PaddingMode; 4] = [
    PaddingMode::Zeros,
    PaddingMode::Reflect,
    PaddingMode::Replicate,
    PaddingMode::Circular,
];

/// A small valid layer and its input shape `[n, c, h, w]`, or `None` if the draw is invalid.
fn make(r: &Raw) -> Option<(ValidSpec, [usize; 4])> {
    let g = r.groups;
    let (cin, cout) = (g * r.cin_per_group, g * r.cout_per_group);
    let mut s = match (r.two_d, r.transposed) {
        (true, false) => ConvSpec::conv2d(cin, cout, r.kernel),
        (true, true) => ConvSpec::conv_transpose2d(cin, cout, r.kernel),
        (false, false) => ConvSpec::conv1d(cin, cout, r.kernel[1]),
        (false, true) => ConvSpec::conv_transpose1d(cin, cout, r.kernel[1]),
    };
    // For 1D the builder keeps only the width entry of each pair.
    s = s
        .stride(r.stride)
        .dilation(r.dilation)
        .groups(g)
        .bias(r.bias);
    let sides = if r.two_d {
        r.sides
    } else {
        [0, 0, r.sides[2], r.sides[3]]
    };
    let stride1 = s.stride == [1, 1];
    let kind = if r.transposed {
        r.pad_kind % 3
    } else {
        r.pad_kind
    };
    s = match kind {
        0 => s.padding_sides(sides),
        1 => s.padding([sides[0], sides[2]]),
        2 => s.padding_rule(Padding::Valid),
        3 if stride1 => s.padding_rule(Padding::Same),
        _ => s.padding_rule(Padding::SameTf),
    };
    if !r.transposed {
        s = s.padding_mode(MODES[r.mode as usize % 4]);
    }
    let input = [r.batch, cin, if r.two_d { r.hw[0] } else { 1 }, r.hw[1]];
    if r.transposed {
        let lim = [0, 1].map(|a| s.stride[a].max(s.dilation[a]));
        s = s.output_padding([r.output_padding[0] % lim[0], r.output_padding[1] % lim[1]]);
        if let Some(extra) = r.output_size_extra {
            // Ask for a size in [min, min + s − 1] instead (PyTorch's output_size).
            let base = ConvSpec {
                output_padding: [0, 0],
                ..s
            };
            let g0 = base.build().ok()?.geometry(input).ok()?;
            s = ConvSpec {
                output_padding: [0, 0],
                output_size: Some([
                    g0.oh + extra[0] % s.stride[0],
                    g0.ow + extra[1] % s.stride[1],
                ]),
                ..s
            };
        }
    }
    let spec = s.build().ok()?;
    spec.geometry(input).ok()?;
    Some((spec, input))
}

fn layer() -> impl Strategy<Value = (ValidSpec, [usize; 4], u64)> {
    (raw_layer(), any::<u64>()).prop_filter_map("invalid layer", |(r, seed)| {
        make(&r).map(|(s, i)| (s, i, seed))
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Deterministic values in [−1, 1) from a seed (SplitMix64), so failures replay exactly.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    fn array(&mut self, shape: [usize; 4]) -> Array4<f64> {
        Array4::from_shape_simple_fn(shape, || self.next())
    }
    fn vec(&mut self, n: usize) -> Array1<f64> {
        Array1::from_shape_simple_fn(n, || self.next())
    }
}

fn dot(a: ArrayView4<f64>, b: ArrayView4<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
}

/// Σ|aᵢbᵢ|, the scale against which a dot product's rounding is judged.
fn abs_dot(a: ArrayView4<f64>, b: ArrayView4<f64>) -> f64 {
    a.iter().zip(b.iter()).map(|(x, y)| (x * y).abs()).sum()
}

fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= 1e-10 * (1.0 + scale)
}

fn assert_all_close(got: ArrayView4<f64>, want: ArrayView4<f64>, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for ((i, g), w) in got.indexed_iter().zip(want.iter()) {
        assert!(
            (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
            "{what}: at {i:?} got {g}, want {w}"
        );
    }
}

fn fwd(spec: &ValidSpec, x: &Array4<f64>, w: &Array4<f64>, b: Option<&Array1<f64>>) -> Array4<f64> {
    reference::forward(spec, x.view(), w.view(), b.map(|b| b.view())).expect("valid operands")
}

/// The transposed layer that is the adjoint of a direct one (`Geometry::equivalent`), with the
/// same weights: (K, C/g, kh, kw) is also the layout of a transposed K → C layer.
fn adjoint_transposed(g: &Geometry) -> ValidSpec {
    let s = &g.spec;
    let Equivalent::Transposed {
        stride,
        padding,
        output_padding,
        dilation,
    } = g.equivalent()
    else {
        panic!("a direct layer's equivalent is transposed")
    };
    let t = match s.rank() {
        Rank::Two => ConvSpec::conv_transpose2d(s.out_channels(), s.in_channels(), s.kernel()),
        Rank::One => ConvSpec::conv_transpose1d(s.out_channels(), s.in_channels(), s.kernel()[1]),
    };
    t.stride(stride)
        .padding_sides(padding)
        .output_padding(output_padding)
        .dilation(dilation)
        .groups(s.groups())
        .bias(false)
        .build()
        .expect("the adjoint of a valid layer is valid")
}

/// The direct layer that is the adjoint of a transposed one: K → C, same weights, stride,
/// per-side padding, dilation and groups.
fn adjoint_direct(g: &Geometry) -> ValidSpec {
    let s = &g.spec;
    let d = match s.rank() {
        Rank::Two => ConvSpec::conv2d(s.out_channels(), s.in_channels(), s.kernel()),
        Rank::One => ConvSpec::conv1d(s.out_channels(), s.in_channels(), s.kernel()[1]),
    };
    d.stride(s.stride())
        .padding_sides(g.pad)
        .dilation(s.dilation())
        .groups(s.groups())
        .bias(false)
        .build()
        .expect("the adjoint of a valid layer is valid")
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_global_rejects: 100_000,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Properties of the engine
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(256))]

    /// ⟨conv(x), y⟩ = ⟨x, convᵀ(y)⟩ for a direct layer (zeros padding, where the adjoint is a
    /// plain transposed convolution) and the transposed layer `Geometry::equivalent` names.
    #[test]
    fn transposed_is_adjoint_of_direct((spec, input, seed) in layer()) {
        prop_assume!(!spec.is_transposed() && spec.padding_mode() == PaddingMode::Zeros);
        let g = spec.geometry(input).unwrap();
        let t = adjoint_transposed(&g);
        let mut rng = Rng(seed);
        let x = rng.array(input);
        let w = rng.array(spec.weight_shape());
        let y = rng.array(g.output_shape());
        let cx = fwd(&spec, &x, &w, None);
        let ty = fwd(&t, &y, &w, None);
        prop_assert_eq!(ty.shape(), x.shape(), "the adjoint maps back onto the input shape");
        let (l, r) = (dot(cx.view(), y.view()), dot(x.view(), ty.view()));
        prop_assert!(close(l, r, abs_dot(cx.view(), y.view())), "{} vs {} for {}", l, r, spec);
    }

    /// The same identity from the transposed side: ⟨convᵀ(x), y⟩ = ⟨x, conv(y)⟩.
    #[test]
    fn direct_is_adjoint_of_transposed((spec, input, seed) in layer()) {
        prop_assume!(spec.is_transposed());
        let g = spec.geometry(input).unwrap();
        let d = adjoint_direct(&g);
        let dg = d.geometry(g.output_shape()).expect("direct layer runs on the transposed output");
        // output_padding ≥ stride (allowed when < dilation) adds rows no input cell reaches;
        // then the direct layer's output is larger than the transposed layer's input.
        prop_assume!(dg.output_shape() == input);
        let mut rng = Rng(seed);
        let x = rng.array(input);
        let w = rng.array(spec.weight_shape());
        let y = rng.array(g.output_shape());
        let tx = fwd(&spec, &x, &w, None);
        let dy = fwd(&d, &y, &w, None);
        let (l, r) = (dot(tx.view(), y.view()), dot(x.view(), dy.view()));
        prop_assert!(close(l, r, abs_dot(tx.view(), y.view())), "{} vs {} for {}", l, r, spec);
    }

    /// `backward` is the adjoint of `forward` for every layer and border mode:
    /// ⟨f(x; w), dy⟩ = ⟨x, dx⟩ = ⟨w, dw⟩ (f is bilinear), and db sums dy over n, h, w.
    #[test]
    fn backward_is_adjoint_of_forward((spec, input, seed) in layer()) {
        let g = spec.geometry(input).unwrap();
        let mut rng = Rng(seed);
        let x = rng.array(input);
        let w = rng.array(spec.weight_shape());
        let dy = rng.array(g.output_shape());
        let y = fwd(&spec, &x, &w, None);
        let gr = reference::backward(&spec, x.view(), w.view(), dy.view(), GradRequest::all()).unwrap();
        let (dx, dw, db) = (gr.input.unwrap(), gr.weight.unwrap(), gr.bias.unwrap());
        let l = dot(y.view(), dy.view());
        let scale = abs_dot(y.view(), dy.view()) + 1.0;
        prop_assert!(close(l, dot(x.view(), dx.view()), scale), "dx: {}", spec);
        prop_assert!(close(l, dot(w.view(), dw.view()), scale), "dw: {}", spec);
        let want_db = dy.sum_axis(Axis(3)).sum_axis(Axis(2)).sum_axis(Axis(0));
        prop_assert_eq!(db.len(), spec.out_channels());
        for (a, b) in db.iter().zip(want_db.iter()) {
            prop_assert!((a - b).abs() < 1e-9);
        }
    }

    /// A transposed layer equals the direct convolution `Geometry::equivalent` describes:
    /// s − 1 zeros between input cells, padding d(k−1) − p (negative = crop) plus output_padding
    /// on the bottom/right, the kernel flipped with its in/out axes swapped, stride 1.
    #[test]
    fn transposed_equals_its_equivalent_direct_conv((spec, input, seed) in layer()) {
        prop_assume!(spec.is_transposed());
        let g = spec.geometry(input).unwrap();
        let Equivalent::Direct { zero_insertion, padding, stride, dilation, stretched_input, kernel_flipped } =
            g.equivalent() else { panic!("transposed → direct") };
        prop_assert_eq!(stride, [1, 1]);
        prop_assert!(kernel_flipped);
        prop_assert_eq!(zero_insertion, [spec.stride()[0] - 1, spec.stride()[1] - 1]);
        let mut rng = Rng(seed);
        let x = rng.array(input);
        let w = rng.array(spec.weight_shape());
        let [n, c, h, wd] = input;
        let [sh, sw] = stretched_input;
        prop_assert_eq!([sh, sw], [(h - 1) * spec.stride()[0] + 1, (wd - 1) * spec.stride()[1] + 1]);
        let mut stretched = Array4::<f64>::zeros((n, c, sh, sw));
        stretched
            .slice_mut(s![.., .., ..;spec.stride()[0], ..;spec.stride()[1]])
            .assign(&x);
        // Pad with zeros where the padding is positive, then crop where it is negative (the
        // output_padding rows/columns can lie beyond a crop, so pad first).
        let pads = padding.map(|p| p.max(0) as usize);
        let crop = padding.map(|p| (-p).max(0) as usize);
        let padded = border::pad(stretched.view(), pads, Border::Zeros);
        let (ph, pw) = (padded.dim().2, padded.dim().3);
        prop_assert!(crop[0] + crop[1] <= ph && crop[2] + crop[3] <= pw);
        let cropped = padded
            .slice(s![.., .., crop[0]..ph - crop[1], crop[2]..pw - crop[3]])
            .to_owned();
        // Flipped kernel, in/out swapped per group: (C, K/g, kh, kw) → (K, C/g, kh, kw).
        let (grp, k) = (spec.groups(), spec.out_channels());
        let (cg, kg) = (c / grp, k / grp);
        let [kh, kw] = spec.kernel();
        let wd_ = Array4::from_shape_fn((k, cg, kh, kw), |(ko, ci, y, xx)| {
            let (gi, o) = (ko / kg, ko % kg);
            w[[gi * cg + ci, o, kh - 1 - y, kw - 1 - xx]]
        });
        let direct = ConvSpec::conv2d(c, k, [kh, kw])
            .dilation(dilation)
            .groups(grp)
            .bias(false)
            .build()
            .unwrap();
        let want = fwd(&direct, &cropped, &wd_, None);
        let got = fwd(&spec, &x, &w, None);
        assert_all_close(got.view(), want.view(), &spec.to_string());
    }

    /// f(a·x₁ + b·x₂; w) = a·f(x₁; w) + b·f(x₂; w), and likewise in w (no bias).
    #[test]
    fn linear_in_x_and_in_w((spec, input, seed) in layer(), a in -2.0f64..2.0, b in -2.0f64..2.0) {
        let mut rng = Rng(seed);
        let (x1, x2) = (rng.array(input), rng.array(input));
        let (w1, w2) = (rng.array(spec.weight_shape()), rng.array(spec.weight_shape()));
        let mix = |p: &Array4<f64>, q: &Array4<f64>| p * a + q * b;
        let lhs = fwd(&spec, &mix(&x1, &x2), &w1, None);
        let rhs = mix(&fwd(&spec, &x1, &w1, None), &fwd(&spec, &x2, &w1, None));
        assert_all_close(lhs.view(), rhs.view(), "linearity in x");
        let lhs = fwd(&spec, &x1, &mix(&w1, &w2), None);
        let rhs = mix(&fwd(&spec, &x1, &w1, None), &fwd(&spec, &x1, &w2, None));
        assert_all_close(lhs.view(), rhs.view(), "linearity in w");
    }

    /// The computed output has the shape the formula predicts (2D and 1D entry points), and
    /// the gradients have the shapes of their operands.
    #[test]
    fn shape_formula_matches_computed_shape((spec, input, seed) in layer()) {
        let g = spec.geometry(input).unwrap();
        let mut rng = Rng(seed);
        let x = rng.array(input).mapv(|v| v as f32);
        let w = rng.array(spec.weight_shape()).mapv(|v| v as f32);
        let b = rng.vec(spec.out_channels()).mapv(|v| v as f32);
        let bias = spec.has_bias().then(|| b.view());
        let y = reference::forward(&spec, x.view(), w.view(), bias).unwrap();
        prop_assert_eq!(y.shape(), &g.output_shape()[..]);
        prop_assert_eq!(spec.output_hw(input[2], input[3]).unwrap(), [g.oh, g.ow]);
        let gr = reference::backward(&spec, x.view(), w.view(), y.view(), GradRequest::all()).unwrap();
        let (dx, dw) = (gr.input.unwrap(), gr.weight.unwrap());
        prop_assert_eq!(dx.shape(), x.shape());
        prop_assert_eq!(dw.shape(), w.shape());
        // Direct: o = ⌊(i + pb + pa − d(k−1) − 1)/s⌋ + 1; transposed:
        // o = (i − 1)s − pb − pa + d(k−1) + a + 1.
        for ax in 0..2 {
            let (i, k, s_, d) = (input[2 + ax], spec.kernel()[ax], spec.stride()[ax], spec.dilation()[ax]);
            let (pb, pa) = (g.pad[2 * ax], g.pad[2 * ax + 1]);
            let o = if spec.is_transposed() {
                (i - 1) * s_ + d * (k - 1) + g.output_padding[ax] + 1 - pb - pa
            } else {
                (i + pb + pa - d * (k - 1) - 1) / s_ + 1
            };
            prop_assert_eq!(o, [g.oh, g.ow][ax]);
        }
        if spec.rank() == Rank::One {
            let x1 = x.index_axis(Axis(2), 0);
            let w1 = w.index_axis(Axis(2), 0);
            let y1 = reference::forward_1d(&spec, x1, w1, bias).unwrap();
            prop_assert_eq!(y1.dim(), (g.n, g.k, g.ow));
            prop_assert_eq!(&y1, &y.index_axis(Axis(2), 0));
            let dy1 = y1.view();
            let g1 = reference::backward_1d(&spec, x1, w1, dy1, GradRequest::all()).unwrap();
            let (dx1, dw1) = (g1.input.unwrap(), g1.weight.unwrap());
            prop_assert_eq!(dx1.shape(), x1.shape());
            let wsd = spec.weight_shape_dyn();
            prop_assert_eq!(dw1.shape(), wsd.as_slice());
        }
    }
}

/// Depthwise 2D layers (groups = in = out channels) with every padding rule and border mode,
/// for the spatially separable two-pass path.
fn depthwise_layer() -> impl Strategy<Value = (ValidSpec, [usize; 4], u64)> {
    (raw_layer(), 1usize..=3, any::<u64>()).prop_filter_map("invalid layer", |(r, c, seed)| {
        let r = Raw {
            two_d: true,
            transposed: false,
            groups: c,
            cin_per_group: 1,
            cout_per_group: 1,
            ..r
        };
        make(&r).map(|(s, i)| (s, i, seed))
    })
}

proptest! {
    #![proptest_config(config(96))]

    /// Separable two-pass = 2D: a random rank-1 kernel col ⊗ row, factorised by
    /// `separable::factorize` and run as two 1D passes, gives the reference's 2D depthwise
    /// convolution (every padding rule and border mode). The two-pass path accumulates in f32,
    /// so the tolerance is f32's: 1e-5 + 1e-5·|y| on values of magnitude ≤ 10.
    #[test]
    fn separable_two_pass_equals_2d((spec, input, seed) in depthwise_layer()) {
        let mut rng = Rng(seed);
        let [kh, kw] = spec.kernel();
        let col: Vec<f64> = (0..kh).map(|_| rng.next()).collect();
        let row: Vec<f64> = (0..kw).map(|_| rng.next()).collect();
        let k2 = Array2::from_shape_fn((kh, kw), |(i, j)| col[i] * row[j]);
        let f = separable::factorize(k2.view()).unwrap();
        prop_assert!(f.rank <= 1, "rank {} for an outer product", f.rank);
        let x = rng.array(input).mapv(|v| v as f32);
        let w = Array4::from_shape_fn(spec.weight_shape(), |(_, _, i, j)| k2[[i, j]] as f32);
        let b = rng.vec(spec.out_channels()).mapv(|v| v as f32);
        let bias = spec.has_bias().then(|| b.view());
        let want = reference::forward(&spec, x.view(), w.view(), bias).unwrap();
        let got = separable::conv2d_two_pass_spec(&spec, x.view(), &f, bias).unwrap();
        prop_assert_eq!(got.shape(), want.shape());
        for ((i, g), w) in got.indexed_iter().zip(want.iter()) {
            prop_assert!(
                (g - w).abs() <= 1e-5 + 1e-5 * w.abs(),
                "{} at {:?}: two-pass {}, 2D {}", spec, i, g, w
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Finite differences
// ---------------------------------------------------------------------------------------------

/// Tiny layers (every option) for the finite-difference check, which runs a forward pass per
/// perturbed element.
fn tiny_layer() -> impl Strategy<Value = (ValidSpec, [usize; 4], u64)> {
    layer().prop_filter("tiny", |(spec, input, _)| {
        let x: usize = input.iter().product();
        x <= 48 && spec.weight_count() <= 36
    })
}

proptest! {
    #![proptest_config(config(128))]

    /// All three gradients of L = ⟨f(x; w, b), dy⟩ from `reference::backward` against central
    /// differences in f64. L is linear in each operand, so the difference quotient is exact up
    /// to rounding: any mismatch is a real error, not truncation.
    #[test]
    fn gradients_match_finite_differences((spec, input, seed) in tiny_layer()) {
        let g = spec.geometry(input).unwrap();
        let mut rng = Rng(seed);
        let x = rng.array(input);
        let w = rng.array(spec.weight_shape());
        let b = rng.vec(spec.out_channels());
        let dy = rng.array(g.output_shape());
        let bias = spec.has_bias().then_some(&b);
        let loss = |x: &Array4<f64>, w: &Array4<f64>, b: Option<&Array1<f64>>| {
            dot(fwd(&spec, x, w, b).view(), dy.view())
        };
        let h = 1e-3;
        let gr = reference::backward(&spec, x.view(), w.view(), dy.view(), GradRequest::all()).unwrap();
        let check = |analytic: f64, numeric: f64, what: &str| {
            assert!(
                (analytic - numeric).abs() <= 1e-7 * (1.0 + numeric.abs()),
                "{what} of {spec}: backward {analytic}, finite difference {numeric}"
            );
        };
        let dx = gr.input.unwrap();
        for (idx, &a) in dx.indexed_iter() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[idx] += h;
            xm[idx] -= h;
            check(a, (loss(&xp, &w, bias) - loss(&xm, &w, bias)) / (2.0 * h), "dx");
        }
        let dw = gr.weight.unwrap();
        for (idx, &a) in dw.indexed_iter() {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[idx] += h;
            wm[idx] -= h;
            check(a, (loss(&x, &wp, bias) - loss(&x, &wm, bias)) / (2.0 * h), "dw");
        }
        // A layer without a bias has no db to perturb (its db, Σ dy, is checked elsewhere).
        if spec.has_bias() {
            let db = gr.bias.unwrap();
            for (k, &a) in db.iter().enumerate() {
                let (mut bp, mut bm) = (b.clone(), b.clone());
                bp[k] += h;
                bm[k] -= h;
                check(a, (loss(&x, &w, Some(&bp)) - loss(&x, &w, Some(&bm))) / (2.0 * h), "db");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Wild parameters: validate or error, never panic, never wrap
// ---------------------------------------------------------------------------------------------

/// Sizes from 0 to usize::MAX, weighted towards the edges.
fn wild() -> impl Strategy<Value = usize> + Clone {
    prop_oneof![
        3 => 0usize..4,
        2 => 4usize..64,
        1 => Just(usize::MAX),
        1 => Just(usize::MAX / 2),
        1 => Just(usize::MAX / 2 + 1),
        1 => Just(1usize << 32),
        1 => Just((1usize << 32) + 1),
        1 => Just(i64::MAX as usize),
        1 => any::<usize>(),
    ]
}

fn wild_spec() -> impl Strategy<Value = ConvSpec> {
    spec_of(wild())
}

/// Mostly small sizes with an occasional wild one: layers that often validate and are small
/// enough to run, with extreme values in single places (a huge dilation, stride or padding).
fn mostly_small() -> impl Strategy<Value = usize> + Clone {
    prop_oneof![
        12 => 0usize..4,
        2 => 4usize..8,
        1 => wild(),
    ]
}

/// A `ConvSpec` with every field drawn (channels, groups and spatial sizes from `v`).
fn spec_of<S: Strategy<Value = usize> + Clone>(v: S) -> impl Strategy<Value = ConvSpec> {
    let pair = [v.clone(), v.clone()];
    (
        (
            any::<bool>(),
            any::<bool>(),
            v.clone(),
            v.clone(),
            v.clone(),
        ),
        (pair.clone(), pair.clone(), pair.clone()),
        (
            0u8..4,
            [v.clone(), v.clone(), v.clone(), v],
            0u8..4,
            any::<bool>(),
        ),
        (pair.clone(), proptest::option::of(pair)),
    )
        .prop_map(|(a, b, c, d)| ConvSpec {
            rank: if a.0 { Rank::Two } else { Rank::One },
            transposed: a.1,
            in_channels: a.2,
            out_channels: a.3,
            groups: a.4,
            kernel: b.0,
            stride: b.1,
            dilation: b.2,
            padding: match c.0 {
                0 => Padding::Explicit(c.1),
                1 => Padding::Valid,
                2 => Padding::Same,
                _ => Padding::SameTf,
            },
            padding_mode: MODES[c.2 as usize],
            bias: c.3,
            output_padding: d.0,
            output_size: d.1,
        })
}

/// Checks every number a valid spec and geometry report against exact (u128/i128) arithmetic,
/// so a wrapped multiplication in release mode (where overflow does not panic) is caught too.
fn check_exact(spec: &ValidSpec, g: Option<&Geometry>) {
    let ws = spec.weight_shape();
    let wc: u128 = ws.iter().map(|&v| v as u128).product();
    assert_eq!(spec.weight_count() as u128, wc, "weight count of {spec:?}");
    let pc = wc
        + if spec.has_bias() {
            spec.out_channels() as u128
        } else {
            0
        };
    assert_eq!(spec.param_count() as u128, pc, "param count of {spec:?}");
    for ax in 0..2 {
        let ext = spec.dilation()[ax] as u128 * (spec.kernel()[ax] as u128 - 1) + 1;
        assert_eq!(spec.dilated_kernel()[ax] as u128, ext);
    }
    let Some(g) = g else { return };
    let taps = spec.kernel()[0] as u128 * spec.kernel()[1] as u128;
    let grp = spec.groups() as u128;
    let macs = if spec.is_transposed() {
        g.n as u128 * g.h as u128 * g.w as u128 * g.c as u128 * (g.k as u128 / grp) * taps
    } else {
        g.n as u128 * g.oh as u128 * g.ow as u128 * g.k as u128 * (g.c as u128 / grp) * taps
    };
    assert_eq!(
        g.macs() as u128,
        macs,
        "MACs of {spec:?} on {:?}",
        g.input_shape()
    );
    assert_eq!(g.flops() as u128, (2 * macs).min(u64::MAX as u128));
    for ax in 0..2 {
        let (i, k, s, d) = (
            [g.h, g.w][ax] as i128,
            spec.kernel()[ax] as i128,
            spec.stride()[ax] as i128,
            spec.dilation()[ax] as i128,
        );
        let (pb, pa) = (g.pad[2 * ax] as i128, g.pad[2 * ax + 1] as i128);
        let o = [g.oh, g.ow][ax] as i128;
        if spec.is_transposed() {
            let a = g.output_padding[ax] as i128;
            assert_eq!(o, (i - 1) * s - pb - pa + d * (k - 1) + a + 1);
        } else {
            assert_eq!(o, (i + pb + pa - d * (k - 1) - 1) / s + 1);
        }
    }
    match g.equivalent() {
        Equivalent::Direct {
            padding,
            stretched_input,
            ..
        } => {
            for ax in 0..2 {
                let full = spec.dilation()[ax] as i128 * (spec.kernel()[ax] as i128 - 1);
                let before = full - g.pad[2 * ax] as i128;
                let after = full - g.pad[2 * ax + 1] as i128 + g.output_padding[ax] as i128;
                assert_eq!(padding[2 * ax] as i128, before, "{spec:?}");
                assert_eq!(padding[2 * ax + 1] as i128, after, "{spec:?}");
                let i = [g.h, g.w][ax] as u128;
                let st = (i - 1) * spec.stride()[ax] as u128 + 1;
                assert_eq!(stretched_input[ax] as u128, st);
            }
        }
        Equivalent::Transposed { output_padding, .. } => {
            for (op, s) in output_padding.into_iter().zip(spec.stride()) {
                assert!(op < s, "{spec:?}");
            }
        }
    }
}

/// Calls every validating and arithmetic entry point on `spec` and `input`; runs the layer
/// when it is small. Fails on a panic or on any number that differs from exact arithmetic.
fn exercise(spec: ConvSpec, input: [usize; 4], seed: u64) -> Result<(), TestCaseError> {
    let _ = spec.build().map(|v| v.to_string());
    let Ok(v) = spec.build() else { return Ok(()) };
    let _ = v.pytorch();
    let _ = v.weight_shape_dyn();
    let _ = v.is_depthwise();
    let _ = v.depth_multiplier();
    let _ = v.resolved_padding(input[2], input[3]);
    let _ = v.output_hw(input[2], input[3]);
    let _ = ReceptiveField::identity().then(&v, [input[2], input[3]]);
    let _ = arith::analyze_stack(&[v, v], input);
    // Also with the layer's own channel count, which gets further.
    let input = [input[0], v.in_channels(), input[2], input[3]];
    let g = v.geometry(input).ok();
    check_exact(&v, g.as_ref());
    let Some(g) = g else { return Ok(()) };
    let _ = arith::analyze_stack(&[v], input);
    // The engines materialise the padded input (direct) or the uncropped output (transposed):
    // run only layers where that, too, is small (a layer with a tiny input and output can
    // still need a padded buffer of many GiB, which is an allocation failure, not a bug).
    let work = [0, 1].map(|ax| {
        let i = [g.h, g.w][ax] as u128;
        if v.is_transposed() {
            (i - 1) * v.stride()[ax] as u128 + v.dilated_kernel()[ax] as u128
        } else {
            i + g.pad[2 * ax] as u128 + g.pad[2 * ax + 1] as u128
        }
    });
    let sizes = [
        input.iter().product::<usize>() as u128,
        g.output_shape().iter().product::<usize>() as u128,
        v.weight_count() as u128,
        ((g.n * g.c.max(g.k)) as u128)
            .saturating_mul(work[0])
            .saturating_mul(work[1]),
    ];
    if sizes.iter().all(|&n| n <= 4096) && g.macs() <= 200_000 {
        let mut rng = Rng(seed);
        let x = rng.array(input);
        let w = rng.array(v.weight_shape());
        let y = fwd(&v, &x, &w, None);
        prop_assert_eq!(y.shape(), &g.output_shape()[..]);
        reference::backward(&v, x.view(), w.view(), y.view(), GradRequest::all()).unwrap();
        plans_match_reference(&v, &x, &w, &y)?;
    }
    Ok(())
}

/// Every planned algorithm either declines the layer (`AlgorithmUnavailable`) or matches the reference `y` within f32 rounding:
/// 1e-5·(1 + Σ|x||w|) per output cell, the bound on an f32 accumulation of those terms.
/// `Auto` must always run. The fast backward likewise matches the reference gradients.
fn plans_match_reference(
    v: &ValidSpec,
    x: &Array4<f64>,
    w: &Array4<f64>,
    y: &Array4<f64>,
) -> Result<(), TestCaseError> {
    let scale = fwd(v, &x.mapv(f64::abs), &w.mapv(f64::abs), None);
    let (x32, w32) = (x.mapv(|a| a as f32), w.mapv(|a| a as f32));
    for algo in [
        Algo::Auto,
        Algo::ImplicitGemm,
        Algo::Indirect,
        Algo::Gemm1x1,
        Algo::Depthwise,
        Algo::Subpixel,
        Algo::Col2im,
    ] {
        match plan::forward(v, x32.view(), w32.view(), None, algo) {
            Ok(got) => {
                prop_assert_eq!(got.shape(), y.shape());
                for (((i, g), want), sc) in got.indexed_iter().zip(y.iter()).zip(scale.iter()) {
                    prop_assert!(
                        (*g as f64 - want).abs() <= 1e-5 * (1.0 + sc),
                        "{:?} on {} at {:?}: {} vs reference {}",
                        algo,
                        v,
                        i,
                        g,
                        want
                    );
                }
            }
            Err(ConvError::AlgorithmUnavailable { .. }) if algo != Algo::Auto => {}
            Err(e) => prop_assert!(false, "{:?} on {}: {}", algo, v, e),
        }
    }
    // Backward with dy = y: each gradient against the reference, scaled by the reference
    // gradient of the absolute values (Σ|dy||w| for dx, Σ|x||dy| for dw, Σ|dy| for db).
    let all = GradRequest::all();
    let want = reference::backward(v, x.view(), w.view(), y.view(), all).unwrap();
    let (xa, wa, ya) = (x.mapv(f64::abs), w.mapv(f64::abs), y.mapv(f64::abs));
    let scale = reference::backward(v, xa.view(), wa.view(), ya.view(), all).unwrap();
    let y32 = y.mapv(|a| a as f32);
    let got = backward::backward(v, x32.view(), w32.view(), y32.view(), all, Algo::Auto)
        .map_err(|e| TestCaseError::fail(format!("fast backward on {v}: {e}")))?;
    let pairs = [
        (
            "dx",
            got.input.unwrap().into_dyn(),
            want.input.unwrap().into_dyn(),
            scale.input.unwrap().into_dyn(),
        ),
        (
            "dw",
            got.weight.unwrap().into_dyn(),
            want.weight.unwrap().into_dyn(),
            scale.weight.unwrap().into_dyn(),
        ),
        (
            "db",
            got.bias.unwrap().into_dyn(),
            want.bias.unwrap().into_dyn(),
            scale.bias.unwrap().into_dyn(),
        ),
    ];
    for (what, g, r, sc) in pairs {
        prop_assert_eq!(g.shape(), r.shape());
        for (((i, a), b), s) in g.indexed_iter().zip(r.iter()).zip(sc.iter()) {
            prop_assert!(
                (*a as f64 - b).abs() <= 1e-5 * (1.0 + s),
                "fast backward {} on {} at {:?}: {} vs reference {}",
                what,
                v,
                i,
                a,
                b
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Any spec and any input shape: `build` and `geometry` return Ok or Err (a panic fails the
    /// test), and every number they report is exact. Layers small enough to run are run.
    #[test]
    fn wild_specs_validate_or_error(spec in wild_spec(), input in [wild(), wild(), wild(), wild()], seed in any::<u64>()) {
        exercise(spec, input, seed)?;
    }

    /// The same with mostly small sizes, one or two channels and well-formed 1D layers, so that
    /// validation gets past the channel checks, extreme kernel/stride/dilation/padding values
    /// reach the shape, padding and MAC arithmetic, and many layers are small enough to run
    /// (through the reference and every planned algorithm).
    #[test]
    fn wild_spatial_specs_validate_or_error(
        spec in spec_of(mostly_small()),
        ch in [1usize..=2, 1..=2],
        input in [1usize..=2, 1..=2, 0usize..=6, 0..=6],
        big_input in [wild(), wild()],
        seed in any::<u64>(),
    ) {
        let mut spec = ConvSpec { in_channels: ch[0], out_channels: ch[1], groups: 1, ..spec };
        if spec.rank == Rank::One {
            spec.kernel[0] = 1;
            spec.stride[0] = 1;
            spec.dilation[0] = 1;
            spec.output_padding[0] = 0;
            if let Padding::Explicit(p) = &mut spec.padding {
                p[0] = 0;
                p[1] = 0;
            }
            if let Some(o) = &mut spec.output_size {
                o[0] = 1;
            }
        }
        // Small inputs (so some layers run) or huge ones.
        let hw = if seed % 2 == 0 { [input[2], input[3]] } else { big_input };
        let h = if spec.rank == Rank::One { 1 } else { hw[0] };
        exercise(spec, [input[0], input[1], h, hw[1]], seed)?;
    }

    /// The seed's comparison helpers on any sizes: a result or an error, never a panic.
    #[test]
    fn wild_comparisons_never_panic(c in wild(), k in wild(), kh in wild(), kw in wild(), m in wild()) {
        if let Ok(p) = arith::depthwise_separable_params(c, k, [kh, kw], m) {
            prop_assert_eq!(p.standard as u128, c as u128 * k as u128 * kh as u128 * kw as u128);
            prop_assert_eq!(p.separable() as u128, p.depthwise as u128 + p.pointwise as u128);
        }
        let (full, sep) = arith::spatially_separable_params([kh, kw]);
        // Saturating: a kernel with more than usize::MAX taps cannot be built anyway.
        prop_assert_eq!(full, kh.saturating_mul(kw));
        prop_assert_eq!(sep, kh.saturating_add(kw));
    }
}

/// Receptive fields of random direct stacks against a brute-force computation: the set of
/// input cells that influence output cell 0 (through every kernel tap, dilation and stride).
#[test]
fn receptive_field_matches_brute_force() {
    let mut rng = Rng(7);
    for _ in 0..200 {
        let depth = 1 + (rng.next().abs() * 4.0) as usize;
        let mut layers = Vec::new();
        for _ in 0..depth {
            let pick = |r: &mut Rng, n: usize| 1 + (r.next().abs() * n as f64) as usize % n;
            let (k, s_, d, p) = (
                pick(&mut rng, 4),
                pick(&mut rng, 3),
                pick(&mut rng, 3),
                pick(&mut rng, 3) - 1,
            );
            layers.push(
                ConvSpec::conv1d(1, 1, k)
                    .stride(s_)
                    .dilation(d)
                    .padding(p)
                    .build()
                    .unwrap(),
            );
        }
        let Ok(rep) = arith::analyze_stack(&layers, [1, 1, 1, 200]) else {
            continue;
        };
        let rf = rep.last().unwrap().receptive_field.unwrap();
        // Walk back from output cell 0: the cells it reads in each earlier (padded) layer.
        let (mut lo, mut hi) = (0i64, 0i64);
        for (l, r) in layers.iter().zip(&rep).rev() {
            let (s_, d, k) = (
                l.stride()[1] as i64,
                l.dilation()[1] as i64,
                l.kernel()[1] as i64,
            );
            let p = r.geometry.pad[2] as i64;
            lo = lo * s_ - p;
            hi = hi * s_ + d * (k - 1) - p;
        }
        assert_eq!(rf.size[1] as i64, hi - lo + 1, "{layers:?}");
        assert_eq!(rf.start[1], lo, "{layers:?}");
        let jump: usize = layers.iter().map(|l| l.stride()[1]).product();
        assert_eq!(rf.jump[1] as usize, jump);
    }
}

/// Regression (fixed in `kernels/depthwise.rs`): a depthwise layer whose stride exceeds its
/// padded input width (here 3×3, stride 30, padding 1 on 1×1, a valid 1×1 output) panicked
/// in `Depthwise::new`; only the phases the padded width holds are stored now.
#[test]
fn regression_depthwise_plan_stride_beyond_input() {
    let v = ConvSpec::conv2d(2, 2, 3)
        .groups(2)
        .stride(30)
        .padding(1)
        .bias(false)
        .build()
        .unwrap();
    let x = Array4::<f32>::ones((1, 2, 1, 1));
    let w = Array4::<f32>::ones((2, 1, 3, 3));
    let want = reference::forward(&v, x.view(), w.view(), None).unwrap();
    let got = plan::forward(&v, x.view(), w.view(), None, Algo::Auto).unwrap();
    assert_eq!(got, want);
}

/// Regression (fixed in `kernels/depthwise.rs`): TF SAME with replicate padding, stride 3 and
/// dilation 2 on a 1-wide input (a valid 1-wide output) indexed out of bounds in `fill_body`
/// (an empty interior range of a phase was still sliced).
#[test]
fn regression_depthwise_plan_same_tf_replicate_stride3() {
    let v = ConvSpec::conv2d(2, 2, [1, 2])
        .groups(2)
        .stride([1, 3])
        .dilation([1, 2])
        .padding_rule(Padding::SameTf)
        .padding_mode(PaddingMode::Replicate)
        .bias(false)
        .build()
        .unwrap();
    let x = Array4::<f32>::ones((1, 2, 1, 1));
    let w = Array4::<f32>::ones((2, 1, 1, 2));
    let want = reference::forward(&v, x.view(), w.view(), None).unwrap();
    let got = plan::forward(&v, x.view(), w.view(), None, Algo::Auto).unwrap();
    assert_eq!(got, want);
}

/// Regression (fixed in `kernels/subpixel.rs`): the fast backward's grad input decomposed
/// the adjoint transposed convolution by looping `for r in 0..s` per axis, even when only one
/// phase has an output; it now visits only the min(s, output) phases that have cells. A 1×1
/// layer with stride 2^40 on a 1×1 input (a valid 1×1 output) never finished (2^24 already
/// took ~0.5 s); the test fails if it takes more than 5 s.
#[test]
fn regression_fast_backward_huge_stride_terminates() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let v = ConvSpec::conv2d(1, 1, 1)
            .stride(1usize << 40)
            .bias(false)
            .build()
            .unwrap();
        let one = Array4::<f32>::ones((1, 1, 1, 1));
        let r = backward::backward(
            &v,
            one.view(),
            one.view(),
            one.view(),
            GradRequest::all(),
            Algo::Auto,
        )
        .map(|g| g.input.unwrap()[[0, 0, 0, 0]]);
        let _ = tx.send(r);
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the fast backward did not finish within 5 s");
    assert_eq!(got, Ok(1.0));
}

proptest! {
    #![proptest_config(config(256))]

    /// The depthwise kernel (forward through `plan::forward`, backward through
    /// `backward::backward`, both `Algo::Auto`) against the reference on random depthwise
    /// layers with every padding rule and border mode (strides wider than the input included:
    /// see `regression_depthwise_*`). f32 tolerance 1e-5·(1 + Σ|terms|).
    #[test]
    fn depthwise_fast_paths_match_reference((spec, input, seed) in depthwise_layer()) {
        let g = spec.geometry(input).unwrap();
        let mut rng = Rng(seed);
        let x = rng.array(input);
        let w = rng.array(spec.weight_shape());
        let y = fwd(&spec, &x, &w, None);
        let dy = rng.array(g.output_shape());
        let all = GradRequest::all();
        let (x32, w32, dy32) = (x.mapv(|a| a as f32), w.mapv(|a| a as f32), dy.mapv(|a| a as f32));
        let (xa, wa, dya) = (x.mapv(f64::abs), w.mapv(f64::abs), dy.mapv(f64::abs));
        let got = plan::forward(&spec, x32.view(), w32.view(), None, Algo::Auto).unwrap();
        let scale = fwd(&spec, &xa, &wa, None);
        for (((i, a), b), s) in got.indexed_iter().zip(y.iter()).zip(scale.iter()) {
            prop_assert!((*a as f64 - b).abs() <= 1e-5 * (1.0 + s), "y {} at {:?}: {} vs {}", spec, i, a, b);
        }
        let gf = backward::backward(&spec, x32.view(), w32.view(), dy32.view(), all, Algo::Auto).unwrap();
        let gr = reference::backward(&spec, x.view(), w.view(), dy.view(), all).unwrap();
        let gs = reference::backward(&spec, xa.view(), wa.view(), dya.view(), all).unwrap();
        let pairs = [
            ("dx", gf.input.unwrap(), gr.input.unwrap(), gs.input.unwrap()),
            ("dw", gf.weight.unwrap(), gr.weight.unwrap(), gs.weight.unwrap()),
        ];
        for (what, a, b, s) in pairs {
            for (((i, a), b), s) in a.indexed_iter().zip(b.iter()).zip(s.iter()) {
                prop_assert!((*a as f64 - b).abs() <= 1e-5 * (1.0 + s), "{} {} at {:?}: {} vs {}", what, spec, i, a, b);
            }
        }
    }
}
