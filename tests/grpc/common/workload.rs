//! The workload of the crash and power-cut tests (tests/grpc/crash.rs, tests/powercut.rs): one
//! client per user sending random UploadFace / UpdateFace / DeleteFace / UpdateUser calls, one
//! at a time, and the history of what each client was told, which decides whether what is read
//! back, or found in a store after a crash, a power cut or a fault, is what the acknowledged
//! calls made (each call of unknown outcome applied whole or not at all).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use facevault::grpc::pb::{
    DeleteFaceRequest, GetUserRequest, ListFacesRequest, UpdateFaceRequest, UpdateUserRequest, UploadFaceRequest, User,
    UserRef, user_ref,
};
use tonic::Code;

use super::{Faces, Users};

/// The server's default --max-faces-per-user: a client uploads only below it.
pub(crate) const MAX_FACES: usize = 5;

/// splitmix64.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        facevault::search::sketch::splitmix64(&mut self.0)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A display name part: letters only, as validation wants.
pub(crate) fn letters(mut v: u64) -> String {
    let mut out = String::new();
    for _ in 0..8 {
        out.push(char::from(b'a' + (v % 26) as u8));
        v /= 26;
    }
    out
}

pub(crate) fn by_id(id: &str) -> Option<UserRef> {
    Some(UserRef { r#ref: Some(user_ref::Ref::UserId(id.to_owned())) })
}

/// A user as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Model {
    pub(crate) faces: BTreeSet<String>,
    pub(crate) display_name: String,
    /// `metadata_summary` of the user's metadata.
    pub(crate) metadata: String,
}

impl Model {
    /// A user as `create_users` makes it.
    pub(crate) fn initial() -> Self {
        Model { faces: BTreeSet::new(), display_name: "initial".into(), metadata: metadata_summary(&BTreeMap::new()) }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Upload,
    Replace(String),
    Delete(String),
    /// UpdateUser: the display name, and the metadata too when given.
    Rename(String, Option<Metadata>),
}

impl Op {
    pub(crate) fn rpc(&self) -> &'static str {
        match self {
            Op::Upload => "UploadFace",
            Op::Replace(_) => "UpdateFace",
            Op::Delete(_) => "DeleteFace",
            Op::Rename(..) => "UpdateUser",
        }
    }

    /// Applies the call to `model`: `face` is the face it added (Upload, Replace), when known;
    /// an added face not known counts in `anonymous`.
    pub(crate) fn apply(&self, model: &mut Model, face: Option<&String>, anonymous: &mut usize) {
        let mut add = |model: &mut Model| match face {
            Some(face) => {
                model.faces.insert(face.clone());
            }
            None => *anonymous += 1,
        };
        match self {
            Op::Upload => add(model),
            Op::Replace(old) => {
                model.faces.remove(old);
                add(model);
            }
            Op::Delete(face) => {
                model.faces.remove(face);
            }
            Op::Rename(name, metadata) => {
                model.display_name = name.clone();
                if let Some(metadata) = metadata {
                    model.metadata = metadata.summary.clone();
                }
            }
        }
    }
}

/// A user's metadata map; shown by its summary.
#[derive(Clone)]
pub(crate) struct Metadata {
    pub(crate) map: BTreeMap<String, String>,
    pub(crate) summary: String,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

/// Entries, bytes and an FNV-1a hash of a metadata map: equal maps, equal summaries.
pub(crate) fn metadata_summary<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
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
pub(crate) fn big_metadata(rng: &mut Rng) -> Metadata {
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

/// One call of a user's client, in the order sent.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Acknowledged; with the face it added (Upload, Replace).
    Acked(Op, Option<String>),
    /// Failed or cut off: it may have happened (whole) or not; with the face it added when a
    /// later read showed one.
    Unknown(Op, Option<String>),
}

/// What a user's client was told: the state it started from and every call since.
#[derive(Debug, Clone)]
pub(crate) struct History {
    pub(crate) start: Model,
    pub(crate) steps: Vec<Step>,
    /// What the client believes now: the acknowledged calls applied, and after a failed call
    /// what it read back. The next calls are chosen from it.
    pub(crate) now: Model,
}

impl History {
    pub(crate) fn new(start: Model) -> Self {
        History { now: start.clone(), start, steps: Vec::new() }
    }

    pub(crate) fn acked(&mut self, op: Op, face: Option<String>) {
        op.apply(&mut self.now, face.as_ref(), &mut 0);
        self.steps.push(Step::Acked(op, face));
    }

    pub(crate) fn unknown(&mut self, op: Op) {
        self.steps.push(Step::Unknown(op, None));
    }

    /// The user as read back after the last call failed: the face that call added, if it shows
    /// one, is that call's; the client goes on from what it read.
    pub(crate) fn read_back(&mut self, seen: Model) {
        let known = self.known_faces();
        let new: Vec<&String> = seen.faces.iter().filter(|f| !known.contains(*f)).collect();
        if let (Some(Step::Unknown(Op::Upload | Op::Replace(_), face @ None)), [added]) =
            (self.steps.last_mut(), &new[..])
        {
            *face = Some((*added).clone());
        }
        self.now = seen;
    }

    /// Every face id the history names.
    fn known_faces(&self) -> BTreeSet<String> {
        let mut known = self.start.faces.clone();
        for step in &self.steps {
            let (Step::Acked(op, face) | Step::Unknown(op, face)) = step;
            known.extend(face.iter().cloned());
            if let Op::Replace(f) | Op::Delete(f) = op {
                known.insert(f.clone());
            }
        }
        known
    }

    /// The calls whose outcome is not known.
    pub(crate) fn unknowns(&self) -> Vec<&Op> {
        self.steps.iter().filter_map(|s| if let Step::Unknown(op, _) = s { Some(op) } else { None }).collect()
    }

    /// The user with only the acknowledged calls applied (for messages).
    pub(crate) fn acknowledged(&self) -> Model {
        let mut model = self.start.clone();
        for step in &self.steps {
            if let Step::Acked(op, face) = step {
                op.apply(&mut model, face.as_ref(), &mut 0);
            }
        }
        model
    }

    /// Whether `seen` is the start with every acknowledged call applied and each call of
    /// unknown outcome applied whole or not at all, in the order sent. A face a call added that
    /// no one saw may be any id the history does not name.
    pub(crate) fn explains(&self, seen: &Model) -> bool {
        // Every state the calls can have led to, with the number of faces added unseen.
        let mut states: BTreeSet<(Model, usize)> = BTreeSet::from([(self.start.clone(), 0)]);
        for step in &self.steps {
            let (Step::Acked(op, face) | Step::Unknown(op, face)) = step;
            let mut next = BTreeSet::new();
            for (model, anonymous) in &states {
                let (mut model2, mut anonymous2) = (model.clone(), *anonymous);
                op.apply(&mut model2, face.as_ref(), &mut anonymous2);
                next.insert((model2, anonymous2));
                if matches!(step, Step::Unknown(..)) {
                    next.insert((model.clone(), *anonymous));
                }
            }
            states = next;
            assert!(states.len() < 100_000, "too many calls of unknown outcome to check");
        }
        let known = self.known_faces();
        states.iter().any(|(model, anonymous)| {
            let extra: Vec<&String> = seen.faces.difference(&model.faces).collect();
            model.display_name == seen.display_name
                && model.metadata == seen.metadata
                && model.faces.is_subset(&seen.faces)
                && extra.len() == *anonymous
                && extra.iter().all(|f| !known.contains(*f))
        })
    }
}

/// How the clients of one run treat failed calls, and when they stop.
#[derive(Debug)]
pub(crate) struct Control {
    /// The server was killed: a call that fails now ends its client, its outcome unknown.
    pub(crate) killed: AtomicBool,
    /// Faults are injected: any call may fail (its outcome unknown); the client waits as the
    /// status's RetryInfo says, reads the user back and goes on. Otherwise a failure before the
    /// kill fails the test.
    pub(crate) faults: bool,
    /// Every client ends after its current call.
    pub(crate) stop: AtomicBool,
    /// When the run began: call times are measured from it.
    pub(crate) t0: Instant,
}

impl Control {
    pub(crate) fn new(faults: bool) -> Arc<Self> {
        Arc::new(Control { killed: AtomicBool::new(false), faults, stop: AtomicBool::new(false), t0: Instant::now() })
    }

    pub(crate) fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub(crate) fn now(&self) -> Duration {
        self.t0.elapsed()
    }
}

/// No answer within this long is a hang.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One call as its client saw it.
#[allow(dead_code, reason = "read by the fault test of tests/powercut.rs, not by the crash test")]
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) user: usize,
    pub(crate) rpc: &'static str,
    /// A write (not a read back).
    pub(crate) write: bool,
    /// Since `Control::t0`.
    pub(crate) started: Duration,
    pub(crate) ended: Duration,
    /// `None`: acknowledged.
    pub(crate) failure: Option<Failure>,
}

#[allow(dead_code, reason = "read by the fault test of tests/powercut.rs, not by the crash test")]
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) code: Code,
    pub(crate) retry_info: Option<Duration>,
    pub(crate) message: String,
    /// No answer within CALL_TIMEOUT (the call was given up).
    pub(crate) hung: bool,
}

impl Failure {
    pub(crate) fn of(status: &tonic::Status) -> Self {
        use tonic_types::StatusExt;
        let retry_info = status.get_error_details().retry_info().map(|r| r.retry_delay.unwrap_or_default());
        Failure { code: status.code(), retry_info, message: status.message().to_owned(), hung: false }
    }

    pub(crate) fn hung() -> Self {
        Failure {
            code: Code::DeadlineExceeded,
            retry_info: None,
            message: format!("no answer within {CALL_TIMEOUT:?}"),
            hung: true,
        }
    }

    /// A call that failed because the server went away (after the kill).
    pub(crate) fn server_gone(&self) -> bool {
        matches!(self.code, Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal)
    }
}

/// One user's client.
pub(crate) struct Client {
    /// The user's number (for messages).
    pub(crate) user: usize,
    pub(crate) faces: Faces,
    pub(crate) users: Users,
    pub(crate) user_id: String,
    pub(crate) image: Vec<u8>,
    /// Every UpdateUser also replaces the metadata with the largest allowed, in about half the
    /// calls.
    pub(crate) big_metadata: bool,
}

/// What a client did.
#[derive(Debug)]
pub(crate) struct Driven {
    pub(crate) history: History,
    pub(crate) calls: Vec<Call>,
    pub(crate) acknowledged: usize,
    pub(crate) metadata_updates: usize,
}

impl Client {
    /// Sends one call; the face it added (Upload, Replace).
    pub(crate) async fn send(&mut self, op: &Op) -> Result<Option<String>, tonic::Status> {
        let user = by_id(&self.user_id);
        match op {
            Op::Upload => {
                let request = UploadFaceRequest { user, image: self.image.clone().into(), ..Default::default() };
                let reply = self.faces.upload_face(request).await?.into_inner();
                Ok(Some(reply.face.expect("face").face_id))
            }
            Op::Replace(old) => {
                let request = UpdateFaceRequest {
                    user,
                    face_id: old.clone(),
                    image: self.image.clone().into(),
                    ..Default::default()
                };
                let reply = self.faces.update_face(request).await?.into_inner();
                assert_eq!(&reply.replaced_face_id, old);
                Ok(Some(reply.face.expect("face").face_id))
            }
            Op::Delete(face) => {
                self.faces.delete_face(DeleteFaceRequest { face_id: face.clone(), ..Default::default() }).await?;
                Ok(None)
            }
            Op::Rename(name, metadata) => {
                let mut paths = vec!["display_name".to_owned()];
                let mut update = User { display_name: name.clone(), ..User::default() };
                if let Some(metadata) = metadata {
                    paths.push("metadata".to_owned());
                    update.metadata = metadata.map.clone().into_iter().collect();
                }
                let request = UpdateUserRequest {
                    user,
                    user_update: Some(update),
                    update_mask: Some(prost_types::FieldMask { paths }),
                    ..Default::default()
                };
                self.users.update_user(request).await?;
                Ok(None)
            }
        }
    }

    pub(crate) async fn read(&mut self) -> Result<Option<Model>, tonic::Status> {
        read_user(&mut self.faces, &mut self.users, &self.user_id).await
    }

    fn choose(&self, rng: &mut Rng, now: &Model) -> Op {
        let current: Vec<String> = now.faces.iter().cloned().collect();
        // A user with large metadata updates it in about half its calls.
        let update_user = self.big_metadata && !current.is_empty() && rng.below(3) == 0;
        match (current.len(), if update_user { 3 } else { rng.below(4) }) {
            (0, _) => Op::Upload,
            (len, 0) if len < MAX_FACES => Op::Upload,
            (_, 0 | 1) => Op::Replace(current[rng.below(current.len())].clone()),
            (_, 2) => Op::Delete(current[rng.below(current.len())].clone()),
            _ => {
                let name = format!("Name {}", letters(rng.next()));
                Op::Rename(name, self.big_metadata.then(|| big_metadata(rng)))
            }
        }
    }

    /// Sends random calls, one at a time, until the server dies (a call fails after the kill)
    /// or the run stops.
    pub(crate) async fn drive(mut self, start: Model, seed: u64, control: Arc<Control>) -> Driven {
        let mut rng = Rng(seed);
        let mut driven =
            Driven { history: History::new(start), calls: Vec::new(), acknowledged: 0, metadata_updates: 0 };
        let mut failed_in_a_row = 0;
        while !control.stopped() {
            let op = self.choose(&mut rng, &driven.history.now);
            let started = control.now();
            let result = match tokio::time::timeout(CALL_TIMEOUT, self.send(&op)).await {
                Ok(Ok(face)) => Ok(face),
                Ok(Err(status)) => Err(Failure::of(&status)),
                Err(_) => Err(Failure::hung()),
            };
            let mut call =
                Call { user: self.user, rpc: op.rpc(), write: true, started, ended: control.now(), failure: None };
            match result {
                Ok(face) => {
                    driven.acknowledged += 1;
                    driven.metadata_updates += usize::from(matches!(op, Op::Rename(_, Some(_))));
                    driven.history.acked(op, face);
                    driven.calls.push(call);
                    failed_in_a_row = 0;
                }
                Err(failure) => {
                    driven.history.unknown(op.clone());
                    call.failure = Some(failure.clone());
                    driven.calls.push(call);
                    if control.killed() && failure.server_gone() {
                        return driven;
                    }
                    assert!(control.faults, "{op:?} failed for a reason other than the kill: {failure:?}");
                    // As a client would: wait as told (longer after each failure), then find
                    // out what happened to the user.
                    failed_in_a_row += 1;
                    let delay = failure.retry_info.unwrap_or(Duration::from_secs(1)) * failed_in_a_row;
                    tokio::time::sleep(delay.min(Duration::from_secs(3))).await;
                    self.read_back(&mut driven, &control).await;
                }
            }
        }
        driven
    }

    /// Reads the user back after a failed call, retrying while reads fail, until the run stops.
    async fn read_back(&mut self, driven: &mut Driven, control: &Control) {
        while !control.stopped() {
            let started = control.now();
            let result = match tokio::time::timeout(CALL_TIMEOUT, self.read()).await {
                Ok(Ok(Some(seen))) => Ok(seen),
                Ok(Ok(None)) => panic!("user {} is gone", self.user),
                Ok(Err(status)) => Err(Failure::of(&status)),
                Err(_) => Err(Failure::hung()),
            };
            let ended = control.now();
            let mut call =
                Call { user: self.user, rpc: "GetUser+ListFaces", write: false, started, ended, failure: None };
            match result {
                Ok(seen) => {
                    driven.calls.push(call);
                    driven.history.read_back(seen);
                    return;
                }
                Err(failure) => {
                    let delay = failure.retry_info.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(3));
                    call.failure = Some(failure);
                    driven.calls.push(call);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// The user through the API; `None` when it does not exist.
pub(crate) async fn read_user(
    faces: &mut Faces,
    users: &mut Users,
    user_id: &str,
) -> Result<Option<Model>, tonic::Status> {
    let user = match users.get_user(GetUserRequest { user: by_id(user_id) }).await {
        Ok(user) => user.into_inner(),
        Err(status) if status.code() == Code::NotFound => return Ok(None),
        Err(status) => return Err(status),
    };
    let listed = faces.list_faces(ListFacesRequest { user: by_id(user_id) }).await?.into_inner();
    let faces: BTreeSet<String> = listed.faces.into_iter().map(|f| f.face_id).collect();
    assert_eq!(user.face_count as usize, faces.len(), "GetUser's count and ListFaces agree");
    Ok(Some(Model { faces, display_name: user.display_name, metadata: metadata_summary(&user.metadata) }))
}

/// A user that `history` does not explain, for a failure report.
pub(crate) fn mismatch(who: &str, history: &History, where_: &str, seen: &Model) -> String {
    let acked = history.acknowledged();
    format!(
        "{who}: acknowledged {:?} ({}) {:?}, of unknown outcome {:?}, {where_} {:?} ({}) {:?}",
        acked.display_name,
        acked.metadata,
        acked.faces,
        history.unknowns(),
        seen.display_name,
        seen.metadata,
        seen.faces
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(faces: &[&str], name: &str) -> Model {
        Model { faces: faces.iter().map(|f| (*f).to_owned()).collect(), display_name: name.into(), ..Model::initial() }
    }

    #[test]
    fn a_history_explains_exactly_the_states_its_calls_can_lead_to() {
        let mut history = History::new(model(&["a", "b"], "x"));
        history.acked(Op::Upload, Some("c".into()));
        history.acked(Op::Delete("a".into()), None);
        assert!(history.explains(&model(&["b", "c"], "x")));
        assert!(!history.explains(&model(&["a", "b", "c"], "x")), "an acknowledged delete undone");
        assert!(!history.explains(&model(&["b"], "x")), "an acknowledged upload lost");

        // One call of unknown outcome: whole or not at all.
        let mut replace = history.clone();
        replace.unknown(Op::Replace("b".into()));
        assert!(replace.explains(&model(&["b", "c"], "x")), "not applied");
        assert!(replace.explains(&model(&["c", "new"], "x")), "applied, with a face no one saw");
        assert!(!replace.explains(&model(&["c"], "x")), "half applied: removed, nothing added");
        assert!(!replace.explains(&model(&["b", "c", "new"], "x")), "half applied: added, nothing removed");
        assert!(!replace.explains(&model(&["c", "a"], "x")), "the face it added is one the history names");

        // Several, each applied or not, in order; a face read back belongs to its call.
        let mut many = history.clone();
        many.unknown(Op::Upload);
        many.read_back(model(&["b", "c", "d"], "x"));
        many.unknown(Op::Rename("y".into(), None));
        many.acked(Op::Delete("d".into()), None);
        for (faces, name, ok) in [
            (&["b", "c"][..], "x", true),
            (&["b", "c"], "y", true),
            (&["b", "c", "d"], "x", false),
            (&["b", "c", "e"], "x", false),
            (&["b", "c"], "z", false),
        ] {
            assert_eq!(many.explains(&model(faces, name)), ok, "{faces:?} {name}");
        }
    }
}
