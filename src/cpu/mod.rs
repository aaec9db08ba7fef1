//! The multithreaded CPU backend: the reference every GPU result is checked against.
//! PLACEHOLDER (issue 2, item 4).

use std::sync::Arc;

use crate::codes::{Codes, Denorm, Encoded};
use crate::error::{Error, Result};
use crate::ops::{Engine, EngineOptions};
use crate::sae::Sae;

/// CPU engine bound to one SAE.
pub struct CpuEngine {
    sae: Arc<Sae>,
}

impl CpuEngine {
    /// Prepares the engine (decoder norms for rescaled TopK, thread pool).
    pub fn new(sae: Arc<Sae>, _opts: &EngineOptions) -> Result<Self> {
        Ok(CpuEngine { sae })
    }
}

impl Engine for CpuEngine {
    fn name(&self) -> String {
        "cpu".into()
    }
    fn sae(&self) -> &Sae {
        &self.sae
    }
    fn encode(&self, _x: &[f32], _rows: usize, _row_offset: u64) -> Result<Encoded> {
        Err(Error::invalid("cpu encode not implemented yet"))
    }
    fn decode(&self, _codes: &Codes, _denorm: Option<&Denorm>) -> Result<Vec<f32>> {
        Err(Error::invalid("cpu decode not implemented yet"))
    }
}
