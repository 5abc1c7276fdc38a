//! The one inner loop of every filter path: `out[x] = Σ_t taps[t] · buf[offsets[t] + x]`.
//!
//! The horizontal pass (srcs = one padded row shifted by `j·d·C`), the vertical pass (srcs = the
//! kernel's rows in a ring buffer), rank-r sums (srcs of all terms, taps concatenated) and the
//! direct 2D path (srcs = padded rows shifted) are all this dot product of shifted rows, so only
//! this function needs SIMD. Register blocking: 8 independent vector accumulators along `x`
//! (FMA latency 4 × up to 2 pipes), the tap loop inside, so each output is stored once.
//!
//! Every level computes the same sequence of fused multiply-adds (tap order, starting from
//! 0), so AVX-512, AVX2 and the scalar fallback agree bit for bit (tested).

/// An instruction set level for the filter kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable code (`f32::mul_add`).
    Scalar,
    /// AVX2 + FMA, 8 lanes.
    Avx2,
    /// AVX-512F, 16 lanes.
    Avx512,
}

impl Isa {
    /// The best level this CPU supports (detected at run time).
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Every level this CPU supports, best first (for tests).
    pub fn available() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Isa::Avx2);
            }
        }
        v.push(Isa::Scalar);
        v
    }

    /// Short name for `--explain`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512 => "avx512f",
        }
    }
}

/// `out[x] = Σ_t taps[t] · buf[offsets[t] + x]` for `x < out.len()`: a weighted sum of
/// shifted rows of one buffer.
///
/// # Panics
/// If `offsets` and `taps` differ in length, a row runs past the end of `buf`, or `isa` is
/// not supported by this CPU (a programming error: use [`Isa::detect`]).
pub fn dot_rows(isa: Isa, buf: &[f32], offsets: &[usize], taps: &[f32], out: &mut [f32]) {
    assert_eq!(offsets.len(), taps.len(), "one tap per source row");
    let n = out.len();
    assert!(
        offsets
            .iter()
            .all(|&o| o.checked_add(n).is_some_and(|e| e <= buf.len())),
        "source rows run past the buffer"
    );
    match isa {
        Isa::Scalar => dot_scalar(buf, offsets, taps, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            assert!(
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            );
            // SAFETY: the CPU supports AVX2 and FMA (checked above); every row
            // buf[offset .. offset + out.len()] is in bounds (checked above), and the kernel
            // reads nothing else.
            unsafe { x86::dot_avx2(buf.as_ptr(), offsets, taps, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(std::arch::is_x86_feature_detected!("avx512f"));
            // SAFETY: the CPU supports AVX-512F (checked above); sources are long enough.
            unsafe { x86::dot_avx512(buf.as_ptr(), offsets, taps, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => dot_scalar(buf, offsets, taps, out),
    }
}

fn dot_scalar(buf: &[f32], offsets: &[usize], taps: &[f32], out: &mut [f32]) {
    for (x, o) in out.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        for (&s, &w) in offsets.iter().zip(taps) {
            acc = buf[s + x].mul_add(w, acc);
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// AVX-512 body; 8 accumulators of 16 lanes, then single vectors, then a masked tail.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and `buf + offsets[t] .. + out.len()` must be readable.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(buf: *const f32, offsets: &[usize], taps: &[f32], out: &mut [f32]) {
        let n = out.len();
        let o = out.as_mut_ptr();
        let mut x = 0;
        while x + 128 <= n {
            let mut a = [_mm512_setzero_ps(); 8];
            for (&s, &w) in offsets.iter().zip(taps) {
                let wv = _mm512_set1_ps(w);
                let p = buf.add(s + x);
                for (k, acc) in a.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(_mm512_loadu_ps(p.add(16 * k)), wv, *acc);
                }
            }
            for (k, acc) in a.iter().enumerate() {
                _mm512_storeu_ps(o.add(x + 16 * k), *acc);
            }
            x += 128;
        }
        while x + 16 <= n {
            let mut acc = _mm512_setzero_ps();
            for (&s, &w) in offsets.iter().zip(taps) {
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(buf.add(s + x)), _mm512_set1_ps(w), acc);
            }
            _mm512_storeu_ps(o.add(x), acc);
            x += 16;
        }
        if x < n {
            let m: __mmask16 = (1u32 << (n - x)).wrapping_sub(1) as __mmask16;
            let mut acc = _mm512_setzero_ps();
            for (&s, &w) in offsets.iter().zip(taps) {
                let v = _mm512_maskz_loadu_ps(m, buf.add(s + x));
                acc = _mm512_fmadd_ps(v, _mm512_set1_ps(w), acc);
            }
            _mm512_mask_storeu_ps(o.add(x), m, acc);
        }
    }

    /// AVX2 body; 8 accumulators of 8 lanes, then single vectors, then a scalar tail (FMA).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA and `buf + offsets[t] .. + out.len()` must be readable.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(buf: *const f32, offsets: &[usize], taps: &[f32], out: &mut [f32]) {
        let n = out.len();
        let o = out.as_mut_ptr();
        let mut x = 0;
        while x + 64 <= n {
            let mut a = [_mm256_setzero_ps(); 8];
            for (&s, &w) in offsets.iter().zip(taps) {
                let wv = _mm256_set1_ps(w);
                let p = buf.add(s + x);
                for (k, acc) in a.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8 * k)), wv, *acc);
                }
            }
            for (k, acc) in a.iter().enumerate() {
                _mm256_storeu_ps(o.add(x + 8 * k), *acc);
            }
            x += 64;
        }
        while x + 8 <= n {
            let mut acc = _mm256_setzero_ps();
            for (&s, &w) in offsets.iter().zip(taps) {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(buf.add(s + x)), _mm256_set1_ps(w), acc);
            }
            _mm256_storeu_ps(o.add(x), acc);
            x += 8;
        }
        while x < n {
            let mut acc = 0.0f32;
            for (&s, &w) in offsets.iter().zip(taps) {
                // Hardware FMA (enabled here), the same rounding as the vector lanes.
                acc = (*buf.add(s + x)).mul_add(w, acc);
            }
            *o.add(x) = acc;
            x += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_agrees_bit_for_bit() {
        // Lengths cover the 128/64 blocks, the single-vector loop and every tail length.
        let mut seed = 12345u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for n in (0..40).chain([63, 64, 65, 127, 128, 129, 200, 1000]) {
            for taps_n in [1, 3, 7] {
                let buf: Vec<f32> = (0..taps_n * (n + 5)).map(|_| rnd()).collect();
                let offs: Vec<usize> = (0..taps_n).map(|t| t * (n + 5) + t % 3).collect();
                let taps: Vec<f32> = (0..taps_n).map(|_| rnd()).collect();
                let mut want = vec![0.0; n];
                dot_rows(Isa::Scalar, &buf, &offs, &taps, &mut want);
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; n];
                    dot_rows(isa, &buf, &offs, &taps, &mut got);
                    assert_eq!(
                        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{isa:?} n={n} taps={taps_n}"
                    );
                }
                // And the value itself, against f64.
                for x in 0..n {
                    let e: f64 = (0..taps_n)
                        .map(|t| buf[offs[t] + x] as f64 * taps[t] as f64)
                        .sum();
                    assert!((want[x] as f64 - e).abs() < 1e-5);
                }
            }
        }
    }
}
