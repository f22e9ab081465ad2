//! Quality suites against real engines with SmolLM2-135M (as installed by
//! `scripts/setup-engines.sh`): llama.cpp with an f16 and a q4_0 KV cache (passkey at ~1-1.5k
//! tokens, agreement between the two arms), and vLLM on CPU (every text suite, retrieval
//! lengths derived from the server's maximum). Without the engines these tests print why and
//! skip. Measured accuracies, timings and agreement figures are printed (`--nocapture`).

use crate::common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::engine::{engine_vars, llama_server, vllm_cpu_server, Server, ENGINE_LOCK};
use kvbench::quality::{self, ItemRecord};
use serde_json::Value;

fn print_quality(arm: &str, q: &Value) {
    for (suite, s) in q.as_object().unwrap() {
        if suite == "settings" || !s.is_object() {
            continue;
        }
        eprintln!(
            "{arm} {suite}: {}/{} correct (accuracy {}, 95 % CI {} … {}), {} errors, {:.1} s",
            s["correct"],
            s["items"],
            s["accuracy"],
            s["ci_low"],
            s["ci_high"],
            s["errors"],
            s["duration_s"].as_f64().unwrap_or(f64::NAN)
        );
        if let Some(b) = s.get("by_length").and_then(Value::as_object) {
            for (len, l) in b {
                eprintln!(
                    "{arm} {suite} @ {len} tokens (server counted {}): {}/{} correct, {} errors",
                    l["prompt_tokens_mean"], l["correct"], l["items"], l["errors"]
                );
            }
        }
    }
}

async fn quality_run(url: &str, dir: &Path, args: &[&str]) -> (Value, Vec<ItemRecord>) {
    let mut all = vec![
        "--url",
        url,
        "-n",
        "1",
        "--max-tokens",
        "4",
        "--input-len",
        "16",
    ];
    all.extend_from_slice(args);
    let cfg = common::config(dir, &all);
    let r = kvbench::runner::run(cfg, tokio_util::sync::CancellationToken::new())
        .await
        .expect("kvbench run succeeds");
    assert_eq!(
        r.requests.completed, 1,
        "the performance phase ran after quality"
    );
    // As the result's JSON has it.
    let q = serde_json::to_value(r.quality.expect("quality in the result")).unwrap();
    let recs = quality::read_journal(&dir.join("out.quality.jsonl")).unwrap();
    (q, recs)
}

/// The tokenizer of the converted model when vLLM's set-up made it (exact prompt sizes).
fn tokenizer() -> Option<String> {
    let dir = std::env::var("SMOLLM2_HF_DIR")
        .ok()
        .filter(|s| !s.is_empty())?;
    let p = Path::new(&dir).join("tokenizer.json");
    p.is_file().then(|| p.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_passkey_and_agreement_between_f16_and_q4_0_kv() {
    let Some(v) = engine_vars("llamacpp", &["LLAMA_SERVER", "SMOLLM2_GGUF"]) else {
        return;
    };
    let _guard = ENGINE_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer();
    let mut common_args = vec![
        "--quality-lengths",
        "1024,1536",
        "--quality-depths",
        "0.25,0.75",
        "--quality-items",
        "4",
        "--quality-logprobs",
        "5",
    ];
    if let Some(t) = &tok {
        common_args.extend(["--tokenizer", t.as_str()]);
    }
    let suite = dir.path().join("capitals.jsonl");
    std::fs::write(
        &suite,
        concat!(
            r#"{"id": "fr", "prompt": "What is the capital of France? Answer with one word.", "expected": "Paris", "match": "contains"}"#,
            "\n",
            r#"{"id": "de", "prompt": "What is the capital of Germany? Answer with one word.", "expected": "Berlin", "match": "contains"}"#,
            "\n"
        ),
    )
    .unwrap();
    let jsonl = format!("jsonl:{}", suite.display());

    let mut arms = Vec::new();
    for kv in [None, Some("q4_0")] {
        let name = kv.unwrap_or("f16");
        let mut server = llama_server(&v[0], &v[1], 8192, kv, dir.path());
        let startup = server.wait_healthy(Duration::from_secs(120)).await;
        eprintln!(
            "llama-server ({name} KV) healthy after {:.1} s",
            startup.as_secs_f64()
        );
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        // The f16 arm also runs the suites that are not compared here (needle, a user suite,
        // and images, which this text-only model must refuse without breaking the run).
        let suites = if kv.is_none() {
            format!("passkey,arithmetic,copy,needle,images,{jsonl}")
        } else {
            "passkey,arithmetic,copy".to_owned()
        };
        let mut args = vec!["--quality", suites.as_str()];
        args.extend_from_slice(&common_args);
        let t0 = Instant::now();
        let (q, recs) = quality_run(&server.url, &d, &args).await;
        eprintln!(
            "llama.cpp {name}: quality phase {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        print_quality(&format!("llama.cpp {name}"), &q);
        assert_eq!(
            q["settings"]["server_max_len"], 4096,
            "slot context from /props"
        );
        for s in ["passkey", "arithmetic", "copy"] {
            assert_eq!(q[s]["errors"], 0, "{name} {s}: {}", q[s]);
        }
        if kv.is_none() {
            // Passkey retrieval at ~1k tokens works with the f16 KV cache.
            let at_1k = &q["passkey"]["by_length"]["1024"];
            assert_eq!(at_1k["items"], 2);
            assert_eq!(
                at_1k["accuracy"], 1.0,
                "f16 passkey at 1024 tokens: {at_1k}"
            );
            assert!(q["passkey"]["by_length"]["1536"]["items"] == 2);
            assert_eq!(q["needle"]["errors"], 0);
            assert_eq!(q["jsonl:capitals"]["items"], 2);
            // A text-only model cannot take images: every item is an error, counted, not graded.
            assert_eq!(q["images"]["items"], 0, "{}", q["images"]);
            assert_eq!(q["images"]["errors"], 4);
        }
        let with_logprobs = recs.iter().filter(|r| r.logprobs.is_some()).count();
        assert!(with_logprobs > 0, "llama.cpp returns logprobs when asked");
        arms.push(recs);
    }

    let g = quality::agreement(&arms[0], &arms[1]);
    eprintln!(
        "agreement f16 vs q4_0: {} paired, exact match {}/{} ({:?}), top-1 {:?} over {} positions, mean KL {:?} nats (max {:?}), first divergence char p50 {:?}, token p50 {:?}, finish-reason shifts {:?}, degenerate {}/{}",
        g.paired,
        g.exact_match,
        g.paired,
        g.exact_match_rate,
        g.top1_agreement,
        g.positions_compared,
        g.mean_kl,
        g.max_kl,
        g.first_divergence_char.p50,
        g.first_divergence_token.p50,
        g.finish_reason_shifts,
        g.degenerate_a,
        g.degenerate_b
    );
    for (suite, s) in &g.suites {
        eprintln!(
            "agreement {suite}: f16 {}/{} vs q4_0 {}/{} correct, {} identical, flips {:?}, McNemar p {}",
            s.correct_a, s.paired, s.correct_b, s.paired, s.exact_match, s.flips, s.mcnemar_p
        );
    }
    // 4 passkey + 4 arithmetic + 4 copy items were answered by both arms.
    assert_eq!(g.paired, 12);
    assert_eq!(g.prompt_mismatch, 0);
    assert!(
        g.exact_match_rate.unwrap() < 1.0,
        "a q4_0 KV cache changes some greedy answers"
    );
    assert_eq!(g.divergences.len() as u64, g.paired - g.exact_match);
    assert!(g.logprob_items > 0);
    assert!(
        g.mean_kl.unwrap() > 0.0,
        "q4_0 changes the token distributions"
    );
    let top1 = g.top1_agreement.unwrap();
    assert!(top1 > 0.0 && top1 <= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_cpu_runs_every_text_suite() {
    let Some(v) = engine_vars("vllm-cpu", &["VLLM_PYTHON", "VLLM_ENTRY", "SMOLLM2_HF_DIR"]) else {
        return;
    };
    let _guard = ENGINE_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = vllm_cpu_server(&v[0], &v[1], &v[2], dir.path());
    let startup = server.wait_healthy(Duration::from_secs(600)).await;
    eprintln!("vLLM CPU healthy after {:.1} s", startup.as_secs_f64());
    let tok = Path::new(&v[2])
        .join("tokenizer.json")
        .display()
        .to_string();
    let suite = dir.path().join("capitals.jsonl");
    std::fs::write(
        &suite,
        r#"{"id": "fr", "prompt": "What is the capital of France? Answer with one word.", "expected": "Paris", "match": "contains"}"#,
    )
    .unwrap();
    let suites = format!("passkey,needle,arithmetic,copy,jsonl:{}", suite.display());
    let t0 = Instant::now();
    let (q, recs) = quality_run(
        &server.url,
        dir.path(),
        &[
            "--quality",
            &suites,
            "--quality-depths",
            "0.5",
            "--quality-items",
            "2",
            "--tokenizer",
            &tok,
        ],
    )
    .await;
    eprintln!(
        "vLLM CPU: quality phase {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    print_quality("vLLM CPU", &q);
    // Lengths come from max_model_len 2048: 1024, and 2048 - 24 - 64 rounded down to 1792.
    assert_eq!(q["settings"]["server_max_len"], 2048);
    assert_eq!(q["settings"]["lengths"], serde_json::json!([1024, 1792]));
    for s in ["passkey", "needle", "arithmetic", "copy", "jsonl:capitals"] {
        assert_eq!(q[s]["errors"], 0, "{s}: {}", q[s]);
        assert!(q[s]["items"].as_u64().unwrap() > 0, "{s}");
    }
    // Server-counted prompt lengths sit just above the target (the chat template).
    let at_1792 = q["passkey"]["by_length"]["1792"]["prompt_tokens_mean"]
        .as_f64()
        .unwrap();
    assert!((1792.0..1792.0 + 64.0).contains(&at_1792), "{at_1792}");
    assert!(
        recs.iter().any(|r| r.logprobs.is_some()),
        "vLLM returns logprobs"
    );
}

#[test]
fn dropping_a_server_stops_its_group_and_nothing_else() {
    // A bystander in another process group must survive; the server and its child must not.
    let mut bystander = Command::new("sleep")
        .arg("60")
        .process_group(0)
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("child-pid");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("sleep 60 & echo $! > {}; wait", marker.display()));
    let server = Server::start(cmd, 0, &dir.path().join("log"));
    let t0 = Instant::now();
    while !marker.exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let grandchild: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(server);
    // The grandchild was in the server's group: gone (reaped by init, or a zombie no longer
    // running). The bystander still runs.
    let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z "),
        "the server's child survived: {state}"
    );
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "a process outside the group was signalled"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}
