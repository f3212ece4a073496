//! `facevault verify --data-dir DIR`: an operator's check of a stopped server's store. Opens the
//! store (with its key when encrypted), runs `Store::verify` (every cross-record invariant, every
//! sealed value opens), rebuilds the search index from the store and checks it holds exactly the
//! faces the users list, and checks the index snapshot against the change log: it loads, its
//! entry lies within the log, and with the log after it applied it equals the rebuilt index
//! (app::snapshot::check). Prints a report; exit code 0 when the store is whole, 1 when problems
//! were found, 2 when the store could not be opened or the arguments are wrong.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::storage::Store;

/// Checks a facevault store (the server must be stopped: the store is locked while it runs).
#[derive(Debug, Parser)]
#[command(name = "facevault verify")]
pub struct VerifyArgs {
    /// The server's data directory (the store is DIR/v1).
    #[arg(long)]
    pub data_dir: PathBuf,

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
    let store = Store::open_unswept(&args.data_dir, key.clone())?;
    let integrity = store.verify(args.max_faces_per_user)?;
    let mut report =
        Report { users: integrity.users, faces: integrity.faces, problems: integrity.problems, ..Report::default() };
    match crate::app::rebuild_index(&store, usize::MAX) {
        Ok((index, _)) => {
            report.indexed = index.sizes().iter().map(|(_, n)| n).sum();
            if report.indexed != report.faces {
                report.problems.push(format!(
                    "index: rebuilt from the store it holds {} faces, the users list {}",
                    report.indexed, report.faces
                ));
            }
            let path = crate::app::snapshot::path(&args.data_dir);
            let check = crate::app::snapshot::check(&store, &path, key.as_ref(), &index)?;
            report.problems.extend(check.problems.iter().cloned());
            report.log = Some(check);
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
    match verify(&args) {
        Ok(report) => {
            println!(
                "store {}: {} users, {} faces, {} indexed",
                args.data_dir.display(),
                report.users,
                report.faces,
                report.indexed
            );
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
            eprintln!(
                "facevault verify: cannot open the store at {} (stop the server first): {e}",
                args.data_dir.display()
            );
            ExitCode::from(2)
        }
    }
}
