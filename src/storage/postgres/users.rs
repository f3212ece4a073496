//! Users and re-enrollment tokens on PostgreSQL: the rules are sled's (storage/users.rs), each
//! write one transaction that locks the user's row.

use std::time::SystemTime;

use prost::Message;
use tokio_postgres::Transaction;

use super::{PgStore, from_db, pg_error, to_db};
use crate::domain::{FaceId, Tenant, User, UserId};
use crate::error::{Error, Result};
use crate::storage::lists::user_tags_record;
use crate::storage::records::{self, pb};
use crate::storage::users::{apply_patch, taken, token_record, usable_token, version_matches};
use crate::storage::{Pending, RequestStamp, UserKey, UserPatch, random_id};

pub(super) fn decode<M: Message + Default>(bytes: &[u8], what: &'static str) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::internal(what, e))
}

/// Whether a statement failed on the unique index of external ids.
fn external_id_taken(err: &tokio_postgres::Error) -> bool {
    err.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION && db.constraint() == Some("users_external_id")
    })
}

/// The record `key` names, read through `client` (a connection, or a snapshot transaction).
pub(super) async fn read_user(
    client: &impl tokio_postgres::GenericClient,
    tenant: &Tenant,
    key: UserKey<'_>,
) -> Result<Option<pb::UserRecord>> {
    let row = match key {
        UserKey::Id(id) => {
            client
                .query_opt("SELECT record FROM users WHERE tenant = $1 AND id = $2", &[&tenant.as_str(), &to_db(id.0)])
                .await
        }
        UserKey::External(external_id) => {
            client
                .query_opt(
                    "SELECT record FROM users WHERE tenant = $1 AND external_id = $2",
                    &[&tenant.as_str(), &external_id],
                )
                .await
        }
    }
    .map_err(pg_error)?;
    row.map(|r| decode(r.get::<_, &[u8]>(0), "decoding a user record")).transpose()
}

/// The user's record, its row locked to the end of the transaction.
pub(super) async fn lock_user(tx: &Transaction<'_>, tenant: &Tenant, id: UserId) -> Result<Option<pb::UserRecord>> {
    let row = tx
        .query_opt(
            "SELECT record FROM users WHERE tenant = $1 AND id = $2 FOR UPDATE",
            &[&tenant.as_str(), &to_db(id.0)],
        )
        .await
        .map_err(pg_error)?;
    row.map(|r| decode(r.get::<_, &[u8]>(0), "decoding a user record")).transpose()
}

pub(super) async fn save_user(tx: &Transaction<'_>, tenant: &Tenant, user: &User, token_hash: Vec<u8>) -> Result<()> {
    let record = records::user_to_record(user, token_hash).encode_to_vec();
    tx.execute(
        "UPDATE users SET record = $3, external_id = $4 WHERE tenant = $1 AND id = $2",
        &[&tenant.as_str(), &to_db(user.id.0), &record, &user.external_id],
    )
    .await
    .map_err(|e| if external_id_taken(&e) { taken(&user.external_id) } else { pg_error(e) })?;
    Ok(())
}

impl PgStore {
    pub(super) async fn create_user(
        &self,
        tenant: &Tenant,
        user: User,
        request: Option<&RequestStamp<'_, User>>,
    ) -> Result<User> {
        let mut conn = self.conn().await?;
        loop {
            // In a transaction with the fence: a create under the tenant's lock (a quota check)
            // fails if another node took the lock since.
            let tx = conn.transaction().await.map_err(pg_error)?;
            self.check_fence(&tx, tenant).await?;
            let user = User { id: UserId(random_id()?), ..user.clone() };
            let record = records::user_to_record(&user, Vec::new()).encode_to_vec();
            let inserted = tx
                .execute(
                    "INSERT INTO users (tenant, id, external_id, record) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (tenant, id) DO NOTHING",
                    &[&tenant.as_str(), &to_db(user.id.0), &user.external_id, &record],
                )
                .await
                .map_err(|e| if external_id_taken(&e) { taken(&user.external_id) } else { pg_error(e) })?;
            if inserted == 1 {
                // The log before the request record, as every write (log_head, then requests).
                if !user.metadata.is_empty() {
                    super::log::append(&tx, tenant, &user_tags_record(tenant, user.id, &user.metadata)).await?;
                }
                super::requests::record(&tx, tenant, request, &user).await?;
                tx.commit().await.map_err(pg_error)?;
                return Ok(user);
            }
            // A random id that is taken (one in 2^64): draw again.
        }
    }

    pub(super) async fn get_user(&self, tenant: &Tenant, id: UserId) -> Result<Option<User>> {
        self.find_user(tenant, UserKey::Id(id)).await
    }

    pub(super) async fn find_user(&self, tenant: &Tenant, key: UserKey<'_>) -> Result<Option<User>> {
        let record = self.find_record(tenant, key).await?;
        Ok(record.map(records::user_from_record))
    }

    /// The record `key` names (one statement: one state).
    pub(super) async fn find_record(&self, tenant: &Tenant, key: UserKey<'_>) -> Result<Option<pb::UserRecord>> {
        read_user(&*self.conn().await?, tenant, key).await
    }

    pub(super) async fn update_user(
        &self,
        tenant: &Tenant,
        id: UserId,
        expected_version: Option<u64>,
        patch: &UserPatch,
        request: Option<&RequestStamp<'_, User>>,
    ) -> Result<User> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        self.check_fence(&tx, tenant).await?;
        let record = lock_user(&tx, tenant, id).await?.ok_or_else(Error::user_not_found)?;
        version_matches(record.version, expected_version)?;
        let mut token_hash = record.reenrollment_token_hash.clone();
        let mut user = records::user_from_record(record);
        if let Some(external_id) = &patch.external_id {
            user.external_id.clone_from(external_id);
        }
        if let Some(grant) = &patch.reenrollment {
            if !token_hash.is_empty() {
                tx.execute("DELETE FROM tokens WHERE hash = $1", &[&token_hash]).await.map_err(pg_error)?;
            }
            let token = token_record(tenant, id, grant).encode_to_vec();
            tx.execute(
                "INSERT INTO tokens (hash, expires_ns, record) VALUES ($1, $2, $3)",
                &[&&grant.hash[..], &records::to_nanos(grant.expires_at), &token],
            )
            .await
            .map_err(pg_error)?;
            token_hash = grant.hash.to_vec();
        }
        let tags_before = user.metadata.clone();
        apply_patch(&mut user, patch);
        save_user(&tx, tenant, &user, token_hash).await?;
        if user.metadata != tags_before {
            super::log::append(&tx, tenant, &user_tags_record(tenant, id, &user.metadata)).await?;
        }
        super::requests::record(&tx, tenant, request, &user).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(user)
    }

    pub(super) async fn delete_user(
        &self,
        tenant: &Tenant,
        id: UserId,
        expected_version: Option<u64>,
        request: Option<&RequestStamp<'_, Vec<FaceId>>>,
    ) -> Result<Pending<Vec<FaceId>>> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        self.check_fence(&tx, tenant).await?;
        let record = lock_user(&tx, tenant, id).await?.ok_or_else(Error::user_not_found)?;
        version_matches(record.version, expected_version)?;
        let t = tenant.as_str();
        tx.execute("DELETE FROM users WHERE tenant = $1 AND id = $2", &[&t, &to_db(id.0)]).await.map_err(pg_error)?;
        if !record.reenrollment_token_hash.is_empty() {
            tx.execute("DELETE FROM tokens WHERE hash = $1", &[&record.reenrollment_token_hash])
                .await
                .map_err(pg_error)?;
        }
        let removed: Vec<FaceId> = record.face_ids.iter().copied().map(FaceId).collect();
        if !removed.is_empty() {
            let ids: Vec<i64> = record.face_ids.iter().map(|&f| to_db(f)).collect();
            tx.execute("DELETE FROM faces WHERE tenant = $1 AND id = ANY($2)", &[&t, &ids]).await.map_err(pg_error)?;
            tx.execute("DELETE FROM face_images WHERE tenant = $1 AND face_id = ANY($2)", &[&t, &ids])
                .await
                .map_err(pg_error)?;
        }
        // A user without faces or metadata changes nothing the index holds: no entry.
        let seq = if removed.is_empty() && record.metadata.is_empty() {
            0
        } else {
            super::log::append(&tx, tenant, &crate::storage::log::removed_record(tenant, &removed, Some(id))).await?
        };
        super::requests::erase(&tx, tenant, id).await?;
        super::requests::record(&tx, tenant, request, &removed).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Pending::new(removed, seq, || Ok(())))
    }

    pub(super) async fn count_users(&self, tenant: &Tenant) -> Result<usize> {
        let conn = self.conn().await?;
        let n: i64 = conn
            .query_one("SELECT count(*) FROM users WHERE tenant = $1", &[&tenant.as_str()])
            .await
            .map_err(pg_error)?
            .get(0);
        Ok(n as usize)
    }

    pub(super) async fn list_users(&self, tenant: &Tenant, after: Option<UserId>, limit: usize) -> Result<Vec<User>> {
        let conn = self.conn().await?;
        // Ids are ordered as u64 (to_db keeps the order): the same pages as on sled.
        let after = after.map_or(i64::MIN, |id| to_db(id.0));
        let rows = conn
            .query(
                "SELECT record FROM users WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT $3",
                &[&tenant.as_str(), &after, &(limit as i64)],
            )
            .await
            .map_err(pg_error)?;
        // Ids are never 0, so `id > i64::MIN` (u64 0) starts at the first.
        let mut users = Vec::with_capacity(rows.len());
        for row in rows {
            users.push(records::user_from_record(decode(row.get::<_, &[u8]>(0), "decoding a user record")?));
        }
        Ok(users)
    }

    pub(super) async fn token_user(&self, hash: &[u8; 32], max_attempts: u32) -> Result<Option<(Tenant, UserId)>> {
        let conn = self.conn().await?;
        let row = conn.query_opt("SELECT record FROM tokens WHERE hash = $1", &[&&hash[..]]).await.map_err(pg_error)?;
        let Some(row) = row else { return Ok(None) };
        let token: pb::TokenRecord = decode(row.get::<_, &[u8]>(0), "decoding a token record")?;
        Ok(usable_token(&token, max_attempts))
    }

    pub(super) async fn use_token_attempt(
        &self,
        hash: &[u8; 32],
        max_attempts: u32,
    ) -> Result<Option<(Tenant, UserId)>> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        let row = tx
            .query_opt("SELECT record FROM tokens WHERE hash = $1 FOR UPDATE", &[&&hash[..]])
            .await
            .map_err(pg_error)?;
        let Some(row) = row else { return Ok(None) };
        let mut token: pb::TokenRecord = decode(row.get::<_, &[u8]>(0), "decoding a token record")?;
        let Some(owner) = usable_token(&token, max_attempts) else { return Ok(None) };
        token.attempts += 1;
        tx.execute("UPDATE tokens SET record = $2 WHERE hash = $1", &[&&hash[..], &token.encode_to_vec()])
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Some(owner))
    }

    /// Removes the tokens expired by `now`, and each one's hash from its user's record. Each
    /// token in its own transaction that locks the user's row first, then the token (the order
    /// of every other write), so a purge never deadlocks with an upload.
    pub(super) async fn purge_expired_tokens(&self, now: SystemTime) -> Result<usize> {
        let mut conn = self.conn().await?;
        let now = records::to_nanos(now);
        let expired =
            conn.query("SELECT hash, record FROM tokens WHERE expires_ns <= $1", &[&now]).await.map_err(pg_error)?;
        let mut purged = 0;
        for row in &expired {
            let hash: &[u8] = row.get(0);
            let token: pb::TokenRecord = decode(row.get::<_, &[u8]>(1), "decoding a token record")?;
            let tx = conn.transaction().await.map_err(pg_error)?;
            let owner = Tenant::new(&token.tenant).map(|tenant| (tenant, UserId(token.user_id)));
            let record = match &owner {
                Some((tenant, id)) => lock_user(&tx, tenant, *id).await?,
                None => None,
            };
            // Read again under the locks: UpdateUser or UpdateFace may have replaced or spent it.
            let deleted = tx
                .execute("DELETE FROM tokens WHERE hash = $1 AND expires_ns <= $2", &[&hash, &now])
                .await
                .map_err(pg_error)?;
            if let (Some((tenant, id)), Some(mut record)) = (owner, record)
                && deleted == 1
                && record.reenrollment_token_hash == hash
            {
                // The hash leaves the user's record too (the user stays REENROLLMENT_REQUIRED).
                record.reenrollment_token_hash.clear();
                tx.execute(
                    "UPDATE users SET record = $3 WHERE tenant = $1 AND id = $2",
                    &[&tenant.as_str(), &to_db(id.0), &record.encode_to_vec()],
                )
                .await
                .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)?;
            purged += deleted as usize;
        }
        Ok(purged)
    }
}

/// The user id of a row's `id` column.
pub(super) fn user_id(value: i64) -> UserId {
    UserId(from_db(value))
}
