//! The embedding slots of the sled store (models.rs): the model state in `meta`, changed by
//! compare-and-set in a transaction with its change-log entry; the re-embedding writes of a
//! reindex; and the emptying of a slot when a reindex finishes.

use std::time::SystemTime;

use sled::Transactional;

use super::faces::encode_embedding;
use super::models::{MODELS_KEY, ModelState, ReindexState, models_changed};
use super::records::pb;
use super::users::{abort, tx_error};
use super::{EmbedderRecord, Store, db_error, keys, log};
use crate::domain::{Embedding, FaceId, Tenant};
use crate::error::{Error, Result};

/// The state as stored in `meta` (or derived from the single embedder record).
pub(super) fn state_from(meta_value: Option<&[u8]>, embedder: Option<EmbedderRecord>) -> Result<ModelState> {
    match meta_value {
        Some(bytes) => ModelState::decode(bytes),
        None => Ok(embedder.map(ModelState::single).unwrap_or_default()),
    }
}

/// The log record of a change of models.
pub(crate) fn models_record(active: &str, generation: u64) -> pb::ChangeRecord {
    pb::ChangeRecord {
        tenant: String::new(),
        change: Some(pb::change_record::Change::Models(pb::ModelsChanged { active: active.to_owned(), generation })),
    }
}

impl Store {
    /// The store's models and reindex.
    pub fn model_state(&self) -> Result<ModelState> {
        let value = self.meta.get(MODELS_KEY).map_err(db_error)?;
        state_from(value.as_deref(), self.embedder()?)
    }

    /// The tree of `slot`.
    pub(super) fn slot_tree(&self, slot: usize) -> &sled::Tree {
        if slot == 1 { &self.embeddings_1 } else { &self.embeddings }
    }

    /// The tree holding `model`'s embeddings, and the model its values must name (empty in a
    /// store that records none: any); MODELS_CHANGED when the store keeps none of it.
    pub(super) fn model_tree<'m>(&self, model: &'m str) -> Result<(&sled::Tree, &'m str)> {
        let state = self.model_state()?;
        let slot = state.slot_of(model).ok_or_else(models_changed)?;
        Ok((self.slot_tree(slot), if state.unrecorded() { "" } else { model }))
    }

    /// Replaces the state if its generation is still `expected` (else MODELS_CHANGED), with the
    /// generation bumped; appends a models entry to the log when `announce`. Durable on return;
    /// returns the entry's sequence number (0: none) and the state written.
    pub fn set_model_state(&self, expected: u64, state: &ModelState, announce: bool) -> Result<(u64, ModelState)> {
        let embedder = self.embedder()?;
        let mut next = state.clone();
        next.generation = expected + 1;
        let active = next.active_embedder()?.id.clone();
        let value = next.encode();
        let seq = self.write(|| {
            let seq = (&self.meta, &self.log)
                .transaction(|(meta, log)| {
                    let current = match state_from(meta.get(MODELS_KEY)?.as_deref(), embedder.clone()) {
                        Ok(current) => current,
                        Err(e) => return abort(e),
                    };
                    if current.generation != expected {
                        return abort(models_changed());
                    }
                    meta.insert(MODELS_KEY, value.as_slice())?;
                    if announce { log::tx_append(log, &models_record(&active, expected + 1)) } else { Ok(0) }
                })
                .map_err(tx_error)?;
            self.flush()?;
            Ok(seq)
        })?;
        Ok((seq, next))
    }

    /// Up to `limit` faces, after `after` in key order, that have no embedding in `slot`.
    pub fn faces_without_embedding(
        &self,
        slot: usize,
        after: Option<(Tenant, FaceId)>,
        limit: usize,
    ) -> Result<Vec<(Tenant, FaceId)>> {
        let tree = self.slot_tree(slot);
        let start = after.map(|(t, f)| {
            let mut key = keys::face_key(&t, f);
            key.push(0);
            key
        });
        let mut out = Vec::new();
        let range = match start {
            Some(start) => self.faces.range(start..),
            None => self.faces.iter(),
        };
        for key in range.keys() {
            if out.len() == limit {
                break;
            }
            let key = key.map_err(db_error)?;
            if !tree.contains_key(&key).map_err(db_error)? {
                let (tenant, face) = keys::split_id_key(&key).ok_or_else(|| Error::bug("malformed face key"))?;
                out.push((tenant, FaceId(face)));
            }
        }
        Ok(out)
    }

    /// Stores the re-embedded faces of a running reindex in its target slot (those deleted
    /// meanwhile are skipped) and counts them, with `failed` more failures, in the state: one
    /// transaction, durable on return. MODELS_CHANGED unless the reindex to `model` runs still.
    pub fn put_reindexed(
        &self,
        model: &str,
        worker: &str,
        items: &[(Tenant, FaceId, Embedding)],
        failed: u64,
        lease_until: SystemTime,
    ) -> Result<ModelState> {
        let embedder = self.embedder()?;
        let target = self.model_state()?.to_slot;
        let mut sealed = Vec::with_capacity(items.len());
        for (tenant, face, embedding) in items {
            let key = keys::face_key(tenant, *face);
            sealed.push((key, embedding));
        }
        let faces = &self.faces;
        let slot = self.slot_tree(target);
        self.write(|| {
            // The owner comes from the face record, read in the transaction.
            let state = (faces, slot, &self.meta)
                .transaction(|(faces, slot, meta)| {
                    let mut state = match state_from(meta.get(MODELS_KEY)?.as_deref(), embedder.clone()) {
                        Ok(state) => state,
                        Err(e) => return abort(e),
                    };
                    let to_model = state.slots[state.to_slot].as_ref().map(|e| e.id.as_str());
                    if state.state != ReindexState::Running
                        || state.to_slot != target
                        || to_model != Some(model)
                        || state.worker != worker
                    {
                        return abort(models_changed());
                    }
                    let mut stored = 0;
                    for (key, embedding) in &sealed {
                        let Some(bytes) = faces.get(key.as_slice())? else { continue };
                        let face: pb::FaceRecord = super::users::tx_decode(&bytes, "decoding a face record")?;
                        let value = encode_embedding(crate::domain::UserId(face.user_id), model, embedding);
                        let value = match self.seal(keys::EMBEDDINGS, key, &value) {
                            Ok(v) => v.into_owned(),
                            Err(e) => return abort(e),
                        };
                        slot.insert(key.as_slice(), value)?;
                        stored += 1;
                    }
                    state.done += stored;
                    state.failed += failed;
                    state.update_time = Some(SystemTime::now());
                    state.lease_until = Some(lease_until);
                    meta.insert(MODELS_KEY, state.encode())?;
                    Ok(state)
                })
                .map_err(tx_error)?;
            self.flush()?;
            Ok(state)
        })
    }

    /// Empties `slot` (a finished reindex drops the model no longer used), a thousand entries
    /// per transaction, each checking that the models do not write the slot (a reindex started
    /// meanwhile keeps what it stored there). Durable on return.
    pub fn clear_slot(&self, slot: usize) -> Result<()> {
        let embedder = self.embedder()?;
        let tree = self.slot_tree(slot);
        self.write(|| {
            loop {
                let keys: Vec<sled::IVec> =
                    tree.iter().keys().take(1000).collect::<std::result::Result<_, _>>().map_err(db_error)?;
                if keys.is_empty() {
                    break;
                }
                let cleared = (&self.meta, tree)
                    .transaction(|(meta, tree)| {
                        let state = match state_from(meta.get(MODELS_KEY)?.as_deref(), embedder.clone()) {
                            Ok(state) => state,
                            Err(e) => return abort(e),
                        };
                        if state.written_slots().iter().any(|(s, _)| *s == slot) {
                            return Ok(false);
                        }
                        for key in &keys {
                            tree.remove(key)?;
                        }
                        Ok(true)
                    })
                    .map_err(tx_error)?;
                if !cleared {
                    break;
                }
            }
            self.flush()
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_reindex_writes_both_slots_fences_its_worker_and_clears_only_an_unused_slot() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::Store::open(dir.path()).unwrap();
        crate::storage::models::exercise_reindex_storage(&store);
    }
}
