//! Index snapshots through the real server: the log follower takes them, a restart loads the
//! newest and applies the change log after it (after a SIGKILL, the entries written since),
//! the index equals the store and search finds every face; in an encrypted store the snapshot
//! holds no embedding in plain text; `facevault verify` checks snapshot + log against the records.

use std::path::Path;
use std::time::{Duration, Instant};

use facevault::app::snapshot::{self, IndexOrigin};
use facevault::domain::Tenant;
use facevault::grpc::pb::{DeleteFaceRequest, SearchFacesRequest};

use crate::common::{ADMIN_A, ChildServer, Faces, TestServer, faces_client, people, users_client};
use crate::enroll::{assert_index_equals_store, upload};
use crate::users::create;

/// The users found with similarity >= 0.6 (the same photo: about 1).
async fn found(faces: &mut Faces, image: Vec<u8>) -> Vec<String> {
    let request = SearchFacesRequest { image: image.into(), top_k: 10, min_similarity: 0.6, ..Default::default() };
    let reply = faces.search_faces(request).await.expect("SearchFaces").into_inner();
    reply.matches.into_iter().map(|m| m.external_id).collect()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_restart_loads_the_sealed_snapshot_and_the_index_equals_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data_dir, key_file) = (dir.path().join("db"), dir.path().join("store.key"));
    let hex: String =
        facevault::storage::random_bytes::<32>().expect("key").iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&key_file, hex).expect("key file");
    let db = data_dir.clone();
    let server = TestServer::start_keyed_with(move |config| {
        config.data_dir = db;
        config.encryption_key_file = Some(key_file);
        config.index_snapshot_every = 3;
    })
    .await;
    let origin = server.app().snapshots().origin().cloned();
    assert!(matches!(origin, Some(IndexOrigin::Rebuilt { .. })), "a new store has no snapshot: {origin:?}");
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let people = people();
    for (i, person) in people.iter().take(4).enumerate() {
        create(&mut users, &format!("p{i}")).await;
        upload(&mut faces, &format!("p{i}"), person.clone()).await.expect("upload");
    }
    // The follower takes a snapshot every 3 applied entries and compacts the log up to it.
    let store = server.app().store().expect("the store is open");
    wait_until("a snapshot", || store.log_bounds().expect("bounds").compacted >= 3).await;
    let path = snapshot::path(&data_dir);
    assert!(path.is_file());

    // No window of any stored embedding (as the index holds it, f16) is in the file.
    let tenant = Tenant::new("alpha").expect("tenant");
    let sealed = std::fs::read(&path).expect("snapshot");
    for (face, _) in server.app().index().entries(&tenant) {
        let embedding = store.face_embedding(&tenant, face, "w600k_mbf").expect("read").expect("stored");
        let bits: Vec<u8> = facevault::search::similarity::to_f16_bits(embedding.as_slice())
            .iter()
            .flat_map(|b| b.to_le_bytes())
            .collect();
        assert!(bits.chunks(32).all(|w| !sealed.windows(32).any(|s| s == w)), "the snapshot holds a plain row");
    }

    // A clean stop takes a snapshot of everything applied; the restart loads it.
    let head = store.log_bounds().expect("bounds").head;
    drop(store);
    let server = server.restart().await;
    let origin = server.app().snapshots().origin().cloned();
    assert_eq!(origin, Some(IndexOrigin::Snapshot { seq: head, replayed: 0 }));
    assert_index_equals_store(&server, "alpha");
    let mut faces = server.faces_as(ADMIN_A).await;
    for (i, person) in people.iter().take(4).enumerate() {
        assert_eq!(found(&mut faces, person.clone()).await, vec![format!("p{i}")]);
    }
    server.stop().await;
}

/// The fields of the JSON log lines of `dir/server.log` whose message is `message`.
fn log_lines(dir: &Path, message: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|line| line["fields"].clone())
        .filter(|fields| fields["message"] == message)
        .collect()
}

#[tokio::test]
async fn after_a_kill_the_snapshot_and_the_log_tail_give_the_index_and_verify_agrees() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ChildServer::spawn(dir.path(), &["--index-snapshot-every", "4"]).await;
    let (mut users, mut faces) =
        (users_client(server.channel().await, ADMIN_A), faces_client(server.channel().await, ADMIN_A, None));
    let people = people();
    let mut ids = Vec::new();
    for (i, person) in people.iter().take(4).enumerate() {
        create(&mut users, &format!("p{i}")).await;
        let reply = upload(&mut faces, &format!("p{i}"), person.clone()).await.expect("upload");
        ids.push(reply.face.expect("face").face_id);
    }
    let written = |seq: u64| log_lines(dir.path(), "index snapshot written").iter().any(|f| f["seq"] == seq);
    wait_until("the snapshot of entry 4", || written(4)).await;
    // Two entries after the snapshot (due again at 8): a face added, a face deleted. Then SIGKILL:
    // no snapshot at stop.
    create(&mut users, "p4").await;
    upload(&mut faces, "p4", people[4].clone()).await.expect("upload");
    faces.delete_face(DeleteFaceRequest { face_id: ids[0].clone(), ..Default::default() }).await.expect("DeleteFace");
    server.kill();

    let mut server = ChildServer::spawn(dir.path(), &["--index-snapshot-every", "4"]).await;
    let loaded = log_lines(dir.path(), "search index loaded from its snapshot");
    assert_eq!(loaded.len(), 1, "loaded from the snapshot, not rebuilt");
    assert_eq!(
        (&loaded[0]["snapshot_seq"], &loaded[0]["replayed"], &loaded[0]["faces"]),
        (&4.into(), &2.into(), &4.into())
    );
    let mut faces = faces_client(server.channel().await, ADMIN_A, None);
    for (i, person) in people.iter().enumerate().take(5).skip(1) {
        assert_eq!(found(&mut faces, person.clone()).await, vec![format!("p{i}")], "p{i}");
    }
    assert!(found(&mut faces, people[0].clone()).await.is_empty(), "the deleted face is gone");
    assert!(server.terminate(Duration::from_secs(30)).await.success());

    // A clean stop took a snapshot of entry 6; verify loads it, replays nothing, and compares.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_facevault"))
        .args(["verify", "--data-dir"])
        .arg(dir.path().join("db"))
        .output()
        .expect("run facevault verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("index snapshot at 6, replayed and compared with the store"), "{text}");
}
