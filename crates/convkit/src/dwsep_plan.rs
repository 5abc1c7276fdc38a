//! The depthwise separable block as one plan ([`SeparablePlan`]): the depthwise k×k pass and
//! the pointwise 1×1 pass either one after the other over the whole input (`Unfused`), or
//! fused band by band (`Fused`): each image is cut into bands of output rows whose
//! intermediate (m·C × rows × OW floats) fits in L2, and each band runs the depthwise pass
//! then the pointwise GEMM before the next band starts, so the intermediate never travels to
//! memory.
//!
//! Every distinct band shape (the first band with the top padding, the middle bands with
//! none, the last band with the bottom padding, and any other that the clipping produces) is
//! planned once, at plan time, with [`Plan`]s on the band's own input rows; bands read the
//! real neighbouring input rows, so zeros, reflect and replicate padding give the same values
//! as the whole-image layer (reflect and replicate only ever look at rows of the band that
//! touches the border). Circular padding wraps to the far border, which a band does not hold:
//! a circular block with vertical padding and more than one band per image runs unfused.
//!
//! Parallelism: the images, then each image's bands, are split in halves with `rayon::join`,
//! so each worker runs whole bands in its own L2; the sub-plans' own parallelism only fills
//! idle workers. Running the bands one after the other with only the sub-plans parallel was
//! much slower at 2 threads (144×56×56 → 24: 0.55–0.57 vs 0.36–0.37 ms per run).
//!
//! Results do not depend on the thread count: the band cut is fixed at plan time and every
//! output value is computed by the same sub-plan, whatever thread runs it.
//!
//! ```
//! use convkit::dwsep::DepthwiseSeparable;
//! use convkit::dwsep_plan::{FuseMode, SeparablePlan};
//! use ndarray::Array4;
//! let block = DepthwiseSeparable::builder(4, 8, 3).padding(1).build().unwrap();
//! let wd = Array4::<f32>::ones((4, 1, 3, 3));
//! let wp = Array4::<f32>::ones((8, 4, 1, 1));
//! let plan = SeparablePlan::new(&block, [1, 4, 6, 6], wd.view(), None, wp.view(), None,
//!     FuseMode::Fused).unwrap();
//! let x = Array4::<f32>::ones((1, 4, 6, 6));
//! let mut y = Array4::<f32>::zeros((1, 8, 6, 6));
//! plan.run(x.view(), y.view_mut()).unwrap();
//! assert_eq!(y[[0, 0, 3, 3]], 36.0); // 4 channels × 9 taps
//! assert_eq!(y[[0, 0, 0, 0]], 16.0); // corner: 4 × 4 in-bounds taps
//! ```

use crate::dwsep::DepthwiseSeparable;
use crate::error::Result;
use crate::geometry::Geometry;
use crate::kernels::depthwise::Depthwise;
use crate::kernels::Isa;
use crate::plan::{Algo, Plan};
use crate::spec::PaddingMode;
use ndarray::{ArrayView4, ArrayViewMut4, Axis};
use std::sync::Mutex;

/// How a [`SeparablePlan`] runs the two passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FuseMode {
    /// Band by band, the intermediate kept in L2 (see the module documentation). Circular
    /// padding with vertical padding and several bands per image runs [`FuseMode::Unfused`].
    Fused,
    /// The depthwise plan over the whole input into an intermediate buffer, then the
    /// pointwise plan.
    Unfused,
    /// Fused when one image's intermediate and output exceed [`AUTO_FUSE_BYTES`] (two bands
    /// or more) and K ≤ m·C, else unfused (see [`AUTO_FUSE_BYTES`] for the measurements).
    Auto,
}

/// Bytes of one band's intermediate and output together that the fused mode aims at (the
/// band height is the largest number of output rows whose (m·C + K) × rows × OW floats fit,
/// at least one row): well inside a 1 MiB L2, leaving room for the input rows and the
/// packed pointwise weights. Counting the output matters when K > m·C (MobileNetV2's
/// 32 → 64 block: its band output is twice its intermediate).
pub const BAND_BYTES: usize = 384 * 1024;

/// `Auto` fuses when one image's intermediate and output, `(m·C + K) × oh × ow` floats, are
/// larger than this, i.e. whenever the fused mode cuts an image into two bands or more (with
/// a single band per image the two modes do the same work), and the pointwise half does not
/// expand the channels (K ≤ m·C).
///
/// Measured with `examples/dwsep_bench.rs` (AMD EPYC, 1 MiB L2 per core, 32 MiB L3,
/// medians of 300–400 interleaved runs, on a machine shared with another build, so ±10 % from
/// run to run; ranges over three runs): fused vs unfused, ms.
///
/// | block                     | 1 thread            | 2 threads           |
/// |---------------------------|---------------------|---------------------|
/// | 144×56×56 → 24            | 0.52–0.66 / 0.64–0.79 | 0.32–0.37 / 0.31–0.40 |
/// | 96×112×112 s2 → 24        | 0.59–0.71 / 0.61–0.73 | 0.30–0.33 / 0.29–0.32 |
/// | 576×14×14 → 96 (441 KiB)  | 0.50–0.55 / 0.49–0.56 | 0.26–0.34 / 0.30–0.37 |
/// | 32×112×112 → 64 (K > m·C) | 1.20–1.51 / 1.26–1.55 | 0.65–0.78 / 0.59–0.77 |
///
/// Fusing pays even where the intermediate is well under 1 MiB (576 × 14 × 14: two bands, one
/// per thread), so the threshold is the band size, not a larger "does not fit in L2" bound.
/// The unfused intermediates (≤ 1.8 MiB) stay in L3 here, so the gain is L2 versus L3
/// traffic (up to ~20 % at 1 thread), not memory traffic; at 2 threads the gains shrink and
/// the stride-2 block is a few per cent slower fused. The expanding 32 → 64 block was slower
/// fused at 2 threads in every run: its band output, twice its intermediate, is computed
/// into a buffer and copied to the strided output rows (the 1×1 GEMM writes contiguous
/// outputs only), which costs what the fusion saves, hence K ≤ m·C.
pub const AUTO_FUSE_BYTES: usize = BAND_BYTES;

/// One band of output rows of an image.
#[derive(Debug, Clone, Copy)]
struct Band {
    /// First output row.
    r0: usize,
    /// Output rows.
    rows: usize,
    /// First input row read.
    lo: usize,
    /// Input rows read.
    rows_in: usize,
    /// Index of its depthwise plan.
    dw: usize,
    /// Index of its pointwise plan.
    pw: usize,
}

/// Per-thread buffers of the fused run (band intermediate, band output). The band's input
/// rows are read in place.
#[derive(Debug, Default)]
struct Scratch {
    mid: Vec<f32>,
    out: Vec<f32>,
}

#[derive(Debug)]
struct Fused {
    /// Output rows of every band but the last.
    band_rows: usize,
    bands: Vec<Band>,
    /// Depthwise kernel of each distinct band shape (reading the band's rows in place).
    dw: Vec<Depthwise>,
    /// Depthwise weights `(m·C, 1, kh, kw)` and bias, contiguous.
    dw_w: Vec<f32>,
    dw_b: Option<Vec<f32>>,
    pw: Vec<Plan>,
    /// Buffer sizes `[mid, out]` in floats (the largest band's).
    sizes: [usize; 2],
    pool: Mutex<Vec<Scratch>>,
}

/// The two whole-image plans and a pool of intermediate buffers (one per concurrent run).
#[derive(Debug)]
struct Unfused {
    dw: Plan,
    pw: Plan,
    mid: Mutex<Vec<Vec<f32>>>,
}

#[derive(Debug)]
enum Imp {
    Unfused(Box<Unfused>),
    Fused(Box<Fused>),
}

/// A planned depthwise separable block: both halves planned, weights packed, the band cut
/// (fused mode) fixed. `Send + Sync`; `run` reuses its buffers (allocating only the first
/// time a thread needs one, or when the caller's arrays are not in standard layout).
#[derive(Debug)]
pub struct SeparablePlan {
    input: [usize; 4],
    mid: [usize; 4],
    output: [usize; 4],
    mode: FuseMode,
    imp: Imp,
}

fn take<T: Default>(pool: &Mutex<Vec<T>>) -> T {
    pool.lock()
        .map(|mut p| p.pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn give<T>(pool: &Mutex<Vec<T>>, v: T) {
    if let Ok(mut p) = pool.lock() {
        p.push(v);
    }
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

impl SeparablePlan {
    /// Plans `block` on an input `[n, C, h, w]`. Weights in PyTorch's layout: `dw_weight`
    /// `(m·C, 1, kh, kw)`, `pw_weight` `(K, m·C, 1, 1)`; a bias must be given exactly to the
    /// halves built with one. Bad shapes, channels, biases or paddings are [`crate::ConvError`]s.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        block: &DepthwiseSeparable,
        input: [usize; 4],
        dw_weight: ArrayView4<f32>,
        dw_bias: Option<ndarray::ArrayView1<f32>>,
        pw_weight: ArrayView4<f32>,
        pw_bias: Option<ndarray::ArrayView1<f32>>,
        mode: FuseMode,
    ) -> Result<SeparablePlan> {
        Self::build(
            block, input, dw_weight, dw_bias, pw_weight, pw_bias, mode, None,
        )
    }

    /// [`SeparablePlan::new`] in [`FuseMode::Fused`] with `band_rows` output rows per band
    /// instead of the L2-sized default (for tests of band boundaries and for benchmarks);
    /// `band_rows` is clamped to `1..=oh`.
    #[allow(clippy::too_many_arguments)]
    pub fn with_band_rows(
        block: &DepthwiseSeparable,
        input: [usize; 4],
        dw_weight: ArrayView4<f32>,
        dw_bias: Option<ndarray::ArrayView1<f32>>,
        pw_weight: ArrayView4<f32>,
        pw_bias: Option<ndarray::ArrayView1<f32>>,
        band_rows: usize,
    ) -> Result<SeparablePlan> {
        Self::build(
            block,
            input,
            dw_weight,
            dw_bias,
            pw_weight,
            pw_bias,
            FuseMode::Fused,
            Some(band_rows),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        block: &DepthwiseSeparable,
        input: [usize; 4],
        dw_weight: ArrayView4<f32>,
        dw_bias: Option<ndarray::ArrayView1<f32>>,
        pw_weight: ArrayView4<f32>,
        pw_bias: Option<ndarray::ArrayView1<f32>>,
        mode: FuseMode,
        band_rows: Option<usize>,
    ) -> Result<SeparablePlan> {
        let dws = block.depthwise();
        let pws = block.pointwise();
        // The depthwise kernel even for C = 1 (which `Auto` sends elsewhere), so that the
        // whole-image pass and the bands run the same arithmetic.
        let dw = Plan::new(dws, input, dw_weight, dw_bias, Algo::Depthwise)?;
        let mid = dw.geometry().output_shape();
        let pw = Plan::new(pws, mid, pw_weight, pw_bias, Algo::Auto)?;
        let output = pw.geometry().output_shape();
        let image_bytes = 4 * (mid[1] + output[1]) * mid[2] * mid[3];
        let want = match mode {
            FuseMode::Auto if image_bytes > AUTO_FUSE_BYTES && output[1] <= mid[1] => {
                FuseMode::Fused
            }
            FuseMode::Auto => FuseMode::Unfused,
            m => m,
        };
        let unfused = |dw, pw| SeparablePlan {
            input,
            mid,
            output,
            mode: FuseMode::Unfused,
            imp: Imp::Unfused(Box::new(Unfused {
                dw,
                pw,
                mid: Mutex::new(Vec::new()),
            })),
        };
        if want == FuseMode::Unfused {
            return Ok(unfused(dw, pw));
        }
        let g = *dw.geometry();
        let [_, c, h, w] = input;
        let (oh, ow, mc) = (mid[2], mid[3], mid[1]);
        let band_rows = band_rows
            .unwrap_or(BAND_BYTES / (4 * (mc + output[1]) * ow).max(1))
            .clamp(1, oh);
        let pad = g.pad;
        let sh = dws.stride()[0];
        let ext = dws.dilated_kernel()[0];
        if dws.padding_mode() == PaddingMode::Circular
            && band_rows < oh
            && (pad[0] > 0 || pad[1] > 0)
        {
            return Ok(unfused(dw, pw));
        }
        let mut shapes: Vec<(usize, usize, usize, usize)> = Vec::new();
        let mut dw_plans = Vec::new();
        let mut pw_rows: Vec<usize> = Vec::new();
        let mut pw_plans = Vec::new();
        let mut bands = Vec::new();
        let mut sizes = [0usize; 2];
        let mut r0 = 0;
        while r0 < oh {
            let rows = band_rows.min(oh - r0);
            // Padded-input rows [a, b) that the band's outputs read, in whole-image coordinates
            // shifted by the top padding.
            let a = r0 * sh;
            let b = (r0 + rows - 1) * sh + ext;
            let lo = a.saturating_sub(pad[0]);
            let hi = (b.saturating_sub(pad[0])).min(h);
            let top = pad[0].saturating_sub(a);
            let bottom = b.saturating_sub(pad[0]).saturating_sub(h);
            let rows_in = hi - lo;
            let key = (rows_in, top, bottom, rows);
            let dwi = match shapes.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    let spec = dws
                        .spec()
                        .padding_sides([top, bottom, pad[2], pad[3]])
                        .build()?;
                    let kernel = Geometry::new(spec, [1, c, rows_in, w])
                        .and_then(|bg| Depthwise::new(&bg, Isa::best()).map(|d| (bg, d)));
                    let p = match kernel {
                        Ok((bg, d)) if bg.oh == rows && bg.ow == ow => d,
                        // A band too short for its reflect padding (or any other band shape the
                        // kernels refuse): the whole-image plans still work.
                        _ => return Ok(unfused(dw, pw)),
                    };
                    shapes.push(key);
                    dw_plans.push(p);
                    shapes.len() - 1
                }
            };
            let pwi = match pw_rows.iter().position(|&r| r == rows) {
                Some(i) => i,
                None => {
                    pw_plans.push(Plan::new(
                        pws,
                        [1, mc, rows, ow],
                        pw_weight,
                        pw_bias,
                        Algo::Auto,
                    )?);
                    pw_rows.push(rows);
                    pw_rows.len() - 1
                }
            };
            sizes[0] = sizes[0].max(mc * rows * ow);
            sizes[1] = sizes[1].max(output[1] * rows * ow);
            bands.push(Band {
                r0,
                rows,
                lo,
                rows_in,
                dw: dwi,
                pw: pwi,
            });
            r0 += rows;
        }
        Ok(SeparablePlan {
            input,
            mid,
            output,
            mode: FuseMode::Fused,
            imp: Imp::Fused(Box::new(Fused {
                band_rows,
                bands,
                dw: dw_plans,
                dw_w: dw_weight.iter().copied().collect(),
                dw_b: dw_bias.map(|b| b.to_vec()),
                pw: pw_plans,
                sizes,
                pool: Mutex::new(Vec::new()),
            })),
        })
    }

    /// The mode actually used: [`FuseMode::Fused`] or [`FuseMode::Unfused`] (never `Auto`).
    pub fn mode(&self) -> FuseMode {
        self.mode
    }

    /// Input shape `[n, C, h, w]`.
    pub fn input_shape(&self) -> [usize; 4] {
        self.input
    }

    /// Shape of the intermediate (depthwise output) `[n, m·C, oh, ow]`.
    pub fn intermediate_shape(&self) -> [usize; 4] {
        self.mid
    }

    /// Output shape `[n, K, oh, ow]`.
    pub fn output_shape(&self) -> [usize; 4] {
        self.output
    }

    /// Output rows per band (fused mode; the last band may be shorter), `None` when unfused.
    pub fn band_rows(&self) -> Option<usize> {
        match &self.imp {
            Imp::Fused(f) => Some(f.band_rows),
            Imp::Unfused(_) => None,
        }
    }

    /// Number of distinct band shapes planned (depthwise sub-plans), 0 when unfused.
    pub fn band_shapes(&self) -> usize {
        match &self.imp {
            Imp::Fused(f) => f.dw.len(),
            Imp::Unfused(_) => 0,
        }
    }

    /// Bytes of scratch one concurrent run (unfused) or one worker (fused) keeps: the whole
    /// intermediate, or one band's intermediate and output.
    pub fn scratch_bytes(&self) -> usize {
        match &self.imp {
            Imp::Unfused(_) => 4 * self.mid.iter().product::<usize>(),
            Imp::Fused(f) => 4 * f.sizes.iter().sum::<usize>(),
        }
    }

    /// Runs the block: `y = pointwise(depthwise(x))`. `x` must have the planned input shape
    /// and `y` the output shape. Uses rayon's global pool (or the pool it is called in).
    pub fn run(&self, x: ArrayView4<f32>, y: ArrayViewMut4<f32>) -> Result<()> {
        crate::plan::on_pool(|| self.run_on_pool(x, y))
    }

    /// [`Self::run`] on a worker of the pool (or the calling thread).
    fn run_on_pool(&self, x: ArrayView4<f32>, mut y: ArrayViewMut4<f32>) -> Result<()> {
        crate::plan::check_run_shapes(x.shape(), y.shape(), &self.input, &self.output)?;
        match &self.imp {
            Imp::Unfused(u) => {
                let (dw, pw, mid) = (&u.dw, &u.pw, &u.mid);
                let mut buf = take(mid);
                grow(&mut buf, self.mid.iter().product());
                let r = (|| {
                    let mut m = ArrayViewMut4::from_shape(self.mid, &mut buf[..])
                        .expect("buffer holds the intermediate");
                    dw.run(x, m.view_mut())?;
                    pw.run(m.view(), y)
                })();
                give(mid, buf);
                r
            }
            Imp::Fused(f) => {
                let xs = x.as_standard_layout();
                let n = self.input[0];
                self.images(f, xs.view(), y.view_mut(), 0, n)
            }
        }
    }

    /// Images `n0..n1` (`y` holds exactly those images), split in halves on rayon.
    fn images(
        &self,
        f: &Fused,
        x: ArrayView4<f32>,
        y: ArrayViewMut4<f32>,
        n0: usize,
        n1: usize,
    ) -> Result<()> {
        if n1 - n0 == 1 {
            let nb = f.bands.len();
            return self.bands(f, x, y, n0, 0, nb);
        }
        let mid = n0 + (n1 - n0) / 2;
        let (ya, yb) = y.split_at(Axis(0), mid - n0);
        let (ra, rb) = rayon::join(
            || self.images(f, x, ya, n0, mid),
            || self.images(f, x, yb, mid, n1),
        );
        ra.and(rb)
    }

    /// Bands `b0..b1` of image `n` (`y` is that image's rows of those bands, `[1, K, rows, ow]`).
    fn bands(
        &self,
        f: &Fused,
        x: ArrayView4<f32>,
        y: ArrayViewMut4<f32>,
        n: usize,
        b0: usize,
        b1: usize,
    ) -> Result<()> {
        if b1 - b0 == 1 {
            return self.band(f, x, y, n, &f.bands[b0]);
        }
        let bm = b0 + (b1 - b0) / 2;
        let split = f.bands[bm].r0 - f.bands[b0].r0;
        let (ya, yb) = y.split_at(Axis(2), split);
        let (ra, rb) = rayon::join(
            || self.bands(f, x, ya, n, b0, bm),
            || self.bands(f, x, yb, n, bm, b1),
        );
        ra.and(rb)
    }

    fn band(
        &self,
        f: &Fused,
        x: ArrayView4<f32>,
        mut y: ArrayViewMut4<f32>,
        n: usize,
        band: &Band,
    ) -> Result<()> {
        let [_, c, h, w] = self.input;
        let [_, mc, _, ow] = self.mid;
        let k = self.output[1];
        let mut sc = take(&f.pool);
        grow(&mut sc.mid, f.sizes[0]);
        grow(&mut sc.out, f.sizes[1]);
        let r = (|| {
            let xs = x.as_slice().expect("standard layout");
            // The band's rows of every channel of image n, `h·w` floats apart.
            let start = (n * c * h + band.lo) * w;
            let len = (c - 1) * h * w + band.rows_in * w;
            let mid_len = mc * band.rows * ow;
            f.dw[band.dw].run_planes(
                &xs[start..start + len],
                h * w,
                &f.dw_w,
                f.dw_b.as_deref(),
                &mut sc.mid[..mid_len],
            )?;
            let mid = ArrayView4::from_shape([1, mc, band.rows, ow], &sc.mid[..mid_len])
                .expect("buffer holds the band intermediate");
            if y.is_standard_layout() {
                // One band per image: the output rows are contiguous, written in place.
                f.pw[band.pw].run(mid, y)
            } else {
                let out_len = k * band.rows * ow;
                let mut out =
                    ArrayViewMut4::from_shape([1, k, band.rows, ow], &mut sc.out[..out_len])
                        .expect("buffer holds the band output");
                f.pw[band.pw].run(mid, out.view_mut())?;
                // Each output channel's band rows are one contiguous run of `rows·ow` floats.
                let plane = band.rows * ow;
                for (ko, src) in sc.out[..out_len].chunks_exact(plane).enumerate() {
                    let mut dst = y.slice_mut(ndarray::s![0, ko, .., ..]);
                    match dst.as_slice_mut() {
                        Some(d) => d.copy_from_slice(src),
                        None => dst.assign(
                            &ndarray::ArrayView2::from_shape([band.rows, ow], src)
                                .expect("one channel's band"),
                        ),
                    }
                }
                Ok(())
            }
        })();
        give(&f.pool, sc);
        r
    }
}
