//! Inference with the real models on one thread (1 worker, 1 inference thread), per backend and
//! precision (ONNX Runtime f32, OpenVINO f32, and OpenVINO bf16 where the CPU has bf16): one
//! SCRFD pass at 320 and 640, ArcFace on batches of 1, 4 and 16 aligned faces, and the whole
//! pipeline per dev photo. Benchmark ids start with the backend (`ort-f32`, `openvino-f32`,
//! `openvino-bf16`); FACEVAULT_BENCH_BACKENDS (a comma-separated list of those) picks some.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use facevault::domain::MultipleFaces;
use facevault::imaging::align::align_face;
use facevault::imaging::{DecodeLimits, decode};
use facevault::inference::backend::{Backend, CpuFeatures, Engine, Precision};
use facevault::inference::session::verify_model;
use facevault::inference::{
    AnalyzeOptions, Coverage, EmbedWith, FacePipeline, FaceSelection, InferenceConfig, load_pipeline,
};
use image::RgbImage;

/// The dev photos of tests/fixtures/images (fetched by scripts/setup.sh).
const PHOTOS: [&str; 5] = ["gdp.jpg", "players.jpg", "t1.jpg", "yaoming.jpg", "Tom_Hanks_54745.png"];

fn photo_bytes(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {} ({e}); run scripts/setup.sh", path.display()))
}

fn photo(name: &str) -> RgbImage {
    decode(&photo_bytes(name), &DecodeLimits::default()).unwrap_or_else(|e| panic!("cannot decode {name}: {e}")).rgb
}

/// The backends this CPU can run, with their benchmark labels, less those
/// FACEVAULT_BENCH_BACKENDS leaves out.
fn backends() -> Vec<(&'static str, Backend)> {
    let mut all = vec![("ort-f32", Backend::ORT), ("openvino-f32", Backend::uniform(Engine::OpenVino(Precision::F32)))];
    if CpuFeatures::detect().bf16 {
        all.push(("openvino-bf16", Backend::uniform(Engine::OpenVino(Precision::Bf16))));
    }
    match std::env::var("FACEVAULT_BENCH_BACKENDS") {
        Ok(list) => all.into_iter().filter(|(label, _)| list.split(',').any(|l| l.trim() == *label)).collect(),
        Err(_) => all,
    }
}

/// One pipeline with the shipped models on `backend`, single-threaded so numbers are per core.
fn pipeline(backend: Backend) -> FacePipeline {
    let mut config = facevault::Config::for_root(Path::new(env!("CARGO_MANIFEST_DIR")));
    config.workers = 1;
    config.intra_threads = 1;
    let mut inference: InferenceConfig = config.inference();
    inference.backend = backend;
    for spec in [&inference.detector, &inference.embedder] {
        verify_model(spec).unwrap_or_else(|e| panic!("{e}; run scripts/setup.sh"));
    }
    load_pipeline(&inference).unwrap_or_else(|e| panic!("cannot load the pipeline: {e}; run scripts/setup.sh"))
}

fn bench_detect(c: &mut Criterion, backend: &str, pipeline: &mut FacePipeline) {
    let mut group = c.benchmark_group(format!("{backend}/detect"));
    group.sampling_mode(SamplingMode::Flat);
    for name in ["t1.jpg", "yaoming.jpg"] {
        let rgb = photo(name);
        for canvas in [320u32, 640] {
            group.bench_function(format!("{canvas}/{name}"), |b| {
                b.iter(|| pipeline.detect_single_pass(black_box(&rgb), canvas).expect("detector pass"));
            });
        }
    }
    group.finish();
}

fn bench_embed(c: &mut Criterion, backend: &str, pipeline: &mut FacePipeline) {
    let rgb = photo("t1.jpg");
    let detections = pipeline.detect_single_pass(&rgb, 640).expect("detector pass on t1.jpg");
    assert!(detections.len() >= 4, "t1.jpg should show at least 4 faces, found {}", detections.len());
    // 16 crops: t1.jpg's first four faces, repeated (the model's cost does not depend on the
    // pixels).
    let crops: Vec<Vec<u8>> = detections[..4]
        .iter()
        .cycle()
        .take(16)
        .map(|d| {
            let mut crop = Vec::new();
            align_face(&rgb, &d.landmarks, &mut crop);
            crop
        })
        .collect();
    let crops: Vec<&[u8]> = crops.iter().map(Vec::as_slice).collect();

    let mut group = c.benchmark_group(format!("{backend}/embed"));
    group.sampling_mode(SamplingMode::Flat);
    for (n, label) in [(1usize, "1 face"), (4, "4 faces"), (16, "16 faces")] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("{label}/t1.jpg"), |b| {
            b.iter(|| pipeline.embed_crops(black_box(&crops[..n])).expect("embedding"));
        });
    }
    group.finish();
}

fn bench_analyze(c: &mut Criterion, backend: &str, pipeline: &mut FacePipeline) {
    let mut group = c.benchmark_group(format!("{backend}/analyze"));
    // Up to 0.6 s an image (players.jpg): one run a sample, fewer samples, so the group ends in
    // about a minute.
    group.sampling_mode(SamplingMode::Flat).sample_size(10).measurement_time(Duration::from_secs(8));
    // DetectFaces with embeddings: both detector passes, every face embedded, no thumbnails.
    let all = AnalyzeOptions {
        coverage: Coverage::All,
        embeddings: FaceSelection::All,
        thumbnails: FaceSelection::None,
        models: EmbedWith::PRIMARY,
    };
    for name in PHOTOS {
        let bytes = photo_bytes(name);
        group.bench_function(format!("all faces/{name}"), |b| {
            b.iter(|| pipeline.analyze(black_box(&bytes), &all).expect("analysis"));
        });
    }
    // Enrollment: faces of 32 px and up, the sole acceptable face embedded and thumbnailed.
    let enroll = AnalyzeOptions {
        coverage: Coverage::MinFace(32.0),
        embeddings: FaceSelection::Enrollable(MultipleFaces::Dominant),
        thumbnails: FaceSelection::Enrollable(MultipleFaces::Dominant),
        models: EmbedWith::PRIMARY,
    };
    let bytes = photo_bytes("yaoming.jpg");
    group.bench_function("enrollment/yaoming.jpg", |b| {
        b.iter(|| pipeline.analyze(black_box(&bytes), &enroll).expect("analysis"));
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    println!("CPU: {}", CpuFeatures::detect().describe());
    for (label, backend) in backends() {
        // Loaded once per backend: a session costs far more to open than to run.
        let mut pipeline = pipeline(backend);
        bench_detect(c, label, &mut pipeline);
        bench_embed(c, label, &mut pipeline);
        bench_analyze(c, label, &mut pipeline);
    }
}

fn config() -> Criterion {
    Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = inference;
    config = config();
    targets = benches
}
criterion_main!(inference);
