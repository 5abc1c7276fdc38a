//! Depthwise convolution (groups = C, K = m·C): a direct kernel on NCHW planes.
//!
//! Depthwise layers are memory-bound (3×3 s1 ≈ 2.2 FLOP/byte), so the kernel touches each
//! input plane once: it is copied into a small per-thread buffer that already holds the
//! padding (any border mode) and splits the columns into `stride` phases, so that output
//! column `ox` under tap `kx` reads phase `(kx·d) mod s` at index `ox + ⌊kx·d / s⌋`: a
//! contiguous vector for any stride and dilation. The interior then needs no bounds checks,
//! and each output row is `Σ_taps w · (shifted input row)` vectorised along the row with
//! several independent accumulators (XNNPACK's CHW depthwise kernels take the same view).
//! All `m` outputs of a channel reuse the same buffer while it is in L1.
//!
//! The common MobileNet shapes (square 3×3 / 5×5 taps, stride 1 or 2, no dilation, zero
//! padding) have dedicated AVX-512 kernels ([`fast`]) that skip the buffer: they read the
//! input plane in place (plain loads for the column vectors inside the row, masked loads at
//! the row's ends, where the masks are the zero padding; rows of the zero padding come from a
//! zero row), make the `kx` shifts / stride phases in registers, and block several output rows
//! per pass so that each input row loaded serves every tap row it belongs to. The next plane
//! is prefetched while one is computed. Their backward: grad weight keeps one accumulator per
//! tap (one pass over the plane for all taps); grad input is, for stride 1, this forward
//! kernel on dy with the taps rotated by 180° ([`Depthwise::adjoint`]) and, for stride 2, a
//! two-phase gather that writes each dx element once.

use super::tasks::{for_each_claimed_span, Spans};
use crate::border::Border;
use crate::error::{ConvError, Result};
use crate::geometry::Geometry;
pub use crate::kernels::Isa;
use rayon::prelude::*;
use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
mod fast;

/// The shapes with a dedicated AVX-512 kernel ([`fast`]): square taps, equal strides, no
/// dilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FastShape {
    K3S1,
    K3S2,
    K5S1,
    K5S2,
}

impl FastShape {
    fn of(kernel: [usize; 2], stride: [usize; 2], dilation: [usize; 2]) -> Option<Self> {
        if dilation != [1, 1] {
            return None;
        }
        match (kernel, stride) {
            ([3, 3], [1, 1]) => Some(FastShape::K3S1),
            ([3, 3], [2, 2]) => Some(FastShape::K3S2),
            ([5, 5], [1, 1]) => Some(FastShape::K5S1),
            ([5, 5], [2, 2]) => Some(FastShape::K5S2),
            _ => None,
        }
    }
}

/// Floats a 16-wide vector block may read past the last output column.
const SLACK: usize = 16;

/// Distinguishes buffer layouts, so a thread's buffer is zeroed only when the layout changes.
static NEXT_TAG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A depthwise layer on a fixed geometry: index tables built once, run many times.
#[derive(Debug, Clone)]
pub struct Depthwise {
    geom: Geometry,
    /// Source row of each padded row (`None` = zero row).
    rows: Vec<Option<u32>>,
    /// Per phase `p` with any: the range `t0..t1` of buffered indices whose column lies
    /// inside the input, and the input column of its first element (`j = p + t·s − pad_left`).
    interior: Vec<(usize, usize, usize, usize)>,
    /// Border slots `(phase * pstride + t, source column)` of non-zero border modes.
    border_slots: Vec<(u32, u32)>,
    /// Length of one phase of a buffered row.
    pstride: usize,
    /// Phases stored per row: min(stride, padded width).
    nphase: usize,
    /// Depth multiplier m.
    mult: usize,
    /// Per tap `kx`: offset of its first input in a buffered row.
    col_off: Vec<usize>,
    isa: Isa,
    /// The dedicated AVX-512 kernel for this shape, if any (only with `Isa::Avx512` and zero
    /// padding; it reads the input planes in place, without the buffer).
    fast: Option<FastShape>,
    /// The fast kernel's output column vectors and how they load (`fast::columns`).
    #[cfg(target_arch = "x86_64")]
    fast_cols: Vec<fast::Column>,
    /// The fast kernel's stand-in for rows of the zero padding (`fast::zero_row_len`).
    #[cfg(target_arch = "x86_64")]
    fast_zero: Vec<f32>,
    /// Layout identity (see [`NEXT_TAG`]).
    tag: u64,
}

impl Depthwise {
    /// Prepares the kernel for `geom`, which must be a depthwise, non-transposed layer.
    pub fn new(geom: &Geometry, isa: Isa) -> Result<Self> {
        let s = &geom.spec;
        if s.is_transposed() || s.groups() != geom.c || !geom.k.is_multiple_of(geom.c) {
            return Err(ConvError::AlgorithmUnavailable {
                algo: "depthwise",
                why: "needs groups = in_channels and a direct (not transposed) convolution".into(),
            });
        }
        if !isa.available() {
            return Err(ConvError::AlgorithmUnavailable {
                algo: "depthwise",
                why: format!("this CPU lacks {isa:?}"),
            });
        }
        if geom.h > u32::MAX as usize || geom.w > u32::MAX as usize {
            return Err(ConvError::Overflow {
                what: "depthwise plane size",
            });
        }
        let border = Border::from(s.padding_mode());
        let [_, kw] = s.kernel();
        let [sw, dw] = [s.stride()[1], s.dilation()[1]];
        let (pl, w) = (geom.pad[2], geom.w);
        let padded_h = geom.h + geom.pad[0] + geom.pad[1];
        let padded_w = w + pl + geom.pad[3];
        let rows = (0..padded_h)
            .map(|r| {
                border
                    .source(r as isize - geom.pad[0] as isize, geom.h)
                    .map(|v| v as u32)
            })
            .collect();
        let max_shift = (kw - 1) * dw / sw;
        // Rounded to 16 floats so that every buffered row starts on a 64-byte line.
        let pstride = (geom.ow.div_ceil(SLACK) * SLACK + max_shift)
            .max(padded_w.div_ceil(sw))
            .next_multiple_of(16);
        // Phases past the padded width hold no column (strides wider than the input).
        let nphase = sw.min(padded_w);
        let mut interior = Vec::with_capacity(nphase);
        let mut border_slots = Vec::new();
        for p in 0..nphase {
            // Inside the input: pl ≤ p + t·s < pl + w.
            let t0 = pl.saturating_sub(p).div_ceil(sw);
            let t1 = (pl + w).saturating_sub(p).div_ceil(sw).max(t0);
            if t0 < t1 {
                interior.push((p, t0, t1, p + t0 * sw - pl));
            }
            if border != Border::Zeros {
                for t in (0..t0).chain(t1..pstride) {
                    // Columns grow with t: stop at the first past the padded width (checked,
                    // for strides near usize::MAX).
                    let Some(j) = t
                        .checked_mul(sw)
                        .and_then(|v| v.checked_add(p))
                        .filter(|&j| j < padded_w)
                    else {
                        break;
                    };
                    if let Some(src) = border.source(j as isize - pl as isize, w) {
                        border_slots.push(((p * pstride + t) as u32, src as u32));
                    }
                }
            }
        }
        let col_off = (0..kw)
            .map(|kx| (kx * dw % sw) * pstride + kx * dw / sw)
            .collect();
        let fast = FastShape::of(s.kernel(), s.stride(), s.dilation()).filter(|_| {
            cfg!(target_arch = "x86_64") && isa == Isa::Avx512 && border == Border::Zeros
        });
        #[cfg(target_arch = "x86_64")]
        let (fast_cols, fast_zero) = fast.map_or((Vec::new(), Vec::new()), |f| {
            let zero = vec![0.0; fast::zero_row_len(f, geom.ow)];
            (fast::columns(f, geom.w, geom.pad[2], geom.ow), zero)
        });
        Ok(Depthwise {
            geom: *geom,
            rows,
            interior,
            border_slots,
            pstride,
            nphase,
            mult: geom.k / geom.c,
            col_off,
            isa,
            fast,
            #[cfg(target_arch = "x86_64")]
            fast_cols,
            #[cfg(target_arch = "x86_64")]
            fast_zero,
            tag: NEXT_TAG.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The instruction set in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Floats in one buffered (padded, phase-split) row.
    fn row_len(&self) -> usize {
        self.nphase * self.pstride
    }

    /// Runs the layer. `x` is the NCHW input, `w` the (K, 1, kh, kw) weights, `y` the NCHW
    /// output, all contiguous; lengths are checked.
    pub fn run(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) -> Result<()> {
        let g = &self.geom;
        self.run_planes(x, g.h * g.w, w, bias, y)
    }

    /// [`Depthwise::run`] on input planes that lie `plane_stride ≥ h·w` floats apart: plane
    /// `(n, c)` is `x[(n·C + c)·plane_stride..][..h·w]`. A band of rows of a taller image is
    /// read in place this way (`x` starting at the band's first row, `plane_stride` the full
    /// image's plane). Lengths are checked.
    pub fn run_planes(
        &self,
        x: &[f32],
        plane_stride: usize,
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<()> {
        let g = &self.geom;
        let [kh, kw] = g.spec.kernel();
        let check = |what: &'static str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(ConvError::ShapeMismatch {
                    what,
                    got: vec![got],
                    expected: vec![want],
                })
            }
        };
        let in_plane = g.h * g.w;
        if plane_stride < in_plane {
            check("input plane stride", plane_stride, in_plane)?;
        }
        // The last plane needs only its own h·w floats past its start.
        let need = (g.n * g.c - 1) * plane_stride + in_plane;
        if x.len() < need || (plane_stride == in_plane && x.len() != need) {
            check("input length", x.len(), need)?;
        }
        check("weight length", w.len(), g.k * kh * kw)?;
        check("output length", y.len(), g.n * g.k * g.oh * g.ow)?;
        if let Some(b) = bias {
            check("bias length", b.len(), g.k)?;
        }
        let out_plane = g.oh * g.ow;
        let out_group = self.mult * out_plane;
        // One worker runs here, without handing the call to the pool's thread and sleeping
        // until it is done (two context switches: 40 % of the time of a 0.1 ms layer such as
        // 576 channels on 14×14 at one thread, seen by perf); several claim planes (`tasks`).
        // A task is several small planes (≥ 4096 outputs: a claim and its slicing cost 15 %
        // of a 7 × 7 plane's time), one plane from 64 × 64 up.
        let per_task = 4096usize.div_ceil(out_group.max(1)).min(g.n * g.c).max(1);
        #[cfg(target_arch = "x86_64")]
        if let Some(shape) = self.fast {
            // A task's planes in one call of the fast kernel (see `fast::forward_run`).
            for_each_claimed_span(y, Spans::Even(per_task * out_group), |claims| {
                for (t, ys) in claims {
                    let (first, count) = (t * per_task, ys.len() / out_group);
                    let xs = &x[first * plane_stride..];
                    assert!(
                        count >= 1
                            && ys.len() == count * out_group
                            && (count - 1) * plane_stride + in_plane <= xs.len(),
                        "a task's planes lie inside the operands"
                    );
                    let run = fast::Run {
                        plane: self.fast_plane(&xs[..in_plane], &[]),
                        stride: plane_stride,
                        first,
                        count,
                        channels: g.c,
                        mult: self.mult,
                        readable: xs.len(),
                        w: w.as_ptr(),
                        bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                        out: ys.as_mut_ptr(),
                    };
                    // SAFETY: `fast` is only set with `Isa::Avx512`, which `new` checked
                    // against the CPU; the run's planes lie in `x` and its output planes are
                    // `ys` (asserted above), the taps and bias lengths were checked against
                    // the geometry on entry, and oh, ow are the geometry's for h, w.
                    unsafe { fast::forward_run(shape, &run) };
                }
            });
            return Ok(());
        }
        // Other layers, one plane (n, c) at a time through the buffer: its m output planes
        // are contiguous in NCHW.
        let plane = |nc: usize, ys: &mut [f32]| {
            let c = nc % g.c;
            let xs = &x[nc * plane_stride..nc * plane_stride + in_plane];
            BUF.with(|cell| {
                let mut buf = cell.borrow_mut();
                self.fill(xs, &mut buf);
                for j in 0..self.mult {
                    let k = c * self.mult + j;
                    let wk = &w[k * kh * kw..(k + 1) * kh * kw];
                    let b = bias.map_or(0.0, |b| b[k]);
                    self.plane(
                        buf.view(),
                        wk,
                        b,
                        &mut ys[j * out_plane..(j + 1) * out_plane],
                    );
                }
            });
        };
        for_each_claimed_span(y, Spans::Even(per_task * out_group), |claims| {
            for (t, ys) in claims {
                for (i, ys) in ys.chunks_mut(out_group).enumerate() {
                    plane(t * per_task + i, ys);
                }
            }
        });
        Ok(())
    }

    /// Copies one input plane into `buf`: padded by the border rule, columns phase-split.
    ///
    /// Slots that hold zero padding are never written, so a buffer already laid out for this
    /// layer (same tag) is reused without clearing.
    fn fill(&self, xs: &[f32], buf: &mut Buffer) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `new` checked the CPU has AVX-512F; the body is safe Rust compiled
            // with that feature (so the strided copies vectorise).
            Isa::Avx512 => unsafe { self.fill_avx512(xs, buf) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, for AVX2.
            Isa::Avx2 => unsafe { self.fill_avx2(xs, buf) },
            _ => self.fill_body(xs, buf),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn fill_avx512(&self, xs: &[f32], buf: &mut Buffer) {
        self.fill_body(xs, buf)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn fill_avx2(&self, xs: &[f32], buf: &mut Buffer) {
        self.fill_body(xs, buf)
    }

    #[inline(always)]
    fn fill_body(&self, xs: &[f32], buf: &mut Buffer) {
        let rl = self.row_len();
        if buf.tag != self.tag {
            buf.data.clear();
            buf.data.resize(self.rows.len() * rl + 16, 0.0);
            // Start on a 64-byte boundary: aligned rows halve the cache-line-splitting loads.
            buf.off = buf.data.as_ptr().align_offset(64).min(16);
            buf.tag = self.tag;
        }
        let w = self.geom.w;
        let sw = self.geom.spec.stride()[1];
        for (r, src) in self.rows.iter().enumerate() {
            let Some(sr) = src else { continue };
            let srow = &xs[*sr as usize * w..(*sr as usize + 1) * w];
            let drow = &mut buf.data[buf.off + r * rl..buf.off + (r + 1) * rl];
            for &(p, t0, t1, j0) in &self.interior {
                let dst = &mut drow[p * self.pstride + t0..p * self.pstride + t1];
                if sw == 1 {
                    let avx512 = self.isa == Isa::Avx512;
                    super::store::copy_row(dst, &srow[j0..j0 + dst.len()], 0.0, false, avx512);
                } else {
                    strided_copy(&srow[j0..], sw, dst, self.isa);
                }
            }
            for &(slot, col) in &self.border_slots {
                drow[slot as usize] = srow[col as usize];
            }
        }
    }

    /// Computes one output plane from a filled buffer.
    fn plane(&self, buf: &[f32], wk: &[f32], bias: f32, out: &mut [f32]) {
        let g = &self.geom;
        let [kh, kw] = g.spec.kernel();
        let args = TileArgs {
            buf: buf.as_ptr(),
            w: wk.as_ptr(),
            col_off: self.col_off.as_ptr(),
            out: out.as_mut_ptr(),
            kh,
            kw,
            sh: g.spec.stride()[0],
            dh: g.spec.dilation()[0],
            rl: self.row_len(),
            ow: g.ow,
            bias,
        };
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Depthwise::new` checked that the CPU has AVX-512F; `buf` holds every
            // padded row with SLACK floats after the last read position (see `pstride`), and
            // `out` holds oh·ow floats.
            Isa::Avx512 => unsafe { x86::plane_avx512(&args, g.oh) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, for AVX2 + FMA.
            Isa::Avx2 => unsafe { x86::plane_avx2(&args, g.oh) },
            _ => plane_scalar(buf, &self.col_off, wk, bias, &args, out),
        }
    }
}

impl Depthwise {
    /// The fast kernels' view of input plane `xs`; `pf` is prefetched meanwhile.
    #[cfg(target_arch = "x86_64")]
    fn fast_plane(&self, xs: &[f32], pf: &[f32]) -> fast::Plane<'_> {
        let g = &self.geom;
        assert_eq!(xs.len(), g.h * g.w, "input plane size");
        fast::Plane {
            x: xs.as_ptr(),
            h: g.h,
            w: g.w,
            pt: g.pad[0],
            pl: g.pad[2],
            oh: g.oh,
            ow: g.ow,
            pf: pf.as_ptr(),
            pf_len: pf.len(),
            zero: self.fast_zero.as_ptr(),
            cols: &self.fast_cols,
        }
    }

    /// `out (+)= taps(xs)` for input plane `xs` with the fast kernel, if this layer has one
    /// (`accumulate`: add to `out`, no bias); false if not.
    fn fast_forward(
        &self,
        xs: &[f32],
        wk: &[f32],
        bias: f32,
        out: &mut [f32],
        accumulate: bool,
        pf: &[f32],
    ) -> bool {
        let Some(shape) = self.fast else { return false };
        let g = &self.geom;
        assert_eq!(out.len(), g.oh * g.ow, "output plane size");
        assert_eq!(wk.len(), g.spec.kernel()[0] * g.spec.kernel()[1], "taps");
        #[cfg(target_arch = "x86_64")]
        {
            let p = self.fast_plane(xs, pf);
            // SAFETY: `fast` is only set with `Isa::Avx512`, which `new` checked against the
            // CPU; the plane sizes were asserted above and oh, ow are the geometry's for h, w.
            unsafe { fast::forward(shape, &p, wk.as_ptr(), bias, out.as_mut_ptr(), accumulate) };
            true
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (shape, xs, bias, accumulate, pf);
            false
        }
    }

    /// dx plane of a stride-2 fast layer from the channel's dy planes and taps (gather, see
    /// [`fast::input_grad_s2`]); false (nothing written) for other layers.
    fn fast_input_grad(&self, dys: &[&[f32]], ws: &[&[f32]], dxs: &mut [f32]) -> bool {
        let Some(shape) = self.fast else { return false };
        if !matches!(shape, FastShape::K3S2 | FastShape::K5S2) {
            return false;
        }
        let g = &self.geom;
        let [kh, kw] = g.spec.kernel();
        assert_eq!(dxs.len(), g.h * g.w, "grad input plane size");
        assert!(
            dys.iter().all(|d| d.len() == g.oh * g.ow),
            "grad output plane size"
        );
        assert!(ws.iter().all(|t| t.len() == kh * kw), "taps");
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `fast` implies AVX-512F was detected; the shape is stride 2 and the
            // plane sizes were asserted above (oh, ow, pads are the geometry's for h, w).
            unsafe {
                fast::input_grad_s2(shape, dys, ws, g.oh, g.ow, g.pad[0], g.pad[2], dxs, g.w)
            };
            true
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// `gw += Σ dy · shifted(xs)` with the fast kernel, if this layer has one; false if not.
    fn fast_weight_grad(&self, xs: &[f32], dys: &[f32], gw: &mut [f32], pf: &[f32]) -> bool {
        let Some(shape) = self.fast else { return false };
        let g = &self.geom;
        assert_eq!(dys.len(), g.oh * g.ow, "grad output plane size");
        assert_eq!(gw.len(), g.spec.kernel()[0] * g.spec.kernel()[1], "taps");
        #[cfg(target_arch = "x86_64")]
        {
            let p = self.fast_plane(xs, pf);
            // SAFETY: as in `fast_forward`; `dys` holds oh·ow floats (asserted).
            unsafe { fast::weight_grad(shape, &p, dys.as_ptr(), gw) };
            true
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (shape, xs, pf);
            false
        }
    }
}

/// Backward pass. Layers with a fast kernel use its backward (see the module docs); the others
/// work on the same buffer layout as the forward: the gradient w.r.t. the buffer is the
/// forward's taps run in reverse (scatter), then folded back onto the input by the adjoint of
/// the fill (border slots add into the cells they were read from). One task per channel
/// computes its dx planes and its filters' weight and bias gradients.
impl Depthwise {
    /// Computes any of dL/dx, dL/dw, dL/db from `dy` (NCHW, the forward's output shape).
    /// Each gradient element is reduced by exactly one task in a fixed order, so results are
    /// identical for any thread count.
    pub fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        dx: Option<&mut [f32]>,
        dw: Option<&mut [f32]>,
        db: Option<&mut [f32]>,
    ) -> Result<()> {
        let g = &self.geom;
        let [kh, kw] = g.spec.kernel();
        let taps = kh * kw;
        let lens = [
            ("input length", x.len(), g.n * g.c * g.h * g.w),
            ("weight length", w.len(), g.k * taps),
            ("grad_output length", dy.len(), g.n * g.k * g.oh * g.ow),
            (
                "grad_input length",
                dx.as_ref().map_or(g.n * g.c * g.h * g.w, |d| d.len()),
                g.n * g.c * g.h * g.w,
            ),
            (
                "grad_weight length",
                dw.as_ref().map_or(g.k * taps, |d| d.len()),
                g.k * taps,
            ),
            (
                "grad_bias length",
                db.as_ref().map_or(g.k, |d| d.len()),
                g.k,
            ),
        ];
        for (what, got, want) in lens {
            if got != want {
                return Err(ConvError::ShapeMismatch {
                    what,
                    got: vec![got],
                    expected: vec![want],
                });
            }
        }
        let (in_plane, out_plane, m) = (g.h * g.w, g.oh * g.ow, self.mult);
        let (want_w, want_b) = (dw.is_some(), db.is_some());
        let adj = if dx.is_some() { self.adjoint() } else { None };
        // The adjoint runs the taps rotated by 180°.
        let wflip: Vec<f32> = if adj.is_some() {
            w.chunks_exact(taps)
                .flat_map(|t| t.iter().rev().copied())
                .collect()
        } else {
            Vec::new()
        };
        let dx_out = dx.map(|d| SyncPtr(d.as_mut_ptr()));
        let dys_of_c = |n: usize, c: usize| -> Vec<&[f32]> {
            (0..m)
                .map(|j| &dy[(n * g.k + c * m + j) * out_plane..][..out_plane])
                .collect()
        };
        let w_of_c = |c: usize| -> Vec<&[f32]> {
            (0..m).map(|j| &w[(c * m + j) * taps..][..taps]).collect()
        };
        // One task per channel: the batch's dx planes of that channel and its m filters'
        // weight and bias gradients, reduced over the batch in order. Run by the task executor
        // (`tasks.rs`): called from outside the pool the caller takes part, and at one thread
        // the tasks run inline, so a backward pass needs no hand-off to a worker (~30 µs,
        // 10-15 % of a 0.2 ms MobileNet layer's backward at one thread).
        // Channel c's weight and bias gradients: slot c of one zeroed buffer (with a pair of
        // vectors allocated per channel, 576 channels of 14 × 14 took 1.4× the time).
        let (wlen, blen) = (
            if want_w { m * taps } else { 0 },
            if want_b { m } else { 0 },
        );
        let per = (wlen + blen).max(1);
        let mut sums = vec![0f32; g.c * per];
        let channel = |c: usize, slot: &mut [f32]| {
            let (gw, rest) = slot.split_at_mut(wlen);
            let gb = &mut rest[..blen];
            for n in 0..g.n {
                let dy_of = |j: usize| {
                    let k = c * m + j;
                    &dy[(n * g.k + k) * out_plane..(n * g.k + k + 1) * out_plane]
                };
                // The next (n, c) this thread is likely to read: prefetched meanwhile.
                let (nn, nc) = if n + 1 < g.n { (n + 1, c) } else { (0, c + 1) };
                let next_x = x
                    .get((nn * g.c + nc) * in_plane..(nn * g.c + nc + 1) * in_plane)
                    .unwrap_or(&[]);
                let next_dy = dy
                    .get((nn * g.k + nc * m) * out_plane..(nn * g.k + nc * m + m) * out_plane)
                    .unwrap_or(&[]);
                let xs = &x[(n * g.c + c) * in_plane..][..in_plane];
                if want_w && self.fast.is_some() {
                    for j in 0..m {
                        let pf = if j == 0 { next_x } else { &[] };
                        self.fast_weight_grad(xs, dy_of(j), &mut gw[j * taps..][..taps], pf);
                    }
                } else if want_w {
                    BUF.with(|cell| {
                        let mut buf = cell.borrow_mut();
                        self.fill(&x[(n * g.c + c) * in_plane..][..in_plane], &mut buf);
                        for j in 0..m {
                            self.weight_taps_isa(
                                dy_of(j),
                                buf.view(),
                                &mut gw[j * taps..(j + 1) * taps],
                            );
                        }
                    });
                }
                for (j, b) in gb.iter_mut().enumerate() {
                    *b += sum_lanes(dy_of(j));
                }
                if let Some(out) = dx_out {
                    // SAFETY: dx holds N·C planes of `in_plane` floats; plane (n, c) is
                    // written by this task only (one task per channel), and nothing else
                    // reads or writes dx while the tasks run.
                    let dxs = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.get().add((n * g.c + c) * in_plane),
                            in_plane,
                        )
                    };
                    match &adj {
                        Some(adj) => {
                            for j in 0..m {
                                let k = c * m + j;
                                let wk = &wflip[k * taps..(k + 1) * taps];
                                let pf = if j == 0 { next_dy } else { &[] };
                                adj.fast_forward(dy_of(j), wk, 0.0, dxs, j > 0, pf);
                            }
                        }
                        None if self.fast_input_grad(&dys_of_c(n, c), &w_of_c(c), dxs) => {}
                        None => GBUF.with(|cell| {
                            let mut gbuf = cell.borrow_mut();
                            gbuf.clear();
                            gbuf.resize(self.rows.len() * self.row_len(), 0.0);
                            for j in 0..m {
                                let k = c * m + j;
                                self.scatter_isa(dy_of(j), &w[k * taps..(k + 1) * taps], &mut gbuf);
                            }
                            self.unfill(&gbuf, dxs);
                        }),
                    }
                }
            }
        };
        for_each_claimed_span(&mut sums, Spans::Even(per), |claims| {
            for (c, slot) in claims {
                channel(c, slot);
            }
        });
        if let Some(dw) = dw {
            for (d, slot) in dw.chunks_exact_mut(wlen).zip(sums.chunks_exact(per)) {
                d.copy_from_slice(&slot[..wlen]);
            }
        }
        if let Some(db) = db {
            for (d, slot) in db.chunks_exact_mut(blen).zip(sums.chunks_exact(per)) {
                d.copy_from_slice(&slot[wlen..wlen + blen]);
            }
        }
        Ok(())
    }

    /// For stride 1 with zero padding and a fast kernel: the layer whose forward pass is this
    /// layer's grad input (a depthwise convolution of dy with the taps rotated by 180° and
    /// padding `(k − 1) − p` per side), with K channels (the m filters of a channel are summed).
    fn adjoint(&self) -> Option<Depthwise> {
        let g = &self.geom;
        let s = &g.spec;
        self.fast?;
        if s.stride() != [1, 1] || Border::from(s.padding_mode()) != Border::Zeros {
            return None;
        }
        let [kh, kw] = s.kernel();
        let p = &g.pad;
        let sides = [
            (kh - 1).checked_sub(p[0])?,
            (kh - 1).checked_sub(p[1])?,
            (kw - 1).checked_sub(p[2])?,
            (kw - 1).checked_sub(p[3])?,
        ];
        let spec = crate::spec::ConvSpec::conv2d(g.k, g.k, [kh, kw])
            .padding_rule(crate::spec::Padding::Explicit(sides))
            .groups(g.k)
            .bias(false)
            .build()
            .ok()?;
        let ag = spec.geometry([g.n, g.k, g.oh, g.ow]).ok()?;
        if ag.oh != g.h || ag.ow != g.w {
            return None;
        }
        let adj = Depthwise::new(&ag, self.isa).ok()?;
        adj.fast.is_some().then_some(adj)
    }

    /// Weight gradient of a *grouped* convolution with this layer's spatial geometry (same
    /// kernel, stride, dilation, padding and mode; `groups` groups, `k_total` output channels):
    /// `out[k, c', ky, kx] = Σ_{n,oy,ox} dy[n,k,oy,ox] · x_pad[n, c, oy·s+ky·d, ox·s+kx·d]` for
    /// every input channel c of k's group. Each x plane is buffered once and dotted with the
    /// dy planes of its group — the right shape of work when groups are too narrow for a GEMM
    /// (ResNeXt's 4 channels per group). `out` is (K, C/groups, kh, kw), contiguous.
    pub fn grouped_weight_grad(
        &self,
        x: &[f32],
        dy: &[f32],
        k_total: usize,
        groups: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let g = &self.geom;
        let [kh, kw] = g.spec.kernel();
        let taps = kh * kw;
        let (in_plane, out_plane) = (g.h * g.w, g.oh * g.ow);
        if groups == 0
            || !g.c.is_multiple_of(groups)
            || !k_total.is_multiple_of(groups)
            || x.len() != g.n * g.c * in_plane
            || dy.len() != g.n * k_total * out_plane
            || out.len() != k_total * (g.c / groups) * taps
        {
            return Err(ConvError::Unsupported(
                "grouped weight gradient: operand sizes do not fit the layer".into(),
            ));
        }
        let (ag, bg) = (g.c / groups, k_total / groups);
        let per_c: Vec<Vec<f32>> = (0..g.c)
            .into_par_iter()
            .map(|c| {
                let gi = c / ag;
                let mut acc = vec![0f32; bg * taps];
                let mut buf = Buffer {
                    tag: 0,
                    off: 0,
                    data: Vec::new(),
                };
                for n in 0..g.n {
                    let xs = &x[(n * g.c + c) * in_plane..][..in_plane];
                    if self.fast.is_none() {
                        self.fill(xs, &mut buf);
                    }
                    for j in 0..bg {
                        let k = gi * bg + j;
                        let dys = &dy[(n * k_total + k) * out_plane..][..out_plane];
                        let gw = &mut acc[j * taps..(j + 1) * taps];
                        if !self.fast_weight_grad(xs, dys, gw, &[]) {
                            self.weight_taps_isa(dys, buf.view(), gw);
                        }
                    }
                }
                acc
            })
            .collect();
        for (c, acc) in per_c.iter().enumerate() {
            let (gi, cl) = (c / ag, c % ag);
            for j in 0..bg {
                let k = gi * bg + j;
                out[(k * ag + cl) * taps..][..taps].copy_from_slice(&acc[j * taps..(j + 1) * taps]);
            }
        }
        Ok(())
    }

    /// [`Depthwise::scatter`] compiled for this kernel's instruction set.
    fn scatter_isa(&self, dys: &[f32], wk: &[f32], gbuf: &mut [f32]) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `new` checked that the CPU has AVX-512F.
            Isa::Avx512 => unsafe { self.scatter_avx512(dys, wk, gbuf) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `new` checked that the CPU has AVX2 and FMA.
            Isa::Avx2 => unsafe { self.scatter_avx2(dys, wk, gbuf) },
            _ => self.scatter(dys, wk, gbuf),
        }
    }

    /// [`Depthwise::weight_taps`] compiled for this kernel's instruction set.
    fn weight_taps_isa(&self, dys: &[f32], buf: &[f32], gw: &mut [f32]) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `new` checked that the CPU has AVX-512F.
            Isa::Avx512 => unsafe { self.weight_taps_avx512(dys, buf, gw) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `new` checked that the CPU has AVX2 and FMA.
            Isa::Avx2 => unsafe { self.weight_taps_avx2(dys, buf, gw) },
            _ => self.weight_taps(dys, buf, gw),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn scatter_avx512(&self, dys: &[f32], wk: &[f32], gbuf: &mut [f32]) {
        self.scatter(dys, wk, gbuf)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scatter_avx2(&self, dys: &[f32], wk: &[f32], gbuf: &mut [f32]) {
        self.scatter(dys, wk, gbuf)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn weight_taps_avx512(&self, dys: &[f32], buf: &[f32], gw: &mut [f32]) {
        self.weight_taps(dys, buf, gw)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weight_taps_avx2(&self, dys: &[f32], buf: &[f32], gw: &mut [f32]) {
        self.weight_taps(dys, buf, gw)
    }

    /// `gbuf[row(oy,ky) + col_off[kx] + ox] += w[ky,kx] · dy[oy, ox]`: the forward taps reversed.
    #[inline(always)]
    fn scatter(&self, dys: &[f32], wk: &[f32], gbuf: &mut [f32]) {
        let g = &self.geom;
        let [kh, kw] = g.spec.kernel();
        let (sh, dh, rl, ow) = (
            g.spec.stride()[0],
            g.spec.dilation()[0],
            self.row_len(),
            g.ow,
        );
        for (oy, drow) in dys.chunks_exact(ow).enumerate() {
            for ky in 0..kh {
                let r = (oy * sh + ky * dh) * rl;
                for (kx, &c) in self.col_off.iter().enumerate() {
                    let wv = wk[ky * kw + kx];
                    for (b, d) in gbuf[r + c..r + c + ow].iter_mut().zip(drow) {
                        *b += wv * d;
                    }
                }
            }
        }
    }

    /// `gw[ky,kx] += Σ_{oy,ox} dy[oy,ox] · buf[row(oy,ky) + col_off[kx] + ox]`.
    #[inline(always)]
    fn weight_taps(&self, dys: &[f32], buf: &[f32], gw: &mut [f32]) {
        let g = &self.geom;
        let [kh, kw] = g.spec.kernel();
        let (sh, dh, rl, ow) = (
            g.spec.stride()[0],
            g.spec.dilation()[0],
            self.row_len(),
            g.ow,
        );
        for ky in 0..kh {
            for (kx, &c) in self.col_off.iter().enumerate() {
                let mut lanes = [0f32; 16];
                for (oy, drow) in dys.chunks_exact(ow).enumerate() {
                    let r = (oy * sh + ky * dh) * rl + c;
                    dot_into(&mut lanes, drow, &buf[r..r + ow]);
                }
                gw[ky * kw + kx] += lanes.iter().sum::<f32>();
            }
        }
    }

    /// Adjoint of [`Depthwise::fill`]: adds each buffer slot into the input cell it was read from.
    fn unfill(&self, gbuf: &[f32], dxs: &mut [f32]) {
        let (w, sw, rl) = (self.geom.w, self.geom.spec.stride()[1], self.row_len());
        if self.border_slots.is_empty()
            && Border::from(self.geom.spec.padding_mode()) == Border::Zeros
        {
            // Zero padding: every input cell is read from exactly one slot, so the adjoint
            // is a copy (stride 1) or an interleave of the phases.
            for (r, src) in self.rows.iter().enumerate() {
                let Some(sr) = src else { continue };
                let grow = &gbuf[r * rl..(r + 1) * rl];
                let drow = &mut dxs[*sr as usize * w..(*sr as usize + 1) * w];
                let mut done = 0;
                #[cfg(target_arch = "x86_64")]
                if sw == 2 && self.isa == Isa::Avx512 && self.interior.len() == 2 {
                    let (e, o) = if self.interior[0].3 == 0 {
                        (self.interior[0], self.interior[1])
                    } else {
                        (self.interior[1], self.interior[0])
                    };
                    let even = &grow[e.0 * self.pstride + e.1..e.0 * self.pstride + e.2];
                    let odd = &grow[o.0 * self.pstride + o.1..o.0 * self.pstride + o.2];
                    // SAFETY: `new` checked the CPU has AVX-512F; the function reads and
                    // writes only within the slices it is given.
                    done = unsafe { fast::interleave(even, odd, drow) };
                }
                for &(p, t0, t1, j0) in &self.interior {
                    let src = &grow[p * self.pstride + t0..p * self.pstride + t1];
                    if sw == 1 {
                        drow[j0..j0 + src.len()].copy_from_slice(src);
                        continue;
                    }
                    // Columns j0 + t·sw not yet written by the vector interleave.
                    let skip = done.saturating_sub(j0).div_ceil(sw);
                    for (t, v) in src.iter().enumerate().skip(skip) {
                        drow[j0 + t * sw] = *v;
                    }
                }
            }
            return;
        }
        dxs.fill(0.0);
        for (r, src) in self.rows.iter().enumerate() {
            let Some(sr) = src else { continue };
            let grow = &gbuf[r * rl..(r + 1) * rl];
            let drow = &mut dxs[*sr as usize * w..(*sr as usize + 1) * w];
            for &(p, t0, t1, j0) in &self.interior {
                let src = &grow[p * self.pstride + t0..p * self.pstride + t1];
                for (t, v) in src.iter().enumerate() {
                    drow[j0 + t * sw] += v;
                }
            }
            for &(slot, col) in &self.border_slots {
                drow[col as usize] += grow[slot as usize];
            }
        }
    }
}

/// `lanes[l] += Σ_i a[16i + l] · b[16i + l]` (a fixed, vectorisable reduction order; the
/// tail is zero-padded to a whole vector so it vectorises too).
#[inline(always)]
fn dot_into(lanes: &mut [f32; 16], a: &[f32], b: &[f32]) {
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    let (ra, rb) = (ca.remainder(), cb.remainder());
    if !ra.is_empty() {
        let (mut ta, mut tb) = ([0f32; 16], [0f32; 16]);
        ta[..ra.len()].copy_from_slice(ra);
        tb[..rb.len()].copy_from_slice(rb);
        for l in 0..16 {
            lanes[l] += ta[l] * tb[l];
        }
    }
}

/// Sum in 16 lanes then across them (fixed order).
fn sum_lanes(a: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let ones = [1f32; 16];
    let mut c = a.chunks_exact(16);
    for x in &mut c {
        for l in 0..16 {
            lanes[l] += x[l] * ones[l];
        }
    }
    for (l, x) in c.remainder().iter().enumerate() {
        lanes[l] += x;
    }
    lanes.iter().sum()
}

/// `dst[t] = src[t·stride]`: one phase of a strided row (stride 2 is vectorised).
fn strided_copy(src: &[f32], stride: usize, dst: &mut [f32], isa: Isa) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if stride == 2 && isa == Isa::Avx512 {
        // SAFETY: the Isa was checked against the CPU in `Depthwise::new`; the function
        // reads and writes only within the slices it is given.
        done = unsafe { x86::deinterleave_even_avx512(src, dst) };
    }
    let _ = isa;
    for (t, d) in dst.iter_mut().enumerate().skip(done) {
        *d = src[t * stride];
    }
}

/// Everything a vector tile needs, as raw parts (the tiles are `unsafe` SIMD code).
struct TileArgs {
    buf: *const f32,
    w: *const f32,
    col_off: *const usize,
    out: *mut f32,
    kh: usize,
    kw: usize,
    sh: usize,
    dh: usize,
    /// Floats per buffered row.
    rl: usize,
    ow: usize,
    bias: f32,
}

/// Portable plane: `out[oy, ox] = bias + Σ_{ky,kx} w[ky,kx] · buf[row(oy,ky) + col_off[kx] + ox]`,
/// taps in the same order as the vector tiles.
fn plane_scalar(
    buf: &[f32],
    col_off: &[usize],
    wk: &[f32],
    bias: f32,
    a: &TileArgs,
    out: &mut [f32],
) {
    for (oy, orow) in out.chunks_exact_mut(a.ow).enumerate() {
        orow.fill(bias);
        for ky in 0..a.kh {
            let r = (oy * a.sh + ky * a.dh) * a.rl;
            for (kx, &c) in col_off.iter().enumerate() {
                let wv = wk[ky * a.kw + kx];
                for (o, s) in orow.iter_mut().zip(&buf[r + c..r + c + a.ow]) {
                    *o += wv * s;
                }
            }
        }
    }
}

/// A thread's plane buffer and the layout it currently holds.
struct Buffer {
    tag: u64,
    /// Offset of the 64-byte-aligned start in `data`.
    off: usize,
    data: Vec<f32>,
}

impl Buffer {
    /// The buffered plane (aligned start).
    fn view(&self) -> &[f32] {
        &self.data[self.off..]
    }
}

/// dx's base pointer, shared by the backward tasks (each writes its own planes).
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);

// SAFETY: only a pointer; the backward tasks write disjoint planes through it (see there).
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    /// Per-thread gradient buffer of the backward pass (reused, zeroed per plane).
    static GBUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static BUF: RefCell<Buffer> = const { RefCell::new(Buffer { tag: 0, off: 0, data: Vec::new() }) };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::TileArgs;
    use std::arch::x86_64::*;

    /// Generates a plane kernel for one vector width. A plane is cut into tiles of R rows ×
    /// V vectors, R·V ≤ 8 independent accumulators, so the FMA latency (4 cycles) is hidden
    /// even for narrow planes (14 columns = one vector: 8 rows at once).
    macro_rules! plane_kernel {
        ($plane:ident, $tile:ident, $feat:literal, $v:ty, $lanes:expr,
         $set1:ident, $loadu:ident, $fmadd:ident, $storeu:ident, $store_part:path) => {
            /// One R × V tile at (oy, ox); the last vector stores `n_last` lanes.
            ///
            /// # Safety
            /// The CPU must have the target feature; `a` must describe valid buffers.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn $tile<const R: usize, const V: usize>(
                a: &TileArgs,
                oy: usize,
                ox: usize,
                n_last: usize,
            ) {
                let mut acc = [[$set1(a.bias); V]; R];
                for ky in 0..a.kh {
                    let mut base = [0usize; R];
                    for (r, b) in base.iter_mut().enumerate() {
                        *b = ((oy + r) * a.sh + ky * a.dh) * a.rl + ox;
                    }
                    for kx in 0..a.kw {
                        let wv = $set1(*a.w.add(ky * a.kw + kx));
                        let c = *a.col_off.add(kx);
                        for r in 0..R {
                            let p = a.buf.add(base[r] + c);
                            for v in 0..V {
                                acc[r][v] = $fmadd($loadu(p.add(v * $lanes)), wv, acc[r][v]);
                            }
                        }
                    }
                }
                for (r, row) in acc.iter().enumerate() {
                    let o = a.out.add((oy + r) * a.ow + ox);
                    for (v, val) in row.iter().enumerate() {
                        if v + 1 < V || n_last == $lanes {
                            $storeu(o.add(v * $lanes), *val);
                        } else {
                            $store_part(o.add(v * $lanes), *val, n_last);
                        }
                    }
                }
            }

            /// A whole output plane of `oh` rows.
            ///
            /// # Safety
            /// As for the tile.
            #[target_feature(enable = $feat)]
            pub unsafe fn $plane(a: &TileArgs, oh: usize) {
                let vt = a.ow.div_ceil($lanes);
                let mut vb = 0;
                while vb < vt {
                    let v = (vt - vb).min(4);
                    let ox = vb * $lanes;
                    let n_last = if vb + v == vt {
                        a.ow - (vt - 1) * $lanes
                    } else {
                        $lanes
                    };
                    let rows = 8 / v;
                    let mut oy = 0;
                    while oy + rows <= oh {
                        match v {
                            1 => $tile::<8, 1>(a, oy, ox, n_last),
                            2 => $tile::<4, 2>(a, oy, ox, n_last),
                            3 => $tile::<2, 3>(a, oy, ox, n_last),
                            _ => $tile::<2, 4>(a, oy, ox, n_last),
                        }
                        oy += rows;
                    }
                    while oy < oh {
                        match v {
                            1 => $tile::<1, 1>(a, oy, ox, n_last),
                            2 => $tile::<1, 2>(a, oy, ox, n_last),
                            3 => $tile::<1, 3>(a, oy, ox, n_last),
                            _ => $tile::<1, 4>(a, oy, ox, n_last),
                        }
                        oy += 1;
                    }
                    vb += v;
                }
            }
        };
    }

    /// Writes `dst[t] = src[2t]` for as many whole blocks of 16 as fit; returns how many
    /// elements of `dst` were written.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn deinterleave_even_avx512(src: &[f32], dst: &mut [f32]) -> usize {
        let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let mut t = 0;
        while t + 16 <= dst.len() && 2 * t + 32 <= src.len() {
            let a = _mm512_loadu_ps(src.as_ptr().add(2 * t));
            let b = _mm512_loadu_ps(src.as_ptr().add(2 * t + 16));
            _mm512_storeu_ps(dst.as_mut_ptr().add(t), _mm512_permutex2var_ps(a, idx, b));
            t += 16;
        }
        t
    }

    /// Stores the first `n` lanes of `v`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store_part_512(p: *mut f32, v: __m512, n: usize) {
        _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as u16, v);
    }

    /// Stores the first `n` lanes of `v`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn store_part_256(p: *mut f32, v: __m256, n: usize) {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
        _mm256_maskstore_ps(p, mask, v);
    }

    plane_kernel!(
        plane_avx512,
        tile_avx512,
        "avx512f",
        __m512,
        16,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_storeu_ps,
        store_part_512
    );
    plane_kernel!(
        plane_avx2,
        tile_avx2,
        "avx2,fma",
        __m256,
        8,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_storeu_ps,
        store_part_256
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::spec::{ConvSpec, Padding, PaddingMode};
    use crate::testutil::pseudo;
    use ndarray::{Array1, Array4};

    fn check(spec: ConvSpec, input: [usize; 4]) {
        let v = spec.build().unwrap();
        let g = v.geometry(input).unwrap();
        let x = Array4::from_shape_vec(input, pseudo(input.iter().product(), 1)).unwrap();
        let ws = v.weight_shape();
        let w = Array4::from_shape_vec(ws, pseudo(ws.iter().product(), 2)).unwrap();
        let b = Array1::from(pseudo(g.k, 3));
        let bias = v.has_bias().then_some(&b);
        let want = reference::forward(&v, x.view(), w.view(), bias.map(|b| b.view())).unwrap();
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            if !isa.available() {
                continue;
            }
            let dw = Depthwise::new(&g, isa).unwrap();
            let mut y = vec![f32::NAN; g.output_shape().iter().product()];
            dw.run(
                x.as_slice().unwrap(),
                w.as_slice().unwrap(),
                bias.map(|b| b.as_slice().unwrap()),
                &mut y,
            )
            .unwrap();
            for (i, (a, e)) in y.iter().zip(want.iter()).enumerate() {
                assert!(
                    (a - e).abs() <= 1e-5 + 1e-5 * e.abs(),
                    "{isa:?} {spec:?} {input:?}: element {i}: {a} vs {e}"
                );
            }
        }
    }

    #[test]
    fn matches_reference_on_mobile_shapes() {
        check(
            ConvSpec::conv2d(8, 8, 3).padding(1).groups(8),
            [1, 8, 19, 23],
        );
        check(
            ConvSpec::conv2d(8, 8, 3).stride(2).padding(1).groups(8),
            [2, 8, 20, 21],
        );
        check(
            ConvSpec::conv2d(4, 8, 5).padding(2).groups(4),
            [1, 4, 33, 70],
        );
        check(
            ConvSpec::conv2d(3, 3, 3).padding(1).groups(3),
            [1, 3, 5, 130],
        );
    }

    #[test]
    fn matches_reference_with_dilation_stride_and_borders() {
        for mode in [
            PaddingMode::Zeros,
            PaddingMode::Reflect,
            PaddingMode::Replicate,
            PaddingMode::Circular,
        ] {
            check(
                ConvSpec::conv2d(3, 6, [3, 2])
                    .stride([2, 3])
                    .dilation([2, 1])
                    .padding_rule(Padding::Explicit([2, 1, 0, 1]))
                    .padding_mode(mode)
                    .groups(3),
                [1, 3, 11, 17],
            );
            check(
                ConvSpec::conv2d(2, 2, 3)
                    .dilation(3)
                    .padding(3)
                    .padding_mode(mode)
                    .groups(2),
                [1, 2, 9, 80],
            );
        }
    }

    #[test]
    fn matches_reference_without_bias_and_for_conv1d_and_tall_kernels() {
        check(
            ConvSpec::conv2d(2, 2, 3).bias(false).groups(2),
            [1, 2, 4, 4],
        );
        check(
            ConvSpec::conv1d(4, 4, 7).padding(3).groups(4),
            [3, 4, 1, 50],
        );
        check(ConvSpec::conv2d(1, 1, [18, 1]).groups(1), [1, 1, 20, 3]);
    }

    fn check_backward(spec: ConvSpec, input: [usize; 4]) {
        let v = spec.build().unwrap();
        let g = v.geometry(input).unwrap();
        let x = Array4::from_shape_vec(input, pseudo(input.iter().product(), 4)).unwrap();
        let ws = v.weight_shape();
        let w = Array4::from_shape_vec(ws, pseudo(ws.iter().product(), 5)).unwrap();
        let dy = Array4::from_shape_vec(
            g.output_shape(),
            pseudo(g.output_shape().iter().product(), 6),
        )
        .unwrap();
        let want = reference::backward(
            &v,
            x.view(),
            w.view(),
            dy.view(),
            reference::GradRequest::all(),
        )
        .unwrap();
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            if !isa.available() {
                continue;
            }
            let d = Depthwise::new(&g, isa).unwrap();
            let mut dx = vec![f32::NAN; x.len()];
            let mut dw = vec![f32::NAN; w.len()];
            let mut db = vec![f32::NAN; g.k];
            d.backward(
                x.as_slice().unwrap(),
                w.as_slice().unwrap(),
                dy.as_slice().unwrap(),
                Some(&mut dx),
                Some(&mut dw),
                Some(&mut db),
            )
            .unwrap();
            let close = |what: &str, got: &[f32], exp: &[f32]| {
                let scale = exp.iter().fold(1f32, |a, b| a.max(b.abs()));
                for (i, (a, e)) in got.iter().zip(exp).enumerate() {
                    assert!(
                        (a - e).abs() <= 1e-5 * scale,
                        "{isa:?} {what} {spec:?} {input:?}: element {i}: {a} vs {e}"
                    );
                }
            };
            close("dx", &dx, want.input.as_ref().unwrap().as_slice().unwrap());
            close("dw", &dw, want.weight.as_ref().unwrap().as_slice().unwrap());
            close("db", &db, want.bias.as_ref().unwrap().as_slice().unwrap());
            // Any subset of the gradients: each bit-identical to the same gradient computed
            // with all three (their sums share a per-channel buffer laid out by the subset).
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            for subset in 0..7u8 {
                let (mut sx, mut sw, mut sb) = (
                    vec![f32::NAN; x.len()],
                    vec![f32::NAN; w.len()],
                    vec![f32::NAN; g.k],
                );
                d.backward(
                    x.as_slice().unwrap(),
                    w.as_slice().unwrap(),
                    dy.as_slice().unwrap(),
                    (subset & 1 != 0).then_some(&mut sx[..]),
                    (subset & 2 != 0).then_some(&mut sw[..]),
                    (subset & 4 != 0).then_some(&mut sb[..]),
                )
                .unwrap();
                for (bit, got, all) in [(1, &sx, &dx), (2, &sw, &dw), (4, &sb, &db)] {
                    if subset & bit != 0 {
                        assert_eq!(bits(got), bits(all), "{isa:?} subset {subset}, part {bit}");
                    } else {
                        assert!(
                            got.iter().all(|v| v.is_nan()),
                            "subset {subset} wrote {bit}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn backward_matches_reference() {
        for mode in [
            PaddingMode::Zeros,
            PaddingMode::Reflect,
            PaddingMode::Replicate,
            PaddingMode::Circular,
        ] {
            check_backward(
                ConvSpec::conv2d(3, 6, [3, 2])
                    .stride([2, 3])
                    .dilation([2, 1])
                    .padding_rule(Padding::Explicit([2, 1, 0, 1]))
                    .padding_mode(mode)
                    .groups(3),
                [2, 3, 11, 17],
            );
            check_backward(
                ConvSpec::conv2d(4, 4, 3)
                    .padding(1)
                    .padding_mode(mode)
                    .groups(4),
                [1, 4, 13, 40],
            );
        }
        check_backward(
            ConvSpec::conv2d(2, 4, 5).stride(2).padding(2).groups(2),
            [3, 2, 20, 37],
        );
        check_backward(
            ConvSpec::conv1d(3, 3, 3).padding(1).groups(3),
            [2, 3, 1, 50],
        );
    }

    /// The fast kernels' shapes on widths around the vector length and past two vectors,
    /// heights around the row block (every tail block), asymmetric and over-wide padding,
    /// multipliers and both strides.
    #[test]
    fn fast_shapes_match_reference_forward_and_backward() {
        for (k, s) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
            for (h, w) in [
                (1, 1),
                (5, 15),
                (7, 16),
                (9, 17),
                (6, 32),
                (11, 33),
                (4, 47),
                // Whole (unmasked) column vectors between masked ones, at stride 2 too.
                (3, 112),
                (8, 70),
            ] {
                for pad in [
                    Padding::Explicit([k / 2; 4]),
                    Padding::Explicit([0; 4]),
                    Padding::Explicit([1, 0, 0, 2]),
                    Padding::Explicit([k, k - 1, k + 1, 1]),
                ] {
                    let (ph, pw) = match pad {
                        Padding::Explicit([t, b, l, r]) => (h + t + b, w + l + r),
                        _ => unreachable!(),
                    };
                    if ph < k || pw < k {
                        continue;
                    }
                    for m in [1, 2] {
                        let spec = || {
                            ConvSpec::conv2d(3, 3 * m, k)
                                .stride(s)
                                .padding_rule(pad)
                                .groups(3)
                        };
                        check(spec(), [1, 3, h, w]);
                        check_backward(spec(), [2, 3, h, w]);
                    }
                }
            }
        }
    }

    /// The fast kernels run a task's planes in one call (`fast::forward_run`): tasks of several
    /// planes that cross image boundaries (channel `(first + i) mod C`), multipliers, bias,
    /// input planes with gaps between them (`run_planes`' stride, NaN in the gaps), and 1–3
    /// threads, against the reference and bit-identical across thread counts.
    #[test]
    fn fast_runs_span_tasks_images_and_strided_planes() {
        if !Isa::Avx512.available() {
            return;
        }
        for (k, s) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
            for m in [1, 2] {
                // 3 images × 16 channels of 14 × 14: tasks of 21 (m = 1) or 11 planes (3×3
                // stride 1, m = 2), so a task starts mid-image.
                let (n, c, h, w) = (3, 16, 14, 14);
                let v = ConvSpec::conv2d(c, c * m, k)
                    .stride(s)
                    .padding(k / 2)
                    .groups(c)
                    .build()
                    .unwrap();
                let g = v.geometry([n, c, h, w]).unwrap();
                let d = Depthwise::new(&g, Isa::Avx512).unwrap();
                assert!(d.fast.is_some());
                let x = Array4::from_shape_vec((n, c, h, w), pseudo(n * c * h * w, 11)).unwrap();
                let wt =
                    Array4::from_shape_vec(v.weight_shape(), pseudo(c * m * k * k, 12)).unwrap();
                let b = Array1::from(pseudo(c * m, 13));
                let want = reference::forward(&v, x.view(), wt.view(), Some(b.view())).unwrap();
                let stride = h * w + 5;
                let mut gapped = vec![f32::NAN; (n * c - 1) * stride + h * w];
                for (i, plane) in x.as_slice().unwrap().chunks(h * w).enumerate() {
                    gapped[i * stride..i * stride + h * w].copy_from_slice(plane);
                }
                let run = |threads: usize, xs: &[f32], stride: usize| {
                    let mut y = vec![f32::NAN; want.len()];
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap()
                        .install(|| {
                            d.run_planes(
                                xs,
                                stride,
                                wt.as_slice().unwrap(),
                                Some(b.as_slice().unwrap()),
                                &mut y,
                            )
                        })
                        .unwrap();
                    y
                };
                let one = run(1, x.as_slice().unwrap(), h * w);
                for (i, (a, e)) in one.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (a - e).abs() <= 1e-5 + 1e-5 * e.abs(),
                        "{k}x{k} s{s} m{m}: element {i}: {a} vs {e}"
                    );
                }
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                for t in [1, 2, 3] {
                    assert_eq!(bits(&one), bits(&run(t, &gapped, stride)), "gapped, {t}");
                    assert_eq!(bits(&one), bits(&run(t, x.as_slice().unwrap(), h * w)));
                }
            }
        }
    }

    /// The fast kernels are the ones under test above (AVX-512 machines), and the backward
    /// is bit-identical for any thread count.
    #[test]
    fn fast_path_engages_and_backward_is_deterministic_across_threads() {
        if !Isa::Avx512.available() {
            return;
        }
        for (k, s) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
            let v = ConvSpec::conv2d(6, 12, k)
                .stride(s)
                .padding(k / 2)
                .groups(6)
                .build()
                .unwrap();
            let input = [2, 6, 23, 37];
            let g = v.geometry(input).unwrap();
            let d = Depthwise::new(&g, Isa::Avx512).unwrap();
            assert!(d.fast.is_some(), "{k}x{k} s{s}");
            assert_eq!(d.adjoint().is_some(), s == 1);
            let x = pseudo(input.iter().product(), 7);
            let w = pseudo(12 * k * k, 8);
            let dy = pseudo(g.output_shape().iter().product(), 9);
            let run = |threads: usize| {
                let (mut dx, mut dw, mut db) =
                    (vec![0f32; x.len()], vec![0f32; w.len()], vec![0f32; 12]);
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| {
                        d.backward(&x, &w, &dy, Some(&mut dx), Some(&mut dw), Some(&mut db))
                            .unwrap()
                    });
                (dx, dw, db)
            };
            let one = run(1);
            for t in [2, 3] {
                let other = run(t);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&one.0), bits(&other.0), "dx, {t} threads");
                assert_eq!(bits(&one.1), bits(&other.1), "dw, {t} threads");
                assert_eq!(bits(&one.2), bits(&other.2), "db, {t} threads");
            }
        }
        // Border modes other than zeros keep the buffered path.
        let v = ConvSpec::conv2d(2, 2, 3)
            .padding(1)
            .padding_mode(PaddingMode::Reflect)
            .groups(2)
            .build()
            .unwrap();
        let g = v.geometry([1, 2, 9, 9]).unwrap();
        assert!(Depthwise::new(&g, Isa::Avx512).unwrap().fast.is_none());
    }

    #[test]
    fn rejects_non_depthwise_layers() {
        let v = ConvSpec::conv2d(4, 4, 3).groups(2).build().unwrap();
        let g = v.geometry([1, 4, 8, 8]).unwrap();
        assert!(Depthwise::new(&g, Isa::Scalar).is_err());
    }
}
