//! The per-row Winograd F(2×2, 3×3) transforms, vectorised across the tiles of a tile row:
//! `d·B` of one padded input row, `Bᵀ·(d·B)` across four such rows, and the output transform
//! `Aᵀ·M·A` of one channel's tile row. Each has a portable version and an AVX-512 one that
//! performs the same additions in the same order (bit-identical, tested below): on Zen 5 the
//! compiler's baseline-target code (scalar for the output transform, whose results interleave,
//! SSE elsewhere) made the transforms half of a 3×3 64-channel layer's time.

/// `d·B` of one padded input row for every tile of the row: with `E[t] = d[2t]`,
/// `O[t] = d[2t+1]` and `⁺` the next tile, `(E − E⁺, O + E⁺, E⁺ − O, O − O⁺)` into the four
/// `tw`-long quarters of `t4`.
///
/// # Panics
/// If `prow` is shorter than `2·tw + 2` or `t4` than `4·tw`.
#[inline]
pub(super) fn row_times_b(prow: &[f32], tw: usize, t4: &mut [f32], avx512: bool) {
    assert!(
        prow.len() >= 2 * tw + 2 && t4.len() >= 4 * tw,
        "row lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: `avx512` is only true when AVX-512F was detected (a plan's ISA); the lengths
        // were checked above.
        unsafe { x86::row_times_b(prow.as_ptr(), tw, t4.as_mut_ptr()) };
        return;
    }
    let _ = avx512;
    let (c0, rest) = t4.split_at_mut(tw);
    let (c1, rest) = rest.split_at_mut(tw);
    let (c2, c3) = rest.split_at_mut(tw);
    for t in 0..tw {
        let (e, o, e1, o1) = (
            prow[2 * t],
            prow[2 * t + 1],
            prow[2 * t + 2],
            prow[2 * t + 3],
        );
        c0[t] = e - e1;
        c1[t] = o + e1;
        c2[t] = e1 - o;
        c3[t] = o - o1;
    }
}

/// `Bᵀ·r` across four rows of equal length: `v = (r0 − r2, r1 + r2, r2 − r1, r1 − r3)`.
///
/// # Panics
/// If the rows differ in length.
#[inline]
pub(super) fn bt_rows(r: [&[f32]; 4], v: [&mut [f32]; 4], avx512: bool) {
    let n = r[0].len();
    assert!(
        r.iter().all(|x| x.len() == n) && v.iter().all(|x| x.len() == n),
        "row lengths"
    );
    let [v0, v1, v2, v3] = v;
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: AVX-512F detected (see `row_times_b`); all eight rows hold `n` values.
        unsafe {
            x86::bt_rows(
                [r[0].as_ptr(), r[1].as_ptr(), r[2].as_ptr(), r[3].as_ptr()],
                [
                    v0.as_mut_ptr(),
                    v1.as_mut_ptr(),
                    v2.as_mut_ptr(),
                    v3.as_mut_ptr(),
                ],
                n,
            )
        };
        return;
    }
    let _ = avx512;
    let [r0, r1, r2, r3] = r;
    for t in 0..n {
        v0[t] = r0[t] - r2[t];
        v1[t] = r1[t] + r2[t];
        v2[t] = r2[t] - r1[t];
        v3[t] = r1[t] - r3[t];
    }
}

/// Output transform `Aᵀ·M·A`, `Aᵀ = [[1,1,1,0],[0,1,−1,−1]]`, of one channel's tile row, plus
/// the bias: `ms` are the 16 GEMM results `M_ξ` (`tw` tiles each), `top`/`bot` the first
/// `top.len()` columns of the two output rows (tile `t` gives columns `2t` and `2t + 1`).
///
/// # Panics
/// If a row of `ms` is shorter than `tw`, the output rows differ in length or are longer than
/// `2·tw`.
#[inline]
pub(super) fn output_rows(
    ms: &[&[f32]; 16],
    tw: usize,
    top: &mut [f32],
    bot: &mut [f32],
    bias: f32,
    avx512: bool,
) {
    let ncols = top.len();
    assert!(
        ms.iter().all(|m| m.len() >= tw) && bot.len() == ncols && ncols <= 2 * tw,
        "row lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: AVX-512F detected (see `row_times_b`); the lengths were checked above.
        unsafe {
            x86::output_rows(
                &ms.map(|m| m.as_ptr()),
                ncols,
                top.as_mut_ptr(),
                bot.as_mut_ptr(),
                bias,
            )
        };
        return;
    }
    let _ = avx512;
    for t in 0..ncols.div_ceil(2) {
        let mut s0 = [0f32; 4];
        let mut s1 = [0f32; 4];
        for b in 0..4 {
            let (m0, m1, m2, m3) = (ms[b][t], ms[4 + b][t], ms[8 + b][t], ms[12 + b][t]);
            s0[b] = m0 + m1 + m2;
            s1[b] = m1 - m2 - m3;
        }
        top[2 * t] = s0[0] + s0[1] + s0[2] + bias;
        bot[2 * t] = s1[0] + s1[1] + s1[2] + bias;
        if 2 * t + 1 < ncols {
            top[2 * t + 1] = s0[1] - s0[2] - s0[3] + bias;
            bot[2 * t + 1] = s1[1] - s1[2] - s1[3] + bias;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::kernels::lane_mask as mask;

    /// The even (`odd = 0`) or odd (`odd = 1`) elements of 32 consecutive values at `p`, of
    /// which only the first `avail` may be read (the rest read as 0).
    ///
    /// # Safety
    /// AVX-512F; `p` valid for `min(avail, 32)` values.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn deinterleave(p: *const f32, avail: usize) -> (__m512, __m512) {
        // SAFETY: each load reads only lanes below `avail` (masked), valid by the contract.
        let (a, b) = unsafe {
            (
                _mm512_maskz_loadu_ps(mask(avail), p),
                _mm512_maskz_loadu_ps(mask(avail.saturating_sub(16)), p.add(16)),
            )
        };
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        (
            _mm512_permutex2var_ps(a, even, b),
            _mm512_permutex2var_ps(a, odd, b),
        )
    }

    /// [`super::row_times_b`], 16 tiles at a time.
    ///
    /// # Safety
    /// AVX-512F; `prow` valid for `2·tw + 2` values, `t4` for `4·tw`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn row_times_b(prow: *const f32, tw: usize, t4: *mut f32) {
        let len = 2 * tw + 2;
        let mut t = 0;
        while t < tw {
            let m = mask(tw - t);
            // SAFETY: the loads read below `len` (the `avail` bounds); the stores write the
            // `min(16, tw − t)` lanes of tiles `t..` in each quarter, below `4·tw`.
            unsafe {
                let (e, o) = deinterleave(prow.add(2 * t), len - 2 * t);
                let (e1, o1) = deinterleave(prow.add(2 * t + 2), len - 2 * t - 2);
                _mm512_mask_storeu_ps(t4.add(t), m, _mm512_sub_ps(e, e1));
                _mm512_mask_storeu_ps(t4.add(tw + t), m, _mm512_add_ps(o, e1));
                _mm512_mask_storeu_ps(t4.add(2 * tw + t), m, _mm512_sub_ps(e1, o));
                _mm512_mask_storeu_ps(t4.add(3 * tw + t), m, _mm512_sub_ps(o, o1));
            }
            t += 16;
        }
    }

    /// [`super::bt_rows`], 16 values at a time.
    ///
    /// # Safety
    /// AVX-512F; the four `r` rows valid for `n` reads, the four `v` rows for `n` writes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bt_rows(r: [*const f32; 4], v: [*mut f32; 4], n: usize) {
        let mut t = 0;
        while t < n {
            let m = mask(n - t);
            // SAFETY: lanes `t..min(t + 16, n)` only (masked), inside every row.
            unsafe {
                let r0 = _mm512_maskz_loadu_ps(m, r[0].add(t));
                let r1 = _mm512_maskz_loadu_ps(m, r[1].add(t));
                let r2 = _mm512_maskz_loadu_ps(m, r[2].add(t));
                let r3 = _mm512_maskz_loadu_ps(m, r[3].add(t));
                _mm512_mask_storeu_ps(v[0].add(t), m, _mm512_sub_ps(r0, r2));
                _mm512_mask_storeu_ps(v[1].add(t), m, _mm512_add_ps(r1, r2));
                _mm512_mask_storeu_ps(v[2].add(t), m, _mm512_sub_ps(r2, r1));
                _mm512_mask_storeu_ps(v[3].add(t), m, _mm512_sub_ps(r1, r3));
            }
            t += 16;
        }
    }

    /// [`super::output_rows`], 16 tiles (32 output columns) at a time.
    ///
    /// # Safety
    /// AVX-512F; every `ms` row valid for `⌈ncols / 2⌉` reads, `top` and `bot` for `ncols`
    /// writes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn output_rows(
        ms: &[*const f32; 16],
        ncols: usize,
        top: *mut f32,
        bot: *mut f32,
        bias: f32,
    ) {
        // Interleave even-column and odd-column results: lanes 0–15 and 16–31 of (e, o).
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let bias = _mm512_set1_ps(bias);
        let tiles = ncols.div_ceil(2);
        let mut t = 0;
        while t < tiles {
            let m = mask(tiles - t);
            let cols = ncols - 2 * t;
            // SAFETY: loads of lanes `t..min(t + 16, tiles)` of each row (masked); stores of
            // columns `2t..min(2t + 32, ncols)` of each output row (masked).
            unsafe {
                let ld = |xi: usize| _mm512_maskz_loadu_ps(m, ms[xi].add(t));
                let mut s0 = [_mm512_setzero_ps(); 4];
                let mut s1 = [_mm512_setzero_ps(); 4];
                for b in 0..4 {
                    let (m0, m1, m2, m3) = (ld(b), ld(4 + b), ld(8 + b), ld(12 + b));
                    s0[b] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                    s1[b] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
                }
                for (s, row) in [(s0, top), (s1, bot)] {
                    let e = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), s[2]), bias);
                    let o = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s[1], s[2]), s[3]), bias);
                    let d = row.add(2 * t);
                    _mm512_mask_storeu_ps(d, mask(cols), _mm512_permutex2var_ps(e, lo, o));
                    if cols > 16 {
                        let v = _mm512_permutex2var_ps(e, hi, o);
                        _mm512_mask_storeu_ps(d.add(16), mask(cols - 16), v);
                    }
                }
            }
            t += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use crate::testutil::pseudo;

    /// The AVX-512 transforms equal the portable ones bit for bit, for every row length
    /// (full vectors and every masked tail), and write nothing past their rows.
    #[test]
    fn simd_transforms_match_the_portable_ones() {
        if !Isa::Avx512.available() {
            return;
        }
        for tw in 1..=50 {
            let prow = pseudo(2 * tw + 2, tw as u64);
            let (mut a, mut b) = (vec![7f32; 4 * tw + 3], vec![7f32; 4 * tw + 3]);
            row_times_b(&prow, tw, &mut a, false);
            row_times_b(&prow, tw, &mut b, true);
            assert_eq!(a, b, "d·B, tw {tw}");

            let rows: Vec<Vec<f32>> = (0..4).map(|i| pseudo(tw, 10 * tw as u64 + i)).collect();
            let r = [&rows[0][..], &rows[1], &rows[2], &rows[3]];
            let mut va = vec![7f32; 4 * tw + 3];
            let mut vb = va.clone();
            for (v, simd) in [(&mut va, false), (&mut vb, true)] {
                let (v0, rest) = v.split_at_mut(tw);
                let (v1, rest) = rest.split_at_mut(tw);
                let (v2, rest) = rest.split_at_mut(tw);
                bt_rows(r, [v0, v1, v2, &mut rest[..tw]], simd);
            }
            assert_eq!(va, vb, "Bᵀ, tw {tw}");

            let m: Vec<Vec<f32>> = (0..16).map(|i| pseudo(tw, 100 * tw as u64 + i)).collect();
            let ms: [&[f32]; 16] = std::array::from_fn(|i| &m[i][..]);
            for ncols in [2 * tw - 1, 2 * tw] {
                let mut outs = [vec![7f32; 2 * ncols + 5], vec![7f32; 2 * ncols + 5]];
                for (o, simd) in outs.iter_mut().zip([false, true]) {
                    let (top, bot) = o.split_at_mut(ncols);
                    output_rows(&ms, tw, top, &mut bot[..ncols], 0.25, simd);
                }
                assert_eq!(outs[0], outs[1], "Aᵀ·M·A, tw {tw}, {ncols} columns");
            }
        }
    }
}
