//! Conversions between domain types and `pb` messages. No awaiting, no logging.

use super::pb;
use crate::domain::{AnalyzedFace, BoundingBox, FaceQuality, QualityIssue};

impl From<BoundingBox> for pb::BoundingBox {
    fn from(b: BoundingBox) -> Self {
        let BoundingBox { x_min, y_min, x_max, y_max } = b;
        pb::BoundingBox { x_min, y_min, x_max, y_max }
    }
}

impl From<QualityIssue> for pb::FaceQualityIssue {
    fn from(issue: QualityIssue) -> Self {
        match issue {
            QualityIssue::TooSmall => pb::FaceQualityIssue::FaceQualityTooSmall,
            QualityIssue::LowConfidence => pb::FaceQualityIssue::FaceQualityLowConfidence,
            QualityIssue::Blurry => pb::FaceQualityIssue::FaceQualityBlurry,
            QualityIssue::TooDark => pb::FaceQualityIssue::FaceQualityTooDark,
            QualityIssue::TooBright => pb::FaceQualityIssue::FaceQualityTooBright,
            QualityIssue::Pose => pb::FaceQualityIssue::FaceQualityPose,
        }
    }
}

impl From<FaceQuality> for pb::FaceQuality {
    fn from(q: FaceQuality) -> Self {
        let FaceQuality { face_size, interocular_distance, sharpness, brightness, yaw, pitch, roll, issues, score } = q;
        pb::FaceQuality {
            face_size,
            interocular_distance,
            sharpness,
            brightness,
            yaw,
            pitch,
            roll,
            issues: issues.into_iter().map(|i| pb::FaceQualityIssue::from(i) as i32).collect(),
            score,
        }
    }
}

impl From<AnalyzedFace> for pb::DetectedFace {
    fn from(face: AnalyzedFace) -> Self {
        let AnalyzedFace { detection, quality, embedding, thumbnail } = face;
        pb::DetectedFace {
            r#box: Some(detection.bbox.into()),
            score: detection.score,
            landmarks: detection.landmarks.iter().map(|p| pb::Point { x: p.x, y: p.y }).collect(),
            quality: Some(quality.into()),
            embedding: embedding.map(crate::domain::Embedding::into_vec).unwrap_or_default(),
            thumbnail: thumbnail.unwrap_or_default(),
        }
    }
}
