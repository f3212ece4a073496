//! The wire side of idempotent writes (app/requests.rs): a request's fingerprint, the encoding
//! of the response a replay returns, and its decoding.

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::Status;

use super::pb;
use crate::app::{App, Idempotency};
use crate::domain::{FaceId, Tenant, UserId};
use crate::error::Error;

/// sha256 of the rpc's name and the request as encoded (its request_id cleared by the caller;
/// maps encode in key order, so equal requests have equal fingerprints).
pub(super) fn fingerprint(rpc: &str, request: &impl Message) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(rpc.as_bytes());
    hash.update([0]);
    hash.update(request.encode_to_vec());
    hash.finalize().into()
}

/// The idempotency of a call of `rpc` whose request (without its request_id) is `request`:
/// `None` without a request_id. `respond` makes the wire response of the app's result.
pub(super) fn idempotency<R, P: Message>(
    rpc: &str,
    request_id: String,
    request: &impl Message,
    respond: impl Fn(&R) -> P + Send + Sync + 'static,
) -> Result<Option<Idempotency<R>>, Status> {
    if request_id.is_empty() {
        return Ok(None);
    }
    Ok(Idempotency::new(request_id, "request_id", fingerprint(rpc, request), move |r| respond(r).encode_to_vec())?)
}

/// What a response records of its duplicates: ids and similarities, not the other users'
/// external ids (a user's data is erased with the user; [`current_duplicates`] reads them
/// again for a replay).
pub(super) fn recorded_duplicates(duplicates: &mut [pb::FaceMatch]) {
    for duplicate in duplicates {
        duplicate.external_id.clear();
    }
}

/// A replay's duplicates as they stand now: each with its user's external id, those whose
/// face or user was deleted since left out.
pub(super) async fn current_duplicates(
    app: &App,
    tenant: &Tenant,
    duplicates: &mut Vec<pb::FaceMatch>,
) -> Result<(), Status> {
    let ids = |d: &pb::FaceMatch| Some((UserId::parse(&d.user_id)?, FaceId::parse(&d.face_id)?));
    duplicates.retain(|d| ids(d).is_some());
    let pairs = duplicates.iter().filter_map(ids).collect();
    let owners = app.current_owners(tenant, pairs).await?;
    let mut owners = owners.into_iter();
    duplicates.retain_mut(|d| match owners.next().flatten() {
        Some(external_id) => {
            d.external_id = external_id;
            true
        }
        None => false,
    });
    Ok(())
}

/// The response a replay returns, as the first call recorded it.
pub(super) fn replayed<P: Message + Default>(bytes: &[u8]) -> Result<P, Status> {
    P::decode(bytes).map_err(|e| Error::internal("decoding a recorded response", e).into())
}
