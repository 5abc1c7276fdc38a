//! Row copies: writing finished tiles into the caller's output from parallel tasks, and the
//! short contiguous copies of im2col packing. AVX-512 masked loads/stores where available
//! (compilers turn plain copy loops into a `memcpy` call per row, costly for rows of a few
//! dozen floats).

use super::Isa;
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// Per-thread workspace of the tiled engines (packed panels, bands, C tiles), grown once
    /// and reused by every task and every engine.
    static WORKSPACE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `task(t, out, workspace)` for `t in 0..ntasks` on rayon's pool, each with a
/// per-thread workspace of `wlen` floats, writing disjoint parts of `y` through [`SharedOut`].
/// Which task writes which element depends only on `t`, so results are identical for any
/// thread count.
pub fn for_each_task(
    y: &mut [f32],
    ntasks: usize,
    wlen: usize,
    task: impl Fn(usize, SharedOut, &mut [f32]) + Sync,
) {
    let out = SharedOut::new(y);
    if rayon::current_num_threads() == 1 {
        // One worker: run the tasks right here, in the same order of decomposition (so the
        // same result), without handing the call to the pool's thread and waiting for it
        // (measured 7-11 % on 1-2 ms layers called from outside the pool).
        with_workspace(wlen, |ws| (0..ntasks).for_each(|t| task(t, out, ws)));
        return;
    }
    (0..ntasks)
        .into_par_iter()
        .for_each(|t| with_workspace(wlen, |ws| task(t, out, ws)));
}

/// Runs `f` on this thread's workspace, grown to exactly `wlen` floats if shorter (a plain
/// resize may double the capacity, which would break the plans' workspace bound).
pub(crate) fn with_workspace(wlen: usize, f: impl FnOnce(&mut [f32])) {
    WORKSPACE.with(|ws| {
        let mut ws = ws.borrow_mut();
        if ws.len() < wlen {
            let grow = wlen - ws.len();
            ws.reserve_exact(grow);
            ws.resize(wlen, 0.0);
        }
        f(&mut ws[..wlen]);
    })
}

/// `dst = src + bias` (`add = false`: `dst = src` exactly).
#[inline]
pub fn copy_row(dst: &mut [f32], src: &[f32], bias: f32, add: bool, avx512: bool) {
    assert_eq!(dst.len(), src.len(), "row lengths differ");
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: `avx512` is only true when AVX-512F was detected (callers pass
        // `Isa::Avx512.available()` or a plan's ISA); both slices hold `dst.len()` values.
        unsafe { x86::copy_add(dst.as_mut_ptr(), src.as_ptr(), dst.len(), bias, add) };
        return;
    }
    let _ = avx512;
    if add {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s + bias;
        }
    } else {
        dst.copy_from_slice(src);
    }
}

/// A shared handle on a contiguous output buffer that parallel tasks write disjoint parts of.
#[derive(Clone, Copy)]
pub struct SharedOut {
    ptr: *mut f32,
    len: usize,
    avx512: bool,
}

// SAFETY: the handle is only a pointer + length; `write_row` callers guarantee that no two
// threads write the same element and nobody reads the buffer while tasks run.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Wraps `out`, which must stay borrowed (unused elsewhere) while tasks write.
    pub fn new(out: &mut [f32]) -> Self {
        SharedOut {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            avx512: Isa::Avx512.available(),
        }
    }

    /// `out[offset .. offset + src.len()] = src + bias`.
    ///
    /// # Safety
    /// No other thread may access these elements concurrently, and the buffer given to
    /// [`SharedOut::new`] must still be alive and otherwise unused.
    ///
    /// # Panics
    /// If the range is out of bounds.
    #[inline]
    pub unsafe fn write_row(&self, offset: usize, src: &[f32], bias: f32) {
        assert!(
            offset <= self.len && src.len() <= self.len - offset,
            "output row out of bounds"
        );
        // SAFETY: in bounds (asserted); exclusive access is the caller's contract.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), src.len()) };
        copy_row(dst, src, bias, true, self.avx512);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `dst[i] = src[i] (+ bias)` for `i < n`, 16 lanes at a time, the tail masked.
    ///
    /// # Safety
    /// AVX-512F available; `dst` and `src` valid for `n` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn copy_add(dst: *mut f32, src: *const f32, n: usize, bias: f32, add: bool) {
        let b = _mm512_set1_ps(bias);
        let mut i = 0;
        // SAFETY: every access is at an index < n (full vectors while i + 16 ≤ n, then a
        // masked vector covering exactly the remaining n − i lanes).
        unsafe {
            while i + 16 <= n {
                let v = _mm512_loadu_ps(src.add(i));
                _mm512_storeu_ps(dst.add(i), if add { _mm512_add_ps(v, b) } else { v });
                i += 16;
            }
            if i < n {
                let m: __mmask16 = (1u16 << (n - i)) - 1;
                let v = _mm512_maskz_loadu_ps(m, src.add(i));
                _mm512_mask_storeu_ps(dst.add(i), m, if add { _mm512_add_ps(v, b) } else { v });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_match_plain_code_for_every_length() {
        let src: Vec<f32> = (0..70).map(|i| i as f32 * 0.5 - 3.0).collect();
        for avx in [false, Isa::Avx512.available()] {
            for n in 0..70 {
                for add in [false, true] {
                    let mut d = vec![9.0f32; 72];
                    copy_row(&mut d[1..1 + n], &src[..n], 1.5, add, avx);
                    assert_eq!(d[0], 9.0);
                    assert_eq!(d[1 + n], 9.0);
                    for i in 0..n {
                        assert_eq!(d[1 + i], if add { src[i] + 1.5 } else { src[i] });
                    }
                }
            }
        }
    }
}
