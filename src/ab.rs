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
use crate::compare::{self, Comparison, DesignKind, Effort, Policy, Round, Stopped};
use crate::executor::{Executor, Job};
use crate::experiment;
use crate::live::{Finished, Live, Phase};
use crate::logscan::{Catalog, DEFAULT_CATALOG};
use crate::output::printable;
use crate::result::write_json;

/// Exit code of `kvbench ab` when an arm failed (the comparison and reports are still written).
pub const EXIT_ARM_FAILED: u8 = 3;

/// Exit code of `kvbench compare` / `ab` when the verdict is at or beyond `--fail-on`.
pub const EXIT_VERDICT: u8 = 4;

/// `--fail-on`'s exit: after the files are written, with the reason on stderr.
fn verdict_exit(c: &Comparison, fail_on: Option<crate::cli::FailOn>) -> ExitCode {
    match fail_on {
        Some(f) if f.fails(c.decision) => {
            eprintln!(
                "kvbench: verdict {} fails --fail-on {} (exit {EXIT_VERDICT})",
                c.decision.map_or("none", |v| v.as_str()),
                format!("{f:?}").to_lowercase()
            );
            ExitCode::from(EXIT_VERDICT)
        }
        _ => ExitCode::SUCCESS,
    }
}

fn catalog(path: Option<&Path>) -> anyhow::Result<Catalog> {
    match path {
        Some(p) => Catalog::from_file(p),
        None => Catalog::parse(DEFAULT_CATALOG, "embedded catalog"),
    }
}

/// The verdict block printed at the end of `compare` and `ab`.
pub fn verdict_block(c: &Comparison) -> String {
    let decision = c.decision.unwrap_or_default();
    let mut out = format!("\nkvbench verdict: {}", decision.as_str().to_uppercase());
    if let Some(a) = &c.recommended_arm {
        out += &format!(" ({})", printable(a));
    }
    out += "\n";
    if let Some(e) = crate::report::effort_line(c) {
        out += &format!("  {e}\n");
    }
    // Open criteria matter only while the verdict itself is open (a settled keep elsewhere
    // makes them moot).
    let adaptive = c
        .effort
        .as_ref()
        .is_some_and(|e| e.design == DesignKind::Adaptive)
        && !c.settled;
    for r in &c.recommendations {
        out += &format!(
            "  [{:<12}] {:<16} {}\n",
            r.verdict.as_str(),
            printable(&r.criterion),
            printable(&r.reason)
        );
        if let (true, Some(open)) = (adaptive, &r.open) {
            out += &format!("  {:<14} {:<16} still open: {}\n", "", "", printable(open));
        }
    }
    out
}

/// Writes the comparison and its reports; returns the paths written.
fn write_outputs(
    c: &Comparison,
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
    c.logs_rescanned = a.rescan_logs;
    let written = write_outputs(&c, &a.output, a.md.as_deref(), a.html.as_deref())?;
    if !a.quiet {
        print!("{}", verdict_block(&c));
        for p in written.iter().filter(|p| p.as_os_str() != "-") {
            println!("  written     {}", p.display());
        }
    }
    Ok(verdict_exit(&c, a.fail_on))
}

/// `YYYYMMDD_HHMMSS`, optionally `_N` (a second run in the same second).
fn is_run_stamp(s: &str) -> bool {
    let digits = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_digit());
    let mut parts = s.split('_');
    let (Some(d), Some(t)) = (parts.next(), parts.next()) else {
        return false;
    };
    let tail_ok = match (parts.next(), parts.next()) {
        (None, _) => true,
        (Some(n), None) => !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()),
        _ => false,
    };
    digits(d, 8) && digits(t, 6) && tail_ok
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
            // The arm name is followed by the timestamp and nothing else, so `a` matches neither
            // `a-b`'s results nor `a_1`'s.
            n.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".json"))
                .is_some_and(is_run_stamp)
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

pub use crate::config::DEFAULT_MAX_RUNS;

/// How many runs each arm gets.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Design {
    /// `--repeat N` (or one run per arm).
    Fixed { runs: u32 },
    /// `--until-decided`.
    Adaptive {
        max_runs: u32,
        budget: Option<std::time::Duration>,
    },
}

impl Design {
    fn max_runs(&self) -> u32 {
        match self {
            Design::Fixed { runs } => *runs,
            Design::Adaptive { max_runs, .. } => *max_runs,
        }
    }
}

fn report_run(live: &Live, name: &str, run: &arm::ArmRun) {
    let r = &run.result;
    live.arm_phase(
        name,
        Phase::Done(match &r.failure {
            None => Finished::Measured {
                completed: r.requests.completed,
                ttft_p50_ms: r.metrics.ttft_ms.p50,
                output_tok_per_s: r.throughput.output_tok_per_s,
                path: run.path.clone(),
            },
            Some(f) => Finished::Failed {
                kind: f.kind.to_string(),
                message: f.message.clone(),
            },
        }),
    );
}

/// The comparison of the runs so far (arms in experiment order, baseline first); `None` when
/// fewer than two arms or no baseline have a result yet.
fn compare_paths(
    paths: &[(String, PathBuf)],
    exp: &experiment::Experiment,
    baseline: &str,
    reference: Option<&str>,
    policy: &Policy,
    opts: &ArmOptions,
) -> anyhow::Result<Option<Comparison>> {
    let names: std::collections::BTreeSet<&str> = paths.iter().map(|(n, _)| n.as_str()).collect();
    if names.len() < 2 || !names.contains(baseline) {
        return Ok(None);
    }
    let mut order: Vec<&str> = vec![baseline];
    order.extend(
        exp.arms
            .iter()
            .map(|p| p.name.as_str())
            .filter(|n| *n != baseline),
    );
    let ordered: Vec<PathBuf> = order
        .iter()
        .flat_map(|n| {
            paths
                .iter()
                .filter(move |(x, _)| x == n)
                .map(|(_, p)| p.clone())
        })
        .collect();
    let arms = compare::load(&ordered)?;
    let reference = reference.filter(|r| {
        let present = arms.iter().any(|x| x.name == *r);
        if !present {
            eprintln!("kvbench: the reference arm {r:?} produced no result; comparing without it");
        }
        present
    });
    if !arms
        .iter()
        .any(|x| x.name != baseline && Some(x.name.as_str()) != reference)
    {
        return Ok(None);
    }
    compare::compare(
        &arms,
        baseline,
        reference,
        policy,
        &opts.catalog,
        Some(&exp.name),
    )
    .map(Some)
}

fn runs_per_arm(paths: &[(String, PathBuf)]) -> std::collections::BTreeMap<String, u32> {
    let mut m = std::collections::BTreeMap::new();
    for (n, _) in paths {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

/// `effort`: what the verdict cost (docs/result-schema.md).
fn effort(
    design: &Design,
    stopped: Stopped,
    paths: &[(String, PathBuf)],
    rounds: Vec<Round>,
    started: std::time::Instant,
) -> Effort {
    let mut seconds: std::collections::BTreeMap<String, crate::result::Phases> =
        std::collections::BTreeMap::new();
    for (n, p) in paths {
        let phases = std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str::<crate::result::RunResult>(&t).ok())
            .map(|r| r.phases)
            .unwrap_or_default();
        let e = seconds.entry(n.clone()).or_default();
        let add = |a: &mut Option<f64>, b: Option<f64>| {
            if let Some(b) = b {
                *a = Some(a.unwrap_or(0.0) + b);
            }
        };
        add(&mut e.launch_s, phases.launch_s);
        add(&mut e.warmup_s, phases.warmup_s);
        add(&mut e.quality_s, phases.quality_s);
        add(&mut e.workload_s, phases.workload_s);
        add(&mut e.teardown_s, phases.teardown_s);
    }
    let (design, max_runs, budget_s) = match design {
        Design::Fixed { runs } => (DesignKind::Fixed, *runs, None),
        Design::Adaptive { max_runs, budget } => (
            DesignKind::Adaptive,
            *max_runs,
            budget.map(|b| b.as_secs_f64()),
        ),
    };
    Effort {
        design,
        runs_per_arm: runs_per_arm(paths),
        max_runs,
        budget_s,
        stopped,
        wall_s: started.elapsed().as_secs_f64(),
        seconds,
        rounds,
    }
}

/// An experiment ready to run: its arms, the decision's policy and roles, where files go.
struct Setup {
    exp: experiment::Experiment,
    policy: Policy,
    baseline: String,
    reference: Option<String>,
    out_dir: PathBuf,
    opts: ArmOptions,
    executor: Executor,
    /// What the run shows on stderr.
    live: Live,
}

/// Reads the experiment and the options into a [`Setup`]; every mistake is one line.
fn setup(a: &AbArgs) -> anyhow::Result<Setup> {
    let exp = experiment::load(&a.experiment)?;
    let policy = match (&a.policy, &exp.decision) {
        (Some(p), _) => Policy::from_file(p)?,
        (None, Some(t)) => Policy::from_table(t, &a.experiment.display().to_string())?,
        (None, None) => Policy::default(),
    };
    let from_decision = |key: &str| {
        exp.decision
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let baseline = a
        .baseline
        .clone()
        .or_else(|| from_decision("baseline"))
        .unwrap_or_else(|| exp.arms[0].name.clone());
    exp.arm(&baseline)?;
    let reference = a.reference.clone().or_else(|| from_decision("reference"));
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
    let executor = Executor::resolve(&exp, a.on.as_deref(), a.gpus.as_deref())?;
    Ok(Setup {
        exp,
        policy,
        baseline,
        reference,
        out_dir,
        opts,
        executor,
        live: Live::plain(a.quiet),
    })
}

/// What the rounds produced.
struct Runs {
    /// (arm, result file) of every run in the comparison.
    paths: Vec<(String, PathBuf)>,
    /// Arms with a failed run.
    failed: Vec<String>,
    /// The adaptive rounds.
    rounds: Vec<Round>,
    stopped: Stopped,
}

impl Setup {
    /// The comparison of the runs so far (see [`compare_paths`]).
    fn compare_now(
        &self,
        paths: &[(String, PathBuf)],
        policy: &Policy,
    ) -> anyhow::Result<Option<Comparison>> {
        compare_paths(
            paths,
            &self.exp,
            &self.baseline,
            self.reference.as_deref(),
            policy,
            &self.opts,
        )
    }

    /// The arms of round `round` (0-based) in order: every arm first; in adaptive rounds after
    /// the first, the baseline and the candidates whose verdict is still open (the reference
    /// arm is for quality, whose items repeat identically, so it runs once). The baseline
    /// first (its quality answers pair the candidates'); then interleaved: A B, then B A, ...,
    /// so a drift over time touches every arm alike.
    fn round_plans(
        &self,
        round: u32,
        design: Design,
        open: Option<&[String]>,
    ) -> Vec<&experiment::ArmPlan> {
        let mut plans: Vec<&experiment::ArmPlan> = self
            .exp
            .arms
            .iter()
            .filter(|p| match (&design, open) {
                (Design::Adaptive { .. }, Some(open)) => {
                    p.name == self.baseline || open.contains(&p.name)
                }
                _ => true,
            })
            .collect();
        plans.sort_by_key(|p| p.name != self.baseline);
        if round % 2 == 1 {
            plans.reverse();
        }
        plans
    }

    /// Runs the rounds of `design` until it stops (see [`Stopped`]).
    async fn run_rounds(
        &self,
        a: &AbArgs,
        design: Design,
        cancel: &CancellationToken,
        started: std::time::Instant,
    ) -> anyhow::Result<Runs> {
        let mut runs = Runs {
            paths: Vec::new(),
            failed: Vec::new(),
            rounds: Vec::new(),
            stopped: Stopped::MaxRuns,
        };
        if a.resume {
            for plan in &self.exp.arms {
                for p in existing_results(&self.out_dir, &self.exp.name, &plan.name)
                    .into_iter()
                    .take(design.max_runs() as usize)
                {
                    runs.paths.push((plan.name.clone(), p));
                }
            }
        }
        let mut comparison: Option<Comparison> = None;
        let mut last_round_s = 0.0;
        let mut baseline_quality: Option<String> = None;
        for round in 0..design.max_runs() {
            if cancel.is_cancelled() {
                runs.stopped = Stopped::Interrupted;
                break;
            }
            let open: Option<Vec<String>> = comparison.as_ref().map(Comparison::open_candidates);
            if let (
                Design::Adaptive {
                    budget: Some(b), ..
                },
                true,
            ) = (design, round > 0)
            {
                if started.elapsed().as_secs_f64() + last_round_s > b.as_secs_f64() {
                    runs.stopped = Stopped::Budget;
                    break;
                }
            }
            let plans = self.round_plans(round, design, open.as_deref());
            let round_start = std::time::Instant::now();
            let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
            let adaptive = matches!(design, Design::Adaptive { .. });
            self.live
                .round(round + 1, design.max_runs(), &names, adaptive);
            if self.executor.is_local() {
                for plan in plans {
                    if cancel.is_cancelled() {
                        break;
                    }
                    self.run_one(
                        a,
                        plan,
                        round,
                        design,
                        cancel,
                        &mut baseline_quality,
                        &mut runs,
                    )
                    .await?;
                }
            } else {
                self.run_parallel(a, &plans, round, design, cancel, &mut runs)
                    .await?;
            }
            last_round_s = round_start.elapsed().as_secs_f64();
            if let Design::Adaptive { .. } = design {
                let Some(c) = self.compare_now(&runs.paths, &self.policy)? else {
                    break;
                };
                runs.rounds.push(Round::of(
                    round + 1,
                    &c,
                    runs_per_arm(&runs.paths),
                    started.elapsed().as_secs_f64(),
                ));
                let settled = c.settled;
                if !a.quiet {
                    self.live.note(&format!(
                        "after round {}: {}{}",
                        round + 1,
                        c.decision.unwrap_or_default(),
                        if settled { ", settled" } else { ", still open" }
                    ));
                }
                comparison = Some(c);
                if settled {
                    runs.stopped = Stopped::Decided;
                    break;
                }
            }
        }
        if cancel.is_cancelled() {
            runs.stopped = Stopped::Interrupted;
        }
        if let Design::Fixed { .. } = design {
            if runs.stopped != Stopped::Interrupted {
                runs.stopped = Stopped::Fixed;
            }
        }
        Ok(runs)
    }

    /// One run of one arm in round `round`, added to `runs` (or kept out of the comparison when
    /// it was cut short and the arm has a complete run).
    #[allow(clippy::too_many_arguments)]
    async fn run_one(
        &self,
        a: &AbArgs,
        plan: &experiment::ArmPlan,
        round: u32,
        design: Design,
        cancel: &CancellationToken,
        baseline_quality: &mut Option<String>,
        runs: &mut Runs,
    ) -> anyhow::Result<()> {
        let have = runs.paths.iter().filter(|(n, _)| *n == plan.name).count() as u32;
        if have > round {
            self.live.arm_phase(&plan.name, Phase::Done(Finished::Kept));
            return Ok(());
        }
        // Quality items are the same in every round and answers at temperature 0 repeat:
        // adaptive rounds after the first measure speed only.
        let mut plan = plan.clone();
        if round > 0 && matches!(design, Design::Adaptive { .. }) {
            plan.settings = plan.settings.without_quality();
        }
        // Adaptive: a candidate's quality suites stop once its paired items show a drop
        // beyond doubt against the baseline's answers (docs/decision.md).
        if let (Design::Adaptive { .. }, Some(j)) = (design, &*baseline_quality) {
            if plan.name != self.baseline && !plan.settings.quality.is_empty() {
                plan.settings.quality_paired_with = Some(j.into());
            }
        }
        let live = self.live.arm(&plan.name);
        let run = arm::run_arm_live(&plan, &self.opts, cancel, &live).await?;
        if plan.name == self.baseline && round == 0 {
            *baseline_quality = run.result.quality.as_ref().map(|q| q.journal.clone());
        }
        self.accept(a, &plan.name, run, have, runs);
        Ok(())
    }

    /// Runs the arms of round `round` at the same time on a parallel executor (`local-gpus`,
    /// `ray`): one job per arm. Their quality items cannot pair with the baseline's answers
    /// of the same round, so every candidate runs its suites in full in the first round.
    async fn run_parallel(
        &self,
        a: &AbArgs,
        plans: &[&experiment::ArmPlan],
        round: u32,
        design: Design,
        cancel: &CancellationToken,
        runs: &mut Runs,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.out_dir)
            .with_context(|| format!("cannot create {}", self.out_dir.display()))?;
        let mut jobs = Vec::new();
        let mut have = std::collections::BTreeMap::new();
        for plan in plans {
            let n = runs.paths.iter().filter(|(n, _)| *n == plan.name).count() as u32;
            if n > round {
                self.live.arm_phase(&plan.name, Phase::Done(Finished::Kept));
                continue;
            }
            have.insert(plan.name.clone(), n);
            let (result, _, _) = arm::arm_paths(plan, &self.opts);
            let speed_only = round > 0 && matches!(design, Design::Adaptive { .. });
            jobs.push(Job::new(plan, result, speed_only));
        }
        if jobs.is_empty() {
            return Ok(());
        }
        for (job, result) in self
            .executor
            .run_round(&self.exp, jobs, round, cancel, &self.live)
            .await?
        {
            let have = have.get(&job.arm).copied().unwrap_or(0);
            let run = arm::ArmRun {
                result,
                path: job.result,
            };
            self.accept(a, &job.arm, run, have, runs);
        }
        Ok(())
    }

    /// Adds a finished run of arm `name` (which had `have` runs before) to `runs`, or keeps it
    /// out of the comparison when it was cut short and the arm has a complete run.
    fn accept(&self, a: &AbArgs, name: &str, run: arm::ArmRun, have: u32, runs: &mut Runs) {
        report_run(&self.live, name, &run);
        // A run cut short by an interruption stays on disk; when the arm already has a
        // complete run, the comparison rests on the complete ones.
        if (run.result.interrupted || run.result.outcome == crate::result::Outcome::Interrupted)
            && have > 0
        {
            if !a.quiet {
                self.live.note(&format!(
                    "arm {name:?}: the interrupted run is kept in {} but left out of the comparison",
                    run.path.display()
                ));
            }
            return;
        }
        if run.result.failure.is_some() {
            runs.failed.push(name.to_owned());
        }
        runs.paths.push((name.to_owned(), run.path));
    }
}

/// `kvbench ab`.
pub async fn ab_command(a: &AbArgs) -> anyhow::Result<ExitCode> {
    let mut s = setup(a)?;
    if a.dry_run {
        for plan in &s.exp.arms {
            print!("{}", arm::dry_run_redacted(plan, &s.opts)?);
        }
        println!(
            "then: compare against {:?} and write comparison, Markdown and HTML reports in {}",
            s.baseline,
            s.out_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    s.live = Live::new(a.quiet);
    let cancel = CancellationToken::new();
    crate::signals::cancel_on_signals(cancel.clone());
    let started = std::time::Instant::now();
    // Adaptive unless --repeat asks for the fixed design (clap keeps the two apart).
    let design = match a.repeat {
        Some(runs) => Design::Fixed { runs },
        None => Design::Adaptive {
            max_runs: a.max_runs.unwrap_or(DEFAULT_MAX_RUNS),
            budget: a.budget,
        },
    };
    let runs = s.run_rounds(a, design, &cancel, started).await?;
    finish(a, &s, design, runs, &cancel, started)
}

/// The final comparison, its files and the verdict block; the exit code.
fn finish(
    a: &AbArgs,
    s: &Setup,
    design: Design,
    runs: Runs,
    cancel: &CancellationToken,
    started: std::time::Instant,
) -> anyhow::Result<ExitCode> {
    // The view is cleared (and on a terminal the per-arm summary written) before the verdict.
    s.live.finish();
    let names: std::collections::BTreeSet<&String> = runs.paths.iter().map(|(n, _)| n).collect();
    if names.len() < 2 || !names.contains(&s.baseline) {
        if cancel.is_cancelled() {
            eprintln!(
                "kvbench: interrupted before two arms were measured; results so far are in {}",
                s.out_dir.display()
            );
            return Ok(ExitCode::from(crate::EXIT_INTERRUPTED));
        }
        anyhow::bail!(
            "fewer than two arms (or no baseline) produced a result in {}",
            s.out_dir.display()
        );
    }
    // The final comparison. An adaptive design that ran out of runs or time with a speed
    // criterion open takes its cautious side (docs/decision.md, "Adaptive runs").
    let policy = Policy {
        final_look: matches!(design, Design::Adaptive { .. })
            && matches!(runs.stopped, Stopped::MaxRuns | Stopped::Budget),
        ..s.policy.clone()
    };
    let mut c = match s.compare_now(&runs.paths, &policy)? {
        Some(c) => c,
        None => anyhow::bail!("no comparison could be made in {}", s.out_dir.display()),
    };
    c.effort = Some(effort(
        &design,
        runs.stopped,
        &runs.paths,
        runs.rounds,
        started,
    ));
    let ts = chrono::Local::now().format("%Y%m%d_%H%M%S");
    let stem = s.out_dir.join(format!("comparison_{}_{ts}", s.exp.name));
    // Not `with_extension`: a dotted experiment name (`v1.2`) would lose the time stamp.
    let json_path = PathBuf::from(format!("{}.json", stem.display()));
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
    if !runs.failed.is_empty() {
        eprintln!(
            "kvbench: arm(s) failed: {} (see the comparison)",
            runs.failed.join(", ")
        );
        return Ok(ExitCode::from(EXIT_ARM_FAILED));
    }
    Ok(verdict_exit(&c, a.fail_on))
}

#[cfg(test)]
mod tests {
    use super::is_run_stamp;

    #[test]
    fn run_stamps_are_exact() {
        assert!(is_run_stamp("20261201_190000"));
        assert!(is_run_stamp("20261201_190000_2"));
        // `a`'s prefix followed by the rest of `a_1`'s name.
        assert!(!is_run_stamp("1_20261201_190000"));
        assert!(!is_run_stamp("20261201_19000"));
        assert!(!is_run_stamp("20261201_190000_"));
        assert!(!is_run_stamp("20261201_190000_2_3"));
    }
}
