//! An OpenAI-compatible streaming server whose true delays are known.
//!
//! It is how kvbench checks its own measurements (integration tests, `kvbench test-server`):
//! token `k` of a response is released at `arrival + ttft + k × itl`, so measured TTFT, ITL, TPOT
//! and E2E can be compared with the truth. It speaks the vLLM and llama.cpp wire variants and
//! injects faults on every k-th request.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

pub(crate) mod common;

use common::{Request, Schedule, Step};

/// Which server's wire format to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// vLLM: role chunk with `""` content, `delta.reasoning`, usage in a last chunk with empty choices.
    Vllm,
    /// llama.cpp: role chunk with `null` content, `reasoning_content`, `timings`, completions usage
    /// on the finish chunk.
    Llamacpp,
}

/// A fault injected into a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and a JSON error body.
    HttpStatus(u16),
    /// Send an `error` object after this many tokens.
    StreamError {
        /// Tokens before the error.
        after: u32,
    },
    /// Abort the connection after this many tokens.
    Reset {
        /// Tokens before the reset.
        after: u32,
    },
    /// End the body cleanly after this many tokens, with no finish reason and no `[DONE]`.
    Truncate {
        /// Tokens before the end.
        after: u32,
    },
    /// Omit `[DONE]` (finish reason and usage are still sent).
    NoDone,
    /// Finish at once with no token (EOS first).
    ZeroTokens,
    /// Insert a malformed event among the tokens.
    Malformed,
    /// Answer 200 with a plain JSON body instead of a stream.
    NotSse,
}

/// What `/v1/models` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelsMode {
    /// A normal OpenAI model list.
    Openai,
    /// An HTML page (a server that is not OpenAI-compatible).
    Html,
}

/// Test server settings.
#[derive(Debug, Clone)]
pub struct TestServerConfig {
    /// Served model name.
    pub model: String,
    /// Wire format.
    pub flavor: Flavor,
    /// Delay from request arrival to the first token.
    pub ttft: Duration,
    /// Delay between consecutive tokens.
    pub itl: Duration,
    /// Output tokens per response; `None` = the request's `max_tokens`.
    pub output_tokens: Option<u32>,
    /// The first this-many tokens go to the reasoning channel.
    pub reasoning_tokens: u32,
    /// Use CRLF line ends.
    pub crlf: bool,
    /// Write `data:` without the space.
    pub no_space: bool,
    /// Send `: ping` comment lines.
    pub comments: bool,
    /// Fault to inject.
    pub fault: Option<Fault>,
    /// Inject the fault on every k-th request (1 = all).
    pub fault_every: u64,
    /// `/v1/models` behaviour.
    pub models: ModelsMode,
    /// Answer mode: when set, each response's text is this function of the prompt (the last
    /// message's text, or the completions prompt), streamed word by word with finish reason
    /// `stop` (`length` when cut by `max_tokens`), instead of ` tok0 tok1 ...`.
    pub answers: Option<Answers>,
    /// A slow trend within the run: every delay grows by this many percent per minute since the
    /// server started (negative: shrinks), as a server that warms up or heats up.
    pub trend_pct_per_min: f64,
}

/// The answer function of the test server's answer mode.
#[derive(Clone)]
pub struct Answers(pub Arc<dyn Fn(&str) -> String + Send + Sync>);

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Answers(fn)")
    }
}

/// Splits an answer into word tokens, each after the first keeping its leading space.
fn word_tokens(answer: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in answer.chars() {
        if c == ' ' && !cur.is_empty() && !cur.ends_with(' ') {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Default for TestServerConfig {
    fn default() -> Self {
        Self {
            model: "test-model".into(),
            flavor: Flavor::Vllm,
            ttft: Duration::from_millis(50),
            itl: Duration::from_millis(10),
            output_tokens: None,
            reasoning_tokens: 0,
            crlf: false,
            no_space: false,
            comments: false,
            fault: None,
            fault_every: 1,
            models: ModelsMode::Openai,
            answers: None,
            trend_pct_per_min: 0.0,
        }
    }
}

struct Shared {
    cfg: TestServerConfig,
    requests: AtomicU64,
    started: Instant,
}

/// A running test server; stops when dropped.
pub struct TestServer {
    /// Bound address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl TestServer {
    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Completion requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

/// Starts a server on `addr` (port 0 = any free port).
pub async fn start(cfg: TestServerConfig, addr: SocketAddr) -> anyhow::Result<TestServer> {
    let shared = Arc::new(Shared {
        cfg,
        requests: AtomicU64::new(0),
        started: Instant::now(),
    });
    let app = common::base_routes("kvbench-testserver")
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    // No Nagle delay: a lone small token frame must not wait for the client's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    Ok(TestServer {
        addr,
        shared,
        _stop: stop.drop_guard(),
    })
}

async fn models(State(sh): State<Arc<Shared>>) -> Response {
    match sh.cfg.models {
        ModelsMode::Html => (
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>hello</body></html>",
        )
            .into_response(),
        ModelsMode::Openai => {
            let owned_by = match sh.cfg.flavor {
                Flavor::Vllm => "vllm",
                Flavor::Llamacpp => "llamacpp",
            };
            common::models(&sh.cfg.model, owned_by, 4096)
        }
    }
}

async fn chat(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    respond(sh, &body, true)
}

async fn completions(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    respond(sh, &body, false)
}

fn respond(sh: Arc<Shared>, body: &[u8], chat: bool) -> Response {
    let arrival = Instant::now();
    let n = sh.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let cfg = &sh.cfg;
    // A slow trend: every delay scaled by the minutes since the server started.
    let f = if cfg.trend_pct_per_min != 0.0 {
        let minutes = arrival.duration_since(sh.started).as_secs_f64() / 60.0;
        (1.0 + cfg.trend_pct_per_min * minutes / 100.0).max(0.0)
    } else {
        1.0
    };
    let schedule = Schedule {
        arrival,
        ttft: cfg.ttft.mul_f64(f),
        itl: cfg.itl.mul_f64(f),
    };
    let fault = cfg
        .fault
        .filter(|_| cfg.fault_every > 0 && n % cfg.fault_every == 0);
    match fault {
        Some(Fault::HttpStatus(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (
                status,
                Json(json!({"error": {"message": "injected failure", "type": "TestError", "code": code}})),
            )
                .into_response();
        }
        Some(Fault::NotSse) => {
            return Json(json!({"id": "x", "choices": [{"text": "not a stream"}]})).into_response();
        }
        _ => {}
    }
    let req = match Request::parse(body) {
        Ok(r) => r,
        Err(e) => return common::invalid_json(&e),
    };
    let max_tokens = req.max_tokens().unwrap_or(16);
    let texts = cfg.answers.as_ref().map(|a| {
        let mut t = word_tokens(&(a.0)(&req.last_text()));
        let complete = t.len() <= max_tokens as usize;
        t.truncate(max_tokens as usize);
        (t, complete)
    });
    let tokens = if fault == Some(Fault::ZeroTokens) {
        0
    } else if let Some((t, _)) = &texts {
        t.len() as u32
    } else {
        cfg.output_tokens.unwrap_or(max_tokens)
    };
    let cut = match fault {
        Some(Fault::StreamError { after } | Fault::Reset { after } | Fault::Truncate { after }) => {
            Some(after.min(tokens))
        }
        _ => None,
    };
    common::sse(Script {
        id: format!("chatcmpl-{n}"),
        prompt_tokens: req.prompt_words(),
        shared: sh,
        chat,
        schedule,
        tokens,
        sent_until: cut.unwrap_or(tokens),
        fault,
        texts,
        stage: Stage::Start,
        next: 0,
        malformed_sent: false,
        ending: VecDeque::new(),
    })
}

/// Where a response's script stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Nothing sent yet: the role chunk (chat) goes first, at once.
    Start,
    /// Token chunks, each when due.
    Tokens,
    /// The ending (finish and usage chunks, `[DONE]`, or the fault's), queued.
    Ending,
}

/// One test-server response: the role chunk, the token chunks, the ending; a fault changes
/// any of them.
struct Script {
    shared: Arc<Shared>,
    chat: bool,
    id: String,
    schedule: Schedule,
    /// Tokens of the full answer.
    tokens: u32,
    /// Tokens sent before a fault cuts the answer (= `tokens` without one).
    sent_until: u32,
    prompt_tokens: u64,
    fault: Option<Fault>,
    /// Answer mode: the word tokens, and whether they are the whole answer.
    texts: Option<(Vec<String>, bool)>,
    stage: Stage,
    /// The next token to send.
    next: u32,
    malformed_sent: bool,
    ending: VecDeque<Step>,
}

impl Script {
    /// One SSE frame in the configured variant (comment lines, `data:` spacing, line ends).
    fn frame(&self, data: &str) -> Bytes {
        let cfg = &self.shared.cfg;
        let eol = if cfg.crlf { "\r\n" } else { "\n" };
        let mut s = String::with_capacity(data.len() + 16);
        if cfg.comments {
            s.push_str(": ping");
            s.push_str(eol);
        }
        s.push_str(if cfg.no_space { "data:" } else { "data: " });
        s.push_str(data);
        s.push_str(eol);
        s.push_str(eol);
        Bytes::from(s)
    }

    fn llama(&self) -> bool {
        self.shared.cfg.flavor == Flavor::Llamacpp
    }

    /// A chunk object around `choices`, for chat or completions; llama.cpp's completions
    /// chunks have no `created`.
    fn chunk(&self, choices: Value, created: bool) -> Value {
        let object = if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let model = &self.shared.cfg.model;
        if created {
            json!({"id": self.id, "object": object, "created": 0, "model": model, "choices": choices})
        } else {
            json!({"id": self.id, "object": object, "model": model, "choices": choices})
        }
    }

    fn role(&self) -> Bytes {
        let content = if self.llama() { Value::Null } else { json!("") };
        self.frame(
            &self
                .chunk(
                    json!([{"index": 0, "delta": {"role": "assistant", "content": content},
                        "logprobs": null, "finish_reason": null}]),
                    true,
                )
                .to_string(),
        )
    }

    fn token(&self, k: u32) -> Bytes {
        let text = match &self.texts {
            Some((t, _)) => t[k as usize].clone(),
            None => format!(" tok{k}"),
        };
        let choice = if self.chat {
            let delta = match (k < self.shared.cfg.reasoning_tokens, self.llama()) {
                (true, false) => json!({"reasoning": text}),
                (true, true) => json!({"reasoning_content": text}),
                (false, _) => json!({"content": text}),
            };
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": null})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": null})
        };
        self.frame(&self.chunk(json!([choice]), true).to_string())
    }

    /// What follows the last token sent: the fault's ending, or the finish chunk, usage and
    /// `[DONE]` in the flavor's shape.
    fn ending(&self) -> VecDeque<Step> {
        let mut out = VecDeque::new();
        match self.fault {
            Some(Fault::StreamError { .. }) => {
                out.push_back(Step::now(self.frame(
                    &json!({"error": {"message": "injected stream error", "type": "TestError", "code": 500}})
                        .to_string(),
                )));
                out.push_back(Step::now(self.frame("[DONE]")));
                return out;
            }
            Some(Fault::Reset { .. }) => {
                out.push_back(Step::fail(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected reset",
                )));
                return out;
            }
            Some(Fault::Truncate { .. }) => return out,
            _ => {}
        }
        let reason = match &self.texts {
            Some((_, true)) => "stop",
            Some((_, false)) => "length",
            None if self.tokens == 0 => "stop",
            None => "length",
        };
        let (prompt, tokens) = (self.prompt_tokens, self.tokens);
        let s = &self.schedule;
        let usage = json!({"prompt_tokens": prompt, "completion_tokens": tokens,
            "total_tokens": prompt + tokens as u64});
        let timings = json!({"prompt_n": prompt, "predicted_n": tokens,
            "prompt_ms": s.ttft.as_secs_f64() * 1e3, "predicted_per_token_ms": s.itl.as_secs_f64() * 1e3});
        let llama = self.llama();
        let frames: Vec<Value> = if self.chat {
            let delta = if llama {
                json!({})
            } else {
                json!({"content": ""})
            };
            let finish = self.chunk(
                json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason}]),
                true,
            );
            let mut u = self.chunk(json!([]), true);
            u["usage"] = usage;
            if llama {
                u["timings"] = timings;
            }
            vec![finish, u]
        } else if llama {
            let empty = self.chunk(
                json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": null}]),
                false,
            );
            let mut last = self.chunk(
                json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": reason}]),
                false,
            );
            last["usage"] = usage;
            last["timings"] = timings;
            vec![empty, last]
        } else {
            let finish = self.chunk(
                json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": reason}]),
                true,
            );
            let mut u = self.chunk(json!([]), true);
            u["usage"] = usage;
            vec![finish, u]
        };
        for (i, f) in frames.iter().enumerate() {
            let bytes = self.frame(&f.to_string());
            // A response without tokens still finishes after the TTFT.
            out.push_back(if i == 0 && self.tokens == 0 {
                Step::at(s.arrival + s.ttft, bytes)
            } else {
                Step::now(bytes)
            });
        }
        if self.fault != Some(Fault::NoDone) {
            out.push_back(Step::now(self.frame("[DONE]")));
        }
        out
    }
}

impl common::Script for Script {
    fn next(&mut self) -> Option<Step> {
        loop {
            match self.stage {
                Stage::Start => {
                    self.stage = Stage::Tokens;
                    if self.chat {
                        return Some(Step::now(self.role()));
                    }
                }
                Stage::Tokens if self.next < self.sent_until => {
                    let k = self.next;
                    let due = self.schedule.token(k);
                    if self.fault == Some(Fault::Malformed) && k == 1 && !self.malformed_sent {
                        self.malformed_sent = true;
                        return Some(Step::at(due, self.frame("{\"choices\": [oops")));
                    }
                    self.next += 1;
                    return Some(Step::token(due, self.token(k)));
                }
                Stage::Tokens => {
                    self.stage = Stage::Ending;
                    self.ending = self.ending();
                }
                Stage::Ending => return self.ending.pop_front(),
            }
        }
    }
}

/// The factor by which one server instance is slower (> 1) or faster (< 1) than nominal: the
/// exponential of a normal draw with standard deviation `sigma_pct` / 100 (so the factor's
/// spread is about `sigma_pct` percent), from `seed` when given, else from the OS.
pub fn run_drift_factor(sigma_pct: f64, seed: Option<u64>) -> f64 {
    use rand::{RngExt, SeedableRng};
    if sigma_pct <= 0.0 {
        return 1.0;
    }
    let mut rng = match seed {
        Some(s) => rand::rngs::StdRng::seed_from_u64(s),
        None => rand::rngs::StdRng::from_rng(&mut rand::rng()),
    };
    let z: f64 = rng.sample(rand_distr::StandardNormal);
    (z * sigma_pct / 100.0).exp()
}
