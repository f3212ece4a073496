//! Recovery from a storage fault without a restart. With PostgreSQL, a lost connection fails
//! the store the same way, and recovery is a probe on a new connection (`recover`).
//! A write that cannot be made durable (a full
//! disk, an I/O error, a failed fsync) marks the open store failed: it refuses every later write
//! with UNAVAILABLE and health reports NOT_SERVING. Every second the app probes the store's
//! directory with a durable write; once one succeeds, the fault has ended and the store is
//! reopened as after a crash: the failed store is closed (once the calls still using it are
//! done), its files are made durable as they read now (`Store::rewrite_for_reopen`), it is
//! opened again, and the index is built from it again (as at a start: its snapshot and the log
//! after it, or a rebuild; app/snapshot). From the failure to the end of the reopen,
//! every call that reads or writes the store gets UNAVAILABLE with RetryInfo: a failed store
//! may show writes that were never made durable (sled keeps a committed write in memory when
//! its log cannot be written), which the reopen drops.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::storage::postgres::{PgOptions, PgStore};
use crate::storage::{EncryptionKey, Storage, Store};

/// How long a reopen waits for the calls still using the failed store.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// The longest wait between two attempts to reopen the store.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(8);

/// Where the store is.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    /// sled in this directory (`--data-dir`).
    Sled(PathBuf),
    /// A PostgreSQL database shared with other nodes (`--postgres-url`).
    Postgres(PgOptions),
}

impl Backend {
    pub(crate) fn from_config(config: &crate::Config) -> Self {
        match &config.postgres_url {
            Some(url) => Backend::Postgres(PgOptions {
                url: url.clone(),
                pool_size: config.postgres_pool_size,
                connect_timeout: Duration::from_secs(config.postgres_connect_timeout),
                statement_timeout: Duration::from_secs(config.postgres_statement_timeout),
            }),
            None => Backend::Sled(config.data_dir.clone()),
        }
    }
}

/// Opens the configured store: at start-up, and again after a fault.
#[derive(Debug, Clone)]
pub(crate) struct StoreOpener {
    pub(crate) backend: Backend,
    pub(crate) key: Option<EncryptionKey>,
    pub(crate) catalog: super::models::ModelCatalog,
}

impl StoreOpener {
    /// Opens the store (sled: sweeping what a failed write left behind; PostgreSQL: creating
    /// or migrating its schema) and checks its embedder.
    pub(crate) fn open(&self) -> Result<Arc<dyn Storage>> {
        let store: Arc<dyn Storage> = match &self.backend {
            Backend::Sled(dir) => Arc::new(Store::open_with_key(dir, self.key.clone())?),
            Backend::Postgres(options) => Arc::new(PgStore::open(options, self.key.clone())?),
        };
        // A new store records the configured embedder; one with a single model and none of
        // those configured is refused as before models were versioned (naming both).
        let state = store.model_state()?;
        let known = state.active_embedder().ok().and_then(|a| self.catalog.index_of(a)).is_some();
        if state.generation == 0 && !known {
            store.check_embedder(&self.catalog.models[0].record)?;
        }
        self.catalog.check(&store.model_state()?)?;
        Ok(store)
    }

    /// sled: a durable write of about an image's size where the store keeps its data, which
    /// succeeds once the fault that failed the store has ended.
    fn probe(&self) -> Result<()> {
        match &self.backend {
            Backend::Sled(dir) => Store::probe_write(dir),
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// sled: makes its files durable as they read now, before it is opened again.
    fn prepare_reopen(&self) -> Result<()> {
        match &self.backend {
            Backend::Sled(dir) => Store::rewrite_for_reopen(dir),
            Backend::Postgres(_) => Ok(()),
        }
    }
}

/// The open store, or none while it is being reopened.
#[derive(Debug)]
pub(crate) struct StoreSlot(RwLock<Option<Arc<dyn Storage>>>);

fn reopening() -> Error {
    Error::Unavailable { message: "the store is being reopened after a storage fault".into() }
}

impl StoreSlot {
    pub(crate) fn new(store: Arc<dyn Storage>) -> Self {
        StoreSlot(RwLock::new(Some(store)))
    }

    /// The open store, failed or not; UNAVAILABLE while it is being reopened.
    fn get(&self) -> Result<Arc<dyn Storage>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone().ok_or_else(reopening)
    }

    /// The open store while it is healthy. A failed store is UNAVAILABLE to reads too: what
    /// it shows may include writes that were never made durable, which its reopen drops.
    pub(crate) fn healthy(&self) -> Result<Arc<dyn Storage>> {
        let store = self.get()?;
        match store.write_failure() {
            None => Ok(store),
            Some(reason) => Err(Error::Unavailable { message: format!("the store failed ({reason})") }),
        }
    }

    fn take(&self) -> Option<Arc<dyn Storage>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn set(&self, store: Arc<dyn Storage>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(store);
    }
}

impl super::App {
    /// Why writes cannot be made durable now, if so: the store failed, or is being reopened.
    pub fn write_failure(&self) -> Option<String> {
        match self.store.get() {
            Ok(store) => store.write_failure(),
            Err(e) => Some(e.to_string()),
        }
    }

    /// Reopens the store once a fault has ended: checks every `period`, and after a failed
    /// attempt waits twice as long as before (up to 8 s), so a disk that stays nearly full
    /// is not rewritten and reopened every second. Runs until its task is aborted (shutdown).
    pub async fn recover_periodically(self, period: Duration) {
        let mut wait = period;
        loop {
            tokio::time::sleep(wait).await;
            if self.write_failure().is_none() {
                wait = period;
                continue;
            }
            // Each attempt is its own task: a panic in one (sled's clean-up after an I/O error)
            // ends that attempt, not the recovery.
            let attempt = tokio::spawn({
                let app = self.clone();
                async move { app.recover().await }
            });
            let failed = match attempt.await {
                Ok(Ok(())) => false,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the store stays closed to writes: the storage fault persists");
                    true
                }
                Err(e) => {
                    tracing::error!(error = %e, "an attempt to reopen the store panicked");
                    true
                }
            };
            wait = if failed { (wait * 2).min(MAX_RETRY_WAIT) } else { period };
        }
    }

    /// One attempt. A store that can take writes again as it is (PostgreSQL, once a probe on a
    /// new connection succeeds) stays, and the index catches up from the log (writes whose
    /// commit the lost connection left unanswered are in it, or were never committed).
    /// Otherwise (sled): probe, close the failed store, open it again, rebuild the index.
    async fn recover(&self) -> Result<()> {
        if let Ok(store) = self.store.get()
            && store.is_shared()
        {
            let feed = self.feed.clone();
            super::blocking(move || {
                store.try_recover()?;
                feed.catch_up(store.as_ref())
            })
            .await?;
            tracing::info!("the PostgreSQL connection is back: writes are acknowledged again");
            return Ok(());
        }
        let opener = self.opener.clone();
        super::blocking(move || opener.probe()).await?;
        if let Some(failed) = self.store.take() {
            tracing::warn!("the storage fault has ended: reopening the store");
            // The calls still using the failed store finish first (its writes fail fast); sled
            // lets one process open a store once.
            let started = Instant::now();
            while Arc::strong_count(&failed) > 1 {
                if started.elapsed() > CLOSE_WAIT {
                    self.store.set(failed);
                    return Err(Error::Unavailable { message: "calls still use the failed store".into() });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Dropped off the runtime, and a panic in sled's clean-up (an fsync of a file that
            // saw the fault) is contained: the store is closed either way.
            super::blocking(move || {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(failed))).is_err() {
                    tracing::error!("closing the failed store panicked; opening it again anyway");
                }
                Ok(())
            })
            .await?;
        }
        let (opener, snapshots) = (self.opener.clone(), self.snapshots.clone());
        let exact_max_faces = self.index.exact_max_faces();
        let (store, index, applied, models) = super::blocking(move || {
            opener.prepare_reopen()?;
            let store = opener.open()?;
            // As at a start after a crash: the snapshot (which covers only durable entries) and
            // the log after it, or a rebuild from the records.
            let (index, applied) = snapshots.open_index(store.as_ref(), exact_max_faces)?;
            let models = store.model_state()?;
            Ok((store, index, applied, models))
        })
        .await?;
        self.index.replace_contents(index);
        // The models as on disk (those followed before the fault may be ahead of what was durable).
        self.feed.reset(applied, models);
        let (feed, reopened) = (self.feed.clone(), store.clone());
        super::blocking(move || feed.settle_models(reopened.as_ref())).await?;
        self.store.set(store);
        tracing::info!(applied, "the store is open again and the index rebuilt from it: writes are acknowledged again");
        Ok(())
    }
}
