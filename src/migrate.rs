//! `facevault migrate --from-data-dir DIR --to-postgres URL`: copies a stopped server's sled
//! store into PostgreSQL. Users, their external ids, faces (record and embedding), originals,
//! thumbnails and re-enrollment tokens are copied as stored: sealed values byte for byte (both
//! backends seal with the same associated data), so the target needs the source's key
//! (`--encryption-key-file`) and nothing is decrypted. The embedder record comes along; the
//! encryption check is written by `PgStore::open` with that key. The change log is not copied:
//! the target's starts empty, and every node rebuilds its index from the records at start.
//!
//! Resumable: each user is one transaction with its faces, images and token, and a user the
//! target already holds with the same record is skipped; a different user under its id or
//! external id is an error (nothing is overwritten). At the end each tenant's users, faces and
//! tokens are counted and checksummed on both sides (`storage::Tally`) and compared. Exit code
//! 0 when they are equal, 1 when they differ, 2 on an error or bad arguments.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::domain::Tenant;
use crate::error::{Error, Result};
use crate::storage::postgres::{PgOptions, PgStore};
use crate::storage::{EncryptionKey, Imported, STORE_DIR, Storage, Store, Tally};

/// Copies a sled store into PostgreSQL (stop the server first; run again to resume).
#[derive(Debug, Parser)]
#[command(name = "facevault migrate")]
pub struct MigrateArgs {
    /// The server's data directory (the store is DIR/v1).
    #[arg(long)]
    pub from_data_dir: PathBuf,

    /// The PostgreSQL database to copy into (its schema is created when missing).
    #[arg(long, env = "FACEVAULT_POSTGRES_URL", hide_env_values = true)]
    pub to_postgres: String,

    /// The at-rest encryption key file, for an encrypted store (the target is tied to the same key).
    #[arg(long)]
    pub encryption_key_file: Option<PathBuf>,

    /// Stops after this many users, unverified (tests of an interrupted run).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,

    /// Copy even though servers used the database in the last minute (they would not index
    /// the copied faces until restarted: the copy writes no change-log entries).
    #[arg(long)]
    pub force: bool,
}

/// What a run did.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) copied: usize,
    /// Users an earlier run had copied.
    pub(crate) present: usize,
    /// Faces of the users copied by this run.
    pub(crate) faces: usize,
    pub(crate) elapsed: Duration,
    /// Each tenant's tallies, source and target; `None` when the run stopped early.
    pub(crate) tenants: Option<BTreeMap<Tenant, (Tally, Tally)>>,
}

impl Outcome {
    /// The tenants whose tallies differ (none when the copy is verified equal).
    pub(crate) fn differing(&self) -> Option<usize> {
        self.tenants.as_ref().map(|t| t.values().filter(|(source, target)| source != target).count())
    }
}

fn refuse(message: String) -> Error {
    Error::Unavailable { message }
}

/// Opens the source as it is, never writing to it: a plain store is opened without a key
/// first, since opening a face-less plain store with a key would tie it to that key.
fn open_source(dir: &Path, key: Option<EncryptionKey>) -> Result<Store> {
    if !dir.join(STORE_DIR).join("db").is_file() {
        return Err(refuse(format!("no store at {}", dir.join(STORE_DIR).display())));
    }
    let opened = match (Store::open_unswept(dir, None), key) {
        (Ok(store), None) => Ok(store),
        (Ok(_), Some(_)) => {
            return Err(refuse(format!(
                "the store at {} is not encrypted: run without --encryption-key-file",
                dir.display()
            )));
        }
        (Err(_), Some(key)) => Store::open_unswept(dir, Some(key)),
        (Err(e), None) => Err(e),
    };
    // A running server holds the store's lock (sled reports an I/O error).
    opened.map_err(|e| refuse(format!("cannot open the sled store (stop the server first): {e}")))
}

/// Copies the source's embedder record (the target refuses one that differs). A source with
/// faces and no record (made by an older version) is refused: the first server on the target
/// would record its own embedder, whatever model made the faces.
fn copy_embedder(source: &Store, target: &PgStore, faces: usize) -> Result<()> {
    // The active model's embeddings are what is copied; a reindex under way would lose the
    // other model's half.
    let models = source.model_state()?;
    if models.state.keeps_both() {
        return Err(refuse(
            "the source store is in the middle of a reindex: finish it (facevault admin reindex finish), then migrate"
                .into(),
        ));
    }
    let active = if models.unrecorded() { None } else { Some(models.active_embedder()?.clone()) };
    match active {
        Some(embedder) => Storage::check_embedder(target, &embedder),
        None if faces == 0 => Ok(()),
        None => Err(refuse(
            "the source store records no embedder: start the server on it once (it records its embedder), stop it, \
             then migrate"
                .into(),
        )),
    }
}

/// Copies the store and compares both sides (see the module documentation).
pub(crate) fn migrate(args: &MigrateArgs) -> Result<Outcome> {
    let key = args.encryption_key_file.as_deref().map(crate::app::keys::load_encryption_key).transpose()?;
    let source = open_source(&args.from_data_dir, key.clone())?;
    let options = PgOptions {
        url: args.to_postgres.clone(),
        pool_size: 2,
        connect_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(600),
    };
    // Face lists are not copied yet: a migration must not drop a blocklist without a word.
    let lists = source.all_lists()?.len();
    if lists > 0 {
        return Err(refuse(format!(
            "the source store holds {lists} face list(s), which facevault migrate does not copy yet: note their \
             entries, delete the lists (DeleteFaceList), migrate, and create them again on PostgreSQL"
        )));
    }
    let target = PgStore::open(&options, key)?;
    let nodes = target.live_nodes()?;
    if nodes > 0 && !args.force {
        return Err(refuse(format!(
            "{nodes} node(s) used this database in the last minute (servers, or facevault verify): a running server \
             would not index the faces copied (the copy writes no change-log entries; each node rebuilds its index \
             from the records at start). Stop the servers, or pass --force and restart them after the copy"
        )));
    }
    let (total_users, total_faces) = source.export_sizes();
    copy_embedder(&source, &target, total_faces)?;
    let mut progress = Progress::new(total_users, total_faces);
    let mut outcome = Outcome { copied: 0, present: 0, faces: 0, elapsed: Duration::ZERO, tenants: None };
    let mut tallies: BTreeMap<Tenant, Tally> = BTreeMap::new();
    let mut faces_seen = 0;
    for (done, user) in source.export_users().enumerate() {
        if args.stop_after == Some(done) {
            target.make_durable()?;
            progress.finish(done, faces_seen);
            outcome.elapsed = progress.started.elapsed();
            return Ok(outcome);
        }
        let user = user?;
        match target.import_user(&user)? {
            Imported::Copied => {
                outcome.copied += 1;
                outcome.faces += user.faces.len();
            }
            Imported::Present => outcome.present += 1,
        }
        faces_seen += user.faces.len();
        tallies.entry(user.tenant.clone()).or_default().add_raw(&user);
        progress.update(done + 1, faces_seen);
    }
    target.make_durable()?;
    progress.finish(outcome.copied + outcome.present, faces_seen);
    outcome.elapsed = progress.started.elapsed();
    let mut compared: BTreeMap<Tenant, (Tally, Tally)> =
        tallies.into_iter().map(|(tenant, tally)| (tenant, (tally, Tally::default()))).collect();
    for (tenant, tally) in target.tallies()? {
        compared.entry(tenant).or_default().1 = tally;
    }
    outcome.tenants = Some(compared);
    Ok(outcome)
}

/// The progress line on stderr: rewritten in place at most 10 times a second on a terminal;
/// elsewhere (a log) a plain line at each further tenth of the users.
struct Progress {
    users: usize,
    faces: usize,
    started: Instant,
    shown: Option<Instant>,
    tty: bool,
    next_tenth: usize,
    /// The count of users the last plain line showed.
    printed: Option<usize>,
}

impl Progress {
    fn new(users: usize, faces: usize) -> Self {
        let tty = std::io::stderr().is_terminal();
        Progress { users, faces, started: Instant::now(), shown: None, tty, next_tenth: 1, printed: None }
    }

    fn update(&mut self, done: usize, faces: usize) {
        if self.tty {
            if self.shown.is_some_and(|at| at.elapsed() < Duration::from_millis(100)) {
                return;
            }
            self.shown = Some(Instant::now());
            eprint!("\r{}\x1b[K", self.line(done, faces, self.started.elapsed()));
        } else if done * 10 >= self.next_tenth * self.users.max(1) {
            self.next_tenth = done * 10 / self.users.max(1) + 1;
            self.printed = Some(done);
            eprintln!("{}", self.line(done, faces, self.started.elapsed()));
        }
    }

    fn finish(&self, done: usize, faces: usize) {
        let line = self.line(done, faces, self.started.elapsed());
        if self.tty {
            eprintln!("\r{line}\x1b[K");
        } else if self.printed != Some(done) {
            eprintln!("{line}");
        }
    }

    fn line(&self, done: usize, faces: usize, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = match self.users.saturating_sub(done) {
            0 => "done".to_owned(),
            _ if rate == 0.0 => "-".to_owned(),
            left => clock(Duration::from_secs_f64(left as f64 / rate)),
        };
        let percent = (done * 100).checked_div(self.users).unwrap_or(100);
        format!(
            "users {done}/{} ({percent}%)  faces {faces}/{}  {rate:.0} users/s, {:.0} faces/s  {} elapsed, ETA {eta}",
            self.users,
            self.faces,
            faces as f64 / secs,
            clock(elapsed)
        )
    }
}

/// `m:ss`, or `h:mm:ss` from an hour.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// The comparison table: a tenant equal on both sides on one line, one that differs on two.
fn print_table(tenants: &BTreeMap<Tenant, (Tally, Tally)>) {
    println!("{:<24} {:<7} {:>9} {:>9} {:>7}  checksum", "tenant", "side", "users", "faces", "tokens");
    let row = |tenant: &str, side: &str, t: &Tally, verdict: &str| {
        let sum = &t.checksum()[..16];
        println!("{tenant:<24} {side:<7} {:>9} {:>9} {:>7}  {sum}  {verdict}", t.users, t.faces, t.tokens);
    };
    for (tenant, (source, target)) in tenants {
        if source == target {
            row(tenant.as_str(), "both", source, "OK");
        } else {
            row(tenant.as_str(), "source", source, "DIFFERS");
            row("", "target", target, "");
        }
    }
}

/// The `migrate` subcommand: `args` are the words after `facevault migrate`.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let args = match MigrateArgs::try_parse_from(std::iter::once("facevault migrate".to_owned()).chain(args)) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let outcome = match migrate(&args) {
        Ok(outcome) => outcome,
        Err(e) => {
            // The URL may hold a password: never printed.
            eprintln!("facevault migrate: {e}");
            return ExitCode::from(2);
        }
    };
    let secs = outcome.elapsed.as_secs_f64().max(0.001);
    println!(
        "copied {} users with {} faces ({} users were there already) in {secs:.1} s: {:.0} users/s",
        outcome.copied,
        outcome.faces,
        outcome.present,
        (outcome.copied + outcome.present) as f64 / secs
    );
    let Some(tenants) = &outcome.tenants else {
        println!("stopped early (--stop-after): run the same command again to continue");
        return ExitCode::from(1);
    };
    print_table(tenants);
    match outcome.differing() {
        Some(0) => {
            println!("OK: PostgreSQL holds exactly the source's {} tenant(s)", tenants.len());
            ExitCode::SUCCESS
        }
        Some(n) => {
            println!("DIFFERS: {n} tenant(s) differ between the source and PostgreSQL");
            ExitCode::from(1)
        }
        None => ExitCode::from(1),
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::domain::User;
    use crate::storage::postgres::tests::TestDb;
    use crate::storage::{EmbedderRecord, Replace, TokenGrant, UserKey, UserPatch, keys};

    const KEY: [u8; 32] = [7; 32];

    fn embedder() -> EmbedderRecord {
        EmbedderRecord { id: "w600k_mbf".into(), sha256: "ab12".into() }
    }

    fn tenants() -> Vec<Tenant> {
        ["acme", "beta"].into_iter().map(|t| Tenant::new(t).unwrap()).collect()
    }

    /// In each of two tenants (the same face ids in both): users with 0, 1 and 2 faces, one
    /// face replaced, a user deleted (so the log holds entries), a live and an expired token.
    /// Returns the live tokens' hashes.
    fn build_source(dir: &Path, key: Option<EncryptionKey>) -> Vec<[u8; 32]> {
        let store = Store::open_with_key(dir, key).unwrap();
        store.check_embedder(&embedder()).unwrap();
        let mut hashes = Vec::new();
        for (n, t) in tenants().iter().enumerate() {
            let mut next_face = 1;
            let mut users = Vec::new();
            for i in 0..7 {
                let user =
                    store.create_user(t, User::unenrolled(format!("user-{i}"), SystemTime::now()), None).unwrap();
                for _ in 0..i % 3 {
                    let face = crate::storage::test_face(user.id, next_face, next_face as f32 * 0.01);
                    store.put_face(t, &face, Replace::Nothing, 5, None).unwrap();
                    next_face += 1;
                }
                users.push(user);
            }
            let face = crate::storage::test_face(users[2].id, 100, 1.0);
            store.put_face(t, &face, Replace::Oldest, 5, None).unwrap();
            store.delete_user(t, users[5].id, None).unwrap();
            let hash = [n as u8 + 1; 32];
            let live = TokenGrant { hash, expires_at: SystemTime::now() + Duration::from_secs(3600) };
            let expired = TokenGrant { hash: [n as u8 + 11; 32], expires_at: SystemTime::now() };
            for (user, grant) in [(users[1].id, live), (users[3].id, expired)] {
                let patch = UserPatch { reenrollment: Some(grant), ..UserPatch::default() };
                store.update_user(t, user, None, &patch, None).unwrap();
            }
            hashes.push(hash);
        }
        assert!(store.log_bounds().unwrap().head > 0);
        store.close().unwrap();
        hashes
    }

    fn args(dir: &Path, db: &TestDb, key_file: Option<&Path>) -> MigrateArgs {
        MigrateArgs {
            from_data_dir: dir.to_owned(),
            to_postgres: db.url.clone(),
            encryption_key_file: key_file.map(Path::to_owned),
            stop_after: None,
            force: false,
        }
    }

    fn key_file(dir: &Path) -> PathBuf {
        let path = dir.join("key");
        std::fs::write(&path, KEY.iter().map(|b| format!("{b:02x}")).collect::<String>()).unwrap();
        path
    }

    /// Every read of the Storage trait gives the same on both sides, both verify clean, and
    /// the index rebuilt from each holds the same faces.
    fn assert_same(source: &dyn Storage, target: &dyn Storage, hashes: &[[u8; 32]]) {
        for t in &tenants() {
            let users = source.list_users(t, None, 100).unwrap();
            assert_eq!(target.list_users(t, None, 100).unwrap(), users);
            assert_eq!(target.count_users(t).unwrap(), users.len());
            for user in &users {
                let by_external = UserKey::External(&user.external_id);
                assert_eq!(
                    target.user_with_faces(t, by_external).unwrap(),
                    source.user_with_faces(t, by_external).unwrap()
                );
                let by_id = UserKey::Id(user.id);
                let embeddings = source.user_with_embeddings(t, by_id, "w600k_mbf").unwrap();
                assert_eq!(target.user_with_embeddings(t, by_id, "w600k_mbf").unwrap(), embeddings);
                for &face in &user.face_ids {
                    for thumbnail in [false, true] {
                        let image = source.face_with_image(t, face, thumbnail).unwrap();
                        assert!(image.is_some());
                        assert_eq!(target.face_with_image(t, face, thumbnail).unwrap(), image);
                    }
                }
            }
        }
        for hash in hashes {
            assert!(source.token_user(hash, 5).unwrap().is_some());
            assert_eq!(target.token_user(hash, 5).unwrap(), source.token_user(hash, 5).unwrap());
        }
        for store in [source, target] {
            let integrity = store.verify(5).unwrap();
            assert!(integrity.problems.is_empty(), "{:?}", integrity.problems);
        }
        let (from_source, _) = crate::app::rebuild_index(source, usize::MAX).unwrap();
        let (from_target, applied) = crate::app::rebuild_index(target, usize::MAX).unwrap();
        assert_eq!(applied, 0, "the target's log starts empty");
        for t in &tenants() {
            assert!(!from_source.entries(t).is_empty());
            assert_eq!(from_target.entries(t), from_source.entries(t));
        }
    }

    fn exit_code(words: &[&str]) -> String {
        format!("{:?}", main(words.iter().map(|w| (*w).to_owned())))
    }

    #[test]
    fn a_store_with_face_lists_is_refused_rather_than_copied_without_them() {
        let dir = tempfile::tempdir().unwrap();
        build_source(dir.path(), None);
        {
            let store = Store::open(dir.path()).unwrap();
            let list = crate::domain::FaceList {
                id: crate::domain::ListId(0),
                name: "blocked".into(),
                kind: crate::domain::ListKind::Block,
                threshold: None,
                entry_count: 0,
                create_time: std::time::SystemTime::now(),
            };
            store.create_list(&tenants()[0], &list).unwrap().durable().unwrap();
        }
        let db = TestDb::new();
        let refused = migrate(&args(dir.path(), &db, None)).unwrap_err().to_string();
        assert!(refused.contains("1 face list(s)"), "{refused}");
    }

    #[test]
    fn migrate_copies_everything_resumes_after_an_interruption_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let hashes = build_source(dir.path(), None);
        let db = TestDb::new();
        let mut args = args(dir.path(), &db, None);
        // A server running on the store holds its lock.
        let running = Store::open(dir.path()).unwrap();
        let locked = migrate(&args).unwrap_err().to_string();
        assert!(locked.contains("stop the server first"), "{locked}");
        drop(running);

        // Interrupted after 4 users: what was copied is whole, and a second run continues.
        args.stop_after = Some(4);
        let first = migrate(&args).unwrap();
        assert_eq!((first.copied, first.present, first.tenants.is_none()), (4, 0, true));
        let target = PgStore::open(&db.options(), None).unwrap();
        assert!(Storage::verify(&target, 5).unwrap().problems.is_empty());
        args.stop_after = None;
        let second = migrate(&args).unwrap();
        assert_eq!((second.copied, second.present, second.differing()), (8, 4, Some(0)));
        let tallies = second.tenants.as_ref().unwrap();
        let acme = &tallies[&tenants()[0]].1;
        assert_eq!((acme.users, acme.faces, acme.tokens), (6, 4, 2), "one user deleted with its 2 faces");
        // Once more: nothing to copy, still equal.
        let third = migrate(&args).unwrap();
        assert_eq!((third.copied, third.present, third.differing()), (0, 12, Some(0)));

        let source = Store::open_unswept(dir.path(), None).unwrap();
        assert_same(&source, &target, &hashes);
        // The log starts empty, the embedder came along.
        assert_eq!(Storage::log_bounds(&target).unwrap(), crate::storage::LogBounds { head: 0, compacted: 0 });
        assert!(Storage::read_log(&target, 0, 10).unwrap().is_empty());
        Storage::check_embedder(&target, &embedder()).unwrap();
        let other = EmbedderRecord { id: "w600k_mbf".into(), sha256: "cd34".into() };
        assert!(Storage::check_embedder(&target, &other).is_err());
        // A write on the target is a new log entry after the imported records.
        let t = &tenants()[0];
        let user = source.find_user(t, UserKey::External("user-0")).unwrap().unwrap();
        let face = crate::storage::test_face(user.id, 500, 0.5);
        let pending = target.put_face_pending(t, &face, Replace::Nothing, 5, None, None).unwrap();
        assert_eq!(pending.seq(), 1);
        drop(source);

        // A node used the database a moment ago (the index rebuilt above): refused without --force.
        let live = migrate(&args).unwrap_err().to_string();
        assert!(live.contains("node(s) used this database"), "{live}");
        let args = MigrateArgs { force: true, ..args };
        // The target now holds a different user-0: refused, not overwritten; exit code 2.
        let refused = migrate(&args).unwrap_err().to_string();
        assert!(refused.contains("a different user") && refused.contains("acme"), "{refused}");
        let url = db.url.clone();
        let data_dir = dir.path().to_str().unwrap();
        assert_eq!(exit_code(&["--from-data-dir", data_dir, "--to-postgres", &url]), exit_code_of(2));
        // A target whose user holds an external id of the source under another id.
        let other_db = TestDb::new();
        let other_target = PgStore::open(&other_db.options(), None).unwrap();
        Storage::create_user(&other_target, t, User::unenrolled("user-3", SystemTime::now()), None).unwrap();
        let refused = migrate(&self::args(dir.path(), &other_db, None)).unwrap_err().to_string();
        assert!(refused.contains("external id"), "{refused}");
        // Extra data on the target shows in the comparison: exit code 1.
        let extra_db = TestDb::new();
        let extra = PgStore::open(&extra_db.options(), None).unwrap();
        Storage::create_user(&extra, &Tenant::new("gamma").unwrap(), User::unenrolled("x", SystemTime::now()), None)
            .unwrap();
        let outcome = migrate(&self::args(dir.path(), &extra_db, None)).unwrap();
        assert_eq!(outcome.differing(), Some(1));
        assert_eq!(exit_code(&["--from-data-dir", data_dir, "--to-postgres", &extra_db.url]), exit_code_of(1));
        // Bad arguments and a missing store: 2.
        assert_eq!(exit_code(&["--from-data-dir", data_dir, "--no-such-flag"]), exit_code_of(2));
        let empty = tempfile::tempdir().unwrap();
        let none = empty.path().to_str().unwrap();
        assert_eq!(exit_code(&["--from-data-dir", none, "--to-postgres", &url]), exit_code_of(2));
        assert!(!empty.path().join(STORE_DIR).exists(), "no store is created");
    }

    fn exit_code_of(code: u8) -> String {
        format!("{:?}", ExitCode::from(code))
    }

    #[test]
    fn an_encrypted_store_moves_sealed_byte_for_byte_with_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = EncryptionKey::from_bytes(&KEY);
        let hashes = build_source(dir.path(), Some(key.clone()));
        let key_path = key_file(dir.path());
        let db = TestDb::new();

        let without = migrate(&args(dir.path(), &db, None)).unwrap_err().to_string();
        assert!(without.contains("is encrypted"), "{without}");
        let wrong = dir.path().join("wrong");
        std::fs::write(&wrong, "08".repeat(32)).unwrap();
        let other = migrate(&args(dir.path(), &db, Some(&wrong))).unwrap_err().to_string();
        assert!(other.contains("different key"), "{other}");

        let outcome = migrate(&args(dir.path(), &db, Some(&key_path))).unwrap();
        assert_eq!((outcome.copied, outcome.differing()), (12, Some(0)));
        let target = PgStore::open(&db.options(), Some(key.clone())).unwrap();
        assert!(PgStore::open(&db.options(), None).is_err(), "the target is tied to the key");
        let source = Store::open_unswept(dir.path(), Some(key)).unwrap();
        assert_same(&source, &target, &hashes);
        for tree in [keys::USERS, keys::FACES, keys::EMBEDDINGS, keys::IMAGES, keys::THUMBNAILS, keys::TOKENS] {
            let sorted = |store: &dyn Storage| {
                let mut entries = store.raw_entries(tree).unwrap();
                entries.sort();
                entries
            };
            assert_eq!(sorted(&target), sorted(&source), "{tree} byte for byte");
        }
        let plain = face_bytes(&source);
        assert!(
            !Storage::raw_entries(&target, keys::THUMBNAILS).unwrap().iter().any(|(_, v)| v == &plain),
            "still sealed"
        );
        drop(source);

        // A plain store with a key: refused before anything is opened with it.
        let plain_dir = tempfile::tempdir().unwrap();
        build_source(plain_dir.path(), None);
        let refused = migrate(&args(plain_dir.path(), &TestDb::new(), Some(&key_path))).unwrap_err().to_string();
        assert!(refused.contains("not encrypted"), "{refused}");
        assert!(!Store::open_unswept(plain_dir.path(), None).unwrap().is_encrypted());
    }

    /// A thumbnail as the source's first face holds it, in plain.
    fn face_bytes(source: &Store) -> Vec<u8> {
        let t = &tenants()[0];
        let user = source.find_user(t, UserKey::External("user-1")).unwrap().unwrap();
        source.face_with_image(t, user.face_ids[0], true).unwrap().unwrap().1
    }

    /// The rate on stores of 2,000 users with 2 faces each, with the test's small images (about
    /// 150 bytes) and with a 64 KiB original and an 8 KiB thumbnail per face:
    /// `cargo test --lib migration_rate -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn migration_rate() {
        for sizes in [None, Some((64 << 10, 8 << 10))] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open_for_import(dir.path()).unwrap();
            store.check_embedder(&embedder()).unwrap();
            let t = &tenants()[0];
            let noise = |seed: u64, len: usize| {
                let mut state = seed;
                (0..len).map(|_| (crate::search::sketch::splitmix64(&mut state) >> 56) as u8).collect::<Vec<u8>>()
            };
            for i in 0..2000u64 {
                let user =
                    store.create_user(t, User::unenrolled(format!("user-{i}"), SystemTime::now()), None).unwrap();
                for f in 0..2 {
                    let id = i * 2 + f + 1;
                    let mut face = crate::storage::test_face(user.id, id, id as f32 * 0.001);
                    if let Some((original, thumbnail)) = sizes {
                        (face.original, face.thumbnail) = (noise(id, original), noise(!id, thumbnail));
                    }
                    store.put_face(t, &face, Replace::Nothing, 5, None).unwrap();
                }
            }
            store.close().unwrap();
            drop(store);
            let db = TestDb::new();
            let started = Instant::now();
            let outcome = migrate(&args(dir.path(), &db, None)).unwrap();
            let (total, copy) = (started.elapsed().as_secs_f64(), outcome.elapsed.as_secs_f64());
            assert_eq!((outcome.copied, outcome.faces, outcome.differing()), (2000, 4000, Some(0)));
            let again = Instant::now();
            let second = migrate(&args(dir.path(), &db, None)).unwrap();
            assert_eq!((second.present, second.differing()), (2000, Some(0)));
            eprintln!(
                "RATE images {sizes:?}: copy {copy:.2} s ({:.0} users/s, {:.0} faces/s), with the verification \
                 {total:.2} s; a second run (all present) {:.2} s",
                2000.0 / copy,
                4000.0 / copy,
                again.elapsed().as_secs_f64()
            );
        }
    }

    #[test]
    fn the_progress_line_shows_counts_rates_and_the_time_left() {
        let progress = Progress::new(2000, 4000);
        let line = progress.line(500, 1000, Duration::from_secs(5));
        assert_eq!(line, "users 500/2000 (25%)  faces 1000/4000  100 users/s, 200 faces/s  0:05 elapsed, ETA 0:15");
        assert!(progress.line(2000, 4000, Duration::from_secs(4000)).ends_with("1:06:40 elapsed, ETA done"));
        assert!(Progress::new(0, 0).line(0, 0, Duration::ZERO).starts_with("users 0/0 (100%)"));
    }
}
