//! Transposed convolution by stride-phase (sub-pixel) decomposition: never multiply the zeros.
//!
//! A transposed convolution writes `y[i·s + k·d − p] += x[i]·w[k]`. Output cells whose
//! `(o + p) mod s` equal r (one *phase*) are reached only by the taps with `k·d ≡ r (mod s)`,
//! and for them `y[Q] = Σ_k x[Q − m_k]·w[k]` with `Q = (o + p − r)/s`, `m_k = (k·d − r)/s`.
//! The valid k are evenly spaced (step s/gcd(s,d)), so each phase is an ordinary direct
//! convolution of the *un-stretched* input with a flipped sub-kernel of ⌈(k − k₀)/step⌉ taps,
//! dilation d/gcd(s,d) and stride 1 — s_h·s_w small convolutions whose outputs interleave
//! (Shi et al. 2016, "Is the deconvolution layer the same as a convolutional layer?";
//! XNNPACK's subconvolution). Each phase runs on the fast direct engine.

use crate::error::{ConvError, Result};
use crate::geometry::Geometry;
use crate::kernels::tasks::for_each_chunk;
use crate::kernels::Isa;
use crate::plan::{Algo, Plan};
use crate::spec::{ConvSpec, Padding};
use ndarray::{s, Array4, ArrayView1, ArrayView4, ArrayViewMut4};
use rayon::prelude::*;

thread_local! {
    /// The phase outputs of the last multi-phase run on this thread, reused (no fresh pages
    /// per call).
    static PHASE_OUT: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// One phase along one axis.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AxisPhase {
    /// First output index of the phase; later ones follow every `s`.
    out_start: usize,
    /// Number of output cells in the phase.
    out_count: usize,
    /// Transposed-kernel index of each direct tap, in direct (flipped) order.
    taps: Vec<usize>,
    /// Dilation of the direct sub-convolution, d / gcd(s, d).
    dilation: usize,
    /// Input range the sub-convolution reads (negative padding becomes a crop).
    input: (usize, usize),
    /// Zero padding before / after that input range.
    pad: (usize, usize),
}

impl AxisPhase {
    /// A phase that no tap reaches: its cells get only the bias.
    fn bias_only(out_start: usize, out_count: usize, dilation: usize) -> Self {
        AxisPhase {
            out_start,
            out_count,
            taps: vec![],
            dilation,
            input: (0, 0),
            pad: (0, 0),
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Splits one axis of a transposed convolution into its `s` phases (those with outputs).
fn axis_phases(
    i_len: usize,
    o_len: usize,
    k: usize,
    s: usize,
    d: usize,
    p_before: usize,
) -> Vec<AxisPhase> {
    let dil = d / gcd(s, d);
    let mut out = Vec::new();
    // One phase per residue that has an output cell: at most min(s, o_len) of them, so a
    // huge stride costs nothing.
    for out_start in 0..s.min(o_len) {
        let r = ((out_start as u128 + p_before as u128) % s as u128) as usize;
        let out_count = (o_len - 1 - out_start) / s + 1;
        let q_min = ((out_start as u128 + p_before as u128 - r as u128) / s as u128) as isize;
        let ks: Vec<usize> = (0..k).filter(|kk| kk * d % s == r).collect();
        if ks.is_empty() {
            out.push(AxisPhase::bias_only(out_start, out_count, dil));
            continue;
        }
        let nt = ks.len() as isize;
        let m_max = ((ks[ks.len() - 1] * d - r) / s) as isize;
        // Direct form: y[q] = Σ_t x[q + t·dil − pad_b] v[t], v[t] = w[ks[nt−1−t]].
        let pad_b = m_max - q_min;
        let pad_a = out_count as isize + (nt - 1) * dil as isize - i_len as isize - pad_b;
        let start = (-pad_b).max(0) as usize;
        let end = (i_len as isize + pad_a.min(0)).max(start as isize) as usize;
        if start >= end {
            // Every tap of these outputs lands in the cropped-away border: bias only.
            out.push(AxisPhase::bias_only(out_start, out_count, dil));
            continue;
        }
        out.push(AxisPhase {
            out_start,
            out_count,
            taps: ks.into_iter().rev().collect(),
            dilation: dil,
            input: (start, end),
            pad: (pad_b.max(0) as usize, pad_a.max(0) as usize),
        });
    }
    out
}

/// One 2D phase: a direct convolution and where its output goes.
#[derive(Debug)]
struct Phase {
    ys: AxisPhase,
    xs: AxisPhase,
    /// The direct sub-convolution, planned on the fast engine (`None` when no tap reaches
    /// this phase: bias only).
    conv: Option<Plan>,
}

/// A transposed convolution prepared as stride-phase direct convolutions.
#[derive(Debug)]
pub struct Subpixel {
    geom: Geometry,
    isa: Isa,
    /// Number of phases along the width (phases are stored height-major).
    nx: usize,
    /// For each output row: its height-phase index and its row within that phase.
    row_phase: Vec<(usize, usize)>,
    phases: Vec<Phase>,
    /// Where each phase's output starts in the run's phase buffer (prefix sums of the phase
    /// output sizes; one entry more than phases).
    phase_off: Vec<usize>,
    bias: Option<Vec<f32>>,
}

impl Subpixel {
    /// Decomposes a transposed layer (weights in PyTorch's (C, K/g, kh, kw) layout).
    pub fn new(
        geom: &Geometry,
        weight: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
        isa: Isa,
    ) -> Result<Self> {
        let spec = &geom.spec;
        if !spec.is_transposed() {
            return Err(ConvError::AlgorithmUnavailable {
                algo: "subpixel",
                why: "only transposed convolutions decompose into stride phases".into(),
            });
        }
        crate::reference::check_operands(
            spec,
            &geom.input_shape(),
            weight.shape(),
            bias.map(|b| b.len()),
        )?;
        let [kh, kw] = spec.kernel();
        let [sh, sw] = spec.stride();
        let [dh, dw] = spec.dilation();
        let g = spec.groups();
        let (cg, kg) = (geom.c / g, geom.k / g);
        let ys = axis_phases(geom.h, geom.oh, kh, sh, dh, geom.pad[0]);
        let xs = axis_phases(geom.w, geom.ow, kw, sw, dw, geom.pad[2]);
        let wt = weight.as_standard_layout();
        let wt = wt.as_slice().expect("standard layout is contiguous");
        let mut phases = Vec::with_capacity(ys.len() * xs.len());
        for py in &ys {
            for px in &xs {
                let conv = if py.taps.is_empty() || px.taps.is_empty() {
                    None
                } else {
                    let (nty, ntx) = (py.taps.len(), px.taps.len());
                    let v = ConvSpec::conv2d(geom.c, geom.k, [nty, ntx])
                        .dilation([py.dilation, px.dilation])
                        .padding_rule(Padding::Explicit([py.pad.0, py.pad.1, px.pad.0, px.pad.1]))
                        .groups(g)
                        .bias(spec.has_bias())
                        .build()?;
                    // The flipped sub-kernel in direct (K, C/g, taps) layout, gathered from
                    // the contiguous transposed weights by plain index arithmetic.
                    let mut w = Vec::with_capacity(geom.k * cg * nty * ntx);
                    for k in 0..geom.k {
                        let (gi, ko) = (k / kg, k % kg);
                        for ci in 0..cg {
                            let base = ((gi * cg + ci) * kg + ko) * kh * kw;
                            for &ty in &py.taps {
                                w.extend(px.taps.iter().map(|&tx| wt[base + ty * kw + tx]));
                            }
                        }
                    }
                    let w = Array4::from_shape_vec((geom.k, cg, nty, ntx), w).expect("sized above");
                    let input = [
                        geom.n,
                        geom.c,
                        py.input.1 - py.input.0,
                        px.input.1 - px.input.0,
                    ];
                    Some(Plan::with_isa(&v, input, w.view(), bias, Algo::Auto, isa)?)
                };
                phases.push(Phase {
                    ys: py.clone(),
                    xs: px.clone(),
                    conv,
                });
            }
        }
        let mut row_phase = vec![(0, 0); geom.oh];
        for (iy, py) in ys.iter().enumerate() {
            for q in 0..py.out_count {
                // out_start + q·s < oh, so the product cannot overflow.
                row_phase[py.out_start + q * sh] = (iy, q);
            }
        }
        let mut phase_off = vec![0usize];
        for p in &phases {
            let len = p
                .conv
                .as_ref()
                .map_or(0, |c| c.geometry().output_shape().iter().product());
            phase_off.push(phase_off[phase_off.len() - 1] + len);
        }
        Ok(Subpixel {
            geom: *geom,
            isa,
            nx: xs.len(),
            row_phase,
            phase_off,
            phases,
            bias: bias.map(|b| b.to_vec()),
        })
    }

    /// The instruction set of the phase plans.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Largest per-thread workspace of the phase plans.
    pub fn workspace_bytes(&self) -> usize {
        self.phases
            .iter()
            .filter_map(|p| p.conv.as_ref().map(Plan::workspace_bytes))
            .max()
            .unwrap_or(0)
    }

    /// Bytes of the phase outputs a multi-phase run keeps (in a reused per-thread buffer)
    /// before interleaving them; 0 for a single stride-1 phase, which writes `y` directly.
    pub fn scratch_bytes(&self) -> usize {
        if self.geom.spec.stride() == [1, 1] && self.phases.len() == 1 {
            return 0;
        }
        self.phases
            .iter()
            .filter_map(|p| p.conv.as_ref())
            .map(|c| 4 * c.geometry().output_shape().iter().product::<usize>())
            .sum()
    }

    /// Bytes of packed weights over all phases (together, the layer's weights once).
    pub fn packed_weight_bytes(&self) -> usize {
        self.phases
            .iter()
            .filter_map(|p| p.conv.as_ref().map(Plan::packed_weight_bytes))
            .sum()
    }

    /// Number of phases with at least one output cell.
    pub fn phase_count(&self) -> usize {
        self.phases.len()
    }

    /// Multiply-accumulates actually performed (no zero is ever multiplied).
    pub fn macs(&self) -> u64 {
        self.phases
            .iter()
            .filter_map(|p| {
                let v = p.conv.as_ref()?.geometry().spec;
                let taps = (p.ys.taps.len() * p.xs.taps.len()) as u64;
                Some(
                    (self.geom.n * p.ys.out_count * p.xs.out_count) as u64
                        * (self.geom.k * self.geom.c / v.groups()) as u64
                        * taps,
                )
            })
            .sum()
    }

    /// Runs the layer: `y` must have the layer's output shape.
    pub fn run(&self, x: ArrayView4<f32>, mut y: ArrayViewMut4<f32>) -> Result<()> {
        let g = &self.geom;
        crate::plan::check_run_shapes(x.shape(), y.shape(), &g.input_shape(), &g.output_shape())?;
        // Stride 1: one phase that covers the whole output; its plan writes `y` directly.
        if let [Phase {
            conv: Some(plan),
            ys,
            xs,
        }] = &self.phases[..]
        {
            if g.spec.stride() == [1, 1] {
                let xi = x.slice(s![.., .., ys.input.0..ys.input.1, xs.input.0..xs.input.1]);
                return plan.run(xi, y);
            }
        }
        // Every phase on its own (in parallel; each plan is parallel inside too) into one
        // reused scratch buffer, then the outputs interleaved row by row into `y`.
        // Taken out of the thread-local for the run (and put back after), so that a nested
        // run on this thread (rayon may steal one while we wait) finds it empty instead of
        // borrowed.
        let mut buf = PHASE_OUT.with(|cell| cell.take());
        let done = (|| -> Result<()> {
            let total = self.phase_off[self.phases.len()];
            if buf.len() < total {
                buf.resize(total, 0.0);
            }
            // Phases in parallel, each writing its own part of `buf`: the buffer is split
            // recursively at phase boundaries (no per-run list of slices is allocated).
            let np = self.phases.len();
            let run_phases = |(r, sl): (std::ops::Range<usize>, &mut [f32])| -> Result<()> {
                let base = self.phase_off[r.start];
                for pi in r {
                    let p = &self.phases[pi];
                    let Some(plan) = &p.conv else {
                        continue;
                    };
                    let xi = x.slice(s![
                        ..,
                        ..,
                        p.ys.input.0..p.ys.input.1,
                        p.xs.input.0..p.xs.input.1
                    ]);
                    let o = &mut sl[self.phase_off[pi] - base..self.phase_off[pi + 1] - base];
                    let view = ArrayViewMut4::from_shape(plan.geometry().output_shape(), o)
                        .expect("the slice has the phase's output size");
                    plan.run(xi, view)?;
                }
                Ok(())
            };
            if rayon::current_thread_index().is_none() {
                // Outside the pool (a pool of one thread: no hand-off), one after the other.
                run_phases((0..np, &mut buf[..total]))?;
            } else {
                rayon::iter::split((0..np, &mut buf[..total]), |(r, sl)| {
                    if r.len() <= 1 {
                        return ((r, sl), None);
                    }
                    let mid = r.start + r.len() / 2;
                    let (a, b) = sl.split_at_mut(self.phase_off[mid] - self.phase_off[r.start]);
                    ((r.start..mid, a), Some((mid..r.end, b)))
                })
                .try_for_each(run_phases)?;
            }
            self.interleave_all(&buf[..total], y.view_mut());
            Ok(())
        })();
        PHASE_OUT.with(|cell| cell.set(buf));
        done?;
        Ok(())
    }

    /// Writes the phase outputs (phase `p`'s (N, K, rows, cols) output at
    /// `outs[phase_off[p]..phase_off[p + 1]]`, empty for bias-only phases) into their
    /// interleaved places in `y`.
    fn interleave_all(&self, outs: &[f32], mut y: ArrayViewMut4<f32>) {
        let g = &self.geom;
        let (k, oh, ow, sw) = (g.k, g.oh, g.ow, g.spec.stride()[1]);
        // Two width phases at columns 0, 2, 4, … and 1, 3, 5, … (stride 2, the common case):
        // pairs written together, which the compiler turns into vector shuffles.
        let pairs = self.nx == 2
            && sw == 2
            && self.phases[0].xs.out_start == 0
            && self.phases[1].xs.out_start == 1;
        let interleave = |row: usize, yrow: &mut [f32]| {
            let (nk, oy) = (row / oh, row % oh);
            let (n, kk) = (nk / k, nk % k);
            let (iy, qy) = self.row_phase[oy];
            let bias = self.bias.as_ref().map_or(0.0, |b| b[kk]);
            let src = |ix: usize| -> Option<&[f32]> {
                let p = iy * self.nx + ix;
                let plan = self.phases[p].conv.as_ref()?;
                let [_, pk, ph, pw] = plan.geometry().output_shape();
                Some(&outs[self.phase_off[p] + ((n * pk + kk) * ph + qy) * pw..][..pw])
            };
            if pairs {
                if let (Some(a), Some(b)) = (src(0), src(1)) {
                    let (even, odd) = (
                        self.phases[iy * 2].xs.out_count,
                        self.phases[iy * 2 + 1].xs.out_count,
                    );
                    let both = odd.min(even);
                    for ((d, &va), &vb) in yrow.chunks_exact_mut(2).zip(a).zip(b).take(both) {
                        d[0] = va;
                        d[1] = vb;
                    }
                    if even > both {
                        yrow[2 * both] = a[both];
                    }
                    return;
                }
            }
            for ix in 0..self.nx {
                let p = iy * self.nx + ix;
                let (start, count) = (self.phases[p].xs.out_start, self.phases[p].xs.out_count);
                match src(ix) {
                    None => {
                        for q in 0..count {
                            yrow[start + q * sw] = bias;
                        }
                    }
                    Some(o) => {
                        for (q, v) in o.iter().enumerate() {
                            yrow[start + q * sw] = *v;
                        }
                    }
                }
            }
        };
        match y.as_slice_mut() {
            Some(ys) => for_each_chunk(ys, ow, interleave),
            None => {
                let mut tmp = vec![0f32; ow];
                for n in 0..g.n {
                    for kk in 0..k {
                        for oy in 0..oh {
                            interleave((n * k + kk) * oh + oy, &mut tmp);
                            y.slice_mut(s![n, kk, oy, ..])
                                .assign(&ndarray::ArrayView1::from(&tmp[..]));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::testutil::pseudo;
    use ndarray::Array1;
    use proptest::prelude::*;

    fn check(spec: ConvSpec, input: [usize; 4]) -> std::result::Result<(), TestCaseError> {
        let Ok(v) = spec.build() else { return Ok(()) };
        let Ok(g) = v.geometry(input) else {
            return Ok(());
        };
        let x = Array4::from_shape_vec(input, pseudo(input.iter().product(), 1)).unwrap();
        let ws = v.weight_shape();
        let w = Array4::from_shape_vec(ws, pseudo(ws.iter().product(), 2)).unwrap();
        let b = Array1::from(pseudo(g.k, 3));
        let bias = v.has_bias().then(|| b.view());
        let want = reference::forward(&v, x.view(), w.view(), bias).unwrap();
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let mut sp = None;
        for isa in Isa::available_levels() {
            let plan = Subpixel::new(&g, w.view(), bias, isa).unwrap();
            let mut y = Array4::from_elem(g.output_shape(), f32::NAN);
            plan.run(x.view(), y.view_mut()).unwrap();
            for (a, e) in y.iter().zip(want.iter()) {
                prop_assert!(
                    (a - e).abs() <= 1e-5 * scale,
                    "{isa:?} {spec:?} {input:?}: {a} vs {e}"
                );
            }
            sp = Some(plan);
        }
        let sp = sp.unwrap();
        // Never multiplies an inserted zero: each output cell costs at most
        // ⌈kh/step_h⌉·⌈kw/step_w⌉ taps (step = s/gcd(s,d)), against kh·kw for the zero-stuffed
        // direct equivalent.
        let [kh, kw] = v.kernel();
        let step = |a: usize| v.stride()[a] / gcd(v.stride()[a], v.dilation()[a]);
        let per_cell = (kh.div_ceil(step(0)) * kw.div_ceil(step(1))) as u64;
        let cells = (g.n * g.oh * g.ow * g.k * (g.c / v.groups())) as u64;
        prop_assert!(sp.macs() <= cells * per_cell);
        Ok(())
    }

    #[test]
    fn matches_reference_on_decoder_layers() {
        // DCGAN 4×4 s2 p1, U-Net 2×2 s2, 3×3 s2 p1 op1.
        check(
            ConvSpec::conv_transpose2d(6, 4, 4).stride(2).padding(1),
            [1, 6, 5, 7],
        )
        .unwrap();
        check(ConvSpec::conv_transpose2d(6, 4, 2).stride(2), [2, 6, 4, 3]).unwrap();
        check(
            ConvSpec::conv_transpose2d(4, 2, 3)
                .stride(2)
                .padding(1)
                .output_padding(1),
            [1, 4, 5, 5],
        )
        .unwrap();
    }

    #[test]
    fn phases_without_taps_get_only_bias() {
        // k = 1, s = 3: two of three phases see no tap.
        check(
            ConvSpec::conv_transpose2d(2, 3, 1)
                .stride(3)
                .output_padding(2),
            [1, 2, 3, 4],
        )
        .unwrap();
        // s = 2, d = 2: only even phases have taps.
        check(
            ConvSpec::conv_transpose2d(2, 2, 3)
                .stride(2)
                .dilation(2)
                .output_padding(1),
            [1, 2, 4, 4],
        )
        .unwrap();
    }

    #[test]
    fn rejects_direct_layers() {
        let v = ConvSpec::conv2d(2, 2, 3).build().unwrap();
        let g = v.geometry([1, 2, 5, 5]).unwrap();
        let w = Array4::<f32>::zeros(v.weight_shape());
        assert!(Subpixel::new(&g, w.view(), None, Isa::Scalar).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn matches_reference_on_random_transposed_layers(
            (spec, input) in crate::testutil::arb_transposed(4, 6),
        ) {
            check(spec, input)?;
        }
    }
}
