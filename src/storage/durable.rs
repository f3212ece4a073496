//! Durable commits with group commit. sled's `flush` ends in `sync_file_range`, which neither
//! flushes the drive's cache nor the file's metadata, and sled fsyncs its log only from a
//! background thread (which the store turns off); so after sled's flush we fsync its new blob
//! files, its log file and the store's directory ourselves, blobs before the log that points at
//! them. Writers that arrive while a sync runs wait for the next one, which covers them all: one
//! sync per batch of concurrent writers, not one per write.
//!
//! A failed sync is final for this open store: after a failed fsync the kernel may have dropped
//! the dirty pages it could not write, so a later fsync that succeeds proves nothing about them
//! (and sled refuses every operation once a write of its log failed). Every waiting and later
//! write fails UNAVAILABLE, health reports NOT_SERVING, and the app reopens the store once a
//! probe write succeeds (app/recovery.rs): what the reopened store holds is what is on disk, and
//! the index is rebuilt from it. Any other failed write of the store (an image file on a full
//! disk) marks it failed the same way (`fail`).

use std::collections::HashSet;
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
    /// Why writes can no longer be made durable, once a sync failed.
    failed: Option<String>,
}

/// The group-commit point of one store.
#[derive(Debug)]
pub(crate) struct GroupSync {
    state: Mutex<State>,
    done: Condvar,
    /// sled's log file, its blob directory and the directory that holds them.
    log_file: PathBuf,
    blobs: PathBuf,
    dir: PathBuf,
    /// Blob files already fsynced (sled names them by log sequence number and never rewrites one).
    synced_blobs: Mutex<HashSet<std::ffi::OsString>>,
}

/// Clears `syncing` and wakes the waiters however the sync ends, a panic included.
struct SyncingGuard<'a>(&'a GroupSync);

impl Drop for SyncingGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.syncing = false;
        if std::thread::panicking() && state.failed.is_none() {
            state.failed = Some("a sync of the store panicked".into());
        }
        self.0.done.notify_all();
    }
}

fn not_durable(reason: &str) -> Error {
    Error::Unavailable {
        message: format!("writes cannot be made durable ({reason}); the store is reopened once the fault ends"),
    }
}

impl GroupSync {
    pub(crate) fn new(dir: PathBuf) -> Self {
        GroupSync {
            state: Mutex::default(),
            done: Condvar::new(),
            log_file: dir.join("db"),
            blobs: dir.join("blobs"),
            dir,
            synced_blobs: Mutex::default(),
        }
    }

    /// Why writes cannot be made durable, once a sync has failed.
    pub(crate) fn failure(&self) -> Option<String> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).failed.clone()
    }

    /// Refuses writes once the store failed.
    pub(crate) fn writable(&self) -> Result<()> {
        match &self.state.lock().unwrap_or_else(PoisonError::into_inner).failed {
            Some(reason) => Err(not_durable(reason)),
            None => Ok(()),
        }
    }

    /// Marks the store failed: a write could not be made (a full disk, an I/O error).
    pub(crate) fn fail(&self, reason: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.failed.is_none() {
            tracing::error!(
                reason,
                "a write of the store failed: no further write is acknowledged until it is reopened"
            );
            state.failed = Some(reason.to_owned());
        }
    }

    /// Returns once every write committed before the call is on stable storage.
    pub(crate) fn sync(&self, db: &sled::Db) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if let Some(reason) = &state.failed {
                return Err(not_durable(reason));
            }
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
            let guard = SyncingGuard(self);
            let result = self.sync_now(db);
            state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            match &result {
                Ok(()) => state.synced = state.synced.max(target),
                Err(e) => {
                    tracing::error!(error = %e, "a sync of the store failed: no further write is acknowledged");
                    state.failed = Some(e.to_string());
                }
            }
            drop(state);
            drop(guard);
            return result.map_err(|e| not_durable(&e.to_string()));
        }
    }

    fn sync_now(&self, db: &sled::Db) -> Result<()> {
        let started = std::time::Instant::now();
        db.flush().map_err(super::db_error)?;
        self.sync_new_blobs()?;
        File::open(&self.log_file)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::internal("syncing the store's log", e))?;
        super::files::sync_dir(&self.dir)?;
        crate::metrics::record_stage("fsync", started.elapsed());
        Ok(())
    }

    /// sled writes a page above about a quarter of its segment size to a blob file and never
    /// fsyncs it; the store keeps its values far below that, but should one appear, it is made
    /// durable before the log that points at it.
    fn sync_new_blobs(&self) -> Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::internal("listing sled's blobs", e)),
        };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut any = false;
        let mut present = HashSet::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::internal("listing sled's blobs", e))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                File::open(entry.path())
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::internal("syncing a blob", e))?;
                any = true;
            }
            present.insert(name);
        }
        *synced = present;
        if any {
            super::files::sync_dir(&self.blobs)?;
        }
        Ok(())
    }
}

/// Reads `path` and writes every byte back where it was, then fsyncs it (see
/// `Store::rewrite_for_reopen`). A missing file is fine (sled has not created it yet).
pub(crate) fn rewrite_in_place(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let failed = |e: std::io::Error| Error::Unavailable { message: format!("rewriting the store's files: {e}") };
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(failed(e)),
    };
    let mut buffer = vec![0u8; 8 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buffer, offset).map_err(failed)?;
        if n == 0 {
            break;
        }
        file.write_all_at(&buffer[..n], offset).map_err(failed)?;
        offset += n as u64;
    }
    file.sync_all().map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sync_fails_every_later_write_too() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path().join("store")).flush_every_ms(None).open().unwrap();
        let sync = GroupSync::new(dir.path().join("store"));
        db.insert(b"k", b"v").unwrap();
        sync.sync(&db).expect("a sync of a healthy store");
        assert!(sync.failure().is_none());
        // The log file vanishes (standing in for an fsync that fails with EIO).
        let broken = GroupSync::new(dir.path().join("elsewhere"));
        db.insert(b"k2", b"v").unwrap();
        let err = broken.sync(&db).unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }) && err.to_string().contains("reopened"), "{err}");
        // Nothing is acknowledged after it, even though the next attempt would find nothing wrong.
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        std::fs::write(dir.path().join("elsewhere/db"), b"").unwrap();
        assert!(broken.sync(&db).is_err());
        assert!(broken.failure().is_some());
    }
}
