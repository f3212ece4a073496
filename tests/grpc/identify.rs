//! SearchFaces and VerifyFace through the real server, and everything surviving a restart.

use facevault::grpc::pb::{GetUserRequest, SearchFacesRequest, SearchFacesResponse, VerifyFaceRequest};
use tonic::Code;

use crate::common::{ADMIN_A, ADMIN_B, Faces, TestServer, fixture_bytes, people, reason, yao_in_players};
use crate::enroll::{assert_index_equals_store, upload};
use crate::users::{by_external, create};

async fn search(faces: &mut Faces, image: Vec<u8>) -> SearchFacesResponse {
    let request = SearchFacesRequest { image: image.into(), top_k: 0, min_similarity: 0.0, ..Default::default() };
    faces.search_faces(request).await.expect("SearchFaces").into_inner()
}

/// Enrolls Yao Ming (yaoming.jpg) and persons 0-5 as users yao, p0..p5 of tenant alpha.
async fn enroll_people(server: &TestServer) {
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    create(&mut users, "yao").await;
    upload(&mut faces, "yao", fixture_bytes("yaoming.jpg")).await.expect("yao");
    for (i, person) in people().into_iter().take(6).enumerate() {
        create(&mut users, &format!("p{i}")).await;
        upload(&mut faces, &format!("p{i}"), person).await.expect("person");
    }
}

#[tokio::test]
async fn search_and_verify_find_the_right_person() {
    let server = TestServer::start_keyed().await;
    enroll_people(&server).await;
    let mut faces = server.faces_as(ADMIN_A).await;

    // Another photo of Yao Ming: he comes first, as a MATCH.
    let reply = search(&mut faces, yao_in_players()).await;
    assert!(!reply.matches.is_empty());
    let best = &reply.matches[0];
    assert_eq!((best.external_id.as_str(), best.decision), ("yao", 1), "{:?}", reply.matches);
    assert!(reply.query_face.as_ref().is_some_and(|f| f.embedding.is_empty()));
    let users: Vec<&str> = reply.matches.iter().map(|m| m.external_id.as_str()).collect();
    let unique: std::collections::BTreeSet<&str> = users.iter().copied().collect();
    assert_eq!(users.len(), unique.len(), "one entry per user");

    // Nobody enrolled looks like persons 6-8: an empty list, not an error.
    for person in people().into_iter().skip(6) {
        let reply = search(&mut faces, person).await;
        assert!(reply.matches.is_empty(), "{:?}", reply.matches);
    }
    // t1.jpg holds six faces: the largest is searched, the others counted.
    let reply = search(&mut faces, fixture_bytes("t1.jpg")).await;
    assert_eq!(reply.other_faces, 5);
    assert_eq!(reply.matches.len(), 1, "the largest face of t1.jpg is one of the enrolled persons");

    // Every search result above the floor, best first; min_similarity -1 returns everyone.
    let all = faces
        .search_faces(SearchFacesRequest {
            image: yao_in_players().into(),
            top_k: 100,
            min_similarity: -1.0,
            ..Default::default()
        })
        .await
        .expect("search")
        .into_inner();
    assert_eq!(all.matches.len(), 7);
    assert!(all.matches.windows(2).all(|w| w[0].similarity >= w[1].similarity));
    let err = faces
        .search_faces(SearchFacesRequest {
            image: yao_in_players().into(),
            top_k: 101,
            min_similarity: 0.0,
            ..Default::default()
        })
        .await;
    assert_eq!(reason(&err.unwrap_err()), "TOP_K_INVALID");
    let err = faces
        .search_faces(SearchFacesRequest {
            image: yao_in_players().into(),
            top_k: 1,
            min_similarity: 1.5,
            ..Default::default()
        })
        .await;
    assert_eq!(reason(&err.unwrap_err()), "MIN_SIMILARITY_INVALID");

    let verify = |user: &str, image: Vec<u8>| VerifyFaceRequest { user: by_external(user), image: image.into() };
    let yes = faces.verify_face(verify("yao", yao_in_players())).await.expect("verify").into_inner();
    assert!(yes.r#match && yes.similarity >= yes.threshold, "{yes:?}");
    assert!(yes.best_face_id.starts_with("fce_"));
    let no = faces.verify_face(verify("p0", yao_in_players())).await.expect("verify").into_inner();
    assert!(!no.r#match && no.similarity < no.threshold, "{no:?}");
    create(&mut server.users_as(ADMIN_A).await, "faceless").await;
    let err = faces.verify_face(verify("faceless", yao_in_players())).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::FailedPrecondition, "NO_ENROLLED_FACE"));
    let err = faces.verify_face(verify("nobody", yao_in_players())).await.unwrap_err();
    assert_eq!(reason(&err), "USER_NOT_FOUND");

    // Tenant B neither finds nor verifies tenant A's people.
    let mut b = server.faces_as(ADMIN_B).await;
    assert!(search(&mut b, yao_in_players()).await.matches.is_empty());
    let err = b.verify_face(verify("yao", yao_in_players())).await.unwrap_err();
    assert_eq!(reason(&err), "USER_NOT_FOUND");
}

#[tokio::test]
async fn a_restart_keeps_everything_and_search_answers_the_same() {
    let server = TestServer::start_keyed().await;
    enroll_people(&server).await;
    let mut faces = server.faces_as(ADMIN_A).await;
    let before = search(&mut faces, yao_in_players()).await;
    let user_before = server
        .users_as(ADMIN_A)
        .await
        .get_user(GetUserRequest { user: by_external("yao") })
        .await
        .expect("get")
        .into_inner();

    let server = server.restart().await;
    let mut faces = server.faces_as(ADMIN_A).await;
    let after = search(&mut faces, yao_in_players()).await;
    assert_eq!(before.matches, after.matches, "same users, faces and similarities");
    let user_after = server
        .users_as(ADMIN_A)
        .await
        .get_user(GetUserRequest { user: by_external("yao") })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(user_before, user_after);
    assert_index_equals_store(&server, "alpha");
}
