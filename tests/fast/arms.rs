//! Arms launched by kvbench: the `process` launcher (healthy, failing, timing out, Ctrl-C with
//! no orphans), the `compose` launcher with a stand-in `docker` that records its arguments, and
//! the `attach` launcher. Servers are `kvbench test-server` processes that print real-looking
//! start-up logs (tests/fixtures/logs).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kvbench::testserver::TestServerConfig;

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

fn write_exp(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("exp.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The single result JSON written in `dir` for `arm`.
fn result_json(dir: &Path, exp: &str, arm: &str) -> (PathBuf, serde_json::Value) {
    let prefix = format!("benchmark_{exp}_{arm}_");
    let path = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(&prefix) && n.ends_with(".json")
        })
        .unwrap_or_else(|| panic!("no {prefix}*.json in {}", dir.display()));
    let v = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    (path, v)
}

fn run_args(exp: &Path, arm: &str, out: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--config".into(),
        exp.display().to_string(),
        "--arm".into(),
        arm.into(),
        "--out-dir".into(),
        out.display().to_string(),
        "--quiet".into(),
    ]
}

fn process_exp(extra_server: &str) -> String {
    format!(
        r#"name = "t"
[server]
command = ["{BIN}", "test-server", "--listen", "127.0.0.1:{{port}}", "--ttft-ms", "5", "--itl-ms", "1", "--tokens", "4"]
port = "auto"
{extra_server}
[workload]
num_requests = 4
concurrency = 2
max_tokens = 4
warmup = 1

[[arms]]
name = "fp8"
args = ["--print", "{}"]

[[arms]]
name = "calibrated"
args = ["--print", "{}"]

[[arms]]
name = "broken"
args = ["--print", "{}", "--exit", "2"]
"#,
        fixture("vllm-fp8-tp2-wsl.log"),
        fixture("vllm-fp8-calibrated.log"),
        fixture("vllm-unrecognized-args.log"),
    )
}

#[tokio::test]
async fn process_arm_runs_and_reads_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let exp = write_exp(dir.path(), &process_exp(""));
    let o = kvbench(run_args(&exp, "fp8", dir.path()), vec![]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (path, v) = result_json(dir.path(), "t", "fp8");
    assert_eq!(v["outcome"], "ok");
    assert_eq!(v["arm"], "fp8");
    assert_eq!(v["requests"]["completed"], 4);
    assert!(v["server"]["startup_s"].as_f64().unwrap() > 0.0);
    assert!(v["server"]["launch_args"][0]
        .as_str()
        .unwrap()
        .ends_with("kvbench"));
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
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let w = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "fp8_kv_scale_default")
        .unwrap();
    assert_eq!(
        (w["count"].as_u64(), w["ranks"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(v["server"]["facts"]["kv_cache_tokens"], 93184);
    assert_eq!(
        v["server"]["facts"]["config_check"]["effective"]["kv_cache_dtype"],
        "fp8"
    );
    // Log and journal next to the result, with the user's naming.
    let stem = path.with_extension("");
    assert!(PathBuf::from(format!("{}.log", stem.display())).is_file());
    assert!(PathBuf::from(format!("{}.requests.jsonl", stem.display())).is_file());
}

#[tokio::test]
async fn a_server_that_dies_is_classified_and_its_result_written() {
    let dir = tempfile::tempdir().unwrap();
    let exp = write_exp(dir.path(), &process_exp(""));
    let o = kvbench(run_args(&exp, "broken", dir.path()), vec![]).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unsupported_argument"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let (_, v) = result_json(dir.path(), "t", "broken");
    assert_eq!(v["outcome"], "unsupported_argument");
    assert!(v["failure"]["message"]
        .as_str()
        .unwrap()
        .contains("--calculate-kv-scales"));
    assert!(v["failure"]["log_tail"]
        .as_str()
        .unwrap()
        .contains("unrecognized arguments"));
    assert!(v["metrics"]["ttft_ms"]["p50"].is_null());
    assert_eq!(v["warnings"][0]["id"], "unrecognized_arguments");
}

#[tokio::test]
async fn startup_timeout_kills_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let marker = "4242.4242";
    let exp = write_exp(
        dir.path(),
        &format!(
            "name = \"t\"\n[server]\ncommand = [\"sleep\", \"{marker}\"]\nurl = \"http://127.0.0.1:{{port}}\"\nport = \"auto\"\nhealth_timeout = \"2s\"\n[[arms]]\nname = \"slow\"\n"
        ),
    );
    let t0 = Instant::now();
    let o = kvbench(run_args(&exp, "slow", dir.path()), vec![]).await;
    assert!(!o.status.success());
    assert!(t0.elapsed() < Duration::from_secs(30));
    let (_, v) = result_json(dir.path(), "t", "slow");
    assert_eq!(v["outcome"], "startup_timeout");
    assert!(!pgrep(marker), "the server was killed");
}

fn pgrep(pattern: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn ctrl_c_during_startup_leaves_no_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let marker = "4343.4343";
    // A "server" whose children also must die: a shell with two background sleeps.
    let exp = write_exp(
        dir.path(),
        &format!(
            "name = \"t\"\n[server]\ncommand = [\"sh\", \"-c\", \"sleep {marker} & sleep {marker} & wait\"]\nurl = \"http://127.0.0.1:{{port}}\"\nport = \"auto\"\n[[arms]]\nname = \"a\"\n"
        ),
    );
    let child = Command::new(BIN)
        .args(run_args(&exp, "a", dir.path()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !pgrep(marker) && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pgrep(marker), "the server started");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(!o.status.success());
    assert!(!pgrep(marker), "no orphan after Ctrl-C");
    let (_, v) = result_json(dir.path(), "t", "a");
    assert_eq!(v["outcome"], "interrupted");
}

const DOCKER_STUB: &str = r#"#!/bin/sh
# Stand-in docker: records its arguments, answers like docker compose would.
echo "$*" >> "$DOCKER_RECORD"
case "$*" in
  *" config --format json") printf '{"services":{"vllm":{"command":["--model","m","--kv-cache-dtype","fp8"]}}}\n' ;;
  *" ps -q vllm") echo "c0ffee" ;;
  *" logs -f "*) cat "$DOCKER_LOGS"; exec sleep 1000 ;;
esac
exit 0
"#;

#[tokio::test]
async fn compose_writes_an_override_and_restores_the_service() {
    let server = common::server(TestServerConfig {
        ttft: Duration::from_millis(2),
        itl: Duration::from_millis(1),
        output_tokens: Some(3),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("docker");
    std::fs::write(&stub, DOCKER_STUB).unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let user_compose = dir.path().join("medium-vl.yml");
    let user_text = "services:\n  vllm:\n    image: vllm/vllm-openai\n    command: [\"--model\", \"m\", \"--kv-cache-dtype\", \"fp8\"]\n";
    std::fs::write(&user_compose, user_text).unwrap();
    let exp = write_exp(
        dir.path(),
        &format!(
            "name = \"fp8\"\n[server]\nlauncher = \"compose\"\ncompose_file = \"medium-vl.yml\"\nservice = \"vllm\"\nurl = \"{}\"\n[workload]\nnum_requests = 2\n[[arms]]\nname = \"calibrated\"\nargs = [\"--calculate-kv-scales\"]\nenv = {{ VLLM_USE_FLASHINFER_SAMPLER = \"0\" }}\n",
            server.url()
        ),
    );
    let out = dir.path().join("results");
    let record = dir.path().join("docker.log");
    let envs = vec![
        ("KVBENCH_DOCKER".to_owned(), stub.display().to_string()),
        ("DOCKER_RECORD".to_owned(), record.display().to_string()),
        ("DOCKER_LOGS".to_owned(), fixture("vllm-fp8-calibrated.log")),
    ];

    // --dry-run: prints the plan, starts nothing.
    let mut dry = run_args(&exp, "calibrated", &out);
    dry.push("--dry-run".into());
    let o = kvbench(dry, envs.clone()).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(plan.contains("up -d --force-recreate vllm"), "{plan}");
    assert!(plan.contains("--calculate-kv-scales"), "{plan}");
    let recorded = std::fs::read_to_string(&record).unwrap();
    assert!(!recorded.contains(" up "), "dry run ran `up`: {recorded}");
    std::fs::remove_file(&record).unwrap();

    let o = kvbench(run_args(&exp, "calibrated", &out), envs).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recorded = std::fs::read_to_string(&record).unwrap();
    let lines: Vec<&str> = recorded.lines().collect();
    let f_user = format!("-f {}", user_compose.display());
    assert!(lines[0].ends_with("config --format json"), "{lines:?}");
    assert!(lines[1].ends_with("ps -q vllm"), "{lines:?}");
    let up = lines
        .iter()
        .position(|l| l.contains(" up -d --force-recreate vllm"))
        .expect("up");
    assert!(lines[up].contains(&f_user) && lines[up].contains(".compose.override.yml"));
    assert!(lines.iter().any(|l| l.contains("logs -f --no-color vllm")));
    let stop = lines
        .iter()
        .position(|l| l.ends_with(" stop vllm"))
        .expect("stop");
    let rm = lines
        .iter()
        .position(|l| l.ends_with(" rm -f vllm"))
        .expect("rm");
    assert!(up < stop && stop < rm);
    let restore = lines.last().unwrap();
    assert!(
        restore.ends_with("up -d vllm") && !restore.contains("override"),
        "restored with the user's file only: {restore}"
    );
    assert_eq!(
        std::fs::read_to_string(&user_compose).unwrap(),
        user_text,
        "the user's file is untouched"
    );

    let (path, v) = result_json(&out, "fp8", "calibrated");
    let ov = std::fs::read_to_string(format!(
        "{}.compose.override.yml",
        path.with_extension("").display()
    ))
    .unwrap();
    assert!(ov.contains("command: [\"--model\", \"m\", \"--kv-cache-dtype\", \"fp8\", \"--calculate-kv-scales\"]"), "{ov}");
    assert!(
        ov.contains("\"VLLM_USE_FLASHINFER_SAMPLER\": \"0\""),
        "{ov}"
    );
    assert_eq!(v["outcome"], "ok");
    let ids: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"calculate_kv_scales_deprecated"), "{ids:?}");
    assert_eq!(
        v["server"]["facts"]["config_check"]["requested"]["calculate_kv_scales"],
        true
    );
}

#[tokio::test]
async fn attach_reads_a_log_file() {
    let server = common::server(TestServerConfig {
        ttft: Duration::from_millis(2),
        itl: Duration::from_millis(1),
        output_tokens: Some(3),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let exp = write_exp(
        dir.path(),
        &format!(
            "name = \"a\"\n[server]\nlauncher = \"attach\"\nurl = \"{}\"\nlog_file = \"{}\"\n[workload]\nnum_requests = 2\n[[arms]]\nname = \"current\"\n",
            server.url(),
            fixture("vllm-fp8-tp2-wsl.log")
        ),
    );
    let o = kvbench(run_args(&exp, "current", dir.path()), vec![]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, v) = result_json(dir.path(), "a", "current");
    let ids: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"wsl_pin_memory") && ids.contains(&"custom_allreduce_disabled"),
        "{ids:?}"
    );
    assert_eq!(v["requests"]["completed"], 2);
}
