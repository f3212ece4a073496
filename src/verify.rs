//! `facevault verify --data-dir DIR` (or `--postgres-url URL`): an operator's check of a stopped server's store. Opens the
//! store (with its key when encrypted), runs `Store::verify` (every cross-record invariant, every
//! sealed value opens), rebuilds the search index from the store and checks it holds exactly the
//! faces the users list, and checks the index snapshot against the change log: it loads, its
//! entry lies within the log, and with the log after it applied it equals the rebuilt index
//! (app::snapshot::check). Prints a report; exit code 0 when the store is whole, 1 when problems
//! were found, 2 when the store could not be opened or the arguments are wrong.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::storage::postgres::{PgOptions, PgStore};
use crate::storage::{Storage, Store};

/// Checks a facevault store (the server must be stopped: the store is locked while it runs).
#[derive(Debug, Parser)]
#[command(name = "facevault verify")]
pub struct VerifyArgs {
    /// The server's data directory (the store is DIR/v1).
    #[arg(long, required_unless_present = "postgres_url", conflicts_with = "postgres_url")]
    pub data_dir: Option<PathBuf>,

    /// The server's PostgreSQL database instead (it may keep serving: the check reads one
    /// snapshot of the database).
    #[arg(long, env = "FACEVAULT_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,

    /// The at-rest encryption key file, for an encrypted store.
    #[arg(long)]
    pub encryption_key_file: Option<PathBuf>,

    /// The server's --max-faces-per-user: a user with more faces is a problem.
    #[arg(long, default_value_t = 5)]
    pub max_faces_per_user: usize,
}

/// What a verification found, for the report and the exit code.
#[derive(Debug, Default)]
pub struct Report {
    pub users: usize,
    pub faces: usize,
    pub indexed: usize,
    /// The snapshot and the change log, when the index could be rebuilt.
    pub log: Option<crate::app::snapshot::Check>,
    pub problems: Vec<String>,
}

/// Opens the store and checks it.
pub fn verify(args: &VerifyArgs) -> crate::Result<Report> {
    let key = args.encryption_key_file.as_deref().map(crate::app::keys::load_encryption_key).transpose()?;
    let (store, data_dir): (Box<dyn Storage>, _) = match (&args.postgres_url, &args.data_dir) {
        (Some(url), _) => {
            let options = PgOptions {
                url: url.clone(),
                pool_size: 2,
                connect_timeout: std::time::Duration::from_secs(10),
                statement_timeout: std::time::Duration::from_secs(600),
            };
            (Box::new(PgStore::open(&options, key.clone())?), None)
        }
        (None, Some(dir)) => (Box::new(Store::open_unswept(dir, key.clone())?), Some(dir)),
        (None, None) => return Err(crate::Error::Unavailable { message: "give --data-dir or --postgres-url".into() }),
    };
    let store = store.as_ref();
    let integrity = store.verify(args.max_faces_per_user)?;
    let mut report =
        Report { users: integrity.users, faces: integrity.faces, problems: integrity.problems, ..Report::default() };
    match crate::app::rebuild_index(store, usize::MAX) {
        Ok((index, _)) => {
            report.indexed = index.sizes().iter().map(|(_, n)| n).sum();
            if report.indexed != report.faces {
                report.problems.push(format!(
                    "index: rebuilt from the store it holds {} faces, the users list {}",
                    report.indexed, report.faces
                ));
            }
            // A PostgreSQL store has no index snapshot: every node rebuilds from the database.
            if let Some(dir) = data_dir {
                let path = crate::app::snapshot::path(dir);
                let check = crate::app::snapshot::check(store, &path, key.as_ref(), &index)?;
                report.problems.extend(check.problems.iter().cloned());
                report.log = Some(check);
            }
        }
        Err(e) => report.problems.push(format!("index: cannot be rebuilt from the store: {e}")),
    }
    Ok(report)
}

/// The `verify` subcommand: `args` are the words after `facevault verify`.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let args = match VerifyArgs::try_parse_from(std::iter::once("facevault verify".to_owned()).chain(args)) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // The URL may hold a password: never printed.
    let place = args.data_dir.as_ref().map_or("in PostgreSQL".to_owned(), |d| format!("at {}", d.display()));
    match verify(&args) {
        Ok(report) => {
            println!("store {place}: {} users, {} faces, {} indexed", report.users, report.faces, report.indexed);
            if let Some(log) = &report.log {
                let snapshot =
                    log.snapshot.map_or("no index snapshot".to_owned(), |seq| format!("index snapshot at {seq}"));
                let replayed = if log.replayed { ", replayed and compared with the store" } else { "" };
                println!(
                    "change log: compacted up to entry {}, ends at {}; {snapshot}{replayed}",
                    log.bounds.compacted, log.bounds.head
                );
            }
            if report.problems.is_empty() {
                println!("OK: every invariant holds and the index equals the store");
                ExitCode::SUCCESS
            } else {
                for problem in &report.problems {
                    println!("PROBLEM: {problem}");
                }
                println!("{} problem(s) found", report.problems.len());
                ExitCode::from(1)
            }
        }
        Err(e) => {
            // A running server holds the store's lock: sled's error says "could not acquire lock".
            eprintln!("facevault verify: cannot open the store {place} (a sled store: stop the server first): {e}");
            ExitCode::from(2)
        }
    }
}
