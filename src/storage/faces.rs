//! Face records with their embeddings, originals and thumbnails. Adding, replacing and deleting
//! a face changes the face trees and the user's face list, count, status and version in one
//! transaction; the original and thumbnail are files (files.rs) written durably before that
//! transaction and removed after it. No similarity search here.

use std::time::SystemTime;

use prost::Message;
use sled::Transactional;

use super::files::FileKind;
use super::models::{ModelEmbedding, ModelState};
use super::records::{self, pb};
use super::requests::RequestStamp;
use super::users::{abort, tx_decode, tx_error, tx_user};
use super::{Pending, Store, db_error, decode, keys, log};
use crate::domain::{EMBEDDING_DIM, Embedding, EnrollmentStatus, Face, FaceId, Tenant, User, UserId};
use crate::error::{Error, Reason, Result};

/// A face to store, with everything kept beside it (Debug shows the images' lengths only).
#[derive(Clone)]
pub struct NewFace {
    pub face: Face,
    /// By the model `face.model` names.
    pub embedding: Embedding,
    /// By the other model, while the store keeps two (a reindex): the write is refused
    /// (MODELS_CHANGED) without it then.
    pub other: Option<ModelEmbedding>,
    pub original: Vec<u8>,
    pub thumbnail: Vec<u8>,
}

impl std::fmt::Debug for NewFace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let NewFace { face, embedding, other, original, thumbnail } = self;
        f.debug_struct("NewFace")
            .field("face", face)
            .field("embedding", embedding)
            .field("other", &other.as_ref().map(|o| &o.model))
            .field("original", &format_args!("<{} bytes>", original.len()))
            .field("thumbnail", &format_args!("<{} bytes>", thumbnail.len()))
            .finish()
    }
}

/// Which face a new one replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// None: the face is added (UploadFace), within the per-user limit.
    Nothing,
    /// This face of the user (UpdateFace with a face_id).
    Face(FaceId),
    /// The user's oldest face, or nothing when the user has none (UpdateFace without one).
    Oldest,
}

/// An embedding as stored, for rebuilding the search index.
#[derive(Debug, Clone)]
pub struct StoredEmbedding {
    pub tenant: Tenant,
    pub face_id: FaceId,
    pub user_id: UserId,
    pub embedding: Embedding,
}

/// `user_id ‖ model length ‖ model ‖ 512 x f32 little-endian`.
pub(super) fn encode_embedding(user: UserId, model: &str, embedding: &Embedding) -> Vec<u8> {
    let model = &model.as_bytes()[..model.len().min(255)];
    let mut out = Vec::with_capacity(9 + model.len() + EMBEDDING_DIM * 4);
    out.extend_from_slice(&user.0.to_be_bytes());
    out.push(model.len() as u8);
    out.extend_from_slice(model);
    for v in embedding.as_slice() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The user an embedding value belongs to, if it is well formed.
pub(super) fn embedding_owner(bytes: &[u8]) -> Option<UserId> {
    decode_embedding(bytes).map(|(user, _)| user)
}

pub(super) fn decode_embedding(bytes: &[u8]) -> Option<(UserId, Embedding)> {
    decode_model_embedding(bytes).map(|(user, _, embedding)| (user, embedding))
}

/// The owner, the model and the embedding of a stored embedding value.
pub(super) fn decode_model_embedding(bytes: &[u8]) -> Option<(UserId, String, Embedding)> {
    let user = UserId(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?));
    let model_len = usize::from(*bytes.get(8)?);
    let model = String::from_utf8(bytes.get(9..9 + model_len)?.to_vec()).ok()?;
    let floats = bytes.get(9 + model_len..)?;
    if floats.len() != EMBEDDING_DIM * 4 {
        return None;
    }
    let values = floats.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Some((user, model, Embedding::from_normalized(values)?))
}

/// The owner and embedding of a stored embedding value, which must be by `model` (the model of
/// the slot it was read from; empty: a store no server recorded a model in). A value of another
/// model in a slot (written there by hand, or swapped) is refused rather than compared.
pub(crate) fn decode_of_model(bytes: &[u8], model: &str) -> Result<(UserId, Embedding)> {
    let (user, stored, embedding) = decode_model_embedding(bytes).ok_or_else(|| Error::bug("malformed embedding"))?;
    if !model.is_empty() && stored != model {
        return Err(Error::bug("an embedding of another model than its slot's"));
    }
    Ok((user, embedding))
}

/// The sealed embedding value of each slot a face write stores under `state` (models.rs).
pub(super) fn sealed_slots(
    state: &ModelState,
    new: &NewFace,
    seal: impl Fn(&[u8]) -> Result<Vec<u8>>,
) -> Result<Vec<(usize, Vec<u8>)>> {
    let user = new.face.user_id;
    state
        .place(&new.face.model, &new.embedding, new.other.as_ref())?
        .into_iter()
        .map(|(slot, model, embedding)| Ok((slot, seal(&encode_embedding(user, &model, embedding))?)))
        .collect()
}

/// Whether a token record is for this tenant's user and unexpired (UpdateFace with a token).
pub(super) fn token_matches(token: &pb::TokenRecord, tenant: &Tenant, user: UserId) -> bool {
    token.tenant == tenant.as_str()
        && token.user_id == user.0
        && records::from_nanos(token.expires_at_ns) > SystemTime::now()
}

/// The rules of storing face `new` for `user`, as both backends apply them inside the write's
/// transaction: refuses an invalid token (`token_ok` false), a full user (adding) or a face the
/// user lacks (replacing it); then updates `user` (faces, status, version, time). Returns the
/// face replaced, and the hash of the user's outstanding token when the write spends it (an
/// update ends a re-enrollment), which the caller removes; `token_hash` is cleared then.
pub(super) fn plan_put(
    user: &mut User,
    token_hash: &mut Vec<u8>,
    token_ok: bool,
    new: FaceId,
    replace: Replace,
    max_faces: usize,
) -> Result<(Option<FaceId>, Option<Vec<u8>>)> {
    if !token_ok {
        return Err(Error::unauthenticated(
            Reason::ReenrollmentTokenInvalid,
            "the re-enrollment token is unknown, used, expired or for another user",
        ));
    }
    let removed = match replace {
        Replace::Nothing => {
            if user.face_ids.len() >= max_faces {
                return Err(Error::failed_precondition(
                    Reason::FaceLimitReached,
                    "the user has the maximum number of faces",
                )
                .with_meta("face_count", user.face_ids.len())
                .with_meta("max_faces", max_faces));
            }
            None
        }
        Replace::Face(id) => {
            if !user.face_ids.contains(&id) {
                return Err(Error::face_not_found().with_meta("face_id", id));
            }
            Some(id)
        }
        Replace::Oldest => user.face_ids.first().copied(),
    };
    if let Some(old) = removed {
        user.face_ids.retain(|&f| f != old);
    }
    user.face_ids.push(new);
    let updating = replace != Replace::Nothing;
    if updating || user.enrollment == EnrollmentStatus::NotEnrolled {
        user.enrollment = EnrollmentStatus::Enrolled;
    }
    // The re-enrollment is done: the outstanding token, used or not, is spent.
    let spent = (updating && !token_hash.is_empty()).then(|| std::mem::take(token_hash));
    user.version += 1;
    user.update_time = SystemTime::now();
    Ok((removed, spent))
}

/// The rules of deleting face `id` of `user`: the list, status, version and time.
pub(super) fn face_removed(user: &mut User, id: FaceId) {
    user.face_ids.retain(|&f| f != id);
    if user.face_ids.is_empty() && user.enrollment == EnrollmentStatus::Enrolled {
        user.enrollment = EnrollmentStatus::NotEnrolled;
    }
    user.version += 1;
    user.update_time = SystemTime::now();
}

impl Store {
    /// Stores `new` for its user, replacing per `replace`, consuming the re-enrollment token
    /// `token` if given (it must belong to this user). Returns the updated user and the face
    /// that was replaced, once durable.
    pub fn put_face(
        &self,
        tenant: &Tenant,
        new: &NewFace,
        replace: Replace,
        max_faces: usize,
        token: Option<[u8; 32]>,
    ) -> Result<(User, Option<FaceId>)> {
        self.put_face_pending(tenant, new, replace, max_faces, token, None)?.durable()
    }

    /// [`Store::put_face`], committed but not yet durable (see [`Pending`]).
    pub fn put_face_pending(
        &self,
        tenant: &Tenant,
        new: &NewFace,
        replace: Replace,
        max_faces: usize,
        token: Option<[u8; 32]>,
        request: Option<&RequestStamp<'_, (User, Option<FaceId>)>>,
    ) -> Result<Pending<(User, Option<FaceId>)>> {
        let user_id = new.face.user_id;
        // Sealed outside the transaction: a retried closure reuses them, and no crypto runs
        // while sled holds its locks. The slots are those of the models now; the transaction
        // refuses the write if they changed meanwhile.
        let key = keys::face_key(tenant, new.face.id);
        let state = self.model_state()?;
        let generation = state.generation;
        let slots = sealed_slots(&state, new, |plain| Ok(self.seal(keys::EMBEDDINGS, &key, plain)?.into_owned()))?;
        let active = slots.iter().find(|(slot, _)| *slot == state.active).map(|(_, v)| v.clone()).unwrap_or_default();
        let other = slots.iter().find(|(slot, _)| *slot != state.active).map(|(_, v)| v.clone());
        let original = self.seal(keys::IMAGES, &key, &new.original)?;
        let thumbnail = self.seal(keys::THUMBNAILS, &key, &new.thumbnail)?;
        // Durable before the transaction that names them (and removed again if it fails).
        self.files.put_pair(&key, &original, &thumbnail)?;
        let embedder = self.embedder()?;
        let trees = (
            &self.users,
            &self.faces,
            &self.embeddings,
            &self.embeddings_1,
            &self.tokens,
            &self.log,
            &self.meta,
            &self.requests,
        );
        let result = trees.transaction(|(users, faces, embeddings, embeddings_1, tokens, log, meta, requests)| {
            let now =
                match super::reindex::state_from(meta.get(super::models::MODELS_KEY)?.as_deref(), embedder.clone()) {
                    Ok(now) => now,
                    Err(e) => return abort(e),
                };
            if now.generation != generation {
                return abort(super::models::models_changed());
            }
            let Some(record) = tx_user(users, tenant, user_id)? else { return abort(Error::user_not_found()) };
            let mut token_hash = record.reenrollment_token_hash.clone();
            let mut user = records::user_from_record(record);
            let token_ok = match token {
                Some(hash) => match tokens.get(&hash[..])? {
                    Some(bytes) => token_matches(&tx_decode(&bytes, "decoding a token record")?, tenant, user_id),
                    None => false,
                },
                None => true,
            };
            let (removed, spent) = match plan_put(&mut user, &mut token_hash, token_ok, new.face.id, replace, max_faces)
            {
                Ok(plan) => plan,
                Err(e) => return abort(e),
            };
            if let Some(old) = removed {
                let old_key = keys::face_key(tenant, old);
                for tree in [faces, embeddings, embeddings_1] {
                    tree.remove(old_key.as_slice())?;
                }
            }
            if let Some(spent) = spent {
                tokens.remove(spent.as_slice())?;
            }
            faces.insert(key.as_slice(), records::face_to_record(&new.face).encode_to_vec())?;
            for (slot, value) in &slots {
                let tree = if *slot == 1 { embeddings_1 } else { embeddings };
                tree.insert(key.as_slice(), value.as_slice())?;
            }
            users
                .insert(keys::user_key(tenant, user_id), records::user_to_record(&user, token_hash).encode_to_vec())?;
            let record = log::put_record(tenant, new.face.id, user_id, &active, other.as_deref(), removed);
            let seq = log::tx_append(log, &record)?;
            let user = (user, removed);
            super::requests::tx_record(requests, tenant, request, &user)?;
            let (user, removed) = user;
            Ok((user, removed, seq))
        });
        let out = match result.map_err(tx_error) {
            Ok(out) => out,
            Err(e) => {
                // Nothing names the new files: drop them (a crash here leaves orphans, swept at open).
                let _ = self.files.remove(&key);
                return Err(e);
            }
        };
        let (user, replaced, seq) = out;
        let removed = replaced.map(|old| (tenant.clone(), old)).into_iter().collect();
        Ok(self.pending((user, replaced), seq, removed))
    }

    pub fn get_face(&self, tenant: &Tenant, id: FaceId) -> Result<Option<Face>> {
        match self.faces.get(keys::face_key(tenant, id)).map_err(db_error)? {
            Some(bytes) => Ok(Some(records::face_from_record(decode(&bytes, "decoding a face record")?))),
            None => Ok(None),
        }
    }

    /// The stored embedding of a face by `model` (MODELS_CHANGED when the store keeps none).
    pub fn face_embedding(&self, tenant: &Tenant, id: FaceId, model: &str) -> Result<Option<Embedding>> {
        let key = keys::face_key(tenant, id);
        let (tree, expected) = self.model_tree(model)?;
        let Some(bytes) = tree.get(&key).map_err(db_error)? else { return Ok(None) };
        let plain = self.unseal(keys::EMBEDDINGS, &key, &bytes)?;
        decode_of_model(&plain, expected).map(|(_, e)| Some(e))
    }

    /// The original image or the thumbnail of a face.
    pub fn face_image(&self, tenant: &Tenant, id: FaceId, thumbnail: bool) -> Result<Option<Vec<u8>>> {
        let (name, kind) =
            if thumbnail { (keys::THUMBNAILS, FileKind::Thumbnail) } else { (keys::IMAGES, FileKind::Original) };
        let key = keys::face_key(tenant, id);
        let Some(bytes) = self.files.get(&key, kind)? else { return Ok(None) };
        Ok(Some(self.unseal(name, &key, &bytes)?.into_owned()))
    }

    /// Deletes one face and everything stored with it; returns the updated user, once durable.
    pub fn delete_face(&self, tenant: &Tenant, id: FaceId) -> Result<User> {
        self.delete_face_pending(tenant, id, None)?.durable()
    }

    /// [`Store::delete_face`], committed but not yet durable (see [`Pending`]).
    pub fn delete_face_pending(
        &self,
        tenant: &Tenant,
        id: FaceId,
        request: Option<&RequestStamp<'_, User>>,
    ) -> Result<Pending<User>> {
        let trees = (&self.users, &self.faces, &self.embeddings, &self.embeddings_1, &self.log, &self.requests);
        let result = trees.transaction(|(users, faces, embeddings, embeddings_1, log, requests)| {
            let key = keys::face_key(tenant, id);
            let Some(bytes) = faces.get(key.as_slice())? else { return abort(Error::face_not_found()) };
            let face: pb::FaceRecord = tx_decode(&bytes, "decoding a face record")?;
            for tree in [faces, embeddings, embeddings_1] {
                tree.remove(key.as_slice())?;
            }
            let user_id = UserId(face.user_id);
            let Some(record) = tx_user(users, tenant, user_id)? else {
                return abort(Error::bug("a face points to a missing user"));
            };
            let token_hash = record.reenrollment_token_hash.clone();
            let mut user = records::user_from_record(record);
            face_removed(&mut user, id);
            users
                .insert(keys::user_key(tenant, user_id), records::user_to_record(&user, token_hash).encode_to_vec())?;
            let seq = log::tx_append(log, &log::removed_record(tenant, &[id], None))?;
            super::requests::tx_record(requests, tenant, request, &user)?;
            Ok((user, seq))
        });
        let (user, seq) = result.map_err(tx_error)?;
        Ok(self.pending(user, seq, vec![(tenant.clone(), id)]))
    }

    /// Every stored embedding of every tenant in `slot` (an index rebuild).
    pub fn embeddings(&self, slot: usize) -> impl Iterator<Item = Result<StoredEmbedding>> + '_ {
        let expected = self.model_state().ok().and_then(|s| s.slots[slot].clone()).map(|e| e.id).unwrap_or_default();
        self.slot_tree(slot).iter().map(move |entry| {
            let (key, value) = entry.map_err(db_error)?;
            let (tenant, face) = keys::split_id_key(&key).ok_or_else(|| Error::bug("malformed embedding key"))?;
            let plain = self.unseal(keys::EMBEDDINGS, &key, &value)?;
            let (user_id, embedding) = decode_of_model(&plain, &expected)?;
            Ok(StoredEmbedding { tenant, face_id: FaceId(face), user_id, embedding })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_bytes_round_trip() {
        let raw: Vec<f32> = (0..EMBEDDING_DIM).map(|i| (i as f32).sin()).collect();
        let e = Embedding::from_raw(raw).unwrap();
        let bytes = encode_embedding(UserId(7), "w600k_mbf", &e);
        let (user, back) = decode_embedding(&bytes).unwrap();
        assert_eq!(user, UserId(7));
        assert_eq!(back, e);
        assert!(decode_embedding(&bytes[..bytes.len() - 1]).is_none());
        // Read from a slot of another model: refused.
        assert!(decode_of_model(&bytes, "w600k_mbf").is_ok());
        assert!(decode_of_model(&bytes, "").is_ok());
        assert!(decode_of_model(&bytes, "edgeface_s_gamma_05").is_err());
    }
}
