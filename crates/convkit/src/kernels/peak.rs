//! The machine's FMA peak, measured like a peakflops tool: a loop of independent FMA chains
//! (more chains than latency × pipes, so throughput-bound), timed on one or more threads.

use super::Isa;
use std::time::Instant;

/// FMA throughput measured for one ISA level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    /// The level measured.
    pub isa: Isa,
    /// GFLOP/s of one core (one thread alone).
    pub per_core_gflops: f64,
    /// GFLOP/s of `threads` threads running at once (total).
    pub total_gflops: f64,
    /// Threads of the total.
    pub threads: usize,
}

/// FLOPs of one call of the timed loop for `iters` iterations.
fn flops(isa: Isa, iters: u64) -> f64 {
    // 12 chains of one vector FMA (2 FLOPs per lane) per iteration.
    let lanes = match isa {
        Isa::Avx512 => 16.0,
        Isa::Avx2 => 8.0,
        Isa::Scalar => 1.0,
    };
    iters as f64 * 12.0 * lanes * 2.0
}

/// Runs the loop; returns a value so the work cannot be optimised away.
fn spin(isa: Isa, iters: u64) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.available() => {
            // SAFETY: AVX-512F is available (checked just above).
            unsafe { x86::spin_avx512(iters) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.available() => {
            // SAFETY: AVX2 and FMA are available (checked just above).
            unsafe { x86::spin_avx2(iters) }
        }
        _ => {
            let mut acc = [1.0f32; 12];
            let m = std::hint::black_box(0.999_999f32);
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = a.mul_add(m, 1e-7);
                }
            }
            acc.iter().sum()
        }
    }
}

fn timed(isa: Isa, iters: u64) -> f64 {
    let t = Instant::now();
    std::hint::black_box(spin(isa, iters));
    flops(isa, iters) / t.elapsed().as_secs_f64() / 1e9
}

/// Measures the FMA peak of `isa` on one thread and on `threads` concurrent threads (best of
/// three ≈ 50 ms runs each, after a warm-up that lets the clock settle).
pub fn measure(isa: Isa, threads: usize) -> Peak {
    let threads = threads.max(1);
    let iters = 20_000_000u64;
    timed(isa, iters / 4);
    let best = |f: &dyn Fn() -> f64| (0..3).map(|_| f()).fold(0.0, f64::max);
    let per_core = best(&|| timed(isa, iters));
    let total = if threads == 1 {
        per_core
    } else {
        best(&|| {
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|_| s.spawn(|| timed(isa, iters)))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
            })
        })
    };
    Peak {
        isa,
        per_core_gflops: per_core,
        total_gflops: total,
        threads,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F must be available.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn spin_avx512(iters: u64) -> f32 {
        let m = _mm512_set1_ps(std::hint::black_box(0.999_999));
        let c = _mm512_set1_ps(1e-7);
        let mut acc = [_mm512_set1_ps(1.0); 12];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, m, c);
            }
        }
        let mut s = _mm512_setzero_ps();
        for a in acc {
            s = _mm512_add_ps(s, a);
        }
        _mm512_reduce_add_ps(s)
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn spin_avx2(iters: u64) -> f32 {
        let m = _mm256_set1_ps(std::hint::black_box(0.999_999));
        let c = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, m, c);
            }
        }
        let mut s = _mm256_setzero_ps();
        for a in acc {
            s = _mm256_add_ps(s, a);
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }
}
