//! The comparison as types: what `kvbench compare` and `kvbench ab` write, what the reports
//! render and what `jq` reads (docs/decision.md, docs/schema/comparison.schema.json).
//!
//! Every struct reads older files: a field a file lacks takes its default (`#[serde(default)]`),
//! and `schema_version` says which version wrote it. Values that could not be measured are
//! `null`. Fields still holding `serde_json::Value` carry what is open by nature: a criterion's
//! evidence, and a KV-cache size read by a catalog pattern.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::decision::{Policy, Recommendation, Verdict};
use super::{Delta, QualityDelta, WarningDiff};
use crate::result::Phases;
use crate::stats::Summary;

/// The comparison of arms against a baseline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Comparison {
    /// Version of this schema (`COMPARISON_SCHEMA_VERSION`).
    pub schema_version: u32,
    /// kvbench version that wrote the file.
    pub kvbench_version: String,
    /// When the comparison was made (RFC 3339, UTC).
    pub created_at: String,
    /// Experiment name (`kvbench ab`), else `null`.
    pub experiment: Option<String>,
    /// The baseline arm's name.
    pub baseline: String,
    /// The overall verdict: the best candidate's (`null` only in a hand-made file).
    pub decision: Option<Verdict>,
    /// The candidate to apply or monitor, else `null`.
    pub recommended_arm: Option<String>,
    /// The best candidate's criteria, its overall verdict last.
    pub recommendations: Vec<Recommendation>,
    /// Whether every candidate's verdict is settled (more runs could not change it).
    pub settled: bool,
    /// The thresholds the decision used.
    pub policy: Option<Policy>,
    /// Every arm, baseline first.
    pub arms: Vec<ArmSummary>,
    /// Every candidate against the baseline.
    pub candidates: Vec<Candidate>,
    /// The first candidate's deltas (kept for two-arm readers: `jq .deltas`).
    pub deltas: BTreeMap<String, Delta>,
    /// The first candidate's warnings.
    pub warnings: WarningDiff,
    /// The first candidate's quality per suite.
    pub quality: BTreeMap<String, QualityDelta>,
    /// The first candidate's answer agreement with the baseline.
    pub agreement: Option<AgreementSummary>,
    /// Every other arm's quality against the reference arm, when one is named.
    pub reference: Option<ReferenceSection>,
    /// Whether `kvbench compare --rescan-logs` read the logs again.
    pub logs_rescanned: bool,
    /// What the verdict cost (`kvbench ab` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effort: Option<Effort>,
    /// Where the runs ran, when an executor other than `local` ran any (docs/scale.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
    /// Per arm with a load sweep (`--sweep`): its knee and levels (docs/metrics.md#capacity).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, ArmCapacity>,
}

/// An arm's capacity: the knee of its sweeps and the levels of the run that gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ArmCapacity {
    /// The highest load within the latency targets (the smallest of the arm's runs' knees),
    /// else `null`.
    pub knee: Option<Knee>,
    /// The goodput share at the knee.
    pub goodput_share_at_knee: Option<f64>,
    /// The share a level had to keep.
    pub share_target: f64,
    /// The levels of the run whose knee this is, lowest first.
    pub levels: Vec<crate::capacity::Level>,
    /// Runs of the arm with a sweep.
    pub runs: usize,
}

/// A knee: the load and what it counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Knee {
    /// `concurrency` or `request_rate`.
    pub by: crate::capacity::LoadBy,
    /// The load.
    pub value: f64,
}

/// Where the runs ran (from the results' `placement`), and whether the device sets were
/// balanced across arms (docs/decision.md, "Arms at the same time").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Execution {
    /// The executors that ran the runs (`local` for runs without a placement).
    pub executors: Vec<String>,
    /// Per arm, runs per device set (`CUDA_VISIBLE_DEVICES`); empty where none was recorded.
    pub device_sets: BTreeMap<String, BTreeMap<String, u32>>,
    /// Whether every arm ran equally often on every device set (a balanced crossover); `null`
    /// when no device sets were recorded.
    pub balanced: Option<bool>,
    /// What this means for the intervals, in a sentence.
    pub note: String,
}

impl Comparison {
    /// The candidates whose verdict more runs could still change.
    pub fn open_candidates(&self) -> Vec<String> {
        self.candidates
            .iter()
            .filter(|c| !c.settled)
            .map(|c| c.arm.clone())
            .collect()
    }

    /// The arm named `name`.
    pub fn arm(&self, name: &str) -> Option<&ArmSummary> {
        self.arms.iter().find(|a| a.name == name)
    }
}

/// One candidate against the baseline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Candidate {
    /// Arm name.
    pub arm: String,
    /// Its overall verdict.
    pub decision: Verdict,
    /// Whether more runs could still change it.
    pub settled: bool,
    /// One verdict per criterion, the overall one last.
    pub recommendations: Vec<Recommendation>,
    /// Changes per metric key (`ttft_ms.p50`, `output_tok_per_s`, ...).
    pub deltas: BTreeMap<String, Delta>,
    /// Warnings resolved, persisting and new.
    pub warnings: WarningDiff,
    /// Quality per suite.
    pub quality: BTreeMap<String, QualityDelta>,
    /// Answer agreement with the baseline (when both have quality journals).
    pub agreement: Option<AgreementSummary>,
}

/// How alike two arms' answers are (the summary of `quality::Agreement`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct AgreementSummary {
    /// Items answered on both arms with the same prompt.
    pub paired: u64,
    /// Share of paired items with identical answers.
    pub exact_match_rate: Option<f64>,
    /// Share of compared token positions with the same most likely token.
    pub top1_agreement: Option<f64>,
    /// Mean KL divergence (nats) over compared positions.
    pub mean_kl: Option<f64>,
    /// Largest per-position KL divergence.
    pub max_kl: Option<f64>,
    /// First differing character, over differing pairs.
    pub first_divergence_char: Summary,
    /// First differing token, over differing pairs with log-probabilities.
    pub first_divergence_token: Summary,
    /// Finish-reason changes by `"A->B"`.
    pub finish_reason_shifts: BTreeMap<String, u64>,
    /// Degenerate answers among paired items on the first arm.
    pub degenerate_a: u64,
    /// On the second arm.
    pub degenerate_b: u64,
    /// Items whose prompts differ between the arms (not compared).
    pub prompt_mismatch: u64,
}

impl From<&crate::quality::agreement::Agreement> for AgreementSummary {
    fn from(a: &crate::quality::agreement::Agreement) -> Self {
        AgreementSummary {
            paired: a.paired,
            exact_match_rate: a.exact_match_rate,
            top1_agreement: a.top1_agreement,
            mean_kl: a.mean_kl,
            max_kl: a.max_kl,
            first_divergence_char: a.first_divergence_char.clone(),
            first_divergence_token: a.first_divergence_token.clone(),
            finish_reason_shifts: a.finish_reason_shifts.clone(),
            degenerate_a: a.degenerate_a,
            degenerate_b: a.degenerate_b,
            prompt_mismatch: a.prompt_mismatch,
        }
    }
}

/// One arm's measurements, pooled over its runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ArmSummary {
    /// Arm name.
    pub name: String,
    /// `ok`, or the first failed run's outcome (a failure kind, `interrupted`, `all_failed`).
    pub outcome: crate::result::Outcome,
    /// The first failed run's failure.
    pub failure: Option<crate::server::Failure>,
    /// Result files.
    pub results: Vec<String>,
    /// Runs.
    pub repeats: usize,
    /// What the server said about itself (first run).
    pub server: Option<ServerSummary>,
    /// Request counts over all runs.
    pub requests: RequestTotals,
    /// Failed requests by error kind, over all runs.
    pub errors: BTreeMap<String, u64>,
    /// Latency summaries per metric (`ttft_ms`, `itl_ms`, ...), pooled over runs.
    pub metrics: BTreeMap<String, Summary>,
    /// Throughput with the interval of the arm's own value.
    pub throughput: ArmThroughput,
    /// Quality suites of the first run (as the result holds them).
    #[serde(deserialize_with = "suites_present")]
    #[schemars(with = "Option<BTreeMap<String, crate::quality::SuiteSummary>>")]
    pub quality: Option<BTreeMap<String, crate::quality::SuiteSummary>>,
    /// Server log warnings of the first run.
    pub warnings: Vec<crate::logscan::WarningHit>,
    /// Scraped `/metrics` of the first run.
    pub server_metrics: Option<crate::result::ServerMetrics>,
    /// Percentiles 0..=100 of the pooled TTFT and ITL (for the charts).
    pub distributions: Option<Distributions>,
    /// Goodput under the runs' latency targets (`--slo`), mean over runs; absent without.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goodput: Option<ArmGoodput>,
}

/// An arm's goodput: the share of requests that met every latency target, and their rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ArmGoodput {
    /// The targets (of the first run).
    pub targets: crate::metrics::Slo,
    /// Mean share of requests that met them.
    pub share: Option<f64>,
    /// Mean good requests per second.
    pub requests_per_s: Option<f64>,
}

/// Request counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RequestTotals {
    /// Sent.
    pub total: u64,
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
}

/// A value with an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ValueCi {
    /// The value (mean over runs).
    pub value: Option<f64>,
    /// 95 % interval, low end.
    pub ci_low: Option<f64>,
    /// 95 % interval, high end.
    pub ci_high: Option<f64>,
}

/// An arm's throughput.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ArmThroughput {
    /// Output tokens per second.
    pub output_tok_per_s: ValueCi,
    /// Completed requests per second.
    pub requests_per_s: ValueCi,
    /// Prompt and output tokens per second (no interval).
    pub total_tok_per_s: ValueCi,
}

impl ArmThroughput {
    /// The throughput metric `key` (`output_tok_per_s`, `requests_per_s`, `total_tok_per_s`).
    pub fn get(&self, key: &str) -> Option<&ValueCi> {
        match key {
            "output_tok_per_s" => Some(&self.output_tok_per_s),
            "requests_per_s" => Some(&self.requests_per_s),
            "total_tok_per_s" => Some(&self.total_tok_per_s),
            _ => None,
        }
    }
}

/// Percentiles 0..=100 (101 values; empty without samples).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Distributions {
    /// TTFT percentiles (ms).
    pub ttft_ms: Vec<f64>,
    /// ITL percentiles (ms).
    pub itl_ms: Vec<f64>,
}

/// What the server said about itself: the KV settings asked for and in effect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ServerSummary {
    /// `vllm`, `llamacpp` or `openai`.
    pub engine: String,
    /// Its version, when it tells it.
    pub version: Option<String>,
    /// KV-cache dtype asked for.
    pub kv_cache_dtype_requested: Option<String>,
    /// KV-cache dtype the server reports using.
    pub kv_cache_dtype_effective: Option<String>,
    /// `--calculate-kv-scales` asked for.
    pub calculate_kv_scales_requested: Option<bool>,
    /// In effect.
    pub calculate_kv_scales_effective: Option<bool>,
    /// llama.cpp's K-cache type.
    pub cache_type_k: Option<String>,
    /// KV-cache capacity in tokens (vLLM) or cells (llama.cpp).
    pub kv_cache_tokens: Option<Value>,
    /// Seconds from launch to healthy.
    pub startup_s: Option<f64>,
    /// Settings asked for but not in effect.
    pub mismatches: Vec<String>,
}

/// Every other arm's quality against the reference arm.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ReferenceSection {
    /// The reference arm.
    pub arm: String,
    /// The other arms.
    pub arms: Vec<ReferenceArm>,
}

/// One arm against the reference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ReferenceArm {
    /// Arm name.
    pub arm: String,
    /// Quality per suite (the reference is the "baseline" side).
    pub quality: BTreeMap<String, QualityDelta>,
    /// Accuracy ratio per suite: arm / reference.
    pub accuracy_ratio: BTreeMap<String, Option<f64>>,
    /// Answer agreement with the reference.
    pub agreement: Option<AgreementSummary>,
}

/// How many runs each arm gets (`effort.design`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesignKind {
    /// `--repeat N` (or one run per arm).
    #[default]
    Fixed,
    /// Rounds until the verdict is settled, the run cap or the budget.
    Adaptive,
}

/// Why the runs stopped (`effort.stopped`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    /// Every candidate's verdict is settled.
    Decided,
    /// The run cap was reached with a verdict still open.
    MaxRuns,
    /// The next round would have ended after the budget.
    Budget,
    /// Interrupted (a signal).
    Interrupted,
    /// The fixed design ran its runs.
    #[default]
    Fixed,
}

/// What the verdict cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Effort {
    /// Fixed or adaptive.
    pub design: DesignKind,
    /// Runs per arm.
    pub runs_per_arm: BTreeMap<String, u32>,
    /// The run cap per arm.
    pub max_runs: u32,
    /// `--budget` in seconds, when given.
    pub budget_s: Option<f64>,
    /// Why the runs stopped.
    pub stopped: Stopped,
    /// Wall time of the whole experiment.
    pub wall_s: f64,
    /// Seconds per phase per arm, summed over its runs.
    pub seconds: BTreeMap<String, Phases>,
    /// The adaptive rounds, in order.
    pub rounds: Vec<Round>,
}

/// One adaptive round: runs so far and each candidate's intervals after it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Round {
    /// 1, 2, ...
    pub round: u32,
    /// Runs per arm after the round.
    pub runs_per_arm: BTreeMap<String, u32>,
    /// Seconds since the experiment began.
    pub elapsed_s: f64,
    /// Overall verdict after the round.
    pub decision: Option<Verdict>,
    /// Whether it was settled.
    pub settled: bool,
    /// Each candidate after the round.
    pub candidates: Vec<RoundCandidate>,
}

/// A candidate after one round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RoundCandidate {
    /// Arm name.
    pub arm: String,
    /// Its verdict.
    pub decision: Verdict,
    /// Whether settled.
    pub settled: bool,
    /// Its criteria (the overall one left out).
    pub criteria: Vec<RoundCriterion>,
}

/// One criterion after one round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct RoundCriterion {
    /// The criterion.
    pub criterion: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// Whether settled.
    pub settled: bool,
    /// The change (speed criteria), else `null`.
    pub change_pct: Option<f64>,
    /// Its interval's low end.
    pub ci_low_pct: Option<f64>,
    /// Its interval's high end.
    pub ci_high_pct: Option<f64>,
}

impl Round {
    /// The round after `c`, with the runs so far.
    pub fn of(
        round: u32,
        c: &Comparison,
        runs_per_arm: BTreeMap<String, u32>,
        elapsed_s: f64,
    ) -> Self {
        let candidates = c
            .candidates
            .iter()
            .map(|cand| RoundCandidate {
                arm: cand.arm.clone(),
                decision: cand.decision,
                settled: cand.settled,
                criteria: cand
                    .recommendations
                    .iter()
                    .filter(|r| r.criterion != "overall")
                    .map(|r| {
                        let d = cand.deltas.get(&r.criterion);
                        RoundCriterion {
                            criterion: r.criterion.clone(),
                            verdict: r.verdict,
                            settled: r.settled,
                            change_pct: d.and_then(|d| d.change_pct),
                            ci_low_pct: d.and_then(|d| d.ci_low_pct),
                            ci_high_pct: d.and_then(|d| d.ci_high_pct),
                        }
                    })
                    .collect(),
            })
            .collect();
        Round {
            round,
            runs_per_arm,
            elapsed_s,
            decision: c.decision,
            settled: c.settled,
            candidates,
        }
    }
}

/// An arm's quality suites as a comparison file holds them; a suite written as `null` (a
/// hand-made or damaged file) is one that was not measured.
fn suites_present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, crate::quality::SuiteSummary>>, D::Error> {
    let suites: Option<BTreeMap<String, Option<crate::quality::SuiteSummary>>> =
        Deserialize::deserialize(d)?;
    Ok(suites.map(|m| m.into_iter().filter_map(|(k, v)| Some((k, v?))).collect()))
}
