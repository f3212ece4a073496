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
    FieldInvalid,
    Overloaded,
    Unavailable,
    Internal,
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
            Reason::FieldInvalid => "FIELD_INVALID",
            Reason::Overloaded => "OVERLOADED",
            Reason::Unavailable => "UNAVAILABLE",
            Reason::Internal => "INTERNAL",
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
    /// The inference queue is full; the caller should retry after `retry_after`.
    #[error("the server is at capacity, retry later")]
    Overloaded { retry_after: Duration },
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
            Error::InvalidArgument { reason, .. } => *reason,
            Error::Overloaded { .. } => Reason::Overloaded,
            Error::Unavailable { .. } => Reason::Unavailable,
            Error::Internal { .. } => Reason::Internal,
        }
    }

    /// An invalid-argument error blamed on `field`.
    pub fn invalid(reason: Reason, field: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument { reason, field: Some(field), message: message.into(), metadata: Vec::new() }
    }

    /// Adds an explanatory key/value (ErrorInfo metadata) to an invalid-argument error.
    #[must_use]
    pub fn with_meta(mut self, key: &'static str, value: impl ToString) -> Self {
        if let Error::InvalidArgument { metadata, .. } = &mut self {
            metadata.push((key, value.to_string()));
        }
        self
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
