//! The machine's FMA peak, measured like a BLAS-based peakflops tool: the register-blocked
//! microkernel of an ISA level (24 independent FMA chains with broadcast operands on AVX-512,
//! 12 on AVX2) on L1-resident operands, so nothing but FMA throughput limits it.
//!
//! On Zen 4 this reaches 32 FLOP/cycle (one 512-bit or two 256-bit FMAs per cycle) at the
//! running clock, ≈ 116–118 GFLOP/s per core; on Zen 5 (two full-width 512-bit FMA pipes)
//! 64 FLOP/cycle with AVX-512, ≈ 246–252 GFLOP/s per core, and still ≈ 126 with AVX2. That is
//! the bound every layer's % of peak is quoted against.

use super::gemm::{Microkernel, RowOffsets};
use super::Isa;
use std::time::Instant;

/// FMA throughput measured for one ISA level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    /// The level measured.
    pub isa: Isa,
    /// GFLOP/s of one core (one thread alone).
    pub per_core_gflops: f64,
    /// GFLOP/s of `threads` threads running at once (sum of their rates).
    pub total_gflops: f64,
    /// Threads of the total.
    pub threads: usize,
}

/// Best of many short (≈ 0.5 ms) trials: on a shared machine some trials run undisturbed
/// inside one scheduler time slice, so the maximum is the core's own throughput.
fn best_of_trials(u: Microkernel) -> f64 {
    let kc = 128;
    let a = vec![1e-3f32; kc * u.mr];
    let b = vec![1e-3f32; kc * u.nr];
    let mut c = vec![0f32; u.mr * u.nr];
    let offs = RowOffsets::new((0..kc).map(|k| k * u.nr).collect());
    let reps = (200_000 / (u.mr * u.nr)).max(1);
    let flops = (2 * kc * u.mr * u.nr * reps) as f64;
    let mut best = 0f64;
    for _ in 0..200 {
        let t = Instant::now();
        for _ in 0..reps {
            u.run(kc, &a, &b, &offs, 0, &mut c, u.nr, true);
        }
        std::hint::black_box(&mut c);
        best = best.max(flops / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// Measures the FMA peak of `isa` on one thread and on `threads` concurrent threads (each the
/// best of 200 short trials). `None` if this CPU lacks `isa`.
pub fn measure(isa: Isa, threads: usize) -> Option<Peak> {
    let u = Microkernel::for_isa(isa)?;
    let threads = threads.max(1);
    let per_core = best_of_trials(u);
    let total = if threads == 1 {
        per_core
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| s.spawn(|| best_of_trials(u)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
        })
    };
    Some(Peak {
        isa,
        per_core_gflops: per_core,
        total_gflops: total,
        threads,
    })
}
