//! The one error type of the library: every impossible convolution is named here.

use thiserror::Error;

/// Spatial axis name used in error messages (`"height"` or `"width"`).
pub type Axis = &'static str;

/// Every way a convolution request can be invalid.
///
/// Validation (`ConvSpec::build`, `ValidSpec::geometry`) and every engine entry point return
/// this instead of panicking, so any input, however absurd, gets a readable message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConvError {
    /// A size that must be at least 1 was 0.
    #[error("{what} must be at least 1, got 0")]
    Zero {
        /// The offending quantity.
        what: &'static str,
    },
    /// A size computation does not fit in `usize`.
    #[error("{what} overflows the address space")]
    Overflow {
        /// The quantity whose computation overflowed.
        what: &'static str,
    },
    /// Channels are not divisible by the number of groups.
    #[error("{what} ({channels}) is not divisible by groups ({groups})")]
    NotDivisibleByGroups {
        /// `"in_channels"` or `"out_channels"`.
        what: &'static str,
        /// The channel count.
        channels: usize,
        /// The group count.
        groups: usize,
    },
    /// PyTorch's `padding='same'` is only defined for stride 1.
    #[error("padding 'same' needs stride 1 (got {stride_h}x{stride_w}); use Padding::SameTf (TensorFlow's rule) for strided layers")]
    SameNeedsStrideOne {
        /// Vertical stride.
        stride_h: usize,
        /// Horizontal stride.
        stride_w: usize,
    },
    /// A padding option that the transposed convolution does not have.
    #[error("transposed convolution supports {what} only")]
    TransposedUnsupported {
        /// What it supports instead (e.g. `"zeros padding mode"`).
        what: &'static str,
    },
    /// `output_padding` only makes sense for transposed convolutions.
    #[error("output_padding and output_size apply to transposed convolutions only")]
    OutputPaddingOnDirect,
    /// PyTorch: output padding must be smaller than either stride or dilation.
    #[error("output_padding {output_padding} on the {axis} axis must be smaller than the stride ({stride}) or the dilation ({dilation})")]
    BadOutputPadding {
        /// Axis name.
        axis: Axis,
        /// The requested output padding.
        output_padding: usize,
        /// The stride on that axis.
        stride: usize,
        /// The dilation on that axis.
        dilation: usize,
    },
    /// A requested transposed output size that no output_padding can produce.
    #[error("requested output size {requested} on the {axis} axis is outside [{min}, {max}] for this layer and input")]
    BadOutputSize {
        /// Axis name.
        axis: Axis,
        /// Requested size.
        requested: usize,
        /// Smallest reachable size.
        min: usize,
        /// Largest reachable size.
        max: usize,
    },
    /// A conv1d spec was given a non-trivial height parameter.
    #[error("a 1D convolution has no height axis: {what} must be 1 (or 0 for padding) on it")]
    OneDimensional {
        /// The parameter.
        what: &'static str,
    },
    /// Border padding that would wrap or mirror beyond the input.
    #[error("{mode} padding of {pad} on the {axis} axis needs an input larger than {limit_desc} (input size {size})")]
    PaddingTooLarge {
        /// Padding mode name.
        mode: &'static str,
        /// Axis name.
        axis: Axis,
        /// The larger padding on that axis.
        pad: usize,
        /// Input size on that axis.
        size: usize,
        /// `"the padding"` or `"or equal to the padding"`.
        limit_desc: &'static str,
    },
    /// The (dilated) kernel does not fit in the padded input.
    #[error(
        "kernel extent {extent} on the {axis} axis is larger than the padded input ({padded})"
    )]
    KernelTooLarge {
        /// Axis name.
        axis: Axis,
        /// Dilated kernel extent d·(k−1)+1.
        extent: usize,
        /// Padded input size.
        padded: usize,
    },
    /// A transposed convolution whose padding crops away the whole output.
    #[error("transposed convolution output on the {axis} axis would be {size} (padding crops everything)")]
    EmptyOutput {
        /// Axis name.
        axis: Axis,
        /// The (non-positive) size it would have.
        size: i64,
    },
    /// An array's shape does not match what the spec needs.
    #[error("{what} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Which array.
        what: &'static str,
        /// Its shape.
        got: Vec<usize>,
        /// The shape the spec requires.
        expected: Vec<usize>,
    },
    /// An array has the wrong number of dimensions.
    #[error("{what} must have {expected} dimensions, got {got}")]
    RankMismatch {
        /// Which array.
        what: &'static str,
        /// Its number of dimensions.
        got: usize,
        /// The required number.
        expected: usize,
    },
    /// Input channels differ from the spec's.
    #[error("input has {got} channels but the layer expects {expected}")]
    ChannelMismatch {
        /// Channels in the input.
        got: usize,
        /// Channels the spec expects.
        expected: usize,
    },
    /// A bias was given to a layer without one, or none to a layer with one.
    #[error("{0}")]
    Bias(&'static str),
    /// A request that the spec cannot serve (e.g. a receptive field through a transposed layer).
    #[error("{0}")]
    Unsupported(String),
    /// An algorithm that cannot run this layer.
    #[error("algorithm {algo} cannot run this layer: {why}")]
    AlgorithmUnavailable {
        /// Algorithm name.
        algo: &'static str,
        /// Why not.
        why: String,
    },
    /// An operand holds NaN or ±infinity where only finite values make sense.
    #[error("{what} has a non-finite entry (NaN or infinity)")]
    NonFinite {
        /// Which operand.
        what: &'static str,
    },
}

/// Result alias used across the crate.
pub type Result<T, E = ConvError> = std::result::Result<T, E>;
