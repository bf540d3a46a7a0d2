//! The JIT's threads: a small pool, owned by a model, that runs the generated
//! `infer_part` on every thread at once, and the barrier that code calls between layers.
//!
//! A run hands the pool's workers one job (a closure over the part index) and runs part 0
//! itself. Between runs a worker spins for a while (back-to-back runs then start without
//! a wake-up through the kernel) and then sleeps on a condition variable; the caller
//! spins until the workers are done. Inside a run the threads meet at [`Barrier`] after
//! every layer: a counter and a generation number, waited on by spinning (layers take
//! microseconds) and then by yielding, so that more threads than cores still make
//! progress.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// A reusable barrier for `parts` threads.
pub(crate) struct Barrier {
    parts: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl Barrier {
    pub fn new(parts: usize) -> Barrier {
        Barrier { parts, arrived: AtomicUsize::new(0), generation: AtomicUsize::new(0) }
    }

    /// Returns once all `parts` threads have called `wait` (since the last time it opened).
    pub fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parts {
            // The last one in resets the count before it opens the barrier, so a thread
            // that races ahead to the next barrier counts there.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        spin_until(|| self.generation.load(Ordering::Acquire) != generation);
    }
}

/// Spins (about 100 microseconds), then yields, until `done()`.
fn spin_until(done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < SPINS {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

/// Spin-loop hints before a waiting thread yields or sleeps (a `pause` takes up to ~40 ns).
const SPINS: u32 = 1 << 12;

/// The barrier as the generated code calls it: `sync(sync_ctx)`.
pub(crate) extern "C" fn barrier_wait(ctx: *mut u8) {
    // SAFETY: the JIT passes a pointer to a `Barrier` that outlives the run.
    let barrier = unsafe { &*(ctx as *const Barrier) };
    barrier.wait();
}

/// A job: the closure of the current run, its lifetime erased (see [`Pool::run`]).
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync));

// SAFETY: the closure is `Sync`, and `Pool::run` keeps it alive until every worker is done.
unsafe impl Send for Job {}

struct State {
    job: Option<Job>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Bumped, under the `state` lock, for every run.
    generation: AtomicU64,
    /// Workers still running the current job.
    pending: AtomicUsize,
}

/// Worker threads that run one closure on every thread at once.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool for runs of `threads` parts: `threads - 1` workers (the caller is part 0).
    pub fn new(threads: usize) -> Result<Pool, String> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { job: None, shutdown: false }),
            wake: Condvar::new(),
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
        });
        let mut pool = Pool { shared: shared.clone(), workers: Vec::new() };
        for part in 1..threads.max(1) {
            let shared = shared.clone();
            let worker = std::thread::Builder::new()
                .name(format!("cnnc-{part}"))
                .spawn(move || work(&shared, part))
                .map_err(|e| format!("cannot start a thread: {e}"))?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }

    /// Threads per run, the caller's included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(part)` for every part at once, part 0 on this thread; returns when all
    /// are done.
    pub fn run(&mut self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        // SAFETY: only the lifetime is erased; the job is cleared below, after every
        // worker has finished with it, before `f` goes out of scope.
        let job = Job(unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f) });
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.job = Some(job);
            self.shared.pending.store(self.workers.len(), Ordering::Relaxed);
            self.shared.generation.fetch_add(1, Ordering::Release);
            self.shared.wake.notify_all();
        }
        f(0);
        spin_until(|| self.shared.pending.load(Ordering::Acquire) == 0);
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner()).job = None;
    }
}

fn work(shared: &Shared, part: usize) {
    let mut seen = 0u64;
    loop {
        // A new run soon after the last one is seen while spinning.
        let mut spins = 0;
        while shared.generation.load(Ordering::Acquire) == seen && spins < SPINS {
            std::hint::spin_loop();
            spins += 1;
        }
        let job = {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while shared.generation.load(Ordering::Acquire) == seen && !state.shutdown {
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.shutdown {
                return;
            }
            seen = shared.generation.load(Ordering::Acquire);
            state.job
        };
        if let Some(Job(f)) = job {
            // SAFETY: `Pool::run` keeps the closure alive until `pending` reaches 0.
            unsafe { (*f)(part) };
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.shutdown = true;
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_per_run_and_the_barrier_orders_phases() {
        let mut pool = Pool::new(3).unwrap();
        for _ in 0..50 {
            let barrier = Barrier::new(3);
            let counts: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            let phase = AtomicUsize::new(0);
            let early = AtomicUsize::new(0);
            pool.run(&|part| {
                counts[part].fetch_add(1, Ordering::Relaxed);
                phase.fetch_add(1, Ordering::AcqRel);
                barrier.wait();
                // Every part has done phase one before any starts phase two.
                if phase.load(Ordering::Acquire) < 3 {
                    early.fetch_add(1, Ordering::Relaxed);
                }
                barrier.wait();
                phase.fetch_add(1, Ordering::AcqRel);
            });
            assert_eq!(early.load(Ordering::Relaxed), 0);
            assert_eq!(phase.load(Ordering::Relaxed), 6);
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        }
    }
}
