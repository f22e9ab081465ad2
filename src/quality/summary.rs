//! What the quality suites leave in a run's result (`quality`): one summary per suite, the
//! settings they ran with, and where their journal is. Written by [`super::run`], read by
//! comparisons and reports; the per-item detail stays in the journal.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::Endpoint;

/// The result's `quality` object: the suites by name beside `settings`, `journal` and
/// `duration_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QualityResult {
    /// What the suites ran with.
    pub settings: QualitySettings,
    /// Path of the quality journal (one JSON line per item).
    pub journal: String,
    /// Seconds spent on all suites.
    pub duration_s: f64,
    /// Each suite's summary, by suite name (`passkey`, `needle`, `arithmetic`, a JSONL file's).
    #[serde(flatten)]
    pub suites: BTreeMap<String, SuiteSummary>,
}

/// The settings of the quality phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QualitySettings {
    /// Suite names, in the order run.
    pub suites: Vec<String>,
    /// Retrieval context lengths, tokens.
    pub lengths: Vec<u32>,
    /// Where the lengths came from (`user`, `server (max_model_len)`, ...).
    pub lengths_source: String,
    /// The server's maximum tokens per request, when known.
    pub server_max_len: Option<u64>,
    /// Retrieval depths (0 = start of the context, 1 = end).
    pub depths: Vec<f64>,
    /// Items per suite (per length for retrieval suites).
    pub items: u32,
    /// Log-probability alternatives asked for per token.
    #[serde(default)]
    pub logprobs: u32,
    /// `max_tokens` of every item, else `null` (each suite's own).
    pub max_tokens: Option<u32>,
    /// Seed of the generated suites.
    pub seed: u64,
    /// Endpoint called.
    pub endpoint: Endpoint,
    /// Sampling temperature (always 0: greedy).
    pub temperature: f64,
    /// `top_p` (always 1).
    pub top_p: f64,
    /// Whether a tokenizer sized the prompts exactly.
    pub tokenizer: bool,
    /// Whether the quality phase was interrupted.
    #[serde(default)]
    pub interrupted: bool,
}

/// Correct answers among answered items, with a 95 % Wilson interval, and the errors beside.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct Score {
    /// Answered items.
    pub items: u64,
    /// Correct answers.
    pub correct: u64,
    /// `correct / items`, else `null` (nothing answered).
    pub accuracy: Option<f64>,
    /// Low end of the 95 % interval of the accuracy, else `null`.
    pub ci_low: Option<f64>,
    /// High end of the 95 % interval of the accuracy, else `null`.
    pub ci_high: Option<f64>,
    /// Items that got no answer (a request error).
    pub errors: u64,
}

/// One suite's summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SuiteSummary {
    /// The score over answered items.
    #[serde(flatten)]
    pub score: Score,
    /// Unanswered items by error kind.
    #[serde(default)]
    pub error_kinds: BTreeMap<String, u64>,
    /// Answered items by finish reason (`none` when the server gave none).
    #[serde(default)]
    pub finish_reasons: BTreeMap<String, u64>,
    /// Degenerate answers (loops, noise) by kind.
    #[serde(default)]
    pub degenerate: BTreeMap<String, u64>,
    /// Output tokens of answered items.
    #[serde(default)]
    pub output_tokens_total: u64,
    /// Reasoning tokens of answered items.
    #[serde(default)]
    pub reasoning_tokens_total: u64,
    /// Mean prompt tokens of answered items, else `null`.
    #[serde(default)]
    pub prompt_tokens_mean: Option<f64>,
    /// Mean end-to-end latency of answered items in milliseconds, else `null`.
    #[serde(default)]
    pub e2e_ms_mean: Option<f64>,
    /// Seconds spent on the suite.
    #[serde(default)]
    pub duration_s: f64,
    /// Items planned.
    #[serde(default)]
    pub planned: u64,
    /// Why the suite stopped before its last item, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<StoppedEarly>,
    /// Retrieval suites: the score per context length (tokens, as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_length: Option<BTreeMap<String, LengthScore>>,
    /// JSONL suites: lines skipped as invalid (`--quality-skip-invalid`), with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_lines: Option<Vec<super::jsonl::SkippedLine>>,
}

/// A retrieval suite's score at one context length.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct LengthScore {
    /// The score at this length.
    #[serde(flatten)]
    pub score: Score,
    /// Mean prompt tokens at this length, else `null`.
    pub prompt_tokens_mean: Option<f64>,
    /// The score per depth (as text: `0`, `0.25`, ...).
    pub by_depth: BTreeMap<String, Score>,
}

/// A suite stopped early: the candidate already lost significantly more items than it gained
/// against the paired arm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StoppedEarly {
    /// Items run when it stopped.
    pub after_items: u64,
    /// Items right on the paired arm, wrong here.
    pub lost: u64,
    /// Items wrong on the paired arm, right here.
    pub gained: u64,
    /// Exact McNemar p-value of the flips.
    pub mcnemar_p: f64,
}

impl QualityResult {
    /// A result's `quality` holding only `suites`, with the settings of a default run and no
    /// journal (simulated and test results).
    pub(crate) fn of_suites(suites: BTreeMap<String, SuiteSummary>) -> QualityResult {
        QualityResult {
            settings: QualitySettings {
                suites: suites.keys().cloned().collect(),
                lengths: Vec::new(),
                lengths_source: "user".into(),
                server_max_len: None,
                depths: crate::quality::DEFAULT_DEPTHS.to_vec(),
                items: crate::quality::DEFAULT_ITEMS,
                logprobs: crate::quality::DEFAULT_LOGPROBS,
                max_tokens: None,
                seed: 0,
                endpoint: crate::client::Endpoint::Chat,
                temperature: 0.0,
                top_p: 1.0,
                tokenizer: false,
                interrupted: false,
            },
            journal: String::new(),
            duration_s: 0.0,
            suites,
        }
    }
}
