//! The embedder a store was built with: its id and the sha256 of its model, in the `meta` tree.
//! Embeddings of different models are not comparable (a search would compare unrelated
//! vectors), so the server starts only with the store's own embedder.

use prost::Message;

use super::records::pb;
use super::{Store, db_error, decode, keys};
use crate::error::{Error, Result};

/// An embedder as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedderRecord {
    /// `--embedder-id`, reported as Face.model.
    pub id: String,
    /// sha256 (hex) of the model file's bytes.
    pub sha256: String,
}

impl std::fmt::Display for EmbedderRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\" (model sha256 {})", self.id, self.sha256)
    }
}

fn refuse(message: String) -> Error {
    Error::Unavailable { message }
}

impl Store {
    /// The embedder recorded in the store, if any.
    pub fn embedder(&self) -> Result<Option<EmbedderRecord>> {
        let meta = self.db.open_tree(keys::META).map_err(db_error)?;
        let Some(bytes) = meta.get(keys::EMBEDDER_KEY).map_err(db_error)? else { return Ok(None) };
        let record: pb::EmbedderRecord = decode(&bytes, "decoding the embedder record")?;
        Ok(Some(EmbedderRecord { id: record.id, sha256: record.sha256 }))
    }

    /// At start-up, before the index is built: refuses a store recorded with another embedder
    /// (id or model bytes), naming both; records `embedder` in a store without a record (a new
    /// one, or one an older version made: then its faces must name the same embedder id, the
    /// only trace of their model such a store holds).
    pub fn check_embedder(&self, embedder: &EmbedderRecord) -> Result<()> {
        let place = self.path.display();
        let advice = "embeddings of different models cannot be compared: start with the store's embedder \
                      (--embedder-id, --embedder-model), or with a new --data-dir";
        match self.embedder()? {
            Some(stored) if stored == *embedder => return Ok(()),
            Some(stored) => {
                return Err(refuse(format!(
                    "the store at {place} was built with embedder {stored}, but the configured embedder is \
                     {embedder}; {advice}"
                )));
            }
            None => {}
        }
        if let Some(entry) = self.faces.iter().next() {
            let (_, bytes) = entry.map_err(db_error)?;
            let face: pb::FaceRecord = decode(&bytes, "decoding a face record")?;
            if face.model != embedder.id {
                return Err(refuse(format!(
                    "the store at {place} holds faces of embedder \"{}\", but the configured embedder is \
                     {embedder}; {advice}",
                    face.model
                )));
            }
        }
        let record = pb::EmbedderRecord { id: embedder.id.clone(), sha256: embedder.sha256.clone() };
        let meta = self.db.open_tree(keys::META).map_err(db_error)?;
        meta.insert(keys::EMBEDDER_KEY, record.encode_to_vec()).map_err(db_error)?;
        self.flush()?;
        tracing::info!(embedder = %embedder.id, sha256 = %embedder.sha256, "recorded the store's embedder");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedder(id: &str, sha256: &str) -> EmbedderRecord {
        EmbedderRecord { id: id.into(), sha256: sha256.into() }
    }

    #[test]
    fn a_store_keeps_the_first_embedder_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.embedder().unwrap(), None);
        let first = embedder("w600k_mbf", "aa11");
        store.check_embedder(&first).unwrap();
        store.check_embedder(&first).unwrap();
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.embedder().unwrap(), Some(first));
        for other in [embedder("w600k_mbf", "bb22"), embedder("w600k_mbf_int8", "aa11")] {
            let message = store.check_embedder(&other).unwrap_err().to_string();
            assert!(message.contains("\"w600k_mbf\" (model sha256 aa11)"), "{message}");
            assert!(message.contains(&other.to_string()), "{message}");
        }
    }
}
