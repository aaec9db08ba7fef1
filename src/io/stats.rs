//! Statistics files (safetensors): `sum`, `sum_sq` (F64 [L]), `n_active` (I64 [L]),
//! `max` (F32 [L]); metadata `n_tokens`, `fingerprint` (of the SAE) and `n_latents`.

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype as D;

use crate::error::{Error, Result};
use crate::io::mapped::{write_safetensors, MappedSafetensors, MappedTensor, OwnedTensor};
use crate::stats::LatentStats;

/// Writes statistics to a safetensors file, atomically.
pub fn write(path: &Path, stats: &LatentStats) -> Result<()> {
    write_with_provenance(path, stats, None)
}

/// [`write`], with the command's provenance as the `provenance` metadata entry (readers
/// ignore it; [`crate::provenance::Provenance::from_metadata`] reads it back).
pub fn write_with_provenance(
    path: &Path,
    stats: &LatentStats,
    provenance: Option<&crate::provenance::Provenance>,
) -> Result<()> {
    let l = stats.n_latents();
    if stats.sum_sq.len() != l || stats.n_active.len() != l || stats.max.len() != l {
        return Err(Error::invalid(format!(
            "{}: statistics vectors have different lengths ({l}, {}, {}, {})",
            path.display(),
            stats.sum_sq.len(),
            stats.n_active.len(),
            stats.max.len()
        )));
    }
    let n_active: Vec<i64> = stats.n_active.iter().map(|v| *v as i64).collect();
    let tensors = [
        ("sum", OwnedTensor::f64(vec![l], &stats.sum)),
        ("sum_sq", OwnedTensor::f64(vec![l], &stats.sum_sq)),
        ("n_active", OwnedTensor::i64(vec![l], &n_active)),
        ("max", OwnedTensor::f32(vec![l], &stats.max)),
    ];
    let mut meta = HashMap::new();
    meta.insert("n_tokens".to_string(), stats.n_tokens.to_string());
    meta.insert("fingerprint".to_string(), stats.fingerprint.clone());
    meta.insert("n_latents".to_string(), l.to_string());
    if let Some(p) = provenance {
        let (k, v) = p.metadata_entry();
        meta.insert(k, v);
    }
    write_safetensors(path, &tensors, meta)
}

fn vector(
    path: &Path,
    st: &MappedSafetensors,
    name: &str,
    dtype: D,
    l: Option<usize>,
) -> Result<MappedTensor> {
    let t = st.tensor(name)?;
    if t.dtype != dtype {
        return Err(Error::dtype(
            path,
            name,
            format!("{:?}", t.dtype),
            format!("{dtype:?}"),
        ));
    }
    let ok = t.shape.len() == 1 && l.is_none_or(|l| t.shape[0] == l);
    if !ok {
        let want = match l {
            Some(l) => format!("[{l}] (one entry per latent, like `sum`)"),
            None => "a 1-D tensor [n_latents]".to_string(),
        };
        return Err(Error::shape(path, name, &t.shape, want));
    }
    Ok(t)
}

fn f64s(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

/// Reads a statistics file, validating tensor names, dtypes, shapes and metadata.
pub fn read(path: &Path) -> Result<LatentStats> {
    let st = MappedSafetensors::open(path)?;
    let sum = vector(path, &st, "sum", D::F64, None)?;
    let l = sum.shape[0];
    let sum_sq = vector(path, &st, "sum_sq", D::F64, Some(l))?;
    let n_active = vector(path, &st, "n_active", D::I64, Some(l))?;
    let max = vector(path, &st, "max", D::F32, Some(l))?;
    let meta = st.metadata();
    let n_tokens = meta
        .get("n_tokens")
        .ok_or_else(|| Error::missing(path, "metadata `n_tokens`"))?;
    let n_tokens: u64 = n_tokens.parse().map_err(|_| {
        Error::format(
            path,
            format!("metadata n_tokens = `{n_tokens}` is not a count"),
        )
    })?;
    let fingerprint = meta
        .get("fingerprint")
        .ok_or_else(|| Error::missing(path, "metadata `fingerprint`"))?
        .clone();
    let n_active: Vec<i64> = n_active
        .bytes
        .as_slice()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    if let Some(v) = n_active.iter().find(|v| **v < 0 || **v as u64 > n_tokens) {
        return Err(Error::format(
            path,
            format!("`n_active` holds {v}, outside 0..={n_tokens} (n_tokens)"),
        ));
    }
    Ok(LatentStats {
        fingerprint,
        n_tokens,
        sum: f64s(sum.bytes.as_slice()),
        sum_sq: f64s(sum_sq.bytes.as_slice()),
        n_active: n_active.into_iter().map(|v| v as u64).collect(),
        max: max.to_f32(path)?,
    })
}
