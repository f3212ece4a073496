//! The contract at its edges, through the real server: malformed and non-canonical ids, unknown
//! enum values, a configuration that cannot work, expired tokens left in the store, what a
//! re-enrollment token's caller is told, calls that never finish in the metrics, and tenant
//! names on the metrics endpoint.

use std::time::Duration;

use facevault::grpc::pb::{
    DeleteFaceRequest, DeleteUserRequest, DetectFacesRequest, GetFaceImageRequest, GetFaceRequest, GetUserRequest,
    ListFacesRequest, UpdateFaceRequest, UpdateUserRequest, UploadFaceRequest, VerifyFaceRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{ADMIN_A, TestServer, fixture_bytes, reason, root};
use crate::users::{by_external, by_id, create};

/// Not the wire form of an id: wrong length, not hex, a sign, the wrong case, no prefix.
const BAD_USER_IDS: &[&str] = &[
    "usr_zz",
    "usr_+123456789abcde",
    "usr_-123456789abcde",
    "USR_0123456789abcdef",
    "usr_0123456789ABCDEF",
    "usr_0123456789abcdef0",
    "0123456789abcdef",
    "usr_ 123456789abcde",
];
const BAD_FACE_IDS: &[&str] = &[
    "fce_zz",
    "fce_+123456789abcde",
    "FCE_0123456789abcdef",
    "fce_0123456789ABCDEF",
    "fce_0123456789abcde",
    "usr_0123456789abcdef",
];

fn invalid(err: &tonic::Status, want: &str, what: &str) {
    assert_eq!((err.code(), reason(err).as_str()), (Code::InvalidArgument, want), "{what}: {err:?}");
}

#[tokio::test]
async fn malformed_ids_and_unknown_enum_values_are_invalid_argument() {
    let server = TestServer::start_keyed().await;
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let user = create(&mut users, "edge-user").await;
    let face = faces
        .upload_face(UploadFaceRequest {
            user: by_id(&user.user_id),
            image: fixture_bytes("yaoming.jpg").into(),
            ..UploadFaceRequest::default()
        })
        .await
        .expect("upload")
        .into_inner()
        .face
        .expect("face");

    for &bad in BAD_USER_IDS {
        let what = format!("user_id {bad:?}");
        let err = users.get_user(GetUserRequest { user: by_id(bad) }).await.unwrap_err();
        invalid(&err, "USER_REF_INVALID", &what);
        let violations = err.get_error_details().bad_request().cloned().expect("BadRequest").field_violations;
        assert_eq!(violations[0].field, "user.user_id", "{what}");
        let err = users
            .delete_user(DeleteUserRequest { user: by_id(bad), etag: String::new(), ..Default::default() })
            .await
            .unwrap_err();
        invalid(&err, "USER_REF_INVALID", &what);
        let update =
            UpdateUserRequest { user: by_id(bad), require_face_reenrollment: true, ..UpdateUserRequest::default() };
        invalid(&users.update_user(update).await.unwrap_err(), "USER_REF_INVALID", &what);
        invalid(&faces.list_faces(ListFacesRequest { user: by_id(bad) }).await.unwrap_err(), "USER_REF_INVALID", &what);
        let upload = UploadFaceRequest {
            user: by_id(bad),
            image: fixture_bytes("yaoming.jpg").into(),
            ..UploadFaceRequest::default()
        };
        invalid(&faces.upload_face(upload).await.unwrap_err(), "USER_REF_INVALID", &what);
        let verify = VerifyFaceRequest { user: by_id(bad), image: fixture_bytes("yaoming.jpg").into() };
        invalid(&faces.verify_face(verify).await.unwrap_err(), "USER_REF_INVALID", &what);
    }
    // A well-formed id of nobody is still NOT_FOUND.
    let err = users.get_user(GetUserRequest { user: by_id("usr_0123456789abcdef") }).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "USER_NOT_FOUND"));

    for &bad in BAD_FACE_IDS {
        let what = format!("face_id {bad:?}");
        let err = faces.get_face(GetFaceRequest { face_id: bad.into() }).await.unwrap_err();
        invalid(&err, "FACE_ID_INVALID", &what);
        let violations = err.get_error_details().bad_request().cloned().expect("BadRequest").field_violations;
        assert_eq!(violations[0].field, "face_id", "{what}");
        invalid(
            &faces.delete_face(DeleteFaceRequest { face_id: bad.into(), ..Default::default() }).await.unwrap_err(),
            "FACE_ID_INVALID",
            &what,
        );
        let image = GetFaceImageRequest { face_id: bad.into(), kind: 0 };
        invalid(&faces.get_face_image(image).await.unwrap_err(), "FACE_ID_INVALID", &what);
        let update = UpdateFaceRequest {
            user: by_id(&user.user_id),
            face_id: bad.into(),
            image: fixture_bytes("yaoming.jpg").into(),
            ..UpdateFaceRequest::default()
        };
        invalid(&faces.update_face(update).await.unwrap_err(), "FACE_ID_INVALID", &what);
    }
    let err = faces.get_face(GetFaceRequest { face_id: "fce_0123456789abcdef".into() }).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "FACE_NOT_FOUND"));

    // Enum values the proto does not define are refused, not read as the default.
    for policy in [2, 7, -1] {
        let upload = UploadFaceRequest {
            user: by_id(&user.user_id),
            image: fixture_bytes("yaoming.jpg").into(),
            comment: String::new(),
            duplicate_policy: policy,
            ..UploadFaceRequest::default()
        };
        let err = faces.upload_face(upload).await.unwrap_err();
        invalid(&err, "DUPLICATE_POLICY_INVALID", &format!("UploadFace duplicate_policy {policy}"));
        let violations = err.get_error_details().bad_request().cloned().expect("BadRequest").field_violations;
        assert_eq!(violations[0].field, "duplicate_policy");
        let update = UpdateFaceRequest {
            user: by_id(&user.user_id),
            face_id: face.face_id.clone(),
            image: fixture_bytes("yaoming.jpg").into(),
            comment: String::new(),
            duplicate_policy: policy,
            ..UpdateFaceRequest::default()
        };
        let err = faces.update_face(update).await.unwrap_err();
        invalid(&err, "DUPLICATE_POLICY_INVALID", &format!("UpdateFace duplicate_policy {policy}"));
        let upload = UploadFaceRequest {
            user: by_id(&user.user_id),
            image: fixture_bytes("yaoming.jpg").into(),
            multiple_faces_policy: policy,
            ..UploadFaceRequest::default()
        };
        let err = faces.upload_face(upload).await.unwrap_err();
        invalid(&err, "MULTIPLE_FACES_POLICY_INVALID", &format!("UploadFace multiple_faces_policy {policy}"));
        let violations = err.get_error_details().bad_request().cloned().expect("BadRequest").field_violations;
        assert_eq!(violations[0].field, "multiple_faces_policy");
        let update = UpdateFaceRequest {
            user: by_id(&user.user_id),
            face_id: face.face_id.clone(),
            image: fixture_bytes("yaoming.jpg").into(),
            multiple_faces_policy: policy,
            ..UpdateFaceRequest::default()
        };
        let err = faces.update_face(update).await.unwrap_err();
        invalid(&err, "MULTIPLE_FACES_POLICY_INVALID", &format!("UpdateFace multiple_faces_policy {policy}"));
    }
    for kind in [2, 9, -3] {
        let err = faces.get_face_image(GetFaceImageRequest { face_id: face.face_id.clone(), kind }).await.unwrap_err();
        invalid(&err, "IMAGE_KIND_INVALID", &format!("GetFaceImage kind {kind}"));
        let violations = err.get_error_details().bad_request().cloned().expect("BadRequest").field_violations;
        assert_eq!(violations[0].field, "kind");
    }
    // Nothing was stored by the refused calls.
    let listed = faces.list_faces(ListFacesRequest { user: by_id(&user.user_id) }).await.expect("list").into_inner();
    assert_eq!(listed.faces.len(), 1);
    assert_eq!(listed.faces[0].face_id, face.face_id);
}

/// Starts `serve` with `config` and a shutdown 3 s later; returns what it returned.
async fn serve_briefly(config: facevault::Config) -> facevault::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let serving = facevault::serve(config, listener, tokio::time::sleep(Duration::from_secs(3)));
    tokio::time::timeout(Duration::from_secs(120), serving).await.expect("serve returned")
}

#[tokio::test]
async fn a_configuration_that_cannot_work_stops_the_start_naming_the_flag() {
    let data = tempfile::tempdir().expect("temp dir");
    let base = || {
        let mut config = facevault::Config::for_root(root());
        config.data_dir = data.path().join("db");
        config.workers = 1;
        config
    };
    type Edit = fn(&mut facevault::Config);
    let cases: &[(&str, Edit)] = &[
        ("--match-threshold", |c| c.match_threshold = 1.5),
        ("--match-threshold", |c| c.match_threshold = f32::NAN),
        ("--possible-match-threshold", |c| c.possible_match_threshold = -0.5),
        ("--possible-match-threshold", |c| c.possible_match_threshold = 0.9),
        ("--reenrollment-token-ttl", |c| c.reenrollment_token_ttl = u64::MAX),
        ("--reenrollment-token-ttl", |c| c.reenrollment_token_ttl = 0),
        ("--drain-timeout", |c| c.drain_timeout = u64::MAX),
        ("--thumbnail-margin", |c| c.thumbnail_margin = -1.0),
        ("--thumbnail-margin", |c| c.thumbnail_margin = f32::INFINITY),
        ("--min-face-size", |c| c.min_face_size = 0.0),
        ("--min-face-score", |c| c.min_face_score = 2.0),
        ("--max-image-bytes", |c| c.max_image_bytes = 0),
        ("--max-image-bytes", |c| c.max_image_bytes = usize::MAX),
        ("--max-image-dimension", |c| c.max_image_dimension = 0),
        ("--max-image-pixels", |c| c.max_image_pixels = 0),
        ("--detect-fine-size", |c| c.detect_fine_size = 100),
        ("--max-yaw", |c| c.max_yaw = f32::NAN),
    ];
    for (flag, edit) in cases {
        let mut config = base();
        edit(&mut config);
        let err = serve_briefly(config).await.expect_err(&format!("a server started with a bad {flag}"));
        assert!(err.to_string().contains(flag), "{flag}: the error does not name it: {err}");
    }
}

#[tokio::test]
async fn expired_reenrollment_tokens_are_purged_from_the_store() {
    let server = TestServer::start_keyed_with(|c| c.reenrollment_token_ttl = 1).await;
    let mut users = server.users_as(ADMIN_A).await;
    let user = create(&mut users, "purged").await;
    let request = UpdateUserRequest {
        user: by_id(&user.user_id),
        require_face_reenrollment: true,
        ..UpdateUserRequest::default()
    };
    let token = users.update_user(request).await.expect("token").into_inner().reenrollment_token;
    assert!(!token.is_empty());
    let tokens = |server: &TestServer| {
        server.app().store().expect("store").raw_entries("reenrollment_tokens").expect("scan").len()
    };
    assert_eq!(tokens(&server), 1);

    // The token lives 1 s; it must leave the store soon after, without a restart or a call.
    let started = std::time::Instant::now();
    while tokens(&server) > 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "an expired token stayed in the store");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(500), "purged before it expired");
    let integrity = server.app().store().expect("store").verify(5).expect("verify");
    assert!(integrity.problems.is_empty(), "{:?}", integrity.problems);
    // The user still has to re-enroll; only the dead token is gone.
    let read = users.get_user(GetUserRequest { user: by_id(&user.user_id) }).await.expect("get").into_inner();
    assert_eq!(read.enrollment_status, facevault::grpc::pb::EnrollmentStatus::ReenrollmentRequired as i32);
}

#[tokio::test]
async fn a_token_caller_is_told_about_its_token_not_an_api_key() {
    // Attempts enough to reach the rate limit (5 tries at once) before the token is spent.
    let server = TestServer::start_keyed_with(|c| c.token_max_attempts = 100).await;
    let mut users = server.users_as(ADMIN_A).await;
    let user = create(&mut users, "token-holder").await;
    let request = UpdateUserRequest {
        user: by_id(&user.user_id),
        require_face_reenrollment: true,
        ..UpdateUserRequest::default()
    };
    let token = users.update_user(request).await.expect("token").into_inner().reenrollment_token;
    let mut with_token = server.faces_with(None, Some(&token)).await;

    let err = with_token.get_face(GetFaceRequest { face_id: "fce_0123456789abcdef".into() }).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::Unauthenticated, "REENROLLMENT_TOKEN_INVALID"));
    assert!(err.message().contains("re-enrollment token"), "{err:?}");

    // Past the token's burst of tries: RATE_LIMITED, worded for the token.
    let update = || UpdateFaceRequest { user: by_id(&user.user_id), ..UpdateFaceRequest::default() };
    let mut limited = None;
    for _ in 0..10 {
        if let Err(err) = with_token.update_face(update()).await
            && err.code() == Code::ResourceExhausted
        {
            limited = Some(err);
            break;
        }
    }
    let err = limited.expect("the token is rate-limited");
    assert_eq!(reason(&err), "RATE_LIMITED");
    assert!(err.message().contains("re-enrollment token"), "{err:?}");
    assert!(!err.message().contains("API key"), "{err:?}");
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr")
}

fn count(text: &str, series: &str) -> u64 {
    text.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0)
}

#[tokio::test]
async fn metrics_hide_tenant_names_by_default() {
    let metrics = free_addr();
    let server = TestServer::start_keyed_with(|c| c.metrics_listen = Some(metrics)).await;
    create(&mut server.users_as(ADMIN_A).await, "counted").await;
    let mut faces = server.faces_as(ADMIN_A).await;
    faces
        .upload_face(UploadFaceRequest {
            user: by_external("counted"),
            image: fixture_bytes("yaoming.jpg").into(),
            ..UploadFaceRequest::default()
        })
        .await
        .expect("upload");
    let text = crate::common::scrape(metrics, "/metrics").await;
    assert!(!text.contains("tenant="), "tenant names on the metrics endpoint:\n{text}");
    assert!(!text.contains("alpha"), "{text}");
    assert!(text.lines().any(|l| l == "facevault_index_faces 1"), "the total is reported:\n{text}");
}

#[tokio::test]
async fn metrics_record_cancelled_and_expired_calls() {
    let metrics = free_addr();
    let server = TestServer::start_keyed_with(|c| c.metrics_listen = Some(metrics)).await;
    let mut faces = server.faces_as(ADMIN_A).await;
    let slow = || DetectFacesRequest {
        image: fixture_bytes("players.jpg").into(),
        include_embeddings: true,
        include_thumbnails: true,
    };
    let expired = "facevault_rpc_duration_seconds_count{rpc=\"DetectFaces\",code=\"DEADLINE_EXCEEDED\"}";
    let cancelled = "facevault_rpc_duration_seconds_count{rpc=\"DetectFaces\",code=\"CANCELLED\"}";
    let before = crate::common::scrape(metrics, "/metrics").await;

    // A deadline the 22-face photo cannot meet (the server gives up on it), and a client that
    // goes away mid-call. A loaded machine may not get either call to the handler in time (then
    // nothing is unfinished there): a few rounds, each waiting longer.
    let mut text = String::new();
    for (deadline_ms, abort_ms) in [(30, 80), (100, 250), (300, 600), (600, 1200)] {
        let mut request = tonic::Request::new(slow());
        request.set_timeout(Duration::from_millis(deadline_ms));
        // A fast machine may finish within the longer deadlines: only a failure is checked.
        if let Err(err) = faces.detect_faces(request).await {
            assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err:?}");
        }
        let mut client = server.faces_as(ADMIN_A).await;
        let call = tokio::spawn(async move { client.detect_faces(slow()).await });
        tokio::time::sleep(Duration::from_millis(abort_ms)).await;
        call.abort();

        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            text = crate::common::scrape(metrics, "/metrics").await;
            if count(&text, expired) > count(&before, expired) && count(&text, cancelled) > count(&before, cancelled) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("unfinished calls not recorded:\n{text}");
}
