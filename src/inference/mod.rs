//! `InferencePool`: the async face of the pipeline. Jobs go through a bounded queue to worker
//! threads that each own a [`FacePipeline`] (their own sessions, on ONNX Runtime or OpenVINO);
//! replies come back on oneshot channels. Inference never runs on a tokio thread.

pub mod backend;
pub mod detector;
pub mod embedder;
pub mod enrollable;
pub mod nms;
pub mod openvino;
pub mod pipeline;
pub mod quality;
pub mod session;
pub mod tiles;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::{Error, Result};
pub use backend::Backend;
pub use detector::{Coverage, DetectorConfig};
pub use pipeline::{
    Analysis, AnalyzeOptions, EmbedWith, FaceCheck, FacePipeline, FaceSelection, PipelineConfig, StageTimings,
};
use session::{ModelBytes, ModelSession, ModelSpec, RuntimeConfig};

/// Everything needed to build pipelines.
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// Path of libonnxruntime.so.
    pub runtime_library: PathBuf,
    /// Path of libopenvino_c.so.
    pub openvino_library: PathBuf,
    /// The backend and precision that run the models (resolved from the flags).
    pub backend: Backend,
    pub detector: ModelSpec,
    pub embedder: ModelSpec,
    /// The candidate embedder a reindex moves the store to (`--candidate-embedder-model`).
    pub candidate: Option<ModelSpec>,
    pub detector_config: DetectorConfig,
    pub pipeline: PipelineConfig,
    /// Worker threads, each with its own sessions.
    pub workers: usize,
    /// Inference threads per session (ONNX Runtime intra-op, OpenVINO inference threads).
    pub intra_threads: usize,
    /// Jobs waiting beyond those being worked on; a full queue answers OVERLOADED.
    pub queue_capacity: usize,
}

/// Both models, each read from disk once and sha256-checked: what every worker builds its
/// sessions from.
#[derive(Debug, Clone)]
pub struct Models {
    pub detector: ModelBytes,
    pub embedder: ModelBytes,
    pub candidate: Option<ModelBytes>,
}

impl Models {
    /// Reads and checks the model files. Blocking.
    pub fn read(config: &InferenceConfig) -> Result<Self> {
        Ok(Models {
            detector: ModelBytes::read(&config.detector)?,
            embedder: ModelBytes::read(&config.embedder)?,
            candidate: config.candidate.as_ref().map(ModelBytes::read).transpose()?,
        })
    }
}

/// Builds one pipeline from the model files (benches, examples): reads and checks them, then
/// as `load_pipeline_from`.
pub fn load_pipeline(config: &InferenceConfig) -> Result<FacePipeline> {
    load_pipeline_from(config, &Models::read(config)?)
}

/// Builds one pipeline: loads the backend's runtime (once per process), opens sessions from the
/// model bytes and verifies their tensors.
pub fn load_pipeline_from(config: &InferenceConfig, models: &Models) -> Result<FacePipeline> {
    let runtime = RuntimeConfig {
        onnxruntime: config.runtime_library.clone(),
        openvino: config.openvino_library.clone(),
        intra_threads: config.intra_threads,
    };
    let backend = config.backend;
    let detector = detector::Detector::try_new(
        ModelSession::open(&runtime, backend.detector, &models.detector, false)?,
        config.detector_config,
    )?;
    let embedder =
        embedder::Embedder::try_new(ModelSession::open(&runtime, backend.embedder, &models.embedder, true)?)?;
    let pipeline = FacePipeline::new(detector, embedder, config.pipeline);
    Ok(match &models.candidate {
        Some(bytes) => pipeline.with_candidate(embedder::Embedder::try_new(ModelSession::open(
            &runtime,
            backend.embedder,
            bytes,
            true,
        )?)?),
        None => pipeline,
    })
}

/// A request waiting for a worker.
struct Job {
    bytes: bytes::Bytes,
    span: tracing::Span,
    task: Task,
}

/// What a job asks of the pipeline.
enum Task {
    Analyze(AnalyzeOptions, oneshot::Sender<Result<Analysis>>),
    /// Embeds the face at these landmarks with embedder `.1` (a reindex).
    Reembed([crate::domain::Point; 5], usize, oneshot::Sender<Result<crate::domain::Embedding>>),
}

impl Task {
    fn is_closed(&self) -> bool {
        match self {
            Task::Analyze(_, reply) => reply.is_closed(),
            Task::Reembed(_, _, reply) => reply.is_closed(),
        }
    }
}

/// Cheap-to-clone handle on the worker threads.
#[derive(Debug, Clone)]
pub struct InferencePool {
    queue: async_channel::Sender<Job>,
    workers: usize,
    backend: Backend,
    rejected: Arc<AtomicU64>,
}

impl InferencePool {
    /// Starts the workers on `models` (from `Models::read`) and waits until every one has
    /// loaded and warmed up its sessions. Blocking: call it from a blocking context.
    pub fn start(config: &InferenceConfig, models: &Models) -> Result<Self> {
        let workers = config.workers.max(1);
        let (queue, jobs) = async_channel::bounded(config.queue_capacity.max(1));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for id in 0..workers {
            let (config, models, jobs, ready) = (config.clone(), models.clone(), jobs.clone(), ready_tx.clone());
            std::thread::Builder::new()
                .name(format!("inference-{id}"))
                .spawn(move || worker::run(id, &config, models, jobs, ready))
                .map_err(|e| Error::internal("spawning an inference worker", e))?;
        }
        drop(ready_tx);
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(err),
                Err(_) => return Err(Error::bug("an inference worker died during start-up")),
            }
        }
        Ok(InferencePool { queue, workers, backend: config.backend, rejected: Arc::new(AtomicU64::new(0)) })
    }

    /// Runs the pipeline on `bytes`. Fails fast with OVERLOADED when the queue is full.
    pub async fn analyze(&self, bytes: bytes::Bytes, options: AnalyzeOptions) -> Result<Analysis> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job { bytes, span: tracing::Span::current(), task: Task::Analyze(options, reply) })?;
        let analysis = answer.await.map_err(|_| Error::bug("an inference worker dropped a job; this is a bug"))??;
        let t = &analysis.timings;
        for (stage, time) in [
            ("decode", t.decode),
            ("detect", t.detect),
            ("align", t.align),
            ("embed", t.embed),
            ("thumbnail", t.thumbnail),
        ] {
            crate::metrics::record_stage(stage, time);
        }
        Ok(analysis)
    }

    fn submit(&self, job: Job) -> Result<()> {
        self.queue.try_send(job).map_err(|err| match err {
            async_channel::TrySendError::Full(_) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Error::overloaded(Duration::from_millis(200))
            }
            async_channel::TrySendError::Closed(_) => {
                Error::Unavailable { message: "the inference workers have stopped".into() }
            }
        })
    }

    /// Embeds the face at `landmarks` of the stored original `bytes` with embedder `which`
    /// (a reindex). Waits for room in the queue rather than failing: a reindex is not a caller
    /// to refuse, and it keeps at most one job queued.
    pub async fn reembed(
        &self,
        bytes: bytes::Bytes,
        landmarks: [crate::domain::Point; 5],
        which: usize,
    ) -> Result<crate::domain::Embedding> {
        let (reply, answer) = oneshot::channel();
        let job = Job { bytes, span: tracing::Span::current(), task: Task::Reembed(landmarks, which, reply) };
        self.queue
            .send(job)
            .await
            .map_err(|_| Error::Unavailable { message: "the inference workers have stopped".into() })?;
        answer.await.map_err(|_| Error::bug("an inference worker dropped a job; this is a bug"))?
    }

    /// Jobs waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Requests refused because the queue was full, since start.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The backend and precision the workers run.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}
