//! `.npy` activation shards: one C-order `[n, d]` array of f32, f16 or bf16,
//! memory-mapped and converted to f32 a batch at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dtype::{convert_to_f32, DType};
use crate::error::{Error, Result};
use crate::io::npy::NpyHeader;

/// A memory-mapped `.npy` `[n, d]` shard.
pub struct NpyShard {
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
    data_offset: usize,
    rows: usize,
    width: usize,
    dtype: DType,
}

impl NpyShard {
    /// Maps the file and validates its header: a 2-D C-order float array whose data fits the file.
    pub fn open(path: &Path) -> Result<Self> {
        let map = crate::io::mapped::map_file(path)?;
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
        // Dumps are read front to back once: ask for aggressive read-ahead.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(NpyShard {
            path: path.to_path_buf(),
            map,
            data_offset: h.data_offset,
            rows,
            width,
            dtype,
        })
    }

    fn row_bytes(&self) -> usize {
        self.width * self.dtype.size()
    }
}

/// Checks that rows `start..start + count` exist in a shard of `n` rows.
pub(super) fn check_range(path: &Path, n: usize, start: usize, count: usize) -> Result<()> {
    if start.checked_add(count).is_none_or(|end| end > n) {
        return Err(Error::invalid(format!(
            "{}: rows {start}..{} requested from a shard of {n} rows",
            path.display(),
            start.saturating_add(count)
        )));
    }
    Ok(())
}

/// Drops the pages of `map` that lie entirely inside the byte range `start..end`, so
/// rows already copied out stop counting as resident memory. The mapping is read-only
/// and file-backed: a later access simply faults the page in again from the file.
pub(super) fn release_range(map: &memmap2::Mmap, start: usize, end: usize) {
    let page = page_size();
    let end = end.min(map.len());
    let a = start.div_ceil(page) * page;
    let b = end / page * page;
    if b > a {
        // SAFETY: the range is inside the mapping; the mapping is read-only and shared,
        // so MADV_DONTNEED discards no data (pages are re-read from the file on access),
        // and no slice into the range is alive across this call.
        #[cfg(unix)]
        unsafe {
            let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a);
        }
    }
}

fn page_size() -> usize {
    // The mapping base is page-aligned; 4 KiB divides every page size Linux and macOS
    // use, and aligning inward to 64 KiB stays valid (and harmless) on 16/64 KiB pages.
    if cfg!(any(target_arch = "aarch64", target_arch = "powerpc64")) {
        65536
    } else {
        4096
    }
}

impl super::Shard for NpyShard {
    fn path(&self) -> &Path {
        &self.path
    }
    fn n_rows(&self) -> usize {
        self.rows
    }
    fn width(&self) -> usize {
        self.width
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn read_rows(&self, start: usize, count: usize, out: &mut [f32]) -> Result<()> {
        check_range(&self.path, self.rows, start, count)?;
        if out.len() != count * self.width {
            return Err(Error::invalid(format!(
                "{}: output buffer holds {} values, {count} rows need {}",
                self.path.display(),
                out.len(),
                count * self.width
            )));
        }
        let rb = self.row_bytes();
        let a = self.data_offset + start * rb;
        convert_to_f32(self.dtype, &self.map[a..a + count * rb], out);
        Ok(())
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
    fn release(&self, end: usize) {
        let end = end.min(self.rows);
        release_range(
            &self.map,
            self.data_offset,
            self.data_offset + end * self.row_bytes(),
        );
    }
}
