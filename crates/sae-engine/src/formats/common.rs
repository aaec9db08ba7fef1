//! Helpers shared by the loaders: reading cfg.json, turning stored tensors into
//! logical `[L, d]` matrices without copying, and shape/dtype checks that name the file.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::dtype::{convert_to_f32, DType};
use crate::error::{Error, Result};
use crate::io::mapped::MappedTensor;
use crate::matrix::{Bytes, Layout, Matrix};

/// A parsed JSON config object and the file it came from (for error messages).
pub struct Cfg {
    /// The config file.
    pub path: PathBuf,
    /// Its top-level JSON object.
    pub obj: Map<String, Value>,
}

impl Cfg {
    /// Reads and parses `path`; it must hold a JSON object.
    pub fn read(path: &Path) -> Result<Cfg> {
        let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Cfg::parse(path, &text)
    }

    /// Parses JSON bytes that must form an object.
    pub fn parse(path: &Path, text: &[u8]) -> Result<Cfg> {
        let v: Value = serde_json::from_slice(text)
            .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
        match v {
            Value::Object(obj) => Ok(Cfg {
                path: path.to_path_buf(),
                obj,
            }),
            _ => Err(Error::format(path, "expected a JSON object")),
        }
    }

    /// A key's value, treating JSON null as absent.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    /// A nested object (e.g. `metadata`), if present.
    pub fn object(&self, key: &str) -> Result<Option<&Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(self.bad(key, "an object")),
        }
    }

    fn bad(&self, key: &str, expected: &str) -> Error {
        Error::format(
            &self.path,
            format!("key `{key}` must be {expected}, got {}", self.obj[key]),
        )
    }

    /// A required non-negative integer.
    pub fn usize_req(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .ok_or_else(|| Error::missing(&self.path, format!("config key `{key}`")))
    }

    /// An optional non-negative integer (floats with no fraction are accepted: JSON writers
    /// sometimes emit `64.0`).
    pub fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => value_usize(v)
                .map(Some)
                .ok_or_else(|| self.bad(key, "a non-negative integer")),
        }
    }

    /// An optional boolean.
    pub fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.bad(key, "true or false")),
        }
    }

    /// An optional string.
    pub fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.bad(key, "a string")),
        }
    }
}

/// A JSON number as usize when it is a non-negative integer.
pub fn value_usize(v: &Value) -> Option<usize> {
    if let Some(u) = v.as_u64() {
        return usize::try_from(u).ok();
    }
    let f = v.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f <= u32::MAX as f64).then_some(f as usize)
}

/// A string from a JSON map, treating null and non-strings as absent.
pub fn map_str(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_string)
}

/// An integer from a JSON map.
pub fn map_i64(m: &Map<String, Value>, key: &str) -> Option<i64> {
    m.get(key).and_then(Value::as_i64)
}

/// The layer index in a hook name such as `blocks.12.hook_resid_post`, `layers.6` or
/// `model.layers.10.output`.
pub fn layer_from_hook(hook: &str) -> Option<i64> {
    let parts: Vec<&str> = hook.split('.').collect();
    parts
        .windows(2)
        .find(|w| matches!(w[0], "blocks" | "layers" | "h" | "layer"))
        .and_then(|w| w[1].parse().ok())
}

/// How the loader expects a weight matrix to be stored relative to its logical `[L, d]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored as `[L, d]` (sparsify encoder, every W_dec).
    LatentsByDim,
    /// Stored as `[d, L]` (SAELens / Gemma Scope W_enc).
    DimByLatents,
}

impl Stored {
    fn shape(self, l: usize, d: usize) -> [usize; 2] {
        match self {
            Stored::LatentsByDim => [l, d],
            Stored::DimByLatents => [d, l],
        }
    }
}

/// Checks a stored matrix shape against the expected `[L, d]` / `[d, L]`, saying when
/// it looks transposed, and returns the layout of the logical `[L, d]` matrix.
/// `fortran` means the bytes are column-major (npy `fortran_order`), which flips the layout.
pub fn check_matrix_shape(
    path: &Path,
    name: &str,
    shape: &[usize],
    l: usize,
    d: usize,
    stored: Stored,
    fortran: bool,
) -> Result<Layout> {
    let want = stored.shape(l, d);
    if shape != want {
        let flipped = [want[1], want[0]];
        let hint = if shape == flipped {
            " (it looks transposed; refusing to guess)"
        } else {
            ""
        };
        return Err(Error::shape(
            path,
            name,
            shape,
            format!(
                "[{}, {}] ({}) for d_in = {d} and {l} latents{hint}",
                want[0],
                want[1],
                match stored {
                    Stored::LatentsByDim => "n_latents, d_in",
                    Stored::DimByLatents => "d_in, n_latents",
                }
            ),
        ));
    }
    let row_major_lxd = matches!(stored, Stored::LatentsByDim) != fortran;
    Ok(if row_major_lxd {
        Layout::RowMajor
    } else {
        Layout::Transposed
    })
}

/// A weight matrix over a mapped safetensors tensor, validated and never copied.
pub fn matrix_from_tensor(
    path: &Path,
    t: &MappedTensor,
    l: usize,
    d: usize,
    stored: Stored,
) -> Result<Matrix> {
    let dtype = t.float_dtype(path)?;
    let layout = check_matrix_shape(path, &t.name, &t.shape, l, d, stored, false)?;
    Matrix::new(t.bytes.clone(), dtype, l, d, layout)
        .map_err(|e| Error::format(path, format!("tensor `{}`: {e}", t.name)))
}

/// A matrix over raw bytes of a known dtype (npz members).
pub fn matrix_from_bytes(
    path: &Path,
    name: &str,
    bytes: Bytes,
    dtype: DType,
    l: usize,
    d: usize,
    layout: Layout,
) -> Result<Matrix> {
    Matrix::new(bytes, dtype, l, d, layout)
        .map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))
}

/// A small 1-D tensor (bias, threshold) as f32; accepts f64 too since converters emit it.
/// A NaN or infinity is refused (see [`check_finite`]).
pub fn vector_from_tensor(path: &Path, t: &MappedTensor, len: usize) -> Result<Vec<f32>> {
    if t.shape != [len] {
        return Err(Error::shape(path, &t.name, &t.shape, format!("[{len}]")));
    }
    let v = if t.dtype == safetensors::Dtype::F64 {
        f64_bytes_to_f32(t.bytes.as_slice())
    } else {
        t.to_f32(path)?
    };
    check_finite(path, &t.name, &v)?;
    Ok(v)
}

/// Refuses a bias, threshold or scale vector holding a NaN or infinity, naming the file,
/// the tensor and the first bad index. Vectors are small, so every loader checks them
/// all; the weight matrices are not scanned at load (17 GB for the largest SAEs): a
/// non-finite pre-activation they cause is reported by encode, naming the latent.
pub fn check_finite(path: &Path, tensor: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::format(
            path,
            format!(
                "tensor `{tensor}` holds {} at index {i}; SAE weights must be finite \
                 (the file is corrupt or the training diverged)",
                values[i]
            ),
        )),
        None => Ok(()),
    }
}

/// Little-endian f64 bytes to f32 values.
pub fn f64_bytes_to_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            f64::from_le_bytes(a) as f32
        })
        .collect()
}

/// Bytes of `dtype` to f32 values.
pub fn bytes_to_f32(dtype: DType, b: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; b.len() / dtype.size()];
    convert_to_f32(dtype, b, &mut out);
    out
}

/// A `scaling_factor` tensor (SAELens "finetuning scaling factor", also found in some
/// Gemma Scope files) changes decoding unless it is all ones; the canonical form has no
/// such term, so anything else is refused.
pub fn check_scaling_factor(path: &Path, values: &[f32]) -> Result<()> {
    if values.iter().all(|v| (*v - 1.0).abs() <= 1e-6) {
        Ok(())
    } else {
        Err(Error::format(
            path,
            "tensor `scaling_factor` is not all ones (a finetuning scaling factor); \
             this engine has no such term: fold it into W_dec first",
        ))
    }
}

/// The `L` and `d` of an SAE without a config: from the bias lengths, which cannot be
/// confused with each other the way a matrix transpose can.
pub fn dims_from_biases(
    path: &Path,
    b_enc: (&str, &[usize]),
    b_dec: (&str, &[usize]),
) -> Result<(usize, usize)> {
    let one = |(name, shape): (&str, &[usize])| -> Result<usize> {
        match shape {
            [n] => Ok(*n),
            _ => Err(Error::shape(path, name, shape, "a 1-D vector")),
        }
    };
    Ok((one(b_enc)?, one(b_dec)?))
}
