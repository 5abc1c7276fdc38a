//! Direct convolution: the microkernel reads a padded copy of the input band in place, no
//! im2col at all.
//!
//! A task copies a band of input rows (all `Cg` channels of a group, border modes applied)
//! into its workspace, ≤ ~400 KiB, so the band is padded and L2-resident. For stride `s`
//! the band is split into its `s_h × s_w` stride phases (phase `(py, px)` holds the padded
//! input rows `≡ py` and columns `≡ px` mod s), so that every tap reads a phase at unit
//! stride: input row `(oy0 + r)·s_h + ky·d_h` is row `r + ⌊ky·d_h / s_h⌋` of phase
//! `ky·d_h mod s_h` (likewise for columns). Only the phases some tap reads are stored (a 1×1
//! stride-2 layer keeps one, a plain subsample). In that band, output pixel `(r, ox)` sits at
//! the flat position `f = r·Wb + ox`, and the input it needs for tap `(c, ky, kx)` at
//! `f + off`, with `off = (c·P + phase)·BR·Wb + ⌊ky·d_h/s_h⌋·Wb + ⌊kx·d_w/s_w⌋` the same for
//! every pixel. So an `NR`-wide run of flat positions is one microkernel tile whose B rows are
//! `band[f + off(kk)..]`: the indirect convolution of Dukhan (2019), with row offsets instead
//! of pointers. The flat run also covers the `⌊(kw−1)·d_w / s_w⌋` gap columns between output
//! rows, which are computed and dropped (3.4 % for a 3×3 on a 56-wide map, 2.6 % for the 7×7
//! stride-2 stem on 224×224), so the plan only picks this for narrow kernels on wide maps.
//!
//! Each output element is produced by exactly one task over a fixed chunk sequence, so the
//! result does not depend on the number of threads.

use super::gemm::{Microkernel, RowOffsets};
use super::igemm::{pack_weights, packed_len};
use super::round_up;
use super::store::{for_each_task_keyed, gather_strided, prefetch, SharedOut};
use super::tail;
use super::tasks::{for_each_claimed_span, Spans};
use crate::border::Border;
use crate::geometry::Geometry;
use ndarray::{ArrayView1, ArrayView4};

/// Flat output positions a band aims for.
const BAND_PIXELS: usize = 256;
/// Flat output positions a band aims for when its tiles are stored straight into the output
/// (no C buffer to keep in L2, and a band refill re-gathers its `(kh−1)·d/s` extra rows).
const ROW_BAND_PIXELS: usize = 1024;
/// Largest band buffer, bytes.
const MAX_BAND_BYTES: usize = 384 * 1024;
/// Largest band buffer of a cut 1-D row (conv1d), bytes.
const MAX_ROW_BAND_BYTES: usize = 192 * 1024;
/// Widest band (columns); wider rows (conv1d) are cut into several bands.
const MAX_BAND_COLS: usize = 384;
/// Tasks per worker thread a layer is cut into at least, where the layer allows. Only the
/// speed depends on it: every output element is summed over the same depth chunks in the same
/// order whatever the cut, so results are identical for any thread count. At two threads,
/// 8 tasks left a 1×1 stride-2 layer (a 13-row and a 1-row band) unbalanced: 16 ran it in
/// 1.35–1.44 ms instead of 1.53–1.88 (`convkit bench`, three alternating runs).
const TASKS_PER_THREAD: usize = 8;
/// Largest output-channel block per task.
const MAX_MC: usize = 256;
/// Depth rows per microkernel call, so that a tile's B rows stay in L1 across channel panels.
const KC: usize = 128;

/// Where a task lies: image, group, output-channel block and the band's output window
/// `(oy0, ox0, rows, cols)`.
struct Place {
    n: usize,
    grp: usize,
    block: usize,
    window: (usize, usize, usize, usize),
}

/// An exact cover of a band's flat run, for flat tiles stored straight into `y`: whole `NR`
/// tiles, then `parts`, then `tail` columns on the column-tail kernel, so that no tile spills
/// into the next band (see [`DirectConv::inplace`]).
#[derive(Debug, Clone)]
struct Cover {
    /// The run's length.
    flat: usize,
    /// The kernels after the whole tiles: `(first column, kernel)`.
    parts: Vec<(usize, Microkernel)>,
    /// Columns left to the column-tail kernel (0: none).
    tail: usize,
}

impl Cover {
    /// The cover of a flat run of `flat` columns by `ukr`'s kernels and ≤ 8 columns of the
    /// column-tail kernel, if the kernels cut the rest exactly.
    fn new(ukr: Microkernel, flat: usize) -> Option<Cover> {
        let full = flat / ukr.nr * ukr.nr;
        let rest = flat - full;
        let tail = rest % 8;
        let parts = ukr
            .exact_split(rest - tail)?
            .into_iter()
            .map(|(x, u)| (full + x, u))
            .collect();
        Some(Cover { flat, parts, tail })
    }
}

thread_local! {
    /// The band a single-band layer's threads fill together ([`DirectConv::run_shared_band`]),
    /// kept by the calling thread between runs (no fresh pages per call).
    static SHARED_BAND: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A planned stride-1 direct convolution.
#[derive(Debug)]
pub struct DirectConv {
    ukr: Microkernel,
    geom: Geometry,
    border: Border,
    groups: usize,
    cg: usize,
    kg: usize,
    ktot: usize,
    mpanels: usize,
    mc_panels: usize,
    nmb: usize,
    /// Whether tiles are output-row runs stored straight into `y` with the bias (see
    /// [`DirectConv::layout`]), rather than flat band runs staged in a C buffer.
    rowwise: bool,
    /// Where the band has no gap columns (`(kw−1)·d_w < s_w`: 1×1 strided, 2×2 stride-2) and
    /// whole output rows, flat position `f` of a band is output position `oy0·OW + f`, so an
    /// `MR × NR` flat tile is `MR` channel planes' runs in `y` itself (rows `OH·OW` apart
    /// instead of the C buffer's `ldc`): then the covers of a full band's flat run and of the
    /// last (shorter) band's, and the tiles go straight into `y`, saving the C buffer's copy
    /// pass (2.3 % of the 1×1/2 512 → 1024 layer). `None`: staged in a C buffer and copied.
    inplace: Option<[Cover; 2]>,
    /// Output rows per band.
    rows: usize,
    /// Output columns per band.
    cols: usize,
    /// Band buffer rows `BR` and columns `Wb` (per stored phase).
    br: usize,
    wb: usize,
    /// The stored stride phases `(py, px)`, in band order.
    phases: Vec<(usize, usize)>,
    nbx: usize,
    nby: usize,
    /// Row-wise tiles: the kernels of a band's row, and of the last (narrower) band's.
    row_split: Vec<(usize, Microkernel)>,
    last_split: Vec<(usize, Microkernel)>,
    offs: RowOffsets,
    a: Vec<f32>,
    bias: Vec<f32>,
}

impl DirectConv {
    /// Plans `geom`, packing `w` for `ukr`.
    pub fn new(
        geom: &Geometry,
        w: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
        ukr: Microkernel,
    ) -> DirectConv {
        Self::with_packed(geom, pack_weights(w, geom.spec.groups(), ukr.mr), bias, ukr)
    }

    /// [`DirectConv::new`] with the weights already packed for `ukr` (the layout of
    /// [`pack_weights`], e.g. by [`super::igemm::pack_weights_adjoint`]).
    ///
    /// # Panics
    /// If `a` is not the packed size of the layer's weights.
    pub(crate) fn with_packed(
        geom: &Geometry,
        a: Vec<f32>,
        bias: Option<ArrayView1<f32>>,
        ukr: Microkernel,
    ) -> DirectConv {
        let mut d = Self::layout(geom, ukr);
        let [kh, kw] = geom.spec.kernel();
        let (kg, cg) = (geom.k / d.groups, geom.c / d.groups);
        assert_eq!(
            a.len(),
            packed_len(d.groups, kg, cg * kh * kw, ukr.mr),
            "packed weights"
        );
        d.a = a;
        d.bias = bias.map_or_else(|| vec![0.0; geom.k], |b| b.to_vec());
        d
    }

    /// Multiply-accumulates the plan would run with `ukr`, counting the padding of bands to
    /// whole `NR`-wide tiles and of output channels to whole `MR` panels (what a caller
    /// compares to choose a microkernel width).
    pub fn padded_macs(geom: &Geometry, ukr: Microkernel) -> f64 {
        let d = Self::layout(geom, ukr);
        let flat = if d.rowwise || d.inplace.is_some() {
            d.rows * d.cols
        } else {
            ukr.covered((d.rows - 1) * d.wb + d.cols)
        };
        let bands = (geom.n * d.groups * d.nbx * d.nby) as f64;
        bands * flat as f64 * (d.mpanels * ukr.mr) as f64 * d.ktot as f64
    }

    /// The band layout, task split and tap offsets for `ukr` (weights not yet packed).
    fn layout(geom: &Geometry, ukr: Microkernel) -> DirectConv {
        let s = &geom.spec;
        let groups = s.groups();
        let (cg, kg) = (geom.c / groups, geom.k / groups);
        let [kh, kw] = s.kernel();
        let [dh, dw] = s.dilation();
        let [sh, sw] = s.stride();
        let ktot = cg * kh * kw;
        let (mr, nr) = (ukr.mr, ukr.nr);
        let mpanels = kg.div_ceil(mr);
        // Phases some tap reads, and the extra rows / columns a phase needs past the outputs.
        let mut phases: Vec<(usize, usize)> = (0..kh)
            .flat_map(|ky| (0..kw).map(move |kx| ((ky * dh) % sh, (kx * dw) % sw)))
            .collect();
        phases.sort_unstable();
        phases.dedup();
        let np = phases.len();
        let (eh, ew) = ((kh - 1) * dh / sh, (kw - 1) * dw / sw);
        // Columns per band: the whole row if the one-row band fits the buffer, else cut.
        let max_cols = (MAX_BAND_BYTES / (4 * cg * np * (1 + eh))).saturating_sub(ew);
        let max_cols = max_cols.clamp(nr, MAX_BAND_COLS);
        // A cut row is cut into bands a whole number of tiles wide (the last one narrower):
        // 3000 columns in 144-wide bands fill 99 % of their tiles, in 17 balanced 177-wide
        // ones 92 %.
        let cols = if geom.ow <= max_cols {
            geom.ow
        } else if geom.oh == 1 {
            // A cut 1-D row: narrower bands ran faster (task-clock at 1 thread, 5–6 rounds:
            // 512 → 512 k3 on 3000 0.89× in 48-wide bands rather than 144, on 1000 0.94×,
            // 384 → 384 k3 0.94×, 256 → 256 k5 even).
            let cut = (MAX_ROW_BAND_BYTES / (4 * cg * np)).saturating_sub(ew);
            (cut.min(max_cols) / nr * nr).max(nr)
        } else {
            (max_cols / nr * nr).max(nr)
        };
        let nbx = geom.ow.div_ceil(cols);
        let wb = cols + ew;
        let band_bytes = |r: usize| 4 * cg * np * (r + eh) * wb;
        let fit = |pixels: usize| {
            let mut rows = (pixels / wb).clamp(1, geom.oh);
            while rows > 1 && band_bytes(rows) > MAX_BAND_BYTES {
                rows -= 1;
            }
            rows
        };
        // Row-wise tiles: each output row's columns in whole kernel widths, the finished tile
        // stored straight into `y` with the bias (no C buffer, no copy pass: the copy was 10 %
        // of the 7×7 stride-2 stem, whose 3.2 MB output misses the caches), and no gap columns
        // multiplied. Where every band's width is a sum of kernel widths (a tile must not spill
        // into another task's pixels), the output channels of a group fill whole panels (nor
        // into another group's channels), and it multiplies no more columns than the flat runs.
        // Depth ≤ 2·KC, run as one chunk: a chunked tile re-reads and re-writes its outputs,
        // whose channel rows lie a plane apart (a page or more each), not in the compact C
        // buffer: conv1d 512 → 512 (12 chunks) ran 47 → 55 ms row-wise.
        // Chosen from the shape alone, never the thread count, so results stay identical.
        let rows0 = fit(BAND_PIXELS);
        let last_cols = geom.ow - (nbx - 1) * cols;
        let rowwise = ktot <= 2 * KC
            && kg % mr == 0
            && ukr.covered(cols) == cols
            && ukr.covered(last_cols) == last_cols
            && rows0 * cols <= ukr.covered((rows0 - 1) * wb + cols);
        let mut rows = if rowwise { fit(ROW_BAND_PIXELS) } else { rows0 };
        // A short last band (14 rows in bands of 13: a 1-row band) costs its channel blocks a
        // full pass over the weights for a few pixels: take it into the others when that
        // stretches the buffer by at most a quarter.
        let nby = geom.oh.div_ceil(rows);
        if nby > 1 && geom.oh - (nby - 1) * rows <= rows / 4 {
            let longer = geom.oh.div_ceil(nby - 1);
            if band_bytes(longer) <= MAX_BAND_BYTES / 4 * 5 {
                rows = longer;
            }
        }
        let tasks = |rows: usize, mcp: usize| {
            geom.n * groups * nbx * geom.oh.div_ceil(rows) * mpanels.div_ceil(mcp)
        };
        // Enough tasks for every core: split the output channels first (a band refill is a
        // cheap copy), down to 32-row blocks; then shorter bands while they fill two panels.
        // The pool the plan is made in (a plan run in another pool is as exact, maybe slower).
        let min_tasks = TASKS_PER_THREAD * rayon::current_num_threads().max(1);
        let mut mc_panels = mpanels.min((MAX_MC / mr).max(1));
        let min_mcp = 32usize.div_ceil(mr);
        while mc_panels > min_mcp && tasks(rows, mc_panels) < min_tasks {
            mc_panels = mc_panels.div_ceil(2).max(min_mcp);
        }
        while rows > 1 && (rows / 2) * wb >= 2 * nr && tasks(rows, mc_panels) < min_tasks {
            rows = rows.div_ceil(2);
        }
        let br = rows + eh;
        let nby = geom.oh.div_ceil(rows);
        // Decided from the shape and the kernel alone (the rows depend on the thread count,
        // and the two tilings add the bias at different points of the sum): with the
        // column-tail kernel every flat run has an exact cover.
        let inplace = (!rowwise && ew == 0 && nbx == 1 && kg % mr == 0 && tail::available(&ukr))
            .then(|| {
                let last = geom.oh - (nby - 1) * rows;
                let cover = |flat| Cover::new(ukr, flat).expect("8-wide kernels and a tail");
                [cover(rows * geom.ow), cover(last * geom.ow)]
            });
        let split = |c: usize| {
            if rowwise {
                ukr.exact_split(c)
                    .expect("a row-wise band is a sum of kernel widths")
            } else {
                Vec::new()
            }
        };
        let mut offs = vec![0; ktot];
        for ky in 0..kh {
            for kx in 0..kw {
                let ph = (ky * dh % sh, kx * dw % sw);
                let p = phases
                    .binary_search(&ph)
                    .expect("every tap's phase is stored");
                for c in 0..cg {
                    offs[(ky * kw + kx) * cg + c] =
                        (c * np + p) * br * wb + ky * dh / sh * wb + kx * dw / sw;
                }
            }
        }
        DirectConv {
            ukr,
            geom: *geom,
            border: Border::from(s.padding_mode()),
            groups,
            cg,
            kg,
            ktot,
            mpanels,
            mc_panels,
            nmb: mpanels.div_ceil(mc_panels),
            rowwise,
            inplace,
            rows,
            cols,
            br,
            wb,
            phases,
            nbx,
            nby,
            row_split: split(cols),
            last_split: split(last_cols),
            offs: RowOffsets::new(offs),
            a: Vec::new(),
            bias: Vec::new(),
        }
    }

    /// The microkernel this plan was packed for.
    pub fn microkernel(&self) -> Microkernel {
        self.ukr
    }

    /// The depth chunks `(kk0, kk1)` every tile is summed over, in order: ≤ KC rows each,
    /// balanced; row-wise tiles (depth ≤ 2·KC) take the whole depth in one, so that each tile
    /// is written into `y` once rather than written, re-read and written again (U-Net's grad
    /// input, 2×2/2 64 → 128 on 128×128, 0.94× task-clock; the stem 0.985×, five rounds). The
    /// sums are the same either way: a chunk only stops and resumes the same accumulation.
    fn depth_chunks(&self) -> impl Iterator<Item = (usize, usize)> {
        let per = if self.rowwise {
            self.ktot
        } else {
            self.ktot.div_ceil(self.ktot.div_ceil(KC))
        };
        let ktot = self.ktot;
        (0..ktot)
            .step_by(per.max(1))
            .map(move |k0| (k0, (k0 + per).min(ktot)))
    }

    fn band_len(&self) -> usize {
        self.cg * self.phases.len() * self.br * self.wb + self.ukr.nr
    }

    fn ldc(&self) -> usize {
        round_up((self.rows - 1) * self.wb + self.cols, self.ukr.nr)
    }

    /// Floats of a task's C buffer (none for row-wise tiles, stored straight into `y`).
    fn cbuf_len(&self) -> usize {
        if self.rowwise || self.inplace.is_some() {
            0
        } else {
            self.mc_panels * self.ukr.mr * self.ldc()
        }
    }

    fn workspace_len(&self) -> usize {
        self.band_len() + self.cbuf_len()
    }

    /// Bytes of per-thread workspace (band + C buffer).
    pub fn workspace_bytes(&self) -> usize {
        4 * self.workspace_len()
    }

    /// Bytes of the band a single-band layer's threads share when run by several
    /// ([`DirectConv::run_shared_band`]; 0 for other layers).
    pub fn scratch_bytes(&self) -> usize {
        if self.single_band() {
            4 * self.band_len()
        } else {
            0
        }
    }

    /// Whether the layer is one band (one image, one group, the whole map) cut only into
    /// channel blocks: what several threads fill together ([`DirectConv::run_shared_band`]).
    fn single_band(&self) -> bool {
        self.geom.n * self.groups * self.nby * self.nbx == 1 && self.nmb > 1
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
        let ntasks = g.n * self.groups * self.nby * self.nbx * self.nmb;
        let threads = rayon::current_num_threads();
        if threads > 1 && self.single_band() {
            return self.run_shared_band(x, y, threads);
        }
        for_each_task_keyed(y, ntasks, self.workspace_len(), |t, out, ws, prev| {
            self.task(x, out, t, ws, prev)
        });
    }

    /// [`DirectConv::run`] for a layer of one band (one image, one group, the whole map in
    /// one band: a 1×1 stride-2 layer on a 28×28 map) run by several threads: the threads fill
    /// one shared band together (each a slice of its channels), then each runs channel blocks
    /// against it. With a band per thread, every thread gathered all of it: 401 KB of strided
    /// input for each of the 1×1/2 512 → 1024 layer's threads. The band holds the same values
    /// either way, so the result does not change.
    fn run_shared_band(&self, x: &[f32], y: &mut [f32], threads: usize) {
        let g = &self.geom;
        let mut band = SHARED_BAND.with(|cell| cell.take());
        if band.len() < self.band_len() {
            band.resize(self.band_len(), 0.0);
        }
        let per_c = self.phases.len() * self.br * self.wb;
        let chunk = self.cg.div_ceil(4 * threads);
        let (rv, cv) = (self.rows.min(g.oh), self.cols.min(g.ow));
        let xg = &x[..self.cg * g.h * g.w];
        for_each_claimed_span(
            &mut band[..self.cg * per_c],
            Spans::Even(chunk * per_c),
            |claims| {
                for (i, part) in claims {
                    let c0 = i * chunk;
                    let chans = c0..(c0 + chunk).min(self.cg);
                    self.fill_band(xg, (0, 0, rv, cv), chans, part);
                }
            },
        );
        let band_ref = &band[..];
        for_each_task_keyed(y, self.nmb, self.cbuf_len(), |t, out, ws, _| {
            self.compute(out, t, band_ref, ws);
            None
        });
        SHARED_BAND.with(|cell| cell.set(band));
    }

    /// Copies channels `chans` of the band (of the group's channels, each stored stride phase,
    /// border rule applied) into `band`, which starts at channel `chans.start`.
    fn fill_band(
        &self,
        xg: &[f32],
        (oy0, ox0, rv, cv): (usize, usize, usize, usize),
        chans: std::ops::Range<usize>,
        band: &mut [f32],
    ) {
        let g = &self.geom;
        let [pt, _, pl, _] = g.pad;
        let [kh, kw] = g.spec.kernel();
        let [dh, dw] = g.spec.dilation();
        let [sh, sw] = g.spec.stride();
        let (nrow, ncol) = (rv + (kh - 1) * dh / sh, cv + (kw - 1) * dw / sw);
        let hw = g.h * g.w;
        let np = self.phases.len();
        // The input rows of a band of whole output rows: one span of each plane, asked for
        // one channel ahead (a band of part of a row, as conv1d's, reads too little of it).
        // Pays where the input comes cold from memory: U-Net's grad input (2×2/2 64 → 128 on
        // 128×128, inside a backward pass) 0.88–0.95× the time (eight alternating rounds);
        // cache-resident inputs (the 1×1/2 and 7×7/2 layers run alone) are within ±3 %.
        let span = (ox0 == 0 && cv == g.ow).then(|| {
            let first = |r: usize| ((oy0 + r) * sh) as isize - pt as isize;
            let r0 = first(0).clamp(0, g.h as isize) as usize;
            let r1 = (first(nrow.saturating_sub(1)) + sh as isize).clamp(0, g.h as isize) as usize;
            (r0 * g.w, r1.max(r0) * g.w)
        });
        for c in chans.clone() {
            let plane = &xg[c * hw..(c + 1) * hw];
            if let (Some((a, b)), true) = (span, c + 1 < chans.end) {
                prefetch(&xg[(c + 1) * hw + a..(c + 1) * hw + b]);
            }
            for (p, &(py, px)) in self.phases.iter().enumerate() {
                // Band column j of this phase reads input column (ox0 + j)·sw + px − pl;
                // columns [j0, j1) of those lie inside the input.
                let first = ((ox0 * sw + px) as isize) - pl as isize;
                let j0 = ((-first).max(0) as usize).div_ceil(sw).min(ncol);
                let j1 = if (g.w as isize) > first {
                    ((g.w as isize - first) as usize)
                        .div_ceil(sw)
                        .clamp(j0, ncol)
                } else {
                    j0
                };
                for r in 0..nrow {
                    let dst =
                        &mut band[(((c - chans.start) * np + p) * self.br + r) * self.wb..][..ncol];
                    let iy = ((oy0 + r) * sh + py) as isize - pt as isize;
                    let Some(iy) = self.border.source(iy, g.h) else {
                        dst.fill(0.0);
                        continue;
                    };
                    let row = &plane[iy * g.w..(iy + 1) * g.w];
                    if j1 > j0 {
                        let s0 = (first + (j0 * sw) as isize) as usize;
                        if sw == 1 {
                            dst[j0..j1].copy_from_slice(&row[s0..s0 + (j1 - j0)]);
                        } else {
                            gather_strided(
                                &mut dst[j0..j1],
                                &row[s0..],
                                sw,
                                self.ukr.isa == super::Isa::Avx512,
                            );
                        }
                    }
                    for j in (0..j0).chain(j1..ncol) {
                        dst[j] = self
                            .border
                            .source(first + (j * sw) as isize, g.w)
                            .map_or(0.0, |ix| row[ix]);
                    }
                }
            }
        }
    }

    /// Task `t`: one channel block of one band. Tasks `t` of one band are consecutive, so
    /// a thread usually runs several in a row: the band is filled only when `prev` (the band
    /// this thread's workspace holds from its previous task of this run) is another one.
    /// Returns the band it leaves.
    fn task(
        &self,
        x: &[f32],
        out: SharedOut,
        t: usize,
        ws: &mut [f32],
        prev: Option<usize>,
    ) -> Option<usize> {
        let g = &self.geom;
        let at = self.place(t);
        let (band, cbuf) = ws.split_at_mut(self.band_len());
        let hw = g.h * g.w;
        let xg = &x[(at.n * g.c + at.grp * self.cg) * hw..][..self.cg * hw];
        let band_id = t / self.nmb;
        if prev != Some(band_id) {
            self.fill_band(xg, at.window, 0..self.cg, band);
        }
        self.compute(out, t, band, cbuf);
        Some(band_id)
    }

    /// Where task `t` lies: tasks run batch × group × band row × band column × channel block.
    fn place(&self, t: usize) -> Place {
        let g = &self.geom;
        let band = t / self.nmb;
        let bx = band % self.nbx;
        let by = (band / self.nbx) % self.nby;
        let (oy0, ox0) = (by * self.rows, bx * self.cols);
        Place {
            n: band / (self.nbx * self.nby * self.groups),
            grp: (band / (self.nbx * self.nby)) % self.groups,
            block: t % self.nmb,
            window: (
                oy0,
                ox0,
                self.rows.min(g.oh - oy0),
                self.cols.min(g.ow - ox0),
            ),
        }
    }

    /// The tiles of task `t` (one channel block of one band) against its filled `band`.
    fn compute(&self, out: SharedOut, t: usize, band: &[f32], cbuf: &mut [f32]) {
        let g = &self.geom;
        let (mr, nr) = (self.ukr.mr, self.ukr.nr);
        let Place {
            n,
            grp,
            block,
            window: (oy0, ox0, rv, cv),
        } = self.place(t);
        let p0 = block * self.mc_panels;
        let p1 = (p0 + self.mc_panels).min(self.mpanels);
        if self.rowwise {
            self.task_rowwise(out, (n, grp), (oy0, ox0, rv, cv), (p0, p1), band);
            return;
        }
        if let Some(covers) = &self.inplace {
            let cover = if rv == self.rows {
                &covers[0]
            } else {
                &covers[1]
            };
            self.task_inplace(cover, out, (n, grp), (oy0, rv), (p0, p1), band);
            return;
        }
        let flat = (rv - 1) * self.wb + cv;
        // A last partial tile of ≤ 8 columns runs on the column-tail kernel (channels on the
        // lanes), chunk by chunk like the panels.
        let tail = flat % nr;
        let tail = (tail <= tail::MAX_COLS && tail::available(&self.ukr)).then_some(tail);
        let npan = if tail.is_some() {
            flat / nr
        } else {
            flat.div_ceil(nr)
        };
        let ldc = self.ldc();
        let apan = self.ktot * mr;
        let ag = &self.a[grp * self.mpanels * apan..][..self.mpanels * apan];
        for (kk0, kk1) in self.depth_chunks() {
            // The tail over the same depth chunks as the panels: each chunk's sum is added to
            // C as a whole, so an element's bits depend on the chunks it was summed in, and a
            // column that is a tail in one band layout (the layout depends on the threads) is
            // a panel column in another.
            if let Some(cols) = tail.filter(|&c| c > 0) {
                let at = npan * nr;
                tail::run_panels(
                    kk1 - kk0,
                    &ag[p0 * apan + kk0 * mr..],
                    apan,
                    p1 - p0,
                    &band[at..],
                    &self.offs,
                    kk0,
                    cols,
                    &mut cbuf[at..],
                    ldc,
                    kk0 > 0,
                );
            }
            for p in 0..npan {
                // The last tile runs on the kernels that cover it.
                for (j, ukr) in self.ukr.parts(flat - p * nr) {
                    let b = &band[p * nr + j..];
                    for i in p0..p1 {
                        let a = &ag[i * apan + kk0 * mr..i * apan + kk1 * mr];
                        let c = &mut cbuf[(i - p0) * mr * ldc + p * nr + j..];
                        ukr.run(kk1 - kk0, a, b, &self.offs, kk0, c, ldc, kk0 > 0);
                    }
                }
            }
        }
        for r in 0..(p1 - p0) * mr {
            let m = p0 * mr + r;
            if m >= self.kg {
                break;
            }
            let ch = grp * self.kg + m;
            for rr in 0..rv {
                let off = ((n * g.k + ch) * g.oh + oy0 + rr) * g.ow + ox0;
                let src = &cbuf[r * ldc + rr * self.wb..][..cv];
                // SAFETY: this task alone writes channel `ch` of image `n` in band (by, bx)
                // (tasks partition batch × group × band × channel block), and `out` wraps the
                // caller's exclusively borrowed output during `run`.
                unsafe { out.write_row(off, src, self.bias[ch]) };
            }
        }
    }

    /// The flat tiles of one channel block (panels `p0..p1`) of the band of `rv` output rows
    /// from `oy0` of image `n`, group `grp`, cut by `cover`, stored straight into `y` (see
    /// [`DirectConv::inplace`]); the bias starts each tile's sum.
    fn task_inplace(
        &self,
        cover: &Cover,
        out: SharedOut,
        (n, grp): (usize, usize),
        (oy0, rv): (usize, usize),
        (p0, p1): (usize, usize),
        band: &[f32],
    ) {
        let g = &self.geom;
        let (mr, nr) = (self.ukr.mr, self.ukr.nr);
        let ohw = g.oh * g.ow;
        let apan = self.ktot * mr;
        let ag = &self.a[grp * self.mpanels * apan..][..self.mpanels * apan];
        let Cover { flat, parts, tail } = cover;
        let (flat, tail) = (*flat, *tail);
        debug_assert_eq!(flat, rv * g.ow);
        // Offset in `y` of channel `ch`'s band position `x`.
        let at = |ch: usize, x: usize| (n * g.k + ch) * ohw + oy0 * g.ow + x;
        let whole = (0..flat / nr).map(|p| (p * nr, self.ukr));
        for (kk0, kk1) in self.depth_chunks() {
            // The tail in the same depth chunks as the tiles (see `compute`).
            if tail > 0 {
                let x = flat - tail;
                let ch = grp * self.kg + p0 * mr;
                // SAFETY: this task alone writes channels `ch..ch + (p1 − p0)·MR` (inside the
                // group: `kg` is a multiple of MR) of image `n` in its band, columns
                // `x..flat` of it; `out` wraps the caller's exclusively borrowed output
                // during `run`.
                unsafe {
                    out.run_tail(
                        (kk0, kk1),
                        &ag[p0 * apan + kk0 * mr..],
                        (apan, p1 - p0),
                        &band[x..],
                        &self.offs,
                        tail,
                        (at(ch, x), ohw),
                        (kk0 == 0).then(|| &self.bias[ch..ch + (p1 - p0) * mr]),
                    )
                };
            }
            for (x, ukr) in whole.clone().chain(parts.iter().copied()) {
                // SAFETY: this task alone writes channels `p0·MR..p1·MR` of group `grp` of
                // image `n` in its band, and the tile ends within the band's flat run (an
                // exact cover); `out` wraps the caller's exclusively borrowed output.
                unsafe {
                    self.store_panels(out, ukr, (kk0, kk1), (grp, p0, p1), &band[x..], |ch| {
                        at(ch, x)
                    })
                };
            }
        }
    }

    /// One tile column (B rows at `b`, depth rows `kk0..kk1`) for channel panels `p0..p1` of
    /// group `grp`, each `MR × NR` tile stored straight into `y`: the rows of the panel whose
    /// first channel is `ch` at `offset(ch)`, `OH·OW` apart, the bias starting the first
    /// chunk's sum.
    ///
    /// # Safety
    /// No other thread may access those elements during the call (`kg` a multiple of MR, so
    /// a panel stays within its group), and `out` must wrap the output of the planned shape.
    unsafe fn store_panels(
        &self,
        out: SharedOut,
        ukr: Microkernel,
        (kk0, kk1): (usize, usize),
        (grp, p0, p1): (usize, usize, usize),
        b: &[f32],
        offset: impl Fn(usize) -> usize,
    ) {
        let g = &self.geom;
        let mr = self.ukr.mr;
        let apan = self.ktot * mr;
        let ag = &self.a[grp * self.mpanels * apan..][..self.mpanels * apan];
        for i in p0..p1 {
            let a = &ag[i * apan + kk0 * mr..i * apan + kk1 * mr];
            let ch = grp * self.kg + i * mr;
            let bias = (kk0 == 0).then(|| &self.bias[ch..ch + mr]);
            // SAFETY: the caller's contract; `run_tile` checks the tile's bounds.
            unsafe {
                out.run_tile(
                    ukr,
                    kk1 - kk0,
                    a,
                    b,
                    &self.offs,
                    kk0,
                    offset(ch),
                    g.oh * g.ow,
                    kk0 > 0,
                    bias,
                )
            };
        }
    }

    /// The row-wise tiles of one channel block (panels `p0..p1`) of the band at `(oy0, ox0)`
    /// (`rv × cv` outputs) of image `n`, group `grp`: each output row in whole kernel widths,
    /// every tile written into `y` by the microkernel, the bias its first depth chunk's start.
    fn task_rowwise(
        &self,
        out: SharedOut,
        (n, grp): (usize, usize),
        (oy0, ox0, rv, cv): (usize, usize, usize, usize),
        (p0, p1): (usize, usize),
        band: &[f32],
    ) {
        let g = &self.geom;
        let ohw = g.oh * g.ow;
        // `cv` is a sum of kernel widths (the layout's condition): its cheapest exact split
        // ends at the band's last column.
        let split = if cv == self.cols {
            &self.row_split
        } else {
            &self.last_split
        };
        for (kk0, kk1) in self.depth_chunks() {
            for rr in 0..rv {
                let orow = (oy0 + rr) * g.ow + ox0;
                for &(x, ukr) in split {
                    let b = &band[rr * self.wb + x..];
                    // SAFETY: this task alone writes channels `p0·MR..p1·MR` of group `grp`
                    // of image `n` in its band, and the tile ends at the band's last column;
                    // `out` wraps the caller's exclusively borrowed output.
                    unsafe {
                        self.store_panels(out, ukr, (kk0, kk1), (grp, p0, p1), b, |ch| {
                            (n * g.k + ch) * ohw + orow + x
                        })
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::spec::ConvSpec;
    use crate::spec::ValidSpec;
    use crate::testutil::{in_pool, pseudo};
    use ndarray::{Array1, Array4};

    /// A test layer: spec, geometry, input, weights, bias and the reference's output.
    type Case = (
        ValidSpec,
        Geometry,
        Array4<f32>,
        Array4<f32>,
        Array1<f32>,
        Array4<f32>,
    );

    /// The layer `spec` on `input` with pseudo-random operands from `seed` on.
    fn case(spec: ConvSpec, input: [usize; 4], seed: u64) -> Case {
        let v = spec.build().unwrap();
        let g = v.geometry(input).unwrap();
        let x = Array4::from_shape_vec(input, pseudo(input.iter().product(), seed)).unwrap();
        let ws = v.weight_shape();
        let w = Array4::from_shape_vec(ws, pseudo(ws.iter().product(), seed + 1)).unwrap();
        let b = Array1::from(pseudo(g.k, seed + 2));
        let want = reference::forward(&v, x.view(), w.view(), Some(b.view())).unwrap();
        (v, g, x, w, b, want)
    }

    /// Multiply-adds per output (a tolerance scale).
    fn depth(v: &ValidSpec, g: &Geometry) -> f32 {
        (g.c / v.groups() * v.kernel()[0] * v.kernel()[1]) as f32
    }

    /// A layer of one band run by several threads fills one shared band (each thread some of
    /// its channels): the same result, bit for bit, as one thread with its own band, and the
    /// reference's; flat tiles (a 1×1 stride-2 layer with a column tail) and row-wise ones.
    #[test]
    fn a_shared_band_gives_the_same_result() {
        let cases = [
            (ConvSpec::conv2d(40, 64, 1).stride(2), [1, 40, 13, 11]),
            (ConvSpec::conv2d(5, 48, 3).padding(1), [1, 5, 1, 32]),
        ];
        for (spec, input) in cases {
            let (v, g, x, w, b, want) = case(spec, input, 4);
            for isa in crate::kernels::Isa::available_levels() {
                let ukr = Microkernel::for_isa(isa).unwrap();
                let run = |threads: usize| {
                    in_pool(threads, || {
                        let d = DirectConv::new(&g, w.view(), Some(b.view()), ukr);
                        let ntasks = g.n * d.groups * d.nby * d.nbx * d.nmb;
                        assert!(
                            ntasks == d.nmb && d.nmb > 1,
                            "{v}: one band, several blocks"
                        );
                        let mut y = vec![f32::NAN; g.n * g.k * g.oh * g.ow];
                        d.run(x.as_slice().unwrap(), &mut y);
                        y
                    })
                };
                let (one, three) = (run(1), run(3));
                for (i, ((a, b), r)) in one.iter().zip(&three).zip(want.iter()).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{v} {isa} [{i}]");
                    assert!((a - r).abs() <= 1e-4, "{v} {isa} [{i}]: {a} vs {r}");
                }
            }
        }
    }

    /// Flat tiles stored straight into the output ([`DirectConv::inplace`]) where a band has no gap
    /// columns, whole rows and whole panels per group: against the reference on every
    /// microkernel, bit for bit the same at 1 and 3 threads, with column tails, exact
    /// remainders, groups, batch 2, several bands (the last shorter) and several depth
    /// chunks; layers with a gap or a partial panel keep the C buffer.
    #[test]
    fn in_place_flat_tiles_match_the_reference() {
        let cases = [
            // 1×1/2, 14 × 12 outputs, batch 2.
            (ConvSpec::conv2d(40, 64, 1).stride(2), [2, 40, 27, 23], true),
            // 2×2/2, depth 80·4 = 320 (not row-wise), 15 × 25 outputs.
            (ConvSpec::conv2d(80, 16, 2).stride(2), [1, 80, 30, 50], true),
            // Two groups of 16 output channels, depth 24 per group.
            (
                ConvSpec::conv2d(48, 32, 1).stride(2).groups(2),
                [1, 48, 21, 19],
                true,
            ),
            // Depth 256 in two chunks, 29 rows in bands of 15 and 14.
            (
                ConvSpec::conv2d(256, 64, 1).stride(2),
                [1, 256, 58, 58],
                true,
            ),
            // 12 output channels: a partial panel, C buffer.
            (
                ConvSpec::conv2d(40, 12, 1).stride(2),
                [1, 40, 20, 20],
                false,
            ),
            // 3×3/2: gap columns, C buffer. Regression: its bands are 4 rows at one thread
            // and 2 at three (more tasks), so its flat runs (243 and 121 columns) put
            // different columns in the ≤ 8-column tail; the tail kernel summed the whole
            // depth in one pass while the panels add per depth chunk, and the two thread
            // counts differed in the last bits.
            (
                ConvSpec::conv2d(32, 8, 3).stride(2).padding(1),
                [1, 32, 120, 120],
                false,
            ),
        ];
        let mut engaged = 0;
        for (spec, input, expect) in cases {
            let (v, g, x, w, b, want) = case(spec, input, 7);
            let depth = depth(&v, &g);
            for isa in crate::kernels::Isa::available_levels() {
                let ukr = Microkernel::for_isa(isa).unwrap();
                let run = |threads: usize| {
                    in_pool(threads, || {
                        let d = DirectConv::new(&g, w.view(), Some(b.view()), ukr);
                        let mut y = vec![f32::NAN; g.n * g.k * g.oh * g.ow];
                        d.run(x.as_slice().unwrap(), &mut y);
                        (y, d.inplace.is_some(), d.rowwise, d.nby)
                    })
                };
                let ((one, inplace, rowwise, nby), (three, ..)) = (run(1), run(3));
                assert!(!rowwise, "{v} {isa}: flat tiles");
                if !expect || isa == crate::kernels::Isa::Avx512 {
                    assert_eq!(inplace, expect, "{v} {isa}");
                }
                if inplace {
                    engaged += 1;
                    if g.oh == 29 {
                        assert!(nby > 1, "{v}: several bands");
                    }
                }
                let tol = 1e-6 * depth * 4.0 + 1e-6;
                for (i, ((a, b), r)) in one.iter().zip(&three).zip(want.iter()).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{v} {isa} [{i}]");
                    assert!((a - r).abs() <= tol, "{v} {isa} [{i}]: {a} vs {r}");
                }
            }
        }
        // (They need the column-tail kernel: AVX-512; valgrind's CPU has none.)
        assert!(
            engaged >= 2 || !crate::kernels::Isa::Avx512.available(),
            "in-place tiles tested: {engaged}"
        );
    }

    /// Row-wise tiles (stored straight into the output with the bias) where every band width
    /// is a sum of kernel widths and a group's channels fill whole panels, flat runs
    /// otherwise; both against the reference on every microkernel, with several depth chunks
    /// (`Cg·kh·kw` > KC), groups, batch 2 and a band cut in columns.
    #[test]
    fn row_wise_and_flat_tiles_match_the_reference() {
        let cases = [
            // Stem-like, 24 = 16 + 8 wide: row-wise on AVX-512 and AVX2 (8-wide kernels).
            (
                ConvSpec::conv2d(3, 16, 7).stride(2).padding(3),
                [2, 3, 20, 48],
            ),
            // Two groups of 16 channels, depth 16·9 = 144 > KC.
            (
                ConvSpec::conv2d(32, 32, 3).padding(1).groups(2),
                [1, 32, 9, 40],
            ),
            // 12 output channels: not whole panels, flat.
            (ConvSpec::conv2d(3, 12, 3).padding(1), [1, 3, 10, 32]),
            // 30 wide: no sum of kernel widths, flat.
            (ConvSpec::conv2d(4, 16, 3).padding(1), [1, 4, 10, 30]),
            // Depth 64·9 = 576: five chunks, flat.
            (ConvSpec::conv2d(64, 16, 3).padding(1), [1, 64, 6, 16]),
            // conv1d-like wide row cut into bands (a 1-row band of 384 columns at most).
            (
                ConvSpec::conv2d(8, 16, [1, 3]).padding([0, 1]),
                [1, 8, 1, 1000],
            ),
        ];
        let mut modes = [0, 0];
        for (spec, input) in cases {
            let (v, g, x, w, b, want) = case(spec, input, 1);
            let depth = depth(&v, &g);
            for isa in crate::kernels::Isa::available_levels() {
                let ukr = Microkernel::for_isa(isa).unwrap();
                let d = DirectConv::new(&g, w.view(), Some(b.view()), ukr);
                let kg = g.k / v.groups();
                let sums = |c: usize| ukr.covered(c) == c;
                let last = g.ow - (d.nbx - 1) * d.cols;
                let rowwise = d.ktot <= 2 * KC && kg % ukr.mr == 0 && sums(d.cols) && sums(last);
                assert_eq!(d.rowwise, rowwise, "{v} {isa}");
                modes[usize::from(rowwise)] += 1;
                let mut y = vec![f32::NAN; g.n * g.k * g.oh * g.ow];
                d.run(x.as_slice().unwrap(), &mut y);
                for (i, (got, want)) in y.iter().zip(want.iter()).enumerate() {
                    let tol = 1e-6 * depth * 4.0 + 1e-6;
                    assert!(
                        (got - want).abs() <= tol,
                        "{v} {isa} [{i}]: {got} vs {want}"
                    );
                }
            }
        }
        assert!(
            modes[0] >= 3 && modes[1] >= 2,
            "both tilings tested: {modes:?}"
        );
        let stem = ConvSpec::conv2d(3, 64, 7)
            .stride(2)
            .padding(3)
            .build()
            .unwrap();
        let g = stem.geometry([1, 3, 224, 224]).unwrap();
        if let Some(u) = Microkernel::for_isa(crate::kernels::Isa::Avx512) {
            assert!(
                DirectConv::layout(&g, u).rowwise,
                "the ResNet stem runs row-wise"
            );
        }
    }
}
