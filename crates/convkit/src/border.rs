//! Border extension: where a coordinate outside `[0, n)` reads from. The single source of truth
//! for padding modes, used by the reference, the fast engines and the image filters.

use crate::spec::PaddingMode;
use ndarray::{Array4, ArrayView4};

/// A rule for reading outside a signal of length n.
///
/// Names follow OpenCV's `BorderTypes`, with PyTorch's equivalents noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Border {
    /// Outside reads 0 (PyTorch `zeros`; OpenCV `BORDER_CONSTANT` with 0).
    Zeros,
    /// Mirror without the edge: `dcb|abcd|cba` (PyTorch `reflect`; OpenCV `BORDER_REFLECT_101`).
    Reflect101,
    /// Mirror with the edge: `cba|abcd|dcb` (OpenCV `BORDER_REFLECT`; NumPy `symmetric`).
    Reflect,
    /// Repeat the edge: `aaa|abcd|ddd` (PyTorch `replicate`; OpenCV `BORDER_REPLICATE`).
    Replicate,
    /// Wrap around: `bcd|abcd|abc` (PyTorch `circular`; OpenCV `BORDER_WRAP`).
    Circular,
}

impl From<PaddingMode> for Border {
    fn from(m: PaddingMode) -> Self {
        match m {
            PaddingMode::Zeros => Border::Zeros,
            PaddingMode::Reflect => Border::Reflect101,
            PaddingMode::Replicate => Border::Replicate,
            PaddingMode::Circular => Border::Circular,
        }
    }
}

impl Border {
    /// The index inside `[0, n)` that position `i` reads, or `None` for a zero.
    ///
    /// Defined for every `i` (reflections repeat periodically), so callers that allow pads
    /// larger than the signal (image filters) get OpenCV's behaviour; `n` must be ≥ 1.
    pub fn source(self, i: isize, n: usize) -> Option<usize> {
        let ni = n as isize;
        if (0..ni).contains(&i) {
            return Some(i as usize);
        }
        Some(match self {
            Border::Zeros => return None,
            Border::Replicate => i.clamp(0, ni - 1) as usize,
            Border::Circular => i.rem_euclid(ni) as usize,
            Border::Reflect101 => {
                if n == 1 {
                    0
                } else {
                    let period = 2 * (ni - 1);
                    let m = i.rem_euclid(period);
                    (if m >= ni { period - m } else { m }) as usize
                }
            }
            Border::Reflect => {
                let period = 2 * ni;
                let m = i.rem_euclid(period);
                (if m >= ni { period - 1 - m } else { m }) as usize
            }
        })
    }
}

/// Pads an NCHW array by `[top, bottom, left, right]` with the given border rule.
pub fn pad<T: Copy + Default>(x: ArrayView4<T>, pad: [usize; 4], border: Border) -> Array4<T> {
    let (n, c, h, w) = x.dim();
    let (ph, pw) = (h + pad[0] + pad[1], w + pad[2] + pad[3]);
    let rows: Vec<Option<usize>> = (0..ph)
        .map(|y| border.source(y as isize - pad[0] as isize, h))
        .collect();
    let cols: Vec<Option<usize>> = (0..pw)
        .map(|x| border.source(x as isize - pad[2] as isize, w))
        .collect();
    Array4::from_shape_fn((n, c, ph, pw), |(b, ch, y, xx)| match (rows[y], cols[xx]) {
        (Some(sy), Some(sx)) => x[[b, ch, sy, sx]],
        _ => T::default(),
    })
}

/// The adjoint of [`pad`]: folds a gradient on the padded array back onto the `h × w` input,
/// adding each padded cell into the cell it was read from (zeros drop out).
pub fn pad_adjoint(
    dpadded: ArrayView4<f64>,
    pad: [usize; 4],
    border: Border,
    h: usize,
    w: usize,
) -> Array4<f64> {
    let (n, c, ph, pw) = dpadded.dim();
    let mut out = Array4::<f64>::zeros((n, c, h, w));
    for y in 0..ph {
        let Some(sy) = border.source(y as isize - pad[0] as isize, h) else {
            continue;
        };
        for xx in 0..pw {
            let Some(sx) = border.source(xx as isize - pad[2] as isize, w) else {
                continue;
            };
            for b in 0..n {
                for ch in 0..c {
                    out[[b, ch, sy, sx]] += dpadded[[b, ch, y, xx]];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(b: Border, n: usize, lo: isize, hi: isize) -> Vec<Option<usize>> {
        (lo..hi).map(|i| b.source(i, n)).collect()
    }

    #[test]
    fn opencv_border_examples() {
        // OpenCV docs, signal "abcdefgh" (n = 8), three cells each side.
        let s = |v: &[usize]| v.iter().map(|&x| Some(x)).collect::<Vec<_>>();
        assert_eq!(ext(Border::Replicate, 8, -3, 0), s(&[0, 0, 0]));
        assert_eq!(ext(Border::Reflect, 8, -3, 0), s(&[2, 1, 0]));
        assert_eq!(ext(Border::Reflect101, 8, -3, 0), s(&[3, 2, 1]));
        assert_eq!(ext(Border::Circular, 8, -3, 0), s(&[5, 6, 7]));
        assert_eq!(ext(Border::Reflect101, 8, 8, 11), s(&[6, 5, 4]));
        assert_eq!(ext(Border::Reflect, 8, 8, 11), s(&[7, 6, 5]));
        assert_eq!(ext(Border::Zeros, 8, -1, 0), vec![None]);
    }

    #[test]
    fn reflections_repeat_for_large_pads() {
        // n = 3: reflect101 has period 4 (0 1 2 1 0 1 2 ...).
        let got: Vec<usize> = (0..9)
            .map(|i| Border::Reflect101.source(i, 3).unwrap())
            .collect();
        assert_eq!(got, vec![0, 1, 2, 1, 0, 1, 2, 1, 0]);
        assert_eq!(Border::Reflect101.source(-5, 1), Some(0));
        assert_eq!(Border::Reflect.source(-1, 1), Some(0));
    }

    #[test]
    fn pad_adjoint_is_adjoint_of_pad() {
        let x = Array4::from_shape_fn((1, 2, 3, 4), |(_, c, y, x)| (c * 12 + y * 4 + x) as f64);
        let pads = [2, 1, 3, 2];
        for b in [
            Border::Zeros,
            Border::Reflect101,
            Border::Reflect,
            Border::Replicate,
            Border::Circular,
        ] {
            let px = pad(x.view(), pads, b);
            let g = Array4::from_shape_fn(px.dim(), |(_, c, y, x)| {
                ((c + 2 * y + 3 * x) % 7) as f64 - 3.0
            });
            let lhs: f64 = (&px * &g).sum();
            let back = pad_adjoint(g.view(), pads, b, 3, 4);
            let rhs: f64 = (&x * &back).sum();
            assert_eq!(lhs, rhs, "{b:?}");
        }
    }
}
