//! Row-major `[n, d]` float arrays lying contiguously in a read-only file mapping: the
//! activation layout shared by `.npy`, `.safetensors` and crosscoder `.memmap` shards.
//! Rows are converted to f32 on read, and pages already read can be dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dtype::{convert_to_f32, DType};
use crate::error::{Error, Result};

use super::Shard;

/// A `[rows, width]` array of `dtype` starting at byte `offset` of `map`.
pub(super) struct MappedRows {
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
    offset: usize,
    rows: usize,
    width: usize,
    dtype: DType,
}

impl MappedRows {
    /// Wraps an array the caller has already checked fits in the mapping.
    pub(super) fn new(
        path: &Path,
        map: Arc<memmap2::Mmap>,
        offset: usize,
        rows: usize,
        width: usize,
        dtype: DType,
    ) -> Self {
        // Dumps are read front to back once: ask for aggressive read-ahead.
        let _ = map.advise(memmap2::Advice::Sequential);
        MappedRows {
            path: path.to_path_buf(),
            map,
            offset,
            rows,
            width,
            dtype,
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
    pub(super) fn map(&self) -> &memmap2::Mmap {
        &self.map
    }
    pub(super) fn rows(&self) -> usize {
        self.rows
    }
    pub(super) fn width(&self) -> usize {
        self.width
    }
    pub(super) fn dtype(&self) -> DType {
        self.dtype
    }

    fn row_bytes(&self) -> usize {
        self.width * self.dtype.size()
    }

    /// Rows `start..start + count` as f32 into `out` (`count * width` values).
    pub(super) fn read(&self, start: usize, count: usize, out: &mut [f32]) -> Result<()> {
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
        let a = self.offset + start * rb;
        convert_to_f32(self.dtype, &self.map[a..a + count * rb], out);
        Ok(())
    }

    /// Drops the pages of rows before `end`.
    pub(super) fn release(&self, end: usize) {
        let end = end.min(self.rows);
        release_range(&self.map, self.offset, self.offset + end * self.row_bytes());
    }
}

/// A shard whose activations are a [`MappedRows`]: it states only what differs from
/// the shared delegation (side tensors, metadata, extra pages to release); the blanket
/// [`Shard`] impl below forwards the rest.
pub(super) trait RowsShard: Send + Sync {
    /// The activation rows.
    fn rows(&self) -> &MappedRows;
    /// Token ids of rows `start..start + count`; none by default.
    fn token_ids(&self, _start: usize, _count: usize) -> Result<Option<Vec<i64>>> {
        Ok(None)
    }
    /// Document ids of rows `start..start + count`; none by default.
    fn doc_ids(&self, _start: usize, _count: usize) -> Result<Option<Vec<i64>>> {
        Ok(None)
    }
    /// Mask of rows `start..start + count`; none by default.
    fn mask(&self, _start: usize, _count: usize) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    /// The file's string metadata; none by default.
    fn metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
        None
    }
    /// Drops the pages of rows before `end`: the activations' by default (dropping pages
    /// already read keeps resident memory bounded on huge dumps).
    fn release(&self, end: usize) {
        self.rows().release(end)
    }
}

impl<T: RowsShard> Shard for T {
    fn path(&self) -> &Path {
        self.rows().path()
    }
    fn n_rows(&self) -> usize {
        self.rows().rows()
    }
    fn width(&self) -> usize {
        self.rows().width()
    }
    fn dtype(&self) -> DType {
        self.rows().dtype()
    }
    fn read_rows(&self, start: usize, count: usize, out: &mut [f32]) -> Result<()> {
        self.rows().read(start, count, out)
    }
    fn token_ids(&self, start: usize, count: usize) -> Result<Option<Vec<i64>>> {
        RowsShard::token_ids(self, start, count)
    }
    fn doc_ids(&self, start: usize, count: usize) -> Result<Option<Vec<i64>>> {
        RowsShard::doc_ids(self, start, count)
    }
    fn mask(&self, start: usize, count: usize) -> Result<Option<Vec<u8>>> {
        RowsShard::mask(self, start, count)
    }
    fn release(&self, end: usize) {
        RowsShard::release(self, end)
    }
    fn metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
        RowsShard::metadata(self)
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
