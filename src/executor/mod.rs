//! Executors: where the runs of a `kvbench ab` round happen (docs/scale.md).
//!
//! - `local` (the default): in this process, one run after another (`ab`'s own loop).
//! - `local-gpus`: the runs of a round at the same time, each as a `kvbench run --config EXP
//!   --arm NAME` child process on its own set of GPUs (`CUDA_VISIBLE_DEVICES`), swapping the
//!   sets between rounds (a crossover, docs/decision.md).
//! - `ray`: the runs of a round as Ray jobs through the cluster's Jobs REST API ([`ray`]); the
//!   cluster places them by the GPUs (or the custom resource) each arm asks for.
//!
//! Every executor writes the same result files in the same directory, so the comparison and
//! the verdict do not depend on which one ran the arms. A job that ends without a result is
//! that arm's outcome (`executor_failed`), never a reason to stop the other arms.

pub mod ray;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use tokio_util::sync::CancellationToken;

use crate::experiment::{ArmPlan, Experiment, LaunchSpec, PortSpec};
use crate::live::{Live, Phase};
use crate::result::{write_json, Failure, FailureKind, Outcome, Placement, RunResult};

pub use crate::experiment::{DeviceId, ExecutorKind, ExecutorTable};

/// A resolved executor.
#[derive(Debug, Clone)]
pub struct Executor {
    /// Which one.
    pub kind: ExecutorKind,
    /// Ray: the Jobs API base URL (`http://HOST:PORT`).
    pub address: Option<String>,
    /// `local-gpus`: the devices.
    pub gpus: Vec<String>,
    /// Ray: the custom resource standing for GPUs.
    pub gpu_resource: Option<String>,
    /// Ray: CPUs per job.
    pub num_cpus: f64,
    /// The `kvbench` command the jobs run.
    pub kvbench: String,
    /// Ray: variables passed to the jobs.
    pub env: Vec<String>,
}

/// `--on`: `local`, `local-gpus`, `ray://HOST:PORT` or `http(s)://HOST:PORT` (a Ray dashboard).
pub fn parse_on(s: &str) -> Result<(ExecutorKind, Option<String>), String> {
    match s {
        "local" => Ok((ExecutorKind::Local, None)),
        "local-gpus" => Ok((ExecutorKind::LocalGpus, None)),
        _ => ray_address(s)
            .map(|a| (ExecutorKind::Ray, Some(a)))
            .ok_or_else(|| {
                format!("{s:?}: expected local, local-gpus or ray://HOST:PORT (a Ray dashboard's Jobs API, e.g. ray://10.0.0.5:8265)")
            }),
    }
}

/// The Jobs API base URL of `ray://HOST:PORT` / `http(s)://HOST:PORT`.
fn ray_address(s: &str) -> Option<String> {
    let rest = s
        .strip_prefix("ray://")
        .map(|r| format!("http://{r}"))
        .or_else(|| {
            (s.starts_with("http://") || s.starts_with("https://")).then(|| s.to_owned())
        })?;
    let u = reqwest::Url::parse(&rest).ok()?;
    u.host_str()?;
    Some(rest.trim_end_matches('/').to_owned())
}

impl Executor {
    /// The executor of `exp`: `--on` / `--gpus` over its `[executor]` table over `local`.
    /// `--gpus` alone means `local-gpus`.
    pub fn resolve(
        exp: &Experiment,
        on: Option<&str>,
        gpus: Option<&str>,
    ) -> anyhow::Result<Executor> {
        let file = exp.path.display().to_string();
        let t = exp.executor.clone().unwrap_or_default();
        let (mut kind, mut address) = (t.kind.unwrap_or(ExecutorKind::Local), None);
        if let Some(a) = &t.address {
            address = Some(ray_address(a).ok_or_else(|| {
                anyhow::anyhow!("{file}: [executor] key `address`: {a:?} is not ray://HOST:PORT or http://HOST:PORT")
            })?);
        }
        if let Some(on) = on {
            let (k, a) = parse_on(on).map_err(|e| anyhow::anyhow!("--on {e}"))?;
            kind = k;
            if a.is_some() {
                address = a;
            }
        }
        let mut devices: Vec<String> = t
            .gpus
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        if let Some(g) = gpus {
            devices = g
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if on.is_none() && kind == ExecutorKind::Local {
                kind = ExecutorKind::LocalGpus;
            }
        }
        let kvbench = match t.kvbench {
            Some(k) => k,
            None => std::env::current_exe()
                .context("cannot find kvbench's own path (set [executor] kvbench)")?
                .display()
                .to_string(),
        };
        let e = Executor {
            kind,
            address,
            gpus: devices,
            gpu_resource: t.gpu_resource,
            num_cpus: t.num_cpus.unwrap_or(1.0),
            kvbench,
            env: t.env.unwrap_or_default(),
        };
        e.check(exp)?;
        Ok(e)
    }

    /// Whether arms run in this process (`local`).
    pub fn is_local(&self) -> bool {
        self.kind == ExecutorKind::Local
    }

    /// What must hold for arms to run at the same time; one line per mistake.
    fn check(&self, exp: &Experiment) -> anyhow::Result<()> {
        let file = exp.path.display();
        if self.kind == ExecutorKind::Local {
            return Ok(());
        }
        if !(self.num_cpus > 0.0 && self.num_cpus.is_finite()) {
            bail!("{file}: [executor] key `num_cpus` must be a positive number");
        }
        for plan in &exp.arms {
            match &plan.launch {
                LaunchSpec::Process { .. } => {}
                _ => bail!(
                    "{file}: arm {:?}: the {} executor runs arms at the same time, which needs launcher \"process\" (a compose service or an attached server is one server)",
                    plan.name,
                    self.kind.as_str()
                ),
            }
            if let Some(PortSpec::Fixed(p)) = plan.port {
                bail!(
                    "{file}: arm {:?}: [server] port = {p} would be taken twice when arms run at the same time on one machine: use port = \"auto\" and {{port}} in the command",
                    plan.name
                );
            }
        }
        match self.kind {
            ExecutorKind::LocalGpus => {
                if self.gpus.is_empty() {
                    bail!("the local-gpus executor needs the devices to share out: --gpus 0,1,2,3 or [executor] gpus = [0, 1, 2, 3]");
                }
                let mut seen = std::collections::BTreeSet::new();
                if let Some(d) = self.gpus.iter().find(|d| !seen.insert(d.as_str())) {
                    bail!("--gpus: device {d} is listed twice");
                }
                let sizes: std::collections::BTreeSet<u32> =
                    exp.arms.iter().map(|p| p.gpus).collect();
                if sizes.len() > 1 {
                    bail!("{file}: the local-gpus executor swaps GPU sets between arms, so every arm needs the same [server] gpus (found {sizes:?})");
                }
                let g = exp.arms[0].gpus;
                if g == 0 {
                    bail!("{file}: [server] gpus = 0: the local-gpus executor gives each arm a device set of at least one GPU");
                }
                if g as usize > self.gpus.len() {
                    bail!(
                        "{file}: each arm needs {g} GPUs ([server] gpus) but --gpus lists {}",
                        self.gpus.len()
                    );
                }
            }
            ExecutorKind::Ray => {
                if self.address.is_none() {
                    bail!("the ray executor needs the cluster's Jobs API: --on ray://HOST:8265 or [executor] address");
                }
            }
            ExecutorKind::Local => {}
        }
        Ok(())
    }

    /// The device sets of `local-gpus`: consecutive groups of `g` devices (a remainder is idle).
    fn slots(&self, g: u32) -> Vec<Vec<String>> {
        self.gpus
            .chunks(g as usize)
            .filter(|c| c.len() == g as usize)
            .map(<[String]>::to_vec)
            .collect()
    }

    /// Runs `jobs` (one round) and returns each job's result, in the jobs' order. A job that
    /// ends without a result gets one saying so (`executor_failed`), written to its path.
    pub async fn run_round(
        &self,
        exp: &Experiment,
        jobs: Vec<Job>,
        round: u32,
        cancel: &CancellationToken,
        view: &Live,
    ) -> anyhow::Result<Vec<(Job, RunResult)>> {
        for j in &jobs {
            view.arm_phase(&j.arm, Phase::Pending);
        }
        let ends = match self.kind {
            ExecutorKind::LocalGpus => self.run_local_gpus(exp, jobs, round, cancel, view).await,
            ExecutorKind::Ray => ray::run_jobs(self, exp, jobs, cancel, view).await?,
            ExecutorKind::Local => bail!("the local executor runs in `ab` itself"),
        };
        Ok(ends
            .into_iter()
            .map(|end| {
                let r = end.into_result(self.kind);
                (r.0, r.1)
            })
            .collect())
    }

    /// `local-gpus`: child processes, each on a free device set; a job whose set is taken
    /// waits. In round `r` the job of arm `i` (experiment order) prefers set `(i + r) mod n`,
    /// so with as many sets as arms every arm moves to the next set each round.
    async fn run_local_gpus(
        &self,
        exp: &Experiment,
        jobs: Vec<Job>,
        round: u32,
        cancel: &CancellationToken,
        view: &Live,
    ) -> Vec<JobEnd> {
        let g = exp.arms.first().map_or(1, |p| p.gpus);
        let slots = self.slots(g);
        view.set_parallel(slots.len().min(jobs.len()).max(1));
        let mut free: Vec<bool> = vec![true; slots.len()];
        let mut pending: VecDeque<Job> = jobs.into();
        let mut running: tokio::task::JoinSet<(
            Job,
            usize,
            std::io::Result<std::process::ExitStatus>,
        )> = tokio::task::JoinSet::new();
        let mut pids: BTreeMap<String, u32> = BTreeMap::new();
        let mut ends = Vec::new();
        let mut stop_sent: Option<tokio::time::Instant> = None;
        let mut escalated = false;
        loop {
            while !cancel.is_cancelled() {
                let Some(job) = pending.front() else { break };
                let order = exp.arms.iter().position(|p| p.name == job.arm).unwrap_or(0);
                let want = (order + round as usize) % slots.len().max(1);
                let Some(slot) = (0..slots.len())
                    .map(|k| (want + k) % slots.len())
                    .find(|&k| free[k])
                else {
                    break;
                };
                let job = pending.pop_front().expect("front exists");
                let devices = slots[slot].join(",");
                match self.spawn_local(exp, &job, &devices) {
                    Ok(mut child) => {
                        free[slot] = false;
                        view.note(&format!(
                            "arm {:?}: started on GPUs {devices} (job {}, log {})",
                            job.arm,
                            job.id,
                            job.log_path().display()
                        ));
                        view.arm_phase(&job.arm, Phase::Running);
                        if let Some(pid) = child.id() {
                            pids.insert(job.id.clone(), pid);
                        }
                        running.spawn(async move {
                            let status = child.wait().await;
                            (job, slot, status)
                        });
                    }
                    Err(e) => ends.push(JobEnd {
                        placement: placement(ExecutorKind::LocalGpus, &job, Some(devices)),
                        job,
                        failure: Some(format!("cannot start kvbench: {e:#}")),
                        gathered_from: None,
                    }),
                }
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                done = running.join_next() => {
                    let Some(Ok((job, slot, status))) = done else { continue };
                    free[slot] = true;
                    pids.remove(&job.id);
                    let failure = match status {
                        Ok(s) if job.result.exists() => { let _ = s; None }
                        Ok(s) => Some(format!("the job exited ({s}) without writing its result")),
                        Err(e) => Some(format!("cannot wait for the job: {e}")),
                    };
                    ends.push(JobEnd {
                        placement: placement(ExecutorKind::LocalGpus, &job, Some(slots[slot].join(","))),
                        job,
                        failure,
                        gathered_from: None,
                    });
                }
                _ = cancel.cancelled(), if stop_sent.is_none() => {
                    // Each child tears its own server down on SIGTERM and writes what it measured.
                    for pid in pids.values() {
                        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
                    }
                    stop_sent = Some(tokio::time::Instant::now());
                }
                _ = sleep_until(stop_sent.map(|t| t + STOP_GRACE)), if stop_sent.is_some() && !escalated => {
                    // A second signal: the child kills its server without waiting (its own
                    // signal handling, src/signals.rs), then ends.
                    for pid in pids.values() {
                        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
                    }
                    escalated = true;
                }
            }
        }
        for job in pending {
            ends.push(JobEnd {
                placement: placement(ExecutorKind::LocalGpus, &job, None),
                job,
                failure: Some("not started: interrupted".into()),
                gathered_from: None,
            });
        }
        ends
    }

    /// Starts one `local-gpus` job: `kvbench run --config EXP --arm NAME --output RESULT` in its
    /// own process group, on `devices`, its output in the job's log.
    fn spawn_local(
        &self,
        exp: &Experiment,
        job: &Job,
        devices: &str,
    ) -> anyhow::Result<tokio::process::Child> {
        let log = std::fs::File::create(job.log_path())
            .with_context(|| format!("cannot write {}", job.log_path().display()))?;
        let mut cmd = tokio::process::Command::new(&self.kvbench);
        cmd.args(job.args(exp, ExecutorKind::LocalGpus, false))
            .env("CUDA_VISIBLE_DEVICES", devices)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        Ok(cmd.spawn()?)
    }
}

/// How long a job has, after kvbench asked it to stop, to tear its server down and write what
/// it measured before it is stopped harder.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// Sleeps until `t` (forever when `None`).
async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// One run of one arm, as a job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The arm.
    pub arm: String,
    /// Where the run writes its result (its log, journal and job log beside it).
    pub result: PathBuf,
    /// Without the quality suites (adaptive rounds after the first).
    pub speed_only: bool,
    /// GPUs it needs.
    pub gpus: u32,
    /// The job's id: unique, from the result's file name.
    pub id: String,
}

impl Job {
    /// A job for `plan` writing `result`.
    pub fn new(plan: &ArmPlan, result: PathBuf, speed_only: bool) -> Job {
        let stem = result
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Ray allows letters, digits, '-' and '_' in a submission id; a duplicate is refused.
        let id: String = format!(
            "kvbench-{}-{:04x}",
            stem.trim_start_matches("benchmark_"),
            (nanos ^ std::process::id()) & 0xffff
        )
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
        Job {
            arm: plan.name.clone(),
            result,
            speed_only,
            gpus: plan.gpus,
            id,
        }
    }

    /// The job's own output (the child's stdout and stderr; a Ray job's log).
    pub fn log_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "{}.job.log",
            self.result.with_extension("").display()
        ))
    }

    /// `kvbench` arguments of the job.
    pub fn args(&self, exp: &Experiment, kind: ExecutorKind, print_result: bool) -> Vec<String> {
        let exp_path = std::path::absolute(&exp.path).unwrap_or_else(|_| exp.path.clone());
        let result = std::path::absolute(&self.result).unwrap_or_else(|_| self.result.clone());
        let mut a = vec![
            "run".to_owned(),
            "--config".into(),
            exp_path.display().to_string(),
            "--arm".into(),
            self.arm.clone(),
            "--output".into(),
            result.display().to_string(),
            "--executor".into(),
            kind.as_str().into(),
            "--job-id".into(),
            self.id.clone(),
        ];
        if self.speed_only {
            a.push("--speed-only".into());
        }
        if print_result {
            a.push("--print-result".into());
        }
        a
    }
}

fn placement(kind: ExecutorKind, job: &Job, devices: Option<String>) -> Placement {
    Placement {
        executor: kind.as_str().into(),
        job_id: Some(job.id.clone()),
        devices,
        host: None,
        gathered_from: None,
    }
}

/// How a job ended.
#[derive(Debug)]
pub struct JobEnd {
    /// The job.
    pub job: Job,
    /// Why it has no result, if it has none.
    pub failure: Option<String>,
    /// Where the executor put it (for a result it has to write itself).
    pub placement: Placement,
    /// `job_log` when the result was copied from the job's log.
    pub gathered_from: Option<String>,
}

impl JobEnd {
    /// The job's result: the file it wrote, else one saying why there is none (written to the
    /// job's result path, so the comparison sees the arm's outcome).
    fn into_result(self, kind: ExecutorKind) -> (Job, RunResult) {
        if self.failure.is_none() {
            if let Ok(mut r) = read_result(&self.job.result) {
                if let Some(g) = &self.gathered_from {
                    let p = r.placement.get_or_insert_with(|| self.placement.clone());
                    p.gathered_from = Some(g.clone());
                    let _ = write_json(&self.job.result, &r);
                }
                return (self.job, r);
            }
        }
        let message = self
            .failure
            .clone()
            .unwrap_or_else(|| format!("{}: unreadable result", self.job.result.display()));
        let tail = std::fs::read_to_string(self.job.log_path())
            .map(|t| {
                let lines: Vec<&str> = t.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            })
            .unwrap_or_default();
        let mut r = failed_result(&self.job, FailureKind::ExecutorFailed, message, tail);
        r.placement = Some(Placement {
            executor: kind.as_str().into(),
            ..self.placement
        });
        let _ = write_json(&self.job.result, &r);
        (self.job, r)
    }
}

/// Reads a result file.
pub fn read_result(path: &Path) -> anyhow::Result<RunResult> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a kvbench result: {e}", path.display()))
}

/// A result for a job that produced none.
fn failed_result(job: &Job, kind: FailureKind, message: String, log_tail: String) -> RunResult {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    RunResult {
        schema_version: crate::result::SCHEMA_VERSION,
        kvbench_version: env!("CARGO_PKG_VERSION").to_owned(),
        arm: Some(job.arm.clone()),
        started_at: now.clone(),
        finished_at: now,
        interrupted: false,
        outcome: Outcome::Failed(kind.clone()),
        server: Default::default(),
        config: crate::result::RunConfigRecord::NotRun {
            workload_args: Vec::new(),
        },
        requests: Default::default(),
        errors: Default::default(),
        anomalies: Default::default(),
        finish_reasons: Default::default(),
        tokens: Default::default(),
        metrics: Default::default(),
        throughput: Default::default(),
        duration_s: None,
        warnings: Vec::new(),
        server_metrics: None,
        quality: None,
        journal: None,
        failure: Some(Failure {
            kind,
            message,
            log_tail,
        }),
        goodput: None,
        phases: Default::default(),
        placement: None,
        capacity: None,
    }
}

/// Quotes `s` for a POSIX shell (a Ray entrypoint is a shell command line).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests;
