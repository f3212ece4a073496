//! `Store`: sled as the source of truth for users, faces, embeddings, originals, thumbnails and
//! re-enrollment tokens. Synchronous (call it through `app::blocking`); every invariant that
//! spans trees is one sled transaction; writes are flushed before they are acknowledged.
//! Originals, thumbnails and embeddings are sealed with AES-256-GCM when a key is given (seal.rs).

mod embedder;
mod faces;
pub mod keys;
mod reads;
mod records;
mod seal;
mod users;
mod verify;

use std::path::Path;

use prost::Message;

use crate::error::{Error, Result};
pub use embedder::EmbedderRecord;
pub use faces::{NewFace, Replace, StoredEmbedding};
pub use reads::{FaceEmbeddings, UserKey};
pub use seal::EncryptionKey;
pub use users::{TokenGrant, UserPatch};
pub use verify::Integrity;

/// On-disk layout version; a store of another version is refused at open.
pub const SCHEMA_VERSION: u32 = 1;

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
    images: sled::Tree,
    thumbnails: sled::Tree,
    tokens: sled::Tree,
    /// Flush before a write returns (always, except in a bulk import).
    durable_writes: bool,
    /// Seals the values of `images`, `thumbnails` and `embeddings`; `None`: stored plain.
    encryption: Option<EncryptionKey>,
}

pub(crate) fn db_error(err: sled::Error) -> Error {
    Error::internal("storage", err)
}

impl Store {
    /// Opens (or creates) an unencrypted store under `dir/v1` and checks its schema version.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, true, None)
    }

    /// Opens (or creates) the store under `dir/v1`, encrypted with `key` when one is given. A
    /// store is tied to its key at creation: see `check_encryption` for what is refused.
    pub fn open_with_key(dir: &Path, key: Option<EncryptionKey>) -> Result<Self> {
        Self::open_with(dir, true, key)
    }

    /// Opens an unencrypted store for a bulk import: writes are not flushed one by one, so a
    /// crash may lose any of them until `flush` returns. Never used by the server.
    pub fn open_for_import(dir: &Path) -> Result<Self> {
        Self::open_with(dir, false, None)
    }

    fn open_with(dir: &Path, durable_writes: bool, encryption: Option<EncryptionKey>) -> Result<Self> {
        let path = dir.join(format!("v{SCHEMA_VERSION}"));
        std::fs::create_dir_all(&path).map_err(|e| Error::internal("creating the data directory", e))?;
        let db = sled::Config::new().path(&path).mode(sled::Mode::HighThroughput).open().map_err(db_error)?;
        let meta = db.open_tree(keys::META).map_err(db_error)?;
        check_schema(&meta, &path)?;
        let tree = |name: &str| db.open_tree(name).map_err(db_error);
        let store = Store {
            users: tree(keys::USERS)?,
            external_ids: tree(keys::EXTERNAL_IDS)?,
            faces: tree(keys::FACES)?,
            embeddings: tree(keys::EMBEDDINGS)?,
            images: tree(keys::IMAGES)?,
            thumbnails: tree(keys::THUMBNAILS)?,
            tokens: tree(keys::TOKENS)?,
            durable_writes,
            encryption,
            db,
            path: path.clone(),
        };
        store.check_encryption(&meta, &path)?;
        Ok(store)
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(db_error)
    }

    /// Ends a write: flushes unless this is a bulk import.
    fn commit(&self) -> Result<()> {
        if self.durable_writes { self.flush() } else { Ok(()) }
    }

    /// Number of entries per tree (checks that nothing is left behind).
    pub fn tree_sizes(&self) -> Vec<(&'static str, usize)> {
        vec![
            (keys::USERS, self.users.len()),
            (keys::EXTERNAL_IDS, self.external_ids.len()),
            (keys::FACES, self.faces.len()),
            (keys::EMBEDDINGS, self.embeddings.len()),
            (keys::IMAGES, self.images.len()),
            (keys::THUMBNAILS, self.thumbnails.len()),
            (keys::TOKENS, self.tokens.len()),
        ]
    }

    /// Every raw key and value of a tree, sealed values as stored (tests scan them for leftovers
    /// and for plaintext).
    pub fn raw_entries(&self, tree: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let tree = self.db.open_tree(tree).map_err(db_error)?;
        tree.iter().map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(db_error)).collect()
    }
}

/// Records the schema version in a new store; refuses a store of another version.
fn check_schema(meta: &sled::Tree, path: &Path) -> Result<()> {
    match meta.get(keys::SCHEMA_VERSION_KEY).map_err(db_error)? {
        None => {
            meta.insert(keys::SCHEMA_VERSION_KEY, &SCHEMA_VERSION.to_be_bytes()).map_err(db_error)?;
            meta.flush().map_err(db_error)?;
            Ok(())
        }
        Some(v) if v.as_ref() == SCHEMA_VERSION.to_be_bytes() => Ok(()),
        Some(v) => Err(Error::Unavailable {
            message: format!("the store at {} has schema version {v:?}, expected {SCHEMA_VERSION}", path.display()),
        }),
    }
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
