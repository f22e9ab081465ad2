//! Unit tests on hand-made comparisons (`tests/fixtures/comparison-*.json`).

use serde_json::{json, Value};

use super::from_value;

/// The fixtures stay JSON (what a file holds); the reports render its typed reading.
fn html(c: &Value) -> String {
    super::html(&from_value(c.clone()).expect("a readable comparison"))
}

fn markdown(c: &Value) -> String {
    super::markdown(&from_value(c.clone()).expect("a readable comparison"))
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The page's text as a browser shows it (for checking content; escaping is checked on the
/// raw page).
fn unescape(h: &str) -> String {
    h.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#x2f;", "/")
        .replace("&amp;", "&")
}

/// Checks that hold for both formats.
fn assert_common(out: &str, c: &Value) {
    // Every arm, every recommendation's criterion, every catalogued warning id.
    for arm in c["arms"].as_array().unwrap() {
        let name = arm["name"].as_str().unwrap();
        assert!(out.contains(name), "arm {name} missing");
        for w in arm["warnings"].as_array().unwrap() {
            assert!(out.contains(w["id"].as_str().unwrap()));
        }
    }
    // Every candidate's criteria (with several candidates the top-level list is the best
    // candidate's, shown in its own table).
    let cands = c["candidates"].as_array().cloned().unwrap_or_default();
    let recs: Vec<&Value> = if cands.len() > 1 {
        cands
            .iter()
            .flat_map(|x| x["recommendations"].as_array().unwrap())
            .collect()
    } else {
        c["recommendations"].as_array().unwrap().iter().collect()
    };
    for r in recs {
        assert!(out.contains(r["criterion"].as_str().unwrap()));
    }
}

#[test]
fn html_has_verdict_reasons_arms_numbers_and_warnings() {
    let c = fixture("comparison-sample.json");
    let raw = html(&c);
    assert!(raw.starts_with("<!DOCTYPE html>"));
    let h = unescape(&raw);
    assert_common(&h, &c);
    // The verdict on top, colour-coded, before any section.
    let verdict = h.find(r#"class="verdict verdict-monitor""#).unwrap();
    assert!(verdict < h.find("<section").unwrap());
    assert!(h.contains(">MONITOR<"));
    assert!(h.contains("recommended arm: fp8-calibrated · baseline: fp8"));
    assert!(h.contains("Monitor: apply fp8-calibrated and watch it."));
    // Reasons with their verdicts (the criterion table and each candidate's table).
    assert!(h.contains("2 FP8 warnings resolved (fp8_q_scale_missing, fp8_kv_scale_default)"));
    assert!(h.contains(r#"<td class="v-monitor">monitor</td>"#));
    assert!(h.contains("Candidate reference: monitor"));
    // Numbers: baseline TTFT p50, throughput with its interval, KV-cache capacity, start-up.
    assert!(h.contains(">52.1<"));
    assert!(h.contains("1,234.5 [1,203.6 … 1,265.4]"));
    assert!(h.contains("6,741,744") && h.contains("3,370,872"));
    assert!(h.contains(">110.2<") && h.contains(">131.7<"));
    // The deltas row: change, CI, significance.
    assert!(h.contains("+5.6 %"));
    assert!(h.contains("(worse)") && h.contains("within noise"));
    // Quality per suite and arm, and per context length.
    assert!(h.contains("95.0 % (38/40)"));
    assert!(h.contains("passkey by context length"));
    assert!(h.contains("80.0 % (8/10)"));
    assert!(h.contains("passkey-4096-0.5-3"));
    // Warnings: status, note explaining the unresolvable one.
    assert!(h.contains(">resolved<") && h.contains(">persisting<") && h.contains(">new<"));
    assert!(h.contains("prob_scale stays 1.0, so this warning cannot be resolved"));
    // Server facts: dtype requested vs effective, the mismatch flagged.
    assert!(h.contains("<code>bfloat16</code>"));
    assert!(h.contains("asked for auto, server used bfloat16"));
    // Two CDF charts (three arms each), the throughput chart (three dots) and the forest plot
    // (two candidates × the two regression metrics and TTFT p99, ITL p50, E2E p50 where given).
    assert_eq!(h.matches("<polyline").count(), 6);
    assert!(h.contains("Speed against the policy"));
    let forest = &h[h.find("Speed against the policy").unwrap()..];
    let forest = &forest[..forest.find("</svg>").unwrap()];
    assert!(forest.contains("apply 15") && forest.contains("monitor 25"));
    assert_eq!(
        h.matches("<circle").count(),
        3 + forest.matches("<circle").count()
    );
    // Self-contained: nothing to load, no script; the only URL is the SVG namespace.
    assert!(!raw.contains("<script") && !raw.contains("src=") && !raw.contains("<link"));
    assert!(!raw.contains("@import"));
    assert_eq!(
        raw.matches("url(").count(),
        raw.matches("url(#clip-").count()
    );
    assert_eq!(
        raw.matches("http://").count() + raw.matches("https://").count(),
        raw.matches(r#"xmlns="http://www.w3.org/2000/svg""#).count()
    );
}

/// Every `meaning` in the comparison, removed (warnings the catalog would not explain).
fn strip_meanings(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("meaning");
            m.values_mut().for_each(strip_meanings);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_meanings),
        _ => {}
    }
}

#[test]
fn text_from_the_comparison_is_escaped() {
    let c = fixture("comparison-sample.json");
    let h = html(&c);
    assert!(!h.contains("<script>alert"));
    assert!(
        h.contains("&lt;script&gt;alert(&#x27;x&#x27;)&lt;&#x2f;script&gt;"),
        "{}",
        &h[h.find("deprecated &lt;").unwrap_or(0)..][..200]
    );
    // In Markdown the log line sits in a fenced block, which GitHub shows verbatim (never as
    // HTML). The Markdown shows the first lines of warnings the catalog does not explain: take
    // the meanings away.
    let mut c = c;
    strip_meanings(&mut c);
    let m = markdown(&c);
    let line =
        "(APIServer pid=90) WARNING 11-27 10:00:02 [cache.py:266] The `--calculate-kv-scales` \
         option is deprecated <script>alert('x')</script> & will be removed in v0.19.";
    let at = m.find(line).expect("the log line");
    let before = &m[..at];
    assert!(before.rfind("\n```\n").unwrap() > before.rfind("\n## ").unwrap());
    assert_eq!(m.matches("<script>").count(), 1);

    let f = fixture("comparison-failed-arm.json");
    let h = html(&f);
    assert!(h.contains("unrecognized arguments: --kv-cache-dtype fp8_e4m3 &lt;b&gt;"));
    assert!(!h.contains("<b>bold</b>"));
    assert!(h.contains("&lt;b&gt;bold&lt;&#x2f;b&gt;"));
    // In Markdown the log tail sits in a fenced block, where GitHub shows it verbatim.
    let m = markdown(&f);
    assert!(m.contains("```\n(APIServer pid=90) usage: vllm serve"));
}

#[test]
fn markdown_has_the_same_content_as_tables() {
    let c = fixture("comparison-sample.json");
    let m = markdown(&c);
    assert_common(&m, &c);
    assert!(m.starts_with("# kvbench report · fp8\n"));
    assert!(m.contains("## Verdict: **MONITOR**"));
    assert!(m.contains("> Monitor: apply fp8-calibrated and watch it."));
    for title in [
        "## Recommendations",
        "## Arms",
        "## Latency per arm",
        "## Throughput per arm",
        "## Deltas against the baseline",
        "## Quality",
        "## Warnings",
        "## Server facts",
        "## Decision policy",
    ] {
        assert!(m.contains(title), "{title}");
    }
    assert!(m.contains("1,234.5 [1,203.6 … 1,265.4]"));
    assert!(m.contains("6,741,744"));
    // Accuracy as a percentage with its interval in the top table, as counts below.
    assert!(m.contains("95.0 %") && m.contains("| 38/40 |"), "{m}");
    assert!(!m.contains("<svg"));
    // Every table line has the same number of cells as its header; cells are not padded and
    // none is longer than MAX_CELL (a table with a longer cell is written as a list).
    let mut lines = m.lines().peekable();
    let mut tables = 0;
    while let Some(l) = lines.next() {
        if !l.starts_with('|') {
            continue;
        }
        tables += 1;
        let split = |s: &str| -> Vec<String> {
            s.replace("\\|", "\u{1}")
                .split('|')
                .map(|c| c.replace('\u{1}', "\\|"))
                .collect()
        };
        let n = split(l).len();
        while let Some(next) = lines.peek().filter(|x| x.starts_with('|')) {
            let cells = split(next);
            assert_eq!(cells.len(), n, "{next}");
            for c in &cells[1..cells.len() - 1] {
                assert!(
                    c == "  " || (!c.starts_with("  ") && !c.ends_with("  ")),
                    "padded: {next}"
                );
                assert!(c.chars().count() <= super::markdown::MAX_CELL + 2, "{c}");
            }
            lines.next();
        }
    }
    assert!(tables >= 10, "{tables} tables");
    // The deltas row: every candidate's change, interval and significance in one row; the
    // values are in the latency table.
    let row = m
        .lines()
        .find(|l| l.starts_with("| `ttft_ms.p50`") && l.contains(" %"))
        .unwrap();
    assert!(row.contains("+5.6 %") && !row.contains("52.1"), "{row}");
    assert!(row.contains("(worse)"), "{row}");
    assert!(m.contains("| 52.1 |") && m.contains("| 55.0 |"), "{m}");
    assert!(m.contains("Intervals: bootstrap_requests"));
}

#[test]
fn a_failed_arm_shows_its_failure_and_an_inconclusive_verdict() {
    let c = fixture("comparison-failed-arm.json");
    for out in [unescape(&html(&c)), markdown(&c)] {
        assert_common(&out, &c);
        assert!(out.contains("INCONCLUSIVE"));
        assert!(out.contains("the reference arm failed to start (unsupported_argument)"));
        assert!(out.contains("unsupported_argument"));
        assert!(out.contains("unrecognized arguments: --kv-cache-dtype fp8"));
        assert!(out.contains("server log tail"));
        assert!(out.contains("No deltas for reference."));
        assert!(out.contains("no metrics"));
    }
    let h = html(&c);
    assert!(h.contains("verdict-inconclusive"));
    // The failed arm has no distribution: two arms per CDF, and a note.
    assert_eq!(h.matches("<polyline").count(), 4);
    assert!(h.contains("No TTFT distribution for: reference."));
}

#[test]
fn anything_missing_renders_without_panicking() {
    for c in [
        json!({}),
        json!({"arms": [{}], "candidates": [{}]}),
        json!({"decision": null, "arms": [{"metrics": {}, "server": null,
               "distributions": {"ttft_ms": [1.0, 3.0]}, "throughput": {"output_tok_per_s": {"value": null}},
               "quality": {"passkey": null}}],
               "recommendations": [{"criterion": "overall"}], "deltas": {"ttft_ms.p50": {}},
               "warnings": {"resolved": [{}]}, "quality": {"passkey": {"flips": [{}]}}, "policy": null}),
    ] {
        let h = html(&c);
        assert!(h.contains("NO VERDICT"), "{c}");
        assert!(!h.contains("The report template failed"), "{h}");
        let m = markdown(&c);
        assert!(m.contains("## Verdict: **NO VERDICT**"));
        assert!(m.contains("The comparison does not say which policy decided."));
    }
    // A missing value is a dash, never 0.
    let c =
        json!({"decision": "keep", "arms": [{"name": "a", "server": {"kv_cache_tokens": null}}]});
    let h = html(&c);
    let row = h.lines().find(|l| l.contains("KV-cache capacity")).unwrap();
    assert!(row.contains('—') && !row.contains(">0<"), "{row}");
    assert!(html(&c).contains("verdict-keep"));
}

#[test]
fn a_field_of_the_wrong_type_is_refused_with_its_path() {
    for (c, path) in [
        (json!(null), "not a comparison"),
        (json!([]), "not a comparison"),
        (json!({"decision": "weird"}), "decision:"),
        (
            json!({"arms": [{"requests": {"total": "many"}}]}),
            "arms[0].requests.total:",
        ),
        (json!({"arms": [{"name": 7}]}), "arms[0].name:"),
    ] {
        let e = from_value(c.clone()).unwrap_err().to_string();
        assert!(e.starts_with(path), "{c}: {e}");
    }
}

#[test]
fn markdown_escaping_keeps_tables_and_code_intact() {
    use super::markdown::esc;
    assert_eq!(
        esc("a|b<c>*d*\n[e](f) [1 … 2]"),
        r"a\|b\<c\>\*d\* [e]\(f) [1 … 2]"
    );
    let c = json!({"decision": "apply", "arms": [{"name": "x|y", "warnings": [
        {"id": "w", "severity": "warning", "count": 1, "ranks": 1, "first_line": "a `tick` | pipe\nnext"}]}]});
    let m = markdown(&c);
    // A log line goes into a fenced block (its fence longer than any backtick run), verbatim.
    assert!(
        m.contains("```\nw (x|y): a `tick` | pipe\nnext\n```"),
        "{m}"
    );
    assert!(m.contains("`x\\|y"));
}

#[test]
fn a_reference_arm_gets_its_role_and_its_own_quality_table() {
    let mut c = fixture("comparison-sample.json");
    let names: Vec<String> = c["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    let (reference, other) = (names[0].clone(), names[1].clone());
    c["reference"] = json!({"arm": reference, "arms": [{
        "arm": other,
        "quality": {"passkey": {"baseline_accuracy": 0.95, "candidate_accuracy": 0.6, "change_pts": -35.0,
                                 "paired": 20, "lost": 7, "gained": 0, "mcnemar_p": 0.0156, "significant": true, "flips": []}},
        "accuracy_ratio": {"passkey": 0.6316},
        "agreement": {"paired": 60, "exact_match_rate": 0.45, "top1_agreement": 0.912, "mean_kl": 0.0831, "max_kl": 2.5}
    }]});
    for out in [unescape(&html(&c)), markdown(&c)] {
        assert!(
            out.contains(&format!("Against the reference arm: {reference}")),
            "{out}"
        );
        assert!(out.contains("63 %"), "ratio missing");
        assert!(out.contains("-35.0 pts") && out.contains("0.0831") && out.contains("0.016"));
        assert!(out.contains("reference"));
    }
}

/// A comparison the real `compare` made, from seeded synthetic arms (two runs each; the
/// candidate 20 % slower, with a quality drop and FP8 warnings on the baseline), fixed in time.
fn real_comparison() -> crate::compare::Comparison {
    use crate::compare::{compare, Policy};
    use crate::logscan::Catalog;
    let (mut base, cand) = crate::simulate::synthetic_arms(7, 2, 20.0, 3.0, 10.0);
    base.results[0].warnings = vec![crate::logscan::WarningHit {
        id: "fp8_kv_scale_default".into(),
        severity: crate::logscan::Severity::Warning,
        count: 2,
        ranks: 2,
        first_line: "Using KV cache scaling factor 1.0 for fp8_e4m3.".into(),
        text: None,
        meaning: None,
    }];
    let mut c = compare(
        &[base, cand],
        "baseline",
        None,
        &Policy::default(),
        Catalog::default_catalog(),
        Some("snapshot"),
    )
    .unwrap();
    c.created_at = "2026-01-01T00:00:00Z".into();
    c.kvbench_version = "0.0.0-snapshot".into();
    c
}

/// The Markdown report of a real comparison, as a whole (review a change with
/// `cargo insta review`, or `INSTA_UPDATE=always cargo test --lib report`).
#[test]
fn markdown_snapshot_of_a_real_comparison() {
    let c = real_comparison();
    insta::assert_snapshot!("markdown_real_comparison", super::markdown(&c));
}

/// The HTML report's text content (tags stripped, so the snapshot reads as a page; the SVG
/// charts are checked by the Chromium test).
#[test]
fn html_snapshot_of_a_real_comparison() {
    let c = real_comparison();
    let h = super::html(&c);
    let re = regex::Regex::new(r"(?s)<style.*?</style>|<svg.*?</svg>|<[^>]+>").unwrap();
    let text: Vec<String> = re
        .replace_all(&h, "\n")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(unescape)
        .collect();
    insta::assert_snapshot!("html_text_real_comparison", text.join("\n"));
}
