//! Power loss: the facevault binary with its data directory on lossyfs (tests/powercut/lossyfs.py,
//! a FUSE layer that keeps every change no fsync covered in memory and drops it at a simulated
//! power cut), under concurrent UploadFace / UpdateFace / DeleteFace / UpdateUser calls from one
//! client per user; half the users' UpdateUser calls also replace their metadata with the
//! largest map validation allows (16 entries of 64-character keys and 512-character values,
//! 4-byte UTF-8 characters: about 36 KB a user), so sled's pages get big. At a random moment
//! (0.5-3 s) the server is killed with SIGKILL and then the power is cut; the layer is unmounted,
//! leaving in its backing directory exactly what was durable. Then, in a child process (sled may
//! panic or hang in recovery): `Store::open` must succeed, `Store::verify` must find no problem,
//! and the index rebuilt from the store (`app::rebuild_index`) must hold exactly the faces the
//! users list. Every acknowledged write must be there: each user is what its client was told,
//! with the one call in flight at the cut applied whole or not at all. Then the server starts
//! again on the store (mounted again) and the same is checked through the API, search included,
//! and the next cycle runs on that server.
//!
//! Faults (`disk_full_and_io_errors_keep_the_index_equal_to_the_store`): lossyfs makes the disk
//! full (ENOSPC), then in a second round makes every fsync fail (EIO), for a few seconds under the
//! same load; see that test for what it requires, phase by phase.
//!
//! Not part of `make test` (it needs FUSE): `make powercut` installs what it needs
//! (scripts/powercut-setup.sh) and runs it. `FACEVAULT_POWERCUT_CYCLES` sets the number of cuts
//! (3 by default), `FACEVAULT_POWERCUT_SEED` replays a run (the seed is printed),
//! `FACEVAULT_POWERCUT_FS` picks what an fsync makes durable besides the file's data (lossyfs.py
//! `--mode`): `strict` (default, what POSIX promises: a directory entry needs that directory's
//! fsync), `journal` (any fsync commits every directory entry, like ext4's metadata journal) or
//! `writeback` (as journal, and every file's size: unsynced data comes back as zeros), or
//! `durable` (a cut loses nothing: checks the harness itself, which must then pass).
//! `FACEVAULT_POWERCUT_FAULTS` picks the fault rounds (`enospc,eio-fsync` by default; also
//! `eio-fsync-keep`, and `none`, which checks the harness itself).
//! Every cycle runs even after one fails (a store that failed is replaced by an empty one);
//! the test then fails with one line per failed cycle.

#[path = "grpc/common/mod.rs"]
#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use facevault::domain::{Tenant, UserId};
use facevault::grpc::pb::{
    CreateUserRequest, DeleteFaceRequest, ListFacesRequest, SearchFacesRequest, UploadFaceRequest, User,
};
use facevault::storage::Store;
use serde_json::{Value, json};
use tonic::Code;

use common::workload::{
    CALL_TIMEOUT, Call, Client, Control, Failure, History, MAX_FACES, Model, Op, Rng, by_id, metadata_summary,
    mismatch, read_user,
};
use common::{ADMIN_A, ChildServer, Faces, Users, faces_client, people, root, users_client};

const USERS: usize = 6;
/// The tenant of ADMIN_A.
const TENANT: &str = "alpha";
/// The child process's environment variable: the data directory to check.
const CHILD_DIR: &str = "FACEVAULT_POWERCUT_CHECK_DIR";
/// The child's result line starts with this.
const RESULT: &str = "powercut-result: ";
/// The layer's control file, at the root of the mount.
const CONTROL: &str = ".lossyfs-control";

// ---- the file system layer

/// lossyfs mounted over a backing directory; unmounted (lazily) on drop.
struct Lossyfs {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
}

/// lossyfs's `--mode`, from FACEVAULT_POWERCUT_FS.
fn fs_mode() -> String {
    std::env::var("FACEVAULT_POWERCUT_FS").unwrap_or_else(|_| "strict".into())
}

fn lossyfs_python() -> PathBuf {
    let python = root().join("third_party/powercut-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `bash scripts/powercut-setup.sh` (or `make powercut`)",
        python.display()
    );
    python
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Lossyfs {
    fn mount(backing: &Path, mnt: &Path, log: &Path) -> Self {
        std::fs::create_dir_all(mnt).expect("mount point");
        let err = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("lossyfs log");
        let mut command = Command::new(lossyfs_python());
        command.arg("-u").arg(root().join("tests/powercut/lossyfs.py")).arg(backing).arg(mnt);
        command.arg("--mode").arg(fs_mode());
        let child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).spawn().expect("start lossyfs");
        let mut fs = Lossyfs { child: Some(child), mnt: mnt.to_owned(), log: log.to_owned() };
        let start = Instant::now();
        while !mnt.join(CONTROL).exists() {
            if let Some(status) = fs.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                fs.child = None;
                panic!("lossyfs exited ({status}) before mounting:\n{}", tail(log, 30));
            }
            assert!(start.elapsed() < Duration::from_secs(60), "lossyfs did not mount:\n{}", tail(log, 30));
            std::thread::sleep(Duration::from_millis(20));
        }
        fs
    }

    /// The power cut: every change not covered by an fsync is dropped.
    fn cut(&self) {
        std::fs::write(self.mnt.join(CONTROL), "cut").expect("cut the power");
    }

    /// Unmounts and waits until the layer has written the backing directory.
    fn unmount(mut self) {
        let start = Instant::now();
        loop {
            let out = Command::new("fusermount3").arg("-u").arg(&self.mnt).output().expect("fusermount3");
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "fusermount3 -u failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut child = self.child.take().expect("mounted");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                assert!(status.success(), "lossyfs failed ({status}):\n{}", tail(&self.log, 30));
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "lossyfs did not exit after unmount");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lossyfs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.mnt).status();
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- the server

/// The facevault binary on `data_dir` (keys and log in `dir`), with a metrics endpoint.
/// SIGKILL on drop. A start that fails names the tails of both logs.
struct Server {
    child: ChildServer,
    metrics: std::net::SocketAddr,
}

impl Server {
    async fn spawn(dir: &Path, data_dir: &Path) -> Self {
        let metrics = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let extra = ["--metrics-listen", &metrics.to_string()];
        match ChildServer::try_spawn_on(dir, data_dir, &extra, &[]).await {
            Ok(child) => Server { child, metrics },
            Err(why) => panic!("{why}\nlossyfs's log:\n{}", tail(&dir.join("lossyfs.log"), 30)),
        }
    }

    async fn channel(&self) -> tonic::transport::Channel {
        self.child.channel().await
    }

    fn kill(&mut self) {
        self.child.kill();
    }
}

// ---- the store check, in a child process

/// Opens the store, verifies it, rebuilds the index and lists the users: JSON.
fn check_store(dir: &Path) -> Value {
    let store = Store::open(dir).expect("Store::open");
    let integrity = store.verify(MAX_FACES).expect("Store::verify");
    let (index, _) = facevault::app::rebuild_index(&store, facevault::search::index::DEFAULT_EXACT_MAX_FACES)
        .expect("rebuild_index");
    let tenant = Tenant::new(TENANT).expect("tenant");
    let mut users = BTreeMap::new();
    let mut listed = BTreeSet::new();
    let mut after: Option<UserId> = None;
    loop {
        let page = store.list_users(&tenant, after, 100).expect("list_users");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for user in &page {
            let faces: Vec<String> = user.face_ids.iter().map(ToString::to_string).collect();
            listed.extend(user.face_ids.iter().map(|f| (*f, user.id)));
            users.insert(
                user.id.to_string(),
                json!({
                    "display_name": user.display_name,
                    "metadata": metadata_summary(&user.metadata),
                    "faces": faces,
                }),
            );
        }
    }
    let indexed: BTreeSet<_> = index.entries(&tenant).into_iter().collect();
    let describe = |set: Vec<&(facevault::domain::FaceId, UserId)>| -> Vec<String> {
        set.into_iter().map(|(f, u)| format!("{f} of {u}")).collect()
    };
    json!({
        "verify_problems": integrity.problems,
        "verify_faces": integrity.faces,
        "index_only": describe(indexed.difference(&listed).collect()),
        "store_only": describe(listed.difference(&indexed).collect()),
        "other_tenants_indexed": index.sizes().iter().filter(|(t, n)| t != &tenant && *n > 0).count(),
        "users": users,
    })
}

/// Not a test of its own: the child process of `power_cut_during_writes...` (does nothing
/// unless FACEVAULT_POWERCUT_CHECK_DIR is set).
#[test]
fn store_check_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let report = check_store(Path::new(&dir));
    println!("\n{RESULT}{report}");
}

/// Runs `check_store` on `dir` in a child process; `Err` with what it printed when it panicked,
/// crashed or hung.
fn check_store_in_child(dir: &Path) -> Result<Value, String> {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["store_check_child", "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_DIR, dir)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the store check");
    let (mut out, mut err) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out_reader.join().unwrap_or_default(), err_reader.join().unwrap_or_default());
    if let Some(line) = out.lines().find_map(|l| l.split_once(RESULT).map(|(_, json)| json)) {
        return serde_json::from_str(line).map_err(|e| format!("unreadable result {e}: {line}"));
    }
    let printed: Vec<&str> = err
        .lines()
        .chain(out.lines())
        .filter(|l| {
            !l.trim().is_empty()
                && !l.starts_with("running ")
                && !l.starts_with("test result")
                && !l.starts_with("failures")
                && !l.starts_with("note: run with")
        })
        .collect();
    let printed = printed.join(" | ");
    Err(match status {
        None => format!("the store check hung for 120 s: {printed}"),
        Some(status) => format!("the store check failed ({status}): {printed}"),
    })
}

/// What the store holds for each user id, from the check's JSON.
fn stored_models(report: &Value) -> BTreeMap<String, Model> {
    let users = report["users"].as_object().expect("users");
    users
        .iter()
        .map(|(id, u)| {
            let faces = u["faces"].as_array().expect("faces").iter().map(|f| f.as_str().expect("id").to_owned());
            let model = Model {
                faces: faces.collect(),
                display_name: u["display_name"].as_str().expect("name").into(),
                metadata: u["metadata"].as_str().expect("metadata").into(),
            };
            (id.clone(), model)
        })
        .collect()
}

/// The user through the API; `None` when it does not exist.
async fn observe(faces: &mut Faces, users: &mut Users, user_id: &str) -> Option<Model> {
    read_user(faces, users, user_id).await.expect("GetUser and ListFaces")
}

/// One client per user, each on `channel`, writing from `models[u]` until `control` stops it;
/// odd users' UpdateUser calls carry large metadata.
fn spawn_drivers(
    channel: &tonic::transport::Channel,
    ids: &[String],
    people: &[Vec<u8>],
    models: &[Model],
    rng: &mut Rng,
    control: &std::sync::Arc<Control>,
) -> Vec<tokio::task::JoinHandle<common::workload::Driven>> {
    (0..USERS)
        .map(|u| {
            let client = Client {
                user: u,
                faces: faces_client(channel.clone(), ADMIN_A, None),
                users: users_client(channel.clone(), ADMIN_A),
                user_id: ids[u].clone(),
                image: people[u].clone(),
                big_metadata: u % 2 == 1,
            };
            tokio::spawn(client.drive(models[u].clone(), rng.next(), control.clone()))
        })
        .collect()
}

/// Failures of the store after a cut, one line each (empty: the cut lost nothing).
fn judge(report: &Value, expected: &[(String, History)]) -> Vec<String> {
    let mut failures = Vec::new();
    if report["other_tenants_indexed"] != 0 {
        failures.push(format!("the index holds faces of {} other tenants", report["other_tenants_indexed"]));
    }
    for key in ["verify_problems", "index_only", "store_only"] {
        let list = report[key].as_array().expect("list");
        if !list.is_empty() {
            let shown: Vec<&str> = list.iter().take(5).filter_map(Value::as_str).collect();
            failures.push(format!(
                "{key}: {} ({}{})",
                list.len(),
                shown.join("; "),
                if list.len() > 5 { "; ..." } else { "" }
            ));
        }
    }
    let stored = stored_models(report);
    let (mut lost_users, mut wrong) = (0, Vec::new());
    for (id, history) in expected {
        match stored.get(id) {
            None => lost_users += 1,
            Some(seen) if history.explains(seen) => {}
            Some(seen) => wrong.push(mismatch(&format!("user {id}"), history, "stored", seen)),
        }
    }
    if lost_users > 0 {
        failures.push(format!(
            "{lost_users} of {} acknowledged users are missing (store holds {})",
            expected.len(),
            stored.len()
        ));
    }
    failures.extend(wrong);
    failures
}

/// `path size` of every file under `dir`, for a failure report.
fn listing(dir: &Path) -> String {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = path.strip_prefix(base).unwrap_or(&path).display().to_string();
            match entry.metadata() {
                Ok(m) if m.is_dir() => {
                    out.push(format!("{name}/"));
                    walk(&path, base, out);
                }
                Ok(m) => out.push(format!("{name} {}", m.len())),
                Err(_) => out.push(name),
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    if out.is_empty() { "empty".to_owned() } else { out.join(", ") }
}

struct Layout {
    dir: PathBuf,
    backing: PathBuf,
    mnt: PathBuf,
}

impl Layout {
    fn data_dir_mounted(&self) -> PathBuf {
        self.mnt.join("db")
    }

    fn data_dir_backing(&self) -> PathBuf {
        self.backing.join("db")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("lossyfs.log")
    }
}

/// The users (fresh, on an empty store): ids and models.
async fn create_users(server: &Server, cycle: usize) -> (Vec<String>, Vec<Model>) {
    let mut users = users_client(server.channel().await, ADMIN_A);
    let (mut ids, mut models) = (Vec::new(), Vec::new());
    for u in 0..USERS {
        let user =
            User { external_id: format!("power-{cycle}-{u}"), display_name: "initial".into(), ..User::default() };
        let created =
            users.create_user(CreateUserRequest { user: Some(user), ..Default::default() }).await.expect("CreateUser");
        ids.push(created.into_inner().user_id);
        models.push(Model::initial());
    }
    (ids, models)
}

#[tokio::test]
async fn power_cut_during_writes_loses_no_acknowledged_write_and_leaves_a_whole_store() {
    let cycles: usize = std::env::var("FACEVAULT_POWERCUT_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let seed: u64 = std::env::var("FACEVAULT_POWERCUT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
    });
    let fs_mode = fs_mode();
    println!("power-cut harness: {cycles} cycles, FACEVAULT_POWERCUT_SEED={seed}, FACEVAULT_POWERCUT_FS={fs_mode}");
    let mut rng = Rng(seed);
    let people = people();
    let temp = tempfile::tempdir().expect("temp dir");
    let layout =
        Layout { dir: temp.path().to_owned(), backing: temp.path().join("backing"), mnt: temp.path().join("mnt") };
    std::fs::create_dir_all(&layout.backing).expect("backing dir");
    println!("power-cut harness: working in {} (logs: server.log, lossyfs.log)", layout.dir.display());

    let mut failures: Vec<String> = Vec::new();
    let (mut acknowledged_total, mut metadata_total) = (0, 0);
    // What the store must hold at the start of the next cycle (None: a fresh store).
    let mut state: Option<(Vec<String>, Vec<Model>)> = None;
    for cycle in 0..=cycles {
        let started = Instant::now();
        let fs = Lossyfs::mount(&layout.backing, &layout.mnt, &layout.log());
        let mut server = Server::spawn(&layout.dir, &layout.data_dir_mounted()).await;
        let channel = server.channel().await;
        let (ids, mut models) = match state.take() {
            None => create_users(&server, cycle).await,
            Some((ids, models)) => {
                // After a cut that the store survived: the API must show what the store held.
                let (mut faces, mut users) =
                    (faces_client(channel.clone(), ADMIN_A, None), users_client(channel.clone(), ADMIN_A));
                for (u, (id, model)) in ids.iter().zip(&models).enumerate() {
                    let seen = observe(&mut faces, &mut users, id).await;
                    assert_eq!(
                        seen.as_ref(),
                        Some(model),
                        "cycle {}: user {u} through the API after restart",
                        cycle - 1
                    );
                    let search = SearchFacesRequest { image: people[u].clone().into(), top_k: 1, ..Default::default() };
                    let found = faces.search_faces(search).await.expect("SearchFaces").into_inner().matches;
                    let found_self = found.first().is_some_and(|m| &m.user_id == id);
                    assert_eq!(
                        found_self,
                        !model.faces.is_empty(),
                        "cycle {}: user {u}: the index matches the store",
                        cycle - 1
                    );
                }
                (ids, models)
            }
        };
        if cycle == cycles {
            drop(server);
            fs.unmount();
            break;
        }
        let control = Control::new(false);
        let drivers = spawn_drivers(&channel, &ids, &people, &models, &mut rng, &control);
        let after = Duration::from_millis(500 + rng.below(2500) as u64);
        tokio::time::sleep(after).await;
        control.killed.store(true, Ordering::SeqCst);
        server.kill();
        fs.cut();
        let mut expected = Vec::new();
        let (mut acknowledged, mut metadata_updates) = (0, 0);
        for (u, driver) in drivers.into_iter().enumerate() {
            let driven =
                tokio::time::timeout(Duration::from_secs(30), driver).await.expect("driver ends").expect("driver");
            acknowledged += driven.acknowledged;
            metadata_updates += driven.metadata_updates;
            expected.push((ids[u].clone(), driven.history));
        }
        acknowledged_total += acknowledged;
        metadata_total += metadata_updates;
        drop(channel);
        drop(server);
        fs.unmount();
        let cut_line =
            tail(&layout.log(), 200).lines().rev().find(|l| l.contains("\"event\": \"cut\"")).unwrap_or("").to_owned();
        println!(
            "cycle {cycle}: cut after {after:?}, {acknowledged} calls acknowledged \
             ({metadata_updates} with large metadata); {cut_line}"
        );

        let durable = listing(&layout.backing);
        let verdict = match check_store_in_child(&layout.data_dir_backing()) {
            Err(message) => vec![message],
            Ok(report) => {
                let found = judge(&report, &expected);
                if found.is_empty() {
                    let stored = stored_models(&report);
                    models = ids.iter().map(|id| stored[id].clone()).collect();
                    state = Some((ids, models));
                }
                found
            }
        };
        if verdict.is_empty() {
            println!(
                "cycle {cycle}: store opened, verified, index = store, every acknowledged write there ({:.1?})",
                started.elapsed()
            );
        } else {
            for line in &verdict {
                println!("cycle {cycle}: FAILED: {line}");
            }
            println!("cycle {cycle}: what the cut left: {durable} ({:.1?})", started.elapsed());
            failures.push(format!("cycle {cycle}: {}", verdict.join(" / ")));
            // Start the next cycle on an empty store.
            std::fs::remove_dir_all(&layout.backing).expect("clear the backing dir");
            std::fs::create_dir_all(&layout.backing).expect("backing dir");
        }
    }
    println!("power-cut harness: {cycles} cuts, {acknowledged_total} calls acknowledged, {} failed", failures.len());
    if !failures.is_empty() {
        println!("power-cut harness: kept {} (server.log, lossyfs.log, the last store)", temp.keep().display());
    }
    assert!(failures.is_empty(), "{} of {cycles} power cuts failed:\n{}", failures.len(), failures.join("\n"));
    // Not vacuous: the cuts met acknowledged writes, large user metadata among them.
    assert!(acknowledged_total > 0 && metadata_total > 0, "{acknowledged_total} calls, {metadata_total} large");
}

/// The disk fails under a running server (the layer's cut with the server still up: the
/// unsynced changes are gone and every later change fails with EIO). The write that meets the
/// failure is not acknowledged (UNAVAILABLE, never OK or INTERNAL), no later write is, health
/// turns NOT_SERVING, and after a restart every write acknowledged before the failure is there.
#[tokio::test]
async fn a_disk_that_fails_under_a_running_server_stops_acknowledgements_and_loses_nothing() {
    let people = people();
    let temp = tempfile::tempdir().expect("temp dir");
    println!("disk-fault test in {}", temp.path().display());
    let temp = FaultDir(temp);
    let layout =
        Layout { dir: temp.path().to_owned(), backing: temp.path().join("backing"), mnt: temp.path().join("mnt") };
    std::fs::create_dir_all(&layout.backing).expect("backing dir");
    let fs = Lossyfs::mount(&layout.backing, &layout.mnt, &layout.log());
    let mut server = Server::spawn(&layout.dir, &layout.data_dir_mounted()).await;
    let channel = server.channel().await;
    let (mut faces, mut users) = (faces_client(channel.clone(), ADMIN_A, None), users_client(channel.clone(), ADMIN_A));
    let user = User { external_id: "disk-fault".into(), ..User::default() };
    let user_id = users
        .create_user(CreateUserRequest { user: Some(user), ..Default::default() })
        .await
        .expect("CreateUser")
        .into_inner()
        .user_id;
    let mut kept = Vec::new();
    for person in &people[..2] {
        let upload = UploadFaceRequest { user: by_id(&user_id), image: person.clone().into(), ..Default::default() };
        kept.push(
            faces.upload_face(upload).await.expect("upload before the fault").into_inner().face.expect("face").face_id,
        );
    }

    fs.cut();
    // A delete commits in memory, then its sync fails: not acknowledged.
    let err =
        faces.delete_face(DeleteFaceRequest { face_id: kept[0].clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "the write that met the failure: {err:?}");
    assert!(tonic_types::StatusExt::get_error_details(&err).retry_info().is_some(), "RetryInfo attached");
    // Nothing later is acknowledged either, whatever the disk does next.
    let upload = UploadFaceRequest { user: by_id(&user_id), image: people[2].clone().into(), ..Default::default() };
    let err = faces.upload_face(upload).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "a write after the failure: {err:?}");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let started = Instant::now();
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .expect("health")
            .into_inner();
        if status.status == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "health still SERVING 5 s after the failure");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill();
    fs.unmount();

    // On what was durable: both acknowledged faces, a whole store, an index equal to it.
    let report = check_store_in_child(&layout.data_dir_backing()).expect("the store opens after the fault");
    for key in ["verify_problems", "index_only", "store_only"] {
        assert!(report[key].as_array().is_some_and(Vec::is_empty), "{key}: {report}");
    }
    let stored = stored_models(&report);
    let faces_stored = &stored.get(&user_id).expect("the user is durable").faces;
    for face in &kept {
        assert!(faces_stored.contains(face), "acknowledged face {face} lost: {report}");
    }
    let fs = Lossyfs::mount(&layout.backing, &layout.mnt, &layout.log());
    let server = Server::spawn(&layout.dir, &layout.data_dir_mounted()).await;
    let mut faces = faces_client(server.channel().await, ADMIN_A, None);
    let listed = faces.list_faces(ListFacesRequest { user: by_id(&user_id) }).await.expect("list").into_inner().faces;
    assert_eq!(listed.len(), 2, "after the restart");
    drop(server);
    fs.unmount();
}

/// Keeps the directory of a failed test for its logs.
struct FaultDir(tempfile::TempDir);

impl FaultDir {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for FaultDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = std::mem::replace(&mut self.0, tempfile::tempdir().expect("temp dir"));
            let _ = kept.keep();
        }
    }
}

// ---- faults under a running server: a full disk, a disk whose fsyncs fail

/// A fault lossyfs injects under the running server.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Every write, new file, mkdir and extending truncate fails with ENOSPC.
    DiskFull,
    /// Every fsync and fdatasync fails with EIO, and what it should have written is never
    /// durable (Linux after a writeback error).
    FsyncFails,
    /// As FsyncFails, but what a failed fsync should have written stays pending: a later fsync
    /// that succeeds makes it durable (a kernel that retries writeback; not the default).
    FsyncFailsRetried,
    /// No fault: a check of the harness itself, which must then pass whatever the fault
    /// handling of the code under test (health must stay SERVING, no call may fail).
    None,
}

impl Fault {
    /// lossyfs's `fault` command.
    fn command(self) -> &'static str {
        match self {
            Fault::DiskFull => "enospc",
            Fault::FsyncFails => "eio-fsync",
            Fault::FsyncFailsRetried => "eio-fsync-keep",
            Fault::None => "none",
        }
    }

    /// The rounds FACEVAULT_POWERCUT_FAULTS names (comma-separated `enospc`, `eio-fsync`,
    /// `eio-fsync-keep`, `none`); by default a full disk, then failing fsyncs.
    fn chosen() -> Vec<Fault> {
        let names = std::env::var("FACEVAULT_POWERCUT_FAULTS").unwrap_or_else(|_| "enospc,eio-fsync".into());
        names
            .split(',')
            .map(|name| match name.trim() {
                "enospc" => Fault::DiskFull,
                "eio-fsync" => Fault::FsyncFails,
                "eio-fsync-keep" => Fault::FsyncFailsRetried,
                "none" => Fault::None,
                other => panic!("FACEVAULT_POWERCUT_FAULTS: unknown fault {other:?}"),
            })
            .collect()
    }
}

/// How long each fault lasts.
const FAULT_FOR: Duration = Duration::from_secs(4);
/// Health must say NOT_SERVING this soon after the fault begins (the clients write all the time).
const NOT_SERVING_WITHIN: Duration = Duration::from_secs(3);
/// After the fault ends the node must, by itself, report SERVING and take an upload this soon.
const RECOVER_WITHIN: Duration = Duration::from_secs(30);
/// The clients go on for this long after the node recovered.
const AFTER_RECOVERY: Duration = Duration::from_millis(2500);

impl Lossyfs {
    /// `fault enospc`, `fault eio-fsync`, `fault clear` (lossyfs.py).
    fn fault(&self, command: &str) {
        std::fs::write(self.mnt.join(CONTROL), format!("fault {command}")).expect("lossyfs fault command");
    }
}

/// The server's overall health (service ""): SERVING, NOT_SERVING, or why the check failed.
async fn health(channel: &tonic::transport::Channel) -> String {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
    match tokio::time::timeout(Duration::from_secs(5), client.check(request)).await {
        Ok(Ok(reply)) => match ServingStatus::try_from(reply.into_inner().status) {
            Ok(status) => status.as_str_name().to_owned(),
            Err(_) => "an unknown status".to_owned(),
        },
        Ok(Err(status)) => format!("the check failed: {:?} {}", status.code(), status.message()),
        Err(_) => "the check hung".to_owned(),
    }
}

/// A failed call, short.
fn short(status: &tonic::Status) -> String {
    format!("{:?} {:?}", status.code(), status.message())
}

/// Through the API: the index against the store. SearchFaces answers the best face per user,
/// so per user: search with the user's photo (all its faces are of that one person, at
/// similarity 1) finds the user exactly when it lists faces, and then one of those; and the
/// index's size (the metrics endpoint) is the number of faces the users list.
async fn index_against_store(
    server: &Server,
    faces: &mut Faces,
    users: &mut Users,
    ids: &[String],
    images: &[Vec<u8>],
) -> Result<Vec<String>, String> {
    let (mut problems, mut listed_total) = (Vec::new(), 0);
    for (id, image) in ids.iter().zip(images) {
        let listed = match read_user(faces, users, id).await {
            Ok(Some(model)) => model.faces,
            Ok(None) => BTreeSet::new(),
            Err(status) => return Err(format!("reading user {id}: {}", short(&status))),
        };
        listed_total += listed.len();
        let search =
            SearchFacesRequest { image: image.clone().into(), top_k: 100, min_similarity: 0.9, ..Default::default() };
        let matches = match faces.search_faces(search).await {
            Ok(reply) => reply.into_inner().matches,
            Err(status) => return Err(format!("SearchFaces: {}", short(&status))),
        };
        match (matches.iter().find(|m| &m.user_id == id), listed.is_empty()) {
            (None, true) => {}
            (None, false) => problems.push(format!("search does not find user {id}, who lists {listed:?}")),
            (Some(m), true) => problems.push(format!("search finds face {} of user {id}, who lists none", m.face_id)),
            (Some(m), false) if !listed.contains(&m.face_id) => {
                problems.push(format!("search finds face {} of user {id}, who lists {listed:?}", m.face_id))
            }
            (Some(_), false) => {}
        }
    }
    let exposition = common::scrape(server.metrics, "/metrics").await;
    let indexed: Option<usize> =
        exposition.lines().find_map(|l| l.strip_prefix("facevault_index_faces ").and_then(|n| n.trim().parse().ok()));
    match indexed {
        Some(n) if n == listed_total => {}
        Some(n) => problems.push(format!("the index holds {n} faces, the users list {listed_total}")),
        None => problems.push("the metrics endpoint shows no facevault_index_faces".to_owned()),
    }
    Ok(problems)
}

/// The failures of one round, by phase, printed as they are found.
struct Verdict {
    fault: Fault,
    failures: Vec<String>,
}

impl Verdict {
    fn fail(&mut self, phase: &str, line: impl Into<String>) {
        let line = format!("{:?}, {phase}: {}", self.fault, line.into());
        println!("  FAILED {line}");
        self.failures.push(line);
    }

    fn ok(&self, phase: &str, line: impl std::fmt::Display) {
        println!("  ok {:?}, {phase}: {line}", self.fault);
    }
}

/// The calls of every client against the phases of a round. `recovered`: when the node was
/// back (health SERVING and an upload taken). Failures, grouped, and a summary.
fn judge_calls(
    calls: &[Call],
    fault_at: Duration,
    cleared_at: Duration,
    recovered: Option<Duration>,
) -> (Vec<String>, String) {
    let phase = |t: Duration| -> &'static str {
        match recovered {
            _ if t < fault_at => "before the fault",
            _ if t < cleared_at => "during the fault",
            Some(r) if t >= r => "after recovery",
            _ => "after the fault, before recovery",
        }
    };
    // (phase, what went wrong, rpc, code, message) -> (count, first time, users)
    type Problem<'a> = (&'a str, &'a str, &'a str, String, String);
    let mut problems: BTreeMap<Problem<'_>, (usize, Duration, BTreeSet<usize>)> = BTreeMap::new();
    let mut summary: BTreeMap<(&str, String), usize> = BTreeMap::new();
    let slack = Duration::from_millis(100);
    for call in calls {
        let at = phase(call.started);
        let outcome = match &call.failure {
            None => "OK".to_owned(),
            Some(f) if f.hung => "hung".to_owned(),
            Some(f) => format!("{:?}", f.code),
        };
        *summary.entry((at, format!("{} {outcome}", if call.write { "write" } else { "read" }))).or_default() += 1;
        let mut note = |what: &'static str, failure: Option<&Failure>| {
            let (code, message) = failure.map_or((String::new(), String::new()), |f| {
                (format!("{:?}", f.code), f.message.chars().take(160).collect())
            });
            let entry =
                problems.entry((at, what, call.rpc, code, message)).or_insert((0, call.started, BTreeSet::new()));
            entry.0 += 1;
            entry.2.insert(call.user);
        };
        match &call.failure {
            Some(f) if f.hung => note("hung (no answer)", Some(f)),
            Some(f) if f.code != Code::Unavailable => note("failed, not UNAVAILABLE", Some(f)),
            Some(f) if f.retry_info.is_none() => note("UNAVAILABLE without RetryInfo", Some(f)),
            _ => {}
        }
        match &call.failure {
            Some(f) if call.ended < fault_at => note("failed with no fault", Some(f)),
            Some(f) if recovered.is_some_and(|r| call.started >= r + slack) => {
                note("failed after the node had recovered", Some(f))
            }
            None if call.write && call.started >= fault_at.saturating_add(slack) && call.ended <= cleared_at => {
                note("acknowledged while the disk could not make it durable", None)
            }
            _ => {}
        }
    }
    let lines = problems
        .into_iter()
        .map(|((at, what, rpc, code, message), (count, first, users))| {
            format!("{at}: {count}x {rpc} {what} (first at {first:.1?}, users {users:?}) {code} {message:?}")
        })
        .collect();
    let summary = summary.into_iter().map(|((at, outcome), n)| format!("{at}: {n} {outcome}")).collect::<Vec<_>>();
    (lines, summary.join("; "))
}

/// The last `n` lines of the server's log at level ERROR or WARN (for a failure report).
fn server_errors(dir: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("\"level\":\"WARN\""))
        .map(|l| l.chars().take(400).collect())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n    ")
}

/// `facevault verify --data-dir DIR` on a stopped store: its exit code and output. Image files
/// no face names are left by a cut (the server sweeps them at start); nothing else may be found.
fn verify_cli(data_dir: &Path) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_facevault"))
        .current_dir(root())
        .arg("verify")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--max-faces-per-user", &MAX_FACES.to_string()])
        .output()
        .expect("run facevault verify");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let orphan_file =
        |l: &str| l.starts_with("PROBLEM: images: orphan face") || l.starts_with("PROBLEM: thumbnails: orphan face");
    let real: Vec<&str> = text.lines().filter(|l| l.starts_with("PROBLEM") && !orphan_file(l)).collect();
    match out.status.code() {
        Some(0) => Ok(text.trim().replace('\n', " | ")),
        Some(1) if real.is_empty() => {
            Ok(format!("only image files a cut left behind: {}", text.trim().replace('\n', " | ")))
        }
        _ => Err(format!("facevault verify exited {}: {}", out.status, text.trim().replace('\n', " | "))),
    }
}

/// One round: a fresh store on lossyfs, the server, one client per user writing all the time;
/// the fault at a random moment for FAULT_FOR, then cleared. Returns what failed, by phase.
async fn fault_round(fault: Fault, seed: u64, people: &[Vec<u8>], dir: &Path) -> Vec<String> {
    let mut verdict = Verdict { fault, failures: Vec::new() };
    let mut rng = Rng(seed);
    println!("{fault:?} round in {} (server.log, lossyfs.log)", dir.display());

    // 1. Start: a fresh store, the users, and a probe user for the recovery check.
    let layout = Layout { dir: dir.to_owned(), backing: dir.join("backing"), mnt: dir.join("mnt") };
    std::fs::create_dir_all(&layout.backing).expect("backing dir");
    let fs = Lossyfs::mount(&layout.backing, &layout.mnt, &layout.log());
    let mut server = Server::spawn(&layout.dir, &layout.data_dir_mounted()).await;
    let channel = server.channel().await;
    let (mut faces, mut users) = (faces_client(channel.clone(), ADMIN_A, None), users_client(channel.clone(), ADMIN_A));
    let mut ids = Vec::new();
    for u in 0..=USERS {
        let user = User { external_id: format!("fault-{u}"), display_name: "initial".into(), ..User::default() };
        let created =
            users.create_user(CreateUserRequest { user: Some(user), ..Default::default() }).await.expect("CreateUser");
        ids.push(created.into_inner().user_id);
    }
    let probe_id = ids[USERS].clone();
    let mut probe = History::new(Model::initial());

    // 2. Load: every user's client writes (half with large metadata).
    let control = Control::new(true);
    let drivers = spawn_drivers(&channel, &ids, people, &vec![Model::initial(); USERS], &mut rng, &control);
    tokio::time::sleep(Duration::from_millis(500 + rng.below(1500) as u64)).await;

    // 3. The fault: health must turn NOT_SERVING soon and stay so while it lasts.
    let fault_at = control.now();
    fs.fault(if matches!(fault, Fault::None) { "clear" } else { fault.command() });
    let mut samples = Vec::new();
    while control.now() < fault_at + FAULT_FOR {
        samples.push((control.now() - fault_at, health(&channel).await));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cleared_at = control.now();
    fs.fault("clear");
    let first_not_serving = samples.iter().find(|(_, s)| s == "NOT_SERVING").map(|(t, _)| *t);
    match first_not_serving {
        _ if matches!(fault, Fault::None) => {
            let not: Vec<String> =
                samples.iter().filter(|(_, s)| s != "SERVING").map(|(t, s)| format!("{s} at {t:.1?}")).collect();
            if not.is_empty() {
                verdict.ok("health with no fault", "SERVING throughout");
            } else {
                verdict.fail("health with no fault", not.join(", "));
            }
        }
        Some(t) if t <= NOT_SERVING_WITHIN => verdict.ok("health during the fault", format!("NOT_SERVING {t:.1?} in")),
        Some(t) => verdict.fail("health during the fault", format!("NOT_SERVING only {t:.1?} in")),
        None => verdict.fail(
            "health during the fault",
            format!(
                "never NOT_SERVING in {FAULT_FOR:?} of the fault (last: {})",
                samples.last().map_or("none", |(_, s)| s.as_str())
            ),
        ),
    }
    if let (Some(first), false) = (first_not_serving, matches!(fault, Fault::None)) {
        let back: Vec<String> = samples
            .iter()
            .filter(|(t, s)| *t > first && s != "NOT_SERVING")
            .map(|(t, s)| format!("{s} at {t:.1?}"))
            .collect();
        if !back.is_empty() {
            verdict
                .fail("health during the fault", format!("not NOT_SERVING again while it lasted: {}", back.join(", ")));
        }
    }

    // 4. Recovery, by itself: health SERVING again and an upload taken, without a restart.
    let (mut recovered, mut last_health, mut last_probe) = (None, String::new(), "none sent".to_owned());
    while control.now() < cleared_at + RECOVER_WITHIN {
        last_health = health(&channel).await;
        if last_health == "SERVING" {
            let upload =
                UploadFaceRequest { user: by_id(&probe_id), image: people[USERS].clone().into(), ..Default::default() };
            match tokio::time::timeout(CALL_TIMEOUT, faces.upload_face(upload)).await {
                Ok(Ok(reply)) => {
                    probe.acked(Op::Upload, Some(reply.into_inner().face.expect("face").face_id));
                    recovered = Some(control.now());
                    break;
                }
                Ok(Err(status)) => {
                    probe.unknown(Op::Upload);
                    last_probe = format!("{:?} {}", status.code(), status.message());
                }
                Err(_) => {
                    probe.unknown(Op::Upload);
                    last_probe = "hung".into();
                }
            }
            if probe.unknowns().len() >= MAX_FACES - 1 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match recovered {
        Some(t) => {
            verdict.ok("recovery", format!("SERVING and an upload taken {:.1?} after the fault ended", t - cleared_at))
        }
        None => verdict.fail(
            "recovery",
            format!(
                "not recovered {RECOVER_WITHIN:?} after the fault ended: health {last_health}, probe upload: \
                 {last_probe}; the server's last errors:\n    {}",
                server_errors(&layout.dir, 3)
            ),
        ),
    }

    // 5. The clients go on a little, then stop; every call is judged by the phase it began in.
    if recovered.is_some() {
        tokio::time::sleep(AFTER_RECOVERY).await;
    }
    control.stop.store(true, Ordering::SeqCst);
    let (mut calls, mut expected) = (Vec::new(), Vec::new());
    for (u, driver) in drivers.into_iter().enumerate() {
        match tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(10), driver).await {
            Ok(driven) => {
                let driven = driven.expect("driver");
                calls.extend(driven.calls);
                expected.push((ids[u].clone(), driven.history));
            }
            Err(_) => verdict.fail("calls", format!("user {u}'s client did not end (a call hangs)")),
        }
    }
    expected.push((probe_id.clone(), probe));
    // With no fault the whole round counts as "before the fault".
    let fault_at = if matches!(fault, Fault::None) { Duration::MAX } else { fault_at };
    let (problems, summary) = judge_calls(&calls, fault_at, cleared_at, recovered);
    println!("  {fault:?} calls: {summary}");
    if recovered.is_some() && !calls.iter().any(|c| c.write && c.failure.is_none() && c.started >= recovered.unwrap()) {
        verdict.fail("calls", "no client write was acknowledged after the node recovered");
    }
    for line in problems {
        verdict.fail("calls", line);
    }

    // 6. The live node: each user is what its client was told, and the index equals the store.
    let mut images: Vec<Vec<u8>> = people[..USERS].to_vec();
    images.push(people[USERS].clone());
    let mut unreadable = Vec::new();
    for (id, history) in &expected {
        match read_user(&mut faces, &mut users, id).await {
            Ok(Some(seen)) if history.explains(&seen) => {}
            Ok(Some(seen)) => verdict.fail("live state", mismatch(&format!("user {id}"), history, "reads", &seen)),
            Ok(None) => verdict.fail("live state", format!("user {id} is gone")),
            Err(status) => unreadable.push(short(&status)),
        }
    }
    if let Some(first) = unreadable.first() {
        verdict.fail("live state", format!("{} of {} users cannot be read: {first}", unreadable.len(), expected.len()));
    }
    match index_against_store(&server, &mut faces, &mut users, &ids, &images).await {
        Ok(problems) if problems.is_empty() => {
            verdict.ok("live index", "search and the index size match the users' faces")
        }
        Ok(problems) => problems.into_iter().for_each(|p| verdict.fail("live index", p)),
        Err(error) => verdict.fail("live index", error),
    }

    // 7. A power cut: what was acknowledged is durable, the store whole, the index equal to it;
    // and so through the API once the server runs on it again.
    drop((faces, users, channel));
    server.kill();
    fs.cut();
    fs.unmount();
    match verify_cli(&layout.data_dir_backing()) {
        Ok(text) => verdict.ok("facevault verify after a cut", text),
        Err(text) => verdict.fail("facevault verify after a cut", text),
    }
    let stored = match check_store_in_child(&layout.data_dir_backing()) {
        Err(message) => {
            verdict.fail("store after a cut", message);
            None
        }
        Ok(report) => {
            let found = judge(&report, &expected);
            if found.is_empty() {
                verdict.ok("store after a cut", "opens, verifies, index = store, every acknowledged write there");
            }
            found.into_iter().for_each(|line| verdict.fail("store after a cut", line));
            Some(stored_models(&report))
        }
    };
    if let Some(stored) = stored {
        let fs = Lossyfs::mount(&layout.backing, &layout.mnt, &layout.log());
        let server = Server::spawn(&layout.dir, &layout.data_dir_mounted()).await;
        let channel = server.channel().await;
        let (mut faces, mut users) = (faces_client(channel.clone(), ADMIN_A, None), users_client(channel, ADMIN_A));
        for id in &ids {
            let seen = observe(&mut faces, &mut users, id).await;
            if seen.as_ref() != stored.get(id) {
                verdict.fail(
                    "after the restart",
                    format!("user {id}: the API shows {seen:?}, the store held {:?}", stored.get(id)),
                );
            }
        }
        match index_against_store(&server, &mut faces, &mut users, &ids, &images).await {
            Ok(problems) if problems.is_empty() => {
                verdict.ok("after the restart", "the API shows the store; index = store")
            }
            Ok(problems) => problems.into_iter().for_each(|p| verdict.fail("after the restart", p)),
            Err(error) => verdict.fail("after the restart", error),
        }
        drop(server);
        fs.unmount();
    }
    verdict.failures
}

/// Faults under a running server (STORAGE.md "Failure"; issue 10, item 5). Each fault runs on a
/// fresh store (`fault_round`), in phases that print what they found and all run even after one
/// fails:
///  1. start: the server on lossyfs, six users and a probe user;
///  2. load: one client per user writing all the time (half with large metadata);
///  3. the fault, for 4 s: `enospc` (a full disk), then `eio-fsync` (every fsync fails with EIO,
///     and what it should have written is lost at the next cut, as on Linux). Health must say
///     NOT_SERVING within 3 s and until the fault ends;
///  4. recovery: once the fault is cleared the node must by itself, within 10 s, report SERVING
///     and take an upload (no restart);
///  5. calls: a call fails only UNAVAILABLE with RetryInfo (never another code, never a hang),
///     none fails before the fault or after the recovery, and no write begun during the fault
///     is acknowledged (it cannot be durable). A client whose call failed waits as RetryInfo
///     says, reads its user back and goes on;
///  6. live: each user reads as its client was told (acknowledged calls applied, failed ones
///     whole or not at all) and the index equals the store (search per user; the index size on
///     the metrics endpoint against the faces listed);
///  7. a power cut: `facevault verify` finds nothing but image files the cut left, the store
///     opens and verifies, its rebuilt index equals it, every acknowledged write is there; the
///     restarted server shows exactly the store.
#[tokio::test]
async fn disk_full_and_io_errors_keep_the_index_equal_to_the_store() {
    let seed: u64 = std::env::var("FACEVAULT_POWERCUT_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
    });
    println!("fault harness: FACEVAULT_POWERCUT_SEED={seed}");
    let people = people();
    let temp = FaultDir(tempfile::tempdir().expect("temp dir"));
    let mut rng = Rng(seed);
    let mut failures = Vec::new();
    for fault in Fault::chosen() {
        let dir = temp.path().join(fault.command());
        failures.extend(fault_round(fault, rng.next(), &people, &dir).await);
    }
    if !failures.is_empty() {
        println!("fault harness: kept {} (server.log, lossyfs.log of each round)", temp.path().display());
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
