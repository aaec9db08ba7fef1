//! Per-latent statistics of encoded activations, accumulated in f64/u64 so that
//! shards merge exactly up to float rounding. File I/O: `crate::io::stats_file`.

use crate::codes::Codes;
use crate::error::{Error, Result};

pub mod clustered;
pub mod recon;
pub mod rule;
pub mod tokens;

pub use clustered::{DocSums, OpenDoc};
pub use recon::{MetricsAccumulator, ReconMetrics};
pub use rule::{RowFilter, TokenRule};
pub use tokens::{NormHistogram, TokenDigest};

/// Default outlier factor: a counted row whose norm is above this many times the median
/// row norm is an outlier token (attention sinks sit 100x above the median).
pub const DEFAULT_OUTLIER_FACTOR: f64 = 10.0;

/// Statistics of one dump (or shard) under one SAE.
#[derive(Debug, Clone, PartialEq)]
pub struct LatentStats {
    /// `Sae::fingerprint()` of the SAE that produced the codes.
    pub fingerprint: String,
    /// Tokens counted (mask == 1, or all tokens when the dump has no mask).
    pub n_tokens: u64,
    /// Per-latent sum of activations.
    pub sum: Vec<f64>,
    /// Per-latent sum of squared activations.
    pub sum_sq: Vec<f64>,
    /// Per-latent count of tokens with activation > 0.
    pub n_active: Vec<u64>,
    /// Per-latent maximum activation (0 when it never fires; activations are >= 0).
    pub max: Vec<f32>,
    /// Digest of the counted tokens' ids, for pairing (None: not recorded, e.g. a
    /// statistics file written before it existed, or statistics of a codes file).
    pub tokens: Option<TokenDigest>,
    /// Histogram of the counted rows' norms (None: not recorded).
    pub norms: Option<NormHistogram>,
    /// T of the outlier rule: rows with norm > T x the median norm are outliers.
    pub outlier_factor: f64,
    /// Per-document sums for document-clustered standard errors (None: not recorded, or
    /// some counted tokens had no doc id).
    pub docs: Option<DocSums>,
}

impl LatentStats {
    /// Empty statistics for `n_latents` latents.
    pub fn new(fingerprint: impl Into<String>, n_latents: usize) -> Self {
        LatentStats {
            fingerprint: fingerprint.into(),
            n_tokens: 0,
            sum: vec![0.0; n_latents],
            sum_sq: vec![0.0; n_latents],
            n_active: vec![0; n_latents],
            max: vec![0.0; n_latents],
            tokens: Some(TokenDigest::default()),
            norms: Some(NormHistogram::default()),
            outlier_factor: DEFAULT_OUTLIER_FACTOR,
            docs: Some(DocSums::new(n_latents)),
        }
    }

    /// The document-clustered variance of latent `i`'s mean, when every counted token
    /// had a doc id and there are at least two documents.
    pub fn clustered_var_of_mean(&self, i: usize) -> Option<f64> {
        self.docs
            .as_ref()
            .filter(|d| d.n_tokens == self.n_tokens && d.sum_sq.len() == self.n_latents())
            .and_then(|d| d.var_of_mean(i, self.sum[i], self.n_tokens))
    }

    /// Documents behind the clustered variance (None when it is not available).
    pub fn n_docs(&self) -> Option<u64> {
        self.docs
            .as_ref()
            .filter(|d| d.n_tokens == self.n_tokens && d.n_docs >= 2)
            .map(|d| d.n_docs)
    }

    /// The counted tokens' id hash and whether it covers document ids, when every
    /// counted token had an id.
    pub fn token_hash(&self) -> Option<(u64, bool)> {
        self.tokens.and_then(|t| t.complete(self.n_tokens))
    }

    /// Median norm of the counted rows, when recorded.
    pub fn median_norm(&self) -> Option<f64> {
        self.norms.as_ref().and_then(|h| h.median())
    }

    /// Counted rows with norm above `outlier_factor` x the median norm, when recorded.
    pub fn n_outliers(&self) -> Option<u64> {
        self.norms.as_ref().map(|h| h.n_above(self.outlier_factor))
    }

    /// Number of latents.
    pub fn n_latents(&self) -> usize {
        self.sum.len()
    }

    /// Adds the rows of `codes` whose `mask` entry is non-zero (all rows without a mask).
    pub fn accumulate(&mut self, codes: &Codes, mask: Option<&[u8]>) -> Result<()> {
        let n = codes.n_rows();
        if let Some(m) = mask {
            if m.len() != n {
                return Err(Error::invalid(format!(
                    "mask has {} entries for {n} rows of codes",
                    m.len()
                )));
            }
        }
        let l = self.n_latents();
        for r in 0..n {
            if mask.is_some_and(|m| m[r] == 0) {
                continue;
            }
            self.n_tokens += 1;
            for (i, v) in codes.active(r) {
                if i >= l {
                    return Err(Error::invalid(format!(
                        "codes hold latent {i}, but the statistics have {l} latents"
                    )));
                }
                let v64 = v as f64;
                self.sum[i] += v64;
                self.sum_sq[i] += v64 * v64;
                self.n_active[i] += 1;
                if v > self.max[i] {
                    self.max[i] = v;
                }
            }
        }
        // Codes alone carry no row norms: statistics counted without them (the codes-only
        // path, e.g. the C ABI) have no norm histogram rather than an incomplete one. The
        // dump pipeline adds each batch's norms before its codes, so it keeps it.
        if self
            .norms
            .as_ref()
            .is_some_and(|h| h.n_rows() < self.n_tokens)
        {
            self.norms = None;
        }
        Ok(())
    }

    /// Adds another shard's statistics of the same SAE.
    pub fn merge(&mut self, other: &LatentStats) -> Result<()> {
        if other.fingerprint != self.fingerprint {
            return Err(Error::Incompatible(format!(
                "statistics come from different SAEs (fingerprints {} and {})",
                self.fingerprint, other.fingerprint
            )));
        }
        if other.n_latents() != self.n_latents() {
            return Err(Error::Incompatible(format!(
                "statistics have {} and {} latents",
                self.n_latents(),
                other.n_latents()
            )));
        }
        self.n_tokens += other.n_tokens;
        // Token digests and norm histograms merge exactly; one side without them (an
        // older file) leaves the result without them rather than half-counted.
        self.tokens = match (self.tokens, other.tokens) {
            (Some(mut a), Some(b)) => {
                a.merge(&b);
                Some(a)
            }
            _ => None,
        };
        self.norms = match (self.norms.take(), &other.norms) {
            (Some(mut a), Some(b)) => {
                a.merge(b);
                Some(a)
            }
            _ => None,
        };
        self.docs = match (self.docs.take(), &other.docs) {
            (Some(mut a), Some(b)) if a.sum_sq.len() == b.sum_sq.len() => {
                a.merge(b);
                Some(a)
            }
            _ => None,
        };
        for i in 0..self.n_latents() {
            self.sum[i] += other.sum[i];
            self.sum_sq[i] += other.sum_sq[i];
            self.n_active[i] += other.n_active[i];
            self.max[i] = self.max[i].max(other.max[i]);
        }
        Ok(())
    }

    /// Mean activation per latent (0 when no tokens were counted).
    pub fn mean(&self) -> Vec<f64> {
        let n = self.n_tokens.max(1) as f64;
        self.sum.iter().map(|s| s / n).collect()
    }

    /// Firing frequency per latent.
    pub fn freq(&self) -> Vec<f64> {
        let n = self.n_tokens.max(1) as f64;
        self.n_active.iter().map(|a| *a as f64 / n).collect()
    }

    /// Population variance of each latent's activation over counted tokens.
    pub fn var(&self) -> Vec<f64> {
        let n = self.n_tokens.max(1) as f64;
        self.sum
            .iter()
            .zip(&self.sum_sq)
            .map(|(s, q)| (q / n - (s / n) * (s / n)).max(0.0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulate_honors_mask_and_merges() {
        let codes = Codes::TopK {
            n: 3,
            k: 2,
            indices: vec![0, 1, 1, -1, 2, 0],
            values: vec![2.0, 1.0, 3.0, 0.0, 4.0, 0.5],
        };
        let mut a = LatentStats::new("fp", 3);
        a.accumulate(&codes, Some(&[1, 0, 1])).unwrap();
        assert_eq!(a.n_tokens, 2);
        assert_eq!(a.sum, vec![2.5, 1.0, 4.0]);
        assert_eq!(a.n_active, vec![2, 1, 1]);
        assert_eq!(a.max, vec![2.0, 1.0, 4.0]);
        let mut b = LatentStats::new("fp", 3);
        b.accumulate(&codes, None).unwrap();
        assert_eq!(b.sum[1], 4.0);
        a.merge(&b).unwrap();
        assert_eq!(a.n_tokens, 5);
        assert!(a.merge(&LatentStats::new("other", 3)).is_err());
    }
}
