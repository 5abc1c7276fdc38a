//! The one inner loop of every filter path, a register-blocked weighted sum of shifted rows:
//!
//! ```text
//! out[r][x] = Σ_i Σ_j w[i][j] · buf[rows[r + i] + cols[j] + x]      r < R, i < kh, j < kw
//! ```
//!
//! * horizontal pass: R = 1, `rows = [0]`, `cols[j] = j·d·C` (one padded row, shifted);
//! * vertical pass: `rows` = ring rows, `cols` = the term offsets (rank r as one pass:
//!   `w[i][t] = col_t[i]`);
//! * direct 2D: `rows` = ring rows, `cols[j] = j·d·C`.
//!
//! R output rows are computed together (R = 4 for the column stages): each loaded vector of
//! source row `s` feeds the R outputs that use it (kernel row `i = s − r`), so a kh-tap column
//! costs `kh + R − 1` loads per R outputs instead of `kh · R`; that moves the vertical and 2D
//! passes from load-bound (their rows live in L2) to FMA-bound. Along x, V vectors per row
//! (R·V accumulators ≤ 16 registers). FMAs run in the order (i, j) for every level, so
//! AVX-512, AVX2 and the scalar fallback (`f32::mul_add`) agree bit for bit (tested).

/// An instruction set level for the filter kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable code (`f32::mul_add`).
    Scalar,
    /// AVX2 + FMA, 8 lanes.
    Avx2,
    /// AVX-512F, 16 lanes.
    Avx512,
}

impl Isa {
    /// The best level this CPU supports (detected at run time).
    pub fn detect() -> Isa {
        Isa::available()[0]
    }

    /// Every level this CPU supports, best first (for tests).
    pub fn available() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            if fma && std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
            if fma {
                v.push(Isa::Avx2);
            }
        }
        v.push(Isa::Scalar);
        v
    }

    /// Whether this CPU supports the level (cheap: the detection is cached by `std`).
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Isa::Avx2.supported() && std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Short name for `--explain`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512f",
        }
    }
}

/// The taps of [`dot_block`]: source row offsets, column shifts and `kh × kw` weights.
#[derive(Debug, Clone, Copy)]
pub struct Taps<'a> {
    /// Offsets into the buffer of the `kh + R − 1` source rows.
    pub rows: &'a [usize],
    /// Column shifts, one per kernel column.
    pub cols: &'a [usize],
    /// Row-major `kh × kw` weights.
    pub weights: &'a [f32],
}

/// The largest number of output rows [`dot_block`] computes at once.
pub const MAX_ROWS: usize = 4;

/// `out[r·n + x] = Σ_i Σ_j w[i·kw + j] · buf[rows[r + i] + cols[j] + x]` for `r < R`,
/// `x < n`, where `R = out.len() / n` (1 ..= [`MAX_ROWS`]), `kw = cols.len()` and
/// `kh = rows.len() − R + 1`.
///
/// `stream` asks for non-temporal stores (for outputs much larger than the caches: they skip
/// the read-for-ownership of every output line); they are used where the rows are aligned,
/// and the caller must call [`store_fence`] before other threads read `out`.
///
/// # Panics
/// On inconsistent lengths, a read past the end of `buf`, or an `isa` this CPU lacks (a
/// programming error: use [`Isa::detect`]).
pub fn dot_block(isa: Isa, buf: &[f32], taps: &Taps, out: &mut [f32], n: usize, stream: bool) {
    let (rows, cols, w) = (taps.rows, taps.cols, taps.weights);
    assert!(n > 0 && out.len().is_multiple_of(n), "out holds whole rows");
    let r = out.len() / n;
    assert!((1..=MAX_ROWS).contains(&r), "1..=4 output rows");
    assert!(rows.len() >= r, "at least one kernel row");
    let kh = rows.len() + 1 - r;
    assert_eq!(w.len(), kh * cols.len(), "kh x kw weights");
    let (rmax, cmax) = (rows.iter().max(), cols.iter().max());
    let (Some(&rmax), Some(&cmax)) = (rmax, cmax) else {
        panic!("at least one kernel column")
    };
    assert!(
        rmax.checked_add(cmax)
            .and_then(|v| v.checked_add(n))
            .is_some_and(|e| e <= buf.len()),
        "source rows run past the buffer"
    );
    match isa {
        Isa::Scalar => scalar(buf, rows, cols, w, kh, out, n),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(Isa::Avx2.supported());
            // SAFETY: the CPU supports AVX2 and FMA (checked above); every read
            // buf[rows[s] + cols[j] + x], x < n, is in bounds (checked above), and every
            // write out[r·n + x] is inside `out`.
            unsafe { x86::block_avx2(buf.as_ptr(), taps, kh, out, n, stream) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(Isa::Avx512.supported());
            // SAFETY: as above, with AVX-512F (checked above).
            unsafe { x86::block_avx512(buf.as_ptr(), taps, kh, out, n, stream) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => scalar(buf, rows, cols, w, kh, out, n),
    }
}

/// Orders earlier non-temporal stores before later stores (`sfence`); call once after a run
/// of [`dot_block`] with `stream`.
pub fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` (SSE, part of the x86_64 baseline) only orders stores.
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}

/// One step of a running column sum in f64: `sum += add − sub`, then (when `out` is given)
/// `out = sum · scale` rounded to f32. Every level computes the same f64 operations in the
/// same order, so the results agree bit for bit.
///
/// # Panics
/// If the slices differ in length, or `isa` is not supported by this CPU.
pub fn running_sum(
    isa: Isa,
    sum: &mut [f64],
    add: &[f32],
    sub: Option<&[f32]>,
    scale: f64,
    out: Option<&mut [f32]>,
) {
    let n = sum.len();
    assert_eq!(add.len(), n, "row lengths");
    assert!(sub.is_none_or(|s| s.len() == n), "row lengths");
    assert!(out.as_ref().is_none_or(|o| o.len() == n), "row lengths");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(Isa::Avx512.supported());
            // SAFETY: the CPU supports the features (checked above); the body is safe code.
            unsafe { x86::running_sum_avx512(sum, add, sub, scale, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(Isa::Avx2.supported());
            // SAFETY: as above.
            unsafe { x86::running_sum_avx2(sum, add, sub, scale, out) }
        }
        _ => running_sum_body(sum, add, sub, scale, out),
    }
}

/// `dst[i] = src[i] as f32` ([`Sample::widen`](super::Sample::widen)) compiled for `isa`, so
/// the conversion runs in full-width vectors.
///
/// # Panics
/// If `isa` is not supported by this CPU.
pub fn widen<T: super::Sample>(isa: Isa, src: &[T], dst: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(Isa::Avx512.supported());
            // SAFETY: the CPU supports the features (checked above); the body is safe code.
            unsafe { x86::widen_avx512(src, dst) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(Isa::Avx2.supported());
            // SAFETY: as above.
            unsafe { x86::widen_avx2(src, dst) }
        }
        _ => T::widen(src, dst),
    }
}

/// The safe body of [`running_sum`], written for auto-vectorisation (inlined into each
/// level's `target_feature` wrapper).
#[inline(always)]
fn running_sum_body(
    sum: &mut [f64],
    add: &[f32],
    sub: Option<&[f32]>,
    scale: f64,
    out: Option<&mut [f32]>,
) {
    match sub {
        Some(sub) => {
            for ((s, &a), &b) in sum.iter_mut().zip(add).zip(sub) {
                *s += a as f64 - b as f64;
            }
        }
        None => {
            for (s, &a) in sum.iter_mut().zip(add) {
                *s += a as f64;
            }
        }
    }
    if let Some(out) = out {
        for (o, &s) in out.iter_mut().zip(sum.iter()) {
            *o = (s * scale) as f32;
        }
    }
}

fn scalar(
    buf: &[f32],
    rows: &[usize],
    cols: &[usize],
    w: &[f32],
    kh: usize,
    out: &mut [f32],
    n: usize,
) {
    let kw = cols.len();
    for (r, o) in out.chunks_exact_mut(n).enumerate() {
        for (x, o) in o.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for i in 0..kh {
                for (j, &c) in cols.iter().enumerate() {
                    acc = buf[rows[r + i] + c + x].mul_add(w[i * kw + j], acc);
                }
            }
            *o = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`Sample::widen`](super::super::Sample::widen) compiled for AVX-512.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn widen_avx512<T: super::super::Sample>(src: &[T], dst: &mut [f32]) {
        T::widen(src, dst)
    }

    /// [`Sample::widen`](super::super::Sample::widen) compiled for AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn widen_avx2<T: super::super::Sample>(src: &[T], dst: &mut [f32]) {
        T::widen(src, dst)
    }

    /// [`super::running_sum_body`] compiled for AVX-512.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn running_sum_avx512(
        sum: &mut [f64],
        add: &[f32],
        sub: Option<&[f32]>,
        scale: f64,
        out: Option<&mut [f32]>,
    ) {
        super::running_sum_body(sum, add, sub, scale, out)
    }

    /// [`super::running_sum_body`] compiled for AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn running_sum_avx2(
        sum: &mut [f64],
        add: &[f32],
        sub: Option<&[f32]>,
        scale: f64,
        out: Option<&mut [f32]>,
    ) {
        super::running_sum_body(sum, add, sub, scale, out)
    }

    /// Generates one ISA's blocked kernel (`$v` vector type, `$l` lanes) and its dispatcher
    /// over R, with `$v1` vectors per row for R = 1 and `$v4` for R > 1.
    macro_rules! level {
        ($disp:ident, $body:ident, $feat:literal, $vt:ty, $l:expr, $zero:ident, $set1:ident,
         $load:ident, $store:ident, $stream:ident, $fmadd:ident, $v1:expr, $v4:expr) => {
            /// # Safety
            /// The CPU must have the features; reads `buf[rows[s] + cols[j] + x]` for `x < n`
            /// and writes `out[..R·n]`, all of which the caller checked.
            #[target_feature(enable = $feat)]
            pub unsafe fn $disp(
                buf: *const f32,
                taps: &super::Taps,
                kh: usize,
                out: &mut [f32],
                n: usize,
                stream: bool,
            ) {
                let o = out.as_mut_ptr();
                let r = out.len() / n;
                // Streaming stores need aligned vectors: every row must start at the same
                // alignment (n·4 a multiple of the vector size); peel the columns before the
                // first aligned one.
                let align = $l * 4;
                let nt = stream && (n * 4) % align == 0;
                let peel = if nt {
                    ((align - (o as usize % align)) % align / 4).min(n)
                } else {
                    0
                };
                let run = |x0: usize, len: usize, nt: bool| match r {
                    1 => $body::<1, $v1>(buf.add(x0), taps, kh, o.add(x0), n, len, nt),
                    2 => $body::<2, $v4>(buf.add(x0), taps, kh, o.add(x0), n, len, nt),
                    3 => $body::<3, $v4>(buf.add(x0), taps, kh, o.add(x0), n, len, nt),
                    _ => $body::<4, $v4>(buf.add(x0), taps, kh, o.add(x0), n, len, nt),
                };
                if peel > 0 {
                    run(0, peel, false);
                }
                if peel < n {
                    run(peel, n - peel, nt);
                }
            }

            /// # Safety
            /// As the dispatcher.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn $body<const R: usize, const V: usize>(
                buf: *const f32,
                taps: &super::Taps,
                kh: usize,
                o: *mut f32,
                n: usize,
                len: usize,
                nt: bool,
            ) {
                let (rows, cols, w) = (taps.rows, taps.cols, taps.weights);
                let kw = cols.len();
                let nsrc = kh + R - 1;
                let mut x = 0;
                // Full blocks of V vectors, then single vectors (same code with V = 1 lanes
                // used), then scalar columns.
                while x + V * $l <= len {
                    let mut acc = [[$zero(); V]; R];
                    for s in 0..nsrc {
                        let rp = buf.add(*rows.get_unchecked(s) + x);
                        for j in 0..kw {
                            let p = rp.add(*cols.get_unchecked(j));
                            let mut v = [$zero(); V];
                            for (k, vk) in v.iter_mut().enumerate() {
                                *vk = $load(p.add(k * $l));
                            }
                            for (r, ar) in acc.iter_mut().enumerate() {
                                let i = s.wrapping_sub(r);
                                if i < kh {
                                    let wv = $set1(*w.get_unchecked(i * kw + j));
                                    for (a, vk) in ar.iter_mut().zip(&v) {
                                        *a = $fmadd(*vk, wv, *a);
                                    }
                                }
                            }
                        }
                    }
                    for (r, ar) in acc.iter().enumerate() {
                        for (k, a) in ar.iter().enumerate() {
                            let p = o.add(r * n + x + k * $l);
                            if nt {
                                $stream(p, *a);
                            } else {
                                $store(p, *a);
                            }
                        }
                    }
                    x += V * $l;
                }
                while x + $l <= len {
                    let mut acc = [$zero(); R];
                    for s in 0..nsrc {
                        let rp = buf.add(*rows.get_unchecked(s) + x);
                        for j in 0..kw {
                            let v = $load(rp.add(*cols.get_unchecked(j)));
                            for (r, a) in acc.iter_mut().enumerate() {
                                let i = s.wrapping_sub(r);
                                if i < kh {
                                    *a = $fmadd(v, $set1(*w.get_unchecked(i * kw + j)), *a);
                                }
                            }
                        }
                    }
                    for (r, a) in acc.iter().enumerate() {
                        let p = o.add(r * n + x);
                        if nt {
                            $stream(p, *a);
                        } else {
                            $store(p, *a);
                        }
                    }
                    x += $l;
                }
                while x < len {
                    for r in 0..R {
                        let mut acc = 0.0f32;
                        for i in 0..kh {
                            let rp = buf.add(*rows.get_unchecked(r + i) + x);
                            for j in 0..kw {
                                // Hardware FMA (enabled here): the lanes' rounding.
                                acc = (*rp.add(*cols.get_unchecked(j)))
                                    .mul_add(*w.get_unchecked(i * kw + j), acc);
                            }
                        }
                        *o.add(r * n + x) = acc;
                    }
                    x += 1;
                }
            }
        };
    }

    level!(
        block_avx512,
        body_avx512,
        "avx512f,avx2,fma",
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_stream_ps,
        _mm512_fmadd_ps,
        8,
        4
    );
    level!(
        block_avx2,
        body_avx2,
        "avx2,fma",
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_stream_ps,
        _mm256_fmadd_ps,
        8,
        2
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_agrees_bit_for_bit() {
        let mut seed = 12345u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        // Lengths cover the V-vector blocks, single vectors and every scalar tail.
        for n in (1..40).chain([63, 64, 65, 127, 128, 129, 200, 1000]) {
            for (kh, kw) in [(1, 1), (1, 3), (3, 1), (2, 5), (7, 7)] {
                for r in 1..=MAX_ROWS {
                    let stride = n + 2 * kw + 3;
                    let buf: Vec<f32> = (0..(kh + r) * stride).map(|_| rnd()).collect();
                    // Rows out of order, as in a ring buffer.
                    let rows: Vec<usize> = (0..kh + r - 1)
                        .map(|s| ((s * 5 + 2) % (kh + r)) * stride)
                        .collect();
                    let cols: Vec<usize> = (0..kw).map(|j| j * 2 + j % 2).collect();
                    let w: Vec<f32> = (0..kh * kw).map(|_| rnd()).collect();
                    let mut want = vec![0.0; r * n];
                    let taps = Taps {
                        rows: &rows,
                        cols: &cols,
                        weights: &w,
                    };
                    dot_block(Isa::Scalar, &buf, &taps, &mut want, n, false);
                    for isa in Isa::available() {
                        for (stream, skew) in [(false, 0), (true, 0), (true, 3)] {
                            // `skew` misaligns the output to exercise the peeled columns.
                            let mut got = vec![f32::NAN; r * n + skew];
                            dot_block(isa, &buf, &taps, &mut got[skew..], n, stream);
                            store_fence();
                            let bits =
                                |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(
                                bits(&got[skew..]),
                                bits(&want),
                                "{isa:?} n={n} k={kh}x{kw} R={r} stream={stream}"
                            );
                        }
                    }
                    for rr in 0..r {
                        for x in 0..n {
                            let mut e = 0.0f64;
                            for i in 0..kh {
                                for j in 0..kw {
                                    e += buf[rows[rr + i] + cols[j] + x] as f64
                                        * w[i * kw + j] as f64;
                                }
                            }
                            assert!((want[rr * n + x] as f64 - e).abs() < 1e-4);
                        }
                    }
                }
            }
        }
    }
}
