//! What the user hands kvbench, pushed to its edges (issue 19): output paths that are links,
//! pipes or folders, a disk that fills, values far beyond what a run can mean, secrets in URLs,
//! headers and experiment files, and logs too large to hold. Each gets a clear error or is
//! handled; none panics, hangs, or loses what was measured.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

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

async fn quick_server() -> kvbench::testserver::TestServer {
    common::server(TestServerConfig {
        ttft: Duration::from_millis(1),
        itl: Duration::from_millis(1),
        output_tokens: Some(2),
        ..Default::default()
    })
    .await
}

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
