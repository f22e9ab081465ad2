//! What kvbench's two loopback servers share.
//!
//! - The test server ([`crate::testserver`]) checks correctness: wire variants, faults, answers.
//! - The self-test's fast server ([`crate::selftest::server`]) costs as little as it can per
//!   token and records the truth.
//!
//! Both read a request the same way ([`Request`]). Both release token `k` of a response at
//! `arrival + ttft + k × itl` ([`Schedule`]) through one body stream ([`Released`]). The stream
//! pulls the response's pieces from a [`Script`] and sleeps on one timer until each is due:
//! no task and no channel per response. Both also answer the same `/health`, `/version` and
//! `/v1/models` ([`base_routes`], [`models`]) and the same error body ([`error`]).
//!
//! Each server keeps its own part:
//! - the test server renders each token's JSON and injects faults;
//! - the fast server pre-renders one frame per response and reads with kernel receive
//!   timestamps.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::{json, Value};
use tokio::time::{Instant, Sleep};

/// When a response's tokens are due.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// When the request's handler ran.
    pub arrival: Instant,
    /// Delay from arrival to the first token.
    pub ttft: Duration,
    /// Delay between consecutive tokens.
    pub itl: Duration,
}

impl Schedule {
    /// The release instant of token `k` (0-based): `arrival + ttft + k × itl`.
    pub fn token(&self, k: u32) -> Instant {
        self.arrival + self.ttft + self.itl * k
    }
}

/// One piece of a response body.
pub struct Step {
    /// When to release it; `None` = at once.
    pub due: Option<Instant>,
    /// Whether it carries a token (the script hears of its release).
    pub token: bool,
    /// The bytes, or the error that aborts the connection.
    pub item: std::io::Result<Bytes>,
}

impl Step {
    /// Bytes sent at once.
    pub fn now(bytes: impl Into<Bytes>) -> Self {
        Self {
            due: None,
            token: false,
            item: Ok(bytes.into()),
        }
    }

    /// Bytes that carry no token, sent at `due`.
    pub fn at(due: Instant, bytes: impl Into<Bytes>) -> Self {
        Self {
            due: Some(due),
            token: false,
            item: Ok(bytes.into()),
        }
    }

    /// A token frame, released at `due`.
    pub fn token(due: Instant, bytes: impl Into<Bytes>) -> Self {
        Self {
            due: Some(due),
            token: true,
            item: Ok(bytes.into()),
        }
    }

    /// An error that aborts the connection, at once.
    pub fn fail(err: std::io::Error) -> Self {
        Self {
            due: None,
            token: false,
            item: Err(err),
        }
    }
}

/// What one response sends, piece by piece.
pub trait Script: Send + Unpin + 'static {
    /// The next piece; `None` ends the body.
    fn next(&mut self) -> Option<Step>;

    /// A token piece was handed to the HTTP layer at `now`.
    fn released(&mut self, _now: Instant) {}
}

/// A response body that releases its script's pieces when they are due, on one timer.
pub struct Released<S> {
    script: S,
    sleep: Pin<Box<Sleep>>,
    pending: Option<Step>,
}

impl<S: Script> Released<S> {
    /// The body of one response.
    pub fn new(script: S) -> Self {
        Self {
            script,
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            pending: None,
        }
    }
}

impl<S: Script> Stream for Released<S> {
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let due = match &this.pending {
            Some(step) => step.due,
            None => match this.script.next() {
                None => return Poll::Ready(None),
                Some(step) => {
                    let due = step.due;
                    if let Some(at) = due {
                        this.sleep.as_mut().reset(at);
                    }
                    this.pending = Some(step);
                    due
                }
            },
        };
        if due.is_some() && this.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        match this.pending.take() {
            Some(step) => {
                if step.token {
                    this.script.released(Instant::now());
                }
                Poll::Ready(Some(step.item))
            }
            None => Poll::Ready(None),
        }
    }
}

/// A `text/event-stream` response whose body is `script`, released on schedule.
pub fn sse<S: Script>(script: S) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(Released::new(script)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// An OpenAI-style error: `status` and `{"object": "error", "message", "type", "code"}`.
pub fn error(status: StatusCode, message: &str, kind: &str) -> Response {
    (
        status,
        Json(json!({"object": "error", "message": message, "type": kind,
            "code": status.as_u16()})),
    )
        .into_response()
}

/// The 400 answer to a body that is not a JSON request object.
pub fn invalid_json(e: &serde_json::Error) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        &format!("invalid JSON body: {e}"),
        "BadRequestError",
    )
}

/// `/health` (empty 200) and `/version` (`{"version": version}`).
pub fn base_routes<S: Clone + Send + Sync + 'static>(version: &'static str) -> Router<S> {
    Router::new().route("/health", get(|| async { "" })).route(
        "/version",
        get(move || async move { Json(json!({ "version": version })) }),
    )
}

/// The `/v1/models` answer: one model.
pub fn models(model: &str, owned_by: &str, max_model_len: u64) -> Response {
    Json(json!({"object": "list", "data": [{
        "id": model, "object": "model", "created": 0,
        "owned_by": owned_by, "max_model_len": max_model_len
    }]}))
    .into_response()
}

/// A completion request, as both servers read it: chat (`messages`) or completions (`prompt`).
/// Fields are kept loose (JSON values), so that an odd request is answered, not refused.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Request {
    #[serde(default)]
    max_tokens: Option<Value>,
    #[serde(default)]
    max_completion_tokens: Option<Value>,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    messages: Option<Vec<Message>>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<Value>,
}

impl Message {
    /// The message's text parts: the string content, or each `text` of a parts array.
    fn texts(&self) -> Vec<&str> {
        match &self.content {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl Request {
    /// Reads a request body; answer an error with [`invalid_json`].
    pub fn parse(body: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(body)
    }

    /// `max_tokens`, else `max_completion_tokens`, when a whole number (capped at `u32::MAX`).
    pub fn max_tokens(&self) -> Option<u32> {
        [&self.max_tokens, &self.max_completion_tokens]
            .into_iter()
            .find_map(|v| v.as_ref().and_then(Value::as_u64))
            .map(|n| n.min(u32::MAX as u64) as u32)
    }

    fn prompt_str(&self) -> Option<&str> {
        self.prompt.as_ref().and_then(Value::as_str)
    }

    /// The text the request asks about: the completions prompt, or the last message's text
    /// parts joined by a space.
    pub fn last_text(&self) -> String {
        if let Some(p) = self.prompt_str() {
            return p.to_owned();
        }
        self.messages
            .as_ref()
            .and_then(|m| m.last())
            .map(|m| m.texts().join(" "))
            .unwrap_or_default()
    }

    /// The first line of the prompt (or of the first message's first text part), at most 200
    /// bytes on a character boundary: kvbench's synthetic prompts start with a unique line.
    pub fn first_line(&self) -> &str {
        let text = self
            .prompt_str()
            .or_else(|| {
                self.messages
                    .as_ref()
                    .and_then(|m| m.first())
                    .and_then(|m| m.texts().first().copied())
            })
            .unwrap_or("");
        let line = text.split('\n').next().unwrap_or("");
        let mut end = line.len().min(200);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        &line[..end]
    }

    /// Whitespace-separated words of the prompt, or of every message's text parts: what the
    /// servers report as `usage.prompt_tokens`.
    pub fn prompt_words(&self) -> u64 {
        let count = |s: &str| s.split_whitespace().count() as u64;
        if let Some(p) = self.prompt_str() {
            return count(p);
        }
        self.messages
            .iter()
            .flatten()
            .flat_map(|m| m.texts())
            .map(count)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn req(s: &str) -> Request {
        Request::parse(s.as_bytes()).unwrap_or_else(|e| panic!("parse {s}: {e}"))
    }

    #[test]
    fn request_reads_chat_and_completions() {
        let r = req(r#"{"messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"abc def\nrest"},
                {"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"more"}]}],
                "max_completion_tokens": 7}"#);
        assert_eq!(r.max_tokens(), Some(7));
        assert_eq!(r.last_text(), "abc def\nrest more");
        assert_eq!(r.first_line(), "be brief");
        assert_eq!(r.prompt_words(), 2 + 4);
        let r = req(r#"{"prompt":"one line\ntwo","max_tokens":3,"max_completion_tokens":9}"#);
        assert_eq!(r.max_tokens(), Some(3));
        assert_eq!(
            (r.first_line(), r.last_text().as_str()),
            ("one line", "one line\ntwo")
        );
        assert_eq!(r.prompt_words(), 3);
        let r = req(r#"{"max_tokens": -1, "messages": [{"content": null}]}"#);
        assert_eq!(
            (r.max_tokens(), r.first_line(), r.prompt_words()),
            (None, "", 0)
        );
        assert!(Request::parse(b"not json").is_err());
        assert!(Request::parse(b"1").is_err());
    }

    #[test]
    fn first_line_stops_at_200_bytes_on_a_char_boundary() {
        let long = "é".repeat(150);
        let r = req(&format!(r#"{{"prompt":"{long}"}}"#));
        assert_eq!(r.first_line().len(), 200);
        let r = req(&format!(r#"{{"prompt":"x{long}"}}"#));
        assert_eq!(r.first_line().len(), 199);
    }

    /// Two tokens 30 ms apart after 20 ms, with an immediate piece before and after.
    struct Two {
        steps: std::collections::VecDeque<Step>,
        released: Vec<Instant>,
        log: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
    }

    impl Script for Two {
        fn next(&mut self) -> Option<Step> {
            self.steps.pop_front()
        }
        fn released(&mut self, now: Instant) {
            self.released.push(now);
        }
    }

    impl Drop for Two {
        fn drop(&mut self) {
            if let Ok(mut l) = self.log.lock() {
                l.append(&mut self.released);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn released_sends_each_piece_when_due_and_tells_the_script() {
        let s = Schedule {
            arrival: Instant::now(),
            ttft: Duration::from_millis(20),
            itl: Duration::from_millis(30),
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let steps = [
            Step::now("role"),
            Step::token(s.token(0), "t0"),
            Step::token(s.token(1), "t1"),
            Step::now("tail"),
            Step::fail(std::io::Error::other("reset")),
        ];
        let mut body = Released::new(Two {
            steps: steps.into(),
            released: Vec::new(),
            log: log.clone(),
        });
        let mut got = Vec::new();
        while let Some(item) = body.next().await {
            let at = Instant::now().duration_since(s.arrival).as_millis();
            got.push((item.map_err(|e| e.to_string()), at));
        }
        let ok = |b: &'static str, at| (Ok(Bytes::from(b)), at);
        assert_eq!(
            got,
            vec![
                ok("role", 0),
                ok("t0", 20),
                ok("t1", 50),
                ok("tail", 50),
                (Err("reset".to_owned()), 50)
            ]
        );
        drop(body);
        let rel: Vec<u128> = log
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.duration_since(s.arrival).as_millis())
            .collect();
        assert_eq!(rel, vec![20, 50], "the script hears of token pieces only");
    }
}
