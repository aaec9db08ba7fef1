//! Monitoring (docs/design.md, "Detection and monitoring"): chosen latents' change from the base
//! over a series of checkpoints (training or re-alignment), and the first checkpoint
//! that crosses an alarm threshold.

use crate::error::{Error, Result};
use crate::stats::LatentStats;

use super::detect::Direction;
use super::{InputSummary, Pairing};

/// When a checkpoint raises the alarm.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Alarm {
    /// delta >= value (direction up) or delta <= value (direction down).
    Delta {
        /// The threshold on the delta.
        value: f64,
        /// Up or down.
        direction: Direction,
    },
    /// |document-clustered z of the mean difference| >= value: a clear change in either
    /// direction (the per-token z when the inputs have no doc ids).
    ZScore {
        /// The threshold on |z|.
        value: f64,
    },
}

impl Alarm {
    /// The default: a change of four standard errors.
    pub const DEFAULT: Alarm = Alarm::ZScore { value: 4.0 };

    /// A delta threshold whose direction follows its sign (>= 0: up, < 0: down).
    pub fn delta(value: f64) -> Alarm {
        let direction = if value >= 0.0 {
            Direction::Up
        } else {
            Direction::Down
        };
        Alarm::Delta { value, direction }
    }

    /// A detector's threshold and direction (from `detect`).
    pub fn from_detector(direction: Direction, value: f64) -> Alarm {
        Alarm::Delta { value, direction }
    }

    fn fires(&self, delta: f64, z: f64) -> bool {
        match *self {
            Alarm::Delta { value, direction } => direction.alarms(delta, value),
            Alarm::ZScore { value } => z.abs() >= value,
        }
    }

    fn describe(&self) -> String {
        match *self {
            Alarm::Delta {
                value,
                direction: Direction::Up,
            } => format!("delta >= {value:.6}"),
            Alarm::Delta { value, .. } => format!("delta <= {value:.6}"),
            Alarm::ZScore { value } => format!("|z clustered| >= {value}"),
        }
    }
}

/// One latent over the checkpoints.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Trajectory {
    /// Latent id.
    pub latent: usize,
    /// Mean activation in the base.
    pub base_mean: f64,
    /// Per checkpoint, in input order.
    pub means: Vec<f64>,
    /// Per checkpoint: mean minus the base mean.
    pub deltas: Vec<f64>,
    /// Per checkpoint: firing frequency.
    pub freqs: Vec<f64>,
    /// Per-token Welch z (treats every token as independent).
    pub z: Vec<f64>,
    /// The delta over its document-clustered standard error (equal to `z` without doc ids).
    pub z_clustered: Vec<f64>,
    /// Benjamini-Hochberg q-value of `z_clustered` over all latents of that checkpoint.
    pub q_value: Vec<f64>,
    /// The alarm rule applied.
    pub alarm: Alarm,
    /// The rule in words.
    pub rule: String,
    /// Index of the first checkpoint that crosses, and its name.
    pub first_crossing: Option<usize>,
    /// See `first_crossing`.
    pub first_crossing_name: Option<String>,
}

/// The monitoring result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MonitorReport {
    /// The base model's name.
    pub base: String,
    /// The checkpoints' names, in input order.
    pub checkpoints: Vec<String>,
    /// Paired or unpaired, and why.
    pub pairing: Pairing,
    /// Counted tokens, token hash, median norm and outliers of each input (base first).
    pub inputs: Vec<InputSummary>,
    /// One per latent watched.
    pub trajectories: Vec<Trajectory>,
}

/// Trajectories of `latents` over `checkpoints`, each with its alarm (one for all
/// when `alarms` has one entry).
pub fn monitor(
    base_name: &str,
    base: &LatentStats,
    checkpoints: &[(String, &LatentStats)],
    latents: &[usize],
    alarms: &[Alarm],
    pairing: &Pairing,
) -> Result<MonitorReport> {
    if checkpoints.is_empty() {
        return Err(Error::invalid("monitor needs at least one checkpoint"));
    }
    if latents.is_empty() {
        return Err(Error::invalid("monitor needs at least one --latents id"));
    }
    if alarms.len() != 1 && alarms.len() != latents.len() {
        return Err(Error::invalid(format!(
            "{} thresholds for {} latents: give one, or one per latent",
            alarms.len(),
            latents.len()
        )));
    }
    let l = base.n_latents();
    super::check_latents(latents, l)?;
    for (name, s) in checkpoints {
        if s.fingerprint != base.fingerprint || s.n_latents() != l {
            return Err(Error::Incompatible(format!(
                "{name}: statistics come from a different SAE than the base {base_name}"
            )));
        }
    }
    let nb = base.n_tokens.max(1) as f64;
    // Per checkpoint: clustered z of every latent, then q-values over all of them.
    let zc_all: Vec<Vec<f64>> = checkpoints
        .iter()
        .map(|(_, s)| {
            (0..l)
                .map(|i| {
                    super::diff::clustered_z(
                        base,
                        &[*s],
                        i,
                        s.sum[i] / s.n_tokens.max(1) as f64 - base.sum[i] / nb,
                    )
                })
                .collect()
        })
        .collect();
    let q_all: Vec<Vec<f64>> = zc_all.iter().map(|zc| super::diff::q_values(zc)).collect();
    let trajectories = latents
        .iter()
        .enumerate()
        .map(|(j, &i)| {
            let alarm = if alarms.len() == 1 {
                alarms[0]
            } else {
                alarms[j]
            };
            let base_mean = base.sum[i] / nb;
            let means: Vec<f64> = checkpoints
                .iter()
                .map(|(_, s)| s.sum[i] / s.n_tokens.max(1) as f64)
                .collect();
            let deltas: Vec<f64> = means.iter().map(|m| m - base_mean).collect();
            let z: Vec<f64> = checkpoints
                .iter()
                .map(|(_, s)| super::diff::welch_z(base, s, i))
                .collect();
            let z_clustered: Vec<f64> = zc_all.iter().map(|v| v[i]).collect();
            let first = (0..deltas.len()).find(|k| alarm.fires(deltas[*k], z_clustered[*k]));
            Trajectory {
                latent: i,
                base_mean,
                freqs: checkpoints
                    .iter()
                    .map(|(_, s)| s.n_active[i] as f64 / s.n_tokens.max(1) as f64)
                    .collect(),
                means,
                deltas,
                z,
                z_clustered,
                q_value: q_all.iter().map(|v| v[i]).collect(),
                rule: alarm.describe(),
                alarm,
                first_crossing: first,
                first_crossing_name: first.map(|k| checkpoints[k].0.clone()),
            }
        })
        .collect();
    Ok(MonitorReport {
        base: base_name.to_string(),
        checkpoints: checkpoints.iter().map(|(n, _)| n.clone()).collect(),
        pairing: pairing.clone(),
        inputs: InputSummary::all(base_name, base, checkpoints),
        trajectories,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::pairing::paired_for_tests as paired;

    fn stats(m: f64) -> LatentStats {
        let mut s = LatentStats::new("fp", 2);
        s.n_tokens = 100;
        s.sum = vec![m * 100.0, 10.0];
        s.sum_sq = vec![m * m * 200.0, 20.0];
        s.n_active = vec![50, 10];
        s
    }

    #[test]
    fn first_crossing() {
        let base = stats(0.0);
        let c: Vec<LatentStats> = [0.0, 0.05, 0.2, 0.4, 0.1]
            .iter()
            .map(|m| stats(*m))
            .collect();
        let cp: Vec<(String, &LatentStats)> = c
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("c{i}"), s))
            .collect();
        let r = monitor("b", &base, &cp, &[0, 1], &[Alarm::delta(0.15)], &paired()).unwrap();
        assert_eq!(r.trajectories[0].first_crossing, Some(2));
        assert_eq!(r.trajectories[0].first_crossing_name.as_deref(), Some("c2"));
        assert_eq!(r.trajectories[1].first_crossing, None);
        let down = monitor(
            "b",
            &stats(0.5),
            &cp,
            &[0],
            &[Alarm::delta(-0.3)],
            &paired(),
        )
        .unwrap();
        assert_eq!(down.trajectories[0].first_crossing, Some(0));
        assert!(monitor("b", &base, &cp, &[7], &[Alarm::DEFAULT], &paired()).is_err());
    }
}
