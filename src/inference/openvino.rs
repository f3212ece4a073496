//! OpenVINO through its C API, loaded at run time from the `libopenvino_c` of the PyPI wheel
//! (scripts/setup.sh). Only what facevault needs: one process-wide core, ONNX models read from
//! memory and compiled for the CPU with explicit threads and precision, and a synchronous infer
//! request per worker fed f32 tensors. No preprocessing here.
//!
//! The library is pinned (2026.4.1; 2026.4.x is accepted): its enum values and struct layouts
//! are those of that release, and a self-check at load (the element type and byte size of an
//! f32 and a bf16 tensor) refuses a library whose element types are numbered otherwise.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::backend::Precision;
use crate::error::{Error, Result};

type Status = c_int;
const OK: Status = 0;
/// `ov_element_type_e` of OpenVINO 2025.1 and later.
const ELEMENT_BF16: c_int = 2;
const ELEMENT_F32: c_int = 4;

#[repr(C)]
struct Shape {
    rank: i64,
    dims: *mut i64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Dimension {
    min: i64,
    max: i64,
}

#[repr(C)]
struct PartialShape {
    rank: Dimension,
    dims: *mut Dimension,
}

#[repr(C)]
struct Version {
    build_number: *const c_char,
    description: *const c_char,
}

#[repr(C)]
struct VersionList {
    versions: *mut c_void,
    size: usize,
}

type Ptr = *mut c_void;

/// The entry points used, resolved once.
struct Api {
    get_version: unsafe extern "C" fn(*mut Version) -> Status,
    version_free: unsafe extern "C" fn(*mut Version),
    last_error: unsafe extern "C" fn() -> *const c_char,
    error_info: unsafe extern "C" fn(Status) -> *const c_char,
    free_string: unsafe extern "C" fn(*const c_char),
    core_create: unsafe extern "C" fn(*mut Ptr) -> Status,
    core_free: unsafe extern "C" fn(Ptr),
    core_versions: unsafe extern "C" fn(Ptr, *const c_char, *mut VersionList) -> Status,
    core_versions_free: unsafe extern "C" fn(*mut VersionList),
    read_model: unsafe extern "C" fn(Ptr, *const c_char, usize, Ptr, *mut Ptr) -> Status,
    model_free: unsafe extern "C" fn(Ptr),
    model_inputs_size: unsafe extern "C" fn(Ptr, *mut usize) -> Status,
    model_outputs_size: unsafe extern "C" fn(Ptr, *mut usize) -> Status,
    model_input: unsafe extern "C" fn(Ptr, usize, *mut Ptr) -> Status,
    model_output: unsafe extern "C" fn(Ptr, usize, *mut Ptr) -> Status,
    port_partial_shape: unsafe extern "C" fn(Ptr, *mut PartialShape) -> Status,
    port_free: unsafe extern "C" fn(Ptr),
    partial_shape_free: unsafe extern "C" fn(*mut PartialShape),
    compile_model: unsafe extern "C" fn(Ptr, Ptr, *const c_char, usize, *mut Ptr, ...) -> Status,
    compiled_free: unsafe extern "C" fn(Ptr),
    create_request: unsafe extern "C" fn(Ptr, *mut Ptr) -> Status,
    request_free: unsafe extern "C" fn(Ptr),
    set_input: unsafe extern "C" fn(Ptr, Ptr) -> Status,
    infer: unsafe extern "C" fn(Ptr) -> Status,
    output_tensor: unsafe extern "C" fn(Ptr, usize, *mut Ptr) -> Status,
    shape_create: unsafe extern "C" fn(i64, *const i64, *mut Shape) -> Status,
    shape_free: unsafe extern "C" fn(*mut Shape) -> Status,
    tensor_from_host: unsafe extern "C" fn(c_int, Shape, Ptr, *mut Ptr) -> Status,
    tensor_shape: unsafe extern "C" fn(Ptr, *mut Shape) -> Status,
    tensor_byte_size: unsafe extern "C" fn(Ptr, *mut usize) -> Status,
    tensor_element_type: unsafe extern "C" fn(Ptr, *mut c_int) -> Status,
    tensor_data: unsafe extern "C" fn(Ptr, *mut Ptr) -> Status,
    tensor_free: unsafe extern "C" fn(Ptr),
}

/// The loaded library, its API and the process's core.
struct Runtime {
    path: PathBuf,
    api: Api,
    core: Ptr,
    version: String,
    _library: libloading::Library,
}

// SAFETY: ov::Core is documented thread-safe (compile and read from any thread); the library and
// the function pointers are immutable once loaded.
unsafe impl Send for Runtime {}
unsafe impl Sync for Runtime {}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());
/// The library that failed to load and why: tried once per process.
static FAILED: Mutex<Option<(PathBuf, String)>> = Mutex::new(None);

fn unavailable(message: String) -> Error {
    Error::Unavailable { message }
}

impl Runtime {
    /// Turns a status into a result, with the status's description and OpenVINO's last error
    /// message (process-wide in the C API, so under concurrency it may be another call's).
    fn check(&self, status: Status, what: &'static str) -> Result<()> {
        if status == OK {
            return Ok(());
        }
        // SAFETY: the status description is a static C string; the last message is a C string
        // the library allocated for us, which we copy and free.
        let (info, detail) = unsafe {
            let info = (self.api.error_info)(status);
            let info = if info.is_null() { String::new() } else { CStr::from_ptr(info).to_string_lossy().into_owned() };
            let message = (self.api.last_error)();
            let detail = if message.is_null() {
                String::new()
            } else {
                let text = CStr::from_ptr(message).to_string_lossy().trim().to_owned();
                (self.api.free_string)(message);
                text
            };
            (info, detail)
        };
        let message = format!("OpenVINO status {status} ({info}); last OpenVINO message: {detail}");
        Err(Error::internal(what, std::io::Error::other(message)))
    }
}

/// Loads `library` (libopenvino_c) once per process and creates the core. A second call with
/// another path is an error.
fn runtime(library: &Path) -> Result<&'static Runtime> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(runtime) = RUNTIME.get() {
        if runtime.path != library {
            return Err(unavailable(format!(
                "OpenVINO is already loaded from {}; cannot load {}",
                runtime.path.display(),
                library.display()
            )));
        }
        return Ok(runtime);
    }
    if !library.is_file() {
        return Err(unavailable(format!("OpenVINO library not found at {} (run scripts/setup.sh)", library.display())));
    }
    let mut failed = FAILED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((path, message)) = failed.as_ref()
        && path == library
    {
        return Err(unavailable(message.clone()));
    }
    match load(library) {
        Ok(runtime) => Ok(RUNTIME.get_or_init(|| runtime)),
        Err(err) => {
            *failed = Some((library.to_path_buf(), err.to_string()));
            Err(err)
        }
    }
}

fn load(path: &Path) -> Result<Runtime> {
    let fail = |e: libloading::Error| unavailable(format!("cannot load OpenVINO from {}: {e}", path.display()));
    // SAFETY: loading the pinned libopenvino_c runs its initialisers, which only set up the
    // library; every symbol below is declared with the signature of the 2026.4 C headers.
    unsafe {
        let library = libloading::Library::new(path).map_err(fail)?;
        macro_rules! sym {
            ($name:literal) => {
                *library.get(concat!($name, "\0").as_bytes()).map_err(fail)?
            };
        }
        let api = Api {
            get_version: sym!("ov_get_openvino_version"),
            version_free: sym!("ov_version_free"),
            last_error: sym!("ov_get_last_err_msg"),
            error_info: sym!("ov_get_error_info"),
            free_string: sym!("ov_free"),
            core_create: sym!("ov_core_create"),
            core_free: sym!("ov_core_free"),
            core_versions: sym!("ov_core_get_versions_by_device_name"),
            core_versions_free: sym!("ov_core_versions_free"),
            read_model: sym!("ov_core_read_model_from_memory_buffer"),
            model_free: sym!("ov_model_free"),
            model_inputs_size: sym!("ov_model_inputs_size"),
            model_outputs_size: sym!("ov_model_outputs_size"),
            model_input: sym!("ov_model_const_input_by_index"),
            model_output: sym!("ov_model_const_output_by_index"),
            port_partial_shape: sym!("ov_port_get_partial_shape"),
            port_free: sym!("ov_output_const_port_free"),
            partial_shape_free: sym!("ov_partial_shape_free"),
            compile_model: sym!("ov_core_compile_model"),
            compiled_free: sym!("ov_compiled_model_free"),
            create_request: sym!("ov_compiled_model_create_infer_request"),
            request_free: sym!("ov_infer_request_free"),
            set_input: sym!("ov_infer_request_set_input_tensor"),
            infer: sym!("ov_infer_request_infer"),
            output_tensor: sym!("ov_infer_request_get_output_tensor_by_index"),
            shape_create: sym!("ov_shape_create"),
            shape_free: sym!("ov_shape_free"),
            tensor_from_host: sym!("ov_tensor_create_from_host_ptr"),
            tensor_shape: sym!("ov_tensor_get_shape"),
            tensor_byte_size: sym!("ov_tensor_get_byte_size"),
            tensor_element_type: sym!("ov_tensor_get_element_type"),
            tensor_data: sym!("ov_tensor_data"),
            tensor_free: sym!("ov_tensor_free"),
        };
        let mut raw = Version { build_number: std::ptr::null(), description: std::ptr::null() };
        let status = (api.get_version)(&mut raw);
        let version = (status == OK && !raw.build_number.is_null())
            .then(|| CStr::from_ptr(raw.build_number).to_string_lossy().into_owned());
        if status == OK {
            (api.version_free)(&mut raw);
        }
        let Some(version) = version else {
            return Err(unavailable(format!("{} did not report its version", path.display())));
        };
        if !version.starts_with("2026.4.") {
            return Err(unavailable(format!(
                "OpenVINO {version} at {}: facevault is built against the 2026.4 C API (run scripts/setup.sh)",
                path.display()
            )));
        }
        let mut core = std::ptr::null_mut();
        let runtime = Runtime { path: path.to_path_buf(), api, core: std::ptr::null_mut(), version, _library: library };
        runtime.check((runtime.api.core_create)(&mut core), "creating the OpenVINO core")?;
        let runtime = Runtime { core, ..runtime };
        if let Err(err) = self_check(&runtime) {
            (runtime.api.core_free)(runtime.core);
            return Err(err);
        }
        Ok(runtime)
    }
}

/// Checks that the CPU plugin loads (its version is read, which loads it) and that the library
/// numbers element types as facevault does (an f32 and a bf16 tensor of two elements report
/// their type and 8 and 4 bytes). Every failure is Unavailable.
fn self_check(runtime: &Runtime) -> Result<()> {
    let mut list = VersionList { versions: std::ptr::null_mut(), size: 0 };
    // SAFETY: core is live; the list is freed once, only when filled.
    let status = unsafe { (runtime.api.core_versions)(runtime.core, c"CPU".as_ptr(), &mut list) };
    let plugin = runtime.check(status, "loading OpenVINO's CPU plugin");
    if status == OK {
        // SAFETY: filled by the call above.
        unsafe { (runtime.api.core_versions_free)(&mut list) };
    }
    plugin.map_err(|e| unavailable(format!("OpenVINO's CPU plugin does not load: {e}")))?;
    let mismatch = || {
        unavailable(format!(
            "OpenVINO {} numbers its element types differently than facevault expects",
            runtime.version
        ))
    };
    for (element, bytes) in [(ELEMENT_F32, 4), (ELEMENT_BF16, 2)] {
        let mut buffer = [0f32; 2];
        let tensor = HostTensor::new(runtime, element, &[2], buffer.as_mut_ptr().cast()).map_err(|_| mismatch())?;
        let size = tensor.byte_size().map_err(|_| mismatch())?;
        if size != 2 * bytes || tensor.element_type().map_err(|_| mismatch())? != element {
            return Err(mismatch());
        }
    }
    Ok(())
}

/// Loads the library (once per process) and returns its version: whether OpenVINO can run here.
pub fn version(library: &Path) -> Result<String> {
    Ok(runtime(library)?.version.clone())
}

/// A tensor owned by this code (created on our buffer, or returned by a request), freed on drop.
struct HostTensor<'r> {
    runtime: &'r Runtime,
    ptr: Ptr,
}

impl<'r> HostTensor<'r> {
    /// Wraps `data` (which must outlive the tensor) as a tensor of `element` and `dims`.
    fn new(runtime: &'r Runtime, element: c_int, dims: &[i64], data: Ptr) -> Result<Self> {
        let api = &runtime.api;
        let mut shape = Shape { rank: 0, dims: std::ptr::null_mut() };
        let mut ptr = std::ptr::null_mut();
        // SAFETY: dims is a valid array of rank entries; the shape is freed after the tensor has
        // copied it; data is caller-owned memory of the right size.
        unsafe {
            runtime.check((api.shape_create)(dims.len() as i64, dims.as_ptr(), &mut shape), "an OpenVINO shape")?;
            let status = (api.tensor_from_host)(element, Shape { rank: shape.rank, dims: shape.dims }, data, &mut ptr);
            (api.shape_free)(&mut shape);
            runtime.check(status, "an OpenVINO input tensor")?;
        }
        Ok(HostTensor { runtime, ptr })
    }

    fn element_type(&self) -> Result<c_int> {
        let mut element = -1;
        // SAFETY: ptr is a live tensor.
        let status = unsafe { (self.runtime.api.tensor_element_type)(self.ptr, &mut element) };
        self.runtime.check(status, "an OpenVINO tensor's element type")?;
        Ok(element)
    }

    fn byte_size(&self) -> Result<usize> {
        let mut size = 0;
        // SAFETY: ptr is a live tensor.
        let status = unsafe { (self.runtime.api.tensor_byte_size)(self.ptr, &mut size) };
        self.runtime.check(status, "an OpenVINO tensor's size")?;
        Ok(size)
    }

    /// The tensor's f32 data; its size is checked against the shape.
    fn f32_data(&self) -> Result<&[f32]> {
        let api = &self.runtime.api;
        let mut shape = Shape { rank: 0, dims: std::ptr::null_mut() };
        let mut data = std::ptr::null_mut();
        // SAFETY: ptr is a live tensor; the shape's dims array has rank entries until freed; the
        // data stays valid while the tensor lives (the borrow of self).
        unsafe {
            self.runtime.check((api.tensor_shape)(self.ptr, &mut shape), "an OpenVINO output shape")?;
            let elements = if shape.dims.is_null() {
                1 // a scalar
            } else {
                let dims = std::slice::from_raw_parts(shape.dims, shape.rank.max(0) as usize);
                dims.iter().map(|&d| d.max(0) as usize).product::<usize>()
            };
            (api.shape_free)(&mut shape);
            if self.element_type()? != ELEMENT_F32 || self.byte_size()? != elements * 4 {
                return Err(Error::bug("an OpenVINO output is not f32"));
            }
            self.runtime.check((api.tensor_data)(self.ptr, &mut data), "an OpenVINO output's data")?;
            if elements == 0 {
                return Ok(&[]);
            }
            Ok(std::slice::from_raw_parts(data.cast::<f32>(), elements))
        }
    }
}

impl Drop for HostTensor<'_> {
    fn drop(&mut self) {
        // SAFETY: ptr is a live tensor we own, freed once.
        unsafe { (self.runtime.api.tensor_free)(self.ptr) };
    }
}

/// The CPU plugin's INFERENCE_PRECISION_HINT for `precision`.
fn precision_hint(precision: Precision) -> &'static CStr {
    match precision {
        Precision::F32 => c"f32",
        Precision::Bf16 => c"bf16",
    }
}

/// One compiled model and its synchronous infer request, on one worker thread.
pub struct Session {
    runtime: &'static Runtime,
    compiled: Ptr,
    request: Ptr,
    inputs: Shapes,
    outputs: Shapes,
}

// SAFETY: a session is used by one thread at a time (`&mut self` for inference); OpenVINO's
// compiled models and requests may move between threads.
unsafe impl Send for Session {}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("openvino::Session").field("inputs", &self.inputs).field("outputs", &self.outputs).finish()
    }
}

impl Session {
    /// Reads an ONNX model from memory and compiles it for the CPU with `threads` inference
    /// threads, one stream, latency hint, no core pinning, and `precision`.
    pub fn open(library: &Path, onnx: &[u8], threads: usize, precision: Precision) -> Result<Self> {
        let runtime = runtime(library)?;
        let api = &runtime.api;
        let mut model = std::ptr::null_mut();
        // SAFETY: onnx outlives the call (the model copies what it needs); no weights tensor for
        // ONNX.
        let status = unsafe {
            (api.read_model)(runtime.core, onnx.as_ptr().cast(), onnx.len(), std::ptr::null_mut(), &mut model)
        };
        runtime.check(status, "reading a model into OpenVINO")?;
        let shapes = match port_shapes(runtime, model) {
            Ok(shapes) => shapes,
            Err(err) => {
                // SAFETY: model is live and freed once.
                unsafe { (api.model_free)(model) };
                return Err(err);
            }
        };
        let (inputs, outputs) = shapes;
        let threads = CString::new(threads.max(1).to_string()).expect("a number has no NUL byte");
        let mut compiled = std::ptr::null_mut();
        // SAFETY: model is live; the variadic arguments are 5 pairs of NUL-terminated strings, as
        // property_args_size (10) says.
        let status = unsafe {
            (api.compile_model)(
                runtime.core,
                model,
                c"CPU".as_ptr(),
                10,
                &mut compiled,
                c"INFERENCE_NUM_THREADS".as_ptr(),
                threads.as_ptr(),
                c"NUM_STREAMS".as_ptr(),
                c"1".as_ptr(),
                c"PERFORMANCE_HINT".as_ptr(),
                c"LATENCY".as_ptr(),
                c"ENABLE_CPU_PINNING".as_ptr(),
                c"NO".as_ptr(),
                c"INFERENCE_PRECISION_HINT".as_ptr(),
                precision_hint(precision).as_ptr(),
            )
        };
        // SAFETY: the compiled model (if any) holds what it needs of the model.
        unsafe { (api.model_free)(model) };
        runtime.check(status, "compiling a model with OpenVINO")?;
        let mut session = Session { runtime, compiled, request: std::ptr::null_mut(), inputs, outputs };
        let mut request = std::ptr::null_mut();
        // SAFETY: compiled is live.
        let status = unsafe { (api.create_request)(compiled, &mut request) };
        runtime.check(status, "an OpenVINO infer request")?;
        session.request = request;
        Ok(session)
    }

    /// Shapes of the inputs, -1 for a dynamic axis.
    pub fn input_dims(&self) -> &[Vec<i64>] {
        &self.inputs
    }

    /// Shapes of the outputs, -1 for a dynamic axis.
    pub fn output_dims(&self) -> &[Vec<i64>] {
        &self.outputs
    }

    /// Runs the model on one f32 input of shape `dims` and hands every output's data to `read`.
    pub fn run<R>(&mut self, dims: &[usize], input: &[f32], read: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
        if dims.iter().product::<usize>() != input.len() {
            return Err(Error::bug("an OpenVINO input does not match its shape"));
        }
        let runtime = self.runtime;
        let api = &runtime.api;
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        // The tensor wraps `input` without copying. The request reads it only during `infer`,
        // which ends before this borrow does; it keeps a reference to the tensor afterwards (so
        // to memory the caller may free or move), but never reads it again: every `infer` is
        // preceded by a `set_input` of the new input. OpenVINO never writes to an input.
        let tensor = HostTensor::new(runtime, ELEMENT_F32, &dims, input.as_ptr().cast_mut().cast())?;
        // SAFETY: request and tensor are live.
        unsafe {
            runtime.check((api.set_input)(self.request, tensor.ptr), "setting an OpenVINO input")?;
            runtime.check((api.infer)(self.request), "OpenVINO inference")?;
        }
        let mut outputs = Vec::with_capacity(self.outputs.len());
        for index in 0..self.outputs.len() {
            let mut ptr = std::ptr::null_mut();
            // SAFETY: request is live and index is below its output count.
            let status = unsafe { (api.output_tensor)(self.request, index, &mut ptr) };
            runtime.check(status, "an OpenVINO output")?;
            outputs.push(HostTensor { runtime, ptr });
        }
        let data = outputs.iter().map(HostTensor::f32_data).collect::<Result<Vec<_>>>()?;
        let result = read(&data);
        drop(data);
        drop(outputs);
        drop(tensor);
        result
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: both are live (or null) and freed once, the request first.
        unsafe {
            if !self.request.is_null() {
                (self.runtime.api.request_free)(self.request);
            }
            if !self.compiled.is_null() {
                (self.runtime.api.compiled_free)(self.compiled);
            }
        }
    }
}

/// Tensor shapes, one per port, -1 for a dynamic axis.
type Shapes = Vec<Vec<i64>>;

/// The shapes of a model's inputs and outputs.
fn port_shapes(runtime: &Runtime, model: Ptr) -> Result<(Shapes, Shapes)> {
    let api = &runtime.api;
    let ports = |size: unsafe extern "C" fn(Ptr, *mut usize) -> Status,
                 port: unsafe extern "C" fn(Ptr, usize, *mut Ptr) -> Status|
     -> Result<Shapes> {
        let mut count = 0;
        // SAFETY: model is live; every port and partial shape is freed after it is read.
        unsafe {
            runtime.check(size(model, &mut count), "counting a model's ports")?;
            let mut shapes = Vec::with_capacity(count);
            for index in 0..count {
                let mut handle = std::ptr::null_mut();
                runtime.check(port(model, index, &mut handle), "a model's port")?;
                let mut partial = PartialShape { rank: Dimension { min: -1, max: -1 }, dims: std::ptr::null_mut() };
                let status = (api.port_partial_shape)(handle, &mut partial);
                (api.port_free)(handle);
                runtime.check(status, "a port's shape")?;
                let rank = partial.rank;
                let dims = if rank.min == rank.max && rank.min >= 0 && !partial.dims.is_null() {
                    std::slice::from_raw_parts(partial.dims, rank.min as usize)
                        .iter()
                        .map(|d| if d.min == d.max { d.min } else { -1 })
                        .collect()
                } else {
                    Vec::new()
                };
                (api.partial_shape_free)(&mut partial);
                shapes.push(dims);
            }
            Ok(shapes)
        }
    };
    Ok((ports(api.model_inputs_size, api.model_input)?, ports(api.model_outputs_size, api.model_output)?))
}
