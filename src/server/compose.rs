//! The `compose` launcher: the user's compose file and service, an override written by kvbench
//! in its own output folder (the user's files are never edited), `docker compose up -d`,
//! `docker compose logs -f` into the arm's log, and afterwards the service stopped, removed and,
//! if it was running before, brought back up with the user's own configuration.
//!
//! The `docker` executable is `$KVBENCH_DOCKER` or `docker` on PATH.
//!
//! Secrets stay out of the override: an environment variable whose name looks secret
//! (`HF_TOKEN`, `*_API_KEY`, ...; [`crate::server::secret_name`]) is written by name only, and
//! its value reaches the container by reference, from the environment of the `docker compose`
//! commands kvbench runs. The override is written readable by its owner only (0600).
//!
//! When the service was not running before, teardown also removes what `up` created for the
//! project and `rm` leaves behind: the project's networks and named volumes that did not exist
//! before the arm (found by compose's `com.docker.compose.project` label), and the container's
//! anonymous volumes (`rm -f -v`). Those that existed before are the user's and stay.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::{spawn_logged, ArmFiles};
use crate::experiment::{apply_changes, ArmPlan, LaunchSpec};

/// One arm's compose run.
#[derive(Debug, Clone)]
pub struct ComposeRun {
    docker: String,
    /// `compose [-p P] -f USER`
    user_only: Vec<String>,
    /// `compose [-p P] -f USER -f OVERRIDE`
    with_override: Vec<String>,
    service: String,
    /// The service's arguments for this arm.
    pub service_args: Vec<String>,
    /// Where the override was written.
    pub override_path: PathBuf,
    /// The override's text.
    pub override_text: String,
    was_running: bool,
    /// The project's networks and volumes before the arm, when they could be listed (the
    /// service was not running and the project's name is known).
    before: Option<ProjectResources>,
    /// Secret environment values, given to the commands that use the override (never written).
    secret_env: BTreeMap<String, String>,
}

fn docker() -> String {
    std::env::var("KVBENCH_DOCKER").unwrap_or_else(|_| "docker".to_owned())
}

fn run(docker: &str, args: &[String], env: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let out = Command::new(docker)
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{docker} {}`", args.join(" ")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{docker} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            err.lines().last().unwrap_or("").trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn yaml_str(s: &str) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The override file's text: the service's command (and environment) for the arm. Variables
/// with a secret-looking name are listed without a value (`"HF_TOKEN":`): compose then takes
/// the value from its own environment.
pub fn override_yaml(
    experiment: &str,
    arm: &str,
    service: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> String {
    let mut s = format!(
        "# Written by kvbench for arm {arm:?} of experiment {experiment:?}.\n# The user's compose file is not modified; this file is applied on top of it with -f.\nservices:\n  {}:\n    command: [{}]\n",
        yaml_str(service).trim_matches('"'),
        args.iter().map(|a| yaml_str(a)).collect::<Vec<_>>().join(", ")
    );
    if !env.is_empty() {
        s.push_str("    environment:\n");
        for (k, v) in env {
            if crate::server::secret_name(k) {
                s.push_str(&format!("      {}:\n", yaml_str(k)));
            } else {
                s.push_str(&format!("      {}: {}\n", yaml_str(k), yaml_str(v)));
            }
        }
    }
    s
}

/// The resolved compose file, from `docker compose config --format json`.
fn compose_config(docker: &str, user_only: &[String]) -> anyhow::Result<Value> {
    let mut args = user_only.to_vec();
    args.extend(["config".into(), "--format".into(), "json".into()]);
    let text = run(docker, &args, &BTreeMap::new())?;
    serde_json::from_str(&text).context("`docker compose config --format json` did not print JSON")
}

/// A compose project's networks and volumes, by name.
#[derive(Debug, Clone, Default, PartialEq)]
struct ProjectResources {
    project: String,
    networks: BTreeSet<String>,
    volumes: BTreeSet<String>,
}

impl ProjectResources {
    /// Lists them through compose's project label; `None` if docker cannot.
    fn list(docker: &str, project: &str) -> Option<Self> {
        let label = format!("label=com.docker.compose.project={project}");
        let ls = |kind: &str| -> Option<BTreeSet<String>> {
            let args: Vec<String> = [kind, "ls", "--filter", &label, "--format", "{{.Name}}"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let out = run(docker, &args, &BTreeMap::new()).ok()?;
            Some(
                out.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )
        };
        Some(Self {
            project: project.to_owned(),
            networks: ls("network")?,
            volumes: ls("volume")?,
        })
    }

    /// Removes the networks and volumes that are in `now` but were not in `self`.
    fn remove_new(&self, docker: &str, now: &Self) {
        for (kind, before, after) in [
            ("network", &self.networks, &now.networks),
            ("volume", &self.volumes, &now.volumes),
        ] {
            for name in after.difference(before) {
                let _ = run(
                    docker,
                    &[kind.to_owned(), "rm".to_owned(), name.clone()],
                    &BTreeMap::new(),
                );
            }
        }
    }
}

/// The service's current command in the resolved compose file.
fn service_command(config: &Value, service: &str) -> anyhow::Result<Vec<String>> {
    let v = config;
    let svc = v
        .pointer(&format!("/services/{service}"))
        .ok_or_else(|| anyhow::anyhow!("the compose file has no service {service:?}"))?;
    match svc.get("command") {
        Some(Value::Array(a)) => Ok(a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()),
        Some(Value::String(s)) => Ok(s.split_whitespace().map(str::to_owned).collect()),
        _ => bail!("service {service:?} has no command in the compose file: set server.args in the experiment"),
    }
}

impl ComposeRun {
    /// Reads the service's command (unless the experiment gives it), applies the arm's changes,
    /// writes the override, and notes whether the service was already running.
    pub fn prepare(plan: &ArmPlan, files: &ArmFiles, port: Option<u16>) -> anyhow::Result<Self> {
        let LaunchSpec::Compose {
            file,
            service,
            project,
            base_args,
            env,
        } = &plan.launch
        else {
            bail!("not a compose arm");
        };
        if !file.is_file() {
            bail!("compose file {} not found", file.display());
        }
        let docker = docker();
        let mut user_only = vec!["compose".to_owned()];
        if let Some(p) = project {
            user_only.extend(["-p".to_owned(), p.clone()]);
        }
        user_only.extend(["-f".to_owned(), file.display().to_string()]);
        // Needed for the command unless the experiment gives it; otherwise only for the
        // project's name (cleanup), so a failure is not fatal there.
        let config = match base_args {
            Some(_) => compose_config(&docker, &user_only).ok(),
            None => Some(compose_config(&docker, &user_only)?),
        };
        let base = match base_args {
            Some(a) => a.clone(),
            None => service_command(config.as_ref().unwrap_or(&Value::Null), service)?,
        };
        let project_name = project.clone().or_else(|| {
            config
                .as_ref()
                .and_then(|c| c.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let service_args: Vec<String> = apply_changes(&base, &plan.changes)
            .into_iter()
            .map(|a| match port {
                Some(p) => a.replace("{port}", &p.to_string()),
                None => a,
            })
            .collect();
        let override_text =
            override_yaml(&plan.experiment, &plan.name, service, &service_args, env);
        write_private(&files.compose_override, &override_text)
            .with_context(|| format!("cannot write {}", files.compose_override.display()))?;
        let secret_env: BTreeMap<String, String> = env
            .iter()
            .filter(|(k, _)| crate::server::secret_name(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut with_override = user_only.clone();
        with_override.extend([
            "-f".to_owned(),
            files.compose_override.display().to_string(),
        ]);
        let mut ps = user_only.clone();
        ps.extend(["ps".into(), "-q".into(), service.clone()]);
        let was_running = run(&docker, &ps, &BTreeMap::new())
            .map(|o| !o.trim().is_empty())
            .unwrap_or(false);
        let before = match (&project_name, was_running) {
            (Some(p), false) => ProjectResources::list(&docker, p),
            _ => None,
        };
        Ok(Self {
            docker,
            user_only,
            with_override,
            service: service.clone(),
            service_args,
            override_path: files.compose_override.clone(),
            override_text,
            was_running,
            before,
            secret_env,
        })
    }

    /// `stop` the service (compose gives it its `stop_grace_period`, 10 s by default); a second
    /// interrupting signal, before or during the wait, makes it `kill` instead, and then waits
    /// at most 10 s more for `stop` to return.
    fn stop(&self) {
        let s = self.service.as_str();
        let kill = || {
            let _ = run(
                &self.docker,
                &self.cmd(&self.with_override, &["kill", s]),
                &self.secret_env,
            );
        };
        if crate::signals::hurried() {
            return kill();
        }
        let stopping = Command::new(&self.docker)
            .args(self.cmd(&self.with_override, &["stop", s]))
            .envs(&self.secret_env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut stopping) = stopping else {
            return kill();
        };
        let mut killed_at: Option<Instant> = None;
        while matches!(stopping.try_wait(), Ok(None)) {
            if killed_at.is_none() && crate::signals::hurried() {
                kill();
                killed_at = Some(Instant::now());
            }
            if killed_at.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
                let _ = stopping.kill();
                let _ = stopping.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `rm -f SERVICE`, with `-v` (its anonymous volumes) when the container was kvbench's own:
    /// a running user's container may have handed its anonymous volumes on to the arm's.
    fn rm_args(&self) -> Vec<&str> {
        if self.was_running {
            vec!["rm", "-f", self.service.as_str()]
        } else {
            vec!["rm", "-f", "-v", self.service.as_str()]
        }
    }

    fn cmd(&self, base: &[String], rest: &[&str]) -> Vec<String> {
        let mut v = base.to_vec();
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    }

    /// Every command the run would execute, in order (for `--dry-run`).
    pub fn planned_commands(&self) -> Vec<String> {
        let s = self.service.as_str();
        let mut v = vec![
            self.cmd(&self.with_override, &["up", "-d", "--force-recreate", s]),
            self.cmd(&self.with_override, &["logs", "-f", "--no-color", s]),
            self.cmd(&self.with_override, &["stop", s]),
            self.cmd(&self.with_override, &self.rm_args()),
        ];
        if self.was_running {
            v.push(self.cmd(&self.user_only, &["up", "-d", s]));
        }
        v.into_iter()
            .map(|c| format!("{} {}", self.docker, c.join(" ")))
            .collect()
    }

    /// `up -d` the service with the override, then follow its logs into `log`.
    pub fn up(&self, log: &Path) -> anyhow::Result<Child> {
        let s = self.service.as_str();
        run(
            &self.docker,
            &self.cmd(&self.with_override, &["up", "-d", "--force-recreate", s]),
            &self.secret_env,
        )?;
        spawn_logged(
            &self.docker,
            &self.cmd(&self.with_override, &["logs", "-f", "--no-color", s]),
            &self.secret_env,
            None,
            log,
        )
        .with_context(|| format!("cannot follow logs with {}", self.docker))
    }

    /// The arm's container state (`exited 1`, `dead`) if it has stopped; `None` while it runs, or
    /// if compose cannot tell.
    pub fn exited(&self) -> Option<String> {
        let s = self.service.as_str();
        let out = run(
            &self.docker,
            &self.cmd(
                &self.with_override,
                &["ps", "-a", "--format", "{{.State}} {{.ExitCode}}", s],
            ),
            &self.secret_env,
        )
        .ok()?;
        let line = out.lines().next()?.trim();
        let state = line.split_whitespace().next()?;
        matches!(state, "exited" | "dead").then(|| match state {
            "exited" => format!(
                "exit status: {}",
                line.split_whitespace().nth(1).unwrap_or("?")
            ),
            _ => state.to_owned(),
        })
    }

    /// Stops and removes the arm's container; restores the user's service if it was running.
    pub fn teardown(&self) {
        let s = self.service.as_str();
        self.stop();
        let _ = run(
            &self.docker,
            &self.cmd(&self.with_override, &self.rm_args()),
            &self.secret_env,
        );
        if let Some(before) = &self.before {
            if let Some(now) = ProjectResources::list(&self.docker, &before.project) {
                before.remove_new(&self.docker, &now);
            }
        }
        if self.was_running {
            let _ = run(
                &self.docker,
                &self.cmd(&self.user_only, &["up", "-d", s]),
                &BTreeMap::new(),
            );
        }
    }
}

/// Writes `text` to `path` readable and writable by its owner only, also when it existed.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_quotes_everything() {
        let mut env = BTreeMap::new();
        env.insert("VLLM_X".to_owned(), "a \"b\"".to_owned());
        env.insert("HF_TOKEN".to_owned(), "hf_never_written".to_owned());
        let y = override_yaml(
            "exp",
            "cal",
            "vllm",
            &[
                "--model".into(),
                "m: x".into(),
                "--calculate-kv-scales".into(),
            ],
            &env,
        );
        assert!(
            y.contains(
                "  vllm:\n    command: [\"--model\", \"m: x\", \"--calculate-kv-scales\"]\n"
            ),
            "{y}"
        );
        assert!(y.contains("      \"VLLM_X\": \"a \\\"b\\\"\"\n"), "{y}");
        assert!(y.contains("      \"HF_TOKEN\":\n"), "{y}");
        assert!(!y.contains("hf_never_written"), "{y}");
    }
}
