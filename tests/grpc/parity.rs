//! Parity with the Python InsightFace reference (tests/fixtures/reference/insightface.json,
//! made by scripts/reference/run.sh): every face the reference finds at its default 640
//! input is found with IoU >= 0.9, landmarks within 2 px and embedding cosine >= 0.99; and
//! where the reference finds nothing (faces that fill the frame) facevault finds the face.
//! Checked on ONNX Runtime fp32 (the reference's own runtime) and on the default backend of
//! this CPU (`auto`: OpenVINO bf16 where the CPU has bf16), and on OpenVINO f32.

use facevault::config::Config;
use facevault::grpc::pb::{DetectFacesRequest, DetectFacesResponse};
use facevault::inference::backend::{BackendChoice, PrecisionChoice};
use image::imageops;
use serde::Deserialize;
use std::collections::BTreeMap;

use crate::common::{TestServer, bbox, cosine, fixture_bytes, fixture_rgb, iou, png, root};

#[derive(Debug, Deserialize)]
struct Reference {
    images: BTreeMap<String, RefImage>,
    crops: BTreeMap<String, RefCrop>,
}

#[derive(Debug, Deserialize)]
struct RefImage {
    det640: Vec<RefFace>,
    det320: Vec<RefFace>,
}

#[derive(Debug, Deserialize)]
struct RefFace {
    bbox: [f32; 4],
    score: f32,
    kps: [[f32; 2]; 5],
    #[serde(default)]
    embedding: Vec<f32>,
}

#[derive(Debug, Deserialize)]
struct RefCrop {
    source: String,
    side: u32,
    bbox: [f32; 4],
    faces640: usize,
    faces320: usize,
    best_score640: f32,
}

fn reference() -> Reference {
    let path = root().join("tests/fixtures/reference/insightface.json");
    serde_json::from_slice(&std::fs::read(&path).expect("reference outputs are committed")).expect("parse reference")
}

async fn detect(server: &TestServer, image: Vec<u8>) -> DetectFacesResponse {
    let request = DetectFacesRequest { image: image.into(), include_embeddings: true, include_thumbnails: false };
    server.faces().await.detect_faces(request).await.expect("DetectFaces").into_inner()
}

fn onnx_runtime(config: &mut Config) {
    config.inference_backend = BackendChoice::Ort;
}

fn openvino_f32(config: &mut Config) {
    config.inference_backend = BackendChoice::Openvino;
    config.inference_precision = PrecisionChoice::F32;
}

#[tokio::test]
async fn reference_faces_match_on_onnx_runtime_f32() {
    every_reference_face_is_found_with_the_same_landmarks_and_embedding(onnx_runtime).await;
}

#[tokio::test]
async fn reference_faces_match_on_the_default_backend() {
    every_reference_face_is_found_with_the_same_landmarks_and_embedding(|_| {}).await;
}

#[tokio::test]
async fn reference_faces_match_on_openvino_f32() {
    every_reference_face_is_found_with_the_same_landmarks_and_embedding(openvino_f32).await;
}

async fn every_reference_face_is_found_with_the_same_landmarks_and_embedding(backend: fn(&mut Config)) {
    // The models against the reference's: without the face check, which drops the weakest of
    // the reference's faces (gdp.jpg's blurred spectators, players.jpg's smallest).
    let server = TestServer::start_with(|c| {
        backend(c);
        c.min_face_norm = 0.0;
    })
    .await;
    println!("backend: {}", server.app().pool().backend());
    let reference = reference();
    let (mut matched, mut worst_iou, mut worst_px, mut worst_cos) = (0, 1.0f32, 0.0f32, 1.0f32);
    for (name, image) in &reference.images {
        let ours = detect(&server, fixture_bytes(name)).await;
        for face in &image.det640 {
            let (best, overlap) = ours
                .faces
                .iter()
                .map(|f| (f, iou(&bbox(f), &face.bbox)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or_else(|| panic!("{name}: facevault found no face at all"));
            assert!(overlap >= 0.9, "{name}: reference face {:?} best IoU {overlap}", face.bbox);
            let px = best
                .landmarks
                .iter()
                .zip(&face.kps)
                .map(|(p, r)| ((p.x - r[0]).powi(2) + (p.y - r[1]).powi(2)).sqrt())
                .fold(0.0f32, f32::max);
            assert!(px <= 2.0, "{name}: landmarks of {:?} off by {px} px", face.bbox);
            assert!((best.score - face.score).abs() < 0.05, "{name}: score {} vs {}", best.score, face.score);
            let similarity = cosine(&best.embedding, &face.embedding);
            println!(
                "{name}: face {:?} size {:.0} cosine {similarity:.5} landmarks {px:.3} px",
                face.bbox,
                face.bbox[2] - face.bbox[0]
            );
            // A face cut by the frame edge is warped partly from the black border, which moves
            // with sub-pixel landmark differences: on gdp.jpg a 24 px blurred spectator cut at
            // x=0 reaches 0.985. Faces inside the frame must reach 0.99.
            let inside = face.bbox[0] >= 0.0 && face.bbox[1] >= 0.0;
            let floor = if inside { 0.99 } else { 0.98 };
            assert!(similarity >= floor, "{name}: face {:?} cosine {similarity} < {floor}", face.bbox);
            matched += 1;
            worst_iou = worst_iou.min(overlap);
            worst_px = worst_px.max(px);
            worst_cos = worst_cos.min(similarity);
        }
        println!(
            "{name}: reference {} faces at 640, {} at 320; facevault {}",
            image.det640.len(),
            image.det320.len(),
            ours.faces.len()
        );
    }
    println!(
        "matched {matched} reference faces: worst IoU {worst_iou:.4}, landmarks {worst_px:.3} px, cosine {worst_cos:.5}"
    );
    assert!(matched >= 34, "the reference finds 34 faces on the five photos");
}

#[tokio::test]
async fn tight_face_crops_the_reference_misses_are_found_on_onnx_runtime_f32() {
    tight_face_crops_the_reference_misses_are_found(onnx_runtime).await;
}

#[tokio::test]
async fn tight_face_crops_the_reference_misses_are_found_on_the_default_backend() {
    tight_face_crops_the_reference_misses_are_found(|_| {}).await;
}

async fn tight_face_crops_the_reference_misses_are_found(backend: fn(&mut Config)) {
    let server = TestServer::start_with(backend).await;
    let reference = reference();
    assert!(!reference.crops.is_empty());
    let mut found = 0;
    for (key, crop) in &reference.crops {
        assert_eq!(
            crop.faces640, 0,
            "{key}: the reference misses this crop at 640 (best score {})",
            crop.best_score640
        );
        assert_eq!(crop.faces320, 1, "{key}: the reference at 320 finds it");
        // The same square as the reference script: 1.1x the longer box side, centred.
        let rgb = fixture_rgb(&crop.source);
        let [x1, y1, x2, y2] = crop.bbox;
        let half = 0.55 * (x2 - x1).max(y2 - y1);
        let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
        let left = (cx - half).max(0.0).round() as u32;
        let top = (cy - half).max(0.0).round() as u32;
        let right = ((cx + half).min(rgb.width() as f32)).round() as u32;
        let bottom = ((cy + half).min(rgb.height() as f32)).round() as u32;
        let square = imageops::crop_imm(&rgb, left, top, right - left, bottom - top).to_image();
        let tight = imageops::resize(&square, crop.side, crop.side, imageops::FilterType::Triangle);
        let ours = detect(&server, png(&tight)).await;
        assert_eq!(ours.faces.len(), 1, "{key}: facevault must find the one face");
        let b = bbox(&ours.faces[0]);
        let side = crop.side as f32;
        assert!((b[2] - b[0]).max(b[3] - b[1]) > 0.6 * side, "{key}: the face fills the frame: {b:?}");
        found += 1;
    }
    println!("tight crops: reference at 640 finds 0 of {}, facevault finds {found}", reference.crops.len());
}
