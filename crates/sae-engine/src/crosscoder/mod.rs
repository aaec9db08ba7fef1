//! Crosscoders for model diffing (Lindsey et al. 2024; Minder et al. 2025): one
//! dictionary over the paired activations of `n_models` models (base, fine-tune), one
//! encoder over their concatenation and one decoder per model, as the
//! dictionary_learning fork of Minder et al. (jkminder/dictionary_learning, commit
//! 48debb2) saves them through huggingface_hub's `save_pretrained`: `model.safetensors`
//! + `config.json`.
//!
//! Semantics (the fork's `encode` with `use_threshold=True`, the default):
//!
//! ```text
//! x'   = (x - activation_mean) * activation_global_scale     (only when mean/std are not NaN)
//! h    = sum_m x'_m . encoder.weight[m] + encoder.bias        one GEMM over [x'_0, x'_1, ...]
//! c    = relu(h)
//! CrossCoder:          f = c
//! BatchTopKCrossCoder: f = c * (c * norm_j > threshold)       norm: code_normalization
//!   DECOUPLED:         f_m = c * (c * norm_mj > threshold_m)  one code per model
//! x_hat_m = f(_m) . decoder.weight[m] + decoder.bias[m], then de-normalized
//! ```
//!
//! The encoder runs as an ordinary SAE encode of width `n_models * d` on any backend
//! (CPU GEMM or the CUDA engine); the threshold on the normalized code is a separate
//! exact step on the sparse codes (see [`encode`]: folding it into a per-latent
//! threshold is not exact in f32, so the folded value only pre-filters).

pub mod analysis;
pub mod encode;
pub mod load;
pub mod paired;
pub mod report;
#[cfg(feature = "cuda")]
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;

use crate::sae::Sae;

pub use encode::{CrosscoderCodes, CrosscoderEngine};
pub use load::{load, looks_like};

/// The fork's two crosscoder classes; `config.json` does not name the class, the
/// tensors do (`threshold` and `k` exist only in BatchTopKCrossCoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CrosscoderClass {
    /// `CrossCoder`: ReLU codes (trained with an L1 penalty).
    Relu,
    /// `BatchTopKCrossCoder`: codes kept where the normalized code exceeds the threshold.
    BatchTopK,
}

impl CrosscoderClass {
    /// The fork's class name.
    pub fn name(self) -> &'static str {
        match self {
            CrosscoderClass::Relu => "CrossCoder",
            CrosscoderClass::BatchTopK => "BatchTopKCrossCoder",
        }
    }
}

/// `CodeNormalization`: the per-latent factor the threshold compares the code against.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CodeNormalization {
    /// Sum over models of the decoder row norms.
    Crosscoder,
    /// Norm of the concatenated decoder rows.
    Sae,
    /// `alpha_sae * SAE + alpha_cc * CROSSCODER`.
    Mixed {
        /// Weight of the `Sae` factor.
        alpha_sae: f32,
        /// Weight of the `Crosscoder` factor.
        alpha_cc: f32,
    },
    /// 1 for every latent.
    None,
    /// Per model: that model's decoder row norm, with one threshold and one code per model.
    Decoupled,
}

impl CodeNormalization {
    /// The fork's enum name (`CodeNormalization.name`).
    pub fn name(&self) -> &'static str {
        match self {
            CodeNormalization::Crosscoder => "CROSSCODER",
            CodeNormalization::Sae => "SAE",
            CodeNormalization::Mixed { .. } => "MIXED",
            CodeNormalization::None => "NONE",
            CodeNormalization::Decoupled => "DECOUPLED",
        }
    }

    /// The enum's value (`auto()` from 1), stored as `code_normalization_id`.
    pub fn id(&self) -> i64 {
        match self {
            CodeNormalization::Crosscoder => 1,
            CodeNormalization::Sae => 2,
            CodeNormalization::Mixed { .. } => 3,
            CodeNormalization::None => 4,
            CodeNormalization::Decoupled => 5,
        }
    }

    /// Whether the code is per model.
    pub fn decoupled(&self) -> bool {
        matches!(self, CodeNormalization::Decoupled)
    }
}

/// The input normalization of the fork's `NormalizableMixin` with
/// `keep_relative_variance` (the only mode a crosscoder is built with).
#[derive(Debug, Clone, PartialEq)]
pub struct InputNorm {
    /// `activation_mean`, `[n_models * d]`.
    pub mean: Vec<f32>,
    /// `activation_global_scale`.
    pub scale: f32,
}

/// Descriptive metadata of a loaded crosscoder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CrosscoderMeta {
    /// Directory (or `model.safetensors`) it was loaded from.
    pub source: PathBuf,
    /// Which class the tensors say it is.
    pub class: CrosscoderClass,
    /// BatchTopK's training k (a stored buffer; inference uses the threshold).
    pub k: Option<i64>,
    /// Loader conventions, one line each (shown by `sae crosscoder inspect`).
    pub conventions: Vec<String>,
}

/// A loaded crosscoder: the encoder and concatenated decoders as an SAE of width
/// `n_models * d`, plus what the SAE form cannot say (threshold on the normalized code,
/// input normalization).
#[derive(Debug, Clone)]
pub struct Crosscoder {
    /// Metadata.
    pub meta: CrosscoderMeta,
    /// Models (`num_layers` in the fork).
    pub n_models: usize,
    /// Activation width of one model (`activation_dim`).
    pub d: usize,
    /// The SAE form: ReLU, `W_enc` logical `[L, n_models * d]` (`encoder.weight` viewed
    /// as `[n_models * d, L]`), `W_dec` row j = `[decoder.weight[0, j], decoder.weight[1, j], ...]`,
    /// `b_dec` = the concatenated decoder biases, nothing subtracted.
    pub sae: Arc<Sae>,
    /// Code normalization.
    pub code_norm: CodeNormalization,
    /// Threshold(s) on the normalized code: one, or one per model for DECOUPLED;
    /// None for the ReLU CrossCoder.
    pub threshold: Option<Vec<f32>>,
    /// Per-latent normalization factors: `[L]`, or `[n_models, L]` for DECOUPLED.
    pub norms: Vec<f32>,
    /// Input normalization, when the file stores one (non-NaN mean and std).
    pub input_norm: Option<InputNorm>,
}

impl Crosscoder {
    /// Number of latents L (`dict_size`).
    pub fn n_latents(&self) -> usize {
        self.sae.n_latents()
    }

    /// Model `m`'s decoder row of latent `j` (`decoder.weight[m, j]`), as f32.
    pub fn decoder_row(&self, m: usize, j: usize) -> Vec<f32> {
        let row = self.sae.w_dec.row_f32(j);
        row[m * self.d..(m + 1) * self.d].to_vec()
    }

    /// Model `m`'s half of the crosscoder as an SAE of width d: its decoder rows and bias
    /// (what steering along a latent's model-m direction needs) and its slice of the
    /// encoder. Encoding with the view alone is not the crosscoder's encode (that needs
    /// every model's activations), so commands use the view for its decoder only.
    pub fn model_view(&self, m: usize) -> crate::error::Result<Sae> {
        use crate::matrix::{Bytes, Layout, Matrix};
        let (n, d, l) = (self.n_models, self.d, self.n_latents());
        if m >= n {
            return Err(crate::error::Error::invalid(format!(
                "{}: model {m} does not exist (the crosscoder has {n} models: 0..{})",
                self.meta.source.display(),
                n - 1
            )));
        }
        let enc = &self.sae.w_enc;
        let es = enc.dtype().size();
        // encoder.weight[m] is the contiguous stored block [d, L].
        let enc_bytes = enc.raw()[m * d * l * es..(m + 1) * d * l * es].to_vec();
        let dec = &self.sae.w_dec;
        let ds = dec.dtype().size();
        let mut dec_bytes = Vec::with_capacity(l * d * ds);
        for row in dec.raw().chunks_exact(n * d * ds) {
            dec_bytes.extend_from_slice(&row[m * d * ds..(m + 1) * d * ds]);
        }
        let mut sae = Sae {
            meta: self.sae.meta.clone(),
            w_enc: Matrix::new(
                Bytes::Owned(Arc::new(enc_bytes)),
                enc.dtype(),
                l,
                d,
                Layout::Transposed,
            )?,
            w_dec: Matrix::new(
                Bytes::Owned(Arc::new(dec_bytes)),
                dec.dtype(),
                l,
                d,
                Layout::RowMajor,
            )?,
            b_enc: self.sae.b_enc.clone(),
            b_dec: self.sae.b_dec[m * d..(m + 1) * d].to_vec(),
            threshold: None,
            activation: crate::sae::Activation::Relu,
            subtract_b_dec: false,
            normalization: crate::sae::Normalization::None,
            rescale_acts_by_decoder_norm: false,
            scales: crate::sae::LatentScales::default(),
        };
        sae.meta.architecture = format!("crosscoder-model-{m}-view");
        sae.meta
            .conventions
            .push(format!("model {m}'s decoder of a {n}-model crosscoder (its encoder alone is not the crosscoder's encode)"));
        sae.validate()?;
        Ok(sae)
    }

    /// A fingerprint of everything encode uses: the weights, and the threshold and code
    /// normalization through the engine's pre-filter cuts (recorded in codes files).
    pub fn fingerprint(&self) -> String {
        encode::engine_sae(self).fingerprint()
    }

    /// `[n_models][L]` decoder row norms (f64 sums, rounded once).
    pub fn decoder_norms(&self) -> Vec<Vec<f32>> {
        load::decoder_norms(&self.sae.w_dec, self.n_models, self.d)
    }
}

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;
