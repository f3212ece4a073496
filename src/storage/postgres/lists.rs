//! Face lists and their entries on PostgreSQL: the records of sled's `face_lists` and
//! `list_entries` trees in the tables of the same names, each write one transaction with its
//! change-log entry. The rules and records are sled's (storage/lists.rs); a list's entries in
//! id order come from the index on (tenant, list_id, id), where sled keeps `list_members`.

use prost::Message;

use super::users::decode;
use super::{PgStore, from_db, pg_error, read_snapshot, to_db};
use crate::domain::{EntryId, FaceList, ListEntry, ListId, Tenant, UserId};
use crate::error::{Error, Result};
use crate::storage::lists::{
    entry_from_record, entry_not_found, entry_removed_record, list_dropped_record, list_from_record, list_not_found,
    list_set_record, list_to_record, open_entry_embedding, open_entry_thumbnail,
};
use crate::storage::records::pb;
use crate::storage::{NewListEntry, Pending, RequestStamp, StoredListEntry, random_id};

/// Rows fetched at a time by the scans that load the index.
const SCAN_BATCH: i32 = 1024;

/// A list's record and its entry count, of a row (record, count).
fn list_of_row(row: &tokio_postgres::Row) -> Result<FaceList> {
    let record: pb::ListRecord = decode(row.get::<_, &[u8]>(0), "decoding a list record")?;
    list_from_record(record, row.get::<_, i64>(1) as u64)
}

fn tenant_of(value: &str) -> Result<Tenant> {
    Tenant::new(value).ok_or_else(|| Error::bug("a list row names a bad tenant"))
}

/// Calls `each` with every row of `sql` in one snapshot, fetched a batch at a time (no
/// statement timeout: a scan that loads the index may be long).
async fn scan(store: &PgStore, sql: &str, mut each: impl FnMut(&tokio_postgres::Row) -> Result<()>) -> Result<()> {
    let mut conn = store.conn().await?;
    let tx = read_snapshot(&mut conn).await?;
    tx.batch_execute("SET LOCAL statement_timeout = 0").await.map_err(pg_error)?;
    let portal = tx.bind(sql, &[]).await.map_err(pg_error)?;
    loop {
        let rows = tx.query_portal(&portal, SCAN_BATCH).await.map_err(pg_error)?;
        for row in &rows {
            each(row)?;
        }
        if rows.len() < SCAN_BATCH as usize {
            break;
        }
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(())
}

/// The select list of a list row with its entry count (`list_of_row`).
const LIST_COLUMNS: &str =
    "l.record, (SELECT count(*) FROM list_entries e WHERE e.tenant = l.tenant AND e.list_id = l.id)";

impl PgStore {
    pub(super) async fn create_list(&self, tenant: &Tenant, list: &FaceList) -> Result<Pending<FaceList>> {
        let t = tenant.as_str();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        self.check_fence(&tx, tenant).await?;
        let list = loop {
            let list = FaceList { id: ListId(random_id()?), entry_count: 0, ..list.clone() };
            let inserted = tx
                .execute(
                    "INSERT INTO face_lists (tenant, id, record) VALUES ($1, $2, $3) ON CONFLICT (tenant, id) DO NOTHING",
                    &[&t, &to_db(list.id.0), &list_to_record(&list).encode_to_vec()],
                )
                .await
                .map_err(pg_error)?;
            if inserted == 1 {
                break list;
            }
            // A random id that is taken (one in 2^64): draw again.
        };
        let seq = super::log::append(&tx, tenant, &list_set_record(tenant, &list)).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Pending::new(list, seq, || Ok(())))
    }

    pub(super) async fn get_list(&self, tenant: &Tenant, id: ListId) -> Result<Option<FaceList>> {
        let conn = self.conn().await?;
        // One statement: the record and its count from one state.
        let sql = format!("SELECT {LIST_COLUMNS} FROM face_lists l WHERE l.tenant = $1 AND l.id = $2");
        let row = conn.query_opt(&sql, &[&tenant.as_str(), &to_db(id.0)]).await.map_err(pg_error)?;
        row.as_ref().map(list_of_row).transpose()
    }

    pub(super) async fn list_lists(
        &self,
        tenant: &Tenant,
        after: Option<ListId>,
        limit: usize,
    ) -> Result<Vec<FaceList>> {
        let conn = self.conn().await?;
        // Ids are ordered as u64 (to_db keeps the order) and never 0: the same pages as sled's.
        let after = after.map_or(i64::MIN, |id| to_db(id.0));
        let sql =
            format!("SELECT {LIST_COLUMNS} FROM face_lists l WHERE l.tenant = $1 AND l.id > $2 ORDER BY l.id LIMIT $3");
        let rows = conn.query(&sql, &[&tenant.as_str(), &after, &(limit as i64)]).await.map_err(pg_error)?;
        rows.iter().map(list_of_row).collect()
    }

    pub(super) async fn all_lists(&self) -> Result<Vec<(Tenant, FaceList)>> {
        let mut out = Vec::new();
        scan(self, "SELECT tenant, record FROM face_lists ORDER BY tenant, id", |row| {
            let record: pb::ListRecord = decode(row.get::<_, &[u8]>(1), "decoding a list record")?;
            out.push((tenant_of(row.get(0))?, list_from_record(record, 0)?));
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// Deletes the list and every entry of it, in one transaction. A concurrent
    /// `put_list_entry` holds the list's row FOR SHARE: this delete waits for it, then sees its
    /// entry (each statement reads what committed before it); one that comes after finds no
    /// list.
    pub(super) async fn delete_list(&self, tenant: &Tenant, id: ListId) -> Result<Pending<()>> {
        let t = tenant.as_str();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        self.check_fence(&tx, tenant).await?;
        let deleted = tx
            .execute("DELETE FROM face_lists WHERE tenant = $1 AND id = $2", &[&t, &to_db(id.0)])
            .await
            .map_err(pg_error)?;
        if deleted == 0 {
            return Err(list_not_found());
        }
        let rows = tx
            .query("DELETE FROM list_entries WHERE tenant = $1 AND list_id = $2 RETURNING id", &[&t, &to_db(id.0)])
            .await
            .map_err(pg_error)?;
        // In id order, as sled lists them.
        let mut entries: Vec<EntryId> = rows.iter().map(|r| EntryId(from_db(r.get(0)))).collect();
        entries.sort_unstable_by_key(|e| e.0);
        let seq = super::log::append(&tx, tenant, &list_dropped_record(tenant, id, &entries)).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Pending::new((), seq, || Ok(())))
    }

    pub(super) async fn put_list_entry(
        &self,
        tenant: &Tenant,
        new: &NewListEntry,
        request: Option<&RequestStamp<'_, ListEntry>>,
    ) -> Result<Pending<ListEntry>> {
        let entry = &new.entry;
        // Sealed before the transaction: no crypto while rows are locked.
        let (record, put) = crate::storage::lists::sealed_entry(self.encryption.as_ref(), tenant, new)?;
        let t = tenant.as_str();
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        self.check_fence(&tx, tenant).await?;
        // The list's row, held to the commit: a delete of the list waits for this write.
        let list = tx
            .query_opt(
                "SELECT 1 FROM face_lists WHERE tenant = $1 AND id = $2 FOR SHARE",
                &[&t, &to_db(entry.list_id.0)],
            )
            .await
            .map_err(pg_error)?;
        if list.is_none() {
            return Err(list_not_found());
        }
        let inserted = tx
            .execute(
                "INSERT INTO list_entries (tenant, id, list_id, record) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant, id) DO NOTHING",
                &[&t, &to_db(entry.id.0), &to_db(entry.list_id.0), &record],
            )
            .await
            .map_err(pg_error)?;
        if inserted == 0 {
            return Err(Error::bug("a list entry id was taken"));
        }
        let seq = super::log::append(&tx, tenant, &put).await?;
        super::requests::record(&tx, tenant, request, entry).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Pending::new(entry.clone(), seq, || Ok(())))
    }

    pub(super) async fn get_list_entry(&self, tenant: &Tenant, id: EntryId) -> Result<Option<(ListEntry, Vec<u8>)>> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                "SELECT record FROM list_entries WHERE tenant = $1 AND id = $2",
                &[&tenant.as_str(), &to_db(id.0)],
            )
            .await
            .map_err(pg_error)?;
        let Some(row) = row else { return Ok(None) };
        self.open_entry(tenant, row.get(0)).map(Some)
    }

    /// An entry and its thumbnail from its stored record.
    fn open_entry(&self, tenant: &Tenant, bytes: &[u8]) -> Result<(ListEntry, Vec<u8>)> {
        let record: pb::ListEntryRecord = decode(bytes, "decoding a list entry")?;
        let thumbnail = open_entry_thumbnail(self.encryption.as_ref(), tenant, &record)?;
        Ok((entry_from_record(&record), thumbnail))
    }

    pub(super) async fn list_entries(
        &self,
        tenant: &Tenant,
        list: ListId,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<(ListEntry, Vec<u8>)>> {
        let t = tenant.as_str();
        let mut conn = self.conn().await?;
        let tx = read_snapshot(&mut conn).await?;
        let exists = tx
            .query_opt("SELECT 1 FROM face_lists WHERE tenant = $1 AND id = $2", &[&t, &to_db(list.0)])
            .await
            .map_err(pg_error)?;
        if exists.is_none() {
            return Err(list_not_found());
        }
        let after = after.map_or(i64::MIN, |e| to_db(e.0));
        let rows = tx
            .query(
                "SELECT record FROM list_entries WHERE tenant = $1 AND list_id = $2 AND id > $3 ORDER BY id LIMIT $4",
                &[&t, &to_db(list.0), &after, &(limit as i64)],
            )
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        rows.iter().map(|row| self.open_entry(tenant, row.get(0))).collect()
    }

    pub(super) async fn delete_list_entry(&self, tenant: &Tenant, id: EntryId) -> Result<Pending<()>> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        self.check_fence(&tx, tenant).await?;
        let deleted = tx
            .execute("DELETE FROM list_entries WHERE tenant = $1 AND id = $2", &[&tenant.as_str(), &to_db(id.0)])
            .await
            .map_err(pg_error)?;
        if deleted == 0 {
            return Err(entry_not_found());
        }
        let seq = super::log::append(&tx, tenant, &entry_removed_record(tenant, id)).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Pending::new((), seq, || Ok(())))
    }

    pub(super) async fn all_list_entries(&self) -> Result<Vec<StoredListEntry>> {
        let enc = self.encryption.as_ref();
        let mut out = Vec::new();
        scan(self, "SELECT tenant, record FROM list_entries ORDER BY tenant, id", |row| {
            let tenant = tenant_of(row.get(0))?;
            let record: pb::ListEntryRecord = decode(row.get::<_, &[u8]>(1), "decoding a list entry")?;
            out.push(open_entry_embedding(enc, &tenant, &record)?);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    pub(super) async fn all_user_tags(&self) -> Result<crate::storage::UserTags> {
        let mut out = Vec::new();
        scan(self, "SELECT tenant, id, record FROM users ORDER BY tenant, id", |row| {
            let record: pb::UserRecord = decode(row.get::<_, &[u8]>(2), "decoding a user record")?;
            if !record.metadata.is_empty() {
                out.push((tenant_of(row.get(0))?, UserId(from_db(row.get(1))), record.metadata.into_iter().collect()));
            }
            Ok(())
        })
        .await?;
        Ok(out)
    }
}
