//! Runs the quality suites against a server: builds the items, sends each one greedily (one at
//! a time, so batching cannot change the numerics between arms), grades the answer channel,
//! appends one [`ItemRecord`] per item to the quality journal as it finishes, and summarises
//! each suite for the result JSON (`quality.<suite>`).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::degenerate::degenerate;
use super::generate::{self, Sizer, RETRIEVAL_MAX_TOKENS};
use super::grade::{grade, split_think};
use super::stats::{wilson, Z95};
use super::summary::{
    LengthScore, QualityResult, QualitySettings, Score, StoppedEarly, SuiteSummary,
};
use super::{fnv1a64, images, jsonl, Item, ItemRecord, QualityConfig, SuiteSpec};
use crate::client::request::{build_body, BodySpec, Sampling};
use crate::client::{Client, Endpoint, Engine};
use crate::record::{ErrorKind, RequestRecord};
use crate::workload::{Prompt, TokenCounter, WorkItem};

/// Tokens kept free for the chat template when retrieval lengths are derived from the
/// server's maximum.
pub const TEMPLATE_MARGIN: u64 = 64;
/// Times an item is sent again after failing before any response byte arrived.
pub const MAX_RETRIES: u32 = 2;
/// Retrieval lengths when the server's maximum is unknown.
pub const FALLBACK_LENGTHS: [u32; 2] = [1024, 2048];

/// What the quality phase needs from the run.
pub struct QualityEnv<'a> {
    /// The run's HTTP client.
    pub client: &'a Client,
    /// Endpoint to call.
    pub endpoint: Endpoint,
    /// Served model.
    pub model: String,
    /// Detected engine.
    pub engine: Engine,
    /// Send llama.cpp `cache_prompt: false`.
    pub no_prompt_cache: bool,
    /// Tokenizer for exact prompt sizes.
    pub tokenizer: Option<Arc<TokenCounter>>,
    /// The server's maximum tokens per request (vLLM `max_model_len`), when it told.
    pub max_model_len: Option<u64>,
    /// The model's training context (llama.cpp `n_ctx_train`), when the server told.
    pub n_ctx_train: Option<u64>,
    /// The run's time origin.
    pub origin: Instant,
    /// Print one line per suite on stderr.
    pub progress: bool,
    /// `ab`'s live view: the suite and item under way, and the lines above it.
    pub live: Option<&'a dyn Reporter>,
}

/// Where a quality run reports how far it is (`ab`'s live view implements it), so that this
/// module does not depend on the view.
pub trait Reporter: Send + Sync {
    /// A line above the view.
    fn note(&self, text: &str);
    /// Suite `suite` has `done` of `total` items.
    fn progress(&self, suite: &str, done: usize, total: usize);
    /// Whether the view is drawn on a terminal (else lines go to stderr as before).
    fn is_terminal(&self) -> bool;
}

/// A line on stderr, or above `ab`'s live view when it is shown.
fn say(env: &QualityEnv<'_>, text: &str) {
    match &env.live {
        Some(l) if l.is_terminal() => l.note(text),
        _ => eprintln!("kvbench: {text}"),
    }
}

/// Tells the live view how far suite `suite` is.
fn show(env: &QualityEnv<'_>, suite: &str, done: usize, total: usize) {
    if let Some(l) = &env.live {
        l.progress(suite, done, total);
    }
}

/// The server's maximum context per request, and where it was read. vLLM: `max_model_len` in
/// `/v1/models`. llama.cpp: the slot context `n_ctx` from `/props` (the `-c` value divided
/// among `-np` slots), else the model's training context.
pub async fn server_max_len(env: &QualityEnv<'_>) -> Option<(u64, String)> {
    if let Some(n) = env.max_model_len {
        return Some((n, "max_model_len".into()));
    }
    if env.engine == Engine::Llamacpp {
        let props = crate::client::body::get_json_capped(
            &env.client.root_url("props"),
            Duration::from_secs(5),
        )
        .await;
        if let Some(n) = props
            .as_ref()
            .and_then(|p| p.pointer("/default_generation_settings/n_ctx"))
            .and_then(Value::as_u64)
        {
            return Some((n, "llama.cpp /props n_ctx".into()));
        }
    }
    env.n_ctx_train.map(|n| (n, "n_ctx_train".into()))
}

/// Retrieval lengths up to the server's maximum: 1024, 2048, 4096, ... below the usable
/// length (maximum − answer budget − template margin), then the usable length itself rounded
/// down to a multiple of 256.
pub fn lengths_for_max(max_len: u64, answer_tokens: u32) -> Vec<u32> {
    let usable = max_len.saturating_sub(answer_tokens as u64 + TEMPLATE_MARGIN);
    let top = (usable / 256 * 256).min(u32::MAX as u64) as u32;
    if top < 256 {
        return vec![usable.max(1) as u32];
    }
    let mut out = Vec::new();
    let mut l = 1024u32;
    while l < top && top - l >= 256 {
        out.push(l);
        l = l.saturating_mul(2);
    }
    out.push(top);
    out
}

/// A suite ready to run: its spec, items, and the user-suite lines that were skipped.
pub type BuiltSuite = (SuiteSpec, Vec<Item>, Vec<jsonl::SkippedLine>);

/// Builds every suite's items (failing early on a bad user suite) and returns them with each
/// suite's skipped JSONL lines.
pub fn build_items(
    cfg: &QualityConfig,
    lengths: &[u32],
    endpoint: Endpoint,
    tok: Option<&TokenCounter>,
) -> anyhow::Result<Vec<BuiltSuite>> {
    let sizer = Sizer::new(tok);
    let mut out = Vec::new();
    for spec in &cfg.suites {
        let (items, skipped) = match spec {
            SuiteSpec::Passkey => (
                generate::passkey(cfg.seed, lengths, &cfg.depths, cfg.items, &sizer),
                vec![],
            ),
            SuiteSpec::Needle => (
                generate::needle(cfg.seed, lengths, &cfg.depths, cfg.items, &sizer),
                vec![],
            ),
            SuiteSpec::Arithmetic => (generate::arithmetic(cfg.seed, cfg.items, &sizer), vec![]),
            SuiteSpec::Copy => (generate::copy(cfg.seed, cfg.items, &sizer), vec![]),
            SuiteSpec::Images => {
                if endpoint == Endpoint::Completions {
                    bail!("the images quality suite needs --endpoint chat");
                }
                (images::images(cfg.seed, cfg.items), vec![])
            }
            SuiteSpec::Jsonl { path } => {
                let s = jsonl::load(path, &spec.name(), cfg.skip_invalid, tok)?;
                if endpoint == Endpoint::Completions
                    && s.items
                        .iter()
                        .any(|i| matches!(i.prompt, Prompt::Messages(_)) || !i.images.is_empty())
                {
                    bail!(
                        "quality suite {} has chat messages or images: use --endpoint chat",
                        path.display()
                    );
                }
                (s.items, s.skipped)
            }
        };
        out.push((spec.clone(), items, skipped));
    }
    Ok(out)
}

/// Runs every configured suite, writes the quality journal, and returns the result's
/// `quality` object.
pub async fn run_suites(
    cfg: &QualityConfig,
    env: &QualityEnv<'_>,
    cancel: &CancellationToken,
) -> anyhow::Result<QualityResult> {
    let t0 = Instant::now();
    let retrieval_budget = cfg.max_tokens.unwrap_or(RETRIEVAL_MAX_TOKENS);
    let max_len = server_max_len(env).await;
    let (lengths, lengths_source) = if !cfg.lengths.is_empty() {
        (cfg.lengths.clone(), "user".to_owned())
    } else if let Some((m, src)) = &max_len {
        (
            lengths_for_max(*m, retrieval_budget),
            format!("server ({src})"),
        )
    } else {
        (
            FALLBACK_LENGTHS.to_vec(),
            "default (server maximum unknown)".to_owned(),
        )
    };
    if env.progress {
        if let Some((m, _)) = &max_len {
            if let Some(l) = lengths
                .iter()
                .find(|&&l| l as u64 + retrieval_budget as u64 > *m)
            {
                say(
                    env,
                    &format!("warning: quality length {l} plus the answer exceeds the server's maximum of {m} tokens; those items will fail"),
                );
            }
        }
    }
    let suites = build_items(cfg, &lengths, env.endpoint, env.tokenizer.as_deref())?;
    let file = std::fs::File::create(&cfg.journal)
        .with_context(|| format!("cannot write quality journal {}", cfg.journal.display()))?;
    let mut journal = std::io::BufWriter::new(file);

    // The paired arm's items, by suite and id: (prompt hash, answered, correct).
    let paired: BTreeMap<(String, String), (String, bool, bool)> = match &cfg.paired_with {
        Some(p) => match super::read_journal(p) {
            Ok(recs) => recs
                .into_iter()
                .map(|r| {
                    let v = (r.prompt_hash.clone(), r.answered(), r.correct);
                    ((r.suite, r.id), v)
                })
                .collect(),
            Err(e) => {
                say(env, &format!("warning: quality suites run in full: {e:#}"));
                BTreeMap::new()
            }
        },
        None => BTreeMap::new(),
    };
    let mut out = BTreeMap::new();
    let mut seq = 0u64;
    for (spec, items, skipped) in suites {
        let name = spec.name();
        let started = Instant::now();
        let mut records = Vec::with_capacity(items.len());
        let (mut lost, mut gained) = (0u64, 0u64);
        let mut stopped_early = None;
        show(env, &name, 0, items.len());
        for item in &items {
            if cancel.is_cancelled() {
                break;
            }
            let r = run_item(cfg, env, item, seq, cancel).await?;
            seq += 1;
            show(env, &name, records.len() + 1, items.len());
            serde_json::to_writer(&mut journal, &r)?;
            journal.write_all(b"\n")?;
            journal.flush()?;
            if let Some((hash, answered, correct)) = paired.get(&(r.suite.clone(), r.id.clone())) {
                if *hash == r.prompt_hash && *answered && r.answered() {
                    lost += u64::from(*correct && !r.correct);
                    gained += u64::from(!*correct && r.correct);
                }
            }
            records.push(r);
            let p = super::stats::mcnemar_exact(lost, gained);
            if lost > gained && p < super::EARLY_STOP_P && records.len() < items.len() {
                stopped_early = Some(StoppedEarly {
                    after_items: records.len() as u64,
                    lost,
                    gained,
                    mcnemar_p: p,
                });
                break;
            }
        }
        let duration_s = started.elapsed().as_secs_f64();
        let mut summary = summarize(&records);
        summary.duration_s = duration_s;
        summary.planned = items.len() as u64;
        if let Some(stop) = stopped_early {
            if env.progress {
                say(
                    env,
                    &format!(
                        "quality {name}: stopped after {} of {} items: {} lost, {} gained against the paired arm (exact McNemar p = {:.1e})",
                        records.len(),
                        items.len(),
                        stop.lost,
                        stop.gained,
                        stop.mcnemar_p
                    ),
                );
            }
            summary.stopped_early = Some(stop);
        }
        if spec.is_retrieval() {
            summary.by_length = Some(by_length(&records));
        }
        if matches!(spec, SuiteSpec::Jsonl { .. }) {
            summary.skipped_lines = Some(skipped);
        }
        if env.progress {
            let s = &summary.score;
            say(
                env,
                &format!(
                    "quality {name}: {}/{} correct{}, {} errors, {:.1} s",
                    s.correct,
                    s.items,
                    s.accuracy
                        .map(|a| format!(" ({:.1} %)", a * 100.0))
                        .unwrap_or_default(),
                    s.errors,
                    duration_s
                ),
            );
        }
        out.insert(name, summary);
    }
    Ok(QualityResult {
        settings: QualitySettings {
            suites: cfg.suites.iter().map(SuiteSpec::name).collect(),
            lengths,
            lengths_source,
            server_max_len: max_len.as_ref().map(|(m, _)| *m),
            depths: cfg.depths.clone(),
            items: cfg.items,
            logprobs: cfg.logprobs,
            max_tokens: cfg.max_tokens,
            seed: cfg.seed,
            endpoint: env.endpoint,
            temperature: 0.0,
            top_p: 1.0,
            tokenizer: env.tokenizer.is_some(),
            interrupted: cancel.is_cancelled(),
        },
        journal: cfg.journal.display().to_string(),
        duration_s: t0.elapsed().as_secs_f64(),
        suites: out,
    })
}

/// The hash of what the model is asked: the body's `messages` or `prompt` (images included).
fn prompt_hash(body: &Value) -> String {
    let part = body
        .get("messages")
        .or_else(|| body.get("prompt"))
        .cloned()
        .unwrap_or(Value::Null);
    format!("{:016x}", fnv1a64(part.to_string().as_bytes()))
}

async fn run_item(
    cfg: &QualityConfig,
    env: &QualityEnv<'_>,
    item: &Item,
    seq: u64,
    cancel: &CancellationToken,
) -> anyhow::Result<ItemRecord> {
    let spec = BodySpec {
        endpoint: env.endpoint,
        model: env.model.clone(),
        engine: env.engine,
        sampling: Sampling {
            max_tokens: cfg.max_tokens.unwrap_or(item.max_tokens),
            temperature: 0.0,
            top_p: 1.0,
            seed: Some(cfg.seed),
            ignore_eos: false,
            top_logprobs: (cfg.logprobs > 0).then_some(cfg.logprobs),
        },
        no_prompt_cache: env.no_prompt_cache,
    };
    let work = WorkItem {
        prompt: item.prompt.clone(),
        images: item.images.clone(),
        max_tokens: None,
        prompt_tokens_est: item.prompt_tokens_est,
    };
    let body = build_body(&spec, &work, "");
    let hash = prompt_hash(&body);
    let bytes = bytes::Bytes::from(serde_json::to_vec(&body)?);
    let mut retries = 0;
    let (rec, logprobs) = loop {
        let mut rec = RequestRecord {
            id: seq,
            prompt_tokens_est: item.prompt_tokens_est,
            ..RequestRecord::default()
        };
        let mut logprobs = Vec::new();
        env.client
            .stream_with_logprobs(
                env.endpoint,
                bytes.clone(),
                &mut rec,
                env.origin,
                cancel,
                &mut logprobs,
            )
            .await;
        // A keep-alive connection the server closed while idle fails before any byte comes
        // back; nothing was received, and a greedy item may simply be sent again.
        let retryable = matches!(rec.error, Some(ErrorKind::Other | ErrorKind::Connect))
            && rec.first_byte_ns.is_none()
            && !cancel.is_cancelled();
        if retryable && retries < MAX_RETRIES {
            retries += 1;
            continue;
        }
        break (rec, logprobs);
    };
    let mut r = ItemRecord {
        suite: item.suite.clone(),
        id: item.id.clone(),
        prompt_hash: hash,
        length: item.length,
        depth: item.depth,
        expected: item.expected.clone(),
        grader: Some(item.grader.clone()),
        finish_reason: rec.finish_reason.clone(),
        prompt_tokens: rec.usage.and_then(|u| u.prompt_tokens),
        prompt_tokens_est: item.prompt_tokens_est,
        output_tokens: rec.usage.and_then(|u| u.completion_tokens),
        reasoning_tokens: rec
            .usage
            .and_then(|u| u.reasoning_tokens)
            .or((rec.reasoning_chunks > 0).then_some(rec.reasoning_chunks as u64)),
        e2e_ms: rec.end_ns.saturating_sub(rec.sent_ns) as f64 / 1e6,
        logprobs: (cfg.logprobs > 0 && !logprobs.is_empty()).then_some(logprobs),
        retries,
        ..ItemRecord::default()
    };
    if let Some(kind) = rec.error {
        r.error = Some(format!(
            "{}: {}",
            kind.key(rec.status),
            rec.error_message.unwrap_or_default()
        ));
        r.reasoning = rec.reasoning_text;
        return Ok(r);
    }
    let (answer, think) = split_think(rec.output_text.as_deref().unwrap_or(""));
    let reasoning = match (rec.reasoning_text, think) {
        (Some(a), Some(b)) => Some(format!("{a}\n{b}")),
        (a, b) => a.or(b),
    };
    let g = grade(&item.grader, &item.expected, &answer);
    r.correct = g.correct;
    r.extracted = g.extracted;
    r.degenerate = degenerate(&answer).map(str::to_owned).or_else(|| {
        reasoning
            .as_deref()
            .and_then(degenerate)
            .map(|d| format!("reasoning_{d}"))
    });
    r.answer = Some(answer);
    r.reasoning = reasoning;
    Ok(r)
}

/// `{items, correct, accuracy, ci_low, ci_high}` over answered records, plus errors.
fn score(records: &[&ItemRecord]) -> Score {
    let answered: Vec<&&ItemRecord> = records.iter().filter(|r| r.answered()).collect();
    let n = answered.len() as u64;
    let correct = answered.iter().filter(|r| r.correct).count() as u64;
    let ci = wilson(correct, n, Z95);
    Score {
        items: n,
        correct,
        accuracy: (n > 0).then(|| correct as f64 / n as f64),
        ci_low: ci.map(|c| c.0),
        ci_high: ci.map(|c| c.1),
        errors: records.iter().filter(|r| !r.answered()).count() as u64,
    }
}

fn mean(values: impl Iterator<Item = u64>) -> Option<f64> {
    let v: Vec<u64> = values.collect();
    (!v.is_empty()).then(|| v.iter().sum::<u64>() as f64 / v.len() as f64)
}

/// A suite's summary: the score, degenerate answers, finish reasons and token counts (its
/// duration, plan and detail are the caller's).
fn summarize(records: &[ItemRecord]) -> SuiteSummary {
    let refs: Vec<&ItemRecord> = records.iter().collect();
    let answered = records.iter().filter(|r| r.answered());
    let mut finish: BTreeMap<String, u64> = BTreeMap::new();
    let mut degenerate: BTreeMap<String, u64> = BTreeMap::new();
    for r in answered.clone() {
        *finish
            .entry(r.finish_reason.clone().unwrap_or_else(|| "none".into()))
            .or_default() += 1;
        if let Some(d) = &r.degenerate {
            *degenerate.entry(d.clone()).or_default() += 1;
        }
    }
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for r in records.iter().filter(|r| !r.answered()) {
        let kind = r
            .error
            .as_deref()
            .and_then(|e| e.split(':').next())
            .unwrap_or("other");
        *errors.entry(kind.to_owned()).or_default() += 1;
    }
    let answered_n = answered.clone().count();
    SuiteSummary {
        score: score(&refs),
        error_kinds: errors,
        finish_reasons: finish,
        degenerate,
        output_tokens_total: answered.clone().filter_map(|r| r.output_tokens).sum(),
        reasoning_tokens_total: answered.clone().filter_map(|r| r.reasoning_tokens).sum(),
        prompt_tokens_mean: mean(answered.clone().filter_map(|r| r.prompt_tokens)),
        e2e_ms_mean: answered
            .map(|r| r.e2e_ms)
            .reduce(|a, b| a + b)
            .map(|s| s / answered_n as f64),
        ..SuiteSummary::default()
    }
}

/// Retrieval detail: the score per context length, and per depth within each length.
fn by_length(records: &[ItemRecord]) -> BTreeMap<String, LengthScore> {
    let mut lengths: BTreeMap<u32, Vec<&ItemRecord>> = BTreeMap::new();
    for r in records {
        if let Some(l) = r.length {
            lengths.entry(l).or_default().push(r);
        }
    }
    let mut out = BTreeMap::new();
    for (len, recs) in lengths {
        let mut depths: Vec<(f64, Vec<&ItemRecord>)> = Vec::new();
        for r in &recs {
            let d = r.depth.unwrap_or(0.0);
            match depths.iter_mut().find(|(x, _)| *x == d) {
                Some((_, v)) => v.push(r),
                None => depths.push((d, vec![r])),
            }
        }
        depths.sort_by(|a, b| a.0.total_cmp(&b.0));
        let length = LengthScore {
            score: score(&recs),
            prompt_tokens_mean: mean(recs.iter().filter_map(|r| r.prompt_tokens)),
            by_depth: depths
                .into_iter()
                .map(|(d, v)| (d.to_string(), score(&v)))
                .collect(),
        };
        out.insert(len.to_string(), length);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_reach_the_server_maximum() {
        // 2048 - 24 - 64 = 1960 usable, rounded down to 1792.
        assert_eq!(lengths_for_max(2048, 24), vec![1024, 1792]);
        assert_eq!(lengths_for_max(4096, 24), vec![1024, 2048, 3840]);
        // 8192 - 88 = 8104 -> 7936; 4096 is followed by the top.
        assert_eq!(lengths_for_max(8192, 24), vec![1024, 2048, 4096, 7936]);
        // Tiny contexts still get one length.
        assert_eq!(lengths_for_max(512, 24), vec![256]);
        assert_eq!(lengths_for_max(200, 24), vec![112]);
    }

    fn rec(len: u32, depth: f64, correct: bool, error: bool) -> ItemRecord {
        ItemRecord {
            suite: "passkey".into(),
            id: format!("{len}-{depth}"),
            length: Some(len),
            depth: Some(depth),
            answer: (!error).then(|| "x".into()),
            error: error.then(|| "http_400: too long".into()),
            correct,
            finish_reason: Some("stop".into()),
            prompt_tokens: (!error).then_some(len as u64 + 20),
            ..ItemRecord::default()
        }
    }

    #[test]
    fn summaries_count_answered_items_and_errors_apart() {
        let records = vec![
            rec(1024, 0.0, true, false),
            rec(1024, 0.5, false, false),
            rec(1024, 0.5, true, false),
            rec(2048, 0.0, false, true),
            rec(2048, 0.5, true, false),
        ];
        // As the result's JSON has them.
        let s = serde_json::to_value(summarize(&records)).unwrap();
        assert_eq!(s["items"], 4);
        assert_eq!(s["correct"], 3);
        assert_eq!(s["accuracy"], 0.75);
        assert_eq!(s["errors"], 1);
        assert_eq!(s["error_kinds"]["http_400"], 1);
        let (lo, hi) = wilson(3, 4, Z95).unwrap();
        assert_eq!(s["ci_low"], lo);
        assert_eq!(s["ci_high"], hi);
        let b = serde_json::to_value(by_length(&records)).unwrap();
        assert_eq!(b["1024"]["items"], 3);
        assert_eq!(b["1024"]["correct"], 2);
        assert_eq!(b["1024"]["prompt_tokens_mean"], 1044.0);
        assert_eq!(b["1024"]["by_depth"]["0.5"]["accuracy"], 0.5);
        assert_eq!(b["2048"]["items"], 1);
        assert_eq!(b["2048"]["errors"], 1);
        assert_eq!(b["2048"]["by_depth"]["0"]["items"], 0);
        assert!(b["2048"]["by_depth"]["0"]["accuracy"].is_null());
    }
}
