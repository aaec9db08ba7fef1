//! The `.npy` format (NumPy's array file): header parsing for memory-mapped reads,
//! and a writer. Used by npy dumps, Gemma Scope `params.npz` members and `sae decode`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::atomic::AtomicFile;

/// Element types we read from npy files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    /// `<f4`.
    F32,
    /// `<f2`.
    F16,
    /// numpy has no bfloat16; ml_dtypes arrays are saved with descr `<V2`.
    BF16,
    /// `<f8`.
    F64,
    /// `<i8`.
    I64,
    /// `<i4`.
    I32,
    /// `|u1`.
    U8,
    /// `|b1`.
    Bool,
}

impl NpyDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            NpyDtype::F64 | NpyDtype::I64 => 8,
            NpyDtype::F32 | NpyDtype::I32 => 4,
            NpyDtype::F16 | NpyDtype::BF16 => 2,
            NpyDtype::U8 | NpyDtype::Bool => 1,
        }
    }

    /// The float dtype the engine computes from, if this is one.
    pub fn float(self) -> Option<crate::dtype::DType> {
        match self {
            NpyDtype::F32 => Some(crate::dtype::DType::F32),
            NpyDtype::F16 => Some(crate::dtype::DType::F16),
            NpyDtype::BF16 => Some(crate::dtype::DType::BF16),
            _ => None,
        }
    }

    fn descr(self) -> &'static str {
        match self {
            NpyDtype::F32 => "<f4",
            NpyDtype::F16 => "<f2",
            NpyDtype::BF16 => "<V2",
            NpyDtype::F64 => "<f8",
            NpyDtype::I64 => "<i8",
            NpyDtype::I32 => "<i4",
            NpyDtype::U8 => "|u1",
            NpyDtype::Bool => "|b1",
        }
    }
}

/// A parsed npy header.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    /// Element type (`descr`).
    pub dtype: NpyDtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Data stored column-major.
    pub fortran_order: bool,
    /// Byte offset of the data from the start of the file.
    pub data_offset: usize,
}

impl NpyHeader {
    /// Elements in the array (saturating: a shape from a hostile file cannot wrap it;
    /// [`NpyHeader::data_len`] is the checked size to validate a file against).
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, s| a.saturating_mul(*s))
    }

    /// Bytes of array data the shape and dtype promise; `None` when that overflows `usize`.
    pub fn data_len(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |a, s| a.checked_mul(*s))?
            .checked_mul(self.dtype.size())
    }

    /// Parses the header at the start of `bytes` (the whole file or at least its header);
    /// errors name `path`. The dictionary itself is parsed by the `npyz` crate; we keep
    /// only what a memory-mapped read needs (dtype, shape, order, data offset).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<NpyHeader> {
        precheck(path, bytes)?;
        let mut rest: &[u8] = bytes;
        let h = npyz::NpyHeader::from_reader(&mut rest)
            .map_err(|e| Error::format(path, format!("not a valid .npy file: {e}")))?;
        let data_offset = bytes.len() - rest.len();
        let descr = match h.dtype() {
            npyz::DType::Plain(t) => t,
            other => {
                return Err(Error::format(
                    path,
                    format!(
                        "unsupported .npy dtype '{}' (structured arrays are not activations)",
                        other.descr()
                    ),
                ))
            }
        };
        use npyz::{Endianness as E, TypeChar as T};
        let little = matches!(descr.endianness(), E::Little | E::Irrelevant);
        let dtype = match (descr.type_char(), descr.size_field(), little) {
            (T::Float, 4, true) => NpyDtype::F32,
            (T::Float, 2, true) => NpyDtype::F16,
            // numpy has no bfloat16: ml_dtypes arrays are saved as 2-byte void.
            (T::RawData, 2, _) => NpyDtype::BF16,
            (T::Float, 8, true) => NpyDtype::F64,
            (T::Int, 8, true) => NpyDtype::I64,
            (T::Int, 4, true) => NpyDtype::I32,
            (T::Uint, 1, _) => NpyDtype::U8,
            (T::Bool, 1, _) => NpyDtype::Bool,
            _ => {
                return Err(Error::format(
                    path,
                    format!("unsupported .npy dtype '{descr}' (expected little-endian f4, f2, bf16 (V2), f8, i8, i4, u1 or b1)"),
                ))
            }
        };
        let shape = h
            .shape()
            .iter()
            .map(|v| usize::try_from(*v))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| {
                Error::format(path, "not a valid .npy file: shape does not fit in memory")
            })?;
        Ok(NpyHeader {
            dtype,
            shape,
            fortran_order: h.order() == npyz::Order::Fortran,
            data_offset,
        })
    }
}

/// The deepest bracket nesting a header may have: a plain array's header nests two
/// (the dictionary and its shape tuple), a structured one a few more.
const MAX_NESTING: usize = 8;

/// Checks what the `npyz` crate trusts: the declared dictionary length must lie within
/// `bytes` (npyz allocates that length before reading, so a 16-byte file declaring a
/// 4 GB header would allocate 4 GB), and the shape (or any bracketed group of integers
/// in the dictionary) must not multiply past `u64` (npyz multiplies the dimensions
/// unchecked for the element count and the strides: a panic in a debug build, a wrap
/// in release). Zero dimensions are skipped, as the strides of `(0, n, m)` still
/// multiply `n * m`. Brackets may nest at most [`MAX_NESTING`] deep: npyz's Python
/// literal parser backtracks exponentially in the depth (fifty `{` took over ten
/// seconds). Bytes too short to hold the length are left to npyz to report.
fn precheck(path: &Path, bytes: &[u8]) -> Result<()> {
    // Magic (6), version (2), then a u16 (version 1) or u32 (2, 3) dictionary length.
    if !bytes.starts_with(b"\x93NUMPY") {
        return Ok(()); // npyz names the bad magic
    }
    let (len, start) = match bytes.get(6) {
        Some(1) if bytes.len() >= 10 => {
            (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize)
        }
        Some(2 | 3) if bytes.len() >= 12 => {
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (usize::try_from(n).unwrap_or(usize::MAX), 12)
        }
        _ => return Ok(()),
    };
    let dict = start
        .checked_add(len)
        .and_then(|end| bytes.get(start..end))
        .ok_or_else(|| {
            Error::format(
                path,
                format!(
                    "not a valid .npy file: the header declares {len} bytes, the file has {} after it (truncated?)",
                    bytes.len() - start
                ),
            )
        })?;
    let overflow = || Error::format(path, "not a valid .npy file: the shape's size overflows");
    // One running product per open bracket; integers outside brackets are not dimensions.
    let mut products: Vec<u64> = Vec::new();
    let mut digits = dict.iter().enumerate().peekable();
    while let Some((i, c)) = digits.next() {
        match c {
            b'(' | b'[' | b'{' => {
                products.push(1);
                if products.len() > MAX_NESTING {
                    return Err(Error::format(
                        path,
                        format!("not a valid .npy file: the header nests brackets deeper than {MAX_NESTING} levels"),
                    ));
                }
            }
            b')' | b']' | b'}' => {
                products.pop();
            }
            b'0'..=b'9' => {
                let mut end = i + 1;
                while digits.next_if(|(_, c)| c.is_ascii_digit()).is_some() {
                    end += 1;
                }
                let Some(p) = products.last_mut() else {
                    continue;
                };
                let text = std::str::from_utf8(&dict[i..end]).unwrap_or("0");
                let v: u64 = text.parse().map_err(|_| overflow())?;
                if v != 0 {
                    *p = p.checked_mul(v).ok_or_else(overflow)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Serializes an npy header for a C-order array of `shape` (version 1.0, 64-byte aligned).
pub fn header_bytes(dtype: NpyDtype, shape: &[usize]) -> Vec<u8> {
    let shape_txt = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        dtype.descr(),
        shape_txt
    );
    let total = 10 + dict.len() + 1;
    let pad = (64 - total % 64) % 64;
    dict.push_str(&" ".repeat(pad));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict.as_bytes());
    out
}

/// Writes an npy file atomically from raw little-endian element bytes.
pub fn write(path: &Path, dtype: NpyDtype, shape: &[usize], data: &[u8]) -> Result<()> {
    let numel: usize = shape.iter().product();
    if numel * dtype.size() != data.len() {
        return Err(Error::invalid(format!(
            "{}: {numel} elements of {} bytes need {} bytes, got {}",
            path.display(),
            dtype.size(),
            numel * dtype.size(),
            data.len()
        )));
    }
    let mut bytes = header_bytes(dtype, shape);
    bytes.extend_from_slice(data);
    crate::io::atomic::write_bytes(path, &bytes)
}

/// Writes an f32 array.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write(path, NpyDtype::F32, shape, bytemuck::cast_slice(data))
}

/// Writes a C-order f32 `.npy` `[rows, cols]` a batch at a time to a temporary name
/// beside the target; `finish` checks the row count and renames. Dropping it unfinished
/// removes the temporary file.
pub struct NpyF32Writer {
    file: AtomicFile,
    rows: usize,
    cols: usize,
    written: usize,
}

impl NpyF32Writer {
    /// Starts `path` for `rows x cols` values.
    pub fn create(path: &Path, rows: usize, cols: usize) -> Result<NpyF32Writer> {
        let mut file = AtomicFile::create(path)?;
        file.write_all(&header_bytes(NpyDtype::F32, &[rows, cols]))?;
        Ok(NpyF32Writer {
            file,
            rows,
            cols,
            written: 0,
        })
    }

    /// Appends whole rows (`values.len()` a multiple of `cols`).
    pub fn push(&mut self, values: &[f32]) -> Result<()> {
        let cols = self.cols.max(1);
        if values.len() % cols != 0 || self.written + values.len() / cols > self.rows {
            return Err(Error::invalid(format!(
                "{}: {} values do not fit the remaining {} rows of width {}",
                self.file.path().display(),
                values.len(),
                self.rows - self.written,
                self.cols
            )));
        }
        self.file.write_all(bytemuck::cast_slice(values))?;
        self.written += values.len() / cols;
        Ok(())
    }

    /// Checks that every row was written, flushes and renames into place.
    pub fn finish(self) -> Result<()> {
        if self.written != self.rows && self.cols > 0 {
            return Err(Error::invalid(format!(
                "{}: wrote {} of {} rows",
                self.file.path().display(),
                self.written,
                self.rows
            )));
        }
        self.file.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_and_alignment() {
        for shape in [vec![3usize, 4], vec![7], vec![0, 5]] {
            let h = header_bytes(NpyDtype::F16, &shape);
            assert_eq!(h.len() % 64, 0);
            let p = NpyHeader::parse(Path::new("x.npy"), &h).unwrap();
            assert_eq!(p.shape, shape);
            assert_eq!(p.dtype, NpyDtype::F16);
            assert_eq!(p.data_offset, h.len());
        }
    }

    #[test]
    fn parses_numpy_written_header() {
        let text = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((text.len() as u16).to_le_bytes());
        b.extend(text.as_bytes());
        let h = NpyHeader::parse(Path::new("a.npy"), &b).unwrap();
        assert_eq!(h.shape, vec![2, 3]);
        assert!(!h.fortran_order);
    }

    #[test]
    fn rejects_big_endian_and_truncation() {
        let text = "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((text.len() as u16).to_le_bytes());
        b.extend(text.as_bytes());
        let e = NpyHeader::parse(Path::new("be.npy"), &b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("be.npy") && e.contains(">f4"), "{e}");
        assert!(NpyHeader::parse(Path::new("t.npy"), &b[..20]).is_err());
    }

    #[test]
    fn a_header_length_past_the_end_is_an_error_before_any_allocation() {
        // Found by the npy fuzz target: version 2, dictionary length 0x93000074 (2.4 GB)
        // in a 16-byte file.
        let b = [
            147, 78, 85, 77, 80, 89, 2, 0, 116, 0, 0, 147, 78, 85, 77, 80,
        ];
        let e = NpyHeader::parse(Path::new("short.npy"), &b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("short.npy") && e.contains("truncated"), "{e}");
        let v1 = header_bytes(NpyDtype::F32, &[2, 3]);
        let e = NpyHeader::parse(Path::new("v1.npy"), &v1[..v1.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("v1.npy"), "{e}");
    }

    #[test]
    fn deeply_nested_headers_are_refused_before_the_literal_parser() {
        // Found by the npy fuzz target: fifty nested `{` kept npyz's parser busy for
        // more than ten seconds.
        let text = format!(
            "{{'descr': '<f4', 'fortran_order': False, {}'shape': (0,), }}",
            "{".repeat(50)
        );
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((text.len() as u16).to_le_bytes());
        b.extend(text.as_bytes());
        let t = std::time::Instant::now();
        let e = NpyHeader::parse(Path::new("deep.npy"), &b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("deep.npy") && e.contains("nests"), "{e}");
        assert!(t.elapsed().as_secs() < 1);
        // The deepest header let through is parsed (and refused) quickly.
        let text = format!(
            "{{'descr': '<f4', 'fortran_order': False, {}'shape': (0,), }}",
            "{".repeat(MAX_NESTING - 2)
        );
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((text.len() as u16).to_le_bytes());
        b.extend(text.as_bytes());
        let t = std::time::Instant::now();
        assert!(NpyHeader::parse(Path::new("deep.npy"), &b).is_err());
        assert!(t.elapsed().as_millis() < 500, "{:?}", t.elapsed());
    }

    #[test]
    fn overflowing_shapes_are_errors_not_panics() {
        let header = |shape: &str| {
            let text = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend((text.len() as u16).to_le_bytes());
            b.extend(text.as_bytes());
            b
        };
        let big = u64::MAX / 2;
        for shape in [
            format!("({big}, 4)"),
            format!("(0, {big}, {big})"),
            format!("[{big}, 3]"),
            "(99999999999999999999999,)".to_string(),
        ] {
            let e = NpyHeader::parse(Path::new("big.npy"), &header(&shape))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("big.npy") && e.contains("overflow"),
                "{shape}: {e}"
            );
        }
        // The largest representable count still parses; its byte size is checked later.
        let h =
            NpyHeader::parse(Path::new("max.npy"), &header(&format!("({},)", u64::MAX))).unwrap();
        assert_eq!(h.data_len(), None);
        assert_eq!(h.numel(), usize::MAX);
    }

    #[test]
    fn streamed_f32_writer_checks_rows_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let mut w = NpyF32Writer::create(&p, 2, 3).unwrap();
        w.push(&[1.0, 2.0, 3.0]).unwrap();
        assert!(w.push(&[1.0, 2.0]).is_err());
        w.push(&[4.0, 5.0, 6.0]).unwrap();
        w.finish().unwrap();
        let b = std::fs::read(&p).unwrap();
        let h = NpyHeader::parse(&p, &b).unwrap();
        assert_eq!(h.shape, vec![2, 3]);
        let vals: Vec<f32> = b[h.data_offset..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(vals, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

        // Unfinished or short: no file under the target name and no temporary left.
        let q = dir.path().join("y.npy");
        let mut w = NpyF32Writer::create(&q, 2, 1).unwrap();
        w.push(&[1.0]).unwrap();
        assert!(w.finish().is_err());
        assert!(!q.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
