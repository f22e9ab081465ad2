//! Command line: clap definitions (raw values). The settings of `kvbench run` are
//! [`crate::config::RunSettings`], shared with experiment files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

use crate::client::Endpoint;
pub use crate::config::bounds;
use crate::config::{concurrency, parse_duration, positive_at_most, positive_f64};
use crate::config::{RunConfig, RunSettings, DEFAULT_MAX_RUNS};
use crate::testserver::Flavor;
use bounds::*;

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

fn requests_per_stream(s: &str) -> Result<u64, String> {
    positive_at_most(s, MAX_REQUESTS_PER_STREAM)
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
    "slo",
    "sweep",
    "knee_share",
    "timeout",
    "journal",
];

/// `kvbench run` options: the server's URL or an experiment's arm, and the run's settings.
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
    /// With --config: measure speed only, without the arm's quality suites (what `ab`'s
    /// adaptive rounds after the first do).
    #[arg(long, requires = "config")]
    pub speed_only: bool,
    /// With --config: the executor that started this run (recorded as the result's
    /// `placement`; set by `kvbench ab --on ...`).
    #[arg(long, requires = "config", hide = true, value_parser = ["local-gpus", "ray"])]
    pub executor: Option<String>,
    /// With --config: the executor's id of this job (recorded in `placement`).
    #[arg(long, requires = "executor", hide = true)]
    pub job_id: Option<String>,
    /// With --config: print the result JSON as one line on stdout, prefixed by
    /// `kvbench-result-json: ` (how a Ray job's result reaches a machine that does not share
    /// the results directory).
    #[arg(long, requires = "config", hide = true)]
    pub print_result: bool,

    /// What to measure and how (also an experiment's `[workload]` and `[quality]`).
    #[command(flatten)]
    pub settings: RunSettings,
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
    /// Exit with code 4 (after writing every file) when the verdict is this one or more severe
    /// (apply < monitor < inconclusive < keep), so a CI job can gate a change on it.
    #[arg(long, value_enum, value_name = "VERDICT")]
    pub fail_on: Option<FailOn>,
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
    /// Exit with code 4 (after writing every file) when the verdict is this one or more severe
    /// (apply < monitor < inconclusive < keep), so a CI job can gate a change on it.
    #[arg(long, value_enum, value_name = "VERDICT")]
    pub fail_on: Option<FailOn>,
    /// Where the arms run (docs/scale.md): `local` (here, one after another; the default),
    /// `local-gpus` (at the same time on disjoint GPU sets of this machine, see --gpus) or
    /// `ray://HOST:8265` (as jobs on a Ray cluster, through its dashboard's Jobs API)
    /// [default: the experiment's [executor] table, else local].
    #[arg(long, value_name = "EXECUTOR", value_parser = parse_on)]
    pub on: Option<String>,
    /// Devices for `--on local-gpus` (implied by --gpus alone): each arm gets a set of
    /// `[server] gpus` of them through CUDA_VISIBLE_DEVICES, and the sets swap between rounds.
    #[arg(long, value_name = "IDS")]
    pub gpus: Option<String>,
    /// No progress display.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

fn parse_on(s: &str) -> Result<String, String> {
    crate::executor::parse_on(s).map(|_| s.to_owned())
}

/// `--fail-on`: the mildest verdict that fails the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Fail on monitor, inconclusive or keep (pass only on apply).
    Monitor,
    /// Fail on inconclusive or keep.
    Inconclusive,
    /// Fail on keep only.
    Keep,
}

impl FailOn {
    /// Whether `verdict` fails the command (a comparison without a verdict always does).
    pub fn fails(self, verdict: Option<crate::compare::Verdict>) -> bool {
        use crate::compare::Verdict;
        let line = match self {
            FailOn::Monitor => Verdict::Monitor,
            FailOn::Inconclusive => Verdict::Inconclusive,
            FailOn::Keep => Verdict::Keep,
        };
        verdict.is_none_or(|v| v >= line)
    }
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
    #[arg(long, default_value_t = DEFAULT_MAX_RUNS, value_parser = clap::value_parser!(u32).range(2..=100))]
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
        let Some(url) = self.url else {
            bail!("--url is required");
        };
        crate::client::api_base(&url)?;
        self.settings.validate(url)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own checks of the definitions (ids named in `requires` and `conflicts_with`
    /// exist, no two flags share a name, ...), which otherwise run only when a command is used.
    /// `--fail-on V` fails on V and every more severe verdict, and on a missing verdict.
    #[test]
    fn fail_on_is_a_severity_line() {
        use super::FailOn;
        use crate::compare::Verdict::*;
        let table = [
            (FailOn::Monitor, [false, true, true, true]),
            (FailOn::Inconclusive, [false, false, true, true]),
            (FailOn::Keep, [false, false, false, true]),
        ];
        for (f, expect) in table {
            let got = [Apply, Monitor, Inconclusive, Keep].map(|v| f.fails(Some(v)));
            assert_eq!(got, expect, "{f:?}");
            assert!(f.fails(None));
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// With `--config` the workload comes from the file: every workload flag conflicts with
    /// it (the quality flags, `--save-text`, `--output` and `--quiet` are about the run's own
    /// files and display).
    #[test]
    fn config_conflicts_with_every_workload_flag() {
        use clap::Args;
        let run = crate::config::RunSettings::augment_args(clap::Command::new("run"));
        let own = ["output", "quiet", "save_text"];
        for arg in run.get_arguments() {
            let id = arg.get_id().as_str();
            if !id.starts_with("quality") && !own.contains(&id) {
                assert!(super::CONFIG_CONFLICTS.contains(&id), "{id}");
            }
        }
    }
}
