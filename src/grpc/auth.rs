//! The credential interceptor: `x-api-key` (checked against the key ring) or, for UpdateFace
//! only, `authorization: Bearer <re-enrollment token>`. Health and reflection are not wrapped.
//! Scope checks happen per rpc through [`caller`].

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::app::{KeyRing, UpdateCredential};
use crate::domain::{Principal, Scope};
use crate::error::{Error, Reason};

/// What the interceptor found on a request.
#[derive(Debug, Clone)]
enum Credential {
    Key(Arc<Principal>),
    Token(String),
}

/// Authenticates every call of the facevault services.
#[derive(Debug, Clone)]
pub(super) struct Auth {
    keys: KeyRing,
}

impl Auth {
    pub(super) fn new(keys: KeyRing) -> Self {
        Auth { keys }
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let metadata = request.metadata();
        let key = metadata.get("x-api-key").map(|v| v.to_str().unwrap_or(""));
        let bearer = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(|t| t.trim().to_owned());
        let credential = match (key, bearer) {
            (Some(secret), _) => match self.keys.authenticate(Some(secret)) {
                Some(principal) => {
                    self.keys.admit(&principal)?;
                    Credential::Key(principal)
                }
                None => return Err(Error::unauthenticated(Reason::ApiKeyInvalid, "the API key is not valid").into()),
            },
            (None, Some(token)) => {
                self.keys.admit_token(&token)?;
                Credential::Token(token)
            }
            (None, None) => match self.keys.authenticate(None) {
                Some(dev) => Credential::Key(dev),
                None => {
                    return Err(Error::unauthenticated(
                        Reason::ApiKeyMissing,
                        "send an API key in the x-api-key metadata",
                    )
                    .into());
                }
            },
        };
        request.extensions_mut().insert(credential);
        Ok(request)
    }
}

fn credential<T>(request: &Request<T>) -> Result<&Credential, Status> {
    request
        .extensions()
        .get::<Credential>()
        .ok_or_else(|| Error::bug("a facevault rpc ran without the auth interceptor").into())
}

fn require(principal: &Principal, scope: Scope) -> Result<(), Status> {
    if principal.scopes.contains(&scope) {
        return Ok(());
    }
    Err(Error::PermissionDenied {
        reason: Reason::ScopeMissing,
        message: format!("the API key lacks the scope {}", scope.as_str()),
        metadata: vec![("scope", scope.as_str().to_owned())],
    }
    .into())
}

/// The calling API key's principal, if it holds `scope`.
pub(super) fn caller<T>(request: &Request<T>, scope: Scope) -> Result<Principal, Status> {
    match credential(request)? {
        Credential::Key(principal) => {
            require(principal, scope)?;
            Ok(principal.as_ref().clone())
        }
        Credential::Token(_) => Err(Error::unauthenticated(
            Reason::ApiKeyMissing,
            "a re-enrollment token authorises UpdateFace only; send an API key in x-api-key",
        )
        .into()),
    }
}

/// UpdateFace's credential: an API key with faces:write, or a re-enrollment token.
pub(super) fn update_credential<T>(request: &Request<T>) -> Result<UpdateCredential, Status> {
    match credential(request)? {
        Credential::Key(principal) => {
            require(principal, Scope::FacesWrite)?;
            Ok(UpdateCredential::Key(principal.as_ref().clone()))
        }
        Credential::Token(token) => Ok(UpdateCredential::Token(token.clone())),
    }
}
