//! The schema, created and migrated by the server: numbered migrations, each applied once in
//! its own transaction, under an advisory lock so that nodes starting together migrate once.
//! A database migrated by a newer build (a version above the last one here) is refused.
//! Also the store-wide records of `meta`: the encryption check and the embedder.

use prost::Message;

use super::{PgStore, pg_error};
use crate::error::{Error, Result};
use crate::storage::records::pb;
use crate::storage::{EmbedderRecord, keys};

/// The migrations, in order; version N is `MIGRATIONS[N - 1]`. Never edit one that shipped:
/// add the next.
const MIGRATIONS: &[&str] = &[
    // 1: the records, the change log and the nodes that follow it.
    "CREATE TABLE meta (key text PRIMARY KEY, value bytea NOT NULL);
     CREATE TABLE users (
         tenant text NOT NULL, id bigint NOT NULL, external_id text NOT NULL, record bytea NOT NULL,
         PRIMARY KEY (tenant, id));
     CREATE UNIQUE INDEX users_external_id ON users (tenant, external_id);
     CREATE TABLE faces (
         tenant text NOT NULL, id bigint NOT NULL, user_id bigint NOT NULL,
         record bytea NOT NULL, embedding bytea NOT NULL,
         PRIMARY KEY (tenant, id));
     CREATE TABLE face_images (
         tenant text NOT NULL, face_id bigint NOT NULL, original bytea NOT NULL, thumbnail bytea NOT NULL,
         PRIMARY KEY (tenant, face_id));
     CREATE TABLE tokens (hash bytea PRIMARY KEY, expires_ns bigint NOT NULL, record bytea NOT NULL);
     CREATE INDEX tokens_expiry ON tokens (expires_ns);
     CREATE TABLE change_log (seq bigint PRIMARY KEY, tenant text NOT NULL, record bytea NOT NULL);
     CREATE TABLE log_head (id int PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL);
     INSERT INTO log_head VALUES (1, 0);
     CREATE TABLE log_compacted (id int PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL);
     INSERT INTO log_compacted VALUES (1, 0);
     CREATE TABLE tenant_fences (tenant text PRIMARY KEY, fence bigint NOT NULL);
     CREATE TABLE nodes (id text PRIMARY KEY, applied bigint NOT NULL, seen_at timestamptz NOT NULL);",
    // 2: the second embedding slot (storage/models.rs); empty: none.
    "ALTER TABLE faces ADD COLUMN embedding_1 bytea NOT NULL DEFAULT ''::bytea;",
    // 3: request ids of idempotent writes (storage/requests.rs); owner: the user whose data the
    // response holds (erased with the user).
    "CREATE TABLE requests (
         tenant text NOT NULL, id text NOT NULL, created_ns bigint NOT NULL, owner bigint,
         record bytea NOT NULL, PRIMARY KEY (tenant, id));
     CREATE INDEX requests_created ON requests (created_ns);
     CREATE INDEX requests_owner ON requests (tenant, owner) WHERE owner IS NOT NULL;",
    // 4: face lists and their entries (storage/lists.rs): the records of sled's `face_lists` and
    // `list_entries` trees (an entry's embedding and thumbnail sealed inside its record); a
    // list's entries in id order by the index (sled's `list_members`).
    "CREATE TABLE face_lists (
         tenant text NOT NULL, id bigint NOT NULL, record bytea NOT NULL, PRIMARY KEY (tenant, id));
     CREATE TABLE list_entries (
         tenant text NOT NULL, id bigint NOT NULL, list_id bigint NOT NULL, record bytea NOT NULL,
         PRIMARY KEY (tenant, id));
     CREATE INDEX list_entries_list ON list_entries (tenant, list_id, id);",
];

/// The advisory lock of migrations (namespace, 0).
const MIGRATION_LOCK: (i32, i32) = (0x4656_0000, 0);

impl PgStore {
    pub(super) async fn migrate(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        conn.execute("SELECT pg_advisory_lock($1, $2)", &[&MIGRATION_LOCK.0, &MIGRATION_LOCK.1])
            .await
            .map_err(pg_error)?;
        // The key is checked (and a new store tied to it) under the same lock: two nodes that
        // start together on an empty database cannot tie it to two keys.
        let migrated = match migrate_locked(&mut conn).await {
            Ok(()) => self.check_encryption().await,
            Err(e) => Err(e),
        };
        // Released on a connection that is still open; a closed one released it already.
        let _ = conn.execute("SELECT pg_advisory_unlock($1, $2)", &[&MIGRATION_LOCK.0, &MIGRATION_LOCK.1]).await;
        migrated
    }

    /// A value of `meta`.
    pub(super) async fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let conn = self.conn().await?;
        let key = String::from_utf8_lossy(key).into_owned();
        let row = conn.query_opt("SELECT value FROM meta WHERE key = $1", &[&key]).await.map_err(pg_error)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Sets a value of `meta` (committed, so durable).
    pub(super) async fn set_meta(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let conn = self.conn().await?;
        let key = String::from_utf8_lossy(key).into_owned();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2",
            &[&key, &value],
        )
        .await
        .map_err(pg_error)?;
        Ok(())
    }

    /// As sled's `check_encryption`: refuses an encrypted store without its key or with
    /// another, and a plain store holding faces with a key; ties a new store to its key.
    pub(super) async fn check_encryption(&self) -> Result<()> {
        let stored = self.meta(keys::ENCRYPTION_CHECK_KEY).await?;
        match (stored, &self.encryption) {
            (None, None) => Ok(()),
            (Some(_), None) => Err(refuse(
                "the PostgreSQL store is encrypted: start with --encryption-key-file naming the file of its key".into(),
            )),
            (Some(check), Some(key)) if key.opens_check(&check) => Ok(()),
            (Some(_), Some(_)) => Err(refuse(
                "the PostgreSQL store is encrypted with a different key than the one in --encryption-key-file".into(),
            )),
            (None, Some(key)) => {
                // One connection at a time (the migration lock holds another).
                let holds: bool = self
                    .conn()
                    .await?
                    .query_one("SELECT EXISTS (SELECT 1 FROM faces) OR EXISTS (SELECT 1 FROM change_log)", &[])
                    .await
                    .map_err(pg_error)?
                    .get(0);
                if holds {
                    return Err(refuse(
                        "the PostgreSQL store holds unencrypted faces and cannot be encrypted in place: start without \
                         --encryption-key-file, or with it on a new database"
                            .into(),
                    ));
                }
                let check = key.seal(keys::META, keys::ENCRYPTION_CHECK_KEY, crate::storage::seal::CHECK_PLAINTEXT)?;
                self.set_meta(keys::ENCRYPTION_CHECK_KEY, &check).await
            }
        }
    }

    /// As sled's `check_embedder`: refuses a store built with another embedder; records this
    /// one in a new store.
    pub(super) async fn check_embedder(&self, embedder: &EmbedderRecord) -> Result<()> {
        if let Some(bytes) = self.meta(keys::EMBEDDER_KEY).await? {
            let stored: pb::EmbedderRecord = pb::EmbedderRecord::decode(bytes.as_slice())
                .map_err(|e| Error::internal("decoding the embedder", e))?;
            let stored = EmbedderRecord { id: stored.id, sha256: stored.sha256 };
            if stored == *embedder {
                return Ok(());
            }
            return Err(refuse(format!(
                "the PostgreSQL store was built with embedder {stored}, but the configured embedder is {embedder}; \
                 embeddings of different models cannot be compared: start with the store's embedder \
                 (--embedder-id, --embedder-model), or with a new database"
            )));
        }
        let record = pb::EmbedderRecord { id: embedder.id.clone(), sha256: embedder.sha256.clone() };
        self.set_meta(keys::EMBEDDER_KEY, &record.encode_to_vec()).await
    }
}

async fn migrate_locked(conn: &mut tokio_postgres::Client) -> Result<()> {
    conn.batch_execute("CREATE TABLE IF NOT EXISTS facevault_schema (version int NOT NULL)").await.map_err(pg_error)?;
    let version: i32 = match conn.query_opt("SELECT version FROM facevault_schema", &[]).await.map_err(pg_error)? {
        Some(row) => row.get(0),
        None => {
            conn.execute("INSERT INTO facevault_schema VALUES (0)", &[]).await.map_err(pg_error)?;
            0
        }
    };
    let known = MIGRATIONS.len() as i32;
    if version > known {
        return Err(refuse(format!(
            "the PostgreSQL store has schema version {version}, newer than this build's {known}: start a newer \
             facevault"
        )));
    }
    for (number, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let number = number as i32 + 1;
        let tx = conn.transaction().await.map_err(pg_error)?;
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute("UPDATE facevault_schema SET version = $1", &[&number]).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(version = number, "PostgreSQL schema migrated");
    }
    Ok(())
}

fn refuse(message: String) -> Error {
    Error::Unavailable { message }
}
