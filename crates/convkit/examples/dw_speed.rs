//! Depthwise kernel speed, on one thread, in cache and out: `dw_speed C H W k s [m] [calls]`.
//!
//! Times `Depthwise::run` on C channels (best of 300 short batches, robust to a loaded machine)
//! and prints ns per call, ns per plane and the FMA lanes it keeps busy per ns. Compare C = 16
//! (the planes stay in L1/L2) with the layer's own C to split compute from memory.
use convkit::kernels::depthwise::Depthwise;
use convkit::kernels::Isa;
use convkit::ConvSpec;
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("a number"))
        .collect();
    if a.len() < 5 {
        eprintln!("usage: dw_speed C H W k s [m] [calls]");
        std::process::exit(2);
    }
    // One thread whatever RAYON_NUM_THREADS says: the kernel alone, no hand-offs.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    pool.install(|| time(&a));
}

fn time(a: &[usize]) {
    let (c, h, w, k, s) = (a[0], a[1], a[2], a[3], a[4]);
    let m = a.get(5).copied().unwrap_or(1);
    let calls = a.get(6).copied().unwrap_or(20);
    let spec = ConvSpec::conv2d(c, c * m, [k, k])
        .stride(s)
        .padding(k / 2)
        .groups(c)
        .build()
        .expect("a valid depthwise spec");
    let geom = spec.geometry([1, c, h, w]).expect("a valid input");
    let dw = Depthwise::new(&geom, Isa::best()).expect("depthwise applies");
    let x: Vec<f32> = (0..c * h * w).map(|i| (i % 7) as f32 * 0.25).collect();
    let wt: Vec<f32> = (0..c * m * k * k).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut y = vec![0f32; c * m * geom.oh * geom.ow];
    let mut best = f64::INFINITY;
    for _ in 0..300 {
        let t = Instant::now();
        for _ in 0..calls {
            dw.run(&x, &wt, None, &mut y).expect("sized");
        }
        best = best.min(t.elapsed().as_secs_f64() / calls as f64);
    }
    let ns = best * 1e9;
    let planes = (c * m) as f64;
    let fmas = planes * (geom.oh * geom.ow * k * k) as f64;
    println!(
        "{c}x{h}x{w} k{k} s{s} m{m}: {ns:.0} ns/call, {:.1} ns/plane, {:.1} FMA lanes/ns",
        ns / planes,
        fmas / ns
    );
}
