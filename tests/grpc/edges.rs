//! The contract at its edges, through the real server: malformed and non-canonical ids, and
//! unknown enum values.

use facevault::grpc::pb::{
    DeleteFaceRequest, DeleteUserRequest, GetFaceImageRequest, GetFaceRequest, GetUserRequest, ListFacesRequest,
    UpdateFaceRequest, UpdateUserRequest, UploadFaceRequest, VerifyFaceRequest,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{ADMIN_A, TestServer, fixture_bytes, reason};
use crate::users::{by_id, create};

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
        let err = users.delete_user(DeleteUserRequest { user: by_id(bad), etag: String::new() }).await.unwrap_err();
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
            &faces.delete_face(DeleteFaceRequest { face_id: bad.into() }).await.unwrap_err(),
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
        };
        let err = faces.update_face(update).await.unwrap_err();
        invalid(&err, "DUPLICATE_POLICY_INVALID", &format!("UpdateFace duplicate_policy {policy}"));
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
