//! The result JSON of one run (one arm): a versioned, stable schema (docs/result-schema.md).
//! Values that could not be measured are `null`, never 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::metrics::{Metrics, RequestCounts, Throughput, Tokens};

/// Version of the result schema; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// The server that was measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServerInfo {
    /// URL given by the user (without credentials).
    pub url: String,
    /// API base used (ends in `/v1`).
    pub api_base: String,
    /// Served model name used in requests.
    pub model: String,
    /// `vllm`, `llamacpp`, `openai` (unknown OpenAI-compatible).
    pub engine: String,
    /// Server version when the server tells it (`/version`), else `null`.
    pub version: Option<String>,
    /// Launch arguments when kvbench started the server, else `null`.
    pub launch_args: Option<Vec<String>>,
    /// Seconds from launch to healthy when kvbench started the server, else `null`.
    pub startup_s: Option<f64>,
    /// Facts read from the server (`/v1/models` entry, `max_model_len`, ...) and from its log.
    pub facts: ServerFacts,
}

/// What kvbench learned about the server: the facts it records itself, typed, and the facts a
/// warnings catalog defines (`[[fact]]`), by name. Absent facts are left out of the JSON, not
/// written as `null`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServerFacts {
    /// The server's `/v1/models` entry for the model (`null` when it listed none).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "serde_json::Value")]
    pub model_entry: Option<serde_json::Value>,
    /// Maximum tokens per request (vLLM `max_model_len` in `/v1/models`), tokens.
    #[serde(
        default,
        deserialize_with = "lenient_u64",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<u64>")]
    pub max_model_len: Option<u64>,
    /// The model's training context (llama.cpp `meta.n_ctx_train` in `/v1/models`), tokens.
    #[serde(
        default,
        deserialize_with = "lenient_u64",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<u64>")]
    pub n_ctx_train: Option<u64>,
    /// llama.cpp's context per slot (`/props` `default_generation_settings.n_ctx`), tokens.
    #[serde(
        default,
        deserialize_with = "lenient_u64",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<u64>")]
    pub n_ctx: Option<u64>,
    /// vLLM's cache configuration (`cache_config_info` in `/metrics`), as the server wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_config: Option<BTreeMap<String, String>>,
    /// What the arm asked for and what the server reports it ran with (arms only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_check: Option<ConfigCheck>,
    /// Path of the server's log (arms only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Why the server's log could not be read, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_error: Option<String>,
    /// Seconds from launch to the failure of a server that never became healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_to_failure: Option<f64>,
    /// The engine caches given to a server kvbench started as a process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_cache: Option<EngineCache>,
    /// Facts named by the warnings catalog (`kv_cache_tokens`, `vllm_version`,
    /// `non_default_args`, ...): numbers when they read as numbers, else text.
    #[serde(flatten)]
    pub catalog: BTreeMap<String, serde_json::Value>,
}

impl ServerFacts {
    /// Names of the typed facts: a catalog fact of the same name is not recorded.
    const TYPED: [&'static str; 10] = [
        "model_entry",
        "max_model_len",
        "n_ctx_train",
        "n_ctx",
        "cache_config",
        "config_check",
        "log",
        "log_error",
        "seconds_to_failure",
        "engine_cache",
    ];

    /// The facts a log scan found (its `log_error` typed), less any other whose name kvbench
    /// records itself.
    pub fn from_log_scan(mut facts: BTreeMap<String, serde_json::Value>) -> Self {
        let log_error = facts
            .remove("log_error")
            .and_then(|v| v.as_str().map(str::to_owned));
        facts.retain(|k, _| !Self::TYPED.contains(&k.as_str()));
        ServerFacts {
            log_error,
            catalog: facts,
            ..ServerFacts::default()
        }
    }

    /// Adds the facts of `other` (its typed facts where set, and its catalog facts), keeping
    /// this one's where `other` has none.
    pub fn extend(&mut self, other: ServerFacts) {
        let ServerFacts {
            model_entry,
            max_model_len,
            n_ctx_train,
            n_ctx,
            cache_config,
            config_check,
            log,
            log_error,
            seconds_to_failure,
            engine_cache,
            catalog,
        } = other;
        self.model_entry = model_entry.or(self.model_entry.take());
        self.max_model_len = max_model_len.or(self.max_model_len);
        self.n_ctx_train = n_ctx_train.or(self.n_ctx_train);
        self.n_ctx = n_ctx.or(self.n_ctx);
        self.cache_config = cache_config.or(self.cache_config.take());
        self.config_check = config_check.or(self.config_check.take());
        self.log = log.or(self.log.take());
        self.log_error = log_error.or(self.log_error.take());
        self.seconds_to_failure = seconds_to_failure.or(self.seconds_to_failure);
        self.engine_cache = engine_cache.or(self.engine_cache.take());
        self.catalog.extend(catalog);
    }

    /// A catalog fact as text.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.catalog.get(name).and_then(serde_json::Value::as_str)
    }

    /// The KV cache size in tokens: the catalog's `kv_cache_tokens` (vLLM's log, or its cache
    /// configuration), else llama.cpp's `llamacpp_kv_cache_cells`.
    pub fn kv_cache_tokens(&self) -> Option<&serde_json::Value> {
        self.catalog
            .get("kv_cache_tokens")
            .or_else(|| self.catalog.get("llamacpp_kv_cache_cells"))
    }
}

/// A field that is present, even as `null`, is `Some` (`model_entry: null` stays in the file).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// A count read from a server's own JSON: kept when it is an unsigned integer, else dropped.
fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(serde_json::Value::deserialize(d)?.as_u64())
}

/// The engine caches of one server launch, as recorded in `server.facts.engine_cache`
/// (planned and created by `server::engine_cache`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EngineCache {
    /// The shared cache directory; `null` when off (`engine_cache = false`, or neither
    /// `KVBENCH_CACHE` nor `HOME` is set) or when it could not be created.
    pub dir: Option<PathBuf>,
    /// Variables kvbench set for the server, with their values.
    pub set: BTreeMap<String, String>,
    /// Variables the user set (experiment or inherited environment), left as they were.
    pub user_set: Vec<String>,
    /// Why the cache directory could not be created, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What an arm asked the server for (read from its arguments) and what the server reports it
/// ran with (its cache configuration, else its log), for the settings kvbench knows to check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConfigCheck {
    /// From the launch arguments (defaults filled in).
    pub requested: KvSettings,
    /// As the server reports them; a setting it does not report is absent.
    pub effective: KvSettings,
    /// One sentence per setting that did not take.
    pub mismatches: Vec<String>,
}

/// The KV cache settings a [`ConfigCheck`] compares; absent when they do not apply (vLLM's on
/// llama.cpp, and the other way round).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KvSettings {
    /// vLLM `--kv-cache-dtype` (`auto`, `fp8`, `fp8_e4m3`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_dtype: Option<String>,
    /// vLLM `--calculate-kv-scales`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calculate_kv_scales: Option<bool>,
    /// llama.cpp `--cache-type-k` (`f16`, `q8_0`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type_k: Option<String>,
    /// llama.cpp `--cache-type-v`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type_v: Option<String>,
}

/// The workload as run (the result's `config`), secrets removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum RunConfigRecord {
    /// A run that reached the server: its settings.
    Measured(Box<MeasuredConfig>),
    /// An arm whose server could not be measured: the workload's arguments as given.
    NotRun {
        /// The arm's workload as command-line arguments.
        workload_args: Vec<String>,
    },
}

impl RunConfigRecord {
    /// The settings of a run that reached the server.
    pub fn measured(&self) -> Option<&MeasuredConfig> {
        match self {
            RunConfigRecord::Measured(c) => Some(c),
            RunConfigRecord::NotRun { .. } => None,
        }
    }
}

/// The settings of a run that reached the server, as it ran them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MeasuredConfig {
    /// Endpoint called.
    pub endpoint: crate::client::Endpoint,
    /// `--engine` as given (`auto` unless set).
    pub engine_requested: crate::client::Engine,
    /// `--model` as given, else `null` (the server's only model).
    pub model_requested: Option<String>,
    /// Served model name used in requests.
    pub model: String,
    /// Measured requests (`--num-requests`), else `null` (a `--duration` run).
    pub num_requests: Option<u64>,
    /// `--duration` in seconds, else `null`.
    pub duration_s: Option<f64>,
    /// How requests were released.
    pub arrival: crate::workload::arrivals::Arrival,
    /// Prompt length in tokens of a synthetic workload, else `null`.
    pub input_len: Option<u32>,
    /// Where prompts came from.
    pub dataset: crate::workload::DatasetSpec,
    /// Tokenizer file, when given.
    pub tokenizer: Option<String>,
    /// A unique random prefix in front of every prompt.
    #[serde(default)]
    pub unique_prefix: bool,
    /// `cache_prompt: false` was sent to llama.cpp.
    #[serde(default)]
    pub llamacpp_cache_prompt_false: bool,
    /// Images attached to each request, else `null`.
    pub images: Option<crate::workload::ImageSpec>,
    /// Sampling parameters.
    pub sampling: crate::client::request::Sampling,
    /// Seed of prompts, prefixes and images.
    #[serde(default)]
    pub seed: u64,
    /// Warmup requests (not measured).
    #[serde(default)]
    pub warmup: u64,
    /// Per-request timeout in seconds.
    #[serde(default)]
    pub timeout_s: f64,
    /// The environment variable holding the API key, when one was used (never the key).
    pub api_key_env: Option<String>,
    /// Names of the extra headers sent (never their values).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Latency targets (`--slo`), else `null`.
    pub slo: Option<crate::metrics::Slo>,
    /// Generated text kept in the journal.
    #[serde(default)]
    pub keep_text: bool,
    /// Connections opened before measurement.
    #[serde(default)]
    pub prewarmed_connections: usize,
}

/// Seconds spent in each phase of one run; `null` where the phase did not happen here (a run
/// against a server kvbench did not start has no launch or teardown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Phases {
    /// Launch to healthy.
    pub launch_s: Option<f64>,
    /// Warmup requests.
    pub warmup_s: Option<f64>,
    /// Quality suites.
    pub quality_s: Option<f64>,
    /// The measured workload (pre-warm of connections included).
    pub workload_s: Option<f64>,
    /// Stopping the server.
    pub teardown_s: Option<f64>,
}

/// One run's result.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunResult {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// kvbench version that wrote the file.
    pub kvbench_version: String,
    /// Arm name, when run from an experiment; else `null`.
    pub arm: Option<String>,
    /// When measurement started (RFC 3339, UTC).
    pub started_at: String,
    /// When the run ended (RFC 3339, UTC).
    pub finished_at: String,
    /// Whether the run was interrupted (Ctrl-C) before its end.
    pub interrupted: bool,
    /// `ok`, or why the run could not measure (`interrupted`, `all_failed`, a failure kind).
    pub outcome: Outcome,
    /// The server.
    pub server: ServerInfo,
    /// The workload as run (secrets removed).
    pub config: RunConfigRecord,
    /// Request counts.
    pub requests: RequestCounts,
    /// Failed requests by error kind.
    pub errors: BTreeMap<String, u64>,
    /// Non-fatal stream oddities by kind (`missing_done`, `malformed_chunk`, `no_tokens`).
    pub anomalies: BTreeMap<String, u64>,
    /// Finish reasons of completed requests.
    pub finish_reasons: BTreeMap<String, u64>,
    /// Token totals.
    pub tokens: Tokens,
    /// Latency metrics (milliseconds).
    pub metrics: Metrics,
    /// Throughput.
    pub throughput: Throughput,
    /// Measured window in seconds: first send to last end.
    pub duration_s: Option<f64>,
    /// Server warnings found in its log (filled when kvbench reads the log).
    pub warnings: Vec<crate::logscan::WarningHit>,
    /// Scraped `/metrics` deltas and peaks (filled when scraped), else `null`.
    pub server_metrics: Option<ServerMetrics>,
    /// Quality suites (filled when run), else `null`.
    pub quality: Option<crate::quality::QualityResult>,
    /// Path of the per-request journal (JSON lines).
    pub journal: Option<String>,
    /// Why the arm's server could not be measured (`outcome` is then its kind), else `null`.
    pub failure: Option<Failure>,
    /// Goodput under the run's latency targets (`--slo`), else `null`.
    #[serde(default)]
    pub goodput: Option<crate::metrics::Goodput>,
    /// Seconds spent in each phase of the run (what a verdict cost; `effort` in comparisons).
    #[serde(default)]
    pub phases: Phases,
    /// Where the run ran when an executor other than `local` ran it (docs/scale.md), else
    /// `null`.
    #[serde(default)]
    pub placement: Option<Placement>,
    /// The load sweep after the workload (`--sweep`), with its knee, else `null`
    /// (docs/metrics.md#capacity).
    #[serde(default)]
    pub capacity: Option<crate::capacity::Capacity>,
}

/// Where a run ran: the executor, its job and the devices the server saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Placement {
    /// The executor that ran it: `local-gpus` or `ray`.
    pub executor: String,
    /// The executor's id of the job (the Ray submission id; a local job's own id).
    pub job_id: Option<String>,
    /// `CUDA_VISIBLE_DEVICES` as the run saw it (the device set), else `null`.
    pub devices: Option<String>,
    /// The host name of the machine that ran it, else `null`.
    pub host: Option<String>,
    /// How the result reached the machine that compares: `shared_path` (the job wrote it where
    /// `kvbench ab` reads) or `job_log` (printed by the job, copied from its log); `null` when
    /// written by the job itself.
    pub gathered_from: Option<String>,
}

/// Why an arm did not get a healthy server, or why a run stopped short (the result's
/// `failure`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Failure {
    /// What went wrong.
    pub kind: FailureKind,
    /// The log line (or error) that tells why.
    pub message: String,
    /// The last lines of the server's log.
    pub log_tail: String,
}

/// Why an arm's server could not be measured, or a run stopped short. A warnings catalog may
/// name kinds of its own (`[[failure]] kind = ...`): those are `Other`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum FailureKind {
    /// The server refused a command-line argument (e.g. a removed `--calculate-kv-scales`).
    UnsupportedArgument,
    /// The server accepts the option but not with this model or checkpoint.
    UnsupportedSetting,
    /// The setting is not available on this hardware.
    UnsupportedHardware,
    /// Out of memory.
    OutOfMemory,
    /// Not healthy within the start-up timeout.
    StartupTimeout,
    /// The server exited.
    Crashed,
    /// The server could not be started at all.
    LaunchError,
    /// Stopped by a signal.
    Interrupted,
    /// The per-request journal could not be written.
    JournalFailed,
    /// The executor's job ended without a result (the job failed to start, was stopped, or
    /// its node was lost; its log says why).
    ExecutorFailed,
    /// A kind from a user's catalog.
    Other(String),
}

impl FailureKind {
    /// The name used in JSON and the catalog.
    pub fn as_str(&self) -> &str {
        match self {
            FailureKind::UnsupportedArgument => "unsupported_argument",
            FailureKind::UnsupportedSetting => "unsupported_setting",
            FailureKind::UnsupportedHardware => "unsupported_hardware",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::StartupTimeout => "startup_timeout",
            FailureKind::Crashed => "crashed",
            FailureKind::LaunchError => "launch_error",
            FailureKind::Interrupted => "interrupted",
            FailureKind::JournalFailed => "journal_failed",
            FailureKind::ExecutorFailed => "executor_failed",
            FailureKind::Other(s) => s,
        }
    }
}

impl From<String> for FailureKind {
    fn from(s: String) -> Self {
        match s.as_str() {
            "unsupported_argument" => FailureKind::UnsupportedArgument,
            "unsupported_setting" => FailureKind::UnsupportedSetting,
            "unsupported_hardware" => FailureKind::UnsupportedHardware,
            "out_of_memory" => FailureKind::OutOfMemory,
            "startup_timeout" => FailureKind::StartupTimeout,
            "crashed" => FailureKind::Crashed,
            "launch_error" => FailureKind::LaunchError,
            "interrupted" => FailureKind::Interrupted,
            "journal_failed" => FailureKind::JournalFailed,
            "executor_failed" => FailureKind::ExecutorFailed,
            _ => FailureKind::Other(s),
        }
    }
}

impl From<&str> for FailureKind {
    fn from(s: &str) -> Self {
        FailureKind::from(s.to_owned())
    }
}

impl From<FailureKind> for String {
    fn from(k: FailureKind) -> String {
        k.as_str().to_owned()
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for FailureKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl schemars::JsonSchema for FailureKind {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FailureKind".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "unsupported_argument, unsupported_setting, unsupported_hardware, out_of_memory, startup_timeout, crashed, launch_error, interrupted, journal_failed, executor_failed, or a kind from a user's catalog",
        })
    }
}

/// What became of a run: `ok`, `interrupted`, `all_failed` (every request failed), or the
/// failure kind of a server that could not be measured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum Outcome {
    /// Measured.
    #[default]
    Ok,
    /// Stopped by a signal before the end.
    Interrupted,
    /// Every measured request failed.
    AllFailed,
    /// The server could not be measured (or the journal not written).
    Failed(FailureKind),
}

impl Outcome {
    /// The name used in JSON.
    pub fn as_str(&self) -> &str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Interrupted => "interrupted",
            Outcome::AllFailed => "all_failed",
            Outcome::Failed(k) => k.as_str(),
        }
    }
}

impl From<String> for Outcome {
    fn from(s: String) -> Self {
        match s.as_str() {
            "ok" => Outcome::Ok,
            "interrupted" => Outcome::Interrupted,
            "all_failed" => Outcome::AllFailed,
            _ => Outcome::Failed(FailureKind::from(s)),
        }
    }
}

impl From<&str> for Outcome {
    fn from(s: &str) -> Self {
        Outcome::from(s.to_owned())
    }
}

impl From<Outcome> for String {
    fn from(o: Outcome) -> String {
        o.as_str().to_owned()
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Outcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl schemars::JsonSchema for Outcome {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Outcome".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "ok, interrupted, all_failed, or a failure kind",
        })
    }
}

/// What `/metrics` said over one run (docs/metrics.md): counter deltas from before to after
/// the workload, gauge peaks, the server's own mean latencies, and warnings drawn from them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct ServerMetrics {
    /// Scrapes taken (before, during and after).
    pub samples: u64,
    /// The server's cache configuration (vLLM `cache_config_info`), else `null`.
    pub cache_config: Option<BTreeMap<String, String>>,
    /// Counter deltas by canonical name; `requests_finished` by finish reason.
    pub deltas: BTreeMap<String, MetricsDelta>,
    /// Gauge peaks by canonical name (`kv_cache_usage_perc`, `num_requests_waiting`, ...).
    pub peaks: BTreeMap<String, f64>,
    /// Prefix-cache hits / queries during the workload, else `null`.
    pub prefix_cache_hit_rate: Option<f64>,
    /// The server's own mean latencies (ms) from its histograms.
    pub server_latency: BTreeMap<String, f64>,
    /// GPU memory and utilisation peaks, when the server exports them.
    pub gpu: Option<GpuPeaks>,
    /// What the counters say about the run (a warm prefix cache, preemptions).
    pub warnings: Vec<String>,
}

/// A counter's change: one number, or one per label value (`requests_finished` by reason).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum MetricsDelta {
    /// The change.
    Value(f64),
    /// The change per label value.
    ByLabel(BTreeMap<String, f64>),
}

impl MetricsDelta {
    /// The change, for a one-number counter.
    pub fn value(&self) -> Option<f64> {
        match self {
            MetricsDelta::Value(v) => Some(*v),
            MetricsDelta::ByLabel(_) => None,
        }
    }
}

/// GPU peaks from `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct GpuPeaks {
    /// Peak memory used, MiB.
    pub memory_used_mib_peak: f64,
    /// Peak utilisation, percent, else `null`.
    pub utilization_pct_peak: Option<f64>,
}

/// Writes `value` as pretty JSON to `path`; `-` writes to stdout.
///
/// A regular file is replaced atomically (a temporary file beside it, then a rename), so a
/// reader never sees half a file. A symbolic link is followed: the file it points to is
/// replaced and the link stays a link. A special file (a pipe, a terminal, `/dev/null`,
/// `/dev/stdout`) is written into, never replaced. A folder is refused.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        return match out.write_all(&bytes).and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => r.context("writing to stdout"),
        };
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => anyhow::bail!("cannot write {}: is a directory", path.display()),
        Ok(m) if !m.is_file() => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            return match f.write_all(&bytes) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => r.with_context(|| format!("cannot write {}", path.display())),
            };
        }
        _ => {}
    }
    let target = resolved(path);
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "result.json".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &target).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("cannot write {}: {e}", path.display())
    })?;
    Ok(())
}

/// The path a write to `path` lands on: its symbolic links followed (relative ones from the
/// link's folder), up to the first path that is not a link, which may not exist yet.
pub fn resolved(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        let is_link = std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            break;
        }
        match std::fs::read_link(&p) {
            Ok(next) if next.is_absolute() => p = next,
            Ok(next) => {
                p = p.parent().map(|d| d.join(&next)).unwrap_or(next);
            }
            Err(_) => break,
        }
    }
    p
}
