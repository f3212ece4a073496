//! Conversions between domain types and the on-disk protobuf records
//! (proto/facevault/storage/v1/records.proto).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::domain::{BoundingBox, Detection, EnrollmentStatus, Face, FaceId, FaceQuality, Point, User, UserId};

#[allow(clippy::all, clippy::pedantic, unreachable_pub, missing_debug_implementations)]
// Generated code: `#[expect]` would fire "unfulfilled" on lints it happens not to trip.
pub(crate) mod pb {
    include!(concat!(env!("OUT_DIR"), "/facevault.storage.v1.rs"));
}

pub(crate) fn to_nanos(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

pub(crate) fn from_nanos(nanos: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

fn status_to_i32(status: EnrollmentStatus) -> i32 {
    match status {
        EnrollmentStatus::NotEnrolled => 1,
        EnrollmentStatus::Enrolled => 2,
        EnrollmentStatus::ReenrollmentRequired => 3,
    }
}

fn status_from_i32(value: i32) -> EnrollmentStatus {
    match value {
        2 => EnrollmentStatus::Enrolled,
        3 => EnrollmentStatus::ReenrollmentRequired,
        _ => EnrollmentStatus::NotEnrolled,
    }
}

pub(crate) fn user_to_record(user: &User, token_hash: Vec<u8>) -> pb::UserRecord {
    pb::UserRecord {
        id: user.id.0,
        external_id: user.external_id.clone(),
        display_name: user.display_name.clone(),
        email: user.email.clone(),
        phone: user.phone.clone(),
        address: user.address.clone(),
        metadata: user.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        enrollment_status: status_to_i32(user.enrollment),
        face_ids: user.face_ids.iter().map(|f| f.0).collect(),
        create_time_ns: to_nanos(user.create_time),
        update_time_ns: to_nanos(user.update_time),
        version: user.version,
        reenrollment_token_hash: token_hash,
    }
}

pub(crate) fn user_from_record(r: pb::UserRecord) -> User {
    User {
        id: UserId(r.id),
        external_id: r.external_id,
        display_name: r.display_name,
        email: r.email,
        phone: r.phone,
        address: r.address,
        metadata: r.metadata.into_iter().collect(),
        enrollment: status_from_i32(r.enrollment_status),
        face_ids: r.face_ids.into_iter().map(FaceId).collect(),
        create_time: from_nanos(r.create_time_ns),
        update_time: from_nanos(r.update_time_ns),
        version: r.version,
    }
}

/// A detection as records keep it: bbox (x_min, y_min, x_max, y_max), score, landmarks as five
/// (x, y) pairs, rotation.
pub(crate) fn detection_fields(d: &Detection) -> (Vec<f32>, f32, Vec<f32>, u32) {
    (
        vec![d.bbox.x_min, d.bbox.y_min, d.bbox.x_max, d.bbox.y_max],
        d.score,
        d.landmarks.iter().flat_map(|p| [p.x, p.y]).collect(),
        u32::from(d.rotation),
    )
}

/// The detection of a record's fields (missing values read as 0).
pub(crate) fn detection_from_fields(bbox: &[f32], score: f32, landmarks: &[f32], rotation: u32) -> Detection {
    let b = |i: usize| bbox.get(i).copied().unwrap_or(0.0);
    let mut points = [Point::default(); 5];
    for (i, p) in points.iter_mut().enumerate() {
        *p = Point {
            x: landmarks.get(2 * i).copied().unwrap_or(0.0),
            y: landmarks.get(2 * i + 1).copied().unwrap_or(0.0),
        };
    }
    Detection {
        bbox: BoundingBox { x_min: b(0), y_min: b(1), x_max: b(2), y_max: b(3) },
        score,
        landmarks: points,
        rotation: u16::try_from(rotation % 360).unwrap_or(0),
    }
}

pub(crate) fn quality_to_record(q: &FaceQuality) -> pb::QualityRecord {
    pb::QualityRecord {
        face_size: q.face_size,
        interocular_distance: q.interocular_distance,
        sharpness: q.sharpness,
        brightness: q.brightness,
        yaw: q.yaw,
        pitch: q.pitch,
        roll: q.roll,
        score: q.score,
    }
}

pub(crate) fn quality_from_record(q: Option<pb::QualityRecord>) -> FaceQuality {
    let q = q.unwrap_or_default();
    FaceQuality {
        face_size: q.face_size,
        interocular_distance: q.interocular_distance,
        sharpness: q.sharpness,
        brightness: q.brightness,
        yaw: q.yaw,
        pitch: q.pitch,
        roll: q.roll,
        issues: Vec::new(),
        score: q.score,
    }
}

pub(crate) fn face_to_record(face: &Face) -> pb::FaceRecord {
    let (bbox, score, landmarks, rotation) = detection_fields(&face.detection);
    pb::FaceRecord {
        id: face.id.0,
        user_id: face.user_id.0,
        bbox,
        score,
        landmarks,
        quality: Some(quality_to_record(&face.quality)),
        comment: face.comment.clone(),
        uploaded_by: face.uploaded_by.clone(),
        create_time_ns: to_nanos(face.create_time),
        model: face.model.clone(),
        mime_type: face.mime_type.clone(),
        width: face.width,
        height: face.height,
        rotation,
    }
}

pub(crate) fn face_from_record(r: pb::FaceRecord) -> Face {
    Face {
        id: FaceId(r.id),
        user_id: UserId(r.user_id),
        detection: detection_from_fields(&r.bbox, r.score, &r.landmarks, r.rotation),
        quality: quality_from_record(r.quality),
        comment: r.comment,
        uploaded_by: r.uploaded_by,
        create_time: from_nanos(r.create_time_ns),
        model: r.model,
        mime_type: r.mime_type,
        width: r.width,
        height: r.height,
    }
}
