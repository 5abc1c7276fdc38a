//! Regression benchmarks for the fast engine (criterion): a few layers of the dense suite,
//! each planned once and timed per `Plan::run`. `cargo bench -p convkit`.

use convkit::plan::{Algo, Plan};
use convkit::ConvSpec;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ndarray::{Array1, Array4};

fn layer(c: &mut Criterion, name: &str, spec: ConvSpec, input: [usize; 4]) {
    let spec = spec.build().expect("valid layer");
    let x = Array4::<f32>::from_elem(input, 0.5);
    let w = Array4::<f32>::from_elem(spec.weight_shape(), 0.01);
    let b = Array1::<f32>::zeros(spec.out_channels());
    let plan = Plan::new(&spec, input, w.view(), Some(b.view()), Algo::Auto).expect("plan");
    let mut y = Array4::<f32>::zeros(plan.geometry().output_shape());
    let mut g = c.benchmark_group("conv");
    g.throughput(Throughput::Elements(plan.geometry().flops()));
    g.bench_function(format!("{name}/{}", plan.algo()), |bch| {
        bch.iter(|| plan.run(x.view(), y.view_mut()).expect("run"))
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    layer(
        c,
        "resnet_3x3_c64_56",
        ConvSpec::conv2d(64, 64, 3).padding(1),
        [1, 64, 56, 56],
    );
    layer(
        c,
        "resnet_1x1_c256_56",
        ConvSpec::conv2d(256, 64, 1),
        [1, 256, 56, 56],
    );
    layer(
        c,
        "resnet_stem_7x7_s2",
        ConvSpec::conv2d(3, 64, 7).stride(2).padding(3),
        [1, 3, 224, 224],
    );
    layer(
        c,
        "aspp_dil6_c256_32",
        ConvSpec::conv2d(256, 256, 3).padding(6).dilation(6),
        [1, 256, 32, 32],
    );
    layer(
        c,
        "3x3_s2_c128_56",
        ConvSpec::conv2d(128, 128, 3).stride(2).padding(1),
        [1, 128, 56, 56],
    );
}

criterion_group! {
    name = conv;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(conv);
