//! `.npy` activation shards: one C-order `[n, d]` array of f32, f16 or bf16,
//! memory-mapped and converted to f32 a batch at a time.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::npy::NpyHeader;

use super::mapped_rows::{MappedRows, RowsShard};

/// A memory-mapped `.npy` `[n, d]` shard.
pub struct NpyShard {
    data: MappedRows,
}

impl NpyShard {
    /// Maps the file and validates its header: a 2-D C-order float array whose data fits the file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_map(path, crate::io::mapped::map_file(path)?)
    }

    /// Validates an already-mapped file (`path` names it in errors).
    pub fn from_map(path: &Path, map: Arc<memmap2::Mmap>) -> Result<Self> {
        let h = NpyHeader::parse(path, &map[..])?;
        let dtype = h.dtype.float().ok_or_else(|| {
            Error::dtype(
                path,
                "activations",
                format!("{:?}", h.dtype),
                "f32, f16 or bf16",
            )
        })?;
        if h.shape.len() != 2 {
            return Err(Error::shape(
                path,
                "activations",
                &h.shape,
                "a 2-D array [n_tokens, d]",
            ));
        }
        if h.fortran_order {
            return Err(Error::format(
                path,
                "activations are stored in Fortran (column-major) order; expected C order \
                 (save with np.ascontiguousarray)",
            ));
        }
        let (rows, width) = (h.shape[0], h.shape[1]);
        let need = rows
            .checked_mul(width)
            .and_then(|n| n.checked_mul(dtype.size()))
            .and_then(|n| n.checked_add(h.data_offset))
            .ok_or_else(|| Error::format(path, "array size overflows"))?;
        if map.len() < need {
            return Err(Error::format(
                path,
                format!(
                    "truncated: the header promises [{rows}, {width}] {dtype} ({need} bytes with the \
                     header), the file has {} bytes",
                    map.len()
                ),
            ));
        }
        Ok(NpyShard {
            data: MappedRows::new(path, map, h.data_offset, rows, width, dtype),
        })
    }
}

/// Activations only: no side tensors, no metadata.
impl RowsShard for NpyShard {
    fn rows(&self) -> &MappedRows {
        &self.data
    }
}
