//! `kvbench ab --on ray://...` against a real two-node Ray cluster on this machine
//! (`scripts/setup-ray.sh`, which `scripts/test.sh` runs: each node offers one unit of the
//! stand-in resource `kvgpu`). The tests find the cluster through `$RAY_ADDRESS` and skip
//! without it, or fail instead when `KVBENCH_REQUIRE_RAY` is set (scripts/test.sh sets it
//! under CI=true). They use the cluster the script started and stop only the jobs they
//! submitted; they run one at a time, since they share the cluster's two units.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::exec::{
    add_broken_arm, comparison, experiment, form, interrupt_once_serving, marker, outcome,
    processes_with, results, span, BIN,
};
use serde_json::Value;

/// The cluster's two `kvgpu` units are shared: one test at a time.
static CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

const EXECUTOR: &str = "[executor]\ngpu_resource = \"kvgpu\"\nnum_cpus = 0.5\n";

/// The Jobs API address, or `None` after printing why the test skips.
fn ray() -> Option<String> {
    match std::env::var("RAY_ADDRESS").ok().filter(|s| !s.is_empty()) {
        Some(a) => Some(a),
        None => {
            let why = "$RAY_ADDRESS is not set; run scripts/setup-ray.sh (scripts/test.sh does)";
            if std::env::var_os("KVBENCH_REQUIRE_RAY").is_some() {
                panic!("KVBENCH_REQUIRE_RAY is set but {why}");
            }
            let _ = writeln!(std::io::stderr(), "SKIPPED: ray: {why}");
            None
        }
    }
}

fn ab(exp: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("ab")
        .arg(exp)
        .arg("--out-dir")
        .arg(out)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn on(addr: &str) -> String {
    format!("ray://{}", addr.trim_start_matches("http://"))
}

/// A job's status from the Jobs API.
fn job(addr: &str, id: &str) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        reqwest::get(format!("{addr}/api/jobs/{id}"))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    })
}

/// Submitted job ids, from `kvbench ab`'s progress lines.
fn submitted(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.split("submitted as Ray job ").nth(1))
        .map(|r| r.split_whitespace().next().unwrap().to_owned())
        .collect()
}

#[test]
fn quickstart_on_the_cluster_with_llama_cpp() {
    let Some(addr) = ray() else { return };
    let Some(v) = common::engine::engine_vars("llamacpp", &["LLAMA_SERVER", "SMOLLM2_GGUF"]) else {
        return;
    };
    let _g = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    // Its arms are real engines: none of this binary's other engines beside them.
    let _engine = common::engine::ENGINE_LOCK.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    // The quickstart's arms (f16 against q8_0 KV), smaller; paths reach the jobs through
    // ${VAR}s the experiment names, which kvbench passes in the jobs' environment.
    let text = format!(
        r#"name = "rayquick"
[server]
command = ["${{LLAMA_SERVER}}", "-m", "${{SMOLLM2_GGUF}}", "--host", "127.0.0.1", "--port", "{{port}}",
           "--metrics", "--alias", "smollm2", "-c", "2048", "-np", "2", "-t", "1"]
port = "auto"
health_timeout = "120s"
[workload]
num_requests = 8
concurrency = 2
input_len = 64
max_tokens = 16
ignore_eos = true
warmup = 1
[quality]
suites = ["arithmetic"]
items = 3
[decision]
baseline = "f16"
min_warnings_resolved = 0
{EXECUTOR}
[[arms]]
name = "f16"
[[arms]]
name = "q8_0"
set = {{ "--cache-type-k" = "q8_0", "--cache-type-v" = "q8_0" }}
"#
    );
    let exp = dir.path().join("rayquick.toml");
    std::fs::write(&exp, text).unwrap();
    let out = dir.path().join("out");
    let t0 = Instant::now();
    let o = Command::new(BIN)
        .arg("ab")
        .arg(&exp)
        .args(["--out-dir", out.to_str().unwrap(), "--on", &on(&addr)])
        .args(["--repeat", "1"])
        .env("LLAMA_SERVER", &v[0])
        .env("SMOLLM2_GGUF", &v[1])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{err}\n{stdout}");
    assert!(stdout.contains("kvbench verdict:"), "{stdout}");
    eprintln!(
        "quickstart on the cluster: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let rs = results(&out);
    assert_eq!(rs.len(), 2);
    for (_, r) in &rs {
        assert_eq!(r["outcome"], "ok", "{r}");
        assert_eq!(r["placement"]["executor"], "ray");
        assert_eq!(r["placement"]["gathered_from"], "shared_path");
        assert!(r["quality"]["arithmetic"].is_object(), "{}", r["quality"]);
        common::assert_result_schema(r);
    }
    // Both arms ran at the same time, one per node.
    let (a, b) = (span(&rs[0].1), span(&rs[1].1));
    assert!(a.0 < b.1 && b.0 < a.1, "{a:?} {b:?}");
    let c = comparison(&out);
    common::assert_comparison_schema(&c);
    assert_eq!(c["execution"]["executors"][0], "ray");
    assert!(c["execution"]["balanced"].is_null(), "{}", c["execution"]);
    let html = std::fs::read_dir(&out)
        .unwrap()
        .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "html"));
    assert!(html);
}

#[test]
fn two_jobs_run_at_once_while_a_third_waits_and_the_form_equals_a_local_run() {
    let Some(addr) = ray() else { return };
    let _g = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let m = marker("ray-three");
    let exp = experiment(dir.path(), &["a", "b", "c"], 120, &m, EXECUTOR);
    let out = dir.path().join("ray");
    let o = ab(&exp, &out, &["--on", &on(&addr), "--repeat", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let rs = results(&out);
    assert_eq!(rs.len(), 3, "{err}");
    let mut spans: Vec<(f64, f64)> = rs.iter().map(|(_, r)| span(r)).collect();
    spans.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (first, second, third) = (spans[0], spans[1], spans[2]);
    assert!(
        first.0 < second.1 && second.0 < first.1,
        "the first two overlap: {spans:?}"
    );
    // The third starts once a unit is free: after the earlier of the first two ends (the
    // result's start is after the server's start-up, so it can only be later).
    assert!(
        third.0 >= first.1.min(second.1) - 0.05,
        "the third waited: {spans:?}"
    );
    assert_eq!(submitted(&err).len(), 3, "{err}");
    assert!(err.contains("PENDING"), "{err}");
    // The same experiment locally: the comparison has the same form.
    let local = dir.path().join("local");
    let o = ab(&exp, &local, &["--on", "local", "--repeat", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (l, r) = (comparison(&local), comparison(&out));
    assert_eq!(form(&l, &["execution"]), form(&r, &["execution"]));
    assert!(processes_with(&m).is_empty());
}

#[test]
fn ctrl_c_stops_every_job_kvbench_submitted() {
    let Some(addr) = ray() else { return };
    let _g = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let m = marker("ray-ctrlc");
    let exp = experiment(dir.path(), &["a", "b", "c"], 1_000_000, &m, EXECUTOR);
    let out = dir.path().join("out");
    let mut cmd = Command::new(BIN);
    cmd.arg("ab")
        .arg(&exp)
        .args(["--out-dir", out.to_str().unwrap(), "--on", &on(&addr)])
        .args(["--repeat", "1"]);
    let (status, err) = interrupt_once_serving(cmd, &m, 2, Duration::from_secs(90));
    assert_eq!(status.code(), Some(130), "{err}");
    let ids = submitted(&err);
    assert_eq!(ids.len(), 3, "{err}");
    for id in &ids {
        let j = job(&addr, id);
        assert_eq!(j["status"], "STOPPED", "{id}: {j}");
    }
    assert!(
        processes_with(&m).is_empty(),
        "servers left: {:?}",
        processes_with(&m)
    );
    // What the two running jobs measured is on disk, interrupted; the waiting one says why.
    let rs = results(&out);
    assert_eq!(rs.len(), 3, "{err}");
    let interrupted = rs
        .iter()
        .filter(|(_, r)| r["interrupted"] == true && r["outcome"] == "interrupted")
        .count();
    assert_eq!(interrupted, 2, "{rs:?}");
    assert!(
        rs.iter().any(|(_, r)| r["outcome"] == "executor_failed"
            && r["failure"]["message"]
                .as_str()
                .unwrap()
                .contains("STOPPED")),
        "{rs:?}"
    );
}

#[test]
fn a_failing_arm_is_reported_and_the_others_finish() {
    let Some(addr) = ray() else { return };
    let _g = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let m = marker("ray-fail");
    let exp = experiment(dir.path(), &["a", "b"], 30, &m, EXECUTOR);
    add_broken_arm(&exp);
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &["--on", &on(&addr), "--repeat", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    let rs = results(&out);
    let outcome = |arm: &str| outcome(&rs, arm);
    assert_eq!(outcome("a").as_deref(), Some("ok"), "{err}");
    assert_eq!(outcome("b").as_deref(), Some("ok"), "{err}");
    assert_eq!(outcome("broken").as_deref(), Some("launch_error"), "{err}");
    assert!(err.contains("FAILED"), "{err}");
}

#[test]
fn a_job_that_cannot_start_kvbench_is_an_executor_failure() {
    let Some(addr) = ray() else { return };
    let _g = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let m = marker("ray-nokv");
    let exp = experiment(
        dir.path(),
        &["a", "b"],
        10,
        &m,
        &format!("{EXECUTOR}kvbench = \"/nonexistent/kvbench\"\n"),
    );
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &["--on", &on(&addr), "--repeat", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    let rs = results(&out);
    assert_eq!(rs.len(), 2, "{err}");
    for (_, r) in &rs {
        assert_eq!(r["outcome"], "executor_failed", "{r}");
        let msg = r["failure"]["message"].as_str().unwrap();
        assert!(
            msg.contains("FAILED") && msg.contains("exit code 127"),
            "{msg}"
        );
        assert!(
            r["failure"]["log_tail"]
                .as_str()
                .unwrap()
                .contains("nonexistent"),
            "{r}"
        );
    }
}

#[test]
fn a_result_the_results_directory_does_not_hold_is_gathered_from_the_job_log() {
    let Some(addr) = ray() else { return };
    let _g = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let m = marker("ray-gather");
    // A node that does not share the results directory: its kvbench writes elsewhere.
    let elsewhere = dir.path().join("node-local");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let wrapper = dir.path().join("kvbench-on-node");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n# Rewrites --output into a directory kvbench ab does not read.\nfor a in \"$@\"; do\n  if [ \"$prev\" = --output ]; then a={}/$(basename \"$a\"); fi\n  set -- \"$@\" \"$a\"; shift; prev=$a\ndone\nexec {BIN} \"$@\"\n",
            elsewhere.display()
        ),
    )
    .unwrap();
    let mut perm = std::fs::metadata(&wrapper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&wrapper, perm).unwrap();
    let exp = experiment(
        dir.path(),
        &["a", "b"],
        20,
        &m,
        &format!("{EXECUTOR}kvbench = \"{}\"\n", wrapper.display()),
    );
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &["--on", &on(&addr), "--repeat", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let rs = results(&out);
    assert_eq!(rs.len(), 2, "{err}");
    for (_, r) in &rs {
        assert_eq!(r["outcome"], "ok", "{r}");
        assert_eq!(r["placement"]["gathered_from"], "job_log", "{r}");
    }
    assert_eq!(results(&elsewhere).len(), 2);
    let c = comparison(&out);
    assert!(c["decision"].is_string(), "{c}");
}

#[test]
fn a_job_no_node_can_hold_fails_at_once_instead_of_waiting_for_ever() {
    let Some(addr) = ray() else { return };
    let _g = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let m = marker("ray-nogpu");
    // No gpu_resource: each arm asks for one GPU, which no node of this cluster has.
    let exp = experiment(dir.path(), &["a", "b"], 10, &m, "");
    let out = dir.path().join("out");
    let t0 = Instant::now();
    let o = ab(&exp, &out, &["--on", &on(&addr), "--repeat", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{err}");
    assert!(submitted(&err).is_empty(), "{err}");
    assert!(err.contains("no node of the cluster has 1 GPU"), "{err}");
}

#[test]
fn an_adaptive_design_runs_its_rounds_as_sets_of_jobs() {
    let Some(addr) = ray() else { return };
    let _g = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let m = marker("ray-adaptive");
    let exp = experiment(dir.path(), &["a", "b"], 20, &m, EXECUTOR);
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &["--on", &on(&addr), "--max-runs", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let c = comparison(&out);
    let rounds = c["effort"]["rounds"].as_array().unwrap();
    assert!(!rounds.is_empty(), "{}", c["effort"]);
    // Every run of the experiment went through a job.
    let rs = results(&out);
    assert_eq!(submitted(&err).len(), rs.len(), "{err}");
    assert!(rs.iter().all(|(_, r)| r["placement"]["executor"] == "ray"));
}
