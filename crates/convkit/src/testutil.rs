//! Helpers shared by the crate's unit tests.

/// `f` run inside a fresh pool of `threads` threads (plans made there size their tasks for
/// it).
pub(crate) fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
        .install(f)
}

/// `n` deterministic pseudo-random values in [-1, 1) (xorshift64), the same for every test.
pub(crate) fn pseudo(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Random transposed layers for the kernels' property tests: 1–3 channels per group each way,
/// 1–2 groups, kernels up to 4 × `max_kw`, strides and dilations up to 3, padding up to 3 per
/// side, a valid output padding, batch 1–2 on inputs up to 6 × `max_w`, with or without bias.
/// Yields the spec (unbuilt) and the input shape.
pub(crate) fn arb_transposed(
    max_kw: usize,
    max_w: usize,
) -> impl proptest::strategy::Strategy<Value = (crate::spec::ConvSpec, [usize; 4])> {
    use crate::spec::{ConvSpec, Padding};
    use proptest::prelude::*;
    (
        (1usize..4, 1usize..4, 1usize..3),
        (1usize..5, 1usize..max_kw + 1),
        (1usize..4, 1usize..4),
        (1usize..4, 1usize..4),
        (0usize..4, 0usize..4, 0usize..4, 0usize..4),
        (0usize..3, 0usize..3),
        (1usize..3, 1usize..7, 1usize..max_w + 1),
        any::<bool>(),
    )
        .prop_map(
            |(
                (cg, kg, groups),
                (kh, kw),
                (sh, sw),
                (dh, dw),
                pads,
                (oph, opw),
                (n, h, w),
                bias,
            )| {
                let spec = ConvSpec::conv_transpose2d(cg * groups, kg * groups, [kh, kw])
                    .stride([sh, sw])
                    .dilation([dh, dw])
                    .padding_rule(Padding::Explicit([pads.0, pads.1, pads.2, pads.3]))
                    // Always a valid output padding: below max(stride, dilation).
                    .output_padding([oph % sh.max(dh), opw % sw.max(dw)])
                    .groups(groups)
                    .bias(bias);
                (spec, [n, cg * groups, h, w])
            },
        )
}
