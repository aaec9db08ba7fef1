//! JSON side files of cache directories (`config.json`, `shard_I.meta`, `dataset_info.json`).

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Reads and parses a JSON file; errors name the file.
pub(super) fn read(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(path, &bytes)
}

/// Parses JSON bytes read from `path`.
pub(super) fn parse(path: &Path, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// `v[key]` as a list of sizes; entries that are not unsigned integers are skipped and a
/// missing key gives an empty list, so callers check the length they expect.
pub(super) fn shape(v: &Value, key: &str) -> Vec<usize> {
    v.get(key)
        .and_then(|s| s.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64().map(|x| x as usize))
                .collect()
        })
        .unwrap_or_default()
}
