//! The decision policy (docs/decision.md): the user's rule by default, every threshold a key.
//!
//! Each criterion gives its own verdict with a reason and the numbers behind it; the overall
//! verdict is `keep` when any criterion says keep, else `inconclusive` when any cannot be
//! decided (an arm failed, no interval, too noisy, a setting did not take), else the strictest
//! of `apply` and `monitor`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{ArmRuns, Delta, QualityDelta, WarningDiff};

/// Thresholds of the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        for m in &self.regression_metrics {
            if !super::delta_keys().contains(m) {
                anyhow::bail!("{origin}: regression_metrics: unknown metric {m:?} (e.g. \"ttft_ms.p50\", \"output_tok_per_s\")");
            }
        }
        Ok(())
    }
}

/// One criterion's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// `arms`, `warnings`, `config`, a delta key, `quality`, `quality.<suite>`, or `overall`.
    pub criterion: String,
    /// `apply`, `monitor`, `keep` or `inconclusive`.
    pub verdict: String,
    /// Why, in words a person can check.
    pub reason: String,
    /// The numbers.
    pub evidence: Value,
}

fn rec(criterion: &str, verdict: &str, reason: String, evidence: Value) -> Recommendation {
    Recommendation {
        criterion: criterion.into(),
        verdict: verdict.into(),
        reason,
        evidence,
    }
}

fn pct(x: f64) -> String {
    format!("{x:+.1} %")
}

fn label(key: &str) -> String {
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
        .map(|f| (f.kind.clone(), f.message.clone()))
        .unwrap_or_else(|| (r.outcome.clone(), String::new()));
    let mut s = format!("arm {:?} did not run: {kind}", a.name);
    if !msg.is_empty() {
        s += &format!(" ({msg})");
    }
    if kind == "unsupported_argument" && msg.contains("--calculate-kv-scales") {
        s += ". This server version no longer accepts --calculate-kv-scales (deprecated in vLLM PR #37201, removed in PR #49389); the supported path to calibrated FP8 scales is a checkpoint carrying them (llm-compressor kv_cache_scheme)";
    } else if kind == "unsupported_hardware" {
        s += ". The setting is not available on this hardware";
    }
    s
}

/// Decides for one candidate against the baseline.
pub fn decide(
    base: &ArmRuns,
    cand: &ArmRuns,
    deltas: &BTreeMap<String, Delta>,
    warnings: &WarningDiff,
    quality: &BTreeMap<String, QualityDelta>,
    policy: &Policy,
) -> (String, Vec<Recommendation>) {
    let mut recs = Vec::new();
    for a in [base, cand] {
        if !a.ok() {
            recs.push(rec(
                "arms",
                "inconclusive",
                failure_reason(a),
                json!({"arm": a.name, "outcome": a.first_failure().map(|r| r.outcome.clone())}),
            ));
        }
    }
    if !recs.is_empty() {
        let overall = rec(
            "overall",
            "inconclusive",
            format!(
                "cannot compare {:?} with {:?}: {}",
                cand.name, base.name, recs[0].reason
            ),
            json!({}),
        );
        recs.push(overall);
        return ("inconclusive".into(), recs);
    }

    // Warnings.
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
    recs.push(rec(
        "warnings",
        if resolved >= policy.min_warnings_resolved { "apply" } else { "keep" },
        reason,
        json!({
            "resolved": ids(&warnings.resolved), "persisting": ids(&warnings.persisting), "new": ids(&warnings.new),
            "counted_resolved": resolved, "counted_on_baseline": total, "resolvable_by_change": warnings.resolvable,
            "change_under_test": warnings.change_under_test, "attainable": unattainable.is_none(),
        }),
    ));

    // Settings that did not take.
    if let Some(r) = cand.results.first() {
        let mism = r
            .server
            .facts
            .get("config_check")
            .and_then(|c| c.get("mismatches"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !mism.is_empty() {
            let text: Vec<String> = mism
                .iter()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect();
            recs.push(rec(
                "config",
                "inconclusive",
                format!(
                    "{:?} did not run with what it asked for: {}",
                    cand.name,
                    text.join("; ")
                ),
                json!({"mismatches": mism}),
            ));
        }
    }

    // Speed.
    for key in &policy.regression_metrics {
        let Some(d) = deltas.get(key) else {
            recs.push(rec(
                key,
                "inconclusive",
                format!("{} was not measured on both arms", label(key)),
                json!(null),
            ));
            continue;
        };
        let ev = json!(d);
        let (Some(ch), Some(lo), Some(hi)) = (d.change_pct, d.ci_low_pct, d.ci_high_pct) else {
            recs.push(rec(
                key,
                "inconclusive",
                format!(
                    "{}: no confidence interval (per-request journals missing)",
                    label(key)
                ),
                ev,
            ));
            continue;
        };
        let ci = format!("95 % CI {} … {}", pct(lo), pct(hi));
        if hi - lo > policy.max_ci_width_pct {
            recs.push(rec(key, "inconclusive", format!("{} {} ({ci}): too noisy to decide (interval wider than {} points); run more requests or --repeat", label(key), pct(ch), policy.max_ci_width_pct), ev));
            continue;
        }
        let regression = d.regression_pct().unwrap_or(0.0);
        let direction = if d.better == "lower" {
            "higher is worse"
        } else {
            "lower is worse"
        };
        let (verdict, why) = if regression == 0.0 {
            (
                "apply",
                if d.significant == Some(true) {
                    "an improvement".to_owned()
                } else {
                    format!(
                        "within noise (interval holds 0 or |change| < {} %)",
                        policy.noise_floor_pct
                    )
                },
            )
        } else if regression <= policy.apply_max_regression_pct {
            (
                "apply",
                format!(
                    "a regression within the {} % apply limit",
                    policy.apply_max_regression_pct
                ),
            )
        } else if regression <= policy.monitor_max_regression_pct {
            (
                "monitor",
                format!(
                    "a regression between {} % and {} %: monitor",
                    policy.apply_max_regression_pct, policy.monitor_max_regression_pct
                ),
            )
        } else {
            (
                "keep",
                format!(
                    "a regression beyond the {} % limit",
                    policy.monitor_max_regression_pct
                ),
            )
        };
        let value = |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into());
        let caveat = if d.method == "bootstrap_requests" {
            " (one run per arm: the interval covers request-to-request spread, not run-to-run drift; --repeat 3 gives a stricter test)"
        } else {
            ""
        };
        recs.push(rec(
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
        ));
    }

    // Quality.
    if quality.is_empty() {
        recs.push(rec(
            "quality",
            "monitor",
            "quality was not measured on both arms (no quality suites): apply needs quality kept; run the arms with --quality (or a [quality] table)".into(),
            json!(null),
        ));
    }
    for (suite, q) in quality {
        let (Some(b), Some(c)) = (q.baseline_accuracy, q.candidate_accuracy) else {
            recs.push(rec(
                &format!("quality.{suite}"),
                "inconclusive",
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
            "apply"
        } else if drop <= policy.monitor_max_quality_drop_pts {
            "monitor"
        } else {
            "keep"
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

    let verdicts: Vec<&str> = recs.iter().map(|r| r.verdict.as_str()).collect();
    let overall = if verdicts.contains(&"keep") {
        "keep"
    } else if verdicts.contains(&"inconclusive") {
        "inconclusive"
    } else if verdicts.contains(&"monitor") {
        "monitor"
    } else {
        "apply"
    };
    let deciding: Vec<String> = recs
        .iter()
        .filter(|r| r.verdict == overall)
        .map(|r| r.criterion.clone())
        .collect();
    let summary = match overall {
        "apply" => format!("apply {:?}: every criterion of the policy holds", cand.name),
        "monitor" => format!(
            "apply {:?} with monitoring: {} allow(s) monitor, not apply",
            cand.name,
            deciding.join(", ")
        ),
        "keep" => format!(
            "keep {:?}, not {:?}: {} rule(s) it out",
            base.name,
            cand.name,
            deciding.join(", ")
        ),
        _ => format!(
            "inconclusive for {:?}: {} cannot be decided",
            cand.name,
            deciding.join(", ")
        ),
    };
    recs.push(rec(
        "overall",
        overall,
        summary,
        json!({"baseline": base.name, "candidate": cand.name, "criteria": verdicts}),
    ));
    (overall.into(), recs)
}

/// Over all candidates: the decision, the recommended arm and the recommendations (the chosen
/// candidate's criteria, then an overall line).
pub fn overall(candidates: &[Value]) -> (String, Option<String>, Vec<Value>) {
    let rank = |v: &str| match v {
        "apply" => 0,
        "monitor" => 1,
        "inconclusive" => 2,
        _ => 3,
    };
    let Some(best) = candidates
        .iter()
        .min_by_key(|c| rank(c["decision"].as_str().unwrap_or("keep")))
    else {
        return ("inconclusive".into(), None, Vec::new());
    };
    let decision = best["decision"]
        .as_str()
        .unwrap_or("inconclusive")
        .to_owned();
    let arm = best["arm"].as_str().map(str::to_owned);
    let mut recs: Vec<Value> = best["recommendations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if candidates.len() > 1 {
        let each: Vec<String> = candidates
            .iter()
            .map(|c| {
                format!(
                    "{}: {}",
                    c["arm"].as_str().unwrap_or("?"),
                    c["decision"].as_str().unwrap_or("?")
                )
            })
            .collect();
        if let Some(last) = recs.last_mut() {
            let r = last["reason"].as_str().unwrap_or("").to_owned();
            last["reason"] = json!(format!("{r} (candidates: {})", each.join(", ")));
        }
    }
    let recommended = matches!(decision.as_str(), "apply" | "monitor")
        .then_some(arm)
        .flatten();
    (decision, recommended, recs)
}
