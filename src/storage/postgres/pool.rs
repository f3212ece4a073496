//! A bounded pool of PostgreSQL connections, and the runtime that drives them. The store's
//! methods are blocking (called through `app::blocking`, or from a CLI); each runs its
//! statements with `run`, which blocks the calling thread on the pool's own runtime (never on
//! the server's async threads). A connection that closed is dropped, not returned.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls};

use super::{connection_lost, pg_error};
use crate::error::{Error, Result};

/// The runtime of every PostgreSQL connection of the process. Never dropped: a connection (or
/// a pool) may then be dropped anywhere, the server's async threads included.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("facevault-pg")
            .enable_all()
            .build()
            .expect("the PostgreSQL runtime starts")
    })
}

thread_local! {
    /// Set while the thread runs `app::blocking` work: it may block (a `spawn_blocking` thread).
    static MAY_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work` marking this thread as one that may block on the PostgreSQL runtime.
pub fn may_block<T>(work: impl FnOnce() -> T) -> T {
    let before = MAY_BLOCK.replace(true);
    let out = work();
    MAY_BLOCK.set(before);
    out
}

/// Runs the future `make` gives to its end on the PostgreSQL runtime, blocking this thread:
/// directly on a thread outside any runtime (a CLI) or marked by `may_block`; else (an async
/// thread: a test's, or one of the server's by mistake, where blocking would panic) on a
/// thread of its own, which this one waits for.
pub(super) fn run<F, Fut>(make: F) -> Fut::Output
where
    F: FnOnce() -> Fut + Send,
    Fut: Future,
    Fut::Output: Send,
{
    if MAY_BLOCK.get() || tokio::runtime::Handle::try_current().is_err() {
        return runtime().block_on(make());
    }
    std::thread::scope(|scope| {
        scope.spawn(|| runtime().block_on(make())).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Starts `work` on the PostgreSQL runtime without waiting (a lock's release on drop).
pub(super) fn spawn(work: impl Future<Output = ()> + Send + 'static) {
    runtime().spawn(work);
}

/// Connections to one database, at most `size` at once.
pub(super) struct Pool {
    config: tokio_postgres::Config,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
    /// How long a caller waits for a connection (free or new) before UNAVAILABLE.
    wait: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config holds the password: never printed.
        f.debug_struct("Pool").field("available", &self.permits.available_permits()).finish_non_exhaustive()
    }
}

/// A connection of the pool; back to the pool on drop unless it closed.
pub(super) struct Conn {
    client: Option<Client>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("a pooled connection holds its client until dropped")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("a pooled connection holds its client until dropped")
    }
}

impl Conn {
    /// Closes the connection instead of returning it (its session holds what it must not keep).
    pub(super) fn discard(mut self) {
        self.client = None;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            self.pool.idle.lock().unwrap_or_else(PoisonError::into_inner).push(client);
        }
    }
}

impl Pool {
    pub(super) fn new(config: tokio_postgres::Config, size: usize, wait: Duration) -> Arc<Self> {
        Arc::new(Pool { config, idle: Mutex::default(), permits: Arc::new(Semaphore::new(size)), wait })
    }

    /// How long a caller waits for a connection.
    pub(super) fn wait(&self) -> Duration {
        self.wait
    }

    /// A connection: an idle one, or a new one; UNAVAILABLE after the pool's wait.
    pub(super) async fn get(self: &Arc<Self>) -> Result<Conn> {
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| Error::Unavailable { message: "no PostgreSQL connection was free in time".into() })?
            .map_err(|_| Error::bug("the PostgreSQL pool closed"))?;
        loop {
            let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            match idle {
                Some(client) if client.is_closed() => continue,
                Some(client) => return Ok(Conn { client: Some(client), pool: self.clone(), _permit: permit }),
                None => break,
            }
        }
        let connecting = self.config.connect(NoTls);
        let (client, connection) = tokio::time::timeout(self.wait, connecting)
            .await
            .map_err(|_| connection_lost("connecting to PostgreSQL timed out"))?
            .map_err(pg_error)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // The error names no data (the URL and values are never in it).
                tracing::warn!(error = %e, "a PostgreSQL connection closed");
            }
        });
        Ok(Conn { client: Some(client), pool: self.clone(), _permit: permit })
    }

    /// Closes every idle connection (a reconnect after a fault starts afresh).
    pub(super) fn clear(&self) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}
