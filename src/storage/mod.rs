//! `Store`: sled as the source of truth for users, faces, embeddings, originals, thumbnails and
//! re-enrollment tokens. Synchronous (call it through `app::blocking`); every invariant that
//! spans trees is one sled transaction; writes are flushed before they are acknowledged.

mod faces;
pub mod keys;
mod records;
mod users;
mod verify;

use std::path::Path;

use prost::Message;

use crate::error::{Error, Result};
pub use faces::{NewFace, Replace, StoredEmbedding};
pub use users::{TokenGrant, UserPatch};
pub use verify::Integrity;

/// On-disk layout version; a store of another version is refused at open.
pub const SCHEMA_VERSION: u32 = 1;

/// The sled database and its trees.
#[derive(Debug, Clone)]
pub struct Store {
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
}

pub(crate) fn db_error(err: sled::Error) -> Error {
    Error::internal("storage", err)
}

impl Store {
    /// Opens (or creates) the store under `dir/v1` and checks its schema version.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, true)
    }

    /// Opens the store for a bulk import: writes are not flushed one by one, so a crash may lose
    /// any of them until `flush` returns. Never used by the server.
    pub fn open_for_import(dir: &Path) -> Result<Self> {
        Self::open_with(dir, false)
    }

    fn open_with(dir: &Path, durable_writes: bool) -> Result<Self> {
        let path = dir.join(format!("v{SCHEMA_VERSION}"));
        std::fs::create_dir_all(&path).map_err(|e| Error::internal("creating the data directory", e))?;
        let db = sled::Config::new().path(&path).mode(sled::Mode::HighThroughput).open().map_err(db_error)?;
        let meta = db.open_tree(keys::META).map_err(db_error)?;
        match meta.get(keys::SCHEMA_VERSION_KEY).map_err(db_error)? {
            None => {
                meta.insert(keys::SCHEMA_VERSION_KEY, &SCHEMA_VERSION.to_be_bytes()).map_err(db_error)?;
                meta.flush().map_err(db_error)?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION.to_be_bytes() => {}
            Some(v) => {
                return Err(Error::Unavailable {
                    message: format!(
                        "the store at {} has schema version {v:?}, expected {SCHEMA_VERSION}",
                        path.display()
                    ),
                });
            }
        }
        let tree = |name: &str| db.open_tree(name).map_err(db_error);
        Ok(Store {
            users: tree(keys::USERS)?,
            external_ids: tree(keys::EXTERNAL_IDS)?,
            faces: tree(keys::FACES)?,
            embeddings: tree(keys::EMBEDDINGS)?,
            images: tree(keys::IMAGES)?,
            thumbnails: tree(keys::THUMBNAILS)?,
            tokens: tree(keys::TOKENS)?,
            durable_writes,
            db,
        })
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

    /// Every raw key and value of a tree (tests scan them for leftovers).
    pub fn raw_entries(&self, tree: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let tree = self.db.open_tree(tree).map_err(db_error)?;
        tree.iter().map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(db_error)).collect()
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
