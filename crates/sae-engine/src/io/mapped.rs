//! Memory-mapped safetensors files: tensors are handed out as byte ranges of the
//! mapping, so a multi-GB weight matrix is never copied into memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::matrix::Bytes;

/// Copies `bytes` into a read-only anonymous mapping: an in-memory file for the mapped
/// readers (fuzzing, tests).
pub fn map_bytes(bytes: &[u8]) -> std::io::Result<Arc<memmap2::Mmap>> {
    let mut map = memmap2::MmapMut::map_anon(bytes.len())?;
    map.copy_from_slice(bytes);
    let map = map.make_read_only()?;
    Ok(Arc::new(map))
}

/// Maps `path` read-only.
pub fn map_file(path: &Path) -> Result<Arc<memmap2::Mmap>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is read-only; a file truncated by another process while
    // mapped would fault, which is the documented limit of every mmap-based reader.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Arc::new(map))
}

/// One tensor of a mapped safetensors file.
#[derive(Debug, Clone)]
pub struct MappedTensor {
    /// The tensor's name in the header.
    pub name: String,
    /// Its dtype.
    pub dtype: safetensors::Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its data bytes (little-endian).
    pub bytes: Bytes,
}

impl MappedTensor {
    /// The float dtype, or a dtype error naming the file and tensor.
    pub fn float_dtype(&self, path: &Path) -> Result<DType> {
        DType::from_safetensors(self.dtype).ok_or_else(|| {
            Error::dtype(
                path,
                &self.name,
                format!("{:?}", self.dtype),
                "F32, F16 or BF16",
            )
        })
    }

    /// The values as f32 (small tensors: biases, thresholds).
    pub fn to_f32(&self, path: &Path) -> Result<Vec<f32>> {
        let dt = self.float_dtype(path)?;
        let n: usize = self.shape.iter().product();
        let mut out = vec![0f32; n];
        crate::dtype::convert_to_f32(dt, self.bytes.as_slice(), &mut out);
        Ok(out)
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A safetensors file mapped into memory with its header parsed.
pub struct MappedSafetensors {
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
    data_start: usize,
    tensors: HashMap<String, safetensors::tensor::TensorInfo>,
    metadata: HashMap<String, String>,
}

impl MappedSafetensors {
    /// Maps and parses `path`; a truncated file or bad header is a format error naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_map(path, map_file(path)?)
    }

    /// Parses an already-mapped file (`path` names it in errors).
    pub fn from_map(path: &Path, map: Arc<memmap2::Mmap>) -> Result<Self> {
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&map[..])
            .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
        // The crate checks that the header and the tensors' byte ranges fit the buffer;
        // the sums are checked again here so that a change there cannot wrap them.
        let too_long = || Error::format(path, "header length overflows");
        let data_start = header_len.checked_add(8).ok_or_else(too_long)?;
        let tensors: HashMap<String, safetensors::tensor::TensorInfo> = meta
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        for (name, info) in &tensors {
            let (begin, end) = info.data_offsets;
            if begin > end || data_start.checked_add(end).is_none_or(|e| e > map.len()) {
                return Err(Error::format(
                    path,
                    format!("tensor `{name}` extends past the end of the file (truncated?)"),
                ));
            }
        }
        Ok(MappedSafetensors {
            path: path.to_path_buf(),
            data_start,
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
            map,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` string map.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tensors.keys().map(|s| s.as_str()).collect();
        v.sort();
        v
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A tensor, if present.
    pub fn get(&self, name: &str) -> Option<MappedTensor> {
        self.tensors.get(name).map(|info| MappedTensor {
            name: name.to_string(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            bytes: Bytes::Mapped {
                map: self.map.clone(),
                offset: self.data_start + info.data_offsets.0,
                len: info.data_offsets.1 - info.data_offsets.0,
            },
        })
    }

    /// A tensor, or a `Missing` error naming the file and tensor.
    pub fn tensor(&self, name: &str) -> Result<MappedTensor> {
        self.get(name)
            .ok_or_else(|| Error::missing(&self.path, format!("tensor `{name}`")))
    }

    /// The mapping (for advising the kernel about access patterns).
    pub fn map(&self) -> &Arc<memmap2::Mmap> {
        &self.map
    }
}

/// A tensor to write: dtype, shape and little-endian bytes.
pub struct OwnedTensor {
    /// Element type.
    pub dtype: safetensors::Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub data: Vec<u8>,
}

impl OwnedTensor {
    /// From f32 values.
    pub fn f32(shape: Vec<usize>, v: &[f32]) -> Self {
        OwnedTensor {
            dtype: safetensors::Dtype::F32,
            shape,
            data: bytemuck::cast_slice(v).to_vec(),
        }
    }
    /// From f64 values.
    pub fn f64(shape: Vec<usize>, v: &[f64]) -> Self {
        OwnedTensor {
            dtype: safetensors::Dtype::F64,
            shape,
            data: bytemuck::cast_slice(v).to_vec(),
        }
    }
    /// From i64 values.
    pub fn i64(shape: Vec<usize>, v: &[i64]) -> Self {
        OwnedTensor {
            dtype: safetensors::Dtype::I64,
            shape,
            data: bytemuck::cast_slice(v).to_vec(),
        }
    }
    /// From i32 values.
    pub fn i32(shape: Vec<usize>, v: &[i32]) -> Self {
        OwnedTensor {
            dtype: safetensors::Dtype::I32,
            shape,
            data: bytemuck::cast_slice(v).to_vec(),
        }
    }
    /// From u8 values.
    pub fn u8(shape: Vec<usize>, v: &[u8]) -> Self {
        OwnedTensor {
            dtype: safetensors::Dtype::U8,
            shape,
            data: v.to_vec(),
        }
    }
}

impl safetensors::View for &OwnedTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes tensors and string metadata to `path` atomically (temporary name, then rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, OwnedTensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    crate::io::atomic::write_with(path, |tmp| {
        let views: Vec<(&str, &OwnedTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
        let meta = if metadata.is_empty() {
            None
        } else {
            Some(metadata)
        };
        safetensors::serialize_to_file(views, meta, tmp)
            .map_err(|e| Error::format(path, format!("cannot write safetensors: {e}")))
    })
}

/// Reads a whole integer or float tensor as i64 (token ids, row pointers, counts).
pub fn tensor_to_i64(t: &MappedTensor, path: &Path) -> Result<Vec<i64>> {
    let b = t.bytes.as_slice();
    use safetensors::Dtype as D;
    let v = match t.dtype {
        D::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        D::U64 => b
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        D::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        D::U32 => b
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        D::I16 => b
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        D::U16 => b
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        D::U8 | D::BOOL => b.iter().map(|v| *v as i64).collect(),
        D::I8 => b.iter().map(|v| *v as i8 as i64).collect(),
        other => {
            return Err(Error::dtype(
                path,
                &t.name,
                format!("{other:?}"),
                "an integer dtype",
            ))
        }
    };
    Ok(v)
}
