//! A fast loopback streaming server for `kvbench selftest` and `scripts/bench-client.sh`.
//!
//! It speaks the vLLM wire format (chat and completions) and releases token `k` of a response
//! at `arrival + ttft + k × itl`. It shares its core with the test server
//! ([`crate::testserver::common`]): the request reader, the schedule, the body stream that
//! releases a response's pieces on one timer (no task and no channel per response), the common
//! routes. Unlike the test server (which checks correctness and injects faults), it is built
//! to cost the server as little as possible per event, so that on one machine the client under
//! test, not the server, is what runs out of CPU: one pre-rendered frame per response reused
//! for every token (no JSON serialisation per token).
//!
//! It records the truth: for every response, the instant each token frame was handed to the
//! HTTP layer, relative to the request's arrival (when its handler ran); the arrival on the
//! machine's monotonic clock; and, from the kernel's receive timestamp on its connections
//! ([`StampedListener`]), when the request's last packet reached its socket, so that the
//! server's own lateness in reading a request is not charged to the client. `kvbench selftest` reads it back
//! (`GET /selftest/truth`) and compares it with what the client measured. Responses are keyed
//! by the first line of the prompt, which for kvbench's synthetic prompts is the unique
//! per-request prefix.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{IncomingStream, Listener};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::testserver::common::{self, Request, Schedule, Step};

/// Settings of the fast server.
#[derive(Debug, Clone)]
pub struct FastServerConfig {
    /// Served model name.
    pub model: String,
    /// Delay from request arrival to the first token.
    pub ttft: Duration,
    /// Delay between consecutive tokens of one response.
    pub itl: Duration,
    /// Tokens per response when the request gives no `max_tokens`.
    pub default_tokens: u32,
    /// Vary each response's length between half and all of `max_tokens` (a function of the
    /// prompt's first line), so closed-loop streams do not stay in lock-step.
    pub vary_length: bool,
    /// Keep the per-response truth (token release instants) for `GET /selftest/truth`.
    pub keep_truth: bool,
}

impl Default for FastServerConfig {
    fn default() -> Self {
        Self {
            model: "kvbench-selftest".into(),
            ttft: Duration::from_millis(20),
            itl: Duration::from_millis(20),
            default_tokens: 64,
            vary_length: false,
            keep_truth: true,
        }
    }
}

/// What the server did for one response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Truth {
    /// The first line of the prompt (kvbench's unique prefix), at most 200 bytes.
    pub key: String,
    /// Nanoseconds from the request's arrival to the release of each token frame.
    pub token_ns: Vec<u64>,
    /// The request's arrival on the machine's monotonic clock (`CLOCK_MONOTONIC`, ns), which
    /// the client on the same machine reads too; `null` where it cannot be read.
    #[serde(default)]
    pub arrival_mono_ns: Option<u64>,
    /// When the request's last packet reached the server's socket, by the kernel's receive
    /// timestamp, on the same monotonic clock (ns); `null` without a timestamp. The gap to
    /// `arrival_mono_ns` is the server's own lateness in reading the request.
    #[serde(default)]
    pub request_rx_mono_ns: Option<u64>,
}

/// Counters since start or the last `POST /selftest/reset`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerStats {
    /// Completion requests received.
    pub requests: u64,
    /// Responses that ended (all frames sent or the client went away).
    pub responses_ended: u64,
    /// Token-bearing frames released.
    pub token_events: u64,
    /// Wall-clock arrival of the first request (Unix time, seconds), `null` before one.
    pub first_arrival_unix_s: Option<f64>,
    /// Wall-clock end of the last response that ended (Unix time, seconds).
    pub last_end_unix_s: Option<f64>,
}

struct Shared {
    cfg: FastServerConfig,
    requests: AtomicU64,
    ended: AtomicU64,
    events: AtomicU64,
    /// Unix ns; `u64::MAX` = none yet.
    first_arrival: AtomicU64,
    /// Unix ns; 0 = none yet.
    last_end: AtomicU64,
    truth: Mutex<Vec<Truth>>,
}

impl Shared {
    fn stats(&self) -> ServerStats {
        let first = self.first_arrival.load(Ordering::Relaxed);
        let last = self.last_end.load(Ordering::Relaxed);
        ServerStats {
            requests: self.requests.load(Ordering::Relaxed),
            responses_ended: self.ended.load(Ordering::Relaxed),
            token_events: self.events.load(Ordering::Relaxed),
            first_arrival_unix_s: (first != u64::MAX).then(|| first as f64 / 1e9),
            last_end_unix_s: (last != 0).then(|| last as f64 / 1e9),
        }
    }

    fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.ended.store(0, Ordering::Relaxed);
        self.events.store(0, Ordering::Relaxed);
        self.first_arrival.store(u64::MAX, Ordering::Relaxed);
        self.last_end.store(0, Ordering::Relaxed);
        if let Ok(mut t) = self.truth.lock() {
            t.clear();
        }
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A running fast server; stops when dropped.
pub struct FastServer {
    /// Bound address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl FastServer {
    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    /// The truth recorded so far (responses that ended).
    pub fn truth(&self) -> Vec<Truth> {
        self.shared
            .truth
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }
}

/// Starts the server on `addr` (port 0 = any free port) on the current runtime.
pub async fn start(cfg: FastServerConfig, addr: SocketAddr) -> anyhow::Result<FastServer> {
    let shared = Arc::new(Shared {
        cfg,
        requests: AtomicU64::new(0),
        ended: AtomicU64::new(0),
        events: AtomicU64::new(0),
        first_arrival: AtomicU64::new(u64::MAX),
        last_end: AtomicU64::new(0),
        truth: Mutex::new(Vec::new()),
    });
    let app = common::base_routes("kvbench-selftest")
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/selftest/truth", get(truth))
        .route("/selftest/stats", get(stats))
        .route("/selftest/reset", post(reset))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let listener = StampedListener(listener);
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<LastRx>(),
        )
        .with_graceful_shutdown(async move { s.cancelled().await })
        .await;
    });
    Ok(FastServer {
        addr,
        shared,
        _stop: stop.drop_guard(),
    })
}

async fn models(State(sh): State<Arc<Shared>>) -> Response {
    common::models(&sh.cfg.model, "vllm", 1_048_576)
}

async fn truth(State(sh): State<Arc<Shared>>) -> Response {
    let t = sh.truth.lock().map(|t| t.clone()).unwrap_or_default();
    Json(t).into_response()
}

async fn stats(State(sh): State<Arc<Shared>>) -> Response {
    Json(sh.stats()).into_response()
}

async fn reset(State(sh): State<Arc<Shared>>) -> Response {
    sh.reset();
    Json(sh.stats()).into_response()
}

async fn chat(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(rx): ConnectInfo<LastRx>,
    body: Bytes,
) -> Response {
    respond(sh, &body, true, rx.mono_ns())
}

async fn completions(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(rx): ConnectInfo<LastRx>,
    body: Bytes,
) -> Response {
    respond(sh, &body, false, rx.mono_ns())
}

/// Accepts connections whose reads keep the kernel's receive timestamp of their last packet
/// ([`LastRx`]), so that a request's arrival at the server's socket is known apart from when
/// the server got round to handling it. Sets `TCP_NODELAY`: without it the first token waits
/// behind the headers for the client's delayed ACK (tens of ms), which a real streaming server
/// does not do.
struct StampedListener(tokio::net::TcpListener);

/// The kernel receive time (`CLOCK_REALTIME`, ns; 0 = none yet) of a connection's last read.
#[derive(Clone, Debug)]
struct LastRx(Arc<std::sync::atomic::AtomicI64>);

impl LastRx {
    fn new() -> Self {
        Self(Arc::new(std::sync::atomic::AtomicI64::new(0)))
    }

    /// The last read's kernel stamp on the monotonic clock: now, less the stamp's age.
    fn mono_ns(&self) -> Option<u64> {
        let kernel = self.0.load(Ordering::Relaxed);
        let mono = super::probe::monotonic_ns()?;
        let age = unix_ns() as i64 - kernel;
        (kernel != 0 && age >= 0 && (age as u64) <= mono).then(|| mono - age as u64)
    }
}

impl Connected<IncomingStream<'_, StampedListener>> for LastRx {
    fn connect_info(stream: IncomingStream<'_, StampedListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl Listener for StampedListener {
    type Io = StampedStream;
    type Addr = LastRx;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    crate::client::h1::enable_rx_timestamps(&tcp);
                    let last = LastRx::new();
                    return (
                        StampedStream {
                            tcp,
                            last: last.clone(),
                        },
                        last,
                    );
                }
                // Out of descriptors, or the like: wait a moment, as axum's own listener does.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr().map(|_| LastRx::new())
    }
}

/// A server connection that reads with `recvmsg`, keeping the kernel's receive timestamp.
struct StampedStream {
    tcp: tokio::net::TcpStream,
    last: LastRx,
}

impl tokio::io::AsyncRead for StampedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Err(e) = std::task::ready!(this.tcp.poll_read_ready(cx)) {
                return Poll::Ready(Err(e));
            }
            let fd = std::os::fd::AsRawFd::as_raw_fd(&this.tcp);
            let unfilled = buf.initialize_unfilled();
            let read = this.tcp.try_io(tokio::io::Interest::READABLE, || {
                crate::client::h1::recvmsg_stamped(fd, unfilled)
            });
            match read {
                Ok((n, ts)) => {
                    buf.advance(n);
                    if let Some(t) = ts {
                        this.last.0.store(t as i64, Ordering::Relaxed);
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for StampedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// FNV-1a: a stable hash of the key for the length variation.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Tokens for a response: `max_tokens`, or between half of it and all of it when varied.
pub fn response_tokens(max_tokens: u32, vary: bool, key: &str) -> u32 {
    if !vary || max_tokens < 2 {
        return max_tokens;
    }
    let half = max_tokens / 2;
    max_tokens - (fnv1a(key) % (half as u64 + 1)) as u32
}

fn respond(sh: Arc<Shared>, body: &[u8], chat: bool, request_rx_mono_ns: Option<u64>) -> Response {
    let arrival = Instant::now();
    let arrival_mono_ns = super::probe::monotonic_ns();
    let n = sh.requests.fetch_add(1, Ordering::Relaxed) + 1;
    sh.first_arrival.fetch_min(unix_ns(), Ordering::Relaxed);
    let req = match Request::parse(body) {
        Ok(r) => r,
        Err(e) => return common::invalid_json(&e),
    };
    let key = req.first_line().to_owned();
    let max = req.max_tokens().unwrap_or(sh.cfg.default_tokens);
    let tokens = response_tokens(max, sh.cfg.vary_length, &key);
    let frames = Frames::new(&sh.cfg.model, n, chat, tokens, req.prompt_words());
    common::sse(TokenScript {
        schedule: Schedule {
            arrival,
            ttft: sh.cfg.ttft,
            itl: sh.cfg.itl,
        },
        truth: Vec::with_capacity(if sh.cfg.keep_truth {
            tokens as usize
        } else {
            0
        }),
        key,
        shared: sh,
        arrival_mono_ns,
        request_rx_mono_ns,
        frames,
        tokens,
        next: 0,
        phase: Phase::Tokens,
    })
}

/// Pre-rendered SSE frames of one response.
struct Frames {
    /// Role chunk (chat only), sent with the first token as vLLM does.
    role: Option<Bytes>,
    /// A token chunk, reused for every token but the last.
    token: Bytes,
    /// The last token chunk, carrying `finish_reason`.
    last: Bytes,
    /// The finish chunk of a zero-token response.
    empty_finish: Bytes,
    /// The usage chunk followed by `[DONE]`.
    tail: Bytes,
}

impl Frames {
    fn new(model: &str, n: u64, chat: bool, tokens: u32, prompt_tokens: u64) -> Self {
        // Timestamps in the frames are fixed: only their length matters to a client.
        let created = 1_700_000_000u64;
        let model = serde_json::to_string(model).unwrap_or_else(|_| "\"m\"".into());
        let (id, object) = if chat {
            (format!("chatcmpl-{n:032x}"), "chat.completion.chunk")
        } else {
            (format!("cmpl-{n:032x}"), "text_completion")
        };
        let head = format!(
            r#"data: {{"id":"{id}","object":"{object}","created":{created},"model":{model},"choices":[{{"index":0,"#
        );
        let choice = |text: &str, finish: &str| {
            if chat {
                format!(
                    r#"{head}"delta":{{"content":"{text}"}},"logprobs":null,"finish_reason":{finish}}}]}}"#
                ) + "\n\n"
            } else {
                format!(
                    r#"{head}"text":"{text}","logprobs":null,"finish_reason":{finish},"stop_reason":null}}]}}"#
                ) + "\n\n"
            }
        };
        let role = chat.then(|| {
            Bytes::from(
                format!(
                    r#"{head}"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#
                ) + "\n\n",
            )
        });
        let total = prompt_tokens + tokens as u64;
        let tail = format!(
            r#"data: {{"id":"{id}","object":"{object}","created":{created},"model":{model},"choices":[],"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{total},"completion_tokens":{tokens}}}}}"#
        ) + "\n\ndata: [DONE]\n\n";
        Self {
            role,
            token: Bytes::from(choice(" hello", "null")),
            last: Bytes::from(choice(" world", "\"length\"")),
            empty_finish: Bytes::from(choice("", "\"stop\"")),
            tail: Bytes::from(tail),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Tokens,
    Tail,
    Done,
}

/// One fast response: token `k`'s pre-rendered frame at its due instant (the role chunk rides
/// with the first, as vLLM sends it), then the usage chunk and `[DONE]` at once.
struct TokenScript {
    shared: Arc<Shared>,
    schedule: Schedule,
    arrival_mono_ns: Option<u64>,
    request_rx_mono_ns: Option<u64>,
    frames: Frames,
    tokens: u32,
    /// The next token to send.
    next: u32,
    phase: Phase,
    key: String,
    /// Nanoseconds from arrival to each token's release.
    truth: Vec<u64>,
}

impl common::Script for TokenScript {
    fn next(&mut self) -> Option<Step> {
        let f = &self.frames;
        match self.phase {
            Phase::Done => return None,
            Phase::Tail => {
                self.phase = Phase::Done;
                return Some(Step::now(f.tail.clone()));
            }
            Phase::Tokens => {}
        }
        if self.tokens == 0 {
            self.phase = Phase::Tail;
            return Some(Step::at(self.schedule.token(0), f.empty_finish.clone()));
        }
        let k = self.next;
        self.next += 1;
        let frame = if self.next == self.tokens {
            self.phase = Phase::Tail;
            f.last.clone()
        } else {
            f.token.clone()
        };
        let frame = match (k, &f.role) {
            (0, Some(role)) => {
                let mut b = Vec::with_capacity(role.len() + frame.len());
                b.extend_from_slice(role);
                b.extend_from_slice(&frame);
                Bytes::from(b)
            }
            _ => frame,
        };
        Some(Step::token(self.schedule.token(k), frame))
    }

    fn released(&mut self, now: Instant) {
        self.shared.events.fetch_add(1, Ordering::Relaxed);
        if self.shared.cfg.keep_truth {
            self.truth
                .push(now.duration_since(self.schedule.arrival).as_nanos() as u64);
        }
    }
}

impl Drop for TokenScript {
    fn drop(&mut self) {
        self.shared.ended.fetch_add(1, Ordering::Relaxed);
        self.shared.last_end.fetch_max(unix_ns(), Ordering::Relaxed);
        if self.shared.cfg.keep_truth {
            if let Ok(mut t) = self.shared.truth.lock() {
                t.push(Truth {
                    key: std::mem::take(&mut self.key),
                    token_ns: std::mem::take(&mut self.truth),
                    arrival_mono_ns: self.arrival_mono_ns,
                    request_rx_mono_ns: self.request_rx_mono_ns,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varied_length_stays_between_half_and_max() {
        for key in ["a", "b", "quick brown fox", ""] {
            let n = response_tokens(64, true, key);
            assert!((32..=64).contains(&n), "{key}: {n}");
            assert_eq!(response_tokens(64, false, key), 64);
        }
        assert_eq!(response_tokens(1, true, "x"), 1);
        let distinct: std::collections::BTreeSet<u32> = (0..50)
            .map(|i| response_tokens(64, true, &format!("prefix {i}")))
            .collect();
        assert!(distinct.len() > 5, "lengths should vary: {distinct:?}");
    }

    #[test]
    fn frames_decode_as_the_client_expects() {
        use crate::client::chunk::{decode, Event};
        use crate::client::sse::SseParser;
        for chat in [true, false] {
            let f = Frames::new("m", 7, chat, 3, 5);
            let mut all = Vec::new();
            if let Some(r) = &f.role {
                all.extend_from_slice(r);
            }
            for b in [&f.token, &f.token, &f.last, &f.tail] {
                all.extend_from_slice(b);
            }
            let mut events = Vec::new();
            let mut p = SseParser::new();
            p.push(&all, &mut |d| events.push(decode(d)));
            let tokens = events
                .iter()
                .filter(|e| matches!(e, Event::Chunk(c) if c.content.is_some()))
                .count();
            assert_eq!(tokens, 3, "chat={chat}");
            assert_eq!(events.last(), Some(&Event::Done));
            let usage = events.iter().find_map(|e| match e {
                Event::Chunk(c) => c.usage,
                _ => None,
            });
            assert_eq!(usage.and_then(|u| u.completion_tokens), Some(3));
            let finish = events.iter().find_map(|e| match e {
                Event::Chunk(c) => c.finish_reason.clone(),
                _ => None,
            });
            assert_eq!(finish.as_deref(), Some("length"));
        }
    }
}
