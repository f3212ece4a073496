//! `facevault verify --data-dir DIR` on a real server's store: whole after a run, a problem
//! found (exit 1) when an image file is lost, refused (exit 2) while the server runs.

use std::process::Command;
use std::time::Duration;

use crate::common::{ADMIN_A, ChildServer, faces_client, fixture_bytes, users_client};
use crate::enroll::upload;
use crate::users::create;

fn verify(data_dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_facevault"))
        .args(["verify", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run facevault verify");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().expect("exit code"), text)
}

#[tokio::test]
async fn verify_reports_a_whole_store_a_lost_file_and_a_running_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ChildServer::spawn(dir.path(), &[]).await;
    let mut users = users_client(server.channel().await, ADMIN_A);
    let mut faces = faces_client(server.channel().await, ADMIN_A, None);
    create(&mut users, "verified").await;
    upload(&mut faces, "verified", fixture_bytes("yaoming.jpg")).await.expect("upload");
    let data = dir.path().join("db");

    let (code, text) = verify(&data);
    assert_eq!(code, 2, "a running server's store is refused: {text}");
    assert!(text.contains("stop the server first"), "{text}");

    assert!(server.terminate(Duration::from_secs(30)).await.success());
    let (code, text) = verify(&data);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("1 users, 1 faces, 1 indexed") && text.contains("OK"), "{text}");

    // An image file no face names (what a crash between a file and its transaction leaves):
    // reported, not swept.
    let shard = data.join("v1/faces/ab");
    std::fs::write(shard.join("616c7068610000000000000000ab.orig"), b"orphan").expect("orphan file");
    let (code, text) = verify(&data);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("PROBLEM: images: orphan face"), "{text}");
    std::fs::remove_file(shard.join("616c7068610000000000000000ab.orig")).expect("remove the orphan");

    // Lose the face's original: the report names it and the exit code says so.
    let original = walk(&data.join("v1/faces")).into_iter().find(|p| p.extension().is_some_and(|e| e == "orig"));
    std::fs::remove_file(original.expect("an original image file")).expect("remove");
    let (code, text) = verify(&data);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("PROBLEM: images: face") && text.contains("has none"), "{text}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}
