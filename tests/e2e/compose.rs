//! The `compose` launcher against a real Docker engine and Docker Compose v2: llama-server from an
//! image built from local files (`scripts/setup-docker.sh`), SmolLM2 mounted as a volume.
//!
//! Checked: two arms through kvbench's override with the user's file left byte-identical; the
//! override and the container's log kept per arm; teardown leaves no container, network or volume
//! of the compose project; a flag the server rejects ends as `unsupported_argument` (read from the
//! container's log); a server that never gets healthy ends as `startup_timeout` with its container
//! removed; `command:` as a string and `entrypoint:` both work.
//!
//! Needs the variables that `scripts/setup-docker.sh` prints (`scripts/test.sh` exports them):
//! `DOCKER_HOST`, `DOCKER_CONFIG`, `KVBENCH_DOCKER`, `KVBENCH_LLAMA_IMAGE`, `SMOLLM2_GGUF`.
//! Without them, or without an answering daemon, each test skips with a printed reason; it fails
//! instead when `KVBENCH_REQUIRE_DOCKER` is set (scripts/test.sh sets it under CI=true).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::engine::{free_port, ENGINE_LOCK};

const BIN: &str = env!("CARGO_BIN_EXE_kvbench");

/// What the tests need from `scripts/setup-docker.sh`.
struct Docker {
    /// The docker CLI.
    cli: String,
    /// The llama-server image (entrypoint: llama-server).
    image: String,
    /// The SmolLM2 GGUF on the host.
    gguf: PathBuf,
}

/// The set-up engine, or `None` after printing why the test skips (a panic when
/// `KVBENCH_REQUIRE_DOCKER` is set).
fn docker() -> Option<Docker> {
    let why = (|| {
        let mut vals = Vec::new();
        for v in ["DOCKER_HOST", "KVBENCH_LLAMA_IMAGE", "SMOLLM2_GGUF"] {
            match std::env::var(v).ok().filter(|s| !s.is_empty()) {
                Some(s) => vals.push(s),
                None => {
                    return Err(format!(
                        "${v} is not set; run scripts/setup-docker.sh (scripts/test.sh does)"
                    ))
                }
            }
        }
        let cli = std::env::var("KVBENCH_DOCKER").unwrap_or_else(|_| "docker".into());
        let ok = Command::new(&cli)
            .args(["compose", "version"])
            .stdin(Stdio::null())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
            && Command::new(&cli)
                .args(["image", "inspect", &vals[1]])
                .stdin(Stdio::null())
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
        if !ok {
            return Err(format!(
                "`{cli} compose version` or `{cli} image inspect {}` fails at {}; run scripts/setup-docker.sh",
                vals[1], vals[0]
            ));
        }
        Ok(Docker {
            cli,
            image: vals[1].clone(),
            gguf: PathBuf::from(&vals[2]),
        })
    })();
    match why {
        Ok(d) => Some(d),
        Err(why) => {
            if std::env::var_os("KVBENCH_REQUIRE_DOCKER").is_some() {
                panic!("KVBENCH_REQUIRE_DOCKER is set but {why}");
            }
            // Straight to stderr, so it shows even under the test harness's output capture.
            let _ = writeln!(std::io::stderr(), "SKIPPED: docker: {why}");
            None
        }
    }
}

impl Docker {
    fn out(&self, args: &[&str]) -> String {
        let o = Command::new(&self.cli)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{} {args:?}: {}",
            self.cli,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The project's name as compose resolves it for `file`.
    fn project(&self, file: &Path) -> String {
        let c: serde_json::Value = serde_json::from_str(&self.out(&[
            "compose",
            "-f",
            &file.display().to_string(),
            "config",
            "--format",
            "json",
        ]))
        .unwrap();
        c["name"].as_str().unwrap().to_owned()
    }

    /// Containers, networks and volumes labelled with the project, one line each.
    fn leftovers(&self, project: &str) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={project}");
        let mut left = Vec::new();
        for (kind, format) in [
            (["ps", "-a"], "{{.Names}}"),
            (["network", "ls"], "{{.Name}}"),
            (["volume", "ls"], "{{.Name}}"),
        ] {
            let out = self.out(&[kind[0], kind[1], "--filter", &label, "--format", format]);
            left.extend(
                out.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| format!("{} {l}", kind[0])),
            );
        }
        left
    }

    /// Removes whatever a failed test left (so that a later test starts clean).
    fn down(&self, file: &Path) {
        let _ = Command::new(&self.cli)
            .args(["compose", "-f", &file.display().to_string(), "down", "-v"])
            .stdin(Stdio::null())
            .output();
    }
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// A compose file like the user's: service `llama` from the image, the model's directory as a
/// read-only volume, a named volume, `init: true`, the port published on 127.0.0.1 only. `run`
/// is the YAML of the service's `command:`/`entrypoint:` lines.
fn compose_file(d: &Docker, host_port: u16, run: &str) -> String {
    format!(
        "services:\n  llama:\n    image: {}\n    init: true\n    ports:\n      - \"127.0.0.1:{host_port}:8080\"\n    volumes:\n      - {}\n      - scratch:/scratch\n{run}volumes:\n  scratch: {{}}\n",
        q(&d.image),
        q(&format!("{}:/models:ro", d.gguf.parent().unwrap().display())),
    )
}

fn model_in_container(d: &Docker) -> String {
    format!("/models/{}", d.gguf.file_name().unwrap().to_string_lossy())
}

/// The usual `command:` list: llama-server's arguments (the image's entrypoint is llama-server).
fn command_list(d: &Docker, extra: &[&str]) -> String {
    let mut args = vec![
        "-m".to_owned(),
        model_in_container(d),
        "--host".into(),
        "0.0.0.0".into(),
        "--port".into(),
        "8080".into(),
        "-c".into(),
        "1024".into(),
        "-np".into(),
        "1".into(),
        "-t".into(),
        "1".into(),
        "--alias".into(),
        "smollm2".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    format!(
        "    command: [{}]\n",
        args.iter().map(|a| q(a)).collect::<Vec<_>>().join(", ")
    )
}

/// An experiment for the compose file `compose.yml` in its folder.
fn experiment(host_port: u16, health_timeout: &str, arms: &str) -> String {
    format!(
        r#"name = "cmp"
[server]
launcher = "compose"
compose_file = "compose.yml"
service = "llama"
url = "http://127.0.0.1:{host_port}"
health_timeout = "{health_timeout}"
[workload]
num_requests = 3
concurrency = 1
input_len = 32
max_tokens = 4
ignore_eos = true
warmup = 0
{arms}"#
    )
}

/// A folder with `compose.yml` and `exp.toml`.
struct Setup {
    dir: tempfile::TempDir,
    compose: PathBuf,
    exp: PathBuf,
    out: PathBuf,
    project: String,
}

fn setup(d: &Docker, compose_text: &str, exp_text: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let compose = dir.path().join("compose.yml");
    std::fs::write(&compose, compose_text).unwrap();
    let exp = dir.path().join("exp.toml");
    std::fs::write(&exp, exp_text).unwrap();
    let out = dir.path().join("results");
    let project = d.project(&compose);
    Setup {
        dir,
        compose,
        exp,
        out,
        project,
    }
}

async fn kvbench(args: Vec<String>) -> Output {
    let o = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    eprintln!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

async fn run_arm(s: &Setup, arm: &str) -> Output {
    kvbench(vec![
        "run".into(),
        "--config".into(),
        s.exp.display().to_string(),
        "--arm".into(),
        arm.into(),
        "--out-dir".into(),
        s.out.display().to_string(),
        "--quiet".into(),
    ])
    .await
}

/// The arm's result JSON and the path stem its other files share.
fn result(out: &Path, arm: &str) -> (serde_json::Value, String) {
    let prefix = format!("benchmark_cmp_{arm}_");
    let path = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(&prefix) && n.ends_with(".json")
        })
        .unwrap_or_else(|| panic!("no {prefix}*.json in {}", out.display()));
    let v = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    (v, path.with_extension("").display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_ab_two_arms_leave_the_users_file_and_nothing_else() {
    let Some(d) = docker() else { return };
    let _guard = ENGINE_LOCK.lock().await;
    let port = free_port();
    let s = setup(
        &d,
        // `-lv 4`: llama.cpp logs its KV cache types only at debug verbosity (its /props
        // does not report them), and config_check reads them from the log.
        &compose_file(&d, port, &command_list(&d, &["-ctk", "f16", "-lv", "4"])),
        &experiment(
            port,
            "120s",
            "[[arms]]\nname = \"f16\"\n[[arms]]\nname = \"q8_0\"\nset = { \"-ctk\" = \"q8_0\" }\n",
        ),
    );
    let user_bytes = bytes(&s.compose);
    let o = kvbench(vec![
        "ab".into(),
        s.exp.display().to_string(),
        "--out-dir".into(),
        s.out.display().to_string(),
        "-q".into(),
    ])
    .await;
    let left = d.leftovers(&s.project);
    d.down(&s.compose);
    assert_eq!(
        bytes(&s.compose),
        user_bytes,
        "the user's compose file changed"
    );
    assert!(
        left.is_empty(),
        "project {} left behind: {left:?}",
        s.project
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (arm, ctk) in [("f16", "f16"), ("q8_0", "q8_0")] {
        let (v, stem) = result(&s.out, arm);
        assert_eq!(v["outcome"], "ok", "{arm}: {v:#}");
        let ov = std::fs::read_to_string(format!("{stem}.compose.override.yml")).unwrap();
        assert!(
            ov.contains(&format!("\"-ctk\", \"{ctk}\"")) && ov.contains("  llama:\n    command: ["),
            "{arm}: {ov}"
        );
        let log = std::fs::read_to_string(format!("{stem}.log")).unwrap();
        // The container's own output, through `docker compose logs`.
        assert!(
            log.contains("llama-1  |") && log.contains("listening on"),
            "{arm}: {log}"
        );
        let args = v["server"]["launch_args"].as_array().unwrap();
        let at = args.iter().position(|a| a == "-ctk").unwrap();
        assert_eq!(args[at + 1], ctk, "{arm}: {args:?}");
        // What llama.cpp really ran, read from the container's log (lines prefixed by compose).
        let check = &v["server"]["facts"]["config_check"];
        assert_eq!(check["requested"]["cache_type_k"], ctk, "{arm}: {check}");
        assert_eq!(check["effective"]["cache_type_k"], ctk, "{arm}: {check}");
        assert_eq!(check["effective"]["cache_type_v"], "f16", "{arm}: {check}");
        assert_eq!(check["mismatches"], serde_json::json!([]), "{arm}: {check}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_rejected_flag_is_unsupported_argument() {
    let Some(d) = docker() else { return };
    let _guard = ENGINE_LOCK.lock().await;
    let port = free_port();
    let s = setup(
        &d,
        &compose_file(&d, port, &command_list(&d, &[])),
        &experiment(
            port,
            "60s",
            "[[arms]]\nname = \"bad\"\nargs = [\"--no-such-kvbench-flag\"]\n",
        ),
    );
    let user_bytes = bytes(&s.compose);
    let o = run_arm(&s, "bad").await;
    let left = d.leftovers(&s.project);
    d.down(&s.compose);
    assert!(
        left.is_empty(),
        "project {} left behind: {left:?}",
        s.project
    );
    assert_eq!(bytes(&s.compose), user_bytes);
    assert!(!o.status.success());
    let (v, stem) = result(&s.out, "bad");
    assert_eq!(v["outcome"], "unsupported_argument", "{v:#}");
    let log = std::fs::read_to_string(format!("{stem}.log")).unwrap();
    assert!(log.contains("--no-such-kvbench-flag"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_never_healthy_is_startup_timeout_and_removed() {
    let Some(d) = docker() else { return };
    let _guard = ENGINE_LOCK.lock().await;
    let port = free_port();
    // The server listens on 9090 in the container; the file publishes 8080, so kvbench's
    // health check never gets an answer.
    let s = setup(
        &d,
        &compose_file(&d, port, &command_list(&d, &[])),
        &experiment(
            port,
            "5s",
            "[[arms]]\nname = \"deaf\"\nset = { \"--port\" = \"9090\" }\n",
        ),
    );
    let t0 = std::time::Instant::now();
    let o = run_arm(&s, "deaf").await;
    let took = t0.elapsed();
    let left = d.leftovers(&s.project);
    d.down(&s.compose);
    assert!(
        left.is_empty(),
        "project {} left behind: {left:?}",
        s.project
    );
    assert!(!o.status.success());
    let (v, _) = result(&s.out, "deaf");
    assert_eq!(v["outcome"], "startup_timeout", "{v:#}");
    // init: true lets llama-server get SIGTERM and stop at once, not after compose's 10 s.
    assert!(took.as_secs() < 30, "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_command_string_and_entrypoint_both_work() {
    let Some(d) = docker() else { return };
    let _guard = ENGINE_LOCK.lock().await;
    let model = model_in_container(&d);
    let shapes = [
        (
            "string",
            format!(
                "    command: \"-m {model} --host 0.0.0.0 --port 8080 -c 1024 -np 1 -t 1 -ctk f16\"\n"
            ),
        ),
        (
            "entrypoint",
            format!(
                "    entrypoint: [\"/usr/local/bin/llama-server\", \"-m\", {}]\n    command: [\"--host\", \"0.0.0.0\", \"--port\", \"8080\", \"-c\", \"1024\", \"-np\", \"1\", \"-t\", \"1\", \"-ctk\", \"f16\"]\n",
                q(&model)
            ),
        ),
    ];
    for (shape, run) in shapes {
        let port = free_port();
        let s = setup(
            &d,
            &compose_file(&d, port, &run),
            &experiment(
                port,
                "120s",
                "[[arms]]\nname = \"q8\"\nset = { \"-ctk\" = \"q8_0\" }\n",
            ),
        );
        let user_bytes = bytes(&s.compose);
        let o = run_arm(&s, "q8").await;
        let left = d.leftovers(&s.project);
        d.down(&s.compose);
        assert!(left.is_empty(), "{shape}: left behind: {left:?}");
        assert_eq!(bytes(&s.compose), user_bytes, "{shape}");
        assert!(
            o.status.success(),
            "{shape}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (v, stem) = result(&s.out, "q8");
        assert_eq!(v["outcome"], "ok", "{shape}: {v:#}");
        let log = std::fs::read_to_string(format!("{stem}.log")).unwrap();
        assert!(log.contains("listening on"), "{shape}: {log}");
        let ov = std::fs::read_to_string(format!("{stem}.compose.override.yml")).unwrap();
        assert!(ov.contains("\"-ctk\", \"q8_0\""), "{shape}: {ov}");
        assert!(!ov.contains("entrypoint"), "{shape}: {ov}");
        drop(s.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_compose_arm_leaves_nothing_behind() {
    let Some(d) = docker() else { return };
    let _guard = ENGINE_LOCK.lock().await;
    let port = free_port();
    let s = setup(
        &d,
        &compose_file(&d, port, &command_list(&d, &[])),
        &experiment(
            port,
            "120s",
            "[[arms]]\nname = \"f16\"\n[[arms]]\nname = \"q8_0\"\nset = { \"-ctk\" = \"q8_0\" }\n",
        )
        .replace("num_requests = 3", "num_requests = 100000"),
    );
    let user_bytes = bytes(&s.compose);
    let mut child = Command::new(BIN)
        .arg("ab")
        .arg(&s.exp)
        .args(["--out-dir", &s.out.display().to_string(), "--repeat", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read stderr until the first arm is healthy, then let it measure a moment.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let t0 = std::time::Instant::now();
    let mut seen = String::new();
    while !seen.contains("healthy after") {
        match rx.recv_timeout(std::time::Duration::from_secs(5)) {
            Ok(l) => seen.push_str(&(l + "\n")),
            Err(_) => assert!(t0.elapsed().as_secs() < 150, "never healthy: {seen}"),
        }
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    while let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
        seen.push_str(&(l + "\n"));
    }
    let left = d.leftovers(&s.project);
    d.down(&s.compose);
    assert!(
        left.is_empty(),
        "left behind after Ctrl-C: {left:?}\n{seen}"
    );
    assert_eq!(bytes(&s.compose), user_bytes);
    assert_eq!(status.code(), Some(130), "{seen}");
    // The interrupted arm's result holds what it measured; the second arm never started.
    let (v, _) = result(&s.out, "f16");
    assert_eq!(v["interrupted"], true, "{v:#}");
    assert!(v["requests"]["completed"].as_u64().unwrap() > 0, "{v:#}");
    assert!(
        !std::fs::read_dir(&s.out).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("_q8_0_")),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_was_running_is_brought_back_with_the_users_own_command() {
    let Some(d) = docker() else { return };
    let _guard = ENGINE_LOCK.lock().await;
    let port = free_port();
    let s = setup(
        &d,
        &compose_file(&d, port, &command_list(&d, &["-ctk", "f16"])),
        &experiment(
            port,
            "120s",
            "[[arms]]\nname = \"q8\"\nset = { \"-ctk\" = \"q8_0\" }\n",
        ),
    );
    let file = s.compose.display().to_string();
    // The user's service, up before kvbench runs.
    d.out(&["compose", "-f", &file, "up", "-d", "llama"]);
    let command = |d: &Docker| {
        let id = d.out(&["compose", "-f", &file, "ps", "-q", "llama"]);
        let id = id.trim();
        assert!(!id.is_empty(), "the service is not running");
        d.out(&["inspect", "--format", "{{json .Config.Cmd}}", id])
    };
    let before = command(&d);
    assert!(before.contains("\"f16\""), "{before}");
    let o = run_arm(&s, "q8").await;
    let after = command(&d);
    let state = d.out(&[
        "compose",
        "-f",
        &file,
        "ps",
        "--format",
        "{{.State}}",
        "llama",
    ]);
    d.down(&s.compose);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (v, _) = result(&s.out, "q8");
    assert_eq!(v["outcome"], "ok", "{v:#}");
    let args = v["server"]["launch_args"].as_array().unwrap();
    assert!(
        args.iter().any(|a| a == "q8_0"),
        "the arm ran q8_0: {args:?}"
    );
    // Back with the user's own command, running.
    assert_eq!(after, before);
    assert_eq!(state.trim(), "running", "{state}");
}
