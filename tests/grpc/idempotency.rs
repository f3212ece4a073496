//! Idempotent writes through the real server (design/API-2.md): every write with a request_id
//! replays the first call's response and changes nothing; a reused id with another request is
//! REQUEST_ID_REUSED; records are per tenant, expire, and go with the user they describe; a
//! client that retries after dropping its connection at random points never writes twice.

use std::time::Duration;

use facevault::grpc::pb::{
    CreateUserRequest, DeleteFaceRequest, DeleteUserRequest, GetUserRequest, ListFacesRequest, ListUsersRequest,
    UpdateFaceRequest, UpdateUserRequest, UploadFaceRequest, User,
};
use tonic::Code;

use crate::common::{ADMIN_A, ADMIN_B, TestServer, faces_client, people, reason, users_client};
use crate::enroll::assert_index_equals_store;
use crate::users::{by_external, mask};

fn new_user(external_id: &str, request_id: &str) -> CreateUserRequest {
    CreateUserRequest {
        user: Some(User { external_id: external_id.into(), display_name: "Idem Potent".into(), ..User::default() }),
        request_id: request_id.into(),
    }
}

fn upload(external_id: &str, image: Vec<u8>, request_id: &str) -> UploadFaceRequest {
    UploadFaceRequest {
        user: by_external(external_id),
        image: image.into(),
        request_id: request_id.into(),
        ..UploadFaceRequest::default()
    }
}

fn requests_stored(server: &TestServer) -> usize {
    let sizes = server.app().store().expect("store").tree_sizes();
    sizes.into_iter().find(|(tree, _)| *tree == "requests").map(|(_, n)| n).expect("a requests table")
}

#[tokio::test]
async fn every_write_replays_its_request_id() {
    let server = TestServer::start_keyed().await;
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);

    // CreateUser: the same user again, not EXTERNAL_ID_TAKEN.
    let first = users.create_user(new_user("idem-1", "create-1")).await.expect("create").into_inner();
    let again = users.create_user(new_user("idem-1", "create-1")).await.expect("replay").into_inner();
    assert_eq!(first, again);
    // The same id with another request; a malformed id.
    let reused = users.create_user(new_user("idem-2", "create-1")).await.unwrap_err();
    assert_eq!((reused.code(), reason(&reused).as_str()), (Code::InvalidArgument, "REQUEST_ID_REUSED"));
    for bad in ["has space", &"x".repeat(65), "semi;colon"] {
        let err = users.create_user(new_user("idem-3", bad)).await.unwrap_err();
        assert_eq!(reason(&err), "REQUEST_ID_INVALID", "{bad}");
    }
    let missing = users.get_user(GetUserRequest { user: by_external("idem-2") }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "a refused replay wrote nothing");

    // UploadFace: one face, the same response (with the stored thumbnail).
    let photos = people();
    let up = faces.upload_face(upload("idem-1", photos[0].clone(), "upload-1")).await.expect("upload").into_inner();
    let up_again =
        faces.upload_face(upload("idem-1", photos[0].clone(), "upload-1")).await.expect("replay").into_inner();
    assert_eq!(up.face, up_again.face);
    assert!(!up_again.thumbnail.is_empty());
    assert_eq!(up.thumbnail, up_again.thumbnail);
    let listed = faces.list_faces(ListFacesRequest { user: by_external("idem-1") }).await.expect("list").into_inner();
    assert_eq!(listed.faces.len(), 1);
    // The same id for another rpc is another request.
    let across = faces
        .delete_face(DeleteFaceRequest { face_id: "fce_0000000000000001".into(), request_id: "upload-1".into() })
        .await
        .unwrap_err();
    assert_eq!(reason(&across), "REQUEST_ID_REUSED");

    // UpdateUser: one version step, the same etag twice.
    let update = || UpdateUserRequest {
        user: by_external("idem-1"),
        user_update: Some(User { display_name: "Renamed Once".into(), ..User::default() }),
        update_mask: mask(&["display_name"]),
        request_id: "update-1".into(),
        ..UpdateUserRequest::default()
    };
    let updated = users.update_user(update()).await.expect("update").into_inner().user.expect("user");
    let updated_again = users.update_user(update()).await.expect("replay").into_inner().user.expect("user");
    assert_eq!(updated.etag, updated_again.etag);
    let now = users.get_user(GetUserRequest { user: by_external("idem-1") }).await.expect("get").into_inner();
    assert_eq!(now.etag, updated.etag, "the replay did not write");
    // A token is shown once: a replay returns the user without it.
    let token_request = || UpdateUserRequest {
        user: by_external("idem-1"),
        require_face_reenrollment: true,
        request_id: "token-1".into(),
        ..UpdateUserRequest::default()
    };
    let issued = users.update_user(token_request()).await.expect("token").into_inner();
    assert!(!issued.reenrollment_token.is_empty());
    let replayed = users.update_user(token_request()).await.expect("replay").into_inner();
    assert!(replayed.reenrollment_token.is_empty());
    assert_eq!(replayed.user, issued.user);

    // UpdateFace: the same replacement twice, one face stays.
    let replace = || UpdateFaceRequest {
        user: by_external("idem-1"),
        image: photos[0].clone().into(),
        request_id: "replace-1".into(),
        ..UpdateFaceRequest::default()
    };
    let replaced = faces.update_face(replace()).await.expect("update face").into_inner();
    let replaced_again = faces.update_face(replace()).await.expect("replay").into_inner();
    assert_eq!(replaced.face, replaced_again.face);
    assert_eq!(replaced.replaced_face_id, up.face.as_ref().expect("face").face_id);
    assert_eq!(replaced_again.replaced_face_id, replaced.replaced_face_id);
    let listed = faces.list_faces(ListFacesRequest { user: by_external("idem-1") }).await.expect("list").into_inner();
    assert_eq!(listed.faces.len(), 1);

    // DeleteFace and DeleteUser: OK again instead of NOT_FOUND.
    let face_id = replaced.face.expect("face").face_id;
    let delete_face = || DeleteFaceRequest { face_id: face_id.clone(), request_id: "delete-face-1".into() };
    faces.delete_face(delete_face()).await.expect("delete face");
    faces.delete_face(delete_face()).await.expect("replayed delete face");
    let delete_user = || DeleteUserRequest {
        user: by_external("idem-1"),
        request_id: "delete-1".into(),
        ..DeleteUserRequest::default()
    };
    users.delete_user(delete_user()).await.expect("delete user");
    users.delete_user(delete_user()).await.expect("replayed delete user");
    assert_index_equals_store(&server, "alpha");

    // The records that held the user's data went with it: the create's id is free again.
    let recreated = users.create_user(new_user("idem-1", "create-1")).await.expect("a new user").into_inner();
    assert_ne!(recreated.user_id, first.user_id);

    // Tenants do not share request ids.
    let mut users_b = server.users_as(ADMIN_B).await;
    let other = users_b.create_user(new_user("idem-b", "create-1")).await.expect("tenant b").into_inner();
    assert_eq!(other.external_id, "idem-b");
}

#[tokio::test]
async fn request_ids_expire_after_the_ttl() {
    let server = TestServer::start_keyed_with(|c| c.request_id_ttl = 1).await;
    let mut users = server.users_as(ADMIN_A).await;
    users.create_user(new_user("ttl-1", "ttl-create")).await.expect("create");
    assert!(requests_stored(&server) > 0, "the create recorded its request id");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Expired: the id is free, so the same request is a new create (refused: the user exists).
    let err = users.create_user(new_user("ttl-1", "ttl-create")).await.unwrap_err();
    assert_eq!(reason(&err), "EXTERNAL_ID_TAKEN");
    // And another request may take the id.
    users.create_user(new_user("ttl-2", "ttl-create")).await.expect("the id is free again");
    // The purge (every second at this TTL) removes expired records.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while requests_stored(&server) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "expired request records were not purged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A tiny deterministic generator (no dependency): delays in [0, bound) ms.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

/// Runs `call` on a fresh connection until it answers within a random time; each attempt that
/// runs out is abandoned with its connection (dropped mid-call at a random point).
async fn retry_until_done<T, F, Fut>(server: &TestServer, rng: &mut Lcg, mut call: F) -> (T, u32)
where
    F: FnMut(tonic::transport::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut dropped = 0;
    for attempt in 0.. {
        let channel = server.channel().await;
        // Late attempts get time enough to finish.
        let limit = if attempt < 6 { rng.next(400) } else { 30_000 };
        match tokio::time::timeout(Duration::from_millis(limit), call(channel)).await {
            Ok(Ok(done)) => return (done, dropped),
            Ok(Err(status)) => panic!("a retried write failed: {status:?}"),
            Err(_) => dropped += 1,
        }
    }
    unreachable!()
}

#[tokio::test]
async fn retries_after_dropped_connections_never_write_twice() {
    let server = TestServer::start_keyed().await;
    let photos = people();
    let mut rng = Lcg(0x5eed);
    let mut dropped = 0;
    for (i, photo) in photos.iter().take(6).enumerate() {
        let external = format!("retry-{i}");
        let (_, d) = retry_until_done(&server, &mut rng, |channel| {
            let request = new_user(&external, &format!("c-{i}"));
            async move { users_client(channel, ADMIN_A).create_user(request).await }
        })
        .await;
        dropped += d;
        let (_, d) = retry_until_done(&server, &mut rng, |channel| {
            let request = upload(&external, photo.clone(), &format!("u-{i}"));
            async move { faces_client(channel, ADMIN_A, None).upload_face(request).await }
        })
        .await;
        dropped += d;
        let (_, d) = retry_until_done(&server, &mut rng, |channel| {
            let request = UpdateUserRequest {
                user: by_external(&external),
                user_update: Some(User { email: format!("p{i}@example.com"), ..User::default() }),
                update_mask: mask(&["email"]),
                request_id: format!("e-{i}"),
                ..UpdateUserRequest::default()
            };
            async move { users_client(channel, ADMIN_A).update_user(request).await }
        })
        .await;
        dropped += d;
    }
    assert!(dropped > 0, "no call was cut off: the test proves nothing");
    // Calls cut off may still be finishing on the server: wait for them before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut users = server.users_as(ADMIN_A).await;
    let mut faces = server.faces_as(ADMIN_A).await;
    let listed = users.list_users(ListUsersRequest { page_size: 100, ..Default::default() }).await.expect("list");
    let listed = listed.into_inner().users;
    assert_eq!(listed.len(), 6);
    for user in &listed {
        let faces = faces.list_faces(ListFacesRequest { user: by_external(&user.external_id) }).await.expect("faces");
        assert_eq!(faces.into_inner().faces.len(), 1, "{} has a second face", user.external_id);
        // One update step after the face: created (1), face (2), email (3).
        assert_eq!(user.etag, "v3", "{} was written twice", user.external_id);
    }
    assert_index_equals_store(&server, "alpha");
}

#[tokio::test]
async fn a_replay_names_no_one_deleted_since_and_tokens_stay_in_their_lane() {
    let server = TestServer::start_keyed().await;
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let photos = people();
    for name in ["dup-p", "dup-q", "dup-r"] {
        users.create_user(new_user(name, "")).await.expect("create");
    }
    faces.upload_face(upload("dup-p", photos[0].clone(), "")).await.expect("p");
    let first = faces.upload_face(upload("dup-q", photos[0].clone(), "dup-1")).await.expect("q").into_inner();
    assert!(first.duplicates.iter().any(|d| d.external_id == "dup-p"), "{:?}", first.duplicates);
    users
        .delete_user(DeleteUserRequest { user: by_external("dup-p"), ..DeleteUserRequest::default() })
        .await
        .expect("delete p");
    let replay = faces.upload_face(upload("dup-q", photos[0].clone(), "dup-1")).await.expect("replay").into_inner();
    assert_eq!(replay.face, first.face);
    assert!(replay.duplicates.is_empty(), "a deleted user is still named: {:?}", replay.duplicates);
    // Nor does any stored record.
    let records = server.app().store().expect("store").raw_entries("requests").expect("scan");
    assert!(!records.is_empty());
    assert!(records.iter().all(|(_, value)| !value.windows(5).any(|w| w == b"dup-p")), "a record names dup-p");

    // A token of dup-r naming dup-q with dup-q's request id: the token's refusal, not a word
    // about the id.
    let token = users
        .update_user(UpdateUserRequest {
            user: by_external("dup-r"),
            require_face_reenrollment: true,
            ..UpdateUserRequest::default()
        })
        .await
        .expect("token")
        .into_inner()
        .reenrollment_token;
    let mut holder = faces_client(server.channel().await, None, Some(&token));
    let request = UpdateFaceRequest {
        user: by_external("dup-q"),
        image: photos[0].clone().into(),
        request_id: "dup-1".into(),
        ..UpdateFaceRequest::default()
    };
    let err = holder.update_face(request).await.unwrap_err();
    assert_eq!(reason(&err), "REENROLLMENT_TOKEN_INVALID");
}
