//! `kvbench compare` and `kvbench ab`: from results (or an experiment file) to the comparison
//! JSON, the reports, and the verdict block on the terminal.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::arm::{self, ArmOptions};
use crate::cli::{AbArgs, CompareArgs};
use crate::compare::{self, Policy};
use crate::experiment;
use crate::logscan::{Catalog, DEFAULT_CATALOG};
use crate::result::write_json;

/// Exit code of `kvbench ab` when an arm failed (the comparison and reports are still written).
pub const EXIT_ARM_FAILED: u8 = 3;

fn catalog(path: Option<&Path>) -> anyhow::Result<Catalog> {
    match path {
        Some(p) => Catalog::from_file(p),
        None => Catalog::parse(DEFAULT_CATALOG, "embedded catalog"),
    }
}

/// The verdict block printed at the end of `compare` and `ab`.
pub fn verdict_block(c: &Value) -> String {
    let mut out = String::new();
    let decision = c["decision"].as_str().unwrap_or("inconclusive");
    out += &format!("\nkvbench verdict: {}", decision.to_uppercase());
    if let Some(a) = c["recommended_arm"].as_str() {
        out += &format!(" ({a})");
    }
    out += "\n";
    for r in c["recommendations"].as_array().into_iter().flatten() {
        out += &format!(
            "  [{:<12}] {:<16} {}\n",
            r["verdict"].as_str().unwrap_or("?"),
            r["criterion"].as_str().unwrap_or("?"),
            r["reason"].as_str().unwrap_or("")
        );
    }
    out
}

/// Writes the comparison and its reports; returns the paths written.
fn write_outputs(
    c: &Value,
    json: &Path,
    md: Option<&Path>,
    html: Option<&Path>,
) -> anyhow::Result<Vec<PathBuf>> {
    write_json(json, c)?;
    let mut written = vec![json.to_owned()];
    if let Some(p) = md {
        let text = crate::report::markdown(c);
        if p.as_os_str() == "-" {
            print!("{text}");
        } else {
            std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
            written.push(p.to_owned());
        }
    }
    if let Some(p) = html {
        std::fs::write(p, crate::report::html(c))
            .with_context(|| format!("cannot write {}", p.display()))?;
        written.push(p.to_owned());
    }
    Ok(written)
}

/// `kvbench compare`.
pub fn compare_command(a: &CompareArgs) -> anyhow::Result<ExitCode> {
    let policy = match &a.policy {
        Some(p) => Policy::from_file(p)?,
        None => Policy::default(),
    };
    let cat = catalog(a.catalog.as_deref())?;
    let (mut arms, baseline) = match &a.calibrated {
        Some(cal) => {
            let base_path = PathBuf::from(a.baseline.clone().unwrap_or_default());
            let mut arms = compare::load(std::slice::from_ref(&base_path))?;
            let mut cand = compare::load(std::slice::from_ref(cal))?;
            if cand[0].name == arms[0].name {
                cand[0].name = format!("{} (candidate)", cand[0].name);
            }
            let b = arms[0].name.clone();
            arms.append(&mut cand);
            (arms, b)
        }
        None => {
            if a.results.len() < 2 {
                anyhow::bail!(
                    "give at least two result files, or --baseline A.json --calibrated B.json"
                );
            }
            let arms = compare::load(&a.results)?;
            let b = a.baseline.clone().unwrap_or_else(|| arms[0].name.clone());
            (arms, b)
        }
    };
    // Baseline first.
    arms.sort_by_key(|x| x.name != baseline);
    if a.rescan_logs {
        compare::rescan_logs(&mut arms, &cat)?;
    }
    let mut c = compare::compare(
        &arms,
        &baseline,
        a.reference.as_deref(),
        &policy,
        &cat,
        None,
    )?;
    c["logs_rescanned"] = serde_json::json!(a.rescan_logs);
    let written = write_outputs(&c, &a.output, a.md.as_deref(), a.html.as_deref())?;
    if !a.quiet {
        print!("{}", verdict_block(&c));
        for p in written.iter().filter(|p| p.as_os_str() != "-") {
            println!("  written     {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The newest results of `arm` already in `dir` with outcome ok (for `--resume`).
fn existing_results(dir: &Path, exp: &str, arm: &str) -> Vec<PathBuf> {
    let prefix = format!("benchmark_{exp}_{arm}_");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // The arm name is followed by the timestamp: digits only, so `a` does not match `a-b`.
            n.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".json"))
                .is_some_and(|ts| ts.chars().all(|c| c.is_ascii_digit() || c == '_'))
        })
        .filter(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["outcome"] == "ok")
        })
        .collect();
    found.sort();
    found.reverse();
    found
}

/// `kvbench ab`.
pub async fn ab_command(a: &AbArgs) -> anyhow::Result<ExitCode> {
    let exp = experiment::load(&a.experiment)?;
    let policy = match (&a.policy, &exp.decision) {
        (Some(p), _) => Policy::from_file(p)?,
        (None, Some(t)) => Policy::from_table(t, &a.experiment.display().to_string())?,
        (None, None) => Policy::default(),
    };
    let baseline = a
        .baseline
        .clone()
        .or_else(|| {
            exp.decision
                .as_ref()
                .and_then(|d| d.get("baseline"))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| exp.arms[0].name.clone());
    exp.arm(&baseline)?;
    let reference = a.reference.clone().or_else(|| {
        exp.decision
            .as_ref()
            .and_then(|d| d.get("reference"))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    });
    if let Some(r) = &reference {
        exp.arm(r)?;
        if *r == baseline {
            anyhow::bail!(
                "{}: the reference arm must differ from the baseline ({r:?})",
                a.experiment.display()
            );
        }
    }
    if exp.arms.len() < 2 {
        anyhow::bail!(
            "{}: an A/B experiment needs at least two arms",
            a.experiment.display()
        );
    }
    let out_dir = a
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(&exp.name));
    let opts = ArmOptions {
        out_dir: out_dir.clone(),
        output: None,
        catalog: Arc::new(catalog(a.catalog.as_deref())?),
        quiet: a.quiet,
    };
    if a.dry_run {
        for plan in &exp.arms {
            print!("{}", arm::dry_run(plan, &opts)?);
        }
        println!("then: compare against {baseline:?} and write comparison, Markdown and HTML reports in {}", out_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let cancel = CancellationToken::new();
    crate::cancel_on_ctrl_c(cancel.clone());
    let started = std::time::Instant::now();
    let mut paths: Vec<(String, PathBuf)> = Vec::new();
    let mut failed = Vec::new();
    if a.resume {
        for plan in &exp.arms {
            for p in existing_results(&out_dir, &exp.name, &plan.name)
                .into_iter()
                .take(a.repeat as usize)
            {
                paths.push((plan.name.clone(), p));
            }
        }
    }
    'outer: for rep in 0..a.repeat {
        for plan in &exp.arms {
            if cancel.is_cancelled() {
                break 'outer;
            }
            let have = paths.iter().filter(|(n, _)| *n == plan.name).count() as u32;
            if have > rep {
                if !a.quiet {
                    eprintln!(
                        "kvbench: arm {:?}: kept from an earlier run (--resume)",
                        plan.name
                    );
                }
                continue;
            }
            if !a.quiet && a.repeat > 1 {
                eprintln!("kvbench: repeat {}/{}", rep + 1, a.repeat);
            }
            let run = arm::run_arm(plan, &opts, &cancel).await?;
            let r = &run.result;
            if !a.quiet {
                match &r.failure {
                    None => eprintln!(
                        "kvbench: arm {:?}: {} requests, TTFT p50 {} ms, {} output tok/s → {}",
                        plan.name,
                        r.requests.completed,
                        r.metrics
                            .ttft_ms
                            .p50
                            .map(|v| format!("{v:.1}"))
                            .unwrap_or_else(|| "—".into()),
                        r.throughput
                            .output_tok_per_s
                            .map(|v| format!("{v:.1}"))
                            .unwrap_or_else(|| "—".into()),
                        run.path.display()
                    ),
                    Some(f) => eprintln!(
                        "kvbench: arm {:?} failed: {}: {}",
                        plan.name, f.kind, f.message
                    ),
                }
            }
            if r.failure.is_some() {
                failed.push(plan.name.clone());
            }
            paths.push((plan.name.clone(), run.path));
        }
    }
    let names: std::collections::BTreeSet<&String> = paths.iter().map(|(n, _)| n).collect();
    if names.len() < 2 || !names.contains(&baseline) {
        if cancel.is_cancelled() {
            eprintln!(
                "kvbench: interrupted before two arms were measured; results so far are in {}",
                out_dir.display()
            );
            return Ok(ExitCode::from(crate::EXIT_INTERRUPTED));
        }
        anyhow::bail!(
            "fewer than two arms (or no baseline) produced a result in {}",
            out_dir.display()
        );
    }
    // Arms in experiment order, baseline first.
    let mut ordered: Vec<PathBuf> = Vec::new();
    let mut order: Vec<&str> = vec![baseline.as_str()];
    order.extend(
        exp.arms
            .iter()
            .map(|p| p.name.as_str())
            .filter(|n| *n != baseline),
    );
    for n in order {
        ordered.extend(paths.iter().filter(|(x, _)| x == n).map(|(_, p)| p.clone()));
    }
    let arms = compare::load(&ordered)?;
    let names_ok: Vec<&str> = arms.iter().map(|x| x.name.as_str()).collect();
    let reference = reference.filter(|r| {
        let present = names_ok.contains(&r.as_str());
        if !present {
            eprintln!("kvbench: the reference arm {r:?} produced no result; comparing without it");
        }
        present
    });
    let c = compare::compare(
        &arms,
        &baseline,
        reference.as_deref(),
        &policy,
        &opts.catalog,
        Some(&exp.name),
    )?;
    let ts = chrono::Local::now().format("%Y%m%d_%H%M%S");
    let stem = out_dir.join(format!("comparison_{}_{ts}", exp.name));
    let json_path = stem.with_extension("json");
    let md = PathBuf::from(format!("{}.md", stem.display()));
    let html = PathBuf::from(format!("{}.html", stem.display()));
    write_outputs(&c, &json_path, Some(&md), Some(&html))?;
    print!("{}", verdict_block(&c));
    println!("\n  comparison  {}", json_path.display());
    println!("  report      {}", html.display());
    println!("  markdown    {}", md.display());
    println!("  took        {:.0} s", started.elapsed().as_secs_f64());
    if cancel.is_cancelled() {
        return Ok(ExitCode::from(crate::EXIT_INTERRUPTED));
    }
    if !failed.is_empty() {
        eprintln!(
            "kvbench: arm(s) failed: {} (see the comparison)",
            failed.join(", ")
        );
        return Ok(ExitCode::from(EXIT_ARM_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}
