//! `kvbench selftest`: how much load can this client measure on this machine, and how well?
//!
//! A benchmark client that runs out of CPU, or timestamps late, reports the client instead of
//! the server. This module measures kvbench's own ceiling end to end, through the real
//! `kvbench run` path (`crate::runner::run`: HTTP, SSE parsing, chunk decoding, timestamps,
//! records, journal): it starts the fast server ([`server`]) in a child process (so the two do
//! not share a CPU account), runs a closed-loop workload against it, and reports
//!
//! - client CPU seconds per million token events, and its inverse, token events per second per
//!   client core (what one fully used core would sustain);
//! - client memory per in-flight stream (peak resident memory growth over the run divided by
//!   the streams in flight; finished records kept in memory are included, so it is an upper
//!   bound);
//! - TTFT and ITL measurement error: what the client measured minus what the server did,
//!   per request (the server records when it released every token, relative to the request's
//!   arrival, and hands that truth back after the run);
//! - the same delays split on the machine's monotonic clock, which client and server both
//!   read: the send delay (client send → server arrival) and the receive delay (server release
//!   of a token → client timestamp), so that what the client adds on its receiving side is
//!   seen apart from the server's own lateness in reading the request.

pub mod probe;
pub mod server;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::client::request::Sampling;
use crate::client::{Endpoint, Engine};
use crate::config::{ProgressMode, RunConfig};
use crate::record::RequestRecord;
use crate::stats::Summary;
use crate::workload::arrivals::Arrival;
use crate::workload::{DatasetSpec, Workload, WorkloadSpec};
use server::Truth;

/// TTFT measurement error target: p99 below this many milliseconds.
pub const TARGET_TTFT_ERROR_P99_MS: f64 = 1.0;
/// Memory target: at most this many bytes of client memory per in-flight stream.
pub const TARGET_BYTES_PER_STREAM: f64 = 65_536.0;

/// A validated self-test configuration.
#[derive(Debug, Clone)]
pub struct SelftestConfig {
    /// Streams in flight (closed loop).
    pub concurrency: usize,
    /// Token events per second the server releases over all streams (sets the per-stream gap).
    pub events_per_s: f64,
    /// Output tokens asked per request (responses have between half and all of them).
    pub max_tokens: u32,
    /// Synthetic prompt length (tokens, estimated).
    pub input_len: u32,
    /// Server delay to the first token.
    pub ttft: Duration,
    /// Measured requests = concurrency × this.
    pub requests_per_stream: u64,
    /// Endpoint used.
    pub endpoint: Endpoint,
    /// The kvbench executable that serves the fast server (`selftest --serve`).
    pub server_exe: PathBuf,
}

impl SelftestConfig {
    /// Gap between two tokens of one stream, so that all streams together release
    /// `events_per_s` token events per second (an hour at most; [`itl_for`] checks).
    pub fn itl(&self) -> Duration {
        itl_for(self.concurrency, self.events_per_s).unwrap_or(MAX_ITL)
    }
}

/// Longest gap between two tokens of a stream.
const MAX_ITL: Duration = Duration::from_secs(3600);

/// The gap between two tokens of one of `concurrency` streams that together release
/// `events_per_s` token events per second; an error when it is not a positive duration of at
/// most an hour.
pub fn itl_for(concurrency: usize, events_per_s: f64) -> anyhow::Result<Duration> {
    let gap_s = concurrency as f64 / events_per_s;
    match Duration::try_from_secs_f64(gap_s) {
        Ok(d) if !d.is_zero() && d <= MAX_ITL => Ok(d),
        _ => anyhow::bail!(
            "--events-per-s {events_per_s}: with --concurrency {concurrency} a stream would wait {gap_s:.3e} s between tokens (from 1 ns to an hour)"
        ),
    }
}

/// Percentiles of a measurement error, in milliseconds (measured minus true).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ErrorMs {
    /// Samples.
    pub count: u64,
    /// Mean error, ms.
    pub mean: Option<f64>,
    /// Median error, ms.
    pub p50: Option<f64>,
    /// 99th percentile error, ms.
    pub p99: Option<f64>,
    /// Largest error, ms.
    pub max: Option<f64>,
}

impl ErrorMs {
    fn of(values: &[f64]) -> Self {
        let s = Summary::of(values);
        Self {
            count: s.count,
            mean: s.mean,
            p50: s.p50,
            p99: s.p99,
            max: s.max,
        }
    }
}

/// One target and whether it held.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Target {
    /// What is compared, e.g. `ttft_error_ms.p99 < 1`.
    pub what: String,
    /// Measured value (`null` when it could not be measured).
    pub measured: Option<f64>,
    /// Whether the target held (`null` when it could not be judged).
    pub pass: Option<bool>,
}

/// What `kvbench selftest` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelftestReport {
    /// Streams in flight.
    pub concurrency: usize,
    /// Token events per second the server was asked to release, over all streams.
    pub offered_events_per_s: f64,
    /// Token events per second the client received over the run (wall clock).
    pub achieved_events_per_s: f64,
    /// Token events the client received per second of its own CPU time: the rate one fully
    /// used client core sustains.
    pub events_per_s_per_core: Option<f64>,
    /// Client CPU seconds (user + system) per million token events.
    pub cpu_s_per_million_events: Option<f64>,
    /// The user-space part of `cpu_s_per_million_events`.
    pub cpu_user_s_per_million_events: Option<f64>,
    /// The kernel part of `cpu_s_per_million_events` (on loopback it includes the server-side
    /// TCP processing of the client's ACKs, which runs in the client's system calls).
    pub cpu_system_s_per_million_events: Option<f64>,
    /// Client memory per in-flight stream, bytes: (peak RSS − RSS before the run) / streams.
    pub bytes_per_stream: Option<f64>,
    /// TTFT measured by the client minus the server's true TTFT, ms, over requests sent after
    /// the first wave (steady state: one stream's request starts when its previous one ends).
    pub ttft_error_ms: ErrorMs,
    /// The same for the first wave alone: `concurrency` requests sent at the same instant,
    /// a burst whose error is mostly CPU queueing on the client and the server.
    pub ttft_error_first_wave_ms: ErrorMs,
    /// Each inter-token gap measured by the client minus the server's true gap, ms.
    pub itl_error_ms: ErrorMs,
    /// The first token's timestamp at the client minus its release by the server, both on the
    /// machine's monotonic clock, ms, after the first wave: the delay the client's receiving
    /// side adds (loopback, wake-up, read, parse) without the send side. `ttft_error_ms` =
    /// `send_delay_ms` + this, request by request.
    pub ttft_receive_delay_ms: ErrorMs,
    /// The server's arrival instant minus the client's send instant, monotonic clock, ms,
    /// after the first wave: the client's send path plus the server's accept and read.
    pub send_delay_ms: ErrorMs,
    /// The first part of `send_delay_ms`: from the client's send to the request's last packet
    /// reaching the server's socket (kernel receive timestamp), ms, after the first wave.
    pub request_transit_ms: ErrorMs,
    /// The second part: from that packet's arrival to the server's handler, ms: the server's
    /// own lateness in reading the request, not the client's.
    pub server_read_lateness_ms: ErrorMs,
    /// The TTFT error without the server's read lateness: `request_transit_ms` +
    /// `ttft_receive_delay_ms`, request by request, ms, after the first wave: what the client
    /// itself adds to a TTFT (its send path and the loopback both ways, and any delay in
    /// recording the first token).
    pub ttft_client_error_ms: ErrorMs,
    /// Every token's timestamp at the client minus its release by the server, monotonic
    /// clock, ms (all requests).
    pub token_receive_delay_ms: ErrorMs,
    /// Token events the client received.
    pub token_events: u64,
    /// Client CPU time over the run, seconds (user + system, all threads).
    pub client_cpu_s: f64,
    /// Wall-clock length of the run, seconds.
    pub wall_s: f64,
    /// Client CPU use over the run, in cores (1.0 = one core fully busy).
    pub client_cores_used: f64,
    /// Peak resident memory growth of the client over the run, bytes.
    pub rss_growth_bytes: Option<u64>,
    /// Requests sent, completed and failed.
    pub requests: RequestsSummary,
    /// Per-stream gap between tokens the server used, ms.
    pub itl_ms: f64,
    /// Server delay to the first token, ms.
    pub ttft_ms: f64,
    /// Output tokens asked per request.
    pub max_tokens: u32,
    /// Prompt length asked (tokens, estimated).
    pub input_len: u32,
    /// Endpoint used.
    pub endpoint: Endpoint,
    /// The machine.
    pub machine: probe::Machine,
    /// The targets of issue 7 and whether they held here.
    pub targets: Vec<Target>,
}

/// Request counts of the self-test run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RequestsSummary {
    /// Requests sent.
    pub total: u64,
    /// Requests that completed.
    pub completed: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Completed requests whose server truth could not be matched (excluded from errors).
    pub unmatched: u64,
}

/// The fast server running as a child process; killed when dropped.
struct ChildServer {
    child: Child,
    url: String,
}

impl ChildServer {
    fn spawn(cfg: &SelftestConfig) -> anyhow::Result<Self> {
        let itl_ms = cfg.itl().as_secs_f64() * 1e3;
        let mut child = Command::new(&cfg.server_exe)
            .args(["selftest", "--serve", "127.0.0.1:0", "--vary-length"])
            .arg("--ttft-ms")
            .arg(cfg.ttft.as_millis().to_string())
            .arg("--itl-ms")
            .arg(format!("{itl_ms}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start the self-test server ({} selftest --serve)",
                    cfg.server_exe.display()
                )
            })?;
        let stdout = child.stdout.take().context("no stdout from the server")?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map(str::to_owned);
        match (read, url) {
            (Ok(_), Some(url)) => Ok(Self { child, url }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the self-test server did not start (it printed {line:?})")
            }
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the scratch directory when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the self-test and returns what it measured.
pub async fn run(cfg: SelftestConfig, cancel: CancellationToken) -> anyhow::Result<SelftestReport> {
    if cfg.concurrency == 0 || cfg.events_per_s <= 0.0 || cfg.max_tokens == 0 {
        bail!("concurrency, events per second and max tokens must be positive");
    }
    probe::raise_fd_limit(cfg.concurrency as u64 * 2 + 256);
    let server = ChildServer::spawn(&cfg)?;
    let dir = std::env::temp_dir().join(format!(
        "kvbench-selftest-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create scratch directory {}", dir.display()))?;
    let scratch = Scratch(dir);
    let workload = WorkloadSpec {
        dataset: DatasetSpec::Synthetic,
        input_len: cfg.input_len,
        seed: 0,
        unique_prefix: true,
        images: None,
    };
    // The records' time origin and its reading on the monotonic clock the server reads too.
    let origin = Instant::now();
    let origin_mono_ns = probe::monotonic_ns();
    let run_cfg = run_config(&cfg, &server.url, &scratch.0, workload.clone(), origin);
    let journal = run_cfg.journal.clone();

    let rss = PeakRss::start();
    let cpu_before = probe::cpu_times();
    let wall = Instant::now();
    let result = crate::runner::run(run_cfg, cancel.clone()).await;
    let wall_s = wall.elapsed().as_secs_f64();
    let cpu_after = probe::cpu_times();
    let growth = rss.growth().await;
    let result = result.context("the self-test run failed")?;
    if result.interrupted {
        bail!("interrupted");
    }

    let truth: Vec<Truth> = reqwest::Client::new()
        .get(format!("{}/selftest/truth", server.url))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .context("cannot read the server's truth")?
        .json()
        .await
        .context("the server's truth is not JSON")?;
    drop(server);
    let records = read_journal(&journal)?;
    drop(scratch);

    let keys = Workload::new(workload, None)?;
    let compared = compare(
        &records,
        &truth,
        cfg.concurrency as u64,
        origin_mono_ns,
        |id| {
            let (_, prefix) = keys.item(id);
            prefix.split('\n').next().unwrap_or("").to_owned()
        },
    );
    let cpu = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some((b.0 - a.0, b.1 - a.1)),
        _ => None,
    };
    Ok(report(&cfg, &result, &compared, cpu, wall_s, growth))
}

/// The `kvbench run` settings of the self-test: a closed loop of `concurrency` streams, each
/// sending `requests_per_stream` synthetic requests with unique first lines (the truth's
/// keys), no warm-up, records and journal in `scratch`.
fn run_config(
    cfg: &SelftestConfig,
    url: &str,
    scratch: &std::path::Path,
    workload: WorkloadSpec,
    origin: Instant,
) -> RunConfig {
    RunConfig {
        url: url.to_owned(),
        model: None,
        endpoint: cfg.endpoint,
        engine: Engine::Auto,
        num_requests: Some(cfg.concurrency as u64 * cfg.requests_per_stream),
        duration: None,
        arrival: Arrival::Closed {
            concurrency: cfg.concurrency,
        },
        sampling: Sampling {
            max_tokens: cfg.max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: Some(0),
            ignore_eos: true,
            top_logprobs: None,
        },
        warmup: 0,
        workload,
        tokenizer: None,
        api_key_env: None,
        api_key: None,
        headers: Vec::new(),
        slo: Default::default(),
        sweep: None,
        knee_share: 0.99,
        timeout: Duration::from_secs(600),
        output: scratch.join("selftest.json"),
        journal: scratch.join("selftest.requests.jsonl"),
        keep_text: false,
        no_prompt_cache: true,
        progress: ProgressMode::Quiet,
        arm: None,
        quality: None,
        origin: Some(origin),
    }
}

/// The client's peak resident memory while the run goes on, sampled every 25 ms.
struct PeakRss {
    before: Option<u64>,
    peak: Arc<AtomicU64>,
    sampling: Arc<AtomicBool>,
    sampler: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    /// Reads the resident size now, and starts sampling.
    fn start() -> Self {
        let before = probe::rss_bytes();
        let peak = Arc::new(AtomicU64::new(before.unwrap_or(0)));
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (peak, sampling) = (peak.clone(), sampling.clone());
            tokio::spawn(async move {
                while sampling.load(Ordering::Relaxed) {
                    if let Some(r) = probe::rss_bytes() {
                        peak.fetch_max(r, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            })
        };
        Self {
            before,
            peak,
            sampling,
            sampler,
        }
    }

    /// Stops sampling: the peak's growth over the resident size at the start, bytes.
    async fn growth(self) -> Option<u64> {
        self.sampling.store(false, Ordering::Relaxed);
        let _ = self.sampler.await;
        match (self.before, self.peak.load(Ordering::Relaxed)) {
            (Some(b), p) if p >= b => Some(p - b),
            _ => None,
        }
    }
}

/// The figures of a self-test run: CPU per event (`cpu`: user and system seconds of the run),
/// memory per stream, the measurement errors against the truth, and the targets.
fn report(
    cfg: &SelftestConfig,
    result: &crate::result::RunResult,
    compared: &Compared,
    cpu: Option<(f64, f64)>,
    wall_s: f64,
    growth: Option<u64>,
) -> SelftestReport {
    let (user_s, system_s) = (cpu.map(|c| c.0), cpu.map(|c| c.1));
    let client_cpu_s = match (user_s, system_s) {
        (Some(u), Some(s)) => u + s,
        _ => f64::NAN,
    };
    let events = compared.token_events;
    let per_core = (client_cpu_s > 0.0 && events > 0).then(|| events as f64 / client_cpu_s);
    let per_million = |s: Option<f64>| s.filter(|_| events > 0).map(|s| s * 1e6 / events as f64);
    let bytes_per_stream = growth.map(|g| g as f64 / cfg.concurrency as f64);
    let ttft_error_ms = ErrorMs::of(&compared.ttft_err_ms);
    let ttft_error_first_wave_ms = ErrorMs::of(&compared.ttft_err_first_wave_ms);
    let itl_error_ms = ErrorMs::of(&compared.itl_err_ms);
    let targets = vec![
        Target {
            what: format!("ttft_error_ms.p99 < {TARGET_TTFT_ERROR_P99_MS}"),
            measured: ttft_error_ms.p99,
            pass: ttft_error_ms.p99.map(|p| p < TARGET_TTFT_ERROR_P99_MS),
        },
        Target {
            what: format!("bytes_per_stream <= {TARGET_BYTES_PER_STREAM}"),
            measured: bytes_per_stream,
            pass: bytes_per_stream.map(|b| b <= TARGET_BYTES_PER_STREAM),
        },
    ];
    SelftestReport {
        concurrency: cfg.concurrency,
        offered_events_per_s: cfg.events_per_s,
        achieved_events_per_s: events as f64 / wall_s,
        events_per_s_per_core: per_core,
        cpu_s_per_million_events: per_core.map(|r| 1e6 / r),
        cpu_user_s_per_million_events: per_million(user_s),
        cpu_system_s_per_million_events: per_million(system_s),
        bytes_per_stream,
        ttft_error_ms,
        ttft_error_first_wave_ms,
        itl_error_ms,
        ttft_receive_delay_ms: ErrorMs::of(&compared.ttft_receive_delay_ms),
        send_delay_ms: ErrorMs::of(&compared.send_delay_ms),
        request_transit_ms: ErrorMs::of(&compared.request_transit_ms),
        server_read_lateness_ms: ErrorMs::of(&compared.server_read_lateness_ms),
        ttft_client_error_ms: ErrorMs::of(&compared.ttft_client_error_ms),
        token_receive_delay_ms: ErrorMs::of(&compared.token_receive_delay_ms),
        token_events: events,
        client_cpu_s,
        wall_s,
        client_cores_used: client_cpu_s / wall_s,
        rss_growth_bytes: growth,
        requests: RequestsSummary {
            total: result.requests.total,
            completed: result.requests.completed,
            failed: result.requests.failed,
            unmatched: compared.unmatched,
        },
        itl_ms: cfg.itl().as_secs_f64() * 1e3,
        ttft_ms: cfg.ttft.as_secs_f64() * 1e3,
        max_tokens: cfg.max_tokens,
        input_len: cfg.input_len,
        endpoint: cfg.endpoint,
        machine: probe::machine(),
        targets,
    }
}

fn read_journal(path: &std::path::Path) -> anyhow::Result<Vec<RequestRecord>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the journal {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).context("a journal line is not a record"))
        .collect()
}

/// Client measurements matched with the server's truth.
#[derive(Debug, Default)]
pub struct Compared {
    /// Per request after the first wave: measured TTFT minus true TTFT, ms.
    pub ttft_err_ms: Vec<f64>,
    /// The same for the first wave (request ids below the concurrency).
    pub ttft_err_first_wave_ms: Vec<f64>,
    /// Per gap: measured gap minus true gap, ms.
    pub itl_err_ms: Vec<f64>,
    /// Per request after the first wave: client first-token instant minus the server's
    /// release of it, on the monotonic clock, ms.
    pub ttft_receive_delay_ms: Vec<f64>,
    /// Per request after the first wave: server arrival minus client send, monotonic, ms.
    pub send_delay_ms: Vec<f64>,
    /// Per request after the first wave: request at the server's socket minus client send, ms.
    pub request_transit_ms: Vec<f64>,
    /// Per request after the first wave: server arrival minus request at its socket, ms.
    pub server_read_lateness_ms: Vec<f64>,
    /// Per request after the first wave: request transit + first-token receive delay, ms.
    pub ttft_client_error_ms: Vec<f64>,
    /// Per token: client instant minus server release, monotonic clock, ms.
    pub token_receive_delay_ms: Vec<f64>,
    /// Token events received over all records (warmup included).
    pub token_events: u64,
    /// Completed, measured records with no (or an inconsistent) truth.
    pub unmatched: u64,
}

/// Matches each completed, measured record with the server's truth for its prompt (`key_of`
/// gives the key the server saw for record `id`) and computes the errors. Keys seen more than
/// once on the server are ambiguous and not used. Requests with an id below `first_wave` were
/// sent together at the start (closed loop) and are kept apart. `origin_mono_ns` is the
/// records' time origin on the monotonic clock: with it, and the server's arrival on the same
/// clock, the send and receive delays are computed too.
pub fn compare(
    records: &[RequestRecord],
    truth: &[Truth],
    first_wave: u64,
    origin_mono_ns: Option<u64>,
    key_of: impl Fn(u64) -> String,
) -> Compared {
    let mut by_key: HashMap<&str, Option<&Truth>> = HashMap::with_capacity(truth.len());
    for t in truth {
        by_key
            .entry(t.key.as_str())
            .and_modify(|v| *v = None)
            .or_insert(Some(t));
    }
    let mut out = Compared::default();
    for r in records {
        out.token_events += r.chunk_ns.len() as u64;
        if r.warmup || !r.ok() {
            continue;
        }
        let key = key_of(r.id);
        let Some(Some(t)) = by_key.get(key.as_str()) else {
            out.unmatched += 1;
            continue;
        };
        if t.token_ns.len() != r.chunk_ns.len() {
            out.unmatched += 1;
            continue;
        }
        if let (Some(first), Some(true_first)) = (r.first_token_ns, t.token_ns.first()) {
            let measured = first as f64 - r.sent_ns as f64;
            let err = (measured - *true_first as f64) / 1e6;
            if r.id < first_wave {
                out.ttft_err_first_wave_ms.push(err);
            } else {
                out.ttft_err_ms.push(err);
            }
        }
        if let (Some(origin), Some(arrival)) = (origin_mono_ns, t.arrival_mono_ns) {
            // Both sides on one clock: client instant = origin + record ns; server instant =
            // arrival + truth ns.
            let client = |ns: u64| origin as f64 + ns as f64;
            let server = |ns: u64| arrival as f64 + ns as f64;
            for (m, s) in r.chunk_ns.iter().zip(&t.token_ns) {
                out.token_receive_delay_ms
                    .push((client(*m) - server(*s)) / 1e6);
            }
            if r.id >= first_wave {
                out.send_delay_ms
                    .push((arrival as f64 - client(r.sent_ns)) / 1e6);
                let receive = match (r.first_token_ns, t.token_ns.first()) {
                    (Some(first), Some(true_first)) => {
                        let d = (client(first) - server(*true_first)) / 1e6;
                        out.ttft_receive_delay_ms.push(d);
                        Some(d)
                    }
                    _ => None,
                };
                if let Some(rx) = t.request_rx_mono_ns {
                    let transit = (rx as f64 - client(r.sent_ns)) / 1e6;
                    out.request_transit_ms.push(transit);
                    out.server_read_lateness_ms
                        .push((arrival as f64 - rx as f64) / 1e6);
                    if let Some(d) = receive {
                        out.ttft_client_error_ms.push(transit + d);
                    }
                }
            }
        }
        for (m, t) in r.chunk_ns.windows(2).zip(t.token_ns.windows(2)) {
            let measured = m[1] as f64 - m[0] as f64;
            let truth = t[1] as f64 - t[0] as f64;
            out.itl_err_ms.push((measured - truth) / 1e6);
        }
    }
    out
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "n/a".into())
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "pass",
        Some(false) => "FAIL",
        None => "n/a",
    }
}

/// The report as a table a person reads at a glance.
pub fn table(r: &SelftestReport) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "kvbench selftest · {} streams · {:.0} token events/s offered ({:.2} ms gaps, TTFT {:.0} ms, {} tokens max) · {:?}\n",
        r.concurrency, r.offered_events_per_s, r.itl_ms, r.ttft_ms, r.max_tokens, r.endpoint
    ));
    s.push_str(&format!(
        "  machine              {} · {} CPUs\n",
        r.machine.cpu_model, r.machine.cpus
    ));
    s.push_str(&format!(
        "  requests             {} completed, {} failed of {} ({} unmatched)\n",
        r.requests.completed, r.requests.failed, r.requests.total, r.requests.unmatched
    ));
    s.push_str(&format!(
        "  token events         {} in {:.2} s = {:.0}/s received; client used {:.2} cores\n",
        r.token_events, r.wall_s, r.achieved_events_per_s, r.client_cores_used
    ));
    s.push_str(&format!(
        "  ceiling              {} token events/s per client core\n",
        fmt_opt(r.events_per_s_per_core, 0)
    ));
    s.push_str(&format!(
        "  CPU                  {} client CPU s per million events ({} user, {} system)\n",
        fmt_opt(r.cpu_s_per_million_events, 3),
        fmt_opt(r.cpu_user_s_per_million_events, 3),
        fmt_opt(r.cpu_system_s_per_million_events, 3)
    ));
    s.push_str(&format!(
        "  memory               {} bytes per in-flight stream\n",
        fmt_opt(r.bytes_per_stream, 0)
    ));
    s.push_str("  error (ms)               p50       p99      mean       max   samples\n");
    for (name, e) in [
        ("ttft", &r.ttft_error_ms),
        ("ttft (first wave)", &r.ttft_error_first_wave_ms),
        ("itl", &r.itl_error_ms),
        ("send delay", &r.send_delay_ms),
        ("  request transit", &r.request_transit_ms),
        ("  server read late", &r.server_read_lateness_ms),
        ("ttft receive delay", &r.ttft_receive_delay_ms),
        ("token receive delay", &r.token_receive_delay_ms),
        ("ttft, client part", &r.ttft_client_error_ms),
    ] {
        s.push_str(&format!(
            "  {name:<19} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            fmt_opt(e.p50, 3),
            fmt_opt(e.p99, 3),
            fmt_opt(e.mean, 3),
            fmt_opt(e.max, 3),
            e.count
        ));
    }
    for t in &r.targets {
        s.push_str(&format!(
            "  target               {:<34} {:>4}  (measured {})\n",
            t.what,
            verdict(t.pass),
            fmt_opt(t.measured, 3)
        ));
    }
    s
}

/// `kvbench selftest --serve`: serves the fast server until Ctrl-C, printing its URL first.
pub async fn serve(cfg: server::FastServerConfig, addr: SocketAddr) -> anyhow::Result<()> {
    let srv = server::start(cfg, addr).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "kvbench selftest server listening on {}", srv.url())?;
        out.flush()?;
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, sent: u64, chunks: &[u64]) -> RequestRecord {
        RequestRecord {
            id,
            sent_ns: sent,
            first_token_ns: chunks.first().copied(),
            chunk_ns: chunks.to_vec(),
            ..RequestRecord::default()
        }
    }

    #[test]
    fn errors_are_measured_minus_true() {
        // Request 0: sent at 1 ms, tokens seen at 21.5 ms and 41.0 ms; the server released
        // them 20.0 ms and 40.0 ms after arrival. TTFT error 0.5 ms, gap error -0.5 ms.
        let records = vec![
            rec(0, 1_000_000, &[21_500_000, 41_000_000]),
            rec(1, 0, &[10_000_000]),
        ];
        let truth = vec![
            Truth {
                key: "k0".into(),
                token_ns: vec![20_000_000, 40_000_000],
                arrival_mono_ns: Some(5_000_300_000),
                request_rx_mono_ns: Some(5_000_100_000),
            },
            Truth {
                key: "k9".into(),
                token_ns: vec![1],
                arrival_mono_ns: None,
                request_rx_mono_ns: None,
            },
        ];
        let c = compare(&records, &truth, 0, None, |id| format!("k{id}"));
        assert_eq!(c.ttft_err_ms, vec![0.5]);
        assert!(c.ttft_err_first_wave_ms.is_empty());
        assert!(c.send_delay_ms.is_empty(), "no clock, no split");
        let c = compare(&records, &truth, 0, Some(4_999_000_000), |id| {
            format!("k{id}")
        });
        // Sent at 5.000 s (origin 4.999 s + 1 ms), arrived 5.0003 s: send delay 0.3 ms. First
        // token released at 5.0203 s, seen at 4.999 + 0.0215 = 5.0205 s: receive delay 0.2 ms.
        // 0.3 + 0.2 = the TTFT error of 0.5 ms.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(c.send_delay_ms[0], 0.3), "{:?}", c.send_delay_ms);
        assert!(
            close(c.ttft_receive_delay_ms[0], 0.2),
            "{:?}",
            c.ttft_receive_delay_ms
        );
        assert_eq!(c.token_receive_delay_ms.len(), 2);
        // The request reached the server's socket at 5.0001 s: 0.1 ms transit, then 0.2 ms
        // before the server's handler ran; the client's part of the TTFT error is 0.1 + 0.2.
        assert!(
            close(c.request_transit_ms[0], 0.1),
            "{:?}",
            c.request_transit_ms
        );
        assert!(
            close(c.server_read_lateness_ms[0], 0.2),
            "{:?}",
            c.server_read_lateness_ms
        );
        assert!(
            close(c.ttft_client_error_ms[0], 0.3),
            "{:?}",
            c.ttft_client_error_ms
        );
        assert!(
            close(c.token_receive_delay_ms[1], -0.3),
            "{:?}",
            c.token_receive_delay_ms
        );
        let c = compare(&records, &truth, 1, None, |id| format!("k{id}"));
        assert_eq!(c.ttft_err_first_wave_ms, vec![0.5]);
        assert!(c.ttft_err_ms.is_empty());
        assert_eq!(c.itl_err_ms, vec![-0.5]);
        assert_eq!(c.token_events, 3);
        assert_eq!(c.unmatched, 1, "request 1 has no truth");
    }

    #[test]
    fn ambiguous_keys_and_failed_requests_are_not_used() {
        let mut failed = rec(1, 0, &[5]);
        failed.error = Some(crate::record::ErrorKind::StreamReset);
        let records = vec![rec(0, 0, &[5]), failed];
        let truth = vec![
            Truth {
                key: "same".into(),
                token_ns: vec![4],
                arrival_mono_ns: None,
                request_rx_mono_ns: None,
            },
            Truth {
                key: "same".into(),
                token_ns: vec![3],
                arrival_mono_ns: None,
                request_rx_mono_ns: None,
            },
        ];
        let c = compare(&records, &truth, 0, None, |_| "same".into());
        assert!(c.ttft_err_ms.is_empty());
        assert_eq!(c.unmatched, 1);
        assert_eq!(c.token_events, 2);
    }

    #[test]
    fn itl_follows_events_per_second() {
        let cfg = SelftestConfig {
            concurrency: 1000,
            events_per_s: 20_000.0,
            max_tokens: 64,
            input_len: 32,
            ttft: Duration::from_millis(20),
            requests_per_stream: 1,
            endpoint: Endpoint::Chat,
            server_exe: PathBuf::from("kvbench"),
        };
        assert_eq!(cfg.itl(), Duration::from_millis(50));
    }
}
