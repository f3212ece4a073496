//! Index snapshots (STORAGE.md: start-up loads the newest snapshot and replays the log after
//! it). A start-up loads the snapshot when it is whole and its entry lies within the change log
//! (compacted <= seq <= head), then applies the log after it through the feed; otherwise it
//! rebuilds the index from the records and logs why. The log follower takes a snapshot every
//! `--index-snapshot-every` applied entries, a clean stop takes one, and the log is compacted
//! up to the snapshot. The file format is file.rs; `check` is `facevault verify`'s part.

pub mod file;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use super::{IndexFeed, rebuild_index};
use crate::domain::{FaceId, Tenant};
use crate::error::Result;
use crate::search::FaceIndex;
use crate::search::index::TenantRows;
use crate::storage::{EncryptionKey, LogBounds, STORE_DIR, Storage};
use file::SnapshotError;

/// Why a snapshot whose id the store does not record is not loaded.
const NOT_NAMED: &str = "it is not the snapshot the store recorded last (a store restored from a backup, \
                         or a crash while the snapshot was taken)";

/// Applied entries kept before the log is compacted when snapshots are off (every start-up then
/// rebuilds the index from the records, so applied entries are needed by no one).
const COMPACT_AFTER: u64 = 10_000;

/// The snapshot file of the store under `data_dir`: beside the store's own files, so it is
/// moved, backed up and removed with them.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(STORE_DIR).join("index.snapshot")
}

/// Where the index of this start came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOrigin {
    /// Loaded from the snapshot of entry `seq`, then `replayed` log entries applied.
    Snapshot { seq: u64, replayed: u64 },
    /// Rebuilt from the records, because of `reason` (no snapshot, a damaged one, ...).
    Rebuilt { reason: String },
}

#[derive(Debug, Default)]
struct State {
    /// The entry of the snapshot on disk that this process loaded or wrote; the log is
    /// compacted up to it. None: no usable snapshot.
    taken: Option<u64>,
    /// The applied entry from which the next snapshot is due.
    due: u64,
}

/// One node's snapshot policy and file. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Snapshots {
    path: PathBuf,
    /// The store's key: the snapshot holds embeddings, so it is sealed whenever the store is.
    key: Option<EncryptionKey>,
    /// Applied entries between snapshots; 0: no snapshots.
    every: u64,
    /// Held while a snapshot is taken (one at a time: the follower's and the stop's), never by
    /// the feed or a search.
    state: Arc<Mutex<State>>,
    origin: Arc<OnceLock<IndexOrigin>>,
}

/// Why the snapshot was not used, and whether that is routine (no snapshot yet, or they are off).
struct Unused {
    routine: bool,
    reason: String,
}

impl From<SnapshotError> for Unused {
    fn from(e: SnapshotError) -> Self {
        Unused { routine: matches!(e, SnapshotError::Missing), reason: e.to_string() }
    }
}

impl From<crate::Error> for Unused {
    fn from(e: crate::Error) -> Self {
        Unused { routine: false, reason: format!("the change log after it cannot be applied: {e}") }
    }
}

impl Snapshots {
    /// Snapshots at `path`, sealed with `key` (the store's), every `every` applied entries.
    pub fn new(path: PathBuf, key: Option<EncryptionKey>, every: u64) -> Self {
        Snapshots { path, key, every, state: Arc::default(), origin: Arc::default() }
    }

    /// Where this start's index came from (None before `open_index`).
    pub fn origin(&self) -> Option<&IndexOrigin> {
        self.origin.get()
    }

    /// The search index of `store` for a start-up, and the last entry it reflects: the
    /// snapshot plus the log after it, or else a rebuild from the records. Compacts the log
    /// as far as that allows. Call it while nothing writes.
    pub fn open_index(&self, store: &dyn Storage, exact_max_faces: usize) -> Result<(FaceIndex, u64)> {
        let started = Instant::now();
        let loaded = if self.every == 0 {
            if file::remove(&self.path)? {
                tracing::info!("index snapshots are off: the old snapshot is removed");
            }
            Err(Unused { routine: true, reason: "index snapshots are off".into() })
        } else {
            self.load(store, exact_max_faces)
        };
        let mut state = lock(&self.state);
        let (index, applied, origin) = match loaded {
            Ok((index, seq, applied)) => {
                (state.taken, state.due) = (Some(seq), seq.saturating_add(self.every));
                store.compact_log(seq)?;
                (index, applied, IndexOrigin::Snapshot { seq, replayed: applied - seq })
            }
            Err(Unused { routine, reason }) => {
                if routine {
                    tracing::info!(reason, "rebuilding the search index from the store");
                } else {
                    tracing::warn!(reason, "index snapshot not used: rebuilding the search index from the store");
                    // Removed, durably, before anything is written: the log may now reuse the
                    // entries it covers with other content, and it must never be loaded later.
                    file::remove(&self.path)?;
                }
                let (index, applied) = rebuild_index(store, exact_max_faces)?;
                if self.every == 0 {
                    store.compact_log(applied)?;
                }
                // Otherwise the next snapshot is due at once, so the next start need not rebuild.
                (state.taken, state.due) = (None, 0);
                (index, applied, IndexOrigin::Rebuilt { reason })
            }
        };
        let faces: usize = index.sizes().iter().map(|(_, n)| n).sum();
        let ms = started.elapsed().as_millis() as u64;
        match &origin {
            IndexOrigin::Snapshot { seq, replayed } => {
                tracing::info!(
                    faces,
                    snapshot_seq = seq,
                    replayed,
                    applied,
                    ms,
                    "search index loaded from its snapshot"
                )
            }
            IndexOrigin::Rebuilt { .. } => tracing::info!(faces, applied, ms, "search index rebuilt from the store"),
        }
        let _ = self.origin.set(origin);
        Ok((index, applied))
    }

    /// The snapshot's index with the log after it applied; its entry and the last applied.
    fn load(&self, store: &dyn Storage, exact_max_faces: usize) -> std::result::Result<(FaceIndex, u64, u64), Unused> {
        let snapshot = file::read(&self.path, self.key.as_ref())?;
        let seq = snapshot.seq;
        let bounds = store.log_bounds()?;
        if !(bounds.compacted..=bounds.head).contains(&seq) {
            return Err(Unused { routine: false, reason: outside(seq, bounds) });
        }
        if store.snapshot_id()?.as_deref() != Some(&snapshot.file_id[..]) {
            return Err(Unused { routine: false, reason: NOT_NAMED.into() });
        }
        let index = FaceIndex::import(snapshot.tenants, exact_max_faces)
            .map_err(|e| Unused { routine: false, reason: format!("the snapshot's rows are inconsistent: {e}") })?;
        // Lists and tags are not in the snapshot: read from the store now, a state at or after
        // the snapshot's entry, which the replay below brings to the log's end.
        let model = store.model_state()?.active_or_unnamed().id.clone();
        super::load_lists_and_tags(store, &index, &model)?;
        let applied = IndexFeed::new(index.clone(), seq).catch_up(store)?;
        Ok((index, seq, applied))
    }

    /// After the follower applied the log up to `applied`: takes a snapshot when one is due
    /// (and compacts the log up to it); with snapshots off, compacts what is applied once
    /// enough accumulated. Blocking.
    pub fn follow(&self, store: &dyn Storage, feed: &IndexFeed, applied: u64) -> Result<()> {
        if self.every == 0 {
            if applied >= store.log_bounds()?.compacted + COMPACT_AFTER {
                store.compact_log(applied)?;
            }
            return Ok(());
        }
        if applied >= lock(&self.state).due {
            self.take(store, feed)?;
        }
        Ok(())
    }

    /// Writes a snapshot of the index as the feed has it, unless the one on disk is of the same
    /// entry; then compacts the log up to it. Returns the entry of the new snapshot. The feed's
    /// lock is held only while the rows are copied; the file is written from the copy. Blocking.
    pub fn take(&self, store: &dyn Storage, feed: &IndexFeed) -> Result<Option<u64>> {
        if self.every == 0 {
            return Ok(None);
        }
        let mut state = lock(&self.state);
        let started = Instant::now();
        let (seq, tenants) = feed.export();
        let copy_ms = started.elapsed().as_millis() as u64;
        if state.taken == Some(seq) {
            state.due = seq.saturating_add(self.every);
            return Ok(None);
        }
        let faces: usize = tenants.iter().map(|t| t.len()).sum();
        // Every entry the snapshot reflects is durable before the snapshot is: a power cut never
        // leaves a snapshot ahead of the store.
        store.flush()?;
        let (bytes, file_id) = file::write(&self.path, self.key.as_ref(), seq, &tenants)?;
        // Named by the store before the log is compacted up to it: a crash in between leaves a
        // snapshot the store does not name (not loaded) and a log that still holds its entries.
        store.record_snapshot_id(&file_id)?;
        drop(tenants);
        // Due again only once this one is written: a failed write is retried at the next tick.
        (state.taken, state.due) = (Some(seq), seq.saturating_add(self.every));
        let compacted = store.compact_log(seq)?;
        let ms = started.elapsed().as_millis() as u64;
        tracing::info!(seq, faces, bytes, copy_ms, ms, compacted, "index snapshot written");
        Ok(Some(seq))
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn outside(seq: u64, bounds: LogBounds) -> String {
    format!(
        "the snapshot reflects entry {seq}, outside the change log (compacted up to entry {}, ends at {})",
        bounds.compacted, bounds.head
    )
}

/// What `facevault verify` found about the snapshot and the change log.
#[derive(Debug, Default)]
pub struct Check {
    /// The entry of the snapshot on disk, when one loads.
    pub snapshot: Option<u64>,
    /// Where the change log stands.
    pub bounds: LogBounds,
    /// Whether the change log was applied to something and compared with the records.
    pub replayed: bool,
    /// One line per problem found (face ids and counts only).
    pub problems: Vec<String>,
}

/// `facevault verify`: the snapshot at `path` loads (with the store's `key`) and lies within
/// the log, and the snapshot with the log after it applied equals `rebuilt` (the index rebuilt
/// from the records). Without a snapshot, a log that was never compacted is applied to an empty
/// index instead. Problems give counts and face ids, never values.
pub fn check(store: &dyn Storage, path: &Path, key: Option<&EncryptionKey>, rebuilt: &FaceIndex) -> Result<Check> {
    let bounds = store.log_bounds()?;
    let mut out = Check { bounds, ..Check::default() };
    let start = match file::read(path, key) {
        // No snapshot: the log alone need not hold the whole history (a store from before the
        // change log), so only its entries are checked, that they read.
        Err(SnapshotError::Missing) => {
            if let Err(e) = read_whole_log(store, bounds.compacted) {
                out.problems.push(format!("the change log cannot be read: {e}"));
            }
            None
        }
        Err(e) => {
            out.problems.push(format!("index snapshot: {e}"));
            None
        }
        Ok(snapshot) => {
            out.snapshot = Some(snapshot.seq);
            if store.snapshot_id()?.as_deref() != Some(&snapshot.file_id[..]) {
                out.problems.push(format!("index snapshot: {NOT_NAMED}"));
            }
            if !(bounds.compacted..=bounds.head).contains(&snapshot.seq) {
                out.problems.push(format!("index snapshot: {}", outside(snapshot.seq, bounds)));
                None
            } else {
                match FaceIndex::import(snapshot.tenants, usize::MAX) {
                    Ok(index) => Some((index, snapshot.seq, "the index snapshot with the change log after it")),
                    Err(e) => {
                        out.problems.push(format!("index snapshot: its rows are inconsistent: {e}"));
                        None
                    }
                }
            }
        }
    };
    if let Some((index, seq, what)) = start {
        match IndexFeed::new(index.clone(), seq).catch_up(store) {
            Ok(_) => {
                out.replayed = true;
                out.problems.extend(differences(rebuilt, &index).into_iter().map(|d| format!("{what}: {d}")));
            }
            Err(e) => out.problems.push(format!("{what}: the log cannot be applied: {e}")),
        }
    }
    Ok(out)
}

/// Reads (decodes, unseals) every entry of the log after `after`.
fn read_whole_log(store: &dyn Storage, mut after: u64) -> Result<()> {
    loop {
        let entries = store.read_log(after, 1024)?;
        match entries.last() {
            Some(last) => after = last.seq,
            None => return Ok(()),
        }
    }
}

/// How `actual` differs from `expected`, per tenant: faces missing, faces extra, faces with
/// another user, embedding or sketch. Counts and up to five face ids each.
pub fn differences(expected: &FaceIndex, actual: &FaceIndex) -> Vec<String> {
    let (expected, actual) = (expected.export(), actual.export());
    let mut tenants: Vec<_> = expected.iter().chain(&actual).map(|t| t.tenant.clone()).collect();
    tenants.sort();
    tenants.dedup();
    let mut out = Vec::new();
    for tenant in tenants {
        let ((want, want_rows), (have, have_rows)) = (rows_of(&expected, &tenant), rows_of(&actual, &tenant));
        let (mut missing, mut extra, mut differ) = (Vec::new(), Vec::new(), Vec::new());
        for (&face, &row) in &want_rows {
            let (Some(want), Some(have)) = (want, have) else {
                missing.push(face);
                continue;
            };
            match have_rows.get(&face) {
                None => missing.push(face),
                Some(&other) => {
                    if want.owners[row] != have.owners[other]
                        || want.row(row) != have.row(other)
                        || want.sketch(row) != have.sketch(other)
                    {
                        differ.push(face);
                    }
                }
            }
        }
        extra.extend(have_rows.keys().filter(|f| !want_rows.contains_key(f)));
        for (faces, what) in [
            (&mut missing, "faces of the store missing"),
            (&mut extra, "faces not in the store"),
            (&mut differ, "faces with another user or embedding"),
        ] {
            if faces.is_empty() {
                continue;
            }
            faces.sort();
            let first: Vec<String> = faces.iter().take(5).map(|f| format!("{:016x}", f.0)).collect();
            out.push(format!("tenant {}: {} {what} (first: {})", tenant.as_str(), faces.len(), first.join(", ")));
        }
    }
    out
}

/// A tenant's rows among `all`, and the row of each face.
fn rows_of<'a>(all: &'a [TenantRows], tenant: &Tenant) -> (Option<&'a TenantRows>, HashMap<FaceId, usize>) {
    let t = all.iter().find(|t| &t.tenant == tenant);
    let map = t.iter().flat_map(|t| t.owners.iter().enumerate().map(|(row, &(face, _))| (face, row))).collect();
    (t, map)
}

#[cfg(test)]
mod tests;
