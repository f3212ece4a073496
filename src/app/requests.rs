//! Idempotent writes (design/API-2.md, "Idempotent writes"): a write with a request_id first
//! looks for the id's record (the first call's response: replayed; another request's:
//! REQUEST_ID_REUSED), and otherwise records the response it returns in its own transaction
//! (storage/requests.rs). The wire layer names the request and encodes its response; the
//! app knows neither format.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{App, blocking};
use crate::domain::{Tenant, UserId};
use crate::error::{Error, Reason, Result};
use crate::storage::{Recorded, RequestStamp};

/// Longest request_id (API-2.md).
pub(super) const MAX_REQUEST_ID_LEN: usize = 64;

/// A call's request id, its fingerprint and how to encode the response of its result `R`
/// (what a retry gets back). Cheap to clone.
pub struct Idempotency<R> {
    pub id: String,
    /// sha256 of the rpc and the request without its request_id: a reused id with another
    /// request is REQUEST_ID_REUSED.
    pub fingerprint: [u8; 32],
    pub encode: Encoder<R>,
}

/// Encodes the response of an app result.
pub(super) type Encoder<R> = Arc<dyn Fn(&R) -> Vec<u8> + Send + Sync>;

impl<R> Clone for Idempotency<R> {
    fn clone(&self) -> Self {
        Idempotency { id: self.id.clone(), fingerprint: self.fingerprint, encode: self.encode.clone() }
    }
}

impl<R> std::fmt::Debug for Idempotency<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency").field("id", &self.id).finish_non_exhaustive()
    }
}

impl<R> Idempotency<R> {
    /// `None` for an empty id (the call is not idempotent); REQUEST_ID_INVALID for a malformed one.
    pub fn new(
        id: String,
        field: &'static str,
        fingerprint: [u8; 32],
        encode: impl Fn(&R) -> Vec<u8> + Send + Sync + 'static,
    ) -> Result<Option<Self>> {
        if id.is_empty() {
            return Ok(None);
        }
        validate_request_id(&id, field)?;
        Ok(Some(Idempotency { id, fingerprint, encode: Arc::new(encode) }))
    }

    /// The stamp a storage write records: the response of the app's result, which `result`
    /// makes from the write's own result `S`.
    pub(super) fn stamp<'a, S>(
        &'a self,
        ttl: Duration,
        respond: &'a (dyn Fn(&S) -> Recorded + Send + Sync),
    ) -> RequestStamp<'a, S> {
        RequestStamp {
            id: &self.id,
            fingerprint: self.fingerprint,
            expired_before: SystemTime::now().checked_sub(ttl).unwrap_or(SystemTime::UNIX_EPOCH),
            respond,
        }
    }

    /// What the storage records for the app's result `r` owned by `owner`.
    pub(super) fn recorded(&self, owner: Option<UserId>, r: &R) -> Recorded {
        Recorded { owner, response: (self.encode)(r) }
    }
}

/// REQUEST_ID_INVALID unless `id` is 1-64 characters of A-Z a-z 0-9 . _ -.
pub fn validate_request_id(id: &str, field: &'static str) -> Result<()> {
    let ok = (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        return Ok(());
    }
    Err(Error::invalid(
        Reason::RequestIdInvalid,
        field,
        format!("{field} must be 1-{MAX_REQUEST_ID_LEN} characters of A-Z a-z 0-9 . _ -"),
    ))
}

/// Runs `f` with the storage stamp of `idem` (none without one); `respond` makes what the
/// storage records from its write's result `S`.
pub(super) fn stamped<R, S, T>(
    idem: Option<&Idempotency<R>>,
    ttl: Duration,
    respond: impl Fn(&Idempotency<R>, &S) -> Recorded + Send + Sync,
    f: impl FnOnce(Option<&RequestStamp<'_, S>>) -> T,
) -> T {
    match idem {
        None => f(None),
        Some(idem) => {
            let respond = |s: &S| respond(idem, s);
            let stamp = idem.stamp(ttl, &respond);
            f(Some(&stamp))
        }
    }
}

/// A write's result: written now, or the response the first call of its request id recorded.
#[derive(Debug)]
pub enum Written<R> {
    Done(R),
    Replayed(Vec<u8>),
}

impl App {
    /// The recorded response of `idem`'s request id, if it has an unexpired record;
    /// REQUEST_ID_REUSED when that record is of another request.
    pub(super) async fn replay<R>(&self, tenant: &Tenant, idem: Option<&Idempotency<R>>) -> Result<Option<Vec<u8>>> {
        let Some(idem) = idem else { return Ok(None) };
        let (store, tenant_c, id) = (self.store()?, tenant.clone(), idem.id.clone());
        let Some(seen) = blocking(move || store.request(&tenant_c, &id)).await? else { return Ok(None) };
        let expired_before = SystemTime::now().checked_sub(self.settings.request_id_ttl);
        if expired_before.is_some_and(|t| seen.created < t) {
            return Ok(None);
        }
        if seen.fingerprint != idem.fingerprint {
            return Err(Error::invalid(
                Reason::RequestIdReused,
                "request_id",
                "this request_id was used for another request; use a new one for each distinct write",
            ));
        }
        crate::metrics::record_replay();
        Ok(Some(seen.response))
    }

    /// Runs `write` unless `idem`'s request id was seen (its response is replayed). A write
    /// that fails while a record of the id appeared meanwhile (a concurrent call with the same
    /// id won) replays that record instead.
    pub(super) async fn idempotent<R, Fut>(
        &self,
        tenant: &Tenant,
        idem: Option<&Idempotency<R>>,
        write: impl FnOnce() -> Fut,
    ) -> Result<Written<R>>
    where
        Fut: std::future::Future<Output = Result<R>>,
    {
        if let Some(response) = self.replay(tenant, idem).await? {
            return Ok(Written::Replayed(response));
        }
        match write().await {
            Ok(done) => Ok(Written::Done(done)),
            Err(err) if idem.is_some() && !matches!(err, Error::Internal { .. } | Error::Unavailable { .. }) => {
                match self.replay(tenant, idem).await? {
                    Some(response) => Ok(Written::Replayed(response)),
                    None => Err(err),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// Removes the expired request records from the store.
    pub async fn purge_expired_requests(&self) -> Result<usize> {
        let store = self.store()?;
        let before = SystemTime::now().checked_sub(self.settings.request_id_ttl).unwrap_or(SystemTime::UNIX_EPOCH);
        blocking(move || store.purge_requests(before)).await
    }

    /// Purges expired request records now and then every TTL (at least a second, at most a
    /// minute apart). Runs until its task is aborted (at shutdown).
    pub async fn purge_requests_periodically(self) {
        let period = self.settings.request_id_ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match self.purge_expired_requests().await {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "expired request ids purged"),
                Err(err) => tracing::warn!(error = %err, "purging expired request ids failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked() {
        for good in ["a", "import-2026.12.05_row-17", &"x".repeat(64)] {
            assert!(validate_request_id(good, "request_id").is_ok(), "{good}");
        }
        for bad in ["", &"x".repeat(65), "has space", "slash/", "ümlaut", "semi;colon"] {
            let err = validate_request_id(bad, "request_id").unwrap_err();
            assert_eq!(err.reason(), Reason::RequestIdInvalid, "{bad}");
        }
    }
}
