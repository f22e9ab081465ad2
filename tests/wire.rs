//! Every wire variant and fault of DOMAIN.md becomes the right record: a token or not, a
//! counted error kind or a counted anomaly; never a panic.

mod common;

use std::time::Duration;

use kvbench::result::RunResult;
use kvbench::testserver::{Fault, Flavor, TestServerConfig};

fn base() -> TestServerConfig {
    TestServerConfig {
        ttft: Duration::from_millis(5),
        itl: Duration::from_millis(1),
        output_tokens: Some(6),
        ..Default::default()
    }
}

async fn run_with(cfg: TestServerConfig, args: &[&str]) -> RunResult {
    let server = common::server(cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["-n", "10", "-c", "2"];
    all.extend_from_slice(args);
    common::run(&server, dir.path(), &all).await
}

async fn faulted(fault: Fault) -> RunResult {
    run_with(
        TestServerConfig {
            fault: Some(fault),
            fault_every: 2,
            ..base()
        },
        &[],
    )
    .await
}

#[tokio::test]
async fn http_error_with_json_body_is_counted_by_status() {
    let r = faulted(Fault::HttpStatus(503)).await;
    assert_eq!(r.requests.completed, 5);
    assert_eq!(r.requests.failed, 5);
    assert_eq!(r.errors.get("http_503"), Some(&5));
}

#[tokio::test]
async fn error_object_inside_the_stream() {
    let r = faulted(Fault::StreamError { after: 2 }).await;
    assert_eq!(r.errors.get("stream_error"), Some(&5));
    assert_eq!(r.requests.completed, 5);
}

#[tokio::test]
async fn connection_reset_mid_stream() {
    let r = faulted(Fault::Reset { after: 3 }).await;
    assert_eq!(r.errors.get("stream_reset"), Some(&5), "{:?}", r.errors);
    assert_eq!(r.requests.completed, 5);
}

#[tokio::test]
async fn stream_ending_without_done_or_finish_is_incomplete() {
    let r = faulted(Fault::Truncate { after: 3 }).await;
    assert_eq!(r.errors.get("incomplete"), Some(&5), "{:?}", r.errors);
}

#[tokio::test]
async fn missing_done_with_finish_reason_is_an_anomaly_not_an_error() {
    let r = faulted(Fault::NoDone).await;
    assert_eq!(r.requests.failed, 0);
    assert_eq!(r.anomalies.get("missing_done"), Some(&5));
    assert_eq!(r.tokens.output_total, 60);
}

#[tokio::test]
async fn zero_token_stream_is_completed_but_no_ttft_sample() {
    let r = faulted(Fault::ZeroTokens).await;
    assert_eq!(r.requests.failed, 0);
    assert_eq!(r.requests.no_tokens, 5);
    assert_eq!(r.metrics.ttft_ms.count, 5);
    assert_eq!(r.finish_reasons.get("stop"), Some(&5));
}

#[tokio::test]
async fn malformed_chunk_is_counted_and_the_rest_parsed() {
    let r = faulted(Fault::Malformed).await;
    assert_eq!(r.requests.failed, 0);
    assert_eq!(r.anomalies.get("malformed_chunk"), Some(&5));
    assert_eq!(r.tokens.output_total, 60);
}

#[tokio::test]
async fn non_sse_body_is_invalid_response() {
    let r = faulted(Fault::NotSse).await;
    assert_eq!(r.errors.get("invalid_response"), Some(&5), "{:?}", r.errors);
}

#[tokio::test]
async fn crlf_no_space_comments_llamacpp_chat() {
    let r = run_with(
        TestServerConfig {
            crlf: true,
            no_space: true,
            comments: true,
            flavor: Flavor::Llamacpp,
            reasoning_tokens: 2,
            ..base()
        },
        &[],
    )
    .await;
    assert_eq!(r.requests.failed, 0);
    assert!(r.anomalies.is_empty(), "{:?}", r.anomalies);
    assert_eq!(r.tokens.output_total, 60);
    assert_eq!(r.tokens.reasoning_total, 20);
    assert_eq!(r.metrics.ttft_ms.count, 10);
    assert_eq!(
        r.metrics.itl_ms.count, 50,
        "role chunk and finish chunk are not tokens"
    );
    assert_eq!(r.server.engine, "llamacpp");
    assert_eq!(r.config["llamacpp_cache_prompt_false"], true);
}

#[tokio::test]
async fn completions_endpoint_both_flavors() {
    for flavor in [Flavor::Vllm, Flavor::Llamacpp] {
        let r = run_with(
            TestServerConfig { flavor, ..base() },
            &["--endpoint", "completions"],
        )
        .await;
        assert_eq!(r.requests.failed, 0, "{flavor:?}");
        assert_eq!(r.tokens.output_total, 60, "{flavor:?}");
        assert_eq!(r.tokens.output_source, "server", "{flavor:?}");
        assert_eq!(r.metrics.itl_ms.count, 50, "{flavor:?}");
        assert_eq!(r.finish_reasons.get("length"), Some(&10), "{flavor:?}");
        assert_eq!(r.tokens.prompt_source.as_deref(), Some("server"));
    }
}

#[tokio::test]
async fn jsonl_and_images_go_through() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("p.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"tell me a story\", \"max_tokens\": 3}\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
    )
    .unwrap();
    let spec = format!("jsonl:{}", data.display());
    let r = run_with(
        TestServerConfig {
            output_tokens: None,
            ..base()
        },
        &[
            "--dataset",
            &spec,
            "--images",
            "1",
            "--image-size",
            "32x32",
            "--max-tokens",
            "4",
        ],
    )
    .await;
    assert_eq!(r.requests.failed, 0);
    // Items alternate: 3 tokens (item max_tokens) and 4 (--max-tokens).
    assert_eq!(r.tokens.output_total, 5 * 3 + 5 * 4);
}
