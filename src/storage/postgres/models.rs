//! The embedding slots on PostgreSQL (storage/models.rs): slot 0 is `faces.embedding`, slot 1
//! `faces.embedding_1`; an empty value is no embedding. The model state is the `meta` row
//! "models". Face writes hold the models lock shared and check the state's generation in their
//! transaction; a change of state holds it exclusively: so no write commits embeddings of models
//! the store stopped keeping, on any node.

use std::time::SystemTime;

use tokio_postgres::Transaction;

use super::{PgStore, from_db, pg_error, to_db};
use crate::domain::{Embedding, FaceId, Tenant, UserId};
use crate::error::{Error, Result};
use crate::storage::faces::encode_embedding;
use crate::storage::models::{MODELS_KEY, ModelState, ReindexState, models_changed};
use crate::storage::records::pb;
use crate::storage::seal::seal_with;
use crate::storage::{EmbedderRecord, keys};

/// The advisory lock of the model state (namespace, 1): shared by face writes, exclusive for a
/// change of state.
const MODELS_LOCK: (i32, i32) = (0x4656_0000, 1);

/// The column of a slot.
pub(super) fn slot_column(slot: usize) -> &'static str {
    if slot == 1 { "embedding_1" } else { "embedding" }
}

fn models_key() -> String {
    String::from_utf8_lossy(MODELS_KEY).into_owned()
}

fn embedder_key() -> String {
    String::from_utf8_lossy(keys::EMBEDDER_KEY).into_owned()
}

/// The state as `client` (a connection, or a transaction) sees it.
pub(super) async fn read_state(client: &impl tokio_postgres::GenericClient) -> Result<ModelState> {
    let rows = client
        .query("SELECT key, value FROM meta WHERE key = $1 OR key = $2", &[&models_key(), &embedder_key()])
        .await
        .map_err(pg_error)?;
    let mut embedder = None;
    for row in &rows {
        let (key, value): (String, &[u8]) = (row.get(0), row.get(1));
        if key == models_key() {
            return ModelState::decode(value);
        }
        let record: pb::EmbedderRecord =
            prost::Message::decode(value).map_err(|e| Error::internal("decoding the embedder", e))?;
        embedder = Some(EmbedderRecord { id: record.id, sha256: record.sha256 });
    }
    Ok(embedder.map(ModelState::single).unwrap_or_default())
}

/// In a face write's transaction: the models lock, shared, and a check that the state is still
/// the one of `generation` (the embeddings were placed by it).
pub(super) async fn hold_models(tx: &Transaction<'_>, generation: u64) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock_shared($1, $2)", &[&MODELS_LOCK.0, &MODELS_LOCK.1])
        .await
        .map_err(pg_error)?;
    if read_state(tx).await?.generation != generation {
        return Err(models_changed());
    }
    Ok(())
}

async fn write_state(tx: &Transaction<'_>, state: &ModelState) -> Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2",
        &[&models_key(), &state.encode()],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

impl PgStore {
    pub(super) async fn model_state(&self) -> Result<ModelState> {
        read_state(&*self.conn().await?).await
    }

    pub(super) async fn set_model_state(
        &self,
        expected: u64,
        state: &ModelState,
        announce: bool,
    ) -> Result<(u64, ModelState)> {
        let mut next = state.clone();
        next.generation = expected + 1;
        let active = next.active_embedder()?.id.clone();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&MODELS_LOCK.0, &MODELS_LOCK.1])
            .await
            .map_err(pg_error)?;
        if read_state(&tx).await?.generation != expected {
            return Err(models_changed());
        }
        write_state(&tx, &next).await?;
        let seq = if announce {
            let tenant = Tenant::new(crate::storage::log::MODELS_TENANT).ok_or_else(|| Error::bug("models tenant"))?;
            super::log::append(&tx, &tenant, &crate::storage::reindex::models_record(&active, next.generation)).await?
        } else {
            0
        };
        tx.commit().await.map_err(pg_error)?;
        Ok((seq, next))
    }

    pub(super) async fn faces_without_embedding(
        &self,
        slot: usize,
        after: Option<(Tenant, FaceId)>,
        limit: usize,
    ) -> Result<Vec<(Tenant, FaceId)>> {
        let conn = self.conn().await?;
        let (t, id) = after.map_or((String::new(), i64::MIN), |(t, f)| (t.as_str().to_owned(), to_db(f.0)));
        let sql = format!(
            "SELECT tenant, id FROM faces WHERE {} = ''::bytea AND (tenant, id) > ($1, $2) ORDER BY tenant, id LIMIT $3",
            slot_column(slot)
        );
        let rows = conn.query(&sql, &[&t, &id, &(limit as i64)]).await.map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                let tenant = Tenant::new(row.get(0)).ok_or_else(|| Error::bug("a face row names a bad tenant"))?;
                Ok((tenant, FaceId(from_db(row.get(1)))))
            })
            .collect()
    }

    pub(super) async fn put_reindexed(
        &self,
        model: &str,
        worker: &str,
        items: &[(Tenant, FaceId, Embedding)],
        failed: u64,
        lease_until: SystemTime,
    ) -> Result<ModelState> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        // Shared: face writes go on; a change of state waits for this transaction. The state's
        // row is locked: the worker's batches and its lease's heartbeat update it in turn.
        tx.execute("SELECT pg_advisory_xact_lock_shared($1, $2)", &[&MODELS_LOCK.0, &MODELS_LOCK.1])
            .await
            .map_err(pg_error)?;
        tx.execute("SELECT 1 FROM meta WHERE key = $1 FOR UPDATE", &[&models_key()]).await.map_err(pg_error)?;
        let mut state = read_state(&tx).await?;
        let to_model = state.slots[state.to_slot].as_ref().map(|e| e.id.as_str());
        if state.state != ReindexState::Running || to_model != Some(model) || state.worker != worker {
            return Err(models_changed());
        }
        let column = slot_column(state.to_slot);
        let select = "SELECT user_id FROM faces WHERE tenant = $1 AND id = $2 FOR UPDATE";
        let update = format!("UPDATE faces SET {column} = $3 WHERE tenant = $1 AND id = $2");
        let mut stored = 0;
        for (tenant, face, embedding) in items {
            let (t, id) = (tenant.as_str(), to_db(face.0));
            let Some(row) = tx.query_opt(select, &[&t, &id]).await.map_err(pg_error)? else { continue };
            let user = UserId(from_db(row.get(0)));
            let key = keys::face_key(tenant, *face);
            let plain = encode_embedding(user, model, embedding);
            let value = seal_with(self.encryption.as_ref(), keys::EMBEDDINGS, &key, &plain)?.into_owned();
            tx.execute(&update, &[&t, &id, &value]).await.map_err(pg_error)?;
            stored += 1;
        }
        state.done += stored;
        state.failed += failed;
        state.update_time = Some(SystemTime::now());
        state.lease_until = Some(lease_until);
        write_state(&tx, &state).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(state)
    }

    /// Empties the slot a thousand rows per transaction (none runs long or locks every row;
    /// an interrupted clear is finished by the next one). Each holds the models lock
    /// exclusively and stops when the models write the slot again (a reindex started
    /// meanwhile keeps what it stores there).
    pub(super) async fn clear_slot(&self, slot: usize) -> Result<()> {
        let mut conn = self.conn().await?;
        let column = slot_column(slot);
        let sql = format!(
            "UPDATE faces SET {column} = ''::bytea WHERE (tenant, id) IN \
             (SELECT tenant, id FROM faces WHERE {column} <> ''::bytea LIMIT 1000)"
        );
        // Most calls find the slot empty (every start checks): found without the lock, which
        // face writes wait for.
        let any = format!("SELECT EXISTS (SELECT 1 FROM faces WHERE {column} <> ''::bytea)");
        if !conn.query_one(&any, &[]).await.map_err(pg_error)?.get::<_, bool>(0) {
            return Ok(());
        }
        loop {
            let tx = conn.transaction().await.map_err(pg_error)?;
            tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&MODELS_LOCK.0, &MODELS_LOCK.1])
                .await
                .map_err(pg_error)?;
            if read_state(&tx).await?.written_slots().iter().any(|(s, _)| *s == slot) {
                return Ok(());
            }
            let cleared = tx.execute(&sql, &[]).await.map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            if cleared == 0 {
                return Ok(());
            }
        }
    }

    pub(super) async fn for_each_slot_embedding(
        &self,
        slot: usize,
        each: &mut (dyn FnMut(crate::storage::StoredEmbedding) -> Result<()> + Send),
    ) -> Result<()> {
        let mut conn = self.conn().await?;
        let tx = super::read_snapshot(&mut conn).await?;
        let column = slot_column(slot);
        let expected = read_state(&tx).await?.slots[slot].clone().map(|e| e.id).unwrap_or_default();
        let sql = format!("SELECT tenant, id, {column} FROM faces WHERE {column} <> ''::bytea");
        let portal = tx.bind(sql.as_str(), &[]).await.map_err(pg_error)?;
        loop {
            let rows = tx.query_portal(&portal, 1024).await.map_err(pg_error)?;
            for row in &rows {
                let tenant = Tenant::new(row.get(0)).ok_or_else(|| Error::bug("a face row names a bad tenant"))?;
                let face_id = FaceId(from_db(row.get(1)));
                let (user_id, embedding) = self.open_embedding(&tenant, face_id, row.get(2), &expected)?;
                each(crate::storage::StoredEmbedding { tenant, face_id, user_id, embedding })?;
            }
            if rows.len() < 1024 {
                break;
            }
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(())
    }

    pub(super) async fn count_faces(&self) -> Result<u64> {
        let conn = self.conn().await?;
        let n: i64 = conn.query_one("SELECT count(*) FROM faces", &[]).await.map_err(pg_error)?.get(0);
        Ok(n as u64)
    }

    /// The column of `model`'s embeddings, and the model its values must name (empty in a
    /// store that records none: any); MODELS_CHANGED when the store keeps none of it.
    pub(super) async fn model_column<'m>(&self, model: &'m str) -> Result<(&'static str, &'m str)> {
        let state = self.model_state().await?;
        let slot = state.slot_of(model).ok_or_else(models_changed)?;
        Ok((slot_column(slot), if state.unrecorded() { "" } else { model }))
    }
}
