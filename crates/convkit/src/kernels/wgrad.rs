//! Weight gradients as GEMMs on the sgemm microkernels, without an im2col copy.
//!
//! `out[k, c, ky, kx] = Σ_{n, oy, ox} b[n, k, oy, ox] · a_pad[n, c, oy·s + ky·d, ox·s + kx·d]`
//! (grad weight of a conv: `a` = input, `b` = grad output; of a transposed conv the roles
//! swap). For one tap `(ky, kx)` this is the GEMM `out[:, :, ky, kx] = B[K × P] · Â[P × C]`
//! over the `P = N·OH·OW` output pixels, where row `p = (n, oy, ox)` of `Â` is the input
//! pixel `(n, oy·s + ky·d, ox·s + kx·d)`. With `a` copied once into padded NHWC, that row is
//! `C` contiguous channels at the offset `((oy·s)·Wp + ox·s)·C` from the tap's origin, so the
//! microkernel reads `Â` in place as its `B` operand through one offset table shared by every
//! tap (Dukhan's indirect convolution, with offsets instead of pointers); `b` is packed once
//! into `MR`-row panels, pixel-major, as its `A` operand. The only copies are one NHWC
//! transpose of `a` and one packing of `b`, each the size of its tensor (an im2col would be
//! kh·kw times larger); both live in a per-thread scratch reused across calls, so repeated
//! backward passes touch no fresh pages.
//!
//! Pixels whose tap reads zero padding add nothing: a tap multiplies only its live output
//! rows (a contiguous pixel range), and where its live columns are narrower than the output
//! by an eighth or more (atrous taps) it reads a copy of the packed `b` holding just the
//! pixels of those columns (one copy per distinct column range, with its own offsets).
//!
//! A task owns a range of the `P` pixels × a group of taps × a block of output channels × a
//! block of input channels, and sums its pixels in depth chunks of ≤ [`KC`], every tap of the
//! group for each chunk: the chunk's `KC × NR` micro-panels of `Â` stay in L1 while every
//! channel block's `A` panel runs over them (BLIS's loop order), and its rows of `Â` and `b`
//! stay in cache across the taps. Large layers are cut into up to [`MAX_RANGES`] pixel
//! ranges whose partial sums are added in range order at the end. Every output element is
//! summed by the same tasks in the same order whatever the thread count, so results do not
//! depend on it.

use super::gemm::{Microkernel, RowOffsets};
use super::round_up;
use super::store::{for_each_task, prefetch};
use super::tasks::for_each_chunk;
use super::transpose::transpose;
use crate::error::{ConvError, Result};
use ndarray::{Array4, ArrayView4};
use std::cell::Cell;

/// Pixels (GEMM depth) per microkernel call: a `KC × NR` micro-panel of the NHWC input is
/// 24 KiB at NR = 48, resident in L1 while the task's `A` panels stream over it.
const KC: usize = 128;
/// Output channels per task: their panels share each micro-panel while it is in L1.
const MAX_TASK_ROWS: usize = 64;
/// Input channels (GEMM columns) per task.
const MAX_TASK_COLS: usize = 192;
/// Tasks a layer is cut into at least, where it allows (fixed: independent of the threads).
const MIN_TASKS: usize = 8;
/// Largest per-task tile of sums (all of a task's taps × output rows × columns), bytes;
/// kernels with more taps are split into tap groups.
const MAX_TILE_BYTES: usize = 160 * 1024;
/// Operands (NHWC input + packed grad output) larger than this, bytes, are streamed once per
/// tap group rather than once per tap.
const GROUP_TAPS_BYTES: usize = 4 << 20;
/// Output pixels per pixel range: ranges sum separately, then add up.
const RANGE_PIXELS: usize = 2048;
/// Fewest output pixels per range when ranges are added to make enough tasks.
const MIN_RANGE_PIXELS: usize = 256;
/// Most pixel ranges a layer is cut into.
const MAX_RANGES: usize = 8;
/// Largest buffer of partial sums over pixel ranges, bytes.
const PARTIAL_BYTES: usize = 8 << 20;

thread_local! {
    /// The NHWC copy of `a`, the packed `b`, the tap-major partial sums and the column
    /// classes' packed `b` of the last call on this thread, reused: fresh multi-MiB buffers
    /// come from `mmap` and cost a page fault per 4 KiB on every call (on this VM ~20 % of an
    /// atrous 256-channel layer's weight gradient).
    static SCRATCH: Cell<[Vec<f32>; 4]> =
        const { Cell::new([Vec::new(), Vec::new(), Vec::new(), Vec::new()]) };
}

/// `len` floats of `v` starting on a 64-byte boundary, grown if needed (contents unspecified:
/// callers overwrite them). Aligned so that every pixel of the NHWC copy starts a cache line
/// and an NR-wide read touches NR/16 lines, not one more.
fn scratch(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len + 16 {
        v.resize(len + 16, 0.0);
    }
    let skip = v.as_ptr().align_offset(64).min(15);
    &mut v[skip..skip + len]
}

fn overflow(what: &'static str) -> ConvError {
    ConvError::Overflow { what }
}

/// The multiply-accumulates [`correlate`] runs for these shapes with microkernel `ukr`,
/// counting the padding of channel blocks to whole `MR × NR` tiles, each tile weighted by its
/// kernel's speed ([`Microkernel::weighted_cols`]): what a caller compares to choose between
/// microkernels of different widths (64 channels: two 32-wide tiles, not 48 + 16).
pub fn padded_macs(
    batch_pixels: usize,
    a_channels: usize,
    b_channels: usize,
    groups: usize,
    taps: usize,
    ukr: Microkernel,
) -> f64 {
    let (ag, bg) = (a_channels / groups.max(1), b_channels / groups.max(1));
    ukr.weighted_cols(ag) * (round_up(bg, ukr.mr) * groups * taps) as f64 * batch_pixels as f64
}

/// The correlation above with `a` zero-padded by `pad = [top, bottom, left, right]`:
/// returns `(B, A/groups, kh, kw)` for `a: (N, A, H, W)`, `b: (N, B, OH, OW)`.
///
/// The padded `a` must contain every tap: `H + top + bottom ≥ (OH−1)·s + (kh−1)·d + 1` (and
/// likewise for the width).
#[allow(clippy::too_many_arguments)]
pub fn correlate(
    a: ArrayView4<f32>,
    b: ArrayView4<f32>,
    pad: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    ukr: Microkernel,
) -> Result<Array4<f32>> {
    correlate_grouping(
        a,
        b,
        (pad, kernel, stride, dilation),
        groups,
        ukr,
        GROUP_TAPS_BYTES,
    )
}

/// [`correlate`], grouping taps when the operands exceed `group_taps_bytes` (tests force
/// both decompositions through it).
fn correlate_grouping(
    a: ArrayView4<f32>,
    b: ArrayView4<f32>,
    (pad, kernel, stride, dilation): ([usize; 4], [usize; 2], [usize; 2], [usize; 2]),
    groups: usize,
    ukr: Microkernel,
    group_taps_bytes: usize,
) -> Result<Array4<f32>> {
    let (n, ca, h, w) = a.dim();
    let (nb, cb, oh, ow) = b.dim();
    let [kh, kw] = kernel;
    let [sh, sw] = stride;
    let [dh, dw] = dilation;
    let hp = h
        .checked_add(pad[0])
        .and_then(|v| v.checked_add(pad[1]))
        .ok_or(overflow("padded input height"))?;
    let wp = w
        .checked_add(pad[2])
        .and_then(|v| v.checked_add(pad[3]))
        .ok_or(overflow("padded input width"))?;
    if nb != n || groups == 0 || !ca.is_multiple_of(groups) || !cb.is_multiple_of(groups) {
        return Err(ConvError::Unsupported(format!(
            "weight gradient: batches {n} and {nb}, channels {ca} and {cb}, groups {groups} do not fit"
        )));
    }
    let reach = |o: usize, s: usize, k: usize, d: usize| {
        (o - 1)
            .checked_mul(s)
            .and_then(|v| v.checked_add((k - 1).checked_mul(d)?))
    };
    if oh == 0
        || ow == 0
        || kh == 0
        || kw == 0
        || reach(oh, sh, kh, dh).is_none_or(|r| r >= hp)
        || reach(ow, sw, kw, dw).is_none_or(|r| r >= wp)
    {
        return Err(ConvError::Unsupported(
            "weight gradient: the padded input does not cover every tap".into(),
        ));
    }
    let (ag, bg) = (ca / groups, cb / groups);
    let mut out = Array4::<f32>::zeros((cb, ag, kh, kw));
    if n == 0 || ca == 0 || cb == 0 || h == 0 || w == 0 {
        // Nothing but zero padding to correlate with.
        return Ok(out);
    }
    let (mr, nr) = (ukr.mr, ukr.nr);
    // Floats per NHWC pixel: the channels plus 16, so that pixels are not a power-of-two
    // number of cache lines apart (a 1 KiB pixel stride would map a micro-panel's rows onto 4
    // of L1's 64 sets and evict it between the k-blocks that reuse it).
    let cp = round_up(ca, 16) + 16;
    let ohw = oh * ow; // ≤ the size of `b`, which exists
    let kblocks = bg.div_ceil(mr);
    // Sizes of the two scratch buffers (the NHWC input with `nr` floats of slack for the
    // widest read past the last channel, and the packed `b`).
    let an_len = n
        .checked_mul(hp)
        .and_then(|v| v.checked_mul(wp))
        .and_then(|v| v.checked_mul(cp))
        .and_then(|v| v.checked_add(nr))
        .ok_or(overflow("padded NHWC input"))?;
    let bp_len = (n * groups * kblocks)
        .checked_mul(ohw)
        .and_then(|v| v.checked_mul(mr))
        .ok_or(overflow("packed grad output"))?;
    let a = a.as_standard_layout();
    let a = a.as_slice().expect("standard layout is contiguous");
    let b = b.as_standard_layout();
    let b = b.as_slice().expect("standard layout is contiguous");
    // Offsets of the Â rows of every pixel (n = 0, tap (0, 0)); a tap and image add a base.
    let offs = RowOffsets::new(
        (0..ohw)
            .map(|q| ((q / ow) * sh * wp + (q % ow) * sw) * cp)
            .collect(),
    );
    // Tasks: pixel range × tap group × output-channel (k-block) range × input-channel column
    // range. Every task sums all of its taps over its pixels chunk by chunk, so the chunk's
    // NHWC rows and packed `b` stay in cache across the taps (one pass over both per task;
    // one task per tap streamed them once per tap: 8 × 56×56 × 64 moved ~130 MB a pass).
    // Pixel ranges past the first write partial sums, added in range order at the end.
    let cblocks = round_up(ag, nr) / nr;
    let taps = kh * kw;
    let mut kbt = kblocks.min((MAX_TASK_ROWS / mr).max(1));
    let mut cbt = cblocks.min((MAX_TASK_COLS / nr).max(1));
    // Taps are grouped only when the operands are too large for the caches: then a pass over
    // them per tap is a pass over memory. Cache-resident operands keep one tap per task (more,
    // smaller tasks, each chunked over its tap's live rows: 4-5 % faster on a 56×56 or atrous
    // 32×32 layer than grouping).
    let tg = if 4 * (an_len + bp_len) <= group_taps_bytes {
        1
    } else {
        taps.min((MAX_TILE_BYTES / (4 * kbt * mr * cbt * nr)).max(1))
    };
    let ntg = taps.div_ceil(tg);
    let total = n * ohw;
    let grad_len = taps * cb * ag;
    let max_ranges = MAX_RANGES.min((PARTIAL_BYTES / (4 * grad_len).max(1)).max(1));
    let mut ranges = (total / RANGE_PIXELS).clamp(1, max_ranges);
    let count = |ranges: usize, kbt: usize, cbt: usize| {
        groups * ranges * ntg * kblocks.div_ceil(kbt) * cblocks.div_ceil(cbt)
    };
    // Short of tasks, cut the pixels finer first (each task still reuses every micro-panel
    // of `Â` across all its k-blocks), then the channel blocks.
    while count(ranges, kbt, cbt) < MIN_TASKS
        && ranges < max_ranges
        && total / (ranges + 1) >= MIN_RANGE_PIXELS
    {
        ranges += 1;
    }
    while count(ranges, kbt, cbt) < MIN_TASKS && (kbt > 1 || cbt > 1) {
        if kbt >= cbt && kbt > 1 {
            kbt = kbt.div_ceil(2);
        } else {
            cbt = cbt.div_ceil(2);
        }
    }
    let (nkr, ncr) = (kblocks.div_ceil(kbt), cblocks.div_ceil(cbt));
    let ldc = cbt * nr;
    let tile_rows = kbt * mr;
    let per_range = total.div_ceil(ranges);
    // Tasks write tap-major rows `[range][tap][k][c]`: straight into `out` for one tap and
    // one range, else into a buffer reduced over ranges and transposed into PyTorch's
    // `[k][c][tap]` at the end.
    // Taken out of the thread-local for the call and put back after, so that a nested call
    // on this thread (rayon may steal one while this one waits) finds it empty, not borrowed.
    let [mut an_buf, mut bp_buf, mut tm_buf, mut cl_buf] = SCRATCH.with(Cell::take);
    // Every element is written by exactly one task (no zeroing needed).
    let tap_major = if taps == 1 && ranges == 1 {
        &mut tm_buf[..0]
    } else {
        scratch(&mut tm_buf, ranges * grad_len)
    };
    {
        let an = scratch(&mut an_buf, an_len);
        let bp = scratch(&mut bp_buf, bp_len);
        let (body, slack) = an.split_at_mut(an_len - nr);
        slack.fill(0.0);
        for_each_chunk(body, wp * cp, |row, dst| {
            nhwc_row(a, dst, row, [ca, cp, h, w], [hp, pad[0], pad[2]])
        });
        for_each_chunk(bp, ohw * mr, |i, dst| {
            let kb = i % kblocks;
            let gi = (i / kblocks) % groups;
            let ni = i / (kblocks * groups);
            let rows = mr.min(bg - kb * mr);
            if rows < mr {
                dst.fill(0.0);
            }
            let k0 = gi * bg + kb * mr;
            transpose(&b[(ni * cb + k0) * ohw..], ohw, dst, mr, rows, ohw);
        });
        // Column classes: a tap whose input column lies in the padding for a good share of
        // the output columns (an atrous tap: 6 of 32) multiplies only its live columns, from
        // a copy of the packed `b` holding just those pixels, with their own offsets.
        let classes = ColumnClasses::new(kw, |kx| live_rows(kx * dw, sw, pad[2], w, ow), ow);
        // At most kw copies of `bp` (each class is narrower than the output).
        let cl_len = bp_len
            .checked_mul(classes.ranges.len())
            .ok_or(overflow("column classes of the packed grad output"))?;
        let class_base = classes.bases(oh, n * groups * kblocks * mr);
        debug_assert!(class_base[classes.ranges.len()] <= cl_len);
        let cl = scratch(&mut cl_buf, class_base[classes.ranges.len()]);
        classes.pack(bp, cl, oh, ow, mr);
        let class_offs: Vec<RowOffsets> = classes
            .ranges
            .iter()
            .map(|&(lo, hi)| {
                let wc = hi - lo;
                RowOffsets::new(
                    (0..oh * wc)
                        .map(|q| ((q / wc) * sh * wp + (lo + q % wc) * sw) * cp)
                        .collect(),
                )
            })
            .collect();
        let (an, bp, cl) = (&*an, &*bp, &*cl);
        let ntasks = groups * ranges * ntg * nkr * ncr;
        let dst = if tap_major.is_empty() {
            out.as_slice_mut().expect("fresh array")
        } else {
            &mut *tap_major
        };
        for_each_task(dst, ntasks, tg * tile_rows * ldc, |t, out, tile| {
            let cr = t % ncr;
            let kr = (t / ncr) % nkr;
            let tgi = (t / (ncr * nkr)) % ntg;
            let r = (t / (ncr * nkr * ntg)) % ranges;
            let gi = t / (ncr * nkr * ntg * ranges);
            let (t0, t1) = (tgi * tg, ((tgi + 1) * tg).min(taps));
            let (kb0, kb1) = (kr * kbt, ((kr + 1) * kbt).min(kblocks));
            let (cb0, cb1) = (cr * cbt, ((cr + 1) * cbt).min(cblocks));
            let (p0, p1) = (r * per_range, ((r + 1) * per_range).min(total));
            // Bit `tap − t0` set once that tap's tile holds a sum (else it is still garbage).
            let mut started = vec![false; t1 - t0];
            for ni in p0 / ohw..p1.div_ceil(ohw) {
                let mut qa = p0.max(ni * ohw) - ni * ohw;
                let mut qb = p1.min((ni + 1) * ohw) - ni * ohw;
                if t1 - t0 == 1 {
                    // One tap: chunk just its live rows.
                    let (lo, hi) = live_rows((t0 / kw) * dh, sh, pad[0], h, oh);
                    (qa, qb) = (qa.max(lo * ow), qb.min(hi * ow));
                }
                // Chunks of ≤ KC pixels, balanced.
                let span = qb.saturating_sub(qa);
                let per = span.div_ceil(span.div_ceil(KC).max(1));
                let mut c0 = qa;
                while c0 < qb {
                    let c1 = (c0 + per).min(qb);
                    for tap in t0..t1 {
                        let (ky, kx) = (tap / kw, tap % kw);
                        // Output rows whose input row for this tap lies in the padding
                        // contribute zero: only rows `oy_lo..oy_hi` are multiplied (an atrous
                        // tap skips a sixth or more).
                        let (oy_lo, oy_hi) = live_rows(ky * dh, sh, pad[0], h, oh);
                        let (q0, q1) = (c0.max(oy_lo * ow), c1.min(oy_hi * ow));
                        // Its pixels: all, or those of its column class (renumbered).
                        let (bpx, offx, ohwx, q0, q1) = match classes.of[kx] {
                            None => (bp, &offs, ohw, q0, q1),
                            Some(ci) => {
                                let (lo, hi) = classes.ranges[ci];
                                let wc = hi - lo;
                                let at = |q: usize| (q / ow) * wc + (q % ow).clamp(lo, hi) - lo;
                                let base = class_base[ci];
                                (&cl[base..], &class_offs[ci], oh * wc, at(q0), at(q1))
                            }
                        };
                        if q0 >= q1 {
                            continue;
                        }
                        let kc = q1 - q0;
                        let origin = ((ni * hp + ky * dh) * wp + kx * dw) * cp + gi * ag;
                        let acc = started[tap - t0];
                        let tt = (tap - t0) * tile_rows * ldc;
                        for cbi in cb0..cb1 {
                            // The group's last channels on the kernels covering them.
                            for (j, ukr) in ukr.parts(ag - cbi * nr) {
                                let bsl = &an[origin + cbi * nr + j..];
                                for kb in kb0..kb1 {
                                    let a0 = (((ni * groups + gi) * kblocks + kb) * ohwx + q0) * mr;
                                    let ci = tt + (kb - kb0) * mr * ldc + (cbi - cb0) * nr + j;
                                    ukr.run(
                                        kc,
                                        &bpx[a0..a0 + kc * mr],
                                        bsl,
                                        offx,
                                        q0,
                                        &mut tile[ci..],
                                        ldc,
                                        acc,
                                    );
                                }
                            }
                        }
                        started[tap - t0] = true;
                    }
                    c0 = c1;
                }
            }
            let c_lo = cb0 * nr;
            let c_hi = (cb1 * nr).min(ag);
            for tap in t0..t1 {
                let tt = (tap - t0) * tile_rows * ldc;
                if !started[tap - t0] {
                    // Every pixel of this range reads padding for this tap: zero.
                    tile[tt..tt + tile_rows * ldc].fill(0.0);
                }
                for kb in kb0..kb1 {
                    for m in 0..mr.min(bg - kb * mr) {
                        let k = gi * bg + kb * mr + m;
                        let src = &tile[tt + (kb - kb0) * mr * ldc + m * ldc..][..c_hi - c_lo];
                        let off = r * grad_len + (tap * cb + k) * ag + c_lo;
                        // SAFETY: this task alone sums range `r` of tap `tap` of output
                        // channel `k` for input channels `c_lo..c_hi` (tasks partition group ×
                        // range × tap group × k-block range × column range), and `out` wraps
                        // `dst`, borrowed for the whole run.
                        unsafe { out.write_row(off, src, 0.0) };
                    }
                }
            }
        });
    }
    if ranges > 1 {
        // Σ over the ranges, in range order (fixed: the same sums for any thread count).
        let (sum, rest) = tap_major.split_at_mut(grad_len);
        for_each_chunk(sum, 4096, |i, d| {
            for r in 0..ranges - 1 {
                let p = &rest[r * grad_len + i * 4096..][..d.len()];
                for (x, y) in d.iter_mut().zip(p) {
                    *x += y;
                }
            }
        });
        if taps == 1 {
            out.as_slice_mut()
                .expect("fresh array")
                .copy_from_slice(&tap_major[..grad_len]);
        }
    }
    if taps > 1 {
        // out[k][c][tap] = tap_major[tap][k][c]: one taps × ag transpose per output channel,
        // in parallel (a serial pass over a 2 MiB gradient would cost a core ~0.5 ms).
        let o = out.as_slice_mut().expect("fresh array");
        for_each_chunk(o, ag * taps, |k, dst| {
            transpose(&tap_major[k * ag..], cb * ag, dst, taps, taps, ag);
        });
    }
    SCRATCH.with(|cell| cell.set([an_buf, bp_buf, tm_buf, cl_buf]));
    Ok(out)
}

/// The taps' column classes: the distinct ranges of live output columns `lo..hi` narrower
/// than the output by at least an eighth, and which (if any) each kernel column `kx` uses.
#[derive(Debug)]
struct ColumnClasses {
    ranges: Vec<(usize, usize)>,
    of: Vec<Option<usize>>,
}

impl ColumnClasses {
    /// The classes of `kw` kernel columns, `live(kx)` the live output columns of each.
    fn new(kw: usize, live: impl Fn(usize) -> (usize, usize), ow: usize) -> Self {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        let of = (0..kw)
            .map(|kx| {
                let (lo, hi) = live(kx);
                // Narrower by an eighth or more: the copy of `b` costs less than it saves.
                if hi <= lo || 8 * (ow - (hi - lo)) < ow {
                    return None;
                }
                Some(match ranges.iter().position(|&r| r == (lo, hi)) {
                    Some(i) => i,
                    None => {
                        ranges.push((lo, hi));
                        ranges.len() - 1
                    }
                })
            })
            .collect();
        ColumnClasses { ranges, of }
    }

    /// Where each class's packed `b` starts in the classes' buffer, and (last entry) its
    /// length in floats (`per_pixel` = the packed floats of one pixel over all blocks).
    fn bases(&self, oh: usize, per_pixel: usize) -> Vec<usize> {
        let mut at = vec![0];
        for &(lo, hi) in &self.ranges {
            at.push(at[at.len() - 1] + oh * (hi - lo) * per_pixel);
        }
        at
    }

    /// Copies each class's pixels out of the packed `b` (`[block][oy·ow + ox][MR]`) into
    /// `dst` (`[class][block][oy·wc + ox − lo][MR]`).
    fn pack(&self, bp: &[f32], dst: &mut [f32], oh: usize, ow: usize, mr: usize) {
        let blocks = bp.len() / (oh * ow * mr);
        let mut rest = dst;
        for &(lo, hi) in &self.ranges {
            let wc = hi - lo;
            let (mine, tail) = rest.split_at_mut(blocks * oh * wc * mr);
            rest = tail;
            for_each_chunk(mine, wc * mr, |i, d| {
                // Row `i` = (block, oy): its live columns.
                let (blk, oy) = (i / oh, i % oh);
                d.copy_from_slice(&bp[((blk * oh + oy) * ow + lo) * mr..][..wc * mr]);
            });
        }
    }
}

/// The output rows `oy_lo..oy_hi` whose input row `oy·s + tap − top` (`tap` = ky·d) lies
/// inside the `h` input rows; the others see only zero padding.
fn live_rows(tap: usize, s: usize, top: usize, h: usize, oh: usize) -> (usize, usize) {
    // First row with oy·s + tap ≥ top, last with oy·s + tap ≤ top + h − 1.
    let lo = top.saturating_sub(tap).div_ceil(s).min(oh);
    let hi = match (top + h - 1).checked_sub(tap) {
        Some(v) => (v / s + 1).min(oh),
        None => 0,
    };
    (lo, hi.max(lo))
}

/// Row `row = (n, yp)` of the padded NHWC copy of the NCHW `a` (`ca` channels of `h × w`,
/// `cp` floats per pixel; padded height `hp`, `top` and `left` padding): zeros outside the
/// input, channels contiguous per pixel (the `cp − ca` spare floats are left as they are).
fn nhwc_row(
    a: &[f32],
    dst: &mut [f32],
    row: usize,
    [ca, cp, h, w]: [usize; 4],
    [hp, top, left]: [usize; 3],
) {
    let (ni, yp) = (row / hp, row % hp);
    if yp < top || yp >= top + h {
        dst.fill(0.0);
        return;
    }
    let y = yp - top;
    let (before, rest) = dst.split_at_mut(left * cp);
    before.fill(0.0);
    let (body, after) = rest.split_at_mut(w * cp);
    after.fill(0.0);
    // The next row's channels, one plane apart: too many short streams for the hardware
    // prefetchers once the planes are large.
    if y + 1 < h {
        for c in 0..ca {
            prefetch(&a[((ni * ca + c) * h + y + 1) * w..][..w]);
        }
    }
    // Channels × pixels of row y, transposed into pixels × channels.
    transpose(&a[(ni * ca * h + y) * w..], h * w, body, cp, ca, w);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;

    fn naive(
        a: &Array4<f32>,
        b: &Array4<f32>,
        pad: [usize; 4],
        k: [usize; 2],
        s: [usize; 2],
        d: [usize; 2],
        g: usize,
    ) -> Array4<f64> {
        let (n, ca, h, w) = a.dim();
        let (_, cb, oh, ow) = b.dim();
        let (ag, bg) = (ca / g, cb / g);
        Array4::from_shape_fn((cb, ag, k[0], k[1]), |(kk, c, ky, kx)| {
            let cc = kk / bg * ag + c;
            let mut acc = 0f64;
            for ni in 0..n {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let y = (oy * s[0] + ky * d[0]) as isize - pad[0] as isize;
                        let x = (ox * s[1] + kx * d[1]) as isize - pad[2] as isize;
                        if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                            acc += a[[ni, cc, y as usize, x as usize]] as f64
                                * b[[ni, kk, oy, ox]] as f64;
                        }
                    }
                }
            }
            acc
        })
    }

    /// Classes are the distinct live-column ranges an eighth or more narrower than the
    /// output: ASPP's 3×3 dilation 6 on 32 columns has two (kx 0 and 2), a 3×3 pad 1 on 56
    /// none (one column of 56 is not worth a copy).
    #[test]
    fn column_classes_of_atrous_and_plain_taps() {
        let aspp = ColumnClasses::new(3, |kx| live_rows(kx * 6, 1, 6, 32, 32), 32);
        assert_eq!(aspp.ranges, vec![(6, 32), (0, 26)]);
        assert_eq!(aspp.of, vec![Some(0), None, Some(1)]);
        let plain = ColumnClasses::new(3, |kx| live_rows(kx, 1, 1, 56, 56), 56);
        assert!(plain.ranges.is_empty() && plain.of.iter().all(Option::is_none));
        let shared = ColumnClasses::new(5, |kx| live_rows(kx, 1, 2, 6, 6), 6);
        assert_eq!(shared.ranges, vec![(2, 6), (1, 6), (0, 5), (0, 4)]);
        assert_eq!(shared.of, vec![Some(0), Some(1), None, Some(2), Some(3)]);
    }

    #[test]
    fn matches_naive_on_every_isa() {
        let cases = [
            // (n, ca, h, w), (cb, oh, ow), pad, k, s, d, g
            (
                [2, 5, 7, 9],
                [6, 5, 7],
                [1, 1, 1, 1],
                [3, 3],
                [1, 1],
                [1, 1],
                1,
            ),
            (
                [1, 4, 9, 8],
                [6, 4, 3],
                [0, 1, 2, 0],
                [2, 3],
                [2, 3],
                [1, 1],
                2,
            ),
            (
                [1, 3, 10, 10],
                [9, 6, 6],
                [2, 2, 2, 2],
                [3, 3],
                [1, 1],
                [3, 3],
                3,
            ),
            // Taps that read only padding (ky = 0 and 2 never reach the 3 input rows).
            (
                [1, 3, 3, 3],
                [5, 3, 3],
                [4, 4, 4, 4],
                [3, 3],
                [1, 1],
                [4, 4],
                1,
            ),
            // Strided and dilated, several tasks per tap.
            (
                [2, 40, 11, 13],
                [70, 4, 5],
                [1, 2, 0, 1],
                [3, 2],
                [2, 3],
                [2, 1],
                1,
            ),
            (
                [3, 64, 6, 5],
                [17, 6, 5],
                [0, 0, 0, 0],
                [1, 1],
                [1, 1],
                [1, 1],
                1,
            ),
            // Pixel ranges: 2 × 48 × 48 = 4608 output pixels sum in two ranges, images
            // split across them.
            (
                [3, 6, 40, 40],
                [10, 40, 40],
                [1, 1, 1, 1],
                [3, 3],
                [1, 1],
                [1, 1],
                1,
            ),
            (
                [2, 9, 64, 40],
                [5, 64, 40],
                [0; 4],
                [1, 1],
                [1, 1],
                [1, 1],
                1,
            ),
            // Column classes (an atrous tap's live columns) with batch 2, groups, a column
            // stride and a class shared by two kernel columns: kx 0 and 1 both skip ox 0
            // (ox·2 + kx − 2 < 0), kx 4 skips the last column (10 + 4 − 2 > 11).
            (
                [2, 4, 9, 12],
                [6, 5, 6],
                [2, 2, 2, 1],
                [3, 5],
                [2, 2],
                [2, 1],
                2,
            ),
            // Tap groups: a 7×7 stride-2 stem (49 taps, 64 output channels) is split into two.
            (
                [1, 3, 30, 30],
                [64, 15, 15],
                [3, 3, 3, 3],
                [7, 7],
                [2, 2],
                [1, 1],
                1,
            ),
        ];
        for (ash, [cb, oh, ow], pad, k, s, d, g) in cases {
            let mut seed = 7u32;
            let mut rnd = move || {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            };
            let a = Array4::from_shape_simple_fn(ash, &mut rnd);
            let b = Array4::from_shape_simple_fn([ash[0], cb, oh, ow], &mut rnd);
            let want = naive(&a, &b, pad, k, s, d, g);
            for ukr in Microkernel::available() {
                let isa = format!("{ukr:?}");
                // Both decompositions: one tap per task, and taps grouped.
                for group in [usize::MAX, 0] {
                    let got = correlate_grouping(a.view(), b.view(), (pad, k, s, d), g, ukr, group)
                        .unwrap();
                    assert_eq!(got.shape(), want.shape());
                    for (x, y) in got.iter().zip(want.iter()) {
                        assert!((*x as f64 - y).abs() < 1e-4, "{isa:?} {ash:?}: {x} vs {y}");
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_a_padding_that_misses_taps() {
        let a = Array4::<f32>::zeros((1, 1, 4, 4));
        let b = Array4::<f32>::zeros((1, 1, 4, 4));
        let ukr = Microkernel::for_isa(Isa::Scalar).unwrap();
        assert!(correlate(a.view(), b.view(), [0; 4], [3, 3], [1, 1], [1, 1], 1, ukr).is_err());
    }
}
