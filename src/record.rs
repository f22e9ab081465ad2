//! The raw record of one request: instants, not metrics.
//!
//! Every metric is derived from these records in one place (`crate::metrics`), so a definition
//! lives once and the per-request journal holds everything needed to recompute it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Token usage as counted by the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens counted by the server.
    pub prompt_tokens: Option<u64>,
    /// Output tokens counted by the server (reasoning included).
    pub completion_tokens: Option<u64>,
    /// Reasoning tokens, when the server breaks them out.
    pub reasoning_tokens: Option<u64>,
}

/// Why a request did not complete. Counted by kind in the result (`errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The connection could not be made (refused, DNS, unreachable).
    Connect,
    /// The request exceeded `--timeout`.
    Timeout,
    /// The server answered with a non-2xx status (the status is in the record).
    HttpStatus,
    /// The stream carried an `error` object.
    StreamError,
    /// The connection failed while the body was streaming (reset, truncated chunk).
    StreamReset,
    /// The stream ended without `[DONE]` and without a finish reason.
    Incomplete,
    /// The body was not an SSE stream of JSON chunks.
    InvalidResponse,
    /// The response went over one of the caps on what kvbench keeps from a server (a line or
    /// event without end, too many tokens, too much text; `client::body`).
    ResponseTooLarge,
    /// The run was interrupted (Ctrl-C) while the request was in flight.
    Cancelled,
    /// Any other client-side failure.
    Other,
}

impl ErrorKind {
    /// The key under which the error is counted; HTTP statuses are split by code (`http_503`).
    pub fn key(self, status: Option<u16>) -> String {
        match (self, status) {
            (ErrorKind::HttpStatus, Some(code)) => format!("http_{code}"),
            _ => serde_json::to_value(self)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "other".to_owned()),
        }
    }
}

/// One request as it happened. Instants are nanoseconds since the run's time origin.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Sequence number in the run (warmup requests first).
    pub id: u64,
    /// A warmup request: kept in the journal, excluded from every statistic.
    pub warmup: bool,
    /// When the schedule wanted the request sent (open loop), or when a worker took it (closed loop).
    pub scheduled_ns: u64,
    /// When the request was handed to the HTTP client.
    pub sent_ns: u64,
    /// When the response headers arrived.
    pub first_byte_ns: Option<u64>,
    /// When the first token of any channel (answer or reasoning) arrived.
    pub first_token_ns: Option<u64>,
    /// When the first answer (content) token arrived.
    pub first_answer_ns: Option<u64>,
    /// Arrival instant of every token-bearing chunk, in order.
    pub chunk_ns: Vec<u64>,
    /// How many of those chunks carried reasoning (the rest carried answer text).
    pub reasoning_chunks: u32,
    /// When the response ended (last byte, error or cancellation).
    pub end_ns: u64,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// Usage reported by the server, when it did.
    pub usage: Option<Usage>,
    /// Finish reason of the (first) choice.
    pub finish_reason: Option<String>,
    /// Why the request failed; `None` for a completed request.
    pub error: Option<ErrorKind>,
    /// A short description of the failure.
    pub error_message: Option<String>,
    /// Non-fatal oddities seen in the stream (e.g. `missing_done`, `malformed_chunk`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub anomalies: BTreeMap<String, u32>,
    /// Prompt tokens as kvbench estimated or counted them before sending.
    pub prompt_tokens_est: Option<u64>,
    /// Output answer text (kept only when asked, for quality grading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_text: Option<String>,
    /// Output reasoning text (kept only when asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_text: Option<String>,
    /// Where the arrival instants of this response (`first_byte_ns`, `chunk_ns`) came from;
    /// `None` when no response arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instants: Option<InstantSource>,
}

/// How the arrival instants of a response were taken (docs/metrics.md, "Raw record").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstantSource {
    /// Every read carried the kernel's receive timestamp (Linux, plain `http://`).
    Kernel,
    /// Every instant is when the read returned (https, a proxy, another OS, no timestamp).
    Read,
    /// Some reads carried a kernel timestamp and some did not.
    Mixed,
}

impl RequestRecord {
    /// Whether the request completed without error.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Output tokens: the server's `usage.completion_tokens` when given, else token-bearing chunks.
    pub fn output_tokens(&self) -> u64 {
        self.usage
            .and_then(|u| u.completion_tokens)
            .unwrap_or(self.chunk_ns.len() as u64)
    }

    /// Notes how one read's instant was taken: from the kernel's receive timestamp or not.
    pub fn note_instant(&mut self, kernel: bool) {
        let this = if kernel {
            InstantSource::Kernel
        } else {
            InstantSource::Read
        };
        self.instants = match self.instants {
            None => Some(this),
            Some(seen) if seen == this => Some(seen),
            Some(_) => Some(InstantSource::Mixed),
        };
    }

    /// Counts an oddity.
    pub fn note(&mut self, anomaly: &str) {
        let n = self.anomalies.entry(anomaly.to_owned()).or_default();
        *n = n.saturating_add(1);
    }
}

/// A journal's records. A line that does not parse (the last one cut short by a kill, a
/// stray write) is skipped with a note on stderr; it does not discard the others.
pub fn read_records(path: &std::path::Path) -> Option<Vec<RequestRecord>> {
    let bytes = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let mut bad = 0usize;
    let records: Vec<RequestRecord> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let r = serde_json::from_str(l).ok();
            bad += usize::from(r.is_none());
            r
        })
        .collect();
    if bad > 0 {
        eprintln!(
            "kvbench: {}: skipped {bad} journal line(s) that do not parse (cut short?)",
            path.display()
        );
    }
    Some(records)
}
