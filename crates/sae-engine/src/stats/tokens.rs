//! What a set of statistics knows about its counted tokens besides the latents: a
//! digest of their ids (to tell whether two inputs cover the same tokens) and a
//! histogram of their row norms (the median norm, and outlier tokens such as attention
//! sinks). Both merge exactly, in any order, so statistics computed per shard
//! (`sae stats --shard`, `--devices`) and merged give what one pass over the whole dump
//! gives.

use std::collections::BTreeMap;

use crate::deterministic::mix64 as mix;

/// Order-free digest of the counted tokens' ids: the wrapping sum of a 64-bit mix of
/// each token's `(doc_id, token_id)`. A sum commutes, so it is the same whatever the
/// shard layout, the order shards are merged in, or where a document straddles two
/// shards. It identifies the multiset of (document, token) pairs: it cannot tell two
/// orders of the same tokens inside one document apart, which no two real prompt sets
/// produce by chance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenDigest {
    /// Wrapping sum of the per-token hashes.
    pub hash: u64,
    /// Counted tokens that had a token id (the digest covers all of them only when this
    /// equals the statistics' `n_tokens`).
    pub n_ids: u64,
    /// Of those, tokens that also had a document id.
    pub n_docs: u64,
}

impl TokenDigest {
    /// Adds one counted token.
    pub fn add(&mut self, token_id: i64, doc_id: Option<i64>) {
        // Distinct constants for "doc d" and "no doc" keep the two kinds apart.
        let doc = match doc_id {
            Some(d) => mix((d as u64) ^ 0x243f6a8885a308d3),
            None => 0x13198a2e03707344,
        };
        self.hash = self
            .hash
            .wrapping_add(mix(mix(token_id as u64 ^ 0xa4093822299f31d0) ^ doc));
        self.n_ids += 1;
        self.n_docs += doc_id.is_some() as u64;
    }

    /// Adds another digest (exact, order-free).
    pub fn merge(&mut self, other: &TokenDigest) {
        self.hash = self.hash.wrapping_add(other.hash);
        self.n_ids += other.n_ids;
        self.n_docs += other.n_docs;
    }

    /// The hash, when every one of `n_tokens` counted tokens had an id; with the
    /// coverage: true when every token also had a document id.
    pub fn complete(&self, n_tokens: u64) -> Option<(u64, bool)> {
        (self.n_ids == n_tokens).then_some((self.hash, self.n_docs == n_tokens))
    }
}

/// Histogram bins per octave: a bin spans a factor 2^(1/256) (0.27%), so the median
/// read from it is within 0.14% of the exact one.
const BINS_PER_OCTAVE: f64 = 256.0;
/// The bin of a zero-norm row.
pub const ZERO_BIN: i64 = i64::MIN;

/// Histogram of row L2 norms on a log scale, sparse (only occupied bins are kept; the
/// norms of one layer span a few octaves, so a few thousand bins at most). Merges
/// exactly by adding counts, which is what lets a sharded `sae stats` report the median
/// and the outliers of the whole input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NormHistogram {
    /// Bin index -> rows. Bin b holds norms in [2^(b/256), 2^((b+1)/256)).
    pub bins: BTreeMap<i64, u64>,
}

impl NormHistogram {
    /// The bin of a finite, non-negative norm.
    pub fn bin_of(norm: f64) -> i64 {
        if norm <= 0.0 {
            ZERO_BIN
        } else {
            (norm.log2() * BINS_PER_OCTAVE).floor() as i64
        }
    }

    /// The value a bin stands for: its geometric centre (0 for the zero bin).
    pub fn value_of(bin: i64) -> f64 {
        if bin == ZERO_BIN {
            0.0
        } else {
            ((bin as f64 + 0.5) / BINS_PER_OCTAVE).exp2()
        }
    }

    /// Adds one row norm.
    pub fn add(&mut self, norm: f64) {
        *self.bins.entry(Self::bin_of(norm)).or_insert(0) += 1;
    }

    /// Adds another histogram.
    pub fn merge(&mut self, other: &NormHistogram) {
        for (b, c) in &other.bins {
            *self.bins.entry(*b).or_insert(0) += c;
        }
    }

    /// Rows counted.
    pub fn n_rows(&self) -> u64 {
        self.bins.values().sum()
    }

    /// The median norm (the lower median's bin centre), None when empty.
    pub fn median(&self) -> Option<f64> {
        let n = self.n_rows();
        if n == 0 {
            return None;
        }
        let want = n.div_ceil(2);
        let mut seen = 0;
        for (b, c) in &self.bins {
            seen += c;
            if seen >= want {
                return Some(Self::value_of(*b));
            }
        }
        None
    }

    /// Rows whose norm is above `factor` x the median: every row in a bin whose centre
    /// is above the limit (a row within 0.27% of the limit may fall either way).
    pub fn n_above(&self, factor: f64) -> u64 {
        let Some(m) = self.median().filter(|m| *m > 0.0) else {
            return 0;
        };
        let limit = factor * m;
        self.bins
            .iter()
            .filter(|(b, _)| Self::value_of(**b) > limit)
            .map(|(_, c)| c)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_order_free_and_sees_a_changed_token() {
        let toks = [(5i64, Some(0i64)), (7, Some(0)), (5, Some(1)), (9, Some(1))];
        let mut a = TokenDigest::default();
        toks.iter().for_each(|(t, d)| a.add(*t, *d));
        // two "shards" in the other order
        let (mut b1, mut b2) = (TokenDigest::default(), TokenDigest::default());
        toks[2..].iter().for_each(|(t, d)| b1.add(*t, *d));
        toks[..2].iter().for_each(|(t, d)| b2.add(*t, *d));
        b1.merge(&b2);
        assert_eq!(a, b1);
        assert_eq!(a.complete(4), Some((a.hash, true)));
        assert_eq!(a.complete(5), None);
        // same tokens in other documents, or one token changed: another hash
        let mut c = TokenDigest::default();
        [(5, Some(1)), (7, Some(1)), (5, Some(0)), (9, Some(0))]
            .iter()
            .for_each(|(t, d)| c.add(*t, *d));
        assert_ne!(a.hash, c.hash);
        let mut e = TokenDigest::default();
        [(5, Some(0)), (8, Some(0)), (5, Some(1)), (9, Some(1))]
            .iter()
            .for_each(|(t, d)| e.add(*t, *d));
        assert_ne!(a.hash, e.hash);
        let mut f = TokenDigest::default();
        toks.iter().for_each(|(t, _)| f.add(*t, None));
        assert_ne!(a.hash, f.hash);
        assert_eq!(f.complete(4), Some((f.hash, false)));
    }

    #[test]
    fn histogram_median_and_outliers_merge_exactly() {
        // 1000 norms around 100, 3 sinks at 5000
        let norms: Vec<f64> = (0..1000)
            .map(|i| 90.0 + 20.0 * i as f64 / 999.0)
            .chain([5000.0, 6000.0, 7000.0])
            .collect();
        let mut whole = NormHistogram::default();
        norms.iter().for_each(|n| whole.add(*n));
        let mut parts = [NormHistogram::default(), NormHistogram::default()];
        for (i, n) in norms.iter().enumerate() {
            parts[i % 2].add(*n);
        }
        let mut merged = parts[1].clone();
        merged.merge(&parts[0]);
        assert_eq!(merged, whole);
        let m = whole.median().unwrap();
        assert!((m - 100.0).abs() / 100.0 < 0.003, "{m}");
        assert_eq!(whole.n_above(10.0), 3);
        assert_eq!(whole.n_above(55.0), 2);
        assert_eq!(whole.n_above(100.0), 0);
        // each half alone has its own (similar) median; the sinks sit in one half
        assert_eq!(parts[0].n_above(10.0) + parts[1].n_above(10.0), 3);
        assert_eq!(NormHistogram::default().median(), None);
        let mut z = NormHistogram::default();
        z.add(0.0);
        assert_eq!(z.median(), Some(0.0));
    }
}
