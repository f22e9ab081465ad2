//! Metrics derived from raw request records: the one place where each definition lives
//! (documented in docs/metrics.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::RequestRecord;
use crate::stats::Summary;

const NS_PER_MS: f64 = 1e6;

/// Latency metrics, each a [`Summary`] in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Metrics {
    /// Time to first token of any channel (answer or reasoning), from send.
    pub ttft_ms: Summary,
    /// Time to first answer (content) token, from send.
    pub ttft_answer_ms: Summary,
    /// Gaps between consecutive token-bearing chunks of a request, pooled over requests.
    pub itl_ms: Summary,
    /// Time per output token after the first: (e2e − ttft) / (output tokens − 1).
    pub tpot_ms: Summary,
    /// End-to-end latency: send to end of stream.
    pub e2e_ms: Summary,
    /// Open loop: time between the scheduled send and the actual send (client queueing).
    pub queue_ms: Option<Summary>,
    /// Open loop: time to first token from the scheduled send (coordinated omission corrected).
    pub ttft_from_scheduled_ms: Option<Summary>,
    /// Open loop: end-to-end latency from the scheduled send.
    pub e2e_from_scheduled_ms: Option<Summary>,
}

impl Metrics {
    /// The latency summary named `key` (`ttft_ms`, `itl_ms`, ...).
    pub fn get(&self, key: &str) -> Option<&Summary> {
        match key {
            "ttft_ms" => Some(&self.ttft_ms),
            "ttft_answer_ms" => Some(&self.ttft_answer_ms),
            "itl_ms" => Some(&self.itl_ms),
            "tpot_ms" => Some(&self.tpot_ms),
            "e2e_ms" => Some(&self.e2e_ms),
            "queue_ms" => self.queue_ms.as_ref(),
            "ttft_from_scheduled_ms" => self.ttft_from_scheduled_ms.as_ref(),
            "e2e_from_scheduled_ms" => self.e2e_from_scheduled_ms.as_ref(),
            _ => None,
        }
    }
}

/// Request counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RequestCounts {
    /// Measured requests sent (warmup excluded).
    pub total: u64,
    /// Completed without error.
    pub completed: u64,
    /// Failed (any error kind, cancellations included).
    pub failed: u64,
    /// Completed requests that produced no token at all.
    pub no_tokens: u64,
    /// Warmup requests sent before measuring (excluded from everything else).
    pub warmup: u64,
}

/// Token totals over completed, measured requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Tokens {
    /// Prompt tokens (server `usage` when every request had it, else kvbench's count).
    pub prompt_total: Option<u64>,
    /// Where `prompt_total` comes from: `server`, `tokenizer_or_estimate`.
    pub prompt_source: Option<String>,
    /// Output tokens (server `usage.completion_tokens`, else token-bearing chunks).
    pub output_total: u64,
    /// Where `output_total` comes from: `server`, `chunks` or `mixed`.
    pub output_source: String,
    /// Reasoning tokens (server detail when given, else reasoning chunks).
    pub reasoning_total: u64,
    /// Prompt tokens per request as the server counted them.
    pub prompt_per_request: Summary,
    /// Prompt tokens per request as kvbench counted (tokenizer) or estimated them.
    pub prompt_per_request_client: Summary,
    /// Output tokens per request.
    pub output_per_request: Summary,
}

/// Throughput over the measured window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Throughput {
    /// Completed requests per second.
    pub requests_per_s: Option<f64>,
    /// Output tokens per second.
    pub output_tok_per_s: Option<f64>,
    /// Prompt plus output tokens per second (`null` when prompt tokens are unknown).
    pub total_tok_per_s: Option<f64>,
}

/// Everything derived from a run's records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Derived {
    /// Request counts.
    pub requests: RequestCounts,
    /// Errors by kind (`http_503`, `stream_reset`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Non-fatal stream oddities by kind.
    pub anomalies: BTreeMap<String, u64>,
    /// Finish reasons of completed requests.
    pub finish_reasons: BTreeMap<String, u64>,
    /// Token totals.
    pub tokens: Tokens,
    /// Latency metrics.
    pub metrics: Metrics,
    /// Throughput.
    pub throughput: Throughput,
    /// Measured window: first send to last end, seconds (`null` when nothing was sent).
    pub duration_s: Option<f64>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / NS_PER_MS
}

/// The latency samples one completed request contributes (the definitions of docs/metrics.md).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordLatency {
    /// First token of any channel, from send.
    pub ttft_ms: Option<f64>,
    /// First answer token, from send.
    pub ttft_answer_ms: Option<f64>,
    /// (e2e − ttft) / (output tokens − 1), with at least two output tokens.
    pub tpot_ms: Option<f64>,
    /// Send to end.
    pub e2e_ms: f64,
    /// Gaps between consecutive token-bearing chunks.
    pub itl_ms: Vec<f64>,
    /// Output tokens.
    pub output_tokens: u64,
}

/// Latency samples of one completed request.
pub fn record_latency(r: &RequestRecord) -> RecordLatency {
    let e = r.end_ns.saturating_sub(r.sent_ns);
    let out = r.output_tokens();
    let ttft = r.first_token_ns.map(|ft| ft.saturating_sub(r.sent_ns));
    RecordLatency {
        ttft_ms: ttft.map(ms),
        ttft_answer_ms: r.first_answer_ns.map(|fa| ms(fa.saturating_sub(r.sent_ns))),
        tpot_ms: ttft
            .filter(|_| out >= 2)
            .map(|t| ms(e.saturating_sub(t)) / (out - 1) as f64),
        e2e_ms: ms(e),
        itl_ms: r
            .chunk_ns
            .windows(2)
            .map(|w| ms(w[1].saturating_sub(w[0])))
            .collect(),
        output_tokens: out,
    }
}

/// Per-request samples of a run's completed, measured requests, for confidence intervals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    /// TTFT per request.
    pub ttft_ms: Vec<f64>,
    /// Answer TTFT per request.
    pub ttft_answer_ms: Vec<f64>,
    /// Every inter-token gap.
    pub itl_ms: Vec<f64>,
    /// TPOT per request.
    pub tpot_ms: Vec<f64>,
    /// E2E per request.
    pub e2e_ms: Vec<f64>,
    /// (output tokens, e2e ms) per request, for throughput intervals.
    pub tokens_e2e: Vec<(f64, f64)>,
}

impl Samples {
    /// The samples of metric `name` (`ttft_ms`, `itl_ms`, ...).
    pub fn get(&self, name: &str) -> Option<&[f64]> {
        Some(match name {
            "ttft_ms" => &self.ttft_ms,
            "ttft_answer_ms" => &self.ttft_answer_ms,
            "itl_ms" => &self.itl_ms,
            "tpot_ms" => &self.tpot_ms,
            "e2e_ms" => &self.e2e_ms,
            _ => return None,
        })
    }
}

/// Collects the samples of completed, measured requests.
pub fn samples(records: &[RequestRecord]) -> Samples {
    let mut s = Samples::default();
    for r in records.iter().filter(|r| !r.warmup && r.ok()) {
        let l = record_latency(r);
        s.ttft_ms.extend(l.ttft_ms);
        s.ttft_answer_ms.extend(l.ttft_answer_ms);
        s.tpot_ms.extend(l.tpot_ms);
        s.e2e_ms.push(l.e2e_ms);
        s.tokens_e2e.push((l.output_tokens as f64, l.e2e_ms));
        s.itl_ms.extend(l.itl_ms);
    }
    s
}

/// Derives every metric from `records`. Warmup records are ignored; `open_loop` adds the
/// from-scheduled metrics.
pub fn derive(records: &[RequestRecord], open_loop: bool) -> Derived {
    let mut d = Derived::default();
    let measured: Vec<&RequestRecord> = records.iter().filter(|r| !r.warmup).collect();
    d.requests.warmup = records.iter().filter(|r| r.warmup).count() as u64;
    d.requests.total = measured.len() as u64;

    let (mut ttft, mut ttfa, mut itl, mut tpot, mut e2e) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut queue, mut ttft_s, mut e2e_s) = (Vec::new(), Vec::new(), Vec::new());
    let (mut p_server, mut p_client, mut out_per) = (Vec::new(), Vec::new(), Vec::new());
    let mut all_server_prompt = true;
    let mut server_out = 0u64;
    let mut chunk_out = 0u64;

    for r in &measured {
        for (k, n) in &r.anomalies {
            *d.anomalies.entry(k.clone()).or_default() += *n as u64;
        }
        if let Some(kind) = r.error {
            d.requests.failed += 1;
            *d.errors.entry(kind.key(r.status)).or_default() += 1;
            continue;
        }
        d.requests.completed += 1;
        if let Some(f) = &r.finish_reason {
            *d.finish_reasons.entry(f.clone()).or_default() += 1;
        }
        let lat = record_latency(r);
        e2e.push(lat.e2e_ms);
        ttft.extend(lat.ttft_ms);
        ttfa.extend(lat.ttft_answer_ms);
        tpot.extend(lat.tpot_ms);
        itl.extend(lat.itl_ms);
        if open_loop {
            queue.push(ms(r.sent_ns.saturating_sub(r.scheduled_ns)));
            e2e_s.push(ms(r.end_ns.saturating_sub(r.scheduled_ns)));
        }
        let out = r.output_tokens();
        out_per.push(out as f64);
        match r.usage.and_then(|u| u.completion_tokens) {
            Some(_) => server_out += 1,
            None => chunk_out += 1,
        }
        d.tokens.output_total += out;
        d.tokens.reasoning_total += r
            .usage
            .and_then(|u| u.reasoning_tokens)
            .unwrap_or(r.reasoning_chunks as u64);
        match r.usage.and_then(|u| u.prompt_tokens) {
            Some(p) => p_server.push(p as f64),
            None => all_server_prompt = false,
        }
        if let Some(p) = r.prompt_tokens_est {
            p_client.push(p as f64);
        }
        if r.chunk_ns.is_empty() {
            d.requests.no_tokens += 1;
        }
        if let (Some(ft), true) = (r.first_token_ns, open_loop) {
            ttft_s.push(ms(ft.saturating_sub(r.scheduled_ns)));
        }
    }

    d.metrics = Metrics {
        ttft_ms: Summary::of(&ttft),
        ttft_answer_ms: Summary::of(&ttfa),
        itl_ms: Summary::of(&itl),
        tpot_ms: Summary::of(&tpot),
        e2e_ms: Summary::of(&e2e),
        queue_ms: open_loop.then(|| Summary::of(&queue)),
        ttft_from_scheduled_ms: open_loop.then(|| Summary::of(&ttft_s)),
        e2e_from_scheduled_ms: open_loop.then(|| Summary::of(&e2e_s)),
    };

    d.tokens.output_source = match (server_out, chunk_out) {
        (_, 0) => "server",
        (0, _) => "chunks",
        _ => "mixed",
    }
    .to_owned();
    if d.requests.completed > 0 {
        if all_server_prompt {
            d.tokens.prompt_total = Some(p_server.iter().sum::<f64>() as u64);
            d.tokens.prompt_source = Some("server".into());
        } else if p_client.len() as u64 == d.requests.completed {
            d.tokens.prompt_total = Some(p_client.iter().sum::<f64>() as u64);
            d.tokens.prompt_source = Some("tokenizer_or_estimate".into());
        }
    }
    d.tokens.prompt_per_request = Summary::of(&p_server);
    d.tokens.prompt_per_request_client = Summary::of(&p_client);
    d.tokens.output_per_request = Summary::of(&out_per);

    let start = measured.iter().map(|r| r.sent_ns).min();
    let end = measured.iter().map(|r| r.end_ns).max();
    if let (Some(s), Some(e)) = (start, end) {
        let secs = e.saturating_sub(s) as f64 / 1e9;
        d.duration_s = Some(secs);
        if secs > 0.0 {
            d.throughput.requests_per_s = Some(d.requests.completed as f64 / secs);
            d.throughput.output_tok_per_s = Some(d.tokens.output_total as f64 / secs);
            d.throughput.total_tok_per_s = d
                .tokens
                .prompt_total
                .map(|p| (p + d.tokens.output_total) as f64 / secs);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ErrorKind;
    use crate::record::Usage;

    const MS: u64 = 1_000_000;

    fn rec(sent: u64, chunks: &[u64], end: u64) -> RequestRecord {
        RequestRecord {
            scheduled_ns: sent,
            sent_ns: sent,
            first_token_ns: chunks.first().copied(),
            first_answer_ns: chunks.first().copied(),
            chunk_ns: chunks.to_vec(),
            end_ns: end,
            finish_reason: Some("length".into()),
            ..RequestRecord::default()
        }
    }

    #[test]
    fn hand_computed_request() {
        // Sent at 0; tokens at 100, 120, 150 ms; end at 160 ms; server says 3 output tokens.
        let mut r = rec(0, &[100 * MS, 120 * MS, 150 * MS], 160 * MS);
        r.usage = Some(Usage {
            prompt_tokens: Some(10),
            completion_tokens: Some(3),
            reasoning_tokens: None,
        });
        let d = derive(&[r], false);
        assert_eq!(d.metrics.ttft_ms.p50, Some(100.0));
        assert_eq!(d.metrics.e2e_ms.p50, Some(160.0));
        assert_eq!(d.metrics.itl_ms.count, 2);
        assert_eq!(d.metrics.itl_ms.min, Some(20.0));
        assert_eq!(d.metrics.itl_ms.max, Some(30.0));
        assert_eq!(d.metrics.tpot_ms.p50, Some(30.0)); // (160-100)/(3-1)
        assert_eq!(d.tokens.prompt_total, Some(10));
        assert_eq!(d.tokens.output_source, "server");
        assert_eq!(d.duration_s, Some(0.16));
        let tput = d.throughput.output_tok_per_s.unwrap();
        assert!((tput - 3.0 / 0.16).abs() < 1e-9);
        assert!((d.throughput.total_tok_per_s.unwrap() - 13.0 / 0.16).abs() < 1e-9);
        assert!(d.metrics.queue_ms.is_none());
    }

    #[test]
    fn reasoning_first_splits_ttft_and_answer_ttft() {
        let mut r = rec(0, &[50 * MS, 60 * MS, 90 * MS], 100 * MS);
        r.first_answer_ns = Some(90 * MS);
        r.reasoning_chunks = 2;
        let d = derive(&[r], false);
        assert_eq!(d.metrics.ttft_ms.p50, Some(50.0));
        assert_eq!(d.metrics.ttft_answer_ms.p50, Some(90.0));
        assert_eq!(d.tokens.reasoning_total, 2);
        assert_eq!(d.tokens.output_source, "chunks");
        assert_eq!(
            d.tokens.prompt_total, None,
            "no usage and no estimate: unknown"
        );
        assert_eq!(d.throughput.total_tok_per_s, None);
    }

    #[test]
    fn failures_warmup_and_zero_token_streams() {
        let warm = RequestRecord {
            warmup: true,
            ..rec(0, &[MS], 2 * MS)
        };
        let mut failed = rec(10 * MS, &[], 20 * MS);
        failed.error = Some(ErrorKind::HttpStatus);
        failed.status = Some(503);
        let empty = rec(10 * MS, &[], 30 * MS);
        let d = derive(&[warm, failed, empty], false);
        assert_eq!(d.requests.warmup, 1);
        assert_eq!(d.requests.total, 2);
        assert_eq!(d.requests.completed, 1);
        assert_eq!(d.requests.failed, 1);
        assert_eq!(d.requests.no_tokens, 1);
        assert_eq!(d.errors.get("http_503"), Some(&1));
        assert_eq!(
            d.metrics.ttft_ms.count, 0,
            "a zero-token stream is not a TTFT sample"
        );
        assert_eq!(d.metrics.ttft_ms.p50, None);
        assert_eq!(d.metrics.e2e_ms.p50, Some(20.0));
        assert_eq!(d.duration_s, Some(0.02), "window is min send to max end");
    }

    #[test]
    fn open_loop_measures_from_schedule() {
        let mut r = rec(30 * MS, &[80 * MS], 100 * MS);
        r.scheduled_ns = 10 * MS;
        let d = derive(&[r], true);
        assert_eq!(d.metrics.queue_ms.unwrap().p50, Some(20.0));
        assert_eq!(d.metrics.ttft_from_scheduled_ms.unwrap().p50, Some(70.0));
        assert_eq!(d.metrics.e2e_from_scheduled_ms.unwrap().p50, Some(90.0));
        assert_eq!(d.metrics.ttft_ms.p50, Some(50.0));
    }

    #[test]
    fn nothing_measured_is_null_not_zero() {
        let d = derive(&[], false);
        assert_eq!(d.duration_s, None);
        assert_eq!(d.throughput.output_tok_per_s, None);
        assert_eq!(d.metrics.e2e_ms.mean, None);
    }
}

/// Latency targets of one request (`--slo ttft_ms=2000 --slo tpot_ms=50`): a request is *good*
/// when it completed and met every target given (docs/metrics.md, "Goodput").
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Slo {
    /// Time to first token, ms.
    pub ttft_ms: Option<f64>,
    /// Time per output token after the first, ms.
    pub tpot_ms: Option<f64>,
    /// End-to-end latency, ms.
    pub e2e_ms: Option<f64>,
}

impl Slo {
    /// No target given.
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2e_ms.is_none()
    }

    /// Sets the target of `metric` (`ttft_ms`, `tpot_ms`, `e2e_ms`).
    pub fn set(&mut self, metric: &str, ms: f64) -> Result<(), String> {
        let slot = match metric {
            "ttft_ms" => &mut self.ttft_ms,
            "tpot_ms" => &mut self.tpot_ms,
            "e2e_ms" => &mut self.e2e_ms,
            m => {
                return Err(format!(
                    "{m:?} is not a latency target (ttft_ms, tpot_ms or e2e_ms)"
                ))
            }
        };
        if slot.is_some() {
            return Err(format!("the {metric} target is given twice"));
        }
        *slot = Some(ms);
        Ok(())
    }

    /// Whether one completed request met every target. A metric the request does not have
    /// (the TPOT of a one-token answer, the TTFT of an answer without tokens) is not held
    /// against it.
    pub fn met(&self, l: &RecordLatency) -> bool {
        let within = |target: Option<f64>, v: Option<f64>| match (target, v) {
            (Some(t), Some(v)) => v <= t,
            _ => true,
        };
        within(self.ttft_ms, l.ttft_ms)
            && within(self.tpot_ms, l.tpot_ms)
            && within(self.e2e_ms, Some(l.e2e_ms))
    }
}

/// A latency target as `--slo` takes it: `METRIC=MS`, e.g. `ttft_ms=2000`.
pub fn parse_slo_target(s: &str) -> Result<(String, f64), String> {
    let (m, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not METRIC=MS (e.g. ttft_ms=2000)"))?;
    let ms: f64 = v
        .trim()
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite() && *x > 0.0)
        .ok_or_else(|| format!("{v:?} is not a positive number of milliseconds"))?;
    let mut probe = Slo::default();
    probe.set(m.trim(), ms)?;
    Ok((m.trim().to_owned(), ms))
}

/// How many measured requests met the latency targets (docs/metrics.md, "Goodput").
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Goodput {
    /// The targets.
    pub targets: Slo,
    /// Measured requests (warmup excluded; failed ones included: they met no target).
    pub requests: u64,
    /// Completed requests that met every target.
    pub good: u64,
    /// `good / requests`; `null` without requests.
    pub share: Option<f64>,
    /// Good requests per second of the measured window; `null` without a window.
    pub requests_per_s: Option<f64>,
}

/// Goodput of `records` under `slo`; `None` without targets.
pub fn goodput(records: &[RequestRecord], slo: &Slo, duration_s: Option<f64>) -> Option<Goodput> {
    if slo.is_empty() {
        return None;
    }
    let measured: Vec<&RequestRecord> = records.iter().filter(|r| !r.warmup).collect();
    let good = measured
        .iter()
        .filter(|r| r.ok() && slo.met(&record_latency(r)))
        .count() as u64;
    let requests = measured.len() as u64;
    Some(Goodput {
        targets: *slo,
        requests,
        good,
        share: (requests > 0).then(|| good as f64 / requests as f64),
        requests_per_s: duration_s.filter(|d| *d > 0.0).map(|d| good as f64 / d),
    })
}
