//! The wire side of idempotent writes (app/requests.rs): a request's fingerprint, the encoding
//! of the response a replay returns, and its decoding.

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::app::Idempotency;
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

/// The response a replay returns, as the first call recorded it.
pub(super) fn replayed<P: Message + Default>(bytes: &[u8]) -> Result<P, Status> {
    P::decode(bytes).map_err(|e| Error::internal("decoding a recorded response", e).into())
}
