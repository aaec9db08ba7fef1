//! The `.npy` format (NumPy's array file): header parsing for memory-mapped reads,
//! and a writer. Used by npy dumps, Gemma Scope `params.npz` members and `sae decode`.

use std::path::Path;

use crate::error::{Error, Result};

/// Element types we read from npy files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDtype {
    F32,
    F16,
    /// numpy has no bfloat16; ml_dtypes writes it as descr `<V2` or `bfloat16`.
    BF16,
    F64,
    I64,
    I32,
    U8,
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
            NpyDtype::BF16 => "bfloat16",
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
    pub dtype: NpyDtype,
    pub shape: Vec<usize>,
    pub fortran_order: bool,
    /// Byte offset of the data from the start of the file.
    pub data_offset: usize,
}

impl NpyHeader {
    /// Elements in the array.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Parses the header at the start of `bytes` (the whole file or at least its header);
    /// errors name `path`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<NpyHeader> {
        let bad = |m: &str| Error::format(path, format!("not a valid .npy file: {m}"));
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err(bad("missing the \\x93NUMPY magic"));
        }
        let major = bytes[6];
        let (hlen, start) = match major {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 => {
                if bytes.len() < 12 {
                    return Err(bad("truncated header"));
                }
                (
                    u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                    12,
                )
            }
            v => return Err(bad(&format!("unsupported version {v}"))),
        };
        let end = start + hlen;
        if bytes.len() < end {
            return Err(bad("truncated header"));
        }
        let text =
            std::str::from_utf8(&bytes[start..end]).map_err(|_| bad("header is not text"))?;
        let descr = dict_value(text, "descr").ok_or_else(|| bad("header has no 'descr'"))?;
        let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
        let dtype = match descr {
            "<f4" | "=f4" | "f4" => NpyDtype::F32,
            "<f2" | "=f2" | "f2" => NpyDtype::F16,
            "<V2" | "V2" | "bfloat16" | "<bf16" => NpyDtype::BF16,
            "<f8" | "=f8" | "f8" => NpyDtype::F64,
            "<i8" | "=i8" | "i8" => NpyDtype::I64,
            "<i4" | "=i4" | "i4" => NpyDtype::I32,
            "|u1" | "u1" => NpyDtype::U8,
            "|b1" | "b1" => NpyDtype::Bool,
            other => {
                return Err(Error::format(
                    path,
                    format!("unsupported .npy dtype '{other}' (expected little-endian f4, f2, bf16, f8, i8, i4, u1 or b1)"),
                ))
            }
        };
        let fortran = dict_value(text, "fortran_order")
            .ok_or_else(|| bad("header has no 'fortran_order'"))?;
        let fortran_order = match fortran.trim() {
            "True" => true,
            "False" => false,
            _ => return Err(bad("bad 'fortran_order'")),
        };
        let shape_txt = dict_value(text, "shape").ok_or_else(|| bad("header has no 'shape'"))?;
        let shape_txt = shape_txt
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')');
        let shape = shape_txt
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_end_matches('L').parse::<usize>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| bad("bad 'shape'"))?;
        Ok(NpyHeader {
            dtype,
            shape,
            fortran_order,
            data_offset: end,
        })
    }
}

/// The raw text of `key`'s value in a Python dict literal (up to the next top-level comma).
fn dict_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pos = text
        .find(&format!("'{key}'"))
        .or_else(|| text.find(&format!("\"{key}\"")))?;
    let rest = &text[pos + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
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
}
