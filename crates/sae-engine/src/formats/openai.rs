//! openai/sparse_autoencoder `.pt` state dicts (`Autoencoder.state_dict()`):
//!
//! ```text
//! pre_bias [d], encoder.weight [L, d], latent_bias [L], decoder.weight [d, L],
//! stats_last_nonzero / latents_activation_frequency / latents_mean_square (training stats, ignored),
//! activation: "TopK" | "ReLU", activation_state_dict: {"k": int, "postact_fn": "ReLU"}
//! ```
//!
//! `latents = act(encoder(x - pre_bias) + latent_bias)`, `recons = decoder(latents) + pre_bias`.
//! `Autoencoder.from_state_dict` enables input LayerNorm exactly when the activation is
//! TopK (x' = (x - mean) / (std + 1e-5), unbiased std) and multiplies the output back by
//! std and adds the mean; ReLU autoencoders see raw inputs.

use std::path::Path;

use super::pickle::{self, Value};
use crate::error::{Error, Result};
use crate::sae::{Activation, Format, Normalization, Sae, SaeMeta};

/// Whether `path` is a `.pt` file holding an OpenAI autoencoder state dict.
pub fn looks_like(path: &Path) -> bool {
    path.is_file()
        && path.extension().and_then(|e| e.to_str()) == Some("pt")
        && pickle::load(path)
            .map(|f| f.get("pre_bias").is_some() && f.get("latent_bias").is_some())
            .unwrap_or(false)
}

const IGNORED: [&str; 3] = [
    "stats_last_nonzero",
    "latents_activation_frequency",
    "latents_mean_square",
];

/// Loads an OpenAI sparse_autoencoder `.pt` file.
pub fn load(path: &Path) -> Result<Sae> {
    if path.is_dir() {
        return Err(Error::format(
            path,
            "the openai format is one .pt file (an Autoencoder state dict), not a directory",
        ));
    }
    let file = pickle::load(path)?;
    for (k, _) in file.entries()? {
        let known = matches!(
            k,
            "pre_bias"
                | "encoder.weight"
                | "latent_bias"
                | "decoder.weight"
                | "activation"
                | "activation_state_dict"
        ) || IGNORED.contains(&k);
        if !known {
            return Err(Error::format(
                path,
                format!(
                    "unexpected entry `{k}` in an OpenAI autoencoder state dict; refusing to guess"
                ),
            ));
        }
    }
    let enc = file.tensor("encoder.weight")?;
    if enc.shape.len() != 2 {
        return Err(Error::shape(
            path,
            "encoder.weight",
            &enc.shape,
            "[n_latents, d_model]",
        ));
    }
    let (l, d) = (enc.shape[0], enc.shape[1]);
    let dec = file.tensor("decoder.weight")?;
    if dec.shape != [d, l] {
        return Err(Error::shape(
            path,
            "decoder.weight",
            &dec.shape,
            format!("[{d}, {l}] (d_model, n_latents); a tied autoencoder is not supported"),
        ));
    }
    let vec1 = |name: &str, len: usize| -> Result<Vec<f32>> {
        let t = file.tensor(name)?;
        if t.shape != [len] {
            return Err(Error::shape(path, name, &t.shape, format!("[{len}]")));
        }
        let v = t.to_f32(path, name)?;
        super::common::check_finite(path, name, &v)?;
        Ok(v)
    };
    let b_dec = vec1("pre_bias", d)?;
    let b_enc = vec1("latent_bias", l)?;

    let act_name = match file.get("activation") {
        None => "ReLU".to_string(),
        Some(Value::Str(s)) => s.clone(),
        Some(other) => {
            return Err(Error::format(
                path,
                format!("`activation` is {other:?}, expected a class name"),
            ))
        }
    };
    let (activation, normalization) = match act_name.as_str() {
        "ReLU" => (Activation::Relu, Normalization::None),
        "TopK" => {
            let sd = file.get("activation_state_dict");
            let k = sd
                .and_then(|v| v.get("k"))
                .and_then(Value::as_int)
                .filter(|k| *k > 0)
                .ok_or_else(|| {
                    Error::missing(
                        path,
                        "activation_state_dict.k (a positive integer) for a TopK autoencoder",
                    )
                })?;
            let post = sd
                .and_then(|v| v.get("postact_fn"))
                .and_then(Value::as_str)
                .unwrap_or("ReLU");
            if post != "ReLU" {
                return Err(Error::format(
                    path,
                    format!("TopK postact_fn `{post}` is not supported (only ReLU)"),
                ));
            }
            (
                Activation::TopK { k: k as usize },
                Normalization::LayerNorm { eps: 1e-5 },
            )
        }
        other => {
            return Err(Error::format(
                path,
                format!("activation `{other}` is not supported (TopK or ReLU)"),
            ))
        }
    };
    let w_enc = enc.matrix(path, "encoder.weight", true)?;
    let w_dec = dec.matrix(path, "decoder.weight", false)?;
    let sae = Sae {
        meta: SaeMeta {
            format: Format::OpenAi,
            source: path.to_path_buf(),
            architecture: act_name.to_lowercase(),
            hook_name: None,
            hook_layer: None,
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
        activation,
        subtract_b_dec: true,
        normalization,
        rescale_acts_by_decoder_norm: false,
        scales: Default::default(),
    };
    sae.validate()?;
    Ok(sae)
}
