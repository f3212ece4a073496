//! Start-up time with many stored faces: fills a store with N users of one face each (random
//! unit embeddings, small placeholder original and thumbnail) through the store's own
//! transactions, takes an index snapshot, adds TAIL more faces (the change log after the
//! snapshot), then times both ways the server can build its index before SERVING, on the same
//! store in the same run: a full rebuild from the records, and the snapshot loaded plus the log
//! tail replayed (`Snapshots::open_index`, what `App::open` runs). Reports the store's size on
//! disk and the process's resident memory.
//!
//!   cargo run --release --example startup -- /tmp/facevault-1m 1000000 [TAIL, default 10000]
//!
//! The fill uses the bulk-import mode (`Store::open_for_import`: no fsync per write or image
//! file, one syncfs at the end); a second run on the same directory skips the fill and the
//! snapshot. The server's own log lines ("search index loaded from its snapshot" or "search
//! index rebuilt from the store", with ms) give the same numbers.

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use facevault::app::IndexFeed;
use facevault::app::snapshot::{self, IndexOrigin, Snapshots};
use facevault::domain::{
    BoundingBox, Detection, EMBEDDING_DIM, Embedding, Face, FaceId, FaceQuality, Point, Tenant, User,
};
use facevault::search::index::DEFAULT_EXACT_MAX_FACES;
use facevault::storage::{NewFace, Replace, Store};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn disk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            total += if path.is_dir() { disk_bytes(&path) } else { entry.metadata().map(|m| m.len()).unwrap_or(0) };
        }
    }
    total
}

fn fill(store: &Store, tenant: &Tenant, from: usize, n: usize) -> facevault::Result<()> {
    let mut state = 0x1234_5678u64 ^ from as u64;
    let mut next = move || facevault::search::sketch::splitmix64(&mut state);
    let placeholder = vec![0xA5u8; 1024];
    let started = Instant::now();
    for i in from..from + n {
        let now = SystemTime::now();
        let user = User::unenrolled(format!("user-{i}"), now);
        let user = store.create_user(tenant, user, None)?;
        let raw = (0..EMBEDDING_DIM).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect();
        let face = Face {
            id: FaceId(next().max(1)),
            user_id: user.id,
            detection: Detection {
                bbox: BoundingBox { x_min: 10.0, y_min: 10.0, x_max: 110.0, y_max: 130.0 },
                score: 0.9,
                landmarks: [Point { x: 40.0, y: 50.0 }; 5],
                rotation: 0,
            },
            quality: FaceQuality::default(),
            comment: String::new(),
            uploaded_by: "startup-example".into(),
            create_time: now,
            model: "w600k_mbf".into(),
            mime_type: "image/jpeg".into(),
            width: 640,
            height: 480,
        };
        let new = NewFace {
            face,
            embedding: Embedding::from_raw(raw).expect("non-zero vector"),
            other: None,
            original: placeholder.clone(),
            thumbnail: placeholder.clone(),
        };
        store.put_face(tenant, &new, Replace::Nothing, 5, None)?;
        if (i + 1 - from).is_multiple_of(100_000) {
            eprintln!("{} faces stored, {:.0} s", i + 1 - from, started.elapsed().as_secs_f64());
        }
    }
    store.flush()?;
    eprintln!("filled {n} faces in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn main() -> facevault::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/facevault-startup".into()));
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let tail: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let tenant = Tenant::new("startup").expect("tenant");
    let snapshot_path = snapshot::path(&dir);
    {
        let store = Store::open_for_import(&dir)?;
        let have = store.embeddings(0).count();
        if have < n {
            fill(&store, &tenant, have, n - have)?;
        }
    }
    if !snapshot_path.exists() {
        // The snapshot of the first N faces, as the log follower takes it.
        let store = Store::open(&dir)?;
        let (index, applied) = facevault::app::rebuild_index(&store, DEFAULT_EXACT_MAX_FACES)?;
        let feed = IndexFeed::new(index, applied);
        let started = Instant::now();
        Snapshots::new(snapshot_path.clone(), None, 50_000).take(&store, &feed)?;
        eprintln!(
            "snapshot of {applied} entries written in {:.2} s (copy, write, fsync, compact the log)",
            secs(started)
        );
    }
    {
        let store = Store::open_for_import(&dir)?;
        let have = store.embeddings(0).count();
        if have < n + tail {
            fill(&store, &tenant, have, n + tail - have)?;
        }
    }
    let rss_before = status_kib("VmRSS:");
    for round in 1..=2 {
        // sled alone, without the sweep of image files that `Store::open` runs.
        let started = Instant::now();
        drop(Store::open_unswept(&dir, None)?);
        let sled_only = secs(started);
        let started = Instant::now();
        let store = Store::open(&dir)?;
        let opened = secs(started);
        let (rebuilt, _) = facevault::app::rebuild_index(&store, DEFAULT_EXACT_MAX_FACES)?;
        let rebuild = secs(started);
        drop(store);

        let started = Instant::now();
        let store = Store::open(&dir)?;
        let snapshots = Snapshots::new(snapshot_path.clone(), None, 50_000);
        let (loaded, _) = snapshots.open_index(&store, DEFAULT_EXACT_MAX_FACES)?;
        let load = secs(started);
        let origin = snapshots.origin().cloned();
        // The same steps one by one (read and check the file, import, replay the log tail).
        let t = Instant::now();
        let file = snapshot::file::read(&snapshot_path, None).expect("the snapshot reads");
        let (read_s, seq, bytes) = (secs(t), file.seq, file.bytes);
        let t = Instant::now();
        let index = facevault::search::FaceIndex::import(file.tenants, DEFAULT_EXACT_MAX_FACES).expect("imports");
        let import_s = secs(t);
        let t = Instant::now();
        let applied = IndexFeed::new(index, seq).catch_up(&store)?;
        let replay_s = secs(t);
        drop(store);

        // A start after a clean stop: the store was closed cleanly, so its open skips the sweep.
        Store::open(&dir)?.close()?;
        let started = Instant::now();
        let store = Store::open(&dir)?;
        let clean_opened = secs(started);
        let (clean_loaded, _) =
            Snapshots::new(snapshot_path.clone(), None, 50_000).open_index(&store, DEFAULT_EXACT_MAX_FACES)?;
        let clean = secs(started);
        drop(store);
        println!(
            "round {round}: after a clean stop, snapshot + log {clean:.2} s (store open {clean_opened:.2} s, no sweep)"
        );

        let faces: usize = rebuilt.sizes().iter().map(|(_, n)| n).sum();
        assert_eq!(clean_loaded.sizes().iter().map(|(_, n)| n).sum::<usize>(), faces);
        let differences = if round == 1 { snapshot::differences(&rebuilt, &loaded) } else { Vec::new() };
        assert!(differences.is_empty(), "the loaded index differs from the store: {differences:?}");
        let Some(IndexOrigin::Snapshot { replayed, .. }) = origin else {
            panic!("the snapshot was not used: {origin:?}")
        };
        println!(
            "round {round}, {faces} faces: full rebuild {rebuild:.2} s (store open {opened:.2} s, of which sled \
             {sled_only:.2} s and the sweep of image files the rest) | snapshot + log \
             {load:.2} s ({replayed} entries replayed; alone: read and check {:.2} GB {read_s:.2} s, import \
             {import_s:.2} s, replay {} entries {replay_s:.2} s)",
            bytes as f64 / 1e9,
            applied - seq,
        );
        if round == 2 {
            // What a snapshot costs the follower: the copy under the feed's lock, then the file
            // (plain and sealed, written beside the real one and removed), and reading it back.
            let feed = IndexFeed::new(loaded.clone(), applied);
            let t = Instant::now();
            let (seq, rows) = feed.export();
            let copy_s = secs(t);
            let key = facevault::storage::EncryptionKey::from_bytes(&[7; 32]);
            for (name, key) in [("plain", None), ("sealed", Some(&key))] {
                let path = dir.join(format!("measure-{name}.snapshot"));
                let t = Instant::now();
                snapshot::file::write(&path, key, seq, &rows)?;
                let write_s = secs(t);
                let t = Instant::now();
                snapshot::file::read(&path, key).expect("reads back");
                println!(
                    "snapshot {name}: copy {copy_s:.2} s, write and fsync {write_s:.2} s, \
                     read and check {:.2} s",
                    secs(t)
                );
                std::fs::remove_file(&path).expect("remove the measurement snapshot");
            }
        }
        if round == 1 {
            println!(
                "store on disk {:.2} GB; index about {:.2} GB; RSS {:.2} GB with two indexes (was {:.2} GB before \
                 opening), peak {:.2} GB",
                disk_bytes(&dir) as f64 / 1e9,
                rebuilt.approx_bytes() as f64 / 1e9,
                status_kib("VmRSS:") as f64 / 1e6 * 1.024,
                rss_before as f64 / 1e6 * 1.024,
                status_kib("VmHWM:") as f64 / 1e6 * 1.024,
            );
        }
    }
    Ok(())
}
