//! OpenAI-compatible streaming client: sends one request and records its raw timeline.
//!
//! Streaming requests to a plain `http://` server go through the lean HTTP/1.1 path ([`h1`]),
//! which takes each read's instant from the kernel's receive timestamp; everything else (https,
//! proxies, non-streaming requests) goes through one shared `reqwest::Client`. Either way each
//! network read is timestamped once, and every event it completes gets that instant. Nothing
//! in the stream loop can panic: each failure becomes an [`ErrorKind`] on the record.

pub mod body;
pub mod chunk;
pub mod h1;
pub mod request;
pub mod sse;
mod stream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::record::{ErrorKind, RequestRecord};
use stream::{fail, BodySource, Read, StreamState, Then};

pub use stream::MAX_PLAUSIBLE_TOKENS;

/// Which OpenAI endpoint to call.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `/v1/chat/completions` (messages; the server applies the chat template).
    Chat,
    /// `/v1/completions` (raw prompt).
    Completions,
}

/// The server software, as far as kvbench can tell; it decides engine-specific request fields.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// Detect from `/v1/models` (`owned_by`).
    Auto,
    /// vLLM.
    Vllm,
    /// llama.cpp `llama-server`.
    Llamacpp,
    /// Any other OpenAI-compatible server: only standard fields are sent.
    Openai,
}

/// Normalises a user URL into the API base (its path ending in `/v1`), keeping any path prefix
/// and query the user gave: `http://h:8000` and `http://h:8000/v1` both give
/// `http://h:8000/v1`; `http://h/proxy` gives `http://h/proxy/v1`; `http://h/?key=k` gives
/// `http://h/v1?key=k` (a gateway's query stays a query). Errors never show credentials or
/// query values.
pub fn api_base(url: &str) -> anyhow::Result<String> {
    let mut parsed = reqwest::Url::parse(url).map_err(|e| {
        anyhow::anyhow!(
            "invalid --url {:?}: {e} (expected e.g. http://127.0.0.1:8000)",
            redact_url(url)
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        anyhow::bail!(
            "invalid --url {:?}: the scheme must be http or https",
            redact_url(url)
        );
    }
    let path = parsed.path().trim_end_matches('/').to_owned();
    if !path.ends_with("/v1") {
        parsed.set_path(&format!("{path}/v1"));
    } else {
        parsed.set_path(&path);
    }
    parsed.set_fragment(None);
    Ok(parsed.to_string())
}

/// A URL as it may be shown or recorded: without credentials, and with any query replaced by
/// `REDACTED` (gateways put keys there). A URL that does not parse is cut at the same places.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("");
                let _ = u.set_password(None);
            }
            if u.query().is_some() {
                u.set_query(Some("REDACTED"));
            }
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => {
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let path = tail.split(['?', '#']).next().unwrap_or("");
            let query = if tail.contains('?') { "?REDACTED" } else { "" };
            let scheme = if scheme.is_empty() {
                String::new()
            } else {
                format!("{scheme}://")
            };
            format!("{scheme}{host}{path}{query}")
        }
    }
}

/// The same-origin redirect policy of every client kvbench builds: a redirect within the
/// server is followed (at most 10), one to another origin is not. Following it would send the
/// user's headers elsewhere and silently measure another server; the 3xx answer is reported.
pub fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt
            .previous()
            .first()
            .is_none_or(|first| first.origin() == attempt.url().origin());
        if !same {
            attempt.stop()
        } else if attempt.previous().len() > 10 {
            attempt.error("more than 10 redirects")
        } else {
            attempt.follow()
        }
    })
}

/// What a 3xx answer that was not followed says, with its (redacted) target.
fn redirect_note(status: u16, location: Option<&str>) -> Option<String> {
    if !(300..400).contains(&status) {
        return None;
    }
    let to = location.map_or_else(|| "an unnamed place".to_owned(), redact_url);
    Some(format!("redirected to {to} (not followed)"))
}

/// Settings of the HTTP client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// API base ending in `/v1`.
    pub api_base: String,
    /// Bearer token (never logged, never written to results).
    pub api_key: Option<String>,
    /// Extra headers (values never written to results).
    pub headers: Vec<(String, String)>,
    /// Per-request time limit.
    pub timeout: Duration,
    /// Expected number of parallel streams (sizes the idle pool).
    pub pool_size: usize,
}

/// Idle pooled connections are dropped after this long: shorter than the keep-alive timeout of
/// common servers (uvicorn in vLLM and cpp-httplib in llama.cpp close idle connections after
/// 5 s), so the client rarely reuses a connection the server is closing.
pub const POOL_IDLE: Duration = Duration::from_secs(3);

/// A shared, keep-alive HTTP client for one server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    api_base: String,
    /// `api_base` parsed: request URLs are built on its path, keeping its query.
    base: reqwest::Url,
    timeout: Duration,
    /// The lean HTTP/1.1 path for streaming requests to a plain `http://` server
    /// ([`h1`]); `None` when reqwest streams (https, a proxy, credentials in the URL).
    fast: Option<Arc<Fast>>,
}

#[derive(Debug)]
struct Fast {
    target: h1::Target,
    pool: h1::Pool,
}

/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Initial read buffer of a streaming request: a few events per read. It grows (doubling) when
/// a read fills it, so events that queue up are still read several at a time, and a stream of
/// small reads keeps about 1 KiB, not a page, resident.
const READ_BUF: usize = 1024;
use body::{ERROR_BODY_LIMIT, MAX_JSON_BODY};

impl Client {
    /// Builds the client; fails on an invalid header.
    pub fn new(opts: &ClientOptions) -> anyhow::Result<Self> {
        let mut headers = HeaderMap::new();
        if let Some(key) = &opts.api_key {
            let mut v = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                anyhow::anyhow!("the API key contains characters not allowed in a header")
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        for (k, v) in &opts.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| anyhow::anyhow!("invalid header name {k:?} in --header"))?;
            let mut value = HeaderValue::from_str(v)
                .map_err(|_| anyhow::anyhow!("invalid value for header {k:?} in --header"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let fast = h1::Target::for_base(&opts.api_base, &headers).map(|target| {
            Arc::new(Fast {
                target,
                pool: h1::Pool::new(opts.pool_size, POOL_IDLE),
            })
        });
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(opts.pool_size.max(1))
            .pool_idle_timeout(POOL_IDLE)
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(same_origin_redirects())
            .http1_only()
            .build()?;
        let base = reqwest::Url::parse(&opts.api_base).map_err(|e| {
            anyhow::anyhow!("invalid API base {:?}: {e}", redact_url(&opts.api_base))
        })?;
        Ok(Self {
            http,
            api_base: opts.api_base.clone(),
            base,
            timeout: opts.timeout,
            fast,
        })
    }

    /// Time allowed to the requests around the measurement (the model list, pre-warm): the
    /// request time limit, at most 30 s.
    fn probe_timeout(&self) -> Duration {
        self.timeout.min(Duration::from_secs(30))
    }

    /// `{api_base}/{path}`, the API base's query kept as the query.
    pub fn url(&self, path: &str) -> String {
        let mut u = self.base.clone();
        let prefix = self.base.path().trim_end_matches('/');
        u.set_path(&format!("{prefix}/{}", path.trim_start_matches('/')));
        u.to_string()
    }

    /// `path` at the server's root (the API base without its `/v1`), the query kept: for
    /// engine endpoints outside the OpenAI API (`/version`, `/props`).
    pub fn root_url(&self, path: &str) -> String {
        let mut u = self.base.clone();
        let prefix = self.base.path().trim_end_matches('/');
        let root = prefix.strip_suffix("/v1").unwrap_or(prefix);
        u.set_path(&format!("{root}/{}", path.trim_start_matches('/')));
        u.to_string()
    }

    /// Whether streaming requests use the lean HTTP/1.1 path ([`h1`]) rather than reqwest.
    pub fn uses_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Opens up to `n` keep-alive connections before measuring, each carrying one `GET /models`,
    /// so that neither connection set-up nor the server's first request on a connection is
    /// counted in the first requests' TTFT. Gives up on a connection after the request time
    /// limit (at most 30 s), and on all of them when the run is cancelled.
    pub async fn prewarm(&self, n: usize, cancel: &CancellationToken) {
        let work = async {
            match &self.fast {
                Some(fast) => {
                    let request = fast.target.get("models");
                    let conns = futures_util::future::join_all((0..n).map(|_| {
                        prewarm_one(&fast.target.authority, &request, self.probe_timeout())
                    }))
                    .await;
                    for conn in conns.into_iter().flatten() {
                        fast.pool.put(conn);
                    }
                }
                None => {
                    futures_util::future::join_all((0..n).map(|_| self.get_json("models"))).await;
                }
            }
        };
        tokio::select! {
            _ = work => {}
            _ = cancel.cancelled() => {}
        }
    }

    /// The API base URL (ends in `/v1`).
    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    /// GET `{api_base}/{path}` and parse JSON (at most [`MAX_JSON_BODY`], within the request
    /// time limit or 30 s, whichever is shorter); a one-line error otherwise, which never shows
    /// credentials or query values.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.get_json_at(&self.url(path), self.probe_timeout())
            .await
    }

    /// [`Client::get_json`] of `path` at the server's root ([`Client::root_url`]), within
    /// `within`.
    pub async fn get_root_json(
        &self,
        path: &str,
        within: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        self.get_json_at(&self.root_url(path), within).await
    }

    async fn get_json_at(&self, url: &str, within: Duration) -> anyhow::Result<serde_json::Value> {
        let shown = redact_url(url);
        let resp = self
            .http
            .get(url)
            .timeout(within)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {shown}: {}", describe_reqwest(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = body::read_prefix(resp, ERROR_BODY_LIMIT, Duration::from_secs(5)).await;
            let what = redirect_note(status.as_u16(), location.as_deref())
                .unwrap_or_else(|| snippet(&body));
            anyhow::bail!("GET {shown} returned HTTP {}: {what}", status.as_u16());
        }
        let body = body::read_capped(resp, MAX_JSON_BODY)
            .await
            .map_err(|e| anyhow::anyhow!("reading {shown}: {e}"))?;
        serde_json::from_slice(&body).map_err(|_| {
            anyhow::anyhow!("GET {shown} did not return JSON (got: {})", snippet(&body))
        })
    }

    /// Streams one request and fills `rec` with its timeline. `body` is the serialized JSON
    /// request; `origin` is the run's time origin. Never panics on any server behaviour.
    pub async fn stream(
        &self,
        endpoint: Endpoint,
        body: bytes::Bytes,
        rec: &mut RequestRecord,
        origin: Instant,
        keep_text: bool,
        cancel: &CancellationToken,
    ) {
        self.stream_inner(endpoint, body, rec, origin, keep_text, cancel, None)
            .await;
    }

    /// [`Client::stream`], also collecting the per-token log-probabilities the server sends
    /// (when the body asked for them) into `logprobs`, in order.
    pub async fn stream_with_logprobs(
        &self,
        endpoint: Endpoint,
        body: bytes::Bytes,
        rec: &mut RequestRecord,
        origin: Instant,
        cancel: &CancellationToken,
        logprobs: &mut Vec<chunk::TokenLogprob>,
    ) {
        self.stream_inner(endpoint, body, rec, origin, true, cancel, Some(logprobs))
            .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_inner(
        &self,
        endpoint: Endpoint,
        body: bytes::Bytes,
        rec: &mut RequestRecord,
        origin: Instant,
        keep_text: bool,
        cancel: &CancellationToken,
        logprobs: Option<&mut Vec<chunk::TokenLogprob>>,
    ) {
        let path = match endpoint {
            Endpoint::Chat => "chat/completions",
            Endpoint::Completions => "completions",
        };
        let state = StreamState::new(keep_text, logprobs);
        match &self.fast {
            Some(fast) => {
                self.stream_h1(fast, path, &body, rec, origin, state, cancel)
                    .await
            }
            None => {
                self.stream_reqwest(path, body, rec, origin, state, cancel)
                    .await
            }
        }
    }

    /// [`Client::stream_inner`] through reqwest: sends the request, then reads the response
    /// with [`stream::read_response`].
    async fn stream_reqwest(
        &self,
        path: &str,
        body: bytes::Bytes,
        rec: &mut RequestRecord,
        origin: Instant,
        state: StreamState<'_>,
        cancel: &CancellationToken,
    ) {
        let url = self.url(path);
        let now_ns = || origin.elapsed().as_nanos() as u64;
        // A pooled keep-alive connection may have been closed by the server just before it is
        // reused ("connection closed before message completed", or reset while sending): the
        // request is sent again on another connection (at most MAX_STALE_RETRIES times, each
        // counted), and timed from the last send.
        let mut attempt = 0;
        let resp = loop {
            let req = self
                .http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .timeout(self.timeout)
                .body(body.clone());
            rec.sent_ns = now_ns();
            let resp = tokio::select! {
                r = req.send() => r,
                _ = cancel.cancelled() => {
                    rec.end_ns = now_ns();
                    fail(rec, ErrorKind::Cancelled, "interrupted before the response arrived");
                    return;
                }
            };
            match resp {
                Ok(r) => break r,
                Err(e) if attempt < MAX_STALE_RETRIES && is_stale_connection(&e) => {
                    attempt += 1;
                    rec.note("stale_connection_retry");
                }
                Err(e) => {
                    rec.end_ns = now_ns();
                    let kind = if e.is_timeout() {
                        ErrorKind::Timeout
                    } else if e.is_connect() {
                        ErrorKind::Connect
                    } else {
                        ErrorKind::Other
                    };
                    fail(rec, kind, &describe_reqwest(&e));
                    return;
                }
            }
        };
        rec.first_byte_ns = Some(now_ns());
        rec.note_instant(false);
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let source = ReqwestBody {
            resp,
            origin,
            // One cancellation future for the whole stream: creating one per read would
            // register and unregister a waiter on the token (a lock each) for every read.
            cancelled: Box::pin(cancel.cancelled()),
            last: bytes::Bytes::new(),
        };
        stream::read_response(status, location.as_deref(), source, rec, state, origin).await;
    }

    /// [`Client::stream_inner`] on the lean HTTP/1.1 path: sends the request, then reads the
    /// response with [`stream::read_response`].
    #[allow(clippy::too_many_arguments)]
    async fn stream_h1<'a>(
        &self,
        fast: &'a Fast,
        path: &str,
        body: &[u8],
        rec: &mut RequestRecord,
        origin: Instant,
        state: StreamState<'_>,
        cancel: &'a CancellationToken,
    ) {
        let now_ns = || origin.elapsed().as_nanos() as u64;
        let request = fast.target.request(path, body);
        let mut cancelled = Box::pin(cancel.cancelled());
        let mut deadline = Box::pin(tokio::time::sleep(self.timeout));
        let mut buf = h1::ReadBuf::with_capacity(READ_BUF);
        // As on the reqwest path: a pooled connection the server has closed meanwhile is
        // replaced (at most MAX_STALE_RETRIES times, each counted), timed from the last send.
        let mut attempt = 0;
        let (conn, head, t_head) = loop {
            rec.sent_ns = now_ns();
            deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + self.timeout);
            let pooled = fast.pool.take();
            let reused = pooled.is_some();
            let sent = open_and_send(pooled, &fast.target.authority, &request, &mut buf);
            match guard(sent, deadline.as_mut(), cancelled.as_mut()).await {
                Guarded::Done(Ok((conn, head))) => {
                    let (t, kernel) = arrival_ns(&conn, now_ns(), rec.sent_ns);
                    rec.note_instant(kernel);
                    break (conn, head, t);
                }
                Guarded::Done(Err(SendError::Stale(_)))
                    if reused && attempt < MAX_STALE_RETRIES =>
                {
                    attempt += 1;
                    rec.note("stale_connection_retry");
                }
                Guarded::Done(Err(e)) => {
                    rec.end_ns = now_ns();
                    let (kind, msg) = match e {
                        SendError::Connect(m) => (ErrorKind::Connect, m),
                        SendError::Stale(m) | SendError::Other(m) => (ErrorKind::Other, m),
                    };
                    fail(rec, kind, &msg);
                    return;
                }
                Guarded::TimedOut => {
                    rec.end_ns = now_ns();
                    fail(rec, ErrorKind::Timeout, "timed out");
                    return;
                }
                Guarded::Cancelled => {
                    rec.end_ns = now_ns();
                    fail(
                        rec,
                        ErrorKind::Cancelled,
                        "interrupted before the response arrived",
                    );
                    return;
                }
            }
        };
        rec.first_byte_ns = Some(t_head);
        let source = H1Body {
            conn,
            pool: &fast.pool,
            pending: Some(head.len),
            buf,
            start: 0,
            framing: head.framing,
            keep_alive: head.keep_alive,
            ended: false,
            t_ns: t_head,
            origin,
            cancel,
            cancelled,
            deadline,
        };
        let location = head.location;
        stream::read_response(head.status, location.as_deref(), source, rec, state, origin).await;
    }
}

/// A response body read through reqwest: each chunk hyper hands over, timed when it is handed
/// over.
struct ReqwestBody<'a> {
    resp: reqwest::Response,
    origin: Instant,
    cancelled: Pin<Box<WaitForCancellationFuture<'a>>>,
    /// The last chunk read (the payload of the last [`stream::Read`]).
    last: bytes::Bytes,
}

impl BodySource for ReqwestBody<'_> {
    async fn read(&mut self) -> Read {
        let next = tokio::select! {
            n = self.resp.chunk() => n,
            _ = &mut self.cancelled => {
                return Read::failed(ErrorKind::Cancelled, "interrupted while streaming");
            }
        };
        match next {
            Ok(Some(bytes)) => {
                let t_ns = self.origin.elapsed().as_nanos() as u64;
                self.last = bytes;
                Read::bytes(t_ns, None)
            }
            Ok(None) => Read::bare(Then::End),
            Err(e) => {
                let kind = if e.is_timeout() {
                    ErrorKind::Timeout
                } else {
                    ErrorKind::StreamReset
                };
                Read::failed(kind, describe_reqwest(&e))
            }
        }
    }

    fn payload(&mut self, each: &mut dyn FnMut(&[u8])) -> Then {
        each(&self.last);
        Then::More
    }

    async fn error_body(mut self) -> Option<Vec<u8>> {
        tokio::select! {
            b = body::read_prefix(self.resp, ERROR_BODY_LIMIT, stream::ERROR_BODY_WITHIN) => Some(b),
            _ = &mut self.cancelled => None,
        }
    }

    fn finish(self, _stopped: bool) {}
}

/// A response body read on the lean HTTP/1.1 path: each read's bytes, timed by the kernel's
/// receive timestamp, through the body's framing.
struct H1Body<'a> {
    conn: h1::Conn,
    /// Where the connection goes back when the body was read to its end.
    pool: &'a h1::Pool,
    /// The last read (at first: the response head and what followed it).
    buf: h1::ReadBuf,
    /// Where the body starts in `buf`, until that first part has been handed over.
    pending: Option<usize>,
    /// Where the last read's bytes start in `buf` (after the head, for the first read).
    start: usize,
    framing: h1::Framing,
    keep_alive: bool,
    /// The framing says the body ended.
    ended: bool,
    /// The last read's instant.
    t_ns: u64,
    origin: Instant,
    cancel: &'a CancellationToken,
    cancelled: Pin<Box<WaitForCancellationFuture<'a>>>,
    /// The request's time limit.
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl BodySource for H1Body<'_> {
    async fn read(&mut self) -> Read {
        if let Some(start) = self.pending.take() {
            self.start = start;
            return Read::bytes(self.t_ns, None);
        }
        // A flood of data keeps the read below always ready: look at cancellation and the
        // deadline here too (cheap), not only when the read waits.
        if self.cancel.is_cancelled() {
            return Read::failed(ErrorKind::Cancelled, "interrupted while streaming");
        }
        if self.deadline.is_elapsed() {
            return Read::failed(ErrorKind::Timeout, "timed out");
        }
        self.buf.clear();
        let read = guard(
            self.conn.read_buf(&mut self.buf),
            self.deadline.as_mut(),
            self.cancelled.as_mut(),
        )
        .await;
        match read {
            Guarded::Done(Ok(0)) => {
                if matches!(self.framing, h1::Framing::Close) {
                    self.keep_alive = false;
                    return Read::bare(Then::End);
                }
                Read::failed(
                    ErrorKind::StreamReset,
                    "response body failed: the connection closed before the response ended",
                )
            }
            Guarded::Done(Ok(_)) => {
                let read_ns = self.origin.elapsed().as_nanos() as u64;
                let (t_ns, kernel) = arrival_ns(&self.conn, read_ns, self.t_ns);
                self.t_ns = t_ns;
                self.start = 0;
                Read::bytes(t_ns, Some(kernel))
            }
            Guarded::Done(Err(e)) => {
                Read::failed(ErrorKind::StreamReset, format!("response body failed: {e}"))
            }
            Guarded::TimedOut => Read::failed(ErrorKind::Timeout, "timed out"),
            Guarded::Cancelled => Read::failed(ErrorKind::Cancelled, "interrupted while streaming"),
        }
    }

    /// Passes the read's bytes through the framing: each piece of payload (one per HTTP chunk)
    /// is a slice of `buf`, handed over in place.
    fn payload(&mut self, each: &mut dyn FnMut(&[u8])) -> Then {
        let input = self.buf.filled().get(self.start..).unwrap_or_default();
        match feed(&mut self.framing, input, &mut |p| each(p)) {
            Ok(Some(extra)) => {
                self.ended = true;
                self.keep_alive &= !extra;
                Then::End
            }
            Ok(None) => Then::More,
            Err(msg) => Then::Fail(
                ErrorKind::StreamReset,
                format!("response body failed: {msg}"),
            ),
        }
    }

    async fn error_body(mut self) -> Option<Vec<u8>> {
        let mut error_body = Vec::new();
        let keep = |body: &mut Vec<u8>, p: &[u8]| {
            let room = ERROR_BODY_LIMIT.saturating_sub(body.len());
            body.extend_from_slice(&p[..p.len().min(room)]);
        };
        let start = self.pending.take().unwrap_or(self.buf.len());
        let fed = feed(&mut self.framing, &self.buf.filled()[start..], &mut |p| {
            keep(&mut error_body, p)
        });
        let mut ended = !matches!(fed, Ok(None));
        let limit = tokio::time::sleep(stream::ERROR_BODY_WITHIN);
        tokio::pin!(limit);
        while !ended && error_body.len() < ERROR_BODY_LIMIT {
            self.buf.clear();
            let read = guard(
                self.conn.read_buf(&mut self.buf),
                limit.as_mut(),
                self.cancelled.as_mut(),
            );
            match read.await {
                Guarded::Done(Ok(n)) if n > 0 => {
                    let fed = feed(&mut self.framing, self.buf.filled(), &mut |p| {
                        keep(&mut error_body, p)
                    });
                    ended = !matches!(fed, Ok(None));
                }
                _ => break,
            }
        }
        Some(error_body)
    }

    fn finish(self, stopped: bool) {
        if self.ended && self.keep_alive && !stopped {
            self.pool.put(self.conn);
        }
    }
}

/// The instant, on the records' timeline, at which a read's bytes reached this machine: the
/// read's own instant `read_ns` moved back by how long before it the kernel stamped their
/// arrival ([`h1::Conn::rx_realtime_ns`]; that interval is measured on the realtime clock, so
/// its slewing does not matter). Without a timestamp, or with an implausible one (before
/// `floor_ns`, or after the read: the realtime clock was stepped), the read's instant. Also
/// says which of the two it was (`true`: the kernel's; see [`RequestRecord::note_instant`]).
fn arrival_ns(conn: &h1::Conn, read_ns: u64, floor_ns: u64) -> (u64, bool) {
    let Some(kernel) = conn.rx_realtime_ns() else {
        return (read_ns, false);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let age = now - kernel;
    let t = read_ns as i128 - age;
    let plausible = age >= 0 && t >= floor_ns as i128;
    if plausible {
        (t as u64, true)
    } else {
        (read_ns, false)
    }
}

/// What a send on the lean path can end in.
enum SendError {
    /// No connection could be opened.
    Connect(String),
    /// The connection was found closed before any byte of a response came back.
    Stale(String),
    /// Anything else.
    Other(String),
}

/// Opens (or reuses) a connection, sends the request and reads the response head into `buf`.
async fn open_and_send(
    pooled: Option<h1::Conn>,
    authority: &str,
    request: &[u8],
    buf: &mut h1::ReadBuf,
) -> Result<(h1::Conn, h1::Head), SendError> {
    let mut conn = match pooled {
        Some(c) => c,
        None => match tokio::time::timeout(CONNECT_TIMEOUT, h1::Conn::connect(authority)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(SendError::Connect(format!("connection failed: {e}"))),
            Err(_) => {
                return Err(SendError::Connect(
                    "connection failed: no connection within 10 s".into(),
                ))
            }
        },
    };
    conn.send(request)
        .await
        .map_err(|e| SendError::Stale(format!("request failed: sending: {e}")))?;
    buf.clear();
    loop {
        match conn.read_buf(buf).await {
            Ok(0) if buf.is_empty() => {
                return Err(SendError::Stale(
                    "request failed: connection closed before message completed".into(),
                ))
            }
            Ok(0) => {
                return Err(SendError::Other(
                    "request failed: the connection closed inside the response head".into(),
                ))
            }
            Ok(_) => {}
            Err(e) if buf.is_empty() => {
                return Err(SendError::Stale(format!("request failed: {e}")))
            }
            Err(e) => return Err(SendError::Other(format!("request failed: {e}"))),
        }
        match h1::parse_head(buf.filled()) {
            Ok(Some(head)) => return Ok((conn, head)),
            Ok(None) => {}
            Err(e) => return Err(SendError::Other(format!("request failed: {e}"))),
        }
    }
}

/// One pre-warm connection: `request` sent and its whole response read (within `limit`), so
/// the connection can be pooled; `None` when anything went wrong (the run then opens one later).
async fn prewarm_one(authority: &str, request: &[u8], limit: Duration) -> Option<h1::Conn> {
    let work = async {
        let mut buf = h1::ReadBuf::with_capacity(READ_BUF);
        let (mut conn, head) = open_and_send(None, authority, request, &mut buf)
            .await
            .ok()?;
        let mut framing = head.framing;
        let mut fed = feed(&mut framing, &buf.filled()[head.len..], &mut |_| {}).ok()?;
        while fed.is_none() {
            buf.clear();
            if conn.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
            fed = feed(&mut framing, buf.filled(), &mut |_| {}).ok()?;
        }
        (head.keep_alive && fed == Some(false)).then_some(conn)
    };
    tokio::time::timeout(limit, work).await.ok().flatten()
}

/// Feeds received bytes through the body's framing into `sink` (the body's payload).
/// `Ok(Some(extra))` when the body ended (`extra`: bytes followed it, so the connection cannot
/// be reused), `Ok(None)` when more is to come.
fn feed(
    framing: &mut h1::Framing,
    input: &[u8],
    sink: &mut impl FnMut(&[u8]),
) -> Result<Option<bool>, &'static str> {
    match framing {
        h1::Framing::Chunked(c) => {
            let used = c.decode(input, sink)?;
            Ok(c.is_done().then_some(used < input.len()))
        }
        h1::Framing::Length(left) => {
            let n = (*left).min(input.len() as u64) as usize;
            if n > 0 {
                sink(&input[..n]);
            }
            *left -= n as u64;
            Ok((*left == 0).then_some(n < input.len()))
        }
        h1::Framing::Close => {
            if !input.is_empty() {
                sink(input);
            }
            Ok(None)
        }
    }
}

enum Guarded<T> {
    Done(T),
    TimedOut,
    Cancelled,
}

/// Awaits `fut` unless the deadline passes or the run is cancelled first. The future is polled
/// first: when it is ready, the timer and the token are not touched.
async fn guard<T>(
    fut: impl Future<Output = T>,
    deadline: Pin<&mut tokio::time::Sleep>,
    cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
) -> Guarded<T> {
    tokio::select! {
        biased;
        v = fut => Guarded::Done(v),
        _ = deadline => Guarded::TimedOut,
        _ = cancelled => Guarded::Cancelled,
    }
}

/// Sends retried after hitting a connection the server had closed (each dead pooled connection
/// is discarded when found, so a few retries exhaust them).
const MAX_STALE_RETRIES: u32 = 3;

/// A send that failed because a reused keep-alive connection was already closed by the server:
/// no response byte arrived, not a timeout, not a new connection that could not be made, and
/// the socket was found closed or reset while the request was being sent.
fn is_stale_connection(e: &reqwest::Error) -> bool {
    if e.is_timeout() || e.is_connect() {
        return false;
    }
    let d = describe_reqwest(e);
    d.contains("connection closed before message completed")
        || (d.contains("SendRequest")
            && (d.contains("Connection reset by peer") || d.contains("Broken pipe")))
}

/// A short, secret-free description of a reqwest error (its source chain, without the URL's
/// query string or any header).
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    let head = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body failed"
    } else {
        "request failed"
    };
    if parts.is_empty() {
        head.to_owned()
    } else {
        format!("{head}: {}", parts.join(": "))
    }
}

/// The error message of a JSON error body (`{"error": {"message"}}`, `{"message"}`,
/// `{"detail"}`), or a snippet of the body.
pub fn error_message_from_body(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let m = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .or_else(|| v.get("error"));
        if let Some(m) = m {
            return match m {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
        }
    }
    snippet(body)
}

/// The first 120 characters of a body, on one line.
pub fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut out: String = one_line.chars().take(120).collect();
    if one_line.chars().count() > 120 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_base_keeps_user_path() {
        assert_eq!(api_base("http://h:8000").unwrap(), "http://h:8000/v1");
        assert_eq!(api_base("http://h:8000/").unwrap(), "http://h:8000/v1");
        assert_eq!(api_base("http://h:8000/v1/").unwrap(), "http://h:8000/v1");
        assert_eq!(api_base("https://h/proxy").unwrap(), "https://h/proxy/v1");
        assert!(api_base("h:8000").is_err());
        assert!(api_base("ftp://h").is_err());
        assert!(api_base("not a url").is_err());
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message_from_body(br#"{"error":{"message":"model not found","code":404}}"#),
            "model not found"
        );
        assert_eq!(
            error_message_from_body(br#"{"object":"error","message":"bad request"}"#),
            "bad request"
        );
        assert_eq!(
            error_message_from_body(b"<html>oops</html>"),
            "<html>oops</html>"
        );
        assert_eq!(error_message_from_body(b""), "(empty body)");
    }
}
