//! `App`: the cheap-to-clone facade the gRPC layer calls. It combines the store, the search
//! index and the inference pool, owns start-up (models, store, index rebuild) and the settings
//! of every flow. Nothing here knows about gRPC.

pub mod compute;
mod detect;
mod enroll;
mod feed;
mod identify;
mod import;
pub mod keys;
mod lists;
pub mod models;
mod recovery;
mod redact;
mod reindex;
mod requests;
pub mod snapshot;
mod tokens;
mod users;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::domain::{Tenant, User};
use crate::error::{Error, Result};
use crate::inference::{InferencePool, Models};
use crate::search::FaceIndex;
use crate::search::similarity::Thresholds;
use crate::storage::{EmbedderRecord, Storage};
use compute::ComputePool;

pub use enroll::{EnrollOutcome, FaceUpload, ImageKind, SELF_MISMATCH, StoredImage, UpdateCredential};
pub use feed::IndexFeed;
pub use identify::{FaceResult, SearchOutcome, SearchQuery, SearchRequest, VerifyOutcome};
pub use import::validate_item_id;
pub use keys::{CallerLimits, KeyRing};
pub use lists::{AddedEntry, EntrySource, NewList};
pub use requests::{Idempotency, Written, validate_request_id};
pub use tokens::TokenHolder;
pub use users::{NewUser, UserRef, UserUpdate, parse_etag};

/// Settings of the flows, resolved from the config once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_faces_per_user: usize,
    /// `--max-lists-per-tenant`, `--max-list-entries`.
    pub max_lists_per_tenant: usize,
    pub max_list_entries: usize,
    pub min_face_size: f32,
    pub token_ttl: Duration,
    /// `--request-id-ttl`.
    pub request_id_ttl: Duration,
    /// `--import-max-in-flight`, resolved (0: two per inference worker).
    pub import_max_in_flight: usize,
    /// How long an ImportFaces stream may wait for its next item (`--request-timeout`).
    pub import_idle: Duration,
    /// UpdateFace calls one re-enrollment token admits over its whole life.
    pub token_max_attempts: u32,
    pub thumbnail_size: u32,
    /// `--reindex-share`.
    pub reindex_share: f32,
    /// `--reindex-lease`.
    pub reindex_lease: Duration,
    /// Per-tenant limits on users and faces (keys file).
    pub quotas: std::collections::HashMap<crate::domain::Tenant, crate::domain::TenantQuota>,
}

/// Application state shared by every request.
#[derive(Debug, Clone)]
pub struct App {
    pool: InferencePool,
    /// Threads for vector scans: never run on the async runtime.
    compute: ComputePool,
    /// The storage backend: every read and write of records (reopened after a fault).
    store: Arc<recovery::StoreSlot>,
    /// Opens the store again after a fault.
    opener: Arc<recovery::StoreOpener>,
    index: FaceIndex,
    /// Applies the store's change log to `index`: the only writer of the index.
    feed: IndexFeed,
    /// Index snapshots: how this start's index was made, and the ones the follower takes.
    snapshots: snapshot::Snapshots,
    settings: Arc<Settings>,
    /// Serialises each tenant's face writes (tenants write in parallel): the duplicate check,
    /// the limits and the store transaction happen as one step.
    writes: Arc<TenantLocks>,
    /// The configured embedders and their thresholds.
    catalog: Arc<models::ModelCatalog>,
    /// This node's reindex worker, while it runs one (reindex.rs).
    reindex: Arc<reindex::Worker>,
}

/// The configured embedders: `--embedder-*` and the candidate's flags, with the sha256 of the
/// model bytes read.
fn model_catalog(config: &Config, models: &Models) -> models::ModelCatalog {
    let mut catalog = vec![models::ConfiguredModel {
        record: EmbedderRecord { id: config.embedder_id.clone(), sha256: models.embedder.sha256().to_owned() },
        thresholds: Thresholds { matched: config.match_threshold, possible: config.possible_match_threshold },
    }];
    if let (Some(bytes), Some(matched), Some(possible)) =
        (&models.candidate, config.candidate_match_threshold, config.candidate_possible_match_threshold)
    {
        catalog.push(models::ConfiguredModel {
            record: EmbedderRecord { id: config.candidate_embedder_id.clone(), sha256: bytes.sha256().to_owned() },
            thresholds: Thresholds { matched, possible },
        });
    }
    models::ModelCatalog { models: catalog }
}

/// One write lock per tenant: a tenant's invariants (face limit, quotas, duplicates, the index
/// equal to the store) need its writes in order; other tenants' writes do not wait on them.
/// Tenants come from the keys file, so the map stays small.
#[derive(Debug, Default)]
pub(crate) struct TenantLocks(std::sync::Mutex<std::collections::HashMap<Tenant, Arc<tokio::sync::Mutex<()>>>>);

impl TenantLocks {
    /// Waits for every tenant's write lock (a stop: no face write, and so no image file write
    /// or removal, is in flight while the guards are held).
    pub(crate) async fn lock_all(&self) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let locks: Vec<_> =
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect();
        let mut guards = Vec::with_capacity(locks.len());
        for lock in locks {
            guards.push(lock.lock_owned().await);
        }
        guards
    }

    /// Waits for `tenant`'s write lock; the guard may move into a blocking task.
    pub(crate) async fn lock(&self, tenant: &Tenant) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            locks.entry(tenant.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// A tenant's write lock: this process's, then the store's across processes (PostgreSQL).
/// Fields drop in order: the store's lock goes first.
#[derive(Debug)]
pub(crate) struct WriteLock {
    _shared: crate::storage::TenantGuard,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

/// Runs blocking work (sled, hashing) off the async threads, inside the caller's span.
pub async fn blocking<T, F>(work: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| crate::storage::postgres::may_block(work)))
        .await
        .map_err(|e| Error::internal("joining blocking work", e))?
}

/// The search index of every embedding in the store, and the change-log entry it reflects. Call
/// it while nothing writes (start-up, `facevault verify`).
pub fn rebuild_index(store: &dyn Storage, exact_max_faces: usize) -> Result<(FaceIndex, u64)> {
    rebuild_index_of(store, exact_max_faces).map(|(index, head, _)| (index, head))
}

/// [`rebuild_index`], with the model whose embeddings the index holds (the store's active one).
pub fn rebuild_index_of(store: &dyn Storage, exact_max_faces: usize) -> Result<(FaceIndex, u64, EmbedderRecord)> {
    let index = FaceIndex::with_exact_max_faces(exact_max_faces);
    let (head, model) = store.for_each_embedding(&mut |e| {
        index.insert(&e.tenant, e.face_id, e.user_id, &e.embedding);
        Ok(())
    })?;
    index.shrink_to_fit();
    load_lists_and_tags(store, &index, &model.id)?;
    Ok((index, head, model))
}

/// Loads every face list, list entry of `model` and user's metadata into `index`, which is
/// then brought to the log's end by the feed from an entry at or before the state read here
/// (the index's snapshot, or the head a rebuild read first): the feed's entries set or remove
/// each of them, so applying them again over a newer state ends where the log ends.
pub(crate) fn load_lists_and_tags(store: &dyn Storage, index: &FaceIndex, model: &str) -> Result<()> {
    for (tenant, list) in store.all_lists()? {
        let info = crate::search::ListInfo { name: list.name, kind: list.kind, threshold: list.threshold };
        index.lists().set_list(&tenant, list.id, info);
    }
    let mut other_model = 0usize;
    for entry in store.all_list_entries()? {
        match entry.embedding_of(model) {
            Some(embedding) => index.lists().insert(&entry.tenant, entry.entry_id, entry.list_id, embedding),
            None => other_model += 1,
        }
    }
    if other_model > 0 {
        // A reindex does not re-embed list entries (README, "Face lists").
        tracing::warn!(
            entries = other_model,
            model,
            "list entries embedded by another model match nothing: add them again"
        );
    }
    for (tenant, user, metadata) in store.all_user_tags()? {
        index.tags().set(&tenant, user, metadata);
    }
    Ok(())
}

impl App {
    /// Opens the store (with the encryption key, if configured), rebuilds the search index from
    /// it, and loads, verifies and warms up the models. Refuses a store built with another
    /// embedder. Call it before the server reports SERVING.
    pub async fn open(
        config: &Config,
        quotas: std::collections::HashMap<crate::domain::Tenant, crate::domain::TenantQuota>,
    ) -> Result<Self> {
        // The model files are read and hashed once, first: the store checks it was built with
        // this embedder before its index is rebuilt, and the workers load these same bytes.
        let inference = config.inference();
        let models = {
            let inference = inference.clone();
            blocking(move || Models::read(&inference)).await?
        };
        let catalog = model_catalog(config, &models);
        let data_dir = config.data_dir.clone();
        let backend = recovery::Backend::from_config(config);
        let key_file = config.encryption_key_file.clone();
        let exact_max_faces = config.search_exact_max_faces;
        // A node's index snapshot would be its own while the log and its compaction are shared:
        // with PostgreSQL, every start rebuilds from one snapshot of the database.
        let snapshot_every = if config.postgres_url.is_some() { 0 } else { config.index_snapshot_every };
        let (opener, store, index, feed, snapshots) = blocking(move || {
            let started = std::time::Instant::now();
            let key = key_file.as_deref().map(keys::load_encryption_key).transpose()?;
            let snapshots = snapshot::Snapshots::new(snapshot::path(&data_dir), key.clone(), snapshot_every);
            let opener = recovery::StoreOpener { backend, key, catalog };
            let store = opener.open()?;
            let opened_ms = started.elapsed().as_millis() as u64;
            let encrypted = store.is_encrypted();
            let backend = if store.is_shared() { "postgres" } else { "sled" };
            tracing::info!(backend, encrypted, opened_ms, "store opened");
            let (index, applied) = snapshots.open_index(store.as_ref(), exact_max_faces)?;
            // A finish cut short (a crash while it emptied the dropped model's slot): empty it.
            let models = store.model_state()?;
            if !models.state.keeps_both() && !models.unrecorded() {
                store.clear_slot(1 - models.active)?;
            }
            let feed = IndexFeed::new(index.clone(), applied);
            feed.set_models(models);
            // The index holds the active model's embeddings (a snapshot taken before a change
            // of models is followed by the change's log entry, which rebuilds it).
            feed.settle_models(store.as_ref())?;
            Ok((opener, store, index, feed, snapshots))
        })
        .await?;
        let pool = blocking(move || InferencePool::start(&inference, &models)).await?;
        let cpu = crate::inference::backend::CpuFeatures::detect();
        if let Err(error) = config.openvino_loads(cpu) {
            tracing::warn!(%error, "OpenVINO does not load: ONNX Runtime runs both models");
        }
        let cpu = cpu.describe();
        let backend = pool.backend();
        tracing::info!(
            workers = pool.workers(),
            detector = %backend.detector,
            embedder = %backend.embedder,
            cpu,
            "models loaded, verified and warmed up"
        );
        let compute = ComputePool::start(config.compute_threads)?;
        let settings = Settings {
            max_faces_per_user: config.max_faces_per_user,
            max_lists_per_tenant: config.max_lists_per_tenant,
            max_list_entries: config.max_list_entries,
            min_face_size: config.min_face_size,
            token_ttl: Duration::from_secs(config.reenrollment_token_ttl),
            request_id_ttl: Duration::from_secs(config.request_id_ttl),
            import_max_in_flight: match config.import_max_in_flight {
                0 => 2 * pool.workers().max(1),
                n => n,
            },
            import_idle: Duration::from_secs(config.request_timeout),
            token_max_attempts: config.token_max_attempts,
            thumbnail_size: config.thumbnail_size,
            reindex_share: config.reindex_share,
            reindex_lease: Duration::from_secs(config.reindex_lease),
            quotas,
        };
        let catalog = Arc::new(opener.catalog.clone());
        Ok(App {
            pool,
            compute,
            store: Arc::new(recovery::StoreSlot::new(store)),
            opener: Arc::new(opener),
            index,
            feed,
            snapshots,
            settings: Arc::new(settings),
            writes: Arc::default(),
            catalog,
            reindex: Arc::default(),
        })
    }

    /// The inference pool (queue depth, rejections).
    pub fn pool(&self) -> &InferencePool {
        &self.pool
    }

    /// The compute threads (queue depth, rejections).
    pub fn compute(&self) -> &ComputePool {
        &self.compute
    }

    /// The open store; UNAVAILABLE while it has failed or is being reopened after a fault.
    pub fn store(&self) -> Result<Arc<dyn Storage>> {
        self.store.healthy()
    }

    /// The search index.
    pub fn index(&self) -> &FaceIndex {
        &self.index
    }

    /// The quota of a tenant (none: unlimited).
    pub(crate) fn quota(&self, tenant: &crate::domain::Tenant) -> crate::domain::TenantQuota {
        self.settings.quotas.get(tenant).copied().unwrap_or_default()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The models a request uses now (the store's active model as this node follows it).
    pub fn model_use(&self) -> Result<models::ModelUse> {
        self.catalog.resolve(&self.feed.models())
    }

    /// Scrape-time values for the metrics endpoint.
    pub fn gauges(&self) -> crate::metrics::Gauges {
        crate::metrics::Gauges {
            queue_depth: self.pool.queue_depth(),
            backend: Some(self.pool.backend()),
            overload_rejections: self.pool.rejected() + self.compute.rejected(),
            index_faces: self.index.sizes().into_iter().map(|(t, n)| (t.as_str().to_owned(), n)).collect(),
            ..crate::metrics::Gauges::default()
        }
    }

    /// Index snapshots (where this start's index came from).
    pub fn snapshots(&self) -> &snapshot::Snapshots {
        &self.snapshots
    }

    /// Applies what the change log holds beyond the index (the entries of writes whose sync
    /// failed after they committed, which no writer waited for), then takes an index snapshot
    /// when one is due and compacts the log (`Snapshots::follow`), every `period`. Runs until
    /// its task is aborted (at shutdown).
    ///
    /// A store shared with other nodes is followed every `shared_period` instead (their writes
    /// become searchable here within it), this node's position is reported every
    /// `REPORT_EVERY` (so the log is compacted up to what every node applied), and a node that
    /// fell so far behind that its entries were compacted rebuilds its index from the store.
    pub async fn follow_log_periodically(self, period: Duration, shared_period: Duration) {
        const REPORT_EVERY: Duration = Duration::from_secs(10);
        let shared = self.store().is_ok_and(|s| s.is_shared());
        let mut ticks = tokio::time::interval(if shared { shared_period } else { period });
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported = std::time::Instant::now();
        loop {
            ticks.tick().await;
            let Ok(store) = self.store() else { continue };
            let (feed, snapshots) = (self.feed.clone(), self.snapshots.clone());
            let report = shared && reported.elapsed() >= REPORT_EVERY;
            let app = self.clone();
            let done = blocking(move || {
                let applied = match feed.catch_up(store.as_ref()) {
                    Ok(applied) => applied,
                    Err(e) if shared && store.log_bounds()?.compacted > feed.applied() => {
                        tracing::warn!(error = %e, "this node fell behind the compacted log: rebuilding its index");
                        app.feed.rebuild_from(store.as_ref())?
                    }
                    Err(e) => return Err(e),
                };
                if report {
                    store.compact_log(applied)?;
                }
                snapshots.follow(store.as_ref(), &feed, applied)
            });
            match done.await {
                Ok(()) if report => reported = std::time::Instant::now(),
                Ok(()) => {}
                Err(err) => tracing::warn!(error = %err, "applying the change log failed"),
            }
        }
    }

    /// Applies the whole log and takes an index snapshot unless the one on disk is current
    /// (a clean stop, after the drain); its entry.
    pub async fn snapshot_index(&self) -> Result<Option<u64>> {
        let (store, feed, snapshots) = (self.store()?, self.feed.clone(), self.snapshots.clone());
        blocking(move || {
            feed.catch_up(store.as_ref())?;
            snapshots.take(store.as_ref(), &feed)
        })
        .await
    }

    /// Closes the store cleanly (a stop, after the drain). A store that failed (or is being
    /// reopened) is left as it is: every write it acknowledged is durable, and the next start
    /// opens what is on disk, as after a crash.
    pub async fn close(&self) -> Result<()> {
        let Ok(store) = self.store() else {
            tracing::warn!("stopping with the store failed: it is not closed cleanly");
            return Ok(());
        };
        // A write whose call was cancelled (or cut off by the drain's timeout) may still run in
        // its blocking task: it holds its tenant's lock until its files are written or removed.
        let _writes = self.writes.lock_all().await;
        let _reindex = self.reindex.hold_writes().await;
        blocking(move || store.close()).await
    }

    /// Takes `tenant`'s write lock in this process and, when other processes share the store,
    /// in the store: held while a check that spans the tenant (duplicates, quotas) and the
    /// write it guards run, so that racing calls on any node cannot both pass.
    pub(crate) async fn lock_tenant_writes(&self, tenant: &Tenant) -> Result<WriteLock> {
        let local = self.writes.lock(tenant).await;
        let (store, tenant) = (self.store()?, tenant.clone());
        let shared = blocking(move || store.lock_tenant(&tenant)).await?;
        Ok(WriteLock { _shared: shared, _local: local })
    }

    /// Applies every change-log entry committed so far to this node's index (and follows any
    /// change of models among them).
    pub(crate) async fn catch_up(&self) -> Result<u64> {
        let (store, feed) = (self.store()?, self.feed.clone());
        blocking(move || feed.catch_up(store.as_ref())).await
    }

    /// Resolves a user reference in the caller's tenant.
    async fn resolve_user(&self, tenant: &Tenant, user: &UserRef) -> Result<User> {
        let (store, tenant, user) = (self.store()?, tenant.clone(), user.clone());
        blocking(move || {
            // One snapshot: a user deleted and created again under the same external id is
            // found (old or new), never lost between the two lookups.
            let key = user.storage_key();
            store.find_user(&tenant, key)?.ok_or_else(Error::user_not_found)
        })
        .await
    }
}
