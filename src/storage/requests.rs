//! Request ids of idempotent writes (design/API-2.md, "Idempotent writes"). A write that carries
//! one records, in its own transaction, the request's fingerprint and the response its caller
//! got; a retry finds the record and gets that response again, and changes nothing. Records
//! expire after the request-id TTL (purged in the background, written over when found expired)
//! and go with the user whose data their response holds.
//!
//! On sled all of it is one tree, `requests`: `tenant ‖ 0x00 ‖ 0x01 ‖ request_id` holds the
//! record, `tenant ‖ 0x00 ‖ 0x02 ‖ user id ‖ request_id` (empty value) names the records a user
//! owns, for the erasure of DeleteUser.

use std::time::SystemTime;

use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::records::{self, pb};
use super::users::{TxResult, abort, tx_decode, tx_error};
use super::{Store, db_error, decode, keys};
use crate::domain::{Tenant, UserId};
use crate::error::{Error, Reason, Result};

const RECORD: u8 = 1;
const OWNER: u8 = 2;

/// A write's request id, recorded with the write in its transaction.
pub struct RequestStamp<'a, T> {
    pub id: &'a str,
    pub fingerprint: [u8; 32],
    /// Records created before this have expired: written over as if absent.
    pub expired_before: SystemTime,
    /// The response to record for the write's result.
    pub respond: &'a (dyn Fn(&T) -> Recorded + Send + Sync),
}

impl<T> std::fmt::Debug for RequestStamp<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStamp").field("id", &self.id).finish_non_exhaustive()
    }
}

/// What a write records: the response and the user whose data it holds.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub owner: Option<UserId>,
    pub response: Vec<u8>,
}

/// A recorded request, as read back.
#[derive(Clone)]
pub struct SeenRequest {
    pub fingerprint: [u8; 32],
    pub created: SystemTime,
    pub response: Vec<u8>,
}

impl std::fmt::Debug for SeenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeenRequest").field("created", &self.created).finish_non_exhaustive()
    }
}

/// The refusal of a write whose request id a concurrent call recorded first (the app reads
/// the record and replays it; a caller sees it only when that fails).
pub fn request_in_flight() -> Error {
    Error::aborted(
        Reason::RequestIdInFlight,
        "another call with this request_id was written at the same time; retry to get its response",
    )
}

pub(crate) fn record_key(tenant: &Tenant, id: &str) -> Vec<u8> {
    let mut key = keys::tenant_prefix(tenant);
    key.push(RECORD);
    key.extend_from_slice(id.as_bytes());
    key
}

fn owner_prefix(tenant: &Tenant, user: UserId) -> Vec<u8> {
    let mut key = keys::tenant_prefix(tenant);
    key.push(OWNER);
    key.extend_from_slice(&user.0.to_be_bytes());
    key
}

fn owner_key(tenant: &Tenant, user: UserId, id: &str) -> Vec<u8> {
    let mut key = owner_prefix(tenant, user);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The stored form of a request's record.
pub(crate) fn to_record(stamp_fingerprint: &[u8; 32], recorded: &Recorded) -> pb::RequestRecord {
    pb::RequestRecord {
        fingerprint: stamp_fingerprint.to_vec(),
        created_ns: records::to_nanos(SystemTime::now()),
        owner: recorded.owner.map_or(0, |u| u.0),
        response: recorded.response.clone(),
    }
}

pub(crate) fn from_record(record: pb::RequestRecord) -> Result<SeenRequest> {
    let fingerprint =
        record.fingerprint.as_slice().try_into().map_err(|_| Error::bug("a request record without its fingerprint"))?;
    Ok(SeenRequest { fingerprint, created: records::from_nanos(record.created_ns), response: record.response })
}

/// In a sled write's transaction: records `stamp` for `result`, or refuses the write when an
/// unexpired record of the request id exists (a concurrent call recorded it first).
pub(crate) fn tx_record<T>(
    requests: &TransactionalTree,
    tenant: &Tenant,
    stamp: Option<&RequestStamp<'_, T>>,
    result: &T,
) -> TxResult<()> {
    let Some(stamp) = stamp else { return Ok(()) };
    let key = record_key(tenant, stamp.id);
    if let Some(bytes) = requests.get(&key)? {
        let old: pb::RequestRecord = tx_decode(&bytes, "decoding a request record")?;
        if records::from_nanos(old.created_ns) >= stamp.expired_before {
            return abort(request_in_flight());
        }
        if old.owner != 0 {
            requests.remove(owner_key(tenant, UserId(old.owner), stamp.id))?;
        }
    }
    let recorded = (stamp.respond)(result);
    if let Some(owner) = recorded.owner {
        requests.insert(owner_key(tenant, owner, stamp.id), &[][..])?;
    }
    requests.insert(key, to_record(&stamp.fingerprint, &recorded).encode_to_vec())?;
    Ok(())
}

/// In DeleteUser's transaction: removes every record `user` owns (`ids`, listed before the
/// transaction by [`Store::owned_requests`], under the app's tenant lock).
pub(crate) fn tx_erase(requests: &TransactionalTree, tenant: &Tenant, user: UserId, ids: &[String]) -> TxResult<()> {
    for id in ids {
        requests.remove(owner_key(tenant, user, id))?;
        // Only while it is still this user's: an expired id may have been recorded anew.
        let key = record_key(tenant, id);
        if let Some(bytes) = requests.get(&key)? {
            let record: pb::RequestRecord = tx_decode(&bytes, "decoding a request record")?;
            if record.owner == user.0 {
                requests.remove(key)?;
            }
        }
    }
    Ok(())
}

impl Store {
    /// The record of `id` in `tenant`, expired or not.
    pub fn request(&self, tenant: &Tenant, id: &str) -> Result<Option<SeenRequest>> {
        match self.requests.get(record_key(tenant, id)).map_err(db_error)? {
            Some(bytes) => Ok(Some(from_record(decode(&bytes, "decoding a request record")?)?)),
            None => Ok(None),
        }
    }

    /// The request ids whose records hold data of `user`.
    pub(crate) fn owned_requests(&self, tenant: &Tenant, user: UserId) -> Result<Vec<String>> {
        let prefix = owner_prefix(tenant, user);
        let mut ids = Vec::new();
        for key in self.requests.scan_prefix(&prefix).keys() {
            let key = key.map_err(db_error)?;
            ids.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        Ok(ids)
    }

    /// Removes the records created before `before`; how many went.
    pub fn purge_requests(&self, before: SystemTime) -> Result<usize> {
        let expired = |bytes: &[u8]| -> Result<Option<u64>> {
            let record: pb::RequestRecord = decode(bytes, "decoding a request record")?;
            Ok((records::from_nanos(record.created_ns) < before).then_some(record.owner))
        };
        let mut purged = 0;
        for entry in self.requests.iter() {
            let (key, value) = entry.map_err(db_error)?;
            let Some((tenant, RECORD, id)) = split(&key) else { continue };
            if expired(&value)?.is_none() {
                continue;
            }
            let removed = self.requests.transaction(|requests| {
                // Again inside the transaction: a write may have recorded the id anew.
                let Some(bytes) = requests.get(&key)? else { return Ok(false) };
                let Some(owner) = expired(&bytes).map_err(ConflictableTransactionError::Abort)? else {
                    return Ok(false);
                };
                requests.remove(&key)?;
                if owner != 0 {
                    requests.remove(owner_key(&tenant, UserId(owner), &id))?;
                }
                Ok(true)
            });
            purged += usize::from(removed.map_err(tx_error)?);
        }
        if purged > 0 {
            self.commit()?;
        }
        Ok(purged)
    }
}

/// Splits a key of the requests tree into its tenant, kind and the rest (the request id of a
/// record).
fn split(key: &[u8]) -> Option<(Tenant, u8, String)> {
    let zero = key.iter().position(|&b| b == 0)?;
    let tenant = Tenant::new(std::str::from_utf8(&key[..zero]).ok()?)?;
    let kind = *key.get(zero + 1)?;
    let rest = String::from_utf8(key.get(zero + 2..)?.to_vec()).ok()?;
    Some((tenant, kind, rest))
}
