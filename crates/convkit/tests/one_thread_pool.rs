//! With a global pool of one thread, `backward` and the sub-pixel plans run on the calling
//! thread instead of handing the work to the pool's worker: the two gradients one after the
//! other, the sub-pixel phases in turn, the weight gradient's and the interleave's loops
//! inline. That is a different route through the same tasks, so its results must be the
//! bits that a pool of two threads gives. (Its own test binary: the global pool is set once.)

use convkit::backward::backward;
use convkit::plan::{forward, Algo};
use convkit::{ConvSpec, GradRequest, ValidSpec};
use ndarray::Array4;
use std::sync::Once;

mod common;
mod pools;
use common::rand_vec;
use pools::{in_pool, same_bits};

/// Makes rayon's global pool one thread, before anything else uses it.
fn one_thread_global_pool() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build_global()
            .expect("the global pool is not built yet");
    });
    assert_eq!(rayon::current_num_threads(), 1);
    assert!(
        rayon::current_thread_index().is_none(),
        "a test thread is not a worker"
    );
}

/// A layer of each backward route: Winograd and implicit-GEMM grad inputs (the adjoint's
/// weights packed in one pass), the weight gradient's column classes (atrous), sub-pixel
/// grad input (strided), transposed layers (col2im and its exact cover), a 1×1.
fn layers() -> Vec<(ValidSpec, [usize; 4])> {
    let c = |s: ConvSpec| s.build().unwrap();
    vec![
        (c(ConvSpec::conv2d(16, 24, 3).padding(1)), [1, 16, 20, 18]),
        (
            c(ConvSpec::conv2d(24, 16, 3).padding(4).dilation(4)),
            [2, 24, 17, 19],
        ),
        (
            c(ConvSpec::conv2d(16, 32, 3).stride(2).padding(1)),
            [1, 16, 23, 21],
        ),
        (
            c(ConvSpec::conv_transpose2d(32, 16, 4).stride(2).padding(1)),
            [1, 32, 9, 11],
        ),
        (
            c(ConvSpec::conv_transpose2d(32, 16, 2).stride(2)),
            [2, 32, 10, 12],
        ),
        (c(ConvSpec::conv2d(40, 24, 1)), [1, 40, 13, 15]),
    ]
}

#[test]
fn the_calling_thread_gives_the_bits_of_a_pool() {
    one_thread_global_pool();
    let want = GradRequest {
        input: true,
        weight: true,
        bias: true,
    };
    for (i, (spec, input)) in layers().into_iter().enumerate() {
        let seed = 10 * i as u64;
        let x = Array4::from_shape_vec(input, rand_vec(input.iter().product(), seed)).unwrap();
        let ws = spec.weight_shape();
        let w = Array4::from_shape_vec(ws, rand_vec(ws.iter().product(), seed + 1)).unwrap();
        let out = spec.geometry(input).unwrap().output_shape();
        let dy = Array4::from_shape_vec(out, rand_vec(out.iter().product(), seed + 2)).unwrap();
        let grads = || backward(&spec, x.view(), w.view(), dy.view(), want, Algo::Auto).unwrap();
        let (here, pooled) = (grads(), in_pool(2, grads));
        for (what, a, b) in [
            ("grad input", &here.input, &pooled.input),
            ("grad weight", &here.weight, &pooled.weight),
        ] {
            assert!(
                same_bits(a.as_ref().unwrap(), b.as_ref().unwrap()),
                "{spec}: {what} on the calling thread and in a pool of two differ"
            );
        }
        let (b1, b2) = (here.bias.unwrap(), pooled.bias.unwrap());
        assert!(b1
            .iter()
            .zip(b2.iter())
            .all(|(p, q)| p.to_bits() == q.to_bits()));
        if spec.is_transposed() {
            // The sub-pixel plan's phases, one after the other here.
            let y = || forward(&spec, x.view(), w.view(), None, Algo::Subpixel).unwrap();
            assert!(same_bits(&y(), &in_pool(2, y)), "{spec}: sub-pixel forward");
        }
    }
}
