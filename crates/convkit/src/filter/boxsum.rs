//! Box sums, O(1) per pixel in both directions and vectorised across columns.
//!
//! Columns first: a running column sum `S[x]` over the `kh` rows of the window (one row of
//! sums per band, updated per output row by adding the row that enters and subtracting the
//! row that leaves, read straight from the image, widened on the fly). Then each row of `S`
//! is padded by the horizontal border rule and summed over `kw` columns: by per-channel
//! prefix sums `Q` (`out[x] = Q[x + kw·C] − Q[x]`; on AVX-512 an in-register scan), or, for
//! float images off AVX-512, by a doubling tree (`L₂ₖ[x] = Lₖ[x] + Lₖ[x + k·C]`, the set
//! bits of `kw` added up: `log₂ kw` vector passes on chunks of columns that stay in L1).
//!
//! * Integer images (u8, u16) whose window sums fit in 32 bits: everything in wrapping u32
//!   arithmetic, hence exact (the true sums are below 2³²); the output is `sum · scale`
//!   rounded once from f64, the correctly rounded mean.
//! * Otherwise (f32 images, or a fractional constant border): `S` in f64 (no drift along the
//!   column); across, on AVX-512 with ≤ 8 channels, f64 per-channel prefix sums (an
//!   in-register scan) and one difference per output, else `S` rounded to f32 for the
//!   doubling tree. The two float variants differ in the last bits (both far inside the
//!   tolerances; tested against plain sums).
//!
//! The integer passes are exact on every level. The tree and column-step bodies are plain
//! safe loops (auto-vectorised inside each level's `target_feature` wrapper) of element-wise
//! operations in a fixed order, so every level gives the same bits (tested); the scans and
//! difference passes are AVX-512 intrinsics, tested against the scalar bodies.

use super::simd::Isa;
use super::Sample;

/// Output columns per horizontal chunk (the tree's buffers stay in L1).
pub(crate) const CHUNK: usize = 1024;

/// One row entering or leaving the column window: image samples, or the constant border.
#[derive(Clone, Copy)]
pub(crate) enum Row<'a, T, E> {
    /// A row of the image.
    Src(&'a [T]),
    /// A constant row (outside the image under a constant border, or nothing: zero).
    Const(E),
}

/// An element of the horizontal tree: u32 (wrapping, exact) or f32.
pub(crate) trait Lane: Copy + Default + Send + Sync {
    /// `a + b` (wrapping for integers).
    fn add(self, o: Self) -> Self;
    /// `(self · scale)` rounded to f32 (through f64).
    fn out(self, scale: f64) -> f32;
}

impl Lane for u32 {
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    #[inline(always)]
    fn out(self, scale: f64) -> f32 {
        (self as f64 * scale) as f32
    }
}

impl Lane for f32 {
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn out(self, scale: f64) -> f32 {
        (self as f64 * scale) as f32
    }
}

/// `sum[x] += add[x] − sub[x]` in wrapping u32 arithmetic; `sum` is then the row of column
/// sums that the horizontal pass reads (it lives inside the padded row).
#[inline(always)]
fn vstep_u32_body<T: Sample>(sum: &mut [u32], add: Row<T, u32>, sub: Row<T, u32>) {
    match (add, sub) {
        (Row::Src(a), Row::Src(b)) => {
            for ((s, a), b) in sum.iter_mut().zip(a).zip(b) {
                *s = s.wrapping_add(a.to_u32()).wrapping_sub(b.to_u32());
            }
        }
        (Row::Src(a), Row::Const(b)) => {
            for (s, a) in sum.iter_mut().zip(a) {
                *s = s.wrapping_add(a.to_u32()).wrapping_sub(b);
            }
        }
        (Row::Const(a), Row::Src(b)) => {
            for (s, b) in sum.iter_mut().zip(b) {
                *s = s.wrapping_add(a).wrapping_sub(b.to_u32());
            }
        }
        (Row::Const(a), Row::Const(b)) => {
            let d = a.wrapping_sub(b);
            for s in sum.iter_mut() {
                *s = s.wrapping_add(d);
            }
        }
    }
}

/// `sum[x] += add[x] − sub[x]` in f64, then (when given) `mid[x] = sum[x]` rounded to f32.
#[inline(always)]
fn vstep_f64_body<T: Sample>(
    sum: &mut [f64],
    add: Row<T, f64>,
    sub: Row<T, f64>,
    mid: Option<&mut [f32]>,
) {
    match (add, sub) {
        (Row::Src(a), Row::Src(b)) => {
            for ((s, a), b) in sum.iter_mut().zip(a).zip(b) {
                *s += a.to_f64() - b.to_f64();
            }
        }
        (Row::Src(a), Row::Const(b)) => {
            for (s, a) in sum.iter_mut().zip(a) {
                *s += a.to_f64() - b;
            }
        }
        (Row::Const(a), Row::Src(b)) => {
            for (s, b) in sum.iter_mut().zip(b) {
                *s += a - b.to_f64();
            }
        }
        (Row::Const(a), Row::Const(b)) => {
            for s in sum.iter_mut() {
                *s += a - b;
            }
        }
    }
    if let Some(mid) = mid {
        for (m, s) in mid.iter_mut().zip(sum.iter()) {
            *m = *s as f32;
        }
    }
}

/// `to[x] = from[x] + from[x + step]`, `x < to.len()`.
#[inline(always)]
fn double<E: Lane>(from: &[E], to: &mut [E], step: usize) {
    let n = to.len();
    for ((t, &a), &b) in to.iter_mut().zip(&from[..n]).zip(&from[step..step + n]) {
        *t = a.add(b);
    }
}

/// `out[x] = (Σ_{j < kw} src[x + j·c]) · scale` for `x < out.len()` (`out.len() ≤` [`CHUNK`]),
/// by the doubling tree; `a`, `b`, `acc` are scratch rows of at least
/// `CHUNK + (kw − 1)·c` elements.
#[inline(always)]
fn window_body<E: Lane>(
    src: &[E],
    kw: usize,
    c: usize,
    scratch: (&mut [E], &mut [E], &mut [E]),
    out: &mut [f32],
    scale: f64,
) {
    let n = out.len();
    let (mut x_buf, mut y_buf, acc) = scratch;
    let acc = &mut acc[..n];
    // The current level Lₖ (k = 2^b) is `src` (b = 0) or `x_buf`, valid for `len` elements.
    let mut len = n + (kw - 1) * c;
    let mut from_src = true;
    let mut have_acc = false;
    let mut off = 0;
    let mut b = 0;
    loop {
        let k = 1usize << b;
        if kw & k != 0 {
            let cur: &[E] = if from_src { src } else { x_buf };
            let l = &cur[off..off + n];
            if kw >> (b + 1) == 0 {
                // The highest set bit: finish into the output.
                if have_acc {
                    for ((o, &a), &v) in out.iter_mut().zip(acc.iter()).zip(l) {
                        *o = a.add(v).out(scale);
                    }
                } else {
                    for (o, &v) in out.iter_mut().zip(l) {
                        *o = v.out(scale);
                    }
                }
                return;
            }
            if have_acc {
                for (a, &v) in acc.iter_mut().zip(l) {
                    *a = a.add(v);
                }
            } else {
                acc.copy_from_slice(l);
                have_acc = true;
            }
            off += k * c;
        }
        // L₂ₖ[x] = Lₖ[x] + Lₖ[x + k·c].
        let next = len - k * c;
        if from_src {
            double(src, &mut x_buf[..next], k * c);
            from_src = false;
        } else {
            double(x_buf, &mut y_buf[..next], k * c);
            std::mem::swap(&mut x_buf, &mut y_buf);
        }
        len = next;
        b += 1;
    }
}

/// Scratch length for [`window`]: `CHUNK + (kw − 1)·c`.
pub(crate) fn scratch_len(kw: usize, c: usize) -> usize {
    CHUNK + (kw - 1) * c
}

/// The box's horizontal pass over one padded row of column sums:
/// `out[x] = (Σ_{j < kw} pad[x + j·c]) · scale` for `x < out.len()`, in chunks of [`CHUNK`]
/// columns.
///
/// # Panics
/// If `pad` is shorter than `out.len() + (kw − 1)·c`, `kw` is 0, a scratch row is shorter
/// than [`scratch_len`], or `isa` is not supported by this CPU.
pub(crate) fn window<E: Lane>(
    isa: Isa,
    pad: &[E],
    kw: usize,
    c: usize,
    scratch: (&mut [E], &mut [E], &mut [E]),
    out: &mut [f32],
    scale: f64,
) {
    assert!(kw > 0 && c > 0, "a kernel column and a channel");
    let halo = (kw - 1) * c;
    assert!(pad.len() >= out.len() + halo, "padded row too short");
    let need = scratch_len(kw, c);
    assert!(
        scratch.0.len() >= need && scratch.1.len() >= need && scratch.2.len() >= need,
        "scratch rows too short"
    );
    let (a, b, acc) = scratch;
    for (i, o) in out.chunks_mut(CHUNK).enumerate() {
        let x0 = i * CHUNK;
        let src = &pad[x0..x0 + o.len() + halo];
        let s = (&mut *a, &mut *b, &mut *acc);
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                assert!(Isa::Avx512.supported());
                // SAFETY: the CPU supports the features (checked above); the body is safe code.
                unsafe { x86::window_avx512(src, kw, c, s, o, scale) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                assert!(Isa::Avx2.supported());
                // SAFETY: as above.
                unsafe { x86::window_avx2(src, kw, c, s, o, scale) }
            }
            _ => window_body(src, kw, c, s, o, scale),
        }
    }
}

/// One step of the integer column sums: `sum[x] += add[x] − sub[x]` (wrapping u32).
///
/// # Panics
/// If a source row is shorter than `sum`, or `isa` is not supported by this CPU.
pub(crate) fn vstep_u32<T: Sample>(isa: Isa, sum: &mut [u32], add: Row<T, u32>, sub: Row<T, u32>) {
    for r in [add, sub] {
        if let Row::Src(s) = r {
            assert!(s.len() >= sum.len(), "source row too short");
        }
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(Isa::Avx512.supported());
            // SAFETY: the CPU supports the features (checked above); the body is safe code.
            unsafe { x86::vstep_u32_avx512(sum, add, sub) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(Isa::Avx2.supported());
            // SAFETY: as above.
            unsafe { x86::vstep_u32_avx2(sum, add, sub) }
        }
        _ => vstep_u32_body(sum, add, sub),
    }
}

/// One step of the float column sums: `sum[x] += add[x] − sub[x]` (f64), then (when given)
/// `mid[x] = sum[x]` rounded to f32.
///
/// # Panics
/// If a row is shorter than `sum`, or `isa` is not supported by this CPU.
pub(crate) fn vstep_f64<T: Sample>(
    isa: Isa,
    sum: &mut [f64],
    add: Row<T, f64>,
    sub: Row<T, f64>,
    mid: Option<&mut [f32]>,
) {
    assert!(
        mid.as_ref().is_none_or(|m| m.len() >= sum.len()),
        "output row too short"
    );
    for r in [add, sub] {
        if let Row::Src(s) = r {
            assert!(s.len() >= sum.len(), "source row too short");
        }
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(Isa::Avx512.supported());
            // SAFETY: the CPU supports the features (checked above); the body is safe code.
            unsafe { x86::vstep_f64_avx512(sum, add, sub, mid) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(Isa::Avx2.supported());
            // SAFETY: as above.
            unsafe { x86::vstep_f64_avx2(sum, add, sub, mid) }
        }
        _ => vstep_f64_body(sum, add, sub, mid),
    }
}

/// Per-channel prefix sums (wrapping u32): `q[0..c] = 0`, `q[i + c] = q[i] + a[i]` for
/// `i < a.len()`; with them a window sum is one subtraction, exact in wrapping arithmetic
/// while the true window sum is below 2³².
#[inline(always)]
fn prefix_body(a: &[u32], q: &mut [u32], c: usize, from: usize) {
    for i in from..a.len() {
        q[i + c] = q[i].wrapping_add(a[i]);
    }
}

/// `out[x] = (q[x + kw·c] − q[x]) · scale` (wrapping u32 difference, then f64).
#[inline(always)]
fn diff_body(q: &[u32], span: usize, out: &mut [f32], scale: f64) {
    let n = out.len();
    for ((o, &hi), &lo) in out.iter_mut().zip(&q[span..span + n]).zip(&q[..n]) {
        *o = hi.wrapping_sub(lo).out(scale);
    }
}

/// The integer box's horizontal pass (window `(kw, c)`: taps, channels) over one padded row
/// of column sums `pad`:
/// `out[x] = (Σ_{j < kw} pad[x + j·c]) · scale`, by per-channel prefix sums into `q` (AVX-512:
/// an in-register scan, 16 lanes, for `c ≤ 16`; else a scalar scan) and one vectorised
/// difference pass (`stream`: with non-temporal stores on AVX-512; call
/// [`super::simd::store_fence`] after).
///
/// # Panics
/// If `pad` is shorter than `out.len() + (kw − 1)·c`, `q` shorter than `pad.len() + c`,
/// `kw` or `c` is 0, or `isa` is not supported by this CPU.
pub(crate) fn window_prefix(
    isa: Isa,
    pad: &[u32],
    (kw, c): (usize, usize),
    q: &mut [u32],
    out: &mut [f32],
    scale: f64,
    stream: bool,
) {
    assert!(kw > 0 && c > 0, "a kernel column and a channel");
    let n = out.len();
    let span = kw * c;
    assert!(pad.len() + c >= n + span, "padded row too short");
    assert!(q.len() >= pad.len() + c, "prefix row too short");
    q[..c].fill(0);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(Isa::Avx512.supported());
            // SAFETY: the CPU supports AVX-512F (checked above); `prefix_avx512` reads
            // `pad[..pad.len()]` and writes `q[..pad.len() + c]`, in bounds (checked above).
            unsafe {
                if c <= 16 {
                    x86::prefix_avx512(pad, q, c);
                } else {
                    x86::prefix_scalar_avx512(pad, q, c);
                }
                x86::diff_u32_avx512(q, span, out, scale, stream);
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(Isa::Avx2.supported());
            prefix_body(pad, q, c, 0);
            // SAFETY: the CPU supports AVX2 and FMA (checked above); the body is safe code.
            unsafe { x86::diff_avx2(q, span, out, scale) }
        }
        _ => {
            prefix_body(pad, q, c, 0);
            diff_body(q, span, out, scale);
        }
    }
}

/// Whether [`window_prefix_f64`] runs on this level and channel count (AVX-512, `c ≤ 8`);
/// elsewhere float boxes use the f32 doubling tree ([`window`]).
pub(crate) fn f64_prefix_ok(isa: Isa, c: usize) -> bool {
    isa == Isa::Avx512 && (1..=8).contains(&c)
}

/// The float box's horizontal pass (window `(kw, c)`) on AVX-512 ([`f64_prefix_ok`]):
/// per-channel f64 prefix sums of the padded row of f64 column sums (in-register scan,
/// 8 lanes), then `out[x] = (q[x + kw·c] − q[x]) · scale` rounded to f32 (no f32 rounding
/// before the end).
/// `stream` writes `out` with non-temporal stores (call [`super::simd::store_fence`] after).
///
/// # Panics
/// If `pad` is shorter than `out.len() + (kw − 1)·c`, `q` shorter than `pad.len() + c`,
/// `kw` is 0, or `!f64_prefix_ok(isa, c)`.
pub(crate) fn window_prefix_f64(
    isa: Isa,
    pad: &[f64],
    (kw, c): (usize, usize),
    q: &mut [f64],
    out: &mut [f32],
    scale: f64,
    stream: bool,
) {
    assert!(kw > 0 && f64_prefix_ok(isa, c), "AVX-512, 1..=8 channels");
    let span = kw * c;
    assert!(pad.len() + c >= out.len() + span, "padded row too short");
    assert!(q.len() >= pad.len() + c, "prefix row too short");
    assert!(Isa::Avx512.supported());
    q[..c].fill(0.0);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU supports AVX-512F (checked above); `prefix_f64_avx512` reads
    // `pad[..pad.len()]` and writes `q[..pad.len() + c]`; `diff_f64_avx512` reads
    // `q[..out.len() + span]` and writes `out`: all in bounds (checked above).
    unsafe {
        x86::prefix_f64_avx512(pad, q, c);
        x86::diff_f64_avx512(q, span, out, scale, stream);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Lane, Row, Sample};

    macro_rules! level {
        ($win:ident, $vu:ident, $vf:ident, $feat:literal) => {
            /// [`super::window_body`] compiled for this level.
            ///
            /// # Safety
            /// The CPU must support the features.
            #[target_feature(enable = $feat)]
            pub unsafe fn $win<E: Lane>(
                src: &[E],
                kw: usize,
                c: usize,
                s: (&mut [E], &mut [E], &mut [E]),
                out: &mut [f32],
                scale: f64,
            ) {
                super::window_body(src, kw, c, s, out, scale)
            }

            /// [`super::vstep_u32_body`] compiled for this level.
            ///
            /// # Safety
            /// The CPU must support the features.
            #[target_feature(enable = $feat)]
            pub unsafe fn $vu<T: Sample>(sum: &mut [u32], add: Row<T, u32>, sub: Row<T, u32>) {
                super::vstep_u32_body(sum, add, sub)
            }

            /// [`super::vstep_f64_body`] compiled for this level.
            ///
            /// # Safety
            /// The CPU must support the features.
            #[target_feature(enable = $feat)]
            pub unsafe fn $vf<T: Sample>(
                sum: &mut [f64],
                add: Row<T, f64>,
                sub: Row<T, f64>,
                mid: Option<&mut [f32]>,
            ) {
                super::vstep_f64_body(sum, add, sub, mid)
            }
        };
    }

    level!(
        window_avx512,
        vstep_u32_avx512,
        vstep_f64_avx512,
        "avx512f,avx2,fma"
    );
    level!(window_avx2, vstep_u32_avx2, vstep_f64_avx2, "avx2,fma");

    /// Columns before the first 64-byte aligned output (all of them when not streaming).
    fn peel(out: &[f32], stream: bool) -> usize {
        if stream {
            ((64 - out.as_ptr() as usize % 64) % 64 / 4).min(out.len())
        } else {
            0
        }
    }

    /// `[lo, hi]` as one vector (AVX-512F only; `_mm512_insertf32x8` would need DQ).
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn join(
        lo: std::arch::x86_64::__m256,
        hi: std::arch::x86_64::__m256,
    ) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let v = _mm512_castps_pd(_mm512_castps256_ps512(lo));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(v, _mm256_castps_pd(hi)))
    }

    /// [`super::diff_body`] in AVX-512 intrinsics (the same operations: exact u32→f64,
    /// one f64 multiply, round to f32), with non-temporal stores when `stream`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `q.len() ≥ out.len() + span`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn diff_u32_avx512(
        q: &[u32],
        span: usize,
        out: &mut [f32],
        scale: f64,
        stream: bool,
    ) {
        use std::arch::x86_64::*;
        let n = out.len();
        debug_assert!(q.len() >= n + span);
        let p = peel(out, stream);
        super::diff_body(&q[..p + span], span, &mut out[..p], scale);
        let sv = _mm512_set1_pd(scale);
        let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
        let mut x = p;
        while x + 16 <= n {
            // SAFETY: x + 16 + span ≤ q.len() and x + 16 ≤ out.len(); when streaming,
            // `op + x` is 64-byte aligned (x ≥ peel, steps of 16 floats).
            let lo = _mm512_loadu_si512(qp.add(x).cast());
            let hi = _mm512_loadu_si512(qp.add(x + span).cast());
            let d = _mm512_sub_epi32(hi, lo);
            let d0 = _mm512_cvtepu32_pd(_mm512_castsi512_si256(d));
            let d1 = _mm512_cvtepu32_pd(_mm512_extracti64x4_epi64::<1>(d));
            let f0 = _mm512_cvtpd_ps(_mm512_mul_pd(d0, sv));
            let f1 = _mm512_cvtpd_ps(_mm512_mul_pd(d1, sv));
            let f = join(f0, f1);
            if stream {
                _mm512_stream_ps(op.add(x), f);
            } else {
                _mm512_storeu_ps(op.add(x), f);
            }
            x += 16;
        }
        super::diff_body(&q[x..], span, &mut out[x..], scale);
    }

    /// The f64 difference pass: `out[x] = ((q[x + span] − q[x]) · scale) as f32`, with
    /// non-temporal stores when `stream`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `q.len() ≥ out.len() + span`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn diff_f64_avx512(
        q: &[f64],
        span: usize,
        out: &mut [f32],
        scale: f64,
        stream: bool,
    ) {
        use std::arch::x86_64::*;
        let n = out.len();
        debug_assert!(q.len() >= n + span);
        let scalar = |q: &[f64], out: &mut [f32]| {
            for (x, o) in out.iter_mut().enumerate() {
                *o = ((q[x + span] - q[x]) * scale) as f32;
            }
        };
        let p = peel(out, stream);
        scalar(&q[..p + span], &mut out[..p]);
        let sv = _mm512_set1_pd(scale);
        let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
        let mut x = p;
        while x + 16 <= n {
            // SAFETY: as in `diff_u32_avx512`.
            let d0 = _mm512_sub_pd(
                _mm512_loadu_pd(qp.add(x + span)),
                _mm512_loadu_pd(qp.add(x)),
            );
            let d1 = _mm512_sub_pd(
                _mm512_loadu_pd(qp.add(x + 8 + span)),
                _mm512_loadu_pd(qp.add(x + 8)),
            );
            let f0 = _mm512_cvtpd_ps(_mm512_mul_pd(d0, sv));
            let f1 = _mm512_cvtpd_ps(_mm512_mul_pd(d1, sv));
            let f = join(f0, f1);
            if stream {
                _mm512_stream_ps(op.add(x), f);
            } else {
                _mm512_storeu_ps(op.add(x), f);
            }
            x += 16;
        }
        scalar(&q[x..], &mut out[x..]);
    }

    /// Per-channel f64 prefix sums, `q[..c]` already zero, `q[i + c] = q[i] + a[i]`: the
    /// in-register scan of [`prefix_avx512`] on 8 lanes (`1 ≤ c ≤ 8`), the tail scalar.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `1 ≤ c ≤ 8` and `q.len() ≥ a.len() + c`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn prefix_f64_avx512(a: &[f64], q: &mut [f64], c: usize) {
        use std::arch::x86_64::*;
        debug_assert!((1..=8).contains(&c) && q.len() >= a.len() + c);
        let mut shifts: [(__m512i, __mmask8); 3] = [(_mm512_setzero_si512(), 0); 3];
        let mut levels = 0;
        let mut s = c;
        while s < 8 {
            let idx: [i64; 8] = std::array::from_fn(|i| (i as i64 - s as i64).max(0));
            // SAFETY: `idx` is 8 i64s; unaligned loads are allowed.
            shifts[levels] = (
                _mm512_loadu_si512(idx.as_ptr().cast()),
                (0xffu32 << s) as u8,
            );
            levels += 1;
            s *= 2;
        }
        let cidx: [i64; 8] = std::array::from_fn(|i| (8 - c + i % c) as i64);
        let cv = _mm512_loadu_si512(cidx.as_ptr().cast());
        let mut prev = _mm512_setzero_pd();
        let n = a.len();
        let (ap, qp) = (a.as_ptr(), q.as_mut_ptr());
        let mut x = 0;
        while x + 8 <= n {
            // SAFETY: x + 8 ≤ a.len(), and x + c + 8 ≤ q.len() (caller's contract).
            let mut v = _mm512_loadu_pd(ap.add(x));
            for &(iv, m) in &shifts[..levels] {
                v = _mm512_add_pd(v, _mm512_maskz_permutexvar_pd(m, iv, v));
            }
            v = _mm512_add_pd(v, _mm512_permutexvar_pd(cv, prev));
            _mm512_storeu_pd(qp.add(x + c), v);
            prev = v;
            x += 8;
        }
        for i in x..n {
            q[i + c] = q[i] + a[i];
        }
    }

    /// [`super::diff_body`] compiled for AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn diff_avx2(q: &[u32], span: usize, out: &mut [f32], scale: f64) {
        super::diff_body(q, span, out, scale)
    }

    /// [`super::prefix_body`] compiled for AVX-512 (channel counts over 16).
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn prefix_scalar_avx512(a: &[u32], q: &mut [u32], c: usize) {
        super::prefix_body(a, q, c, 0)
    }

    /// Per-channel prefix sums (as [`super::prefix_body`], `q[..c]` already zero) by an
    /// in-register scan: within each 16-lane vector, `v += v shifted up by s` for
    /// s = c, 2c, 4c, 8c (< 16), then the running totals of the previous vector, lane
    /// `16 − c + (i mod c)` for lane `i` (its channel's last prefix), are added; the tail
    /// runs scalar.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `1 ≤ c ≤ 16` and `q.len() ≥ a.len() + c`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn prefix_avx512(a: &[u32], q: &mut [u32], c: usize) {
        use std::arch::x86_64::*;
        debug_assert!((1..=16).contains(&c) && q.len() >= a.len() + c);
        let lanes: [i32; 16] = std::array::from_fn(|i| i as i32);
        let mut shifts: [(__m512i, __mmask16); 4] = [(_mm512_setzero_si512(), 0); 4];
        let mut levels = 0;
        let mut s = c;
        while s < 16 {
            let idx: [i32; 16] = std::array::from_fn(|i| (i as i32 - s as i32).max(0));
            // SAFETY: `idx` is 16 i32s; unaligned loads are allowed.
            let iv = _mm512_loadu_si512(idx.as_ptr().cast());
            shifts[levels] = (iv, (0xffffu32 << s) as u16);
            levels += 1;
            s *= 2;
        }
        let cidx: [i32; 16] = std::array::from_fn(|i| (16 - c + lanes[i] as usize % c) as i32);
        let cv = _mm512_loadu_si512(cidx.as_ptr().cast());
        let mut prev = _mm512_setzero_si512();
        let n = a.len();
        let (ap, qp) = (a.as_ptr(), q.as_mut_ptr());
        let mut x = 0;
        while x + 16 <= n {
            // SAFETY: x + 16 ≤ a.len(), and x + c + 16 ≤ q.len() (caller's contract).
            let mut v = _mm512_loadu_si512(ap.add(x).cast());
            for &(iv, m) in &shifts[..levels] {
                v = _mm512_add_epi32(v, _mm512_maskz_permutexvar_epi32(m, iv, v));
            }
            v = _mm512_add_epi32(v, _mm512_permutexvar_epi32(cv, prev));
            _mm512_storeu_si512(qp.add(x + c).cast(), v);
            prev = v;
            x += 16;
        }
        super::prefix_body(a, q, c, x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The doubling tree and the prefix-sum pass (AVX-512 scan for every channel count up to
    /// 16, scalar beyond) equal a plain sum for every width (set bits of `kw`), channel count
    /// and chunk boundary, on every level, bit for bit between levels.
    #[test]
    fn window_sums_match_a_plain_sum_on_every_level() {
        let mut seed = 99u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as u32
        };
        for n in [1, 7, 16, 33, CHUNK - 1, CHUNK, CHUNK + 5, 2 * CHUNK + 17] {
            for kw in [1, 2, 3, 4, 5, 7, 8, 15, 16, 31, 32, 33, 64] {
                for c in [1, 2, 3, 4, 5, 16, 17] {
                    let len = n + (kw - 1) * c;
                    let pu: Vec<u32> = (0..len).map(|_| rnd() % 70000).collect();
                    let pf: Vec<f32> = pu.iter().map(|&v| v as f32 / 7.0 - 3000.0).collect();
                    let scale = 1.0 / (kw as f64 * 3.0);
                    let sl = scratch_len(kw, c);
                    let want_u: Vec<f32> = (0..n)
                        .map(|x| {
                            let s: u64 = (0..kw).map(|j| pu[x + j * c] as u64).sum();
                            (s as f64 * scale) as f32
                        })
                        .collect();
                    let mut first_f: Option<Vec<u32>> = None;
                    for isa in Isa::available() {
                        let (mut a, mut b, mut acc) = (vec![0; sl], vec![0; sl], vec![0; sl]);
                        let mut got = vec![f32::NAN; n];
                        window(isa, &pu, kw, c, (&mut a, &mut b, &mut acc), &mut got, scale);
                        assert_eq!(got, want_u, "u32 n={n} kw={kw} c={c} {isa:?}");
                        let mut q = vec![7; len + c];
                        let mut gp = vec![f32::NAN; n];
                        window_prefix(isa, &pu, (kw, c), &mut q, &mut gp, scale, false);
                        assert_eq!(gp, want_u, "prefix n={n} kw={kw} c={c} {isa:?}");
                        // Streaming stores from a misaligned start (peeled columns).
                        let mut gs = vec![f32::NAN; n + 3];
                        window_prefix(isa, &pu, (kw, c), &mut q, &mut gs[3..], scale, true);
                        crate::filter::simd::store_fence();
                        assert_eq!(&gs[3..], &want_u[..], "stream n={n} kw={kw} c={c} {isa:?}");
                        let (mut a, mut b, mut acc) = (vec![0.0; sl], vec![0.0; sl], vec![0.0; sl]);
                        let mut gf = vec![f32::NAN; n];
                        window(isa, &pf, kw, c, (&mut a, &mut b, &mut acc), &mut gf, scale);
                        for (x, g) in gf.iter().enumerate() {
                            let e: f64 = (0..kw).map(|j| pf[x + j * c] as f64).sum::<f64>() * scale;
                            assert!(
                                (*g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()) * kw as f64,
                                "f32 n={n} kw={kw} c={c} {isa:?} x={x}: {g} vs {e}"
                            );
                        }
                        let bits: Vec<u32> = gf.iter().map(|v| v.to_bits()).collect();
                        match &first_f {
                            None => first_f = Some(bits),
                            Some(f) => assert_eq!(&bits, f, "f32 levels agree: {isa:?}"),
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512 f64 prefix path equals plain f64 sums for every channel count it takes and
    /// every tail length, with and without streaming stores.
    #[test]
    fn f64_prefix_window_matches_plain_sums() {
        if !Isa::Avx512.supported() {
            return;
        }
        let mut seed = 5u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 * 200.0 - 100.0
        };
        for n in [1, 5, 8, 15, 16, 17, 100, 1001] {
            for kw in [1, 2, 3, 7, 31] {
                for c in 1..=8 {
                    let len = n + (kw - 1) * c;
                    let pad: Vec<f64> = (0..len).map(|_| rnd()).collect();
                    let scale = 1.0 / kw as f64;
                    for (stream, skew) in [(false, 0), (true, 0), (true, 1), (true, 5)] {
                        let mut q = vec![f64::NAN; len + c];
                        let mut got = vec![f32::NAN; n + skew];
                        let o = &mut got[skew..];
                        window_prefix_f64(Isa::Avx512, &pad, (kw, c), &mut q, o, scale, stream);
                        crate::filter::simd::store_fence();
                        for (x, g) in got[skew..].iter().enumerate() {
                            let e: f64 = (0..kw).map(|j| pad[x + j * c]).sum::<f64>() * scale;
                            assert!(
                                (*g as f64 - e).abs() <= 1e-6 * (1.0 + e.abs()),
                                "n={n} kw={kw} c={c} x={x}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The column steps (every source/constant combination) agree with scalar arithmetic on
    /// every level.
    #[test]
    fn column_steps_match_scalar_on_every_level() {
        let n = 37;
        let a: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
        let b: Vec<u8> = (0..n).map(|i| (i * 91 % 256) as u8).collect();
        let af: Vec<f32> = a.iter().map(|&v| v as f32 * 0.37).collect();
        let bf: Vec<f32> = b.iter().map(|&v| v as f32 * -1.3).collect();
        for isa in Isa::available() {
            let rows_u = [Row::Src(&a[..]), Row::Const(5u32)];
            let rows_b = [Row::Src(&b[..]), Row::Const(200u32)];
            for (ia, ra) in rows_u.iter().enumerate() {
                for (ib, rb) in rows_b.iter().enumerate() {
                    let mut s: Vec<u32> = (0..n as u32).map(|i| i * 1000).collect();
                    vstep_u32(isa, &mut s, *ra, *rb);
                    for (x, v) in s.iter().enumerate() {
                        let va = if ia == 0 { a[x] as u32 } else { 5 };
                        let vb = if ib == 0 { b[x] as u32 } else { 200 };
                        assert_eq!(*v, (x as u32 * 1000).wrapping_add(va).wrapping_sub(vb));
                    }
                }
            }
            let rows_a = [Row::Src(&af[..]), Row::Const(2.5f64)];
            let rows_b = [Row::Src(&bf[..]), Row::Const(-0.25f64)];
            for (ia, ra) in rows_a.iter().enumerate() {
                for (ib, rb) in rows_b.iter().enumerate() {
                    let mut s: Vec<f64> = (0..n).map(|i| i as f64 * 0.1).collect();
                    let mut mid = vec![f32::NAN; n];
                    vstep_f64(isa, &mut s, *ra, *rb, Some(&mut mid));
                    for x in 0..n {
                        let va = if ia == 0 { af[x] as f64 } else { 2.5 };
                        let vb = if ib == 0 { bf[x] as f64 } else { -0.25 };
                        let e = x as f64 * 0.1 + (va - vb);
                        assert_eq!(s[x], e, "{isa:?}");
                        assert_eq!(mid[x], e as f32, "{isa:?}");
                    }
                }
            }
        }
    }
}
