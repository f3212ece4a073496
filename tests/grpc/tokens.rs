//! A re-enrollment token is a narrow capability: it acts only on its own user, tells its holder
//! nothing about anyone else, and is good for a bounded number of attempts over its life.

use facevault::grpc::pb::{DuplicatePolicy, UpdateFaceRequest, UpdateUserRequest, UserRef};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{ADMIN_A, Faces, TestServer, fixture_bytes, reason};
use crate::enroll::upload;
use crate::users::{by_external, by_id, create};

/// A user with a fresh re-enrollment token: (user_id, token).
pub(crate) async fn user_with_token(server: &TestServer, external_id: &str) -> (String, String) {
    let mut users = server.users_as(ADMIN_A).await;
    let user = create(&mut users, external_id).await;
    let token = users
        .update_user(UpdateUserRequest {
            user: by_id(&user.user_id),
            require_face_reenrollment: true,
            ..Default::default()
        })
        .await
        .expect("token issued")
        .into_inner()
        .reenrollment_token;
    (user.user_id, token)
}

fn update(user: Option<UserRef>, face_id: &str, image: Vec<u8>, reject: bool) -> UpdateFaceRequest {
    UpdateFaceRequest {
        user,
        face_id: face_id.into(),
        image: image.into(),
        duplicate_policy: if reject { DuplicatePolicy::Reject as i32 } else { DuplicatePolicy::Report as i32 },
        ..Default::default()
    }
}

fn assert_token_refused(err: &tonic::Status, what: &str) {
    assert_eq!(
        (err.code(), reason(err).as_str()),
        (Code::Unauthenticated, "REENROLLMENT_TOKEN_INVALID"),
        "{what}: {err:?}"
    );
    assert!(err.message().contains("re-enrollment token"), "{what}: {}", err.message());
}

/// Every byte a token holder sees of an error: message, reason, metadata, details.
fn visible(err: &tonic::Status) -> String {
    let info = err.get_error_details().error_info().map(|i| format!("{:?}", i.metadata)).unwrap_or_default();
    // Every header but `date`, which differs between two replies that straddle a second.
    let mut headers = err.metadata().clone();
    headers.remove("date");
    format!("{} {} {info} {headers:?}", err.message(), reason(err))
}

#[tokio::test]
async fn a_token_holder_learns_nothing_about_other_users_and_the_attempt_counts() {
    let server = TestServer::start_keyed_with(|c| c.token_max_attempts = 2).await;
    let mut admin = server.faces_as(ADMIN_A).await;
    let victim = create(&mut server.users_as(ADMIN_A).await, "victim-ext-id").await;
    let enrolled = upload(&mut admin, "victim-ext-id", fixture_bytes("yaoming.jpg")).await.expect("victim enrolled");
    let victim_face = enrolled.face.expect("face").face_id;
    let (holder_id, token) = user_with_token(&server, "holder").await;
    let mut with_token: Faces = server.faces_with(None, Some(&token)).await;

    // The victim's photo under REJECT: one fixed reason, no ids, no similarity.
    let err =
        with_token.update_face(update(by_id(&holder_id), "", fixture_bytes("yaoming.jpg"), true)).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::AlreadyExists, "DUPLICATE_FACE"));
    let seen = visible(&err);
    for secret in [victim.user_id.as_str(), "victim-ext-id", victim_face.as_str(), "similarity"] {
        assert!(!seen.contains(secret), "a token holder saw {secret:?}: {seen}");
    }
    assert!(err.get_error_details().error_info().is_some_and(|i| i.metadata.is_empty()), "{seen}");

    // The API-key caller still gets the details.
    let mut users = server.users_as(ADMIN_A).await;
    let other = create(&mut users, "other").await;
    let err =
        admin.update_face(update(by_id(&other.user_id), "", fixture_bytes("yaoming.jpg"), true)).await.unwrap_err();
    let details = err.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.metadata.get("user_id"), Some(&victim.user_id), "{info:?}");

    // Without REJECT the face is stored for the holder, and `duplicates` stays empty for it.
    let reply = with_token
        .update_face(update(by_id(&holder_id), "", fixture_bytes("yaoming.jpg"), false))
        .await
        .expect("second attempt is within the limit")
        .into_inner();
    assert!(reply.duplicates.is_empty(), "a token holder was shown {:?}", reply.duplicates);
    assert_eq!(reply.face.expect("face").user_id, holder_id);

    // Both attempts counted: the token is spent either way.
    let err =
        with_token.update_face(update(by_id(&holder_id), "", fixture_bytes("yaoming.jpg"), false)).await.unwrap_err();
    assert_token_refused(&err, "after the last attempt");
}

#[tokio::test]
async fn a_token_acts_only_on_its_own_user_and_other_users_look_like_no_user() {
    // Every refused call below spends an attempt (and a rate-limit token) too; leave room for
    // the last one.
    let keys = std::env::temp_dir().join(format!("facevault-token-keys-{}.json", std::process::id()));
    let mut file = crate::common::keys_json();
    file["token_rate_limit"] = serde_json::json!({ "per_second": 1000.0, "burst": 1000 });
    std::fs::write(&keys, file.to_string()).expect("keys file");
    let server = TestServer::start_keyed_with(|c| {
        c.keys_file = Some(keys);
        c.token_max_attempts = 8;
    })
    .await;
    let mut admin = server.faces_as(ADMIN_A).await;
    let victim = create(&mut server.users_as(ADMIN_A).await, "victim").await;
    let victim_face =
        upload(&mut admin, "victim", fixture_bytes("yaoming.jpg")).await.expect("enrolled").face.expect("face").face_id;
    let (holder_id, token) = user_with_token(&server, "holder").await;
    let mut with_token = server.faces_with(None, Some(&token)).await;
    let not_an_image = || b"not an image".to_vec();

    // Another existing user (by id, by external id, with one of its real face ids) and a user
    // that does not exist answer exactly alike, before any image work (the body is no image).
    let mut answers = Vec::new();
    for (what, user, face_id) in [
        ("another user by id", by_id(&victim.user_id), ""),
        ("another user by external id", by_external("victim"), ""),
        ("another user with its real face", by_id(&victim.user_id), victim_face.as_str()),
        ("another user with a face id it lacks", by_id(&victim.user_id), "fce_00000000000000aa"),
        ("no such user", by_id("usr_0000000000000001"), ""),
        ("no such user with a face id", by_id("usr_0000000000000001"), "fce_00000000000000aa"),
        ("no such external id", by_external("nobody"), ""),
    ] {
        let err = with_token.update_face(update(user, face_id, not_an_image(), true)).await.unwrap_err();
        assert_token_refused(&err, what);
        answers.push(visible(&err));
    }
    answers.dedup();
    assert_eq!(answers.len(), 1, "the refusals differ: {answers:?}");

    // Its own user: the token is admitted and the image is looked at.
    let err = with_token.update_face(update(by_id(&holder_id), "", not_an_image(), false)).await.unwrap_err();
    assert_eq!(reason(&err), "IMAGE_UNDECODABLE", "{err:?}");
    // The victim is untouched.
    let faces = admin
        .list_faces(facevault::grpc::pb::ListFacesRequest { user: by_id(&victim.user_id) })
        .await
        .expect("list")
        .into_inner()
        .faces;
    assert_eq!(faces.len(), 1);
}

#[tokio::test]
async fn a_token_has_a_bounded_number_of_attempts_over_its_life_even_across_restarts() {
    let server = TestServer::start_keyed_json(|file| {
        // A generous rate: only the lifetime bound may refuse here.
        file["token_rate_limit"] = serde_json::json!({ "per_second": 1000.0, "burst": 1000 });
    })
    .await;
    let (holder_id, token) = user_with_token(&server, "holder").await;
    let attempt = || update(by_id(&holder_id), "", b"not an image".to_vec(), false);
    let mut with_token = server.faces_with(None, Some(&token)).await;
    for i in 0..3 {
        let err = with_token.update_face(attempt()).await.unwrap_err();
        assert_eq!(reason(&err), "IMAGE_UNDECODABLE", "attempt {i}: {err:?}");
    }
    let server = server.restart().await;
    let mut with_token = server.faces_with(None, Some(&token)).await;
    for i in 3..5 {
        let err = with_token.update_face(attempt()).await.unwrap_err();
        assert_eq!(reason(&err), "IMAGE_UNDECODABLE", "attempt {i} (after a restart): {err:?}");
    }
    let err = with_token.update_face(attempt()).await.unwrap_err();
    assert_token_refused(&err, "the sixth attempt (default limit 5)");
    // A refused token is no rate-limit bucket and no oracle for any other call either.
    let err = with_token
        .get_face(facevault::grpc::pb::GetFaceRequest { face_id: "fce_0000000000000001".into() })
        .await
        .unwrap_err();
    assert_token_refused(&err, "a token on GetFace");
}
