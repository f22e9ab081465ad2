//! What the user hands kvbench, pushed to its edges (issue 19): output paths that are links,
//! pipes or folders, a disk that fills, values far beyond what a run can mean, secrets in URLs,
//! headers and experiment files, and logs too large to hold. Each gets a clear error or is
//! handled; none panics, hangs, or loses what was measured.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
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
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
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
