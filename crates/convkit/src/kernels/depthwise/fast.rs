//! AVX-512 kernels for the common depthwise shapes (square 3×3 or 5×5 taps, stride 1 or 2,
//! no dilation, zero padding), reading the input plane in place.
//!
//! Each input row is read in 16-float vectors: plain loads for the output column vectors
//! whose loads all lie inside the row, masked loads (the masks are the zero padding) for those
//! at the row's ends; which is which is worked out once per layer ([`columns`]). Rows of the
//! zero padding are read from a zero row, so a block has no branch per row. The `kx` shifts
//! (stride 1) and the stride phases (stride 2) are made in registers from neighbouring vectors
//! instead of by more loads, and several output rows are computed per pass (the block's input
//! rows unrolled, so the taps stay in registers) so that every input row loaded serves all the
//! output rows (`ky` taps) it belongs to. The weight gradient uses the same shifted rows and
//! keeps one accumulator per tap, so a plane is read once for all taps.

use super::FastShape;
use std::arch::x86_64::*;

/// One input plane read in place (zero padding) and the output plane's size.
pub(super) struct Plane<'a> {
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
    /// [`zero_row_len`] zeros: the rows of the zero padding.
    pub zero: *const f32,
    /// The layer's output column vectors ([`columns`]).
    pub cols: &'a [Column],
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

/// Whether each stride-1 tap vector is loaded at its own offset (5×5: five loads cost less
/// than two loads and four shifts, 0.88× the time of a 5×5 112 × 112 plane; for 3×3, two
/// loads and two shifts are faster, 0.9×).
const fn loaded_taps<const KW: usize, const SW: usize>() -> bool {
    SW == 1 && KW == 5
}

/// Whether stride-2 taps come from one pair of loads split into even and odd phases, the
/// third tap the even phase shifted by one float (3×3), or from a pair of loads per two taps
/// (5×5).
const fn shifted_even<const KW: usize, const SW: usize>() -> bool {
    SW == 2 && KW == 3
}

/// Column offset of load `i` of an input row for one output vector, from the vector's first
/// input column (`SW·ox − pl`): each tap's (5×5 stride 1), consecutive vectors (3×3 stride 1
/// and 2: shifted or split into even and odd phases in registers), or pairs
/// `(i / 2)·2 + (i % 2)·16` (5×5 stride 2: each pair split into two taps' phases).
#[inline(always)]
const fn load_offset<const KW: usize, const SW: usize>(i: usize) -> isize {
    if loaded_taps::<KW, SW>() {
        i as isize
    } else if SW == 1 || shifted_even::<KW, SW>() {
        16 * i as isize
    } else {
        (i / 2 * 2 + i % 2 * 16) as isize
    }
}

/// The lanes of load `i` the taps use: all, but the first of the last (3×3 stride 2, whose
/// third tap is the even phase shifted by one float).
#[inline(always)]
const fn lanes_used<const KW: usize, const SW: usize>(i: usize) -> __mmask16 {
    if shifted_even::<KW, SW>() && i == 2 {
        1
    } else {
        0xFFFF
    }
}

/// Loads per input row and output vector.
#[inline(always)]
const fn load_count<const KW: usize, const SW: usize>() -> usize {
    if loaded_taps::<KW, SW>() {
        KW
    } else if SW == 1 {
        2
    } else if shifted_even::<KW, SW>() {
        3
    } else {
        2 * KW.div_ceil(2)
    }
}

/// One output column vector of a layer: how its input loads and its output store stay
/// inside a row. The same for every row and plane of the layer, so made once ([`columns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Column {
    /// Per load of an input row ([`load_offset`] order): the lanes inside the row.
    load: [__mmask16; 6],
    /// Every load is whole (all lanes inside the row): plain loads, no masks.
    whole: bool,
    /// The output lanes inside the output row.
    store: __mmask16,
}

fn columns_t<const KW: usize, const SW: usize>(w: usize, pl: usize, ow: usize) -> Vec<Column> {
    (0..ow.div_ceil(16))
        .map(|j| {
            let c0 = (SW * 16 * j) as isize - pl as isize;
            let mut load = [0; 6];
            let mut whole = true;
            for (i, m) in load.iter_mut().enumerate().take(load_count::<KW, SW>()) {
                let used = lanes_used::<KW, SW>(i);
                *m = row_mask(c0 + load_offset::<KW, SW>(i), w) & used;
                whole &= *m == used;
            }
            Column {
                load,
                whole,
                store: lanes_below(ow - 16 * j),
            }
        })
        .collect()
}

/// The column vectors of an output row of `ow` columns, for a fast shape on rows of `w`
/// floats with left padding `pl`.
pub(super) fn columns(shape: FastShape, w: usize, pl: usize, ow: usize) -> Vec<Column> {
    match shape {
        FastShape::K3S1 => columns_t::<3, 1>(w, pl, ow),
        FastShape::K3S2 => columns_t::<3, 2>(w, pl, ow),
        FastShape::K5S1 => columns_t::<5, 1>(w, pl, ow),
        FastShape::K5S2 => columns_t::<5, 2>(w, pl, ow),
    }
}

/// Floats a zero row needs to stand in for a row of the zero padding: a row's loads reach
/// from its padded column 0 (input column −pl) to at most `16·SW·(nv − 1) + 36` floats past
/// it (the last vector's farthest load, offset ≤ 20, and its 16 lanes). The kernels read rows
/// of the zero padding from such a buffer instead of branching on each row.
pub(super) fn zero_row_len(shape: FastShape, ow: usize) -> usize {
    let sw = match shape {
        FastShape::K3S1 | FastShape::K5S1 => 1,
        FastShape::K3S2 | FastShape::K5S2 => 2,
    };
    sw * 16 * ow.div_ceil(16) + 48
}

/// The `KW` tap vectors of an input row for one output vector, `at` pointing at the vector's
/// first input column `c0 = SW·ox − pl` (`v[kx][i] = row[c0 + SW·i + kx]`, zero outside the
/// row): plain loads, or (`MASKED`) masked loads that read only the lanes inside the row.
///
/// # Safety
/// AVX-512F available; the loads' in-row lanes (all lanes unless `MASKED`) must be readable.
#[inline(always)]
unsafe fn taps_of_row<const KW: usize, const SW: usize, const MASKED: bool>(
    at: *const f32,
    mask: &[__mmask16; 6],
) -> [__m512; 5] {
    let mut v = [_mm512_setzero_ps(); 5];
    let ld = |i: usize| {
        let p = at.wrapping_offset(load_offset::<KW, SW>(i));
        if MASKED {
            // Masked-off lanes are not read (no fault), so only in-row floats are touched.
            _mm512_maskz_loadu_ps(mask[i], p)
        } else {
            _mm512_loadu_ps(p)
        }
    };
    if loaded_taps::<KW, SW>() {
        for (kx, t) in v.iter_mut().enumerate().take(KW) {
            *t = ld(kx);
        }
    } else if SW == 1 {
        let (a, b) = (ld(0), ld(1));
        for (kx, t) in v.iter_mut().enumerate().take(KW) {
            *t = shift(a, b, kx);
        }
    } else {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        if shifted_even::<KW, SW>() {
            // Taps 0 and 1 are the even and odd floats of the 32 from column c0, tap 2 the
            // even ones shifted by one, the float at c0 + 32 shifted in: two shuffles fewer
            // than splitting the 32 from c0 + 2 (0.93–0.97× the time of a 3×3/2 plane).
            let (a, b) = (ld(0), ld(1));
            let next = at.wrapping_offset(load_offset::<KW, SW>(2));
            let next = if MASKED {
                _mm512_maskz_loadu_ps(mask[2], next)
            } else {
                _mm512_zextps128_ps512(_mm_load_ss(next))
            };
            v[0] = _mm512_permutex2var_ps(a, even, b);
            v[1] = _mm512_permutex2var_ps(a, odd, b);
            v[2] = shift(v[0], next, 1);
        } else {
            for q in 0..KW.div_ceil(2) {
                // Taps 2q and 2q + 1: the even and odd floats of the 32 from column c0 + 2q.
                let (lo, hi) = (ld(2 * q), ld(2 * q + 1));
                v[2 * q] = _mm512_permutex2var_ps(lo, even, hi);
                if 2 * q + 1 < KW {
                    v[2 * q + 1] = _mm512_permutex2var_ps(lo, odd, hi);
                }
            }
        }
    }
    v
}

/// Most input rows a block reads: `(R − 1)·SH + KH` for the largest R of a shape.
const MAX_BLOCK_ROWS: usize = 16;

/// Input rows of a block of `r` output rows, stride `sh`, `kh` tap rows.
const fn rows_read(r: usize, sh: usize, kh: usize) -> usize {
    (r - 1) * sh + kh
}

// The blocks of every shape fit ([`forward`]'s R; a plane's tail has fewer rows).
const _: () = assert!(rows_read(7, 1, 3) <= MAX_BLOCK_ROWS && rows_read(4, 2, 3) <= MAX_BLOCK_ROWS);
const _: () = assert!(rows_read(4, 1, 5) <= MAX_BLOCK_ROWS && rows_read(2, 2, 5) <= MAX_BLOCK_ROWS);

/// Calls `$f(0)`, …, `$f(15)` ([`MAX_BLOCK_ROWS`] steps) with literal arguments.
macro_rules! seq16 {
    ($f:expr) => {{
        let mut f = $f;
        f(0);
        f(1);
        f(2);
        f(3);
        f(4);
        f(5);
        f(6);
        f(7);
        f(8);
        f(9);
        f(10);
        f(11);
        f(12);
        f(13);
        f(14);
        f(15);
    }};
}

/// The input rows of output rows `oy..oy + R`, each at its padded column 0 (input column
/// −pl): in the plane, or the zero row for rows of the zero padding (so the block needs no
/// branch per row). Pointers only: they may lie outside the plane, only loads are checked.
#[inline(always)]
fn block_rows<const KH: usize, const SH: usize, const R: usize>(
    p: &Plane,
    oy: usize,
) -> [*const f32; MAX_BLOCK_ROWS] {
    let mut rows = [p.zero; MAX_BLOCK_ROWS];
    for (ir, row) in rows.iter_mut().enumerate().take((R - 1) * SH + KH) {
        let iy = (oy * SH + ir).wrapping_sub(p.pt);
        if iy < p.h {
            *row = p.x.wrapping_add(iy * p.w).wrapping_sub(p.pl);
        }
    }
    rows
}

/// Output rows `oy..oy + R`, every column vector: each input row is loaded once per column
/// vector and serves all the output rows (`ky` taps) it belongs to. (Inlined into the
/// AVX-512 caller: as a call, the 25 weight vectors went through the stack, a quarter of a
/// 14 × 14 plane's time.)
#[inline(always)]
unsafe fn block<
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
    let rows = block_rows::<KH, SH, R>(p, oy);
    for (j, col) in p.cols.iter().enumerate() {
        let args = (&rows, col, j, wv, bias, out, p.ow, accumulate, oy);
        // Masked loads cost more than plain ones where they split a cache line (every load
        // of a row offset by the padding): only the vectors at the row's ends use them.
        if col.whole {
            column::<KH, KW, SH, SW, R, false>(args)
        } else {
            column::<KH, KW, SH, SW, R, true>(args)
        }
    }
}

/// The operands of one [`column`]: the block's input rows, the column vector and its index,
/// weights, bias, output plane and width, accumulate, first output row.
type ColumnArgs<'a> = (
    &'a [*const f32; MAX_BLOCK_ROWS],
    &'a Column,
    usize,
    &'a [__m512; 25],
    f32,
    *mut f32,
    usize,
    bool,
    usize,
);

/// Output column vector `j` of R output rows from `oy` (`MASKED`: its loads are masked).
#[inline(always)]
unsafe fn column<
    const KH: usize,
    const KW: usize,
    const SH: usize,
    const SW: usize,
    const R: usize,
    const MASKED: bool,
>(
    (rows, col, j, wv, bias, out, ow, accumulate, oy): ColumnArgs<'_>,
) {
    let ox = j * 16;
    let mut acc = [_mm512_set1_ps(bias); R];
    if accumulate {
        for (r, a) in acc.iter_mut().enumerate() {
            *a = _mm512_maskz_loadu_ps(col.store, out.add((oy + r) * ow + ox));
        }
    }
    // One step per input row, unrolled by hand: LLVM kept the stride-2 blocks (15 rows of 7
    // output rows) as a loop, with the weights indexed in memory by the row (1.3× slower).
    // 3×3: the middle tap row sums into accumulators of its own, added at the end (on the
    // FADD pipes, which FMAs and shuffles do not use), so an output's chain of dependent FMAs
    // is 6 long, not 9: 14 × 14 planes 0.92× the time. At stride 2 it pays only in blocks of
    // 4 rows, whose 8 accumulators leave registers for the weights and shuffles: 0.92× the
    // time of the 96-channel 112 × 112 layer at one thread (in blocks of 7: no faster).
    // 5 × 5 taps keep one accumulator per row: split by tap-row parity, 1.1–1.25× slower.
    let mut odd = [_mm512_setzero_ps(); R];
    seq16!(|ir| row_step::<KH, KW, SH, SW, R, MASKED>(
        ir,
        rows,
        SW * ox,
        col,
        wv,
        (&mut acc, &mut odd)
    ));
    for (r, (a, o)) in acc.iter().zip(&odd).enumerate() {
        let y = if KH == 3 { _mm512_add_ps(*a, *o) } else { *a };
        _mm512_mask_storeu_ps(out.add((oy + r) * ow + ox), col.store, y);
    }
}

/// Input row `ir` of a block's column vector: its tap vectors into every accumulator (output
/// row) it meets; nothing past the block's `(R − 1)·SH + KH` rows. (A function, not a closure:
/// a closure is not compiled for AVX-512, and its intrinsics became calls.)
#[inline(always)]
unsafe fn row_step<
    const KH: usize,
    const KW: usize,
    const SH: usize,
    const SW: usize,
    const R: usize,
    const MASKED: bool,
>(
    ir: usize,
    rows: &[*const f32; MAX_BLOCK_ROWS],
    at: usize,
    col: &Column,
    wv: &[__m512; 25],
    (acc, odd): (&mut [__m512; R], &mut [__m512; R]),
) {
    if ir >= (R - 1) * SH + KH {
        return;
    }
    let v = taps_of_row::<KW, SW, MASKED>(rows[ir].wrapping_add(at), &col.load);
    for (r, (a, o)) in acc.iter_mut().zip(odd.iter_mut()).enumerate() {
        if ir >= r * SH && ir - r * SH < KH {
            let ky = ir - r * SH;
            let a = if KH == 3 && ky == 1 { o } else { a };
            for (kx, t) in v.iter().enumerate().take(KW) {
                *a = _mm512_fmadd_ps(*t, wv[ky * KW + kx], *a);
            }
        }
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
        block::<KH, KW, SH, SW, R>(p, &wv, bias, out, accumulate, oy);
        oy += R;
    }
    prefetch_some(p, &mut next, usize::MAX);
    // The last rows as one block (each input row still serves every output row it meets).
    // Only remainders below R run; the arms above it are compiled but never taken (7 rows of
    // 5×5 stride 2 would need more than MAX_BLOCK_ROWS). Tails as calls of their own, made
    // only for a shape's remainders, ran 1.1× slower (code layout).
    let args = (p, &wv, bias, out, accumulate, oy);
    match p.oh - oy {
        0 => {}
        1 => tail::<KH, KW, SH, SW, 1>(args),
        2 => tail::<KH, KW, SH, SW, 2>(args),
        3 => tail::<KH, KW, SH, SW, 3>(args),
        4 => tail::<KH, KW, SH, SW, 4>(args),
        5 => tail::<KH, KW, SH, SW, 5>(args),
        6 => tail::<KH, KW, SH, SW, 6>(args),
        _ => tail::<KH, KW, SH, SW, 7>(args),
    }
}

/// [`block`] for the rows left after the full blocks (fewer than the block height, at most 7).
#[inline(always)]
unsafe fn tail<
    const KH: usize,
    const KW: usize,
    const SH: usize,
    const SW: usize,
    const R: usize,
>(
    (p, wv, bias, out, accumulate, oy): (&Plane, &[__m512; 25], f32, *mut f32, bool, usize),
) {
    block::<KH, KW, SH, SW, R>(p, wv, bias, out, accumulate, oy)
}

/// One output plane: `out = bias + taps(x)` (or `out += taps(x)` when `accumulate`, bias
/// unused), zero padding.
///
/// # Safety
/// The CPU must have AVX-512F; `p.x` must hold h·w floats, `p.zero` point at
/// [`zero_row_len`] zeros, `p.cols` be the layer's [`columns`], `w` hold kh·kw taps and `out`
/// oh·ow floats, and the output size must follow from the input size, padding and shape (so
/// that every valid output reads inside the padded input).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn forward(
    shape: FastShape,
    p: &Plane,
    w: *const f32,
    bias: f32,
    out: *mut f32,
    accumulate: bool,
) {
    // (Block heights R: keep the asserts by MAX_BLOCK_ROWS in step.)
    match shape {
        FastShape::K3S1 => forward_t::<3, 3, 1, 1, 7>(p, w, bias, out, accumulate),
        FastShape::K3S2 => forward_t::<3, 3, 2, 2, 4>(p, w, bias, out, accumulate),
        FastShape::K5S1 => forward_t::<5, 5, 1, 1, 4>(p, w, bias, out, accumulate),
        FastShape::K5S2 => forward_t::<5, 5, 2, 2, 2>(p, w, bias, out, accumulate),
    }
}

/// A run of consecutive input planes of one layer, `(n, c)` indices `first..first + count`,
/// and their `mult` output planes each (contiguous, NCHW): what [`forward_run`] computes.
pub(super) struct Run<'a> {
    /// The first input plane (its `x`) and the layer's sizes; its prefetch fields are unused.
    pub plane: Plane<'a>,
    /// Floats from one input plane to the next.
    pub stride: usize,
    /// Index `n·C + c` of the first plane.
    pub first: usize,
    /// Planes in the run (≥ 1).
    pub count: usize,
    /// Input channels C.
    pub channels: usize,
    /// Depth multiplier m: output planes per input plane.
    pub mult: usize,
    /// Floats readable from `plane.x` (the next plane past the run is prefetched if inside).
    pub readable: usize,
    /// All `C·m·kh·kw` taps of the layer.
    pub w: *const f32,
    /// The layer's `C·m` biases, or null for none.
    pub bias: *const f32,
    /// The run's first output plane.
    pub out: *mut f32,
}

/// Every output plane of a run: [`forward`] on each, without going back to the caller between
/// planes (a call per plane, with its slicing and checks, made 576 planes of 14 × 14 at one
/// thread 1.2× slower, and 7 × 7 planes 1.3×).
///
/// # Safety
/// As [`forward`] for each plane: `r.plane.x` must hold `readable ≥ (count − 1)·stride + h·w`
/// floats, `w` the layer's `C·m·kh·kw` taps, `bias` (unless null) `C·m` floats, and `out`
/// `count·m·oh·ow` floats.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn forward_run(shape: FastShape, r: &Run) {
    // (Block heights R: as in `forward`.)
    match shape {
        FastShape::K3S1 => run_t::<3, 3, 1, 1, 7>(r),
        FastShape::K3S2 => run_t::<3, 3, 2, 2, 4>(r),
        FastShape::K5S1 => run_t::<5, 5, 1, 1, 4>(r),
        FastShape::K5S2 => run_t::<5, 5, 2, 2, 2>(r),
    }
}

/// [`forward_run`] for one shape.
#[target_feature(enable = "avx512f")]
unsafe fn run_t<
    const KH: usize,
    const KW: usize,
    const SH: usize,
    const SW: usize,
    const R: usize,
>(
    r: &Run,
) {
    let p0 = &r.plane;
    let (in_plane, out_plane, taps) = (p0.h * p0.w, p0.oh * p0.ow, KH * KW);
    for i in 0..r.count {
        let off = i * r.stride;
        let c = (r.first + i) % r.channels;
        // The next plane, if readable: prefetched while this one is computed.
        let next = off + r.stride;
        let pf_len = if next + in_plane <= r.readable {
            in_plane
        } else {
            0
        };
        for j in 0..r.mult {
            let k = c * r.mult + j;
            let p = Plane {
                x: p0.x.add(off),
                pf: p0.x.wrapping_add(next),
                pf_len: if j == 0 { pf_len } else { 0 },
                ..*p0
            };
            let bias = if r.bias.is_null() {
                0.0
            } else {
                *r.bias.add(k)
            };
            let out = r.out.add((i * r.mult + j) * out_plane);
            forward_t::<KH, KW, SH, SW, R>(&p, r.w.add(k * taps), bias, out, false);
        }
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
    for (j, col) in p.cols.iter().enumerate() {
        if col.whole {
            wgrad_column::<KW, SH, SW, KY0, NY, R, false>(p, dy, oy, j, col, acc)
        } else {
            wgrad_column::<KW, SH, SW, KY0, NY, R, true>(p, dy, oy, j, col, acc)
        }
    }
}

/// [`wgrad_rows`] for column vector `j` (`MASKED`: its loads are masked).
#[inline(always)]
unsafe fn wgrad_column<
    const KW: usize,
    const SH: usize,
    const SW: usize,
    const KY0: usize,
    const NY: usize,
    const R: usize,
    const MASKED: bool,
>(
    p: &Plane,
    dy: *const f32,
    oy: usize,
    j: usize,
    col: &Column,
    acc: &mut [__m512; 15],
) {
    let ox = j * 16;
    let mask = col.store;
    // Lanes past the row are neither read from dy nor accumulated.
    let mut d = [_mm512_setzero_ps(); R];
    for (r, dr) in d.iter_mut().enumerate() {
        *dr = _mm512_maskz_loadu_ps(mask, dy.add((oy + r) * p.ow + ox));
    }
    for ir in 0..(R - 1) * SH + NY {
        let iy = (oy * SH + KY0 + ir).wrapping_sub(p.pt);
        if iy >= p.h {
            continue;
        }
        let at = p.x.wrapping_add(iy * p.w + SW * ox).wrapping_sub(p.pl);
        let v = taps_of_row::<KW, SW, MASKED>(at, &col.load);
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
    // dy rows per pass R: at stride 1 each input row's shifts (which take FMA slots) then
    // serve R dy rows. 4 rows instead of 2 (3×3) or 1 (5×5) made the backward of 144
    // channels of 56 × 56 0.65× the time at one thread, of 576 of 14 × 14 0.7×, of the 5×5
    // m = 2 layer 0.74×; 6 rows were no faster (3×3) or spilled (5×5). At stride 2, 2 rows
    // (3×3) and 1 (5×5) stay: 4 rows were slower, 2 rows of 5×5 within the noise.
    match shape {
        FastShape::K3S1 => wgrad_t::<3, 1, 1, 0, 3, 4>(p, dy, gw),
        FastShape::K3S2 => wgrad_t::<3, 2, 2, 0, 3, 2>(p, dy, gw),
        FastShape::K5S1 => {
            wgrad_t::<5, 1, 1, 0, 3, 4>(p, dy, gw);
            wgrad_t::<5, 1, 1, 3, 2, 4>(p, dy, gw);
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

    /// Every column vector's loads, for the four shapes over narrow and odd rows and
    /// paddings: the masks are exactly the used lanes inside the row, a column loads whole
    /// only where every used lane is inside, the store mask is the output row's, and a zero
    /// row of [`zero_row_len`] floats holds every lane any load reads (padded columns).
    #[test]
    fn columns_load_inside_the_row_or_masked() {
        fn check<const KW: usize, const SW: usize>(shape: FastShape) {
            for w in 1..80 {
                for (pl, pr) in [(0, 0), (KW / 2, KW / 2), (KW - 1, 0), (1, KW + 2)] {
                    if w + pl + pr < KW {
                        continue;
                    }
                    let ow = (w + pl + pr - KW) / SW + 1;
                    let cols = columns(shape, w, pl, ow);
                    let zero = zero_row_len(shape, ow) as isize;
                    assert_eq!(cols.len(), ow.div_ceil(16));
                    for (j, c) in cols.iter().enumerate() {
                        assert_eq!(c.store, lanes_below(ow - 16 * j));
                        for i in 0..load_count::<KW, SW>() {
                            let start =
                                (SW * 16 * j) as isize - pl as isize + load_offset::<KW, SW>(i);
                            for lane in 0..16 {
                                if lanes_used::<KW, SW>(i) >> lane & 1 == 0 {
                                    assert_eq!(c.load[i] >> lane & 1, 0);
                                    continue;
                                }
                                let col = start + lane;
                                let inside = col >= 0 && col < w as isize;
                                let set = c.load[i] >> lane & 1 == 1;
                                assert_eq!(
                                    set, inside,
                                    "{shape:?} w{w} pl{pl} vector {j} load {i}"
                                );
                                assert!(inside || !c.whole);
                                let padded = col + pl as isize;
                                assert!(padded >= 0 && padded < zero, "{shape:?} w{w} pl{pl}");
                            }
                        }
                    }
                }
            }
        }
        check::<3, 1>(FastShape::K3S1);
        check::<3, 2>(FastShape::K3S2);
        check::<5, 1>(FastShape::K5S1);
        check::<5, 2>(FastShape::K5S2);
    }
}
