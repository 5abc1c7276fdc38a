//! AVX-512 kernels for the common depthwise shapes (square 3×3 or 5×5 taps, stride 1 or 2,
//! no dilation, zero padding), reading the input plane in place.
//!
//! Each input row is read in 16-float vectors: masked where a vector leaves the row (the
//! masks are the zero padding), or, at stride 1 away from the plane's ends, whole with the
//! lanes outside the row zeroed in a register. The `kx` shifts (stride 1) and the stride
//! phases (stride 2) are made in registers from two neighbouring vectors instead of by more
//! loads, and several output rows are computed per pass so that every input row loaded
//! serves all the output rows (`ky` taps) it belongs to. The weight gradient uses the same
//! shifted rows and keeps one accumulator per tap, so a plane is read once for all taps.

use super::FastShape;
use std::arch::x86_64::*;

/// One input plane read in place (zero padding) and the output plane's size.
pub(super) struct Plane {
    /// First float of the (h, w) input plane.
    pub x: *const f32,
    pub h: usize,
    pub w: usize,
    /// Zero padding above and left of the input.
    pub pt: usize,
    pub pl: usize,
    pub oh: usize,
    pub ow: usize,
    /// Memory to prefetch into L2 while the plane is computed (the next plane's input):
    /// start and length in floats (any address; prefetches do not fault).
    pub pf: *const f32,
    pub pf_len: usize,
    /// The plane's [`inner_rows`] for its shape ([`inner_rows_of`]).
    pub inner: (usize, usize),
}

/// Prefetches lines `*next..*next + count` of `p.pf` (stopping at its end) into L2.
#[inline(always)]
unsafe fn prefetch_some(p: &Plane, next: &mut usize, count: usize) {
    let lines = (p.pf_len * 4).div_ceil(64);
    let end = (*next + count).min(lines);
    while *next < end {
        _mm_prefetch::<_MM_HINT_T1>(p.pf.wrapping_add(*next * 16) as *const i8);
        *next += 1;
    }
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

/// Mask of the lanes `k < n` of a vector.
#[inline(always)]
fn lanes_below(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// Lanes `k` with `0 ≤ c + k < w`: the in-row part of a 16-float load at column `c`.
#[inline(always)]
fn row_mask(c: isize, w: usize) -> __mmask16 {
    let below = lanes_below((w as isize - c).max(0) as usize);
    let before = lanes_below((-c).max(0) as usize);
    below & !before
}

/// The loads one input row needs for one output vector: their column offsets from the
/// vector's first input column (`SW·ox − pl`) and the masks that keep them inside the row.
struct Loads {
    mask: [__mmask16; 6],
}

impl Loads {
    /// Load `i` of a row is at offset `(i / 2)·2 + (i % 2)·16` (stride 2) or `16·i` (stride 1).
    #[inline(always)]
    fn offset<const SW: usize>(i: usize) -> isize {
        if SW == 1 {
            16 * i as isize
        } else {
            (i / 2 * 2 + i % 2 * 16) as isize
        }
    }

    #[inline(always)]
    fn new<const KW: usize, const SW: usize>(c0: isize, w: usize) -> Self {
        let mut mask = [0; 6];
        for (i, m) in mask.iter_mut().enumerate().take(Self::count::<KW, SW>()) {
            *m = row_mask(c0 + Self::offset::<SW>(i), w);
        }
        Loads { mask }
    }

    /// Loads per row.
    #[inline(always)]
    const fn count<const KW: usize, const SW: usize>() -> usize {
        if SW == 1 {
            if KW > 1 {
                2
            } else {
                1
            }
        } else {
            2 * KW.div_ceil(2)
        }
    }
}

/// The input rows `iy` of an `h × w` plane (left padding `pl`, `ow` output columns) whose
/// every load (of any output vector of the row, `KW` taps, stride `SW`) lies inside the plane:
/// there whole vectors may be loaded and the lanes outside the row zeroed in registers.
fn inner_rows<const KW: usize, const SW: usize>(
    h: usize,
    w: usize,
    pl: usize,
    ow: usize,
) -> (usize, usize) {
    if ow == 0 || w == 0 {
        return (0, 0);
    }
    let nv = ow.div_ceil(16);
    // Loads reach from pl floats before a row's start to `reach` floats after it.
    let last = (SW * 16 * (nv - 1)) as isize + Loads::offset::<SW>(Loads::count::<KW, SW>() - 1);
    let reach = (last - pl as isize + 16).max(0) as usize;
    // Rows with iy·w ≥ pl and iy·w + reach ≤ h·w.
    let lo = pl.div_ceil(w).min(h);
    let hi = match (h * w).checked_sub(reach) {
        Some(room) => room / w + 1,
        None => 0,
    };
    (lo, hi.min(h).max(lo))
}

/// [`inner_rows`] for a fast shape (computed once per layer: a plane of 14 × 14 is ~400
/// cycles, and the divisions showed).
pub(super) fn inner_rows_of(
    shape: FastShape,
    h: usize,
    w: usize,
    pl: usize,
    ow: usize,
) -> (usize, usize) {
    match shape {
        FastShape::K3S1 => inner_rows::<3, 1>(h, w, pl, ow),
        FastShape::K3S2 => inner_rows::<3, 2>(h, w, pl, ow),
        FastShape::K5S1 => inner_rows::<5, 1>(h, w, pl, ow),
        FastShape::K5S2 => inner_rows::<5, 2>(h, w, pl, ow),
    }
}

/// The `KW` tap vectors of input row `row` for the output vector whose first input column is
/// `c0` (`v[kx][i] = row[c0 + SW·i + kx]`, zero outside the row), loaded as `MODE` says (a
/// [`Mode`]; `keep`: [`Mode::Zeroed`]'s masks as lane vectors, all ones where set).
///
/// # Safety
/// AVX-512F available; `row` is a row of the plane the masks were made for. With
/// [`Mode::Whole`] or [`Mode::Zeroed`] it must be one of the plane's [`inner_rows`], whose
/// whole-vector loads stay inside the plane (`inner_rows_load_inside_the_plane` checks that).
#[inline(always)]
unsafe fn taps_of_row<const KW: usize, const SW: usize, const MODE: u8>(
    row: *const f32,
    c0: isize,
    l: &Loads,
    keep: &[__m512i; 6],
) -> [__m512; 5] {
    let mut v = [_mm512_setzero_ps(); 5];
    let ld = |i: usize| {
        let at = row.wrapping_offset(c0 + Loads::offset::<SW>(i));
        // Masked loads that split a cache line are slow on Zen 5: the stride-2 kernels' four
        // a row held the 3×3/2 96-channel 112×112 layer to ~2 cycles an output (plain loads
        // where the mask is full: 0.85×). At stride 1 a branch per load cost what it saved;
        // instead the blocks whose input rows are all inner rows load whole vectors (inside
        // the plane) and zero the lanes outside the row with an AND, per column vector
        // (`Zeroed`), or not at all where every lane is in the row (`Whole`): 3×3 144
        // channels on 56×56 0.96×, 5×5 0.875× (12 alternating rounds).
        if MODE == Mode::Whole as u8 {
            _mm512_loadu_ps(at)
        } else if MODE == Mode::Zeroed as u8 {
            // An AND, not a masked move: that would be folded back into a masked load.
            let v = _mm512_castps_si512(_mm512_loadu_ps(at));
            _mm512_castsi512_ps(_mm512_and_si512(v, keep[i]))
        } else if SW == 2 && l.mask[i] == 0xFFFF {
            _mm512_loadu_ps(at)
        } else {
            // Masked-off lanes are not read (no fault), so only in-row floats are touched.
            _mm512_maskz_loadu_ps(l.mask[i], at)
        }
    };
    if SW == 1 {
        let a = ld(0);
        let b = if KW > 1 { ld(1) } else { a };
        for (kx, t) in v.iter_mut().enumerate().take(KW) {
            *t = shift(a, b, kx);
        }
    } else {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        for q in 0..KW.div_ceil(2) {
            let (a, b) = (ld(2 * q), ld(2 * q + 1));
            v[2 * q] = _mm512_permutex2var_ps(a, even, b);
            if 2 * q + 1 < KW {
                v[2 * q + 1] = _mm512_permutex2var_ps(a, odd, b);
            }
        }
    }
    v
}

/// R output rows from `oy`, all column vectors, on [`block`] with whole-vector loads where
/// every input row the block reads is one of the plane's inner rows.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn rows<
    const KH: usize,
    const KW: usize,
    const SH: usize,
    const SW: usize,
    const R: usize,
>(
    p: &Plane,
    wv: &[__m512; 25],
    bias: f32,
    out: *mut f32,
    accumulate: bool,
    oy: usize,
) {
    // The block's input rows inside the plane: oy·SH − pt .. + (R − 1)·SH + KH.
    let first = (oy * SH).saturating_sub(p.pt);
    let end = (oy * SH + (R - 1) * SH + KH).saturating_sub(p.pt).min(p.h);
    // Stride 2 already loads whole in-row vectors plainly and gained nothing (6 rounds).
    if SW == 1 && first >= p.inner.0 && end <= p.inner.1 {
        block::<KH, KW, SH, SW, R, true>(p, wv, bias, out, accumulate, oy)
    } else {
        block::<KH, KW, SH, SW, R, false>(p, wv, bias, out, accumulate, oy)
    }
}

/// R output rows from `oy`, all column vectors (`INNER`: every input row read is one of
/// [`inner_rows`]).
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn block<
    const KH: usize,
    const KW: usize,
    const SH: usize,
    const SW: usize,
    const R: usize,
    const INNER: bool,
>(
    p: &Plane,
    wv: &[__m512; 25],
    bias: f32,
    out: *mut f32,
    accumulate: bool,
    oy: usize,
) {
    let nv = p.ow.div_ceil(16);
    for j in 0..nv {
        let c0 = (SW * j * 16) as isize - p.pl as isize;
        let loads = Loads::new::<KW, SW>(c0, p.w);
        let args = (p, wv, bias, out, accumulate, oy, j, &loads);
        if !INNER {
            column::<KH, KW, SH, SW, R, { Mode::Masked as u8 }>(args)
        } else if loads.mask[..Loads::count::<KW, SW>()]
            .iter()
            .all(|&m| m == 0xFFFF)
        {
            column::<KH, KW, SH, SW, R, { Mode::Whole as u8 }>(args)
        } else {
            column::<KH, KW, SH, SW, R, { Mode::Zeroed as u8 }>(args)
        }
    }
}

/// How [`taps_of_row`] loads a row's vectors.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Masked loads (a row at the plane's ends: whole vectors could leave the plane).
    Masked,
    /// Whole vectors, the lanes outside the row zeroed in a register (an inner row).
    Zeroed,
    /// Whole vectors, every lane inside the row (an inner row's inner column vector).
    Whole,
}

/// The operands of one [`column`]: plane, weights, bias, output, accumulate, first output
/// row, column vector, its loads.
type ColumnArgs<'a> = (
    &'a Plane,
    &'a [__m512; 25],
    f32,
    *mut f32,
    bool,
    usize,
    usize,
    &'a Loads,
);

/// Output column vector `j` of R output rows from `oy` (`MODE`: a [`Mode`]).
#[inline(always)]
unsafe fn column<
    const KH: usize,
    const KW: usize,
    const SH: usize,
    const SW: usize,
    const R: usize,
    const MODE: u8,
>(
    (p, wv, bias, out, accumulate, oy, j, loads): ColumnArgs<'_>,
) {
    let ox = j * 16;
    let mask = lanes_below(p.ow - ox);
    let c0 = (SW * ox) as isize - p.pl as isize;
    let mut keep = [_mm512_setzero_si512(); 6];
    if MODE == Mode::Zeroed as u8 {
        for (k, &m) in keep.iter_mut().zip(&loads.mask) {
            *k = _mm512_maskz_mov_epi32(m, _mm512_set1_epi32(-1));
        }
    }
    let mut acc = [_mm512_set1_ps(bias); R];
    if accumulate {
        for (r, a) in acc.iter_mut().enumerate() {
            *a = _mm512_maskz_loadu_ps(mask, out.add((oy + r) * p.ow + ox));
        }
    }
    for ir in 0..(R - 1) * SH + KH {
        // Rows of the zero padding add nothing.
        let iy = (oy * SH + ir) as isize - p.pt as isize;
        if iy < 0 || iy >= p.h as isize {
            continue;
        }
        let row = p.x.add(iy as usize * p.w);
        let v = taps_of_row::<KW, SW, MODE>(row, c0, loads, &keep);
        for (r, a) in acc.iter_mut().enumerate() {
            if ir >= r * SH && ir - r * SH < KH {
                let ky = ir - r * SH;
                for (kx, t) in v.iter().enumerate().take(KW) {
                    *a = _mm512_fmadd_ps(*t, wv[ky * KW + kx], *a);
                }
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(out.add((oy + r) * p.ow + ox), mask, *a);
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn forward_t<
    const KH: usize,
    const KW: usize,
    const SH: usize,
    const SW: usize,
    const R: usize,
>(
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
    // Spread the prefetches over the row blocks, so that they overlap the arithmetic.
    let per = (p.pf_len * 4)
        .div_ceil(64)
        .div_ceil(p.oh.div_ceil(R).max(1));
    let mut next = 0;
    let mut oy = 0;
    while oy + R <= p.oh {
        prefetch_some(p, &mut next, per);
        rows::<KH, KW, SH, SW, R>(p, &wv, bias, out, accumulate, oy);
        oy += R;
    }
    // The last rows in blocks of 4, 2, 1 (each input row still serves several outputs), with
    // masked loads: they hold the plane's last rows, and fewer variants keep the code small.
    if R > 4 && oy + 4 <= p.oh {
        block::<KH, KW, SH, SW, 4, false>(p, &wv, bias, out, accumulate, oy);
        oy += 4;
    }
    if R > 2 && oy + 2 <= p.oh {
        block::<KH, KW, SH, SW, 2, false>(p, &wv, bias, out, accumulate, oy);
        oy += 2;
    }
    while oy < p.oh {
        prefetch_some(p, &mut next, per);
        block::<KH, KW, SH, SW, 1, false>(p, &wv, bias, out, accumulate, oy);
        oy += 1;
    }
}

/// One output plane: `out = bias + taps(x)` (or `out += taps(x)` when `accumulate`, bias
/// unused), zero padding.
///
/// # Safety
/// The CPU must have AVX-512F; `p.x` must hold h·w floats, `w` kh·kw taps and `out` oh·ow
/// floats, and the output size must follow from the input size, padding and shape (so that
/// every valid output reads inside the padded input).
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
        FastShape::K3S1 => forward_t::<3, 3, 1, 1, 8>(p, w, bias, out, accumulate),
        FastShape::K3S2 => forward_t::<3, 3, 2, 2, 4>(p, w, bias, out, accumulate),
        FastShape::K5S1 => forward_t::<5, 5, 1, 1, 4>(p, w, bias, out, accumulate),
        FastShape::K5S2 => forward_t::<5, 5, 2, 2, 2>(p, w, bias, out, accumulate),
    }
}

/// Weight-gradient taps `ky ∈ KY0..KY0+NY` of dy rows `oy..oy + R` into `acc`:
/// `acc[ky − KY0, kx] += Σ dy[oy,ox] · x_pad[oy·SH+ky, ox·SW+kx]` (lanes kept apart). Each
/// input row is loaded once for all R dy rows it meets. (Inlined into the AVX-512 caller,
/// so that the accumulators stay in registers.)
#[inline(always)]
unsafe fn wgrad_rows<
    const KW: usize,
    const SH: usize,
    const SW: usize,
    const KY0: usize,
    const NY: usize,
    const R: usize,
>(
    p: &Plane,
    dy: *const f32,
    oy: usize,
    acc: &mut [__m512; 15],
) {
    let nv = p.ow.div_ceil(16);
    for j in 0..nv {
        let ox = j * 16;
        let mask = lanes_below(p.ow - ox);
        let c0 = (SW * ox) as isize - p.pl as isize;
        let loads = Loads::new::<KW, SW>(c0, p.w);
        // Lanes past the row are neither read from dy nor accumulated.
        let mut d = [_mm512_setzero_ps(); R];
        for (r, dr) in d.iter_mut().enumerate() {
            *dr = _mm512_maskz_loadu_ps(mask, dy.add((oy + r) * p.ow + ox));
        }
        for ir in 0..(R - 1) * SH + NY {
            let iy = (oy * SH + KY0 + ir) as isize - p.pt as isize;
            if iy < 0 || iy >= p.h as isize {
                continue;
            }
            let v = taps_of_row::<KW, SW, { Mode::Masked as u8 }>(
                p.x.add(iy as usize * p.w),
                c0,
                &loads,
                &[_mm512_setzero_si512(); 6],
            );
            for (r, dr) in d.iter().enumerate() {
                if ir >= r * SH && ir - r * SH < NY {
                    let i = ir - r * SH;
                    for (kx, t) in v.iter().enumerate().take(KW) {
                        acc[i * KW + kx] = _mm512_mask3_fmadd_ps(*dr, *t, acc[i * KW + kx], mask);
                    }
                }
            }
        }
    }
}

/// Weight-gradient taps `ky ∈ KY0..KY0+NY`, R dy rows per pass: `gw[ky,kx] += Σ dy[oy,ox] · x_pad[oy·SH+ky, ox·SW+kx]`.
#[target_feature(enable = "avx512f")]
unsafe fn wgrad_t<
    const KW: usize,
    const SH: usize,
    const SW: usize,
    const KY0: usize,
    const NY: usize,
    const R: usize,
>(
    p: &Plane,
    dy: *const f32,
    gw: &mut [f32],
) {
    let mut acc = [_mm512_setzero_ps(); 15];
    let per = (p.pf_len * 4)
        .div_ceil(64)
        .div_ceil(p.oh.div_ceil(R).max(1));
    let mut next = 0;
    let mut oy = 0;
    while oy + R <= p.oh {
        prefetch_some(p, &mut next, per);
        wgrad_rows::<KW, SH, SW, KY0, NY, R>(p, dy, oy, &mut acc);
        oy += R;
    }
    while oy < p.oh {
        prefetch_some(p, &mut next, per);
        wgrad_rows::<KW, SH, SW, KY0, NY, 1>(p, dy, oy, &mut acc);
        oy += 1;
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
        FastShape::K3S1 => wgrad_t::<3, 1, 1, 0, 3, 2>(p, dy, gw),
        FastShape::K3S2 => wgrad_t::<3, 2, 2, 0, 3, 2>(p, dy, gw),
        FastShape::K5S1 => {
            wgrad_t::<5, 1, 1, 0, 3, 1>(p, dy, gw);
            wgrad_t::<5, 1, 1, 3, 2, 1>(p, dy, gw);
        }
        FastShape::K5S2 => {
            wgrad_t::<5, 2, 2, 0, 3, 1>(p, dy, gw);
            wgrad_t::<5, 2, 2, 3, 2, 1>(p, dy, gw);
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

/// Grad input of a stride-2 layer for one input plane, as a gather: padded column
/// `q = 2t + e` receives `Σ_{kx ≡ e} w[ky,kx] · dy[oy, t − ⌊kx/2⌋]` from every dy row
/// `oy = (qy − ky)/2` of a tap row `ky ≡ qy (mod 2)`; the two column phases are computed
/// as vectors and interleaved into dx, so each dx element is written once (no zeroing,
/// no scatter). The `m` (dy plane, taps) pairs of the channel are summed.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn dgrad_s2_t<const KH: usize, const KW: usize>(
    dys: &[&[f32]],
    ws: &[&[f32]],
    oh: usize,
    ow: usize,
    pt: usize,
    pl: usize,
    dx: &mut [f32],
    w: usize,
) {
    if w == 0 || dx.is_empty() {
        return;
    }
    let h = dx.len() / w;
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let (t_start, t_end) = (pl / 2, (pl + w - 1) / 2 + 1);
    // Up to 4 blocks of 16 `t` (128 dx columns) per pass, so that each (dy row, taps) pair
    // is set up once per pass.
    const NB: usize = 4;
    // Per 16-wide block of t: the masks of its dy loads (`t0 − a`, a < 3) and of its two dx
    // stores; the same for every row.
    let masks: Vec<([__mmask16; 3], [__mmask16; 2])> = (t_start..t_end)
        .step_by(16)
        .map(|t0| {
            let c = (2 * t0) as isize - pl as isize;
            let ld = |a: isize| row_mask(t0 as isize - a, ow);
            ([ld(0), ld(1), ld(2)], [row_mask(c, w), row_mask(c + 16, w)])
        })
        .collect();
    for iy in 0..h {
        let qy = iy + pt;
        let drow = dx.as_mut_ptr().add(iy * w);
        let mut tb = t_start;
        while tb < t_end {
            let nb = (t_end - tb).div_ceil(16).min(NB);
            let mut g = [[_mm512_setzero_ps(); 2]; NB];
            for (dyp, wk) in dys.iter().zip(ws) {
                let mut ky = qy % 2;
                while ky < KH && ky <= qy {
                    let oy = (qy - ky) / 2;
                    ky += 2;
                    if oy >= oh {
                        continue;
                    }
                    let row = dyp.as_ptr().add(oy * ow);
                    let mut wv = [_mm512_setzero_ps(); 5];
                    for (kx, v) in wv.iter_mut().enumerate().take(KW) {
                        *v = _mm512_set1_ps(wk[(ky - 2) * KW + kx]);
                    }
                    for (b, gb) in g.iter_mut().enumerate() {
                        if b >= nb {
                            break;
                        }
                        let t0 = tb + 16 * b;
                        let lm = &masks[(t0 - t_start) / 16].0;
                        let mut v = [_mm512_setzero_ps(); 3];
                        for (a, va) in v.iter_mut().enumerate().take(KW.div_ceil(2)) {
                            let c = t0 as isize - a as isize;
                            // Masked-off lanes are not read, so only dy's row is touched.
                            *va = _mm512_maskz_loadu_ps(lm[a], row.wrapping_offset(c));
                        }
                        for kx in 0..KW {
                            gb[kx % 2] = _mm512_fmadd_ps(v[kx / 2], wv[kx], gb[kx % 2]);
                        }
                    }
                }
            }
            for (b, gb) in g.iter().enumerate().take(nb) {
                // Padded columns 2·t0 .. 2·t0 + 32 are dx columns 2·t0 − pl ...
                let t0 = tb + 16 * b;
                let c = (2 * t0) as isize - pl as isize;
                let sm = &masks[(t0 - t_start) / 16].1;
                let lo_v = _mm512_permutex2var_ps(gb[0], lo, gb[1]);
                let hi_v = _mm512_permutex2var_ps(gb[0], hi, gb[1]);
                _mm512_mask_storeu_ps(drow.wrapping_offset(c), sm[0], lo_v);
                _mm512_mask_storeu_ps(drow.wrapping_offset(c + 16), sm[1], hi_v);
            }
            tb += 16 * NB;
        }
    }
}

/// dx plane (h·w = `dx.len()`, width `w`) of a stride-2 layer from the channel's dy planes
/// (oh·ow each) and their taps; overwrites `dx`.
///
/// # Safety
/// The CPU must have AVX-512F; `shape` must be a stride-2 shape; every `dys[i]` must hold
/// oh·ow floats and `ws[i]` kh·kw taps; oh, ow, pt, pl must be the layer's for h, w.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn input_grad_s2(
    shape: FastShape,
    dys: &[&[f32]],
    ws: &[&[f32]],
    oh: usize,
    ow: usize,
    pt: usize,
    pl: usize,
    dx: &mut [f32],
    w: usize,
) {
    match shape {
        FastShape::K3S2 => dgrad_s2_t::<3, 3>(dys, ws, oh, ow, pt, pl, dx, w),
        FastShape::K5S2 => dgrad_s2_t::<5, 5>(dys, ws, oh, ow, pt, pl, dx, w),
        _ => unreachable!("input_grad_s2 needs a stride-2 shape"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every load of every output vector of an inner row lies inside the plane, for the four
    /// shapes over small and odd planes, paddings and widths (the first rows above the range
    /// start before the plane or the last rows below it run past its end).
    #[test]
    fn inner_rows_load_inside_the_plane() {
        fn check<const KW: usize, const SW: usize>() {
            for h in 1..12 {
                for w in 1..70 {
                    for pl in 0..KW {
                        let ow = (w + 2 * pl - KW) / SW + 1;
                        if w + 2 * pl < KW {
                            continue;
                        }
                        let (lo, hi) = inner_rows::<KW, SW>(h, w, pl, ow);
                        assert!(lo <= hi && hi <= h);
                        for iy in lo..hi {
                            for j in 0..ow.div_ceil(16) {
                                let c0 = (SW * j * 16) as isize - pl as isize;
                                for i in 0..Loads::count::<KW, SW>() {
                                    let at = (iy * w) as isize + c0 + Loads::offset::<SW>(i);
                                    assert!(
                                        at >= 0 && at + 16 <= (h * w) as isize,
                                        "{KW}/{SW} h{h} w{w} pl{pl} row {iy} vector {j}"
                                    );
                                }
                            }
                        }
                        // A plane of several rows wider than two vectors has inner rows.
                        if h >= 4 && w >= 40 {
                            assert!(hi > lo, "{KW}/{SW} h{h} w{w} pl{pl}");
                        }
                    }
                }
            }
        }
        check::<3, 1>();
        check::<3, 2>();
        check::<5, 1>();
        check::<5, 2>();
    }
}
