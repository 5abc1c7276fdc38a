//! Out-of-place matrix transposes for layout changes (NCHW → NHWC, pixel-major packing).
//!
//! An element-by-element transpose writes (or reads) one float per cache line in flight and
//! runs at several cycles per element; 8 × 8 register blocks (AVX: 8 row loads, 24 shuffles,
//! 8 row stores) move a whole block per ~40 instructions with full-line accesses.

use super::Isa;

/// `dst[j·ld_dst + i] = src[i·ld_src + j]` for `i < rows`, `j < cols`.
///
/// # Panics
/// If a slice is too short for its shape and leading dimension.
pub fn transpose(
    src: &[f32],
    ld_src: usize,
    dst: &mut [f32],
    ld_dst: usize,
    rows: usize,
    cols: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        ld_src >= cols && src.len() >= (rows - 1) * ld_src + cols,
        "transpose source too short"
    );
    assert!(
        ld_dst >= rows && dst.len() >= (cols - 1) * ld_dst + rows,
        "transpose destination too short"
    );
    let (rb, cb) = (rows / 8 * 8, cols / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx2.available() {
        for i in (0..rb).step_by(8) {
            for j in (0..cb).step_by(8) {
                // SAFETY: AVX2 was detected; the block reads rows i..i+8, columns j..j+8 of
                // `src` and writes rows j..j+8, columns i..i+8 of `dst`, all inside the
                // asserted extents (i + 8 ≤ rows, j + 8 ≤ cols).
                unsafe {
                    x86::block8(
                        src.as_ptr().add(i * ld_src + j),
                        ld_src,
                        dst.as_mut_ptr().add(j * ld_dst + i),
                        ld_dst,
                    )
                }
            }
        }
        scalar(src, ld_src, dst, ld_dst, (0, rb), (cb, cols));
        scalar(src, ld_src, dst, ld_dst, (rb, rows), (0, cols));
        return;
    }
    let _ = (rb, cb);
    scalar(src, ld_src, dst, ld_dst, (0, rows), (0, cols));
}

/// The portable transpose of rows `r0..r1` × columns `c0..c1`, blocked so that both the
/// reads and the writes of a block stay in L1.
fn scalar(
    src: &[f32],
    ld_src: usize,
    dst: &mut [f32],
    ld_dst: usize,
    (r0, r1): (usize, usize),
    (c0, c1): (usize, usize),
) {
    for jb in (c0..c1).step_by(16) {
        for i in r0..r1 {
            for j in jb..(jb + 16).min(c1) {
                dst[j * ld_dst + i] = src[i * ld_src + j];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// One 8 × 8 block: `dst[j·lds + i] = src[i·ls + j]`, `i, j < 8`.
    ///
    /// # Safety
    /// AVX2 available; `src` valid for 8 rows of 8 at stride `ls`, `dst` for 8 rows of 8 at
    /// stride `lds`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn block8(src: *const f32, ls: usize, dst: *mut f32, lds: usize) {
        // SAFETY: every access is one of the 8 rows of 8 the contract allows.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ls)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let o = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (j, v) in o.iter().enumerate() {
                _mm256_storeu_ps(dst.add(j * lds), *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape class (full blocks, ragged edges, thin matrices) against the definition,
    /// with padding past the leading dimensions left untouched.
    #[test]
    fn matches_the_definition() {
        for (rows, cols) in [(8, 8), (16, 24), (13, 9), (3, 17), (1, 1), (9, 64), (64, 5)] {
            let (ls, ld) = (cols + 3, rows + 2);
            let src: Vec<f32> = (0..rows * ls).map(|v| v as f32 * 0.25 - 7.0).collect();
            let mut dst = vec![f32::NAN; cols * ld];
            transpose(&src, ls, &mut dst, ld, rows, cols);
            for j in 0..cols {
                for i in 0..ld {
                    let got = dst[j * ld + i];
                    if i < rows {
                        assert_eq!(got, src[i * ls + j], "{rows}x{cols} at ({j}, {i})");
                    } else {
                        assert!(got.is_nan(), "{rows}x{cols}: wrote padding at ({j}, {i})");
                    }
                }
            }
            // The portable path alone gives the same result.
            let mut plain = vec![f32::NAN; cols * ld];
            scalar(&src, ls, &mut plain, ld, (0, rows), (0, cols));
            assert_eq!(
                plain.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                dst.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    #[should_panic(expected = "destination too short")]
    fn short_destination_panics_before_writing() {
        let src = [0f32; 64];
        let mut dst = [0f32; 63];
        transpose(&src, 8, &mut dst, 8, 8, 8);
    }
}
