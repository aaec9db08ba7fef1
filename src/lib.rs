//! sae-engine: sparse autoencoders at audit scale.
//!
//! - [`formats`]: load the public SAE formats into one canonical [`sae::Sae`]; write SAELens.
//! - [`hub`]: SAEs by Hugging Face or SAELens name, from the local Hub cache or downloaded.
//! - [`dump`]: stream activation dumps (npy / safetensors shards) with bounded memory.
//! - [`ops`]: the backend-agnostic engine (encode, decode, statistics) over [`cpu`] and [`cuda`].
//! - [`stats`]: per-latent statistics that merge exactly across shards.
//! - [`scaleout`]: per-shard statistics fanned out over several devices, resumable.
//! - [`io`]: codes and statistics files.
//! - [`pipeline`]: streaming loops over whole dumps (encode to a codes file, statistics, decode).
//! - [`provenance`]: what produced an output (inputs, options, version), recorded in each.
//! - [`workflow`]: the audit workflow: diff, steer, detect, monitor, top examples, demo.

pub mod codes;
pub mod convert;
pub mod cpu;
pub mod cuda;
pub mod deterministic;
pub mod dtype;
pub mod dump;
pub mod error;
pub mod formats;
pub mod hub;
pub mod io;
pub mod matrix;
pub mod ops;
pub mod pipeline;
pub mod plural;
pub mod provenance;
pub mod sae;
pub mod scaleout;
pub mod stats;
pub mod workflow;

pub use codes::{Codes, Denorm, Encoded};
pub use dtype::DType;
pub use dump::Dump;
pub use error::{Error, Result};
pub use ops::{engine, BackendKind, Engine, EngineOptions};
pub use sae::{Activation, Format, Normalization, Sae};
pub use stats::LatentStats;
