//! SAE loaders, one module per source format, plus the SAELens writer.
//!
//! Every loader maps the weight matrices (no copy, no transpose: a stored `[d, L]`
//! encoder becomes a [`crate::matrix::Layout::Transposed`] view), reads biases and
//! thresholds as f32, validates every shape against the others and the config, and
//! calls [`Sae::validate`] last.
//!
//! Supported: SAELens v6 and pre-6.0 (`cfg.json` + `sae_weights.safetensors`), sparsify
//! (`cfg.json` + `sae.safetensors`), Gemma Scope (`params.npz`) and Gemma Scope 2
//! (`params.safetensors` + `config.json`). Refused with a message naming the file:
//! gated SAEs, transcoders and skip connections, and groupmax. Input normalizations
//! whose constant is not stored (`expected_average_only_in`, `covariance_whitening`)
//! load as the identity, as SAELens reads them from disk, with a warning; the
//! `expected_average_only_in` constant can be given ([`LoadOptions::norm_scale`]).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sae::{Format, Sae};

pub mod common;
pub mod gemma_scope;
pub mod npz;
pub mod saelens;
pub mod sparsify;
pub mod writer;

/// Detects the format of an SAE directory or file.
///
/// Files are recognised by name (`params.npz`, `params.safetensors`,
/// `sae_weights.safetensors`, `sae.safetensors`, `cfg.json`), using the sibling
/// `cfg.json` where the name alone does not decide; directories by the files they hold
/// and their `cfg.json` contents.
pub fn detect(path: &Path) -> Result<Format> {
    // The real reason (missing, a symlink loop, no permission), not `exists()`'s false.
    std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if path.is_file() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let dir = path.parent().unwrap_or(Path::new("."));
        return match name.as_str() {
            "params.npz" | "params.safetensors" => Ok(Format::GemmaScope),
            "sae.safetensors" => Ok(Format::Sparsify),
            "sae_weights.safetensors" | "cfg.json" => detect_dir(dir),
            n if n.ends_with(".npz") => Ok(Format::GemmaScope),
            _ if dictionary_learning::looks_like(path) => Ok(Format::DictionaryLearning),
            _ if openai::looks_like(path) => Ok(Format::OpenAi),
            _ => Err(Error::format(
                path,
                "cannot tell the SAE format from this file name (expected params.npz, \
                 params.safetensors, sae_weights.safetensors, sae.safetensors or cfg.json); \
                 pass the directory or --format",
            )),
        };
    }
    detect_dir(path)
}

fn detect_dir(dir: &Path) -> Result<Format> {
    let has = |n: &str| dir.join(n).is_file();
    if has("params.npz") || has("params.safetensors") {
        return Ok(Format::GemmaScope);
    }
    let cfg_path = dir.join("cfg.json");
    if cfg_path.is_file() {
        let cfg = common::Cfg::read(&cfg_path)?;
        if has(sparsify::WEIGHTS) || (!has(saelens::WEIGHTS) && sparsify::looks_like(&cfg)) {
            return Ok(Format::Sparsify);
        }
        if has(saelens::WEIGHTS) || cfg.get("d_sae").is_some() {
            return Ok(if saelens::is_v6(&cfg) {
                Format::SaeLens
            } else {
                Format::SaeLensLegacy
            });
        }
        return Err(Error::format(
            &cfg_path,
            "cannot tell whether this is a SAELens or sparsify config \
             (no d_sae, num_latents or expansion_factor) and no weights file beside it",
        ));
    }
    if has(saelens::WEIGHTS) || has(sparsify::WEIGHTS) {
        return Err(Error::missing(dir, "cfg.json beside the weights"));
    }
    if has("ae.pt") {
        return Ok(Format::DictionaryLearning);
    }
    let subs = sparsify::hookpoint_subdirs(dir);
    if !subs.is_empty() {
        return Err(Error::format(
            dir,
            format!(
                "holds one SAE per subfolder; choose one of: {}",
                subs.join(", ")
            ),
        ));
    }
    Err(Error::format(
        dir,
        "no SAE found (expected cfg.json + sae_weights.safetensors, cfg.json + \
         sae.safetensors, params.npz or params.safetensors)",
    ))
}

/// Which reading of a dictionary_learning `AutoEncoder` to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DlConvention {
    /// The library's default `AutoEncoder.from_pretrained(path)`: decoder row norms are
    /// folded into the encoder, so each latent's code is multiplied by its decoder norm.
    #[default]
    Folded,
    /// `from_pretrained(path, normalize_decoder=False)`: the stored weights as they are.
    Raw,
}

impl DlConvention {
    /// Stable command-line name.
    pub fn name(self) -> &'static str {
        match self {
            DlConvention::Folded => "folded",
            DlConvention::Raw => "raw",
        }
    }
    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<DlConvention> {
        [DlConvention::Folded, DlConvention::Raw]
            .into_iter()
            .find(|c| c.name() == s)
    }
}

/// Choices a loader cannot make from the files alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadOptions {
    /// The dataset constant of SAELens `normalize_activations = expected_average_only_in`
    /// (inputs are multiplied by it before encoding, outputs divided after decoding).
    /// Without it such an SAE loads as the identity, as SAELens reads it from disk, with
    /// a warning; given for an SAE without that normalization it is an error.
    pub norm_scale: Option<f32>,
    /// How a dictionary_learning `AutoEncoder` is read (default: the library's
    /// `from_pretrained`).
    pub dl_convention: DlConvention,
}

/// Loads an SAE, auto-detecting its format unless `format` forces one.
pub fn load(path: impl AsRef<Path>, format: Option<Format>) -> Result<Sae> {
    load_with(path, format, &LoadOptions::default())
}

/// [`load`] with the choices in `opts`.
pub fn load_with(
    path: impl AsRef<Path>,
    format: Option<Format>,
    opts: &LoadOptions,
) -> Result<Sae> {
    let path = path.as_ref();
    // The real reason (missing, a symlink loop, no permission), not `exists()`'s false.
    std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let format = match format {
        Some(f) => f,
        None => detect(path)?,
    };
    if let Some(f) = opts.norm_scale {
        if !(f.is_finite() && f > 0.0) {
            return Err(Error::invalid(format!(
                "--norm-scale {f}: expected a positive finite number"
            )));
        }
    }
    let sae = match format {
        Format::SaeLens => saelens::load(path, Some(false), opts),
        Format::SaeLensLegacy => saelens::load(path, Some(true), opts),
        Format::Sparsify => sparsify::load(path),
        Format::GemmaScope => gemma_scope::load(path),
        Format::DictionaryLearning => dictionary_learning::load_with(path, opts.dl_convention),
        Format::OpenAi => openai::load(path),
    }?;
    // Only the SAELens loader takes the constant; anywhere else it would be ignored.
    if opts.norm_scale.is_some()
        && !matches!(sae.normalization, crate::sae::Normalization::Scale { .. })
    {
        return Err(Error::invalid(format!(
            "--norm-scale was given, but {} does not use normalize_activations = \
             expected_average_only_in",
            path.display()
        )));
    }
    Ok(sae)
}

/// Writes `sae` in the SAELens v6 layout (cfg.json + sae_weights.safetensors) into `dir`.
pub fn write_saelens(sae: &Sae, dir: &Path) -> Result<()> {
    writer::write_saelens(sae, dir)
}

/// The directory an SAE path refers to (the path itself, or a file's parent).
pub fn sae_dir(path: &Path) -> PathBuf {
    saelens::dir_of(path)
}

pub mod dictionary_learning;
pub mod openai;
pub mod pickle;
