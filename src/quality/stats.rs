//! Statistics for graded answers: Wilson score intervals for an accuracy, and the exact McNemar
//! test for paired right/wrong outcomes of two arms on the same items.
//!
//! Both are a few lines of closed-form arithmetic, written here rather than pulled from a
//! statistics crate; the tests check them against hand-computed values.

/// z for a two-sided 95 % interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Wilson score interval for `correct` successes out of `n` at normal quantile `z`; `None`
/// when `n` is 0. Unlike the normal ("Wald") interval it stays inside [0, 1] and is sensible at
/// 0 % and 100 %, which small quality suites often hit.
pub fn wilson(correct: u64, n: u64, z: f64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let n = n as f64;
    let p = correct as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// Two-sided exact McNemar test: `b` items right only in arm A, `c` right only in arm B. Under
/// "no difference" each of the `b + c` discordant items is equally likely to go either way, so
/// p = min(1, 2 · P(X ≤ min(b, c))) with X ~ Binomial(b + c, 1/2). 1 when there is no flip.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // Sum the binomial pmf in log space: 0.5^n underflows for n > 1074.
    let ln2n = n as f64 * std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut tail = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose - ln2n).exp();
    }
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_hand_computed() {
        // 8 of 10 at z = 1.96: centre = (0.8 + 0.19208) / 1.38416 = 0.716738,
        // half = 1.96 * sqrt(0.016 + 0.009604) / 1.38416 = 0.226581.
        let (lo, hi) = wilson(8, 10, 1.96).unwrap();
        assert!((lo - 0.490_157).abs() < 1e-5, "{lo}");
        assert!((hi - 0.943_319).abs() < 1e-5, "{hi}");
        // All correct: the upper end is 1 and the lower end is n / (n + z²).
        let (lo, hi) = wilson(20, 20, Z95).unwrap();
        assert!((hi - 1.0).abs() < 1e-12);
        assert!((lo - 20.0 / (20.0 + Z95 * Z95)).abs() < 1e-12, "{lo}");
        let (lo, _) = wilson(0, 5, Z95).unwrap();
        assert_eq!(lo, 0.0);
        assert_eq!(wilson(0, 0, Z95), None);
    }

    #[test]
    fn mcnemar_hand_computed() {
        // No flips: nothing to test.
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // 5 flips all one way: 2 * 0.5^5 = 0.0625.
        assert!((mcnemar_exact(5, 0) - 0.0625).abs() < 1e-12);
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
        // 1 vs 9: 2 * (1 + 10) / 1024 = 0.021484375.
        assert!((mcnemar_exact(1, 9) - 0.021_484_375).abs() < 1e-12);
        // Balanced flips are capped at 1.
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        // Large n does not underflow: 600 vs 400 is far from balanced.
        // 400 vs 600: 2 * P(X <= 400), X ~ Bin(1000, 1/2) = 2.72846e-10 (exact big integers).
        let p = mcnemar_exact(600, 400);
        assert!((p / 2.728_464_156e-10 - 1.0).abs() < 1e-6, "{p}");
    }
}
