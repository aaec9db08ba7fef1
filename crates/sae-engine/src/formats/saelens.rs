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
//! BatchTopK trains a global threshold and is saved as JumpReLU. A BatchTopK training
//! checkpoint (`architecture` batchtopk, `topk_threshold`) with `rescale_acts_by_decoder_norm`
//! (SAELens's default) compares the threshold with `h * ||W_dec[i]||` and outputs that
//! product, as the JumpReLU that SAELens's `save_inference_model` folds it into does:
//! here the threshold is divided by the norm and the codes carry it as a code scale.
//!
//! `normalize_activations` `expected_average_only_in` and `covariance_whitening` depend on
//! dataset constants that are not saved; SAELens reads both from disk as the identity,
//! and so does this loader, with a warning (the first takes its constant from
//! [`LoadOptions::norm_scale`]).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::mapped::MappedSafetensors;
use crate::sae::{Activation, Format, LatentScales, Normalization, Sae, SaeMeta};

use super::LoadOptions;

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
    /// Conventions applied and warnings, for `SaeMeta`.
    conventions: Vec<String>,
    warnings: Vec<String>,
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

/// The normalization, plus the conventions and warnings that go with it.
type ParsedNormalization = (Normalization, Vec<String>, Vec<String>);

fn parse_normalization(cfg: &Cfg, norm_scale: Option<f32>) -> Result<ParsedNormalization> {
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
    let plain = |n| Ok((n, Vec::new(), Vec::new()));
    match s {
        "none" | "" => plain(Normalization::None),
        "constant_norm_rescale" => plain(Normalization::ConstantNormRescale),
        // SAELens hard-codes eps = 1e-5 for this normalization.
        "layer_norm" => plain(Normalization::LayerNorm { eps: 1e-5 }),
        "expected_average_only_in" => match norm_scale {
            Some(factor) => Ok((
                Normalization::Scale { factor },
                vec![format!(
                    "normalize_activations expected_average_only_in: inputs multiplied by \
                     {factor} (--norm-scale) before encoding, outputs divided by it after decoding"
                )],
                Vec::new(),
            )),
            None => Ok((
                Normalization::None,
                vec![
                    "normalize_activations expected_average_only_in read as the identity \
                      (SAELens load_from_disk)"
                        .into(),
                ],
                vec![format!(
                    "{}: normalize_activations = expected_average_only_in needs the dataset's \
                     norm scaling factor (sqrt(d_in) / mean ||x||), which cfg.json does not \
                     store; encoding without it (the identity, as SAELens does from disk); \
                     pass --norm-scale FACTOR to apply it",
                    cfg.path.display()
                )],
            )),
        },
        "covariance_whitening" => Ok((
            Normalization::None,
            vec![
                "normalize_activations covariance_whitening read as the identity \
                  (SAELens load_from_disk)"
                    .into(),
            ],
            vec![format!(
                "{}: normalize_activations = covariance_whitening needs the whitening mean \
                 and matrix, which are not saved with the SAE; encoding without them (the \
                 identity, as SAELens does from disk); fold them into the weights with \
                 SAELens fold_activation_whitening for whitened codes",
                cfg.path.display()
            )],
        )),
        other => Err(Error::format(
            &cfg.path,
            format!(
                "normalize_activations `{other}` is not supported (expected none, \
                 constant_norm_rescale, layer_norm, expected_average_only_in or \
                 covariance_whitening)"
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

fn parse(cfg: &Cfg, legacy: bool, opts: &LoadOptions) -> Result<Parsed> {
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
    let batch_topk = matches!(architecture.as_str(), "batchtopk" | "matryoshka_batchtopk");
    if rescale && !matches!(kind, Kind::TopK(_)) && !batch_topk {
        return Err(Error::format(
            &cfg.path,
            format!(
                "rescale_acts_by_decoder_norm with architecture `{architecture}` is not \
                 supported (SAELens defines it for topk and batchtopk)"
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
    let (normalization, conventions, warnings) = parse_normalization(cfg, opts.norm_scale)?;
    Ok(Parsed {
        architecture,
        d_in,
        d_sae,
        kind,
        subtract_b_dec: cfg.bool_opt("apply_b_dec_to_input")?.unwrap_or(true),
        normalization,
        conventions,
        warnings,
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
pub fn load(path: &Path, legacy: Option<bool>, opts: &LoadOptions) -> Result<Sae> {
    let dir = dir_of(path);
    let cfg_path = dir.join(CFG);
    if !cfg_path.is_file() {
        return Err(Error::missing(&dir, "cfg.json (SAELens config)"));
    }
    let cfg = Cfg::read(&cfg_path)?;
    let legacy = legacy.unwrap_or_else(|| !is_v6(&cfg));
    let p = parse(&cfg, legacy, opts)?;
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
    let decode_scale = finetuning_scaling_factor(&cfg, &file, &st, l)?;
    let mut threshold = match p.kind {
        Kind::Threshold => Some(threshold(&file, &st, l, &p.architecture)?),
        _ => None,
    };
    let mut conventions = p.conventions;
    let mut scales = LatentScales {
        code_scale: None,
        decode_scale,
    };
    if scales.decode_scale.is_some() {
        conventions.push(
            "SAELens 5.x finetuning_scaling_factor: codes are multiplied by it before decoding"
                .into(),
        );
    }
    // BatchTopK with rescale_acts_by_decoder_norm: fire when h * n_i > t, output h * n_i
    // (n_i = ||W_dec[i]|| clamped at 1e-8, as SAELens's get_W_dec_norm); equivalently
    // h > t / n_i with the code scaled by n_i. TopK keeps its own rescale.
    let rescale_topk = p.rescale && matches!(p.kind, Kind::TopK(_));
    if let (true, Kind::Threshold, Some(t)) = (p.rescale, &p.kind, threshold.as_mut()) {
        let norms: Vec<f32> = w_dec.row_norms().into_iter().map(|n| n.max(1e-8)).collect();
        for (t, n) in t.iter_mut().zip(&norms) {
            *t /= n;
        }
        scales.code_scale = Some(norms);
        conventions.push(format!(
            "SAELens {} with rescale_acts_by_decoder_norm: the threshold applies to the \
             pre-activations times the decoder norms, and codes are in those units (as the \
             JumpReLU SAELens's save_inference_model folds it into)",
            p.architecture
        ));
    }
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
            conventions,
            warnings: p.warnings,
        },
        w_enc,
        w_dec,
        b_enc,
        b_dec,
        threshold,
        activation,
        subtract_b_dec: p.subtract_b_dec,
        normalization: p.normalization,
        rescale_acts_by_decoder_norm: rescale_topk,
        scales,
    };
    sae.validate()?;
    Ok(sae)
}

/// SAELens before 6.0: with `finetuning_scaling_factor: true` in cfg.json, decode is
/// `(f * s) @ W_dec + b_dec` with a per-latent `s`. Its disk loader reads `s` from a
/// tensor `scaling_factor` (dropped when all ones within `torch.allclose`; refused when
/// not and the flag is false); `save_model` writes it as `finetuning_scaling_factor`,
/// the module's own name, which is read the same way here.
fn finetuning_scaling_factor(
    cfg: &Cfg,
    file: &Path,
    st: &MappedSafetensors,
    l: usize,
) -> Result<Option<Vec<f32>>> {
    let flag = cfg.bool_opt("finetuning_scaling_factor")?.unwrap_or(false);
    let tensor =
        match (
            st.get("finetuning_scaling_factor"),
            st.get("scaling_factor"),
        ) {
            (Some(_), Some(_)) => return Err(Error::format(
                file,
                "holds both `finetuning_scaling_factor` and `scaling_factor`; refusing to guess \
                 which one applies",
            )),
            (a, b) => a.or(b),
        };
    let Some(t) = tensor else {
        if flag {
            return Err(Error::missing(
                file,
                "tensor `scaling_factor` (cfg.json sets finetuning_scaling_factor: true)",
            ));
        }
        return Ok(None);
    };
    let name = t.name.clone();
    let n = t.numel();
    let v = vector_from_tensor(file, &t, n)?;
    if v.iter().all(|x| (x - 1.0).abs() <= 1e-8 + 1e-5) {
        return Ok(None);
    }
    if !flag {
        // What check_scaling_factor says for the other formats.
        return check_scaling_factor(file, &v).map(|_| None);
    }
    if n != l {
        return Err(Error::shape(file, name, &[n], format!("[{l}] (d_sae)")));
    }
    Ok(Some(v))
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
