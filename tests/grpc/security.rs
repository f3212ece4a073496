//! Tenant isolation and scopes for every rpc of both services.
//!
//! Isolation: tenant alpha has a user with a face; tenant beta's admin key calls every rpc
//! aimed at alpha's ids and external id, and gets NOT_FOUND, an empty answer, or its own
//! separate record — never alpha's data — and alpha's user and face are unchanged afterwards.
//! Scopes: a key of alpha with no scope at all gets PERMISSION_DENIED SCOPE_MISSING naming the
//! scope each rpc needs (the README's table), on every rpc.

use facevault::grpc::pb::{
    CreateUserRequest, DeleteFaceRequest, DeleteUserRequest, DetectFacesRequest, GetFaceImageRequest, GetFaceRequest,
    GetUserRequest, ImageKind, ListFacesRequest, ListUsersRequest, SearchFacesRequest, UpdateFaceRequest,
    UpdateUserRequest, UploadFaceRequest, User, VerifyFaceRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{ADMIN_A, ADMIN_B, TestServer, people, reason};
use crate::users::{by_external, by_id, mask};

#[tokio::test]
async fn a_key_of_another_tenant_never_reads_lists_matches_changes_or_collides() {
    let server = TestServer::start_keyed().await;
    let (mut users_a, mut faces_a) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let (mut users_b, mut faces_b) = (server.users_as(ADMIN_B).await, server.faces_as(ADMIN_B).await);
    let photo = people()[0].clone();
    let user = User { external_id: "shared-ext".into(), display_name: "Alpha Person".into(), ..User::default() };
    let alpha = users_a
        .create_user(CreateUserRequest { user: Some(user), ..Default::default() })
        .await
        .expect("create")
        .into_inner();
    let upload = UploadFaceRequest { user: by_id(&alpha.user_id), image: photo.clone().into(), ..Default::default() };
    let face = faces_a.upload_face(upload).await.expect("upload").into_inner().face.expect("face");
    let before = users_a.get_user(GetUserRequest { user: by_id(&alpha.user_id) }).await.expect("get").into_inner();

    let not_found = |result: Result<(), tonic::Status>, what: &str, want: &str| {
        let err = result.expect_err(what);
        assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, want), "{what}");
    };
    // UserService.
    for user in [by_id(&alpha.user_id), by_external("shared-ext")] {
        not_found(users_b.get_user(GetUserRequest { user: user.clone() }).await.map(drop), "GetUser", "USER_NOT_FOUND");
        let update = UpdateUserRequest {
            user: user.clone(),
            user_update: Some(User { display_name: "Hijacked".into(), ..User::default() }),
            update_mask: mask(&["display_name"]),
            ..Default::default()
        };
        not_found(users_b.update_user(update).await.map(drop), "UpdateUser", "USER_NOT_FOUND");
        let delete = DeleteUserRequest { user: user.clone(), etag: String::new(), ..Default::default() };
        not_found(users_b.delete_user(delete).await.map(drop), "DeleteUser", "USER_NOT_FOUND");
        // FaceService calls that name a user.
        let upload = UploadFaceRequest { user: user.clone(), image: photo.clone().into(), ..Default::default() };
        not_found(faces_b.upload_face(upload).await.map(drop), "UploadFace", "USER_NOT_FOUND");
        let update = UpdateFaceRequest { user: user.clone(), image: photo.clone().into(), ..Default::default() };
        not_found(faces_b.update_face(update).await.map(drop), "UpdateFace", "USER_NOT_FOUND");
        not_found(
            faces_b.list_faces(ListFacesRequest { user: user.clone() }).await.map(drop),
            "ListFaces",
            "USER_NOT_FOUND",
        );
        let verify = VerifyFaceRequest { user: user.clone(), image: photo.clone().into() };
        not_found(faces_b.verify_face(verify).await.map(drop), "VerifyFace", "USER_NOT_FOUND");
    }
    let listed = users_b.list_users(ListUsersRequest::default()).await.expect("ListUsers").into_inner();
    assert!(listed.users.is_empty(), "beta lists none of alpha's users");
    // FaceService calls that name a face.
    not_found(
        faces_b.get_face(GetFaceRequest { face_id: face.face_id.clone() }).await.map(drop),
        "GetFace",
        "FACE_NOT_FOUND",
    );
    for kind in [ImageKind::Original, ImageKind::Thumbnail] {
        let request = GetFaceImageRequest { face_id: face.face_id.clone(), kind: kind as i32 };
        not_found(faces_b.get_face_image(request).await.map(drop), "GetFaceImage", "FACE_NOT_FOUND");
    }
    let delete = DeleteFaceRequest { face_id: face.face_id.clone(), ..Default::default() };
    not_found(faces_b.delete_face(delete).await.map(drop), "DeleteFace", "FACE_NOT_FOUND");
    // Matching: the same photo finds nothing in beta.
    let search = SearchFacesRequest { image: photo.clone().into(), min_similarity: -1.0, ..Default::default() };
    assert!(faces_b.search_faces(search).await.expect("SearchFaces").into_inner().matches.is_empty());
    // DetectFaces holds no state: beta gets detections, never alpha's ids.
    let detect = DetectFacesRequest { image: photo.clone().into(), ..Default::default() };
    assert_eq!(faces_b.detect_faces(detect).await.expect("DetectFaces").into_inner().faces.len(), 1);
    // No collision: beta may use alpha's external id; its user and face are its own, and
    // enrolling the same face in beta reports no duplicate from alpha.
    let user = User { external_id: "shared-ext".into(), ..User::default() };
    let beta = users_b
        .create_user(CreateUserRequest { user: Some(user), ..Default::default() })
        .await
        .expect("same external id")
        .into_inner();
    assert_ne!(beta.user_id, alpha.user_id);
    let upload = UploadFaceRequest { user: by_id(&beta.user_id), image: photo.clone().into(), ..Default::default() };
    let reply = faces_b.upload_face(upload).await.expect("beta's own face").into_inner();
    assert!(reply.duplicates.is_empty(), "alpha's face is not a duplicate in beta: {:?}", reply.duplicates);

    // Alpha is untouched.
    let after = users_a.get_user(GetUserRequest { user: by_id(&alpha.user_id) }).await.expect("get").into_inner();
    assert_eq!(after, before, "alpha's user is unchanged");
    let faces = faces_a.list_faces(ListFacesRequest { user: by_id(&alpha.user_id) }).await.expect("list").into_inner();
    assert_eq!(faces.faces, vec![face]);
    crate::enroll::assert_index_equals_store(&server, "alpha");
    crate::enroll::assert_index_equals_store(&server, "beta");
}

#[tokio::test]
async fn every_rpc_requires_its_scope() {
    let server = TestServer::start_keyed_json(|file| {
        let nothing = crate::common::key_entry("nothing", "alpha", &[], "secret-nothing");
        file["keys"].as_array_mut().expect("keys").push(nothing);
    })
    .await;
    let (mut users, mut faces) =
        (server.users_as(Some("secret-nothing")).await, server.faces_as(Some("secret-nothing")).await);
    let image = people()[0].clone();
    let user = by_external("someone");
    let checks: Vec<(&str, &str, Result<(), tonic::Status>)> = vec![
        (
            "CreateUser",
            "users:write",
            users
                .create_user(CreateUserRequest {
                    user: Some(User { external_id: "x".into(), ..User::default() }),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        ("GetUser", "users:read", users.get_user(GetUserRequest { user: user.clone() }).await.map(drop)),
        (
            "UpdateUser",
            "users:write",
            users
                .update_user(UpdateUserRequest {
                    user: user.clone(),
                    user_update: Some(User::default()),
                    update_mask: mask(&["display_name"]),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "DeleteUser",
            "users:write",
            users
                .delete_user(DeleteUserRequest { user: user.clone(), etag: String::new(), ..Default::default() })
                .await
                .map(drop),
        ),
        ("ListUsers", "users:read", users.list_users(ListUsersRequest::default()).await.map(drop)),
        (
            "DetectFaces",
            "faces:read",
            faces
                .detect_faces(DetectFacesRequest { image: image.clone().into(), ..Default::default() })
                .await
                .map(drop),
        ),
        (
            "UploadFace",
            "faces:write",
            faces
                .upload_face(UploadFaceRequest {
                    user: user.clone(),
                    image: image.clone().into(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "UpdateFace",
            "faces:write",
            faces
                .update_face(UpdateFaceRequest {
                    user: user.clone(),
                    image: image.clone().into(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "GetFace",
            "faces:read",
            faces.get_face(GetFaceRequest { face_id: "fce_0000000000000001".into() }).await.map(drop),
        ),
        ("ListFaces", "faces:read", faces.list_faces(ListFacesRequest { user: user.clone() }).await.map(drop)),
        (
            "DeleteFace",
            "faces:write",
            faces
                .delete_face(DeleteFaceRequest { face_id: "fce_0000000000000001".into(), ..Default::default() })
                .await
                .map(drop),
        ),
        (
            "GetFaceImage",
            "faces:read",
            faces
                .get_face_image(GetFaceImageRequest { face_id: "fce_0000000000000001".into(), kind: 0 })
                .await
                .map(drop),
        ),
        (
            "SearchFaces",
            "faces:search",
            faces
                .search_faces(SearchFacesRequest { image: image.clone().into(), ..Default::default() })
                .await
                .map(drop),
        ),
        (
            "VerifyFace",
            "faces:search",
            faces.verify_face(VerifyFaceRequest { user: user.clone(), image: image.clone().into() }).await.map(drop),
        ),
    ];
    assert_eq!(checks.len(), 14, "every rpc of both services");
    for (rpc, scope, result) in checks {
        let err = result.expect_err(rpc);
        assert_eq!((err.code(), reason(&err).as_str()), (Code::PermissionDenied, "SCOPE_MISSING"), "{rpc}: {err:?}");
        let info = err.get_error_details().error_info().cloned().expect("ErrorInfo");
        assert_eq!(info.metadata.get("scope").map(String::as_str), Some(scope), "{rpc}");
    }
}
