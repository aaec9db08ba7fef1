//! A read-only weight matrix that lives in a memory-mapped file (or an owned
//! buffer), in its stored dtype and layout. The engine never makes a second
//! resident copy of a multi-GB matrix: consumers convert tiles of rows to f32
//! as they need them (CPU) or upload the raw bytes once (CUDA).

use std::ops::Range;
use std::sync::Arc;

use crate::dtype::{convert_from_f32, convert_to_f32, DType};
use crate::error::{Error, Result};

/// Where the bytes of a tensor live.
#[derive(Clone)]
pub enum Bytes {
    /// A byte range of a memory-mapped file.
    Mapped {
        /// The mapping.
        map: Arc<memmap2::Mmap>,
        /// Start of the range in the mapping.
        offset: usize,
        /// Length of the range in bytes.
        len: usize,
    },
    /// Bytes owned in memory (decompressed archives, tests, converted tensors).
    Owned(Arc<Vec<u8>>),
}

impl Bytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, offset, len } => &map[*offset..*offset + *len],
            Bytes::Owned(v) => v.as_slice(),
        }
    }

    /// Whether the bytes come from a mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Bytes::Mapped { .. })
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bytes::Mapped { offset, len, .. } => write!(f, "Mapped({offset}..+{len})"),
            Bytes::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
        }
    }
}

/// How a logical `[rows, cols]` matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Stored row-major as `[rows, cols]`.
    RowMajor,
    /// Stored row-major as `[cols, rows]` (the transpose), e.g. SAELens `W_enc` [d, L].
    Transposed,
}

/// A logical `[rows, cols]` matrix of `dtype` elements over `Bytes`.
/// In an SAE both `w_enc` and `w_dec` are logical `[n_latents, d_in]`.
#[derive(Clone, Debug)]
pub struct Matrix {
    bytes: Bytes,
    dtype: DType,
    rows: usize,
    cols: usize,
    layout: Layout,
}

impl Matrix {
    /// Wraps stored bytes; checks that the byte length fits the shape.
    pub fn new(
        bytes: Bytes,
        dtype: DType,
        rows: usize,
        cols: usize,
        layout: Layout,
    ) -> Result<Self> {
        let need = rows
            .checked_mul(cols)
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| Error::invalid(format!("matrix {rows}x{cols} overflows")))?;
        let have = bytes.as_slice().len();
        if have != need {
            return Err(Error::invalid(format!(
                "matrix {rows}x{cols} {dtype} needs {need} bytes, got {have}"
            )));
        }
        Ok(Matrix {
            bytes,
            dtype,
            rows,
            cols,
            layout,
        })
    }

    /// A row-major matrix from f32 values stored as `dtype` (tests, small tensors, converters).
    pub fn from_f32(values: &[f32], rows: usize, cols: usize, dtype: DType) -> Result<Self> {
        if values.len() != rows * cols {
            return Err(Error::invalid(format!(
                "matrix {rows}x{cols} needs {} values, got {}",
                rows * cols,
                values.len()
            )));
        }
        Matrix::new(
            Bytes::Owned(Arc::new(convert_from_f32(dtype, values))),
            dtype,
            rows,
            cols,
            Layout::RowMajor,
        )
    }

    /// Logical rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Logical columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Stored element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Stored layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// The stored bytes (in `layout`, little-endian `dtype`).
    pub fn raw(&self) -> &[u8] {
        self.bytes.as_slice()
    }
    /// The underlying storage.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
    /// Size in bytes.
    pub fn size_bytes(&self) -> usize {
        self.rows * self.cols * self.dtype.size()
    }

    /// Element (r, c) as f32.
    pub fn get(&self, r: usize, c: usize) -> f32 {
        let e = match self.layout {
            Layout::RowMajor => r * self.cols + c,
            Layout::Transposed => c * self.rows + r,
        };
        let s = self.dtype.size();
        let mut out = [0f32];
        convert_to_f32(self.dtype, &self.raw()[e * s..(e + 1) * s], &mut out);
        out[0]
    }

    /// Logical rows `range` as row-major f32 `[range.len(), cols]` into `out`.
    pub fn rows_f32(&self, range: Range<usize>, out: &mut [f32]) {
        assert!(range.end <= self.rows && out.len() == range.len() * self.cols);
        let s = self.dtype.size();
        match self.layout {
            Layout::RowMajor => {
                let bytes = &self.raw()[range.start * self.cols * s..range.end * self.cols * s];
                convert_to_f32(self.dtype, bytes, out);
            }
            Layout::Transposed => {
                // Stored [cols, rows]: read a contiguous run of each stored row, scatter as a column.
                let t = range.len();
                let mut run = vec![0f32; t];
                for c in 0..self.cols {
                    let start = (c * self.rows + range.start) * s;
                    convert_to_f32(self.dtype, &self.raw()[start..start + t * s], &mut run);
                    for (i, v) in run.iter().enumerate() {
                        out[i * self.cols + c] = *v;
                    }
                }
            }
        }
    }

    /// Logical rows `range` as a matrix of their own, in the stored dtype and layout (a
    /// latent shard of an SAE). Row-major rows of a mapped file are a view of the same
    /// bytes; an owned buffer's rows are copied; a transposed matrix's rows are strided in
    /// storage, so they are gathered into an owned `[cols, range.len()]` buffer (one host
    /// copy of the rows, kept transposed so consumers read them exactly as before).
    pub fn row_range(&self, range: Range<usize>) -> Result<Matrix> {
        if range.start >= range.end || range.end > self.rows {
            return Err(Error::invalid(format!(
                "rows {}..{} of a matrix with {} rows",
                range.start, range.end, self.rows
            )));
        }
        if range == (0..self.rows) {
            return Ok(self.clone());
        }
        let s = self.dtype.size();
        let t = range.len();
        let bytes = match (self.layout, &self.bytes) {
            (Layout::RowMajor, Bytes::Mapped { map, offset, .. }) => Bytes::Mapped {
                map: map.clone(),
                offset: offset + range.start * self.cols * s,
                len: t * self.cols * s,
            },
            (Layout::RowMajor, Bytes::Owned(_)) => {
                let run = range.start * self.cols * s..range.end * self.cols * s;
                Bytes::Owned(Arc::new(self.raw()[run].to_vec()))
            }
            (Layout::Transposed, _) => {
                let mut out = Vec::with_capacity(t * self.cols * s);
                for c in 0..self.cols {
                    let start = (c * self.rows + range.start) * s;
                    out.extend_from_slice(&self.raw()[start..start + t * s]);
                }
                Bytes::Owned(Arc::new(out))
            }
        };
        Matrix::new(bytes, self.dtype, t, self.cols, self.layout)
    }

    /// One logical row as f32.
    pub fn row_f32(&self, r: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.cols];
        self.rows_f32(r..r + 1, &mut out);
        out
    }

    /// The whole matrix as row-major f32 (small matrices and tests only).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.rows_f32(0..self.rows, &mut out);
        out
    }

    /// Euclidean norm of every logical row, computed in f64 and tiled so memory stays bounded.
    pub fn row_norms(&self) -> Vec<f32> {
        const TILE: usize = 1024;
        let mut norms = Vec::with_capacity(self.rows);
        let mut buf = vec![0f32; TILE.min(self.rows.max(1)) * self.cols];
        let mut r = 0;
        while r < self.rows {
            let t = TILE.min(self.rows - r);
            let tile = &mut buf[..t * self.cols];
            self.rows_f32(r..r + t, tile);
            for row in tile.chunks_exact(self.cols.max(1)).take(t) {
                let ss: f64 = row.iter().map(|v| (*v as f64) * (*v as f64)).sum();
                norms.push(ss.sqrt() as f32);
            }
            r += t;
        }
        norms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_reads_match_row_major() {
        let vals: Vec<f32> = (0..12).map(|v| v as f32).collect();
        // logical 3x4 stored transposed as 4x3
        let mut t = vec![0f32; 12];
        for r in 0..3 {
            for c in 0..4 {
                t[c * 3 + r] = vals[r * 4 + c];
            }
        }
        let m = Matrix::new(
            Bytes::Owned(Arc::new(convert_from_f32(DType::F32, &t))),
            DType::F32,
            3,
            4,
            Layout::Transposed,
        )
        .unwrap();
        assert_eq!(m.to_f32_vec(), vals);
        assert_eq!(m.get(2, 1), 9.0);
        let mut two = vec![0f32; 8];
        m.rows_f32(1..3, &mut two);
        assert_eq!(two, vals[4..].to_vec());
        let n = m.row_norms();
        assert!((n[0] - (0f32 + 1.0 + 4.0 + 9.0).sqrt()).abs() < 1e-6);
    }

    #[test]
    fn row_ranges_read_like_the_rows_they_cut() {
        let (rows, cols) = (5, 3);
        let vals: Vec<f32> = (0..15).map(|v| v as f32 * 0.5 - 2.0).collect();
        let mut t = vec![0f32; 15];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = vals[r * cols + c];
            }
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), convert_from_f32(DType::BF16, &vals)).unwrap();
        // SAFETY: the temporary file is not modified while mapped.
        let map = Arc::new(unsafe { memmap2::Mmap::map(file.as_file()) }.unwrap());
        let mapped = Bytes::Mapped {
            len: map.len(),
            map,
            offset: 0,
        };
        let matrices = [
            Matrix::from_f32(&vals, rows, cols, DType::F32).unwrap(),
            Matrix::new(mapped, DType::BF16, rows, cols, Layout::RowMajor).unwrap(),
            Matrix::new(
                Bytes::Owned(Arc::new(convert_from_f32(DType::F32, &t))),
                DType::F32,
                rows,
                cols,
                Layout::Transposed,
            )
            .unwrap(),
        ];
        for m in &matrices {
            let all = m.to_f32_vec();
            for range in [0..5, 1..4, 4..5, 0..1] {
                let part = m.row_range(range.clone()).unwrap();
                assert_eq!(part.layout(), m.layout());
                assert_eq!((part.rows(), part.cols()), (range.len(), cols));
                assert_eq!(
                    part.to_f32_vec(),
                    all[range.start * cols..range.end * cols].to_vec(),
                    "{:?} rows {range:?}",
                    m.bytes()
                );
            }
            assert!(m.row_range(2..2).is_err());
            assert!(m.row_range(3..6).is_err());
        }
        // A mapped row-major range is a view of the same file, not a copy.
        let part = matrices[1].row_range(2..4).unwrap();
        assert!(part.bytes().is_mapped());
    }

    #[test]
    fn wrong_length_is_an_error() {
        let b = Bytes::Owned(Arc::new(vec![0u8; 10]));
        assert!(Matrix::new(b, DType::F32, 2, 2, Layout::RowMajor).is_err());
    }
}
