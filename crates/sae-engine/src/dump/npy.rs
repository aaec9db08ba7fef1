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
        let shape_2d = |s: &[usize]| (s.len() == 2).then(|| (s[0], s[1]));
        Ok(NpyShard {
            data: rows_of_map(path, map, "a 2-D array [n_tokens, d]", shape_2d)?,
        })
    }
}

/// Maps a C-order float `.npy` as rows: `rows_width` turns its shape into `(rows, width)`
/// (None: the shape is refused, `expected` says what was wanted); the data must fit the file.
pub(super) fn map_rows(
    path: &Path,
    expected: &str,
    rows_width: impl Fn(&[usize]) -> Option<(usize, usize)>,
) -> Result<MappedRows> {
    rows_of_map(
        path,
        crate::io::mapped::map_file(path)?,
        expected,
        rows_width,
    )
}

/// [`map_rows`] over an already-mapped file.
fn rows_of_map(
    path: &Path,
    map: Arc<memmap2::Mmap>,
    expected: &str,
    rows_width: impl Fn(&[usize]) -> Option<(usize, usize)>,
) -> Result<MappedRows> {
    let h = NpyHeader::parse(path, &map[..])?;
    let dtype = h.dtype.float().ok_or_else(|| {
        Error::dtype(
            path,
            "activations",
            format!("{:?}", h.dtype),
            "f32, f16 or bf16",
        )
    })?;
    let (rows, width) = rows_width(&h.shape)
        .ok_or_else(|| Error::shape(path, "activations", &h.shape, expected))?;
    if h.fortran_order {
        return Err(Error::format(
            path,
            "activations are stored in Fortran (column-major) order; expected C order \
             (save with np.ascontiguousarray)",
        ));
    }
    let need = rows
        .checked_mul(width)
        .and_then(|n| n.checked_mul(dtype.size()))
        .and_then(|n| n.checked_add(h.data_offset))
        .ok_or_else(|| Error::format(path, "array size overflows"))?;
    if map.len() < need {
        return Err(Error::format(
            path,
            format!(
                "truncated: the header promises {:?} {dtype} ({need} bytes with the header), \
                 the file has {} bytes",
                h.shape,
                map.len()
            ),
        ));
    }
    Ok(MappedRows::new(
        path,
        map,
        h.data_offset,
        rows,
        width,
        dtype,
    ))
}

/// Activations only: no side tensors, no metadata.
impl RowsShard for NpyShard {
    fn rows(&self) -> &MappedRows {
        &self.data
    }
}
