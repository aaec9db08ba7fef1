//! The backend-agnostic engine API. Callers pick a backend (`cpu`, `cuda`, `auto`)
//! once and then encode, decode and accumulate statistics without knowing which
//! one runs. An engine is bound to one SAE so a GPU backend uploads weights once.

use std::sync::Arc;

use crate::codes::{Codes, Denorm, Encoded};
use crate::error::{Error, Result};
use crate::sae::Sae;
use crate::stats::LatentStats;

pub mod metrics;

/// Which backend to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The multithreaded CPU reference.
    Cpu,
    /// A CUDA device.
    Cuda { device: usize },
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
    pub precision: crate::cuda::Precision,
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
            precision: crate::cuda::Precision::Exact,
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
    fn device_ptr(&self) -> Option<&dyn crate::cuda::device_ptr::DevicePtrOps> {
        None
    }
}

/// Builds an engine of `kind` for `sae`.
pub fn engine(kind: BackendKind, sae: Arc<Sae>, opts: &EngineOptions) -> Result<Box<dyn Engine>> {
    match kind {
        BackendKind::Cpu => Ok(Box::new(crate::cpu::CpuEngine::new(sae, opts)?)),
        BackendKind::Cuda { device } => crate::cuda::engine(device, sae, opts),
        BackendKind::Auto => match crate::cuda::engine(0, sae.clone(), opts) {
            Ok(e) => Ok(e),
            Err(Error::BackendUnavailable(_)) => {
                Ok(Box::new(crate::cpu::CpuEngine::new(sae, opts)?))
            }
            Err(e) => Err(e),
        },
    }
}
