//! The enroll flows: decode -> detect -> pick the face to enroll (`inference::enrollable`) ->
//! embed -> duplicate check -> persist -> index -> thumbnail; and face reads and deletes. Never
//! formats wire responses.

use std::time::SystemTime;

use bytes::Bytes;

use super::requests::{Idempotency, Written, stamped};
use super::tokens::{TokenHolder, invalid_token};
use super::{App, UserRef, blocking, validate};
use crate::domain::{
    AnalyzedFace, Face, FaceId, FaceMatch, ImageAnalysis, MultipleFaces, Principal, QualityIssue, Tenant, User, UserId,
};
use crate::error::{Error, Reason, Result};
use crate::inference::enrollable::{DOMINANCE_RATIO, Enrollable, enrollable_face};
use crate::inference::{AnalyzeOptions, Coverage, FaceSelection};
use crate::storage::{NewFace, Replace};

/// An UploadFace or UpdateFace request after conversion (Debug: app/redact.rs).
#[derive(Clone)]
pub struct FaceUpload {
    pub user: UserRef,
    pub image: Bytes,
    pub comment: String,
    /// REJECT: refuse the face when another user's face is a MATCH.
    pub reject_duplicates: bool,
    /// A photo in which more than one face passes the quality gate.
    pub multiple_faces: MultipleFaces,
}

/// Who authorises an UpdateFace.
#[derive(Debug, Clone)]
pub enum UpdateCredential {
    Key(Principal),
    /// An admitted re-enrollment token: good for one UpdateFace of its own user.
    Token(TokenHolder),
}

/// What an enrollment stored and found (Debug: app/redact.rs).
#[derive(Clone)]
pub struct EnrollOutcome {
    pub face: Face,
    pub user: User,
    pub replaced: Option<FaceId>,
    pub duplicates: Vec<FaceMatch>,
    pub thumbnail: Vec<u8>,
    pub warnings: Vec<String>,
    /// The enrollment created its user (an ImportFaces item of a new external id).
    pub created_user: bool,
    /// The tenant's lists the face matched (WATCH, ALLOW), best first; none for a token caller.
    pub list_matches: Vec<crate::domain::ListMatch>,
}

/// What an enrollment records and spends besides the face: the request id, the re-enrollment
/// token (its hash) it consumes, and whether its caller created the user for it.
#[derive(Clone, Copy)]
pub(super) struct Request<'a> {
    pub idem: Option<&'a Idempotency<EnrollOutcome>>,
    pub token: Option<[u8; 32]>,
    pub created_user: bool,
}

/// Which stored image GetFaceImage returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Original,
    Thumbnail,
}

/// A stored image with its type and size (Debug: app/redact.rs).
#[derive(Clone)]
pub struct StoredImage {
    pub data: Vec<u8>,
    pub mime_type: String,
    pub width: u32,
    pub height: u32,
}

/// The warning when a user's new face matches none of its other faces.
pub const SELF_MISMATCH: &str = "SELF_MISMATCH";
/// The warning when the photo shows other faces than the one enrolled (DOMINANT).
pub(super) const OTHER_FACES_IGNORED: &str = "OTHER_FACES_IGNORED";

/// The index of the face to enroll and whether other faces were ignored, or why there is none.
fn enrolled_face(analysis: &ImageAnalysis, policy: MultipleFaces, min_face_size: f32) -> Result<(usize, bool)> {
    let picked = enrollable_face(&analysis.faces, analysis.width, analysis.height, policy);
    // Faces past the per-image cap were not assessed: under REJECT, one of them could be
    // enrollable too. Under DOMINANT the rule weighs the assessed faces only, each larger than
    // every omitted one.
    if policy == MultipleFaces::Reject && analysis.omitted_faces > 0 && picked != Enrollable::NoFace {
        let count = analysis.faces.len() + analysis.omitted_faces;
        return Err(Error::invalid(
            Reason::MultipleFacesDetected,
            "image",
            format!("{count} faces were found; an enrollment photo must show exactly one"),
        )
        .with_meta("face_count", count));
    }
    match picked {
        Enrollable::Face { index, others } => {
            Ok((index, policy == MultipleFaces::Dominant && others + analysis.omitted_faces > 0))
        }
        Enrollable::Failing { index } => Err(quality_refusal(&analysis.faces[index], min_face_size)),
        Enrollable::NoFace => {
            let Some(best) = analysis.faces.first() else {
                return Err(Error::invalid(Reason::NoFaceDetected, "image", "no face was found in the image"));
            };
            Err(quality_refusal(best, min_face_size))
        }
        Enrollable::Competing { count } => Err(Error::invalid(
            Reason::MultipleFacesDetected,
            "image",
            match policy {
                MultipleFaces::Reject => {
                    format!("{count} faces were found; an enrollment photo must show exactly one")
                }
                MultipleFaces::Dominant => format!(
                    "{count} faces were found and none is {DOMINANCE_RATIO} times as prominent (size, \
                     centrality) as the next; an enrollment photo must show one face, or one that \
                     clearly dominates"
                ),
            },
        )
        .with_meta("face_count", count)),
    }
}

/// Why `face`, the face an enrollment would take, fails the quality gate: FACE_TOO_SMALL or
/// LOW_FACE_QUALITY with the measured values.
fn quality_refusal(face: &AnalyzedFace, min_face_size: f32) -> Error {
    let q = &face.quality;
    if q.issues.contains(&QualityIssue::TooSmall) {
        return Error::invalid(
            Reason::FaceTooSmall,
            "image",
            format!("the face is {:.0} px; at least {min_face_size:.0} px are needed", q.face_size),
        )
        .with_meta("face_size", format!("{:.1}", q.face_size))
        .with_meta("min_face_size", format!("{min_face_size:.1}"));
    }
    let issues: Vec<&str> = q.issues.iter().map(|i| issue_name(*i)).collect();
    Error::invalid(
        Reason::LowFaceQuality,
        "image",
        format!("the face is not good enough to enroll: {}", issues.join(", ")),
    )
    .with_meta("issues", issues.join(","))
    .with_meta("detector_score", format!("{:.3}", face.detection.score))
    .with_meta("sharpness", format!("{:.1}", q.sharpness))
    .with_meta("brightness", format!("{:.1}", q.brightness))
    .with_meta("yaw", format!("{:.1}", q.yaw))
    .with_meta("pitch", format!("{:.1}", q.pitch))
}

fn issue_name(issue: QualityIssue) -> &'static str {
    match issue {
        QualityIssue::TooSmall => "TOO_SMALL",
        QualityIssue::LowConfidence => "LOW_CONFIDENCE",
        QualityIssue::Blurry => "BLURRY",
        QualityIssue::TooDark => "TOO_DARK",
        QualityIssue::TooBright => "TOO_BRIGHT",
        QualityIssue::Pose => "POSE",
    }
}

impl App {
    /// Runs the enrollment analysis: faces down to the minimum enrollable size, embedding and
    /// thumbnail of the face to enroll. Returns it and whether other faces were ignored.
    pub(super) async fn analyze_for_enrollment(
        &self,
        image: Bytes,
        policy: MultipleFaces,
        models: &super::models::ModelUse,
    ) -> Result<(crate::inference::Analysis, usize, bool)> {
        let options = AnalyzeOptions {
            coverage: Coverage::MinFace(self.settings.min_face_size),
            embeddings: FaceSelection::Enrollable(policy),
            thumbnails: FaceSelection::Enrollable(policy),
            models: models.embed_with(),
        };
        let analysis = self.pool.analyze(image, options).await?;
        let (index, others) = enrolled_face(&analysis.image, policy, self.settings.min_face_size)?;
        Ok((analysis, index, others))
    }

    /// UploadFace: adds a face to an existing user.
    pub async fn upload_face(
        &self,
        caller: &Principal,
        upload: FaceUpload,
        idem: Option<Idempotency<EnrollOutcome>>,
    ) -> Result<Written<EnrollOutcome>> {
        validate::comment(&upload.comment, "comment")?;
        self.idempotent(&caller.tenant, idem.as_ref(), || async {
            let user = self.resolve_user(&caller.tenant, &upload.user).await?;
            self.add_face(caller, user.id, upload, idem.as_ref(), false).await
        })
        .await
    }

    /// Adds the uploaded face to `user` (recording `idem`; `created_user`: the caller created
    /// the user for it).
    pub(super) async fn add_face(
        &self,
        caller: &Principal,
        user: UserId,
        upload: FaceUpload,
        idem: Option<&Idempotency<EnrollOutcome>>,
        created_user: bool,
    ) -> Result<EnrollOutcome> {
        let (store, tenant) = (self.store()?, caller.tenant.clone());
        let current = blocking(move || store.get_user(&tenant, user)).await?.ok_or_else(Error::user_not_found)?;
        if current.face_ids.len() >= self.settings.max_faces_per_user {
            // Checked again inside the store transaction; this only saves the inference.
            return Err(limit_reached(current.face_ids.len(), self.settings.max_faces_per_user));
        }
        let request = Request { idem, token: None, created_user };
        self.enroll(&caller.tenant, &caller.key_name, user, upload, Replace::Nothing, request).await
    }

    /// UpdateFace: replaces a face (or the oldest, or enrolls the first), authorised by an API
    /// key of the tenant or by the user's re-enrollment token.
    pub async fn update_face(
        &self,
        credential: UpdateCredential,
        upload: FaceUpload,
        face_id: Option<&str>,
        idem: Option<Idempotency<EnrollOutcome>>,
    ) -> Result<Written<EnrollOutcome>> {
        validate::comment(&upload.comment, "comment")?;
        let tenant = match &credential {
            UpdateCredential::Key(caller) => caller.tenant.clone(),
            UpdateCredential::Token(holder) => {
                // The token decides the user before anything else, a replay included: a token
                // holder learns nothing of the tenant's request ids through another user.
                self.token_user(holder, &upload.user).await?;
                holder.tenant.clone()
            }
        };
        self.idempotent(&tenant, idem.as_ref(), || self.update_face_once(credential, upload, face_id, idem.as_ref()))
            .await
    }

    async fn update_face_once(
        &self,
        credential: UpdateCredential,
        upload: FaceUpload,
        face_id: Option<&str>,
        idem: Option<&Idempotency<EnrollOutcome>>,
    ) -> Result<EnrollOutcome> {
        let (tenant, uploaded_by, token) = match credential {
            UpdateCredential::Key(caller) => (caller.tenant, caller.key_name, None),
            UpdateCredential::Token(holder) => (holder.tenant.clone(), "reenrollment-token".to_owned(), Some(holder)),
        };
        let user = match &token {
            None => self.resolve_user(&tenant, &upload.user).await?,
            Some(holder) => self.token_user(holder, &upload.user).await?,
        };
        let replace = match face_id {
            None | Some("") => Replace::Oldest,
            Some(text) => {
                let id = FaceId::parse(text).ok_or_else(|| Error::face_not_found().with_meta("face_id", text))?;
                if !user.face_ids.contains(&id) {
                    return Err(Error::face_not_found().with_meta("face_id", text));
                }
                Replace::Face(id)
            }
        };
        let request = Request { idem, token: token.map(|holder| holder.hash), created_user: false };
        self.enroll(&tenant, &uploaded_by, user.id, upload, replace, request).await
    }

    /// The user a token's UpdateFace names, which must be the token's own: naming another one,
    /// or none that exists, is the same refusal as a bad token, decided before any image work.
    async fn token_user(&self, holder: &TokenHolder, user: &UserRef) -> Result<User> {
        match self.resolve_user(&holder.tenant, user).await {
            Ok(user) if user.id == holder.user_id => Ok(user),
            Err(e @ (Error::Internal { .. } | Error::Unavailable { .. })) => Err(e),
            Ok(_) | Err(_) => Err(invalid_token()),
        }
    }

    /// Enrolls with the models of now; once more when they changed before the write committed
    /// (a reindex started or ended meanwhile: the face is embedded again with those of then).
    async fn enroll(
        &self,
        tenant: &Tenant,
        uploaded_by: &str,
        user_id: UserId,
        upload: FaceUpload,
        replace: Replace,
        request: Request<'_>,
    ) -> Result<EnrollOutcome> {
        match self.enroll_once(tenant, uploaded_by, user_id, upload.clone(), replace, request).await {
            Err(e) if crate::storage::models::is_models_changed(&e) => {
                self.catch_up().await?;
                self.enroll_once(tenant, uploaded_by, user_id, upload, replace, request).await
            }
            done => done,
        }
    }

    async fn enroll_once(
        &self,
        tenant: &Tenant,
        uploaded_by: &str,
        user_id: UserId,
        upload: FaceUpload,
        replace: Replace,
        request: Request<'_>,
    ) -> Result<EnrollOutcome> {
        let token = request.token;
        let models = self.model_use()?;
        let (analysis, picked, others_ignored) =
            self.analyze_for_enrollment(upload.image.clone(), upload.multiple_faces, &models).await?;
        let width = analysis.image.width;
        let height = analysis.image.height;
        let mime = analysis.format.mime_type();
        let mut faces = analysis.image.faces;
        let chosen = faces.swap_remove(picked);
        let embedding = chosen.embedding.ok_or_else(|| Error::bug("the enrolled face was not embedded"))?;
        let other = match models.other {
            Some(other) => Some(crate::storage::ModelEmbedding {
                model: self.catalog.models[other].record.id.clone(),
                embedding: chosen
                    .other_embedding
                    .ok_or_else(|| Error::bug("the enrolled face lacks its other embedding"))?,
            }),
            None => None,
        };
        let thumbnail = chosen.thumbnail.ok_or_else(|| Error::bug("the enrolled face has no thumbnail"))?;

        // Held until the store write and the index update below are done, even if the caller
        // goes away (the guard moves into the blocking task, which always runs to the end).
        let writes = self.lock_tenant_writes(tenant).await?;
        // The index must hold every committed face of the tenant before the duplicate check.
        self.catch_up().await?;
        // The duplicate check compares with the index: of the model the face was embedded by.
        if self.model_use()?.main_id != models.main_id {
            return Err(crate::storage::models::models_changed());
        }
        let thresholds = models.thresholds;
        // The tenant's lists first: a BLOCK match refuses the face whatever else holds.
        let lists = self.list_matches(tenant, &embedding, thresholds.matched).await?;
        if let Some(hit) = lists.blocked() {
            let error = super::lists::blocked_error(hit);
            // A token holder learns only the reason: no list, entry or similarity.
            return Err(if token.is_some() { error.without_meta() } else { error });
        }
        // Duplicates among the other users of the tenant, best first.
        let hits = self.search_index(tenant, &embedding, 20, thresholds.possible, Some(user_id)).await?;
        let duplicates = self.describe_hits(tenant, &hits, thresholds).await?;
        let first_match = duplicates.iter().find(|d| d.decision == Some(crate::domain::MatchDecision::Match));
        // An ALLOW match waives the rejection (the duplicates are still reported).
        if upload.reject_duplicates
            && !lists.allowed()
            && let Some(first) = first_match
        {
            let error = Error::already_exists(Reason::DuplicateFace, "the face matches another user's face");
            // A token holder learns only that the photo matched someone: no ids, no similarity.
            return Err(match token {
                Some(_) => error,
                None => error
                    .with_meta("user_id", first.user_id)
                    .with_meta("external_id", &first.external_id)
                    .with_meta("face_id", first.face_id)
                    .with_meta("similarity", format!("{:.4}", first.similarity)),
            });
        }
        // Other users' faces, and list matches, are reported to API-key callers only.
        let duplicates = if token.is_some() { Vec::new() } else { duplicates };
        let list_matches = if token.is_some() { Vec::new() } else { lists.matches };
        // The user's own other faces (those that stay).
        let store = self.store()?;
        let (tenant_c, uid) = (tenant.clone(), user_id);
        let current = blocking(move || store.get_user(&tenant_c, uid)).await?.ok_or_else(Error::user_not_found)?;
        let adds_a_face = match replace {
            Replace::Nothing => true,
            Replace::Face(_) => false,
            Replace::Oldest => current.face_ids.is_empty(),
        };
        if let Some(max_faces) = self.quota(tenant).max_faces
            && adds_a_face
            && self.index.len(tenant) >= max_faces
        {
            let error = Error::quota_exceeded("faces", max_faces);
            return Err(if token.is_some() { error.without_meta() } else { error });
        }
        let staying: Vec<FaceId> = current
            .face_ids
            .iter()
            .copied()
            .filter(|f| match replace {
                Replace::Face(old) => *f != old,
                Replace::Oldest => Some(*f) != current.face_ids.first().copied(),
                Replace::Nothing => true,
            })
            .collect();
        let own = self.index.similarities(tenant, &staying, &embedding);
        // The index may have changed model since the check above (another thread followed a
        // cutover): the duplicate check and these similarities are then redone.
        if self.model_use()?.main_id != models.main_id {
            return Err(crate::storage::models::models_changed());
        }
        let mut warnings = Vec::new();
        if others_ignored {
            warnings.push(OTHER_FACES_IGNORED.to_owned());
        }
        if !own.is_empty() && own.iter().all(|(_, s)| *s < thresholds.matched) {
            warnings.push(SELF_MISMATCH.to_owned());
        }

        let face = Face {
            id: FaceId(crate::storage::random_id()?),
            user_id,
            detection: chosen.detection,
            quality: chosen.quality,
            comment: upload.comment,
            uploaded_by: uploaded_by.to_owned(),
            create_time: SystemTime::now(),
            model: models.main_id.clone(),
            mime_type: mime.to_owned(),
            width,
            height,
        };
        let new = NewFace {
            face: face.clone(),
            embedding: embedding.clone(),
            other,
            original: upload.image.to_vec(),
            thumbnail: thumbnail.clone(),
        };
        let (store, feed, tenant_c, max) =
            (self.store()?, self.feed.clone(), tenant.clone(), self.settings.max_faces_per_user);
        let started = std::time::Instant::now();
        let created_user = request.created_user;
        let outcome = move |(user, replaced): &(User, Option<FaceId>), thumbnail: Vec<u8>| EnrollOutcome {
            face: face.clone(),
            user: user.clone(),
            replaced: *replaced,
            duplicates: duplicates.clone(),
            thumbnail,
            warnings: warnings.clone(),
            created_user,
            list_matches: list_matches.clone(),
        };
        let (idem, ttl) = (request.idem.cloned(), self.settings.request_id_ttl);
        // The write, the wait for the feed to apply it (read-your-writes) and the sync are one
        // blocking task that runs to its end even if the caller goes away. The index follows the
        // change log, not this request: whatever happens here, it equals the store.
        let written = blocking(move || {
            let _writes = writes;
            // The response recorded for a replay leaves the thumbnail out (it is stored with
            // the face; the wire layer reads it for a replay).
            let respond = |i: &Idempotency<EnrollOutcome>, s: &(User, Option<FaceId>)| {
                i.recorded(Some(s.0.id), &outcome(s, Vec::new()))
            };
            let pending = stamped(idem.as_ref(), ttl, respond, |stamp| {
                store.put_face_pending(&tenant_c, &new, replace, max, token, stamp)
            })?;
            let written = feed.finish(store.as_ref(), pending)?;
            Ok(outcome(&written, thumbnail))
        })
        .await?;
        crate::metrics::record_stage("store", started.elapsed());
        Ok(written)
    }

    /// Search hits with each user's external id and the decision band.
    pub(super) async fn describe_hits(
        &self,
        tenant: &Tenant,
        hits: &[crate::search::Hit],
        thresholds: crate::search::similarity::Thresholds,
    ) -> Result<Vec<FaceMatch>> {
        let mut described = self.describe_hit_groups(tenant, vec![hits.to_vec()], thresholds).await?;
        Ok(described.pop().unwrap_or_default())
    }

    /// `describe_hits` of several searches (the faces of one image) with one store read.
    pub(super) async fn describe_hit_groups(
        &self,
        tenant: &Tenant,
        groups: Vec<Vec<crate::search::Hit>>,
        thresholds: crate::search::similarity::Thresholds,
    ) -> Result<Vec<Vec<FaceMatch>>> {
        let (store, tenant) = (self.store()?, tenant.clone());
        blocking(move || {
            // The index is read before the store: a hit whose face (or user) was deleted since
            // the scan is left out, as if the scan had come after the delete.
            let pairs: Vec<(UserId, FaceId)> = groups.iter().flatten().map(|h| (h.user_id, h.face_id)).collect();
            let mut owners = store.hit_owners(&tenant, &pairs)?.into_iter();
            Ok(groups
                .into_iter()
                .map(|hits| {
                    hits.into_iter()
                        .zip(owners.by_ref())
                        .filter_map(|(hit, owner)| {
                            Some(FaceMatch {
                                user_id: hit.user_id,
                                external_id: owner?,
                                face_id: hit.face_id,
                                similarity: hit.similarity,
                                decision: thresholds.decide(hit.similarity),
                            })
                        })
                        .collect()
                })
                .collect())
        })
        .await
    }

    pub async fn get_face(&self, caller: &Principal, face_id: &str) -> Result<Face> {
        let id = FaceId::parse(face_id).ok_or_else(Error::face_not_found)?;
        let (store, tenant) = (self.store()?, caller.tenant.clone());
        blocking(move || store.get_face(&tenant, id)).await?.ok_or_else(Error::face_not_found)
    }

    /// The user's faces, oldest first.
    pub async fn list_faces(&self, caller: &Principal, user: &UserRef) -> Result<Vec<Face>> {
        let (store, tenant, user) = (self.store()?, caller.tenant.clone(), user.clone());
        blocking(move || {
            // The user and its faces from one snapshot: a face deleted meanwhile is either
            // listed with its record or not listed at all.
            let key = user.storage_key();
            let (_, faces) = store.user_with_faces(&tenant, key)?.ok_or_else(Error::user_not_found)?;
            Ok(faces)
        })
        .await
    }

    /// Deletes a face; returns once the index no longer has the face.
    pub async fn delete_face(
        &self,
        caller: &Principal,
        face_id: &str,
        idem: Option<Idempotency<()>>,
    ) -> Result<Written<()>> {
        let id = FaceId::parse(face_id).ok_or_else(Error::face_not_found)?;
        self.idempotent(&caller.tenant, idem.as_ref(), || async {
            let writes = self.writes.lock(&caller.tenant).await;
            let (store, feed, tenant) = (self.store()?, self.feed.clone(), caller.tenant.clone());
            let (ttl, idem) = (self.settings.request_id_ttl, idem.clone());
            blocking(move || {
                let _writes = writes;
                let pending = stamped(
                    idem.as_ref(),
                    ttl,
                    |i, _: &User| i.recorded(None, &()),
                    |stamp| store.delete_face_pending(&tenant, id, stamp),
                )?;
                feed.finish(store.as_ref(), pending).map(|_| ())
            })
            .await
        })
        .await
    }

    /// For each (user, face) a replayed response names, the user's external id while the face
    /// still exists and is that user's: a replay names no one deleted since.
    pub async fn current_owners(&self, tenant: &Tenant, pairs: Vec<(UserId, FaceId)>) -> Result<Vec<Option<String>>> {
        let (store, tenant) = (self.store()?, tenant.clone());
        blocking(move || store.hit_owners(&tenant, &pairs)).await
    }

    /// The stored thumbnail of a face, empty when it is gone (a replayed enrollment's).
    pub async fn stored_thumbnail(&self, tenant: &Tenant, face_id: &str) -> Result<Vec<u8>> {
        let Some(id) = FaceId::parse(face_id) else { return Ok(Vec::new()) };
        let (store, tenant) = (self.store()?, tenant.clone());
        let found = blocking(move || store.face_with_image(&tenant, id, true)).await?;
        Ok(found.map(|(_, data)| data).unwrap_or_default())
    }

    /// The stored original or thumbnail of a face.
    pub async fn face_image(&self, caller: &Principal, face_id: &str, kind: ImageKind) -> Result<StoredImage> {
        let id = FaceId::parse(face_id).ok_or_else(Error::face_not_found)?;
        let (store, tenant) = (self.store()?, caller.tenant.clone());
        let thumbnail = kind == ImageKind::Thumbnail;
        // The record and the image from one snapshot (the type and size describe these bytes).
        let (face, data) =
            blocking(move || store.face_with_image(&tenant, id, thumbnail)).await?.ok_or_else(Error::face_not_found)?;
        Ok(match kind {
            ImageKind::Original => {
                StoredImage { data, mime_type: face.mime_type, width: face.width, height: face.height }
            }
            ImageKind::Thumbnail => {
                let side = self.settings.thumbnail_size;
                StoredImage { data, mime_type: "image/jpeg".into(), width: side, height: side }
            }
        })
    }
}

fn limit_reached(count: usize, max: usize) -> Error {
    Error::failed_precondition(Reason::FaceLimitReached, "the user has the maximum number of faces")
        .with_meta("face_count", count)
        .with_meta("max_faces", max)
}
