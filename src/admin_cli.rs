//! `facevault admin`: the operator's client of AdminService (README: "Changing the model").
//!
//! ```text
//! facevault admin status
//! facevault admin reindex start [--watch]
//! facevault admin reindex watch          (also: facevault admin watch)
//! facevault admin reindex cutover|rollback|finish
//! ```
//!
//! Exit codes a script can use: 0 done (`watch`: the re-embedding finished READY); 1 `watch`
//! saw the job end FAILED; 3 the service refused (FAILED_PRECONDITION: REINDEX_RUNNING,
//! REINDEX_NOT_READY, ...; the reason code is printed); 4 refused for the credential
//! (UNAUTHENTICATED, PERMISSION_DENIED); 2 anything else (usage, connection).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::grpc::pb;
use crate::grpc::pb::admin_service_client::AdminServiceClient;

#[derive(Debug, Parser)]
#[command(name = "facevault admin", about = "Operate a facevault service: its models and their rollout")]
struct AdminArgs {
    /// The server (https:// with TLS).
    #[arg(long, env = "FACEVAULT_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// An API key with the admin scope.
    #[arg(long, env = "FACEVAULT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM of the CA that signed the server's certificate (https).
    #[arg(long, env = "FACEVAULT_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Seconds between progress reads of `watch`.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Models, faces per tenant and the reindex.
    Status,
    /// The reindex: start, watch, cutover, rollback, finish.
    Reindex {
        #[command(subcommand)]
        action: Action,
    },
    /// Same as `reindex watch`.
    Watch,
    /// Same as `reindex cutover`.
    Cutover,
    /// Same as `reindex rollback`.
    Rollback,
    /// Same as `reindex finish`.
    Finish,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Starts re-embedding every face with the candidate model.
    Start {
        /// Then watch it to its end.
        #[arg(long)]
        watch: bool,
    },
    /// Shows progress (done/total, rate, ETA, failures) until the re-embedding ends.
    Watch,
    /// Makes the candidate the active model.
    Cutover,
    /// Returns to the previous model.
    Rollback,
    /// Drops the embeddings of the model not active.
    Finish,
}

type Client = AdminServiceClient<crate::cli_client::Authed>;

/// A failure, with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let reason = crate::cli_client::reason_of(&status);
        let code = if status.code() == tonic::Code::FailedPrecondition {
            3
        } else if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) {
            4
        } else {
            2
        };
        Failure { code, message: format!("{reason} {}", status.message()).trim().to_owned() }
    }
}

fn failure(message: impl Into<String>) -> Failure {
    Failure { code: 2, message: message.into() }
}

async fn connect(args: &AdminArgs) -> Result<Client, Failure> {
    let (channel, key) = crate::cli_client::connect(&args.server, args.api_key.as_deref(), args.ca_cert.as_deref())
        .await
        .map_err(failure)?;
    Ok(AdminServiceClient::with_interceptor(channel, key))
}

fn state_name(job: &pb::ReindexJob) -> &'static str {
    pb::ReindexState::try_from(job.state).map_or("UNKNOWN", |s| s.as_str_name())
}

fn model(info: Option<&pb::ModelInfo>) -> String {
    info.map_or_else(
        || "-".to_owned(),
        |m| {
            format!(
                "{} (sha256 {}..., match {:.2}, possible {:.2})",
                m.embedder_id,
                &m.sha256[..m.sha256.len().min(12)],
                m.match_threshold,
                m.possible_match_threshold
            )
        },
    )
}

fn print_job(job: &pb::ReindexJob) {
    println!(
        "reindex: {}  {}/{} re-embedded, {} failed, top-1 agreement {:.3}",
        state_name(job),
        job.done,
        job.total,
        job.failed,
        job.top1_agreement
    );
    if let (Some(start), Some(update)) = (&job.start_time, &job.update_time) {
        let secs = (update.seconds - start.seconds) as f64 + f64::from(update.nanos - start.nanos) / 1e9;
        if secs > 0.0 && job.done > 0 {
            println!("  {secs:.1} s from the start to the last update: {:.1} faces/s", job.done as f64 / secs);
        }
    }
    if job.from.is_some() || job.to.is_some() {
        println!("  from {}\n  to   {}", model(job.from.as_ref()), model(job.to.as_ref()));
    }
}

/// The progress line: bar, done/total, rate, ETA, failures.
fn progress_line(job: &pb::ReindexJob, rate: f64) -> String {
    const WIDTH: usize = 30;
    let total = job.total.max(1) as f64;
    let share = (job.done as f64 / total).clamp(0.0, 1.0);
    let filled = (share * WIDTH as f64).round() as usize;
    let eta = if rate > 0.0 {
        crate::cli_client::clock(((job.total - job.done).max(0) as f64 / rate) as u64)
    } else {
        "--:--:--".to_owned()
    };
    format!(
        "[{}{}] {}/{} {:>3.0}%  {:.1} faces/s  ETA {eta}  failed {}  {}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        job.done,
        job.total,
        share * 100.0,
        rate,
        job.failed,
        state_name(job)
    )
}

/// Watches the job until it leaves RUNNING: a live line on a terminal, a line every 10 s
/// otherwise. 0 when it ended READY (or was not running), 1 when FAILED.
async fn watch(client: &mut Client, interval: Duration) -> Result<u8, Failure> {
    let terminal = std::io::stderr().is_terminal();
    let mut samples: std::collections::VecDeque<(Instant, i64)> = std::collections::VecDeque::new();
    let mut printed = Instant::now() - Duration::from_secs(60);
    loop {
        let job = client.get_reindex(pb::GetReindexRequest {}).await?.into_inner();
        let now = Instant::now();
        samples.push_back((now, job.done));
        while samples.len() > 2 && now.duration_since(samples[0].0) > Duration::from_secs(30) {
            samples.pop_front();
        }
        let (t0, d0) = samples[0];
        let elapsed = now.duration_since(t0).as_secs_f64();
        let rate = if elapsed > 0.0 { (job.done - d0) as f64 / elapsed } else { 0.0 };
        let line = progress_line(&job, rate);
        let running = job.state == pb::ReindexState::Running as i32;
        if terminal {
            eprint!("\r{line}\x1b[K");
            let _ = std::io::stderr().flush();
        } else if !running || now.duration_since(printed) >= Duration::from_secs(10) {
            eprintln!("{line}");
            printed = now;
        }
        if !running {
            if terminal {
                eprintln!();
            }
            print_job(&job);
            return Ok(if job.state == pb::ReindexState::Failed as i32 { 1 } else { 0 });
        }
        tokio::time::sleep(interval).await;
    }
}

async fn run(args: AdminArgs) -> Result<u8, Failure> {
    let interval = Duration::from_secs_f64(args.interval.clamp(0.1, 60.0));
    let mut client = connect(&args).await?;
    match args.command {
        Command::Status => {
            let status = client.get_status(pb::GetStatusRequest {}).await?.into_inner();
            println!("version {}", status.version);
            println!("active model:    {}", model(status.active.as_ref()));
            println!("candidate model: {}", model(status.candidate.as_ref()));
            let mut tenants: Vec<_> = status.faces_per_tenant.into_iter().collect();
            tenants.sort();
            for (tenant, faces) in tenants {
                println!("tenant {tenant:<24} {faces:>10} faces");
            }
            if let Some(job) = &status.reindex {
                print_job(job);
            }
            Ok(0)
        }
        Command::Reindex { action: Action::Start { watch: then_watch } } => {
            let job = client.start_reindex(pb::StartReindexRequest {}).await?.into_inner();
            print_job(&job);
            if then_watch { watch(&mut client, interval).await } else { Ok(0) }
        }
        Command::Reindex { action: Action::Watch } | Command::Watch => watch(&mut client, interval).await,
        Command::Reindex { action: Action::Cutover } | Command::Cutover => {
            print_job(&client.cutover_reindex(pb::CutoverReindexRequest {}).await?.into_inner());
            Ok(0)
        }
        Command::Reindex { action: Action::Rollback } | Command::Rollback => {
            print_job(&client.rollback_reindex(pb::RollbackReindexRequest {}).await?.into_inner());
            Ok(0)
        }
        Command::Reindex { action: Action::Finish } | Command::Finish => {
            print_job(&client.finish_reindex(pb::FinishReindexRequest {}).await?.into_inner());
            Ok(0)
        }
    }
}

/// The `admin` subcommand: `args` are the words after `facevault admin`.
pub async fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let args = match AdminArgs::try_parse_from(std::iter::once("facevault admin".to_owned()).chain(args)) {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(args).await {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, message }) => {
            eprintln!("facevault admin: {message}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_shows_done_total_rate_eta_and_failures() {
        let job = pb::ReindexJob { state: 1, total: 200, done: 50, failed: 2, ..pb::ReindexJob::default() };
        let line = progress_line(&job, 10.0);
        assert!(line.starts_with("[########-"), "{line}");
        assert!(line.contains("50/200  25%") && line.contains("10.0 faces/s"), "{line}");
        assert!(line.contains("ETA 0:00:15") && line.contains("failed 2") && line.ends_with("RUNNING"), "{line}");
        assert!(progress_line(&job, 0.0).contains("ETA --:--:--"));
    }
}
