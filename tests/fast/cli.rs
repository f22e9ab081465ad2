//! The binary as a user meets it: bad input gives one line on stderr and a non-zero exit;
//! Ctrl-C keeps what was measured; secrets never reach results or logs.

use crate::common;

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kvbench::testserver::{ModelsMode, TestServerConfig};

fn kvbench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvbench"))
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output().unwrap())
        .await
        .unwrap()
}

fn one_line_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.contains(needle), "{needle:?} not in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn unreachable_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = kvbench();
    c.args([
        "run",
        "--url",
        &format!("http://127.0.0.1:{}", free_port()),
        "-o",
    ])
    .arg(dir.path().join("r.json"));
    let o = output(c).await;
    one_line_error(&o, "cannot reach");
    assert!(!dir.path().join("r.json").exists());
}

#[tokio::test]
async fn unknown_model_lists_served_ones() {
    let s = common::server(TestServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = kvbench();
    c.args(["run", "--url", &s.url(), "--model", "nope", "-o"])
        .arg(dir.path().join("r.json"));
    let o = output(c).await;
    one_line_error(&o, "\"nope\" is not served");
    assert!(String::from_utf8_lossy(&o.stderr).contains("test-model"));
}

#[tokio::test]
async fn non_openai_server() {
    let s = common::server(TestServerConfig {
        models: ModelsMode::Html,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = kvbench();
    c.args(["run", "--url", &s.url(), "-o"])
        .arg(dir.path().join("r.json"));
    one_line_error(&output(c).await, "did not return JSON");
}

#[tokio::test]
async fn invalid_flags_are_rejected() {
    let cases: &[(&[&str], &str)] = &[
        (&["--concurrency", "0"], "not a positive integer"),
        (&["--request-rate", "0"], "not a positive rate"),
        (
            &["--concurrency", "2", "--request-rate", "3"],
            "cannot be used with",
        ),
        (&["--endpoint", "foo"], "invalid value 'foo'"),
        (&["--duration", "soon"], "not a duration"),
        (&["--burstiness", "0.5"], "--request-rate"),
        (&["--dataset", "csv:x"], "unknown dataset"),
        (&["--header", "novalue"], "expected K:V"),
    ];
    for (args, needle) in cases {
        let mut c = kvbench();
        c.args(["run", "--url", "http://127.0.0.1:1", "-o", "/tmp/x.json"])
            .args(*args);
        let o = output(c).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
    }
}

#[tokio::test]
async fn invalid_values_fail_validation_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let missing = dir.path().join("missing.jsonl");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"ok\"}\n{\"oops\": 1}\n").unwrap();
    let s = common::server(TestServerConfig::default()).await;
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--url".into(), "localhost:8000".into()], "scheme"),
        (
            vec![
                "--url".into(),
                s.url(),
                "--dataset".into(),
                format!("jsonl:{}", missing.display()),
            ],
            "no such file",
        ),
        (
            vec![
                "--url".into(),
                s.url(),
                "--dataset".into(),
                format!("jsonl:{}", bad.display()),
            ],
            "bad.jsonl:2: expected a \"prompt\" or \"messages\" field",
        ),
        (
            vec![
                "--url".into(),
                s.url(),
                "--api-key-env".into(),
                "KVBENCH_SURELY_UNSET_VAR".into(),
            ],
            "KVBENCH_SURELY_UNSET_VAR is not set",
        ),
        (
            vec![
                "--url".into(),
                s.url(),
                "--tokenizer".into(),
                "/nonexistent/tokenizer.json".into(),
            ],
            "no such file",
        ),
        (
            vec![
                "--url".into(),
                s.url(),
                "--endpoint".into(),
                "completions".into(),
                "--images".into(),
                "1".into(),
            ],
            "--images needs --endpoint chat",
        ),
    ];
    for (args, needle) in cases {
        let mut c = kvbench();
        c.arg("run").args(&args).arg("-o").arg(&out);
        one_line_error(&output(c).await, needle);
    }
    let mut c = kvbench();
    c.args(["run", "--url", &s.url(), "-o", "/nonexistent-dir/r.json"]);
    one_line_error(&output(c).await, "does not exist");
}

#[tokio::test]
async fn all_requests_failing_exits_nonzero_with_results_written() {
    let s = common::server(TestServerConfig {
        fault: Some(kvbench::testserver::Fault::HttpStatus(500)),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let mut c = kvbench();
    c.args(["run", "--url", &s.url(), "-n", "3", "-q", "-o"])
        .arg(&out);
    let o = output(c).await;
    one_line_error(&o, "all 3 measured requests failed (http_500: 3)");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(v["outcome"], "all_failed");
    assert!(
        v["metrics"]["ttft_ms"]["p50"].is_null(),
        "unmeasured is null, not 0"
    );
}

#[tokio::test]
async fn secrets_never_reach_results_or_output() {
    let s = common::server(TestServerConfig {
        ttft: Duration::from_millis(1),
        itl: Duration::from_millis(1),
        output_tokens: Some(2),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let mut c = kvbench();
    c.env("MY_KEY", "sk-supersecret-123")
        .args([
            "run",
            "--url",
            &s.url(),
            "-n",
            "2",
            "--api-key-env",
            "MY_KEY",
        ])
        .args(["--header", "X-Token: hdr-secret-456", "-o"])
        .arg(&out);
    let o = output(c).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut everything = std::fs::read_to_string(&out).unwrap();
    everything += &std::fs::read_to_string(dir.path().join("r.requests.jsonl")).unwrap();
    everything += &String::from_utf8_lossy(&o.stdout);
    everything += &String::from_utf8_lossy(&o.stderr);
    assert!(!everything.contains("sk-supersecret-123"));
    assert!(!everything.contains("hdr-secret-456"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["config"]["api_key_env"], "MY_KEY");
    assert_eq!(v["config"]["headers"][0], "X-Token");
}

#[tokio::test]
async fn ctrl_c_keeps_what_was_measured() {
    let s = common::server(TestServerConfig {
        ttft: Duration::from_millis(10),
        itl: Duration::from_millis(100),
        output_tokens: Some(100),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let mut c = kvbench();
    c.args(["run", "--url", &s.url(), "-n", "50", "-c", "4", "-q", "-o"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let sent = Instant::now();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(v["interrupted"], true);
    assert_eq!(v["outcome"], "interrupted");
    assert_eq!(
        v["errors"]["cancelled"], 4,
        "the 4 in-flight requests were cancelled"
    );
    let journal = std::fs::read_to_string(dir.path().join("r.requests.jsonl")).unwrap();
    assert_eq!(journal.lines().count(), 4);
    assert!(journal.lines().all(|l| l.contains("\"chunk_ns\":[")));
}

#[tokio::test]
async fn scan_logs_reads_any_bytes_from_a_file_or_stdin() {
    let fixture = format!(
        "{}/tests/fixtures/logs/vllm-fp8-tp2-wsl.log",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut log = b"progress \xff\n".to_vec();
    log.extend(std::fs::read(&fixture).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.log");
    std::fs::write(&file, &log).unwrap();
    for from_stdin in [false, true] {
        let mut c = kvbench();
        c.args(["scan-logs", "--json"]);
        if from_stdin {
            c.arg("-").stdin(Stdio::piped());
        } else {
            c.arg(&file).stdin(Stdio::null());
        }
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        if from_stdin {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&log).unwrap();
        }
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "stdin {from_stdin}: {err}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let ids: Vec<&str> = v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap())
            .collect();
        for id in [
            "fp8_q_scale_missing",
            "fp8_kv_scale_default",
            "fp8_qprob_scale_uncalibrated",
        ] {
            assert!(ids.contains(&id), "stdin {from_stdin}: {id} in {ids:?}");
        }
    }
}

#[test]
fn the_command_line_definition_is_consistent() {
    // clap's own checks: conflicting names, bad defaults, groups naming missing arguments.
    use clap::CommandFactory;
    kvbench::cli::Cli::command().debug_assert();
}
