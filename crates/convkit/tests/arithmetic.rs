//! Unit tests for every arithmetic claim: conv_arithmetic's eight animated configurations and
//! their transposed counterparts (Dumoulin & Visin 2016, relationships 1–15), the seed's numbers,
//! the `same` rules of PyTorch and TensorFlow, `output_size`, parameter and MAC counts, receptive
//! fields (Araujo et al., Distill 2019), and every error that validation can produce.

use convkit::arith::{self, ReceptiveField};
use convkit::reference::{self, GradRequest};
use convkit::{ConvError, ConvSpec, Equivalent, Padding, PaddingMode, ValidSpec};
use ndarray::{s, Array1, Array3, Array4};

/// One conv_arithmetic animation: input size i, output size o, padding p, kernel k, stride s,
/// dilation d (square, so every number applies to both axes).
#[derive(Debug, Clone, Copy)]
struct Anim {
    name: &'static str,
    i: usize,
    o: usize,
    p: usize,
    k: usize,
    s: usize,
    d: usize,
}

const ANIMATIONS: [Anim; 8] = [
    Anim {
        name: "no_padding_no_strides",
        i: 4,
        o: 2,
        p: 0,
        k: 3,
        s: 1,
        d: 1,
    },
    Anim {
        name: "arbitrary_padding_no_strides",
        i: 5,
        o: 6,
        p: 2,
        k: 4,
        s: 1,
        d: 1,
    },
    Anim {
        name: "same_padding_no_strides",
        i: 5,
        o: 5,
        p: 1,
        k: 3,
        s: 1,
        d: 1,
    },
    Anim {
        name: "full_padding_no_strides",
        i: 5,
        o: 7,
        p: 2,
        k: 3,
        s: 1,
        d: 1,
    },
    Anim {
        name: "no_padding_strides",
        i: 5,
        o: 2,
        p: 0,
        k: 3,
        s: 2,
        d: 1,
    },
    Anim {
        name: "padding_strides",
        i: 5,
        o: 3,
        p: 1,
        k: 3,
        s: 2,
        d: 1,
    },
    Anim {
        name: "padding_strides_odd",
        i: 6,
        o: 3,
        p: 1,
        k: 3,
        s: 2,
        d: 1,
    },
    Anim {
        name: "dilation",
        i: 7,
        o: 3,
        p: 0,
        k: 3,
        s: 1,
        d: 2,
    },
];

fn direct(a: &Anim) -> ValidSpec {
    ConvSpec::conv2d(1, 1, a.k)
        .stride(a.s)
        .padding(a.p)
        .dilation(a.d)
        .build()
        .unwrap()
}

/// The transposed counterpart maps o back to i; `a = (i + 2p − d(k−1) − 1) mod s` restores the
/// rows the direct convolution never reached (Dumoulin & Visin relationship 14).
fn transposed(a: &Anim) -> ValidSpec {
    let op = (a.i + 2 * a.p - a.d * (a.k - 1) - 1) % a.s;
    ConvSpec::conv_transpose2d(1, 1, a.k)
        .stride(a.s)
        .padding(a.p)
        .dilation(a.d)
        .output_padding(op)
        .build()
        .unwrap()
}

#[test]
fn conv_arithmetic_animations_direct() {
    for a in &ANIMATIONS {
        assert_eq!(
            direct(a).output_hw(a.i, a.i).unwrap(),
            [a.o, a.o],
            "{}",
            a.name
        );
        // The same numbers in 1D.
        let one = ConvSpec::conv1d(1, 1, a.k)
            .stride(a.s)
            .padding(a.p)
            .dilation(a.d)
            .build()
            .unwrap();
        assert_eq!(one.output_hw(1, a.i).unwrap(), [1, a.o], "{} (1D)", a.name);
        // Relationship 15: o = ⌊(i + 2p − k − (k−1)(d−1)) / s⌋ + 1.
        let formula = (a.i + 2 * a.p - a.k - (a.k - 1) * (a.d - 1)) / a.s + 1;
        assert_eq!(formula, a.o, "{}", a.name);
    }
}

#[test]
fn conv_arithmetic_animations_transposed() {
    for a in &ANIMATIONS {
        let t = transposed(a);
        assert_eq!(t.output_hw(a.o, a.o).unwrap(), [a.i, a.i], "{}", a.name);
    }
    // Only the odd animation needs output padding to come back to its input size.
    let odd = ANIMATIONS[6];
    assert_eq!(odd.name, "padding_strides_odd");
    assert_eq!(transposed(&odd).spec().output_padding, [1, 1]);
    let without = ConvSpec::conv_transpose2d(1, 1, 3)
        .stride(2)
        .padding(1)
        .build()
        .unwrap();
    assert_eq!(without.output_hw(3, 3).unwrap(), [5, 5]);
    for a in ANIMATIONS
        .iter()
        .filter(|a| a.name != "padding_strides_odd")
    {
        assert_eq!(transposed(a).spec().output_padding, [0, 0], "{}", a.name);
    }
}

/// The direct convolution equivalent to each transposed counterpart (Dumoulin & Visin §4):
/// relationship 8 (no padding, unit stride: p' = k − 1, full padding), 9 (p' = k − p − 1),
/// 10 (same: p' = p), 11 (full: p' = 0), 12–14 (strides: s − 1 zeros between inputs,
/// stretched input (o−1)s + 1, output padding a on bottom/right), and dilation (p' = d(k−1) − p).
#[test]
fn conv_arithmetic_equivalent_direct_convolutions() {
    // (name, zero insertion, stretched input, padding before, padding after)
    let expected: [(&str, usize, usize, i64, i64); 8] = [
        ("no_padding_no_strides", 0, 2, 2, 2),
        ("arbitrary_padding_no_strides", 0, 6, 1, 1),
        ("same_padding_no_strides", 0, 5, 1, 1),
        ("full_padding_no_strides", 0, 7, 0, 0),
        ("no_padding_strides", 1, 3, 2, 2),
        ("padding_strides", 1, 5, 1, 1),
        ("padding_strides_odd", 1, 5, 1, 2),
        ("dilation", 0, 3, 4, 4),
    ];
    for (a, (name, zi, stretched, pb, pa)) in ANIMATIONS.iter().zip(expected) {
        assert_eq!(a.name, name);
        let g = transposed(a).geometry([1, 1, a.o, a.o]).unwrap();
        match g.equivalent() {
            Equivalent::Direct {
                zero_insertion,
                padding,
                stride,
                dilation,
                stretched_input,
                kernel_flipped,
            } => {
                assert_eq!(zero_insertion, [zi, zi], "{name}");
                assert_eq!(stretched_input, [stretched, stretched], "{name}");
                assert_eq!(padding, [pb, pa, pb, pa], "{name}");
                assert_eq!(stride, [1, 1], "{name}");
                assert_eq!(dilation, [a.d, a.d], "{name}");
                assert!(kernel_flipped);
                // A stride-1 conv over the stretched, padded input gives back i.
                let ext = (a.d * (a.k - 1) + 1) as i64;
                assert_eq!(stretched as i64 + pb + pa - ext + 1, a.i as i64, "{name}");
            }
            other => panic!("{name}: expected a direct equivalent, got {other:?}"),
        }
        // And the direct layer's adjoint is the transposed counterpart.
        let gd = direct(a).geometry([1, 1, a.i, a.i]).unwrap();
        let Equivalent::Transposed {
            stride,
            padding,
            output_padding,
            dilation,
        } = gd.equivalent()
        else {
            panic!("{name}: expected a transposed equivalent");
        };
        assert_eq!(stride, [a.s, a.s]);
        assert_eq!(padding, [a.p; 4]);
        assert_eq!(dilation, [a.d, a.d]);
        assert_eq!(
            output_padding,
            transposed(a).spec().output_padding,
            "{name}"
        );
    }
}

/// Runs the equivalence numerically: the transposed layer's output equals the direct
/// convolution (stride 1) of the zero-stretched, padded input with the flipped kernel.
#[test]
fn conv_arithmetic_equivalence_holds_numerically() {
    for a in &ANIMATIONS {
        let t = transposed(a);
        let g = t.geometry([1, 1, a.o, a.o]).unwrap();
        let Equivalent::Direct {
            zero_insertion,
            padding,
            stretched_input,
            ..
        } = g.equivalent()
        else {
            unreachable!()
        };
        let x = Array4::from_shape_fn((1, 1, a.o, a.o), |(_, _, y, x)| {
            ((3 * y + 5 * x) % 7) as f64 - 3.0
        });
        let w = Array4::from_shape_fn((1, 1, a.k, a.k), |(_, _, y, x)| {
            ((2 * y + 3 * x) % 5) as f64 - 1.5
        });
        let y = reference::forward(&t, x.view(), w.view(), None).unwrap();
        // Stretch, then pad (all paddings here are non-negative).
        let [sh, sw] = stretched_input;
        let mut stretched = Array4::<f64>::zeros((1, 1, sh, sw));
        for iy in 0..a.o {
            for ix in 0..a.o {
                stretched[[
                    0,
                    0,
                    iy * (zero_insertion[0] + 1),
                    ix * (zero_insertion[1] + 1),
                ]] = x[[0, 0, iy, ix]];
            }
        }
        let pads = padding.map(|p| usize::try_from(p).expect("non-negative here"));
        let flipped = w.slice(s![.., .., ..;-1, ..;-1]).to_owned();
        let eq = ConvSpec::conv2d(1, 1, a.k)
            .dilation(a.d)
            .padding_sides(pads)
            .bias(false)
            .build()
            .unwrap();
        let y2 = reference::forward(&eq, stretched.view(), flipped.view(), None).unwrap();
        assert_eq!(y, y2, "{}", a.name);
    }
}

// ---------------------------------------------------------------------------------------------
// The seed's numbers
// ---------------------------------------------------------------------------------------------

#[test]
fn seed_depthwise_separable_4608_vs_656() {
    let p = arith::depthwise_separable_params(16, 32, [3, 3], 1).unwrap();
    assert_eq!(p.standard, 16 * 32 * 3 * 3);
    assert_eq!(p.standard, 4608);
    assert_eq!(p.depthwise, 16 * 3 * 3);
    assert_eq!(p.pointwise, 16 * 32);
    assert_eq!(p.separable(), 656);
    // The same counts from the layers themselves.
    let dw = ConvSpec::conv2d(16, 16, 3)
        .groups(16)
        .bias(false)
        .build()
        .unwrap();
    let pw = ConvSpec::conv2d(16, 32, 1).bias(false).build().unwrap();
    assert!(dw.is_depthwise());
    assert_eq!(dw.param_count() + pw.param_count(), 656);
    // Depth multiplier 2: 16·2·9 + 32·32.
    let p2 = arith::depthwise_separable_params(16, 32, [3, 3], 2).unwrap();
    assert_eq!((p2.depthwise, p2.pointwise), (288, 1024));
}

#[test]
fn seed_sobel_9_vs_6() {
    assert_eq!(arith::spatially_separable_params([3, 3]), (9, 6));
    assert_eq!(arith::spatially_separable_params([5, 5]), (25, 10));
    assert_eq!(arith::spatially_separable_params([1, 7]), (7, 8));
}

#[test]
fn seed_64_kernels_3x3_have_i_o_9_params() {
    for i in [1, 3, 16, 64] {
        let l = ConvSpec::conv2d(i, 64, 3).bias(false).build().unwrap();
        assert_eq!(l.weight_count(), i * 64 * 9);
        assert_eq!(l.param_count(), i * 64 * 9);
        assert_eq!(l.weight_shape(), [64, i, 3, 3]);
        let with_bias = ConvSpec::conv2d(i, 64, 3).build().unwrap();
        assert_eq!(with_bias.param_count(), i * 64 * 9 + 64);
    }
}

#[test]
fn seed_dilation_2_sees_5x5_with_9_weights() {
    let l = ConvSpec::conv2d(1, 1, 3)
        .dilation(2)
        .bias(false)
        .build()
        .unwrap();
    assert_eq!(l.dilated_kernel(), [5, 5]);
    assert_eq!(l.weight_count(), 9);
    let rf = ReceptiveField::identity().then(&l, [0, 0]).unwrap();
    assert_eq!(rf.size, [5, 5]);
    // The figure: kernel 3, dilation 2, no padding, 7×7 → 3×3.
    assert_eq!(l.output_hw(7, 7).unwrap(), [3, 3]);
}

#[test]
fn seed_stride_padding_and_transposed_examples() {
    // "Standard" padding keeps the size; without it a 3×3 kernel shrinks the output.
    let same = ConvSpec::conv2d(1, 1, 3).padding(1).build().unwrap();
    assert_eq!(same.output_hw(32, 32).unwrap(), [32, 32]);
    let none = ConvSpec::conv2d(1, 1, 3).build().unwrap();
    assert_eq!(none.output_hw(32, 32).unwrap(), [30, 30]);
    // Stride 2 halves (like 2×2 max pooling).
    let down = ConvSpec::conv2d(1, 1, 3)
        .stride(2)
        .padding(1)
        .build()
        .unwrap();
    assert_eq!(down.output_hw(32, 32).unwrap(), [16, 16]);
    // 5×5 through 3×3 stride 2, no padding → 2×2; the transposed layer maps 2×2 back to 5×5.
    let fwd = ConvSpec::conv2d(1, 1, 3).stride(2).build().unwrap();
    assert_eq!(fwd.output_hw(5, 5).unwrap(), [2, 2]);
    let up = ConvSpec::conv_transpose2d(1, 1, 3)
        .stride(2)
        .build()
        .unwrap();
    assert_eq!(up.output_hw(2, 2).unwrap(), [5, 5]);
}

// ---------------------------------------------------------------------------------------------
// Padding rules
// ---------------------------------------------------------------------------------------------

#[test]
fn pytorch_same_puts_the_extra_cell_bottom_right() {
    let pads = |k: [usize; 2], d: [usize; 2]| {
        ConvSpec::conv2d(1, 1, k)
            .dilation(d)
            .padding_rule(Padding::Same)
            .build()
            .unwrap()
            .resolved_padding(9, 9)
    };
    assert_eq!(pads([3, 3], [1, 1]), [1, 1, 1, 1]);
    assert_eq!(pads([4, 4], [1, 1]), [1, 2, 1, 2]); // total 3: 1 before, 2 after
    assert_eq!(pads([2, 2], [1, 1]), [0, 1, 0, 1]);
    assert_eq!(pads([2, 5], [1, 1]), [0, 1, 2, 2]);
    assert_eq!(pads([3, 3], [2, 2]), [2, 2, 2, 2]); // total d(k−1) = 4
    assert_eq!(pads([4, 4], [2, 3]), [3, 3, 4, 5]); // totals 6 and 9
    for k in 1..8 {
        let l = ConvSpec::conv2d(1, 1, [k, k + 1])
            .padding_rule(Padding::Same)
            .build()
            .unwrap();
        assert_eq!(l.output_hw(7, 6).unwrap(), [7, 6], "k = {k}");
    }
}

#[test]
fn tensorflow_same_for_stride_2() {
    let l = |k: usize, s: usize, d: usize| {
        ConvSpec::conv2d(1, 1, k)
            .stride(s)
            .dilation(d)
            .padding_rule(Padding::SameTf)
            .build()
            .unwrap()
    };
    // out = ⌈i/s⌉, total = max((out−1)s + d(k−1) + 1 − i, 0), ⌊total/2⌋ before.
    assert_eq!(l(3, 2, 1).resolved_padding(7, 8), [1, 1, 0, 1]); // totals 2 and 1
    assert_eq!(l(3, 2, 1).output_hw(7, 8).unwrap(), [4, 4]);
    assert_eq!(l(4, 2, 1).resolved_padding(6, 6), [1, 1, 1, 1]); // total 2
    assert_eq!(l(1, 2, 1).resolved_padding(5, 6), [0; 4]); // total max(−?, 0) = 0
    assert_eq!(l(1, 2, 1).output_hw(5, 6).unwrap(), [3, 3]);
    assert_eq!(l(3, 2, 2).resolved_padding(9, 8), [2, 2, 1, 2]); // totals 4 and 3
    assert_eq!(l(3, 2, 1).resolved_padding(1, 2), [1, 1, 0, 1]);
    for i in 1..20 {
        for s in 1..5 {
            for k in 1..6 {
                assert_eq!(l(k, s, 1).output_hw(i, i).unwrap(), [i.div_ceil(s); 2]);
            }
        }
    }
    // With stride 1 it agrees with PyTorch's 'same'.
    let same = ConvSpec::conv2d(1, 1, 4)
        .padding_rule(Padding::Same)
        .build()
        .unwrap();
    assert_eq!(
        l(4, 1, 1).resolved_padding(9, 9),
        same.resolved_padding(9, 9)
    );
}

#[test]
fn valid_is_no_padding() {
    let l = ConvSpec::conv2d(1, 1, 3)
        .stride(2)
        .padding_rule(Padding::Valid)
        .build()
        .unwrap();
    assert_eq!(l.resolved_padding(7, 8), [0; 4]);
    assert_eq!(l.output_hw(7, 8).unwrap(), [3, 3]);
}

#[test]
fn per_side_padding_output_shape() {
    // o = ⌊(i + p_before + p_after − d(k−1) − 1)/s⌋ + 1 per axis.
    let l = ConvSpec::conv2d(1, 1, [3, 2])
        .padding_sides([1, 0, 3, 2])
        .stride([2, 3])
        .build()
        .unwrap();
    assert_eq!(
        l.output_hw(7, 8).unwrap(),
        [(7 + 1 - 3) / 2 + 1, (8 + 5 - 2) / 3 + 1]
    );
}

// ---------------------------------------------------------------------------------------------
// Transposed: output_padding and output_size
// ---------------------------------------------------------------------------------------------

#[test]
fn transposed_output_formula() {
    // o = (i − 1)s − 2p + d(k−1) + a + 1 (PyTorch ConvTranspose2d).
    for (i, k, s, p, d, a) in [
        (4, 3, 2, 1, 1, 1),
        (5, 4, 3, 2, 1, 2),
        (3, 3, 1, 0, 3, 2),
        (2, 1, 4, 0, 1, 3),
    ] {
        let l = ConvSpec::conv_transpose2d(1, 1, k)
            .stride(s)
            .padding(p)
            .dilation(d)
            .output_padding(a)
            .build()
            .unwrap();
        assert_eq!(
            l.output_hw(i, i).unwrap(),
            [(i - 1) * s - 2 * p + d * (k - 1) + a + 1; 2]
        );
    }
}

#[test]
fn output_size_derives_output_padding() {
    // k 3, s 2, p 1 on 4: min = 3·2 − 2 + 2 + 1 = 7, max = min + s − 1 = 8.
    let base = ConvSpec::conv_transpose2d(2, 2, 3).stride(2).padding(1);
    for (want, op) in [(7, 0), (8, 1)] {
        let l = base.output_size([want, want]).build().unwrap();
        let g = l.geometry([1, 2, 4, 4]).unwrap();
        assert_eq!([g.oh, g.ow], [want, want]);
        assert_eq!(g.output_padding, [op, op]);
    }
    // Per axis, with different strides.
    let l = ConvSpec::conv_transpose2d(1, 1, 4)
        .stride([3, 2])
        .padding(1)
        .output_size([12, 9])
        .build()
        .unwrap();
    let g = l.geometry([1, 1, 4, 4]).unwrap();
    // min = (4−1)·s − 2 + 3 + 1 = [11, 8]; max = min + s − 1 = [13, 9].
    assert_eq!(g.output_padding, [1, 1]);
    assert_eq!([g.oh, g.ow], [12, 9]);
    // 1D.
    let l = ConvSpec::conv_transpose1d(1, 1, 3)
        .stride(3)
        .output_size(17)
        .build()
        .unwrap();
    let g = l.geometry([1, 1, 1, 5]).unwrap();
    assert_eq!(g.output_padding, [0, 2]);
    assert_eq!(g.ow, 17);
}

#[test]
fn output_size_out_of_range_is_an_error() {
    let base = ConvSpec::conv_transpose2d(1, 1, 3).stride(2).padding(1);
    for (req, axis) in [([9, 7], "height"), ([7, 6], "width")] {
        let l = base.output_size(req).build().unwrap();
        let err = l.geometry([1, 1, 4, 4]).unwrap_err();
        assert_eq!(
            err,
            ConvError::BadOutputSize {
                axis,
                requested: if axis == "height" { 9 } else { 6 },
                min: 7,
                max: 8,
            }
        );
    }
}

#[test]
fn output_padding_must_be_below_stride_or_dilation() {
    // Valid: op < s, or op < d (PyTorch allows op ≥ s when op < d).
    for (s, d, op) in [(2, 1, 1), (3, 1, 2), (1, 2, 1), (1, 4, 3), (2, 3, 2)] {
        assert!(
            ConvSpec::conv_transpose2d(1, 1, 3)
                .stride(s)
                .dilation(d)
                .output_padding(op)
                .build()
                .is_ok(),
            "s {s} d {d} op {op}"
        );
    }
    for (s, d, op) in [(1, 1, 1), (2, 1, 2), (2, 2, 2), (1, 3, 3)] {
        let err = ConvSpec::conv_transpose2d(1, 1, 3)
            .stride(s)
            .dilation(d)
            .output_padding(op)
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            ConvError::BadOutputPadding {
                axis: "height",
                output_padding: op,
                stride: s,
                dilation: d
            }
        );
    }
    let err = ConvSpec::conv_transpose2d(1, 1, 3)
        .stride([2, 1])
        .output_padding([1, 1])
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        ConvError::BadOutputPadding { axis: "width", .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// Parameters and MACs
// ---------------------------------------------------------------------------------------------

#[test]
fn params_with_groups_and_bias() {
    let p = |s: ConvSpec| s.build().unwrap().param_count();
    assert_eq!(p(ConvSpec::conv2d(8, 16, 3).groups(4)), 16 * 2 * 9 + 16);
    assert_eq!(
        p(ConvSpec::conv2d(8, 16, 3).groups(4).bias(false)),
        16 * 2 * 9
    );
    assert_eq!(p(ConvSpec::conv2d(4, 8, 3).groups(4)), 8 * 9 + 8); // depthwise, m = 2
    assert_eq!(p(ConvSpec::conv2d(3, 5, [3, 5])), 5 * 3 * 15 + 5);
    assert_eq!(p(ConvSpec::conv1d(4, 6, 5).groups(2)), 6 * 2 * 5 + 6);
    // Transposed: weight (C, K/g, kh, kw).
    let t = ConvSpec::conv_transpose2d(8, 4, 3)
        .groups(2)
        .build()
        .unwrap();
    assert_eq!(t.weight_shape(), [8, 2, 3, 3]);
    assert_eq!(t.param_count(), 8 * 2 * 9 + 4);
    let t1 = ConvSpec::conv_transpose1d(6, 9, 4)
        .groups(3)
        .build()
        .unwrap();
    assert_eq!(t1.weight_shape_dyn(), vec![6, 3, 4]);
    let dw = ConvSpec::conv2d(3, 6, 3).groups(3).build().unwrap();
    assert!(dw.is_depthwise());
    assert_eq!(dw.depth_multiplier(), 2);
    assert!(!ConvSpec::conv2d(4, 8, 3)
        .groups(2)
        .build()
        .unwrap()
        .is_depthwise());
}

#[test]
fn macs_and_flops() {
    // ResNet stem: 3→64, 7×7, stride 2, padding 3 on 224×224 → 112×112.
    let stem = ConvSpec::conv2d(3, 64, 7)
        .stride(2)
        .padding(3)
        .build()
        .unwrap();
    let g = stem.geometry([1, 3, 224, 224]).unwrap();
    assert_eq!(g.output_shape(), [1, 64, 112, 112]);
    let macs = 112 * 112 * 64 * 3 * 49;
    assert_eq!(g.macs(), macs);
    assert_eq!(g.flops(), 2 * macs);
    // N·OH·OW·K·(C/g)·kh·kw with groups and batch.
    let grouped = ConvSpec::conv2d(32, 64, [3, 5])
        .groups(4)
        .padding([1, 2])
        .build()
        .unwrap();
    let g = grouped.geometry([2, 32, 8, 10]).unwrap();
    assert_eq!(g.macs(), 2 * 8 * 10 * 64 * 8 * 15);
    // Transposed: N·H·W·C·(K/g)·kh·kw (inserted zeros are never multiplied).
    let t = ConvSpec::conv_transpose2d(16, 8, 4)
        .stride(2)
        .padding(1)
        .groups(2)
        .build()
        .unwrap();
    let g = t.geometry([3, 16, 5, 6]).unwrap();
    assert_eq!(g.output_shape(), [3, 8, 10, 12]);
    assert_eq!(g.macs(), 3 * 5 * 6 * 16 * 4 * 16);
    assert_eq!(g.flops(), 2 * g.macs());
    // 1D.
    let c1 = ConvSpec::conv1d(4, 6, 3).build().unwrap();
    assert_eq!(
        c1.geometry([2, 4, 1, 10]).unwrap().macs(),
        2 * 8 * 6 * 4 * 3
    );
}

// ---------------------------------------------------------------------------------------------
// Receptive fields
// ---------------------------------------------------------------------------------------------

#[test]
fn receptive_field_stacks() {
    let c = |k: usize, s: usize, p: usize, d: usize| {
        ConvSpec::conv2d(1, 1, k)
            .stride(s)
            .padding(p)
            .dilation(d)
            .build()
            .unwrap()
    };
    let rf_of = |layers: &[ValidSpec], hw: usize| {
        arith::analyze_stack(layers, [1, 1, hw, hw])
            .unwrap()
            .last()
            .unwrap()
            .receptive_field
            .unwrap()
    };
    // Two 3×3 see 5×5; three see 7×7 (why VGG stacks 3×3 kernels).
    assert_eq!(rf_of(&[c(3, 1, 1, 1), c(3, 1, 1, 1)], 16).size, [5, 5]);
    assert_eq!(rf_of(&[c(3, 1, 1, 1); 3], 16).size, [7, 7]);
    // Strides multiply the jump and widen later layers: r = 1 + 2 + 2·2 = 7, S = 4.
    let r = rf_of(&[c(3, 2, 1, 1), c(3, 2, 1, 1)], 32);
    assert_eq!((r.size, r.jump, r.start), ([7, 7], [4, 4], [-3, -3]));
    // Dilations 1, 2, 4 (WaveNet/atrous): r = 1 + 2 + 4 + 8 = 15.
    let r = rf_of(&[c(3, 1, 1, 1), c(3, 1, 2, 2), c(3, 1, 4, 4)], 32);
    assert_eq!((r.size, r.jump, r.start), ([15, 15], [1, 1], [-7, -7]));
    // AlexNet conv1 + pool-like conv: 11 s4 p2, then 3 s2: r = 11 + 2·4 = 19, S = 8.
    let r = rf_of(&[c(11, 4, 2, 1), c(3, 2, 0, 1)], 227);
    assert_eq!((r.size, r.jump, r.start), ([19, 19], [8, 8], [-2, -2]));
    // Non-square kernels per axis.
    let l = ConvSpec::conv2d(1, 1, [1, 5])
        .stride([2, 1])
        .build()
        .unwrap();
    let r = ReceptiveField::identity()
        .then(&l, [0, 0])
        .unwrap()
        .then(&c(3, 1, 0, 1), [0, 0])
        .unwrap();
    assert_eq!((r.size, r.jump), ([5, 7], [2, 1]));
    // A transposed layer ends the receptive-field analysis.
    let t = ConvSpec::conv_transpose2d(1, 1, 3)
        .stride(2)
        .build()
        .unwrap();
    assert!(matches!(
        ReceptiveField::identity().then(&t, [0, 0]),
        Err(ConvError::Unsupported(_))
    ));
    let rep = arith::analyze_stack(&[c(3, 1, 1, 1), t], [1, 1, 8, 8]).unwrap();
    assert!(rep[0].receptive_field.is_some());
    assert!(rep[1].receptive_field.is_none());
    assert_eq!(rep[1].geometry.output_shape(), [1, 1, 17, 17]);
}

// ---------------------------------------------------------------------------------------------
// Every validation error
// ---------------------------------------------------------------------------------------------

fn build_err(s: ConvSpec) -> ConvError {
    s.build().expect_err("must be rejected")
}

#[test]
fn error_zero_sizes() {
    let z = |what| ConvError::Zero { what };
    assert_eq!(build_err(ConvSpec::conv2d(0, 1, 3)), z("in_channels"));
    assert_eq!(build_err(ConvSpec::conv2d(1, 0, 3)), z("out_channels"));
    assert_eq!(build_err(ConvSpec::conv2d(1, 1, 3).groups(0)), z("groups"));
    assert_eq!(
        build_err(ConvSpec::conv2d(1, 1, [0, 3])),
        z("kernel height")
    );
    assert_eq!(build_err(ConvSpec::conv2d(1, 1, [3, 0])), z("kernel width"));
    assert_eq!(build_err(ConvSpec::conv1d(1, 1, 0)), z("kernel width"));
    assert_eq!(
        build_err(ConvSpec::conv2d(1, 1, 3).stride([0, 1])),
        z("stride height")
    );
    assert_eq!(
        build_err(ConvSpec::conv2d(1, 1, 3).stride([1, 0])),
        z("stride width")
    );
    assert_eq!(
        build_err(ConvSpec::conv_transpose1d(1, 1, 3).stride(0)),
        z("stride width")
    );
    assert_eq!(
        build_err(ConvSpec::conv2d(1, 1, 3).dilation([0, 1])),
        z("dilation height")
    );
    assert_eq!(
        build_err(ConvSpec::conv2d(1, 1, 3).dilation(0)),
        z("dilation height")
    );
    assert_eq!(
        build_err(ConvSpec::conv1d(1, 1, 3).dilation(0)),
        z("dilation width")
    );
    let l = ConvSpec::conv2d(2, 1, 1).build().unwrap();
    assert_eq!(l.geometry([0, 2, 4, 4]).unwrap_err(), z("batch size"));
    assert_eq!(l.geometry([1, 2, 0, 4]).unwrap_err(), z("input height"));
    assert_eq!(l.geometry([1, 2, 4, 0]).unwrap_err(), z("input width"));
    let t = ConvSpec::conv_transpose2d(2, 1, 1).build().unwrap();
    assert_eq!(t.geometry([1, 2, 0, 4]).unwrap_err(), z("input height"));
}

#[test]
fn error_groups_not_dividing() {
    assert_eq!(
        build_err(ConvSpec::conv2d(6, 4, 3).groups(4)),
        ConvError::NotDivisibleByGroups {
            what: "in_channels",
            channels: 6,
            groups: 4
        }
    );
    assert_eq!(
        build_err(ConvSpec::conv2d(6, 4, 3).groups(3)),
        ConvError::NotDivisibleByGroups {
            what: "out_channels",
            channels: 4,
            groups: 3
        }
    );
    assert_eq!(
        build_err(ConvSpec::conv_transpose2d(4, 6, 3).groups(4)),
        ConvError::NotDivisibleByGroups {
            what: "out_channels",
            channels: 6,
            groups: 4
        }
    );
    assert!(matches!(
        build_err(ConvSpec::conv1d(2, 2, 3).groups(3)),
        ConvError::NotDivisibleByGroups { .. }
    ));
}

#[test]
fn error_same_with_stride() {
    assert_eq!(
        build_err(
            ConvSpec::conv2d(1, 1, 3)
                .stride([1, 2])
                .padding_rule(Padding::Same)
        ),
        ConvError::SameNeedsStrideOne {
            stride_h: 1,
            stride_w: 2
        }
    );
    assert!(matches!(
        build_err(
            ConvSpec::conv1d(1, 1, 3)
                .stride(2)
                .padding_rule(Padding::Same)
        ),
        ConvError::SameNeedsStrideOne {
            stride_h: 1,
            stride_w: 2
        }
    ));
    // TensorFlow's rule is the strided alternative.
    assert!(ConvSpec::conv2d(1, 1, 3)
        .stride(2)
        .padding_rule(Padding::SameTf)
        .build()
        .is_ok());
}

#[test]
fn error_padding_options_on_transposed() {
    for mode in [
        PaddingMode::Reflect,
        PaddingMode::Replicate,
        PaddingMode::Circular,
    ] {
        assert_eq!(
            build_err(
                ConvSpec::conv_transpose2d(1, 1, 3)
                    .padding(1)
                    .padding_mode(mode)
            ),
            ConvError::TransposedUnsupported {
                what: "the zeros padding mode"
            }
        );
        assert!(matches!(
            build_err(ConvSpec::conv_transpose1d(1, 1, 3).padding_mode(mode)),
            ConvError::TransposedUnsupported { .. }
        ));
    }
    for rule in [Padding::Same, Padding::SameTf] {
        assert_eq!(
            build_err(ConvSpec::conv_transpose2d(1, 1, 3).padding_rule(rule)),
            ConvError::TransposedUnsupported {
                what: "explicit or 'valid' padding"
            }
        );
    }
    assert!(ConvSpec::conv_transpose2d(1, 1, 3)
        .padding_rule(Padding::Valid)
        .build()
        .is_ok());
}

#[test]
fn error_output_padding_on_direct() {
    assert_eq!(
        build_err(ConvSpec::conv2d(1, 1, 3).stride(2).output_padding(1)),
        ConvError::OutputPaddingOnDirect
    );
    assert_eq!(
        build_err(ConvSpec::conv1d(1, 1, 3).output_size(5)),
        ConvError::OutputPaddingOnDirect
    );
}

#[test]
fn error_border_padding_too_large() {
    // reflect: pad < size; pad = size − 1 is the largest allowed.
    let reflect = |p: usize| {
        ConvSpec::conv2d(1, 1, 1)
            .padding(p)
            .padding_mode(PaddingMode::Reflect)
            .build()
            .unwrap()
    };
    assert!(reflect(3).geometry([1, 1, 4, 4]).is_ok());
    assert_eq!(
        reflect(4).geometry([1, 1, 4, 5]).unwrap_err(),
        ConvError::PaddingTooLarge {
            mode: "reflect",
            axis: "height",
            pad: 4,
            size: 4,
            limit_desc: "the padding"
        }
    );
    // circular: pad ≤ size.
    let circular = |sides: [usize; 4]| {
        ConvSpec::conv2d(1, 1, 1)
            .padding_sides(sides)
            .padding_mode(PaddingMode::Circular)
            .build()
            .unwrap()
    };
    assert!(circular([4, 4, 5, 0]).geometry([1, 1, 4, 5]).is_ok());
    assert_eq!(
        circular([0, 0, 0, 6]).geometry([1, 1, 4, 5]).unwrap_err(),
        ConvError::PaddingTooLarge {
            mode: "circular",
            axis: "width",
            pad: 6,
            size: 5,
            limit_desc: "or equal to the padding"
        }
    );
    // replicate and zeros have no limit.
    for mode in [PaddingMode::Replicate, PaddingMode::Zeros] {
        let l = ConvSpec::conv2d(1, 1, 1)
            .padding(9)
            .padding_mode(mode)
            .build()
            .unwrap();
        assert_eq!(l.output_hw(1, 1).unwrap(), [19, 19]);
    }
    // 'same' resolves to pads that can exceed a small input, too.
    let l = ConvSpec::conv1d(1, 1, 5)
        .padding_rule(Padding::Same)
        .padding_mode(PaddingMode::Reflect)
        .build()
        .unwrap();
    assert!(matches!(
        l.geometry([1, 1, 1, 2]),
        Err(ConvError::PaddingTooLarge { .. })
    ));
    assert!(l.geometry([1, 1, 1, 3]).is_ok());
}

#[test]
fn error_kernel_larger_than_padded_input() {
    let l = ConvSpec::conv2d(1, 1, [3, 5])
        .padding([0, 1])
        .build()
        .unwrap();
    assert_eq!(
        l.geometry([1, 1, 2, 9]).unwrap_err(),
        ConvError::KernelTooLarge {
            axis: "height",
            extent: 3,
            padded: 2
        }
    );
    assert_eq!(
        l.geometry([1, 1, 3, 2]).unwrap_err(),
        ConvError::KernelTooLarge {
            axis: "width",
            extent: 5,
            padded: 4
        }
    );
    assert!(l.geometry([1, 1, 3, 3]).is_ok());
    // Dilation counts: 3 taps at d = 3 span 7.
    let d = ConvSpec::conv2d(1, 1, 3).dilation(3).build().unwrap();
    assert_eq!(
        d.geometry([1, 1, 6, 7]).unwrap_err(),
        ConvError::KernelTooLarge {
            axis: "height",
            extent: 7,
            padded: 6
        }
    );
}

#[test]
fn error_transposed_output_cropped_away() {
    let l = ConvSpec::conv_transpose2d(1, 1, 1)
        .padding(1)
        .build()
        .unwrap();
    assert_eq!(
        l.geometry([1, 1, 1, 1]).unwrap_err(),
        ConvError::EmptyOutput {
            axis: "height",
            size: -1
        }
    );
    let l = ConvSpec::conv_transpose2d(1, 1, 3)
        .padding([0, 2])
        .build()
        .unwrap();
    assert_eq!(
        l.geometry([1, 1, 1, 1]).unwrap_err(),
        ConvError::EmptyOutput {
            axis: "width",
            size: -1
        }
    );
}

#[test]
fn error_overflowing_sizes() {
    let o = |what| ConvError::Overflow { what };
    let huge = usize::MAX / 2;
    // A kernel of usize::MAX/2 with dilation 3: the dilated extent overflows.
    assert_eq!(
        build_err(ConvSpec::conv2d(1, 1, [1, huge]).dilation(3)),
        o("dilated kernel extent")
    );
    // kh·kw overflows the weight size.
    assert_eq!(build_err(ConvSpec::conv2d(1, 1, huge)), o("weight size"));
    assert_eq!(
        build_err(ConvSpec::conv2d(1 << 33, 1 << 33, 1)),
        o("weight size")
    );
    // Padded input size.
    let l = ConvSpec::conv2d(1, 1, 1).padding(huge).build().unwrap();
    assert_eq!(
        l.geometry([1, 1, huge, 1]).unwrap_err(),
        o("padded input size")
    );
    // Tensor sizes: N·C·H·W.
    let l = ConvSpec::conv2d(1, 1, 1).build().unwrap();
    assert_eq!(
        l.geometry([1 << 40, 1, 1 << 30, 1]).unwrap_err(),
        o("input size")
    );
    // Transposed output size (i − 1)·s.
    let t = ConvSpec::conv_transpose2d(1, 1, 1)
        .stride(1 << 40)
        .build()
        .unwrap();
    assert_eq!(
        t.geometry([1, 1, 1 << 30, 1]).unwrap_err(),
        o("transposed output size")
    );
    // Transposed output N·K·OH·OW overflows while the input does not.
    let t = ConvSpec::conv_transpose2d(1, 1, 1)
        .stride(1 << 20)
        .build()
        .unwrap();
    assert_eq!(
        t.geometry([1, 1, 1 << 22, 1 << 22]).unwrap_err(),
        o("output size")
    );
    // MACs in u64.
    let l = ConvSpec::conv2d(1, 1 << 20, [1 << 12, 1 << 12])
        .build()
        .unwrap();
    assert_eq!(
        l.geometry([1 << 20, 1, 1 << 12, 1 << 12]).unwrap_err(),
        o("multiply-accumulate count")
    );
}

#[test]
fn error_one_dimensional_with_height_parameters() {
    let od = |what| ConvError::OneDimensional { what };
    let base = ConvSpec::conv1d(1, 1, 3);
    assert_eq!(
        build_err(ConvSpec {
            kernel: [2, 3],
            ..base
        }),
        od("kernel")
    );
    assert_eq!(
        build_err(ConvSpec {
            stride: [2, 1],
            ..base
        }),
        od("stride")
    );
    assert_eq!(
        build_err(ConvSpec {
            dilation: [2, 1],
            ..base
        }),
        od("dilation")
    );
    assert_eq!(build_err(base.padding_sides([1, 0, 0, 0])), od("padding"));
    assert_eq!(build_err(base.padding_sides([0, 1, 2, 2])), od("padding"));
    let tb = ConvSpec::conv_transpose1d(1, 1, 3).stride(2);
    assert_eq!(
        build_err(ConvSpec {
            output_padding: [1, 0],
            ..tb
        }),
        od("output_padding")
    );
    assert_eq!(
        build_err(ConvSpec {
            output_size: Some([2, 7]),
            ..tb
        }),
        od("output_size")
    );
    // The builder maps 1D scalars onto the width axis, so none of these reach the height.
    let ok = base
        .stride([5, 2])
        .dilation([7, 1])
        .padding([3, 1])
        .build()
        .unwrap();
    assert_eq!(ok.stride(), [1, 2]);
    assert_eq!(ok.dilation(), [1, 1]);
    assert_eq!(ok.padding(), Padding::Explicit([0, 0, 1, 1]));
    // An input with height ≠ 1.
    assert_eq!(ok.geometry([1, 1, 2, 9]).unwrap_err(), od("input height"));
}

#[test]
fn error_channel_mismatch() {
    let l = ConvSpec::conv2d(3, 4, 3).build().unwrap();
    assert_eq!(
        l.geometry([1, 2, 8, 8]).unwrap_err(),
        ConvError::ChannelMismatch {
            got: 2,
            expected: 3
        }
    );
    let x = Array4::<f32>::zeros((1, 4, 8, 8));
    let w = Array4::<f32>::zeros((4, 3, 3, 3));
    assert_eq!(
        reference::forward(&l, x.view(), w.view(), None).unwrap_err(),
        ConvError::ChannelMismatch {
            got: 4,
            expected: 3
        }
    );
}

#[test]
fn error_operand_shapes() {
    let l = ConvSpec::conv2d(4, 6, [3, 2]).groups(2).build().unwrap();
    let x = Array4::<f32>::zeros((2, 4, 5, 5));
    let w = Array4::<f32>::zeros((6, 2, 3, 2));
    let b = Array1::<f32>::zeros(6);
    assert!(reference::forward(&l, x.view(), w.view(), Some(b.view())).is_ok());
    // Weight: (K, C/g, kh, kw) exactly; the transposed layout is wrong here.
    let wt = Array4::<f32>::zeros((4, 3, 3, 2));
    assert_eq!(
        reference::forward(&l, x.view(), wt.view(), None).unwrap_err(),
        ConvError::ShapeMismatch {
            what: "weight",
            got: vec![4, 3, 3, 2],
            expected: vec![6, 2, 3, 2]
        }
    );
    // Bias: K values, and only for a layer with a bias.
    let b5 = Array1::<f32>::zeros(5);
    assert_eq!(
        reference::forward(&l, x.view(), w.view(), Some(b5.view())).unwrap_err(),
        ConvError::ShapeMismatch {
            what: "bias",
            got: vec![5],
            expected: vec![6]
        }
    );
    let nb = ConvSpec::conv2d(4, 6, [3, 2])
        .groups(2)
        .bias(false)
        .build()
        .unwrap();
    assert!(matches!(
        reference::forward(&nb, x.view(), w.view(), Some(b.view())),
        Err(ConvError::Bias(_))
    ));
    // grad_output must have the output shape (2, 6, 3, 4).
    let dy = Array4::<f32>::zeros((2, 6, 3, 3));
    assert_eq!(
        reference::backward(&l, x.view(), w.view(), dy.view(), GradRequest::all()).unwrap_err(),
        ConvError::ShapeMismatch {
            what: "grad_output",
            got: vec![2, 6, 3, 3],
            expected: vec![2, 6, 3, 4]
        }
    );
    let dy = Array4::<f32>::zeros((2, 6, 3, 4));
    assert!(reference::backward(&l, x.view(), w.view(), dy.view(), GradRequest::all()).is_ok());
    // Input rank.
    assert_eq!(
        reference::check_operands(&l, &[2, 4, 5], &[6, 2, 3, 2], None).unwrap_err(),
        ConvError::RankMismatch {
            what: "input",
            got: 3,
            expected: 4
        }
    );
    let x3 = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 4, 5]));
    assert_eq!(
        reference::view4(x3.view(), "input").unwrap_err(),
        ConvError::RankMismatch {
            what: "input",
            got: 3,
            expected: 4
        }
    );
    // The 1D entry points need a 1D spec.
    let x1 = Array3::<f32>::zeros((1, 4, 5));
    let w1 = Array3::<f32>::zeros((6, 2, 2));
    assert!(matches!(
        reference::forward_1d(&l, x1.view(), w1.view(), None),
        Err(ConvError::Unsupported(_))
    ));
    // 1D weight shape.
    let l1 = ConvSpec::conv1d(4, 6, 3).groups(2).build().unwrap();
    assert_eq!(
        reference::forward_1d(&l1, x1.view(), w1.view(), None).unwrap_err(),
        ConvError::ShapeMismatch {
            what: "weight",
            got: vec![6, 2, 1, 2],
            expected: vec![6, 2, 1, 3]
        }
    );
}

#[test]
fn errors_have_one_line_messages() {
    let errs = [
        build_err(ConvSpec::conv2d(0, 1, 3)),
        build_err(ConvSpec::conv2d(6, 4, 3).groups(4)),
        build_err(
            ConvSpec::conv2d(1, 1, 3)
                .stride(2)
                .padding_rule(Padding::Same),
        ),
        build_err(ConvSpec::conv_transpose2d(1, 1, 3).padding_mode(PaddingMode::Reflect)),
        build_err(ConvSpec::conv2d(1, 1, 3).output_padding(1)),
        build_err(ConvSpec::conv_transpose2d(1, 1, 3).output_padding(1)),
        build_err(ConvSpec::conv2d(1, 1, usize::MAX / 2)),
        build_err(ConvSpec::conv1d(1, 1, 3).padding_sides([1, 0, 0, 0])),
    ];
    for e in errs {
        let msg = e.to_string();
        assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: bugs these tests found, kept as named cases
// ---------------------------------------------------------------------------------------------

/// `param_count` added the bias to a weight count that already filled `usize`: it panicked in
/// debug builds and wrapped to a tiny number in release. Validation now rejects the layer.
#[test]
fn regression_param_count_overflow() {
    let big = 1usize << (usize::BITS - 1);
    assert_eq!(
        build_err(ConvSpec::conv2d(1, big, 1)),
        ConvError::Overflow {
            what: "parameter count"
        }
    );
    let no_bias = ConvSpec::conv2d(1, big, 1).bias(false).build().unwrap();
    assert_eq!(no_bias.param_count(), big);
    let t = ConvSpec::conv_transpose2d(big, 1, 1).build();
    assert_eq!(t.map(|v| v.param_count()).ok(), Some(big + 1));
}

/// `Geometry::equivalent` computed the direct convolution's signed padding with `as i64`
/// casts: a dilated extent or padding above `i64::MAX` panicked in debug builds and gave a
/// wrong padding in release. Such layers are now rejected by `geometry`.
#[test]
fn regression_equivalent_padding_beyond_i64() {
    let o = ConvError::Overflow {
        what: "equivalent direct convolution padding",
    };
    // Dilated extent usize::MAX, cropped to 5 columns on the right: the left padding
    // d(k−1) − 0 of the equivalent direct convolution does not fit in i64.
    let t = ConvSpec::conv_transpose2d(1, 1, [1, usize::MAX])
        .padding_sides([0, 0, 0, usize::MAX - 5])
        .bias(false)
        .build()
        .unwrap();
    assert_eq!(t.geometry([1, 1, 1, 1]).unwrap_err(), o);
    // A crop of more than i64::MAX rows that still leaves an output.
    let t = ConvSpec::conv_transpose2d(1, 1, 1)
        .stride([1 << 62, 1])
        .padding_sides([(1 << 63) + (1 << 62) - 10, 0, 0, 0])
        .build()
        .unwrap();
    assert_eq!(t.geometry([1, 1, 4, 1]).unwrap_err(), o);
    // Just inside the limit it works and is exact: extent 2^63 − 1, cropped to one column.
    let t = ConvSpec::conv_transpose2d(1, 1, [1, 1 << 62])
        .dilation([1, 2])
        .padding_sides([0, 0, (1 << 62) - 1, (1 << 62) - 1])
        .bias(false)
        .build()
        .unwrap();
    let g = t.geometry([1, 1, 1, 1]).unwrap();
    assert_eq!(g.output_shape(), [1, 1, 1, 1]);
    let Equivalent::Direct { padding, .. } = g.equivalent() else {
        panic!("direct")
    };
    assert_eq!(padding, [0, 0, (1 << 62) - 1, (1 << 62) - 1]);
}

/// A layer with a one-element input and output could still need a padded input of 2^63
/// cells (dilation i64::MAX, TensorFlow SAME): `geometry` accepted it and the reference
/// panicked with "capacity overflow" materialising the padding. Likewise an output whose f64
/// buffer exceeds `isize::MAX` bytes. Both are now `Overflow` errors from `geometry`.
#[test]
fn regression_padded_input_and_output_allocations() {
    let l = ConvSpec::conv1d(1, 1, 2)
        .stride(4)
        .dilation(i64::MAX as usize)
        .padding_rule(Padding::SameTf)
        .padding_mode(PaddingMode::Replicate)
        .bias(false)
        .build()
        .unwrap();
    assert_eq!(
        l.geometry([1, 1, 1, 1]).unwrap_err(),
        ConvError::Overflow {
            what: "padded input size"
        }
    );
    let x = Array3::<f32>::zeros((1, 1, 1));
    let w = Array3::<f32>::zeros((1, 1, 2));
    assert!(reference::forward_1d(&l, x.view(), w.view(), None).is_err());
    // 2^61 + 1 output rows: addressable as elements, not as f64 bytes.
    let t = ConvSpec::conv_transpose2d(1, 1, 1)
        .stride([1 << 61, 1])
        .bias(false)
        .build()
        .unwrap();
    assert_eq!(
        t.geometry([1, 1, 2, 1]).unwrap_err(),
        ConvError::Overflow {
            what: "output size"
        }
    );
}

/// The reachable range in a `BadOutputSize` error was cast with `as usize` from i128, so a
/// maximum above `usize::MAX` showed up truncated (as 0).
#[test]
fn regression_bad_output_size_range_not_truncated() {
    let big = 1usize << (usize::BITS - 1);
    let t = ConvSpec::conv_transpose2d(1, 1, 1)
        .stride([big, 1])
        .output_size([1, 2])
        .build()
        .unwrap();
    assert_eq!(
        t.geometry([1, 1, 2, 2]).unwrap_err(),
        ConvError::BadOutputSize {
            axis: "height",
            requested: 1,
            min: big + 1,
            max: usize::MAX
        }
    );
}

/// `spatially_separable_params` multiplied kh·kw unchecked (a debug-build panic for huge
/// kernels); it now saturates, since no such kernel can be built.
#[test]
fn regression_spatially_separable_params_saturate() {
    assert_eq!(
        arith::spatially_separable_params([usize::MAX, 2]),
        (usize::MAX, usize::MAX)
    );
    assert_eq!(
        arith::spatially_separable_params([1 << 40, 1 << 40]).0,
        usize::MAX
    );
}

/// The receptive field's start offset cast paddings and jumps with `as i64`, so a padding
/// above `i64::MAX` flipped the sign of the start; it now saturates (stays hugely negative).
#[test]
fn regression_receptive_field_start_saturates() {
    let l = ConvSpec::conv2d(1, 1, 1).build().unwrap();
    let rf = ReceptiveField::identity()
        .then(&l, [usize::MAX, 3])
        .unwrap();
    assert!(rf.start[0] <= -i64::MAX, "{:?}", rf.start);
    assert_eq!(rf.start[1], -3);
}

/// `ValidSpec::pytorch()` returned early for per-side padding and TensorFlow SAME, dropping
/// dilation, groups, bias, output_padding and the border mode; 1D layers got a 4-tuple
/// `F.pad`, and a transposed layer's per-side crop was described as an input pad. (All 460
/// golden layers' strings were checked to build the matching module in PyTorch.)
#[test]
fn regression_pytorch_expression_keeps_every_argument() {
    let p = |s: ConvSpec| s.build().unwrap().pytorch();
    assert_eq!(
        p(ConvSpec::conv2d(3, 64, 7).stride(2).padding(3)),
        "nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3)"
    );
    assert_eq!(
        p(ConvSpec::conv2d(4, 6, 3)
            .padding_sides([1, 2, 3, 4])
            .dilation(2)
            .groups(2)
            .bias(false)
            .padding_mode(PaddingMode::Reflect)),
        "nn.Conv2d(4, 6, kernel_size=3, padding=0, groups=2, bias=False, dilation=2)  \
         # preceded by F.pad(x, (3, 4, 1, 2), mode='reflect')"
    );
    assert_eq!(
        p(ConvSpec::conv1d(2, 3, 2)
            .padding_sides([0, 0, 0, 1])
            .padding_mode(PaddingMode::Circular)),
        "nn.Conv1d(2, 3, kernel_size=2, padding=0)  # preceded by F.pad(x, (0, 1), mode='circular')"
    );
    assert_eq!(
        p(ConvSpec::conv2d(2, 2, 3)
            .stride(2)
            .groups(2)
            .padding_rule(Padding::SameTf)
            .padding_mode(PaddingMode::Replicate)),
        "nn.Conv2d(2, 2, kernel_size=3, stride=2, groups=2)  \
         # TensorFlow SAME: pad with F.pad(x, ..., mode='replicate') first (depends on input size)"
    );
    assert_eq!(
        p(ConvSpec::conv_transpose2d(2, 3, 3)
            .stride(2)
            .padding_sides([2, 0, 1, 0])
            .output_padding(1)),
        "nn.ConvTranspose2d(2, 3, kernel_size=3, stride=2, padding=0, output_padding=1)  \
         # then crop (1, 0, 2, 0) (left, right, top, bottom) from the output"
    );
    assert_eq!(
        p(ConvSpec::conv_transpose1d(2, 3, 4).stride(3).padding(1).output_size(11)),
        "nn.ConvTranspose1d(2, 3, kernel_size=4, stride=3, padding=1)  # called with output_size=[11]"
    );
    assert_eq!(
        p(ConvSpec::conv2d(2, 2, 3)
            .padding(1)
            .padding_mode(PaddingMode::Circular)),
        "nn.Conv2d(2, 2, kernel_size=3, padding=1, padding_mode='circular')"
    );
}

/// `SeparableParams::separable()` added the depthwise and pointwise counts unchecked: with
/// 2^63 − 1 channels and a 2×1 kernel each half fits in `usize` but their sum does not (a
/// debug-build panic, a wrapped count in release). The comparison is now an `Overflow` error.
#[test]
fn regression_depthwise_separable_sum_overflow() {
    let c = i64::MAX as usize;
    assert_eq!(
        arith::depthwise_separable_params(c, 1, [2, 1], 1).unwrap_err(),
        ConvError::Overflow {
            what: "depthwise separable parameter count"
        }
    );
    let p = arith::depthwise_separable_params(c, 1, [1, 1], 1).unwrap();
    assert_eq!(p.separable(), 2 * c);
}
