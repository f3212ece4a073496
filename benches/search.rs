//! `FaceIndex::search` (top-k users) over 10k, 100k and 1M random unit 512-d vectors, k = 1 and
//! 10. Writes the vectors and queries to target/search-bench/ so scripts/search-vs-faiss.py can
//! time FAISS IndexFlatIP on the same data.

use std::io::Write;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use facevault::domain::{EMBEDDING_DIM, Embedding, FaceId, Tenant, UserId};
use facevault::search::FaceIndex;

const QUERIES: usize = 16;

/// splitmix64: the same stream in every run and in the FAISS script's reader.
fn random_unit_vectors(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut out = Vec::with_capacity(n * EMBEDDING_DIM);
    for _ in 0..n {
        let v: Vec<f32> = (0..EMBEDDING_DIM).map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(v.iter().map(|x| x / norm));
    }
    out
}

fn dump(path: &PathBuf, data: &[f32]) {
    if path.is_file() && std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == (data.len() * 4) as u64 {
        return;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create vector file"));
    for v in data {
        file.write_all(&v.to_le_bytes()).expect("write");
    }
}

fn bench_search(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/search-bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let tenant = Tenant::new("bench").expect("tenant");
    let queries = random_unit_vectors(QUERIES, 7);
    dump(&dir.join("queries.f32"), &queries);
    let queries: Vec<Embedding> =
        queries.chunks_exact(EMBEDDING_DIM).map(|q| Embedding::from_normalized(q.to_vec()).expect("unit")).collect();
    let mut group = c.benchmark_group("top_k");
    group.sample_size(10);
    for (n, label) in [(10_000, "10k"), (100_000, "100k"), (1_000_000, "1M")] {
        let data = random_unit_vectors(n, 42);
        dump(&dir.join(format!("vectors-{label}.f32")), &data);
        let index = FaceIndex::new();
        for (i, v) in data.chunks_exact(EMBEDDING_DIM).enumerate() {
            let e = Embedding::from_normalized(v.to_vec()).expect("unit");
            index.insert(&tenant, FaceId(i as u64), UserId(i as u64), &e);
        }
        // Recall@10 of the f16 index against exact f32 search on the same vectors.
        let mut found = 0;
        for q in &queries {
            let mut exact: Vec<(f32, u64)> = data
                .chunks_exact(EMBEDDING_DIM)
                .enumerate()
                .map(|(i, v)| (v.iter().zip(q.as_slice()).map(|(a, b)| a * b).sum::<f32>(), i as u64))
                .collect();
            exact.sort_by(|a, b| b.0.total_cmp(&a.0));
            let truth: Vec<u64> = exact[..10].iter().map(|e| e.1).collect();
            found += index.search(&tenant, q, 10, -1.0, None).iter().filter(|h| truth.contains(&h.face_id.0)).count();
        }
        println!(
            "{label}: recall@10 vs exact f32 {:.4} over {QUERIES} queries; index about {:.1} MB",
            found as f64 / (10 * QUERIES) as f64,
            index.approx_bytes() as f64 / 1e6
        );
        drop(data);
        for k in [1, 10] {
            let mut next = 0;
            group.bench_function(format!("{label} faces/k={k}"), |b| {
                b.iter(|| {
                    next = (next + 1) % QUERIES;
                    index.search(&tenant, &queries[next], k, -1.0, None)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_search);
criterion_main!(benches);
