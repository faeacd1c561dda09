//! The threads long expression runs go to: off the async runtime, each
//! with a deep stack, so a long or deep run never holds up the worker's
//! other tasks (its `/readyz` among them). Started at the first such run: a
//! worker whose expressions all finish inline never starts them.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads taking jobs from one queue, started on first use.
/// The threads end when the last handle is dropped.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Lazy>,
}

struct Lazy {
    threads: usize,
    stack: usize,
    /// The queue's sending end, once the threads run; `None` if they could not start.
    jobs: OnceLock<Option<mpsc::Sender<Job>>>,
}

/// The pool's threads are gone (they only end when it is dropped, so this
/// is a bug or a failure to start).
#[derive(Debug, thiserror::Error)]
#[error("the expression threads are not running")]
pub struct PoolGone;

impl Pool {
    /// A pool of `threads` threads (at least one) with `stack` bytes of stack
    /// each, started when the first job comes.
    pub fn new(threads: usize, stack: usize) -> Self {
        Pool {
            inner: Arc::new(Lazy {
                threads,
                stack,
                jobs: OnceLock::new(),
            }),
        }
    }

    fn spawn(threads: usize, stack: usize) -> std::io::Result<mpsc::Sender<Job>> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("fabric-expr-{i}"))
                .stack_size(stack)
                .spawn(move || {
                    loop {
                        // The lock is held only to take one job, not to run it.
                        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            // A job that panics loses its own answer, not the thread.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(jobs)
    }

    /// Whether the threads were started (by a first job).
    pub fn started(&self) -> bool {
        self.inner.jobs.get().is_some()
    }

    /// Runs `f` on one of the pool's threads and waits for its result
    /// without holding up the async runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolGone> {
        let jobs = self.inner.jobs.get_or_init(|| {
            match Self::spawn(self.inner.threads, self.inner.stack) {
                Ok(jobs) => Some(jobs),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the expression threads");
                    None
                }
            }
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        jobs.as_ref()
            .ok_or(PoolGone)?
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| PoolGone)?;
        rx.await.map_err(|_| PoolGone)
    }
}
