//! Abuse at the protocol level: deadlines that expire mid-request leave nothing half-written,
//! many concurrent streams on one connection all get an answer, and a client that opens a
//! connection and never speaks cannot hold up a graceful stop beyond the drain timeout.

use std::io::Write;
use std::time::{Duration, Instant};

use facevault::grpc::pb::{GetUserRequest, ListFacesRequest, UploadFaceRequest};
use tonic::Code;

use crate::common::{ADMIN_A, ChildServer, TestServer, fixture_bytes, reason};
use crate::enroll::assert_index_equals_store;
use crate::users::{by_external, create};

#[tokio::test]
async fn deadlines_expiring_mid_upload_leave_whole_faces_or_none() {
    let server = TestServer::start_keyed().await;
    let mut users = server.users_as(ADMIN_A).await;
    create(&mut users, "deadline").await;
    let mut faces = server.faces_as(ADMIN_A).await;
    let image = fixture_bytes("yaoming.jpg");
    let mut expired = 0;
    // From far too short for any work to a deadline inside the inference or the store write.
    for ms in [1u64, 5, 10, 20, 30, 40, 60, 80, 120] {
        let mut request = tonic::Request::new(UploadFaceRequest {
            user: by_external("deadline"),
            image: image.clone().into(),
            ..Default::default()
        });
        request.set_timeout(Duration::from_millis(ms));
        match faces.upload_face(request).await {
            Ok(_) => {}
            Err(err) if err.code() == Code::DeadlineExceeded || err.code() == Code::Cancelled => expired += 1,
            Err(err) if reason(&err) == "FACE_LIMIT_REACHED" => {}
            Err(err) => panic!("{ms} ms: {err:?}"),
        }
    }
    assert!(expired >= 3, "the shortest deadlines expire ({expired} did)");
    tokio::time::sleep(Duration::from_millis(500)).await; // abandoned work settles
    let listed = faces.list_faces(ListFacesRequest { user: by_external("deadline") }).await.expect("list");
    let integrity = server.app().store().expect("store").verify(5).expect("verify");
    assert!(integrity.problems.is_empty(), "{:?}", integrity.problems);
    assert_eq!(integrity.faces, listed.into_inner().faces.len(), "every stored face is whole and listed");
    assert_index_equals_store(&server, "alpha");
}

#[tokio::test]
async fn many_concurrent_streams_on_one_connection_are_all_answered() {
    // The transport is under test here, not the per-key share (bounds.rs covers that): one key
    // may have all 500 calls in flight. Beyond --max-concurrent-streams they wait for a stream.
    let server = TestServer::start_keyed_with(|c| c.max_concurrent_per_key = 1000).await;
    let channel = server.channel().await;
    let mut calls = Vec::new();
    for i in 0..500 {
        let mut users = crate::common::users_client(channel.clone(), ADMIN_A);
        calls.push(tokio::spawn(async move {
            users.get_user(GetUserRequest { user: by_external(&format!("nobody-{i}")) }).await
        }));
    }
    for call in calls {
        let err = call.await.expect("task").unwrap_err();
        assert_eq!(reason(&err), "USER_NOT_FOUND", "{err:?}");
    }
    let mut users = server.users_as(ADMIN_A).await;
    create(&mut users, "after-the-streams").await;
}

#[tokio::test]
async fn a_silent_connection_cannot_hold_up_a_graceful_stop() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ChildServer::spawn(dir.path(), &["--drain-timeout", "2"]).await;
    // Half an HTTP/2 preface, then silence; and a second connection that sends nothing at all.
    let mut half = std::net::TcpStream::connect(server.addr).expect("connect");
    half.write_all(b"PRI * HTTP/2.0\r\n").expect("write");
    let _silent = std::net::TcpStream::connect(server.addr).expect("connect");
    let start = Instant::now();
    let status = server.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    assert!(start.elapsed() < Duration::from_secs(10), "stopped after {:?}", start.elapsed());
}
