//! Each user's metadata as the index holds it, so that SearchFaces' `metadata_filter` picks
//! the users it may return without reading a user record: fed by the change log's UserTags
//! entries (CreateUser, UpdateUser) and dropped with the user (DeleteUser).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::domain::{Tenant, UserId};

type Metadata = BTreeMap<String, String>;
type Users = Arc<RwLock<HashMap<UserId, Metadata>>>;

/// The metadata of every user that has some, each tenant behind its own lock. Cheap to clone
/// (shared).
#[derive(Debug, Clone, Default)]
pub struct Tags {
    tenants: Arc<RwLock<HashMap<Tenant, Users>>>,
}

impl Tags {
    fn map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Tenant, Users>> {
        self.tenants.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tenant(&self, tenant: &Tenant) -> Option<Users> {
        self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(tenant).cloned()
    }

    /// Takes over the tags of `other` in one step.
    pub fn replace_contents(&self, other: &Tags) {
        let taken = std::mem::take(&mut *other.map());
        *self.map() = taken;
    }

    /// Sets a user's metadata (empty: removes it).
    pub fn set(&self, tenant: &Tenant, user: UserId, metadata: Metadata) {
        if metadata.is_empty() {
            if let Some(users) = self.tenant(tenant) {
                users.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&user);
            }
            return;
        }
        let users = match self.tenant(tenant) {
            Some(users) => users,
            None => self.map().entry(tenant.clone()).or_default().clone(),
        };
        users.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(user, metadata);
    }

    /// The users of the tenant whose metadata holds every pair of `filter`: one pass over the
    /// tenant's users with metadata (run it off the async threads).
    pub fn matching(&self, tenant: &Tenant, filter: &Metadata) -> HashSet<UserId> {
        let Some(users) = self.tenant(tenant) else { return HashSet::new() };
        let users = users.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        users.iter().filter(|(_, m)| filter.iter().all(|(k, v)| m.get(k) == Some(v))).map(|(u, _)| *u).collect()
    }

    /// A user's metadata as indexed (tests).
    pub fn get(&self, tenant: &Tenant, user: UserId) -> Option<Metadata> {
        let users = self.tenant(tenant)?;
        let users = users.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        users.get(&user).cloned()
    }
}
