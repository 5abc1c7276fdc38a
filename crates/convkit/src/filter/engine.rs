//! The streaming filter engine: row stage → ring buffer → column stage, over row bands.
//!
//! OpenCV's `FilterEngine` design: each band of output rows is produced by one task, which
//! streams the input rows it needs through a ring buffer of `extent_h` rows, so every
//! horizontally filtered (or padded) row is computed once per band and stays in cache while
//! the column stage reads it `kh` times.
//!
//! * Row stage (per input row): widen the samples to f32 into a padded row (border handled here,
//!   by index lists computed once, so the inner loops never test bounds), then
//!   - separable: one horizontal 1D pass per rank-1 term into the ring;
//!   - direct 2D: the padded row itself goes into the ring.
//! * Column stage (per 4 output rows): one `dot_block` over the ring rows: separable = the
//!   kernel column of every term (rank r is one pass); 2D = every `(i, j)` tap as ring row
//!   `i` shifted by `j·d·C`.
//!
//! Interleaved channels (RGB) need no special case: a row is `W·C` floats and a horizontal tap
//! step is `d·C` floats, so each channel is filtered independently in the same vector loop.

use super::boxsum::{self, Row};
use super::simd::{dot_block, store_fence, widen, Isa, Taps, MAX_ROWS};
use super::{FilterBorder, Image, Sample};
use rayon::prelude::*;

/// What the row and column stages compute.
#[derive(Debug, Clone)]
pub(crate) enum Stage {
    /// Σ_t col_t ⊗ row_t, each term `(col, row)` of lengths `(kh, kw)`.
    Separable(Vec<(Vec<f32>, Vec<f32>)>),
    /// A dense `kh × kw` row-major kernel.
    Direct(Vec<f32>),
    /// A `kh × kw` box with every weight `scale`: running column sums, then window sums
    /// across ([`super::boxsum`]), then one multiply.
    Box {
        /// The common weight.
        scale: f64,
    },
}

/// The columns of a row-major `kh × kw` kernel that the 2D path multiplies: those not zero in
/// every row (Sobel-x skips its middle one); column 0 alone for an all-zero kernel.
pub(crate) fn live_columns(k: &[f32], kh: usize, kw: usize) -> Vec<usize> {
    let live: Vec<usize> = (0..kw)
        .filter(|&j| (0..kh).any(|i| k[i * kw + j] != 0.0))
        .collect();
    if live.is_empty() {
        vec![0]
    } else {
        live
    }
}

/// The taps of a separable row vector that the row pass multiplies: its non-zero weights
/// (Sobel's [1, 0, −1]: two); tap 0 alone (weight 0) for an all-zero row.
pub(crate) fn live_taps(row: &[f32]) -> Vec<usize> {
    let live: Vec<usize> = (0..row.len()).filter(|&j| row[j] != 0.0).collect();
    if live.is_empty() {
        vec![0]
    } else {
        live
    }
}

/// Geometry of one filter run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub kh: usize,
    pub kw: usize,
    pub dilation: usize,
}

impl Shape {
    /// Rows above the anchor `(kh/2)·d`, below, left and right (OpenCV's centred anchor).
    fn pads(&self) -> (usize, usize, usize, usize) {
        let d = self.dilation;
        (
            (self.kh / 2) * d,
            (self.kh - 1 - self.kh / 2) * d,
            (self.kw / 2) * d,
            (self.kw - 1 - self.kw / 2) * d,
        )
    }
}

/// Filters `src` into `dst` (same `H × W × C` layout, f32).
pub(crate) fn run<T: Sample>(
    stage: &Stage,
    shape: Shape,
    border: FilterBorder,
    src: &Image<T>,
    dst: &mut [f32],
    isa: Isa,
) {
    let (w, h, c) = (src.width, src.height, src.channels);
    let wc = w * c;
    debug_assert_eq!(dst.len(), wc * h);
    if wc == 0 || h == 0 {
        return;
    }
    let (top, bottom, left, right) = shape.pads();
    let ext_h = top + bottom + 1;
    // Border index lists for the horizontal pads (None = the constant value).
    let lsrc: Vec<Option<usize>> = (0..left)
        .map(|p| border.source(p as isize - left as isize, w))
        .collect();
    let rsrc: Vec<Option<usize>> = (0..right)
        .map(|p| border.source((w + p) as isize, w))
        .collect();
    let ctx = Ctx {
        stage,
        shape,
        border,
        src,
        isa,
        lsrc: &lsrc,
        rsrc: &rsrc,
        top,
        ext_h,
        stream: dst.len() * 4 >= STREAM_BYTES,
    };
    // Bands: one per thread or a small multiple (for load balance on a busy machine), as long
    // as the (ext_h − 1) rows each extra band recomputes stay under ~3 % of the rows; a
    // single thread runs one band.
    let threads = rayon::current_num_threads().max(1);
    let max_bands = 1 + h * 3 / 100 / (ext_h - 1).max(1);
    let per = (max_bands / threads).clamp(1, 4);
    let bands = if threads == 1 {
        1
    } else {
        (threads * per).min(h)
    };
    let band_rows = h.div_ceil(bands);
    if bands == 1 {
        ctx.band(0, dst);
    } else {
        dst.par_chunks_mut(band_rows * wc)
            .enumerate()
            .for_each(|(b, out)| ctx.band(b * band_rows, out));
    }
}

struct Ctx<'a, T> {
    stage: &'a Stage,
    shape: Shape,
    border: FilterBorder,
    src: &'a Image<'a, T>,
    isa: Isa,
    lsrc: &'a [Option<usize>],
    rsrc: &'a [Option<usize>],
    top: usize,
    ext_h: usize,
    /// Write the output with non-temporal stores (it is much larger than the caches).
    stream: bool,
}

/// Outputs at least this large (bytes) are written with non-temporal stores: they would
/// only evict the ring buffers from the caches, and streaming skips reading each line first.
const STREAM_BYTES: usize = 16 << 20;

impl<T: Sample> Ctx<'_, T> {
    /// Produces output rows `y0 .. y0 + out.len() / (W·C)`.
    fn band(&self, y0: usize, out: &mut [f32]) {
        if let Stage::Box { scale } = self.stage {
            return self.box_band(y0, out, *scale);
        }
        let (w, c) = (self.src.width, self.src.channels);
        let wc = w * c;
        let rows_out = out.len() / wc;
        let padded_len = (w + self.lsrc.len() + self.rsrc.len()) * c;
        let d = self.shape.dilation;
        // Output rows per column step: R rows share their source rows only when the taps are
        // adjacent (d = 1).
        let rmax = if d == 1 { MAX_ROWS } else { 1 };
        let ring_len = self.ext_h + rmax - 1;
        let ring_row = match self.stage {
            Stage::Separable(t) => t.len() * wc,
            _ => padded_len,
        };
        let mut ring = vec![0.0f32; ring_len * ring_row];
        let mut pad = match self.stage {
            Stage::Separable(_) => vec![0.0f32; padded_len],
            _ => Vec::new(),
        };
        let step = d * c;
        let shifts: Vec<usize> = (0..self.shape.kw).map(|j| j * step).collect();
        // Column-stage columns and weights: 2D = the kernel, separable = one column per term
        // (w[i][t] = col_t[i]) at the term's offset inside a ring row.
        let (ccols, cw): (Vec<usize>, Vec<f32>) = match self.stage {
            Stage::Separable(t) => (
                (0..t.len()).map(|k| k * wc).collect(),
                (0..self.shape.kh)
                    .flat_map(|i| t.iter().map(move |(col, _)| col[i]))
                    .collect(),
            ),
            Stage::Direct(k) => {
                let kw = self.shape.kw;
                let live = live_columns(k, self.shape.kh, kw);
                (
                    live.iter().map(|&j| shifts[j]).collect(),
                    (0..self.shape.kh)
                        .flat_map(|i| live.iter().map(move |&j| k[i * kw + j]))
                        .collect(),
                )
            }
            Stage::Box { .. } => unreachable!("boxes run in box_band"),
        };
        // Row-pass taps per separable term, zero weights skipped (Sobel's [-1, 0, 1]: 2 taps).
        let htaps: Vec<(Vec<usize>, Vec<f32>)> = match self.stage {
            Stage::Separable(t) => t
                .iter()
                .map(|(_, row)| {
                    live_taps(row)
                        .into_iter()
                        .map(|j| (shifts[j], row[j]))
                        .unzip()
                })
                .collect(),
            _ => Vec::new(),
        };
        // Virtual input rows start at y0 − top; slot of virtual row v = (v − first) mod len.
        let first = y0 as isize - self.top as isize;
        let slot = |v: isize| (v - first) as usize % ring_len;
        let mut next = first;
        let mut rows: Vec<usize> = Vec::with_capacity(self.shape.kh + rmax);
        let mut r = 0;
        while r < rows_out {
            let nr = rmax.min(rows_out - r);
            let y = (y0 + r) as isize;
            let base = y - self.top as isize;
            let last = base + (self.ext_h + nr) as isize - 2;
            while next <= last {
                let s = slot(next);
                let dst = &mut ring[s * ring_row..(s + 1) * ring_row];
                match self.stage {
                    Stage::Separable(t) => {
                        let t = &htaps[..t.len()];
                        if !self.row_pass_in_place(next, t, dst, &mut pad) {
                            self.fill_padded(next, &mut pad);
                            for (k, (cols, weights)) in t.iter().enumerate() {
                                let o = &mut dst[k * wc..(k + 1) * wc];
                                let t = Taps {
                                    rows: &[0],
                                    cols,
                                    weights,
                                };
                                dot_block(self.isa, &pad, &t, o, wc, false);
                            }
                        }
                    }
                    _ => self.fill_padded(next, dst),
                }
                next += 1;
            }
            rows.clear();
            rows.extend(
                (0..self.shape.kh + nr - 1).map(|s| slot(base + (s * d) as isize) * ring_row),
            );
            let o = &mut out[r * wc..(r + nr) * wc];
            let t = Taps {
                rows: &rows,
                cols: &ccols,
                weights: &cw,
            };
            dot_block(self.isa, &ring, &t, o, wc, self.stream);
            r += nr;
        }
        if self.stream {
            store_fence();
        }
    }

    /// [`Stage::Box`] ([`super::boxsum`]): running column sums over the window's rows, read
    /// straight from the image, then per output row the padded row of sums summed over `kw`
    /// columns (dilation is 1 here). Integer images whose window sums fit in 32 bits sum
    /// exactly in u32; others in f64 down the columns, then across by f64 prefix sums
    /// (AVX-512, ≤ 8 channels) or an f32 doubling tree.
    fn box_band(&self, y0: usize, out: &mut [f32], scale: f64) {
        let (w, h, c) = (self.src.width, self.src.height, self.src.channels);
        let wc = w * c;
        let (kh, kw) = (self.shape.kh, self.shape.kw);
        let left = self.lsrc.len() * c;
        let padded_len = (w + self.lsrc.len() + self.rsrc.len()) * c;
        let first = y0 as isize - self.top as isize;
        let value = self.border.value();
        let int_max = T::INT_MAX.filter(|&m| {
            let fits = (kh as u128) * (kw as u128) * (m as u128) < 1u128 << 32;
            let constant_ok = match self.border {
                FilterBorder::Constant(v) => v.fract() == 0.0 && v >= 0.0 && v <= m as f32,
                _ => true,
            };
            fits && constant_ok
        });
        let src_row = |v: isize| {
            self.border
                .source(v, h)
                .map(|sy| &self.src.data[sy * wc..(sy + 1) * wc])
        };
        if int_max.is_some() {
            // In range and integral (checked above).
            let cv = value as u32;
            let row = |v: isize| src_row(v).map_or(Row::Const(cv), Row::Src);
            let mut pad = vec![0u32; padded_len];
            let mut q = vec![0u32; padded_len + c];
            for v in first..first + kh as isize - 1 {
                boxsum::vstep_u32(self.isa, &mut pad[left..left + wc], row(v), Row::Const(0));
            }
            for (r, o) in out.chunks_exact_mut(wc).enumerate() {
                let newest = first + (r + kh - 1) as isize;
                let old = if r > 0 {
                    row(newest - kh as isize)
                } else {
                    Row::Const(0)
                };
                boxsum::vstep_u32(self.isa, &mut pad[left..left + wc], row(newest), old);
                self.pad_edges(&mut pad, (kh as u32).wrapping_mul(cv));
                boxsum::window_prefix(self.isa, &pad, (kw, c), &mut q, o, scale, self.stream);
            }
        } else if boxsum::f64_prefix_ok(self.isa, c) {
            let cv = value as f64;
            let row = |v: isize| src_row(v).map_or(Row::Const(cv), Row::Src);
            let mut pad = vec![0.0f64; padded_len];
            let mut q = vec![0.0f64; padded_len + c];
            for v in first..first + kh as isize - 1 {
                let sum = &mut pad[left..left + wc];
                boxsum::vstep_f64(self.isa, sum, row(v), Row::Const(0.0), None);
            }
            for (r, o) in out.chunks_exact_mut(wc).enumerate() {
                let newest = first + (r + kh - 1) as isize;
                let old = if r > 0 {
                    row(newest - kh as isize)
                } else {
                    Row::Const(0.0)
                };
                let sum = &mut pad[left..left + wc];
                boxsum::vstep_f64(self.isa, sum, row(newest), old, None);
                self.pad_edges(&mut pad, kh as f64 * cv);
                boxsum::window_prefix_f64(self.isa, &pad, (kw, c), &mut q, o, scale, self.stream);
            }
        } else {
            let cv = value as f64;
            let row = |v: isize| src_row(v).map_or(Row::Const(cv), Row::Src);
            let mut sum = vec![0.0f64; wc];
            let mut pad = vec![0.0f32; padded_len];
            let sl = boxsum::scratch_len(kw, c);
            let (mut a, mut b, mut acc) = (vec![0.0f32; sl], vec![0.0f32; sl], vec![0.0f32; sl]);
            for v in first..first + kh as isize - 1 {
                let mid = &mut pad[left..left + wc];
                boxsum::vstep_f64(self.isa, &mut sum, row(v), Row::Const(0.0), Some(mid));
            }
            for (r, o) in out.chunks_exact_mut(wc).enumerate() {
                let newest = first + (r + kh - 1) as isize;
                let old = if r > 0 {
                    row(newest - kh as isize)
                } else {
                    Row::Const(0.0)
                };
                let mid = &mut pad[left..left + wc];
                boxsum::vstep_f64(self.isa, &mut sum, row(newest), old, Some(mid));
                self.pad_edges(&mut pad, (kh as f64 * cv) as f32);
                boxsum::window(self.isa, &pad, kw, c, (&mut a, &mut b, &mut acc), o, scale);
            }
        }
        if self.stream {
            store_fence();
        }
    }

    /// Fills the horizontal pads of a padded row from its middle by the border index lists
    /// (`fill` where the border is constant).
    fn pad_edges<E: Copy>(&self, pad: &mut [E], fill: E) {
        let c = self.src.channels;
        let left = self.lsrc.len() * c;
        for (p, s) in self.lsrc.iter().enumerate() {
            match s {
                Some(x) => pad.copy_within(left + x * c..left + (x + 1) * c, p * c),
                None => pad[p * c..(p + 1) * c].fill(fill),
            }
        }
        let r0 = left + self.src.width * c;
        for (p, s) in self.rsrc.iter().enumerate() {
            match s {
                Some(x) => pad.copy_within(left + x * c..left + (x + 1) * c, r0 + p * c),
                None => pad[r0 + p * c..r0 + (p + 1) * c].fill(fill),
            }
        }
    }

    /// The separable row pass of virtual row `v` read straight from an f32 image row (no
    /// padded copy): the interior outputs from the row itself, the `L` left and `R` right
    /// outputs from short padded edge buffers (in `scratch`); the same taps on the same
    /// values as the padded path, so the same bits. `false` (nothing done) for other depths,
    /// constant-border rows and rows no wider than the kernel.
    fn row_pass_in_place(
        &self,
        v: isize,
        terms: &[(Vec<usize>, Vec<f32>)],
        dst: &mut [f32],
        scratch: &mut [f32],
    ) -> bool {
        let (w, h, c) = (self.src.width, self.src.height, self.src.channels);
        let wc = w * c;
        let (l, r) = (self.lsrc.len() * c, self.rsrc.len() * c);
        let Some(all) = T::as_f32(self.src.data) else {
            return false;
        };
        let Some(sy) = self.border.source(v, h) else {
            return false;
        };
        if wc <= l + r || scratch.len() < 3 * (l + r) {
            return false;
        }
        let row = &all[sy * wc..(sy + 1) * wc];
        let src = &self.src.data[sy * wc..(sy + 1) * wc];
        // Left outputs [0, l) read padded [0, 2l + r); right outputs [wc − r, wc) read padded
        // [wc − r, wc + l + r).
        let (left_buf, rest) = scratch.split_at_mut(2 * l + r);
        let right_buf = &mut rest[..l + 2 * r];
        if l > 0 {
            self.fill_padded_range(src, 0, left_buf);
        }
        if r > 0 {
            self.fill_padded_range(src, wc - r, right_buf);
        }
        for (k, (cols, weights)) in terms.iter().enumerate() {
            let o = &mut dst[k * wc..(k + 1) * wc];
            let t = Taps {
                rows: &[0],
                cols,
                weights,
            };
            dot_block(self.isa, row, &t, &mut o[l..wc - r], wc - l - r, false);
            if l > 0 {
                dot_block(self.isa, left_buf, &t, &mut o[..l], l, false);
            }
            if r > 0 {
                dot_block(self.isa, right_buf, &t, &mut o[wc - r..], r, false);
            }
        }
        true
    }

    /// Writes padded positions `p0 .. p0 + dst.len()` of image row `row` (widened; the
    /// padded row is `L` border samples, the row, `R` border samples); `p0` and the length
    /// are whole pixels.
    fn fill_padded_range(&self, row: &[T], p0: usize, dst: &mut [f32]) {
        let c = self.src.channels;
        let (w, left) = (self.src.width, self.lsrc.len());
        debug_assert!(p0.is_multiple_of(c) && dst.len().is_multiple_of(c));
        for (i, px) in dst.chunks_exact_mut(c).enumerate() {
            let pp = p0 / c + i;
            let s = if pp < left {
                self.lsrc[pp]
            } else if pp < left + w {
                Some(pp - left)
            } else {
                self.rsrc[pp - left - w]
            };
            match s {
                Some(x) => {
                    for (d, v) in px.iter_mut().zip(&row[x * c..(x + 1) * c]) {
                        *d = v.to_f64() as f32;
                    }
                }
                None => px.fill(self.border.value()),
            }
        }
    }

    /// Writes virtual input row `v` (any integer) widened to f32 and padded on both sides.
    fn fill_padded(&self, v: isize, dst: &mut [f32]) {
        let (w, h, c) = (self.src.width, self.src.height, self.src.channels);
        let Some(sy) = self.border.source(v, h) else {
            dst.fill(self.border.value());
            return;
        };
        let left = self.lsrc.len() * c;
        let row = &self.src.data[sy * w * c..(sy + 1) * w * c];
        widen(self.isa, row, &mut dst[left..left + w * c]);
        for (p, s) in self.lsrc.iter().enumerate() {
            self.copy_pixel(row, *s, &mut dst[p * c..(p + 1) * c]);
        }
        let r0 = left + w * c;
        for (p, s) in self.rsrc.iter().enumerate() {
            self.copy_pixel(row, *s, &mut dst[r0 + p * c..r0 + (p + 1) * c]);
        }
    }

    fn copy_pixel(&self, row: &[T], s: Option<usize>, dst: &mut [f32]) {
        let c = self.src.channels;
        match s {
            Some(x) => T::widen(&row[x * c..(x + 1) * c], dst),
            None => dst.fill(self.border.value()),
        }
    }
}
