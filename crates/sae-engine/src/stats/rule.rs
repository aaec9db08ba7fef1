//! The one token rule every command applies to a dump: a row counts when the dump's
//! `mask` is 1 (or the dump has no mask, or `--no-mask`), and among the counted rows,
//! those whose L2 norm is above T x the median counted-row norm of the whole dump are
//! outlier tokens (attention sinks and other massive activations).
//!
//! Statistics (`stats`, `diff`, `detect`, `monitor`) count outliers in and record how
//! many there were: leaving them out would let the base and a fine-tune count different
//! tokens and break their pairing. Per-row work (steering units, the steering dry run,
//! top examples, decode metrics) leaves them out unless `keep_outliers`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::dump::{Batch, Dump};
use crate::error::{Error, Result};

use super::tokens::NormHistogram;
use super::DEFAULT_OUTLIER_FACTOR;

/// Which tokens count (the command-line flags `--no-mask`, `--outlier-factor`,
/// `--keep-outliers`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TokenRule {
    /// Count only rows whose `mask` is 1 when the dump has a mask (default true).
    pub use_mask: bool,
    /// T: rows with norm > T x the median row norm are outliers.
    pub outlier_factor: f64,
    /// Keep outlier rows in per-row work (they are always counted in statistics).
    pub keep_outliers: bool,
}

impl Default for TokenRule {
    fn default() -> Self {
        TokenRule {
            use_mask: true,
            outlier_factor: DEFAULT_OUTLIER_FACTOR,
            keep_outliers: false,
        }
    }
}

impl TokenRule {
    /// Checks the outlier factor (finite and > 1, or the median row itself would be one).
    pub fn check(&self) -> Result<()> {
        if !(self.outlier_factor.is_finite() && self.outlier_factor > 1.0) {
            return Err(Error::invalid(format!(
                "--outlier-factor {}: expected a number > 1 (rows above T x the median norm are outliers)",
                self.outlier_factor
            )));
        }
        Ok(())
    }
}

/// L2 norm of each row of a batch (errors on a non-finite row, naming it).
pub fn row_norms(dump: &Dump, batch: &Batch) -> Result<Vec<f64>> {
    let d = batch.acts.len() / batch.rows.max(1);
    row_norms_of(&batch.acts, d, batch.start).map_err(|e| match e {
        Error::NonFinite { row, .. } => Error::NonFinite {
            context: dump.path().display().to_string(),
            row,
        },
        other => other,
    })
}

/// L2 norm of each `d`-wide row of `acts`, in f64 (rows numbered from `start` in the
/// error a non-finite row gives; its context is left for the caller to name).
pub fn row_norms_of(acts: &[f32], d: usize, start: u64) -> Result<Vec<f64>> {
    acts.chunks_exact(d.max(1))
        .enumerate()
        .map(|(r, row)| {
            let n = row
                .iter()
                .map(|v| (*v as f64) * (*v as f64))
                .sum::<f64>()
                .sqrt();
            if n.is_finite() {
                Ok(n)
            } else {
                Err(Error::NonFinite {
                    context: String::new(),
                    row: start + r as u64,
                })
            }
        })
        .collect()
}

/// The mask rule of a batch: the batch's mask under `use_mask`, else None (every row).
pub fn batch_mask(batch: &Batch, use_mask: bool) -> Option<&[u8]> {
    batch.mask.as_deref().filter(|_| use_mask)
}

/// A [`TokenRule`] applied to one dump: the dump-wide median norm is known, so each
/// batch's rows can be kept or left out. Counts the outliers it sees.
#[derive(Debug)]
pub struct RowFilter {
    /// The rule.
    pub rule: TokenRule,
    /// Median norm of the counted rows of the whole dump (None: outliers not looked for).
    pub median_norm: Option<f64>,
    seen: AtomicU64,
}

/// What a filter saw, for reports.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct OutlierSummary {
    /// T.
    pub outlier_factor: f64,
    /// The median norm of the counted rows.
    pub median_norm: Option<f64>,
    /// Counted rows above T x the median norm.
    pub n_outliers: u64,
    /// Whether they were left out of the computation.
    pub left_out: bool,
}

impl OutlierSummary {
    /// "N outlier tokens (norm > T x median M), left out (...)" for reports.
    pub fn describe(&self) -> String {
        format!(
            "{} outlier tokens (norm > {} x median {}), {}",
            self.n_outliers,
            self.outlier_factor,
            self.median_norm
                .map(|m| format!("{m:.4}"))
                .unwrap_or_else(|| "n/a".into()),
            if self.left_out {
                "left out (--keep-outliers keeps them)"
            } else {
                "kept"
            }
        )
    }
}

impl RowFilter {
    /// A filter that only applies the mask (no outlier search, no pre-pass).
    pub fn mask_only(use_mask: bool) -> RowFilter {
        RowFilter {
            rule: TokenRule {
                use_mask,
                keep_outliers: true,
                ..TokenRule::default()
            },
            median_norm: None,
            seen: AtomicU64::new(0),
        }
    }

    /// Reads the dump's row norms once (no encoding: a norm-only pre-pass over the
    /// counted rows of every shard), so the median is the whole input's.
    pub fn prepare(dump: &Dump, rule: &TokenRule, batch_rows: usize) -> Result<RowFilter> {
        rule.check()?;
        let mut h = NormHistogram::default();
        for batch in dump.batches(batch_rows) {
            let batch = batch?;
            let mask = batch_mask(&batch, rule.use_mask);
            for (r, n) in row_norms(dump, &batch)?.into_iter().enumerate() {
                if mask.is_none_or(|m| m[r] != 0) {
                    h.add(n);
                }
            }
        }
        Ok(RowFilter {
            rule: *rule,
            median_norm: h.median(),
            seen: AtomicU64::new(0),
        })
    }

    /// The norm above which a counted row is an outlier.
    pub fn limit(&self) -> Option<f64> {
        self.median_norm
            .filter(|m| *m > 0.0)
            .map(|m| m * self.rule.outlier_factor)
    }

    /// Which rows of `batch` count (1) or not (0): the mask, then outliers left out
    /// unless kept. None means every row. Outliers seen are added to the count.
    pub fn keep(&self, dump: &Dump, batch: &Batch) -> Result<Option<Vec<u8>>> {
        let mask = batch_mask(batch, self.rule.use_mask);
        let Some(limit) = self.limit() else {
            return Ok(mask.map(|m| m.to_vec()));
        };
        let mut keep: Vec<u8> = match mask {
            Some(m) => m.iter().map(|v| (*v != 0) as u8).collect(),
            None => vec![1; batch.rows],
        };
        let mut seen = 0;
        for (r, n) in row_norms(dump, batch)?.into_iter().enumerate() {
            if keep[r] != 0 && n > limit {
                seen += 1;
                if !self.rule.keep_outliers {
                    keep[r] = 0;
                }
            }
        }
        self.seen.fetch_add(seen, Ordering::Relaxed);
        Ok(Some(keep))
    }

    /// Outliers seen by [`keep`](Self::keep) so far.
    pub fn n_outliers(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// What the filter saw, for a report.
    pub fn summary(&self) -> OutlierSummary {
        OutlierSummary {
            outlier_factor: self.rule.outlier_factor,
            median_norm: self.median_norm,
            n_outliers: self.n_outliers(),
            left_out: !self.rule.keep_outliers && self.limit().is_some(),
        }
    }
}
