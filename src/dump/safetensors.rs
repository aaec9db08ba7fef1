//! `.safetensors` activation shards. PLACEHOLDER (issue 2, item 3).
use std::path::{Path, PathBuf};

use crate::dtype::DType;
use crate::error::{Error, Result};

/// A memory-mapped safetensors shard with `activations` [n, d].
pub struct SafetensorsShard {
    path: PathBuf,
}

impl SafetensorsShard {
    /// Opens and validates the header.
    pub fn open(path: &Path) -> Result<Self> {
        let _ = PathBuf::from(path);
        Err(Error::format(
            path,
            "safetensors shards not implemented yet",
        ))
    }
}

impl super::Shard for SafetensorsShard {
    fn path(&self) -> &Path {
        &self.path
    }
    fn n_rows(&self) -> usize {
        0
    }
    fn width(&self) -> usize {
        0
    }
    fn dtype(&self) -> DType {
        DType::F32
    }
    fn read_rows(&self, _start: usize, _count: usize, _out: &mut [f32]) -> Result<()> {
        Err(Error::format(&self.path, "not implemented"))
    }
    fn token_ids(&self, _: usize, _: usize) -> Result<Option<Vec<i64>>> {
        Ok(None)
    }
    fn doc_ids(&self, _: usize, _: usize) -> Result<Option<Vec<i64>>> {
        Ok(None)
    }
    fn mask(&self, _: usize, _: usize) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}
