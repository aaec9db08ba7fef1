//! Cross-backend verification, CUDA against the CPU reference (`sae-bench verify`,
//! tests/cuda_parity.rs): random and edge-case SAEs (cases.rs) encoded and decoded by both
//! engines, compared value by value (compare.rs). Outside both backends because it uses both.
//!
//! Rules: exact-precision top-k values must agree within f32 rounding of a different
//! summation order; an index may differ only where the two values are equal within that
//! rounding (a tie); on exactly representable data (the tie cases) indices must be
//! identical. Fast precision (activations rounded to bf16/f16) is checked against the f64
//! dense reference: every kept value is the true pre-activation of its latent within
//! bf16 rounding, and nothing larger was missed.

use std::sync::Arc;

use crate::backend::{Engine, EngineOptions, GemmMode, Precision};
use crate::codes::Codes;
use crate::cpu::CpuEngine;
use crate::cuda::{CudaEngine, CudaOptions};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::sae::{Activation, Normalization, Sae};
use crate::stats::LatentStats;

mod cases;
mod compare;

use cases::{cases, random_sae, Case};
use compare::{check_fast, check_fast_selection, compare_csr, compare_topk};

/// The outcome of one case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseResult {
    /// The case's name (shape, dtype, activation).
    pub name: String,
    /// Whether the backends agreed within tolerance.
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

impl CaseResult {
    /// A failing result with nothing compared yet; a case fills it in and sets `ok` last.
    pub fn new(name: impl Into<String>) -> CaseResult {
        CaseResult {
            name: name.into(),
            ok: false,
            max_abs_err: 0.0,
            tie_swaps: 0,
            detail: Vec::new(),
            fallback_chunks: 0,
        }
    }
}

/// Deterministic splitmix64 stream (no RNG dependency; reproducible across runs).
pub struct Rng(crate::deterministic::SplitMix64);
impl Rng {
    /// A generator seeded with `seed` (same seed, same values).
    pub fn new(seed: u64) -> Self {
        Rng(crate::deterministic::SplitMix64::new(seed))
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * scale).collect()
    }
}

fn run_case(t: Target, c: &Case) -> CaseResult {
    let mut res = CaseResult::new(c.name.clone());
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
            force_nvrtc: t.force_nvrtc,
        };
        let gpu = match CudaEngine::new(t.device, sae.clone(), opts) {
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
fn stats_case(t: Target) -> CaseResult {
    let mut res = CaseResult::new("batched stats, 3 models in one launch, masks");
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
        let opts = EngineOptions {
            cuda_force_nvrtc: t.force_nvrtc,
            ..EngineOptions::default()
        };
        let gpu = CudaEngine::new(t.device, sae.clone(), CudaOptions::from_engine(&opts))?;
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
fn device_ptr_case(t: Target, name: &str, sae: Result<Sae>, precision: Precision) -> CaseResult {
    let mut res = CaseResult::new(name);
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
            force_nvrtc: t.force_nvrtc,
        };
        let eng = CudaEngine::new(t.device, sae.clone(), opts)?;
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
        let args = crate::backend::EncodeTopkDevice {
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
        let dargs = crate::backend::DecodeTopkDevice {
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

fn device_ptr_cases(t: Target) -> Vec<CaseResult> {
    let mut rng = Rng::new(0xd7);
    let topk = |k| Activation::TopK { k };
    vec![
        device_ptr_case(
            t,
            "device pointers: bf16 fast (bf16 scores), b_dec subtracted, 3 chunks in place",
            random_sae(&mut rng, 8192, 128, topk(32), DType::BF16)
                .subtract_b_dec(true)
                .build(),
            Precision::Fast,
        ),
        device_ptr_case(
            t,
            "device pointers: f32 exact, in place",
            random_sae(&mut rng, 3000, 64, topk(16), DType::F32).build(),
            Precision::Exact,
        ),
        device_ptr_case(
            t,
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
    run_with(device, quick, false)
}

/// [`run`], with the kernels compiled from source by NVRTC when `force_nvrtc` (how the
/// run-time fallback of a build without nvcc is verified on a GPU machine).
pub fn run_with(device: usize, quick: bool, force_nvrtc: bool) -> Result<Vec<CaseResult>> {
    crate::cuda::available(device)?;
    let t = Target {
        device,
        force_nvrtc,
    };
    let mut out: Vec<CaseResult> = cases(quick)?.iter().map(|c| run_case(t, c)).collect();
    out.push(stats_case(t));
    out.extend(device_ptr_cases(t));
    out.extend(crate::crosscoder::verify::run(device, force_nvrtc));
    Ok(out)
}

/// The device the cases run on and how its kernels are loaded.
#[derive(Debug, Clone, Copy)]
struct Target {
    device: usize,
    force_nvrtc: bool,
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
