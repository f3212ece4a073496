//! Hand-written `Debug` for the messages that carry images, embeddings or secrets (build.rs
//! skips prost's derive for them): lengths only, never the bytes, vectors or token text.

use std::fmt;

use super::pb;

/// A redacted field: shows its length only.
struct Len(usize, &'static str);

impl fmt::Debug for Len {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} {}>", self.0, self.1)
    }
}

fn bytes(data: &[u8]) -> Len {
    Len(data.len(), "bytes")
}

impl fmt::Debug for pb::DetectFacesRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::DetectFacesRequest { image, include_embeddings, include_thumbnails } = self;
        f.debug_struct("DetectFacesRequest")
            .field("image", &bytes(image))
            .field("include_embeddings", include_embeddings)
            .field("include_thumbnails", include_thumbnails)
            .finish()
    }
}

impl fmt::Debug for pb::UploadFaceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::UploadFaceRequest { user, image, comment, duplicate_policy, multiple_faces_policy, request_id } = self;
        f.debug_struct("UploadFaceRequest")
            .field("user", user)
            .field("image", &bytes(image))
            .field("comment", comment)
            .field("duplicate_policy", duplicate_policy)
            .field("multiple_faces_policy", multiple_faces_policy)
            .field("request_id", request_id)
            .finish()
    }
}

impl fmt::Debug for pb::ImportItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::ImportItem { item_id, request_id, user, image, comment, duplicate_policy, multiple_faces_policy } =
            self;
        f.debug_struct("ImportItem")
            .field("item_id", item_id)
            .field("request_id", request_id)
            .field("user", user)
            .field("image", &bytes(image))
            .field("comment", comment)
            .field("duplicate_policy", duplicate_policy)
            .field("multiple_faces_policy", multiple_faces_policy)
            .finish()
    }
}

impl fmt::Debug for pb::UpdateFaceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::UpdateFaceRequest {
            user,
            face_id,
            image,
            comment,
            duplicate_policy,
            multiple_faces_policy,
            request_id,
        } = self;
        f.debug_struct("UpdateFaceRequest")
            .field("user", user)
            .field("face_id", face_id)
            .field("image", &bytes(image))
            .field("comment", comment)
            .field("duplicate_policy", duplicate_policy)
            .field("multiple_faces_policy", multiple_faces_policy)
            .field("request_id", request_id)
            .finish()
    }
}

impl fmt::Debug for pb::SearchFacesRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::SearchFacesRequest { image, top_k, min_similarity, face_id, all_faces, metadata_filter } = self;
        f.debug_struct("SearchFacesRequest")
            .field("image", &bytes(image))
            .field("top_k", top_k)
            .field("min_similarity", min_similarity)
            .field("face_id", face_id)
            .field("all_faces", all_faces)
            .field("metadata_filter", &format_args!("<{} pairs>", metadata_filter.len()))
            .finish()
    }
}

impl fmt::Debug for pb::AddListEntryRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::AddListEntryRequest { list_id, source, comment, request_id } = self;
        let source = match source {
            Some(pb::add_list_entry_request::Source::Image(image)) => format!("image: {:?}", bytes(image)),
            Some(pb::add_list_entry_request::Source::FaceId(id)) => format!("face_id: {id}"),
            None => "none".to_owned(),
        };
        f.debug_struct("AddListEntryRequest")
            .field("list_id", list_id)
            .field("source", &format_args!("{source}"))
            .field("comment", &format_args!("<{} chars>", comment.chars().count()))
            .field("request_id", request_id)
            .finish()
    }
}

impl fmt::Debug for pb::VerifyFaceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::VerifyFaceRequest { user, image } = self;
        f.debug_struct("VerifyFaceRequest").field("user", user).field("image", &bytes(image)).finish()
    }
}

impl fmt::Debug for pb::UpdateUserResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::UpdateUserResponse { user, reenrollment_token } = self;
        f.debug_struct("UpdateUserResponse")
            .field("user", user)
            .field("reenrollment_token", &bytes(reenrollment_token.as_bytes()))
            .finish()
    }
}

impl fmt::Debug for pb::FaceImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::FaceImage { data, mime_type, width, height } = self;
        f.debug_struct("FaceImage")
            .field("data", &bytes(data))
            .field("mime_type", mime_type)
            .field("width", width)
            .field("height", height)
            .finish()
    }
}

impl fmt::Debug for pb::UploadFaceResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::UploadFaceResponse { face, duplicates, thumbnail, warnings, list_matches } = self;
        f.debug_struct("UploadFaceResponse")
            .field("face", face)
            .field("duplicates", duplicates)
            .field("thumbnail", &bytes(thumbnail))
            .field("warnings", warnings)
            .field("list_matches", list_matches)
            .finish()
    }
}

impl fmt::Debug for pb::UpdateFaceResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::UpdateFaceResponse {
            face,
            replaced_face_id,
            duplicates,
            thumbnail,
            enrollment_status,
            warnings,
            list_matches,
        } = self;
        f.debug_struct("UpdateFaceResponse")
            .field("face", face)
            .field("replaced_face_id", replaced_face_id)
            .field("duplicates", duplicates)
            .field("thumbnail", &bytes(thumbnail))
            .field("enrollment_status", enrollment_status)
            .field("warnings", warnings)
            .field("list_matches", list_matches)
            .finish()
    }
}

impl fmt::Debug for pb::DetectedFace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pb::DetectedFace { r#box, score, landmarks, quality, embedding, thumbnail, rotation } = self;
        f.debug_struct("DetectedFace")
            .field("box", r#box)
            .field("score", score)
            .field("landmarks", landmarks)
            .field("quality", quality)
            .field("embedding", &Len(embedding.len(), "floats"))
            .field("thumbnail", &bytes(thumbnail))
            .field("rotation", rotation)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::pb;

    const PHOTO: &[u8] = b"photo-bytes-0123456789";
    const TOKEN: &str = "rt_secret0123456789";

    fn assert_hidden(text: &str) {
        for leak in ["photo-bytes", "112, 104, 111", "rt_secret", "0.123456", "0.654321"] {
            assert!(!text.contains(leak), "{leak:?} leaks through Debug: {text}");
        }
    }

    #[test]
    fn messages_with_images_embeddings_or_tokens_debug_without_them() {
        let face = pb::DetectedFace {
            embedding: vec![0.123_456; 512],
            thumbnail: PHOTO.to_vec().into(),
            score: 0.654_321,
            ..pb::DetectedFace::default()
        };
        let texts = [
            format!("{:?}", pb::DetectFacesRequest { image: PHOTO.into(), ..Default::default() }),
            format!("{:?}", pb::UploadFaceRequest { image: PHOTO.into(), ..Default::default() }),
            format!("{:?}", pb::UpdateFaceRequest { image: PHOTO.into(), ..Default::default() }),
            format!("{:?}", pb::SearchFacesRequest { image: PHOTO.into(), ..Default::default() }),
            format!("{:?}", pb::VerifyFaceRequest { image: PHOTO.into(), ..Default::default() }),
            format!("{:?}", pb::UpdateUserResponse { reenrollment_token: TOKEN.into(), ..Default::default() }),
            format!("{:?}", pb::FaceImage { data: PHOTO.into(), ..Default::default() }),
            format!("{:?}", pb::UploadFaceResponse { thumbnail: PHOTO.into(), ..Default::default() }),
            format!("{:?}", pb::UpdateFaceResponse { thumbnail: PHOTO.into(), ..Default::default() }),
            format!("{:?}", pb::DetectFacesResponse { faces: vec![face.clone()], ..Default::default() }),
            format!("{face:?}"),
            format!("{:?}", pb::ImportItem { image: PHOTO.into(), ..Default::default() }),
            format!(
                "{:?}",
                pb::AddListEntryRequest {
                    source: Some(pb::add_list_entry_request::Source::Image(PHOTO.into())),
                    ..Default::default()
                }
            ),
        ];
        for text in &texts {
            let text = text.replace("0.654321", "score"); // the score is not secret
            assert_hidden(&text);
        }
        assert!(texts[0].contains("22 bytes"), "{}", texts[0]);
        assert!(texts[5].contains("19 bytes"), "{}", texts[5]);
        assert!(texts[10].contains("512"), "{}", texts[10]);
    }
}
