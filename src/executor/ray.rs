//! The `ray` executor: each run is a Ray job submitted through the cluster's Jobs REST API
//! (the dashboard, port 8265 by default; the same API under KubeRay).
//!
//! - `POST /api/jobs/` with `entrypoint` (`kvbench run --config EXP --arm NAME --output RESULT
//!   ...`), `submission_id`, `entrypoint_num_cpus`, `entrypoint_num_gpus` or
//!   `entrypoint_resources`, and `runtime_env.env_vars`;
//! - `GET /api/jobs/{id}` once a second: PENDING -> RUNNING -> SUCCEEDED | FAILED | STOPPED;
//! - `GET /api/jobs/{id}/logs` once the job has ended (the whole log, saved as the job log);
//! - `POST /api/jobs/{id}/stop` for every job still running when kvbench is interrupted.
//!
//! Results are gathered from the shared path first (the job writes its result where `kvbench
//! ab` reads: the results directory must be shared for the per-request journals and server
//! logs to be there too). When that file is missing — the nodes do not share the directory —
//! the result is taken from the job's log, where `--print-result` printed it, and written
//! locally (`placement.gathered_from = "job_log"`); the journals then stay on the node, so the
//! comparison uses the runs' summaries (docs/scale.md).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{placement, shell_quote, Executor, ExecutorKind, Job, JobEnd};
use crate::experiment::Experiment;
use crate::live::{Live, Phase};

/// The line prefix under which `kvbench run --print-result` prints its result.
pub const RESULT_MARKER: &str = "kvbench-result-json: ";

/// A job's status as the Jobs API reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct JobInfo {
    /// PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED.
    pub status: String,
    /// Ray's explanation.
    #[serde(default)]
    pub message: Option<String>,
    /// The entrypoint's exit code, once known.
    #[serde(default)]
    pub driver_exit_code: Option<i64>,
}

impl JobInfo {
    /// Whether the job has ended.
    pub fn ended(&self) -> bool {
        matches!(self.status.as_str(), "SUCCEEDED" | "FAILED" | "STOPPED")
    }
}

/// A client of one cluster's Jobs API.
pub struct RayClient {
    base: String,
    http: reqwest::Client,
}

impl RayClient {
    /// A client for `base` (`http://HOST:PORT`).
    pub fn new(base: &str) -> anyhow::Result<RayClient> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(RayClient {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    async fn answer(resp: reqwest::Response, what: &str) -> anyhow::Result<Value> {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            // Ray answers some mistakes with a Python traceback: its last line says what.
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            anyhow::bail!(
                "{what}: HTTP {status}: {}",
                crate::output::printable(last.trim())
            );
        }
        serde_json::from_str(&text).with_context(|| format!("{what}: not JSON"))
    }

    /// The cluster's version (a reachability check).
    pub async fn version(&self) -> anyhow::Result<Value> {
        let what = format!("Ray Jobs API at {}", self.base);
        let resp = self
            .http
            .get(format!("{}/api/version", self.base))
            .send()
            .await
            .with_context(|| format!("{what}: cannot connect"))?;
        Self::answer(resp, &what).await
    }

    /// The resources of each live node (`/nodes?view=summary`), or `None` when this dashboard
    /// does not answer it (the check it serves is then skipped).
    pub async fn node_resources(&self) -> Option<Vec<BTreeMap<String, f64>>> {
        let resp = self
            .http
            .get(format!("{}/nodes?view=summary", self.base))
            .send()
            .await
            .ok()?;
        let v = Self::answer(resp, "Ray nodes").await.ok()?;
        let nodes = v.pointer("/data/summary")?.as_array()?;
        Some(
            nodes
                .iter()
                .filter(|n| n.pointer("/raylet/state").and_then(Value::as_str) == Some("ALIVE"))
                .filter_map(|n| {
                    serde_json::from_value(n.pointer("/raylet/resourcesTotal")?.clone()).ok()
                })
                .collect(),
        )
    }

    /// Submits a job.
    pub async fn submit(&self, body: &Value) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(format!("{}/api/jobs/", self.base))
            .json(body)
            .send()
            .await
            .context("submitting a Ray job")?;
        Self::answer(resp, "submitting a Ray job").await.map(|_| ())
    }

    /// A job's status.
    pub async fn info(&self, id: &str) -> anyhow::Result<JobInfo> {
        let resp = self
            .http
            .get(format!("{}/api/jobs/{id}", self.base))
            .send()
            .await?;
        let v = Self::answer(resp, &format!("Ray job {id}")).await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Asks Ray to stop a job.
    pub async fn stop(&self, id: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(format!("{}/api/jobs/{id}/stop", self.base))
            .send()
            .await?;
        Self::answer(resp, &format!("stopping Ray job {id}"))
            .await
            .map(|_| ())
    }

    /// A job's whole log.
    pub async fn logs(&self, id: &str) -> anyhow::Result<String> {
        let resp = self
            .http
            .get(format!("{}/api/jobs/{id}/logs", self.base))
            .send()
            .await?;
        let v = Self::answer(resp, &format!("logs of Ray job {id}")).await?;
        Ok(v.get("logs")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned())
    }
}

/// Environment variables the jobs get: those the experiment names as `${VAR}` (set here, and
/// not secret-looking: a secret must be set on the nodes, never carried in a job's
/// definition, which the Ray dashboard shows) and `[executor] env`.
pub fn job_env(exp: &Experiment, extra: &[String]) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(&exp.path).unwrap_or_default();
    let mut names: Vec<String> = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        if let Some(j) = rest.find('}') {
            let name = &rest[..j];
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                names.push(name.to_owned());
            }
            rest = &rest[j..];
        }
    }
    let mut env = BTreeMap::new();
    for n in names {
        if crate::server::secret_name(&n) {
            continue;
        }
        if let Ok(v) = std::env::var(&n) {
            env.insert(n, v);
        }
    }
    for n in extra {
        if let Ok(v) = std::env::var(n) {
            env.insert(n.clone(), v);
        }
    }
    env
}

/// The submission of `job`.
fn submission(e: &Executor, exp: &Experiment, job: &Job, env: &BTreeMap<String, String>) -> Value {
    let mut words = vec![shell_quote(&e.kvbench)];
    words.extend(
        job.args(exp, ExecutorKind::Ray, true)
            .iter()
            .map(|a| shell_quote(a)),
    );
    let mut body = json!({
        "entrypoint": words.join(" "),
        "submission_id": job.id,
        "entrypoint_num_cpus": e.num_cpus,
        "runtime_env": {"env_vars": env},
        "metadata": {"kvbench_experiment": exp.name, "kvbench_arm": job.arm},
    });
    if job.gpus > 0 {
        match &e.gpu_resource {
            Some(r) => body["entrypoint_resources"] = json!({ r.as_str(): job.gpus }),
            None => body["entrypoint_num_gpus"] = json!(job.gpus),
        }
    }
    body
}

#[cfg(test)]
pub(super) fn submission_for_test(
    e: &Executor,
    exp: &Experiment,
    job: &Job,
    env: &BTreeMap<String, String>,
) -> Value {
    submission(e, exp, job, env)
}

/// Runs `jobs` on the cluster at once (the cluster queues what does not fit) and waits for
/// all of them; on `cancel`, stops every job still running and waits for it to end.
pub async fn run_jobs(
    e: &Executor,
    exp: &Experiment,
    jobs: Vec<Job>,
    cancel: &CancellationToken,
    view: &Live,
) -> anyhow::Result<Vec<JobEnd>> {
    let base = e.address.as_deref().context("no Ray address")?;
    let client = RayClient::new(base)?;
    client.version().await?;
    let env = job_env(exp, &e.env);
    let nodes = client.node_resources().await;
    view.set_parallel(jobs.len().max(1));
    let mut ends = Vec::new();
    let mut live: Vec<(Job, String)> = Vec::new();
    for job in jobs {
        if cancel.is_cancelled() {
            ends.push(ended(&job, Some("not submitted: interrupted".into())));
            continue;
        }
        // Ray keeps a job no node can hold PENDING for ever: say so instead.
        if let (Some(nodes), true) = (&nodes, job.gpus > 0) {
            let name = e.gpu_resource.as_deref().unwrap_or("GPU");
            let most = nodes
                .iter()
                .map(|n| n.get(name).copied().unwrap_or(0.0))
                .fold(0.0, f64::max);
            if most < f64::from(job.gpus) {
                ends.push(ended(
                    &job,
                    Some(format!(
                        "no node of the cluster has {} {name} (the most on one node: {most}); set [server] gpus, or [executor] gpu_resource to the resource that stands for GPUs",
                        job.gpus
                    )),
                ));
                continue;
            }
        }
        match client.submit(&submission(e, exp, &job, &env)).await {
            Ok(()) => {
                view.note(&format!(
                    "arm {:?}: submitted as Ray job {} ({base})",
                    job.arm, job.id
                ));
                live.push((job, String::new()));
            }
            Err(err) => ends.push(ended(&job, Some(format!("{err:#}")))),
        }
    }
    let mut stop_sent = false;
    let mut stop_deadline: Option<tokio::time::Instant> = None;
    while !live.is_empty() {
        if cancel.is_cancelled() && !stop_sent {
            for (job, _) in &live {
                if let Err(err) = client.stop(&job.id).await {
                    view.note(&format!("warning: {err:#}"));
                }
            }
            view.note(&format!("asked Ray to stop {} job(s)", live.len()));
            stop_sent = true;
            // Ray's own stop: SIGTERM to the job, then SIGKILL after a few seconds; kvbench
            // waits this long for the jobs to end and write what they measured.
            stop_deadline = Some(tokio::time::Instant::now() + super::STOP_GRACE);
        }
        let mut still = Vec::new();
        for (job, last) in live {
            match client.info(&job.id).await {
                Ok(info) if info.ended() => {
                    ends.push(finish(&client, job, &info, view).await);
                }
                Ok(info) => {
                    if info.status != last {
                        view.note(&format!(
                            "arm {:?}: Ray job {} {}",
                            job.arm, job.id, info.status
                        ));
                        if info.status == "RUNNING" {
                            view.arm_phase(&job.arm, Phase::Running);
                        }
                    }
                    still.push((job, info.status));
                }
                Err(err) => {
                    view.note(&format!("warning: {err:#}"));
                    still.push((job, last));
                }
            }
        }
        live = still;
        if stop_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            for (job, _) in live.drain(..) {
                ends.push(ended(
                    &job,
                    Some("did not end after Ray was asked to stop it".into()),
                ));
            }
            break;
        }
        if !live.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = cancel.cancelled(), if !stop_sent => {}
            }
        }
    }
    Ok(ends)
}

fn ended(job: &Job, failure: Option<String>) -> JobEnd {
    JobEnd {
        placement: placement(ExecutorKind::Ray, job, None),
        job: job.clone(),
        failure,
        gathered_from: None,
    }
}

/// A job that has ended: its log saved beside its result, the result found on the shared path
/// or in the log.
async fn finish(client: &RayClient, job: Job, info: &JobInfo, view: &Live) -> JobEnd {
    let logs = client.logs(&job.id).await.unwrap_or_default();
    let _ = std::fs::write(job.log_path(), &logs);
    view.note(&format!(
        "arm {:?}: Ray job {} {}{}",
        job.arm,
        job.id,
        info.status,
        info.driver_exit_code
            .map(|c| format!(" (exit code {c})"))
            .unwrap_or_default()
    ));
    if job.result.exists() {
        let mut end = ended(&job, None);
        end.gathered_from = Some("shared_path".into());
        return end;
    }
    if let Some(line) = logs.lines().rev().find(|l| l.starts_with(RESULT_MARKER)) {
        let json = &line[RESULT_MARKER.len()..];
        if serde_json::from_str::<crate::result::RunResult>(json).is_ok() {
            if let Some(dir) = job.result.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if std::fs::write(&job.result, json).is_ok() {
                let mut end = ended(&job, None);
                end.gathered_from = Some("job_log".into());
                return end;
            }
        }
    }
    let why = format!(
        "Ray job {} {}{}: {}",
        job.id,
        info.status,
        info.driver_exit_code
            .map(|c| format!(" (exit code {c})"))
            .unwrap_or_default(),
        info.message.as_deref().unwrap_or("no result was written")
    );
    ended(&job, Some(why))
}
