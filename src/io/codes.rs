//! Codes files. PLACEHOLDER (issue 2, item 6).
use std::path::Path;

use crate::codes::Encoded;
use crate::error::{Error, Result};

/// Writes codes (and normalization constants) to a safetensors file.
pub fn write(path: &Path, enc: &Encoded, fingerprint: &str) -> Result<()> {
    let _ = (enc, fingerprint);
    Err(Error::format(path, "not implemented"))
}

/// Reads a codes file: the codes and the SAE fingerprint it records.
pub fn read(path: &Path) -> Result<(Encoded, Option<String>)> {
    Err(Error::format(path, "not implemented"))
}
