//! Loads a crosscoder as the fork's `save_pretrained` writes it.
//!
//! `config.json` holds the constructor's JSON-able arguments (`activation_dim`,
//! `dict_size`, `num_layers`, `code_normalization`, BatchTopK's `k`, ...; tensors such as
//! `activation_mean` are written as null). `model.safetensors` holds the state dict:
//!
//! | tensor | shape | |
//! |---|---|---|
//! | encoder.weight | [n_models, d, L] | read in place as the `[n_models * d, L]` encoder |
//! | encoder.bias | [L] | |
//! | decoder.weight | [n_models, L, d] | interleaved once into `[L, n_models * d]`, dtype kept |
//! | decoder.bias | [n_models, d] | |
//! | code_normalization_id | [] i64 | must agree with the config |
//! | activation_mean, activation_std | [n_models, d] | NaN = no input normalization |
//! | activation_global_scale, target_rms | [] | |
//! | threshold | [] or [n_models] (DECOUPLED) | BatchTopKCrossCoder only |
//! | k | [] i32 | BatchTopKCrossCoder only (training) |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::formats::common::{check_finite, vector_from_tensor, Cfg};
use crate::io::mapped::{tensor_to_i64, MappedSafetensors, MappedTensor};
use crate::matrix::{Bytes, Layout, Matrix};
use crate::sae::{Activation, Format, LatentScales, Normalization, Sae, SaeMeta};

use super::{CodeNormalization, Crosscoder, CrosscoderClass, CrosscoderMeta, InputNorm};

/// Weights file name `save_pretrained` writes.
pub const WEIGHTS: &str = "model.safetensors";

/// `(model.safetensors, config.json)` for a directory or a `.safetensors` path.
pub fn files(path: &Path) -> (PathBuf, PathBuf) {
    if path.is_dir() {
        (path.join(WEIGHTS), path.join("config.json"))
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        (path.to_path_buf(), dir.join("config.json"))
    }
}

/// Whether `path` looks like a saved crosscoder: a safetensors file beside a config.json
/// with `num_layers`, `dict_size` and `activation_dim`. Reads only the config.
pub fn looks_like(path: &Path) -> bool {
    let (weights, cfg) = files(path);
    if !weights.is_file() || weights.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return false;
    }
    Cfg::read(&cfg).is_ok_and(|c| {
        ["num_layers", "dict_size", "activation_dim"]
            .iter()
            .all(|k| c.get(k).is_some())
    })
}

/// A config key that must be null or absent: a constructor option this engine does not implement.
fn refuse_set(cfg: &Cfg, cfg_path: &Path, key: &str, why: &str) -> Result<()> {
    match cfg.get(key) {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(v) => Err(Error::format(
            cfg_path,
            format!("{key} = {v}: {why}; not supported"),
        )),
    }
}

fn code_normalization(cfg: &Cfg, cfg_path: &Path) -> Result<CodeNormalization> {
    let name = cfg
        .str_opt("code_normalization")?
        .unwrap_or("CROSSCODER")
        .to_ascii_uppercase();
    let alpha = |key: &str, default: f32| -> Result<f32> {
        match cfg.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().map(|a| a as f32).ok_or_else(|| {
                Error::format(cfg_path, format!("{key} = {v}: MIXED needs a number"))
            }),
        }
    };
    Ok(match name.as_str() {
        "CROSSCODER" => CodeNormalization::Crosscoder,
        "SAE" => CodeNormalization::Sae,
        "MIXED" => CodeNormalization::Mixed {
            alpha_sae: alpha("code_normalization_alpha_sae", 1.0)?,
            alpha_cc: alpha("code_normalization_alpha_cc", 0.1)?,
        },
        "NONE" => CodeNormalization::None,
        "DECOUPLED" => CodeNormalization::Decoupled,
        other => {
            return Err(Error::format(
                cfg_path,
                format!(
                "code_normalization `{other}` is unknown (CROSSCODER, SAE, MIXED, NONE, DECOUPLED)"
            ),
            ))
        }
    })
}

fn expect_shape(file: &Path, t: &MappedTensor, want: &[usize], what: &str) -> Result<()> {
    if t.shape != want {
        return Err(Error::shape(
            file,
            &t.name,
            &t.shape,
            format!("{want:?} ({what})"),
        ));
    }
    Ok(())
}

/// A 0-d or 1-d float tensor of `want` elements as f32.
fn small_floats(file: &Path, t: &MappedTensor, want: &[usize]) -> Result<Vec<f32>> {
    expect_shape(file, t, want, "from config.json")?;
    t.to_f32(file)
}

/// `[n_models][L]` decoder row norms of an interleaved `[L, n_models * d]` decoder,
/// each summed in f64 and rounded once to f32.
pub fn decoder_norms(w_dec: &Matrix, n_models: usize, d: usize) -> Vec<Vec<f32>> {
    let l = w_dec.rows();
    let mut out = vec![Vec::with_capacity(l); n_models];
    const TILE: usize = 1024;
    let mut buf = vec![0f32; TILE.min(l.max(1)) * n_models * d];
    let mut r = 0;
    while r < l {
        let t = TILE.min(l - r);
        let tile = &mut buf[..t * n_models * d];
        w_dec.rows_f32(r..r + t, tile);
        for row in tile.chunks_exact(n_models * d) {
            for (m, part) in row.chunks_exact(d).enumerate() {
                let ss: f64 = part.iter().map(|v| (*v as f64) * (*v as f64)).sum();
                out[m].push(ss.sqrt() as f32);
            }
        }
        r += t;
    }
    out
}

/// The fork's `get_code_normalization`, in f32 as torch computes it: `[L]`, or
/// `[n_models * L]` (model-major) for DECOUPLED.
pub fn code_norms(norm: &CodeNormalization, w_dec: &Matrix, n_models: usize, d: usize) -> Vec<f32> {
    let l = w_dec.rows();
    let per_model = decoder_norms(w_dec, n_models, d);
    // torch sums the per-model f32 norms in f32, in model order.
    let cc = || -> Vec<f32> {
        (0..l)
            .map(|j| per_model.iter().fold(0f32, |s, m| s + m[j]))
            .collect()
    };
    let sae = || -> Vec<f32> { w_dec.row_norms() };
    match *norm {
        CodeNormalization::Crosscoder => cc(),
        CodeNormalization::Sae => sae(),
        CodeNormalization::Mixed {
            alpha_sae,
            alpha_cc,
        } => sae()
            .iter()
            .zip(cc())
            .map(|(s, c)| s * alpha_sae + c * alpha_cc)
            .collect(),
        CodeNormalization::None => vec![1.0; l],
        CodeNormalization::Decoupled => per_model.concat(),
    }
}

/// Interleaves `decoder.weight` `[n, L, d]` into `[L, n * d]` rows, keeping its dtype.
fn interleave_decoder(t: &MappedTensor, n: usize, l: usize, d: usize, size: usize) -> Vec<u8> {
    let src = t.bytes.as_slice();
    let row = d * size;
    let mut out = vec![0u8; src.len()];
    for j in 0..l {
        for m in 0..n {
            let from = (m * l + j) * row;
            let to = (j * n + m) * row;
            out[to..to + row].copy_from_slice(&src[from..from + row]);
        }
    }
    out
}

/// Loads a crosscoder directory (or its `model.safetensors`).
pub fn load(path: &Path) -> Result<Crosscoder> {
    let (file, cfg_path) = files(path);
    if !cfg_path.is_file() {
        return Err(Error::missing(
            &cfg_path,
            "config.json (save_pretrained's crosscoder config)",
        ));
    }
    let cfg = Cfg::read(&cfg_path)?;
    let d = cfg.usize_req("activation_dim")?;
    let l = cfg.usize_req("dict_size")?;
    let n = cfg.usize_req("num_layers")?;
    if d == 0 || l == 0 || n == 0 {
        return Err(Error::format(
            &cfg_path,
            format!("activation_dim {d}, dict_size {l}, num_layers {n}: all must be at least 1"),
        ));
    }
    refuse_set(
        &cfg,
        &cfg_path,
        "encoder_layers",
        "an encoder over a subset of the models",
    )?;
    refuse_set(
        &cfg,
        &cfg_path,
        "latent_processor",
        "a latent processor between encode and decode",
    )?;
    if let Some(nd) = cfg
        .get("num_decoder_layers")
        .filter(|v| !v.is_null())
        .map(|_| cfg.usize_req("num_decoder_layers"))
        .transpose()?
    {
        if nd != n {
            return Err(Error::format(
                &cfg_path,
                format!("num_decoder_layers = {nd} differs from num_layers = {n}; not supported"),
            ));
        }
    }
    let code_norm = code_normalization(&cfg, &cfg_path)?;

    let st = MappedSafetensors::open(&file)?;
    let enc = st.tensor("encoder.weight")?;
    expect_shape(
        &file,
        &enc,
        &[n, d, l],
        "[num_layers, activation_dim, dict_size]",
    )?;
    let dec = st.tensor("decoder.weight")?;
    expect_shape(
        &file,
        &dec,
        &[n, l, d],
        "[num_layers, dict_size, activation_dim]",
    )?;
    let enc_dtype = enc.float_dtype(&file)?;
    let dec_dtype = dec.float_dtype(&file)?;
    let w_enc = Matrix::new(enc.bytes.clone(), enc_dtype, l, n * d, Layout::Transposed)
        .map_err(|e| Error::format(&file, format!("tensor `encoder.weight`: {e}")))?;
    let w_dec = Matrix::new(
        Bytes::Owned(Arc::new(interleave_decoder(
            &dec,
            n,
            l,
            d,
            dec_dtype.size(),
        ))),
        dec_dtype,
        l,
        n * d,
        Layout::RowMajor,
    )
    .map_err(|e| Error::format(&file, format!("tensor `decoder.weight`: {e}")))?;
    let b_enc = vector_from_tensor(&file, &st.tensor("encoder.bias")?, l)?;
    let b_dec_t = st.tensor("decoder.bias")?;
    let b_dec = small_floats(&file, &b_dec_t, &[n, d])?;
    check_finite(&file, "decoder.bias", &b_dec)?;

    if let Some(t) = st.get("code_normalization_id") {
        let id = tensor_to_i64(&t, &file)?;
        if id.len() != 1 || id[0] != code_norm.id() {
            return Err(Error::format(
                &file,
                format!(
                    "code_normalization_id {id:?} disagrees with config.json's code_normalization {} (id {})",
                    code_norm.name(),
                    code_norm.id()
                ),
            ));
        }
    }

    let (threshold, k) = match st.get("threshold") {
        None => {
            if code_norm.decoupled() {
                return Err(Error::format(
                    &file,
                    "DECOUPLED code normalization without a `threshold` tensor: only \
                     BatchTopKCrossCoder has per-model codes",
                ));
            }
            (None, None)
        }
        Some(t) => {
            let want: &[usize] = if code_norm.decoupled() { &[n] } else { &[] };
            let th = small_floats(&file, &t, want)?;
            check_finite(&file, "threshold", &th)?;
            if let Some(bad) = th.iter().find(|v| **v < 0.0) {
                return Err(Error::format(
                    &file,
                    format!(
                        "threshold {bad} is negative: it was never calibrated (training encodes \
                         with a top-k over the whole batch until it is set); a batch-dependent \
                         code is not supported"
                    ),
                ));
            }
            let k = match st.get("k") {
                Some(kt) => tensor_to_i64(&kt, &file)?.first().copied(),
                None => None,
            };
            (Some(th), k)
        }
    };

    let input_norm = input_norm(&st, &file, n, d)?;
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        file.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    assemble(Parts {
        source: dir,
        n,
        d,
        w_enc,
        w_dec,
        b_enc,
        b_dec,
        code_norm,
        threshold,
        k,
        input_norm,
    })
}

/// A crosscoder's pieces in the engine's layout: `w_enc` logical `[L, n * d]`, `w_dec`
/// interleaved `[L, n * d]` (row j = every model's decoder row j), `b_dec` `[n * d]`.
pub struct Parts {
    /// Where it came from (reported).
    pub source: PathBuf,
    /// Models.
    pub n: usize,
    /// Width of one model's activations.
    pub d: usize,
    /// Encoder.
    pub w_enc: Matrix,
    /// Interleaved decoders.
    pub w_dec: Matrix,
    /// `[L]`
    pub b_enc: Vec<f32>,
    /// `[n * d]`
    pub b_dec: Vec<f32>,
    /// Code normalization.
    pub code_norm: CodeNormalization,
    /// Threshold(s): None for the ReLU CrossCoder, one, or one per model (DECOUPLED).
    pub threshold: Option<Vec<f32>>,
    /// BatchTopK's k.
    pub k: Option<i64>,
    /// Input normalization.
    pub input_norm: Option<InputNorm>,
}

/// Builds a crosscoder from its pieces (the loader, and in-memory crosscoders such as
/// `sae-bench verify`'s), checking them against each other.
pub fn assemble(p: Parts) -> Result<Crosscoder> {
    let Parts {
        source,
        n,
        d,
        w_enc,
        w_dec,
        b_enc,
        b_dec,
        code_norm,
        threshold,
        k,
        input_norm,
    } = p;
    let l = w_enc.rows();
    let class = if threshold.is_some() {
        CrosscoderClass::BatchTopK
    } else {
        CrosscoderClass::Relu
    };
    let want_th = if code_norm.decoupled() { n } else { 1 };
    if threshold
        .as_ref()
        .is_some_and(|t| t.len() != want_th || t.iter().any(|v| v.is_nan() || *v < 0.0))
    {
        return Err(Error::format(
            &source,
            format!("{want_th} non-negative threshold(s) expected, got {threshold:?}"),
        ));
    }
    if code_norm.decoupled() && threshold.is_none() {
        return Err(Error::format(
            &source,
            "DECOUPLED code normalization needs per-model thresholds",
        ));
    }
    if input_norm.as_ref().is_some_and(|m| m.mean.len() != n * d) {
        return Err(Error::format(
            &source,
            format!("activation_mean must hold {} values", n * d),
        ));
    }
    if input_norm.is_some() && code_norm.decoupled() {
        // 48debb2's encode_decoupled calls CrossCoder.encode with its default
        // normalize_activations=True after BatchTopKCrossCoder.encode normalized once.
        return Err(Error::format(
            &source,
            "DECOUPLED code normalization with an input normalizer: the library normalizes \
             the input twice on that path; not supported",
        ));
    }
    if w_dec.rows() != l || w_dec.cols() != n * d || w_enc.cols() != n * d {
        return Err(Error::format(
            &source,
            format!(
                "encoder [{l}, {}] and decoder [{}, {}] do not fit {n} models of width {d}",
                w_enc.cols(),
                w_dec.rows(),
                w_dec.cols()
            ),
        ));
    }
    let norms = code_norms(&code_norm, &w_dec, n, d);
    let mut conventions = vec![format!(
        "{}: encoder [{n}, {d}, {l}] read as one GEMM over the {n} models' concatenated activations",
        class.name()
    )];
    if class == CrosscoderClass::BatchTopK {
        conventions.push(format!(
            "threshold compared with the code times its {} normalization; the output code is unscaled",
            code_norm.name()
        ));
    }
    if input_norm.is_some() {
        conventions.push(
            "input normalized as (x - activation_mean) * activation_global_scale, outputs de-normalized"
                .into(),
        );
    }
    let sae = Sae {
        meta: SaeMeta {
            format: Format::DictionaryLearning,
            source: source.clone(),
            architecture: format!("crosscoder-{}", class.name()),
            hook_name: None,
            hook_layer: None,
            model_name: None,
            dtype: w_enc.dtype(),
            conventions: conventions.clone(),
            warnings: Vec::new(),
        },
        w_enc,
        w_dec,
        b_enc,
        b_dec,
        threshold: None,
        activation: Activation::Relu,
        subtract_b_dec: false,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: false,
        scales: LatentScales::default(),
    };
    sae.validate()?;
    Ok(Crosscoder {
        meta: CrosscoderMeta {
            source,
            class,
            k,
            conventions,
        },
        n_models: n,
        d,
        sae: Arc::new(sae),
        code_norm,
        threshold,
        norms,
        input_norm,
    })
}

/// `activation_mean` / `activation_std` / `activation_global_scale`: the library
/// normalizes only when neither mean nor std holds a NaN (its "no normalizer" marker).
fn input_norm(
    st: &MappedSafetensors,
    file: &Path,
    n: usize,
    d: usize,
) -> Result<Option<InputNorm>> {
    let (Some(mean_t), Some(std_t)) = (st.get("activation_mean"), st.get("activation_std")) else {
        return Ok(None);
    };
    let mean = small_floats(file, &mean_t, &[n, d])?;
    let std = small_floats(file, &std_t, &[n, d])?;
    if mean.iter().chain(&std).any(|v| v.is_nan()) {
        return Ok(None);
    }
    check_finite(file, "activation_mean", &mean)?;
    let scale_t = st.tensor("activation_global_scale")?;
    let scale = small_floats(file, &scale_t, &[])?[0];
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::format(
            file,
            format!("activation_global_scale {scale}: expected a positive finite number"),
        ));
    }
    Ok(Some(InputNorm { mean, scale }))
}
