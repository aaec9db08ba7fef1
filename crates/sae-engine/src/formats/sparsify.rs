//! EleutherAI sparsify: `cfg.json` + `sae.safetensors` with `encoder.weight` [L, d],
//! `encoder.bias` [L], `W_dec` [L, d], `b_dec` [d]. Encoding is
//! `topk(relu((x - b_dec) . W^T + b))`, which selects the same latents and values as the
//! canonical TopK-then-ReLU. The weights' dtype is whatever the file holds (often bf16).
//! A checkpoint directory usually holds one subfolder per hookpoint (`layers.6/`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::mapped::MappedSafetensors;
use crate::sae::{Activation, Format, Normalization, Sae, SaeMeta};

use super::common::{layer_from_hook, matrix_from_tensor, vector_from_tensor, Cfg, Stored};

/// Weights file name.
pub const WEIGHTS: &str = "sae.safetensors";

/// Whether a parsed cfg.json looks like sparsify's (it has `num_latents` or
/// `expansion_factor` and no SAELens `d_sae`).
pub fn looks_like(cfg: &Cfg) -> bool {
    cfg.get("d_sae").is_none()
        && (cfg.get("num_latents").is_some() || cfg.get("expansion_factor").is_some())
}

/// Subdirectories of `dir` that hold a sparsify checkpoint (cfg.json + sae.safetensors).
pub fn hookpoint_subdirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let p = e.path();
            p.is_dir() && p.join("cfg.json").is_file()
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Loads a sparsify checkpoint directory (or its `sae.safetensors`).
pub fn load(path: &Path) -> Result<Sae> {
    let dir: PathBuf = if path.is_file() {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        path.to_path_buf()
    };
    let cfg_path = dir.join("cfg.json");
    if !cfg_path.is_file() {
        let subs = hookpoint_subdirs(&dir);
        if !subs.is_empty() {
            return Err(Error::format(
                &dir,
                format!(
                    "holds one sparsify SAE per hookpoint; choose one of: {}",
                    subs.join(", ")
                ),
            ));
        }
        return Err(Error::missing(&dir, "cfg.json (sparsify config)"));
    }
    let cfg = Cfg::read(&cfg_path)?;
    let d = cfg.usize_req("d_in")?;
    let k = cfg.usize_req("k")?;
    let activation = cfg.str_opt("activation")?.unwrap_or("topk");
    if activation != "topk" {
        return Err(Error::format(
            &cfg_path,
            format!("activation `{activation}` is not supported (only topk)"),
        ));
    }
    if cfg.bool_opt("transcode")?.unwrap_or(false) {
        return Err(Error::format(
            &cfg_path,
            "is a transcoder (transcode: true); transcoders are not supported",
        ));
    }
    for key in ["skip_connection", "embed_skip", "gram_lookup"] {
        if cfg.bool_opt(key)?.unwrap_or(false) {
            return Err(Error::format(
                &cfg_path,
                format!("{key}: true adds a term the canonical SAE does not have; not supported"),
            ));
        }
    }
    let num_latents = cfg.usize_opt("num_latents")?.unwrap_or(0);
    let l = if num_latents > 0 {
        num_latents
    } else {
        // sparsify's default expansion factor when the key is absent.
        let ef = cfg.usize_opt("expansion_factor")?.unwrap_or(32);
        d.checked_mul(ef)
            .ok_or_else(|| Error::format(&cfg_path, "d_in x expansion_factor overflows"))?
    };
    if k == 0 || k > l {
        return Err(Error::format(
            &cfg_path,
            format!("k = {k} must be between 1 and the number of latents ({l})"),
        ));
    }

    let file = dir.join(WEIGHTS);
    let st = MappedSafetensors::open(&file)?;
    if st.contains("W_skip") {
        return Err(Error::format(
            &file,
            "has a W_skip tensor (skip connection); not supported",
        ));
    }
    let w_enc = matrix_from_tensor(
        &file,
        &st.tensor("encoder.weight")?,
        l,
        d,
        Stored::LatentsByDim,
    )?;
    let w_dec = matrix_from_tensor(&file, &st.tensor("W_dec")?, l, d, Stored::LatentsByDim)?;
    let b_enc = vector_from_tensor(&file, &st.tensor("encoder.bias")?, l)?;
    let b_dec = vector_from_tensor(&file, &st.tensor("b_dec")?, d)?;

    // By sparsify's convention the folder is named after the hookpoint.
    let hook = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.contains('.'));
    let sae = Sae {
        meta: SaeMeta {
            format: Format::Sparsify,
            source: dir.clone(),
            architecture: "topk".into(),
            hook_layer: hook.as_deref().and_then(layer_from_hook),
            hook_name: hook,
            model_name: None,
            dtype: w_enc.dtype(),
            conventions: Vec::new(),
            warnings: Vec::new(),
        },
        w_enc,
        w_dec,
        b_enc,
        b_dec,
        threshold: None,
        activation: Activation::TopK { k },
        subtract_b_dec: true,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: false,
        scales: Default::default(),
    };
    sae.validate()?;
    Ok(sae)
}
