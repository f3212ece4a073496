//! The PostgreSQL backend on a real server: `FACEVAULT_TEST_POSTGRES_URL` (`make test` sets it,
//! starting a throwaway server where none runs), else the one every development and CI machine
//! of this project has on 127.0.0.1:5432. Each test makes its own database and drops it. No
//! server is a failure, never a skip.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::pool::run;
use super::*;
use crate::domain::{FaceId, User, UserId};
use crate::storage::{Change, EmbedderRecord, LogBounds, NewFace, Replace, Storage, UserKey, UserPatch};

fn admin_url() -> String {
    std::env::var("FACEVAULT_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database of its own, dropped with it.
pub(crate) struct TestDb {
    pub(crate) name: String,
    pub(crate) url: String,
}

async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await.unwrap_or_else(|e| {
        panic!("PostgreSQL for tests is not reachable ({e}): run `make test`, or set FACEVAULT_TEST_POSTGRES_URL")
    });
    tokio::spawn(connection);
    client
}

impl TestDb {
    pub(crate) fn new() -> Self {
        let name = format!("fv_unit_{}_{:08x}", std::process::id(), crate::storage::random_id().unwrap() as u32);
        run(|| async {
            admin().await.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create the test database");
        });
        let mut config: tokio_postgres::Config = admin_url().parse().expect("the test URL parses");
        config.dbname(&name);
        // Rebuilt as a URL: host, port, user of the admin URL, this database.
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_owned();
        let url = format!("postgres://{user}@{host}:{port}/{name}");
        TestDb { name, url }
    }

    pub(crate) fn options(&self) -> PgOptions {
        PgOptions {
            url: self.url.clone(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }

    fn open(&self) -> PgStore {
        PgStore::open(&self.options(), None).expect("open the PostgreSQL store")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        run(|| async move {
            let _ = admin().await.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        });
    }
}

fn tenant(name: &str) -> Tenant {
    Tenant::new(name).unwrap()
}

fn face(user: UserId, id: u64) -> NewFace {
    crate::storage::test_face(user, id, id as f32 * 0.01)
}

fn user(store: &dyn Storage, t: &Tenant, external_id: &str) -> User {
    store.create_user(t, User::unenrolled(external_id, SystemTime::now()), None).unwrap()
}

#[test]
fn records_faces_tokens_and_the_log_behave_as_on_sled() {
    let db = TestDb::new();
    let store = db.open();
    let store: &dyn Storage = &store;
    let t = tenant("t");
    let a = user(store, &t, "a");
    let err = store.create_user(&t, User::unenrolled("a", SystemTime::now()), None).unwrap_err();
    assert_eq!(err.reason(), crate::error::Reason::ExternalIdTaken, "external ids are unique per tenant");
    user(store, &tenant("other"), "a"); // but not across tenants
    let p1 = store.put_face_pending(&t, &face(a.id, 1), Replace::Nothing, 2, None, None).unwrap();
    let p2 = store.put_face_pending(&t, &face(a.id, 2), Replace::Nothing, 2, None, None).unwrap();
    assert_eq!((p1.seq(), p2.seq()), (1, 2), "one entry per face write, in commit order");
    p1.durable().unwrap();
    p2.durable().unwrap();
    let full = store.put_face_pending(&t, &face(a.id, 3), Replace::Nothing, 2, None, None).unwrap_err();
    assert_eq!(full.reason(), crate::error::Reason::FaceLimitReached);
    let (u, replaced) =
        store.put_face_pending(&t, &face(a.id, 3), Replace::Oldest, 2, None, None).unwrap().durable().unwrap();
    assert_eq!((replaced, u.face_ids.clone()), (Some(FaceId(1)), vec![FaceId(2), FaceId(3)]));
    let entries = store.read_log(0, 10).unwrap();
    assert_eq!(entries.len(), 3);
    assert!(matches!(entries[2].change, Change::Put { face: FaceId(3), replaced: Some(FaceId(1)), .. }));

    // Reads as on sled.
    let (found, faces) = store.user_with_faces(&t, UserKey::External("a")).unwrap().unwrap();
    assert_eq!((found.id, faces.iter().map(|f| f.id).collect::<Vec<_>>()), (a.id, vec![FaceId(2), FaceId(3)]));
    let (_, embeddings) = store.user_with_embeddings(&t, UserKey::Id(a.id), "w600k_mbf").unwrap().unwrap();
    assert_eq!(embeddings[1], (FaceId(3), face(a.id, 3).embedding));
    let (_, thumb) = store.face_with_image(&t, FaceId(3), true).unwrap().unwrap();
    assert_eq!(thumb, face(a.id, 3).thumbnail);
    assert!(store.face_with_image(&t, FaceId(1), false).unwrap().is_none(), "the replaced face is gone");
    let hits = [(a.id, FaceId(2)), (a.id, FaceId(1)), (UserId(a.id.0 ^ 1), FaceId(3))];
    assert_eq!(store.hit_owners(&t, &hits).unwrap(), vec![Some("a".to_owned()), None, None]);

    // Users list in u64 id order, page by page.
    let more: Vec<User> = (0..5).map(|i| user(store, &t, &format!("u{i}"))).collect();
    let mut ids: Vec<u64> = more.iter().map(|u| u.id.0).chain([a.id.0]).collect();
    ids.sort_unstable();
    let first = store.list_users(&t, None, 4).unwrap();
    let rest = store.list_users(&t, first.last().map(|u| u.id), 4).unwrap();
    let listed: Vec<u64> = first.iter().chain(&rest).map(|u| u.id.0).collect();
    assert_eq!(listed, ids);
    assert_eq!(store.count_users(&t).unwrap(), 6);

    // A token: attempts counted, spent by the update it allows, expired ones purged.
    let grant = crate::storage::TokenGrant { hash: [7; 32], expires_at: SystemTime::now() + Duration::from_secs(60) };
    let patch = UserPatch { reenrollment: Some(grant), email: Some("x@example.org".into()), ..UserPatch::default() };
    let updated = store.update_user(&t, a.id, Some(a.version + 3), &patch, None).unwrap();
    assert_eq!(updated.email, "x@example.org");
    let stale = store.update_user(&t, a.id, Some(1), &patch, None).unwrap_err();
    assert_eq!(stale.reason(), crate::error::Reason::EtagMismatch);
    assert_eq!(store.use_token_attempt(&[7; 32], 1).unwrap(), Some((t.clone(), a.id)));
    assert_eq!(store.use_token_attempt(&[7; 32], 1).unwrap(), None, "one attempt only");
    let p = store.put_face_pending(&t, &face(a.id, 4), Replace::Face(FaceId(2)), 2, Some([7; 32]), None).unwrap();
    p.durable().unwrap();
    assert_eq!(store.token_user(&[7; 32], 9).unwrap(), None, "spent by the update");
    let short = crate::storage::TokenGrant { hash: [8; 32], expires_at: SystemTime::now() };
    store
        .update_user(&t, more[0].id, None, &UserPatch { reenrollment: Some(short), ..Default::default() }, None)
        .unwrap();
    assert_eq!(store.purge_expired_tokens(SystemTime::now() + Duration::from_secs(1)).unwrap(), 1);

    // Deletes write entries; compaction by this (only) node's position; a reader behind is refused.
    store.delete_face_pending(&t, FaceId(3), None).unwrap().durable().unwrap();
    let removed = store.delete_user_pending(&t, a.id, None, None).unwrap();
    assert_eq!(removed.value(), &vec![FaceId(4)]);
    let head = removed.seq();
    removed.durable().unwrap();
    assert_eq!(store.delete_user_pending(&t, more[1].id, None, None).unwrap().seq(), 0, "no faces, no entry");
    assert_eq!(store.log_bounds().unwrap(), LogBounds { head, compacted: 0 });
    assert_eq!(store.compact_log(head - 1).unwrap() as u64, head - 1);
    assert!(store.read_log(0, 10).is_err(), "compacted entries are refused, never skipped");
    assert_eq!(store.read_log(head - 1, 10).unwrap().len(), 1);
    let integrity = store.verify(2).unwrap();
    assert!(integrity.problems.is_empty(), "{:?}", integrity.problems);
    assert_eq!(store.tree_sizes().iter().find(|(n, _)| *n == "faces").map(|(_, n)| *n), Some(0));
}

#[test]
fn racing_writers_keep_the_face_limit_and_a_gapless_ordered_log() {
    let db = TestDb::new();
    let store: Arc<dyn Storage> = Arc::new(db.open());
    let t = tenant("t");
    let a = user(store.as_ref(), &t, "a");
    let b = user(store.as_ref(), &t, "b");
    // 20 uploads for one user at once (as from 20 nodes: no app lock) while a reader polls.
    let threads: Vec<_> = (0..20u64)
        .map(|i| {
            let (store, t) = (store.clone(), t.clone());
            let owner = if i % 4 == 0 { b.id } else { a.id };
            std::thread::spawn(move || {
                store.put_face_pending(&t, &face(owner, 100 + i), Replace::Nothing, 5, None, None).map(|p| p.seq())
            })
        })
        .collect();
    let mut seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen < 10 {
        assert!(std::time::Instant::now() < deadline, "the log stopped at {seen}");
        for entry in store.read_log(seen, 100).unwrap() {
            assert_eq!(entry.seq, seen + 1, "entries appear in order, none late");
            seen = entry.seq;
        }
    }
    let results: Vec<_> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 10, "a's 15 uploads give 5 faces, b's 5 give 5");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.reason(), crate::error::Reason::FaceLimitReached);
    }
    assert_eq!(store.get_user(&t, a.id).unwrap().unwrap().face_ids.len(), 5);
    assert_eq!(store.log_bounds().unwrap().head, 10);
    assert!(Storage::verify(store.as_ref(), 5).unwrap().problems.is_empty());
    // verify finds what is broken: a face whose images are gone, a face no user lists.
    run(|| async {
        let admin = admin_for(&db).await;
        admin
            .batch_execute("DELETE FROM face_images WHERE face_id = (SELECT min(face_id) FROM face_images)")
            .await
            .unwrap();
        admin
            .batch_execute("UPDATE faces SET user_id = user_id + 1 WHERE id = (SELECT max(id) FROM faces)")
            .await
            .unwrap();
    });
    let problems = Storage::verify(store.as_ref(), 5).unwrap().problems;
    let has = |text: &str| problems.iter().any(|p| p.contains(text));
    assert!(has("has none") && has("does not belong to user") && has("has a record of another face"), "{problems:?}");
    assert!(has("embeddings:") && problems.len() == 4, "{problems:?}");
}

#[test]
fn a_tenant_lock_excludes_other_nodes_and_fences_a_holder_that_lost_it() {
    let db = TestDb::new();
    let (node_a, node_b) = (db.open(), db.open());
    let t = tenant("t");
    let u = user(&node_a, &t, "u");
    let held = Storage::lock_tenant(&node_a, &t).unwrap();
    // B waits while A holds it.
    let waiter = {
        let (node_b, t) = (node_b.clone(), t.clone());
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let lock = Storage::lock_tenant(&node_b, &t).unwrap();
            (started.elapsed(), lock)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // A's lock connection dies (as in a network cut): the lock passes to B, and A's next write
    // of the tenant is refused rather than racing B's.
    run(|| async {
        admin_for(&db).await.batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND pid <> pg_backend_pid() AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await
        .unwrap();
    });
    let (waited, b_lock) = waiter.join().unwrap();
    assert!(waited >= Duration::from_millis(250), "B waited for A ({waited:?})");
    let refused = node_a.put_face_pending(&t, &face(u.id, 1), Replace::Nothing, 5, None, None).unwrap_err();
    assert!(matches!(refused, Error::Unavailable { .. }), "{refused:?}");
    drop(held);
    node_b.put_face_pending(&t, &face(u.id, 1), Replace::Nothing, 5, None, None).unwrap().durable().unwrap();
    drop(b_lock);
    // Released on drop: A takes it again at once and writes.
    let again = Storage::lock_tenant(&node_a, &t).unwrap();
    node_a.put_face_pending(&t, &face(u.id, 2), Replace::Nothing, 5, None, None).unwrap().durable().unwrap();
    drop(again);
}

async fn admin_for(db: &TestDb) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[test]
fn the_store_refuses_a_newer_schema_another_key_and_another_embedder() {
    let db = TestDb::new();
    let key = crate::storage::EncryptionKey::from_bytes(&[1; 32]);
    let store = PgStore::open(&db.options(), Some(key.clone())).unwrap();
    let embedder = EmbedderRecord { id: "w600k_mbf".into(), sha256: "ab".into() };
    Storage::check_embedder(&store, &embedder).unwrap();
    let other = EmbedderRecord { id: "w600k_mbf".into(), sha256: "cd".into() };
    assert!(Storage::check_embedder(&store, &other).is_err());
    let t = tenant("t");
    let u = user(&store, &t, "u");
    store.put_face_pending(&t, &face(u.id, 1), Replace::Nothing, 5, None, None).unwrap().durable().unwrap();
    // Sealed at rest: the thumbnail's bytes are not in the table.
    let raw = Storage::raw_entries(&store, crate::storage::keys::THUMBNAILS).unwrap();
    let plain = face(u.id, 1).thumbnail;
    assert!(!raw[0].1.windows(plain.len()).any(|w| w == plain.as_slice()));
    assert!(PgStore::open(&db.options(), None).is_err(), "an encrypted store needs its key");
    let wrong = crate::storage::EncryptionKey::from_bytes(&[2; 32]);
    assert!(PgStore::open(&db.options(), Some(wrong)).is_err(), "and refuses another");
    run(|| async { admin_for(&db).await.batch_execute("UPDATE facevault_schema SET version = 99").await.unwrap() });
    let newer = PgStore::open(&db.options(), Some(key)).unwrap_err().to_string();
    assert!(newer.contains("newer than this build"), "{newer}");
}

#[test]
fn lost_connections_fail_the_store_until_a_probe_and_lose_no_acknowledged_write() {
    let db = TestDb::new();
    let store = Arc::new(db.open());
    let t = tenant("t");
    let users: Vec<User> = (0..4).map(|i| user(store.as_ref(), &t, &format!("u{i}"))).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Writers: each remembers the faces acknowledged to it; a refused write may have committed
    // (its commit's answer was lost), never more than that one.
    let writers: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(w, u)| {
            let (store, t, stop, owner) = (store.clone(), t.clone(), stop.clone(), u.id);
            std::thread::spawn(move || {
                let (mut acked, mut refused) = (Vec::new(), 0);
                for i in 0u64.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let id = 1000 * (w as u64 + 1) + i;
                    match store.put_face_pending(&t, &face(owner, id), Replace::Oldest, 5, None, None) {
                        Ok(p) => {
                            p.durable().unwrap();
                            acked.push(FaceId(id));
                        }
                        Err(Error::Unavailable { .. }) => {
                            refused += 1;
                            if store.write_failure().is_some() {
                                let _ = store.try_recover();
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
                (owner, acked, refused)
            })
        })
        .collect();
    // Cut every connection of the store a few times while they write.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        run(|| async {
            admin_for(&db)
                .await
                .batch_execute(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = '{}' AND pid <> pg_backend_pid()",
                    db.name
                ))
                .await
                .unwrap();
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused_total = 0;
    for writer in writers {
        let (owner, acked, refused) = writer.join().unwrap();
        refused_total += refused;
        // Replace::Oldest keeps the last face: the last acknowledged one, or a later one whose
        // answer was lost.
        let faces = Storage::get_user(store.as_ref(), &t, owner).unwrap().unwrap().face_ids;
        let last = *acked.last().expect("writes succeeded between the cuts");
        assert!(faces.len() == 1 && faces[0].0 >= last.0, "{faces:?} after {last:?}");
    }
    assert!(refused_total > 0, "the cuts were seen");
    // Every entry is in the log, in order, and the store is whole.
    let entries = Storage::read_log(store.as_ref(), 0, 100_000).unwrap();
    assert_eq!(entries.len() as u64, Storage::log_bounds(store.as_ref()).unwrap().head);
    assert!(Storage::verify(store.as_ref(), 5).unwrap().problems.is_empty());
}

#[test]
fn a_reindex_writes_both_slots_fences_its_worker_and_clears_only_an_unused_slot() {
    let db = TestDb::new();
    let store = db.open();
    crate::storage::models::exercise_reindex_storage(&store);
}

#[test]
fn lists_entries_and_user_tags_behave_as_on_sled() {
    let db = TestDb::new();
    crate::storage::lists::exercise_lists(&db.open());
    // And sealed with a key (a database of its own: a store is tied to its key).
    let sealed = TestDb::new();
    let key = crate::storage::EncryptionKey::from_bytes(&[5; 32]);
    crate::storage::lists::exercise_lists(&PgStore::open(&sealed.options(), Some(key)).unwrap());
}
