//! The backend contract: the [`Engine`] trait every backend implements, the options and
//! arithmetic they share ([`EngineOptions`], [`Precision`]), which backend to run
//! ([`BackendKind`]) and the device-pointer entry points ([`DevicePtrOps`]).
//!
//! A leaf: it names no backend. Backends import it; [`crate::engine`] is the one place
//! that names them and builds an engine of a kind. Callers pick a backend (`cpu`, `cuda`,
//! `auto`) once and then encode, decode and accumulate statistics without knowing which
//! one runs. An engine is bound to one SAE so a GPU backend uploads weights once.

use crate::codes::{Codes, Denorm, Encoded};
use crate::error::{Error, Result};
use crate::sae::Sae;
use crate::stats::LatentStats;

/// Encode arithmetic of the CUDA backend (the CPU backend always computes exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Activations stay f32 and the GEMM runs in plain f32 (bf16/f16 weight tiles are widened
    /// on the device first): matches the CPU reference up to summation order.
    Exact,
    /// Activations rounded to the weights' dtype and the tensor-core GEMM (f32 accumulate;
    /// TF32 for f32 weights), as torch does with a bf16 model. The fast path for large SAEs.
    /// With bf16 weights and TopK the GEMM writes bf16 scores; the top k is still that of
    /// the f32 pre-activations of the rounded input: selection runs on upper bounds of the
    /// rounded scores, the candidates are rescored in f32, and a row whose choice cannot be
    /// certified is re-encoded with f32 scores. Returned values are those f32 rescorings.
    Fast,
}

impl Precision {
    /// Parses "exact" / "fast".
    pub fn parse(s: &str) -> Option<Precision> {
        match s {
            "exact" => Some(Precision::Exact),
            "fast" => Some(Precision::Fast),
            _ => None,
        }
    }
}

/// How the CUDA encoder GEMM picks its algorithm ([`EngineOptions::cuda_gemm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GemmMode {
    /// Large GEMMs (at least 2^34 multiply-adds, `cuda::gemm::SEARCH_MIN_MACS`) time cuBLAS's
    /// choice against cuBLASLt's candidates once per shape and keep the fastest; small ones
    /// use cuBLAS.
    Auto,
    /// Always `cublasGemmEx` with its default algorithm (the behaviour before the search).
    Cublas,
    /// A cuBLASLt algorithm (the fastest checked candidate) whatever the size; cuBLAS only
    /// where cuBLASLt offers none for the shape. Every candidate failing its check is an error.
    Lt,
}

impl GemmMode {
    /// Parses "auto" / "cublas" / "lt".
    pub fn parse(s: &str) -> Option<GemmMode> {
        match s {
            "auto" => Some(GemmMode::Auto),
            "cublas" => Some(GemmMode::Cublas),
            "lt" | "cublaslt" => Some(GemmMode::Lt),
            _ => None,
        }
    }
}

/// The GEMM behind CPU encode tiles ([`EngineOptions::cpu_gemm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuGemm {
    /// The build's default: OpenBLAS when built with the `openblas` feature, else the
    /// `gemm` crate.
    Auto,
    /// The `gemm` crate (pure Rust, always built).
    Crate,
    /// The system OpenBLAS; an error in a build without the `openblas` feature.
    OpenBlas,
}

impl CpuGemm {
    /// Parses "auto" / "crate" / "openblas".
    pub fn parse(s: &str) -> Option<CpuGemm> {
        match s {
            "auto" => Some(CpuGemm::Auto),
            "crate" => Some(CpuGemm::Crate),
            "openblas" => Some(CpuGemm::OpenBlas),
            _ => None,
        }
    }
}

/// Which backend to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The multithreaded CPU reference.
    Cpu,
    /// A CUDA device.
    Cuda {
        /// The device ordinal.
        device: usize,
    },
    /// CUDA device 0 when usable, else CPU.
    Auto,
}

impl BackendKind {
    /// Parses "cpu", "cuda", "cuda:N", "auto" (device from `device` for plain "cuda"/"auto").
    pub fn parse(s: &str, device: usize) -> Result<BackendKind> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "auto" => Ok(BackendKind::Auto),
            "cuda" | "gpu" => Ok(BackendKind::Cuda { device }),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(d)) => Ok(BackendKind::Cuda { device: d }),
                _ => Err(Error::invalid(format!(
                    "unknown backend `{s}`: expected cpu, cuda, cuda:N or auto"
                ))),
            },
        }
    }
}

/// What an engine will be asked to do: decides which weights a GPU backend keeps on the
/// device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workload {
    /// Encode only (codes, and statistics of the codes, which need no weights): W_enc on the
    /// device, never W_dec. Decoding or steering with such an engine is refused.
    Encode,
    /// Encode, decode and steer: both matrices (the default).
    #[default]
    EncodeDecode,
}

impl Workload {
    /// Whether W_dec goes on the device.
    pub fn needs_decoder(self) -> bool {
        self == Workload::EncodeDecode
    }
}

/// Tuning knobs shared by backends.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Latents per encode tile (the N x L matrix never exists; one N x tile does).
    pub tile_latents: usize,
    /// Device memory the CUDA backend may use beyond the weights, in bytes.
    pub workspace_bytes: usize,
    /// CUDA encode arithmetic: Exact (default; the CPU engine's results up to summation
    /// order) or Fast (activations rounded to the weights' dtype, tensor cores). The CPU
    /// backend always computes exactly.
    pub precision: Precision,
    /// CUDA: how the encoder GEMM picks its algorithm (codes do not depend on it).
    pub cuda_gemm: GemmMode,
    /// CUDA TopK: two half-width score buffers, the top-k pass of one tile on a second
    /// stream while the GEMM fills the other (codes do not depend on it; off until measured
    /// faster, see BENCHMARKS.md).
    pub cuda_overlap: bool,
    /// CUDA: compile the embedded kernel sources with NVRTC even when fatbins are embedded
    /// (checks the run-time fallback of a build without nvcc on a GPU machine).
    pub cuda_force_nvrtc: bool,
    /// CPU: the GEMM behind encode tiles (results agree up to summation order).
    pub cpu_gemm: CpuGemm,
    /// Most device memory the CUDA backend may take, weights included, in bytes (None: what
    /// is free). Below the card's free memory it emulates a smaller card; weights that do
    /// not fit are refused before anything is uploaded.
    pub device_memory_limit: Option<u64>,
    /// What the engine will be asked to do: an encode-only CUDA engine never uploads W_dec
    /// (and refuses to decode). Default: encode and decode.
    pub workload: Workload,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            tile_latents: 4096,
            workspace_bytes: 1 << 30,
            precision: Precision::Exact,
            cuda_gemm: GemmMode::Auto,
            cuda_overlap: false,
            cuda_force_nvrtc: false,
            cpu_gemm: CpuGemm::Auto,
            device_memory_limit: None,
            workload: Workload::EncodeDecode,
        }
    }
}

/// Encode, decode and statistics for one SAE on one backend.
pub trait Engine: Send {
    /// Human-readable backend name, e.g. "cpu (2 threads)" or "cuda:0 (NVIDIA H200)".
    fn name(&self) -> String;
    /// The SAE this engine runs.
    fn sae(&self) -> &Sae;
    /// Encodes `rows` rows of `x` (`[rows, d_in]` row-major). A NaN or infinity in
    /// the input is an error naming the row (`row_offset` + local row).
    fn encode(&self, x: &[f32], rows: usize, row_offset: u64) -> Result<Encoded>;
    /// Decodes codes back to `[n, d_in]` (plus b_dec; de-normalized with `denorm` when given).
    fn decode(&self, codes: &Codes, denorm: Option<&Denorm>) -> Result<Vec<f32>>;
    /// Adds the codes' rows selected by `mask` to `stats`.
    fn accumulate(
        &self,
        stats: &mut LatentStats,
        codes: &Codes,
        mask: Option<&[u8]>,
    ) -> Result<()> {
        stats.accumulate(codes, mask)
    }
    /// Encode/decode on caller-owned device memory, when the backend has it (CUDA); the CPU has not.
    fn device_ptr(&self) -> Option<&dyn DevicePtrOps> {
        None
    }
}

/// Arguments of [`DevicePtrOps::encode_topk_device`]. All buffers live on the engine's device.
#[derive(Debug, Clone, Copy)]
pub struct EncodeTopkDevice {
    /// f32 input rows `[rows, d_in]`, row-major.
    pub x: u64,
    /// Number of rows in `x`.
    pub rows: usize,
    /// i32 output `[rows, k]` (k = the SAE's k), same order and padding as `Codes::TopK`.
    pub out_indices: u64,
    /// f32 output `[rows, k]`.
    pub out_values: u64,
    /// f32 output `[rows]` of normalization scales, or 0 when not wanted.
    pub out_scale: u64,
    /// f32 output `[rows]` of normalization shifts, or 0 when not wanted.
    pub out_shift: u64,
    /// The `CUstream` the work is ordered on.
    pub stream: u64,
}

/// Arguments of [`DevicePtrOps::decode_topk_device`].
#[derive(Debug, Clone, Copy)]
pub struct DecodeTopkDevice {
    /// i32 `[rows, k]` latent indices (-1 = padding).
    pub indices: u64,
    /// f32 `[rows, k]` values.
    pub values: u64,
    /// Number of rows.
    pub rows: usize,
    /// Codes per row.
    pub k: usize,
    /// f32 `[rows]` scales and shifts that undo normalization, or 0 for none (both or neither).
    pub scale: u64,
    /// See `scale`.
    pub shift: u64,
    /// f32 output `[rows, d_in]`.
    pub out_x: u64,
    /// The `CUstream` the work is ordered on.
    pub stream: u64,
}

/// Encode and decode on caller-owned device memory.
pub trait DevicePtrOps {
    /// Encodes like `Engine::encode` for a TopK SAE. The work is enqueued on `stream`
    /// and may still be running when this returns; the caller synchronizes. A non-finite
    /// input is still an error naming the row (the engine may synchronize to report it).
    ///
    /// # Safety
    /// Every non-zero address is a live allocation on this engine's device large enough
    /// for the stated shape, and `stream` is a valid stream of the current context (or 0).
    unsafe fn encode_topk_device(&self, args: &EncodeTopkDevice) -> Result<()>;

    /// Decodes like `Engine::decode` (plus b_dec, de-normalized when scale/shift are given).
    ///
    /// # Safety
    /// As [`DevicePtrOps::encode_topk_device`]; latent indices must be -1 or below n_latents.
    unsafe fn decode_topk_device(&self, args: &DecodeTopkDevice) -> Result<()>;
}

/// Parses a memory size: bytes, or a number with K, M, G, T (powers of 1024; an optional
/// trailing B or iB), e.g. "24G", "1.5GiB", "512M", "1073741824".
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || {
        Error::invalid(format!(
            "memory size `{s}`: expected bytes or a number with K, M, G or T (e.g. 24G)"
        ))
    };
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let bytes = v * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    const GB: u64 = 1 << 30;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("24G").unwrap(), 24 * GB);
        assert_eq!(parse_size("24GiB").unwrap(), 24 * GB);
        assert_eq!(parse_size("1.5g").unwrap(), 3 * GB / 2);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("64KB").unwrap(), 64 << 10);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("1073741824").unwrap(), GB);
        for bad in ["", "G", "-1G", "0", "1X", "nanG", "1e30T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
