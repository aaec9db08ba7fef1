//! How GPU codes are compared with the CPU's (exact precision) or with the f64 dense
//! reference (fast precision); each check appends what it finds to a [`CaseResult`].

use super::cases::Case;
use super::CaseResult;
use crate::codes::Codes;
use crate::cpu::reference;
use crate::sae::{Activation, Sae};

/// Tolerance for one value: f32 rounding of a d-term dot product in another order.
fn tol(d: usize, v: f32) -> f64 {
    1e-5 * (d as f64).sqrt() * (1.0 + v.abs() as f64)
}

pub(super) fn compare_topk(c: &Case, g: &Codes, r: &Codes, res: &mut CaseResult) {
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

pub(super) fn compare_csr(c: &Case, g: &Codes, r: &Codes, res: &mut CaseResult) {
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
pub(super) fn check_fast(c: &Case, g: &Codes, res: &mut CaseResult) {
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
pub(super) fn check_fast_selection(c: &Case, g: &Codes, res: &mut CaseResult) {
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
