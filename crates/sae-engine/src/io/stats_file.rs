//! Statistics files (safetensors): `sum`, `sum_sq` (F64 [L]), `n_active` (I64 [L]),
//! `max` (F32 [L]); metadata `n_tokens`, `fingerprint` (of the SAE) and `n_latents`.
//!
//! Since the token rule (README, "Statistics files"), also, each optional so that older
//! files still read:
//! - metadata `token_hash` (16 hex digits), `n_token_ids`, `n_doc_ids`: the order-free
//!   digest of the counted tokens' ids ([`crate::stats::TokenDigest`]), for pairing;
//! - tensors `norm_hist_bin`, `norm_hist_count` (I64 [B]): the counted rows' norm
//!   histogram ([`crate::stats::NormHistogram`]; bin b spans [2^(b/256), 2^((b+1)/256)),
//!   bin i64::MIN holds zero norms), and metadata `outlier_factor` (T), plus
//!   `norm_median` and `n_outliers` derived from them for a reader without this library;
//! - tensors `doc_sum_sq`, `doc_n_sum` (F64 [L]) and metadata `n_docs`, `n_doc_tokens`,
//!   `doc_sum_n_sq`: per-document sums for clustered standard errors
//!   ([`crate::stats::DocSums`]).

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype as D;

use crate::error::{Error, Result};
use crate::io::mapped::{
    tensor_to_i64, write_safetensors, MappedSafetensors, MappedTensor, OwnedTensor,
};
use crate::stats::{DocSums, LatentStats, NormHistogram, TokenDigest};

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
    let mut tensors = vec![
        ("sum", OwnedTensor::f64(vec![l], &stats.sum)),
        ("sum_sq", OwnedTensor::f64(vec![l], &stats.sum_sq)),
        ("n_active", OwnedTensor::i64(vec![l], &n_active)),
        ("max", OwnedTensor::f32(vec![l], &stats.max)),
    ];
    let mut meta = HashMap::new();
    meta.insert("n_tokens".to_string(), stats.n_tokens.to_string());
    meta.insert("fingerprint".to_string(), stats.fingerprint.clone());
    meta.insert("n_latents".to_string(), l.to_string());
    meta.insert(
        "outlier_factor".to_string(),
        stats.outlier_factor.to_string(),
    );
    // Each optional part is written only when it covers the counted tokens consistently
    // (statistics built from codes alone, e.g. through the C ABI, have no norms).
    if let Some(t) = stats.tokens.as_ref().filter(|t| t.n_ids <= stats.n_tokens) {
        meta.insert("token_hash".to_string(), format!("{:016x}", t.hash));
        meta.insert("n_token_ids".to_string(), t.n_ids.to_string());
        meta.insert("n_doc_ids".to_string(), t.n_docs.to_string());
    }
    if let Some(h) = stats
        .norms
        .as_ref()
        .filter(|h| h.n_rows() == stats.n_tokens)
    {
        let bins: Vec<i64> = h.bins.keys().copied().collect();
        let counts: Vec<i64> = h.bins.values().map(|c| *c as i64).collect();
        tensors.push(("norm_hist_bin", OwnedTensor::i64(vec![bins.len()], &bins)));
        tensors.push((
            "norm_hist_count",
            OwnedTensor::i64(vec![counts.len()], &counts),
        ));
        if let Some(m) = h.median() {
            meta.insert("norm_median".to_string(), m.to_string());
        }
        meta.insert(
            "n_outliers".to_string(),
            h.n_above(stats.outlier_factor).to_string(),
        );
    }
    if let Some(d) = &stats.docs {
        if d.sum_sq.len() == l && d.sum_n.len() == l && d.n_tokens <= stats.n_tokens {
            tensors.push(("doc_sum_sq", OwnedTensor::f64(vec![l], &d.sum_sq)));
            tensors.push(("doc_n_sum", OwnedTensor::f64(vec![l], &d.sum_n)));
            meta.insert("n_docs".to_string(), d.n_docs.to_string());
            meta.insert("n_doc_tokens".to_string(), d.n_tokens.to_string());
            meta.insert("doc_sum_n_sq".to_string(), d.sum_n_sq.to_string());
        }
    }
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
    if let Some((i, v)) = n_active.iter().enumerate().find(|(_, v)| **v < 0) {
        return Err(Error::format(
            path,
            format!("`n_active` holds {v} at latent {i}; a count cannot be negative"),
        ));
    }
    let stats = LatentStats {
        fingerprint,
        n_tokens,
        sum: f64s(sum.bytes.as_slice()),
        sum_sq: f64s(sum_sq.bytes.as_slice()),
        n_active: n_active.into_iter().map(|v| v as u64).collect(),
        max: max.to_f32(path)?,
        tokens: read_digest(path, meta, n_tokens)?,
        norms: read_norms(path, &st, n_tokens)?,
        docs: read_docs(path, &st, l, n_tokens)?,
        outlier_factor: match meta.get("outlier_factor") {
            None => crate::stats::DEFAULT_OUTLIER_FACTOR,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && *t > 1.0)
                .ok_or_else(|| {
                    Error::format(
                        path,
                        format!("metadata outlier_factor = `{v}` is not a number > 1"),
                    )
                })?,
        },
    };
    validate(path, &stats)?;
    Ok(stats)
}

/// Refuses statistics that no encoding pass can produce: a NaN or infinity in any
/// per-latent array (it would rank that latent first or last in every comparison), and
/// counts that contradict each other. `path` names the file in the error.
pub fn validate(path: &Path, stats: &LatentStats) -> Result<()> {
    let f64_arrays: [(&str, &[f64]); 2] = [("sum", &stats.sum), ("sum_sq", &stats.sum_sq)];
    for (name, values) in f64_arrays {
        first_non_finite(path, name, values.iter().copied())?;
    }
    first_non_finite(path, "max", stats.max.iter().map(|v| *v as f64))?;
    if let Some(d) = &stats.docs {
        first_non_finite(path, "doc_sum_sq", d.sum_sq.iter().copied())?;
        first_non_finite(path, "doc_n_sum", d.sum_n.iter().copied())?;
    }
    let n_tokens = stats.n_tokens;
    if let Some((i, v)) = stats
        .n_active
        .iter()
        .enumerate()
        .find(|(_, v)| **v > n_tokens)
    {
        return Err(Error::format(
            path,
            format!(
                "`n_active` of latent {i} is {v}, more than the {n_tokens} tokens counted                  (metadata n_tokens): the file is corrupt"
            ),
        ));
    }
    // Activations are >= 0 and a token counts as active when its activation is > 0, so a
    // latent that never fired has nothing to sum.
    let silent_but_summed = (0..stats.n_latents())
        .find(|&i| stats.n_active[i] == 0 && (stats.sum[i] != 0.0 || stats.max[i] != 0.0));
    if let Some(i) = silent_but_summed {
        return Err(Error::format(
            path,
            format!(
                "latent {i} has `n_active` 0 but `sum` {} and `max` {}: the file is corrupt",
                stats.sum[i], stats.max[i]
            ),
        ));
    }
    Ok(())
}

/// An error naming the array and the first latent whose value is NaN or infinite.
pub fn first_non_finite(
    path: &Path,
    name: &str,
    values: impl IntoIterator<Item = f64>,
) -> Result<()> {
    match values.into_iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((i, v)) => Err(Error::format(
            path,
            format!(
                "`{name}` of latent {i} is {v}; statistics must be finite (the file is corrupt)"
            ),
        )),
        None => Ok(()),
    }
}

/// The per-document sums (tensors `doc_sum_sq`, `doc_n_sum`), if recorded.
fn read_docs(
    path: &Path,
    st: &MappedSafetensors,
    l: usize,
    n_tokens: u64,
) -> Result<Option<DocSums>> {
    if !st.contains("doc_sum_sq") && !st.contains("doc_n_sum") {
        return Ok(None);
    }
    let sum_sq = vector(path, st, "doc_sum_sq", D::F64, Some(l))?;
    let sum_n = vector(path, st, "doc_n_sum", D::F64, Some(l))?;
    let meta = st.metadata();
    let n_docs = meta_count(path, meta, "n_docs")?
        .ok_or_else(|| Error::missing(path, "metadata `n_docs` (beside `doc_sum_sq`)"))?;
    let n_doc_tokens = meta_count(path, meta, "n_doc_tokens")?
        .ok_or_else(|| Error::missing(path, "metadata `n_doc_tokens` (beside `doc_sum_sq`)"))?;
    let sum_n_sq = meta
        .get("doc_sum_n_sq")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            Error::format(
                path,
                "metadata `doc_sum_n_sq` is missing or not a number >= 0",
            )
        })?;
    if n_doc_tokens > n_tokens || n_docs > n_doc_tokens {
        return Err(Error::format(
            path,
            format!(
                "metadata says {n_docs} documents of {n_doc_tokens} tokens for {n_tokens} tokens"
            ),
        ));
    }
    Ok(Some(DocSums {
        n_docs,
        n_tokens: n_doc_tokens,
        sum_n_sq,
        sum_sq: f64s(sum_sq.bytes.as_slice()),
        sum_n: f64s(sum_n.bytes.as_slice()),
    }))
}

/// A count in the metadata, if present.
fn meta_count(path: &Path, meta: &HashMap<String, String>, key: &str) -> Result<Option<u64>> {
    meta.get(key)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| Error::format(path, format!("metadata {key} = `{v}` is not a count")))
        })
        .transpose()
}

/// The token digest (metadata `token_hash`, `n_token_ids`, `n_doc_ids`), if recorded.
fn read_digest(
    path: &Path,
    meta: &HashMap<String, String>,
    n_tokens: u64,
) -> Result<Option<TokenDigest>> {
    let Some(h) = meta.get("token_hash") else {
        return Ok(None);
    };
    let hash = u64::from_str_radix(h, 16).map_err(|_| {
        Error::format(
            path,
            format!("metadata token_hash = `{h}` is not 16 hex digits"),
        )
    })?;
    let n_ids = meta_count(path, meta, "n_token_ids")?
        .ok_or_else(|| Error::missing(path, "metadata `n_token_ids` (beside `token_hash`)"))?;
    let n_docs = meta_count(path, meta, "n_doc_ids")?.unwrap_or(0);
    if n_ids > n_tokens || n_docs > n_ids {
        return Err(Error::format(
            path,
            format!("metadata says {n_ids} token ids and {n_docs} doc ids for {n_tokens} tokens"),
        ));
    }
    Ok(Some(TokenDigest {
        hash,
        n_ids,
        n_docs,
    }))
}

/// The norm histogram (tensors `norm_hist_bin`, `norm_hist_count`), if recorded; its
/// counts must add up to the counted tokens.
fn read_norms(path: &Path, st: &MappedSafetensors, n_tokens: u64) -> Result<Option<NormHistogram>> {
    if !st.contains("norm_hist_bin") && !st.contains("norm_hist_count") {
        return Ok(None);
    }
    let bins = vector(path, st, "norm_hist_bin", D::I64, None)?;
    let counts = vector(path, st, "norm_hist_count", D::I64, Some(bins.shape[0]))?;
    let bins = tensor_to_i64(&bins, path)?;
    let counts = tensor_to_i64(&counts, path)?;
    let mut h = NormHistogram::default();
    for (b, c) in bins.into_iter().zip(counts) {
        if c < 0 || h.bins.insert(b, c as u64).is_some() {
            return Err(Error::format(
                path,
                format!("`norm_hist_count` holds {c} for bin {b} (negative or repeated bin)"),
            ));
        }
    }
    if h.n_rows() != n_tokens {
        return Err(Error::format(
            path,
            format!(
                "the norm histogram counts {} rows, but n_tokens is {n_tokens}",
                h.n_rows()
            ),
        ));
    }
    Ok(Some(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LatentStats {
        let mut s = LatentStats::new("fp", 3);
        s.n_tokens = 10;
        s.sum = vec![1.0, 2.0, 3.0];
        s.sum_sq = vec![1.0, 4.0, 9.0];
        s.n_active = vec![1, 2, 10];
        s.max = vec![1.0, 2.0, 3.0];
        s
    }

    fn refused(edit: impl Fn(&mut LatentStats), want: &str) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.safetensors");
        let mut s = sample();
        edit(&mut s);
        write(&p, &s).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("s.safetensors") && e.contains(want), "{e}");
    }

    #[test]
    fn clean_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.safetensors");
        write(&p, &sample()).unwrap();
        assert_eq!(read(&p).unwrap().sum, sample().sum);
    }

    #[test]
    fn non_finite_values_are_refused_naming_array_and_latent() {
        refused(|s| s.sum[1] = f64::NAN, "`sum` of latent 1 is NaN");
        refused(
            |s| s.sum_sq[2] = f64::INFINITY,
            "`sum_sq` of latent 2 is inf",
        );
        refused(
            |s| s.max[0] = f32::NEG_INFINITY,
            "`max` of latent 0 is -inf",
        );
    }

    #[test]
    fn inconsistent_counts_are_refused() {
        refused(|s| s.n_active[1] = 11, "`n_active` of latent 1 is 11");
        refused(
            |s| s.n_active[0] = 0,
            "latent 0 has `n_active` 0 but `sum` 1",
        );
    }
}
