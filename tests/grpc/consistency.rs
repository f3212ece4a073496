//! Reads racing writes answer from one consistent view: VerifyFace, ListFaces, SearchFaces and
//! GetFaceImage against a user whose faces are uploaded, replaced and deleted, and who is
//! deleted and created again, all at once. Every answer must be the old state or the new one:
//! never INTERNAL, never a face or user that was not there.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use facevault::domain::{EMBEDDING_DIM, Embedding, FaceId, Tenant, UserId};
use facevault::grpc::pb::{
    DeleteFaceRequest, DeleteUserRequest, GetFaceImageRequest, ImageKind, ListFacesRequest, SearchFacesRequest,
    UpdateFaceRequest, VerifyFaceRequest,
};
use facevault::search::sketch::splitmix64;
use tokio::sync::watch;
use tonic::Code;

use crate::common::{ADMIN_A, TestServer, fixture_bytes, reason};
use crate::enroll::{assert_index_equals_store, upload};
use crate::users::{by_external, by_id, create};

/// How long the writer churns while the readers read.
const CHURN: Duration = Duration::from_secs(5);
/// Unrelated faces in the tenant: each search scans them exactly, which widens the window
/// between the index scan and the lookup of the users it found.
const FILLER: u64 = 20_000;

/// Every user and face the writer ever created (ids are random and never reused, so an answer
/// naming anything else is not a state that existed).
#[derive(Default)]
struct Seen {
    users: HashSet<String>,
    faces: HashSet<String>,
    /// Faces in the order they were created.
    order: Vec<String>,
}

fn filler(index: &facevault::search::FaceIndex) {
    let tenant = Tenant::new("alpha").expect("tenant");
    let mut state = 0xF111_E400_u64;
    for i in 0..FILLER {
        let raw = (0..EMBEDDING_DIM).map(|_| (splitmix64(&mut state) >> 40) as f32 / (1u64 << 23) as f32 - 1.0);
        let embedding = Embedding::from_raw(raw.collect()).expect("non-zero");
        index.insert(&tenant, FaceId(u64::MAX - i), UserId(u64::MAX - i), &embedding);
    }
}

/// Churn cycles: the user is created and gets a face, which is replaced (UpdateFace); every
/// other cycle that face is deleted (DeleteFace); then the user is deleted (DeleteUser).
async fn churn(server: &TestServer, seen: Arc<Mutex<Seen>>, done: watch::Sender<bool>) {
    let (mut users, mut faces) = (server.users_as(ADMIN_A).await, server.faces_as(ADMIN_A).await);
    let photo = fixture_bytes("yaoming.jpg");
    let started = Instant::now();
    let mut cycles = 0;
    while started.elapsed() < CHURN {
        let user = create(&mut users, "target").await;
        seen.lock().expect("seen").users.insert(user.user_id.clone());
        let record = |face: Option<facevault::grpc::pb::Face>| {
            let id = face.expect("a stored face").face_id;
            let mut seen = seen.lock().expect("seen");
            seen.faces.insert(id.clone());
            seen.order.push(id.clone());
            id
        };
        let first = record(upload(&mut faces, "target", photo.clone()).await.expect("upload").face);
        let request = UpdateFaceRequest {
            user: by_external("target"),
            face_id: first,
            image: photo.clone().into(),
            ..UpdateFaceRequest::default()
        };
        let second = record(faces.update_face(request).await.expect("UpdateFace").into_inner().face);
        if cycles % 2 == 1 {
            faces.delete_face(DeleteFaceRequest { face_id: second, ..Default::default() }).await.expect("DeleteFace");
        }
        let request = DeleteUserRequest { user: by_id(&user.user_id), ..DeleteUserRequest::default() };
        users.delete_user(request).await.expect("DeleteUser");
        cycles += 1;
    }
    eprintln!("writer: {cycles} cycles in {:?}", started.elapsed());
    let _ = done.send(true);
}

fn unexpected(what: &str, status: &tonic::Status) -> ! {
    panic!("{what} racing writes: {:?} {} {:?}", status.code(), reason(status), status.message())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_racing_deletes_and_updates_see_one_state() {
    let server = TestServer::start_keyed_with(|config| config.search_exact_max_faces = usize::MAX).await;
    let index = server.app().index().clone();
    tokio::task::spawn_blocking(move || filler(&index)).await.expect("filler");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (done_tx, done) = watch::channel(false);
    let photo = bytes::Bytes::from(fixture_bytes("yaoming.jpg"));

    // Each reader counts its answers by kind and returns the (user, face) ids they named, checked
    // at the end against everything the writer created (a reply may arrive before the writer
    // has recorded the face it names).
    let verify = {
        let (mut faces, done, photo) = (server.faces_as(ADMIN_A).await, done.clone(), photo.clone());
        tokio::spawn(async move {
            let (mut answers, mut named) = ([0u32; 3], Vec::new());
            while !*done.borrow() {
                let request = VerifyFaceRequest { user: by_external("target"), image: photo.clone() };
                match faces.verify_face(request).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        assert!(reply.r#match && reply.similarity > 0.99, "the same photo: {reply:?}");
                        named.push((None, reply.best_face_id));
                        answers[0] += 1;
                    }
                    Err(s) if s.code() == Code::NotFound && reason(&s) == "USER_NOT_FOUND" => answers[1] += 1,
                    Err(s) if s.code() == Code::FailedPrecondition && reason(&s) == "NO_ENROLLED_FACE" => {
                        answers[2] += 1;
                    }
                    Err(s) => unexpected("VerifyFace", &s),
                }
            }
            (answers, named)
        })
    };
    let list = {
        let (mut faces, done) = (server.faces_as(ADMIN_A).await, done.clone());
        tokio::spawn(async move {
            let (mut answers, mut named) = ([0u32; 2], Vec::new());
            while !*done.borrow() {
                match faces.list_faces(ListFacesRequest { user: by_external("target") }).await {
                    Ok(reply) => {
                        let listed = reply.into_inner().faces;
                        assert!(listed.len() <= 1, "the user never has more than one face: {listed:?}");
                        let owners: HashSet<&str> = listed.iter().map(|f| f.user_id.as_str()).collect();
                        assert!(owners.len() <= 1, "one user's faces: {listed:?}");
                        named.extend(listed.into_iter().map(|f| (Some(f.user_id), f.face_id)));
                        answers[0] += 1;
                    }
                    Err(s) if s.code() == Code::NotFound && reason(&s) == "USER_NOT_FOUND" => answers[1] += 1,
                    Err(s) => unexpected("ListFaces", &s),
                }
            }
            (answers, named)
        })
    };
    let image = {
        let (mut faces, seen, done) = (server.faces_as(ADMIN_A).await, seen.clone(), done.clone());
        tokio::spawn(async move {
            let mut answers = [0u32; 2];
            while !*done.borrow() {
                // The three newest faces: some there, some just deleted.
                let ids: Vec<String> = seen.lock().expect("seen").order.iter().rev().take(3).cloned().collect();
                if ids.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                for face_id in ids {
                    let request = GetFaceImageRequest { face_id, kind: ImageKind::Thumbnail as i32 };
                    match faces.get_face_image(request).await {
                        Ok(reply) => {
                            assert!(!reply.into_inner().data.is_empty());
                            answers[0] += 1;
                        }
                        Err(s) if s.code() == Code::NotFound && reason(&s) == "FACE_NOT_FOUND" => answers[1] += 1,
                        Err(s) => unexpected("GetFaceImage", &s),
                    }
                }
            }
            answers
        })
    };
    let mut searches = Vec::new();
    for _ in 0..2 {
        let (mut faces, done, photo) = (server.faces_as(ADMIN_A).await, done.clone(), photo.clone());
        searches.push(tokio::spawn(async move {
            let (mut answers, mut named) = ([0u32; 2], Vec::new());
            while !*done.borrow() {
                let request =
                    SearchFacesRequest { image: photo.clone(), top_k: 5, min_similarity: 0.0, ..Default::default() };
                let reply = match faces.search_faces(request).await {
                    Ok(reply) => reply.into_inner(),
                    Err(s) => unexpected("SearchFaces", &s),
                };
                answers[usize::from(reply.matches.is_empty())] += 1;
                for m in reply.matches {
                    assert_eq!(m.external_id, "target", "a match names its user: {m:?}");
                    named.push((Some(m.user_id), m.face_id));
                }
            }
            (answers, named)
        }));
    }

    churn(&server, seen.clone(), done_tx).await;
    let (verify, mut named) = verify.await.expect("verify reader");
    let (list, listed) = list.await.expect("list reader");
    let image = image.await.expect("image reader");
    named.extend(listed);
    let mut search = [0; 2];
    for s in searches {
        let (s, found) = s.await.expect("search reader");
        search = [search[0] + s[0], search[1] + s[1]];
        named.extend(found);
    }
    let seen = seen.lock().expect("seen");
    for (user, face) in &named {
        assert!(seen.faces.contains(face), "an answer named face {face}, which never existed");
        assert!(user.as_ref().is_none_or(|u| seen.users.contains(u)), "an answer named user {user:?}");
    }
    eprintln!(
        "VerifyFace ok/USER_NOT_FOUND/NO_ENROLLED_FACE {verify:?}; ListFaces ok/USER_NOT_FOUND {list:?}; \
         GetFaceImage ok/FACE_NOT_FOUND {image:?}; SearchFaces with/without a match {search:?}"
    );
    assert!(verify.iter().sum::<u32>() > 0 && list[0] > 0 && search.iter().sum::<u32>() > 0, "the readers ran");

    // The filler rows are in the index only; take them out before comparing it with the store.
    let tenant = Tenant::new("alpha").expect("tenant");
    for i in 0..FILLER {
        server.app().index().remove(&tenant, FaceId(u64::MAX - i));
    }
    assert_index_equals_store(&server, "alpha");
}
