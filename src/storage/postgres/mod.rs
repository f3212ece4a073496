//! `PgStore`: PostgreSQL as the store, shared by any number of facevault processes (nodes).
//! Records are the same protobuf records as in sled, in tables keyed by tenant and id; sealed
//! values are sealed as in sled (same associated data), so a store moves between the backends
//! as it is. Each write is one transaction; a commit with `synchronous_commit` on is the
//! durability point, so a `Pending` of this backend is durable already.
//!
//! - **Order.** A write that changes faces appends its change-log entry last in its
//!   transaction, taking its sequence number from the one-row counter `log_head` (a row lock
//!   held to the commit): sequence order is commit order, with no holes, so a node that polls
//!   the log by sequence number never skips an entry that commits late (STORAGE.md).
//! - **A tenant's write lock** (`lock_tenant`): a session advisory lock, on a connection held
//!   while the app checks duplicates and quotas and writes; plus a fencing number in
//!   `tenant_fences`, incremented by each holder, that every write of the holder checks in its
//!   transaction (FOR SHARE): should the lock's connection die, a write of the old holder fails
//!   instead of racing the new one.
//! - **Per-user invariants** (face limit, versions, tokens): the user's row is locked
//!   (FOR UPDATE) by every transaction that changes it; external ids are a unique index.
//! - **Failure.** A lost connection marks the store failed (health NOT_SERVING, calls
//!   UNAVAILABLE) until a probe succeeds (`try_recover`); the index then catches up from the log.

mod backend;
mod faces;
mod import;
mod lists;
mod log;
mod models;
mod pool;
mod requests;
mod schema;
mod users;
mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::domain::Tenant;
use crate::error::{Error, Result};
use crate::storage::EncryptionKey;
use pool::{Conn, Pool, run};

pub use log::TenantLock;
pub use pool::may_block;

/// How to reach the database (from the config).
#[derive(Clone)]
pub struct PgOptions {
    /// postgres://user:password@host:port/database (never logged).
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish_non_exhaustive()
    }
}

/// The PostgreSQL store. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: Arc<Pool>,
    encryption: Option<EncryptionKey>,
    /// This process's id among the nodes (its row in `nodes`: how far it applied the log).
    node: String,
    /// The fencing number of each tenant whose write lock this node holds.
    held: Arc<Mutex<HashMap<Tenant, i64>>>,
    /// Tenant locks held (or waited for) at once, each on a connection of its own: at most half
    /// the pool, so the other half always serves the work done under them.
    lock_slots: Arc<tokio::sync::Semaphore>,
    /// Why the store stopped acknowledging writes (a lost connection), until a probe succeeds.
    failure: Arc<Mutex<Option<String>>>,
}

/// An UNAVAILABLE error for a connection that was lost (or never made).
pub(super) fn connection_lost(what: &str) -> Error {
    Error::Unavailable { message: format!("the PostgreSQL connection failed: {what}") }
}

/// Maps a PostgreSQL error. Connection failures, restarts, timeouts and transient conflicts
/// are UNAVAILABLE (a retry may succeed); anything else is internal, logged by its SQLSTATE
/// only (a server message may quote values: names, external ids).
pub(super) fn pg_error(err: tokio_postgres::Error) -> Error {
    let Some(db) = err.as_db_error() else {
        // No server error: the connection closed, an I/O error, a timeout of the client.
        return connection_lost(if err.is_closed() { "connection closed" } else { "I/O error" });
    };
    let code = db.code().code();
    if code.starts_with("08") || code.starts_with("57P") {
        // A connection exception; the server shutting down, restarting or not yet accepting.
        return connection_lost(&format!("SQLSTATE {code}"));
    }
    if code.starts_with("28") || code == "3D000" {
        // A login refused, a database that does not exist: the URL or the server's setup.
        return connection_lost(&format!("the server refused the login or the database (SQLSTATE {code})"));
    }
    let transient = code.starts_with("53") // insufficient resources (too many connections, disk full)
        || code == "40001" // serialization failure
        || code == "40P01" // deadlock detected
        || code == "55P03" // lock not available
        || code == "57014" // statement timeout (query canceled)
        || code == "25006"; // read-only transaction: a replica, or a failover in progress
    if transient {
        return Error::Unavailable { message: format!("PostgreSQL refused the statement (SQLSTATE {code}); retry") };
    }
    tracing::error!(sqlstate = code, "PostgreSQL error");
    Error::bug("a PostgreSQL statement failed")
}

/// A read-only transaction over one snapshot of the database (reads that span rows).
pub(super) async fn read_snapshot(client: &mut tokio_postgres::Client) -> Result<tokio_postgres::Transaction<'_>> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)
}

/// Ids are u64; PostgreSQL's bigint is signed. Flipping the top bit keeps the order.
pub(super) fn to_db(id: u64) -> i64 {
    (id ^ (1 << 63)) as i64
}

pub(super) fn from_db(id: i64) -> u64 {
    (id as u64) ^ (1 << 63)
}

impl PgStore {
    /// Connects, creates or migrates the schema (refusing a database newer than this build),
    /// and checks the encryption key against the store's.
    pub fn open(options: &PgOptions, encryption: Option<EncryptionKey>) -> Result<Self> {
        let mut config: tokio_postgres::Config =
            options.url.parse().map_err(|_| Error::Unavailable { message: "--postgres-url does not parse".into() })?;
        let statement_ms = options.statement_timeout.as_millis();
        config
            .application_name("facevault")
            .connect_timeout(options.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            // Acknowledged means committed on the server's disk, whatever the server's default.
            // The server notices a dead client within about a minute (so the session advisory
            // lock of a tenant held by a node cut off by the network is released), not after
            // the operating system's two hours.
            .options(format!(
                "-c synchronous_commit=on -c statement_timeout={statement_ms} -c tcp_keepalives_idle=30 \
                 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3 -c client_connection_check_interval=10000"
            ));
        let pool = Pool::new(config, options.pool_size, options.connect_timeout);
        let node = format!("{:016x}", crate::storage::random_id()?);
        let lock_slots = Arc::new(tokio::sync::Semaphore::new((options.pool_size / 2).max(1)));
        let store =
            PgStore { pool, encryption, node, held: Arc::default(), lock_slots, failure: Arc::new(Mutex::new(None)) };
        run(|| store.migrate())?;
        Ok(store)
    }

    /// A connection of the pool.
    async fn conn(&self) -> Result<Conn> {
        self.pool.get().await
    }

    /// Passes `result` on; a lost connection marks the store failed.
    fn watch<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(Error::Unavailable { message }) = &result
            && message.starts_with("the PostgreSQL connection failed")
        {
            let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
            if failure.is_none() {
                tracing::error!("lost the PostgreSQL connection: writes are refused until it is back");
                *failure = Some(message.clone());
            }
        }
        result
    }

    /// Runs a read or write on the PostgreSQL runtime (blocking), watching for a lost
    /// connection.
    fn exec<T: Send, Fut: Future<Output = Result<T>>>(&self, work: impl FnOnce() -> Fut + Send) -> Result<T> {
        self.watch(run(work))
    }

    /// Runs a write: refused while the store is failed.
    fn write<T: Send, Fut: Future<Output = Result<T>>>(&self, work: impl FnOnce() -> Fut + Send) -> Result<T> {
        if let Some(reason) = self.write_failure() {
            return Err(Error::Unavailable { message: format!("the store failed ({reason})") });
        }
        self.exec(work)
    }

    pub fn write_failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// After a failure: a write on a new connection; on success the store acknowledges writes
    /// again (nothing to reopen: every acknowledged write is committed, and the index catches
    /// up from the log).
    pub fn try_recover(&self) -> Result<()> {
        self.pool.clear();
        run(|| async {
            let conn = self.conn().await?;
            conn.execute(
                "INSERT INTO nodes (id, applied, seen_at) VALUES ($1, 0, now()) \
                 ON CONFLICT (id) DO UPDATE SET seen_at = now()",
                &[&self.node],
            )
            .await
            .map_err(pg_error)
        })?;
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }
}

/// A tenant's advisory-lock key: (namespace, hash of the tenant). Two tenants that share a
/// hash share a lock: correct, only less parallel.
pub(super) fn tenant_lock_key(tenant: &Tenant) -> (i32, i32) {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(tenant.as_str().as_bytes());
    (0x4656_0001, i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]))
}

#[cfg(test)]
pub(crate) mod tests;
