//! SAE loaders, one module per source format, plus the SAELens writer.
//! PLACEHOLDER: implemented by the formats work (issue 2, item 2).

use std::path::Path;

use crate::error::{Error, Result};
use crate::sae::{Format, Sae};

/// Detects the format of an SAE directory or file.
pub fn detect(path: &Path) -> Result<Format> {
    Err(Error::format(path, "format detection not implemented yet"))
}

/// Loads an SAE, auto-detecting its format unless `format` forces one.
pub fn load(path: impl AsRef<Path>, format: Option<Format>) -> Result<Sae> {
    let path = path.as_ref();
    let _ = format;
    Err(Error::format(path, "SAE loading not implemented yet"))
}

/// Writes `sae` in the SAELens v6 layout (cfg.json + sae_weights.safetensors) into `dir`.
pub fn write_saelens(sae: &Sae, dir: &Path) -> Result<()> {
    let _ = sae;
    Err(Error::format(dir, "SAELens writer not implemented yet"))
}

pub mod dictionary_learning;
pub mod openai;
pub mod pickle;
