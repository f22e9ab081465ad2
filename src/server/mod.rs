//! Bringing an arm's server up and down: launchers (`process`, `compose`, `attach`), the wait for
//! health, the classification of a server that dies first, and teardown that leaves no orphan.
//!
//! Every process kvbench starts (a server, `docker compose logs -f`, a log command) runs in its
//! own process group; [`Launched`] owns them and kills the groups on shutdown, on error, on
//! an interrupting signal (Ctrl-C, SIGTERM, SIGHUP), and as a last resort when dropped. A second
//! signal cuts the grace periods short ([`crate::signals::hurried`]) but still kills every group.

pub mod compose;
pub mod engine_cache;
pub mod scrape;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use crate::experiment::{apply_changes, ArmPlan, LaunchSpec, PortSpec};
use crate::logscan::{self, Catalog};
pub use crate::result::Failure;
use engine_cache::EngineCache;

/// Whether a flag or environment variable name looks like it holds a secret (`--api-key`,
/// `HF_TOKEN`, ...).
pub fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["key", "token", "secret", "password", "passwd"]
        .iter()
        .any(|w| n.contains(w))
}

/// A server's log as kvbench reads it after the fact (on failure and after teardown): decoded
/// whatever its bytes, and when it cannot be read at all, the reason, so that nobody mistakes a
/// missing log for a clean one (no warnings would then look like "every warning is gone").
#[derive(Debug, Clone, Default)]
pub struct ServerLog {
    /// The log's text (invalid UTF-8 replaced by U+FFFD); empty when unreadable.
    pub text: String,
    /// Why the log could not be read, else `None`.
    pub error: Option<String>,
}

impl ServerLog {
    /// Reads `path` with [`logscan::read_log`].
    pub fn read(path: &Path) -> Self {
        match logscan::read_log(path) {
            Ok(text) => Self { text, error: None },
            Err(e) => Self {
                text: String::new(),
                error: Some(format!(
                    "cannot read the server log {}: {e}",
                    path.display()
                )),
            },
        }
    }

    /// The last `n` lines, or why there are none.
    pub fn tail(&self, n: usize) -> String {
        match &self.error {
            Some(e) => format!("({e})"),
            None => logscan::tail(&self.text, n),
        }
    }

    /// The catalog's warnings and facts. An unreadable log gives one `log_unreadable` error
    /// (kvbench's, not the server's) and the fact `log_error`, so a comparison can tell
    /// "no warnings" from "no log".
    pub fn scan(&self, catalog: &Catalog) -> logscan::LogReport {
        let mut report = logscan::scan(catalog, &self.text);
        if let Some(e) = &self.error {
            report.warnings.push(logscan::WarningHit {
                id: "log_unreadable".into(),
                severity: logscan::Severity::Error,
                count: 1,
                ranks: 0,
                first_line: e.clone(),
                text: None,
                meaning: Some(
                    "kvbench could not read the server's log: its warnings are unknown, not absent"
                        .into(),
                ),
            });
            report.facts.insert("log_error".into(), e.clone().into());
        }
        report
    }

    /// The failure kind and line of a server that exited (see [`logscan::classify_failure`]);
    /// without a log, `crashed` with `fallback` and the reason the log is missing.
    pub fn classify(&self, catalog: &Catalog, fallback: String) -> (String, String) {
        match &self.error {
            Some(e) => ("crashed".into(), format!("{fallback}; {e}")),
            None => logscan::classify_failure(catalog, &self.text)
                .unwrap_or_else(|| ("crashed".into(), fallback)),
        }
    }
}

/// Files an arm writes.
#[derive(Debug, Clone)]
pub struct ArmFiles {
    /// The server's log (stdout and stderr, or the followed log).
    pub log: PathBuf,
    /// Compose override written by kvbench.
    pub compose_override: PathBuf,
}

/// A started (or attached) server.
pub struct Launched {
    /// Base URL (no `/v1`).
    pub url: String,
    /// The full command line, or compose service arguments, the arm ran with.
    pub launch_args: Vec<String>,
    /// Seconds from launch to healthy.
    pub startup_s: f64,
    /// Log file.
    pub log: PathBuf,
    /// The engine caches given to a `process` server (`None` for other launchers).
    pub engine_cache: Option<EngineCache>,
    groups: Vec<(Child, &'static str)>,
    compose: Option<compose::ComposeRun>,
    attach_log: Option<PathBuf>,
}

impl std::fmt::Debug for Launched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launched")
            .field("url", &self.url)
            .field("startup_s", &self.startup_s)
            .finish()
    }
}

/// What `launch` returns on failure: the failure and what is known so far.
#[derive(Debug)]
pub struct LaunchError {
    /// The failure.
    pub failure: Failure,
    /// Command line or arguments tried.
    pub launch_args: Vec<String>,
    /// Seconds from launch to the failure.
    pub elapsed_s: f64,
    /// The engine caches given to a `process` server (`None` for other launchers).
    pub engine_cache: Option<EngineCache>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Sends `sig` to the process group led by `child`.
fn signal_group(child: &Child, sig: Signal) {
    let _ = killpg(Pid::from_raw(child.id() as i32), sig);
}

/// Stops process groups: SIGTERM, up to `grace` to exit (cut short by a second interrupting
/// signal), then SIGKILL.
fn stop_groups(groups: &mut Vec<(Child, &'static str)>, grace: Duration) {
    for (c, _) in groups.iter() {
        signal_group(c, Signal::SIGTERM);
    }
    let t0 = Instant::now();
    while t0.elapsed() < grace
        && !crate::signals::hurried()
        && groups
            .iter_mut()
            .any(|(c, _)| matches!(c.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    for (c, _) in groups.iter_mut() {
        signal_group(c, Signal::SIGKILL);
        let _ = c.wait();
    }
    groups.clear();
}

impl Launched {
    /// The exit status of the server process if it has exited (process launcher only).
    pub fn server_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.groups
            .iter_mut()
            .find(|(_, role)| *role == "server")
            .and_then(|(c, _)| c.try_wait().ok().flatten())
    }

    /// Tears everything down: process groups (TERM, then KILL after 20 s, or at once after a
    /// second interrupting signal), compose services (stopped, removed, and the user's previous
    /// state restored).
    pub async fn shutdown(mut self) {
        if let Some(f) = &self.attach_log {
            // The attached server's own log, copied whole: start-up lines matter most.
            let _ = std::fs::copy(f, &self.log);
        }
        let mut groups = std::mem::take(&mut self.groups);
        let compose = self.compose.take();
        let _ = tokio::task::spawn_blocking(move || {
            stop_groups(&mut groups, Duration::from_secs(20));
            if let Some(c) = compose {
                c.teardown();
            }
        })
        .await;
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        // Last resort (panic, early return): no orphan survives kvbench.
        stop_groups(&mut self.groups, Duration::from_secs(2));
        if let Some(c) = self.compose.take() {
            c.teardown();
        }
    }
}

fn substitute(s: &str, port: Option<u16>) -> String {
    match port {
        Some(p) => s.replace("{port}", &p.to_string()),
        None => s.to_owned(),
    }
}

/// Starts `program args` in its own process group with output appended to `log`.
pub fn spawn_logged(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
    log: &Path,
) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    cmd.spawn()
}

/// Launches (or attaches to) the arm's server and waits until it is healthy.
pub async fn launch(
    plan: &ArmPlan,
    files: &ArmFiles,
    catalog: &Catalog,
    cancel: &CancellationToken,
) -> Result<Launched, LaunchError> {
    let t0 = Instant::now();
    let engine_cache = match &plan.launch {
        LaunchSpec::Process { env, .. } => Some(EngineCache::plan(plan.engine_cache, env).create()),
        _ => None,
    };
    let fails = Fails {
        log: &files.log,
        t0,
        engine_cache: engine_cache.clone(),
    };
    let port = match &plan.port {
        Some(PortSpec::Fixed(p)) => Some(*p),
        Some(PortSpec::Named(_)) => Some(free_port().map_err(|e| LaunchError {
            failure: Failure {
                kind: "launch_error".into(),
                message: format!("no free port: {e}"),
                log_tail: String::new(),
            },
            launch_args: Vec::new(),
            elapsed_s: 0.0,
            engine_cache: engine_cache.clone(),
        })?),
        None if matches!(plan.launch, LaunchSpec::Process { .. })
            && plan.url.contains("{port}") =>
        {
            free_port().ok()
        }
        None => None,
    };
    let url = substitute(&plan.url, port).trim_end_matches('/').to_owned();
    let _ = std::fs::write(&files.log, b"");
    let mut launched = Launched {
        url,
        launch_args: Vec::new(),
        startup_s: 0.0,
        log: files.log.clone(),
        engine_cache,
        groups: Vec::new(),
        compose: None,
        attach_log: None,
    };
    start(plan, files, port, &fails, &mut launched)?;
    let mut launched = wait_healthy(plan, files, catalog, cancel, &fails, launched).await?;
    launched.startup_s = t0.elapsed().as_secs_f64();
    if let Some(f) = &launched.attach_log {
        let _ = std::fs::copy(f, &files.log);
    }
    Ok(launched)
}

/// How a launch fails: what it knows so far, the log's last lines at that moment.
struct Fails<'a> {
    log: &'a Path,
    t0: Instant,
    engine_cache: Option<EngineCache>,
}

impl Fails<'_> {
    fn fail(&self, kind: &str, message: String, args: &[String]) -> LaunchError {
        LaunchError {
            failure: Failure {
                kind: kind.into(),
                message,
                log_tail: ServerLog::read(self.log).tail(40),
            },
            launch_args: args.to_vec(),
            elapsed_s: self.t0.elapsed().as_secs_f64(),
            engine_cache: self.engine_cache.clone(),
        }
    }
}

/// Starts the arm's server (a process, or a compose service with its log follower), or
/// attaches to a running one (its log command or log file), filling `launched`.
// The error is `launch`'s own, built once per arm: its size does not matter.
#[allow(clippy::result_large_err)]
fn start(
    plan: &ArmPlan,
    files: &ArmFiles,
    port: Option<u16>,
    fails: &Fails,
    launched: &mut Launched,
) -> Result<(), LaunchError> {
    match &plan.launch {
        LaunchSpec::Process {
            program,
            args,
            env,
            cwd,
        } => {
            let args: Vec<String> = apply_changes(args, &plan.changes)
                .iter()
                .map(|a| substitute(a, port))
                .collect();
            let mut env: BTreeMap<String, String> = env
                .iter()
                .map(|(k, v)| (k.clone(), substitute(v, port)))
                .collect();
            if let Some(c) = &launched.engine_cache {
                env.extend(c.set.clone());
            }
            let mut full = vec![program.clone()];
            full.extend(args.iter().cloned());
            launched.launch_args = full.clone();
            let child =
                spawn_logged(program, &args, &env, cwd.as_deref(), &files.log).map_err(|e| {
                    fails.fail(
                        "launch_error",
                        format!("cannot start {program:?}: {e}"),
                        &full,
                    )
                })?;
            launched.groups.push((child, "server"));
        }
        LaunchSpec::Compose { .. } => {
            let run = compose::ComposeRun::prepare(plan, files, port)
                .map_err(|e| fails.fail("launch_error", format!("{e:#}"), &[]))?;
            launched.launch_args = run.service_args.clone();
            let follower = run.up(&files.log).map_err(|e| {
                run.teardown();
                fails.fail("launch_error", format!("{e:#}"), &launched.launch_args)
            })?;
            launched.groups.push((follower, "logs"));
            launched.compose = Some(run);
        }
        LaunchSpec::Attach {
            log_file,
            log_command,
        } => {
            if let Some(cmd) = log_command.as_ref().filter(|c| !c.is_empty()) {
                let child = spawn_logged(&cmd[0], &cmd[1..], &BTreeMap::new(), None, &files.log)
                    .map_err(|e| {
                        fails.fail(
                            "launch_error",
                            format!("cannot start log command {:?}: {e}", cmd[0]),
                            &[],
                        )
                    })?;
                launched.groups.push((child, "logs"));
            } else if let Some(f) = log_file {
                if !f.is_file() {
                    return Err(fails.fail(
                        "launch_error",
                        format!("log file {} not found", f.display()),
                        &[],
                    ));
                }
                launched.attach_log = Some(f.clone());
            }
        }
    }
    Ok(())
}

/// Waits for health: `/health` 200, then `/v1/models` with at least one model. A redirect to
/// another origin is not followed (it would check another server's health). A server that
/// exits first, a deadline that passes or a cancellation ends the wait, and the server is shut
/// down.
async fn wait_healthy(
    plan: &ArmPlan,
    files: &ArmFiles,
    catalog: &Catalog,
    cancel: &CancellationToken,
    fails: &Fails<'_>,
    mut launched: Launched,
) -> Result<Launched, LaunchError> {
    let http = reqwest::Client::builder()
        .redirect(crate::client::same_origin_redirects())
        .build()
        .unwrap_or_default();
    let url = launched.url.clone();
    let deadline = fails.t0 + plan.health_timeout;
    let is_process_server = matches!(plan.launch, LaunchSpec::Process { .. });
    loop {
        if cancel.is_cancelled() {
            return Err(fails.fail(
                "interrupted",
                "interrupted while waiting for the server".into(),
                &launched.launch_args,
            ));
        }
        // A server (or the compose log follower) that exited before being healthy.
        let exited = launched
            .groups
            .iter_mut()
            .find(|(_, role)| *role == "server" || (*role == "logs" && launched.compose.is_some()))
            .and_then(|(c, _)| c.try_wait().ok().flatten())
            .map(|status| status.to_string())
            // `docker compose logs -f` keeps following a service whose container has exited,
            // so the container's own state is asked too.
            .or_else(|| launched.compose.as_ref().and_then(|c| c.exited()));
        if let Some(status) = exited {
            if is_process_server || !healthy(&http, &url).await {
                let why = format!("the server exited ({status}) before it was healthy");
                let (mut kind, mut message) =
                    ServerLog::read(&files.log).classify(catalog, why.clone());
                // A container's last lines reach the log through `docker compose logs -f`,
                // which may still be writing them when compose reports the exit: read again
                // for up to 3 s before settling for an unexplained crash.
                if launched.compose.is_some() {
                    for _ in 0..10 {
                        if kind != "crashed" {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        (kind, message) =
                            ServerLog::read(&files.log).classify(catalog, why.clone());
                    }
                }
                let e = fails.fail(&kind, message, &launched.launch_args);
                launched.shutdown().await;
                return Err(e);
            }
        }
        if healthy(&http, &url).await {
            return Ok(launched);
        }
        if Instant::now() >= deadline {
            let e = fails.fail(
                "startup_timeout",
                format!("not healthy after {} s", plan.health_timeout.as_secs()),
                &launched.launch_args,
            );
            launched.shutdown().await;
            return Err(e);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = cancel.cancelled() => {}
        }
    }
}

/// `/health` answers 200, then `/v1/models` lists at least one model. Both bodies are read
/// within their caps ([`crate::client::body`]): a server that answers without end is not
/// healthy, and is not read to its end either.
async fn healthy(http: &reqwest::Client, url: &str) -> bool {
    use crate::client::body::{read_capped, MAX_JSON_BODY};
    let get = |path: &str, within: u64| {
        http.get(format!("{url}{path}"))
            .timeout(Duration::from_secs(within))
            .send()
    };
    match get("/health", 3).await {
        Ok(r) if r.status().is_success() => {
            if read_capped(r, MAX_JSON_BODY).await.is_err() {
                return false;
            }
        }
        _ => return false,
    }
    let Ok(r) = get("/v1/models", 5).await else {
        return false;
    };
    if !r.status().is_success() {
        return false;
    }
    let Ok(body) = read_capped(r, MAX_JSON_BODY).await else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("data")
                .and_then(|d| d.as_array())
                .map(|d| !d.is_empty())
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_log_is_reported_never_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let log = ServerLog::read(&dir.path().join("gone.log"));
        let e = log.error.clone().expect("an error");
        assert!(e.contains("gone.log"), "{e}");
        let r = log.scan(Catalog::default_catalog());
        assert_eq!(r.warnings.len(), 1);
        assert_eq!(r.warnings[0].id, "log_unreadable");
        assert_eq!(r.warnings[0].severity, logscan::Severity::Error);
        assert_eq!(r.facts["log_error"], e.as_str());
        assert_eq!(log.tail(40), format!("({e})"));
        let (kind, message) = log.classify(Catalog::default_catalog(), "it exited".into());
        assert_eq!(kind, "crashed");
        assert!(message.starts_with("it exited; cannot read"), "{message}");
    }

    #[test]
    fn a_log_with_invalid_bytes_is_classified() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        std::fs::write(
            &path,
            b"\xff\xfe\nvllm: error: unrecognized arguments: --calculate-kv-scales\n",
        )
        .unwrap();
        let log = ServerLog::read(&path);
        assert_eq!(log.error, None);
        let (kind, _) = log.classify(Catalog::default_catalog(), "it exited".into());
        assert_eq!(kind, "unsupported_argument");
        assert!(log.tail(1).contains("unrecognized arguments"));
    }
}
