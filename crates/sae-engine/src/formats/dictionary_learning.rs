//! saprmarks/dictionary_learning SAEs: `ae.pt` (a torch state dict) + `config.json`
//! (`trainer.dict_class`, `trainer.k`, `trainer.layer`, `trainer.lm_name`, ...).
//!
//! | dict_class | tensors | canonical form |
//! |---|---|---|
//! | AutoEncoder | encoder.weight [L,d], encoder.bias [L], decoder.weight [d,L], bias [d] | ReLU, b_dec = bias, subtracted |
//! | AutoEncoderTopK | + b_dec [d], k (buffer), threshold (unused by its default encode) | TopK(k), b_dec subtracted |
//! | BatchTopKSAE | + b_dec [d], k, threshold (0-d) | JumpReLU with one global threshold, b_dec subtracted |
//! | JumpReluAutoEncoder | W_enc [d,L], b_enc [L], W_dec [L,d], b_dec [d], threshold [L] | JumpReLU, b_dec not subtracted |
//! | MatryoshkaBatchTopKSAE | W_enc [d,L], b_enc [L], W_dec [L,d], b_dec [d], k, threshold (0-d), group_sizes | JumpReLU with one global threshold, b_dec subtracted |
//!
//! BatchTopKSAE.encode and MatryoshkaBatchTopKSAE.encode default to `use_threshold=True`:
//! relu(h) * (relu(h) > threshold), the JumpReLU form (every group active, as
//! `from_pretrained` leaves it); AutoEncoderTopK.encode defaults to per-row top-k.
//!
//! `AutoEncoder.from_pretrained` (the library's default) calls `normalize_decoder`:
//! unless every decoder column norm n_i is already 1 (`torch.allclose`), it divides the
//! columns by n_i and multiplies the encoder rows and bias by it, so each code is
//! n_i times the stored weights' code. That is [`DlConvention::Folded`] (a code scale
//! of n_i, no weight copied); `from_pretrained(normalize_decoder=False)` is
//! [`DlConvention::Raw`].
//! JumpReluAutoEncoder's `apply_b_dec_to_input` is a plain attribute (False) that
//! `ae.pt` does not store, so b_dec is never subtracted.

use std::path::{Path, PathBuf};

use super::pickle::{self, TorchFile, TorchTensor};
use super::DlConvention;
use crate::error::{Error, Result};
use crate::sae::{Activation, Format, LatentScales, Normalization, Sae, SaeMeta};

/// The dictionary classes this loader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DictClass {
    /// `AutoEncoder`: ReLU.
    AutoEncoder,
    /// `AutoEncoderTopK`: TopK.
    AutoEncoderTopK,
    /// `BatchTopKSAE`: a global threshold at inference.
    BatchTopK,
    /// `JumpReluAutoEncoder`: per-latent thresholds.
    JumpRelu,
    /// `MatryoshkaBatchTopKSAE`: BatchTopK with nested dictionaries.
    Matryoshka,
}

/// `(ae.pt, config.json)` for a directory or an `ae.pt` path.
pub fn files(path: &Path) -> (PathBuf, PathBuf) {
    if path.is_dir() {
        (path.join("ae.pt"), path.join("config.json"))
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        (path.to_path_buf(), dir.join("config.json"))
    }
}

/// Whether `path` looks like a dictionary_learning SAE (a `.pt` plus a config.json
/// with a `trainer` section). Reads only the config.
pub fn looks_like(path: &Path) -> bool {
    let (ae, cfg) = files(path);
    if !ae.is_file() || ae.extension().and_then(|e| e.to_str()) != Some("pt") {
        return false;
    }
    std::fs::read(&cfg)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("trainer").is_some_and(|t| t.is_object()))
}

fn read_config(cfg: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read(cfg) {
        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
            .map(Some)
            .map_err(|e| Error::format(cfg, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(cfg, e)),
    }
}

fn class_from_config(trainer: &serde_json::Value) -> Option<DictClass> {
    let dict = trainer
        .get("dict_class")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let tr = trainer
        .get("trainer_class")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    match dict {
        "AutoEncoder" => return Some(DictClass::AutoEncoder),
        "AutoEncoderTopK" => return Some(DictClass::AutoEncoderTopK),
        "BatchTopKSAE" => return Some(DictClass::BatchTopK),
        "JumpReluAutoEncoder" => return Some(DictClass::JumpRelu),
        "MatryoshkaBatchTopKSAE" => return Some(DictClass::Matryoshka),
        _ => {}
    }
    if tr.contains("Matryoshka") {
        Some(DictClass::Matryoshka)
    } else if tr.contains("BatchTopK") {
        Some(DictClass::BatchTopK)
    } else if tr.contains("TopK") {
        Some(DictClass::AutoEncoderTopK)
    } else if tr.contains("JumpRelu") || tr.contains("JumpReLU") {
        Some(DictClass::JumpRelu)
    } else {
        None
    }
}

/// Loads a dictionary_learning SAE from a directory (ae.pt + config.json) or an ae.pt
/// path, as the library's default `from_pretrained` reads it.
pub fn load(path: &Path) -> Result<Sae> {
    load_with(path, DlConvention::default())
}

/// [`load`] with an explicit convention for `AutoEncoder` (other classes have one).
pub fn load_with(path: &Path, convention: DlConvention) -> Result<Sae> {
    let (ae_path, cfg_path) = files(path);
    let file = pickle::load(&ae_path)?;
    let config = read_config(&cfg_path)?;
    let trainer = config.as_ref().and_then(|c| c.get("trainer"));
    let names: Vec<&str> = file.entries()?.into_iter().map(|(k, _)| k).collect();
    let has = |k: &str| names.contains(&k);

    let class = if has("W_enc") && has("group_sizes") {
        DictClass::Matryoshka
    } else if has("W_enc") {
        DictClass::JumpRelu
    } else if has("bias") && !has("b_dec") {
        DictClass::AutoEncoder
    } else if has("b_dec") && has("encoder.weight") {
        // AutoEncoderTopK and BatchTopKSAE hold the same tensors; only the config tells them apart.
        match trainer.and_then(class_from_config) {
            Some(c @ (DictClass::AutoEncoderTopK | DictClass::BatchTopK)) => c,
            Some(other) => {
                return Err(Error::format(
                    &cfg_path,
                    format!("config says {other:?}, but {} holds TopK/BatchTopK tensors", ae_path.display()),
                ))
            }
            None => {
                return Err(Error::missing(
                    &cfg_path,
                    "trainer.dict_class (AutoEncoderTopK or BatchTopKSAE), needed to tell the two apart",
                ))
            }
        }
    } else {
        return Err(Error::format(
            &ae_path,
            format!(
                "unrecognized dictionary_learning state dict (keys {names:?}); supported: \
                 AutoEncoder, AutoEncoderTopK, BatchTopKSAE, JumpReluAutoEncoder, \
                 MatryoshkaBatchTopKSAE"
            ),
        ));
    };
    if let Some(c) = trainer.and_then(class_from_config) {
        let compatible = c == class
            || matches!(
                (c, class),
                (DictClass::AutoEncoderTopK, DictClass::BatchTopK)
                    | (DictClass::BatchTopK, DictClass::AutoEncoderTopK)
            );
        if !compatible {
            return Err(Error::format(
                &cfg_path,
                format!(
                    "config says {c:?}, but the tensors in {} are a {class:?}",
                    ae_path.display()
                ),
            ));
        }
    }
    let allowed: &[&str] = match class {
        DictClass::AutoEncoder => &["encoder.weight", "encoder.bias", "decoder.weight", "bias"],
        DictClass::AutoEncoderTopK | DictClass::BatchTopK => &[
            "encoder.weight",
            "encoder.bias",
            "decoder.weight",
            "b_dec",
            "k",
            "threshold",
        ],
        DictClass::JumpRelu => &["W_enc", "b_enc", "W_dec", "b_dec", "threshold"],
        DictClass::Matryoshka => &[
            "W_enc",
            "b_enc",
            "W_dec",
            "b_dec",
            "k",
            "threshold",
            "group_sizes",
        ],
    };
    if let Some(extra) = names.iter().find(|n| !allowed.contains(n)) {
        return Err(Error::format(
            &ae_path,
            format!("unexpected tensor `{extra}` for a {class:?}: it may change the arithmetic, refusing to guess"),
        ));
    }

    let mut sae = build(&file, class, trainer, &ae_path, &cfg_path)?;
    match class {
        DictClass::AutoEncoder => fold_decoder_norms(&mut sae, convention)?,
        DictClass::BatchTopK | DictClass::Matryoshka => sae.meta.conventions.push(format!(
            "dictionary_learning {}: encode(use_threshold=True), the library's default: \
             relu(h) kept where it exceeds the global threshold{}",
            if class == DictClass::Matryoshka {
                "MatryoshkaBatchTopKSAE"
            } else {
                "BatchTopKSAE"
            },
            if class == DictClass::Matryoshka {
                ", every group active (as from_pretrained leaves it)"
            } else {
                ""
            }
        )),
        _ => {}
    }
    sae.validate()?;
    Ok(sae)
}

fn vec1(file: &TorchFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = file.tensor(name)?;
    if t.shape != [len] {
        return Err(Error::shape(&file.path, name, &t.shape, format!("[{len}]")));
    }
    let v = t.to_f32(&file.path, name)?;
    super::common::check_finite(&file.path, name, &v)?;
    Ok(v)
}

fn dims2<'a>(file: &'a TorchFile, name: &str) -> Result<(usize, usize, &'a TorchTensor)> {
    let t = file.tensor(name)?;
    if t.shape.len() != 2 {
        return Err(Error::shape(&file.path, name, &t.shape, "a 2-D tensor"));
    }
    Ok((t.shape[0], t.shape[1], t))
}

fn cfg_usize(trainer: Option<&serde_json::Value>, key: &str) -> Option<usize> {
    trainer
        .and_then(|t| t.get(key))
        .and_then(|v| {
            v.as_u64().or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
        })
        .map(|v| v as usize)
}

fn build(
    file: &TorchFile,
    class: DictClass,
    trainer: Option<&serde_json::Value>,
    ae_path: &Path,
    cfg_path: &Path,
) -> Result<Sae> {
    let p = &file.path;
    let (w_enc, w_dec, l, d) = if matches!(class, DictClass::JumpRelu | DictClass::Matryoshka) {
        let (d, l, te) = dims2(file, "W_enc")?;
        let (l2, d2, td) = dims2(file, "W_dec")?;
        if (l2, d2) != (l, d) {
            return Err(Error::shape(
                p,
                "W_dec",
                &[l2, d2],
                format!("[{l}, {d}] to match W_enc [d, L]"),
            ));
        }
        (
            te.matrix(p, "W_enc", false)?,
            td.matrix(p, "W_dec", true)?,
            l,
            d,
        )
    } else {
        let (l, d, te) = dims2(file, "encoder.weight")?;
        let (d2, l2, td) = dims2(file, "decoder.weight")?;
        if (l2, d2) != (l, d) {
            return Err(Error::shape(
                p,
                "decoder.weight",
                &[d2, l2],
                format!("[{d}, {l}] to match encoder.weight [L, d]"),
            ));
        }
        (
            te.matrix(p, "encoder.weight", true)?,
            td.matrix(p, "decoder.weight", false)?,
            l,
            d,
        )
    };
    for (key, want) in [("dict_size", l), ("activation_dim", d)] {
        if let Some(v) = cfg_usize(trainer, key) {
            if v != want {
                return Err(Error::format(
                    cfg_path,
                    format!("trainer.{key} = {v}, but {} has {want}", ae_path.display()),
                ));
            }
        }
    }
    let (b_enc, b_dec) = match class {
        DictClass::JumpRelu | DictClass::Matryoshka => {
            (vec1(file, "b_enc", l)?, vec1(file, "b_dec", d)?)
        }
        DictClass::AutoEncoder => (vec1(file, "encoder.bias", l)?, vec1(file, "bias", d)?),
        _ => (vec1(file, "encoder.bias", l)?, vec1(file, "b_dec", d)?),
    };
    let (activation, threshold, subtract, arch) = match class {
        DictClass::AutoEncoder => (Activation::Relu, None, true, "standard"),
        DictClass::JumpRelu => (
            Activation::JumpRelu,
            Some(vec1(file, "threshold", l)?),
            false,
            "jumprelu",
        ),
        DictClass::AutoEncoderTopK => {
            let k = k_of(file, trainer, cfg_path)?;
            (Activation::TopK { k }, None, true, "topk")
        }
        DictClass::BatchTopK | DictClass::Matryoshka => {
            let t = file.tensor("threshold")?.scalar(p, "threshold")?;
            super::common::check_finite(p, "threshold", &[t as f32])?;
            if t < 0.0 {
                return Err(Error::format(
                    p,
                    format!("BatchTopK threshold is {t}: it was never set during training, so inference is undefined"),
                ));
            }
            if class == DictClass::Matryoshka {
                check_group_sizes(file, l)?;
            }
            (
                Activation::JumpRelu,
                Some(vec![t as f32; l]),
                true,
                if class == DictClass::Matryoshka {
                    "matryoshka_batchtopk"
                } else {
                    "batchtopk"
                },
            )
        }
    };
    let s = |k: &str| {
        trainer
            .and_then(|t| t.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let dtype = w_enc.dtype();
    Ok(Sae {
        meta: SaeMeta {
            format: Format::DictionaryLearning,
            source: ae_path.to_path_buf(),
            architecture: arch.to_string(),
            hook_name: s("submodule_name"),
            hook_layer: trainer
                .and_then(|t| t.get("layer"))
                .and_then(|v| v.as_i64()),
            model_name: s("lm_name"),
            dtype,
            conventions: Vec::new(),
            warnings: Vec::new(),
        },
        w_enc,
        w_dec,
        b_enc,
        b_dec,
        threshold,
        activation,
        subtract_b_dec: subtract,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: false,
        scales: Default::default(),
    })
}

/// k from the `k` buffer (what the module uses), else from `trainer.k`.
fn k_of(file: &TorchFile, trainer: Option<&serde_json::Value>, cfg_path: &Path) -> Result<usize> {
    if let Some(t) = file.opt_tensor("k")? {
        let k = t.scalar(&file.path, "k")?;
        if k < 1.0 || k.fract() != 0.0 {
            return Err(Error::format(
                &file.path,
                format!("k buffer is {k}, expected a positive integer"),
            ));
        }
        return Ok(k as usize);
    }
    cfg_usize(trainer, "k")
        .ok_or_else(|| Error::missing(cfg_path, "trainer.k (and ae.pt has no `k` buffer)"))
}

/// A Matryoshka SAE's `group_sizes` must cover the dictionary: `from_pretrained` keeps
/// every group active, so they only matter as a consistency check.
fn check_group_sizes(file: &TorchFile, l: usize) -> Result<()> {
    let t = file.tensor("group_sizes")?;
    let sizes = t.to_i64(&file.path, "group_sizes")?;
    let total: i64 = sizes.iter().sum();
    if sizes.iter().any(|s| *s <= 0) || total != l as i64 {
        return Err(Error::format(
            &file.path,
            format!("group_sizes {sizes:?} must be positive and sum to the {l} latents"),
        ));
    }
    Ok(())
}

/// dictionary_learning's `AutoEncoder.normalize_decoder`, which `from_pretrained` calls
/// by default, as a code scale: nothing happens when every decoder column norm is 1
/// within `torch.allclose` (rtol 1e-5, atol 1e-8); otherwise each code is multiplied by
/// its latent's decoder norm (the encoder row and bias are, in the library) and divided
/// by it again before decoding (the decoder column is divided, in the library).
fn fold_decoder_norms(sae: &mut Sae, convention: DlConvention) -> Result<()> {
    if convention == DlConvention::Raw {
        sae.meta.conventions.push(
            "dictionary_learning AutoEncoder, raw (from_pretrained(normalize_decoder=False)): \
             the stored weights as they are"
                .into(),
        );
        return Ok(());
    }
    let norms = sae.w_dec.row_norms();
    if norms.iter().all(|n| (n - 1.0).abs() <= 1e-8 + 1e-5) {
        sae.meta.conventions.push(
            "dictionary_learning AutoEncoder, from_pretrained: decoder norms are already 1, \
             nothing to fold"
                .into(),
        );
        return Ok(());
    }
    if let Some(i) = norms.iter().position(|n| n.is_nan() || *n <= 0.0) {
        return Err(Error::format(
            &sae.meta.source,
            format!(
                "decoder column {i} has norm {}: from_pretrained would divide by it; \
                 read the raw weights instead (--dl-convention raw)",
                norms[i]
            ),
        ));
    }
    sae.scales = LatentScales {
        code_scale: Some(norms),
        decode_scale: None,
    };
    sae.meta.conventions.push(
        "dictionary_learning AutoEncoder, from_pretrained (the library default): decoder \
         norms folded into the encoder, so each code is scaled by its latent's decoder norm \
         (--dl-convention raw for normalize_decoder=False)"
            .into(),
    );
    Ok(())
}
