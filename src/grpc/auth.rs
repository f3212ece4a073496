//! The credential layer in front of the facevault services: `x-api-key` (checked against the key
//! ring, its rate limit, the scope of the rpc and the key's concurrency limit) or, for
//! UpdateFace only, `authorization: Bearer <re-enrollment token>` (a token that exists, with
//! attempts left). It runs before the request body is read or decoded, so a caller without the
//! right credential never makes the server buffer and decode an image. Health and reflection are
//! not wrapped. Handlers read the result through [`caller`] and [`update_credential`]. The layer
//! also ends a call that runs past `--request-timeout` with DEADLINE_EXCEEDED.

use std::convert::Infallible;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::NamedService;
use tonic::{Request, Status};

use super::AppSlot;
use crate::app::{KeyRing, TokenHolder, UpdateCredential};
use crate::domain::{Principal, Scope};
use crate::error::{Error, Reason};

/// The path of the one rpc a re-enrollment token authorises.
const UPDATE_FACE: &str = "/facevault.v1.FaceService/UpdateFace";

/// The scope each rpc needs. An rpc missing here is still checked by its handler (after the
/// body is decoded); `scopes_cover_every_rpc` keeps the table complete.
const SCOPES: &[(&str, Scope)] = &[
    ("/facevault.v1.FaceService/DetectFaces", Scope::FacesRead),
    ("/facevault.v1.FaceService/UploadFace", Scope::FacesWrite),
    (UPDATE_FACE, Scope::FacesWrite),
    ("/facevault.v1.FaceService/GetFace", Scope::FacesRead),
    ("/facevault.v1.FaceService/ListFaces", Scope::FacesRead),
    ("/facevault.v1.FaceService/DeleteFace", Scope::FacesWrite),
    ("/facevault.v1.FaceService/GetFaceImage", Scope::FacesRead),
    ("/facevault.v1.FaceService/SearchFaces", Scope::FacesSearch),
    ("/facevault.v1.FaceService/VerifyFace", Scope::FacesSearch),
    // And users:write, checked by the handler.
    ("/facevault.v1.FaceService/ImportFaces", Scope::FacesWrite),
    ("/facevault.v1.UserService/CreateUser", Scope::UsersWrite),
    ("/facevault.v1.UserService/GetUser", Scope::UsersRead),
    ("/facevault.v1.UserService/UpdateUser", Scope::UsersWrite),
    ("/facevault.v1.UserService/DeleteUser", Scope::UsersWrite),
    ("/facevault.v1.UserService/ListUsers", Scope::UsersRead),
    ("/facevault.v1.ListService/CreateFaceList", Scope::ListsWrite),
    ("/facevault.v1.ListService/GetFaceList", Scope::ListsRead),
    ("/facevault.v1.ListService/ListFaceLists", Scope::ListsRead),
    ("/facevault.v1.ListService/DeleteFaceList", Scope::ListsWrite),
    ("/facevault.v1.ListService/AddListEntry", Scope::ListsWrite),
    ("/facevault.v1.ListService/ListListEntries", Scope::ListsRead),
    ("/facevault.v1.ListService/DeleteListEntry", Scope::ListsWrite),
    ("/facevault.v1.AdminService/GetStatus", Scope::Admin),
    ("/facevault.v1.AdminService/StartReindex", Scope::Admin),
    ("/facevault.v1.AdminService/GetReindex", Scope::Admin),
    ("/facevault.v1.AdminService/CutoverReindex", Scope::Admin),
    ("/facevault.v1.AdminService/RollbackReindex", Scope::Admin),
    ("/facevault.v1.AdminService/FinishReindex", Scope::Admin),
];

/// The rpc's name for metrics ("UploadFace"), "unknown" for a path not in [`SCOPES`].
fn rpc_name(path: &str) -> &'static str {
    SCOPES.iter().find(|(p, _)| *p == path).and_then(|(p, _)| p.rsplit('/').next()).unwrap_or("unknown")
}

fn scope_of(path: &str) -> Option<Scope> {
    SCOPES.iter().find(|(p, _)| *p == path).map(|(_, scope)| *scope)
}

/// What the layer found on a request.
#[derive(Debug, Clone)]
enum Credential {
    Key(Arc<Principal>),
    Token(TokenHolder),
}

/// Authenticates every call of the facevault services (see the module doc).
#[derive(Debug, Clone)]
pub(super) struct Auth {
    keys: KeyRing,
    app: AppSlot,
    /// Longest a call may run on the server (`--request-timeout`).
    timeout: std::time::Duration,
}

impl Auth {
    pub(super) fn new(keys: KeyRing, app: AppSlot, timeout: std::time::Duration) -> Self {
        Auth { keys, app, timeout }
    }

    /// Wraps a service so that every call passes [`Auth::admit`] first.
    pub(super) fn wrap<S>(&self, inner: S) -> Authenticated<S> {
        Authenticated { inner, auth: self.clone() }
    }

    /// Decides a call from its path and headers alone. On success the credential and, for an
    /// API key, the permit of its concurrency limit (held until the call is answered).
    async fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<(Credential, Option<OwnedSemaphorePermit>), Error> {
        let key = headers.get("x-api-key").map(|v| v.to_str().unwrap_or(""));
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let principal = match (key, bearer) {
            (Some(secret), _) => self
                .keys
                .authenticate(Some(secret))
                .ok_or_else(|| Error::unauthenticated(Reason::ApiKeyInvalid, "the API key is not valid"))?,
            (None, Some(token)) => {
                return self.admit_token(path, token).await.map(|holder| (Credential::Token(holder), None));
            }
            (None, None) => self.keys.authenticate(None).ok_or_else(|| {
                Error::unauthenticated(Reason::ApiKeyMissing, "send an API key in the x-api-key metadata")
            })?,
        };
        self.keys.admit(&principal)?;
        if let Some(scope) = scope_of(path) {
            require(&principal, scope)?;
        }
        let permit = self.keys.concurrency_permit(&principal)?;
        Ok((Credential::Key(principal), Some(permit)))
    }

    /// A re-enrollment token: only for UpdateFace, only while it exists, has not expired and has
    /// attempts left; each admitted call spends one attempt. Its rate-limit bucket is made only
    /// once the token is known to exist.
    async fn admit_token(&self, path: &str, token: &str) -> Result<TokenHolder, Error> {
        if path != UPDATE_FACE {
            return Err(Error::unauthenticated(
                Reason::ReenrollmentTokenInvalid,
                "a re-enrollment token authorises only UpdateFace of its own user; other calls need an API key",
            ));
        }
        let app = self.app.get()?;
        let holder = app.token_holder(token).await?;
        self.keys.admit_token(&holder.hash)?;
        app.use_token_attempt(&holder).await?;
        Ok(holder)
    }
}

/// A facevault service behind [`Auth`].
#[derive(Debug, Clone)]
pub(super) struct Authenticated<S> {
    inner: S,
    auth: Auth,
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        request.extensions_mut().insert(super::Arrived::now(auth.timeout));
        Box::pin(async move {
            let started = std::time::Instant::now();
            match auth.admit(request.uri().path(), request.headers()).await {
                Ok((credential, permit)) => {
                    request.extensions_mut().insert(credential);
                    let response = match tokio::time::timeout(auth.timeout, inner.call(request)).await {
                        Ok(response) => response,
                        Err(_) => Ok(Status::deadline_exceeded(format!(
                            "the call ran longer than the server's request timeout ({} s)",
                            auth.timeout.as_secs()
                        ))
                        .into_http()),
                    };
                    drop(permit);
                    response
                }
                Err(error) => {
                    // Refused before any handler ran: counted here, so /metrics shows the
                    // refusals (wrong keys, missing scopes, spent tokens) by rpc and code.
                    let status = Status::from(error);
                    let rpc = rpc_name(request.uri().path());
                    crate::metrics::record_rpc(rpc, super::code_name(status.code()), started.elapsed());
                    Ok(status.into_http())
                }
            }
        })
    }
}

fn credential<T>(request: &Request<T>) -> Result<&Credential, Status> {
    request
        .extensions()
        .get::<Credential>()
        .ok_or_else(|| Error::bug("a facevault rpc ran without the auth layer").into())
}

fn require(principal: &Principal, scope: Scope) -> Result<(), Error> {
    if principal.scopes.contains(&scope) {
        return Ok(());
    }
    Err(Error::PermissionDenied {
        reason: Reason::ScopeMissing,
        message: format!("the API key lacks the scope {}", scope.as_str()),
        metadata: vec![("scope", scope.as_str().to_owned())],
    })
}

/// The calling API key's principal, if it holds `scope` (checked by the layer already; checked
/// again here so that an rpc missing from [`SCOPES`] is still guarded).
pub(super) fn caller<T>(request: &Request<T>, scope: Scope) -> Result<Principal, Status> {
    match credential(request)? {
        Credential::Key(principal) => {
            require(principal, scope)?;
            Ok(principal.as_ref().clone())
        }
        Credential::Token(_) => Err(Error::bug("a re-enrollment token reached an rpc other than UpdateFace").into()),
    }
}

/// As [`caller`], the principal shared with the key ring (its rate limit).
pub(super) fn caller_key<T>(request: &Request<T>, scope: Scope) -> Result<Arc<Principal>, Status> {
    match credential(request)? {
        Credential::Key(principal) => {
            require(principal, scope)?;
            Ok(principal.clone())
        }
        Credential::Token(_) => Err(Error::bug("a re-enrollment token reached an rpc other than UpdateFace").into()),
    }
}

/// UpdateFace's credential: an API key with faces:write, or an admitted re-enrollment token.
pub(super) fn update_credential<T>(request: &Request<T>) -> Result<UpdateCredential, Status> {
    match credential(request)? {
        Credential::Key(principal) => {
            require(principal, Scope::FacesWrite)?;
            Ok(UpdateCredential::Key(principal.as_ref().clone()))
        }
        Credential::Token(holder) => Ok(UpdateCredential::Token(holder.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_cover_every_rpc() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(super::super::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut rpcs = Vec::new();
        for file in set.file.iter().filter(|f| f.package() == "facevault.v1") {
            for service in &file.service {
                for method in &service.method {
                    rpcs.push(format!("/facevault.v1.{}/{}", service.name(), method.name()));
                }
            }
        }
        assert!(rpcs.len() >= SCOPES.len(), "{rpcs:?}");
        for rpc in rpcs {
            assert!(scope_of(&rpc).is_some(), "{rpc} has no scope in the auth layer's table");
        }
    }
}
