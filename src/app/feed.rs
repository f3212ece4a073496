//! `IndexFeed`: the one path by which the search index changes. It applies the store's change
//! log in sequence order and remembers the last entry applied. A request that wrote waits until
//! its entry is applied before it replies (read-your-writes); a writer of a tenant brings the
//! feed up to date before its duplicate check; a background task applies what no waiting writer
//! did (the entry of a write whose sync failed after it committed). So the index equals the
//! store's committed state by construction, whatever happened to the request that wrote.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use std::sync::RwLock;

use crate::error::{Error, Result};
use crate::search::FaceIndex;
use crate::storage::{Change, LogEntry, ModelState, Pending, Storage};

/// Entries read from the log at a time.
const BATCH: usize = 1024;

/// Applies the change log to one index. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct IndexFeed {
    index: FaceIndex,
    /// Held while entries are read and applied, so they are applied once and in order.
    applying: Arc<Mutex<()>>,
    /// The last sequence number applied (readable without the lock).
    applied: Arc<AtomicU64>,
    /// The store's models as of the last entry applied: the index holds the active model's
    /// embeddings (storage/models.rs). `None`: read from the store at the first catch-up.
    models: Arc<RwLock<Option<ModelState>>>,
    /// The model whose embeddings the index holds, when known (after a rebuild); a snapshot's
    /// is not recorded: its log replay rebuilds at the first change of models.
    index_model: Arc<RwLock<Option<String>>>,
}

/// Applies one entry to the index, which holds the embeddings of model `active`. Idempotent: a
/// face put twice is overwritten, a face removed twice is already gone. A face stored before the
/// active model's embeddings were (an entry replayed before a change of models, which rebuilds
/// the index after it) is skipped.
pub(crate) fn apply(index: &FaceIndex, active: &str, entry: &LogEntry) {
    match &entry.change {
        Change::Put { face, user, model, embedding, other, replaced } => {
            // An unnamed active model: a store no server recorded a model in (storage tests).
            let embedding = if model == active || active.is_empty() {
                Some(embedding)
            } else {
                other.as_ref().filter(|o| o.model == active).map(|o| &o.embedding)
            };
            match embedding {
                Some(embedding) => index.replace(&entry.tenant, *replaced, *face, *user, embedding),
                None => {
                    if let Some(old) = replaced {
                        index.remove(&entry.tenant, *old);
                    }
                    index.remove(&entry.tenant, *face);
                }
            }
        }
        Change::Removed { faces, user } => {
            for face in faces {
                index.remove(&entry.tenant, *face);
            }
            if let Some(user) = user {
                index.tags().set(&entry.tenant, *user, Default::default());
            }
        }
        Change::ListSet { list, name, kind, threshold } => {
            let info = crate::search::ListInfo { name: name.clone(), kind: *kind, threshold: *threshold };
            index.lists().set_list(&entry.tenant, *list, info);
        }
        Change::ListDropped { list, entries } => index.lists().drop_list(&entry.tenant, *list, entries),
        // The entry's embedding by the index's model; one without it cannot be compared with
        // the queries (CutoverReindex refuses to leave such entries behind).
        Change::EntryPut { entry: id, list, model, embedding, other } => {
            let embedding = if model == active || active.is_empty() {
                Some(embedding)
            } else {
                other.as_ref().filter(|o| o.model == active).map(|o| &o.embedding)
            };
            match embedding {
                Some(embedding) => index.lists().insert(&entry.tenant, *id, *list, embedding),
                None => index.lists().remove(&entry.tenant, *id),
            }
        }
        Change::EntryRemoved { entry: id } => index.lists().remove(&entry.tenant, *id),
        Change::UserTags { user, metadata } => index.tags().set(&entry.tenant, *user, metadata.clone()),
        Change::Models { .. } => {}
    }
}

impl IndexFeed {
    /// A feed for `index`, which holds the store's state up to entry `applied`.
    /// A feed of `index`, which holds the store's state up to entry `applied`, in the store's
    /// active model as of then.
    pub fn new(index: FaceIndex, applied: u64) -> Self {
        IndexFeed {
            index,
            applying: Arc::default(),
            applied: Arc::new(AtomicU64::new(applied)),
            models: Arc::new(RwLock::new(None)),
            index_model: Arc::new(RwLock::new(None)),
        }
    }

    /// The store's models as this node follows them (the default before the first catch-up
    /// of a feed made without them).
    pub fn models(&self) -> ModelState {
        self.models.read().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default()
    }

    /// Sets the models the index holds (start-up, after the store's were read).
    pub fn set_models(&self, models: ModelState) {
        *self.models.write().unwrap_or_else(PoisonError::into_inner) = Some(models);
    }

    /// The model whose embeddings the index takes from the log: the index's own when known,
    /// else the store's active one (read from the store the first time).
    fn active(&self, store: &dyn Storage) -> Result<String> {
        if let Some(model) = self.index_model() {
            return Ok(model);
        }
        if self.models.read().unwrap_or_else(PoisonError::into_inner).is_none() {
            self.set_models(store.model_state()?);
        }
        Ok(self.models().active_embedder().map(|e| e.id.clone()).unwrap_or_default())
    }

    /// Follows a change of models (a models entry at `at`, announcing the state of
    /// `generation`). When that is the store's state now and its active model is the index's,
    /// the node takes it as it is. Otherwise (this entry changed the active model; the store
    /// moved on since, perhaps through a finish that dropped a model and writes that stored
    /// only the other; or the feed does not know whose embeddings the index holds) the index
    /// is rebuilt from the store first, so requests never use one model against the other's
    /// index. Returns the entry the index reflects from here on. Called with `applying` held.
    fn change_models(&self, store: &dyn Storage, at: u64, generation: u64) -> Result<u64> {
        let state = store.model_state()?;
        if state.generation == generation
            && self.index_model().as_deref() == Some(state.active_or_unnamed().id.as_str())
        {
            self.set_models(state);
            return Ok(at);
        }
        let started = std::time::Instant::now();
        let applied = self.rebuild(store)?.max(at);
        tracing::info!(ms = started.elapsed().as_millis() as u64, "the active model changed: index rebuilt");
        Ok(applied)
    }

    /// After a start or a reopen that followed the log to its end: the index holds the store's
    /// active model when the store's models did not change while it was followed (every models
    /// entry up to then was applied, and a snapshot is newer than any before it); the feed then
    /// knows it and later changes rebuild only when the active model changes. Blocking.
    pub(crate) fn settle_models(&self, store: &dyn Storage) -> Result<()> {
        loop {
            let before = store.model_state()?;
            self.catch_up(store)?;
            let after = store.model_state()?;
            if before.generation == after.generation {
                let _applying = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
                if self.index_model().is_none() {
                    *self.index_model.write().unwrap_or_else(PoisonError::into_inner) =
                        Some(after.active_or_unnamed().id.clone());
                    self.set_models(after);
                }
                return Ok(());
            }
        }
    }

    /// Rebuilds the index from the store and takes the store's models as this node's; the
    /// entry the index reflects. The models are read after the scan, and the scan is done again
    /// if the active model changed meanwhile. Called with `applying` held (or before the feed
    /// is shared).
    fn rebuild(&self, store: &dyn Storage) -> Result<u64> {
        loop {
            let (index, head, model) = crate::app::rebuild_index_of(store, self.index.exact_max_faces())?;
            let state = store.model_state()?;
            if state.active_or_unnamed().id != model.id {
                continue;
            }
            // The node's models change with its index, under the models' lock (a request reads
            // the models, then checks them again after it used the index).
            let mut models = self.models.write().unwrap_or_else(PoisonError::into_inner);
            self.index.replace_contents(index);
            *self.index_model.write().unwrap_or_else(PoisonError::into_inner) = Some(model.id);
            *models = Some(state);
            return Ok(head);
        }
    }

    /// Rebuilds the index from the store (a node that fell behind the compacted log) and
    /// restarts the feed at the entry it reflects. Blocking.
    pub(crate) fn rebuild_from(&self, store: &dyn Storage) -> Result<u64> {
        let _applying = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        let applied = self.rebuild(store)?;
        self.applied.store(applied, Ordering::Release);
        Ok(applied)
    }

    /// The model whose embeddings the index holds, when this feed knows it.
    fn index_model(&self) -> Option<String> {
        self.index_model.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The last sequence number applied to the index.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Starts over after the index was rebuilt to reflect entry `applied` (a reopened store),
    /// with the models as the store holds them then (what the index's model is, the next
    /// `settle_models` tells).
    pub(crate) fn reset(&self, applied: u64, models: ModelState) {
        let _applying = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        *self.index_model.write().unwrap_or_else(PoisonError::into_inner) = None;
        self.set_models(models);
        self.applied.store(applied, Ordering::Release);
    }

    /// Applies every entry committed after the last one applied; returns the last applied.
    /// Blocking (reads the store).
    pub fn catch_up(&self, store: &dyn Storage) -> Result<u64> {
        let _applying = self.applying.lock().unwrap_or_else(PoisonError::into_inner);
        let mut applied = self.applied();
        loop {
            let entries = store.read_log(applied, BATCH)?;
            let Some(last) = entries.last().map(|e| e.seq) else { return Ok(applied) };
            let active = self.active(store)?;
            let mut rebuilt = None;
            for entry in &entries {
                if let Change::Models { generation, .. } = &entry.change {
                    rebuilt = Some(self.change_models(store, entry.seq, *generation)?);
                    break;
                }
                apply(&self.index, &active, entry);
            }
            // After a change of models the log is read again from where the index stands.
            applied = rebuilt.unwrap_or(last);
            self.applied.store(applied, Ordering::Release);
            if rebuilt.is_none() && entries.len() < BATCH {
                return Ok(applied);
            }
        }
    }

    /// A copy of the index's rows and an entry they reflect at least: every entry up to it is
    /// in the copy, and some after it may be (the copy takes each tenant under its own read
    /// lock, while the feed goes on). Replaying the log after that entry on the copy gives the
    /// index exactly: an entry sets a face's row or removes it, so applying it again, or in
    /// order after later ones already were, ends where the log ends. Writers never wait for it.
    pub fn export(&self) -> (u64, Vec<crate::search::index::TenantRows>) {
        let seq = self.applied();
        (seq, self.index.export())
    }

    /// Finishes a committed write: waits until the feed applied its entry (read-your-writes),
    /// then makes it durable, so the caller replies after both. Made durable even when the wait
    /// fails: the write is committed either way. Blocking.
    pub fn finish<T>(&self, store: &dyn Storage, pending: Pending<T>) -> Result<T> {
        let applied = self.wait_for(store, pending.seq());
        let value = pending.durable()?;
        applied.map(|()| value)
    }

    /// Returns once entry `seq` is applied (0: nothing to wait for). Blocking.
    pub fn wait_for(&self, store: &dyn Storage, seq: u64) -> Result<()> {
        if self.applied() >= seq {
            return Ok(());
        }
        let applied = self.catch_up(store)?;
        if applied < seq {
            return Err(Error::bug("a committed change-log entry is missing"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FaceId, Tenant, User};
    use crate::storage::{NewFace, Replace, Store};

    fn new_face(user: crate::domain::UserId, id: u64) -> NewFace {
        crate::storage::test_face(user, id, id as f32 * 0.01)
    }

    #[test]
    fn the_index_follows_the_log_in_order_and_only_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = Tenant::new("t").unwrap();
        let feed = IndexFeed::new(FaceIndex::new(), 0);
        let a = store.create_user(&t, User::unenrolled("a", std::time::SystemTime::now()), None).unwrap();
        let p1 = store.put_face_pending(&t, &new_face(a.id, 1), Replace::Nothing, 5, None, None).unwrap();
        let p2 = store.put_face_pending(&t, &new_face(a.id, 2), Replace::Face(FaceId(1)), 5, None, None).unwrap();
        assert_eq!((p1.seq(), p2.seq()), (1, 2), "one entry per face write, in commit order");
        // Nothing is indexed until the feed applies the log.
        assert!(feed.index.entries(&t).is_empty());
        feed.wait_for(&store, p2.seq()).unwrap();
        assert_eq!(feed.index.entries(&t), vec![(FaceId(2), a.id)]);
        p1.durable().unwrap();
        p2.durable().unwrap();
        let p3 = store.delete_user_pending(&t, a.id, None, None).unwrap();
        assert_eq!(feed.catch_up(&store).unwrap(), 3);
        assert!(feed.index.entries(&t).is_empty());
        p3.durable().unwrap();
        // A user without faces writes no entry.
        let b = store.create_user(&t, User::unenrolled("b", std::time::SystemTime::now()), None).unwrap();
        assert_eq!(store.delete_user_pending(&t, b.id, None, None).unwrap().seq(), 0);
        // Compacted entries are gone; a reader behind them is refused, one at the head is not.
        assert_eq!(store.compact_log(2).unwrap(), 2);
        assert_eq!(store.log_bounds().unwrap(), crate::storage::LogBounds { head: 3, compacted: 2 });
        assert_eq!(store.read_log(2, 10).unwrap().len(), 1);
        assert!(store.read_log(0, 10).is_err());
        assert!(store.read_log(3, 10).unwrap().is_empty());
    }

    #[test]
    fn lists_and_tags_follow_the_log_and_a_replay_over_a_newer_state_ends_where_the_log_ends() {
        use crate::domain::{EntryId, FaceList, ListEntry, ListId, ListKind};
        use crate::storage::{NewListEntry, UserPatch};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = Tenant::new("t").unwrap();
        let entry = |list: ListId, id: u64| {
            let face = new_face(crate::domain::UserId(1), id);
            NewListEntry {
                entry: ListEntry {
                    id: EntryId(id),
                    list_id: list,
                    detection: face.face.detection,
                    quality: face.face.quality,
                    comment: String::new(),
                    added_by: "test".into(),
                    source_face: None,
                    model: String::new(),
                    create_time: std::time::SystemTime::now(),
                },
                embedding: face.embedding,
                other: None,
                thumbnail: face.thumbnail,
            }
        };
        let template = FaceList {
            id: ListId(0),
            name: "blocked".into(),
            kind: ListKind::Block,
            threshold: None,
            entry_count: 0,
            create_time: std::time::SystemTime::now(),
        };
        // Every kind of list and tag entry, with things that come and go.
        let kept = store.create_list(&t, &template).unwrap().durable().unwrap();
        let dropped = store.create_list(&t, &template).unwrap().durable().unwrap();
        store.put_list_entry_pending(&t, &entry(kept.id, 1), None).unwrap().durable().unwrap();
        store.put_list_entry_pending(&t, &entry(kept.id, 2), None).unwrap().durable().unwrap();
        store.put_list_entry_pending(&t, &entry(dropped.id, 3), None).unwrap().durable().unwrap();
        store.delete_list_entry_pending(&t, EntryId(2)).unwrap().durable().unwrap();
        store.delete_list_pending(&t, dropped.id).unwrap().durable().unwrap();
        let mut tagged = User::unenrolled("a", std::time::SystemTime::now());
        tagged.metadata.insert("group".into(), "a".into());
        let a = store.create_user(&t, tagged.clone(), None).unwrap();
        let b = store.create_user(&t, User { external_id: "b".into(), ..tagged }, None).unwrap();
        let patch = UserPatch { metadata: Some([("group".to_owned(), "b".to_owned())].into()), ..Default::default() };
        store.update_user(&t, a.id, None, &patch, None).unwrap();
        store.delete_user(&t, b.id, None).unwrap();
        let head = store.log_bounds().unwrap().head;

        let check = |index: &FaceIndex, what: &str| {
            assert_eq!(index.lists().entries(&t), vec![(EntryId(1), kept.id)], "{what}");
            assert_eq!(index.lists().lists(&t).iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![kept.id], "{what}");
            let filter = [("group".to_owned(), "b".to_owned())].into();
            assert_eq!(index.tags().matching(&t, &filter), [a.id].into(), "{what}");
            assert!(index.tags().get(&t, b.id).is_none(), "{what}");
        };
        // Followed from the start.
        let feed = IndexFeed::new(FaceIndex::new(), 0);
        assert_eq!(feed.catch_up(&store).unwrap(), head);
        check(&feed.index, "followed");
        // Loaded at the end state, then the log replayed from any earlier entry (a snapshot's,
        // or the head a rebuild read before the state moved on).
        for from in 0..head {
            let index = FaceIndex::new();
            crate::app::load_lists_and_tags(&store, &index, "").unwrap();
            IndexFeed::new(index.clone(), from).catch_up(&store).unwrap();
            check(&index, &format!("replayed from {from}"));
        }
    }
}
