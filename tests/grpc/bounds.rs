//! No caller can grow the server's memory or hold its capacity without bound: credentials and
//! scopes are checked before a body is read, every per-caller table and transport resource has
//! a cap, and a crowd photo costs at most `--max-faces-per-image` faces of work.

use std::time::{Duration, Instant};

use facevault::grpc::pb::{DetectFacesRequest, UpdateFaceRequest, UploadFaceRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{ADMIN_A, ADMIN_B, TestServer, faces_client, fixture_bytes, key_entry, reason};
use crate::users::by_external;

const NO_SCOPES: Option<&str> = Some("secret-no-scopes");

/// A keyed server that also knows a key of tenant alpha with no scopes at all.
async fn server_with_scopeless_key(adjust: impl FnOnce(&mut facevault::Config)) -> TestServer {
    let path = std::env::temp_dir().join(format!("facevault-bounds-keys-{}.json", std::process::id()));
    let mut keys = crate::common::keys_json();
    keys["keys"].as_array_mut().expect("keys").push(key_entry("no-scopes", "alpha", &[], "secret-no-scopes"));
    std::fs::write(&path, keys.to_string()).expect("keys file");
    TestServer::start_keyed_with(|c| {
        c.keys_file = Some(path);
        adjust(c);
    })
    .await
}

/// More than the server's message limit: decoding it would fail on size, so a refusal that
/// names the credential proves the body was never decoded.
fn oversized() -> Vec<u8> {
    vec![0xAB; 5 << 20]
}

#[tokio::test]
async fn credentials_and_scopes_are_checked_before_the_body_is_decoded() {
    let server = server_with_scopeless_key(|_| {}).await;
    let mut scopeless = faces_client(server.channel().await, NO_SCOPES, None).max_encoding_message_size(64 << 20);
    let request = UploadFaceRequest { user: by_external("x"), image: oversized().into(), ..Default::default() };
    let err = scopeless.upload_face(request).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::PermissionDenied, "SCOPE_MISSING"), "{err:?}");

    let unknown_token = format!("rt_{}", "ab".repeat(32));
    let mut token =
        faces_client(server.channel().await, None, Some(&unknown_token)).max_encoding_message_size(64 << 20);
    let request = UpdateFaceRequest { user: by_external("x"), image: oversized().into(), ..Default::default() };
    let err = token.update_face(request).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::Unauthenticated, "REENROLLMENT_TOKEN_INVALID"), "{err:?}");
    let request = DetectFacesRequest { image: oversized().into(), ..Default::default() };
    let err = token.detect_faces(request).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::Unauthenticated, "REENROLLMENT_TOKEN_INVALID"), "{err:?}");
    assert!(err.message().contains("re-enrollment token"), "{}", err.message());

    // A key with the scope still gets the size refusal: the limit itself is unchanged.
    let mut admin = faces_client(server.channel().await, ADMIN_A, None).max_encoding_message_size(64 << 20);
    let err =
        admin.detect_faces(DetectFacesRequest { image: oversized().into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
}

#[tokio::test]
async fn one_key_cannot_hold_more_than_its_share_of_calls() {
    let server = TestServer::start_keyed_with(|c| c.max_concurrent_per_key = 1).await;
    let image = fixture_bytes("players.jpg");
    let mut calls = Vec::new();
    for _ in 0..4 {
        let mut client = server.faces_as(ADMIN_A).await;
        let image = image.clone();
        calls.push(tokio::spawn(async move {
            client.detect_faces(DetectFacesRequest { image: image.into(), ..Default::default() }).await
        }));
    }
    let mut other = server.faces_as(ADMIN_B).await;
    let b = other.detect_faces(DetectFacesRequest { image: image.clone().into(), ..Default::default() }).await;
    assert!(b.is_ok(), "another key keeps its own share: {b:?}");
    let (mut served, mut limited) = (0, 0);
    for call in calls {
        match call.await.expect("task") {
            Ok(_) => served += 1,
            Err(err) => {
                assert_eq!((err.code(), reason(&err).as_str()), (Code::ResourceExhausted, "RATE_LIMITED"), "{err:?}");
                let details = err.get_error_details();
                let info = details.error_info().expect("ErrorInfo");
                assert_eq!(info.metadata.get("max_concurrent_per_key").map(String::as_str), Some("1"));
                assert!(err.get_error_details().retry_info().is_some(), "RetryInfo attached");
                limited += 1;
            }
        }
    }
    assert!(served >= 1 && limited >= 1, "served {served}, limited {limited}");
}

#[tokio::test]
async fn a_crowd_photo_costs_at_most_the_face_cap() {
    let server = TestServer::start_keyed_with(|c| c.max_faces_per_image = 5).await;
    let mut client = server.faces_as(ADMIN_A).await;
    let request = DetectFacesRequest {
        image: fixture_bytes("players.jpg").into(),
        include_embeddings: true,
        ..Default::default()
    };
    let reply = client.detect_faces(request).await.expect("detect").into_inner();
    assert_eq!((reply.faces.len(), reply.omitted_faces), (5, 17), "players.jpg holds 22 faces");
    let area = |f: &facevault::grpc::pb::DetectedFace| {
        let b = crate::common::bbox(f);
        (b[2] - b[0]) * (b[3] - b[1])
    };
    let areas: Vec<f32> = reply.faces.iter().map(area).collect();
    assert!(areas.windows(2).all(|w| w[0] >= w[1]), "largest first: {areas:?}");
    assert!(reply.faces.iter().all(|f| f.embedding.len() == 512), "each kept face is embedded");
    // Below the cap nothing is omitted.
    let request = DetectFacesRequest { image: fixture_bytes("t1.jpg").into(), ..Default::default() };
    let reply = client.detect_faces(request).await.expect("detect").into_inner();
    assert_eq!((reply.faces.len(), reply.omitted_faces), (5, 1), "t1.jpg holds 6 faces");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let server = TestServer::start_keyed_with(|c| c.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(server.addr).await.expect("connect"));
    }
    let endpoint = server.endpoint().connect_timeout(Duration::from_secs(5));
    let check = || async {
        let channel = endpoint.connect_lazy();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await
    };
    let blocked = tokio::time::timeout(Duration::from_millis(800), check()).await;
    assert!(blocked.is_err(), "a fourth connection was served while three were open: {blocked:?}");
    drop(held.pop());
    let started = Instant::now();
    let served = tokio::time::timeout(Duration::from_secs(5), check()).await.expect("served once a slot is free");
    assert!(served.is_ok(), "{served:?}");
    println!("fourth connection served {:?} after a slot freed", started.elapsed());
}

#[tokio::test]
async fn a_peer_that_never_answers_keepalive_pings_is_dropped() {
    let server = TestServer::start_keyed_with(|c| {
        c.http2_keepalive_interval = 1;
        c.http2_keepalive_timeout = 1;
    })
    .await;
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    // The HTTP/2 preface and an empty SETTINGS frame, then silence: no SETTINGS ack, no PING ack.
    socket.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("preface");
    socket.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.expect("settings");
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a silent peer was still connected after 15 s");
    println!("silent peer dropped after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_call_that_runs_past_the_request_timeout_is_ended() {
    let server = TestServer::start_keyed_with(|c| {
        c.request_timeout = 1;
        c.workers = 1;
        c.queue_capacity = 16;
    })
    .await;
    let image = fixture_bytes("players.jpg");
    let mut calls = Vec::new();
    for _ in 0..6 {
        let mut client = server.faces_as(ADMIN_A).await;
        let image = image.clone();
        calls.push(tokio::spawn(async move {
            let request =
                DetectFacesRequest { image: image.into(), include_embeddings: true, include_thumbnails: true };
            let started = Instant::now();
            (client.detect_faces(request).await, started.elapsed())
        }));
    }
    let mut expired = 0;
    for call in calls {
        let (result, took) = call.await.expect("task");
        assert!(took < Duration::from_millis(2500), "a call took {took:?}");
        if let Err(err) = result {
            assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
            assert!(err.message().contains("request timeout"), "{}", err.message());
            expired += 1;
        }
    }
    assert!(expired >= 1, "six crowd photos on one worker all finished within 1 s");
}

#[tokio::test]
async fn a_connection_that_never_speaks_gives_its_slot_back() {
    let server = TestServer::start_keyed_with(|c| {
        c.handshake_timeout = 1;
        c.max_connections = 1;
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "a silent connection stayed open: {closed:?}");
    println!("silent connection closed after {:?}", started.elapsed());
    // Its slot (the only one) serves the next client.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health");
}
