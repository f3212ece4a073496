//! ImportFaces and `facevault import` through the real server (design/API-2.md, "Bulk
//! import"): every outcome of an item, the scopes, an import killed half way and resumed, and a
//! hostile manifest with a clear error per row and nothing lost.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use facevault::grpc::pb::import_result::ImportOutcome;
use facevault::grpc::pb::{
    DuplicatePolicy, GetUserRequest, ImportFacesRequest, ImportItem, ImportResult, ListFacesRequest, ListUsersRequest,
    User, enrollment::MultipleFacesPolicy,
};
use tonic::Code;

use crate::common::{ADMIN_A, Faces, READER_A, TestServer, fixture_bytes, key_entry, people, reason, root};
use crate::enroll::assert_index_equals_store;
use crate::users::by_external;

pub(crate) fn item(item_id: &str, external_id: &str, image: Vec<u8>) -> ImportItem {
    ImportItem {
        item_id: item_id.into(),
        user: Some(User { external_id: external_id.into(), display_name: "Imported".into(), ..User::default() }),
        image: image.into(),
        ..ImportItem::default()
    }
}

/// Streams `items` and collects the results by item id.
pub(crate) async fn import(
    faces: &mut Faces,
    items: Vec<ImportItem>,
) -> Result<BTreeMap<String, ImportResult>, tonic::Status> {
    let requests = items.into_iter().map(|item| ImportFacesRequest { item: Some(item) }).collect::<Vec<_>>();
    let mut stream = faces.import_faces(tokio_stream::iter(requests)).await?.into_inner();
    let mut results = BTreeMap::new();
    while let Some(response) = stream.message().await? {
        let result = response.result.expect("a result");
        assert!(results.insert(result.item_id.clone(), result).is_none(), "one result per item");
    }
    Ok(results)
}

pub(crate) fn outcome(result: &ImportResult) -> ImportOutcome {
    ImportOutcome::try_from(result.outcome).expect("a known outcome")
}

/// The ErrorInfo reason of a FAILED result.
pub(crate) fn item_reason(result: &ImportResult) -> String {
    let error = result.error.as_ref().expect("a FAILED result carries its error");
    let status = tonic::Status::with_details(
        Code::from(error.code),
        error.message.clone(),
        prost::Message::encode_to_vec(error).into(),
    );
    reason(&status)
}

async fn user_count(server: &TestServer) -> usize {
    let mut users = server.users_as(ADMIN_A).await;
    let listed = users.list_users(ListUsersRequest { page_size: 1000, ..Default::default() }).await.expect("list");
    listed.into_inner().users.len()
}

async fn face_count(faces: &mut Faces, external_id: &str) -> usize {
    let listed = faces.list_faces(ListFacesRequest { user: by_external(external_id) }).await.expect("faces");
    listed.into_inner().faces.len()
}

#[tokio::test]
async fn an_import_reports_every_outcome_per_item() {
    // One item at a time: the results (and which face is first) are in the items' order.
    let server = TestServer::start_keyed_with(|c| c.import_max_in_flight = 1).await;
    let mut faces = server.faces_as(ADMIN_A).await;
    let photos = people();
    let items = vec![
        ImportItem { request_id: "r-1".into(), ..item("1", "imp-a", photos[0].clone()) },
        item("2", "imp-a", photos[1].clone()),
        item("3", "imp-c", photos[0].clone()),
        ImportItem {
            multiple_faces_policy: MultipleFacesPolicy::Reject as i32,
            ..item("4", "imp-d", fixture_bytes("players.jpg"))
        },
        item("5", "imp-e", b"not an image at all".to_vec()),
        item("6", "bad id!", photos[2].clone()),
        ImportItem { request_id: "r-1".into(), ..item("7", "imp-a", photos[0].clone()) },
        ImportItem { duplicate_policy: DuplicatePolicy::Reject as i32, ..item("8", "imp-f", photos[0].clone()) },
        item(&"9".repeat(201), "imp-g", photos[3].clone()),
        ImportItem { request_id: "r-1".into(), ..item("10", "imp-h", photos[4].clone()) },
    ];
    let results = import(&mut faces, items).await.expect("the stream");
    assert_eq!(results.len(), 10, "{results:?}");
    let r = |id: &str| &results[id];
    assert_eq!(outcome(r("1")), ImportOutcome::Created);
    assert_eq!(outcome(r("2")), ImportOutcome::Added);
    assert_eq!(r("2").user_id, r("1").user_id);
    // The same person under another external id: stored, the other user reported.
    assert_eq!(outcome(r("3")), ImportOutcome::Created);
    assert!(r("3").duplicates.iter().any(|d| d.external_id == "imp-a"), "{:?}", r("3").duplicates);
    assert_eq!((outcome(r("4")), item_reason(r("4")).as_str()), (ImportOutcome::Failed, "MULTIPLE_FACES_DETECTED"));
    assert_eq!(r("4").error.as_ref().expect("error").code, Code::InvalidArgument as i32);
    assert_eq!(item_reason(r("5")), "IMAGE_UNDECODABLE");
    assert_eq!(item_reason(r("6")), "EXTERNAL_ID_INVALID");
    // A retried item: the first result again, nothing written.
    assert_eq!(outcome(r("7")), ImportOutcome::Replayed);
    assert_eq!(r("7").replayed_outcome, ImportOutcome::Created as i32);
    assert_eq!(r("7").face, r("1").face);
    assert_eq!(item_reason(r("8")), "DUPLICATE_FACE");
    assert_eq!(item_reason(&results[&"9".repeat(201)]), "ITEM_ID_INVALID");
    // The same request id with another item.
    assert_eq!(item_reason(r("10")), "REQUEST_ID_REUSED");

    // Failed items left nothing behind: no user for imp-d, imp-e, imp-f (created, then removed).
    let mut users = server.users_as(ADMIN_A).await;
    for gone in ["imp-d", "imp-e", "imp-f", "imp-g", "imp-h"] {
        let err = users.get_user(GetUserRequest { user: by_external(gone) }).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{gone}");
    }
    assert_eq!(user_count(&server).await, 2);
    assert_eq!(face_count(&mut faces, "imp-a").await, 2);
    assert_eq!(face_count(&mut faces, "imp-c").await, 1);
    assert_index_equals_store(&server, "alpha");
}

#[tokio::test]
async fn an_import_needs_both_write_scopes() {
    let server = TestServer::start_keyed().await;
    let mut reader = server.faces_as(READER_A).await;
    let err = import(&mut reader, vec![item("1", "x", people()[0].clone())]).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::PermissionDenied, "SCOPE_MISSING"));
    server.stop().await;
    // A key with faces:write but not users:write: refused by the handler, before any item.
    let server = TestServer::start_keyed_json(|file| {
        let faces_only = key_entry("faces-only", "alpha", &["faces:write", "faces:read"], "secret-faces-only");
        file["keys"].as_array_mut().expect("keys").push(faces_only);
    })
    .await;
    let mut faces_only = server.faces_as(Some("secret-faces-only")).await;
    let err = import(&mut faces_only, vec![item("1", "x", people()[0].clone())]).await.unwrap_err();
    assert_eq!((err.code(), reason(&err).as_str()), (Code::PermissionDenied, "SCOPE_MISSING"));
    assert!(err.message().contains("users:write"), "{}", err.message());
    let mut nobody = server.faces_as(None).await;
    let err = import(&mut nobody, vec![item("1", "x", people()[0].clone())]).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(user_count(&server).await, 0);
}

/// Runs `command` to its end off the test's runtime (which serves the server it calls).
async fn output(mut command: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().expect("run facevault import")).await.expect("join")
}

/// Runs `facevault import` against `server` with `key`.
fn cli(server: &TestServer, key: &str, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_facevault"));
    command.arg("import").args(["--server", &server.url(), "--api-key", key]).args(args);
    command
}

/// The report's rows: item -> (outcome, reason).
fn report(path: &Path) -> BTreeMap<String, (String, String)> {
    let text = std::fs::read_to_string(path).expect("report");
    let mut rows = BTreeMap::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        rows.insert(fields[0].to_owned(), (fields[3].to_owned(), fields[6].to_owned()));
    }
    rows
}

/// Nine people as `<external_id>.png` in a folder.
fn people_folder(dir: &Path) -> usize {
    std::fs::create_dir_all(dir).expect("folder");
    let photos = people();
    for (i, photo) in photos.iter().enumerate() {
        std::fs::write(dir.join(format!("person-{i}.png")), photo).expect("photo");
    }
    photos.len()
}

#[tokio::test]
async fn an_import_killed_half_way_resumes_without_duplicates() {
    // An importing key of two items a second: the first run is killed with part of the folder
    // done.
    let server = TestServer::start_keyed_json(|file| {
        let mut importer = key_entry("importer", "alpha", &["users:write", "faces:write"], "secret-importer");
        importer["rate_limit"] = serde_json::json!({ "per_second": 2.0, "burst": 1 });
        file["keys"].as_array_mut().expect("keys").push(importer);
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let total = people_folder(&dir.path().join("photos"));
    let photos = dir.path().join("photos");
    let report_path = dir.path().join("report.csv");
    let args = [photos.to_str().expect("path"), "--report", report_path.to_str().expect("path")];
    let mut first = cli(&server, "secret-importer", &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !report_path.exists() || report(&report_path).len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the first run imported nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().expect("kill");
    first.wait().expect("wait");
    let done_before = report(&report_path).len();
    assert!(done_before < total, "the run finished before it was killed");

    let second = output(cli(&server, "secret-importer", &args)).await;
    assert_eq!(second.status.code(), Some(0), "{}", String::from_utf8_lossy(&second.stderr));
    let rows = report(&report_path);
    assert_eq!(rows.len(), total, "the report names every row: {rows:?}");
    let replayed = rows.values().filter(|(o, _)| o == "REPLAYED").count();
    assert!(replayed >= 3, "the rows of the first run were replayed: {rows:?}");
    assert!(rows.values().all(|(o, _)| o == "CREATED" || o == "REPLAYED"), "{rows:?}");
    // No duplicates: one user with one face per photo.
    assert_eq!(user_count(&server).await, total);
    let mut faces = server.faces_as(ADMIN_A).await;
    for i in 0..total {
        assert_eq!(face_count(&mut faces, &format!("person-{i}")).await, 1);
    }
    assert_index_equals_store(&server, "alpha");
}

#[tokio::test]
async fn a_hostile_manifest_gets_a_clear_error_per_row_and_loses_nothing() {
    let server = TestServer::start_keyed().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let photos = people();
    std::fs::write(dir.path().join("good.png"), &photos[0]).expect("write");
    std::fs::write(dir.path().join("second.png"), &photos[1]).expect("write");
    std::fs::write(dir.path().join("text.png"), b"this is not an image").expect("write");
    // Over the 2 MiB default: refused locally, never sent.
    std::fs::write(dir.path().join("huge.jpg"), vec![0xffu8; 3 * 1024 * 1024]).expect("write");
    let no_face = root().join("tests/fixtures/nonfaces/brick.png");
    let manifest = format!(
        "external_id,image,display_name,email,phone,comment\n\
         cust-1,good.png,Ann Lee,ann@example.com,,\"first, with a comma\"\n\
         cust-2,missing.png,,,,\n\
         cust-3,huge.jpg,,,,\n\
         cust-4,text.png,,,,\n\
         cust-1,good.png,Ann Lee,ann@example.com,,again\n\
         bad id!,second.png,,,,\n\
         cust-6,second.png,,not-an-email,,\n\
         cust-7,{},,,,\n\
         cust-8,second.png,,,,\n",
        no_face.display()
    );
    let manifest_path = dir.path().join("manifest.csv");
    std::fs::write(&manifest_path, manifest).expect("write");
    let report_path = dir.path().join("report.csv");
    let manifest_arg = manifest_path.to_str().expect("path");

    // The dry run finds what it can without the server, and sends nothing.
    let dry = output(cli(&server, ADMIN_A.expect("key"), &[manifest_arg, "--dry-run"])).await;
    assert_eq!(dry.status.code(), Some(1));
    let said = String::from_utf8_lossy(&dry.stdout);
    for expected in [
        "row 3: FILE_UNREADABLE",
        "row 4: IMAGE_TOO_LARGE",
        "row 5: IMAGE_UNDECODABLE",
        "row 6: DUPLICATE_ROW",
        "row 7: EXTERNAL_ID_INVALID",
        "row 8: EMAIL_INVALID",
    ] {
        assert!(said.contains(expected), "{expected} in {said}");
    }
    assert_eq!(user_count(&server).await, 0);

    let run =
        output(cli(&server, ADMIN_A.expect("key"), &[manifest_arg, "--report", report_path.to_str().expect("path")]))
            .await;
    assert_eq!(run.status.code(), Some(1), "{}", String::from_utf8_lossy(&run.stderr));
    let rows = report(&report_path);
    let expect = [
        ("row 2", "CREATED", ""),
        ("row 3", "FAILED", "FILE_UNREADABLE"),
        ("row 4", "FAILED", "IMAGE_TOO_LARGE"),
        ("row 5", "FAILED", "IMAGE_UNDECODABLE"),
        ("row 7", "FAILED", "EXTERNAL_ID_INVALID"),
        ("row 8", "FAILED", "EMAIL_INVALID"),
        ("row 9", "FAILED", "NO_FACE_DETECTED"),
        ("row 10", "CREATED", ""),
    ];
    for (row, outcome, why) in expect {
        assert_eq!(rows.get(row).map(|(o, r)| (o.as_str(), r.as_str())), Some((outcome, why)), "{row}: {rows:?}");
    }
    // The repeated row: a clear reason too (its message names the first).
    assert_eq!(rows.get("row 6").map(|(o, r)| (o.as_str(), r.as_str())), Some(("FAILED", "DUPLICATE_ROW")));
    assert_eq!(rows.len(), 9);
    // What was good is stored, with the manifest's fields.
    assert_eq!(user_count(&server).await, 2);
    let mut users = server.users_as(ADMIN_A).await;
    let ann = users.get_user(GetUserRequest { user: by_external("cust-1") }).await.expect("cust-1").into_inner();
    assert_eq!((ann.display_name.as_str(), ann.email.as_str()), ("Ann Lee", "ann@example.com"));
    let mut faces = server.faces_as(ADMIN_A).await;
    let listed = faces.list_faces(ListFacesRequest { user: by_external("cust-1") }).await.expect("faces").into_inner();
    assert_eq!(listed.faces.len(), 1);
    assert_eq!(listed.faces[0].comment, "first, with a comma");
    assert_index_equals_store(&server, "alpha");
}
