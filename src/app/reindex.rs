//! AdminService's flows: a store moves from its model to the configured candidate by re-embedding
//! every stored face from its original (the landmarks found at enrollment align it again; nothing
//! is detected anew), in the background, then cuts over, rolls back or finishes
//! (storage/models.rs has the states). Any node may serve the calls; the re-embedding runs on
//! one node at a time, under a lease in the model state that another node takes over once it
//! lapses (a sled store has one process: a restart takes it over at once).
//!
//! Live traffic first: the reindex keeps at most one face in the inference queue and waits after
//! each so that it takes at most `--reindex-share` of one worker's time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::{App, blocking};
use crate::domain::{Embedding, FaceId, Tenant};
use crate::error::{Error, Reason, Result};
use crate::search::FaceIndex;
use crate::storage::{ModelState, ReindexState, Storage};

/// Faces re-embedded per store write (and per lease renewal).
const BATCH: usize = 16;
/// Longest a batch runs before it is written (the lease is renewed with each write): a third
/// of the lease, at most 15 s.
fn batch_time(lease: Duration) -> Duration {
    (lease / 3).min(Duration::from_secs(15))
}
/// Faces whose old and new nearest neighbours are compared when the re-embedding is done.
const AGREEMENT_SAMPLE: usize = 200;

/// This node's reindex worker.
#[derive(Debug, Default)]
pub(crate) struct Worker {
    running: AtomicBool,
    /// Held by each store write of the worker until it returns (a stop waits for it before it
    /// closes the store: aborting the worker does not stop a blocking write under way).
    writing: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Worker {
    /// Waits for the worker's write under way, if any, and holds further ones back.
    pub(crate) async fn hold_writes(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.writing.clone().lock_owned().await
    }
}

/// Aborts a task when dropped (the lease's heartbeat ends with its worker).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Marks the worker stopped when the job ends, however it ends.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn precondition(reason: Reason, message: &str) -> Error {
    Error::failed_precondition(reason, message)
}

impl App {
    /// The store's model state as it is now (not as this node follows it).
    pub async fn reindex_state(&self) -> Result<ModelState> {
        let store = self.store()?;
        blocking(move || store.model_state()).await
    }

    /// Faces per tenant in this node's index.
    pub fn faces_per_tenant(&self) -> Vec<(Tenant, usize)> {
        self.index.sizes()
    }

    /// The configured embedders.
    pub fn catalog(&self) -> &super::models::ModelCatalog {
        &self.catalog
    }

    /// Changes the state with `change` (given the state now, it returns the next one or the
    /// refusal), announced in the log, and waits until this node follows it.
    async fn change_state(
        &self,
        change: impl Fn(&ModelState) -> Result<ModelState> + Send + 'static,
        clear: impl Fn(&ModelState) -> Option<usize> + Send + 'static,
    ) -> Result<ModelState> {
        let (store, feed) = (self.store()?, self.feed.clone());
        blocking(move || {
            loop {
                let now = store.model_state()?;
                let mut next = change(&now)?;
                next.update_time = Some(SystemTime::now());
                match store.set_model_state(now.generation, &next, true) {
                    Ok((_, written)) => {
                        if let Some(slot) = clear(&now) {
                            store.clear_slot(slot)?;
                        }
                        feed.catch_up(store.as_ref())?;
                        return Ok(written);
                    }
                    // Another node (or this node's worker) changed it meanwhile: decide again.
                    Err(e) if crate::storage::models::is_models_changed(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await
    }

    /// StartReindex: NO_CANDIDATE_MODEL without a candidate (or when it is the active model
    /// already), REINDEX_RUNNING while a reindex is not finished.
    pub async fn start_reindex(&self) -> Result<ModelState> {
        let candidate = self
            .catalog
            .candidate()
            .ok_or_else(|| precondition(Reason::NoCandidateModel, "no --candidate-embedder-model is configured"))?
            .record
            .clone();
        // The target slot is emptied first (a finish cut short by a crash may have left some).
        let (store, target) = (self.store()?, candidate.clone());
        let total = blocking(move || {
            let now = store.model_state()?;
            check_startable(&now, &target)?;
            store.clear_slot(1 - now.active)?;
            store.count_faces()
        })
        .await?;
        let state = self
            .change_state(
                move |now| {
                    check_startable(now, &candidate)?;
                    let to = 1 - now.active;
                    let mut next = now.clone();
                    next.slots[to] = Some(candidate.clone());
                    next.state = ReindexState::Running;
                    next.from_slot = now.active;
                    next.to_slot = to;
                    next.total = total;
                    next.done = 0;
                    next.failed = 0;
                    next.top1_agreement = 0.0;
                    next.start_time = Some(SystemTime::now());
                    next.worker = String::new();
                    next.lease_until = None;
                    Ok(next)
                },
                |_| None,
            )
            .await?;
        tracing::info!(to = %state.slots[state.to_slot].as_ref().map_or("", |e| e.id.as_str()), total, "reindex started");
        Ok(state)
    }

    /// CutoverReindex: REINDEX_NOT_READY unless the re-embedding is done (READY, or ROLLED_BACK
    /// to cut over again) and every stored face has the candidate's embedding.
    pub async fn cutover_reindex(&self) -> Result<ModelState> {
        let catalog = self.catalog.clone();
        let store = self.store()?;
        let (complete, stale_entries) = blocking(move || {
            let now = store.model_state()?;
            if !matches!(now.state, ReindexState::Ready | ReindexState::RolledBack) {
                return Ok((true, 0)); // refused below, as not ready
            }
            let complete = store.faces_without_embedding(now.to_slot, None, 1)?.is_empty();
            // A reindex does not re-embed face lists' entries: after a cutover an entry of the
            // old model would match nothing, a blocklist would let its people in. Refused until
            // they are gone (README, "Face lists").
            let target = now.slots[now.to_slot].as_ref().map(|e| e.id.clone()).unwrap_or_default();
            let stale = store.all_list_entries()?.iter().filter(|e| e.embedding_of(&target).is_none()).count();
            Ok((complete, stale))
        })
        .await?;
        if !complete {
            return Err(precondition(Reason::ReindexNotReady, "some stored faces lack the candidate's embedding"));
        }
        if stale_entries > 0 {
            return Err(precondition(
                Reason::ReindexNotReady,
                "face list entries added before the reindex started have no embedding by the candidate (a \
                 reindex does not re-embed them): delete them (DeleteListEntry) and add them again (an entry \
                 added while the reindex runs is embedded by both models), then cut over",
            )
            .with_meta("list_entries", stale_entries));
        }
        self.change_state(
            move |now| {
                // ROLLED_BACK comes only from CUT_OVER, which comes only from READY: the target
                // slot was complete, and writes kept it so.
                if !matches!(now.state, ReindexState::Ready | ReindexState::RolledBack) {
                    return Err(precondition(Reason::ReindexNotReady, "the reindex is not ready to cut over"));
                }
                let mut next = now.clone();
                next.active = now.to_slot;
                next.state = ReindexState::CutOver;
                catalog.check(&next)?;
                Ok(next)
            },
            |_| None,
        )
        .await
    }

    /// RollbackReindex: back to the model of before while its embeddings exist (CUT_OVER);
    /// REINDEX_NOT_CUT_OVER otherwise (a candidate not cut over is abandoned by FinishReindex).
    pub async fn rollback_reindex(&self) -> Result<ModelState> {
        self.change_state(
            |now| {
                if now.state != ReindexState::CutOver {
                    return Err(precondition(Reason::ReindexNotCutOver, "the reindex is not cut over"));
                }
                let mut next = now.clone();
                next.active = now.from_slot;
                next.state = ReindexState::RolledBack;
                Ok(next)
            },
            |_| None,
        )
        .await
    }

    /// FinishReindex: drops the embeddings of the model not active: the old one's after a
    /// cutover; the candidate's after a rollback, or of a reindex abandoned before its cutover
    /// (RUNNING, READY, FAILED: the worker stops). REINDEX_NOT_CUT_OVER when there is no
    /// reindex to finish.
    pub async fn finish_reindex(&self) -> Result<ModelState> {
        self.change_state(
            |now| {
                match now.state {
                    ReindexState::CutOver
                    | ReindexState::RolledBack
                    | ReindexState::Failed
                    | ReindexState::Ready
                    | ReindexState::Running => {}
                    ReindexState::None | ReindexState::Finished => {
                        return Err(precondition(Reason::ReindexNotCutOver, "there is no reindex to finish"));
                    }
                }
                let mut next = now.clone();
                next.slots[1 - now.active] = None;
                next.state = ReindexState::Finished;
                next.worker = String::new();
                next.lease_until = None;
                Ok(next)
            },
            // The dropped slot is emptied once the state no longer names it.
            |now| Some(1 - now.active),
        )
        .await
    }

    /// Every `period`: runs the re-embedding when a reindex runs and no live worker holds it
    /// (on PostgreSQL, one whose lease lapsed; on sled, any: one process holds the store, so a
    /// lease left is a crashed run's). Until aborted (a stop), which stops the worker too.
    pub async fn follow_reindex_periodically(self, period: Duration) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.reindex_state().await {
                Ok(state) if state.state == ReindexState::Running => {
                    if self.reindex.running.swap(true, Ordering::AcqRel) {
                        continue;
                    }
                    let reindex = self.reindex.clone();
                    let _running = Running(&reindex.running);
                    if let Err(error) = self.run_worker().await {
                        tracing::warn!(%error, "the reindex worker stopped");
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "reading the reindex state failed"),
            }
        }
    }

    /// The worker: claims the job, re-embeds until no face lacks the candidate's embedding,
    /// then measures the agreement of the two models and marks the job READY (or FAILED).
    async fn run_worker(&self) -> Result<()> {
        let store = self.store()?;
        let lease = self.settings.reindex_lease;
        let me = format!("{}-{:08x}", std::process::id(), crate::storage::random_id()? as u32);
        // Claim.
        let shared = store.is_shared();
        let claimed = {
            let me = me.clone();
            self.change_state(
                move |now| {
                    let live = now.lease_until.is_some_and(|t| t > SystemTime::now());
                    if now.state != ReindexState::Running || (shared && live && !now.worker.is_empty()) {
                        return Err(precondition(Reason::ReindexRunning, "another node runs the reindex"));
                    }
                    let mut next = now.clone();
                    next.worker = me.clone();
                    next.lease_until = Some(SystemTime::now() + lease);
                    // Each run counts the faces it could not re-embed (a resumed run tries them
                    // again).
                    next.failed = 0;
                    Ok(next)
                },
                |_| None,
            )
            .await
        };
        let Ok(mut state) = claimed else { return Ok(()) };
        // The lease is renewed every third of it, whatever the worker is doing (a slow face, the
        // final comparison of a large store): it lapses only when this node stops.
        let target = state.slots[state.to_slot].clone().ok_or_else(|| Error::bug("a reindex without a target"))?;
        let _heartbeat = AbortOnDrop(tokio::spawn(self.clone().renew_lease(target.id.clone(), me.clone(), lease)));
        let which = self.catalog.index_of(&target).ok_or_else(|| Error::Unavailable {
            message: format!("the reindex's target {target} is not configured on this node"),
        })?;
        tracing::info!(worker = %me, to = %target.id, "reindex worker running");
        let share = f64::from(self.settings.reindex_share);
        let mut failed_here: std::collections::HashSet<(Tenant, FaceId)> = std::collections::HashSet::new();
        let mut cursor: Option<(Tenant, FaceId)> = None;
        let mut found_new = false;
        loop {
            let (s, slot, after) = (store.clone(), state.to_slot, cursor.clone());
            let batch = blocking(move || s.faces_without_embedding(slot, after, BATCH)).await?;
            if batch.is_empty() {
                if cursor.is_none() || !found_new {
                    break; // a whole pass found nothing new: done
                }
                (cursor, found_new) = (None, false);
                continue;
            }
            let mut items: Vec<(Tenant, FaceId, Embedding)> = Vec::with_capacity(batch.len());
            let mut failed = 0;
            let batch_started = Instant::now();
            for (tenant, face) in batch {
                // A batch is written (and the lease renewed) at least every batch_time, whatever
                // the share and the images: the faces not reached are found by the next read.
                if batch_started.elapsed() > batch_time(lease) {
                    break;
                }
                cursor = Some((tenant.clone(), face));
                if failed_here.contains(&(tenant.clone(), face)) {
                    continue;
                }
                found_new = true;
                let started = Instant::now();
                match self.reembed_one(&store, &tenant, face, which).await {
                    Ok(Some(embedding)) => items.push((tenant, face, embedding)),
                    Ok(None) => {} // deleted meanwhile
                    // What the original itself makes impossible (undecodable, missing) fails the
                    // face; anything else (the store or the workers unavailable) stops this run,
                    // and the next one resumes.
                    Err(error @ (Error::InvalidArgument { .. } | Error::Internal { .. })) => {
                        tracing::warn!(%error, face = %face, "a face could not be re-embedded");
                        failed += 1;
                        failed_here.insert((tenant, face));
                    }
                    Err(error) => return Err(error),
                }
                // Keep to the share: wait (1/share - 1) times what the face took.
                let pause = started.elapsed().mul_f64((1.0 / share - 1.0).max(0.0));
                tokio::time::sleep(pause).await;
            }
            let (s, model, worker) = (store.clone(), target.id.clone(), me.clone());
            let lease_until = SystemTime::now() + lease;
            let held = self.reindex.hold_writes().await;
            match blocking(move || {
                let _held = held;
                s.put_reindexed(&model, &worker, &items, failed, lease_until)
            })
            .await
            {
                Ok(next) => state = next,
                Err(e) if crate::storage::models::is_models_changed(&e) => {
                    tracing::info!("the reindex was changed by another call or node: this worker stops");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        let agreement = self.top1_agreement(&store, &state).await?;
        // READY only when no stored face lacks the candidate's embedding (whatever the counts
        // say): faces that failed here make it FAILED.
        let (s, slot) = (store.clone(), state.to_slot);
        let missing = blocking(move || s.faces_without_embedding(slot, None, 1)).await?;
        let me_too = me.clone();
        let done = self
            .change_state(
                move |now| {
                    if now.state != ReindexState::Running || now.worker != me_too {
                        return Err(precondition(Reason::ReindexNotReady, "the reindex is no longer this worker's"));
                    }
                    let mut next = now.clone();
                    next.state = if missing.is_empty() { ReindexState::Ready } else { ReindexState::Failed };
                    next.top1_agreement = agreement;
                    next.worker = String::new();
                    next.lease_until = None;
                    Ok(next)
                },
                |_| None,
            )
            .await?;
        tracing::info!(done = done.done, failed = done.failed, top1_agreement = agreement, state = ?done.state, "reindex re-embedding finished");
        Ok(())
    }

    /// Renews `worker`'s lease of the reindex to `model` every third of `lease` until aborted,
    /// or until the job is no longer this worker's.
    async fn renew_lease(self, model: String, worker: String, lease: Duration) {
        loop {
            tokio::time::sleep(lease / 3).await;
            let Ok(store) = self.store() else { continue };
            let model = model.clone();
            let (worker, until) = (worker.clone(), SystemTime::now() + lease);
            let held = self.reindex.hold_writes().await;
            let renewed = blocking(move || {
                let _held = held;
                store.put_reindexed(&model, &worker, &[], 0, until)
            })
            .await;
            match renewed {
                Ok(_) => {}
                Err(e) if crate::storage::models::is_models_changed(&e) => return,
                Err(error) => tracing::warn!(%error, "renewing the reindex lease failed"),
            }
        }
    }

    /// The candidate's embedding of one stored face from its original; `None` when the face
    /// is gone.
    async fn reembed_one(
        &self,
        store: &std::sync::Arc<dyn Storage>,
        tenant: &Tenant,
        face: FaceId,
        which: usize,
    ) -> Result<Option<Embedding>> {
        let (s, t) = (store.clone(), tenant.clone());
        let found = blocking(move || {
            let found = s.face_with_image(&t, face, false)?;
            // A face whose original is missing cannot be re-embedded: a failure, not a deletion.
            if found.is_none() && s.get_face(&t, face)?.is_some() {
                return Err(Error::bug("a stored face has no original"));
            }
            Ok(found)
        })
        .await?;
        let Some((record, original)) = found else { return Ok(None) };
        let landmarks = record.detection.landmarks;
        self.pool.reembed(bytes::Bytes::from(original), landmarks, which).await.map(Some)
    }

    /// The share of sampled faces whose nearest other face belongs to the same user in the old
    /// index (this node's, the active model) and in the new one (built from the candidate's
    /// embeddings): how far the two models agree on who is who.
    async fn top1_agreement(&self, store: &std::sync::Arc<dyn Storage>, state: &ModelState) -> Result<f32> {
        let (s, slot, old_index) = (store.clone(), state.to_slot, self.index.clone());
        let active = state.active_embedder()?.id.clone();
        blocking(move || {
            let new_index = FaceIndex::new();
            let mut sample = Vec::new();
            let mut seen = 0usize;
            let mut rng = crate::storage::random_id()?;
            s.for_each_slot_embedding(slot, &mut |e| {
                new_index.insert(&e.tenant, e.face_id, e.user_id, &e.embedding);
                // Reservoir sampling (xorshift).
                seen += 1;
                if sample.len() < AGREEMENT_SAMPLE {
                    sample.push(e);
                } else {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let j = (rng % seen as u64) as usize;
                    if j < AGREEMENT_SAMPLE {
                        sample[j] = e;
                    }
                }
                Ok(())
            })?;
            let nearest = |index: &FaceIndex, tenant: &Tenant, face: FaceId, query: &Embedding| {
                index.search(tenant, query, 2, -1.0, None).into_iter().find(|h| h.face_id != face).map(|h| h.user_id)
            };
            let (mut agreed, mut compared) = (0usize, 0usize);
            for e in &sample {
                let Some(old) = s.face_embedding(&e.tenant, e.face_id, &active)? else { continue };
                compared += 1;
                if nearest(&old_index, &e.tenant, e.face_id, &old)
                    == nearest(&new_index, &e.tenant, e.face_id, &e.embedding)
                {
                    agreed += 1;
                }
            }
            Ok(if compared == 0 { 1.0 } else { agreed as f32 / compared as f32 })
        })
        .await
    }
}

/// Whether a reindex to `candidate` may start from `now`.
fn check_startable(now: &ModelState, candidate: &crate::storage::EmbedderRecord) -> Result<()> {
    if !matches!(now.state, ReindexState::None | ReindexState::Finished) {
        return Err(precondition(Reason::ReindexRunning, "a reindex is not finished (FinishReindex ends one)"));
    }
    if now.active_embedder()? == candidate {
        return Err(precondition(Reason::NoCandidateModel, "the candidate embedder is the active one already"));
    }
    Ok(())
}
