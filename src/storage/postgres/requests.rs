//! Request ids of idempotent writes on PostgreSQL (the rules are storage/requests.rs): a row of
//! `requests` per (tenant, request id), written in the write's transaction.

use std::time::SystemTime;

use prost::Message;
use tokio_postgres::Transaction;

use super::users::decode;
use super::{PgStore, pg_error, to_db};
use crate::domain::{Tenant, UserId};
use crate::error::Result;
use crate::storage::records::{self, pb};
use crate::storage::requests::{RequestStamp, SeenRequest, from_record, request_in_flight, to_record};

/// In a write's transaction: records `stamp` for `result`, or refuses the write when an
/// unexpired record of the request id exists. A concurrent transaction inserting the same id
/// holds the row until it ends; this one then sees the committed row and refuses.
pub(super) async fn record<T>(
    tx: &Transaction<'_>,
    tenant: &Tenant,
    stamp: Option<&RequestStamp<'_, T>>,
    result: &T,
) -> Result<()> {
    let Some(stamp) = stamp else { return Ok(()) };
    let recorded = (stamp.respond)(result);
    let row = to_record(&stamp.fingerprint, &recorded);
    let owner = recorded.owner.map(|u| to_db(u.0));
    let written = tx
        .execute(
            "INSERT INTO requests (tenant, id, created_ns, owner, record) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant, id) DO UPDATE SET created_ns = $3, owner = $4, record = $5 \
             WHERE requests.created_ns < $6",
            &[
                &tenant.as_str(),
                &stamp.id,
                &row.created_ns,
                &owner,
                &row.encode_to_vec(),
                &records::to_nanos(stamp.expired_before),
            ],
        )
        .await
        .map_err(pg_error)?;
    if written == 0 {
        return Err(request_in_flight());
    }
    Ok(())
}

/// In DeleteUser's transaction (after the user's row is locked, so no write of the user is
/// still adding one): removes every record `user` owns.
pub(super) async fn erase(tx: &Transaction<'_>, tenant: &Tenant, user: UserId) -> Result<()> {
    tx.execute("DELETE FROM requests WHERE tenant = $1 AND owner = $2", &[&tenant.as_str(), &to_db(user.0)])
        .await
        .map_err(pg_error)?;
    Ok(())
}

impl PgStore {
    pub(super) async fn request(&self, tenant: &Tenant, id: &str) -> Result<Option<SeenRequest>> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt("SELECT record FROM requests WHERE tenant = $1 AND id = $2", &[&tenant.as_str(), &id])
            .await
            .map_err(pg_error)?;
        let Some(row) = row else { return Ok(None) };
        let record: pb::RequestRecord = decode(row.get::<_, &[u8]>(0), "decoding a request record")?;
        Ok(Some(from_record(record)?))
    }

    pub(super) async fn purge_requests(&self, before: SystemTime) -> Result<usize> {
        let conn = self.conn().await?;
        let n = conn
            .execute("DELETE FROM requests WHERE created_ns < $1", &[&records::to_nanos(before)])
            .await
            .map_err(pg_error)?;
        Ok(n as usize)
    }
}
