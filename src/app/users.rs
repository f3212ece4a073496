//! User CRUD orchestration: validation, store calls, re-enrollment tokens, and cascading face
//! removal from the index (store first, then index). Never touches tensors.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::requests::{Idempotency, Written, stamped};
use super::{App, blocking, validate};
use crate::domain::{EnrollmentStatus, Principal, User, UserId};
use crate::error::{Error, Reason, Result};
use crate::storage::{TokenGrant, UserKey, UserPatch};

/// A user reference from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    Id(UserId),
    External(String),
}

impl UserRef {
    /// The store's key of the user; `None` when no user can have this reference.
    pub(crate) fn storage_key(&self) -> UserKey<'_> {
        match self {
            UserRef::Id(id) => UserKey::Id(*id),
            UserRef::External(external) => UserKey::External(external),
        }
    }
}

/// The fields of CreateUser.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    pub external_id: String,
    pub display_name: String,
    pub email: String,
    pub phone: String,
    pub address: String,
    pub metadata: BTreeMap<String, String>,
}

/// An UpdateUser request after mask resolution: `None` fields are not in the mask.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    pub external_id: Option<String>,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub require_face_reenrollment: bool,
    /// The version the caller read (from its etag), if it sent one.
    pub expected_version: Option<u64>,
}

/// Parses an etag ("v7") into the user version it names; `None` for an empty etag.
pub fn parse_etag(etag: &str) -> Result<Option<u64>> {
    if etag.is_empty() {
        return Ok(None);
    }
    etag.strip_prefix('v').and_then(|v| v.parse().ok()).map(Some).ok_or_else(|| {
        Error::aborted(Reason::EtagMismatch, "the etag does not belong to this user; read it again")
            .with_meta("etag", etag)
    })
}

fn validate_fields(prefix: &'static str, u: &UserUpdate) -> Result<()> {
    // Field paths as the caller sent them, for BadRequest.
    let f = |name: &'static str| -> &'static str {
        match (prefix, name) {
            ("user", "external_id") => "user.external_id",
            ("user", "display_name") => "user.display_name",
            ("user", "email") => "user.email",
            ("user", "phone") => "user.phone",
            ("user", "address") => "user.address",
            ("user", _) => "user.metadata",
            ("item.user", "external_id") => "item.user.external_id",
            ("item.user", "display_name") => "item.user.display_name",
            ("item.user", "email") => "item.user.email",
            ("item.user", "phone") => "item.user.phone",
            ("item.user", "address") => "item.user.address",
            ("item.user", _) => "item.user.metadata",
            (_, "external_id") => "user_update.external_id",
            (_, "display_name") => "user_update.display_name",
            (_, "email") => "user_update.email",
            (_, "phone") => "user_update.phone",
            (_, "address") => "user_update.address",
            (_, _) => "user_update.metadata",
        }
    };
    if let Some(v) = &u.external_id {
        validate::external_id(v, f("external_id"))?;
    }
    if let Some(v) = &u.display_name {
        validate::display_name(v, f("display_name"))?;
    }
    if let Some(v) = &u.email {
        validate::email(v, f("email"))?;
    }
    if let Some(v) = &u.phone {
        validate::phone(v, f("phone"))?;
    }
    if let Some(v) = &u.address {
        validate::address(v, f("address"))?;
    }
    if let Some(v) = &u.metadata {
        validate::metadata(v, f("metadata"))?;
    }
    Ok(())
}

/// CreateUser's validation of `new`, its fields named under `prefix` ("user" or "item.user").
pub(super) fn validate_new_user(prefix: &'static str, new: &NewUser) -> Result<()> {
    let as_update = UserUpdate {
        external_id: Some(new.external_id.clone()),
        display_name: Some(new.display_name.clone()),
        email: Some(new.email.clone()),
        phone: Some(new.phone.clone()),
        address: Some(new.address.clone()),
        metadata: Some(new.metadata.clone()),
        ..UserUpdate::default()
    };
    validate_fields(prefix, &as_update)
}

/// A fresh single-use token and its stored hash.
fn new_token() -> Result<(String, [u8; 32])> {
    let bytes: [u8; 32] = crate::storage::random_bytes()?;
    let token: String = std::iter::once("rt_".to_owned()).chain(bytes.iter().map(|b| format!("{b:02x}"))).collect();
    Ok((token.clone(), hash_token(&token)))
}

/// sha256 of a re-enrollment token, as stored.
pub(super) fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl App {
    /// Removes the re-enrollment tokens that have expired from the store.
    pub async fn purge_expired_tokens(&self) -> Result<usize> {
        let store = self.store()?;
        blocking(move || store.purge_expired_tokens(SystemTime::now())).await
    }

    /// Purges expired tokens now and then every token lifetime (at least a second, at most a
    /// minute apart), so no token outlives its expiry in the store by more than that. Runs until
    /// its task is aborted (at shutdown).
    pub async fn purge_tokens_periodically(self) {
        let period = self.settings.token_ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.purge_expired_tokens().await {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "expired re-enrollment tokens purged"),
                Err(err) => tracing::warn!(error = %err, "purging expired re-enrollment tokens failed"),
            }
        }
    }

    pub async fn create_user(
        &self,
        caller: &Principal,
        new: NewUser,
        idem: Option<Idempotency<User>>,
    ) -> Result<Written<User>> {
        validate_new_user("user", &new)?;
        let now = SystemTime::now();
        let user = User {
            id: UserId(0),
            external_id: new.external_id,
            display_name: new.display_name,
            email: new.email,
            phone: new.phone,
            address: new.address,
            metadata: new.metadata,
            enrollment: EnrollmentStatus::NotEnrolled,
            face_ids: Vec::new(),
            create_time: now,
            update_time: now,
            version: 1,
        };
        let tagged = !user.metadata.is_empty();
        let written = self
            .idempotent(&caller.tenant, idem.as_ref(), || async {
                let (store, tenant, ttl) = (self.store()?, caller.tenant.clone(), self.settings.request_id_ttl);
                let max_users = self.quota(&caller.tenant).max_users;
                // Counted and created under the write lock, so racing creates cannot pass the quota.
                let writes = match max_users {
                    Some(_) => Some(self.lock_tenant_writes(&caller.tenant).await?),
                    None => None,
                };
                let idem = idem.clone();
                blocking(move || {
                    let _writes = writes;
                    if let Some(max_users) = max_users
                        && store.count_users(&tenant)? >= max_users
                    {
                        return Err(Error::quota_exceeded("users", max_users));
                    }
                    stamped(
                        idem.as_ref(),
                        ttl,
                        |i, u: &User| i.recorded(Some(u.id), u),
                        |stamp| store.create_user(&tenant, user, stamp),
                    )
                })
                .await
            })
            .await?;
        if tagged {
            self.index_metadata().await;
        }
        Ok(written)
    }

    /// Brings the index's copy of users' metadata (SearchFaces' metadata_filter) up to the
    /// write just made, so the caller's next search sees it. Should that fail, the log follower
    /// applies it within its period.
    async fn index_metadata(&self) {
        if let Err(error) = self.catch_up().await {
            tracing::warn!(%error, "the index did not follow a change of metadata at once");
        }
    }

    pub async fn get_user(&self, caller: &Principal, user: &UserRef) -> Result<User> {
        self.resolve_user(&caller.tenant, user).await
    }

    /// Applies a partial update; returns the user and, when asked for, a re-enrollment token.
    pub async fn update_user(
        &self,
        caller: &Principal,
        user: &UserRef,
        update: UserUpdate,
        idem: Option<Idempotency<(User, Option<String>)>>,
    ) -> Result<Written<(User, Option<String>)>> {
        validate_fields("user_update", &update)?;
        self.idempotent(&caller.tenant, idem.as_ref(), || self.update_user_once(caller, user, update, idem.clone()))
            .await
    }

    async fn update_user_once(
        &self,
        caller: &Principal,
        user: &UserRef,
        update: UserUpdate,
        idem: Option<Idempotency<(User, Option<String>)>>,
    ) -> Result<(User, Option<String>)> {
        let current = self.resolve_user(&caller.tenant, user).await?;
        let token = if update.require_face_reenrollment { Some(new_token()?) } else { None };
        let patch = UserPatch {
            external_id: update.external_id,
            display_name: update.display_name,
            email: update.email,
            phone: update.phone,
            address: update.address,
            metadata: update.metadata,
            reenrollment: token
                .as_ref()
                .map(|(_, hash)| TokenGrant { hash: *hash, expires_at: SystemTime::now() + self.settings.token_ttl }),
        };
        let (store, tenant, expected) = (self.store()?, caller.tenant.clone(), update.expected_version);
        let ttl = self.settings.request_id_ttl;
        // A recorded response names the user: written under the tenant's lock, so a DeleteUser
        // erasing the user's records cannot miss one written meanwhile.
        let writes = match idem {
            Some(_) => Some(self.writes.lock(&caller.tenant).await),
            None => None,
        };
        let token = token.map(|(t, _)| t);
        let issued = token.clone();
        let tagged = patch.metadata.is_some();
        let updated = blocking(move || {
            let _writes = writes;
            // The token is kept only as its hash: a replay returns the user without it.
            let respond = |i: &Idempotency<_>, u: &User| i.recorded(Some(u.id), &(u.clone(), None));
            stamped(idem.as_ref(), ttl, respond, |stamp| {
                store.update_user(&tenant, current.id, expected, &patch, stamp)
            })
        })
        .await?;
        if tagged {
            self.index_metadata().await;
        }
        Ok((updated, issued))
    }

    /// Erases the user with all faces; returns once the index no longer has them.
    pub async fn delete_user(
        &self,
        caller: &Principal,
        user: &UserRef,
        expected_version: Option<u64>,
        idem: Option<Idempotency<()>>,
    ) -> Result<Written<()>> {
        self.idempotent(&caller.tenant, idem.as_ref(), || async {
            let current = self.resolve_user(&caller.tenant, user).await?;
            let writes = self.writes.lock(&caller.tenant).await;
            let (store, feed, tenant) = (self.store()?, self.feed.clone(), caller.tenant.clone());
            let (ttl, idem) = (self.settings.request_id_ttl, idem.clone());
            blocking(move || {
                let _writes = writes;
                let pending = stamped(
                    idem.as_ref(),
                    ttl,
                    |i, _: &Vec<_>| i.recorded(None, &()),
                    |stamp| store.delete_user_pending(&tenant, current.id, expected_version, stamp),
                )?;
                feed.finish(store.as_ref(), pending).map(|_| ())
            })
            .await
        })
        .await
    }

    /// A page of users in id order, and the token of the next page.
    pub async fn list_users(
        &self,
        caller: &Principal,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<User>, String)> {
        let size = validate::page_size(page_size, 50, 1000)?;
        let after = validate::page_token(page_token, UserId::parse)?;
        let (store, tenant) = (self.store()?, caller.tenant.clone());
        let mut users = blocking(move || store.list_users(&tenant, after, size + 1)).await?;
        let next = if users.len() > size {
            users.truncate(size);
            users.last().map(|u| u.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((users, next))
    }
}
