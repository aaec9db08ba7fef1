//! How many latents a detection ranks as perfect by chance alone. With few models a
//! latent with no signal at all still orders them perfectly now and then: n_pos
//! positive and n_neg negative models have C(n_pos + n_neg, n_pos) equally likely
//! orderings under no signal (distinct values), and the detector counts either
//! direction (it picks the direction by the AUROC), so one latent reaches AUROC 1 with
//! probability 2 / C(n_pos + n_neg, n_pos). Over thousands of latents, 2 positives and
//! 2 negatives give AUROC 1 to a third of them.

/// A probability at or above which the report warns that perfect scores are expected
/// by chance: the usual 5 % level, applied to "at least one latent is perfect".
const WARN_AT: f64 = 0.05;

/// What chance alone gives a detection of this size.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PerfectByChance {
    /// Positive and negative models.
    pub n_positive: usize,
    /// See `n_positive`.
    pub n_negative: usize,
    /// Latents evaluated.
    pub n_evaluated: usize,
    /// Probability that one latent with no signal has AUROC 1 (either direction):
    /// 2 / C(n_positive + n_negative, n_positive).
    pub p_one_latent: f64,
    /// Latents expected at AUROC 1 by chance: `n_evaluated` x `p_one_latent` (latents
    /// whose deltas tie, such as dead ones, cannot reach it: an upper bound).
    pub expected_latents: f64,
    /// Probability that at least one of the evaluated latents reaches AUROC 1 by chance.
    pub p_any_latent: f64,
    /// Latents evaluated that have AUROC 1.
    pub observed_latents: usize,
    /// The warning the report prints when `p_any_latent` >= 5 %; None otherwise.
    pub caveat: Option<String>,
}

/// C(n, k) in floating point (infinite when it overflows: the probability is then 0).
fn binomial(n: usize, k: usize) -> f64 {
    let k = k.min(n - k);
    (1..=k).fold(1.0, |c, i| c * (n - k + i) as f64 / i as f64)
}

/// The chance figures of a detection with `n_pos` and `n_neg` models over
/// `n_evaluated` latents, of which `observed` reached AUROC 1.
pub fn perfect_by_chance(
    n_pos: usize,
    n_neg: usize,
    n_evaluated: usize,
    observed: usize,
) -> PerfectByChance {
    let p = if n_pos == 0 || n_neg == 0 {
        0.0
    } else {
        (2.0 / binomial(n_pos + n_neg, n_pos)).min(1.0)
    };
    let expected = p * n_evaluated as f64;
    // 1 - (1 - p)^N without cancellation for tiny p.
    let p_any = -(n_evaluated as f64 * (-p).ln_1p()).exp_m1();
    let caveat = (p_any >= WARN_AT).then(|| {
        format!(
            "Small sample: {} and {}. A latent with no signal orders them perfectly with \
             probability 2/C({}, {}) = {}, so up to {} of the {} latents evaluated reach \
             AUROC 1.000 by chance alone ({} did). An AUROC of 1.000 here is not evidence \
             by itself; add models.",
            crate::plural::count(n_pos as u64, "positive model"),
            crate::plural::count(n_neg as u64, "negative model"),
            n_pos + n_neg,
            n_pos,
            short(p),
            short(expected),
            n_evaluated,
            observed
        )
    });
    PerfectByChance {
        n_positive: n_pos,
        n_negative: n_neg,
        n_evaluated,
        p_one_latent: p,
        expected_latents: expected,
        p_any_latent: p_any,
        observed_latents: observed,
        caveat,
    }
}

/// A probability or count for a sentence: three significant digits.
fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_and_two_expect_a_third_of_the_latents() {
        let c = perfect_by_chance(2, 2, 4096, 20);
        assert!((c.p_one_latent - 1.0 / 3.0).abs() < 1e-12);
        assert!((c.expected_latents - 4096.0 / 3.0).abs() < 1e-9);
        assert!(c.p_any_latent > 0.999);
        let text = c.caveat.unwrap();
        assert!(
            text.contains("2 positive models and 2 negative models"),
            "{text}"
        );
        assert!(
            text.contains("2/C(4, 2) = 0.333") && text.contains("1365"),
            "{text}"
        );
    }

    #[test]
    fn large_samples_need_no_caveat() {
        // 10 + 10: C(20, 10) = 184756, so 4096 latents expect 0.044 perfect ones.
        let c = perfect_by_chance(10, 10, 4096, 0);
        assert!((c.p_one_latent - 2.0 / 184_756.0).abs() < 1e-15);
        assert!(c.p_any_latent > 0.04 && c.p_any_latent < 0.05);
        assert!(c.caveat.is_none());
        assert!(perfect_by_chance(40, 40, 1 << 24, 0).caveat.is_none());
        // One of each: every latent with distinct deltas is perfect.
        assert_eq!(perfect_by_chance(1, 1, 10, 10).p_one_latent, 1.0);
    }
}
