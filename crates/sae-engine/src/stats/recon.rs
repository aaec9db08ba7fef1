//! Reconstruction metrics, accumulated over batches so that a whole dump can be
//! scored in one streaming pass.

/// Running sums for reconstruction quality over any number of rows.
#[derive(Debug, Clone, Default)]
pub struct MetricsAccumulator {
    d: usize,
    n: u64,
    sum_sq_err: f64,
    sum_sq_x: f64,
    sum_x: Vec<f64>,
    sum_cos: f64,
    sum_l0: u64,
}

/// Reconstruction quality of a set of rows.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ReconMetrics {
    /// Rows scored.
    pub n_rows: u64,
    /// Mean squared error per element.
    pub mse: f64,
    /// Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2.
    pub fvu: f64,
    /// Mean cosine similarity between x and x_hat (rows with a zero vector count as 0).
    pub cosine: f64,
    /// Mean number of active latents per row.
    pub l0: f64,
}

impl MetricsAccumulator {
    /// For rows of width `d`.
    pub fn new(d: usize) -> Self {
        MetricsAccumulator {
            d,
            sum_x: vec![0.0; d],
            ..Default::default()
        }
    }

    /// Adds rows of `x` and their reconstructions `x_hat` (`[rows, d]`), with each row's L0.
    pub fn add(&mut self, x: &[f32], x_hat: &[f32], l0: impl IntoIterator<Item = usize>) {
        assert_eq!(x.len(), x_hat.len());
        let d = self.d.max(1);
        for (row, rec) in x.chunks_exact(d).zip(x_hat.chunks_exact(d)) {
            let (mut err, mut xx, mut rr, mut xr) = (0f64, 0f64, 0f64, 0f64);
            for (j, (a, b)) in row.iter().zip(rec).enumerate() {
                let (a, b) = (*a as f64, *b as f64);
                err += (a - b) * (a - b);
                xx += a * a;
                rr += b * b;
                xr += a * b;
                self.sum_x[j] += a;
            }
            self.sum_sq_err += err;
            self.sum_sq_x += xx;
            if xx > 0.0 && rr > 0.0 {
                self.sum_cos += xr / (xx.sqrt() * rr.sqrt());
            }
            self.n += 1;
        }
        self.sum_l0 += l0.into_iter().map(|v| v as u64).sum::<u64>();
    }

    /// The metrics so far.
    pub fn finish(&self) -> ReconMetrics {
        let n = self.n.max(1) as f64;
        let mean_sq: f64 = self.sum_x.iter().map(|s| (s / n) * (s / n)).sum();
        let total_var = self.sum_sq_x - n * mean_sq;
        ReconMetrics {
            n_rows: self.n,
            mse: self.sum_sq_err / (n * self.d.max(1) as f64),
            fvu: if total_var > 0.0 {
                self.sum_sq_err / total_var
            } else {
                f64::NAN
            },
            cosine: self.sum_cos / n,
            l0: self.sum_l0 as f64 / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_zero_reconstruction() {
        let x = [1.0f32, 2.0, 3.0, 5.0];
        let mut m = MetricsAccumulator::new(2);
        m.add(&x, &x, [1, 2]);
        let r = m.finish();
        assert_eq!(r.mse, 0.0);
        assert_eq!(r.fvu, 0.0);
        assert!((r.cosine - 1.0).abs() < 1e-12);
        assert_eq!(r.l0, 1.5);

        let mut z = MetricsAccumulator::new(2);
        z.add(&x, &[2.0, 3.5, 2.0, 3.5], [0, 0]);
        // predicting the mean leaves all variance unexplained
        assert!((z.finish().fvu - 1.0).abs() < 1e-12);
    }
}
