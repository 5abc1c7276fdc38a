//! Indirect convolution on NCHW: output channels on the vector lanes, every input value
//! broadcast straight from the input. No im2col panel is packed at all.
//!
//! Per group, `Yᵀ[P × Kg] = X̂ᵀ[P × taps·Cg] · Ŵ`: row `p` of `X̂ᵀ` is output pixel `p`, and its
//! column `(tap, c)` is `x[c, src(p, tap)]`, found at `off(p, tap) + c·H·W` in the group's
//! input planes. A microkernel call takes `MR` pixels with their offsets for one tap (the
//! indirection buffer of Dukhan's indirect convolution, 2019, with offsets for pointers) and
//! walks a chunk of that tap's channels at the plane stride. Each input value is broadcast
//! from memory into `NR/16` FMAs against a `kc × NR` panel of weights, packed once at plan
//! time (`NR` output channels). The panel stays in L1 while every pixel group of the tile runs
//! over it; the input values stream from L2.
//!
//! The implicit GEMM ([`super::igemm`]) packs `kc × tile` input panels per tile, chunk and
//! channel block instead. On an atrous layer most of its segments are a few pixels long
//! (class rows 6 and 20 wide on ASPP 3×3 d6, 32×32), and the packing was ~8 % of the layer.
//! Here the cost is an `MR`-entry offset row per tap and group, and one transpose of the
//! `tile × NR` sums into the NCHW output.
//!
//! * **Zero padding**: output rows and columns are cut into classes that see the same
//!   in-bounds taps (for every layer: the border rows and columns of a plain 3×3 form their
//!   own classes), and a tile multiplies only those taps. So every offset is in bounds and no
//!   zero is multiplied.
//! * **Other padding modes**: every tap reads a real pixel (the border's source), so the
//!   offsets simply point at it.
//! * **Any stride and dilation**: an offset is any input position.
//!
//! A task owns one image × group × tile × `NR`-channel block and sums every tap and chunk in
//! a fixed order, so results do not depend on the number of threads.
//!
//! When it wins (AVX-512, Zen 5): the 6×64 kernel runs at ~95 % of the packed sgemm kernel's
//! rate on ASPP's central class (a standalone loop: 224–230 vs 235–240 GFLOP/s), and the
//! kernel is 93 % of that layer's time; so it beats the implicit GEMM and, on strided and
//! small-map layers, the direct kernel, wherever the output channels fill its `NR` lanes.
//! Few output channels (the 8×16 kernel) and few input channels (a call per tap and ≤ 3
//! channels: the RGB stem) lose, as do AVX2's 12-accumulator kernels; the measured rule is
//! `prefers_indirect` in [`crate::plan`].

use super::igemm::{axis_table, classes, tap_planes};
use super::store::{for_each_task_ordered, SharedOut};
use super::tasks::{for_each_chunk, uneven_order};
use super::transpose::transpose;
use super::{round_up, Isa};
use crate::border::Border;
use crate::geometry::Geometry;
use crate::spec::PaddingMode;
use ndarray::{ArrayView1, ArrayView4};

/// Pixels per tile (rounded to the kernel's `MR`).
const TILE_PIXELS: usize = 192;
/// Fewest tasks a layer is cut into where it allows (fixed: independent of the thread count).
const MIN_TASKS: usize = 8;
/// Bytes of one `kc × NR` weight panel we want resident in L1.
const B_PANEL_BYTES: usize = 32 * 1024;

/// A register-blocked indirect microkernel: `MR` pixels × `NR` output channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    /// The instruction set it runs on.
    pub isa: Isa,
    /// Pixels (rows of sums) per call.
    pub mr: usize,
    /// Output channels (columns of sums) per call.
    pub nr: usize,
}

impl Kernel {
    /// The kernels of `isa`, widest first: each keeps 24 (AVX-512), 12 (AVX2) accumulator
    /// registers, or is the portable loop.
    pub fn of(isa: Isa) -> Vec<Kernel> {
        let shapes: &[(usize, usize)] = match isa {
            Isa::Avx512 => &[(6, 64), (8, 48), (12, 32), (8, 16)],
            Isa::Avx2 => &[(4, 24), (6, 16), (8, 8)],
            Isa::Scalar => &[(4, 16)],
        };
        shapes
            .iter()
            .map(|&(mr, nr)| Kernel { isa, mr, nr })
            .collect()
    }

    /// The kernel of `isa` that pads `kg` output channels least (the widest on a tie).
    pub fn pick(isa: Isa, kg: usize) -> Kernel {
        Self::of(isa)
            .into_iter()
            .min_by_key(|k| round_up(kg.max(1), k.nr))
            .expect("every level has a kernel")
    }

    /// `c[r][j] (+)= Σ_{i < kc} x[offs[r] + i·lda] · b[i·NR + j]` for `r < MR`, `j < NR`
    /// (`c` row-major `MR × NR`; overwritten unless `accumulate`).
    ///
    /// # Safety
    /// `self.isa` is available; `offs` holds `MR` offsets and `x` is valid for reads at
    /// `offs[r] + i·lda` for every `r` and `i < kc`; `b` for `kc·NR` reads; `c` for `MR·NR`
    /// writes (and reads if `accumulate`).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run(
        self,
        kc: usize,
        offs: &[u32],
        x: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        accumulate: bool,
    ) {
        debug_assert!(offs.len() >= self.mr);
        let o = offs.as_ptr();
        // SAFETY: the contract above is each kernel's contract; the ISA was checked by the
        // caller (plans only hold kernels of available levels).
        unsafe {
            match (self.isa, self.mr, self.nr) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, 6, 64) => x86::k512::<6, 4>(kc, o, x, lda, b, c, accumulate),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, 8, 48) => x86::k512::<8, 3>(kc, o, x, lda, b, c, accumulate),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, 12, 32) => x86::k512::<12, 2>(kc, o, x, lda, b, c, accumulate),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, 8, 16) => x86::k512::<8, 1>(kc, o, x, lda, b, c, accumulate),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2, 4, 24) => x86::k256::<4, 3>(kc, o, x, lda, b, c, accumulate),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2, 6, 16) => x86::k256::<6, 2>(kc, o, x, lda, b, c, accumulate),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2, 8, 8) => x86::k256::<8, 1>(kc, o, x, lda, b, c, accumulate),
                _ => scalar(self.mr, self.nr, kc, o, x, lda, b, c, accumulate),
            }
        }
    }
}

/// The portable kernel (any `mr × nr`).
///
/// # Safety
/// As [`Kernel::run`].
#[allow(clippy::too_many_arguments)]
unsafe fn scalar(
    mr: usize,
    nr: usize,
    kc: usize,
    offs: *const u32,
    x: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    accumulate: bool,
) {
    // SAFETY: every access is one the contract of `Kernel::run` allows.
    unsafe {
        for r in 0..mr {
            let px = x.add(*offs.add(r) as usize);
            let cr = c.add(r * nr);
            for j in 0..nr {
                let mut s = if accumulate { *cr.add(j) } else { 0.0 };
                // Same summation order as the SIMD kernels: a fresh partial sum over the
                // chunk, then added to what `c` held.
                let mut part = 0f32;
                for i in 0..kc {
                    part = (*px.add(i * lda)).mul_add(*b.add(i * nr + j), part);
                }
                s += part;
                *cr.add(j) = s;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// AVX-512 `MR × 16·NV` kernel: `MR·NV` zmm accumulators, `NV` weight vectors loaded and
    /// one broadcast per pixel per depth step.
    ///
    /// # Safety
    /// AVX-512F available; the rest as [`super::Kernel::run`] with `NR = 16·NV`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn k512<const MR: usize, const NV: usize>(
        kc: usize,
        offs: *const u32,
        x: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        accumulate: bool,
    ) {
        // SAFETY: every pointer offset stays inside the caller's contract.
        unsafe {
            let px: [*const f32; MR] = std::array::from_fn(|r| x.add(*offs.add(r) as usize));
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            let (mut bp, mut o) = (b, 0usize);
            for _ in 0..kc {
                let bv: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(bp.add(16 * v)));
                for (row, p) in acc.iter_mut().zip(&px) {
                    let a = _mm512_set1_ps(*p.add(o));
                    for (s, &w) in row.iter_mut().zip(&bv) {
                        *s = _mm512_fmadd_ps(a, w, *s);
                    }
                }
                o += lda;
                bp = bp.add(16 * NV);
            }
            for (r, row) in acc.iter().enumerate() {
                for (v, &s) in row.iter().enumerate() {
                    let q = c.add(r * 16 * NV + 16 * v);
                    let s = if accumulate {
                        _mm512_add_ps(_mm512_loadu_ps(q), s)
                    } else {
                        s
                    };
                    _mm512_storeu_ps(q, s);
                }
            }
        }
    }

    /// AVX2 `MR × 8·NV` kernel, as [`k512`] on ymm registers.
    ///
    /// # Safety
    /// AVX2 and FMA available; the rest as [`super::Kernel::run`] with `NR = 8·NV`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn k256<const MR: usize, const NV: usize>(
        kc: usize,
        offs: *const u32,
        x: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        accumulate: bool,
    ) {
        // SAFETY: every pointer offset stays inside the caller's contract.
        unsafe {
            let px: [*const f32; MR] = std::array::from_fn(|r| x.add(*offs.add(r) as usize));
            let mut acc = [[_mm256_setzero_ps(); NV]; MR];
            let (mut bp, mut o) = (b, 0usize);
            for _ in 0..kc {
                let bv: [__m256; NV] = std::array::from_fn(|v| _mm256_loadu_ps(bp.add(8 * v)));
                for (row, p) in acc.iter_mut().zip(&px) {
                    let a = _mm256_broadcast_ss(&*p.add(o));
                    for (s, &w) in row.iter_mut().zip(&bv) {
                        *s = _mm256_fmadd_ps(a, w, *s);
                    }
                }
                o += lda;
                bp = bp.add(8 * NV);
            }
            for (r, row) in acc.iter().enumerate() {
                for (v, &s) in row.iter().enumerate() {
                    let q = c.add(r * 8 * NV + 8 * v);
                    let s = if accumulate {
                        _mm256_add_ps(_mm256_loadu_ps(q), s)
                    } else {
                        s
                    };
                    _mm256_storeu_ps(q, s);
                }
            }
        }
    }
}

/// Floats, starting on a 64-byte boundary (whole-line weight-vector loads).
#[derive(Debug)]
struct Aligned {
    buf: Vec<f32>,
    skip: usize,
    len: usize,
}

impl Aligned {
    fn zeros(len: usize) -> Aligned {
        let buf = vec![0f32; len + 16];
        let skip = buf.as_ptr().align_offset(64).min(15);
        Aligned { buf, skip, len }
    }

    fn as_slice(&self) -> &[f32] {
        &self.buf[self.skip..self.skip + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.skip..self.skip + self.len]
    }
}

/// `dst = src`, with the whole-register copies of the AVX-512 kernels' widths unrolled (not a
/// `memmove` call per run).
#[inline]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    match (
        <&mut [f32; 64]>::try_from(&mut *dst),
        <&[f32; 64]>::try_from(src),
    ) {
        (Ok(d), Ok(s)) => *d = *s,
        _ => dst.copy_from_slice(src),
    }
}

/// Packed weights for `NR`-channel kernels: `[group][block][tap][c][j]`, the weight of
/// output channel `block·NR + j` of the group (zero past `Kg`), input channel `c`, tap
/// `ky·kw + kx`.
#[derive(Debug)]
pub(crate) struct PackedWeights {
    data: Aligned,
    nr: usize,
}

impl PackedWeights {
    /// Packs PyTorch-layout weights `(K, Cg, kh, kw)`: per group, block and tap one blocked
    /// transpose of the tap's plane (`[k][c]` → `[c][k]`).
    pub(crate) fn new(w: ArrayView4<f32>, groups: usize, nr: usize) -> PackedWeights {
        let (k, cg, kh, kw) = w.dim();
        let (kg, taps) = (k / groups, kh * kw);
        let nkb = kg.div_ceil(nr);
        let mut data = Aligned::zeros(groups * nkb * taps * cg * nr);
        let ws = w.as_standard_layout();
        let ws = ws.as_slice().expect("standard layout is contiguous");
        let planes = tap_planes(ws, taps);
        let planes = planes.as_deref().unwrap_or(ws);
        let dst = data.as_mut_slice();
        for g in 0..groups {
            for kb in 0..nkb {
                let rows = nr.min(kg - kb * nr);
                for t in 0..taps {
                    let at = ((g * nkb + kb) * taps + t) * cg * nr;
                    let src = &planes[(t * k + g * kg + kb * nr) * cg..][..rows * cg];
                    transpose(src, cg, &mut dst[at..at + cg * nr], nr, rows, cg);
                }
            }
        }
        PackedWeights { data, nr }
    }

    /// [`PackedWeights::new`] of the adjoint convolution's weights (the grad input of the
    /// layer whose weights `(K, Cg, kh, kw)` are `w`), straight from `w`:
    /// `w'[g·Cg + c, k, i, j] = w[g·Kg + k, c, kh−1−i, kw−1−j]`. The adjoint's output channels
    /// are the layer's input channels, contiguous in the taps' planes, so every run of `NR`
    /// is a plain copy.
    pub(crate) fn adjoint(w: ArrayView4<f32>, groups: usize, nr: usize) -> PackedWeights {
        let (k, cg, kh, kw) = w.dim();
        let (kg, taps) = (k / groups, kh * kw);
        // The adjoint has `cg` output and `kg` input channels per group.
        let nkb = cg.div_ceil(nr);
        let block = taps * kg * nr;
        let mut data = Aligned::zeros(groups * nkb * block);
        let ws = w.as_standard_layout();
        let ws = ws.as_slice().expect("standard layout is contiguous");
        // Channel blocks in parallel (a backward pass packs on every call). Per layer output
        // channel, the block's `NR × taps` weights are transposed into an L1-resident
        // `[tap][c]` stage, then copied out as one run per tap (the taps' planes of the whole
        // tensor, 2.4 MB on ASPP 256 → 256, were 3.8 % of its backward pass).
        for_each_chunk(data.as_mut_slice(), block, |gkb, dst| {
            let (g, kb) = (gkb / nkb, gkb % nkb);
            let (c0, rows) = (kb * nr, nr.min(cg - kb * nr));
            let mut stage = vec![0f32; taps * rows];
            for kk in 0..kg {
                let src = &ws[((g * kg + kk) * cg + c0) * taps..][..rows * taps];
                let planes: &[f32] = if taps == 1 {
                    src
                } else {
                    transpose(src, taps, &mut stage, rows, rows, taps);
                    &stage
                };
                for t in 0..taps {
                    // Adjoint tap t is the layer's tap taps − 1 − t (both axes flipped).
                    let at = (t * kg + kk) * nr;
                    copy_run(
                        &mut dst[at..at + rows],
                        &planes[(taps - 1 - t) * rows..][..rows],
                    );
                }
            }
        });
        PackedWeights { data, nr }
    }

    /// Bytes held.
    fn bytes(&self) -> usize {
        4 * self.data.len
    }
}

/// A block of output pixels of one tap class: rows `[oy0, ..)` × columns `[ox0, ox0 + bw)`
/// row-major, of which the tile holds positions `[q0, q1)`, and the taps it multiplies.
#[derive(Debug, Clone)]
struct Tile {
    q0: usize,
    q1: usize,
    /// Taps `ky·kw + kx` the tile multiplies (in bounds for all its pixels).
    taps: Vec<usize>,
    /// Where the tile's offsets start in [`Indirect::offs`]: `[tap i][pixel slot]`, the
    /// pixel slots rounded up to `MR` (the last pixel repeated).
    offs_at: usize,
    /// Runs of pixels in one output row: (position in the tile, offset `oy·OW + ox` in an
    /// output plane, length).
    runs: Vec<(usize, usize, usize)>,
}

impl Tile {
    fn len(&self) -> usize {
        self.q1 - self.q0
    }
}

/// A planned indirect convolution (weights packed, tiles and offsets precomputed).
#[derive(Debug)]
pub struct Indirect {
    kernel: Kernel,
    geom: Geometry,
    groups: usize,
    cg: usize,
    kg: usize,
    /// Channel blocks of `NR` per group.
    nkb: usize,
    kc: usize,
    w: PackedWeights,
    bias: Vec<f32>,
    tiles: Vec<Tile>,
    /// Per tile, tap and pixel slot, the input offset `iy·W + ix` (planes fit `u32`: checked
    /// by the plan).
    offs: Vec<u32>,
    /// Tasks of uneven cost, largest first; `None`: index order.
    order: Option<Vec<usize>>,
}

impl Indirect {
    /// Plans a direct (non-transposed) layer for `geom` on `isa`, packing the weights `w`
    /// (PyTorch layout) for the kernel that pads the output channels least.
    ///
    /// # Panics
    /// If the layer is transposed, or its input planes do not fit `u32` offsets
    /// ([`Indirect::applies`]; [`crate::plan::Plan`] checks both and returns an error).
    pub fn new(
        geom: &Geometry,
        w: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
        isa: Isa,
    ) -> Indirect {
        let kernel = Self::kernel_for(geom, isa);
        let packed = PackedWeights::new(w, geom.spec.groups(), kernel.nr);
        Self::with_packed(geom, packed, bias, kernel)
    }

    /// The kernel a plan of `geom` on `isa` uses (its weights are packed for its `NR`).
    pub(crate) fn kernel_for(geom: &Geometry, isa: Isa) -> Kernel {
        Kernel::pick(isa, geom.k / geom.spec.groups())
    }

    /// [`Indirect::new`] with the weights already packed for `kernel`.
    ///
    /// # Panics
    /// As [`Indirect::new`], or if `w` was packed for another width or is not the size of the
    /// layer's weights.
    pub(crate) fn with_packed(
        geom: &Geometry,
        w: PackedWeights,
        bias: Option<ArrayView1<f32>>,
        kernel: Kernel,
    ) -> Indirect {
        let s = &geom.spec;
        assert!(
            !s.is_transposed(),
            "the indirect kernel runs direct convolutions"
        );
        assert!(
            Self::applies(geom),
            "input planes too large for u32 offsets"
        );
        let groups = s.groups();
        let (cg, kg) = (geom.c / groups, geom.k / groups);
        let [kh, kw] = s.kernel();
        let [sh, sw] = s.stride();
        let [dh, dw] = s.dilation();
        let (mr, nr) = (kernel.mr, kernel.nr);
        let nkb = kg.div_ceil(nr);
        assert_eq!(w.nr, nr, "weights packed for another kernel");
        assert_eq!(
            w.data.len,
            groups * nkb * kh * kw * cg * nr,
            "packed weights"
        );
        let bias = match bias {
            Some(b) => b.to_vec(),
            None => vec![0.0; geom.k],
        };
        let border = Border::from(s.padding_mode());
        let zeros = s.padding_mode() == PaddingMode::Zeros;
        let [pt, _, pl, _] = geom.pad;
        let row_src = axis_table(border, kh, geom.oh, geom.h, sh, dh, pt);
        let col_src = axis_table(border, kw, geom.ow, geom.w, sw, dw, pl);
        // Zero padding: classes of rows (columns) that see the same in-bounds taps, whose
        // sources are then all real pixels; other modes read a real pixel for every tap.
        let rows = classes(|k, o| row_src[k * geom.oh + o] >= 0, kh, geom.oh, zeros);
        let cols = classes(|k, o| col_src[k * geom.ow + o] >= 0, kw, geom.ow, zeros);
        let make_tiles = |target: usize| {
            let mut tiles = Vec::new();
            for &(y0, y1, ky) in &rows {
                for &(x0, x1, kx) in &cols {
                    let bw = x1 - x0;
                    let total = (y1 - y0) * bw;
                    let per = round_up(total.div_ceil(total.div_ceil(target)), mr);
                    let taps: Vec<usize> = (ky.0..ky.1)
                        .flat_map(|y| (kx.0..kx.1).map(move |x| y * kw + x))
                        .collect();
                    let mut q0 = 0;
                    while q0 < total {
                        let q1 = (q0 + per).min(total);
                        tiles.push(((y0, x0, bw), q0, q1, taps.clone()));
                        q0 = q1;
                    }
                }
            }
            tiles
        };
        let mut target = round_up(TILE_PIXELS, mr);
        let mut raw = make_tiles(target);
        while geom.n * groups * raw.len() * nkb < MIN_TASKS && target > mr {
            target = round_up(target / 2, mr);
            raw = make_tiles(target);
        }
        let mut offs = Vec::new();
        let tiles: Vec<Tile> = raw
            .into_iter()
            .map(|((oy0, ox0, bw), q0, q1, taps)| {
                let offs_at = offs.len();
                let len = q1 - q0;
                let pixel = |j: usize| {
                    let q = q0 + j.min(len - 1);
                    (oy0 + q / bw, ox0 + q % bw)
                };
                for &t in &taps {
                    let (ky, kx) = (t / kw, t % kw);
                    for j in 0..round_up(len, mr) {
                        let (oy, ox) = pixel(j);
                        let (r, c) = (row_src[ky * geom.oh + oy], col_src[kx * geom.ow + ox]);
                        assert!(r >= 0 && c >= 0, "a class tap reads padding");
                        let at = r as usize * geom.w + c as usize;
                        offs.push(u32::try_from(at).expect("plane offsets fit u32"));
                    }
                }
                let mut runs = Vec::new();
                let mut j = 0;
                while j < len {
                    let (oy, ox) = pixel(j);
                    let seg = (bw - (q0 + j) % bw).min(len - j);
                    runs.push((j, oy * geom.ow + ox, seg));
                    j += seg;
                }
                Tile {
                    q0,
                    q1,
                    taps,
                    offs_at,
                    runs,
                }
            })
            .collect();
        let kc = (B_PANEL_BYTES / (4 * nr)).max(16);
        let mut plan = Indirect {
            kernel,
            geom: *geom,
            groups,
            cg,
            kg,
            nkb,
            kc,
            w,
            bias,
            tiles,
            offs,
            order: None,
        };
        // Uneven tasks (a dilated layer's classes: tiles from 36 pixels × 4 taps to 192 × 9)
        // run largest first from one queue, as in the implicit GEMM.
        let ntasks = plan.ntasks();
        let cost = |t: usize| {
            let tile = &plan.tiles[(t / nkb) % plan.tiles.len()];
            (round_up(tile.len(), mr) * tile.taps.len()) as f64
        };
        let costs: Vec<f64> = (0..ntasks).map(cost).collect();
        plan.order = uneven_order(&costs);
        plan
    }

    fn ntasks(&self) -> usize {
        self.geom.n * self.groups * self.tiles.len() * self.nkb
    }

    /// The microkernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Bytes of workspace per worker thread: a tile's sums, pixel- then channel-major.
    pub fn workspace_bytes(&self) -> usize {
        4 * self.workspace_len()
    }

    fn workspace_len(&self) -> usize {
        let longest = self.tiles.iter().map(Tile::len).max().unwrap_or(0);
        2 * round_up(longest, self.kernel.mr) * self.kernel.nr
    }

    /// Bytes the plan holds: packed weights and the offset table.
    pub fn packed_weight_bytes(&self) -> usize {
        self.w.bytes() + 4 * self.offs.len()
    }

    /// Whether the layer's input planes are small enough for `u32` offsets.
    pub fn applies(geom: &Geometry) -> bool {
        geom.h
            .checked_mul(geom.w)
            .is_some_and(|hw| u32::try_from(hw).is_ok())
    }

    /// `y = conv(x)` on contiguous NCHW buffers of the planned shapes.
    pub fn run(&self, x: &[f32], y: &mut [f32]) {
        let g = &self.geom;
        assert_eq!(x.len(), g.n * g.c * g.h * g.w, "input buffer size");
        assert_eq!(y.len(), g.n * g.k * g.oh * g.ow, "output buffer size");
        let task = |t, out, ws: &mut [f32]| self.task(x, out, t, ws);
        let order = self.order.as_deref();
        for_each_task_ordered(y, order, self.ntasks(), self.workspace_len(), task);
    }

    fn task(&self, x: &[f32], out: SharedOut, t: usize, ws: &mut [f32]) {
        let g = &self.geom;
        let (mr, nr) = (self.kernel.mr, self.kernel.nr);
        let kb = t % self.nkb;
        let ti = (t / self.nkb) % self.tiles.len();
        let grp = (t / (self.nkb * self.tiles.len())) % self.groups;
        let n = t / (self.nkb * self.tiles.len() * self.groups);
        let tile = &self.tiles[ti];
        let (len, lenp) = (tile.len(), round_up(tile.len(), mr));
        let (cbuf, tbuf) = ws.split_at_mut(lenp * nr);
        let hw = g.h * g.w;
        let xg = &x[(n * g.c + grp * self.cg) * hw..][..self.cg * hw];
        let taps = g.spec.kernel()[0] * g.spec.kernel()[1];
        let wb = &self.w.data.as_slice()[(grp * self.nkb + kb) * taps * self.cg * nr..]
            [..taps * self.cg * nr];
        let nchunks = self.cg.div_ceil(self.kc);
        let per = self.cg.div_ceil(nchunks);
        let mut first = true;
        for (i, &tap) in tile.taps.iter().enumerate() {
            let offs = &self.offs[tile.offs_at + i * lenp..][..lenp];
            let mut c0 = 0;
            while c0 < self.cg {
                let kc = per.min(self.cg - c0);
                let b = &wb[(tap * self.cg + c0) * nr..][..kc * nr];
                let xs = &xg[c0 * hw..];
                for (grp_offs, c) in offs.chunks_exact(mr).zip(cbuf.chunks_exact_mut(mr * nr)) {
                    // SAFETY: the plan's kernel is of an available level; every offset is a
                    // pixel of a plane (< H·W) and channels c0 .. c0 + kc < Cg lie in `xs`
                    // (`(kc − 1)·hw + offset < xs.len()`); `b` holds kc·NR weights and `c`
                    // MR·NR sums.
                    unsafe {
                        self.kernel.run(
                            kc,
                            grp_offs,
                            xs.as_ptr(),
                            hw,
                            b.as_ptr(),
                            c.as_mut_ptr(),
                            !first,
                        )
                    };
                }
                first = false;
                c0 += kc;
            }
        }
        if first {
            // No tap of this tile reads the input: the output is the bias alone.
            cbuf.fill(0.0);
        }
        // Sums pixel-major (len × NR) → channel-major (NR × len), then into the planes.
        let rows = nr.min(self.kg - kb * nr);
        transpose(cbuf, nr, tbuf, len, len, rows);
        for j in 0..rows {
            let ch = grp * self.kg + kb * nr + j;
            let plane = (n * g.k + ch) * g.oh * g.ow;
            let sums = &tbuf[j * len..(j + 1) * len];
            for &(pos, off, seg) in &tile.runs {
                // SAFETY: task t is the only one writing channel `ch` of image `n` at the
                // pixels of tile `ti` (tasks partition batch × group × tile × channel
                // block), and `out` wraps the caller's exclusively borrowed output.
                unsafe { out.write_row(plane + off, &sums[pos..pos + seg], self.bias[ch]) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::ConvSpec;
    use ndarray::{Array1, Array4};

    fn fill(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f32> {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        Array4::from_shape_vec(shape, crate::testutil::pseudo(n, seed)).expect("sized")
    }

    /// Every SIMD kernel against the portable loop, on scattered offsets and both modes.
    #[test]
    fn simd_kernels_match_the_scalar_kernel() {
        let (lda, kc) = (37, 11);
        let x: Vec<f32> = (0..lda * kc + 64)
            .map(|i| (i % 13) as f32 * 0.25 - 1.5)
            .collect();
        for isa in Isa::available_levels() {
            for k in Kernel::of(isa) {
                let offs: Vec<u32> = (0..k.mr).map(|r| ((r * 7 + 3) % lda) as u32).collect();
                let b: Vec<f32> = (0..kc * k.nr)
                    .map(|i| (i % 11) as f32 * 0.5 - 2.0)
                    .collect();
                for accumulate in [false, true] {
                    let init: Vec<f32> = (0..k.mr * k.nr).map(|i| i as f32).collect();
                    let (mut got, mut want) = (init.clone(), init);
                    // SAFETY: offsets < lda, so offs[r] + (kc − 1)·lda < x.len(); b and c
                    // are sized for kc·NR and MR·NR.
                    unsafe {
                        k.run(
                            kc,
                            &offs,
                            x.as_ptr(),
                            lda,
                            b.as_ptr(),
                            got.as_mut_ptr(),
                            accumulate,
                        );
                        scalar(
                            k.mr,
                            k.nr,
                            kc,
                            offs.as_ptr(),
                            x.as_ptr(),
                            lda,
                            b.as_ptr(),
                            want.as_mut_ptr(),
                            accumulate,
                        );
                    }
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{k:?} at {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    fn check(spec: ConvSpec, input: [usize; 4]) {
        let spec = spec.build().unwrap();
        let geom = spec.geometry(input).unwrap();
        let x = fill((input[0], input[1], input[2], input[3]), 1);
        let ws = spec.weight_shape();
        let w = fill((ws[0], ws[1], ws[2], ws[3]), 2);
        let b = Array1::from_shape_fn(geom.k, |i| i as f32 * 0.125 - 1.0);
        let want = reference::forward(&spec, x.view(), w.view(), Some(b.view())).unwrap();
        let scale = reference::forward(
            &spec,
            x.mapv(f32::abs).view(),
            w.mapv(f32::abs).view(),
            None,
        )
        .unwrap();
        for isa in Isa::available_levels() {
            let plan = Indirect::new(&geom, w.view(), Some(b.view()), isa);
            let mut y = vec![f32::NAN; geom.n * geom.k * geom.oh * geom.ow];
            plan.run(x.as_slice().unwrap(), &mut y);
            for ((i, g), (w, s)) in y.iter().enumerate().zip(want.iter().zip(scale.iter())) {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + s),
                    "{spec} {input:?} on {isa} at {i}: {g} vs {w}"
                );
            }
        }
    }

    /// Atrous, plain, strided, grouped, odd channel counts (every kernel width's tail),
    /// batches, every padding mode and asymmetric padding, against the reference.
    #[test]
    fn matches_the_reference() {
        check(
            ConvSpec::conv2d(16, 20, 3).padding(6).dilation(6),
            [1, 16, 14, 13],
        );
        check(
            ConvSpec::conv2d(9, 70, 3).padding(12).dilation(12),
            [2, 9, 16, 16],
        );
        check(ConvSpec::conv2d(5, 13, 3).padding(1), [1, 5, 9, 11]);
        check(
            ConvSpec::conv2d(6, 33, [2, 4])
                .padding_sides([0, 2, 3, 1])
                .stride([2, 1]),
            [1, 6, 8, 9],
        );
        check(
            ConvSpec::conv2d(12, 18, 3).padding(2).dilation(2).groups(3),
            [2, 12, 10, 7],
        );
        check(
            ConvSpec::conv2d(4, 8, 7).stride(2).padding(3),
            [1, 4, 23, 19],
        );
        check(ConvSpec::conv1d(24, 17, 3).padding(1), [2, 24, 1, 41]);
        check(ConvSpec::conv2d(3, 5, 1), [1, 3, 4, 4]);
        // Huge padding: some tiles see no tap at all (bias only).
        check(
            ConvSpec::conv2d(3, 4, 3).padding(5).dilation(2),
            [1, 3, 3, 3],
        );
        for mode in [
            PaddingMode::Reflect,
            PaddingMode::Replicate,
            PaddingMode::Circular,
        ] {
            check(
                ConvSpec::conv2d(5, 9, 3)
                    .padding(2)
                    .dilation(2)
                    .padding_mode(mode),
                [1, 5, 9, 8],
            );
            check(
                ConvSpec::conv2d(4, 6, 3)
                    .padding(1)
                    .stride(2)
                    .padding_mode(mode),
                [2, 4, 7, 10],
            );
        }
    }

    /// The adjoint's packing equals packing the flipped, channel-swapped weights.
    #[test]
    fn adjoint_packing_matches_packing_the_flipped_weights() {
        for (groups, shape) in [(1, (10, 7, 3, 3)), (2, (8, 6, 2, 3)), (3, (9, 70, 1, 1))] {
            let w = fill(shape, 5);
            let (k, cg, kh, kw) = shape;
            let kg = k / groups;
            let flipped = Array4::from_shape_fn((cg * groups, kg, kh, kw), |(o, i, y, x)| {
                let (g, c) = (o / cg, o % cg);
                w[[g * kg + i, c, kh - 1 - y, kw - 1 - x]]
            });
            for k in Kernel::of(Isa::Scalar)
                .into_iter()
                .chain(Kernel::of(Isa::Avx512))
            {
                let a = PackedWeights::adjoint(w.view(), groups, k.nr);
                let b = PackedWeights::new(flipped.view(), groups, k.nr);
                assert_eq!(
                    a.data.as_slice(),
                    b.data.as_slice(),
                    "{shape:?} groups {groups} nr {}",
                    k.nr
                );
            }
        }
    }
}
