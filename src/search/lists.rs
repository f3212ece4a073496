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

type Shared = Arc<RwLock<TenantLists>>;

fn read(shared: &Shared) -> std::sync::RwLockReadGuard<'_, TenantLists> {
    shared.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(shared: &Shared) -> std::sync::RwLockWriteGuard<'_, TenantLists> {
    shared.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The face lists of every tenant, each tenant behind its own lock (a scan of one tenant's
/// entries never holds up another tenant, nor the feed's writes to it). Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ListIndex {
    tenants: Arc<RwLock<HashMap<Tenant, Shared>>>,
}

impl ListIndex {
    fn map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Tenant, Shared>> {
        self.tenants.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tenant(&self, tenant: &Tenant) -> Option<Shared> {
        self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(tenant).cloned()
    }

    fn tenant_or_new(&self, tenant: &Tenant) -> Shared {
        if let Some(t) = self.tenant(tenant) {
            return t;
        }
        self.map().entry(tenant.clone()).or_default().clone()
    }

    /// Takes over the lists of `other` in one step.
    pub fn replace_contents(&self, other: &ListIndex) {
        let taken = std::mem::take(&mut *other.map());
        *self.map() = taken;
    }

    /// Adds (or overwrites) a list.
    pub fn set_list(&self, tenant: &Tenant, list: ListId, info: ListInfo) {
        write(&self.tenant_or_new(tenant)).lists.insert(list, info);
    }

    /// Removes a list and the given entries of it (every entry of it that is indexed).
    pub fn drop_list(&self, tenant: &Tenant, list: ListId, entries: &[EntryId]) {
        let Some(shared) = self.tenant(tenant) else { return };
        let mut t = write(&shared);
        t.lists.remove(&list);
        for entry in entries {
            t.remove(*entry);
        }
        let stray: Vec<EntryId> = t.owners.iter().filter(|(_, l)| *l == list).map(|(e, _)| *e).collect();
        for entry in stray {
            t.remove(entry);
        }
    }

    /// Adds (or overwrites) an entry of `list`.
    pub fn insert(&self, tenant: &Tenant, entry: EntryId, list: ListId, embedding: &Embedding) {
        write(&self.tenant_or_new(tenant)).insert(entry, list, embedding);
    }

    pub fn remove(&self, tenant: &Tenant, entry: EntryId) {
        if let Some(shared) = self.tenant(tenant) {
            write(&shared).remove(entry);
        }
    }

    /// Entries indexed for the tenant, over all its lists.
    pub fn entry_count(&self, tenant: &Tenant) -> usize {
        self.tenant(tenant).map_or(0, |t| read(&t).owners.len())
    }

    /// Lists indexed for the tenant.
    pub fn list_count(&self, tenant: &Tenant) -> usize {
        self.tenant(tenant).map_or(0, |t| read(&t).lists.len())
    }

    /// For each list of the tenant with an entry at or above the list's threshold (`default`
    /// when it sets none), its best entry; best first. One exact scan of the tenant's entries
    /// (about 33 ns an entry on one core: `cargo bench --bench search -- lists`): run it off the
    /// async threads.
    pub fn matches(&self, tenant: &Tenant, query: &Embedding, default: f32) -> Vec<ListHit> {
        let Some(shared) = self.tenant(tenant) else { return Vec::new() };
        let t = read(&shared);
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
        let shared = self.tenant(tenant)?;
        let t = read(&shared);
        let row = *t.rows.get(&entry)?;
        let values = t.matrix[row * EMBEDDING_DIM..(row + 1) * EMBEDDING_DIM]
            .iter()
            .map(|b| half::f16::from_bits(*b).to_f32())
            .collect();
        Some((t.owners[row].1, Embedding::from_raw(values)?))
    }

    /// The indexed entries of a tenant with their lists, sorted (tests compare with the store).
    pub fn entries(&self, tenant: &Tenant) -> Vec<(EntryId, ListId)> {
        let mut out = self.tenant(tenant).map(|t| read(&t).owners.clone()).unwrap_or_default();
        out.sort();
        out
    }

    /// The lists indexed for a tenant.
    pub fn lists(&self, tenant: &Tenant) -> Vec<(ListId, ListInfo)> {
        let mut out: Vec<_> = self
            .tenant(tenant)
            .map(|t| read(&t).lists.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default();
        out.sort_by_key(|(id, _)| *id);
        out
    }
}
