//! Model sessions on either inference backend: the ONNX Runtime environment (loaded from the
//! configured libonnxruntime), OpenVINO (`super::openvino`), and [`ModelSession`], one model on
//! one worker whichever backend runs it, built from model bytes that were read once and
//! sha256-checked (`ModelBytes`). No preprocessing here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::environment::Environment;
use ort::logging::LogLevel;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorRef, ValueType};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Where a model comes from and what it must look like.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub path: PathBuf,
    /// Expected sha256 (hex); `None` skips the check (a drop-in model of the same shape).
    pub sha256: Option<String>,
}

/// Settings shared by every session.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Intra-op threads per session.
    pub intra_threads: usize,
}

use super::backend::Engine;
use super::openvino;

/// Where the runtimes are, and the threads of each session.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// libonnxruntime.so.
    pub onnxruntime: PathBuf,
    /// libopenvino_c.so.
    pub openvino: PathBuf,
    pub intra_threads: usize,
}

/// One model on one worker thread, on ONNX Runtime or OpenVINO.
#[derive(Debug)]
pub enum ModelSession {
    Ort(Session),
    OpenVino(openvino::Session),
}

impl ModelSession {
    /// Builds a session for `model` on `engine`. `quiet` raises ONNX Runtime's log level (see
    /// `open_session`).
    pub fn open(runtime: &RuntimeConfig, engine: Engine, model: &ModelBytes, quiet: bool) -> Result<Self> {
        match engine {
            Engine::Ort => {
                let env = environment(&runtime.onnxruntime)?;
                let options = SessionOptions { intra_threads: runtime.intra_threads };
                Ok(ModelSession::Ort(open_session(&env, model, options, quiet)?))
            }
            Engine::OpenVino(precision) => {
                openvino::Session::open(&runtime.openvino, &model.bytes, runtime.intra_threads, precision)
                    .map(ModelSession::OpenVino)
                    .map_err(|e| Error::Unavailable {
                        message: format!("cannot load model {} into OpenVINO: {e}", model.path.display()),
                    })
            }
        }
    }

    /// Shapes of the inputs (-1: dynamic axis); an empty shape for a non-tensor.
    pub fn input_dims(&self) -> Vec<Vec<i64>> {
        match self {
            ModelSession::Ort(s) => s.inputs().iter().map(|i| tensor_dims(i.dtype()).unwrap_or_default()).collect(),
            ModelSession::OpenVino(s) => s.input_dims().to_vec(),
        }
    }

    /// Shapes of the outputs (-1: dynamic axis); an empty shape for a non-tensor.
    pub fn output_dims(&self) -> Vec<Vec<i64>> {
        match self {
            ModelSession::Ort(s) => s.outputs().iter().map(|o| tensor_dims(o.dtype()).unwrap_or_default()).collect(),
            ModelSession::OpenVino(s) => s.output_dims().to_vec(),
        }
    }

    /// Runs the model on one f32 input of shape `dims` and hands every output (f32) to `read`.
    pub fn run<R>(&mut self, dims: &[usize], input: &[f32], read: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
        match self {
            ModelSession::Ort(session) => {
                let tensor =
                    TensorRef::from_array_view((dims, input)).map_err(|e| Error::internal("input tensor", e))?;
                let outputs = session.run(ort::inputs![tensor]).map_err(|e| Error::internal("inference", e))?;
                let data = (0..outputs.len())
                    .map(|i| {
                        outputs[i].try_extract_tensor::<f32>().map(|(_, d)| d).map_err(|e| Error::internal("output", e))
                    })
                    .collect::<Result<Vec<_>>>()?;
                read(&data)
            }
            ModelSession::OpenVino(session) => session.run(dims, input, read),
        }
    }
}

static ENVIRONMENT: OnceLock<(PathBuf, Environment)> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Loads libonnxruntime from `library` once per process and returns the environment. A second
/// call with another path is an error: ONNX Runtime allows one environment per process.
pub fn environment(library: &Path) -> Result<Environment> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((loaded, env)) = ENVIRONMENT.get() {
        if loaded != library {
            return Err(Error::Unavailable {
                message: format!(
                    "ONNX Runtime is already loaded from {}; cannot load {}",
                    loaded.display(),
                    library.display()
                ),
            });
        }
        return Ok(env.clone());
    }
    if !library.is_file() {
        return Err(Error::Unavailable {
            message: format!("ONNX Runtime library not found at {} (run scripts/setup.sh)", library.display()),
        });
    }
    let env = ort::init_from(library)
        .map_err(|e| Error::Unavailable { message: format!("cannot load ONNX Runtime: {e}") })?
        .with_name("facevault")
        .with_telemetry(false)
        .build()
        .map_err(|e| Error::internal("building the ONNX Runtime environment", e))?;
    let _ = ENVIRONMENT.set((library.to_path_buf(), env.clone()));
    Ok(env)
}

/// A model file read once: the bytes every session is built from, and their sha256. Sessions
/// load these bytes, never the path again, so the model that runs is the model that was hashed
/// (a file replaced between the check and the load would otherwise run unchecked).
#[derive(Clone)]
pub struct ModelBytes {
    path: PathBuf,
    pub(super) bytes: Arc<[u8]>,
    sha256: String,
}

impl std::fmt::Debug for ModelBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelBytes")
            .field("path", &self.path)
            .field("len", &self.bytes.len())
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl ModelBytes {
    /// Reads the model at `spec.path`, hashes the bytes, and checks them against the pinned
    /// sha256 (when there is one) before anything parses them.
    pub fn read(spec: &ModelSpec) -> Result<Self> {
        if !spec.path.is_file() {
            return Err(Error::Unavailable {
                message: format!("model not found at {} (run scripts/setup.sh)", spec.path.display()),
            });
        }
        let bytes = std::fs::read(&spec.path).map_err(|e| Error::internal("reading a model file", e))?;
        let sha256: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        if let Some(want) = &spec.sha256
            && !sha256.eq_ignore_ascii_case(want)
        {
            return Err(Error::Unavailable {
                message: format!("model {} has sha256 {sha256}, expected {want}", spec.path.display()),
            });
        }
        Ok(ModelBytes { path: spec.path.clone(), bytes: bytes.into(), sha256 })
    }

    /// sha256 of the bytes, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Checks a model file against its pinned sha256 (benches check before they load).
pub fn verify_model(spec: &ModelSpec) -> Result<()> {
    ModelBytes::read(spec).map(drop)
}

/// Opens one single-purpose session. `quiet` raises the session's log level to Error (the
/// embedder warns on every batched run because its output is declared as (1, 512)).
pub fn open_session(env: &Environment, model: &ModelBytes, options: SessionOptions, quiet: bool) -> Result<Session> {
    let load =
        |e: ort::Error| Error::Unavailable { message: format!("cannot load model {}: {e}", model.path.display()) };
    let mut builder = Session::builder(env)
        .map_err(load)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| load(e.into()))?
        .with_intra_threads(options.intra_threads)
        .map_err(|e| load(e.into()))?
        .with_inter_threads(1)
        .map_err(|e| load(e.into()))?
        .with_parallel_execution(false)
        .map_err(|e| load(e.into()))?;
    if quiet {
        builder = builder.with_log_level(LogLevel::Error).map_err(|e| load(e.into()))?;
    }
    builder.commit_from_memory(&model.bytes).map_err(load)
}

/// Shape of a tensor input or output, with -1 for dynamic axes; `None` for a non-tensor.
pub fn tensor_dims(value_type: &ValueType) -> Option<Vec<i64>> {
    value_type.tensor_shape().map(|shape| shape.iter().copied().collect())
}
