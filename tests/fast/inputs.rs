//! What the user hands kvbench, pushed to its edges (issue 19): output paths that are links,
//! pipes or folders, a disk that fills, values far beyond what a run can mean, secrets in URLs,
//! headers and experiment files, and logs too large to hold. Each gets a clear error or is
//! handled; none panics, hangs, or loses what was measured.

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kvbench::testserver::TestServerConfig;

const BIN: &str = env!("CARGO_BIN_EXE_kvbench");

fn kvbench() -> Command {
    let mut c = Command::new(BIN);
    c.stdin(Stdio::null());
    c
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// Waits for `child` at most `limit`; kills it (and says so) when it runs longer.
async fn output_within(mut cmd: Command, limit: Duration) -> (Output, bool) {
    tokio::task::spawn_blocking(move || {
        let mut child: Child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let mut killed = false;
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > limit {
                let _ = child.kill();
                killed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (child.wait_with_output().unwrap(), killed)
    })
    .await
    .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Why `o` is not a clean rejection (exit status 2 from clap or 1, the reason with `needle`
/// on the first line, no panic), if it is not.
fn not_rejected(o: &Output, needle: &str) -> Option<String> {
    let err = stderr(o);
    let first = err.lines().next().unwrap_or("");
    if !matches!(o.status.code(), Some(1 | 2)) || err.contains("panicked") {
        Some(format!(
            "expected a clean failure, got {:?}: {err}",
            o.status
        ))
    } else if !first.contains(needle) {
        Some(format!("{needle:?} not in the first line: {err}"))
    } else {
        None
    }
}

fn rejected(o: &Output, needle: &str) {
    if let Some(why) = not_rejected(o, needle) {
        panic!("{why}");
    }
}

/// Runs each case (killed after 20 s) and asserts that every one was rejected.
async fn all_rejected(cases: Vec<(Command, String, &str)>) {
    let mut failures = Vec::new();
    for (c, what, needle) in cases {
        let (o, killed) = output_within(c, Duration::from_secs(20)).await;
        if killed {
            failures.push(format!("{what}: still running after 20 s"));
        } else if let Some(why) = not_rejected(&o, needle) {
            failures.push(format!("{what}: {why}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

async fn quick_server() -> kvbench::testserver::TestServer {
    common::server(TestServerConfig {
        ttft: Duration::from_millis(1),
        itl: Duration::from_millis(1),
        output_tokens: Some(2),
        ..Default::default()
    })
    .await
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

// ---- item 4: -o through a link or onto a special file ----

#[test]
fn results_are_written_through_a_symlink_which_stays_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let real_dir = dir.path().join("store");
    std::fs::create_dir(&real_dir).unwrap();
    let real = real_dir.join("real.json");
    std::fs::write(&real, "old").unwrap();
    let link = dir.path().join("latest.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    kvbench::result::write_json(&link, &serde_json::json!({"a": 1})).unwrap();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link was replaced by a file"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&real).unwrap()).unwrap();
    assert_eq!(v["a"], 1);
    // No temporary file is left beside the link or the target.
    for d in [dir.path(), real_dir.as_path()] {
        for e in std::fs::read_dir(d).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!n.contains(".tmp"), "left behind: {n}");
        }
    }
}

#[test]
fn results_are_written_into_a_fifo_which_stays_a_fifo() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    mkfifo(&fifo);
    // The same through a link to it (as /dev/stdout is a link to a pipe or a terminal).
    let link = dir.path().join("out.json");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    for target in [&fifo, &link] {
        let f = fifo.clone();
        let reader = std::thread::spawn(move || std::fs::read(&f).unwrap());
        kvbench::result::write_json(target, &serde_json::json!({"b": 2})).unwrap();
        let got = reader.join().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v["b"], 2);
        assert!(
            std::fs::symlink_metadata(&fifo)
                .unwrap()
                .file_type()
                .is_fifo(),
            "the fifo was replaced by a regular file"
        );
    }
}

// ---- item 5: write errors ----

#[tokio::test]
async fn a_journal_that_cannot_be_written_stops_the_run_and_keeps_the_result() {
    let s = common::server(TestServerConfig {
        ttft: Duration::from_millis(5),
        itl: Duration::from_millis(1),
        output_tokens: Some(2),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let mut c = kvbench();
    // /dev/full: every write fails with ENOSPC, as on a full disk.
    c.args(["run", "--url", &s.url(), "-n", "400", "-c", "2", "-q"])
        .args(["--journal", "/dev/full", "-o"])
        .arg(&out);
    let t0 = Instant::now();
    let o = output(c).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("/dev/full"),
        "the error names the journal: {err}"
    );
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&out).unwrap_or_else(|_| panic!("no result written: {err}")),
    )
    .unwrap();
    assert_eq!(v["outcome"], "journal_failed");
    let total = v["requests"]["total"].as_u64().unwrap();
    assert!(total < 400, "sending went on to the end: {total} requests");
    assert!(t0.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn an_output_path_naming_a_folder_fails_before_anything_is_sent() {
    let s = common::server(TestServerConfig {
        ttft: Duration::from_millis(100),
        itl: Duration::from_millis(1),
        output_tokens: Some(2),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = kvbench();
    c.args(["run", "--url", &s.url(), "-n", "40", "-q", "-o"])
        .arg(dir.path());
    let t0 = Instant::now();
    let o = output(c).await;
    rejected(&o, "is a directory");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the run went ahead: {:?}",
        t0.elapsed()
    );
}

// ---- item 7: secrets ----

#[tokio::test]
async fn url_credentials_and_query_values_never_reach_error_messages() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json").display().to_string();
    for url in [
        format!("http://user:pw-s3cret@127.0.0.1:{port}/?token=tk-s3cret"),
        format!("https://user:pw-s3cret@127.0.0.1:{port}/v1?token=tk-s3cret"),
        "http://user:pw-s3cret@[::1/?token=tk-s3cret".to_owned(),
    ] {
        let mut c = kvbench();
        c.args(["run", "--url", &url, "-n", "1", "-o", &out]);
        let o = output(c).await;
        let err = stderr(&o);
        assert!(!o.status.success(), "{url}");
        assert!(
            !err.contains("pw-s3cret") && !err.contains("tk-s3cret"),
            "{url}: {err}"
        );
    }
}

fn write_exp(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("exp.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn arm_args(exp: &Path, out: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--config".into(),
        exp.display().to_string(),
        "--arm".into(),
        "a".into(),
        "--out-dir".into(),
        out.display().to_string(),
        "--quiet".into(),
    ]
}

fn everything_in(dir: &Path) -> String {
    let mut all = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            all += &String::from_utf8_lossy(&std::fs::read(&p).unwrap());
        }
    }
    all
}

#[tokio::test]
async fn header_values_never_reach_a_failed_arms_result() {
    let dir = tempfile::tempdir().unwrap();
    let exp = write_exp(
        dir.path(),
        &format!(
            "name = \"f\"\n[server]\ncommand = [\"{BIN}\", \"test-server\", \"--exit\", \"1\"]\nport = \"auto\"\nhealth_timeout = \"5s\"\n[workload]\nnum_requests = 1\nheader = [\"X-Api-Token: hdr-s3cret-value\"]\n[[arms]]\nname = \"a\"\n"
        ),
    );
    let out = dir.path().join("out");
    let mut c = kvbench();
    c.args(arm_args(&exp, &out));
    let o = output(c).await;
    assert!(!o.status.success());
    let all = everything_in(&out) + &stderr(&o) + &String::from_utf8_lossy(&o.stdout);
    assert!(all.contains("X-Api-Token"), "the header's name is kept");
    assert!(!all.contains("hdr-s3cret-value"), "{all}");
}

#[tokio::test]
async fn dry_run_prints_no_secret_values() {
    let dir = tempfile::tempdir().unwrap();
    let exp = write_exp(
        dir.path(),
        &format!(
            "name = \"d\"\n[server]\ncommand = [\"{BIN}\", \"test-server\"]\nurl = \"http://user:url-s3cret@127.0.0.1:9/?token=tok-s3cret\"\nenv = {{ HF_TOKEN = \"hf_envs3cret\", PLAIN = \"shown\" }}\n[workload]\nnum_requests = 1\nheader = [\"Authorization: Bearer sk-hdrs3cret\"]\n[[arms]]\nname = \"a\"\n"
        ),
    );
    let mut args = arm_args(&exp, &dir.path().join("out"));
    args.push("--dry-run".into());
    let mut c = kvbench();
    c.args(args);
    let o = output(c).await;
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    assert!(o.status.success(), "{text}");
    for secret in ["hf_envs3cret", "sk-hdrs3cret", "url-s3cret", "tok-s3cret"] {
        assert!(!text.contains(secret), "{secret} printed: {text}");
    }
    assert!(text.contains("PLAIN=shown"), "{text}");
    // `ab --dry-run` prints the same plans, just as redacted.
    let two = dir.path().join("two.toml");
    std::fs::write(
        &two,
        std::fs::read_to_string(&exp).unwrap() + "[[arms]]\nname = \"b\"\n",
    )
    .unwrap();
    let mut c = kvbench();
    c.args(["ab", two.to_str().unwrap(), "--dry-run"]);
    let o = output(c).await;
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &stderr(&o);
    assert!(o.status.success(), "{text}");
    for secret in ["hf_envs3cret", "sk-hdrs3cret", "url-s3cret", "tok-s3cret"] {
        assert!(
            !text.contains(secret),
            "ab --dry-run printed {secret}: {text}"
        );
    }
}

const DOCKER_STUB: &str = r#"#!/bin/sh
# Stand-in docker: records its arguments and the secret it was given, answers like compose.
echo "$* HF_TOKEN=${HF_TOKEN:-unset}" >> "$DOCKER_RECORD"
case "$*" in
  *" config --format json") printf '{"services":{"vllm":{"command":["--model","m"]}}}\n' ;;
  *" logs -f "*) echo "INFO started"; exec sleep 1000 ;;
esac
exit 0
"#;

#[tokio::test]
async fn the_compose_override_holds_no_secret_value_and_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let server = quick_server().await;
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("docker");
    std::fs::write(&stub, DOCKER_STUB).unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("c.yml"),
        "services:\n  vllm:\n    image: x\n",
    )
    .unwrap();
    let exp = write_exp(
        dir.path(),
        &format!(
            "name = \"c\"\n[server]\nlauncher = \"compose\"\ncompose_file = \"c.yml\"\nservice = \"vllm\"\nurl = \"{}\"\nenv = {{ HF_TOKEN = \"hf_compose_s3cret\", VLLM_PLAIN = \"1\" }}\n[workload]\nnum_requests = 1\n[[arms]]\nname = \"a\"\n",
            server.url()
        ),
    );
    let out = dir.path().join("out");
    let record = dir.path().join("docker.log");
    let mut c = kvbench();
    c.args(arm_args(&exp, &out))
        .env("KVBENCH_DOCKER", &stub)
        .env("DOCKER_RECORD", &record)
        .env_remove("HF_TOKEN");
    let o = output(c).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let ov = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".compose.override.yml"))
        .expect("an override");
    let text = std::fs::read_to_string(&ov).unwrap();
    assert!(!text.contains("hf_compose_s3cret"), "{text}");
    assert!(text.contains("HF_TOKEN"), "{text}");
    assert!(text.contains("\"VLLM_PLAIN\": \"1\""), "{text}");
    let mode = std::fs::metadata(&ov).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "override mode {mode:o}");
    // docker compose gets the value by reference, from its environment.
    let recorded = std::fs::read_to_string(&record).unwrap();
    let up = recorded
        .lines()
        .find(|l| l.contains(" up -d --force-recreate vllm"))
        .expect("up");
    assert!(up.ends_with("HF_TOKEN=hf_compose_s3cret"), "{up}");
    assert!(!everything_in(&out).contains("hf_compose_s3cret"));
}

// ---- item 8: durations out of range ----

#[tokio::test]
async fn durations_beyond_range_are_rejected_not_panics() {
    let s = quick_server().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json").display().to_string();
    let url = s.url();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "run",
                "--url",
                &url,
                "-q",
                "-o",
                &out,
                "-n",
                "2",
                "--request-rate",
                "1e-19",
            ],
            "--request-rate",
        ),
        (
            vec![
                "selftest",
                "-c",
                "1",
                "--requests-per-stream",
                "1",
                "--events-per-s",
                "1e-300",
            ],
            "--events-per-s",
        ),
        (
            vec!["selftest", "--serve", "127.0.0.1:0", "--itl-ms", "1e300"],
            "--itl-ms",
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(args, needle)| {
            let mut c = kvbench();
            c.args(&args);
            (c, format!("{args:?}"), needle)
        })
        .collect();
    all_rejected(cases).await;
}

// ---- item 9: hangs ----

/// A tokenizer that gives no token for any word: a BPE model with an empty vocabulary and no
/// unknown token drops every character.
const EMPTY_TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"vocab":{},"merges":[]}}"#;

#[tokio::test]
async fn a_tokenizer_that_counts_no_tokens_is_an_error_not_a_hang() {
    let s = quick_server().await;
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, EMPTY_TOKENIZER).unwrap();
    let mut c = kvbench();
    c.args(["run", "--url", &s.url(), "-n", "1", "-q", "--tokenizer"])
        .arg(&tok)
        .arg("-o")
        .arg(dir.path().join("r.json"));
    let (o, killed) = output_within(c, Duration::from_secs(20)).await;
    assert!(!killed, "kvbench hung building a prompt");
    rejected(&o, "tokenizer");
}

#[tokio::test]
async fn workers_stop_at_once_while_requests_are_slow_to_build() {
    let s = quick_server().await;
    let dir = tempfile::tempdir().unwrap();
    // Large generated images make each request take seconds to build.
    let cfg = common::config(
        dir.path(),
        &[
            "--url",
            &s.url(),
            "-n",
            "20",
            "-c",
            "2",
            "--images",
            "6",
            "--image-size",
            "8192x8192",
        ],
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let c = cancel.clone();
    let cancelled_at = std::sync::Arc::new(std::sync::Mutex::new(None));
    let at = cancelled_at.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        *at.lock().unwrap() = Some(Instant::now());
        c.cancel();
    });
    let r = kvbench::runner::run(cfg, cancel).await.unwrap();
    let took = cancelled_at.lock().unwrap().unwrap().elapsed();
    assert!(r.interrupted);
    assert!(
        took < Duration::from_secs(2),
        "the run ended {took:?} after the interruption"
    );
}

// ---- items 10 and 11: counts and sizes beyond reason ----

#[tokio::test]
async fn counts_and_sizes_beyond_bounds_are_rejected() {
    let s = quick_server().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json").display().to_string();
    let url = s.url();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--warmup", "18446744073709551615", "-n", "1"],
            "--warmup",
        ),
        (vec!["-c", "10000000", "-n", "3"], "--concurrency"),
        (
            vec![
                "--request-rate",
                "5",
                "--max-concurrency",
                "10000000",
                "-n",
                "3",
            ],
            "--max-concurrency",
        ),
        (vec!["--input-len", "1000000000", "-n", "1"], "--input-len"),
        (vec!["-n", "18446744073709551615"], "--num-requests"),
    ];
    let cases = cases
        .into_iter()
        .map(|(args, needle)| {
            let mut c = kvbench();
            c.args(["run", "--url", &url, "-q", "-o", &out]).args(&args);
            (c, format!("{args:?}"), needle)
        })
        .collect();
    all_rejected(cases).await;
}

#[tokio::test]
async fn workers_and_connections_never_outnumber_the_requests() {
    let s = quick_server().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), &["--url", &s.url(), "-n", "3", "-c", "900"]);
    let r = kvbench::runner::run(cfg, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.requests.completed, 3);
    let config = r.config.measured().expect("a measured run's settings");
    assert_eq!(config.prewarmed_connections, 3);
}

#[tokio::test]
async fn an_open_loop_over_a_long_duration_starts_sending_at_once() {
    let s = quick_server().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let journal = dir.path().join("r.requests.jsonl");
    let mut c = kvbench();
    c.args(["run", "--url", &s.url(), "-q", "--request-rate", "100"])
        .args(["--max-concurrency", "4", "--duration", "1000h", "-o"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let t0 = Instant::now();
    let mut started = false;
    while t0.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if std::fs::read_to_string(&journal).is_ok_and(|j| j.lines().count() >= 3) {
            started = true;
            break;
        }
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let o = tokio::task::spawn_blocking(move || {
        let mut child = child;
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(started, "nothing sent within 8 s: {}", stderr(&o));
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert!(v["requests"]["total"].as_u64().unwrap() >= 3);
}

// ---- item 12: headers, URLs, logs ----

#[tokio::test]
async fn framing_headers_are_rejected() {
    let s = quick_server().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json").display().to_string();
    let cases = [
        "Content-Length: 5",
        "Transfer-Encoding: chunked",
        "host: elsewhere.example",
        "Connection: close",
        "X-Bad: a\u{1b}b",
    ]
    .into_iter()
    .map(|h| {
        let mut c = kvbench();
        c.args([
            "run",
            "--url",
            &s.url(),
            "-n",
            "1",
            "-q",
            "-o",
            &out,
            "--header",
            h,
        ]);
        (c, h.to_owned(), "--header")
    })
    .collect();
    all_rejected(cases).await;
}

#[tokio::test]
async fn a_query_string_in_the_url_stays_a_query_string() {
    let s = quick_server().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/?api-version=2024-01", s.url());
    let cfg = common::config(dir.path(), &["--url", &url, "-n", "2"]);
    let r = kvbench::runner::run(cfg, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(r.requests.completed, 2, "{:?}", r.errors);
    assert_eq!(r.server.api_base, format!("{}/v1?REDACTED", s.url()));
}

#[tokio::test]
async fn scan_logs_keeps_a_bounded_number_of_other_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("big.log");
    let mut text = String::new();
    let word = |mut i: usize| {
        let mut w = String::new();
        for _ in 0..4 {
            w.push((b'a' + (i % 26) as u8) as char);
            i /= 26;
        }
        w
    };
    for i in 0..20_000 {
        text += &format!("WARNING 01-01 00:00:00 [x.py:1] odd thing {}\n", word(i));
    }
    text += "WARNING 01-01 00:00:00 [x.py:1] \u{1b}]0;owned\u{7}\u{1b}[2J terminal\n";
    std::fs::write(&log, text).unwrap();
    let mut c = kvbench();
    c.args(["scan-logs", "--json"]).arg(&log);
    let o = output(c).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let warnings = v["warnings"].as_array().unwrap();
    assert!(
        warnings.len() <= 1001,
        "{} distinct lines kept",
        warnings.len()
    );
    let total: u64 = warnings.iter().map(|w| w["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 20_001, "every line is still counted");
    // The table on a terminal: the log's control characters are shown escaped.
    let mut c = kvbench();
    c.arg("scan-logs").arg(&log);
    let o = output(c).await;
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
}

#[tokio::test]
async fn scan_logs_streams_a_log_larger_than_its_memory() {
    // 200 MiB in one line without end, then a catalogued warning: read under a 160 MiB
    // address-space limit, so holding the log (or the line) would fail.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("huge.log");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&log).unwrap());
        let block = vec![b'x'; 1 << 20];
        for _ in 0..200 {
            f.write_all(&block).unwrap();
        }
        f.write_all(b"\nWARNING 01-01 00:00:00 [x.py:1] Using fp8 data type to store kv cache. It reduces the GPU memory footprint and boosts the performance. Meanwhile, it may cause accuracy drop without a proper scaling factor.\n").unwrap();
    }
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "ulimit -v {}; exec \"$0\" scan-logs --json \"$1\"",
            160 * 1024
        ))
        .arg(BIN)
        .arg(&log)
        .stdin(Stdio::null());
    let (o, killed) = output_within(c, Duration::from_secs(60)).await;
    assert!(!killed);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        !v["warnings"].as_array().unwrap().is_empty(),
        "the warning after the long line was found: {v}"
    );
}

#[test]
fn a_bad_latency_target_is_one_line() {
    for (slo, says) in [
        ("ttfb_ms=100", "is not a latency target"),
        ("ttft_ms=0", "not a positive number"),
        ("ttft_ms", "is not METRIC=MS"),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_kvbench"))
            .args([
                "run",
                "--url",
                "http://127.0.0.1:9",
                "-o",
                "x.json",
                "--slo",
                slo,
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{slo}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{slo}: {err}");
    }
}
