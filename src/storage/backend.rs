//! `Storage`: the interface between the app and a storage backend. The app makes every read and
//! write through it; sled (`Store`, embedded, the default) is the first backend, PostgreSQL the
//! second (storage/postgres, shared by many processes). Every method is blocking (call it through `app::blocking`). What a backend promises:
//!
//! - Each write is one transaction: records, images and, for a write that changes faces, its
//!   change-log entry (so the index, derived from the log, equals the store by construction).
//! - A write returns once committed; a face write returns a [`Pending`] that its caller makes
//!   durable after the index feed applied its entry; every other write is durable on return.
//!   A backend whose commit is its durability point (PostgreSQL with synchronous_commit)
//!   returns a `Pending` that is durable already: its finisher does nothing.
//! - Sequence numbers of the change log have no holes (a counter updated in the write's
//!   transaction, which also orders the writes), so a gap means entries were compacted.
//! - Each read that spans records sees one consistent state.
//! - A tenant's invariants (face limit, external ids, tokens) hold however calls race: the app
//!   orders a tenant's face writes, the backend's transactions do the rest.

use std::time::SystemTime;

use super::{
    EmbedderRecord, FaceEmbeddings, Integrity, LogBounds, LogEntry, ModelState, NewFace, NewListEntry, Pending,
    Replace, RequestStamp, SeenRequest, Store, StoredEmbedding, StoredListEntry, UserKey, UserPatch,
};
use crate::domain::{Embedding, EntryId, Face, FaceId, FaceList, ListEntry, ListId, Tenant, User, UserId};
use crate::error::Result;

/// A tenant's write lock of the backend, held until dropped (may be dropped on any thread).
pub struct TenantGuard(#[allow(dead_code, reason = "held for its drop")] Option<Box<dyn Send + Sync>>);

impl TenantGuard {
    /// A lock of a store no other process writes: the app's own lock suffices.
    pub fn local() -> Self {
        TenantGuard(None)
    }

    pub fn new(lock: impl Send + Sync + 'static) -> Self {
        TenantGuard(Some(Box::new(lock)))
    }
}

impl std::fmt::Debug for TenantGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantGuard").field("shared", &self.0.is_some()).finish()
    }
}

/// A storage backend. See the module documentation for what every implementation guarantees.
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    // ---- users

    // Every write takes the request id of an idempotent call (storage/requests.rs), recorded in
    // its transaction; REQUEST_ID_IN_FLIGHT when an unexpired record of it exists.

    /// Stores a new user under a fresh random id; its external id must be free in the tenant.
    fn create_user(&self, tenant: &Tenant, user: User, request: Option<&RequestStamp<'_, User>>) -> Result<User>;
    fn get_user(&self, tenant: &Tenant, id: UserId) -> Result<Option<User>>;
    /// The user `key` names, from one consistent state.
    fn find_user(&self, tenant: &Tenant, key: UserKey<'_>) -> Result<Option<User>>;
    /// Applies `patch` if the user's version is `expected_version` (when given).
    fn update_user(
        &self,
        tenant: &Tenant,
        id: UserId,
        expected_version: Option<u64>,
        patch: &UserPatch,
        request: Option<&RequestStamp<'_, User>>,
    ) -> Result<User>;
    /// Erases the user with every face, image, token and request record of it; returns the
    /// erased faces.
    fn delete_user_pending(
        &self,
        tenant: &Tenant,
        id: UserId,
        expected_version: Option<u64>,
        request: Option<&RequestStamp<'_, Vec<FaceId>>>,
    ) -> Result<Pending<Vec<FaceId>>>;
    fn count_users(&self, tenant: &Tenant) -> Result<usize>;
    /// Up to `limit` users with ids above `after`, in id order.
    fn list_users(&self, tenant: &Tenant, after: Option<UserId>, limit: usize) -> Result<Vec<User>>;

    // ---- faces

    /// Stores `new` for its user, replacing per `replace`, within `max_faces`, consuming the
    /// re-enrollment token whose hash is `token` if given. Returns the user and the face replaced.
    fn put_face_pending(
        &self,
        tenant: &Tenant,
        new: &NewFace,
        replace: Replace,
        max_faces: usize,
        token: Option<[u8; 32]>,
        request: Option<&RequestStamp<'_, (User, Option<FaceId>)>>,
    ) -> Result<Pending<(User, Option<FaceId>)>>;
    /// Deletes one face and everything stored with it; returns the user afterwards.
    fn delete_face_pending(
        &self,
        tenant: &Tenant,
        id: FaceId,
        request: Option<&RequestStamp<'_, User>>,
    ) -> Result<Pending<User>>;
    fn get_face(&self, tenant: &Tenant, id: FaceId) -> Result<Option<Face>>;
    /// A face's embedding by `model` (MODELS_CHANGED when the store keeps none of it).
    fn face_embedding(&self, tenant: &Tenant, id: FaceId, model: &str) -> Result<Option<Embedding>>;
    /// A face and its original (or thumbnail), from one consistent state.
    fn face_with_image(&self, tenant: &Tenant, id: FaceId, thumbnail: bool) -> Result<Option<(Face, Vec<u8>)>>;
    /// The user `key` names and its faces, oldest first, from one consistent state.
    fn user_with_faces(&self, tenant: &Tenant, key: UserKey<'_>) -> Result<Option<(User, Vec<Face>)>>;
    /// The user `key` names and the embedding by `model` of each of its faces, from one
    /// consistent state (MODELS_CHANGED when the store keeps none of that model).
    fn user_with_embeddings(
        &self,
        tenant: &Tenant,
        key: UserKey<'_>,
        model: &str,
    ) -> Result<Option<(User, FaceEmbeddings)>>;
    /// For each search hit, the user's external id while the face exists and is that user's.
    fn hit_owners(&self, tenant: &Tenant, hits: &[(UserId, FaceId)]) -> Result<Vec<Option<String>>>;
    /// Calls `each` with every stored embedding of the active model of every tenant (a full
    /// index rebuild), all from one state, and returns the change-log head that state reflects
    /// and the model.
    fn for_each_embedding(
        &self,
        each: &mut (dyn FnMut(StoredEmbedding) -> Result<()> + Send),
    ) -> Result<(u64, EmbedderRecord)>;

    // ---- face lists (storage/lists.rs): each write appends its change-log entry

    /// Stores a new list under a fresh random id (`list.id` and `entry_count` are ignored).
    fn create_list(&self, tenant: &Tenant, list: &FaceList) -> Result<Pending<FaceList>>;
    /// A list with its entry count.
    fn get_list(&self, tenant: &Tenant, id: ListId) -> Result<Option<FaceList>>;
    /// Up to `limit` lists with ids above `after`, in id order, with their entry counts.
    fn list_lists(&self, tenant: &Tenant, after: Option<ListId>, limit: usize) -> Result<Vec<FaceList>>;
    /// Deletes a list and every entry of it (LIST_NOT_FOUND).
    fn delete_list_pending(&self, tenant: &Tenant, id: ListId) -> Result<Pending<()>>;
    /// Stores an entry in its list (LIST_NOT_FOUND when the list is gone).
    fn put_list_entry_pending(
        &self,
        tenant: &Tenant,
        new: &NewListEntry,
        request: Option<&RequestStamp<'_, ListEntry>>,
    ) -> Result<Pending<ListEntry>>;
    /// An entry with its thumbnail.
    fn get_list_entry(&self, tenant: &Tenant, id: EntryId) -> Result<Option<(ListEntry, Vec<u8>)>>;
    /// Up to `limit` entries of a list with ids above `after`, in id order, each with its
    /// thumbnail (LIST_NOT_FOUND when there is no such list).
    fn list_entries(
        &self,
        tenant: &Tenant,
        list: ListId,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<(ListEntry, Vec<u8>)>>;
    /// Deletes one entry (ENTRY_NOT_FOUND).
    fn delete_list_entry_pending(&self, tenant: &Tenant, id: EntryId) -> Result<Pending<()>>;
    /// Every list of every tenant, entry counts left 0 (loading the index; call it after the
    /// change-log head the index is loaded to was read).
    fn all_lists(&self) -> Result<Vec<(Tenant, FaceList)>>;
    /// Every list entry's embedding of every tenant (loading the index, as `all_lists`).
    fn all_list_entries(&self) -> Result<Vec<StoredListEntry>>;
    /// Every user with metadata, of every tenant (loading the index, as `all_lists`).
    fn all_user_tags(&self) -> Result<crate::storage::UserTags>;

    // ---- re-enrollment tokens

    /// The tenant and user of a usable token (exists, unexpired, attempts left).
    fn token_user(&self, hash: &[u8; 32], max_attempts: u32) -> Result<Option<(Tenant, UserId)>>;
    /// Counts one attempt against a usable token, durably; its tenant and user.
    fn use_token_attempt(&self, hash: &[u8; 32], max_attempts: u32) -> Result<Option<(Tenant, UserId)>>;
    /// Removes the tokens expired by `now`; how many went.
    fn purge_expired_tokens(&self, now: SystemTime) -> Result<usize>;

    // ---- request ids (storage/requests.rs)

    /// The record of request id `id` in `tenant`, expired or not.
    fn request(&self, tenant: &Tenant, id: &str) -> Result<Option<SeenRequest>>;
    /// Removes the records created before `before`; how many went.
    fn purge_requests(&self, before: SystemTime) -> Result<usize>;

    // ---- the change log

    fn log_bounds(&self) -> Result<LogBounds>;
    /// Up to `limit` entries after `after`, in order; refused when `after` was compacted away.
    fn read_log(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>>;
    /// Removes the entries up to `upto`; how many went.
    fn compact_log(&self, upto: u64) -> Result<usize>;
    /// The file id of the index snapshot recorded last (a node's snapshot is loaded only when
    /// the store names it).
    fn snapshot_id(&self) -> Result<Option<Vec<u8>>>;
    /// Records, durably, the file id of the index snapshot just written.
    fn record_snapshot_id(&self, id: &[u8]) -> Result<()>;

    // ---- models (storage/models.rs)

    /// The store's models and reindex.
    fn model_state(&self) -> Result<ModelState>;
    /// Replaces the model state if its generation is still `expected` (else MODELS_CHANGED),
    /// bumping the generation, with a models entry in the log when `announce`; durable on
    /// return. The entry's sequence number (0: none) and the state written.
    fn set_model_state(&self, expected: u64, state: &ModelState, announce: bool) -> Result<(u64, ModelState)>;
    /// Up to `limit` faces after `after` (in the backend's order) with no embedding in `slot`.
    fn faces_without_embedding(
        &self,
        slot: usize,
        after: Option<(Tenant, FaceId)>,
        limit: usize,
    ) -> Result<Vec<(Tenant, FaceId)>>;
    /// Stores re-embedded faces in the target slot of the running reindex to `model` run by
    /// `worker` (faces deleted meanwhile are skipped), counting them and `failed` failures in
    /// the state, with the worker's lease renewed: one transaction, durable on return.
    /// MODELS_CHANGED when the reindex is no longer that (another worker took it over).
    fn put_reindexed(
        &self,
        model: &str,
        worker: &str,
        items: &[(Tenant, FaceId, Embedding)],
        failed: u64,
        lease_until: SystemTime,
    ) -> Result<ModelState>;
    /// Empties the embeddings of `slot`; durable on return.
    fn clear_slot(&self, slot: usize) -> Result<()>;
    /// Faces stored, over every tenant.
    fn count_faces(&self) -> Result<u64>;
    /// Calls `each` with every embedding stored in `slot` (a reindex's comparison of models).
    fn for_each_slot_embedding(
        &self,
        slot: usize,
        each: &mut (dyn FnMut(StoredEmbedding) -> Result<()> + Send),
    ) -> Result<()>;

    // ---- several processes

    /// Takes `tenant`'s write lock across every process that shares the store, held while the
    /// app checks duplicates and quotas and writes (after its own per-tenant lock); released
    /// when the guard drops. sled is one process's: nothing to take.
    fn lock_tenant(&self, tenant: &Tenant) -> Result<TenantGuard>;
    /// Whether other processes write the store too: the app then polls its log often, and the
    /// log is compacted only up to what every live node applied.
    fn is_shared(&self) -> bool;
    /// After a failure: `Ok(true)` once the store acknowledges writes again as it is (a
    /// database connection is back); `Ok(false)`: it must be closed and opened again (sled).
    fn try_recover(&self) -> Result<bool>;

    // ---- the store as a whole

    /// Refuses a store built with another embedder (records this one in a new store).
    fn check_embedder(&self, embedder: &EmbedderRecord) -> Result<()>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<()>;
    /// Makes every write durable and records a clean close (a clean stop: the next open may
    /// skip the checks that only a crash makes necessary).
    fn close(&self) -> Result<()>;
    /// Why writes cannot be made durable now, if so (health reports NOT_SERVING meanwhile).
    fn write_failure(&self) -> Option<String>;
    fn is_encrypted(&self) -> bool;
    /// Checks every invariant that spans records (an operator's and the tests' check).
    fn verify(&self, max_faces: usize) -> Result<Integrity>;
    /// Entries per table (tests check nothing is left behind).
    fn tree_sizes(&self) -> Vec<(&'static str, usize)>;
    /// Every raw key and value of a table as stored (tests scan them for plaintext).
    fn raw_entries(&self, table: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

impl Storage for Store {
    fn create_user(&self, tenant: &Tenant, user: User, request: Option<&RequestStamp<'_, User>>) -> Result<User> {
        self.write(|| Store::create_user(self, tenant, user, request))
    }
    fn get_user(&self, tenant: &Tenant, id: UserId) -> Result<Option<User>> {
        self.watch(Store::get_user(self, tenant, id))
    }
    fn find_user(&self, tenant: &Tenant, key: UserKey<'_>) -> Result<Option<User>> {
        self.watch(Store::find_user(self, tenant, key))
    }
    fn update_user(
        &self,
        tenant: &Tenant,
        id: UserId,
        expected_version: Option<u64>,
        patch: &UserPatch,
        request: Option<&RequestStamp<'_, User>>,
    ) -> Result<User> {
        self.write(|| Store::update_user(self, tenant, id, expected_version, patch, request))
    }
    fn delete_user_pending(
        &self,
        tenant: &Tenant,
        id: UserId,
        expected_version: Option<u64>,
        request: Option<&RequestStamp<'_, Vec<FaceId>>>,
    ) -> Result<Pending<Vec<FaceId>>> {
        self.write(|| Store::delete_user_pending(self, tenant, id, expected_version, request))
    }
    fn count_users(&self, tenant: &Tenant) -> Result<usize> {
        self.watch(Store::count_users(self, tenant))
    }
    fn list_users(&self, tenant: &Tenant, after: Option<UserId>, limit: usize) -> Result<Vec<User>> {
        self.watch(Store::list_users(self, tenant, after, limit))
    }
    fn put_face_pending(
        &self,
        tenant: &Tenant,
        new: &NewFace,
        replace: Replace,
        max_faces: usize,
        token: Option<[u8; 32]>,
        request: Option<&RequestStamp<'_, (User, Option<FaceId>)>>,
    ) -> Result<Pending<(User, Option<FaceId>)>> {
        self.write(|| Store::put_face_pending(self, tenant, new, replace, max_faces, token, request))
    }
    fn delete_face_pending(
        &self,
        tenant: &Tenant,
        id: FaceId,
        request: Option<&RequestStamp<'_, User>>,
    ) -> Result<Pending<User>> {
        self.write(|| Store::delete_face_pending(self, tenant, id, request))
    }
    fn get_face(&self, tenant: &Tenant, id: FaceId) -> Result<Option<Face>> {
        self.watch(Store::get_face(self, tenant, id))
    }
    fn face_embedding(&self, tenant: &Tenant, id: FaceId, model: &str) -> Result<Option<Embedding>> {
        self.watch(Store::face_embedding(self, tenant, id, model))
    }
    fn face_with_image(&self, tenant: &Tenant, id: FaceId, thumbnail: bool) -> Result<Option<(Face, Vec<u8>)>> {
        self.watch(Store::face_with_image(self, tenant, id, thumbnail))
    }
    fn user_with_faces(&self, tenant: &Tenant, key: UserKey<'_>) -> Result<Option<(User, Vec<Face>)>> {
        self.watch(Store::user_with_faces(self, tenant, key))
    }
    fn user_with_embeddings(
        &self,
        tenant: &Tenant,
        key: UserKey<'_>,
        model: &str,
    ) -> Result<Option<(User, FaceEmbeddings)>> {
        self.watch(Store::user_with_embeddings(self, tenant, key, model))
    }
    fn hit_owners(&self, tenant: &Tenant, hits: &[(UserId, FaceId)]) -> Result<Vec<Option<String>>> {
        self.watch(Store::hit_owners(self, tenant, hits))
    }
    fn for_each_embedding(
        &self,
        each: &mut (dyn FnMut(StoredEmbedding) -> Result<()> + Send),
    ) -> Result<(u64, EmbedderRecord)> {
        // sled has no snapshot across a scan: one state holds only while nothing writes, which
        // is when the app rebuilds (start-up, a reopen) or while the feed holds the tenants'
        // writes back (a change of models). The head is read first, so a write during the scan
        // would be applied again by the feed (idempotent), never missed.
        let head = self.watch(Store::log_bounds(self))?.head;
        let state = self.watch(Store::model_state(self))?;
        let model = state.active_or_unnamed();
        self.watch(self.embeddings(state.active).try_for_each(|e| each(e?)))?;
        Ok((head, model))
    }
    fn create_list(&self, tenant: &Tenant, list: &FaceList) -> Result<Pending<FaceList>> {
        self.write(|| Store::create_list(self, tenant, list))
    }
    fn get_list(&self, tenant: &Tenant, id: ListId) -> Result<Option<FaceList>> {
        self.watch(Store::get_list(self, tenant, id))
    }
    fn list_lists(&self, tenant: &Tenant, after: Option<ListId>, limit: usize) -> Result<Vec<FaceList>> {
        self.watch(Store::list_lists(self, tenant, after, limit))
    }
    fn delete_list_pending(&self, tenant: &Tenant, id: ListId) -> Result<Pending<()>> {
        self.write(|| Store::delete_list_pending(self, tenant, id))
    }
    fn put_list_entry_pending(
        &self,
        tenant: &Tenant,
        new: &NewListEntry,
        request: Option<&RequestStamp<'_, ListEntry>>,
    ) -> Result<Pending<ListEntry>> {
        self.write(|| Store::put_list_entry_pending(self, tenant, new, request))
    }
    fn get_list_entry(&self, tenant: &Tenant, id: EntryId) -> Result<Option<(ListEntry, Vec<u8>)>> {
        self.watch(Store::get_list_entry(self, tenant, id))
    }
    fn list_entries(
        &self,
        tenant: &Tenant,
        list: ListId,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<(ListEntry, Vec<u8>)>> {
        self.watch(Store::list_entries(self, tenant, list, after, limit))
    }
    fn delete_list_entry_pending(&self, tenant: &Tenant, id: EntryId) -> Result<Pending<()>> {
        self.write(|| Store::delete_list_entry_pending(self, tenant, id))
    }
    fn all_lists(&self) -> Result<Vec<(Tenant, FaceList)>> {
        self.watch(Store::all_lists(self))
    }
    fn all_list_entries(&self) -> Result<Vec<StoredListEntry>> {
        self.watch(Store::all_list_entries(self))
    }
    fn all_user_tags(&self) -> Result<crate::storage::UserTags> {
        self.watch(Store::all_user_tags(self))
    }
    fn token_user(&self, hash: &[u8; 32], max_attempts: u32) -> Result<Option<(Tenant, UserId)>> {
        self.watch(Store::token_user(self, hash, max_attempts))
    }
    fn use_token_attempt(&self, hash: &[u8; 32], max_attempts: u32) -> Result<Option<(Tenant, UserId)>> {
        self.write(|| Store::use_token_attempt(self, hash, max_attempts))
    }
    fn purge_expired_tokens(&self, now: SystemTime) -> Result<usize> {
        self.write(|| Store::purge_expired_tokens(self, now))
    }
    fn request(&self, tenant: &Tenant, id: &str) -> Result<Option<SeenRequest>> {
        self.watch(Store::request(self, tenant, id))
    }
    fn purge_requests(&self, before: SystemTime) -> Result<usize> {
        self.write(|| Store::purge_requests(self, before))
    }
    fn log_bounds(&self) -> Result<LogBounds> {
        self.watch(Store::log_bounds(self))
    }
    fn read_log(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        self.watch(Store::read_log(self, after, limit))
    }
    fn compact_log(&self, upto: u64) -> Result<usize> {
        self.watch(Store::compact_log(self, upto))
    }
    fn snapshot_id(&self) -> Result<Option<Vec<u8>>> {
        self.watch(Store::snapshot_id(self))
    }
    fn record_snapshot_id(&self, id: &[u8]) -> Result<()> {
        self.watch(Store::record_snapshot_id(self, id))
    }
    fn model_state(&self) -> Result<ModelState> {
        self.watch(Store::model_state(self))
    }
    fn set_model_state(&self, expected: u64, state: &ModelState, announce: bool) -> Result<(u64, ModelState)> {
        Store::set_model_state(self, expected, state, announce)
    }
    fn faces_without_embedding(
        &self,
        slot: usize,
        after: Option<(Tenant, FaceId)>,
        limit: usize,
    ) -> Result<Vec<(Tenant, FaceId)>> {
        self.watch(Store::faces_without_embedding(self, slot, after, limit))
    }
    fn put_reindexed(
        &self,
        model: &str,
        worker: &str,
        items: &[(Tenant, FaceId, Embedding)],
        failed: u64,
        lease_until: SystemTime,
    ) -> Result<ModelState> {
        Store::put_reindexed(self, model, worker, items, failed, lease_until)
    }
    fn clear_slot(&self, slot: usize) -> Result<()> {
        Store::clear_slot(self, slot)
    }
    fn count_faces(&self) -> Result<u64> {
        Ok(self.faces.len() as u64)
    }
    fn for_each_slot_embedding(
        &self,
        slot: usize,
        each: &mut (dyn FnMut(StoredEmbedding) -> Result<()> + Send),
    ) -> Result<()> {
        self.watch(self.embeddings(slot).try_for_each(|e| each(e?)))
    }
    fn lock_tenant(&self, _tenant: &Tenant) -> Result<TenantGuard> {
        Ok(TenantGuard::local())
    }
    fn is_shared(&self) -> bool {
        false
    }
    fn try_recover(&self) -> Result<bool> {
        Ok(false)
    }
    fn check_embedder(&self, embedder: &EmbedderRecord) -> Result<()> {
        self.watch(Store::check_embedder(self, embedder))
    }
    fn flush(&self) -> Result<()> {
        self.watch(Store::flush(self))
    }
    fn close(&self) -> Result<()> {
        self.watch(Store::close(self))
    }
    fn write_failure(&self) -> Option<String> {
        Store::write_failure(self)
    }
    fn is_encrypted(&self) -> bool {
        Store::is_encrypted(self)
    }
    fn verify(&self, max_faces: usize) -> Result<Integrity> {
        self.watch(Store::verify(self, max_faces))
    }
    fn tree_sizes(&self) -> Vec<(&'static str, usize)> {
        Store::tree_sizes(self)
    }
    fn raw_entries(&self, table: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.watch(Store::raw_entries(self, table))
    }
}
