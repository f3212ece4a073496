//! Reads that span trees, each from one consistent snapshot: a user with its faces or its
//! embeddings, a face with its image, the owners of search hits. Each is one read-only sled
//! transaction; in sled 0.34 a transaction runs under the store-wide concurrency-control write
//! lock, so no write lands between its reads. Sealed values are opened after the transaction,
//! so no crypto runs while that lock is held. No writes here.

use sled::IVec;
use sled::Transactional;
use sled::transaction::TransactionalTree;

use super::files::FileKind;
use super::records::{self, pb};
use super::users::{TxResult, abort, tx_decode, tx_error, tx_user};
use super::{Store, keys};
use crate::domain::{Embedding, Face, FaceId, Tenant, User, UserId};
use crate::error::{Error, Result};

/// A user's faces with their embeddings, oldest first.
pub type FaceEmbeddings = Vec<(FaceId, Embedding)>;

/// Which user a read is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKey<'a> {
    Id(UserId),
    External(&'a str),
}

/// The user record `key` names, inside a transaction.
fn tx_find_user(
    external: &TransactionalTree,
    users: &TransactionalTree,
    tenant: &Tenant,
    key: UserKey<'_>,
) -> TxResult<Option<pb::UserRecord>> {
    let id = match key {
        UserKey::Id(id) => id,
        UserKey::External(external_id) => match external.get(keys::external_key(tenant, external_id))? {
            Some(bytes) => match <[u8; 8]>::try_from(bytes.as_ref()) {
                Ok(id) => UserId(u64::from_be_bytes(id)),
                Err(_) => return abort(Error::bug("malformed external-id entry")),
            },
            None => return Ok(None),
        },
    };
    tx_user(users, tenant, id)
}

/// A face record the user lists; within one snapshot a missing one is a broken invariant.
fn tx_listed_face(faces: &TransactionalTree, key: &[u8]) -> TxResult<pb::FaceRecord> {
    match faces.get(key)? {
        Some(bytes) => tx_decode(&bytes, "decoding a face record"),
        None => abort(Error::bug("a user lists a missing face")),
    }
}

impl Store {
    /// The user `key` names, from one snapshot (the external id and the record agree).
    pub fn find_user(&self, tenant: &Tenant, key: UserKey<'_>) -> Result<Option<User>> {
        let record = (&self.external_ids, &self.users)
            .transaction(|(external, users)| tx_find_user(external, users, tenant, key))
            .map_err(tx_error)?;
        Ok(record.map(records::user_from_record))
    }

    /// The user `key` names and its faces, oldest first, as of one moment.
    pub fn user_with_faces(&self, tenant: &Tenant, key: UserKey<'_>) -> Result<Option<(User, Vec<Face>)>> {
        let found = (&self.external_ids, &self.users, &self.faces)
            .transaction(|(external, users, faces)| {
                let Some(record) = tx_find_user(external, users, tenant, key)? else { return Ok(None) };
                let listed = record
                    .face_ids
                    .iter()
                    .map(|&id| tx_listed_face(faces, &keys::face_key(tenant, FaceId(id))))
                    .collect::<TxResult<Vec<_>>>()?;
                Ok(Some((record, listed)))
            })
            .map_err(tx_error)?;
        Ok(found.map(|(user, faces)| {
            (records::user_from_record(user), faces.into_iter().map(records::face_from_record).collect())
        }))
    }

    /// The user `key` names and the embedding of each of its faces, as of one moment.
    pub fn user_with_embeddings(
        &self,
        tenant: &Tenant,
        key: UserKey<'_>,
        model: &str,
    ) -> Result<Option<(User, FaceEmbeddings)>> {
        let (tree, expected) = self.model_tree(model)?;
        let found = (&self.external_ids, &self.users, tree)
            .transaction(|(external, users, embeddings)| {
                let Some(record) = tx_find_user(external, users, tenant, key)? else { return Ok(None) };
                let mut sealed: Vec<(FaceId, IVec)> = Vec::with_capacity(record.face_ids.len());
                for &id in &record.face_ids {
                    let Some(bytes) = embeddings.get(keys::face_key(tenant, FaceId(id)))? else {
                        return abort(Error::bug("a user's face has no embedding"));
                    };
                    sealed.push((FaceId(id), bytes));
                }
                Ok(Some((record, sealed)))
            })
            .map_err(tx_error)?;
        let Some((record, sealed)) = found else { return Ok(None) };
        let mut out = Vec::with_capacity(sealed.len());
        for (id, bytes) in sealed {
            let key = keys::face_key(tenant, id);
            let plain = self.unseal(keys::EMBEDDINGS, &key, &bytes)?;
            let (_, embedding) = super::faces::decode_of_model(&plain, expected)?;
            out.push((id, embedding));
        }
        Ok(Some((records::user_from_record(record), out)))
    }

    /// A face and its original image (or thumbnail), as of one moment. The image is a file that
    /// is written before the face's transaction and removed only after the transaction that
    /// deletes the face: a record whose file is gone was deleted meanwhile, and reads as gone.
    pub fn face_with_image(&self, tenant: &Tenant, id: FaceId, thumbnail: bool) -> Result<Option<(Face, Vec<u8>)>> {
        let (name, kind) =
            if thumbnail { (keys::THUMBNAILS, FileKind::Thumbnail) } else { (keys::IMAGES, FileKind::Original) };
        let key = keys::face_key(tenant, id);
        let Some(face) = self.faces.get(&key).map_err(super::db_error)? else { return Ok(None) };
        let Some(image) = self.files.get(&key, kind)? else { return Ok(None) };
        let face = records::face_from_record(super::decode(&face, "decoding a face record")?);
        Ok(Some((face, self.unseal(name, &key, &image)?.into_owned())))
    }

    /// For each search hit (user, face), as of one moment: the user's external id when the face
    /// still exists and belongs to that user, `None` when either is gone.
    pub fn hit_owners(&self, tenant: &Tenant, hits: &[(UserId, FaceId)]) -> Result<Vec<Option<String>>> {
        (&self.users, &self.faces)
            .transaction(|(users, faces)| {
                let mut out = Vec::with_capacity(hits.len());
                for &(user, face) in hits {
                    let owner = match faces.get(keys::face_key(tenant, face))? {
                        Some(bytes) => tx_decode::<pb::FaceRecord>(&bytes, "decoding a face record")?.user_id,
                        None => 0,
                    };
                    let external_id =
                        if owner == user.0 { tx_user(users, tenant, user)?.map(|u| u.external_id) } else { None };
                    out.push(external_id);
                }
                Ok(out)
            })
            .map_err(tx_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{NewFace, Replace};

    fn user(external_id: &str) -> User {
        let now = std::time::SystemTime::now();
        User::unenrolled(external_id, now)
    }

    /// A face as the seal tests make it (distinct embedding per id).
    fn face(user: UserId, id: u64) -> NewFace {
        crate::storage::seal::tests::new_face(user, id, id as f32 * 0.01)
    }

    #[test]
    fn snapshots_of_users_faces_and_hits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = Tenant::new("t").unwrap();
        let a = store.create_user(&t, user("a"), None).unwrap();
        let b = store.create_user(&t, user("b"), None).unwrap();
        let (f1, f2) = (face(a.id, 11), face(a.id, 12));
        store.put_face(&t, &f1, Replace::Nothing, 5, None).unwrap();
        store.put_face(&t, &f2, Replace::Nothing, 5, None).unwrap();

        let (found, faces) = store.user_with_faces(&t, UserKey::External("a")).unwrap().unwrap();
        assert_eq!(found.id, a.id);
        assert_eq!(faces.iter().map(|f| f.id).collect::<Vec<_>>(), vec![FaceId(11), FaceId(12)]);
        assert_eq!(store.find_user(&t, UserKey::Id(b.id)).unwrap().unwrap().external_id, "b");
        assert!(store.find_user(&t, UserKey::External("nobody")).unwrap().is_none());
        assert!(store.user_with_faces(&Tenant::new("u").unwrap(), UserKey::Id(a.id)).unwrap().is_none());

        let (_, embeddings) = store.user_with_embeddings(&t, UserKey::Id(a.id), "w600k_mbf").unwrap().unwrap();
        assert_eq!(embeddings, vec![(FaceId(11), f1.embedding.clone()), (FaceId(12), f2.embedding.clone())]);
        let (face, image) = store.face_with_image(&t, FaceId(12), true).unwrap().unwrap();
        assert_eq!((face.user_id, image), (a.id, f2.thumbnail.clone()));

        // A hit is described only while its face exists and belongs to its user.
        store.delete_face(&t, FaceId(11)).unwrap();
        let hits = [(a.id, FaceId(12)), (a.id, FaceId(11)), (b.id, FaceId(12))];
        assert_eq!(store.hit_owners(&t, &hits).unwrap(), vec![Some("a".to_owned()), None, None]);
        assert!(store.face_with_image(&t, FaceId(11), false).unwrap().is_none());
        store.delete_user(&t, a.id, None).unwrap();
        assert_eq!(store.hit_owners(&t, &hits[..1]).unwrap(), vec![None]);
        assert!(store.user_with_embeddings(&t, UserKey::External("a"), "w600k_mbf").unwrap().is_none());
    }
}
