//! Statistics files. PLACEHOLDER (issue 2, item 6).
use std::path::Path;

use crate::error::{Error, Result};
use crate::stats::LatentStats;

/// Writes statistics to a safetensors file.
pub fn write(path: &Path, stats: &LatentStats) -> Result<()> {
    let _ = stats;
    Err(Error::format(path, "not implemented"))
}

/// Reads a statistics file.
pub fn read(path: &Path) -> Result<LatentStats> {
    Err(Error::format(path, "not implemented"))
}
