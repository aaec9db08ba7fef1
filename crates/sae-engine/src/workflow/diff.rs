//! Model diffing (docs/design.md, "Statistics and diffing"): per latent, how much each
//! fine-tune's mean activation moved from the base, averaged over fine-tunes, and
//! ranked. Averaging is the point: a latent every fine-tune shares (a persona) rises
//! above each fine-tune's own domain latents only once the deltas are averaged.

use std::cmp::Ordering;

use crate::error::{Error, Result};
use crate::stats::LatentStats;

use super::{InputSummary, Pairing};

/// Ranking orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiffOrder {
    /// Mean of the per-fine-tune deltas (the paper's ranking).
    AvgDelta,
    /// Mean of the per-fine-tune Welch z-scores (per token).
    ZScore,
    /// The average delta over its document-clustered standard error.
    ZClustered,
    /// The smallest delta over fine-tunes (top), the largest (bottom): every model must agree.
    MinDelta,
    /// Fine-tunes that increase minus fine-tunes that decrease, then average delta.
    #[serde(rename = "sign")]
    SignConsistency,
}

impl std::fmt::Display for DiffOrder {
    /// The command-line name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = match self {
            DiffOrder::AvgDelta => 0,
            DiffOrder::ZScore => 1,
            DiffOrder::MinDelta => 2,
            DiffOrder::SignConsistency => 3,
            DiffOrder::ZClustered => 4,
        };
        f.write_str(Self::NAMES[i])
    }
}

impl DiffOrder {
    /// Command-line names.
    pub const NAMES: [&'static str; 5] =
        ["avg-delta", "z-score", "min-delta", "sign", "z-clustered"];

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Result<DiffOrder> {
        match s {
            "avg-delta" | "delta" => Ok(DiffOrder::AvgDelta),
            "z-score" | "z" => Ok(DiffOrder::ZScore),
            "min-delta" | "min" => Ok(DiffOrder::MinDelta),
            "sign" | "sign-consistency" => Ok(DiffOrder::SignConsistency),
            "z-clustered" => Ok(DiffOrder::ZClustered),
            _ => Err(Error::invalid(format!(
                "unknown order `{s}`: expected one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// Diff options.
#[derive(Debug, Clone, Copy)]
pub struct DiffOptions {
    /// Latents in the top (largest increase) list.
    pub top: usize,
    /// Latents in the bottom (largest decrease) list.
    pub bottom: usize,
    /// Ranking order.
    pub order: DiffOrder,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            top: 20,
            bottom: 20,
            order: DiffOrder::AvgDelta,
        }
    }
}

/// One latent's comparison of the fine-tunes with the base.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LatentDiff {
    /// Latent id (its row in W_dec): stable across runs and orders.
    pub latent: usize,
    /// Mean over fine-tunes of `tuned_mean - base_mean`.
    pub delta: f64,
    /// Mean activation in the base.
    pub base_mean: f64,
    /// Mean over fine-tunes of their mean activation.
    pub tuned_mean: f64,
    /// Per fine-tune delta, in input order.
    pub deltas: Vec<f64>,
    /// Per fine-tune mean activation.
    pub tuned_means: Vec<f64>,
    /// Mean over fine-tunes of the Welch z-score of the mean difference (per token: it
    /// treats every token as independent).
    pub z: f64,
    /// The average delta over its document-clustered standard error (each side's
    /// cluster-robust variance by `doc_ids`; a side without doc ids uses its per-token
    /// variance, so with one fine-tune and no doc ids this equals `z`).
    pub z_clustered: f64,
    /// Benjamini-Hochberg q-value of `z_clustered`'s two-sided p-value, over all latents.
    pub q_value: f64,
    /// Smallest and largest per-fine-tune delta.
    pub min_delta: f64,
    /// See `min_delta`.
    pub max_delta: f64,
    /// Firing frequency in the base.
    pub base_freq: f64,
    /// Mean over fine-tunes of `tuned_freq - base_freq`.
    pub freq_change: f64,
    /// Fine-tunes whose delta is > 0, < 0.
    pub n_up: usize,
    /// See `n_up`.
    pub n_down: usize,
    /// Fine-tunes whose delta has the sign of the average delta.
    pub sign_agree: usize,
}

/// One fine-tune's single largest increase (the view without averaging).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelTop {
    /// The fine-tune's name.
    pub model: String,
    /// Its latent with the largest delta.
    pub latent: usize,
    /// That delta.
    pub delta: f64,
}

/// The result of a diff.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiffReport {
    /// The base model's name.
    pub base: String,
    /// The fine-tunes' names, in input order.
    pub tuned: Vec<String>,
    /// Paired or unpaired, and why.
    pub pairing: Pairing,
    /// Counted tokens, token hash, median norm and outliers of each input (base first).
    pub inputs: Vec<InputSummary>,
    /// What `z_clustered` is clustered by, per input.
    pub clustering: String,
    /// The multiple-testing correction behind `q_value`.
    pub multiple_testing: String,
    /// How the latents are ranked.
    pub order: DiffOrder,
    /// Number of latents of the SAE.
    pub n_latents: usize,
    /// Tokens counted in the base.
    pub n_tokens: u64,
    /// The SAE's fingerprint, shared by every input.
    pub fingerprint: String,
    /// Largest increase first under `order`.
    pub latents: Vec<LatentDiff>,
    /// Largest decrease first under `order`.
    pub bottom: Vec<LatentDiff>,
    /// Each fine-tune's own top latent by delta.
    pub per_model_top: Vec<ModelTop>,
    /// Average delta of every latent (for plots; not serialized).
    #[serde(skip)]
    pub all_delta: Vec<f64>,
    /// Base frequency of every latent (for plots; not serialized).
    #[serde(skip)]
    pub all_base_freq: Vec<f64>,
}

impl DiffReport {
    /// Rank (0-based) of `latent` in the top list, if present.
    pub fn top_rank(&self, latent: usize) -> Option<usize> {
        self.latents.iter().position(|l| l.latent == latent)
    }
    /// Rank (0-based) of `latent` in the bottom list, if present.
    pub fn bottom_rank(&self, latent: usize) -> Option<usize> {
        self.bottom.iter().position(|l| l.latent == latent)
    }
}

/// Welch z of a mean difference from two sets of statistics for one latent.
pub(crate) fn welch_z(a: &LatentStats, b: &LatentStats, i: usize) -> f64 {
    let (na, nb) = (a.n_tokens.max(1) as f64, b.n_tokens.max(1) as f64);
    let (ma, mb) = (a.sum[i] / na, b.sum[i] / nb);
    let va = (a.sum_sq[i] / na - ma * ma).max(0.0);
    let vb = (b.sum_sq[i] / nb - mb * mb).max(0.0);
    let se = (va / na + vb / nb).sqrt();
    let d = mb - ma;
    if se > 0.0 {
        d / se
    } else if d == 0.0 {
        0.0
    } else {
        // Both constant but different: as decisive as it gets; keep it finite for JSON.
        d.signum() * 1e9
    }
}

/// Variance of latent `i`'s mean: document-clustered when the statistics have doc sums,
/// else per token (population variance / n).
fn var_of_mean(s: &LatentStats, i: usize) -> f64 {
    s.clustered_var_of_mean(i).unwrap_or_else(|| {
        let n = s.n_tokens.max(1) as f64;
        let m = s.sum[i] / n;
        (s.sum_sq[i] / n - m * m).max(0.0) / n
    })
}

/// The average delta of latent `i` over its standard error: the fine-tunes are
/// independent samples, the base is shared, so Var = V_base + sum_t V_t / m^2.
pub(crate) fn clustered_z(
    base: &LatentStats,
    tuned: &[&LatentStats],
    i: usize,
    avg_delta: f64,
) -> f64 {
    let m = tuned.len() as f64;
    let v = var_of_mean(base, i) + tuned.iter().map(|t| var_of_mean(t, i)).sum::<f64>() / (m * m);
    if v > 0.0 {
        avg_delta / v.sqrt()
    } else if avg_delta == 0.0 {
        0.0
    } else {
        avg_delta.signum() * 1e9
    }
}

/// Benjamini-Hochberg q-values of the two-sided normal p-values of `z`.
pub(crate) fn q_values(z: &[f64]) -> Vec<f64> {
    let p: Vec<f64> = z
        .iter()
        .map(|z| crate::stats::clustered::p_two_sided(*z))
        .collect();
    crate::stats::clustered::bh_q_values(&p)
}

/// How each input's standard error is computed, in words.
fn clustering_words(
    base_name: &str,
    base: &LatentStats,
    tuned: &[(String, &LatentStats)],
) -> String {
    std::iter::once((base_name, base))
        .chain(tuned.iter().map(|(n, s)| (n.as_str(), *s)))
        .map(|(n, s)| match s.n_docs() {
            Some(g) => format!("{n}: {g} documents"),
            None => format!("{n}: per token (no doc ids)"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Computes one latent's diff.
fn latent_diff(base: &LatentStats, tuned: &[&LatentStats], i: usize, q: &[f64]) -> LatentDiff {
    let nb = base.n_tokens.max(1) as f64;
    let base_mean = base.sum[i] / nb;
    let base_freq = base.n_active[i] as f64 / nb;
    let m = tuned.len() as f64;
    let tuned_means: Vec<f64> = tuned
        .iter()
        .map(|t| t.sum[i] / t.n_tokens.max(1) as f64)
        .collect();
    let deltas: Vec<f64> = tuned_means.iter().map(|t| t - base_mean).collect();
    let delta = deltas.iter().sum::<f64>() / m;
    let z = tuned.iter().map(|t| welch_z(base, t, i)).sum::<f64>() / m;
    let z_clustered = clustered_z(base, tuned, i, delta);
    let freq_change = tuned
        .iter()
        .map(|t| t.n_active[i] as f64 / t.n_tokens.max(1) as f64 - base_freq)
        .sum::<f64>()
        / m;
    let n_up = deltas.iter().filter(|d| **d > 0.0).count();
    let n_down = deltas.iter().filter(|d| **d < 0.0).count();
    let sign_agree = match delta.partial_cmp(&0.0) {
        Some(Ordering::Greater) => n_up,
        Some(Ordering::Less) => n_down,
        _ => deltas.iter().filter(|d| **d == 0.0).count(),
    };
    LatentDiff {
        latent: i,
        delta,
        base_mean,
        tuned_mean: tuned_means.iter().sum::<f64>() / m,
        min_delta: deltas.iter().cloned().fold(f64::INFINITY, f64::min),
        max_delta: deltas.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        deltas,
        tuned_means,
        z,
        z_clustered,
        q_value: q[i],
        base_freq,
        freq_change,
        n_up,
        n_down,
        sign_agree,
    }
}

/// Per-latent keys used for ordering, computed once for every latent.
struct Keys {
    delta: Vec<f64>,
    z: Vec<f64>,
    zc: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
    signs: Vec<i64>,
}

impl Keys {
    /// Compares latents a and b for the top list (greater first), ties by smaller id.
    fn top(&self, order: DiffOrder, a: usize, b: usize) -> Ordering {
        let c = match order {
            DiffOrder::AvgDelta => self.delta[b].total_cmp(&self.delta[a]),
            DiffOrder::ZScore => self.z[b].total_cmp(&self.z[a]),
            DiffOrder::ZClustered => self.zc[b].total_cmp(&self.zc[a]),
            DiffOrder::MinDelta => self.min[b].total_cmp(&self.min[a]),
            DiffOrder::SignConsistency => self.signs[b]
                .cmp(&self.signs[a])
                .then(self.delta[b].total_cmp(&self.delta[a])),
        };
        c.then(a.cmp(&b))
    }

    /// Compares latents a and b for the bottom list (largest decrease first).
    fn bottom(&self, order: DiffOrder, a: usize, b: usize) -> Ordering {
        let c = match order {
            DiffOrder::AvgDelta => self.delta[a].total_cmp(&self.delta[b]),
            DiffOrder::ZScore => self.z[a].total_cmp(&self.z[b]),
            DiffOrder::ZClustered => self.zc[a].total_cmp(&self.zc[b]),
            DiffOrder::MinDelta => self.max[a].total_cmp(&self.max[b]),
            DiffOrder::SignConsistency => self.signs[a]
                .cmp(&self.signs[b])
                .then(self.delta[a].total_cmp(&self.delta[b])),
        };
        c.then(a.cmp(&b))
    }
}

/// The first `n` latents under `cmp`, without sorting all L of them.
fn select(n_latents: usize, n: usize, cmp: impl Fn(usize, usize) -> Ordering) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n_latents).collect();
    let n = n.min(n_latents);
    if n == 0 {
        return vec![];
    }
    if n < n_latents {
        idx.select_nth_unstable_by(n - 1, |a, b| cmp(*a, *b));
        idx.truncate(n);
    }
    idx.sort_by(|a, b| cmp(*a, *b));
    idx
}

/// Diffs fine-tunes against a base. Inputs must come from the same SAE; each side's own
/// token count, mean and variance are used, so paired and unpaired inputs take the same
/// arithmetic ([`super::pair`] decides `pairing`, which the report carries).
pub fn diff(
    base_name: &str,
    base: &LatentStats,
    tuned: &[(String, &LatentStats)],
    pairing: &Pairing,
    opts: &DiffOptions,
) -> Result<DiffReport> {
    if tuned.is_empty() {
        return Err(Error::invalid("diff needs at least one fine-tune"));
    }
    let l = base.n_latents();
    for (name, t) in tuned {
        if t.fingerprint != base.fingerprint || t.n_latents() != l {
            return Err(Error::Incompatible(format!(
                "{name}: statistics come from a different SAE than the base {base_name} \
                 (fingerprints {} and {}, {} and {l} latents)",
                t.fingerprint,
                base.fingerprint,
                t.n_latents()
            )));
        }
    }
    let ts: Vec<&LatentStats> = tuned.iter().map(|(_, t)| *t).collect();
    let nb = base.n_tokens.max(1) as f64;
    let m = ts.len() as f64;
    let mut keys = Keys {
        delta: vec![0.0; l],
        z: vec![0.0; l],
        zc: Vec::new(),
        min: vec![f64::INFINITY; l],
        max: vec![f64::NEG_INFINITY; l],
        signs: vec![0; l],
    };
    for t in &ts {
        let nt = t.n_tokens.max(1) as f64;
        for i in 0..l {
            let d = t.sum[i] / nt - base.sum[i] / nb;
            keys.delta[i] += d / m;
            keys.z[i] += welch_z(base, t, i) / m;
            keys.min[i] = keys.min[i].min(d);
            keys.max[i] = keys.max[i].max(d);
            keys.signs[i] += (d > 0.0) as i64 - (d < 0.0) as i64;
        }
    }
    // q-values over every latent, not just the listed ones.
    keys.zc = (0..l)
        .map(|i| clustered_z(base, &ts, i, keys.delta[i]))
        .collect();
    let q = q_values(&keys.zc);
    let top = select(l, opts.top, |a, b| keys.top(opts.order, a, b));
    let bottom = select(l, opts.bottom, |a, b| keys.bottom(opts.order, a, b));
    let per_model_top = tuned
        .iter()
        .map(|(name, t)| {
            let nt = t.n_tokens.max(1) as f64;
            let (latent, delta) = (0..l).map(|i| (i, t.sum[i] / nt - base.sum[i] / nb)).fold(
                (0, f64::NEG_INFINITY),
                |acc, x| if x.1 > acc.1 { x } else { acc },
            );
            ModelTop {
                model: name.clone(),
                latent,
                delta,
            }
        })
        .collect();
    Ok(DiffReport {
        base: base_name.to_string(),
        tuned: tuned.iter().map(|(n, _)| n.clone()).collect(),
        pairing: pairing.clone(),
        inputs: InputSummary::all(base_name, base, tuned),
        order: opts.order,
        n_latents: l,
        n_tokens: base.n_tokens,
        fingerprint: base.fingerprint.clone(),
        latents: top.iter().map(|i| latent_diff(base, &ts, *i, &q)).collect(),
        bottom: bottom
            .iter()
            .map(|i| latent_diff(base, &ts, *i, &q))
            .collect(),
        clustering: clustering_words(base_name, base, tuned),
        multiple_testing: format!(
            "Benjamini-Hochberg false discovery rate over all {l} latents, from two-sided normal \
             p-values of z_clustered"
        ),
        per_model_top,
        all_base_freq: base.freq(),
        all_delta: keys.delta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::pairing::paired_for_tests as paired;

    fn stats(means: &[f64], n: u64) -> LatentStats {
        let mut s = LatentStats::new("fp", means.len());
        s.n_tokens = n;
        for (i, m) in means.iter().enumerate() {
            s.sum[i] = m * n as f64;
            s.sum_sq[i] = m * m * n as f64 * 2.0;
            s.n_active[i] = if *m > 0.0 { n / 2 } else { 0 };
            s.max[i] = *m as f32 * 2.0;
        }
        s
    }

    #[test]
    fn averaging_promotes_the_shared_latent() {
        // latent 0 is shared (+0.3 in each), latents 1..=3 are each one model's domain (+0.9)
        let base = stats(&[0.0, 0.0, 0.0, 0.0, 1.0], 100);
        let t: Vec<LatentStats> = (1..=3)
            .map(|d| {
                let mut m = vec![0.3, 0.0, 0.0, 0.0, 0.8];
                m[d] = 0.9;
                stats(&m, 100)
            })
            .collect();
        let tuned: Vec<(String, &LatentStats)> = t
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("m{i}"), s))
            .collect();
        let r = diff("base", &base, &tuned, &paired(), &DiffOptions::default()).unwrap();
        assert_eq!(r.latents[0].latent, 0);
        assert_eq!(r.latents[0].sign_agree, 3);
        assert!((r.latents[0].delta - 0.3).abs() < 1e-12);
        assert_eq!(r.bottom[0].latent, 4);
        for (i, top) in r.per_model_top.iter().enumerate() {
            assert_eq!(top.latent, i + 1);
        }
        // min over models also puts the shared latent first; sign consistency too
        for order in [DiffOrder::MinDelta, DiffOrder::SignConsistency] {
            let o = DiffOptions {
                order,
                ..Default::default()
            };
            assert_eq!(
                diff("b", &base, &tuned, &paired(), &o).unwrap().latents[0].latent,
                0
            );
        }
    }

    #[test]
    fn refuses_other_sae() {
        let base = stats(&[0.0, 1.0], 10);
        let mut other = stats(&[0.0, 1.0], 10);
        other.fingerprint = "zz".into();
        let e = diff(
            "b",
            &base,
            &[("t".into(), &other)],
            &paired(),
            &DiffOptions::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("different SAE"), "{e}");
    }

    #[test]
    fn ties_break_by_latent_id() {
        let base = stats(&[0.0; 6], 10);
        let t = stats(&[1.0; 6], 10);
        let o = DiffOptions {
            top: 3,
            bottom: 2,
            order: DiffOrder::AvgDelta,
        };
        let r = diff("b", &base, &[("t".into(), &t)], &paired(), &o).unwrap();
        let ids: Vec<usize> = r.latents.iter().map(|l| l.latent).collect();
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!(r.bottom.len(), 2);
    }
}
