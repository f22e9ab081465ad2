//! `kvbench ab --on local-gpus` (--gpus with stand-in device ids: the arms are `kvbench
//! test-server`s, which need no GPU): arms of a round at the same time on disjoint device
//! sets, swapped between rounds; a failing arm is its outcome; Ctrl-C stops every job and
//! leaves no server behind; the comparison has the form of a local one.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::exec::{
    add_broken_arm, comparison, experiment, form, interrupt_once_serving, marker, outcome,
    processes_with, results, span, BIN,
};

fn ab(exp: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("ab")
        .arg(exp)
        .arg("--out-dir")
        .arg(out)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// (arm, device set, time span) of one run.
type Placed = (String, String, (f64, f64));

#[test]
fn arms_run_at_once_on_disjoint_device_sets_swapped_between_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let m = marker("crossover");
    let exp = experiment(dir.path(), &["a", "b"], 60, &m, "");
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &["--gpus", "0,1", "--repeat", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let rs = results(&out);
    assert_eq!(rs.len(), 4, "{err}");
    // Per round (file stamps sort by start), each arm's device set.
    let mut by_round: Vec<Vec<Placed>> = vec![Vec::new(), Vec::new()];
    for arm in ["a", "b"] {
        let mine: Vec<_> = rs.iter().filter(|(_, r)| r["arm"] == arm).collect();
        assert_eq!(mine.len(), 2);
        for (i, (_, r)) in mine.iter().enumerate() {
            let p = &r["placement"];
            assert_eq!(p["executor"], "local-gpus", "{r}");
            assert!(p["job_id"].as_str().unwrap().starts_with("kvbench-par_"));
            by_round[i].push((
                arm.to_owned(),
                p["devices"].as_str().unwrap().to_owned(),
                span(r),
            ));
        }
    }
    for round in &by_round {
        // Disjoint sets, at the same time.
        assert_ne!(round[0].1, round[1].1, "{by_round:?}");
        let (a, b) = (round[0].2, round[1].2);
        assert!(
            a.0 < b.1 && b.0 < a.1,
            "runs of one round overlap: {by_round:?}"
        );
    }
    // The crossover: each arm on the other set in the second round.
    assert_ne!(by_round[0][0].1, by_round[1][0].1, "{by_round:?}");
    assert_ne!(by_round[0][1].1, by_round[1][1].1, "{by_round:?}");
    let c = comparison(&out);
    assert_eq!(
        c["execution"]["executors"][0], "local-gpus",
        "{}",
        c["execution"]
    );
    assert_eq!(c["execution"]["balanced"], true, "{}", c["execution"]);
    common::assert_comparison_schema(&c);
    for (_, r) in &rs {
        common::assert_result_schema(r);
    }
}

#[test]
fn the_comparison_has_the_form_of_a_local_one() {
    let dir = tempfile::tempdir().unwrap();
    let m = marker("form");
    let exp = experiment(dir.path(), &["a", "b"], 30, &m, "");
    let (local, par) = (dir.path().join("local"), dir.path().join("par"));
    let o = ab(&exp, &local, &["--repeat", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = ab(
        &exp,
        &par,
        &["--repeat", "1", "--on", "local-gpus", "--gpus", "0,1"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (l, p) = (comparison(&local), comparison(&par));
    let (lf, pf) = (form(&l, &["execution"]), form(&p, &["execution"]));
    assert_eq!(
        lf,
        pf,
        "only local: {:?}; only parallel: {:?}",
        lf.difference(&pf).collect::<Vec<_>>(),
        pf.difference(&lf).collect::<Vec<_>>()
    );
    // The same arms in the same roles. The verdicts themselves are not compared: each comes
    // from one run per arm of an A/A, measured at another moment, so load on the machine may
    // tip one of them (seen at load 4-7 in the shared test binary).
    assert_eq!(l["baseline"], p["baseline"]);
    assert_eq!(l["arms"].as_array().map(Vec::len), Some(2));
    for c in [&l, &p] {
        let verdict = c["decision"].as_str().unwrap_or_default();
        assert!(
            ["apply", "monitor", "keep", "inconclusive"].contains(&verdict),
            "{}",
            c["decision"]
        );
    }
    assert!(l["execution"].is_null(), "{}", l["execution"]);
}

#[test]
fn a_failing_arm_is_its_outcome_and_the_others_finish() {
    let dir = tempfile::tempdir().unwrap();
    let m = marker("failing");
    let exp = experiment(dir.path(), &["a", "b"], 30, &m, "");
    add_broken_arm(&exp);
    let out = dir.path().join("out");
    // Three arms on two sets: the third waits for a free set.
    let o = ab(&exp, &out, &["--gpus", "0,1", "--repeat", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    let rs = results(&out);
    let outcome = |arm: &str| outcome(&rs, arm);
    assert_eq!(outcome("a").as_deref(), Some("ok"), "{err}");
    assert_eq!(outcome("b").as_deref(), Some("ok"), "{err}");
    assert_eq!(outcome("broken").as_deref(), Some("launch_error"), "{err}");
    assert!(err.contains("arm(s) failed: broken"), "{err}");
}

#[test]
fn ctrl_c_stops_every_job_and_leaves_no_server() {
    let dir = tempfile::tempdir().unwrap();
    let m = marker("ctrlc");
    let exp = experiment(dir.path(), &["a", "b"], 100_000, &m, "");
    let out = dir.path().join("out");
    let mut cmd = Command::new(BIN);
    cmd.arg("ab").arg(&exp).args([
        "--out-dir",
        out.to_str().unwrap(),
        "--gpus",
        "0,1",
        "--repeat",
        "1",
    ]);
    let (status, err) = interrupt_once_serving(cmd, &m, 2, Duration::from_secs(60));
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        processes_with(&m).is_empty(),
        "servers left: {:?}",
        processes_with(&m)
    );
    // What was measured is on disk: both arms' runs, each interrupted.
    let rs = results(&out);
    assert_eq!(rs.len(), 2, "{err}");
    for (_, r) in &rs {
        assert_eq!(r["interrupted"], true, "{r}");
        assert!(r["requests"]["completed"].as_u64().unwrap() > 0, "{r}");
    }
}

#[test]
fn an_adaptive_design_runs_its_rounds_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = marker("adaptive");
    let exp = experiment(dir.path(), &["a", "b"], 30, &m, "");
    let out = dir.path().join("out");
    let o = ab(&exp, &out, &["--gpus", "0,1", "--max-runs", "3"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let c = comparison(&out);
    let rounds = c["effort"]["rounds"].as_array().unwrap();
    assert!(!rounds.is_empty(), "{}", c["effort"]);
    let rs = results(&out);
    assert!(rs.len() >= 2, "{err}");
    assert!(rs
        .iter()
        .all(|(_, r)| r["placement"]["executor"] == "local-gpus"));
    assert_eq!(err.matches("started on GPUs").count(), rs.len(), "{err}");
}
