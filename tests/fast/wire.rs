//! Every wire variant and fault of DOMAIN.md becomes the right record: a token or not, a
//! counted error kind or a counted anomaly; never a panic.

use crate::common;

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
    assert!(r.config.measured().unwrap().llamacpp_cache_prompt_false);
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

/// What a run's outcome is made of, for comparing the two client paths.
fn outcome(r: &RunResult) -> String {
    format!(
        "completed {} failed {} no_tokens {} errors {:?} anomalies {:?} tokens {} ttft samples {} itl samples {} finish {:?}",
        r.requests.completed,
        r.requests.failed,
        r.requests.no_tokens,
        r.errors,
        r.anomalies,
        r.tokens.output_total,
        r.metrics.ttft_ms.count,
        r.metrics.itl_ms.count,
        r.finish_reasons,
    )
}

/// Streaming to a plain `http://` URL goes through the lean HTTP/1.1 path; https, proxies and
/// credentials in the URL go through reqwest. Both must read every variant and fault the same
/// way, and the journal says how each response's instants were taken: `read` on reqwest, the
/// kernel's receive timestamp on the lean path (Linux; a read without one says `read`, and a
/// response with both says `mixed`).
#[tokio::test]
async fn both_client_paths_read_every_fault_the_same() {
    let faults = [
        None,
        Some(Fault::HttpStatus(503)),
        Some(Fault::StreamError { after: 2 }),
        Some(Fault::Reset { after: 3 }),
        Some(Fault::Truncate { after: 3 }),
        Some(Fault::NoDone),
        Some(Fault::ZeroTokens),
        Some(Fault::Malformed),
        Some(Fault::NotSse),
    ];
    let mut kernel_stamped = 0;
    for fault in faults {
        let cfg = TestServerConfig {
            fault,
            fault_every: 2,
            crlf: true,
            comments: true,
            ..base()
        };
        let server = common::server(cfg).await;
        let (lean_dir, reqwest_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let args = ["-n", "10", "-c", "2"];
        let lean = common::run(&server, lean_dir.path(), &args).await;
        let via_reqwest = common::run_via_reqwest(&server, reqwest_dir.path(), &args).await;
        assert_eq!(outcome(&lean), outcome(&via_reqwest), "{fault:?}");
        assert_eq!(
            via_reqwest.server.url, lean.server.url,
            "credentials are not recorded"
        );
        for line in common::journal(reqwest_dir.path()) {
            assert_eq!(line["instants"], "read", "{fault:?}: {line}");
        }
        for line in common::journal(lean_dir.path()) {
            let how = line["instants"]
                .as_str()
                .unwrap_or_else(|| panic!("{line}"));
            assert!(["kernel", "read", "mixed"].contains(&how), "{line}");
            kernel_stamped += usize::from(how == "kernel");
        }
    }
    if cfg!(target_os = "linux") {
        assert!(kernel_stamped > 0, "no response was stamped by the kernel");
    }
}

/// A raw HTTP/1.1 server that answers one request per connection and then closes the socket
/// without saying so (no `Connection: close`), as a server does when its keep-alive timeout
/// expires just as the client reuses the connection.
async fn one_shot_server() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                // Read the head and, for a POST, its body (Content-Length).
                loop {
                    let Ok(n) = sock.read(&mut tmp).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let (ctype, body) = if head.starts_with("GET") {
                    (
                        "application/json",
                        r#"{"object":"list","data":[{"id":"m","owned_by":"vllm"}]}"#.to_owned(),
                    )
                } else {
                    let mut b = String::from("data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n");
                    b += "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" hi\"},\"finish_reason\":\"length\"}]}\n\n";
                    b += "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n";
                    ("text/event-stream", b)
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                // Keep the connection open a moment (the client pools it), then drop it.
                tokio::time::sleep(Duration::from_millis(30)).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_server_is_retried_once() {
    let url = one_shot_server().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(
        dir.path(),
        &["--url", &url, "-n", "6", "-c", "1", "--engine", "vllm"],
    );
    let r = kvbench::runner::run(cfg, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let journal = std::fs::read_to_string(dir.path().join("out.requests.jsonl")).unwrap();
    assert_eq!(r.requests.completed, 6, "errors: {:?}\n{journal}", r.errors);
    assert!(
        r.anomalies
            .get("stale_connection_retry")
            .copied()
            .unwrap_or(0)
            >= 1,
        "the dead pooled connections were hit and retried: {:?}",
        r.anomalies
    );
    assert_eq!(r.tokens.output_total, 6);
}
