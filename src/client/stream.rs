//! The stream loop: one response body read to its end, whatever carried it.
//!
//! Why one loop: the lean HTTP/1.1 path ([`super::h1`]) and reqwest deliver the same thing, a
//! body arriving in reads, each with the instant its bytes arrived. Everything the measurement
//! does with it (SSE parsing, token instants, anomalies, the caps, how a stream ends and which
//! [`ErrorKind`] a failure is) is written here once, over a [`BodySource`]; a transport only
//! reads bytes, timestamps them and says how its reads ended. Nothing here can panic: each
//! failure becomes an [`ErrorKind`] on the record.

use std::time::{Duration, Instant};

use super::body::{self, MAX_TEXT_BYTES, MAX_TOKEN_EVENTS};
use super::chunk::{self, EventRef};
use super::sse::SseParser;
use super::{error_message_from_body, redirect_note};
use crate::record::{ErrorKind, RequestRecord};

/// Time allowed to read the start of an error body.
pub(crate) const ERROR_BODY_WITHIN: Duration = Duration::from_secs(5);

/// A response body as a sequence of reads: what a transport gives the stream loop.
pub(crate) trait BodySource {
    /// Waits for the next read of the body: the instant its bytes arrived ([`Then::More`]:
    /// ask [`BodySource::payload`] for them), or how the body ended or failed.
    async fn read(&mut self) -> Read;

    /// Hands the last read's payload (the body's bytes, framing removed) to `each`, piece by
    /// piece, where the transport holds them (nothing is copied), and says what follows it.
    fn payload(&mut self, each: &mut dyn FnMut(&[u8])) -> Then;

    /// The start of an error body (at most [`body::ERROR_BODY_LIMIT`] bytes, within
    /// [`ERROR_BODY_WITHIN`]); `None` when the run was cancelled first and nothing is kept.
    async fn error_body(self) -> Option<Vec<u8>>
    where
        Self: Sized;

    /// The body was read to its end (`stopped`: or the loop stopped reading at an error
    /// event): a transport may keep its connection for the next request.
    fn finish(self, stopped: bool)
    where
        Self: Sized;
}

/// One read of a body.
pub(crate) struct Read {
    /// When its bytes arrived, ns on the run's timeline.
    pub t_ns: u64,
    /// How `t_ns` was taken, when the transport records it: the kernel's receive timestamp
    /// (`true`) or the read's own instant (`false`); see [`RequestRecord::note_instant`].
    pub stamp: Option<bool>,
    /// [`Then::More`]: bytes arrived, [`BodySource::payload`] hands them over and says what
    /// follows; otherwise the body ended or failed with nothing more delivered.
    pub then: Then,
}

impl Read {
    /// A read that delivered nothing and ends the body with `then`.
    pub fn bare(then: Then) -> Self {
        Read {
            t_ns: 0,
            stamp: None,
            then,
        }
    }

    /// A read that failed: nothing delivered, the request ends as `kind`.
    pub fn failed(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Self::bare(Then::Fail(kind, msg.into()))
    }

    /// A read that delivered bytes at `t_ns`.
    pub fn bytes(t_ns: u64, stamp: Option<bool>) -> Self {
        Read {
            t_ns,
            stamp,
            then: Then::More,
        }
    }
}

/// What follows a read.
pub(crate) enum Then {
    /// More of the body may come.
    More,
    /// The body ended.
    End,
    /// The body cannot be read further: the request ends as this error.
    Fail(ErrorKind, String),
}

/// Reads a response whose head said `status` (`location`: its `Location` header) from `body`
/// into `rec`: the error body of a non-2xx answer, or the SSE stream to its end. `origin` is
/// the run's time origin.
pub(crate) async fn read_response<S: BodySource>(
    status: u16,
    location: Option<&str>,
    mut body: S,
    rec: &mut RequestRecord,
    mut state: StreamState<'_>,
    origin: Instant,
) {
    let now_ns = || origin.elapsed().as_nanos() as u64;
    rec.status = Some(status);
    if !(200..300).contains(&status) {
        let error_body = body.error_body().await;
        rec.end_ns = now_ns();
        let msg = redirect_note(status, location).unwrap_or_else(|| {
            error_body
                .as_deref()
                .map(error_message_from_body)
                .unwrap_or_default()
        });
        fail(rec, ErrorKind::HttpStatus, &format!("HTTP {status}: {msg}"));
        return;
    }
    let mut parser = SseParser::new();
    loop {
        let read = body.read().await;
        if let Some(kernel) = read.stamp {
            rec.note_instant(kernel);
        }
        let t = read.t_ns;
        let then = match read.then {
            Then::More => body
                .payload(&mut |piece| parser.push(piece, &mut |data| state.on_event(data, t, rec))),
            ended => ended,
        };
        if parser.too_large() {
            state.abort(
                rec,
                now_ns(),
                ErrorKind::ResponseTooLarge,
                &event_too_large(),
            );
            return;
        }
        match then {
            Then::Fail(kind, msg) => {
                state.abort(rec, now_ns(), kind, &msg);
                return;
            }
            Then::End => break,
            Then::More if state.stop => break,
            Then::More => {}
        }
    }
    body.finish(state.stop);
    conclude(rec, &mut state, &mut parser, now_ns());
}

/// The end of a stream that was read to its end (or stopped at an error event): the pending
/// event, the end instant, and the checks on what the stream held.
fn conclude(rec: &mut RequestRecord, state: &mut StreamState, parser: &mut SseParser, t: u64) {
    {
        if !state.stop {
            parser.finish(&mut |data| state.on_event(data, t, rec));
        }
        rec.end_ns = t;
        state.finish_into(rec);
        if rec.error.is_some() {
            return;
        }
        if !state.saw_done {
            if state.valid_chunks == 0 {
                let what = if parser.total_bytes() == 0 {
                    "empty response body".to_owned()
                } else {
                    "the response is not an SSE stream of JSON chunks".to_owned()
                };
                fail(rec, ErrorKind::InvalidResponse, &what);
                return;
            } else if rec.finish_reason.is_none() {
                fail(
                    rec,
                    ErrorKind::Incomplete,
                    "the stream ended without [DONE] and without a finish reason",
                );
                return;
            }
            rec.note("missing_done");
        }
        if rec.chunk_ns.is_empty() {
            rec.note("no_tokens");
        }
    }
}

/// Why a stream ended as `response_too_large`: a line or event over its cap.
fn event_too_large() -> String {
    format!(
        "response_too_large: an SSE line or event is larger than {}",
        body::size(body::MAX_EVENT_BYTES)
    )
}

fn too_many_tokens() -> String {
    format!("response_too_large: more than {MAX_TOKEN_EVENTS} token events in one response")
}

fn too_much_text() -> String {
    format!(
        "response_too_large: more than {} of text in one response",
        body::size(MAX_TEXT_BYTES)
    )
}

/// Token counts above this in a server's `usage` are not believed (no request has four billion
/// tokens); summing such values over a run would wrap the totals.
pub const MAX_PLAUSIBLE_TOKENS: u64 = 1 << 32;

/// `usage` when every count in it is plausible.
fn plausible(u: chunk::Usage) -> Option<chunk::Usage> {
    let ok = |n: Option<u64>| n.is_none_or(|n| n <= MAX_PLAUSIBLE_TOKENS);
    (ok(u.prompt_tokens) && ok(u.completion_tokens) && ok(u.reasoning_tokens)).then_some(u)
}

pub(crate) fn fail(rec: &mut RequestRecord, kind: ErrorKind, msg: &str) {
    rec.error = Some(kind);
    let mut m: String = msg.chars().take(300).collect();
    if m.is_empty() {
        m = kind.key(rec.status);
    }
    rec.error_message = Some(m);
}

/// Per-stream parsing state, applied to the record as events arrive.
#[derive(Default)]
pub(crate) struct StreamState<'a> {
    keep_text: bool,
    /// Where to collect log-probabilities, when asked.
    logprobs: Option<&'a mut Vec<chunk::TokenLogprob>>,
    saw_done: bool,
    stop: bool,
    valid_chunks: u32,
    content: String,
    reasoning: String,
}

impl<'a> StreamState<'a> {
    /// A new stream's state: keeps the text when `keep_text`, collects log-probabilities into
    /// `logprobs` when given.
    pub fn new(keep_text: bool, logprobs: Option<&'a mut Vec<chunk::TokenLogprob>>) -> Self {
        Self {
            keep_text,
            logprobs,
            ..Self::default()
        }
    }

    fn on_event(&mut self, data: &[u8], t: u64, rec: &mut RequestRecord) {
        if self.stop || self.saw_done {
            return;
        }
        match chunk::decode_ref(data) {
            EventRef::Done => self.saw_done = true,
            EventRef::Malformed => rec.note("malformed_chunk"),
            EventRef::Error(msg) => {
                fail(rec, ErrorKind::StreamError, &msg);
                self.stop = true;
            }
            EventRef::Chunk(c) => {
                self.valid_chunks = self.valid_chunks.saturating_add(1);
                let has_answer = c.content.is_some();
                let has_reasoning = c.reasoning.is_some();
                if has_answer || has_reasoning {
                    if rec.chunk_ns.len() >= MAX_TOKEN_EVENTS {
                        fail(rec, ErrorKind::ResponseTooLarge, &too_many_tokens());
                        self.stop = true;
                        return;
                    }
                    if rec.first_token_ns.is_none() {
                        rec.first_token_ns = Some(t);
                    }
                    if has_answer && rec.first_answer_ns.is_none() {
                        rec.first_answer_ns = Some(t);
                    }
                    rec.chunk_ns.push(t);
                    if has_reasoning && !has_answer {
                        rec.reasoning_chunks += 1;
                    }
                }
                if self.keep_text {
                    let more = c.content.as_ref().map_or(0, |s| s.len())
                        + c.reasoning.as_ref().map_or(0, |s| s.len());
                    if self.content.len() + self.reasoning.len() + more > MAX_TEXT_BYTES {
                        fail(rec, ErrorKind::ResponseTooLarge, &too_much_text());
                        self.stop = true;
                        return;
                    }
                    if let Some(s) = &c.content {
                        self.content.push_str(s);
                    }
                    if let Some(s) = &c.reasoning {
                        self.reasoning.push_str(s);
                    }
                }
                if let (Some(out), Some(lp)) = (self.logprobs.as_deref_mut(), &c.logprobs) {
                    if out.len() >= MAX_TOKEN_EVENTS {
                        fail(rec, ErrorKind::ResponseTooLarge, &too_many_tokens());
                        self.stop = true;
                        return;
                    }
                    out.extend(chunk::parse_logprobs(lp));
                }
                if let Some(f) = c.finish_reason {
                    rec.finish_reason = Some(f.into_owned());
                }
                match c.usage.map(plausible) {
                    Some(Some(u)) => rec.usage = Some(u),
                    Some(None) => rec.note("implausible_usage"),
                    None => {}
                }
            }
        }
    }

    /// Ends the record early at `t`: keeps what was received and records the error, unless an
    /// error event from the server already did.
    fn abort(&mut self, rec: &mut RequestRecord, t: u64, kind: ErrorKind, msg: &str) {
        rec.end_ns = t;
        self.finish_into(rec);
        if rec.error.is_none() {
            fail(rec, kind, msg);
        }
    }

    fn finish_into(&mut self, rec: &mut RequestRecord) {
        if self.keep_text {
            rec.output_text = Some(std::mem::take(&mut self.content));
            if !self.reasoning.is_empty() {
                rec.reasoning_text = Some(std::mem::take(&mut self.reasoning));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A body that replays scripted reads: (payload, instant, what follows).
    struct Script {
        reads: VecDeque<(&'static [u8], u64, Then)>,
        last: Option<(&'static [u8], Then)>,
        error_body: &'static [u8],
    }

    impl BodySource for Script {
        async fn read(&mut self) -> Read {
            match self.reads.pop_front() {
                Some((payload, t_ns, then)) => {
                    self.last = Some((payload, then));
                    Read::bytes(t_ns, Some(true))
                }
                None => Read::bare(Then::End),
            }
        }

        fn payload(&mut self, each: &mut dyn FnMut(&[u8])) -> Then {
            match self.last.take() {
                Some((payload, then)) => {
                    each(payload);
                    then
                }
                None => Then::End,
            }
        }

        async fn error_body(self) -> Option<Vec<u8>> {
            Some(self.error_body.to_vec())
        }

        fn finish(self, _stopped: bool) {}
    }

    fn run(status: u16, reads: Vec<(&'static [u8], u64, Then)>) -> RequestRecord {
        let body = Script {
            reads: reads.into(),
            last: None,
            error_body: br#"{"error": {"message": "busy"}}"#,
        };
        let mut rec = RequestRecord::default();
        let state = StreamState::new(true, None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(read_response(
            status,
            None,
            body,
            &mut rec,
            state,
            Instant::now(),
        ));
        rec
    }

    const A: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";

    #[test]
    fn each_event_gets_the_instant_of_the_read_that_completed_it() {
        let rec = run(
            200,
            vec![
                (&A[..10], 5, Then::More),
                (&A[10..], 7, Then::More),
                (A, 9, Then::More),
                (b"data: [DONE]\n\n", 11, Then::End),
            ],
        );
        assert_eq!(rec.error, None, "{:?}", rec.error_message);
        assert_eq!(rec.chunk_ns, vec![7, 9]);
        assert_eq!(rec.first_token_ns, Some(7));
        assert_eq!(rec.output_text.as_deref(), Some("aa"));
        assert_eq!(rec.status, Some(200));
    }

    #[test]
    fn a_failed_read_keeps_what_came_and_records_its_error() {
        let rec = run(
            200,
            vec![
                (A, 3, Then::More),
                (b"", 0, Then::Fail(ErrorKind::StreamReset, "reset".into())),
            ],
        );
        assert_eq!(rec.error, Some(ErrorKind::StreamReset));
        assert_eq!(rec.error_message.as_deref(), Some("reset"));
        assert_eq!(rec.chunk_ns, vec![3]);
    }

    #[test]
    fn an_error_status_reads_the_message_of_its_body() {
        let rec = run(503, Vec::new());
        assert_eq!(rec.error, Some(ErrorKind::HttpStatus));
        assert_eq!(rec.error_message.as_deref(), Some("HTTP 503: busy"));
    }
}
