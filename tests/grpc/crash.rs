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

use std::sync::atomic::Ordering;
use std::time::Duration;

use facevault::grpc::pb::{SearchFacesRequest, User};
use facevault::storage::Store;

use crate::common::workload::{Client, Control, MAX_FACES, Model, Rng, mismatch, read_user};
use crate::common::{ADMIN_A, ChildServer, Faces, Users, faces_client, people, users_client};

const USERS: usize = 4;

/// What the user looks like through the API.
async fn observe(faces: &mut Faces, users: &mut Users, user_id: &str) -> Model {
    read_user(faces, users, user_id).await.expect("GetUser and ListFaces").expect("the user exists")
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
        let created =
            users.create_user(facevault::grpc::pb::CreateUserRequest { user: Some(user), ..Default::default() }).await;
        ids.push(created.expect("CreateUser").into_inner().user_id);
        models.push(Model::initial());
    }
    let (mut acknowledged, mut in_flight) = (0usize, 0usize);
    for cycle in 0..cycles {
        let control = Control::new(false);
        let mut drivers = Vec::new();
        for u in 0..USERS {
            let channel = server.channel().await;
            let client = Client {
                user: u,
                faces: faces_client(channel.clone(), ADMIN_A, None),
                users: users_client(channel, ADMIN_A),
                user_id: ids[u].clone(),
                image: people[u].clone(),
                big_metadata: false,
            };
            drivers.push(tokio::spawn(client.drive(models[u].clone(), rng.next(), control.clone())));
        }
        let after = Duration::from_millis(300 + rng.below(2500) as u64);
        tokio::time::sleep(after).await;
        control.killed.store(true, Ordering::SeqCst);
        server.kill();
        let mut outcomes = Vec::new();
        for driver in drivers {
            outcomes.push(
                tokio::time::timeout(Duration::from_secs(30), driver).await.expect("driver ends").expect("driver"),
            );
        }

        let store = Store::open(&dir.path().join("db")).expect("the killed server's store opens");
        let integrity = store.verify(MAX_FACES).expect("verify");
        assert!(integrity.problems.is_empty(), "cycle {cycle}: {:#?}", integrity.problems);
        drop(store);

        server = ChildServer::spawn(dir.path(), &[]).await;
        let channel = server.channel().await;
        let (mut faces, mut users_now) = (faces_client(channel.clone(), ADMIN_A, None), users_client(channel, ADMIN_A));
        let mut stored_faces = 0;
        for (u, driven) in outcomes.into_iter().enumerate() {
            let history = driven.history;
            let seen = observe(&mut faces, &mut users_now, &ids[u]).await;
            assert!(
                history.explains(&seen),
                "cycle {cycle}, {}",
                mismatch(&format!("user {u}"), &history, "after restart", &seen)
            );
            acknowledged += history.acknowledged().faces.len();
            in_flight += history.unknowns().len();
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
