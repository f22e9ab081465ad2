//! Signals that end a run (Ctrl-C, `timeout`'s and CI's SIGTERM, a closed terminal's SIGHUP):
//! kvbench stops measuring, tears the server down and writes what was measured, then exits with
//! the interrupted code. A second signal hurries the teardown (SIGKILL instead of waiting for a
//! server that ignores SIGTERM) but still kills the server and writes the result.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_kvbench");

/// A test server slow enough that a run lasts minutes (`$KVBENCH` and `$PORT` set by the caller).
const SLOW_SERVER: &str =
    r#""$KVBENCH" test-server --listen "127.0.0.1:$PORT" --ttft-ms 50 --itl-ms 50 --tokens 100"#;

/// The server's process group, killed when the test ends whatever happened (an orphan left by
/// a failing run must not outlive the test).
struct Group(Option<Pid>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = killpg(p, Signal::SIGKILL);
        }
    }
}

/// A `kvbench run --config` arm in progress, with its stderr lines arriving on a channel.
struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
    server: Group,
    dir: tempfile::TempDir,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Run {
    /// Starts an arm whose server (a slow test server, so the run lasts minutes) writes its pid
    /// to a file first; `ignore_term` makes it ignore SIGTERM, as a hung engine would.
    fn start(ignore_term: bool) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("server.pid");
        let trap = if ignore_term { "trap '' TERM; " } else { "" };
        let script = format!(
            "echo $$ > '{}'; {trap}exec {SLOW_SERVER}",
            pidfile.display()
        );
        let server = format!(
            "command = [\"sh\", \"-c\", \"{}\"]\nport = \"auto\"\nenv = {{ KVBENCH = \"{BIN}\", PORT = \"{{port}}\" }}",
            script.replace('"', "\\\"")
        );
        let mut run = Run::start_with(dir, &server, vec![]);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        run.server = Group(Some(Pid::from_raw(pid)));
        run
    }

    /// Starts an arm with `server` as its `[server]` table and waits until it measures.
    fn start_with(dir: tempfile::TempDir, server: &str, envs: Vec<(String, String)>) -> Run {
        let exp = dir.path().join("exp.toml");
        std::fs::write(
            &exp,
            format!(
                r#"name = "t"
[server]
{server}
[workload]
num_requests = 100
concurrency = 2
max_tokens = 100

[[arms]]
name = "a"
"#
            ),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&exp)
            .args(["--arm", "a", "--out-dir"])
            .arg(dir.path())
            .env("KVBENCH_CACHE", dir.path().join("cache"))
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut run = Run {
            child,
            lines,
            stderr: Vec::new(),
            server: Group(None),
            dir,
        };
        run.wait_for_line("healthy after", Duration::from_secs(60));
        // Mid-run: requests are in flight.
        std::thread::sleep(Duration::from_millis(500));
        run
    }

    fn wait_for_line(&mut self, needle: &str, limit: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let found = l.contains(needle);
                    self.stderr.push(l);
                    if found {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no {needle:?} on stderr: {:#?}", self.stderr);
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for kvbench to exit (at most `limit`): its status and how long it took.
    fn wait(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.stderr.push(l);
                }
                return (s, t0.elapsed());
            }
            assert!(
                t0.elapsed() < limit,
                "kvbench still running after {limit:?}: {:#?}",
                self.stderr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn server_group_is_gone(&self) -> bool {
        let pgid = self.server.0.expect("server pid known");
        killpg(pgid, None) == Err(nix::errno::Errno::ESRCH)
    }

    fn result(&self) -> serde_json::Value {
        let path: PathBuf = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| is_result(p))
            .unwrap_or_else(|| panic!("no result JSON written; stderr: {:#?}", self.stderr));
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    }
}

fn is_result(p: &Path) -> bool {
    let n = p.file_name().unwrap().to_string_lossy().into_owned();
    n.starts_with("benchmark_t_a_") && n.ends_with(".json")
}

/// One signal mid-run: exit 130 soon after, the partial result written, the server gone.
fn one_signal_ends_the_run_cleanly(sig: Signal) {
    let mut run = Run::start(false);
    run.signal(sig);
    let (status, took) = run.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(130), "{sig}: {:#?}", run.stderr);
    assert!(took < Duration::from_secs(15), "{sig}: exit took {took:?}");
    assert!(run.server_group_is_gone(), "{sig}: the server survived");
    let v = run.result();
    assert_eq!(v["interrupted"], true, "{sig}");
    assert_eq!(v["outcome"], "interrupted", "{sig}");
    assert!(v["requests"]["total"].as_u64().unwrap() > 0, "{sig}: {v}");
}

#[test]
fn sigterm_mid_run_writes_the_result_and_leaves_no_orphan() {
    one_signal_ends_the_run_cleanly(Signal::SIGTERM);
}

#[test]
fn sighup_mid_run_writes_the_result_and_leaves_no_orphan() {
    one_signal_ends_the_run_cleanly(Signal::SIGHUP);
}

/// A server that ignores SIGTERM: the first signal starts the teardown (which would wait 20 s
/// for the server), the second makes kvbench kill it at once; the result is still written.
fn second_signal_hurries_the_teardown(first: Signal, second: Signal) {
    let mut run = Run::start(true);
    run.signal(first);
    run.wait_for_line("interrupted", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "kvbench waits for the server that ignores SIGTERM"
    );
    run.signal(second);
    let (status, took) = run.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(130), "{:#?}", run.stderr);
    assert!(
        took < Duration::from_secs(8),
        "the second signal did not cut the 20 s grace: {took:?}"
    );
    assert!(run.server_group_is_gone(), "the server survived");
    let v = run.result();
    assert_eq!(v["interrupted"], true);
    assert_eq!(v["outcome"], "interrupted");
}

#[test]
fn a_second_ctrl_c_kills_a_stubborn_server_and_still_writes_the_result() {
    second_signal_hurries_the_teardown(Signal::SIGINT, Signal::SIGINT);
}

#[test]
fn sigterm_then_sighup_kills_a_stubborn_server_and_still_writes_the_result() {
    second_signal_hurries_the_teardown(Signal::SIGTERM, Signal::SIGHUP);
}

/// Stand-in docker for a service that takes its time to stop: `stop` waits until `kill` ends it
/// (as `docker compose stop` returns once the container is gone).
const SLOW_STOP_DOCKER: &str = r#"#!/bin/sh
echo "$*" >> "$DOCKER_RECORD"
case "$*" in
  *" config --format json") printf '{"services":{"vllm":{"command":["--model","m"]}}}\n' ;;
  *" logs -f "*) exec sleep 1000 ;;
  *" stop vllm") echo $$ > "$DOCKER_RECORD.stop"; exec sleep 60 ;;
  *" kill vllm") kill "$(cat "$DOCKER_RECORD.stop")" ;;
esac
exit 0
"#;

#[test]
fn a_second_signal_kills_a_compose_service_that_is_slow_to_stop() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = {
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .args(["-c", &format!("exec {SLOW_SERVER}")])
            .env("KVBENCH", BIN)
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let _server = Group(Some(Pid::from_raw(server.id() as i32)));
    let stub = dir.path().join("docker");
    std::fs::write(&stub, SLOW_STOP_DOCKER).unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("compose.yml"), "services: {}\n").unwrap();
    let record = dir.path().join("docker.log");
    let envs = vec![
        ("KVBENCH_DOCKER".to_owned(), stub.display().to_string()),
        ("DOCKER_RECORD".to_owned(), record.display().to_string()),
    ];
    let table = format!(
        "launcher = \"compose\"\ncompose_file = \"compose.yml\"\nservice = \"vllm\"\nurl = \"http://127.0.0.1:{port}\"\nhealth_timeout = \"30s\""
    );
    let mut run = Run::start_with(dir, &table, envs);
    run.signal(Signal::SIGTERM);
    run.wait_for_line("interrupted", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "kvbench waits for `docker compose stop`"
    );
    run.signal(Signal::SIGTERM);
    let (status, took) = run.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(130), "{:#?}", run.stderr);
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let recorded = std::fs::read_to_string(&record).unwrap();
    let lines: Vec<&str> = recorded.lines().collect();
    let stop = lines.iter().position(|l| l.ends_with(" stop vllm"));
    let kill = lines.iter().position(|l| l.ends_with(" kill vllm"));
    // The service was not running before (`ps -q` printed nothing): its anonymous volumes go too.
    let rm = lines.iter().position(|l| l.ends_with(" rm -f -v vllm"));
    assert!(
        stop < kill && kill < rm && stop.is_some(),
        "stop, then kill, then rm: {lines:#?}"
    );
    assert_eq!(run.result()["outcome"], "interrupted");
}
