//! Transposed convolution as GEMM + col2im (ONNX Runtime's and tract's way): no inserted zero
//! is ever multiplied.
//!
//! A transposed convolution writes `y[n, g·Kg + k, iy·s − p + ky·d, ix·s − p + kx·d] +=
//! x[n, g·Cg + c, iy, ix] · w[g·Cg + c, k, ky, kx]`. For one image and group, the products of
//! every input pixel with every tap are the GEMM
//!
//! `cols[(k, ky, kx), (iy, ix)] = Σ_c w[c, k, ky, kx] · x[c, (iy, ix)]`
//!
//! (`M = Kg·kh·kw`, depth `Cg`, `N = H·W`: the weights transposed, times the input planes as
//! they are), and *col2im* scatter-adds each column row into the output at
//! `oy = iy·s − p + ky·d`, `ox = ix·s − p + kx·d`, dropping what falls in the cropped border.
//!
//! * **GEMM**: the weights are packed once at plan time (`Wᵀ`, MR-row panels, zero rows past
//!   the block); B rows are the NCHW input planes read in place (`offs[c] = c·H·W`, as the
//!   1×1 GEMM does), only a tail panel narrower than the microkernel is copied, unless a pass
//!   has enough A panels (`PACK_MIN_PANELS`) to pay for copying every B panel into a
//!   contiguous, L1-resident one.
//! * **Bounded workspace**: the pixel axis is cut into chunks and the rows into passes of at
//!   most `MAX_PASS_ROWS`, so the column buffer of a thread is ≤ `COLS_BYTES` (512 KiB)
//!   whatever the layer; it lives in the per-thread workspace of
//!   [`super::store`], so a warm run allocates nothing.
//! * **Deterministic scatter**: a task owns a block of output channels of one image (a
//!   contiguous slice of `y`, split off without sharing), computes their columns for every
//!   pixel chunk in a fixed order and adds them into its own planes. No two tasks touch the
//!   same output element and the decomposition does not depend on the thread count, so results
//!   are bit-identical for any number of threads.
//! * **Pixel tasks for exact covers**: where each output element is written once (kernel =
//!   stride: U-Net's 2×2/2), a task is instead a run of input rows for every output channel of
//!   its group; the output rows it writes are reached from no other input row, so tasks stay
//!   disjoint (written through a shared handle). A task's passes then hold all `K·kh·kw`
//!   column rows, so each copied B panel serves all their A panels (32 microkernel calls on
//!   U-Net, against 4 for its 8-channel blocks): 1.29 vs 1.38–1.45 ms at one thread.
//!
//! When it wins: both algorithms multiply the same products (col2im also those landing in
//! the cropped border). Col2im's GEMM is `Kg·kh·kw × Cg × H·W`, shallow but one large GEMM,
//! plus `Kg·kh·kw·H·W` scattered additions per image (`1/Cg` of the MACs); the sub-pixel
//! phases are `s_h·s_w` direct convolutions of depth `Cg·taps/phase`, plus the interleave. So
//! col2im wins with wide groups and with kernels that fit in their stride (single-tap
//! phases), sub-pixel at stride 1 (one phase, written in place) and on narrow groups; the
//! measured rule is `transposed_algo` in [`crate::plan`].

use super::gemm::{Microkernel, RowOffsets};
use super::store::{copy_row, for_each_task, with_workspace, SharedOut};
use super::tasks::{for_each_claimed_span, Spans};
use super::{round_up, Isa};
use crate::error::{ConvError, Result};
use crate::geometry::Geometry;
use ndarray::{ArrayView1, ArrayView4};

/// Tasks a layer is cut into at least, where its output channels allow (fixed, so that the
/// decomposition never depends on the thread count).
const MIN_TASKS: usize = 8;
/// Largest column buffer per thread, bytes (the bound is ~2 MiB; 512 KiB stays in
/// Zen 4's 1 MiB L2 next to the output planes being scattered into).
const COLS_BYTES: usize = 512 * 1024;
/// Most column rows one GEMM pass computes before they are scattered.
const MAX_PASS_ROWS: usize = 256;
/// Bytes of one B micro-panel (`KC × NR` floats) we want resident in L1.
const B_PANEL_BYTES: usize = 30 * 1024;
/// A panels per pass from which each B panel is copied before use rather than read in place.
/// In place, the rows of a panel lie a plane apart, and planes of 1024·j floats put all of
/// them in the same L1 sets (U-Net's 64 × 64: the 8×48 kernel at 165–180 GFLOP/s against
/// 193–197 on 64 × 65); a copy is contiguous but costs a pass over the panel, which pays
/// only when many microkernel calls reuse it (copies served by 4 calls were 1.3× slower).
const PACK_MIN_PANELS: usize = 16;

/// How a layer's work is cut into tasks.
#[derive(Debug)]
enum Tasks {
    /// Task = (image, group, block of output channels): it owns those channel planes, a
    /// contiguous slice of `y` at `task_off[t]` (one entry more than tasks).
    Channels { task_off: Vec<usize> },
    /// Exact covers only. Task = (image, group, run of `rows` input rows): every output
    /// channel of the group, on the output rows those input rows reach, which no other
    /// input row reaches.
    Pixels { rows: usize, per_group: usize },
}

/// The GEMM blocking of a block of `kb` output channels: passes over its rows and chunks of
/// its pixels bounded by the column-buffer size.
#[derive(Debug, Clone, Copy)]
struct Blocking {
    kb: usize,
    /// Column rows of the block (`kb·kh·kw`).
    rows: usize,
    /// Rows per GEMM pass (a multiple of MR).
    pass_rows: usize,
    /// Input pixels per chunk.
    chunk: usize,
    /// Whether chunks are whole input rows.
    row_chunks: bool,
    /// Row stride of the column buffer (`chunk` rounded up to NR).
    ldc: usize,
    /// Most whole input rows a chunk may hold (0: not even one).
    fit_rows: usize,
}

impl Blocking {
    /// The blocking of `kb` channels' `kb·taps` column rows for `MR × NR` tiles, with at most
    /// `cols_bytes` of columns and `max_pass_rows` rows (rounded up to MR) a pass.
    fn new(
        g: &Geometry,
        kb: usize,
        taps: usize,
        mr: usize,
        nr: usize,
        cols_bytes: usize,
        max_pass_rows: usize,
    ) -> Blocking {
        let rows = kb * taps;
        let pass_rows = round_up(rows, mr).min(round_up(max_pass_rows.max(1), mr));
        // Whole input rows per chunk if one fits (the columns, rounded up to NR, within
        // `cols_bytes`), else a multiple of NR pixels.
        let per_pass = cols_bytes / 4 / pass_rows;
        let fit_rows = per_pass.saturating_sub(nr - 1) / g.w;
        let (chunk, row_chunks) = if fit_rows >= 1 {
            (fit_rows.min(g.h) * g.w, true)
        } else {
            ((per_pass / nr).max(1) * nr, false)
        };
        let chunk = chunk.min(round_up(g.h * g.w, nr));
        Blocking {
            kb,
            rows,
            pass_rows,
            chunk,
            row_chunks,
            ldc: round_up(chunk, nr),
            fit_rows,
        }
    }

    /// This blocking (whole-row chunks) with chunks of the input rows a pixel task takes,
    /// and that number of rows: at most what fits, few enough for `min_tasks` tasks per
    /// image and group where the rows allow, and a divisor of the height if one is at least
    /// half that (equal tasks: 64 rows as 16 × 4, not 9 × 7 + 1).
    fn pixel_rows(self, g: &Geometry, nr: usize, min_tasks: usize) -> (Blocking, usize) {
        let cap = self.fit_rows.min(g.h.div_ceil(min_tasks.max(1))).max(1);
        let rows = (cap.div_ceil(2)..=cap)
            .rev()
            .find(|r| g.h.is_multiple_of(*r))
            .unwrap_or(cap);
        let chunk = rows * g.w;
        let blocking = Blocking {
            chunk,
            ldc: round_up(chunk, nr),
            ..self
        };
        (blocking, rows)
    }
}

/// A transposed convolution planned as GEMM + col2im.
#[derive(Debug)]
pub struct Col2im {
    ukr: Microkernel,
    geom: Geometry,
    groups: usize,
    cg: usize,
    kg: usize,
    kh: usize,
    kw: usize,
    /// Output channels per task (the last block of a group may hold fewer).
    kb: usize,
    /// Blocks per group.
    nblk: usize,
    /// MR-row panels per block (`⌈kb·kh·kw / MR⌉`).
    npanels: usize,
    /// Rows per GEMM pass (a multiple of MR).
    pass_rows: usize,
    /// Input pixels per chunk: whole input rows when one fits (`row_chunks`), else a
    /// multiple of NR.
    chunk: usize,
    /// Whether chunks are whole input rows (the scatter then runs [`RowOp`]s made at plan
    /// time; otherwise it works out each row segment as it goes).
    row_chunks: bool,
    /// Row stride of the column buffer (`chunk` rounded up to NR).
    ldc: usize,
    /// The scatter of one input row for a whole run of taps `kx = 0..kw`.
    row_ops: Vec<RowOp>,
    /// Floats of the temporary phase rows `row_ops` use (stride 2; else 0).
    temp_len: usize,
    /// Per `ky`: the input rows `[lo, hi)` whose output row lies inside the output.
    iy_range: Vec<(usize, usize)>,
    /// Whether the scatter writes every output element exactly once (kernel = stride: U-Net's
    /// 2×2/2): it then stores `bias + column` instead of filling the planes with the bias
    /// and adding (the fill was a pass over the output, ~5 % of the layer).
    exact: bool,
    /// Depth rows per microkernel call.
    kc: usize,
    /// `Wᵀ` packed: `[group][block][panel][c][r]`, `r` < MR.
    a: Vec<f32>,
    bias: Vec<f32>,
    /// How the layer is cut into tasks.
    tasks: Tasks,
    /// Whether B panels are copied into the workspace (contiguous, L1-resident) rather than
    /// read from the input planes in place: where a pass has enough A panels to reuse each.
    pack_b: bool,
    /// Per `kx`: the input columns `[lo, hi)` whose output column lies inside the output.
    ix_range: Vec<(usize, usize)>,
    /// B row offsets of the input planes read in place (`c·H·W`).
    offs_planes: RowOffsets,
    /// B row offsets of a copied tail panel (`c·NR`).
    offs_packed: RowOffsets,
}

impl Col2im {
    /// Plans a transposed layer (weights in PyTorch's `(C, K/g, kh, kw)` layout) for `ukr`.
    pub fn new(
        geom: &Geometry,
        weight: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
        ukr: Microkernel,
    ) -> Result<Self> {
        Self::with_limits(geom, weight, bias, ukr, COLS_BYTES, MAX_PASS_ROWS)
    }

    /// [`Col2im::new`] with a given column-buffer bound and rows per pass (the tests make
    /// them tiny so that every layer is cut into many chunks and passes).
    fn with_limits(
        geom: &Geometry,
        weight: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
        ukr: Microkernel,
        cols_bytes: usize,
        max_pass_rows: usize,
    ) -> Result<Self> {
        let spec = &geom.spec;
        if !spec.is_transposed() {
            return Err(ConvError::AlgorithmUnavailable {
                algo: "col2im",
                why: "it runs transposed convolutions only".into(),
            });
        }
        crate::reference::check_operands(
            spec,
            &geom.input_shape(),
            weight.shape(),
            bias.map(|b| b.len()),
        )?;
        let groups = spec.groups();
        let (cg, kg) = (geom.c / groups, geom.k / groups);
        let [kh, kw] = spec.kernel();
        let taps = kh * kw;
        let (mr, nr) = (ukr.mr, ukr.nr);
        let hw = geom.h * geom.w;
        let (row_ops, temp_len) = row_ops(geom);
        let [sh, sw] = spec.stride();
        let [dh, dw] = spec.dilation();
        let ix_range: Vec<(usize, usize)> = (0..kw)
            .map(|kx| axis_range(geom.w, geom.ow, sw, kx * dw, geom.pad[2]))
            .collect();
        let iy_range: Vec<(usize, usize)> = (0..kh)
            .map(|ky| axis_range(geom.h, geom.oh, sh, ky * dh, geom.pad[0]))
            .collect();
        // Whether every output row is reached by one (ky, iy) and every output column written
        // by one row op: the scatter then writes each output element once.
        let covers = covers_once(geom.oh, |hit| {
            for (ky, &(lo, hi)) in iy_range.iter().enumerate() {
                for iy in lo..hi {
                    hit(iy * sh + ky * dh - geom.pad[0], 1, 1);
                }
            }
        }) && covers_once(geom.ow, |hit| {
            for op in &row_ops {
                match *op {
                    RowOp::Add { ox, n, .. } => hit(ox, n, 1),
                    RowOp::Strided { ox, n, .. } => hit(ox, n, sw),
                    RowOp::Pair { t, n, .. } => hit(2 * t, 2 * n, 1),
                    RowOp::Zero { .. } | RowOp::Accumulate { .. } => {}
                }
            }
        });
        // An exact cover also needs whole-row chunks and passes that never split a (k, ky)
        // run of taps (one pass, or passes of whole runs: the row ops need every kx).
        let exact_with = |b: &Blocking| {
            covers && b.row_chunks && (b.pass_rows >= b.rows || b.pass_rows.is_multiple_of(kw))
        };
        let blocking = |kb: usize| Blocking::new(geom, kb, taps, mr, nr, cols_bytes, max_pass_rows);
        let whole = blocking(kg);
        let (b, tasks) = if exact_with(&whole) {
            // Pixel tasks: every output channel of the group, cut by runs of input rows.
            let (b, rows) = whole.pixel_rows(geom, nr, MIN_TASKS.div_ceil(geom.n * groups));
            let per_group = geom.h.div_ceil(rows);
            (b, Tasks::Pixels { rows, per_group })
        } else {
            // Output-channel blocks: enough tasks for every core on small batches.
            let want_blocks = MIN_TASKS.div_ceil(geom.n * groups).clamp(1, kg);
            let mut kb = kg.div_ceil(want_blocks);
            // Blocks whose rows fill whole MR panels, if at most doubling the block gets
            // there (fewer tasks, no padded rows): a 3×3 layer with 4 channels a block
            // multiplies 36 rows in 40, with 8 it fills 72 exactly (the 3×3/2 64 → 32 suite
            // row, one thread: 1.67 → 1.51 ms, medians of three alternating runs).
            if (kb * taps) % mr != 0 {
                if let Some(b) = (kb + 1..=kg.min(2 * kb)).find(|b| (b * taps) % mr == 0) {
                    kb = b;
                }
            }
            let nblk = kg.div_ceil(kb);
            let ohw = geom.oh * geom.ow;
            let mut task_off = vec![0usize];
            for _ in 0..geom.n * groups {
                for blk in 0..nblk {
                    let kn = kb.min(kg - blk * kb);
                    task_off.push(task_off[task_off.len() - 1] + kn * ohw);
                }
            }
            (blocking(kb), Tasks::Channels { task_off })
        };
        let exact = exact_with(&b);
        // Pixel tasks write through a shared handle, disjoint only for an exact cover.
        assert!(exact || matches!(tasks, Tasks::Channels { .. }));
        let (kb, npanels) = (b.kb, b.rows.div_ceil(mr));
        let nblk = kg.div_ceil(kb);
        let kc = (B_PANEL_BYTES / (4 * nr)).max(32);
        // Pack Wᵀ: row m = (k, ky, kx) of the block, depth c.
        let wt = weight.as_standard_layout();
        let wt = wt.as_slice().expect("standard layout is contiguous");
        let mut a = vec![0f32; groups * nblk * npanels * cg * mr];
        for grp in 0..groups {
            for blk in 0..nblk {
                let k0 = blk * kb;
                let kn = kb.min(kg - k0);
                let base = (grp * nblk + blk) * npanels * cg * mr;
                for m in 0..kn * taps {
                    let (kl, tap) = (m / taps, m % taps);
                    let (p, r) = (m / mr, m % mr);
                    for c in 0..cg {
                        a[base + (p * cg + c) * mr + r] =
                            wt[((grp * cg + c) * kg + k0 + kl) * taps + tap];
                    }
                }
            }
        }
        Ok(Col2im {
            ukr,
            geom: *geom,
            groups,
            cg,
            kg,
            kh,
            kw,
            kb,
            nblk,
            npanels,
            pass_rows: b.pass_rows,
            chunk: b.chunk,
            row_chunks: b.row_chunks,
            ldc: b.ldc,
            pack_b: b.pass_rows / mr >= PACK_MIN_PANELS,
            row_ops,
            temp_len,
            iy_range,
            exact,
            kc,
            a,
            bias: match bias {
                Some(b) => b.to_vec(),
                None => vec![0.0; geom.k],
            },
            tasks,
            ix_range,
            offs_planes: RowOffsets::new((0..cg).map(|c| c * hw).collect()),
            offs_packed: RowOffsets::new((0..kc).map(|k| k * nr).collect()),
        })
    }

    /// The microkernel the weights were packed for.
    pub fn microkernel(&self) -> Microkernel {
        self.ukr
    }

    /// Floats of per-thread workspace: the column buffer (one pass × one chunk), a tail B
    /// panel and the scatter's temporary phase rows (stride 2 only, one output row).
    fn workspace_len(&self) -> usize {
        self.pass_rows * self.ldc + self.kc * self.ukr.nr + self.temp_len
    }

    /// Bytes of per-thread workspace a task needs at most: ≤ 512 KiB of columns, one B panel
    /// and (stride 2) one output row.
    pub fn workspace_bytes(&self) -> usize {
        4 * self.workspace_len()
    }

    /// Bytes of the column buffer alone (bounded by `COLS_BYTES`, 512 KiB, unless a single
    /// pass of one microkernel panel is wider).
    pub fn cols_bytes(&self) -> usize {
        4 * self.pass_rows * self.ldc
    }

    /// Bytes of packed weights.
    pub fn packed_weight_bytes(&self) -> usize {
        4 * self.a.len()
    }

    /// Multiply-accumulates of the GEMMs (every input pixel times every tap, none with an
    /// inserted zero; products landing in the cropped border included).
    pub fn macs(&self) -> u64 {
        let g = &self.geom;
        (g.n * g.h * g.w) as u64 * (g.k * self.kh * self.kw) as u64 * self.cg as u64
    }

    /// `y = convᵀ(x)` on contiguous NCHW buffers of the planned shapes.
    ///
    /// # Panics
    /// If a buffer does not have the planned size (the plan checks shapes first).
    pub fn run(&self, x: &[f32], y: &mut [f32]) {
        let g = &self.geom;
        assert_eq!(x.len(), g.n * g.c * g.h * g.w, "input buffer size");
        assert_eq!(y.len(), g.n * g.k * g.oh * g.ow, "output buffer size");
        let wlen = self.workspace_len();
        let (ohw, hw) = (g.oh * g.ow, g.h * g.w);
        match &self.tasks {
            // Tasks own contiguous, disjoint slices of `y`, at `task_off`; one worker runs
            // them right here in order (no hand-off), several claim them (`tasks`).
            Tasks::Channels { task_off } => {
                for_each_claimed_span(y, Spans::At(task_off), |claims| {
                    with_workspace(wlen, |ws| {
                        claims.for_each(|(t, yt)| {
                            let blk = t % self.nblk;
                            let (n, grp) =
                                (t / self.nblk / self.groups, t / self.nblk % self.groups);
                            let kn = yt.len() / ohw.max(1);
                            let bias = &self.bias[grp * self.kg + blk * self.kb..][..kn];
                            if !self.exact {
                                for (plane, &b) in yt.chunks_exact_mut(ohw).zip(bias) {
                                    plane.fill(b);
                                }
                            }
                            let work = Work {
                                n,
                                grp,
                                blk,
                                kn,
                                q: (0, hw),
                            };
                            self.task(work, x, Dest::Planes(yt), ws)
                        })
                    })
                });
            }
            // Tasks write the output rows of their input rows, through a shared handle.
            &Tasks::Pixels { rows, per_group } => {
                let ntasks = g.n * self.groups * per_group;
                for_each_task(y, ntasks, wlen, |t, out, ws| {
                    let (ng, i) = (t / per_group, t % per_group);
                    let (n, grp) = (ng / self.groups, ng % self.groups);
                    let q = (i * rows * g.w, ((i + 1) * rows).min(g.h) * g.w);
                    let work = Work {
                        n,
                        grp,
                        blk: 0,
                        kn: self.kg,
                        q,
                    };
                    let base = (n * g.k + grp * self.kg) * ohw;
                    self.task(work, x, Dest::Shared { out, base }, ws)
                });
            }
        }
    }

    /// One task's work: channels `blk·kb ..` (`kn` of them) of group `grp` of image `n`, from
    /// the input pixels `q.0 .. q.1` (whole rows for pixel tasks), written through `dest`
    /// (whose planes the caller filled with the bias unless the cover is exact).
    fn task(&self, work: Work, x: &[f32], mut dest: Dest<'_>, ws: &mut [f32]) {
        let g = &self.geom;
        let (mr, nr) = (self.ukr.mr, self.ukr.nr);
        let Work { n, grp, blk, kn, q } = work;
        let ch0 = grp * self.kg + blk * self.kb;
        let bias = &self.bias[ch0..ch0 + kn];
        let taps = self.kh * self.kw;
        let rows = kn * taps;
        let hw = g.h * g.w;
        let cg = self.cg;
        let xg = &x[(n * g.c + grp * cg) * hw..][..cg * hw];
        let apan = cg * mr;
        let ablk = &self.a[(grp * self.nblk + blk) * self.npanels * apan..][..self.npanels * apan];
        let ldc = self.ldc;
        let (cols, rest) = ws.split_at_mut(self.pass_rows * ldc);
        let (tailbuf, temp) = rest.split_at_mut(self.kc * nr);
        let avx512 = self.ukr.isa == Isa::Avx512;
        let mut q0 = q.0;
        while q0 < q.1 {
            let q1 = (q0 + self.chunk).min(q.1);
            let npan = (q1 - q0).div_ceil(nr);
            let mut r0 = 0;
            while r0 < rows {
                let r1 = (r0 + self.pass_rows).min(rows);
                let (p0, p1) = (r0 / mr, r1.div_ceil(mr));
                let mut k0 = 0;
                while k0 < cg {
                    let k1 = (k0 + self.kc).min(cg);
                    let kc = k1 - k0;
                    for p in 0..npan {
                        let q = q0 + p * nr;
                        // The last panel runs on the kernels that cover it.
                        let pcols = (q1 - q).min(nr);
                        let in_place = !self.pack_b && q + self.ukr.covered(pcols) <= hw;
                        let (b, offs, kb0): (&[f32], &RowOffsets, usize) = if in_place {
                            (&xg[q..], &self.offs_planes, k0)
                        } else {
                            // A copied panel (a tail past the end of the planes zero-padded).
                            let w = (hw - q).min(nr);
                            for c in k0..k1 {
                                let d = &mut tailbuf[(c - k0) * nr..(c - k0 + 1) * nr];
                                copy_row(&mut d[..w], &xg[c * hw + q..][..w], 0.0, false, avx512);
                                d[w..].fill(0.0);
                            }
                            (&tailbuf[..], &self.offs_packed, 0)
                        };
                        for (j, ukr) in self.ukr.parts(pcols) {
                            for i in p0..p1 {
                                let a = &ablk[i * apan + k0 * mr..i * apan + k1 * mr];
                                let c = &mut cols[(i - p0) * mr * ldc + p * nr + j..];
                                ukr.run(kc, a, &b[j..], offs, kb0, c, ldc, k0 > 0);
                            }
                        }
                    }
                    k0 = k1;
                }
                let pass = Pass {
                    cols,
                    ldc,
                    r0,
                    r1,
                    q0,
                    q1,
                    store: self.exact.then_some(bias),
                };
                self.scatter(pass, &mut dest, temp);
                r0 = r1;
            }
            q0 = q1;
        }
    }

    /// col2im for the column rows `r0..r1` of one pass (row `m` at `cols[(m − r0)·ldc..]`,
    /// pixels `q0..q1`), added into the task's planes `y`.
    ///
    /// Rows come in runs of one `(k, ky)` and consecutive `kx`, which for a given input row
    /// all land in the same output row. At unit stride each tap is one contiguous add. At
    /// stride 2 tap `kx` writes the even or the odd output columns (phase `(kx·d − p) mod 2`),
    /// so taps are added in pairs, one of each phase, in one interleaving pass
    /// (`row[2t] += e[t], row[2t+1] += o[t]`, which compiles to permutes) instead of two
    /// strided ones. With whole-row chunks the plan-time [`RowOp`]s also sum the surplus taps
    /// of the phase with more (a 3×3: two odd taps, one even) into a temporary phase row
    /// first, so that every output row is still one interleaving pass; otherwise (rows cut by
    /// chunks, runs cut by passes) a tap without a partner, like every tap at strides above
    /// 2, is added with a stride. Measured share of the scatter in a one-thread run (perf):
    /// DCGAN 4×4/2 30 % (one strided pass per tap, SSE2) → 9 % (pairs, AVX-512); 3×3/2 op 1
    /// 26 % (pairs + a strided tap) → 14 % (temporary row).
    ///
    /// Plain loops that the compiler vectorises, compiled for the plan's ISA level (the
    /// crate's baseline is SSE2).
    fn scatter(&self, pass: Pass<'_>, y: &mut Dest<'_>, temp: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        match self.ukr.isa {
            // SAFETY: the plan's ISA level was checked available on this CPU when its
            // microkernel was chosen (`Microkernel::for_isa`); the body is safe code.
            Isa::Avx512 => return unsafe { self.scatter_avx512(pass, y, temp) },
            // SAFETY: as above, for AVX2 + FMA.
            Isa::Avx2 => return unsafe { self.scatter_avx2(pass, y, temp) },
            Isa::Scalar => {}
        }
        self.scatter_body(pass, y, temp)
    }

    /// [`Self::scatter_body`] compiled with AVX-512F.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn scatter_avx512(&self, pass: Pass<'_>, y: &mut Dest<'_>, temp: &mut [f32]) {
        self.scatter_body(pass, y, temp)
    }

    /// [`Self::scatter_body`] compiled with AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scatter_avx2(&self, pass: Pass<'_>, y: &mut Dest<'_>, temp: &mut [f32]) {
        self.scatter_body(pass, y, temp)
    }

    /// The scatter itself (see [`Self::scatter`]), inlined into each ISA's version.
    #[inline(always)]
    fn scatter_body(&self, pass: Pass<'_>, y: &mut Dest<'_>, temp: &mut [f32]) {
        let g = &self.geom;
        let [sh, sw] = g.spec.stride();
        let [dh, dw] = g.spec.dilation();
        let (kw, taps) = (self.kw, self.kh * self.kw);
        let (pt, pl) = (g.pad[0] as isize, g.pad[2] as isize);
        let (ow, ohw) = (g.ow, g.oh * g.ow);
        let Pass {
            cols,
            ldc,
            r0,
            r1,
            q0,
            q1,
            store,
        } = pass;
        let len = q1 - q0;
        // Output column of input column ix for tap kx: ix·s + off(kx); at stride 2, output
        // column 2t + phase with t = ix + shift.
        let off = |kx: usize| (kx * dw) as isize - pl;
        let phase = |kx: usize| off(kx).rem_euclid(2) as usize;
        let shift = |kx: usize| off(kx).div_euclid(2);
        let mut m = r0;
        while m < r1 {
            // The run of rows with the same (k, ky): taps kx0 .. kx0 + nk.
            let run_end = r1.min((m / kw + 1) * kw);
            let (kx0, nk) = (m % kw, run_end - m);
            let (kl, ky) = (m / taps, (m % taps) / kw);
            if self.row_chunks && nk == kw {
                // Whole rows, every tap: the plan-time ops, row by row.
                let iy0 = q0 / g.w;
                let (lo, hi) = self.iy_range[ky];
                for iy in lo.max(iy0)..hi.min(iy0 + len / g.w) {
                    let oy = ((iy * sh + ky * dh) as isize - pt) as usize;
                    let row = y.row(kl, oy, ow, ohw);
                    let base = (m - r0) * ldc + (iy - iy0) * g.w;
                    // Exact cover: this row op is the element's only write.
                    let bias = store.map(|b| b[kl]);
                    for op in &self.row_ops {
                        let wt = temp.len() / 2;
                        let src = |s: Src, n: usize| -> &[f32] {
                            match s {
                                Src::Col { kx, ix } => &cols[base + kx * ldc + ix..][..n],
                                Src::Temp { ph, t } => &temp[ph * wt + t..][..n],
                            }
                        };
                        match *op {
                            RowOp::Add { src: s, ox, n } => {
                                let dst = row[ox..ox + n].iter_mut();
                                match bias {
                                    Some(b) => dst.zip(src(s, n)).for_each(|(d, v)| *d = *v + b),
                                    None => dst.zip(src(s, n)).for_each(|(d, v)| *d += *v),
                                }
                            }
                            RowOp::Strided { src: s, ox, n } => {
                                let dst = row[ox..].iter_mut().step_by(sw);
                                match bias {
                                    Some(b) => dst.zip(src(s, n)).for_each(|(d, v)| *d = *v + b),
                                    None => dst.zip(src(s, n)).for_each(|(d, v)| *d += *v),
                                }
                            }
                            RowOp::Pair { even, odd, t, n } => {
                                let (e, o) = (src(even, n), src(odd, n));
                                let pairs =
                                    row[2 * t..2 * (t + n)].chunks_exact_mut(2).zip(e).zip(o);
                                match bias {
                                    Some(c) => pairs.for_each(|((d, &a), &b)| {
                                        d[0] = a + c;
                                        d[1] = b + c;
                                    }),
                                    None => pairs.for_each(|((d, &a), &b)| {
                                        d[0] += a;
                                        d[1] += b;
                                    }),
                                }
                            }
                            RowOp::Zero { ph, t, n } => temp[ph * wt + t..][..n].fill(0.0),
                            RowOp::Accumulate { ph, t, kx, ix, n } => {
                                let c = &cols[base + kx * ldc + ix..][..n];
                                for (d, v) in temp[ph * wt + t..][..n].iter_mut().zip(c) {
                                    *d += *v;
                                }
                            }
                        }
                    }
                }
                m = run_end;
                continue;
            }
            // (An exact cover always takes the row ops above.)
            debug_assert!(store.is_none(), "exact cover on the segment path");
            // Column row of tap kx, indexed by the chunk position.
            let crow = |kx: usize| &cols[(m - r0 + kx - kx0) * ldc..][..len];
            let (mut iy, mut ix0, mut j) = (q0 / g.w, q0 % g.w, 0);
            while j < len {
                // One input row's segment of the chunk: positions j .. j + (ix1 − ix0).
                let ix1 = g.w.min(ix0 + (len - j));
                let oy = (iy * sh + ky * dh) as isize - pt;
                if oy >= 0 && (oy as usize) < g.oh {
                    let row = y.row(kl, oy as usize, ow, ohw);
                    // Tap kx's valid input columns within the segment, and its values there.
                    let span = |kx: usize| {
                        let (lo, hi) = self.ix_range[kx];
                        let a = ix0.max(lo).min(ix1);
                        let b = ix1.min(hi).max(a);
                        (a, b, &crow(kx)[j + a - ix0..j + b - ix0])
                    };
                    let strided = |row: &mut [f32], kx: usize, a: usize, src: &[f32]| {
                        if !src.is_empty() {
                            let ox0 = (a as isize * sw as isize + off(kx)) as usize;
                            for (d, v) in row[ox0..].iter_mut().step_by(sw).zip(src) {
                                *d += *v;
                            }
                        }
                    };
                    if sw != 2 {
                        for kx in kx0..kx0 + nk {
                            let (a, _, src) = span(kx);
                            strided(row, kx, a, src);
                        }
                    } else {
                        // Pair the next even-phase tap with the next odd-phase one.
                        let next =
                            |from: usize, ph: usize| (from..kx0 + nk).find(|&kx| phase(kx) == ph);
                        let (mut e, mut o) = (next(kx0, 0), next(kx0, 1));
                        while e.is_some() || o.is_some() {
                            match (e, o) {
                                (Some(ke), Some(ko)) => {
                                    let (ae, be, se) = span(ke);
                                    let (ao, bo, so) = span(ko);
                                    // t ranges of both taps, and their overlap [t0, t1).
                                    let te = (ae as isize + shift(ke), be as isize + shift(ke));
                                    let to = (ao as isize + shift(ko), bo as isize + shift(ko));
                                    let (t0, t1) = (te.0.max(to.0), te.1.min(to.1));
                                    if t0 < t1 {
                                        let (t0, t1) = (t0 as usize, t1 as usize);
                                        let ie = t0 - te.0 as usize;
                                        let io = t0 - to.0 as usize;
                                        let n = t1 - t0;
                                        for ((d, &a), &b) in row[2 * t0..2 * t1]
                                            .chunks_exact_mut(2)
                                            .zip(&se[ie..ie + n])
                                            .zip(&so[io..io + n])
                                        {
                                            d[0] += a;
                                            d[1] += b;
                                        }
                                        // What lies outside the overlap, tap by tap.
                                        strided(row, ke, ae, &se[..ie]);
                                        strided(row, ke, ae + ie + n, &se[ie + n..]);
                                        strided(row, ko, ao, &so[..io]);
                                        strided(row, ko, ao + io + n, &so[io + n..]);
                                    } else {
                                        strided(row, ke, ae, se);
                                        strided(row, ko, ao, so);
                                    }
                                    e = next(ke + 1, 0);
                                    o = next(ko + 1, 1);
                                }
                                (Some(ke), None) => {
                                    let (a, _, src) = span(ke);
                                    strided(row, ke, a, src);
                                    e = next(ke + 1, 0);
                                }
                                (None, Some(ko)) => {
                                    let (a, _, src) = span(ko);
                                    strided(row, ko, a, src);
                                    o = next(ko + 1, 1);
                                }
                                (None, None) => unreachable!("loop condition"),
                            }
                        }
                    }
                }
                j += ix1 - ix0;
                ix0 = 0;
                iy += 1;
            }
            m = run_end;
        }
    }
}

/// A task's work (see [`Col2im::task`]).
#[derive(Debug, Clone, Copy)]
struct Work {
    n: usize,
    grp: usize,
    blk: usize,
    kn: usize,
    /// Input pixels `[q.0, q.1)` of each plane.
    q: (usize, usize),
}

/// Where a task's scatter writes.
enum Dest<'a> {
    /// The task's own channel planes (channel tasks).
    Planes(&'a mut [f32]),
    /// The whole output, channel plane `kl` of the task at `base + kl·OH·OW` (pixel tasks,
    /// which write only the output rows of their own input rows).
    Shared { out: SharedOut, base: usize },
}

impl Dest<'_> {
    /// Output row `oy` (of `ow` floats) of the task's channel plane `kl` (planes `ohw` apart).
    #[inline]
    fn row(&mut self, kl: usize, oy: usize, ow: usize, ohw: usize) -> &mut [f32] {
        match self {
            Dest::Planes(y) => &mut y[kl * ohw + oy * ow..][..ow],
            // SAFETY: pixel tasks run exact covers only, where each output row is reached
            // by exactly one (ky, iy) (checked at plan time by `covers_once`), and a task
            // scatters only its own input rows `iy`, disjoint from every other task's; so no
            // two tasks write this row, and nothing reads the output while tasks run.
            Dest::Shared { out, base } => unsafe { out.row_mut(*base + kl * ohw + oy * ow, ow) },
        }
    }
}

/// The valid input indices `[lo, hi)` along one axis for a tap at offset `tap_off = k·d`:
/// those whose output `i·s + tap_off − pad` lies in `0..out` (empty: `(0, 0)`).
fn axis_range(input: usize, out: usize, s: usize, tap_off: usize, pad: usize) -> (usize, usize) {
    let o = |i: usize| (i * s + tap_off) as isize - pad as isize;
    let lo = (0..input).find(|&i| o(i) >= 0);
    let hi = (0..input).rev().find(|&i| o(i) < out as isize);
    match (lo, hi) {
        (Some(lo), Some(hi)) if lo <= hi => (lo, hi + 1),
        _ => (0, 0),
    }
}

/// Where a [`RowOp`] reads: column row `kx` from input column `ix` on, or phase row `ph` of
/// the temporary rows from pair index `t` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Col { kx: usize, ix: usize },
    Temp { ph: usize, t: usize },
}

impl Src {
    /// The same source `d` values further on.
    fn skip(self, d: usize) -> Src {
        match self {
            Src::Col { kx, ix } => Src::Col { kx, ix: ix + d },
            Src::Temp { ph, t } => Src::Temp { ph, t: t + d },
        }
    }
}

/// One step of the scatter of a whole input row, for all taps `kx` of one `(k, ky)` run, into
/// the output row `row` (stride `s`), through two temporary phase rows `temp` (stride 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowOp {
    /// `row[ox + i] += src[i]` for `i < n` (unit stride).
    Add { src: Src, ox: usize, n: usize },
    /// `row[ox + i·s] += src[i]` for `i < n`.
    Strided { src: Src, ox: usize, n: usize },
    /// Stride 2: `row[2(t + i)] += even[i]`, `row[2(t + i) + 1] += odd[i]` for `i < n`.
    Pair {
        even: Src,
        odd: Src,
        t: usize,
        n: usize,
    },
    /// `temp[ph][t + i] = 0` for `i < n`.
    Zero { ph: usize, t: usize, n: usize },
    /// `temp[ph][t + i] += column row kx at ix + i`, for `i < n`.
    Accumulate {
        ph: usize,
        t: usize,
        kx: usize,
        ix: usize,
        n: usize,
    },
}

/// The scatter of one whole input row for every tap `kx` (see [`Col2im::scatter`]), and the
/// floats of temporary rows it needs. At stride ≠ 2, one add per tap (strided above 1). At
/// stride 2 each output column phase (even / odd) gets one source: its only tap's column row,
/// or the sum of its taps in a temporary phase row (contiguous adds); the two are then added
/// in one interleaving pass over the pairs both reach, the ends strided.
fn row_ops(g: &Geometry) -> (Vec<RowOp>, usize) {
    let [_, kw] = g.spec.kernel();
    let sw = g.spec.stride()[1];
    let dw = g.spec.dilation()[1];
    let off = |kx: usize| (kx * dw) as isize - g.pad[2] as isize;
    let span = |kx: usize| axis_range(g.w, g.ow, sw, kx * dw, g.pad[2]);
    let mut ops = Vec::new();
    if sw != 2 {
        for kx in 0..kw {
            let (a, b) = span(kx);
            if a < b {
                let (src, n) = (Src::Col { kx, ix: a }, b - a);
                let ox = (a as isize * sw as isize + off(kx)) as usize;
                ops.push(if sw == 1 {
                    RowOp::Add { src, ox, n }
                } else {
                    RowOp::Strided { src, ox, n }
                });
            }
        }
        return (ops, 0);
    }
    // Stride 2: tap kx writes output column 2t + phase, t = ix + shift.
    let phase = |kx: usize| off(kx).rem_euclid(2) as usize;
    let shift = |kx: usize| off(kx).div_euclid(2);
    let t_of = |kx: usize, ix: usize| (ix as isize + shift(kx)) as usize;
    // The taps with columns inside the output, as (kx, pair range [t0, t1)) per phase.
    let taps_of = |ph: usize| -> Vec<(usize, usize, usize)> {
        (0..kw)
            .filter(|&kx| phase(kx) == ph)
            .filter_map(|kx| {
                let (a, b) = span(kx);
                (a < b).then(|| (kx, t_of(kx, a), t_of(kx, b)))
            })
            .collect()
    };
    let (evens, odds) = (taps_of(0), taps_of(1));
    let (major, minor, major_ph) = if evens.len() >= odds.len() {
        (evens, odds, 0)
    } else {
        (odds, evens, 1)
    };
    let col = |(kx, t0, t1): (usize, usize, usize)| {
        let ix = (t0 as isize - shift(kx)) as usize;
        (Src::Col { kx, ix }, t0, t1)
    };
    // Sources (src, t0, t1) added together: an interleaving pass over the pairs both
    // reach, the ends strided.
    let add =
        |ops: &mut Vec<RowOp>, e: Option<(Src, usize, usize)>, o: Option<(Src, usize, usize)>| {
            let strided = |ops: &mut Vec<RowOp>, ph: usize, (src, t0, t1): (Src, usize, usize)| {
                if t0 < t1 {
                    ops.push(RowOp::Strided {
                        src,
                        ox: 2 * t0 + ph,
                        n: t1 - t0,
                    });
                }
            };
            match (e, o) {
                (Some(e), Some(o)) if e.1.max(o.1) < e.2.min(o.2) => {
                    let (t0, t1) = (e.1.max(o.1), e.2.min(o.2));
                    ops.push(RowOp::Pair {
                        even: e.0.skip(t0 - e.1),
                        odd: o.0.skip(t0 - o.1),
                        t: t0,
                        n: t1 - t0,
                    });
                    for (ph, (src, a, b)) in [(0, e), (1, o)] {
                        strided(ops, ph, (src, a, t0));
                        strided(ops, ph, (src.skip(t1 - a), t1, b));
                    }
                }
                (e, o) => {
                    if let Some(e) = e {
                        strided(ops, 0, e);
                    }
                    if let Some(o) = o {
                        strided(ops, 1, o);
                    }
                }
            }
        };
    let as_even_odd = |maj: Option<(Src, usize, usize)>, min: Option<(Src, usize, usize)>| {
        if major_ph == 0 {
            (maj, min)
        } else {
            (min, maj)
        }
    };
    let mut temp = 0;
    // Pairs of one major- and one minor-phase tap, all but the last minor one.
    let direct = minor.len().saturating_sub(1);
    for i in 0..direct {
        let (e, o) = as_even_odd(Some(col(major[i])), Some(col(minor[i])));
        add(&mut ops, e, o);
    }
    // The remaining major taps, summed in a temporary phase row when there are several,
    // added with the last minor tap.
    let rest = &major[direct..];
    let source = match rest {
        [] => None,
        [one] => Some(col(*one)),
        _ => {
            let ph = major_ph;
            let t0 = rest.iter().map(|r| r.1).min().expect("several taps");
            let t1 = rest.iter().map(|r| r.2).max().expect("several taps");
            ops.push(RowOp::Zero {
                ph,
                t: t0,
                n: t1 - t0,
            });
            for &(kx, a, b) in rest {
                let Src::Col { ix, .. } = col((kx, a, b)).0 else {
                    unreachable!("a column source")
                };
                ops.push(RowOp::Accumulate {
                    ph,
                    t: a,
                    kx,
                    ix,
                    n: b - a,
                });
            }
            temp = 2 * g.ow.div_ceil(2);
            Some((Src::Temp { ph, t: t0 }, t0, t1))
        }
    };
    let (e, o) = as_even_odd(source, minor.last().map(|&m| col(m)));
    add(&mut ops, e, o);
    (ops, temp)
}

/// One GEMM pass's column rows, handed to the scatter: rows `r0..r1` of the task's block
/// (row `m` at `cols[(m − r0)·ldc..]`) over the chunk's pixels `q0..q1`.
#[derive(Clone, Copy)]
struct Pass<'a> {
    cols: &'a [f32],
    ldc: usize,
    r0: usize,
    r1: usize,
    q0: usize,
    q1: usize,
    /// With an exact cover, the planes' biases: row ops store `bias + value`, not add.
    store: Option<&'a [f32]>,
}

/// Whether `mark` hits each of `0..len` exactly once; `mark` calls `hit(start, n, step)`
/// for the positions `start + i·step`, `i < n`.
fn covers_once(len: usize, mark: impl FnOnce(&mut dyn FnMut(usize, usize, usize))) -> bool {
    let mut count = vec![0u32; len];
    let mut inside = true;
    mark(&mut |start, n, step| {
        for i in 0..n {
            match count.get_mut(start + i * step) {
                Some(c) => *c += 1,
                None => inside = false,
            }
        }
    });
    inside && count.iter().all(|&c| c == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::spec::ConvSpec;
    use crate::testutil::pseudo;
    use ndarray::{Array1, Array4};
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
        // f32 accumulation of Cg·kh·kw products per output cell, values in [-1, 1).
        let depth = (g.c / v.groups() * v.kernel()[0] * v.kernel()[1]) as f32;
        for (u, (cols, pass)) in Microkernel::available().into_iter().flat_map(|u| {
            // The plan's limits; one microkernel panel of rows per pass with two input rows
            // per chunk (whole-row chunks, several of them); and the smallest (one panel of
            // pixels per chunk, rows cut anywhere): every chunk, pass and tail boundary.
            let two_rows = 4 * u.mr * (2 * g.w + u.nr);
            [(COLS_BYTES, MAX_PASS_ROWS), (two_rows, 1), (0, 1)].map(|l| (u, l))
        }) {
            let plan = Col2im::with_limits(&g, w.view(), bias, u, cols, pass).unwrap();
            if cols == 0 && g.w > 2 * u.nr {
                prop_assert!(!plan.row_chunks);
            }
            let mut y = vec![f32::NAN; g.output_shape().iter().product()];
            plan.run(x.as_slice().unwrap(), &mut y);
            for (a, e) in y.iter().zip(want.iter()) {
                prop_assert!(
                    (a - e).abs() <= 1e-5 * (depth + 1.0),
                    "{u:?} limits {cols}/{pass} {spec:?} {input:?}: {a} vs {e}"
                );
            }
            // Every product is a real tap (input pixel × weight), none an inserted zero.
            prop_assert_eq!(
                plan.macs(),
                (g.n * g.h * g.w * g.k * (g.c / v.groups()) * v.kernel()[0] * v.kernel()[1]) as u64
            );
        }
        Ok(())
    }

    #[test]
    fn matches_reference_on_decoder_layers() {
        // DCGAN 4×4 s2 p1, U-Net 2×2 s2, 3×3 s2 p1 op1, and deep enough for depth chunks.
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
        check(
            ConvSpec::conv_transpose2d(300, 20, 3).stride(2).padding(1),
            [1, 300, 6, 5],
        )
        .unwrap();
        // A long 1D row (18001 output columns).
        check(
            ConvSpec::conv_transpose1d(2, 3, 3).stride(2).padding(1),
            [1, 2, 1, 9001],
        )
        .unwrap();
    }

    /// Kernels that fit their stride (U-Net's 2×2/2, cropped or not, a 3×3/3 with strided row
    /// ops, a 1×2/(1,2)) write every output element once and store it; overlapping taps, or
    /// an output padding no tap reaches, add into bias-filled planes. Both match the
    /// reference (`check` starts from NaN outputs, so a missed element fails).
    #[test]
    fn exact_covers_store_and_others_add() {
        let u = Microkernel::for_isa(Isa::best()).unwrap();
        for (spec, input, exact) in [
            (
                ConvSpec::conv_transpose2d(6, 4, 2).stride(2),
                [2, 6, 4, 3],
                true,
            ),
            (
                ConvSpec::conv_transpose2d(5, 3, 3).stride(3),
                [1, 5, 4, 6],
                true,
            ),
            (
                ConvSpec::conv_transpose2d(3, 4, [1, 2]).stride([1, 2]),
                [1, 3, 5, 7],
                true,
            ),
            (
                ConvSpec::conv_transpose2d(6, 4, 4).stride(2).padding(1),
                [1, 6, 5, 7],
                false,
            ),
            // Cropping drops products but still reaches each element once.
            (
                ConvSpec::conv_transpose2d(6, 4, 2).stride(2).padding(1),
                [1, 6, 5, 7],
                true,
            ),
            (
                ConvSpec::conv_transpose2d(6, 4, 2)
                    .stride(2)
                    .output_padding(1),
                [1, 6, 5, 7],
                false,
            ),
        ] {
            let v = spec.build().unwrap();
            let g = v.geometry(input).unwrap();
            let w = Array4::<f32>::zeros(v.weight_shape());
            let plan = Col2im::new(&g, w.view(), None, u).unwrap();
            assert_eq!(plan.exact, exact, "{v}");
            let pixels = matches!(plan.tasks, Tasks::Pixels { .. });
            assert_eq!(pixels, exact, "{v}: exact covers run as pixel tasks");
            check(spec, input).unwrap();
        }
    }

    /// Pixel tasks cut the rows evenly where a divisor allows, each a pass over all of the
    /// group's column rows; with that many A panels every B panel is copied, and the result
    /// (several tasks, copied panels, a tail panel) still matches the reference. Few column
    /// rows keep B in place.
    #[test]
    fn pixel_tasks_and_copied_panels() {
        let u = Microkernel::for_isa(Isa::best()).unwrap();
        let plan_of = |spec: &ConvSpec, input: [usize; 4]| {
            let v = spec.build().unwrap();
            let g = v.geometry(input).unwrap();
            let w = Array4::<f32>::zeros(v.weight_shape());
            Col2im::new(&g, w.view(), None, u).unwrap()
        };
        let unet = ConvSpec::conv_transpose2d(16, 64, 2).stride(2).bias(true);
        let plan = plan_of(&unet, [1, 16, 64, 64]);
        let Tasks::Pixels { rows, per_group } = plan.tasks else {
            panic!("U-Net runs pixel tasks")
        };
        assert_eq!((rows, per_group), (4, 16));
        assert_eq!(plan.kb, 64);
        assert!(plan.pass_rows >= 256);
        assert_eq!(plan.pack_b, plan.pass_rows / u.mr >= PACK_MIN_PANELS);
        check(unet, [1, 16, 13, 11]).unwrap();
        // 80 channels × 4 taps: two passes (256 + 64 rows) per pixel task; grouped, batched
        // and cropped, with copied panels in every pass.
        let deep = ConvSpec::conv_transpose2d(24, 160, 2)
            .stride(2)
            .padding(1)
            .groups(2)
            .bias(true);
        let plan = plan_of(&deep, [2, 24, 9, 7]);
        assert!(matches!(plan.tasks, Tasks::Pixels { .. }) && plan.pack_b);
        assert!(plan.pass_rows < 80 * 4);
        check(deep, [2, 24, 9, 7]).unwrap();
        // 4 channels × 4 taps: two A panels, B read in place.
        let narrow = ConvSpec::conv_transpose2d(8, 4, 2).stride(2);
        let plan = plan_of(&narrow, [1, 8, 10, 10]);
        assert!(matches!(plan.tasks, Tasks::Pixels { .. }) && !plan.pack_b);
        // Channel tasks with enough rows a block copy their panels too (DCGAN 4×4/2, batch 8).
        let dcgan = ConvSpec::conv_transpose2d(32, 64, 4).stride(2).padding(1);
        let plan = plan_of(&dcgan, [8, 32, 6, 5]);
        assert!(matches!(plan.tasks, Tasks::Channels { .. }));
        assert!(plan.pack_b);
        check(dcgan, [8, 32, 6, 5]).unwrap();
    }

    #[test]
    fn rejects_direct_layers() {
        let v = ConvSpec::conv2d(2, 2, 3).build().unwrap();
        let g = v.geometry([1, 2, 5, 5]).unwrap();
        let w = Array4::<f32>::zeros(v.weight_shape());
        let u = Microkernel::for_isa(Isa::Scalar).unwrap();
        assert!(matches!(
            Col2im::new(&g, w.view(), None, u),
            Err(ConvError::AlgorithmUnavailable { .. })
        ));
    }

    /// The column buffer stays within its bound on layers whose whole column matrix is far
    /// larger (the chunking over pixels and passes over rows), and a layer cut into several
    /// chunks and passes still matches the reference.
    #[test]
    fn workspace_is_bounded() {
        let u = Microkernel::for_isa(Isa::best()).unwrap();
        for (spec, input) in [
            (
                ConvSpec::conv_transpose2d(64, 512, 4).stride(2).padding(1),
                [1, 64, 128, 128],
            ),
            (
                ConvSpec::conv_transpose2d(8, 4, 15).stride(3),
                [1, 8, 200, 100],
            ),
            (
                ConvSpec::conv_transpose1d(4, 4, 3).stride(2),
                [1, 4, 1, 100_000],
            ),
        ] {
            let v = spec.build().unwrap();
            let g = v.geometry(input).unwrap();
            let w = Array4::<f32>::zeros(v.weight_shape());
            let plan = Col2im::new(&g, w.view(), None, u).unwrap();
            let whole = 4 * g.k * v.kernel()[0] * v.kernel()[1] * g.h * g.w;
            assert!(whole > 8 * COLS_BYTES, "{v}: not a large layer");
            assert!(
                plan.cols_bytes() <= COLS_BYTES,
                "{v}: {} bytes",
                plan.cols_bytes()
            );
            let temp = 4 * (g.ow + 1);
            assert!(plan.workspace_bytes() <= COLS_BYTES + B_PANEL_BYTES + 4 * 32 * u.nr + temp);
        }
        // Several depth chunks (Cg = 200 > KC); chunks and passes come from the small limits
        // `check` also runs.
        check(
            ConvSpec::conv_transpose2d(200, 40, [5, 3])
                .stride([2, 3])
                .padding(1)
                .bias(true),
            [1, 200, 37, 29],
        )
        .unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn matches_reference_on_random_transposed_layers(
            (spec, input) in crate::testutil::arb_transposed(6, 19),
        ) {
            check(spec, input)?;
        }
    }
}
