//! Tiled implicit GEMM: every direct convolution as `Y_g[Kg × P] = W_g[Kg × Cg·kh·kw] · X̂_g`,
//! where `X̂` (the im2col matrix) is never materialised whole.
//!
//! The output plane is cut into pixel tiles (≈ 192 pixels); a task (batch × group × tile ×
//! output-channel block) packs, per depth chunk of ≤ `KC` rows, the im2col panel of its tile
//! (`KC × tile`, ≤ ~100 KiB: MLAS's segmented im2col) and runs the microkernel over it against
//! the weights packed once at plan time (BLIS: the B micro-panel stays in L1 while the A
//! micro-panels stream from L2). The depth is ordered `(ky, kx, c)`, so a tap is a contiguous
//! run of `Cg` rows.
//!
//! * **Padding modes** are border tables (`row_src`, `col_src`: the input row/column each
//!   output row/column reads for each tap, or none), so reflect/replicate/circular cost
//!   nothing extra and no padded copy of the input is made.
//! * **Tap skipping**: for dilated layers with zero padding, output rows/columns are split
//!   into classes that see the same set of in-bounds taps; each tile only multiplies its
//!   in-bounds taps (an atrous 3×3 with pad = dilation on a small map skips up to half).
//! * **1×1, stride 1, no padding** (`direct`): `B` is the NCHW input itself (`ldb = H·W`), no
//!   copy at all, except a tail panel narrower than the microkernel.
//!
//! Each output element is produced by exactly one task, over a fixed sequence of chunks, so
//! the result does not depend on the number of threads.

use super::gemm::{Microkernel, RowOffsets};
use super::round_up;
use super::store::{copy_row, for_each_task_ordered, gather_strided, PackTable, SharedOut};
use super::tail;
use super::tasks::uneven_order;
use super::transpose::transpose;
use crate::border::Border;
use crate::geometry::Geometry;
use crate::spec::PaddingMode;
use ndarray::{ArrayView1, ArrayView4};

/// Pixels per tile (rounded to the microkernel width).
const TILE_PIXELS: usize = 192;
/// Minimum number of tasks a layer is cut into (so batch 1 keeps every core busy); fixed, so
/// that the decomposition, and hence the result, never depends on the thread count.
const MIN_TASKS: usize = 8;
/// Largest C buffer (output-channel block × tile pixels) per task, bytes: as many channels as
/// fit, since every channel block repacks B.
const MAX_C_BYTES: usize = 256 * 1024;
/// Floats of the phase-split input rows a strided layer's packing may use (256 KiB).
const PHASE_MAX: usize = 64 * 1024;
/// Bytes of one packed B micro-panel (`KC × NR` floats) we want resident in L1.
const B_PANEL_BYTES: usize = 30 * 1024;

/// A block of output pixels: rows `[oy0, ..)` × columns `[ox0, ox0 + bw)` enumerated row-major,
/// of which the tile holds positions `[q0, q1)`; and the taps it multiplies.
#[derive(Debug, Clone, Copy)]
struct Tile {
    oy0: usize,
    ox0: usize,
    bw: usize,
    q0: usize,
    q1: usize,
    ky: (usize, usize),
    kx: (usize, usize),
}

impl Tile {
    fn len(&self) -> usize {
        self.q1 - self.q0
    }

    /// Runs of consecutive pixels in one output row and one `nr` panel:
    /// `(j, oy, ox, len)` with `j` the position inside the tile.
    fn segments(&self, nr: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
        let mut j = 0;
        let len = self.len();
        std::iter::from_fn(move || {
            if j >= len {
                return None;
            }
            let q = self.q0 + j;
            let (oy, ox) = (self.oy0 + q / self.bw, self.ox0 + q % self.bw);
            let seg = (self.bw - q % self.bw).min(len - j).min(nr - j % nr);
            let out = (j, oy, ox, seg);
            j += seg;
            Some(out)
        })
    }
}

/// A run of consecutive pixels of a tile in one output row and one NR-panel, for packing:
/// `(panel, lane, oy, ox, len)`.
type Segment = (usize, usize, usize, usize, usize);

/// Floats of weights packed by [`pack_weights`] (or [`pack_weights_adjoint`]): `groups` ×
/// `⌈rows / mr⌉` panels of `depth × mr` (`rows` output channels per group, `depth` =
/// input channels per group × taps).
pub(crate) fn packed_len(groups: usize, rows: usize, depth: usize, mr: usize) -> usize {
    groups * rows.div_ceil(mr) * depth * mr
}

/// Packs PyTorch-layout weights `(K, Cg, kh, kw)` for a microkernel of `mr` rows:
/// `[group][panel][kk = (ky·kw + kx)·Cg + c][r]`, zero rows past `Kg` in the last panel.
pub(crate) fn pack_weights(w: ArrayView4<f32>, groups: usize, mr: usize) -> Vec<f32> {
    let (k, cg, kh, kw) = w.dim();
    let kg = k / groups;
    let ktot = cg * kh * kw;
    let mpanels = kg.div_ceil(mr);
    let mut a = vec![0f32; packed_len(groups, kg, ktot, mr)];
    let ws = w.as_standard_layout();
    let ws = ws.as_slice().expect("standard layout is contiguous");
    let taps = kh * kw;
    // Two blocked transposes: the taps' planes `[tap][k][c]`, then per panel and tap the
    // `MR × Cg` block of that plane into `Cg` runs of `MR`. (Element by element this was ~7
    // instructions a float: 8 % of a backward pass's grad input, which packs on every call.)
    let planes = tap_planes(ws, taps);
    let planes = planes.as_deref().unwrap_or(ws);
    for g in 0..groups {
        for p in 0..mpanels {
            let m0 = p * mr;
            let nrows = mr.min(kg - m0);
            let dst = &mut a[(g * mpanels + p) * ktot * mr..][..ktot * mr];
            for t in 0..taps {
                let src = &planes[(t * k + g * kg + m0) * cg..][..nrows * cg];
                transpose(src, cg, &mut dst[t * cg * mr..], mr, nrows, cg);
            }
        }
    }
    a
}

/// The taps' planes of PyTorch-layout weights `ws` (`rows × taps`): `[tap][row]`, `None`
/// for one tap (the weights are their own plane).
pub(crate) fn tap_planes(ws: &[f32], taps: usize) -> Option<Vec<f32>> {
    if taps == 1 {
        return None;
    }
    let rows = ws.len() / taps;
    let mut t = vec![0f32; ws.len()];
    transpose(ws, taps, &mut t, rows, rows, taps);
    Some(t)
}

/// [`pack_weights`] of the adjoint convolution's weights (the grad input of the layer whose
/// PyTorch-layout weights `(K, Cg, kh, kw)` are `w`), straight from `w`: the adjoint has
/// `Cg` output and `Kg` input channels per group and the taps flipped,
/// `w'[g·Cg + c, k, i, j] = w[g·Kg + k, c, kh−1−i, kw−1−j]`.
///
/// Through the taps' planes, as [`pack_weights`], whose second transpose becomes plain copies
/// of `MR`-float runs here. (A flipped copy then [`pack_weights`] was 12 % of an atrous
/// 256-channel layer's grad input.)
pub(crate) fn pack_weights_adjoint(w: ArrayView4<f32>, groups: usize, mr: usize) -> Vec<f32> {
    let (k, cg, kh, kw) = w.dim();
    let kg = k / groups;
    let taps = kh * kw;
    // The adjoint's depth per group and its output-channel panels.
    let ktot = kg * taps;
    let mpanels = cg.div_ceil(mr);
    let mut a = vec![0f32; packed_len(groups, cg, ktot, mr)];
    let ws = w.as_standard_layout();
    let ws = ws.as_slice().expect("standard layout is contiguous");
    // The taps' planes `[tap][k][c]`; then every `MR`-float run is a copy from one of them.
    let planes = tap_planes(ws, taps);
    let planes = planes.as_deref().unwrap_or(ws);
    for g in 0..groups {
        for p in 0..mpanels {
            let m0 = p * mr;
            let nrows = mr.min(cg - m0);
            let dst = &mut a[(g * mpanels + p) * ktot * mr..][..ktot * mr];
            for (t, runs) in dst.chunks_exact_mut(kg * mr).enumerate() {
                // Adjoint tap t is the layer's tap taps − 1 − t (both axes flipped).
                let plane = &planes[(taps - 1 - t) * k * cg..][..k * cg];
                let src = |kk: usize| &plane[(g * kg + kk) * cg + m0..];
                if nrows == 8 {
                    // The AVX-512 and AVX2 kernels' MR: one register per run, not a memmove
                    // call (3 % of the grad input).
                    for (kk, run) in runs.chunks_exact_mut(8).enumerate() {
                        let run: &mut [f32; 8] = run.try_into().expect("MR = 8");
                        *run = src(kk)[..8].try_into().expect("8 floats");
                    }
                } else {
                    for (kk, run) in runs.chunks_exact_mut(mr).enumerate() {
                        run[..nrows].copy_from_slice(&src(kk)[..nrows]);
                    }
                }
            }
        }
    }
    a
}

/// Where [`ConvGemm::split_phases`] put the rows: channels from `c0`, input rows
/// `iy0 .. iy0 + rows`, `wph` values per phase.
#[derive(Debug, Clone, Copy)]
struct PhaseRows {
    c0: usize,
    iy0: usize,
    rows: usize,
    wph: usize,
}

/// A planned implicit-GEMM convolution (weights packed, tiles and tables precomputed).
#[derive(Debug)]
pub struct ConvGemm {
    ukr: Microkernel,
    geom: Geometry,
    groups: usize,
    cg: usize,
    kg: usize,
    kw: usize,
    stride_w: usize,
    ktot: usize,
    mpanels: usize,
    mc_panels: usize,
    nmb: usize,
    kc: usize,
    a: Vec<f32>,
    bias: Vec<f32>,
    row_src: Vec<i32>,
    col_src: Vec<i32>,
    col_lo: Vec<usize>,
    col_hi: Vec<usize>,
    col_base: Vec<isize>,
    zeros: bool,
    tiles: Vec<Tile>,
    /// Per tile, its depth chunks `[kk0, kk1)` (computed at plan time: a run allocates nothing).
    tile_chunks: Vec<Vec<(usize, usize)>>,
    /// Per tile, its row segments for packing: (NR-panel, lane, oy, ox, length).
    tile_segs: Vec<Vec<Segment>>,
    /// Per tile, its runs of pixels in one output row for storing: (position in the tile,
    /// offset `oy·OW + ox` in an output plane, length). Computed at plan time: deriving them
    /// per output channel (a division per run, ~10 runs a channel on an atrous layer's
    /// 20-wide class rows) was 3.6 % of ASPP 3×3 d6.
    tile_out: Vec<Vec<(usize, usize, usize)>>,
    /// Per tile, whether every tap it multiplies reads inside the input for every one of its
    /// pixels (stride 1 only): then it packs by plain copies, with no border logic.
    tile_interior: Vec<bool>,
    /// Per interior tile, its segments with the source offset in its plane of each for each
    /// tap (tap = ky·kw + kx), checked once; `None` for other tiles.
    tile_pack: Vec<Option<PackTable>>,
    direct: bool,
    /// Row offsets of a packed B panel (`k·NR`).
    offs_packed: RowOffsets,
    /// Row offsets of the input planes for the in-place 1×1 GEMM (`c·H·W`).
    offs_planes: RowOffsets,
    /// Whether row copies may use AVX-512 (the plan's ISA).
    avx512: bool,
    /// Tasks of uneven cost, largest first (the order threads claim them in from one queue);
    /// `None`: contiguous shares in index order.
    order: Option<Vec<usize>>,
}

/// Source index of each output position along one axis, for each tap (`-1`: a zero).
pub(crate) fn axis_table(
    border: Border,
    taps: usize,
    out: usize,
    size: usize,
    stride: usize,
    dil: usize,
    pad: usize,
) -> Vec<i32> {
    let mut t = Vec::with_capacity(taps * out);
    for k in 0..taps {
        for o in 0..out {
            let i = (o * stride + k * dil) as isize - pad as isize;
            t.push(border.source(i, size).map_or(-1, |s| s as i32));
        }
    }
    t
}

/// Splits `0..out` into runs of positions that see the same in-bounds taps (zero padding),
/// each with its tap range; or a single run with every tap when skipping is off.
pub(crate) fn classes(
    in_bounds: impl Fn(usize, usize) -> bool,
    taps: usize,
    out: usize,
    skip: bool,
) -> Vec<(usize, usize, (usize, usize))> {
    if !skip {
        return vec![(0, out, (0, taps))];
    }
    let range = |o: usize| {
        let valid: Vec<usize> = (0..taps).filter(|&k| in_bounds(k, o)).collect();
        match (valid.first(), valid.last()) {
            (Some(&a), Some(&b)) => (a, b + 1),
            _ => (0, 0),
        }
    };
    let mut runs: Vec<(usize, usize, (usize, usize))> = Vec::new();
    for o in 0..out {
        let r = range(o);
        match runs.last_mut() {
            Some(last) if last.2 == r => last.1 = o + 1,
            _ => runs.push((o, o + 1, r)),
        }
    }
    runs
}

impl ConvGemm {
    /// Plans a direct (non-transposed) convolution for `geom`, packing `w` for `ukr`.
    /// `direct` reads the input in place and needs a 1×1, stride-1, unpadded layer.
    pub fn new(
        geom: &Geometry,
        w: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
        ukr: Microkernel,
        direct: bool,
    ) -> ConvGemm {
        let a = pack_weights(w, geom.spec.groups(), ukr.mr);
        Self::with_packed(geom, a, bias, ukr, direct)
    }

    /// [`ConvGemm::new`] with the weights already packed for `ukr` ([`pack_weights`]'s
    /// layout, e.g. by [`pack_weights_adjoint`]).
    ///
    /// # Panics
    /// If `a` is not the packed size of the layer's weights.
    pub(crate) fn with_packed(
        geom: &Geometry,
        a: Vec<f32>,
        bias: Option<ArrayView1<f32>>,
        ukr: Microkernel,
        direct: bool,
    ) -> ConvGemm {
        let s = &geom.spec;
        let groups = s.groups();
        let (cg, kg) = (geom.c / groups, geom.k / groups);
        let [kh, kw] = s.kernel();
        let [sh, sw] = s.stride();
        let [dh, dw] = s.dilation();
        let ktot = cg * kh * kw;
        let mr = ukr.mr;
        let mpanels = kg.div_ceil(mr);
        assert_eq!(a.len(), packed_len(groups, kg, ktot, mr), "packed weights");
        let bias = match bias {
            Some(b) => b.to_vec(),
            None => vec![0.0; geom.k],
        };
        let border = Border::from(s.padding_mode());
        let zeros = s.padding_mode() == PaddingMode::Zeros;
        let [pt, _, pl, _] = geom.pad;
        let row_src = axis_table(border, kh, geom.oh, geom.h, sh, dh, pt);
        let col_src = axis_table(border, kw, geom.ow, geom.w, sw, dw, pl);
        // Interior of each column tap: output columns whose source lies inside the input.
        let mut col_lo = vec![0; kw];
        let mut col_hi = vec![0; kw];
        let mut col_base = vec![0; kw];
        for kx in 0..kw {
            let base = (kx * dw) as isize - pl as isize;
            col_base[kx] = base;
            let inside: Vec<usize> = (0..geom.ow)
                .filter(|&o| (0..geom.w as isize).contains(&(o as isize * sw as isize + base)))
                .collect();
            if let (Some(&lo), Some(&hi)) = (inside.first(), inside.last()) {
                col_lo[kx] = lo;
                col_hi[kx] = hi + 1;
            }
        }
        let rows = classes(
            |k, o| row_src[k * geom.oh + o] >= 0,
            kh,
            geom.oh,
            zeros && dh > 1 && kh > 1,
        );
        let cols = classes(
            |k, o| col_src[k * geom.ow + o] >= 0,
            kw,
            geom.ow,
            zeros && dw > 1 && kw > 1,
        );
        let nr = ukr.nr;
        // Pixel tiles: ≈ TILE_PIXELS, made smaller (down to one panel) before any split of the
        // output channels, since each channel block repacks B.
        let make_tiles = |target: usize| {
            let mut tiles = Vec::new();
            for &(y0, y1, ky) in &rows {
                for &(x0, x1, kx) in &cols {
                    let bw = x1 - x0;
                    let total = (y1 - y0) * bw;
                    let ntiles = total.div_ceil(target);
                    let per = round_up(total.div_ceil(ntiles), nr);
                    let mut q0 = 0;
                    while q0 < total {
                        let q1 = (q0 + per).min(total);
                        tiles.push(Tile {
                            oy0: y0,
                            ox0: x0,
                            bw,
                            q0,
                            q1,
                            ky,
                            kx,
                        });
                        q0 = q1;
                    }
                }
            }
            tiles
        };
        let mut target = round_up(TILE_PIXELS, nr);
        let mut tiles = make_tiles(target);
        while geom.n * groups * tiles.len() < MIN_TASKS && target > nr {
            target = round_up(target / 2, nr);
            tiles = make_tiles(target);
        }
        let max_tile = tiles.iter().map(Tile::len).max().unwrap_or(nr);
        let fit = MAX_C_BYTES / (4 * mr * round_up(max_tile, nr));
        let mut mc_panels = mpanels.min(fit.max(1));
        let tasks = |mcp: usize| geom.n * groups * tiles.len() * mpanels.div_ceil(mcp);
        while tasks(mc_panels) < MIN_TASKS / 2 && mc_panels > 1 {
            mc_panels = mc_panels.div_ceil(2);
        }
        let nmb = mpanels.div_ceil(mc_panels);
        let kc = (B_PANEL_BYTES / (4 * nr)).max(32);
        let mut plan = ConvGemm {
            ukr,
            geom: *geom,
            groups,
            cg,
            kg,
            kw,
            stride_w: sw,
            ktot,
            mpanels,
            mc_panels,
            nmb,
            kc,
            a,
            bias,
            row_src,
            col_src,
            col_lo,
            col_hi,
            col_base,
            zeros,
            tiles,
            tile_chunks: Vec::new(),
            tile_segs: Vec::new(),
            tile_out: Vec::new(),
            tile_interior: Vec::new(),
            tile_pack: Vec::new(),
            direct,
            offs_packed: RowOffsets::new((0..kc).map(|k| k * nr).collect()),
            avx512: ukr.isa == super::Isa::Avx512,
            offs_planes: RowOffsets::new((0..ktot).map(|c| c * geom.h * geom.w).collect()),
            order: None,
        };
        plan.tile_chunks = plan.tiles.iter().map(|t| plan.chunks(t)).collect();
        plan.tile_interior = plan.tiles.iter().map(|t| plan.interior(t)).collect();
        plan.tile_out = plan
            .tiles
            .iter()
            .map(|t| {
                t.segments(t.len())
                    .map(|(j, oy, ox, seg)| (j, oy * geom.ow + ox, seg))
                    .collect()
            })
            .collect();
        plan.tile_segs = plan
            .tiles
            .iter()
            .map(|t| {
                t.segments(nr)
                    .map(|(j, oy, ox, seg)| (j / nr, j % nr, oy, ox, seg))
                    .collect()
            })
            .collect();
        plan.tile_pack = (0..plan.tiles.len())
            .map(|ti| {
                if !plan.tile_interior[ti] {
                    return None;
                }
                let t = &plan.tiles[ti];
                let segs = &plan.tile_segs[ti];
                let mut v = Vec::with_capacity(kh * plan.kw * segs.len());
                for ky in 0..kh {
                    for kx in 0..plan.kw {
                        let inside =
                            (t.ky.0..t.ky.1).contains(&ky) && (t.kx.0..t.kx.1).contains(&kx);
                        for &(_, _, oy, ox, _) in segs {
                            // Taps outside the tile's ranges are never packed.
                            v.push(if inside {
                                (oy + ky * dh - geom.pad[0]) * geom.w + ox + kx * dw - geom.pad[2]
                            } else {
                                0
                            });
                        }
                    }
                }
                Some(PackTable::new(segs, v, nr))
            })
            .collect();
        // Tasks of uneven cost (a dilated layer's tap classes) run largest first from one
        // queue ([`uneven_order`]).
        let ntasks = geom.n * groups * plan.tiles.len() * nmb;
        let cost = |t: usize| {
            let mb = t % nmb;
            let ti = (t / nmb) % plan.tiles.len();
            let depth: usize = plan.tile_chunks[ti].iter().map(|(a, b)| b - a).sum();
            let panels = mc_panels.min(mpanels - mb * mc_panels);
            ukr.weighted_cols(plan.tiles[ti].len()) * (depth * panels) as f64
        };
        let costs: Vec<f64> = (0..ntasks).map(cost).collect();
        plan.order = uneven_order(&costs);
        plan
    }

    /// The microkernel this plan was packed for.
    pub fn microkernel(&self) -> Microkernel {
        self.ukr
    }

    /// Bytes of per-thread workspace a task needs at most (packed B + C buffer).
    pub fn workspace_bytes(&self) -> usize {
        4 * self.workspace_len()
    }

    fn workspace_len(&self) -> usize {
        let maxlen = self.tiles.iter().map(Tile::len).max().unwrap_or(0);
        let ldc = round_up(maxlen, self.ukr.nr);
        (self.mc_panels * self.ukr.mr + self.kc) * ldc
            + if self.stride_w > 1 { PHASE_MAX } else { 0 }
    }

    /// Bytes of packed weights.
    pub fn packed_weight_bytes(&self) -> usize {
        4 * self.a.len()
    }

    /// `y = conv(x)` on contiguous NCHW buffers of the planned shapes.
    pub fn run(&self, x: &[f32], y: &mut [f32]) {
        let g = &self.geom;
        assert_eq!(x.len(), g.n * g.c * g.h * g.w, "input buffer size");
        assert_eq!(y.len(), g.n * g.k * g.oh * g.ow, "output buffer size");
        let task = |t, out, ws: &mut [f32]| self.task(x, out, t, ws);
        let ntasks = g.n * self.groups * self.tiles.len() * self.nmb;
        let order = self.order.as_deref();
        for_each_task_ordered(y, order, ntasks, self.workspace_len(), task);
    }

    /// Whether every tap of `tile` reads inside the input for every pixel of the tile (at
    /// stride 1; strided layers pack through their phase split). Dilated zero-padded layers'
    /// class tiles always are (that is what the classes mean); plain layers' inner tiles are.
    fn interior(&self, tile: &Tile) -> bool {
        let g = &self.geom;
        let s = &g.spec;
        if self.stride_w != 1 || s.stride()[0] != 1 || tile.len() == 0 {
            return false;
        }
        let [dh, dw] = s.dilation();
        let [pt, _, pl, _] = g.pad;
        let (r0, r1) = (tile.q0 / tile.bw, (tile.q1 - 1) / tile.bw);
        let (c0, c1) = if r0 == r1 {
            (tile.q0 % tile.bw, (tile.q1 - 1) % tile.bw)
        } else {
            (0, tile.bw - 1)
        };
        let inside = |o: usize, k: usize, d: usize, p: usize, n: usize| {
            (0..n as isize).contains(&((o + k * d) as isize - p as isize))
        };
        let rows_ok = (tile.ky.0..tile.ky.1).all(|ky| {
            inside(tile.oy0 + r0, ky, dh, pt, g.h) && inside(tile.oy0 + r1, ky, dh, pt, g.h)
        });
        let cols_ok = (tile.kx.0..tile.kx.1).all(|kx| {
            inside(tile.ox0 + c0, kx, dw, pl, g.w) && inside(tile.ox0 + c1, kx, dw, pl, g.w)
        });
        rows_ok && cols_ok
    }

    /// Depth chunks `[kk0, kk1)` of a tile: its in-bounds taps, cut to ≤ `kc` rows.
    fn chunks(&self, tile: &Tile) -> Vec<(usize, usize)> {
        let cg = self.cg;
        let mut runs = Vec::new();
        if tile.kx.1 > tile.kx.0 {
            if tile.kx == (0, self.kw) {
                if tile.ky.1 > tile.ky.0 {
                    runs.push((tile.ky.0 * self.kw * cg, tile.ky.1 * self.kw * cg));
                }
            } else {
                for ky in tile.ky.0..tile.ky.1 {
                    runs.push((
                        (ky * self.kw + tile.kx.0) * cg,
                        (ky * self.kw + tile.kx.1) * cg,
                    ));
                }
            }
        }
        let mut out = Vec::new();
        for (a, b) in runs {
            let n = (b - a).div_ceil(self.kc);
            let per = (b - a).div_ceil(n);
            let mut k = a;
            while k < b {
                out.push((k, (k + per).min(b)));
                k += per;
            }
        }
        out
    }

    fn task(&self, x: &[f32], out: SharedOut, t: usize, ws: &mut [f32]) {
        let g = &self.geom;
        let (mr, nr) = (self.ukr.mr, self.ukr.nr);
        let mb = t % self.nmb;
        let ti = (t / self.nmb) % self.tiles.len();
        let grp = (t / (self.nmb * self.tiles.len())) % self.groups;
        let n = t / (self.nmb * self.tiles.len() * self.groups);
        let tile = &self.tiles[ti];
        let len = tile.len();
        let npan = len.div_ceil(nr);
        let ldc = npan * nr;
        let p0 = mb * self.mc_panels;
        let p1 = (p0 + self.mc_panels).min(self.mpanels);
        let rows = (p1 - p0) * mr;
        let (cbuf, rest) = ws.split_at_mut(rows * ldc);
        let (bbuf, phase) = rest.split_at_mut(self.kc * ldc);
        let hw = g.h * g.w;
        let xg = &x[(n * g.c + grp * self.cg) * hw..][..self.cg * hw];
        let apan = self.ktot * mr;
        let ag = &self.a[grp * self.mpanels * apan..][..self.mpanels * apan];
        let mut first = true;
        for &(kk0, kk1) in &self.tile_chunks[ti] {
            let kc = kk1 - kk0;
            if !self.direct {
                if let Some(table) = &self.tile_pack[ti] {
                    self.pack_interior(xg, table, len, kk0, kk1, bbuf);
                } else {
                    self.pack(xg, tile, &self.tile_segs[ti], kk0, kk1, bbuf, phase);
                }
            }
            for p in 0..npan {
                // The last panel runs on the kernels that cover it, or if it is ≤ 8 columns on
                // the column-tail kernel (channels on the lanes; it reads only those columns).
                let cols = (len - p * nr).min(nr);
                let tail = cols < nr && cols <= tail::MAX_COLS && tail::available(&self.ukr);
                let (b, offs, k0): (&[f32], &RowOffsets, usize) = if !self.direct {
                    (&bbuf[p * kc * nr..], &self.offs_packed, 0)
                } else {
                    let q = tile.q0 + p * nr;
                    if tail || q + self.ukr.covered(cols) <= hw {
                        (&xg[q..], &self.offs_planes, kk0)
                    } else {
                        // Tail panel past the end of the planes: copy it, zero-padded.
                        let w = hw - q;
                        for kk in kk0..kk1 {
                            let d = &mut bbuf[(kk - kk0) * nr..(kk - kk0 + 1) * nr];
                            d[..w].copy_from_slice(&xg[kk * hw + q..kk * hw + hw]);
                            d[w..].fill(0.0);
                        }
                        (&bbuf[..], &self.offs_packed, 0)
                    }
                };
                if tail {
                    tail::run_panels(
                        kc,
                        &ag[p0 * apan + kk0 * mr..],
                        apan,
                        p1 - p0,
                        b,
                        offs,
                        k0,
                        cols,
                        &mut cbuf[p * nr..],
                        ldc,
                        !first,
                    );
                    continue;
                }
                // Packed panels are padded to whole panels: any kernel may run to the end.
                let parts = if self.direct {
                    self.ukr.parts(cols)
                } else {
                    self.ukr.parts_padded(cols)
                };
                for (j, ukr) in parts {
                    for i in p0..p1 {
                        let a = &ag[i * apan + kk0 * mr..i * apan + kk1 * mr];
                        let c = &mut cbuf[(i - p0) * mr * ldc + p * nr + j..];
                        ukr.run(kc, a, &b[j..], offs, k0, c, ldc, !first);
                    }
                }
            }
            first = false;
        }
        if first {
            // Every tap of this tile reads padding: the output is the bias alone.
            cbuf.fill(0.0);
        }
        for r in 0..rows {
            let m = p0 * mr + r;
            if m >= self.kg {
                break;
            }
            let ch = grp * self.kg + m;
            let bias = self.bias[ch];
            let crow = &cbuf[r * ldc..r * ldc + len];
            let plane = (n * g.k + ch) * g.oh * g.ow;
            for &(j, pos, seg) in &self.tile_out[ti] {
                let off = plane + pos;
                // SAFETY: task t is the only one writing channel `ch` of image `n` at the
                // pixels of tile `ti` (tasks partition batch × group × tile × channel block),
                // and `out` wraps the caller's exclusively borrowed output during `run`.
                unsafe { out.write_row(off, &crow[j..j + seg], bias) };
            }
        }
    }

    /// Packs rows `[kk0, kk1)` of the tile's im2col panel into `dst` (panel-major: panel `p`
    /// at `p·kc·NR`, row `kk` at `+ (kk − kk0)·NR`), zero-filling lanes past the tile.
    ///
    /// Strided layers first split the input rows the tile reads into their `stride` column
    /// phases (`phase`, when they fit in it): a strided gather per tap becomes a contiguous
    /// copy, and each row is deinterleaved once instead of once per `kx` tap.
    #[allow(clippy::too_many_arguments)]
    fn pack(
        &self,
        xg: &[f32],
        tile: &Tile,
        segs: &[Segment],
        kk0: usize,
        kk1: usize,
        dst: &mut [f32],
        phase: &mut [f32],
    ) {
        let g = &self.geom;
        let nr = self.ukr.nr;
        let kc = kk1 - kk0;
        let len = tile.len();
        let npan = len.div_ceil(nr);
        let hw = g.h * g.w;
        let split = self.split_phases(xg, tile, kk0, kk1, phase);
        // The tile's segments (panel, lane, oy, ox, len), computed at plan time rather than
        // once per depth row (each costs divisions; a 2304-deep chunk of an atrous layer has
        // ~8 segments per row).
        let tail = npan * nr - len;
        // Depth row kk = (ky·kw + kx)·Cg + c, walked with counters (no division per row).
        let (mut c, mut tap) = (kk0 % self.cg, kk0 / self.cg);
        for kl in 0..kc {
            let (ky, kx) = (tap / self.kw, tap % self.kw);
            let plane = &xg[c * hw..(c + 1) * hw];
            for &(panel, lane, oy, ox, seg) in segs {
                let at = panel * kc * nr + kl * nr + lane;
                let d = &mut dst[at..at + seg];
                match split {
                    Some(ph) => self.fill_phase(plane, phase, ph, c, ky, kx, oy, ox, d),
                    None => self.fill(plane, ky, kx, oy, ox, d),
                }
            }
            if tail > 0 {
                let at = (npan - 1) * kc * nr + kl * nr + (nr - tail);
                dst[at..at + tail].fill(0.0);
            }
            c += 1;
            if c == self.cg {
                c = 0;
                tap += 1;
            }
        }
    }

    /// [`ConvGemm::pack`] for an interior tile at stride 1: per depth row, one call copies
    /// every segment from its channel's plane, at source offsets computed at plan time (the
    /// taps of an atrous layer's border classes have segments of a few pixels, so the border
    /// logic that `pack` pays per segment and depth row dominated its packing).
    #[allow(clippy::too_many_arguments)]
    fn pack_interior(
        &self,
        xg: &[f32],
        table: &PackTable,
        len: usize,
        kk0: usize,
        kk1: usize,
        dst: &mut [f32],
    ) {
        let g = &self.geom;
        let nr = self.ukr.nr;
        let kc = kk1 - kk0;
        let npan = len.div_ceil(nr);
        let hw = g.h * g.w;
        let (mut c, mut tap) = (kk0 % self.cg, kk0 / self.cg);
        for kl in 0..kc {
            let plane = &xg[c * hw..(c + 1) * hw];
            // Every row but the last may spill into the next row of its panel, packed next.
            table.pack(
                tap,
                dst,
                (kl * nr, kc * nr),
                plane,
                self.avx512,
                kl + 1 < kc,
            );
            c += 1;
            if c == self.cg {
                c = 0;
                tap += 1;
            }
        }
        let tail = npan * nr - len;
        if tail > 0 {
            for kl in 0..kc {
                let at = (npan - 1) * kc * nr + kl * nr + (nr - tail);
                dst[at..at + tail].fill(0.0);
            }
        }
    }

    /// Deinterleaves the input rows of channels `c0..c1` that the tile reads into `phase`
    /// (`[c − c0][iy − iy0][p][t] = x[c][iy][t·s + p]`); `None` if not strided or too big.
    fn split_phases(
        &self,
        xg: &[f32],
        tile: &Tile,
        kk0: usize,
        kk1: usize,
        phase: &mut [f32],
    ) -> Option<PhaseRows> {
        let g = &self.geom;
        let s = self.stride_w;
        // Without several column taps there is no reuse to pay for the extra copy.
        if s == 1 || self.kw == 1 || kk1 <= kk0 {
            return None;
        }
        let cg = self.cg;
        let (c0, c1) = if kk0 / cg == (kk1 - 1) / cg {
            (kk0 % cg, (kk1 - 1) % cg + 1)
        } else {
            (0, cg)
        };
        let (oy_a, oy_b) = (
            tile.oy0 + tile.q0 / tile.bw,
            tile.oy0 + (tile.q1 - 1) / tile.bw,
        );
        let mut lo = usize::MAX;
        let mut hi = 0;
        for ky in tile.ky.0..tile.ky.1 {
            for oy in oy_a..=oy_b {
                let iy = self.row_src[ky * g.oh + oy];
                if iy >= 0 {
                    lo = lo.min(iy as usize);
                    hi = hi.max(iy as usize);
                }
            }
        }
        if lo > hi {
            return None;
        }
        let wph = g.w.div_ceil(s);
        let rows = hi - lo + 1;
        // Checked: a stride near usize::MAX would wrap the product and pass the test.
        let need = (c1 - c0)
            .checked_mul(rows)
            .and_then(|v| v.checked_mul(s))
            .and_then(|v| v.checked_mul(wph));
        if need.is_none_or(|n| n > phase.len()) {
            return None;
        }
        let hw = g.h * g.w;
        for c in c0..c1 {
            for r in 0..rows {
                let row = &xg[c * hw + (lo + r) * g.w..][..g.w];
                let base = ((c - c0) * rows + r) * s * wph;
                for p in 0..s {
                    let n = (g.w - p.min(g.w)).div_ceil(s);
                    let d = &mut phase[base + p * wph..base + (p + 1) * wph];
                    if n > 0 {
                        gather_strided(&mut d[..n], &row[p..p + (n - 1) * s + 1], s, self.avx512);
                    }
                    d[n..].fill(0.0);
                }
            }
        }
        Some(PhaseRows {
            c0,
            iy0: lo,
            rows,
            wph,
        })
    }

    /// [`ConvGemm::fill`] reading the interior from the phase-split rows.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn fill_phase(
        &self,
        plane: &[f32],
        phase: &[f32],
        ph: PhaseRows,
        c: usize,
        ky: usize,
        kx: usize,
        oy: usize,
        ox: usize,
        dst: &mut [f32],
    ) {
        let g = &self.geom;
        let iy = self.row_src[ky * g.oh + oy];
        if iy < 0 {
            dst.fill(0.0);
            return;
        }
        let end = ox + dst.len();
        let a = self.col_lo[kx].clamp(ox, end);
        let b = self.col_hi[kx].clamp(a, end);
        let row = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
        let border = |o: usize| {
            if self.zeros {
                0.0
            } else {
                row[self.col_src[kx * g.ow + o] as usize]
            }
        };
        for o in ox..a {
            dst[o - ox] = border(o);
        }
        if b > a {
            let s = self.stride_w;
            let ix = (a as isize * s as isize + self.col_base[kx]) as usize;
            let base = ((c - ph.c0) * ph.rows + (iy as usize - ph.iy0)) * s * ph.wph;
            let src = &phase[base + (ix % s) * ph.wph + ix / s..][..b - a];
            copy_row(&mut dst[a - ox..b - ox], src, 0.0, false, self.avx512);
        }
        for o in b..end {
            dst[o - ox] = border(o);
        }
    }

    /// One im2col row segment: tap (ky, kx) for output pixels (oy, ox..ox + dst.len()).
    #[inline]
    fn fill(&self, plane: &[f32], ky: usize, kx: usize, oy: usize, ox: usize, dst: &mut [f32]) {
        let g = &self.geom;
        let iy = self.row_src[ky * g.oh + oy];
        if iy < 0 {
            dst.fill(0.0);
            return;
        }
        let row = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
        let end = ox + dst.len();
        let a = self.col_lo[kx].clamp(ox, end);
        let b = self.col_hi[kx].clamp(a, end);
        let sw = self.stride_w;
        let border = |o: usize| {
            if self.zeros {
                0.0
            } else {
                row[self.col_src[kx * g.ow + o] as usize]
            }
        };
        for o in ox..a {
            dst[o - ox] = border(o);
        }
        if b > a {
            let start = (a as isize * sw as isize + self.col_base[kx]) as usize;
            let d = &mut dst[a - ox..b - ox];
            if sw == 1 {
                copy_row(d, &row[start..start + (b - a)], 0.0, false, self.avx512);
            } else {
                gather_strided(
                    d,
                    &row[start..start + (b - a - 1) * sw + 1],
                    sw,
                    self.avx512,
                );
            }
        }
        for o in b..end {
            dst[o - ox] = border(o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    fn weights(shape: (usize, usize, usize, usize)) -> Array4<f32> {
        Array4::from_shape_fn(shape, |(k, c, i, j)| {
            (k * 1000 + c * 100 + i * 10 + j) as f32 * 0.5 - 3.0
        })
    }

    /// The packed layout by its definition: `[group][panel][(tap·Cg + c)·MR + r]`, zero rows
    /// past `Kg` in the last panel; panels of 8 (the transposes' blocks) and of 6 (not).
    #[test]
    fn packing_matches_its_definition() {
        for (shape, groups) in [
            ((16, 12, 3, 3), 1),
            ((13, 5, 1, 1), 1),
            ((12, 3, 2, 3), 2),
            ((24, 17, 1, 3), 3),
        ] {
            let w = weights(shape);
            let (k, cg, kh, kw) = shape;
            let (kg, taps) = (k / groups, kh * kw);
            for mr in [6, 8] {
                let a = pack_weights(w.view(), groups, mr);
                let mpanels = kg.div_ceil(mr);
                assert_eq!(a.len(), groups * mpanels * cg * taps * mr);
                for (i, &v) in a.iter().enumerate() {
                    let r = i % mr;
                    let kk = (i / mr) % (cg * taps);
                    let p = (i / (mr * cg * taps)) % mpanels;
                    let g = i / (mr * cg * taps * mpanels);
                    let (t, c) = (kk / cg, kk % cg);
                    let o = p * mr + r;
                    let want = if o < kg {
                        w[[g * kg + o, c, t / kw, t % kw]]
                    } else {
                        0.0
                    };
                    assert_eq!(v, want, "{shape:?} g{groups} mr{mr} at {i}");
                }
            }
        }
    }

    /// Packing the adjoint straight from `w` gives what packing its flipped, channel-swapped
    /// copy gives.
    #[test]
    fn adjoint_packing_matches_packing_the_flipped_weights() {
        for (shape, groups) in [
            ((16, 12, 3, 3), 1),
            ((9, 13, 1, 1), 1),
            ((12, 3, 2, 3), 2),
            ((24, 17, 1, 3), 3),
            ((6, 2, 5, 5), 2),
        ] {
            let w = weights(shape);
            let (k, cg, kh, kw) = shape;
            let kg = k / groups;
            let flipped = Array4::from_shape_fn((cg * groups, kg, kh, kw), |(o, kk, i, j)| {
                let (g, c) = (o / cg, o % cg);
                w[[g * kg + kk, c, kh - 1 - i, kw - 1 - j]]
            });
            for mr in [6, 8] {
                assert_eq!(
                    pack_weights_adjoint(w.view(), groups, mr),
                    pack_weights(flipped.view(), groups, mr),
                    "{shape:?} g{groups} mr{mr}"
                );
            }
        }
    }
}
