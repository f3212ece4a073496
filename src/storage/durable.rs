//! Durable commits with group commit. sled's `flush` ends in `sync_file_range`, which neither
//! flushes the drive's cache nor the file's metadata, and sled fsyncs its log only from a
//! background thread every 500 ms; so after sled's flush we fsync its log file and the store's
//! directory ourselves. Writers that arrive while a sync runs wait for the next one, which covers
//! them all: one sync per batch of concurrent writers, not one per write.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, PoisonError};

use crate::error::{Error, Result};

#[derive(Debug, Default)]
struct State {
    /// Writes that asked to be made durable so far (each one's ticket).
    requested: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    /// A sync is running.
    syncing: bool,
}

/// The group-commit point of one store.
#[derive(Debug)]
pub(crate) struct GroupSync {
    state: Mutex<State>,
    done: Condvar,
    /// sled's log file and the directory that holds it.
    log_file: PathBuf,
    dir: PathBuf,
}

impl GroupSync {
    pub(crate) fn new(dir: PathBuf) -> Self {
        GroupSync { state: Mutex::default(), done: Condvar::new(), log_file: dir.join("db"), dir }
    }

    /// Returns once every write committed before the call is on stable storage.
    pub(crate) fn sync(&self, db: &sled::Db) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.synced >= ticket {
                return Ok(());
            }
            if state.syncing {
                state = self.done.wait(state).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.syncing = true;
            let target = state.requested;
            drop(state);
            let result = self.sync_now(db);
            state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.syncing = false;
            if result.is_ok() {
                state.synced = state.synced.max(target);
            }
            self.done.notify_all();
            // On failure the waiters try a sync of their own, and fail or succeed by it.
            return result;
        }
    }

    fn sync_now(&self, db: &sled::Db) -> Result<()> {
        let started = std::time::Instant::now();
        db.flush().map_err(super::db_error)?;
        File::open(&self.log_file)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::internal("syncing the store's log", e))?;
        super::files::sync_dir(&self.dir)?;
        crate::metrics::record_stage("fsync", started.elapsed());
        Ok(())
    }
}
