//! `Store`: sled as the source of truth for users, faces, embeddings and re-enrollment tokens,
//! with originals and thumbnails in durable files beside it (files.rs). Synchronous (call it
//! through `app::blocking`); every invariant that spans trees is one sled transaction; writes are
//! on stable storage before they are acknowledged (durable.rs: fsync, with group commit).
//! Originals, thumbnails and embeddings are sealed with AES-256-GCM when a key is given (seal.rs).

mod backend;
mod durable;
mod embedder;
mod export;
mod faces;
mod files;
pub mod keys;
pub(crate) mod lists;
pub(crate) mod log;
pub mod models;
mod pending;
pub mod postgres;
mod reads;
mod records;
pub(crate) mod reindex;
pub mod requests;
mod seal;
mod users;
mod verify;

use std::path::Path;

use prost::Message;

use crate::domain::{FaceId, Tenant};
use crate::error::{Error, Result};
pub use backend::{Storage, TenantGuard};
pub use embedder::EmbedderRecord;
/// The raw export and the tallies of `facevault migrate`.
pub(crate) use export::{Imported, Tally};
pub use faces::{NewFace, Replace, StoredEmbedding};
/// Durable directory entries (the index snapshot, app/snapshot, is written like the image files).
pub(crate) use files::sync_dir;
pub use lists::{NewListEntry, StoredListEntry, UserTags};
pub use log::{Change, LogBounds, LogEntry};
pub use models::{ModelEmbedding, ModelState, ReindexState};
pub use pending::Pending;
pub use reads::{FaceEmbeddings, UserKey};
pub use requests::{Recorded, RequestStamp, SeenRequest};
pub use seal::EncryptionKey;
/// A face with a distinct embedding per seed (unit tests outside the storage module).
#[cfg(test)]
pub(crate) use seal::tests::new_face as test_face;
pub use users::{TokenGrant, UserPatch};
pub use verify::Integrity;

/// On-disk layout version; a store of another version is refused at open. 2: originals and
/// thumbnails are files (a version 1 store, which kept them in sled, is migrated at open). The
/// directory stays `v1`: the layout of the sled trees did not change.
pub const SCHEMA_VERSION: u32 = 2;

/// In the store's directory while it is closed cleanly (see `Store::close`).
const CLEAN_CLOSE: &str = "closed-cleanly";

/// The directory under the data directory that holds the store.
pub const STORE_DIR: &str = "v1";

/// The sled database and its trees.
#[derive(Debug, Clone)]
pub struct Store {
    /// The versioned directory (`dir/v1`), for messages.
    path: std::path::PathBuf,
    db: sled::Db,
    users: sled::Tree,
    external_ids: sled::Tree,
    faces: sled::Tree,
    embeddings: sled::Tree,
    /// The second embedding slot (models.rs): another model's embeddings during a reindex.
    embeddings_1: sled::Tree,
    /// Store-wide records (schema version, key check, models).
    meta: sled::Tree,
    tokens: sled::Tree,
    /// Request ids of idempotent writes (requests.rs).
    requests: sled::Tree,
    /// The change log (log.rs).
    log: sled::Tree,
    /// Face lists, their entries, and each list's entries in order (lists.rs).
    face_lists: sled::Tree,
    list_entries: sled::Tree,
    list_members: sled::Tree,
    /// Originals and thumbnails.
    files: files::FaceFiles,
    /// Where writes become durable (shared by the clones of this store).
    sync: std::sync::Arc<durable::GroupSync>,
    /// Flush before a write returns (always, except in a bulk import).
    durable_writes: bool,
    /// Swept at open, or opened after a clean close: only then may `close` mark it clean.
    swept: bool,
    /// Seals the values of `images`, `thumbnails` and `embeddings`; `None`: stored plain.
    encryption: Option<EncryptionKey>,
}

/// How long opening a store waits for a lock that sled's threads of a dropped handle still hold
/// (another process holding it keeps it: the open then fails).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A sled error: an I/O error (disk full, a failing disk; sled keeps returning it once its log
/// could not be written) is UNAVAILABLE, anything else INTERNAL.
pub(crate) fn db_error(err: sled::Error) -> Error {
    match err {
        sled::Error::Io(e) => {
            tracing::error!(error = %e, "storage I/O error");
            Error::Unavailable { message: "storage I/O error: writes cannot be made durable".into() }
        }
        other @ (sled::Error::CollectionNotFound(_)
        | sled::Error::Unsupported(_)
        | sled::Error::ReportableBug(_)
        | sled::Error::Corruption { .. }) => Error::internal("storage", other),
    }
}

impl Store {
    /// Opens (or creates) an unencrypted store under `dir/v1` and checks its schema version.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, true, None)?.swept()
    }

    /// Opens (or creates) the store under `dir/v1`, encrypted with `key` when one is given. A
    /// store is tied to its key at creation: see `check_encryption` for what is refused.
    pub fn open_with_key(dir: &Path, key: Option<EncryptionKey>) -> Result<Self> {
        Self::open_with(dir, true, key)?.swept()
    }

    /// Opens the store as it is, for `facevault verify`: image files that no face names are
    /// left in place (and reported by `verify`) instead of being swept.
    pub fn open_unswept(dir: &Path, key: Option<EncryptionKey>) -> Result<Self> {
        Self::open_with(dir, true, key)
    }

    /// Opens an unencrypted store for a bulk import: writes (records and image files) are not
    /// flushed one by one, so a crash may lose any of them until `flush` returns (it syncs the
    /// filesystem once). Never used by the server.
    pub fn open_for_import(dir: &Path) -> Result<Self> {
        Self::open_with(dir, false, None)?.swept()
    }

    fn open_with(dir: &Path, durable_writes: bool, encryption: Option<EncryptionKey>) -> Result<Self> {
        let path = dir.join(STORE_DIR);
        files::create_dir_durable(&path)?;
        // No background flusher: every write is made durable by `commit` (durable.rs), and a
        // flusher thread would both fsync at moments nothing orders and keep the directory's
        // lock for a while after the store is dropped.
        let config = sled::Config::new()
            .path(&path)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .segment_size(segment_size(&path));
        // sled's own threads let go of the directory's lock shortly after the last handle of a
        // store is dropped: a reopen in this process (recovery, tests) waits for it, briefly.
        let started = std::time::Instant::now();
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && started.elapsed() < LOCK_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => break opened.map_err(db_error)?,
            }
        };
        // sled's files exist now: make them and their entries durable (sled writes its config
        // without an fsync, and fsyncs no directory).
        for file in ["conf", "db"] {
            std::fs::File::open(path.join(file))
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::internal("syncing the store's files", e))?;
        }
        for sub in ["blobs"] {
            if path.join(sub).is_dir() {
                files::sync_dir(&path.join(sub))?;
            }
        }
        files::sync_dir(&path)?;
        let meta = db.open_tree(keys::META).map_err(db_error)?;
        let face_files = files::FaceFiles::open(path.join("faces"))?;
        let tree = |name: &str| db.open_tree(name).map_err(db_error);
        let store = Store {
            users: tree(keys::USERS)?,
            external_ids: tree(keys::EXTERNAL_IDS)?,
            faces: tree(keys::FACES)?,
            embeddings: tree(keys::EMBEDDINGS)?,
            embeddings_1: tree(keys::EMBEDDINGS_1)?,
            meta: meta.clone(),
            tokens: tree(keys::TOKENS)?,
            requests: tree(keys::REQUESTS)?,
            log: tree(keys::CHANGE_LOG)?,
            face_lists: tree(keys::FACE_LISTS)?,
            list_entries: tree(keys::LIST_ENTRIES)?,
            list_members: tree(keys::LIST_MEMBERS)?,
            files: if durable_writes { face_files } else { face_files.unsynced() },
            sync: std::sync::Arc::new(durable::GroupSync::new(path.clone())),
            durable_writes,
            swept: false,
            encryption,
            db,
            path: path.clone(),
        };
        store.check_schema(&meta, &path)?;
        store.check_encryption(&meta, &path)?;
        Ok(store)
    }

    /// Sweeps the image files no face names, unless the store was closed cleanly (`close`):
    /// then there are none, and the sweep (which lists every image file: 10 s at 1M faces) is
    /// skipped. The mark of a clean close is removed durably first, so a crash of this run
    /// leads to a sweep at the next open.
    fn swept(mut self) -> Result<Self> {
        self.swept = true;
        let marker = self.path.join(CLEAN_CLOSE);
        if marker.exists() {
            std::fs::remove_file(&marker).map_err(|e| Error::internal("removing the clean-close mark", e))?;
            files::sync_dir(&self.path)?;
            tracing::info!("the store was closed cleanly: no image files to sweep");
            return Ok(self);
        }
        self.sweep_orphan_files()?;
        Ok(self)
    }

    /// Makes every write durable and, when no image file write or removal failed since the
    /// open, marks the store closed cleanly (the next open skips the sweep). At a clean stop.
    pub fn close(&self) -> Result<()> {
        self.flush()?;
        if !self.swept {
            return Ok(()); // opened as it was (`facevault verify`): what it holds is unknown
        }
        if self.files.is_dirty() {
            tracing::warn!("an image file write or removal failed: the next open sweeps the image files");
            return Ok(());
        }
        let marker = self.path.join(CLEAN_CLOSE);
        std::fs::File::create(&marker)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::Unavailable { message: format!("marking the store closed: {e}") })?;
        files::sync_dir(&self.path)
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<()> {
        if !self.durable_writes {
            // A bulk import wrote its image files without an fsync each.
            self.files.sync_all_files()?;
        }
        self.sync.sync(&self.db)
    }

    /// Why writes can no longer be made durable (a write or a sync failed), if so: the server
    /// stops acknowledging writes and reports NOT_SERVING until the store is reopened.
    pub fn write_failure(&self) -> Option<String> {
        self.sync.failure()
    }

    /// Runs a write: refused once the store failed; see `watch` for what marks it failed.
    pub(super) fn write<T>(&self, write: impl FnOnce() -> Result<T>) -> Result<T> {
        self.sync.writable()?;
        self.watch(write())
    }

    /// Passes `result` on; an UNAVAILABLE (a sled I/O error, which sled then returns for every
    /// operation, reads included, until the store is reopened; a failed image write or sync)
    /// marks the store failed, whatever operation met it: a read, the log's compaction, a write.
    pub(super) fn watch<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(Error::Unavailable { message }) = &result {
            self.sync.fail(message);
        }
        result
    }

    /// Writes, fsyncs and removes a file of 16 MiB (two of sled's segments, many images) in the
    /// store's directory under `dir`: succeeds once a fault that failed the store (a full disk,
    /// an I/O error) has ended, with room for more than the next write.
    pub fn probe_write(dir: &Path) -> Result<()> {
        use std::io::Write;
        let path = dir.join(STORE_DIR).join("probe.tmp");
        let chunk = vec![0u8; 1 << 20];
        let written = std::fs::File::create(&path).and_then(|mut f| {
            (0..16).try_for_each(|_| f.write_all(&chunk))?;
            f.sync_all()
        });
        let _ = std::fs::remove_file(&path);
        written.map_err(|e| Error::Unavailable { message: format!("a probe write of the store failed: {e}") })?;
        files::sync_dir(&dir.join(STORE_DIR))
    }

    /// Before a store that failed is opened again: rewrites sled's files (its log, config and
    /// blob files) in place with what reading them returns, and fsyncs them and their
    /// directories. After a failed fsync, Linux may keep pages it could not write in its cache,
    /// marked clean: they read back as written but never reach the disk, and the log that sled
    /// appends after them would follow a hole at the next power cut. Rewritten, they are dirty
    /// again and this fsync makes them durable; where the kernel dropped them instead, the
    /// rewrite is of what the disk holds. The image files need none of this: each is fsynced
    /// before a record names it, and a write whose fsync failed was never committed.
    pub fn rewrite_for_reopen(dir: &Path) -> Result<()> {
        let path = dir.join(STORE_DIR);
        let mut files = vec![path.join("conf"), path.join("db")];
        if let Ok(blobs) = std::fs::read_dir(path.join("blobs")) {
            files.extend(blobs.flatten().map(|e| e.path()));
        }
        for file in &files {
            durable::rewrite_in_place(file)?;
        }
        if path.join("blobs").is_dir() {
            files::sync_dir(&path.join("blobs"))?;
        }
        files::sync_dir(&path)
    }

    /// Ends a write: makes it durable unless this is a bulk import.
    fn commit(&self) -> Result<()> {
        if self.durable_writes { self.flush() } else { Ok(()) }
    }

    /// A committed face write whose entry is `seq`: made durable by group commit, after which
    /// the image files of the faces it dropped are removed. A file that cannot be removed is
    /// only logged: nothing names it any more, and the sweep at the next start removes it.
    fn pending<T>(&self, value: T, seq: u64, removed: Vec<(Tenant, FaceId)>) -> Pending<T> {
        let mut removal = Removal { store: self.clone(), faces: removed };
        Pending::new(value, seq, move || {
            removal.store.commit()?;
            for (tenant, face) in std::mem::take(&mut removal.faces) {
                if let Err(e) = removal.store.files.remove(&keys::face_key(&tenant, face)) {
                    tracing::warn!(error = %e, face = %face, "an image file of a deleted face stays until the next start");
                }
            }
            Ok(())
        })
    }

    /// Removes image files that no face record names: what a crash between writing a face's
    /// files and committing (or between committing a delete and removing them) leaves behind.
    fn sweep_orphan_files(&self) -> Result<usize> {
        let mut swept = self.files.remove_partial_writes()?;
        for (key, _) in self.files.keys()? {
            if !self.faces.contains_key(&key).map_err(db_error)? {
                self.files.remove(&key)?;
                swept += 1;
            }
        }
        if swept > 0 {
            tracing::info!(swept, "removed image files of faces that were never committed or already deleted");
        }
        Ok(swept)
    }

    /// Version 1 kept originals and thumbnails in sled (where large values become blob files
    /// that sled never fsyncs): move them into files, durably, then out of sled.
    fn migrate_images_out_of_sled(&self) -> Result<()> {
        let mut moved = 0;
        for (name, kind) in [(keys::IMAGES, files::FileKind::Original), (keys::THUMBNAILS, files::FileKind::Thumbnail)]
        {
            let tree = self.db.open_tree(name).map_err(db_error)?;
            for entry in tree.iter() {
                let (key, value) = entry.map_err(db_error)?;
                // Moved as stored: a sealed value keeps its associated data (tree name and key).
                self.files.put(&key, kind, &value)?;
                moved += 1;
            }
            self.flush()?;
            tree.clear().map_err(db_error)?;
            self.flush()?;
            self.db.drop_tree(name).map_err(db_error)?;
        }
        tracing::info!(moved, "store migrated to schema version 2: originals and thumbnails are files");
        Ok(())
    }

    /// Records the schema version in a new store, migrates a version 1 store, refuses others.
    fn check_schema(&self, meta: &sled::Tree, path: &Path) -> Result<()> {
        let version = meta.get(keys::SCHEMA_VERSION_KEY).map_err(db_error)?;
        let version = match version {
            None => None,
            Some(v) => {
                Some(<[u8; 4]>::try_from(v.as_ref()).map(u32::from_be_bytes).map_err(|_| Error::Unavailable {
                    message: format!("the store at {} has a malformed schema version", path.display()),
                })?)
            }
        };
        match version {
            Some(SCHEMA_VERSION) => Ok(()),
            None | Some(1) => {
                if version == Some(1) {
                    self.migrate_images_out_of_sled()?;
                }
                meta.insert(keys::SCHEMA_VERSION_KEY, &SCHEMA_VERSION.to_be_bytes()).map_err(db_error)?;
                self.flush()
            }
            Some(other) => Err(Error::Unavailable {
                message: format!(
                    "the store at {} has schema version {other}, this build reads {SCHEMA_VERSION} (and migrates 1)",
                    path.display()
                ),
            }),
        }
    }

    /// Number of entries per tree (checks that nothing is left behind).
    pub fn tree_sizes(&self) -> Vec<(&'static str, usize)> {
        vec![
            (keys::USERS, self.users.len()),
            (keys::EXTERNAL_IDS, self.external_ids.len()),
            (keys::FACES, self.faces.len()),
            (keys::EMBEDDINGS, self.embeddings.len()),
            (keys::EMBEDDINGS_1, self.embeddings_1.len()),
            (keys::IMAGES, self.file_count(files::FileKind::Original)),
            (keys::THUMBNAILS, self.file_count(files::FileKind::Thumbnail)),
            (keys::TOKENS, self.tokens.len()),
            (keys::REQUESTS, self.requests.len()),
            (keys::CHANGE_LOG, self.log.len()),
            (keys::FACE_LISTS, self.face_lists.len()),
            (keys::LIST_ENTRIES, self.list_entries.len()),
            (keys::LIST_MEMBERS, self.list_members.len()),
        ]
    }

    fn file_count(&self, kind: files::FileKind) -> usize {
        self.files.keys().map_or(0, |keys| keys.iter().filter(|(_, k)| *k == kind).count())
    }

    /// Every raw key and value of a tree, sealed values as stored (tests scan them for leftovers
    /// and for plaintext).
    pub fn raw_entries(&self, tree: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let kind = match tree {
            keys::IMAGES => Some(files::FileKind::Original),
            keys::THUMBNAILS => Some(files::FileKind::Thumbnail),
            _ => None,
        };
        if let Some(kind) = kind {
            let mut out = Vec::new();
            for (key, _) in self.files.keys()?.into_iter().filter(|(_, k)| *k == kind) {
                let value = self.files.get(&key, kind)?.unwrap_or_default();
                out.push((key, value));
            }
            return Ok(out);
        }
        let tree = self.db.open_tree(tree).map_err(db_error)?;
        tree.iter().map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(db_error)).collect()
    }
}

/// The image files a committed write dropped, removed once it is durable. Dropped with faces
/// left (the write was never made durable: its sync failed, or a panic), it marks the files
/// dirty, so the next open sweeps them.
struct Removal {
    store: Store,
    faces: Vec<(Tenant, FaceId)>,
}

impl Drop for Removal {
    fn drop(&mut self) {
        if !self.faces.is_empty() {
            self.store.files.mark_dirty();
        }
    }
}

/// sled's segment size: 8 MiB for a new store, so that no page of ours comes near the quarter
/// of a segment above which sled writes a page to a blob file it never fsyncs (a leaf of 17 users
/// with the largest metadata allowed is well under 1 MiB); a store created with sled's default
/// (512 KiB) keeps it, since sled refuses to change it.
fn segment_size(path: &Path) -> usize {
    const NEW_STORES: usize = 8 << 20;
    // sled's conf is text lines followed by a binary checksum.
    let Ok(conf) = std::fs::read(path.join("conf")) else { return NEW_STORES };
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|line| line.strip_prefix("segment_size: ")?.trim().parse().ok())
        .unwrap_or(NEW_STORES)
}

fn decode<M: Message + Default>(bytes: &[u8], what: &'static str) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::internal(what, e))
}

/// `N` bytes from the operating system's CSPRNG (ids, tokens).
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| Error::internal("random bytes", std::io::Error::other(e.to_string())))?;
    Ok(bytes)
}

/// A random non-zero u64 for ids.
pub fn random_id() -> Result<u64> {
    Ok(u64::from_le_bytes(random_bytes()?).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FaceId, Tenant, User};

    #[test]
    fn a_version_1_store_is_migrated_with_its_images_moved_into_files() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = Tenant::new("t").unwrap();
        let face = {
            let store = Store::open(dir.path()).unwrap();
            let user = store.create_user(&tenant, User::unenrolled("u", std::time::SystemTime::now()), None).unwrap();
            let new = seal::tests::new_face(user.id, 7, 0.3);
            store.put_face(&tenant, &new, Replace::Nothing, 5, None).unwrap();
            // Turn it into what version 1 wrote: images in sled trees, schema version 1.
            let key = keys::face_key(&tenant, new.face.id);
            for (name, kind) in
                [(keys::IMAGES, files::FileKind::Original), (keys::THUMBNAILS, files::FileKind::Thumbnail)]
            {
                let bytes = store.files.get(&key, kind).unwrap().unwrap();
                store.db.open_tree(name).unwrap().insert(&key, bytes).unwrap();
            }
            store.files.remove(&key).unwrap();
            store.db.open_tree(keys::META).unwrap().insert(keys::SCHEMA_VERSION_KEY, &1u32.to_be_bytes()).unwrap();
            store.flush().unwrap();
            new
        };
        let store = Store::open(dir.path()).unwrap();
        let (id, user) = (face.face.id, face.face.user_id);
        assert_eq!(store.face_image(&tenant, id, false).unwrap().unwrap(), face.original);
        assert_eq!(store.face_image(&tenant, id, true).unwrap().unwrap(), face.thumbnail);
        assert!(!store.db.tree_names().iter().any(|n| n.as_ref() == keys::IMAGES.as_bytes()), "the old tree is gone");
        assert!(store.verify(5).unwrap().problems.is_empty());
        assert_eq!(store.get_user(&tenant, user).unwrap().unwrap().face_ids, vec![id]);
        drop(store);
        // A later version is refused, naming both.
        let store = Store::open(dir.path()).unwrap();
        store.db.open_tree(keys::META).unwrap().insert(keys::SCHEMA_VERSION_KEY, &9u32.to_be_bytes()).unwrap();
        store.flush().unwrap();
        drop(store);
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("schema version 9") && err.contains("reads 2"), "{err}");
    }

    #[test]
    fn only_a_store_closed_cleanly_skips_the_sweep_of_image_files() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = Tenant::new("t").unwrap();
        let orphan = keys::face_key(&tenant, FaceId(99));
        let marker = dir.path().join(STORE_DIR).join(CLEAN_CLOSE);
        {
            let store = Store::open(dir.path()).unwrap();
            let user = store.create_user(&tenant, User::unenrolled("u", std::time::SystemTime::now()), None).unwrap();
            store.put_face(&tenant, &seal::tests::new_face(user.id, 7, 0.3), Replace::Nothing, 5, None).unwrap();
            // What a crash between an image write and its transaction leaves.
            store.files.put(&orphan, files::FileKind::Original, b"orphan").unwrap();
        }
        // Dropped without `close` (a crash): the next open sweeps.
        let store = Store::open(dir.path()).unwrap();
        assert!(store.files.get(&orphan, files::FileKind::Original).unwrap().is_none(), "swept");
        store.close().unwrap();
        assert!(marker.exists(), "a clean close is marked");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(!marker.exists(), "the mark is gone once the store is open again");
        assert_eq!(
            store.get_user(&tenant, store.list_users(&tenant, None, 1).unwrap()[0].id).unwrap().unwrap().face_ids.len(),
            1
        );
        assert!(store.verify(5).unwrap().problems.is_empty());
    }

    #[test]
    fn new_stores_get_large_segments_and_old_ones_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conf =
            String::from_utf8_lossy(&std::fs::read(dir.path().join(STORE_DIR).join("conf")).unwrap()).into_owned();
        assert!(conf.contains("segment_size: 8388608"), "{conf}");
        let old = tempfile::tempdir().unwrap();
        drop(sled::Config::new().path(old.path().join(STORE_DIR)).open().unwrap());
        drop(Store::open(old.path()).expect("a store made with sled's default segment size opens"));
        let conf =
            String::from_utf8_lossy(&std::fs::read(old.path().join(STORE_DIR).join("conf")).unwrap()).into_owned();
        assert!(conf.contains("segment_size: 524288"), "{conf}");
    }
}
