//! Writes an SAE in the SAELens v6 layout: `cfg.json` + `sae_weights.safetensors`.
//!
//! The safetensors serializer wants every tensor in memory, which a 17 GB matrix cannot
//! be; so we write the 8-byte header length and the JSON header ourselves, then stream each
//! tensor's bytes. A matrix already stored in the wanted orientation is copied in chunks;
//! otherwise it is transposed block by block (a band of stored rows at a time, each output
//! row's slice written at its offset), so memory stays at one band whatever the size.
//! Files are written under temporary names and renamed when complete, weights first.
//! Per-latent scales (a folded decoder norm, a finetuning scaling factor) have no field
//! in the SAELens layout, so they are folded into the weights as SAELens itself folds
//! them: encoder rows, b_enc and thresholds times the code scale, decoder rows times
//! decode_scale / code_scale (those matrices then go through f32, a band at a time).
//! An input scale c (expected_average_only_in with its constant) is folded the way
//! SAELens's `fold_activation_norm_scaling_factor` does: W_enc times c, W_dec and b_dec
//! divided by c.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::dtype::{convert_from_f32, convert_to_f32, DType};
use crate::error::{Error, Result};
use crate::matrix::{Layout, Matrix};
use crate::sae::{Activation, Normalization, Sae};

use super::saelens::{CFG, WEIGHTS};

/// Bytes per streamed chunk / transpose band.
const BAND_BYTES: usize = 32 << 20;

/// The SAELens version we declare: SAELens reads configs without a version >= 6 as pre-6.0.
const DECLARED_SAELENS_VERSION: &str = "6.0.0";

/// Where a tensor's bytes come from.
enum Source<'a> {
    /// A logical [L, d] matrix to be written stored as `[rows, cols]` of `want`, each
    /// logical row multiplied by `row_scale[i]` when given.
    Matrix {
        m: &'a Matrix,
        want: Layout,
        row_scale: Option<&'a [f32]>,
    },
    /// Small f32 values, written as `dtype`.
    Vector { values: &'a [f32], dtype: DType },
}

struct Entry<'a> {
    name: &'static str,
    dtype: DType,
    shape: Vec<usize>,
    source: Source<'a>,
}

impl Entry<'_> {
    fn len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Biases are held as f32; write them in the weights' dtype when that loses nothing
/// (the usual case: they were read from that dtype), else in f32.
fn vector_dtype(values: &[f32], weights: DType) -> DType {
    let bytes = convert_from_f32(weights, values);
    let mut back = vec![0f32; values.len()];
    convert_to_f32(weights, &bytes, &mut back);
    if back
        .iter()
        .zip(values)
        .all(|(a, b)| a.to_bits() == b.to_bits())
    {
        weights
    } else {
        DType::F32
    }
}

fn architecture(sae: &Sae) -> &'static str {
    match sae.activation {
        Activation::TopK { .. } => "topk",
        Activation::Relu => "standard",
        Activation::JumpRelu => "jumprelu",
    }
}

fn torch_dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
    }
}

/// The v6 cfg.json for `sae`.
pub fn cfg_json(sae: &Sae, dir: &Path) -> Result<Value> {
    let normalize = match sae.normalization {
        Normalization::None => "none",
        Normalization::ConstantNormRescale => "constant_norm_rescale",
        Normalization::LayerNorm { eps } if (eps - 1e-5).abs() <= 1e-12 => "layer_norm",
        Normalization::LayerNorm { eps } => {
            return Err(Error::format(
                dir,
                format!("SAELens layer_norm uses eps = 1e-5; this SAE uses {eps}"),
            ))
        }
        // SAELens stores no constant for expected_average_only_in: the factor is folded
        // into the weights as its fold_activation_norm_scaling_factor does.
        Normalization::Scale { .. } => "none",
    };
    if sae.scales.decode_scale.is_some() && sae.rescale_acts_by_decoder_norm {
        return Err(Error::format(
            dir,
            "a finetuning scaling factor cannot be folded into W_dec of a TopK SAE that \
             rescales by the decoder norms (the selection would change)",
        ));
    }
    let mut metadata = Map::new();
    if let Some(h) = &sae.meta.hook_name {
        metadata.insert("hook_name".into(), json!(h));
    }
    if let Some(l) = sae.meta.hook_layer {
        metadata.insert("hook_layer".into(), json!(l));
    }
    if let Some(m) = &sae.meta.model_name {
        metadata.insert("model_name".into(), json!(m));
    }
    metadata.insert("sae_lens_version".into(), json!(DECLARED_SAELENS_VERSION));
    metadata.insert(
        "sae_lens_training_version".into(),
        json!(DECLARED_SAELENS_VERSION),
    );
    let mut cfg = Map::new();
    cfg.insert("architecture".into(), json!(architecture(sae)));
    cfg.insert("d_in".into(), json!(sae.d_in()));
    cfg.insert("d_sae".into(), json!(sae.n_latents()));
    cfg.insert("dtype".into(), json!(torch_dtype_name(sae.w_enc.dtype())));
    cfg.insert("device".into(), json!("cpu"));
    cfg.insert("apply_b_dec_to_input".into(), json!(sae.subtract_b_dec));
    cfg.insert("normalize_activations".into(), json!(normalize));
    cfg.insert("reshape_activations".into(), json!("none"));
    if let Activation::TopK { k } = sae.activation {
        cfg.insert("k".into(), json!(k));
        cfg.insert(
            "rescale_acts_by_decoder_norm".into(),
            json!(sae.rescale_acts_by_decoder_norm),
        );
    }
    cfg.insert("metadata".into(), Value::Object(metadata));
    Ok(Value::Object(cfg))
}

/// Writes `sae` into `dir` (created if missing) as SAELens v6.
pub fn write_saelens(sae: &Sae, dir: &Path) -> Result<()> {
    sae.validate()?;
    let folded = Folded::of(sae);
    let cfg = cfg_json(sae, dir)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (l, d) = (sae.n_latents(), sae.d_in());
    let wdt = sae.w_enc.dtype();
    let mut entries = vec![
        Entry {
            name: "W_enc",
            dtype: sae.w_enc.dtype(),
            shape: vec![d, l],
            source: Source::Matrix {
                m: &sae.w_enc,
                want: Layout::Transposed,
                row_scale: folded.enc_scale.as_deref(),
            },
        },
        Entry {
            name: "W_dec",
            dtype: sae.w_dec.dtype(),
            shape: vec![l, d],
            source: Source::Matrix {
                m: &sae.w_dec,
                want: Layout::RowMajor,
                row_scale: folded.dec_scale.as_deref(),
            },
        },
    ];
    let mut vectors: Vec<(&'static str, &[f32])> =
        vec![("b_enc", &folded.b_enc), ("b_dec", &folded.b_dec)];
    if let (Activation::JumpRelu, Some(t)) = (sae.activation, &folded.threshold) {
        vectors.push(("threshold", t));
    }
    for (name, values) in vectors {
        let dtype = vector_dtype(values, wdt);
        entries.push(Entry {
            name,
            dtype,
            shape: vec![values.len()],
            source: Source::Vector { values, dtype },
        });
    }

    let weights = dir.join(WEIGHTS);
    crate::io::atomic::write_with(&weights, |tmp| write_safetensors(&weights, tmp, &entries))?;
    let text = serde_json::to_string_pretty(&cfg)
        .map_err(|e| Error::format(dir, format!("cannot serialize cfg.json: {e}")))?;
    crate::io::atomic::write_bytes(&dir.join(CFG), text.as_bytes())
}

/// The safetensors header (length prefix included) for `entries` laid out in order.
fn header(entries: &[Entry]) -> Vec<u8> {
    let mut map = Map::new();
    let mut offset = 0usize;
    for e in entries {
        let len = e.len();
        map.insert(
            e.name.to_string(),
            json!({
                "dtype": e.dtype.to_safetensors().to_string(),
                "shape": e.shape,
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    map.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut text = Value::Object(map).to_string().into_bytes();
    // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out
}

fn write_safetensors(target: &Path, tmp: &Path, entries: &[Entry]) -> Result<()> {
    let io = |e: std::io::Error| Error::io(target, e);
    let mut f = File::create(tmp).map_err(io)?;
    let head = header(entries);
    f.write_all(&head).map_err(io)?;
    let mut base = head.len() as u64;
    for e in entries {
        match &e.source {
            Source::Vector { values, dtype } => {
                f.write_all(&convert_from_f32(*dtype, values)).map_err(io)?;
            }
            Source::Matrix {
                m,
                want,
                row_scale: None,
            } => write_matrix(&mut f, base, m, *want, BAND_BYTES).map_err(io)?,
            Source::Matrix {
                m,
                want,
                row_scale: Some(scale),
            } => write_scaled_matrix(&mut f, base, m, *want, scale, BAND_BYTES).map_err(io)?,
        }
        base += e.len() as u64;
        f.seek(SeekFrom::Start(base)).map_err(io)?;
    }
    f.sync_all().map_err(io)
}

/// The vectors of `sae` with its per-latent scales folded in, and the decoder rows' factor.
struct Folded {
    b_enc: Vec<f32>,
    b_dec: Vec<f32>,
    threshold: Option<Vec<f32>>,
    enc_scale: Option<Vec<f32>>,
    dec_scale: Option<Vec<f32>>,
}

impl Folded {
    fn of(sae: &Sae) -> Folded {
        let l = sae.n_latents();
        let c = |i: usize| sae.scales.code_scale.as_ref().map_or(1.0, |c| c[i]);
        let s = |i: usize| sae.scales.decode_scale.as_ref().map_or(1.0, |s| s[i]);
        let input = match sae.normalization {
            Normalization::Scale { factor } => Some(factor),
            _ => None,
        };
        let k = input.unwrap_or(1.0);
        let scaled = !sae.scales.is_empty() || input.is_some();
        Folded {
            b_enc: (0..l).map(|i| sae.b_enc[i] * c(i)).collect(),
            b_dec: sae.b_dec.iter().map(|b| b / k).collect(),
            threshold: sae
                .threshold
                .as_ref()
                .map(|t| (0..l).map(|i| t[i] * c(i)).collect()),
            enc_scale: scaled.then(|| (0..l).map(|i| c(i) * k).collect()),
            dec_scale: scaled.then(|| (0..l).map(|i| s(i) / c(i) / k).collect()),
        }
    }
}

/// [`write_matrix`] with each logical row `i` multiplied by `scale[i]`: a band of logical
/// rows at a time through f32, written back in the matrix's dtype.
fn write_scaled_matrix(
    f: &mut File,
    base: u64,
    m: &Matrix,
    want: Layout,
    scale: &[f32],
    band_bytes: usize,
) -> std::io::Result<()> {
    let (l, d, dt) = (m.rows(), m.cols(), m.dtype());
    let s = dt.size();
    if l == 0 || d == 0 {
        return Ok(());
    }
    let band = (band_bytes / (d * 4)).clamp(1, l);
    let mut rows = vec![0f32; band * d];
    let mut col = vec![0f32; band];
    let mut r0 = 0;
    while r0 < l {
        let r1 = (r0 + band).min(l);
        let n = r1 - r0;
        let buf = &mut rows[..n * d];
        m.rows_f32(r0..r1, buf);
        for (i, row) in buf.chunks_exact_mut(d).enumerate() {
            row.iter_mut().for_each(|v| *v *= scale[r0 + i]);
        }
        match want {
            Layout::RowMajor => {
                f.seek(SeekFrom::Start(base + (r0 * d * s) as u64))?;
                f.write_all(&convert_from_f32(dt, buf))?;
            }
            Layout::Transposed => {
                for j in 0..d {
                    for (i, v) in col[..n].iter_mut().enumerate() {
                        *v = buf[i * d + j];
                    }
                    f.seek(SeekFrom::Start(base + ((j * l + r0) * s) as u64))?;
                    f.write_all(&convert_from_f32(dt, &col[..n]))?;
                }
            }
        }
        r0 = r1;
    }
    Ok(())
}

/// Writes logical matrix `m` at `base` stored in layout `want`, from its stored bytes.
fn write_matrix(
    f: &mut File,
    base: u64,
    m: &Matrix,
    want: Layout,
    band_bytes: usize,
) -> std::io::Result<()> {
    let raw = m.raw();
    if m.layout() == want {
        f.seek(SeekFrom::Start(base))?;
        for chunk in raw.chunks(band_bytes.max(1)) {
            f.write_all(chunk)?;
        }
        return Ok(());
    }
    // Stored as [a, b] row-major; the output is its transpose [b, a].
    let s = m.dtype().size();
    let (a, b) = match m.layout() {
        Layout::RowMajor => (m.rows(), m.cols()),
        Layout::Transposed => (m.cols(), m.rows()),
    };
    if a == 0 || b == 0 {
        return Ok(());
    }
    let band = (band_bytes / (b * s)).clamp(1, a);
    let mut col = vec![0u8; band * s];
    let mut r0 = 0;
    while r0 < a {
        let r1 = (r0 + band).min(a);
        let rows = &raw[r0 * b * s..r1 * b * s];
        let n = r1 - r0;
        for j in 0..b {
            // Output row j holds stored column j; this band supplies its entries r0..r1.
            for (i, dst) in col[..n * s].chunks_exact_mut(s).enumerate() {
                let src = (i * b + j) * s;
                dst.copy_from_slice(&rows[src..src + s]);
            }
            f.seek(SeekFrom::Start(base + ((j * a + r0) * s) as u64))?;
            f.write_all(&col[..n * s])?;
        }
        r0 = r1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;

    use crate::matrix::Bytes;

    fn read_at(path: &Path, base: usize, n: usize) -> Vec<f32> {
        let mut b = Vec::new();
        File::open(path).unwrap().read_to_end(&mut b).unwrap();
        crate::formats::common::bytes_to_f32(DType::F32, &b[base..base + n * 4])
    }

    #[test]
    fn banded_transpose_matches_naive_for_every_band_size() {
        let (rows, cols) = (7usize, 5usize);
        let vals: Vec<f32> = (0..rows * cols).map(|v| v as f32 - 3.5).collect();
        let row_major = Matrix::from_f32(&vals, rows, cols, DType::F32).unwrap();
        let mut t = vec![0f32; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = vals[r * cols + c];
            }
        }
        let transposed = Matrix::new(
            Bytes::Owned(Arc::new(convert_from_f32(DType::F32, &t))),
            DType::F32,
            rows,
            cols,
            Layout::Transposed,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        for band in [1, 4, 8, 20, 44, 1 << 20] {
            for (m, want, expect) in [
                (&row_major, Layout::Transposed, &t),
                (&row_major, Layout::RowMajor, &vals),
                (&transposed, Layout::RowMajor, &vals),
                (&transposed, Layout::Transposed, &t),
            ] {
                let mut f = File::create(&path).unwrap();
                f.write_all(&[0u8; 3]).unwrap();
                write_matrix(&mut f, 3, m, want, band).unwrap();
                drop(f);
                assert_eq!(&read_at(&path, 3, rows * cols), expect, "band {band}");
            }
        }
    }

    #[test]
    fn header_is_accepted_by_the_reference_reader() {
        let b = [1.0f32, 2.0];
        let entries = vec![Entry {
            name: "b_enc",
            dtype: DType::BF16,
            shape: vec![2],
            source: Source::Vector {
                values: &b,
                dtype: DType::BF16,
            },
        }];
        let mut bytes = header(&entries);
        assert_eq!(bytes.len() % 8, 0);
        bytes.extend(convert_from_f32(DType::BF16, &b));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("b_enc").unwrap().shape(), &[2]);
    }
}
