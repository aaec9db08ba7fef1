//! Standard errors that respect document structure, and a multiple-testing correction.
//!
//! Tokens of one document are strongly correlated, so a per-token standard error of a
//! latent's mean overstates certainty by up to sqrt(tokens per document). The
//! cluster-robust (sandwich) variance of a mean over G documents, document g holding
//! n_g counted tokens whose activations sum to S_g, is
//!
//! ```text
//! V = G/(G-1) * sum_g (S_g - n_g mu)^2 / N^2
//!   = G/(G-1) * (sum_g S_g^2 - 2 mu sum_g n_g S_g + mu^2 sum_g n_g^2) / N^2,
//! ```
//!
//! so per latent it needs only sum_g S_g^2 and sum_g n_g S_g (16 bytes a latent: 32 MB
//! at 2M latents), plus G and sum_g n_g^2 once. These add up across shards exactly when
//! no document straddles two shards; a straddling document counts as two clusters there
//! (its cross term 2 S_a S_b is lost), which changes V by one document's share out of G.
//!
//! q-values: Benjamini-Hochberg over every latent, from two-sided normal p-values.

use std::collections::HashMap;

/// Per-document sums of one set of statistics (see the module docs).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DocSums {
    /// Documents (clusters) closed so far, G.
    pub n_docs: u64,
    /// Tokens accumulated into documents (must equal the statistics' `n_tokens`).
    pub n_tokens: u64,
    /// sum_g n_g^2.
    pub sum_n_sq: f64,
    /// Per latent sum_g S_g^2.
    pub sum_sq: Vec<f64>,
    /// Per latent sum_g n_g S_g.
    pub sum_n: Vec<f64>,
}

impl DocSums {
    /// Empty sums for `n_latents` latents.
    pub fn new(n_latents: usize) -> Self {
        DocSums {
            sum_sq: vec![0.0; n_latents],
            sum_n: vec![0.0; n_latents],
            ..Default::default()
        }
    }

    /// Adds another shard's sums (same latents; checked by the caller).
    pub fn merge(&mut self, other: &DocSums) {
        self.n_docs += other.n_docs;
        self.n_tokens += other.n_tokens;
        self.sum_n_sq += other.sum_n_sq;
        for (a, b) in self.sum_sq.iter_mut().zip(&other.sum_sq) {
            *a += b;
        }
        for (a, b) in self.sum_n.iter_mut().zip(&other.sum_n) {
            *a += b;
        }
    }

    /// Cluster-robust variance of the mean of latent `i` with total `sum` over `n` tokens;
    /// None with fewer than two documents.
    pub fn var_of_mean(&self, i: usize, sum: f64, n: u64) -> Option<f64> {
        if self.n_docs < 2 || n == 0 {
            return None;
        }
        let (g, n) = (self.n_docs as f64, n as f64);
        let mu = sum / n;
        let ss = self.sum_sq[i] - 2.0 * mu * self.sum_n[i] + mu * mu * self.sum_n_sq;
        Some((g / (g - 1.0)) * ss.max(0.0) / (n * n))
    }
}

/// The document being summed: documents are contiguous runs of one doc id.
#[derive(Debug, Clone, Default)]
pub struct OpenDoc {
    doc: Option<i64>,
    n: u64,
    sums: HashMap<usize, f64>,
}

impl OpenDoc {
    /// Adds one counted token of document `doc` with its active latents; a new doc id
    /// closes the previous document into `out`.
    pub fn add(&mut self, out: &mut DocSums, doc: i64, active: impl Iterator<Item = (usize, f32)>) {
        if self.doc != Some(doc) {
            self.close(out);
            self.doc = Some(doc);
        }
        self.n += 1;
        for (i, v) in active {
            *self.sums.entry(i).or_insert(0.0) += v as f64;
        }
    }

    /// Closes the open document into `out` (at the end of a pass).
    pub fn close(&mut self, out: &mut DocSums) {
        if self.doc.take().is_none() {
            return;
        }
        let n = self.n as f64;
        out.n_docs += 1;
        out.n_tokens += self.n;
        out.sum_n_sq += n * n;
        for (i, s) in self.sums.drain() {
            out.sum_sq[i] += s * s;
            out.sum_n[i] += n * s;
        }
        self.n = 0;
    }
}

/// Two-sided normal p-value of a z-score.
pub fn p_two_sided(z: f64) -> f64 {
    if z.is_nan() {
        return 1.0;
    }
    libm::erfc(z.abs() / std::f64::consts::SQRT_2).clamp(0.0, 1.0)
}

/// Benjamini-Hochberg q-values (false discovery rate) of `p`, in input order.
pub fn bh_q_values(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_unstable_by(|a, b| p[*a].total_cmp(&p[*b]).then(a.cmp(b)));
    let mut q = vec![1.0; m];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        running = running.min(p[i] * m as f64 / (rank + 1) as f64);
        q[i] = running.min(1.0);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bh_matches_a_hand_computed_case() {
        let q = bh_q_values(&[0.01, 0.04, 0.03, 0.5]);
        // sorted: .01 (x4/1 = .04), .03 (x4/2 = .06), .04 (x4/3 = .0533), .5 (x4/4 = .5)
        // monotone from the top: .04, .0533, .0533, .5
        let want = [0.04, 4.0 * 0.04 / 3.0, 4.0 * 0.04 / 3.0, 0.5];
        for (a, b) in q.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
        assert!((p_two_sided(1.959963984540054) - 0.05).abs() < 1e-9);
        assert_eq!(p_two_sided(0.0), 1.0);
    }

    #[test]
    fn one_token_per_document_is_the_per_token_variance() {
        // values 1, 2, 3, 6 as four one-token documents: V = s^2 / N (sample variance)
        let mut d = DocSums::new(1);
        let mut open = OpenDoc::default();
        for (doc, v) in [1.0f32, 2.0, 3.0, 6.0].iter().enumerate() {
            open.add(&mut d, doc as i64, std::iter::once((0, *v)));
        }
        open.close(&mut d);
        let v = d.var_of_mean(0, 12.0, 4).unwrap();
        let s2 = [1.0f64, 2.0, 3.0, 6.0]
            .iter()
            .map(|x| (x - 3.0).powi(2))
            .sum::<f64>()
            / 3.0;
        assert!((v - s2 / 4.0).abs() < 1e-12, "{v}");
        assert_eq!((d.n_docs, d.n_tokens), (4, 4));
    }
}
