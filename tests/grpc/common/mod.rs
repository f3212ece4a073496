//! `TestServer`: the real server on 127.0.0.1:0 with the real models and a temporary data
//! directory, ready once health reports SERVING; stopped through its shutdown signal on drop.
//! With `FACEVAULT_TEST_BACKEND=postgres` each one also gets a fresh PostgreSQL database
//! (`database`), dropped after it. Plus fixture helpers that fail loudly when an asset is missing.

pub(crate) mod database;
pub(crate) mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // for the tests that depend on the backend
pub(crate) use database::{Backend, TestDatabase, backend};
use facevault::Config;
use facevault::grpc::AppSlot;
use facevault::grpc::pb::face_service_client::FaceServiceClient;
use facevault::grpc::pb::list_service_client::ListServiceClient;
use facevault::grpc::pb::user_service_client::UserServiceClient;
use image::RgbImage;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
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

/// API keys of the keyed test servers: (name, tenant, scopes, secret).
pub(crate) const KEYS: &[(&str, &str, &[&str], &str)] = &[
    (
        "admin-a",
        "alpha",
        &["users:read", "users:write", "faces:read", "faces:write", "faces:search", "lists:read", "lists:write"],
        "secret-admin-a",
    ),
    (
        "admin-b",
        "beta",
        &["users:read", "users:write", "faces:read", "faces:write", "faces:search", "lists:read", "lists:write"],
        "secret-admin-b",
    ),
    // ListService reads only (tests/grpc/lists.rs).
    ("lists-reader-a", "alpha", &["lists:read"], "secret-lists-reader-a"),
    ("reader-a", "alpha", &["users:read", "faces:read"], "secret-reader-a"),
    // AdminService (tests/grpc/reindex.rs): the service as a whole; its tenant does not matter.
    ("ops", "alpha", &["admin"], "secret-ops"),
];

/// One keys-file entry: name, tenant, scopes and the sha256 of the secret.
pub(crate) fn key_entry(name: &str, tenant: &str, scopes: &[&str], secret: &str) -> serde_json::Value {
    let hash: String = facevault::app::keys::hash_secret(secret).iter().map(|b| format!("{b:02x}")).collect();
    serde_json::json!({ "name": name, "tenant": tenant, "scopes": scopes, "sha256": hash })
}

/// The keys file of [`KEYS`] as JSON, for tests to extend before writing it.
pub(crate) fn keys_json() -> serde_json::Value {
    let keys: Vec<serde_json::Value> =
        KEYS.iter().map(|(name, tenant, scopes, secret)| key_entry(name, tenant, scopes, secret)).collect();
    serde_json::json!({ "keys": keys })
}

pub(crate) fn write_keys_file(path: &Path) {
    std::fs::write(path, keys_json().to_string()).expect("write keys file");
}

/// Adds `x-api-key` (and optionally a bearer token) to every call of a client.
#[derive(Clone)]
pub(crate) struct Credentials {
    key: Option<MetadataValue<Ascii>>,
    bearer: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    /// An API key (or none).
    pub(crate) fn key(secret: Option<&str>) -> Self {
        Credentials { key: secret.map(|s| s.parse().expect("ascii key")), bearer: None }
    }

    /// A re-enrollment token instead of a key.
    pub(crate) fn bearer(token: &str) -> Self {
        Credentials { key: None, bearer: Some(format!("Bearer {token}").parse().expect("ascii token")) }
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(key) = &self.key {
            request.metadata_mut().insert("x-api-key", key.clone());
        }
        if let Some(bearer) = &self.bearer {
            request.metadata_mut().insert("authorization", bearer.clone());
        }
        Ok(request)
    }
}

pub(crate) type Faces = FaceServiceClient<InterceptedService<Channel, Credentials>>;
pub(crate) type Users = UserServiceClient<InterceptedService<Channel, Credentials>>;
pub(crate) type Lists = ListServiceClient<InterceptedService<Channel, Credentials>>;

/// A running server.
pub(crate) struct TestServer {
    pub(crate) addr: std::net::SocketAddr,
    config: Config,
    slot: AppSlot,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<facevault::Result<()>>>,
    data: Option<tempfile::TempDir>,
    /// The server's PostgreSQL database (FACEVAULT_TEST_BACKEND=postgres).
    database: Option<TestDatabase>,
    /// PEM of the CA clients trust, when the server speaks TLS.
    tls_ca: Option<Vec<u8>>,
    /// Client certificate and key (PEM) for mutual TLS.
    tls_client: Option<(String, String)>,
}

impl TestServer {
    /// A development-mode server (no keys file).
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server with the keys of [`KEYS`].
    pub(crate) async fn start_keyed() -> Self {
        Self::start_keyed_with(|_| {}).await
    }

    pub(crate) async fn start_keyed_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(|config| {
            let keys = config.data_dir.with_file_name("keys.json");
            write_keys_file(&keys);
            config.keys_file = Some(keys);
            config.insecure_dev_mode = false;
            adjust(config);
        })
        .await
    }

    /// A keyed server whose keys file is [`keys_json`] changed by `edit` (rate limits, quotas,
    /// more keys).
    pub(crate) async fn start_keyed_json(edit: impl FnOnce(&mut serde_json::Value)) -> Self {
        Self::start_keyed_with(|config| {
            let path = config.data_dir.with_file_name("edited-keys.json");
            let mut keys = keys_json();
            edit(&mut keys);
            std::fs::write(&path, keys.to_string()).expect("write keys file");
            config.keys_file = Some(path);
        })
        .await
    }

    /// Starts a server whose config `adjust` may change (paths are already absolute).
    pub(crate) async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_root(root());
        config.data_dir = data.path().join("db");
        config.workers = 2;
        let database = Self::use_backend(&mut config).await;
        adjust(&mut config);
        config.validate().expect("test config is valid");
        Self::launch(config, Some(data), database, None, None).await
    }

    /// The store of the test backend: a fresh database for PostgreSQL; for sled, none (also
    /// when FACEVAULT_POSTGRES_URL is in the environment, which `Config::for_root` reads).
    async fn use_backend(config: &mut Config) -> Option<TestDatabase> {
        let database = TestDatabase::for_backend().await;
        config.postgres_url = database.as_ref().map(|database| database.url().to_owned());
        database
    }

    /// A keyed server with TLS (`adjust` sets the certificate flags); clients trust `ca_pem`
    /// and present `client` (certificate and key PEM) when given.
    pub(crate) async fn start_tls(
        ca_pem: Vec<u8>,
        client: Option<(String, String)>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_root(root());
        config.data_dir = data.path().join("db");
        config.workers = 2;
        let database = Self::use_backend(&mut config).await;
        let keys = config.data_dir.with_file_name("keys.json");
        write_keys_file(&keys);
        config.keys_file = Some(keys);
        config.insecure_dev_mode = false;
        adjust(&mut config);
        config.validate().expect("test config is valid");
        Self::launch(config, Some(data), database, Some(ca_pem), client).await
    }

    async fn launch(
        config: Config,
        data: Option<tempfile::TempDir>,
        database: Option<TestDatabase>,
        tls_ca: Option<Vec<u8>>,
        tls_client: Option<(String, String)>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let slot = AppSlot::default();
        let mut task = tokio::spawn(facevault::serve_with_slot(
            config.clone(),
            listener,
            async move {
                let _ = stopped.await;
            },
            slot.clone(),
        ));
        let mut server =
            TestServer { addr, config, slot, stop: Some(stop), task: None, data, database, tls_ca, tls_client };
        // A server that fails to start (a missing model, an unreachable database) says why at once.
        tokio::select! {
            () = server.wait_serving(Duration::from_secs(120)) => {}
            result = &mut task => match result {
                Ok(Ok(())) => panic!("the server stopped before it reported SERVING"),
                Ok(Err(err)) => panic!("the server failed to start: {err}"),
                Err(err) => panic!("the server task failed before it reported SERVING: {err}"),
            },
        }
        server.task = Some(task);
        server
    }

    /// Stops the server and starts a new one on the same data directory (and database) and keys.
    pub(crate) async fn restart(mut self) -> Self {
        let (config, data, database, tls_ca, tls_client) =
            (self.config.clone(), self.data.take(), self.database.take(), self.tls_ca.take(), self.tls_client.take());
        self.stop_inner().await;
        drop(self); // releases the store (sled holds a lock on its directory)
        Self::launch(config, data, database, tls_ca, tls_client).await
    }

    /// Stops the server and hands back its config and data directory (and database) (to start
    /// it again changed, or to check it refuses to start).
    pub(crate) async fn stop_keeping_data(mut self) -> (Config, KeptData) {
        let dir = self.data.take().expect("a server on a temporary directory");
        let (config, data) = (self.config.clone(), KeptData { dir, database: self.database.take() });
        self.stop_inner().await;
        drop(self); // releases the store (sled holds a lock on its directory)
        (config, data)
    }

    /// A plaintext server with `config` on the data directory `data` (from `stop_keeping_data`).
    pub(crate) async fn start_on(config: Config, data: KeptData) -> Self {
        config.validate().expect("test config is valid");
        Self::launch(config, Some(data.dir), data.database, None, None).await
    }

    /// The running application (store and index), for checks no rpc can make.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn app(&self) -> &facevault::app::App {
        self.slot.get().expect("the server is serving")
    }

    pub(crate) fn url(&self) -> String {
        match self.tls_ca {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }

    /// The endpoint of this server, trusting its CA when it speaks TLS.
    pub(crate) fn endpoint(&self) -> tonic::transport::Endpoint {
        let endpoint = Channel::from_shared(self.url()).expect("url");
        match &self.tls_ca {
            Some(ca) => {
                let mut tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                    .domain_name("localhost");
                if let Some((cert, key)) = &self.tls_client {
                    tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
                }
                endpoint.tls_config(tls).expect("client TLS config")
            }
            None => endpoint,
        }
    }

    pub(crate) async fn channel(&self) -> Channel {
        self.endpoint().connect().await.expect("connect")
    }

    /// A FaceService client without credentials (development-mode servers accept it).
    pub(crate) async fn faces(&self) -> Faces {
        self.faces_as(None).await
    }

    pub(crate) async fn faces_as(&self, secret: Option<&str>) -> Faces {
        self.faces_with(secret, None).await
    }

    pub(crate) async fn faces_with(&self, secret: Option<&str>, bearer: Option<&str>) -> Faces {
        faces_client(self.channel().await, secret, bearer)
    }

    pub(crate) async fn users_as(&self, secret: Option<&str>) -> Users {
        users_client(self.channel().await, secret)
    }

    pub(crate) async fn lists_as(&self, secret: Option<&str>) -> Lists {
        ListServiceClient::with_interceptor(self.channel().await, Credentials::key(secret))
    }

    async fn wait_serving(&self, timeout: Duration) {
        wait_serving_at(|| self.endpoint(), timeout).await;
    }

    async fn stop_inner(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stopped cleanly");
        }
    }

    /// Stops the server and waits for it to drain (then drops its database).
    pub(crate) async fn stop(mut self) {
        self.stop_inner().await;
        if let Some(database) = self.database.take() {
            database.drop_now().await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The database goes once the server has stopped: a task waits for it when a runtime
        // runs; should that runtime end first (the end of the test), or when none runs, the
        // database's own drop drops it after all.
        if let Some(database) = self.database.take() {
            let task = self.task.take();
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn(async move {
                    if let Some(task) = task {
                        let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
                    }
                    database.drop_now().await;
                })),
                Err(_) => drop(database),
            }
        }
    }
}

/// The data directory (and the database) of a stopped server, for `TestServer::start_on`.
pub(crate) struct KeptData {
    dir: tempfile::TempDir,
    database: Option<TestDatabase>,
}

impl KeptData {
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub(crate) fn faces_client(channel: Channel, secret: Option<&str>, bearer: Option<&str>) -> Faces {
    let credentials = Credentials {
        key: secret.map(|s| s.parse().expect("ascii key")),
        bearer: bearer.map(|t| format!("Bearer {t}").parse().expect("ascii token")),
    };
    FaceServiceClient::with_interceptor(channel, credentials).max_decoding_message_size(64 << 20)
}

pub(crate) fn users_client(channel: Channel, secret: Option<&str>) -> Users {
    let credentials = Credentials { key: secret.map(|s| s.parse().expect("ascii key")), bearer: None };
    UserServiceClient::with_interceptor(channel, credentials)
}

/// Waits until the server at `url` reports SERVING.
pub(crate) async fn wait_serving(url: &str, timeout: Duration) {
    wait_serving_at(|| Channel::from_shared(url.to_owned()).expect("url"), timeout).await;
}

/// Waits until the server at the endpoint `make` builds reports SERVING.
pub(crate) async fn wait_serving_at(make: impl Fn() -> tonic::transport::Endpoint, timeout: Duration) {
    let start = Instant::now();
    loop {
        if let Ok(channel) = make().connect().await {
            let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
            let mut health = HealthClient::new(channel);
            let check = health.check(request);
            if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(5), check).await
                && reply.into_inner().status == ServingStatus::Serving as i32
            {
                return;
            }
        }
        assert!(start.elapsed() < timeout, "server did not report SERVING within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `path` holds past its first `start` bytes.
fn log_since(path: &Path, start: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&text[(start as usize).min(text.len())..]).into_owned()
}

/// The facevault binary as a child process on a data directory, with the keys of [`KEYS`] and
/// JSON logs appended to `dir/server.log`. Killed with SIGKILL on drop.
pub(crate) struct ChildServer {
    child: std::process::Child,
    pub(crate) addr: std::net::SocketAddr,
}

impl ChildServer {
    /// Starts the binary on `dir` (created if needed) with `extra` flags and waits for SERVING.
    pub(crate) async fn spawn(dir: &Path, extra: &[&str]) -> Self {
        Self::spawn_with_env(dir, extra, &[]).await
    }

    /// As `spawn`, with environment variables for the child.
    pub(crate) async fn spawn_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_on(dir, &dir.join("db"), extra, env).await
    }

    /// As `spawn_with_env`, with the store in `data_dir` (keys and log still in `dir`).
    pub(crate) async fn spawn_on(dir: &Path, data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        match Self::try_spawn_on(dir, data_dir, extra, env).await {
            Ok(server) => server,
            Err(why) => panic!("{why}"),
        }
    }

    /// As `spawn_on`, returning why the server did not come up (it exited, or did not report
    /// SERVING within 120 s) with the tail of its log. A start that lost its port to another
    /// process between the pick and the bind is retried on a new port.
    pub(crate) async fn try_spawn_on(
        dir: &Path,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir).expect("server dir");
        let keys = dir.join("keys.json");
        if !keys.is_file() {
            write_keys_file(&keys);
        }
        let log_path = dir.join("server.log");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            let log_start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("log");
            let child = std::process::Command::new(env!("CARGO_BIN_EXE_facevault"))
                .current_dir(root())
                .args(["--listen", &addr.to_string(), "--workers", "2", "--log-format", "json"])
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--keys-file")
                .arg(&keys)
                .args(extra)
                .envs(env.iter().copied())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start the facevault binary");
            let mut server = ChildServer { child, addr };
            let timeout = Duration::from_secs(120);
            let start = Instant::now();
            let failure = loop {
                if let Ok(channel) = server.endpoint().connect().await {
                    let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
                    let mut health = HealthClient::new(channel);
                    let check = health.check(request);
                    // SERVING from this child: alive, and its log says it holds the port (not another
                    // server that took the port between the pick and the child's bind).
                    if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(5), check).await
                        && reply.into_inner().status == ServingStatus::Serving as i32
                        && server.child.try_wait().expect("try_wait").is_none()
                        && log_since(&log_path, log_start).contains("\"listening\"")
                    {
                        return Ok(server);
                    }
                }
                if let Some(status) = server.child.try_wait().expect("try_wait") {
                    break format!("the server exited ({status}) before reporting SERVING");
                }
                if start.elapsed() > timeout {
                    break format!("the server did not report SERVING within {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            server.kill();
            let ours = log_since(&log_path, log_start);
            if attempt < 3 && ours.contains("Address already in use") {
                continue;
            }
            let lines: Vec<&str> = ours.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            return Err(format!("{failure}; its log ({}):\n{tail}", log_path.display()));
        }
    }

    fn endpoint(&self) -> tonic::transport::Endpoint {
        Channel::from_shared(self.url()).expect("url").connect_timeout(Duration::from_secs(5))
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(self.url()).expect("url").connect().await.expect("connect")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no drain, no flush.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (without blocking the runtime, so this process's connections can
    /// still answer the server's GOAWAY) for the process to exit; returns its exit status.
    pub(crate) async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < timeout, "the server did not stop within {timeout:?} of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The ErrorInfo reason of a failed call.
pub(crate) fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_error_details().error_info().map(|info| info.reason.clone()).unwrap_or_default()
}

/// Face boxes of the reference at 640 (tests/fixtures/reference/insightface.json).
pub(crate) fn reference_boxes(image: &str) -> Vec<[f32; 4]> {
    let path = root().join("tests/fixtures/reference/insightface.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).expect("reference")).expect("json");
    json["images"][image]["det640"]
        .as_array()
        .expect("faces")
        .iter()
        .map(|f| {
            let b: Vec<f32> =
                f["bbox"].as_array().expect("bbox").iter().map(|v| v.as_f64().expect("num") as f32).collect();
            [b[0], b[1], b[2], b[3]]
        })
        .collect()
}

/// A PNG of the region around `bbox` with `margin` (fraction of the box side) on each side.
pub(crate) fn crop_png(image: &RgbImage, bbox: [f32; 4], margin: f32) -> Vec<u8> {
    let (w, h) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
    let x0 = (bbox[0] - margin * w).max(0.0) as u32;
    let y0 = (bbox[1] - margin * h).max(0.0) as u32;
    let x1 = ((bbox[2] + margin * w) as u32).min(image.width());
    let y1 = ((bbox[3] + margin * h) as u32).min(image.height());
    png(&image::imageops::crop_imm(image, x0, y0, x1 - x0, y1 - y0).to_image())
}

/// Single-face photos of nine different people (the six of t1.jpg, the three players of
/// gdp.jpg), as PNG.
pub(crate) fn people() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (name, count) in [("t1.jpg", 6), ("gdp.jpg", 3)] {
        let rgb = fixture_rgb(name);
        for bbox in reference_boxes(name).into_iter().take(count) {
            out.push(crop_png(&rgb, bbox, 0.35));
        }
    }
    out
}

/// Yao Ming's face in players.jpg (44 px, another photo than yaoming.jpg), as PNG.
pub(crate) fn yao_in_players() -> Vec<u8> {
    crop_png(&fixture_rgb("players.jpg"), reference_boxes("players.jpg")[3], 0.6)
}

pub(crate) const ADMIN_A: Option<&str> = Some("secret-admin-a");
pub(crate) const ADMIN_B: Option<&str> = Some("secret-admin-b");
pub(crate) const READER_A: Option<&str> = Some("secret-reader-a");
pub(crate) const LISTS_READER_A: Option<&str> = Some("secret-lists-reader-a");

/// GET `path` from the metrics endpoint at `addr`: the whole HTTP response.
pub(crate) async fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect to metrics");
    socket.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("write");
    let mut body = String::new();
    socket.read_to_string(&mut body).await.expect("read");
    body
}
