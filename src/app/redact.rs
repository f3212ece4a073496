//! Hand-written `Debug` for the app's values that carry images or secrets: lengths only, so
//! a `{:?}` in a log or a panic never carries a photo or a re-enrollment token.

use std::fmt;

use super::{EnrollOutcome, FaceUpload, StoredImage};

/// A redacted field: shows its length only.
struct Len(usize);

impl fmt::Debug for Len {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

impl fmt::Debug for FaceUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let FaceUpload { user, image, comment, reject_duplicates, multiple_faces } = self;
        f.debug_struct("FaceUpload")
            .field("user", user)
            .field("image", &Len(image.len()))
            .field("comment", comment)
            .field("reject_duplicates", reject_duplicates)
            .field("multiple_faces", multiple_faces)
            .finish()
    }
}

impl fmt::Debug for StoredImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let StoredImage { data, mime_type, width, height } = self;
        f.debug_struct("StoredImage")
            .field("data", &Len(data.len()))
            .field("mime_type", mime_type)
            .field("width", width)
            .field("height", height)
            .finish()
    }
}

impl fmt::Debug for EnrollOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let EnrollOutcome { face, user, replaced, duplicates, thumbnail, warnings, created_user, list_matches } = self;
        f.debug_struct("EnrollOutcome")
            .field("face", face)
            .field("user", user)
            .field("replaced", replaced)
            .field("duplicates", duplicates)
            .field("thumbnail", &Len(thumbnail.len()))
            .field("warnings", warnings)
            .field("created_user", created_user)
            .field("list_matches", list_matches)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::app::{FaceUpload, StoredImage, UserRef};
    use crate::domain::{AnalyzedFace, Embedding};

    const PHOTO: &[u8] = b"photo-bytes-0123456789";

    fn assert_hidden(text: &str) {
        for leak in ["photo-bytes", "112, 104, 111", "rt_secret", "0.0441"] {
            assert!(!text.contains(leak), "{leak:?} leaks through Debug: {text}");
        }
    }

    #[test]
    fn values_with_images_embeddings_or_tokens_debug_without_them() {
        let embedding = Embedding::from_raw(vec![1.0; crate::domain::EMBEDDING_DIM]).expect("embedding");
        let upload = FaceUpload {
            user: UserRef::External("someone".into()),
            image: PHOTO.into(),
            comment: String::new(),
            reject_duplicates: false,
            multiple_faces: crate::domain::MultipleFaces::Dominant,
        };
        let texts = [
            format!("{upload:?}"),
            format!("{:?}", StoredImage { data: PHOTO.to_vec(), mime_type: "image/png".into(), width: 1, height: 1 }),
            format!("{embedding:?}"),
            format!(
                "{:?}",
                AnalyzedFace {
                    detection: crate::domain::Detection {
                        bbox: crate::domain::BoundingBox::default(),
                        score: 0.9,
                        landmarks: [crate::domain::Point::default(); 5],
                        rotation: 0,
                    },
                    quality: crate::domain::FaceQuality::default(),
                    embedding: Some(embedding.clone()),
                    other_embedding: None,
                    thumbnail: Some(PHOTO.to_vec()),
                }
            ),
        ];
        for text in &texts {
            assert_hidden(text);
        }
        assert!(texts[0].contains("22 bytes") && texts[0].contains("someone"), "{}", texts[0]);
    }
}
