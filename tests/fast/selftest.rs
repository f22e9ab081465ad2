//! `kvbench selftest` end to end (binary + child server on loopback), and the fast server's
//! recorded truth. No assertion depends on how fast this machine is.

use std::time::Duration;

use assert_cmd::Command;
use kvbench::selftest::server::{start, FastServerConfig, ServerStats, Truth};
use serde_json::Value;

#[test]
fn selftest_json_reports_every_figure() {
    let out = Command::cargo_bin("kvbench")
        .unwrap()
        .args([
            "selftest",
            "--concurrency",
            "8",
            "--events-per-s",
            "800",
            "--max-tokens",
            "8",
            "--ttft-ms",
            "5",
            "--requests-per-stream",
            "2",
            "--json",
        ])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(r["concurrency"], 8);
    assert_eq!(r["requests"]["total"], 16);
    assert_eq!(r["requests"]["completed"], 16);
    assert_eq!(r["requests"]["failed"], 0);
    assert_eq!(r["requests"]["unmatched"], 0);
    // Each answer has between 4 and 8 tokens (lengths vary by prompt).
    let events = r["token_events"].as_u64().unwrap();
    assert!((16 * 4..=16 * 8).contains(&events), "{events}");
    // First wave: the 8 requests sent at once; then 8 more. One ITL sample per later token.
    assert_eq!(r["ttft_error_first_wave_ms"]["count"], 8);
    assert_eq!(r["ttft_error_ms"]["count"], 8);
    assert_eq!(r["itl_error_ms"]["count"].as_u64().unwrap(), events - 16);
    // The client cannot see a token before the server releases it, nor send after the server
    // received: measured TTFT is never below the truth.
    for k in ["ttft_error_ms", "ttft_error_first_wave_ms"] {
        let p50 = r[k]["p50"].as_f64().unwrap();
        assert!(p50 >= 0.0, "{k} p50 {p50}");
    }
    for k in [
        "events_per_s_per_core",
        "cpu_s_per_million_events",
        "bytes_per_stream",
    ] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {}", r[k]);
    }
    let per_core = r["events_per_s_per_core"].as_f64().unwrap();
    let per_million = r["cpu_s_per_million_events"].as_f64().unwrap();
    assert!((per_core * per_million / 1e6 - 1.0).abs() < 1e-9);
    assert!(r["ttft_error_ms"]["p99"].is_number());
    assert!(r["itl_error_ms"]["p50"].is_number());
    assert_eq!(r["targets"].as_array().unwrap().len(), 2);
    assert!(!r["machine"]["cpu_model"].as_str().unwrap().is_empty());
}

#[test]
fn selftest_table_names_the_targets() {
    let out = Command::cargo_bin("kvbench")
        .unwrap()
        .args([
            "selftest",
            "-c",
            "2",
            "--events-per-s",
            "400",
            "--max-tokens",
            "4",
            "--ttft-ms",
            "1",
            "--requests-per-stream",
            "1",
        ])
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "token events/s per client core",
        "bytes per in-flight stream",
        "ttft_error_ms.p99 < 1",
        "bytes_per_stream <= 65536",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_server_releases_tokens_no_earlier_than_scheduled_and_records_them() {
    let ttft = Duration::from_millis(3);
    let itl = Duration::from_millis(2);
    let srv = start(
        FastServerConfig {
            ttft,
            itl,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    for (path, body) in [
        (
            "v1/chat/completions",
            r#"{"max_tokens":5,"messages":[{"role":"user","content":"key one\nmore words"}]}"#,
        ),
        (
            "v1/completions",
            r#"{"max_tokens":3,"prompt":"key two\nrest"}"#,
        ),
    ] {
        let text = http
            .post(format!("{}/{path}", srv.url()))
            .body(body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    }
    // The body is complete before the server's stream is dropped; wait for the record.
    let mut truth: Vec<Truth> = Vec::new();
    for _ in 0..200 {
        truth = srv.truth();
        if truth.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    truth.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(truth.len(), 2);
    assert_eq!(truth[0].key, "key one");
    assert_eq!(truth[0].token_ns.len(), 5);
    assert_eq!(truth[1].key, "key two");
    assert_eq!(truth[1].token_ns.len(), 3);
    for t in &truth {
        for (k, ns) in t.token_ns.iter().enumerate() {
            let due = (ttft + itl * k as u32).as_nanos() as u64;
            assert!(*ns >= due, "token {k} of {:?} at {ns} ns, due {due}", t.key);
        }
    }
    let stats: ServerStats = http
        .get(format!("{}/selftest/stats", srv.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.token_events, 8);
    assert!(stats.first_arrival_unix_s.unwrap() <= stats.last_end_unix_s.unwrap());
    let reset: ServerStats = http
        .post(format!("{}/selftest/reset", srv.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reset, ServerStats::default());
}
