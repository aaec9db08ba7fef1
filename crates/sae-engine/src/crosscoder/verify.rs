//! `sae-bench verify` cases for crosscoders: the same crosscoder encoded and decoded by
//! the CUDA engine and the CPU engine, compared value by value. A latent kept on one
//! side only must sit at its cut within f32 rounding of a different summation order
//! (the ReLU cut at 0, or the threshold on the normalized code).

use std::sync::Arc;

use super::encode::{CrosscoderCodes, CrosscoderEngine};
use super::load::{assemble, Parts};
use super::{CodeNormalization, Crosscoder, InputNorm};
use crate::backend::{BackendKind, EngineOptions};
use crate::dtype::DType;
use crate::error::Result;
use crate::matrix::Matrix;
use crate::verify::{CaseResult, Rng};

/// One case: a crosscoder and paired rows `[rows, n_models * d]`.
pub struct Case {
    /// Shown by `sae-bench verify`.
    pub name: String,
    /// The crosscoder.
    pub cc: Arc<Crosscoder>,
    /// Paired rows.
    pub x: Vec<f32>,
    /// Row count.
    pub rows: usize,
}

/// A random crosscoder (`[L, 2 d]` weights, scale 1/sqrt(2d)) with the given normalization,
/// thresholds and input normalization.
fn random(
    rng: &mut Rng,
    l: usize,
    d: usize,
    code_norm: CodeNormalization,
    threshold: Option<Vec<f32>>,
    normalize: bool,
) -> Result<Crosscoder> {
    let n = 2;
    let s = 1.0 / ((n * d) as f32).sqrt();
    let enc = Matrix::from_f32(&rng.vec(l * n * d, s), l, n * d, DType::F32)?;
    let dec = Matrix::from_f32(&rng.vec(l * n * d, s * 2.0), l, n * d, DType::F32)?;
    let input_norm = normalize.then(|| InputNorm {
        mean: rng.vec(n * d, 0.3),
        scale: 0.7,
    });
    assemble(Parts {
        source: "verify:crosscoder".into(),
        n,
        d,
        w_enc: enc,
        w_dec: dec,
        b_enc: rng.vec(l, 0.1),
        b_dec: rng.vec(n * d, 0.1),
        code_norm,
        threshold,
        k: None,
        input_norm,
    })
}

/// The cases: BatchTopK with CROSSCODER normalization and an input normalizer, DECOUPLED
/// with per-model thresholds, and the ReLU CrossCoder; widths that cross tile edges.
pub fn cases() -> Result<Vec<Case>> {
    let mut rng = Rng::new(14);
    let (l, d, rows) = (1000, 48, 96);
    let specs = [
        (
            "crosscoder BatchTopK, CROSSCODER norm, input normalizer",
            CodeNormalization::Crosscoder,
            Some(vec![0.35]),
            true,
        ),
        (
            "crosscoder BatchTopK, DECOUPLED, two thresholds",
            CodeNormalization::Decoupled,
            Some(vec![0.15, 0.25]),
            false,
        ),
        (
            "crosscoder ReLU",
            CodeNormalization::Crosscoder,
            None,
            false,
        ),
    ];
    specs
        .into_iter()
        .map(|(name, norm, th, normalize)| {
            let cc = random(&mut rng, l, d, norm, th, normalize)?;
            Ok(Case {
                name: name.into(),
                cc: Arc::new(cc),
                x: rng.vec(rows * 2 * d, 1.0),
                rows,
            })
        })
        .collect()
}

/// f32 rounding of a `width`-term dot product in another order.
fn tol(width: usize, v: f32) -> f64 {
    1e-5 * (width as f64).sqrt() * (1.0 + v.abs() as f64)
}

/// Compares the GPU's codes with the CPU's; see the module docs.
fn compare(c: &Case, g: &CrosscoderCodes, r: &CrosscoderCodes, res: &mut CaseResult) {
    let cc = &c.cc;
    let (width, l) = (cc.n_models * cc.d, cc.n_latents());
    if g.codes.len() != r.codes.len() {
        res.detail
            .push("GPU and CPU returned different code counts".into());
        return;
    }
    for (m, (gc, rc)) in g.codes.iter().zip(&r.codes).enumerate() {
        let (norms, t) = match &cc.threshold {
            None => (&[][..], 0.0),
            Some(th) if th.len() == 1 => (&cc.norms[..], th[0]),
            Some(th) => (&cc.norms[m * l..(m + 1) * l], th[m]),
        };
        for row in 0..c.rows {
            let mut got: Vec<(usize, f32)> = gc.active(row).collect();
            let want: Vec<(usize, f32)> = rc.active(row).collect();
            let mut only = Vec::new();
            for (j, v) in &want {
                match got.iter().position(|(i, _)| i == j) {
                    Some(p) => {
                        let err = (got[p].1 as f64 - *v as f64).abs();
                        res.max_abs_err = res.max_abs_err.max(err);
                        if err > tol(width, *v) && res.detail.len() < 8 {
                            res.detail.push(format!(
                                "code {m} row {row} latent {j}: gpu {} cpu {v}",
                                got[p].1
                            ));
                        }
                        got.remove(p);
                    }
                    None => only.push((*j, *v, "cpu")),
                }
            }
            only.extend(got.into_iter().map(|(j, v)| (j, v, "gpu")));
            for (j, v, side) in only {
                // At the ReLU cut (v ~ 0) or at the threshold (v * norm ~ t).
                let at_relu = (v as f64) <= tol(width, v);
                let at_threshold = !norms.is_empty()
                    && ((v * norms[j]) as f64 - t as f64).abs() <= tol(width, v) * norms[j] as f64;
                if !(at_relu || at_threshold) && res.detail.len() < 8 {
                    res.detail.push(format!(
                        "code {m} row {row}: latent {j} ({v}) only on the {side} side"
                    ));
                }
            }
        }
    }
}

fn run_case(device: usize, force_nvrtc: bool, c: &Case) -> CaseResult {
    let mut res = CaseResult::new(c.name.clone());
    let mut run = || -> Result<()> {
        let opts = EngineOptions {
            cuda_force_nvrtc: force_nvrtc,
            ..EngineOptions::default()
        };
        let cpu = CrosscoderEngine::new(c.cc.clone(), BackendKind::Cpu, &opts)?;
        let gpu = CrosscoderEngine::new(c.cc.clone(), BackendKind::Cuda { device }, &opts)?;
        let want = cpu.encode(&c.x, c.rows, 0)?;
        let got = gpu.encode(&c.x, c.rows, 0)?;
        compare(c, &got, &want, &mut res);
        // Decoding the same (CPU) codes on both.
        let rg = gpu.decode(&want)?;
        let rc = cpu.decode(&want)?;
        for (i, (a, b)) in rg.iter().zip(&rc).enumerate() {
            let err = (*a as f64 - *b as f64).abs();
            res.max_abs_err = res.max_abs_err.max(err);
            if err > tol(c.cc.n_latents(), *b) && res.detail.len() < 8 {
                res.detail
                    .push(format!("decode value {i}: gpu {a} cpu {b}"));
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

/// Runs every crosscoder case on `device` (kernels from NVRTC when `force_nvrtc`).
pub fn run(device: usize, force_nvrtc: bool) -> Vec<CaseResult> {
    match cases() {
        Ok(cases) => cases
            .iter()
            .map(|c| run_case(device, force_nvrtc, c))
            .collect(),
        Err(e) => vec![CaseResult {
            detail: vec![e.to_string()],
            ..CaseResult::new("crosscoder cases")
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases build and are meaningful on the CPU: every thresholded case keeps some
    /// codes and drops some that ReLU keeps, so the GPU comparison tests the threshold path.
    #[test]
    fn verify_cases_exercise_the_threshold_path() {
        let cases = cases().unwrap();
        assert_eq!(cases.len(), 3);
        for c in &cases {
            assert_eq!(c.x.len(), c.rows * 2 * c.cc.d);
            let e =
                CrosscoderEngine::new(c.cc.clone(), BackendKind::Cpu, &EngineOptions::default())
                    .unwrap();
            let codes = e.encode(&c.x, c.rows, 0).unwrap();
            let kept: usize = codes
                .codes
                .iter()
                .map(|k| (0..c.rows).map(|r| k.l0(r)).sum::<usize>())
                .sum();
            assert!(kept > 0, "{}", c.name);
            if c.cc.threshold.is_some() {
                let relu = CrosscoderEngine::new(
                    Arc::new(Crosscoder {
                        threshold: None,
                        ..(*c.cc).clone()
                    }),
                    BackendKind::Cpu,
                    &EngineOptions::default(),
                )
                .unwrap();
                let relu_codes = relu.encode(&c.x, c.rows, 0).unwrap();
                let all: usize = (0..c.rows).map(|r| relu_codes.codes[0].l0(r)).sum();
                assert!(
                    kept < all * codes.codes.len(),
                    "{}: kept {kept} of {all}",
                    c.name
                );
            }
        }
        // On the CPU against itself, the comparison passes.
        let c = &cases[1];
        let e = CrosscoderEngine::new(c.cc.clone(), BackendKind::Cpu, &EngineOptions::default())
            .unwrap();
        let a = e.encode(&c.x, c.rows, 0).unwrap();
        let mut res = CaseResult::new(c.name.clone());
        compare(c, &a, &a, &mut res);
        assert!(res.detail.is_empty());
        // A value off by more than rounding is reported.
        let mut b = a.clone();
        if let crate::codes::Codes::Csr { values, .. } = &mut b.codes[0] {
            let i = values.iter().position(|v| *v > 0.5).expect("a large code");
            values[i] += 0.25;
        }
        compare(c, &b, &a, &mut res);
        assert!(!res.detail.is_empty());
    }
}
