//! Results are bit-identical for any thread count, also when the plan (or the one-shot call)
//! is made inside the pool that runs it: plans size their tasks for the pool they are made in
//! (as `forward` and `backward` do under `RAYON_NUM_THREADS`), so this checks that no
//! algorithm's arithmetic depends on that cut. Forward of every kind (dense, strided,
//! dilated, grouped, depthwise, transposed) and backward passes (grad input, weight, bias).

use convkit::backward::backward;
use convkit::plan::{forward, Algo};
use convkit::{ConvSpec, GradRequest, ValidSpec};
use ndarray::{Array1, Array4};

mod common;
mod pools;
use common::rand_vec;
use pools::{in_pool, same_bits};

fn operands(spec: &ValidSpec, input: [usize; 4]) -> (Array4<f32>, Array4<f32>, Array1<f32>) {
    let x = Array4::from_shape_vec(input, rand_vec(input.iter().product(), 21)).unwrap();
    let ws = spec.weight_shape();
    let w = Array4::from_shape_vec(ws, rand_vec(ws.iter().product(), 22)).unwrap();
    let b = Array1::from(rand_vec(spec.out_channels(), 23));
    (x, w, b)
}

/// Layers that exercise every engine's cut: bands, tails, tap classes, phases, groups.
fn layers() -> Vec<(ValidSpec, [usize; 4])> {
    let c = |s: ConvSpec| s.build().unwrap();
    vec![
        // Direct, flat tiles with a column tail whose position depends on the band height.
        // Regression: the tail kernel summed the whole depth in one pass, the panels per
        // depth chunk, so 1 and 2 threads (4- and 2-row bands) differed in the last bits.
        (
            c(ConvSpec::conv2d(32, 8, 3).stride(2).padding(1)),
            [1, 32, 120, 120],
        ),
        // Direct, tiles stored in place, several bands.
        (c(ConvSpec::conv2d(256, 64, 1).stride(2)), [1, 256, 58, 58]),
        // Winograd / implicit GEMM.
        (c(ConvSpec::conv2d(64, 48, 3).padding(1)), [2, 64, 30, 30]),
        // Atrous tap classes.
        (
            c(ConvSpec::conv2d(48, 32, 3).padding(4).dilation(4)),
            [1, 48, 33, 29],
        ),
        // Stem-like, row-wise.
        (
            c(ConvSpec::conv2d(3, 32, 7).stride(2).padding(3)),
            [1, 3, 90, 70],
        ),
        // 1×1 GEMM in place.
        (c(ConvSpec::conv2d(96, 32, 1)), [1, 96, 41, 23]),
        // Grouped.
        (
            c(ConvSpec::conv2d(64, 64, 3).padding(1).groups(8)),
            [1, 64, 29, 31],
        ),
        // Depthwise, stride 1 and 2, multiplier 2.
        (
            c(ConvSpec::conv2d(48, 48, 3).padding(1).groups(48)),
            [1, 48, 57, 45],
        ),
        (
            c(ConvSpec::conv2d(32, 64, 5).stride(2).padding(2).groups(32)),
            [1, 32, 61, 50],
        ),
        // Transposed: col2im and sub-pixel.
        (
            c(ConvSpec::conv_transpose2d(64, 32, 4).stride(2).padding(1)),
            [1, 64, 23, 19],
        ),
        (
            c(ConvSpec::conv_transpose2d(32, 24, 3)
                .stride(2)
                .padding(1)
                .output_padding(1)),
            [2, 32, 17, 13],
        ),
        (
            c(ConvSpec::conv_transpose2d(64, 32, 2).stride(2)),
            [1, 64, 40, 36],
        ),
    ]
}

#[test]
fn forward_planned_in_the_pool_is_the_same_for_any_thread_count() {
    let algos = [
        Algo::Auto,
        Algo::Direct,
        Algo::ImplicitGemm,
        Algo::Indirect,
        Algo::Winograd,
        Algo::Gemm1x1,
        Algo::Depthwise,
        Algo::Subpixel,
        Algo::Col2im,
    ];
    let mut ran = 0;
    for (spec, input) in layers() {
        let (x, w, b) = operands(&spec, input);
        for algo in algos {
            let run = |threads: usize| {
                in_pool(threads, || {
                    forward(&spec, x.view(), w.view(), Some(b.view()), algo).ok()
                })
            };
            let Some(one) = run(1) else {
                continue; // the algorithm does not apply to this layer
            };
            ran += 1;
            for t in [2, 3, 5] {
                let other = run(t).expect("it applied at one thread");
                assert!(
                    same_bits(&one, &other),
                    "{spec} {algo}: 1 and {t} threads differ"
                );
            }
        }
    }
    assert!(ran >= 20, "only {ran} (layer, algorithm) pairs ran");
}

#[test]
fn backward_in_the_pool_is_the_same_for_any_thread_count() {
    let want = GradRequest {
        input: true,
        weight: true,
        bias: true,
    };
    for (spec, input) in layers() {
        let (x, w, _) = operands(&spec, input);
        let out = spec.geometry(input).unwrap().output_shape();
        let dy = Array4::from_shape_vec(out, rand_vec(out.iter().product(), 24)).unwrap();
        let run = |threads: usize| {
            in_pool(threads, || {
                backward(&spec, x.view(), w.view(), dy.view(), want, Algo::Auto).unwrap()
            })
        };
        let one = run(1);
        for t in [2, 3, 5] {
            let other = run(t);
            assert!(
                same_bits(one.input.as_ref().unwrap(), other.input.as_ref().unwrap()),
                "{spec}: grad input, 1 and {t} threads differ"
            );
            assert!(
                same_bits(one.weight.as_ref().unwrap(), other.weight.as_ref().unwrap()),
                "{spec}: grad weight, 1 and {t} threads differ"
            );
            let (b1, bt) = (one.bias.as_ref().unwrap(), other.bias.as_ref().unwrap());
            assert!(
                b1.iter()
                    .zip(bt.iter())
                    .all(|(p, q)| p.to_bits() == q.to_bits()),
                "{spec}: grad bias, 1 and {t} threads differ"
            );
        }
    }
}
