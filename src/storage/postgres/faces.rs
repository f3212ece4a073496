//! Faces on PostgreSQL: record and embedding in `faces`, original and thumbnail in
//! `face_images`, the user's record and the change-log entry in the same transaction. The
//! rules are sled's (storage/faces.rs: `plan_put`, `face_removed`).

use prost::Message;

use super::users::{decode, lock_user, read_user, save_user, user_id};
use super::{PgStore, pg_error, read_snapshot, to_db};
use crate::domain::{Embedding, Face, FaceId, Tenant, User, UserId};
use crate::error::{Error, Result};
use crate::storage::faces::{face_removed, plan_put, sealed_slots, token_matches};
use crate::storage::records::{self, pb};
use crate::storage::seal::{seal_with, unseal_with};
use crate::storage::{FaceEmbeddings, NewFace, Pending, Replace, RequestStamp, UserKey, keys, log};

impl PgStore {
    pub(super) async fn put_face(
        &self,
        tenant: &Tenant,
        new: &NewFace,
        replace: Replace,
        max_faces: usize,
        token: Option<[u8; 32]>,
        request: Option<&RequestStamp<'_, (User, Option<FaceId>)>>,
    ) -> Result<Pending<(User, Option<FaceId>)>> {
        let user_id = new.face.user_id;
        let key = keys::face_key(tenant, new.face.id);
        let enc = self.encryption.as_ref();
        // Sealed before the transaction: no crypto while rows are locked. The slots are those
        // of the models now; the transaction refuses the write if they changed meanwhile.
        let state = self.model_state().await?;
        let slots = sealed_slots(&state, new, |plain| Ok(seal_with(enc, keys::EMBEDDINGS, &key, plain)?.into_owned()))?;
        let value = |slot: usize| slots.iter().find(|(s, _)| *s == slot).map(|(_, v)| v.clone()).unwrap_or_default();
        let (embedding, embedding_1) = (value(0), value(1));
        let active = value(state.active);
        let other = slots.iter().find(|(s, _)| *s != state.active).map(|(_, v)| v.as_slice());
        let original = seal_with(enc, keys::IMAGES, &key, &new.original)?;
        let thumbnail = seal_with(enc, keys::THUMBNAILS, &key, &new.thumbnail)?;
        let t = tenant.as_str();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        self.check_fence(&tx, tenant).await?;
        super::models::hold_models(&tx, state.generation).await?;
        let record = lock_user(&tx, tenant, user_id).await?.ok_or_else(Error::user_not_found)?;
        let mut token_hash = record.reenrollment_token_hash.clone();
        let mut user = records::user_from_record(record);
        let token_ok = match token {
            Some(hash) => {
                let row = tx
                    .query_opt("SELECT record FROM tokens WHERE hash = $1 FOR UPDATE", &[&&hash[..]])
                    .await
                    .map_err(pg_error)?;
                match row {
                    Some(row) => {
                        token_matches(&decode(row.get::<_, &[u8]>(0), "decoding a token record")?, tenant, user_id)
                    }
                    None => false,
                }
            }
            None => true,
        };
        let (removed, spent) = plan_put(&mut user, &mut token_hash, token_ok, new.face.id, replace, max_faces)?;
        if let Some(old) = removed {
            tx.execute("DELETE FROM faces WHERE tenant = $1 AND id = $2", &[&t, &to_db(old.0)])
                .await
                .map_err(pg_error)?;
            tx.execute("DELETE FROM face_images WHERE tenant = $1 AND face_id = $2", &[&t, &to_db(old.0)])
                .await
                .map_err(pg_error)?;
        }
        if let Some(spent) = spent {
            tx.execute("DELETE FROM tokens WHERE hash = $1", &[&spent]).await.map_err(pg_error)?;
        }
        let id = to_db(new.face.id.0);
        tx.execute(
            "INSERT INTO faces (tenant, id, user_id, record, embedding, embedding_1) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &t,
                &id,
                &to_db(user_id.0),
                &records::face_to_record(&new.face).encode_to_vec(),
                &embedding,
                &embedding_1,
            ],
        )
        .await
        .map_err(pg_error)?;
        tx.execute(
            "INSERT INTO face_images (tenant, face_id, original, thumbnail) VALUES ($1, $2, $3, $4)",
            &[&t, &id, &original.as_ref(), &thumbnail.as_ref()],
        )
        .await
        .map_err(pg_error)?;
        save_user(&tx, tenant, &user, token_hash).await?;
        let record = log::put_record(tenant, new.face.id, user_id, &active, other, removed);
        let seq = super::log::append(&tx, tenant, &record).await?;
        let user = (user, removed);
        super::requests::record(&tx, tenant, request, &user).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Pending::new(user, seq, || Ok(())))
    }

    pub(super) async fn delete_face(
        &self,
        tenant: &Tenant,
        id: FaceId,
        request: Option<&RequestStamp<'_, User>>,
    ) -> Result<Pending<User>> {
        let t = tenant.as_str();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        self.check_fence(&tx, tenant).await?;
        let row = tx
            .query_opt("SELECT user_id FROM faces WHERE tenant = $1 AND id = $2", &[&t, &to_db(id.0)])
            .await
            .map_err(pg_error)?;
        let owner = user_id(row.ok_or_else(Error::face_not_found)?.get(0));
        // The user's row first (as every face write does), then the face again under it.
        let record =
            lock_user(&tx, tenant, owner).await?.ok_or_else(|| Error::bug("a face points to a missing user"))?;
        let deleted = tx
            .execute(
                "DELETE FROM faces WHERE tenant = $1 AND id = $2 AND user_id = $3",
                &[&t, &to_db(id.0), &to_db(owner.0)],
            )
            .await
            .map_err(pg_error)?;
        if deleted == 0 {
            return Err(Error::face_not_found());
        }
        tx.execute("DELETE FROM face_images WHERE tenant = $1 AND face_id = $2", &[&t, &to_db(id.0)])
            .await
            .map_err(pg_error)?;
        let token_hash = record.reenrollment_token_hash.clone();
        let mut user = records::user_from_record(record);
        face_removed(&mut user, id);
        save_user(&tx, tenant, &user, token_hash).await?;
        let seq = super::log::append(&tx, tenant, &log::removed_record(tenant, &[id], None)).await?;
        super::requests::record(&tx, tenant, request, &user).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Pending::new(user, seq, || Ok(())))
    }

    pub(super) async fn get_face(&self, tenant: &Tenant, id: FaceId) -> Result<Option<Face>> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt("SELECT record FROM faces WHERE tenant = $1 AND id = $2", &[&tenant.as_str(), &to_db(id.0)])
            .await
            .map_err(pg_error)?;
        row.map(|r| Ok(records::face_from_record(decode(r.get::<_, &[u8]>(0), "decoding a face record")?))).transpose()
    }

    pub(super) async fn face_embedding(&self, tenant: &Tenant, id: FaceId, model: &str) -> Result<Option<Embedding>> {
        let (column, expected) = self.model_column(model).await?;
        let conn = self.conn().await?;
        let sql = format!("SELECT {column} FROM faces WHERE tenant = $1 AND id = $2");
        let row = conn.query_opt(&sql, &[&tenant.as_str(), &to_db(id.0)]).await.map_err(pg_error)?;
        let Some(row) = row else { return Ok(None) };
        let stored: &[u8] = row.get(0);
        if stored.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.open_embedding(tenant, id, stored, expected)?.1))
    }

    /// The owner and embedding of a stored (sealed) embedding value read from the slot of
    /// `model` (empty: any; see `decode_of_model`).
    pub(super) fn open_embedding(
        &self,
        tenant: &Tenant,
        id: FaceId,
        stored: &[u8],
        model: &str,
    ) -> Result<(UserId, Embedding)> {
        let key = keys::face_key(tenant, id);
        let plain = unseal_with(self.encryption.as_ref(), keys::EMBEDDINGS, &key, stored)?;
        crate::storage::faces::decode_of_model(&plain, model)
    }

    pub(super) async fn face_with_image(
        &self,
        tenant: &Tenant,
        id: FaceId,
        thumbnail: bool,
    ) -> Result<Option<(Face, Vec<u8>)>> {
        let (column, tree) = if thumbnail { ("thumbnail", keys::THUMBNAILS) } else { ("original", keys::IMAGES) };
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT f.record, i.{column} FROM faces f JOIN face_images i ON i.tenant = f.tenant AND i.face_id = f.id \
             WHERE f.tenant = $1 AND f.id = $2"
        );
        let row = conn.query_opt(&sql, &[&tenant.as_str(), &to_db(id.0)]).await.map_err(pg_error)?;
        let Some(row) = row else { return Ok(None) };
        let face = records::face_from_record(decode(row.get::<_, &[u8]>(0), "decoding a face record")?);
        let key = keys::face_key(tenant, id);
        let image = unseal_with(self.encryption.as_ref(), tree, &key, row.get::<_, &[u8]>(1))?.into_owned();
        Ok(Some((face, image)))
    }

    /// The user `key` names and the rows of its faces (`column` of `faces`), from one state.
    async fn user_with_rows(
        &self,
        tenant: &Tenant,
        key: UserKey<'_>,
        column: &str,
    ) -> Result<Option<(pb::UserRecord, Vec<(FaceId, Vec<u8>)>)>> {
        let mut conn = self.conn().await?;
        let tx = read_snapshot(&mut conn).await?;
        let Some(record) = read_user(&tx, tenant, key).await? else { return Ok(None) };
        let ids: Vec<i64> = record.face_ids.iter().map(|&f| to_db(f)).collect();
        let sql = format!("SELECT id, {column} FROM faces WHERE tenant = $1 AND id = ANY($2)");
        let rows = tx.query(&sql, &[&tenant.as_str(), &ids]).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        let mut by_id: std::collections::HashMap<u64, Vec<u8>> =
            rows.into_iter().map(|r| (super::from_db(r.get(0)), r.get::<_, Vec<u8>>(1))).collect();
        let mut listed = Vec::with_capacity(record.face_ids.len());
        for &id in &record.face_ids {
            let value = by_id.remove(&id).ok_or_else(|| Error::bug("a user lists a missing face"))?;
            listed.push((FaceId(id), value));
        }
        Ok(Some((record, listed)))
    }

    pub(super) async fn user_with_faces(&self, tenant: &Tenant, key: UserKey<'_>) -> Result<Option<(User, Vec<Face>)>> {
        let Some((record, rows)) = self.user_with_rows(tenant, key, "record").await? else { return Ok(None) };
        let faces = rows
            .iter()
            .map(|(_, bytes)| Ok(records::face_from_record(decode(bytes, "decoding a face record")?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((records::user_from_record(record), faces)))
    }

    pub(super) async fn user_with_embeddings(
        &self,
        tenant: &Tenant,
        key: UserKey<'_>,
        model: &str,
    ) -> Result<Option<(User, FaceEmbeddings)>> {
        let (column, expected) = self.model_column(model).await?;
        let Some((record, rows)) = self.user_with_rows(tenant, key, column).await? else { return Ok(None) };
        let embeddings = rows
            .iter()
            .map(|(id, bytes)| Ok((*id, self.open_embedding(tenant, *id, bytes, expected)?.1)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((records::user_from_record(record), embeddings)))
    }

    pub(super) async fn hit_owners(&self, tenant: &Tenant, hits: &[(UserId, FaceId)]) -> Result<Vec<Option<String>>> {
        let conn = self.conn().await?;
        let ids: Vec<i64> = hits.iter().map(|(_, f)| to_db(f.0)).collect();
        // One statement: one state.
        let rows = conn
            .query(
                "SELECT f.id, f.user_id, u.external_id FROM faces f \
                 JOIN users u ON u.tenant = f.tenant AND u.id = f.user_id \
                 WHERE f.tenant = $1 AND f.id = ANY($2)",
                &[&tenant.as_str(), &ids],
            )
            .await
            .map_err(pg_error)?;
        let owners: std::collections::HashMap<u64, (u64, String)> =
            rows.into_iter().map(|r| (super::from_db(r.get(0)), (super::from_db(r.get(1)), r.get(2)))).collect();
        Ok(hits
            .iter()
            .map(|(user, face)| match owners.get(&face.0) {
                Some((owner, external_id)) if *owner == user.0 => Some(external_id.clone()),
                Some(_) | None => None,
            })
            .collect())
    }
}
