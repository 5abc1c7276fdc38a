//! # convkit
//!
//! Every kind of convolution in deep learning, with exactly PyTorch's semantics:
//! standard, strided, padded (zeros / reflect / replicate / circular, per side, `same`),
//! dilated (atrous), grouped and depthwise, transposed, 1D and 2D; forward and backward.
//!
//! The pieces, in the order data flows through them:
//! * [`spec`]: [`ConvSpec`] describes a layer; [`ConvSpec::build`] validates it once into a
//!   [`ValidSpec`], which answers every arithmetic question (shapes, parameters, MACs).
//! * [`geometry`]: a [`ValidSpec`] resolved on a concrete input shape.
//! * [`arith`]: receptive fields of stacks and the seed's parameter comparisons.
//! * [`reference`]: the slow, obviously correct oracle (f64 accumulation).
//! * [`plan`]: the fast engine's entry point: picks an algorithm, packs weights, runs
//!   [`kernels`] (SIMD microkernels, implicit GEMM) on rayon's pool.
//! * [`border`]: padding modes as index rules, shared by every engine.
//! * [`separable`]: spatially separable kernels (rank-1 / low-rank factorisation, two passes).
//! * [`dwsep`]: the depthwise separable block; [`dwsep_plan`] runs it as one plan, fused
//!   band by band so the intermediate stays in L2.
//! * [`filter`]: image filtering with OpenCV semantics (named kernels, separable / 2D paths).
//!
//! ```
//! use convkit::{ConvSpec, reference};
//! use ndarray::Array4;
//! let spec = ConvSpec::conv2d(1, 1, 3).padding(1).bias(false).build().unwrap();
//! let x = Array4::<f32>::ones((1, 1, 4, 4));
//! let w = Array4::<f32>::ones((1, 1, 3, 3));
//! let y = reference::forward(&spec, x.view(), w.view(), None).unwrap();
//! assert_eq!(y[[0, 0, 0, 0]], 4.0); // corner: 2×2 taps inside the input
//! assert_eq!(y[[0, 0, 1, 1]], 9.0);
//! ```

#![warn(missing_docs)]

pub mod arith;
pub mod backward;
pub mod border;
pub mod dwsep;
pub mod dwsep_plan;
pub mod error;
pub mod filter;
pub mod geometry;
pub mod kernels;
pub mod plan;
pub mod reference;
pub mod separable;
pub mod spec;
#[cfg(test)]
mod testutil;

pub use error::{ConvError, Result};
pub use geometry::{Equivalent, Geometry};
pub use reference::{GradRequest, Gradients, Real};
pub use spec::{ConvSpec, Padding, PaddingMode, Rank, ValidSpec};
