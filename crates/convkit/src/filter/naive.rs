//! The filter oracle: OpenCV-style filtering by its definition, f64, no tricks.
//!
//! `y[r, c, ch] = Σ_{i,j} k[i, j] · x̃[r + i·d − ay·d, c + j·d − ax·d, ch]` where `x̃` is the
//! image extended by the border rule and `(ay, ax) = (rows / 2, cols / 2)`.

use super::kernels::Kernel;
use super::FilterBorder;

/// Filters an `h × w × c` (row-major, interleaved) f64 image; returns the same layout.
pub fn filter_naive(
    src: &[f64],
    (h, w, c): (usize, usize, usize),
    kernel: &Kernel,
    dilation: usize,
    border: FilterBorder,
) -> Vec<f64> {
    assert_eq!(src.len(), h * w * c, "image data does not match its shape");
    let (ay, ax) = ((kernel.rows() / 2) as isize, (kernel.cols() / 2) as isize);
    let d = dilation as isize;
    let mut out = vec![0.0; h * w * c];
    for r in 0..h {
        for col in 0..w {
            for ch in 0..c {
                let mut acc = 0.0;
                for i in 0..kernel.rows() {
                    let sy = border.source(r as isize + (i as isize - ay) * d, h);
                    for j in 0..kernel.cols() {
                        let sx = border.source(col as isize + (j as isize - ax) * d, w);
                        let v = match (sy, sx) {
                            (Some(y), Some(x)) => src[(y * w + x) * c + ch],
                            _ => border.value() as f64,
                        };
                        acc += kernel.at(i, j) * v;
                    }
                }
                out[(r * w + col) * c + ch] = acc;
            }
        }
    }
    out
}
