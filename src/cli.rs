//! Command line: clap definitions (raw values) and their validation into a [`RunConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

use crate::client::request::Sampling;
use crate::client::{Endpoint, Engine};
use crate::runner::{ProgressMode, RunConfig};
use crate::testserver::Flavor;
use crate::workload::arrivals::{Arrival, ArrivalKind};
use crate::workload::{DatasetSpec, ImageSpec, WorkloadSpec};

/// kvbench: should this LLM server run with this configuration change? Measures speed (TTFT,
/// ITL, TPOT, E2E, throughput) of OpenAI-compatible servers (vLLM, llama.cpp, ...).
#[derive(Debug, Parser)]
#[command(name = "kvbench", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure an already running OpenAI-compatible server and write one result JSON.
    ///
    /// Example: kvbench run --url http://127.0.0.1:8000 --num-requests 200 --concurrency 16
    /// --input-len 1024 --max-tokens 128 --output baseline.json
    Run(Box<RunArgs>),
    /// Compare arms' results: deltas with 95 % intervals, warnings resolved / persisting / new,
    /// server facts, quality with paired tests, and a verdict (apply, monitor, keep,
    /// inconclusive) with reasons (docs/decision.md).
    ///
    /// Examples: kvbench compare --baseline base.json --calibrated cal.json --output cmp.json;
    /// kvbench compare reports/*.json --baseline fp8 --output cmp.json --html cmp.html
    Compare(CompareArgs),
    /// Run every arm of an experiment (launch, warm up, quality, performance, tear down), then
    /// compare them and write the reports: the one-command A/B experiment.
    ///
    /// Example: kvbench ab examples/quickstart.toml --out-dir results/quickstart
    Ab(AbArgs),
    /// Render a comparison JSON again as reports: one self-contained HTML page (verdict on top,
    /// charts, tables) and/or Markdown.
    ///
    /// Example: kvbench report cmp.json --html cmp.html --md -
    Report(ReportArgs),
    /// Apply the warnings catalog to saved server logs: FP8 warnings and others, de-duplicated
    /// across tensor-parallel ranks, with facts such as KV-cache capacity.
    ///
    /// Example: kvbench scan-logs vllm.log --json | jq '.warnings[].id'
    ScanLogs(ScanLogsArgs),
    /// Measure the decision procedure's error rates: simulated experiments with a known truth
    /// (TTFT change, quality drop, run-to-run drift) through the real comparison and decision
    /// code, for one run per arm, --repeat 3 and --until-decided (docs/decision.md).
    ///
    /// Example: kvbench error-rates --experiments 2000 > rates.md
    ErrorRates(ErrorRatesArgs),
    /// Serve a streaming test server with known delays (for checking kvbench itself).
    #[command(hide = true)]
    TestServer(TestServerArgs),
    /// Measure kvbench's own ceiling on this machine: token events/s per client core, CPU per
    /// million events, memory per stream, and TTFT/ITL measurement error against a loopback
    /// server with known timing.
    ///
    /// Example: kvbench selftest --concurrency 1000 --events-per-s 20000 --json
    Selftest(SelftestArgs),
}

fn non_negative_pct(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..100.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a percentage from 0 to below 100")),
    }
}

/// Upper bounds of counts and sizes: far beyond any real benchmark, low enough that what a run
/// allocates per request, per worker or per second stays within one machine. A value above
/// one is a typo or a test of kvbench itself, and gets a one-line error rather than a run
/// that exhausts memory or never ends.
pub mod bounds {
    /// Requests in flight (`--concurrency`, `--max-concurrency`, selftest streams).
    pub const MAX_CONCURRENCY: usize = 100_000;
    /// Measured requests (`--num-requests`).
    pub const MAX_REQUESTS: u64 = 1_000_000_000;
    /// Warmup requests.
    pub const MAX_WARMUP: u64 = 1_000_000;
    /// Synthetic prompt length in tokens (a 1 Mi-token context is the largest served today).
    pub const MAX_INPUT_LEN: u32 = 1 << 20;
    /// Images per request.
    pub const MAX_IMAGES: u32 = 100;
    /// Slowest open-loop rate, requests per second (one a day is 0.0000116).
    pub const MIN_RATE: f64 = 1e-6;
    /// Longest duration or time limit (`--duration`, `--timeout`, `--budget`).
    pub const MAX_DURATION_S: u64 = 366 * 24 * 3600;
    /// Longest delay of the self-test server (`--itl-ms`, `--ttft-ms`): an hour.
    pub const MAX_DELAY_MS: u64 = 3_600_000;
    /// Requests per self-test stream.
    pub const MAX_REQUESTS_PER_STREAM: u64 = 1_000_000;
}

use bounds::*;

/// Rate value: a number of requests per second from [`MIN_RATE`], or `inf` (all at once).
fn parse_rate(s: &str) -> Result<f64, String> {
    if s.eq_ignore_ascii_case("inf") {
        return Ok(f64::INFINITY);
    }
    match s.parse::<f64>() {
        Ok(r) if r >= MIN_RATE && r.is_finite() => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive rate of at least {MIN_RATE} requests/s, or \"inf\""
        )),
    }
}

/// A duration: humantime (`30s`, `5m`, `1h 30m`) or seconds (`90`, `0.5`); positive and at
/// most [`MAX_DURATION_S`].
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .ok()
        .or_else(|| {
            s.parse::<f64>()
                .ok()
                .and_then(|x| Duration::try_from_secs_f64(x).ok())
        })
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 30s, 5m, 90)"))?;
    if d.is_zero() {
        return Err("the duration must be positive".into());
    }
    if d > Duration::from_secs(MAX_DURATION_S) {
        return Err(format!("{s:?} is longer than 366 days"));
    }
    Ok(d)
}

/// Headers kvbench writes itself or that decide how the request is framed and routed: set by
/// the user they would be sent twice or contradict kvbench's own (`Content-Length` with
/// `Transfer-Encoding`, another `Host`), which servers and proxies read differently.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "proxy-connection",
    "content-type",
    "accept",
];

fn parse_header(s: &str) -> Result<(String, String), String> {
    let Some((k, v)) = s.split_once(':').filter(|(k, _)| !k.trim().is_empty()) else {
        return Err(format!(
            "expected K:V, got {:?}",
            s.split(':').next().unwrap_or("")
        ));
    };
    let (k, v) = (k.trim(), v.trim());
    if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
        return Err(format!("{k:?} is not a valid header name"));
    }
    if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "{k} is set by kvbench itself (it frames or routes the request)"
        ));
    }
    if reqwest::header::HeaderValue::from_str(v).is_err() {
        return Err(format!(
            "the value of {k} has characters not allowed in a header (control characters)"
        ));
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WIDTHxHEIGHT, got {s:?}"))?;
    match (w.parse::<u32>(), h.parse::<u32>()) {
        (Ok(w), Ok(h)) if (1..=8192).contains(&w) && (1..=8192).contains(&h) => Ok((w, h)),
        _ => Err(format!(
            "expected WIDTHxHEIGHT between 1 and 8192, got {s:?}"
        )),
    }
}

fn positive_u64(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive integer")),
    }
}

/// A positive integer of at most `max`.
fn positive_at_most(s: &str, max: u64) -> Result<u64, String> {
    match positive_u64(s)? {
        n if n <= max => Ok(n),
        _ => Err(format!("{s:?} is more than {max}")),
    }
}

fn requests(s: &str) -> Result<u64, String> {
    positive_at_most(s, MAX_REQUESTS)
}

fn concurrency(s: &str) -> Result<usize, String> {
    positive_at_most(s, MAX_CONCURRENCY as u64).map(|n| n as usize)
}

fn requests_per_stream(s: &str) -> Result<u64, String> {
    positive_at_most(s, MAX_REQUESTS_PER_STREAM)
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

/// A delay of the self-test server in ms: positive, at most [`MAX_DELAY_MS`].
fn delay_ms(s: &str) -> Result<f64, String> {
    match positive_f64(s)? {
        x if x <= MAX_DELAY_MS as f64 => Ok(x),
        _ => Err(format!("{s:?} is more than an hour ({MAX_DELAY_MS} ms)")),
    }
}
/// Options that come from the experiment file when `--config` is given.
const CONFIG_CONFLICTS: &[&str] = &[
    "url",
    "model",
    "endpoint",
    "engine",
    "num_requests",
    "duration",
    "concurrency",
    "request_rate",
    "arrival",
    "burstiness",
    "max_concurrency",
    "input_len",
    "max_tokens",
    "ignore_eos",
    "temperature",
    "top_p",
    "seed",
    "warmup",
    "dataset",
    "tokenizer",
    "allow_prefix_cache",
    "images",
    "image_size",
    "image_files",
    "api_key_env",
    "headers",
    "timeout",
    "journal",
];

/// `kvbench run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Server URL: root (http://host:8000) or API base (http://host:8000/v1).
    #[arg(long, required_unless_present = "config")]
    pub url: Option<String>,

    /// Launch an arm of this experiment file (server settings and workload come from the file;
    /// see docs/experiment.md) instead of measuring --url.
    #[arg(long, value_name = "EXP.toml", requires = "arm", conflicts_with_all = CONFIG_CONFLICTS)]
    pub config: Option<PathBuf>,
    /// The arm of --config to run.
    #[arg(long, requires = "config")]
    pub arm: Option<String>,
    /// With --config: directory for the arm's files, named as
    /// benchmark_<experiment>_<arm>_YYYYMMDD_HHMMSS.{json,log,requests.jsonl} [default: .].
    #[arg(long, requires = "config", conflicts_with = "output")]
    pub out_dir: Option<PathBuf>,
    /// With --config: print the command lines and files the arm would use, and stop.
    #[arg(long, requires = "config")]
    pub dry_run: bool,
    /// Warnings catalog (TOML) replacing the embedded one; see docs/experiment.md.
    #[arg(long, requires = "config")]
    pub catalog: Option<PathBuf>,
    /// Model name to request [default: the first entry of /v1/models].
    #[arg(long)]
    pub model: Option<String>,
    /// Endpoint to call.
    #[arg(long, value_enum, default_value_t = Endpoint::Chat)]
    pub endpoint: Endpoint,
    /// Server software; decides engine-specific fields (auto: from /v1/models `owned_by`).
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    pub engine: Engine,

    /// Measured requests (warmup not included) [default: 100 unless --duration].
    #[arg(long, short = 'n', value_parser = requests, conflicts_with = "duration")]
    pub num_requests: Option<u64>,
    /// Send for this long instead (e.g. 60s, 5m); requests in flight then finish.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Closed loop: this many requests in flight, each sent when one ends [default: 1].
    #[arg(long, short = 'c', value_parser = concurrency, conflicts_with = "request_rate")]
    pub concurrency: Option<usize>,
    /// Open loop: mean requests per second (or "inf": all at once); latency is also measured
    /// from the scheduled send time.
    #[arg(long, value_parser = parse_rate)]
    pub request_rate: Option<f64>,
    /// Open-loop gap distribution.
    #[arg(long, value_enum, requires = "request_rate")]
    pub arrival: Option<ArrivalKind>,
    /// Gamma shape for open-loop gaps (1 = Poisson; < 1 burstier); implies --arrival gamma.
    #[arg(long, value_parser = positive_f64, requires = "request_rate")]
    pub burstiness: Option<f64>,
    /// Open loop: cap on requests in flight (excess waits in the client, and that wait counts).
    #[arg(long, value_parser = concurrency, requires = "request_rate")]
    pub max_concurrency: Option<usize>,

    /// Synthetic prompt length in tokens (exact with --tokenizer, estimated otherwise).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=MAX_INPUT_LEN as i64))]
    pub input_len: u32,
    /// Maximum output tokens per request.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// Ask the server to ignore end-of-sequence so every answer has --max-tokens tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Sampling temperature (always sent; 0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling top_p (always sent).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed for prompts, arrivals and images; also sent as the sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Warmup requests sent before measuring (excluded from statistics).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=MAX_WARMUP))]
    pub warmup: u64,

    /// Prompt source: synthetic, jsonl:PATH ({"prompt"} or {"messages"} per line, optional
    /// max_tokens) or sharegpt:PATH.
    #[arg(long, default_value = "synthetic")]
    pub dataset: DatasetSpec,
    /// A Hugging Face tokenizer.json for exact prompt lengths (read locally, no download).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Let prompts share prefixes: no unique random prefix, and llama.cpp may reuse its cache.
    #[arg(long)]
    pub allow_prefix_cache: bool,
    /// Images per request for vision-language models (generated unless --image is given).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=MAX_IMAGES as i64))]
    pub images: u32,
    /// Size of generated images.
    #[arg(long, value_parser = parse_size, default_value = "512x512")]
    pub image_size: (u32, u32),
    /// Image file(s) to send instead of generated ones (repeatable).
    #[arg(long = "image")]
    pub image_files: Vec<PathBuf>,

    /// Name of the environment variable that holds the API key (sent as a Bearer token,
    /// never written anywhere).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Extra request header K:V (repeatable; values are never written anywhere).
    #[arg(long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Per-request time limit.
    #[arg(long, value_parser = parse_duration, default_value = "600s")]
    pub timeout: Duration,

    /// Result JSON path ("-" for stdout).
    #[arg(long, short = 'o', required_unless_present = "config")]
    pub output: Option<PathBuf>,
    /// Per-request journal (JSON lines) [default: next to --output, .requests.jsonl].
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Keep each answer's text in the journal.
    #[arg(long)]
    pub save_text: bool,
    /// No progress display and no summary table.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Quality suites (answer accuracy, cross-arm agreement).
    #[command(flatten)]
    pub quality: QualityArgs,
}

/// `kvbench run` quality options.
#[derive(Debug, Args)]
pub struct QualityArgs {
    /// Quality suites to run after warmup, before measuring speed (comma-separated): passkey,
    /// needle, arithmetic, copy, images, jsonl:PATH. See docs/quality.md.
    #[arg(long, value_delimiter = ',', value_name = "SUITES")]
    pub quality: Vec<crate::quality::SuiteSpec>,
    /// Context lengths in tokens for passkey and needle (comma-separated) [default: 1024, 2048,
    /// ... up to the server's maximum length].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(16..))]
    pub quality_lengths: Vec<u32>,
    /// Depths (0 = start, 1 = end) at which passkey and needle facts are hidden [default:
    /// 0,0.25,0.5,0.75,1].
    #[arg(long, value_delimiter = ',')]
    pub quality_depths: Vec<f64>,
    /// Items per generated quality suite (passkey and needle: at least this many, the same
    /// number for every length and depth).
    #[arg(long, default_value_t = crate::quality::DEFAULT_ITEMS, value_parser = clap::value_parser!(u32).range(1..))]
    pub quality_items: u32,
    /// Top log-probabilities to ask for per answer token (cross-arm agreement; 0 = none).
    #[arg(long, default_value_t = crate::quality::DEFAULT_LOGPROBS)]
    pub quality_logprobs: u32,
    /// Output budget of every quality item instead of each suite's own (thinking models).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub quality_max_tokens: Option<u32>,
    /// Skip malformed lines of jsonl quality suites (reported with their line numbers)
    /// instead of failing.
    #[arg(long)]
    pub quality_skip_invalid: bool,
    /// Another arm's quality journal (e.g. the baseline's `*.quality.jsonl`): each suite stops
    /// early once the paired items show a drop beyond doubt (exact McNemar p < 0.001, more
    /// items lost than gained). `ab --until-decided` sets it for candidates.
    #[arg(long, value_name = "FILE")]
    pub quality_paired_with: Option<PathBuf>,
}

impl QualityArgs {
    /// Validates the `--quality*` options (user suites are read now, so a malformed line fails
    /// before anything is sent). The quality journal goes next to the request journal.
    pub fn into_config(
        &self,
        endpoint: Endpoint,
        seed: u64,
        journal: &std::path::Path,
    ) -> anyhow::Result<Option<crate::quality::QualityConfig>> {
        use crate::quality::{SuiteSpec, DEFAULT_DEPTHS};
        if self.quality.is_empty() {
            let set = !self.quality_lengths.is_empty()
                || !self.quality_depths.is_empty()
                || self.quality_max_tokens.is_some()
                || self.quality_skip_invalid
                || self.quality_paired_with.is_some();
            if set {
                bail!("the --quality-* options need --quality SUITES");
            }
            return Ok(None);
        }
        if let Some(d) = self
            .quality_depths
            .iter()
            .find(|d| !(0.0..=1.0).contains(*d))
        {
            bail!("--quality-depths: {d} is not between 0 and 1");
        }
        for (i, s) in self.quality.iter().enumerate() {
            if self.quality[..i].iter().any(|t| t.name() == s.name()) {
                bail!("--quality: suite {} is given twice", s.name());
            }
            match s {
                SuiteSpec::Images if endpoint == Endpoint::Completions => {
                    bail!("--quality images needs --endpoint chat")
                }
                SuiteSpec::Jsonl { path } => {
                    crate::quality::jsonl::load(path, &s.name(), self.quality_skip_invalid, None)
                        .map_err(|e| anyhow::anyhow!("--quality: {e:#}"))?;
                }
                _ => {}
            }
        }
        let name = journal
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = name
            .strip_suffix(".requests.jsonl")
            .unwrap_or(name.strip_suffix(".jsonl").unwrap_or(&name));
        Ok(Some(crate::quality::QualityConfig {
            suites: self.quality.clone(),
            lengths: self.quality_lengths.clone(),
            depths: if self.quality_depths.is_empty() {
                DEFAULT_DEPTHS.to_vec()
            } else {
                self.quality_depths.clone()
            },
            items: self.quality_items,
            logprobs: self.quality_logprobs,
            max_tokens: self.quality_max_tokens,
            seed,
            skip_invalid: self.quality_skip_invalid,
            journal: journal.with_file_name(format!("{stem}.quality.jsonl")),
            paired_with: self.quality_paired_with.clone(),
        }))
    }
}

/// `kvbench compare` options.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Result files (any number of arms; repeats of an arm are grouped by its name).
    pub results: Vec<PathBuf>,
    /// The baseline: a result file (with --calibrated), or an arm name among RESULTS
    /// [default: the first arm].
    #[arg(long)]
    pub baseline: Option<String>,
    /// The candidate result file, compared with the --baseline file.
    #[arg(long, requires = "baseline", conflicts_with = "results")]
    pub calibrated: Option<PathBuf>,
    /// A quality reference arm among RESULTS (e.g. bf16 KV): every other arm's answers are
    /// compared with its answers, and it is not itself a candidate for the decision.
    #[arg(long)]
    pub reference: Option<String>,
    /// Read each result's server log again (the `.log` beside it) with the current warnings
    /// catalog, replacing the warnings recorded at run time (e.g. after a catalog fix).
    #[arg(long)]
    pub rescan_logs: bool,
    /// Comparison JSON to write ("-" for stdout).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Decision policy (TOML, keys at top level; docs/decision.md) [default: the user's rule].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Warnings catalog replacing the embedded one.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Also write the Markdown report here.
    #[arg(long)]
    pub md: Option<PathBuf>,
    /// Also write the self-contained HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Print only errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `kvbench ab` options.
#[derive(Debug, Args)]
pub struct AbArgs {
    /// The experiment file (docs/experiment.md).
    pub experiment: PathBuf,
    /// Directory for every file of the experiment [default: results/<experiment name>].
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Fixed design: run each arm exactly this many times, interleaved (A B, B A, ...);
    /// `--repeat 1` is one run per arm. Without it, kvbench runs adaptively (--until-decided).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100), conflicts_with_all = ["until_decided", "max_runs", "budget"])]
    pub repeat: Option<u32>,
    /// Adaptive design (the default): rounds of interleaved runs (A B, then B A, ...) until no
    /// verdict can change with more runs, or --max-runs / --budget is reached
    /// (docs/decision.md, with its measured error rates).
    #[arg(long)]
    pub until_decided: bool,
    /// Adaptive design: at most this many runs per arm [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub max_runs: Option<u32>,
    /// Adaptive design: start no round that would end after this much time (e.g. 40m, 2h).
    #[arg(long, value_parser = parse_duration)]
    pub budget: Option<Duration>,
    /// Keep arms that already have a result in --out-dir (outcome ok) and run only the others.
    #[arg(long)]
    pub resume: bool,
    /// Print what each arm would launch, and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// The baseline arm [default: the experiment's [decision] baseline, else the first arm].
    #[arg(long)]
    pub baseline: Option<String>,
    /// The quality reference arm [default: `[decision] reference` of the experiment, if any].
    #[arg(long)]
    pub reference: Option<String>,
    /// Decision policy (TOML) replacing the experiment's [decision] table and the defaults.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Warnings catalog replacing the embedded one.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// No progress display.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `kvbench error-rates` options.
#[derive(Debug, Args)]
pub struct ErrorRatesArgs {
    /// Experiments simulated per scenario and design.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    pub experiments: u32,
    /// Decision policy (TOML) [default: the built-in policy].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Run cap of the adaptive design.
    #[arg(long, default_value_t = crate::ab::DEFAULT_MAX_RUNS, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub max_runs: u32,
    /// Only this scenario: the candidate's true TTFT change in percent ...
    #[arg(long, allow_hyphen_values = true)]
    pub ttft_change_pct: Option<f64>,
    /// ... its true quality drop in points ...
    #[arg(long)]
    pub quality_drop_pts: Option<f64>,
    /// ... and the run-to-run drift (one σ, percent).
    #[arg(long)]
    pub sigma_run_pct: Option<f64>,
    /// Seed (the same seed gives the same table).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// JSON lines (one per scenario and design) instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
}

/// `kvbench scan-logs` options.
#[derive(Debug, Args)]
pub struct ScanLogsArgs {
    /// Log files (read as one log, in order; `-` reads stdin).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print `{"warnings": [...], "facts": {...}}` instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Warnings catalog (TOML) replacing the embedded one.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
}

/// `kvbench report` options.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("out").required(true).multiple(true).args(["html", "md"])))]
pub struct ReportArgs {
    /// The comparison JSON (`kvbench compare --output`).
    pub comparison: PathBuf,
    /// Write the HTML report here (one self-contained file).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Write the Markdown report here (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub md: Option<PathBuf>,
}

/// `kvbench test-server` options.
#[derive(Debug, Args)]
pub struct TestServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// Delay to the first token, ms.
    #[arg(long, default_value_t = 50)]
    pub ttft_ms: u64,
    /// Delay between tokens, ms.
    #[arg(long, default_value_t = 10)]
    pub itl_ms: u64,
    /// Tokens per answer [default: the request's max_tokens].
    #[arg(long)]
    pub tokens: Option<u32>,
    /// Leading tokens sent as reasoning.
    #[arg(long, default_value_t = 0)]
    pub reasoning_tokens: u32,
    /// Wire format.
    #[arg(long, value_enum, default_value_t = Flavor::Vllm)]
    pub flavor: Flavor,
    /// Print this file to stdout at start-up (imitates a server's start-up log).
    #[arg(long)]
    pub print: Option<PathBuf>,
    /// Exit with this code right after printing (imitates a server that fails to start).
    #[arg(long)]
    pub exit: Option<i32>,
    /// Run-to-run drift: this instance's delays are all scaled by one random factor whose
    /// spread is this many percent (one standard deviation), as a real server is a little
    /// slower or faster after each start.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_pct)]
    pub run_drift_pct: f64,
    /// Seed of the drift factor (the same seed gives the same factor) [default: random].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Slow trend within a run: delays grow by this many percent per minute (negative: shrink).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub trend_pct_per_min: f64,
    /// Arguments after `--` are accepted and ignored (an arm's server flags, for tests).
    #[arg(hide = true, allow_hyphen_values = true)]
    pub ignored: Vec<String>,
}

/// `kvbench selftest` options.
#[derive(Debug, Args)]
pub struct SelftestArgs {
    /// Streams in flight (closed loop).
    #[arg(long, short = 'c', default_value_t = 1000, value_parser = concurrency)]
    pub concurrency: usize,
    /// Token events per second the server releases over all streams (each stream gets
    /// one token every concurrency / events-per-s seconds).
    #[arg(long, default_value_t = 20000.0, value_parser = positive_f64)]
    pub events_per_s: f64,
    /// Output tokens asked per request (each answer has between half and all of them).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// Synthetic prompt length in tokens (estimated).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub input_len: u32,
    /// Server delay to the first token, ms.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=MAX_DELAY_MS))]
    pub ttft_ms: u64,
    /// Requests per stream: the run sends concurrency × this many requests.
    #[arg(long, default_value_t = 4, value_parser = requests_per_stream)]
    pub requests_per_stream: u64,
    /// Endpoint to call.
    #[arg(long, value_enum, default_value_t = Endpoint::Chat)]
    pub endpoint: Endpoint,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Only serve the fast loopback server on this address until Ctrl-C (used by
    /// scripts/bench-client.sh; port 0 picks a free port; the URL is printed first).
    #[arg(long, value_name = "ADDR")]
    pub serve: Option<SocketAddr>,
    /// With --serve: gap between two tokens of a stream, ms [default: concurrency /
    /// events-per-s].
    #[arg(long, requires = "serve", value_parser = delay_ms)]
    pub itl_ms: Option<f64>,
    /// With --serve: answers have between half and all of max_tokens (by prompt), so
    /// closed-loop streams do not stay in lock-step.
    #[arg(long, requires = "serve")]
    pub vary_length: bool,
}

impl RunArgs {
    /// Validates raw arguments into a run configuration (reads the API key from its variable).
    pub fn into_config(self) -> anyhow::Result<RunConfig> {
        let Some(url) = self.url.clone() else {
            bail!("--url is required");
        };
        let Some(output) = self.output.clone() else {
            bail!("--output is required");
        };
        crate::client::api_base(&url)?;
        let api_key = match &self.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!("--api-key-env {var}: the environment variable {var} is not set")
            })?),
            None => None,
        };
        let arrival = match self.request_rate {
            Some(rate) => {
                let kind = match (self.arrival, self.burstiness) {
                    (Some(k), _) => k,
                    (None, Some(_)) => ArrivalKind::Gamma,
                    (None, None) => ArrivalKind::Poisson,
                };
                if self.burstiness.is_some() && kind != ArrivalKind::Gamma {
                    bail!("--burstiness applies to --arrival gamma only");
                }
                Arrival::Open {
                    rate,
                    kind,
                    burstiness: self.burstiness.unwrap_or(1.0),
                    max_concurrency: self.max_concurrency,
                }
            }
            None => Arrival::Closed {
                concurrency: self.concurrency.unwrap_or(1),
            },
        };
        let num_requests = match (self.num_requests, self.duration) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(100),
        };
        if let Arrival::Open { rate, .. } = arrival {
            if !rate.is_finite() && num_requests.is_none() {
                bail!("--request-rate inf needs --num-requests");
            }
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            bail!("--temperature must be between 0 and 2");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("--top-p must be in (0, 1]");
        }
        if self.images > 0 && self.endpoint == Endpoint::Completions {
            bail!("--images needs --endpoint chat");
        }
        if !self.image_files.is_empty() && self.images == 0 {
            bail!("--image needs --images N (images per request)");
        }
        if let Some(t) = &self.tokenizer {
            if !t.is_file() {
                bail!("--tokenizer {}: no such file", t.display());
            }
        }
        match &self.dataset {
            DatasetSpec::Jsonl { path } | DatasetSpec::Sharegpt { path } if !path.is_file() => {
                bail!("--dataset: cannot read {}: no such file", path.display());
            }
            _ => {}
        }
        let journal = match self.journal {
            Some(j) => j,
            None if output.as_os_str() == "-" => PathBuf::from("kvbench.requests.jsonl"),
            None => {
                let stem = output
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "kvbench".into());
                output.with_file_name(format!("{stem}.requests.jsonl"))
            }
        };
        if let Some(dir) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
            if output.as_os_str() != "-" && !dir.is_dir() {
                bail!(
                    "--output {}: directory {} does not exist",
                    output.display(),
                    dir.display()
                );
            }
        }
        let quality = self
            .quality
            .into_config(self.endpoint, self.seed, &journal)?;
        let images = (self.images > 0).then(|| ImageSpec {
            count: self.images,
            width: self.image_size.0,
            height: self.image_size.1,
            files: self.image_files.clone(),
        });
        Ok(RunConfig {
            url,
            model: self.model,
            endpoint: self.endpoint,
            engine: self.engine,
            num_requests,
            duration: self.duration,
            arrival,
            sampling: Sampling {
                max_tokens: self.max_tokens,
                temperature: self.temperature,
                top_p: self.top_p,
                seed: Some(self.seed),
                ignore_eos: self.ignore_eos,
                top_logprobs: None,
            },
            warmup: self.warmup,
            workload: WorkloadSpec {
                dataset: self.dataset,
                input_len: self.input_len,
                seed: self.seed,
                unique_prefix: !self.allow_prefix_cache,
                images,
            },
            tokenizer: self.tokenizer,
            api_key_env: self.api_key_env,
            api_key,
            headers: self.headers,
            timeout: self.timeout,
            output,
            journal,
            keep_text: self.save_text,
            no_prompt_cache: !self.allow_prefix_cache,
            progress: if self.quiet {
                ProgressMode::Quiet
            } else {
                ProgressMode::Auto
            },
            arm: None,
            quality,
            origin: None,
        })
    }
}
