//! The decision policy (docs/decision.md): the user's rule by default, every threshold a key.
//!
//! Each criterion gives its own verdict with a reason and the numbers behind it; the overall
//! verdict is `keep` when any criterion says keep, else `inconclusive` when any cannot be
//! decided (an arm failed, no interval, too noisy, a setting did not take), else the strictest
//! of `apply` and `monitor`.

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{ArmRuns, Better, Delta, Method, QualityDelta, WarningDiff};

/// Thresholds of the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Warnings of `warning_category` that must be resolved (apply and monitor).
    pub min_warnings_resolved: u64,
    /// Largest regression (percent, outside noise) of any regression metric for `apply`.
    pub apply_max_regression_pct: f64,
    /// Largest regression for `monitor`.
    pub monitor_max_regression_pct: f64,
    /// Metrics whose regression counts (delta keys).
    pub regression_metrics: Vec<String>,
    /// Largest quality drop (percentage points, outside noise) for `apply`.
    pub max_quality_drop_pts: f64,
    /// Largest quality drop for `monitor`.
    pub monitor_max_quality_drop_pts: f64,
    /// Changes smaller than this (percent) are within noise even when the interval excludes 0.
    pub noise_floor_pct: f64,
    /// An interval wider than this (percent) is too noisy to decide on.
    pub max_ci_width_pct: f64,
    /// Catalog category of the warnings that count (`fp8`).
    pub warning_category: String,
    /// Run-to-run drift assumed before the runs show it: one standard deviation of a run's
    /// value, in percent (a server restarted with the same settings is this much slower or
    /// faster). Intervals of speed changes include it; 0 turns it off (intervals then cover
    /// request-to-request spread only, as before).
    pub run_drift_pct: f64,
    /// How much the assumed drift weighs against the runs' own spread, in degrees of freedom
    /// (the runs' spread takes over as runs accumulate: each run beyond the first of an arm
    /// adds one).
    pub run_drift_prior_df: f64,
    /// `ab --until-decided`: one-sided confidence (percent) that a change is within a limit
    /// before a milder verdict is settled (apply rather than monitor, monitor rather than keep).
    pub settle_within_confidence_pct: f64,
    /// `ab --until-decided`: one-sided confidence (percent) that a change is beyond a limit
    /// before a more severe verdict is settled.
    pub settle_beyond_confidence_pct: f64,
    /// `ab --until-decided`, when the run cap or budget ends the runs with a speed criterion
    /// still open: one-sided confidence (percent) that the change is within a limit for the
    /// milder verdict; otherwise the more severe one.
    pub cap_within_confidence_pct: f64,
    /// Set for the last comparison of an adaptive design that stopped unsettled (not a policy
    /// key): open speed criteria then take the cautious verdict of `cap_within_confidence_pct`.
    #[serde(skip)]
    pub final_look: bool,
    /// The capacity criterion (off unless set; docs/decision.md#capacity): `apply` when the
    /// knee of a load sweep (`--sweep`, the highest load within the latency targets) rises by
    /// at least this many percent, `keep` when it falls by as much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_gain_pct: Option<f64>,
    /// With the capacity criterion met: a speed regression up to this many percent is
    /// tolerated (light-load latency paid for capacity) [default: monitor_max_regression_pct].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_tolerated_regression_pct: Option<f64>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_warnings_resolved: 3,
            apply_max_regression_pct: 15.0,
            monitor_max_regression_pct: 25.0,
            regression_metrics: vec!["ttft_ms.p50".into(), "output_tok_per_s".into()],
            max_quality_drop_pts: 0.0,
            monitor_max_quality_drop_pts: 2.0,
            noise_floor_pct: 3.0,
            max_ci_width_pct: 50.0,
            warning_category: "fp8".into(),
            run_drift_pct: 5.0,
            run_drift_prior_df: 10.0,
            settle_within_confidence_pct: 95.0,
            settle_beyond_confidence_pct: 90.0,
            cap_within_confidence_pct: 65.0,
            final_look: false,
            capacity_gain_pct: None,
            capacity_tolerated_regression_pct: None,
        }
    }
}

impl Policy {
    /// Reads a policy from TOML text with the keys at top level; errors name the file.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let p: Policy = toml::from_str(text).map_err(|e| {
            let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
            anyhow::anyhow!("{origin}: {msg}")
        })?;
        p.validate(origin)?;
        Ok(p)
    }

    /// Reads `--policy FILE`.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read policy {}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// From an experiment's `[decision]` table (its `baseline` and `reference` keys are not
    /// policy keys).
    pub fn from_table(t: &toml::Table, origin: &str) -> anyhow::Result<Self> {
        let mut t = t.clone();
        t.remove("baseline");
        t.remove("reference");
        Self::parse(&toml::to_string(&t)?, &format!("{origin} [decision]"))
    }

    fn validate(&self, origin: &str) -> anyhow::Result<()> {
        if self.apply_max_regression_pct > self.monitor_max_regression_pct {
            anyhow::bail!(
                "{origin}: apply_max_regression_pct must not exceed monitor_max_regression_pct"
            );
        }
        if self.max_quality_drop_pts > self.monitor_max_quality_drop_pts {
            anyhow::bail!(
                "{origin}: max_quality_drop_pts must not exceed monitor_max_quality_drop_pts"
            );
        }
        for (k, v) in [
            (
                "settle_within_confidence_pct",
                self.settle_within_confidence_pct,
            ),
            (
                "settle_beyond_confidence_pct",
                self.settle_beyond_confidence_pct,
            ),
            ("cap_within_confidence_pct", self.cap_within_confidence_pct),
        ] {
            if !(50.0..100.0).contains(&v) {
                anyhow::bail!("{origin}: {k} must be at least 50 and below 100 (got {v})");
            }
        }
        for (k, v) in [
            ("capacity_gain_pct", self.capacity_gain_pct),
            (
                "capacity_tolerated_regression_pct",
                self.capacity_tolerated_regression_pct,
            ),
        ] {
            if let Some(v) = v {
                if !(v > 0.0 && v.is_finite()) {
                    anyhow::bail!("{origin}: {k} must be a positive number (got {v})");
                }
            }
        }
        if !(self.run_drift_pct >= 0.0 && self.run_drift_pct < 100.0) {
            anyhow::bail!(
                "{origin}: run_drift_pct must be at least 0 and below 100 (got {})",
                self.run_drift_pct
            );
        }
        if !(self.run_drift_prior_df > 0.0 && self.run_drift_prior_df.is_finite()) {
            anyhow::bail!(
                "{origin}: run_drift_prior_df must be a positive number (got {})",
                self.run_drift_prior_df
            );
        }
        for m in &self.regression_metrics {
            if !super::delta_keys().contains(m) {
                anyhow::bail!("{origin}: regression_metrics: unknown metric {m:?} (e.g. \"ttft_ms.p50\", \"output_tok_per_s\")");
            }
        }
        Ok(())
    }
}

/// A verdict, ordered by severity: the overall verdict is the most severe criterion's
/// (`keep` over `inconclusive` over `monitor` over `apply`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Make the change.
    Apply,
    /// Make the change and watch it.
    Monitor,
    /// The evidence cannot decide (also what a file without a verdict reads as).
    #[default]
    Inconclusive,
    /// Keep the baseline.
    Keep,
}

impl Verdict {
    /// The lowercase name used in JSON and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Apply => "apply",
            Verdict::Monitor => "monitor",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Keep => "keep",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One criterion's verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Recommendation {
    /// `arms`, `warnings`, `config`, a delta key, `quality`, `quality.<suite>`, or `overall`.
    pub criterion: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, in words a person can check.
    pub reason: String,
    /// The numbers.
    pub evidence: Value,
    /// Whether more runs could still change this verdict (`false`) or not (`true`): for a speed
    /// criterion, whether its interval settles the verdict (docs/decision.md, "Adaptive runs").
    #[serde(default)]
    pub settled: bool,
    /// When not settled: what is open and what would settle it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<String>,
}

fn rec(criterion: &str, verdict: Verdict, reason: String, evidence: Value) -> Recommendation {
    Recommendation {
        criterion: criterion.into(),
        verdict,
        reason,
        evidence,
        settled: true,
        open: None,
    }
}

fn pct(x: f64) -> String {
    format!("{x:+.1} %")
}

/// A metric key as people say it: "TTFT p50" for `ttft_ms.p50`, "output throughput".
pub(crate) fn label(key: &str) -> String {
    match key {
        "output_tok_per_s" => "output throughput".into(),
        "requests_per_s" => "request throughput".into(),
        k => match k.split_once('.') {
            Some((m, p)) => format!(
                "{} {p}",
                m.trim_end_matches("_ms").replace('_', " ").to_uppercase()
            ),
            None => k.into(),
        },
    }
}

fn failure_reason(a: &ArmRuns) -> String {
    let Some(r) = a.first_failure() else {
        return format!("arm {:?} has no result", a.name);
    };
    let (kind, msg) = r
        .failure
        .as_ref()
        .map(|f| (f.kind.to_string(), f.message.clone()))
        .unwrap_or_else(|| (r.outcome.to_string(), String::new()));
    let mut s = format!("arm {:?} did not run: {kind}", a.name);
    if !msg.is_empty() {
        s += &format!(" ({msg})");
    }
    if kind == "unsupported_argument" && msg.contains("--calculate-kv-scales") {
        s += ". This server version no longer accepts --calculate-kv-scales (deprecated in vLLM PR #37201, removed in PR #49389); the supported path to calibrated FP8 scales is a checkpoint carrying them (llm-compressor kv_cache_scheme)";
    } else if kind == "unsupported_setting" {
        s += ". The server accepts the option but not with this model or checkpoint (e.g. vLLM refuses fp8_e5m2 with an FP8 checkpoint)";
    } else if kind == "unsupported_hardware" {
        s += ". The setting is not available on this hardware";
    }
    s
}

/// A regression metric's criterion: the verdict from the point estimate (a change within noise
/// counts as 0), and whether its interval settles that verdict.
fn speed_criterion(key: &str, d: Option<&Delta>, policy: &Policy) -> Recommendation {
    let Some(d) = d else {
        return rec(
            key,
            Verdict::Inconclusive,
            format!("{} was not measured on both arms", label(key)),
            json!(null),
        );
    };
    let ev = json!(d);
    let (Some(ch), Some(lo), Some(hi)) = (d.change_pct, d.ci_low_pct, d.ci_high_pct) else {
        let mut r = rec(
            key,
            Verdict::Inconclusive,
            format!(
                "{}: no confidence interval (per-request journals missing)",
                label(key)
            ),
            ev,
        );
        // From two runs per arm on, the runs themselves give the interval.
        if policy.run_drift_pct > 0.0 && d.runs.is_some_and(|(b, c)| b < 2 || c < 2) {
            r.settled = false;
            r.open = Some("a second run per arm gives an interval from the runs".into());
        }
        return r;
    };
    let ci = format!("95 % CI {} … {}", pct(lo), pct(hi));
    // Width on the log scale, in percent of the middle: a +100 % change known to ±10 % is
    // not "64 points wide" noise.
    let width = 100.0 * ((1.0 + hi / 100.0).max(1e-9).ln() - (1.0 + lo / 100.0).max(1e-9).ln());
    // A wide interval is "too noisy" only where it keeps the verdict open: one lying wholly
    // beyond a limit (or wholly within the apply limit) decides however wide it is.
    let (reg_lo, reg_hi) = if d.better == Better::Lower {
        (lo, hi)
    } else {
        (-hi, -lo)
    };
    let straddles = |line: f64| reg_lo <= line && reg_hi > line;
    let open_band =
        straddles(policy.apply_max_regression_pct) || straddles(policy.monitor_max_regression_pct);
    if width > policy.max_ci_width_pct && open_band {
        let mut r = rec(key, Verdict::Inconclusive, format!("{} {} ({ci}): too noisy to decide (interval wider than {} % of its middle); run more requests or more runs (--until-decided)", label(key), pct(ch), policy.max_ci_width_pct), ev);
        r.settled = false;
        r.open = Some(format!(
            "the interval is {width:.0} % of its middle wide; more runs per arm narrow it"
        ));
        return r;
    }
    let regression = d.regression_pct().unwrap_or(0.0);
    let direction = if d.better == Better::Lower {
        "higher is worse"
    } else {
        "lower is worse"
    };
    let (apply_max, monitor_max) = (
        policy.apply_max_regression_pct,
        policy.monitor_max_regression_pct,
    );
    let (verdict, why) = if regression == 0.0 {
        (
            Verdict::Apply,
            if d.significant == Some(true) {
                "an improvement".to_owned()
            } else {
                format!(
                    "within noise (interval holds 0 or |change| < {} %)",
                    policy.noise_floor_pct
                )
            },
        )
    } else if regression <= apply_max {
        (
            Verdict::Apply,
            format!("a regression within the {apply_max} % apply limit"),
        )
    } else if regression <= monitor_max {
        (
            Verdict::Monitor,
            format!("a regression between {apply_max} % and {monitor_max} %: monitor"),
        )
    } else {
        (
            Verdict::Keep,
            format!("a regression beyond the {monitor_max} % limit"),
        )
    };
    let value = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into());
    let caveat = match d.method {
        Method::BootstrapRequests => " (one run per arm: the interval covers request-to-request spread, not run-to-run drift; --until-decided or --repeat 3 gives a stricter test)",
        Method::Runs if d.runs.is_some_and(|(b, c)| b < 2 || c < 2) => " (one run on an arm: the interval assumes the policy's run-to-run drift until the runs show their own)",
        _ => "",
    };
    let mut r = rec(
        key,
        verdict,
        format!(
            "{} {} → {} ({}, {ci}; {direction}): {why}{caveat}",
            label(key),
            value(d.baseline),
            value(d.candidate),
            pct(ch)
        ),
        ev,
    );
    (r.settled, r.open) = settle_speed(d, verdict, policy);
    if policy.final_look && !r.settled {
        if let Some(lc) = d.log_change() {
            let conf = policy.cap_within_confidence_pct / 100.0;
            let reg_hi = if d.better == Better::Lower {
                lc.bound_pct(conf, true)
            } else {
                -lc.bound_pct(conf, false)
            };
            let cautious = if reg_hi <= apply_max {
                Verdict::Apply
            } else if reg_hi <= monitor_max {
                Verdict::Monitor
            } else {
                Verdict::Keep
            };
            if cautious != verdict {
                r.reason += &format!(
                    "; not settled within the run cap, so the cautious side counts: the regression's {:.0} % upper bound is {:.1} %, which gives {cautious}",
                    policy.cap_within_confidence_pct, reg_hi
                );
                r.verdict = cautious;
            }
        }
    }
    r
}

/// Whether a speed criterion's verdict is settled: the regression is within every limit above
/// the verdict with `settle_within_confidence_pct` one-sided confidence, and beyond every limit
/// below it with `settle_beyond_confidence_pct` (docs/decision.md, "Adaptive runs"). Without the
/// log-scale standard error (old comparisons, `run_drift_pct = 0`), the 95 % interval stands for
/// both bounds. When open, says which limit the interval still straddles.
fn settle_speed(d: &Delta, verdict: Verdict, policy: &Policy) -> (bool, Option<String>) {
    let within = policy.settle_within_confidence_pct / 100.0;
    let beyond = policy.settle_beyond_confidence_pct / 100.0;
    // Bounds of the regression (positive = worse), upper at `within`, lower at `beyond`.
    let (reg_hi, reg_lo) = match (d.log_change(), d.ci_low_pct, d.ci_high_pct) {
        (Some(lc), _, _) if d.better == Better::Lower => {
            (lc.bound_pct(within, true), lc.bound_pct(beyond, false))
        }
        (Some(lc), _, _) => (-lc.bound_pct(within, false), -lc.bound_pct(beyond, true)),
        (None, Some(lo), Some(hi)) if d.better == Better::Lower => (hi, lo),
        (None, Some(lo), Some(hi)) => (-lo, -hi),
        _ => return (false, Some("no interval".into())),
    };
    let (apply_max, monitor_max) = (
        policy.apply_max_regression_pct,
        policy.monitor_max_regression_pct,
    );
    let (ok, line) = match verdict {
        Verdict::Apply => (reg_hi <= apply_max, apply_max),
        Verdict::Monitor if reg_lo <= apply_max => (false, apply_max),
        Verdict::Monitor => (reg_hi <= monitor_max, monitor_max),
        Verdict::Keep => (reg_lo > monitor_max, monitor_max),
        Verdict::Inconclusive => (false, apply_max),
    };
    if ok {
        return (true, None);
    }
    let mut open = format!(
        "the regression's bounds ({:.1} % at {:.0} % confidence below, {:.1} % at {:.0} % above) straddle the {line} % limit",
        reg_lo, policy.settle_beyond_confidence_pct, reg_hi, policy.settle_within_confidence_pct
    );
    match runs_to_settle(d, line, verdict, policy) {
        Some(n) => {
            open +=
                &format!("; about {n} runs per arm would settle it if the change stays where it is")
        }
        None => open += "; more runs per arm narrow them",
    }
    (false, Some(open))
}

/// Runs per arm after which the bound on the verdict's side of `line` would clear it, if the
/// change and the run-to-run spread stay as measured (the standard error shrinks as 1/√n).
fn runs_to_settle(d: &Delta, line: f64, verdict: Verdict, policy: &Policy) -> Option<u64> {
    let lc = d.log_change()?;
    let (nb, nc) = d.runs?;
    let n = nb.min(nc).max(1) as f64;
    // The regression on the log scale, and the limit.
    let reg = if d.better == Better::Lower {
        lc.estimate
    } else {
        -lc.estimate
    };
    let gap = (reg - (1.0 + line / 100.0).ln()).abs();
    // A severe verdict is settled by its lower bound, a milder one by its upper bound.
    let severe = match verdict {
        Verdict::Keep => true,
        Verdict::Monitor => line <= policy.apply_max_regression_pct,
        _ => false,
    };
    let conf = if severe {
        policy.settle_beyond_confidence_pct
    } else {
        policy.settle_within_confidence_pct
    } / 100.0;
    let z = crate::stats::t_quantile(f64::INFINITY, conf);
    if gap <= 0.0 || lc.se <= 0.0 {
        return None;
    }
    let needed = n * (z * lc.se / gap).powi(2);
    (needed.is_finite() && needed < 1e6).then(|| needed.ceil().max(n + 1.0) as u64)
}

/// Decides for one candidate against the baseline.
pub fn decide(
    base: &ArmRuns,
    cand: &ArmRuns,
    deltas: &BTreeMap<String, Delta>,
    warnings: &WarningDiff,
    quality: &BTreeMap<String, QualityDelta>,
    policy: &Policy,
) -> Decided {
    let mut recs = arms_criterion(base, cand);
    if !recs.is_empty() {
        let overall = rec(
            "overall",
            Verdict::Inconclusive,
            format!(
                "cannot compare {:?} with {:?}: {}",
                cand.name, base.name, recs[0].reason
            ),
            json!({}),
        );
        recs.push(overall);
        return Decided {
            verdict: Verdict::Inconclusive,
            recommendations: recs,
            settled: true,
        };
    }
    recs.push(warnings_criterion(base, cand, warnings, policy));
    recs.extend(config_criterion(cand));
    for key in &policy.regression_metrics {
        recs.push(speed_criterion(key, deltas.get(key), policy));
    }
    if let Some(gain) = policy.capacity_gain_pct {
        let c = capacity_criterion(base, cand, gain);
        if c.verdict == Verdict::Apply && c.evidence["dividend"] == json!(true) {
            tolerate_for_capacity(&mut recs, deltas, policy);
        }
        recs.push(c);
    }
    recs.extend(quality_criteria(quality, policy));
    let last = overall_criterion(base, cand, &recs);
    let (verdict, settled) = (last.verdict, last.settled);
    recs.push(last);
    Decided {
        verdict,
        recommendations: recs,
        settled,
    }
}

/// The knee of an arm's sweeps: the smallest of its runs' knees (`None` when a run had no
/// sweep or no knee), and how many runs had a sweep.
fn arm_knee(a: &ArmRuns) -> (Option<f64>, usize) {
    let caps: Vec<&crate::capacity::Capacity> = a
        .results
        .iter()
        .filter_map(|r| r.capacity.as_ref())
        .collect();
    let knee = caps
        .iter()
        .map(|c| c.knee)
        .try_fold(f64::INFINITY, |m, k| k.map(|k| m.min(k)))
        .filter(|m| m.is_finite());
    (knee, caps.len())
}

/// `capacity`: the knee's change (docs/decision.md#capacity). Settled: more runs of a sweep
/// move a knee by a level at most, and the criterion reads the smallest knee of the runs.
fn capacity_criterion(base: &ArmRuns, cand: &ArmRuns, gain: f64) -> Recommendation {
    let ((kb, nb), (kc, nc)) = (arm_knee(base), arm_knee(cand));
    let by = cand
        .results
        .iter()
        .chain(&base.results)
        .find_map(|r| r.capacity.as_ref().map(|c| c.by.as_str()))
        .unwrap_or("load");
    let ev = |change: Option<f64>, dividend: bool| {
        json!({"by": by, "baseline_knee": kb, "candidate_knee": kc, "change_pct": change,
               "gain_pct": gain, "dividend": dividend})
    };
    let (verdict, reason, evidence) = match (nb > 0 && nc > 0, kb, kc) {
        (false, _, _) => (
            Verdict::Inconclusive,
            "no load sweep on both arms (capacity_gain_pct needs [workload] sweep and slo)".to_owned(),
            ev(None, false),
        ),
        (true, None, None) => (
            Verdict::Inconclusive,
            format!("neither arm met the latency targets at the lowest {by} of the sweep: no knee to compare"),
            ev(None, false),
        ),
        (true, None, Some(c)) => (
            Verdict::Apply,
            format!("{:?} keeps the latency targets up to {by} {c}; {:?} not even at the lowest level", cand.name, base.name),
            ev(None, true),
        ),
        (true, Some(b), None) => (
            Verdict::Keep,
            format!("{:?} misses the latency targets even at the lowest {by}, where {:?} holds them up to {b}", cand.name, base.name),
            ev(None, false),
        ),
        (true, Some(b), Some(c)) => {
            let change = 100.0 * (c / b - 1.0);
            let line = format!("knee ({by} within the latency targets) {b} → {c} ({change:+.0} %)");
            if change >= gain {
                (Verdict::Apply, format!("{line}: at least +{gain:.0} %, a capacity dividend"), ev(Some(change), true))
            } else if change <= -gain {
                (Verdict::Keep, format!("{line}: a loss of at least {gain:.0} %"), ev(Some(change), false))
            } else {
                (Verdict::Apply, format!("{line}: within ±{gain:.0} %"), ev(Some(change), false))
            }
        }
    };
    rec("capacity", verdict, reason, evidence)
}

/// With a capacity dividend, speed criteria that said monitor or keep for a regression of at
/// most `capacity_tolerated_regression_pct` say apply, and say why.
fn tolerate_for_capacity(
    recs: &mut [Recommendation],
    deltas: &BTreeMap<String, Delta>,
    policy: &Policy,
) {
    let limit = policy
        .capacity_tolerated_regression_pct
        .unwrap_or(policy.monitor_max_regression_pct);
    for r in recs.iter_mut() {
        if !policy.regression_metrics.contains(&r.criterion)
            || !matches!(r.verdict, Verdict::Monitor | Verdict::Keep)
        {
            continue;
        }
        let Some(reg) = deltas.get(&r.criterion).and_then(Delta::regression_pct) else {
            continue;
        };
        if reg <= limit {
            r.verdict = Verdict::Apply;
            r.reason = format!(
                "{}; tolerated: the capacity criterion holds and the regression is within capacity_tolerated_regression_pct ({limit:.0} %)",
                r.reason
            );
        }
    }
}

/// `arms`: one inconclusive criterion per arm that did not run (empty when both ran).
fn arms_criterion(base: &ArmRuns, cand: &ArmRuns) -> Vec<Recommendation> {
    [base, cand]
        .into_iter()
        .filter(|a| !a.ok())
        .map(|a| {
            rec(
                "arms",
                Verdict::Inconclusive,
                failure_reason(a),
                json!({"arm": a.name, "outcome": a.first_failure().map(|r| r.outcome.clone())}),
            )
        })
        .collect()
}

/// `warnings`: apply when at least `min_warnings_resolved` warnings of the policy's category
/// are gone, else keep (saying when that cannot be met by construction); inconclusive when a
/// server log could not be read.
fn warnings_criterion(
    base: &ArmRuns,
    cand: &ArmRuns,
    warnings: &WarningDiff,
    policy: &Policy,
) -> Recommendation {
    // A log kvbench could not read says nothing about which warnings are gone.
    let unread: Vec<String> = [base, cand]
        .iter()
        .filter_map(|a| {
            let e = a.results.first()?.server.facts.log_error.as_deref()?;
            Some(format!("{:?}: {e}", a.name))
        })
        .collect();
    if !unread.is_empty() {
        return rec(
            "warnings",
            Verdict::Inconclusive,
            format!(
                "the server log could not be read, so resolved warnings cannot be told from unseen ones: {}",
                unread.join("; ")
            ),
            json!({"log_error": unread}),
        );
    }
    let ids = |v: &[super::WarningChange]| v.iter().map(|w| w.id.clone()).collect::<Vec<_>>();
    let resolved = warnings.counted_resolved;
    let total = warnings.counted_on_baseline;
    let cat = &policy.warning_category;
    let (b, c) = (&base.name, &cand.name);
    let counted_text = if total == 0 {
        format!("no {cat} warnings printed on {b:?}, so none to resolve on {c:?}")
    } else {
        format!("{resolved} of the {total} {cat} warnings printed on {b:?} are gone on {c:?}")
    };
    let mut reason = format!("{counted_text} (need >= {})", policy.min_warnings_resolved);
    let (counted, others): (Vec<_>, Vec<_>) = warnings
        .resolved
        .iter()
        .partition(|w| w.severity == "warning" && w.category.as_deref() == Some(cat.as_str()));
    if !counted.is_empty() {
        reason += &format!(
            "; resolved: {}",
            counted
                .iter()
                .map(|w| w.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !others.is_empty() {
        reason += &format!(
            "; also gone: {}",
            others
                .iter()
                .map(|w| w.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !warnings.persisting.is_empty() {
        reason += &format!("; persisting: {}", ids(&warnings.persisting).join(", "));
    }
    if !warnings.new.is_empty() {
        reason += &format!("; new: {}", ids(&warnings.new).join(", "));
    }
    let mut unattainable = None;
    if total < policy.min_warnings_resolved {
        unattainable = Some(format!(
            "cannot be met by construction: the baseline prints only {total} {cat} warnings"
        ));
    } else if let (Some(r), Some(ch)) = (warnings.resolvable, &warnings.change_under_test) {
        if r < policy.min_warnings_resolved {
            let stuck: Vec<String> = warnings
                .persisting
                .iter()
                .filter(|w| {
                    w.resolvable_by_change == Some(false) && w.category.as_deref() == Some(cat)
                })
                .map(|w| w.id.clone())
                .collect();
            unattainable = Some(format!(
                "cannot be met by construction: `{ch}` can resolve at most {r} of the {total} {cat} warnings{}; a checkpoint with calibrated k/v and q/prob scales (llm-compressor kv_cache_scheme) is what would resolve them all",
                if stuck.is_empty() { String::new() } else { format!(" ({} persists by design)", stuck.join(", ")) }
            ));
        }
    }
    if let Some(u) = &unattainable {
        reason += &format!(". The criterion {u}");
    }
    rec(
        "warnings",
        if resolved >= policy.min_warnings_resolved {
            Verdict::Apply
        } else {
            Verdict::Keep
        },
        reason,
        json!({
            "resolved": ids(&warnings.resolved), "persisting": ids(&warnings.persisting), "new": ids(&warnings.new),
            "counted_resolved": resolved, "counted_on_baseline": total, "resolvable_by_change": warnings.resolvable,
            "change_under_test": warnings.change_under_test, "attainable": unattainable.is_none(),
        }),
    )
}

/// `config`: inconclusive when the candidate did not run with the settings it asked for.
fn config_criterion(cand: &ArmRuns) -> Option<Recommendation> {
    let r = cand.results.first()?;
    let mism = r
        .server
        .facts
        .config_check
        .as_ref()
        .map(|c| c.mismatches.clone())
        .unwrap_or_default();
    if mism.is_empty() {
        return None;
    }
    let text = &mism;
    Some(rec(
        "config",
        Verdict::Inconclusive,
        format!(
            "{:?} did not run with what it asked for: {}",
            cand.name,
            text.join("; ")
        ),
        json!({"mismatches": mism}),
    ))
}

/// `quality.<suite>`: the drop in points outside noise against the policy's limits; `quality`
/// (monitor) when no suite was measured on both arms.
fn quality_criteria(
    quality: &BTreeMap<String, QualityDelta>,
    policy: &Policy,
) -> Vec<Recommendation> {
    let mut recs = Vec::new();
    if quality.is_empty() {
        recs.push(rec("quality", Verdict::Monitor,
            "quality was not measured on both arms (no quality suites): apply needs quality kept; run the arms with --quality (or a [quality] table)".into(),
            json!(null),
        ));
    }
    for (suite, q) in quality {
        let (Some(b), Some(c)) = (q.baseline_accuracy, q.candidate_accuracy) else {
            recs.push(rec(
                &format!("quality.{suite}"),
                Verdict::Inconclusive,
                format!("{suite}: accuracy missing on one arm"),
                json!(q),
            ));
            continue;
        };
        let change = 100.0 * (c - b);
        let (drop, noise) = match q.significant {
            Some(true) => ((-change).max(0.0), String::new()),
            Some(false) => (
                0.0,
                format!(
                    " (exact McNemar p = {:.2}: within noise)",
                    q.mcnemar_p.unwrap_or(1.0)
                ),
            ),
            None => (
                (-change).max(0.0),
                " (no paired test: journals missing)".to_owned(),
            ),
        };
        let verdict = if drop <= policy.max_quality_drop_pts {
            Verdict::Apply
        } else if drop <= policy.monitor_max_quality_drop_pts {
            Verdict::Monitor
        } else {
            Verdict::Keep
        };
        let flips = match (q.lost, q.gained) {
            (Some(l), Some(g)) => format!("; {l} items lost, {g} gained"),
            _ => String::new(),
        };
        recs.push(rec(
            &format!("quality.{suite}"),
            verdict,
            format!(
                "{suite}: {:.1} % → {:.1} % ({change:+.1} points{flips}){noise}",
                b * 100.0,
                c * 100.0
            ),
            json!(q),
        ));
    }
    recs
}

/// `overall`: the most severe criterion's verdict, settled when a settled criterion says keep
/// or every criterion is settled.
fn overall_criterion(base: &ArmRuns, cand: &ArmRuns, recs: &[Recommendation]) -> Recommendation {
    let overall = recs
        .iter()
        .map(|r| r.verdict)
        .max()
        .unwrap_or(Verdict::Apply);
    // The verdict cannot change with more runs when a settled criterion says keep (keep
    // outranks everything), or when every criterion is settled.
    let settled = recs.iter().any(|r| r.settled && r.verdict == Verdict::Keep)
        || recs.iter().all(|r| r.settled);
    let verdicts: Vec<Verdict> = recs.iter().map(|r| r.verdict).collect();
    let deciding: Vec<String> = recs
        .iter()
        .filter(|r| r.verdict == overall)
        .map(|r| r.criterion.clone())
        .collect();
    let summary = match overall {
        Verdict::Apply => format!("apply {:?}: every criterion of the policy holds", cand.name),
        Verdict::Monitor => format!(
            "apply {:?} with monitoring: {} allow(s) monitor, not apply",
            cand.name,
            deciding.join(", ")
        ),
        Verdict::Keep => format!(
            "keep {:?}, not {:?}: {} rule(s) it out",
            base.name,
            cand.name,
            deciding.join(", ")
        ),
        Verdict::Inconclusive => format!(
            "inconclusive for {:?}: {} cannot be decided",
            cand.name,
            deciding.join(", ")
        ),
    };
    let open: Vec<String> = recs
        .iter()
        .filter(|r| !r.settled)
        .map(|r| r.criterion.clone())
        .collect();
    let mut last = rec(
        "overall",
        overall,
        summary,
        json!({"baseline": base.name, "candidate": cand.name, "criteria": verdicts}),
    );
    last.settled = settled;
    if !settled {
        last.open = Some(open.join(", "));
    }
    last
}

/// One candidate's decision against the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decided {
    /// The overall verdict.
    pub verdict: Verdict,
    /// One per criterion, then `overall`.
    pub recommendations: Vec<Recommendation>,
    /// Whether more runs could change the verdict (`false`) or not.
    pub settled: bool,
}

/// Over all candidates `(arm, decision)`: the decision, the recommended arm and the
/// recommendations (the chosen candidate's criteria, then an overall line naming every
/// candidate's verdict).
pub fn overall(candidates: &[(String, Decided)]) -> (Verdict, Option<String>, Vec<Recommendation>) {
    let Some((arm, best)) = candidates.iter().min_by_key(|(_, d)| d.verdict) else {
        return (Verdict::Inconclusive, None, Vec::new());
    };
    let mut recs = best.recommendations.clone();
    if candidates.len() > 1 {
        let each: Vec<String> = candidates
            .iter()
            .map(|(a, d)| format!("{a}: {}", d.verdict))
            .collect();
        if let Some(last) = recs.last_mut() {
            last.reason = format!("{} (candidates: {})", last.reason, each.join(", "));
        }
    }
    let recommended =
        matches!(best.verdict, Verdict::Apply | Verdict::Monitor).then(|| arm.clone());
    (best.verdict, recommended, recs)
}
