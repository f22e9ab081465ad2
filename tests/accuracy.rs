//! kvbench's measurements against a server whose true delays are known.
//!
//! Tolerances (issue "kvbench run"): TTFT and E2E within max(5 %, 10 ms), ITL and TPOT within
//! max(5 %, 2 ms), at concurrency 1 and 64. The measured errors are printed (run with
//! `--nocapture` to see them).

mod common;

use std::time::Duration;

use kvbench::selftest::server::{self as fast, FastServerConfig, Truth};
use kvbench::stats::{percentile_unsorted, Summary};
use kvbench::testserver::TestServerConfig;

const TTFT_MS: f64 = 200.0;
const ITL_MS: f64 = 20.0;
const TOKENS: u32 = 16;

/// Mean and median must be within the tolerance of the nominal delays. The 99th percentile is
/// held to the server's own 99th percentile: what it actually released, by its record of each
/// token frame's instant. On a shared 2-core machine (CI, a debug build) the in-process server
/// is itself late by several milliseconds in the tail, which is not the client's error; the
/// client's error is the gap between what it measured and what was released.
fn check(name: &str, s: &Summary, truth: f64, released: &[f64], floor_ms: f64, concurrency: usize) {
    let tol = (truth * 0.05).max(floor_ms);
    let mut released = released.to_vec();
    let released_p99 = percentile_unsorted(&mut released, 99.0);
    for (stat, v, want, allowed) in [
        ("mean", s.mean, truth, tol),
        ("p50", s.p50, truth, tol),
        ("p99", s.p99, released_p99, tol),
    ] {
        let v = v.unwrap_or_else(|| panic!("{name}.{stat} missing"));
        let err = v - want;
        eprintln!(
            "concurrency {concurrency:>3}: {name:<8} {stat:<4} measured {v:8.3} ms, truth {want:8.3} ms, error {err:+7.3} ms (tolerance ±{allowed:.1})"
        );
        assert!(
            err.abs() <= allowed,
            "{name}.{stat} = {v:.3} ms, truth {want:.3} ms, tolerance {allowed} ms"
        );
    }
}

/// What the server released, per request: (TTFT, E2E, inter-token gaps) in ms.
fn released(truth: &[Truth]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let ms = |ns: u64| ns as f64 / 1e6;
    let ttft = truth.iter().map(|t| ms(t.token_ns[0])).collect();
    let e2e = truth
        .iter()
        .map(|t| ms(*t.token_ns.last().unwrap()))
        .collect();
    let itl = truth
        .iter()
        .flat_map(|t| t.token_ns.windows(2).map(|w| ms(w[1] - w[0])))
        .collect();
    (ttft, e2e, itl)
}

/// The accuracy tests run one at a time, so they do not add their load to each other's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn accuracy_at(concurrency: usize, requests: u64) {
    let _serial = SERIAL.lock().await;
    let server = fast::start(
        FastServerConfig {
            ttft: Duration::from_millis(TTFT_MS as u64),
            itl: Duration::from_millis(ITL_MS as u64),
            keep_truth: true,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("test server starts");
    let dir = tempfile::tempdir().unwrap();
    let c = concurrency.to_string();
    let n = requests.to_string();
    let r = common::run_url(
        &server.url(),
        dir.path(),
        &[
            "-n",
            &n,
            "-c",
            &c,
            "--max-tokens",
            "16",
            "--input-len",
            "64",
        ],
    )
    .await;
    assert_eq!(r.requests.completed, requests);
    assert_eq!(r.requests.failed, 0);
    assert_eq!(r.tokens.output_total, requests * TOKENS as u64);
    assert_eq!(r.tokens.output_source, "server");
    // The server keeps its record when a response's stream is dropped, just after the body.
    let mut truth = server.truth();
    for _ in 0..200 {
        if truth.len() as u64 >= requests {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        truth = server.truth();
    }
    assert_eq!(truth.len() as u64, requests, "one record per request");
    assert!(truth.iter().all(|t| t.token_ns.len() == TOKENS as usize));
    let (ttft, e2e, itl) = released(&truth);
    let e2e_truth = TTFT_MS + ITL_MS * (TOKENS - 1) as f64;
    check(
        "ttft_ms",
        &r.metrics.ttft_ms,
        TTFT_MS,
        &ttft,
        10.0,
        concurrency,
    );
    check(
        "e2e_ms",
        &r.metrics.e2e_ms,
        e2e_truth,
        &e2e,
        10.0,
        concurrency,
    );
    check("itl_ms", &r.metrics.itl_ms, ITL_MS, &itl, 2.0, concurrency);
    // TPOT is one value per request: (E2E - TTFT) / (tokens - 1).
    let tpot: Vec<f64> = truth
        .iter()
        .map(|t| {
            (t.token_ns[TOKENS as usize - 1] - t.token_ns[0]) as f64 / 1e6 / (TOKENS - 1) as f64
        })
        .collect();
    check(
        "tpot_ms",
        &r.metrics.tpot_ms,
        ITL_MS,
        &tpot,
        2.0,
        concurrency,
    );
    assert_eq!(r.metrics.itl_ms.count, requests * (TOKENS as u64 - 1));
    // Closed loop at full occupancy: throughput is concurrency × tokens / e2e.
    let expect_tps = concurrency as f64 * TOKENS as f64 / (e2e_truth / 1000.0);
    let tps = r.throughput.output_tok_per_s.unwrap();
    eprintln!(
        "concurrency {concurrency:>3}: output tok/s measured {tps:.1}, ideal {expect_tps:.1}"
    );
    assert!(
        tps <= expect_tps * 1.02 && tps >= expect_tps * 0.85,
        "throughput {tps} vs {expect_tps}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_truth_at_concurrency_1() {
    accuracy_at(1, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_truth_at_concurrency_64() {
    accuracy_at(64, 256).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_tokens_split_ttft_from_answer_ttft() {
    let _serial = SERIAL.lock().await;
    let server = common::server(TestServerConfig {
        ttft: Duration::from_millis(100),
        itl: Duration::from_millis(20),
        output_tokens: Some(8),
        reasoning_tokens: 5,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let r = common::run(&server, dir.path(), &["-n", "6", "-c", "2"]).await;
    // First token of any channel at 100 ms; first answer token is token 5: 100 + 5 × 20 ms.
    let ttft = r.metrics.ttft_ms.p50.unwrap();
    let answer = r.metrics.ttft_answer_ms.p50.unwrap();
    assert!((ttft - 100.0).abs() <= 10.0, "ttft {ttft}");
    assert!((answer - 200.0).abs() <= 10.0, "answer ttft {answer}");
    assert_eq!(r.tokens.reasoning_total, 6 * 5);
    assert_eq!(r.tokens.output_total, 6 * 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_client_queueing() {
    let _serial = SERIAL.lock().await;
    // Each request takes ~50 ms; 50 requests/s with at most one in flight must queue.
    let server = common::server(TestServerConfig {
        ttft: Duration::from_millis(50),
        itl: Duration::from_millis(1),
        output_tokens: Some(1),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let r = common::run(
        &server,
        dir.path(),
        &[
            "-n",
            "20",
            "--request-rate",
            "50",
            "--arrival",
            "constant",
            "--max-concurrency",
            "1",
        ],
    )
    .await;
    assert_eq!(r.requests.completed, 20);
    let queue = r.metrics.queue_ms.as_ref().unwrap();
    let from_sched = r.metrics.ttft_from_scheduled_ms.as_ref().unwrap();
    // The 20th request is scheduled at 380 ms but can only start after ~19 × 50 ms = 950 ms.
    assert!(queue.max.unwrap() > 400.0, "queue max {:?}", queue.max);
    assert!(from_sched.mean.unwrap() > r.metrics.ttft_ms.mean.unwrap() + 100.0);
    assert!((r.metrics.ttft_ms.p50.unwrap() - 50.0).abs() <= 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_rate_is_respected() {
    let _serial = SERIAL.lock().await;
    let server = common::server(TestServerConfig {
        ttft: Duration::from_millis(5),
        itl: Duration::from_millis(1),
        output_tokens: Some(2),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let r = common::run(
        &server,
        dir.path(),
        &["-n", "40", "--request-rate", "40", "--arrival", "constant"],
    )
    .await;
    // 40 sends 25 ms apart: the last is sent at 975 ms.
    let d = r.duration_s.unwrap();
    assert!((0.97..1.1).contains(&d), "duration {d}");
    // No send slips by a whole gap (25 ms) into the next one's slot, and the typical send is
    // on time. (The tail is the client's own wake-up lateness: on a loaded 2-core machine it
    // reached 10 ms while the median stayed under 1 ms.)
    let q = r.metrics.queue_ms.unwrap();
    let (p50, p99) = (q.p50.unwrap(), q.p99.unwrap());
    eprintln!("open loop at 40/s: queue p50 {p50:.3} ms, p99 {p99:.3} ms");
    assert!(p50 < 5.0 && p99 < 25.0, "queue p50 {p50} ms, p99 {p99} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_limit_and_warmup_exclusion() {
    let _serial = SERIAL.lock().await;
    let server = common::server(TestServerConfig {
        ttft: Duration::from_millis(20),
        itl: Duration::from_millis(5),
        output_tokens: Some(4),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let r = common::run(
        &server,
        dir.path(),
        &["--duration", "1s", "-c", "2", "--warmup", "3"],
    )
    .await;
    assert_eq!(r.requests.warmup, 3);
    assert!(
        r.requests.completed >= 20,
        "completed {}",
        r.requests.completed
    );
    let d = r.duration_s.unwrap();
    assert!((0.95..1.3).contains(&d), "duration {d}");
    let lines = common::journal(dir.path());
    assert_eq!(lines.len() as u64, r.requests.total + 3);
    assert_eq!(lines.iter().filter(|l| l["warmup"] == true).count(), 3);
    assert_eq!(server.requests(), r.requests.total + 3);
}

/// Goodput against a server whose every request takes TTFT 200 ms, TPOT 20 ms, E2E 500 ms:
/// targets on either side of the truth give a share of 1 or 0, several targets must all hold,
/// and the rate is the good requests over the measured window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodput_counts_the_requests_within_every_target() {
    let _serial = SERIAL.lock().await;
    let server = common::server(TestServerConfig {
        ttft: Duration::from_millis(TTFT_MS as u64),
        itl: Duration::from_millis(ITL_MS as u64),
        output_tokens: Some(TOKENS),
        ..Default::default()
    })
    .await;
    for (slo, share) in [
        (vec!["ttft_ms=300"], 1.0),
        (vec!["ttft_ms=100"], 0.0),
        (vec!["tpot_ms=10"], 0.0),
        (vec!["ttft_ms=300", "e2e_ms=700"], 1.0),
        (vec!["ttft_ms=300,e2e_ms=400"], 0.0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["-n", "8", "-c", "4", "--max-tokens", "16"];
        for s in &slo {
            args.extend(["--slo", s]);
        }
        let r = common::run(&server, dir.path(), &args).await;
        let g = r.goodput.expect("goodput with --slo");
        assert_eq!(g.requests, 8);
        assert_eq!(g.share, Some(share), "{slo:?}");
        assert_eq!(g.good, (share * 8.0) as u64);
        let rate = g.requests_per_s.unwrap();
        let expect = g.good as f64 / r.duration_s.unwrap();
        assert!((rate - expect).abs() < 1e-9, "{rate} vs {expect}");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("out.json")).unwrap()).unwrap();
        common::assert_result_schema(&v);
    }
    // Without targets there is no goodput (null, not 0).
    let dir = tempfile::tempdir().unwrap();
    let r = common::run(&server, dir.path(), &["-n", "2"]).await;
    assert!(r.goodput.is_none());
}
