//! Latency and throughput of durable store writes (`Store::put_face`, the write an UploadFace
//! acknowledges), with 1 and 4 concurrent writers, each on its own tenant and user:
//!
//!   cargo run --release --example store_writes -- /tmp/facevault-writes 200
//!
//! Each write stores a 150 KB original, a 20 KB thumbnail and an embedding, and returns only once
//! it is durable. Prints p50 / p99 latency and writes per second for each writer count.

use std::time::{Duration, Instant, SystemTime};

use facevault::domain::{Detection, EMBEDDING_DIM, Embedding, Face, FaceId, Tenant, User};
use facevault::storage::{NewFace, Replace, Store};

/// `writes` durable face writes for one user of `tenant` (replacing its oldest face once it
/// has five); the latency of each.
fn writer(store: &Store, tenant: &Tenant, seed: u64, writes: usize) -> Vec<Duration> {
    let mut state = seed;
    let owner =
        store.create_user(tenant, User::unenrolled(format!("writer-{seed}"), SystemTime::now()), None).expect("user");
    let (original, thumbnail) = (vec![0x5Au8; 150 * 1024], vec![0xA5u8; 20 * 1024]);
    (0..writes)
        .map(|i| {
            let raw = (0..EMBEDDING_DIM)
                .map(|_| (facevault::search::sketch::splitmix64(&mut state) >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
                .collect();
            let new = NewFace {
                face: Face {
                    id: FaceId(facevault::search::sketch::splitmix64(&mut state).max(1)),
                    user_id: owner.id,
                    detection: Detection {
                        bbox: Default::default(),
                        score: 0.9,
                        landmarks: Default::default(),
                        rotation: 0,
                    },
                    quality: Default::default(),
                    comment: String::new(),
                    uploaded_by: "store-writes".into(),
                    create_time: SystemTime::now(),
                    model: "w600k_mbf".into(),
                    mime_type: "image/jpeg".into(),
                    width: 640,
                    height: 480,
                },
                embedding: Embedding::from_raw(raw).expect("non-zero vector"),
                other: None,
                original: original.clone(),
                thumbnail: thumbnail.clone(),
            };
            let replace = if i < 5 { Replace::Nothing } else { Replace::Oldest };
            let started = Instant::now();
            store.put_face(tenant, &new, replace, 5, None).expect("durable write");
            started.elapsed()
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "/tmp/facevault-writes".into()));
    let writes: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(200);
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).expect("store");
    for writers in [1usize, 4, 1, 4] {
        let started = Instant::now();
        let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..writers)
                .map(|w| {
                    let store = &store;
                    scope.spawn(move || {
                        let tenant = Tenant::new(&format!("tenant-{writers}-{w}-{}", started.elapsed().as_nanos()))
                            .expect("tenant");
                        writer(store, &tenant, (writers * 100 + w) as u64 + 1, writes)
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("writer")).collect()
        });
        let elapsed = started.elapsed();
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        println!(
            "{writers} writer(s): {} writes in {:.2} s = {:.0} writes/s; latency p50 {:.2} ms, p99 {:.2} ms",
            latencies.len(),
            elapsed.as_secs_f64(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            at(0.5),
            at(0.99)
        );
    }
}
