//! Arrival schedules. Closed loop: C workers, each sends its next request when the previous one
//! ends. Open loop: send times are precomputed (constant, Poisson or gamma inter-arrival gaps,
//! as `vllm bench serve` defines burstiness) and latency can be measured from the scheduled time,
//! so time a request waits in the client (behind `--max-concurrency`) is not hidden.

use std::time::Duration;

use rand::SeedableRng;
use rand_distr::{Distribution, Gamma};

/// Inter-arrival distribution of an open-loop run.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ArrivalKind {
    /// Poisson process (exponential gaps; gamma with burstiness 1).
    Poisson,
    /// Evenly spaced sends.
    Constant,
    /// Gamma gaps with shape = burstiness (< 1 burstier, > 1 smoother than Poisson).
    Gamma,
}

/// How requests are released.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Arrival {
    /// `concurrency` workers back to back.
    Closed {
        /// Number of workers.
        concurrency: usize,
    },
    /// Requests released at precomputed times.
    Open {
        /// Mean requests per second (`f64::INFINITY`: all at once, `null` in JSON).
        #[serde(deserialize_with = "rate_or_infinity")]
        #[schemars(with = "Option<f64>")]
        rate: f64,
        /// Gap distribution.
        kind: ArrivalKind,
        /// Gamma shape (1 for Poisson).
        burstiness: f64,
        /// Cap on in-flight requests, if any.
        max_concurrency: Option<usize>,
    },
}

/// An open loop's rate as JSON writes it: a number, or `null` for all at once (JSON has no
/// infinity).
fn rate_or_infinity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    use serde::Deserialize;
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

/// Send offsets from the start of measurement: `n` of them, or as many as fit in `until`.
/// The first request goes at 0. The offsets are drawn as the run consumes them (a long open
/// loop, `--request-rate 1e6 --duration 1000h`, must not be computed before it starts), and end
/// where an offset no longer fits a `Duration`.
pub fn timeline(
    rate: f64,
    kind: ArrivalKind,
    burstiness: f64,
    seed: u64,
    n: Option<u64>,
    until: Option<Duration>,
) -> Timeline {
    let shape = match kind {
        ArrivalKind::Poisson => 1.0,
        _ => burstiness,
    };
    let gamma = if kind == ArrivalKind::Constant || !rate.is_finite() {
        None
    } else {
        Gamma::new(shape, 1.0 / (rate * shape)).ok()
    };
    Timeline {
        rate,
        gamma,
        rng: rand::rngs::StdRng::seed_from_u64(seed ^ 0xA5A5_5A5A),
        left: if rate.is_finite() {
            n.unwrap_or(u64::MAX)
        } else {
            n.unwrap_or(0)
        },
        horizon_s: until.map(|d| d.as_secs_f64()).unwrap_or(f64::INFINITY),
        t_s: 0.0,
    }
}

/// The send offsets of an open loop, drawn one at a time ([`timeline`]).
#[derive(Debug)]
pub struct Timeline {
    rate: f64,
    gamma: Option<Gamma<f64>>,
    rng: rand::rngs::StdRng,
    left: u64,
    horizon_s: f64,
    t_s: f64,
}

impl Iterator for Timeline {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.left == 0 {
            return None;
        }
        if !self.rate.is_finite() {
            self.left -= 1;
            return Some(Duration::ZERO);
        }
        if self.t_s >= self.horizon_s {
            return None;
        }
        let Ok(at) = Duration::try_from_secs_f64(self.t_s) else {
            self.left = 0;
            return None;
        };
        self.left -= 1;
        let gap = match &self.gamma {
            None => 1.0 / self.rate,
            Some(g) => g.sample(&mut self.rng),
        };
        self.t_s += gap;
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(
        rate: f64,
        kind: ArrivalKind,
        burstiness: f64,
        seed: u64,
        n: Option<u64>,
        until: Option<Duration>,
    ) -> Vec<Duration> {
        super::timeline(rate, kind, burstiness, seed, n, until).collect()
    }

    #[test]
    fn constant_is_evenly_spaced() {
        let t = timeline(4.0, ArrivalKind::Constant, 1.0, 0, Some(5), None);
        let ms: Vec<u128> = t.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 250, 500, 750, 1000]);
    }

    #[test]
    fn poisson_mean_gap_matches_rate() {
        let t = timeline(10.0, ArrivalKind::Poisson, 1.0, 42, Some(20_001), None);
        let mean_gap = t.last().unwrap().as_secs_f64() / 20_000.0;
        assert!((mean_gap - 0.1).abs() < 0.005, "mean gap {mean_gap}");
    }

    #[test]
    fn gamma_burstiness_changes_variance_not_mean() {
        let gaps = |b: f64| {
            let t = timeline(10.0, ArrivalKind::Gamma, b, 7, Some(20_001), None);
            let g: Vec<f64> = t.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
            let mean = g.iter().sum::<f64>() / g.len() as f64;
            let var = g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / g.len() as f64;
            (mean, var)
        };
        let (m_low, v_low) = gaps(0.25);
        let (m_high, v_high) = gaps(4.0);
        assert!((m_low - 0.1).abs() < 0.01 && (m_high - 0.1).abs() < 0.01);
        assert!(
            v_low > 4.0 * v_high,
            "burstier should vary more: {v_low} vs {v_high}"
        );
    }

    #[test]
    fn duration_bounds_the_timeline_and_inf_is_all_at_once() {
        let t = timeline(
            2.0,
            ArrivalKind::Constant,
            1.0,
            0,
            None,
            Some(Duration::from_secs(3)),
        );
        assert_eq!(t.len(), 6);
        let inf = timeline(f64::INFINITY, ArrivalKind::Poisson, 1.0, 0, Some(3), None);
        assert_eq!(inf, vec![Duration::ZERO; 3]);
    }

    #[test]
    fn a_long_open_loop_is_drawn_as_it_goes() {
        let hours = Some(Duration::from_secs(1000 * 3600));
        let mut t = super::timeline(1e6, ArrivalKind::Poisson, 1.0, 0, None, hours);
        assert_eq!(t.next(), Some(Duration::ZERO));
        assert!(t.next().unwrap() < Duration::from_millis(1));
        // Offsets beyond what a Duration holds end the schedule instead of panicking.
        let far = timeline(1e-19, ArrivalKind::Constant, 1.0, 0, Some(5), None);
        assert_eq!(far.len(), 2);
        let far = timeline(1e-300, ArrivalKind::Poisson, 1.0, 0, Some(5), None);
        assert!(far.len() <= 2);
    }
}
