//! Arithmetic over layers and stacks: receptive fields and the seed's parameter comparisons.

use crate::error::{ConvError, Result};
use crate::geometry::Geometry;
use crate::spec::{ConvSpec, ValidSpec};
use serde::Serialize;

/// Receptive field of one output cell of a stack, per axis `[h, w]`.
///
/// Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural Networks"
/// (Distill 2019), eqs. 2–3, with dilation folded in as k̂ = d·(k−1)+1:
/// `r₀ = Σₗ (k̂ₗ − 1)·∏_{i<l} sᵢ + 1`, jump `S = ∏ sᵢ`, start `u₀ = −Σₗ pₗ·∏_{i<l} sᵢ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReceptiveField {
    /// Size of the input region one output cell sees.
    pub size: [u64; 2],
    /// Distance in input cells between neighbouring output cells (effective stride).
    pub jump: [u64; 2],
    /// Input coordinate of the first cell of output (0, 0)'s region (negative = in padding).
    pub start: [i64; 2],
}

impl ReceptiveField {
    /// The identity (no layers): each cell sees itself.
    pub fn identity() -> Self {
        ReceptiveField {
            size: [1, 1],
            jump: [1, 1],
            start: [0, 0],
        }
    }

    /// Appends one direct layer with the given resolved top/left padding.
    pub fn then(self, spec: &ValidSpec, pad_before: [usize; 2]) -> Result<Self> {
        if spec.is_transposed() {
            return Err(ConvError::Unsupported(
                "a receptive field through a transposed layer is fractional and not defined here"
                    .into(),
            ));
        }
        let ext = spec.dilated_kernel();
        let mut r = self;
        for ax in 0..2 {
            let j = self.jump[ax];
            r.size[ax] = self.size[ax].saturating_add((ext[ax] as u64 - 1).saturating_mul(j));
            // Saturating casts: `as i64` would flip the sign of values above i64::MAX.
            let sat = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            r.start[ax] =
                self.start[ax].saturating_sub(sat(pad_before[ax] as u64).saturating_mul(sat(j)));
            r.jump[ax] = j.saturating_mul(spec.stride()[ax] as u64);
        }
        Ok(r)
    }
}

/// Everything `convkit explain` says about one layer of a stack.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// The layer as PyTorch would build it.
    pub pytorch: String,
    /// Resolved geometry (input/output shapes, padding).
    pub geometry: Geometry,
    /// Parameters (weights + bias).
    pub params: usize,
    /// Multiply-accumulates for this input.
    pub macs: u64,
    /// Receptive field after this layer (`None` once a transposed layer is met).
    pub receptive_field: Option<ReceptiveField>,
}

/// Runs a stack of layers on an input shape, reporting shapes, costs and receptive fields.
pub fn analyze_stack(layers: &[ValidSpec], input: [usize; 4]) -> Result<Vec<LayerReport>> {
    let mut shape = input;
    let mut rf = Some(ReceptiveField::identity());
    let mut out = Vec::with_capacity(layers.len());
    for (i, l) in layers.iter().enumerate() {
        let geometry = l.geometry(shape).map_err(|e| match e {
            ConvError::ChannelMismatch { got, expected } => ConvError::Unsupported(format!(
                "layer {} expects {expected} input channels but the previous layer gives {got}",
                i + 1
            )),
            e => e,
        })?;
        rf = match rf {
            Some(r) if !l.is_transposed() => Some(r.then(l, [geometry.pad[0], geometry.pad[2]])?),
            _ => None,
        };
        out.push(LayerReport {
            pytorch: l.pytorch(),
            geometry,
            params: l.param_count(),
            macs: geometry.macs(),
            receptive_field: rf,
        });
        shape = geometry.output_shape();
    }
    Ok(out)
}

/// Parameter counts of the seed's comparison: a standard k×k convolution versus a depthwise
/// separable block (depthwise k×k with multiplier m, then pointwise 1×1), without biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeparableParams {
    /// C·K·kh·kw.
    pub standard: usize,
    /// Depthwise half: C·m·kh·kw.
    pub depthwise: usize,
    /// Pointwise half: C·m·K.
    pub pointwise: usize,
}

impl SeparableParams {
    /// Depthwise + pointwise (fits in `usize` for every value [`depthwise_separable_params`]
    /// returns; saturates for hand-made values that do not).
    pub fn separable(&self) -> usize {
        self.depthwise.saturating_add(self.pointwise)
    }
}

/// Standard vs depthwise separable parameter counts (the seed: 16→32, 3×3 gives 4608 vs 656).
pub fn depthwise_separable_params(
    in_channels: usize,
    out_channels: usize,
    kernel: [usize; 2],
    multiplier: usize,
) -> Result<SeparableParams> {
    let count = |s: ConvSpec| s.bias(false).build().map(|v| v.param_count());
    let mid = in_channels
        .checked_mul(multiplier)
        .ok_or(ConvError::Overflow { what: "channels" })?;
    let p = SeparableParams {
        standard: count(ConvSpec::conv2d(in_channels, out_channels, kernel))?,
        depthwise: count(ConvSpec::conv2d(in_channels, mid, kernel).groups(in_channels))?,
        pointwise: count(ConvSpec::conv2d(mid, out_channels, 1))?,
    };
    p.depthwise
        .checked_add(p.pointwise)
        .ok_or(ConvError::Overflow {
            what: "depthwise separable parameter count",
        })?;
    Ok(p)
}

/// Weights of a kh×kw kernel as a 2D kernel versus as two 1D passes (Sobel: 9 vs 6).
///
/// Saturates at `usize::MAX` (no kernel that large can be built: `ConvSpec::build` rejects it).
pub fn spatially_separable_params(kernel: [usize; 2]) -> (usize, usize) {
    (
        kernel[0].saturating_mul(kernel[1]),
        kernel[0].saturating_add(kernel[1]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_depthwise_separable_example() {
        let p = depthwise_separable_params(16, 32, [3, 3], 1).unwrap();
        assert_eq!(p.standard, 4608);
        assert_eq!(p.depthwise, 144);
        assert_eq!(p.pointwise, 512);
        assert_eq!(p.separable(), 656);
    }

    #[test]
    fn seed_sobel_example() {
        assert_eq!(spatially_separable_params([3, 3]), (9, 6));
    }

    #[test]
    fn receptive_field_of_vgg_like_stack() {
        // Three 3×3 stride-1 convs see 7×7; a 2×2 stride-2 then 3×3 sees 2 + 2·2 = 6... checked
        // by the recurrence: r = 1 + 2 + 2 + 2 = 7.
        let l = ConvSpec::conv2d(1, 1, 3).padding(1).build().unwrap();
        let rep = analyze_stack(&[l, l, l], [1, 1, 32, 32]).unwrap();
        let rf = rep[2].receptive_field.unwrap();
        assert_eq!(rf.size, [7, 7]);
        assert_eq!(rf.jump, [1, 1]);
        assert_eq!(rf.start, [-3, -3]);
    }

    #[test]
    fn receptive_field_with_stride_and_dilation() {
        // Araujo et al.: conv 3 s2 p1, then conv 3 d2 p2: r = 1 + 2·1 + (5−1)·2 = 11, S = 2,
        // u = −1 − 2·2 = −5.
        let a = ConvSpec::conv2d(1, 1, 3)
            .stride(2)
            .padding(1)
            .build()
            .unwrap();
        let b = ConvSpec::conv2d(1, 1, 3)
            .dilation(2)
            .padding(2)
            .build()
            .unwrap();
        let rep = analyze_stack(&[a, b], [1, 1, 64, 64]).unwrap();
        let rf = rep[1].receptive_field.unwrap();
        assert_eq!(rf.size, [11, 11]);
        assert_eq!(rf.jump, [2, 2]);
        assert_eq!(rf.start, [-5, -5]);
        assert_eq!(rep[1].geometry.output_shape(), [1, 1, 32, 32]);
    }

    #[test]
    fn stack_channel_mismatch_is_an_error() {
        let a = ConvSpec::conv2d(3, 8, 3).build().unwrap();
        let b = ConvSpec::conv2d(16, 8, 3).build().unwrap();
        assert!(analyze_stack(&[a, b], [1, 3, 16, 16]).is_err());
    }
}
