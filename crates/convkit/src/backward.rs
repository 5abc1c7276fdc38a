//! The backward pass on the fast engine: every gradient is itself a convolution.
//!
//! * grad input of a direct conv is the transposed conv of `dy` with the same weights. At
//!   stride 1 with zero padding that is a direct conv with flipped weights, planned like any
//!   forward layer (Winograd for 3×3); otherwise the stride-phase [`Subpixel`] decomposition
//!   runs it, so no inserted zero is multiplied; padding modes other than zeros fold the
//!   padded gradient back with the adjoint of the pad.
//! * grad input of a transposed conv is the direct conv of `dy` with the same weights.
//! * grad weight is a correlation of the input with `dy` over the batch and space. With the
//!   batch and channel axes swapped it is a direct convolution whose *kernel* is `dy`
//!   (stride and dilation exchange roles); [`wgrad`] runs it as rank-OW GEMM updates on the
//!   microkernels, reading the input in place (NHWC) — deterministic, as every engine path is.
//! * depthwise layers use the depthwise kernel's own backward ([`Depthwise::backward`]).
//!
//! The reference ([`crate::reference::backward`]) stays the oracle; `Algo::Reference` runs it.

use crate::border::{self, Border};
use crate::error::{ConvError, Result};
use crate::geometry::{Equivalent, Geometry};
use crate::kernels::depthwise::Depthwise;
use crate::kernels::gemm::Microkernel;
use crate::kernels::subpixel::Subpixel;
use crate::kernels::{wgrad, Isa};
use crate::plan::{self, Algo, Plan, Weights};
use crate::reference::{self, GradRequest, Gradients};
use crate::spec::{ConvSpec, PaddingMode, ValidSpec};
use ndarray::{Array1, Array4, ArrayView4, Axis};

/// Computes the requested gradients of a layer given `dy = dL/dy`.
///
/// `algo` = [`Algo::Reference`] runs the f64 oracle; anything else runs the fast engine
/// (per-gradient algorithm chosen here).
pub fn backward(
    spec: &ValidSpec,
    x: ArrayView4<f32>,
    w: ArrayView4<f32>,
    dy: ArrayView4<f32>,
    want: GradRequest,
    algo: Algo,
) -> Result<Gradients<f32>> {
    if spec.is_depthwise() && algo != Algo::Reference {
        // One parallel loop, run by the task executor from whatever thread calls (inline at
        // one thread): no hand-off to a worker.
        return backward_on_pool(spec, x, w, dy, want, algo);
    }
    crate::plan::on_pool(|| backward_on_pool(spec, x, w, dy, want, algo))
}

/// [`backward`] on a worker of the pool (a depthwise layer's on any thread).
fn backward_on_pool(
    spec: &ValidSpec,
    x: ArrayView4<f32>,
    w: ArrayView4<f32>,
    dy: ArrayView4<f32>,
    want: GradRequest,
    algo: Algo,
) -> Result<Gradients<f32>> {
    let geom = reference::check_operands(spec, x.shape(), w.shape(), None)?;
    reference::check_grad_output(&geom, dy.shape())?;
    if algo == Algo::Reference {
        return reference::backward(spec, x, w, dy, want);
    }
    let isa = Isa::best();
    if spec.is_depthwise() {
        return depthwise(&geom, x, w, dy, want, isa);
    }
    // Grad input and grad weight share nothing but their operands: run them side by side, so
    // the idle tail of one gradient's parallel region is filled with the other's tasks (each
    // kernel's result depends only on its own task decomposition, never on the schedule).
    // At 2 threads, medians of 4 alternating `convkit bench` rounds, sequential → joined:
    // 3×3 c64 56² 1.81 → 1.49 ms, 1×1 c256 1.04 → 0.87, ASPP 7.6 → 6.7, DCGAN 2.0 → 1.87.
    let gi = || -> Result<Option<Array4<f32>>> {
        if !want.input {
            return Ok(None);
        }
        Ok(Some(if spec.is_transposed() {
            grad_input_transposed(&geom, x, w, dy)?
        } else {
            match grad_input_flipped(&geom, w, dy)? {
                Some(dx) => dx,
                None => grad_input_direct(&geom, w, dy, isa)?,
            }
        }))
    };
    let gw = || -> Result<Option<Array4<f32>>> {
        if !want.weight {
            return Ok(None);
        }
        Ok(Some(if spec.is_transposed() {
            grad_weight_transposed(&geom, x, dy)?
        } else {
            grad_weight_direct(&geom, x, dy)?
        }))
    };
    // Outside the pool (one thread: `on_pool` ran us here) a join would hand both to the
    // pool's worker; one after the other is the same work without the wake-ups.
    let (input, weight) = if rayon::current_thread_index().is_none() {
        (gi(), gw())
    } else {
        rayon::join(gi, gw)
    };
    let (input, weight) = (input?, weight?);
    let bias = want.bias.then(|| grad_bias(dy));
    Ok(Gradients {
        input,
        weight,
        bias,
    })
}

/// dL/db: the sum of `dy` over batch and space, accumulated in f64 in a fixed order.
fn grad_bias(dy: ArrayView4<f32>) -> Array1<f32> {
    Array1::from_iter(
        dy.axis_iter(Axis(1))
            .map(|plane| plane.iter().map(|&v| v as f64).sum::<f64>() as f32),
    )
}

/// The array in standard (C-contiguous) layout: borrowed when it already is, copied otherwise.
fn contiguous(a: ArrayView4<'_, f32>) -> ndarray::CowArray<'_, f32, ndarray::Ix4> {
    if a.is_standard_layout() {
        ndarray::CowArray::from(a)
    } else {
        ndarray::CowArray::from(a.as_standard_layout().into_owned())
    }
}

/// The elements of a standard-layout array, in order.
fn flat<'a>(a: &'a ndarray::CowArray<'_, f32, ndarray::Ix4>) -> &'a [f32] {
    a.as_slice().expect("standard layout is contiguous")
}

fn depthwise(
    geom: &Geometry,
    x: ArrayView4<f32>,
    w: ArrayView4<f32>,
    dy: ArrayView4<f32>,
    want: GradRequest,
    isa: Isa,
) -> Result<Gradients<f32>> {
    let dw = Depthwise::new(geom, isa)?;
    let mut gx = want.input.then(|| Array4::<f32>::zeros(geom.input_shape()));
    let mut gw = want
        .weight
        .then(|| Array4::<f32>::zeros(geom.weight_shape()));
    let mut gb = want.bias.then(|| Array1::<f32>::zeros(geom.k));
    dw.backward(
        flat(&contiguous(x)),
        flat(&contiguous(w)),
        flat(&contiguous(dy)),
        gx.as_mut().map(|a| a.as_slice_mut().expect("fresh array")),
        gw.as_mut().map(|a| a.as_slice_mut().expect("fresh array")),
        gb.as_mut().map(|b| b.as_slice_mut().expect("fresh array")),
    )?;
    Ok(Gradients {
        input: gx,
        weight: gw,
        bias: gb,
    })
}

/// The transposed layer that maps `dy` back to the (padded) input of a direct layer.
fn adjoint_spec(geom: &Geometry, padded: bool) -> Result<ValidSpec> {
    let s = &geom.spec;
    let Equivalent::Transposed { output_padding, .. } = geom.equivalent() else {
        unreachable!("a direct layer's equivalent is transposed")
    };
    let t = ConvSpec::conv_transpose2d(geom.k, geom.c, s.kernel())
        .stride(s.stride())
        .dilation(s.dilation())
        .groups(s.groups())
        .bias(false)
        .output_padding(output_padding);
    let t = if padded {
        // Gradient w.r.t. the padded input: no cropping; the padding is folded back after.
        let [pt, pb, pl, pr] = geom.pad;
        let rows = geom.h + pt + pb;
        let cols = geom.w + pl + pr;
        t.output_size([rows, cols])
    } else {
        t.padding_sides(geom.pad)
    };
    t.build()
}

/// dL/dx of a stride-1 direct conv with zero padding, as a forward convolution the planner
/// runs like any other (Winograd, implicit GEMM, the 1×1 GEMM): the transposed conv of `dy`
/// at stride 1 is the direct conv of `dy` with the weights flipped in space and their channel
/// axes swapped per group, padded `d·(k−1) − p` per side. `None` where that padding would be
/// negative or the shapes do not come back (the sub-pixel path handles those). 3×3 64 → 64
/// on 56×56 at one thread: grad input 3.1–3.9 ms on the sub-pixel direct kernel, 2.2–2.8 on
/// Winograd; ASPP 3×3 dilation 6, 256 channels on 32×32: 13.8–17.3 → 12.0–13.1 ms.
fn grad_input_flipped(
    geom: &Geometry,
    w: ArrayView4<f32>,
    dy: ArrayView4<f32>,
) -> Result<Option<Array4<f32>>> {
    let s = &geom.spec;
    let ([kh, kw], [dh, dw]) = (s.kernel(), s.dilation());
    let [pt, pb, pl, pr] = geom.pad;
    let (eh, ew) = (dh * (kh - 1), dw * (kw - 1));
    let folded = s.padding_mode() != PaddingMode::Zeros && geom.pad != [0; 4];
    if s.stride() != [1, 1] || folded || pt.max(pb) > eh || pl.max(pr) > ew {
        return Ok(None);
    }
    let groups = s.groups();
    let spec = ConvSpec::conv2d(geom.k, geom.c, [kh, kw])
        .dilation([dh, dw])
        .groups(groups)
        .padding_sides([eh - pt, eh - pb, ew - pl, ew - pr])
        .bias(false)
        .build()?;
    match spec.geometry(geom.output_shape()) {
        Ok(g) if g.output_shape() == geom.input_shape() => {}
        _ => return Ok(None),
    }
    // The adjoint's weights w'[g·Cg + c, k, i, j] = w[g·Kg + k, c, kh−1−i, kw−1−j], packed
    // straight from `w` by the GEMM engines.
    let (n, _, oh, ow) = dy.dim();
    let plan = Plan::with_weights(
        &spec,
        [n, geom.k, oh, ow],
        Weights::Adjoint(w),
        None,
        Algo::Auto,
        Isa::best(),
    )?;
    let mut dx = Array4::<f32>::zeros(plan.geometry().output_shape());
    plan.run(dy, dx.view_mut())?;
    Ok(Some(dx))
}

/// dL/dx of a direct conv: the transposed conv of `dy` (stride phases, no zeros multiplied).
fn grad_input_direct(
    geom: &Geometry,
    w: ArrayView4<f32>,
    dy: ArrayView4<f32>,
    isa: Isa,
) -> Result<Array4<f32>> {
    let mode = geom.spec.padding_mode();
    let folded = mode != PaddingMode::Zeros && geom.pad != [0; 4];
    let t = adjoint_spec(geom, folded)?;
    let tg = t.geometry(geom.output_shape())?;
    let mut out = Array4::<f32>::zeros(tg.output_shape());
    Subpixel::new(&tg, w, None, isa)?.run(dy, out.view_mut())?;
    if !folded {
        return Ok(out);
    }
    let back = border::pad_adjoint(
        out.mapv(f64::from).view(),
        geom.pad,
        Border::from(mode),
        geom.h,
        geom.w,
    );
    Ok(back.mapv(|v| v as f32))
}

/// dL/dx of a transposed conv: the direct conv of `dy` with the same weights.
fn grad_input_transposed(
    geom: &Geometry,
    x: ArrayView4<f32>,
    w: ArrayView4<f32>,
    dy: ArrayView4<f32>,
) -> Result<Array4<f32>> {
    let s = &geom.spec;
    let d = ConvSpec::conv2d(geom.k, geom.c, s.kernel())
        .stride(s.stride())
        .dilation(s.dilation())
        .groups(s.groups())
        .padding_sides(geom.pad)
        .bias(false)
        .build()?;
    match d.geometry(geom.output_shape()) {
        Ok(dg) if dg.output_shape() == geom.input_shape() => {
            plan::forward(&d, dy, w, None, Algo::Auto)
        }
        // output_padding ≥ stride (allowed when below the dilation) leaves the direct form a
        // row short or long; such layers are rare, the oracle handles them.
        _ => Ok(reference::backward(
            s,
            x,
            w,
            dy,
            GradRequest {
                input: true,
                ..Default::default()
            },
        )?
        .input
        .expect("requested")),
    }
}

/// The weight-gradient correlation ([`wgrad::correlate`]) on the microkernel that wastes
/// least on padding the channel counts to whole tiles (64 channels fill 67 % of two 48-wide
/// AVX-512 tiles, 100 % of two 32-wide ones); narrower ISA levels are charged for their
/// lower throughput.
fn correlate(
    a: ArrayView4<f32>,
    b: ArrayView4<f32>,
    pad: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
) -> Result<Array4<f32>> {
    let (pixels, taps) = (b.len() / b.shape()[1].max(1), kernel[0] * kernel[1]);
    let cost = |u: &Microkernel| {
        let slowdown = match u.isa {
            Isa::Avx512 => 1.0,
            Isa::Avx2 => 1.25,
            Isa::Scalar => 8.0,
        };
        slowdown * wgrad::padded_macs(pixels, a.shape()[1], b.shape()[1], groups, taps, *u)
    };
    let ukr = Microkernel::available()
        .into_iter()
        .min_by(|x, y| cost(x).total_cmp(&cost(y)))
        .ok_or_else(|| ConvError::Unsupported("no microkernel for this CPU".into()))?;
    wgrad::correlate(a, b, pad, kernel, stride, dilation, groups, ukr)
}

/// Input channels per group below which the weight gradient runs as per-plane dot products
/// (the GEMM's NR-wide panels would be mostly padding).
const NARROW_GROUP: usize = 16;

/// dL/dw of a direct conv: correlate the (padded) input with `dy`.
fn grad_weight_direct(
    geom: &Geometry,
    x: ArrayView4<f32>,
    dy: ArrayView4<f32>,
) -> Result<Array4<f32>> {
    let s = &geom.spec;
    if s.groups() > 1 && geom.c / s.groups() < NARROW_GROUP {
        // The same spatial layer as a depthwise one over the input channels.
        let dws = ConvSpec::conv2d(geom.c, geom.c, s.kernel())
            .stride(s.stride())
            .dilation(s.dilation())
            .padding_sides(geom.pad)
            .padding_mode(s.padding_mode())
            .groups(geom.c)
            .bias(false)
            .build()?;
        let dg = dws.geometry(geom.input_shape())?;
        let mut out = Array4::<f32>::zeros(geom.weight_shape());
        Depthwise::new(&dg, Isa::best())?.grouped_weight_grad(
            flat(&contiguous(x)),
            flat(&contiguous(dy)),
            geom.k,
            s.groups(),
            out.as_slice_mut().expect("fresh array"),
        )?;
        return Ok(out);
    }
    let mode = s.padding_mode();
    if mode != PaddingMode::Zeros && geom.pad != [0; 4] {
        let xp = border::pad(x, geom.pad, Border::from(mode));
        return correlate(
            xp.view(),
            dy,
            [0; 4],
            s.kernel(),
            s.stride(),
            s.dilation(),
            s.groups(),
        );
    }
    correlate(
        x,
        dy,
        geom.pad,
        s.kernel(),
        s.stride(),
        s.dilation(),
        s.groups(),
    )
}

/// dL/dw of a transposed conv: `Σ x[n,c,iy,ix] · dy_pad[n,k,iy·s+ky·d, ix·s+kx·d]`, the same
/// correlation with the roles of input and output exchanged (dy padded by the cropped rows).
fn grad_weight_transposed(
    geom: &Geometry,
    x: ArrayView4<f32>,
    dy: ArrayView4<f32>,
) -> Result<Array4<f32>> {
    let s = &geom.spec;
    let ext = s.dilated_kernel();
    let [pt, pb, pl, pr] = geom.pad;
    // Full (uncropped) extent (i−1)·s + d(k−1) + 1 must be covered after padding `dy`.
    let full_h = (geom.h - 1) * s.stride()[0] + ext[0];
    let full_w = (geom.w - 1) * s.stride()[1] + ext[1];
    let after_h = full_h.saturating_sub(geom.oh + pt);
    let after_w = full_w.saturating_sub(geom.ow + pl);
    let _ = (pb, pr);
    let t = correlate(
        dy,
        x,
        [pt, after_h, pl, after_w],
        s.kernel(),
        s.stride(),
        s.dilation(),
        s.groups(),
    )?;
    if t.shape() != geom.weight_shape() {
        return Err(ConvError::ShapeMismatch {
            what: "grad_weight",
            got: t.shape().to_vec(),
            expected: geom.weight_shape().to_vec(),
        });
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Padding;
    use crate::testutil::pseudo;
    use ndarray::Array4;
    use proptest::prelude::*;

    fn close(what: &str, got: &Array4<f32>, want: &Array4<f32>) -> std::result::Result<(), String> {
        if got.shape() != want.shape() {
            return Err(format!(
                "{what}: shape {:?} vs {:?}",
                got.shape(),
                want.shape()
            ));
        }
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (a, e)) in got.iter().zip(want.iter()).enumerate() {
            if (a - e).abs() > 2e-5 * scale {
                return Err(format!("{what}: element {i}: {a} vs {e} (scale {scale})"));
            }
        }
        Ok(())
    }

    fn check(spec: ConvSpec, input: [usize; 4]) -> std::result::Result<(), String> {
        let Ok(v) = spec.build() else { return Ok(()) };
        let Ok(g) = v.geometry(input) else {
            return Ok(());
        };
        let x = Array4::from_shape_vec(input, pseudo(input.iter().product(), 1)).unwrap();
        let ws = v.weight_shape();
        let w = Array4::from_shape_vec(ws, pseudo(ws.iter().product(), 2)).unwrap();
        let os = g.output_shape();
        let dy = Array4::from_shape_vec(os, pseudo(os.iter().product(), 3)).unwrap();
        let want =
            reference::backward(&v, x.view(), w.view(), dy.view(), GradRequest::all()).unwrap();
        let got = backward(
            &v,
            x.view(),
            w.view(),
            dy.view(),
            GradRequest::all(),
            Algo::Auto,
        )
        .map_err(|e| format!("{spec:?} {input:?}: {e}"))?;
        let ctx = |e: String| format!("{spec:?} {input:?}: {e}");
        close(
            "dx",
            got.input.as_ref().unwrap(),
            want.input.as_ref().unwrap(),
        )
        .map_err(ctx)?;
        close(
            "dw",
            got.weight.as_ref().unwrap(),
            want.weight.as_ref().unwrap(),
        )
        .map_err(ctx)?;
        let (gb, wb) = (got.bias.unwrap(), want.bias.unwrap());
        for (a, e) in gb.iter().zip(wb.iter()) {
            if (a - e).abs() > 1e-4 * e.abs().max(1.0) {
                return Err(ctx(format!("db: {a} vs {e}")));
            }
        }
        Ok(())
    }

    /// Grad input through the flipped forward conv (stride 1, zero padding ≤ d·(k−1)): groups,
    /// dilation, asymmetric padding, non-square kernels, a 3×3 that Winograd takes, and the
    /// layers it must leave to the sub-pixel path (padding past the kernel's reach, stride 2,
    /// reflect padding).
    #[test]
    fn flipped_grad_input_matches_reference() {
        let flipped = [
            (ConvSpec::conv2d(64, 64, 3).padding(1), [1, 64, 12, 12]),
            (
                ConvSpec::conv2d(12, 8, [3, 2])
                    .groups(4)
                    .dilation([2, 1])
                    .padding_sides([3, 1, 0, 1]),
                [2, 12, 11, 9],
            ),
            (ConvSpec::conv2d(6, 10, 1), [1, 6, 5, 7]),
        ];
        let others = [
            (ConvSpec::conv2d(4, 4, 3).padding(3), [1, 4, 6, 6]),
            (ConvSpec::conv2d(4, 6, 3).stride(2).padding(1), [1, 4, 9, 8]),
            (
                ConvSpec::conv2d(4, 6, 3)
                    .padding(1)
                    .padding_mode(PaddingMode::Reflect),
                [1, 4, 7, 8],
            ),
        ];
        for (i, (spec, input)) in flipped.into_iter().chain(others).enumerate() {
            let v = spec.build().unwrap();
            let g = v.geometry(input).unwrap();
            let w = Array4::from_shape_vec(
                v.weight_shape(),
                pseudo(v.weight_shape().iter().product(), 4),
            )
            .unwrap();
            let dy = Array4::<f32>::zeros(g.output_shape());
            let taken = grad_input_flipped(&g, w.view(), dy.view())
                .unwrap()
                .is_some();
            assert_eq!(taken, i < 3, "{spec:?}");
            check(spec, input).unwrap();
        }
    }

    #[test]
    fn matches_reference_on_suite_like_layers() {
        check(ConvSpec::conv2d(8, 6, 3).padding(1), [2, 8, 9, 11]).unwrap();
        check(ConvSpec::conv2d(8, 16, 1), [1, 8, 7, 5]).unwrap();
        check(
            ConvSpec::conv2d(4, 8, 3).padding(2).dilation(2),
            [1, 4, 10, 10],
        )
        .unwrap();
        check(ConvSpec::conv2d(8, 8, 3).padding(1).groups(4), [1, 8, 9, 9]).unwrap();
        check(
            ConvSpec::conv2d(3, 8, 7).stride(2).padding(3),
            [1, 3, 20, 18],
        )
        .unwrap();
        check(ConvSpec::conv2d(6, 6, 3).padding(1).groups(6), [2, 6, 8, 8]).unwrap();
        check(
            ConvSpec::conv_transpose2d(6, 4, 4).stride(2).padding(1),
            [1, 6, 5, 7],
        )
        .unwrap();
        check(
            ConvSpec::conv_transpose2d(4, 2, 3)
                .stride(2)
                .padding(1)
                .output_padding(1),
            [2, 4, 5, 6],
        )
        .unwrap();
        check(ConvSpec::conv1d(4, 6, 3).padding(1), [2, 4, 1, 30]).unwrap();
    }

    /// Regression: the engines' per-thread scratch buffers must survive nesting. Backward
    /// passes (weight gradients, sub-pixel grad inputs) started from inside a parallel loop
    /// run while rayon steals the other iterations onto the waiting threads; a scratch held
    /// borrowed across that wait would be re-borrowed and panic.
    #[test]
    fn backward_passes_nest_inside_parallel_loops() {
        use rayon::prelude::*;
        (0..12).into_par_iter().for_each(|i| {
            let spec = if i % 2 == 0 {
                ConvSpec::conv2d(8, 16, 3).stride(2).padding(1)
            } else {
                ConvSpec::conv_transpose2d(8, 6, 4).stride(2).padding(1)
            };
            check(spec, [1 + i % 3, 8, 9 + i, 7]).unwrap();
        });
    }

    #[test]
    fn matches_reference_with_every_padding_mode() {
        for mode in [
            PaddingMode::Zeros,
            PaddingMode::Reflect,
            PaddingMode::Replicate,
            PaddingMode::Circular,
        ] {
            check(
                ConvSpec::conv2d(4, 6, [3, 2])
                    .stride([2, 1])
                    .padding_rule(Padding::Explicit([2, 1, 0, 1]))
                    .padding_mode(mode)
                    .groups(2),
                [1, 4, 9, 8],
            )
            .unwrap();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn matches_reference_on_random_layers(
            (cg, kg, groups) in (1usize..4, 1usize..4, 1usize..3),
            (kh, kw) in (1usize..4, 1usize..4),
            (sh, sw) in (1usize..3, 1usize..3),
            (dh, dw) in (1usize..3, 1usize..3),
            pads in (0usize..3, 0usize..3, 0usize..3, 0usize..3),
            transposed in any::<bool>(),
            mode in 0usize..4,
            (n, h, w) in (1usize..3, 1usize..8, 1usize..8),
            op in (0usize..2, 0usize..2),
        ) {
            let (c, k) = (cg * groups, kg * groups);
            let spec = if transposed {
                ConvSpec::conv_transpose2d(c, k, [kh, kw])
                    .output_padding([op.0 % sh.max(dh), op.1 % sw.max(dw)])
            } else {
                let m = [PaddingMode::Zeros, PaddingMode::Reflect, PaddingMode::Replicate,
                    PaddingMode::Circular][mode];
                ConvSpec::conv2d(c, k, [kh, kw]).padding_mode(m)
            };
            let spec = spec
                .stride([sh, sw])
                .dilation([dh, dw])
                .padding_rule(Padding::Explicit([pads.0, pads.1, pads.2, pads.3]))
                .groups(groups);
            check(spec, [n, c, h, w]).map_err(TestCaseError::fail)?;
        }
    }
}
