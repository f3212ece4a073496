//! facevault-load: drives a running facevault over gRPC with N concurrent clients over a folder
//! of images, for a bounded time and count, and prints throughput and latency percentiles.
//!
//!   facevault-load --rpc detect --images tests/fixtures/images --concurrency 4 --duration 20
//!
//! Several nodes: `--addr A,B` (client i talks to address i mod n). `--visible-on C` with
//! `--rpc upload`: after each acknowledged upload, that client searches node C with the same
//! image until the new user is found, and the time from the acknowledgement is reported
//! (write-to-visible-elsewhere latency).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use facevault::grpc::pb::face_service_client::FaceServiceClient;
use facevault::grpc::pb::user_service_client::UserServiceClient;
use facevault::grpc::pb::{
    CreateUserRequest, DetectFacesRequest, SearchFacesRequest, UploadFaceRequest, User, UserRef, user_ref,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Rpc {
    /// DetectFaces with embeddings: every face of every image.
    Detect,
    /// UploadFace of each image to a fresh user (one face per user).
    Upload,
    /// SearchFaces with each image after enrolling each image once.
    Search,
}

/// Load generator for facevault.
#[derive(Debug, Parser)]
#[command(name = "facevault-load", version)]
struct Args {
    /// Server address; several, comma-separated: client i talks to address i modulo their number.
    #[arg(long, default_value = "http://127.0.0.1:50051", value_delimiter = ',')]
    addr: Vec<String>,
    /// With --rpc upload: after each upload, search this node until the new user is found, and
    /// report how long after the acknowledgement it became visible there.
    #[arg(long)]
    visible_on: Option<String>,
    /// API key (x-api-key). Several, comma-separated (or the flag repeated): client i uses
    /// key i modulo their number, so keys of different tenants load the tenants at once.
    #[arg(long = "key", env = "FACEVAULT_API_KEY", default_value = "facevault-dev-key", value_delimiter = ',')]
    keys: Vec<String>,
    #[arg(long, value_enum, default_value = "detect")]
    rpc: Rpc,
    /// Folder of JPEG/PNG/WebP images, used round robin.
    #[arg(long, default_value = "tests/fixtures/images")]
    images: PathBuf,
    /// Concurrent clients (each its own HTTP/2 connection).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seconds of measurement (after the warm-up).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Stop after this many measured requests (0: no limit).
    #[arg(long, default_value_t = 0)]
    requests: usize,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Also print the summary as one JSON line.
    #[arg(long)]
    json: bool,
    /// With --rpc search: search the store as it is (no image is enrolled first).
    #[arg(long)]
    no_seed: bool,
}

#[derive(Debug, Default)]
struct Tally {
    latencies: Vec<Duration>,
    /// --visible-on: acknowledgement to found on the other node.
    visible: Vec<Duration>,
    faces: usize,
    errors: std::collections::BTreeMap<String, usize>,
}

type Faces = FaceServiceClient<tonic::service::interceptor::InterceptedService<Channel, KeyHeader>>;

#[derive(Debug, Clone)]
struct KeyHeader(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for KeyHeader {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("x-api-key", self.0.clone());
        Ok(request)
    }
}

async fn connect(
    args: &Args,
    client: usize,
    addr: &str,
) -> Result<
    (Faces, UserServiceClient<tonic::service::interceptor::InterceptedService<Channel, KeyHeader>>),
    Box<dyn std::error::Error>,
> {
    let channel = Channel::from_shared(addr.to_owned())?.connect().await?;
    let key = KeyHeader(args.keys[client % args.keys.len()].parse()?);
    Ok((
        FaceServiceClient::with_interceptor(channel.clone(), key.clone()).max_decoding_message_size(64 << 20),
        UserServiceClient::with_interceptor(channel, key),
    ))
}

fn external(id: &str) -> Option<UserRef> {
    Some(UserRef { r#ref: Some(user_ref::Ref::ExternalId(id.to_owned())) })
}

/// One request of the chosen kind; returns the number of faces it handled and the time of the
/// measured call (for UploadFace, without the CreateUser that makes its fresh user).
async fn one(
    rpc: Rpc,
    faces: &mut Faces,
    users: &mut UserServiceClient<tonic::service::interceptor::InterceptedService<Channel, KeyHeader>>,
    image: bytes::Bytes,
    seq: usize,
    run: &str,
) -> Result<(usize, Duration), tonic::Status> {
    match rpc {
        Rpc::Detect => {
            let request = DetectFacesRequest { image, include_embeddings: true, include_thumbnails: false };
            let t = Instant::now();
            let n = faces.detect_faces(request).await?.into_inner().faces.len();
            Ok((n, t.elapsed()))
        }
        Rpc::Upload => {
            let id = format!("load-{run}-{seq}");
            let user = User { external_id: id.clone(), ..User::default() };
            users.create_user(CreateUserRequest { user: Some(user), ..Default::default() }).await?;
            let request = UploadFaceRequest { user: external(&id), image, ..UploadFaceRequest::default() };
            let t = Instant::now();
            faces.upload_face(request).await?;
            Ok((1, t.elapsed()))
        }
        Rpc::Search => {
            let request = SearchFacesRequest { image, top_k: 5, min_similarity: 0.0, ..Default::default() };
            let t = Instant::now();
            faces.search_faces(request).await?;
            Ok((1, t.elapsed()))
        }
    }
}

/// Searches `faces` with `image` until `external_id` is among the matches; the time that took
/// (measured from the call, which follows the acknowledgement at once). Gives up after 30 s.
async fn visible_after(faces: &mut Faces, image: bytes::Bytes, external_id: &str) -> Result<Duration, tonic::Status> {
    let t = Instant::now();
    loop {
        // Every earlier upload of the same image matches as well: keep the run under 100 uploads.
        let request =
            SearchFacesRequest { image: image.clone(), top_k: 100, min_similarity: 0.0, ..Default::default() };
        let reply = faces.search_faces(request).await?.into_inner();
        if reply.matches.iter().any(|m| m.external_id == external_id) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err(tonic::Status::deadline_exceeded("never visible"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(&args.images)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    paths.sort();
    let images: Vec<bytes::Bytes> =
        paths.iter().map(|p| std::fs::read(p).map(bytes::Bytes::from)).collect::<Result<_, _>>()?;
    if images.is_empty() {
        return Err(format!("no images in {}", args.images.display()).into());
    }
    let run = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis());
    if args.rpc == Rpc::Search && !args.no_seed {
        // Something to find: each image enrolled once (images without exactly one face skipped).
        let (mut faces, mut users) = connect(&args, 0, &args.addr[0]).await?;
        for (i, image) in images.iter().enumerate() {
            let _ = one(Rpc::Upload, &mut faces, &mut users, image.clone(), i, &format!("{run}-seed")).await;
        }
    }
    let images = Arc::new(images);
    let args = Arc::new(args);
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(args.warmup);
    let end = warm_end + Duration::from_secs_f64(args.duration);
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in 0..args.concurrency {
        let (images, args, counter, run) = (images.clone(), args.clone(), counter.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let Ok((mut faces, mut users)) = connect(&args, client, &args.addr[client % args.addr.len()]).await else {
                tally.errors.insert("CONNECT".into(), 1);
                return tally;
            };
            let mut other = match &args.visible_on {
                Some(addr) => match connect(&args, client, addr).await {
                    Ok((faces, _)) => Some(faces),
                    Err(_) => {
                        tally.errors.insert("CONNECT".into(), 1);
                        return tally;
                    }
                },
                None => None,
            };
            let mut i = client;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let measured = now >= warm_end;
                if measured
                    && args.requests > 0
                    && counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= args.requests
                {
                    break;
                }
                let image = images[i % images.len()].clone();
                let seq = i * 1000 + client;
                let result = one(args.rpc, &mut faces, &mut users, image.clone(), seq, &run).await;
                if let (Some(other), Ok(_)) = (other.as_mut(), &result)
                    && measured
                {
                    match visible_after(other, image, &format!("load-{run}-{seq}")).await {
                        Ok(latency) => tally.visible.push(latency),
                        Err(status) => *tally.errors.entry(format!("VISIBLE {:?}", status.code())).or_default() += 1,
                    }
                }
                i += args.concurrency;
                if !measured {
                    continue;
                }
                match result {
                    Ok((n, elapsed)) => {
                        tally.latencies.push(elapsed);
                        tally.faces += n;
                    }
                    Err(status) => *tally.errors.entry(format!("{:?}", status.code())).or_default() += 1,
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await?;
        all.latencies.extend(t.latencies);
        all.visible.extend(t.visible);
        all.faces += t.faces;
        for (k, v) in t.errors {
            *all.errors.entry(k).or_default() += v;
        }
    }
    let wall = (Instant::now().min(end) - warm_end).as_secs_f64().max(1e-9);
    all.latencies.sort();
    let ok = all.latencies.len();
    let (p50, p95, p99) =
        (percentile(&all.latencies, 0.5), percentile(&all.latencies, 0.95), percentile(&all.latencies, 0.99));
    println!(
        "{:?}: {} clients, {ok} ok in {wall:.1} s: {:.2} req/s, {:.1} faces/s; latency p50 {p50:.1} ms, p95 {p95:.1} ms, p99 {p99:.1} ms; errors {:?}",
        args.rpc,
        args.concurrency,
        ok as f64 / wall,
        all.faces as f64 / wall,
        all.errors
    );
    if args.visible_on.is_some() {
        all.visible.sort();
        println!(
            "visible on the other node after the acknowledgement: {} uploads, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            all.visible.len(),
            percentile(&all.visible, 0.5),
            percentile(&all.visible, 0.99),
            percentile(&all.visible, 1.0)
        );
    }
    if args.json {
        println!(
            "{{\"rpc\":\"{:?}\",\"concurrency\":{},\"ok\":{ok},\"wall_s\":{wall:.3},\"req_per_s\":{:.3},\"faces_per_s\":{:.3},\"p50_ms\":{p50:.2},\"p95_ms\":{p95:.2},\"p99_ms\":{p99:.2},\"errors\":{}}}",
            args.rpc,
            args.concurrency,
            ok as f64 / wall,
            all.faces as f64 / wall,
            all.errors.values().sum::<usize>()
        );
    }
    Ok(())
}
