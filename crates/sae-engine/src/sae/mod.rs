//! The canonical SAE every format loads into (see docs/design.md, "SAE semantics"):
//!
//! ```text
//! x' = normalize(x)
//! h  = (x' - b_dec if subtract_b_dec else x') . W_enc^T + b_enc      (W_enc logical [L, d])
//! h  = h * ||W_dec[i]||            if rescale_acts_by_decoder_norm (TopK only)
//! f  = activation(h) * code_scale[i]                    (code_scale: ReLU / JumpReLU only)
//! x_hat = denormalize((f / ||W_dec[i]|| if rescaled) / code_scale[i] * decode_scale[i] . W_dec + b_dec)
//! ```
//!
//! `code_scale` carries conventions that fold a positive per-latent factor into the
//! encoder (dictionary_learning's `from_pretrained`, SAELens BatchTopK with
//! `rescale_acts_by_decoder_norm`) without copying the weight matrices: for ReLU and
//! JumpReLU, `activation(h * c) = activation(h) * c` once the threshold is divided by
//! `c`, which the loaders do. `decode_scale` is SAELens 5.x's finetuning scaling factor.

use std::borrow::Cow;
use std::path::PathBuf;

use crate::codes::Codes;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::matrix::Matrix;

mod input;

/// Where an SAE came from; selects nothing at run time, it is reported and recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// SAELens v6 (`cfg.json` with `architecture`, `metadata`) + `sae_weights.safetensors`.
    SaeLens,
    /// SAELens before 6.0 (flat `cfg.json`: `hook_point`/`hook_name`, `activation_fn_str`).
    SaeLensLegacy,
    /// EleutherAI sparsify (`cfg.json` + `sae.safetensors`).
    Sparsify,
    /// Gemma Scope (`params.npz`, or `params.safetensors` in Gemma Scope 2).
    GemmaScope,
    /// saprmarks dictionary_learning (`ae.pt` + `config.json`).
    DictionaryLearning,
    /// OpenAI sparse_autoencoder (`.pt` state dict).
    OpenAi,
}

impl Format {
    /// Stable command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Format::SaeLens => "saelens",
            Format::SaeLensLegacy => "saelens-legacy",
            Format::Sparsify => "sparsify",
            Format::GemmaScope => "gemma-scope",
            Format::DictionaryLearning => "dictionary-learning",
            Format::OpenAi => "openai",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Format> {
        [
            Format::SaeLens,
            Format::SaeLensLegacy,
            Format::Sparsify,
            Format::GemmaScope,
            Format::DictionaryLearning,
            Format::OpenAi,
        ]
        .into_iter()
        .find(|f| f.name() == s)
    }
}

/// The latent activation function.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Activation {
    /// Keep the k largest pre-activations, then ReLU: a kept value <= 0 is inactive.
    /// Ties: larger value first, then smaller latent index.
    TopK {
        /// Latents kept per row.
        k: usize,
    },
    /// max(h, 0).
    Relu,
    /// relu(h) where h > threshold[i] (strict), else 0. BatchTopK at inference is
    /// this with one global threshold copied into every latent.
    JumpRelu,
}

impl Activation {
    /// Whether codes are fixed-width top-k rows (else CSR).
    pub fn is_topk(&self) -> bool {
        matches!(self, Activation::TopK { .. })
    }
}

/// Input normalization applied before encoding and undone after decoding.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Normalization {
    /// Identity.
    None,
    /// x' = x * sqrt(d) / ||x||; out: x_hat * ||x|| / sqrt(d).
    ConstantNormRescale,
    /// x' = (x - mean) / (std + eps) with the unbiased std (torch `x.std()`); out: x_hat * std + mean.
    LayerNorm {
        /// Added to the std.
        eps: f32,
    },
    /// x' = x * factor; out: x_hat / factor. SAELens `expected_average_only_in` with its
    /// dataset constant (sqrt(d) / E||x||), which cfg.json does not store.
    Scale {
        /// The factor.
        factor: f32,
    },
}

/// Per-row constants that undo the normalization: `x = x_norm_out * scale + shift`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowDenorm {
    /// Factor on the normalized output.
    pub scale: f32,
    /// Offset added after the factor.
    pub shift: f32,
}

impl Normalization {
    /// Normalizes `row` in place and returns how to undo it (None for the identity).
    pub fn apply(&self, row: &mut [f32]) -> Option<RowDenorm> {
        let d = row.len();
        match *self {
            Normalization::None => None,
            Normalization::ConstantNormRescale => {
                let norm = row
                    .iter()
                    .map(|v| (*v as f64) * (*v as f64))
                    .sum::<f64>()
                    .sqrt();
                // A zero row stays zero (torch would divide by zero and give NaN; a zero
                // residual never occurs in practice, a NaN code is worse than a zero one).
                let coeff = if norm > 0.0 {
                    (d as f64).sqrt() / norm
                } else {
                    1.0
                };
                for v in row.iter_mut() {
                    *v = (*v as f64 * coeff) as f32;
                }
                Some(RowDenorm {
                    scale: (1.0 / coeff) as f32,
                    shift: 0.0,
                })
            }
            Normalization::Scale { factor } => {
                for v in row.iter_mut() {
                    *v *= factor;
                }
                Some(RowDenorm {
                    scale: 1.0 / factor,
                    shift: 0.0,
                })
            }
            Normalization::LayerNorm { eps } => {
                let mean = row.iter().map(|v| *v as f64).sum::<f64>() / d.max(1) as f64;
                let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>()
                    / (d.max(2) - 1) as f64;
                let std = var.sqrt();
                let denom = std + eps as f64;
                for v in row.iter_mut() {
                    *v = ((*v as f64 - mean) / denom) as f32;
                }
                Some(RowDenorm {
                    scale: std as f32,
                    shift: mean as f32,
                })
            }
        }
    }
}

/// Descriptive metadata; never changes the arithmetic.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SaeMeta {
    /// Source format.
    pub format: Format,
    /// File or directory it was loaded from.
    pub source: PathBuf,
    /// Architecture string as the source names it ("topk", "jumprelu", "batchtopk", "standard", ...).
    pub architecture: String,
    /// Hook / layer the SAE was trained on (e.g. "blocks.12.hook_resid_post"), if known.
    pub hook_name: Option<String>,
    /// Layer index, if known.
    pub hook_layer: Option<i64>,
    /// Model name, if known.
    pub model_name: Option<String>,
    /// Stored dtype of the weight matrices.
    pub dtype: DType,
    /// Which of its source library's conventions the loader applied, one line each
    /// (e.g. "dictionary_learning from_pretrained: decoder norms folded into the
    /// encoder"); `sae inspect` shows them.
    pub conventions: Vec<String>,
    /// What the loader could not honour and how it read the SAE instead (e.g. a
    /// normalization whose constant is not stored); commands print them on stderr.
    pub warnings: Vec<String>,
}

/// A loaded sparse autoencoder in canonical form.
#[derive(Debug, Clone)]
pub struct Sae {
    /// Where the SAE came from: format, source path, architecture, hook and model.
    pub meta: SaeMeta,
    /// Encoder, logical [n_latents, d_in].
    pub w_enc: Matrix,
    /// Decoder, logical [n_latents, d_in].
    pub w_dec: Matrix,
    /// [n_latents]
    pub b_enc: Vec<f32>,
    /// [d_in]
    pub b_dec: Vec<f32>,
    /// [n_latents], JumpReLU only.
    pub threshold: Option<Vec<f32>>,
    /// The latent activation function.
    pub activation: Activation,
    /// Subtract b_dec from the (normalized) input before encoding.
    pub subtract_b_dec: bool,
    /// Input normalization.
    pub normalization: Normalization,
    /// SAELens TopK: multiply h by decoder row norms before selection, divide before decoding.
    pub rescale_acts_by_decoder_norm: bool,
    /// Per-latent factors on the codes and before decoding (see the module docs).
    pub scales: LatentScales,
}

/// Per-latent factors of the canonical form; both empty for most SAEs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatentScales {
    /// [n_latents], positive: codes are `activation(h) * code_scale[i]`, and decoding
    /// divides them by it again. ReLU and JumpReLU only (the threshold applies to `h`).
    pub code_scale: Option<Vec<f32>>,
    /// [n_latents]: codes are multiplied by it before decoding (SAELens 5.x
    /// `finetuning_scaling_factor`).
    pub decode_scale: Option<Vec<f32>>,
}

impl LatentScales {
    /// Whether both are absent.
    pub fn is_empty(&self) -> bool {
        self.code_scale.is_none() && self.decode_scale.is_none()
    }
}

impl Sae {
    /// Input width d.
    pub fn d_in(&self) -> usize {
        self.w_enc.cols()
    }

    /// Number of latents L.
    pub fn n_latents(&self) -> usize {
        self.w_enc.rows()
    }

    /// k for TopK SAEs.
    pub fn k(&self) -> Option<usize> {
        match self.activation {
            Activation::TopK { k } => Some(k),
            _ => None,
        }
    }

    /// Checks every tensor against the others and the activation. Loaders call this last.
    pub fn validate(&self) -> Result<()> {
        let (l, d) = (self.n_latents(), self.d_in());
        let src = &self.meta.source;
        if l == 0 || d == 0 {
            return Err(Error::format(
                src,
                format!("SAE has {l} latents and d_in {d}; both must be positive"),
            ));
        }
        if self.w_dec.rows() != l || self.w_dec.cols() != d {
            return Err(Error::shape(
                src,
                "W_dec",
                &[self.w_dec.rows(), self.w_dec.cols()],
                format!("[{l}, {d}] (n_latents, d_in) to match W_enc"),
            ));
        }
        if self.b_enc.len() != l {
            return Err(Error::shape(
                src,
                "b_enc",
                &[self.b_enc.len()],
                format!("[{l}]"),
            ));
        }
        if self.b_dec.len() != d {
            return Err(Error::shape(
                src,
                "b_dec",
                &[self.b_dec.len()],
                format!("[{d}]"),
            ));
        }
        match (&self.activation, &self.threshold) {
            (Activation::JumpRelu, None) => {
                return Err(Error::missing(
                    src,
                    "tensor `threshold` required by a JumpReLU SAE",
                ))
            }
            (Activation::JumpRelu, Some(t)) if t.len() != l => {
                return Err(Error::shape(src, "threshold", &[t.len()], format!("[{l}]")))
            }
            (Activation::TopK { k }, _) if *k == 0 || *k > l => {
                return Err(Error::format(
                    src,
                    format!("k = {k} must be between 1 and the number of latents ({l})"),
                ))
            }
            _ => {}
        }
        let vectors = [
            ("b_enc", Some(&self.b_enc)),
            ("b_dec", Some(&self.b_dec)),
            ("threshold", self.threshold.as_ref()),
        ];
        for (name, v) in vectors {
            if let Some(i) = v.and_then(|v| v.iter().position(|x| !x.is_finite())) {
                return Err(Error::format(
                    src,
                    format!(
                        "`{name}` holds {} at index {i}; SAE weights must be finite",
                        v.unwrap()[i]
                    ),
                ));
            }
        }
        let scales = [
            ("code_scale", self.scales.code_scale.as_ref()),
            ("decode_scale", self.scales.decode_scale.as_ref()),
        ];
        for (name, v) in scales {
            let Some(v) = v else { continue };
            if v.len() != l {
                return Err(Error::shape(src, name, &[v.len()], format!("[{l}]")));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::format(
                    src,
                    format!("`{name}` holds {} at index {i}; it must be finite", v[i]),
                ));
            }
        }
        if let Some(c) = &self.scales.code_scale {
            if self.activation.is_topk() {
                return Err(Error::format(
                    src,
                    "a per-latent code scale with TopK would change the selection; \
                     only ReLU and JumpReLU SAEs take one",
                ));
            }
            if let Some(i) = c.iter().position(|x| *x <= 0.0) {
                return Err(Error::format(
                    src,
                    format!("code scale of latent {i} is {}; it must be positive", c[i]),
                ));
            }
        }
        if self.rescale_acts_by_decoder_norm && !self.activation.is_topk() {
            return Err(Error::format(
                src,
                "rescale_acts_by_decoder_norm is only defined for TopK SAEs",
            ));
        }
        Ok(())
    }

    /// The error for a non-finite pre-activation of `latent` (value `value`) computed from
    /// the finite input row `row`: it blames the SAE and names the latent.
    pub fn non_finite_preactivation(&self, latent: usize, value: f32, row: u64) -> Error {
        Error::SaeNonFinite {
            sae: self.meta.source.clone(),
            latent,
            value,
            row,
            input: String::new(),
        }
    }

    /// Applies `code_scale` to freshly encoded codes (every backend calls this last).
    pub fn scale_codes(&self, codes: &mut Codes) {
        let Some(c) = &self.scales.code_scale else {
            return;
        };
        let (indices, values) = codes.entries_mut();
        for (i, v) in indices.iter().zip(values.iter_mut()) {
            if *i >= 0 {
                *v *= c[*i as usize];
            }
        }
    }

    /// The codes a backend's decoder multiplies with W_dec: `codes / code_scale *
    /// decode_scale` per latent, borrowed unchanged when the SAE has neither. Indices
    /// outside the SAE are left for the decoder's own validation to refuse.
    pub fn codes_for_decoding<'a>(&self, codes: &'a Codes) -> Cow<'a, Codes> {
        if self.scales.is_empty() {
            return Cow::Borrowed(codes);
        }
        let l = self.n_latents();
        let coeff = |i: usize| {
            let c = self.scales.code_scale.as_ref().map_or(1.0, |c| c[i]);
            let s = self.scales.decode_scale.as_ref().map_or(1.0, |s| s[i]);
            s / c
        };
        let mut out = codes.clone();
        let (indices, values) = out.entries_mut();
        for (i, v) in indices.iter().zip(values.iter_mut()) {
            if *i >= 0 && (*i as usize) < l {
                *v *= coeff(*i as usize);
            }
        }
        Cow::Owned(out)
    }

    /// A short stable identity of the SAE's arithmetic: shape, activation, flags and a
    /// hash of the biases, thresholds and 64 evenly spaced encoder and decoder rows.
    /// Statistics files carry it so that statistics of different SAEs refuse to merge.
    /// Sampling keeps it cheap on a 17 GB matrix; two SAEs that differ only outside
    /// the sampled rows would collide, which real checkpoints do not.
    pub fn fingerprint(&self) -> String {
        let mut h = crate::deterministic::Fnv64::new();
        let desc = format!(
            "{}x{}|{:?}|{}|{:?}|{}",
            self.n_latents(),
            self.d_in(),
            self.activation,
            self.subtract_b_dec,
            self.normalization,
            self.rescale_acts_by_decoder_norm
        );
        h.write(desc.as_bytes());
        for v in self
            .b_enc
            .iter()
            .chain(&self.b_dec)
            .chain(self.threshold.iter().flatten())
            .chain(self.scales.code_scale.iter().flatten())
            .chain(self.scales.decode_scale.iter().flatten())
        {
            h.write(&v.to_bits().to_le_bytes());
        }
        let l = self.n_latents();
        let samples = 64.min(l);
        for s in 0..samples {
            let r = s * l / samples;
            for v in self
                .w_enc
                .row_f32(r)
                .iter()
                .chain(self.w_dec.row_f32(r).iter())
            {
                h.write(&v.to_bits().to_le_bytes());
            }
        }
        format!("{:016x}", h.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_matches_torch_convention() {
        let mut row = vec![1.0f32, 2.0, 3.0, 4.0];
        let dn = Normalization::LayerNorm { eps: 1e-5 }
            .apply(&mut row)
            .unwrap();
        // mean 2.5, unbiased std sqrt(5/3)
        let std = (5.0f64 / 3.0).sqrt();
        assert!((dn.shift - 2.5).abs() < 1e-6);
        assert!((dn.scale as f64 - std).abs() < 1e-6);
        assert!((row[0] as f64 - (-1.5 / (std + 1e-5))).abs() < 1e-6);
    }

    #[test]
    fn constant_norm_rescale_gives_norm_sqrt_d() {
        let mut row = vec![3.0f32, 4.0, 0.0, 0.0];
        let dn = Normalization::ConstantNormRescale.apply(&mut row).unwrap();
        let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 2.0).abs() < 1e-6);
        assert!((dn.scale - 2.5).abs() < 1e-6);
    }
}
