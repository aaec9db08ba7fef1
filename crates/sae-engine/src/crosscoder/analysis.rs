//! The diffing analyses of a two-model crosscoder (model 0 = base, model 1 = tuned, the
//! fork's order): decoder norms, their relative size, classes, decoder cosine, and
//! Minder et al.'s latent scaling.
//!
//! - `rel_norm = |d_tuned| / (|d_base| + |d_tuned|)` (Lindsey et al.), plotted as a histogram.
//! - `delta_norm = ((|d_tuned| - |d_base|) / max(|d_tuned|, |d_base|) + 1) / 2` (Minder et
//!   al.'s relative norm difference). Classes with the paper's cut-offs: tuned-only
//!   `delta_norm >= 0.9`, base-only `<= 0.1`, shared `[0.4, 0.6)`, else other. Both are
//!   functions of the ratio `rho = |d_tuned| / |d_base|`, so the same cut-offs in rel_norm
//!   are `5/6`, `1/6`, `[4/9, 5/9)`.
//! - Latent scaling: per latent j, with f its code and `d = d_tuned_j`, the least-squares
//!   `beta = (d . sum_n f_n y_n) / (sum_n f_n^2 |d|^2)` for four targets y: each model's
//!   reconstruction, and each model's reconstruction error with latent j's own term put
//!   back (`x_m - x_hat_m + f d_m_j`). `nu_error = beta_error_base / beta_error_tuned`,
//!   `nu_reconstruction` likewise. A tuned-only latent is tuned-specific when both are below
//!   0.3 (the authors' figure code); a high `nu_error` says the base model carries the
//!   latent's direction in what the crosscoder failed to reconstruct (latent decoupling),
//!   a high `nu_reconstruction` says the base reconstruction uses it (complete shrinkage).

use crate::codes::Codes;
use crate::error::{Error, Result};

use super::encode::CrosscoderEngine;
use super::paired::Paired;
use super::Crosscoder;

/// Class cut-offs on `delta_norm` (Minder et al. 2025, Fig. 2 and the authors' plots).
pub const TUNED_ONLY_MIN: f64 = 0.9;
/// Base-only: `delta_norm <= BASE_ONLY_MAX`.
pub const BASE_ONLY_MAX: f64 = 0.1;
/// Shared: `SHARED.0 <= delta_norm < SHARED.1`.
pub const SHARED: (f64, f64) = (0.4, 0.6);
/// Tuned-specific: `nu_error < NU_ERROR_MAX` and `nu_reconstruction < NU_RECONSTRUCTION_MAX`.
pub const NU_ERROR_MAX: f64 = 0.3;
/// See [`NU_ERROR_MAX`].
pub const NU_RECONSTRUCTION_MAX: f64 = 0.3;

/// Which model a latent belongs to, by its decoder norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatentClass {
    /// `delta_norm <= 0.1`.
    BaseOnly,
    /// `0.4 <= delta_norm < 0.6`.
    Shared,
    /// `delta_norm >= 0.9`.
    TunedOnly,
    /// Anything else (or both decoder rows zero).
    Other,
}

impl LatentClass {
    /// The class of a `delta_norm` (NaN: other).
    pub fn of(delta_norm: f64) -> LatentClass {
        if delta_norm >= TUNED_ONLY_MIN {
            LatentClass::TunedOnly
        } else if delta_norm <= BASE_ONLY_MAX {
            LatentClass::BaseOnly
        } else if (SHARED.0..SHARED.1).contains(&delta_norm) {
            LatentClass::Shared
        } else {
            LatentClass::Other
        }
    }

    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            LatentClass::BaseOnly => "base-only",
            LatentClass::Shared => "shared",
            LatentClass::TunedOnly => "tuned-only",
            LatentClass::Other => "other",
        }
    }
}

/// What latent scaling says about a tuned-only latent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Not tuned-only, or no activations were given.
    NotApplicable,
    /// Tuned-only but never active on the activations: nothing to measure.
    Unmeasured,
    /// Both ratios below their cut-offs: specific to the tuned model.
    TunedSpecific,
    /// A ratio at or above its cut-off (or undefined): a sparsity artifact is suspected.
    Artifact,
}

/// Per-latent latent-scaling results.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Scaling {
    /// Rows where the latent is active.
    pub active: u64,
    /// beta against the base model's reconstruction error (latent's own term put back).
    pub beta_error_base: f64,
    /// beta against the tuned model's reconstruction error.
    pub beta_error_tuned: f64,
    /// beta against the base model's reconstruction.
    pub beta_reconstruction_base: f64,
    /// beta against the tuned model's reconstruction.
    pub beta_reconstruction_tuned: f64,
    /// `beta_error_base / beta_error_tuned`.
    pub nu_error: f64,
    /// `beta_reconstruction_base / beta_reconstruction_tuned`.
    pub nu_reconstruction: f64,
}

/// One latent's row of the analysis.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LatentRow {
    /// Latent index.
    pub latent: usize,
    /// `|d_base|`.
    pub norm_base: f64,
    /// `|d_tuned|`.
    pub norm_tuned: f64,
    /// `|d_tuned| / (|d_base| + |d_tuned|)`; NaN when both are zero.
    pub rel_norm: f64,
    /// Minder et al.'s relative norm difference; NaN when both are zero.
    pub delta_norm: f64,
    /// Cosine between the base and tuned decoder rows; NaN when one is zero.
    pub cosine: f64,
    /// Class by `delta_norm`.
    pub class: LatentClass,
    /// Latent scaling, when activations were given and the latent fired.
    pub scaling: Option<Scaling>,
    /// Latent scaling's verdict on tuned-only latents.
    pub verdict: Verdict,
}

/// The whole analysis.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Analysis {
    /// Rows of paired activations latent scaling used (0 without activations).
    pub n_rows: u64,
    /// Every latent, by index.
    pub latents: Vec<LatentRow>,
}

impl Analysis {
    /// Latents of `class`.
    pub fn count(&self, class: LatentClass) -> usize {
        self.latents.iter().filter(|r| r.class == class).count()
    }

    /// Latent indices ranked for an audit: tuned-specific latents first, then suspected
    /// artifacts, then tuned-only latents never active, then the rest; within each,
    /// `delta_norm` descending, then `nu_error` ascending (undefined last), then index.
    pub fn ranking(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.latents.len()).collect();
        let key = |r: &LatentRow| {
            let group = match r.verdict {
                Verdict::TunedSpecific => 0,
                Verdict::Artifact => 1,
                Verdict::Unmeasured => 2,
                Verdict::NotApplicable => 3,
            };
            let dn = if r.delta_norm.is_nan() {
                f64::NEG_INFINITY
            } else {
                r.delta_norm
            };
            let nu = r
                .scaling
                .map(|s| s.nu_error)
                .filter(|v| v.is_finite())
                .unwrap_or(f64::INFINITY);
            (group, dn, nu)
        };
        idx.sort_by(|&a, &b| {
            let (ka, kb) = (key(&self.latents[a]), key(&self.latents[b]));
            ka.0.cmp(&kb.0)
                .then(kb.1.total_cmp(&ka.1))
                .then(ka.2.total_cmp(&kb.2))
                .then(a.cmp(&b))
        });
        idx
    }
}

fn require_two(cc: &Crosscoder) -> Result<()> {
    if cc.n_models != 2 {
        return Err(Error::invalid(format!(
            "{}: crosscoder diffing compares two models (base, tuned); this crosscoder has {}",
            cc.meta.source.display(),
            cc.n_models
        )));
    }
    Ok(())
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Decoder-only rows (norms, ratios, cosine, class) of every latent.
pub fn decoder_rows(cc: &Crosscoder) -> Result<Vec<LatentRow>> {
    require_two(cc)?;
    let d = cc.d;
    let l = cc.n_latents();
    let mut rows = Vec::with_capacity(l);
    let mut buf = vec![0f32; 2 * d];
    for j in 0..l {
        cc.sae.w_dec.rows_f32(j..j + 1, &mut buf);
        let (b, t) = buf.split_at(d);
        let nb = dot(b, b).sqrt();
        let nt = dot(t, t).sqrt();
        let (rel, delta) = if nb + nt > 0.0 {
            (nt / (nb + nt), ((nt - nb) / nb.max(nt) + 1.0) / 2.0)
        } else {
            (f64::NAN, f64::NAN)
        };
        let cosine = if nb > 0.0 && nt > 0.0 {
            dot(b, t) / (nb * nt)
        } else {
            f64::NAN
        };
        rows.push(LatentRow {
            latent: j,
            norm_base: nb,
            norm_tuned: nt,
            rel_norm: rel,
            delta_norm: delta,
            cosine,
            class: LatentClass::of(delta),
            scaling: None,
            verdict: Verdict::NotApplicable,
        });
    }
    Ok(rows)
}

/// Running sums of latent scaling for every latent.
struct Sums {
    active: Vec<u64>,
    /// sum f^2
    c: Vec<f64>,
    /// sum f (d_t . y) for [error base, error tuned, reconstruction base, reconstruction tuned]
    b: Vec<[f64; 4]>,
}

/// The code latent scaling uses: the shared one, or the tuned model's (DECOUPLED; the
/// authors' script asks which model's code to take).
fn scaling_code(codes: &super::CrosscoderCodes) -> &Codes {
    codes.for_model(1)
}

/// Runs every analysis; latent scaling over `acts` when given (batches of `batch_rows`).
pub fn analyze(
    engine: &CrosscoderEngine,
    acts: Option<&Paired>,
    batch_rows: usize,
    progress: &dyn Fn(u64),
) -> Result<Analysis> {
    let cc = engine.crosscoder();
    let mut latents = decoder_rows(cc)?;
    let Some(acts) = acts else {
        return Ok(Analysis { n_rows: 0, latents });
    };
    let (d, l) = (cc.d, cc.n_latents());
    // d_t . d_base and |d_t|^2 per latent, once.
    let mut g_base = vec![0f64; l];
    let mut g_tuned = vec![0f64; l];
    let mut row = vec![0f32; 2 * d];
    for j in 0..l {
        cc.sae.w_dec.rows_f32(j..j + 1, &mut row);
        let (b, t) = row.split_at(d);
        g_base[j] = dot(t, b);
        g_tuned[j] = dot(t, t);
    }
    let mut s = Sums {
        active: vec![0; l],
        c: vec![0.0; l],
        b: vec![[0.0; 4]; l],
    };
    acts.for_each_batch(batch_rows, |start, rows, x| {
        let codes = engine.encode(x, rows, start)?;
        let recon = engine.decode(&codes)?;
        let code = scaling_code(&codes);
        let mut err = vec![0f32; 2 * d];
        for r in 0..rows {
            let xr = &x[r * 2 * d..(r + 1) * 2 * d];
            let rr = &recon[r * 2 * d..(r + 1) * 2 * d];
            for ((e, xv), rv) in err.iter_mut().zip(xr).zip(rr) {
                *e = xv - rv;
            }
            for (j, f) in code.active(r) {
                cc.sae.w_dec.rows_f32(j..j + 1, &mut row);
                let dt = &row[d..];
                let f = f as f64;
                let acc = &mut s.b[j];
                acc[0] += f * (dot(dt, &err[..d]) + f * g_base[j]);
                acc[1] += f * (dot(dt, &err[d..]) + f * g_tuned[j]);
                acc[2] += f * dot(dt, &rr[..d]);
                acc[3] += f * dot(dt, &rr[d..]);
                s.c[j] += f * f;
                s.active[j] += 1;
            }
        }
        progress(rows as u64);
        Ok(())
    })?;
    for (j, r) in latents.iter_mut().enumerate() {
        if s.active[j] > 0 {
            let denom = s.c[j] * g_tuned[j];
            let beta = |k: usize| s.b[j][k] / denom;
            let (eb, et, rb, rt) = (beta(0), beta(1), beta(2), beta(3));
            r.scaling = Some(Scaling {
                active: s.active[j],
                beta_error_base: eb,
                beta_error_tuned: et,
                beta_reconstruction_base: rb,
                beta_reconstruction_tuned: rt,
                nu_error: eb / et,
                nu_reconstruction: rb / rt,
            });
        }
        r.verdict = match (r.class, r.scaling) {
            (LatentClass::TunedOnly, None) => Verdict::Unmeasured,
            (LatentClass::TunedOnly, Some(sc)) => {
                if sc.nu_error < NU_ERROR_MAX && sc.nu_reconstruction < NU_RECONSTRUCTION_MAX {
                    Verdict::TunedSpecific
                } else {
                    Verdict::Artifact
                }
            }
            _ => Verdict::NotApplicable,
        };
    }
    Ok(Analysis {
        n_rows: acts.n_rows(),
        latents,
    })
}
