//! AVX-512 kernels for the common depthwise shapes (square 3×3 or 5×5 taps, stride 1 or 2,
//! no dilation), on the same buffered plane as the generic tiles.
//!
//! Each buffered row is read with aligned 16-float loads; the `kx` shifts of a row are made
//! in registers (`valignd` of two neighbouring vectors) instead of by unaligned loads, and
//! several output rows are computed per pass so that every input row loaded serves all the
//! output rows (`ky` taps) it belongs to. The weight gradient uses the same shifted rows
//! and keeps one accumulator per tap, so a plane is read once for all taps.

use super::FastShape;
use std::arch::x86_64::*;

/// A buffered plane as the kernels see it.
pub(super) struct Plane {
    /// First float of the 64-byte-aligned buffer.
    pub buf: *const f32,
    /// Floats per buffered row.
    pub rl: usize,
    /// Floats per phase of a buffered row.
    pub pstride: usize,
    pub oh: usize,
    pub ow: usize,
}

/// `[a[s..16], b[..s]]`: the row vector starting `s` floats after `a`'s.
#[inline(always)]
unsafe fn shift(a: __m512, b: __m512, s: usize) -> __m512 {
    let (a, b) = (_mm512_castps_si512(a), _mm512_castps_si512(b));
    _mm512_castsi512_ps(match s {
        0 => a,
        1 => _mm512_alignr_epi32::<1>(b, a),
        2 => _mm512_alignr_epi32::<2>(b, a),
        3 => _mm512_alignr_epi32::<3>(b, a),
        _ => _mm512_alignr_epi32::<4>(b, a),
    })
}

/// Mask of the lanes of the last vector of a row of `ow` floats.
#[inline(always)]
fn last_mask(ow: usize) -> __mmask16 {
    let n = ow - (ow.div_ceil(16) - 1) * 16;
    ((1u32 << n) - 1) as __mmask16
}

/// The `KW` shifted vectors of buffered row `row` at column `ox`.
#[inline(always)]
unsafe fn taps_of_row<const KW: usize, const SW: usize>(
    row: *const f32,
    pstride: usize,
) -> [__m512; 5] {
    let mut sh = [_mm512_setzero_ps(); 5];
    for ph in 0..SW {
        let a = _mm512_loadu_ps(row.add(ph * pstride));
        // A second vector only where a tap of this phase is shifted.
        let b = if ph + SW < KW {
            _mm512_loadu_ps(row.add(ph * pstride + 16))
        } else {
            a
        };
        for (kx, s) in sh.iter_mut().enumerate().take(KW) {
            if kx % SW == ph {
                *s = shift(a, b, kx / SW);
            }
        }
    }
    sh
}

/// R output rows from `oy`, all column vectors.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn block<const KH: usize, const KW: usize, const SH: usize, const SW: usize, const R: usize>(
    p: &Plane,
    wv: &[__m512; 25],
    bias: f32,
    out: *mut f32,
    accumulate: bool,
    oy: usize,
) {
    let nv = p.ow.div_ceil(16);
    let lm = last_mask(p.ow);
    for j in 0..nv {
        let ox = j * 16;
        let mask = if j + 1 == nv { lm } else { 0xFFFF };
        let mut acc = [_mm512_set1_ps(bias); R];
        if accumulate {
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_maskz_loadu_ps(mask, out.add((oy + r) * p.ow + ox));
            }
        }
        for ir in 0..(R - 1) * SH + KH {
            let sh = taps_of_row::<KW, SW>(p.buf.add((oy * SH + ir) * p.rl + ox), p.pstride);
            for (r, a) in acc.iter_mut().enumerate() {
                if ir >= r * SH && ir - r * SH < KH {
                    let ky = ir - r * SH;
                    for (kx, s) in sh.iter().enumerate().take(KW) {
                        *a = _mm512_fmadd_ps(*s, wv[ky * KW + kx], *a);
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add((oy + r) * p.ow + ox), mask, *a);
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn forward_t<const KH: usize, const KW: usize, const SH: usize, const SW: usize, const R: usize>(
    p: &Plane,
    w: *const f32,
    bias: f32,
    out: *mut f32,
    accumulate: bool,
) {
    let mut wv = [_mm512_setzero_ps(); 25];
    for (t, v) in wv.iter_mut().enumerate().take(KH * KW) {
        *v = _mm512_set1_ps(*w.add(t));
    }
    let mut oy = 0;
    while oy + R <= p.oh {
        block::<KH, KW, SH, SW, R>(p, &wv, bias, out, accumulate, oy);
        oy += R;
    }
    while oy < p.oh {
        block::<KH, KW, SH, SW, 1>(p, &wv, bias, out, accumulate, oy);
        oy += 1;
    }
}

/// One output plane: `out = bias + taps(buffer)` (or `out += taps(buffer)` when
/// `accumulate`, bias unused).
///
/// # Safety
/// The CPU must have AVX-512F; `p` must describe a buffer filled by `Depthwise::fill` for a
/// layer of this shape (every padded row, each phase `pstride ≥ 16·⌈ow/16⌉ + 16` floats when
/// a tap is shifted), `w` must hold kh·kw taps and `out` oh·ow floats.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn forward(
    shape: FastShape,
    p: &Plane,
    w: *const f32,
    bias: f32,
    out: *mut f32,
    accumulate: bool,
) {
    match shape {
        FastShape::K3S1 => forward_t::<3, 3, 1, 1, 4>(p, w, bias, out, accumulate),
        FastShape::K3S2 => forward_t::<3, 3, 2, 2, 4>(p, w, bias, out, accumulate),
        FastShape::K5S1 => forward_t::<5, 5, 1, 1, 4>(p, w, bias, out, accumulate),
        FastShape::K5S2 => forward_t::<5, 5, 2, 2, 2>(p, w, bias, out, accumulate),
    }
}

/// Weight-gradient taps `ky ∈ KY0..KY0+NY`: `gw[ky,kx] += Σ dy[oy,ox] · buf[row(oy,ky), ox+kx]`.
#[target_feature(enable = "avx512f")]
unsafe fn wgrad_t<
    const KH: usize,
    const KW: usize,
    const SH: usize,
    const SW: usize,
    const KY0: usize,
    const NY: usize,
>(
    p: &Plane,
    dy: *const f32,
    gw: &mut [f32],
) {
    let mut acc = [_mm512_setzero_ps(); 15];
    let nv = p.ow.div_ceil(16);
    let lm = last_mask(p.ow);
    for oy in 0..p.oh {
        for j in 0..nv {
            let ox = j * 16;
            let mask = if j + 1 == nv { lm } else { 0xFFFF };
            // Lanes past the row are neither read from dy nor accumulated.
            let d = _mm512_maskz_loadu_ps(mask, dy.add(oy * p.ow + ox));
            for i in 0..NY {
                let ky = KY0 + i;
                let sh = taps_of_row::<KW, SW>(p.buf.add((oy * SH + ky) * p.rl + ox), p.pstride);
                for (kx, s) in sh.iter().enumerate().take(KW) {
                    acc[i * KW + kx] = _mm512_mask3_fmadd_ps(d, *s, acc[i * KW + kx], mask);
                }
            }
        }
    }
    for (t, a) in acc.iter().enumerate().take(NY * KW) {
        gw[KY0 * KW + t] += _mm512_reduce_add_ps(*a);
    }
}

/// Adds one plane's weight gradient into `gw` (kh·kw taps).
///
/// # Safety
/// As for [`forward`]; `dy` must hold oh·ow floats.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weight_grad(shape: FastShape, p: &Plane, dy: *const f32, gw: &mut [f32]) {
    match shape {
        FastShape::K3S1 => wgrad_t::<3, 3, 1, 1, 0, 3>(p, dy, gw),
        FastShape::K3S2 => wgrad_t::<3, 3, 2, 2, 0, 3>(p, dy, gw),
        FastShape::K5S1 => {
            wgrad_t::<5, 5, 1, 1, 0, 3>(p, dy, gw);
            wgrad_t::<5, 5, 1, 1, 3, 2>(p, dy, gw);
        }
        FastShape::K5S2 => {
            wgrad_t::<5, 5, 2, 2, 0, 3>(p, dy, gw);
            wgrad_t::<5, 5, 2, 2, 3, 2>(p, dy, gw);
        }
    }
}

/// `dst[2i] = even[i]`, `dst[2i + 1] = odd[i]` for as many whole blocks of 32 as fit;
/// returns how many floats of `dst` were written.
///
/// # Safety
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn interleave(even: &[f32], odd: &[f32], dst: &mut [f32]) -> usize {
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let mut i = 0;
    while 2 * i + 32 <= dst.len() && i + 16 <= even.len() && i + 16 <= odd.len() {
        let e = _mm512_loadu_ps(even.as_ptr().add(i));
        let o = _mm512_loadu_ps(odd.as_ptr().add(i));
        let d = dst.as_mut_ptr().add(2 * i);
        _mm512_storeu_ps(d, _mm512_permutex2var_ps(e, lo, o));
        _mm512_storeu_ps(d.add(16), _mm512_permutex2var_ps(e, hi, o));
        i += 16;
    }
    2 * i
}
