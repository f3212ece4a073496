//! Plain data types shared by every layer: detections, landmarks, quality, embeddings.
//! No I/O, no tonic, no sled, no ort.

/// Dimension of the w600k_mbf embedding.
pub const EMBEDDING_DIM: usize = 512;

/// A point in pixels of the orientation-corrected image.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

/// Axis-aligned box in pixels; `x_min <= x_max`, `y_min <= y_max`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BoundingBox {
    pub x_min: f32,
    pub y_min: f32,
    pub x_max: f32,
    pub y_max: f32,
}

impl BoundingBox {
    pub fn width(&self) -> f32 {
        self.x_max - self.x_min
    }

    pub fn height(&self) -> f32 {
        self.y_max - self.y_min
    }

    /// Area in square pixels (0 for a degenerate box).
    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    pub fn center(&self) -> Point {
        Point { x: (self.x_min + self.x_max) / 2.0, y: (self.y_min + self.y_max) / 2.0 }
    }

    /// Intersection over union, 0 when either box is empty.
    pub fn iou(&self, other: &BoundingBox) -> f32 {
        let w = (self.x_max.min(other.x_max) - self.x_min.max(other.x_min)).max(0.0);
        let h = (self.y_max.min(other.y_max) - self.y_min.max(other.y_min)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

/// The five SCRFD keypoints in image order: left eye, right eye (as seen), nose tip, left and
/// right mouth corner.
pub type Landmarks = [Point; 5];

/// One face found by the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub bbox: BoundingBox,
    /// Detector confidence, 0-1.
    pub score: f32,
    pub landmarks: Landmarks,
    /// How far the image was turned clockwise, degrees (0, 90, 180 or 270), for the detector
    /// to find this face upright. The box and landmarks are in the image as sent whatever it is.
    pub rotation: u16,
}

/// A quality problem that keeps a face from being enrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QualityIssue {
    TooSmall,
    LowConfidence,
    Blurry,
    TooDark,
    TooBright,
    Pose,
}

/// Measured quality of one face, with the issues found against the enrollment thresholds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaceQuality {
    /// Shorter side of the face box, pixels.
    pub face_size: f32,
    /// Distance between the eye centres, pixels.
    pub interocular_distance: f32,
    /// Variance of the Laplacian of the aligned grey face.
    pub sharpness: f32,
    /// Mean luma of the aligned face, 0-255.
    pub brightness: f32,
    /// Degrees, estimated from the landmarks.
    pub yaw: f32,
    pub pitch: f32,
    pub roll: f32,
    pub issues: Vec<QualityIssue>,
    /// 0-1 summary for ranking faces; not a probability.
    pub score: f32,
}

impl FaceQuality {
    /// True when the face passes the enrollment gate.
    pub fn acceptable(&self) -> bool {
        self.issues.is_empty()
    }
}

/// An L2-normalised face embedding of [`EMBEDDING_DIM`] floats. Its Debug shows the
/// dimension only: an embedding is biometric data.
#[derive(Clone, PartialEq)]
pub struct Embedding(Vec<f32>);

impl std::fmt::Debug for Embedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Embedding(<{} floats>)", self.0.len())
    }
}

impl Embedding {
    /// Normalises `raw` to unit length; `None` when its length is wrong or its norm is zero or
    /// not finite.
    pub fn from_raw(mut raw: Vec<f32>) -> Option<Self> {
        if raw.len() != EMBEDDING_DIM {
            return None;
        }
        let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return None;
        }
        raw.iter_mut().for_each(|v| *v /= norm);
        Some(Embedding(raw))
    }

    /// Wraps stored values that were normalised when written; `None` when the length is
    /// wrong or the norm is off by more than 1e-3 (corruption).
    pub fn from_normalized(values: Vec<f32>) -> Option<Self> {
        let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        (values.len() == EMBEDDING_DIM && (norm - 1.0).abs() < 1e-3).then_some(Embedding(values))
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    /// Cosine similarity (a dot product, both sides being unit vectors).
    pub fn similarity(&self, other: &Embedding) -> f32 {
        self.0.iter().zip(&other.0).map(|(a, b)| a * b).sum()
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.0
    }
}

/// What an enrollment does with a photo in which more than one face passes the quality gate
/// (`inference::enrollable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MultipleFaces {
    /// Enroll the face that clearly dominates the others, with the warning OTHER_FACES_IGNORED.
    #[default]
    Dominant,
    /// Exactly one face may pass the gate (the first milestone's rule).
    Reject,
}

/// One analysed face: detection, quality and, when asked for, embedding and thumbnail (Debug
/// shows the thumbnail's length only).
#[derive(Clone)]
pub struct AnalyzedFace {
    pub detection: Detection,
    pub quality: FaceQuality,
    pub embedding: Option<Embedding>,
    /// By the other model while the store keeps two (a reindex; see `EmbedWith`).
    pub other_embedding: Option<Embedding>,
    /// Square JPEG "zoomed face".
    pub thumbnail: Option<Vec<u8>>,
}

impl std::fmt::Debug for AnalyzedFace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let AnalyzedFace { detection, quality, embedding, other_embedding: _, thumbnail } = self;
        f.debug_struct("AnalyzedFace")
            .field("detection", detection)
            .field("quality", quality)
            .field("embedding", embedding)
            .field("thumbnail", &format_args!("{:?} bytes", thumbnail.as_ref().map(Vec::len)))
            .finish()
    }
}

/// Result of running the pipeline on one image. Faces are sorted largest first.
#[derive(Debug, Clone)]
pub struct ImageAnalysis {
    pub width: u32,
    pub height: u32,
    pub faces: Vec<AnalyzedFace>,
    /// Faces found beyond the per-image cap and not analysed (the smallest ones).
    pub omitted_faces: usize,
}

/// A tenant's name, from the API key. 1-64 characters of `a-z A-Z 0-9 . _ -`, so it can
/// prefix store keys unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(String);

impl Tenant {
    /// `None` when the name is empty, too long or has other characters.
    pub fn new(name: &str) -> Option<Self> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        ok.then(|| Tenant(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! id_type {
    ($name:ident, $prefix:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl $name {
            /// Parses the wire form, exactly as `Display` writes it: the prefix and 16 lowercase
            /// hex digits. No sign, no other case, no other length: one id, one spelling.
            pub fn parse(text: &str) -> Option<Self> {
                let hex = text.strip_prefix($prefix)?;
                if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return None;
                }
                // from_str_radix alone would also take a leading '+'.
                u64::from_str_radix(hex, 16).ok().map($name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}{:016x}", $prefix, self.0)
            }
        }
    };
}

id_type!(UserId, "usr_", "Server-assigned user id: random, rendered `usr_` + 16 hex digits.");
id_type!(FaceId, "fce_", "Server-assigned face id: random, rendered `fce_` + 16 hex digits.");
id_type!(ListId, "lst_", "Server-assigned face list id: random, rendered `lst_` + 16 hex digits.");
id_type!(EntryId, "ent_", "Server-assigned list entry id: random, rendered `ent_` + 16 hex digits.");

/// What a face list does to an enrollment whose face matches one of its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// Refused: FAILED_PRECONDITION FACE_IN_BLOCKLIST, nothing stored.
    Block,
    /// Stored and reported.
    Watch,
    /// Stored, and DUPLICATE_FACE rejection is waived.
    Allow,
}

impl ListKind {
    /// The stored number, as facevault.v1.ListKind's (0 is no kind: a record without one is
    /// refused, never read as a blocklist).
    pub fn number(self) -> i32 {
        match self {
            ListKind::Block => 1,
            ListKind::Watch => 2,
            ListKind::Allow => 3,
        }
    }

    pub fn from_number(n: i32) -> Option<Self> {
        match n {
            1 => Some(ListKind::Block),
            2 => Some(ListKind::Watch),
            3 => Some(ListKind::Allow),
            _ => None,
        }
    }
}

/// A face list of a tenant (the entries are stored apart).
#[derive(Debug, Clone, PartialEq)]
pub struct FaceList {
    pub id: ListId,
    pub name: String,
    pub kind: ListKind,
    /// `None`: the match threshold of the active model.
    pub threshold: Option<f32>,
    /// Entries the list holds (filled by reads; ignored by writes).
    pub entry_count: u64,
    pub create_time: std::time::SystemTime,
}

/// One face of a list: where it was found, and who added it. Its embedding and thumbnail are
/// stored beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListEntry {
    pub id: EntryId,
    pub list_id: ListId,
    pub detection: Detection,
    pub quality: FaceQuality,
    pub comment: String,
    /// Name of the API key that added it.
    pub added_by: String,
    /// The stored face it was copied from, if any.
    pub source_face: Option<FaceId>,
    /// Embedder id.
    pub model: String,
    pub create_time: std::time::SystemTime,
}

/// A list entry close enough to a face (at or above its list's threshold).
#[derive(Debug, Clone, PartialEq)]
pub struct ListMatch {
    pub list_id: ListId,
    pub list_name: String,
    pub kind: ListKind,
    pub entry_id: EntryId,
    pub similarity: f32,
}

/// Where a user stands with face enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentStatus {
    NotEnrolled,
    Enrolled,
    ReenrollmentRequired,
}

/// A user of a tenant as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: UserId,
    pub external_id: String,
    pub display_name: String,
    pub email: String,
    pub phone: String,
    pub address: String,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub enrollment: EnrollmentStatus,
    /// Oldest first.
    pub face_ids: Vec<FaceId>,
    pub create_time: std::time::SystemTime,
    pub update_time: std::time::SystemTime,
    /// Incremented on every write.
    pub version: u64,
}

impl User {
    /// A user with only an external id, not yet stored (the store assigns the id) and with no
    /// face, created and updated at `now`, version 1.
    pub fn unenrolled(external_id: impl Into<String>, now: std::time::SystemTime) -> Self {
        User {
            id: UserId(0),
            external_id: external_id.into(),
            display_name: String::new(),
            email: String::new(),
            phone: String::new(),
            address: String::new(),
            metadata: Default::default(),
            enrollment: EnrollmentStatus::NotEnrolled,
            face_ids: Vec::new(),
            create_time: now,
            update_time: now,
            version: 1,
        }
    }

    /// The etag clients send back for optimistic concurrency.
    pub fn etag(&self) -> String {
        format!("v{}", self.version)
    }
}

/// A stored face (its embedding, original and thumbnail are stored beside it).
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    pub id: FaceId,
    pub user_id: UserId,
    pub detection: Detection,
    pub quality: FaceQuality,
    pub comment: String,
    /// Name of the API key that uploaded it.
    pub uploaded_by: String,
    pub create_time: std::time::SystemTime,
    /// Embedder id.
    pub model: String,
    pub mime_type: String,
    pub width: u32,
    pub height: u32,
}

/// How close a face is to another user's, by the configured thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchDecision {
    Match,
    PossibleMatch,
}

/// A face of another user found close to a query face.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceMatch {
    pub user_id: UserId,
    pub external_id: String,
    pub face_id: FaceId,
    pub similarity: f32,
    /// `None` below the possible-match threshold (a search with a lower `min_similarity`).
    pub decision: Option<MatchDecision>,
}

/// Permissions an API key can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    UsersRead,
    UsersWrite,
    FacesRead,
    FacesWrite,
    FacesSearch,
    /// ListService reads (GetFaceList, ListFaceLists, ListListEntries).
    ListsRead,
    /// ListService writes (CreateFaceList, DeleteFaceList, AddListEntry, DeleteListEntry).
    ListsWrite,
    /// AdminService: the service as a whole, every tenant.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 8] = [
        Scope::UsersRead,
        Scope::UsersWrite,
        Scope::FacesRead,
        Scope::FacesWrite,
        Scope::FacesSearch,
        Scope::ListsRead,
        Scope::ListsWrite,
        Scope::Admin,
    ];

    /// The keys-file spelling, e.g. `faces:write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::UsersRead => "users:read",
            Scope::UsersWrite => "users:write",
            Scope::FacesRead => "faces:read",
            Scope::FacesWrite => "faces:write",
            Scope::FacesSearch => "faces:search",
            Scope::ListsRead => "lists:read",
            Scope::ListsWrite => "lists:write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Optional limits on what one tenant may store (keys file, `tenants`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuota {
    /// Most users the tenant may have.
    #[serde(default)]
    pub max_users: Option<usize>,
    /// Most faces the tenant may have, over all its users.
    #[serde(default)]
    pub max_faces: Option<usize>,
}

/// Who is calling: an API key's name, its tenant and scopes.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub key_name: String,
    pub tenant: Tenant,
    pub scopes: Vec<Scope>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_their_canonical_wire_form() {
        let id = UserId(0x0123_4567_89ab_cdef);
        assert_eq!(id.to_string(), "usr_0123456789abcdef");
        assert_eq!(UserId::parse("usr_0123456789abcdef"), Some(id));
        assert_eq!(FaceId::parse("fce_ffffffffffffffff"), Some(FaceId(u64::MAX)));
        for bad in [
            "usr_+123456789abcdef",
            "usr_+123456789abcde",
            "usr_-123456789abcde",
            "usr_ 123456789abcde",
            "usr_0123456789ABCDEF",
            "USR_0123456789abcdef",
            "usr_0123456789abcde",
            "usr_0123456789abcdef0",
            "usr_0x23456789abcdef",
            "usr_zz",
            "fce_0123456789abcdef",
            "",
        ] {
            assert_eq!(UserId::parse(bad), None, "{bad:?}");
        }
        assert_eq!(FaceId::parse("fce_+123456789abcde"), None);
        assert_eq!(FaceId::parse("usr_0123456789abcdef"), None);
    }
}
