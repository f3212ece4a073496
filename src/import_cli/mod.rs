//! `facevault import`: moves a folder of photos or a CSV manifest into facevault through one
//! ImportFaces stream (README: "Importing users"), with a progress line, a report CSV of every
//! row's outcome, and resumption: each row's request id comes from the row and its image, so
//! running the same command again replays what was imported and sends the rest.
//!
//! ```text
//! facevault import photos/                  (photos/<external_id>/<photo> or photos/<external_id>.jpg)
//! facevault import manifest.csv --report report.csv
//! facevault import manifest.csv --dry-run   (checks the manifest and decodes every image locally)
//! ```
//!
//! Exit codes: 0 every row imported (CREATED, ADDED or REPLAYED); 1 some rows failed (see the
//! report); 2 usage, an unreadable manifest, or a stream that broke (run again to resume);
//! 4 refused for the credential.

mod manifest;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tokio::sync::mpsc;

use crate::cli_client::{clock, reason_of};
use crate::grpc::pb;
use manifest::{LocalFailure, Row, csv_field};

#[derive(Debug, Parser)]
#[command(name = "facevault import", about = "Import users and their faces from a folder or a CSV manifest")]
struct ImportArgs {
    /// A folder (<external_id>/<photo>, or <external_id>.<jpg|jpeg|png|webp>) or a CSV manifest
    /// with a header: external_id,image[,display_name,email,phone,comment] (image paths
    /// relative to the manifest's folder).
    source: PathBuf,
    /// The server (https:// with TLS).
    #[arg(long, env = "FACEVAULT_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// An API key with the users:write and faces:write scopes.
    #[arg(long, env = "FACEVAULT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM of the CA that signed the server's certificate (https).
    #[arg(long, env = "FACEVAULT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Where the outcome of every row is written (CSV).
    #[arg(long, default_value = "facevault-import-report.csv")]
    report: PathBuf,
    /// Check the manifest and decode every image locally; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// A face that matches another user's: stored and reported, or refused (DUPLICATE_FACE).
    #[arg(long, value_enum, default_value_t = DuplicatePolicy::Report)]
    duplicate_policy: DuplicatePolicy,
    /// A photo with more than one face: enroll a clearly dominant one, or refuse it.
    #[arg(long, value_enum, default_value_t = MultipleFaces::Dominant)]
    multiple_faces_policy: MultipleFaces,
    /// Images larger than this are failed locally (IMAGE_TOO_LARGE), never sent: keep it at or
    /// below the server's --max-image-bytes (a larger message would end the stream).
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    max_image_bytes: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DuplicatePolicy {
    Report,
    Reject,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MultipleFaces {
    Dominant,
    Reject,
}

/// The outcome of a row, as the report writes it.
#[derive(Debug, Clone, Default)]
struct Outcome {
    outcome: String,
    user_id: String,
    face_id: String,
    reason: String,
    message: String,
    duplicates: usize,
    warnings: String,
}

impl Outcome {
    fn failed(reason: &str, message: &str) -> Self {
        Outcome { outcome: "FAILED".into(), reason: reason.into(), message: message.into(), ..Outcome::default() }
    }

    fn of(result: &pb::ImportResult) -> Self {
        let name = |v: i32| pb::import_result::ImportOutcome::try_from(v).map_or("UNKNOWN", |o| o.as_str_name());
        let (reason, message) = match &result.error {
            Some(error) => {
                let status = tonic::Status::with_details(
                    tonic::Code::from(error.code),
                    error.message.clone(),
                    prost::Message::encode_to_vec(error).into(),
                );
                (reason_of(&status), error.message.clone())
            }
            None => (String::new(), String::new()),
        };
        Outcome {
            outcome: name(result.outcome).to_owned(),
            user_id: result.user_id.clone(),
            face_id: result.face.as_ref().map(|f| f.face_id.clone()).unwrap_or_default(),
            reason,
            message,
            duplicates: result.duplicates.len(),
            warnings: result.warnings.join(" "),
        }
    }

    fn is_failure(&self) -> bool {
        self.outcome != "CREATED" && self.outcome != "ADDED" && self.outcome != "REPLAYED"
    }
}

/// Counts and the progress line.
struct Progress {
    total: usize,
    done: usize,
    by_outcome: BTreeMap<String, usize>,
    failures: BTreeMap<String, usize>,
    started: Instant,
    last_drawn: Option<Instant>,
    tty: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        Progress {
            total,
            done: 0,
            by_outcome: BTreeMap::new(),
            failures: BTreeMap::new(),
            started: Instant::now(),
            last_drawn: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn count(&mut self, outcome: &Outcome, sent: bool) {
        if sent {
            self.done += 1;
        }
        *self.by_outcome.entry(outcome.outcome.clone()).or_default() += 1;
        if outcome.is_failure() {
            *self.failures.entry(outcome.reason.clone()).or_default() += 1;
        }
    }

    fn line(&self) -> String {
        const WIDTH: usize = 30;
        let share = if self.total == 0 { 1.0 } else { self.done as f64 / self.total as f64 };
        let filled = (share * WIDTH as f64).round() as usize;
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { self.done as f64 / secs } else { 0.0 };
        let eta = if rate > 0.0 { clock(((self.total - self.done) as f64 / rate) as u64) } else { "--:--:--".into() };
        let failed: usize = self.failures.values().sum();
        let reasons: Vec<String> = self.failures.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let reasons = if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) };
        format!(
            "[{}{}] {}/{} {:>3.0}%  {rate:.1} images/s  ETA {eta}  failed {failed}{reasons}",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            self.done,
            self.total,
            share * 100.0,
        )
    }

    /// Redraws the line (a terminal: in place, at most 5 times a second; otherwise a line
    /// every 2 s) or, `last`, prints it for good.
    fn draw(&mut self, last: bool) {
        let every = if self.tty { Duration::from_millis(200) } else { Duration::from_secs(2) };
        if !last && self.last_drawn.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last_drawn = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = match (self.tty, last) {
            (true, false) => write!(err, "\r{}\x1b[K", self.line()),
            (true, true) => writeln!(err, "\r{}\x1b[K", self.line()),
            (false, _) => writeln!(err, "{}", self.line()),
        };
        let _ = err.flush();
    }
}

/// The report CSV, written as outcomes arrive (a broken run leaves what it learned).
struct Report {
    file: std::io::BufWriter<std::fs::File>,
}

impl Report {
    fn create(path: &std::path::Path) -> Result<Self, String> {
        let file = std::fs::File::create(path).map_err(|e| format!("--report {}: {e}", path.display()))?;
        let mut report = Report { file: std::io::BufWriter::new(file) };
        report.write_line(
            "item,external_id,image,outcome,user_id,face_id,reason,message,duplicates,warnings".to_owned(),
        )?;
        Ok(report)
    }

    fn write_line(&mut self, line: String) -> Result<(), String> {
        writeln!(self.file, "{line}").and_then(|()| self.file.flush()).map_err(|e| format!("writing the report: {e}"))
    }

    fn write(&mut self, row: &Row, outcome: &Outcome) -> Result<(), String> {
        let fields = [
            row.item_id.clone(),
            row.external_id.clone(),
            row.image.display().to_string(),
            outcome.outcome.clone(),
            outcome.user_id.clone(),
            outcome.face_id.clone(),
            outcome.reason.clone(),
            outcome.message.clone(),
            outcome.duplicates.to_string(),
            outcome.warnings.clone(),
        ];
        self.write_line(fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","))
    }
}

/// Runs `facevault import` with `args` (those after `import`).
pub async fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let args = match ImportArgs::try_parse_from(std::iter::once("facevault import".to_owned()).chain(args)) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(&args).await {
        Ok(code) => ExitCode::from(code),
        Err((code, message)) => {
            eprintln!("facevault import: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(args: &ImportArgs) -> Result<u8, (u8, String)> {
    let usage = |message: String| (2, message);
    let rows = manifest::read(&args.source).map_err(usage)?;
    let checks = manifest::check(&rows, args.max_image_bytes, args.dry_run);
    if args.dry_run {
        return Ok(dry_run(&rows, &checks));
    }
    let mut report = Report::create(&args.report).map_err(usage)?;
    let mut progress = Progress::new(rows.len());
    // Rows failed locally go straight into the report.
    let mut to_send = Vec::new();
    for (i, (row, check)) in rows.iter().zip(&checks).enumerate() {
        match check {
            Some(LocalFailure { reason, message }) => {
                let outcome = Outcome::failed(reason, message);
                progress.count(&outcome, true);
                report.write(row, &outcome).map_err(usage)?;
            }
            None => to_send.push(i),
        }
    }
    let mut pending: std::collections::HashSet<usize> = to_send.iter().copied().collect();
    let streamed = stream(args, &rows, to_send, &mut progress, &mut report, &mut pending).await;
    progress.draw(true);
    // Rows the stream never answered (it broke): in the report, to be sent again.
    let mut unanswered: Vec<usize> = pending.into_iter().collect();
    unanswered.sort_unstable();
    for i in &unanswered {
        let outcome = Outcome {
            outcome: "NOT_DONE".into(),
            message: "the stream ended before this row's result".into(),
            ..Outcome::default()
        };
        report.write(&rows[*i], &outcome).map_err(usage)?;
    }
    let summary: Vec<String> = progress.by_outcome.iter().map(|(o, n)| format!("{n} {}", o.to_lowercase())).collect();
    println!("{} rows: {}; report: {}", rows.len(), summary.join(", "), args.report.display());
    streamed?;
    if !unanswered.is_empty() {
        return Err((2, format!("{} rows were not answered; run the same command again to resume", unanswered.len())));
    }
    Ok(if progress.failures.is_empty() { 0 } else { 1 })
}

/// `--dry-run`: every row's local check; 0 when all pass.
fn dry_run(rows: &[Row], checks: &[Option<LocalFailure>]) -> u8 {
    let mut failed = 0;
    for (row, check) in rows.iter().zip(checks) {
        if let Some(failure) = check {
            failed += 1;
            println!("{}: {} {}", row.item_id, failure.reason, failure.message);
        }
    }
    println!("{} rows, {} would be sent, {failed} fail the local checks", rows.len(), rows.len() - failed);
    u8::from(failed > 0)
}

/// Streams the rows `indexes` and takes their results; `pending` keeps those not answered.
async fn stream(
    args: &ImportArgs,
    rows: &[Row],
    indexes: Vec<usize>,
    progress: &mut Progress,
    report: &mut Report,
    pending: &mut std::collections::HashSet<usize>,
) -> Result<(), (u8, String)> {
    if indexes.is_empty() {
        return Ok(());
    }
    let (channel, key) = crate::cli_client::connect(&args.server, args.api_key.as_deref(), args.ca_cert.as_deref())
        .await
        .map_err(|e| (2, e))?;
    let mut client = pb::face_service_client::FaceServiceClient::with_interceptor(channel, key)
        .max_encoding_message_size(usize::MAX);
    let (duplicate_policy, multiple_faces) = (args.duplicate_policy, args.multiple_faces_policy);
    let mut attempt = 0;
    let (mut results, producer) = loop {
        // Images are read as the stream takes them: a few ahead, never the whole folder.
        let (items, outbound) = mpsc::channel(4);
        let producer_rows: Vec<(usize, Row)> = indexes.iter().map(|&i| (i, rows[i].clone())).collect();
        let producer = tokio::spawn(produce(producer_rows, items, duplicate_policy, multiple_faces));
        match client.import_faces(tokio_stream::wrappers::ReceiverStream::new(outbound)).await {
            Ok(response) => break (response.into_inner(), producer),
            Err(status) => {
                producer.abort();
                // A busy or rate-limited server refuses the call before it reads an item:
                // open it again after the wait it asks for.
                attempt += 1;
                match retry_after(&status) {
                    Some(wait) if attempt < 10 => tokio::time::sleep(wait).await,
                    _ => return Err(refusal(&status)),
                }
            }
        }
    };
    loop {
        match results.message().await {
            Ok(Some(pb::ImportFacesResponse { result: Some(result) })) => {
                let Some(i) = result.item_id.parse::<usize>().ok().filter(|i| pending.remove(i)) else { continue };
                let outcome = Outcome::of(&result);
                progress.count(&outcome, true);
                report.write(&rows[i], &outcome).map_err(|e| (2, e))?;
                progress.draw(false);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(status) => {
                producer.abort();
                return Err(refusal(&status));
            }
        }
    }
    Ok(())
}

/// Sends the items of `rows` into `items`, reading each image when the stream takes it.
async fn produce(
    rows: Vec<(usize, Row)>,
    items: mpsc::Sender<pb::ImportFacesRequest>,
    duplicate_policy: DuplicatePolicy,
    multiple_faces: MultipleFaces,
) {
    for (i, row) in rows {
        let path = row.image.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(path)).await;
        // A file removed since the check: an empty image, which the server fails.
        let image = read.unwrap_or_else(|e| Err(std::io::Error::other(e))).unwrap_or_default();
        let item = item_of(i, &row, image, duplicate_policy, multiple_faces);
        if items.send(pb::ImportFacesRequest { item: Some(item) }).await.is_err() {
            return;
        }
    }
}

/// How long to wait before opening the stream again, for a refusal worth retrying.
fn retry_after(status: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    let retryable = matches!(status.code(), tonic::Code::ResourceExhausted | tonic::Code::Unavailable);
    retryable
        .then(|| status.get_error_details().retry_info().and_then(|r| r.retry_delay).unwrap_or(Duration::from_secs(1)))
}

/// The exit code and message of a status that ended the stream.
fn refusal(status: &tonic::Status) -> (u8, String) {
    let code =
        if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) { 4 } else { 2 };
    (code, format!("{} {}: {}", status.code(), reason_of(status), status.message()))
}

fn item_of(
    index: usize,
    row: &Row,
    image: Vec<u8>,
    duplicate_policy: DuplicatePolicy,
    multiple_faces: MultipleFaces,
) -> pb::ImportItem {
    pb::ImportItem {
        item_id: index.to_string(),
        request_id: row.request_id(&image, &format!("{duplicate_policy:?} {multiple_faces:?}")),
        user: Some(pb::User {
            external_id: row.external_id.clone(),
            display_name: row.display_name.clone(),
            email: row.email.clone(),
            phone: row.phone.clone(),
            ..pb::User::default()
        }),
        image: image.into(),
        comment: row.comment.clone(),
        duplicate_policy: match duplicate_policy {
            DuplicatePolicy::Report => pb::DuplicatePolicy::Report,
            DuplicatePolicy::Reject => pb::DuplicatePolicy::Reject,
        } as i32,
        multiple_faces_policy: match multiple_faces {
            MultipleFaces::Dominant => pb::enrollment::MultipleFacesPolicy::Dominant,
            MultipleFaces::Reject => pb::enrollment::MultipleFacesPolicy::Reject,
        } as i32,
    }
}
