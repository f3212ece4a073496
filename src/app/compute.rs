//! `ComputePool`: a fixed set of std threads for CPU-heavy steps that are not inference (vector
//! scans of the search index), fed by a bounded queue. Async code only awaits the reply, so a
//! long scan never holds a runtime thread that health checks and other tenants' calls need.
//! Never runs sled or ort work (those have `app::blocking` and the `InferencePool`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Jobs that may wait per compute thread; beyond that a call fails fast with OVERLOADED.
pub const QUEUE_PER_THREAD: usize = 4;

/// What a caller is told to wait before retrying when the queue is full: about one scan of a
/// large tenant (README: 12.7 ms prefiltered, 68 ms exact at 1M faces).
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// A job: runs the caller's closure (which sends its own reply) inside the caller's span.
type Task = Box<dyn FnOnce() + Send + 'static>;

/// Cheap-to-clone handle on the compute threads. The threads stop when every handle is gone.
#[derive(Debug, Clone)]
pub struct ComputePool {
    queue: async_channel::Sender<Task>,
    threads: usize,
    rejected: Arc<AtomicU64>,
}

impl ComputePool {
    /// Starts `threads` threads (0: one per core) behind a queue of `QUEUE_PER_THREAD` jobs each.
    pub fn start(threads: usize) -> Result<Self> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        };
        let (queue, tasks) = async_channel::bounded::<Task>(threads * QUEUE_PER_THREAD);
        for id in 0..threads {
            let tasks = tasks.clone();
            std::thread::Builder::new()
                .name(format!("compute-{id}"))
                .spawn(move || {
                    crate::threads::lower_priority();
                    while let Ok(task) = tasks.recv_blocking() {
                        task();
                    }
                })
                .map_err(|e| Error::internal("spawning a compute thread", e))?;
        }
        Ok(ComputePool { queue, threads, rejected: Arc::new(AtomicU64::new(0)) })
    }

    /// Runs `work` on a compute thread and returns its result. Waits while the queue has room;
    /// a full queue fails at once with RESOURCE_EXHAUSTED OVERLOADED (with a retry delay). A
    /// caller that goes away before its turn costs no CPU: the job is skipped.
    pub async fn run<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let span = tracing::Span::current();
        let task: Task = Box::new(move || {
            if reply.is_closed() {
                return; // the caller gave up (deadline, disconnect)
            }
            // A panic drops `reply`: the caller gets an internal error and the thread lives on.
            if let Ok(out) = std::panic::catch_unwind(AssertUnwindSafe(|| span.in_scope(work))) {
                let _ = reply.send(out);
            }
        });
        self.queue.try_send(task).map_err(|err| match err {
            async_channel::TrySendError::Full(_) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Error::overloaded(RETRY_AFTER)
            }
            async_channel::TrySendError::Closed(_) => {
                Error::Unavailable { message: "the compute threads have stopped".into() }
            }
        })?;
        answer.await.map_err(|_| Error::bug("a compute job panicked"))
    }

    /// Jobs waiting for a thread.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Calls refused because the queue was full, since start.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_off_the_runtime_and_refuses_beyond_the_queue() {
        let pool = ComputePool::start(1).unwrap();
        let here = std::thread::current().id();
        assert_ne!(pool.run(move || std::thread::current().id()).await.unwrap(), here);

        // Hold the one thread, fill the queue, and the next call is refused at once.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = oneshot::channel::<()>();
        let blocker = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = started_tx.send(());
                    let _ = held.recv();
                })
                .await
            })
        };
        started.await.unwrap();
        let queued: Vec<_> = (0..QUEUE_PER_THREAD)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.run(move || i).await })
            })
            .collect();
        while pool.queue_depth() < QUEUE_PER_THREAD {
            tokio::task::yield_now().await;
        }
        let refused = pool.run(|| 0).await.unwrap_err();
        assert!(matches!(refused, Error::ResourceExhausted { retry_after: Some(_), .. }), "{refused:?}");
        assert_eq!(refused.reason().as_str(), "OVERLOADED");
        assert_eq!(pool.rejected(), 1);

        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        for (i, job) in queued.into_iter().enumerate() {
            assert_eq!(job.await.unwrap().unwrap(), i);
        }
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_internal_error_and_the_thread_survives() {
        let pool = ComputePool::start(1).unwrap();
        let err = pool.run(|| panic!("boom")).await.unwrap_err();
        assert!(matches!(err, Error::Internal { .. }), "{err:?}");
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }
}
