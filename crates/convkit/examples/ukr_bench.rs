//! Throughput of every sgemm microkernel (every width of each ISA's family) on L1-resident panels, in GFLOP/s (best of several
//! trials): `cargo run --release -p convkit --example ukr_bench [kc]`.
use convkit::kernels::gemm::{Microkernel, RowOffsets};
use convkit::kernels::Isa;
use std::time::Instant;

fn main() {
    let kc: usize = std::env::args()
        .nth(1)
        .map_or(128, |s| s.parse().expect("kc is a number"));
    let all = Isa::available_levels()
        .into_iter()
        .flat_map(Microkernel::family);
    for u in all {
        let a = vec![0.5f32; kc * u.mr];
        let ldb = u.nr + 16;
        let b = vec![0.25f32; kc * ldb + u.nr];
        let offs = RowOffsets::new((0..kc).map(|k| k * ldb).collect());
        let mut c = vec![0f32; u.mr * u.nr];
        let calls = 200_000_000 / (kc * u.mr * u.nr).max(1);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..calls {
                u.run(kc, &a, &b, &offs, 0, &mut c, u.nr, true);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        let flops = 2.0 * (calls * kc * u.mr * u.nr) as f64;
        println!("{u:?}: {:.1} GFLOP/s at kc = {kc}", flops / best / 1e9);
    }
}
