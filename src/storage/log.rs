//! The change log: one ordered history of what every committed write did to the faces of a
//! tenant, appended in the same transaction as the records (so a write that fails leaves no
//! entry, and a committed one always has one). The search index of a node is derived from it
//! (search/feed.rs): applied in sequence order, never updated by the request that wrote.
//!
//! In sled the log is the `change_log` tree: the big-endian sequence number maps to a
//! `ChangeRecord`; the empty key holds the last sequence number assigned. The counter is read
//! and written inside each transaction, so sequence order is commit order (sled retries a
//! transaction that raced another on it). Entries a snapshot of the index covers are removed by
//! `compact_log`; the counter stays.

use prost::Message;
use sled::transaction::TransactionalTree;

use super::faces::decode_model_embedding;
use super::models::ModelEmbedding;
use super::records::pb;
use super::seal::unseal_with;
use super::users::{TxResult, abort};
use super::{EncryptionKey, Store, db_error, decode, keys};
use crate::domain::{Embedding, EntryId, FaceId, ListId, ListKind, Tenant, UserId};
use crate::error::{Error, Result};

/// The key of the counter in the log tree (no sequence number encodes to it).
const HEAD_KEY: &[u8] = b"";

/// What one write did to a tenant's faces.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A face was stored, replacing `replaced` if any; `embedding` is by `model`, and `other`
    /// by the other model the store keeps during a reindex.
    Put {
        face: FaceId,
        user: UserId,
        model: String,
        embedding: Embedding,
        other: Option<ModelEmbedding>,
        replaced: Option<FaceId>,
    },
    /// Faces were deleted; `user`: a deleted user they belonged to (its tags leave the index).
    Removed { faces: Vec<FaceId>, user: Option<UserId> },
    /// A face list was created (lists.rs).
    ListSet { list: ListId, name: String, kind: ListKind, threshold: Option<f32> },
    /// A face list was deleted with these entries.
    ListDropped { list: ListId, entries: Vec<EntryId> },
    /// A list entry was added, embedded by `model` (and by the other model the store keeps
    /// during a reindex, if so).
    EntryPut { entry: EntryId, list: ListId, model: String, embedding: Embedding, other: Option<ModelEmbedding> },
    /// A list entry was deleted.
    EntryRemoved { entry: EntryId },
    /// A user's metadata is now `metadata` (empty: none), for SearchFaces' metadata_filter.
    UserTags { user: UserId, metadata: std::collections::BTreeMap<String, String> },
    /// The store's models changed (models.rs) to the state of `generation`; `active` is the
    /// active model from here on. The entry's tenant means nothing.
    Models { active: String, generation: u64 },
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub seq: u64,
    pub tenant: Tenant,
    pub change: Change,
}

/// Where the log stands: entries after `compacted` up to `head` are present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogBounds {
    /// The last sequence number assigned (0: none yet).
    pub head: u64,
    /// Every entry up to this one has been compacted away (0: none).
    pub compacted: u64,
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// Appends `record` to the log inside a transaction; returns its sequence number.
pub(super) fn tx_append(log: &TransactionalTree, record: &pb::ChangeRecord) -> TxResult<u64> {
    let head = match log.get(HEAD_KEY)? {
        None => 0,
        Some(bytes) => match seq_of(&bytes) {
            Some(seq) => seq,
            None => return abort(Error::bug("malformed change-log head")),
        },
    };
    let seq = head + 1;
    log.insert(HEAD_KEY, &seq_key(seq))?;
    log.insert(&seq_key(seq), record.encode_to_vec())?;
    Ok(seq)
}

/// The log record of a stored face (`embedding` as stored in the embeddings tree).
pub(super) fn put_record(
    tenant: &Tenant,
    face: FaceId,
    user: UserId,
    embedding: &[u8],
    other: Option<&[u8]>,
    replaced: Option<FaceId>,
) -> pb::ChangeRecord {
    pb::ChangeRecord {
        tenant: tenant.as_str().to_owned(),
        change: Some(pb::change_record::Change::Put(pb::FacePut {
            face_id: face.0,
            user_id: user.0,
            embedding: embedding.to_vec(),
            replaced_face_id: replaced.map_or(0, |f| f.0),
            other_embedding: other.map(<[u8]>::to_vec).unwrap_or_default(),
        })),
    }
}

/// The log record of deleted faces (and of their deleted user, if so).
pub(super) fn removed_record(tenant: &Tenant, faces: &[FaceId], user: Option<UserId>) -> pb::ChangeRecord {
    pb::ChangeRecord {
        tenant: tenant.as_str().to_owned(),
        change: Some(pb::change_record::Change::Removed(pb::FacesRemoved {
            face_ids: faces.iter().map(|f| f.0).collect(),
            user_id: user.map_or(0, |u| u.0),
        })),
    }
}

impl Store {
    /// The last sequence number assigned, and how far the log is compacted.
    pub fn log_bounds(&self) -> Result<LogBounds> {
        let head = match self.log.get(HEAD_KEY).map_err(db_error)? {
            None => 0,
            Some(bytes) => seq_of(&bytes).ok_or_else(|| Error::bug("malformed change-log head"))?,
        };
        let first = self.log.range(seq_key(1)..).next().transpose().map_err(db_error)?;
        let compacted = match first {
            Some((key, _)) => seq_of(&key).ok_or_else(|| Error::bug("malformed change-log key"))? - 1,
            None => head,
        };
        Ok(LogBounds { head, compacted })
    }

    /// Up to `limit` entries with sequence numbers above `after`, in order. Refused when `after`
    /// is below what was compacted away (a reader that far behind must start from a snapshot or
    /// the records).
    pub fn read_log(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        // The head first: every entry up to it is committed, so an empty range below it is a gap
        // (read after the range, a write committed meanwhile would look like one).
        let head = self.log_bounds()?.head;
        let mut out = Vec::new();
        for (expected, entry) in (after + 1..).zip(self.log.range(seq_key(after + 1)..)) {
            if out.len() == limit {
                break;
            }
            let (key, value) = entry.map_err(db_error)?;
            let seq = seq_of(&key).ok_or_else(|| Error::bug("malformed change-log key"))?;
            if seq != expected {
                return Err(Error::bug("the change log has a gap (entries were compacted that a reader still needs)"));
            }
            out.push(self.decode_entry(seq, &value)?);
        }
        if out.is_empty() && head > after {
            return Err(Error::bug("the change log has a gap (entries were compacted that a reader still needs)"));
        }
        Ok(out)
    }

    fn decode_entry(&self, seq: u64, value: &[u8]) -> Result<LogEntry> {
        decode_entry(self.encryption.as_ref(), seq, value)
    }

    /// The file id of the index snapshot recorded last, if any.
    pub fn snapshot_id(&self) -> Result<Option<Vec<u8>>> {
        let meta = self.db.open_tree(keys::META).map_err(db_error)?;
        Ok(meta.get(keys::SNAPSHOT_ID_KEY).map_err(db_error)?.map(|v| v.to_vec()))
    }

    /// Records, durably, the file id of the index snapshot just written (before the log is
    /// compacted up to it).
    pub fn record_snapshot_id(&self, id: &[u8]) -> Result<()> {
        let meta = self.db.open_tree(keys::META).map_err(db_error)?;
        self.write(|| {
            meta.insert(keys::SNAPSHOT_ID_KEY, id).map_err(db_error)?;
            self.flush()
        })
    }

    /// Removes every entry up to and including `upto` (a snapshot covers them). Not a write of
    /// records: it is made durable with the next write or flush, and losing it in a crash only
    /// leaves entries that are skipped again.
    pub fn compact_log(&self, upto: u64) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for key in self.log.range(seq_key(1)..=seq_key(upto)).keys() {
            batch.remove(key.map_err(db_error)?);
            removed += 1;
        }
        self.log.apply_batch(batch).map_err(db_error)?;
        Ok(removed)
    }
}

/// Decodes the entry `seq` as stored (`value`, its embedding sealed with `encryption`).
pub(super) fn decode_entry(encryption: Option<&EncryptionKey>, seq: u64, value: &[u8]) -> Result<LogEntry> {
    let record: pb::ChangeRecord = decode(value, "decoding a change-log entry")?;
    if let Some(pb::change_record::Change::Models(models)) = record.change {
        let tenant = Tenant::new(MODELS_TENANT).ok_or_else(|| Error::bug("the models entry's tenant"))?;
        let change = Change::Models { active: models.active, generation: models.generation };
        return Ok(LogEntry { seq, tenant, change });
    }
    let tenant = Tenant::new(&record.tenant).ok_or_else(|| Error::bug("a change-log entry names a bad tenant"))?;
    let change = match record.change {
        Some(pb::change_record::Change::Put(put)) => {
            let face = FaceId(put.face_id);
            let key = keys::face_key(&tenant, face);
            let open = |sealed: &[u8]| -> Result<(UserId, String, Embedding)> {
                let plain = unseal_with(encryption, keys::EMBEDDINGS, &key, sealed)?;
                let (owner, model, embedding) = decode_model_embedding(&plain)
                    .ok_or_else(|| Error::bug("a change-log entry has a malformed embedding"))?;
                if owner.0 != put.user_id {
                    return Err(Error::bug("a change-log entry's embedding belongs to another user"));
                }
                Ok((owner, model, embedding))
            };
            let (owner, model, embedding) = open(&put.embedding)?;
            let other = if put.other_embedding.is_empty() {
                None
            } else {
                let (_, model, embedding) = open(&put.other_embedding)?;
                Some(ModelEmbedding { model, embedding })
            };
            let replaced = (put.replaced_face_id != 0).then_some(FaceId(put.replaced_face_id));
            Change::Put { face, user: owner, model, embedding, other, replaced }
        }
        Some(pb::change_record::Change::Removed(removed)) => Change::Removed {
            faces: removed.face_ids.into_iter().map(FaceId).collect(),
            user: (removed.user_id != 0).then_some(UserId(removed.user_id)),
        },
        Some(pb::change_record::Change::ListSet(set)) => Change::ListSet {
            list: ListId(set.list_id),
            name: set.name,
            kind: ListKind::from_number(set.kind).ok_or_else(|| Error::bug("a list entry of an unknown kind"))?,
            threshold: (set.threshold != 0.0).then_some(set.threshold),
        },
        Some(pb::change_record::Change::ListDropped(dropped)) => Change::ListDropped {
            list: ListId(dropped.list_id),
            entries: dropped.entry_ids.into_iter().map(EntryId).collect(),
        },
        Some(pb::change_record::Change::EntryPut(put)) => {
            let key = super::lists::entry_key(&tenant, EntryId(put.entry_id));
            let open = |sealed: &[u8]| -> Result<(String, Embedding)> {
                let plain = unseal_with(encryption, keys::LIST_ENTRIES, &key, sealed)?;
                let (list, model, embedding) = super::lists::decode_entry_embedding(&plain)?;
                if list.0 != put.list_id {
                    return Err(Error::bug("a change-log entry's embedding belongs to another list"));
                }
                Ok((model, embedding))
            };
            let (model, embedding) = open(&put.embedding)?;
            let other = match put.other_embedding.is_empty() {
                true => None,
                false => {
                    let (model, embedding) = open(&put.other_embedding)?;
                    Some(ModelEmbedding { model, embedding })
                }
            };
            Change::EntryPut { entry: EntryId(put.entry_id), list: ListId(put.list_id), model, embedding, other }
        }
        Some(pb::change_record::Change::EntryRemoved(removed)) => {
            Change::EntryRemoved { entry: EntryId(removed.entry_id) }
        }
        Some(pb::change_record::Change::UserTags(tags)) => {
            Change::UserTags { user: UserId(tags.user_id), metadata: tags.metadata.into_iter().collect() }
        }
        Some(pb::change_record::Change::Models(_)) | None => {
            return Err(Error::bug("a change-log entry without a change"));
        }
    };
    Ok(LogEntry { seq, tenant, change })
}

/// The tenant a models entry reports (it belongs to none).
pub(crate) const MODELS_TENANT: &str = "-";
