//! The CUDA backend: cuBLAS GEMM over latent tiles plus hand-written kernels
//! (kernels/*.cu) for the streaming top-k, threshold compaction, gather-sum decode,
//! batched statistics and steering.
//!
//! - [`loader`]: finds libcuda / libcublas / libnvrtc; absence is `Error::BackendUnavailable`.
//! - [`kernels`]: the embedded fatbins (or NVRTC-compiled sources) loaded once per device.
//! - [`device`]: context, stream, cuBLAS handle, raw device buffers.
//! - [`gemm`]: the encoder GEMM (cuBLAS, or a cuBLASLt algorithm chosen by timing).
//! - [`weights`]: an SAE on the device (raw weight bytes uploaded once, stored layout kept).
//! - [`plan`]: device-memory plans from free memory and a limit, before upload.
//! - [`encode`]: workspace planning, tiled GEMM, top-k and CSR encode.
//! - [`launch`]: kernel launches for decode, statistics and steering.
//! - [`engine`]: [`CudaEngine`], the `Engine` implementation.
//! - [`prefetch`]: streaming a dump with a reader thread one batch ahead of the engine.

pub mod device_ptr;

use std::sync::Arc;

use crate::backend::{Engine, EngineOptions};
use crate::error::Result;
use crate::sae::Sae;

pub mod device;
pub mod encode;
pub mod engine;
pub mod gemm;
pub mod kernels;
pub mod launch;
pub mod loader;
pub mod plan;
pub mod prefetch;
pub mod weights;

pub use device::{DeviceInfo, Gpu};
pub use encode::Precision;
pub use engine::{CudaEngine, CudaOptions, MemoryOptions};

/// Builds a CUDA engine on `device`, or `Error::BackendUnavailable` when CUDA cannot run here.
pub fn engine(device: usize, sae: Arc<Sae>, opts: &EngineOptions) -> Result<Box<dyn Engine>> {
    let copts = CudaOptions::from_engine(opts);
    let mem = MemoryOptions::from_engine(opts);
    Ok(Box::new(CudaEngine::with_memory(device, sae, copts, mem)?))
}

/// Whether a CUDA device can be used here; Err says why not (no driver, no device, no cuBLAS).
pub fn available(device: usize) -> Result<DeviceInfo> {
    Ok(Gpu::open(device)?.info)
}
