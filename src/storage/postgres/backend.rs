//! `Storage` for `PgStore`: each method runs its statements on the PostgreSQL runtime
//! (blocking the caller's thread), writes refused while the store is failed, a lost
//! connection marking it failed.

use std::time::SystemTime;

use super::PgStore;
use super::pool::run;
use crate::domain::{Embedding, EntryId, Face, FaceId, FaceList, ListEntry, ListId, Tenant, User, UserId};
use crate::error::Result;
use crate::storage::{
    EmbedderRecord, FaceEmbeddings, Integrity, LogBounds, LogEntry, ModelState, NewFace, NewListEntry, Pending,
    Replace, RequestStamp, SeenRequest, Storage, StoredEmbedding, StoredListEntry, TenantGuard, UserKey, UserPatch,
};

impl Storage for PgStore {
    fn create_user(&self, tenant: &Tenant, user: User, request: Option<&RequestStamp<'_, User>>) -> Result<User> {
        self.write(|| PgStore::create_user(self, tenant, user, request))
    }
    fn get_user(&self, tenant: &Tenant, id: UserId) -> Result<Option<User>> {
        self.exec(|| PgStore::get_user(self, tenant, id))
    }
    fn find_user(&self, tenant: &Tenant, key: UserKey<'_>) -> Result<Option<User>> {
        self.exec(|| PgStore::find_user(self, tenant, key))
    }
    fn update_user(
        &self,
        tenant: &Tenant,
        id: UserId,
        expected_version: Option<u64>,
        patch: &UserPatch,
        request: Option<&RequestStamp<'_, User>>,
    ) -> Result<User> {
        self.write(|| PgStore::update_user(self, tenant, id, expected_version, patch, request))
    }
    fn delete_user_pending(
        &self,
        tenant: &Tenant,
        id: UserId,
        expected_version: Option<u64>,
        request: Option<&RequestStamp<'_, Vec<FaceId>>>,
    ) -> Result<Pending<Vec<FaceId>>> {
        self.write(|| PgStore::delete_user(self, tenant, id, expected_version, request))
    }
    fn count_users(&self, tenant: &Tenant) -> Result<usize> {
        self.exec(|| PgStore::count_users(self, tenant))
    }
    fn list_users(&self, tenant: &Tenant, after: Option<UserId>, limit: usize) -> Result<Vec<User>> {
        self.exec(|| PgStore::list_users(self, tenant, after, limit))
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
        self.write(|| PgStore::put_face(self, tenant, new, replace, max_faces, token, request))
    }
    fn delete_face_pending(
        &self,
        tenant: &Tenant,
        id: FaceId,
        request: Option<&RequestStamp<'_, User>>,
    ) -> Result<Pending<User>> {
        self.write(|| PgStore::delete_face(self, tenant, id, request))
    }
    fn get_face(&self, tenant: &Tenant, id: FaceId) -> Result<Option<Face>> {
        self.exec(|| PgStore::get_face(self, tenant, id))
    }
    fn face_embedding(&self, tenant: &Tenant, id: FaceId, model: &str) -> Result<Option<Embedding>> {
        self.exec(|| PgStore::face_embedding(self, tenant, id, model))
    }
    fn face_with_image(&self, tenant: &Tenant, id: FaceId, thumbnail: bool) -> Result<Option<(Face, Vec<u8>)>> {
        self.exec(|| PgStore::face_with_image(self, tenant, id, thumbnail))
    }
    fn user_with_faces(&self, tenant: &Tenant, key: UserKey<'_>) -> Result<Option<(User, Vec<Face>)>> {
        self.exec(|| PgStore::user_with_faces(self, tenant, key))
    }
    fn user_with_embeddings(
        &self,
        tenant: &Tenant,
        key: UserKey<'_>,
        model: &str,
    ) -> Result<Option<(User, FaceEmbeddings)>> {
        self.exec(|| PgStore::user_with_embeddings(self, tenant, key, model))
    }
    fn hit_owners(&self, tenant: &Tenant, hits: &[(UserId, FaceId)]) -> Result<Vec<Option<String>>> {
        self.exec(|| PgStore::hit_owners(self, tenant, hits))
    }
    fn for_each_embedding(
        &self,
        each: &mut (dyn FnMut(StoredEmbedding) -> Result<()> + Send),
    ) -> Result<(u64, EmbedderRecord)> {
        self.exec(|| PgStore::for_each_embedding(self, each))
    }
    fn create_list(&self, tenant: &Tenant, list: &FaceList) -> Result<Pending<FaceList>> {
        self.write(|| PgStore::create_list(self, tenant, list))
    }
    fn get_list(&self, tenant: &Tenant, id: ListId) -> Result<Option<FaceList>> {
        self.exec(|| PgStore::get_list(self, tenant, id))
    }
    fn list_lists(&self, tenant: &Tenant, after: Option<ListId>, limit: usize) -> Result<Vec<FaceList>> {
        self.exec(|| PgStore::list_lists(self, tenant, after, limit))
    }
    fn delete_list_pending(&self, tenant: &Tenant, id: ListId) -> Result<Pending<()>> {
        self.write(|| PgStore::delete_list(self, tenant, id))
    }
    fn put_list_entry_pending(
        &self,
        tenant: &Tenant,
        new: &NewListEntry,
        request: Option<&RequestStamp<'_, ListEntry>>,
    ) -> Result<Pending<ListEntry>> {
        self.write(|| PgStore::put_list_entry(self, tenant, new, request))
    }
    fn get_list_entry(&self, tenant: &Tenant, id: EntryId) -> Result<Option<(ListEntry, Vec<u8>)>> {
        self.exec(|| PgStore::get_list_entry(self, tenant, id))
    }
    fn list_entries(
        &self,
        tenant: &Tenant,
        list: ListId,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<(ListEntry, Vec<u8>)>> {
        self.exec(|| PgStore::list_entries(self, tenant, list, after, limit))
    }
    fn delete_list_entry_pending(&self, tenant: &Tenant, id: EntryId) -> Result<Pending<()>> {
        self.write(|| PgStore::delete_list_entry(self, tenant, id))
    }
    fn all_lists(&self) -> Result<Vec<(Tenant, FaceList)>> {
        self.exec(|| PgStore::all_lists(self))
    }
    fn all_list_entries(&self) -> Result<Vec<StoredListEntry>> {
        self.exec(|| PgStore::all_list_entries(self))
    }
    fn all_user_tags(&self) -> Result<crate::storage::UserTags> {
        self.exec(|| PgStore::all_user_tags(self))
    }
    fn token_user(&self, hash: &[u8; 32], max_attempts: u32) -> Result<Option<(Tenant, UserId)>> {
        self.exec(|| PgStore::token_user(self, hash, max_attempts))
    }
    fn request(&self, tenant: &Tenant, id: &str) -> Result<Option<SeenRequest>> {
        self.exec(|| PgStore::request(self, tenant, id))
    }
    fn purge_requests(&self, before: SystemTime) -> Result<usize> {
        self.write(|| PgStore::purge_requests(self, before))
    }
    fn use_token_attempt(&self, hash: &[u8; 32], max_attempts: u32) -> Result<Option<(Tenant, UserId)>> {
        self.write(|| PgStore::use_token_attempt(self, hash, max_attempts))
    }
    fn purge_expired_tokens(&self, now: SystemTime) -> Result<usize> {
        self.write(|| PgStore::purge_expired_tokens(self, now))
    }
    fn log_bounds(&self) -> Result<LogBounds> {
        self.exec(|| PgStore::log_bounds(self))
    }
    fn read_log(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        self.exec(|| PgStore::read_log(self, after, limit))
    }
    fn compact_log(&self, upto: u64) -> Result<usize> {
        self.exec(|| PgStore::compact_log(self, upto))
    }
    fn snapshot_id(&self) -> Result<Option<Vec<u8>>> {
        self.exec(|| PgStore::snapshot_id(self))
    }
    fn record_snapshot_id(&self, id: &[u8]) -> Result<()> {
        self.write(|| PgStore::record_snapshot_id(self, id))
    }
    fn model_state(&self) -> Result<ModelState> {
        self.exec(|| PgStore::model_state(self))
    }
    fn set_model_state(&self, expected: u64, state: &ModelState, announce: bool) -> Result<(u64, ModelState)> {
        self.exec(|| PgStore::set_model_state(self, expected, state, announce))
    }
    fn faces_without_embedding(
        &self,
        slot: usize,
        after: Option<(Tenant, FaceId)>,
        limit: usize,
    ) -> Result<Vec<(Tenant, FaceId)>> {
        self.exec(|| PgStore::faces_without_embedding(self, slot, after, limit))
    }
    fn put_reindexed(
        &self,
        model: &str,
        worker: &str,
        items: &[(Tenant, FaceId, Embedding)],
        failed: u64,
        lease_until: SystemTime,
    ) -> Result<ModelState> {
        self.exec(|| PgStore::put_reindexed(self, model, worker, items, failed, lease_until))
    }
    fn clear_slot(&self, slot: usize) -> Result<()> {
        self.exec(|| PgStore::clear_slot(self, slot))
    }
    fn count_faces(&self) -> Result<u64> {
        self.exec(|| PgStore::count_faces(self))
    }
    fn for_each_slot_embedding(
        &self,
        slot: usize,
        each: &mut (dyn FnMut(StoredEmbedding) -> Result<()> + Send),
    ) -> Result<()> {
        self.exec(|| PgStore::for_each_slot_embedding(self, slot, each))
    }
    fn lock_tenant(&self, tenant: &Tenant) -> Result<TenantGuard> {
        self.write(|| PgStore::lock_tenant(self, tenant)).map(TenantGuard::new)
    }
    fn is_shared(&self) -> bool {
        true
    }
    fn try_recover(&self) -> Result<bool> {
        PgStore::try_recover(self).map(|()| true)
    }
    fn check_embedder(&self, embedder: &EmbedderRecord) -> Result<()> {
        self.exec(|| PgStore::check_embedder(self, embedder))
    }
    fn flush(&self) -> Result<()> {
        // Every acknowledged write is committed with synchronous_commit on: nothing to flush.
        Ok(())
    }
    fn close(&self) -> Result<()> {
        Ok(())
    }
    fn write_failure(&self) -> Option<String> {
        PgStore::write_failure(self)
    }
    fn is_encrypted(&self) -> bool {
        PgStore::is_encrypted(self)
    }
    fn verify(&self, max_faces: usize) -> Result<Integrity> {
        self.exec(|| PgStore::verify(self, max_faces))
    }
    fn tree_sizes(&self) -> Vec<(&'static str, usize)> {
        run(|| PgStore::tree_sizes(self)).unwrap_or_default()
    }
    fn raw_entries(&self, table: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.exec(|| PgStore::raw_entries(self, table))
    }
}
