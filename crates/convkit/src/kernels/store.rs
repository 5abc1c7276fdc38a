//! Row copies: writing finished tiles into the caller's output from parallel tasks, and the
//! short contiguous copies of im2col packing. AVX-512 masked loads/stores where available
//! (compilers turn plain copy loops into a `memcpy` call per row, costly for rows of a few
//! dozen floats).

use super::gemm::{Microkernel, RowOffsets};
use super::tasks::{for_each_claimed, for_each_queued};
use super::Isa;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

/// A thread's workspace and what the last task left in it.
struct Workspace {
    buf: Vec<f32>,
    /// `(call, key)`: the key the last task of [`for_each_task_keyed`] call `call` left
    /// (e.g. the input band it filled); `None` once anything else used the buffer.
    left: Option<(u64, usize)>,
}

thread_local! {
    /// Per-thread workspace of the tiled engines (packed panels, bands, C tiles), grown once
    /// and reused by every task and every engine.
    static WORKSPACE: RefCell<Workspace> = const {
        RefCell::new(Workspace { buf: Vec::new(), left: None })
    };
}

/// Numbers the [`for_each_task_keyed`] calls, so that a key never outlives its call.
static CALLS: AtomicU64 = AtomicU64::new(1);

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
    for_each_task_keyed(y, ntasks, wlen, |t, out, ws, _| {
        task(t, out, ws);
        None
    });
}

/// [`for_each_task`] over `order` (a permutation of the task indices `0..ntasks`, e.g.
/// largest first, as [`super::tasks::uneven_order`] gives): the threads claim `order[0],
/// order[1], …` from one queue ([`for_each_queued`]); `None`: contiguous shares of
/// `0..ntasks`, as [`for_each_task`].
pub fn for_each_task_ordered(
    y: &mut [f32],
    order: Option<&[usize]>,
    ntasks: usize,
    wlen: usize,
    task: impl Fn(usize, SharedOut, &mut [f32]) + Sync,
) {
    let Some(order) = order else {
        return for_each_task(y, ntasks, wlen, task);
    };
    let out = SharedOut::new(y);
    for_each_queued(order.len(), |claims| {
        with_workspace(wlen, |ws| claims.for_each(|i| task(order[i], out, ws)))
    });
}

/// [`for_each_task`] where a task may reuse what the previous task on the same thread left in
/// the workspace: `task(t, out, ws, prev)` gets `prev = Some(key)` when the last task of this
/// call on this thread returned `Some(key)` (and nothing else used the workspace since), and
/// returns the key of what it leaves. The direct convolution keys its input band, so the
/// channel blocks of one band, consecutive tasks, fill the band once (gathering a strided
/// band is ~10 % of a 1×1 stride-2 layer). Tasks must compute the same result either way.
pub fn for_each_task_keyed(
    y: &mut [f32],
    ntasks: usize,
    wlen: usize,
    task: impl Fn(usize, SharedOut, &mut [f32], Option<usize>) -> Option<usize> + Sync,
) {
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let out = SharedOut::new(y);
    let step = |t: usize, ws: &mut [f32], left: &mut Option<(u64, usize)>| {
        let prev = left.filter(|&(c, _)| c == call).map(|(_, k)| k);
        // Cleared first: a task that panics leaves nothing to trust.
        *left = None;
        *left = task(t, out, ws, prev).map(|k| (call, k));
    };
    // One worker runs the tasks right here, in order, without a hand-off to the pool (that
    // was 7-11 % of 1-2 ms layers called from outside it); several claim them (`tasks`).
    for_each_claimed(ntasks, |claims| {
        with_keyed_workspace(wlen, |ws, left| claims.for_each(|t| step(t, ws, left)))
    });
}

/// Runs `f` on this thread's workspace, grown to exactly `wlen` floats if shorter (a plain
/// resize may double the capacity, which would break the plans' workspace bound).
fn with_keyed_workspace(wlen: usize, f: impl FnOnce(&mut [f32], &mut Option<(u64, usize)>)) {
    WORKSPACE.with(|ws| {
        let mut ws = ws.borrow_mut();
        let Workspace { buf, left } = &mut *ws;
        if buf.len() < wlen {
            let grow = wlen - buf.len();
            buf.reserve_exact(grow);
            buf.resize(wlen, 0.0);
            // Growing may move the buffer, but keeps its contents: a key stays valid.
        }
        f(&mut buf[..wlen], left);
    })
}

/// Runs `f` on this thread's workspace of `wlen` floats (see [`for_each_task`]), for engines
/// that drive their own parallel loop; whatever a keyed task left there is forgotten.
pub(crate) fn with_workspace(wlen: usize, f: impl FnOnce(&mut [f32])) {
    with_keyed_workspace(wlen, |ws, left| {
        *left = None;
        f(ws)
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

/// `dst[i] = src[i·stride]`: a strided layer's input row split into its stride phases. Stride
/// 2 (the common strided layers) runs in AVX-512 permutes where available (the SSE2 shuffles
/// the compiler makes of the portable blocks of 8 were 15 % of a 2×2 stride-2 layer's time),
/// other strides element by element.
///
/// # Panics
/// If `src` is shorter than `(dst.len() − 1)·stride + 1`.
#[inline]
pub fn gather_strided(dst: &mut [f32], src: &[f32], stride: usize, avx512: bool) {
    let n = dst.len();
    if n == 0 {
        return;
    }
    assert!(
        (n - 1)
            .checked_mul(stride)
            .is_some_and(|last| last < src.len()),
        "strided source too short"
    );
    #[cfg(target_arch = "x86_64")]
    if avx512 && stride == 2 {
        // SAFETY: `avx512` is only true when AVX-512F was detected (a plan's ISA); `src`
        // holds `2·(n − 1) + 1` values (asserted), `dst` n.
        unsafe { x86::gather_even(dst.as_mut_ptr(), n, src.as_ptr(), src.len()) };
        return;
    }
    let _ = avx512;
    if stride == 2 {
        let n8 = (n / 8).min(src.len() / 16);
        for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(16)).take(n8) {
            let d: &mut [f32; 8] = d.try_into().expect("chunk of 8");
            let s: &[f32; 16] = s.try_into().expect("chunk of 16");
            *d = [s[0], s[2], s[4], s[6], s[8], s[10], s[12], s[14]];
        }
        for i in n8 * 8..n {
            dst[i] = src[2 * i];
        }
    } else {
        for (v, s) in dst.iter_mut().zip(src.iter().step_by(stride)) {
            *v = *s;
        }
    }
}

/// Asks the caches for every 64-byte line of `data` (`prefetcht0`; nothing elsewhere): for a
/// kernel about to read, or write whole lines of, memory it has not touched for a while (a
/// batch's planes, which outgrow the caches between runs), one channel plane ahead.
#[inline]
pub fn prefetch(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for line in data.chunks(16) {
            // SAFETY: a prefetch is a hint that never faults; the address lies in `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// The segments of an im2col tile's packed rows with each tap's source offsets, checked once
/// (at plan time), so that packing a depth row checks its bounds in O(1): checking every
/// segment of every row (an atrous tile has ~8 a row, 2304 rows) was ~3 % of the layer.
#[derive(Debug, Clone, Default)]
pub struct PackTable {
    /// `(panel, lane, len)` of each segment.
    segs: Vec<(usize, usize, usize)>,
    /// Source offset of segment `i` for tap `t` at `[t·nsegs + i]`.
    src: Vec<usize>,
    /// Per tap, the end of its furthest source run.
    src_end: Vec<usize>,
    /// The largest panel index.
    max_panel: usize,
    /// Every segment's `lane + len` is at most this.
    width: usize,
}

impl PackTable {
    /// The table of `segs` (`(panel, lane, _, _, len)`) with source offsets `src`
    /// (`[tap·segs.len() + i]`), every segment within a panel row `width` wide.
    ///
    /// # Panics
    /// If a segment passes `width` or `src` is not a whole number of taps.
    pub fn new(
        segs: &[(usize, usize, usize, usize, usize)],
        src: Vec<usize>,
        width: usize,
    ) -> Self {
        let ns = segs.len();
        assert!(
            segs.iter().all(|&(_, lane, _, _, len)| lane + len <= width),
            "segment wider than its panel"
        );
        assert!(
            ns > 0 && src.len().is_multiple_of(ns),
            "source offsets for whole taps"
        );
        let src_end = src
            .chunks_exact(ns)
            .map(|offs| {
                offs.iter()
                    .zip(segs)
                    .map(|(&o, s)| o + s.4)
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        PackTable {
            segs: segs.iter().map(|&(p, l, _, _, n)| (p, l, n)).collect(),
            max_panel: segs.iter().map(|s| s.0).max().unwrap_or(0),
            src,
            src_end,
            width,
        }
    }

    /// Packs tap `tap`'s depth row from input plane `plane`: for each segment `i`,
    /// `dst[panel_i·panel_stride + base + lane_i ..][..len_i] = plane[src_i..][..len_i]`.
    /// AVX-512 moves each segment in vectors with a masked tail (segments are ≤ NR floats,
    /// often a few), the fallback with `copy_from_slice`.
    ///
    /// With `spill`, AVX-512 stores each segment's tail vector whole: up to 15 floats past the
    /// segment's end (zeros, or the plane's next values where a whole load fits in it), inside
    /// its panel (`base + width + 15 ≤ panel_stride`, checked). That is
    /// right when the segments are in increasing lane order and the caller writes the
    /// spilled-over lanes afterwards (the next segment, or the panel's next row). Masked
    /// stores were 45 % of the packing time on Zen 5 (atrous tiles end every segment in one).
    ///
    /// # Panics
    /// If `tap` is out of range or a segment would run past `dst` or `plane`, or with `spill`
    /// if a spill would leave its panel.
    #[inline]
    pub fn pack(
        &self,
        tap: usize,
        dst: &mut [f32],
        (base, panel_stride): (usize, usize),
        plane: &[f32],
        avx512: bool,
        spill: bool,
    ) {
        let ns = self.segs.len();
        assert!(tap < self.src_end.len(), "no such tap");
        let reach = self.width + if spill { 15 } else { 0 };
        assert!(
            !spill || base + reach <= panel_stride,
            "a spill would leave its panel"
        );
        let end = self
            .max_panel
            .checked_mul(panel_stride)
            .and_then(|v| v.checked_add(base))
            .and_then(|v| v.checked_add(reach));
        assert!(
            end.is_some_and(|e| e <= dst.len()) && self.src_end[tap] <= plane.len(),
            "segment out of bounds"
        );
        let src = &self.src[tap * ns..(tap + 1) * ns];
        #[cfg(target_arch = "x86_64")]
        if avx512 {
            // SAFETY: `avx512` is only true when AVX-512F was detected; every segment ends
            // within `width` (+ 15 with `spill`) of its panel row and at most `src_end[tap]`
            // in the plane, both checked above against the slices.
            unsafe {
                x86::pack_segments(
                    dst.as_mut_ptr(),
                    base,
                    panel_stride,
                    plane,
                    &self.segs,
                    src,
                    spill,
                )
            };
            return;
        }
        let _ = avx512;
        for (&(panel, lane, len), &so) in self.segs.iter().zip(src) {
            let d = panel * panel_stride + base + lane;
            dst[d..d + len].copy_from_slice(&plane[so..so + len]);
        }
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

    /// `out[offset .. offset + len]` as a slice, for a kernel that computes straight into the
    /// output (no buffer and copy).
    ///
    /// # Safety
    /// As [`SharedOut::write_row`], for these elements, for as long as the slice lives.
    ///
    /// # Panics
    /// If the range is out of bounds.
    #[inline]
    #[allow(clippy::mut_from_ref)] // disjoint parts of the wrapped buffer, by the contract
    pub unsafe fn row_mut(&self, offset: usize, len: usize) -> &mut [f32] {
        assert!(
            offset <= self.len && len <= self.len - offset,
            "output row out of bounds"
        );
        // SAFETY: in bounds (asserted); exclusive access is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }

    /// [`prefetch`]es `out[offset .. offset + len]` (clamped to the buffer): a hint before a
    /// task writes those elements, never an access.
    #[inline]
    pub fn prefetch(&self, offset: usize, len: usize) {
        let end = offset.saturating_add(len).min(self.len);
        if offset >= end {
            return;
        }
        // SAFETY: in bounds; only read by prefetch hints, which never fault nor change data.
        prefetch(unsafe { std::slice::from_raw_parts(self.ptr.add(offset), end - offset) });
    }

    /// [`tail::run`](super::tail::run) for depth rows `kk0..kk1` into this buffer, over any
    /// number of consecutive A panels (`apan` floats apart, in groups of
    /// [`MAX_PANELS`](super::tail::MAX_PANELS)): for their `8·npanels` rows,
    /// `out[offset + r·ldc ..][..cols] (+)= bias[r] + A·B`, added to what is there from the
    /// second chunk on (`kk0 > 0`). The form of [`tail::run_panels`](super::tail::run_panels) for tiles
    /// stored straight into the output.
    ///
    /// # Safety
    /// As [`SharedOut::write_row`], for these elements; the tail kernel must be available.
    ///
    /// # Panics
    /// If the rows are out of bounds, or as [`tail::run`](super::tail::run).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_tail(
        &self,
        (kk0, kk1): (usize, usize),
        a: &[f32],
        (apan, npanels): (usize, usize),
        b: &[f32],
        offs: &RowOffsets,
        cols: usize,
        (offset, ldc): (usize, usize),
        bias: Option<&[f32]>,
    ) {
        let end = (8 * npanels)
            .checked_sub(1)
            .and_then(|r| r.checked_mul(ldc))
            .and_then(|v| v.checked_add(offset + cols));
        assert!(
            end.is_some_and(|e| e <= self.len),
            "output tail out of bounds"
        );
        let group = super::tail::MAX_PANELS;
        for p in (0..npanels).step_by(group) {
            let np = group.min(npanels - p);
            // SAFETY: the rows lie in the buffer (asserted for all of them); exclusive access
            // is the caller's contract, availability of the kernel too.
            unsafe {
                super::tail::run(
                    kk1 - kk0,
                    &a[p * apan..],
                    apan,
                    np,
                    b,
                    offs,
                    kk0,
                    cols,
                    self.ptr.add(offset + 8 * p * ldc),
                    ldc,
                    8 * np,
                    kk0 > 0,
                    bias.map(|v| &v[8 * p..]),
                )
            };
        }
    }

    /// `out[offset + i·stride] = src[i] + bias` (`stride` 1 is [`SharedOut::write_row`]).
    ///
    /// # Safety
    /// As [`SharedOut::write_row`], for these elements.
    ///
    /// # Panics
    /// If the range is out of bounds.
    #[inline]
    pub unsafe fn write_strided(&self, offset: usize, src: &[f32], stride: usize, bias: f32) {
        if stride == 1 {
            // SAFETY: the same contract.
            return unsafe { self.write_row(offset, src, bias) };
        }
        if src.is_empty() {
            return;
        }
        let last = (src.len() - 1)
            .checked_mul(stride)
            .and_then(|v| v.checked_add(offset));
        assert!(
            last.is_some_and(|l| l < self.len),
            "output row out of bounds"
        );
        for (i, &v) in src.iter().enumerate() {
            // SAFETY: every index ≤ `last` < len (asserted); exclusive access is the caller's
            // contract.
            unsafe { *self.ptr.add(offset + i * stride) = v + bias };
        }
    }

    /// Runs `ukr` with its C tile in this buffer: `MR` rows of `NR` values from `offset` at
    /// stride `ldc`, `C (+)= bias + A · B` ([`Microkernel::run_raw`]).
    ///
    /// # Safety
    /// No other thread may access the tile's elements concurrently, and the buffer given to
    /// [`SharedOut::new`] must still be alive and otherwise unused.
    ///
    /// # Panics
    /// If the tile or an operand is out of bounds.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_tile(
        &self,
        ukr: Microkernel,
        kc: usize,
        a: &[f32],
        b: &[f32],
        offs: &RowOffsets,
        k0: usize,
        offset: usize,
        ldc: usize,
        accumulate: bool,
        bias: Option<&[f32]>,
    ) {
        let end = (ukr.mr - 1)
            .checked_mul(ldc)
            .and_then(|v| v.checked_add(offset + ukr.nr));
        assert!(
            end.is_some_and(|e| e <= self.len),
            "output tile out of bounds"
        );
        // SAFETY: the tile lies in the buffer (asserted); exclusive access is the caller's
        // contract.
        unsafe {
            ukr.run_raw(
                kc,
                a,
                b,
                offs,
                k0,
                self.ptr.add(offset),
                ldc,
                accumulate,
                bias,
            )
        };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::PackTable::pack`]'s copies, 16 lanes at a time with masked tails (masked
    /// loads; with `spill`, whole-vector stores).
    ///
    /// # Safety
    /// AVX-512F available; every segment's ranges valid in `plane` and `dst`, in `dst` rounded
    /// up to whole vectors with `spill`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_segments(
        dst: *mut f32,
        base: usize,
        ps: usize,
        plane: &[f32],
        segs: &[(usize, usize, usize)],
        src_off: &[usize],
        spill: bool,
    ) {
        let (src, src_len) = (plane.as_ptr(), plane.len());
        for (&(panel, lane, len), &so) in segs.iter().zip(src_off) {
            // SAFETY: inside the segment's ranges, which the caller guarantees valid.
            unsafe {
                let (d, s) = (dst.add(panel * ps + base + lane), src.add(so));
                let mut i = 0;
                while i + 16 <= len {
                    _mm512_storeu_ps(d.add(i), _mm512_loadu_ps(s.add(i)));
                    i += 16;
                }
                if i < len {
                    let m: __mmask16 = ((1u32 << (len - i)) - 1) as __mmask16;
                    let v = if spill && so + i + 16 <= src_len {
                        _mm512_loadu_ps(s.add(i))
                    } else {
                        _mm512_maskz_loadu_ps(m, s.add(i))
                    };
                    if spill {
                        _mm512_storeu_ps(d.add(i), v);
                    } else {
                        _mm512_mask_storeu_ps(d.add(i), m, v);
                    }
                }
            }
        }
    }

    /// `dst[i] = src[2i]` for `i < n`, 16 at a time: two (masked) loads of 32 source values
    /// and one two-source permute; only the first `len` source values are read.
    ///
    /// # Safety
    /// AVX-512F available; `dst` valid for `n` values, `src` for `len ≥ 2·(n − 1) + 1`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather_even(dst: *mut f32, n: usize, src: *const f32, len: usize) {
        let mask = crate::kernels::lane_mask;
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let mut i = 0;
        while i < n {
            let avail = len - 2 * i;
            // SAFETY: the loads read source values `2i .. 2i + min(32, avail)` (masked), below
            // `len`; the store writes `dst[i .. min(i + 16, n)]` (masked).
            unsafe {
                let a = _mm512_maskz_loadu_ps(mask(avail), src.add(2 * i));
                let b = _mm512_maskz_loadu_ps(mask(avail.saturating_sub(16)), src.add(2 * i + 16));
                _mm512_mask_storeu_ps(dst.add(i), mask(n - i), _mm512_permutex2var_ps(a, even, b));
            }
            i += 16;
        }
    }

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
    fn segment_packing_matches_plain_code() {
        let src: Vec<f32> = (0..300).map(|i| i as f32 * 0.25 + 1.0).collect();
        let segs = [
            (0, 0, 0, 0, 6),
            (0, 6, 0, 0, 20),
            (1, 3, 0, 0, 17),
            (2, 40, 0, 0, 8),
            (1, 30, 0, 0, 1),
        ];
        // Two taps: the second's offsets shifted.
        let offs = [5, 40, 100, 283, 0, 6, 41, 101, 280, 1];
        let table = PackTable::new(&segs, offs.to_vec(), 48);
        for avx in [false, Isa::Avx512.available()] {
            for tap in 0..2 {
                let mut d = vec![-1.0f32; 3 * 100];
                table.pack(tap, &mut d, (2, 100), &src, avx, false);
                let mut want = vec![-1.0f32; 3 * 100];
                for (&(p, l, _, _, n), &o) in segs.iter().zip(&offs[tap * 5..]) {
                    for i in 0..n {
                        want[p * 100 + 2 + l + i] = src[o + i];
                    }
                }
                assert_eq!(d, want, "avx {avx} tap {tap}");
            }
        }
    }

    /// Rows packed in order with `spill` (every row but the last) hold the same segment
    /// values as masked packing, however the segments' tails spill: lengths below, at and
    /// past a vector, a segment ending at the panel's edge, a source run ending at the plane's
    /// end (where the tail load must stay masked).
    #[test]
    fn spilling_rows_pack_the_same_segments() {
        let plane: Vec<f32> = (0..200).map(|i| i as f32 * 0.5 + 3.0).collect();
        let segs = [
            (0, 0, 0, 0, 6),
            (0, 6, 0, 0, 17),
            (0, 23, 0, 0, 25),
            (1, 0, 0, 0, 16),
            (1, 16, 0, 0, 3),
        ];
        let offs = [0, 10, 60, 120, 197, 1, 11, 61, 121, 190];
        let table = PackTable::new(&segs, offs.to_vec(), 48);
        let (nr, kc) = (48, 4);
        for avx in [false, Isa::Avx512.available()] {
            let mut d = vec![-1.0f32; 2 * kc * nr];
            for kl in 0..kc {
                table.pack(kl % 2, &mut d, (kl * nr, kc * nr), &plane, avx, kl + 1 < kc);
            }
            for kl in 0..kc {
                for (&(p, l, _, _, n), &o) in segs.iter().zip(&offs[(kl % 2) * 5..]) {
                    let at = p * kc * nr + kl * nr + l;
                    assert_eq!(
                        d[at..at + n],
                        plane[o..o + n],
                        "avx {avx} row {kl} lane {l}"
                    );
                }
            }
        }
        let spill_out = std::panic::catch_unwind(|| {
            table.pack(
                0,
                &mut vec![0f32; 2 * kc * nr],
                (3 * nr, kc * nr),
                &plane,
                false,
                true,
            )
        });
        assert!(spill_out.is_err(), "the last row may not spill");
    }

    /// A row whose segments would pass the buffer or the plane is refused in O(1).
    #[test]
    fn pack_table_bounds_are_checked() {
        let segs = [(0, 0, 0, 0, 8), (2, 8, 0, 0, 8)];
        let table = PackTable::new(&segs, vec![0, 10], 16);
        let plane = vec![0.5f32; 18];
        let mut d = vec![0f32; 2 * 20 + 16];
        table.pack(0, &mut d, (0, 20), &plane, false, false);
        let short = std::panic::catch_unwind(|| {
            table.pack(
                0,
                &mut vec![0f32; 2 * 20 + 15],
                (0, 20),
                &plane,
                false,
                false,
            )
        });
        assert!(short.is_err(), "a buffer one float short");
        let small = std::panic::catch_unwind(|| {
            table.pack(0, &mut vec![0f32; 56], (0, 20), &plane[..17], false, false)
        });
        assert!(small.is_err(), "a plane one float short");
    }

    #[test]
    fn strided_gathers_match_plain_code() {
        let src: Vec<f32> = (0..300).map(|i| i as f32 * 0.5 - 7.0).collect();
        for stride in 1..=4 {
            for n in 0..=60 {
                // The shortest source the contract allows, and a longer one.
                let need = if n == 0 { 0 } else { (n - 1) * stride + 1 };
                for len in [need, need + 5] {
                    for avx in [false, Isa::Avx512.available()] {
                        let mut d = vec![9.0f32; n + 1];
                        gather_strided(&mut d[..n], &src[3..3 + len], stride, avx);
                        let want: Vec<f32> = (0..n).map(|i| src[3 + i * stride]).collect();
                        assert_eq!(&d[..n], &want[..], "stride {stride}, n {n}, avx {avx}");
                        assert_eq!(d[n], 9.0, "wrote past the end");
                    }
                }
            }
        }
    }

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
