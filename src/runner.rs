//! One measurement run against a running server: preflight, warmup, the workload under the
//! chosen arrival schedule, the per-request journal, and the result JSON.
//!
//! Workers send finished records over a channel to one collector, which drives the progress
//! display and hands each record to a journal thread: it appends the record to the journal and
//! flushes whenever it has caught up (a crash keeps what finished), off the runtime's threads
//! so that serializing and writing never delays a stream's reads. Both channels are bounded: a
//! journal that falls behind makes finished requests wait to hand over their records, so
//! memory stays bounded and no record is ever dropped. Cancellation (Ctrl-C) has one path: a
//! `CancellationToken` that stops scheduling and makes in-flight requests end as `cancelled`;
//! everything measured is still written.

pub mod sweep;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::client::request::{build_body, BodySpec};
use crate::client::{api_base, Client, ClientOptions, Endpoint, Engine};
pub use crate::config::{ProgressMode, RunConfig};
use crate::live::{ArmLive, Phase, RunningMedian, WorkloadProgress};
use crate::metrics;
use crate::record::RequestRecord;
use crate::result::{
    write_json, FailureKind, MeasuredConfig, Outcome, RunConfigRecord, RunResult, ServerFacts,
    ServerInfo, SCHEMA_VERSION,
};
use crate::workload::arrivals::{timeline, Arrival};
use crate::workload::{TokenCounter, Workload};

/// What the preflight learned about the server.
#[derive(Debug, Clone)]
pub struct Preflight {
    /// Model to use.
    pub model: String,
    /// Detected engine.
    pub engine: Engine,
    /// Server version, if told.
    pub version: Option<String>,
    /// Facts for the result (`model_entry`, `max_model_len`, `n_ctx_train`).
    pub facts: ServerFacts,
}

/// Asks `/v1/models` (and `/version`) what the server serves. One-line errors for an
/// unreachable URL, a non-OpenAI server and an unknown model.
pub async fn preflight(
    client: &Client,
    model: Option<&str>,
    engine: Engine,
) -> anyhow::Result<Preflight> {
    let models = client.get_json("models").await?;
    let data = models
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} is not an OpenAI model list (no \"data\" array): is this an OpenAI-compatible server?",
                redact_url(&client.url("models"))
            )
        })?;
    let ids: Vec<&str> = data
        .iter()
        .filter_map(|m| m.get("id").and_then(Value::as_str))
        .collect();
    let chosen = match model {
        Some(m) => {
            if !ids.contains(&m) {
                bail!(
                    "model {m:?} is not served by {} (served: {})",
                    redact_url(client.api_base()),
                    if ids.is_empty() {
                        "none".to_owned()
                    } else {
                        ids.join(", ")
                    }
                );
            }
            m.to_owned()
        }
        None => ids.first().map(|s| (*s).to_owned()).ok_or_else(|| {
            anyhow::anyhow!("{} lists no model", redact_url(&client.url("models")))
        })?,
    };
    let entry = data
        .iter()
        .find(|m| m.get("id").and_then(Value::as_str) == Some(&chosen))
        .cloned()
        .unwrap_or(Value::Null);
    let owned_by = entry.get("owned_by").and_then(Value::as_str).unwrap_or("");
    let detected = match engine {
        Engine::Auto => match owned_by {
            "vllm" => Engine::Vllm,
            "llamacpp" => Engine::Llamacpp,
            _ => Engine::Openai,
        },
        e => e,
    };
    let facts = ServerFacts {
        model_entry: Some(entry.clone()),
        max_model_len: entry.get("max_model_len").and_then(Value::as_u64),
        n_ctx_train: entry.pointer("/meta/n_ctx_train").and_then(Value::as_u64),
        ..ServerFacts::default()
    };
    let version = if detected == Engine::Vllm {
        version_of(client).await
    } else {
        None
    };
    Ok(Preflight {
        model: chosen,
        engine: detected,
        version,
        facts,
    })
}

/// vLLM's `/version`, read like any other body a server controls: capped, within 5 s.
async fn version_of(client: &Client) -> Option<String> {
    let v = client
        .get_root_json("version", Duration::from_secs(5))
        .await
        .ok()?;
    v.get("version").and_then(Value::as_str).map(str::to_owned)
}

/// Removes credentials (and query values) from a URL before it is recorded or shown.
pub use crate::client::redact_url;

struct Job {
    id: u64,
    body: bytes::Bytes,
    prompt_tokens_est: Option<u64>,
}

struct Ctx {
    client: Client,
    endpoint: Endpoint,
    origin: Instant,
    keep_text: bool,
    cancel: CancellationToken,
    records: mpsc::Sender<RequestRecord>,
}

async fn run_one(ctx: &Ctx, job: Job, scheduled_ns: u64, warmup: bool) {
    let mut rec = RequestRecord {
        id: job.id,
        warmup,
        scheduled_ns,
        prompt_tokens_est: job.prompt_tokens_est,
        ..RequestRecord::default()
    };
    ctx.client
        .stream(
            ctx.endpoint,
            job.body,
            &mut rec,
            ctx.origin,
            ctx.keep_text,
            &ctx.cancel,
        )
        .await;
    // Waits while the journal is behind (backpressure, never loss); fails only when the
    // collector is gone, which it is not while any worker runs.
    let _ = ctx.records.send(rec).await;
}

fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

/// Runs the measurement and writes the result JSON (the journal is written as requests finish).
pub async fn run(cfg: RunConfig, cancel: CancellationToken) -> anyhow::Result<RunResult> {
    let output = cfg.output.clone();
    let sweep_cfg = cfg.clone();
    let mut result = measure(cfg, cancel.clone()).await?;
    if let (Some(sweep), false) = (&sweep_cfg.sweep, result.interrupted) {
        result.capacity = Some(
            sweep::run(
                &sweep_cfg,
                sweep,
                Duration::from_secs(1),
                &cancel,
                &|line: &str| {
                    if sweep_cfg.progress != ProgressMode::Quiet {
                        eprintln!("kvbench: {line}");
                    }
                },
            )
            .await,
        );
    }
    write_json(&output, &result)?;
    Ok(result)
}

/// Runs the measurement, writing the journal as requests finish; the caller writes the result.
pub async fn measure(cfg: RunConfig, cancel: CancellationToken) -> anyhow::Result<RunResult> {
    measure_live(cfg, cancel, None).await
}

/// [`measure`], reporting its phases (warmup, quality items, workload progress) to `live`.
pub async fn measure_live(
    cfg: RunConfig,
    cancel: CancellationToken,
    live: Option<ArmLive>,
) -> anyhow::Result<RunResult> {
    let Prepared {
        base,
        concurrency,
        client,
        tokenizer,
        workload,
        pre,
        journal_file,
    } = prepare(&cfg, &cancel).await?;
    // Stops scheduling and in-flight requests: the user's interruption, or a journal that can
    // no longer be written (what was measured is then kept in memory for the result).
    let stop = cancel.child_token();
    let spec = BodySpec {
        endpoint: cfg.endpoint,
        model: pre.model.clone(),
        engine: pre.engine,
        sampling: cfg.sampling.clone(),
        no_prompt_cache: cfg.no_prompt_cache,
    };
    let job_rx = spawn_producer(&cfg, Arc::new(workload), spec, concurrency);

    let origin = cfg.origin.unwrap_or_else(Instant::now);
    let started_at = chrono::Utc::now();
    let (rec_tx, rec_rx) = mpsc::channel(RECORD_QUEUE);
    let ctx = Arc::new(Ctx {
        client,
        endpoint: cfg.endpoint,
        origin,
        keep_text: cfg.keep_text,
        cancel: stop.clone(),
        records: rec_tx,
    });
    let collector = tokio::spawn(collect(
        rec_rx,
        Journal {
            file: journal_file,
            path: cfg.journal.clone(),
            on_error: stop.clone(),
        },
        cfg.progress,
        cfg.num_requests,
        cfg.warmup,
        cfg.duration,
        live.clone(),
    ));

    let mut phases = crate::result::Phases::default();
    let t_warmup = Instant::now();
    if let (Some(l), true) = (&live, cfg.warmup > 0) {
        l.phase(Phase::Warmup);
    }
    warm_up(&ctx, &job_rx, cfg.warmup, concurrency).await;
    if cfg.warmup > 0 {
        phases.warmup_s = Some(t_warmup.elapsed().as_secs_f64());
    }
    let t_quality = Instant::now();
    let quality = match &cfg.quality {
        Some(q) => {
            let q = run_quality(&cfg, q, &base, &pre, tokenizer, origin, &stop, live.clone());
            let q = q.await?;
            phases.quality_s = Some(t_quality.elapsed().as_secs_f64());
            Some(q)
        }
        None => None,
    };
    let t_workload = Instant::now();

    // Open the connection pool before measuring, so TCP (and TLS) set-up is not counted in the
    // first wave's TTFT: a serving client keeps its connections alive.
    let prewarm = prewarm_count(&cfg.arrival, cfg.num_requests);
    ctx.client.prewarm(prewarm, &stop).await;
    if let Some(l) = &live {
        l.phase(Phase::Workload(WorkloadProgress {
            total: cfg.num_requests,
            ..WorkloadProgress::default()
        }));
    }
    schedule(&cfg, &ctx, &job_rx, &stop).await;
    drop(job_rx);
    drop(ctx);
    let collected = collector.await.context("collector task failed")??;
    let times = RunTimes {
        started_at,
        finished_at: chrono::Utc::now(),
        workload_start: t_workload,
    };
    Ok(run_result(
        &cfg,
        &base,
        &pre,
        collected,
        cancel.is_cancelled(),
        times,
        quality,
        phases,
    ))
}

/// What the preflight of a run set up: the client, the workload, what the server said, and the
/// journal file.
struct Prepared {
    /// The API base URL.
    base: String,
    /// Streams in flight at most (the closed-loop concurrency, or the open-loop cap).
    concurrency: usize,
    client: Client,
    tokenizer: Option<Arc<TokenCounter>>,
    workload: Workload,
    pre: Preflight,
    journal_file: std::fs::File,
}

/// Everything that can fail before the first request is sent: output paths, the URL, the
/// client, the tokenizer and workload, the server's preflight, the journal file.
async fn prepare(cfg: &RunConfig, cancel: &CancellationToken) -> anyhow::Result<Prepared> {
    // Output paths first: one that cannot be written fails before anything is sent, not after
    // the whole run.
    check_writable(&cfg.output, "--output")?;
    check_writable(&cfg.journal, "--journal")?;
    let base = api_base(&cfg.url)?;
    let concurrency = match cfg.arrival {
        Arrival::Closed { concurrency } => concurrency,
        Arrival::Open {
            max_concurrency, ..
        } => max_concurrency.unwrap_or(256),
    };
    let client = Client::new(&ClientOptions {
        api_base: base.clone(),
        api_key: cfg.api_key.clone(),
        headers: cfg.headers.clone(),
        timeout: cfg.timeout,
        pool_size: concurrency,
    })?;
    let tokenizer = match &cfg.tokenizer {
        Some(p) => Some(Arc::new(TokenCounter::from_file(p)?)),
        None => None,
    };
    let workload = Workload::new(cfg.workload.clone(), tokenizer.clone())?;
    if workload.has_messages() && cfg.endpoint == Endpoint::Completions {
        bail!("the dataset has chat \"messages\": use --endpoint chat");
    }
    if cfg.workload.images.is_some() && cfg.endpoint == Endpoint::Completions {
        bail!("images need --endpoint chat");
    }
    let pre = tokio::select! {
        p = preflight(&client, cfg.model.as_deref(), cfg.engine) => p?,
        _ = cancel.cancelled() => bail!("interrupted before the run started"),
    };
    let journal_file = std::fs::File::create(&cfg.journal)
        .with_context(|| format!("cannot write journal {}", cfg.journal.display()))?;
    Ok(Prepared {
        base,
        concurrency,
        client,
        tokenizer,
        workload,
        pre,
        journal_file,
    })
}

/// Starts the producer: a plain thread that builds request bodies ahead of time, in id order.
fn spawn_producer(
    cfg: &RunConfig,
    workload: Arc<Workload>,
    spec: BodySpec,
    concurrency: usize,
) -> Arc<Mutex<mpsc::Receiver<Job>>> {
    let total_jobs = cfg.num_requests.map(|n| n.saturating_add(cfg.warmup));
    let (job_tx, job_rx) = mpsc::channel::<Job>(concurrency * 2 + 16);
    std::thread::spawn(move || {
        let mut id = 0u64;
        while total_jobs.is_none_or(|t| id < t) {
            let (item, prefix) = workload.item(id);
            let body = serde_json::to_vec(&build_body(&spec, &item, &prefix))
                .unwrap_or_default()
                .into();
            let job = Job {
                id,
                body,
                prompt_tokens_est: item.prompt_tokens_est,
            };
            if job_tx.blocking_send(job).is_err() {
                break;
            }
            id += 1;
        }
    });
    Arc::new(Mutex::new(job_rx))
}

/// Warmup: `warmup` requests in a closed loop of at most `concurrency` streams, excluded from
/// statistics.
async fn warm_up(
    ctx: &Arc<Ctx>,
    job_rx: &Arc<Mutex<mpsc::Receiver<Job>>>,
    warmup: u64,
    concurrency: usize,
) {
    if warmup == 0 {
        return;
    }
    let left = Arc::new(AtomicU64::new(warmup));
    let workers = concurrency.min(usize::try_from(warmup).unwrap_or(usize::MAX));
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (ctx, rx, left) = (ctx.clone(), job_rx.clone(), left.clone());
        handles.push(tokio::spawn(async move {
            let take = || {
                left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            };
            while !ctx.cancel.is_cancelled() && take() {
                let Some(job) = next_job(&rx, &ctx.cancel).await else {
                    break;
                };
                let s = now_ns(ctx.origin);
                run_one(&ctx, job, s, true).await;
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
}

/// Quality suites: after warmup, before the performance phase; per-item records go to their
/// own journal next to the output. They get their own connection pool: a server may close a
/// connection after an error answer (llama.cpp does for refused images), and such a dead
/// keep-alive connection must not be handed to the first measured request.
#[allow(clippy::too_many_arguments)]
async fn run_quality(
    cfg: &RunConfig,
    q: &crate::quality::QualityConfig,
    base: &str,
    pre: &Preflight,
    tokenizer: Option<Arc<TokenCounter>>,
    origin: Instant,
    stop: &CancellationToken,
    live: Option<ArmLive>,
) -> anyhow::Result<crate::quality::QualityResult> {
    let quality_client = Client::new(&ClientOptions {
        api_base: base.to_owned(),
        api_key: cfg.api_key.clone(),
        headers: cfg.headers.clone(),
        timeout: cfg.timeout,
        pool_size: 1,
    })?;
    let env = crate::quality::run::QualityEnv {
        client: &quality_client,
        endpoint: cfg.endpoint,
        model: pre.model.clone(),
        engine: pre.engine,
        no_prompt_cache: cfg.no_prompt_cache,
        tokenizer,
        max_model_len: pre.facts.max_model_len,
        n_ctx_train: pre.facts.n_ctx_train,
        origin,
        progress: cfg.progress != ProgressMode::Quiet,
        live: live
            .as_ref()
            .map(|l| l as &dyn crate::quality::run::Reporter),
    };
    crate::quality::run_suites(q, &env, stop).await
}

/// The measured phase: sends the workload under the arrival schedule (closed-loop workers, or
/// open-loop arrivals on a precomputed timeline) until it is done, the duration is over or the
/// run stops, and waits for the requests in flight.
async fn schedule(
    cfg: &RunConfig,
    ctx: &Arc<Ctx>,
    job_rx: &Arc<Mutex<mpsc::Receiver<Job>>>,
    stop: &CancellationToken,
) {
    let measure_start = Instant::now();
    let deadline = cfg.duration.map(|d| measure_start + d);
    let mut handles = Vec::new();
    match cfg.arrival.clone() {
        Arrival::Closed { concurrency } => {
            // More workers than requests would only wait.
            let workers = match cfg.num_requests {
                Some(n) => concurrency.min(usize::try_from(n).unwrap_or(usize::MAX)),
                None => concurrency,
            };
            for _ in 0..workers {
                let (ctx, rx) = (ctx.clone(), job_rx.clone());
                handles.push(tokio::spawn(async move {
                    loop {
                        if ctx.cancel.is_cancelled()
                            || deadline.is_some_and(|d| Instant::now() >= d)
                        {
                            break;
                        }
                        let Some(job) = next_job(&rx, &ctx.cancel).await else {
                            break;
                        };
                        let s = now_ns(ctx.origin);
                        run_one(&ctx, job, s, false).await;
                    }
                }));
            }
        }
        Arrival::Open {
            rate,
            kind,
            burstiness,
            max_concurrency,
        } => {
            let times = timeline(
                rate,
                kind,
                burstiness,
                cfg.workload.seed,
                cfg.num_requests,
                cfg.duration,
            );
            let sem = max_concurrency.map(|m| Arc::new(Semaphore::new(m)));
            let base_ns = now_ns(ctx.origin);
            for offset in times {
                let Some(at) = measure_start.checked_add(offset) else {
                    break;
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = stop.cancelled() => break,
                }
                let Some(job) = next_job(job_rx, stop).await else {
                    break;
                };
                let scheduled = base_ns.saturating_add(offset.as_nanos() as u64);
                let (ctx, sem) = (ctx.clone(), sem.clone());
                handles.push(tokio::spawn(async move {
                    let _permit = match sem {
                        Some(s) => tokio::select! {
                            p = s.acquire_owned() => p.ok(),
                            _ = ctx.cancel.cancelled() => return,
                        },
                        None => None,
                    };
                    run_one(&ctx, job, scheduled, false).await;
                }));
            }
        }
    }
    for h in handles {
        // In-flight requests end promptly on cancellation; bound the wait anyway.
        let wait = if stop.is_cancelled() {
            Duration::from_secs(10)
        } else {
            cfg.timeout + Duration::from_secs(10)
        };
        let _ = tokio::time::timeout(wait, h).await;
    }
}

/// When a run started and finished (wall clock), and when its workload phase started.
struct RunTimes {
    started_at: chrono::DateTime<chrono::Utc>,
    finished_at: chrono::DateTime<chrono::Utc>,
    workload_start: Instant,
}

/// The run's result from what was collected: the records' metrics, the outcome, the server and
/// the configuration.
#[allow(clippy::too_many_arguments)]
fn run_result(
    cfg: &RunConfig,
    base: &str,
    pre: &Preflight,
    collected: Collected,
    interrupted: bool,
    times: RunTimes,
    quality: Option<crate::quality::QualityResult>,
    phases: crate::result::Phases,
) -> RunResult {
    let Collected {
        records,
        journal_error,
    } = collected;
    let open_loop = matches!(cfg.arrival, Arrival::Open { .. });
    let d = metrics::derive(&records, open_loop);
    let outcome = if journal_error.is_some() {
        Outcome::Failed(FailureKind::JournalFailed)
    } else if interrupted {
        Outcome::Interrupted
    } else if d.requests.total > 0 && d.requests.completed == 0 {
        Outcome::AllFailed
    } else {
        Outcome::Ok
    };
    let engine_name = match pre.engine {
        Engine::Vllm => "vllm",
        Engine::Llamacpp => "llamacpp",
        Engine::Openai | Engine::Auto => "openai",
    };
    let RunTimes {
        started_at,
        finished_at,
        workload_start,
    } = times;
    RunResult {
        schema_version: SCHEMA_VERSION,
        kvbench_version: env!("CARGO_PKG_VERSION").to_owned(),
        arm: cfg.arm.clone(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        finished_at: finished_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        interrupted,
        outcome,
        server: ServerInfo {
            url: redact_url(&cfg.url),
            api_base: redact_url(base),
            model: pre.model.clone(),
            engine: engine_name.to_owned(),
            version: pre.version.clone(),
            launch_args: None,
            startup_s: None,
            facts: pre.facts.clone(),
        },
        config: config_record(cfg, pre),
        requests: d.requests,
        errors: d.errors,
        anomalies: d.anomalies,
        finish_reasons: d.finish_reasons,
        tokens: d.tokens,
        metrics: d.metrics,
        throughput: d.throughput,
        duration_s: d.duration_s,
        warnings: Vec::new(),
        server_metrics: None,
        quality,
        journal: Some(cfg.journal.display().to_string()),
        goodput: metrics::goodput(&records, &cfg.slo, d.duration_s),
        failure: journal_error.map(|message| crate::server::Failure {
            kind: FailureKind::JournalFailed,
            message,
            log_tail: String::new(),
        }),
        phases: crate::result::Phases {
            workload_s: Some(workload_start.elapsed().as_secs_f64()),
            ..phases
        },
        placement: None,
        capacity: None,
    }
}

/// Connections opened before measuring: the closed-loop concurrency, the open-loop cap, or 16;
/// never more than the requests to send, nor 1024.
fn prewarm_count(arrival: &Arrival, num_requests: Option<u64>) -> usize {
    let n = match arrival {
        Arrival::Closed { concurrency } => *concurrency,
        Arrival::Open {
            max_concurrency, ..
        } => max_concurrency.unwrap_or(16),
    }
    .min(1024);
    match num_requests {
        Some(r) => n.min(usize::try_from(r).unwrap_or(usize::MAX)),
        None => n,
    }
}

/// The next request body, or `None` when there are no more or the run stops first (building
/// a body can take long: large images, exact prompt lengths with a tokenizer).
async fn next_job(rx: &Mutex<mpsc::Receiver<Job>>, stop: &CancellationToken) -> Option<Job> {
    tokio::select! {
        job = async { rx.lock().await.recv().await } => job,
        _ = stop.cancelled() => None,
    }
}

/// Checks, before a run, that `path` can be written where [`write_json`] (or the journal)
/// will write it: not a folder, in a folder that exists and takes new files, or an existing
/// file that can be opened for writing. `-` (stdout) and special files (a pipe, a terminal,
/// `/dev/null`) pass. `flag` names the option in the error.
pub fn check_writable(path: &std::path::Path, flag: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if path.as_os_str() == "-" {
        return Ok(());
    }
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => bail!("{flag} {shown}: is a directory"),
        Ok(m) if m.is_file() => {
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .with_context(|| format!("{flag} {shown}: cannot be written"))?;
            Ok(())
        }
        Ok(m) => {
            let t = m.file_type();
            if t.is_fifo() || t.is_char_device() || t.is_socket() || t.is_block_device() {
                Ok(())
            } else {
                bail!("{flag} {shown}: not a file that can be written")
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let target = crate::result::resolved(path);
            let dir = target
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            if !dir.is_dir() {
                bail!("{flag} {shown}: directory {} does not exist", dir.display());
            }
            let probe = dir.join(format!(".kvbench-probe-{}", std::process::id()));
            std::fs::write(&probe, b"")
                .with_context(|| format!("{flag} {shown}: {} takes no new file", dir.display()))?;
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("{flag} {shown}: cannot be written")),
    }
}

/// The workload as run, for the result JSON: no secret values, only names.
fn config_record(cfg: &RunConfig, pre: &Preflight) -> RunConfigRecord {
    RunConfigRecord::Measured(Box::new(MeasuredConfig {
        endpoint: cfg.endpoint,
        engine_requested: cfg.engine,
        model_requested: cfg.model.clone(),
        model: pre.model.clone(),
        num_requests: cfg.num_requests,
        duration_s: cfg.duration.map(|d| d.as_secs_f64()),
        arrival: cfg.arrival.clone(),
        input_len: match cfg.workload.dataset {
            crate::workload::DatasetSpec::Synthetic => Some(cfg.workload.input_len),
            _ => None,
        },
        dataset: cfg.workload.dataset.clone(),
        tokenizer: cfg.tokenizer.as_ref().map(|p| p.display().to_string()),
        unique_prefix: cfg.workload.unique_prefix,
        llamacpp_cache_prompt_false: cfg.no_prompt_cache && pre.engine == Engine::Llamacpp,
        images: cfg.workload.images.clone(),
        sampling: cfg.sampling.clone(),
        seed: cfg.workload.seed,
        warmup: cfg.warmup,
        timeout_s: cfg.timeout.as_secs_f64(),
        api_key_env: cfg.api_key_env.clone(),
        headers: cfg.headers.iter().map(|(k, _)| k.clone()).collect(),
        slo: (!cfg.slo.is_empty()).then_some(cfg.slo),
        keep_text: cfg.keep_text,
        prewarmed_connections: prewarm_count(&cfg.arrival, cfg.num_requests),
    }))
}

/// Records that may wait between a worker and the collector, and between the collector and
/// the journal thread. When the journal falls this far behind, finished requests wait to hand
/// over their records (the run slows down) rather than memory growing or a record being lost.
const RECORD_QUEUE: usize = 4096;

/// The journal file and what to do when it can no longer be written.
struct Journal {
    file: std::fs::File,
    path: PathBuf,
    /// Cancelled on a write error: the run stops early rather than measuring into nowhere.
    on_error: CancellationToken,
}

/// Every record of the run, in arrival order, and why the journal stopped being written.
struct Collected {
    records: Vec<RequestRecord>,
    journal_error: Option<String>,
}

async fn collect(
    mut rx: mpsc::Receiver<RequestRecord>,
    journal: Journal,
    mode: ProgressMode,
    expected: Option<u64>,
    warmup: u64,
    duration: Option<Duration>,
    live: Option<ArmLive>,
) -> anyhow::Result<Collected> {
    let (to_journal, journal_rx) = mpsc::channel::<RequestRecord>(RECORD_QUEUE);
    let writer = std::thread::Builder::new()
        .name("kvbench-journal".into())
        .spawn(move || write_journal(journal, journal_rx))
        .context("cannot start the journal thread")?;
    let mut done = 0u64;
    let mut progress = Progress::new(mode, expected, warmup, duration, live);
    let mut failed = 0u64;
    let mut tokens = 0u64;
    let started = Instant::now();
    while let Some(rec) = rx.recv().await {
        if rec.error.is_some() {
            failed += 1;
        }
        tokens = tokens.saturating_add(rec.output_tokens());
        done += 1;
        progress.observe(&rec);
        if to_journal.send(rec).await.is_err() {
            break;
        }
        progress.update(done, failed, tokens, started.elapsed());
    }
    drop(to_journal);
    progress.finish();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the journal thread panicked"))
}

/// Appends each record to the journal as one JSON line, flushing whenever no other record is
/// waiting; returns the records in arrival order. After a write error (a full disk) nothing
/// more is written, the run is stopped, and the records are still all kept for the result.
fn write_journal(journal: Journal, mut rx: mpsc::Receiver<RequestRecord>) -> Collected {
    let mut out = std::io::BufWriter::new(journal.file);
    let mut records = Vec::new();
    let mut error: Option<String> = None;
    let failed = |e: &dyn std::fmt::Display, error: &mut Option<String>| {
        if error.is_none() {
            *error = Some(format!(
                "cannot write journal {}: {e}; the run was stopped",
                journal.path.display()
            ));
            journal.on_error.cancel();
        }
    };
    while let Some(mut rec) = rx.blocking_recv() {
        loop {
            if error.is_none() {
                let line = serde_json::to_writer(&mut out, &rec)
                    .map_err(|e| e.to_string())
                    .and_then(|()| out.write_all(b"\n").map_err(|e| e.to_string()));
                if let Err(e) = line {
                    failed(&e, &mut error);
                }
            }
            records.push(rec);
            match rx.try_recv() {
                Ok(next) => rec = next,
                Err(_) => break,
            }
        }
        if error.is_none() {
            if let Err(e) = out.flush() {
                failed(&e, &mut error);
            }
        }
    }
    if error.is_none() {
        if let Err(e) = out.flush() {
            failed(&e, &mut error);
        }
    }
    Collected {
        records,
        journal_error: error,
    }
}

enum Progress {
    Bar(indicatif::ProgressBar),
    Lines {
        last: Instant,
    },
    /// A line of `ab`'s live view: the measured requests only, updated at most every
    /// [`crate::live::REFRESH`].
    Live {
        arm: ArmLive,
        now: WorkloadProgress,
        ttft: Box<RunningMedian>,
        last: Instant,
    },
    Quiet,
}

impl Progress {
    /// `expected` measured requests (`None`: bounded by `duration`) after `warmup` ones.
    fn new(
        mode: ProgressMode,
        expected: Option<u64>,
        warmup: u64,
        duration: Option<Duration>,
        live: Option<ArmLive>,
    ) -> Self {
        if mode == ProgressMode::Quiet {
            return Progress::Quiet;
        }
        if let Some(arm) = live.filter(ArmLive::is_terminal) {
            return Progress::Live {
                arm,
                now: WorkloadProgress {
                    total: expected,
                    ..WorkloadProgress::default()
                },
                ttft: Box::default(),
                last: Instant::now(),
            };
        }
        let total = expected.map(|n| n.saturating_add(warmup));
        if !std::io::stderr().is_terminal() {
            return Progress::Lines {
                last: Instant::now(),
            };
        }
        let bar = match total {
            Some(n) => indicatif::ProgressBar::new(n).with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            ),
            None => {
                let b = indicatif::ProgressBar::new_spinner();
                if let Some(d) = duration {
                    b.set_message(format!("for {}", humantime::format_duration(d)));
                }
                b
            }
        };
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress::Bar(bar)
    }

    fn update(&mut self, done: u64, failed: u64, tokens: u64, elapsed: Duration) {
        let rate = tokens as f64 / elapsed.as_secs_f64().max(1e-9);
        match self {
            Progress::Bar(b) => {
                b.set_position(done);
                b.set_message(format!("{failed} failed · {rate:.1} output tok/s"));
            }
            Progress::Lines { last } => {
                if last.elapsed() >= Duration::from_secs(10) {
                    *last = Instant::now();
                    eprintln!(
                        "kvbench: {done} requests done, {failed} failed, {rate:.1} output tok/s"
                    );
                }
            }
            Progress::Live {
                arm,
                now,
                ttft,
                last,
            } => {
                if last.elapsed() >= crate::live::REFRESH {
                    *last = Instant::now();
                    now.ttft_p50_ms = ttft.p50();
                    arm.phase(Phase::Workload(*now));
                }
            }
            Progress::Quiet => {}
        }
    }

    /// Counts a measured record for the live view (no allocation: counters and a fixed
    /// histogram). TTFT as in `metrics::derive`: first token less sent, successful requests.
    fn observe(&mut self, rec: &RequestRecord) {
        if let Progress::Live { now, ttft, .. } = self {
            if rec.warmup {
                return;
            }
            now.done += 1;
            if rec.error.is_some() {
                now.failed += 1;
            } else if let Some(ft) = rec.first_token_ns {
                ttft.add(ft.saturating_sub(rec.sent_ns) as f64 / 1e6);
            }
            now.output_tokens = now.output_tokens.saturating_add(rec.output_tokens());
        }
    }

    fn finish(&mut self) {
        match self {
            Progress::Bar(b) => b.finish_and_clear(),
            Progress::Live { arm, now, ttft, .. } => {
                now.ttft_p50_ms = ttft.p50();
                arm.phase(Phase::Workload(*now));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_credentials_and_query() {
        assert_eq!(
            redact_url("http://user:secret@h:8000/v1?key=abc"),
            "http://h:8000/v1?REDACTED"
        );
        assert_eq!(redact_url("http://h:8000"), "http://h:8000/");
    }
}
