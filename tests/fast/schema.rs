//! The files kvbench writes keep the contract of DESIGN.md, enforced by JSON Schemas generated
//! from the types that write them (docs/schema/): the committed schemas are the types' (run with
//! `KVBENCH_UPDATE_SCHEMA=1` to rewrite them after a deliberate change), and real outputs, made
//! here by real runs and the real `compare`, validate against them. tests/fast/ab.rs validates the
//! comparisons `kvbench ab` writes (adaptive rounds, effort, a reference arm).

use crate::common;

use std::time::Duration;

use kvbench::testserver::TestServerConfig;

fn check_committed(name: &str, generated: serde_json::Value) {
    let path = format!(
        "{}/docs/schema/{name}.schema.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut text = serde_json::to_string_pretty(&generated).unwrap();
    text.push('\n');
    if std::env::var_os("KVBENCH_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{path} differs from the types that write the file: review the change, then rewrite \
         it with KVBENCH_UPDATE_SCHEMA=1 cargo test --test fast schema::"
    );
}

#[test]
fn committed_schemas_are_the_types() {
    check_committed("result", kvbench::schema::result());
    check_committed("comparison", kvbench::schema::comparison());
}

#[test]
fn the_schemas_require_what_other_tools_read() {
    let r = kvbench::schema::result();
    let required = |v: &serde_json::Value| -> Vec<String> {
        v["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_owned())
            .collect()
    };
    for key in [
        "schema_version",
        "kvbench_version",
        "arm",
        "started_at",
        "config",
        "errors",
        "finish_reasons",
        "duration_s",
        "warnings",
        "server_metrics",
        "quality",
        "metrics",
        "throughput",
    ] {
        assert!(required(&r).contains(&key.to_owned()), "result.{key}");
    }
    let c = kvbench::schema::comparison();
    for key in [
        "decision",
        "recommended_arm",
        "recommendations",
        "settled",
        "arms",
        "candidates",
        "deltas",
    ] {
        assert!(required(&c).contains(&key.to_owned()), "comparison.{key}");
    }
}

async fn run_arm(
    dir: &std::path::Path,
    name: &str,
    ttft_ms: u64,
) -> (serde_json::Value, std::path::PathBuf) {
    let server = common::server(TestServerConfig {
        ttft: Duration::from_millis(ttft_ms),
        itl: Duration::from_millis(1),
        output_tokens: Some(3),
        reasoning_tokens: 1,
        ..Default::default()
    })
    .await;
    let out = dir.join(format!("{name}.json"));
    let mut cfg = common::config(dir, &["--url", &server.url(), "-n", "12", "-c", "2"]);
    cfg.output = out.clone();
    cfg.arm = Some(name.to_owned());
    kvbench::runner::run(cfg, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let v = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    (v, out)
}

#[tokio::test]
async fn real_results_and_their_comparison_match_the_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let (a, pa) = run_arm(dir.path(), "fast", 2).await;
    let (b, pb) = run_arm(dir.path(), "slow", 6).await;
    for v in [&a, &b] {
        common::assert_result_schema(v);
        assert_eq!(v["schema_version"], 1);
        // Not launched by kvbench: null, not 0.
        assert!(v["server"]["startup_s"].is_null());
    }
    let arms = kvbench::compare::load(&[pa, pb]).unwrap();
    let c = kvbench::compare::compare(
        &arms,
        "fast",
        None,
        &kvbench::compare::Policy::default(),
        kvbench::logscan::Catalog::default_catalog(),
        None,
    )
    .unwrap();
    let v = serde_json::to_value(&c).unwrap();
    common::assert_comparison_schema(&v);
    // The reports read back what was written, field for field.
    let back = kvbench::report::from_value(v).unwrap();
    assert_eq!(back, c);
}

#[test]
fn a_wrong_type_fails_the_schema() {
    let mut v = serde_json::json!({});
    v["schema_version"] = serde_json::json!("one");
    let validator = jsonschema::draft202012::new(&common::committed_schema("comparison")).unwrap();
    assert!(!validator.is_valid(&v));
}

/// `back` holds what `original` holds, value for value; keys it adds (fields newer than the
/// file) are `null`.
fn holds(original: &serde_json::Value, back: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                let path = format!("{at}/{k}");
                holds(v, b.get(k).unwrap_or(&Value::Null), &path);
                assert!(b.contains_key(k), "{path} is lost");
            }
            for (k, v) in b {
                assert!(o.contains_key(k) || v.is_null(), "{at}/{k} is added: {v}");
            }
        }
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => {
            for (i, (x, y)) in o.iter().zip(b).enumerate() {
                holds(x, y, &format!("{at}/{i}"));
            }
        }
        _ => assert!(original == back, "{at}: {original} became {back}"),
    }
}

/// The committed results (docs/validation, real GPU runs; failed arms among them) load into the
/// typed result and write back what they hold in `config`, `quality` and `server` (facts
/// included), and what they write validates against the schema; the committed comparisons
/// keep their arms' quality suites and server facts the same way.
#[test]
fn committed_files_load_and_write_back_unchanged() {
    let root = format!("{}/docs/validation", env!("CARGO_MANIFEST_DIR"));
    let (mut results, mut comparisons) = (0, 0);
    for dir in std::fs::read_dir(&root).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let original: serde_json::Value = serde_json::from_str(&text).unwrap();
            let at = path.display().to_string();
            if name.starts_with("benchmark_") {
                results += 1;
                let r: kvbench::result::RunResult =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{at}: {e}"));
                let back = serde_json::to_value(&r).unwrap();
                common::assert_result_schema(&back);
                for key in ["config", "quality", "server"] {
                    holds(&original[key], &back[key], &format!("{at}:/{key}"));
                }
            } else if name.starts_with("comparison") {
                comparisons += 1;
                let c = kvbench::report::from_value(original.clone())
                    .unwrap_or_else(|e| panic!("{at}: {e:#}"));
                let back = serde_json::to_value(&c).unwrap();
                let arms = original["arms"].as_array().unwrap();
                for (i, arm) in arms.iter().enumerate() {
                    for key in ["quality", "server"] {
                        let here = format!("{at}:/arms/{i}/{key}");
                        holds(&arm[key], &back["arms"][i][key], &here);
                    }
                }
            }
        }
    }
    assert!(
        results > 10 && comparisons > 2,
        "{results} results, {comparisons} comparisons"
    );
}
