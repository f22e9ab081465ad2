//! Quality suites end to end against the in-process test server in answer mode: a server
//! whose answers are right for a known set of items must be read back exactly, for every match
//! mode; thinking output is graded on the answer channel only; malformed user lines are
//! reported with their line numbers; generated suites run and pair up across arms.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use kvbench::quality::{self, stats};
use kvbench::testserver::{Answers, Flavor, TestServerConfig};
use serde_json::Value;

/// The number in a prompt "Question K: ...".
fn question_number(prompt: &str) -> Option<u64> {
    let rest = prompt.split("Question ").nth(1)?;
    rest.split(':').next()?.trim().parse().ok()
}

/// Item k asks about 7k. Match modes cycle exact / contains / regex.
fn suite_line(k: u64) -> String {
    let v = 7 * k;
    let (expected, mode) = match k % 3 {
        0 => (format!("Answer {v}"), "exact"),
        1 => (v.to_string(), "contains"),
        _ => (format!("^R-{v}$"), "regex"),
    };
    let prompt = format!("Question {k}: what is 7 times {k}?");
    if k % 5 == 0 {
        serde_json::json!({"id": format!("q{k}"), "messages": [{"role": "user", "content": prompt}],
            "expected": expected, "match": mode})
        .to_string()
    } else {
        serde_json::json!({"id": format!("q{k}"), "prompt": prompt, "expected": expected, "match": mode})
            .to_string()
    }
}

/// Right for every k not divisible by 4; a right answer in each mode's own form.
fn answer(k: u64) -> String {
    let v = 7 * k;
    if k % 4 == 0 {
        return format!("I think it is {}.", v + 1);
    }
    match k % 3 {
        0 => format!("answer {v}."),
        1 => format!("The product is {v}, I am sure."),
        _ => format!("R-{v}"),
    }
}

fn write_suite(dir: &Path, name: &str, lines: &[String]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    path
}

fn answering_server(flavor: Flavor, reasoning_tokens: u32) -> TestServerConfig {
    TestServerConfig {
        flavor,
        ttft: std::time::Duration::from_millis(1),
        itl: std::time::Duration::from_millis(0),
        reasoning_tokens,
        answers: Some(Answers(Arc::new(|prompt: &str| {
            question_number(prompt).map(answer).unwrap_or_default()
        }))),
        ..Default::default()
    }
}

fn journal(dir: &Path) -> Vec<quality::ItemRecord> {
    quality::read_journal(&dir.join("out.quality.jsonl")).unwrap()
}

/// The result's `quality` as its JSON has it.
fn quality_json(r: &kvbench::result::RunResult) -> serde_json::Value {
    serde_json::to_value(r.quality.as_ref().expect("quality in the result")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_fraction_of_right_answers_is_read_back_exactly() {
    for flavor in [Flavor::Vllm, Flavor::Llamacpp] {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (1..=40).map(suite_line).collect();
        let path = write_suite(dir.path(), "facts.jsonl", &lines);
        let server = common::server(answering_server(flavor, 0)).await;
        let spec = format!("jsonl:{}", path.display());
        let r = common::run(&server, dir.path(), &["-n", "2", "--quality", &spec]).await;
        // As the result's JSON has it.
        let q = quality_json(&r);
        let s = &q["jsonl:facts"];
        // k = 4, 8, ..., 40 are answered wrong: 10 of 40.
        assert_eq!(s["items"], 40, "{flavor:?}");
        assert_eq!(s["correct"], 30, "{flavor:?}");
        assert_eq!(s["accuracy"], 0.75, "{flavor:?}");
        assert_eq!(s["errors"], 0);
        let (lo, hi) = stats::wilson(30, 40, stats::Z95).unwrap();
        assert_eq!(s["ci_low"], lo);
        assert_eq!(s["ci_high"], hi);
        assert_eq!(s["finish_reasons"]["stop"], 40);
        assert_eq!(s["skipped_lines"], serde_json::json!([]));
        assert_eq!(
            q["journal"],
            dir.path().join("out.quality.jsonl").display().to_string()
        );
        // Item by item, in every match mode: right exactly where the server was right.
        let recs = journal(dir.path());
        assert_eq!(recs.len(), 40);
        for rec in &recs {
            let k: u64 = rec.id.trim_start_matches('q').parse().unwrap();
            assert_eq!(rec.correct, k % 4 != 0, "{flavor:?} {rec:?}");
            assert_eq!(rec.answer.as_deref(), Some(answer(k).as_str()));
        }
        // The performance phase still ran after the quality phase.
        assert_eq!(r.requests.completed, 2);
        // Agreement of an arm with itself is total.
        let g = quality::agreement(&recs, &recs);
        assert_eq!(g.paired, 40);
        assert_eq!(g.exact_match_rate, Some(1.0));
        assert_eq!(g.suites["jsonl:facts"].mcnemar_p, 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_answer_channel_is_graded_and_reasoning_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    // The server sends the first word token on the reasoning channel; only the rest is the
    // answer.
    let lines = vec![
        serde_json::json!({"id": "a", "prompt": "Question 3: x", "expected": "21", "match": "exact"})
            .to_string(),
        serde_json::json!({"id": "b", "prompt": "Question 4: x", "expected": "29.", "match": "exact"})
            .to_string(),
    ];
    let path = write_suite(dir.path(), "think.jsonl", &lines);
    let server = common::server(answering_server(Flavor::Vllm, 1)).await;
    let spec = format!("jsonl:{}", path.display());
    let r = common::run(&server, dir.path(), &["-n", "1", "--quality", &spec]).await;
    let recs = journal(dir.path());
    // "answer 21." -> reasoning "answer", answer " 21.": exact after normalisation.
    assert_eq!(recs[0].reasoning.as_deref(), Some("answer"));
    assert_eq!(recs[0].answer.as_deref(), Some(" 21."));
    assert!(recs[0].correct);
    assert_eq!(recs[0].reasoning_tokens, Some(1));
    // "I think it is 29." -> answer " think it is 29.": not exactly "29".
    assert!(!recs[1].correct);
    let s = &quality_json(&r)["jsonl:think"];
    assert_eq!(s["reasoning_tokens_total"], 2);
    assert_eq!(s["correct"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_fail_with_their_number_or_are_skipped_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = (1..=4).map(suite_line).collect();
    lines.insert(
        2,
        r#"{"id": "bad", "prompt": "no expected answer"}"#.to_owned(),
    );
    let path = write_suite(dir.path(), "mixed.jsonl", &lines);
    let server = common::server(answering_server(Flavor::Vllm, 0)).await;
    let out = dir.path().join("r.json");
    let spec = format!("jsonl:{}", path.display());
    let o = Command::new(env!("CARGO_BIN_EXE_kvbench"))
        .args([
            "run",
            "--url",
            &server.url(),
            "-n",
            "1",
            "-q",
            "--quality",
            &spec,
        ])
        .arg("-o")
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("mixed.jsonl:3:"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(
        server.requests(),
        0,
        "nothing is sent before the suite is valid"
    );

    let r = common::run(
        &server,
        dir.path(),
        &["-n", "1", "--quality", &spec, "--quality-skip-invalid"],
    )
    .await;
    let s = &quality_json(&r)["jsonl:mixed"];
    assert_eq!(s["items"], 4);
    assert_eq!(s["correct"], 3, "k = 4 is answered wrong");
    assert_eq!(s["skipped_lines"][0]["line"], 3);
    assert!(s["skipped_lines"][0]["error"]
        .as_str()
        .unwrap()
        .contains("expected"));
}

#[tokio::test]
async fn quality_options_are_validated() {
    let server = common::server(TestServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--quality", "passkey,bogus"], "unknown quality suite"),
        (&["--quality-lengths", "1024"], "need --quality"),
        (
            &["--quality", "passkey", "--quality-depths", "1.5"],
            "between 0 and 1",
        ),
        (
            &["--quality", "images", "--endpoint", "completions"],
            "needs --endpoint chat",
        ),
    ];
    for (args, needle) in cases {
        let o = Command::new(env!("CARGO_BIN_EXE_kvbench"))
            .args(["run", "--url", &server.url(), "-q", "-o"])
            .arg(dir.path().join("r.json"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_suites_run_grade_and_pair_across_arms() {
    // A server that answers every generated prompt with a fixed text: the suites must run,
    // record every item, and grade the fixed answer wrong (it holds no right number).
    let server = common::server(TestServerConfig {
        ttft: std::time::Duration::from_millis(1),
        itl: std::time::Duration::from_millis(0),
        answers: Some(Answers(Arc::new(|_: &str| "I am not sure.".to_owned()))),
        ..Default::default()
    })
    .await;
    let mut arms = Vec::new();
    for arm in ["a", "b"] {
        let dir = tempfile::tempdir().unwrap();
        let r = common::run(
            &server,
            dir.path(),
            &[
                "-n",
                "1",
                "--quality",
                "passkey,needle,arithmetic,copy,images",
                "--quality-items",
                "4",
                "--quality-lengths",
                "256,512",
                "--quality-depths",
                "0,1",
            ],
        )
        .await;
        let q = quality_json(&r);
        for suite in ["passkey", "needle", "arithmetic", "copy", "images"] {
            assert_eq!(q[suite]["items"], 4, "{arm} {suite}");
            assert_eq!(q[suite]["correct"], 0, "{arm} {suite}");
            assert_eq!(q[suite]["accuracy"], 0.0);
            assert_eq!(q[suite]["ci_low"], 0.0);
        }
        let by_len = &q["passkey"]["by_length"];
        assert_eq!(by_len["256"]["items"], 2);
        assert_eq!(by_len["512"]["by_depth"]["1"]["items"], 1);
        // The test server's model entry says max_model_len 4096: the default would go up to
        // it, but explicit lengths win.
        assert_eq!(q["settings"]["lengths_source"], "user");
        assert_eq!(q["settings"]["server_max_len"], 4096);
        arms.push(journal(dir.path()));
    }
    let g = quality::agreement(&arms[0], &arms[1]);
    assert_eq!(g.paired, 20, "same settings, same prompts");
    assert_eq!(g.prompt_mismatch, 0);
    assert_eq!(g.exact_match, 20);
    // Images were sent as PNG data URLs on the chat endpoint.
    let img = arms[0].iter().find(|r| r.suite == "images").unwrap();
    assert!(img.expected.parse::<u32>().is_ok());
    let _: Value = serde_json::to_value(img).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suite_stops_early_once_the_paired_drop_is_beyond_doubt() {
    let (base_dir, cand_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let lines: Vec<String> = (1..=40).map(suite_line).collect();
    let path = write_suite(base_dir.path(), "facts.jsonl", &lines);
    let spec = format!("jsonl:{}", path.display());
    // The baseline is right on 30 of 40 items (k not divisible by 4).
    let right = common::server(answering_server(Flavor::Vllm, 0)).await;
    common::run(&right, base_dir.path(), &["-n", "1", "--quality", &spec]).await;
    let base_journal = base_dir.path().join("out.quality.jsonl");
    // The candidate is wrong on every item: a collapse.
    let wrong = common::server(TestServerConfig {
        ttft: std::time::Duration::from_millis(1),
        itl: std::time::Duration::from_millis(0),
        answers: Some(Answers(Arc::new(|_: &str| "I am not sure.".to_owned()))),
        ..Default::default()
    })
    .await;
    let r = common::run(
        &wrong,
        cand_dir.path(),
        &[
            "-n",
            "1",
            "--quality",
            &spec,
            "--quality-paired-with",
            base_journal.to_str().unwrap(),
        ],
    )
    .await;
    let s = &quality_json(&r)["jsonl:facts"];
    // Exact McNemar with 0 gained: p = 2 × 0.5^lost, below 0.001 from 11 lost on; the 11th
    // baseline-right item is k = 14.
    assert_eq!(s["stopped_early"]["after_items"], 14, "{s}");
    assert_eq!(s["stopped_early"]["lost"], 11, "{s}");
    assert_eq!(s["stopped_early"]["gained"], 0, "{s}");
    assert_eq!(s["items"], 14, "{s}");
    assert_eq!(s["planned"], 40, "{s}");
    // The same arm against itself never stops early.
    let same_dir = tempfile::tempdir().unwrap();
    let r = common::run(
        &right,
        same_dir.path(),
        &[
            "-n",
            "1",
            "--quality",
            &spec,
            "--quality-paired-with",
            base_journal.to_str().unwrap(),
        ],
    )
    .await;
    let s = &quality_json(&r)["jsonl:facts"];
    assert!(s.get("stopped_early").is_none(), "{s}");
    assert_eq!(s["items"], 40);
}
