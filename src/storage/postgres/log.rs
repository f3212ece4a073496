//! The shared change log on PostgreSQL, the tenant write locks, and the nodes that follow the
//! log. An entry's sequence number comes from the one-row counter `log_head`, updated last in
//! the write's transaction: the row lock orders every writer's commit, so entries become
//! visible in sequence order and a reader polling `seq > applied` never skips one that commits
//! late. Compaction removes what every live node has applied (`nodes`, a watermark each).

use prost::Message;
use tokio_postgres::Transaction;

use super::pool::{Conn, spawn};
use super::{PgStore, from_db, pg_error, read_snapshot, tenant_lock_key};
use crate::domain::{FaceId, Tenant};
use crate::error::{Error, Result};
use crate::storage::records::pb;
use crate::storage::{LogBounds, LogEntry, StoredEmbedding, keys};

/// A node that has not reported its position for this long no longer holds back compaction
/// (it rebuilds its index when it comes back, as a new node does).
const NODE_LIVENESS_SECS: f64 = 600.0;

/// Rows fetched at a time by a full scan of the embeddings.
const SCAN_BATCH: i32 = 2048;

/// A reader behind the compacted part of the log (it must rebuild its index from the records,
/// which its follower does): retryable for a caller.
fn behind() -> Error {
    Error::Unavailable { message: "this node is behind the compacted change log and rebuilds its index; retry".into() }
}

/// Appends `record` to the log as the last statement before the commit; its sequence number.
pub(super) async fn append(tx: &Transaction<'_>, tenant: &Tenant, record: &pb::ChangeRecord) -> Result<u64> {
    let seq: i64 = tx
        .query_one("UPDATE log_head SET seq = seq + 1 WHERE id = 1 RETURNING seq", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    tx.execute(
        "INSERT INTO change_log (seq, tenant, record) VALUES ($1, $2, $3)",
        &[&seq, &tenant.as_str(), &record.encode_to_vec()],
    )
    .await
    .map_err(pg_error)?;
    Ok(seq as u64)
}

/// A tenant's write lock across nodes; released when dropped.
pub struct TenantLock {
    conn: Option<Conn>,
    _slot: tokio::sync::OwnedSemaphorePermit,
    tenant: Tenant,
    fence: i64,
    store: PgStore,
}

impl std::fmt::Debug for TenantLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLock").field("fence", &self.fence).finish_non_exhaustive()
    }
}

impl Drop for TenantLock {
    fn drop(&mut self) {
        {
            let mut held = self.store.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if held.get(&self.tenant) == Some(&self.fence) {
                held.remove(&self.tenant);
            }
        }
        let Some(conn) = self.conn.take() else { return };
        let (class, object) = tenant_lock_key(&self.tenant);
        // Released without blocking the dropping thread (it may be an async one). Should the
        // unlock fail, the connection is dropped, and its session's locks go with it.
        spawn(async move {
            if conn.execute("SELECT pg_advisory_unlock($1, $2)", &[&class, &object]).await.is_err() {
                conn.discard();
            }
        });
    }
}

impl PgStore {
    /// Takes `tenant`'s write lock (waiting for another node's holder), and a new fencing
    /// number that this node's writes of the tenant check until the lock is dropped.
    pub(super) async fn lock_tenant(&self, tenant: &Tenant) -> Result<TenantLock> {
        let slot = tokio::time::timeout(self.pool.wait(), self.lock_slots.clone().acquire_owned())
            .await
            .map_err(|_| Error::Unavailable { message: "too many tenant write locks are held at once".into() })?
            .map_err(|_| Error::bug("the tenant lock slots closed"))?;
        let conn = self.conn().await?;
        let (class, object) = tenant_lock_key(tenant);
        if let Err(e) = conn.execute("SELECT pg_advisory_lock($1, $2)", &[&class, &object]).await {
            // A wait cut by the statement timeout may still end in the lock: never reuse it.
            conn.discard();
            return Err(pg_error(e));
        }
        let mut lock =
            TenantLock { conn: Some(conn), _slot: slot, tenant: tenant.clone(), fence: 0, store: self.clone() };
        // Waits for the writes of the last holder still in flight (they hold the row FOR SHARE).
        let conn = lock.conn.as_ref().expect("just set");
        let fence: i64 = conn
            .query_one(
                "INSERT INTO tenant_fences (tenant, fence) VALUES ($1, 1) \
                 ON CONFLICT (tenant) DO UPDATE SET fence = tenant_fences.fence + 1 RETURNING fence",
                &[&tenant.as_str()],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        lock.fence = fence;
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(tenant.clone(), fence);
        Ok(lock)
    }

    /// In a write's transaction: while this node holds `tenant`'s lock, refuses the write if
    /// another holder took the lock since (this node's lock connection died), and keeps the
    /// next holder waiting until this write ends.
    pub(super) async fn check_fence(&self, tx: &Transaction<'_>, tenant: &Tenant) -> Result<()> {
        let held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(tenant).copied();
        let Some(fence) = held else { return Ok(()) };
        let current: Option<i64> = tx
            .query_opt("SELECT fence FROM tenant_fences WHERE tenant = $1 FOR SHARE", &[&tenant.as_str()])
            .await
            .map_err(pg_error)?
            .map(|r| r.get(0));
        if current != Some(fence) {
            return Err(Error::Unavailable {
                message: "this node lost the tenant's write lock (its database connection closed); retry".into(),
            });
        }
        Ok(())
    }

    pub(super) async fn log_bounds(&self) -> Result<LogBounds> {
        let conn = self.conn().await?;
        let row = conn
            .query_one("SELECT h.seq, c.seq FROM log_head h, log_compacted c WHERE h.id = 1 AND c.id = 1", &[])
            .await
            .map_err(pg_error)?;
        Ok(LogBounds { head: row.get::<_, i64>(0) as u64, compacted: row.get::<_, i64>(1) as u64 })
    }

    pub(super) async fn read_log(&self, after: u64, limit: usize) -> Result<Vec<LogEntry>> {
        let mut conn = self.conn().await?;
        let tx = read_snapshot(&mut conn).await?;
        let compacted: i64 =
            tx.query_one("SELECT seq FROM log_compacted WHERE id = 1", &[]).await.map_err(pg_error)?.get(0);
        if (after as i64) < compacted {
            return Err(behind());
        }
        let rows = tx
            .query(
                "SELECT seq, record FROM change_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&(after as i64), &(limit as i64)],
            )
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for (expected, row) in (after + 1..).zip(rows) {
            let seq = row.get::<_, i64>(0) as u64;
            if seq != expected {
                return Err(behind());
            }
            out.push(crate::storage::log::decode_entry(self.encryption.as_ref(), seq, row.get(1))?);
        }
        Ok(out)
    }

    /// Records that this node applied the log up to `upto`, then removes the entries that every
    /// live node has applied. Returns how many went.
    pub(super) async fn compact_log(&self, upto: u64) -> Result<usize> {
        let mut conn = self.conn().await?;
        self.report_applied(&conn, upto).await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        tx.execute("DELETE FROM nodes WHERE seen_at < now() - interval '1 day'", &[]).await.map_err(pg_error)?;
        let floor: Option<i64> = tx
            .query_one(
                "SELECT min(applied) FROM nodes WHERE seen_at > now() - make_interval(secs => $1)",
                &[&NODE_LIVENESS_SECS],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        let floor = floor.unwrap_or(0).min(upto as i64);
        // Its own row, locked to the commit: compactions take turns and the bound only rises,
        // while writers (who lock `log_head`) go on.
        let compacted: i64 =
            tx.query_one("SELECT seq FROM log_compacted WHERE id = 1 FOR UPDATE", &[]).await.map_err(pg_error)?.get(0);
        if floor <= compacted {
            return Ok(0);
        }
        // The bound first, so a reader that sees entries gone also sees why.
        tx.execute("UPDATE log_compacted SET seq = $1 WHERE id = 1", &[&floor]).await.map_err(pg_error)?;
        let removed = tx.execute("DELETE FROM change_log WHERE seq <= $1", &[&floor]).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(removed as usize)
    }

    async fn report_applied(&self, conn: &Conn, applied: u64) -> Result<()> {
        conn.execute(
            "INSERT INTO nodes (id, applied, seen_at) VALUES ($1, $2, now()) \
             ON CONFLICT (id) DO UPDATE SET applied = $2, seen_at = now()",
            &[&self.node, &(applied as i64)],
        )
        .await
        .map_err(pg_error)?;
        Ok(())
    }

    /// Every embedding of every tenant from one snapshot of the database, and the log head
    /// that snapshot reflects. This node's position is reported first (at the head before the
    /// snapshot), so no live node compacts away what it will replay after.
    pub(super) async fn for_each_embedding(
        &self,
        each: &mut (dyn FnMut(StoredEmbedding) -> Result<()> + Send),
    ) -> Result<(u64, crate::storage::EmbedderRecord)> {
        let mut conn = self.conn().await?;
        let head_before: i64 =
            conn.query_one("SELECT seq FROM log_head WHERE id = 1", &[]).await.map_err(pg_error)?.get(0);
        self.report_applied(&conn, head_before as u64).await?;
        let tx = read_snapshot(&mut conn).await?;
        tx.batch_execute("SET LOCAL statement_timeout = 0").await.map_err(pg_error)?;
        let head: i64 = tx.query_one("SELECT seq FROM log_head WHERE id = 1", &[]).await.map_err(pg_error)?.get(0);
        let state = super::models::read_state(&tx).await?;
        let model = state.active_or_unnamed();
        let column = super::models::slot_column(state.active);
        let sql = format!("SELECT tenant, id, {column} FROM faces WHERE {column} <> ''::bytea");
        let portal = tx.bind(sql.as_str(), &[]).await.map_err(pg_error)?;
        let mut reported = std::time::Instant::now();
        loop {
            // A long scan keeps this node live, so no node compacts what it will replay after.
            if reported.elapsed() > std::time::Duration::from_secs(30) {
                let side = self.conn().await?;
                side.execute("UPDATE nodes SET seen_at = now() WHERE id = $1", &[&self.node])
                    .await
                    .map_err(pg_error)?;
                reported = std::time::Instant::now();
            }
            let rows = tx.query_portal(&portal, SCAN_BATCH).await.map_err(pg_error)?;
            for row in &rows {
                let tenant = Tenant::new(row.get(0)).ok_or_else(|| Error::bug("a face row names a bad tenant"))?;
                let face_id = FaceId(from_db(row.get(1)));
                let (user_id, embedding) = self.open_embedding(&tenant, face_id, row.get(2), &model.id)?;
                each(StoredEmbedding { tenant, face_id, user_id, embedding })?;
            }
            if rows.len() < SCAN_BATCH as usize {
                break;
            }
        }
        tx.commit().await.map_err(pg_error)?;
        Ok((head as u64, model))
    }

    pub(super) async fn snapshot_id(&self) -> Result<Option<Vec<u8>>> {
        self.meta(keys::SNAPSHOT_ID_KEY).await
    }

    pub(super) async fn record_snapshot_id(&self, id: &[u8]) -> Result<()> {
        self.set_meta(keys::SNAPSHOT_ID_KEY, id).await
    }
}
