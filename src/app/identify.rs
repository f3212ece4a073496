//! 1:N identify (SearchFaces) and 1:1 verify (VerifyFace), with thresholds from the config.
//! Never scans sled for embeddings: search similarities come from the FaceIndex; Verify reads
//! the few embeddings of one user from the store, in the snapshot of its face list.

use bytes::Bytes;

use super::models::ModelUse;
use super::{App, UserRef, blocking};
use std::collections::HashSet;

use crate::domain::{AnalyzedFace, Embedding, FaceId, FaceMatch, ListMatch, Principal, Tenant, UserId};
use crate::error::{Error, Reason, Result};
use crate::inference::{AnalyzeOptions, Coverage, EmbedWith, FaceSelection};
use crate::search::Hit;
use crate::search::similarity::{dot_f16, to_f16_bits};

/// Most users a search may return.
pub(super) const MAX_TOP_K: i32 = 100;
/// Users a search returns when the request says 0.
pub(super) const DEFAULT_TOP_K: i32 = 5;

/// What SearchFaces found.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    /// The largest face searched (the stored face of a search by face_id).
    pub query: AnalyzedFace,
    pub matches: Vec<FaceMatch>,
    pub list_matches: Vec<ListMatch>,
    /// Faces of the image not searched.
    pub other_faces: usize,
    /// all_faces: every face searched, largest first (the first is `query`); empty otherwise.
    pub results: Vec<FaceResult>,
}

/// One searched face of an all_faces search.
#[derive(Debug, Clone)]
pub struct FaceResult {
    pub query: AnalyzedFace,
    pub matches: Vec<FaceMatch>,
    pub list_matches: Vec<ListMatch>,
}

/// What a SearchFaces searches with.
#[derive(Clone)]
pub enum SearchQuery {
    /// The largest face of the image, or with `all_faces` every face.
    Image { image: Bytes, all_faces: bool },
    /// A stored face of the tenant, by its embedding.
    Face(String),
}

impl std::fmt::Debug for SearchQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchQuery::Image { image, all_faces } => {
                write!(f, "Image {{ image: <{} bytes>, all_faces: {all_faces} }}", image.len())
            }
            SearchQuery::Face(id) => f.debug_tuple("Face").field(id).finish(),
        }
    }
}

/// A SearchFaces request after conversion.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: SearchQuery,
    pub top_k: i32,
    pub min_similarity: f32,
    /// Only users whose metadata holds every pair (empty: every user).
    pub metadata_filter: std::collections::BTreeMap<String, String>,
}

/// What VerifyFace found.
#[derive(Debug, Clone)]
pub struct VerifyOutcome {
    pub matched: bool,
    pub similarity: f32,
    pub threshold: f32,
    pub best_face: FaceId,
}

impl App {
    /// The largest face of the image with its embedding, and how many other faces there were.
    async fn largest_face(&self, image: Bytes, models: &ModelUse) -> Result<(AnalyzedFace, usize)> {
        let options = AnalyzeOptions {
            coverage: Coverage::MinFace(self.settings.min_face_size),
            embeddings: FaceSelection::Largest,
            thumbnails: FaceSelection::None,
            models: EmbedWith { main: models.main, other: None },
        };
        let analysis = self.pool.analyze(image, options).await?.image;
        let mut faces = analysis.faces;
        if faces.is_empty() {
            return Err(Error::invalid(Reason::NoFaceDetected, "image", "no face was found in the image"));
        }
        // Faces past the per-image cap were not searched either.
        let others = faces.len() - 1 + analysis.omitted_faces;
        Ok((faces.swap_remove(0), others))
    }

    /// The faces of the image that an all_faces search takes (every face the detector found
    /// down to --min-face-size, each embedded), and how many it left out (past the per-image cap).
    async fn all_faces(&self, image: Bytes, models: &ModelUse) -> Result<(Vec<AnalyzedFace>, usize)> {
        let options = AnalyzeOptions {
            coverage: Coverage::MinFace(self.settings.min_face_size),
            embeddings: FaceSelection::All,
            thumbnails: FaceSelection::None,
            models: EmbedWith { main: models.main, other: None },
        };
        let analysis = self.pool.analyze(image, options).await?.image;
        if analysis.faces.is_empty() {
            return Err(Error::invalid(Reason::NoFaceDetected, "image", "no face was found in the image"));
        }
        Ok((analysis.faces, analysis.omitted_faces))
    }

    /// A stored face of the tenant as a query: its record and its embedding by the model of now.
    async fn stored_query(&self, tenant: &Tenant, face_id: &str, models: &ModelUse) -> Result<AnalyzedFace> {
        let id = super::validate::face_id(face_id, "face_id")?;
        let (store, tenant, model) = (self.store()?, tenant.clone(), models.main_id.clone());
        let found = blocking(move || {
            let Some(face) = store.get_face(&tenant, id)? else { return Ok(None) };
            Ok(store.face_embedding(&tenant, id, &model)?.map(|e| (face, e)))
        })
        .await?;
        let (face, embedding) = found.ok_or_else(|| Error::face_not_found().with_meta("face_id", id))?;
        Ok(AnalyzedFace {
            detection: face.detection,
            quality: face.quality,
            embedding: Some(embedding),
            other_embedding: None,
            thumbnail: None,
        })
    }

    pub async fn search_faces(&self, caller: &Principal, request: SearchRequest) -> Result<SearchOutcome> {
        let SearchRequest { query, top_k, min_similarity, metadata_filter } = request;
        let k = match top_k {
            0 => DEFAULT_TOP_K,
            1..=MAX_TOP_K => top_k,
            _ => {
                return Err(Error::invalid(Reason::TopKInvalid, "top_k", format!("top_k must be 0 to {MAX_TOP_K}"))
                    .with_meta("top_k", top_k));
            }
        };
        if !(-1.0..=1.0).contains(&min_similarity) {
            return Err(Error::invalid(
                Reason::MinSimilarityInvalid,
                "min_similarity",
                "min_similarity must be -1 to 1",
            )
            .with_meta("min_similarity", min_similarity));
        }
        super::validate::metadata(&metadata_filter, "metadata_filter")?;
        // The query is embedded by the model the index holds; when the models change between
        // the two (a cutover), once more with the new one.
        let mut attempts = 0;
        loop {
            let models = self.model_use()?;
            let min = if min_similarity == 0.0 { models.thresholds.possible } else { min_similarity };
            let (faces, other_faces, all) = match &query {
                SearchQuery::Face(id) => (vec![self.stored_query(&caller.tenant, id, &models).await?], 0, false),
                SearchQuery::Image { image, all_faces: false } => {
                    let (face, others) = self.largest_face(image.clone(), &models).await?;
                    (vec![face], others, false)
                }
                SearchQuery::Image { image, all_faces: true } => {
                    let (faces, omitted) = self.all_faces(image.clone(), &models).await?;
                    (faces, omitted, true)
                }
            };
            // The filter's users, from the index (never a scan of user records).
            let only = match metadata_filter.is_empty() {
                true => None,
                false => Some(std::sync::Arc::new(self.filter_users(&caller.tenant, &metadata_filter).await?)),
            };
            let mut results = Vec::with_capacity(faces.len());
            for face in faces {
                let embedding = face.embedding.as_ref().ok_or_else(|| Error::bug("the query face was not embedded"))?;
                let hits = self.scan_index(&caller.tenant, embedding, k as usize, min, None, only.clone()).await?;
                let list_matches =
                    self.list_matches(&caller.tenant, embedding, models.thresholds.matched).await?.matches;
                results.push((face, hits, list_matches));
            }
            attempts += 1;
            if self.model_use()?.main_id != models.main_id && attempts < 2 {
                continue;
            }
            let (searched, hits): (Vec<_>, Vec<_>) =
                results.into_iter().map(|(face, hits, list_matches)| ((face, list_matches), hits)).unzip();
            let matches = self.describe_hit_groups(&caller.tenant, hits, models.thresholds).await?;
            let described: Vec<FaceResult> = searched
                .into_iter()
                .zip(matches)
                .map(|((query, list_matches), matches)| FaceResult { query, matches, list_matches })
                .collect();
            let first = described.first().cloned().ok_or_else(|| Error::bug("a search without a query face"))?;
            return Ok(SearchOutcome {
                query: first.query,
                matches: first.matches,
                list_matches: first.list_matches,
                other_faces,
                results: if all { described } else { Vec::new() },
            });
        }
    }

    /// `FaceIndex::search` on a compute thread: a scan of a large tenant takes tens of ms and
    /// must not hold a runtime thread. OVERLOADED when the compute queue is full.
    pub(super) async fn search_index(
        &self,
        tenant: &Tenant,
        query: &Embedding,
        k: usize,
        min: f32,
        exclude: Option<UserId>,
    ) -> Result<Vec<Hit>> {
        self.scan_index(tenant, query, k, min, exclude, None).await
    }

    /// The users of the tenant whose metadata holds every pair of `filter`, from the index, on a
    /// compute thread.
    async fn filter_users(
        &self,
        tenant: &Tenant,
        filter: &std::collections::BTreeMap<String, String>,
    ) -> Result<HashSet<UserId>> {
        let (index, tenant, filter) = (self.index.clone(), tenant.clone(), filter.clone());
        self.compute.run(move || index.tags().matching(&tenant, &filter)).await
    }

    /// `search_index` among the users of `only` (a metadata filter's), when given.
    async fn scan_index(
        &self,
        tenant: &Tenant,
        query: &Embedding,
        k: usize,
        min: f32,
        exclude: Option<UserId>,
        only: Option<std::sync::Arc<HashSet<UserId>>>,
    ) -> Result<Vec<Hit>> {
        let (index, tenant, query) = (self.index.clone(), tenant.clone(), query.clone());
        let (hits, took) = self
            .compute
            .run(move || {
                let started = std::time::Instant::now();
                let hits = index.search_among(&tenant, &query, k, min, exclude, only.as_deref());
                (hits, started.elapsed())
            })
            .await?;
        crate::metrics::record_stage("search", took);
        Ok(hits)
    }

    /// VerifyFace. The user and the embeddings of its faces are read from one store snapshot
    /// after the inference, so a face deleted, replaced or added meanwhile is compared as in
    /// the state before the write or as in the state after it, never half of each. (The index
    /// is updated just after the store, so the user's face list and the index can disagree for
    /// a moment.) At most `--max-faces-per-user` embeddings: a few µs, on the blocking thread.
    pub async fn verify_face(&self, caller: &Principal, user: &UserRef, image: Bytes) -> Result<VerifyOutcome> {
        match self.verify_face_once(caller, user, image.clone()).await {
            // The store stopped keeping the model this node used (a reindex finished on another
            // node before this one read its entry): once more with the models of now.
            Err(e) if crate::storage::models::is_models_changed(&e) => {
                self.catch_up().await?;
                self.verify_face_once(caller, user, image).await
            }
            done => done,
        }
    }

    async fn verify_face_once(&self, caller: &Principal, user: &UserRef, image: Bytes) -> Result<VerifyOutcome> {
        // Checked first so that an unknown user or one without faces costs no inference.
        let known = self.resolve_user(&caller.tenant, user).await?;
        if known.face_ids.is_empty() {
            return Err(no_enrolled_face());
        }
        let models = self.model_use()?;
        let (query, _) = self.largest_face(image, &models).await?;
        let query = query.embedding.ok_or_else(|| Error::bug("the query face was not embedded"))?;
        let (store, tenant, user) = (self.store()?, caller.tenant.clone(), user.clone());
        let model = models.main_id.clone();
        let best = blocking(move || {
            let key = user.storage_key();
            // The stored embeddings of the query's model (MODELS_CHANGED if the store no longer
            // keeps it: the caller retries).
            let (_, faces) = store.user_with_embeddings(&tenant, key, &model)?.ok_or_else(Error::user_not_found)?;
            // Scored as the index scores (f16 rows, f32 query), so Verify and Search agree.
            Ok(faces
                .iter()
                .map(|(id, e)| (*id, dot_f16(query.as_slice(), &to_f16_bits(e.as_slice()))))
                .max_by(|a, b| a.1.total_cmp(&b.1)))
        })
        .await?;
        let (best_face, similarity) = best.ok_or_else(no_enrolled_face)?;
        let threshold = models.thresholds.matched;
        Ok(VerifyOutcome { matched: similarity >= threshold, similarity, threshold, best_face })
    }
}

fn no_enrolled_face() -> Error {
    Error::failed_precondition(Reason::NoEnrolledFace, "the user has no enrolled face")
}
