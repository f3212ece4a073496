//! The one error type of facevault and its stable reason codes (design/API.md).
//! Library errors (ort, image, sled) are translated where they occur; nothing here knows gRPC.

use std::fmt;
use std::time::Duration;

/// Crate-wide result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Explanatory numbers attached to an error (ErrorInfo metadata on the wire).
pub type Metadata = Vec<(&'static str, String)>;

/// Stable UPPER_SNAKE reason codes; clients match on these strings, so never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    ImageEmpty,
    ImageTooLarge,
    ImageDimensionsTooLarge,
    ImageUndecodable,
    NoFaceDetected,
    MultipleFacesDetected,
    FaceTooSmall,
    LowFaceQuality,
    ExternalIdInvalid,
    EmailInvalid,
    PhoneInvalid,
    DisplayNameInvalid,
    AddressTooLong,
    MetadataInvalid,
    UpdateMaskInvalid,
    UserRefInvalid,
    FaceIdInvalid,
    PageSizeInvalid,
    PageTokenInvalid,
    TopKInvalid,
    MinSimilarityInvalid,
    DuplicatePolicyInvalid,
    MultipleFacesPolicyInvalid,
    ImageKindInvalid,
    CommentTooLong,
    UserNotFound,
    FaceNotFound,
    ExternalIdTaken,
    DuplicateFace,
    FaceLimitReached,
    NoEnrolledFace,
    EtagMismatch,
    ApiKeyMissing,
    ApiKeyInvalid,
    ReenrollmentTokenInvalid,
    ScopeMissing,
    Overloaded,
    RateLimited,
    QuotaExceeded,
    Unavailable,
    Internal,
    NoCandidateModel,
    ReindexRunning,
    ReindexNotReady,
    ReindexNotCutOver,
    ModelsChanged,
    RequestIdInvalid,
    RequestIdReused,
    RequestIdInFlight,
    ItemIdInvalid,
    ListNotFound,
    EntryNotFound,
    ListNameInvalid,
    ThresholdInvalid,
    ListKindInvalid,
    FaceInBlocklist,
    QueryInvalid,
}

impl Reason {
    /// The wire form, as written in design/API.md.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ImageEmpty => "IMAGE_EMPTY",
            Reason::ImageTooLarge => "IMAGE_TOO_LARGE",
            Reason::ImageDimensionsTooLarge => "IMAGE_DIMENSIONS_TOO_LARGE",
            Reason::ImageUndecodable => "IMAGE_UNDECODABLE",
            Reason::NoFaceDetected => "NO_FACE_DETECTED",
            Reason::MultipleFacesDetected => "MULTIPLE_FACES_DETECTED",
            Reason::FaceTooSmall => "FACE_TOO_SMALL",
            Reason::LowFaceQuality => "LOW_FACE_QUALITY",
            Reason::ExternalIdInvalid => "EXTERNAL_ID_INVALID",
            Reason::EmailInvalid => "EMAIL_INVALID",
            Reason::PhoneInvalid => "PHONE_INVALID",
            Reason::DisplayNameInvalid => "DISPLAY_NAME_INVALID",
            Reason::AddressTooLong => "ADDRESS_TOO_LONG",
            Reason::MetadataInvalid => "METADATA_INVALID",
            Reason::UpdateMaskInvalid => "UPDATE_MASK_INVALID",
            Reason::UserRefInvalid => "USER_REF_INVALID",
            Reason::FaceIdInvalid => "FACE_ID_INVALID",
            Reason::PageSizeInvalid => "PAGE_SIZE_INVALID",
            Reason::PageTokenInvalid => "PAGE_TOKEN_INVALID",
            Reason::TopKInvalid => "TOP_K_INVALID",
            Reason::MinSimilarityInvalid => "MIN_SIMILARITY_INVALID",
            Reason::DuplicatePolicyInvalid => "DUPLICATE_POLICY_INVALID",
            Reason::MultipleFacesPolicyInvalid => "MULTIPLE_FACES_POLICY_INVALID",
            Reason::ImageKindInvalid => "IMAGE_KIND_INVALID",
            Reason::CommentTooLong => "COMMENT_TOO_LONG",
            Reason::UserNotFound => "USER_NOT_FOUND",
            Reason::FaceNotFound => "FACE_NOT_FOUND",
            Reason::ExternalIdTaken => "EXTERNAL_ID_TAKEN",
            Reason::DuplicateFace => "DUPLICATE_FACE",
            Reason::FaceLimitReached => "FACE_LIMIT_REACHED",
            Reason::NoEnrolledFace => "NO_ENROLLED_FACE",
            Reason::EtagMismatch => "ETAG_MISMATCH",
            Reason::ApiKeyMissing => "API_KEY_MISSING",
            Reason::ApiKeyInvalid => "API_KEY_INVALID",
            Reason::ReenrollmentTokenInvalid => "REENROLLMENT_TOKEN_INVALID",
            Reason::ScopeMissing => "SCOPE_MISSING",
            Reason::Overloaded => "OVERLOADED",
            Reason::RateLimited => "RATE_LIMITED",
            Reason::QuotaExceeded => "QUOTA_EXCEEDED",
            Reason::Unavailable => "UNAVAILABLE",
            Reason::Internal => "INTERNAL",
            Reason::NoCandidateModel => "NO_CANDIDATE_MODEL",
            Reason::ReindexRunning => "REINDEX_RUNNING",
            Reason::ReindexNotReady => "REINDEX_NOT_READY",
            Reason::ReindexNotCutOver => "REINDEX_NOT_CUT_OVER",
            Reason::ModelsChanged => "MODELS_CHANGED",
            Reason::RequestIdInvalid => "REQUEST_ID_INVALID",
            Reason::RequestIdReused => "REQUEST_ID_REUSED",
            Reason::RequestIdInFlight => "REQUEST_ID_IN_FLIGHT",
            Reason::ItemIdInvalid => "ITEM_ID_INVALID",
            Reason::ListNotFound => "LIST_NOT_FOUND",
            Reason::EntryNotFound => "ENTRY_NOT_FOUND",
            Reason::ListNameInvalid => "LIST_NAME_INVALID",
            Reason::ThresholdInvalid => "THRESHOLD_INVALID",
            Reason::ListKindInvalid => "LIST_KIND_INVALID",
            Reason::FaceInBlocklist => "FACE_IN_BLOCKLIST",
            Reason::QueryInvalid => "QUERY_INVALID",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong in a request, by the class the caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong; `field` names the proto field when one is to blame.
    #[error("{message}")]
    InvalidArgument { reason: Reason, field: Option<&'static str>, message: String, metadata: Metadata },
    /// The addressed user or face does not exist (in the caller's tenant).
    #[error("{message}")]
    NotFound { reason: Reason, message: String, metadata: Metadata },
    /// The thing to create exists already (external id, duplicate face).
    #[error("{message}")]
    AlreadyExists { reason: Reason, message: String, metadata: Metadata },
    /// The request is valid but the state does not allow it (face limit, no enrolled face).
    #[error("{message}")]
    FailedPrecondition { reason: Reason, message: String, metadata: Metadata },
    /// Optimistic concurrency failed (stale etag).
    #[error("{message}")]
    Aborted { reason: Reason, message: String, metadata: Metadata },
    /// No credential, or an unknown one.
    #[error("{message}")]
    Unauthenticated { reason: Reason, message: String },
    /// The credential lacks the scope the rpc needs.
    #[error("{message}")]
    PermissionDenied { reason: Reason, message: String, metadata: Metadata },
    /// Out of capacity: the inference queue is full (OVERLOADED) or the key's rate is used up
    /// (RATE_LIMITED). The caller should retry after `retry_after` when given.
    #[error("{message}")]
    ResourceExhausted { reason: Reason, message: String, retry_after: Option<Duration>, metadata: Metadata },
    /// The service is starting or stopping.
    #[error("{message}")]
    Unavailable { message: String },
    /// A bug or an environment failure. `context` is safe to log; the wire message is generic.
    #[error("internal error: {context}")]
    Internal {
        context: &'static str,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// The stable reason code of this error.
    pub fn reason(&self) -> Reason {
        match self {
            Error::InvalidArgument { reason, .. }
            | Error::NotFound { reason, .. }
            | Error::AlreadyExists { reason, .. }
            | Error::FailedPrecondition { reason, .. }
            | Error::Aborted { reason, .. }
            | Error::Unauthenticated { reason, .. }
            | Error::PermissionDenied { reason, .. }
            | Error::ResourceExhausted { reason, .. } => *reason,
            Error::Unavailable { .. } => Reason::Unavailable,
            Error::Internal { .. } => Reason::Internal,
        }
    }

    /// An invalid-argument error blamed on `field`.
    pub fn invalid(reason: Reason, field: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument { reason, field: Some(field), message: message.into(), metadata: Vec::new() }
    }

    /// Adds an explanatory key/value (ErrorInfo metadata) to an error that carries metadata.
    #[must_use]
    pub fn with_meta(mut self, key: &'static str, value: impl ToString) -> Self {
        match &mut self {
            Error::InvalidArgument { metadata, .. }
            | Error::NotFound { metadata, .. }
            | Error::AlreadyExists { metadata, .. }
            | Error::FailedPrecondition { metadata, .. }
            | Error::Aborted { metadata, .. }
            | Error::PermissionDenied { metadata, .. }
            | Error::ResourceExhausted { metadata, .. } => metadata.push((key, value.to_string())),
            Error::Unauthenticated { .. } | Error::Unavailable { .. } | Error::Internal { .. } => {}
        }
        self
    }

    /// The same error with its explanatory metadata removed (for a caller who may not see it).
    #[must_use]
    pub fn without_meta(mut self) -> Self {
        match &mut self {
            Error::InvalidArgument { metadata, .. }
            | Error::NotFound { metadata, .. }
            | Error::AlreadyExists { metadata, .. }
            | Error::FailedPrecondition { metadata, .. }
            | Error::Aborted { metadata, .. }
            | Error::PermissionDenied { metadata, .. }
            | Error::ResourceExhausted { metadata, .. } => metadata.clear(),
            Error::Unauthenticated { .. } | Error::Unavailable { .. } | Error::Internal { .. } => {}
        }
        self
    }

    /// The inference queue is full.
    pub fn overloaded(retry_after: Duration) -> Self {
        Error::ResourceExhausted {
            reason: Reason::Overloaded,
            message: "the server is at capacity, retry later".into(),
            retry_after: Some(retry_after),
            metadata: Vec::new(),
        }
    }

    /// The API key has used up its request rate.
    pub fn rate_limited(retry_after: Duration) -> Self {
        Error::ResourceExhausted {
            reason: Reason::RateLimited,
            message: "the request rate of this credential is exceeded, retry later".into(),
            retry_after: Some(retry_after),
            metadata: Vec::new(),
        }
    }

    /// A re-enrollment token has used up its tries for now.
    pub fn token_rate_limited(retry_after: Duration) -> Self {
        Error::ResourceExhausted {
            reason: Reason::RateLimited,
            message: "the re-enrollment token's tries are used up for now, retry later".into(),
            retry_after: Some(retry_after),
            metadata: Vec::new(),
        }
    }

    /// A tenant quota (`what`: "users" or "faces") is reached.
    pub fn quota_exceeded(what: &'static str, limit: usize) -> Self {
        // FAILED_PRECONDITION like the per-user FACE_LIMIT_REACHED: retrying does not help until
        // something is deleted (API.md keeps RESOURCE_EXHAUSTED for retryable refusals).
        Error::failed_precondition(Reason::QuotaExceeded, format!("the tenant's quota of {limit} {what} is reached"))
            .with_meta("quota", what)
            .with_meta("limit", limit)
    }

    pub fn not_found(reason: Reason, message: impl Into<String>) -> Self {
        Error::NotFound { reason, message: message.into(), metadata: Vec::new() }
    }

    pub fn already_exists(reason: Reason, message: impl Into<String>) -> Self {
        Error::AlreadyExists { reason, message: message.into(), metadata: Vec::new() }
    }

    pub fn failed_precondition(reason: Reason, message: impl Into<String>) -> Self {
        Error::FailedPrecondition { reason, message: message.into(), metadata: Vec::new() }
    }

    pub fn aborted(reason: Reason, message: impl Into<String>) -> Self {
        Error::Aborted { reason, message: message.into(), metadata: Vec::new() }
    }

    pub fn unauthenticated(reason: Reason, message: impl Into<String>) -> Self {
        Error::Unauthenticated { reason, message: message.into() }
    }

    /// USER_NOT_FOUND, worded as the seeds word it.
    pub fn user_not_found() -> Self {
        Error::not_found(Reason::UserNotFound, "user is not registered")
    }

    pub fn face_not_found() -> Self {
        Error::not_found(Reason::FaceNotFound, "face not found")
    }

    /// An internal error with a loggable context and its cause.
    pub fn internal(context: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Internal { context, source: Some(Box::new(source)) }
    }

    /// An internal error without an underlying cause (a broken invariant).
    pub fn bug(context: &'static str) -> Self {
        Error::Internal { context, source: None }
    }
}
