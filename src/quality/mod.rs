//! Answer quality: graded, KV-sensitive suites and cross-arm agreement.
//!
//! "Quality kept" is half of the decision on a KV-cache change, and it fails first where the KV
//! cache matters most: retrieving a fact from far back in a long context, and long generations.
//! This module generates such suites itself (seeded, nothing downloaded: [`generate`],
//! [`images`]), reads user suites ([`jsonl`]), grades answers with documented rules
//! ([`grade`]), flags loops and noise ([`degenerate`]), and runs the items against a server
//! ([`run`]) between warmup and the performance phase of `kvbench run`. Each item's answer,
//! grade and log-probabilities go to a journal, so two arms can later be compared item by item
//! with [`agreement`], a pure function.
//!
//! Rules, prompts and statistics are described in docs/quality.md.

pub mod agreement;
pub mod degenerate;
pub mod generate;
pub mod grade;
pub mod images;
pub mod jsonl;
pub mod run;
pub mod stats;
pub mod summary;

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use agreement::{agreement, Agreement};
pub use run::run_suites;
pub use summary::{QualityResult, SuiteSummary};

use crate::client::chunk::TokenLogprob;
use crate::workload::Prompt;
use grade::Grader;

/// A suite named on the command line (`--quality passkey,needle,...,jsonl:PATH`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SuiteSpec {
    /// A random pass key hidden at several depths of filler, at several context lengths.
    Passkey,
    /// Several key-value pairs among filler; asked for one.
    Needle,
    /// Multi-digit arithmetic with exact answers.
    Arithmetic,
    /// Repeat a random string exactly.
    Copy,
    /// Images kvbench draws (a number, a count of shapes), for vision-language models.
    Images,
    /// A user JSONL suite.
    Jsonl {
        /// File path.
        path: PathBuf,
    },
}

impl SuiteSpec {
    /// The suite's name: its key in the result's `quality` object. User suites are
    /// `jsonl:STEM`, after the file name without its extension.
    pub fn name(&self) -> String {
        match self {
            SuiteSpec::Passkey => "passkey".into(),
            SuiteSpec::Needle => "needle".into(),
            SuiteSpec::Arithmetic => "arithmetic".into(),
            SuiteSpec::Copy => "copy".into(),
            SuiteSpec::Images => "images".into(),
            SuiteSpec::Jsonl { path } => format!(
                "jsonl:{}",
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "suite".into())
            ),
        }
    }

    /// Whether this suite hides facts in long contexts (results are broken down by length).
    pub fn is_retrieval(&self) -> bool {
        matches!(self, SuiteSpec::Passkey | SuiteSpec::Needle)
    }
}

impl std::str::FromStr for SuiteSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "passkey" => Ok(Self::Passkey),
            "needle" => Ok(Self::Needle),
            "arithmetic" => Ok(Self::Arithmetic),
            "copy" => Ok(Self::Copy),
            "images" => Ok(Self::Images),
            other => match other.strip_prefix("jsonl:") {
                Some(p) if !p.is_empty() => Ok(Self::Jsonl { path: p.into() }),
                _ => Err(format!(
                    "unknown quality suite {other:?}: expected passkey, needle, arithmetic, copy, images or jsonl:PATH"
                )),
            },
        }
    }
}

/// Validated quality settings (from `--quality*` options or an experiment's `[quality]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityConfig {
    /// Suites to run, in order.
    pub suites: Vec<SuiteSpec>,
    /// Context lengths in tokens for retrieval suites; empty = derived from the server's
    /// maximum length.
    pub lengths: Vec<u32>,
    /// Depths (0 = start of the context, 1 = end) at which retrieval facts are hidden.
    pub depths: Vec<f64>,
    /// Items per generated suite (retrieval: at least this many, a whole number per
    /// length × depth cell).
    pub items: u32,
    /// Top log-probabilities to request per token (0 = none).
    pub logprobs: u32,
    /// Output budget for every item instead of each suite's own (thinking models need more).
    pub max_tokens: Option<u32>,
    /// Seed for generated items (also sent as the sampling seed).
    pub seed: u64,
    /// Skip malformed lines of user suites (each is reported with its line number) instead of
    /// failing.
    pub skip_invalid: bool,
    /// Per-item journal (JSON lines).
    pub journal: PathBuf,
    /// Another arm's quality journal (the baseline's): each suite stops as soon as the paired
    /// items show a drop beyond doubt ([`EARLY_STOP_P`]).
    pub paired_with: Option<PathBuf>,
}

/// A suite run against a paired journal stops once the items lost outnumber those gained with
/// an exact McNemar p-value below this: a drop that the remaining items cannot plausibly undo.
pub const EARLY_STOP_P: f64 = 0.001;

/// Default depths: start, quarter, middle, three quarters, end.
pub const DEFAULT_DEPTHS: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];
/// Default items per generated suite.
pub const DEFAULT_ITEMS: u32 = 20;
/// Default top log-probabilities per token.
pub const DEFAULT_LOGPROBS: u32 = 5;

/// One item to send: a prompt, what a correct answer is, and how to grade it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Suite name.
    pub suite: String,
    /// Item id, unique within the suite and stable across arms for the same settings.
    pub id: String,
    /// The prompt.
    pub prompt: Prompt,
    /// Image data URLs (chat only).
    pub images: Vec<String>,
    /// The correct answer (or a pattern, for `regex`).
    pub expected: String,
    /// Grading rule.
    pub grader: Grader,
    /// Output budget.
    pub max_tokens: u32,
    /// Retrieval: target context length in tokens.
    pub length: Option<u32>,
    /// Retrieval: depth of the hidden fact (0–1).
    pub depth: Option<f64>,
    /// Prompt tokens as counted with the tokenizer, or estimated without one.
    pub prompt_tokens_est: Option<u64>,
}

/// What happened to one item on one arm: one line of the quality journal. Everything the
/// result's `quality` object and [`agreement`] need is here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Suite name.
    pub suite: String,
    /// Item id.
    pub id: String,
    /// FNV-1a 64 hash (hex) of the request's prompt and images, to check that two arms were
    /// asked the same thing.
    pub prompt_hash: String,
    /// Retrieval: target context length in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u32>,
    /// Retrieval: depth of the hidden fact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<f64>,
    /// The correct answer.
    pub expected: String,
    /// How it was graded.
    pub grader: Option<Grader>,
    /// The answer channel as received (`null` when the request failed).
    pub answer: Option<String>,
    /// Reasoning: the reasoning channel, or a `<think>` block split off the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// What grading extracted from the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extracted: Option<String>,
    /// Graded correct (always false for a failed request).
    pub correct: bool,
    /// `loop` or `gibberish` when the answer looks degenerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degenerate: Option<String>,
    /// Finish reason.
    pub finish_reason: Option<String>,
    /// Prompt tokens counted by the server.
    pub prompt_tokens: Option<u64>,
    /// Prompt tokens counted (tokenizer) or estimated by kvbench, template not included.
    pub prompt_tokens_est: Option<u64>,
    /// Output tokens counted by the server (reasoning included).
    pub output_tokens: Option<u64>,
    /// Reasoning tokens (server's count, else reasoning-only chunks).
    pub reasoning_tokens: Option<u64>,
    /// Wall time of the request in milliseconds.
    pub e2e_ms: f64,
    /// Why the request failed (error kind and message); `null` when it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Times the request was sent again after failing before any response byte arrived.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// Per-token log-probabilities, when requested and returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

impl ItemRecord {
    /// Whether the item was answered (the request completed).
    pub fn answered(&self) -> bool {
        self.error.is_none() && self.answer.is_some()
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Reads a quality journal (one [`ItemRecord`] per line), e.g. for `kvbench compare`.
pub fn read_journal(path: &Path) -> anyhow::Result<Vec<ItemRecord>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read quality journal {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                anyhow::anyhow!("{}:{}: not a quality record: {e}", path.display(), i + 1)
            })
        })
        .collect()
}

/// FNV-1a, 64 bits: a stable hash for comparing prompts across runs (std's hasher may change
/// between Rust releases). Hand-written: it is four lines.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names_parse_and_unknown_ones_are_rejected() {
        assert_eq!("passkey".parse::<SuiteSpec>(), Ok(SuiteSpec::Passkey));
        assert_eq!(
            "jsonl:dir/my suite.jsonl"
                .parse::<SuiteSpec>()
                .unwrap()
                .name(),
            "jsonl:my suite"
        );
        assert!("passkeys".parse::<SuiteSpec>().is_err());
        assert!("jsonl:".parse::<SuiteSpec>().is_err());
    }

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
