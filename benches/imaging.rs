//! Pixel work without models: decoding each dev photo, letterboxing it into the detector tensor
//! at 320 and 640, aligning a face to the 112x112 ArcFace crop, and encoding a face thumbnail.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use facevault::domain::{BoundingBox, Landmarks, Point};
use facevault::imaging::align::align_face;
use facevault::imaging::encode::{ThumbnailSpec, face_thumbnail};
use facevault::imaging::resize::Letterboxer;
use facevault::imaging::{DecodeLimits, decode};
use fast_image_resize::Resizer;
use image::RgbImage;

/// The dev photos of tests/fixtures/images (fetched by scripts/setup.sh).
const PHOTOS: [&str; 5] = ["gdp.jpg", "players.jpg", "t1.jpg", "yaoming.jpg", "Tom_Hanks_54745.png"];

/// The detector's normalisation (SCRFD: (x - 127.5) / 128).
const MEAN: f32 = 127.5;
const STD: f32 = 128.0;

/// Landmarks of the face in yaoming.jpg (eyes, nose, mouth corners), image pixels, as SCRFD finds
/// them at 640.
const YAOMING_LANDMARKS: [(f32, f32); 5] =
    [(103.5, 122.6), (149.9, 125.4), (126.2, 149.8), (106.4, 176.4), (141.2, 178.8)];

/// Box of the face in yaoming.jpg, image pixels (SCRFD at 640).
const YAOMING_BOX: BoundingBox = BoundingBox { x_min: 71.5, y_min: 73.3, x_max: 177.0, y_max: 212.0 };

fn photo_bytes(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {} ({e}); run scripts/setup.sh", path.display()))
}

fn photo(name: &str) -> RgbImage {
    decode(&photo_bytes(name), &DecodeLimits::default()).unwrap_or_else(|e| panic!("cannot decode {name}: {e}")).rgb
}

fn yaoming_landmarks() -> Landmarks {
    YAOMING_LANDMARKS.map(|(x, y)| Point { x, y })
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let limits = DecodeLimits::default();
    for name in PHOTOS {
        let bytes = photo_bytes(name);
        group.bench_function(name, |b| b.iter(|| decode(black_box(&bytes), &limits).expect("dev photo decodes")));
    }
    group.finish();
}

fn bench_letterbox(c: &mut Criterion) {
    let mut group = c.benchmark_group("letterbox");
    let mut letterbox = Letterboxer::new();
    let mut tensor = Vec::new();
    for name in PHOTOS {
        let rgb = photo(name);
        for canvas in [320u32, 640] {
            group.bench_function(format!("{canvas}/{name}"), |b| {
                b.iter(|| {
                    letterbox.to_tensor(black_box(&rgb), canvas, MEAN, STD, &mut tensor).expect("letterbox");
                    black_box(&tensor);
                });
            });
        }
    }
    group.finish();
}

fn bench_align(c: &mut Criterion) {
    let mut group = c.benchmark_group("align");
    let rgb = photo("yaoming.jpg");
    let landmarks = yaoming_landmarks();
    let mut crop = Vec::new();
    group.bench_function("112x112/yaoming.jpg", |b| {
        b.iter(|| {
            align_face(black_box(&rgb), &landmarks, &mut crop);
            black_box(&crop);
        });
    });
    group.finish();
}

fn bench_thumbnail(c: &mut Criterion) {
    let mut group = c.benchmark_group("thumbnail");
    let rgb = photo("yaoming.jpg");
    let spec = ThumbnailSpec::default();
    let mut resizer = Resizer::new();
    group.bench_function(format!("{}px jpeg/yaoming.jpg", spec.size), |b| {
        b.iter(|| face_thumbnail(black_box(&rgb), &YAOMING_BOX, &spec, &mut resizer).expect("thumbnail"));
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_decode, bench_letterbox, bench_align, bench_thumbnail
}
criterion_main!(benches);
