//! Shared by the executor tests (tests/fast/executors.rs, tests/e2e/ray.rs): experiments whose
//! arms are `kvbench test-server`s, and readers of what `kvbench ab` wrote.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_kvbench");

/// An experiment of `arms` test-server arms (each needs `gpus` GPUs) with `requests` requests
/// each; `marker` is passed to every server as an ignored argument, so a test can find its
/// servers among the machine's processes. `extra` is appended (e.g. an `[executor]` table).
pub fn experiment(dir: &Path, arms: &[&str], requests: u32, marker: &str, extra: &str) -> PathBuf {
    let mut text = format!(
        r#"name = "par"
[server]
command = ["{BIN}", "test-server", "--listen", "127.0.0.1:{{port}}", "--ttft-ms", "50", "--itl-ms", "5", "--tokens", "8", "--", "{marker}"]
port = "auto"
[workload]
num_requests = {requests}
concurrency = 4
max_tokens = 8
warmup = 2
[decision]
min_warnings_resolved = 0
{extra}
"#
    );
    for a in arms {
        text.push_str(&format!("[[arms]]\nname = \"{a}\"\n"));
    }
    let p = dir.join("par.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The run results in `dir`, as (file, JSON), by file name.
pub fn results(dir: &Path) -> Vec<(PathBuf, Value)> {
    let mut v: Vec<(PathBuf, Value)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("benchmark_") && n.ends_with(".json")
        })
        .map(|p| {
            let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p, v)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The comparison JSON in `dir`.
pub fn comparison(dir: &Path) -> Value {
    let p = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("comparison_") && n.ends_with(".json")
        })
        .expect("a comparison JSON");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A result's time span in seconds since the epoch.
pub fn span(r: &Value) -> (f64, f64) {
    let t = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(r[k].as_str().unwrap())
            .unwrap()
            .timestamp_millis() as f64
            / 1000.0
    };
    (t("started_at"), t("finished_at"))
}

/// The form of a JSON value: every path of object keys (array elements under `[]`), with the
/// type of the value there, leaving out the subtrees under `skip` keys.
pub fn form(v: &Value, skip: &[&str]) -> BTreeSet<String> {
    fn walk(v: &Value, path: String, skip: &[&str], out: &mut BTreeSet<String>) {
        let kind = match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        out.insert(format!("{path}: {kind}"));
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if !skip.contains(&k.as_str()) {
                        walk(x, format!("{path}.{k}"), skip, out);
                    }
                }
            }
            Value::Array(a) => {
                for x in a {
                    walk(x, format!("{path}[]"), skip, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(v, String::new(), skip, &mut out);
    out
}

/// PIDs of processes whose command line holds `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

/// A marker unique to this test process and name.
pub fn marker(name: &str) -> String {
    format!("kvbench-test-{name}-{}", std::process::id())
}

/// Adds an arm whose server command does not exist (its outcome: `launch_error`).
pub fn add_broken_arm(exp: &Path) {
    let text = std::fs::read_to_string(exp).unwrap()
        + "[[arms]]\nname = \"broken\"\nserver = { command = [\"/nonexistent/kvbench-no-such-server\"] }\n";
    std::fs::write(exp, text).unwrap();
}

/// The outcome of `arm`'s first result among `rs`.
pub fn outcome(rs: &[(PathBuf, Value)], arm: &str) -> Option<String> {
    rs.iter()
        .find(|(_, r)| r["arm"] == arm)
        .map(|(_, r)| r["outcome"].as_str().unwrap().to_owned())
}

/// Starts `cmd` (a `kvbench ab`), waits until `servers` processes hold `marker` (the arms'
/// servers are up), lets them measure 2 s, sends SIGINT, and waits up to `limit` for the end:
/// the exit status and what it wrote on stderr.
pub fn interrupt_once_serving(
    mut cmd: std::process::Command,
    marker: &str,
    servers: usize,
    limit: std::time::Duration,
) -> (std::process::ExitStatus, String) {
    use std::process::Stdio;
    use std::time::Instant;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while processes_with(marker).len() < servers {
        assert!(t0.elapsed() < limit, "the servers did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t1.elapsed() < limit, "kvbench ab did not end after SIGINT");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status, err)
}
