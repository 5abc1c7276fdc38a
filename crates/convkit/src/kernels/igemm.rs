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

use super::gemm::Microkernel;
use super::round_up;
use super::store::SharedOut;
use crate::border::Border;
use crate::geometry::Geometry;
use crate::spec::PaddingMode;
use ndarray::{ArrayView1, ArrayView4};
use rayon::prelude::*;
use std::cell::RefCell;

/// Pixels per tile (rounded to the microkernel width).
const TILE_PIXELS: usize = 192;
/// Minimum number of tasks a layer is cut into (so batch 1 keeps every core busy); fixed, so
/// that the decomposition, and hence the result, never depends on the thread count.
const MIN_TASKS: usize = 16;
/// Largest output-channel block per task (rows of the C buffer).
const MAX_MC: usize = 256;
/// Bytes of one packed B micro-panel (`KC × NR` floats) we want resident in L1.
const B_PANEL_BYTES: usize = 24 * 1024;

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
    direct: bool,
}

thread_local! {
    /// Per-thread workspace (packed B panel + C buffer), grown once and reused by every task.
    static WORKSPACE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Source index of each output position along one axis, for each tap (`-1`: a zero).
fn axis_table(
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
fn classes(
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
        let s = &geom.spec;
        let groups = s.groups();
        let (cg, kg) = (geom.c / groups, geom.k / groups);
        let [kh, kw] = s.kernel();
        let [sh, sw] = s.stride();
        let [dh, dw] = s.dilation();
        let ktot = cg * kh * kw;
        let mr = ukr.mr;
        let mpanels = kg.div_ceil(mr);
        // Weights: [group][panel][kk = (ky·kw + kx)·cg + c][r], zero rows past Kg.
        let mut a = vec![0f32; groups * mpanels * ktot * mr];
        for g in 0..groups {
            for m in 0..kg {
                let (p, r) = (m / mr, m % mr);
                for c in 0..cg {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let kk = (ky * kw + kx) * cg + c;
                            a[((g * mpanels + p) * ktot + kk) * mr + r] =
                                w[[g * kg + m, c, ky, kx]];
                        }
                    }
                }
            }
        }
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
        let target = round_up(TILE_PIXELS, nr);
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
        // Output-channel blocks: as large as possible, halved until there are enough tasks.
        let mut mc_panels = mpanels.min((MAX_MC / mr).max(1));
        let tasks = |mcp: usize| geom.n * groups * tiles.len() * mpanels.div_ceil(mcp);
        while tasks(mc_panels) < MIN_TASKS && mc_panels > 1 {
            mc_panels = mc_panels.div_ceil(2);
        }
        let nmb = mpanels.div_ceil(mc_panels);
        let kc = (B_PANEL_BYTES / (4 * nr)).max(32);
        ConvGemm {
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
            direct,
        }
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
        let out = SharedOut::new(y);
        let ntasks = g.n * self.groups * self.tiles.len() * self.nmb;
        let wlen = self.workspace_len();
        (0..ntasks).into_par_iter().for_each(|t| {
            WORKSPACE.with(|ws| {
                let mut ws = ws.borrow_mut();
                if ws.len() < wlen {
                    ws.resize(wlen, 0.0);
                }
                self.task(x, out, t, &mut ws[..wlen]);
            })
        });
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
        let (cbuf, bbuf) = ws.split_at_mut(rows * ldc);
        let hw = g.h * g.w;
        let xg = &x[(n * g.c + grp * self.cg) * hw..][..self.cg * hw];
        let apan = self.ktot * mr;
        let ag = &self.a[grp * self.mpanels * apan..][..self.mpanels * apan];
        let mut first = true;
        for (kk0, kk1) in self.chunks(tile) {
            let kc = kk1 - kk0;
            if !self.direct {
                self.pack(xg, tile, kk0, kk1, bbuf);
            }
            for p in 0..npan {
                let (b, ldb): (&[f32], usize) = if !self.direct {
                    (&bbuf[p * kc * nr..(p + 1) * kc * nr], nr)
                } else {
                    let q = tile.q0 + p * nr;
                    if q + nr <= hw {
                        (&xg[kk0 * hw + q..kk1 * hw], hw)
                    } else {
                        // Tail panel narrower than the kernel: copy it, zero-padded.
                        let w = hw - q;
                        for kk in kk0..kk1 {
                            let d = &mut bbuf[(kk - kk0) * nr..(kk - kk0 + 1) * nr];
                            d[..w].copy_from_slice(&xg[kk * hw + q..kk * hw + hw]);
                            d[w..].fill(0.0);
                        }
                        (&bbuf[..kc * nr], nr)
                    }
                };
                for i in p0..p1 {
                    let a = &ag[i * apan + kk0 * mr..i * apan + kk1 * mr];
                    let c = &mut cbuf[(i - p0) * mr * ldc + p * nr..];
                    self.ukr.run(kc, a, b, ldb, c, ldc, !first);
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
            for (j, oy, ox, seg) in tile.segments(len) {
                let off = ((n * g.k + ch) * g.oh + oy) * g.ow + ox;
                // SAFETY: task t is the only one writing channel `ch` of image `n` at the
                // pixels of tile `ti` (tasks partition batch × group × tile × channel block),
                // and `out` wraps the caller's exclusively borrowed output during `run`.
                unsafe { out.write_row(off, &crow[j..j + seg], bias) };
            }
        }
    }

    /// Packs rows `[kk0, kk1)` of the tile's im2col panel into `dst` (panel-major: panel `p`
    /// at `p·kc·NR`, row `kk` at `+ (kk − kk0)·NR`), zero-filling lanes past the tile.
    fn pack(&self, xg: &[f32], tile: &Tile, kk0: usize, kk1: usize, dst: &mut [f32]) {
        let g = &self.geom;
        let nr = self.ukr.nr;
        let kc = kk1 - kk0;
        let len = tile.len();
        let npan = len.div_ceil(nr);
        let hw = g.h * g.w;
        for kk in kk0..kk1 {
            let tap = kk / self.cg;
            let c = kk % self.cg;
            let (ky, kx) = (tap / self.kw, tap % self.kw);
            let plane = &xg[c * hw..(c + 1) * hw];
            let kl = kk - kk0;
            for (j, oy, ox, seg) in tile.segments(nr) {
                let at = (j / nr) * kc * nr + kl * nr + j % nr;
                self.fill(plane, ky, kx, oy, ox, &mut dst[at..at + seg]);
            }
            let tail = npan * nr - len;
            if tail > 0 {
                let at = (npan - 1) * kc * nr + kl * nr + (nr - tail);
                dst[at..at + tail].fill(0.0);
            }
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
                d.copy_from_slice(&row[start..start + (b - a)]);
            } else {
                let src = &row[start..start + (b - a - 1) * sw + 1];
                for (v, s) in d.iter_mut().zip(src.iter().step_by(sw)) {
                    *v = *s;
                }
            }
        }
        for o in b..end {
            dst[o - ox] = border(o);
        }
    }
}
