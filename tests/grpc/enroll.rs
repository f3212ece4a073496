//! FaceService enrollment through the real server: upload, the quality gate, the per-user
//! limit under concurrency, duplicates, UpdateFace (with re-enrollment tokens), reads, deletes,
//! and the store and index staying equal.

use std::collections::BTreeSet;

use facevault::domain::{FaceId, Tenant, UserId};
use facevault::grpc::pb::{
    DeleteFaceRequest, DeleteUserRequest, GetFaceImageRequest, GetFaceRequest, GetUserRequest, ImageKind,
    ListFacesRequest, UpdateFaceRequest, UpdateUserRequest, UploadFaceRequest, UploadFaceResponse,
};
use image::imageops;
use tonic::Code;

use crate::common::{
    ADMIN_A, ADMIN_B, Faces, TestServer, fixture_bytes, fixture_rgb, people, png, reason, yao_in_players,
};
use crate::users::{by_external, by_id, create};

pub(crate) async fn upload(faces: &mut Faces, user: &str, image: Vec<u8>) -> Result<UploadFaceResponse, tonic::Status> {
    let request = UploadFaceRequest { user: by_external(user), image: image.into(), ..UploadFaceRequest::default() };
    faces.upload_face(request).await.map(tonic::Response::into_inner)
}

/// The index of `tenant` equals the faces the store holds for it.
pub(crate) fn assert_index_equals_store(server: &TestServer, tenant: &str) {
    let app = server.app();
    let tenant = Tenant::new(tenant).expect("tenant");
    let prefix = facevault::storage::keys::tenant_prefix(&tenant);
    let stored: BTreeSet<FaceId> = app
        .store()
        .expect("store")
        .raw_entries("embeddings")
        .expect("scan")
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| FaceId(u64::from_be_bytes(k[prefix.len()..].try_into().expect("8 bytes"))))
        .collect();
    let indexed: BTreeSet<FaceId> = app.index().entries(&tenant).into_iter().map(|(f, _)| f).collect();
    assert_eq!(stored, indexed, "index and store disagree");
    for tree in ["faces", "images", "thumbnails"] {
        let n = app
            .store()
            .expect("store")
            .raw_entries(tree)
            .expect("scan")
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .count();
        assert_eq!(n, stored.len(), "{tree} has {n} entries for {} embeddings", stored.len());
    }
}

#[tokio::test]
async fn upload_read_and_delete_a_face() {
    let server = TestServer::start_keyed().await;
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let user = create(&mut users, "yao").await;
    let original = fixture_bytes("yaoming.jpg");
    let reply = upload(&mut faces, "yao", original.clone()).await.expect("upload");
    let face = reply.face.expect("face");
    assert!(face.face_id.starts_with("fce_"));
    assert_eq!(face.user_id, user.user_id);
    assert_eq!(face.uploaded_by, "admin-a");
    assert_eq!(face.model, "w600k_mbf");
    let detection = face.detection.clone().expect("detection");
    assert!(detection.embedding.is_empty(), "embeddings never leave the server in Face");
    assert_eq!(detection.landmarks.len(), 5);
    assert!(reply.duplicates.is_empty() && reply.warnings.is_empty());
    let thumb = image::load_from_memory(&reply.thumbnail).expect("thumbnail decodes").into_rgb8();
    assert_eq!(thumb.dimensions(), (256, 256));

    let now = users.get_user(GetUserRequest { user: by_id(&user.user_id) }).await.expect("get").into_inner();
    assert_eq!((now.face_count, now.enrollment_status), (1, 2), "ENROLLED with one face");
    assert_ne!(now.etag, user.etag);

    let got = faces.get_face(GetFaceRequest { face_id: face.face_id.clone() }).await.expect("get face").into_inner();
    assert_eq!(got, face);
    let listed = faces.list_faces(ListFacesRequest { user: by_external("yao") }).await.expect("list").into_inner();
    assert_eq!(listed.faces, vec![face.clone()]);
    let image = faces
        .get_face_image(GetFaceImageRequest { face_id: face.face_id.clone(), kind: ImageKind::Original as i32 })
        .await
        .expect("original")
        .into_inner();
    assert_eq!(image.data.as_ref(), original.as_slice(), "the original is stored byte for byte");
    assert_eq!((image.mime_type.as_str(), image.width, image.height), ("image/jpeg", 233, 287));
    let image = faces
        .get_face_image(GetFaceImageRequest { face_id: face.face_id.clone(), kind: ImageKind::Thumbnail as i32 })
        .await
        .expect("thumbnail")
        .into_inner();
    assert_eq!(image.data, reply.thumbnail);

    // Another tenant sees nothing of it.
    let mut other = server.faces_as(ADMIN_B).await;
    let err = other.get_face(GetFaceRequest { face_id: face.face_id.clone() }).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "FACE_NOT_FOUND"));
    let err =
        other.delete_face(DeleteFaceRequest { face_id: face.face_id.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(reason(&err), "FACE_NOT_FOUND");

    faces.delete_face(DeleteFaceRequest { face_id: face.face_id.clone(), ..Default::default() }).await.expect("delete");
    let err = faces.get_face(GetFaceRequest { face_id: face.face_id }).await.unwrap_err();
    assert_eq!(reason(&err), "FACE_NOT_FOUND");
    let now = users.get_user(GetUserRequest { user: by_id(&user.user_id) }).await.expect("get").into_inner();
    assert_eq!((now.face_count, now.enrollment_status), (0, 1), "NOT_ENROLLED again");
    assert_index_equals_store(&server, "alpha");
}

#[tokio::test]
async fn the_quality_gate_explains_refusals() {
    let server = TestServer::start_keyed().await;
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    create(&mut users, "gate").await;

    let gradient = image::RgbImage::from_fn(400, 300, |x, y| image::Rgb([(x / 2) as u8, (y / 2) as u8, 60]));
    let err = upload(&mut faces, "gate", png(&gradient)).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, "NO_FACE_DETECTED"));

    let err = upload(&mut faces, "gate", fixture_bytes("t1.jpg")).await.unwrap_err();
    assert_eq!(reason(&err), "MULTIPLE_FACES_DETECTED");
    use tonic_types::StatusExt;
    let info = err.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert_eq!(info.metadata.get("face_count").map(String::as_str), Some("6"));

    // yaoming.jpg at a fifth of its size: a 21 px face, below the 32 px minimum.
    let yao = fixture_rgb("yaoming.jpg");
    let tiny = imageops::resize(&yao, yao.width() / 5, yao.height() / 5, imageops::FilterType::Triangle);
    let err = upload(&mut faces, "gate", png(&tiny)).await.unwrap_err();
    assert_eq!(reason(&err), "FACE_TOO_SMALL", "{err:?}");
    let info = err.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert_eq!(info.metadata.get("min_face_size").map(String::as_str), Some("32.0"));

    // Heavily blurred: still a face, but not one to enroll.
    let blurred = imageops::blur(&yao, 4.0);
    let err = upload(&mut faces, "gate", png(&blurred)).await.unwrap_err();
    assert_eq!(reason(&err), "LOW_FACE_QUALITY", "{err:?}");
    let info = err.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert!(info.metadata.get("issues").is_some_and(|i| i.contains("BLURRY")), "{info:?}");

    let err = upload(&mut faces, "nobody", fixture_bytes("yaoming.jpg")).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "USER_NOT_FOUND"));
    assert_eq!(err.message(), "user is not registered");
    let err = upload(&mut faces, "gate", Vec::new()).await.unwrap_err();
    assert_eq!(reason(&err), "IMAGE_EMPTY");
    let request = UploadFaceRequest {
        user: by_external("gate"),
        image: fixture_bytes("yaoming.jpg").into(),
        comment: "c".repeat(501),
        ..UploadFaceRequest::default()
    };
    assert_eq!(reason(&faces.upload_face(request).await.unwrap_err()), "COMMENT_TOO_LONG");
    assert_index_equals_store(&server, "alpha");
}

#[tokio::test]
async fn five_faces_per_user_even_when_twenty_uploads_race() {
    let server = TestServer::start_keyed_with(|c| c.queue_capacity = 64).await;
    create(&mut server.users_as(ADMIN_A).await, "racer").await;
    let image = fixture_bytes("yaoming.jpg");
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut faces = server.faces_as(ADMIN_A).await;
        let image = image.clone();
        calls.push(tokio::spawn(async move { upload(&mut faces, "racer", image).await }));
    }
    let (mut ok, mut limited) = (0, 0);
    for call in calls {
        match call.await.expect("task") {
            Ok(_) => ok += 1,
            Err(err) => {
                assert_eq!((err.code(), reason(&err).as_str()), (Code::FailedPrecondition, "FACE_LIMIT_REACHED"));
                limited += 1;
            }
        }
    }
    assert_eq!((ok, limited), (5, 15));
    let mut faces = server.faces_as(ADMIN_A).await;
    assert_eq!(
        faces.list_faces(ListFacesRequest { user: by_external("racer") }).await.expect("list").into_inner().faces.len(),
        5
    );
    assert_index_equals_store(&server, "alpha");
}

#[tokio::test]
async fn duplicates_across_users_are_reported_or_rejected() {
    let server = TestServer::start_keyed().await;
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let yao = create(&mut users, "yao-1").await;
    create(&mut users, "yao-2").await;
    create(&mut users, "yao-3").await;
    upload(&mut faces, "yao-1", fixture_bytes("yaoming.jpg")).await.expect("first");

    // The same person, another photo, another user: REPORT (default) stores it and says so.
    let reply = upload(&mut faces, "yao-2", yao_in_players()).await.expect("stored under REPORT");
    assert_eq!(reply.duplicates.len(), 1, "{:?}", reply.duplicates);
    let dup = &reply.duplicates[0];
    assert_eq!((dup.user_id.as_str(), dup.external_id.as_str()), (yao.user_id.as_str(), "yao-1"));
    assert_eq!(dup.decision, 1, "MATCH: similarity {}", dup.similarity);

    // REJECT refuses it and stores nothing.
    let request = UploadFaceRequest {
        user: by_external("yao-3"),
        image: fixture_bytes("yaoming.jpg").into(),
        duplicate_policy: facevault::grpc::pb::DuplicatePolicy::Reject as i32,
        ..UploadFaceRequest::default()
    };
    let err = faces.upload_face(request).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::AlreadyExists, "DUPLICATE_FACE"));
    let three = users.get_user(crate::users::get(by_external("yao-3"))).await.expect("get").into_inner();
    assert_eq!(three.face_count, 0);

    // Somebody else under REJECT goes through; a second, different face of a user warns.
    let people = people();
    let reply = upload(&mut faces, "yao-3", people[0].clone()).await.expect("a different person");
    assert!(reply.duplicates.is_empty(), "{:?}", reply.duplicates);
    let reply = upload(&mut faces, "yao-1", people[1].clone()).await.expect("stored");
    assert_eq!(reply.warnings, vec!["SELF_MISMATCH".to_owned()]);
    // Tenant B never matches tenant A's faces.
    create(&mut server.users_as(ADMIN_B).await, "yao-b").await;
    let reply = upload(&mut server.faces_as(ADMIN_B).await, "yao-b", fixture_bytes("yaoming.jpg")).await.expect("b");
    assert!(reply.duplicates.is_empty());
    assert_index_equals_store(&server, "alpha");
    assert_index_equals_store(&server, "beta");
}

#[tokio::test]
async fn update_face_replaces_atomically_and_honours_tokens() {
    let server = TestServer::start_keyed().await;
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let user = create(&mut users, "upd").await;
    let people = people();

    // No face yet: UpdateFace enrolls.
    let update = |image: Vec<u8>, face_id: &str| UpdateFaceRequest {
        user: by_id(&user.user_id),
        face_id: face_id.to_owned(),
        image: image.into(),
        ..UpdateFaceRequest::default()
    };
    let first = faces.update_face(update(people[2].clone(), "")).await.expect("enroll").into_inner();
    assert!(first.replaced_face_id.is_empty());
    assert_eq!(first.enrollment_status, 2);
    let first_id = first.face.expect("face").face_id;
    let second = upload(&mut faces, "upd", people[2].clone()).await.expect("second").face.expect("face").face_id;

    // Replace a given face, then the oldest.
    let reply = faces.update_face(update(people[2].clone(), &second)).await.expect("replace given").into_inner();
    assert_eq!(reply.replaced_face_id, second);
    let third = reply.face.expect("face").face_id;
    let reply = faces.update_face(update(people[2].clone(), "")).await.expect("replace oldest").into_inner();
    assert_eq!(reply.replaced_face_id, first_id);
    let listed: Vec<String> = faces
        .list_faces(ListFacesRequest { user: by_id(&user.user_id) })
        .await
        .expect("list")
        .into_inner()
        .faces
        .into_iter()
        .map(|f| f.face_id)
        .collect();
    assert_eq!(listed, vec![third.clone(), reply.face.expect("face").face_id]);

    let err = faces.update_face(update(people[2].clone(), &second)).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "FACE_NOT_FOUND"));
    let missing = UpdateFaceRequest {
        user: by_external("ghost"),
        image: people[2].clone().into(),
        ..UpdateFaceRequest::default()
    };
    let err = faces.update_face(missing).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str(), err.message()),
        (Code::NotFound, "USER_NOT_FOUND", "user is not registered")
    );

    // Two concurrent replacements of one face: one wins, the other finds it gone.
    let (mut f1, mut f2) = (server.faces_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let (r1, r2) = tokio::join!(
        f1.update_face(update(people[2].clone(), &third)),
        f2.update_face(update(people[2].clone(), &third))
    );
    let outcomes = [r1.is_ok(), r2.is_ok()];
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 1, "{r1:?} {r2:?}");
    let loser = r1.err().or(r2.err()).expect("one failed");
    assert_eq!(reason(&loser), "FACE_NOT_FOUND");
    assert_index_equals_store(&server, "alpha");

    // A re-enrollment token authorises one UpdateFace of its user, without an API key.
    let token = users
        .update_user(UpdateUserRequest {
            user: by_id(&user.user_id),
            require_face_reenrollment: true,
            ..UpdateUserRequest::default()
        })
        .await
        .expect("require re-enrollment")
        .into_inner()
        .reenrollment_token;
    let other = create(&mut users, "someone-else").await;
    let mut with_token = server.faces_with(None, Some(&token)).await;
    let wrong_user = UpdateFaceRequest {
        user: by_id(&other.user_id),
        image: people[3].clone().into(),
        ..UpdateFaceRequest::default()
    };
    let err = with_token.update_face(wrong_user).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::Unauthenticated, "REENROLLMENT_TOKEN_INVALID"));
    let err = with_token.get_face(GetFaceRequest { face_id: third.clone() }).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::Unauthenticated, "REENROLLMENT_TOKEN_INVALID"));
    let reply = with_token.update_face(update(people[2].clone(), "")).await.expect("token works once").into_inner();
    assert_eq!(reply.enrollment_status, 2, "ENROLLED");
    assert_eq!(reply.face.expect("face").uploaded_by, "reenrollment-token");
    let err = with_token.update_face(update(people[2].clone(), "")).await.unwrap_err();
    assert_eq!(reason(&err), "REENROLLMENT_TOKEN_INVALID", "single use");
    let err =
        server.faces_with(None, Some("rt_forged")).await.update_face(update(people[2].clone(), "")).await.unwrap_err();
    assert_eq!(reason(&err), "REENROLLMENT_TOKEN_INVALID");
    assert_index_equals_store(&server, "alpha");
}

#[tokio::test]
async fn delete_user_leaves_no_trace() {
    let server = TestServer::start_keyed().await;
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let keep = create(&mut users, "keep").await;
    upload(&mut faces, "keep", fixture_bytes("yaoming.jpg")).await.expect("keep's face");
    let gone = create(&mut users, "gone").await;
    let people = people();
    let mut face_ids = Vec::new();
    for person in &people[4..6] {
        face_ids.push(upload(&mut faces, "gone", person.clone()).await.expect("upload").face.expect("face").face_id);
    }
    users
        .update_user(UpdateUserRequest {
            user: by_id(&gone.user_id),
            require_face_reenrollment: true,
            ..UpdateUserRequest::default()
        })
        .await
        .expect("token");
    users
        .delete_user(DeleteUserRequest { user: by_id(&gone.user_id), etag: String::new(), ..Default::default() })
        .await
        .expect("delete");

    let app = server.app();
    let uid = UserId::parse(&gone.user_id).expect("id").0.to_be_bytes();
    let fids: Vec<[u8; 8]> = face_ids.iter().map(|f| FaceId::parse(f).expect("id").0.to_be_bytes()).collect();
    for (tree, _) in app.store().expect("store").tree_sizes() {
        for (key, value) in app.store().expect("store").raw_entries(tree).expect("scan") {
            for needle in std::iter::once(&uid).chain(fids.iter()) {
                assert!(!key.windows(8).any(|w| w == needle), "{tree} still has a key of the deleted user");
            }
            assert!(!value.windows(4).any(|w| w == b"gone"), "{tree} still mentions the external id");
        }
    }
    let sizes: std::collections::BTreeMap<_, _> = app.store().expect("store").tree_sizes().into_iter().collect();
    assert_eq!(sizes["users"], 1);
    assert_eq!(sizes["faces"], 1);
    assert_eq!(sizes["reenrollment_tokens"], 0, "the outstanding token went with the user");
    let alpha = Tenant::new("alpha").expect("tenant");
    assert_eq!(app.index().entries(&alpha).len(), 1, "only keep's face is indexed");
    assert!(app.index().entries(&alpha).iter().all(|(_, u)| u.to_string() == keep.user_id));
    assert_index_equals_store(&server, "alpha");
}

#[tokio::test]
async fn remaining_reason_codes_of_the_face_and_user_rpcs() {
    use facevault::grpc::pb::{SearchFacesRequest, VerifyFaceRequest};
    let server = TestServer::start_keyed().await;
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let user = create(&mut users, "codes").await;
    upload(&mut faces, "codes", fixture_bytes("yaoming.jpg")).await.expect("upload");

    let stale = DeleteUserRequest { user: by_id(&user.user_id), etag: user.etag.clone(), ..Default::default() };
    let err = users.delete_user(stale).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::Aborted, "ETAG_MISMATCH"), "the upload moved the etag");
    let missing = UpdateUserRequest {
        user: by_external("ghost"),
        require_face_reenrollment: true,
        ..UpdateUserRequest::default()
    };
    assert_eq!(reason(&users.update_user(missing).await.unwrap_err()), "USER_NOT_FOUND");

    let no_ref =
        UploadFaceRequest { user: None, image: fixture_bytes("yaoming.jpg").into(), ..UploadFaceRequest::default() };
    assert_eq!(reason(&faces.upload_face(no_ref).await.unwrap_err()), "USER_REF_INVALID");
    let err = faces.list_faces(ListFacesRequest { user: by_external("ghost") }).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "USER_NOT_FOUND"));
    let image = GetFaceImageRequest { face_id: "fce_0000000000000001".into(), kind: ImageKind::Original as i32 };
    assert_eq!(reason(&faces.get_face_image(image).await.unwrap_err()), "FACE_NOT_FOUND");

    let gradient = png(&image::RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 90])));
    let search =
        SearchFacesRequest { image: gradient.clone().into(), top_k: 1, min_similarity: 0.0, ..Default::default() };
    assert_eq!(reason(&faces.search_faces(search).await.unwrap_err()), "NO_FACE_DETECTED");
    let verify = VerifyFaceRequest { user: by_external("codes"), image: gradient.into() };
    assert_eq!(reason(&faces.verify_face(verify).await.unwrap_err()), "NO_FACE_DETECTED");

    // faces:read is not faces:write nor faces:search.
    let mut reader = server.faces_as(crate::common::READER_A).await;
    let err = upload(&mut reader, "codes", fixture_bytes("yaoming.jpg")).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::PermissionDenied, "SCOPE_MISSING"));
    let update = UpdateFaceRequest {
        user: by_external("codes"),
        image: fixture_bytes("yaoming.jpg").into(),
        ..UpdateFaceRequest::default()
    };
    assert_eq!(reason(&reader.update_face(update).await.unwrap_err()), "SCOPE_MISSING");
    let search = SearchFacesRequest {
        image: fixture_bytes("yaoming.jpg").into(),
        top_k: 1,
        min_similarity: 0.0,
        ..Default::default()
    };
    assert_eq!(reason(&reader.search_faces(search).await.unwrap_err()), "SCOPE_MISSING");
    let listed = reader.list_faces(ListFacesRequest { user: by_external("codes") }).await.expect("faces:read lists");
    assert_eq!(listed.into_inner().faces.len(), 1);
    assert_index_equals_store(&server, "alpha");
}

/// `faces` pasted onto a grey 640x480 canvas: each image scaled by its factor, its centre at
/// the given point. PNG.
fn composite(faces: &[(&image::RgbImage, f32, (i64, i64))]) -> Vec<u8> {
    let mut canvas = image::RgbImage::from_pixel(640, 480, image::Rgb([128, 128, 128]));
    for (face, scale, (cx, cy)) in faces {
        let (w, h) = ((face.width() as f32 * scale) as u32, (face.height() as f32 * scale) as u32);
        let scaled = imageops::resize(*face, w, h, imageops::FilterType::CatmullRom);
        imageops::overlay(&mut canvas, &scaled, cx - i64::from(w / 2), cy - i64::from(h / 2));
    }
    png(&canvas)
}

#[tokio::test]
async fn a_dominant_face_is_enrolled_and_competing_faces_are_refused() {
    use facevault::grpc::pb::SearchFacesRequest;
    use facevault::grpc::pb::enrollment::MultipleFacesPolicy;
    use tonic_types::StatusExt;

    let server = TestServer::start_keyed().await;
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let yao = fixture_rgb("yaoming.jpg");
    let other = image::load_from_memory(&people()[0]).expect("png").to_rgb8();
    // Yao Ming in the middle, someone else smaller near the top-left corner.
    let dominant = composite(&[(&yao, 1.0, (320, 240)), (&other, 0.6, (70, 70))]);
    // Two people side by side, the same size.
    let pair = composite(&[(&yao, 1.0, (190, 240)), (&other, 1.0, (450, 240))]);

    create(&mut users, "dominant").await;
    let request = |image: &[u8], policy: MultipleFacesPolicy| UploadFaceRequest {
        user: by_external("dominant"),
        image: image.to_vec().into(),
        multiple_faces_policy: policy as i32,
        ..UploadFaceRequest::default()
    };
    // REJECT: two faces pass the gate, so the photo is refused, as before.
    let err = faces.upload_face(request(&dominant, MultipleFacesPolicy::Reject)).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, "MULTIPLE_FACES_DETECTED"));
    let info = err.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert_eq!(info.metadata.get("face_count").map(String::as_str), Some("2"));
    // DOMINANT (the default, sent as nothing at all): Yao Ming's face is enrolled, with a warning.
    let stored = upload(&mut faces, "dominant", dominant.clone()).await.expect("the dominant face is enrolled");
    assert_eq!(stored.warnings, vec!["OTHER_FACES_IGNORED".to_owned()]);
    let b = stored.face.expect("face").detection.expect("detection").r#box.expect("box");
    let centre = ((b.x_min + b.x_max) / 2.0, (b.y_min + b.y_max) / 2.0);
    assert!((centre.0 - 320.0).abs() < 40.0 && (centre.1 - 240.0).abs() < 60.0, "enrolled the face at {centre:?}");
    let search = SearchFacesRequest {
        image: fixture_bytes("yaoming.jpg").into(),
        top_k: 1,
        min_similarity: 0.0,
        ..Default::default()
    };
    let top = faces.search_faces(search).await.expect("search").into_inner().matches;
    let best = top.first().expect("a match");
    assert_eq!(best.external_id, "dominant");
    assert!(best.similarity >= 0.4, "Yao Ming's face was enrolled: {}", best.similarity);
    // A photo of one face carries no warning.
    let alone = upload(&mut faces, "dominant", fixture_bytes("yaoming.jpg")).await.expect("one face");
    assert!(alone.warnings.is_empty(), "{:?}", alone.warnings);

    // Two faces that compete are refused under either policy, and nothing is stored.
    for policy in [MultipleFacesPolicy::Dominant, MultipleFacesPolicy::Reject] {
        let err = faces.upload_face(request(&pair, policy)).await.unwrap_err();
        assert_eq!(reason(&err), "MULTIPLE_FACES_DETECTED", "{policy:?}: {err:?}");
    }
    let err = upload(&mut faces, "dominant", fixture_bytes("t1.jpg")).await.unwrap_err();
    assert_eq!(reason(&err), "MULTIPLE_FACES_DETECTED", "a group photo under DOMINANT");

    // UpdateFace takes the same policy.
    let update = UpdateFaceRequest {
        user: by_external("dominant"),
        image: dominant.clone().into(),
        multiple_faces_policy: MultipleFacesPolicy::Reject as i32,
        ..UpdateFaceRequest::default()
    };
    assert_eq!(reason(&faces.update_face(update.clone()).await.unwrap_err()), "MULTIPLE_FACES_DETECTED");
    let update = UpdateFaceRequest { multiple_faces_policy: MultipleFacesPolicy::Dominant as i32, ..update };
    let replaced = faces.update_face(update).await.expect("update with the dominant face").into_inner();
    assert!(replaced.warnings.contains(&"OTHER_FACES_IGNORED".to_owned()), "{:?}", replaced.warnings);
    let listed = faces.list_faces(ListFacesRequest { user: by_external("dominant") }).await.expect("list");
    assert_eq!(listed.into_inner().faces.len(), 2, "two uploads stored, one of them replaced");
    assert_index_equals_store(&server, "alpha");
}
