//! Changing the model (AdminService): a store enrolled with w600k_mbf is re-embedded with the
//! candidate (EdgeFace-S, from its stored originals) while uploads and searches go on, cut over
//! (searches then use the candidate and its own thresholds), rolled back, cut over again and
//! finished; the server is restarted at every stage and the state holds. Who may call it: only a
//! key with the admin scope.

use std::time::{Duration, Instant};

use facevault::Config;
use facevault::grpc::pb::admin_service_client::AdminServiceClient;
use facevault::grpc::pb::{
    AddListEntryRequest, CreateFaceListRequest, DeleteListEntryRequest, FaceList, ListKind, add_list_entry_request,
};
use facevault::grpc::pb::{
    CutoverReindexRequest, FinishReindexRequest, GetReindexRequest, GetStatusRequest, ReindexJob, ReindexState,
    RollbackReindexRequest, SearchFacesRequest, StartReindexRequest, VerifyFaceRequest,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::common::database::TestDatabase;
use crate::common::{
    ADMIN_A, ChildServer, Credentials, Faces, TestServer, faces_client, fixture_bytes, people, png, reason, root,
    users_client,
};
use crate::enroll::upload;
use crate::users::{by_external, create};

pub(crate) type Admin =
    facevault::grpc::pb::admin_service_client::AdminServiceClient<InterceptedService<Channel, Credentials>>;

/// The key with the admin scope (tenant alpha, which does not matter to it).
pub(crate) const OPS: Option<&str> = Some("secret-ops");

const CANDIDATE_ID: &str = "edgeface_s_gamma_05";
/// The candidate's thresholds, calibrated on devfaces (README: "Changing the model").
const CANDIDATE_MATCH: f32 = 0.50;
const CANDIDATE_POSSIBLE: f32 = 0.40;

/// Configures EdgeFace-S as the candidate embedder.
pub(crate) fn with_candidate(config: &mut Config) {
    config.candidate_embedder_model = Some(root().join("models/edgeface_s_gamma_05.onnx"));
    config.candidate_embedder_id = CANDIDATE_ID.into();
    config.candidate_embedder_sha256 = "9fd80dbbb5a839698631df655cdfcd7d9ae9270f801642ab99cf97be685d6a16".into();
    config.candidate_match_threshold = Some(CANDIDATE_MATCH);
    config.candidate_possible_match_threshold = Some(CANDIDATE_POSSIBLE);
    // Every face at once: the tests do not wait on the share.
    config.reindex_share = 1.0;
}

pub(crate) async fn admin_as(server: &TestServer, secret: Option<&str>) -> Admin {
    let credentials = Credentials::key(secret);
    AdminServiceClient::with_interceptor(server.channel().await, credentials)
}

async fn job(admin: &mut Admin) -> ReindexJob {
    admin.get_reindex(GetReindexRequest {}).await.expect("GetReindex").into_inner()
}

fn state(job: &ReindexJob) -> ReindexState {
    ReindexState::try_from(job.state).expect("a known state")
}

/// Polls GetReindex until the re-embedding is done.
async fn until_done(admin: &mut Admin) -> ReindexJob {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let now = job(admin).await;
        if state(&now) != ReindexState::Running {
            return now;
        }
        assert!(tokio::time::Instant::now() < deadline, "the reindex did not finish: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The same face, another image of it: mirrored.
fn mirrored(photo: &[u8]) -> Vec<u8> {
    let image = image::load_from_memory(photo).expect("decode").to_rgb8();
    png(&image::imageops::flip_horizontal(&image))
}

/// Searches each person's mirrored photo and checks the best match is that person, a MATCH.
async fn each_finds_itself(faces: &mut Faces, people: &[(String, Vec<u8>)]) {
    for (name, photo) in people {
        let request = SearchFacesRequest { image: mirrored(photo).into(), top_k: 3, ..SearchFacesRequest::default() };
        let found = faces.search_faces(request).await.expect("SearchFaces").into_inner();
        let best = found.matches.first().unwrap_or_else(|| panic!("{name}: no match"));
        assert_eq!(&best.external_id, name, "{name}: {:?}", found.matches);
        assert_eq!(best.decision, facevault::grpc::pb::MatchDecision::Match as i32, "{name}: {best:?}");
    }
}

/// VerifyFace's threshold: that of the model in use.
async fn verify_threshold(faces: &mut Faces, name: &str, photo: &[u8]) -> f32 {
    let request = VerifyFaceRequest { user: by_external(name), image: mirrored(photo).into() };
    let verified = faces.verify_face(request).await.expect("VerifyFace").into_inner();
    assert!(verified.r#match, "{name} verifies: {verified:?}");
    verified.threshold
}

async fn restart(server: TestServer) -> (TestServer, Admin, Faces) {
    let server = server.restart().await;
    let admin = admin_as(&server, OPS).await;
    let faces = server.faces_as(ADMIN_A).await;
    (server, admin, faces)
}

/// AddListEntry of the blocked person (person 8, enrolled nowhere) to `list`.
fn add_blocked(list: &str) -> AddListEntryRequest {
    AddListEntryRequest {
        list_id: list.to_owned(),
        source: Some(add_list_entry_request::Source::Image(people()[8].clone().into())),
        ..Default::default()
    }
}

/// A new user `name` cannot enroll the blocked person.
async fn assert_blocked(server: &TestServer, name: &str) {
    create(&mut server.users_as(ADMIN_A).await, name).await;
    let err = upload(&mut server.faces_as(ADMIN_A).await, name, people()[8].clone()).await.expect_err("blocked");
    assert_eq!(reason(&err), "FACE_IN_BLOCKLIST", "{name}");
}

#[tokio::test]
async fn the_store_moves_to_the_candidate_and_back_across_restarts() {
    let server = TestServer::start_keyed_with(with_candidate).await;
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let mut admin = admin_as(&server, OPS).await;
    let mut enrolled: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, photo) in people().into_iter().take(6).enumerate() {
        let name = format!("person-{i}");
        create(&mut users, &name).await;
        upload(&mut faces, &name, photo.clone()).await.expect("upload");
        enrolled.push((name, photo));
    }
    let status = admin.get_status(GetStatusRequest {}).await.expect("GetStatus").into_inner();
    let active = status.active.expect("active model");
    assert_eq!((active.embedder_id.as_str(), active.match_threshold), ("w600k_mbf", 0.40));
    let candidate = status.candidate.expect("candidate model");
    assert_eq!((candidate.embedder_id.as_str(), candidate.match_threshold), (CANDIDATE_ID, CANDIDATE_MATCH));
    assert_eq!(status.faces_per_tenant.get("alpha"), Some(&6));
    assert_eq!(state(status.reindex.as_ref().expect("job")), ReindexState::None);
    // Nothing to cut over, roll back or finish yet.
    let refused = admin.cutover_reindex(CutoverReindexRequest {}).await.expect_err("no reindex");
    assert_eq!(reason(&refused), "REINDEX_NOT_READY");
    let refused = admin.finish_reindex(FinishReindexRequest {}).await.expect_err("no reindex");
    assert_eq!(reason(&refused), "REINDEX_NOT_CUT_OVER");
    let refused = admin.rollback_reindex(RollbackReindexRequest {}).await.expect_err("no reindex");
    assert_eq!(reason(&refused), "REINDEX_NOT_CUT_OVER");
    assert_eq!(verify_threshold(&mut faces, "person-0", &enrolled[0].1).await, 0.40);

    // A blocklist entry of the old model.
    let list = server
        .lists_as(ADMIN_A)
        .await
        .create_face_list(CreateFaceListRequest {
            list: Some(FaceList { name: "blocked".into(), kind: ListKind::Block as i32, ..FaceList::default() }),
        })
        .await
        .expect("CreateFaceList")
        .into_inner();
    let old_entry = server
        .lists_as(ADMIN_A)
        .await
        .add_list_entry(add_blocked(&list.list_id))
        .await
        .expect("AddListEntry")
        .into_inner()
        .entry
        .expect("entry");
    assert_blocked(&server, "blocked-before").await;

    // Started, and the server restarted at once: the job resumes.
    let started = admin.start_reindex(StartReindexRequest {}).await.expect("StartReindex").into_inner();
    assert_eq!(state(&started), ReindexState::Running);
    assert_eq!(started.total, 6);
    assert_eq!(started.to.as_ref().map(|m| m.embedder_id.as_str()), Some(CANDIDATE_ID));
    let again = admin.start_reindex(StartReindexRequest {}).await.expect_err("one at a time");
    assert_eq!(reason(&again), "REINDEX_RUNNING");
    let (server, mut admin, mut faces) = restart(server).await;
    let mut users = server.users_as(ADMIN_A).await;
    // Uploads and searches while it runs: a face written meanwhile is embedded by both models.
    for (i, photo) in people().into_iter().skip(6).take(2).enumerate() {
        let name = format!("late-{i}");
        create(&mut users, &name).await;
        upload(&mut faces, &name, photo.clone()).await.expect("upload during the reindex");
        enrolled.push((name, photo));
    }
    each_finds_itself(&mut faces, &enrolled).await;
    let ready = until_done(&mut admin).await;
    assert_eq!(state(&ready), ReindexState::Ready, "{ready:?}");
    assert_eq!((ready.done, ready.failed), (6, 0), "{ready:?}");
    assert!(ready.top1_agreement > 0.0 && ready.top1_agreement <= 1.0, "{ready:?}");
    let store = server.app().store().expect("store");
    assert!(store.faces_without_embedding(1, None, 10).expect("scan").is_empty(), "every face has both embeddings");
    assert!(store.verify(5).expect("verify").problems.is_empty());
    drop(store);

    // READY survives a restart; then the cutover: the candidate and its thresholds.
    let (server, mut admin, mut faces) = restart(server).await;
    assert_eq!(state(&job(&mut admin).await), ReindexState::Ready);
    // The entry added before the reindex has no candidate embedding: it blocks the cutover (a
    // blocklist must not go blind). Added again while the store keeps both models, it is
    // embedded by both and blocks under either.
    let mut lists = server.lists_as(ADMIN_A).await;
    let refused = admin.cutover_reindex(CutoverReindexRequest {}).await.expect_err("an old entry");
    assert_eq!(reason(&refused), "REINDEX_NOT_READY");
    assert!(refused.message().contains("list entries"), "{}", refused.message());
    lists.delete_list_entry(DeleteListEntryRequest { entry_id: old_entry.entry_id }).await.expect("DeleteListEntry");
    lists.add_list_entry(add_blocked(&list.list_id)).await.expect("AddListEntry while both models are kept");
    let cut = admin.cutover_reindex(CutoverReindexRequest {}).await.expect("CutoverReindex").into_inner();
    assert_blocked(&server, "blocked-after-cutover").await;
    assert_eq!(state(&cut), ReindexState::CutOver);
    each_finds_itself(&mut faces, &enrolled).await;
    assert_eq!(verify_threshold(&mut faces, "person-0", &enrolled[0].1).await, CANDIDATE_MATCH);
    let status = admin.get_status(GetStatusRequest {}).await.expect("GetStatus").into_inner();
    assert_eq!(status.active.expect("active").embedder_id, CANDIDATE_ID);
    // A face uploaded after the cutover is stored for both models (a rollback keeps it).
    let yao = fixture_bytes("yaoming.jpg");
    let mut users = server.users_as(ADMIN_A).await;
    create(&mut users, "yao").await;
    let stored =
        upload(&mut faces, "yao", yao.clone()).await.expect("upload after the cutover").face.expect("face").model;
    assert_eq!(stored, CANDIDATE_ID);
    enrolled.push(("yao".into(), yao));

    // CUT_OVER survives a restart; the rollback returns to w600k_mbf with every face.
    let (server, mut admin, mut faces) = restart(server).await;
    assert_eq!(state(&job(&mut admin).await), ReindexState::CutOver);
    each_finds_itself(&mut faces, &enrolled).await;
    let back = admin.rollback_reindex(RollbackReindexRequest {}).await.expect("RollbackReindex").into_inner();
    assert_eq!(state(&back), ReindexState::RolledBack);
    each_finds_itself(&mut faces, &enrolled).await;
    assert_blocked(&server, "blocked-after-rollback").await;
    assert_eq!(verify_threshold(&mut faces, "person-0", &enrolled[0].1).await, 0.40);

    // ROLLED_BACK survives a restart; cut over again and finish: the old embeddings go.
    let (server, mut admin, _) = restart(server).await;
    assert_eq!(state(&job(&mut admin).await), ReindexState::RolledBack);
    admin.cutover_reindex(CutoverReindexRequest {}).await.expect("CutoverReindex again");
    let finished = admin.finish_reindex(FinishReindexRequest {}).await.expect("FinishReindex").into_inner();
    assert_eq!(state(&finished), ReindexState::Finished);
    let refused = admin.rollback_reindex(RollbackReindexRequest {}).await.expect_err("nothing to roll back to");
    assert_eq!(reason(&refused), "REINDEX_NOT_CUT_OVER");
    let store = server.app().store().expect("store");
    assert_eq!(
        store.faces_without_embedding(0, None, 100).expect("scan").len(),
        enrolled.len(),
        "the old slot is empty"
    );
    drop(store);

    let (server, mut admin, mut faces) = restart(server).await;
    assert_eq!(state(&job(&mut admin).await), ReindexState::Finished);
    each_finds_itself(&mut faces, &enrolled).await;
    assert_blocked(&server, "blocked-after-finish").await;
    assert_eq!(verify_threshold(&mut faces, "person-0", &enrolled[0].1).await, CANDIDATE_MATCH);
    assert!(server.app().store().expect("store").verify(5).expect("verify").problems.is_empty());
    drop(server);
}

/// Who reaches AdminService: only a key with the admin scope. A tenant's full key, a
/// re-enrollment token and no key are refused before anything runs.
#[tokio::test]
async fn only_the_admin_scope_reaches_the_admin_service() {
    let server = TestServer::start_keyed_with(with_candidate).await;
    let mut tenant_key = admin_as(&server, ADMIN_A).await;
    let refused = tenant_key.get_status(GetStatusRequest {}).await.expect_err("faces scopes are not admin");
    assert_eq!((refused.code(), reason(&refused).as_str()), (tonic::Code::PermissionDenied, "SCOPE_MISSING"));
    let refused = tenant_key.start_reindex(StartReindexRequest {}).await.expect_err("faces scopes are not admin");
    assert_eq!(reason(&refused), "SCOPE_MISSING");
    let mut nobody = admin_as(&server, None).await;
    let refused = nobody.get_reindex(GetReindexRequest {}).await.expect_err("no key");
    assert_eq!(reason(&refused), "API_KEY_MISSING");
    let mut token = AdminServiceClient::with_interceptor(server.channel().await, Credentials::bearer("not-a-key"));
    let refused = token.finish_reindex(FinishReindexRequest {}).await.expect_err("a token reaches UpdateFace only");
    assert_eq!(reason(&refused), "REENROLLMENT_TOKEN_INVALID");
    // The admin key is not a tenant key: it reaches no tenant's data.
    let mut ops_faces = server.faces_as(OPS).await;
    let refused = ops_faces
        .search_faces(SearchFacesRequest {
            image: fixture_bytes("yaoming.jpg").into(),
            ..SearchFacesRequest::default()
        })
        .await
        .expect_err("admin is not faces:search");
    assert_eq!(reason(&refused), "SCOPE_MISSING");
    // Nothing changed.
    let mut ops = admin_as(&server, OPS).await;
    assert_eq!(state(&job(&mut ops).await), ReindexState::None);
}

/// Without a candidate there is nothing to reindex to.
#[tokio::test]
async fn a_reindex_needs_a_candidate_model() {
    let server = TestServer::start_keyed().await;
    let mut ops = admin_as(&server, OPS).await;
    let refused = ops.start_reindex(StartReindexRequest {}).await.expect_err("no candidate");
    assert_eq!((refused.code(), reason(&refused).as_str()), (tonic::Code::FailedPrecondition, "NO_CANDIDATE_MODEL"));
    let status = ops.get_status(GetStatusRequest {}).await.expect("GetStatus").into_inner();
    assert!(status.candidate.is_none());
    assert!(!status.version.is_empty());
}

/// The candidate's flags for a node started as a process.
const CANDIDATE_FLAGS: &[&str] = &[
    "--candidate-embedder-model",
    "models/edgeface_s_gamma_05.onnx",
    "--candidate-embedder-id",
    CANDIDATE_ID,
    "--candidate-match-threshold",
    "0.50",
    "--candidate-possible-match-threshold",
    "0.40",
];

/// `facevault admin ...` against `node` with the admin key: exit code, stdout, stderr.
fn admin_cli(node: &ChildServer, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_facevault"))
        .arg("admin")
        .args(["--server", &node.url(), "--api-key", OPS.expect("key"), "--interval", "0.2"])
        .args(args)
        .output()
        .expect("run facevault admin");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Two nodes on one PostgreSQL database: the admin calls go to either, the re-embedding runs
/// on one, and both switch models together at the cutover. Driven by the operator CLI, whose
/// exit codes a script can use. (PostgreSQL whatever the backend of the suite: the sled pass
/// runs it once.)
#[tokio::test]
async fn multinode_reindex_is_driven_from_any_node_and_every_node_switches() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = vec!["--postgres-url", db.url()];
    args.extend_from_slice(CANDIDATE_FLAGS);
    let a = ChildServer::spawn(&dir.path().join("a"), &args).await;
    let b = ChildServer::spawn(&dir.path().join("b"), &args).await;
    let (channel_a, channel_b) = (a.channel().await, b.channel().await);
    let (mut faces_a, mut users_a) = (faces_client(channel_a.clone(), ADMIN_A, None), users_client(channel_a, ADMIN_A));
    let mut faces_b = faces_client(channel_b, ADMIN_A, None);
    let mut enrolled = Vec::new();
    for (i, photo) in people().into_iter().take(5).enumerate() {
        let name = format!("p{i}");
        create(&mut users_a, &name).await;
        upload(&mut faces_a, &name, photo.clone()).await.expect("upload on A");
        enrolled.push((name, photo));
    }

    // Refusals exit 3 with the reason code; a tenant key exits 4.
    let (code, _, err) = admin_cli(&a, &["reindex", "cutover"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("REINDEX_NOT_READY"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_facevault"))
        .args(["admin", "--server", &a.url(), "--api-key", ADMIN_A.expect("key"), "status"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));

    // Started on B and watched to its end on A: exit 0, READY, every face re-embedded.
    let (code, out, err) = admin_cli(&b, &["reindex", "start"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("RUNNING"), "{out}");
    let (code, out, err) = admin_cli(&a, &["reindex", "watch"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reindex: READY  5/5 re-embedded, 0 failed"), "{out}");
    assert!(err.contains("5/5 100%"), "the progress line: {err}");

    // Cut over on A: B switches too (within its poll of the log), with the candidate's threshold.
    let (code, out, err) = admin_cli(&a, &["cutover"]);
    assert_eq!(code, 0, "{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if verify_threshold(&mut faces_b, "p0", &enrolled[0].1).await == CANDIDATE_MATCH {
            break;
        }
        assert!(Instant::now() < deadline, "B did not switch to the candidate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    each_finds_itself(&mut faces_b, &enrolled).await;
    each_finds_itself(&mut faces_a, &enrolled).await;
    let (code, out, _) = admin_cli(&b, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("active model:    {CANDIDATE_ID}")) && out.contains("CUT_OVER"), "{out}");
    assert!(out.contains("tenant alpha") && out.contains("5 faces"), "{out}");
    let (code, out, err) = admin_cli(&b, &["finish"]);
    assert_eq!((code, out.contains("FINISHED")), (0, true), "{out}{err}");
    each_finds_itself(&mut faces_a, &enrolled).await;
}

/// Every file under `dir`.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(files_under(&path)) } else { out.push(path) }
    }
    out
}

/// Replaces the stored original of one face with bytes that are no image (sled: its file;
/// PostgreSQL: its row).
async fn corrupt_one_original(server: &TestServer) {
    match &server.config().postgres_url {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(connection);
            let changed = client
                .execute(
                    "UPDATE face_images SET original = 'not an image'::bytea \
                     WHERE face_id = (SELECT face_id FROM face_images ORDER BY face_id LIMIT 1)",
                    &[],
                )
                .await
                .expect("update");
            assert_eq!(changed, 1);
        }
        None => {
            let original = files_under(&server.config().data_dir.join("v1/faces"))
                .into_iter()
                .find(|p| p.extension().is_some_and(|e| e == "orig"))
                .expect("an original image file");
            std::fs::write(original, b"not an image").expect("overwrite");
        }
    }
}

/// A face whose original cannot be re-embedded fails the reindex: it cannot be cut over (the
/// face would drop out of search), nor rolled back; finishing abandons the candidate and the
/// store searches as before.
#[tokio::test]
async fn a_face_that_cannot_be_re_embedded_fails_the_reindex_and_blocks_the_cutover() {
    let server = TestServer::start_keyed_with(with_candidate).await;
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let mut admin = admin_as(&server, OPS).await;
    let mut enrolled = Vec::new();
    for (i, photo) in people().into_iter().take(2).enumerate() {
        let name = format!("person-{i}");
        create(&mut users, &name).await;
        upload(&mut faces, &name, photo.clone()).await.expect("upload");
        enrolled.push((name, photo));
    }
    corrupt_one_original(&server).await;
    admin.start_reindex(StartReindexRequest {}).await.expect("StartReindex");
    let failed = until_done(&mut admin).await;
    assert_eq!(state(&failed), ReindexState::Failed, "{failed:?}");
    assert_eq!((failed.done, failed.failed), (1, 1), "{failed:?}");
    let refused = admin.cutover_reindex(CutoverReindexRequest {}).await.expect_err("incomplete");
    assert_eq!(reason(&refused), "REINDEX_NOT_READY");
    let refused = admin.rollback_reindex(RollbackReindexRequest {}).await.expect_err("never cut over");
    assert_eq!(reason(&refused), "REINDEX_NOT_CUT_OVER");
    let finished = admin.finish_reindex(FinishReindexRequest {}).await.expect("FinishReindex").into_inner();
    assert_eq!(state(&finished), ReindexState::Finished);
    let refused = admin.cutover_reindex(CutoverReindexRequest {}).await.expect_err("finished");
    assert_eq!(reason(&refused), "REINDEX_NOT_READY");
    each_finds_itself(&mut faces, &enrolled).await;
    let status = admin.get_status(GetStatusRequest {}).await.expect("GetStatus").into_inner();
    assert_eq!(status.active.expect("active").embedder_id, "w600k_mbf");
    let store = server.app().store().expect("store");
    assert_eq!(store.faces_without_embedding(1, None, 10).expect("scan").len(), 2, "the candidate's slot is empty");
}

/// The node running the re-embedding is killed (SIGKILL): another node takes the job over once
/// the lease lapses and finishes it; nothing is lost or counted twice.
#[tokio::test]
async fn multinode_reindex_worker_killed_is_taken_over_by_another_node() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = vec!["--postgres-url", db.url(), "--reindex-lease", "2", "--reindex-share", "0.05"];
    args.extend_from_slice(CANDIDATE_FLAGS);
    let mut nodes = [
        ChildServer::spawn(&dir.path().join("a"), &args).await,
        ChildServer::spawn(&dir.path().join("b"), &args).await,
    ];
    let channel = nodes[0].channel().await;
    let (mut faces, mut users) = (faces_client(channel.clone(), ADMIN_A, None), users_client(channel, ADMIN_A));
    let people = people();
    for (i, photo) in people.iter().enumerate() {
        let name = format!("p{i}");
        create(&mut users, &name).await;
        upload(&mut faces, &name, photo.clone()).await.expect("upload");
    }
    let mut admin_a = AdminServiceClient::with_interceptor(nodes[0].channel().await, Credentials::key(OPS));
    admin_a.start_reindex(StartReindexRequest {}).await.expect("StartReindex");
    // The worker's node, by the pid in its id.
    let deadline = Instant::now() + Duration::from_secs(20);
    let worker = loop {
        let now = job(&mut admin_a).await;
        if !now.worker.is_empty() {
            break now.worker;
        }
        assert!(Instant::now() < deadline, "no node took the job: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid: u32 = worker.split('-').next().and_then(|p| p.parse().ok()).expect("a pid in the worker id");
    let victim = nodes.iter().position(|n| n.pid() == pid).expect("the worker is one of the nodes");
    nodes[victim].kill();
    let survivor = &nodes[1 - victim];
    let mut admin = AdminServiceClient::with_interceptor(survivor.channel().await, Credentials::key(OPS));
    let done = until_done(&mut admin).await;
    assert_eq!(state(&done), ReindexState::Ready, "{done:?}");
    assert_eq!((done.done, done.total, done.failed), (people.len() as i64, people.len() as i64, 0), "{done:?}");
    admin.cutover_reindex(CutoverReindexRequest {}).await.expect("CutoverReindex on the survivor");
    let mut faces = faces_client(survivor.channel().await, ADMIN_A, None);
    let enrolled: Vec<(String, Vec<u8>)> = people.into_iter().enumerate().map(|(i, p)| (format!("p{i}"), p)).collect();
    each_finds_itself(&mut faces, &enrolled).await;
}
