//! Conversions between domain types and `pb` messages. No awaiting, no logging.

use std::time::SystemTime;

use super::pb;
use crate::app::{ImageKind, NewUser, StoredImage, UserRef, UserUpdate};
use crate::domain::{
    AnalyzedFace, BoundingBox, EnrollmentStatus, Face, FaceId, FaceMatch, FaceQuality, MatchDecision, MultipleFaces,
    Point, QualityIssue, User, UserId,
};
use crate::error::{Error, Reason, Result};

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
        let AnalyzedFace { detection, quality, embedding, other_embedding: _, thumbnail } = face;
        pb::DetectedFace {
            r#box: Some(detection.bbox.into()),
            score: detection.score,
            landmarks: detection.landmarks.iter().map(|p| pb::Point::from(*p)).collect(),
            quality: Some(quality.into()),
            embedding: embedding.map(crate::domain::Embedding::into_vec).unwrap_or_default(),
            thumbnail: thumbnail.unwrap_or_default().into(),
            rotation: i32::from(detection.rotation),
        }
    }
}

pub(super) fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    let d = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

impl From<EnrollmentStatus> for pb::EnrollmentStatus {
    fn from(s: EnrollmentStatus) -> Self {
        match s {
            EnrollmentStatus::NotEnrolled => pb::EnrollmentStatus::NotEnrolled,
            EnrollmentStatus::Enrolled => pb::EnrollmentStatus::Enrolled,
            EnrollmentStatus::ReenrollmentRequired => pb::EnrollmentStatus::ReenrollmentRequired,
        }
    }
}

impl From<User> for pb::User {
    fn from(u: User) -> Self {
        let etag = u.etag();
        let User {
            id,
            external_id,
            display_name,
            email,
            phone,
            address,
            metadata,
            enrollment,
            face_ids,
            create_time,
            update_time,
            version: _,
        } = u;
        pb::User {
            user_id: id.to_string(),
            external_id,
            display_name,
            email,
            phone,
            address,
            metadata: metadata.into_iter().collect(),
            enrollment_status: pb::EnrollmentStatus::from(enrollment) as i32,
            face_count: face_ids.len() as i32,
            create_time: Some(timestamp(create_time)),
            update_time: Some(timestamp(update_time)),
            etag,
        }
    }
}

impl From<Face> for pb::Face {
    fn from(f: Face) -> Self {
        let Face {
            id,
            user_id,
            detection,
            quality,
            comment,
            uploaded_by,
            create_time,
            model,
            mime_type: _,
            width: _,
            height: _,
        } = f;
        let detected =
            crate::domain::AnalyzedFace { detection, quality, embedding: None, other_embedding: None, thumbnail: None };
        pb::Face {
            face_id: id.to_string(),
            user_id: user_id.to_string(),
            detection: Some(detected.into()),
            comment,
            uploaded_by,
            create_time: Some(timestamp(create_time)),
            model,
        }
    }
}

impl From<FaceMatch> for pb::FaceMatch {
    fn from(m: FaceMatch) -> Self {
        let FaceMatch { user_id, external_id, face_id, similarity, decision } = m;
        let decision = match decision {
            Some(MatchDecision::Match) => pb::MatchDecision::Match,
            Some(MatchDecision::PossibleMatch) => pb::MatchDecision::PossibleMatch,
            None => pb::MatchDecision::Unspecified,
        };
        pb::FaceMatch {
            user_id: user_id.to_string(),
            external_id,
            face_id: face_id.to_string(),
            similarity,
            decision: decision as i32,
        }
    }
}

impl From<StoredImage> for pb::FaceImage {
    fn from(i: StoredImage) -> Self {
        let StoredImage { data, mime_type, width, height } = i;
        pb::FaceImage { data: data.into(), mime_type, width: width as i32, height: height as i32 }
    }
}

impl From<Point> for pb::Point {
    fn from(p: Point) -> Self {
        pb::Point { x: p.x, y: p.y }
    }
}

/// A required user reference (`field` names it for BadRequest). A user_id that is not one this
/// server writes is INVALID_ARGUMENT, not a lookup that finds nobody.
pub(super) fn user_ref(value: Option<pb::UserRef>, field: &'static str) -> Result<UserRef> {
    let missing = || Error::invalid(Reason::UserRefInvalid, field, "give user.user_id or user.external_id");
    match value.and_then(|r| r.r#ref) {
        Some(pb::user_ref::Ref::UserId(id)) if !id.is_empty() => UserId::parse(&id).map(UserRef::Id).ok_or_else(|| {
            let id_field = match field {
                "user" => "user.user_id",
                other => other,
            };
            Error::invalid(
                Reason::UserRefInvalid,
                id_field,
                "user_id is not a user id: usr_ and 16 lowercase hex digits",
            )
        }),
        Some(pb::user_ref::Ref::ExternalId(external)) if !external.is_empty() => Ok(UserRef::External(external)),
        Some(pb::user_ref::Ref::UserId(_) | pb::user_ref::Ref::ExternalId(_)) | None => Err(missing()),
    }
}

/// A face id as this server writes it: `fce_` and 16 lowercase hex digits.
pub(super) fn face_id(text: &str, field: &'static str) -> Result<FaceId> {
    crate::app::validate::face_id(text, field)
}

/// UploadFace's and UpdateFace's duplicate_policy: true for REJECT. A value the proto does not
/// define is refused rather than read as REPORT.
pub(super) fn reject_duplicates(value: i32) -> Result<bool> {
    match pb::DuplicatePolicy::try_from(value) {
        Ok(pb::DuplicatePolicy::Report) => Ok(false),
        Ok(pb::DuplicatePolicy::Reject) => Ok(true),
        Err(_) => Err(Error::invalid(
            Reason::DuplicatePolicyInvalid,
            "duplicate_policy",
            "duplicate_policy is REPORT or REJECT",
        )
        .with_meta("duplicate_policy", value)),
    }
}

/// UploadFace's and UpdateFace's multiple_faces_policy. A value the proto does not define is
/// refused rather than read as DOMINANT.
pub(super) fn multiple_faces(value: i32) -> Result<MultipleFaces> {
    use pb::enrollment::MultipleFacesPolicy;
    match MultipleFacesPolicy::try_from(value) {
        Ok(MultipleFacesPolicy::Dominant) => Ok(MultipleFaces::Dominant),
        Ok(MultipleFacesPolicy::Reject) => Ok(MultipleFaces::Reject),
        Err(_) => Err(Error::invalid(
            Reason::MultipleFacesPolicyInvalid,
            "multiple_faces_policy",
            "multiple_faces_policy is DOMINANT or REJECT",
        )
        .with_meta("multiple_faces_policy", value)),
    }
}

/// GetFaceImage's kind; a value the proto does not define is refused rather than read as
/// ORIGINAL.
pub(super) fn image_kind(value: i32) -> Result<ImageKind> {
    match pb::ImageKind::try_from(value) {
        Ok(pb::ImageKind::Original) => Ok(ImageKind::Original),
        Ok(pb::ImageKind::Thumbnail) => Ok(ImageKind::Thumbnail),
        Err(_) => {
            Err(Error::invalid(Reason::ImageKindInvalid, "kind", "kind is ORIGINAL or THUMBNAIL")
                .with_meta("kind", value))
        }
    }
}

pub(super) fn new_user(value: Option<pb::User>) -> NewUser {
    let pb::User {
        user_id: _,
        external_id,
        display_name,
        email,
        phone,
        address,
        metadata,
        enrollment_status: _,
        face_count: _,
        create_time: _,
        update_time: _,
        etag: _,
    } = value.unwrap_or_default();
    NewUser { external_id, display_name, email, phone, address, metadata: metadata.into_iter().collect() }
}

/// Resolves an UpdateUser's field mask against its user_update.
pub(super) fn user_update(
    value: Option<pb::User>,
    mask: Option<prost_types::FieldMask>,
    require_face_reenrollment: bool,
) -> Result<UserUpdate> {
    let pb::User { external_id, display_name, email, phone, address, metadata, .. } = value.unwrap_or_default();
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() && !require_face_reenrollment {
        return Err(Error::invalid(
            Reason::UpdateMaskInvalid,
            "update_mask",
            "update_mask names no field (and require_face_reenrollment is false)",
        ));
    }
    let mut update = UserUpdate { require_face_reenrollment, ..UserUpdate::default() };
    for path in paths {
        let path = path.strip_prefix("user_update.").unwrap_or(&path).to_owned();
        match path.as_str() {
            "external_id" => update.external_id = Some(external_id.clone()),
            "display_name" => update.display_name = Some(display_name.clone()),
            "email" => update.email = Some(email.clone()),
            "phone" => update.phone = Some(phone.clone()),
            "address" => update.address = Some(address.clone()),
            "metadata" => update.metadata = Some(metadata.clone().into_iter().collect()),
            other => {
                return Err(Error::invalid(
                    Reason::UpdateMaskInvalid,
                    "update_mask",
                    format!(
                        "{other:?} cannot be updated; paths: external_id, display_name, email, phone, address, metadata"
                    ),
                )
                .with_meta("path", other));
            }
        }
    }
    Ok(update)
}
