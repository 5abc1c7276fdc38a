//! The parallel loop of the tiled engines: tasks `0..n` claimed from per-thread shares, with
//! the calling thread taking part.
//!
//! Each participating thread owns a contiguous share of the task range and claims its tasks
//! front to back through an atomic cursor; a thread whose share is done claims from the
//! others' cursors. So consecutive tasks mostly run on one thread (what the keyed workspaces
//! of [`super::store::for_each_task_keyed`] reuse), the load balances to the last task, and
//! every task runs exactly once, whichever thread claims it.
//!
//! Called from outside rayon's pool (the usual case: a model runs its layers on its own
//! thread), a plain `par_iter` hands the whole loop to the pool's workers and puts the caller
//! to sleep until they finish: one worker wake-up at the start and one caller wake-up at the
//! end, ~25 µs a call on this VM, 5–10 % of a 0.3–0.7 ms layer at two threads. Here the caller
//! runs the first share itself while `threads − 1` helper jobs start on the pool, and at the
//! end it spins (briefly, bounded) for helpers still finishing a task instead of sleeping.
//! The cost is one small heap job per helper and call (rayon's `spawn`); inside the pool the
//! tasks run as a plain `par_iter`, with no hand-off and no allocation.

use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Most threads that take shares (more workers would leave single tasks).
const MAX_SHARES: usize = 64;

/// How long the caller spins for helpers still running their last task before it sleeps on
/// the pool's latch (a task of a tiled engine is 10–200 µs).
const SPIN: Duration = Duration::from_micros(300);

/// One thread's share: the next task to claim and the end, on its own cache line.
#[repr(align(128))]
struct Share {
    next: AtomicUsize,
    end: usize,
}

/// The claim state of one loop.
struct Shares {
    shares: [Share; MAX_SHARES],
    count: usize,
}

impl Shares {
    fn new(ntasks: usize, count: usize) -> Shares {
        Shares {
            shares: std::array::from_fn(|i| Share {
                next: AtomicUsize::new(ntasks * i.min(count) / count),
                end: ntasks * (i + 1).min(count) / count,
            }),
            count,
        }
    }

    /// The tasks thread `me` runs: its own share's, then whatever is left of the others'.
    fn claims(&self, me: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.count)
            .map(move |j| &self.shares[(me + j) % self.count])
            .flat_map(|s| {
                std::iter::from_fn(move || {
                    let t = s.next.fetch_add(1, Ordering::Relaxed);
                    (t < s.end).then_some(t)
                })
            })
    }
}

/// Runs `body(claims)` on each participating thread, `claims` yielding the tasks it is to run;
/// together they yield every task in `0..ntasks` exactly once. Which thread runs a task is
/// not fixed, so a task's result must depend on `t` alone.
pub(crate) fn for_each_claimed(
    ntasks: usize,
    body: impl Fn(&mut dyn Iterator<Item = usize>) + Sync,
) {
    run_claims(ntasks, false, body)
}

/// [`for_each_claimed`] with one queue for all threads: each claims the lowest task left, so
/// tasks start in index order whichever thread runs them. For tasks of uneven cost listed
/// largest first (longest-processing-time scheduling): the threads finish within about one
/// small task of each other, where contiguous shares of a few large tasks may leave one thread
/// a large task behind the other.
pub(crate) fn for_each_queued(
    ntasks: usize,
    body: impl Fn(&mut dyn Iterator<Item = usize>) + Sync,
) {
    run_claims(ntasks, true, body)
}

fn run_claims(ntasks: usize, queue: bool, body: impl Fn(&mut dyn Iterator<Item = usize>) + Sync) {
    let threads = rayon::current_num_threads().min(ntasks).min(MAX_SHARES);
    if threads <= 1 {
        body(&mut (0..ntasks));
        return;
    }
    if rayon::current_thread_index().is_some() {
        // Inside the pool: this worker is awake, no hand-off to wait for; rayon's own
        // adaptive splitting, which balances better than shares against the other work of a
        // pass (a backward pass joins its gradients, each a parallel loop).
        (0..ntasks)
            .into_par_iter()
            .for_each(|t| body(&mut std::iter::once(t)));
        return;
    }
    let shares = Shares::new(ntasks, if queue { 1 } else { threads });
    let finished = AtomicUsize::new(0);
    rayon::in_place_scope(|scope| {
        for me in 1..threads {
            let (shares, finished, body) = (&shares, &finished, &body);
            scope.spawn(move |_| {
                body(&mut shares.claims(me));
                finished.fetch_add(1, Ordering::Release);
            });
        }
        body(&mut shares.claims(0));
        // Every task is claimed; helpers may still be running their last one. A helper that
        // has not started yet finds nothing left (the scope then waits for it).
        let start = Instant::now();
        while finished.load(Ordering::Acquire) + 1 < threads && start.elapsed() < SPIN {
            std::hint::spin_loop();
        }
    });
}

/// Where task `t`'s part of a buffer lies.
#[derive(Clone, Copy)]
pub(crate) enum Spans<'a> {
    /// `[t·len, (t + 1)·len)`, as `chunks_mut(len)` (the last one may be shorter).
    Even(usize),
    /// `[offsets[t], offsets[t + 1])`: nondecreasing, the last within the buffer.
    At(&'a [usize]),
}

/// A buffer handed out in disjoint parts, one per task (see [`for_each_claimed_span`]).
struct Parts<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: `Parts` is a pointer and a length; it only makes the slice of a task that one
// claim yields, and each task is claimed exactly once, so no element is shared.
unsafe impl<T: Send> Sync for Parts<T> {}

/// [`for_each_claimed`] over the parts of `data` given by `spans`: each claim yields task `t`
/// with its own part, like `data.par_chunks_mut(len).enumerate()` (tasks `0..ntasks`).
///
/// # Panics
/// If `spans` is `Even(0)`, or an `At` table is not nondecreasing or ends past `data`.
pub(crate) fn for_each_claimed_span<T: Send>(
    data: &mut [T],
    spans: Spans<'_>,
    body: impl Fn(&mut dyn Iterator<Item = (usize, &mut [T])>) + Sync,
) {
    let len = data.len();
    let (ntasks, bounds) = match spans {
        Spans::Even(n) => {
            assert!(n > 0, "zero-length chunks");
            (len.div_ceil(n), spans)
        }
        Spans::At(off) => {
            assert!(
                off.windows(2).all(|w| w[0] <= w[1]) && off.last().is_none_or(|&e| e <= len),
                "task spans overlap or run past the buffer"
            );
            (off.len().saturating_sub(1), spans)
        }
    };
    let span = |t: usize| match bounds {
        Spans::Even(n) => (t * n, ((t + 1) * n).min(len)),
        Spans::At(off) => (off[t], off[t + 1]),
    };
    let parts = Parts {
        ptr: data.as_mut_ptr(),
        len,
    };
    let parts = &parts;
    for_each_claimed(ntasks, |claims| {
        body(&mut claims.map(|t| {
            let (a, b) = span(t);
            debug_assert!(a <= b && b <= parts.len);
            // SAFETY: `[a, b)` lies in the buffer (checked above) and is task `t`'s alone
            // (spans are disjoint), `t` is claimed once, and `data` stays mutably borrowed
            // for the whole loop.
            (t, unsafe {
                std::slice::from_raw_parts_mut(parts.ptr.add(a), b - a)
            })
        }))
    });
}

/// `data.par_chunks_mut(len).enumerate().for_each(|(t, part)| f(t, part))` on the task
/// executor: called from outside the pool it runs a share itself instead of handing the whole
/// loop over (inline at one thread: a backward pass's several short loops each paid a
/// wake-up of the pool's worker and of the caller).
///
/// # Panics
/// If `len` is 0 and `data` is not empty.
pub(crate) fn for_each_chunk<T: Send>(
    data: &mut [T],
    len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if data.is_empty() {
        return;
    }
    for_each_claimed_span(data, Spans::Even(len), |claims| {
        claims.for_each(|(t, part)| f(t, part))
    });
}

/// Largest-to-median task cost ratio above which [`uneven_order`] runs tasks largest first.
const UNEVEN: f64 = 1.5;

/// The task indices largest cost first (ties in index order), if the tasks are uneven (the
/// largest costs over 1.5× the median), for a queue that threads claim them from; `None`:
/// keep contiguous shares in index order. A dilated layer's tap classes make tiles from 36
/// pixels × 4 taps to 144 × 9 (ASPP 3×3 d6 on 32×32), and contiguous shares of them left one
/// of two threads idle for most of a large tile at the end (0.93× the time at 2 threads with
/// the queue). Even tasks keep the contiguous shares, whose threads stream neighbouring pixels
/// (a queue interleaving them was 1.05× on a 1×1 layer and on ASPP d12, whose classes happen
/// to cost alike).
pub(crate) fn uneven_order(costs: &[f64]) -> Option<Vec<usize>> {
    let mut order: Vec<usize> = (0..costs.len()).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]).then(a.cmp(&b)));
    let (&big, &mid) = (order.first()?, order.get(costs.len() / 2)?);
    (costs[big] > UNEVEN * costs[mid]).then_some(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Uneven costs (the largest over 1.5× the median) give the largest-first order, ties in
    /// index order; even ones (and none) keep contiguous shares.
    #[test]
    fn uneven_costs_run_largest_first() {
        assert_eq!(uneven_order(&[1.0, 1.0, 1.4, 1.0]), None);
        assert_eq!(uneven_order(&[]), None);
        assert_eq!(uneven_order(&[1.0, 3.0, 1.0, 2.0]), Some(vec![1, 3, 0, 2]));
        assert_eq!(
            uneven_order(&[2.0, 1.0, 2.0, 1.0, 1.0]),
            Some(vec![0, 2, 1, 3, 4])
        );
    }

    /// Every task exactly once, at any thread count, from outside the pool and inside it,
    /// with fewer and more tasks than threads.
    #[test]
    fn every_task_runs_exactly_once() {
        for threads in [1, 2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for ntasks in [0, 1, 2, 3, 7, 64, 1000] {
                let seen = Mutex::new(vec![0u32; ntasks]);
                let run = || {
                    for_each_claimed(ntasks, |claims| {
                        for t in claims {
                            seen.lock().unwrap()[t] += 1;
                        }
                    })
                };
                // From inside the pool (a worker, the shares as a `par_iter`).
                pool.install(run);
                let got = seen.into_inner().unwrap();
                assert!(
                    got.iter().all(|&c| c == 1),
                    "{threads} threads, {ntasks} tasks"
                );
            }
        }
        // Outside any pool: the global pool's helpers and this thread.
        let ntasks = 513;
        let seen = Mutex::new(vec![0u32; ntasks]);
        for_each_claimed(ntasks, |claims| {
            for t in claims {
                seen.lock().unwrap()[t] += 1;
            }
        });
        assert!(seen.into_inner().unwrap().iter().all(|&c| c == 1));
    }

    /// Every part handed out once, with its own index, even chunks and a table alike.
    #[test]
    fn spans_cover_the_buffer_once() {
        let mut data = vec![0usize; 103];
        for_each_claimed_span(&mut data, Spans::Even(10), |claims| {
            for (t, part) in claims {
                part.iter_mut().for_each(|v| *v += t + 1);
            }
        });
        assert!(data.iter().enumerate().all(|(i, &v)| v == i / 10 + 1));
        let off = [0, 0, 5, 50, 103];
        let mut data = vec![0usize; 103];
        for_each_claimed_span(&mut data, Spans::At(&off), |claims| {
            for (t, part) in claims {
                assert_eq!(part.len(), off[t + 1] - off[t]);
                part.iter_mut().for_each(|v| *v += t + 1);
            }
        });
        let want = |i: usize| (1..5).find(|&t| i < off[t]).unwrap();
        assert!(data.iter().enumerate().all(|(i, &v)| v == want(i)));
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_spans_are_refused() {
        for_each_claimed_span(&mut [0f32; 8], Spans::At(&[0, 5, 3, 8]), |_| {});
    }

    /// One queue: every task once, at any thread count.
    #[test]
    fn a_queue_runs_every_task_once() {
        for ntasks in [0, 1, 5, 333] {
            let seen = Mutex::new(vec![0u32; ntasks]);
            for_each_queued(ntasks, |claims| {
                for t in claims {
                    seen.lock().unwrap()[t] += 1;
                }
            });
            assert!(
                seen.into_inner().unwrap().iter().all(|&c| c == 1),
                "{ntasks}"
            );
        }
        let s = Shares::new(10, 1);
        assert_eq!(s.claims(3).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    }

    /// Shares are contiguous and cover the range: thread `me` claims its own tasks in order
    /// before any other's.
    #[test]
    fn a_share_is_claimed_front_to_back_first() {
        let s = Shares::new(10, 3);
        let first: Vec<usize> = s.claims(1).take(3).collect();
        assert_eq!(first, [3, 4, 5]);
        let rest: Vec<usize> = s.claims(1).collect();
        assert_eq!(rest, [6, 7, 8, 9, 0, 1, 2]);
        assert_eq!(s.claims(0).count(), 0);
    }
}
