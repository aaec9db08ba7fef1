//! torch `.pt` files (`torch.save` zip archives) read without executing anything.
//!
//! An archive holds `PREFIX/data.pkl` (a pickle of the object, protocol 2) and one
//! member `PREFIX/data/KEY` per storage. [`vm`] interprets the pickle with an
//! allowlist; tensors then point into the storages. `torch.save` stores members
//! uncompressed, so a tensor is a byte range of the memory-mapped file.
//! The legacy (pre-1.6, non-zip) format is refused with a clear message.

pub mod vm;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::matrix::{Bytes, Layout, Matrix};

pub use vm::{StorageKind, TensorSpec, Value};

/// A tensor of a torch file, its bytes resolved.
#[derive(Debug, Clone)]
pub struct TorchTensor {
    /// Element type of the storage.
    pub kind: StorageKind,
    /// Logical shape.
    pub shape: Vec<usize>,
    /// True for a 2-D tensor stored column-major (strides `[1, rows]`), e.g. `w.T` saved as is.
    pub transposed: bool,
    /// The elements in storage order (row-major, or column-major if `transposed`).
    pub bytes: Bytes,
}

impl TorchTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The engine float dtype, if the tensor has one.
    pub fn float_dtype(&self) -> Option<DType> {
        match self.kind {
            StorageKind::F32 => Some(DType::F32),
            StorageKind::F16 => Some(DType::F16),
            StorageKind::BF16 => Some(DType::BF16),
            _ => None,
        }
    }

    /// All elements as f32 in logical row-major order (small tensors: biases, thresholds).
    pub fn to_f32(&self, path: &Path, name: &str) -> Result<Vec<f32>> {
        let n = self.numel();
        let b = self.bytes.as_slice();
        let mut out = vec![0f32; n];
        match self.float_dtype() {
            Some(dt) => crate::dtype::convert_to_f32(dt, b, &mut out),
            None => match self.kind {
                StorageKind::F64 => {
                    for (o, c) in out.iter_mut().zip(b.chunks_exact(8)) {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(c);
                        *o = f64::from_le_bytes(a) as f32;
                    }
                }
                _ => {
                    return Err(Error::dtype(
                        path,
                        name,
                        self.kind.name(),
                        "a floating-point tensor",
                    ))
                }
            },
        }
        if self.transposed {
            let (r, c) = (self.shape[0], self.shape[1]);
            let mut t = vec![0f32; n];
            for i in 0..r {
                for j in 0..c {
                    t[i * c + j] = out[j * r + i];
                }
            }
            out = t;
        }
        Ok(out)
    }

    /// All elements as i64 (integer tensors: token ids, `k` buffers).
    pub fn to_i64(&self, path: &Path, name: &str) -> Result<Vec<i64>> {
        if self.transposed {
            return Err(Error::format(
                path,
                format!("tensor `{name}`: transposed integer tensors are not supported"),
            ));
        }
        self.i64_range(path, name, 0, self.numel())
    }

    /// Elements `start..start + count` of a contiguous integer tensor as i64.
    pub fn i64_range(
        &self,
        path: &Path,
        name: &str,
        start: usize,
        count: usize,
    ) -> Result<Vec<i64>> {
        let s = self.kind.size();
        let end = start
            .checked_add(count)
            .filter(|e| *e <= self.numel())
            .ok_or_else(|| {
                Error::invalid(format!("{}: `{name}` range out of bounds", path.display()))
            })?;
        let b = &self.bytes.as_slice()[start * s..end * s];
        let v = match self.kind {
            StorageKind::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            StorageKind::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            StorageKind::I16 => b
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            StorageKind::I8 => b.iter().map(|v| *v as i8 as i64).collect(),
            StorageKind::U8 | StorageKind::Bool => b.iter().map(|v| *v as i64).collect(),
            _ => {
                return Err(Error::dtype(
                    path,
                    name,
                    self.kind.name(),
                    "an integer tensor",
                ))
            }
        };
        Ok(v)
    }

    /// A single number (0-d or one-element tensor) as f64, whatever its dtype.
    pub fn scalar(&self, path: &Path, name: &str) -> Result<f64> {
        if self.numel() != 1 {
            return Err(Error::shape(path, name, &self.shape, "a scalar"));
        }
        match self.kind {
            StorageKind::F32 | StorageKind::F16 | StorageKind::BF16 | StorageKind::F64 => {
                Ok(self.to_f32(path, name)?[0] as f64)
            }
            _ => Ok(self.to_i64(path, name)?[0] as f64),
        }
    }

    /// A 2-D float tensor as a matrix of logical shape `[rows, cols]`. `stored_as_rows`
    /// says whether the tensor's own shape is `[rows, cols]` (else `[cols, rows]`, its
    /// transpose); the storage order decides the layout, so no bytes are copied.
    pub fn matrix(&self, path: &Path, name: &str, stored_as_rows: bool) -> Result<Matrix> {
        let dt = self
            .float_dtype()
            .ok_or_else(|| Error::dtype(path, name, self.kind.name(), "f32, f16 or bf16"))?;
        if self.shape.len() != 2 {
            return Err(Error::shape(path, name, &self.shape, "a 2-D tensor"));
        }
        let (a, b) = (self.shape[0], self.shape[1]);
        let (rows, cols) = if stored_as_rows { (a, b) } else { (b, a) };
        // Row-major bytes of the tensor's own shape are the logical matrix when the
        // shape is [rows, cols]; each transpose (shape or strides) flips the layout.
        let layout = if stored_as_rows != self.transposed {
            Layout::RowMajor
        } else {
            Layout::Transposed
        };
        Matrix::new(self.bytes.clone(), dt, rows, cols, layout)
            .map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))
    }
}

/// A loaded torch file: the unpickled object with its tensors resolved.
#[derive(Debug, Clone)]
pub struct TorchFile {
    /// The file.
    pub path: PathBuf,
    /// The unpickled object (usually the state dict).
    pub root: Value,
    tensors: Vec<TorchTensor>,
}

impl TorchFile {
    /// The root object as a state dict: (name, value) pairs in file order.
    /// A nested dict (e.g. `{"state_dict": {...}}`) is not flattened.
    pub fn entries(&self) -> Result<Vec<(&str, &Value)>> {
        match &self.root {
            Value::Dict(items) => items
                .iter()
                .map(|(k, v)| {
                    k.as_str().map(|k| (k, v)).ok_or_else(|| {
                        Error::format(&self.path, "state dict has a key that is not a string")
                    })
                })
                .collect(),
            other => Err(Error::format(
                &self.path,
                format!("expected a state dict (a dict of tensors), found a {other:?}"),
            )),
        }
    }

    /// A value of the root dict by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.root.get(key)
    }

    /// The tensor under `key` of the root dict, or a Missing error naming it.
    pub fn tensor(&self, key: &str) -> Result<&TorchTensor> {
        match self.get(key) {
            Some(Value::Tensor(spec)) => self.resolve(spec),
            Some(_) => Err(Error::format(
                &self.path,
                format!("`{key}` is not a tensor"),
            )),
            None => Err(Error::missing(&self.path, format!("tensor `{key}`"))),
        }
    }

    /// The tensor under `key`, if present.
    pub fn opt_tensor(&self, key: &str) -> Result<Option<&TorchTensor>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.tensor(key).map(Some),
        }
    }

    /// The root object as a single tensor (`torch.save(tensor)`, e.g. `tokens.pt`).
    pub fn root_tensor(&self) -> Result<&TorchTensor> {
        match &self.root {
            Value::Tensor(spec) => self.resolve(spec),
            _ => Err(Error::format(&self.path, "expected a single saved tensor")),
        }
    }

    /// The resolved tensor of a spec found in `root`.
    pub fn resolve(&self, spec: &TensorSpec) -> Result<&TorchTensor> {
        let i = self
            .index_of(spec)
            .ok_or_else(|| Error::format(&self.path, "tensor spec does not belong to this file"))?;
        Ok(&self.tensors[i])
    }

    fn index_of(&self, spec: &TensorSpec) -> Option<usize> {
        let mut specs = Vec::new();
        collect_specs(&self.root, &mut specs);
        specs.iter().position(|s| *s == spec)
    }
}

fn collect_specs<'a>(v: &'a Value, out: &mut Vec<&'a TensorSpec>) {
    match v {
        Value::Tensor(t) => out.push(t),
        Value::Tuple(items) | Value::List(items) => {
            items.iter().for_each(|x| collect_specs(x, out))
        }
        Value::Dict(items) => items.iter().for_each(|(k, x)| {
            collect_specs(k, out);
            collect_specs(x, out)
        }),
        _ => {}
    }
}

/// Loads a torch `.pt` file without executing anything.
pub fn load(path: impl AsRef<Path>) -> Result<TorchFile> {
    let path = path.as_ref();
    let map = crate::io::mapped::map_file(path)?;
    if map.len() >= 2 && map[0] == 0x80 {
        return Err(Error::format(
            path,
            "legacy (pre-1.6, non-zip) torch serialization is not supported; \
             re-save it with torch.save in torch >= 1.6",
        ));
    }
    if map.len() < 4 || &map[..4] != b"PK\x03\x04" {
        return Err(Error::format(
            path,
            "not a torch .pt file: expected a zip archive (torch.save format)",
        ));
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&map[..]))
        .map_err(|e| Error::format(path, format!("not a valid zip archive: {e}")))?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(str::to_string))
        .filter(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .min_by_key(|n| n.len())
        .ok_or_else(|| Error::missing(path, "data.pkl in the torch archive"))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    if let Ok(Some(order)) = read_member(&mut zip, path, &format!("{prefix}byteorder"), 16) {
        if order.trim_ascii() != b"little" {
            return Err(Error::format(
                path,
                "big-endian torch archives are not supported",
            ));
        }
    }
    let pkl = read_member(&mut zip, path, &pkl_name, 256 << 20)?
        .ok_or_else(|| Error::missing(path, pkl_name.clone()))?;
    let root = vm::unpickle(path, &pkl)?;

    let mut specs = Vec::new();
    collect_specs(&root, &mut specs);
    let mut storages: HashMap<String, Bytes> = HashMap::new();
    let mut tensors = Vec::with_capacity(specs.len());
    for spec in specs {
        let key = &spec.storage.key;
        if !storages.contains_key(key) {
            let b = storage_bytes(
                &mut zip,
                &map,
                path,
                &format!("{prefix}data/{key}"),
                &spec.storage,
            )?;
            storages.insert(key.clone(), b);
        }
        let storage = &storages[key];
        tensors.push(tensor_from_spec(path, spec, storage)?);
    }
    Ok(TorchFile {
        path: path.to_path_buf(),
        root,
        tensors,
    })
}

fn read_member<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    path: &Path,
    name: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>> {
    let f = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(Error::format(path, format!("archive member {name}: {e}"))),
    };
    if f.size() > limit {
        return Err(Error::format(
            path,
            format!("archive member {name} is too large"),
        ));
    }
    let mut out = Vec::with_capacity(f.size() as usize);
    f.take(limit)
        .read_to_end(&mut out)
        .map_err(|e| Error::format(path, format!("archive member {name}: {e}")))?;
    Ok(Some(out))
}

/// The bytes of a storage member: a range of the mapping when stored uncompressed
/// (what torch.save writes), else decompressed into memory.
fn storage_bytes(
    zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    map: &Arc<memmap2::Mmap>,
    path: &Path,
    name: &str,
    storage: &vm::StorageRef,
) -> Result<Bytes> {
    let need = storage
        .numel
        .checked_mul(storage.kind.size())
        .ok_or_else(|| Error::format(path, format!("storage {name} size overflows")))?;
    let f = zip.by_name(name).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => {
            Error::missing(path, format!("storage member {name}"))
        }
        e => Error::format(path, format!("archive member {name}: {e}")),
    })?;
    if (f.size() as usize) < need {
        return Err(Error::format(
            path,
            format!(
                "storage {name} has {} bytes, the pickle says {} {} elements ({need} bytes)",
                f.size(),
                storage.numel,
                storage.kind.name()
            ),
        ));
    }
    if f.compression() == zip::CompressionMethod::Stored {
        let start = f.data_start() as usize;
        if start.checked_add(need).is_none_or(|e| e > map.len()) {
            return Err(Error::format(
                path,
                format!("storage {name} runs past the end of the file"),
            ));
        }
        return Ok(Bytes::Mapped {
            map: map.clone(),
            offset: start,
            len: need,
        });
    }
    let mut out = Vec::with_capacity(need);
    f.take(need as u64)
        .read_to_end(&mut out)
        .map_err(|e| Error::format(path, format!("archive member {name}: {e}")))?;
    if out.len() != need {
        return Err(Error::format(path, format!("storage {name} is truncated")));
    }
    Ok(Bytes::Owned(Arc::new(out)))
}

/// Checks a spec's offset/shape/strides against its storage and returns the tensor's bytes.
fn tensor_from_spec(path: &Path, spec: &TensorSpec, storage: &Bytes) -> Result<TorchTensor> {
    let es = spec.storage.kind.size();
    let shape = &spec.shape;
    let numel = shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .ok_or_else(|| Error::format(path, "tensor size overflows"))?;
    let contiguous = {
        let mut expect = 1usize;
        let mut ok = true;
        for (d, s) in shape.iter().zip(&spec.stride).rev() {
            if *d != 1 && *s != expect {
                ok = false;
            }
            expect = expect.saturating_mul(*d);
        }
        ok
    };
    let transposed = !contiguous
        && shape.len() == 2
        && (shape[0] == 1 || spec.stride[0] == 1)
        && (shape[1] == 1 || spec.stride[1] == shape[0]);
    if !contiguous && !transposed {
        return Err(Error::format(
            path,
            format!(
                "tensor of shape {:?} has strides {:?}: only contiguous or transposed 2-D tensors are supported",
                shape, spec.stride
            ),
        ));
    }
    let start = spec.offset.checked_mul(es);
    let len = numel.checked_mul(es);
    let (start, len) = match (start, len) {
        (Some(s), Some(l))
            if s.checked_add(l)
                .is_some_and(|e| e <= storage.as_slice().len()) =>
        {
            (s, l)
        }
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "tensor of shape {:?} at offset {} does not fit its storage `{}` ({} elements)",
                    shape, spec.offset, spec.storage.key, spec.storage.numel
                ),
            ))
        }
    };
    let bytes = match storage {
        Bytes::Mapped { map, offset, .. } => Bytes::Mapped {
            map: map.clone(),
            offset: offset + start,
            len,
        },
        Bytes::Owned(v) => {
            if start == 0 && len == v.len() {
                Bytes::Owned(v.clone())
            } else {
                Bytes::Owned(Arc::new(v[start..start + len].to_vec()))
            }
        }
    };
    Ok(TorchTensor {
        kind: spec.storage.kind,
        shape: shape.clone(),
        transposed,
        bytes,
    })
}

/// Unpickles `data` and resolves tensors against zero-filled storages of at most
/// `max_storage_bytes` each: the whole reader minus the zip, for fuzzing.
pub fn parse_for_fuzz(data: &[u8], max_storage_bytes: usize) -> Result<usize> {
    let path = Path::new("<fuzz>");
    let root = vm::unpickle(path, data)?;
    let mut specs = Vec::new();
    collect_specs(&root, &mut specs);
    for spec in specs {
        let n = spec
            .storage
            .numel
            .checked_mul(spec.storage.kind.size())
            .filter(|n| *n <= max_storage_bytes)
            .ok_or_else(|| Error::format(path, "storage too large"))?;
        let b = Bytes::Owned(Arc::new(vec![0u8; n]));
        tensor_from_spec(path, spec, &b)?;
    }
    Ok(0)
}
