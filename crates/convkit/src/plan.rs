//! Plans: a layer + an input shape + its weights → the algorithm that runs it, with the
//! weights packed once and the workspace sized. The only place that chooses an algorithm.
//!
//! `Algo::Auto` picks, in order: transposed → sub-pixel phases or GEMM + col2im by a measured
//! cost rule (stride 1, narrow groups, and with AVX-512 kernels a multiple of the stride whose
//! phases run on the indirect kernel: sub-pixel; kernels within their stride or ≥ 64
//! channels per group: col2im; see `transposed_algo`); depthwise → the depthwise
//! kernel; 1×1 stride 1 unpadded → GEMM on the NCHW input; 3×3 stride 1 ungrouped with ≥ 16
//! channels each way → Winograd F(2×2, 3×3) when its padded GEMM work is < 70 % of the direct
//! one (dilated: zero padding in multiples of the dilation and stride phases ≥ 12 tiles wide,
//! `WINOGRAD_MIN_PHASE_TILES`); with AVX-512, ≥ 64 output and ≥ 16 input channels per group,
//! not 1×1 and rows < 1024 wide → indirect (input values broadcast in place through
//! per-pixel offsets; `prefers_indirect`); undilated layers with a
//! small gap share, strided ones included → direct (input bands, split into stride phases,
//! read in place); everything else (dilated with padding-tap skipping, huge strides, wide
//! kernels on narrow maps) → implicit GEMM.
//! Every choice can be forced with its `Algo` and is tested against the reference.
//!
//! ```
//! use convkit::{ConvSpec, plan::{Algo, Plan}};
//! use ndarray::{Array1, Array4};
//! let spec = ConvSpec::conv2d(8, 16, 3).padding(1).build().unwrap();
//! let w = Array4::<f32>::ones((16, 8, 3, 3));
//! let b = Array1::<f32>::zeros(16);
//! let plan = Plan::new(&spec, [1, 8, 10, 10], w.view(), Some(b.view()), Algo::Auto).unwrap();
//! let x = Array4::<f32>::ones((1, 8, 10, 10));
//! let mut y = Array4::<f32>::zeros((1, 16, 10, 10));
//! plan.run(x.view(), y.view_mut()).unwrap();
//! assert_eq!(y[[0, 0, 5, 5]], 72.0); // 8 channels × 9 taps
//! assert_eq!(y[[0, 0, 0, 0]], 32.0); // corner: 8 × 4 in-bounds taps
//! ```

use crate::error::{ConvError, Result};
use crate::geometry::Geometry;
use crate::kernels::col2im::Col2im;
use crate::kernels::depthwise::Depthwise;
use crate::kernels::direct::DirectConv;
use crate::kernels::gemm::Microkernel;
use crate::kernels::igemm::{pack_weights, pack_weights_adjoint, ConvGemm};
use crate::kernels::indirect::{Indirect, PackedWeights};
use crate::kernels::subpixel::Subpixel;
use crate::kernels::winograd::{self, Winograd};
use crate::kernels::Isa;
use crate::reference;
use crate::spec::ValidSpec;
use ndarray::{Array1, Array4, ArrayView1, ArrayView4, ArrayViewMut4, CowArray, Ix4};
use std::fmt;

/// A convolution algorithm (`--algo` on the command line, kebab-case names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algo {
    /// Let the plan choose (always works: every layer, transposed ones included, has a fast
    /// path; see the module doc for the order of choices).
    Auto,
    /// The f64-accumulating oracle ([`crate::reference`]); slow, exact.
    Reference,
    /// Tiled implicit GEMM (segmented im2col, packed weights): any direct convolution.
    ImplicitGemm,
    /// Indirect convolution ([`crate::kernels::indirect`]): output channels on the lanes,
    /// input values broadcast in place through per-pixel offsets (no im2col packing): any
    /// direct convolution.
    Indirect,
    /// 1×1, stride 1, unpadded: a GEMM straight on the NCHW input, no copy.
    Gemm1x1,
    /// Direct convolution: the microkernel reads a padded, stride-phase-split input band in
    /// place ([`crate::kernels::direct`]); exact f32 arithmetic like the GEMMs (no Winograd).
    Direct,
    /// Winograd F(2×2, 3×3) for 3×3 stride-1 ungrouped layers ([`crate::kernels::winograd`]):
    /// 2.25× fewer multiplies, error within the tolerance documented there.
    Winograd,
    /// Depthwise layers (groups = C): channel-vectorised kernel ([`crate::kernels::depthwise`]).
    Depthwise,
    /// Transposed layers: stride-phase (sub-pixel) decomposition into direct convolutions
    /// that never multiply an inserted zero ([`crate::kernels::subpixel`]).
    Subpixel,
    /// Transposed layers: one GEMM `Wᵀ · X` per image and group, then a col2im scatter-add of
    /// the columns into the output; no inserted zero is multiplied
    /// ([`crate::kernels::col2im`]).
    Col2im,
}

impl Algo {
    /// Every algorithm, in `--algo` order.
    pub const ALL: [Algo; 10] = [
        Algo::Auto,
        Algo::Reference,
        Algo::ImplicitGemm,
        Algo::Indirect,
        Algo::Gemm1x1,
        Algo::Direct,
        Algo::Winograd,
        Algo::Depthwise,
        Algo::Subpixel,
        Algo::Col2im,
    ];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Auto => "auto",
            Algo::Reference => "reference",
            Algo::ImplicitGemm => "implicit-gemm",
            Algo::Indirect => "indirect",
            Algo::Gemm1x1 => "gemm1x1",
            Algo::Direct => "direct",
            Algo::Winograd => "winograd",
            Algo::Depthwise => "depthwise",
            Algo::Subpixel => "subpixel",
            Algo::Col2im => "col2im",
        }
    }
}

impl fmt::Display for Algo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Algo {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Algo::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Algo::ALL.iter().map(|a| a.name()).collect();
                format!(
                    "unknown algorithm '{s}' (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// A plan's weights: the layer's own, or those of the layer whose grad input it computes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Weights<'a> {
    /// PyTorch layout `(K, C/groups, kh, kw)` of the planned layer.
    Plain(ArrayView4<'a, f32>),
    /// The weights `w` (`(K, Cg, kh, kw)`) of a layer whose grad input (at stride 1, zero
    /// padding) the plan computes: the plan's own weights are `w` flipped in space with the
    /// channel axes swapped per group, `w'[g·Cg + c, k, i, j] = w[g·Kg + k, c, kh−1−i, kw−1−j]`.
    Adjoint(ArrayView4<'a, f32>),
}

impl<'a> Weights<'a> {
    /// The shape of the plan's weights.
    fn shape(&self, groups: usize) -> [usize; 4] {
        match self {
            Weights::Plain(w) => {
                let (k, c, kh, kw) = w.dim();
                [k, c, kh, kw]
            }
            Weights::Adjoint(w) => {
                let (k, cg, kh, kw) = w.dim();
                [cg * groups, k / groups.max(1), kh, kw]
            }
        }
    }

    /// The plan's weights packed for an `mr`-row microkernel (one pass either way).
    fn packed(&self, groups: usize, mr: usize) -> Vec<f32> {
        match self {
            Weights::Plain(w) => pack_weights(*w, groups, mr),
            Weights::Adjoint(w) => pack_weights_adjoint(*w, groups, mr),
        }
    }

    /// The plan's weights packed for the indirect kernels of `nr` output channels.
    fn packed_indirect(&self, groups: usize, nr: usize) -> PackedWeights {
        match self {
            Weights::Plain(w) => PackedWeights::new(*w, groups, nr),
            Weights::Adjoint(w) => PackedWeights::adjoint(*w, groups, nr),
        }
    }

    /// The plan's weights in PyTorch's layout (an adjoint's materialised).
    fn plain(&self, groups: usize) -> CowArray<'a, f32, Ix4> {
        match *self {
            Weights::Plain(w) => w.into(),
            Weights::Adjoint(w) => {
                let (k, cg, kh, kw) = w.dim();
                let kg = k / groups;
                let taps = kh * kw;
                let ws = w.as_standard_layout();
                let ws = ws.as_slice().expect("standard layout is contiguous");
                let mut flipped = vec![0f32; k * cg * taps];
                for (ko, wk) in ws.chunks_exact(cg * taps).enumerate() {
                    let (gi, kk) = (ko / kg, ko % kg);
                    for (c, plane) in wk.chunks_exact(taps).enumerate() {
                        let dst = &mut flipped[((gi * cg + c) * kg + kk) * taps..][..taps];
                        // Flipping both spatial axes reverses the row-major tap order.
                        for (d, &v) in dst.iter_mut().zip(plane.iter().rev()) {
                            *d = v;
                        }
                    }
                }
                Array4::from_shape_vec((cg * groups, kg, kh, kw), flipped)
                    .expect("sized above")
                    .into()
            }
        }
    }
}

#[derive(Debug)]
enum Imp {
    Reference {
        w: Array4<f32>,
        bias: Option<Array1<f32>>,
    },
    Gemm(Box<ConvGemm>),
    Indirect(Box<Indirect>),
    Direct(Box<DirectConv>),
    Winograd(Box<Winograd>),
    Depthwise {
        dw: Box<Depthwise>,
        w: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    Subpixel(Box<Subpixel>),
    Col2im(Box<Col2im>),
}

/// A planned convolution: algorithm chosen, weights packed, workspace sized.
///
/// `Send + Sync`: one plan may run on several threads at once (each thread uses its own
/// reusable workspace). `run` allocates no buffer per call once a thread's workspace has grown,
/// unless the caller's arrays are not in standard (C-contiguous) layout. Called from outside
/// rayon's pool with several threads, it hands each other thread its share as one small
/// rayon job (40 bytes), the price of running a share on the calling thread instead of
/// sleeping while the pool works; called on a pool worker it allocates nothing at all.
#[derive(Debug)]
pub struct Plan {
    geom: Geometry,
    algo: Algo,
    imp: Imp,
}

fn unavailable(algo: Algo, why: impl Into<String>) -> ConvError {
    ConvError::AlgorithmUnavailable {
        algo: algo.name(),
        why: why.into(),
    }
}

/// Whether a layer is a plain GEMM on the NCHW input (1×1, stride 1, no padding).
fn is_pointwise(g: &Geometry) -> bool {
    let s = &g.spec;
    s.kernel() == [1, 1] && s.stride() == [1, 1] && g.pad == [0; 4]
}

/// Largest stride the direct kernel's phase-split band supports (wider strides read so few
/// input columns that the implicit GEMM is the right tool anyway).
const MAX_DIRECT_STRIDE: usize = 16;

/// Whether the direct kernel beats the implicit GEMM: no dilation (dilated layers gain more
/// from the implicit GEMM's skipping of padding-only taps), a stride its phase-split band
/// supports, and few wasted gap columns (`⌊(kw−1)/sw⌋` of every `ow + gap` flat positions,
/// ≤ 1/8). Measured on strided layers (1 thread): the 7×7/2 RGB stem 191 vs 239 ms per 60
/// runs, 3×3/2 on 56×56×128 97 vs 140 per 30, 1×1/2 on 28×28×512 113 vs 117 per 30.
fn prefers_direct(g: &Geometry) -> bool {
    let s = &g.spec;
    let sw = s.stride()[1];
    let gap = (s.kernel()[1] - 1) / sw;
    s.stride().iter().all(|&v| v <= MAX_DIRECT_STRIDE)
        && s.dilation() == [1, 1]
        && 8 * gap <= g.ow.min(384) + gap
}

/// Output channels per group from which the indirect kernels' `NR`-channel blocks are full
/// enough (a 16-channel layer runs the 8×16 kernel, whose broadcasts outnumber its FMAs).
const INDIRECT_MIN_KG: usize = 64;
/// Input channels per group from which a tap's depth run amortises a kernel call.
const INDIRECT_MIN_CG: usize = 16;
/// Output width from which a stride-1 undilated layer stays on the direct kernel.
const DIRECT_MIN_OW: usize = 1024;

/// Whether the indirect kernel beats the implicit GEMM and the direct kernel (AVX-512 only:
/// on AVX2 its 12 accumulators lose to the implicit GEMM, ASPP 3×3 d6 12.1 vs 9.4 ms).
/// Measured at one thread, ms (`convkit bench --algo`, indirect vs the previous choice):
/// ASPP 3×3 256 → 256 on 32×32, d6 4.25–4.34 vs 4.80–4.86 (implicit GEMM), d12 3.15–3.20 vs
/// 3.38–3.39, d3 5.14 vs 5.46; 3×3 stride 2 128 → 128 on 56×56 1.07 vs 1.41 (direct),
/// 256 → 512 on 28×28 2.16 vs 2.63, 3×3/4 64 → 64 on 56×56 0.073 vs 0.21; 7×7 64 → 64 on
/// 28×28 1.45 vs 2.29 (implicit GEMM); stride-1 undilated layers the direct kernel took:
/// 3×3 128 → 128 in 2 groups on 28×28 0.53 vs 0.58–0.65, on 112×112 9.2–10.8 vs 10.0–10.4;
/// 5×5 64 → 64 on 112×112 11.8–13.2 vs 12.9–13.3; 2×2 128 → 64 on 64×64 (a DCGAN sub-pixel
/// phase's shape) 1.31–1.46 vs 1.42–1.61; 1×3 256 → 256 on a 500 row 0.87–0.91 vs 0.95–1.12.
/// The direct kernel keeps long rows, where its flat runs stored straight into the output win
/// (conv1d k3 512 → 512 on 3000: 21.4–22.5 vs indirect 22.7–23.9), and 1×1 strided layers
/// (1×1/2 512 → 1024 on 28×28: 0.95–1.00 vs 0.93–1.04 alone, but 1.15–1.28 in
/// `scripts/compare.py` runs); few channels (16 → 16, 24 → 16) lose here.
fn prefers_indirect(g: &Geometry, isa: Isa) -> bool {
    let s = &g.spec;
    let groups = s.groups();
    // The direct kernel keeps 1×1 strided layers (whose flat tiles it stores straight into
    // the output) and stride-1 undilated layers with long rows (conv1d).
    let plain = s.dilation() == [1, 1] && s.stride() == [1, 1];
    let direct = (plain && g.ow >= DIRECT_MIN_OW) || s.kernel() == [1, 1];
    isa == Isa::Avx512
        && g.k / groups >= INDIRECT_MIN_KG
        && g.c / groups >= INDIRECT_MIN_CG
        && Indirect::applies(g)
        && !(direct && prefers_direct(g))
}

/// The microkernel for the direct kernel: the plan's, unless a narrower one of the same
/// level (AVX-512 8×32) or AVX2's 6×16 wastes clearly less on padding the flat pixel runs to
/// whole tiles (a 14×14 map: 196 positions fill 82 % of five 48-wide tiles, 88 % of seven
/// 32-wide ones, 94 % of thirteen 16-wide ones).
fn direct_kernel(g: &Geometry, ukr: Microkernel) -> Microkernel {
    least_padded(ukr, |u| DirectConv::padded_macs(g, u))
}

/// The microkernel for Winograd's GEMMs, chosen like [`direct_kernel`]'s: small maps such as
/// 14×14 have 49 tiles, which fill 51 % of two 48-wide panels but 77 % of two 32-wide or
/// four 16-wide ones.
fn winograd_kernel(g: &Geometry, ukr: Microkernel) -> Microkernel {
    least_padded(ukr, |u| Winograd::padded_macs(u, g))
}

/// `ukr` (an AVX-512 8×48), or the available kernel of AVX2 level or above whose padded
/// work `macs(kernel)` is least, if that is clearly (5 %) less. AVX2 is charged 15 % for its
/// fewer accumulators per loaded operand. Other levels keep `ukr`.
fn least_padded(ukr: Microkernel, macs: impl Fn(Microkernel) -> f64) -> Microkernel {
    if ukr.isa != Isa::Avx512 {
        return ukr;
    }
    let cost = |u: Microkernel| {
        let slow = if u.isa == Isa::Avx2 { 1.15 } else { 1.0 };
        slow * macs(u)
    };
    let wide = cost(ukr);
    Microkernel::available()
        .into_iter()
        .filter(|u| u.isa >= Isa::Avx2)
        .map(|u| (cost(u), u))
        .filter(|(c, _)| *c < 0.95 * wide)
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(ukr, |(_, u)| u)
}

/// Input channels per group from which GEMM + col2im beats the sub-pixel phases on layers
/// whose taps overlap (kernel > stride): the GEMM's depth is only `Cg`, and the scatter adds
/// `1/Cg` of the multiply-accumulates again as loads and stores.
const COL2IM_MIN_CG: usize = 64;
/// Input pixels from which sub-pixel phases on the indirect kernel beat col2im.
const SUBPIXEL_MIN_PIXELS: usize = 256;

/// The algorithm `Auto` runs a transposed layer with, by a cost rule fitted to measured
/// layers (`convkit bench --algo col2im` / `--algo subpixel`, AVX-512, medians of three
/// alternating runs on a 2-core VM shared with other work; ms at 1 thread, then 2 where
/// measured):
///
/// * **stride 1** → sub-pixel: a single phase, one direct convolution of depth `Cg·kh·kw`
///   writing `y` in place, against a GEMM of depth `Cg` and `kh·kw` scatter passes (3×3
///   64 → 64 on 56×56: col2im 2.7 vs sub-pixel 2.3);
/// * **dilated kernel ≤ stride** on both axes (the taps of different pixels never overlap,
///   every phase a single-tap convolution) → col2im, whose scatter is then a plain
///   interleave (U-Net suite row 2×2/2 128 → 64 on 64×64: 3.15 vs 3.22, 1.65 vs 1.80;
///   2×2/2 256 → 128 on 28×28: 2.32 vs 2.60; 1×1/2: 0.21 vs 0.29; 3×3/3 32 → 32: 0.60 vs
///   0.69);
/// * **overlapping taps** (dilated kernel > stride) → col2im from `COL2IM_MIN_CG` = 64 input
///   channels per group (DCGAN suite row 4×4/2 128 → 64 on 32×32: 3.02 vs 3.42, 1.57 vs
///   1.77; suite row 3×3/2 op 1 64 → 32 on 56×56: 1.25 vs 1.53, 0.78 vs 0.79; 5×5/2 64 → 32
///   on 28×28: 1.09 vs 1.45; 4×4/2 512 → 256 on 8×8: 4.6 vs 6.0), sub-pixel below, where
///   col2im's GEMM is too shallow (3×3/2 8 → 8 on 64×64: 0.21 vs 0.16; 8×8/4 32 → 16 on
///   16×16: 0.52 vs 0.41; even at 4×4/2 16 → 8 on 64×64, 0.33 vs 0.35, and with 4 groups of
///   32 on the DCGAN row, 1.08 vs 1.10).
///
/// With AVX-512, a kernel that is a multiple of the stride on both axes (every phase the same
/// taps, DCGAN's 4×4/2) on ≥ 256 input pixels, with phases of ≥ 64 output and ≥ 16 input
/// channels per group, which run on the indirect kernel (`prefers_indirect`) → sub-pixel
/// (4×4/2, ms at 1 / 2 threads, sub-pixel vs col2im: 128 → 64 on 32×32 1.38–1.43 / 0.69–0.75
/// vs 1.50–1.56 / 0.85–0.91; 256 → 128 on 16×16 1.29–1.52 / 0.75–0.82 vs 1.47–1.77 /
/// 0.89–0.94; 64 → 64 on 64×64 3.2–3.9 / 1.83–1.92 vs 4.1–4.5 / 2.16–2.21; but 512 → 256 on
/// 8×8 1.63–1.93 vs 1.46–1.71, and 3×3/2, whose phases differ, 128 → 64 on 28×28 0.66–0.76 vs
/// 0.65–0.69).
fn transposed_algo(g: &Geometry, isa: Isa) -> Algo {
    let s = &g.spec;
    let (ext, st) = (s.dilated_kernel(), s.stride());
    let within_stride = ext[0] <= st[0] && ext[1] <= st[1];
    let k = s.kernel();
    let groups = s.groups();
    let even_phases =
        s.dilation() == [1, 1] && k[0].is_multiple_of(st[0]) && k[1].is_multiple_of(st[1]);
    let indirect_phases = isa == Isa::Avx512
        && even_phases
        && g.h * g.w >= SUBPIXEL_MIN_PIXELS
        && g.k / groups >= INDIRECT_MIN_KG
        && g.c / groups >= INDIRECT_MIN_CG;
    if st == [1, 1] {
        Algo::Subpixel
    } else if within_stride {
        Algo::Col2im
    } else if indirect_phases {
        Algo::Subpixel
    } else if g.c / groups >= COL2IM_MIN_CG {
        Algo::Col2im
    } else {
        Algo::Subpixel
    }
}

/// Tiles per stride-phase row from which Auto runs a dilated layer on Winograd: its
/// transforms work a tile row at a time, costly on narrow phases. Measured at one thread (perf
/// CPU time, Winograd vs implicit GEMM): 128 → 128 on 64×64, dilation 2 (16 tiles a row):
/// 186–228 vs 300–305 ms per 20 runs; dilation 4 (8 tiles): 264–303 vs 286–289; 256 → 256
/// on 32×32, dilation 3 (6 tiles): 253–265 vs 247–258; ASPP dilation 6 (3 tiles): 481–510
/// vs 326–360 per 30.
const WINOGRAD_MIN_PHASE_TILES: usize = 12;

/// Whether Winograd pays: enough channels for its transforms to amortise, wide enough stride
/// phases if dilated, and its padded GEMM work well under the direct convolution's.
fn prefers_winograd(g: &Geometry, ukr: Microkernel) -> bool {
    if !winograd::applies(g) || g.c < 16 || g.k < 16 {
        return false;
    }
    let dw = g.spec.dilation()[1];
    if g.spec.dilation() != [1, 1] && g.ow.div_ceil(dw).div_ceil(2) < WINOGRAD_MIN_PHASE_TILES {
        return false;
    }
    let direct = 9.0 * g.k as f64 * g.c as f64 * (g.oh * g.ow) as f64;
    Winograd::padded_macs(winograd_kernel(g, ukr), g) < 0.7 * direct
}

impl Plan {
    /// Plans `spec` on an input of shape `input = [n, c, h, w]` with the best ISA level.
    pub fn new(
        spec: &ValidSpec,
        input: [usize; 4],
        weight: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
        algo: Algo,
    ) -> Result<Plan> {
        Self::with_isa(spec, input, weight, bias, algo, Isa::best())
    }

    /// [`Plan::new`] with the microkernels of a given ISA level (for tests and benchmarks).
    pub fn with_isa(
        spec: &ValidSpec,
        input: [usize; 4],
        weight: ArrayView4<f32>,
        bias: Option<ArrayView1<f32>>,
        algo: Algo,
        isa: Isa,
    ) -> Result<Plan> {
        Self::with_weights(spec, input, Weights::Plain(weight), bias, algo, isa)
    }

    /// [`Plan::with_isa`] with the weights given either way [`Weights`] allows.
    pub(crate) fn with_weights(
        spec: &ValidSpec,
        input: [usize; 4],
        weights: Weights,
        bias: Option<ArrayView1<f32>>,
        algo: Algo,
        isa: Isa,
    ) -> Result<Plan> {
        let groups = spec.groups();
        let wshape = weights.shape(groups);
        let geom = reference::check_operands(spec, &input, &wshape, bias.map(|b| b.len()))?;
        let ukr = Microkernel::for_isa(isa)
            .ok_or_else(|| unavailable(algo, format!("this CPU has no {isa}")))?;
        let chosen = match algo {
            Algo::Auto if spec.is_transposed() => transposed_algo(&geom, isa),
            Algo::Auto if spec.is_depthwise() => Algo::Depthwise,
            Algo::Auto if is_pointwise(&geom) => Algo::Gemm1x1,
            Algo::Auto if prefers_winograd(&geom, ukr) => Algo::Winograd,
            Algo::Auto if prefers_indirect(&geom, isa) => Algo::Indirect,
            Algo::Auto if prefers_direct(&geom) => Algo::Direct,
            Algo::Auto => Algo::ImplicitGemm,
            a => a,
        };
        if spec.is_transposed()
            && !matches!(chosen, Algo::Reference | Algo::Subpixel | Algo::Col2im)
        {
            return Err(unavailable(
                chosen,
                "transposed convolutions run as sub-pixel phases, GEMM + col2im or the reference",
            ));
        }
        if matches!(chosen, Algo::Subpixel | Algo::Col2im) && !spec.is_transposed() {
            return Err(unavailable(chosen, "it runs transposed convolutions only"));
        }
        // The GEMM engines pack the weights either way in one pass; the others take them in
        // PyTorch's layout (an adjoint's flipped copy made here).
        let plain = || weights.plain(groups);
        let imp = match chosen {
            Algo::Reference => Imp::Reference {
                w: plain().into_owned(),
                bias: bias.map(|b| b.to_owned()),
            },
            Algo::ImplicitGemm => Imp::Gemm(Box::new(ConvGemm::with_packed(
                &geom,
                weights.packed(groups, ukr.mr),
                bias,
                ukr,
                false,
            ))),
            Algo::Indirect => {
                if !Indirect::applies(&geom) {
                    return Err(unavailable(
                        chosen,
                        "it needs input planes of fewer than 2^32 pixels",
                    ));
                }
                let kernel = Indirect::kernel_for(&geom, isa);
                Imp::Indirect(Box::new(Indirect::with_packed(
                    &geom,
                    weights.packed_indirect(groups, kernel.nr),
                    bias,
                    kernel,
                )))
            }
            Algo::Gemm1x1 => {
                if !is_pointwise(&geom) {
                    return Err(unavailable(
                        chosen,
                        "it needs a 1x1 kernel, stride 1 and no padding",
                    ));
                }
                Imp::Gemm(Box::new(ConvGemm::with_packed(
                    &geom,
                    weights.packed(groups, ukr.mr),
                    bias,
                    ukr,
                    true,
                )))
            }
            Algo::Direct => {
                if spec.stride().iter().any(|&s| s > MAX_DIRECT_STRIDE) {
                    return Err(unavailable(
                        chosen,
                        format!("it needs strides of at most {MAX_DIRECT_STRIDE}"),
                    ));
                }
                let ukr = direct_kernel(&geom, ukr);
                Imp::Direct(Box::new(DirectConv::with_packed(
                    &geom,
                    weights.packed(groups, ukr.mr),
                    bias,
                    ukr,
                )))
            }
            Algo::Winograd => {
                if !winograd::applies(&geom) {
                    return Err(unavailable(
                        chosen,
                        "it needs a 3x3 kernel, stride 1 and groups 1 (dilated: zero padding, \
                         top and left padding multiples of the dilation)",
                    ));
                }
                let ukr = winograd_kernel(&geom, ukr);
                Imp::Winograd(Box::new(match weights {
                    Weights::Plain(w) => Winograd::new(&geom, w, bias, ukr),
                    Weights::Adjoint(w) => Winograd::adjoint(&geom, w, bias, ukr),
                }))
            }
            Algo::Depthwise => Imp::Depthwise {
                dw: Box::new(Depthwise::new(&geom, isa)?),
                w: plain().iter().copied().collect(),
                bias: bias.map(|b| b.to_vec()),
            },
            Algo::Subpixel => {
                Imp::Subpixel(Box::new(Subpixel::new(&geom, plain().view(), bias, isa)?))
            }
            Algo::Col2im => Imp::Col2im(Box::new(Col2im::new(&geom, plain().view(), bias, ukr)?)),
            Algo::Auto => unreachable!("Auto is resolved above"),
        };
        Ok(Plan {
            geom,
            algo: chosen,
            imp,
        })
    }

    /// The algorithm actually chosen (never `Auto`).
    pub fn algo(&self) -> Algo {
        self.algo
    }

    /// The resolved shapes and padding.
    pub fn geometry(&self) -> &Geometry {
        &self.geom
    }

    /// The microkernel ISA level in use (`None` for the reference engine).
    pub fn isa(&self) -> Option<Isa> {
        match &self.imp {
            Imp::Gemm(g) => Some(g.microkernel().isa),
            Imp::Indirect(c) => Some(c.kernel().isa),
            Imp::Direct(d) => Some(d.microkernel().isa),
            Imp::Winograd(w) => Some(w.microkernel().isa),
            Imp::Depthwise { dw, .. } => Some(dw.isa()),
            Imp::Subpixel(sp) => Some(sp.isa()),
            Imp::Col2im(c) => Some(c.microkernel().isa),
            Imp::Reference { .. } => None,
        }
    }

    /// Bytes of workspace each worker thread uses (bounded by the tile sizes, not the layer).
    pub fn workspace_bytes(&self) -> usize {
        match &self.imp {
            Imp::Gemm(g) => g.workspace_bytes(),
            Imp::Indirect(c) => c.workspace_bytes(),
            Imp::Direct(d) => d.workspace_bytes(),
            Imp::Winograd(w) => w.workspace_bytes(),
            Imp::Subpixel(sp) => sp.workspace_bytes(),
            Imp::Col2im(c) => c.workspace_bytes(),
            Imp::Depthwise { .. } | Imp::Reference { .. } => 0,
        }
    }

    /// Bytes of scratch one `run` keeps besides the per-thread workspaces (the sub-pixel
    /// phase outputs before they are interleaved; the input band a single-band direct layer's
    /// threads share; 0 for the other algorithms, col2im included: its column buffer is part
    /// of the per-thread workspace).
    pub fn scratch_bytes(&self) -> usize {
        match &self.imp {
            Imp::Subpixel(sp) => sp.scratch_bytes(),
            Imp::Direct(d) => d.scratch_bytes(),
            _ => 0,
        }
    }

    /// Upper bound of the memory a run adds to its operands in a pool of `threads`: packed
    /// weights + per-thread workspaces ([`workspace_holders`] of them) + run scratch (issue
    /// 3's peak-memory budget).
    pub fn memory_bound_bytes(&self, threads: usize) -> usize {
        self.packed_weight_bytes()
            + workspace_holders(threads) * self.workspace_bytes()
            + self.scratch_bytes()
    }

    /// Bytes of packed weights held by the plan.
    pub fn packed_weight_bytes(&self) -> usize {
        match &self.imp {
            Imp::Gemm(g) => g.packed_weight_bytes(),
            Imp::Indirect(c) => c.packed_weight_bytes(),
            Imp::Direct(d) => d.packed_weight_bytes(),
            Imp::Winograd(w) => w.packed_weight_bytes(),
            Imp::Depthwise { w, .. } => 4 * w.len(),
            Imp::Reference { w, .. } => 4 * w.len(),
            Imp::Subpixel(sp) => sp.packed_weight_bytes(),
            Imp::Col2im(c) => c.packed_weight_bytes(),
        }
    }

    /// Runs the layer: `y = conv(x)`. `x` must have the planned input shape and `y` the
    /// output shape. Uses rayon's global pool (or the pool it is called in).
    pub fn run(&self, x: ArrayView4<f32>, y: ArrayViewMut4<f32>) -> Result<()> {
        match self.imp {
            // Many parallel regions (phases, their plans, the interleave): one hand-off.
            Imp::Subpixel(_) => on_pool(|| self.run_here(x, y)),
            _ => self.run_here(x, y),
        }
    }

    /// [`Self::run`] on the calling thread.
    fn run_here(&self, x: ArrayView4<f32>, mut y: ArrayViewMut4<f32>) -> Result<()> {
        let g = &self.geom;
        check_run_shapes(x.shape(), y.shape(), &g.input_shape(), &g.output_shape())?;
        match &self.imp {
            Imp::Subpixel(sp) => sp.run(x, y)?,
            Imp::Reference { w, bias } => {
                let out =
                    reference::forward(&g.spec, x, w.view(), bias.as_ref().map(|b| b.view()))?;
                y.assign(&out);
            }
            Imp::Gemm(_)
            | Imp::Indirect(_)
            | Imp::Direct(_)
            | Imp::Winograd(_)
            | Imp::Depthwise { .. }
            | Imp::Col2im(_) => {
                let xs = x.as_standard_layout();
                let xs = xs.as_slice().expect("standard layout is contiguous");
                match y.as_slice_mut() {
                    Some(ys) => self.run_slices(xs, ys)?,
                    None => {
                        let mut tmp = Array4::<f32>::zeros(g.output_shape());
                        self.run_slices(xs, tmp.as_slice_mut().expect("fresh array"))?;
                        y.assign(&tmp);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Plan {
    fn run_slices(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        match &self.imp {
            Imp::Gemm(conv) => {
                conv.run(x, y);
                Ok(())
            }
            Imp::Indirect(conv) => {
                conv.run(x, y);
                Ok(())
            }
            Imp::Direct(conv) => {
                conv.run(x, y);
                Ok(())
            }
            Imp::Winograd(conv) => {
                conv.run(x, y);
                Ok(())
            }
            Imp::Depthwise { dw, w, bias } => dw.run(x, w, bias.as_deref(), y),
            Imp::Col2im(conv) => {
                conv.run(x, y);
                Ok(())
            }
            Imp::Reference { .. } | Imp::Subpixel(_) => {
                unreachable!("the reference and sub-pixel plans run on arrays")
            }
        }
    }
}

/// Threads that may each hold a workspace during one run in a pool of `threads`: called from
/// outside a pool of several, the caller runs a share of the tasks too (see [`Plan`]), so one
/// more than the pool (`convkit bench` at two threads measured three workspaces' growth).
pub fn workspace_holders(threads: usize) -> usize {
    if threads > 1 {
        threads + 1
    } else {
        1
    }
}

/// The input and output arrays of a run have the planned shapes, else a
/// [`ConvError::ShapeMismatch`] naming the one that does not (every plan's `run` checks this).
pub(crate) fn check_run_shapes(
    x: &[usize],
    y: &[usize],
    input: &[usize],
    output: &[usize],
) -> Result<()> {
    for (what, got, want) in [("input", x, input), ("output", y, output)] {
        if got != want {
            return Err(ConvError::ShapeMismatch {
                what,
                got: got.to_vec(),
                expected: want.to_vec(),
            });
        }
    }
    Ok(())
}

/// Runs `f` on a worker of rayon's pool when called from outside it (else right here), so
/// that the parallel regions inside `f` start on a thread that is already awake: from
/// outside, every region is handed to the pool and waits for a worker to wake (~0.1 ms on
/// this VM), and a pass made of many short regions (a backward pass: transposes, packing,
/// GEMMs, sub-pixel phases) pays that for each. Measured on a 3×3 64-channel backward at 2
/// threads: 4.7–5.0 ms called from outside, 3.1–3.4 ms on a worker. Single-region plans do
/// not use it: at one thread their tasks then run inline on the caller, with no hand-off.
/// Nor does a pool of one thread: the caller runs `f` itself (the regions inside use the task
/// executor, which then runs inline), sparing the worker's and the caller's wake-ups.
pub(crate) fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_none() && rayon::current_num_threads() > 1 {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

/// One-shot forward pass through a [`Plan`]: plans, runs, returns the output.
pub fn forward(
    spec: &ValidSpec,
    x: ArrayView4<f32>,
    w: ArrayView4<f32>,
    bias: Option<ArrayView1<f32>>,
    algo: Algo,
) -> Result<Array4<f32>> {
    let sh = x.shape();
    if sh.len() != 4 {
        return Err(ConvError::RankMismatch {
            what: "input",
            got: sh.len(),
            expected: 4,
        });
    }
    let plan = Plan::new(spec, [sh[0], sh[1], sh[2], sh[3]], w, bias, algo)?;
    let mut y = Array4::<f32>::zeros(plan.geometry().output_shape());
    plan.run(x, y.view_mut())?;
    Ok(y)
}
