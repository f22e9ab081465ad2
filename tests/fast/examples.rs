//! Every example experiment parses and validates (paths from the environment are stand-ins).

use std::path::Path;
use std::process::Command;

/// The stand-ins for the paths the examples take from the environment.
const STAND_INS: [(&str, &str); 7] = [
    ("LLAMA_SERVER", "/opt/llama-server"),
    ("SMOLLM2_GGUF", "/opt/smollm2.gguf"),
    ("VLLM_PYTHON", "/opt/venv/bin/python"),
    ("VLLM_ENTRY", "/opt/vllm_cpu_entry.py"),
    ("SMOLLM2_HF_DIR", "/opt/smollm2-hf"),
    ("MODEL_DIR", "/opt/model"),
    ("CALIBRATED_MODEL_DIR", "/opt/model-kv-scales"),
];

/// Set in the child that does the work.
const CHILD: &str = "KVBENCH_EXAMPLES_CHILD";

/// The examples read `${VAR}`s from the process environment, and this binary's other tests run
/// beside this one, so the stand-ins are never set with `std::env::set_var`: a copy of this
/// test binary, running only this test, gets them at spawn and does the work.
#[test]
fn every_example_is_a_valid_experiment() {
    if std::env::var_os(CHILD).is_some() {
        return check_every_example();
    }
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let name = format!("{module}::every_example_is_a_valid_experiment");
    let o = Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .envs(STAND_INS)
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    assert!(out.contains("1 passed"), "the child ran no test:\n{out}");
}

fn check_every_example() {
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
