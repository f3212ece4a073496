//! `FaceIndex`: per tenant, a contiguous row-major matrix of unit embeddings with the face and
//! user of each row. Insert appends, remove swaps the last row in. Built at start-up from the
//! store, or imported from a snapshot of its rows (`export`/`import`; app/snapshot writes and
//! reads the file, this module does no I/O).
//!
//! Rows are stored as IEEE f16 (1 KiB a face; 1M faces in about 1.05 GB with the ids), the query
//! stays f32 and dot products accumulate in f32. The rounding moves a cosine by about 1e-4,
//! far below the gap between the match thresholds and the scores they separate; the search
//! bench measures recall@10 against exact f32.
//!
//! Each row also has a 512-bit sign sketch (`sketch.rs`, 64 bytes). Tenants above
//! `exact_max_faces` rows are searched with a prefilter: a row's exact similarity is computed
//! only when its sketch lies within the Hamming bound of the query's similarity floor. A floor
//! too low to filter (below about 0.2) falls back to the exact scan.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::domain::{EMBEDDING_DIM, Embedding, FaceId, Tenant, UserId};
use crate::search::similarity::{dot_f16, to_f16_bits};
use crate::search::sketch::{self, WORDS};
use crate::search::{ListIndex, Tags};

/// Tenants with at most this many faces are always scanned exactly (about 9 ms at 100k on one
/// core); larger ones use the sketch prefilter.
pub const DEFAULT_EXACT_MAX_FACES: usize = 100_000;

/// One search result: a user's best face.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub user_id: UserId,
    pub face_id: FaceId,
    pub similarity: f32,
}

#[derive(Debug, Default)]
struct TenantIndex {
    owners: Vec<(FaceId, UserId)>,
    /// f16 bits, EMBEDDING_DIM per row.
    matrix: Vec<u16>,
    /// `WORDS` per row.
    sketches: Vec<u64>,
    rows: HashMap<FaceId, usize>,
}

impl TenantIndex {
    fn insert(&mut self, face: FaceId, user: UserId, embedding: &Embedding) {
        let bits = to_f16_bits(embedding.as_slice());
        let code = sketch::sketch(embedding.as_slice());
        if let Some(&row) = self.rows.get(&face) {
            self.matrix[row * EMBEDDING_DIM..(row + 1) * EMBEDDING_DIM].copy_from_slice(&bits);
            self.sketches[row * WORDS..(row + 1) * WORDS].copy_from_slice(&code);
            self.owners[row] = (face, user);
            return;
        }
        self.rows.insert(face, self.owners.len());
        self.owners.push((face, user));
        self.matrix.extend_from_slice(&bits);
        self.sketches.extend_from_slice(&code);
    }

    fn remove(&mut self, face: FaceId) -> bool {
        let Some(row) = self.rows.remove(&face) else { return false };
        let last = self.owners.len() - 1;
        if row != last {
            self.owners.swap(row, last);
            let (head, tail) = self.matrix.split_at_mut(last * EMBEDDING_DIM);
            head[row * EMBEDDING_DIM..(row + 1) * EMBEDDING_DIM].copy_from_slice(&tail[..EMBEDDING_DIM]);
            let (head, tail) = self.sketches.split_at_mut(last * WORDS);
            head[row * WORDS..(row + 1) * WORDS].copy_from_slice(&tail[..WORDS]);
            self.rows.insert(self.owners[row].0, row);
        }
        self.owners.pop();
        self.matrix.truncate(last * EMBEDDING_DIM);
        self.sketches.truncate(last * WORDS);
        true
    }

    /// Rows with similarity >= `min` to `q`, not owned by `exclude` and (when given) owned by one
    /// of `only`: every row when `filtered` is false, else only rows whose sketch passes the
    /// prefilter.
    fn scan(
        &self,
        q: &[f32],
        min: f32,
        exclude: Option<UserId>,
        only: Option<&HashSet<UserId>>,
        filtered: bool,
    ) -> Vec<(f32, u32)> {
        let mut scored = Vec::new();
        let mut keep = |row: usize, chunk: &[u16]| {
            let owner = self.owners[row].1;
            if exclude == Some(owner) || only.is_some_and(|only| !only.contains(&owner)) {
                return;
            }
            let similarity = dot_f16(q, chunk);
            if similarity >= min {
                scored.push((similarity, row as u32));
            }
        };
        match filtered.then(|| sketch::max_distance(min)).flatten() {
            None => {
                for (row, chunk) in self.matrix.chunks_exact(EMBEDDING_DIM).enumerate() {
                    keep(row, chunk);
                }
            }
            Some(bound) => {
                for row in sketch::within(&sketch::sketch(q), &self.sketches, bound) {
                    keep(row as usize, self.row(row as usize));
                }
            }
        }
        scored
    }

    fn row(&self, row: usize) -> &[u16] {
        &self.matrix[row * EMBEDDING_DIM..(row + 1) * EMBEDDING_DIM]
    }
}

/// One tenant's rows as they are held, for a snapshot: row `i` is `owners[i]`, the f16 bits
/// `matrix[i * EMBEDDING_DIM..][..EMBEDDING_DIM]` and the sketch `sketches[i * WORDS..][..WORDS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRows {
    pub tenant: Tenant,
    pub owners: Vec<(FaceId, UserId)>,
    pub matrix: Vec<u16>,
    pub sketches: Vec<u64>,
}

impl TenantRows {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// The f16 bits of row `row`.
    pub fn row(&self, row: usize) -> &[u16] {
        &self.matrix[row * EMBEDDING_DIM..(row + 1) * EMBEDDING_DIM]
    }

    /// The sketch of row `row`.
    pub fn sketch(&self, row: usize) -> &[u64] {
        &self.sketches[row * WORDS..(row + 1) * WORDS]
    }
}

/// One tenant's index behind its own lock.
type Shared = Arc<RwLock<TenantIndex>>;

/// The search index of every tenant. Cheap to clone (shared). Each tenant has its own lock: a
/// long scan or a write of one tenant never waits on another's; the map of tenants is locked
/// only to find or add a tenant.
#[derive(Debug, Clone)]
pub struct FaceIndex {
    tenants: Arc<RwLock<HashMap<Tenant, Shared>>>,
    exact_max_faces: usize,
    /// The entries of the face lists, apart from the users' faces.
    lists: ListIndex,
    /// The users' metadata (SearchFaces' metadata_filter).
    tags: Tags,
}

impl Default for FaceIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl FaceIndex {
    pub fn new() -> Self {
        Self::with_exact_max_faces(DEFAULT_EXACT_MAX_FACES)
    }

    /// An index that scans tenants of up to `exact_max_faces` faces exactly and prefilters
    /// larger ones (`usize::MAX`: always exact).
    pub fn with_exact_max_faces(exact_max_faces: usize) -> Self {
        Self { tenants: Arc::default(), exact_max_faces, lists: ListIndex::default(), tags: Tags::default() }
    }

    /// The entries of the face lists.
    pub fn lists(&self) -> &ListIndex {
        &self.lists
    }

    /// The users' metadata.
    pub fn tags(&self) -> &Tags {
        &self.tags
    }

    /// Tenants above this many faces are searched with the sketch prefilter.
    pub fn exact_max_faces(&self) -> usize {
        self.exact_max_faces
    }

    /// Takes over every tenant of `other` (an index rebuilt after the store was reopened),
    /// in one step: a search sees the old index or the new one.
    pub fn replace_contents(&self, other: FaceIndex) {
        let tenants = std::mem::take(&mut *other.tenants.write().unwrap_or_else(std::sync::PoisonError::into_inner));
        *self.tenants.write().unwrap_or_else(std::sync::PoisonError::into_inner) = tenants;
        self.lists.replace_contents(&other.lists);
        self.tags.replace_contents(&other.tags);
    }

    fn all(&self) -> Vec<Shared> {
        self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect()
    }

    /// The tenant's index, if it has one.
    fn tenant(&self, tenant: &Tenant) -> Option<Shared> {
        self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(tenant).cloned()
    }

    /// The tenant's index, created empty when it has none.
    fn tenant_or_new(&self, tenant: &Tenant) -> Shared {
        if let Some(index) = self.tenant(tenant) {
            return index;
        }
        self.tenants
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(tenant.clone())
            .or_default()
            .clone()
    }

    /// Adds (or overwrites) a face.
    pub fn insert(&self, tenant: &Tenant, face: FaceId, user: UserId, embedding: &Embedding) {
        write(&self.tenant_or_new(tenant)).insert(face, user, embedding);
    }

    /// Removes a face; false when it was not there.
    pub fn remove(&self, tenant: &Tenant, face: FaceId) -> bool {
        self.tenant(tenant).is_some_and(|t| write(&t).remove(face))
    }

    /// Replaces `old` (if any) by `new` in one step, so no search sees both or neither.
    pub fn replace(&self, tenant: &Tenant, old: Option<FaceId>, face: FaceId, user: UserId, embedding: &Embedding) {
        let shared = self.tenant_or_new(tenant);
        let mut index = write(&shared);
        if let Some(old) = old {
            index.remove(old);
        }
        index.insert(face, user, embedding);
    }

    /// The best face of each of the `k` most similar users with similarity >= `min`, best
    /// first, leaving out `exclude` (the uploading user, for duplicate checks).
    ///
    /// One pass over the tenant's rows (every row, or those passing the sketch prefilter in a
    /// tenant above `exact_max_faces`) keeps the rows at or above `min`; then only the best `m`
    /// of them are ordered (select, then sort), users are deduplicated, and `m` grows only if a
    /// few users own all of the best faces.
    pub fn search(&self, tenant: &Tenant, query: &Embedding, k: usize, min: f32, exclude: Option<UserId>) -> Vec<Hit> {
        self.search_among(tenant, query, k, min, exclude, None)
    }

    /// As `search`, among the users of `only` when given (a metadata filter's users).
    pub fn search_among(
        &self,
        tenant: &Tenant,
        query: &Embedding,
        k: usize,
        min: f32,
        exclude: Option<UserId>,
        only: Option<&HashSet<UserId>>,
    ) -> Vec<Hit> {
        if k == 0 || only.is_some_and(HashSet::is_empty) {
            return Vec::new();
        }
        let Some(shared) = self.tenant(tenant) else { return Vec::new() };
        let index = read(&shared);
        let filtered = index.owners.len() > self.exact_max_faces;
        let mut scored = index.scan(query.as_slice(), min, exclude, only, filtered);
        let by_score = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let mut m = (k * 8).max(32);
        loop {
            let take = m.min(scored.len());
            if take < scored.len() {
                scored.select_nth_unstable_by(take - 1, by_score);
            }
            let mut top = scored[..take].to_vec();
            top.sort_unstable_by(by_score);
            let mut seen = std::collections::HashSet::new();
            let hits: Vec<Hit> = top
                .iter()
                .filter_map(|&(similarity, row)| {
                    let (face_id, user_id) = index.owners[row as usize];
                    seen.insert(user_id).then_some(Hit { user_id, face_id, similarity })
                })
                .take(k)
                .collect();
            if hits.len() == k || take == scored.len() {
                return hits;
            }
            m *= 4;
        }
    }

    /// Similarity of `query` to each of `faces` that is indexed.
    pub fn similarities(&self, tenant: &Tenant, faces: &[FaceId], query: &Embedding) -> Vec<(FaceId, f32)> {
        let Some(shared) = self.tenant(tenant) else { return Vec::new() };
        let index = read(&shared);
        faces
            .iter()
            .filter_map(|f| index.rows.get(f).map(|&row| (*f, dot_f16(query.as_slice(), index.row(row)))))
            .collect()
    }

    /// The indexed faces of a tenant with their users, sorted (tests compare it with the store).
    pub fn entries(&self, tenant: &Tenant) -> Vec<(FaceId, UserId)> {
        let mut out = self.tenant(tenant).map(|t| read(&t).owners.clone()).unwrap_or_default();
        out.sort();
        out
    }

    /// Releases spare capacity (after the start-up rebuild, where growth by doubling leaves up
    /// to half of the matrix unused).
    pub fn shrink_to_fit(&self) {
        for shared in self.all() {
            let mut t = write(&shared);
            t.matrix.shrink_to_fit();
            t.sketches.shrink_to_fit();
            t.owners.shrink_to_fit();
            t.rows.shrink_to_fit();
        }
    }

    /// Approximate heap bytes held by the index (matrix, owners, row map).
    pub fn approx_bytes(&self) -> usize {
        self.all()
            .iter()
            .map(|shared| {
                let t = read(shared);
                t.matrix.capacity() * 2
                    + t.sketches.capacity() * 8
                    + t.owners.capacity() * std::mem::size_of::<(FaceId, UserId)>()
                    + t.rows.capacity() * (std::mem::size_of::<(FaceId, usize)>() + 8)
            })
            .sum()
    }

    /// A copy of every tenant's rows, tenants in name order (those without rows left out). Each
    /// tenant is copied under its read lock, so searches go on; for a copy of one point of the
    /// change log, the caller holds off the index's only writer (`IndexFeed::export`).
    pub fn export(&self) -> Vec<TenantRows> {
        let tenants = self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut out: Vec<TenantRows> = tenants
            .into_iter()
            .filter_map(|(tenant, shared)| {
                let t = read(&shared);
                (!t.owners.is_empty()).then(|| TenantRows {
                    tenant,
                    owners: t.owners.clone(),
                    matrix: t.matrix.clone(),
                    sketches: t.sketches.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out
    }

    /// An index holding exactly the rows of `tenants` (as `export` made them). Refuses rows that
    /// would break this module's invariants: a matrix or sketches whose length does not match
    /// the owners, a face twice in a tenant, a tenant twice. The error names no face.
    pub fn import(tenants: Vec<TenantRows>, exact_max_faces: usize) -> std::result::Result<Self, String> {
        let index = Self::with_exact_max_faces(exact_max_faces);
        let mut map = HashMap::with_capacity(tenants.len());
        for TenantRows { tenant, owners, matrix, sketches } in tenants {
            let n = owners.len();
            if Some(matrix.len()) != n.checked_mul(EMBEDDING_DIM) || Some(sketches.len()) != n.checked_mul(WORDS) {
                return Err(format!(
                    "tenant {}: {n} owners, {} matrix values, {} sketch words",
                    tenant.as_str(),
                    matrix.len(),
                    sketches.len()
                ));
            }
            let mut rows = HashMap::with_capacity(n);
            for (row, &(face, _)) in owners.iter().enumerate() {
                if rows.insert(face, row).is_some() {
                    return Err(format!("tenant {}: a face holds two rows", tenant.as_str()));
                }
            }
            let name = tenant.as_str().to_owned();
            let shared = Arc::new(RwLock::new(TenantIndex { owners, matrix, sketches, rows }));
            if map.insert(tenant, shared).is_some() {
                return Err(format!("tenant {name} appears twice"));
            }
        }
        *index.tenants.write().unwrap_or_else(std::sync::PoisonError::into_inner) = map;
        Ok(index)
    }

    /// Faces indexed for a tenant.
    pub fn len(&self, tenant: &Tenant) -> usize {
        self.tenant(tenant).map_or(0, |t| read(&t).owners.len())
    }

    /// Faces indexed per tenant.
    pub fn sizes(&self) -> Vec<(Tenant, usize)> {
        let tenants = self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        tenants.into_iter().map(|(t, i)| (t, read(&i).owners.len())).collect()
    }
}

fn read(shared: &Shared) -> std::sync::RwLockReadGuard<'_, TenantIndex> {
    shared.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(shared: &Shared) -> std::sync::RwLockWriteGuard<'_, TenantIndex> {
    shared.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Well-separated pseudo-random unit vectors (splitmix64 of the seed and position).
    fn unit(seed: u32) -> Embedding {
        let raw = (0..EMBEDDING_DIM)
            .map(|i| {
                let mut z = (u64::from(seed) << 32 | i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Embedding::from_raw(raw).unwrap()
    }

    #[test]
    fn search_returns_best_face_per_user_and_respects_tenants() {
        let index = FaceIndex::new();
        let (a, b) = (Tenant::new("a").unwrap(), Tenant::new("b").unwrap());
        let q = unit(1);
        index.insert(&a, FaceId(1), UserId(10), &q);
        index.insert(&a, FaceId(2), UserId(10), &unit(2));
        index.insert(&a, FaceId(3), UserId(11), &unit(3));
        index.insert(&b, FaceId(4), UserId(12), &q);
        let hits = index.search(&a, &q, 10, -1.0, None);
        assert_eq!(hits.len(), 2, "one hit per user");
        assert_eq!((hits[0].user_id, hits[0].face_id), (UserId(10), FaceId(1)));
        assert!((hits[0].similarity - 1.0).abs() < 1e-3);
        assert!(index.search(&a, &q, 10, -1.0, Some(UserId(10))).iter().all(|h| h.user_id != UserId(10)));
        assert_eq!(index.search(&b, &q, 10, 0.99, None).len(), 1, "tenant b sees only its face");
        assert!(index.search(&Tenant::new("c").unwrap(), &q, 10, -1.0, None).is_empty());
    }

    #[test]
    fn remove_keeps_rows_consistent() {
        let index = FaceIndex::new();
        let t = Tenant::new("t").unwrap();
        for i in 0..5 {
            index.insert(&t, FaceId(i), UserId(i), &unit(i as u32));
        }
        assert!(index.remove(&t, FaceId(1)));
        assert!(!index.remove(&t, FaceId(1)));
        for i in [0u64, 2, 3, 4] {
            let hits = index.search(&t, &unit(i as u32), 1, -1.0, None);
            assert_eq!(hits[0].face_id, FaceId(i), "row of face {i} still holds its embedding");
        }
        index.replace(&t, Some(FaceId(4)), FaceId(9), UserId(4), &unit(9));
        assert_eq!(index.entries(&t).len(), 4);
        assert_eq!(index.similarities(&t, &[FaceId(9), FaceId(4)], &unit(9)).len(), 1);
    }

    #[test]
    fn prefiltered_search_finds_what_the_exact_scan_finds_above_the_floor() {
        let t = Tenant::new("t").unwrap();
        let (exact, filtered) = (FaceIndex::with_exact_max_faces(usize::MAX), FaceIndex::with_exact_max_faces(0));
        let query = unit(7);
        for i in 0..3000u64 {
            let mut v = unit(1000 + i as u32).as_slice().to_vec();
            if i % 300 == 0 {
                // Ten planted neighbours at cosines 0.31 to 0.85.
                let cos = 0.31 + 0.06 * (i / 300) as f32;
                let along: f32 = v.iter().zip(query.as_slice()).map(|(a, b)| a * b).sum();
                let ortho: Vec<f32> = v.iter().zip(query.as_slice()).map(|(a, b)| a - along * b).collect();
                let n = ortho.iter().map(|x| x * x).sum::<f32>().sqrt();
                let sin = (1.0 - cos * cos).sqrt();
                v = query.as_slice().iter().zip(&ortho).map(|(q, o)| cos * q + sin * o / n).collect();
            }
            let e = Embedding::from_raw(v).unwrap();
            exact.insert(&t, FaceId(i), UserId(i), &e);
            filtered.insert(&t, FaceId(i), UserId(i), &e);
        }
        let want = exact.search(&t, &query, 20, 0.3, None);
        assert_eq!(want.len(), 10, "the planted neighbours and nothing else");
        assert_eq!(filtered.search(&t, &query, 20, 0.3, None), want);
        // A floor too low to filter falls back to the exact scan.
        assert_eq!(filtered.search(&t, &query, 20, 0.0, None), exact.search(&t, &query, 20, 0.0, None));
    }
}
