//! GPU-against-CPU verification (`sae-bench verify`, tests/cuda_parity.rs): random and
//! edge-case SAEs encoded and decoded by both engines, compared value by value.
//!
//! Rules: exact-precision top-k values must agree within f32 rounding of a different
//! summation order; an index may differ only where the two values are equal within that
//! rounding (a tie); on exactly representable data (the tie cases) indices must be
//! identical. Fast precision (activations rounded to bf16/f16) is checked against the f64
//! dense reference: every kept value is the true pre-activation of its latent within
//! bf16 rounding, and nothing larger was missed.

use std::sync::Arc;

use super::encode::Precision;
use super::engine::{CudaEngine, CudaOptions};
use super::gemm::GemmMode;
use crate::codes::Codes;
use crate::cpu::reference::{self, SaeBuilder};
use crate::cpu::CpuEngine;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{Engine, EngineOptions};
use crate::sae::{Activation, Normalization, Sae};
use crate::stats::LatentStats;

/// The outcome of one case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseResult {
    pub name: String,
    pub ok: bool,
    /// Largest |gpu - cpu| over compared values (encode and decode).
    pub max_abs_err: f64,
    /// Top-k positions whose index differs on a tie within rounding.
    pub tie_swaps: usize,
    /// First mismatches, or why the case failed.
    pub detail: Vec<String>,
    /// Chunks the bf16-score path re-encoded with f32 scores (uncertified selections).
    pub fallback_chunks: usize,
}

/// Deterministic splitmix64 stream (no RNG dependency; reproducible across runs).
pub struct Rng(crate::deterministic::SplitMix64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(crate::deterministic::SplitMix64::new(seed))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * scale).collect()
    }
}

struct Case {
    name: String,
    sae: Sae,
    x: Vec<f32>,
    rows: usize,
    row_offset: u64,
    precision: Precision,
    /// Tile widths to run (None = planned); results must not depend on them.
    tiles: Vec<Option<usize>>,
    /// Rows per chunk (small values exercise the double-buffered staging).
    max_rows: usize,
    /// Data exactly representable: indices must match exactly.
    exact_ties: bool,
    /// The bf16-score path must have re-encoded some chunk with f32 scores (heavy ties).
    want_fallback: bool,
}

fn random_sae(rng: &mut Rng, l: usize, d: usize, act: Activation, dtype: DType) -> SaeBuilder {
    let s = 1.0 / (d as f32).sqrt();
    SaeBuilder::new(l, d, rng.vec(l * d, s), rng.vec(l * d, s))
        .b_enc(rng.vec(l, 0.05))
        .b_dec(rng.vec(d, 0.1))
        .activation(act)
        .dtype(dtype)
}

impl Case {
    /// Exact precision, the planned tile only, up to 4096 rows per chunk; indices may differ
    /// from the CPU's on near-ties.
    fn new(name: &str, sae: Result<Sae>, x: Vec<f32>, rows: usize) -> Result<Case> {
        Ok(Case {
            name: name.into(),
            sae: sae?,
            x,
            rows,
            row_offset: 1000,
            precision: Precision::Exact,
            tiles: vec![None],
            max_rows: 4096,
            exact_ties: false,
            want_fallback: false,
        })
    }

    fn precision(self, precision: Precision) -> Case {
        Case { precision, ..self }
    }

    /// Tile widths to run (None = planned).
    fn tiles(self, tiles: &[Option<usize>]) -> Case {
        Case {
            tiles: tiles.to_vec(),
            ..self
        }
    }

    fn max_rows(self, max_rows: usize) -> Case {
        Case { max_rows, ..self }
    }

    /// Exactly representable data: indices must equal the CPU's.
    fn exact_ties(self) -> Case {
        Case {
            exact_ties: true,
            ..self
        }
    }

    /// The bf16-score path must fall back to f32 scores for some chunk.
    fn want_fallback(self) -> Case {
        Case {
            want_fallback: true,
            ..self
        }
    }
}

fn cases(quick: bool) -> Result<Vec<Case>> {
    let mut rng = Rng::new(0x5ae);
    let mut v = Vec::new();
    let topk = |k| Activation::TopK { k };
    // Random TopK, f32, tile independence (planned tile vs 128 vs 384).
    let (l, d, n) = (1000, 64, 37);
    v.push(
        Case::new(
            "topk f32 random, tiles 128/384/planned",
            random_sae(&mut rng, l, d, topk(16), DType::F32).build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(128), Some(384)]),
    );
    // bf16, both matrices transposed, width not a multiple of 8, b_dec subtracted, norm rescale.
    let (l, d, n) = (777, 100, 50);
    v.push(
        Case::new(
            "topk bf16 transposed d=100 subtract_b_dec constant_norm_rescale, chunks of 16 rows",
            random_sae(&mut rng, l, d, topk(32), DType::BF16)
                .transposed(true, true)
                .subtract_b_dec(true)
                .normalization(Normalization::ConstantNormRescale)
                .build(),
            rng.vec(n * d, 3.0),
            n,
        )?
        .tiles(&[None, Some(256)])
        .max_rows(16),
    );
    // f16, layer norm, decoder-norm rescale.
    let (l, d, n) = (2048, 96, 64);
    v.push(
        Case::new(
            "topk f16 layer_norm rescale_by_decoder_norm",
            random_sae(&mut rng, l, d, topk(64), DType::F16)
                .normalization(Normalization::LayerNorm { eps: 1e-5 })
                .rescale(true)
                .build(),
            rng.vec(n * d, 2.0),
            n,
        )?
        .tiles(&[None, Some(512)]),
    );
    // k = 1.
    let (l, d, n) = (300, 32, 20);
    v.push(
        Case::new(
            "topk k=1",
            random_sae(&mut rng, l, d, topk(1), DType::F32).build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(128)]),
    );
    // k = 512 and a first tile with more survivors than shared memory: the radix-select path.
    let (l, d, n) = (8192, 64, 16);
    v.push(
        Case::new(
            "topk k=512 (radix overflow path)",
            random_sae(&mut rng, l, d, topk(512), DType::F32)
                .b_enc(vec![0.5; l])
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(8192), Some(1024)]),
    );
    let (l, d, n) = (16384, 64, 8);
    v.push(
        Case::new(
            "topk k=64 wide first tile (radix path)",
            random_sae(&mut rng, l, d, topk(64), DType::BF16)
                .b_enc(vec![0.3; l])
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[Some(16384), Some(2048)]),
    );
    // Exact ties: weights in {-1, 0, 1}, integer inputs: every value exact, many equal.
    let (l, d, n) = (500, 16, 12);
    let tern = |rng: &mut Rng, m: usize| {
        (0..m)
            .map(|_| (rng.next_u64() % 3) as f32 - 1.0)
            .collect::<Vec<f32>>()
    };
    let (we, wd) = (tern(&mut rng, l * d), tern(&mut rng, l * d));
    let xi: Vec<f32> = (0..n * d)
        .map(|_| (rng.next_u64() % 5) as f32 - 1.0)
        .collect();
    v.push(
        Case::new(
            "topk exact ties (ternary weights)",
            SaeBuilder::new(l, d, we, wd).activation(topk(16)).build(),
            xi.clone(),
            n,
        )?
        .tiles(&[None, Some(128), Some(256)])
        .exact_ties(),
    );
    // All latents identical: one big tie, decided by index alone.
    let (l, d, n) = (1024, 8, 4);
    v.push(
        Case::new(
            "topk all-equal row (index order)",
            SaeBuilder::new(l, d, vec![1.0; l * d], vec![1.0; l * d])
                .activation(topk(64))
                .build(),
            vec![1.0; n * d],
            n,
        )?
        .tiles(&[None, Some(128)])
        .exact_ties(),
    );
    // Fewer than k positives: most biases very negative.
    let (l, d, n) = (600, 24, 10);
    let mut b = vec![-100.0f32; l];
    for i in (0..l).step_by(97) {
        b[i] = 1.0;
    }
    v.push(
        Case::new(
            "topk fewer than k positives (padding)",
            random_sae(&mut rng, l, d, topk(32), DType::F32)
                .b_enc(b)
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(128)]),
    );
    // Biases spread far wider than the scores, with decoder-norm rescale: the per-block
    // bound of the top-k pass skips most scores, and must never skip a winner.
    let (l, d, n) = (3000, 48, 24);
    v.push(
        Case::new(
            "topk block-bound skip: wide biases, rescale_by_decoder_norm",
            random_sae(&mut rng, l, d, topk(24), DType::F32)
                .b_enc(rng.vec(l, 3.0))
                .rescale(true)
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(128), Some(640)]),
    );
    // A NaN encoder weight (biases are checked at load, matrices are not): its block's
    // bound is NaN, so no score there is skipped and every row reports the non-finite
    // pre-activation of latent 333, as on the CPU.
    let (l, d, n) = (700, 32, 6);
    let s = 1.0 / (d as f32).sqrt();
    let mut w = rng.vec(l * d, s);
    w[333 * d + 5] = f32::NAN;
    v.push(
        Case::new(
            "topk NaN encoder row (non-finite pre-activation reported)",
            SaeBuilder::new(l, d, w, rng.vec(l * d, s))
                .b_enc(rng.vec(l, 0.05))
                .b_dec(rng.vec(d, 0.1))
                .activation(topk(8))
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(128)]),
    );
    // One row; empty batch.
    let (l, d) = (400, 40);
    v.push(Case::new(
        "topk one row",
        random_sae(&mut rng, l, d, topk(8), DType::BF16).build(),
        rng.vec(d, 1.0),
        1,
    )?);
    v.push(Case::new(
        "topk empty batch",
        random_sae(&mut rng, l, d, topk(8), DType::F32).build(),
        vec![],
        0,
    )?);
    // NaN in row 5: both engines must report row 1005.
    let (l, d, n) = (256, 16, 9);
    let mut xn = rng.vec(n * d, 1.0);
    xn[5 * d + 3] = f32::NAN;
    v.push(Case::new(
        "NaN input row",
        random_sae(&mut rng, l, d, topk(4), DType::F32).build(),
        xn.clone(),
        n,
    )?);
    v.push(Case::new(
        "NaN input row (ReLU)",
        random_sae(&mut rng, l, d, Activation::Relu, DType::F32).build(),
        xn,
        n,
    )?);
    // Threshold activations into CSR.
    let (l, d, n) = (1500, 48, 30);
    v.push(
        Case::new(
            "relu bf16 CSR",
            random_sae(&mut rng, l, d, Activation::Relu, DType::BF16).build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(256)]),
    );
    let th = rng
        .vec(l, 0.2)
        .into_iter()
        .map(|t| t.abs())
        .collect::<Vec<_>>();
    v.push(
        Case::new(
            "jumprelu f32 transposed CSR, 7-row chunks",
            random_sae(&mut rng, l, d, Activation::JumpRelu, DType::F32)
                .threshold(th)
                .transposed(true, false)
                .subtract_b_dec(true)
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .tiles(&[None, Some(384)])
        .max_rows(7),
    );
    // Fast precision (tensor-core GEMM on rounded activations).
    let (l, d, n) = (4096, 128, 64);
    v.push(
        Case::new(
            "topk bf16 fast precision",
            random_sae(&mut rng, l, d, topk(32), DType::BF16).build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .precision(Precision::Fast),
    );
    v.push(
        Case::new(
            "topk f16 fast precision, transposed",
            random_sae(&mut rng, l, d, topk(32), DType::F16)
                .transposed(true, false)
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .precision(Precision::Fast),
    );
    // bf16 scores (Fast, bf16 weights): selection on rounded upper bounds, candidates
    // rescored in f32. Checked against the f64 dot of the bf16-rounded input: values within
    // f32 rounding, indices equal except near-ties. Several chunks and tiles.
    let (l, d, n) = (16384, 256, 100);
    v.push(
        Case::new(
            "topk bf16 fast: bf16 scores rescored, b_dec subtracted, decoder-norm rescale",
            random_sae(&mut rng, l, d, topk(64), DType::BF16)
                .subtract_b_dec(true)
                .rescale(true)
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?
        .precision(Precision::Fast)
        .tiles(&[None, Some(1024)])
        .max_rows(48),
    );
    // Ternary weights and small integer inputs are exact in bf16, so Fast equals the CPU
    // exactly; the massive ties defeat the rescoring certificate and force the f32 fallback.
    let (l, d, n) = (4000, 16, 40);
    let (we, wd) = (tern(&mut rng, l * d), tern(&mut rng, l * d));
    let xi: Vec<f32> = (0..n * d)
        .map(|_| (rng.next_u64() % 5) as f32 - 1.0)
        .collect();
    v.push(
        Case::new(
            "topk bf16 fast ternary ties (f32-score fallback, identical indices)",
            SaeBuilder::new(l, d, we, wd)
                .activation(topk(16))
                .dtype(DType::BF16)
                .build(),
            xi,
            n,
        )?
        .precision(Precision::Fast)
        .tiles(&[None, Some(512)])
        .max_rows(16)
        .exact_ties()
        .want_fallback(),
    );
    if !quick {
        let (l, d, n) = (65536, 512, 256);
        v.push(
            Case::new(
                "topk bf16 fast L=65536 d=512 k=64 (bf16 scores)",
                random_sae(&mut rng, l, d, topk(64), DType::BF16).build(),
                rng.vec(n * d, 1.0),
                n,
            )?
            .precision(Precision::Fast),
        );
        let (l, d, n) = (65536, 512, 256);
        v.push(Case::new(
            "topk bf16 L=65536 d=512 k=64",
            random_sae(&mut rng, l, d, topk(64), DType::BF16).build(),
            rng.vec(n * d, 1.0),
            n,
        )?);
        let (l, d, n) = (32768, 256, 128);
        v.push(Case::new(
            "relu f16 L=32768 CSR",
            random_sae(&mut rng, l, d, Activation::Relu, DType::F16)
                .b_enc(vec![-0.2; l])
                .build(),
            rng.vec(n * d, 1.0),
            n,
        )?);
    }
    Ok(v)
}

/// Tolerance for one value: f32 rounding of a d-term dot product in another order.
fn tol(d: usize, v: f32) -> f64 {
    1e-5 * (d as f64).sqrt() * (1.0 + v.abs() as f64)
}

fn compare_topk(c: &Case, g: &Codes, r: &Codes, res: &mut CaseResult) {
    let d = c.sae.d_in();
    let (
        Codes::TopK {
            k,
            indices: gi,
            values: gv,
            ..
        },
        Codes::TopK {
            indices: ci,
            values: cv,
            ..
        },
    ) = (g, r)
    else {
        res.detail
            .push("GPU and CPU returned different code kinds".into());
        return;
    };
    if gi.len() != ci.len() {
        res.detail.push(format!(
            "GPU returned {} entries, CPU {}",
            gi.len(),
            ci.len()
        ));
        return;
    }
    for (p, ((&a, &b), (&x, &y))) in gi.iter().zip(ci).zip(gv.iter().zip(cv)).enumerate() {
        let err = (x as f64 - y as f64).abs();
        res.max_abs_err = res.max_abs_err.max(err);
        let t = if c.exact_ties { 0.0 } else { tol(d, y) };
        let bad_val = err > t;
        let bad_idx = a != b && (c.exact_ties || err > t || (a < 0) != (b < 0));
        if a != b && !bad_idx {
            res.tie_swaps += 1;
        }
        if (bad_val || bad_idx) && res.detail.len() < 8 {
            res.detail.push(format!(
                "row {} pos {}: gpu ({a}, {x}) cpu ({b}, {y})",
                p / k,
                p % k
            ));
        }
    }
}

fn compare_csr(c: &Case, g: &Codes, r: &Codes, res: &mut CaseResult) {
    let d = c.sae.d_in();
    for row in 0..c.rows {
        let (gi, gv) = g.row(row);
        let (ci, cv) = r.row(row);
        let mut a = 0;
        let mut b = 0;
        // Merge by latent: an entry on one side only must sit at the cut-off within rounding.
        while a < gi.len() || b < ci.len() {
            let (li, lc) = (
                gi.get(a).copied().unwrap_or(i32::MAX),
                ci.get(b).copied().unwrap_or(i32::MAX),
            );
            if li == lc {
                let err = (gv[a] as f64 - cv[b] as f64).abs();
                res.max_abs_err = res.max_abs_err.max(err);
                if err > tol(d, cv[b]) && res.detail.len() < 8 {
                    res.detail.push(format!(
                        "row {row} latent {li}: gpu {} cpu {}",
                        gv[a], cv[b]
                    ));
                }
                a += 1;
                b += 1;
            } else {
                let (lat, val, side) = if li < lc {
                    (li, gv[a], "gpu")
                } else {
                    (lc, cv[b], "cpu")
                };
                let cut = match (&c.sae.activation, &c.sae.threshold) {
                    (Activation::JumpRelu, Some(t)) => t[lat as usize].max(0.0),
                    _ => 0.0,
                };
                if (val - cut).abs() as f64 > tol(d, val) && res.detail.len() < 8 {
                    res.detail.push(format!(
                        "row {row}: latent {lat} ({val}) only on the {side} side"
                    ));
                }
                if li < lc {
                    a += 1
                } else {
                    b += 1
                }
            }
        }
    }
}

/// Fast precision: every GPU entry is its latent's true (f64 reference) pre-activation
/// within low-precision rounding, and no latent above the GPU's k-th value was left out.
fn check_fast(c: &Case, g: &Codes, res: &mut CaseResult) {
    let d = c.sae.d_in();
    let Codes::TopK {
        k, indices, values, ..
    } = g
    else {
        res.detail.push("fast check expects top-k codes".into());
        return;
    };
    // bf16 rounding of x: relative 2^-8 per term, summed over d terms of random sign.
    let rel = 2f64.powi(-8) * 4.0;
    for r in 0..c.rows {
        let (h, _) = reference::preactivations(&c.sae, &c.x[r * d..(r + 1) * d]);
        let scale =
            (d as f64).sqrt() * rel * h.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-3);
        let row_i = &indices[r * k..(r + 1) * k];
        let row_v = &values[r * k..(r + 1) * k];
        let mut kth = f64::INFINITY;
        for (&i, &v) in row_i.iter().zip(row_v) {
            if i < 0 {
                kth = 0.0;
                continue;
            }
            let err = (v as f64 - h[i as usize] as f64).abs();
            res.max_abs_err = res.max_abs_err.max(err);
            if err > scale && res.detail.len() < 8 {
                res.detail.push(format!(
                    "row {r}: latent {i} gpu {v} true {}",
                    h[i as usize]
                ));
            }
            kth = kth.min(v as f64);
        }
        let missed = h
            .iter()
            .enumerate()
            .filter(|(i, v)| **v as f64 > kth + 2.0 * scale && !row_i.contains(&(*i as i32)))
            .count();
        if missed > 0 && res.detail.len() < 8 {
            res.detail.push(format!(
                "row {r}: {missed} latents clearly above the k-th value were missed"
            ));
        }
    }
}

/// Pre-activations of Fast precision on bf16 weights, in f64: the input preprocessed as the
/// engine does, rounded to bf16 (nearest even), dotted with the weights, + b_enc, times the
/// decoder norm when the SAE rescales.
fn fast_preactivations(sae: &Sae, x: &[f32]) -> Vec<f64> {
    let mut xr = x.to_vec();
    sae.normalization.apply(&mut xr);
    if sae.subtract_b_dec {
        for (v, b) in xr.iter_mut().zip(&sae.b_dec) {
            *v -= b;
        }
    }
    let xb: Vec<f64> = xr
        .iter()
        .map(|v| half::bf16::from_f32(*v).to_f32() as f64)
        .collect();
    let norms = sae
        .rescale_acts_by_decoder_norm
        .then(|| sae.w_dec.row_norms());
    (0..sae.n_latents())
        .map(|i| {
            let w = sae.w_enc.row_f32(i);
            let dot: f64 = xb.iter().zip(&w).map(|(a, b)| a * *b as f64).sum();
            let mut v = dot + sae.b_enc[i] as f64;
            if let Some(n) = &norms {
                v *= n[i] as f64;
            }
            v
        })
        .collect()
}

/// Fast precision with bf16 weights: the codes are exactly the top k of the f32
/// pre-activations of the bf16-rounded input (checked against f64): each value within f32
/// rounding of its latent's, and no latent outside the codes above the k-th value beyond that
/// rounding (indices equal except near-ties).
fn check_fast_selection(c: &Case, g: &Codes, res: &mut CaseResult) {
    let d = c.sae.d_in();
    let Codes::TopK {
        k, indices, values, ..
    } = g
    else {
        res.detail.push("fast check expects top-k codes".into());
        return;
    };
    for r in 0..c.rows {
        let h = fast_preactivations(&c.sae, &c.x[r * d..(r + 1) * d]);
        let row_i = &indices[r * k..(r + 1) * k];
        let row_v = &values[r * k..(r + 1) * k];
        let mut kth = f64::INFINITY;
        let mut full = true;
        for (&i, &v) in row_i.iter().zip(row_v) {
            if i < 0 {
                full = false;
                continue;
            }
            let want = h[i as usize];
            let err = (v as f64 - want).abs();
            res.max_abs_err = res.max_abs_err.max(err);
            if err > tol(d, v) && res.detail.len() < 8 {
                res.detail.push(format!(
                    "row {r}: latent {i} gpu {v}, f32 pre-activation of the rounded input {want}"
                ));
            }
            kth = kth.min(v as f64);
        }
        // With fewer than k entries every positive latent must be present.
        let floor = if full { kth } else { 0.0 };
        let missed: Vec<usize> = h
            .iter()
            .enumerate()
            .filter(|(i, v)| **v > floor + tol(d, **v as f32) && !row_i.contains(&(*i as i32)))
            .map(|(i, _)| i)
            .collect();
        if !missed.is_empty() && res.detail.len() < 8 {
            res.detail.push(format!(
                "row {r}: latents {:?} above the k-th value {floor} were left out (first: {})",
                &missed[..missed.len().min(4)],
                h[missed[0]]
            ));
        }
    }
}

fn run_case(device: usize, c: &Case) -> CaseResult {
    let mut res = CaseResult {
        name: c.name.clone(),
        ok: false,
        max_abs_err: 0.0,
        tie_swaps: 0,
        detail: Vec::new(),
        fallback_chunks: 0,
    };
    let sae = Arc::new(c.sae.clone());
    let cpu = match CpuEngine::new(sae.clone(), &EngineOptions::default()) {
        Ok(e) => e,
        Err(e) => {
            res.detail.push(format!("CPU engine: {e}"));
            return res;
        }
    };
    let want = cpu.encode(&c.x, c.rows, c.row_offset);
    // Every tile width with cuBLAS's GEMM, and with the cuBLASLt search (which small SAEs
    // only reach when forced) plus the double-buffered top-k pass on a second stream: the
    // codes must depend on none of them.
    let runs = c
        .tiles
        .iter()
        .flat_map(|t| [(*t, GemmMode::Cublas, false), (*t, GemmMode::Lt, true)]);
    for (tile, gemm, overlap) in runs {
        let opts = CudaOptions {
            precision: c.precision,
            tile_latents: tile,
            max_rows: c.max_rows,
            workspace_bytes: 1 << 30,
            // Small SAEs would take f32 scores by default: force the bf16-score path.
            bf16_scores: Some(true),
            gemm,
            overlap,
        };
        let gpu = match CudaEngine::new(device, sae.clone(), opts) {
            Ok(e) => e,
            Err(e) => {
                res.detail.push(format!("CUDA engine: {e}"));
                return res;
            }
        };
        let got = gpu.encode(&c.x, c.rows, c.row_offset);
        let tag = format!("tile {tile:?}, GEMM {gemm:?}, overlap {overlap}");
        match (&got, &want) {
            (Err(Error::NonFinite { row: a, .. }), Err(Error::NonFinite { row: b, .. })) => {
                if a != b {
                    res.detail.push(format!(
                        "{tag}: GPU reports non-finite row {a}, CPU row {b}"
                    ));
                }
                continue;
            }
            (
                Err(Error::SaeNonFinite {
                    row: a, latent: la, ..
                }),
                Err(Error::SaeNonFinite {
                    row: b, latent: lb, ..
                }),
            ) => {
                if (a, la) != (b, lb) {
                    res.detail.push(format!(
                        "{tag}: GPU blames latent {la} on row {a}, CPU latent {lb} on row {b}"
                    ));
                }
                continue;
            }
            (Err(e), _) => {
                res.detail.push(format!("{tag}: GPU failed: {e}"));
                continue;
            }
            (Ok(_), Err(e)) => {
                res.detail
                    .push(format!("{tag}: CPU failed ({e}) but the GPU succeeded"));
                continue;
            }
            (Ok(g), Ok(w)) => {
                let before = res.detail.len();
                if c.precision == Precision::Fast && c.exact_ties {
                    compare_topk(c, &g.codes, &w.codes, &mut res);
                } else if c.precision == Precision::Fast {
                    check_fast(c, &g.codes, &mut res);
                    if c.sae.w_enc.dtype() == DType::BF16 {
                        check_fast_selection(c, &g.codes, &mut res);
                    }
                } else if c.sae.activation.is_topk() {
                    compare_topk(c, &g.codes, &w.codes, &mut res);
                } else {
                    compare_csr(c, &g.codes, &w.codes, &mut res);
                }
                if g.denorm != w.denorm {
                    res.detail
                        .push(format!("{tag}: normalization constants differ"));
                }
                // Decode the CPU's codes on both engines (same input, so exact arithmetic order).
                match (
                    gpu.decode(&w.codes, w.denorm.as_ref()),
                    cpu.decode(&w.codes, w.denorm.as_ref()),
                ) {
                    (Ok(a), Ok(b)) => {
                        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                            let err = (*x as f64 - *y as f64).abs();
                            res.max_abs_err = res.max_abs_err.max(err);
                            if err > 1e-5 * (1.0 + y.abs() as f64) && res.detail.len() < before + 8
                            {
                                res.detail.push(format!(
                                    "{tag}: decode row {} col {}: gpu {x} cpu {y}",
                                    i / c.sae.d_in(),
                                    i % c.sae.d_in()
                                ));
                            }
                        }
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        res.detail.push(format!("{tag}: decode failed: {e}"))
                    }
                }
                if c.want_fallback && gpu.fallback_chunks() == 0 {
                    res.detail.push(format!(
                        "{tag}: expected the ties to force the f32-score fallback; none ran"
                    ));
                }
                res.fallback_chunks += gpu.fallback_chunks();
                if res.detail.len() > before {
                    res.detail.insert(before, format!("{tag}:"));
                }
            }
        }
    }
    res.ok = res.detail.is_empty();
    res
}

/// Batched statistics of three "models" (CPU codes of shifted inputs) against LatentStats.
fn stats_case(device: usize) -> CaseResult {
    let mut res = CaseResult {
        name: "batched stats, 3 models in one launch, masks".into(),
        ok: false,
        max_abs_err: 0.0,
        tie_swaps: 0,
        detail: Vec::new(),
        fallback_chunks: 0,
    };
    let mut rng = Rng::new(77);
    let (l, d, n) = (700, 32, 40);
    let sae = match random_sae(&mut rng, l, d, Activation::TopK { k: 8 }, DType::F32).build() {
        Ok(s) => Arc::new(s),
        Err(e) => {
            res.detail.push(e.to_string());
            return res;
        }
    };
    let mut run = || -> Result<()> {
        let cpu = CpuEngine::new(sae.clone(), &EngineOptions::default())?;
        let gpu = CudaEngine::new(
            device,
            sae.clone(),
            CudaOptions::from_engine(&EngineOptions::default())?,
        )?;
        let mut codes = Vec::new();
        for m in 0..3 {
            let x = rng.vec(n * d, 1.0 + m as f32);
            codes.push(cpu.encode(&x, n, 0)?.codes);
        }
        let mask: Vec<u8> = (0..n).map(|i| (i % 3 != 0) as u8).collect();
        let masks = [None, Some(&mask[..]), None];
        let batch: Vec<(usize, &Codes, Option<&[u8]>)> =
            (0..3).map(|m| (m, &codes[m], masks[m])).collect();
        // Two calls, the second adding model 0 again: accumulation across launches.
        let extra = vec![(0usize, &codes[0], None)];
        let got = gpu.batched_stats(3, &[batch, extra])?;
        for m in 0..3 {
            let mut want = LatentStats::new(sae.fingerprint(), l);
            want.accumulate(&codes[m], masks[m])?;
            if m == 0 {
                want.accumulate(&codes[0], None)?;
            }
            let g = &got[m];
            if g.n_tokens != want.n_tokens || g.n_active != want.n_active || g.max != want.max {
                res.detail
                    .push(format!("model {m}: counts or maxima differ"));
            }
            for i in 0..l {
                for (a, b) in [(g.sum[i], want.sum[i]), (g.sum_sq[i], want.sum_sq[i])] {
                    let err = (a - b).abs();
                    res.max_abs_err = res.max_abs_err.max(err);
                    if err > 1e-12 * (1.0 + b.abs()) && res.detail.len() < 8 {
                        res.detail
                            .push(format!("model {m} latent {i}: gpu {a} cpu {b}"));
                    }
                }
            }
        }
        // Steering: x + s * w / ||w|| against the host formula.
        let mut x = rng.vec(3 * d, 1.0);
        let w = sae.w_dec.row_f32(5);
        let norm = w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let want: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v + (2.5 / norm) as f32 * w[i % d])
            .collect();
        gpu.steer(&mut x, 3, 5, 2.5)?;
        for (a, b) in x.iter().zip(&want) {
            let err = (*a as f64 - *b as f64).abs();
            res.max_abs_err = res.max_abs_err.max(err);
            if err > 1e-6 * (1.0 + b.abs() as f64) && res.detail.len() < 8 {
                res.detail.push(format!("steer: gpu {a} host {b}"));
            }
        }
        Ok(())
    };
    if let Err(e) = run() {
        res.detail.push(e.to_string());
    }
    res.ok = res.detail.is_empty();
    res
}

/// Device-pointer encode/decode (`DevicePtrOps`) on device buffers against the same
/// engine's host path: identical codes, identical reconstructions, the same non-finite row.
fn device_ptr_case(
    device: usize,
    name: &str,
    sae: Result<Sae>,
    precision: Precision,
) -> CaseResult {
    let mut res = CaseResult {
        name: name.into(),
        ok: false,
        max_abs_err: 0.0,
        tie_swaps: 0,
        detail: Vec::new(),
        fallback_chunks: 0,
    };
    let run = || -> Result<()> {
        let sae = Arc::new(sae?);
        let (d, k) = (sae.d_in(), sae.k().unwrap_or(0));
        let opts = CudaOptions {
            precision,
            tile_latents: None,
            max_rows: 40,
            workspace_bytes: 1 << 30,
            bf16_scores: Some(true),
            gemm: GemmMode::Lt,
            overlap: false,
        };
        let eng = CudaEngine::new(device, sae.clone(), opts)?;
        let ops = eng
            .device_ptr()
            .ok_or_else(|| Error::Cuda("CUDA engine without device pointers".into()))?;
        let mut rng = Rng::new(0xde70 ^ d as u64);
        let n = 97;
        let mut x = rng.vec(n * d, 2.0);
        let want = eng.encode(&x, n, 0)?;
        let gpu = eng.gpu();
        let xd = gpu.upload(&x)?;
        let (idx, val) = (gpu.alloc(n * k * 4)?, gpu.alloc(n * k * 4)?);
        let (sc, sh) = (gpu.alloc(n * 4)?, gpu.alloc(n * 4)?);
        let args = super::device_ptr::EncodeTopkDevice {
            x: xd.ptr,
            rows: n,
            out_indices: idx.ptr,
            out_values: val.ptr,
            out_scale: sc.ptr,
            out_shift: sh.ptr,
            stream: 0,
        };
        // SAFETY: every buffer was allocated above on this engine's device with the sizes
        // stated in args; stream 0 is the legacy default stream.
        unsafe { ops.encode_topk_device(&args)? };
        let (mut gi, mut gv) = (vec![0i32; n * k], vec![0f32; n * k]);
        let (mut gs, mut gh) = (vec![0f32; n], vec![0f32; n]);
        gpu.dtoh(&mut gi, idx.ptr)?;
        gpu.dtoh(&mut gv, val.ptr)?;
        gpu.dtoh(&mut gs, sc.ptr)?;
        gpu.dtoh(&mut gh, sh.ptr)?;
        let Codes::TopK {
            indices, values, ..
        } = &want.codes
        else {
            return Err(Error::Cuda("host encode gave CSR codes".into()));
        };
        if &gi != indices
            || gv
                .iter()
                .zip(values)
                .any(|(a, b)| a.to_bits() != b.to_bits())
        {
            let rows = (0..n)
                .filter(|r| gi[r * k..(r + 1) * k] != indices[r * k..(r + 1) * k])
                .count();
            res.detail.push(format!(
                "device-pointer encode differs from the host encode ({rows} rows with other indices)"
            ));
        }
        let (ws, wh) = match &want.denorm {
            Some(dn) => (dn.scale.clone(), dn.shift.clone()),
            None => (vec![1.0; n], vec![0.0; n]),
        };
        if gs != ws || gh != wh {
            res.detail
                .push("device-pointer normalization constants differ".into());
        }
        // Decode of the host codes, de-normalized, on device buffers.
        let out = gpu.alloc(n * d * 4)?;
        let (ci, cv) = (gpu.upload(indices)?, gpu.upload(values)?);
        let (si, hi) = (gpu.upload(&ws)?, gpu.upload(&wh)?);
        let dargs = super::device_ptr::DecodeTopkDevice {
            indices: ci.ptr,
            values: cv.ptr,
            rows: n,
            k,
            scale: si.ptr,
            shift: hi.ptr,
            out_x: out.ptr,
            stream: 0,
        };
        // SAFETY: as above; indices come from the engine's own encode (valid latents or -1).
        unsafe { ops.decode_topk_device(&dargs)? };
        let mut gx = vec![0f32; n * d];
        gpu.dtoh(&mut gx, out.ptr)?;
        let hx = eng.decode(&want.codes, want.denorm.as_ref())?;
        let diff = gx
            .iter()
            .zip(&hx)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        if diff > 0 {
            res.detail.push(format!(
                "device-pointer decode differs from the host decode in {diff} values"
            ));
        }
        // A NaN in row 41: the same error as the host path.
        x[41 * d + 3] = f32::NAN;
        gpu.htod(xd.ptr, &x)?;
        // SAFETY: as above.
        let got = unsafe { ops.encode_topk_device(&args) };
        match got {
            Err(Error::NonFinite { row: 41, .. }) => {}
            other => res
                .detail
                .push(format!("NaN in row 41: device path returned {other:?}")),
        }
        res.fallback_chunks = eng.fallback_chunks();
        Ok(())
    };
    if let Err(e) = run() {
        res.detail.push(e.to_string());
    }
    res.ok = res.detail.is_empty();
    res
}

fn device_ptr_cases(device: usize) -> Vec<CaseResult> {
    let mut rng = Rng::new(0xd7);
    let topk = |k| Activation::TopK { k };
    vec![
        device_ptr_case(
            device,
            "device pointers: bf16 fast (bf16 scores), b_dec subtracted, 3 chunks in place",
            random_sae(&mut rng, 8192, 128, topk(32), DType::BF16)
                .subtract_b_dec(true)
                .build(),
            Precision::Fast,
        ),
        device_ptr_case(
            device,
            "device pointers: f32 exact, in place",
            random_sae(&mut rng, 3000, 64, topk(16), DType::F32).build(),
            Precision::Exact,
        ),
        device_ptr_case(
            device,
            "device pointers: f16 layer_norm (staged path)",
            random_sae(&mut rng, 2048, 96, topk(8), DType::F16)
                .normalization(Normalization::LayerNorm { eps: 1e-5 })
                .build(),
            Precision::Exact,
        ),
    ]
}

/// Runs every case on `device` (`quick` drops the two larger ones).
pub fn run(device: usize, quick: bool) -> Result<Vec<CaseResult>> {
    super::available(device)?;
    let mut out: Vec<CaseResult> = cases(quick)?.iter().map(|c| run_case(device, c)).collect();
    out.push(stats_case(device));
    out.extend(device_ptr_cases(device));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The case list builds on the CPU (no device needed): every SAE is valid, every input
    /// has rows x d_in values, names are unique, and every case runs at least one tile.
    #[test]
    fn cases_are_well_formed() {
        let all = cases(false).expect("verify cases build");
        let quick = cases(true).expect("quick verify cases build");
        assert!(quick.len() < all.len());
        let mut names = std::collections::HashSet::new();
        for c in &all {
            assert!(names.insert(c.name.clone()), "duplicate case {}", c.name);
            assert_eq!(c.x.len(), c.rows * c.sae.d_in(), "{}", c.name);
            assert!(!c.tiles.is_empty() && c.max_rows > 0, "{}", c.name);
        }
        // The fallback case is the one that must force the f32-score path.
        assert_eq!(all.iter().filter(|c| c.want_fallback).count(), 1);
    }
}
