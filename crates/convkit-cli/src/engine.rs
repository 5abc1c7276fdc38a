//! The one place the CLI chooses how a convolution runs.
//!
//! Every command goes through [`forward`] / [`backward`]: `--algo auto` plans the layer on
//! the fast engine (`convkit::plan`, `convkit::backward`), `--algo reference` runs the oracle,
//! and the other names force one algorithm of the plan (an error if it cannot run the layer).

use crate::error::CliResult;
use convkit::plan::{self, Algo as PlanAlgo};
use convkit::{GradRequest, Gradients, ValidSpec};
use ndarray::{Array4, ArrayView1, ArrayView4};

/// Which engine runs the convolution (`--algo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Algo {
    /// The fastest correct engine for the layer, chosen by the plan.
    #[default]
    Auto,
    /// The reference oracle: plain loops, f64 accumulation.
    Reference,
    /// Tiled implicit GEMM (any direct convolution).
    ImplicitGemm,
    /// Indirect convolution: output channels on the lanes, the input read in place (any
    /// direct convolution).
    Indirect,
    /// 1×1 stride-1 unpadded layers as a GEMM on the NCHW input.
    Gemm1x1,
    /// Stride-1 layers: the register-blocked direct kernel reading the input in place (exact
    /// f32 arithmetic, never Winograd).
    Direct,
    /// 3×3 stride-1 ungrouped layers: Winograd F(2×2, 3×3), within its documented tolerance.
    Winograd,
    /// Depthwise layers (groups = in_channels): the channel-vectorised kernel.
    Depthwise,
    /// Transposed layers as stride-phase (sub-pixel) direct convolutions.
    Subpixel,
    /// Transposed layers as one GEMM (weights transposed × input) and a col2im scatter-add.
    Col2im,
}

impl Algo {
    fn plan_algo(self) -> PlanAlgo {
        match self {
            Algo::Auto => PlanAlgo::Auto,
            Algo::Reference => PlanAlgo::Reference,
            Algo::ImplicitGemm => PlanAlgo::ImplicitGemm,
            Algo::Indirect => PlanAlgo::Indirect,
            Algo::Gemm1x1 => PlanAlgo::Gemm1x1,
            Algo::Direct => PlanAlgo::Direct,
            Algo::Winograd => PlanAlgo::Winograd,
            Algo::Depthwise => PlanAlgo::Depthwise,
            Algo::Subpixel => PlanAlgo::Subpixel,
            Algo::Col2im => PlanAlgo::Col2im,
        }
    }
}

impl Algo {
    /// What runs a layer under this choice, for reports (`convkit tour`).
    pub fn describe(self) -> &'static str {
        match self {
            Algo::Auto => "the fast engine (plan chosen per layer: implicit GEMM, indirect, 1x1 GEMM, direct, Winograd, depthwise, sub-pixel or GEMM + col2im)",
            Algo::Reference => "the reference engine (plain loops, f64 accumulation)",
            Algo::ImplicitGemm => "the implicit-GEMM engine",
            Algo::Indirect => "the indirect (input broadcast in place) engine",
            Algo::Gemm1x1 => "the 1x1 GEMM engine",
            Algo::Direct => "the direct (stride-1, register-blocked) engine",
            Algo::Winograd => "the Winograd F(2x2, 3x3) engine",
            Algo::Depthwise => "the depthwise kernel",
            Algo::Subpixel => "the sub-pixel (stride-phase) transposed engine",
            Algo::Col2im => "the GEMM + col2im transposed engine",
        }
    }
}

/// Forward pass of any layer on NCHW arrays (1D layers as (N, C, 1, L)).
pub fn forward(
    spec: &ValidSpec,
    x: ArrayView4<f32>,
    w: ArrayView4<f32>,
    bias: Option<ArrayView1<f32>>,
    algo: Algo,
) -> CliResult<Array4<f32>> {
    Ok(plan::forward(spec, x, w, bias, algo.plan_algo())?)
}

/// Backward pass: the gradients in `want` given `dy = dL/dy`. Any `--algo` but `reference`
/// runs the fast backward engine (which picks its own algorithm per gradient).
pub fn backward(
    spec: &ValidSpec,
    x: ArrayView4<f32>,
    w: ArrayView4<f32>,
    dy: ArrayView4<f32>,
    want: GradRequest,
    algo: Algo,
) -> CliResult<Gradients<f32>> {
    let a = match algo {
        Algo::Reference => PlanAlgo::Reference,
        _ => PlanAlgo::Auto,
    };
    Ok(convkit::backward::backward(spec, x, w, dy, want, a)?)
}
