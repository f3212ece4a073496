//! Per-key rate limits through the real server: a key's burst passes, the next call is
//! RESOURCE_EXHAUSTED RATE_LIMITED with RetryInfo, other keys are unaffected, and the key is
//! admitted again after the advertised wait.

use std::time::Duration;

use facevault::grpc::pb::GetUserRequest;
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{ADMIN_A, ADMIN_B, TestServer, reason};
use crate::users::by_external;

/// Gives admin-a and admin-b each a bucket of 3 calls refilled at 1 per second.
fn limit_admin_keys(file: &mut serde_json::Value) {
    for key in file["keys"].as_array_mut().expect("keys") {
        if matches!(key["name"].as_str(), Some("admin-a" | "admin-b")) {
            key["rate_limit"] = serde_json::json!({ "per_second": 1.0, "burst": 3 });
        }
    }
}

#[tokio::test]
async fn a_key_over_its_rate_gets_rate_limited_with_retry_info() {
    let server = TestServer::start_keyed_json(limit_admin_keys).await;
    let mut limited = server.users_as(ADMIN_A).await;
    let mut other = server.users_as(ADMIN_B).await;
    let get = || GetUserRequest { user: by_external("nobody") };
    for i in 0..3 {
        let err = limited.get_user(get()).await.unwrap_err();
        assert_eq!(reason(&err), "USER_NOT_FOUND", "call {i} of the burst is admitted");
    }
    let err = limited.get_user(get()).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::ResourceExhausted, "RATE_LIMITED"));
    let wait = err.get_error_details().retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "retry after {wait:?}");
    for _ in 0..3 {
        let err = other.get_user(get()).await.unwrap_err();
        assert_eq!(reason(&err), "USER_NOT_FOUND", "another key has its own bucket");
    }
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    let err = limited.get_user(get()).await.unwrap_err();
    assert_eq!(reason(&err), "USER_NOT_FOUND", "admitted again after the advertised wait");
}

#[tokio::test]
async fn tenant_quotas_cap_users_and_faces() {
    let server = TestServer::start_keyed_json(|file| {
        file["tenants"] = serde_json::json!({ "beta": { "max_users": 3, "max_faces": 2 } });
    })
    .await;
    let mut users = server.users_as(ADMIN_B).await;
    for i in 0..3 {
        crate::users::create(&mut users, &format!("q-{i}")).await;
    }
    let user = facevault::grpc::pb::User { external_id: "q-3".into(), ..Default::default() };
    let err = users
        .create_user(facevault::grpc::pb::CreateUserRequest { user: Some(user), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::FailedPrecondition, "QUOTA_EXCEEDED"));
    let info = err.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert_eq!((info.metadata["quota"].as_str(), info.metadata["limit"].as_str()), ("users", "3"));

    let mut faces = server.faces_as(ADMIN_B).await;
    let people = crate::common::people();
    crate::enroll::upload(&mut faces, "q-0", people[0].clone()).await.expect("face 1");
    let second = crate::enroll::upload(&mut faces, "q-1", people[1].clone()).await.expect("face 2");
    let err = crate::enroll::upload(&mut faces, "q-2", people[2].clone()).await.unwrap_err();
    assert_eq!(reason(&err), "QUOTA_EXCEEDED", "a third face in the tenant");
    // Replacing a face does not add one; deleting one makes room.
    let replace = facevault::grpc::pb::UpdateFaceRequest {
        user: by_external("q-1"),
        face_id: second.face.expect("face").face_id.clone(),
        image: people[1].clone().into(),
        ..Default::default()
    };
    let replaced = faces.update_face(replace).await.expect("replace within the quota").into_inner();
    faces
        .delete_face(facevault::grpc::pb::DeleteFaceRequest {
            face_id: replaced.face.expect("face").face_id,
            ..Default::default()
        })
        .await
        .expect("delete");
    crate::enroll::upload(&mut faces, "q-2", people[2].clone()).await.expect("room again");
    // Tenant alpha has no quota.
    let mut alpha = server.users_as(ADMIN_A).await;
    for i in 0..5 {
        crate::users::create(&mut alpha, &format!("free-{i}")).await;
    }
}

#[tokio::test]
async fn a_reenrollment_token_has_its_own_rate_limit() {
    let server = TestServer::start_keyed_json(|file| {
        file["token_rate_limit"] = serde_json::json!({ "per_second": 0.01, "burst": 2 });
    })
    .await;
    let mut users = server.users_as(ADMIN_A).await;
    let user = crate::users::create(&mut users, "token-limit").await;
    let token = users
        .update_user(facevault::grpc::pb::UpdateUserRequest {
            user: crate::users::by_id(&user.user_id),
            require_face_reenrollment: true,
            ..Default::default()
        })
        .await
        .expect("token")
        .into_inner()
        .reenrollment_token;
    let mut with_token = crate::common::faces_client(server.channel().await, None, Some(&token));
    let attempt = || facevault::grpc::pb::UpdateFaceRequest {
        user: crate::users::by_id(&user.user_id),
        image: b"not an image".to_vec().into(),
        ..Default::default()
    };
    for i in 0..2 {
        let err = with_token.update_face(attempt()).await.unwrap_err();
        assert_eq!(reason(&err), "IMAGE_UNDECODABLE", "attempt {i} is admitted");
    }
    let err = with_token.update_face(attempt()).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::ResourceExhausted, "RATE_LIMITED"));
    assert!(err.get_error_details().retry_info().is_some(), "RetryInfo attached");
    // The API keys of the tenant are not affected.
    users.get_user(GetUserRequest { user: crate::users::by_id(&user.user_id) }).await.expect("the key still works");
}
