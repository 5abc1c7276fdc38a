//! A validated spec resolved against one input shape: every size an engine needs.

use crate::error::{ConvError, Result};
use crate::spec::{PaddingMode, ValidSpec, AXES};
use serde::Serialize;

/// A layer on a concrete input `[n, c, h, w]`: resolved padding and output size.
///
/// Direct convolution (Dumoulin & Visin 2016, relationship 15; PyTorch `Conv2d`):
/// `o = ⌊(i + p_before + p_after − d·(k−1) − 1) / s⌋ + 1`.
///
/// Transposed convolution (PyTorch `ConvTranspose2d`; Dumoulin & Visin relationship 14 with
/// output padding a): `o = (i − 1)·s − p_before − p_after + d·(k−1) + a + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Geometry {
    /// The layer.
    pub spec: ValidSpec,
    /// Batch size N.
    pub n: usize,
    /// Input channels C.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels K.
    pub k: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Padding `[top, bottom, left, right]` after resolving `same` rules. For a transposed
    /// convolution these are the amounts cropped from the full output.
    pub pad: [usize; 4],
    /// Transposed only: output padding actually applied `[h, w]` (derived from `output_size`).
    pub output_padding: [usize; 2],
}

fn overflow(what: &'static str) -> ConvError {
    ConvError::Overflow { what }
}

impl Geometry {
    /// Resolves `spec` on `input = [n, c, h, w]`; see [`ValidSpec::geometry`].
    pub fn new(spec: ValidSpec, input: [usize; 4]) -> Result<Self> {
        let [n, c, h, w] = input;
        if n == 0 {
            return Err(ConvError::Zero { what: "batch size" });
        }
        if c != spec.in_channels() {
            return Err(ConvError::ChannelMismatch {
                got: c,
                expected: spec.in_channels(),
            });
        }
        if h == 0 {
            return Err(ConvError::Zero {
                what: "input height",
            });
        }
        if w == 0 {
            return Err(ConvError::Zero {
                what: "input width",
            });
        }
        if spec.rank() == crate::spec::Rank::One && h != 1 {
            return Err(ConvError::OneDimensional {
                what: "input height",
            });
        }
        let pad = spec.resolved_padding(h, w);
        let ext = spec.dilated_kernel();
        let stride = spec.stride();
        let mut out = [0usize; 2];
        let mut output_padding = [0usize; 2];
        for ax in 0..2 {
            let i = [h, w][ax];
            let (pb, pa) = (pad[2 * ax], pad[2 * ax + 1]);
            if spec.is_transposed() {
                // Full (uncropped) size (i−1)·s + d(k−1) + 1, then crop pb + pa, add a.
                let full = (i - 1)
                    .checked_mul(stride[ax])
                    .and_then(|v| v.checked_add(ext[ax]))
                    .ok_or(overflow("transposed output size"))?;
                let min = full as i128 - pb as i128 - pa as i128;
                let a = match spec.spec().output_size {
                    Some(req) => {
                        let req = req[ax];
                        // PyTorch `_output_padding`: max = min + stride − 1.
                        let max = min + stride[ax] as i128 - 1;
                        if (req as i128) < min || (req as i128) > max {
                            // Clamped into usize (max can exceed it by up to s − 1).
                            let clamp = |v: i128| usize::try_from(v.max(0)).unwrap_or(usize::MAX);
                            return Err(ConvError::BadOutputSize {
                                axis: AXES[ax],
                                requested: req,
                                min: clamp(min),
                                max: clamp(max),
                            });
                        }
                        (req as i128 - min) as usize
                    }
                    None => spec.spec().output_padding[ax],
                };
                let o = min + a as i128;
                if o <= 0 {
                    return Err(ConvError::EmptyOutput {
                        axis: AXES[ax],
                        size: o as i64,
                    });
                }
                out[ax] = usize::try_from(o).map_err(|_| overflow("transposed output size"))?;
                output_padding[ax] = a;
            } else {
                check_border(spec.padding_mode(), ax, pb.max(pa), i)?;
                let padded = i
                    .checked_add(pb)
                    .and_then(|v| v.checked_add(pa))
                    .ok_or(overflow("padded input size"))?;
                if padded < ext[ax] {
                    return Err(ConvError::KernelTooLarge {
                        axis: AXES[ax],
                        extent: ext[ax],
                        padded,
                    });
                }
                out[ax] = (padded - ext[ax]) / stride[ax] + 1;
            }
        }
        let g = Geometry {
            spec,
            n,
            c,
            h,
            w,
            k: spec.out_channels(),
            oh: out[0],
            ow: out[1],
            pad,
            output_padding,
        };
        // Every tensor an engine allocates must be addressable as f64 (the widest element the
        // engines accumulate in; a larger Vec panics with "capacity overflow"), including the
        // padded input a direct layer materialises, and MACs must fit in u64.
        let mut tensors = vec![
            ("input size", g.input_shape()),
            ("output size", g.output_shape()),
        ];
        if !spec.is_transposed() {
            // The per-axis sums were checked above.
            tensors.push((
                "padded input size",
                [n, c, h + pad[0] + pad[1], w + pad[2] + pad[3]],
            ));
        }
        for (what, dims) in tensors {
            dims.iter()
                .try_fold(1usize, |a, &b| a.checked_mul(b))
                .and_then(|e| e.checked_mul(std::mem::size_of::<f64>()))
                .filter(|&bytes| bytes <= isize::MAX as usize)
                .ok_or(overflow(what))?;
        }
        g.checked_macs()
            .ok_or(overflow("multiply-accumulate count"))?;
        // `equivalent()` reports the direct convolution's (signed) padding as i64.
        if spec.is_transposed()
            && g.direct_padding()
                .iter()
                .any(|&p| i64::try_from(p).is_err())
        {
            return Err(overflow("equivalent direct convolution padding"));
        }
        Ok(g)
    }

    /// Transposed only: padding of the equivalent direct convolution, `d(k−1) − p_before` and
    /// `d(k−1) − p_after + a` per axis, `[top, bottom, left, right]`, exact in i128.
    fn direct_padding(&self) -> [i128; 4] {
        let ext = self.spec.dilated_kernel();
        let mut pad = [0i128; 4];
        for ax in 0..2 {
            let full = ext[ax] as i128 - 1;
            pad[2 * ax] = full - self.pad[2 * ax] as i128;
            pad[2 * ax + 1] = full - self.pad[2 * ax + 1] as i128 + self.output_padding[ax] as i128;
        }
        pad
    }

    /// Input shape `[n, c, h, w]`.
    pub fn input_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    /// Output shape `[n, k, oh, ow]`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.k, self.oh, self.ow]
    }
    /// Weight shape (PyTorch layout).
    pub fn weight_shape(&self) -> [usize; 4] {
        self.spec.weight_shape()
    }

    fn checked_macs(&self) -> Option<u64> {
        let s = &self.spec;
        let taps = (s.kernel()[0] as u64).checked_mul(s.kernel()[1] as u64)?;
        let g = s.groups() as u64;
        if s.is_transposed() {
            // Every input cell meets every tap of K/g output channels (zeros never multiplied).
            [
                self.n as u64,
                self.h as u64,
                self.w as u64,
                self.c as u64,
                self.k as u64 / g,
                taps,
            ]
            .iter()
            .try_fold(1u64, |a, &b| a.checked_mul(b))
        } else {
            [
                self.n as u64,
                self.oh as u64,
                self.ow as u64,
                self.k as u64,
                self.c as u64 / g,
                taps,
            ]
            .iter()
            .try_fold(1u64, |a, &b| a.checked_mul(b))
        }
    }

    /// Multiply-accumulates of one forward pass, counting padded taps as real work (the usual
    /// convention): conv `N·OH·OW·K·(C/g)·kh·kw`, transposed `N·H·W·C·(K/g)·kh·kw`.
    pub fn macs(&self) -> u64 {
        self.checked_macs().unwrap_or(u64::MAX)
    }

    /// FLOPs of one forward pass: 2 · MACs.
    pub fn flops(&self) -> u64 {
        self.macs().saturating_mul(2)
    }

    /// For a transposed layer: the direct convolution that computes the same output
    /// (Dumoulin & Visin 2016, §4): insert s−1 zeros between inputs, pad d(k−1)−p on each side
    /// (+a bottom/right), flip the kernel, swap its in/out axes, stride 1, same dilation.
    /// For a direct layer: the transposed convolution that is its adjoint (gradient w.r.t. input).
    pub fn equivalent(&self) -> Equivalent {
        let s = &self.spec;
        let ext = s.dilated_kernel();
        if s.is_transposed() {
            // Fits in i64: checked by `Geometry::new`.
            let padding = self.direct_padding().map(|p| p as i64);
            Equivalent::Direct {
                zero_insertion: [s.stride()[0] - 1, s.stride()[1] - 1],
                padding,
                stride: [1, 1],
                dilation: s.dilation(),
                stretched_input: [
                    (self.h - 1) * s.stride()[0] + 1,
                    (self.w - 1) * s.stride()[1] + 1,
                ],
                kernel_flipped: true,
            }
        } else {
            // Gradient w.r.t. the input: a transposed conv mapping oh×ow back to h×w; the
            // rows/cols the forward never reached come back as output padding.
            let mut op = [0usize; 2];
            for ax in 0..2 {
                let o = [self.oh, self.ow][ax];
                let i = [self.h, self.w][ax];
                let reach = (o - 1) * s.stride()[ax] + ext[ax];
                let padded = i + self.pad[2 * ax] + self.pad[2 * ax + 1];
                op[ax] = padded - reach;
            }
            Equivalent::Transposed {
                stride: s.stride(),
                padding: self.pad,
                output_padding: op,
                dilation: s.dilation(),
            }
        }
    }
}

/// The other side of the transposed ↔ direct equivalence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Equivalent {
    /// The direct convolution equivalent to a transposed one.
    Direct {
        /// Zeros inserted between neighbouring input cells, per axis (s − 1).
        zero_insertion: [usize; 2],
        /// Padding of the stretched input `[top, bottom, left, right]`; negative means crop.
        padding: [i64; 4],
        /// Always 1.
        stride: [usize; 2],
        /// Same as the transposed layer.
        dilation: [usize; 2],
        /// Size of the input after zero insertion, `(i−1)·s+1`.
        stretched_input: [usize; 2],
        /// Always true: the kernel is rotated 180° and its in/out axes swapped.
        kernel_flipped: bool,
    },
    /// The transposed convolution that is the adjoint of a direct one.
    Transposed {
        /// Same stride.
        stride: [usize; 2],
        /// Same padding (cropped from the transposed output).
        padding: [usize; 4],
        /// Output padding that restores the exact input size.
        output_padding: [usize; 2],
        /// Same dilation.
        dilation: [usize; 2],
    },
}

/// PyTorch's limits on border padding: reflect needs pad < size, circular pad ≤ size.
fn check_border(mode: PaddingMode, ax: usize, pad: usize, size: usize) -> Result<()> {
    let bad = match mode {
        PaddingMode::Zeros | PaddingMode::Replicate => false,
        PaddingMode::Reflect => pad >= size,
        PaddingMode::Circular => pad > size,
    };
    if bad {
        return Err(ConvError::PaddingTooLarge {
            mode: mode.name(),
            axis: AXES[ax],
            pad,
            size,
            limit_desc: if mode == PaddingMode::Reflect {
                "the padding"
            } else {
                "or equal to the padding"
            },
        });
    }
    Ok(())
}
