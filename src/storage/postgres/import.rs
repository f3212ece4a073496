//! `facevault migrate` on the PostgreSQL side: a user exported from sled (storage/export.rs)
//! inserted as it is, records and sealed values byte for byte, in one transaction with its faces,
//! images and token; and the per-tenant tallies of what the tables hold, to compare with the
//! source's. No change-log entry is written: every node rebuilds its index from the records at
//! start (`for_each_embedding`), so the imported faces are searchable without one.

use std::collections::BTreeMap;

use tokio_postgres::types::Type;

use super::{PgStore, from_db, pg_error, read_snapshot, to_db};
use crate::domain::Tenant;
use crate::error::{Error, Result};
use crate::storage::export::{Imported, RawFace, RawUser, Tally, token_tenant};

/// Rows fetched at a time by the tallies' scans.
const BATCH: i32 = 512;

/// The tally of the tenant a row names.
fn tally<'a>(tallies: &'a mut BTreeMap<Tenant, Tally>, name: &str) -> Result<&'a mut Tally> {
    let tenant = Tenant::new(name).ok_or_else(|| Error::bug("a row names a bad tenant"))?;
    Ok(tallies.entry(tenant).or_default())
}

fn conflict(message: String) -> Error {
    Error::Unavailable { message: format!("the target already holds different data: {message}") }
}

impl PgStore {
    /// Inserts `user` with its faces, images and token in one transaction; `Present` (and
    /// nothing written) when an earlier run copied it. A different user under its id or its
    /// external id, or a face, image or token of it stored for another, is an error: nothing is
    /// overwritten.
    pub(crate) fn import_user(&self, user: &RawUser) -> Result<Imported> {
        self.write(|| self.insert_raw(user))
    }

    async fn insert_raw(&self, user: &RawUser) -> Result<Imported> {
        let (t, id, who) = (user.tenant.as_str(), to_db(user.id), format!("user {:016x}", user.id));
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        // Not flushed one by one (an fsync per user would bound the rate): `make_durable` ends
        // the copy, and a commit that a crash loses is copied again by the next run. Statements
        // are typed: one round trip each, no prepare.
        tx.batch_execute("SET LOCAL synchronous_commit = off").await.map_err(pg_error)?;
        let inserted = tx
            .execute_typed(
                "INSERT INTO users (tenant, id, external_id, record) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[(&t, Type::TEXT), (&id, Type::INT8), (&user.external_id, Type::TEXT), (&user.record, Type::BYTEA)],
            )
            .await
            .map_err(pg_error)?;
        if inserted == 0 {
            let row = tx
                .query_typed_opt(
                    "SELECT record FROM users WHERE tenant = $1 AND id = $2",
                    &[(&t, Type::TEXT), (&id, Type::INT8)],
                )
                .await
                .map_err(pg_error)?;
            return match row {
                Some(row) if row.get::<_, &[u8]>(0) == user.record.as_slice() => Ok(Imported::Present),
                Some(_) => Err(conflict(format!("a different {who} in tenant {t}"))),
                None => Err(conflict(format!("another user of tenant {t} has the external id of {who}"))),
            };
        }
        let faces = &user.faces;
        let ids: Vec<i64> = faces.iter().map(|f| to_db(f.id)).collect();
        let column =
            |value: fn(&RawFace) -> &Vec<u8>| -> Vec<&[u8]> { faces.iter().map(|f| value(f).as_slice()).collect() };
        let (records, embeddings) = (column(|f| &f.record), column(|f| &f.embedding));
        let (originals, thumbnails) = (column(|f| &f.original), column(|f| &f.thumbnail));
        let rows = tx
            .execute_typed(
                "INSERT INTO faces (tenant, id, user_id, record, embedding) \
                 SELECT $1, f.id, $2, f.record, f.embedding FROM unnest($3, $4, $5) AS f (id, record, embedding) \
                 ON CONFLICT DO NOTHING",
                &[
                    (&t, Type::TEXT),
                    (&id, Type::INT8),
                    (&ids, Type::INT8_ARRAY),
                    (&records, Type::BYTEA_ARRAY),
                    (&embeddings, Type::BYTEA_ARRAY),
                ],
            )
            .await
            .map_err(pg_error)?;
        let images = tx
            .execute_typed(
                "INSERT INTO face_images (tenant, face_id, original, thumbnail) \
                 SELECT $1, i.id, i.original, i.thumbnail FROM unnest($2, $3, $4) AS i (id, original, thumbnail) \
                 ON CONFLICT DO NOTHING",
                &[
                    (&t, Type::TEXT),
                    (&ids, Type::INT8_ARRAY),
                    (&originals, Type::BYTEA_ARRAY),
                    (&thumbnails, Type::BYTEA_ARRAY),
                ],
            )
            .await
            .map_err(pg_error)?;
        if rows != faces.len() as u64 || images != faces.len() as u64 {
            return Err(conflict(format!("a face of {who} in tenant {t} is stored for another user")));
        }
        if let Some(token) = &user.token {
            let inserted = tx
                .execute_typed(
                    "INSERT INTO tokens (hash, expires_ns, record) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[(&token.hash, Type::BYTEA), (&token.expires_ns, Type::INT8), (&token.record, Type::BYTEA)],
                )
                .await
                .map_err(pg_error)?;
            if inserted == 0 {
                return Err(conflict(format!("the re-enrollment token of {who} in tenant {t} is another user's")));
            }
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(Imported::Copied)
    }

    /// Makes every import committed so far durable: a transaction that takes a transaction id
    /// commits with a WAL record, flushed (`synchronous_commit` is on) with all before it.
    pub(crate) fn make_durable(&self) -> Result<()> {
        self.write(|| async {
            let mut conn = self.conn().await?;
            let tx = conn.transaction().await.map_err(pg_error)?;
            tx.batch_execute("SELECT txid_current()").await.map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        })
    }

    /// How many nodes (servers) reported their position in the last minute: they serve this
    /// database now, with an index that the copy's records (no log entries) do not reach.
    pub(crate) fn live_nodes(&self) -> Result<usize> {
        self.exec(|| async {
            let conn = self.conn().await?;
            let row = conn
                .query_one("SELECT count(*) FROM nodes WHERE seen_at > now() - interval '1 minute'", &[])
                .await
                .map_err(pg_error)?;
            Ok(row.get::<_, i64>(0) as usize)
        })
    }

    /// Each tenant's users, faces and tokens counted and checksummed (export.rs), from one
    /// snapshot of the database. An image row without its face, or a face without its images,
    /// counts as a face with values missing, so it shows as a difference.
    pub(crate) fn tallies(&self) -> Result<BTreeMap<Tenant, Tally>> {
        self.exec(|| self.scan_tallies())
    }

    async fn scan_tallies(&self) -> Result<BTreeMap<Tenant, Tally>> {
        let mut conn = self.conn().await?;
        let tx = read_snapshot(&mut conn).await?;
        tx.batch_execute("SET LOCAL statement_timeout = 0").await.map_err(pg_error)?;
        let mut tallies: BTreeMap<Tenant, Tally> = BTreeMap::new();
        let scans = [
            "SELECT tenant, id, external_id, record FROM users",
            "SELECT coalesce(f.tenant, i.tenant), coalesce(f.id, i.face_id), f.user_id, f.record, f.embedding, \
             i.original, i.thumbnail \
             FROM faces f FULL JOIN face_images i ON i.tenant = f.tenant AND i.face_id = f.id",
            "SELECT hash, expires_ns, record FROM tokens",
        ];
        for (scan, sql) in scans.into_iter().enumerate() {
            let portal = tx.bind(sql, &[]).await.map_err(pg_error)?;
            loop {
                let rows = tx.query_portal(&portal, BATCH).await.map_err(pg_error)?;
                for row in &rows {
                    match scan {
                        0 => tally(&mut tallies, row.get(0))?.add_user(from_db(row.get(1)), row.get(2), row.get(3)),
                        1 => {
                            let user = row.get::<_, Option<i64>>(2).map_or(0, from_db);
                            let values = [3, 4, 5, 6].map(|i| row.get::<_, Option<&[u8]>>(i));
                            tally(&mut tallies, row.get(0))?.add_face(from_db(row.get(1)), user, values);
                        }
                        _ => {
                            let record: &[u8] = row.get(2);
                            let tenant = token_tenant(record)?;
                            tally(&mut tallies, tenant.as_str())?.add_token(row.get(0), row.get(1), record);
                        }
                    }
                }
                if rows.len() < BATCH as usize {
                    break;
                }
            }
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(tallies)
    }
}
