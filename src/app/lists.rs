//! Face lists (ListService): create, read, delete lists; add entries from an image or a stored
//! face, list and delete them; and the list check of every enrollment (`list_check`). Entries
//! reach the index only through the change log, like faces.

use std::time::SystemTime;

use bytes::Bytes;

use super::requests::{Idempotency, Written, stamped};
use super::{App, blocking, validate};
use crate::domain::{
    EntryId, FaceList, FaceMatch, ListEntry, ListId, ListKind, ListMatch, MultipleFaces, Principal, Tenant,
};
use crate::error::{Error, Reason, Result};
use crate::search::ListHit;
use crate::storage::NewListEntry;
use crate::storage::lists::{entry_not_found, list_not_found};

/// Longest list name, in characters.
const MAX_LIST_NAME: usize = 100;
/// Most entries one ListListEntries page holds.
const MAX_ENTRIES_PAGE: i32 = 100;
/// Enrolled users an AddListEntry reports at most.
const MAX_ENROLLED_MATCHES: usize = 100;

/// A CreateFaceList request after conversion.
#[derive(Debug, Clone)]
pub struct NewList {
    pub name: String,
    pub kind: ListKind,
    /// 0: the active model's match threshold.
    pub threshold: f32,
}

/// Where an AddListEntry takes its face from (Debug shows the image's length only).
#[derive(Clone)]
pub enum EntrySource {
    /// An image with exactly one enrollable face.
    Image(Bytes),
    /// A stored face of the tenant (its embedding and thumbnail are copied).
    Face(String),
}

impl std::fmt::Debug for EntrySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntrySource::Image(image) => write!(f, "Image(<{} bytes>)", image.len()),
            EntrySource::Face(id) => f.debug_tuple("Face").field(id).finish(),
        }
    }
}

/// What AddListEntry stored and found (Debug shows no thumbnail bytes).
#[derive(Clone)]
pub struct AddedEntry {
    pub entry: ListEntry,
    pub thumbnail: Vec<u8>,
    /// Enrolled users with a face at or above the list's threshold, best first.
    pub enrolled_matches: Vec<FaceMatch>,
}

impl std::fmt::Debug for AddedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddedEntry")
            .field("entry", &self.entry.id)
            .field("enrolled_matches", &self.enrolled_matches.len())
            .finish_non_exhaustive()
    }
}

/// What the tenant's lists say of a face about to be enrolled.
#[derive(Debug, Clone, Default)]
pub(super) struct ListCheck {
    /// Best first.
    pub matches: Vec<ListMatch>,
}

impl ListCheck {
    /// The best BLOCK match, if any.
    pub(super) fn blocked(&self) -> Option<&ListMatch> {
        self.matches.iter().find(|m| m.kind == ListKind::Block)
    }

    /// Whether an ALLOW list matched (DUPLICATE_FACE rejection is waived).
    pub(super) fn allowed(&self) -> bool {
        self.matches.iter().any(|m| m.kind == ListKind::Allow)
    }
}

/// FAILED_PRECONDITION FACE_IN_BLOCKLIST for `hit` (a token caller gets it without metadata).
pub(super) fn blocked_error(hit: &ListMatch) -> Error {
    Error::failed_precondition(Reason::FaceInBlocklist, "the face matches an entry of a blocklist")
        .with_meta("list_id", hit.list_id)
        .with_meta("entry_id", hit.entry_id)
        .with_meta("similarity", format!("{:.4}", hit.similarity))
}

pub(super) fn to_list_matches(hits: Vec<ListHit>) -> Vec<ListMatch> {
    hits.into_iter()
        .map(|h| ListMatch {
            list_id: h.list,
            list_name: h.info.name,
            kind: h.info.kind,
            entry_id: h.entry,
            similarity: h.similarity,
        })
        .collect()
}

fn parse_list(text: &str) -> Result<ListId> {
    ListId::parse(text).ok_or_else(|| list_not_found().with_meta("list_id", text))
}

/// LIST_NAME_INVALID unless 1-100 characters without control characters (and not only spaces).
fn validate_name(name: &str) -> Result<()> {
    let count = name.chars().count();
    if count == 0 || count > MAX_LIST_NAME || name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            Reason::ListNameInvalid,
            "list.name",
            format!("a list name is 1-{MAX_LIST_NAME} characters, not all spaces, without control characters"),
        ));
    }
    Ok(())
}

/// THRESHOLD_INVALID unless 0 (the default) or above 0 and at most 1.
fn validate_threshold(threshold: f32) -> Result<()> {
    if threshold == 0.0 || (threshold > 0.0 && threshold <= 1.0) {
        return Ok(());
    }
    Err(Error::invalid(
        Reason::ThresholdInvalid,
        "list.threshold",
        "threshold is a cosine similarity above 0 and at most 1 (0: the match threshold)",
    )
    .with_meta("threshold", threshold))
}

impl App {
    /// The lists of the tenant that `embedding` (by the active model) matches, best first: a
    /// scan of the tenant's entries, on a compute thread (OVERLOADED when their queue is full).
    pub(super) async fn list_matches(
        &self,
        tenant: &Tenant,
        embedding: &crate::domain::Embedding,
        matched: f32,
    ) -> Result<ListCheck> {
        if self.index.lists().entry_count(tenant) == 0 {
            return Ok(ListCheck::default()); // most tenants: no compute round trip
        }
        let (index, tenant, query) = (self.index.clone(), tenant.clone(), embedding.clone());
        let (hits, took) = self
            .compute
            .run(move || {
                let started = std::time::Instant::now();
                let hits = index.lists().matches(&tenant, &query, matched);
                (hits, started.elapsed())
            })
            .await?;
        crate::metrics::record_stage("lists", took);
        Ok(ListCheck { matches: to_list_matches(hits) })
    }

    /// The threshold a list applies: its own, or the match threshold of the active model.
    pub fn list_threshold(&self, list: &FaceList) -> Result<f32> {
        Ok(list.threshold.unwrap_or(self.model_use()?.thresholds.matched))
    }

    pub async fn create_face_list(&self, caller: &Principal, new: NewList) -> Result<FaceList> {
        validate_name(&new.name)?;
        validate_threshold(new.threshold)?;
        let writes = self.lock_tenant_writes(&caller.tenant).await?;
        self.catch_up().await?;
        let max = self.settings.max_lists_per_tenant;
        if self.index.lists().list_count(&caller.tenant) >= max {
            return Err(Error::quota_exceeded("face lists", max));
        }
        let list = FaceList {
            id: ListId(0),
            name: new.name,
            kind: new.kind,
            threshold: (new.threshold != 0.0).then_some(new.threshold),
            entry_count: 0,
            create_time: SystemTime::now(),
        };
        let (store, feed, tenant) = (self.store()?, self.feed.clone(), caller.tenant.clone());
        blocking(move || {
            let _writes = writes;
            let pending = store.create_list(&tenant, &list)?;
            feed.finish(store.as_ref(), pending)
        })
        .await
    }

    pub async fn get_face_list(&self, caller: &Principal, list_id: &str) -> Result<FaceList> {
        let id = parse_list(list_id)?;
        let (store, tenant) = (self.store()?, caller.tenant.clone());
        blocking(move || store.get_list(&tenant, id)).await?.ok_or_else(|| list_not_found().with_meta("list_id", id))
    }

    /// A page of lists in id order, and the token of the next page.
    pub async fn list_face_lists(&self, caller: &Principal, size: i32, token: &str) -> Result<(Vec<FaceList>, String)> {
        let size = validate::page_size(size, 50, 1000)?;
        let after = validate::page_token(token, ListId::parse)?;
        let (store, tenant) = (self.store()?, caller.tenant.clone());
        let mut lists = blocking(move || store.list_lists(&tenant, after, size + 1)).await?;
        let next = if lists.len() > size {
            lists.truncate(size);
            lists.last().map(|l| l.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((lists, next))
    }

    /// Deletes a list with every entry; returns once the index no longer has them.
    pub async fn delete_face_list(&self, caller: &Principal, list_id: &str) -> Result<()> {
        let id = parse_list(list_id)?;
        let writes = self.lock_tenant_writes(&caller.tenant).await?;
        let (store, feed, tenant) = (self.store()?, self.feed.clone(), caller.tenant.clone());
        blocking(move || {
            let _writes = writes;
            let pending = store.delete_list_pending(&tenant, id).map_err(|e| e.with_meta("list_id", id))?;
            feed.finish(store.as_ref(), pending)
        })
        .await
    }

    /// AddListEntry: the face of `source` becomes an entry of the list; returns it with the
    /// enrolled users who already match it.
    pub async fn add_list_entry(
        &self,
        caller: &Principal,
        list_id: &str,
        source: EntrySource,
        comment: String,
        idem: Option<Idempotency<AddedEntry>>,
    ) -> Result<Written<AddedEntry>> {
        validate::comment(&comment, "comment")?;
        let id = parse_list(list_id)?;
        if let EntrySource::Face(text) = &source {
            validate::face_id(text, "face_id")?;
        }
        self.idempotent(&caller.tenant, idem.as_ref(), || async {
            match self.add_list_entry_once(caller, id, source.clone(), comment.clone(), idem.as_ref()).await {
                Err(e) if crate::storage::models::is_models_changed(&e) => {
                    self.catch_up().await?;
                    self.add_list_entry_once(caller, id, source, comment, idem.as_ref()).await
                }
                done => done,
            }
        })
        .await
    }

    async fn add_list_entry_once(
        &self,
        caller: &Principal,
        list_id: ListId,
        source: EntrySource,
        comment: String,
        idem: Option<&Idempotency<AddedEntry>>,
    ) -> Result<AddedEntry> {
        let tenant = caller.tenant.clone();
        // The list first: an unknown one costs no inference.
        let list = {
            let (store, tenant) = (self.store()?, tenant.clone());
            blocking(move || store.get_list(&tenant, list_id)).await?
        }
        .ok_or_else(|| list_not_found().with_meta("list_id", list_id))?;
        let max_entries = self.settings.max_list_entries;
        // Checked again under the lock; this only saves the inference.
        if self.index.lists().entry_count(&tenant) >= max_entries {
            return Err(Error::quota_exceeded("list entries", max_entries));
        }
        let models = self.model_use()?;
        // While the store keeps two models (a reindex), the entry is embedded by both, as a face
        // is: it matches under either, whichever is active after a cutover or a rollback.
        let other_model: Option<String> = models.other.map(|o| self.catalog.models[o].record.id.clone());
        let (detection, quality, embedding, other, thumbnail, source_face) = match source {
            EntrySource::Image(image) => {
                let (analysis, picked, _) = self.analyze_for_enrollment(image, MultipleFaces::Reject, &models).await?;
                let mut faces = analysis.image.faces;
                let face = faces.swap_remove(picked);
                let embedding = face.embedding.ok_or_else(|| Error::bug("the entry's face was not embedded"))?;
                let thumbnail = face.thumbnail.ok_or_else(|| Error::bug("the entry's face has no thumbnail"))?;
                let other = match other_model {
                    Some(model) => Some(crate::storage::ModelEmbedding {
                        model,
                        embedding: face
                            .other_embedding
                            .ok_or_else(|| Error::bug("the entry's face lacks its other embedding"))?,
                    }),
                    None => None,
                };
                (face.detection, face.quality, embedding, other, thumbnail, None)
            }
            EntrySource::Face(text) => {
                let face_id = validate::face_id(&text, "face_id")?;
                let (store, tenant, model) = (self.store()?, tenant.clone(), models.main_id.clone());
                let found = blocking(move || {
                    let Some((face, thumbnail)) = store.face_with_image(&tenant, face_id, true)? else {
                        return Ok(None);
                    };
                    let Some(embedding) = store.face_embedding(&tenant, face_id, &model)? else { return Ok(None) };
                    // A face written during the reindex has both; an older one is re-embedded
                    // by the reindex (MODELS_CHANGED until it is: the call is retried).
                    let other = match other_model {
                        Some(model) => match store.face_embedding(&tenant, face_id, &model)? {
                            Some(embedding) => Some(crate::storage::ModelEmbedding { model, embedding }),
                            None => return Err(crate::storage::models::models_changed()),
                        },
                        None => None,
                    };
                    Ok(Some((face, thumbnail, embedding, other)))
                })
                .await?;
                let (face, thumbnail, embedding, other) =
                    found.ok_or_else(|| Error::face_not_found().with_meta("face_id", face_id))?;
                (face.detection, face.quality, embedding, other, thumbnail, Some(face_id))
            }
        };
        let entry = ListEntry {
            id: EntryId(crate::storage::random_id()?),
            list_id,
            detection,
            quality,
            comment,
            added_by: caller.key_name.clone(),
            source_face,
            model: models.main_id.clone(),
            create_time: SystemTime::now(),
        };
        let writes = self.lock_tenant_writes(&tenant).await?;
        // The tenant's entries as committed, under the lock: racing adds cannot pass the quota.
        self.catch_up().await?;
        if self.index.lists().entry_count(&tenant) >= max_entries {
            return Err(Error::quota_exceeded("list entries", max_entries));
        }
        // The models of now, the log caught up: the same as the entry was embedded by, or it is
        // embedded again (a reindex that started needs the candidate's embedding too).
        let now = self.model_use()?;
        if now.main_id != models.main_id || now.other != models.other {
            return Err(crate::storage::models::models_changed());
        }
        let new = NewListEntry { entry, embedding: embedding.clone(), other, thumbnail: thumbnail.clone() };
        let (store, feed, tenant_c) = (self.store()?, self.feed.clone(), tenant.clone());
        let (idem, ttl) = (idem.cloned(), self.settings.request_id_ttl);
        let thumb = thumbnail.clone();
        let entry = blocking(move || {
            let _writes = writes;
            let respond = |i: &Idempotency<AddedEntry>, e: &ListEntry| {
                i.recorded(None, &AddedEntry { entry: e.clone(), thumbnail: Vec::new(), enrolled_matches: Vec::new() })
            };
            let pending =
                stamped(idem.as_ref(), ttl, respond, |stamp| store.put_list_entry_pending(&tenant_c, &new, stamp))?;
            feed.finish(store.as_ref(), pending)
        })
        .await?;
        // The entry is stored: who matches it is reported on a best-effort basis (an error
        // here must not read as a failed write, which a retry without a request id repeats).
        let enrolled_matches = match self.enrolled_matches(&tenant, &list, &embedding).await {
            Ok(matches) => matches,
            Err(error) => {
                tracing::warn!(%error, "the enrolled users matching a new list entry were not found");
                Vec::new()
            }
        };
        Ok(AddedEntry { entry, thumbnail: thumb, enrolled_matches })
    }

    /// The enrolled users whose faces match `embedding` at or above the list's threshold, and
    /// never below the possible-match threshold (a list's own threshold may be low: it does not
    /// turn AddListEntry into a listing of the tenant's users), best first.
    async fn enrolled_matches(
        &self,
        tenant: &Tenant,
        list: &FaceList,
        embedding: &crate::domain::Embedding,
    ) -> Result<Vec<FaceMatch>> {
        let models = self.model_use()?;
        let threshold = self.list_threshold(list)?.max(models.thresholds.possible);
        let hits = self.search_index(tenant, embedding, MAX_ENROLLED_MATCHES, threshold, None).await?;
        self.describe_hits(tenant, &hits, models.thresholds).await
    }

    /// The enrolled users who match an entry now (a replayed AddListEntry's), best first.
    pub async fn entry_matches(&self, caller: &Principal, entry_id: &str) -> Result<Vec<FaceMatch>> {
        let Some(id) = EntryId::parse(entry_id) else { return Ok(Vec::new()) };
        let Some((list_id, embedding)) = self.index.lists().entry(&caller.tenant, id) else { return Ok(Vec::new()) };
        let (store, tenant) = (self.store()?, caller.tenant.clone());
        let Some(list) = blocking(move || store.get_list(&tenant, list_id)).await? else { return Ok(Vec::new()) };
        self.enrolled_matches(&caller.tenant, &list, &embedding).await
    }

    /// The stored thumbnail of a list entry, empty when it is gone (a replayed AddListEntry's).
    pub async fn entry_thumbnail(&self, caller: &Principal, entry_id: &str) -> Result<Vec<u8>> {
        let Some(id) = EntryId::parse(entry_id) else { return Ok(Vec::new()) };
        let (store, tenant) = (self.store()?, caller.tenant.clone());
        let found = blocking(move || store.get_list_entry(&tenant, id)).await?;
        Ok(found.map(|(_, thumbnail)| thumbnail).unwrap_or_default())
    }

    /// A page of a list's entries in id order (each with its thumbnail), and the next token.
    pub async fn list_list_entries(
        &self,
        caller: &Principal,
        list_id: &str,
        size: i32,
        token: &str,
    ) -> Result<(Vec<(ListEntry, Vec<u8>)>, String)> {
        let id = parse_list(list_id)?;
        // Each entry carries its thumbnail: pages stay well under a client's 4 MB message limit.
        let size = validate::page_size(size, 50, MAX_ENTRIES_PAGE)?;
        let after = validate::page_token(token, EntryId::parse)?;
        let (store, tenant) = (self.store()?, caller.tenant.clone());
        let mut entries = blocking(move || store.list_entries(&tenant, id, after, size + 1))
            .await
            .map_err(|e| e.with_meta("list_id", id))?;
        let next = if entries.len() > size {
            entries.truncate(size);
            entries.last().map(|(e, _)| e.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((entries, next))
    }

    /// Deletes one entry; returns once the index no longer has it.
    pub async fn delete_list_entry(&self, caller: &Principal, entry_id: &str) -> Result<()> {
        let id = EntryId::parse(entry_id).ok_or_else(|| entry_not_found().with_meta("entry_id", entry_id))?;
        let writes = self.lock_tenant_writes(&caller.tenant).await?;
        let (store, feed, tenant) = (self.store()?, self.feed.clone(), caller.tenant.clone());
        blocking(move || {
            let _writes = writes;
            let pending = store.delete_list_entry_pending(&tenant, id).map_err(|e| e.with_meta("entry_id", id))?;
            feed.finish(store.as_ref(), pending)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_thresholds_are_checked() {
        for good in ["blocklist", "fraud ring 2026-12", &"é".repeat(100)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "   ", &"x".repeat(101), "tab\there"] {
            let err = validate_name(bad).unwrap_err();
            assert_eq!(err.reason(), Reason::ListNameInvalid, "{bad:?}");
        }
        for good in [0.0, 0.01, 0.5, 1.0] {
            assert!(validate_threshold(good).is_ok(), "{good}");
        }
        for bad in [-0.1, 1.01, f32::NAN, f32::INFINITY] {
            let err = validate_threshold(bad).unwrap_err();
            assert_eq!(err.reason(), Reason::ThresholdInvalid, "{bad}");
        }
    }
}
