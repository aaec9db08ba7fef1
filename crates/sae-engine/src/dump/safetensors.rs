//! `.safetensors` activation shards: tensor `activations` [n, d] (f32, f16, bf16) plus
//! optional per-token `token_ids` [n], `doc_ids` [n] (any integer dtype) and `mask` [n]
//! (u8 or bool, 1 = the token counts). Memory-mapped; rows are converted on read.

use std::path::Path;

use safetensors::Dtype as D;

use crate::error::{Error, Result};
use crate::io::mapped::{MappedSafetensors, MappedTensor};

use super::mapped_rows::{check_range, release_range, MappedRows, RowsShard};

/// A per-token side tensor: where its bytes start in the mapping and how to read them.
#[derive(Clone, Copy)]
struct Side {
    offset: usize,
    dtype: D,
}

impl Side {
    fn elem(&self) -> usize {
        self.dtype.bitsize() / 8
    }
}

/// A memory-mapped safetensors shard with `activations` [n, d].
pub struct SafetensorsShard {
    acts: MappedRows,
    token_ids: Option<Side>,
    doc_ids: Option<Side>,
    mask: Option<Side>,
    /// The file's `__metadata__` (the dump tool's layer, hook, model, ...).
    metadata: std::collections::HashMap<String, String>,
}

/// Byte offset of a tensor in the file mapping.
fn mapped_offset(path: &Path, t: &MappedTensor) -> Result<usize> {
    match &t.bytes {
        crate::matrix::Bytes::Mapped { offset, .. } => Ok(*offset),
        crate::matrix::Bytes::Owned(_) => Err(Error::format(
            path,
            format!("tensor `{}` is not memory-mapped", t.name),
        )),
    }
}

fn is_int(d: D) -> bool {
    matches!(
        d,
        D::I8 | D::U8 | D::I16 | D::U16 | D::I32 | D::U32 | D::I64 | D::U64
    )
}

impl SafetensorsShard {
    /// Maps the file and validates the tensors: 2-D float `activations`, and optional
    /// side tensors of length n with the accepted dtypes.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_map(path, crate::io::mapped::map_file(path)?)
    }

    /// Validates an already-mapped file (`path` names it in errors).
    pub fn from_map(path: &Path, map: std::sync::Arc<memmap2::Mmap>) -> Result<Self> {
        let st = MappedSafetensors::from_map(path, map)?;
        let act = st.tensor("activations")?;
        let dtype = act.float_dtype(path)?;
        if act.shape.len() != 2 {
            return Err(Error::shape(
                path,
                "activations",
                &act.shape,
                "a 2-D tensor [n_tokens, d]",
            ));
        }
        let (rows, width) = (act.shape[0], act.shape[1]);
        let side = |name: &str, ok: fn(D) -> bool, expected: &str| -> Result<Option<Side>> {
            let Some(t) = st.get(name) else {
                return Ok(None);
            };
            if !ok(t.dtype) {
                return Err(Error::dtype(path, name, format!("{:?}", t.dtype), expected));
            }
            if t.shape != [rows] {
                return Err(Error::shape(
                    path,
                    name,
                    &t.shape,
                    format!("[{rows}] (one entry per row of `activations`)"),
                ));
            }
            Ok(Some(Side {
                offset: mapped_offset(path, &t)?,
                dtype: t.dtype,
            }))
        };
        let token_ids = side("token_ids", is_int, "an integer dtype")?;
        let doc_ids = side("doc_ids", is_int, "an integer dtype")?;
        let mask = side("mask", |d| matches!(d, D::U8 | D::BOOL), "U8 or BOOL")?;
        let acts = MappedRows::new(
            path,
            st.map().clone(),
            mapped_offset(path, &act)?,
            rows,
            width,
            dtype,
        );
        Ok(SafetensorsShard {
            acts,
            token_ids,
            doc_ids,
            mask,
            metadata: st.metadata().clone(),
        })
    }

    fn side_bytes(&self, s: &Side, start: usize, count: usize) -> Result<&[u8]> {
        check_range(self.acts.path(), self.acts.rows(), start, count)?;
        let e = s.elem();
        let a = s.offset + start * e;
        Ok(&self.acts.map()[a..a + count * e])
    }

    fn ids(&self, s: Option<Side>, start: usize, count: usize) -> Result<Option<Vec<i64>>> {
        let Some(s) = s else { return Ok(None) };
        let b = self.side_bytes(&s, start, count)?;
        Ok(Some(ints_to_i64(s.dtype, b)))
    }
}

/// Little-endian integers of `dtype` to i64 (u64 beyond i64::MAX wraps, as numpy's astype does).
fn ints_to_i64(dtype: D, b: &[u8]) -> Vec<i64> {
    fn conv<const N: usize>(b: &[u8], f: fn([u8; N]) -> i64) -> Vec<i64> {
        b.chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    match dtype {
        D::I64 => conv::<8>(b, i64::from_le_bytes),
        D::U64 => conv::<8>(b, |a| u64::from_le_bytes(a) as i64),
        D::I32 => conv::<4>(b, |a| i32::from_le_bytes(a) as i64),
        D::U32 => conv::<4>(b, |a| u32::from_le_bytes(a) as i64),
        D::I16 => conv::<2>(b, |a| i16::from_le_bytes(a) as i64),
        D::U16 => conv::<2>(b, |a| u16::from_le_bytes(a) as i64),
        D::I8 => b.iter().map(|v| *v as i8 as i64).collect(),
        _ => b.iter().map(|v| *v as i64).collect(),
    }
}

impl RowsShard for SafetensorsShard {
    fn rows(&self) -> &MappedRows {
        &self.acts
    }
    fn token_ids(&self, start: usize, count: usize) -> Result<Option<Vec<i64>>> {
        self.ids(self.token_ids, start, count)
    }
    fn doc_ids(&self, start: usize, count: usize) -> Result<Option<Vec<i64>>> {
        self.ids(self.doc_ids, start, count)
    }
    fn mask(&self, start: usize, count: usize) -> Result<Option<Vec<u8>>> {
        let Some(s) = self.mask else { return Ok(None) };
        // Any non-zero byte counts (bool tensors store 0/1, some writers use 255).
        let b = self.side_bytes(&s, start, count)?;
        Ok(Some(b.iter().map(|v| (*v != 0) as u8).collect()))
    }
    fn metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
        Some(&self.metadata)
    }
    fn release(&self, end: usize) {
        self.acts.release(end);
        let end = end.min(self.acts.rows());
        for s in [self.token_ids, self.doc_ids, self.mask]
            .into_iter()
            .flatten()
        {
            release_range(self.acts.map(), s.offset, s.offset + end * s.elem());
        }
    }
}
