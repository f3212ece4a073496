//! Originals and thumbnails as files beside the sled database, one per face and kind, written
//! durably before the transaction that names them: the bytes go to a temporary file that is
//! fsynced, renamed into place, and the directory is fsynced. So nothing durable in sled ever
//! points at image bytes that are not (sled's own large values go to blob files that it never
//! fsyncs; see STORAGE.md). A face's files are removed after the transaction that drops the
//! face; one left behind by a crash is an orphan that `sweep_orphans` removes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Which image of a face.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Original,
    Thumbnail,
}

impl FileKind {
    fn suffix(self) -> &'static str {
        match self {
            FileKind::Original => "orig",
            FileKind::Thumbnail => "thumb",
        }
    }
}

/// A failed file operation: UNAVAILABLE (disk full, I/O error), never a half-done write, since
/// every write is finished by a rename.
fn io_error(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| {
        tracing::error!(error = %e, "{what}");
        Error::Unavailable { message: format!("storage: {what} failed") }
    }
}

/// Fsyncs a directory, so that the entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("syncing a directory"))
}

/// Creates `dir` and any missing parents, each made durable in its parent (an entry is durable
/// only once the directory holding it is fsynced).
pub(crate) fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::internal("creating a directory", e)),
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => sync_dir(Path::new(".")),
    }
}

/// The image files of a store: `dir/<2 hex>/<hex of the record key>.<kind>`.
#[derive(Debug, Clone)]
pub(crate) struct FaceFiles {
    dir: PathBuf,
    /// Fsync each file and its directory entry as it is written (always, except in a bulk
    /// import, which syncs the whole filesystem once when it flushes: `sync_all_files`).
    sync_each: bool,
    /// A write or removal of an image file failed since the store opened: files may be left
    /// that no face names (shared by clones).
    dirty: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FaceFiles {
    /// Opens (creating) the directory; its entry in the parent is made durable.
    pub(crate) fn open(dir: PathBuf) -> Result<Self> {
        create_dir_durable(&dir)?;
        // Every shard exists, durably, before any write: a writer never relies on a shard that
        // another writer created a moment ago and has not made durable yet.
        let mut created = false;
        for shard in 0..=255u8 {
            let path = dir.join(format!("{shard:02x}"));
            if !path.is_dir() {
                fs::create_dir(&path).map_err(io_error("creating an image shard"))?;
                created = true;
            }
        }
        if created {
            sync_dir(&dir)?;
        }
        Ok(FaceFiles { dir, sync_each: true, dirty: std::sync::Arc::default() })
    }

    /// For a bulk import: files are not fsynced one by one; `sync_all_files` makes them durable.
    pub(crate) fn unsynced(self) -> Self {
        FaceFiles { sync_each: false, ..self }
    }

    /// Makes every file written so far durable at once (syncfs of the filesystem holding them):
    /// the end of a bulk import.
    pub(crate) fn sync_all_files(&self) -> Result<()> {
        let dir = File::open(&self.dir).map_err(io_error("opening the image directory"))?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs reads only the file descriptor, which `dir` keeps open.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
                return Err(io_error("syncing the image files")(std::io::Error::last_os_error()));
            }
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        dir.sync_all().map_err(io_error("syncing the image files"))
    }

    fn name(key: &[u8], kind: FileKind) -> String {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}.{}", kind.suffix())
    }

    fn shard(&self, name: &str) -> PathBuf {
        // The record key ends in the random face id: its last two hex digits spread the files.
        let shard = &name[name.find('.').map_or(0, |dot| dot.saturating_sub(2))..][..2];
        self.dir.join(shard)
    }

    fn path(&self, key: &[u8], kind: FileKind) -> PathBuf {
        let name = Self::name(key, kind);
        self.shard(&name).join(name)
    }

    /// Writes the original and the thumbnail of `key`, durably: each file is written and fsynced
    /// under a temporary name, both are renamed into place, then their directory is fsynced once.
    pub(crate) fn put_pair(&self, key: &[u8], original: &[u8], thumbnail: &[u8]) -> Result<()> {
        self.put_many(key, &[(FileKind::Original, original), (FileKind::Thumbnail, thumbnail)])
    }

    /// Writes one `kind` file of `key`, durably.
    pub(crate) fn put(&self, key: &[u8], kind: FileKind, bytes: &[u8]) -> Result<()> {
        self.put_many(key, &[(kind, bytes)])
    }

    /// Whether files that no face names may have been left behind since the store opened.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Notes that files may be left that no face names (swept at the next open).
    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Notes a failed write or removal (its leftovers are swept at the next open).
    fn noting_failure(&self, result: Result<()>) -> Result<()> {
        if result.is_err() {
            self.mark_dirty();
        }
        result
    }

    fn put_many(&self, key: &[u8], files: &[(FileKind, &[u8])]) -> Result<()> {
        self.noting_failure(self.write_files(key, files))
    }

    fn write_files(&self, key: &[u8], files: &[(FileKind, &[u8])]) -> Result<()> {
        let mut renames = Vec::with_capacity(files.len());
        for &(kind, bytes) in files {
            let name = Self::name(key, kind);
            let shard = self.shard(&name);
            let temp = shard.join(format!("{name}.tmp"));
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)
                .map_err(io_error("creating an image file"))?;
            file.write_all(bytes).map_err(io_error("writing an image file"))?;
            if self.sync_each {
                file.sync_all().map_err(io_error("syncing an image file"))?;
            }
            renames.push((temp, shard.join(&name)));
        }
        for (temp, path) in &renames {
            fs::rename(temp, path).map_err(io_error("renaming an image file"))?;
        }
        // Both files of a key share a shard (the key picks it).
        match renames.first().and_then(|(_, path)| path.parent()) {
            Some(shard) if self.sync_each => sync_dir(shard),
            Some(_) | None => Ok(()),
        }
    }

    /// The `kind` file of `key`, if there is one.
    pub(crate) fn get(&self, key: &[u8], kind: FileKind) -> Result<Option<Vec<u8>>> {
        match fs::read(self.path(key, kind)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::internal("reading an image file", e)),
        }
    }

    /// Removes both files of `key` (after the transaction that dropped the face). Missing files
    /// are fine; the removal is made durable.
    pub(crate) fn remove(&self, key: &[u8]) -> Result<()> {
        self.noting_failure(self.remove_files(key))
    }

    fn remove_files(&self, key: &[u8]) -> Result<()> {
        let mut shard = None;
        for kind in [FileKind::Original, FileKind::Thumbnail] {
            let path = self.path(key, kind);
            match fs::remove_file(&path) {
                Ok(()) => shard = path.parent().map(Path::to_path_buf),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::internal("removing an image file", e)),
            }
        }
        match shard {
            Some(dir) => sync_dir(&dir),
            None => Ok(()),
        }
    }

    /// The record keys that have at least one file, with their kinds (verification, counts).
    pub(crate) fn keys(&self) -> Result<Vec<(Vec<u8>, FileKind)>> {
        Ok(self.entries()?.into_iter().filter_map(|(_, entry)| entry).collect())
    }

    /// Removes temporary files that no rename finished: call only while no write runs (open).
    pub(crate) fn remove_partial_writes(&self) -> Result<usize> {
        let partial: Vec<PathBuf> =
            self.entries()?.into_iter().filter(|(_, entry)| entry.is_none()).map(|(path, _)| path).collect();
        for path in &partial {
            fs::remove_file(path).map_err(io_error("removing a partial image file"))?;
        }
        Ok(partial.len())
    }

    /// Every file: its path, and its key and kind (`None` for a temporary file).
    #[expect(clippy::type_complexity, reason = "a private listing helper")]
    fn entries(&self) -> Result<Vec<(PathBuf, Option<(Vec<u8>, FileKind)>)>> {
        let mut out = Vec::new();
        let shards = match fs::read_dir(&self.dir) {
            Ok(shards) => shards,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::internal("listing the image directory", e)),
        };
        for shard in shards {
            let shard = shard.map_err(io_error("listing the image directory"))?.path();
            for entry in fs::read_dir(&shard).map_err(io_error("listing an image shard"))? {
                let path = entry.map_err(io_error("listing an image shard"))?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
                if name.ends_with(".tmp") {
                    // A write cut short before its rename (or one in flight): never referenced.
                    out.push((path.clone(), None));
                    continue;
                }
                let Some((hex, suffix)) = name.split_once('.') else { continue };
                let kind = match suffix {
                    "orig" => FileKind::Original,
                    "thumb" => FileKind::Thumbnail,
                    _ => continue,
                };
                if let Some(key) = parse_hex(hex) {
                    out.push((path.clone(), Some((key, kind))));
                }
            }
        }
        Ok(out)
    }
}

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_list_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let files = FaceFiles::open(dir.path().join("faces")).unwrap();
        let key = b"tenant\0\x01\x02\x03\x04\x05\x06\x07\x08".to_vec();
        assert_eq!(files.get(&key, FileKind::Original).unwrap(), None);
        files.put(&key, FileKind::Original, b"original").unwrap();
        files.put(&key, FileKind::Thumbnail, b"thumb").unwrap();
        assert_eq!(files.get(&key, FileKind::Original).unwrap().as_deref(), Some(&b"original"[..]));
        assert_eq!(files.get(&key, FileKind::Thumbnail).unwrap().as_deref(), Some(&b"thumb"[..]));
        // A partial write left by a crash is never listed, and removed when asked.
        let shard = files.path(&key, FileKind::Original).parent().unwrap().to_path_buf();
        std::fs::write(shard.join("00.orig.tmp"), b"partial").unwrap();
        let mut listed = files.keys().unwrap();
        listed.sort_by_key(|(_, kind)| *kind == FileKind::Thumbnail);
        assert_eq!(listed, vec![(key.clone(), FileKind::Original), (key.clone(), FileKind::Thumbnail)]);
        assert_eq!(files.remove_partial_writes().unwrap(), 1);
        assert!(!shard.join("00.orig.tmp").exists());
        files.remove(&key).unwrap();
        assert!(files.keys().unwrap().is_empty());
        files.remove(&key).unwrap();
    }
}
