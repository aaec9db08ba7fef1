//! A naive dense reference for tests, and a builder for small in-memory SAEs.
//!
//! The reference shares nothing with the engine's encode path except
//! `Normalization::apply`: it materializes each row's full pre-activation vector
//! with f64 dot products and sorts it with the tie rule. It is an oracle for tests
//! and benchmarks, far too slow for real SAEs.

use std::path::PathBuf;
use std::sync::Arc;

use crate::codes::{Codes, Denorm, Encoded};
use crate::dtype::{convert_from_f32, DType};
use crate::error::{Error, Result};
use crate::matrix::{Bytes, Layout, Matrix};
use crate::sae::{Activation, Format, Normalization, RowDenorm, Sae, SaeMeta};

/// Builds a small [`Sae`] from f32 values, for tests, benchmarks and examples.
///
/// Weights are given logical `[n_latents, d_in]` row-major and stored in the chosen
/// dtype (values are rounded to it) and layout, exactly as a loader would hold them.
/// Defaults: zero biases, f32, row-major, no b_dec subtraction, no normalization,
/// no rescale.
///
/// ```
/// use sae_engine::cpu::reference::SaeBuilder;
/// use sae_engine::Activation;
/// let sae = SaeBuilder::new(3, 2, vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], vec![0.5; 6])
///     .activation(Activation::TopK { k: 2 })
///     .build()
///     .unwrap();
/// assert_eq!(sae.n_latents(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct SaeBuilder {
    n_latents: usize,
    d_in: usize,
    w_enc: Vec<f32>,
    w_dec: Vec<f32>,
    b_enc: Vec<f32>,
    b_dec: Vec<f32>,
    threshold: Option<Vec<f32>>,
    activation: Activation,
    dtype: DType,
    enc_transposed: bool,
    dec_transposed: bool,
    subtract_b_dec: bool,
    normalization: Normalization,
    rescale: bool,
}

impl SaeBuilder {
    /// An SAE with `n_latents` latents of width `d_in`; `w_enc` and `w_dec` are
    /// `[n_latents, d_in]` row-major. The activation defaults to ReLU.
    pub fn new(n_latents: usize, d_in: usize, w_enc: Vec<f32>, w_dec: Vec<f32>) -> Self {
        SaeBuilder {
            n_latents,
            d_in,
            w_enc,
            w_dec,
            b_enc: vec![0.0; n_latents],
            b_dec: vec![0.0; d_in],
            threshold: None,
            activation: Activation::Relu,
            dtype: DType::F32,
            enc_transposed: false,
            dec_transposed: false,
            subtract_b_dec: false,
            normalization: Normalization::None,
            rescale: false,
        }
    }
    /// Encoder bias `[n_latents]`.
    pub fn b_enc(mut self, b: Vec<f32>) -> Self {
        self.b_enc = b;
        self
    }
    /// Decoder bias `[d_in]`.
    pub fn b_dec(mut self, b: Vec<f32>) -> Self {
        self.b_dec = b;
        self
    }
    /// The activation function.
    pub fn activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }
    /// JumpReLU thresholds `[n_latents]`.
    pub fn threshold(mut self, t: Vec<f32>) -> Self {
        self.threshold = Some(t);
        self
    }
    /// Storage dtype of both weight matrices.
    pub fn dtype(mut self, d: DType) -> Self {
        self.dtype = d;
        self
    }
    /// Store W_enc / W_dec transposed (`[d_in, n_latents]`), as SAELens stores W_enc.
    pub fn transposed(mut self, enc: bool, dec: bool) -> Self {
        self.enc_transposed = enc;
        self.dec_transposed = dec;
        self
    }
    /// Subtract b_dec from the (normalized) input.
    pub fn subtract_b_dec(mut self, on: bool) -> Self {
        self.subtract_b_dec = on;
        self
    }
    /// Input normalization.
    pub fn normalization(mut self, n: Normalization) -> Self {
        self.normalization = n;
        self
    }
    /// SAELens rescale_acts_by_decoder_norm (TopK only).
    pub fn rescale(mut self, on: bool) -> Self {
        self.rescale = on;
        self
    }

    /// The SAE, checked with [`Sae::validate`].
    pub fn build(self) -> Result<Sae> {
        let (l, d) = (self.n_latents, self.d_in);
        let matrix = |vals: &[f32], transposed: bool| -> Result<Matrix> {
            if !transposed {
                return Matrix::from_f32(vals, l, d, self.dtype);
            }
            if vals.len() != l * d {
                return Err(Error::invalid(format!(
                    "matrix {l}x{d} needs {} values, got {}",
                    l * d,
                    vals.len()
                )));
            }
            let mut t = vec![0f32; l * d];
            for r in 0..l {
                for c in 0..d {
                    t[c * l + r] = vals[r * d + c];
                }
            }
            let bytes = Bytes::Owned(Arc::new(convert_from_f32(self.dtype, &t)));
            Matrix::new(bytes, self.dtype, l, d, Layout::Transposed)
        };
        let sae = Sae {
            meta: SaeMeta {
                format: Format::SaeLens,
                source: PathBuf::from("<in-memory test SAE>"),
                architecture: match self.activation {
                    Activation::TopK { .. } => "topk",
                    Activation::Relu => "standard",
                    Activation::JumpRelu => "jumprelu",
                }
                .into(),
                hook_name: None,
                hook_layer: None,
                model_name: None,
                dtype: self.dtype,
                conventions: Vec::new(),
                warnings: Vec::new(),
            },
            w_enc: matrix(&self.w_enc, self.enc_transposed)?,
            w_dec: matrix(&self.w_dec, self.dec_transposed)?,
            b_enc: self.b_enc,
            b_dec: self.b_dec,
            threshold: self.threshold,
            activation: self.activation,
            subtract_b_dec: self.subtract_b_dec,
            normalization: self.normalization,
            rescale_acts_by_decoder_norm: self.rescale,
            scales: Default::default(),
        };
        sae.validate()?;
        Ok(sae)
    }
}

/// The full pre-activation row (after rescale) of one input row, and its denorm constants.
/// Dot products in f64, rounded once to f32.
pub fn preactivations(sae: &Sae, x: &[f32]) -> (Vec<f32>, Option<RowDenorm>) {
    let mut xr = x.to_vec();
    let dn = sae.normalization.apply(&mut xr);
    if sae.subtract_b_dec {
        for (v, b) in xr.iter_mut().zip(&sae.b_dec) {
            *v -= b;
        }
    }
    let norms = sae
        .rescale_acts_by_decoder_norm
        .then(|| sae.w_dec.row_norms());
    let h = (0..sae.n_latents())
        .map(|i| {
            let w = sae.w_enc.row_f32(i);
            let dot: f64 = xr.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mut v = dot + sae.b_enc[i] as f64;
            if let Some(n) = &norms {
                v *= n[i] as f64;
            }
            v as f32
        })
        .collect();
    (h, dn)
}

/// The first latent whose pre-activation for the input row `x` is NaN or infinite, and
/// that value: how a backend that only knows *which row* went wrong names the latent.
pub fn first_non_finite_latent(sae: &Sae, x: &[f32]) -> Option<(usize, f32)> {
    let (h, _) = preactivations(sae, x);
    h.iter().position(|v| !v.is_finite()).map(|i| (i, h[i]))
}

/// Dense reference encode: same contract as `Engine::encode`.
pub fn encode(sae: &Sae, x: &[f32], rows: usize, row_offset: u64) -> Result<Encoded> {
    let d = sae.d_in();
    if x.len() != rows * d {
        return Err(Error::invalid(
            "reference encode: input length is not rows x d_in",
        ));
    }
    let mut codes = Codes::empty(sae.k());
    let mut denorm = Denorm::default();
    for (r, row) in x.chunks_exact(d).enumerate() {
        if row.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                context: "reference encode input".into(),
                row: row_offset + r as u64,
            });
        }
        let (h, dn) = preactivations(sae, row);
        let dn = dn.unwrap_or(RowDenorm {
            scale: 1.0,
            shift: 0.0,
        });
        denorm.scale.push(dn.scale);
        denorm.shift.push(dn.shift);
        if let Some(i) = h.iter().position(|v| v.is_nan()) {
            return Err(sae.non_finite_preactivation(i, h[i], row_offset + r as u64));
        }
        codes.append(&select(sae, &h))?;
    }
    sae.scale_codes(&mut codes);
    let denorm = (sae.normalization != Normalization::None).then_some(denorm);
    Ok(Encoded { codes, denorm })
}

/// One row's codes from its full pre-activation vector.
fn select(sae: &Sae, h: &[f32]) -> Codes {
    match sae.activation {
        Activation::TopK { k } => {
            let mut order: Vec<usize> = (0..h.len()).collect();
            order.sort_by(|&a, &b| h[b].total_cmp(&h[a]).then(a.cmp(&b)));
            let mut indices = vec![-1i32; k];
            let mut values = vec![0f32; k];
            for (slot, &i) in order.iter().take(k).enumerate() {
                if h[i] > 0.0 {
                    indices[slot] = i as i32;
                    values[slot] = h[i];
                }
            }
            Codes::TopK {
                n: 1,
                k,
                indices,
                values,
            }
        }
        Activation::Relu | Activation::JumpRelu => {
            let (mut indices, mut values) = (Vec::new(), Vec::new());
            for (i, &v) in h.iter().enumerate() {
                let above = match &sae.threshold {
                    Some(t) if sae.activation == Activation::JumpRelu => v > t[i],
                    _ => true,
                };
                if above && v > 0.0 {
                    indices.push(i as i32);
                    values.push(v);
                }
            }
            Codes::Csr {
                n: 1,
                row_ptr: vec![0, indices.len() as i64],
                indices,
                values,
            }
        }
    }
}

/// Dense reference decode: same contract as `Engine::decode`, accumulating in f64.
pub fn decode(sae: &Sae, codes: &Codes, denorm: Option<&Denorm>) -> Result<Vec<f32>> {
    codes.validate(sae.n_latents())?;
    if denorm.is_some_and(|dn| dn.scale.len() != codes.n_rows() || dn.shift.len() != codes.n_rows())
    {
        return Err(Error::invalid(
            "reference decode: denorm does not cover every row",
        ));
    }
    let d = sae.d_in();
    let norms = sae
        .rescale_acts_by_decoder_norm
        .then(|| sae.w_dec.row_norms());
    let codes = &*sae.codes_for_decoding(codes);
    let mut out = Vec::with_capacity(codes.n_rows() * d);
    for r in 0..codes.n_rows() {
        let mut acc: Vec<f64> = sae.b_dec.iter().map(|b| *b as f64).collect();
        let (idx, vals) = codes.row(r);
        for (&i, &v) in idx.iter().zip(vals) {
            if i < 0 {
                continue;
            }
            let i = i as usize;
            let c = match &norms {
                Some(n) if n[i] > 0.0 => v as f64 / n[i] as f64,
                Some(_) => 0.0,
                None => v as f64,
            };
            for (a, w) in acc.iter_mut().zip(sae.w_dec.row_f32(i)) {
                *a += c * w as f64;
            }
        }
        if let Some(dn) = denorm {
            let (s, t) = (dn.scale[r] as f64, dn.shift[r] as f64);
            acc.iter_mut().for_each(|a| *a = *a * s + t);
        }
        out.extend(acc.into_iter().map(|a| a as f32));
    }
    Ok(out)
}
