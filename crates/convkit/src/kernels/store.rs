//! Writing finished tiles into the caller's output from parallel tasks.
//!
//! Tasks own disjoint sets of output elements (batch × channel block × pixel tile), which are
//! not contiguous slices of the NCHW array, so they write through a shared raw pointer.

/// A shared handle on a contiguous output buffer that parallel tasks write disjoint parts of.
#[derive(Clone, Copy)]
pub struct SharedOut {
    ptr: *mut f32,
    len: usize,
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
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s + bias;
        }
    }
}
