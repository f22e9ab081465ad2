//! The result JSON keeps the contract of DESIGN.md: every key other tools rely on is present
//! (with `null` where nothing was measured).

mod common;

use std::time::Duration;

use kvbench::testserver::TestServerConfig;

#[tokio::test]
async fn result_json_has_every_contract_key() {
    let server = common::server(TestServerConfig {
        ttft: Duration::from_millis(2),
        itl: Duration::from_millis(1),
        output_tokens: Some(3),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    common::run(&server, dir.path(), &["-n", "3"]).await;
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out.json")).unwrap()).unwrap();
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
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    for key in [
        "url",
        "model",
        "version",
        "engine",
        "launch_args",
        "startup_s",
        "facts",
    ] {
        assert!(v["server"].get(key).is_some(), "missing server.{key}");
    }
    for key in ["total", "completed", "failed"] {
        assert!(v["requests"][key].is_u64(), "requests.{key}");
    }
    for key in ["prompt_total", "output_total", "reasoning_total"] {
        assert!(v["tokens"].get(key).is_some(), "tokens.{key}");
    }
    for m in ["ttft_ms", "ttft_answer_ms", "itl_ms", "tpot_ms", "e2e_ms"] {
        for s in ["mean", "std", "min", "p50", "p90", "p95", "p99", "max"] {
            assert!(v["metrics"][m][s].is_f64(), "metrics.{m}.{s}");
        }
    }
    for key in ["requests_per_s", "output_tok_per_s", "total_tok_per_s"] {
        assert!(v["throughput"][key].is_f64(), "throughput.{key}");
    }
    assert_eq!(v["schema_version"], 1);
    assert!(v["arm"].is_null());
    assert!(
        v["server"]["startup_s"].is_null(),
        "not launched by kvbench: null, not 0"
    );
}
