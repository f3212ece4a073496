//! Crash consistency: the facevault binary as a child process, killed with SIGKILL at a random
//! moment while every user has a client sending UploadFace / UpdateFace / DeleteFace /
//! UpdateUser calls, many cycles. After each kill the store is opened in this process and
//! verified (`Store::verify`: no orphan embeddings, images or thumbnails, no face without its
//! data, limits held), then the server is started again and every user is compared, through the
//! API, with what the client was told: each acknowledged write is there, and the one call that
//! was in flight at the kill either happened whole or not at all. Search must find each user who
//! has faces (the index rebuilt from the store).
//!
//! `FACEVAULT_CRASH_CYCLES` sets the number of kills (3 by default, for CI);
//! `FACEVAULT_CRASH_SEED` replays a run (the seed is printed).

use std::collections::BTreeSet;
use std::time::Duration;

use facevault::grpc::pb::{
    DeleteFaceRequest, GetUserRequest, ListFacesRequest, SearchFacesRequest, UpdateFaceRequest, UpdateUserRequest,
    UploadFaceRequest, User,
};
use facevault::storage::Store;
use tonic::Code;

use crate::common::{ADMIN_A, ChildServer, Faces, Users, faces_client, people, users_client};
use crate::users::{by_id, mask};

const USERS: usize = 4;
const MAX_FACES: usize = 5;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        facevault::search::sketch::splitmix64(&mut self.0)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A display name part: letters only, as validation wants.
fn letters(mut v: u64) -> String {
    let mut out = String::new();
    for _ in 0..8 {
        out.push(char::from(b'a' + (v % 26) as u8));
        v /= 26;
    }
    out
}

/// What a user's client believes, from acknowledged calls only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Model {
    faces: BTreeSet<String>,
    display_name: String,
}

#[derive(Debug, Clone)]
enum Op {
    Upload,
    Replace(String),
    Delete(String),
    Rename(String),
}

/// Set just before the kill: only then may a call fail because the server went away.
static KILLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A call failed because the server went away (after the kill): its outcome is unknown.
fn server_gone(status: &tonic::Status) -> bool {
    KILLED.load(std::sync::atomic::Ordering::SeqCst)
        && matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal)
}

/// Sends random calls for one user until the server dies; returns the model and the call in
/// flight when it did.
async fn drive(
    mut faces: Faces,
    mut users: Users,
    user_id: String,
    image: Vec<u8>,
    mut model: Model,
    seed: u64,
) -> (Model, Option<Op>) {
    let mut rng = Rng(seed);
    let mut n = 0;
    loop {
        n += 1;
        let current: Vec<String> = model.faces.iter().cloned().collect();
        let op = match (current.len(), rng.below(4)) {
            (0, _) => Op::Upload,
            (len, 0) if len < MAX_FACES => Op::Upload,
            (_, 0 | 1) => Op::Replace(current[rng.below(current.len())].clone()),
            (_, 2) => Op::Delete(current[rng.below(current.len())].clone()),
            _ => Op::Rename(format!("Name {}", letters(seed ^ n))),
        };
        let result = match &op {
            Op::Upload => {
                let request =
                    UploadFaceRequest { user: by_id(&user_id), image: image.clone().into(), ..Default::default() };
                faces.upload_face(request).await.map(|r| {
                    model.faces.insert(r.into_inner().face.expect("face").face_id);
                })
            }
            Op::Replace(old) => {
                let request = UpdateFaceRequest {
                    user: by_id(&user_id),
                    face_id: old.clone(),
                    image: image.clone().into(),
                    ..Default::default()
                };
                faces.update_face(request).await.map(|r| {
                    let r = r.into_inner();
                    assert_eq!(&r.replaced_face_id, old);
                    model.faces.remove(old);
                    model.faces.insert(r.face.expect("face").face_id);
                })
            }
            Op::Delete(face) => faces.delete_face(DeleteFaceRequest { face_id: face.clone() }).await.map(|_| {
                model.faces.remove(face);
            }),
            Op::Rename(name) => {
                let request = UpdateUserRequest {
                    user: by_id(&user_id),
                    user_update: Some(User { display_name: name.clone(), ..User::default() }),
                    update_mask: mask(&["display_name"]),
                    ..Default::default()
                };
                users.update_user(request).await.map(|_| model.display_name = name.clone())
            }
        };
        if let Err(status) = result {
            assert!(server_gone(&status), "{op:?} failed for a reason other than the kill: {status:?}");
            return (model, Some(op));
        }
    }
}

/// What the user looks like through the API.
async fn observe(faces: &mut Faces, users: &mut Users, user_id: &str) -> Model {
    let listed = faces.list_faces(ListFacesRequest { user: by_id(user_id) }).await.expect("ListFaces").into_inner();
    let user = users.get_user(GetUserRequest { user: by_id(user_id) }).await.expect("GetUser").into_inner();
    let faces: BTreeSet<String> = listed.faces.into_iter().map(|f| f.face_id).collect();
    assert_eq!(user.face_count as usize, faces.len(), "GetUser's count and ListFaces agree");
    Model { faces, display_name: user.display_name }
}

/// Whether `seen` is `model` with the in-flight call applied whole or not at all.
fn explains(model: &Model, pending: Option<&Op>, seen: &Model) -> bool {
    if seen == model {
        return true;
    }
    let added: Vec<&String> = seen.faces.difference(&model.faces).collect();
    let removed: Vec<&String> = model.faces.difference(&seen.faces).collect();
    let same_name = seen.display_name == model.display_name;
    match pending {
        None => false,
        Some(Op::Upload) => same_name && added.len() == 1 && removed.is_empty(),
        Some(Op::Replace(old)) => same_name && added.len() == 1 && removed == [old],
        Some(Op::Delete(face)) => same_name && added.is_empty() && removed == [face],
        Some(Op::Rename(name)) => seen.faces == model.faces && &seen.display_name == name,
    }
}

#[tokio::test]
async fn sigkill_during_writes_loses_no_acknowledged_write_and_leaves_no_half_write() {
    let cycles: usize = std::env::var("FACEVAULT_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let seed: u64 = std::env::var("FACEVAULT_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
    });
    println!("crash harness: {cycles} cycles, FACEVAULT_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let people = people();
    let mut server = ChildServer::spawn(dir.path(), &[]).await;
    let mut users = users_client(server.channel().await, ADMIN_A);
    let mut ids = Vec::new();
    let mut models = Vec::new();
    for u in 0..USERS {
        let user = User { external_id: format!("crash-{u}"), display_name: "initial".into(), ..User::default() };
        let created = users.create_user(facevault::grpc::pb::CreateUserRequest { user: Some(user) }).await;
        ids.push(created.expect("CreateUser").into_inner().user_id);
        models.push(Model { faces: BTreeSet::new(), display_name: "initial".into() });
    }
    let (mut acknowledged, mut in_flight) = (0usize, 0usize);
    for cycle in 0..cycles {
        let mut drivers = Vec::new();
        for u in 0..USERS {
            let channel = server.channel().await;
            drivers.push(tokio::spawn(drive(
                faces_client(channel.clone(), ADMIN_A, None),
                users_client(channel, ADMIN_A),
                ids[u].clone(),
                people[u].clone(),
                models[u].clone(),
                rng.next(),
            )));
        }
        let after = Duration::from_millis(300 + rng.below(2500) as u64);
        tokio::time::sleep(after).await;
        KILLED.store(true, std::sync::atomic::Ordering::SeqCst);
        server.kill();
        let mut outcomes = Vec::new();
        for driver in drivers {
            outcomes.push(
                tokio::time::timeout(Duration::from_secs(30), driver).await.expect("driver ends").expect("driver"),
            );
        }

        KILLED.store(false, std::sync::atomic::Ordering::SeqCst);
        let store = Store::open(&dir.path().join("db")).expect("the killed server's store opens");
        let integrity = store.verify(MAX_FACES).expect("verify");
        assert!(integrity.problems.is_empty(), "cycle {cycle}: {:#?}", integrity.problems);
        drop(store);

        server = ChildServer::spawn(dir.path(), &[]).await;
        let channel = server.channel().await;
        let (mut faces, mut users_now) = (faces_client(channel.clone(), ADMIN_A, None), users_client(channel, ADMIN_A));
        let mut stored_faces = 0;
        for (u, (model, pending)) in outcomes.into_iter().enumerate() {
            let seen = observe(&mut faces, &mut users_now, &ids[u]).await;
            assert!(
                explains(&model, pending.as_ref(), &seen),
                "cycle {cycle}, user {u}: acknowledged {model:?}, in flight {pending:?}, after restart {seen:?}"
            );
            acknowledged += model.faces.len();
            in_flight += usize::from(pending.is_some());
            stored_faces += seen.faces.len();
            let search = SearchFacesRequest { image: people[u].clone().into(), top_k: 1, ..Default::default() };
            let found = faces.search_faces(search).await.expect("SearchFaces").into_inner().matches;
            let found_self = found.first().is_some_and(|m| m.user_id == ids[u]);
            assert_eq!(found_self, !seen.faces.is_empty(), "cycle {cycle}, user {u}: the index matches the store");
            models[u] = seen;
        }
        assert_eq!(integrity.faces, stored_faces, "the store holds exactly the faces the users list");
        println!("cycle {cycle}: killed after {after:?}, {stored_faces} faces stored, store verified");
    }
    println!(
        "crash harness: {cycles} kills survived; {acknowledged} acknowledged faces checked, {in_flight} calls in flight at a kill"
    );
}
