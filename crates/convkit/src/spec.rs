//! What convolution to run: [`ConvSpec`] (a builder, unchecked) and [`ValidSpec`] (checked once).
//!
//! Semantics are PyTorch 2.x's `nn.Conv{1,2}d` / `nn.ConvTranspose{1,2}d`, with per-side padding
//! and TensorFlow's `SAME` added. A 1D convolution is a 2D one with height 1 (kernel, stride,
//! dilation 1 and no padding on the height axis), so every engine handles both.

use crate::error::{ConvError, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Number of spatial dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rank {
    /// `Conv1d`: arrays are (N, C, L); internally (N, C, 1, L).
    One,
    /// `Conv2d`: arrays are (N, C, H, W).
    Two,
}

/// How the input is extended beyond its border (PyTorch's `padding_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddingMode {
    /// Zeros outside the input (the default).
    #[default]
    Zeros,
    /// Mirror without repeating the edge (`dcb|abcd|cba`); needs pad < size.
    /// OpenCV calls this `BORDER_REFLECT_101`.
    Reflect,
    /// Repeat the edge value (`aaa|abcd|ddd`).
    Replicate,
    /// Wrap around (`bcd|abcd|abc`); needs pad ≤ size.
    Circular,
}

impl PaddingMode {
    /// PyTorch's name for the mode.
    pub fn name(self) -> &'static str {
        match self {
            PaddingMode::Zeros => "zeros",
            PaddingMode::Reflect => "reflect",
            PaddingMode::Replicate => "replicate",
            PaddingMode::Circular => "circular",
        }
    }
}

impl fmt::Display for PaddingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PaddingMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "zeros" | "zero" => Ok(PaddingMode::Zeros),
            "reflect" => Ok(PaddingMode::Reflect),
            "replicate" => Ok(PaddingMode::Replicate),
            "circular" => Ok(PaddingMode::Circular),
            _ => Err(format!(
                "unknown padding mode '{s}' (expected zeros, reflect, replicate or circular)"
            )),
        }
    }
}

/// How much padding, per side or by rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Padding {
    /// Explicit per-side padding `[top, bottom, left, right]`.
    Explicit([usize; 4]),
    /// No padding (`padding='valid'`).
    Valid,
    /// PyTorch `padding='same'`: stride 1 only; total d·(k−1) per axis, ⌊total/2⌋ before, the
    /// extra cell after (bottom/right).
    Same,
    /// TensorFlow/Keras `SAME`, any stride: out = ⌈in/s⌉, total = max((out−1)·s + d·(k−1) + 1 − in, 0),
    /// ⌊total/2⌋ before, the rest after. Depends on the input size.
    SameTf,
}

impl Padding {
    /// The same padding on all four sides.
    pub fn uniform(p: usize) -> Self {
        Padding::Explicit([p, p, p, p])
    }
    /// Symmetric padding: `ph` top and bottom, `pw` left and right (PyTorch's tuple form).
    pub fn symmetric(ph: usize, pw: usize) -> Self {
        Padding::Explicit([ph, ph, pw, pw])
    }
}

impl Default for Padding {
    fn default() -> Self {
        Padding::Explicit([0; 4])
    }
}

/// An unchecked description of a convolution layer; [`ConvSpec::build`] validates it.
///
/// Build with [`ConvSpec::conv2d`], [`ConvSpec::conv1d`], [`ConvSpec::conv_transpose2d`] or
/// [`ConvSpec::conv_transpose1d`] and the chained setters, which mirror PyTorch's arguments:
///
/// ```
/// use convkit::{ConvSpec, Padding};
/// let spec = ConvSpec::conv2d(3, 64, 7).stride(2).padding(3).build().unwrap();
/// assert_eq!(spec.output_hw(224, 224).unwrap(), [112, 112]);
/// let up = ConvSpec::conv_transpose2d(64, 32, 3).stride(2).padding(1).output_padding(1)
///     .build().unwrap();
/// assert_eq!(up.output_hw(56, 56).unwrap(), [112, 112]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvSpec {
    /// 1D or 2D.
    pub rank: Rank,
    /// Input channels C.
    pub in_channels: usize,
    /// Output channels K.
    pub out_channels: usize,
    /// Kernel size `[kh, kw]` (kh = 1 for 1D).
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Dilation `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Padding amount or rule.
    pub padding: Padding,
    /// Border extension for the padding.
    pub padding_mode: PaddingMode,
    /// Groups g: C and K must both be divisible by g.
    pub groups: usize,
    /// Whether the layer has a bias of K values.
    pub bias: bool,
    /// Transposed (fractionally strided) convolution.
    pub transposed: bool,
    /// Transposed only: extra rows/columns on the bottom/right of the output.
    pub output_padding: [usize; 2],
    /// Transposed only: a requested output size `[h, w]` from which output_padding is derived
    /// (PyTorch's `output_size` argument). Overrides `output_padding`.
    pub output_size: Option<[usize; 2]>,
}

/// A scalar or a per-axis pair, for the builder's arguments.
pub trait IntoPair {
    /// As `[h, w]`.
    fn into_pair(self) -> [usize; 2];
}
impl IntoPair for usize {
    fn into_pair(self) -> [usize; 2] {
        [self, self]
    }
}
impl IntoPair for [usize; 2] {
    fn into_pair(self) -> [usize; 2] {
        self
    }
}
impl IntoPair for (usize, usize) {
    fn into_pair(self) -> [usize; 2] {
        [self.0, self.1]
    }
}

impl ConvSpec {
    fn new(rank: Rank, in_channels: usize, out_channels: usize, kernel: [usize; 2]) -> Self {
        ConvSpec {
            rank,
            in_channels,
            out_channels,
            kernel,
            stride: [1, 1],
            dilation: [1, 1],
            padding: Padding::default(),
            padding_mode: PaddingMode::Zeros,
            groups: 1,
            bias: true,
            transposed: false,
            output_padding: [0, 0],
            output_size: None,
        }
    }

    /// `nn.Conv2d(in_channels, out_channels, kernel)`; kernel is `k` or `[kh, kw]`.
    pub fn conv2d(in_channels: usize, out_channels: usize, kernel: impl IntoPair) -> Self {
        Self::new(Rank::Two, in_channels, out_channels, kernel.into_pair())
    }

    /// `nn.Conv1d(in_channels, out_channels, kernel)`.
    pub fn conv1d(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self::new(Rank::One, in_channels, out_channels, [1, kernel])
    }

    /// `nn.ConvTranspose2d(in_channels, out_channels, kernel)`.
    pub fn conv_transpose2d(
        in_channels: usize,
        out_channels: usize,
        kernel: impl IntoPair,
    ) -> Self {
        ConvSpec {
            transposed: true,
            ..Self::conv2d(in_channels, out_channels, kernel)
        }
    }

    /// `nn.ConvTranspose1d(in_channels, out_channels, kernel)`.
    pub fn conv_transpose1d(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        ConvSpec {
            transposed: true,
            ..Self::conv1d(in_channels, out_channels, kernel)
        }
    }

    /// Maps a 1D scalar to `[1, v]` (or a 2D pair as given).
    fn axis_pair(&self, v: impl IntoPair, one_d_fill: usize) -> [usize; 2] {
        let p = v.into_pair();
        match self.rank {
            Rank::One => [one_d_fill, p[1]],
            Rank::Two => p,
        }
    }

    /// Stride: `s` or `[sh, sw]` (1D: the length stride).
    pub fn stride(mut self, s: impl IntoPair) -> Self {
        self.stride = self.axis_pair(s, 1);
        self
    }

    /// Dilation: `d` or `[dh, dw]`.
    pub fn dilation(mut self, d: impl IntoPair) -> Self {
        self.dilation = self.axis_pair(d, 1);
        self
    }

    /// Symmetric padding: `p` or `[ph, pw]` (PyTorch's int / tuple form).
    pub fn padding(mut self, p: impl IntoPair) -> Self {
        let [ph, pw] = self.axis_pair(p, 0);
        self.padding = Padding::symmetric(ph, pw);
        self
    }

    /// Any padding rule or per-side amounts. For 1D, `Explicit` must have top = bottom = 0.
    pub fn padding_rule(mut self, p: Padding) -> Self {
        self.padding = p;
        self
    }

    /// Per-side padding `[top, bottom, left, right]` (1D: `[0, 0, left, right]`).
    pub fn padding_sides(mut self, sides: [usize; 4]) -> Self {
        self.padding = Padding::Explicit(sides);
        self
    }

    /// Border mode for the padding (direct convolution only).
    pub fn padding_mode(mut self, mode: PaddingMode) -> Self {
        self.padding_mode = mode;
        self
    }

    /// Number of groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }

    /// Whether the layer has a bias (default true, as PyTorch).
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Transposed only: output padding `op` or `[oph, opw]`.
    pub fn output_padding(mut self, op: impl IntoPair) -> Self {
        self.output_padding = self.axis_pair(op, 0);
        self
    }

    /// Transposed only: the wanted output size `[h, w]` (1D: `[1, l]`); derives output_padding.
    pub fn output_size(mut self, size: impl IntoPair) -> Self {
        self.output_size = Some(self.axis_pair(size, 1));
        self
    }

    /// Checks every input-independent constraint and returns the validated spec.
    pub fn build(self) -> Result<ValidSpec> {
        ValidSpec::new(self)
    }
}

/// Axis names, indexed as `[height, width]`.
pub(crate) const AXES: [&str; 2] = ["height", "width"];

/// A convolution that passed validation; answers every arithmetic question.
///
/// Input-dependent questions (output size, TensorFlow `SAME` padding, `output_size`-derived
/// output padding, border limits) are answered by [`ValidSpec::geometry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ValidSpec {
    spec: ConvSpec,
}

impl ValidSpec {
    fn new(spec: ConvSpec) -> Result<Self> {
        let nz = |v: usize, what: &'static str| {
            if v == 0 {
                Err(ConvError::Zero { what })
            } else {
                Ok(())
            }
        };
        nz(spec.in_channels, "in_channels")?;
        nz(spec.out_channels, "out_channels")?;
        nz(spec.groups, "groups")?;
        for (i, ax) in ["kernel height", "kernel width"].into_iter().enumerate() {
            nz(spec.kernel[i], ax)?;
        }
        for (i, ax) in ["stride height", "stride width"].into_iter().enumerate() {
            nz(spec.stride[i], ax)?;
        }
        for (i, ax) in ["dilation height", "dilation width"]
            .into_iter()
            .enumerate()
        {
            nz(spec.dilation[i], ax)?;
        }
        if spec.rank == Rank::One {
            if spec.kernel[0] != 1 {
                return Err(ConvError::OneDimensional { what: "kernel" });
            }
            if spec.stride[0] != 1 {
                return Err(ConvError::OneDimensional { what: "stride" });
            }
            if spec.dilation[0] != 1 {
                return Err(ConvError::OneDimensional { what: "dilation" });
            }
            if let Padding::Explicit([t, b, _, _]) = spec.padding {
                if t != 0 || b != 0 {
                    return Err(ConvError::OneDimensional { what: "padding" });
                }
            }
            if spec.output_padding[0] != 0 {
                return Err(ConvError::OneDimensional {
                    what: "output_padding",
                });
            }
            if matches!(spec.output_size, Some([h, _]) if h != 1) {
                return Err(ConvError::OneDimensional {
                    what: "output_size",
                });
            }
        }
        for (what, c) in [
            ("in_channels", spec.in_channels),
            ("out_channels", spec.out_channels),
        ] {
            if c % spec.groups != 0 {
                return Err(ConvError::NotDivisibleByGroups {
                    what,
                    channels: c,
                    groups: spec.groups,
                });
            }
        }
        if spec.transposed {
            if spec.padding_mode != PaddingMode::Zeros {
                return Err(ConvError::TransposedUnsupported {
                    what: "the zeros padding mode",
                });
            }
            if matches!(spec.padding, Padding::Same | Padding::SameTf) {
                return Err(ConvError::TransposedUnsupported {
                    what: "explicit or 'valid' padding",
                });
            }
            if spec.output_size.is_none() {
                for (ax, axis) in AXES.into_iter().enumerate() {
                    let (op, s, d) = (spec.output_padding[ax], spec.stride[ax], spec.dilation[ax]);
                    if op >= s && op >= d {
                        return Err(ConvError::BadOutputPadding {
                            axis,
                            output_padding: op,
                            stride: s,
                            dilation: d,
                        });
                    }
                }
            }
        } else {
            if spec.output_padding != [0, 0] || spec.output_size.is_some() {
                return Err(ConvError::OutputPaddingOnDirect);
            }
            if spec.padding == Padding::Same && spec.stride != [1, 1] {
                return Err(ConvError::SameNeedsStrideOne {
                    stride_h: spec.stride[0],
                    stride_w: spec.stride[1],
                });
            }
        }
        // Every product the engines form from the spec alone must fit.
        let v = ValidSpec { spec };
        for ax in 0..2 {
            v.spec.dilation[ax]
                .checked_mul(v.spec.kernel[ax] - 1)
                .and_then(|e| e.checked_add(1))
                .ok_or(ConvError::Overflow {
                    what: "dilated kernel extent",
                })?;
        }
        let weights = v
            .weight_shape()
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
            .ok_or(ConvError::Overflow {
                what: "weight size",
            })?;
        // param_count() = weights + K biases must fit too.
        if v.spec.bias {
            weights
                .checked_add(v.spec.out_channels)
                .ok_or(ConvError::Overflow {
                    what: "parameter count",
                })?;
        }
        Ok(v)
    }

    /// The unchecked description this was built from.
    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }
    /// 1D or 2D.
    pub fn rank(&self) -> Rank {
        self.spec.rank
    }
    /// Input channels C.
    pub fn in_channels(&self) -> usize {
        self.spec.in_channels
    }
    /// Output channels K.
    pub fn out_channels(&self) -> usize {
        self.spec.out_channels
    }
    /// Kernel `[kh, kw]`.
    pub fn kernel(&self) -> [usize; 2] {
        self.spec.kernel
    }
    /// Stride `[sh, sw]`.
    pub fn stride(&self) -> [usize; 2] {
        self.spec.stride
    }
    /// Dilation `[dh, dw]`.
    pub fn dilation(&self) -> [usize; 2] {
        self.spec.dilation
    }
    /// Groups g.
    pub fn groups(&self) -> usize {
        self.spec.groups
    }
    /// Whether there is a bias.
    pub fn has_bias(&self) -> bool {
        self.spec.bias
    }
    /// Whether this is a transposed convolution.
    pub fn is_transposed(&self) -> bool {
        self.spec.transposed
    }
    /// Padding rule.
    pub fn padding(&self) -> Padding {
        self.spec.padding
    }
    /// Border mode.
    pub fn padding_mode(&self) -> PaddingMode {
        self.spec.padding_mode
    }
    /// Whether this is a depthwise convolution (groups = C, K = m·C, not transposed).
    pub fn is_depthwise(&self) -> bool {
        !self.spec.transposed && self.spec.groups == self.spec.in_channels && self.spec.groups > 1
    }
    /// Depth multiplier m = K / C of a depthwise layer.
    pub fn depth_multiplier(&self) -> usize {
        self.spec.out_channels / self.spec.in_channels.max(1)
    }

    /// Dilated kernel extent d·(k−1)+1 per axis (the "effective kernel size").
    pub fn dilated_kernel(&self) -> [usize; 2] {
        [0, 1].map(|a| self.spec.dilation[a] * (self.spec.kernel[a] - 1) + 1)
    }

    /// Weight shape in PyTorch's layout: conv `(K, C/g, kh, kw)`, transposed `(C, K/g, kh, kw)`.
    pub fn weight_shape(&self) -> [usize; 4] {
        let s = &self.spec;
        if s.transposed {
            [
                s.in_channels,
                s.out_channels / s.groups,
                s.kernel[0],
                s.kernel[1],
            ]
        } else {
            [
                s.out_channels,
                s.in_channels / s.groups,
                s.kernel[0],
                s.kernel[1],
            ]
        }
    }

    /// Weight shape as PyTorch stores it for this rank (1D drops kh).
    pub fn weight_shape_dyn(&self) -> Vec<usize> {
        let w = self.weight_shape();
        match self.rank() {
            Rank::Two => w.to_vec(),
            Rank::One => vec![w[0], w[1], w[3]],
        }
    }

    /// Number of weights: I × O × K_taps / g (the seed's I×O×K, divided by groups).
    pub fn weight_count(&self) -> usize {
        // Cannot overflow: checked at validation.
        self.weight_shape().iter().product()
    }

    /// Number of learnable parameters: weights plus K biases if present.
    pub fn param_count(&self) -> usize {
        self.weight_count()
            + if self.spec.bias {
                self.spec.out_channels
            } else {
                0
            }
    }

    /// Padding `[top, bottom, left, right]` for an input of `[h, w]` (resolving `same` rules).
    pub fn resolved_padding(&self, h: usize, w: usize) -> [usize; 4] {
        let s = &self.spec;
        match s.padding {
            Padding::Explicit(p) => p,
            Padding::Valid => [0; 4],
            Padding::Same => {
                let [eh, ew] = self.dilated_kernel();
                let (th, tw) = (eh - 1, ew - 1);
                [th / 2, th - th / 2, tw / 2, tw - tw / 2]
            }
            Padding::SameTf => {
                let ext = self.dilated_kernel();
                let mut p = [0; 4];
                for (ax, i) in [h, w].into_iter().enumerate() {
                    let st = s.stride[ax];
                    let out = i.div_ceil(st);
                    let need = (out.saturating_sub(1))
                        .saturating_mul(st)
                        .saturating_add(ext[ax]);
                    let total = need.saturating_sub(i);
                    p[2 * ax] = total / 2;
                    p[2 * ax + 1] = total - total / 2;
                }
                p
            }
        }
    }

    /// Resolves this layer on an input of shape `[n, c, h, w]`: padding, output size, derived
    /// output padding, border limits. Every engine starts here.
    pub fn geometry(&self, input: [usize; 4]) -> Result<crate::geometry::Geometry> {
        crate::geometry::Geometry::new(*self, input)
    }

    /// Output `[h, w]` for an input of `[h, w]` (any batch, the spec's channels).
    pub fn output_hw(&self, h: usize, w: usize) -> Result<[usize; 2]> {
        let g = self.geometry([1, self.spec.in_channels, h, w])?;
        Ok([g.oh, g.ow])
    }

    /// The PyTorch expression that builds the same layer (for explanations). What a module
    /// argument cannot say follows as a comment: per-side padding (`F.pad` before a direct
    /// layer, a crop after a transposed one), TensorFlow SAME, and `output_size`.
    pub fn pytorch(&self) -> String {
        let s = &self.spec;
        let (cls, one) = match (s.transposed, s.rank) {
            (false, Rank::Two) => ("nn.Conv2d", false),
            (false, Rank::One) => ("nn.Conv1d", true),
            (true, Rank::Two) => ("nn.ConvTranspose2d", false),
            (true, Rank::One) => ("nn.ConvTranspose1d", true),
        };
        let pair = |p: [usize; 2]| {
            if one {
                format!("{}", p[1])
            } else if p[0] == p[1] {
                format!("{}", p[0])
            } else {
                format!("({}, {})", p[0], p[1])
            }
        };
        let mut out = format!(
            "{cls}({}, {}, kernel_size={}",
            s.in_channels,
            s.out_channels,
            pair(s.kernel)
        );
        if s.stride != [1, 1] {
            out += &format!(", stride={}", pair(s.stride));
        }
        // Per-side padding and TensorFlow SAME have no constructor argument: the layer gets
        // padding 0 and a trailing comment says what happens around it.
        let mode = s.padding_mode;
        let fpad_mode = match mode {
            PaddingMode::Zeros => String::new(),
            m => format!(", mode='{m}'"),
        };
        let sides = |[t, b, l, r]: [usize; 4]| {
            if one {
                format!("({l}, {r})")
            } else {
                format!("({l}, {r}, {t}, {b})")
            }
        };
        let mut note = String::new();
        let mut module_mode = mode;
        match s.padding {
            Padding::Explicit([t, b, l, r]) if t == b && l == r => {
                if t != 0 || l != 0 {
                    out += &format!(", padding={}", pair([t, l]));
                }
            }
            Padding::Explicit(p) if s.transposed => {
                out += ", padding=0";
                note = format!(
                    "  # then crop {} (left, right{}) from the output",
                    sides(p),
                    if one { "" } else { ", top, bottom" }
                );
            }
            Padding::Explicit(p) => {
                out += ", padding=0";
                note = format!("  # preceded by F.pad(x, {}{fpad_mode})", sides(p));
                module_mode = PaddingMode::Zeros;
            }
            Padding::Valid => out += ", padding='valid'",
            Padding::Same => out += ", padding='same'",
            Padding::SameTf => {
                note = format!(
                    "  # TensorFlow SAME: pad with F.pad(x, ...{fpad_mode}) first (depends on input size)"
                );
                module_mode = PaddingMode::Zeros;
            }
        }
        if s.transposed && s.output_padding != [0, 0] {
            out += &format!(", output_padding={}", pair(s.output_padding));
        }
        if s.groups != 1 {
            out += &format!(", groups={}", s.groups);
        }
        if !s.bias {
            out += ", bias=False";
        }
        if s.dilation != [1, 1] {
            out += &format!(", dilation={}", pair(s.dilation));
        }
        if module_mode != PaddingMode::Zeros {
            out += &format!(", padding_mode='{module_mode}'");
        }
        out.push(')');
        if let Some(size) = s.output_size {
            let size = if one {
                format!("[{}]", size[1])
            } else {
                format!("[{}, {}]", size[0], size[1])
            };
            out += &format!("  # called with output_size={size}");
        }
        out += &note;
        out
    }
}

impl fmt::Display for ValidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pytorch())
    }
}
