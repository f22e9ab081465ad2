//! An OpenAI-compatible streaming server whose true delays are known.
//!
//! It is how kvbench checks its own measurements (integration tests, `kvbench test-server`):
//! token `k` of a response is released at `arrival + ttft + k × itl`, so measured TTFT, ITL, TPOT
//! and E2E can be compared with the truth. It speaks the vLLM and llama.cpp wire variants and
//! injects faults on every k-th request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// The text a request asks about: the last message's text, or the completions prompt.
fn prompt_text(body: &Value) -> String {
    if let Some(p) = body.get("prompt").and_then(Value::as_str) {
        return p.to_owned();
    }
    let last = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last());
    match last.and_then(|m| m.get("content")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
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
    stop: CancellationToken,
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

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a server on `addr` (port 0 = any free port).
pub async fn start(cfg: TestServerConfig, addr: SocketAddr) -> anyhow::Result<TestServer> {
    let shared = Arc::new(Shared {
        cfg,
        requests: AtomicU64::new(0),
        started: Instant::now(),
    });
    let app = Router::new()
        .route("/health", get(|| async { "" }))
        .route(
            "/version",
            get(|| async { Json(json!({"version": "kvbench-testserver"})) }),
        )
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
    Ok(TestServer { addr, shared, stop })
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
            Json(json!({"object": "list", "data": [{
                "id": sh.cfg.model, "object": "model", "created": 0,
                "owned_by": owned_by, "max_model_len": 4096
            }]}))
            .into_response()
        }
    }
}

async fn chat(state: State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    respond(state.0, body, true)
}

async fn completions(state: State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    respond(state.0, body, false)
}

fn prompt_words(body: &Value) -> u64 {
    let count = |s: &str| s.split_whitespace().count() as u64;
    if let Some(p) = body.get("prompt").and_then(Value::as_str) {
        return count(p);
    }
    body.get("messages")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .map(|msg| match msg.get("content") {
                    Some(Value::String(s)) => count(s),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .map(count)
                        .sum(),
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn respond(sh: Arc<Shared>, body: Value, chat: bool) -> Response {
    let arrival = Instant::now();
    let n = sh.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let trended;
    let cfg = if sh.cfg.trend_pct_per_min != 0.0 {
        let minutes = arrival.duration_since(sh.started).as_secs_f64() / 60.0;
        let f = (1.0 + sh.cfg.trend_pct_per_min * minutes / 100.0).max(0.0);
        trended = TestServerConfig {
            ttft: sh.cfg.ttft.mul_f64(f),
            itl: sh.cfg.itl.mul_f64(f),
            ..sh.cfg.clone()
        };
        &trended
    } else {
        &sh.cfg
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
    let max_tokens = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(16) as u32;
    let texts = cfg.answers.as_ref().map(|a| {
        let mut t = word_tokens(&(a.0)(&prompt_text(&body)));
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
    let prompt_tokens = prompt_words(&body);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let cfg = cfg.clone();
    tokio::spawn(async move {
        let _ = stream_tokens(
            &cfg,
            chat,
            tokens,
            prompt_tokens,
            fault,
            arrival,
            n,
            texts,
            tx,
        )
        .await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

type Tx = mpsc::Sender<Result<Bytes, std::io::Error>>;

struct Framer<'a> {
    cfg: &'a TestServerConfig,
    tx: &'a Tx,
}

impl Framer<'_> {
    async fn send(&self, data: &str) -> Result<(), ()> {
        let eol = if self.cfg.crlf { "\r\n" } else { "\n" };
        let mut s = String::with_capacity(data.len() + 16);
        if self.cfg.comments {
            s.push_str(": ping");
            s.push_str(eol);
        }
        s.push_str(if self.cfg.no_space { "data:" } else { "data: " });
        s.push_str(data);
        s.push_str(eol);
        s.push_str(eol);
        self.tx.send(Ok(Bytes::from(s))).await.map_err(|_| ())
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_tokens(
    cfg: &TestServerConfig,
    chat: bool,
    tokens: u32,
    prompt_tokens: u64,
    fault: Option<Fault>,
    arrival: Instant,
    n: u64,
    texts: Option<(Vec<String>, bool)>,
    tx: Tx,
) -> Result<(), ()> {
    let f = Framer { cfg, tx: &tx };
    let id = format!("chatcmpl-{n}");
    let model = &cfg.model;
    let llama = cfg.flavor == Flavor::Llamacpp;
    if chat {
        let content = if llama { Value::Null } else { json!("") };
        f.send(&json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}, "logprobs": null, "finish_reason": null}]})
            .to_string())
            .await?;
    }
    let cut = match fault {
        Some(Fault::StreamError { after } | Fault::Reset { after } | Fault::Truncate { after }) => {
            Some(after.min(tokens))
        }
        _ => None,
    };
    for k in 0..tokens {
        if cut == Some(k) {
            break;
        }
        tokio::time::sleep_until(arrival + cfg.ttft + cfg.itl * k).await;
        if fault == Some(Fault::Malformed) && k == 1 {
            f.send("{\"choices\": [oops").await?;
        }
        let text = match &texts {
            Some((t, _)) => t[k as usize].clone(),
            None => format!(" tok{k}"),
        };
        let reasoning = k < cfg.reasoning_tokens;
        let chunk = if chat {
            let delta = match (reasoning, llama) {
                (true, false) => json!({"reasoning": text}),
                (true, true) => json!({"reasoning_content": text}),
                (false, _) => json!({"content": text}),
            };
            json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]})
        } else {
            json!({"id": id, "object": "text_completion", "created": 0, "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": null}]})
        };
        f.send(&chunk.to_string()).await?;
    }
    match fault {
        Some(Fault::StreamError { .. }) => {
            f.send(&json!({"error": {"message": "injected stream error", "type": "TestError", "code": 500}}).to_string())
                .await?;
            f.send("[DONE]").await?;
            return Ok(());
        }
        Some(Fault::Reset { .. }) => {
            let _ = tx
                .send(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected reset",
                )))
                .await;
            return Ok(());
        }
        Some(Fault::Truncate { .. }) => return Ok(()),
        _ => {}
    }
    if tokens == 0 {
        tokio::time::sleep_until(arrival + cfg.ttft).await;
    }
    let reason = match &texts {
        Some((_, true)) => "stop",
        Some((_, false)) => "length",
        None if tokens == 0 => "stop",
        None => "length",
    };
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
        "total_tokens": prompt_tokens + tokens as u64});
    let timings = json!({"prompt_n": prompt_tokens, "predicted_n": tokens,
        "prompt_ms": cfg.ttft.as_secs_f64() * 1e3, "predicted_per_token_ms": cfg.itl.as_secs_f64() * 1e3});
    if chat {
        let delta = if llama {
            json!({})
        } else {
            json!({"content": ""})
        };
        f.send(
            &json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason}]})
            .to_string(),
        )
        .await?;
        let mut u = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [], "usage": usage});
        if llama {
            u["timings"] = timings;
        }
        f.send(&u.to_string()).await?;
    } else if llama {
        f.send(
            &json!({"id": id, "object": "text_completion", "model": model,
            "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": null}]})
            .to_string(),
        )
        .await?;
        f.send(
            &json!({"id": id, "object": "text_completion", "model": model,
            "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": reason}],
            "usage": usage, "timings": timings})
            .to_string(),
        )
        .await?;
    } else {
        f.send(
            &json!({"id": id, "object": "text_completion", "created": 0, "model": model,
            "choices": [{"index": 0, "text": "", "logprobs": null, "finish_reason": reason}]})
            .to_string(),
        )
        .await?;
        f.send(
            &json!({"id": id, "object": "text_completion", "created": 0, "model": model,
            "choices": [], "usage": usage})
            .to_string(),
        )
        .await?;
    }
    if fault != Some(Fault::NoDone) {
        f.send("[DONE]").await?;
    }
    Ok(())
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
