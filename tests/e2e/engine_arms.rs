//! Arms on real engines through the `process` launcher: llama.cpp with f16 and q8_0 KV caches,
//! and vLLM on CPU with `auto` (runs), `fp8` (runs on CPUs with AVX-512 or AMX, and fails as
//! `unsupported_hardware` on others) and
//! `--calculate-kv-scales` (removed from vLLM 0.32: `unsupported_argument`). Skips with a printed
//! reason when the engines are absent (see tests/common/engine.rs).

use std::path::Path;
use std::sync::Arc;

use crate::common::engine::{engine_vars, ENGINE_LOCK};
use kvbench::arm::{run_arm, ArmOptions};
use kvbench::experiment;
use kvbench::logscan::{Catalog, DEFAULT_CATALOG};
use tokio_util::sync::CancellationToken;

fn options(dir: &Path) -> ArmOptions {
    ArmOptions {
        out_dir: dir.to_owned(),
        output: None,
        catalog: Arc::new(Catalog::parse(DEFAULT_CATALOG, "embedded").unwrap()),
        quiet: true,
    }
}

fn cpu_has_avx512_or_amx() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.contains(" avx512f") || c.contains(" amx_tile"))
        .unwrap_or(false)
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_f16_and_q8_0_arms() {
    let Some(v) = engine_vars("llamacpp", &["LLAMA_SERVER", "SMOLLM2_GGUF"]) else {
        return;
    };
    let _guard = ENGINE_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"name = "kv"
[server]
command = [{}, "-m", {}, "--host", "127.0.0.1", "--port", "{{port}}", "--metrics",
           "--alias", "smollm2", "-c", "4096", "-np", "2", "-t", "1", "-lv", "4"]
port = "auto"
health_timeout = "120s"
[workload]
num_requests = 4
concurrency = 2
input_len = 64
max_tokens = 16
warmup = 1
[[arms]]
name = "f16"
[[arms]]
name = "q8_0"
set = {{ "--cache-type-k" = "q8_0", "--cache-type-v" = "q8_0" }}
"#,
        q(&v[0]),
        q(&v[1])
    );
    let exp = experiment::parse(&text, &dir.path().join("kv.toml")).unwrap();
    for arm in &exp.arms {
        let run = run_arm(arm, &options(dir.path()), &CancellationToken::new())
            .await
            .unwrap();
        let r = &run.result;
        eprintln!(
            "llama.cpp arm {}: startup {:?} s, ttft p50 {:?} ms, {:?} output tok/s, facts {:?}",
            arm.name,
            r.server.startup_s,
            r.metrics.ttft_ms.p50,
            r.throughput.output_tok_per_s,
            r.server.facts.config_check
        );
        assert_eq!(r.outcome, "ok", "{:?}", r.failure);
        assert_eq!(
            r.requests.completed, 4,
            "errors: {:?}, journal {:?}",
            r.errors, r.journal
        );
        assert!(r.server.startup_s.unwrap() > 0.0);
        let name = run.path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("benchmark_kv_{}_", arm.name)) && name.ends_with(".json")
        );
        // The server's own counters agree with kvbench: /metrics saw at least the measured tokens.
        let sm = r
            .server_metrics
            .as_ref()
            .expect("llama.cpp --metrics scraped");
        let generated = sm.deltas["generation_tokens"].value().unwrap();
        assert!(generated >= r.tokens.output_total as f64, "{sm:?}");
        let check = r.server.facts.config_check.as_ref().unwrap();
        assert!(check.mismatches.is_empty(), "{check:?}");
        if arm.name == "q8_0" {
            assert_eq!(check.requested.cache_type_k.as_deref(), Some("q8_0"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_cpu_auto_runs_fp8_and_calculate_kv_scales_fail_classified() {
    let Some(v) = engine_vars("vllm-cpu", &["VLLM_PYTHON", "VLLM_ENTRY", "SMOLLM2_HF_DIR"]) else {
        return;
    };
    let _guard = ENGINE_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let w = work.display().to_string();
    let text = format!(
        r#"name = "vllmcpu"
[server]
command = [{}, {}, "serve", {}, "--served-model-name", "smollm2", "--max-model-len", "2048",
           "--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1", "--port", "{{port}}"]
port = "auto"
health_timeout = "600s"
env = {{ HF_HUB_OFFLINE = "1", VLLM_CPU_KVCACHE_SPACE = "1", VLLM_NO_USAGE_STATS = "1", VLLM_CACHE_ROOT = {}, TORCHINDUCTOR_CACHE_DIR = {}, TMPDIR = {} }}
[workload]
num_requests = 4
concurrency = 2
input_len = 64
max_tokens = 16
warmup = 1
[[arms]]
name = "auto"
set = {{ "--kv-cache-dtype" = "auto" }}
[[arms]]
name = "fp8"
set = {{ "--kv-cache-dtype" = "fp8" }}
[[arms]]
name = "calibrated"
set = {{ "--kv-cache-dtype" = "fp8" }}
args = ["--calculate-kv-scales"]
"#,
        q(&v[0]),
        q(&v[1]),
        q(&v[2]),
        q(&format!("{w}/vllm-cache")),
        q(&format!("{w}/inductor")),
        q(&w),
    );
    let exp = experiment::parse(&text, &dir.path().join("v.toml")).unwrap();
    let mut outcomes = Vec::new();
    for arm in &exp.arms {
        let run = run_arm(arm, &options(dir.path()), &CancellationToken::new())
            .await
            .unwrap();
        let r = &run.result;
        let elapsed = r.server.startup_s.or(r.server.facts.seconds_to_failure);
        eprintln!(
            "vLLM CPU arm {}: outcome {} after {:?} s; failure {:?}",
            arm.name,
            r.outcome,
            elapsed,
            r.failure.as_ref().map(|f| &f.message)
        );
        assert!(
            run.path.is_file(),
            "the result JSON is written for every arm"
        );
        outcomes.push((arm.name.clone(), r.outcome.clone()));
        match arm.name.as_str() {
            "auto" => {
                assert_eq!(r.outcome, "ok", "{:?}", r.failure);
                assert_eq!(r.requests.completed, 4, "errors: {:?}", r.errors);
                assert!(
                    r.server.facts.catalog["kv_cache_tokens"].as_u64().unwrap() > 0,
                    "{:?}",
                    r.server.facts
                );
                assert_eq!(
                    r.server.facts.cache_config.as_ref().unwrap()["cache_dtype"],
                    "auto"
                );
                let ids: Vec<&str> = r.warnings.iter().map(|w| w.id.as_str()).collect();
                assert!(!ids.contains(&"fp8_kv_cache_in_use"), "{ids:?}");
            }
            // vLLM's FP8 KV cache on CPU needs AVX-512 or AMX: where the CPU has them the arm
            // runs (and proves it used FP8), elsewhere it fails as unsupported hardware.
            "fp8" if cpu_has_avx512_or_amx() => {
                assert_eq!(r.outcome, "ok", "{:?}", r.failure);
                let ids: Vec<&str> = r.warnings.iter().map(|w| w.id.as_str()).collect();
                assert!(ids.contains(&"fp8_kv_cache_in_use"), "{ids:?}");
                assert_eq!(
                    r.server.facts.cache_config.as_ref().unwrap()["cache_dtype"],
                    "fp8"
                );
                let check = r.server.facts.config_check.as_ref().unwrap();
                assert!(check.mismatches.is_empty(), "{check:?}");
            }
            "fp8" => {
                assert_eq!(r.outcome, "unsupported_hardware", "{:?}", r.failure);
                assert!(r.failure.as_ref().unwrap().message.contains("AVX-512"));
            }
            _ => {
                assert_eq!(r.outcome, "unsupported_argument", "{:?}", r.failure);
                let ids: Vec<&str> = r.warnings.iter().map(|w| w.id.as_str()).collect();
                assert!(ids.contains(&"unrecognized_arguments"), "{ids:?}");
            }
        }
    }
    eprintln!("vLLM CPU outcomes: {outcomes:?}");
}
