//! Evaluation on the labelled devfaces set through the real server (`make eval`; not part of
//! `make test`, because a user's clone does not have the set). Enrolls one photo of each of the
//! 86 identities, then searches and verifies every other photo, and verifies the impostor pairs
//! of pairs.csv. Prints rank-1 and verification numbers and holds them to floors. Then uploads
//! every photo under both multiple-faces policies and checks that each face DOMINANT enrolls
//! from a photo of several is its labelled person's.
//!
//! The set's location: FACEVAULT_DEVFACES, default ../shared/data/devfaces.

#[allow(dead_code, reason = "shared with the grpc test binary, which uses all of it")]
#[path = "grpc/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use facevault::grpc::pb::enrollment::MultipleFacesPolicy;
use facevault::grpc::pb::{
    CreateUserRequest, DetectFacesRequest, SearchFacesRequest, UploadFaceRequest, User, UserRef, VerifyFaceRequest,
    user_ref,
};

use common::{ADMIN_A, ADMIN_B, TestServer, bbox, cosine, iou, png, reason};
use image::RgbImage;

/// Makes an altered, encoded copy of a query photo.
type Alter = fn(RgbImage) -> Vec<u8>;

/// Altered copies of a query photo: the probes of the table `make eval` prints, each with the
/// rank-1 it must keep (%, a few points under what was measured).
const PROBES: [(&str, f64, Alter); 6] = [
    ("grayscale", 95.0, |rgb| {
        png(&image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(rgb).to_luma8()).to_rgb8())
    }),
    ("JPEG quality 25", 95.0, |rgb| {
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 25).encode_image(&rgb).expect("jpeg");
        out
    }),
    ("shrunk to 160 px, pasted into a 1600x1200 grey canvas", 93.0, |rgb| pasted(&rgb, 160, (1600, 1200), (700, 500))),
    (
        "shrunk to 96 px (a face of about 38 px), pasted into a 4000x3000 grey canvas; one photo per person",
        90.0,
        |rgb| pasted(&rgb, 96, (4000, 3000), (2900, 700)),
    ),
    ("turned 90 degrees, no EXIF orientation", 95.0, |rgb| png(&image::imageops::rotate90(&rgb))),
    ("upside down, no EXIF orientation", 88.0, |rgb| png(&image::imageops::rotate180(&rgb))),
];

/// `rgb` shrunk to `long_side` and pasted at `at` into a grey canvas of `size`, as PNG.
fn pasted(rgb: &RgbImage, long_side: u32, size: (u32, u32), at: (i64, i64)) -> Vec<u8> {
    let scale = long_side as f32 / rgb.width().max(rgb.height()) as f32;
    let (w, h) = ((rgb.width() as f32 * scale) as u32, (rgb.height() as f32 * scale) as u32);
    let small = image::imageops::resize(rgb, w, h, image::imageops::FilterType::Triangle);
    let mut canvas = RgbImage::from_pixel(size.0, size.1, image::Rgb([128, 128, 128]));
    image::imageops::overlay(&mut canvas, &small, at.0, at.1);
    png(&canvas)
}

/// A photo's faces that pass the quality gate: box and embedding.
type EnrollableFaces = Vec<([f32; 4], Vec<f32>)>;

fn devfaces() -> PathBuf {
    let dir = std::env::var_os("FACEVAULT_DEVFACES")
        .map_or_else(|| common::root().join("../shared/data/devfaces"), PathBuf::from);
    assert!(dir.join("labels.csv").is_file(), "devfaces not found at {} (set FACEVAULT_DEVFACES)", dir.display());
    dir
}

fn rows(path: PathBuf) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).expect("csv");
    text.lines().skip(1).filter(|l| !l.is_empty()).map(|l| l.split(',').map(str::to_owned).collect()).collect()
}

fn by_external(id: &str) -> Option<UserRef> {
    Some(UserRef { r#ref: Some(user_ref::Ref::ExternalId(id.to_owned())) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devfaces_enroll_search_and_verify_through_the_api() {
    let dir = devfaces();
    let mut by_identity: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows(dir.join("labels.csv")) {
        by_identity.entry(row[1].clone()).or_default().push(row[0].clone());
    }
    let read = |file: &str| std::fs::read(dir.join("images").join(file)).expect("image");
    let server = TestServer::start_keyed_with(|c| c.queue_capacity = 64).await;
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);

    // Enroll the first photo of each identity that passes the gate.
    let mut enrolled: BTreeMap<String, String> = BTreeMap::new();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for (identity, files) in &mut by_identity {
        files.sort();
        let user = User { external_id: identity.clone(), ..User::default() };
        users.create_user(CreateUserRequest { user: Some(user), ..Default::default() }).await.expect("create");
        for file in files.iter() {
            let request =
                UploadFaceRequest { user: by_external(identity), image: read(file).into(), ..Default::default() };
            match faces.upload_face(request).await {
                Ok(_) => {
                    enrolled.insert(identity.clone(), file.clone());
                    break;
                }
                Err(err) => {
                    println!("refused {file}: {} {}", reason(&err), err.message());
                    *refusals.entry(reason(&err)).or_default() += 1;
                }
            }
        }
    }
    println!(
        "enrolled {} of {} identities; refused uploads by reason: {refusals:?}",
        enrolled.len(),
        by_identity.len()
    );

    // Search and verify every other photo of every enrolled identity.
    let (mut queries, mut rank1, mut verified) = (0, 0, 0);
    let mut misses = Vec::new();
    for (identity, files) in &by_identity {
        let Some(enrolled_file) = enrolled.get(identity) else { continue };
        for file in files.iter().filter(|f| *f != enrolled_file) {
            queries += 1;
            let request =
                SearchFacesRequest { image: read(file).into(), top_k: 5, min_similarity: -1.0, ..Default::default() };
            let reply = faces.search_faces(request).await.expect("search").into_inner();
            let top = reply.matches.first().map(|m| m.external_id.clone()).unwrap_or_default();
            if top == *identity {
                rank1 += 1;
            } else {
                misses.push(format!("{file} -> {top}"));
            }
            let request = VerifyFaceRequest { user: by_external(identity), image: read(file).into() };
            if faces.verify_face(request).await.expect("verify").into_inner().r#match {
                verified += 1;
            }
        }
    }
    let pct = |n: usize, d: usize| 100.0 * n as f64 / d.max(1) as f64;
    // The same searches with altered copies of the query photos: what a phone, a scanner or a
    // document photo does to them. Printed as a table; the floors below hold for the photos as
    // they are.
    println!("| probe | rank-1 | no face found | refused otherwise |");
    println!("|---|---|---|---|");
    println!("| the photos as they are | {:.1}% | 0 | 0 |", pct(rank1, queries));
    for (probe, floor, alter) in PROBES {
        // The 4000x3000 probe costs a tiled search a query (seconds in a debug build): one
        // query photo per person.
        let per_person = if probe.contains("one photo per person") { 1 } else { usize::MAX };
        let (mut hits, mut no_face, mut refused, mut queries) = (0, 0, 0, 0);
        for (identity, files) in &by_identity {
            let Some(enrolled_file) = enrolled.get(identity) else { continue };
            for file in files.iter().filter(|f| *f != enrolled_file).take(per_person) {
                queries += 1;
                let image = alter(image::load_from_memory(&read(file)).expect("decode").to_rgb8());
                let request =
                    SearchFacesRequest { image: image.into(), top_k: 1, min_similarity: -1.0, ..Default::default() };
                match faces.search_faces(request).await {
                    Ok(reply) => {
                        if reply.into_inner().matches.first().is_some_and(|m| m.external_id == *identity) {
                            hits += 1;
                        }
                    }
                    Err(err) if reason(&err) == "NO_FACE_DETECTED" => no_face += 1,
                    Err(_) => refused += 1,
                }
            }
        }
        println!("| {probe} | {:.1}% | {no_face} | {refused} |", pct(hits, queries));
        assert!(pct(hits, queries) >= floor, "{probe}: rank-1 {hits} of {queries}, below {floor}%");
    }

    // Impostors: each different-person pair of pairs.csv, b's photo against a's user.
    let (mut impostors, mut false_matches) = (0, 0);
    let identity_of: BTreeMap<String, String> =
        by_identity.iter().flat_map(|(id, files)| files.iter().map(move |f| (f.clone(), id.clone()))).collect();
    for row in rows(dir.join("pairs.csv")).into_iter().filter(|r| r[2] == "0") {
        let claimed = &identity_of[&row[0]];
        if !enrolled.contains_key(claimed) {
            continue;
        }
        impostors += 1;
        let request = VerifyFaceRequest { user: by_external(claimed), image: read(&row[1]).into() };
        if faces.verify_face(request).await.expect("verify").into_inner().r#match {
            false_matches += 1;
        }
    }
    println!("search rank-1: {rank1}/{queries} = {:.1}%", pct(rank1, queries));
    println!("verify, same person: {verified}/{queries} = {:.1}% accepted", pct(verified, queries));
    println!(
        "verify, impostor pairs: {false_matches}/{impostors} = {:.2}% falsely accepted",
        pct(false_matches, impostors)
    );
    println!("rank-1 misses: {misses:?}");
    // LFW photos often show a second person; under DOMINANT the person in the middle is taken,
    // and one identity may still be left without an enrollable photo.
    assert!(enrolled.len() + 1 >= by_identity.len(), "enrolled {} of {}", enrolled.len(), by_identity.len());
    assert!(pct(rank1, queries) >= 95.0, "rank-1 {rank1}/{queries}");
    assert!(pct(verified, queries) >= 90.0, "verification {verified}/{queries}");
    assert_eq!(false_matches, 0, "no impostor pair verifies at the match threshold");
    let multiple = refusals.get("MULTIPLE_FACES_DETECTED").copied().unwrap_or(0);
    assert!(multiple <= 3, "{multiple} first photos refused as MULTIPLE_FACES_DETECTED under DOMINANT");

    // Every photo under REJECT and under DOMINANT, each to its own user of the second tenant. A
    // face DOMINANT takes from a photo of several faces that pass the gate must be the labelled
    // person's: of the photo's enrollable faces, the one most like that person's other photos
    // (the mean over them of the best cosine with any of their faces; a passer-by is rarely in
    // them all).
    let (mut users_b, mut faces_b) = (server.users_as(ADMIN_B).await, server.faces_as(ADMIN_B).await);
    let mut embedded: BTreeMap<String, EnrollableFaces> = BTreeMap::new();
    let (mut several, mut taken, mut still_refused, mut wrong) = (0, 0, 0, Vec::new());
    let mut only_reject = Vec::new();
    for (identity, files) in &by_identity {
        for (n, file) in files.iter().enumerate() {
            let external = format!("photo-{n}-{}", &identity[..identity.len().min(50)]);
            let user = User { external_id: external.clone(), ..User::default() };
            users_b.create_user(CreateUserRequest { user: Some(user), ..Default::default() }).await.expect("create");
            let upload = |policy: MultipleFacesPolicy| UploadFaceRequest {
                user: by_external(&external),
                image: read(file).into(),
                multiple_faces_policy: policy as i32,
                ..Default::default()
            };
            let rejected = match faces_b.upload_face(upload(MultipleFacesPolicy::Reject)).await {
                Err(err) if reason(&err) == "MULTIPLE_FACES_DETECTED" => {
                    several += 1;
                    true
                }
                Err(_) => continue,
                Ok(_) => false,
            };
            let stored = match faces_b.upload_face(upload(MultipleFacesPolicy::Dominant)).await {
                Ok(reply) => reply.into_inner(),
                Err(err) => {
                    if rejected {
                        println!("DOMINANT refuses {file}: {} {}", reason(&err), err.message());
                        still_refused += 1;
                    } else {
                        // REJECT took the one face that passes; DOMINANT sees a more prominent one.
                        only_reject.push(format!("{file}: {} {}", reason(&err), err.message()));
                    }
                    continue;
                }
            };
            if !rejected {
                continue; // one face passes the gate, and it is the most prominent: as before
            }
            taken += 1;
            assert!(stored.warnings.contains(&"OTHER_FACES_IGNORED".to_owned()), "{file}: {:?}", stored.warnings);
            let enrolled_box = bbox(&stored.face.expect("face").detection.expect("detection"));
            for f in files {
                if !embedded.contains_key(f) {
                    let request =
                        DetectFacesRequest { image: read(f).into(), include_embeddings: true, ..Default::default() };
                    let found = faces.detect_faces(request).await.expect("detect").into_inner().faces;
                    let found = found
                        .iter()
                        .filter(|d| d.quality.as_ref().is_some_and(|q| q.issues.is_empty()))
                        .map(|d| (bbox(d), d.embedding.clone()))
                        .collect();
                    embedded.insert(f.clone(), found);
                }
            }
            let likeness = |embedding: &[f32]| -> f32 {
                let others: Vec<f32> = files
                    .iter()
                    .filter(|f| *f != file)
                    .map(|f| embedded[f].iter().map(|(_, e)| cosine(embedding, e)).fold(-1.0, f32::max))
                    .collect();
                others.iter().sum::<f32>() / others.len().max(1) as f32
            };
            let (mut taken_likeness, mut best_other) = (None, f32::MIN);
            for (face_box, embedding) in &embedded[file] {
                if iou(face_box, &enrolled_box) > 0.5 {
                    taken_likeness = Some(likeness(embedding));
                } else {
                    best_other = best_other.max(likeness(embedding));
                }
            }
            let taken_likeness = taken_likeness.expect("DetectFaces finds the enrolled face");
            if taken_likeness <= best_other {
                wrong.push(format!("{file}: the enrolled face {taken_likeness:.3}, another {best_other:.3}"));
            }
        }
    }
    println!(
        "multiple faces: {several} photos refused under REJECT; under DOMINANT {taken} enrolled \
         (the labelled person's face in {} of them), {still_refused} refused",
        taken - wrong.len()
    );
    println!("enrolled under REJECT, refused under DOMINANT (a more prominent face fails the gate): {only_reject:?}");
    assert!(wrong.is_empty(), "DOMINANT enrolled another person's face: {wrong:?}");
    assert!(still_refused <= 3, "{still_refused} photos refused under DOMINANT");
}

/// A line of a report CSV (quoted fields may hold commas).
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut field, mut quoted, mut chars) = (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (_, c) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// `facevault import` of every devfaces photo (REJECT for photos with several faces), with the
/// first photo of ten people also under a second external id: every outcome appears, the
/// copies are reported as duplicates across users, and a second run replays everything it
/// imported and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devfaces_import_through_the_cli() {
    let dir = devfaces();
    let server = TestServer::start_keyed().await;
    let work = tempfile::tempdir().expect("temp dir");
    let mut manifest = String::from("external_id,image,comment\n");
    let mut aliases = BTreeMap::new();
    for row in rows(dir.join("labels.csv")) {
        let path = dir.join("images").join(&row[0]);
        manifest.push_str(&format!("{},{},devfaces\n", row[1], path.display()));
        if aliases.len() < 10 && !aliases.contains_key(&row[1]) {
            aliases.insert(row[1].clone(), path);
        }
    }
    for (identity, path) in &aliases {
        manifest.push_str(&format!("alias-{identity},{},a second account\n", path.display()));
    }
    let manifest_path = work.path().join("manifest.csv");
    std::fs::write(&manifest_path, manifest).expect("manifest");
    let report_path = work.path().join("report.csv");
    let run = |server_url: String| {
        let (manifest_path, report_path) = (manifest_path.clone(), report_path.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_facevault"))
                .args(["import", manifest_path.to_str().expect("path"), "--server", &server_url])
                .args(["--api-key", ADMIN_A.expect("key"), "--multiple-faces-policy", "reject"])
                .args(["--report", report_path.to_str().expect("path")])
                .output()
                .expect("facevault import")
        })
    };
    let first = run(server.url()).await.expect("join");
    println!("{}", String::from_utf8_lossy(&first.stdout));
    assert_eq!(first.status.code(), Some(1), "some rows fail: {}", String::from_utf8_lossy(&first.stderr));
    let report = || -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(&report_path).expect("report");
        text.lines().skip(1).map(csv_fields).collect()
    };
    let rows = report();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for row in &rows {
        let key = if row[3] == "FAILED" { format!("FAILED {}", row[6]) } else { row[3].clone() };
        *outcomes.entry(key).or_default() += 1;
    }
    println!("outcomes: {outcomes:?}");
    let count = |key: &str| outcomes.get(key).copied().unwrap_or(0);
    assert_eq!(rows.len(), 333 + aliases.len());
    assert!(count("CREATED") >= 90, "{outcomes:?}");
    assert!(count("ADDED") > 100, "{outcomes:?}");
    assert!(count("FAILED MULTIPLE_FACES_DETECTED") > 0, "{outcomes:?}");
    assert!(count("FAILED FACE_LIMIT_REACHED") > 0, "{outcomes:?}");
    // The aliases (or, where an alias came first, the originals) name the other account.
    let reported: usize = rows
        .iter()
        .filter(|r| r[1].starts_with("alias-") || aliases.contains_key(&r[1]))
        .filter(|r| r[8].parse::<usize>().unwrap_or(0) > 0)
        .count();
    assert!(reported >= aliases.len(), "{reported} rows report a duplicate across users");

    // Again: what was imported is replayed, nothing is written.
    let faces_before = server.app().store().expect("store").count_faces().expect("count");
    let second = run(server.url()).await.expect("join");
    assert_eq!(second.status.code(), Some(1));
    let again = report();
    let imported = count("CREATED") + count("ADDED");
    assert_eq!(again.iter().filter(|r| r[3] == "REPLAYED").count(), imported);
    assert_eq!(server.app().store().expect("store").count_faces().expect("count"), faces_before);
    assert_eq!(faces_before as usize, imported);
}
