//! `TestServer`: the real server on 127.0.0.1:0 with the real models and a temporary data
//! directory, ready once health reports SERVING; stopped through its shutdown signal on drop.
//! Plus fixture helpers that fail loudly when an asset is missing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use facevault::Config;
use facevault::grpc::pb::face_service_client::FaceServiceClient;
use image::RgbImage;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub(crate) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a fetched test photo; panics (a failing test, not a skip) when it is missing.
pub(crate) fn fixture_path(name: &str) -> PathBuf {
    let path = root().join("tests/fixtures/images").join(name);
    assert!(path.is_file(), "{} is missing: run `bash scripts/setup.sh` (or `make test`)", path.display());
    path
}

pub(crate) fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).expect("read fixture")
}

pub(crate) fn fixture_rgb(name: &str) -> RgbImage {
    image::open(fixture_path(name)).expect("decode fixture").into_rgb8()
}

/// Lossless PNG encoding of an RGB image.
pub(crate) fn png(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).expect("encode png");
    out
}

pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "embedding lengths differ");
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(crate) fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

pub(crate) fn bbox(face: &facevault::grpc::pb::DetectedFace) -> [f32; 4] {
    let b = face.r#box.expect("every face has a box");
    [b.x_min, b.y_min, b.x_max, b.y_max]
}

/// A running server.
pub(crate) struct TestServer {
    pub(crate) addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<facevault::Result<()>>>,
    _data: tempfile::TempDir,
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server whose config `adjust` may change (paths are already absolute).
    pub(crate) async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_root(root());
        config.data_dir = data.path().join("db");
        config.workers = 2;
        adjust(&mut config);
        config.validate().expect("test config is valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(facevault::serve(config, listener, async move {
            let _ = stopped.await;
        }));
        let server = TestServer { addr, stop: Some(stop), task: Some(task), _data: data };
        server.wait_serving(Duration::from_secs(120)).await;
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).expect("url").connect().await.expect("connect")
    }

    pub(crate) async fn faces(&self) -> FaceServiceClient<Channel> {
        FaceServiceClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    async fn wait_serving(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(channel) = Channel::from_shared(self.url()).expect("url").connect().await {
                let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
                if let Ok(reply) = HealthClient::new(channel).check(request).await
                    && reply.into_inner().status == ServingStatus::Serving as i32
                {
                    return;
                }
            }
            assert!(start.elapsed() < timeout, "server did not report SERVING within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server and waits for it to drain.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stopped cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The ErrorInfo reason of a failed call.
pub(crate) fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|info| info.reason.clone()).unwrap_or_default()
}
