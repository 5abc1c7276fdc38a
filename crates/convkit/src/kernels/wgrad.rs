//! Weight gradients as GEMMs on the sgemm microkernels, without an im2col copy.
//!
//! `out[k, c, ky, kx] = Σ_{n, oy, ox} b[n, k, oy, ox] · a_pad[n, c, oy·s + ky·d, ox·s + kx·d]`
//! (grad weight of a conv: `a` = input, `b` = grad output; of a transposed conv the roles
//! swap). For one output row (n, oy) and one tap (ky, kx) this is a rank-OW update
//! `out[:, :, ky, kx] += B_row[K × OW] · A_row[OW × C]`, where `A_row` is input row
//! `oy·s + ky·d` read from column `kx·d` every `s` columns. With `a` copied once into padded
//! NHWC, `A_row` is a plain strided matrix (row stride `s·C`, channels contiguous), so the
//! microkernel reads it in place as its `B` operand; `b`'s rows are packed once into `MR`-wide
//! panels as its `A` operand. The only copies are one NHWC transpose of `a` and one packing of
//! `b`, both the size of the tensors (an im2col would be kh·kw times larger).
//!
//! Work is split over (group, MR-block of k, ky, kx) tiles; each tile sums its (n, oy)
//! updates in a fixed order, so results do not depend on the thread count.

use super::gemm::{Microkernel, RowOffsets};
use crate::error::{ConvError, Result};
use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

/// The correlation above with `a` zero-padded by `pad = [top, bottom, left, right]`:
/// returns `(B, A/groups, kh, kw)` for `a: (N, A, H, W)`, `b: (N, B, OH, OW)`.
///
/// The padded `a` must contain every tap: `H + top + bottom ≥ (OH−1)·s + (kh−1)·d + 1` (and
/// likewise for the width).
#[allow(clippy::too_many_arguments)]
pub fn correlate(
    a: ArrayView4<f32>,
    b: ArrayView4<f32>,
    pad: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    ukr: Microkernel,
) -> Result<Array4<f32>> {
    let (n, ca, h, w) = a.dim();
    let (nb, cb, oh, ow) = b.dim();
    let [kh, kw] = kernel;
    let [sh, sw] = stride;
    let [dh, dw] = dilation;
    let (hp, wp) = (h + pad[0] + pad[1], w + pad[2] + pad[3]);
    if nb != n || groups == 0 || !ca.is_multiple_of(groups) || !cb.is_multiple_of(groups) {
        return Err(ConvError::Unsupported(format!(
            "weight gradient: batches {n} and {nb}, channels {ca} and {cb}, groups {groups} do not fit"
        )));
    }
    if oh == 0
        || ow == 0
        || (oh - 1) * sh + (kh - 1) * dh + 1 > hp
        || (ow - 1) * sw + (kw - 1) * dw + 1 > wp
    {
        return Err(ConvError::Unsupported(
            "weight gradient: the padded input does not cover every tap".into(),
        ));
    }
    let (ag, bg) = (ca / groups, cb / groups);
    let (mr, nr) = (ukr.mr, ukr.nr);
    // `a` as padded NHWC; `nr` spare channels keep every NR-wide read of the last group inside.
    let cp = ca + nr;
    let mut an = vec![0f32; n * hp * wp * cp];
    an.par_chunks_mut(wp * cp)
        .enumerate()
        .for_each(|(row, dst)| {
            let (ni, yp) = (row / hp, row % hp);
            if yp < pad[0] || yp >= pad[0] + h {
                return;
            }
            let dst = &mut dst[pad[2] * cp..];
            for c in 0..ca {
                let src = a.slice(ndarray::s![ni, c, yp - pad[0], ..]);
                for (x, v) in src.iter().enumerate() {
                    dst[x * cp + c] = *v;
                }
            }
        });
    // `b` packed: per (n, oy, group, k-block) an OW × MR panel, zero rows past the group.
    let kblocks = bg.div_ceil(mr);
    let panel = ow * mr;
    let mut bp = vec![0f32; n * oh * groups * kblocks * panel];
    bp.par_chunks_mut(groups * kblocks * panel)
        .enumerate()
        .for_each(|(row, dst)| {
            let (ni, oy) = (row / oh, row % oh);
            for gi in 0..groups {
                for kb in 0..kblocks {
                    let p = &mut dst[(gi * kblocks + kb) * panel..][..panel];
                    for m in 0..mr.min(bg - kb * mr) {
                        let k = gi * bg + kb * mr + m;
                        for (ox, v) in b.slice(ndarray::s![ni, k, oy, ..]).iter().enumerate() {
                            p[ox * mr + m] = *v;
                        }
                    }
                }
            }
        });
    let cols = ag.div_ceil(nr) * nr;
    // B rows: one per output column, `sw · cp` floats apart in the NHWC input.
    let offs = RowOffsets::new((0..ow).map(|k| k * sw * cp).collect());
    let tasks: Vec<(usize, usize, usize, usize)> = (0..groups)
        .flat_map(|gi| {
            (0..kblocks).flat_map(move |kb| {
                (0..kh).flat_map(move |ky| (0..kw).map(move |kx| (gi, kb, ky, kx)))
            })
        })
        .collect();
    let tiles: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(gi, kb, ky, kx)| {
            let mut tile = vec![0f32; mr * cols];
            for ni in 0..n {
                for oy in 0..oh {
                    let iy = oy * sh + ky * dh;
                    let a0 = ((ni * hp + iy) * wp + kx * dw) * cp + gi * ag;
                    let p0 = (((ni * oh + oy) * groups + gi) * kblocks + kb) * panel;
                    let apanel = &bp[p0..p0 + panel];
                    for cblk in (0..cols).step_by(nr) {
                        ukr.run(
                            ow,
                            apanel,
                            &an[a0 + cblk..],
                            &offs,
                            0,
                            &mut tile[cblk..],
                            cols,
                            true,
                        );
                    }
                }
            }
            tile
        })
        .collect();
    let mut out = Array4::<f32>::zeros((cb, ag, kh, kw));
    for (&(gi, kb, ky, kx), tile) in tasks.iter().zip(&tiles) {
        for m in 0..mr.min(bg - kb * mr) {
            for c in 0..ag {
                out[[gi * bg + kb * mr + m, c, ky, kx]] = tile[m * cols + c];
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;

    fn naive(
        a: &Array4<f32>,
        b: &Array4<f32>,
        pad: [usize; 4],
        k: [usize; 2],
        s: [usize; 2],
        d: [usize; 2],
        g: usize,
    ) -> Array4<f64> {
        let (n, ca, h, w) = a.dim();
        let (_, cb, oh, ow) = b.dim();
        let (ag, bg) = (ca / g, cb / g);
        Array4::from_shape_fn((cb, ag, k[0], k[1]), |(kk, c, ky, kx)| {
            let cc = kk / bg * ag + c;
            let mut acc = 0f64;
            for ni in 0..n {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let y = (oy * s[0] + ky * d[0]) as isize - pad[0] as isize;
                        let x = (ox * s[1] + kx * d[1]) as isize - pad[2] as isize;
                        if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                            acc += a[[ni, cc, y as usize, x as usize]] as f64
                                * b[[ni, kk, oy, ox]] as f64;
                        }
                    }
                }
            }
            acc
        })
    }

    #[test]
    fn matches_naive_on_every_isa() {
        let cases = [
            // (n, ca, h, w), (cb, oh, ow), pad, k, s, d, g
            (
                [2, 5, 7, 9],
                [6, 5, 7],
                [1, 1, 1, 1],
                [3, 3],
                [1, 1],
                [1, 1],
                1,
            ),
            (
                [1, 4, 9, 8],
                [6, 4, 3],
                [0, 1, 2, 0],
                [2, 3],
                [2, 3],
                [1, 1],
                2,
            ),
            (
                [1, 3, 10, 10],
                [9, 6, 6],
                [2, 2, 2, 2],
                [3, 3],
                [1, 1],
                [3, 3],
                3,
            ),
            (
                [3, 64, 6, 5],
                [17, 6, 5],
                [0, 0, 0, 0],
                [1, 1],
                [1, 1],
                [1, 1],
                1,
            ),
        ];
        for (ash, [cb, oh, ow], pad, k, s, d, g) in cases {
            let mut seed = 7u32;
            let mut rnd = move || {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            };
            let a = Array4::from_shape_simple_fn(ash, &mut rnd);
            let b = Array4::from_shape_simple_fn([ash[0], cb, oh, ow], &mut rnd);
            let want = naive(&a, &b, pad, k, s, d, g);
            for isa in Isa::available_levels() {
                let ukr = Microkernel::for_isa(isa).unwrap();
                let got = correlate(a.view(), b.view(), pad, k, s, d, g, ukr).unwrap();
                assert_eq!(got.shape(), want.shape());
                for (x, y) in got.iter().zip(want.iter()) {
                    assert!((*x as f64 - y).abs() < 1e-4, "{isa:?} {ash:?}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn rejects_a_padding_that_misses_taps() {
        let a = Array4::<f32>::zeros((1, 1, 4, 4));
        let b = Array4::<f32>::zeros((1, 1, 4, 4));
        let ukr = Microkernel::for_isa(Isa::Scalar).unwrap();
        assert!(correlate(a.view(), b.view(), [0; 4], [3, 3], [1, 1], [1, 1], 1, ukr).is_err());
    }
}
