//! The grpcurl workflow of the README, with the real grpcurl 1.8.6 binary that setup fetches.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::{TestServer, fixture_bytes, root};

/// Runs grpcurl with `args` and optional stdin; returns (success, stdout, stderr).
async fn grpcurl(args: Vec<String>, stdin: Option<String>) -> (bool, String, String) {
    let bin = root().join("third_party/grpcurl/grpcurl");
    assert!(bin.is_file(), "{} is missing: run `bash scripts/setup.sh`", bin.display());
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run grpcurl");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("grpcurl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_detects() {
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let args = |rest: &[&str]| -> Vec<String> {
        let mut v = vec!["-plaintext".to_owned()];
        v.extend(rest.iter().map(|s| (*s).to_owned()));
        v
    };

    let (ok, out, err) = grpcurl(args(&[&addr, "list"]), None).await;
    assert!(ok, "list failed: {err}");
    for service in ["facevault.v1.FaceService", "facevault.v1.UserService", "grpc.health.v1.Health"] {
        assert!(out.lines().any(|l| l.trim() == service), "{service} not in:\n{out}");
    }

    let (ok, out, err) = grpcurl(args(&[&addr, "describe", "facevault.v1.FaceService.DetectFaces"]), None).await;
    assert!(ok, "describe failed: {err}");
    assert!(
        out.contains(
            "rpc DetectFaces ( .facevault.v1.DetectFacesRequest ) returns ( .facevault.v1.DetectFacesResponse )"
        ),
        "{out}"
    );
    let (ok, out, _) = grpcurl(args(&[&addr, "describe", "facevault.v1.DetectedFace"]), None).await;
    assert!(ok && out.contains("repeated float embedding"), "{out}");

    // As the README shows: the photo as base64 JSON on stdin.
    let body = format!(r#"{{"image": "{}", "include_embeddings": true}}"#, base64(&fixture_bytes("yaoming.jpg")));
    let (ok, out, err) = grpcurl(args(&["-d", "@", &addr, "facevault.v1.FaceService/DetectFaces"]), Some(body)).await;
    assert!(ok, "DetectFaces failed: {err}");
    let reply: serde_json::Value = serde_json::from_str(&out).expect("grpcurl prints JSON");
    let faces = reply["faces"].as_array().expect("faces");
    assert_eq!(faces.len(), 1, "{out}");
    assert_eq!(faces[0]["embedding"].as_array().map(Vec::len), Some(512));
    assert_eq!(faces[0]["landmarks"].as_array().map(Vec::len), Some(5));
    assert_eq!(reply["imageWidth"], 233);

    // An error shows its code, message and the ErrorInfo reason.
    let (ok, _, err) =
        grpcurl(args(&["-d", r#"{"image": ""}"#, &addr, "facevault.v1.FaceService/DetectFaces"]), None).await;
    assert!(!ok);
    assert!(err.contains("Code: InvalidArgument"), "{err}");
    assert!(err.contains("IMAGE_EMPTY"), "reason shown in the details: {err}");
}

#[test]
fn base64_matches_the_standard_alphabet() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
}
