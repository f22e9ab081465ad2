//! Decision-table tests: every verdict path, including the unattainable criterion.

use super::*;
use crate::metrics::{Metrics, RequestCounts, Throughput, Tokens};
use crate::quality::summary::Score;
use crate::result::{ConfigCheck, RunConfigRecord, ServerFacts, ServerInfo, SCHEMA_VERSION};
use crate::stats::Summary;
use serde_json::Value;

const FP8: [&str; 3] = [
    "fp8_q_scale_missing",
    "fp8_kv_scale_default",
    "fp8_qprob_scale_uncalibrated",
];

fn warnings(ids: &[&str]) -> Vec<crate::logscan::WarningHit> {
    ids.iter()
        .map(|id| crate::logscan::WarningHit {
            id: (*id).to_owned(),
            severity: crate::logscan::Severity::Warning,
            count: 1,
            ranks: 1,
            first_line: (*id).to_owned(),
            text: None,
            meaning: None,
        })
        .collect()
}

/// An arm whose per-request TTFT and E2E are `scale` times a fixed spread, with given warnings.
fn arm(name: &str, scale: f64, ids: &[&str], calculate: bool, quality: Option<f64>) -> ArmRuns {
    let ttft: Vec<f64> = (0..200)
        .map(|i| scale * (100.0 + (i % 17) as f64))
        .collect();
    let e2e: Vec<f64> = ttft.iter().map(|t| t + 1000.0 * scale).collect();
    let s = Samples {
        ttft_ms: ttft.clone(),
        ttft_answer_ms: ttft.clone(),
        itl_ms: (0..400).map(|i| scale * (10.0 + (i % 5) as f64)).collect(),
        tpot_ms: (0..200).map(|i| scale * (10.0 + (i % 3) as f64)).collect(),
        e2e_ms: e2e.clone(),
        tokens_e2e: e2e.iter().map(|e| (100.0, *e)).collect(),
    };
    let tput = 100.0 * 200.0 / (e2e.iter().sum::<f64>() / 1000.0) * 8.0;
    let facts = ServerFacts {
        config_check: Some(ConfigCheck {
            requested: KvSettings {
                kv_cache_dtype: Some("fp8".into()),
                calculate_kv_scales: Some(calculate),
                ..KvSettings::default()
            },
            ..ConfigCheck::default()
        }),
        ..ServerFacts::default()
    };
    let r = RunResult {
        schema_version: SCHEMA_VERSION,
        kvbench_version: "test".into(),
        arm: Some(name.into()),
        started_at: String::new(),
        finished_at: String::new(),
        interrupted: false,
        goodput: None,
        phases: Default::default(),
        placement: None,
        capacity: None,
        outcome: "ok".into(),
        server: ServerInfo {
            facts,
            ..ServerInfo::default()
        },
        config: RunConfigRecord::NotRun {
            workload_args: Vec::new(),
        },
        requests: RequestCounts {
            total: 200,
            completed: 200,
            ..RequestCounts::default()
        },
        errors: BTreeMap::new(),
        anomalies: BTreeMap::new(),
        finish_reasons: BTreeMap::new(),
        tokens: Tokens::default(),
        metrics: Metrics {
            ttft_ms: Summary::of(&ttft),
            ttft_answer_ms: Summary::of(&ttft),
            itl_ms: Summary::of(&s.itl_ms),
            tpot_ms: Summary::of(&s.tpot_ms),
            e2e_ms: Summary::of(&e2e),
            ..Metrics::default()
        },
        throughput: Throughput {
            requests_per_s: Some(tput / 100.0),
            output_tok_per_s: Some(tput),
            total_tok_per_s: None,
        },
        duration_s: Some(10.0),
        warnings: warnings(ids),
        server_metrics: None,
        quality: quality.map(|a| {
            let passkey = SuiteSummary {
                score: Score {
                    items: 40,
                    correct: (a * 40.0) as u64,
                    accuracy: Some(a),
                    ci_low: Some(0.0),
                    ci_high: Some(1.0),
                    errors: 0,
                },
                ..SuiteSummary::default()
            };
            crate::quality::QualityResult::of_suites([("passkey".to_owned(), passkey)].into())
        }),
        journal: None,
        failure: None,
    };
    ArmRuns {
        name: name.into(),
        paths: vec![PathBuf::from(format!("{name}.json"))],
        results: vec![r],
        samples: vec![Some(s)],
        quality_items: None,
    }
}

/// The comparison as the JSON file holds it.
fn run(base: &ArmRuns, cand: &ArmRuns, policy: &Policy) -> Value {
    let c = compare(
        &[base.clone(), cand.clone()],
        &base.name,
        None,
        policy,
        Catalog::default_catalog(),
        None,
    )
    .unwrap();
    serde_json::to_value(c).unwrap()
}

fn rec<'a>(c: &'a Value, criterion: &str) -> &'a Value {
    c["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["criterion"] == criterion)
        .unwrap_or_else(|| panic!("no {criterion} in {:#}", c["recommendations"]))
}

#[test]
fn apply_when_every_criterion_holds() {
    let base = arm("base", 1.0, &FP8, false, Some(0.9));
    // A change that resolves all three (e.g. a calibrated checkpoint); speed unchanged.
    let cand = arm("cand", 1.0, &[], false, Some(0.9));
    let c = run(&base, &cand, &Policy::default());
    assert_eq!(c["decision"], "apply", "{:#}", c["recommendations"]);
    assert_eq!(c["recommended_arm"], "cand");
    assert_eq!(c["deltas"]["ttft_ms.p50"]["significant"], false);
    assert_eq!(rec(&c, "warnings")["evidence"]["counted_resolved"], 3);
    assert_eq!(rec(&c, "overall")["verdict"], "apply");
}

#[test]
fn a_baseline_without_warnings_says_so() {
    let base = arm("f16", 1.0, &[], false, None);
    let cand = arm("q8_0", 1.0, &[], false, None);
    let lenient = Policy {
        min_warnings_resolved: 0,
        ..Policy::default()
    };
    let c = run(&base, &cand, &lenient);
    let w = rec(&c, "warnings");
    assert_eq!(w["verdict"], "apply", "{w}");
    assert_eq!(
        w["reason"],
        "no fp8 warnings printed on \"f16\", so none to resolve on \"q8_0\" (need >= 0)"
    );
    // The default policy needs 3: the criterion cannot be met, and says why.
    let c = run(&base, &cand, &Policy::default());
    let w = rec(&c, "warnings");
    assert_eq!(w["verdict"], "keep", "{w}");
    assert!(
        w["reason"]
            .as_str()
            .unwrap()
            .ends_with("cannot be met by construction: the baseline prints only 0 fp8 warnings"),
        "{w}"
    );
}

#[test]
fn a_a_comparison_is_no_significant_difference() {
    let a = arm("a", 1.0, &FP8, false, None);
    let mut b = a.clone();
    b.name = "b".into();
    let c = run(&a, &b, &Policy::default());
    for (k, d) in c["deltas"].as_object().unwrap() {
        assert_eq!(d["significant"], false, "{k}: {d}");
        let (lo, hi) = (
            d["ci_low_pct"].as_f64().unwrap(),
            d["ci_high_pct"].as_f64().unwrap(),
        );
        assert!(lo <= 0.0 && hi >= 0.0, "{k}: {d}");
    }
}

#[test]
fn monitor_and_keep_by_regression_size() {
    let base = arm("base", 1.0, &FP8, false, Some(0.9));
    let c = run(
        &base,
        &arm("slow20", 1.2, &[], false, Some(0.9)),
        &Policy::default(),
    );
    assert_eq!(c["decision"], "monitor", "{:#}", c["recommendations"]);
    assert_eq!(rec(&c, "ttft_ms.p50")["verdict"], "monitor");
    let c = run(
        &base,
        &arm("slow40", 1.4, &[], false, Some(0.9)),
        &Policy::default(),
    );
    assert_eq!(c["decision"], "keep");
    assert_eq!(rec(&c, "ttft_ms.p50")["verdict"], "keep");
    let tput = rec(&c, "output_tok_per_s")["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(tput.contains("lower is worse"), "{tput}");
}

#[test]
fn calculate_kv_scales_cannot_meet_three_resolved_by_construction() {
    let base = arm("baseline", 1.0, &FP8, false, Some(0.9));
    let cand = arm(
        "calibrated",
        1.0,
        &[
            "fp8_qprob_scale_uncalibrated",
            "calculate_kv_scales_deprecated",
        ],
        true,
        Some(0.9),
    );
    let c = run(&base, &cand, &Policy::default());
    assert_eq!(c["decision"], "keep");
    let w = rec(&c, "warnings");
    assert_eq!(w["verdict"], "keep");
    assert_eq!(w["evidence"]["counted_resolved"], 2);
    assert_eq!(w["evidence"]["resolvable_by_change"], 2);
    assert_eq!(w["evidence"]["attainable"], false);
    let reason = w["reason"].as_str().unwrap();
    assert!(reason.contains("cannot be met by construction"), "{reason}");
    assert!(
        reason.contains("fp8_qprob_scale_uncalibrated persists"),
        "{reason}"
    );
    assert!(
        reason.contains("calibrated k/v and q/prob scales"),
        "{reason}"
    );
    let diff = &c["warnings"];
    assert_eq!(diff["change_under_test"], "calculate_kv_scales");
    assert_eq!(diff["new"][0]["id"], "calculate_kv_scales_deprecated");
    let note = diff["persisting"][0]["note"].as_str().unwrap();
    assert!(
        note.contains("not resolvable by `calculate_kv_scales`"),
        "{note}"
    );
    // With a policy asking for 2, the same data applies.
    let lenient = Policy {
        min_warnings_resolved: 2,
        ..Policy::default()
    };
    assert_eq!(run(&base, &cand, &lenient)["decision"], "apply");
}

#[test]
fn a_failed_arm_is_inconclusive_with_the_reason() {
    let base = arm("baseline", 1.0, &FP8, false, None);
    let mut cand = arm("calibrated", 1.0, &[], true, None);
    cand.results[0].outcome = "unsupported_argument".into();
    cand.results[0].failure = Some(crate::server::Failure {
        kind: "unsupported_argument".into(),
        message: "vllm: error: unrecognized arguments: --calculate-kv-scales".into(),
        log_tail: String::new(),
    });
    let c = run(&base, &cand, &Policy::default());
    assert_eq!(c["decision"], "inconclusive");
    let r = rec(&c, "arms")["reason"].as_str().unwrap().to_owned();
    assert!(
        r.contains("no longer accepts --calculate-kv-scales") && r.contains("checkpoint"),
        "{r}"
    );
    assert_eq!(c["arms"][1]["outcome"], "unsupported_argument");
}

#[test]
fn missing_journals_and_missing_quality() {
    let base = arm("base", 1.0, &FP8, false, None);
    let mut cand = arm("cand", 1.0, &[], false, None);
    cand.samples = vec![None];
    let c = run(&base, &cand, &Policy::default());
    assert_eq!(c["decision"], "inconclusive", "{:#}", c["recommendations"]);
    assert_eq!(rec(&c, "ttft_ms.p50")["verdict"], "inconclusive");
    assert_eq!(rec(&c, "quality")["verdict"], "monitor");
}

#[test]
fn quality_drop_without_pairing_counts_and_policy_parses() {
    let base = arm("base", 1.0, &FP8, false, Some(0.95));
    let c = run(
        &base,
        &arm("worse", 1.0, &[], false, Some(0.80)),
        &Policy::default(),
    );
    assert_eq!(rec(&c, "quality.passkey")["verdict"], "keep");
    assert_eq!(c["decision"], "keep");
    let p = Policy::parse(
        "min_warnings_resolved = 2\nregression_metrics = [\"e2e_ms.p90\"]\n",
        "p.toml",
    )
    .unwrap();
    assert_eq!(p.min_warnings_resolved, 2);
    assert_eq!(p.apply_max_regression_pct, 15.0);
    let e = Policy::parse("min_warnings = 2\n", "p.toml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("p.toml:"), "{e}");
    assert!(Policy::parse("regression_metrics = [\"ttft\"]\n", "p.toml").is_err());
}

#[test]
fn a_reference_arm_is_compared_with_every_arm_and_is_not_a_candidate() {
    // bf16 KV (no FP8 warnings, best quality), FP8 baseline, and a calibrated candidate.
    let reference = arm("reference", 1.0, &[], false, Some(1.0));
    let base = arm("fp8", 1.0, &FP8, false, Some(0.5));
    let cand = arm("fp8-calibrated", 1.0, &FP8[2..], true, Some(0.75));
    let arms = [base.clone(), reference.clone(), cand.clone()];
    let c = compare(
        &arms,
        "fp8",
        Some("reference"),
        &Policy::default(),
        Catalog::default_catalog(),
        None,
    )
    .unwrap();
    let cands: Vec<&str> = c.candidates.iter().map(|x| x.arm.as_str()).collect();
    assert_eq!(cands, ["fp8-calibrated"]);
    assert_eq!(c.arms.len(), 3);
    let section = c.reference.as_ref().unwrap();
    assert_eq!(section.arm, "reference");
    let per_arm = &section.arms;
    let names: Vec<&str> = per_arm.iter().map(|x| x.arm.as_str()).collect();
    assert_eq!(names, ["fp8", "fp8-calibrated"]);
    assert_eq!(per_arm[0].accuracy_ratio["passkey"], Some(0.5));
    assert_eq!(per_arm[1].accuracy_ratio["passkey"], Some(0.75));
    assert_eq!(per_arm[1].quality["passkey"].change_pts, Some(-25.0));

    // Without a reference the bf16 arm would be a candidate; an unknown name is an error, and a
    // reference that leaves no candidate is one too.
    let c = compare(
        &arms,
        "fp8",
        None,
        &Policy::default(),
        Catalog::default_catalog(),
        None,
    )
    .unwrap();
    assert_eq!(c.candidates.len(), 2);
    assert!(c.reference.is_none());
    let e = compare(
        &arms,
        "fp8",
        Some("bf16"),
        &Policy::default(),
        Catalog::default_catalog(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no reference arm named \"bf16\""), "{e}");
    let e = compare(
        &[base, reference],
        "fp8",
        Some("reference"),
        &Policy::default(),
        Catalog::default_catalog(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("needs a candidate arm"), "{e}");
}

#[test]
fn an_unreadable_log_makes_the_warnings_criterion_inconclusive() {
    let base = arm("base", 1.0, &FP8, false, Some(0.9));
    // The candidate's log could not be read: its warnings list is empty, which must not read
    // as "all three resolved".
    let mut cand = arm("cand", 1.0, &[], false, Some(0.9));
    cand.results[0].server.facts.log_error = Some("permission denied".into());
    let c = run(&base, &cand, &Policy::default());
    let w = rec(&c, "warnings");
    assert_eq!(w["verdict"], "inconclusive", "{w}");
    assert!(w["reason"].as_str().unwrap().contains("permission denied"));
    assert_eq!(c["decision"], "inconclusive");
}

#[test]
fn settled_speed_criteria_follow_their_bounds() {
    // +5 %, one run each: the interval includes the assumed 5 % drift, so "apply" is not yet
    // settled (its one-sided 95 % upper bound, about +19.5 %, is above the 15 % limit)...
    let base = arm("base", 1.0, &FP8, false, Some(0.9));
    let near = arm("near", 1.05, &[], false, Some(0.9));
    let c = run(&base, &near, &Policy::default());
    let t = rec(&c, "ttft_ms.p50");
    assert_eq!(t["verdict"], "apply");
    assert_eq!(t["settled"], false, "{t}");
    assert!(t["open"].as_str().unwrap().contains("15 % limit"), "{t}");
    assert_eq!(c["settled"], false);
    // ... while doubled delays are a settled keep after one run.
    let slow = arm("slow", 2.0, &[], false, Some(0.9));
    let c = run(&base, &slow, &Policy::default());
    let t = rec(&c, "ttft_ms.p50");
    assert_eq!(
        (t["verdict"].as_str(), t["settled"].as_bool()),
        (Some("keep"), Some(true)),
        "{t}"
    );
    assert_eq!(c["settled"], true);
    assert_eq!(c["candidates"][0]["settled"], true);
}

#[test]
fn a_wide_interval_wholly_beyond_the_keep_limit_decides() {
    // Two runs per arm whose values spread widely, all far slower: the interval is wider than
    // max_ci_width_pct, but every value in it is a regression beyond 25 %.
    let base = arm("base", 1.0, &FP8, false, Some(0.9));
    let mut base2 = base.clone();
    let mut slow = arm("slow", 2.0, &[], false, Some(0.9));
    let slow_b = arm("slow", 4.0, &[], false, Some(0.9));
    let base_b = arm("base", 0.7, &FP8, false, Some(0.9));
    base2.results.push(base_b.results[0].clone());
    base2.samples.push(base_b.samples[0].clone());
    slow.results.push(slow_b.results[0].clone());
    slow.samples.push(slow_b.samples[0].clone());
    let c = run(&base2, &slow, &Policy::default());
    let t = rec(&c, "ttft_ms.p50");
    let (lo, hi) = (
        t["evidence"]["ci_low_pct"].as_f64().unwrap(),
        t["evidence"]["ci_high_pct"].as_f64().unwrap(),
    );
    assert!(
        100.0 * ((1.0 + hi / 100.0) / (1.0 + lo / 100.0)).ln() > 50.0,
        "{t}"
    );
    assert!(lo > 25.0, "{t}");
    assert_eq!(t["verdict"], "keep", "{t}");
}

/// `arm` with a load sweep whose knee is `knee` (levels 1, 8, 32).
fn with_knee(mut a: ArmRuns, knee: Option<f64>) -> ArmRuns {
    use crate::capacity::{Capacity, Level, LoadBy};
    let levels = [1.0, 8.0, 32.0]
        .iter()
        .map(|&load| Level {
            load,
            goodput_share: Some(if knee.is_some_and(|k| load <= k) {
                1.0
            } else {
                0.5
            }),
            ..Level::default()
        })
        .collect();
    a.results[0].capacity = Some(Capacity {
        by: LoadBy::Concurrency,
        share_target: 0.99,
        levels,
        skipped: Vec::new(),
        knee,
        sized_from_kv_tokens: None,
    });
    a
}

#[test]
fn the_capacity_criterion_is_off_unless_asked_and_reads_the_knees() {
    let base = with_knee(arm("base", 1.0, &FP8, false, Some(0.9)), Some(8.0));
    let policy = Policy {
        capacity_gain_pct: Some(50.0),
        ..Policy::default()
    };
    // Off by default: no criterion, though both arms swept.
    let cand = with_knee(arm("more", 1.0, &[], false, Some(0.9)), Some(32.0));
    let c = run(&base, &cand, &Policy::default());
    assert!(c["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["criterion"] != "capacity"));
    assert_eq!(c["capacity"]["more"]["knee"]["value"], 32.0);
    assert_eq!(c["capacity"]["base"]["goodput_share_at_knee"], 1.0);
    // A rise of at least the gain: apply, a dividend.
    let c = run(&base, &cand, &policy);
    let r = rec(&c, "capacity");
    assert_eq!(r["verdict"], "apply", "{r}");
    assert_eq!(r["evidence"]["dividend"], true, "{r}");
    // A fall by as much: keep.
    let less = with_knee(arm("less", 1.0, &[], false, Some(0.9)), Some(1.0));
    assert_eq!(
        rec(&run(&base, &less, &policy), "capacity")["verdict"],
        "keep"
    );
    // No knee on the candidate (even the lowest level missed): keep.
    let none = with_knee(arm("none", 1.0, &[], false, Some(0.9)), None);
    assert_eq!(
        rec(&run(&base, &none, &policy), "capacity")["verdict"],
        "keep"
    );
    // No sweep on the candidate: inconclusive, with what to set.
    let unswept = arm("unswept", 1.0, &[], false, Some(0.9));
    let r = run(&base, &unswept, &policy);
    let r = rec(&r, "capacity");
    assert_eq!(r["verdict"], "inconclusive", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("sweep"), "{r}");
}

#[test]
fn a_capacity_dividend_tolerates_a_light_load_regression_up_to_its_limit() {
    let base = with_knee(arm("base", 1.0, &FP8, false, Some(0.9)), Some(8.0));
    // 20 % slower at light load: monitor under the default policy.
    let slow = with_knee(arm("slow20", 1.2, &[], false, Some(0.9)), Some(32.0));
    let policy = Policy {
        capacity_gain_pct: Some(50.0),
        ..Policy::default()
    };
    let c = run(&base, &slow, &policy);
    let t = rec(&c, "ttft_ms.p50");
    assert_eq!(t["verdict"], "apply", "{t}");
    assert!(t["reason"].as_str().unwrap().contains("tolerated"), "{t}");
    // Beyond the tolerated regression, the speed criterion stands.
    let strict = Policy {
        capacity_tolerated_regression_pct: Some(10.0),
        ..policy.clone()
    };
    let c = run(&base, &slow, &strict);
    assert_eq!(rec(&c, "ttft_ms.p50")["verdict"], "monitor");
    // Without a dividend nothing is tolerated.
    let same = with_knee(arm("same", 1.2, &[], false, Some(0.9)), Some(8.0));
    let c = run(&base, &same, &policy);
    assert_eq!(rec(&c, "ttft_ms.p50")["verdict"], "monitor");
}
