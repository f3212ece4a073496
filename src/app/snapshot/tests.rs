//! Snapshot round trips (plain and sealed), damage detected, and start-up through a real store:
//! from the snapshot and the log after it, or a rebuild when the snapshot cannot be used.

use super::file::{self, SnapshotError};
use super::*;
use crate::domain::{Embedding, FaceId, Tenant, User, UserId};
use crate::search::index::TenantRows;
use crate::search::sketch::splitmix64;
use crate::storage::{EncryptionKey, Replace, Store};

fn unit(seed: u64) -> Embedding {
    let mut state = seed;
    let raw = (0..crate::domain::EMBEDDING_DIM).map(|_| (splitmix64(&mut state) >> 40) as f32 / 8e6 - 1.0).collect();
    Embedding::from_raw(raw).unwrap()
}

/// An index of two tenants, `n` faces in the first.
fn index(n: u64) -> FaceIndex {
    let index = FaceIndex::new();
    let (a, b) = (Tenant::new("alpha").unwrap(), Tenant::new("beta").unwrap());
    for i in 1..=n {
        index.insert(&a, FaceId(i), UserId(i % 7 + 1), &unit(i));
    }
    index.insert(&b, FaceId(u64::MAX), UserId(3), &unit(0));
    index
}

fn key(byte: u8) -> EncryptionKey {
    EncryptionKey::from_bytes(&[byte; 32])
}

/// The bytes of row 0 of the first tenant: what must never appear in a sealed file.
fn row_bytes(rows: &[TenantRows]) -> Vec<u8> {
    rows[0].row(0).iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_plain_snapshot_round_trips_and_any_damage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.snapshot");
    let rows = index(50).export();
    let (bytes, _) = file::write(&path, None, 42, &rows).unwrap();
    assert!(!dir.path().join("index.snapshot.tmp").exists(), "the temporary file was renamed");
    let read = file::read(&path, None).unwrap();
    assert_eq!((read.seq, read.bytes), (42, bytes));
    assert_eq!(read.tenants, rows);
    let imported = FaceIndex::import(read.tenants, usize::MAX).unwrap();
    assert!(differences(&index(50), &imported).is_empty());
    assert!(contains(&std::fs::read(&path).unwrap(), &row_bytes(&rows)), "plain: rows are read in bulk");

    let good = std::fs::read(&path).unwrap();
    for at in [0, 9, 16, 40, 60, 64, 70, 200, good.len() / 2, good.len() - 40, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        assert!(file::read(&path, None).is_err(), "a flipped bit at byte {at} is refused");
    }
    for cut in [0, 10, 64, 65, good.len() / 3, good.len() - 32, good.len() - 1] {
        std::fs::write(&path, &good[..cut]).unwrap();
        assert!(file::read(&path, None).is_err(), "cut at {cut} is refused");
    }
    std::fs::write(&path, [good.as_slice(), b"x"].concat()).unwrap();
    assert!(matches!(file::read(&path, None), Err(SnapshotError::Malformed(_))));
    std::fs::write(&path, &good).unwrap();
    assert!(matches!(file::read(&path, Some(&key(1))), Err(SnapshotError::PlainInEncryptedStore)));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(file::read(&path, None), Err(SnapshotError::Missing)));
}

#[test]
fn a_sealed_snapshot_round_trips_holds_no_plain_rows_and_opens_only_whole_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.snapshot");
    // More than one 4 MiB chunk (about 1.1 KB a row).
    let rows = index(5000).export();
    file::write(&path, Some(&key(1)), 7, &rows).unwrap();
    let good = std::fs::read(&path).unwrap();
    assert!(!contains(&good, &row_bytes(&rows)), "sealed: no row in plain text");
    let read = file::read(&path, Some(&key(1))).unwrap();
    assert_eq!((read.seq, &read.tenants), (7, &rows));
    assert!(matches!(file::read(&path, Some(&key(2))), Err(SnapshotError::Unauthentic)));
    assert!(matches!(file::read(&path, None), Err(SnapshotError::SealedInPlainStore)));

    let first_chunk = 64 + 4 + 12 + (4 << 20) + 16;
    assert!(good.len() > first_chunk, "two chunks at least");
    for at in [20, 64, 70, 100, first_chunk - 1, first_chunk + 5, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        assert!(file::read(&path, Some(&key(1))).is_err(), "a flipped bit at byte {at} is refused");
    }
    // Cut at the chunk boundary (the first chunk alone) and a chunk appended: refused.
    std::fs::write(&path, &good[..first_chunk]).unwrap();
    assert!(matches!(file::read(&path, Some(&key(1))), Err(SnapshotError::Unauthentic)));
    std::fs::write(&path, [good.as_slice(), &good[64..first_chunk]].concat()).unwrap();
    assert!(file::read(&path, Some(&key(1))).is_err());
    // A chunk of another snapshot (same key, same rows, another file id) does not open here.
    let other = dir.path().join("other.snapshot");
    file::write(&other, Some(&key(1)), 7, &rows).unwrap();
    let other = std::fs::read(&other).unwrap();
    std::fs::write(&path, [&good[..64], &other[64..]].concat()).unwrap();
    assert!(matches!(file::read(&path, Some(&key(1))), Err(SnapshotError::Unauthentic)));
}

#[test]
fn import_refuses_rows_that_break_the_index_invariants() {
    let rows = index(3).export();
    let mut short = rows.clone();
    short[0].matrix.pop();
    assert!(FaceIndex::import(short, 10).is_err());
    let mut twice = rows.clone();
    twice[0].owners[1].0 = twice[0].owners[0].0;
    assert!(FaceIndex::import(twice, 10).is_err());
    let mut tenant_twice = rows.clone();
    tenant_twice.push(rows[0].clone());
    assert!(FaceIndex::import(tenant_twice, 10).is_err());
    let index = FaceIndex::import(rows, 10).unwrap();
    let t = Tenant::new("alpha").unwrap();
    assert_eq!(index.search(&t, &unit(2), 1, 0.9, None)[0].face_id, FaceId(2), "rows and ids line up");
    assert!(index.remove(&t, FaceId(1)), "the row map was rebuilt");
    assert_eq!(index.entries(&t).len(), 2);
}

/// A store with `n` users of one face each in tenant "t"; returns the faces.
fn fill(store: &Store, from: u64, n: u64) -> Vec<FaceId> {
    let t = Tenant::new("t").unwrap();
    (from..from + n)
        .map(|i| {
            let user =
                store.create_user(&t, User::unenrolled(format!("u{i}"), std::time::SystemTime::now()), None).unwrap();
            let face = crate::storage::test_face(user.id, i, i as f32 * 0.013 + 0.1);
            store.put_face(&t, &face, Replace::Nothing, 5, None).unwrap();
            face.face.id
        })
        .collect()
}

/// Opens the store under `dir`, builds its index as a start-up does and checks it equals the
/// index rebuilt from the records; returns where it came from and the open store.
fn start(dir: &Path, key: Option<EncryptionKey>, every: u64) -> (IndexOrigin, Store, FaceIndex, IndexFeed, Snapshots) {
    // sled may keep its lock on the directory for a moment after the last handle is dropped
    // (its thread pool finishes a write of the log): try again for up to a second.
    let mut tries = 0;
    let store = loop {
        match Store::open_with_key(dir, key.clone()) {
            Ok(store) => break store,
            Err(_) if tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("the store does not open: {e}"),
        }
    };
    let snapshots = Snapshots::new(path(dir), key, every);
    let (index, applied) = snapshots.open_index(&store, usize::MAX).unwrap();
    assert_eq!(applied, store.log_bounds().unwrap().head);
    let (rebuilt, _) = rebuild_index(&store, usize::MAX).unwrap();
    assert_eq!(differences(&rebuilt, &index), Vec::<String>::new(), "the index equals the store");
    let origin = snapshots.origin().unwrap().clone();
    let feed = IndexFeed::new(index.clone(), applied);
    (origin, store, index, feed, snapshots)
}

fn started_from_snapshot(origin: &IndexOrigin) -> (u64, u64) {
    match origin {
        IndexOrigin::Snapshot { seq, replayed } => (*seq, *replayed),
        IndexOrigin::Rebuilt { reason } => panic!("rebuilt: {reason}"),
    }
}

fn rebuilt_because(origin: &IndexOrigin) -> &str {
    match origin {
        IndexOrigin::Rebuilt { reason } => reason,
        IndexOrigin::Snapshot { .. } => panic!("loaded from the snapshot"),
    }
}

#[test]
fn start_up_loads_the_snapshot_and_replays_the_log_after_it_or_rebuilds() {
    for key in [None, Some(key(3))] {
        let dir = tempfile::tempdir().unwrap();
        let (origin, store, _, feed, snapshots) = start(dir.path(), key.clone(), 1000);
        assert!(rebuilt_because(&origin).contains("no snapshot"));
        let faces = fill(&store, 1, 20);
        feed.catch_up(&store).unwrap();
        assert_eq!(snapshots.take(&store, &feed).unwrap(), Some(20));
        assert_eq!(snapshots.take(&store, &feed).unwrap(), None, "the snapshot on disk is current");
        assert_eq!(store.log_bounds().unwrap().compacted, 20, "the log is compacted up to the snapshot");
        fill(&store, 100, 5);
        store.delete_face(&Tenant::new("t").unwrap(), faces[3]).unwrap();
        feed.catch_up(&store).unwrap();
        let on_disk = std::fs::read(path(dir.path())).unwrap();
        let embedding = crate::storage::test_face(UserId(1), 1, 0.1 + 0.013).embedding;
        let bits: Vec<u8> =
            crate::search::similarity::to_f16_bits(embedding.as_slice()).iter().flat_map(|b| b.to_le_bytes()).collect();
        assert_eq!(contains(&on_disk, &bits[..64]), key.is_none(), "an encrypted store's snapshot holds no plain row");
        drop((store, feed, snapshots));

        let (origin, store, _, feed, snapshots) = start(dir.path(), key.clone(), 1000);
        assert_eq!(started_from_snapshot(&origin), (20, 6), "the snapshot, then the 6 entries after it");
        // A clean stop takes a snapshot; the next start replays nothing.
        assert_eq!(snapshots.take(&store, &feed).unwrap(), Some(26));
        drop((store, feed, snapshots));
        let (origin, store, ..) = start(dir.path(), key.clone(), 1000);
        assert_eq!(started_from_snapshot(&origin), (26, 0));
        drop(store);

        // A damaged snapshot: rebuilt, and said why.
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(path(dir.path()), &bytes).unwrap();
        let (origin, store, _, feed, snapshots) = start(dir.path(), key.clone(), 1000);
        let reason = rebuilt_because(&origin);
        assert!(reason.contains("checksum") || reason.contains("does not open"), "{reason}");
        // The follower takes a snapshot at once after a rebuild.
        snapshots.follow(&store, &feed, feed.applied()).unwrap();
        drop((store, feed, snapshots));
        assert_eq!(started_from_snapshot(&start(dir.path(), key.clone(), 1000).0), (26, 0));
    }
}

#[test]
fn a_snapshot_outside_the_log_or_with_snapshots_off_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store, _, feed, snapshots) = start(dir.path(), None, 1000);
    fill(&store, 1, 4);
    feed.catch_up(&store).unwrap();
    snapshots.take(&store, &feed).unwrap();
    // The log compacted past the snapshot (entries it lacks are gone): rebuilt.
    fill(&store, 10, 3);
    store.compact_log(6).unwrap();
    drop((store, feed, snapshots));
    let (origin, store, ..) = start(dir.path(), None, 1000);
    assert!(rebuilt_because(&origin).contains("outside the change log"), "{origin:?}");
    drop(store);

    // Ahead of the log (the store is older than the snapshot): rebuilt.
    let rows = index(2).export();
    file::write(&path(dir.path()), None, 99, &rows).unwrap();
    let (origin, store, ..) = start(dir.path(), None, 1000);
    assert!(rebuilt_because(&origin).contains("entry 99"), "{origin:?}");
    drop(store);

    // Snapshots off: the old one is removed, and the log is compacted up to what is applied.
    let (origin, store, ..) = start(dir.path(), None, 0);
    assert_eq!(rebuilt_because(&origin), "index snapshots are off");
    assert!(!path(dir.path()).exists());
    let bounds = store.log_bounds().unwrap();
    assert_eq!(bounds.compacted, bounds.head);
}

#[test]
fn only_the_snapshot_the_store_recorded_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store, _, feed, snapshots) = start(dir.path(), None, 1000);
    fill(&store, 1, 4);
    feed.catch_up(&store).unwrap();
    assert_eq!(snapshots.take(&store, &feed).unwrap(), Some(4));
    // Another snapshot of the same entry, whole and within the log (what a store restored
    // from an older backup, or a crash between the file and its record, leaves): not loaded,
    // and removed before anything is written.
    let rows = feed.export().1;
    file::write(&path(dir.path()), None, 4, &rows).unwrap();
    drop((store, feed, snapshots));
    let (origin, store, ..) = start(dir.path(), None, 1000);
    assert!(rebuilt_because(&origin).contains("not the snapshot the store recorded"), "{origin:?}");
    assert!(!path(dir.path()).exists(), "the unnamed snapshot is gone");
    drop(store);
}

#[test]
fn verify_checks_the_snapshot_and_the_log_against_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store, _, feed, snapshots) = start(dir.path(), None, 1000);
    fill(&store, 1, 6);
    let rebuilt = || rebuild_index(&store, usize::MAX).unwrap().0;
    // No snapshot: the log need not hold the whole history (a store from before it), so its
    // entries are only read, not compared.
    let c = check(&store, &path(dir.path()), None, &rebuilt()).unwrap();
    assert!(!c.replayed && c.snapshot.is_none() && c.problems.is_empty(), "{c:?}");

    feed.catch_up(&store).unwrap();
    snapshots.take(&store, &feed).unwrap();
    fill(&store, 50, 2);
    let c = check(&store, &path(dir.path()), None, &rebuilt()).unwrap();
    assert!(c.replayed && c.snapshot == Some(6) && c.problems.is_empty(), "{c:?}");

    // A snapshot that holds a face the store does not, and lacks one it does.
    let mut rows = feed.export().1;
    rows[0].owners[0].0 = FaceId(0xdead);
    file::write(&path(dir.path()), None, 6, &rows).unwrap();
    let c = check(&store, &path(dir.path()), None, &rebuilt()).unwrap();
    let problems = c.problems.join("\n");
    assert!(
        problems.contains("1 faces of the store missing")
            && problems.contains("1 faces not in the store (first: 000000000000dead)"),
        "{problems}"
    );

    // Damaged: reported, not compared.
    std::fs::write(path(dir.path()), b"FVINDEX\0 but nothing else").unwrap();
    let c = check(&store, &path(dir.path()), None, &rebuilt()).unwrap();
    assert!(!c.replayed && c.problems.len() == 1 && c.problems[0].starts_with("index snapshot:"), "{c:?}");
}
