//! A small spinning thread pool for the short parallel regions of decode steps.
//!
//! Why not rayon here: a batch-8 T5 decode step is ~90 parallel regions of 20-100 µs each
//! (one per weight GEMV or attention), separated by short serial work (norms, cache appends).
//! Rayon's idle workers go to sleep within microseconds and waking one costs 30-70 µs on the
//! development VM (measured: a region after a 50 µs serial gap took 73 µs instead of ~5), which
//! added up to about a fifth of the decode time. This pool's workers spin for `SPIN` before
//! sleeping (like OpenMP's active wait policy), so back-to-back regions start immediately.
//! Large products (encoder GEMMs) stay on rayon.
//!
//! Protocol (one job at a time; a second concurrent caller, or a call from inside a task, does
//! not use the pool):
//! - the caller resets `next`/`done`, publishes a pointer to the job (a stack value), bumps
//!   `epoch`, wakes sleepers, and claims tasks itself;
//! - a worker that sees a new epoch registers in `inside`, then loads the job pointer; it only
//!   dereferences a non-null pointer, claims task indices with `next.fetch_add`, and leaves;
//! - the caller waits until all `n` tasks are done, nulls the pointer, then waits until
//!   `inside` is zero. With sequentially consistent operations on `inside` and the pointer, a
//!   worker either sees null or is counted, so no worker touches a job after its caller returned.
//!
//! Panics inside tasks are caught, the job completes, and the caller re-raises the first one.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the serial gaps inside and
/// between decode steps (tens to a few hundred µs), short enough that an idle process quiets.
const SPIN: Duration = Duration::from_millis(2);
/// After this long, the spinning worker yields its core on each check.
const YIELD_AFTER: Duration = Duration::from_micros(50);

struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
}

struct Shared {
    epoch: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    next: AtomicUsize,
    done: AtomicUsize,
    inside: AtomicUsize,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    cv: Condvar,
    caller: Mutex<()>,
    workers: usize,
}

thread_local! {
    /// Set on pool workers and on a caller while it runs a job: nested calls run serially.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

fn shared() -> &'static Shared {
    static POOL: OnceLock<&'static Shared> = OnceLock::new();
    POOL.get_or_init(|| {
        // The pool's size follows rayon's (`--threads`), read once at first use.
        let workers = rayon::current_num_threads().max(1) - 1;
        let s: &'static Shared = Box::leak(Box::new(Shared {
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            panic: Mutex::new(None),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            caller: Mutex::new(()),
            workers,
        }));
        for i in 0..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("jobx-pool-{i}"))
                .spawn(move || worker(s));
            if spawned.is_err() {
                // Fewer workers only means less parallelism: the caller runs what is left.
                break;
            }
        }
        s
    })
}

/// Threads a `for_each` job may run on (workers plus the caller).
pub fn threads() -> usize {
    shared().workers + 1
}

/// Runs `f(0..n)`, each index exactly once, spread over the pool; returns when all are done.
/// Falls back to rayon when another thread is using the pool, and runs serially when called
/// from inside a pool task or when there is nothing to spread.
pub fn for_each(n: usize, f: &(dyn Fn(usize) + Sync)) {
    if n == 0 {
        return;
    }
    if n == 1 || IN_POOL.with(|c| c.get()) {
        (0..n).for_each(f);
        return;
    }
    let s = shared();
    if s.workers == 0 {
        (0..n).for_each(f);
        return;
    }
    let Ok(_guard) = s.caller.try_lock() else {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f);
        return;
    };
    let job = Job { f, n };
    s.next.store(0, SeqCst);
    s.done.store(0, SeqCst);
    s.panicked.store(false, SeqCst);
    // SAFETY (lifetime erasure): the pointer is nulled, and every worker that could have read
    // it has left (`inside` == 0), before this function returns and `job` goes out of scope.
    s.job
        .store(&job as *const Job<'_> as *mut Job<'static>, SeqCst);
    s.epoch.fetch_add(1, SeqCst);
    if s.sleepers.load(SeqCst) > 0 {
        let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.cv.notify_all();
    }
    IN_POOL.with(|c| c.set(true));
    run_tasks(s, &job);
    while s.done.load(Acquire) < n {
        std::hint::spin_loop();
    }
    s.job.store(std::ptr::null_mut(), SeqCst);
    while s.inside.load(SeqCst) != 0 {
        std::hint::spin_loop();
    }
    IN_POOL.with(|c| c.set(false));
    if s.panicked.load(SeqCst) {
        let payload = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(_guard);
        if let Some(p) = payload {
            std::panic::resume_unwind(p);
        }
        panic!("a pool task panicked");
    }
}

/// Claims and runs tasks of `job` until none is left.
fn run_tasks(s: &Shared, job: &Job<'_>) {
    loop {
        let i = s.next.fetch_add(1, AcqRel);
        if i >= job.n {
            return;
        }
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| (job.f)(i))) {
            if !s.panicked.swap(true, SeqCst) {
                *s.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
            }
        }
        s.done.fetch_add(1, Release);
    }
}

fn worker(s: &'static Shared) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = s.epoch.load(SeqCst);
    loop {
        // Wait for a new job: spin, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.epoch.load(Acquire) != seen {
                break;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                continue;
            }
            let waited = start.elapsed();
            if waited > YIELD_AFTER && waited <= SPIN {
                // let other runnable threads (rayon's, during a large product in a decode
                // step) have the core; returns at once when there are none
                std::thread::yield_now();
            }
            if waited > SPIN {
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                while s.epoch.load(SeqCst) == seen {
                    g = s.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, SeqCst);
                break;
            }
        }
        seen = s.epoch.load(SeqCst);
        s.inside.fetch_add(1, SeqCst);
        let p = s.job.load(SeqCst);
        if !p.is_null() {
            // SAFETY: non-null and we are counted in `inside`, so the caller is still waiting
            // and the job it points to is alive (see the module comment).
            run_tasks(s, unsafe { &*p });
        }
        s.inside.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every index runs exactly once, over many back-to-back jobs of different sizes (the
    /// pattern of decode steps), with nested calls and concurrent callers falling back.
    #[test]
    fn every_index_once() {
        for round in 0..2000usize {
            let n = 1 + round % 37;
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            super::for_each(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
                if round % 100 == 0 {
                    // nested: runs serially on this thread
                    let inner = AtomicUsize::new(0);
                    super::for_each(3, &|_| {
                        inner.fetch_add(1, Ordering::Relaxed);
                    });
                    assert_eq!(inner.load(Ordering::Relaxed), 3);
                }
            });
            for (i, h) in hits.iter().enumerate() {
                assert_eq!(h.load(Ordering::Relaxed), 1, "round {round} index {i}");
            }
        }
        // concurrent callers: one gets the pool, the others rayon; all complete correctly
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..200 {
                        super::for_each(16, &|i| {
                            total.fetch_add(i, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(
            total.load(Ordering::Relaxed),
            3 * 200 * (0..16).sum::<usize>()
        );
    }

    /// A panicking task reaches the caller (not a hang, not a dead worker), and the pool keeps
    /// working afterwards.
    #[test]
    fn panic_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| {
            super::for_each(8, &|i| {
                if i == 5 {
                    panic!("task five");
                }
            })
        });
        let msg = r.expect_err("the panic propagates");
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"task five"));
        let n = AtomicUsize::new(0);
        super::for_each(8, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }
}
