//! Detection (docs/design.md, "Detection and monitoring"): per latent, how well its mean-activation
//! change from the base separates positive (misaligned) from negative (aligned)
//! fine-tunes. AUROC and margin are in-sample; leave-one-out refits the direction and
//! threshold without each model and scores that model, so a perfect score that is an
//! artifact of a few models shows up as a worse out-of-sample one. A second,
//! pipeline-level leave-one-out also redoes the choice of the best latent.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::stats::LatentStats;

use super::{InputSummary, Pairing};

/// Which way a latent moves in positive models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Higher delta in positives: alarm when delta >= threshold.
    Up,
    /// Lower delta in positives: alarm when delta <= threshold.
    Down,
}

impl std::fmt::Display for Direction {
    /// The JSON spelling (`up`, `down`), also used in CSV and markdown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Up => "up",
            Direction::Down => "down",
        })
    }
}

impl Direction {
    fn sign(self) -> f64 {
        match self {
            Direction::Up => 1.0,
            Direction::Down => -1.0,
        }
    }
    /// Whether `delta` raises the alarm at `threshold`.
    pub fn alarms(self, delta: f64, threshold: f64) -> bool {
        match self {
            Direction::Up => delta >= threshold,
            Direction::Down => delta <= threshold,
        }
    }
}

/// Detection options.
#[derive(Debug, Clone, Default)]
pub struct DetectOptions {
    /// Restrict to these latents (all when None).
    pub latents: Option<Vec<usize>>,
    /// Latents in the ranked output.
    pub top: usize,
}

/// One latent as a detector.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LatentDetection {
    /// Latent id.
    pub latent: usize,
    /// Whether the misaligned models' delta is up or down.
    pub direction: Direction,
    /// In-sample AUROC in `direction` (>= 0.5).
    pub auroc: f64,
    /// AUROC of the held-out scores (each model scored by a fit without it); None with
    /// fewer than two models of a class.
    pub loo_auroc: Option<f64>,
    /// Fraction of models classified right by a fit without them.
    pub loo_accuracy: Option<f64>,
    /// min(positive) - max(negative) of the oriented delta: > 0 means perfectly separated.
    pub margin: f64,
    /// Mean difference over pooled within-class std of the oriented delta (d').
    pub separation: f64,
    /// Suggested alarm threshold on the delta (with `direction`).
    pub threshold: f64,
    /// The positives' average delta over its document-clustered standard error: whether
    /// the latent's move in the misaligned models is beyond token noise at all.
    pub z_clustered: f64,
    /// Benjamini-Hochberg q-value of `z_clustered` over all evaluated latents.
    pub q_value: f64,
    /// Delta of each positive model, in input order.
    pub positive_deltas: Vec<f64>,
    /// Delta of each negative model, in input order.
    pub negative_deltas: Vec<f64>,
}

/// One held-out model in the pipeline-level leave-one-out.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HeldOut {
    /// The held-out model's name.
    pub model: String,
    /// Whether it is a positive (misaligned) model.
    pub positive: bool,
    /// The best latent chosen without this model.
    pub latent: usize,
    /// Its delta on that latent.
    pub delta: f64,
    /// The threshold fit without it.
    pub threshold: f64,
    /// Whether the threshold calls it positive.
    pub predicted_positive: bool,
}

/// The detection result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DetectReport {
    /// The base model's name.
    pub base: String,
    /// The positive (misaligned) models' names.
    pub positives: Vec<String>,
    /// The negative (aligned) models' names.
    pub negatives: Vec<String>,
    /// Paired or unpaired, and why.
    pub pairing: Pairing,
    /// Counted tokens, token hash, median norm and outliers of each input (base first).
    pub inputs: Vec<InputSummary>,
    /// Latents evaluated.
    pub n_evaluated: usize,
    /// Ranked: out-of-sample AUROC, then AUROC, then margin, then latent id. The margin is
    /// in activation units on purpose: a d'-style ratio favours latents that barely fire
    /// (near-zero within-class spread) and picks noise when there are few models.
    pub latents: Vec<LatentDetection>,
    /// Choosing the best latent and its threshold without each model in turn, then
    /// classifying that model (None with fewer than two models of a class).
    pub pipeline_loo_accuracy: Option<f64>,
    /// Each model's held-out classification.
    pub held_out: Vec<HeldOut>,
    /// Latents expected at AUROC 1 by chance with this many models, and the caveat.
    pub chance: super::chance::PerfectByChance,
}

/// Mann-Whitney AUROC: P(pos > neg) + 0.5 P(tie).
pub fn auroc(pos: &[f64], neg: &[f64]) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return 0.5;
    }
    let mut s = 0.0;
    for p in pos {
        for n in neg {
            s += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    s / (pos.len() * neg.len()) as f64
}

/// A fitted one-latent detector: direction and threshold on the delta.
#[derive(Debug, Clone, Copy)]
struct Fit {
    dir: Direction,
    auroc: f64,
    threshold: f64,
    margin: f64,
    separation: f64,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn fit(pos: &[f64], neg: &[f64]) -> Fit {
    let up = auroc(pos, neg);
    let dir = if up >= 0.5 {
        Direction::Up
    } else {
        Direction::Down
    };
    let s = dir.sign();
    let p: Vec<f64> = pos.iter().map(|v| v * s).collect();
    let n: Vec<f64> = neg.iter().map(|v| v * s).collect();
    let pmin = p.iter().cloned().fold(f64::INFINITY, f64::min);
    let nmax = n.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let margin = pmin - nmax;
    // Oriented threshold: the midpoint of the gap when separated, else the cut with the
    // best balanced accuracy among midpoints of consecutive values.
    let t = if margin > 0.0 {
        (pmin + nmax) / 2.0
    } else {
        let mut all: Vec<f64> = p.iter().chain(&n).cloned().collect();
        all.sort_by(|a, b| a.total_cmp(b));
        let mut best = (f64::NEG_INFINITY, all[0]);
        for w in all.windows(2) {
            if w[0] == w[1] {
                continue;
            }
            let t = (w[0] + w[1]) / 2.0;
            let tpr = p.iter().filter(|v| **v >= t).count() as f64 / p.len() as f64;
            let tnr = n.iter().filter(|v| **v < t).count() as f64 / n.len() as f64;
            if tpr + tnr > best.0 {
                best = (tpr + tnr, t);
            }
        }
        best.1
    };
    let var = |v: &[f64]| {
        let m = mean(v);
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>()
    };
    let dof = (p.len() + n.len()).saturating_sub(2).max(1) as f64;
    let pooled = ((var(&p) + var(&n)) / dof).sqrt();
    let diff = mean(&p) - mean(&n);
    let scale = p.iter().chain(&n).map(|v| v.abs()).fold(0.0, f64::max);
    let separation = if pooled > 1e-12 * scale.max(1e-300) {
        diff / pooled
    } else if diff > 0.0 {
        1e9
    } else {
        0.0
    };
    Fit {
        dir,
        auroc: up.max(1.0 - up),
        threshold: t * s,
        margin,
        separation,
    }
}

/// Leave-one-out for one latent: (loo_auroc, loo_accuracy).
fn loo(pos: &[f64], neg: &[f64]) -> Option<(f64, f64)> {
    if pos.len() < 2 || neg.len() < 2 {
        return None;
    }
    let score = |held: f64, p: &[f64], n: &[f64]| {
        let f = fit(p, n);
        f.dir.sign() * (held - f.threshold)
    };
    let mut ps = Vec::with_capacity(pos.len());
    let mut ns = Vec::with_capacity(neg.len());
    for i in 0..pos.len() {
        let rest: Vec<f64> = pos
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, v)| *v)
            .collect();
        ps.push(score(pos[i], &rest, neg));
    }
    for i in 0..neg.len() {
        let rest: Vec<f64> = neg
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, v)| *v)
            .collect();
        ns.push(score(neg[i], pos, &rest));
    }
    let correct =
        ps.iter().filter(|s| **s >= 0.0).count() + ns.iter().filter(|s| **s < 0.0).count();
    Some((
        auroc(&ps, &ns),
        correct as f64 / (ps.len() + ns.len()) as f64,
    ))
}

fn rank_key(a: &LatentDetection, b: &LatentDetection) -> std::cmp::Ordering {
    let la = a.loo_auroc.unwrap_or(a.auroc);
    let lb = b.loo_auroc.unwrap_or(b.auroc);
    lb.total_cmp(&la)
        .then(b.auroc.total_cmp(&a.auroc))
        .then(b.margin.total_cmp(&a.margin))
        .then(a.latent.cmp(&b.latent))
}

/// Deltas (model mean - base mean) of latent `i` for each model.
fn deltas(base: &LatentStats, models: &[&LatentStats], i: usize) -> Vec<f64> {
    let mb = base.sum[i] / base.n_tokens.max(1) as f64;
    models
        .iter()
        .map(|m| m.sum[i] / m.n_tokens.max(1) as f64 - mb)
        .collect()
}

/// Ranks latents as detectors of positive vs negative fine-tunes.
pub fn detect(
    base_name: &str,
    base: &LatentStats,
    positives: &[(String, &LatentStats)],
    negatives: &[(String, &LatentStats)],
    pairing: &Pairing,
    opts: &DetectOptions,
) -> Result<DetectReport> {
    if positives.is_empty() || negatives.is_empty() {
        return Err(Error::invalid(
            "detection needs at least one --positive and one --negative model",
        ));
    }
    let l = base.n_latents();
    for (name, s) in positives.iter().chain(negatives) {
        if s.fingerprint != base.fingerprint || s.n_latents() != l {
            return Err(Error::Incompatible(format!(
                "{name}: statistics come from a different SAE than the base {base_name}"
            )));
        }
    }
    let latents: Vec<usize> = match &opts.latents {
        Some(v) => {
            super::check_latents(v, l)?;
            v.clone()
        }
        None => (0..l).collect(),
    };
    let ps: Vec<&LatentStats> = positives.iter().map(|(_, s)| *s).collect();
    let ns: Vec<&LatentStats> = negatives.iter().map(|(_, s)| *s).collect();
    // The positives' move from the base, with its clustered z and q over the evaluated latents.
    let zc: Vec<f64> = latents
        .iter()
        .map(|&i| super::diff::clustered_z(base, &ps, i, mean(&deltas(base, &ps, i))))
        .collect();
    let q = super::diff::q_values(&zc);
    let mut all: Vec<LatentDetection> = latents
        .par_iter()
        .enumerate()
        .map(|(k, &i)| {
            let (p, n) = (deltas(base, &ps, i), deltas(base, &ns, i));
            let f = fit(&p, &n);
            let lo = loo(&p, &n);
            LatentDetection {
                latent: i,
                direction: f.dir,
                auroc: f.auroc,
                loo_auroc: lo.map(|x| x.0),
                loo_accuracy: lo.map(|x| x.1),
                margin: f.margin,
                separation: f.separation,
                threshold: f.threshold,
                z_clustered: zc[k],
                q_value: q[k],
                positive_deltas: p,
                negative_deltas: n,
            }
        })
        .collect();
    let perfect = all.iter().filter(|d| d.auroc >= 1.0).count();
    let chance = super::chance::perfect_by_chance(ps.len(), ns.len(), latents.len(), perfect);
    all.par_sort_by(rank_key);
    all.truncate(opts.top.max(1));

    // Pipeline leave-one-out: pick the best latent (in-sample key) without model j, then
    // classify model j with that latent's fit.
    let models: Vec<(String, bool, &LatentStats)> = positives
        .iter()
        .map(|(n, s)| (n.clone(), true, *s))
        .chain(negatives.iter().map(|(n, s)| (n.clone(), false, *s)))
        .collect();
    let mut held_out = Vec::new();
    let pipeline_loo_accuracy = if ps.len() >= 2 && ns.len() >= 2 {
        for (j, (name, positive, s)) in models.iter().enumerate() {
            let (rp, rn): (Vec<&LatentStats>, Vec<&LatentStats>) = {
                let keep = |pos: bool| {
                    models
                        .iter()
                        .enumerate()
                        .filter(|(k, m)| *k != j && m.1 == pos)
                        .map(|(_, m)| m.2)
                        .collect::<Vec<_>>()
                };
                (keep(true), keep(false))
            };
            let best = latents
                .par_iter()
                .map(|&i| (i, fit(&deltas(base, &rp, i), &deltas(base, &rn, i))))
                .reduce_with(|a, b| {
                    let c =
                        b.1.auroc
                            .total_cmp(&a.1.auroc)
                            .then(b.1.margin.total_cmp(&a.1.margin))
                            .then(a.0.cmp(&b.0));
                    // c compares b against a: Greater means b is the better detector.
                    if c == std::cmp::Ordering::Greater {
                        b
                    } else {
                        a
                    }
                });
            if let Some((i, f)) = best {
                let d = deltas(base, &[*s], i)[0];
                held_out.push(HeldOut {
                    model: name.clone(),
                    positive: *positive,
                    latent: i,
                    delta: d,
                    threshold: f.threshold,
                    predicted_positive: f.dir.alarms(d, f.threshold),
                });
            }
        }
        let ok = held_out
            .iter()
            .filter(|h| h.positive == h.predicted_positive)
            .count();
        Some(ok as f64 / held_out.len().max(1) as f64)
    } else {
        None
    };
    Ok(DetectReport {
        base: base_name.to_string(),
        positives: positives.iter().map(|(n, _)| n.clone()).collect(),
        negatives: negatives.iter().map(|(n, _)| n.clone()).collect(),
        pairing: pairing.clone(),
        inputs: InputSummary::all(
            base_name,
            base,
            &positives
                .iter()
                .chain(negatives)
                .cloned()
                .collect::<Vec<_>>(),
        ),
        n_evaluated: latents.len(),
        latents: all,
        pipeline_loo_accuracy,
        held_out,
        chance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_basics() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0], &[1.0]), 0.5);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0]), 0.0);
    }

    #[test]
    fn fit_threshold_between_classes_and_down_direction() {
        let f = fit(&[1.0, 1.2], &[0.0, 0.2]);
        assert_eq!(f.dir, Direction::Up);
        assert!((f.threshold - 0.6).abs() < 1e-12);
        assert!((f.margin - 0.8).abs() < 1e-12);
        let g = fit(&[-1.0, -1.2], &[0.0, 0.2]);
        assert_eq!(g.dir, Direction::Down);
        assert!((g.threshold + 0.5).abs() < 1e-12);
        assert!(g.dir.alarms(-1.1, g.threshold) && !g.dir.alarms(0.1, g.threshold));
    }

    #[test]
    fn loo_catches_a_thin_in_sample_separation() {
        // Separated in-sample, but one positive sits next to the negatives: its own fit
        // without it puts the threshold above it.
        let (p, n) = ([0.11, 1.0, 1.1], [0.0, 0.05, 0.1]);
        assert_eq!(auroc(&p, &n), 1.0);
        let (la, acc) = loo(&p, &n).unwrap();
        assert!(acc < 1.0, "{acc}");
        assert!(la <= 1.0);
        let (la2, acc2) = loo(&[1.0, 1.1, 0.9], &[0.0, 0.05, 0.1]).unwrap();
        assert_eq!((la2, acc2), (1.0, 1.0));
    }
}
