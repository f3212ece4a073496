//! `FaceService` handlers: authorise, convert, call `App`, convert back.

use tonic::{Request, Response, Status};

use super::AppSlot;
use super::auth::{caller, caller_key, update_credential};
use super::convert;
use super::idempotent::{current_duplicates, idempotency, recorded_duplicates, replayed};
use super::pb;
use super::pb::face_service_server::FaceService;
use super::{call_deadline, observed};
use crate::app::{EnrollOutcome, FaceUpload, SearchQuery, SearchRequest, UpdateCredential, Written};
use crate::domain::Scope;
use crate::error::{Error, Reason};

/// UploadFace's response to an enrollment (the thumbnail empty in a recorded one).
fn upload_response(out: &EnrollOutcome) -> pb::UploadFaceResponse {
    pb::UploadFaceResponse {
        face: Some(out.face.clone().into()),
        duplicates: out.duplicates.iter().cloned().map(Into::into).collect(),
        thumbnail: out.thumbnail.clone().into(),
        warnings: out.warnings.clone(),
        list_matches: out.list_matches.iter().cloned().map(Into::into).collect(),
    }
}

/// UpdateFace's response to an enrollment (the thumbnail empty in a recorded one).
fn update_response(out: &EnrollOutcome) -> pb::UpdateFaceResponse {
    pb::UpdateFaceResponse {
        enrollment_status: pb::EnrollmentStatus::from(out.user.enrollment) as i32,
        face: Some(out.face.clone().into()),
        replaced_face_id: out.replaced.map(|f| f.to_string()).unwrap_or_default(),
        duplicates: out.duplicates.iter().cloned().map(Into::into).collect(),
        thumbnail: out.thumbnail.clone().into(),
        warnings: out.warnings.clone(),
        list_matches: out.list_matches.iter().cloned().map(Into::into).collect(),
    }
}

/// A searched face as the wire reports it (the caller sent the image or named the face: the
/// vector stays on the server).
fn search_result(mut query: crate::domain::AnalyzedFace) -> pb::DetectedFace {
    query.embedding = None;
    query.into()
}

/// SearchFacesRequest.face_id and image: exactly one, and all_faces only with an image.
fn search_query(image: bytes::Bytes, face_id: String, all_faces: bool) -> Result<SearchQuery, Error> {
    match (image.is_empty(), face_id.is_empty()) {
        (false, true) => Ok(SearchQuery::Image { image, all_faces }),
        (true, false) if !all_faces => Ok(SearchQuery::Face(face_id)),
        (true, false) => Err(Error::invalid(
            Reason::QueryInvalid,
            "all_faces",
            "all_faces searches the faces of an image; a face_id names one face",
        )),
        (true, true) => Err(Error::invalid(Reason::QueryInvalid, "image", "give an image or a face_id to search with")),
        (false, false) => {
            Err(Error::invalid(Reason::QueryInvalid, "face_id", "give an image or a face_id to search with, not both"))
        }
    }
}

/// The FaceService implementation.
#[derive(Debug, Clone)]
pub struct FaceApi {
    app: AppSlot,
    /// Per-item rate limiting of ImportFaces.
    keys: crate::app::KeyRing,
}

impl FaceApi {
    pub fn new(app: AppSlot, keys: crate::app::KeyRing) -> Self {
        FaceApi { app, keys }
    }
}

#[tonic::async_trait]
impl FaceService for FaceApi {
    type ImportFacesStream = super::import_api::ResultStream;

    async fn import_faces(
        &self,
        request: Request<tonic::Streaming<pb::ImportFacesRequest>>,
    ) -> Result<Response<Self::ImportFacesStream>, Status> {
        caller_key(&request, Scope::UsersWrite)?;
        let who = caller_key(&request, Scope::FacesWrite)?;
        let inbound = request.into_inner();
        Ok(Response::new(super::import_api::start(self.app.clone(), self.keys.clone(), who, inbound)?))
    }

    async fn detect_faces(
        &self,
        request: Request<pb::DetectFacesRequest>,
    ) -> Result<Response<pb::DetectFacesResponse>, Status> {
        observed("DetectFaces", call_deadline(&request), async move {
            caller(&request, Scope::FacesRead)?;
            let pb::DetectFacesRequest { image, include_embeddings, include_thumbnails } = request.into_inner();
            let analysis = self.app.get()?.detect_faces(image, include_embeddings, include_thumbnails).await?;
            Ok(Response::new(pb::DetectFacesResponse {
                image_width: analysis.width as i32,
                image_height: analysis.height as i32,
                omitted_faces: analysis.omitted_faces as i32,
                faces: analysis.faces.into_iter().map(Into::into).collect(),
            }))
        })
        .await
    }

    async fn upload_face(
        &self,
        request: Request<pb::UploadFaceRequest>,
    ) -> Result<Response<pb::UploadFaceResponse>, Status> {
        observed("UploadFace", call_deadline(&request), async move {
            let who = caller(&request, Scope::FacesWrite)?;
            let mut request = request.into_inner();
            let request_id = std::mem::take(&mut request.request_id);
            let idem = idempotency("UploadFace", request_id, &request, |out: &EnrollOutcome| {
                let mut response = upload_response(out);
                recorded_duplicates(&mut response.duplicates);
                response
            })?;
            let pb::UploadFaceRequest { user, image, comment, duplicate_policy, multiple_faces_policy, request_id: _ } =
                request;
            let upload = FaceUpload {
                user: convert::user_ref(user, "user")?,
                image,
                comment,
                reject_duplicates: convert::reject_duplicates(duplicate_policy)?,
                multiple_faces: convert::multiple_faces(multiple_faces_policy)?,
            };
            let app = self.app.get()?;
            Ok(Response::new(match app.upload_face(&who, upload, idem).await? {
                Written::Done(out) => upload_response(&out),
                Written::Replayed(bytes) => {
                    let mut response: pb::UploadFaceResponse = replayed(&bytes)?;
                    let face = response.face.as_ref().map(|f| f.face_id.as_str()).unwrap_or_default();
                    response.thumbnail = app.stored_thumbnail(&who.tenant, face).await?.into();
                    current_duplicates(app, &who.tenant, &mut response.duplicates).await?;
                    response
                }
            }))
        })
        .await
    }

    async fn update_face(
        &self,
        request: Request<pb::UpdateFaceRequest>,
    ) -> Result<Response<pb::UpdateFaceResponse>, Status> {
        observed("UpdateFace", call_deadline(&request), async move {
            let credential = update_credential(&request)?;
            // A token's call is another request than a key's with the same body (its response
            // holds no duplicates).
            let (tenant, rpc) = match &credential {
                UpdateCredential::Key(caller) => (caller.tenant.clone(), "UpdateFace".to_owned()),
                UpdateCredential::Token(holder) => {
                    (holder.tenant.clone(), format!("UpdateFace by the token of {}", holder.user_id))
                }
            };
            let mut request = request.into_inner();
            let request_id = std::mem::take(&mut request.request_id);
            let idem = idempotency(&rpc, request_id, &request, |out: &EnrollOutcome| {
                let mut response = update_response(out);
                recorded_duplicates(&mut response.duplicates);
                response
            })?;
            let pb::UpdateFaceRequest {
                user,
                face_id,
                image,
                comment,
                duplicate_policy,
                multiple_faces_policy,
                request_id: _,
            } = request;
            if !face_id.is_empty() {
                convert::face_id(&face_id, "face_id")?;
            }
            let upload = FaceUpload {
                user: convert::user_ref(user, "user")?,
                image,
                comment,
                reject_duplicates: convert::reject_duplicates(duplicate_policy)?,
                multiple_faces: convert::multiple_faces(multiple_faces_policy)?,
            };
            let app = self.app.get()?;
            Ok(Response::new(match app.update_face(credential, upload, Some(&face_id), idem).await? {
                Written::Done(out) => update_response(&out),
                Written::Replayed(bytes) => {
                    let mut response: pb::UpdateFaceResponse = replayed(&bytes)?;
                    let face = response.face.as_ref().map(|f| f.face_id.as_str()).unwrap_or_default();
                    response.thumbnail = app.stored_thumbnail(&tenant, face).await?.into();
                    current_duplicates(app, &tenant, &mut response.duplicates).await?;
                    response
                }
            }))
        })
        .await
    }

    async fn get_face(&self, request: Request<pb::GetFaceRequest>) -> Result<Response<pb::Face>, Status> {
        observed("GetFace", call_deadline(&request), async move {
            let who = caller(&request, Scope::FacesRead)?;
            let pb::GetFaceRequest { face_id } = request.into_inner();
            convert::face_id(&face_id, "face_id")?;
            Ok(Response::new(self.app.get()?.get_face(&who, &face_id).await?.into()))
        })
        .await
    }

    async fn list_faces(
        &self,
        request: Request<pb::ListFacesRequest>,
    ) -> Result<Response<pb::ListFacesResponse>, Status> {
        observed("ListFaces", call_deadline(&request), async move {
            let who = caller(&request, Scope::FacesRead)?;
            let pb::ListFacesRequest { user } = request.into_inner();
            let faces = self.app.get()?.list_faces(&who, &convert::user_ref(user, "user")?).await?;
            Ok(Response::new(pb::ListFacesResponse { faces: faces.into_iter().map(Into::into).collect() }))
        })
        .await
    }

    async fn delete_face(
        &self,
        request: Request<pb::DeleteFaceRequest>,
    ) -> Result<Response<pb::DeleteFaceResponse>, Status> {
        observed("DeleteFace", call_deadline(&request), async move {
            let who = caller(&request, Scope::FacesWrite)?;
            let mut request = request.into_inner();
            let request_id = std::mem::take(&mut request.request_id);
            let idem = idempotency("DeleteFace", request_id, &request, |_: &()| pb::DeleteFaceResponse {})?;
            let pb::DeleteFaceRequest { face_id, request_id: _ } = request;
            convert::face_id(&face_id, "face_id")?;
            self.app.get()?.delete_face(&who, &face_id, idem).await?;
            Ok(Response::new(pb::DeleteFaceResponse {}))
        })
        .await
    }

    async fn get_face_image(
        &self,
        request: Request<pb::GetFaceImageRequest>,
    ) -> Result<Response<pb::FaceImage>, Status> {
        observed("GetFaceImage", call_deadline(&request), async move {
            let who = caller(&request, Scope::FacesRead)?;
            let pb::GetFaceImageRequest { face_id, kind } = request.into_inner();
            convert::face_id(&face_id, "face_id")?;
            let kind = convert::image_kind(kind)?;
            Ok(Response::new(self.app.get()?.face_image(&who, &face_id, kind).await?.into()))
        })
        .await
    }

    async fn search_faces(
        &self,
        request: Request<pb::SearchFacesRequest>,
    ) -> Result<Response<pb::SearchFacesResponse>, Status> {
        observed("SearchFaces", call_deadline(&request), async move {
            let who = caller(&request, Scope::FacesSearch)?;
            let pb::SearchFacesRequest { image, top_k, min_similarity, face_id, all_faces, metadata_filter } =
                request.into_inner();
            let query = search_query(image, face_id, all_faces)?;
            let search = SearchRequest { query, top_k, min_similarity, metadata_filter };
            let out = self.app.get()?.search_faces(&who, search).await?;
            Ok(Response::new(pb::SearchFacesResponse {
                query_face: Some(search_result(out.query)),
                matches: out.matches.into_iter().map(Into::into).collect(),
                other_faces: out.other_faces as i32,
                list_matches: out.list_matches.into_iter().map(Into::into).collect(),
                results: out
                    .results
                    .into_iter()
                    .map(|r| pb::FaceSearchResult {
                        query_face: Some(search_result(r.query)),
                        matches: r.matches.into_iter().map(Into::into).collect(),
                        list_matches: r.list_matches.into_iter().map(Into::into).collect(),
                    })
                    .collect(),
            }))
        })
        .await
    }

    async fn verify_face(
        &self,
        request: Request<pb::VerifyFaceRequest>,
    ) -> Result<Response<pb::VerifyFaceResponse>, Status> {
        observed("VerifyFace", call_deadline(&request), async move {
            let who = caller(&request, Scope::FacesSearch)?;
            let pb::VerifyFaceRequest { user, image } = request.into_inner();
            let out = self.app.get()?.verify_face(&who, &convert::user_ref(user, "user")?, image).await?;
            Ok(Response::new(pb::VerifyFaceResponse {
                r#match: out.matched,
                similarity: out.similarity,
                threshold: out.threshold,
                best_face_id: out.best_face.to_string(),
            }))
        })
        .await
    }
}
