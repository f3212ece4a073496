//! Which inference backend and precision run the models: the choices the flags offer
//! (`--inference-backend`, `--inference-precision`), what the CPU can do, and how `auto`
//! resolves. No model code here.
//!
//! `auto` runs the embedder on OpenVINO in bf16 where the CPU has bf16 instructions (AVX512_BF16
//! or AMX), with the detector in f32 (see [`resolve`]), and ONNX Runtime f32 everywhere else
//! (README, "Inference backends", has the measurements and the accuracy gate).

use std::fmt;

/// `--inference-backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// See `resolve`.
    Auto,
    /// ONNX Runtime (fp32): the reference.
    Ort,
    /// OpenVINO's CPU plugin.
    Openvino,
}

/// `--inference-precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionChoice {
    /// The embedder in bf16 where the backend and the CPU can, the detector in f32.
    Auto,
    F32,
    Bf16,
}

/// Numeric precision a model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

/// The runtime and precision of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// ONNX Runtime, f32.
    Ort,
    OpenVino(Precision),
}

impl Engine {
    /// `ort` or `openvino` (logs, metrics).
    pub fn name(self) -> &'static str {
        match self {
            Engine::Ort => "ort",
            Engine::OpenVino(_) => "openvino",
        }
    }

    /// `f32` or `bf16` (logs, metrics).
    pub fn precision_name(self) -> &'static str {
        match self {
            Engine::Ort | Engine::OpenVino(Precision::F32) => "f32",
            Engine::OpenVino(Precision::Bf16) => "bf16",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name(), self.precision_name())
    }
}

/// What runs each model, resolved from the choices and the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub detector: Engine,
    pub embedder: Engine,
}

impl Backend {
    /// The same engine for both models.
    pub const fn uniform(engine: Engine) -> Self {
        Backend { detector: engine, embedder: engine }
    }

    /// ONNX Runtime f32 for both models: the reference.
    pub const ORT: Backend = Backend::uniform(Engine::Ort);
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detector == self.embedder {
            write!(f, "{}", self.detector)
        } else {
            write!(f, "detector {}, embedder {}", self.detector, self.embedder)
        }
    }
}

/// What the CPU offers that the backends can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    /// AVX512_BF16 or AMX-BF16: bf16 arithmetic in hardware.
    pub bf16: bool,
    pub avx512: bool,
    /// AVX512_VNNI or AVX_VNNI (int8 dot products).
    pub vnni: bool,
}

impl CpuFeatures {
    /// The flags of the first CPU in /proc/cpuinfo (all false elsewhere), read once per process.
    pub fn detect() -> Self {
        static DETECTED: std::sync::OnceLock<CpuFeatures> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::fs::read_to_string("/proc/cpuinfo").map(|text| Self::from_cpuinfo(&text)).unwrap_or_default()
        })
    }

    /// Parses the `flags` line of a /proc/cpuinfo text.
    pub fn from_cpuinfo(text: &str) -> Self {
        let flags: Vec<&str> = text
            .lines()
            .find(|line| line.starts_with("flags"))
            .and_then(|line| line.split_once(':'))
            .map(|(_, flags)| flags.split_whitespace().collect())
            .unwrap_or_default();
        let has = |name: &str| flags.contains(&name);
        CpuFeatures {
            bf16: has("avx512_bf16") || has("amx_bf16"),
            avx512: has("avx512f"),
            vnni: has("avx512_vnni") || has("avx_vnni"),
        }
    }

    /// The flags as a short list for logs and reports, e.g. "avx512 bf16 vnni".
    pub fn describe(self) -> String {
        let names = [(self.avx512, "avx512"), (self.bf16, "bf16"), (self.vnni, "vnni")];
        let present: Vec<&str> = names.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        if present.is_empty() { "avx2 or older".into() } else { present.join(" ") }
    }
}

/// Resolves the flags against the CPU. `openvino_present`: the OpenVINO library loads (`auto`
/// falls back to ONNX Runtime without it; an explicit `openvino` fails later, at load).
///
/// Precision `auto` on a bf16 CPU runs the embedder in bf16 and the detector in f32: in bf16 the
/// detector's landmarks of faces under 25 px move enough to pull their embeddings below 0.99
/// cosine of the reference (tests/grpc/parity.rs), while the embedder in bf16 stays above
/// 0.998. `bf16` runs both in bf16.
pub fn resolve(
    backend: BackendChoice,
    precision: PrecisionChoice,
    cpu: CpuFeatures,
    openvino_present: bool,
) -> Result<Backend, String> {
    let no_bf16 =
        || "--inference-precision bf16: this CPU has no bf16 instructions (avx512_bf16 or amx_bf16)".to_owned();
    let ov = |p| Engine::OpenVino(p);
    let mixed = |detector| Backend { detector, embedder: ov(Precision::Bf16) };
    match (backend, precision) {
        (BackendChoice::Ort, PrecisionChoice::Bf16) => {
            Err("--inference-precision bf16 needs --inference-backend openvino (ONNX Runtime runs f32)".into())
        }
        (BackendChoice::Ort, _) => Ok(Backend::ORT),
        (BackendChoice::Openvino, PrecisionChoice::F32) => Ok(Backend::uniform(ov(Precision::F32))),
        (_, PrecisionChoice::Bf16) if !cpu.bf16 => Err(no_bf16()),
        (_, PrecisionChoice::Bf16) => Ok(Backend::uniform(ov(Precision::Bf16))),
        (BackendChoice::Openvino, PrecisionChoice::Auto) => {
            Ok(if cpu.bf16 { mixed(ov(Precision::F32)) } else { Backend::uniform(ov(Precision::F32)) })
        }
        (BackendChoice::Auto, PrecisionChoice::F32) => Ok(Backend::ORT),
        (BackendChoice::Auto, PrecisionChoice::Auto) => {
            Ok(if cpu.bf16 && openvino_present { mixed(AUTO_DETECTOR) } else { Backend::ORT })
        }
    }
}

/// The detector's engine under `auto` on a bf16 CPU: the faster of the two f32 engines there
/// (`cargo bench --bench inference`: 22.1 against 23.8 ms at 640; README "Inference backends").
const AUTO_DETECTOR: Engine = Engine::Ort;

#[cfg(test)]
mod tests {
    use super::*;

    const SAPPHIRE: &str = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_bf16\n";
    const EPYC_AVX2: &str = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n";

    #[test]
    fn cpuinfo_flags_are_read() {
        let cpu = CpuFeatures::from_cpuinfo(SAPPHIRE);
        assert_eq!(cpu, CpuFeatures { bf16: true, avx512: true, vnni: true });
        assert_eq!(cpu.describe(), "avx512 bf16 vnni");
        assert_eq!(CpuFeatures::from_cpuinfo(EPYC_AVX2), CpuFeatures::default());
        assert_eq!(CpuFeatures::default().describe(), "avx2 or older");
    }

    #[test]
    fn auto_takes_bf16_only_where_the_cpu_has_it() {
        let bf16 = CpuFeatures::from_cpuinfo(SAPPHIRE);
        let avx2 = CpuFeatures::from_cpuinfo(EPYC_AVX2);
        let (a, p) = (BackendChoice::Auto, PrecisionChoice::Auto);
        let bf16_embedder = Engine::OpenVino(Precision::Bf16);
        let auto = resolve(a, p, bf16, true).unwrap();
        assert_eq!(auto, Backend { detector: AUTO_DETECTOR, embedder: bf16_embedder });
        assert_eq!(resolve(a, p, avx2, true), Ok(Backend::ORT));
        assert_eq!(resolve(a, p, bf16, false), Ok(Backend::ORT), "no OpenVINO library: ONNX Runtime");
        assert_eq!(resolve(a, PrecisionChoice::F32, bf16, true), Ok(Backend::ORT));
        let ov_f32 = Engine::OpenVino(Precision::F32);
        assert_eq!(resolve(BackendChoice::Openvino, p, avx2, true), Ok(Backend::uniform(ov_f32)));
        let ov_auto = resolve(BackendChoice::Openvino, p, bf16, true).unwrap();
        assert_eq!(ov_auto, Backend { detector: ov_f32, embedder: bf16_embedder });
        assert_eq!(ov_auto.to_string(), "detector openvino f32, embedder openvino bf16");
        let all_bf16 = resolve(BackendChoice::Openvino, PrecisionChoice::Bf16, bf16, true).unwrap();
        assert_eq!(all_bf16, Backend::uniform(bf16_embedder));
        assert_eq!(all_bf16.to_string(), "openvino bf16");
    }

    #[test]
    fn impossible_combinations_are_refused() {
        let bf16 = CpuFeatures::from_cpuinfo(SAPPHIRE);
        let avx2 = CpuFeatures::from_cpuinfo(EPYC_AVX2);
        let err = resolve(BackendChoice::Ort, PrecisionChoice::Bf16, bf16, true).unwrap_err();
        assert!(err.contains("ONNX Runtime runs f32"), "{err}");
        let err = resolve(BackendChoice::Openvino, PrecisionChoice::Bf16, avx2, true).unwrap_err();
        assert!(err.contains("no bf16 instructions"), "{err}");
        assert!(resolve(BackendChoice::Auto, PrecisionChoice::Bf16, avx2, true).is_err());
        assert_eq!(resolve(BackendChoice::Ort, PrecisionChoice::F32, bf16, true), Ok(Backend::ORT));
    }
}
