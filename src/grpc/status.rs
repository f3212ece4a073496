//! The only mapping from `Error` to `tonic::Status`: code, safe message, and the
//! google.rpc details (ErrorInfo always; BadRequest for validation; RetryInfo for
//! RESOURCE_EXHAUSTED). Internal errors are logged here and leave with a generic message.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

/// ErrorInfo domain of every facevault error.
pub const DOMAIN: &str = "facevault";

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let reason = err.reason().as_str();
        match err {
            Error::InvalidArgument { reason: _, field, message, metadata } => {
                let meta: HashMap<String, String> = metadata.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                let mut details = ErrorDetails::with_error_info(reason, DOMAIN, meta);
                if let Some(field) = field {
                    details.add_bad_request_violation(field, message.clone());
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound { reason: _, message, metadata } => plain(Code::NotFound, reason, message, metadata),
            Error::AlreadyExists { reason: _, message, metadata } => {
                plain(Code::AlreadyExists, reason, message, metadata)
            }
            Error::FailedPrecondition { reason: _, message, metadata } => {
                plain(Code::FailedPrecondition, reason, message, metadata)
            }
            Error::Aborted { reason: _, message, metadata } => plain(Code::Aborted, reason, message, metadata),
            Error::PermissionDenied { reason: _, message, metadata } => {
                plain(Code::PermissionDenied, reason, message, metadata)
            }
            Error::Unauthenticated { reason: _, message } => plain(Code::Unauthenticated, reason, message, Vec::new()),
            Error::ResourceExhausted { reason: _, message, retry_after, metadata } => {
                let meta: HashMap<String, String> = metadata.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                let mut details = ErrorDetails::with_error_info(reason, DOMAIN, meta);
                if let Some(delay) = retry_after {
                    details.set_retry_info(Some(delay));
                }
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            Error::Unavailable { message } => {
                tracing::warn!(%message, "unavailable");
                let mut details = ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new());
                // Loading models, or a store that cannot make writes durable: retry shortly (on
                // another node, which a NOT_SERVING health check steers a balancer to).
                details.set_retry_info(Some(std::time::Duration::from_secs(1)));
                Status::with_error_details(Code::Unavailable, "the service is not ready", details)
            }
            Error::Internal { context, source } => {
                match &source {
                    Some(source) => tracing::error!(context, error = %source, "internal error"),
                    None => tracing::error!(context, "internal error"),
                }
                let details = ErrorDetails::with_error_info(reason, DOMAIN, HashMap::new());
                Status::with_error_details(Code::Internal, "internal error", details)
            }
        }
    }
}

fn plain(code: Code, reason: &str, message: String, metadata: crate::error::Metadata) -> Status {
    let meta: HashMap<String, String> = metadata.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, DOMAIN, meta))
}

/// UNIMPLEMENTED for an rpc declared in the API but not served by this build.
pub fn unimplemented(rpc: &str) -> Status {
    let details = ErrorDetails::with_error_info("UNIMPLEMENTED", DOMAIN, HashMap::new());
    Status::with_error_details(Code::Unimplemented, format!("{rpc} is not implemented yet"), details)
}
