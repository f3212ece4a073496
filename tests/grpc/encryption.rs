//! Encryption at rest through the real server: originals, thumbnails and embeddings are sealed in
//! sled (no plaintext window in the raw trees) yet read back whole over gRPC, searched, and
//! rebuilt after a restart; the store refuses to start without its key, with another key or
//! with a malformed key file, naming the problem and never the key.

use std::path::Path;
use std::time::{Duration, Instant};

use facevault::Config;
use facevault::domain::{FaceId, Tenant};
use facevault::grpc::pb::{DetectFacesRequest, FaceImage, GetFaceImageRequest, ImageKind, SearchFacesRequest};
use tokio::net::TcpListener;

use crate::common::{ADMIN_A, Faces, TestServer, cosine, fixture_bytes, people, root, yao_in_players};
use crate::enroll::upload;
use crate::users::create;

/// Writes a fresh random key as 64 hex characters and a newline; returns the hex.
fn write_key(path: &Path) -> String {
    let bytes = facevault::storage::random_bytes::<32>().expect("random key");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, format!("{hex}\n")).expect("write key file");
    hex
}

/// Three 16-byte windows from the middle of `bytes`.
fn windows(bytes: &[u8]) -> Vec<Vec<u8>> {
    assert!(bytes.len() >= 64, "too short to take windows from");
    [bytes.len() / 3, bytes.len() / 2, 2 * bytes.len() / 3].iter().map(|&s| bytes[s..s + 16].to_vec()).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn f32_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

async fn image(faces: &mut Faces, face_id: &str, kind: ImageKind) -> FaceImage {
    let request = GetFaceImageRequest { face_id: face_id.to_owned(), kind: kind as i32 };
    faces.get_face_image(request).await.expect("GetFaceImage").into_inner()
}

/// External id of the best match for another photo of Yao Ming.
async fn best_match(faces: &mut Faces) -> String {
    let request =
        SearchFacesRequest { image: yao_in_players().into(), top_k: 0, min_similarity: 0.0, ..Default::default() };
    let reply = faces.search_faces(request).await.expect("SearchFaces").into_inner();
    reply.matches.first().map(|m| m.external_id.clone()).unwrap_or_default()
}

/// Runs `facevault::serve` on `config`, which must fail before it serves; returns the error.
async fn start_error(config: Config) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let serving = facevault::serve(config, listener, std::future::pending());
    match tokio::time::timeout(Duration::from_secs(60), serving).await {
        Ok(Err(err)) => err.to_string(),
        Ok(Ok(())) => panic!("the server stopped without an error"),
        Err(_) => panic!("the server started on an encrypted store it should have refused"),
    }
}

/// Runs the facevault binary, which must exit with an error before serving; returns its output.
fn binary_error(data_dir: &Path, postgres_url: Option<&str>, key_file: &Path) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_facevault"))
        .current_dir(root())
        .args(["--insecure-dev-mode", "--listen", "127.0.0.1:0", "--workers", "1"])
        .args(postgres_url.map(|url| ["--postgres-url", url]).into_iter().flatten())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--encryption-key-file")
        .arg(key_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the facevault binary");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the binary kept running on a store it should have refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("output");
    assert!(!status.success(), "the binary exited successfully");
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// No 8-character window of `key_hex` appears in `text`.
fn assert_no_key(text: &str, key_hex: &str) {
    for start in (0..=key_hex.len() - 8).step_by(4) {
        assert!(!text.contains(&key_hex[start..start + 8]), "the message shows the key: {text}");
    }
}

#[tokio::test]
async fn images_thumbnails_and_embeddings_are_sealed_at_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data_dir, key_file) = (dir.path().join("db"), dir.path().join("store.key"));
    let key_hex = write_key(&key_file);
    let (db, key) = (data_dir.clone(), key_file.clone());
    let server = TestServer::start_keyed_with(move |config| {
        config.data_dir = db;
        config.encryption_key_file = Some(key);
    })
    .await;
    assert!(server.app().store().expect("store").is_encrypted());
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    create(&mut users, "yao").await;
    create(&mut users, "p0").await;
    let original = fixture_bytes("yaoming.jpg");
    let reply = upload(&mut faces, "yao", original.clone()).await.expect("upload yao");
    upload(&mut faces, "p0", people()[0].clone()).await.expect("upload p0");
    let face_id = reply.face.expect("face").face_id;
    let thumbnail = reply.thumbnail.to_vec();

    let detect =
        DetectFacesRequest { image: original.clone().into(), include_embeddings: true, include_thumbnails: false };
    let detected = faces.detect_faces(detect).await.expect("DetectFaces").into_inner();
    let embedding = detected.faces[0].embedding.clone();
    let tenant = Tenant::new("alpha").expect("tenant");
    let id = FaceId::parse(&face_id).expect("face id");
    let stored = server
        .app()
        .store()
        .expect("store")
        .face_embedding(&tenant, id, "w600k_mbf")
        .expect("read")
        .expect("stored embedding");
    assert!(cosine(stored.as_slice(), &embedding) > 0.99, "the stored embedding is the detected one");

    let got = image(&mut faces, &face_id, ImageKind::Original).await;
    assert_eq!(got.data.as_ref(), original.as_slice(), "the original comes back byte for byte");
    assert_eq!(image(&mut faces, &face_id, ImageKind::Thumbnail).await.data.as_ref(), thumbnail.as_slice());

    // The raw trees hold sealed values only: no window of the image, the thumbnail or either
    // form of the embedding.
    let mut needles = windows(&original);
    needles.extend(windows(&thumbnail));
    needles.extend(windows(&f32_le(&embedding)));
    needles.extend(windows(&f32_le(stored.as_slice())));
    let store = server.app().store().expect("store");
    for tree in ["images", "thumbnails", "embeddings"] {
        let entries = store.raw_entries(tree).expect("scan");
        assert_eq!(entries.len(), 2, "{tree}");
        for (_, value) in &entries {
            assert_eq!(value[0], 0x01, "{tree}: a sealed value starts with its format byte");
            assert!(needles.iter().all(|n| !contains(value, n)), "{tree} holds plaintext");
        }
    }
    let images = store.raw_entries("images").expect("scan");
    assert!(images.iter().any(|(_, v)| v.len() == 1 + 12 + original.len() + 16), "nonce and tag around the image");
    // User records and face metadata stay plain (README: encryption at rest).
    let users_raw = store.raw_entries("users").expect("scan");
    assert!(users_raw.iter().any(|(_, v)| contains(v, b"Test Person")), "user records are not encrypted");
    assert_eq!(best_match(&mut faces).await, "yao");
    let integrity = store.verify(5).expect("verify");
    assert!(integrity.problems.is_empty() && integrity.faces == 2, "{integrity:?}");

    // After a restart the index is rebuilt from the sealed embeddings and everything reads.
    drop(store); // sled lets one handle open the store
    let server = server.restart().await;
    let mut faces = server.faces_as(ADMIN_A).await;
    assert_eq!(image(&mut faces, &face_id, ImageKind::Original).await.data.as_ref(), original.as_slice());
    assert_eq!(image(&mut faces, &face_id, ImageKind::Thumbnail).await.data.as_ref(), thumbnail.as_slice());
    assert_eq!(best_match(&mut faces).await, "yao");
    assert_eq!(server.app().index().sizes().iter().map(|(_, n)| n).sum::<usize>(), 2);
    // The store stays (on PostgreSQL: its database) for the starts below.
    let (kept_config, _kept) = server.stop_keeping_data().await;

    // Without the key, with another key, or with a malformed key file, it does not start.
    let mut config = Config::for_root(root());
    config.data_dir = data_dir.clone();
    config.postgres_url = kept_config.postgres_url.clone();
    let url = kept_config.postgres_url.as_deref();
    config.workers = 1;
    let without = start_error(config.clone()).await;
    assert!(without.contains("is encrypted") && without.contains("--encryption-key-file"), "{without}");
    let other_file = dir.path().join("other.key");
    let other_hex = write_key(&other_file);
    config.encryption_key_file = Some(other_file.clone());
    let other = start_error(config).await;
    assert!(other.contains("different key"), "{other}");
    for message in [&without, &other] {
        assert_no_key(message, &key_hex);
        assert_no_key(message, &other_hex);
    }

    // The binary says so and exits non-zero; its output never shows a key.
    let output = binary_error(&data_dir, url, &other_file);
    assert!(output.contains("different key"), "{output}");
    assert_no_key(&output, &key_hex);
    assert_no_key(&output, &other_hex);
    let malformed = dir.path().join("short.key");
    std::fs::write(&malformed, &key_hex[..62]).expect("write");
    let output = binary_error(&data_dir, url, &malformed);
    assert!(output.contains("64 hex characters"), "{output}");
    assert_no_key(&output, &key_hex);
}
