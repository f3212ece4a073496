//! Power loss: the facevault binary with its data directory on lossyfs (tests/powercut/lossyfs.py,
//! a FUSE layer that keeps every change no fsync covered in memory and drops it at a simulated
//! power cut), under concurrent UploadFace / UpdateFace / DeleteFace / UpdateUser calls from one
//! client per user; half the users' UpdateUser calls also replace their metadata with the largest
//! map validation allows (16 entries of 64-character keys and 512-character values, 4-byte UTF-8
//! characters: about 36 KB a user), so sled's pages get big. At a random moment (0.5-3 s) the server is killed with SIGKILL and then the
//! power is cut; the layer is unmounted, leaving in its backing directory exactly what was
//! durable. Then, in a child process (sled may panic or hang in recovery):
//! `Store::open` must succeed, `Store::verify` must find no problem, and the index rebuilt from
//! the store (`app::rebuild_index`) must hold exactly the faces the users list. Every
//! acknowledged write must be there: each user is what its client was told, with the one call in
//! flight at the cut applied whole or not at all. Then the server starts again on the store
//! (mounted again) and the same is checked through the API, search included, and the next cycle
//! runs on that server.
//!
//! Not part of `make test` (it needs FUSE): `make powercut` installs what it needs
//! (scripts/powercut-setup.sh) and runs it. `FACEVAULT_POWERCUT_CYCLES` sets the number of cuts
//! (3 by default), `FACEVAULT_POWERCUT_SEED` replays a run (the seed is printed),
//! `FACEVAULT_POWERCUT_FS` picks what an fsync makes durable besides the file's data (lossyfs.py
//! `--mode`): `strict` (default, what POSIX promises: a directory entry needs that directory's
//! fsync), `journal` (any fsync commits every directory entry, like ext4's metadata journal) or
//! `writeback` (as journal, and every file's size: unsynced data comes back as zeros), or
//! `durable` (a cut loses nothing: checks the harness itself, which must then pass).
//! Every cycle runs even after one fails (a store that failed is replaced by an empty one);
//! the test then fails with one line per failed cycle.

#[path = "grpc/common/mod.rs"]
#[allow(dead_code)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use facevault::domain::{Tenant, UserId};
use facevault::grpc::pb::{
    CreateUserRequest, DeleteFaceRequest, GetUserRequest, ListFacesRequest, SearchFacesRequest, UpdateFaceRequest,
    UpdateUserRequest, UploadFaceRequest, User, UserRef, user_ref,
};
use facevault::storage::Store;
use serde_json::{Value, json};
use tonic::Code;

use common::{ADMIN_A, Faces, Users, faces_client, people, root, users_client, wait_serving, write_keys_file};

const USERS: usize = 6;
const MAX_FACES: usize = 5;
/// The tenant of ADMIN_A.
const TENANT: &str = "alpha";
/// The child process's environment variable: the data directory to check.
const CHILD_DIR: &str = "FACEVAULT_POWERCUT_CHECK_DIR";
/// The child's result line starts with this.
const RESULT: &str = "powercut-result: ";
/// The layer's control file, at the root of the mount.
const CONTROL: &str = ".lossyfs-control";

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

fn by_id(id: &str) -> Option<UserRef> {
    Some(UserRef { r#ref: Some(user_ref::Ref::UserId(id.to_owned())) })
}

/// What a user's client believes, from acknowledged calls only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Model {
    faces: BTreeSet<String>,
    display_name: String,
    /// `metadata_summary` of the user's metadata.
    metadata: String,
}

#[derive(Debug, Clone)]
enum Op {
    Upload,
    Replace(String),
    Delete(String),
    /// UpdateUser: the display name, and the metadata too when given.
    Rename(String, Option<Metadata>),
}

/// A user's metadata map; shown by its summary.
#[derive(Clone)]
struct Metadata {
    map: BTreeMap<String, String>,
    summary: String,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

/// Entries, bytes and an FNV-1a hash of a metadata map: equal maps, equal summaries.
fn metadata_summary<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut sorted: Vec<(&String, &String)> = map.into_iter().collect();
    sorted.sort();
    let (mut hash, mut bytes) = (0xcbf2_9ce4_8422_2325_u64, 0);
    for (key, value) in &sorted {
        for byte in key.bytes().chain([0]).chain(value.bytes()).chain([0]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        bytes += key.len() + value.len();
    }
    format!("{} entries, {bytes} bytes, fnv {hash:016x}", sorted.len())
}

/// The largest metadata validation allows (src/app/validate.rs: 16 entries, keys of 64 and
/// values of 512 characters), of 4-byte UTF-8 characters: about 36 KB.
fn big_metadata(rng: &mut Rng) -> Metadata {
    use facevault::app::validate::{MAX_METADATA_ENTRIES, MAX_METADATA_KEY, MAX_METADATA_VALUE};
    // U+1F300..U+1F5FF: pictographs, 4 bytes each in UTF-8.
    let mut chars = |n: usize| -> String {
        (0..n).map(|_| char::from_u32(0x1F300 + rng.below(0x300) as u32).expect("a scalar value")).collect()
    };
    let map: BTreeMap<String, String> =
        (0..MAX_METADATA_ENTRIES).map(|_| (chars(MAX_METADATA_KEY), chars(MAX_METADATA_VALUE))).collect();
    assert_eq!(map.len(), MAX_METADATA_ENTRIES, "distinct keys");
    Metadata { summary: metadata_summary(&map), map }
}

/// Set just before the kill: only then may a call fail because the server went away.
static KILLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn server_gone(status: &tonic::Status) -> bool {
    KILLED.load(std::sync::atomic::Ordering::SeqCst)
        && matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal)
}

/// Sends random calls for one user until the server dies; returns the model (acknowledged calls
/// only), the call in flight when it died, and the number of calls acknowledged, and of those
/// that replaced the metadata. With `big_metadata`, every UpdateUser also replaces the metadata.
async fn drive(
    mut faces: Faces,
    mut users: Users,
    user_id: String,
    image: Vec<u8>,
    mut model: Model,
    seed: u64,
    big_metadata: bool,
) -> (Model, Option<Op>, usize, usize) {
    let mut rng = Rng(seed);
    let (mut acknowledged, mut metadata_updates) = (0, 0);
    loop {
        let current: Vec<String> = model.faces.iter().cloned().collect();
        // A user with large metadata updates it in about half its calls.
        let update_user = big_metadata && !current.is_empty() && rng.below(3) == 0;
        let op = match (current.len(), if update_user { 3 } else { rng.below(4) }) {
            (0, _) => Op::Upload,
            (len, 0) if len < MAX_FACES => Op::Upload,
            (_, 0 | 1) => Op::Replace(current[rng.below(current.len())].clone()),
            (_, 2) => Op::Delete(current[rng.below(current.len())].clone()),
            _ => {
                let name = format!("Name {}", letters(rng.next()));
                Op::Rename(name, big_metadata.then(|| self::big_metadata(&mut rng)))
            }
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
            Op::Rename(name, metadata) => {
                let mut paths = vec!["display_name".to_owned()];
                let mut update = User { display_name: name.clone(), ..User::default() };
                if let Some(metadata) = metadata {
                    paths.push("metadata".to_owned());
                    update.metadata = metadata.map.clone().into_iter().collect();
                }
                let request = UpdateUserRequest {
                    user: by_id(&user_id),
                    user_update: Some(update),
                    update_mask: Some(prost_types::FieldMask { paths }),
                    ..Default::default()
                };
                users.update_user(request).await.map(|_| {
                    model.display_name = name.clone();
                    if let Some(metadata) = metadata {
                        model.metadata = metadata.summary.clone();
                        metadata_updates += 1;
                    }
                })
            }
        };
        match result {
            Ok(()) => acknowledged += 1,
            Err(status) => {
                assert!(server_gone(&status), "{op:?} failed for a reason other than the kill: {status:?}");
                return (model, Some(op), acknowledged, metadata_updates);
            }
        }
    }
}

/// Whether `seen` is `model` with the in-flight call applied whole or not at all.
fn explains(model: &Model, pending: Option<&Op>, seen: &Model) -> bool {
    if seen == model {
        return true;
    }
    let added: Vec<&String> = seen.faces.difference(&model.faces).collect();
    let removed: Vec<&String> = model.faces.difference(&seen.faces).collect();
    let same_name = seen.display_name == model.display_name && seen.metadata == model.metadata;
    match pending {
        None => false,
        Some(Op::Upload) => same_name && added.len() == 1 && removed.is_empty(),
        Some(Op::Replace(old)) => same_name && added.len() == 1 && removed == [old],
        Some(Op::Delete(face)) => same_name && added.is_empty() && removed == [face],
        Some(Op::Rename(name, metadata)) => {
            let metadata = metadata.as_ref().map_or(&model.metadata, |m| &m.summary);
            seen.faces == model.faces && &seen.display_name == name && &seen.metadata == metadata
        }
    }
}

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

/// The facevault binary on `data_dir`, keys and log in `dir`. SIGKILL on drop.
struct Server {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Server {
    async fn spawn(dir: &Path, data_dir: &Path) -> Self {
        let keys = dir.join("keys.json");
        if !keys.is_file() {
            write_keys_file(&keys);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_facevault"))
            .current_dir(root())
            .args(["--listen", &addr.to_string(), "--workers", "2", "--log-format", "json"])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--keys-file")
            .arg(&keys)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the facevault binary");
        let server = Server { child, addr };
        wait_serving(&server.url(), Duration::from_secs(120)).await;
        server
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.url()).expect("url").connect().await.expect("connect")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---- the store check, in a child process

/// Opens the store, verifies it, rebuilds the index and lists the users: JSON.
fn check_store(dir: &Path) -> Value {
    let store = Store::open(dir).expect("Store::open");
    let integrity = store.verify(MAX_FACES).expect("Store::verify");
    let index = facevault::app::rebuild_index(&store, facevault::search::index::DEFAULT_EXACT_MAX_FACES)
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

/// What the user looks like through the API; `None` when it does not exist.
async fn observe(faces: &mut Faces, users: &mut Users, user_id: &str) -> Option<Model> {
    let user = match users.get_user(GetUserRequest { user: by_id(user_id) }).await {
        Ok(user) => user.into_inner(),
        Err(status) if status.code() == Code::NotFound => return None,
        Err(status) => panic!("GetUser: {status:?}"),
    };
    let listed = faces.list_faces(ListFacesRequest { user: by_id(user_id) }).await.expect("ListFaces").into_inner();
    let faces: BTreeSet<String> = listed.faces.into_iter().map(|f| f.face_id).collect();
    assert_eq!(user.face_count as usize, faces.len(), "GetUser's count and ListFaces agree");
    Some(Model { faces, display_name: user.display_name, metadata: metadata_summary(&user.metadata) })
}

/// Failures of the store after a cut, one line each (empty: the cut lost nothing).
fn judge(report: &Value, expected: &[(String, Model, Option<Op>)]) -> Vec<String> {
    let mut failures = Vec::new();
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
    for (id, model, pending) in expected {
        match stored.get(id) {
            None => lost_users += 1,
            Some(seen) if explains(model, pending.as_ref(), seen) => {}
            Some(seen) => wrong.push(format!(
                "user {id}: acknowledged {:?} ({}) {:?}, in flight {pending:?}, stored {:?} ({}) {:?}",
                model.display_name, model.metadata, model.faces, seen.display_name, seen.metadata, seen.faces
            )),
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
        let created = users.create_user(CreateUserRequest { user: Some(user) }).await.expect("CreateUser");
        ids.push(created.into_inner().user_id);
        models.push(Model {
            faces: BTreeSet::new(),
            display_name: "initial".into(),
            metadata: metadata_summary(&BTreeMap::new()),
        });
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
    let mut acknowledged_total = 0;
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
        let mut drivers = Vec::new();
        for u in 0..USERS {
            drivers.push(tokio::spawn(drive(
                faces_client(channel.clone(), ADMIN_A, None),
                users_client(channel.clone(), ADMIN_A),
                ids[u].clone(),
                people[u].clone(),
                models[u].clone(),
                rng.next(),
                u % 2 == 1,
            )));
        }
        let after = Duration::from_millis(500 + rng.below(2500) as u64);
        tokio::time::sleep(after).await;
        KILLED.store(true, std::sync::atomic::Ordering::SeqCst);
        server.kill();
        fs.cut();
        let mut expected = Vec::new();
        let (mut acknowledged, mut metadata_updates) = (0, 0);
        for (u, driver) in drivers.into_iter().enumerate() {
            let (model, pending, calls, big) =
                tokio::time::timeout(Duration::from_secs(30), driver).await.expect("driver ends").expect("driver");
            acknowledged += calls;
            metadata_updates += big;
            expected.push((ids[u].clone(), model, pending));
        }
        KILLED.store(false, std::sync::atomic::Ordering::SeqCst);
        acknowledged_total += acknowledged;
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
    let user_id =
        users.create_user(CreateUserRequest { user: Some(user) }).await.expect("CreateUser").into_inner().user_id;
    let mut kept = Vec::new();
    for person in &people[..2] {
        let upload = UploadFaceRequest { user: by_id(&user_id), image: person.clone().into(), ..Default::default() };
        kept.push(
            faces.upload_face(upload).await.expect("upload before the fault").into_inner().face.expect("face").face_id,
        );
    }

    fs.cut();
    // A delete commits in memory, then its sync fails: not acknowledged.
    let err = faces.delete_face(DeleteFaceRequest { face_id: kept[0].clone() }).await.unwrap_err();
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
