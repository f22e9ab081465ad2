//! Run settings: one typed model of what `kvbench run` measures, filled by clap (the `run`
//! flags) and by serde (an experiment's `[workload]` and `[quality]` tables, with the flags'
//! names and `_` for `-`), and validated once into an immutable [`RunConfig`]. An experiment's
//! arm gets its settings from the file directly; nothing is turned into command-line text and
//! parsed again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, ValueEnum};
use serde::Deserialize;
use serde::Deserializer;

use crate::client::request::Sampling;
use crate::client::{Endpoint, Engine};
use crate::quality::{QualityConfig, SuiteSpec};
use crate::workload::arrivals::{Arrival, ArrivalKind};
use crate::workload::{DatasetSpec, ImageSpec, WorkloadSpec};

/// Runs per arm at most, by default, for `ab --until-decided` (docs/decision.md: the error
/// rates were measured with it).
pub const DEFAULT_MAX_RUNS: u32 = 8;

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
pub(crate) fn parse_rate(s: &str) -> Result<f64, String> {
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
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
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

pub(crate) fn parse_header(s: &str) -> Result<(String, String), String> {
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

pub(crate) fn parse_size(s: &str) -> Result<(u32, u32), String> {
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

pub(crate) fn positive_u64(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive integer")),
    }
}

/// A positive integer of at most `max`.
pub(crate) fn positive_at_most(s: &str, max: u64) -> Result<u64, String> {
    match positive_u64(s)? {
        n if n <= max => Ok(n),
        _ => Err(format!("{s:?} is more than {max}")),
    }
}

pub(crate) fn requests(s: &str) -> Result<u64, String> {
    positive_at_most(s, MAX_REQUESTS)
}

pub(crate) fn concurrency(s: &str) -> Result<usize, String> {
    positive_at_most(s, MAX_CONCURRENCY as u64).map(|n| n as usize)
}

/// A share in (0, 1].
pub(crate) fn share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        _ => Err(format!("{s:?}: expected a share in (0, 1], e.g. 0.99")),
    }
}

pub(crate) fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

/// Defaults shared by the flags and the experiment tables.
mod defaults {
    pub const KNEE_SHARE: &str = "0.99";
    pub const INPUT_LEN: u32 = 512;
    pub const MAX_TOKENS: u32 = 128;
    pub const TOP_P: f64 = 1.0;
    pub const DATASET: &str = "synthetic";
    pub const IMAGE_SIZE: &str = "512x512";
    pub const TIMEOUT: &str = "600s";
}

/// What `kvbench run` measures and how, besides the server's URL: the `run` flags, and the keys
/// of an experiment's `[workload]` table (a flag's name with `_` for `-`; `[quality]` keys are
/// the `--quality-KEY` flags, `suites` being `--quality`). `output`, `journal` and `quiet` are
/// set by kvbench for an arm and are not keys of the file.
#[derive(Debug, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// Model name to request [default: the first entry of /v1/models].
    #[arg(long)]
    #[serde(deserialize_with = "from_toml::opt_string")]
    pub model: Option<String>,
    /// Endpoint to call.
    #[arg(long, value_enum, default_value_t = Endpoint::Chat)]
    #[serde(deserialize_with = "from_toml::value_enum")]
    pub endpoint: Endpoint,
    /// Server software; decides engine-specific fields (auto: from /v1/models `owned_by`).
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    #[serde(deserialize_with = "from_toml::value_enum")]
    pub engine: Engine,

    /// Measured requests (warmup not included) [default: 100 unless --duration].
    #[arg(long, short = 'n', value_parser = requests, conflicts_with = "duration")]
    #[serde(deserialize_with = "from_toml::opt_requests")]
    pub num_requests: Option<u64>,
    /// Send for this long instead (e.g. 60s, 5m); requests in flight then finish.
    #[arg(long, value_parser = parse_duration)]
    #[serde(deserialize_with = "from_toml::opt_duration")]
    pub duration: Option<Duration>,

    /// Closed loop: this many requests in flight, each sent when one ends [default: 1].
    #[arg(long, short = 'c', value_parser = concurrency, conflicts_with = "request_rate")]
    #[serde(deserialize_with = "from_toml::opt_concurrency")]
    pub concurrency: Option<usize>,
    /// Open loop: mean requests per second (or "inf": all at once); latency is also measured
    /// from the scheduled send time.
    #[arg(long, value_parser = parse_rate)]
    #[serde(deserialize_with = "from_toml::opt_rate")]
    pub request_rate: Option<f64>,
    /// Open-loop gap distribution.
    #[arg(long, value_enum, requires = "request_rate")]
    #[serde(deserialize_with = "from_toml::opt_value_enum")]
    pub arrival: Option<ArrivalKind>,
    /// Gamma shape for open-loop gaps (1 = Poisson; < 1 burstier); implies --arrival gamma.
    #[arg(long, value_parser = positive_f64, requires = "request_rate")]
    #[serde(deserialize_with = "from_toml::opt_positive_f64")]
    pub burstiness: Option<f64>,
    /// Open loop: cap on requests in flight (excess waits in the client, and that wait counts).
    #[arg(long, value_parser = concurrency, requires = "request_rate")]
    #[serde(deserialize_with = "from_toml::opt_concurrency")]
    pub max_concurrency: Option<usize>,

    /// Synthetic prompt length in tokens (exact with --tokenizer, estimated otherwise).
    #[arg(long, default_value_t = defaults::INPUT_LEN, value_parser = clap::value_parser!(u32).range(1..=MAX_INPUT_LEN as i64))]
    #[serde(deserialize_with = "from_toml::input_len")]
    pub input_len: u32,
    /// Maximum output tokens per request.
    #[arg(long, default_value_t = defaults::MAX_TOKENS, value_parser = clap::value_parser!(u32).range(1..))]
    #[serde(deserialize_with = "from_toml::positive_u32")]
    pub max_tokens: u32,
    /// Ask the server to ignore end-of-sequence so every answer has --max-tokens tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Sampling temperature (always sent; 0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    #[serde(deserialize_with = "from_toml::f64")]
    pub temperature: f64,
    /// Nucleus sampling top_p (always sent).
    #[arg(long, default_value_t = defaults::TOP_P)]
    #[serde(deserialize_with = "from_toml::f64")]
    pub top_p: f64,
    /// Seed for prompts, arrivals and images; also sent as the sampling seed.
    #[arg(long, default_value_t = 0)]
    #[serde(deserialize_with = "from_toml::u64")]
    pub seed: u64,
    /// Warmup requests sent before measuring (excluded from statistics).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=MAX_WARMUP))]
    #[serde(deserialize_with = "from_toml::warmup")]
    pub warmup: u64,

    /// Prompt source: synthetic, jsonl:PATH ({"prompt"} or {"messages"} per line, optional
    /// max_tokens) or sharegpt:PATH.
    #[arg(long, default_value = defaults::DATASET)]
    #[serde(deserialize_with = "from_toml::from_str")]
    pub dataset: DatasetSpec,
    /// A Hugging Face tokenizer.json for exact prompt lengths (read locally, no download).
    #[arg(long)]
    #[serde(deserialize_with = "from_toml::opt_path")]
    pub tokenizer: Option<PathBuf>,
    /// Let prompts share prefixes: no unique random prefix, and llama.cpp may reuse its cache.
    #[arg(long)]
    pub allow_prefix_cache: bool,
    /// Images per request for vision-language models (generated unless --image is given).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=MAX_IMAGES as i64))]
    #[serde(deserialize_with = "from_toml::images")]
    pub images: u32,
    /// Size of generated images.
    #[arg(long, value_parser = parse_size, default_value = defaults::IMAGE_SIZE)]
    #[serde(deserialize_with = "from_toml::size")]
    pub image_size: (u32, u32),
    /// Image file(s) to send instead of generated ones (repeatable).
    #[arg(long = "image")]
    #[serde(rename = "image", deserialize_with = "from_toml::paths")]
    pub image_files: Vec<PathBuf>,

    /// Name of the environment variable that holds the API key (sent as a Bearer token,
    /// never written anywhere).
    #[arg(long)]
    #[serde(deserialize_with = "from_toml::opt_string")]
    pub api_key_env: Option<String>,
    /// Extra request header K:V (repeatable; values are never written anywhere).
    #[arg(long = "header", value_parser = parse_header)]
    #[serde(rename = "header", deserialize_with = "from_toml::headers")]
    pub headers: Vec<(String, String)>,
    /// A latency target of one request, METRIC=MS with METRIC ttft_ms, tpot_ms or e2e_ms
    /// (repeatable): the result then counts goodput, the requests that met every target
    /// (docs/metrics.md).
    #[arg(long = "slo", value_name = "METRIC=MS", value_delimiter = ',', value_parser = crate::metrics::parse_slo_target)]
    #[serde(rename = "slo", deserialize_with = "from_toml::slo")]
    pub slo: Vec<(String, f64)>,
    /// A load sweep after the workload, BY=LEVELS with BY concurrency or request_rate and the
    /// levels lowest first (e.g. concurrency=1,8,32,128): the same server is measured again at
    /// each level, and the result gets `capacity` with the knee, the highest level whose
    /// goodput share stays at or above --knee-share (needs --slo; docs/metrics.md#capacity).
    #[arg(long, value_name = "BY=LEVELS", value_parser = crate::capacity::parse_sweep)]
    #[serde(deserialize_with = "from_toml::sweep")]
    pub sweep: Option<crate::capacity::Sweep>,
    /// The goodput share (0..1) a sweep level must keep to count as within capacity.
    #[arg(long, value_parser = share, default_value = defaults::KNEE_SHARE)]
    #[serde(deserialize_with = "from_toml::share")]
    pub knee_share: f64,
    /// Per-request time limit.
    #[arg(long, value_parser = parse_duration, default_value = defaults::TIMEOUT)]
    #[serde(deserialize_with = "from_toml::duration")]
    pub timeout: Duration,

    /// Result JSON path ("-" for stdout).
    #[arg(long, short = 'o', required_unless_present = "config")]
    #[serde(skip)]
    pub output: Option<PathBuf>,
    /// Per-request journal (JSON lines) [default: next to --output, .requests.jsonl].
    #[arg(long)]
    #[serde(skip)]
    pub journal: Option<PathBuf>,
    /// Keep each answer's text in the journal.
    #[arg(long)]
    pub save_text: bool,
    /// No progress display and no summary table.
    #[arg(long, short = 'q')]
    #[serde(skip)]
    pub quiet: bool,

    /// Quality suites to run after warmup, before measuring speed (comma-separated): passkey,
    /// needle, arithmetic, copy, images, jsonl:PATH. See docs/quality.md.
    #[arg(long, value_delimiter = ',', value_name = "SUITES")]
    #[serde(deserialize_with = "from_toml::suites")]
    pub quality: Vec<SuiteSpec>,
    /// Context lengths in tokens for passkey and needle (comma-separated) [default: 1024, 2048,
    /// ... up to the server's maximum length].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(16..))]
    #[serde(deserialize_with = "from_toml::lengths")]
    pub quality_lengths: Vec<u32>,
    /// Depths (0 = start, 1 = end) at which passkey and needle facts are hidden [default:
    /// 0,0.25,0.5,0.75,1].
    #[arg(long, value_delimiter = ',')]
    #[serde(deserialize_with = "from_toml::depths")]
    pub quality_depths: Vec<f64>,
    /// Items per generated quality suite (passkey and needle: at least this many, the same
    /// number for every length and depth).
    #[arg(long, default_value_t = crate::quality::DEFAULT_ITEMS, value_parser = clap::value_parser!(u32).range(1..))]
    #[serde(deserialize_with = "from_toml::positive_u32")]
    pub quality_items: u32,
    /// Top log-probabilities to ask for per answer token (cross-arm agreement; 0 = none).
    #[arg(long, default_value_t = crate::quality::DEFAULT_LOGPROBS)]
    #[serde(deserialize_with = "from_toml::u32")]
    pub quality_logprobs: u32,
    /// Output budget of every quality item instead of each suite's own (thinking models).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    #[serde(deserialize_with = "from_toml::opt_positive_u32")]
    pub quality_max_tokens: Option<u32>,
    /// Skip malformed lines of jsonl quality suites (reported with their line numbers)
    /// instead of failing.
    #[arg(long)]
    pub quality_skip_invalid: bool,
    /// Another arm's quality journal (e.g. the baseline's `*.quality.jsonl`): each suite stops
    /// early once the paired items show a drop beyond doubt (exact McNemar p < 0.001, more
    /// items lost than gained). `ab --until-decided` sets it for candidates.
    #[arg(long, value_name = "FILE")]
    #[serde(deserialize_with = "from_toml::opt_path")]
    pub quality_paired_with: Option<PathBuf>,
}

impl Default for RunSettings {
    /// The flags' defaults (a test checks them against clap's).
    fn default() -> Self {
        RunSettings {
            model: None,
            endpoint: Endpoint::Chat,
            engine: Engine::Auto,
            num_requests: None,
            duration: None,
            concurrency: None,
            request_rate: None,
            arrival: None,
            burstiness: None,
            max_concurrency: None,
            input_len: defaults::INPUT_LEN,
            max_tokens: defaults::MAX_TOKENS,
            ignore_eos: false,
            temperature: 0.0,
            top_p: defaults::TOP_P,
            seed: 0,
            warmup: 0,
            dataset: DatasetSpec::Synthetic,
            tokenizer: None,
            allow_prefix_cache: false,
            images: 0,
            image_size: parse_size(defaults::IMAGE_SIZE).expect("valid default"),
            image_files: Vec::new(),
            api_key_env: None,
            headers: Vec::new(),
            slo: Vec::new(),
            sweep: None,
            knee_share: share(defaults::KNEE_SHARE).expect("valid default"),
            timeout: parse_duration(defaults::TIMEOUT).expect("valid default"),
            output: None,
            journal: None,
            save_text: false,
            quiet: false,
            quality: Vec::new(),
            quality_lengths: Vec::new(),
            quality_depths: Vec::new(),
            quality_items: crate::quality::DEFAULT_ITEMS,
            quality_logprobs: crate::quality::DEFAULT_LOGPROBS,
            quality_max_tokens: None,
            quality_skip_invalid: false,
            quality_paired_with: None,
        }
    }
}

/// Why an experiment's settings table was refused, naming the key.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsError {
    /// The key (as [`RunSettings`] names it: `quality_items` for `[quality] items`).
    pub key: String,
    problem: Problem,
}

#[derive(Debug, Clone, PartialEq)]
enum Problem {
    Reserved,
    Unknown,
    Value(String),
    Conflict(&'static str),
    Needs(&'static str),
}

impl SettingsError {
    /// One line naming the key as `name` (the caller's name for it: the file's key).
    pub fn message(&self, name: &str) -> String {
        match &self.problem {
            Problem::Reserved => {
                format!("key `{name}` is set by kvbench itself and cannot appear here")
            }
            Problem::Unknown => format!(
                "key `{name}` is not a setting (keys are `kvbench run` options with _ for -; see docs/experiment.md)"
            ),
            Problem::Value(e) => format!("key `{name}`: {e}"),
            Problem::Conflict(other) => format!("key `{name}` cannot be used with `{other}`"),
            Problem::Needs(other) => format!("key `{name}` needs `{other}`"),
        }
    }
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message(&self.key))
    }
}

impl std::error::Error for SettingsError {}

/// Keys kvbench sets itself for an arm (the URL it launched, the arm's file names).
pub const RESERVED_KEYS: &[&str] = &["url", "output", "journal", "quiet", "config", "arm"];

/// Pairs of keys that cannot both be set (as `conflicts_with` on the flags).
const CONFLICTS: &[(&str, &str)] = &[
    ("num_requests", "duration"),
    ("concurrency", "request_rate"),
];

/// Keys that need another (as `requires` on the flags).
const NEEDS: &[(&str, &str)] = &[
    ("arrival", "request_rate"),
    ("burstiness", "request_rate"),
    ("max_concurrency", "request_rate"),
];

impl RunSettings {
    /// The keys a settings table may hold (serde's own list, so it cannot drift).
    pub fn keys() -> &'static [&'static str] {
        from_toml::field_names::<RunSettings>()
    }

    /// Settings from a table of keys (an experiment's `[workload]`, with `[quality]` keys
    /// renamed to their flag names); every key not given keeps the flag's default. Each key is
    /// read on its own first, so that an error names the key it is about.
    pub fn from_table(t: &toml::Table) -> Result<RunSettings, SettingsError> {
        let fail = |key: &str, problem| SettingsError {
            key: key.to_owned(),
            problem,
        };
        for (k, v) in t {
            if RESERVED_KEYS.contains(&k.as_str()) {
                return Err(fail(k, Problem::Reserved));
            }
            if !Self::keys().contains(&k.as_str()) {
                return Err(fail(k, Problem::Unknown));
            }
            let mut one = toml::Table::new();
            one.insert(k.clone(), v.clone());
            if let Err(e) = RunSettings::deserialize(toml::Value::Table(one)) {
                let text = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
                return Err(fail(k, Problem::Value(text)));
            }
        }
        for (a, b) in CONFLICTS {
            if t.contains_key(*a) && t.contains_key(*b) {
                return Err(fail(a, Problem::Conflict(b)));
            }
        }
        for (a, b) in NEEDS {
            if t.contains_key(*a) && !t.contains_key(*b) {
                return Err(fail(a, Problem::Needs(b)));
            }
        }
        RunSettings::deserialize(toml::Value::Table(t.clone())).map_err(|e| {
            let key = t.keys().next().cloned().unwrap_or_default();
            fail(&key, Problem::Value(e.message().to_owned()))
        })
    }

    /// Forgets the quality suites (an adaptive round after the first measures speed only).
    pub fn without_quality(mut self) -> Self {
        let d = RunSettings::default();
        self.quality = d.quality;
        self.quality_lengths = d.quality_lengths;
        self.quality_depths = d.quality_depths;
        self.quality_items = d.quality_items;
        self.quality_logprobs = d.quality_logprobs;
        self.quality_max_tokens = d.quality_max_tokens;
        self.quality_skip_invalid = d.quality_skip_invalid;
        self.quality_paired_with = d.quality_paired_with;
        self
    }
}

/// Deserializers of table values: a value is read as the text its flag would carry and goes
/// through the flag's own parser, so the file and the command line accept the same values and
/// say the same about a wrong one.
mod from_toml {
    use super::*;
    use serde::de::{self, Error, SeqAccess, Visitor};
    use std::fmt;
    use std::str::FromStr;

    /// A scalar (string or number) as flag text.
    struct Text(String);

    impl<'de> Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(TextVisitor { many: false })
                .map(|mut v| Text(v.remove(0)))
        }
    }

    /// A scalar, or an array of scalars (a repeated flag).
    struct Texts(Vec<String>);

    impl<'de> Deserialize<'de> for Texts {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(TextVisitor { many: true }).map(Texts)
        }
    }

    /// Reads one scalar; an array too when `many` (a flag that can be repeated).
    struct TextVisitor {
        many: bool,
    }

    impl<'de> Visitor<'de> for TextVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(match self.many {
                true => "a string, a number or an array of them",
                false => "a string or a number",
            })
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_owned()])
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            if !self.many {
                return Err(A::Error::invalid_type(de::Unexpected::Seq, &self));
            }
            let mut out = Vec::new();
            while let Some(Text(t)) = seq.next_element::<Text>()? {
                out.push(t);
            }
            Ok(out)
        }
    }

    fn one<'de, D: Deserializer<'de>, T>(
        d: D,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, D::Error> {
        let Text(s) = Text::deserialize(d)?;
        parse(&s).map_err(D::Error::custom)
    }

    /// Each item of an array (or the one value) parsed; `delimited` splits items at commas
    /// as the flag does.
    fn list<'de, D: Deserializer<'de>, T>(
        d: D,
        delimited: bool,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, D::Error> {
        let Texts(items) = Texts::deserialize(d)?;
        let mut out = Vec::new();
        for item in &items {
            if delimited {
                for part in item.split(',') {
                    out.push(parse(part).map_err(D::Error::custom)?);
                }
            } else {
                out.push(parse(item).map_err(D::Error::custom)?);
            }
        }
        Ok(out)
    }

    /// A value of a type that says itself what is wrong with a text.
    fn parse_from<T: FromStr>(s: &str) -> Result<T, String>
    where
        T::Err: fmt::Display,
    {
        s.parse::<T>().map_err(|e| e.to_string())
    }

    /// A number (its parse error does not name the text).
    fn number<T: FromStr>(s: &str) -> Result<T, String>
    where
        T::Err: fmt::Display,
    {
        s.parse::<T>().map_err(|e| format!("{s:?}: {e}"))
    }

    fn u32_in(s: &str, lo: u32, hi: u32) -> Result<u32, String> {
        match s.parse::<u32>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n),
            Ok(n) if hi == u32::MAX => Err(format!("{n} is not in {lo}..")),
            Ok(n) => Err(format!("{n} is not in {lo}..={hi}")),
            Err(e) => Err(format!("{s:?}: {e}")),
        }
    }

    fn enum_value<T: ValueEnum>(s: &str) -> Result<T, String> {
        T::from_str(s, false).map_err(|_| {
            let names: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .map(|p| p.get_name().to_owned())
                .collect();
            format!("{s:?} is not one of {}", names.join(", "))
        })
    }

    type R<'de, D, T> = Result<T, <D as Deserializer<'de>>::Error>;

    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Option<String>> {
        one(d, |s| Ok(s.to_owned())).map(Some)
    }
    pub fn opt_path<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Option<PathBuf>> {
        one(d, |s| Ok(PathBuf::from(s))).map(Some)
    }
    pub fn value_enum<'de, D: Deserializer<'de>, T: ValueEnum>(d: D) -> R<'de, D, T> {
        one(d, enum_value::<T>)
    }
    pub fn opt_value_enum<'de, D: Deserializer<'de>, T: ValueEnum>(d: D) -> R<'de, D, Option<T>> {
        one(d, enum_value::<T>).map(Some)
    }
    pub fn opt_requests<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Option<u64>> {
        one(d, requests).map(Some)
    }
    pub fn duration<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Duration> {
        one(d, parse_duration)
    }
    pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Option<Duration>> {
        one(d, parse_duration).map(Some)
    }
    pub fn opt_concurrency<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Option<usize>> {
        one(d, concurrency).map(Some)
    }
    pub fn opt_rate<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Option<f64>> {
        one(d, parse_rate).map(Some)
    }
    pub fn opt_positive_f64<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Option<f64>> {
        one(d, positive_f64).map(Some)
    }
    pub fn input_len<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, u32> {
        one(d, |s| u32_in(s, 1, MAX_INPUT_LEN))
    }
    pub fn positive_u32<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, u32> {
        one(d, |s| u32_in(s, 1, u32::MAX))
    }
    pub fn opt_positive_u32<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Option<u32>> {
        positive_u32(d).map(Some)
    }
    pub fn images<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, u32> {
        one(d, |s| u32_in(s, 0, MAX_IMAGES))
    }
    pub fn warmup<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, u64> {
        one(d, |s| match s.parse::<u64>() {
            Ok(n) if n <= MAX_WARMUP => Ok(n),
            Ok(n) => Err(format!("{n} is not in 0..={MAX_WARMUP}")),
            Err(e) => Err(format!("{s:?}: {e}")),
        })
    }
    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, f64> {
        one(d, number::<f64>)
    }
    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, u64> {
        one(d, number::<u64>)
    }
    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, u32> {
        one(d, number::<u32>)
    }
    pub fn from_str<'de, D: Deserializer<'de>, T: FromStr>(d: D) -> R<'de, D, T>
    where
        T::Err: fmt::Display,
    {
        one(d, parse_from::<T>)
    }
    pub fn size<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, (u32, u32)> {
        one(d, parse_size)
    }
    pub fn paths<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Vec<PathBuf>> {
        list(d, false, |s| Ok(PathBuf::from(s)))
    }
    pub fn headers<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Vec<(String, String)>> {
        list(d, false, parse_header)
    }
    pub fn slo<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Vec<(String, f64)>> {
        list(d, true, crate::metrics::parse_slo_target)
    }
    /// `sweep = { concurrency = [1, 8, 32] }`, or the flag's text `"concurrency=1,8,32"`.
    pub fn sweep<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Option<crate::capacity::Sweep>> {
        let v = toml::Value::deserialize(d)?;
        let text = match &v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Table(t) if t.len() == 1 => {
                let (by, levels) = t.iter().next().expect("one entry");
                let items = match levels {
                    toml::Value::Array(a) => a
                        .iter()
                        .map(|x| match x {
                            toml::Value::Integer(n) => Ok(n.to_string()),
                            toml::Value::Float(f) => Ok(f.to_string()),
                            other => Err(format!("{other} is not a number")),
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(serde::de::Error::custom)?,
                    _ => {
                        return Err(serde::de::Error::custom(format!(
                            "`{by}` needs a list of levels, e.g. {by} = [1, 8, 32]"
                        )))
                    }
                };
                format!("{by}={}", items.join(","))
            }
            _ => {
                return Err(serde::de::Error::custom(
                    "expected a table such as { concurrency = [1, 8, 32] }",
                ))
            }
        };
        crate::capacity::parse_sweep(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
    pub fn share<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, f64> {
        one(d, super::share)
    }
    pub fn suites<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Vec<SuiteSpec>> {
        list(d, true, parse_from::<SuiteSpec>)
    }
    pub fn lengths<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Vec<u32>> {
        list(d, true, |s| u32_in(s, 16, u32::MAX))
    }
    pub fn depths<'de, D: Deserializer<'de>>(d: D) -> R<'de, D, Vec<f64>> {
        list(d, true, number::<f64>)
    }

    /// The field names serde reads for `T` (what `deny_unknown_fields` accepts), asked from
    /// `T`'s own `Deserialize` through a deserializer that only records them.
    pub fn field_names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
        struct Names<'a>(&'a mut &'static [&'static str]);
        impl<'de> Deserializer<'de> for Names<'_> {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(Self::Error::custom("names only"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Self::Error> {
                *self.0 = fields;
                Err(Self::Error::custom("names only"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let mut names: &'static [&'static str] = &[];
        let _ = T::deserialize(Names(&mut names));
        names
    }
}

impl RunSettings {
    /// Validates the settings into a run configuration for the server at `url` (reads the API
    /// key from its variable). The URL itself is checked by the caller: an arm knows it only
    /// once its server is up.
    pub fn validate(&self, url: String) -> anyhow::Result<RunConfig> {
        let Some(output) = self.output.clone() else {
            bail!("--output is required");
        };
        let mut slo = crate::metrics::Slo::default();
        for (metric, ms) in &self.slo {
            slo.set(metric, *ms)
                .map_err(|e| anyhow::anyhow!("--slo: {e}"))?;
        }
        if self.sweep.is_some() && slo.is_empty() {
            bail!("--sweep needs latency targets (--slo ttft_ms=2000,...): the knee is the highest load whose goodput share stays at or above --knee-share");
        }
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
        let journal = match self.journal.clone() {
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
        let quality = self.quality_config(&journal)?;
        let images = (self.images > 0).then(|| ImageSpec {
            count: self.images,
            width: self.image_size.0,
            height: self.image_size.1,
            files: self.image_files.clone(),
        });
        Ok(RunConfig {
            url,
            model: self.model.clone(),
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
                dataset: self.dataset.clone(),
                input_len: self.input_len,
                seed: self.seed,
                unique_prefix: !self.allow_prefix_cache,
                images,
            },
            tokenizer: self.tokenizer.clone(),
            api_key_env: self.api_key_env.clone(),
            api_key,
            headers: self.headers.clone(),
            slo,
            sweep: self.sweep.clone(),
            knee_share: self.knee_share,
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

    /// Validates the `--quality*` options (user suites are read now, so a malformed line fails
    /// before anything is sent). The quality journal goes next to the request journal.
    fn quality_config(&self, journal: &std::path::Path) -> anyhow::Result<Option<QualityConfig>> {
        let (endpoint, seed) = (self.endpoint, self.seed);
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
        Ok(Some(QualityConfig {
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

/// A validated run configuration.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// URL of the server as the user gave it.
    pub url: String,
    /// Model to request; `None` = first entry of `/v1/models`.
    pub model: Option<String>,
    /// Endpoint.
    pub endpoint: Endpoint,
    /// Engine (auto-detected unless forced).
    pub engine: Engine,
    /// Stop after this many measured requests.
    pub num_requests: Option<u64>,
    /// Stop scheduling after this long.
    pub duration: Option<Duration>,
    /// Arrival schedule.
    pub arrival: Arrival,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// Warmup requests before measuring.
    pub warmup: u64,
    /// Prompt source.
    pub workload: WorkloadSpec,
    /// `tokenizer.json` for exact prompt lengths.
    pub tokenizer: Option<PathBuf>,
    /// Name of the environment variable holding the API key (the name is recorded, never the key).
    pub api_key_env: Option<String>,
    /// API key value (never recorded).
    pub api_key: Option<String>,
    /// Extra headers (only names are recorded).
    pub headers: Vec<(String, String)>,
    /// Latency targets for goodput (empty: none).
    pub slo: crate::metrics::Slo,
    /// A load sweep after the workload (`arm` runs it; docs/metrics.md#capacity).
    pub sweep: Option<crate::capacity::Sweep>,
    /// The goodput share a sweep level must keep.
    pub knee_share: f64,
    /// Per-request time limit.
    pub timeout: Duration,
    /// Result JSON path (`-` = stdout).
    pub output: PathBuf,
    /// Journal path (JSON lines, one record per request).
    pub journal: PathBuf,
    /// Keep output text in the journal.
    pub keep_text: bool,
    /// Send llama.cpp `cache_prompt: false`.
    pub no_prompt_cache: bool,
    /// Progress display.
    pub progress: ProgressMode,
    /// Arm name (experiments).
    pub arm: Option<String>,
    /// Quality suites to run after warmup, before the performance phase.
    pub quality: Option<QualityConfig>,
    /// The time origin of the records' instants; `None` = when the run starts. `kvbench
    /// selftest` passes one whose reading on the machine's monotonic clock it knows, to
    /// compare the client's instants with the server's.
    pub origin: Option<Instant>,
}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines every 10 s otherwise.
    Auto,
    /// Nothing.
    Quiet,
}

#[cfg(test)]
mod tests;
