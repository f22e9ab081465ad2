//! Comparing arms: deltas with confidence intervals, warnings resolved / persisting / new, server
//! facts side by side, quality with paired tests, and the decision (see `decision`). The output
//! is the comparison JSON (docs/decision.md) that reports render and `jq .recommendations` reads.

pub mod decision;
pub mod model;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::logscan::Catalog;
use crate::metrics::{samples, Samples};
use crate::quality::{ItemRecord, SuiteSummary};
use crate::result::{KvSettings, Outcome, RunResult};
use crate::stats::{
    bootstrap_change_pct, mean_of_refs, per_run_log_var_from_ci, percentile_of_refs, LogChange,
    Summary,
};
pub use decision::{Policy, Verdict};
pub use model::{
    AgreementSummary, ArmCapacity, ArmGoodput, ArmSummary, ArmThroughput, Candidate, Comparison,
    DesignKind, Distributions, Effort, Execution, Knee, ReferenceArm, ReferenceSection,
    RequestTotals, Round, ServerSummary, Stopped, ValueCi,
};

/// Version of the comparison schema.
pub const COMPARISON_SCHEMA_VERSION: u32 = 1;

/// Latency metrics compared, and the percentiles compared for each.
pub const LATENCY_METRICS: &[&str] = &["ttft_ms", "ttft_answer_ms", "itl_ms", "tpot_ms", "e2e_ms"];
const PERCENTILES: &[(&str, f64)] = &[("p50", 50.0), ("p90", 90.0), ("p99", 99.0)];

/// One arm's runs (several with `--repeat`), loaded with their journals.
#[derive(Debug, Clone)]
pub struct ArmRuns {
    /// Arm name.
    pub name: String,
    /// Result files.
    pub paths: Vec<PathBuf>,
    /// Results, one per repeat.
    pub results: Vec<RunResult>,
    /// Per-request samples per repeat (`None` when the journal is missing).
    pub samples: Vec<Option<Samples>>,
    /// Quality item records (all repeats), when journals exist.
    pub quality_items: Option<Vec<ItemRecord>>,
}

impl ArmRuns {
    /// Whether every run of the arm measured something (`outcome` ok).
    pub fn ok(&self) -> bool {
        !self.results.is_empty() && self.results.iter().all(|r| r.outcome == Outcome::Ok)
    }

    fn first_failure(&self) -> Option<&RunResult> {
        self.results.iter().find(|r| r.outcome != Outcome::Ok)
    }

    /// All per-request samples pooled over repeats.
    fn pooled(&self) -> Option<Samples> {
        let mut out = Samples::default();
        for s in &self.samples {
            let s = s.as_ref()?;
            out.ttft_ms.extend(&s.ttft_ms);
            out.ttft_answer_ms.extend(&s.ttft_answer_ms);
            out.itl_ms.extend(&s.itl_ms);
            out.tpot_ms.extend(&s.tpot_ms);
            out.e2e_ms.extend(&s.e2e_ms);
            out.tokens_e2e.extend(&s.tokens_e2e);
        }
        Some(out)
    }
}

/// Resolves a path recorded in a result: as written, else relative to the result's folder, else
/// the file name in the result's folder.
/// Replaces every result's warnings by a new scan of its server log (`server.facts.log`, found as
/// recorded, relative to the result, or by file name beside it) with `catalog`.
pub fn rescan_logs(arms: &mut [ArmRuns], catalog: &Catalog) -> anyhow::Result<()> {
    for arm in arms.iter_mut() {
        for (r, path) in arm.results.iter_mut().zip(&arm.paths) {
            let Some(log) = r.server.facts.log.as_deref().and_then(|l| resolve(l, path)) else {
                bail!(
                    "{}: no server log to rescan (server.facts.log is missing or the file is gone)",
                    path.display()
                );
            };
            let text = crate::logscan::read_log(&log)
                .with_context(|| format!("cannot read {}", log.display()))?;
            r.warnings = crate::logscan::scan(catalog, &text).warnings;
        }
    }
    Ok(())
}

fn resolve(recorded: &str, result_path: &Path) -> Option<PathBuf> {
    let p = PathBuf::from(recorded);
    let dir = result_path.parent().unwrap_or(Path::new("."));
    [p.clone(), dir.join(&p), dir.join(p.file_name()?)]
        .into_iter()
        .find(|c| c.is_file())
}

/// Loads result files and groups them by arm (the `arm` field, else the file stem).
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<ArmRuns>> {
    let mut arms: Vec<ArmRuns> = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let r: RunResult = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a kvbench result: {e}", path.display()))?;
        let name = r.arm.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "arm".into())
        });
        let samples = r
            .journal
            .as_deref()
            .and_then(|j| resolve(j, path))
            .and_then(|j| crate::record::read_records(&j))
            .map(|recs| samples(&recs));
        let items = r
            .quality
            .as_ref()
            .and_then(|q| resolve(&q.journal, path))
            .and_then(|j| crate::quality::read_journal(&j).ok());
        match arms.iter_mut().find(|a| a.name == name) {
            Some(a) => {
                a.paths.push(path.clone());
                a.results.push(r);
                a.samples.push(samples);
                // One record per item: repeats of the same items (a fixed design runs the
                // suites every time) would count each flip once per run and overstate the
                // paired test; adaptive rounds after the first run no suites at all.
                a.quality_items = match (a.quality_items.take(), items) {
                    (Some(mut x), Some(y)) => {
                        let seen: std::collections::HashSet<(String, String)> =
                            x.iter().map(|r| (r.suite.clone(), r.id.clone())).collect();
                        x.extend(
                            y.into_iter()
                                .filter(|r| !seen.contains(&(r.suite.clone(), r.id.clone()))),
                        );
                        Some(x)
                    }
                    (x, y) => x.or(y),
                };
            }
            None => arms.push(ArmRuns {
                name,
                paths: vec![path.clone()],
                results: vec![r],
                samples: vec![samples],
                quality_items: items,
            }),
        }
    }
    Ok(arms)
}

/// Which direction of a metric is better.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// Latencies.
    #[default]
    Lower,
    /// Throughputs.
    Higher,
}

/// How a delta's interval was made (docs/decision.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Per-run values with the policy's run-to-run drift.
    Runs,
    /// A bootstrap over requests (one run per arm, `run_drift_pct = 0`).
    BootstrapRequests,
    /// Welch over repeats (`run_drift_pct = 0`).
    Repeats,
    /// No interval.
    #[default]
    None,
}

/// A metric's change from baseline to candidate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Delta {
    /// Baseline value.
    pub baseline: Option<f64>,
    /// Candidate value.
    pub candidate: Option<f64>,
    /// 100 × (candidate / baseline − 1).
    pub change_pct: Option<f64>,
    /// 95 % interval of `change_pct`, low end.
    pub ci_low_pct: Option<f64>,
    /// 95 % interval of `change_pct`, high end.
    pub ci_high_pct: Option<f64>,
    /// The interval excludes 0 and the change is at least the noise floor; `null` without an
    /// interval.
    pub significant: Option<bool>,
    /// Which direction is better.
    pub better: Better,
    /// How the interval was made.
    pub method: Method,
    /// Method `runs`: ln(candidate / baseline), its standard error and the degrees of freedom of
    /// its t quantiles, from which any one-sided bound follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_change: Option<f64>,
    /// Standard error of `log_change`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub se_log: Option<f64>,
    /// Degrees of freedom of `se_log`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub df: Option<f64>,
    /// Runs behind each side: (baseline, candidate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<(usize, usize)>,
}

impl Delta {
    /// The regression in percent when the change is significant and in the worse direction,
    /// else 0; `None` when unknown (no interval).
    pub fn regression_pct(&self) -> Option<f64> {
        let c = self.change_pct?;
        match self.significant? {
            false => Some(0.0),
            true if self.better == Better::Lower => Some(c.max(0.0)),
            true => Some((-c).max(0.0)),
        }
    }

    /// The log-scale change with its standard error (method `runs`).
    pub fn log_change(&self) -> Option<LogChange> {
        Some(LogChange {
            estimate: self.log_change?,
            se: self.se_log?,
            df: self.df?,
        })
    }
}

fn metric_value(r: &RunResult, key: &str) -> Option<f64> {
    match key {
        "output_tok_per_s" => r.throughput.output_tok_per_s,
        "requests_per_s" => r.throughput.requests_per_s,
        "total_tok_per_s" => r.throughput.total_tok_per_s,
        _ => {
            let (m, p) = key.split_once('.')?;
            let v = serde_json::to_value(&r.metrics).ok()?;
            v.get(m)?.get(p)?.as_f64()
        }
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Throughput resampled through the per-request rate: the observed value scaled by how the
/// resample's Σ tokens / Σ e2e (or n / Σ e2e) compares with the full sample's.
fn rate_stat(v: &[&(f64, f64)], requests: bool) -> f64 {
    let e2e: f64 = v.iter().map(|x| x.1).sum();
    let num: f64 = if requests {
        v.len() as f64
    } else {
        v.iter().map(|x| x.0).sum()
    };
    num / e2e.max(1e-12)
}

fn seed_of(key: &str) -> u64 {
    crate::quality::fnv1a64(key.as_bytes())
}

/// The request-bootstrap interval of a key's change between two samples.
fn bootstrap_key(sb: &Samples, sc: &Samples, key: &str) -> Option<(f64, f64)> {
    let seed = seed_of(key);
    if let Some((m, p)) = key.split_once('.') {
        let pct = PERCENTILES.iter().find(|(n, _)| *n == p).map(|x| x.1)?;
        let (xb, xc) = (sb.get(m)?, sc.get(m)?);
        let st = move |v: &[&f64]| percentile_of_refs(v, pct);
        bootstrap_change_pct(xb, xc, st, st, seed)
    } else {
        let req = key == "requests_per_s";
        bootstrap_change_pct(
            &sb.tokens_e2e,
            &sc.tokens_e2e,
            |v| rate_stat(v, req),
            |v| rate_stat(v, req),
            seed,
        )
    }
}

/// The delta of one metric key between two arms. With `policy.run_drift_pct > 0` (the default)
/// the interval comes from the runs' values on the log scale, their variance pooled from the
/// runs and from the assumed drift plus the request-to-request spread of one run (a request
/// bootstrap of the first runs): method `runs`. A single run per arm needs its journal for that
/// spread. With `run_drift_pct = 0`: a request bootstrap for one run per arm, a Welch interval
/// over repeats otherwise.
pub fn delta(base: &ArmRuns, cand: &ArmRuns, key: &str, policy: &Policy) -> Delta {
    let better = if key.ends_with("per_s") {
        Better::Higher
    } else {
        Better::Lower
    };
    let vals = |a: &ArmRuns| -> Vec<f64> {
        a.results
            .iter()
            .filter_map(|r| metric_value(r, key))
            .collect()
    };
    let (vb, vc) = (vals(base), vals(cand));
    let first_samples = |a: &ArmRuns| a.samples.first().cloned().flatten();
    let mut d = Delta {
        baseline: mean(&vb),
        candidate: mean(&vc),
        change_pct: None,
        ci_low_pct: None,
        ci_high_pct: None,
        significant: None,
        better,
        method: Method::None,
        log_change: None,
        se_log: None,
        df: None,
        runs: Some((vb.len(), vc.len())),
    };
    if policy.run_drift_pct > 0.0 {
        let single = vb.len() < 2 || vc.len() < 2;
        let boot = match (first_samples(base), first_samples(cand)) {
            (Some(sb), Some(sc)) => bootstrap_key(&sb, &sc, key),
            _ => None,
        };
        let req_var = boot.and_then(|(lo, hi)| per_run_log_var_from_ci(lo, hi));
        let prior_var = (policy.run_drift_pct / 100.0).powi(2) + req_var.unwrap_or(0.0);
        let lc = if single && req_var.is_none() {
            None
        } else {
            LogChange::from_runs(&vb, &vc, prior_var, policy.run_drift_prior_df)
        };
        if let Some(lc) = lc {
            let geo = |v: &[f64]| (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp();
            let (lo, hi) = lc.interval_pct(0.95);
            d.baseline = Some(geo(&vb));
            d.candidate = Some(geo(&vc));
            d.change_pct = Some(lc.change_pct());
            (d.ci_low_pct, d.ci_high_pct) = (Some(lo), Some(hi));
            d.method = Method::Runs;
            (d.log_change, d.se_log, d.df) = (Some(lc.estimate), Some(lc.se), Some(lc.df));
        } else {
            d.change_pct = change_of(d.baseline, d.candidate);
        }
    } else {
        d.change_pct = change_of(d.baseline, d.candidate);
        let ci = if vb.len() >= 2 && vc.len() >= 2 {
            d.method = Method::Repeats;
            crate::stats::welch_change_pct(&vb, &vc)
        } else {
            d.method = Method::BootstrapRequests;
            match (base.pooled(), cand.pooled()) {
                (Some(sb), Some(sc)) => bootstrap_key(&sb, &sc, key),
                _ => None,
            }
        };
        match ci {
            Some((lo, hi)) => (d.ci_low_pct, d.ci_high_pct) = (Some(lo), Some(hi)),
            None => d.method = Method::None,
        }
    }
    d.significant = match (d.ci_low_pct, d.ci_high_pct, d.change_pct) {
        (Some(lo), Some(hi), Some(ch)) => {
            Some((lo > 0.0 || hi < 0.0) && ch.abs() >= policy.noise_floor_pct)
        }
        _ => None,
    };
    d
}

fn change_of(b: Option<f64>, c: Option<f64>) -> Option<f64> {
    match (b, c) {
        (Some(b), Some(c)) if b != 0.0 => Some(100.0 * (c / b - 1.0)),
        _ => None,
    }
}

/// Every delta key compared.
pub fn delta_keys() -> Vec<String> {
    let mut keys = Vec::new();
    for m in LATENCY_METRICS {
        for (p, _) in PERCENTILES {
            keys.push(format!("{m}.{p}"));
        }
    }
    keys.extend(["output_tok_per_s".into(), "requests_per_s".into()]);
    keys
}

/// A warning's status between two arms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct WarningChange {
    /// Catalog id.
    pub id: String,
    /// Category (`fp8`, ...).
    pub category: Option<String>,
    /// Severity.
    pub severity: String,
    /// What it means.
    pub meaning: Option<String>,
    /// Times printed on the baseline.
    pub baseline_count: u64,
    /// Times printed on the candidate.
    pub candidate_count: u64,
    /// Whether the change under test is expected to resolve it (`null` when the change is not
    /// recognised).
    pub resolvable_by_change: Option<bool>,
    /// An explanation when useful.
    pub note: Option<String>,
}

/// Warnings resolved, persisting and new.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct WarningDiff {
    /// On the baseline, gone on the candidate.
    pub resolved: Vec<WarningChange>,
    /// On both.
    pub persisting: Vec<WarningChange>,
    /// New on the candidate.
    pub new: Vec<WarningChange>,
    /// The change under test as a catalog token (`calculate_kv_scales`,
    /// `kv_cache_dtype_auto`, `kv_cache_dtype_fp8_e4m3`), when recognised.
    pub change_under_test: Option<String>,
    /// Baseline warnings (of the policy's category, severity warning) that the change can resolve.
    pub resolvable: Option<u64>,
    /// Baseline warnings of the policy's category (severity warning).
    pub counted_on_baseline: u64,
    /// Of those, resolved on the candidate.
    pub counted_resolved: u64,
    /// Explanations.
    pub notes: Vec<String>,
}

fn requested(r: &RunResult) -> Option<&KvSettings> {
    r.server.facts.config_check.as_ref().map(|c| &c.requested)
}

/// Recognises the change between two arms' requested settings.
pub fn change_under_test(base: &RunResult, cand: &RunResult) -> Option<String> {
    let (b, c) = (requested(base), requested(cand));
    let calc = |v: Option<&KvSettings>| v.and_then(|v| v.calculate_kv_scales).unwrap_or(false);
    fn dtype(v: Option<&KvSettings>) -> Option<&str> {
        v.and_then(|v| v.kv_cache_dtype.as_deref())
    }
    if !calc(b) && calc(c) {
        return Some("calculate_kv_scales".into());
    }
    match (dtype(b), dtype(c)) {
        (Some(x), Some("auto")) if x.starts_with("fp8") => Some("kv_cache_dtype_auto".into()),
        (Some("fp8"), Some("fp8_e4m3")) => Some("kv_cache_dtype_fp8_e4m3".into()),
        _ => None,
    }
}

fn warning_ids(r: &RunResult) -> BTreeMap<String, (u64, String)> {
    let mut m = BTreeMap::new();
    for w in &r.warnings {
        if w.id.is_empty() || w.id == "other" {
            continue;
        }
        let e = m
            .entry(w.id.clone())
            .or_insert((0, w.severity.as_str().to_owned()));
        e.0 = e.0.max(w.count);
    }
    m
}

/// Compares the catalogued warnings of two arms.
pub fn warning_diff(
    base: &RunResult,
    cand: &RunResult,
    catalog: &Catalog,
    policy: &Policy,
) -> WarningDiff {
    let (wb, wc) = (warning_ids(base), warning_ids(cand));
    let change = change_under_test(base, cand);
    let mut d = WarningDiff {
        change_under_test: change.clone(),
        ..WarningDiff::default()
    };
    let mut resolvable = 0u64;
    let item = |id: &str, sev: &str, bc: u64, cc: u64| {
        let def = catalog.get(id);
        let resolvable_by_change = change.as_ref().and_then(|ch| {
            def.map(|d| {
                d.resolved_by
                    .iter()
                    .chain(d.silenced_by.iter())
                    .any(|r| r == ch)
            })
        });
        let mut note = None;
        if let (Some(ch), Some(def)) = (&change, def) {
            if def.silenced_by.contains(ch) {
                note = Some(format!(
                    "`{ch}` only silences this warning; behaviour is unchanged"
                ));
            } else if !def.resolved_by.contains(ch) && bc > 0 {
                let fixes = if def.resolved_by.is_empty() {
                    "nothing in the catalog".to_owned()
                } else {
                    def.resolved_by.join(", ")
                };
                note = Some(format!("not resolvable by `{ch}`; resolved by: {fixes}"));
            }
        }
        WarningChange {
            id: id.to_owned(),
            category: def.and_then(|d| d.category.clone()),
            severity: sev.to_owned(),
            meaning: def.map(|d| d.meaning.clone()),
            baseline_count: bc,
            candidate_count: cc,
            resolvable_by_change,
            note,
        }
    };
    for (id, (bc, sev)) in &wb {
        let counted = sev == "warning"
            && catalog.get(id).and_then(|d| d.category.as_deref())
                == Some(policy.warning_category.as_str());
        let w = item(id, sev, *bc, wc.get(id).map_or(0, |x| x.0));
        if counted {
            d.counted_on_baseline += 1;
            if w.resolvable_by_change == Some(true) {
                resolvable += 1;
            }
        }
        if wc.contains_key(id) {
            d.persisting.push(w);
        } else {
            if counted {
                d.counted_resolved += 1;
            }
            d.resolved.push(w);
        }
    }
    for (id, (cc, sev)) in &wc {
        if !wb.contains_key(id) {
            d.new.push(item(id, sev, 0, *cc));
        }
    }
    if change.is_some() {
        d.resolvable = Some(resolvable);
    }
    for w in d.persisting.iter().chain(d.new.iter()) {
        if let Some(n) = &w.note {
            d.notes.push(format!("{}: {n}", w.id));
        }
    }
    d
}

/// Quality of one suite between two arms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct QualityDelta {
    /// Baseline accuracy (0–1).
    pub baseline_accuracy: Option<f64>,
    /// Candidate accuracy (0–1).
    pub candidate_accuracy: Option<f64>,
    /// Change in percentage points.
    pub change_pts: Option<f64>,
    /// Paired items (same prompt on both arms).
    pub paired: Option<u64>,
    /// Right on the baseline, wrong on the candidate.
    pub lost: Option<u64>,
    /// Wrong on the baseline, right on the candidate.
    pub gained: Option<u64>,
    /// Exact McNemar p-value on the flips.
    pub mcnemar_p: Option<f64>,
    /// p < 0.05.
    pub significant: Option<bool>,
    /// The flipped items.
    pub flips: Vec<crate::quality::agreement::Flip>,
}

/// Suites in a result's `quality` object.
pub fn quality_suites(r: &RunResult) -> BTreeMap<String, SuiteSummary> {
    r.quality
        .as_ref()
        .map(|q| q.suites.clone())
        .unwrap_or_default()
}

fn quality_compare(
    base: &ArmRuns,
    cand: &ArmRuns,
) -> (BTreeMap<String, QualityDelta>, Option<AgreementSummary>) {
    let (Some(rb), Some(rc)) = (base.results.first(), cand.results.first()) else {
        return (BTreeMap::new(), None);
    };
    let (qb, qc) = (quality_suites(rb), quality_suites(rc));
    let agreement = match (&base.quality_items, &cand.quality_items) {
        (Some(a), Some(b)) => Some(crate::quality::agreement(a, b)),
        _ => None,
    };
    let mut out = BTreeMap::new();
    for (suite, vb) in &qb {
        let Some(vc) = qc.get(suite) else { continue };
        let (ab, ac) = (vb.score.accuracy, vc.score.accuracy);
        let pairing = agreement.as_ref().and_then(|a| a.suites.get(suite));
        out.insert(
            suite.clone(),
            QualityDelta {
                baseline_accuracy: ab,
                candidate_accuracy: ac,
                change_pts: ab.zip(ac).map(|(b, c)| 100.0 * (c - b)),
                paired: pairing.map(|p| p.paired),
                lost: pairing.map(|p| p.lost),
                gained: pairing.map(|p| p.gained),
                mcnemar_p: pairing.map(|p| p.mcnemar_p),
                significant: pairing.map(|p| p.mcnemar_p < 0.05),
                flips: pairing.map(|p| p.flips.clone()).unwrap_or_default(),
            },
        );
    }
    (out, agreement.as_ref().map(AgreementSummary::from))
}

fn server_summary(r: &RunResult) -> ServerSummary {
    let f = &r.server.facts;
    let check = f.config_check.clone().unwrap_or_default();
    let (asked, seen) = (check.requested, check.effective);
    ServerSummary {
        engine: r.server.engine.clone(),
        version: r.server.version.clone(),
        kv_cache_dtype_requested: asked.kv_cache_dtype,
        kv_cache_dtype_effective: seen.kv_cache_dtype,
        calculate_kv_scales_requested: asked.calculate_kv_scales,
        calculate_kv_scales_effective: seen.calculate_kv_scales,
        cache_type_k: seen.cache_type_k.or(asked.cache_type_k),
        kv_cache_tokens: f.kv_cache_tokens().cloned(),
        startup_s: r.server.startup_s,
        mismatches: check.mismatches,
    }
}

fn quantiles(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_unstable_by(f64::total_cmp);
    if s.is_empty() {
        return Vec::new();
    }
    (0..=100)
        .map(|p| crate::stats::percentile_sorted(&s, p as f64))
        .collect()
}

fn throughput_ci(a: &ArmRuns, key: &str) -> ValueCi {
    let vals: Vec<f64> = a
        .results
        .iter()
        .filter_map(|r| metric_value(r, key))
        .collect();
    let Some(v) = mean(&vals) else {
        return ValueCi::default();
    };
    // The interval of the arm's own value: the change against itself, shifted to its level.
    let ci = if vals.len() >= 2 {
        bootstrap_change_pct(&vals, &vals, |_| v, mean_of_refs, seed_of(key))
    } else {
        a.pooled().and_then(|s| {
            let req = key == "requests_per_s";
            let full = rate_stat(&s.tokens_e2e.iter().collect::<Vec<_>>(), req);
            bootstrap_change_pct(
                &s.tokens_e2e,
                &s.tokens_e2e,
                |_| full,
                |x| rate_stat(x, req),
                seed_of(key),
            )
        })
    };
    ValueCi {
        value: Some(v),
        ci_low: ci.map(|c| v * (1.0 + c.0 / 100.0)),
        ci_high: ci.map(|c| v * (1.0 + c.1 / 100.0)),
    }
}

fn arm_summary(a: &ArmRuns) -> ArmSummary {
    let first = a.results.first();
    let pooled = a.pooled();
    let metrics = LATENCY_METRICS
        .iter()
        .map(|m| {
            let s = match &pooled {
                Some(p) => Summary::of(p.get(m).unwrap_or(&[])),
                None => first
                    .and_then(|r| r.metrics.get(m))
                    .cloned()
                    .unwrap_or_default(),
            };
            ((*m).to_owned(), s)
        })
        .collect();
    let sum = |f: fn(&RunResult) -> u64| a.results.iter().map(f).sum::<u64>();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in &a.results {
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
    }
    ArmSummary {
        name: a.name.clone(),
        outcome: a.first_failure().map_or(Outcome::Ok, |r| r.outcome.clone()),
        failure: a.first_failure().and_then(|r| r.failure.clone()),
        results: a.paths.iter().map(|p| p.display().to_string()).collect(),
        repeats: a.results.len(),
        server: first.map(server_summary),
        requests: RequestTotals {
            total: sum(|r| r.requests.total),
            completed: sum(|r| r.requests.completed),
            failed: sum(|r| r.requests.failed),
        },
        errors,
        metrics,
        throughput: ArmThroughput {
            output_tok_per_s: throughput_ci(a, "output_tok_per_s"),
            requests_per_s: throughput_ci(a, "requests_per_s"),
            total_tok_per_s: ValueCi {
                value: mean(
                    &a.results
                        .iter()
                        .filter_map(|r| r.throughput.total_tok_per_s)
                        .collect::<Vec<_>>(),
                ),
                ..ValueCi::default()
            },
        },
        quality: first.map(quality_suites),
        warnings: first.map(|r| r.warnings.clone()).unwrap_or_default(),
        server_metrics: first.and_then(|r| r.server_metrics.clone()),
        distributions: pooled.map(|p| Distributions {
            ttft_ms: quantiles(&p.ttft_ms),
            itl_ms: quantiles(&p.itl_ms),
        }),
        goodput: arm_goodput(a),
    }
}

fn arm_goodput(a: &ArmRuns) -> Option<ArmGoodput> {
    let runs: Vec<&crate::metrics::Goodput> = a
        .results
        .iter()
        .filter_map(|r| r.goodput.as_ref())
        .collect();
    let first = runs.first()?;
    let m = |f: fn(&crate::metrics::Goodput) -> Option<f64>| {
        mean(&runs.iter().filter_map(|g| f(g)).collect::<Vec<_>>())
    };
    Some(ArmGoodput {
        targets: first.targets,
        share: m(|g| g.share),
        requests_per_s: m(|g| g.requests_per_s),
    })
}

/// Builds the comparison of `arms` against `baseline` (an arm name). `reference`, when given,
/// names a quality reference arm (e.g. bf16 KV): every other arm's answers are compared with
/// its answers (`reference` in the JSON), and it is not a candidate for the decision.
pub fn compare(
    arms: &[ArmRuns],
    baseline: &str,
    reference: Option<&str>,
    policy: &Policy,
    catalog: &Catalog,
    experiment: Option<&str>,
) -> anyhow::Result<Comparison> {
    compare_keys(arms, baseline, reference, policy, catalog, experiment, None)
}

/// [`compare`] with the deltas limited to `keys` (the simulation of `kvbench error-rates` asks
/// only for the policy's regression metrics); `None` compares every key.
pub(crate) fn compare_keys(
    arms: &[ArmRuns],
    baseline: &str,
    reference: Option<&str>,
    policy: &Policy,
    catalog: &Catalog,
    experiment: Option<&str>,
    keys: Option<&[String]>,
) -> anyhow::Result<Comparison> {
    let names = || {
        arms.iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(base) = arms.iter().find(|a| a.name == baseline) else {
        bail!(
            "no arm named {baseline:?} among the results (arms: {})",
            names()
        );
    };
    if arms.len() < 2 {
        bail!("a comparison needs at least two arms (got {})", arms.len());
    }
    if reference == Some(baseline) {
        bail!("the reference arm must differ from the baseline ({baseline:?})");
    }
    let reference_arm = match reference {
        None => None,
        Some(r) => match arms.iter().find(|a| a.name == r) {
            Some(a) => Some(a),
            None => bail!(
                "no reference arm named {r:?} among the results (arms: {})",
                names()
            ),
        },
    };
    let is_candidate = |a: &&ArmRuns| a.name != baseline && Some(a.name.as_str()) != reference;
    if !arms.iter().any(|a| is_candidate(&a)) {
        bail!("a comparison needs a candidate arm besides the baseline {baseline:?} and the reference");
    }
    let mut candidates = Vec::new();
    let mut decisions = Vec::new();
    for cand in arms.iter().filter(is_candidate) {
        let deltas: BTreeMap<String, Delta> = if base.ok() && cand.ok() {
            keys.map(<[String]>::to_vec)
                .unwrap_or_else(delta_keys)
                .into_iter()
                .map(|k| {
                    let d = delta(base, cand, &k, policy);
                    (k, d)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let warnings = match (base.results.first(), cand.results.first()) {
            (Some(b), Some(c)) => warning_diff(b, c, catalog, policy),
            _ => WarningDiff::default(),
        };
        let (quality, agreement) = quality_compare(base, cand);
        let decided = decision::decide(base, cand, &deltas, &warnings, &quality, policy);
        candidates.push(Candidate {
            arm: cand.name.clone(),
            decision: decided.verdict,
            settled: decided.settled,
            recommendations: decided.recommendations.clone(),
            deltas,
            warnings,
            quality,
            agreement,
        });
        decisions.push((cand.name.clone(), decided));
    }
    let (decision, recommended_arm, recommendations) = decision::overall(&decisions);
    let first = candidates.first().cloned().unwrap_or_default();
    let mut arms_out = vec![arm_summary(base)];
    arms_out.extend(arms.iter().filter(|a| a.name != baseline).map(arm_summary));
    Ok(Comparison {
        schema_version: COMPARISON_SCHEMA_VERSION,
        kvbench_version: env!("CARGO_PKG_VERSION").into(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        experiment: experiment.map(str::to_owned),
        baseline: baseline.to_owned(),
        decision: Some(decision),
        recommended_arm,
        recommendations,
        settled: decisions.iter().all(|(_, d)| d.settled),
        policy: Some(policy.clone()),
        arms: arms_out,
        candidates,
        deltas: first.deltas,
        warnings: first.warnings,
        quality: first.quality,
        agreement: first.agreement,
        reference: reference_arm.map(|r| reference_section(r, arms)),
        // Set by `kvbench compare --rescan-logs`.
        logs_rescanned: false,
        effort: None,
        execution: execution(arms),
        capacity: arms
            .iter()
            .filter_map(|a| arm_capacity(a).map(|c| (a.name.clone(), c)))
            .collect(),
    })
}

/// An arm's capacity from its runs' sweeps: the run with the smallest knee (a run without a
/// knee counts as the smallest).
fn arm_capacity(a: &ArmRuns) -> Option<ArmCapacity> {
    let caps: Vec<&crate::capacity::Capacity> = a
        .results
        .iter()
        .filter_map(|r| r.capacity.as_ref())
        .collect();
    let worst = caps.iter().min_by(|x, y| match (x.knee, y.knee) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, _) => std::cmp::Ordering::Less,
        (_, None) => std::cmp::Ordering::Greater,
        (Some(p), Some(q)) => p.total_cmp(&q),
    })?;
    Some(ArmCapacity {
        knee: worst.knee.map(|value| Knee {
            by: worst.by,
            value,
        }),
        goodput_share_at_knee: worst.knee.and_then(|k| {
            worst
                .levels
                .iter()
                .find(|l| l.load == k)
                .and_then(|l| l.goodput_share)
        }),
        share_target: worst.share_target,
        levels: worst.levels.clone(),
        runs: caps.len(),
    })
}

/// Where the runs ran, when any run has a placement (an executor other than `local`).
fn execution(arms: &[ArmRuns]) -> Option<Execution> {
    let placements = || {
        arms.iter()
            .flat_map(|a| a.results.iter().map(|r| &r.placement))
    };
    if placements().all(|p| p.is_none()) {
        return None;
    }
    let executors: BTreeSet<String> = placements()
        .map(|p| {
            p.as_ref()
                .map_or("local".to_owned(), |p| p.executor.clone())
        })
        .collect();
    let mut device_sets: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    for a in arms {
        for r in &a.results {
            if let Some(d) = r.placement.as_ref().and_then(|p| p.devices.clone()) {
                *device_sets
                    .entry(a.name.clone())
                    .or_default()
                    .entry(d)
                    .or_default() += 1;
            }
        }
    }
    let all: BTreeSet<&String> = device_sets.values().flat_map(BTreeMap::keys).collect();
    let balanced = (!all.is_empty()).then(|| {
        let counts: BTreeSet<u32> = arms
            .iter()
            .flat_map(|a| {
                let m = device_sets.get(&a.name);
                all.iter()
                    .map(move |d| m.and_then(|m| m.get(*d)).copied().unwrap_or(0))
            })
            .collect();
        counts.len() == 1
    });
    let note = match balanced {
        Some(true) if all.len() > 1 => "every arm ran equally often on every device set (a balanced crossover): a GPU-to-GPU difference cancels in each change and shows in the runs' spread, which the intervals are drawn from".to_owned(),
        Some(true) => "every run used the same device set: GPU-to-GPU differences do not enter".to_owned(),
        Some(false) => "the arms did not run equally often on every device set: a GPU-to-GPU difference can shift a change by part of that difference; an even number of rounds (--repeat 2, 4, ...) balances two sets".to_owned(),
        None => "the device sets were not recorded (the scheduler placed the runs): GPU-to-GPU differences are part of the runs' spread, and average out only over several runs per arm".to_owned(),
    };
    Some(Execution {
        executors: executors.into_iter().collect(),
        device_sets,
        balanced,
        note,
    })
}

/// Every other arm's quality against the reference arm: per suite the two accuracies, the
/// change in points, the paired flips and the accuracy ratio (arm / reference; vLLM's advice is
/// to calibrate when FP8 falls below about 95 % of the reference), plus answer agreement.
fn reference_section(r: &ArmRuns, arms: &[ArmRuns]) -> ReferenceSection {
    let others = arms
        .iter()
        .filter(|a| a.name != r.name)
        .map(|a| {
            let (quality, agreement) = quality_compare(r, a);
            let accuracy_ratio = quality
                .iter()
                .map(|(s, q)| {
                    let v = q
                        .baseline_accuracy
                        .zip(q.candidate_accuracy)
                        .and_then(|(b, c)| (b > 0.0).then(|| c / b));
                    (s.clone(), v)
                })
                .collect();
            ReferenceArm {
                arm: a.name.clone(),
                quality,
                accuracy_ratio,
                agreement,
            }
        })
        .collect();
    ReferenceSection {
        arm: r.name.clone(),
        arms: others,
    }
}

#[cfg(test)]
mod tests;
