//! Load sweeps and the knee (docs/metrics.md#capacity): the settings, the per-level record and
//! the knee. `runner::sweep` runs a sweep.
//!
//! After its workload, a run with `--sweep concurrency=1,8,32` (or `request_rate=...`) measures
//! the same server again at each load level, lowest first: the same requests as the workload
//! (`--num-requests` / `--duration`), no quality suites, one warm-up request. Per level it keeps
//! goodput under the run's latency targets (`--slo`), the latency tails, throughput and what
//! `/metrics` said (preemptions, KV-cache usage, waiting requests).
//!
//! **The knee** is the highest level whose goodput share (requests that met every target) is
//! at least `--knee-share` (default 0.99), checked from the lowest level up: the first level
//! below the share ends the sweep (the server is past its knee; higher loads only queue more),
//! so the knee is the level before it. A level is also marked `oversaturated` when its requests'
//! TTFT grew over the level (the median TTFT of the last quarter of requests, by send time, is
//! more than 1.5 times the first quarter's): the server queued faster than it served.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::record::RequestRecord;

/// What a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoadBy {
    /// Closed loop: requests in flight.
    Concurrency,
    /// Open loop (Poisson): requests per second.
    RequestRate,
}

impl LoadBy {
    /// The name in flags, files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBy::Concurrency => "concurrency",
            LoadBy::RequestRate => "request_rate",
        }
    }
}

/// A load sweep: the levels, ascending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Sweep {
    /// What is varied.
    pub by: LoadBy,
    /// The levels, ascending (empty until sized for `kv_fill`).
    pub levels: Vec<f64>,
    /// `concurrency=kv`: the levels are sized from the server's KV-cache capacity
    /// ([`kv_fill_levels`]) once it is up.
    #[serde(default)]
    pub kv_fill: bool,
}

/// The KV-filling ladder: with `kv_tokens` of cache and sequences of `seq_tokens` (prompt plus
/// answer), `full` sequences fill it; the levels are `full/4, full/2, full, 2 full, 4 full`
/// (whole, at least 1, distinct), so the sweep crosses the point where the cache is full.
pub fn kv_fill_levels(kv_tokens: u64, seq_tokens: u64) -> Vec<f64> {
    let full = (kv_tokens / seq_tokens.max(1)).max(1) as f64;
    let mut v: Vec<f64> = [0.25, 0.5, 1.0, 2.0, 4.0]
        .iter()
        .map(|m| (full * m).round().max(1.0))
        .collect();
    v.dedup();
    v
}

/// Parses `concurrency=1,8,32`, `request_rate=0.5,1,2` (also `request-rate`), or
/// `concurrency=kv` (levels sized from the server's KV cache).
pub fn parse_sweep(s: &str) -> Result<Sweep, String> {
    let (by, list) = s.split_once('=').ok_or_else(|| {
        format!("{s:?}: expected concurrency=1,8,32, request_rate=1,2,4 or concurrency=kv")
    })?;
    if by.trim() == "concurrency" && list.trim() == "kv" {
        return Ok(Sweep {
            by: LoadBy::Concurrency,
            levels: Vec::new(),
            kv_fill: true,
        });
    }
    let by = match by.trim() {
        "concurrency" => LoadBy::Concurrency,
        "request_rate" | "request-rate" => LoadBy::RequestRate,
        other => {
            return Err(format!(
                "{other:?}: a sweep varies concurrency or request_rate"
            ))
        }
    };
    let mut levels = Vec::new();
    for item in list.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let v: f64 = item
            .parse()
            .map_err(|_| format!("{item:?} is not a number"))?;
        let ok = match by {
            LoadBy::Concurrency => v >= 1.0 && v.fract() == 0.0 && v <= 100_000.0,
            LoadBy::RequestRate => v > 0.0 && v.is_finite(),
        };
        if !ok {
            return Err(match by {
                LoadBy::Concurrency => {
                    format!("{item}: a concurrency is a whole number in 1..=100000")
                }
                LoadBy::RequestRate => format!("{item}: a request rate is a positive number"),
            });
        }
        levels.push(v);
    }
    if levels.is_empty() {
        return Err(format!("{s:?}: no levels"));
    }
    if levels.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("{s:?}: levels must rise (lowest first)"));
    }
    Ok(Sweep {
        by,
        levels,
        kv_fill: false,
    })
}

/// One load level of a sweep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Level {
    /// The load (requests in flight, or requests per second).
    pub load: f64,
    /// Measured requests.
    pub requests: u64,
    /// Requests per second that met every target.
    pub goodput_rps: Option<f64>,
    /// Share of requests that met every target.
    pub goodput_share: Option<f64>,
    /// TTFT p50 and p99, ms.
    pub ttft_ms_p50: Option<f64>,
    /// TTFT p99, ms.
    pub ttft_ms_p99: Option<f64>,
    /// TPOT p99, ms.
    pub tpot_ms_p99: Option<f64>,
    /// Output tokens per second.
    pub output_tok_per_s: Option<f64>,
    /// Preemptions during the level (`/metrics`), else `null`.
    pub preemptions: Option<f64>,
    /// Peak KV-cache usage during the level, 0..1 (`/metrics`), else `null`.
    pub kv_cache_usage_peak: Option<f64>,
    /// Peak of waiting (queued) requests (`/metrics`), else `null`.
    pub waiting_peak: Option<f64>,
    /// Whether TTFT grew over the level (the server queued faster than it served).
    pub oversaturated: bool,
    /// The level's per-request journal.
    pub journal: Option<String>,
}

/// A run's sweep: its levels and its knee.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Capacity {
    /// What was varied.
    pub by: LoadBy,
    /// The goodput share a level must keep (`--knee-share`).
    pub share_target: f64,
    /// The levels measured, lowest first.
    pub levels: Vec<Level>,
    /// The levels planned but not measured (the sweep stopped past the knee, or was
    /// interrupted).
    pub skipped: Vec<f64>,
    /// The highest load within the targets, else `null` (even the lowest level missed them).
    pub knee: Option<f64>,
    /// For a KV-filling sweep (`concurrency=kv`): the KV-cache tokens the levels were sized
    /// from, else `null`.
    #[serde(default)]
    pub sized_from_kv_tokens: Option<u64>,
}

/// The knee of `levels` (lowest first): the highest level, counting up from the lowest, whose
/// goodput share is at least `target`, stopping at the first that is not.
pub fn knee(levels: &[Level], target: f64) -> Option<f64> {
    let mut knee = None;
    for l in levels {
        match l.goodput_share {
            Some(s) if s >= target => knee = Some(l.load),
            _ => break,
        }
    }
    knee
}

/// Whether TTFT grew over a level: the median TTFT of the last quarter of its requests (by
/// send time) over the first quarter's exceeds 1.5. Needs at least 8 requests with a TTFT.
pub fn oversaturated(records: &[RequestRecord]) -> bool {
    let mut r: Vec<(u64, f64)> = records
        .iter()
        .filter(|r| !r.warmup)
        .filter_map(|r| {
            let t = r.first_token_ns?.checked_sub(r.sent_ns)?;
            Some((r.sent_ns, t as f64))
        })
        .collect();
    if r.len() < 8 {
        return false;
    }
    r.sort_by_key(|x| x.0);
    let q = r.len() / 4;
    let median = |v: &[(u64, f64)]| {
        let mut t: Vec<f64> = v.iter().map(|x| x.1).collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let (first, last) = (median(&r[..q]), median(&r[r.len() - q..]));
    first > 0.0 && last / first > 1.5
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(load: f64, share: Option<f64>) -> Level {
        Level {
            load,
            goodput_share: share,
            ..Level::default()
        }
    }

    #[test]
    fn sweeps_parse_and_refuse_what_cannot_be_run() {
        let s = parse_sweep("concurrency=1,8, 32").unwrap();
        assert_eq!(s.by, LoadBy::Concurrency);
        assert_eq!(s.levels, vec![1.0, 8.0, 32.0]);
        let s = parse_sweep("request-rate=0.5,2").unwrap();
        assert_eq!(s.by, LoadBy::RequestRate);
        for bad in [
            "concurrency",
            "load=1,2",
            "concurrency=1.5",
            "concurrency=0,2",
            "concurrency=8,4",
            "concurrency=4,4",
            "request_rate=-1",
            "request_rate=",
        ] {
            assert!(parse_sweep(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_kv_filling_sweep_crosses_the_full_cache() {
        let s = parse_sweep("concurrency=kv").unwrap();
        assert!(s.kv_fill && s.levels.is_empty());
        assert!(parse_sweep("request_rate=kv").is_err());
        // 366,976 tokens of 6,400-token sequences: 57 fill the cache.
        assert_eq!(
            kv_fill_levels(366_976, 6_400),
            vec![14.0, 29.0, 57.0, 114.0, 228.0]
        );
        // A cache smaller than one sequence still gets levels, whole and distinct.
        assert_eq!(kv_fill_levels(100, 6_400), vec![1.0, 2.0, 4.0]);
    }

    #[test]
    fn the_knee_is_the_last_level_within_the_share_counting_up() {
        let t = 0.99;
        let l = [
            level(1.0, Some(1.0)),
            level(8.0, Some(0.995)),
            level(32.0, Some(0.90)),
            level(128.0, Some(1.0)),
        ];
        // 128 met the share again, but the sweep counts up and stops at the first miss.
        assert_eq!(knee(&l, t), Some(8.0));
        assert_eq!(knee(&l[..2], t), Some(8.0));
        assert_eq!(knee(&[level(1.0, Some(0.5))], t), None);
        assert_eq!(knee(&[level(1.0, None)], t), None);
        assert_eq!(knee(&[], t), None);
    }

    fn rec(sent_ms: u64, ttft_ms: u64) -> RequestRecord {
        RequestRecord {
            sent_ns: sent_ms * 1_000_000,
            first_token_ns: Some((sent_ms + ttft_ms) * 1_000_000),
            ..RequestRecord::default()
        }
    }

    #[test]
    fn growing_ttft_within_a_level_is_oversaturation() {
        let steady: Vec<_> = (0..40).map(|i| rec(i * 10, 100 + i % 3)).collect();
        assert!(!oversaturated(&steady));
        let growing: Vec<_> = (0..40).map(|i| rec(i * 10, 100 + 20 * i)).collect();
        assert!(oversaturated(&growing));
        assert!(!oversaturated(&growing[..7]));
    }
}
