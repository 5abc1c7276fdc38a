//! Spatially separable kernels: rank-1 and low-rank factorisation, and two-pass execution.
//!
//! A kh×kw kernel K of (numerical) rank r is a sum of r outer products, `K = Σᵢ colᵢ ⊗ rowᵢ`
//! (its SVD, `K = Σ σᵢ uᵢ vᵢᵀ`). A cross-correlation with `col ⊗ row` equals a vertical 1D
//! pass with `col` followed by a horizontal 1D pass with `row`: kh + kw multiply-adds per
//! output cell instead of kh·kw (the seed's Sobel: `[1,2,1]ᵀ·[1,0,-1]`, 6 weights instead of 9).
//! A rank-r kernel runs as r such pairs; [`low_rank`] gives the best rank-r approximation
//! (Eckart–Young–Mirsky: truncating the SVD minimises the Frobenius error, which is
//! `sqrt(Σ_{i>r} σᵢ²)`).
//!
//! ```
//! use convkit::separable::{factorize, rank1};
//! use ndarray::array;
//! let sobel_x = array![[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]];
//! assert_eq!(rank1(sobel_x.view()), Some((vec![1.0, 2.0, 1.0], vec![1.0, 0.0, -1.0])));
//! let laplacian = array![[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]];
//! assert_eq!(factorize(laplacian.view()).unwrap().rank, 2);
//! ```

use crate::border::Border;
use crate::error::{ConvError, Result};
use crate::kernels::Isa;
use crate::reference::check_operands;
use crate::spec::ValidSpec;
use ndarray::{Array2, Array4, ArrayView1, ArrayView2, ArrayView4, Axis};
use rayon::prelude::*;

/// One rank-1 term: kernel ≈ Σ col ⊗ row, i.e. `K[i][j] ≈ Σ col[i]·row[j]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rank1Term {
    /// Vertical factor, kh entries (applied down the columns, first pass).
    pub col: Vec<f64>,
    /// Horizontal factor, kw entries (applied along the rows, second pass).
    pub row: Vec<f64>,
}

/// Result of factorising a 2D kernel: its singular values, numerical rank and the rank-1 terms
/// of an exact factorisation ([`factorize`]) or of a best low-rank approximation ([`low_rank`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Factorization {
    /// Singular values σ₁ ≥ σ₂ ≥ … of the kernel, min(kh, kw) of them.
    pub singular_values: Vec<f64>,
    /// Numerical rank of the kernel (σᵢ above [`Factorization::tolerance`]); `terms.len()` is
    /// the rank of this approximation and is at most `rank`.
    pub rank: usize,
    /// The rank-1 terms whose sum is [`Factorization::reconstruct`].
    pub terms: Vec<Rank1Term>,
    kernel: Array2<f64>,
    tolerance: f64,
}

impl Factorization {
    /// Sum of the terms as a kh×kw kernel.
    pub fn reconstruct(&self) -> Array2<f64> {
        let mut k = Array2::<f64>::zeros(self.kernel.dim());
        for t in &self.terms {
            for (i, &c) in t.col.iter().enumerate() {
                for (j, &r) in t.row.iter().enumerate() {
                    k[[i, j]] += c * r;
                }
            }
        }
        k
    }

    /// Frobenius error ‖K − reconstruct()‖ of this approximation, computed from the kernel.
    pub fn error(&self) -> f64 {
        let r = self.reconstruct();
        scaled_norm(self.kernel.iter().zip(r.iter()).map(|(a, b)| a - b))
    }

    /// The error Eckart–Young predicts for keeping `terms.len()` terms: `sqrt(Σ_{i>r} σᵢ²)`.
    pub fn dropped_error(&self) -> f64 {
        scaled_norm(self.singular_values.iter().skip(self.terms.len()).copied())
    }

    /// The kernel that was factorised.
    pub fn kernel(&self) -> ArrayView2<'_, f64> {
        self.kernel.view()
    }

    /// Kernel shape `[kh, kw]`.
    pub fn shape(&self) -> [usize; 2] {
        let (kh, kw) = self.kernel.dim();
        [kh, kw]
    }

    /// The rank threshold `max(kh, kw)·ε·σ₁` (NumPy's `matrix_rank` default, ε = f64 epsilon).
    pub fn tolerance(&self) -> f64 {
        self.tolerance
    }

    /// Whether the terms reproduce the kernel (all `rank` terms kept).
    pub fn is_exact(&self) -> bool {
        self.terms.len() == self.rank
    }

    /// Weights of the 2D kernel: kh·kw (= multiply-adds per output cell of the 2D path).
    pub fn weights_2d(&self) -> usize {
        self.kernel.len()
    }

    /// Weights of the two-pass form: terms·(kh + kw) (= multiply-adds per output cell of the
    /// two-pass path at stride 1, up to the vertical pass over border columns).
    pub fn weights_separable(&self) -> usize {
        let [kh, kw] = self.shape();
        self.terms.len() * (kh + kw)
    }

    /// Whether running the terms as 1D passes needs fewer multiply-adds than the 2D kernel.
    pub fn separable_is_cheaper(&self) -> bool {
        self.weights_separable() < self.weights_2d()
    }
}

/// Rejects empty and non-finite kernels.
fn check_kernel(k: ArrayView2<f64>) -> Result<()> {
    let (kh, kw) = k.dim();
    if kh == 0 {
        return Err(ConvError::Zero {
            what: "kernel height",
        });
    }
    if kw == 0 {
        return Err(ConvError::Zero {
            what: "kernel width",
        });
    }
    if k.iter().any(|v| !v.is_finite()) {
        return Err(ConvError::NonFinite { what: "kernel" });
    }
    Ok(())
}

fn max_abs(k: ArrayView2<f64>) -> f64 {
    k.iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// A thin SVD: σ (descending), left vectors uᵢ (kh entries), right vectors vᵢ (kw entries).
struct Svd {
    sigma: Vec<f64>,
    u: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
}

fn svd(k: ArrayView2<f64>) -> Result<Svd> {
    let (kh, kw) = k.dim();
    let m = kh.min(kw);
    let scale = max_abs(k);
    if scale == 0.0 {
        return Ok(Svd {
            sigma: vec![0.0; m],
            u: vec![],
            v: vec![],
        });
    }
    // Scaling by the largest entry keeps the iteration away from overflow and underflow.
    let a = nalgebra::DMatrix::from_fn(kh, kw, |i, j| k[[i, j]] / scale);
    let d = a
        .try_svd(true, true, f64::EPSILON, 100_000)
        .ok_or_else(|| ConvError::Unsupported("the kernel's SVD did not converge".into()))?;
    let (Some(u), Some(vt)) = (d.u, d.v_t) else {
        return Err(ConvError::Unsupported(
            "the kernel's SVD returned no singular vectors".into(),
        ));
    };
    let sigma: Vec<f64> = d.singular_values.iter().map(|s| s * scale).collect();
    if sigma.iter().any(|s| !s.is_finite()) {
        return Err(ConvError::Overflow {
            what: "kernel singular values",
        });
    }
    Ok(Svd {
        sigma,
        u: (0..m)
            .map(|i| u.column(i).iter().copied().collect())
            .collect(),
        v: (0..m)
            .map(|i| vt.row(i).iter().copied().collect())
            .collect(),
    })
}

/// Euclidean norm, scaled by the largest magnitude so that squares neither overflow nor
/// underflow (kernels may hold any finite values).
fn scaled_norm(v: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = v.clone().fold(0.0f64, |m, x| m.max(x.abs()));
    if m == 0.0 || !m.is_finite() {
        return m;
    }
    m * v.map(|x| (x / m) * (x / m)).sum::<f64>().sqrt()
}

fn norm(v: &[f64]) -> f64 {
    scaled_norm(v.iter().copied())
}

/// Flips both factors so that the first nonzero entry of `col` is positive.
fn fix_sign(col: &mut [f64], row: &mut [f64]) {
    if col.iter().find(|&&c| c != 0.0).is_some_and(|&c| c < 0.0) {
        col.iter_mut().for_each(|c| *c = -*c);
        row.iter_mut().for_each(|r| *r = -*r);
    }
}

/// Rescales a real-valued rank-1 pair: if both factors have a clearly nonzero sum, `row` is
/// made to sum to 1 (a normalised smoother like a Gaussian or box gets its 1D kernels); else
/// the two factors get equal norms. Then the first nonzero entry of `col` is made positive.
fn nice_scale(mut col: Vec<f64>, mut row: Vec<f64>) -> (Vec<f64>, Vec<f64>) {
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let abs = |v: &[f64]| v.iter().map(|x| x.abs()).sum::<f64>();
    let clear = |v: &[f64]| sum(v).abs() > 1e-8 * abs(v);
    let alpha = if clear(&col) && clear(&row) {
        sum(&row)
    } else {
        let (nc, nr) = (norm(&col), norm(&row));
        if nc == 0.0 || nr == 0.0 {
            1.0
        } else {
            (nr / nc).sqrt()
        }
    };
    row.iter_mut().for_each(|r| *r /= alpha);
    col.iter_mut().for_each(|c| *c *= alpha);
    fix_sign(&mut col, &mut row);
    (col, row)
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

/// Integer kernels: the factors `p`, `c·q` with `p`, `q` primitive integer vectors (by Gauss's
/// lemma every integer rank-1 matrix is `c·p⊗q`), verified exactly in integer arithmetic.
fn integer_rank1(k: ArrayView2<f64>, i0: usize, j0: usize) -> Option<(Vec<f64>, Vec<f64>)> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer up to here is exact.
    if k.iter().any(|v| v.fract() != 0.0 || v.abs() > EXACT) {
        return None;
    }
    let ki = k.mapv(|v| v as i128);
    let g = ki.column(j0).iter().fold(0, |g, &v| gcd(g, v));
    let mut col: Vec<i128> = ki.column(j0).iter().map(|&v| v / g).collect();
    // row[j] = K[i0, j] / col[i0] must be an integer for an exact factorisation.
    let mut row = Vec::with_capacity(ki.ncols());
    for &v in ki.row(i0) {
        if v % col[i0] != 0 {
            return None;
        }
        row.push(v / col[i0]);
    }
    for ((i, j), &v) in ki.indexed_iter() {
        if col[i] * row[j] != v {
            return None;
        }
    }
    if col.iter().find(|&&c| c != 0).is_some_and(|&c| c < 0) {
        col.iter_mut().for_each(|c| *c = -*c);
        row.iter_mut().for_each(|r| *r = -*r);
    }
    Some((
        col.into_iter().map(|v| v as f64).collect(),
        row.into_iter().map(|v| v as f64).collect(),
    ))
}

/// The exact rank-1 test: with (i0, j0) the largest entry, `K ≈ K[:, j0] ⊗ (K[i0, :] / K[i0, j0])`
/// within `max(kh, kw)·ε·‖K‖_F` (Frobenius). `None` for a zero kernel or a failed test.
fn ratio_rank1(k: ArrayView2<f64>) -> Option<(Vec<f64>, Vec<f64>)> {
    let ((i0, j0), _) = k
        .indexed_iter()
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))?;
    let scale = k[[i0, j0]].abs();
    if scale == 0.0 {
        return None;
    }
    if let Some(f) = integer_rank1(k, i0, j0) {
        return Some(f);
    }
    let col: Vec<f64> = k.column(j0).to_vec();
    let row: Vec<f64> = k.row(i0).iter().map(|v| v / k[[i0, j0]]).collect();
    // Residual and norm on K / scale, so nothing overflows.
    let (mut res, mut fro) = (0.0f64, 0.0f64);
    for ((i, j), &v) in k.indexed_iter() {
        let d = (v - col[i] * row[j]) / scale;
        res += d * d;
        fro += (v / scale) * (v / scale);
    }
    let (kh, kw) = k.dim();
    let tol = kh.max(kw) as f64 * f64::EPSILON * fro.sqrt();
    (res.sqrt() <= tol).then(|| nice_scale(col, row))
}

/// If the kernel is exactly rank 1 (within tolerance): `(col, row)` with `K = col ⊗ row`.
///
/// Found first by an exact method: the column and row through the largest entry, checked
/// against every entry (for integer kernels such as Sobel, Scharr or Prewitt the factors are
/// primitive integer vectors verified in exact integer arithmetic: Sobel-x gives `[1,2,1]`,
/// `[1,0,-1]`); otherwise by the SVD's numerical rank (see [`factorize`]). Real-valued factors
/// are scaled so that `row` sums to 1 when both factors have a nonzero sum (a Gaussian gives
/// its two normalised 1D kernels), else to equal norms; the first nonzero entry of `col` is
/// positive. `None` for kernels of any other rank, and for empty or non-finite kernels.
pub fn rank1(kernel: ArrayView2<f64>) -> Option<(Vec<f64>, Vec<f64>)> {
    check_kernel(kernel).ok()?;
    if let Some(f) = ratio_rank1(kernel) {
        return Some(f);
    }
    let f = factorize(kernel).ok()?;
    if f.rank == 1 {
        f.terms.into_iter().next().map(|t| (t.col, t.row))
    } else {
        None
    }
}

fn build(kernel: ArrayView2<f64>, keep: Option<usize>) -> Result<Factorization> {
    check_kernel(kernel)?;
    let (kh, kw) = kernel.dim();
    if let Some(r) = keep {
        if r == 0 {
            return Err(ConvError::Zero { what: "rank" });
        }
        if r > kh.min(kw) {
            return Err(ConvError::Unsupported(format!(
                "rank {r} is more than a {kh}x{kw} kernel can have (at most {})",
                kh.min(kw)
            )));
        }
    }
    let d = svd(kernel)?;
    let tolerance = kh.max(kw) as f64 * f64::EPSILON * d.sigma[0];
    let exact = ratio_rank1(kernel);
    // The exact test bounds σ₂ (≤ its residual ≤ the tolerance), so it decides rank 1 even
    // when the SVD's rounding puts σ₂ a hair above the tolerance.
    let rank = if exact.is_some() {
        1
    } else {
        d.sigma.iter().filter(|&&s| s > tolerance).count()
    };
    let n = keep.map_or(rank, |r| r.min(rank));
    let terms = if rank == 1 && n == 1 {
        let (col, row) = exact.unwrap_or_else(|| {
            let s = d.sigma[0];
            nice_scale(d.u[0].iter().map(|x| x * s).collect(), d.v[0].clone())
        });
        vec![Rank1Term { col, row }]
    } else {
        (0..n)
            .map(|i| {
                let s = d.sigma[i].sqrt();
                let mut col: Vec<f64> = d.u[i].iter().map(|x| x * s).collect();
                let mut row: Vec<f64> = d.v[i].iter().map(|x| x * s).collect();
                fix_sign(&mut col, &mut row);
                Rank1Term { col, row }
            })
            .collect()
    };
    Ok(Factorization {
        singular_values: d.sigma,
        rank,
        terms,
        kernel: kernel.to_owned(),
        tolerance,
    })
}

/// Exact factorisation of a kh×kw kernel into `rank` rank-1 terms.
///
/// The numerical rank counts singular values above `max(kh, kw)·ε·σ₁` (ε = `f64::EPSILON`;
/// NumPy's `matrix_rank` rule); a kernel passing [`rank1`]'s exact test has rank 1. A rank-1
/// kernel's term is [`rank1`]'s nicely scaled pair (integer for integer kernels); higher ranks
/// use `colᵢ = √σᵢ·uᵢ`, `rowᵢ = √σᵢ·vᵢ`. A zero kernel has rank 0 and no terms.
/// Errors: empty or non-finite kernels.
pub fn factorize(kernel: ArrayView2<f64>) -> Result<Factorization> {
    build(kernel, None)
}

/// Best rank-r approximation (Eckart–Young): the first min(r, rank) SVD terms; its
/// [`Factorization::error`] equals `sqrt(Σ_{i>r} σᵢ²)` ([`Factorization::dropped_error`]).
/// Errors: r = 0, r > min(kh, kw), empty or non-finite kernels.
pub fn low_rank(kernel: ArrayView2<f64>, r: usize) -> Result<Factorization> {
    build(kernel, Some(r))
}

/// Output length of one axis: `⌊(i + p_before + p_after − d·(k−1) − 1)/s⌋ + 1` (as
/// [`crate::Geometry`]), with the errors of a [`ValidSpec`].
fn out_len(
    axis: &'static str,
    i: usize,
    pads: [usize; 2],
    k: usize,
    s: usize,
    d: usize,
) -> Result<(usize, usize)> {
    let overflow = |what| ConvError::Overflow { what };
    let ext = d
        .checked_mul(k - 1)
        .and_then(|e| e.checked_add(1))
        .ok_or(overflow("dilated kernel extent"))?;
    let padded = i
        .checked_add(pads[0])
        .and_then(|v| v.checked_add(pads[1]))
        .ok_or(overflow("padded input size"))?;
    // Border rules index with isize.
    if padded > isize::MAX as usize {
        return Err(overflow("padded input size"));
    }
    if padded < ext {
        return Err(ConvError::KernelTooLarge {
            axis,
            extent: ext,
            padded,
        });
    }
    Ok(((padded - ext) / s + 1, ext))
}

/// Columns per register block of [`weighted_rows`]: 64 f32 are 4 AVX-512, 8 AVX2 or 16 SSE
/// registers of accumulators.
const BLOCK: usize = 64;

/// `out[i] (+)= Σₜ wₜ·base[offₜ + i]` for `taps = [(offₜ, wₜ)]`: a weighted sum of shifted rows.
///
/// Register-blocked: each block of [`BLOCK`] outputs stays in registers while every tap is
/// added, so a tap costs one load per element instead of the load + load + store of an axpy
/// over the whole row. `ACC` adds to `out` instead of overwriting it. Every
/// `base[offₜ..offₜ + out.len()]` must exist.
#[inline(always)]
fn weighted_rows<const FMA: bool, const ACC: bool>(
    out: &mut [f32],
    base: &[f32],
    taps: &[(usize, f32)],
) {
    let n = out.len();
    let fma = |w: f32, x: f32, a: f32| if FMA { w.mul_add(x, a) } else { a + w * x };
    let mut i = 0;
    while i + BLOCK <= n {
        let mut acc = [0f32; BLOCK];
        if ACC {
            acc.copy_from_slice(&out[i..i + BLOCK]);
        }
        for &(off, w) in taps {
            let src = &base[off + i..off + i + BLOCK];
            for (a, &x) in acc.iter_mut().zip(src) {
                *a = fma(w, x, *a);
            }
        }
        out[i..i + BLOCK].copy_from_slice(&acc);
        i += BLOCK;
    }
    let tail = &mut out[i..];
    if !ACC {
        tail.fill(0.0);
    }
    for &(off, w) in taps {
        let src = &base[off + i..off + n];
        for (a, &x) in tail.iter_mut().zip(src) {
            *a = fma(w, x, *a);
        }
    }
}

/// Everything the row blocks of [`conv2d_two_pass`] share, resolved once.
struct TwoPass {
    terms: Vec<(Vec<f32>, Vec<f32>)>,
    border: Border,
    h: usize,
    w: usize,
    ow: usize,
    top: usize,
    left: usize,
    stride: [usize; 2],
    dilation: [usize; 2],
    /// Length of the padded row the horizontal pass reads: (ow − 1)·s_w + d_w·(kw − 1) + 1.
    needed_w: usize,
    /// Padded column j reads vertical-pass column `col_src[j]` (None: a zero).
    col_src: Vec<Option<usize>>,
    rows_per_block: usize,
}

impl TwoPass {
    /// Output rows `b·rows_per_block ..` of one plane into `yblock` (zeroed, whole rows).
    #[inline(always)]
    fn block<const FMA: bool>(&self, xplane: &[f32], yblock: &mut [f32], b: usize) {
        let (w, ow, left, needed_w) = (self.w, self.ow, self.left, self.needed_w);
        let [sh, sw] = self.stride;
        let [dh, dw] = self.dilation;
        // Usually every input column lands inside the needed padded row, and the vertical pass
        // writes straight into it; otherwise (a large left pad or stride) it goes via `vbuf`.
        let direct = left + w <= needed_w;
        let interior = left.min(needed_w)..(left + w).min(needed_w);
        let mut vbuf = vec![0f32; if direct { 0 } else { w }];
        let mut prow = vec![0f32; needed_w];
        let mut taps: Vec<(usize, f32)> =
            Vec::with_capacity(self.terms.first().map_or(0, |t| t.0.len().max(t.1.len())));
        for (r, yrow) in yblock.chunks_mut(ow).enumerate() {
            let oy = b * self.rows_per_block + r;
            for (t, (col, row)) in self.terms.iter().enumerate() {
                // Vertical pass over all w input columns of output row oy: the input rows the
                // nonzero taps read (a row outside a zeros border contributes nothing).
                taps.clear();
                for (ky, &cv) in col.iter().enumerate() {
                    // Cannot wrap: padded sizes were checked to fit in isize.
                    let iy = (oy * sh + ky * dh) as isize - self.top as isize;
                    if let (true, Some(src)) = (cv != 0.0, self.border.source(iy, self.h)) {
                        taps.push((src * w, cv));
                    }
                }
                let v = if direct {
                    &mut prow[left..left + w]
                } else {
                    &mut vbuf[..]
                };
                weighted_rows::<FMA, false>(v, xplane, &taps);
                // Horizontal border: complete the padded row of the vertical result.
                if direct {
                    for j in (0..left).chain(left + w..needed_w) {
                        prow[j] = self.col_src[j].map_or(0.0, |s| prow[left + s]);
                    }
                } else {
                    if !interior.is_empty() {
                        prow[interior.clone()]
                            .copy_from_slice(&vbuf[interior.start - left..interior.end - left]);
                    }
                    for j in (0..interior.start).chain(interior.end..needed_w) {
                        prow[j] = self.col_src[j].map_or(0.0, |s| vbuf[s]);
                    }
                }
                // Horizontal pass; the first term overwrites the (zeroed) output row.
                if sw == 1 {
                    taps.clear();
                    taps.extend(
                        row.iter()
                            .enumerate()
                            .filter(|&(_, &rv)| rv != 0.0)
                            .map(|(kx, &rv)| (kx * dw, rv)),
                    );
                    if t == 0 {
                        weighted_rows::<FMA, false>(yrow, &prow, &taps);
                    } else {
                        weighted_rows::<FMA, true>(yrow, &prow, &taps);
                    }
                } else {
                    for (kx, &rv) in row.iter().enumerate() {
                        if rv == 0.0 {
                            continue;
                        }
                        let off = kx * dw;
                        for (o, yv) in yrow.iter_mut().enumerate() {
                            let xv = prow[off + o * sw];
                            *yv = if FMA {
                                rv.mul_add(xv, *yv)
                            } else {
                                *yv + rv * xv
                            };
                        }
                    }
                }
            }
        }
    }

    /// [`TwoPass::block`] compiled for the instruction set `isa` (checked available).
    fn block_isa(&self, isa: Isa, xplane: &[f32], yblock: &mut [f32], b: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512(p: &TwoPass, x: &[f32], y: &mut [f32], b: usize) {
                p.block::<true>(x, y, b)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(p: &TwoPass, x: &[f32], y: &mut [f32], b: usize) {
                p.block::<true>(x, y, b)
            }
            match isa {
                // SAFETY: `conv2d_two_pass_with` checked `isa.available()`, i.e. that this CPU
                // has AVX-512F; the body is safe Rust compiled with those features.
                Isa::Avx512 => return unsafe { avx512(self, xplane, yblock, b) },
                // SAFETY: as above, for AVX2 + FMA.
                Isa::Avx2 => return unsafe { avx2(self, xplane, yblock, b) },
                Isa::Scalar => {}
            }
        }
        let _ = isa;
        self.block::<false>(xplane, yblock, b)
    }
}

/// Runs a factorised kernel on every channel of an NCHW tensor as 1D passes: for each term a
/// vertical pass with `col`, then a horizontal pass with `row`, the terms summed.
///
/// Semantics: a depthwise convolution (groups = C, C → C) whose every channel has the weight
/// `f.reconstruct()`, i.e. PyTorch's cross-correlation
/// `y[n,c,oy,ox] = Σ K[ky,kx]·x̃[n,c, oy·s_h + ky·d_h − top, ox·s_w + kx·d_w − left]`, where
/// `x̃` extends x by `border` ([`Border::source`], which is defined for any padding, also pads
/// larger than the input: callers that want PyTorch's limits use [`conv2d_two_pass_spec`]).
/// `pad` is `[top, bottom, left, right]`; stride and dilation are `[h, w]`; the output size is
/// that of [`crate::Geometry`].
///
/// Cost per output cell: `terms·(kh·w/ow + kw)` multiply-adds (the vertical pass runs over
/// every input column). Accumulates in f32 (fused multiply-adds on AVX2/AVX-512, detected at
/// run time); zero taps are skipped. The inner loops run along contiguous rows and are
/// vectorised by the compiler; rayon splits the work over channels and blocks of output rows.
///
/// Errors: zero-sized input, stride or dilation; a kernel extent larger than the padded input;
/// sizes that overflow; terms whose lengths differ from the kernel shape or are non-finite.
pub fn conv2d_two_pass(
    x: ArrayView4<f32>,
    f: &Factorization,
    pad: [usize; 4],
    border: Border,
    stride: [usize; 2],
    dilation: [usize; 2],
) -> Result<Array4<f32>> {
    conv2d_two_pass_with(Isa::best(), x, f, pad, border, stride, dilation)
}

/// [`conv2d_two_pass`] with a chosen instruction set (for tests and benchmarks); an `isa` this
/// CPU lacks is an [`ConvError::AlgorithmUnavailable`] error.
pub fn conv2d_two_pass_with(
    isa: Isa,
    x: ArrayView4<f32>,
    f: &Factorization,
    pad: [usize; 4],
    border: Border,
    stride: [usize; 2],
    dilation: [usize; 2],
) -> Result<Array4<f32>> {
    if !isa.available() {
        return Err(ConvError::AlgorithmUnavailable {
            algo: "separable",
            why: format!("this CPU lacks the {isa:?} instruction set"),
        });
    }
    let (n, c, h, w) = x.dim();
    for (v, what) in [
        (n, "batch size"),
        (c, "channels"),
        (h, "input height"),
        (w, "input width"),
        (stride[0], "stride height"),
        (stride[1], "stride width"),
        (dilation[0], "dilation height"),
        (dilation[1], "dilation width"),
    ] {
        if v == 0 {
            return Err(ConvError::Zero { what });
        }
    }
    let [kh, kw] = f.shape();
    for t in &f.terms {
        for (what, v, len) in [("factor col", &t.col, kh), ("factor row", &t.row, kw)] {
            if v.len() != len {
                return Err(ConvError::ShapeMismatch {
                    what,
                    got: vec![v.len()],
                    expected: vec![len],
                });
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(ConvError::NonFinite { what });
            }
        }
    }
    let (oh, _) = out_len("height", h, [pad[0], pad[1]], kh, stride[0], dilation[0])?;
    let (ow, ext_w) = out_len("width", w, [pad[2], pad[3]], kw, stride[1], dilation[1])?;
    // A Vec holds at most isize::MAX bytes.
    [n, c, oh, ow, std::mem::size_of::<f32>()]
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .filter(|&bytes| bytes <= isize::MAX as usize)
        .ok_or(ConvError::Overflow {
            what: "output size",
        })?;
    let needed_w = (ow - 1) * stride[1] + ext_w;
    let plan = TwoPass {
        terms: f
            .terms
            .iter()
            .map(|t| {
                let v = |a: &[f64]| a.iter().map(|&v| v as f32).collect::<Vec<f32>>();
                (v(&t.col), v(&t.row))
            })
            .collect(),
        border,
        h,
        w,
        ow,
        top: pad[0],
        left: pad[2],
        stride,
        dilation,
        needed_w,
        col_src: (0..needed_w)
            .map(|j| border.source(j as isize - pad[2] as isize, w))
            .collect(),
        rows_per_block: oh.div_ceil(16).clamp(1, 64),
    };

    let x = x.as_standard_layout();
    let xs = x.as_slice().ok_or(ConvError::Unsupported(
        "input is not contiguous after conversion".into(),
    ))?;
    let mut y = Array4::<f32>::zeros((n, c, oh, ow));
    if plan.terms.is_empty() {
        return Ok(y); // zero kernel
    }
    let ys = y
        .as_slice_mut()
        .ok_or(ConvError::Unsupported("output is not contiguous".into()))?;
    ys.par_chunks_mut(oh * ow)
        .zip(xs.par_chunks(h * w))
        .for_each(|(yplane, xplane)| {
            yplane
                .par_chunks_mut(plan.rows_per_block * ow)
                .enumerate()
                .for_each(|(b, yblock)| plan.block_isa(isa, xplane, yblock, b));
        });
    Ok(y)
}

/// [`conv2d_two_pass`] for a depthwise layer given as a spec: `spec` must be a direct
/// convolution with groups = in_channels = out_channels and kernel = `f.shape()` (weight
/// `(C, 1, kh, kw)`, every channel `f.reconstruct()`). Padding rules (`same`, TensorFlow `SAME`),
/// the padding mode and PyTorch's border limits are resolved by [`ValidSpec::geometry`]; the
/// optional bias (C values) is added per channel, as in [`crate::reference::forward`].
pub fn conv2d_two_pass_spec(
    spec: &ValidSpec,
    x: ArrayView4<f32>,
    f: &Factorization,
    bias: Option<ArrayView1<f32>>,
) -> Result<Array4<f32>> {
    if spec.is_transposed()
        || spec.groups() != spec.in_channels()
        || spec.out_channels() != spec.in_channels()
    {
        return Err(ConvError::AlgorithmUnavailable {
            algo: "separable",
            why: "the two-pass path runs depthwise layers with groups = in = out channels only"
                .into(),
        });
    }
    let [kh, kw] = f.shape();
    let g = check_operands(
        spec,
        x.shape(),
        &[spec.in_channels(), 1, kh, kw],
        bias.map(|b| b.len()),
    )?;
    let mut y = conv2d_two_pass(
        x,
        f,
        g.pad,
        Border::from(spec.padding_mode()),
        spec.stride(),
        spec.dilation(),
    )?;
    if let Some(b) = bias {
        for (k, mut plane) in y.axis_iter_mut(Axis(1)).enumerate() {
            plane += b[k];
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::border;
    use crate::reference;
    use crate::spec::{ConvSpec, PaddingMode};
    use ndarray::{array, Array1};
    use proptest::prelude::*;

    const BORDERS: [Border; 5] = [
        Border::Zeros,
        Border::Reflect101,
        Border::Reflect,
        Border::Replicate,
        Border::Circular,
    ];

    /// Deterministic values in [-1, 1) (a 64-bit LCG; no rand dependency needed).
    fn noise(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    fn random_kernel(kh: usize, kw: usize, seed: u64) -> Array2<f64> {
        let mut r = noise(seed);
        Array2::from_shape_fn((kh, kw), |_| r())
    }

    fn random_input(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f32> {
        let mut r = noise(seed);
        Array4::from_shape_fn(shape, |_| r() as f32)
    }

    fn gauss1d(sigma: f64, size: usize) -> Vec<f64> {
        let c = (size as f64 - 1.0) / 2.0;
        let g: Vec<f64> = (0..size)
            .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp())
            .collect();
        let s: f64 = g.iter().sum();
        g.into_iter().map(|v| v / s).collect()
    }

    fn outer(c: &[f64], r: &[f64]) -> Array2<f64> {
        Array2::from_shape_fn((c.len(), r.len()), |(i, j)| c[i] * r[j])
    }

    /// A Gaussian built directly in 2D, exp(−(x²+y²)/2σ²) normalised: not bit-for-bit an outer
    /// product, as image tools often build it.
    fn gauss2d(sigma: f64, size: usize) -> Array2<f64> {
        let c = (size as f64 - 1.0) / 2.0;
        let k = Array2::from_shape_fn((size, size), |(i, j)| {
            let d2 = (i as f64 - c).powi(2) + (j as f64 - c).powi(2);
            (-d2 / (2.0 * sigma * sigma)).exp()
        });
        let s = k.sum();
        k / s
    }

    fn assert_close_vec(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    /// Every instruction set this CPU can run the two-pass kernel with.
    fn isas() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

    fn max_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
        a.iter()
            .zip(b.iter())
            .fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn integer_edge_kernels_have_integer_factors() {
        let sobel_x = array![[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]];
        let sobel_y = sobel_x.t().to_owned();
        let scharr_x = array![[3.0, 0.0, -3.0], [10.0, 0.0, -10.0], [3.0, 0.0, -3.0]];
        let prewitt_x = array![[1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [1.0, 0.0, -1.0]];
        let prewitt_y = prewitt_x.t().to_owned();
        let cases: [(&Array2<f64>, [f64; 3], [f64; 3]); 5] = [
            (&sobel_x, [1.0, 2.0, 1.0], [1.0, 0.0, -1.0]),
            (&sobel_y, [1.0, 0.0, -1.0], [1.0, 2.0, 1.0]),
            (&scharr_x, [3.0, 10.0, 3.0], [1.0, 0.0, -1.0]),
            (&prewitt_x, [1.0, 1.0, 1.0], [1.0, 0.0, -1.0]),
            (&prewitt_y, [1.0, 0.0, -1.0], [1.0, 1.0, 1.0]),
        ];
        for (k, col, row) in cases {
            assert_eq!(rank1(k.view()), Some((col.to_vec(), row.to_vec())), "{k}");
            let f = factorize(k.view()).unwrap();
            assert_eq!(f.rank, 1);
            assert_eq!(f.terms.len(), 1);
            assert_eq!(f.terms[0].col, col.to_vec());
            assert_eq!(f.terms[0].row, row.to_vec());
            assert_eq!(f.reconstruct(), *k);
            assert_eq!(f.error(), 0.0);
            assert_eq!((f.weights_2d(), f.weights_separable()), (9, 6));
            assert!(f.separable_is_cheaper());
        }
        // A negated kernel keeps the first col entry positive; the sign moves to the row.
        let neg = -&sobel_x;
        assert_eq!(
            rank1(neg.view()),
            Some((vec![1.0, 2.0, 1.0], vec![-1.0, 0.0, 1.0]))
        );
        // Content (a common factor) lands in the row: 2·[1,1]ᵀ[1,1].
        let two = array![[2.0, 2.0], [2.0, 2.0]];
        assert_eq!(rank1(two.view()), Some((vec![1.0, 1.0], vec![2.0, 2.0])));
    }

    #[test]
    fn gaussians_are_rank_one_with_their_1d_kernels() {
        for size in [1, 2, 3, 4, 5, 7, 9, 15, 31] {
            for sigma in [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.3, 5.0, 10.0] {
                let g = gauss1d(sigma, size);
                let k = outer(&g, &g);
                let (col, row) = rank1(k.view()).unwrap_or_else(|| panic!("{size} {sigma}"));
                assert_close_vec(&col, &g, 1e-15);
                assert_close_vec(&row, &g, 1e-15);
                let f = factorize(k.view()).unwrap();
                assert_eq!(f.rank, 1, "size {size} sigma {sigma}");
                assert!(f.error() <= 1e-15);
                // Built directly in 2D (not an exact outer product): still rank 1.
                let k2 = gauss2d(sigma, size);
                let f2 = factorize(k2.view()).unwrap();
                assert_eq!(f2.rank, 1, "2D-built size {size} sigma {sigma}");
                assert!(max_diff(&f2.reconstruct(), &k2) <= 1e-15);
                let (c2, r2) = rank1(k2.view()).unwrap();
                assert_close_vec(&c2, &g, 1e-14);
                assert_close_vec(&r2, &g, 1e-14);
            }
        }
        // Anisotropic Gaussian, non-square.
        let (gc, gr) = (gauss1d(0.7, 3), gauss1d(2.5, 9));
        let k = outer(&gc, &gr);
        let (c, r) = rank1(k.view()).unwrap();
        assert_close_vec(&c, &gc, 1e-15);
        assert_close_vec(&r, &gr, 1e-15);
    }

    #[test]
    fn boxes_are_rank_one() {
        for n in 1..=9 {
            for m in 1..=9 {
                let ones = Array2::<f64>::ones((n, m));
                assert_eq!(rank1(ones.view()), Some((vec![1.0; n], vec![1.0; m])));
                let mean = &ones / (n * m) as f64;
                let (c, r) = rank1(mean.view()).unwrap();
                assert_close_vec(&c, &vec![1.0 / n as f64; n], 1e-15);
                assert_close_vec(&r, &vec![1.0 / m as f64; m], 1e-15);
                let f = factorize(mean.view()).unwrap();
                assert_eq!(f.rank, 1);
                assert_eq!(
                    f.weights_separable() < f.weights_2d(),
                    n + m < n * m,
                    "{n}x{m}"
                );
            }
        }
        let big = Array2::<f64>::ones((31, 31)) / 961.0;
        assert_eq!(factorize(big.view()).unwrap().rank, 1);
    }

    #[test]
    fn laplacians_are_rank_two() {
        let l4 = array![[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]];
        let l8 = array![[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]];
        for k in [l4, l8] {
            assert_eq!(rank1(k.view()), None);
            let f = factorize(k.view()).unwrap();
            assert_eq!(f.rank, 2, "{k}");
            assert_eq!(f.terms.len(), 2);
            assert!(f.is_exact());
            assert!(max_diff(&f.reconstruct(), &k) < 1e-14);
            assert!(f.error() < 1e-14);
            assert_eq!(f.weights_separable(), 12);
            assert!(!f.separable_is_cheaper());
            let one = low_rank(k.view(), 1).unwrap();
            assert_eq!(one.terms.len(), 1);
            assert!(!one.is_exact());
            assert!((one.error() - f.singular_values[1]).abs() < 1e-12);
        }
    }

    #[test]
    fn random_kernels_are_full_rank_and_low_rank_error_is_eckart_young() {
        for (seed, (kh, kw)) in [(7, 7), (5, 3), (3, 8), (1, 6), (6, 1), (11, 11)]
            .into_iter()
            .enumerate()
        {
            let k = random_kernel(kh, kw, seed as u64 + 1);
            let f = factorize(k.view()).unwrap();
            assert_eq!(f.rank, kh.min(kw), "{kh}x{kw}");
            assert_eq!(f.singular_values.len(), kh.min(kw));
            assert!(f.singular_values.windows(2).all(|w| w[0] >= w[1]));
            assert!(max_diff(&f.reconstruct(), &k) < 1e-13);
            for r in 1..=kh.min(kw) {
                let a = low_rank(k.view(), r).unwrap();
                assert_eq!(a.terms.len(), r);
                assert_eq!(a.rank, f.rank);
                let dropped: f64 = f.singular_values[r..].iter().map(|s| s * s).sum();
                assert!(
                    (a.error() - dropped.sqrt()).abs() < 1e-12,
                    "{kh}x{kw} r={r}"
                );
                assert!((a.error() - a.dropped_error()).abs() < 1e-12);
                // Each term has k entries on each side.
                assert!(a
                    .terms
                    .iter()
                    .all(|t| t.col.len() == kh && t.row.len() == kw));
            }
        }
    }

    #[test]
    fn low_rank_beyond_the_rank_is_exact() {
        let k = array![[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]];
        let a = low_rank(k.view(), 3).unwrap();
        assert_eq!(a.terms.len(), 1);
        assert_eq!(a.error(), 0.0);
        assert_eq!(a.terms[0].col, vec![1.0, 2.0, 1.0]);
    }

    #[test]
    fn zero_kernel_has_rank_zero() {
        let k = Array2::<f64>::zeros((3, 4));
        assert_eq!(rank1(k.view()), None);
        let f = factorize(k.view()).unwrap();
        assert_eq!(f.rank, 0);
        assert!(f.terms.is_empty());
        assert_eq!(f.singular_values, vec![0.0; 3]);
        assert_eq!(f.reconstruct(), k);
        let x = random_input((1, 2, 5, 6), 3);
        let y = conv2d_two_pass(x.view(), &f, [1; 4], Border::Reflect101, [1, 1], [1, 1]).unwrap();
        assert_eq!(y, Array4::zeros((1, 2, 5, 5)));
    }

    #[test]
    fn bad_kernels_are_errors() {
        let empty = Array2::<f64>::zeros((0, 3));
        assert!(matches!(
            factorize(empty.view()),
            Err(ConvError::Zero { .. })
        ));
        assert_eq!(rank1(empty.view()), None);
        let empty_w = Array2::<f64>::zeros((3, 0));
        assert!(low_rank(empty_w.view(), 1).is_err());
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut k = Array2::<f64>::ones((3, 3));
            k[[1, 2]] = bad;
            assert!(matches!(
                factorize(k.view()),
                Err(ConvError::NonFinite { .. })
            ));
            assert!(low_rank(k.view(), 1).is_err());
            assert_eq!(rank1(k.view()), None);
        }
        let k = Array2::<f64>::ones((3, 5));
        assert!(matches!(low_rank(k.view(), 0), Err(ConvError::Zero { .. })));
        assert!(low_rank(k.view(), 4).is_err());
        assert!(low_rank(k.view(), 3).is_ok());
    }

    #[test]
    fn extreme_magnitudes_do_not_panic() {
        for s in [1e-300, 1e300, f64::MAX / 4.0, f64::MIN_POSITIVE] {
            let k = random_kernel(4, 4, 9) * s;
            match factorize(k.view()) {
                Ok(f) => {
                    assert_eq!(f.rank, 4, "scale {s}");
                    let a = low_rank(k.view(), 2).unwrap();
                    let (e, d) = (a.error(), a.dropped_error());
                    assert!(
                        e.is_finite() && e > 0.0 && (e - d).abs() <= 1e-10 * d,
                        "{e} {d}"
                    );
                }
                Err(e) => assert!(matches!(e, ConvError::Overflow { .. })),
            }
            let r = outer(&[1.0, 2.0, 3.0], &[0.5, -1.0]) * s;
            assert!(rank1(r.view()).is_some(), "scale {s}");
        }
    }

    /// The oracle: the depthwise 2D conv with weight = reconstruct() per channel, the border
    /// applied by padding first (so Border::Reflect is covered too).
    fn oracle(
        x: &Array4<f32>,
        f: &Factorization,
        pad: [usize; 4],
        b: Border,
        stride: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<Array4<f32>> {
        let c = x.dim().1;
        let [kh, kw] = f.shape();
        let k = f.reconstruct().mapv(|v| v as f32);
        let w = Array4::from_shape_fn((c, 1, kh, kw), |(_, _, i, j)| k[[i, j]]);
        let xp = border::pad(x.view(), pad, b);
        let spec = ConvSpec::conv2d(c, c, [kh, kw])
            .groups(c)
            .stride(stride)
            .dilation(dilation)
            .bias(false)
            .build()?;
        reference::forward(&spec, xp.view(), w.view(), None)
    }

    fn assert_close4(got: &Array4<f32>, want: &Array4<f32>, f: &Factorization, what: &str) {
        assert_eq!(got.dim(), want.dim(), "{what}");
        let l1: f64 = f.kernel().iter().map(|v| v.abs()).sum();
        let tol = 1e-5 * (1.0 + l1) as f32;
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() <= tol, "{what}: {a} vs {b} (tol {tol})");
        }
    }

    fn test_kernels() -> Vec<(&'static str, Array2<f64>)> {
        vec![
            (
                "sobel-x",
                array![[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]],
            ),
            ("gauss5", gauss2d(1.2, 5)),
            ("box3x4", Array2::ones((3, 4)) / 12.0),
            ("box7x1", Array2::ones((7, 1)) / 7.0),
            (
                "laplacian",
                array![[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]],
            ),
            ("random5x3", random_kernel(5, 3, 42)),
        ]
    }

    /// The exact factorisations of [`test_kernels`] plus low-rank approximations (whose
    /// reconstruction is the kernel the two passes must compute).
    fn test_factorizations() -> Vec<(String, Factorization)> {
        let mut v: Vec<(String, Factorization)> = test_kernels()
            .into_iter()
            .map(|(name, k)| (name.to_string(), factorize(k.view()).unwrap()))
            .collect();
        let r = random_kernel(7, 7, 3);
        for rank in [1, 2] {
            v.push((
                format!("random7x7-rank{rank}"),
                low_rank(r.view(), rank).unwrap(),
            ));
        }
        v
    }

    #[test]
    fn two_pass_equals_depthwise_2d_for_every_border_stride_dilation() {
        let shapes = [(2, 3, 9, 11), (1, 2, 7, 6), (1, 1, 5, 13), (1, 1, 1, 8)];
        let pads = [[0, 0, 0, 0], [1, 1, 1, 1], [2, 0, 1, 3]];
        let mut checked = 0;
        for (name, f) in test_factorizations() {
            for (si, &shape) in shapes.iter().enumerate() {
                let x = random_input(shape, si as u64);
                for pad in pads {
                    for b in BORDERS {
                        for stride in [[1, 1], [2, 3]] {
                            for dilation in [[1, 1], [2, 1]] {
                                let what = format!(
                                    "{name} {shape:?} {pad:?} {b:?} s{stride:?} d{dilation:?}"
                                );
                                let want = oracle(&x, &f, pad, b, stride, dilation);
                                for isa in isas() {
                                    let got = conv2d_two_pass_with(
                                        isa,
                                        x.view(),
                                        &f,
                                        pad,
                                        b,
                                        stride,
                                        dilation,
                                    );
                                    let what = format!("{what} {isa:?}");
                                    match &want {
                                        Ok(want) => {
                                            assert_close4(&got.unwrap(), want, &f, &what);
                                            checked += 1;
                                        }
                                        Err(e) => assert_eq!(&got.unwrap_err(), e, "{what}"),
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 500, "{checked}");
    }

    #[test]
    fn two_pass_spec_matches_reference_forward_with_padding_modes() {
        let modes = [
            PaddingMode::Zeros,
            PaddingMode::Reflect,
            PaddingMode::Replicate,
            PaddingMode::Circular,
        ];
        let x = random_input((2, 3, 8, 9), 11);
        let bias = Array1::from(vec![0.5f32, -1.0, 2.0]);
        let mut checked = 0;
        for (name, k) in test_kernels() {
            let f = factorize(k.view()).unwrap();
            let (kh, kw) = k.dim();
            let w = Array4::from_shape_fn((3, 1, kh, kw), |(_, _, i, j)| k[[i, j]] as f32);
            for mode in modes {
                for pad in [[1, 1, 2, 2], [0, 2, 3, 1], [8, 8, 0, 0]] {
                    for (stride, dilation) in [([1, 1], [1, 1]), ([2, 1], [1, 2]), ([1, 3], [3, 1])]
                    {
                        let spec = ConvSpec::conv2d(3, 3, [kh, kw])
                            .groups(3)
                            .padding_sides(pad)
                            .padding_mode(mode)
                            .stride(stride)
                            .dilation(dilation)
                            .build()
                            .unwrap();
                        let what = format!("{name} {mode} {pad:?} s{stride:?} d{dilation:?}");
                        let got = conv2d_two_pass_spec(&spec, x.view(), &f, Some(bias.view()));
                        match reference::forward(&spec, x.view(), w.view(), Some(bias.view())) {
                            Ok(want) => {
                                assert_close4(&got.unwrap(), &want, &f, &what);
                                checked += 1;
                            }
                            Err(e) => assert_eq!(got.unwrap_err(), e, "{what}"),
                        }
                    }
                }
            }
        }
        assert!(checked > 150, "{checked}");
        // 'same' padding rules, resolved by the spec.
        let k = gauss2d(1.0, 5);
        let f = factorize(k.view()).unwrap();
        let w = Array4::from_shape_fn((3, 1, 5, 5), |(_, _, i, j)| k[[i, j]] as f32);
        for (rule, stride, dims) in [
            (crate::Padding::Same, 1, (2, 3, 8, 9)),
            (crate::Padding::SameTf, 2, (2, 3, 4, 5)),
            (crate::Padding::Valid, 1, (2, 3, 4, 5)),
        ] {
            let spec = ConvSpec::conv2d(3, 3, 5)
                .groups(3)
                .padding_rule(rule)
                .stride(stride)
                .padding_mode(PaddingMode::Replicate)
                .bias(false)
                .build()
                .unwrap();
            let y = conv2d_two_pass_spec(&spec, x.view(), &f, None).unwrap();
            assert_eq!(y.dim(), dims, "{rule:?}");
            let want = reference::forward(&spec, x.view(), w.view(), None).unwrap();
            assert_close4(&y, &want, &f, &format!("{rule:?}"));
        }
    }

    #[test]
    fn two_pass_spec_rejects_non_depthwise_layers() {
        let f = factorize(Array2::ones((3, 3)).view()).unwrap();
        let x = random_input((1, 2, 6, 6), 1);
        let dense = ConvSpec::conv2d(2, 2, 3).build().unwrap();
        assert!(conv2d_two_pass_spec(&dense, x.view(), &f, None).is_err());
        let mult = ConvSpec::conv2d(2, 4, 3).groups(2).build().unwrap();
        assert!(conv2d_two_pass_spec(&mult, x.view(), &f, None).is_err());
        let wrong_kernel = ConvSpec::conv2d(2, 2, 5).groups(2).build().unwrap();
        assert!(matches!(
            conv2d_two_pass_spec(&wrong_kernel, x.view(), &f, None),
            Err(ConvError::ShapeMismatch { .. })
        ));
        let no_bias = ConvSpec::conv2d(2, 2, 3)
            .groups(2)
            .bias(false)
            .build()
            .unwrap();
        let b = Array1::<f32>::zeros(2);
        assert!(conv2d_two_pass_spec(&no_bias, x.view(), &f, Some(b.view())).is_err());
    }

    #[test]
    fn two_pass_bad_operands_are_errors() {
        let mut f = factorize(Array2::ones((3, 3)).view()).unwrap();
        let x = random_input((1, 1, 4, 4), 1);
        let run = |f: &Factorization, x: &Array4<f32>, s, d| {
            conv2d_two_pass(x.view(), f, [0; 4], Border::Zeros, s, d)
        };
        assert!(matches!(
            run(&f, &x, [0, 1], [1, 1]),
            Err(ConvError::Zero { .. })
        ));
        assert!(matches!(
            run(&f, &x, [1, 1], [1, 0]),
            Err(ConvError::Zero { .. })
        ));
        assert!(matches!(
            run(&f, &x, [1, 1], [3, 1]),
            Err(ConvError::KernelTooLarge { .. })
        ));
        let empty = Array4::<f32>::zeros((1, 1, 0, 4));
        assert!(matches!(
            run(&f, &empty, [1, 1], [1, 1]),
            Err(ConvError::Zero { .. })
        ));
        assert!(matches!(
            conv2d_two_pass(
                x.view(),
                &f,
                [usize::MAX, 1, 0, 0],
                Border::Zeros,
                [1, 1],
                [1, 1]
            ),
            Err(ConvError::Overflow { .. })
        ));
        assert!(matches!(
            run(&f, &x, [1, 1], [usize::MAX, 1]),
            Err(ConvError::Overflow { .. })
        ));
        f.terms[0].row.push(1.0);
        assert!(matches!(
            run(&f, &x, [1, 1], [1, 1]),
            Err(ConvError::ShapeMismatch { .. })
        ));
        f.terms[0].row.pop();
        f.terms[0].col[0] = f64::NAN;
        assert!(matches!(
            run(&f, &x, [1, 1], [1, 1]),
            Err(ConvError::NonFinite { .. })
        ));
    }

    #[test]
    fn two_pass_takes_non_contiguous_views_and_big_pads() {
        let f = factorize(gauss2d(0.9, 3).view()).unwrap();
        let x = random_input((1, 2, 6, 8), 5);
        let xt = x.clone().permuted_axes([0, 1, 3, 2]);
        let got =
            conv2d_two_pass(xt.view(), &f, [1; 4], Border::Replicate, [1, 1], [1, 1]).unwrap();
        let want = oracle(
            &xt.as_standard_layout().to_owned(),
            &f,
            [1; 4],
            Border::Replicate,
            [1, 1],
            [1, 1],
        )
        .unwrap();
        assert_close4(&got, &want, &f, "transposed view");
        // Pads larger than the image (OpenCV-style periodic borders).
        for b in BORDERS {
            let pad = [9, 4, 11, 13];
            let got = conv2d_two_pass(x.view(), &f, pad, b, [1, 2], [2, 1]).unwrap();
            let want = oracle(&x, &f, pad, b, [1, 2], [2, 1]).unwrap();
            assert_close4(&got, &want, &f, &format!("{b:?} big pads"));
            // The needed part of the padded row lies inside the left pad only.
            let small = random_input((1, 1, 3, 3), 6);
            let pad = [0, 0, 10, 0];
            let got = conv2d_two_pass(small.view(), &f, pad, b, [1, 20], [1, 1]).unwrap();
            let want = oracle(&small, &f, pad, b, [1, 20], [1, 1]).unwrap();
            assert_eq!(got.dim(), (1, 1, 1, 1));
            assert_close4(&got, &want, &f, &format!("{b:?} left pad only"));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn prop_two_pass_equals_2d_for_rank1_kernels(
            col in prop::collection::vec(-2.0f64..2.0, 1..6),
            row in prop::collection::vec(-2.0f64..2.0, 1..6),
            c in 1usize..3, h in 1usize..12, w in 1usize..12,
            pad in prop::array::uniform4(0usize..7),
            stride in prop::array::uniform2(1usize..6),
            dilation in prop::array::uniform2(1usize..4),
            bi in 0usize..5, seed in 0u64..1000, ii in 0usize..3,
        ) {
            let k = outer(&col, &row);
            let f = factorize(k.view()).unwrap();
            prop_assert!(f.rank <= 1);
            let x = random_input((1, c, h, w), seed);
            let b = BORDERS[bi];
            let isas = isas();
            let isa = isas[ii % isas.len()];
            let got = conv2d_two_pass_with(isa, x.view(), &f, pad, b, stride, dilation);
            match oracle(&x, &f, pad, b, stride, dilation) {
                Ok(want) => {
                    let got = got.unwrap();
                    prop_assert_eq!(got.dim(), want.dim());
                    let l1: f64 = k.iter().map(|v| v.abs()).sum();
                    let tol = 1e-5 * (1.0 + l1) as f32;
                    for (a, e) in got.iter().zip(want.iter()) {
                        prop_assert!((a - e).abs() <= tol, "{} vs {}", a, e);
                    }
                }
                Err(e) => prop_assert_eq!(got.unwrap_err(), e),
            }
        }
    }
}
