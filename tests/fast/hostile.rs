//! Servers that misbehave on purpose (issue 19): bodies without end, lines without end,
//! redirects to another origin, absurd usage counts, terminal control characters. kvbench must
//! bound what it holds, say what happened with a clear error kind, never follow a server
//! elsewhere, and never pass a server's control characters to the terminal.
//!
//! The servers are raw loopback sockets written here, so each can do what no real server
//! should; they count what they managed to write, which shows whether kvbench stopped reading.

use crate::common;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// One request as the hostile server read it.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
}

/// What the hostile server answers: `head` (status line, headers and any body start), then
/// `filler` written `repeat` times (stopping when the client goes away), then the connection
/// is closed, or held open without a byte more when `hang`.
#[derive(Clone, Default)]
struct Answer {
    head: Vec<u8>,
    filler: Vec<u8>,
    repeat: u64,
    hang: bool,
}

type Handler = dyn Fn(&Req, usize) -> Answer + Send + Sync;

/// What the server saw: requests in order, and the bytes written per path.
#[derive(Default)]
struct Stats {
    requests: Mutex<Vec<Req>>,
    written: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn count(&self, method: &str, path: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(path))
            .count()
    }
    fn written(&self, path: &str) -> u64 {
        self.written
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.starts_with(path))
            .map(|(_, n)| n)
            .sum()
    }
}

struct Hostile {
    url: String,
    stats: Arc<Stats>,
}

/// Starts a server on a free loopback port: one request per connection; `handler` gets the
/// request and how many requests of the same method and path came before it.
async fn hostile(handler: impl Fn(&Req, usize) -> Answer + Send + Sync + 'static) -> Hostile {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(Stats::default());
    let handler: Arc<Handler> = Arc::new(handler);
    let st = stats.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (st, handler) = (st.clone(), handler.clone());
            tokio::spawn(serve_one(sock, st, handler));
        }
    });
    Hostile {
        url: format!("http://{addr}"),
        stats,
    }
}

async fn serve_one(mut sock: tokio::net::TcpStream, st: Arc<Stats>, handler: Arc<Handler>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let req = loop {
        let Ok(n) = sock.read(&mut tmp).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&tmp[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let len = text[..end]
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            let mut words = text.split_whitespace();
            break Req {
                method: words.next().unwrap_or("").to_owned(),
                path: words.next().unwrap_or("").to_owned(),
            };
        }
    };
    let nth = {
        let mut all = st.requests.lock().unwrap();
        let nth = all
            .iter()
            .filter(|r| r.method == req.method && r.path == req.path)
            .count();
        all.push(req.clone());
        nth
    };
    let answer = handler(&req, nth);
    let add = |n: usize| {
        *st.written
            .lock()
            .unwrap()
            .entry(req.path.clone())
            .or_default() += n as u64;
    };
    if sock.write_all(&answer.head).await.is_err() {
        return;
    }
    add(answer.head.len());
    for _ in 0..answer.repeat {
        if sock.write_all(&answer.filler).await.is_err() {
            return;
        }
        add(answer.filler.len());
    }
    if answer.hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

fn head(status: &str, ctype: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn json(body: &str) -> Answer {
    Answer {
        head: head("200 OK", "application/json", body),
        ..Answer::default()
    }
}

fn models(id: &str, owned_by: &str) -> Answer {
    json(
        &serde_json::json!({"object": "list", "data": [{"id": id, "owned_by": owned_by}]})
            .to_string(),
    )
}

/// A head whose body runs until the connection closes.
fn open_head(status: &str, ctype: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nConnection: close\r\n\r\n").into_bytes()
}

fn token_event(text: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}}]})
    )
}

/// A complete, well-formed stream of `n` tokens.
fn good_stream(n: usize) -> Answer {
    let mut body = String::new();
    for _ in 0..n {
        body += &token_event(" hi");
    }
    body += "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n";
    Answer {
        head: head("200 OK", "text/event-stream", &body),
        ..Answer::default()
    }
}

/// `MiB` mebibytes of `unit` repeated, written in 64 KiB pieces.
fn filler(unit: &[u8], mib: u64) -> (Vec<u8>, u64) {
    let per = (64 * 1024 / unit.len()).max(1);
    let piece = unit.repeat(per);
    let repeat = (mib << 20).div_ceil(piece.len() as u64);
    (piece, repeat)
}

/// The URL with credentials, which always sends streams through reqwest rather than the lean
/// HTTP/1.1 path (the server ignores them).
fn via_reqwest(url: &str) -> String {
    url.replacen("http://", "http://kvbench:secret@", 1)
}

async fn run(url: &str, args: &[&str]) -> kvbench::result::RunResult {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["--url", url, "--engine", "openai"];
    all.extend_from_slice(args);
    let cfg = common::config(dir.path(), &all);
    kvbench::runner::run(cfg, CancellationToken::new())
        .await
        .expect("run succeeds")
}

async fn run_err(url: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["--url", url];
    all.extend_from_slice(args);
    let cfg = common::config(dir.path(), &all);
    match kvbench::runner::run(cfg, CancellationToken::new()).await {
        Ok(r) => panic!("expected an error, got a result: {:?}", r.errors),
        Err(e) => format!("{e:#}"),
    }
}

/// A server whose `/v1/models` is fine and whose streams are `answer`.
async fn streaming(answer: Answer) -> Hostile {
    hostile(move |req, _| match req.method.as_str() {
        "GET" => models("m", "test"),
        _ => answer.clone(),
    })
    .await
}

fn errors(r: &kvbench::result::RunResult) -> Vec<(String, u64)> {
    r.errors.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

const CAPPED: &[(&str, u64)] = &[("response_too_large", 1)];

fn capped(r: &kvbench::result::RunResult) -> bool {
    errors(r)
        == CAPPED
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<Vec<_>>()
}

#[tokio::test]
async fn an_sse_line_without_end_is_response_too_large_on_both_paths() {
    let (piece, repeat) = filler(b"a", 40);
    let mut h = open_head("200 OK", "text/event-stream");
    h.extend_from_slice(b"data: ");
    let server = streaming(Answer {
        head: h,
        filler: piece,
        repeat,
        hang: false,
    })
    .await;
    for url in [server.url.clone(), via_reqwest(&server.url)] {
        let r = run(&url, &["-n", "1"]).await;
        assert!(capped(&r), "{url}: {:?}", r.errors);
    }
    let written = server.stats.written("/v1/chat/completions");
    assert!(
        written < 60 << 20,
        "kvbench read on: {written} bytes written for 80 MiB sent"
    );
}

#[tokio::test]
async fn an_sse_event_without_end_is_response_too_large() {
    let line = format!("data: {}\n", "b".repeat(1000));
    let (piece, repeat) = filler(line.as_bytes(), 40);
    let server = streaming(Answer {
        head: open_head("200 OK", "text/event-stream"),
        filler: piece,
        repeat,
        hang: false,
    })
    .await;
    for url in [server.url.clone(), via_reqwest(&server.url)] {
        let r = run(&url, &["-n", "1"]).await;
        assert!(capped(&r), "{url}: {:?}", r.errors);
    }
}

#[tokio::test]
async fn a_stream_of_tokens_without_end_is_response_too_large() {
    let (piece, repeat) = filler(token_event("x").as_bytes(), 80);
    let server = streaming(Answer {
        head: open_head("200 OK", "text/event-stream"),
        filler: piece,
        repeat,
        hang: false,
    })
    .await;
    let r = run(&server.url, &["-n", "1"]).await;
    assert!(capped(&r), "{:?}", r.errors);
}

#[tokio::test]
async fn kept_answer_text_is_capped() {
    let (piece, repeat) = filler(token_event(&"y".repeat(60_000)).as_bytes(), 100);
    let server = streaming(Answer {
        head: open_head("200 OK", "text/event-stream"),
        filler: piece,
        repeat,
        hang: false,
    })
    .await;
    let r = run(&server.url, &["-n", "1", "--save-text"]).await;
    assert!(capped(&r), "{:?}", r.errors);
}

#[tokio::test]
async fn an_error_body_without_end_is_capped_on_both_paths() {
    let (piece, repeat) = filler(b"z", 64);
    let server = streaming(Answer {
        head: open_head("500 Internal Server Error", "text/plain"),
        filler: piece,
        repeat,
        hang: false,
    })
    .await;
    for url in [server.url.clone(), via_reqwest(&server.url)] {
        let r = run(&url, &["-n", "1"]).await;
        assert_eq!(errors(&r), vec![("http_500".to_owned(), 1)], "{url}");
    }
    let written = server.stats.written("/v1/chat/completions");
    assert!(
        written < 64 << 20,
        "an error body was read to its end: {written} bytes for two 64 MiB bodies"
    );
}

#[tokio::test]
async fn a_models_body_without_end_is_refused() {
    let (piece, repeat) = filler(b" ", 64);
    let mut h = open_head("200 OK", "application/json");
    h.extend_from_slice(b"{\"data\": [");
    let server = hostile(move |_, _| Answer {
        head: h.clone(),
        filler: piece.clone(),
        repeat,
        hang: false,
    })
    .await;
    let e = run_err(&server.url, &["-n", "1"]).await;
    assert!(e.contains("response_too_large"), "{e}");
    assert!(server.stats.written("/v1/models") < 48 << 20);
}

#[tokio::test]
async fn a_version_body_without_end_is_capped() {
    let (piece, repeat) = filler(b" ", 64);
    let server = hostile(
        move |req, _| match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/v1/models") => models("m", "vllm"),
            ("GET", _) => Answer {
                head: open_head("200 OK", "application/json"),
                filler: piece.clone(),
                repeat,
                hang: false,
            },
            _ => good_stream(2),
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &["--url", &server.url, "-n", "1"]);
    let r = kvbench::runner::run(cfg, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.requests.completed, 1, "{:?}", r.errors);
    assert_eq!(server.stats.count("GET", "/version"), 1);
    let written = server.stats.written("/version");
    assert!(written < 48 << 20, "/version read to its end: {written}");
}

#[tokio::test]
async fn a_metrics_page_without_end_is_capped() {
    let (piece, repeat) = filler(b"vllm:num_requests_running 1\n", 64);
    let server = hostile(move |_, _| Answer {
        head: open_head("200 OK", "text/plain"),
        filler: piece.clone(),
        repeat,
        hang: false,
    })
    .await;
    let got = kvbench::server::scrape::fetch(&reqwest::Client::new(), &server.url).await;
    assert!(got.is_none(), "a 64 MiB metrics page was taken");
    let written = server.stats.written("/metrics");
    assert!(written < 48 << 20, "/metrics read to its end: {written}");
}

#[tokio::test]
async fn a_health_check_body_without_end_is_capped() {
    let (piece, repeat) = filler(b" ", 64);
    let server = hostile(move |req, _| match req.path.as_str() {
        "/health" => json(""),
        _ => {
            let mut h = open_head("200 OK", "application/json");
            h.extend_from_slice(b"{\"data\": [");
            Answer {
                head: h,
                filler: piece.clone(),
                repeat,
                hang: false,
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    std::fs::write(&log, "INFO started\n").unwrap();
    let exp = dir.path().join("exp.toml");
    std::fs::write(
        &exp,
        format!(
            "name = \"h\"\n[server]\nlauncher = \"attach\"\nurl = \"{}\"\nlog_file = \"{}\"\nhealth_timeout = \"3s\"\n[workload]\nnum_requests = 1\n[[arms]]\nname = \"a\"\n",
            server.url,
            log.display()
        ),
    )
    .unwrap();
    let o = kvbench(&[
        "run",
        "--config",
        &exp.display().to_string(),
        "--arm",
        "a",
        "--out-dir",
        &dir.path().display().to_string(),
        "--quiet",
    ])
    .await;
    assert!(!o.status.success());
    let checks = server.stats.count("GET", "/v1/models") as u64;
    assert!(checks >= 1);
    let written = server.stats.written("/v1/models");
    assert!(
        written < checks * (48 << 20),
        "health checks read /v1/models to its end: {written} bytes in {checks} checks"
    );
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_never_followed() {
    let elsewhere = streaming(good_stream(3)).await;
    let target = elsewhere.url.clone();
    let server = hostile(move |req, _| match req.method.as_str() {
        "GET" => models("m", "test"),
        _ => Answer {
            head: format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}/v1/chat/completions\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
            ..Answer::default()
        },
    })
    .await;
    for url in [server.url.clone(), via_reqwest(&server.url)] {
        let r = run(&url, &["-n", "2", "--header", "X-Team-Token: t0ps3cret"]).await;
        assert_eq!(errors(&r), vec![("http_307".to_owned(), 2)], "{url}");
    }
    assert_eq!(
        elsewhere.stats.count("POST", "/"),
        0,
        "a stream followed a redirect to another server (with the custom headers)"
    );

    // The model list too: a redirect elsewhere is an error, not another server's models.
    let target = elsewhere.url.clone();
    let server = hostile(move |_, _| Answer {
        head: format!(
            "HTTP/1.1 302 Found\r\nLocation: {target}/v1/models\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
        ..Answer::default()
    })
    .await;
    let e = run_err(&server.url, &["-n", "1"]).await;
    assert!(e.contains("redirect"), "{e}");
    assert_eq!(elsewhere.stats.count("GET", "/"), 0);
}

#[tokio::test]
async fn a_redirect_within_the_same_server_is_followed() {
    let server = hostile(move |req, _| match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/models") => Answer {
            head: b"HTTP/1.1 308 Permanent Redirect\r\nLocation: /v1/models/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            ..Answer::default()
        },
        ("GET", _) => models("m", "test"),
        _ => good_stream(2),
    })
    .await;
    let r = run(&via_reqwest(&server.url), &["-n", "1"]).await;
    assert_eq!(r.requests.completed, 1, "{:?}", r.errors);
}

#[tokio::test]
async fn usage_counts_near_the_u64_limit_do_not_wrap_totals() {
    let body = format!(
        "{}{}data: [DONE]\n\n",
        token_event(" a"),
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":18446744073709551614,\"completion_tokens\":18446744073709551614}}\n\n"
    );
    let server = streaming(Answer {
        head: head("200 OK", "text/event-stream", &body),
        ..Answer::default()
    })
    .await;
    let r = run(&server.url, &["-n", "3", "-c", "1"]).await;
    assert_eq!(r.requests.completed, 3, "{:?}", r.errors);
    assert_eq!(r.tokens.output_total, 3, "{:?}", r.tokens);
    assert_eq!(r.anomalies.get("implausible_usage"), Some(&3));
}

async fn kvbench(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvbench"));
    cmd.args(args).stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// Terminal control: ESC starts escape sequences (clear the screen, set the clipboard with
/// OSC 52, retitle the window), BEL ends OSC, CR and BS overwrite what was printed.
fn assert_no_control(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let bad: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n' && *c != '\t')
        .collect();
    assert!(
        bad.is_empty(),
        "{what} carries control characters {bad:?}: {text:?}"
    );
}

#[tokio::test]
async fn control_characters_from_a_server_never_reach_the_terminal() {
    let evil = "m\u{1b}]52;c;ZXZpbA==\u{7}\u{1b}[2J\r\u{8}\u{9b}31m";
    let server = hostile(move |req, _| match req.method.as_str() {
        "GET" => models(evil, "test"),
        _ => {
            let finish = serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "\u{1b}[31mstop"}]});
            let body = format!("{}data: {finish}\n\ndata: [DONE]\n\n", token_event(" a"));
            Answer {
                head: head("200 OK", "text/event-stream", &body),
                ..Answer::default()
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json").display().to_string();
    let o = kvbench(&["run", "--url", &server.url, "-n", "1", "-o", &out]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_no_control("the summary", &o.stdout);
    assert_no_control("stderr", &o.stderr);

    // A wrong model: the error lists the served ids.
    let o = kvbench(&["run", "--url", &server.url, "--model", "x", "-o", &out]).await;
    assert!(!o.status.success());
    assert_no_control("the unknown-model error", &o.stderr);

    // An error page.
    let server = hostile(move |_, _| Answer {
        head: head(
            "500 Internal Server Error",
            "text/plain",
            "boom\u{1b}]0;owned\u{7}\u{1b}[2J",
        ),
        ..Answer::default()
    })
    .await;
    let o = kvbench(&["run", "--url", &server.url, "-n", "1", "-o", &out]).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("boom"), "{err}");
    assert_no_control("the HTTP error", &o.stderr);
}

#[tokio::test]
async fn the_models_preflight_keeps_to_timeout() {
    let server = hostile(|_, _| Answer {
        hang: true,
        ..Answer::default()
    })
    .await;
    let t0 = Instant::now();
    let e = run_err(&server.url, &["-n", "1", "--timeout", "1s"]).await;
    assert!(e.contains("timed out"), "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the preflight took {:?} with --timeout 1s",
        t0.elapsed()
    );
}

/// `/v1/models` answers the preflight, then hangs on every pre-warm connection; streams are
/// answered.
async fn prewarm_hangs() -> Hostile {
    hostile(|req, nth| match req.method.as_str() {
        "GET" if nth == 0 => models("m", "test"),
        "GET" => Answer {
            hang: true,
            ..Answer::default()
        },
        _ => good_stream(2),
    })
    .await
}

#[tokio::test]
async fn prewarm_keeps_to_timeout() {
    let server = prewarm_hangs().await;
    let t0 = Instant::now();
    let r = run(&server.url, &["-n", "1", "-c", "2", "--timeout", "2s"]).await;
    assert_eq!(r.requests.completed, 1, "{:?}", r.errors);
    assert!(
        t0.elapsed() < Duration::from_secs(12),
        "pre-warm took {:?} with --timeout 2s",
        t0.elapsed()
    );
}

#[tokio::test]
async fn prewarm_is_cancellable() {
    let server = prewarm_hangs().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &["--url", &server.url, "-n", "4", "-c", "2"]);
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        c.cancel();
    });
    let t0 = Instant::now();
    let r = kvbench::runner::run(cfg, cancel).await.unwrap();
    assert!(r.interrupted);
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "an interrupted pre-warm took {:?}",
        t0.elapsed()
    );
}
