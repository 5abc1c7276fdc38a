//! Finite-difference gradient check in f64 (issue #4, "Fast CPU engine, part 2").
//!
//! For small layers of every kind the backward pass supports (direct, strided, dilated,
//! grouped, depthwise, asymmetric padding, the reflect / replicate / circular padding modes,
//! TensorFlow SAME, 1D, transposed with output padding, groups, dilation, asymmetric crops,
//! `output_size`), the analytic gradients of the loss `L = Σ y·g` (`g` random) w.r.t. the
//! input, the weight and the bias are compared with central finite differences of `L`,
//! computed in f64 by a forward pass written here: plain nested loops over the definition,
//! independent of the library's engines (only the spec's resolved padding / output padding are
//! taken from it, and the output size is re-derived from the formulas and checked).
//!
//! Checked against the differences:
//! * convkit's fast backward ([`convkit::backward::backward`], f32, `Algo::Auto`);
//! * the reference backward ([`convkit::reference::backward`]) in f64.
//!
//! `L` is affine in each single coordinate of `x`, `w` and `b` (the layer is linear in each
//! operand), so a central difference has no truncation error at any step `h`: the only error
//! of the "exact" gradient is f64 rounding of `L`, bounded below as `FD_NOISE`.

use convkit::backward;
use convkit::plan::Algo;
use convkit::reference;
use convkit::{ConvSpec, GradRequest, Padding, PaddingMode, ValidSpec};
use ndarray::{Array1, Array4};

mod common;
use common::rand_vec;

/// The finite-difference step. Any step is exact for an affine function; 2⁻⁸ is a power of
/// two, so `x ± h` is exact in f64 for the f32-valued operands and `L(x+h) − L(x−h)` carries
/// only the rounding of the two sums.
const H: f64 = 1.0 / 256.0;

/// Unit roundoff of f32 (2⁻²⁴).
const U32: f64 = 1.0 / 16_777_216.0;

/// A layer resolved on its input, with everything the f64 forward needs.
struct Layer {
    name: &'static str,
    spec: ValidSpec,
    input: [usize; 4],
    /// `[top, bottom, left, right]`: padding (direct) or crop (transposed).
    pad: [usize; 4],
    /// Output padding actually applied (transposed).
    op: [usize; 2],
    out: [usize; 4],
}

impl Layer {
    fn new(name: &'static str, spec: ConvSpec, input: [usize; 4]) -> Layer {
        let spec = spec
            .build()
            .unwrap_or_else(|e| panic!("{name}: spec rejected: {e}"));
        let g = spec
            .geometry(input)
            .unwrap_or_else(|e| panic!("{name}: geometry: {e}"));
        let (pad, op) = (g.pad, g.output_padding);
        let [kh, kw] = spec.kernel();
        let [sh, sw] = spec.stride();
        let [dh, dw] = spec.dilation();
        // The output size by the formulas (design notes §2), not by the library.
        let (oh, ow) = if spec.is_transposed() {
            (
                (input[2] - 1) * sh + dh * (kh - 1) + op[0] + 1 - pad[0] - pad[1],
                (input[3] - 1) * sw + dw * (kw - 1) + op[1] + 1 - pad[2] - pad[3],
            )
        } else {
            (
                (input[2] + pad[0] + pad[1] - dh * (kh - 1) - 1) / sh + 1,
                (input[3] + pad[2] + pad[3] - dw * (kw - 1) - 1) / sw + 1,
            )
        };
        let out = [input[0], spec.out_channels(), oh, ow];
        assert_eq!(out, g.output_shape(), "{name}: output shape formula");
        Layer {
            name,
            spec,
            input,
            pad,
            op,
            out,
        }
    }

    fn weight_shape(&self) -> [usize; 4] {
        self.spec.weight_shape()
    }
}

/// The input index a direct layer's tap reads at padded coordinate `i` (`None`: a zero).
fn source(mode: PaddingMode, i: isize, n: usize) -> Option<usize> {
    let n = n as isize;
    let j = match mode {
        PaddingMode::Zeros => i,
        // Mirror without repeating the edge (needs pad < n, checked by the spec).
        PaddingMode::Reflect if i < 0 => -i,
        PaddingMode::Reflect if i >= n => 2 * (n - 1) - i,
        PaddingMode::Reflect => i,
        PaddingMode::Replicate => i.clamp(0, n - 1),
        PaddingMode::Circular => i.rem_euclid(n),
    };
    (0..n).contains(&j).then_some(j as usize)
}

/// Flat NCHW index.
fn at(shape: [usize; 4], i: [usize; 4]) -> usize {
    ((i[0] * shape[1] + i[1]) * shape[2] + i[2]) * shape[3] + i[3]
}

/// The f64 forward pass by its definition. Weights in PyTorch's layout: direct
/// `(K, C/g, kh, kw)`, transposed `(C, K/g, kh, kw)`.
fn forward64(l: &Layer, x: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let s = &l.spec;
    let [n, c, ih, iw] = l.input;
    let [_, k, oh, ow] = l.out;
    let [kh, kw] = s.kernel();
    let [sh, sw] = s.stride();
    let [dh, dw] = s.dilation();
    let g = s.groups();
    let (cg, kg) = (c / g, k / g);
    let ws = l.weight_shape();
    let mut y = vec![0f64; n * k * oh * ow];
    for nn in 0..n {
        for kk in 0..k {
            for oy in 0..oh {
                for ox in 0..ow {
                    y[at(l.out, [nn, kk, oy, ox])] = b[kk];
                }
            }
        }
    }
    if s.is_transposed() {
        // y[n, grp·kg + ko, iy·s + ky·d − p_top, ix·s + kx·d − p_left] += x[n, c, iy, ix]·w[c, ko, ky, kx]
        for nn in 0..n {
            for ci in 0..c {
                let grp = ci / cg;
                for iy in 0..ih {
                    for ix in 0..iw {
                        let xv = x[at(l.input, [nn, ci, iy, ix])];
                        for ko in 0..kg {
                            for ky in 0..kh {
                                let oy = (iy * sh + ky * dh) as isize - l.pad[0] as isize;
                                if oy < 0 || oy >= oh as isize {
                                    continue;
                                }
                                for kx in 0..kw {
                                    let ox = (ix * sw + kx * dw) as isize - l.pad[2] as isize;
                                    if ox < 0 || ox >= ow as isize {
                                        continue;
                                    }
                                    let o =
                                        at(l.out, [nn, grp * kg + ko, oy as usize, ox as usize]);
                                    y[o] += xv * w[at(ws, [ci, ko, ky, kx])];
                                }
                            }
                        }
                    }
                }
            }
        }
    } else {
        // y[n, k, oy, ox] += x[n, grp·cg + ci, src(oy·s + ky·d − p_top), src(ox·s + kx·d − p_left)]·w[k, ci, ky, kx]
        let mode = s.padding_mode();
        for nn in 0..n {
            for kk in 0..k {
                let grp = kk / kg;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0;
                        for ci in 0..cg {
                            for ky in 0..kh {
                                let py = (oy * sh + ky * dh) as isize - l.pad[0] as isize;
                                let Some(iy) = source(mode, py, ih) else {
                                    continue;
                                };
                                for kx in 0..kw {
                                    let px = (ox * sw + kx * dw) as isize - l.pad[2] as isize;
                                    let Some(ix) = source(mode, px, iw) else {
                                        continue;
                                    };
                                    acc += x[at(l.input, [nn, grp * cg + ci, iy, ix])]
                                        * w[at(ws, [kk, ci, ky, kx])];
                                }
                            }
                        }
                        y[at(l.out, [nn, kk, oy, ox])] += acc;
                    }
                }
            }
        }
    }
    y
}

/// `L = Σ y·g`.
fn loss(l: &Layer, x: &[f64], w: &[f64], b: &[f64], g: &[f64]) -> f64 {
    forward64(l, x, w, b)
        .iter()
        .zip(g)
        .map(|(y, g)| y * g)
        .sum()
}

/// dL/dx, dL/dw, dL/db by central differences.
struct Fd {
    dx: Vec<f64>,
    dw: Vec<f64>,
    db: Vec<f64>,
}

fn finite_differences(l: &Layer, x: &[f64], w: &[f64], b: &[f64], g: &[f64]) -> Fd {
    // Perturbs one coordinate of operand `which` (0: x, 1: w, 2: b) by ±H.
    let grad = |which: usize| -> Vec<f64> {
        let mut ops = [x.to_vec(), w.to_vec(), b.to_vec()];
        (0..ops[which].len())
            .map(|i| {
                let v = ops[which][i];
                ops[which][i] = v + H;
                let lp = loss(l, &ops[0], &ops[1], &ops[2], g);
                ops[which][i] = v - H;
                let lm = loss(l, &ops[0], &ops[1], &ops[2], g);
                ops[which][i] = v;
                (lp - lm) / (2.0 * H)
            })
            .collect()
    };
    Fd {
        dx: grad(0),
        dw: grad(1),
        db: grad(2),
    }
}

/// Compares `got` with the finite differences `want` element by element: `|got − want| ≤
/// rel · terms_i · scale_i + noise`, where `scale_i` = Σ|terms| of gradient element i and
/// `terms_i` their number (both from finite differences of the same layer on |operands| and
/// on ones). Returns the worst ratio |error| / tolerance, or the first element outside it.
#[allow(clippy::too_many_arguments)]
fn compare(
    what: &str,
    l: &Layer,
    got: &[f32],
    want: &[f64],
    scale: &[f64],
    terms: &[f64],
    rel: f64,
    noise: f64,
) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!(
            "{} {what}: length {} vs {}",
            l.name,
            got.len(),
            want.len()
        ));
    }
    let mut worst = 0f64;
    for (i, (((&a, &e), &s), &t)) in got.iter().zip(want).zip(scale).zip(terms).enumerate() {
        let tol = rel * (t.round() + 2.0) * s + noise;
        let err = (a as f64 - e).abs();
        // NaN fails too.
        if err.is_nan() || err > tol {
            return Err(format!(
                "{} ({}) {what}[{i}]: analytic {a}, finite difference {e} \
                 (tolerance {tol:e}, {t} terms, scale {s})",
                l.name, l.spec
            ));
        }
        worst = worst.max(err / tol);
    }
    Ok(worst)
}

/// The f64 rounding noise of a central difference: `L` is a sum of at most `m` products of
/// values ≤ 1 in magnitude, so each evaluation errs by ≤ γ_m·Σ|y·g| ≈ m·2⁻⁵³·L_abs, and the
/// difference of two is divided by 2h.
fn fd_noise(l: &Layer, l_abs: f64) -> f64 {
    let [kh, kw] = l.spec.kernel();
    let depth = (l.input[1] / l.spec.groups()) * kh * kw + 2;
    let m = (l.out.iter().product::<usize>() * depth) as f64;
    2.0 * m * f64::EPSILON * l_abs / (2.0 * H) + 1e-12
}

/// Checks one layer; returns the worst error / tolerance ratio of the fast backward.
fn check(l: &Layer, seed: u64) -> f64 {
    let n_x: usize = l.input.iter().product();
    let n_w: usize = l.weight_shape().iter().product();
    let n_y: usize = l.out.iter().product();
    let k = l.spec.out_channels();
    let x32 = rand_vec(n_x, seed);
    let w32 = rand_vec(n_w, seed + 1);
    let g32 = rand_vec(n_y, seed + 2);
    let b32 = rand_vec(k, seed + 3);
    let wide = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
    let abs = |v: &[f64]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
    let (x, w, g, b) = (wide(&x32), wide(&w32), wide(&g32), wide(&b32));

    // The test's forward is the library's semantics: the f64 reference agrees to rounding.
    let a4 = |shape: [usize; 4], v: &[f64]| Array4::from_shape_vec(shape, v.to_vec()).unwrap();
    let (x4, w4, g4) = (a4(l.input, &x), a4(l.weight_shape(), &w), a4(l.out, &g));
    let b1 = Array1::from(b.clone());
    let yref = reference::forward(&l.spec, x4.view(), w4.view(), Some(b1.view())).unwrap();
    let y = forward64(l, &x, &w, &b);
    for (i, (a, e)) in y.iter().zip(yref.iter()).enumerate() {
        assert!(
            (a - e).abs() <= 1e-12 * (1.0 + e.abs()),
            "{}: f64 forward[{i}] {a} vs reference {e}",
            l.name
        );
    }

    let want = finite_differences(l, &x, &w, &b, &g);
    let (xa, wa, ga) = (abs(&x), abs(&w), abs(&g));
    let scale = finite_differences(l, &xa, &wa, &abs(&b), &ga);
    let ones = |n: usize| vec![1.0; n];
    let terms = finite_differences(l, &ones(n_x), &ones(n_w), &ones(k), &ones(n_y));
    let noise = fd_noise(l, loss(l, &xa, &wa, &abs(&b), &ga));
    // Not vacuous: the gradients are far from zero compared with their tolerances.
    for (what, v) in [("dx", &want.dx), ("dw", &want.dw), ("db", &want.db)] {
        let big = v.iter().fold(0f64, |m, a| m.max(a.abs()));
        assert!(
            big > 0.05,
            "{}: {what} is ~0 ({big}): a vacuous case",
            l.name
        );
    }

    // Convkit's fast backward, in f32. A sum of T products of f32 values, each product
    // rounded once and accumulated in f32 in any order (blocked GEMM panels, per-thread
    // partial sums, two-stage paths such as the sub-pixel grad input followed by the f64
    // fold of a padding mode), errs by at most γ_{T+1}·Σ|terms| ≈ (T+1)·u·Σ|terms|
    // (Higham, "Accuracy and Stability of Numerical Algorithms", §3.1; u = 2⁻²⁴), plus u·|v|
    // for storing the result: (T + 2)·u·Σ|terms|, with a safety factor of 2. A wrong tap, a
    // missing term or a mis-flipped kernel errs by a whole term, ≥ ~Σ|terms|/T, which is
    // orders of magnitude above this for the T ≤ ~200 of these layers.
    let fast = backward::backward(
        &l.spec,
        a4(l.input, &x).mapv(|v| v as f32).view(),
        a4(l.weight_shape(), &w).mapv(|v| v as f32).view(),
        a4(l.out, &g).mapv(|v| v as f32).view(),
        GradRequest::all(),
        Algo::Auto,
    )
    .unwrap_or_else(|e| panic!("{}: fast backward: {e}", l.name));
    let rel = 2.0 * U32;
    let dx = fast.input.expect("dx requested");
    let dw = fast.weight.expect("dw requested");
    let db = fast.bias.expect("db requested");
    assert_eq!(dx.shape(), &l.input[..], "{}: dx shape", l.name);
    assert_eq!(dw.shape(), &l.weight_shape()[..], "{}: dw shape", l.name);
    assert_eq!(db.len(), k, "{}: db length", l.name);
    let flat = |a: &Array4<f32>| a.iter().copied().collect::<Vec<f32>>();
    let mut worst = 0f64;
    worst = worst.max(
        compare(
            "fast dx",
            l,
            &flat(&dx),
            &want.dx,
            &scale.dx,
            &terms.dx,
            rel,
            noise,
        )
        .unwrap(),
    );
    worst = worst.max(
        compare(
            "fast dw",
            l,
            &flat(&dw),
            &want.dw,
            &scale.dw,
            &terms.dw,
            rel,
            noise,
        )
        .unwrap(),
    );
    worst = worst.max(
        compare(
            "fast db",
            l,
            &db.to_vec(),
            &want.db,
            &scale.db,
            &terms.db,
            rel,
            noise,
        )
        .unwrap(),
    );

    // The reference backward in f64: f64 accumulation, so the same bound with u = 2⁻⁵³; the
    // finite differences' own noise dominates.
    let r =
        reference::backward(&l.spec, x4.view(), w4.view(), g4.view(), GradRequest::all()).unwrap();
    let pairs = [
        (
            "reference dx",
            r.input.expect("dx").into_raw_vec_and_offset().0,
            &want.dx,
            &scale.dx,
        ),
        (
            "reference dw",
            r.weight.expect("dw").into_raw_vec_and_offset().0,
            &want.dw,
            &scale.dw,
        ),
        (
            "reference db",
            r.bias.expect("db").to_vec(),
            &want.db,
            &scale.db,
        ),
    ];
    for (what, got, e, s) in pairs {
        assert_eq!(got.len(), e.len(), "{} {what}: length", l.name);
        for (i, ((a, e), s)) in got.iter().zip(e.iter()).zip(s.iter()).enumerate() {
            let tol = 1e-13 * (1.0 + s) + noise;
            assert!(
                (a - e).abs() <= tol,
                "{} {what}[{i}]: {a} vs finite difference {e} (tolerance {tol:e})",
                l.name
            );
        }
    }
    worst
}

/// Every configuration the backward pass supports, by name.
fn layers() -> Vec<Layer> {
    use PaddingMode::{Circular, Reflect, Replicate};
    vec![
        Layer::new(
            "direct_3x3_pad1",
            ConvSpec::conv2d(3, 4, 3).padding(1),
            [2, 3, 5, 6],
        ),
        Layer::new(
            "direct_valid_no_padding",
            ConvSpec::conv2d(2, 3, [2, 3]),
            [1, 2, 5, 6],
        ),
        Layer::new(
            "strided_3x3_s2",
            ConvSpec::conv2d(3, 4, 3).stride(2).padding(1),
            [1, 3, 7, 8],
        ),
        Layer::new(
            "strided_rect_s2x3",
            ConvSpec::conv2d(2, 3, [3, 2])
                .stride([2, 3])
                .padding([1, 0]),
            [1, 2, 7, 8],
        ),
        Layer::new(
            "dilated_3x3_d2",
            ConvSpec::conv2d(2, 3, 3).dilation(2).padding(2),
            [1, 2, 7, 7],
        ),
        Layer::new(
            "dilated_strided_d2_s2",
            ConvSpec::conv2d(2, 3, 3)
                .dilation([2, 1])
                .stride(2)
                .padding(1),
            [1, 2, 8, 7],
        ),
        Layer::new(
            "grouped_g2",
            ConvSpec::conv2d(4, 6, 3)
                .groups(2)
                .padding(1)
                .stride([1, 2]),
            [1, 4, 5, 6],
        ),
        Layer::new(
            "depthwise_3x3",
            ConvSpec::conv2d(3, 3, 3).groups(3).padding(1),
            [2, 3, 5, 5],
        ),
        Layer::new(
            "depthwise_multiplier2_s2",
            ConvSpec::conv2d(3, 6, 3).groups(3).stride(2).padding(1),
            [1, 3, 7, 6],
        ),
        Layer::new(
            "asymmetric_padding",
            ConvSpec::conv2d(3, 2, [2, 3]).padding_sides([0, 2, 1, 0]),
            [1, 3, 5, 6],
        ),
        Layer::new(
            "same_tf_stride2",
            ConvSpec::conv2d(2, 3, 3)
                .padding_rule(Padding::SameTf)
                .stride(2),
            [1, 2, 6, 5],
        ),
        Layer::new(
            "reflect_padding",
            ConvSpec::conv2d(2, 3, 3)
                .padding_sides([2, 1, 1, 2])
                .padding_mode(Reflect),
            [1, 2, 5, 6],
        ),
        Layer::new(
            "replicate_padding_strided",
            ConvSpec::conv2d(2, 3, 3)
                .padding_sides([2, 1, 1, 3])
                .stride(2)
                .padding_mode(Replicate),
            [1, 2, 5, 6],
        ),
        Layer::new(
            "circular_padding_grouped",
            ConvSpec::conv2d(4, 2, 3)
                .padding_sides([1, 2, 2, 1])
                .groups(2)
                .padding_mode(Circular),
            [1, 4, 5, 4],
        ),
        Layer::new(
            "reflect_padding_dilated",
            ConvSpec::conv2d(2, 2, 3)
                .padding(2)
                .dilation(2)
                .padding_mode(Reflect),
            [1, 2, 5, 6],
        ),
        Layer::new(
            "conv1d_strided",
            ConvSpec::conv1d(2, 3, 3).stride(2).padding(1),
            [2, 2, 1, 9],
        ),
        Layer::new(
            "transposed_4x4_s2_p1",
            ConvSpec::conv_transpose2d(3, 4, 4).stride(2).padding(1),
            [2, 3, 3, 4],
        ),
        Layer::new(
            "transposed_3x3_s2_p1_op1",
            ConvSpec::conv_transpose2d(3, 2, 3)
                .stride(2)
                .padding(1)
                .output_padding(1),
            [1, 3, 4, 5],
        ),
        Layer::new(
            "transposed_2x2_s2",
            ConvSpec::conv_transpose2d(4, 3, 2).stride(2),
            [1, 4, 3, 4],
        ),
        Layer::new(
            "transposed_stride1",
            ConvSpec::conv_transpose2d(2, 3, 3).padding(1),
            [1, 2, 4, 5],
        ),
        Layer::new(
            "transposed_grouped_dilated_op",
            ConvSpec::conv_transpose2d(4, 6, 3)
                .stride(2)
                .dilation(2)
                .padding(1)
                .output_padding([1, 0])
                .groups(2),
            [1, 4, 3, 4],
        ),
        Layer::new(
            "transposed_depthwise",
            ConvSpec::conv_transpose2d(3, 6, 3)
                .stride(2)
                .padding(1)
                .groups(3),
            [1, 3, 3, 4],
        ),
        Layer::new(
            "transposed_asymmetric_crop",
            ConvSpec::conv_transpose2d(2, 3, [3, 4])
                .stride([2, 3])
                .padding_sides([0, 2, 1, 3])
                .output_padding([1, 2]),
            [1, 2, 4, 3],
        ),
        Layer::new(
            "transposed_output_size",
            ConvSpec::conv_transpose2d(2, 2, 3)
                .stride(3)
                .padding(1)
                .output_size([9, 11]),
            [1, 2, 3, 4],
        ),
        Layer::new(
            // output_padding ≥ stride, allowed because it is below the dilation.
            "transposed_op_above_stride",
            ConvSpec::conv_transpose2d(2, 2, 2)
                .dilation(3)
                .output_padding(2),
            [1, 2, 3, 4],
        ),
        Layer::new(
            "conv_transpose1d_s3_op2",
            ConvSpec::conv_transpose1d(2, 3, 4)
                .stride(3)
                .padding(1)
                .output_padding(2),
            [2, 2, 1, 5],
        ),
    ]
}

#[test]
fn gradients_match_f64_finite_differences() {
    let mut names = std::collections::HashSet::new();
    for (i, l) in layers().iter().enumerate() {
        assert!(names.insert(l.name), "duplicate case name {}", l.name);
        let worst = check(l, 100 + 10 * i as u64);
        println!(
            "{:32} {}: worst error / tolerance {worst:.3}",
            l.name, l.spec
        );
    }
}

/// Every configuration the issue names has a case (so none can silently drop out).
#[test]
fn cases_cover_every_configuration() {
    let ls = layers();
    let any = |f: &dyn Fn(&Layer) -> bool| ls.iter().any(f);
    let s = |l: &Layer| l.spec;
    assert!(any(&|l| !s(l).is_transposed() && s(l).stride() != [1, 1]));
    assert!(any(&|l| !s(l).is_transposed() && s(l).dilation() != [1, 1]));
    assert!(any(&|l| s(l).is_transposed() && s(l).dilation() != [1, 1]));
    assert!(any(&|l| s(l).groups() > 1
        && !s(l).is_depthwise()
        && !s(l).is_transposed()));
    assert!(any(&|l| s(l).groups() > 1 && s(l).is_transposed()));
    assert!(any(&|l| s(l).is_depthwise() && s(l).depth_multiplier() > 1));
    assert!(any(&|l| s(l).is_transposed() && l.op != [0, 0]));
    assert!(any(&|l| s(l).is_transposed() && l.pad[0] != l.pad[1]));
    assert!(any(&|l| !s(l).is_transposed() && l.pad[0] != l.pad[1]));
    for mode in [
        PaddingMode::Reflect,
        PaddingMode::Replicate,
        PaddingMode::Circular,
    ] {
        assert!(any(&|l| s(l).padding_mode() == mode), "{mode:?}");
    }
    assert!(any(
        &|l| s(l).rank() == convkit::Rank::One && s(l).is_transposed()
    ));
    assert!(any(
        &|l| s(l).rank() == convkit::Rank::One && !s(l).is_transposed()
    ));
}

/// The check can fail: a gradient off by one term's worth in one element, or computed with an
/// unflipped kernel, is rejected.
#[test]
fn the_check_rejects_wrong_gradients() {
    let l = &layers()[0];
    let n_x: usize = l.input.iter().product();
    let n_w: usize = l.weight_shape().iter().product();
    let n_y: usize = l.out.iter().product();
    let k = l.spec.out_channels();
    let wide = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    let (x, w, g, b) = (
        wide(rand_vec(n_x, 1)),
        wide(rand_vec(n_w, 2)),
        wide(rand_vec(n_y, 3)),
        wide(rand_vec(k, 4)),
    );
    let want = finite_differences(l, &x, &w, &b, &g);
    let abs = |v: &[f64]| v.iter().map(|a| a.abs()).collect::<Vec<_>>();
    let scale = finite_differences(l, &abs(&x), &abs(&w), &abs(&b), &abs(&g));
    let ones = |n: usize| vec![1.0; n];
    let terms = finite_differences(l, &ones(n_x), &ones(n_w), &ones(k), &ones(n_y));
    let exact: Vec<f32> = want.dx.iter().map(|&v| v as f32).collect();
    // The f32-rounded exact gradient passes.
    compare(
        "dx",
        l,
        &exact,
        &want.dx,
        &scale.dx,
        &terms.dx,
        2.0 * U32,
        1e-12,
    )
    .unwrap();
    // One element off by a hundredth of its Σ|terms| fails.
    let i = (0..n_x)
        .max_by(|&a, &b| scale.dx[a].total_cmp(&scale.dx[b]))
        .unwrap();
    let mut bad = exact.clone();
    bad[i] += (scale.dx[i] / 100.0) as f32;
    let caught = compare(
        "dx",
        l,
        &bad,
        &want.dx,
        &scale.dx,
        &terms.dx,
        2.0 * U32,
        1e-12,
    );
    assert!(
        caught.is_err_and(|e| e.contains(&format!("dx[{i}]"))),
        "an error of Σ|terms|/100 was accepted"
    );
    // The gradient of the same layer with the kernel flipped (a classic grad-input bug) fails.
    let [_, c, kh, kw] = l.weight_shape();
    let mut wf = w.clone();
    for kk in 0..k {
        for ci in 0..c {
            for ky in 0..kh {
                for kx in 0..kw {
                    wf[at(l.weight_shape(), [kk, ci, ky, kx])] =
                        w[at(l.weight_shape(), [kk, ci, kh - 1 - ky, kw - 1 - kx])];
                }
            }
        }
    }
    let flipped: Vec<f32> = finite_differences(l, &x, &wf, &b, &g)
        .dx
        .iter()
        .map(|&v| v as f32)
        .collect();
    let caught = compare(
        "dx",
        l,
        &flipped,
        &want.dx,
        &scale.dx,
        &terms.dx,
        2.0 * U32,
        1e-12,
    );
    assert!(caught.is_err(), "a flipped-kernel gradient was accepted");
}
