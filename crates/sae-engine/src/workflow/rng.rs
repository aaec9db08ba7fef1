//! A small deterministic generator (SplitMix64) for control vectors and the demo, so
//! results are reproducible from a seed without pulling a random-number crate into
//! the library.

use crate::deterministic::SplitMix64;

/// SplitMix64 with Box-Muller normals.
#[derive(Debug, Clone)]
pub struct Rng {
    bits: SplitMix64,
    spare: Option<f64>,
}

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng {
            bits: SplitMix64::new(seed ^ 0x853c_49e6_748f_ea9b),
            spare: None,
        }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.bits.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.uniform() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }

    /// A vector of `d` standard normals scaled to Euclidean norm `norm`.
    pub fn direction(&mut self, d: usize, norm: f64) -> Vec<f32> {
        let v: Vec<f64> = (0..d).map(|_| self.normal()).collect();
        let n = v
            .iter()
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt()
            .max(f64::MIN_POSITIVE);
        v.iter().map(|x| (x / n * norm) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_normalized() {
        let a = Rng::new(7).direction(64, 3.0);
        let b = Rng::new(7).direction(64, 3.0);
        assert_eq!(a, b);
        let n: f64 = a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        assert!((n - 3.0).abs() < 1e-5);
        let mut r = Rng::new(1);
        let m: f64 = (0..20000).map(|_| r.normal()).sum::<f64>() / 20000.0;
        assert!(m.abs() < 0.05);
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
