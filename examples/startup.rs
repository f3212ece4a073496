//! Start-up time with many stored faces: fills a store with N users of one face each (random
//! unit embeddings, small placeholder original and thumbnail) through the store's own
//! transactions, then times what the server does before SERVING: open sled and rebuild the
//! search index. Reports the store's size on disk and the process's resident memory.
//!
//!   cargo run --release --example startup -- /tmp/facevault-1m 1000000
//!
//! A second run on the same directory skips the fill. The server's own log line
//! ("search index rebuilt from the store", opened_ms and total_ms) gives the same numbers.

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

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
        let user = store.create_user(tenant, user)?;
        let raw = (0..EMBEDDING_DIM).map(|_| (next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect();
        let face = Face {
            id: FaceId(next().max(1)),
            user_id: user.id,
            detection: Detection {
                bbox: BoundingBox { x_min: 10.0, y_min: 10.0, x_max: 110.0, y_max: 130.0 },
                score: 0.9,
                landmarks: [Point { x: 40.0, y: 50.0 }; 5],
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

fn main() -> facevault::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/facevault-startup".into()));
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let tenant = Tenant::new("startup").expect("tenant");
    {
        let store = Store::open_for_import(&dir)?;
        let have = store.embeddings().count();
        if have < n {
            fill(&store, &tenant, have, n - have)?;
        }
    }
    let rss_before = status_kib("VmRSS:");
    let started = Instant::now();
    let store = Store::open(&dir)?;
    let opened = started.elapsed();
    let (index, _) = facevault::app::rebuild_index(&store, DEFAULT_EXACT_MAX_FACES)?;
    let total = started.elapsed();
    let faces: usize = index.sizes().iter().map(|(_, n)| n).sum();
    println!(
        "{faces} faces: sled open {:.2} s, index rebuilt {:.2} s after start; store on disk {:.2} GB; \
         index about {:.2} GB; RSS {:.2} GB (was {:.2} GB before opening), peak {:.2} GB",
        opened.as_secs_f64(),
        total.as_secs_f64(),
        disk_bytes(&dir) as f64 / 1e9,
        index.approx_bytes() as f64 / 1e9,
        status_kib("VmRSS:") as f64 / 1e6 * 1.024,
        rss_before as f64 / 1e6 * 1.024,
        status_kib("VmHWM:") as f64 / 1e6 * 1.024,
    );
    Ok(())
}
