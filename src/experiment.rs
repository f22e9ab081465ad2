//! Experiment files (TOML): shared server settings, a shared workload, and a list of arms that
//! add, replace or remove server arguments. Raw TOML values are validated into immutable
//! [`ArmPlan`]s; errors point at the file, line and key. Format: docs/experiment.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::client::Engine;
use crate::config::{RunSettings, SettingsError};

/// How an arm's server is brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LauncherKind {
    /// A command started by kvbench in its own process group.
    Process,
    /// A service of the user's docker compose file, with an override written by kvbench.
    Compose,
    /// An already running server.
    Attach,
}

/// A port: a number, or `"auto"` for a free loopback port chosen at launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    /// A fixed port.
    Fixed(u16),
    /// `"auto"`.
    Named(String),
}

/// Server settings: shared in `[server]`, overridable per arm in `[arms.server]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    launcher: Option<LauncherKind>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    cwd: Option<PathBuf>,
    url: Option<String>,
    port: Option<PortSpec>,
    health_timeout: Option<String>,
    engine: Option<Engine>,
    compose_file: Option<PathBuf>,
    service: Option<String>,
    project: Option<String>,
    log_file: Option<PathBuf>,
    log_command: Option<Vec<String>>,
    metrics_interval: Option<String>,
    engine_cache: Option<bool>,
    gpus: Option<u32>,
}

impl RawServer {
    fn merged(&self, over: &RawServer) -> RawServer {
        macro_rules! pick {
            ($($f:ident),*) => { RawServer { $($f: over.$f.clone().or_else(|| self.$f.clone()),)* } };
        }
        let mut m = pick!(
            launcher,
            command,
            args,
            env,
            cwd,
            url,
            port,
            health_timeout,
            engine,
            compose_file,
            service,
            project,
            log_file,
            log_command,
            metrics_interval,
            engine_cache,
            gpus
        );
        // Environment tables merge key by key (the arm wins).
        if let (Some(base), Some(arm)) = (&self.env, &over.env) {
            let mut env = base.clone();
            env.extend(arm.clone());
            m.env = Some(env);
        }
        m
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArm {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    /// Arguments appended to the server's arguments.
    #[serde(default)]
    args: Vec<String>,
    /// Flags whose value is replaced (or added): `"--kv-cache-dtype" = "fp8"`; `true` adds a bare
    /// flag, `false` removes it.
    #[serde(default)]
    set: BTreeMap<String, toml::Value>,
    /// Flags removed (with their value).
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    server: Option<RawServer>,
    #[serde(default)]
    workload: Option<Spanned<toml::Table>>,
    #[serde(default)]
    quality: Option<Spanned<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiment {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    workload: Option<Spanned<toml::Table>>,
    #[serde(default)]
    quality: Option<Spanned<toml::Table>>,
    #[serde(default)]
    decision: Option<toml::Table>,
    #[serde(default)]
    executor: Option<ExecutorTable>,
    arms: Vec<Spanned<RawArm>>,
}

/// A launcher with everything it needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "launcher", rename_all = "snake_case")]
pub enum LaunchSpec {
    /// Start `program args...` in its own process group.
    Process {
        /// Program.
        program: String,
        /// Arguments (`{port}` substituted at launch).
        args: Vec<String>,
        /// Extra environment.
        env: BTreeMap<String, String>,
        /// Working directory.
        cwd: Option<PathBuf>,
    },
    /// Bring up a compose service with an override that sets its command.
    Compose {
        /// The user's compose file (never edited).
        file: PathBuf,
        /// Service name.
        service: String,
        /// Compose project name, if set.
        project: Option<String>,
        /// The service's arguments for this arm; `None` = read the service's current command
        /// with `docker compose config` and apply the arm's changes to it.
        base_args: Option<Vec<String>>,
        /// Extra environment for the service.
        env: BTreeMap<String, String>,
    },
    /// Use a running server.
    Attach {
        /// A log file to read.
        log_file: Option<PathBuf>,
        /// A command whose output is the log (e.g. `docker logs -f NAME`).
        log_command: Option<Vec<String>>,
    },
}

/// Argument changes an arm makes to the shared arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArgChanges {
    /// Appended.
    pub append: Vec<String>,
    /// Replaced or added (`None` = bare flag).
    pub set: Vec<(String, Option<String>)>,
    /// Removed.
    pub remove: Vec<String>,
}

/// One arm, validated.
#[derive(Debug, Clone)]
pub struct ArmPlan {
    /// Experiment name.
    pub experiment: String,
    /// Arm name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Launcher.
    pub launch: LaunchSpec,
    /// The arm's argument changes (applied to the base arguments).
    pub changes: ArgChanges,
    /// URL (may contain `{port}`).
    pub url: String,
    /// Port (None: from the URL).
    pub port: Option<PortSpec>,
    /// Engine, when forced.
    pub engine: Engine,
    /// Limit on launch-to-healthy.
    pub health_timeout: Duration,
    /// `/metrics` scrape interval.
    pub metrics_interval: Duration,
    /// Whether a `process` server gets kvbench's shared engine caches (`[server] engine_cache`,
    /// default true; see `server::engine_cache`).
    pub engine_cache: bool,
    /// The run's settings: `[workload]` merged with `[arms.workload]`, and `[quality]` with
    /// `[arms.quality]`.
    pub settings: RunSettings,
    /// The `[workload]` table as `kvbench run` flags, for people and records (dry runs, the
    /// `config` of a result whose server did not start); never parsed again.
    pub workload_args: Vec<String>,
    /// GPUs the arm's server needs (`[server] gpus`, default 1): the size of its device set on
    /// the `local-gpus` executor and its GPU (or `gpu_resource`) request on Ray.
    pub gpus: u32,
}

/// A parsed experiment.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// Name (used in file names).
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Arms in file order.
    pub arms: Vec<ArmPlan>,
    /// `[decision]` policy table, if any.
    pub decision: Option<toml::Table>,
    /// `[executor]` table, if any (`kvbench ab --on` overrides it).
    pub executor: Option<ExecutorTable>,
    /// The file it came from.
    pub path: PathBuf,
}

impl Experiment {
    /// The arm called `name`; a one-line error listing the arms otherwise.
    pub fn arm(&self, name: &str) -> anyhow::Result<&ArmPlan> {
        self.arms.iter().find(|a| a.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.arms.iter().map(|a| a.name.as_str()).collect();
            anyhow::anyhow!(
                "{}: no arm named {name:?} (arms: {})",
                self.path.display(),
                names.join(", ")
            )
        })
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Reads and validates an experiment file.
pub fn load(path: &Path) -> anyhow::Result<Experiment> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read experiment {}: {e}", path.display()))?;
    parse(&text, path)
}

/// Validates experiment text (`path` is used in messages and to resolve relative paths).
pub fn parse(text: &str, path: &Path) -> anyhow::Result<Experiment> {
    let file = path.display().to_string();
    let raw: RawExperiment = toml::from_str(text).map_err(|e| {
        let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        match e.span() {
            Some(s) => {
                let (l, c) = line_col(text, s.start);
                anyhow::anyhow!("{file}:{l}:{c}: {msg}")
            }
            None => anyhow::anyhow!("{file}: {msg}"),
        }
    })?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    if raw.name.trim().is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("{file}: key `name` must be non-empty and use only letters, digits, '-', '_' or '.'");
    }
    if raw.arms.is_empty() {
        bail!("{file}: at least one [[arms]] entry is needed");
    }
    let mut arms = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, arm) in raw.arms.iter().enumerate() {
        arms.push(arm_plan(
            text,
            &raw,
            (&file, &base_dir),
            i,
            arm,
            &mut names,
        )?);
    }
    Ok(Experiment {
        name: raw.name,
        description: raw.description,
        arms,
        decision: raw.decision,
        executor: raw.executor,
        path: path.to_owned(),
    })
}

/// One `[[arms]]` entry as a plan: its name (unique among `names`), its server (the
/// experiment's `[server]` under the arm's), its argument changes, its settings. Errors name
/// `file:line`, the arm and the key.
fn arm_plan(
    text: &str,
    raw: &RawExperiment,
    (file, base_dir): (&str, &Path),
    i: usize,
    arm: &Spanned<RawArm>,
    names: &mut std::collections::BTreeSet<String>,
) -> anyhow::Result<ArmPlan> {
    let a = arm.get_ref();
    let name = a.name.get_ref().clone();
    let (name_line, _) = line_col(text, a.name.span().start);
    let at = |key: &str| format!("{file}:{name_line}: arms[{i}] ({name:?}) key `{key}`");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!(
            "{}: must be non-empty and use only letters, digits, '-', '_' or '.'",
            at("name")
        );
    }
    if !names.insert(name.clone()) {
        bail!("{}: the name {name:?} is used twice", at("name"));
    }
    let server = raw
        .server
        .merged(a.server.as_ref().unwrap_or(&RawServer::default()));
    let server = expand_server(server).map_err(|e| anyhow::anyhow!("{}: {e}", at("server")))?;
    let mut arm_env = a.env.clone();
    for v in arm_env.values_mut() {
        *v = expand_env(v).map_err(|e| anyhow::anyhow!("{}: {e}", at("env")))?;
    }
    let mut env = server.env.clone().unwrap_or_default();
    env.extend(arm_env);
    let launcher = server.launcher.unwrap_or(LauncherKind::Process);
    let changes = arg_changes(a, &at)?;
    let launch = launch_spec(launcher, &server, &env, &changes, base_dir, &at)?;
    let port = server.port.clone();
    if let Some(PortSpec::Named(s)) = &port {
        if s != "auto" {
            bail!("{}: must be a number or \"auto\"", at("server.port"));
        }
    }
    let url = server
        .url
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:{port}".to_owned());
    if url.contains("{port}") && port.is_none() && launcher != LauncherKind::Process {
        bail!(
            "{}: the URL uses {{port}} but no port is set",
            at("server.url")
        );
    }
    let parse_d = |v: &Option<String>, key: &str, default: Duration| -> anyhow::Result<Duration> {
        match v {
            None => Ok(default),
            Some(s) => humantime::parse_duration(s).map_err(|_| {
                anyhow::anyhow!("{}: {s:?} is not a duration (e.g. \"600s\")", at(key))
            }),
        }
    };
    let health_timeout = parse_d(
        &server.health_timeout,
        "server.health_timeout",
        Duration::from_secs(900),
    )?;
    let metrics_interval = parse_d(
        &server.metrics_interval,
        "server.metrics_interval",
        Duration::from_secs(1),
    )?;

    let (settings, workload_args) = arm_settings(text, raw, a)
        .map_err(|(e, at)| anyhow::anyhow!("{file}:{}: {e}", at.unwrap_or(name_line)))?;
    Ok(ArmPlan {
        experiment: raw.name.clone(),
        name,
        description: a.description.clone(),
        launch,
        changes,
        url,
        port,
        engine: server.engine.unwrap_or(Engine::Auto),
        health_timeout,
        metrics_interval,
        engine_cache: server.engine_cache.unwrap_or(true),
        settings,
        workload_args,
        gpus: server.gpus.unwrap_or(1),
    })
}

/// The arm's argument changes: `set` (a flag and its value; `true` alone, `false` removes
/// it), `remove`, and `args` appended; `${VAR}`s expanded.
fn arg_changes(a: &RawArm, at: &dyn Fn(&str) -> String) -> anyhow::Result<ArgChanges> {
    let mut set = Vec::new();
    for (k, v) in &a.set {
        if !k.starts_with('-') {
            bail!("{}: {k:?} is not a flag (flags start with '-')", at("set"));
        }
        match v {
            toml::Value::Boolean(true) => set.push((k.clone(), None)),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => set.push((k.clone(), Some(s.clone()))),
            toml::Value::Integer(n) => set.push((k.clone(), Some(n.to_string()))),
            toml::Value::Float(x) => set.push((k.clone(), Some(x.to_string()))),
            _ => bail!(
                "{}: the value of {k:?} must be a string, number or boolean",
                at("set")
            ),
        }
    }
    let mut remove = a.remove.clone();
    remove.extend(
        a.set
            .iter()
            .filter(|(_, v)| matches!(v, toml::Value::Boolean(false)))
            .map(|(k, _)| k.clone()),
    );
    let append = a
        .args
        .iter()
        .map(|x| expand_env(x))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", at("args")))?;
    for (_, v) in set.iter_mut() {
        if let Some(x) = v {
            *x = expand_env(x).map_err(|e| anyhow::anyhow!("{}: {e}", at("set")))?;
        }
    }
    Ok(ArgChanges {
        append,
        set,
        remove,
    })
}

/// How the arm's server is started: a process (`command` + `args`), a compose service, or
/// an attached server (which cannot change its arguments).
fn launch_spec(
    launcher: LauncherKind,
    server: &RawServer,
    env: &BTreeMap<String, String>,
    changes: &ArgChanges,
    base_dir: &Path,
    at: &dyn Fn(&str) -> String,
) -> anyhow::Result<LaunchSpec> {
    Ok(match launcher {
        LauncherKind::Process => {
            let command = server
                .command
                .clone()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| anyhow::anyhow!("{}: required for launcher \"process\" (e.g. command = [\"vllm\", \"serve\", \"MODEL\"])", at("server.command")))?;
            let mut args = command[1..].to_vec();
            args.extend(server.args.clone().unwrap_or_default());
            LaunchSpec::Process {
                program: command[0].clone(),
                args,
                env: env.clone(),
                cwd: server.cwd.clone().map(|p| base_dir.join(p)),
            }
        }
        LauncherKind::Compose => {
            let f = server.compose_file.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: required for launcher \"compose\"",
                    at("server.compose_file")
                )
            })?;
            let service = server.service.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: required for launcher \"compose\"",
                    at("server.service")
                )
            })?;
            if server.url.is_none() {
                bail!(
                    "{}: required for launcher \"compose\" (e.g. http://127.0.0.1:8000)",
                    at("server.url")
                );
            }
            LaunchSpec::Compose {
                file: base_dir.join(f),
                service,
                project: server.project.clone(),
                base_args: server.args.clone(),
                env: env.clone(),
            }
        }
        LauncherKind::Attach => {
            if server.url.is_none() {
                bail!("{}: required for launcher \"attach\"", at("server.url"));
            }
            if !changes.append.is_empty() || !changes.set.is_empty() || !changes.remove.is_empty() {
                bail!("{}: an attached server cannot change its arguments: start it yourself, or use launcher \"process\" or \"compose\"", at("args"));
            }
            LaunchSpec::Attach {
                log_file: server.log_file.clone().map(|p| base_dir.join(p)),
                log_command: server.log_command.clone(),
            }
        }
    })
}

/// An arm's settings: `[workload]` then `[arms.workload]` (the arm's keys win), with the
/// `[quality]` keys (then `[arms.quality]`) under their flag names (`suites` is `quality`, `KEY`
/// is `quality_KEY`); and the workload as flags, for display. An error names the file's key,
/// with its line when it can be found.
fn arm_settings(
    text: &str,
    raw: &RawExperiment,
    a: &RawArm,
) -> Result<(RunSettings, Vec<String>), (String, Option<usize>)> {
    let merged = |base: &Option<Spanned<toml::Table>>, arm: &Option<Spanned<toml::Table>>| {
        let mut t = base
            .as_ref()
            .map(|w| w.get_ref().clone())
            .unwrap_or_default();
        if let Some(w) = arm {
            t.extend(w.get_ref().clone());
        }
        let spans: Vec<usize> = [arm.as_ref(), base.as_ref()]
            .into_iter()
            .flatten()
            .map(|w| w.span().start)
            .collect();
        (t, spans)
    };
    let (workload, w_spans) = merged(&raw.workload, &a.workload);
    let (quality, q_spans) = merged(&raw.quality, &a.quality);
    let at_w = |key: &str| key_line(text, &w_spans, key);
    let at_q = |key: &str| key_line(text, &q_spans, key);
    let mut table = toml::Table::new();
    for (k, v) in &workload {
        let v = expand_value(v).map_err(|e| (format!("[workload] key `{k}`: {e}"), at_w(k)))?;
        table.insert(k.clone(), v);
    }
    let args = workload_to_args(&table);
    let mut from_quality = BTreeMap::new();
    for (k, v) in &quality {
        let name = match k.as_str() {
            "suites" => "quality".to_owned(),
            _ => format!("quality_{k}"),
        };
        let v = expand_value(v).map_err(|e| (format!("[quality] key `{k}`: {e}"), at_q(k)))?;
        if table.contains_key(&name) {
            return Err((
                format!("[quality] key `{k}` is also set in [workload] as `{name}`"),
                at_q(k),
            ));
        }
        table.insert(name.clone(), v);
        from_quality.insert(name, k.clone());
    }
    let settings =
        RunSettings::from_table(&table).map_err(|e: SettingsError| {
            match from_quality.get(&e.key) {
                Some(k) => (format!("[quality] {}", e.message(k)), at_q(k)),
                None => (format!("[workload] {}", e.message(&e.key)), at_w(&e.key)),
            }
        })?;
    Ok((settings, args))
}

/// `${NAME}` replaced in a string value, and in the strings of an array.
fn expand_value(v: &toml::Value) -> Result<toml::Value, String> {
    Ok(match v {
        toml::Value::String(s) => toml::Value::String(expand_env(s)?),
        toml::Value::Array(items) => {
            toml::Value::Array(items.iter().map(expand_value).collect::<Result<_, _>>()?)
        }
        other => other.clone(),
    })
}

/// The line of `key = ...`, searched from each table start in turn.
fn key_line(text: &str, starts: &[usize], key: &str) -> Option<usize> {
    let re = regex::Regex::new(&format!(r"(?m)^\s*{}\s*=", regex::escape(key))).ok()?;
    starts
        .iter()
        .find_map(|&s| re.find_at(text, s.min(text.len())))
        .map(|m| {
            line_col(
                text,
                m.start() + m.as_str().len() - m.as_str().trim_start().len(),
            )
            .0
        })
}

/// Replaces `${NAME}` with the environment variable's value; an unset variable is an error.
pub fn expand_env(s: &str) -> Result<String, String> {
    let re = regex::Regex::new(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}").expect("valid");
    let mut missing = None;
    let out = re.replace_all(s, |c: &regex::Captures| match std::env::var(&c[1]) {
        Ok(v) => v,
        Err(_) => {
            missing.get_or_insert_with(|| c[1].to_owned());
            String::new()
        }
    });
    match missing {
        Some(m) => Err(format!(
            "${{{m}}} is used but the environment variable {m} is not set"
        )),
        None => Ok(out.into_owned()),
    }
}

fn expand_server(mut s: RawServer) -> Result<RawServer, String> {
    let list = |v: &mut Option<Vec<String>>| -> Result<(), String> {
        if let Some(items) = v {
            for i in items.iter_mut() {
                *i = expand_env(i)?;
            }
        }
        Ok(())
    };
    list(&mut s.command)?;
    list(&mut s.args)?;
    list(&mut s.log_command)?;
    if let Some(env) = &mut s.env {
        for v in env.values_mut() {
            *v = expand_env(v)?;
        }
    }
    let path = |p: &mut Option<PathBuf>| -> Result<(), String> {
        if let Some(x) = p {
            *x = PathBuf::from(expand_env(&x.display().to_string())?);
        }
        Ok(())
    };
    path(&mut s.cwd)?;
    path(&mut s.compose_file)?;
    path(&mut s.log_file)?;
    if let Some(u) = &mut s.url {
        *u = expand_env(u)?;
    }
    Ok(s)
}

/// A `[workload]` table as `kvbench run` flags, to show and record what an arm runs:
/// `num_requests = 100` is `--num-requests 100`, `ignore_eos = true` is `--ignore-eos`, an
/// array repeats the flag. The values were read by [`RunSettings::from_table`]; this text is
/// never parsed again.
pub fn workload_to_args(t: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in t {
        let flag = format!("--{}", k.replace('_', "-"));
        let items = match v {
            toml::Value::Array(items) => items.as_slice(),
            other => std::slice::from_ref(other),
        };
        for v in items {
            match v {
                toml::Value::Boolean(true) => out.push(flag.clone()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => out.extend([flag.clone(), s.clone()]),
                toml::Value::Integer(n) => out.extend([flag.clone(), n.to_string()]),
                toml::Value::Float(x) => out.extend([flag.clone(), x.to_string()]),
                other => out.extend([flag.clone(), other.to_string()]),
            }
        }
    }
    out
}

/// Applies an arm's changes to base arguments: removals, then replacements in place (or
/// appended when absent), then appended arguments. `--flag=value` and `--flag value` are both
/// understood; a value is a following token that does not start with `-` (or is a number).
pub fn apply_changes(base: &[String], ch: &ArgChanges) -> Vec<String> {
    let mut args: Vec<String> = base.to_vec();
    let takes_value = |args: &[String], i: usize| -> bool {
        args.get(i + 1)
            .is_some_and(|v| !v.starts_with('-') || v.parse::<f64>().is_ok())
    };
    let find = |args: &[String], flag: &str| -> Option<usize> {
        args.iter()
            .position(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    for flag in &ch.remove {
        while let Some(i) = find(&args, flag) {
            let n = if args[i] == *flag && takes_value(&args, i) {
                2
            } else {
                1
            };
            args.drain(i..i + n);
        }
    }
    for (flag, value) in &ch.set {
        let replacement: Vec<String> = match value {
            Some(v) => vec![flag.clone(), v.clone()],
            None => vec![flag.clone()],
        };
        match find(&args, flag) {
            Some(i) => {
                let n = if args[i] == *flag && takes_value(&args, i) {
                    2
                } else {
                    1
                };
                args.splice(i..i + n, replacement);
                // Drop any later duplicates of the flag.
                while let Some(j) = args[i + 1..]
                    .iter()
                    .position(|a| a == flag || a.starts_with(&format!("{flag}=")))
                {
                    let j = i + 1 + j;
                    let n = if args[j] == *flag && takes_value(&args, j) {
                        2
                    } else {
                        1
                    };
                    args.drain(j..j + n);
                }
            }
            None => args.extend(replacement),
        }
    }
    args.extend(ch.append.iter().cloned());
    args
}

/// The value of `flag` in `args` (`--flag v` or `--flag=v`); `Some("")` for a bare flag.
pub fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let i = args
        .iter()
        .position(|a| a == flag || a.starts_with(&format!("{flag}=")))?;
    if let Some(v) = args[i].strip_prefix(&format!("{flag}=")) {
        return Some(v.to_owned());
    }
    match args.get(i + 1) {
        Some(v) if !v.starts_with('-') => Some(v.clone()),
        _ => Some(String::new()),
    }
}

/// Which executor runs the arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutorKind {
    /// In this process, one run after another.
    Local,
    /// Child processes at the same time on disjoint GPU sets of this machine.
    LocalGpus,
    /// Jobs on a Ray cluster.
    Ray,
}

impl ExecutorKind {
    /// The name used on the command line, in files and in results.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorKind::Local => "local",
            ExecutorKind::LocalGpus => "local-gpus",
            ExecutorKind::Ray => "ray",
        }
    }
}

/// A device id in `[executor] gpus`: a number or a string (`"GPU-1b2c..."` UUIDs work too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeviceId {
    /// An index.
    Index(u32),
    /// A name or UUID.
    Name(String),
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceId::Index(i) => write!(f, "{i}"),
            DeviceId::Name(s) => f.write_str(s),
        }
    }
}

/// An experiment's `[executor]` table (docs/scale.md); `kvbench ab --on/--gpus` override it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorTable {
    /// `local`, `local-gpus` or `ray`.
    pub kind: Option<ExecutorKind>,
    /// Ray: the Jobs API (the dashboard), `http://HOST:8265` or `ray://HOST:8265`.
    pub address: Option<String>,
    /// `local-gpus`: the devices to share out among the arms.
    pub gpus: Option<Vec<DeviceId>>,
    /// Ray: ask for this custom resource instead of GPUs (one unit per GPU of the arm).
    pub gpu_resource: Option<String>,
    /// Ray: CPUs reserved for each job's `kvbench` (default 1).
    pub num_cpus: Option<f64>,
    /// The `kvbench` command on the nodes [default: this kvbench's own path].
    pub kvbench: Option<String>,
    /// Ray: environment variables passed to the jobs (besides those the experiment names as
    /// `${VAR}`, which are passed unless they look secret).
    pub env: Option<Vec<String>>,
}

#[cfg(test)]
mod tests;
