//! Winograd F(2×2, 3×3) (Lavin & Gray 2016) for 3×3, stride-1, ungrouped layers, dilated ones
//! split into their stride phases (see [`applies`]).
//!
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d Bᵀᵀ)] A` per 2×2 output tile: 16 multiplies instead of 36
//! (2.25× fewer). The 16 element-wise products, summed over input channels, are 16 GEMMs
//! `M_ξ[K × T] = U_ξ[K × C] · V_ξ[C × T]` run by the same microkernels as everything else:
//! `U_ξ` (transformed weights) packed once at plan time, `V_ξ` (transformed input tiles) built
//! per task for a block of tile rows (≤ 1 MiB), and the output transform applied per 8- or
//! 6-channel panel straight from a small buffer. A dilated layer runs as its stride phases,
//! each an undilated convolution of the phase's pixels (see [`applies`]), their tile rows
//! stacked into one column so that narrow phases still fill the GEMM panels.
//!
//! The transforms (module `transforms`) are vectorised across the tiles of a tile row: each
//! padded input row is split into even and odd columns, so `d·B` is four contiguous vector
//! expressions, and the output transform writes its two output rows straight into the output
//! (bias added) where the columns are contiguous. Explicit AVX-512 versions (bit-identical to
//! the portable ones): on Zen 5, where the GEMMs run twice as fast as on Zen 4, the compiler's
//! baseline-target transforms were half of a 3×3 64-channel 56×56 layer's time; with them the
//! layer takes 0.77–0.80× the CPU time (perf task-clock, 300 runs, alternating binaries).
//!
//! **Accuracy.** The transforms add and subtract (the ½ of `G` is exact in binary), so the
//! error stays at the direct f32 sum's level. Measured against the f64 reference with inputs
//! and weights uniform in [−1, 1] (test `winograd_error_is_bounded`, 64→64 on 30×29, 256→32 on
//! 14×14, asymmetric padding, reflect): max |error| / Σ|x·w| = 0.7–1.2e-7 (the direct kernel:
//! 0.3–1.3e-7). That test enforces the documented tolerance |error| ≤ 4e-6 · Σ|x·w| + 1e-6.
//! `Algo::Direct` and `Algo::ImplicitGemm` never use this; `Algo::Auto` does.

use super::gemm::{Microkernel, RowOffsets};
use super::round_up;
use super::store::{copy_row, for_each_task_keyed, gather_strided, prefetch, SharedOut};
use super::tasks::for_each_chunk;
use super::Isa;
use crate::border::Border;
use crate::geometry::Geometry;
use ndarray::{ArrayView1, ArrayView4};

/// The per-row input and output transforms (portable and AVX-512).
mod transforms;

/// Largest transformed-input block per task (16 × C × tiles floats), bytes: the large budget
/// wherever it leaves every worker thread [`TASKS_PER_THREAD`] blocks, else the small one.
/// Small blocks at two threads on one image: 3×3 64 → 64 on 56×56 (2 tile rows a block, not
/// 5) ran 1.14–1.18 ms instead of 1.30–1.34 (`convkit bench`, alternating, Zen 4); at one
/// thread the larger blocks were as fast or faster (batch 8: 15.5–19.3 vs 16.9–21.1 ms), and
/// so at two threads on a batch of 8 (Zen 5, after the prefetches: 3.25–3.45 vs 3.69–3.92 ms,
/// four alternating rounds). The small budget is 512 KiB since blocks are sized by the kernels'
/// speed per column ([`Microkernel::weighted_cols_padded`]): on Zen 5, 256 KiB left that layer
/// 2 tile rows (56 tiles, 48 + 8 columns, the 8 on the half-speed ymm kernel: 14 % of its
/// time), 512 KiB allows 4 (112 = 48 + 48 + 16): minimum of 30 runs 0.526–0.569 vs 0.554–0.626
/// ms at two threads (six alternating rounds), one thread unchanged.
const MAX_V_BYTES: [usize; 2] = [1024 * 1024, 512 * 1024];
/// Largest buffer of GEMM results (16 × channel panels × tiles) before the output transform,
/// bytes: the panels done together, each `V_ξ` being read once per group of panels.
const MAX_M_BYTES: usize = 256 * 1024;
/// Tasks per worker thread a layer is cut into at least, where it allows (the output channels
/// are split; a thread transforms a block's input once for all the channel blocks it runs on
/// it). Only the speed depends on the cut, not the result.
const TASKS_PER_THREAD: usize = 4;

/// A planned Winograd F(2×2, 3×3) convolution.
#[derive(Debug)]
pub struct Winograd {
    ukr: Microkernel,
    geom: Geometry,
    border: Border,
    /// Whether row copies may use AVX-512 ([`copy_row`]).
    avx512: bool,
    /// Tiles per tile row and tile rows per stride phase (see [`applies`]), and the phases.
    tw: usize,
    th: usize,
    dil: [usize; 2],
    /// Tile rows per block.
    rows: usize,
    nblocks: usize,
    mpanels: usize,
    mc_panels: usize,
    nmb: usize,
    /// Transformed weights: 16 packed matrices of `mpanels · C · MR`.
    u: Vec<f32>,
    bias: Vec<f32>,
    offs: RowOffsets,
    tbpad: usize,
    /// Channel panels whose 16 GEMMs run before their output transform.
    ib: usize,
}

/// Whether Winograd F(2×2, 3×3) applies to the layer.
///
/// A dilated layer (`d > 1`, zero padding, top and left padding multiples of `d`) splits into
/// `dh·dw` stride phases: output pixels `(py + dh·i, px + dw·j)` read only input pixels of
/// the same phase, through the undilated kernel with padding `(pt/dh, pl/dw)`; the tiles of
/// every phase are one long column of tile rows.
pub fn applies(g: &Geometry) -> bool {
    let s = &g.spec;
    let [dh, dw] = s.dilation();
    let phases_split = (dh == 1 && dw == 1)
        || (s.padding_mode() == crate::spec::PaddingMode::Zeros
            && g.pad[0].is_multiple_of(dh)
            && g.pad[2].is_multiple_of(dw));
    !s.is_transposed()
        && s.kernel() == [3, 3]
        && s.stride() == [1, 1]
        && s.groups() == 1
        && phases_split
}

/// Tiles per tile row and tile rows per stride phase, and the phases `[dh, dw]`.
fn tiling(g: &Geometry) -> (usize, usize, [usize; 2]) {
    let [dh, dw] = g.spec.dilation();
    (
        g.ow.div_ceil(dw).div_ceil(2),
        g.oh.div_ceil(dh).div_ceil(2),
        [dh, dw],
    )
}

/// `G g Gᵀ` of one 3×3 filter `g` (row-major), as the 16 values `U[ξ]`, `ξ = 4i + j`. With
/// G's rows `[1,0,0]`, `½[1,1,1]`, `½[1,−1,1]`, `[0,0,1]` as sums (halving is exact in binary,
/// so this equals the products summed term by term, for finite weights).
fn transform_filter(g: &[f32; 9]) -> [f32; 16] {
    // G·v for a column v = (v0, v1, v2) of three values.
    let gv = |v0: f32, v1: f32, v2: f32| [v0, 0.5 * (v0 + v1 + v2), 0.5 * (v0 - v1 + v2), v2];
    // G·g column by column: gg[i][j].
    let cols: [[f32; 4]; 3] = std::array::from_fn(|j| gv(g[j], g[3 + j], g[6 + j]));
    let mut u = [0f32; 16];
    for i in 0..4 {
        // Row i of (G·g)·Gᵀ = G·(row i of G·g).
        let row = gv(cols[0][i], cols[1][i], cols[2][i]);
        u[4 * i..4 * i + 4].copy_from_slice(&row);
    }
    u
}

impl Winograd {
    /// Plans `geom` (see [`applies`]) for `ukr`, transforming and packing `w`.
    pub fn new(
        geom: &Geometry,
        w: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
        ukr: Microkernel,
    ) -> Winograd {
        let ws = w.as_standard_layout();
        let ws = ws.as_slice().expect("standard layout is contiguous");
        let c = geom.c;
        Self::with_filters(geom, bias, ukr, |o, i| {
            ws[(o * c + i) * 9..][..9].try_into().expect("3×3")
        })
    }

    /// [`Winograd::new`] for the adjoint convolution (the grad input of the layer whose
    /// weights `(K, C, 3, 3)` are `w`), read straight from `w`: filter `(o, i)` of the adjoint
    /// is the layer's filter `(i, o)` flipped in both axes (its 9 taps reversed), so no
    /// flipped copy is made.
    pub(crate) fn adjoint(
        geom: &Geometry,
        w: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
        ukr: Microkernel,
    ) -> Winograd {
        let ws = w.as_standard_layout();
        let ws = ws.as_slice().expect("standard layout is contiguous");
        // The layer's input channels are the adjoint's output channels.
        let co = geom.k;
        Self::with_filters(geom, bias, ukr, |o, i| {
            let mut g: [f32; 9] = ws[(i * co + o) * 9..][..9].try_into().expect("3×3");
            g.reverse();
            g
        })
    }

    /// Plans `geom` with filter `(output channel, input channel)` given by `filter`.
    fn with_filters(
        geom: &Geometry,
        bias: Option<ArrayView1<f32>>,
        ukr: Microkernel,
        filter: impl Fn(usize, usize) -> [f32; 9] + Sync,
    ) -> Winograd {
        assert!(
            applies(geom),
            "Winograd F(2x2,3x3) needs a 3x3 stride-1 ungrouped layer"
        );
        let (k, c) = (geom.k, geom.c);
        let (mr, nr) = (ukr.mr, ukr.nr);
        // U = G g Gᵀ, G = [[1,0,0],[½,½,½],[½,−½,½],[0,0,1]], written straight in the
        // microkernel's packing (as `pack_weights` lays out a K × C 1×1 layer), panel-major:
        // panel p of MR output channels, then matrix ξ, depth cc. Panels are transformed in
        // parallel (a backward pass plans its grad input on every call: serial, with
        // G's products summed term by term, this was 10 % of a 64-channel 56×56 grad input's
        // CPU time at two threads).
        let mpanels = k.div_ceil(mr);
        let ppan = 16 * c * mr;
        let mut u = vec![0f32; mpanels * ppan];
        for_each_chunk(&mut u, ppan, |p, up| {
            for r in 0..mr.min(k - p * mr) {
                for cc in 0..c {
                    let uu = transform_filter(&filter(p * mr + r, cc));
                    for (xi, v) in uu.iter().enumerate() {
                        up[(xi * c + cc) * mr + r] = *v;
                    }
                }
            }
        });
        let (tw, th, dil) = tiling(geom);
        let tall = th * dil[0] * dil[1];
        // Tile rows per block: within the V budget, best filled panels, then the most rows.
        let threads = rayon::current_num_threads().max(1);
        let min_tasks = TASKS_PER_THREAD * threads;
        let rows_within = |budget: usize| ((budget / (64 * c)).max(nr) / tw).clamp(1, tall);
        let large = rows_within(MAX_V_BYTES[0]);
        let max_rows = if threads == 1 || geom.n * tall.div_ceil(large) >= min_tasks {
            large
        } else {
            rows_within(MAX_V_BYTES[1])
        };
        // Filled share of the columns the kernels multiply, weighted by their speed per column
        // with the last panel run as the task runs it (`parts_padded`). (Counting only the
        // narrowed last kernel's columns, not its speed, picked the largest blocks: 1.6 →
        // 2.5 MiB of workspace on a 56×56 layer, 15 % slower at two threads; whole panels
        // alone picked 2 rows there, 48 + 8 columns.)
        let util = |r: usize| (r * tw) as f64 / ukr.weighted_cols_padded(r * tw);
        let mut rows = max_rows;
        for r in (1..=max_rows).rev() {
            if util(r) > util(rows) + 0.02 {
                rows = r;
            }
        }
        let nblocks = tall.div_ceil(rows);
        let mut mc_panels = mpanels;
        // (`threads`: the pool the plan is made in; a plan run in another pool is as exact,
        // maybe slower.)
        while mc_panels > 1 && geom.n * nblocks * mpanels.div_ceil(mc_panels) < min_tasks {
            mc_panels = mc_panels.div_ceil(2);
        }
        let tbpad = round_up(rows * tw, nr);
        Winograd {
            ukr,
            geom: *geom,
            border: Border::from(geom.spec.padding_mode()),
            avx512: ukr.isa == Isa::Avx512,
            tw,
            th,
            dil,
            rows,
            nblocks,
            mpanels,
            mc_panels,
            nmb: mpanels.div_ceil(mc_panels),
            u,
            bias: bias.map_or_else(|| vec![0.0; k], |b| b.to_vec()),
            offs: RowOffsets::new((0..c).map(|cc| cc * tbpad).collect()),
            tbpad,
            ib: (MAX_M_BYTES / (64 * mr * tbpad)).clamp(1, mpanels),
        }
    }

    /// Multiply-adds the GEMMs of this plan execute per image, padding included (to compare
    /// against the direct algorithms' `K·C·9·OH·OW`). Whole panels, as the blocks are chosen:
    /// counting the narrowed last panel made 14×14 layers pick 8×48 + 8×8 over 8×32, 1.53–1.60
    /// → 1.59–1.78 ms for 3×3 256 → 256 (`convkit bench`, three alternating runs).
    pub fn padded_macs(ukr: Microkernel, g: &Geometry) -> f64 {
        let (tw, th, [dh, dw]) = tiling(g);
        let tiles = tw * th * dh * dw;
        16.0 * round_up(g.k, ukr.mr) as f64 * g.c as f64 * round_up(tiles, ukr.nr) as f64
    }

    /// The microkernel in use.
    pub fn microkernel(&self) -> Microkernel {
        self.ukr
    }

    fn v_len(&self) -> usize {
        16 * self.geom.c * self.tbpad
    }

    fn workspace_len(&self) -> usize {
        // V block + M buffer (16 × ib panels × MR × tiles) + scratch rows (2·tw + 2 padded input,
        // column transforms, 2 output rows of 2·tw).
        self.v_len()
            + 16 * self.ib * self.ukr.mr * self.tbpad
            + (2 * self.tw + 2)
            + 16 * self.tw
            + 4 * self.tw
    }

    /// Bytes of per-thread workspace.
    pub fn workspace_bytes(&self) -> usize {
        4 * self.workspace_len()
    }

    /// Bytes of transformed, packed weights.
    pub fn packed_weight_bytes(&self) -> usize {
        4 * self.u.len()
    }

    /// `y = conv(x)` on contiguous NCHW buffers of the planned shapes.
    pub fn run(&self, x: &[f32], y: &mut [f32]) {
        let g = &self.geom;
        assert_eq!(x.len(), g.n * g.c * g.h * g.w, "input buffer size");
        assert_eq!(y.len(), g.n * g.k * g.oh * g.ow, "output buffer size");
        let ntasks = g.n * self.nblocks * self.nmb;
        for_each_task_keyed(y, ntasks, self.workspace_len(), |t, out, ws, prev| {
            self.task(x, out, t, ws, prev)
        });
    }

    /// Row `i` of the 4-row input patches of stacked tile row `tr` of one channel `plane`,
    /// padded (`2·tw + 2` values): the border rule for an undilated layer; for a dilated one,
    /// phase `(py, px)`'s row `py + dh·(2ty + i − pt/dh)` at columns `px + dw·(j − pl/dw)`,
    /// zero outside the input (`applies` requires zero padding there).
    fn padded_row(&self, plane: &[f32], tr: usize, i: usize, prow: &mut [f32]) {
        let g = &self.geom;
        let [pt, _, pl, _] = g.pad;
        let [dh, dw] = self.dil;
        let (phase, ty) = (tr / self.th, tr % self.th);
        if dh * dw > 1 {
            let (py, px) = (phase / dw, phase % dw);
            let iy = (2 * ty + i) as isize - (pt / dh) as isize;
            let r = py as isize + dh as isize * iy;
            if iy < 0 || r >= g.h as isize {
                prow.fill(0.0);
                return;
            }
            let row = &plane[r as usize * g.w..(r as usize + 1) * g.w];
            let valid = g.w.saturating_sub(px).div_ceil(dw);
            let p0 = (pl / dw).min(prow.len());
            let p1 = (pl / dw + valid).min(prow.len());
            prow[..p0].fill(0.0);
            gather_strided(&mut prow[p0..p1], &row[px..], dw, self.avx512);
            prow[p1..].fill(0.0);
            return;
        }
        let Some(r) = self.border.source((2 * ty + i) as isize - pt as isize, g.h) else {
            prow.fill(0.0);
            return;
        };
        let row = &plane[r * g.w..(r + 1) * g.w];
        // Columns of the padded row that come straight from the input.
        let n = prow.len();
        let j0 = pl.min(n);
        let j1 = (pl + g.w).clamp(j0, n);
        if j1 > j0 {
            // Masked vector copies: `copy_from_slice` is a `memmove` call per row.
            copy_row(
                &mut prow[j0..j1],
                &row[j0 - pl..j1 - pl],
                0.0,
                false,
                self.avx512,
            );
        }
        for j in (0..j0).chain(j1..n) {
            prow[j] = self
                .border
                .source(j as isize - pl as isize, g.w)
                .map_or(0.0, |s| row[s]);
        }
    }

    /// Input transform of tile rows `[ty0, ty1)` of image `xn` into `v` (`[ξ][c][tile]`).
    fn transform_input(
        &self,
        xn: &[f32],
        ty0: usize,
        ty1: usize,
        v: &mut [f32],
        scratch: &mut [f32],
    ) {
        let g = &self.geom;
        let tw = self.tw;
        let (prow, tcols) = scratch.split_at_mut(2 * tw + 2);
        let tcols = &mut tcols[..16 * tw];
        let hw = g.h * g.w;
        // The input rows the block reads (undilated layers: one span of each plane), asked
        // for one channel ahead: a batch's planes outgrow the caches between runs, and the
        // rows of one plane are too short a stream for the hardware prefetcher. 3×3 64 → 64
        // on 8 × 56×56 at one thread: task-clock 394 → 362 ms per 40 runs with this, → 285
        // with the output rows' prefetch too (alternating runs).
        let span = (self.dil == [1, 1]).then(|| {
            let pt = g.pad[0];
            let r0 = (2 * ty0).saturating_sub(pt).min(g.h);
            let r1 = (2 * ty1 + 2).saturating_sub(pt).min(g.h);
            (r0 * g.w, r1 * g.w)
        });
        for c in 0..g.c {
            let plane = &xn[c * hw..(c + 1) * hw];
            if let (Some((a, b)), true) = (span, c + 1 < g.c) {
                prefetch(&xn[(c + 1) * hw + a..(c + 1) * hw + b]);
            }
            for tr in ty0..ty1 {
                // Patch row i of tile row ty is padded row 2·ty + i, kept in slot (2·ty + i) mod
                // 4: rows 0 and 1 are the previous tile row's rows 2 and 3 (same phase), whose
                // copies and d·B are reused.
                let ty = tr % self.th;
                let first = if tr > ty0 && ty > 0 { 2 } else { 0 };
                let slot = |i: usize| (2 * ty + i) % 4;
                for i in first..4 {
                    self.padded_row(plane, tr, i, prow);
                    // d·B for every tile of the row.
                    let t4 = &mut tcols[slot(i) * 4 * tw..(slot(i) + 1) * 4 * tw];
                    transforms::row_times_b(prow, tw, t4, self.avx512);
                }
                // Bᵀ·(d·B): the same combination across the four rows.
                let col0 = (tr - ty0) * tw;
                for b in 0..4 {
                    let r = |i: usize| &tcols[(slot(i) * 4 + b) * tw..(slot(i) * 4 + b + 1) * tw];
                    // Rows (a·4 + b, c) of V for a = 0..3, at tile column `col0`: ascending.
                    let base = |a: usize| ((a * 4 + b) * g.c + c) * self.tbpad + col0;
                    let (_, v0) = v.split_at_mut(base(0));
                    let (v0, v1) = v0.split_at_mut(base(1) - base(0));
                    let (v1, v2) = v1.split_at_mut(base(2) - base(1));
                    let (v2, v3) = v2.split_at_mut(base(3) - base(2));
                    transforms::bt_rows(
                        [r(0), r(1), r(2), r(3)],
                        [&mut v0[..tw], &mut v1[..tw], &mut v2[..tw], &mut v3[..tw]],
                        self.avx512,
                    );
                }
            }
        }
    }

    /// Task `t`: one channel block of one block of tile rows. The channel blocks of a block
    /// are consecutive tasks: the input transform is skipped when `prev` says this thread's
    /// workspace already holds this block's (from its previous task of this run). Returns the
    /// block it leaves.
    fn task(
        &self,
        x: &[f32],
        out: SharedOut,
        t: usize,
        ws: &mut [f32],
        prev: Option<usize>,
    ) -> Option<usize> {
        let g = &self.geom;
        let (mr, nr) = (self.ukr.mr, self.ukr.nr);
        let mb = t % self.nmb;
        let blk = (t / self.nmb) % self.nblocks;
        let n = t / (self.nmb * self.nblocks);
        let ty0 = blk * self.rows;
        let ty1 = (ty0 + self.rows).min(self.th * self.dil[0] * self.dil[1]);
        let tiles = (ty1 - ty0) * self.tw;
        let npan = tiles.div_ceil(nr);
        let (v, rest) = ws.split_at_mut(self.v_len());
        let (mbuf, scratch) = rest.split_at_mut(16 * self.ib * mr * self.tbpad);
        let hw = g.h * g.w;
        let xn = &x[n * g.c * hw..(n + 1) * g.c * hw];
        let key = t / self.nmb;
        if prev != Some(key) {
            self.transform_input(xn, ty0, ty1, v, scratch);
        }
        let apan = g.c * mr;
        let p0 = mb * self.mc_panels;
        let p1 = (p0 + self.mc_panels).min(self.mpanels);
        let tw = self.tw;
        let orow = &mut scratch[..4 * tw];
        let mut ib0 = p0;
        while ib0 < p1 {
            let ib1 = (ib0 + self.ib).min(p1);
            // ξ outer: each V_ξ stays in cache while every panel of the group uses it.
            for xi in 0..16 {
                let vx = &v[xi * g.c * self.tbpad..];
                for i in ib0..ib1 {
                    let a = &self.u[(i * 16 + xi) * apan..][..apan];
                    let row0 = ((i - ib0) * 16 + xi) * mr;
                    for p in 0..npan {
                        // The last panel on the kernels that cover its tiles (V and M are
                        // padded to whole panels).
                        for (j, ukr) in self.ukr.parts_padded(tiles - p * nr) {
                            let c = &mut mbuf[row0 * self.tbpad + p * nr + j..];
                            let b = &vx[p * nr + j..];
                            ukr.run(g.c, a, b, &self.offs, 0, c, self.tbpad, false);
                        }
                    }
                }
            }
            for i in ib0..ib1 {
                let mrow = |xi: usize, r: usize| (((i - ib0) * 16 + xi) * mr + r) * self.tbpad;
                // Output transform Aᵀ·M·A, Aᵀ = [[1,1,1,0],[0,1,−1,−1]], per channel and tile row.
                for r in 0..mr {
                    let k = i * mr + r;
                    if k >= g.k {
                        break;
                    }
                    let bias = self.bias[k];
                    let [dh, dw] = self.dil;
                    if dh * dw == 1 && k + 1 < g.k {
                        // The next channel's output rows of this block, about to be written.
                        let r0 = ((n * g.k + k + 1) * g.oh + 2 * ty0) * g.ow;
                        out.prefetch(r0, (2 * (ty1 - ty0)).min(g.oh - 2 * ty0) * g.ow);
                    }
                    for tr in ty0..ty1 {
                        let (phase, ty) = (tr / self.th, tr % self.th);
                        let (py, px) = (phase / dw, phase % dw);
                        let col0 = (tr - ty0) * tw;
                        // The 16 rows M_ξ of this channel and tile row (`from_fn` over the
                        // rows was a function call per tile row, 4 % of a 56×56 layer).
                        let step = mr * self.tbpad;
                        let m = &mbuf[mrow(0, r) + col0..][..15 * step + tw];
                        let mut ms = [&m[..tw]; 16];
                        for (xi, row) in ms.iter_mut().enumerate().skip(1) {
                            *row = &m[xi * step..xi * step + tw];
                        }
                        // This phase's output columns px, px + dw, …
                        let ncols = (g.ow - px).div_ceil(dw);
                        let oy = py + dh * 2 * ty;
                        let off = |oy: usize| ((n * g.k + k) * g.oh + oy) * g.ow + px;
                        if dw == 1 {
                            // Straight into the output rows (the second may lie past the end).
                            // SAFETY: this task alone writes channel k of image n on tile rows
                            // [ty0, ty1) (tasks partition batch × tile-row block × channel
                            // block; a tile row is one phase's rows, its columns that phase's),
                            // the two rows are distinct, and `out` wraps the caller's
                            // exclusively borrowed output.
                            let top = unsafe { out.row_mut(off(oy), ncols) };
                            let bot = if oy + dh < g.oh {
                                // SAFETY: as above.
                                unsafe { out.row_mut(off(oy + dh), ncols) }
                            } else {
                                &mut orow[..ncols]
                            };
                            transforms::output_rows(&ms, tw, top, bot, bias, self.avx512);
                            continue;
                        }
                        let (top, bot) = orow.split_at_mut(2 * tw);
                        let (top, bot) = (&mut top[..ncols], &mut bot[..ncols]);
                        transforms::output_rows(&ms, tw, top, bot, 0.0, self.avx512);
                        for (dy, row) in [(0, &*top), (1, &*bot)] {
                            let oy = oy + dh * dy;
                            if oy < g.oh {
                                // SAFETY: as above.
                                unsafe { out.write_strided(off(oy), row, dw, bias) };
                            }
                        }
                    }
                }
            }
            ib0 = ib1;
        }
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The adjoint's plan reads the flipped, channel-swapped filters straight from `w`: its
    /// transformed weights are those of a plan of the flipped copy.
    #[test]
    fn adjoint_transforms_the_flipped_weights() {
        use crate::ConvSpec;
        use ndarray::Array4;
        let (k, c) = (11, 6);
        let w = Array4::from_shape_fn((k, c, 3, 3), |(a, b, y, x)| {
            (a * 31 + b * 7 + y * 3 + x) as f32 * 0.01 - 0.5
        });
        let flipped = Array4::from_shape_fn((c, k, 3, 3), |(o, i, y, x)| w[[i, o, 2 - y, 2 - x]]);
        // The adjoint layer: k input channels, c output channels.
        let spec = ConvSpec::conv2d(k, c, 3).padding(1).build().unwrap();
        let geom = spec.geometry([1, k, 9, 10]).unwrap();
        for ukr in Microkernel::available() {
            let a = Winograd::adjoint(&geom, w.view(), None, ukr);
            let b = Winograd::new(&geom, flipped.view(), None, ukr);
            assert_eq!(a.u, b.u, "{ukr:?}");
        }
    }

    /// The filter transform as sums equals `G g Gᵀ` as products summed term by term (the
    /// halvings are exact).
    #[test]
    fn filter_transform_is_g_g_gt() {
        const G: [[f32; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        let mut s = 7u32;
        for _ in 0..200 {
            let g: [f32; 9] = std::array::from_fn(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 20) as f32 - 8.0
            });
            let gg: [[f32; 3]; 4] = std::array::from_fn(|i| {
                std::array::from_fn(|j| (0..3).map(|t| G[i][t] * g[t * 3 + j]).sum())
            });
            let want: [f32; 16] = std::array::from_fn(|xi| {
                let (i, j) = (xi / 4, xi % 4);
                (0..3).map(|t| gg[i][t] * G[j][t]).sum()
            });
            let got = transform_filter(&g);
            for (a, b) in got.iter().zip(&want) {
                assert!(a == b, "{g:?}: {got:?} vs {want:?}");
            }
        }
    }
}
