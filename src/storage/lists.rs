//! Face lists and their entries (ListService), and the records and log entries both backends
//! share. A list entry is a face kept apart from every user's: its record, sealed embedding and
//! sealed thumbnail live in the `list_entries` tree (PostgreSQL: table `list_entries`), never
//! in the face trees, and the index holds it only as a list entry. Creating or deleting a list,
//! adding or deleting an entry, each appends its change-log entry in its transaction, so every
//! node's index of lists is derived from the log like its index of faces.
//!
//! sled trees: `face_lists` (tenant ‖ 0x00 ‖ list id → ListRecord), `list_entries` (tenant ‖
//! 0x00 ‖ entry id → ListEntryRecord) and `list_members` (tenant ‖ 0x00 ‖ list id ‖ entry id →
//! empty: a list's entries in id order).

use std::collections::BTreeMap;

use prost::Message;
use sled::Transactional;

use super::faces::{decode_model_embedding, encode_embedding};
use super::models::ModelEmbedding;
use super::records::{self, pb};
use super::requests::{self, RequestStamp};
use super::seal::{seal_with, unseal_with};
use super::users::{abort, tx_decode, tx_error};
use super::{EncryptionKey, Pending, Store, db_error, decode, keys, log, random_id};
use crate::domain::{Embedding, EntryId, FaceId, FaceList, ListEntry, ListId, ListKind, Tenant, UserId};
use crate::error::{Error, Reason, Result};

/// A list entry to store, with its embedding (by `entry.model`), its embedding by the other
/// model while the store keeps two (a reindex: the index takes whichever is active), and its
/// thumbnail.
#[derive(Clone)]
pub struct NewListEntry {
    pub entry: ListEntry,
    pub embedding: Embedding,
    pub other: Option<ModelEmbedding>,
    pub thumbnail: Vec<u8>,
}

impl std::fmt::Debug for NewListEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewListEntry")
            .field("entry", &self.entry)
            .field("thumbnail", &format_args!("<{} bytes>", self.thumbnail.len()))
            .finish_non_exhaustive()
    }
}

/// Every user with metadata: tenant, user, metadata (loading the index).
pub type UserTags = Vec<(Tenant, UserId, BTreeMap<String, String>)>;

/// A stored list entry's embedding, for loading the index.
#[derive(Debug, Clone)]
pub struct StoredListEntry {
    pub tenant: Tenant,
    pub entry_id: EntryId,
    pub list_id: ListId,
    pub model: String,
    pub embedding: Embedding,
    /// By the other model, when the entry was added while the store kept two.
    pub other: Option<ModelEmbedding>,
}

impl StoredListEntry {
    /// The entry's embedding by `model` (empty: whatever it has), if it has one.
    pub fn embedding_of(&self, model: &str) -> Option<&Embedding> {
        if self.model == model || model.is_empty() {
            return Some(&self.embedding);
        }
        self.other.as_ref().filter(|o| o.model == model).map(|o| &o.embedding)
    }
}

pub(crate) fn list_not_found() -> Error {
    Error::not_found(Reason::ListNotFound, "no such face list")
}

pub(crate) fn entry_not_found() -> Error {
    Error::not_found(Reason::EntryNotFound, "no such list entry")
}

pub(crate) fn list_to_record(list: &FaceList) -> pb::ListRecord {
    pb::ListRecord {
        id: list.id.0,
        name: list.name.clone(),
        kind: list.kind.number(),
        threshold: list.threshold.unwrap_or(0.0),
        create_time_ns: records::to_nanos(list.create_time),
    }
}

pub(crate) fn list_from_record(r: pb::ListRecord, entry_count: u64) -> Result<FaceList> {
    Ok(FaceList {
        id: ListId(r.id),
        name: r.name,
        kind: ListKind::from_number(r.kind).ok_or_else(|| Error::bug("a list record of an unknown kind"))?,
        threshold: (r.threshold != 0.0).then_some(r.threshold),
        entry_count,
        create_time: records::from_nanos(r.create_time_ns),
    })
}

/// The record of `entry` with its embedding and thumbnail as stored (sealed or not).
pub(crate) fn entry_to_record(entry: &ListEntry, embedding: Vec<u8>, thumbnail: Vec<u8>) -> pb::ListEntryRecord {
    let (bbox, score, landmarks, rotation) = records::detection_fields(&entry.detection);
    pb::ListEntryRecord {
        id: entry.id.0,
        list_id: entry.list_id.0,
        bbox,
        score,
        landmarks,
        quality: Some(records::quality_to_record(&entry.quality)),
        comment: entry.comment.clone(),
        added_by: entry.added_by.clone(),
        source_face_id: entry.source_face.map_or(0, |f| f.0),
        model: entry.model.clone(),
        create_time_ns: records::to_nanos(entry.create_time),
        rotation,
        embedding,
        thumbnail,
        other_embedding: Vec::new(),
    }
}

pub(crate) fn entry_from_record(r: &pb::ListEntryRecord) -> ListEntry {
    ListEntry {
        id: EntryId(r.id),
        list_id: ListId(r.list_id),
        detection: records::detection_from_fields(&r.bbox, r.score, &r.landmarks, r.rotation),
        quality: records::quality_from_record(r.quality),
        comment: r.comment.clone(),
        added_by: r.added_by.clone(),
        source_face: (r.source_face_id != 0).then_some(FaceId(r.source_face_id)),
        model: r.model.clone(),
        create_time: records::from_nanos(r.create_time_ns),
    }
}

/// `tenant ‖ 0x00 ‖ entry id`: an entry's key, and the associated data its sealed values are
/// bound to.
pub(crate) fn entry_key(tenant: &Tenant, id: EntryId) -> Vec<u8> {
    keys::face_key(tenant, FaceId(id.0))
}

/// The plain bytes of an entry's embedding: an embeddings-tree value with the list in the
/// owner's place.
pub(crate) fn encode_entry_embedding(list: ListId, model: &str, embedding: &Embedding) -> Vec<u8> {
    encode_embedding(UserId(list.0), model, embedding)
}

/// An entry's embedding from its plain bytes: list, model, embedding.
pub(crate) fn decode_entry_embedding(plain: &[u8]) -> Result<(ListId, String, Embedding)> {
    let (owner, model, embedding) =
        decode_model_embedding(plain).ok_or_else(|| Error::bug("a list entry has a malformed embedding"))?;
    Ok((ListId(owner.0), model, embedding))
}

/// The entry's embedding from its record (sealed with `encryption`).
pub(crate) fn open_entry_embedding(
    encryption: Option<&EncryptionKey>,
    tenant: &Tenant,
    record: &pb::ListEntryRecord,
) -> Result<StoredListEntry> {
    let key = entry_key(tenant, EntryId(record.id));
    let open = |sealed: &[u8]| -> Result<(String, Embedding)> {
        let plain = unseal_with(encryption, keys::LIST_ENTRIES, &key, sealed)?;
        let (list_id, model, embedding) = decode_entry_embedding(&plain)?;
        if list_id.0 != record.list_id {
            return Err(Error::bug("a list entry's embedding belongs to another list"));
        }
        Ok((model, embedding))
    };
    let (model, embedding) = open(&record.embedding)?;
    let other = match record.other_embedding.is_empty() {
        true => None,
        false => open(&record.other_embedding).map(|(model, embedding)| Some(ModelEmbedding { model, embedding }))?,
    };
    Ok(StoredListEntry {
        tenant: tenant.clone(),
        entry_id: EntryId(record.id),
        list_id: ListId(record.list_id),
        model,
        embedding,
        other,
    })
}

/// A new entry as stored (its record, embeddings and thumbnail sealed with `encryption`) and
/// its change-log record: what both backends write.
pub(crate) fn sealed_entry(
    encryption: Option<&EncryptionKey>,
    tenant: &Tenant,
    new: &NewListEntry,
) -> Result<(Vec<u8>, pb::ChangeRecord)> {
    let entry = &new.entry;
    let key = entry_key(tenant, entry.id);
    let seal = |model: &str, embedding: &Embedding| -> Result<Vec<u8>> {
        let plain = encode_entry_embedding(entry.list_id, model, embedding);
        Ok(seal_with(encryption, keys::LIST_ENTRIES, &key, &plain)?.into_owned())
    };
    let embedding = seal(&entry.model, &new.embedding)?;
    let other = match &new.other {
        Some(o) => seal(&o.model, &o.embedding)?,
        None => Vec::new(),
    };
    let thumbnail = seal_with(encryption, keys::LIST_THUMBNAILS, &key, &new.thumbnail)?.into_owned();
    let record =
        pb::ListEntryRecord { other_embedding: other.clone(), ..entry_to_record(entry, embedding.clone(), thumbnail) };
    let log = pb::ChangeRecord {
        tenant: tenant.as_str().to_owned(),
        change: Some(pb::change_record::Change::EntryPut(pb::EntryPut {
            entry_id: entry.id.0,
            list_id: entry.list_id.0,
            embedding,
            other_embedding: other,
        })),
    };
    Ok((record.encode_to_vec(), log))
}

/// The thumbnail of an entry's record (sealed with `encryption`).
pub(crate) fn open_entry_thumbnail(
    encryption: Option<&EncryptionKey>,
    tenant: &Tenant,
    record: &pb::ListEntryRecord,
) -> Result<Vec<u8>> {
    let key = entry_key(tenant, EntryId(record.id));
    Ok(unseal_with(encryption, keys::LIST_THUMBNAILS, &key, &record.thumbnail)?.into_owned())
}

// ---- log records

pub(crate) fn list_set_record(tenant: &Tenant, list: &FaceList) -> pb::ChangeRecord {
    pb::ChangeRecord {
        tenant: tenant.as_str().to_owned(),
        change: Some(pb::change_record::Change::ListSet(pb::ListSet {
            list_id: list.id.0,
            name: list.name.clone(),
            kind: list.kind.number(),
            threshold: list.threshold.unwrap_or(0.0),
        })),
    }
}

pub(crate) fn list_dropped_record(tenant: &Tenant, list: ListId, entries: &[EntryId]) -> pb::ChangeRecord {
    pb::ChangeRecord {
        tenant: tenant.as_str().to_owned(),
        change: Some(pb::change_record::Change::ListDropped(pb::ListDropped {
            list_id: list.0,
            entry_ids: entries.iter().map(|e| e.0).collect(),
        })),
    }
}

pub(crate) fn entry_removed_record(tenant: &Tenant, entry: EntryId) -> pb::ChangeRecord {
    pb::ChangeRecord {
        tenant: tenant.as_str().to_owned(),
        change: Some(pb::change_record::Change::EntryRemoved(pb::EntryRemoved { entry_id: entry.0 })),
    }
}

pub(crate) fn user_tags_record(tenant: &Tenant, user: UserId, metadata: &BTreeMap<String, String>) -> pb::ChangeRecord {
    pb::ChangeRecord {
        tenant: tenant.as_str().to_owned(),
        change: Some(pb::change_record::Change::UserTags(pb::UserTags {
            user_id: user.0,
            metadata: metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })),
    }
}

/// `tenant ‖ 0x00 ‖ list id ‖ entry id`.
fn member_key(tenant: &Tenant, list: ListId, entry: EntryId) -> Vec<u8> {
    let mut key = keys::tenant_prefix(tenant);
    key.extend_from_slice(&list.0.to_be_bytes());
    key.extend_from_slice(&entry.0.to_be_bytes());
    key
}

fn members_prefix(tenant: &Tenant, list: ListId) -> Vec<u8> {
    let mut key = keys::tenant_prefix(tenant);
    key.extend_from_slice(&list.0.to_be_bytes());
    key
}

fn list_key(tenant: &Tenant, id: ListId) -> Vec<u8> {
    keys::face_key(tenant, FaceId(id.0))
}

impl Store {
    /// Stores a new list under a fresh random id.
    pub fn create_list(&self, tenant: &Tenant, list: &FaceList) -> Result<Pending<FaceList>> {
        let result = (&self.face_lists, &self.log).transaction(|(lists, log)| {
            let mut id = ListId(random_id().map_err(sled::transaction::ConflictableTransactionError::Abort)?);
            while lists.get(list_key(tenant, id))?.is_some() {
                id = ListId(random_id().map_err(sled::transaction::ConflictableTransactionError::Abort)?);
            }
            let list = FaceList { id, entry_count: 0, ..list.clone() };
            lists.insert(list_key(tenant, id), list_to_record(&list).encode_to_vec())?;
            let seq = log::tx_append(log, &list_set_record(tenant, &list))?;
            Ok((list, seq))
        });
        let (list, seq) = result.map_err(tx_error)?;
        Ok(self.pending(list, seq, Vec::new()))
    }

    fn count_members(&self, tenant: &Tenant, list: ListId) -> u64 {
        self.list_members.scan_prefix(members_prefix(tenant, list)).count() as u64
    }

    pub fn get_list(&self, tenant: &Tenant, id: ListId) -> Result<Option<FaceList>> {
        let Some(bytes) = self.face_lists.get(list_key(tenant, id)).map_err(db_error)? else { return Ok(None) };
        let record: pb::ListRecord = decode(&bytes, "decoding a list record")?;
        Ok(Some(list_from_record(record, self.count_members(tenant, id))?))
    }

    /// Up to `limit` lists with ids above `after`, in id order.
    pub fn list_lists(&self, tenant: &Tenant, after: Option<ListId>, limit: usize) -> Result<Vec<FaceList>> {
        let prefix = keys::tenant_prefix(tenant);
        let start = match after {
            Some(id) => {
                let mut key = list_key(tenant, id);
                key.push(0);
                key
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in self.face_lists.range(start..) {
            let (key, value) = item.map_err(db_error)?;
            if !key.starts_with(&prefix) || out.len() == limit {
                break;
            }
            let record: pb::ListRecord = decode(&value, "decoding a list record")?;
            let id = ListId(record.id);
            out.push(list_from_record(record, self.count_members(tenant, id))?);
        }
        Ok(out)
    }

    /// Every list of every tenant (loading the index).
    pub fn all_lists(&self) -> Result<Vec<(Tenant, FaceList)>> {
        let mut out = Vec::new();
        for item in self.face_lists.iter() {
            let (key, value) = item.map_err(db_error)?;
            let (tenant, _) = keys::split_id_key(&key).ok_or_else(|| Error::bug("malformed list key"))?;
            out.push((tenant, list_from_record(decode(&value, "decoding a list record")?, 0)?));
        }
        Ok(out)
    }

    /// Deletes a list and every entry of it.
    pub fn delete_list_pending(&self, tenant: &Tenant, id: ListId) -> Result<Pending<()>> {
        // Listed before the transaction (see DeleteUser): the app writes a tenant's lists under
        // its tenant lock, which the delete holds.
        let members: Vec<EntryId> = self
            .list_members
            .scan_prefix(members_prefix(tenant, id))
            .keys()
            .map(|k| {
                let k = k.map_err(db_error)?;
                let tail: [u8; 8] = k[k.len() - 8..].try_into().map_err(|_| Error::bug("malformed member key"))?;
                Ok(EntryId(u64::from_be_bytes(tail)))
            })
            .collect::<Result<_>>()?;
        let trees = (&self.face_lists, &self.list_entries, &self.list_members, &self.log);
        let result = trees.transaction(|(lists, entries, members_tree, log)| {
            if lists.remove(list_key(tenant, id))?.is_none() {
                return abort(list_not_found());
            }
            for &entry in &members {
                entries.remove(entry_key(tenant, entry))?;
                members_tree.remove(member_key(tenant, id, entry))?;
            }
            let seq = log::tx_append(log, &list_dropped_record(tenant, id, &members))?;
            Ok(seq)
        });
        let seq = result.map_err(tx_error)?;
        Ok(self.pending((), seq, Vec::new()))
    }

    /// Stores an entry in its list (LIST_NOT_FOUND when the list is gone).
    pub fn put_list_entry_pending(
        &self,
        tenant: &Tenant,
        new: &NewListEntry,
        request: Option<&RequestStamp<'_, ListEntry>>,
    ) -> Result<Pending<ListEntry>> {
        let entry = &new.entry;
        let key = entry_key(tenant, entry.id);
        let (record, put) = sealed_entry(self.encryption.as_ref(), tenant, new)?;
        let trees = (&self.face_lists, &self.list_entries, &self.list_members, &self.log, &self.requests);
        let result = trees.transaction(|(lists, entries, members, log, requests)| {
            if lists.get(list_key(tenant, entry.list_id))?.is_none() {
                return abort(list_not_found());
            }
            if entries.get(key.as_slice())?.is_some() {
                return abort(Error::bug("a list entry id was taken"));
            }
            entries.insert(key.as_slice(), record.as_slice())?;
            members.insert(member_key(tenant, entry.list_id, entry.id), &[][..])?;
            let seq = log::tx_append(log, &put)?;
            requests::tx_record(requests, tenant, request, entry)?;
            Ok(seq)
        });
        let seq = result.map_err(tx_error)?;
        Ok(self.pending(entry.clone(), seq, Vec::new()))
    }

    fn entry_record(&self, tenant: &Tenant, id: EntryId) -> Result<Option<pb::ListEntryRecord>> {
        match self.list_entries.get(entry_key(tenant, id)).map_err(db_error)? {
            Some(bytes) => Ok(Some(decode(&bytes, "decoding a list entry")?)),
            None => Ok(None),
        }
    }

    /// An entry with its thumbnail.
    pub fn get_list_entry(&self, tenant: &Tenant, id: EntryId) -> Result<Option<(ListEntry, Vec<u8>)>> {
        let Some(record) = self.entry_record(tenant, id)? else { return Ok(None) };
        let thumbnail = open_entry_thumbnail(self.encryption.as_ref(), tenant, &record)?;
        Ok(Some((entry_from_record(&record), thumbnail)))
    }

    /// Up to `limit` entries of a list with ids above `after`, in id order, each with its
    /// thumbnail (LIST_NOT_FOUND when there is no such list).
    pub fn list_entries(
        &self,
        tenant: &Tenant,
        list: ListId,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<(ListEntry, Vec<u8>)>> {
        if self.face_lists.get(list_key(tenant, list)).map_err(db_error)?.is_none() {
            return Err(list_not_found());
        }
        let prefix = members_prefix(tenant, list);
        let start = match after {
            Some(e) => {
                let mut key = member_key(tenant, list, e);
                key.push(0);
                key
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in self.list_members.range(start..) {
            let (key, _) = item.map_err(db_error)?;
            if !key.starts_with(&prefix) || out.len() == limit {
                break;
            }
            let tail: [u8; 8] = key[key.len() - 8..].try_into().map_err(|_| Error::bug("malformed member key"))?;
            if let Some(found) = self.get_list_entry(tenant, EntryId(u64::from_be_bytes(tail)))? {
                out.push(found);
            }
        }
        Ok(out)
    }

    pub fn delete_list_entry_pending(&self, tenant: &Tenant, id: EntryId) -> Result<Pending<()>> {
        let key = entry_key(tenant, id);
        let trees = (&self.list_entries, &self.list_members, &self.log);
        let result = trees.transaction(|(entries, members, log)| {
            let Some(bytes) = entries.remove(key.as_slice())? else { return abort(entry_not_found()) };
            let record: pb::ListEntryRecord = tx_decode(&bytes, "decoding a list entry")?;
            members.remove(member_key(tenant, ListId(record.list_id), id))?;
            let seq = log::tx_append(log, &entry_removed_record(tenant, id))?;
            Ok(seq)
        });
        let seq = result.map_err(tx_error)?;
        Ok(self.pending((), seq, Vec::new()))
    }

    /// Every list entry's embedding of every tenant (loading the index).
    pub fn all_list_entries(&self) -> Result<Vec<StoredListEntry>> {
        let mut out = Vec::new();
        for item in self.list_entries.iter() {
            let (key, value) = item.map_err(db_error)?;
            let (tenant, _) = keys::split_id_key(&key).ok_or_else(|| Error::bug("malformed list entry key"))?;
            let record: pb::ListEntryRecord = decode(&value, "decoding a list entry")?;
            out.push(open_entry_embedding(self.encryption.as_ref(), &tenant, &record)?);
        }
        Ok(out)
    }

    /// Every user with metadata, of every tenant (loading the index).
    pub fn all_user_tags(&self) -> Result<UserTags> {
        let mut out = Vec::new();
        for item in self.users.iter() {
            let (key, value) = item.map_err(db_error)?;
            let (tenant, id) = keys::split_id_key(&key).ok_or_else(|| Error::bug("malformed user key"))?;
            let record: pb::UserRecord = decode(&value, "decoding a user record")?;
            if !record.metadata.is_empty() {
                out.push((tenant, UserId(id), record.metadata.into_iter().collect()));
            }
        }
        Ok(out)
    }
}

/// What both backends must do with lists (run on sled below, on PostgreSQL by
/// `postgres/tests.rs`): reads and pages, LIST_NOT_FOUND and ENTRY_NOT_FOUND, tenants apart,
/// sealed values, and one change-log entry per write (with the user tags of users).
#[cfg(test)]
pub(crate) fn exercise_lists(store: &dyn super::Storage) {
    use std::time::SystemTime;

    use super::{Change, Recorded, UserPatch};
    use crate::domain::User;

    fn reason(err: Error) -> Reason {
        err.reason()
    }
    fn new_entry(list: ListId, id: u64, seed: f32) -> NewListEntry {
        let face = super::test_face(UserId(1), id, seed);
        NewListEntry {
            entry: ListEntry {
                id: EntryId(id),
                list_id: list,
                detection: face.face.detection,
                quality: face.face.quality,
                comment: format!("entry {id}"),
                added_by: "test".into(),
                source_face: id.is_multiple_of(2).then_some(FaceId(id + 1)),
                model: "w600k_mbf".into(),
                create_time: SystemTime::now(),
            },
            embedding: face.embedding,
            other: None,
            thumbnail: face.thumbnail,
        }
    }

    let (t, other) = (Tenant::new("t").unwrap(), Tenant::new("other").unwrap());
    let start = store.log_bounds().unwrap().head;
    let template = FaceList {
        id: ListId(0),
        name: "wanted".into(),
        kind: ListKind::Block,
        threshold: Some(0.5),
        entry_count: 9,
        create_time: SystemTime::now(),
    };
    let created = store.create_list(&t, &template).unwrap();
    assert_eq!(created.seq(), start + 1, "one entry per list write");
    let list = created.durable().unwrap();
    assert!(list.id.0 != 0 && list.entry_count == 0);
    assert_eq!(list, FaceList { id: list.id, entry_count: 0, ..template.clone() });
    assert_eq!(store.get_list(&t, list.id).unwrap(), Some(list.clone()));

    // Two entries, ids on both sides of 2^63 (PostgreSQL keeps u64 order), one with a request id.
    let (low, high) = (new_entry(list.id, 7, 0.1), new_entry(list.id, (1 << 63) | 4, 0.2));
    let respond = |e: &ListEntry| Recorded { owner: None, response: e.id.0.to_be_bytes().to_vec() };
    let stamp = super::RequestStamp {
        id: "add-high",
        fingerprint: [3; 32],
        expired_before: SystemTime::UNIX_EPOCH,
        respond: &respond,
    };
    let p = store.put_list_entry_pending(&t, &high, Some(&stamp)).unwrap();
    assert_eq!(p.seq(), start + 2);
    assert_eq!(p.durable().unwrap(), high.entry);
    store.put_list_entry_pending(&t, &low, None).unwrap().durable().unwrap();
    let seen = store.request(&t, "add-high").unwrap().expect("the request id is recorded");
    assert_eq!((seen.fingerprint, seen.response), ([3; 32], high.entry.id.0.to_be_bytes().to_vec()));
    let nowhere = new_entry(ListId(list.id.0 ^ 1), 9, 0.3);
    assert_eq!(reason(store.put_list_entry_pending(&t, &nowhere, None).unwrap_err()), Reason::ListNotFound);

    // Reads: counts, the entry with its thumbnail, pages in id order.
    assert_eq!(store.get_list(&t, list.id).unwrap().unwrap().entry_count, 2);
    assert_eq!(store.list_lists(&t, None, 10).unwrap(), vec![FaceList { entry_count: 2, ..list.clone() }]);
    assert!(store.list_lists(&t, Some(list.id), 10).unwrap().is_empty());
    assert!(store.list_lists(&t, None, 0).unwrap().is_empty());
    assert_eq!(store.get_list_entry(&t, low.entry.id).unwrap(), Some((low.entry.clone(), low.thumbnail.clone())));
    assert_eq!(store.get_list_entry(&t, EntryId(8)).unwrap(), None);
    let first = store.list_entries(&t, list.id, None, 1).unwrap();
    assert_eq!(first, vec![(low.entry.clone(), low.thumbnail.clone())]);
    let rest = store.list_entries(&t, list.id, Some(low.entry.id), 10).unwrap();
    assert_eq!(rest, vec![(high.entry.clone(), high.thumbnail.clone())]);
    assert!(store.list_entries(&t, list.id, Some(high.entry.id), 10).unwrap().is_empty());
    let missing = store.list_entries(&t, ListId(list.id.0 ^ 1), None, 10).unwrap_err();
    assert_eq!(reason(missing), Reason::ListNotFound);
    assert_eq!(store.raw_entries(keys::LIST_MEMBERS).unwrap().len(), 2);

    // What loads the index.
    let lists = store.all_lists().unwrap();
    assert_eq!(lists, vec![(t.clone(), FaceList { entry_count: 0, ..list.clone() })]);
    let mut loaded = store.all_list_entries().unwrap();
    loaded.sort_by_key(|e| e.entry_id.0);
    let loaded: Vec<_> = loaded.into_iter().map(|e| (e.tenant, e.entry_id, e.list_id, e.model, e.embedding)).collect();
    let expected = |n: &NewListEntry| (t.clone(), n.entry.id, list.id, "w600k_mbf".to_owned(), n.embedding.clone());
    assert_eq!(loaded, vec![expected(&low), expected(&high)]);

    // Sealed at rest when the store is encrypted (plain otherwise).
    let raw = store.raw_entries(keys::LIST_ENTRIES).unwrap();
    assert_eq!(raw.len(), 2);
    let holds_thumbnail = raw.iter().any(|(_, v)| v.windows(low.thumbnail.len()).any(|w| w == low.thumbnail));
    assert_eq!(holds_thumbnail, !store.is_encrypted(), "thumbnails are sealed with the store's key");

    // Another tenant sees nothing, and writes nothing of this one's.
    assert_eq!(store.get_list(&other, list.id).unwrap(), None);
    assert!(store.list_lists(&other, None, 10).unwrap().is_empty());
    assert_eq!(store.get_list_entry(&other, low.entry.id).unwrap(), None);
    assert_eq!(reason(store.list_entries(&other, list.id, None, 10).unwrap_err()), Reason::ListNotFound);
    assert_eq!(reason(store.put_list_entry_pending(&other, &nowhere, None).unwrap_err()), Reason::ListNotFound);
    let foreign = new_entry(list.id, 11, 0.4);
    assert_eq!(reason(store.put_list_entry_pending(&other, &foreign, None).unwrap_err()), Reason::ListNotFound);
    assert_eq!(reason(store.delete_list_entry_pending(&other, low.entry.id).unwrap_err()), Reason::EntryNotFound);
    assert_eq!(reason(store.delete_list_pending(&other, list.id).unwrap_err()), Reason::ListNotFound);

    // Deletes: one entry, then the list with the rest.
    store.delete_list_entry_pending(&t, low.entry.id).unwrap().durable().unwrap();
    assert_eq!(reason(store.delete_list_entry_pending(&t, low.entry.id).unwrap_err()), Reason::EntryNotFound);
    assert_eq!(store.get_list(&t, list.id).unwrap().unwrap().entry_count, 1);
    let dropped = store.delete_list_pending(&t, list.id).unwrap();
    assert_eq!(dropped.seq(), start + 5);
    dropped.durable().unwrap();
    assert_eq!(store.get_list(&t, list.id).unwrap(), None);
    assert_eq!(store.get_list_entry(&t, high.entry.id).unwrap(), None);
    assert_eq!(reason(store.delete_list_pending(&t, list.id).unwrap_err()), Reason::ListNotFound);
    assert_eq!(reason(store.delete_list_entry_pending(&t, high.entry.id).unwrap_err()), Reason::EntryNotFound);
    assert!(store.all_lists().unwrap().is_empty() && store.all_list_entries().unwrap().is_empty());
    for tree in [keys::FACE_LISTS, keys::LIST_ENTRIES, keys::LIST_MEMBERS] {
        assert!(store.raw_entries(tree).unwrap().is_empty(), "{tree} is empty again");
    }

    // The log: one entry per write, in order; failed writes wrote none.
    let changes: Vec<Change> = store.read_log(start, 100).unwrap().into_iter().map(|e| e.change).collect();
    assert_eq!(changes.len(), 5, "{changes:?}");
    let Change::ListSet { list: id, name, kind, threshold } = &changes[0] else { panic!("{:?}", changes[0]) };
    assert_eq!((*id, name.as_str(), *kind, *threshold), (list.id, "wanted", ListKind::Block, Some(0.5)));
    for (change, new) in changes[1..3].iter().zip([&high, &low]) {
        let Change::EntryPut { entry, list: id, model, embedding, other: None } = change else { panic!("{change:?}") };
        assert_eq!((*entry, *id, model.as_str(), embedding), (new.entry.id, list.id, "w600k_mbf", &new.embedding));
    }
    assert!(matches!(&changes[3], Change::EntryRemoved { entry } if *entry == low.entry.id), "{:?}", changes[3]);
    let Change::ListDropped { list: id, entries } = &changes[4] else { panic!("{:?}", changes[4]) };
    assert_eq!((*id, entries.as_slice()), (list.id, &[high.entry.id][..]));

    // Users' tags: created with metadata, changed, unchanged, deleted; a user without any
    // writes none.
    let start = store.log_bounds().unwrap().head;
    let tags: BTreeMap<String, String> = [("team".to_owned(), "red".to_owned())].into();
    let tagged = User { metadata: tags.clone(), ..User::unenrolled("tagged", SystemTime::now()) };
    let tagged = store.create_user(&t, tagged, None).unwrap();
    let plain = store.create_user(&t, User::unenrolled("plain", SystemTime::now()), None).unwrap();
    assert_eq!(store.log_bounds().unwrap().head, start + 1, "a user without metadata writes no entry");
    let email = UserPatch { email: Some("x@example.org".into()), ..UserPatch::default() };
    store.update_user(&t, tagged.id, None, &email, None).unwrap();
    assert_eq!(store.log_bounds().unwrap().head, start + 1, "metadata unchanged: no entry");
    let blue: BTreeMap<String, String> = [("team".to_owned(), "blue".to_owned())].into();
    let retag = UserPatch { metadata: Some(blue.clone()), ..UserPatch::default() };
    store.update_user(&t, tagged.id, None, &retag, None).unwrap();
    assert_eq!(store.all_user_tags().unwrap(), vec![(t.clone(), tagged.id, blue.clone())]);
    assert_eq!(store.delete_user_pending(&t, plain.id, None, None).unwrap().seq(), 0, "nothing indexed: no entry");
    let gone = store.delete_user_pending(&t, tagged.id, None, None).unwrap();
    assert_eq!(gone.seq(), start + 3);
    gone.durable().unwrap();
    assert!(store.all_user_tags().unwrap().is_empty());
    let changes: Vec<Change> = store.read_log(start, 100).unwrap().into_iter().map(|e| e.change).collect();
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(matches!(&changes[0], Change::UserTags { user, metadata } if *user == tagged.id && *metadata == tags));
    assert!(matches!(&changes[1], Change::UserTags { user, metadata } if *user == tagged.id && *metadata == blue));
    assert!(
        matches!(&changes[2], Change::Removed { faces, user } if faces.is_empty() && *user == Some(tagged.id)),
        "{:?}",
        changes[2]
    );
    assert!(store.verify(5).unwrap().problems.is_empty());
}

#[cfg(test)]
mod tests {
    use crate::storage::{EncryptionKey, Store};

    #[test]
    fn lists_entries_and_user_tags_behave_as_the_backends_agree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        super::exercise_lists(&store);
    }

    #[test]
    fn list_entries_are_sealed_in_an_encrypted_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_key(dir.path(), Some(EncryptionKey::from_bytes(&[5; 32]))).unwrap();
        super::exercise_lists(&store);
    }

    #[test]
    fn an_entry_written_during_a_reindex_keeps_both_embeddings_in_its_record_and_its_log_entry() {
        use crate::domain::{EntryId, FaceList, ListEntry, ListId, ListKind, Tenant, UserId};
        use crate::storage::{Change, ModelEmbedding, NewListEntry};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with_key(dir.path(), Some(EncryptionKey::from_bytes(&[6; 32]))).unwrap();
        let t = Tenant::new("t").unwrap();
        let template = FaceList {
            id: ListId(0),
            name: "l".into(),
            kind: ListKind::Watch,
            threshold: None,
            entry_count: 0,
            create_time: std::time::SystemTime::now(),
        };
        let list = store.create_list(&t, &template).unwrap().durable().unwrap();
        let (a, b) = (crate::storage::test_face(UserId(1), 1, 0.1), crate::storage::test_face(UserId(1), 2, 0.7));
        let new = NewListEntry {
            entry: ListEntry {
                id: EntryId(9),
                list_id: list.id,
                detection: a.face.detection.clone(),
                quality: a.face.quality.clone(),
                comment: String::new(),
                added_by: "k".into(),
                source_face: None,
                model: "old".into(),
                create_time: std::time::SystemTime::now(),
            },
            embedding: a.embedding.clone(),
            other: Some(ModelEmbedding { model: "new".into(), embedding: b.embedding.clone() }),
            thumbnail: a.thumbnail.clone(),
        };
        let seq = store.put_list_entry_pending(&t, &new, None).unwrap().seq();
        let stored = store.all_list_entries().unwrap().pop().unwrap();
        assert_eq!(stored.embedding_of("old"), Some(&a.embedding));
        assert_eq!(stored.embedding_of("new"), Some(&b.embedding));
        assert_eq!(stored.embedding_of("third"), None);
        let logged = store.read_log(seq - 1, 1).unwrap().pop().unwrap();
        let Change::EntryPut { model, embedding, other: Some(other), .. } = logged.change else { panic!("{logged:?}") };
        assert_eq!((model.as_str(), &embedding), ("old", &a.embedding));
        assert_eq!((other.model.as_str(), &other.embedding), ("new", &b.embedding));
    }
}
