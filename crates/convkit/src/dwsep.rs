//! The depthwise separable block (Sifre 2014; Chollet, Xception 2017; Howard et al.,
//! MobileNets 2017): a depthwise k×k convolution (groups = C, depth multiplier m, C → m·C)
//! followed by a pointwise 1×1 convolution (m·C → K) that mixes channels.
//!
//! Weights: `C·m·kh·kw + m·C·K` instead of the standard `C·K·kh·kw`, a ratio of
//! `m·(1/K + 1/(kh·kw))` (MobileNets §3.1). The seed's example, 16 → 32 channels, 3×3, m = 1:
//! 4608 versus 144 + 512 = 656.
//!
//! ```
//! use convkit::dwsep::DepthwiseSeparable;
//! let block = DepthwiseSeparable::builder(16, 32, 3).padding(1).build().unwrap();
//! let p = block.params();
//! assert_eq!((p.depthwise, p.pointwise, p.total, p.standard), (144, 512, 656, 4608));
//! ```

use crate::error::{ConvError, Result};
use crate::reference::{self, Real};
use crate::spec::{ConvSpec, IntoPair, Padding, PaddingMode, ValidSpec};
use ndarray::{Array1, Array4, ArrayView1, ArrayView4};
use serde::Serialize;

/// Unchecked description of a depthwise separable block; [`DepthwiseSeparableSpec::build`]
/// validates it. Stride, padding, dilation and padding mode belong to the depthwise half (the
/// pointwise half is always 1×1, stride 1, no padding). Biases default to off on both halves,
/// as in the seed's count and in MobileNet/Xception, where each conv is followed by batch norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseSeparableSpec {
    in_channels: usize,
    out_channels: usize,
    kernel: [usize; 2],
    multiplier: usize,
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: Padding,
    padding_mode: PaddingMode,
    bias_depthwise: bool,
    bias_pointwise: bool,
}

impl DepthwiseSeparableSpec {
    /// Depth multiplier m (default 1): each input channel gets m k×k filters.
    pub fn multiplier(mut self, m: usize) -> Self {
        self.multiplier = m;
        self
    }
    /// Stride of the depthwise half: `s` or `[sh, sw]`.
    pub fn stride(mut self, s: impl IntoPair) -> Self {
        self.stride = s.into_pair();
        self
    }
    /// Dilation of the depthwise half: `d` or `[dh, dw]`.
    pub fn dilation(mut self, d: impl IntoPair) -> Self {
        self.dilation = d.into_pair();
        self
    }
    /// Symmetric padding of the depthwise half: `p` or `[ph, pw]`.
    pub fn padding(mut self, p: impl IntoPair) -> Self {
        let [ph, pw] = p.into_pair();
        self.padding = Padding::symmetric(ph, pw);
        self
    }
    /// Any padding rule (per side, `valid`, `same`, TensorFlow `SAME`) for the depthwise half.
    pub fn padding_rule(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }
    /// Padding mode of the depthwise half.
    pub fn padding_mode(mut self, m: PaddingMode) -> Self {
        self.padding_mode = m;
        self
    }
    /// Whether the depthwise and the pointwise halves have a bias.
    pub fn bias(mut self, depthwise: bool, pointwise: bool) -> Self {
        self.bias_depthwise = depthwise;
        self.bias_pointwise = pointwise;
        self
    }

    /// Validates both halves (and the standard equivalent) as [`ValidSpec`]s.
    pub fn build(self) -> Result<DepthwiseSeparable> {
        if self.multiplier == 0 {
            return Err(ConvError::Zero {
                what: "depth multiplier",
            });
        }
        let mid = self
            .in_channels
            .checked_mul(self.multiplier)
            .ok_or(ConvError::Overflow {
                what: "depthwise output channels",
            })?;
        let spatial = |s: ConvSpec| {
            s.stride(self.stride)
                .dilation(self.dilation)
                .padding_rule(self.padding)
                .padding_mode(self.padding_mode)
        };
        let depthwise = spatial(ConvSpec::conv2d(self.in_channels, mid, self.kernel))
            .groups(self.in_channels.max(1))
            .bias(self.bias_depthwise)
            .build()?;
        let pointwise = ConvSpec::conv2d(mid, self.out_channels, 1)
            .bias(self.bias_pointwise)
            .build()?;
        let standard = spatial(ConvSpec::conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel,
        ))
        .bias(self.bias_depthwise || self.bias_pointwise)
        .build()?;
        Ok(DepthwiseSeparable {
            depthwise,
            pointwise,
            standard,
        })
    }
}

/// Parameter counts (weights + biases) of a block and of its standard equivalent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ParamCounts {
    /// Depthwise half: C·m·kh·kw (+ m·C biases).
    pub depthwise: usize,
    /// Pointwise half: m·C·K (+ K biases).
    pub pointwise: usize,
    /// depthwise + pointwise.
    pub total: usize,
    /// The standard convolution: C·K·kh·kw (+ K biases).
    pub standard: usize,
}

/// Multiply-accumulates of one forward pass of a block and of its standard equivalent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MacCounts {
    /// Depthwise half: N·OH·OW·m·C·kh·kw.
    pub depthwise: u64,
    /// Pointwise half: N·OH·OW·K·m·C.
    pub pointwise: u64,
    /// depthwise + pointwise.
    pub total: u64,
    /// The standard convolution: N·OH·OW·K·C·kh·kw.
    pub standard: u64,
}

/// A validated depthwise separable block: two [`ValidSpec`]s run one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DepthwiseSeparable {
    depthwise: ValidSpec,
    pointwise: ValidSpec,
    standard: ValidSpec,
}

impl DepthwiseSeparable {
    /// Starts a block: `in_channels` C → `out_channels` K with a `kernel` (`k` or `[kh, kw]`)
    /// depthwise filter; multiplier 1, stride 1, no padding, dilation 1, zeros, no biases.
    pub fn builder(
        in_channels: usize,
        out_channels: usize,
        kernel: impl IntoPair,
    ) -> DepthwiseSeparableSpec {
        DepthwiseSeparableSpec {
            in_channels,
            out_channels,
            kernel: kernel.into_pair(),
            multiplier: 1,
            stride: [1, 1],
            dilation: [1, 1],
            padding: Padding::default(),
            padding_mode: PaddingMode::Zeros,
            bias_depthwise: false,
            bias_pointwise: false,
        }
    }

    /// The depthwise half: groups = C, C → m·C, weight `(m·C, 1, kh, kw)`.
    pub fn depthwise(&self) -> &ValidSpec {
        &self.depthwise
    }

    /// The pointwise half: 1×1, m·C → K, weight `(K, m·C, 1, 1)`.
    pub fn pointwise(&self) -> &ValidSpec {
        &self.pointwise
    }

    /// The standard convolution with the same in/out channels, kernel, stride, padding,
    /// dilation and padding mode; it has a bias when either half has one (a depthwise bias
    /// passes through the pointwise half as a constant per output channel).
    pub fn standard_equivalent(&self) -> &ValidSpec {
        &self.standard
    }

    /// Depth multiplier m.
    pub fn multiplier(&self) -> usize {
        self.depthwise.depth_multiplier()
    }

    /// Parameters of each half, their total and the standard equivalent's.
    pub fn params(&self) -> ParamCounts {
        let (depthwise, pointwise) = (self.depthwise.param_count(), self.pointwise.param_count());
        ParamCounts {
            depthwise,
            pointwise,
            // Both were checked to fit at validation; their sum is at most twice one of them.
            total: depthwise.saturating_add(pointwise),
            standard: self.standard.param_count(),
        }
    }

    /// Total parameters of the block (depthwise + pointwise).
    pub fn param_count(&self) -> usize {
        self.params().total
    }

    /// Output shape `[n, K, oh, ow]` for an input `[n, C, h, w]`.
    pub fn output_shape(&self, input: [usize; 4]) -> Result<[usize; 4]> {
        let mid = self.depthwise.geometry(input)?.output_shape();
        Ok(self.pointwise.geometry(mid)?.output_shape())
    }

    /// Multiply-accumulates for an input `[n, C, h, w]` (padded taps counted, as
    /// [`crate::Geometry::macs`]).
    pub fn macs(&self, input: [usize; 4]) -> Result<MacCounts> {
        let dw = self.depthwise.geometry(input)?;
        let pw = self.pointwise.geometry(dw.output_shape())?;
        let std = self.standard.geometry(input)?;
        let (depthwise, pointwise) = (dw.macs(), pw.macs());
        Ok(MacCounts {
            depthwise,
            pointwise,
            total: depthwise
                .checked_add(pointwise)
                .ok_or(ConvError::Overflow {
                    what: "multiply-accumulate count",
                })?,
            standard: std.macs(),
        })
    }

    /// Runs the block with the reference engine: `pointwise(depthwise(x))`, each half through
    /// [`reference::forward`] (f64 accumulation; the intermediate is rounded to `T`, as a
    /// framework running two layers does). Weights in PyTorch's layout: `w_dw` `(m·C, 1, kh, kw)`,
    /// `w_pw` `(K, m·C, 1, 1)`; a bias may be given only to a half built with one.
    pub fn forward_reference<T: Real>(
        &self,
        x: ArrayView4<T>,
        w_dw: ArrayView4<T>,
        b_dw: Option<ArrayView1<T>>,
        w_pw: ArrayView4<T>,
        b_pw: Option<ArrayView1<T>>,
    ) -> Result<Array4<T>> {
        let mid = reference::forward(&self.depthwise, x, w_dw, b_dw)?;
        reference::forward(&self.pointwise, mid.view(), w_pw, b_pw)
    }

    /// The weights of [`DepthwiseSeparable::standard_equivalent`] that compute exactly the
    /// block's function: `W[k, c, ky, kx] = Σⱼ w_pw[k, c·m + j]·w_dw[c·m + j, 0, ky, kx]` and
    /// `b[k] = b_pw[k] + Σ_c' w_pw[k, c']·b_dw[c']` (the bias is `None` when neither is given).
    /// Shows that the block is a standard convolution whose weight tensor has rank ≤ m per
    /// input channel, which is why it needs so few parameters.
    pub fn fold_into_standard<T: Real>(
        &self,
        w_dw: ArrayView4<T>,
        b_dw: Option<ArrayView1<T>>,
        w_pw: ArrayView4<T>,
        b_pw: Option<ArrayView1<T>>,
    ) -> Result<(Array4<T>, Option<Array1<T>>)> {
        let check = |what, got: &[usize], want: [usize; 4]| {
            if got != want {
                return Err(ConvError::ShapeMismatch {
                    what,
                    got: got.to_vec(),
                    expected: want.to_vec(),
                });
            }
            Ok(())
        };
        check(
            "depthwise weight",
            w_dw.shape(),
            self.depthwise.weight_shape(),
        )?;
        check(
            "pointwise weight",
            w_pw.shape(),
            self.pointwise.weight_shape(),
        )?;
        let (m, k, mid) = (
            self.multiplier(),
            self.pointwise.out_channels(),
            self.pointwise.in_channels(),
        );
        for (what, b, len, allowed) in [
            ("depthwise bias", &b_dw, mid, self.depthwise.has_bias()),
            ("pointwise bias", &b_pw, k, self.pointwise.has_bias()),
        ] {
            if let Some(b) = b {
                if !allowed {
                    return Err(ConvError::Bias(
                        "a bias was given to a half built with bias = false",
                    ));
                }
                if b.len() != len {
                    return Err(ConvError::ShapeMismatch {
                        what,
                        got: vec![b.len()],
                        expected: vec![len],
                    });
                }
            }
        }
        let w = Array4::from_shape_fn(self.standard.weight_shape(), |(ko, c, ky, kx)| {
            let s: f64 = (0..m)
                .map(|j| {
                    w_pw[[ko, c * m + j, 0, 0]].to_f64() * w_dw[[c * m + j, 0, ky, kx]].to_f64()
                })
                .sum();
            T::from_f64(s)
        });
        let bias = (b_dw.is_some() || b_pw.is_some()).then(|| {
            Array1::from_shape_fn(k, |ko| {
                let from_dw: f64 = b_dw.map_or(0.0, |b| {
                    (0..mid)
                        .map(|c| w_pw[[ko, c, 0, 0]].to_f64() * b[c].to_f64())
                        .sum()
                });
                T::from_f64(from_dw + b_pw.map_or(0.0, |b| b[ko].to_f64()))
            })
        });
        Ok((w, bias))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::depthwise_separable_params;

    fn noise(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    fn rand4(shape: [usize; 4], seed: u64) -> Array4<f32> {
        let mut r = noise(seed);
        Array4::from_shape_fn(shape, |_| r() as f32)
    }

    fn rand1(n: usize, seed: u64) -> Array1<f32> {
        let mut r = noise(seed);
        Array1::from_shape_fn(n, |_| r() as f32)
    }

    #[test]
    fn seed_example_4608_vs_656() {
        let b = DepthwiseSeparable::builder(16, 32, 3).build().unwrap();
        assert_eq!(
            b.params(),
            ParamCounts {
                depthwise: 144,
                pointwise: 512,
                total: 656,
                standard: 4608
            }
        );
        assert_eq!(b.param_count(), 656);
        assert_eq!(b.standard_equivalent().param_count(), 4608);
        // With biases: +16 on the depthwise half, +32 on the pointwise half and the standard.
        let b = DepthwiseSeparable::builder(16, 32, 3)
            .bias(true, true)
            .build()
            .unwrap();
        let p = b.params();
        assert_eq!(
            (p.depthwise, p.pointwise, p.total, p.standard),
            (160, 544, 704, 4640)
        );
    }

    #[test]
    fn halves_are_the_expected_specs() {
        let b = DepthwiseSeparable::builder(8, 12, [3, 5])
            .multiplier(2)
            .stride([2, 1])
            .padding([1, 2])
            .dilation([1, 2])
            .padding_mode(PaddingMode::Reflect)
            .bias(true, false)
            .build()
            .unwrap();
        let dw = b.depthwise();
        assert!(dw.is_depthwise());
        assert_eq!(
            (dw.in_channels(), dw.out_channels(), dw.groups()),
            (8, 16, 8)
        );
        assert_eq!(dw.weight_shape(), [16, 1, 3, 5]);
        assert_eq!((dw.stride(), dw.dilation()), ([2, 1], [1, 2]));
        assert_eq!(dw.padding(), Padding::Explicit([1, 1, 2, 2]));
        assert_eq!(dw.padding_mode(), PaddingMode::Reflect);
        assert!(dw.has_bias());
        assert_eq!(b.multiplier(), 2);
        let pw = b.pointwise();
        assert_eq!(pw.weight_shape(), [12, 16, 1, 1]);
        assert_eq!(
            (pw.stride(), pw.padding()),
            ([1, 1], Padding::Explicit([0; 4]))
        );
        assert!(!pw.has_bias());
        let st = b.standard_equivalent();
        assert_eq!(st.weight_shape(), [12, 8, 3, 5]);
        assert_eq!(st.groups(), 1);
        assert!(st.has_bias());
        // Height (9 + 2 − 3)/2 + 1 = 5; width 10 + 4 − (2·4 + 1) + 1 = 6.
        assert_eq!(b.output_shape([2, 8, 9, 10]).unwrap(), [2, 12, 5, 6]);
        assert_eq!(
            b.output_shape([2, 8, 9, 10]).unwrap(),
            st.geometry([2, 8, 9, 10]).unwrap().output_shape()
        );
    }

    #[test]
    fn counts_agree_with_arith() {
        for (c, k, ks, m) in [(16, 32, [3, 3], 1), (3, 64, [7, 7], 2), (5, 7, [3, 1], 4)] {
            let want = depthwise_separable_params(c, k, ks, m).unwrap();
            let b = DepthwiseSeparable::builder(c, k, ks)
                .multiplier(m)
                .build()
                .unwrap();
            let p = b.params();
            assert_eq!(
                (p.depthwise, p.pointwise, p.total, p.standard),
                (
                    want.depthwise,
                    want.pointwise,
                    want.separable(),
                    want.standard
                )
            );
        }
    }

    #[test]
    fn macs_of_the_seed_block() {
        let b = DepthwiseSeparable::builder(16, 32, 3)
            .padding(1)
            .build()
            .unwrap();
        let m = b.macs([1, 16, 32, 32]).unwrap();
        let hw = 32 * 32;
        assert_eq!(m.depthwise, hw * 16 * 9);
        assert_eq!(m.pointwise, hw * 32 * 16);
        assert_eq!(m.total, hw * 656);
        assert_eq!(m.standard, hw * 4608);
        // Strided: the pointwise half runs on the smaller output.
        let b = DepthwiseSeparable::builder(16, 32, 3)
            .stride(2)
            .padding(1)
            .multiplier(2)
            .build()
            .unwrap();
        let m = b.macs([2, 16, 32, 32]).unwrap();
        let out = 2 * 16 * 16;
        assert_eq!(m.depthwise, out * 32 * 9);
        assert_eq!(m.pointwise, out * 32 * 32);
        assert_eq!(m.standard, out * 32 * 16 * 9);
    }

    #[test]
    fn forward_reference_runs_both_halves() {
        let b = DepthwiseSeparable::builder(3, 5, [3, 2])
            .multiplier(2)
            .stride([1, 2])
            .padding_rule(Padding::Explicit([1, 2, 0, 1]))
            .padding_mode(PaddingMode::Circular)
            .bias(true, true)
            .build()
            .unwrap();
        let x = rand4([2, 3, 7, 8], 1);
        let (w_dw, b_dw) = (rand4([6, 1, 3, 2], 2), rand1(6, 3));
        let (w_pw, b_pw) = (rand4([5, 6, 1, 1], 4), rand1(5, 5));
        let y = b
            .forward_reference(
                x.view(),
                w_dw.view(),
                Some(b_dw.view()),
                w_pw.view(),
                Some(b_pw.view()),
            )
            .unwrap();
        let mid =
            reference::forward(b.depthwise(), x.view(), w_dw.view(), Some(b_dw.view())).unwrap();
        let want =
            reference::forward(b.pointwise(), mid.view(), w_pw.view(), Some(b_pw.view())).unwrap();
        assert_eq!(y, want);
        assert_eq!(y.shape(), &b.output_shape([2, 3, 7, 8]).unwrap());
    }

    #[test]
    fn block_equals_its_folded_standard_convolution() {
        for (mode, m, biases) in [
            (PaddingMode::Zeros, 1, (false, false)),
            (PaddingMode::Reflect, 2, (true, false)),
            (PaddingMode::Replicate, 3, (false, true)),
            (PaddingMode::Circular, 2, (true, true)),
        ] {
            let b = DepthwiseSeparable::builder(4, 3, [3, 3])
                .multiplier(m)
                .padding(1)
                .dilation([2, 1])
                .stride([1, 2])
                .padding_mode(mode)
                .bias(biases.0, biases.1)
                .build()
                .unwrap();
            let x = rand4([1, 4, 9, 7], 10);
            let w_dw = rand4(b.depthwise().weight_shape(), 11);
            let w_pw = rand4(b.pointwise().weight_shape(), 12);
            let b_dw = biases.0.then(|| rand1(4 * m, 13));
            let b_pw = biases.1.then(|| rand1(3, 14));
            let y = b
                .forward_reference(
                    x.view(),
                    w_dw.view(),
                    b_dw.as_ref().map(|v| v.view()),
                    w_pw.view(),
                    b_pw.as_ref().map(|v| v.view()),
                )
                .unwrap();
            let (w, bias) = b
                .fold_into_standard(
                    w_dw.view(),
                    b_dw.as_ref().map(|v| v.view()),
                    w_pw.view(),
                    b_pw.as_ref().map(|v| v.view()),
                )
                .unwrap();
            let want = reference::forward(
                b.standard_equivalent(),
                x.view(),
                w.view(),
                bias.as_ref().map(|v| v.view()),
            )
            .unwrap();
            assert_eq!(y.dim(), want.dim());
            for (a, e) in y.iter().zip(want.iter()) {
                assert!((a - e).abs() < 1e-5, "{mode}: {a} vs {e}");
            }
        }
    }

    #[test]
    fn bad_blocks_and_operands_are_errors() {
        let zero = |r: Result<DepthwiseSeparable>| matches!(r, Err(ConvError::Zero { .. }));
        assert!(zero(DepthwiseSeparable::builder(0, 4, 3).build()));
        assert!(zero(DepthwiseSeparable::builder(4, 0, 3).build()));
        assert!(zero(DepthwiseSeparable::builder(4, 4, 0).build()));
        assert!(zero(
            DepthwiseSeparable::builder(4, 4, 3).multiplier(0).build()
        ));
        assert!(zero(DepthwiseSeparable::builder(4, 4, 3).stride(0).build()));
        assert!(matches!(
            DepthwiseSeparable::builder(usize::MAX, 4, 3)
                .multiplier(2)
                .build(),
            Err(ConvError::Overflow { .. })
        ));
        let b = DepthwiseSeparable::builder(2, 3, 3)
            .padding(3)
            .padding_mode(PaddingMode::Reflect)
            .bias(false, true)
            .build()
            .unwrap();
        // Reflect padding 3 needs an input larger than 3.
        assert!(matches!(
            b.macs([1, 2, 3, 3]),
            Err(ConvError::PaddingTooLarge { .. })
        ));
        assert!(b.output_shape([1, 5, 8, 8]).is_err());
        let x = rand4([1, 2, 6, 6], 1);
        let w_dw = rand4([2, 1, 3, 3], 2);
        let w_pw = rand4([3, 2, 1, 1], 3);
        let bad_dw = rand4([2, 2, 3, 3], 4);
        assert!(b
            .forward_reference(x.view(), bad_dw.view(), None, w_pw.view(), None)
            .is_err());
        let bias2 = rand1(2, 5);
        assert!(matches!(
            b.forward_reference(x.view(), w_dw.view(), Some(bias2.view()), w_pw.view(), None),
            Err(ConvError::Bias(_))
        ));
        assert!(b
            .fold_into_standard(w_dw.view(), Some(bias2.view()), w_pw.view(), None)
            .is_err());
        assert!(b
            .fold_into_standard(w_dw.view(), None, w_pw.view(), Some(bias2.view()))
            .is_err());
        assert!(b
            .fold_into_standard(w_dw.view(), None, bad_dw.view(), None)
            .is_err());
        assert!(b
            .forward_reference(x.view(), w_dw.view(), None, w_pw.view(), None)
            .is_ok());
    }
}
