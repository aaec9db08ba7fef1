//! sae-engine: sparse autoencoders at audit scale.
//!
//! - [`formats`]: load the public SAE formats into one canonical [`sae::Sae`]; write SAELens.
//! - [`hub`]: SAEs by Hugging Face or SAELens name, from the local Hub cache or downloaded.
//! - [`dump`]: stream activation dumps (npy / safetensors shards) with bounded memory.
//! - [`backend`]: the backend contract ([`Engine`], [`EngineOptions`], [`BackendKind`]); a leaf.
//! - [`engine`]: the dispatcher, the one place that names the backends [`cpu`] and `cuda`.
//! - [`cpu`], `cuda`: the backends (`cuda` with the default-on `cuda` cargo feature).
//! - `verify`: CUDA against the CPU reference (`sae-bench verify`; `cuda` feature).
//! - [`stats`]: per-latent statistics that merge exactly across shards.
//! - [`latent_split`]: one SAE's latents split over several engines (GPUs), merged exactly.
//! - [`scaleout`]: per-shard statistics fanned out over several devices, resumable.
//! - [`io`]: codes and statistics files.
//! - [`pipeline`]: streaming loops over whole dumps (encode to a codes file, statistics, decode).
//! - [`env`]: the environment variables the library reads (locations only), one function each.
//! - [`provenance`]: what produced an output (inputs, options, version), recorded in each.
//! - [`workflow`]: the audit workflow: diff, steer, detect, monitor, top examples, demo.

pub mod backend;
pub mod codes;
pub mod convert;
pub mod cpu;
pub mod crosscoder;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod deterministic;
pub mod dtype;
pub mod dump;
pub mod engine;
pub mod env;
pub mod error;
pub mod formats;
pub mod hub;
pub mod io;
pub mod latent_split;
pub mod matrix;
pub mod pipeline;
pub mod plural;
pub mod provenance;
pub mod sae;
pub mod scaleout;
pub mod stats;
#[cfg(feature = "cuda")]
pub mod verify;
pub mod workflow;

pub use backend::{BackendKind, CpuGemm, Engine, EngineOptions, GemmMode, Precision, Workload};
pub use codes::{Codes, Denorm, Encoded};
pub use dtype::DType;
pub use dump::Dump;
pub use engine::engine;
pub use error::{Error, Result};
pub use sae::{Activation, Format, Normalization, Sae};
pub use stats::LatentStats;
