//! A write the store has committed (every read sees it) but not yet made durable. The caller
//! updates what derives from the store (the search index) first, then makes it durable: so a
//! failed sync can never leave the index different from the store, and a face's image files
//! are removed only once the transaction that dropped the face is durable.

use super::Store;
use super::keys;
use crate::domain::{FaceId, Tenant};
use crate::error::Result;

/// A committed write: its value now, and [`Pending::durable`] to finish it.
#[derive(Debug)]
#[must_use = "a pending write is acknowledged only once it is durable"]
pub struct Pending<T> {
    value: T,
    store: Store,
    /// The change-log entry of the write; 0: it changed no face.
    seq: u64,
    /// Faces whose image files go once the write is durable.
    removed: Vec<(Tenant, FaceId)>,
}

impl<T> Pending<T> {
    pub(super) fn new(value: T, store: &Store, seq: u64, removed: Vec<(Tenant, FaceId)>) -> Self {
        Pending { value, store: store.clone(), seq, removed }
    }

    /// The sequence number of the write's change-log entry (0: it changed no face): the index
    /// reflects the write once its feed has applied this entry.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// What the write did (visible to every read already).
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Makes the write durable (group commit), then removes the image files of the faces it
    /// dropped. A file that cannot be removed is only logged: nothing names it any more, and the
    /// sweep at the next start removes it.
    pub fn durable(self) -> Result<T> {
        self.store.commit()?;
        for (tenant, face) in &self.removed {
            if let Err(e) = self.store.files.remove(&keys::face_key(tenant, *face)) {
                tracing::warn!(error = %e, face = %face, "an image file of a deleted face stays until the next start");
            }
        }
        Ok(self.value)
    }
}
