//! Tree names and key encodings. Every key of tenant data starts with the tenant name and a
//! 0x00 byte (tenant names never contain 0x00), so a prefix scan never crosses tenants; ids are
//! big-endian u64 so keys sort by id.

use crate::domain::{FaceId, Tenant, UserId};

pub(crate) const META: &str = "meta";
pub(crate) const USERS: &str = "users";
pub(crate) const EXTERNAL_IDS: &str = "external_ids";
pub(crate) const FACES: &str = "faces";
pub(crate) const EMBEDDINGS: &str = "embeddings";
/// The second embedding slot (storage/models.rs).
pub(crate) const EMBEDDINGS_1: &str = "embeddings_1";
pub(crate) const IMAGES: &str = "images";
pub(crate) const THUMBNAILS: &str = "thumbnails";
pub(crate) const TOKENS: &str = "reenrollment_tokens";
/// The ordered change log the search index is derived from (log.rs).
pub(crate) const CHANGE_LOG: &str = "change_log";
/// Request ids of idempotent writes (requests.rs).
pub(crate) const REQUESTS: &str = "requests";
/// Face lists, their entries, and each list's entries in order (lists.rs).
pub(crate) const FACE_LISTS: &str = "face_lists";
pub(crate) const LIST_ENTRIES: &str = "list_entries";
pub(crate) const LIST_MEMBERS: &str = "list_members";
/// The associated data of a list entry's sealed thumbnail (kept in its record).
pub(crate) const LIST_THUMBNAILS: &str = "list_thumbnails";

/// Every tree that holds tenant data (for scans that check nothing is left behind).
pub const TENANT_TREES: [&str; 10] =
    [USERS, EXTERNAL_IDS, FACES, EMBEDDINGS, EMBEDDINGS_1, IMAGES, THUMBNAILS, FACE_LISTS, LIST_ENTRIES, LIST_MEMBERS];

pub(crate) const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";
/// In `meta`: the embedder the store was built with (an `EmbedderRecord`).
pub(crate) const EMBEDDER_KEY: &[u8] = b"embedder";
/// In `meta`: the file id of the index snapshot taken last (app/snapshot): a start-up loads
/// only that snapshot, so one left from another history of the store (a restored backup, a
/// crash while it was taken) is never loaded.
pub(crate) const SNAPSHOT_ID_KEY: &[u8] = b"index_snapshot_id";
/// In `meta`: a fixed plaintext sealed with the store's key; present only in encrypted stores.
pub(crate) const ENCRYPTION_CHECK_KEY: &[u8] = b"encryption_key_check";

/// `tenant ‖ 0x00`: the prefix of all of a tenant's keys.
pub fn tenant_prefix(tenant: &Tenant) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.as_str().len() + 9);
    key.extend_from_slice(tenant.as_str().as_bytes());
    key.push(0);
    key
}

pub(crate) fn user_key(tenant: &Tenant, id: UserId) -> Vec<u8> {
    let mut key = tenant_prefix(tenant);
    key.extend_from_slice(&id.0.to_be_bytes());
    key
}

pub(crate) fn face_key(tenant: &Tenant, id: FaceId) -> Vec<u8> {
    let mut key = tenant_prefix(tenant);
    key.extend_from_slice(&id.0.to_be_bytes());
    key
}

pub(crate) fn external_key(tenant: &Tenant, external_id: &str) -> Vec<u8> {
    let mut key = tenant_prefix(tenant);
    key.extend_from_slice(external_id.as_bytes());
    key
}

/// Splits a `tenant ‖ 0x00 ‖ u64` key.
pub(crate) fn split_id_key(key: &[u8]) -> Option<(Tenant, u64)> {
    let zero = key.iter().position(|&b| b == 0)?;
    let tenant = Tenant::new(std::str::from_utf8(&key[..zero]).ok()?)?;
    let id: [u8; 8] = key.get(zero + 1..)?.try_into().ok()?;
    Some((tenant, u64::from_be_bytes(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_id_within_a_tenant_and_round_trip() {
        let t = Tenant::new("acme").unwrap();
        let (a, b) = (user_key(&t, UserId(1)), user_key(&t, UserId(256)));
        assert!(a < b);
        assert!(a.starts_with(&tenant_prefix(&t)));
        assert_eq!(split_id_key(&b), Some((t.clone(), 256)));
        // "acme" and "acme2" never share a prefix thanks to the 0x00 separator.
        let other = Tenant::new("acme2").unwrap();
        assert!(!user_key(&other, UserId(1)).starts_with(&tenant_prefix(&t)));
    }
}
