//! The process launcher as an engine meets it: the server's log is read whatever its bytes (one
//! stray non-UTF-8 byte must not hide every warning), and the server gets persistent engine
//! caches unless the user set their own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_kvbench");

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/logs/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs kvbench with its engine caches in `dir` (not the user's home).
async fn kvbench(args: Vec<String>, dir: &Path) -> Output {
    let cache = dir.join("cache");
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env("KVBENCH_CACHE", cache)
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
    let o = kvbench(run_args(&exp, "a", dir.path()), dir.path()).await;
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
    let o = kvbench(run_args(&exp, "a", dir.path()), dir.path()).await;
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
    let o = kvbench(run_args(&exp, "a", dir.path()), dir.path()).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = result_json(dir.path());
    assert_eq!(ids(&v), ["log_unreadable"]);
    assert_eq!(v["warnings"][0]["severity"], "error");
    let e = v["server"]["facts"]["log_error"].as_str().unwrap();
    assert!(e.starts_with("cannot read the server log"), "{e}");
}

#[tokio::test]
async fn the_server_gets_shared_engine_caches_unless_the_user_set_them() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let script = format!(r#"env > "$ENV_OUT"; {EXEC_SERVER}"#).replace('"', "\\\"");
    let run = |arm: &'static str, out: PathBuf| {
        let exp = dir.path().join("exp.toml");
        let cache = cache.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(BIN)
                    .args(run_args(&exp, arm, &out))
                    .env("KVBENCH_CACHE", &cache)
                    .env("TORCHINDUCTOR_CACHE_DIR", "/inherited/inductor")
                    .env_remove("VLLM_CACHE_ROOT")
                    .env_remove("TRITON_CACHE_DIR")
                    .stdin(Stdio::null())
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let table = format!(
        r#"command = ["sh", "-c", "{script}"]
port = "auto"
env = {{ KVBENCH = "{BIN}", PORT = "{{port}}", ENV_OUT = "{}" }}
"#,
        dir.path().join("env.txt").display()
    );
    std::fs::write(
        dir.path().join("exp.toml"),
        format!(
            r#"name = "t"
[server]
{table}
[workload]
num_requests = 1
max_tokens = 4

[[arms]]
name = "shared"
env = {{ TRITON_CACHE_DIR = "/mine/triton" }}

[[arms]]
name = "own"
[arms.server]
engine_cache = false
"#
        ),
    )
    .unwrap();

    let out = dir.path().join("shared");
    let o = run("shared", out.clone()).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
    let root = cache.join("engine-cache");
    let vllm = format!("VLLM_CACHE_ROOT={}", root.join("vllm").display());
    assert!(env.lines().any(|l| l == vllm), "{vllm} in {env}");
    assert!(env.lines().any(|l| l == "TRITON_CACHE_DIR=/mine/triton"));
    assert!(env
        .lines()
        .any(|l| l == "TORCHINDUCTOR_CACHE_DIR=/inherited/inductor"));
    assert!(root.join("vllm").is_dir());
    let v = result_json(&out);
    assert_eq!(
        v["server"]["facts"]["engine_cache"],
        serde_json::json!({
            "dir": root.display().to_string(),
            "set": {"VLLM_CACHE_ROOT": root.join("vllm").display().to_string()},
            "user_set": ["TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"],
        })
    );

    // `engine_cache = false`: nothing set.
    let out = dir.path().join("own");
    let o = run("own", out.clone()).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let env = std::fs::read_to_string(dir.path().join("env.txt")).unwrap();
    assert!(!env.contains("VLLM_CACHE_ROOT="), "{env}");
    assert!(!env.contains("TRITON_CACHE_DIR="), "{env}");
    assert_eq!(
        result_json(&out)["server"]["facts"]["engine_cache"]["dir"],
        serde_json::Value::Null
    );
}
