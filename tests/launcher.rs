//! The process launcher as an engine meets it: the server's log is read whatever its bytes (one
//! stray non-UTF-8 byte must not hide every warning), and the server gets persistent engine
//! caches unless the user set their own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_kvbench");

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/logs/{name}", env!("CARGO_MANIFEST_DIR"))
}

async fn kvbench(args: Vec<String>, envs: Vec<(String, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .envs(envs)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn run_args(exp: &Path, arm: &str, out: &Path) -> Vec<String> {
    [
        "run",
        "--config",
        &exp.display().to_string(),
        "--arm",
        arm,
        "--out-dir",
        &out.display().to_string(),
        "--quiet",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The single result JSON written in `dir`.
fn result_json(dir: &Path) -> serde_json::Value {
    let path: PathBuf = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("benchmark_") && n.ends_with(".json")
        })
        .unwrap_or_else(|| panic!("no result in {}", dir.display()));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// An experiment whose one arm runs `sh -c SCRIPT`; the script ends by exec'ing a test server
/// (`$KVBENCH` and `$PORT` are set for it).
fn shell_exp(dir: &Path, script: &str, extra_server: &str) -> PathBuf {
    let text = format!(
        r#"name = "t"
[server]
command = ["sh", "-c", "{}"]
port = "auto"
env = {{ KVBENCH = "{BIN}", PORT = "{{port}}" }}
{extra_server}
[workload]
num_requests = 2
concurrency = 1
max_tokens = 4

[[arms]]
name = "a"
"#,
        script.replace('\\', "\\\\").replace('"', "\\\"")
    );
    let p = dir.join("exp.toml");
    std::fs::write(&p, text).unwrap();
    p
}

const EXEC_SERVER: &str =
    r#"exec "$KVBENCH" test-server --listen "127.0.0.1:$PORT" --ttft-ms 5 --itl-ms 1 --tokens 4"#;

fn ids(v: &serde_json::Value) -> Vec<String> {
    v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_stray_non_utf8_byte_in_the_log_hides_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    // A progress bar or crash dump can put any byte in a log: here one 0xFF before the FP8
    // warnings.
    let script = format!(
        "printf 'progress \\377\\n'; cat '{}'; {EXEC_SERVER}",
        fixture("vllm-fp8-tp2-wsl.log")
    );
    let exp = shell_exp(dir.path(), &script, "");
    let o = kvbench(run_args(&exp, "a", dir.path()), vec![]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = result_json(dir.path());
    let ids = ids(&v);
    for id in [
        "fp8_q_scale_missing",
        "fp8_kv_scale_default",
        "fp8_qprob_scale_uncalibrated",
    ] {
        assert!(ids.iter().any(|i| i == id), "{id} in {ids:?}");
    }
    assert_eq!(v["server"]["facts"]["kv_cache_tokens"], 93184);
}

#[tokio::test]
async fn a_server_that_dies_with_a_non_utf8_log_is_still_classified() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "printf '\\377\\n'; cat '{}'; exit 2",
        fixture("vllm-unrecognized-args.log")
    );
    let exp = shell_exp(dir.path(), &script, "");
    let o = kvbench(run_args(&exp, "a", dir.path()), vec![]).await;
    assert!(!o.status.success());
    let v = result_json(dir.path());
    assert_eq!(v["outcome"], "unsupported_argument");
    assert!(v["failure"]["log_tail"]
        .as_str()
        .unwrap()
        .contains("unrecognized arguments"));
    assert!(ids(&v).iter().any(|i| i == "unrecognized_arguments"));
}

#[tokio::test]
async fn a_log_that_cannot_be_read_is_reported_not_taken_as_clean() {
    let dir = tempfile::tempdir().unwrap();
    // The server prints its FP8 warnings, then its log file vanishes (a cleaner, a full disk's
    // rotation): no warnings must not read as "every warning is gone".
    let script = format!(
        "cat '{}'; rm -f '{}'/benchmark_t_a_*.log; {EXEC_SERVER}",
        fixture("vllm-fp8-tp2-wsl.log"),
        dir.path().display()
    );
    let exp = shell_exp(dir.path(), &script, "");
    let o = kvbench(run_args(&exp, "a", dir.path()), vec![]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = result_json(dir.path());
    assert_eq!(ids(&v), ["log_unreadable"]);
    assert_eq!(v["warnings"][0]["severity"], "error");
    let e = v["server"]["facts"]["log_error"].as_str().unwrap();
    assert!(e.starts_with("cannot read the server log"), "{e}");
}
