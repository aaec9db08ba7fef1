//! Encode and decode paired activations on any backend.
//!
//! The encoder is an SAE encode of width `n_models * d` run by an ordinary [`Engine`]
//! (the CPU GEMM or the CUDA engine). BatchTopKCrossCoder keeps a code `c` of latent j
//! where `fl(c * norm_j) > t` (f32 multiply, as torch computes it). Folding that into a
//! per-latent threshold `c > fl(t / norm_j)` is not exact: the two roundings disagree
//! at the boundary (the test `folded_threshold_is_not_exact` exhibits such values). So
//! the engine runs JumpReLU with a folded cut lowered by a margin that provably keeps
//! every code the exact test keeps ([`prefilter_cut`]), and the exact comparison then
//! runs on the few surviving sparse entries on the host ([`apply_threshold`]).

use std::sync::Arc;

use crate::backend::{BackendKind, Engine, EngineOptions};
use crate::codes::Codes;
use crate::error::{Error, Result};
use crate::sae::{Activation, Sae};

use super::Crosscoder;

/// Codes of one batch: one shared code, or one per model (DECOUPLED).
#[derive(Debug, Clone, PartialEq)]
pub struct CrosscoderCodes {
    /// `[shared]` or `[model 0, model 1, ...]`, CSR, latent indices ascending.
    pub codes: Vec<Codes>,
}

impl CrosscoderCodes {
    /// The code model `m` decodes (the shared one unless DECOUPLED).
    pub fn for_model(&self, m: usize) -> &Codes {
        if self.codes.len() == 1 {
            &self.codes[0]
        } else {
            &self.codes[m]
        }
    }

    /// Rows.
    pub fn n_rows(&self) -> usize {
        self.codes[0].n_rows()
    }
}

/// A crosscoder bound to a backend.
pub struct CrosscoderEngine {
    cc: Arc<Crosscoder>,
    engine: Box<dyn Engine>,
}

/// The largest cut `q` such that `fl(c * norm) > t` implies `c > q` for every f32 `c > 0`
/// (round-to-nearest: `fl(c * norm) <= c * norm * (1 + 2^-24)`, so `c > t / (norm (1 + 2^-24))`;
/// the cut is `t / norm` shrunk by 1e-6 relative, which covers that and the rounding
/// of the cut itself). A zero norm never passes; a tiny quotient falls back to 0
/// (plain ReLU), where subnormal products make the bound unsafe.
pub fn prefilter_cut(t: f32, norm: f32) -> f32 {
    if norm <= 0.0 {
        return f32::MAX;
    }
    let q = (t as f64 / norm as f64) * (1.0 - 1e-6);
    if q < 1e-30 {
        0.0
    } else {
        (q as f32).min(f32::MAX)
    }
}

/// Keeps the entries of ReLU (or pre-filtered JumpReLU) codes whose normalized value
/// `fl(c * norms[j])` exceeds `t`: the fork's BatchTopK mask, bit for bit given `c`.
pub fn apply_threshold(codes: &Codes, norms: &[f32], t: f32) -> Result<Codes> {
    let Codes::Csr {
        n,
        row_ptr,
        indices,
        values,
    } = codes
    else {
        return Err(Error::invalid("crosscoder codes must be CSR"));
    };
    let mut out_ptr = Vec::with_capacity(row_ptr.len());
    let mut out_idx = Vec::new();
    let mut out_val = Vec::new();
    out_ptr.push(0i64);
    for r in 0..*n {
        for e in row_ptr[r] as usize..row_ptr[r + 1] as usize {
            let (j, c) = (indices[e], values[e]);
            if c * norms[j as usize] > t {
                out_idx.push(j);
                out_val.push(c);
            }
        }
        out_ptr.push(out_idx.len() as i64);
    }
    Ok(Codes::Csr {
        n: *n,
        row_ptr: out_ptr,
        indices: out_idx,
        values: out_val,
    })
}

/// The SAE the engine runs: ReLU, or for BatchTopK a JumpReLU pre-filter whose cut per
/// latent is the smallest [`prefilter_cut`] over the thresholds that apply to it.
pub(crate) fn engine_sae(cc: &Crosscoder) -> Sae {
    let mut sae = (*cc.sae).clone();
    if let Some(th) = &cc.threshold {
        let l = cc.n_latents();
        let cuts = (0..l)
            .map(|j| {
                th.iter()
                    .enumerate()
                    .map(|(m, t)| {
                        let norm = if th.len() == 1 {
                            cc.norms[j]
                        } else {
                            cc.norms[m * l + j]
                        };
                        prefilter_cut(*t, norm)
                    })
                    .fold(f32::MAX, f32::min)
            })
            .collect();
        sae.activation = Activation::JumpRelu;
        sae.threshold = Some(cuts);
        sae.meta.conventions.push(
            "JumpReLU pre-filter: per-latent cut below threshold / norm; exact test on the host"
                .into(),
        );
    }
    sae
}

impl CrosscoderEngine {
    /// Binds `cc` to a backend.
    pub fn new(cc: Arc<Crosscoder>, kind: BackendKind, opts: &EngineOptions) -> Result<Self> {
        let engine = crate::engine::engine(kind, Arc::new(engine_sae(&cc)), opts)?;
        Ok(CrosscoderEngine { cc, engine })
    }

    /// The crosscoder.
    pub fn crosscoder(&self) -> &Crosscoder {
        &self.cc
    }

    /// The backend's name.
    pub fn name(&self) -> String {
        self.engine.name()
    }

    /// Encodes `rows` rows of paired activations `x`, `[rows, n_models, d]` row-major
    /// (the models' rows concatenated, as the fork takes them). A non-finite input is an
    /// error naming the row (`row_offset` + local row).
    pub fn encode(&self, x: &[f32], rows: usize, row_offset: u64) -> Result<CrosscoderCodes> {
        let cc = &self.cc;
        let width = cc.n_models * cc.d;
        if x.len() != rows * width {
            return Err(Error::invalid(format!(
                "crosscoder encode: {} values for {rows} rows of width {width}",
                x.len()
            )));
        }
        let enc = match &cc.input_norm {
            None => self.engine.encode(x, rows, row_offset)?,
            Some(norm) => {
                // The fork: (x - mean) * global_scale, each step in f32.
                let mut xn = x.to_vec();
                for row in xn.chunks_exact_mut(width) {
                    for (v, m) in row.iter_mut().zip(&norm.mean) {
                        *v = (*v - m) * norm.scale;
                    }
                }
                self.engine.encode(&xn, rows, row_offset)?
            }
        };
        let codes = match &cc.threshold {
            None => vec![enc.codes],
            Some(th) if th.len() == 1 => vec![apply_threshold(&enc.codes, &cc.norms, th[0])?],
            Some(th) => {
                let l = cc.n_latents();
                th.iter()
                    .enumerate()
                    .map(|(m, t)| apply_threshold(&enc.codes, &cc.norms[m * l..(m + 1) * l], *t))
                    .collect::<Result<Vec<_>>>()?
            }
        };
        Ok(CrosscoderCodes { codes })
    }

    /// Decodes codes to `[rows, n_models, d]`: model m's rows are `f(_m) . decoder.weight[m]
    /// + decoder.bias[m]`, de-normalized when the crosscoder normalizes its input.
    pub fn decode(&self, codes: &CrosscoderCodes) -> Result<Vec<f32>> {
        let cc = &self.cc;
        let (n, d) = (cc.n_models, cc.d);
        let mut out = self.engine.decode(&codes.codes[0], None)?;
        if codes.codes.len() > 1 {
            // One decode per model's code, keeping that model's slice: exactly the fork's
            // per-model einsum, at n_models times the (cheap) gather-sum cost.
            for m in 1..n {
                let part = self.engine.decode(&codes.codes[m], None)?;
                for (o, p) in out.chunks_exact_mut(n * d).zip(part.chunks_exact(n * d)) {
                    o[m * d..(m + 1) * d].copy_from_slice(&p[m * d..(m + 1) * d]);
                }
            }
        }
        if let Some(norm) = &cc.input_norm {
            let div = norm.scale + 1e-8;
            for row in out.chunks_exact_mut(n * d) {
                for (v, m) in row.iter_mut().zip(&norm.mean) {
                    *v = *v / div + m;
                }
            }
        }
        Ok(out)
    }
}
