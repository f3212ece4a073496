//! The index snapshot file: every tenant's rows of the search index and the change-log entry
//! they reflect, read back in bulk at start-up instead of rebuilding the index from every record.
//! Written to a temporary file, fsynced, renamed into place, directory fsynced: a snapshot on
//! disk is whole or absent. Read back only when its checksum holds (and, sealed, every chunk
//! opens). Errors name no face and no value.
//!
//! Layout, integers little-endian:
//! - header, 64 bytes: magic `FVINDEX\0`, version u32, flags u32 (bit 0: sealed), seq u64,
//!   `EMBEDDING_DIM` u32, sketch words u32, file id (16 random bytes), fingerprint u64 (of the
//!   sketch transform and the f16 rounding: rows made by other code are not loaded), 8 zeros;
//! - body: tenants u32; per tenant: name length u16, name, rows u64, then (face u64, user u64)
//!   per row, the f16 bits (u16 x `EMBEDDING_DIM`) per row, the sketch (u64 x `WORDS`) per row;
//! - sha256 of header and body.
//!
//! In a plain store body and digest follow the header as they are. In an encrypted store they
//! are cut into chunks of `CHUNK` bytes (the last one shorter), each written as `length u32,
//! nonce, AES-256-GCM ciphertext, tag` with `header, chunk index u64, last u8` as associated
//! data: a chunk reordered, dropped, taken from another snapshot, or a file cut at a chunk
//! boundary does not open, and no embedding reaches the disk in plain text (not even in the
//! temporary file).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::domain::{EMBEDDING_DIM, FaceId, Tenant, UserId};
use crate::error::{Error, Result};
use crate::search::index::TenantRows;
use crate::search::similarity::to_f16_bits;
use crate::search::sketch::{self, WORDS};
use crate::storage::{EncryptionKey, random_bytes, sync_dir};

const MAGIC: &[u8; 8] = b"FVINDEX\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 64;
/// Header flag: the body is sealed.
const SEALED: u32 = 1;
/// Plaintext bytes of a sealed chunk: large enough that the per-chunk cost vanishes, small
/// enough that writer and reader buffer one chunk.
const CHUNK: usize = 4 << 20;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const DIGEST_LEN: usize = 32;
/// Body bytes of one row; bounds the row count a (corrupt) file may make the reader allocate.
const ROW_BYTES: u64 = (16 + 2 * EMBEDDING_DIM + 8 * WORDS) as u64;

/// Why a snapshot was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("there is no snapshot")]
    Missing,
    #[error("the snapshot cannot be read: {0}")]
    Io(#[from] std::io::Error),
    #[error("the snapshot is malformed: {0}")]
    Malformed(&'static str),
    #[error("the snapshot was written by another version or build (format, dimensions, sketch transform)")]
    Incompatible,
    #[error("the snapshot fails its checksum (corrupt)")]
    Checksum,
    #[error("the snapshot does not open with the store's key (another key, or tampered with)")]
    Unauthentic,
    #[error("the snapshot is sealed but the store is not encrypted")]
    SealedInPlainStore,
    #[error("the snapshot is not sealed but the store is encrypted")]
    PlainInEncryptedStore,
}

/// What a snapshot file holds.
#[derive(Debug)]
pub struct Snapshot {
    /// The last change-log entry the rows reflect.
    pub seq: u64,
    /// Every tenant's rows, as `FaceIndex::export` made them.
    pub tenants: Vec<TenantRows>,
    /// Size of the file.
    pub bytes: u64,
    /// The random id of this file (the store records the id of the snapshot it took last).
    pub file_id: [u8; 16],
}

/// The header's check that the rows were made by the same sketch transform and f16 rounding as
/// this build's (both are code, not data).
fn fingerprint() -> u64 {
    let probe: Vec<f32> = (0..EMBEDDING_DIM).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
    let mut hash = Sha256::new();
    for word in sketch::sketch(&probe) {
        hash.update(word.to_le_bytes());
    }
    for bits in to_f16_bits(&probe) {
        hash.update(bits.to_le_bytes());
    }
    u64::from_le_bytes(hash.finalize()[..8].try_into().expect("a sha256 has 8 bytes"))
}

fn header(seq: u64, sealed: bool, file_id: [u8; 16]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(if sealed { SEALED } else { 0 }).to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..28].copy_from_slice(&(EMBEDDING_DIM as u32).to_le_bytes());
    h[28..32].copy_from_slice(&(WORDS as u32).to_le_bytes());
    h[32..48].copy_from_slice(&file_id);
    h[48..56].copy_from_slice(&fingerprint().to_le_bytes());
    h
}

/// The seq and whether the body is sealed, from a header this build can read.
fn parse_header(h: &[u8; HEADER_LEN]) -> std::result::Result<(u64, bool), SnapshotError> {
    let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
    if &h[..8] != MAGIC {
        return Err(SnapshotError::Malformed("not an index snapshot"));
    }
    if u32_at(8) != VERSION
        || u32_at(24) as usize != EMBEDDING_DIM
        || u32_at(28) as usize != WORDS
        || u64_at(48) != fingerprint()
    {
        return Err(SnapshotError::Incompatible);
    }
    let sealed = match u32_at(12) {
        0 => false,
        SEALED => true,
        _ => return Err(SnapshotError::Malformed("unknown flags")),
    };
    Ok((u64_at(16), sealed))
}

/// Associated data of a sealed chunk.
fn chunk_aad(header: &[u8; HEADER_LEN], index: u64, last: bool) -> [u8; HEADER_LEN + 9] {
    let mut aad = [0u8; HEADER_LEN + 9];
    aad[..HEADER_LEN].copy_from_slice(header);
    aad[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&index.to_le_bytes());
    aad[HEADER_LEN + 8] = u8::from(last);
    aad
}

/// The temporary file a snapshot is written to before its rename.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn write_error(e: std::io::Error) -> Error {
    Error::internal("writing the index snapshot", e)
}

/// Writes the body, hashing it, and sealing it chunk by chunk when a key is given.
struct Sink<'k> {
    file: File,
    key: Option<&'k EncryptionKey>,
    header: [u8; HEADER_LEN],
    hash: Sha256,
    buf: Vec<u8>,
    chunks: u64,
}

impl Sink<'_> {
    /// Appends body bytes (hashed).
    fn put(&mut self, data: &[u8]) -> Result<()> {
        self.hash.update(data);
        self.push(data)
    }

    fn push(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.buf.len() == CHUNK {
                self.flush_chunk(false)?;
            }
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    /// Appends `values` as little-endian bytes, a batch at a time.
    fn put_words<const N: usize, T: Copy>(&mut self, values: &[T], bytes: impl Fn(T) -> [u8; N]) -> Result<()> {
        let mut out = Vec::with_capacity(64 * 1024);
        for batch in values.chunks(64 * 1024 / N) {
            out.clear();
            out.extend(batch.iter().flat_map(|&v| bytes(v)));
            self.put(&out)?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self, last: bool) -> Result<()> {
        match self.key {
            None => self.file.write_all(&self.buf).map_err(write_error)?,
            Some(key) => {
                let aad = chunk_aad(&self.header, self.chunks, last);
                let (nonce, tag) = key.seal_detached(&aad, &mut self.buf)?;
                let length = u32::try_from(self.buf.len()).expect("a chunk is at most CHUNK bytes");
                for part in [&length.to_le_bytes()[..], &nonce, &self.buf, &tag] {
                    self.file.write_all(part).map_err(write_error)?;
                }
            }
        }
        self.chunks += 1;
        self.buf.clear();
        Ok(())
    }

    /// Appends the digest, writes the last chunk, and hands back the file (not yet synced).
    fn finish(mut self) -> Result<File> {
        let digest = self.hash.clone().finalize();
        self.push(&digest)?;
        self.flush_chunk(true)?;
        Ok(self.file)
    }
}

/// Writes the snapshot of `tenants` at `seq` to `path` (sealed with `key` when given), durably:
/// temporary file, fsync, rename, fsync of the directory. Returns the file's size.
pub fn write(path: &Path, key: Option<&EncryptionKey>, seq: u64, tenants: &[TenantRows]) -> Result<(u64, [u8; 16])> {
    let temp = temp_path(path);
    let file_id = random_bytes()?;
    let written = write_temp(&temp, key, seq, tenants, file_id);
    let renamed = written.and_then(|bytes| fs::rename(&temp, path).map(|()| bytes).map_err(write_error));
    if renamed.is_err() {
        let _ = fs::remove_file(&temp);
    }
    let bytes = renamed?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok((bytes, file_id))
}

fn write_temp(
    temp: &Path,
    key: Option<&EncryptionKey>,
    seq: u64,
    tenants: &[TenantRows],
    file_id: [u8; 16],
) -> Result<u64> {
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(temp).map_err(write_error)?;
    let header = header(seq, key.is_some(), file_id);
    file.write_all(&header).map_err(write_error)?;
    let mut sink =
        Sink { file, key, header, hash: Sha256::new_with_prefix(header), buf: Vec::with_capacity(CHUNK), chunks: 0 };
    let count = u32::try_from(tenants.len()).map_err(|_| Error::bug("more than 2^32 tenants"))?;
    sink.put(&count.to_le_bytes())?;
    for t in tenants {
        let name = t.tenant.as_str().as_bytes();
        let length = u16::try_from(name.len()).map_err(|_| Error::bug("a tenant name above 64 KiB"))?;
        sink.put(&length.to_le_bytes())?;
        sink.put(name)?;
        sink.put(&(t.len() as u64).to_le_bytes())?;
        sink.put_words(&t.owners, |(face, user): (FaceId, UserId)| {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&face.0.to_le_bytes());
            b[8..].copy_from_slice(&user.0.to_le_bytes());
            b
        })?;
        sink.put_words(&t.matrix, u16::to_le_bytes)?;
        sink.put_words(&t.sketches, u64::to_le_bytes)?;
    }
    let file = sink.finish()?;
    file.sync_all().map_err(write_error)?;
    Ok(file.metadata().map_err(write_error)?.len())
}

/// Reads the body: plain bytes, or sealed chunks opened one at a time; hashes what it hands out.
struct Source<'k> {
    file: File,
    key: Option<&'k EncryptionKey>,
    header: [u8; HEADER_LEN],
    hash: Sha256,
    buf: Vec<u8>,
    pos: usize,
    /// File bytes not read yet.
    unread: u64,
    chunks: u64,
}

type ReadResult<T> = std::result::Result<T, SnapshotError>;

impl Source<'_> {
    /// Body bytes not handed out yet, at most (a bound for allocations).
    fn remaining(&self) -> u64 {
        self.unread + (self.buf.len() - self.pos) as u64
    }

    /// Loads the next chunk (or, plain, the next `CHUNK` bytes).
    fn fill(&mut self) -> ReadResult<()> {
        const CUT: SnapshotError = SnapshotError::Malformed("cut short");
        if self.unread == 0 {
            return Err(CUT);
        }
        self.buf.clear();
        self.pos = 0;
        let Some(key) = self.key else {
            (&mut self.file).take(CHUNK as u64).read_to_end(&mut self.buf)?;
            self.unread = self.unread.checked_sub(self.buf.len() as u64).ok_or(CUT)?;
            return if self.buf.is_empty() { Err(CUT) } else { Ok(()) };
        };
        let mut length = [0u8; 4];
        self.file.read_exact(&mut length)?;
        let length = u32::from_le_bytes(length) as usize;
        let framed = (4 + NONCE_LEN + length + TAG_LEN) as u64;
        if length == 0 || length > CHUNK || framed > self.unread {
            return Err(SnapshotError::Malformed("a chunk of impossible length"));
        }
        let (mut nonce, mut tag) = ([0u8; NONCE_LEN], [0u8; TAG_LEN]);
        self.file.read_exact(&mut nonce)?;
        self.buf.resize(length, 0);
        self.file.read_exact(&mut self.buf)?;
        self.file.read_exact(&mut tag)?;
        self.unread -= framed;
        let aad = chunk_aad(&self.header, self.chunks, self.unread == 0);
        key.open_detached(&aad, &nonce, &mut self.buf, &tag).map_err(|_| SnapshotError::Unauthentic)?;
        self.chunks += 1;
        Ok(())
    }

    /// Hands `n` bytes to `each` in slices whose lengths are multiples of `align` (the values
    /// are `align` bytes long; one that straddles two chunks is handed over on its own).
    fn read_with(&mut self, mut n: usize, align: usize, mut each: impl FnMut(&[u8])) -> ReadResult<()> {
        while n > 0 {
            if self.pos == self.buf.len() {
                self.fill()?;
            }
            let avail = (self.buf.len() - self.pos).min(n);
            let whole = avail - avail % align;
            if whole > 0 {
                let slice = &self.buf[self.pos..self.pos + whole];
                self.hash.update(slice);
                each(slice);
                self.pos += whole;
                n -= whole;
            } else {
                let mut value = [0u8; 16];
                self.read_exact(&mut value[..align])?;
                each(&value[..align]);
                n -= align;
            }
        }
        Ok(())
    }

    /// Fills `out` (hashed).
    fn read_exact(&mut self, out: &mut [u8]) -> ReadResult<()> {
        self.read_raw(out)?;
        self.hash.update(out);
        Ok(())
    }

    fn read_raw(&mut self, out: &mut [u8]) -> ReadResult<()> {
        let mut done = 0;
        while done < out.len() {
            if self.pos == self.buf.len() {
                self.fill()?;
            }
            let take = (self.buf.len() - self.pos).min(out.len() - done);
            out[done..done + take].copy_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            done += take;
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> ReadResult<[u8; N]> {
        let mut out = [0u8; N];
        self.read_exact(&mut out)?;
        Ok(out)
    }

    /// `count` values of `N` bytes each, converted by `value`, after checking that the file
    /// still holds them.
    fn values<const N: usize, T>(&mut self, count: usize, value: impl Fn([u8; N]) -> T) -> ReadResult<Vec<T>> {
        let bytes = count.checked_mul(N).filter(|&b| b as u64 <= self.remaining());
        let bytes = bytes.ok_or(SnapshotError::Malformed("more rows than the file holds"))?;
        let mut out = Vec::with_capacity(count);
        self.read_with(bytes, N, |slice| {
            out.extend(slice.chunks_exact(N).map(|b| value(b.try_into().expect("chunks_exact(N)"))));
        })?;
        Ok(out)
    }
}

/// Reads the snapshot at `path`. `key` is the store's: a sealed snapshot opens only with it, and
/// an encrypted store never loads a plain snapshot. Any damage is an error, never rows.
pub fn read(path: &Path, key: Option<&EncryptionKey>) -> ReadResult<Snapshot> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SnapshotError::Missing),
        Err(e) => return Err(e.into()),
    };
    let bytes = file.metadata()?.len();
    let mut header = [0u8; HEADER_LEN];
    if bytes < HEADER_LEN as u64 {
        return Err(SnapshotError::Malformed("shorter than its header"));
    }
    file.read_exact(&mut header)?;
    let (seq, sealed) = parse_header(&header)?;
    match (sealed, key) {
        (true, None) => return Err(SnapshotError::SealedInPlainStore),
        (false, Some(_)) => return Err(SnapshotError::PlainInEncryptedStore),
        (true, Some(_)) | (false, None) => {}
    }
    let mut src = Source {
        file,
        key,
        header,
        hash: Sha256::new_with_prefix(header),
        buf: Vec::with_capacity(CHUNK),
        pos: 0,
        unread: bytes - HEADER_LEN as u64,
        chunks: 0,
    };
    let count = u32::from_le_bytes(src.array()?);
    let mut tenants = Vec::new();
    for _ in 0..count {
        let length = u16::from_le_bytes(src.array()?) as usize;
        let mut name = vec![0u8; length];
        src.read_exact(&mut name)?;
        let tenant = std::str::from_utf8(&name).ok().and_then(Tenant::new);
        let tenant = tenant.ok_or(SnapshotError::Malformed("a bad tenant name"))?;
        let rows = u64::from_le_bytes(src.array()?);
        if rows.checked_mul(ROW_BYTES).is_none_or(|b| b > src.remaining()) {
            return Err(SnapshotError::Malformed("more rows than the file holds"));
        }
        let rows = rows as usize;
        let owners = src.values(rows, |b: [u8; 16]| {
            let (face, user) = b.split_at(8);
            (
                FaceId(u64::from_le_bytes(face.try_into().expect("8"))),
                UserId(u64::from_le_bytes(user.try_into().expect("8"))),
            )
        })?;
        let matrix = src.values(rows * EMBEDDING_DIM, u16::from_le_bytes)?;
        let sketches = src.values(rows * WORDS, u64::from_le_bytes)?;
        tenants.push(TenantRows { tenant, owners, matrix, sketches });
    }
    let digest = src.hash.clone().finalize();
    let mut stored = [0u8; DIGEST_LEN];
    src.read_raw(&mut stored)?;
    if digest.as_slice() != stored {
        return Err(SnapshotError::Checksum);
    }
    if src.remaining() != 0 {
        return Err(SnapshotError::Malformed("bytes after the checksum"));
    }
    let file_id = header[32..48].try_into().expect("16 bytes");
    Ok(Snapshot { seq, tenants, bytes, file_id })
}

/// Removes the snapshot at `path`, durably (snapshots turned off: a stale one would hold faces
/// deleted since). Missing is fine.
pub fn remove(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::internal("removing the index snapshot", e)),
    }
}
