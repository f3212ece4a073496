//! The embedding models of a store (`ModelState`): which model's embeddings each of the two
//! slots holds, which slot is active, and the reindex that moves the store from one model to
//! the other. Both backends keep it as one `ModelStateRecord` and change it only by
//! compare-and-set on its generation, so two nodes never both move it.
//!
//! The lifecycle (API-2.md, AdminService): `None`/`Finished` -> StartReindex -> `Running` (the
//! other slot fills with the candidate's embeddings; every face write meanwhile stores both) ->
//! `Ready` (or `Failed`) -> CutoverReindex -> `CutOver` (the candidate's slot is active) ->
//! RollbackReindex -> `RolledBack` (the old slot active again) -> FinishReindex -> `Finished`
//! (the slot not active is emptied; writes store one embedding again).

use prost::Message;

use super::EmbedderRecord;
use super::records::{from_nanos, pb, to_nanos};
use crate::domain::Embedding;
use crate::error::{Error, Reason, Result};

/// The meta key of the record.
pub(crate) const MODELS_KEY: &[u8] = b"models";

/// Where a reindex stands (facevault.v1.ReindexState, same numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReindexState {
    #[default]
    None,
    Running,
    Ready,
    CutOver,
    RolledBack,
    Finished,
    Failed,
}

impl ReindexState {
    pub fn as_i32(self) -> i32 {
        match self {
            ReindexState::None => 0,
            ReindexState::Running => 1,
            ReindexState::Ready => 2,
            ReindexState::CutOver => 3,
            ReindexState::RolledBack => 4,
            ReindexState::Finished => 5,
            ReindexState::Failed => 6,
        }
    }

    pub fn from_i32(value: i32) -> Self {
        match value {
            1 => ReindexState::Running,
            2 => ReindexState::Ready,
            3 => ReindexState::CutOver,
            4 => ReindexState::RolledBack,
            5 => ReindexState::Finished,
            6 => ReindexState::Failed,
            _ => ReindexState::None,
        }
    }

    /// Whether both slots hold embeddings (every face write stores both).
    pub fn keeps_both(self) -> bool {
        matches!(
            self,
            ReindexState::Running
                | ReindexState::Ready
                | ReindexState::CutOver
                | ReindexState::RolledBack
                | ReindexState::Failed
        )
    }
}

/// The models of a store and its reindex.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelState {
    pub slots: [Option<EmbedderRecord>; 2],
    pub active: usize,
    pub state: ReindexState,
    pub from_slot: usize,
    pub to_slot: usize,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    pub top1_agreement: f32,
    pub start_time: Option<std::time::SystemTime>,
    pub update_time: Option<std::time::SystemTime>,
    /// 0: never written (derived from the store's single embedder).
    pub generation: u64,
    pub worker: String,
    pub lease_until: Option<std::time::SystemTime>,
}

/// An embedding by a named model (the second one a face write carries during a reindex).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEmbedding {
    pub model: String,
    pub embedding: Embedding,
}

fn embedder_to(e: &Option<EmbedderRecord>) -> Option<pb::EmbedderRecord> {
    e.as_ref().map(|e| pb::EmbedderRecord { id: e.id.clone(), sha256: e.sha256.clone() })
}

fn embedder_from(e: Option<pb::EmbedderRecord>) -> Option<EmbedderRecord> {
    e.map(|e| EmbedderRecord { id: e.id, sha256: e.sha256 })
}

fn time_from(ns: i64) -> Option<std::time::SystemTime> {
    (ns > 0).then(|| from_nanos(ns))
}

impl ModelState {
    /// A store with one model in slot 0 (new, or made before models were versioned).
    pub fn single(embedder: EmbedderRecord) -> Self {
        ModelState { slots: [Some(embedder), None], ..ModelState::default() }
    }

    /// The active slot's model, or a nameless one while none is recorded (`unrecorded`).
    pub fn active_or_unnamed(&self) -> EmbedderRecord {
        self.slots[self.active].clone().unwrap_or(EmbedderRecord { id: String::new(), sha256: String::new() })
    }

    /// The active slot's model.
    pub fn active_embedder(&self) -> Result<&EmbedderRecord> {
        self.slots[self.active].as_ref().ok_or_else(|| Error::bug("the active embedding slot has no model"))
    }

    /// The slots whose embeddings a face write must store, with their models.
    pub fn written_slots(&self) -> Vec<(usize, &EmbedderRecord)> {
        (0..2)
            .filter(|&slot| slot == self.active || self.state.keeps_both())
            .filter_map(|slot| self.slots[slot].as_ref().map(|e| (slot, e)))
            .collect()
    }

    /// Whether no model is recorded (a store the server has not opened yet, as in the storage
    /// tests): slot 0 then takes any model's embeddings.
    pub fn unrecorded(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// The slot holding `model`'s embeddings, if one is written.
    pub fn slot_of(&self, model: &str) -> Option<usize> {
        if self.unrecorded() {
            return Some(0);
        }
        self.written_slots().into_iter().find(|(_, e)| e.id == model).map(|(slot, _)| slot)
    }

    /// The model of the other slot while both are kept.
    pub fn other_embedder(&self) -> Option<&EmbedderRecord> {
        if !self.state.keeps_both() {
            return None;
        }
        self.slots[1 - self.active].as_ref()
    }

    /// For a face write carrying `primary` (by `primary_model`) and maybe `other`: the sealed-to-be
    /// value of each written slot, by slot. Refuses (ABORTED MODELS_CHANGED, which the app retries
    /// with the models of now) a write that lacks a model the store keeps.
    pub fn place<'a>(
        &self,
        primary_model: &str,
        primary: &'a Embedding,
        other: Option<&'a ModelEmbedding>,
    ) -> Result<Vec<(usize, String, &'a Embedding)>> {
        if self.unrecorded() {
            return Ok(vec![(0, primary_model.to_owned(), primary)]);
        }
        let mut out = Vec::with_capacity(2);
        for (slot, embedder) in self.written_slots() {
            if embedder.id == primary_model {
                out.push((slot, embedder.id.clone(), primary));
            } else if let Some(o) = other.filter(|o| o.model == embedder.id) {
                out.push((slot, embedder.id.clone(), &o.embedding));
            } else {
                return Err(models_changed());
            }
        }
        if !out.iter().any(|(slot, ..)| *slot == self.active) {
            return Err(models_changed());
        }
        Ok(out)
    }

    pub fn to_record(&self) -> pb::ModelStateRecord {
        pb::ModelStateRecord {
            slot0: embedder_to(&self.slots[0]),
            slot1: embedder_to(&self.slots[1]),
            active: self.active as u32,
            state: self.state.as_i32(),
            from_slot: self.from_slot as u32,
            to_slot: self.to_slot as u32,
            total: self.total as i64,
            done: self.done as i64,
            failed: self.failed as i64,
            top1_agreement: self.top1_agreement,
            start_time_ns: self.start_time.map_or(0, to_nanos),
            update_time_ns: self.update_time.map_or(0, to_nanos),
            generation: self.generation,
            worker: self.worker.clone(),
            lease_until_ns: self.lease_until.map_or(0, to_nanos),
        }
    }

    pub fn from_record(r: pb::ModelStateRecord) -> Self {
        let slot = |v: u32| usize::from(v == 1);
        ModelState {
            slots: [embedder_from(r.slot0), embedder_from(r.slot1)],
            active: slot(r.active),
            state: ReindexState::from_i32(r.state),
            from_slot: slot(r.from_slot),
            to_slot: slot(r.to_slot),
            total: r.total.max(0) as u64,
            done: r.done.max(0) as u64,
            failed: r.failed.max(0) as u64,
            top1_agreement: r.top1_agreement,
            start_time: time_from(r.start_time_ns),
            update_time: time_from(r.update_time_ns),
            generation: r.generation,
            worker: r.worker,
            lease_until: time_from(r.lease_until_ns),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_record().encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        pb::ModelStateRecord::decode(bytes)
            .map(ModelState::from_record)
            .map_err(|e| Error::internal("decoding the model state", e))
    }
}

/// A face write raced a change of the store's models (a reindex started or finished between its
/// inference and its commit): nothing was written; the app embeds again and retries.
pub fn models_changed() -> Error {
    Error::Aborted {
        reason: Reason::ModelsChanged,
        message: "the store's embedding models changed during the write; retry".into(),
        metadata: Vec::new(),
    }
}

/// Whether `error` is [`models_changed`].
pub fn is_models_changed(error: &Error) -> bool {
    error.reason() == Reason::ModelsChanged
}

/// The storage side of a reindex, run on each backend (sled: `reindex.rs`'s test; PostgreSQL:
/// `postgres/tests.rs`): dual writes, the worker's fence, the slot cleared past one batch and
/// left alone while a reindex writes it again.
#[cfg(test)]
pub(crate) fn exercise_reindex_storage(store: &dyn super::Storage) {
    use super::{NewFace, Replace};
    use crate::domain::{FaceId, Tenant, User};

    let (a, b) = (
        EmbedderRecord { id: "w600k_mbf".into(), sha256: "a".into() },
        EmbedderRecord { id: "next".into(), sha256: "b".into() },
    );
    store.check_embedder(&a).unwrap();
    let t = Tenant::new("t").unwrap();
    let faces = 1100u64;
    let mut ids = Vec::new();
    for n in 0..faces / 5 {
        let user =
            store.create_user(&t, User::unenrolled(format!("u{n}"), std::time::SystemTime::now()), None).unwrap();
        for i in 0..5 {
            let id = n * 5 + i + 1;
            let new = super::test_face(user.id, id, id as f32 * 0.001);
            store.put_face_pending(&t, &new, Replace::Nothing, 5, None, None).unwrap().durable().unwrap();
            ids.push((user.id, FaceId(id)));
        }
    }
    let now = store.model_state().unwrap();
    let mut running = now.clone();
    running.slots[1] = Some(b.clone());
    running.state = ReindexState::Running;
    running.to_slot = 1;
    running.worker = "w".into();
    let (seq, running) = store.set_model_state(now.generation, &running, true).unwrap();
    assert!(seq > 0, "announced in the log");
    assert!(is_models_changed(&store.set_model_state(now.generation, &running, true).unwrap_err()), "compare-and-set");
    // A write now needs both models.
    let (user, _) = ids[0];
    let mut lone: NewFace = super::test_face(user, 9_000, 0.5);
    let error = store.put_face_pending(&t, &lone, Replace::Face(ids[0].1), 5, None, None).unwrap_err();
    assert!(is_models_changed(&error), "{error}");
    lone.other = Some(ModelEmbedding { model: "next".into(), embedding: lone.embedding.clone() });
    store.put_face_pending(&t, &lone, Replace::Face(ids[0].1), 5, None, None).unwrap().durable().unwrap();
    ids[0].1 = FaceId(9_000);
    // The worker's writes, fenced by its id.
    let one = Embedding::from_raw(vec![1.0; crate::domain::EMBEDDING_DIM]).unwrap();
    let items: Vec<_> = ids[1..].iter().map(|(_, f)| (t.clone(), *f, one.clone())).collect();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    assert!(is_models_changed(&store.put_reindexed("next", "intruder", &items[..1], 0, later).unwrap_err()));
    for chunk in items.chunks(300) {
        store.put_reindexed("next", "w", chunk, 0, later).unwrap();
    }
    assert!(store.faces_without_embedding(1, None, 10).unwrap().is_empty(), "every face has both");
    assert_eq!(store.model_state().unwrap().done, faces - 1);
    // Cleared while a reindex writes the slot: left alone.
    store.clear_slot(1).unwrap();
    assert!(store.faces_without_embedding(1, None, 10).unwrap().is_empty(), "a slot in use is not cleared");
    // Finished on the old model: the slot, more than one batch of it, is emptied.
    let mut finished = store.model_state().unwrap();
    finished.slots[1] = None;
    finished.state = ReindexState::Finished;
    store.set_model_state(running.generation, &finished, true).unwrap();
    store.clear_slot(1).unwrap();
    assert_eq!(store.faces_without_embedding(1, None, 2 * faces as usize).unwrap().len(), faces as usize);
    assert!(store.faces_without_embedding(0, None, 10).unwrap().is_empty(), "the active slot is whole");
    assert!(store.verify(5).unwrap().problems.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str) -> EmbedderRecord {
        EmbedderRecord { id: id.into(), sha256: format!("{id}-sha") }
    }

    #[test]
    fn the_record_round_trips_and_writes_follow_the_state() {
        let mut state = ModelState::single(e("a"));
        assert_eq!(state.written_slots().len(), 1);
        state.slots[1] = Some(e("b"));
        state.state = ReindexState::Running;
        state.to_slot = 1;
        state.generation = 3;
        state.start_time = Some(std::time::SystemTime::now());
        let back = ModelState::decode(&state.encode()).unwrap();
        assert_eq!(back.slots, state.slots);
        assert_eq!((back.state, back.to_slot, back.generation), (ReindexState::Running, 1, 3));
        let one = Embedding::from_raw(vec![1.0; crate::domain::EMBEDDING_DIM]).unwrap();
        // Running: both slots are written; a write with one model only is refused.
        assert!(is_models_changed(&state.place("a", &one, None).unwrap_err()));
        let other = ModelEmbedding { model: "b".into(), embedding: one.clone() };
        let placed = state.place("a", &one, Some(&other)).unwrap();
        assert_eq!(placed.iter().map(|(s, m, _)| (*s, m.as_str())).collect::<Vec<_>>(), vec![(0, "a"), (1, "b")]);
        // Finished on b: only b's slot, and a write by a alone is refused.
        state.state = ReindexState::Finished;
        state.active = 1;
        assert_eq!(state.written_slots().len(), 1);
        assert!(state.place("a", &one, None).is_err());
        assert_eq!(state.place("b", &one, None).unwrap().len(), 1);
    }
}
