//! The one place the CLI chooses how a convolution runs.
//!
//! Every command goes through [`forward`] / [`backward`], so routing `--algo auto` to a faster
//! engine is a change here only. Today every algorithm is the reference oracle.

use crate::error::CliResult;
use convkit::{reference, GradRequest, Gradients, ValidSpec};
use ndarray::{Array4, ArrayView1, ArrayView4};

/// Which engine runs the convolution (`--algo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Algo {
    /// The fastest correct engine for the layer (currently the reference).
    #[default]
    Auto,
    /// The reference oracle: plain loops, f64 accumulation.
    Reference,
}

/// Forward pass of any layer on NCHW arrays (1D layers as (N, C, 1, L)).
pub fn forward(
    spec: &ValidSpec,
    x: ArrayView4<f32>,
    w: ArrayView4<f32>,
    bias: Option<ArrayView1<f32>>,
    algo: Algo,
) -> CliResult<Array4<f32>> {
    match algo {
        Algo::Auto | Algo::Reference => Ok(reference::forward(spec, x, w, bias)?),
    }
}

/// Backward pass: the gradients in `want` given `dy = dL/dy`.
pub fn backward(
    spec: &ValidSpec,
    x: ArrayView4<f32>,
    w: ArrayView4<f32>,
    dy: ArrayView4<f32>,
    want: GradRequest,
    algo: Algo,
) -> CliResult<Gradients<f32>> {
    match algo {
        Algo::Auto | Algo::Reference => Ok(reference::backward(spec, x, w, dy, want)?),
    }
}
