//! `verify`, table sizes and raw rows of the PostgreSQL store, in sled's terms (the names of
//! sled's trees, its keys) so that the checks and tests of both backends read alike.

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::{PgStore, from_db, pg_error, read_snapshot};
use crate::domain::{FaceId, Tenant, UserId};
use crate::error::{Error, Result};
use crate::storage::faces::embedding_owner;
use crate::storage::records::pb;
use crate::storage::seal::unseal_with;
use crate::storage::{Integrity, keys};

/// Every table as sled's trees: (tree name, SQL giving key parts and the value).
const TREES: &[(&str, &str)] = &[
    (keys::USERS, "SELECT tenant, id, record FROM users ORDER BY tenant, id"),
    (keys::EXTERNAL_IDS, "SELECT tenant, external_id, id FROM users ORDER BY tenant, external_id"),
    (keys::FACES, "SELECT tenant, id, record FROM faces ORDER BY tenant, id"),
    (keys::EMBEDDINGS, "SELECT tenant, id, embedding FROM faces WHERE embedding <> ''::bytea ORDER BY tenant, id"),
    (
        keys::EMBEDDINGS_1,
        "SELECT tenant, id, embedding_1 FROM faces WHERE embedding_1 <> ''::bytea ORDER BY tenant, id",
    ),
    (keys::IMAGES, "SELECT tenant, face_id, original FROM face_images ORDER BY tenant, face_id"),
    (keys::THUMBNAILS, "SELECT tenant, face_id, thumbnail FROM face_images ORDER BY tenant, face_id"),
    (keys::TOKENS, "SELECT hash, record FROM tokens ORDER BY hash"),
    (keys::CHANGE_LOG, "SELECT seq, record FROM change_log ORDER BY seq"),
    (keys::META, "SELECT key, value FROM meta ORDER BY key"),
    (keys::REQUESTS, "SELECT tenant, id, record FROM requests ORDER BY tenant, id"),
    (keys::FACE_LISTS, "SELECT tenant, id, record FROM face_lists ORDER BY tenant, id"),
    (keys::LIST_ENTRIES, "SELECT tenant, id, record FROM list_entries ORDER BY tenant, id"),
    // sled's index of a list's entries: here the index on (tenant, list_id, id).
    (keys::LIST_MEMBERS, "SELECT tenant, list_id, id FROM list_entries ORDER BY tenant, list_id, id"),
];

/// Calls `each` with every row of `sql`, fetched a batch at a time (a table of millions of
/// faces and images is never held in memory at once).
async fn each_row(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    mut each: impl FnMut(&tokio_postgres::Row) -> Result<()>,
) -> Result<()> {
    const BATCH: i32 = 1024;
    let portal = tx.bind(sql, &[]).await.map_err(pg_error)?;
    loop {
        let rows = tx.query_portal(&portal, BATCH).await.map_err(pg_error)?;
        for row in &rows {
            each(row)?;
        }
        if rows.len() < BATCH as usize {
            return Ok(());
        }
    }
}

fn tenant(row: &tokio_postgres::Row) -> Result<Tenant> {
    Tenant::new(row.get(0)).ok_or_else(|| Error::bug("a row names a bad tenant"))
}

impl PgStore {
    pub(super) async fn raw_entries(&self, tree: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let sql = TREES.iter().find(|(name, _)| *name == tree).map(|(_, sql)| *sql);
        let Some(sql) = sql else {
            return Err(Error::bug("no such table"));
        };
        let conn = self.conn().await?;
        let rows = conn.query(sql, &[]).await.map_err(pg_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let entry = match tree {
                keys::TOKENS => (row.get::<_, Vec<u8>>(0), row.get::<_, Vec<u8>>(1)),
                keys::META => (row.get::<_, String>(0).into_bytes(), row.get(1)),
                keys::CHANGE_LOG => ((row.get::<_, i64>(0) as u64).to_be_bytes().to_vec(), row.get(1)),
                keys::REQUESTS => (crate::storage::requests::record_key(&tenant(row)?, row.get(1)), row.get(2)),
                keys::LIST_MEMBERS => {
                    // As sled's key: tenant ‖ 0x00 ‖ list id ‖ entry id, no value.
                    let mut key = keys::tenant_prefix(&tenant(row)?);
                    key.extend_from_slice(&from_db(row.get(1)).to_be_bytes());
                    key.extend_from_slice(&from_db(row.get(2)).to_be_bytes());
                    (key, Vec::new())
                }
                keys::EXTERNAL_IDS => {
                    (keys::external_key(&tenant(row)?, row.get(1)), from_db(row.get(2)).to_be_bytes().to_vec())
                }
                _ => (keys::face_key(&tenant(row)?, FaceId(from_db(row.get(1)))), row.get(2)),
            };
            out.push(entry);
        }
        Ok(out)
    }

    pub(super) async fn tree_sizes(&self) -> Result<Vec<(&'static str, usize)>> {
        let conn = self.conn().await?;
        let row = conn
            .query_one(
                "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM faces), \
                 (SELECT count(*) FROM face_images), (SELECT count(*) FROM tokens), \
                 (SELECT count(*) FROM change_log), (SELECT count(*) FROM requests), \
                 (SELECT count(*) FROM face_lists), (SELECT count(*) FROM list_entries)",
                &[],
            )
            .await
            .map_err(pg_error)?;
        let n = |i: usize| row.get::<_, i64>(i) as usize;
        Ok(vec![
            (keys::USERS, n(0)),
            (keys::EXTERNAL_IDS, n(0)),
            (keys::FACES, n(1)),
            (keys::EMBEDDINGS, n(1)),
            (keys::IMAGES, n(2)),
            (keys::THUMBNAILS, n(2)),
            (keys::TOKENS, n(3)),
            (keys::REQUESTS, n(5)),
            (keys::CHANGE_LOG, n(4)),
            (keys::FACE_LISTS, n(6)),
            (keys::LIST_ENTRIES, n(7)),
            (keys::LIST_MEMBERS, n(7)),
        ])
    }

    /// As sled's `verify`: every user's faces have a record, an embedding, an original and a
    /// thumbnail of that user (opening with the key); no face data no user lists; limits;
    /// tokens held by their users; the log without gaps. Read from one snapshot.
    pub(super) async fn verify(&self, max_faces: usize) -> Result<Integrity> {
        let mut conn = self.conn().await?;
        let tx = read_snapshot(&mut conn).await?;
        tx.batch_execute("SET LOCAL statement_timeout = 0").await.map_err(pg_error)?;
        let enc = self.encryption.as_ref();
        let mut report = Integrity::default();
        let mut problems = Vec::new();
        let mut listed: HashMap<(Tenant, u64), u64> = HashMap::new();
        let mut token_holders: HashMap<Vec<u8>, (Tenant, u64)> = HashMap::new();
        each_row(&tx, "SELECT tenant, id, external_id, record FROM users", |row| {
            let tenant = tenant(row)?;
            let id = from_db(row.get(1));
            let Ok(record) = pb::UserRecord::decode(row.get::<_, &[u8]>(3)) else {
                problems.push(format!("users: user {id:016x} of tenant {} does not decode", tenant.as_str()));
                return Ok(());
            };
            report.users += 1;
            if record.id != id || record.external_id != row.get::<_, &str>(2) {
                problems.push(format!("users: row {id:016x} disagrees with its record"));
            }
            if record.face_ids.len() > max_faces {
                problems.push(format!("users: user {id:016x} lists {} faces", record.face_ids.len()));
            }
            if !record.reenrollment_token_hash.is_empty() {
                token_holders.insert(record.reenrollment_token_hash.clone(), (tenant.clone(), id));
            }
            for &face in &record.face_ids {
                if listed.insert((tenant.clone(), face), id).is_some() {
                    problems.push(format!("users: face {face:016x} is listed twice"));
                }
            }
            Ok(())
        })
        .await?;
        report.faces = listed.len();
        let mut stored = HashSet::new();
        let active = super::models::read_state(&tx).await?.active;
        let sql = format!("SELECT tenant, id, user_id, record, {} FROM faces", super::models::slot_column(active));
        each_row(&tx, &sql, |row| {
            let tenant = tenant(row)?;
            let (face, owner) = (from_db(row.get(1)), from_db(row.get(2)));
            let key = keys::face_key(&tenant, FaceId(face));
            match listed.get(&(tenant.clone(), face)) {
                Some(&user) if user == owner => {}
                Some(&user) => problems.push(format!("faces: face {face:016x} does not belong to user {user:016x}")),
                None => problems.push(format!("faces: orphan face {face:016x}")),
            }
            match pb::FaceRecord::decode(row.get::<_, &[u8]>(3)) {
                Ok(record) if record.id == face && record.user_id == owner => {}
                _ => problems.push(format!("faces: face {face:016x} has a record of another face")),
            }
            match unseal_with(enc, keys::EMBEDDINGS, &key, row.get(4)) {
                Ok(plain) if embedding_owner(&plain) == Some(UserId(owner)) => {}
                Ok(_) => problems.push(format!("embeddings: face {face:016x} is malformed or not its user's")),
                Err(_) => problems.push(format!("embeddings: face {face:016x} fails authentication")),
            }
            stored.insert((tenant, face));
            Ok(())
        })
        .await?;
        let mut imaged = HashSet::new();
        each_row(&tx, "SELECT tenant, face_id, original, thumbnail FROM face_images", |row| {
            let tenant = tenant(row)?;
            let face = from_db(row.get(1));
            let key = keys::face_key(&tenant, FaceId(face));
            for (name, column) in [(keys::IMAGES, 2), (keys::THUMBNAILS, 3)] {
                if unseal_with(enc, name, &key, row.get(column)).is_err() {
                    problems.push(format!("{name}: face {face:016x} fails authentication"));
                }
            }
            if !listed.contains_key(&(tenant.clone(), face)) {
                problems.push(format!("images: orphan face {face:016x}"));
            }
            imaged.insert((tenant, face));
            Ok(())
        })
        .await?;
        for (tenant, face) in listed.keys() {
            let id = (tenant.clone(), *face);
            if !stored.contains(&id) {
                problems.push(format!("faces: face {face:016x} has no record"));
            }
            if !imaged.contains(&id) {
                problems.push(format!("images: face {face:016x} has none"));
            }
        }
        for row in tx.query("SELECT hash, record FROM tokens", &[]).await.map_err(pg_error)? {
            let holder = pb::TokenRecord::decode(row.get::<_, &[u8]>(1))
                .ok()
                .and_then(|t| Some((Tenant::new(&t.tenant)?, t.user_id)));
            if holder.is_none() || token_holders.get(row.get::<_, &[u8]>(0)) != holder.as_ref() {
                problems.push("reenrollment_tokens: a token its user does not hold".to_owned());
            }
        }
        let row = tx
            .query_one(
                "SELECT h.seq, k.seq, count(c.seq), coalesce(min(c.seq), 0), coalesce(max(c.seq), 0) \
                 FROM log_head h JOIN log_compacted k ON k.id = 1 LEFT JOIN change_log c ON true \
                 WHERE h.id = 1 GROUP BY h.seq, k.seq",
                &[],
            )
            .await
            .map_err(pg_error)?;
        let (head, compacted, count, min, max) = (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3),
            row.get::<_, i64>(4),
        );
        if count != head - compacted || (count > 0 && (min != compacted + 1 || max != head)) {
            problems.push(format!("change_log: entries {min}..={max} ({count}) do not fill {compacted}..{head}"));
        }
        tx.commit().await.map_err(pg_error)?;
        report.problems = problems;
        Ok(report)
    }
}
