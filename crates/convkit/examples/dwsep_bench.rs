//! Fused vs unfused depthwise separable blocks on MobileNetV2's shapes.
//!
//! `RAYON_NUM_THREADS=1 cargo run --release -p convkit --example dwsep_bench [rounds]`
//!
//! Per block: median ms of one forward run of
//! * `two-plans`: a depthwise [`Plan`] then a pointwise [`Plan`], intermediate allocated per
//!   run (what a caller stitching the two layers does);
//! * `unfused`: [`SeparablePlan`] in `Unfused` mode (same, intermediate reused);
//! * `fused`: `Fused` mode at the default band height, at half and at twice that height
//!   (for the choice of `BAND_BYTES`).
//!
//! The variants run interleaved, one run each per round, so that a noisy neighbour hits all
//! of them alike; the process CPU time per run (all threads, the cost of reading it
//! subtracted) is printed next to the wall-clock median.

use convkit::dwsep::DepthwiseSeparable;
use convkit::dwsep_plan::{FuseMode, SeparablePlan, BAND_BYTES};
use convkit::plan::{Algo, Plan};
use ndarray::Array4;
use std::time::Instant;

fn rand4(shape: [usize; 4], seed: u64) -> Array4<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    Array4::from_shape_fn(shape, |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

/// CPU seconds of this process so far: the sum over its threads of the nanosecond
/// on-CPU time in `/proc/self/task/*/schedstat` (Linux; 0 elsewhere). Finer than the 10 ms
/// ticks of `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        * 1e-9
}

type Runner<'a> = Box<dyn FnMut() + 'a>;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let threads = rayon::current_num_threads();
    println!("threads {threads}, {rounds} rounds; median ms (CPU ms per run)");
    let blocks = [
        ("144x56x56 dw3 p1 -> 24", [1, 144, 56, 56], 144, 24, 1),
        ("96x112x112 dw3 s2 p1 -> 24", [1, 96, 112, 112], 96, 24, 2),
        ("576x14x14 dw3 p1 -> 96", [1, 576, 14, 14], 576, 96, 1),
        ("32x112x112 dw3 p1 -> 64", [1, 32, 112, 112], 32, 64, 1),
    ];
    for (name, input, c, k, stride) in blocks {
        let block = DepthwiseSeparable::builder(c, k, 3)
            .stride(stride)
            .padding(1)
            .build()
            .unwrap();
        let x = rand4(input, 1);
        let wd = rand4(block.depthwise().weight_shape(), 2);
        let wp = rand4(block.pointwise().weight_shape(), 3);
        let dw = Plan::new(block.depthwise(), input, wd.view(), None, Algo::Auto).unwrap();
        let mid = dw.geometry().output_shape();
        let pw = Plan::new(block.pointwise(), mid, wp.view(), None, Algo::Auto).unwrap();
        let sep = |mode| {
            SeparablePlan::new(&block, input, wd.view(), None, wp.view(), None, mode).unwrap()
        };
        let banded = |rows| {
            SeparablePlan::with_band_rows(&block, input, wd.view(), None, wp.view(), None, rows)
                .unwrap()
        };
        let unfused = sep(FuseMode::Unfused);
        let fused = sep(FuseMode::Fused);
        let auto = sep(FuseMode::Auto);
        let rows = fused.band_rows().unwrap();
        let (r_half, r_double) = ((rows / 2).max(1), 2 * rows);
        let f_half = banded(r_half);
        let f_double = banded(r_double);
        let mut y = Array4::<f32>::zeros(unfused.output_shape());
        let yp = std::cell::RefCell::new(&mut y);
        let labels = [
            "(empty)".to_string(),
            "two-plans".to_string(),
            "unfused".to_string(),
            format!("fused {rows}r"),
            format!("fused {r_half}r"),
            format!("fused {r_double}r"),
        ];
        let run_sep = |p: &SeparablePlan| {
            p.run(x.view(), yp.borrow_mut().view_mut()).unwrap();
        };
        let mut runners: Vec<Runner> = vec![
            Box::new(|| {}),
            Box::new(|| {
                let mut m = Array4::<f32>::zeros(mid);
                dw.run(x.view(), m.view_mut()).unwrap();
                pw.run(m.view(), yp.borrow_mut().view_mut()).unwrap();
            }),
            Box::new(|| run_sep(&unfused)),
            Box::new(|| run_sep(&fused)),
            Box::new(|| run_sep(&f_half)),
            Box::new(|| run_sep(&f_double)),
        ];
        for r in runners.iter_mut() {
            for _ in 0..5 {
                r();
            }
        }
        let mut times = vec![Vec::with_capacity(rounds); runners.len()];
        let mut cpu = vec![0.0f64; runners.len()];
        for _ in 0..rounds {
            for (i, r) in runners.iter_mut().enumerate() {
                let (c0, t0) = (cpu_seconds(), Instant::now());
                r();
                times[i].push(t0.elapsed().as_secs_f64() * 1e3);
                cpu[i] += cpu_seconds() - c0;
            }
        }
        print!(
            "{name:28} mid {:5} KiB, auto={:?}:",
            4 * mid.iter().product::<usize>() / 1024,
            auto.mode()
        );
        let base = cpu[0];
        for ((label, t), c) in labels.iter().zip(times.iter_mut()).zip(&cpu).skip(1) {
            let c = c - base;
            t.sort_by(f64::total_cmp);
            print!(
                "  {label} {:.3} ({:.2})",
                t[t.len() / 2],
                c * 1e3 / rounds as f64
            );
        }
        println!();
    }
    println!(
        "default band (intermediate + output): {} KiB",
        BAND_BYTES / 1024
    );
}
