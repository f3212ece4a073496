//! Several facevault processes (real binaries) on one PostgreSQL database: a write on one node
//! is searchable on the others; the invariants hold when racing calls land on different nodes;
//! a node killed with SIGKILL loses no acknowledged write. Each test has its own database.
//! These run once per `make test` (in the sled pass: they are about PostgreSQL whatever the
//! backend of the rest of the suite).

use std::sync::Arc;
use std::time::{Duration, Instant};

use facevault::grpc::pb::list_service_client::ListServiceClient;
use facevault::grpc::pb::{
    AddListEntryRequest, CreateFaceListRequest, CreateUserRequest, DuplicatePolicy, FaceList, GetUserRequest,
    ListFacesRequest, ListKind, SearchFacesRequest, UploadFaceRequest, User, add_list_entry_request,
};

use crate::common::database::TestDatabase;
use crate::common::{
    ADMIN_A, ChildServer, Credentials, Faces, Users, faces_client, fixture_bytes, people, reason, users_client,
};
use crate::users::by_external;

/// `n` nodes on the database `url`, each with its own directory (keys, log).
async fn nodes(dir: &std::path::Path, url: &str, n: usize) -> Vec<ChildServer> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(ChildServer::spawn(&dir.join(format!("node{i}")), &["--postgres-url", url]).await);
    }
    out
}

async fn clients(node: &ChildServer) -> (Faces, Users) {
    let channel = node.channel().await;
    (faces_client(channel.clone(), ADMIN_A, None), users_client(channel, ADMIN_A))
}

async fn create(users: &mut Users, external_id: &str) -> Result<String, tonic::Status> {
    let user = User { external_id: external_id.into(), ..User::default() };
    users
        .create_user(CreateUserRequest { user: Some(user), ..Default::default() })
        .await
        .map(|r| r.into_inner().user_id)
}

fn upload(user: &str, image: &[u8], policy: DuplicatePolicy) -> UploadFaceRequest {
    UploadFaceRequest {
        user: by_external(user),
        image: image.to_vec().into(),
        duplicate_policy: policy as i32,
        ..UploadFaceRequest::default()
    }
}

/// The external ids SearchFaces on `faces` returns for `image` as a match.
async fn found(faces: &mut Faces, image: &[u8]) -> Vec<String> {
    let request =
        SearchFacesRequest { image: image.to_vec().into(), top_k: 10, min_similarity: 0.0, ..Default::default() };
    let reply = faces.search_faces(request).await.expect("SearchFaces").into_inner();
    reply.matches.into_iter().map(|m| m.external_id).collect()
}

#[tokio::test]
async fn multinode_writes_are_searchable_everywhere_and_invariants_hold_across_nodes() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = nodes(dir.path(), db.url(), 3).await;
    let people = people();
    let (mut faces_a, mut users_a) = clients(&nodes[0]).await;
    let (mut faces_b, mut users_b) = clients(&nodes[1]).await;

    // Written on A: A sees it at once, B within its poll interval. The latencies are printed
    // (the README's numbers come from the load tool).
    let mut latencies = Vec::new();
    for (i, image) in people.iter().enumerate().take(6) {
        let name = format!("p{i}");
        create(&mut users_a, &name).await.expect("CreateUser on A");
        faces_a.upload_face(upload(&name, image, DuplicatePolicy::Report)).await.expect("UploadFace on A");
        let acked = Instant::now();
        assert_eq!(found(&mut faces_a, image).await.first(), Some(&name), "the writing node sees its write at once");
        loop {
            if found(&mut faces_b, image).await.first() == Some(&name) {
                latencies.push(acked.elapsed());
                break;
            }
            assert!(acked.elapsed() < Duration::from_secs(10), "B never saw A's write of {name}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    latencies.sort();
    println!("write on A to searchable on B: {latencies:?}");

    // 20 uploads for one user at once, spread over the three nodes: exactly 5 faces.
    create(&mut users_a, "busy").await.expect("CreateUser");
    let mut calls = Vec::new();
    for i in 0..20 {
        let node = &nodes[i % 3];
        let (mut faces, _) = clients(node).await;
        let image = people[6].clone();
        calls.push(tokio::spawn(async move {
            faces.upload_face(upload("busy", &image, DuplicatePolicy::Report)).await.map(|_| ())
        }));
    }
    let mut ok = 0;
    for call in calls {
        match call.await.expect("join") {
            Ok(()) => ok += 1,
            Err(status) => assert_eq!(reason(&status), "FACE_LIMIT_REACHED", "{status:?}"),
        }
    }
    assert_eq!(ok, 5, "the face limit holds across nodes");
    let listed = faces_b.list_faces(ListFacesRequest { user: by_external("busy") }).await.expect("ListFaces");
    assert_eq!(listed.into_inner().faces.len(), 5);

    // One person uploaded to two new users on two nodes at once under REJECT: never both
    // (persons 7 and 8 are enrolled nowhere yet).
    for round in 0..2 {
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        create(&mut users_a, &x).await.expect("CreateUser");
        create(&mut users_b, &y).await.expect("CreateUser");
        let image = people[7 + round].clone();
        let (mut fa, mut fb) = (faces_a.clone(), faces_b.clone());
        let (ia, ib) = (image.clone(), image);
        let a = tokio::spawn(async move { fa.upload_face(upload(&x, &ia, DuplicatePolicy::Reject)).await });
        let b = tokio::spawn(async move { fb.upload_face(upload(&y, &ib, DuplicatePolicy::Reject)).await });
        let (a, b) = (a.await.expect("join"), b.await.expect("join"));
        assert!(a.is_err() || b.is_err(), "round {round}: both nodes enrolled the same person under REJECT");
        for refused in [&a, &b].into_iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(reason(refused), "DUPLICATE_FACE", "{refused:?}");
        }
    }

    // One external id created on two nodes at once: one user.
    let (mut ua, mut ub) = (users_a.clone(), users_b.clone());
    let a = tokio::spawn(async move { create(&mut ua, "same").await });
    let b = tokio::spawn(async move { create(&mut ub, "same").await });
    let (a, b) = (a.await.expect("join"), b.await.expect("join"));
    assert!(a.is_ok() != b.is_ok(), "exactly one CreateUser of an external id succeeds: {a:?} {b:?}");
    let loser = a.err().or(b.err()).expect("one failed");
    assert_eq!(reason(&loser), "EXTERNAL_ID_TAKEN");
    let user = users_b.get_user(GetUserRequest { user: by_external("same") }).await.expect("GetUser");
    assert_eq!(user.into_inner().external_id, "same");

    // A blocklist written on A refuses the person on B at once: B's enrollment brings its index
    // up to the log under the tenant's lock before it checks the lists.
    let mut lists_a = ListServiceClient::with_interceptor(nodes[0].channel().await, Credentials::key(ADMIN_A));
    let list = lists_a
        .create_face_list(CreateFaceListRequest {
            list: Some(FaceList { name: "blocked".into(), kind: ListKind::Block as i32, ..FaceList::default() }),
        })
        .await
        .expect("CreateFaceList on A")
        .into_inner();
    let yao = fixture_bytes("yaoming.jpg");
    lists_a
        .add_list_entry(AddListEntryRequest {
            list_id: list.list_id,
            source: Some(add_list_entry_request::Source::Image(yao.clone().into())),
            ..Default::default()
        })
        .await
        .expect("AddListEntry on A");
    create(&mut users_b, "z").await.expect("CreateUser on B");
    let refused = faces_b.upload_face(upload("z", &yao, DuplicatePolicy::Report)).await.unwrap_err();
    assert_eq!(reason(&refused), "FACE_IN_BLOCKLIST", "{refused:?}");
}

#[tokio::test]
async fn multinode_sigkill_of_one_node_loses_no_acknowledged_write() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = nodes(dir.path(), db.url(), 2).await;
    let people = Arc::new(people());
    let (_, mut users) = clients(&nodes[1]).await;
    for i in 0..people.len() {
        create(&mut users, &format!("k{i}")).await.expect("CreateUser");
    }
    // Every person uploaded, alternating between the nodes, until A is killed.
    let mut drivers = Vec::new();
    for (i, _) in people.iter().enumerate() {
        let (mut faces, _) = clients(&nodes[i % 2]).await;
        let people = people.clone();
        drivers.push(tokio::spawn(async move {
            let mut acked = 0;
            for _ in 0..5 {
                match faces.upload_face(upload(&format!("k{i}"), &people[i], DuplicatePolicy::Report)).await {
                    Ok(_) => acked += 1,
                    Err(_) => break, // the node is gone (or the call was in flight at the kill)
                }
            }
            (i, acked)
        }));
    }
    // Early enough that A's clients are mid-way (5 uploads each, with 9 clients on two cores).
    tokio::time::sleep(Duration::from_millis(800)).await;
    nodes[0].kill();
    let (mut faces_b, _) = clients(&nodes[1]).await;
    let mut cut_short = 0;
    for driver in drivers {
        let (i, acked) = driver.await.expect("join");
        if i % 2 == 0 && acked < 5 {
            cut_short += 1;
        }
        let listed = faces_b.list_faces(ListFacesRequest { user: by_external(&format!("k{i}")) }).await;
        let stored = listed.expect("ListFaces on B").into_inner().faces.len();
        // Each acknowledged upload is there; at most the one in flight at the kill more.
        assert!(stored == acked || stored == acked + 1, "k{i}: {acked} acknowledged, {stored} stored");
        if stored > 0 {
            // Searchable on B once its feed applied the write (within its poll interval).
            let deadline = Instant::now() + Duration::from_secs(10);
            while !found(&mut faces_b, &people[i]).await.contains(&format!("k{i}")) {
                assert!(Instant::now() < deadline, "k{i} is not searchable on B");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(cut_short > 0, "the kill came after A's uploads were done: it tested nothing");
}

/// The admin URL of the throwaway PostgreSQL server of scripts/test-postgres.sh (started, or
/// reused while it runs): a server this test may restart without disturbing the others.
fn throwaway_server() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let output = std::process::Command::new("bash")
            .arg(crate::common::root().join("scripts/test-postgres.sh"))
            .env("FACEVAULT_TEST_POSTGRES", "throwaway")
            .output()
            .expect("run scripts/test-postgres.sh");
        assert!(output.status.success(), "no throwaway PostgreSQL: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("utf-8").trim().to_owned()
    })
}

async fn serving(node: &ChildServer) -> bool {
    let Ok(channel) = tonic::transport::Channel::from_shared(node.url()).expect("url").connect().await else {
        return false;
    };
    let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
    let status = tonic_health::pb::health_client::HealthClient::new(channel).check(request).await;
    status
        .is_ok_and(|r| r.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
}

#[tokio::test]
async fn multinode_postgres_restart_during_load_loses_nothing_and_nodes_recover() {
    let db = TestDatabase::create_on(throwaway_server()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = nodes(dir.path(), db.url(), 2).await;
    let people = Arc::new(people());
    let (_, mut users) = clients(&nodes[0]).await;
    for i in 0..6 {
        create(&mut users, &format!("r{i}")).await.expect("CreateUser");
    }
    // Six clients upload (up to 5 faces each), alternating nodes, while PostgreSQL restarts.
    // Each call is acknowledged or UNAVAILABLE (retryable); nothing else.
    let mut drivers = Vec::new();
    for i in 0..6 {
        let (mut faces, _) = clients(&nodes[i % 2]).await;
        let people = people.clone();
        drivers.push(tokio::spawn(async move {
            let (mut acked, mut unavailable) = (Vec::new(), 0);
            let started = Instant::now();
            while acked.len() < 5 && started.elapsed() < Duration::from_secs(60) {
                match faces.upload_face(upload(&format!("r{i}"), &people[i], DuplicatePolicy::Report)).await {
                    Ok(reply) => acked.push(reply.into_inner().face.expect("face").face_id),
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    // The call in flight at the restart: its commit may or may not have landed.
                    Err(status) if reason(&status) == "FACE_LIMIT_REACHED" => break,
                    Err(status) => panic!("r{i}: {status:?}"),
                }
            }
            (i, acked, unavailable)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let restart = std::process::Command::new("bash")
        .arg(crate::common::root().join("scripts/test-postgres.sh"))
        .arg("restart")
        .env("FACEVAULT_TEST_POSTGRES", "throwaway")
        .output()
        .expect("restart PostgreSQL");
    assert!(restart.status.success(), "{}", String::from_utf8_lossy(&restart.stderr));
    // Both nodes serve again by themselves.
    let back = Instant::now();
    for node in &nodes {
        while !serving(node).await {
            assert!(back.elapsed() < Duration::from_secs(30), "a node did not recover from the restart");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut unavailable_total = 0;
    let mut acked_all = Vec::new();
    for driver in drivers {
        let (i, acked, unavailable) = driver.await.expect("join");
        unavailable_total += unavailable;
        acked_all.push((i, acked));
    }
    println!("PostgreSQL restarted under load: {unavailable_total} calls answered UNAVAILABLE");
    // Every acknowledged face is stored and listed by both nodes, and both find every user.
    for node in &nodes {
        let (mut faces, _) = clients(node).await;
        for (i, acked) in &acked_all {
            let listed = faces.list_faces(ListFacesRequest { user: by_external(&format!("r{i}")) }).await;
            let listed: Vec<String> =
                listed.expect("ListFaces").into_inner().faces.into_iter().map(|f| f.face_id).collect();
            for face in acked {
                assert!(listed.contains(face), "r{i}: acknowledged face {face} is missing after the restart");
            }
            assert!(found(&mut faces, &people[*i]).await.contains(&format!("r{i}")), "r{i} is searchable");
        }
    }
    // The store is whole.
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_facevault"))
        .args(["verify", "--postgres-url", db.url()])
        .output()
        .expect("facevault verify");
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}
