//! Each user's metadata as the index holds it, so that SearchFaces' `metadata_filter` picks
//! the users it may return without reading a user record: fed by the change log's UserTags
//! entries (CreateUser, UpdateUser) and dropped with the user (DeleteUser).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::domain::{Tenant, UserId};

type Metadata = BTreeMap<String, String>;
type ByTenant = HashMap<Tenant, HashMap<UserId, Arc<Metadata>>>;

/// The metadata of every user that has some, per tenant. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Tags {
    tenants: Arc<RwLock<ByTenant>>,
}

impl Tags {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ByTenant> {
        self.tenants.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes over the tags of `other` in one step.
    pub fn replace_contents(&self, other: &Tags) {
        let taken = std::mem::take(&mut *other.write());
        *self.write() = taken;
    }

    /// Sets a user's metadata (empty: removes it).
    pub fn set(&self, tenant: &Tenant, user: UserId, metadata: Metadata) {
        let mut tenants = self.write();
        if metadata.is_empty() {
            if let Some(users) = tenants.get_mut(tenant) {
                users.remove(&user);
                if users.is_empty() {
                    tenants.remove(tenant);
                }
            }
            return;
        }
        tenants.entry(tenant.clone()).or_default().insert(user, Arc::new(metadata));
    }

    /// The users of the tenant whose metadata holds every pair of `filter`.
    pub fn matching(&self, tenant: &Tenant, filter: &Metadata) -> HashSet<UserId> {
        let tenants = self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(users) = tenants.get(tenant) else { return HashSet::new() };
        users.iter().filter(|(_, m)| filter.iter().all(|(k, v)| m.get(k) == Some(v))).map(|(u, _)| *u).collect()
    }

    /// A user's metadata as indexed (tests).
    pub fn get(&self, tenant: &Tenant, user: UserId) -> Option<Metadata> {
        let tenants = self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        tenants.get(tenant)?.get(&user).map(|m| (**m).clone())
    }
}
