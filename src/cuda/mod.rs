//! The CUDA backend. PLACEHOLDER (issue 3).

pub mod device_ptr;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ops::{Engine, EngineOptions};
use crate::sae::Sae;

/// Builds a CUDA engine on `device`, or `Error::BackendUnavailable` when CUDA cannot run here.
pub fn engine(device: usize, sae: Arc<Sae>, opts: &EngineOptions) -> Result<Box<dyn Engine>> {
    let _ = (device, sae, opts);
    Err(Error::BackendUnavailable(
        "the CUDA backend is not built yet".into(),
    ))
}
