//! User records: create, read, partial update (with external-id index and re-enrollment
//! token in the same transaction), delete with everything of the user, list by id.

use std::time::SystemTime;

use prost::Message;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::records::{self, pb};
use super::requests::{self, RequestStamp};
use super::{Store, db_error, decode, keys, random_id};
use crate::domain::{EnrollmentStatus, FaceId, Tenant, User, UserId};
use crate::error::{Error, Reason, Result};

pub(crate) type TxResult<T> = std::result::Result<T, ConflictableTransactionError<Error>>;

pub(crate) fn abort<T>(err: Error) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(err))
}

pub(crate) fn tx_error(err: TransactionError<Error>) -> Error {
    match err {
        TransactionError::Abort(err) => err,
        TransactionError::Storage(err) => db_error(err),
    }
}

pub(crate) fn tx_decode<M: Message + Default>(bytes: &[u8], what: &'static str) -> TxResult<M> {
    decode(bytes, what).map_err(ConflictableTransactionError::Abort)
}

/// Reads a user record inside a transaction.
pub(crate) fn tx_user(users: &TransactionalTree, tenant: &Tenant, id: UserId) -> TxResult<Option<pb::UserRecord>> {
    match users.get(keys::user_key(tenant, id))? {
        Some(bytes) => Ok(Some(tx_decode(&bytes, "decoding a user record")?)),
        None => Ok(None),
    }
}

/// What an UpdateUser changes; `None` fields stay as they are.
#[derive(Debug, Default, Clone)]
pub struct UserPatch {
    pub external_id: Option<String>,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
    /// Sets REENROLLMENT_REQUIRED and stores this token (hash, expiry in ns since the epoch),
    /// replacing any outstanding one.
    pub reenrollment: Option<TokenGrant>,
}

/// A re-enrollment token as stored: only its sha256.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub hash: [u8; 32],
    pub expires_at: SystemTime,
}

fn check_version(user: &pb::UserRecord, expected: Option<u64>) -> TxResult<()> {
    version_matches(user.version, expected).or_else(abort)
}

/// ETAG_MISMATCH unless the user's `version` is the `expected` one (when given).
pub(super) fn version_matches(version: u64, expected: Option<u64>) -> Result<()> {
    match expected {
        Some(v) if v != version => {
            Err(Error::aborted(Reason::EtagMismatch, "the user changed since it was read; read it again")
                .with_meta("etag", format!("v{version}")))
        }
        Some(_) | None => Ok(()),
    }
}

/// The fields of `patch` besides the external id and the token (each backend keeps those
/// indexes), then the version and time: the rules of UpdateUser for both backends.
pub(super) fn apply_patch(user: &mut User, patch: &UserPatch) {
    let set = |field: &mut String, value: &Option<String>| {
        if let Some(v) = value {
            field.clone_from(v);
        }
    };
    set(&mut user.display_name, &patch.display_name);
    set(&mut user.email, &patch.email);
    set(&mut user.phone, &patch.phone);
    set(&mut user.address, &patch.address);
    if let Some(metadata) = &patch.metadata {
        user.metadata.clone_from(metadata);
    }
    if patch.reenrollment.is_some() {
        user.enrollment = EnrollmentStatus::ReenrollmentRequired;
    }
    user.version += 1;
    user.update_time = SystemTime::now();
}

/// The record of a new token for `user` of `tenant`.
pub(super) fn token_record(tenant: &Tenant, user: UserId, grant: &TokenGrant) -> pb::TokenRecord {
    pb::TokenRecord {
        tenant: tenant.as_str().to_owned(),
        user_id: user.0,
        expires_at_ns: records::to_nanos(grant.expires_at),
        attempts: 0,
    }
}

pub(super) fn taken(external_id: &str) -> Error {
    Error::already_exists(Reason::ExternalIdTaken, "another user of this tenant has that external_id")
        .with_meta("external_id", external_id)
}

impl Store {
    /// Stores a new user under a fresh random id; the external id must be free.
    pub fn create_user(&self, tenant: &Tenant, user: User, request: Option<&RequestStamp<'_, User>>) -> Result<User> {
        let trees = (&self.users, &self.external_ids, &self.requests, &self.log);
        let result = trees.transaction(|(users, external, requests, log)| {
            let ext_key = keys::external_key(tenant, &user.external_id);
            if external.get(&ext_key)?.is_some() {
                return abort(taken(&user.external_id));
            }
            let mut id = UserId(random_id().map_err(ConflictableTransactionError::Abort)?);
            while users.get(keys::user_key(tenant, id))?.is_some() {
                id = UserId(random_id().map_err(ConflictableTransactionError::Abort)?);
            }
            let user = User { id, ..user.clone() };
            users.insert(keys::user_key(tenant, id), records::user_to_record(&user, Vec::new()).encode_to_vec())?;
            external.insert(ext_key, &id.0.to_be_bytes())?;
            if !user.metadata.is_empty() {
                super::log::tx_append(log, &super::lists::user_tags_record(tenant, id, &user.metadata))?;
            }
            requests::tx_record(requests, tenant, request, &user)?;
            Ok(user)
        });
        let user = result.map_err(tx_error)?;
        self.commit()?;
        Ok(user)
    }

    pub fn get_user(&self, tenant: &Tenant, id: UserId) -> Result<Option<User>> {
        match self.users.get(keys::user_key(tenant, id)).map_err(db_error)? {
            Some(bytes) => Ok(Some(records::user_from_record(decode(&bytes, "decoding a user record")?))),
            None => Ok(None),
        }
    }

    pub fn user_id_by_external(&self, tenant: &Tenant, external_id: &str) -> Result<Option<UserId>> {
        let value = self.external_ids.get(keys::external_key(tenant, external_id)).map_err(db_error)?;
        Ok(value.and_then(|v| v.as_ref().try_into().ok().map(|b| UserId(u64::from_be_bytes(b)))))
    }

    /// Applies `patch` if the user's version is `expected_version` (when given).
    pub fn update_user(
        &self,
        tenant: &Tenant,
        id: UserId,
        expected_version: Option<u64>,
        patch: &UserPatch,
        request: Option<&RequestStamp<'_, User>>,
    ) -> Result<User> {
        let trees = (&self.users, &self.external_ids, &self.tokens, &self.requests, &self.log);
        let result = trees.transaction(|(users, external, tokens, requests, log)| {
            let Some(record) = tx_user(users, tenant, id)? else { return abort(Error::user_not_found()) };
            check_version(&record, expected_version)?;
            let mut token_hash = record.reenrollment_token_hash.clone();
            let mut user = records::user_from_record(record);
            if let Some(new_ext) = &patch.external_id
                && *new_ext != user.external_id
            {
                let new_key = keys::external_key(tenant, new_ext);
                if external.get(&new_key)?.is_some() {
                    return abort(taken(new_ext));
                }
                external.remove(keys::external_key(tenant, &user.external_id))?;
                external.insert(new_key, &id.0.to_be_bytes())?;
                user.external_id.clone_from(new_ext);
            }
            if let Some(grant) = &patch.reenrollment {
                if !token_hash.is_empty() {
                    tokens.remove(token_hash.as_slice())?;
                }
                tokens.insert(&grant.hash[..], token_record(tenant, id, grant).encode_to_vec())?;
                token_hash = grant.hash.to_vec();
            }
            let tags_before = user.metadata.clone();
            apply_patch(&mut user, patch);
            if user.metadata != tags_before {
                super::log::tx_append(log, &super::lists::user_tags_record(tenant, id, &user.metadata))?;
            }
            users.insert(keys::user_key(tenant, id), records::user_to_record(&user, token_hash).encode_to_vec())?;
            requests::tx_record(requests, tenant, request, &user)?;
            Ok(user)
        });
        let user = result.map_err(tx_error)?;
        self.commit()?;
        Ok(user)
    }

    /// Erases the user and every face, embedding, original, thumbnail and token of it, in one
    /// transaction. Returns the erased face ids (for the search index).
    pub fn delete_user(&self, tenant: &Tenant, id: UserId, expected_version: Option<u64>) -> Result<Vec<FaceId>> {
        self.delete_user_pending(tenant, id, expected_version, None)?.durable()
    }

    /// [`Store::delete_user`], committed but not yet durable (see [`super::Pending`]).
    pub fn delete_user_pending(
        &self,
        tenant: &Tenant,
        id: UserId,
        expected_version: Option<u64>,
        request: Option<&RequestStamp<'_, Vec<FaceId>>>,
    ) -> Result<super::Pending<Vec<FaceId>>> {
        // Listed before the transaction (a read of a tree the transaction holds would wait for
        // it): the app writes a user's recorded requests under the tenant's lock, which the
        // delete holds, so none is added meanwhile.
        let owned = self.owned_requests(tenant, id)?;
        let trees = (
            &self.users,
            &self.external_ids,
            &self.faces,
            &self.embeddings,
            &self.embeddings_1,
            &self.tokens,
            &self.log,
            &self.requests,
        );
        let result = trees.transaction(|(users, external, faces, embeddings, embeddings_1, tokens, log, requests)| {
            let Some(record) = tx_user(users, tenant, id)? else { return abort(Error::user_not_found()) };
            check_version(&record, expected_version)?;
            users.remove(keys::user_key(tenant, id))?;
            external.remove(keys::external_key(tenant, &record.external_id))?;
            if !record.reenrollment_token_hash.is_empty() {
                tokens.remove(record.reenrollment_token_hash.as_slice())?;
            }
            for &face in &record.face_ids {
                let key = keys::face_key(tenant, FaceId(face));
                for tree in [faces, embeddings, embeddings_1] {
                    tree.remove(key.as_slice())?;
                }
            }
            let removed = record.face_ids.iter().copied().map(FaceId).collect::<Vec<_>>();
            requests::tx_erase(requests, tenant, id, &owned)?;
            requests::tx_record(requests, tenant, request, &removed)?;
            // A user without faces or metadata changes nothing the index holds: no entry.
            let seq = if removed.is_empty() && record.metadata.is_empty() {
                0
            } else {
                super::log::tx_append(log, &super::log::removed_record(tenant, &removed, Some(id)))?
            };
            Ok((removed, seq))
        });
        let (removed, seq) = result.map_err(tx_error)?;
        let files = removed.iter().map(|&face| (tenant.clone(), face)).collect();
        Ok(self.pending(removed, seq, files))
    }

    /// Number of users of a tenant (a key scan).
    pub fn count_users(&self, tenant: &Tenant) -> Result<usize> {
        let mut n = 0;
        for key in self.users.scan_prefix(keys::tenant_prefix(tenant)).keys() {
            key.map_err(db_error)?;
            n += 1;
        }
        Ok(n)
    }

    /// Up to `limit` users with ids above `after`, in id order.
    pub fn list_users(&self, tenant: &Tenant, after: Option<UserId>, limit: usize) -> Result<Vec<User>> {
        let prefix = keys::tenant_prefix(tenant);
        let start = match after {
            Some(id) => {
                let mut key = keys::user_key(tenant, id);
                key.push(0); // strictly after
                key
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for entry in self.users.range(start..) {
            let (key, value) = entry.map_err(db_error)?;
            if !key.starts_with(&prefix) || out.len() == limit {
                break;
            }
            out.push(records::user_from_record(decode(&value, "decoding a user record")?));
        }
        Ok(out)
    }

    /// Removes every re-enrollment token that expired by `now`, and its hash from the user's
    /// record (the user stays REENROLLMENT_REQUIRED: only the dead token goes). Returns how
    /// many went.
    pub fn purge_expired_tokens(&self, now: SystemTime) -> Result<usize> {
        let expired = |bytes: &[u8]| -> Result<Option<pb::TokenRecord>> {
            let token: pb::TokenRecord = decode(bytes, "decoding a token record")?;
            Ok((records::from_nanos(token.expires_at_ns) <= now).then_some(token))
        };
        let mut purged = 0;
        for entry in self.tokens.iter() {
            let (hash, value) = entry.map_err(db_error)?;
            if expired(&value)?.is_none() {
                continue;
            }
            let removed = (&self.users, &self.tokens).transaction(|(users, tokens)| {
                // Read again inside the transaction: UpdateUser or UpdateFace may have replaced
                // or spent the token since the scan.
                let Some(bytes) = tokens.get(&hash)? else { return Ok(false) };
                let Some(token) = expired(&bytes).map_err(ConflictableTransactionError::Abort)? else {
                    return Ok(false);
                };
                tokens.remove(hash.clone())?;
                let id = UserId(token.user_id);
                if let Some(tenant) = Tenant::new(&token.tenant)
                    && let Some(mut record) = tx_user(users, &tenant, id)?
                    && record.reenrollment_token_hash == hash.as_ref()
                {
                    record.reenrollment_token_hash.clear();
                    users.insert(keys::user_key(&tenant, id), record.encode_to_vec())?;
                }
                Ok(true)
            });
            purged += usize::from(removed.map_err(tx_error)?);
        }
        if purged > 0 {
            self.commit()?;
        }
        Ok(purged)
    }

    /// The tenant and user a token hash was issued for, if it exists, has not expired and has
    /// attempts left (fewer than `max_attempts` admitted so far).
    pub fn token_user(&self, hash: &[u8; 32], max_attempts: u32) -> Result<Option<(Tenant, UserId)>> {
        let Some(bytes) = self.tokens.get(&hash[..]).map_err(db_error)? else { return Ok(None) };
        let token: pb::TokenRecord = decode(&bytes, "decoding a token record")?;
        Ok(usable_token(&token, max_attempts))
    }

    /// Counts one attempt against a token: its tenant and user when it was usable (and now has
    /// one attempt fewer), `None` when it is unknown, expired or spent. Durable before it returns,
    /// so a restart does not give attempts back.
    pub fn use_token_attempt(&self, hash: &[u8; 32], max_attempts: u32) -> Result<Option<(Tenant, UserId)>> {
        let result = self.tokens.transaction(|tokens| {
            let Some(bytes) = tokens.get(&hash[..])? else { return Ok(None) };
            let mut token: pb::TokenRecord = tx_decode(&bytes, "decoding a token record")?;
            let Some(owner) = usable_token(&token, max_attempts) else { return Ok(None) };
            token.attempts += 1;
            tokens.insert(&hash[..], token.encode_to_vec())?;
            Ok(Some(owner))
        });
        let owner = result.map_err(tx_error)?;
        if owner.is_some() {
            self.commit()?;
        }
        Ok(owner)
    }
}

/// The owner of a token record that is unexpired and has attempts left.
pub(super) fn usable_token(token: &pb::TokenRecord, max_attempts: u32) -> Option<(Tenant, UserId)> {
    if records::from_nanos(token.expires_at_ns) <= SystemTime::now() || token.attempts >= max_attempts {
        return None;
    }
    Tenant::new(&token.tenant).map(|t| (t, UserId(token.user_id)))
}
