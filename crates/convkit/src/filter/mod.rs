//! Image filtering: named kernels, OpenCV-compatible borders, and fast separable / 2D paths.
//!
//! ```
//! use convkit::filter::{FilterBorder, FilterOptions, FilterPlan, Image, KernelSpec, Depth};
//! let op = KernelSpec::parse("sobel-x").unwrap().resolve(Depth::U8).unwrap();
//! let plan = FilterPlan::new(&op, &FilterOptions::default()).unwrap();
//! assert_eq!(plan.parts()[0].rank, 1); // [1,2,1]ᵀ ⊗ [-1,0,1]: two 1D passes, 6 MACs not 9
//! let px: Vec<u8> = (0..20).map(|i| (i % 5) as u8 * 10).collect(); // 4 rows × 5 columns
//! let img = Image::new(&px, 5, 4, 1).unwrap();
//! let y = plan.run_alloc(&img).unwrap();
//! assert_eq!(y[6], 80.0); // row 1, column 1: (1 + 2 + 1) · (20 − 0)
//! ```
//!
//! Semantics are OpenCV's `filter2D` / `sepFilter2D`: correlation (like PyTorch `conv2d`), the
//! output the size of the input, the anchor at the kernel centre `(rows/2, cols/2)`, and the
//! border rules of [`FilterBorder`]. Dilation `d` spreads the taps `d` pixels apart (anchor
//! `(rows/2·d, cols/2·d)`), which OpenCV does not offer.
//!
//! Path choice ([`FilterPlan::new`]): the kernel is factorised ([`crate::separable`]); a rank-r
//! kernel runs as r pairs of 1D passes when `r·(kh + kw) < kh·kw` MACs per pixel, else as a
//! direct 2D filter; a box at least 4 rows tall runs as running column sums and per-row
//! prefix sums ([`Path::BoxSums`], O(1) per pixel whatever the size). The factorisation is exact;
//! `FilterOptions::rank` forces a rank-r approximation and the plan reports its error. No FFT
//! path: for the kernel sizes of image filtering the separable and register-blocked 2D paths
//! are cheaper.
//!
//! Engine (private module `engine`): OpenCV's FilterEngine structure: bands of output rows in
//! parallel (rayon), each streaming its input rows through a ring buffer (row pass once per
//! row, border handled while widening a row, so the inner loops have no bounds tests), and
//! one register-blocked SIMD kernel ([`simd::dot_block`]: AVX-512, AVX2, scalar, chosen at
//! run time and bit-identical) for every pass; zero taps are skipped, and f32 images run the
//! separable row pass on the image rows themselves. Boxes have their own O(1) passes
//! (private module `boxsum`: running column sums, then prefix sums across each row).

pub mod bench;
mod boxsum;
mod engine;
pub mod kernels;
pub mod naive;
pub mod simd;

pub use kernels::{Depth, FilterOp, Kernel, KernelSpec, KERNEL_NAMES};
pub use simd::Isa;

use crate::border::Border;
use crate::error::{ConvError, Result};
use crate::separable;
use engine::{Shape, Stage};
use std::fmt;

/// How the image is extended beyond its edges, with OpenCV's and PyTorch's names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FilterBorder {
    /// A constant value outside (OpenCV `BORDER_CONSTANT`; 0 is PyTorch `zeros`).
    Constant(f32),
    /// `dcb|abcd|cba` (OpenCV `BORDER_REFLECT_101`, OpenCV's default; PyTorch `reflect`).
    Reflect101,
    /// `cba|abcd|dcb` (OpenCV `BORDER_REFLECT`; NumPy `symmetric`).
    Reflect,
    /// `aaa|abcd|ddd` (OpenCV `BORDER_REPLICATE`; PyTorch `replicate`).
    Replicate,
    /// `bcd|abcd|abc` (OpenCV `BORDER_WRAP`; PyTorch `circular`).
    Circular,
}

/// Help text listing the border names.
pub const BORDER_HELP: &str = "zeros | constant:V (OpenCV BORDER_CONSTANT) | reflect-101 \
(OpenCV BORDER_REFLECT_101, OpenCV's default, = PyTorch 'reflect') | reflect (OpenCV \
BORDER_REFLECT: the edge pixel repeats) | replicate (BORDER_REPLICATE) | circular (BORDER_WRAP)";

impl Default for FilterBorder {
    /// OpenCV's default, `BORDER_REFLECT_101`.
    fn default() -> Self {
        FilterBorder::Reflect101
    }
}

impl FilterBorder {
    /// Parses `zeros`, `constant[:V]`, `reflect-101`, `reflect`, `replicate`, `circular`
    /// (also OpenCV's names `reflect101`, `reflect_101`, `wrap`).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        Ok(match s.as_str() {
            "zeros" | "zero" | "constant" => FilterBorder::Constant(0.0),
            "reflect-101" | "reflect101" | "reflect_101" => FilterBorder::Reflect101,
            "reflect" => FilterBorder::Reflect,
            "replicate" => FilterBorder::Replicate,
            "circular" | "wrap" => FilterBorder::Circular,
            _ => match s.strip_prefix("constant:") {
                Some(v) => {
                    let v: f32 = v.trim().parse().map_err(|_| {
                        ConvError::Unsupported(format!("bad constant border value {v:?}"))
                    })?;
                    if !v.is_finite() {
                        return Err(ConvError::Unsupported(
                            "the constant border value must be finite".into(),
                        ));
                    }
                    FilterBorder::Constant(v)
                }
                None => {
                    return Err(ConvError::Unsupported(format!(
                        "unknown border {s:?}; expected {BORDER_HELP}"
                    )))
                }
            },
        })
    }

    /// The index rule (constant borders read nothing from the image).
    pub fn rule(self) -> Border {
        match self {
            FilterBorder::Constant(_) => Border::Zeros,
            FilterBorder::Reflect101 => Border::Reflect101,
            FilterBorder::Reflect => Border::Reflect,
            FilterBorder::Replicate => Border::Replicate,
            FilterBorder::Circular => Border::Circular,
        }
    }

    /// Where position `i` of a length-`n` axis reads, `None` for the constant value.
    pub fn source(self, i: isize, n: usize) -> Option<usize> {
        self.rule().source(i, n)
    }

    /// The value read where [`source`](Self::source) is `None`.
    pub fn value(self) -> f32 {
        match self {
            FilterBorder::Constant(v) => v,
            _ => 0.0,
        }
    }

    /// OpenCV's name for the mode.
    pub fn opencv_name(self) -> &'static str {
        match self {
            FilterBorder::Constant(_) => "BORDER_CONSTANT",
            FilterBorder::Reflect101 => "BORDER_REFLECT_101",
            FilterBorder::Reflect => "BORDER_REFLECT",
            FilterBorder::Replicate => "BORDER_REPLICATE",
            FilterBorder::Circular => "BORDER_WRAP",
        }
    }
}

impl fmt::Display for FilterBorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterBorder::Constant(v) if *v == 0.0 => write!(f, "zeros"),
            FilterBorder::Constant(v) => write!(f, "constant:{v}"),
            FilterBorder::Reflect101 => write!(f, "reflect-101"),
            FilterBorder::Reflect => write!(f, "reflect"),
            FilterBorder::Replicate => write!(f, "replicate"),
            FilterBorder::Circular => write!(f, "circular"),
        }
    }
}

/// A sample type images come in; the engine widens rows to f32 as it reads them.
pub trait Sample: Copy + Send + Sync + 'static {
    /// The depth, for OpenCV's depth-dependent rules.
    const DEPTH: Depth;
    /// The largest sample value for integer depths (their box sums run exactly in u32),
    /// `None` for float depths.
    const INT_MAX: Option<u32>;
    /// `dst[i] = src[i] as f32` (equal lengths).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// The sample as an unsigned integer: exact for integer depths (`INT_MAX` is `Some`);
    /// float depths saturate and truncate (not used for them).
    fn to_u32(self) -> u32;
    /// The sample as f64 (exact for every depth).
    fn to_f64(self) -> f64;
    /// The samples themselves when they already are f32 (rows are then filtered in place,
    /// without a widened copy); `None` for other depths.
    fn as_f32(src: &[Self]) -> Option<&[f32]>;
}

macro_rules! sample {
    ($t:ty, $d:expr, $max:expr, $as_f32:expr) => {
        impl Sample for $t {
            const DEPTH: Depth = $d;
            const INT_MAX: Option<u32> = $max;
            #[inline(always)]
            fn as_f32(src: &[Self]) -> Option<&[f32]> {
                $as_f32(src)
            }
            #[inline(always)]
            fn to_u32(self) -> u32 {
                self as u32
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn widen(src: &[Self], dst: &mut [f32]) {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s as f32;
                }
            }
        }
    };
}
sample!(u8, Depth::U8, Some(u8::MAX as u32), |_| None);
sample!(u16, Depth::U16, Some(u16::MAX as u32), |_| None);
sample!(f32, Depth::F32, None, Some);

/// A borrowed `height × width × channels` image, rows contiguous, channels interleaved.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a, T> {
    /// Samples, `height · width · channels` of them.
    pub data: &'a [T],
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Interleaved channels per pixel.
    pub channels: usize,
}

impl<'a, T> Image<'a, T> {
    /// Checks that `data` holds exactly `height · width · channels` samples.
    pub fn new(data: &'a [T], width: usize, height: usize, channels: usize) -> Result<Self> {
        for (v, what) in [
            (width, "image width"),
            (height, "image height"),
            (channels, "channels"),
        ] {
            if v == 0 {
                return Err(ConvError::Zero { what });
            }
        }
        let n = width
            .checked_mul(height)
            .and_then(|v| v.checked_mul(channels))
            .ok_or(ConvError::Overflow { what: "image size" })?;
        if data.len() != n {
            return Err(ConvError::ShapeMismatch {
                what: "image data",
                got: vec![data.len()],
                expected: vec![height, width, channels],
            });
        }
        Ok(Image {
            data,
            width,
            height,
            channels,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the image has no samples (never true for a checked image).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Which implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathChoice {
    /// Separable when its MACs per pixel are fewer, else 2D.
    #[default]
    Auto,
    /// Always rank-1 pairs (every kernel factorises exactly into at most min(kh, kw) pairs;
    /// boxes use their running sums).
    Separable,
    /// Always the direct 2D filter.
    Direct,
}

/// How to filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterOptions {
    /// Border rule.
    pub border: FilterBorder,
    /// Spacing of the taps (1 = ordinary filter).
    pub dilation: usize,
    /// Path override.
    pub path: PathChoice,
    /// Force a rank-r approximation (separable with r pairs); `None` keeps the kernel exact.
    pub rank: Option<usize>,
}

impl Default for FilterOptions {
    fn default() -> Self {
        FilterOptions {
            border: FilterBorder::default(),
            dilation: 1,
            path: PathChoice::Auto,
            rank: None,
        }
    }
}

/// The implementation a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// `pairs` rank-1 terms, each a horizontal and a vertical 1D pass (fused, one sweep).
    Separable {
        /// Number of rank-1 terms.
        pairs: usize,
    },
    /// Direct 2D correlation.
    Direct2D,
    /// A box (all weights equal): running sums down the columns (`S += new row − old row`),
    /// then window sums across each row of `S` (prefix sums: one subtraction per output),
    /// scaled once; O(1) per pixel whatever the size, exact in u32 for u8/u16 images.
    BoxSums,
}

/// Smallest box height for which running sums beat the `kh`-tap column pass.
const BOX_MIN_ROWS: usize = 4;

/// `Some(scale)` when the single term `(col, row)` is a box: all entries of each factor equal.
fn box_scale(terms: &[(Vec<f64>, Vec<f64>)]) -> Option<f64> {
    let [(c, r)] = terms else { return None };
    let flat = |v: &[f64]| v.iter().all(|&x| x == v[0]) && v[0] != 0.0;
    (flat(c) && flat(r)).then(|| c[0] * r[0])
}

/// What the plan decided for one kernel (a magnitude filter has two).
#[derive(Debug, Clone, PartialEq)]
pub struct PartInfo {
    /// Kernel rows.
    pub rows: usize,
    /// Kernel columns.
    pub cols: usize,
    /// Numerical rank of the kernel.
    pub rank: usize,
    /// Singular values when the kernel was factorised by SVD (empty for known factors).
    pub singular_values: Vec<f64>,
    /// The chosen path.
    pub path: Path,
    /// Weights of the 2D kernel (`rows · cols`).
    pub weights_2d: usize,
    /// Weights of the separable form (`rank · (rows + cols)`).
    pub weights_separable: usize,
    /// MACs per output sample of the chosen path, as the engine runs it (zero taps skipped:
    /// Sobel-x is 6 in 2D, 5 separable).
    pub macs_per_pixel: usize,
    /// MACs per output sample the direct 2D path runs.
    pub macs_2d: usize,
    /// MACs per output sample the separable path runs (0 for the zero kernel, which has no
    /// separable form).
    pub macs_separable: usize,
    /// Frobenius error ‖kernel − approximation‖ when a rank-r approximation was forced.
    pub approx_error: Option<f64>,
    /// Frobenius norm ‖kernel‖ (to put the error in proportion).
    pub kernel_norm: f64,
    /// Max |kernel − approximation| over the weights when a rank was forced.
    pub approx_max_error: Option<f64>,
}

#[derive(Debug, Clone)]
struct Part {
    shape: Shape,
    stage: Stage,
    info: PartInfo,
}

/// A validated, factorised filter, ready to run on any number of images.
#[derive(Debug, Clone)]
pub struct FilterPlan {
    parts: Vec<Part>,
    magnitude: bool,
    opts: FilterOptions,
    isa: Isa,
}

/// A kernel as a sum of rank-1 terms.
struct Decomposition {
    /// `(col, row)` pairs with kernel ≈ Σ col ⊗ row (empty for the zero kernel).
    terms: Vec<(Vec<f64>, Vec<f64>)>,
    /// Numerical rank.
    rank: usize,
    /// Singular values, when an SVD ran.
    singular_values: Vec<f64>,
    /// Frobenius error ‖K − Σ terms‖ when a rank was forced.
    approx_error: Option<f64>,
}

/// Factorises a kernel: its known factors when it was built from them, else the SVD
/// ([`crate::separable::factorize`], or [`crate::separable::low_rank`] for a forced rank).
fn decompose(k: &Kernel, rank: Option<usize>) -> Result<Decomposition> {
    let max_rank = k.rows().min(k.cols());
    if let Some(r) = rank {
        if r > max_rank {
            return Err(ConvError::Unsupported(format!(
                "rank {r} is more than a {}x{} kernel can have (at most {max_rank})",
                k.rows(),
                k.cols()
            )));
        }
    }
    if let Some((c, r)) = k.factors() {
        return Ok(Decomposition {
            terms: vec![(c.to_vec(), r.to_vec())],
            rank: 1,
            singular_values: Vec::new(),
            approx_error: rank.map(|_| 0.0),
        });
    }
    let a = k.to_array();
    let f = match rank {
        Some(r) => separable::low_rank(a.view(), r)?,
        None => separable::factorize(a.view())?,
    };
    Ok(Decomposition {
        approx_error: rank.map(|_| f.error()),
        terms: f.terms.into_iter().map(|t| (t.col, t.row)).collect(),
        rank: f.rank,
        singular_values: f.singular_values,
    })
}

impl FilterPlan {
    /// Validates the options, factorises the kernel(s) and picks the path.
    pub fn new(op: &FilterOp, opts: &FilterOptions) -> Result<Self> {
        if opts.dilation == 0 {
            return Err(ConvError::Zero { what: "dilation" });
        }
        if opts.rank == Some(0) {
            return Err(ConvError::Zero { what: "rank" });
        }
        let (kernels, magnitude) = match op {
            FilterOp::Linear(k) => (vec![k], false),
            FilterOp::Magnitude(a, b) => (vec![a, b], true),
        };
        let parts = kernels
            .into_iter()
            .map(|k| plan_part(k, opts))
            .collect::<Result<Vec<_>>>()?;
        Ok(FilterPlan {
            parts,
            magnitude,
            opts: *opts,
            isa: Isa::detect(),
        })
    }

    /// The same plan on another instruction set (for tests and benchmarks); an error if this
    /// CPU lacks it.
    pub fn with_isa(mut self, isa: Isa) -> Result<Self> {
        if !isa.supported() {
            return Err(ConvError::AlgorithmUnavailable {
                algo: isa.name(),
                why: "this CPU does not support it".into(),
            });
        }
        self.isa = isa;
        Ok(self)
    }

    /// The decisions per kernel.
    pub fn parts(&self) -> Vec<PartInfo> {
        self.parts.iter().map(|p| p.info.clone()).collect()
    }

    /// The options the plan was built with.
    pub fn options(&self) -> &FilterOptions {
        &self.opts
    }

    /// Filters `src` into `dst` (`H × W × C` f32, the layout of `src`).
    pub fn run<T: Sample>(&self, src: &Image<T>, dst: &mut [f32]) -> Result<()> {
        if dst.len() != src.len() {
            return Err(ConvError::ShapeMismatch {
                what: "filter output",
                got: vec![dst.len()],
                expected: vec![src.height, src.width, src.channels],
            });
        }
        let p0 = &self.parts[0];
        engine::run(&p0.stage, p0.shape, self.opts.border, src, dst, self.isa);
        if self.magnitude {
            let p1 = &self.parts[1];
            let mut gy = vec![0.0f32; dst.len()];
            engine::run(
                &p1.stage,
                p1.shape,
                self.opts.border,
                src,
                &mut gy,
                self.isa,
            );
            use rayon::prelude::*;
            dst.par_chunks_mut(1 << 16)
                .zip(gy.par_chunks(1 << 16))
                .for_each(|(a, b)| {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x = x.hypot(*y);
                    }
                });
        }
        Ok(())
    }

    /// [`run`](Self::run) into a new buffer.
    pub fn run_alloc<T: Sample>(&self, src: &Image<T>) -> Result<Vec<f32>> {
        let mut dst = vec![0.0f32; src.len()];
        self.run(src, &mut dst)?;
        Ok(dst)
    }

    /// A human-readable account of the plan (`convkit filter --explain`).
    pub fn explain(&self) -> String {
        let mut s = String::new();
        for (n, p) in self.parts.iter().enumerate() {
            let i = &p.info;
            if self.magnitude {
                s += &format!("kernel {} of 2 (magnitude √(gx² + gy²)):\n", n + 1);
            }
            s += &format!(
                "  kernel {}x{} (rows x cols), rank {}",
                i.rows, i.cols, i.rank
            );
            if !i.singular_values.is_empty() {
                let sv: Vec<String> = i
                    .singular_values
                    .iter()
                    .map(|v| format!("{v:.4e}"))
                    .collect();
                s += &format!(", singular values [{}]", sv.join(", "));
            }
            s += "\n";
            s += &format!(
                "  weights: 2D {}, separable {} ({} pair(s) of {}+{})\n",
                i.weights_2d,
                i.weights_separable,
                i.weights_separable / (i.rows + i.cols),
                i.rows,
                i.cols
            );
            let path = match i.path {
                Path::Separable { pairs } => {
                    format!("separable: {pairs} pair(s) of 1D passes (row pass, then column pass, fused)")
                }
                Path::Direct2D => "direct 2D".to_string(),
                Path::BoxSums => {
                    "separable box: running sums down the columns, then prefix sums across"
                        .to_string()
                }
            };
            s += &format!(
                "  MACs per pixel: {} (2D {}, separable {}, zero weights skipped; auto runs \
                 separable when 1.4 x separable + 1.3 < 2D); path: {path}\n",
                i.macs_per_pixel, i.macs_2d, i.macs_separable
            );
            if let (Some(e), Some(m)) = (i.approx_error, i.approx_max_error) {
                s += &format!(
                    "  rank-{} approximation: Frobenius error {e:.3e} ({:.3}% of the kernel's \
                     norm), max weight error {m:.3e}\n",
                    self.opts.rank.unwrap_or(0),
                    100.0 * e / i.kernel_norm.max(f64::MIN_POSITIVE)
                );
            }
        }
        s += &format!(
            "  border {} (OpenCV {}), dilation {}, {} kernels, {} thread(s)\n",
            self.opts.border,
            self.opts.border.opencv_name(),
            self.opts.dilation,
            self.isa.name(),
            rayon::current_num_threads()
        );
        s
    }
}

fn plan_part(k: &Kernel, opts: &FilterOptions) -> Result<Part> {
    let (kh, kw) = (k.rows(), k.cols());
    let shape = Shape {
        kh,
        kw,
        dilation: opts.dilation,
    };
    for (n, axis) in [(kh, "height"), (kw, "width")] {
        let extent = (n - 1)
            .checked_mul(opts.dilation)
            .and_then(|v| v.checked_add(1))
            .ok_or(ConvError::Overflow {
                what: "dilated kernel",
            })?;
        if extent > 1 << 16 {
            return Err(ConvError::Unsupported(format!(
                "dilated kernel {axis} {extent} is larger than 65536"
            )));
        }
    }
    let weights_2d = kh * kw;
    let Decomposition {
        terms,
        rank,
        singular_values: sv,
        approx_error,
    } = decompose(k, opts.rank)?;
    // The zero kernel has no terms; it runs (trivially) as 2D.
    let sep_ok = !terms.is_empty();
    let pairs = terms.len();
    let weights_separable = pairs * (kh + kw);
    let use_sep = match opts.path {
        PathChoice::Separable => {
            if !sep_ok {
                return Err(ConvError::AlgorithmUnavailable {
                    algo: "separable",
                    why: "the kernel is zero".into(),
                });
            }
            true
        }
        PathChoice::Direct => {
            if opts.rank.is_some() {
                return Err(ConvError::Unsupported(
                    "a forced rank runs as separable pairs; it cannot use the 2D path".into(),
                ));
            }
            false
        }
        PathChoice::Auto => {
            sep_ok
                && (opts.rank.is_some()
                    || separable_is_cheaper(taps_separable(&terms, kh), taps_2d(k)))
        }
    };
    // A tall box sums its columns in O(1); that beats both other paths whenever allowed.
    let boxed = box_scale(&terms).filter(|_| {
        opts.path != PathChoice::Direct
            && opts.rank.is_none()
            && opts.dilation == 1
            && kh >= BOX_MIN_ROWS
    });
    let (stage, path, macs) = if let Some(scale) = boxed {
        // Two adds down the columns, a prefix add and a difference across.
        (Stage::Box { scale }, Path::BoxSums, 4)
    } else if use_sep {
        let t32 = terms
            .iter()
            .map(|(c, r)| {
                (
                    c.iter().map(|&v| v as f32).collect(),
                    r.iter().map(|&v| v as f32).collect(),
                )
            })
            .collect();
        (
            Stage::Separable(t32),
            Path::Separable { pairs },
            taps_separable(&terms, kh),
        )
    } else {
        let w: Vec<f32> = k.data().iter().map(|&v| v as f32).collect();
        (Stage::Direct(w), Path::Direct2D, taps_2d(k))
    };
    let approx_max_error = approx_error.map(|_| {
        let mut worst = 0.0f64;
        for i in 0..kh {
            for j in 0..kw {
                let a: f64 = terms.iter().map(|(c, r)| c[i] * r[j]).sum();
                worst = worst.max((a - k.at(i, j)).abs());
            }
        }
        worst
    });
    Ok(Part {
        shape,
        stage,
        info: PartInfo {
            rows: kh,
            cols: kw,
            rank,
            singular_values: sv,
            path,
            weights_2d,
            weights_separable,
            macs_per_pixel: macs,
            macs_2d: taps_2d(k),
            macs_separable: if sep_ok {
                taps_separable(&terms, kh)
            } else {
                0
            },
            approx_error,
            kernel_norm: k.data().iter().map(|v| v * v).sum::<f64>().sqrt(),
            approx_max_error,
        },
    })
}

/// Multiplies per output sample of the direct 2D path as the engine runs it: kernel columns
/// that are zero in every row are skipped (Sobel-x: 3 rows × 2 columns = 6, not 9).
fn taps_2d(k: &Kernel) -> usize {
    let w: Vec<f32> = k.data().iter().map(|&v| v as f32).collect();
    k.rows() * engine::live_columns(&w, k.rows(), k.cols()).len()
}

/// Multiplies per output sample of the separable path as the engine runs it: each term's row
/// pass skips its zero taps, and the column pass multiplies `kh` rows per term (Sobel-x:
/// [1, 0, −1] → 2, plus [1, 2, 1] → 3, = 5).
fn taps_separable(terms: &[(Vec<f64>, Vec<f64>)], kh: usize) -> usize {
    terms
        .iter()
        .map(|(_, row)| {
            let r: Vec<f32> = row.iter().map(|&v| v as f32).collect();
            engine::live_taps(&r).len() + kh
        })
        .sum()
}

/// `auto`'s choice between the two exact paths: separable when `1.4 · sep + 1.3 < taps_2d`.
///
/// A separable tap costs more than a 2D one (the row pass works one row at a time, the 2D
/// column stage four rows per loaded vector), and the extra pass costs about 1.3 2D taps;
/// fitted on 1080p gray u8 at one thread (ms): 2D 0.27 + 0.042 per tap, separable 0.32 + 0.058
/// per tap. So every 3×3 runs 2D (Sobel 0.50 vs 0.61 separable, a 3×3 Gaussian 0.64 vs 0.68)
/// and a 5×5 Gaussian runs separable (0.94 vs 1.30).
fn separable_is_cheaper(sep: usize, taps_2d: usize) -> bool {
    14 * sep + 13 < 10 * taps_2d
}

/// OpenCV's `saturate_cast<uchar>(float)`: round half to even (`cvRound`), then clamp.
pub fn saturate_u8(v: f32) -> u8 {
    if v.is_nan() {
        return 0;
    }
    v.round_ties_even().clamp(0.0, 255.0) as u8
}

/// OpenCV's `saturate_cast<ushort>(float)`: round half to even, then clamp.
pub fn saturate_u16(v: f32) -> u16 {
    if v.is_nan() {
        return 0;
    }
    v.round_ties_even().clamp(0.0, 65535.0) as u16
}

#[cfg(test)]
mod tests;
