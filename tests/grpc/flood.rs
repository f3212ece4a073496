//! Floods from callers with the weakest credentials leave the server's memory bounded and its
//! health check answering: 20,000 calls with random bearer tokens, 2,000 streams carrying 2 MB
//! images from a key without scopes, and 1,000 idle connections, against the real binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use facevault::grpc::pb::{DetectFacesRequest, UpdateFaceRequest, UploadFaceRequest};
use tokio::io::AsyncWriteExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{ADMIN_A, ChildServer, faces_client, fixture_bytes, key_entry, keys_json, reason};
use crate::users::by_external;

/// Resident memory the server may gain over the whole flood, MiB, above its RSS after warm-up.
/// Measured growth is printed; a bucket, buffer or connection state kept per call would pass it
/// well before the flood ends.
const RSS_GROWTH_BOUND_MIB: u64 = 128;

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("VmRSS");
    kib / 1024
}

fn random_token(state: &mut u64) -> String {
    let mut hex = String::from("rt_");
    for _ in 0..4 {
        hex.push_str(&format!("{:016x}", facevault::search::sketch::splitmix64(state)));
    }
    hex
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_by_weak_callers_leave_memory_bounded_and_health_answering() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut keys = keys_json();
    keys["keys"].as_array_mut().expect("keys").push(key_entry("no-scopes", "alpha", &[], "secret-no-scopes"));
    std::fs::write(dir.path().join("keys.json"), keys.to_string()).expect("keys file");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr");
    let server = ChildServer::spawn(dir.path(), &["--metrics-listen", &metrics.to_string()]).await;
    let pid = server.pid();
    // Warm up the buffers an ordinary call uses, then take the baseline.
    let mut admin = faces_client(server.channel().await, ADMIN_A, None);
    let warm = DetectFacesRequest {
        image: fixture_bytes("t1.jpg").into(),
        include_embeddings: true,
        include_thumbnails: true,
    };
    admin.detect_faces(warm).await.expect("warm-up");
    let baseline = rss_mib(pid);

    // Health on its own connection, every 100 ms, for the whole flood.
    let stop = Arc::new(AtomicBool::new(false));
    let worst_ms = Arc::new(AtomicU64::new(0));
    let peak_rss = Arc::new(AtomicU64::new(baseline));
    let prober = {
        let (stop, worst_ms, peak_rss) = (stop.clone(), worst_ms.clone(), peak_rss.clone());
        let mut health = HealthClient::new(server.channel().await);
        tokio::spawn(async move {
            let mut probes = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answer = tokio::time::timeout(
                    Duration::from_secs(1),
                    health.check(HealthCheckRequest { service: String::new() }),
                )
                .await;
                let ms = started.elapsed().as_millis() as u64;
                assert!(matches!(answer, Ok(Ok(_))), "health did not answer within 1 s: {answer:?}");
                worst_ms.fetch_max(ms, Ordering::Relaxed);
                peak_rss.fetch_max(rss_mib(pid), Ordering::Relaxed);
                probes += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            probes
        })
    };

    // 1. 20,000 calls with random (well-formed) bearer tokens, 64 at a time over 4 connections.
    let started = Instant::now();
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(server.channel().await);
    }
    let mut tasks = Vec::new();
    for worker in 0..64u64 {
        let channel = channels[worker as usize % channels.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut state = worker + 1;
            for _ in 0..20_000 / 64 + 1 {
                let token = random_token(&mut state);
                let mut client = faces_client(channel.clone(), None, Some(&token));
                let request =
                    UpdateFaceRequest { user: by_external("x"), image: vec![0xFF, 0xD8].into(), ..Default::default() };
                let err = client.update_face(request).await.unwrap_err();
                assert_eq!((err.code(), reason(&err).as_str()), (Code::Unauthenticated, "REENROLLMENT_TOKEN_INVALID"));
            }
        }));
    }
    for task in tasks {
        task.await.expect("token flood task");
    }
    let text = crate::common::scrape(metrics, "/metrics").await;
    assert!(text.contains("\nfacevault_token_buckets 0\n"), "random tokens made buckets: {text}");
    println!("20,000 random tokens in {:?}; RSS {} MiB", started.elapsed(), rss_mib(pid));

    // 2. 2,000 streams of 2 MB images from a key without scopes, 50 at a time.
    let started = Instant::now();
    let image: bytes::Bytes = vec![0x5A; 2 << 20].into();
    let mut tasks = Vec::new();
    for worker in 0..50 {
        let channel = channels[worker % channels.len()].clone();
        let image = image.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = faces_client(channel, Some("secret-no-scopes"), None).max_encoding_message_size(8 << 20);
            for _ in 0..40 {
                let request = UploadFaceRequest { user: by_external("x"), image: image.clone(), ..Default::default() };
                let err = client.upload_face(request).await.unwrap_err();
                assert_eq!((err.code(), reason(&err).as_str()), (Code::PermissionDenied, "SCOPE_MISSING"), "{err:?}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("image flood task");
    }
    drop(channels);
    println!("2,000 scopeless 2 MB uploads in {:?}; RSS {} MiB", started.elapsed(), rss_mib(pid));

    // 3. 1,000 idle HTTP/2 connections (preface and SETTINGS, then nothing).
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let mut socket = tokio::net::TcpStream::connect(server.addr).await.expect("idle connection");
        socket.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("preface");
        socket.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.expect("settings");
        idle.push(socket);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_idle = rss_mib(pid);
    println!("1,000 idle connections: RSS {with_idle} MiB");
    // The server still does real work meanwhile.
    let warm = DetectFacesRequest { image: fixture_bytes("yaoming.jpg").into(), ..Default::default() };
    assert_eq!(admin.detect_faces(warm).await.expect("detect during the flood").into_inner().faces.len(), 1);

    stop.store(true, Ordering::Relaxed);
    let probes = prober.await.expect("health prober");
    drop(idle);
    let peak = peak_rss.load(Ordering::Relaxed).max(with_idle);
    println!(
        "server RSS: {baseline} MiB after warm-up, peak {peak} MiB (bound +{RSS_GROWTH_BOUND_MIB}); \
         health: {probes} probes, slowest {} ms",
        worst_ms.load(Ordering::Relaxed)
    );
    assert!(probes >= 10, "only {probes} health probes ran");
    assert!(peak <= baseline + RSS_GROWTH_BOUND_MIB, "RSS grew from {baseline} to {peak} MiB");
}
