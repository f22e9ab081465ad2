//! Every example experiment parses and validates (paths from the environment are stand-ins).

use std::path::Path;

#[test]
fn every_example_is_a_valid_experiment() {
    for (k, v) in [
        ("LLAMA_SERVER", "/opt/llama-server"),
        ("SMOLLM2_GGUF", "/opt/smollm2.gguf"),
        ("VLLM_PYTHON", "/opt/venv/bin/python"),
        ("VLLM_ENTRY", "/opt/vllm_cpu_entry.py"),
        ("SMOLLM2_HF_DIR", "/opt/smollm2-hf"),
        ("MODEL_DIR", "/opt/model"),
        ("CALIBRATED_MODEL_DIR", "/opt/model-kv-scales"),
    ] {
        std::env::set_var(k, v);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let exp = kvbench::experiment::load(&path)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert!(
            exp.arms.len() >= 2,
            "{}: an A/B experiment has two arms or more",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 5, "examples found: {seen}");
}
