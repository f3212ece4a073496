//! The list entries of each tenant's face lists (ListService), held apart from the users'
//! faces: a search of users never sees them, and a list match never names a user. Fed by the
//! change log like the face index (app/feed.rs). Lists are small next to the faces of a tenant
//! (a blocklist of thousands), so a match is one exact scan of the tenant's entries, f16 rows
//! and f32 query as the face index scores.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::domain::{EMBEDDING_DIM, Embedding, EntryId, ListId, ListKind, Tenant};
use crate::search::similarity::{dot_f16, to_f16_bits};

/// What the index keeps of a list to match against it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListInfo {
    pub name: String,
    pub kind: ListKind,
    /// `None`: the match threshold of the active model.
    pub threshold: Option<f32>,
}

/// The best entry of one list at or above the list's threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct ListHit {
    pub list: ListId,
    pub info: ListInfo,
    pub entry: EntryId,
    pub similarity: f32,
}

#[derive(Debug, Default)]
struct TenantLists {
    lists: HashMap<ListId, ListInfo>,
    owners: Vec<(EntryId, ListId)>,
    /// f16 bits, EMBEDDING_DIM per row.
    matrix: Vec<u16>,
    rows: HashMap<EntryId, usize>,
}

impl TenantLists {
    fn insert(&mut self, entry: EntryId, list: ListId, embedding: &Embedding) {
        let bits = to_f16_bits(embedding.as_slice());
        if let Some(&row) = self.rows.get(&entry) {
            self.matrix[row * EMBEDDING_DIM..(row + 1) * EMBEDDING_DIM].copy_from_slice(&bits);
            self.owners[row] = (entry, list);
            return;
        }
        self.rows.insert(entry, self.owners.len());
        self.owners.push((entry, list));
        self.matrix.extend_from_slice(&bits);
    }

    fn remove(&mut self, entry: EntryId) {
        let Some(row) = self.rows.remove(&entry) else { return };
        let last = self.owners.len() - 1;
        if row != last {
            self.owners.swap(row, last);
            let (head, tail) = self.matrix.split_at_mut(last * EMBEDDING_DIM);
            head[row * EMBEDDING_DIM..(row + 1) * EMBEDDING_DIM].copy_from_slice(&tail[..EMBEDDING_DIM]);
            self.rows.insert(self.owners[row].0, row);
        }
        self.owners.pop();
        self.matrix.truncate(last * EMBEDDING_DIM);
    }
}

/// The face lists of every tenant. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ListIndex {
    tenants: Arc<RwLock<HashMap<Tenant, TenantLists>>>,
}

impl ListIndex {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Tenant, TenantLists>> {
        self.tenants.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Tenant, TenantLists>> {
        self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes over the lists of `other` in one step.
    pub fn replace_contents(&self, other: &ListIndex) {
        let taken = std::mem::take(&mut *other.write());
        *self.write() = taken;
    }

    /// Adds (or overwrites) a list.
    pub fn set_list(&self, tenant: &Tenant, list: ListId, info: ListInfo) {
        self.write().entry(tenant.clone()).or_default().lists.insert(list, info);
    }

    /// Removes a list and the given entries of it (every entry of it that is indexed).
    pub fn drop_list(&self, tenant: &Tenant, list: ListId, entries: &[EntryId]) {
        let mut tenants = self.write();
        let Some(t) = tenants.get_mut(tenant) else { return };
        t.lists.remove(&list);
        for entry in entries {
            t.remove(*entry);
        }
        let stray: Vec<EntryId> = t.owners.iter().filter(|(_, l)| *l == list).map(|(e, _)| *e).collect();
        for entry in stray {
            t.remove(entry);
        }
        if t.lists.is_empty() && t.owners.is_empty() {
            tenants.remove(tenant);
        }
    }

    /// Adds (or overwrites) an entry of `list`.
    pub fn insert(&self, tenant: &Tenant, entry: EntryId, list: ListId, embedding: &Embedding) {
        self.write().entry(tenant.clone()).or_default().insert(entry, list, embedding);
    }

    pub fn remove(&self, tenant: &Tenant, entry: EntryId) {
        if let Some(t) = self.write().get_mut(tenant) {
            t.remove(entry);
        }
    }

    /// For each list of the tenant with an entry at or above the list's threshold (`default`
    /// when it sets none), its best entry; best first.
    pub fn matches(&self, tenant: &Tenant, query: &Embedding, default: f32) -> Vec<ListHit> {
        let tenants = self.read();
        let Some(t) = tenants.get(tenant) else { return Vec::new() };
        let mut best: HashMap<ListId, (f32, EntryId)> = HashMap::new();
        for (row, chunk) in t.matrix.chunks_exact(EMBEDDING_DIM).enumerate() {
            let (entry, list) = t.owners[row];
            let Some(info) = t.lists.get(&list) else { continue };
            let similarity = dot_f16(query.as_slice(), chunk);
            if similarity >= info.threshold.unwrap_or(default)
                && best.get(&list).is_none_or(|(s, e)| similarity > *s || (similarity == *s && entry < *e))
            {
                best.insert(list, (similarity, entry));
            }
        }
        let mut hits: Vec<ListHit> = best
            .into_iter()
            .filter_map(|(list, (similarity, entry))| {
                Some(ListHit { list, info: t.lists.get(&list)?.clone(), entry, similarity })
            })
            .collect();
        hits.sort_by(|a, b| b.similarity.total_cmp(&a.similarity).then(a.entry.cmp(&b.entry)));
        hits
    }

    /// An indexed entry's list and embedding (as held: f16, normalised again).
    pub fn entry(&self, tenant: &Tenant, entry: EntryId) -> Option<(ListId, Embedding)> {
        let tenants = self.read();
        let t = tenants.get(tenant)?;
        let row = *t.rows.get(&entry)?;
        let values = t.matrix[row * EMBEDDING_DIM..(row + 1) * EMBEDDING_DIM]
            .iter()
            .map(|b| half::f16::from_bits(*b).to_f32())
            .collect();
        Some((t.owners[row].1, Embedding::from_raw(values)?))
    }

    /// The indexed entries of a tenant with their lists, sorted (tests compare with the store).
    pub fn entries(&self, tenant: &Tenant) -> Vec<(EntryId, ListId)> {
        let mut out = self.read().get(tenant).map(|t| t.owners.clone()).unwrap_or_default();
        out.sort();
        out
    }

    /// The lists indexed for a tenant.
    pub fn lists(&self, tenant: &Tenant) -> Vec<(ListId, ListInfo)> {
        let mut out: Vec<_> =
            self.read().get(tenant).map(|t| t.lists.iter().map(|(k, v)| (*k, v.clone())).collect()).unwrap_or_default();
        out.sort_by_key(|(id, _)| *id);
        out
    }
}
