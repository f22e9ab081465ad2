//! Helpers shared by the integration tests: run configurations parsed through the real CLI.

#![allow(dead_code)]

pub mod engine;
pub mod exec;

use std::net::SocketAddr;
use std::path::Path;

use clap::Parser;
use kvbench::cli::{Cli, Command};
use kvbench::result::RunResult;
use kvbench::runner::{self, RunConfig};
use kvbench::testserver::{self, TestServer, TestServerConfig};
use tokio_util::sync::CancellationToken;

/// Held by the fuzz targets (each keeps a core busy for seconds), so that in the shared binary
/// they run one at a time and leave the other test thread a core. Taken whatever a panicking
/// holder left.
pub fn cpu_bound_lock() -> std::sync::MutexGuard<'static, ()> {
    static CPU_BOUND: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CPU_BOUND.lock().unwrap_or_else(|e| e.into_inner())
}

/// Parses `kvbench run ARGS... --quiet --output DIR/out.json` into a validated configuration.
pub fn config(dir: &Path, args: &[&str]) -> RunConfig {
    let out = dir.join("out.json");
    let mut v: Vec<String> = vec!["kvbench".into(), "run".into()];
    v.extend(args.iter().map(|s| s.to_string()));
    v.push("--quiet".into());
    v.push("--output".into());
    v.push(out.display().to_string());
    match Cli::try_parse_from(v).expect("valid arguments").command {
        Command::Run(a) => a.into_config().expect("valid configuration"),
        _ => unreachable!(),
    }
}

/// Starts a test server on a free loopback port.
pub async fn server(cfg: TestServerConfig) -> TestServer {
    testserver::start(cfg, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("test server starts")
}

/// Runs kvbench against `server` with `args` and returns the result.
pub async fn run(server: &TestServer, dir: &Path, args: &[&str]) -> RunResult {
    run_at(&server.url(), dir, args).await
}

/// Runs kvbench against `server` through reqwest rather than the lean HTTP/1.1 path: the URL
/// carries credentials (which the test server ignores), and those always go through reqwest.
pub async fn run_via_reqwest(server: &TestServer, dir: &Path, args: &[&str]) -> RunResult {
    let url = server
        .url()
        .replacen("http://", "http://kvbench:secret@", 1);
    run_at(&url, dir, args).await
}

/// Runs kvbench against `url` with `args` and returns the result.
pub async fn run_url(url: &str, dir: &Path, args: &[&str]) -> RunResult {
    run_at(url, dir, args).await
}

async fn run_at(url: &str, dir: &Path, args: &[&str]) -> RunResult {
    let mut all = vec!["--url", url];
    all.extend_from_slice(args);
    let cfg = config(dir, &all);
    runner::run(cfg, CancellationToken::new())
        .await
        .expect("run succeeds")
}

/// The journal lines of the last run in `dir`.
pub fn journal(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("out.requests.jsonl"))
        .expect("journal exists")
        .lines()
        .map(|l| serde_json::from_str(l).expect("journal line is JSON"))
        .collect()
}

/// Asserts that `v` (a file kvbench wrote) matches `schema` (a committed JSON Schema).
pub fn assert_schema(schema: &serde_json::Value, v: &serde_json::Value, what: &str) {
    let validator = jsonschema::draft202012::new(schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match its schema:\n{}",
        errors.join("\n")
    );
}

/// The committed schema `docs/schema/NAME.schema.json`.
pub fn committed_schema(name: &str) -> serde_json::Value {
    let path = format!(
        "{}/docs/schema/{name}.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("schema file exists"))
        .expect("schema is JSON")
}

/// Asserts that a comparison file matches docs/schema/comparison.schema.json.
pub fn assert_comparison_schema(v: &serde_json::Value) {
    assert_schema(&committed_schema("comparison"), v, "the comparison");
}

/// Asserts that a result file matches docs/schema/result.schema.json.
pub fn assert_result_schema(v: &serde_json::Value) {
    assert_schema(&committed_schema("result"), v, "the result");
}
