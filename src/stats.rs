//! Statistics: small pure functions, tested on hand-computed data.

use serde::{Deserialize, Serialize};

/// Summary of a sample. Every value is `null` when the sample is empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of values.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: Option<f64>,
    /// Sample standard deviation (n − 1 in the denominator; `null` below two values).
    pub std: Option<f64>,
    /// Smallest value.
    pub min: Option<f64>,
    /// Median (linear interpolation between order statistics).
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest value.
    pub max: Option<f64>,
}

impl Summary {
    /// Summarises `values` (any order; NaNs are dropped).
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_unstable_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.len() > 1)
            .then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
        Self {
            count: v.len() as u64,
            mean: Some(mean),
            std,
            min: v.first().copied(),
            p50: Some(percentile_sorted(&v, 50.0)),
            p90: Some(percentile_sorted(&v, 90.0)),
            p95: Some(percentile_sorted(&v, 95.0)),
            p99: Some(percentile_sorted(&v, 99.0)),
            max: v.last().copied(),
        }
    }
}

/// Percentile `p` (0–100) of sorted data, linear interpolation between closest ranks (the
/// default of numpy, which `vllm bench serve` uses): rank = p/100 × (n − 1).
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            let frac = rank - lo as f64;
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_summary() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0, 5.0]);
        assert_eq!(s.count, 5);
        assert_eq!(s.mean, Some(3.0));
        // sample variance = (4+1+0+1+4)/4 = 2.5
        assert!((s.std.unwrap() - 2.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.min, Some(1.0));
        assert_eq!(s.p50, Some(3.0));
        // rank 0.9*4 = 3.6 -> 4 + 0.6*(5-4)
        assert!((s.p90.unwrap() - 4.6).abs() < 1e-12);
        assert!((s.p99.unwrap() - 4.96).abs() < 1e-12);
        assert_eq!(s.max, Some(5.0));
    }

    #[test]
    fn empty_is_all_null_and_single_has_no_std() {
        let e = Summary::of(&[]);
        assert_eq!(e.count, 0);
        assert!(e.mean.is_none() && e.p50.is_none() && e.std.is_none());
        let one = Summary::of(&[7.0]);
        assert_eq!(one.p99, Some(7.0));
        assert_eq!(one.std, None);
        let json = serde_json::to_value(&e).unwrap();
        assert!(json["p50"].is_null());
    }
}
