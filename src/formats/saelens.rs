//! SAELens: `cfg.json` + `sae_weights.safetensors` with `W_enc` [d, L], `W_dec` [L, d],
//! `b_enc` [L], `b_dec` [d] and, for JumpReLU, `threshold` [L].
//!
//! Two config layouts:
//! - v6: `architecture` (standard, topk, jumprelu, ...), `k`, `rescale_acts_by_decoder_norm`,
//!   and a `metadata` object (`hook_name`, `model_name`, `sae_lens_version`; an early 6.0
//!   spelling was `meta`).
//! - before 6.0: flat keys (`hook_point` or `hook_name`, `hook_point_layer`,
//!   `activation_fn_str` + `activation_fn_kwargs.k`, `normalize_activations` possibly a bool),
//!   `architecture` possibly absent (= standard).
//!
//! Semantics follow SAELens: input normalization (constant_norm_rescale: x * sqrt(d)/||x||;
//! layer_norm: (x - mean) / (unbiased std + 1e-5)), then `- b_dec` when
//! `apply_b_dec_to_input`, `h = x . W_enc + b_enc`, TopK keeps the k largest then ReLU
//! (optionally on `h * ||W_dec[i]||`), JumpReLU is `relu(h) * (h > threshold)`.
//! BatchTopK trains a global threshold and is saved as JumpReLU.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::mapped::MappedSafetensors;
use crate::sae::{Activation, Format, Normalization, Sae, SaeMeta};

use super::common::{
    check_scaling_factor, layer_from_hook, map_i64, map_str, matrix_from_tensor, value_usize,
    vector_from_tensor, Cfg, Stored,
};

/// Weights file name.
pub const WEIGHTS: &str = "sae_weights.safetensors";
/// Config file name.
pub const CFG: &str = "cfg.json";

/// Whether a SAELens cfg.json uses the v6 layout: a `metadata` (or `meta`) object, or a
/// top-level `sae_lens_version` of 6 or more.
pub fn is_v6(cfg: &Cfg) -> bool {
    if matches!(cfg.get("metadata"), Some(Value::Object(_)))
        || matches!(cfg.get("meta"), Some(Value::Object(_)))
    {
        return true;
    }
    cfg.get("sae_lens_version")
        .and_then(Value::as_str)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim_start_matches('v').parse::<u32>().ok())
        .is_some_and(|major| major >= 6)
}

/// What the config says about the arithmetic.
struct Parsed {
    architecture: String,
    d_in: usize,
    d_sae: usize,
    kind: Kind,
    subtract_b_dec: bool,
    normalization: Normalization,
    rescale: bool,
    hook_name: Option<String>,
    hook_layer: Option<i64>,
    model_name: Option<String>,
}

enum Kind {
    Relu,
    TopK(usize),
    /// JumpReLU, or BatchTopK saved with a (global) threshold.
    Threshold,
}

fn parse_normalization(cfg: &Cfg) -> Result<Normalization> {
    let v = cfg.get("normalize_activations");
    let s = match v {
        None => "none",
        // Before 6.0 this was a bool; true meant "expected_average_only_in".
        Some(Value::Bool(false)) => "none",
        Some(Value::Bool(true)) => "expected_average_only_in",
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(Error::format(
                &cfg.path,
                format!("normalize_activations must be a string, got {other}"),
            ))
        }
    };
    match s {
        "none" | "" => Ok(Normalization::None),
        "constant_norm_rescale" => Ok(Normalization::ConstantNormRescale),
        // SAELens hard-codes eps = 1e-5 for this normalization.
        "layer_norm" => Ok(Normalization::LayerNorm { eps: 1e-5 }),
        "expected_average_only_in" => Err(Error::format(
            &cfg.path,
            "normalize_activations = expected_average_only_in scales inputs by a dataset \
             constant that cfg.json does not store; fold the scaling factor into the weights \
             (SAELens fold_activation_norm_scaling_factor) and set it to none",
        )),
        other => Err(Error::format(
            &cfg.path,
            format!(
                "normalize_activations `{other}` is not supported \
                 (expected none, constant_norm_rescale or layer_norm)"
            ),
        )),
    }
}

fn k_value(cfg: &Cfg, legacy: bool) -> Result<usize> {
    let from_kwargs = cfg
        .object("activation_fn_kwargs")?
        .and_then(|m| m.get("k"))
        .cloned();
    let v = if legacy {
        from_kwargs.or_else(|| cfg.get("k").cloned())
    } else {
        cfg.get("k").cloned().or(from_kwargs)
    };
    let v = v.ok_or_else(|| Error::missing(&cfg.path, "config key `k` of a TopK SAE"))?;
    value_usize(&v)
        .ok_or_else(|| Error::format(&cfg.path, format!("k must be a positive integer, got {v}")))
}

fn parse(cfg: &Cfg, legacy: bool) -> Result<Parsed> {
    let d_in = cfg.usize_req("d_in")?;
    let d_sae = cfg.usize_req("d_sae")?;
    let architecture = match cfg.str_opt("architecture")? {
        Some(a) => a.to_string(),
        None if legacy => "standard".to_string(),
        None => return Err(Error::missing(&cfg.path, "config key `architecture`")),
    };
    let refuse = |what: &str| {
        Err(Error::format(
            &cfg.path,
            format!("architecture `{architecture}` ({what}) is not supported"),
        ))
    };
    let kind = match architecture.as_str() {
        "standard" | "relu" => {
            // Before 6.0, TopK SAEs were "standard" with activation_fn_str = "topk"; v6
            // configs carry no activation_fn, so this only ever reads old files.
            let act = cfg
                .str_opt("activation_fn_str")?
                .or(cfg.str_opt("activation_fn")?)
                .unwrap_or("relu");
            match act {
                "relu" => Kind::Relu,
                "topk" => Kind::TopK(k_value(cfg, legacy)?),
                other => {
                    return Err(Error::format(
                        &cfg.path,
                        format!(
                        "activation function `{other}` is not supported (expected relu or topk)"
                    ),
                    ))
                }
            }
        }
        "topk" => Kind::TopK(k_value(cfg, legacy)?),
        "jumprelu" | "batchtopk" | "matryoshka_batchtopk" => Kind::Threshold,
        "gated" => return refuse("gated SAE"),
        a if a.contains("transcoder") || a == "clt" => return refuse("transcoder"),
        _ => return refuse("unknown; expected standard, topk, jumprelu or batchtopk"),
    };
    let rescale = cfg
        .bool_opt("rescale_acts_by_decoder_norm")?
        .unwrap_or(false);
    if rescale && !matches!(kind, Kind::TopK(_)) {
        return Err(Error::format(
            &cfg.path,
            format!(
                "rescale_acts_by_decoder_norm with architecture `{architecture}` is not supported \
                 (only TopK rescaling is implemented)"
            ),
        ));
    }
    if let Kind::TopK(k) = kind {
        if k == 0 || k > d_sae {
            return Err(Error::format(
                &cfg.path,
                format!("k = {k} must be between 1 and d_sae = {d_sae}"),
            ));
        }
    }
    // Hook metadata: v6 nests it, older configs are flat; read whichever is there so a
    // forced reading of either layout still finds it.
    let empty = serde_json::Map::new();
    let nested = cfg
        .object("metadata")?
        .or(cfg.object("meta")?)
        .unwrap_or(&empty);
    let flat = &cfg.obj;
    let pick = |key: &str| map_str(nested, key).or_else(|| map_str(flat, key));
    let hook_name = pick("hook_name").or_else(|| pick("hook_point"));
    let hook_layer = [nested, flat]
        .iter()
        .find_map(|m| map_i64(m, "hook_layer").or_else(|| map_i64(m, "hook_point_layer")))
        .or_else(|| hook_name.as_deref().and_then(layer_from_hook));
    let model_name = pick("model_name");
    Ok(Parsed {
        architecture,
        d_in,
        d_sae,
        kind,
        subtract_b_dec: cfg.bool_opt("apply_b_dec_to_input")?.unwrap_or(true),
        normalization: parse_normalization(cfg)?,
        rescale,
        hook_name,
        hook_layer,
        model_name,
    })
}

/// The directory of a SAELens path (a directory, or a file inside one).
pub fn dir_of(path: &Path) -> PathBuf {
    if path.is_file() {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        path.to_path_buf()
    }
}

/// Loads a SAELens directory (or its weights / cfg file). `legacy` selects the pre-6.0
/// reading of the config; `None` decides from the config itself.
pub fn load(path: &Path, legacy: Option<bool>) -> Result<Sae> {
    let dir = dir_of(path);
    let cfg_path = dir.join(CFG);
    if !cfg_path.is_file() {
        return Err(Error::missing(&dir, "cfg.json (SAELens config)"));
    }
    let cfg = Cfg::read(&cfg_path)?;
    let legacy = legacy.unwrap_or_else(|| !is_v6(&cfg));
    let p = parse(&cfg, legacy)?;
    let (l, d) = (p.d_sae, p.d_in);

    let file = if path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    {
        path.to_path_buf()
    } else {
        dir.join(WEIGHTS)
    };
    let st = MappedSafetensors::open(&file)?;
    let w_enc = matrix_from_tensor(&file, &st.tensor("W_enc")?, l, d, Stored::DimByLatents)?;
    let w_dec = matrix_from_tensor(&file, &st.tensor("W_dec")?, l, d, Stored::LatentsByDim)?;
    let b_enc = vector_from_tensor(&file, &st.tensor("b_enc")?, l)?;
    let b_dec = vector_from_tensor(&file, &st.tensor("b_dec")?, d)?;
    if let Some(sf) = st.get("scaling_factor") {
        let n = sf.numel();
        check_scaling_factor(&file, &vector_from_tensor(&file, &sf, n)?)?;
    }
    let threshold = match p.kind {
        Kind::Threshold => Some(threshold(&file, &st, l, &p.architecture)?),
        _ => None,
    };
    let activation = match p.kind {
        Kind::Relu => Activation::Relu,
        Kind::TopK(k) => Activation::TopK { k },
        Kind::Threshold => Activation::JumpRelu,
    };
    let sae = Sae {
        meta: SaeMeta {
            format: if legacy {
                Format::SaeLensLegacy
            } else {
                Format::SaeLens
            },
            source: dir,
            architecture: p.architecture,
            hook_name: p.hook_name,
            hook_layer: p.hook_layer,
            model_name: p.model_name,
            dtype: w_enc.dtype(),
        },
        w_enc,
        w_dec,
        b_enc,
        b_dec,
        threshold,
        activation,
        subtract_b_dec: p.subtract_b_dec,
        normalization: p.normalization,
        rescale_acts_by_decoder_norm: p.rescale,
    };
    sae.validate()?;
    Ok(sae)
}

/// The per-latent threshold: `threshold`, else `exp(log_threshold)` (SAELens training
/// checkpoints), else a BatchTopK checkpoint's scalar `topk_threshold` copied to every latent.
fn threshold(file: &Path, st: &MappedSafetensors, l: usize, arch: &str) -> Result<Vec<f32>> {
    if let Some(t) = st.get("threshold") {
        return vector_from_tensor(file, &t, l);
    }
    if let Some(t) = st.get("log_threshold") {
        return Ok(vector_from_tensor(file, &t, l)?
            .into_iter()
            .map(f32::exp)
            .collect());
    }
    if let Some(t) = st.get("topk_threshold") {
        if t.numel() != 1 {
            return Err(Error::shape(file, "topk_threshold", &t.shape, "a scalar"));
        }
        let v = vector_from_tensor(file, &t, 1).or_else(|_| {
            // A 0-d tensor has shape []; read its single element directly.
            let mut alt = t.clone();
            alt.shape = vec![1];
            vector_from_tensor(file, &alt, 1)
        })?;
        return Ok(vec![v[0]; l]);
    }
    Err(Error::missing(
        file,
        format!("tensor `threshold` required by architecture `{arch}`"),
    ))
}
