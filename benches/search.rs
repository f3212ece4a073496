//! `FaceIndex::search` (top-k users) over 10k, 100k and 1M random unit 512-d vectors, k = 1 and
//! 10, exact and with the sketch prefilter.
//!
//! Each of the 16 queries has 10 planted neighbours in the data at cosines 0.31 to 0.85 (the
//! rest of the data is unrelated, cosine about 0 ± 0.044), so the true top 10 is known and is
//! what a search with the default floor of 0.30 must return. Recall@10 is measured against an
//! exact f32 scan for both the exact (f16) index and the prefiltered one.
//!
//! The vectors and queries go to target/search-bench/ so scripts/search-vs-faiss.py can time
//! FAISS IndexFlatIP on the same data.

use std::io::Write;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use facevault::domain::{EMBEDDING_DIM, Embedding, FaceId, Tenant, UserId};
use facevault::search::{FaceIndex, sketch};

const QUERIES: usize = 16;
const PLANTED: usize = 10;
/// The default SearchFaces floor (possible-match threshold).
const FLOOR: f32 = 0.30;

/// splitmix64: the same stream in every run.
fn random_unit_vectors(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut next = || facevault::search::sketch::splitmix64(&mut state);
    let mut out = Vec::with_capacity(n * EMBEDDING_DIM);
    for _ in 0..n {
        let v: Vec<f32> = (0..EMBEDDING_DIM).map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(v.iter().map(|x| x / norm));
    }
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Overwrites `row` with the unit vector at cosine `cos` to `q`, in the plane of `q` and the
/// row's old (random) value.
fn plant(row: &mut [f32], q: &[f32], cos: f32) {
    let along = dot(row, q);
    let ortho: Vec<f32> = row.iter().zip(q).map(|(r, x)| r - along * x).collect();
    let norm = dot(&ortho, &ortho).sqrt();
    let sin = (1.0 - cos * cos).sqrt();
    for ((r, x), o) in row.iter_mut().zip(q).zip(&ortho) {
        *r = cos * x + sin * o / norm;
    }
}

/// Random data with `PLANTED` neighbours of each query at rows `j * (n / QUERIES) + t`.
fn planted_data(n: usize, queries: &[f32]) -> Vec<f32> {
    let mut data = random_unit_vectors(n, 42);
    for (j, q) in queries.chunks_exact(EMBEDDING_DIM).enumerate() {
        for t in 0..PLANTED {
            let row = j * (n / QUERIES) + t;
            let cos = 0.31 + 0.06 * t as f32;
            plant(&mut data[row * EMBEDDING_DIM..(row + 1) * EMBEDDING_DIM], q, cos);
        }
    }
    data
}

fn dump(path: &Path, data: &[f32]) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create vector file"));
    for v in data {
        file.write_all(&v.to_le_bytes()).expect("write");
    }
}

fn build(data: &[f32], exact_max_faces: usize, tenant: &Tenant) -> FaceIndex {
    let index = FaceIndex::with_exact_max_faces(exact_max_faces);
    for (i, v) in data.chunks_exact(EMBEDDING_DIM).enumerate() {
        let e = Embedding::from_normalized(v.to_vec()).expect("unit");
        index.insert(tenant, FaceId(i as u64), UserId(i as u64), &e);
    }
    // As after the server's start-up rebuild.
    index.shrink_to_fit();
    index
}

fn bench_search(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/search-bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let tenant = Tenant::new("bench").expect("tenant");
    let raw_queries = random_unit_vectors(QUERIES, 7);
    dump(&dir.join("queries.f32"), &raw_queries);
    let queries: Vec<Embedding> = raw_queries
        .chunks_exact(EMBEDDING_DIM)
        .map(|q| Embedding::from_normalized(q.to_vec()).expect("unit"))
        .collect();
    let bound = sketch::max_distance(FLOOR).expect("the floor filters");
    let mut group = c.benchmark_group("top_k");
    group.sample_size(10);
    for (n, label) in [(10_000, "10k"), (100_000, "100k"), (1_000_000, "1M")] {
        let data = planted_data(n, &raw_queries);
        dump(&dir.join(format!("vectors-{label}.f32")), &data);
        let exact = build(&data, usize::MAX, &tenant);
        let filtered = build(&data, 0, &tenant);
        let codes: Vec<sketch::Sketch> = data.chunks_exact(EMBEDDING_DIM).map(sketch::sketch).collect();
        // Exact f32 truth, the share of rows the prefilter passes, and recall@10 of both indexes.
        let (mut found_exact, mut found_filtered, mut truth_total, mut passed) = (0, 0, 0, 0usize);
        for q in &queries {
            let mut scores: Vec<(f32, u64)> =
                data.chunks_exact(EMBEDDING_DIM).enumerate().map(|(i, v)| (dot(v, q.as_slice()), i as u64)).collect();
            scores.sort_by(|a, b| b.0.total_cmp(&a.0));
            let truth: Vec<u64> = scores[..10].iter().filter(|s| s.0 >= FLOOR).map(|s| s.1).collect();
            truth_total += truth.len();
            let hits = |index: &FaceIndex| {
                index.search(&tenant, q, 10, FLOOR, None).iter().filter(|h| truth.contains(&h.face_id.0)).count()
            };
            found_exact += hits(&exact);
            found_filtered += hits(&filtered);
            let code = sketch::sketch(q.as_slice());
            passed += codes.iter().filter(|c| sketch::distance(&code, c.as_slice()) <= bound).count();
        }
        println!(
            "{label}: recall@10 vs exact f32 (floor {FLOOR}, {truth_total} true hits over {QUERIES} queries): \
             exact f16 {:.4}, prefiltered {:.4}; prefilter passes {:.2}% of rows; \
             exact index about {:.1} MB",
            found_exact as f64 / truth_total as f64,
            found_filtered as f64 / truth_total as f64,
            100.0 * passed as f64 / (n * QUERIES) as f64,
            exact.approx_bytes() as f64 / 1e6,
        );
        drop((data, codes));
        for k in [1, 10] {
            let mut next = 0;
            group.bench_function(format!("{label} exact/k={k}"), |b| {
                b.iter(|| {
                    next = (next + 1) % QUERIES;
                    exact.search(&tenant, &queries[next], k, -1.0, None)
                })
            });
        }
        let mut next = 0;
        group.bench_function(format!("{label} prefiltered/k=10 floor={FLOOR}"), |b| {
            b.iter(|| {
                next = (next + 1) % QUERIES;
                filtered.search(&tenant, &queries[next], 10, FLOOR, None)
            })
        });
    }
    group.finish();
}

/// The list check of every enrollment and search (`ListIndex::matches`, one exact f16 scan of a
/// tenant's list entries) at 1k and 10k entries (--max-list-entries' default), and a search
/// restricted by a metadata filter (`FaceIndex::search_among`) over 100k faces of 100k users of
/// which the filter admits 10% or 1%, against the unfiltered search.
fn bench_lists_and_filters(c: &mut Criterion) {
    use facevault::domain::{EntryId, ListId, ListKind};
    use facevault::search::{ListIndex, ListInfo};
    let tenant = Tenant::new("bench").expect("tenant");
    let raw_queries = random_unit_vectors(QUERIES, 7);
    let queries: Vec<Embedding> = raw_queries
        .chunks_exact(EMBEDDING_DIM)
        .map(|q| Embedding::from_normalized(q.to_vec()).expect("unit"))
        .collect();
    let mut group = c.benchmark_group("lists");
    group.sample_size(10);
    for (n, label) in [(1_000, "1k"), (10_000, "10k")] {
        let lists = ListIndex::default();
        for l in 0..10u64 {
            let info = ListInfo { name: format!("list {l}"), kind: ListKind::Block, threshold: None };
            lists.set_list(&tenant, ListId(l), info);
        }
        let data = random_unit_vectors(n, 43);
        for (i, v) in data.chunks_exact(EMBEDDING_DIM).enumerate() {
            let e = Embedding::from_normalized(v.to_vec()).expect("unit");
            lists.insert(&tenant, EntryId(i as u64), ListId(i as u64 % 10), &e);
        }
        let mut next = 0;
        group.bench_function(format!("matches/{label} entries"), |b| {
            b.iter(|| {
                next = (next + 1) % QUERIES;
                lists.matches(&tenant, &queries[next], 0.36)
            })
        });
    }
    let n = 100_000;
    let data = planted_data(n, &raw_queries);
    let index = build(&data, usize::MAX, &tenant);
    for (share, label) in [(10, "10%"), (100, "1%")] {
        let only: std::collections::HashSet<UserId> = (0..n as u64).filter(|u| u % share == 0).map(UserId).collect();
        let mut next = 0;
        group.bench_function(format!("metadata filter {label} of 100k/k=10"), |b| {
            b.iter(|| {
                next = (next + 1) % QUERIES;
                index.search_among(&tenant, &queries[next], 10, FLOOR, None, Some(&only))
            })
        });
    }
    let mut next = 0;
    group.bench_function("no filter 100k/k=10", |b| {
        b.iter(|| {
            next = (next + 1) % QUERIES;
            index.search(&tenant, &queries[next], 10, FLOOR, None)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_search, bench_lists_and_filters);
criterion_main!(benches);
