//! `FaceService` handlers: convert, call `App`, convert back.

use tonic::{Request, Response, Status};

use super::AppSlot;
use super::pb;
use super::pb::face_service_server::FaceService;
use super::status::unimplemented;

/// The FaceService implementation.
#[derive(Debug, Clone)]
pub struct FaceApi {
    app: AppSlot,
}

impl FaceApi {
    pub fn new(app: AppSlot) -> Self {
        FaceApi { app }
    }
}

#[tonic::async_trait]
impl FaceService for FaceApi {
    async fn detect_faces(
        &self,
        request: Request<pb::DetectFacesRequest>,
    ) -> Result<Response<pb::DetectFacesResponse>, Status> {
        let pb::DetectFacesRequest { image, include_embeddings, include_thumbnails } = request.into_inner();
        let analysis = self.app.get()?.detect_faces(image, include_embeddings, include_thumbnails).await?;
        Ok(Response::new(pb::DetectFacesResponse {
            image_width: analysis.width as i32,
            image_height: analysis.height as i32,
            faces: analysis.faces.into_iter().map(Into::into).collect(),
        }))
    }

    async fn upload_face(&self, _: Request<pb::UploadFaceRequest>) -> Result<Response<pb::UploadFaceResponse>, Status> {
        Err(unimplemented("UploadFace"))
    }

    async fn update_face(&self, _: Request<pb::UpdateFaceRequest>) -> Result<Response<pb::UpdateFaceResponse>, Status> {
        Err(unimplemented("UpdateFace"))
    }

    async fn get_face(&self, _: Request<pb::GetFaceRequest>) -> Result<Response<pb::Face>, Status> {
        Err(unimplemented("GetFace"))
    }

    async fn list_faces(&self, _: Request<pb::ListFacesRequest>) -> Result<Response<pb::ListFacesResponse>, Status> {
        Err(unimplemented("ListFaces"))
    }

    async fn delete_face(&self, _: Request<pb::DeleteFaceRequest>) -> Result<Response<pb::DeleteFaceResponse>, Status> {
        Err(unimplemented("DeleteFace"))
    }

    async fn get_face_image(&self, _: Request<pb::GetFaceImageRequest>) -> Result<Response<pb::FaceImage>, Status> {
        Err(unimplemented("GetFaceImage"))
    }

    async fn search_faces(
        &self,
        _: Request<pb::SearchFacesRequest>,
    ) -> Result<Response<pb::SearchFacesResponse>, Status> {
        Err(unimplemented("SearchFaces"))
    }

    async fn verify_face(&self, _: Request<pb::VerifyFaceRequest>) -> Result<Response<pb::VerifyFaceResponse>, Status> {
        Err(unimplemented("VerifyFace"))
    }
}
