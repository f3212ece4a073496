//! Face lists through the real server (design/API-2.md, "Face lists"): the ListService rpcs,
//! their scopes and tenant isolation; a BLOCK list refuses a person at upload, update (also by
//! a re-enrollment token, told only the reason) and import; WATCH reports, ALLOW waives
//! DUPLICATE_FACE; entries are never users' faces; lists survive a restart. And the SearchFaces
//! additions: face_id, all_faces, metadata_filter and list_matches.

use std::collections::{BTreeMap, BTreeSet};

use facevault::domain::Tenant;
use facevault::grpc::pb::import_result::ImportOutcome;
use facevault::grpc::pb::list_service_client::ListServiceClient;
use facevault::grpc::pb::{
    AddListEntryRequest, CreateFaceListRequest, CreateUserRequest, DeleteFaceListRequest, DeleteListEntryRequest,
    DuplicatePolicy, FaceList, GetFaceListRequest, GetUserRequest, ListFaceListsRequest, ListFacesRequest, ListKind,
    ListListEntriesRequest, SearchFacesRequest, SearchFacesResponse, UpdateFaceRequest, UpdateUserRequest,
    UploadFaceRequest, User, add_list_entry_request::Source,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::{
    ADMIN_A, ADMIN_B, Credentials, Faces, LISTS_READER_A, Lists, READER_A, TestServer, fixture_bytes, people, reason,
    yao_in_players,
};
use crate::enroll::assert_index_equals_store;
use crate::import::{import, item, item_reason, outcome};
use crate::tokens::user_with_token;
use crate::users::{by_external, by_id, create, mask};

async fn create_list(lists: &mut Lists, name: &str, kind: ListKind) -> FaceList {
    let list = FaceList { name: name.into(), kind: kind as i32, ..FaceList::default() };
    lists.create_face_list(CreateFaceListRequest { list: Some(list) }).await.expect("CreateFaceList").into_inner()
}

fn from_image(list: &FaceList, image: Vec<u8>) -> AddListEntryRequest {
    AddListEntryRequest {
        list_id: list.list_id.clone(),
        source: Some(Source::Image(image.into())),
        ..Default::default()
    }
}

fn upload_request(user: &str, image: Vec<u8>, reject: bool) -> UploadFaceRequest {
    UploadFaceRequest {
        user: by_external(user),
        image: image.into(),
        duplicate_policy: if reject { DuplicatePolicy::Reject as i32 } else { DuplicatePolicy::Report as i32 },
        ..Default::default()
    }
}

async fn enroll(server: &TestServer, faces: &mut Faces, user: &str, image: Vec<u8>) -> String {
    create(&mut server.users_as(ADMIN_A).await, user).await;
    let reply = faces.upload_face(upload_request(user, image, false)).await.expect("upload").into_inner();
    reply.face.expect("face").face_id
}

/// The ErrorInfo metadata of a failed call.
fn meta(status: &tonic::Status) -> std::collections::HashMap<String, String> {
    status.get_error_details().error_info().map(|i| i.metadata.clone()).unwrap_or_default()
}

/// The index's entries of the tenant's lists equal what the store holds.
fn assert_lists_indexed(server: &TestServer, tenant: &str) {
    let tenant = Tenant::new(tenant).expect("tenant");
    let prefix = facevault::storage::keys::tenant_prefix(&tenant);
    let stored: BTreeSet<u64> = server
        .app()
        .store()
        .expect("store")
        .raw_entries("list_entries")
        .expect("scan")
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| u64::from_be_bytes(k[prefix.len()..].try_into().expect("8 bytes")))
        .collect();
    let indexed: BTreeSet<u64> = server.app().index().lists().entries(&tenant).into_iter().map(|(e, _)| e.0).collect();
    assert_eq!(stored, indexed, "the index's list entries and the store's disagree");
}

#[tokio::test]
async fn lists_are_managed_per_tenant_with_scopes_and_clear_errors() {
    let server = TestServer::start_keyed().await;
    let mut lists = server.lists_as(ADMIN_A).await;
    let mut faces = server.faces_as(ADMIN_A).await;

    let block = create_list(&mut lists, "fraud ring", ListKind::Block).await;
    assert!(block.list_id.starts_with("lst_"), "{}", block.list_id);
    assert_eq!((block.name.as_str(), block.kind, block.entry_count), ("fraud ring", ListKind::Block as i32, 0));
    assert!(block.threshold > 0.3 && block.threshold < 1.0, "the match threshold: {}", block.threshold);
    let watch = lists
        .create_face_list(CreateFaceListRequest {
            list: Some(FaceList {
                name: "vip".into(),
                kind: ListKind::Watch as i32,
                threshold: 0.6,
                ..FaceList::default()
            }),
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(watch.threshold, 0.6);

    // Validation.
    for (list, want) in [
        (FaceList { name: String::new(), kind: ListKind::Block as i32, ..FaceList::default() }, "LIST_NAME_INVALID"),
        (FaceList { name: "x".repeat(101), kind: ListKind::Watch as i32, ..FaceList::default() }, "LIST_NAME_INVALID"),
        (FaceList { name: "ok".into(), kind: 1, threshold: 1.5, ..FaceList::default() }, "THRESHOLD_INVALID"),
        (FaceList { name: "ok".into(), kind: 1, threshold: -0.2, ..FaceList::default() }, "THRESHOLD_INVALID"),
        (FaceList { name: "ok".into(), kind: 7, ..FaceList::default() }, "LIST_KIND_INVALID"),
        (FaceList { name: "no kind".into(), ..FaceList::default() }, "LIST_KIND_INVALID"),
    ] {
        let err = lists.create_face_list(CreateFaceListRequest { list: Some(list) }).await.unwrap_err();
        assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, want));
    }

    // Entries: from an image, and copied from a stored face.
    let face_id = enroll(&server, &mut faces, "p0", people()[0].clone()).await;
    let added = lists.add_list_entry(from_image(&block, people()[1].clone())).await.expect("add").into_inner();
    let entry = added.entry.expect("entry");
    assert!(entry.entry_id.starts_with("ent_"));
    assert_eq!((entry.list_id.as_str(), entry.added_by.as_str()), (block.list_id.as_str(), "admin-a"));
    assert!(!entry.detection.as_ref().expect("detection").thumbnail.is_empty(), "the thumbnail is returned");
    assert!(added.enrolled_matches.is_empty(), "nobody enrolled is person 1");
    let copied = lists
        .add_list_entry(AddListEntryRequest {
            list_id: block.list_id.clone(),
            source: Some(Source::FaceId(face_id.clone())),
            comment: "seen at branch 12".into(),
            ..Default::default()
        })
        .await
        .expect("add from face")
        .into_inner();
    assert_eq!(copied.entry.as_ref().expect("entry").source_face_id, face_id);
    let who: Vec<&str> = copied.enrolled_matches.iter().map(|m| m.external_id.as_str()).collect();
    assert_eq!(who, ["p0"], "the operator learns who already matches the entry");
    assert!(copied.enrolled_matches[0].similarity > 0.99);

    // Errors of AddListEntry.
    let err = lists.add_list_entry(from_image(&block, fixture_bytes("t1.jpg"))).await.unwrap_err();
    assert_eq!(reason(&err), "MULTIPLE_FACES_DETECTED", "an entry is exactly one face");
    let err = lists
        .add_list_entry(AddListEntryRequest {
            list_id: block.list_id.clone(),
            source: Some(Source::FaceId("fce_0000000000000001".into())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "FACE_NOT_FOUND"));
    let err = lists
        .add_list_entry(from_image(
            &FaceList { list_id: "lst_0000000000000001".into(), ..FaceList::default() },
            people()[2].clone(),
        ))
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "LIST_NOT_FOUND"));

    // Reads: counts, pages.
    let got =
        lists.get_face_list(GetFaceListRequest { list_id: block.list_id.clone() }).await.expect("get").into_inner();
    assert_eq!(got.entry_count, 2);
    let page = lists
        .list_face_lists(ListFaceListsRequest { page_size: 1, ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.lists.len(), 1);
    let rest = lists
        .list_face_lists(ListFaceListsRequest { page_size: 10, page_token: page.next_page_token })
        .await
        .expect("list")
        .into_inner();
    let mut ids: Vec<String> = page.lists.iter().chain(&rest.lists).map(|l| l.list_id.clone()).collect();
    ids.sort();
    let mut want = vec![block.list_id.clone(), watch.list_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert!(rest.next_page_token.is_empty());
    let entries = lists
        .list_list_entries(ListListEntriesRequest {
            list_id: block.list_id.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("entries")
        .into_inner();
    assert_eq!(entries.entries.len(), 1);
    assert!(!entries.next_page_token.is_empty());

    // Scopes: reading needs lists:read, writing lists:write; other keys are refused.
    let mut reader = server.lists_as(LISTS_READER_A).await;
    reader.get_face_list(GetFaceListRequest { list_id: block.list_id.clone() }).await.expect("lists:read reads");
    let err = reader.add_list_entry(from_image(&block, people()[3].clone())).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::PermissionDenied, "SCOPE_MISSING"));
    let err = reader.delete_face_list(DeleteFaceListRequest { list_id: block.list_id.clone() }).await.unwrap_err();
    assert_eq!(reason(&err), "SCOPE_MISSING");
    let mut faces_reader = server.lists_as(READER_A).await;
    let err = faces_reader.list_face_lists(ListFaceListsRequest::default()).await.unwrap_err();
    assert_eq!(reason(&err), "SCOPE_MISSING", "faces:read is not lists:read");
    let err = server.lists_as(None).await.list_face_lists(ListFaceListsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Another tenant sees none of it, and cannot touch it.
    let mut other = server.lists_as(ADMIN_B).await;
    let err = other.get_face_list(GetFaceListRequest { list_id: block.list_id.clone() }).await.unwrap_err();
    assert_eq!(reason(&err), "LIST_NOT_FOUND");
    assert!(other.list_face_lists(ListFaceListsRequest::default()).await.expect("list").into_inner().lists.is_empty());
    let err = other.add_list_entry(from_image(&block, people()[3].clone())).await.unwrap_err();
    assert_eq!(reason(&err), "LIST_NOT_FOUND");
    let err = other.delete_list_entry(DeleteListEntryRequest { entry_id: entry.entry_id.clone() }).await.unwrap_err();
    assert_eq!(reason(&err), "ENTRY_NOT_FOUND");
    let err = other.delete_face_list(DeleteFaceListRequest { list_id: block.list_id.clone() }).await.unwrap_err();
    assert_eq!(reason(&err), "LIST_NOT_FOUND");
    let search = server
        .faces_as(ADMIN_B)
        .await
        .search_faces(SearchFacesRequest { image: people()[1].clone().into(), ..Default::default() })
        .await
        .expect("search")
        .into_inner();
    assert!(search.list_matches.is_empty(), "tenant beta's search sees no list of alpha");

    // Deleting: an entry, then the list with the rest.
    lists.delete_list_entry(DeleteListEntryRequest { entry_id: entry.entry_id.clone() }).await.expect("delete entry");
    let err = lists.delete_list_entry(DeleteListEntryRequest { entry_id: entry.entry_id.clone() }).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "ENTRY_NOT_FOUND"));
    assert_lists_indexed(&server, "alpha");
    lists.delete_face_list(DeleteFaceListRequest { list_id: block.list_id.clone() }).await.expect("delete list");
    let err = lists
        .list_list_entries(ListListEntriesRequest { list_id: block.list_id.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "LIST_NOT_FOUND");
    assert_lists_indexed(&server, "alpha");
    assert!(server.app().index().lists().entries(&Tenant::new("alpha").unwrap()).is_empty());
    // The face copied into the list is still its user's.
    let listed = faces.list_faces(ListFacesRequest { user: by_external("p0") }).await.expect("faces").into_inner();
    assert_eq!(listed.faces.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_blocked_person_is_refused_at_upload_update_import_and_by_a_token() {
    let server = TestServer::start_keyed().await;
    let mut lists = server.lists_as(ADMIN_A).await;
    let mut faces = server.faces_as(ADMIN_A).await;
    let blocked = people()[1].clone();
    let block = create_list(&mut lists, "blocked", ListKind::Block).await;
    let entry = lists.add_list_entry(from_image(&block, blocked.clone())).await.expect("add").into_inner();
    let entry_id = entry.entry.expect("entry").entry_id;

    // The entry is not a user's face: a search finds no user, only the list.
    let search = faces
        .search_faces(SearchFacesRequest { image: blocked.clone().into(), ..Default::default() })
        .await
        .expect("search")
        .into_inner();
    assert!(search.matches.is_empty(), "a list entry is never a user's face: {:?}", search.matches);
    assert_eq!(search.list_matches.len(), 1);
    assert_eq!(
        (search.list_matches[0].entry_id.as_str(), search.list_matches[0].kind),
        (entry_id.as_str(), ListKind::Block as i32)
    );
    assert_eq!(search.list_matches[0].list_name, "blocked");

    // UploadFace.
    create(&mut server.users_as(ADMIN_A).await, "u1").await;
    let err = faces.upload_face(upload_request("u1", blocked.clone(), false)).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::FailedPrecondition, "FACE_IN_BLOCKLIST"));
    let info = meta(&err);
    assert_eq!((info["list_id"].as_str(), info["entry_id"].as_str()), (block.list_id.as_str(), entry_id.as_str()));
    assert!(info["similarity"].parse::<f32>().expect("similarity") > 0.99);
    let listed = faces.list_faces(ListFacesRequest { user: by_external("u1") }).await.expect("faces").into_inner();
    assert!(listed.faces.is_empty(), "nothing stored");

    // UpdateFace (first face and replacing one).
    let err = faces
        .update_face(UpdateFaceRequest { user: by_external("u1"), image: blocked.clone().into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "FACE_IN_BLOCKLIST");
    faces.upload_face(upload_request("u1", people()[2].clone(), false)).await.expect("another person is fine");
    let err = faces
        .update_face(UpdateFaceRequest { user: by_external("u1"), image: blocked.clone().into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "FACE_IN_BLOCKLIST");

    // A re-enrollment token's holder learns the reason only.
    let (holder, token) = user_with_token(&server, "holder").await;
    let mut with_token = server.faces_with(None, Some(&token)).await;
    let err = with_token
        .update_face(UpdateFaceRequest { user: by_id(&holder), image: blocked.clone().into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::FailedPrecondition, "FACE_IN_BLOCKLIST"));
    assert!(meta(&err).is_empty(), "a token holder sees no list, entry or similarity: {:?}", meta(&err));
    assert!(!err.message().contains(&block.list_id) && !err.message().contains(&entry_id), "{}", err.message());

    // ImportFaces: the item fails as UploadFace would, and leaves no user behind.
    let results = import(
        &mut faces,
        vec![item("row-1", "imported-blocked", blocked.clone()), item("row-2", "imported-ok", people()[3].clone())],
    )
    .await
    .expect("import");
    assert_eq!(outcome(&results["row-1"]), ImportOutcome::Failed);
    assert_eq!(item_reason(&results["row-1"]), "FACE_IN_BLOCKLIST");
    assert_eq!(outcome(&results["row-2"]), ImportOutcome::Created);
    let gone = server.users_as(ADMIN_A).await.get_user(GetUserRequest { user: by_external("imported-blocked") }).await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound, "the user created for the refused item is gone");

    // Once the entry is deleted the person enrolls.
    lists.delete_list_entry(DeleteListEntryRequest { entry_id }).await.expect("delete entry");
    faces.upload_face(upload_request("u1", blocked, false)).await.expect("no longer blocked");
    assert_index_equals_store(&server, "alpha");
    server.stop().await;
}

#[tokio::test]
async fn watch_reports_allow_waives_duplicates_and_lists_survive_a_restart() {
    let server = TestServer::start_keyed().await;
    let mut lists = server.lists_as(ADMIN_A).await;
    let mut faces = server.faces_as(ADMIN_A).await;

    // WATCH: stored and reported.
    let watch = create_list(&mut lists, "watched", ListKind::Watch).await;
    lists.add_list_entry(from_image(&watch, people()[2].clone())).await.expect("add");
    create(&mut server.users_as(ADMIN_A).await, "w1").await;
    let reply = faces.upload_face(upload_request("w1", people()[2].clone(), false)).await.expect("stored").into_inner();
    assert_eq!(reply.list_matches.len(), 1);
    assert_eq!(
        (reply.list_matches[0].list_id.as_str(), reply.list_matches[0].kind),
        (watch.list_id.as_str(), ListKind::Watch as i32)
    );

    // ALLOW: Yao Ming is enrolled; a second user with his face is a DUPLICATE_FACE under REJECT
    // until his other photo is on an allowlist.
    enroll(&server, &mut faces, "yao", fixture_bytes("yaoming.jpg")).await;
    create(&mut server.users_as(ADMIN_A).await, "yao-twin").await;
    let err = faces.upload_face(upload_request("yao-twin", yao_in_players(), true)).await.unwrap_err();
    assert_eq!(reason(&err), "DUPLICATE_FACE");
    let allow = create_list(&mut lists, "known twins", ListKind::Allow).await;
    let added = lists.add_list_entry(from_image(&allow, yao_in_players())).await.expect("add").into_inner();
    assert_eq!(added.enrolled_matches.iter().map(|m| m.external_id.as_str()).collect::<Vec<_>>(), ["yao"]);
    let reply =
        faces.upload_face(upload_request("yao-twin", yao_in_players(), true)).await.expect("allowed").into_inner();
    assert_eq!(reply.duplicates.first().map(|d| d.external_id.as_str()), Some("yao"), "duplicates still listed");
    assert!(reply.list_matches.iter().any(|m| m.kind == ListKind::Allow as i32));

    // A retried AddListEntry adds one entry.
    let retry = || AddListEntryRequest { request_id: "add-once".into(), ..from_image(&watch, people()[4].clone()) };
    let first = lists.add_list_entry(retry()).await.expect("add").into_inner();
    let again = lists.add_list_entry(retry()).await.expect("replay").into_inner();
    assert_eq!(first.entry.as_ref().map(|e| &e.entry_id), again.entry.as_ref().map(|e| &e.entry_id));
    let count = lists
        .get_face_list(GetFaceListRequest { list_id: watch.list_id.clone() })
        .await
        .expect("get")
        .into_inner()
        .entry_count;
    assert_eq!(count, 2);

    // A BLOCK list, then a restart: everything is still in force.
    let block = create_list(&mut lists, "blocked", ListKind::Block).await;
    lists.add_list_entry(from_image(&block, people()[5].clone())).await.expect("add");
    assert_lists_indexed(&server, "alpha");
    let server = server.restart().await;
    assert_lists_indexed(&server, "alpha");
    let mut faces = server.faces_as(ADMIN_A).await;
    create(&mut server.users_as(ADMIN_A).await, "after-restart").await;
    let err = faces.upload_face(upload_request("after-restart", people()[5].clone(), false)).await.unwrap_err();
    assert_eq!(reason(&err), "FACE_IN_BLOCKLIST");
    let reply = faces
        .upload_face(upload_request("after-restart", people()[4].clone(), false))
        .await
        .expect("watched")
        .into_inner();
    assert_eq!(reply.list_matches.first().map(|m| m.list_id.as_str()), Some(watch.list_id.as_str()));
    server.stop().await;
}

async fn search(faces: &mut Faces, request: SearchFacesRequest) -> SearchFacesResponse {
    faces.search_faces(request).await.expect("search").into_inner()
}

#[tokio::test]
async fn search_by_face_id_every_face_of_a_group_photo_and_within_a_metadata_filter() {
    let server = TestServer::start_keyed().await;
    let mut faces = server.faces_as(ADMIN_A).await;
    let mut users = server.users_as(ADMIN_A).await;
    let photos = people();
    // The six people of t1.jpg, in two groups.
    let mut face_ids = Vec::new();
    for (i, photo) in photos.iter().take(6).enumerate() {
        let group = if i % 2 == 0 { "even" } else { "odd" };
        let user = User {
            external_id: format!("p{i}"),
            metadata: BTreeMap::from([("group".to_owned(), group.to_owned()), ("branch".to_owned(), "12".to_owned())]),
            ..User::default()
        };
        users.create_user(CreateUserRequest { user: Some(user), ..Default::default() }).await.expect("create");
        let reply = faces.upload_face(upload_request(&format!("p{i}"), photo.clone(), false)).await.expect("upload");
        face_ids.push(reply.into_inner().face.expect("face").face_id);
    }

    // By face_id: what a search with that face's image finds, within 0.01.
    for (i, face_id) in face_ids.iter().enumerate() {
        let by_id = search(
            &mut faces,
            SearchFacesRequest { face_id: face_id.clone(), top_k: 10, min_similarity: -1.0, ..Default::default() },
        )
        .await;
        let by_image = search(
            &mut faces,
            SearchFacesRequest {
                image: photos[i].clone().into(),
                top_k: 10,
                min_similarity: -1.0,
                ..Default::default()
            },
        )
        .await;
        let users = |r: &SearchFacesResponse| r.matches.iter().map(|m| m.user_id.clone()).collect::<Vec<_>>();
        assert_eq!(users(&by_id), users(&by_image), "person {i}");
        for (a, b) in by_id.matches.iter().zip(&by_image.matches) {
            assert!((a.similarity - b.similarity).abs() <= 0.01, "person {i}: {} vs {}", a.similarity, b.similarity);
        }
        assert_eq!(by_id.matches[0].external_id, format!("p{i}"));
        assert_eq!(by_id.other_faces, 0);
        assert!(by_id.query_face.as_ref().is_some_and(|q| q.embedding.is_empty()), "no vector on the wire");
    }

    // all_faces on the group photo: one block per face, largest first, each person found.
    let all = search(
        &mut faces,
        SearchFacesRequest { image: fixture_bytes("t1.jpg").into(), all_faces: true, top_k: 1, ..Default::default() },
    )
    .await;
    assert_eq!(all.results.len() + all.other_faces as usize, 6, "t1.jpg holds six faces");
    let found: BTreeSet<String> =
        all.results.iter().filter_map(|r| r.matches.first()).map(|m| m.external_id.clone()).collect();
    let want: BTreeSet<String> = (0..6).map(|i| format!("p{i}")).collect();
    assert_eq!(found, want, "every enrolled person of the photo is found");
    assert_eq!(all.query_face, all.results[0].query_face);
    assert_eq!(all.matches, all.results[0].matches);
    let areas: Vec<f32> = all
        .results
        .iter()
        .map(|r| r.query_face.as_ref().and_then(|q| q.r#box).map_or(0.0, |b| (b.x_max - b.x_min) * (b.y_max - b.y_min)))
        .collect();
    assert!(areas.windows(2).all(|w| w[0] >= w[1]), "largest first: {areas:?}");
    let single =
        search(&mut faces, SearchFacesRequest { image: fixture_bytes("t1.jpg").into(), ..Default::default() }).await;
    assert!(single.results.is_empty(), "results only with all_faces");

    // metadata_filter: never a user outside it.
    let even: BTreeSet<String> = ["p0", "p2", "p4"].map(String::from).into();
    let filter = |pairs: &[(&str, &str)]| {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>()
    };
    let filtered = search(
        &mut faces,
        SearchFacesRequest {
            image: fixture_bytes("t1.jpg").into(),
            all_faces: true,
            top_k: 10,
            min_similarity: -1.0,
            metadata_filter: filter(&[("group", "even")]),
            ..Default::default()
        },
    )
    .await;
    let returned: BTreeSet<String> =
        filtered.results.iter().flat_map(|r| &r.matches).map(|m| m.external_id.clone()).collect();
    assert_eq!(returned, even, "a filtered search returns the filter's users and only them");
    let none = search(
        &mut faces,
        SearchFacesRequest {
            image: photos[0].clone().into(),
            min_similarity: -1.0,
            metadata_filter: filter(&[("group", "even"), ("branch", "13")]),
            ..Default::default()
        },
    )
    .await;
    assert!(none.matches.is_empty(), "every pair must hold");
    // The filter follows UpdateUser at once (the index holds the metadata).
    users
        .update_user(UpdateUserRequest {
            user: by_external("p1"),
            user_update: Some(User { metadata: filter(&[("group", "even")]), ..User::default() }),
            update_mask: mask(&["metadata"]),
            ..Default::default()
        })
        .await
        .expect("update");
    let moved = search(
        &mut faces,
        SearchFacesRequest {
            image: photos[1].clone().into(),
            metadata_filter: filter(&[("group", "even")]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(moved.matches.first().map(|m| m.external_id.as_str()), Some("p1"));

    // Errors: neither or both queries; all_faces with face_id; an unknown or foreign face.
    for bad in [
        SearchFacesRequest::default(),
        SearchFacesRequest { image: photos[0].clone().into(), face_id: face_ids[0].clone(), ..Default::default() },
        SearchFacesRequest { face_id: face_ids[0].clone(), all_faces: true, ..Default::default() },
    ] {
        let err = faces.search_faces(bad).await.unwrap_err();
        assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, "QUERY_INVALID"));
    }
    let err = faces
        .search_faces(SearchFacesRequest { face_id: "fce_0000000000000001".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::NotFound, "FACE_NOT_FOUND"));
    let err = server
        .faces_as(ADMIN_B)
        .await
        .search_faces(SearchFacesRequest { face_id: face_ids[0].clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "FACE_NOT_FOUND", "another tenant's face is not found");
    server.stop().await;
}

#[tokio::test]
async fn list_limits_scopes_of_a_copy_and_a_start_without_snapshot() {
    let server = TestServer::start_keyed_with(|config| {
        let path = config.data_dir.with_file_name("edited-keys.json");
        let mut keys = crate::common::keys_json();
        let writer = crate::common::key_entry("lists-writer", "alpha", &["lists:write"], "secret-lists-writer");
        keys["keys"].as_array_mut().expect("keys").push(writer);
        std::fs::write(&path, keys.to_string()).expect("write keys file");
        config.keys_file = Some(path);
        config.max_lists_per_tenant = 2;
        config.max_list_entries = 2;
        config.index_snapshot_every = 0;
    })
    .await;
    let mut lists = server.lists_as(ADMIN_A).await;
    let mut faces = server.faces_as(ADMIN_A).await;
    let block = create_list(&mut lists, "one", ListKind::Block).await;
    create_list(&mut lists, "two", ListKind::Watch).await;
    let err = lists
        .create_face_list(CreateFaceListRequest {
            list: Some(FaceList { name: "three".into(), kind: ListKind::Allow as i32, ..FaceList::default() }),
        })
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::FailedPrecondition, "QUOTA_EXCEEDED"));
    // Two entries a tenant, however they race.
    let mut adds = Vec::new();
    for photo in people().into_iter().take(4) {
        let mut lists = lists.clone();
        let request = from_image(&block, photo);
        adds.push(tokio::spawn(async move { lists.add_list_entry(request).await }));
    }
    let mut added = 0;
    for add in adds {
        match add.await.expect("join") {
            Ok(_) => added += 1,
            Err(err) => assert_eq!(reason(&err), "QUOTA_EXCEEDED", "{err:?}"),
        }
    }
    assert_eq!(added, 2, "the entry quota holds under racing adds");

    // Copying a stored face needs faces:read besides lists:write; a malformed or foreign face
    // id is refused.
    let face_id = enroll(&server, &mut faces, "p8", people()[8].clone()).await;
    let copy = |face_id: &str| AddListEntryRequest {
        list_id: block.list_id.clone(),
        source: Some(Source::FaceId(face_id.to_owned())),
        ..Default::default()
    };
    let mut writer = server.lists_as(Some("secret-lists-writer")).await;
    let err = writer.add_list_entry(copy(&face_id)).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::PermissionDenied, "SCOPE_MISSING"));
    let err = lists.add_list_entry(copy("fce_nothex")).await.unwrap_err();
    assert_eq!(reason(&err), "FACE_ID_INVALID");
    let err = server.lists_as(ADMIN_B).await.add_list_entry(copy(&face_id)).await.unwrap_err();
    assert_eq!(reason(&err), "LIST_NOT_FOUND", "beta names alpha's list");
    let mut other = server.lists_as(ADMIN_B).await;
    let beta_list = create_list(&mut other, "beta", ListKind::Block).await;
    let err = other
        .add_list_entry(AddListEntryRequest {
            list_id: beta_list.list_id.clone(),
            source: Some(Source::FaceId(face_id.clone())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "FACE_NOT_FOUND", "another tenant's face is not found");
    let err = lists
        .list_list_entries(ListListEntriesRequest {
            list_id: block.list_id.clone(),
            page_size: 101,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "PAGE_SIZE_INVALID");

    // Without snapshots a start rebuilds the index from the store: lists included.
    let blocked = lists
        .list_list_entries(ListListEntriesRequest { list_id: block.list_id.clone(), ..Default::default() })
        .await
        .expect("entries")
        .into_inner()
        .entries;
    assert_eq!(blocked.len(), 2);
    let server = server.restart().await;
    assert!(matches!(server.app().snapshots().origin(), Some(facevault::app::snapshot::IndexOrigin::Rebuilt { .. })));
    assert_lists_indexed(&server, "alpha");
    let mut faces = server.faces_as(ADMIN_A).await;
    create(&mut server.users_as(ADMIN_A).await, "late").await;
    let mut refused = 0;
    for photo in people().into_iter().take(4) {
        if let Err(err) = faces.upload_face(upload_request("late", photo, false)).await {
            assert_eq!(reason(&err), "FACE_IN_BLOCKLIST");
            refused += 1;
        }
    }
    assert_eq!(refused, 2, "the two blocked people, and only they, are refused after the rebuild");
    server.stop().await;
}

#[tokio::test]
async fn a_scopeless_key_and_a_reenrollment_token_reach_no_list_rpc() {
    let server = TestServer::start_keyed_json(|file| {
        let nothing = crate::common::key_entry("nothing", "alpha", &[], "secret-nothing");
        file["keys"].as_array_mut().expect("keys").push(nothing);
    })
    .await;
    let list = create_list(&mut server.lists_as(ADMIN_A).await, "blocked", ListKind::Block).await;
    let (_, token) = user_with_token(&server, "holder").await;
    let scopeless = server.lists_as(Some("secret-nothing")).await;
    let bearer = ListServiceClient::with_interceptor(server.channel().await, Credentials::bearer(&token));
    for (mut lists, want) in [
        (scopeless, (Code::PermissionDenied, "SCOPE_MISSING")),
        (bearer, (Code::Unauthenticated, "REENROLLMENT_TOKEN_INVALID")),
    ] {
        let id = list.list_id.clone();
        let calls: Vec<(&str, tonic::Status)> = vec![
            (
                "CreateFaceList",
                lists.create_face_list(CreateFaceListRequest { list: Some(list.clone()) }).await.unwrap_err(),
            ),
            ("GetFaceList", lists.get_face_list(GetFaceListRequest { list_id: id.clone() }).await.unwrap_err()),
            ("ListFaceLists", lists.list_face_lists(ListFaceListsRequest::default()).await.unwrap_err()),
            ("AddListEntry", lists.add_list_entry(from_image(&list, people()[0].clone())).await.unwrap_err()),
            (
                "ListListEntries",
                lists
                    .list_list_entries(ListListEntriesRequest { list_id: id.clone(), ..Default::default() })
                    .await
                    .unwrap_err(),
            ),
            (
                "DeleteListEntry",
                lists
                    .delete_list_entry(DeleteListEntryRequest { entry_id: "ent_0000000000000001".into() })
                    .await
                    .unwrap_err(),
            ),
            ("DeleteFaceList", lists.delete_face_list(DeleteFaceListRequest { list_id: id }).await.unwrap_err()),
        ];
        for (rpc, err) in calls {
            assert_eq!((err.code(), reason(&err).as_str()), want, "{rpc}");
            assert!(!err.message().contains(&list.list_id), "{rpc} names the list: {}", err.message());
        }
    }
    let still =
        server.lists_as(ADMIN_A).await.get_face_list(GetFaceListRequest { list_id: list.list_id.clone() }).await;
    assert_eq!(still.expect("the list is untouched").into_inner().entry_count, 0);
    server.stop().await;
}
