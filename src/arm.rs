//! One arm of an experiment, end to end: launch (or attach), wait healthy, read what the server
//! says about itself, warm up, measure while scraping `/metrics`, tear down, read the log, and
//! write `benchmark_<experiment>_<arm>_YYYYMMDD_HHMMSS.json` (the user's original naming) with
//! its log and journal beside it. A server that cannot start is that arm's outcome: its result
//! JSON is still written, with `outcome` and `failure`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::client::Engine;
use crate::config::{RunConfig, RunSettings};
use crate::experiment::{apply_changes, flag_value, ArmPlan, LaunchSpec};
use crate::live::Phase;
use crate::logscan::Catalog;
use crate::metrics::{Metrics, RequestCounts, Throughput, Tokens};
use crate::result::{write_json, RunResult, ServerInfo, SCHEMA_VERSION};
use crate::result::{
    ConfigCheck, Failure, FailureKind, KvSettings, Outcome, RunConfigRecord, ServerFacts,
};
use crate::runner;
use crate::server::engine_cache::EngineCache;
pub use crate::server::secret_name;
use crate::server::{self, compose::ComposeRun, scrape, ArmFiles, ServerLog};

/// How to run an arm.
#[derive(Clone)]
pub struct ArmOptions {
    /// Directory for the arm's files.
    pub out_dir: PathBuf,
    /// Result path instead of the generated name.
    pub output: Option<PathBuf>,
    /// Warnings catalog.
    pub catalog: Arc<Catalog>,
    /// No progress display.
    pub quiet: bool,
}

/// What an arm produced.
#[derive(Debug)]
pub struct ArmRun {
    /// The result (also written to `path`).
    pub result: RunResult,
    /// Where the result was written.
    pub path: PathBuf,
}

/// The arm's file paths: `benchmark_<experiment>_<arm>_<YYYYMMDD_HHMMSS>` + suffixes.
pub fn arm_paths(plan: &ArmPlan, opts: &ArmOptions) -> (PathBuf, PathBuf, ArmFiles) {
    let ts = chrono::Local::now().format("%Y%m%d_%H%M%S");
    let stem = format!("benchmark_{}_{}_{ts}", plan.experiment, plan.name);
    // Runs shorter than a second (adaptive rounds on a fast server) must not overwrite each
    // other: a taken name gets `_2`, `_3`, ...
    let free = |stem: &str| {
        let p = opts.out_dir.join(format!("{stem}.json"));
        (!p.exists() && !opts.out_dir.join(format!("{stem}.log")).exists()).then_some(p)
    };
    let output = opts.output.clone().unwrap_or_else(|| {
        free(&stem)
            .or_else(|| (2..).find_map(|i| free(&format!("{stem}_{i}"))))
            .unwrap_or_else(|| opts.out_dir.join(format!("{stem}.json")))
    });
    let base = output.with_extension("");
    let with = |suffix: &str| PathBuf::from(format!("{}{suffix}", base.display()));
    let journal = with(".requests.jsonl");
    let files = ArmFiles {
        log: with(".log"),
        compose_override: with(".compose.override.yml"),
    };
    (output, journal, files)
}

/// The arm's run configuration: its settings with the arm's files, validated. The URL is the
/// one the arm will launch; [`run_arm`] sets the served URL once the server is up.
fn run_config(
    plan: &ArmPlan,
    output: &Path,
    journal: &Path,
    quiet: bool,
) -> anyhow::Result<RunConfig> {
    let settings = RunSettings {
        output: Some(output.to_owned()),
        journal: Some(journal.to_owned()),
        quiet,
        ..plan.settings.clone()
    };
    settings.validate(plan.url.clone())
}

/// What the arm would launch, as printed by `run --dry-run` and `ab --dry-run`: without the
/// values of secrets (API keys and tokens in flags and environment, header values, credentials
/// and query values in the URL) and with control characters escaped.
pub fn dry_run_redacted(plan: &ArmPlan, opts: &ArmOptions) -> anyhow::Result<String> {
    let mut text = dry_run(plan, opts)?;
    let launch_args = match &plan.launch {
        LaunchSpec::Process { args, .. } => args.clone(),
        _ => Vec::new(),
    };
    for secret in secret_values(plan, &launch_args) {
        text = text.replace(&secret, "***");
    }
    if !plan.url.is_empty() {
        text = text.replace(&plan.url, &runner::redact_url(&plan.url));
    }
    Ok(crate::output::printable_text(&text).into_owned())
}

/// Prints what the arm would launch, without launching it.
pub fn dry_run(plan: &ArmPlan, opts: &ArmOptions) -> anyhow::Result<String> {
    let (output, journal, files) = arm_paths(plan, opts);
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("cannot create {}", opts.out_dir.display()))?;
    run_config(plan, &output, &journal, true)?;
    let mut out = format!("arm {:?} of experiment {:?}\n", plan.name, plan.experiment);
    match &plan.launch {
        LaunchSpec::Process {
            program,
            args,
            env,
            cwd,
        } => {
            let args = apply_changes(args, &plan.changes);
            out += &format!(
                "  launcher: process (own process group)\n  command:  {program} {}\n",
                args.join(" ")
            );
            for (k, v) in env {
                out += &format!("  env:      {k}={v}\n");
            }
            for (k, v) in &EngineCache::plan(plan.engine_cache, env).set {
                out += &format!("  env:      {k}={v} (shared engine cache)\n");
            }
            if let Some(d) = cwd {
                out += &format!("  cwd:      {}\n", d.display());
            }
        }
        LaunchSpec::Compose { .. } => {
            let run = ComposeRun::prepare(plan, &files, None)?;
            out += &format!(
                "  launcher: compose\n  override: {}\n",
                run.override_path.display()
            );
            for line in run.override_text.lines() {
                out += &format!("    | {line}\n");
            }
            out += "  commands:\n";
            for c in run.planned_commands() {
                out += &format!("    $ {c}\n");
            }
        }
        LaunchSpec::Attach {
            log_file,
            log_command,
        } => {
            out += "  launcher: attach (nothing is started)\n";
            if let Some(f) = log_file {
                out += &format!("  log file: {}\n", f.display());
            }
            if let Some(c) = log_command {
                out += &format!("  log command: {}\n", c.join(" "));
            }
        }
    }
    out += &format!(
        "  url:      {}\n  health:   /health then /v1/models, within {} s\n",
        plan.url,
        plan.health_timeout.as_secs()
    );
    out += &format!("  workload: {}\n", plan.workload_args.join(" "));
    out += &format!(
        "  result:   {}\n  log:      {}\n  journal:  {}\n",
        output.display(),
        files.log.display(),
        journal.display()
    );
    Ok(out)
}

fn empty_result(plan: &ArmPlan, url: &str, outcome: Outcome) -> RunResult {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    RunResult {
        schema_version: SCHEMA_VERSION,
        kvbench_version: env!("CARGO_PKG_VERSION").to_owned(),
        arm: Some(plan.name.clone()),
        started_at: now.clone(),
        finished_at: now,
        interrupted: outcome == Outcome::Interrupted,
        outcome,
        server: ServerInfo {
            url: runner::redact_url(url),
            ..ServerInfo::default()
        },
        config: RunConfigRecord::NotRun {
            workload_args: plan.workload_args.clone(),
        },
        requests: RequestCounts::default(),
        errors: BTreeMap::new(),
        anomalies: BTreeMap::new(),
        finish_reasons: BTreeMap::new(),
        tokens: Tokens::default(),
        metrics: Metrics::default(),
        throughput: Throughput::default(),
        duration_s: None,
        goodput: None,
        phases: crate::result::Phases::default(),
        placement: None,
        capacity: None,
        warnings: Vec::new(),
        server_metrics: None,
        quality: None,
        journal: None,
        failure: None,
    }
}

/// What the arm asked for (from its arguments) and what the server reports it ran with.
pub fn config_check(
    args: &[String],
    log_facts: &BTreeMap<String, Value>,
    cache_config: Option<&BTreeMap<String, String>>,
) -> ConfigCheck {
    let mut check = ConfigCheck::default();
    let is_vllm = args.iter().any(|a| a.contains("vllm"))
        || cache_config.is_some()
        || log_facts.contains_key("vllm_version");
    if is_vllm {
        let dtype = flag_value(args, "--kv-cache-dtype").unwrap_or_else(|| "auto".into());
        let calc = flag_value(args, "--calculate-kv-scales").is_some();
        check.requested.kv_cache_dtype = Some(dtype.clone());
        check.requested.calculate_kv_scales = Some(calc);
        let eff_dtype = cache_config
            .and_then(|c| c.get("cache_dtype").cloned())
            .or_else(|| {
                log_facts
                    .get("kv_cache_dtype_logged")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        let eff_calc = cache_config
            .and_then(|c| c.get("calculate_kv_scales"))
            .map(|v| v.eq_ignore_ascii_case("true"))
            .or_else(|| {
                log_facts
                    .get("non_default_args")
                    .and_then(Value::as_str)
                    .map(|s| s.contains("'calculate_kv_scales': True"))
            });
        if let Some(d) = &eff_dtype {
            check.effective.kv_cache_dtype = Some(d.clone());
            let fp8 = |s: &str| s.starts_with("fp8");
            if fp8(&dtype) != fp8(d) {
                check.mismatches.push(format!(
                    "asked for KV cache dtype {dtype:?}, the server reports {d:?}"
                ));
            }
        }
        if let Some(c) = eff_calc {
            check.effective.calculate_kv_scales = Some(c);
            if c != calc {
                check.mismatches.push(format!(
                    "asked for calculate_kv_scales={calc}, the server reports {c}"
                ));
            }
        }
    }
    type Slot = fn(&mut KvSettings) -> &mut Option<String>;
    let llamacpp: [(&str, &str, &str, &str, Slot); 2] = [
        (
            "--cache-type-k",
            "-ctk",
            "cache_type_k",
            "llamacpp_kv_type_k",
            |s| &mut s.cache_type_k,
        ),
        (
            "--cache-type-v",
            "-ctv",
            "cache_type_v",
            "llamacpp_kv_type_v",
            |s| &mut s.cache_type_v,
        ),
    ];
    for (flag, short, key, fact, slot) in llamacpp {
        let asked = flag_value(args, flag).or_else(|| flag_value(args, short));
        let seen = log_facts
            .get(fact)
            .and_then(Value::as_str)
            .map(str::to_owned);
        if asked.is_some() || seen.is_some() {
            let asked = asked.unwrap_or_else(|| "f16".into());
            *slot(&mut check.requested) = Some(asked.clone());
            if let Some(s) = seen {
                if s != asked {
                    check.mismatches.push(format!(
                        "asked for {key} {asked:?}, the server reports {s:?}"
                    ));
                }
                *slot(&mut check.effective) = Some(s);
            }
        }
    }
    check
}

/// Runs one arm and writes its result; `Err` only for problems before anything was launched
/// (invalid settings, unwritable output). A server that fails is reported in the result.
/// Progress goes to stderr as plain lines (nothing with `opts.quiet`).
pub async fn run_arm(
    plan: &ArmPlan,
    opts: &ArmOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<ArmRun> {
    let live = crate::live::Live::plain(opts.quiet).arm(&plan.name);
    run_arm_live(plan, opts, cancel, &live).await
}

/// [`run_arm`], reporting its phases to `live` (its `Done` is the caller's to report).
pub async fn run_arm_live(
    plan: &ArmPlan,
    opts: &ArmOptions,
    cancel: &CancellationToken,
    live: &crate::live::ArmLive,
) -> anyhow::Result<ArmRun> {
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("cannot create {}", opts.out_dir.display()))?;
    let (output, journal, files) = arm_paths(plan, opts);
    let mut cfg = run_config(plan, &output, &journal, opts.quiet)?;
    cfg.arm = Some(plan.name.clone());
    if plan.engine != Engine::Auto {
        cfg.engine = plan.engine;
    }
    live.phase(Phase::Launching {
        log: files.log.clone(),
    });
    let mut launched = match server::launch(plan, &files, &opts.catalog, cancel).await {
        Ok(l) => l,
        Err(e) => return launch_failed(plan, opts, &files, output, e),
    };
    live.phase(Phase::Healthy {
        startup_s: launched.startup_s,
        url: launched.url.clone(),
    });
    cfg.url = launched.url.clone();
    let scraper = scrape::Scraper::start(&launched.url, plan.metrics_interval).await;
    let cache_config = scraper.before().and_then(scrape::cache_config);
    let props = llamacpp_props(&launched.url).await;
    let sweep_cfg = cfg.clone();
    let measured = runner::measure_live(cfg, cancel.clone(), Some(live.clone())).await;
    let server_metrics = scraper.finish().await;
    let died = launched.server_exited();
    // The load sweep, against the same server, once the workload ran to its end. A server that
    // dies during the sweep ends it (its levels say so); the workload's outcome stands.
    let capacity = match (&sweep_cfg.sweep, &measured) {
        (Some(sweep), Ok(r)) if !r.interrupted && !cancel.is_cancelled() && died.is_none() => {
            let ctx = SweepContext {
                plan,
                opts,
                files: &files,
                cache_config: cache_config.as_ref(),
                cancel,
                live,
            };
            sweep_after(&ctx, &sweep_cfg, sweep).await
        }
        _ => None,
    };
    let startup_s = launched.startup_s;
    let launch_args = launched.launch_args.clone();
    let url = launched.url.clone();
    let engine_cache = launched.engine_cache.clone();
    let t_teardown = std::time::Instant::now();
    launched.shutdown().await;
    let teardown_s = t_teardown.elapsed().as_secs_f64();

    let log = ServerLog::read(&files.log);
    let report = log.scan(&opts.catalog);
    let mut r = measured_outcome(measured, died, &log, plan, opts, &url, cancel);
    r.arm = Some(plan.name.clone());
    r.server.launch_args = Some(launch_args.clone());
    r.server.startup_s = Some(startup_s);
    r.phases.launch_s = Some(startup_s);
    r.phases.teardown_s = Some(teardown_s);
    let mut facts = server_facts(&report, cache_config.as_ref(), props, &mut r);
    facts.config_check = Some(config_check(
        &launch_args,
        &report.facts,
        cache_config.as_ref(),
    ));
    facts.log = Some(files.log.display().to_string());
    facts.engine_cache = engine_cache;
    r.server.facts.extend(facts);
    r.warnings = report.warnings.clone();
    r.server_metrics = server_metrics;
    r.capacity = capacity;
    scrub(&mut r, &secret_values(plan, &launch_args));
    write_json(&output, &r)?;
    Ok(ArmRun {
        result: r,
        path: output,
    })
}

/// The result of an arm whose server never became healthy: the launch failure, the warnings
/// of what it logged, and what it was launched with; written at once.
fn launch_failed(
    plan: &ArmPlan,
    opts: &ArmOptions,
    files: &ArmFiles,
    output: PathBuf,
    e: server::LaunchError,
) -> anyhow::Result<ArmRun> {
    let mut r = empty_result(plan, &plan.url, Outcome::Failed(e.failure.kind.clone()));
    let report = ServerLog::read(&files.log).scan(&opts.catalog);
    r.warnings = report.warnings.clone();
    r.server.launch_args = Some(e.launch_args.clone());
    r.server.facts = ServerFacts {
        log: Some(files.log.display().to_string()),
        seconds_to_failure: Some(e.elapsed_s),
        engine_cache: e.engine_cache.clone(),
        config_check: Some(config_check(&e.launch_args, &report.facts, None)),
        ..ServerFacts::from_log_scan(report.facts.clone())
    };
    r.failure = Some(e.failure);
    scrub(&mut r, &secret_values(plan, &e.launch_args));
    write_json(&output, &r)?;
    Ok(ArmRun {
        result: r,
        path: output,
    })
}

/// What a load sweep after the workload needs to know of its arm.
struct SweepContext<'a> {
    plan: &'a ArmPlan,
    opts: &'a ArmOptions,
    files: &'a ArmFiles,
    /// vLLM's `cache_config_info`, when `/metrics` had it.
    cache_config: Option<&'a BTreeMap<String, String>>,
    cancel: &'a CancellationToken,
    live: &'a crate::live::ArmLive,
}

/// The load sweep against the arm's running server. A KV-filling sweep is sized from the
/// cache the server reports (vLLM's `cache_config_info`, else its start-up log: vLLM's token
/// count, llama.cpp's cells); without one there is no sweep, and a note says why.
async fn sweep_after(
    ctx: &SweepContext<'_>,
    sweep_cfg: &RunConfig,
    sweep: &crate::capacity::Sweep,
) -> Option<crate::capacity::Capacity> {
    let kv_tokens = sweep.kv_fill.then(|| {
        ctx.cache_config
            .and_then(|c| c.get("kv_cache_size_tokens"))
            .and_then(|v| v.parse::<u64>().ok())
            .or_else(|| {
                let f = ServerLog::read(&ctx.files.log)
                    .scan(&ctx.opts.catalog)
                    .facts;
                ["kv_cache_tokens", "llamacpp_kv_cache_cells"]
                    .iter()
                    .find_map(|k| match f.get(*k) {
                        Some(Value::Number(n)) => n.as_u64(),
                        Some(Value::String(s)) => s.parse().ok(),
                        _ => None,
                    })
            })
    });
    if let Some(None) = kv_tokens {
        ctx.live.note(&format!(
            "arm {:?}: warning: the server reports no KV-cache capacity, so the sweep concurrency=kv cannot be sized; no sweep",
            ctx.plan.name
        ));
        return None;
    }
    let mut sweep = sweep.clone();
    if let Some(Some(t)) = kv_tokens {
        let seq =
            u64::from(sweep_cfg.workload.input_len) + u64::from(sweep_cfg.sampling.max_tokens);
        sweep.levels = crate::capacity::kv_fill_levels(t, seq);
    }
    let say = |line: &str| ctx.live.note(line);
    let mut c = crate::runner::sweep::run(
        sweep_cfg,
        &sweep,
        ctx.plan.metrics_interval,
        ctx.cancel,
        &say,
    )
    .await;
    c.sized_from_kv_tokens = kv_tokens.flatten();
    Some(c)
}

/// The run's result as measured, or an empty one when the measurement failed; a server that
/// exited during the run makes the outcome a failure of the kind its log shows (or an
/// interruption, when kvbench was being stopped too).
fn measured_outcome(
    measured: anyhow::Result<RunResult>,
    died: Option<std::process::ExitStatus>,
    log: &ServerLog,
    plan: &ArmPlan,
    opts: &ArmOptions,
    url: &str,
    cancel: &CancellationToken,
) -> RunResult {
    let mut r = match measured {
        Ok(r) => r,
        Err(e) => {
            let mut r = empty_result(plan, url, Outcome::Failed(FailureKind::Crashed));
            r.failure = Some(Failure {
                kind: if cancel.is_cancelled() {
                    FailureKind::Interrupted
                } else {
                    FailureKind::Crashed
                },
                message: format!("{e:#}"),
                log_tail: log.tail(40),
            });
            r.outcome = if cancel.is_cancelled() {
                Outcome::Interrupted
            } else {
                Outcome::Failed(FailureKind::Crashed)
            };
            r.interrupted = cancel.is_cancelled();
            r
        }
    };
    if let Some(status) = died {
        let (kind, message) = log.classify(
            &opts.catalog,
            format!("the server exited during the run ({status})"),
        );
        // Stopped from outside while kvbench was being stopped too (a Ray job's stop signals
        // the job's every process): the run was interrupted, the server did not crash.
        let kind = if cancel.is_cancelled() && kind == "crashed" {
            FailureKind::Interrupted
        } else {
            FailureKind::from(kind)
        };
        r.outcome = if kind == FailureKind::Interrupted {
            Outcome::Interrupted
        } else {
            Outcome::Failed(kind.clone())
        };
        r.failure = Some(Failure {
            kind,
            message,
            log_tail: log.tail(40),
        });
    }
    r
}

/// What the server says of itself: its log's facts, vLLM's `cache_config_info` (with its KV
/// token count), llama.cpp's KV cells (one token each) and `/props` (build, context size).
/// Sets the result's server version where the server names one.
fn server_facts(
    report: &crate::logscan::LogReport,
    cache_config: Option<&BTreeMap<String, String>>,
    props: Option<Value>,
    r: &mut RunResult,
) -> ServerFacts {
    let mut facts = ServerFacts::from_log_scan(report.facts.clone());
    if let Some(c) = cache_config {
        facts.cache_config = Some(c.clone());
        if let Some(n) = c
            .get("kv_cache_size_tokens")
            .and_then(|v| v.parse::<u64>().ok())
        {
            facts
                .catalog
                .entry("kv_cache_tokens".into())
                .or_insert(json!(n));
        }
    }
    // llama.cpp's KV cache holds one token per cell (its start-up log at -lv 4).
    if let Some(cells) = facts.catalog.get("llamacpp_kv_cache_cells").and_then(|v| {
        v.as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .or(v.as_u64())
    }) {
        facts
            .catalog
            .entry("kv_cache_tokens".into())
            .or_insert(json!(cells));
    }
    if let Some(p) = props {
        if r.server.version.is_none() {
            r.server.version = p
                .get("build_info")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        facts.n_ctx = p
            .pointer("/default_generation_settings/n_ctx")
            .and_then(Value::as_u64);
    }
    if r.server.version.is_none() {
        r.server.version = facts.text("vllm_version").map(str::to_owned);
    }
    facts
}

/// Values that must never appear in results: those of secret-looking flags (`--api-key`,
/// `--hf-token`, ...), of secret-looking environment variables given to the server, and of
/// every request header of the workload (`--header K:V`: the value may be a token whatever
/// the header's name).
pub fn secret_values(plan: &ArmPlan, launch_args: &[String]) -> Vec<String> {
    let secretish = secret_name;
    let mut out = Vec::new();
    out.extend(plan.settings.headers.iter().map(|(_, v)| v.clone()));
    for (i, a) in launch_args.iter().enumerate() {
        if let Some((flag, value)) = a.split_once('=') {
            if flag.starts_with('-') && secretish(flag) {
                out.push(value.to_owned());
            }
        } else if a.starts_with('-') && secretish(a) {
            if let Some(v) = launch_args.get(i + 1).filter(|v| !v.starts_with('-')) {
                out.push(v.clone());
            }
        }
    }
    let env = match &plan.launch {
        LaunchSpec::Process { env, .. } | LaunchSpec::Compose { env, .. } => env.clone(),
        LaunchSpec::Attach { .. } => BTreeMap::new(),
    };
    out.extend(
        env.iter()
            .filter(|(k, _)| secretish(k))
            .map(|(_, v)| v.clone()),
    );
    out.retain(|v| v.len() >= 4);
    out
}

/// Replaces every secret value in the result by `***` (launch arguments, log facts, warning
/// lines, failure messages).
pub fn scrub(r: &mut RunResult, secrets: &[String]) {
    if secrets.is_empty() {
        return;
    }
    let Ok(mut text) = serde_json::to_string(r) else {
        return;
    };
    for s in secrets {
        if let Ok(quoted) = serde_json::to_string(s) {
            text = text.replace(quoted.trim_matches('"'), "***");
        }
    }
    if let Ok(clean) = serde_json::from_str(&text) {
        *r = clean;
    }
}

async fn llamacpp_props(url: &str) -> Option<Value> {
    let url = format!("{}/props", url.trim_end_matches('/'));
    crate::client::body::get_json_capped(&url, std::time::Duration::from_secs(5)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn config_check_flags_settings_that_did_not_take() {
        let mut cc = BTreeMap::new();
        cc.insert("cache_dtype".to_owned(), "fp8".to_owned());
        cc.insert("calculate_kv_scales".to_owned(), "False".to_owned());
        let v = config_check(
            &s(&[
                "vllm",
                "serve",
                "m",
                "--kv-cache-dtype",
                "fp8",
                "--calculate-kv-scales",
            ]),
            &BTreeMap::new(),
            Some(&cc),
        );
        assert_eq!(v.requested.calculate_kv_scales, Some(true));
        assert_eq!(v.effective.calculate_kv_scales, Some(false));
        assert_eq!(v.mismatches.len(), 1);
        let ok = config_check(
            &s(&["vllm", "serve", "m", "--kv-cache-dtype", "fp8"]),
            &BTreeMap::new(),
            Some(&cc),
        );
        assert!(ok.mismatches.is_empty());
        let mut facts = BTreeMap::new();
        facts.insert("llamacpp_kv_type_k".to_owned(), json!("q8_0"));
        facts.insert("llamacpp_kv_type_v".to_owned(), json!("q8_0"));
        let l = config_check(
            &s(&["llama-server", "--cache-type-k", "q8_0", "-ctv", "q4_0"]),
            &facts,
            None,
        );
        assert_eq!(l.effective.cache_type_k.as_deref(), Some("q8_0"));
        assert_eq!(l.mismatches.len(), 1, "{l:?}");
    }

    #[test]
    fn secrets_are_scrubbed_from_results() {
        let plan = crate::experiment::parse(
            "name = \"x\"\n[server]\ncommand = [\"vllm\"]\nenv = { HF_TOKEN = \"hf_abcdef123\" }\n[[arms]]\nname = \"a\"\n",
            Path::new("e.toml"),
        )
        .unwrap()
        .arms
        .remove(0);
        let args = s(&["vllm", "serve", "m", "--api-key", "sk-secret-1", "--x=1"]);
        let secrets = secret_values(&plan, &args);
        assert_eq!(secrets, s(&["sk-secret-1", "hf_abcdef123"]));
        let mut r = empty_result(&plan, "http://h", Outcome::Ok);
        r.server.launch_args = Some(args);
        r.server.facts.catalog.insert(
            "non_default_args".into(),
            json!("{'api_key': 'sk-secret-1'}"),
        );
        scrub(&mut r, &secrets);
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            !text.contains("sk-secret-1") && text.contains("***"),
            "{text}"
        );
    }
}
