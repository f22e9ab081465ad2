//! Statistics: small pure functions, tested on hand-computed data.

use serde::{Deserialize, Serialize};

/// Summary of a sample. Every value is `null` when the sample is empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// Percentile `p` of unsorted data (reordered in place), same definition as
/// [`percentile_sorted`], in linear time.
pub fn percentile_unsorted(v: &mut [f64], p: f64) -> f64 {
    match v.len() {
        0 => f64::NAN,
        1 => v[0],
        n => {
            let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let frac = rank - lo as f64;
            let (_, lo_v, upper) = v.select_nth_unstable_by(lo, f64::total_cmp);
            let lo_v = *lo_v;
            if frac == 0.0 || upper.is_empty() {
                return lo_v;
            }
            let hi_v = upper.iter().copied().fold(f64::INFINITY, f64::min);
            lo_v + (hi_v - lo_v) * frac
        }
    }
}

/// Resamples drawn for bootstrap intervals.
pub const BOOTSTRAP_RESAMPLES: usize = 1000;

/// A small, seeded generator for resampling (SplitMix64): reproducible intervals.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// 95 % percentile-bootstrap interval of the relative change, in percent, of a statistic from
/// sample `a` (baseline) to sample `b` (candidate): each sample is resampled with replacement
/// independently, `stat` is computed on both, and `100 × (stat_b / stat_a − 1)` is collected.
/// `None` when either sample is empty or the baseline statistic is 0.
pub fn bootstrap_change_pct<A, B>(
    a: &[A],
    b: &[B],
    stat_a: impl Fn(&[&A]) -> f64,
    stat_b: impl Fn(&[&B]) -> f64,
    seed: u64,
) -> Option<(f64, f64)> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let mut rng = SplitMix(seed ^ 0x5EED);
    let mut changes = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut ra: Vec<&A> = Vec::with_capacity(a.len());
    let mut rb: Vec<&B> = Vec::with_capacity(b.len());
    for _ in 0..BOOTSTRAP_RESAMPLES {
        ra.clear();
        rb.clear();
        ra.extend((0..a.len()).map(|_| &a[rng.below(a.len())]));
        rb.extend((0..b.len()).map(|_| &b[rng.below(b.len())]));
        let (sa, sb) = (stat_a(&ra), stat_b(&rb));
        if sa != 0.0 && sa.is_finite() && sb.is_finite() {
            changes.push(100.0 * (sb / sa - 1.0));
        }
    }
    if changes.len() < BOOTSTRAP_RESAMPLES / 2 {
        return None;
    }
    changes.sort_unstable_by(f64::total_cmp);
    Some((
        percentile_sorted(&changes, 2.5),
        percentile_sorted(&changes, 97.5),
    ))
}

/// Two-sided 95 % quantile of Student's t with `df` degrees of freedom (rounded down, so the
/// interval is never too narrow).
pub fn t975(df: f64) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    if df.is_nan() || df < 1.0 {
        return T[0];
    }
    let d = df.floor() as usize;
    if d <= 30 {
        T[d - 1]
    } else {
        // Between 30 and infinity t(0.975) goes from 2.042 to 1.960 roughly as 1/df.
        1.960 + 2.46 / d as f64
    }
}

/// 95 % Welch interval of the relative change, in percent, of the mean from `a` (baseline
/// repeats) to `b` (candidate repeats), by the delta method: the variance of mean_b / mean_a is
/// approximated to first order. `None` with fewer than two values on either side.
pub fn welch_change_pct(a: &[f64], b: &[f64]) -> Option<(f64, f64)> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let stats = |v: &[f64]| {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
        (n, m, var)
    };
    let ((na, ma, va), (nb, mb, vb)) = (stats(a), stats(b));
    if ma == 0.0 {
        return None;
    }
    let ratio = mb / ma;
    // Var(mb/ma) ≈ (vb/nb)/ma² + mb²·(va/na)/ma⁴.
    let (ta, tb) = (mb * mb * (va / na) / ma.powi(4), (vb / nb) / (ma * ma));
    let se = (ta + tb).sqrt();
    let df = if ta + tb > 0.0 {
        (ta + tb).powi(2) / (ta * ta / (na - 1.0) + tb * tb / (nb - 1.0)).max(f64::MIN_POSITIVE)
    } else {
        na + nb - 2.0
    };
    let half = t975(df) * se;
    Some((100.0 * (ratio - half - 1.0), 100.0 * (ratio + half - 1.0)))
}

/// Percentile `p` of a resample of references.
pub fn percentile_of_refs(v: &[&f64], p: f64) -> f64 {
    let mut buf: Vec<f64> = v.iter().map(|x| **x).collect();
    percentile_unsorted(&mut buf, p)
}

/// Mean of a resample of references.
pub fn mean_of_refs(v: &[&f64]) -> f64 {
    v.iter().map(|x| **x).sum::<f64>() / v.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn t_quantiles_match_tables() {
        // Student's t tables: t(0.975; 4) = 2.776, t(0.99; 10) = 2.764; normal: 1.960.
        assert!((t_quantile(4.0, 0.975) - 2.776).abs() < 1e-3);
        assert!((t_quantile(10.0, 0.99) - 2.764).abs() < 1e-3);
        assert!((t_quantile(f64::INFINITY, 0.975) - 1.95996).abs() < 1e-4);
        assert!((t_quantile(4.0, 0.025) + 2.776).abs() < 1e-3);
    }

    #[test]
    fn log_change_pools_runs_and_prior() {
        // Hand-computed: ln 100, ln 110 vs ln 120, ln 130; no prior, df = 2.
        let lc = LogChange::from_runs(&[100.0, 110.0], &[120.0, 130.0], 0.0, 6.0).unwrap();
        assert!((lc.estimate - 0.174_688).abs() < 1e-5, "{lc:?}");
        assert!((lc.se - 0.062_231).abs() < 1e-5, "{lc:?}");
        assert_eq!(lc.df, 2.0);
        // One run each: the prior alone (variance 0.0025 per run, 6 df).
        let lc = LogChange::from_runs(&[100.0], &[110.0], 0.0025, 6.0).unwrap();
        assert!((lc.change_pct() - 10.0).abs() < 1e-9);
        assert!((lc.se - 0.070_711).abs() < 1e-5);
        assert_eq!(lc.df, 6.0);
        let (lo, hi) = lc.interval_pct(0.95);
        let t = t_quantile(6.0, 0.975);
        assert!((hi - 100.0 * ((1.1f64).ln() + t * lc.se).exp_m1()).abs() < 1e-9);
        assert!(lo < 0.0 && hi > 20.0, "{lo} {hi}");
        // Neither runs' spread nor a prior: nothing to go on.
        assert!(LogChange::from_runs(&[100.0], &[110.0], 0.0, 6.0).is_none());
        assert!(LogChange::from_runs(&[0.0], &[110.0], 0.0025, 6.0).is_none());
    }

    #[test]
    fn per_run_variance_from_a_bootstrap_interval() {
        // A ±1.96·se interval on the log scale gives back se²/2 per run.
        let se: f64 = 0.03;
        let lo = 100.0 * (-1.959_964 * se).exp_m1();
        let hi = 100.0 * (1.959_964 * se).exp_m1();
        let v = per_run_log_var_from_ci(lo, hi).unwrap();
        assert!((v - se * se / 2.0).abs() < 1e-12);
        assert!(per_run_log_var_from_ci(5.0, 1.0).is_none());
    }

    use super::*;

    #[test]
    fn welch_interval_hand_computed() {
        // a: mean 10, var 2/1 = 2 (values 9, 11); b: mean 12, var 2.
        let (lo, hi) = welch_change_pct(&[9.0, 11.0], &[11.0, 13.0]).unwrap();
        // Var(ratio) = 144·1/10⁴ + 1/100 = 0.0244; df = 0.0244² / (0.0144² + 0.01²) = 1.93 → t = 12.706.
        let half = 12.706 * 0.0244f64.sqrt();
        assert!((lo - 100.0 * (1.2 - half - 1.0)).abs() < 1e-9, "{lo}");
        assert!((hi - 100.0 * (1.2 + half - 1.0)).abs() < 1e-9, "{hi}");
        assert!(welch_change_pct(&[1.0], &[1.0, 2.0]).is_none());
        assert_eq!(t975(2.9), 4.303);
        assert!((t975(1000.0) - 1.962).abs() < 0.01);
    }

    #[test]
    fn unsorted_percentile_matches_sorted() {
        let data = [9.0, 1.0, 5.0, 3.0, 7.0, 2.0, 8.0];
        let mut sorted = data.to_vec();
        sorted.sort_by(f64::total_cmp);
        for p in [0.0, 10.0, 50.0, 90.0, 99.0, 100.0] {
            let mut buf = data.to_vec();
            assert!(
                (percentile_unsorted(&mut buf, p) - percentile_sorted(&sorted, p)).abs() < 1e-12,
                "p{p}"
            );
        }
    }

    #[test]
    fn bootstrap_finds_a_real_shift_and_not_a_null_one() {
        // Two samples from the same spread, the second shifted up by 20 %.
        let a: Vec<f64> = (0..400).map(|i| 100.0 + (i % 20) as f64).collect();
        let b: Vec<f64> = a.iter().map(|x| x * 1.2).collect();
        let p50 = |v: &[&f64]| percentile_of_refs(v, 50.0);
        let (lo, hi) = bootstrap_change_pct(&a, &b, p50, p50, 1).unwrap();
        assert!(
            lo > 15.0 && hi < 25.0 && lo <= 20.0 && hi >= 20.0,
            "{lo} {hi}"
        );
        let (lo, hi) = bootstrap_change_pct(&a, &a, p50, p50, 2).unwrap();
        assert!(lo <= 0.0 && hi >= 0.0, "A/A interval holds 0: {lo} {hi}");
        assert!(bootstrap_change_pct::<f64, f64>(&[], &a, p50, p50, 3).is_none());
    }

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

/// Quantile `p` (0 < p < 1) of Student's t with `df` degrees of freedom; the standard normal's
/// when `df` is infinite.
pub fn t_quantile(df: f64, p: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal, StudentsT};
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    if df.is_finite() && df > 0.0 {
        if let Ok(t) = StudentsT::new(0.0, 1.0, df) {
            return t.inverse_cdf(p);
        }
    }
    Normal::standard().inverse_cdf(p)
}

/// The change of a metric from one arm's runs to another's, on the log scale, with the
/// run-to-run variance pooled from both arms' runs and from a prior (docs/decision.md):
///
/// `s² = (ν₀·σ₀² + Σ (x − x̄)²) / (ν₀ + n_a − 1 + n_b − 1)`, `se = s·√(1/n_a + 1/n_b)`,
/// `df = ν₀ + n_a − 1 + n_b − 1`, where `x` are the runs' log values, `σ₀²` the prior variance of
/// one run's log value (assumed drift plus request-to-request spread) and `ν₀` its weight in
/// degrees of freedom. With one run per arm the prior alone carries the variance; from two runs
/// per arm on, the runs themselves take over as they accumulate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogChange {
    /// ln(mean candidate / mean baseline), means taken on the log scale.
    pub estimate: f64,
    /// Standard error of `estimate`.
    pub se: f64,
    /// Degrees of freedom of the t quantiles.
    pub df: f64,
}

impl LogChange {
    /// From per-run values (all positive); `None` when either side is empty or holds a value
    /// that is not positive, or when there is no variance to go on (no prior, one run each).
    pub fn from_runs(a: &[f64], b: &[f64], prior_var: f64, prior_df: f64) -> Option<Self> {
        if a.is_empty() || b.is_empty() || a.iter().chain(b).any(|x| !(*x > 0.0 && x.is_finite())) {
            return None;
        }
        let logs = |v: &[f64]| v.iter().map(|x| x.ln()).collect::<Vec<_>>();
        let (la, lb) = (logs(a), logs(b));
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let ss = |v: &[f64], m: f64| v.iter().map(|x| (x - m).powi(2)).sum::<f64>();
        let (ma, mb) = (mean(&la), mean(&lb));
        let data_df = (la.len() + lb.len()) as f64 - 2.0;
        let prior_df = if prior_var > 0.0 {
            prior_df.max(0.0)
        } else {
            0.0
        };
        let df = prior_df + data_df;
        if df <= 0.0 {
            return None;
        }
        let var = (prior_df * prior_var + ss(&la, ma) + ss(&lb, mb)) / df;
        let se = (var * (1.0 / la.len() as f64 + 1.0 / lb.len() as f64)).sqrt();
        Some(Self {
            estimate: mb - ma,
            se,
            df,
        })
    }

    /// The one-sided bound at confidence `conf` (e.g. 0.99), as a change in percent: the upper
    /// bound when `upper`, else the lower.
    pub fn bound_pct(&self, conf: f64, upper: bool) -> f64 {
        let t = t_quantile(self.df, conf);
        let x = if upper {
            self.estimate + t * self.se
        } else {
            self.estimate - t * self.se
        };
        100.0 * x.exp_m1()
    }

    /// The two-sided interval at confidence `conf` (e.g. 0.95), in percent.
    pub fn interval_pct(&self, conf: f64) -> (f64, f64) {
        let one = 0.5 + conf / 2.0;
        (self.bound_pct(one, false), self.bound_pct(one, true))
    }

    /// The change in percent.
    pub fn change_pct(&self) -> f64 {
        100.0 * self.estimate.exp_m1()
    }
}

/// The variance, on the log scale, of one run's statistic from a 95 % interval of the change
/// between two single runs (a request bootstrap, in percent): half the variance of the change.
pub fn per_run_log_var_from_ci(lo_pct: f64, hi_pct: f64) -> Option<f64> {
    let (lo, hi) = (1.0 + lo_pct / 100.0, 1.0 + hi_pct / 100.0);
    if !(lo > 0.0 && hi >= lo) {
        return None;
    }
    let se = (hi.ln() - lo.ln()) / (2.0 * 1.959_964);
    Some(se * se / 2.0)
}
