//! Fast CPU kernels: one module per algorithm or microkernel family.
//!
//! * [`col2im`]: transposed convolution as a GEMM (`Wᵀ · X`) and a col2im scatter.
//! * [`depthwise`]: channel-vectorised depthwise kernels.
//! * [`direct`]: stride-1 direct convolution, the microkernel reading a padded input band
//!   through per-tap row offsets (no im2col).
//! * [`gemm`]: register-blocked sgemm microkernels, runtime-dispatched per [`Isa`].
//! * [`igemm`]: the tiled implicit GEMM (segmented im2col, MLAS-style) for every direct
//!   convolution, and the copy-free 1×1 GEMM on NCHW.
//! * [`indirect`]: indirect convolution, output channels on the lanes and the input values
//!   broadcast in place through per-pixel offsets (no im2col packing).
//! * [`winograd`]: Winograd F(2×2, 3×3) on the same microkernels.
//! * [`subpixel`]: transposed convolution as stride-phase direct convolutions.
//! * [`wgrad`]: weight gradients as in-place GEMMs (no im2col).
//! * [`transpose`]: register-blocked transposes for layout changes (NCHW → NHWC, packing).
//! * [`store`]: the scatter of finished output tiles into the caller's array.
//! * [`peak`]: an FMA-throughput loop that measures the machine's peak (for `convkit bench`).
//!
//! [`crate::plan`] decides which of these runs; nothing here chooses an algorithm.

pub mod col2im;
pub mod depthwise;
pub mod direct;
pub mod gemm;
pub mod igemm;
pub mod indirect;
pub mod peak;
pub mod store;
pub mod subpixel;
pub mod tail;
pub(crate) mod tasks;
pub mod transpose;
pub mod wgrad;
pub mod winograd;

use std::fmt;

/// The AVX-512 lane mask of the first `n` of 16 lanes (all of them for `n ≥ 16`): the masked
/// tails of the kernels' vector loops.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn lane_mask(n: usize) -> std::arch::x86_64::__mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as std::arch::x86_64::__mmask16
    }
}

/// An instruction-set level with its own microkernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust (vectorised by the compiler for the baseline target).
    Scalar,
    /// x86-64 AVX2 + FMA (256-bit).
    Avx2,
    /// x86-64 AVX-512F (512-bit).
    Avx512,
}

impl Isa {
    /// Whether this CPU can run the level (checked at run time).
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            // The AVX-512 family's narrow tail kernel is a ymm FMA kernel with embedded
            // broadcasts (AVX-512VL): 91 GFLOP/s on Zen 4, 64 with separate broadcasts.
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every level this CPU can run, lowest first.
    pub fn available_levels() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

    /// The widest level available (what plans use by default).
    pub fn best() -> Isa {
        *Self::available_levels().last().unwrap_or(&Isa::Scalar)
    }

    /// Short name (`scalar`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "scalar" => Ok(Isa::Scalar),
            "avx2" => Ok(Isa::Avx2),
            "avx512" => Ok(Isa::Avx512),
            _ => Err(format!(
                "unknown ISA '{s}' (expected scalar, avx2 or avx512)"
            )),
        }
    }
}

/// Rounds `v` up to a multiple of `m`.
pub(crate) fn round_up(v: usize, m: usize) -> usize {
    v.div_ceil(m) * m
}
