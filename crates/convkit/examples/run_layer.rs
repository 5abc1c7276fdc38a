//! Runs one layer a given number of times, for `perf stat` cycle counts that a loaded machine
//! does not distort: `run_layer N C H W K kh kw stride pad dil groups runs [algo] [isa]`.
use convkit::kernels::Isa;
use convkit::plan::{Algo, Plan};
use convkit::ConvSpec;
use ndarray::{Array1, Array4};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let v: Vec<usize> = a[..12].iter().map(|s| s.parse().unwrap()).collect();
    let (n, c, h, w, k, kh, kw, s, p, d, g, runs) = (
        v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11],
    );
    let algo: Algo = a.get(12).map_or(Algo::Auto, |s| s.parse().unwrap());
    let isa: Isa = a.get(13).map_or(Isa::best(), |s| s.parse().unwrap());
    let spec = ConvSpec::conv2d(c, k, [kh, kw])
        .stride(s)
        .padding(if h == 1 { [0, p] } else { [p, p] })
        .dilation(if h == 1 { [1, d] } else { [d, d] })
        .groups(g)
        .build()
        .unwrap();
    let x = Array4::<f32>::from_elem((n, c, h, w), 0.5);
    let wt = Array4::<f32>::from_elem(spec.weight_shape(), 0.01);
    let b = Array1::<f32>::zeros(k);
    let plan = Plan::with_isa(&spec, [n, c, h, w], wt.view(), Some(b.view()), algo, isa).unwrap();
    let mut y = Array4::<f32>::zeros(plan.geometry().output_shape());
    for _ in 0..runs {
        plan.run(x.view(), y.view_mut()).unwrap();
    }
    eprintln!("{} flops/run {}", plan.algo(), plan.geometry().flops());
}
