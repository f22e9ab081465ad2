//! kvbench: A/B benchmarks of LLM inference server configurations.
//!
//! The binary is a thin shell over [`main_entry`]; integration tests call the library directly.

pub mod ab;
pub mod arm;
pub mod capacity;
pub mod cli;
pub mod client;
pub mod compare;
pub mod config;
pub mod executor;
pub mod experiment;
pub mod live;
pub mod logscan;
pub mod metrics;
pub mod output;
pub mod quality;
pub mod record;
pub mod report;
pub mod result;
pub mod runner;
pub mod schema;
pub mod selftest;
pub mod server;
pub mod signals;
pub mod simulate;
pub mod stats;
pub mod testserver;
pub mod workload;

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Exit code when the run was interrupted (results measured so far are written).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Parses arguments, runs the command, prints a one-line error on failure.
pub fn main_entry() -> ExitCode {
    let cli = cli::Cli::parse();
    // The servers kvbench runs itself (the fast self-test server, the test server) use every
    // core, as a real server does. The client side runs on one thread: a token's instant comes
    // from the kernel's receive timestamp, not from when a thread got to read it, and one
    // thread spends less CPU per token event than two that keep waking each other
    // (docs/performance.md has the measurements).
    let serves = matches!(
        &cli.command,
        cli::Command::TestServer(_)
            | cli::Command::Selftest(cli::SelftestArgs { serve: Some(_), .. })
    );
    let built = if serves {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvbench: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            // One line, and nothing a server sent (a model id, an error page, a log line) can
            // drive the terminal.
            eprintln!("kvbench: error: {}", output::printable(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// `kvbench error-rates`.
fn error_rates(a: &cli::ErrorRatesArgs) -> anyhow::Result<ExitCode> {
    use simulate::{Design, Scenario};
    let policy = match &a.policy {
        Some(p) => compare::Policy::from_file(p)?,
        None => compare::Policy::default(),
    };
    let single =
        a.ttft_change_pct.is_some() || a.quality_drop_pts.is_some() || a.sigma_run_pct.is_some();
    let scenarios = if single {
        vec![Scenario {
            ttft_change_pct: a.ttft_change_pct.unwrap_or(0.0),
            quality_drop_pts: a.quality_drop_pts.unwrap_or(0.0),
            sigma_run_pct: a.sigma_run_pct.unwrap_or(policy.run_drift_pct),
        }]
    } else {
        simulate::table_scenarios()
    };
    let designs = [
        Design::Fixed { runs: 1 },
        Design::Fixed { runs: 3 },
        Design::Adaptive {
            max_runs: a.max_runs,
        },
    ];
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for sc in scenarios {
        for d in designs {
            let r = simulate::rates(sc, d, &policy, a.experiments as usize, a.seed)?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            }
            rows.push(r);
        }
    }
    if !a.json {
        print!("{}", simulate::markdown(&rows));
    }
    eprintln!(
        "kvbench: {} experiments per row, {} rows, in {:.1} s",
        a.experiments,
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `kvbench scan-logs FILE... [--json]`. Each log is read line by line
/// ([`logscan::Scanner`]): a log larger than memory, or a stream on stdin that never ends,
/// scans in bounded memory.
fn scan_logs(a: &cli::ScanLogsArgs) -> anyhow::Result<ExitCode> {
    use output::printable;
    let catalog = match &a.catalog {
        Some(p) => logscan::Catalog::from_file(p)?,
        None => logscan::Catalog::parse(logscan::DEFAULT_CATALOG, "embedded catalog")?,
    };
    let mut scanner = logscan::Scanner::new(&catalog);
    for f in &a.files {
        // Any bytes, as from a file: a stray invalid byte must not hide the warnings.
        let read = if f.as_os_str() == "-" {
            scanner.read(std::io::stdin().lock())
        } else {
            std::fs::File::open(f)
                .and_then(|file| scanner.read(std::io::BufReader::with_capacity(1 << 16, file)))
        };
        read.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
    }
    let report = scanner.finish();
    if a.json {
        result::write_json(std::path::Path::new("-"), &report)?;
        return Ok(ExitCode::SUCCESS);
    }
    if report.warnings.is_empty() {
        println!("no warnings");
    }
    for w in &report.warnings {
        let sev = format!("{:?}", w.severity).to_lowercase();
        println!(
            "{:<32} {:<8} ×{:<4} ranks {:<3} {}",
            printable(&w.id),
            sev,
            w.count,
            w.ranks,
            printable(&w.first_line)
        );
    }
    for (k, v) in &report.facts {
        println!("fact  {} = {}", printable(k), printable(&v.to_string()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `kvbench run --config EXP --arm NAME`: launch, measure and tear down one arm.
async fn run_arm_command(args: cli::RunArgs) -> anyhow::Result<ExitCode> {
    let (Some(config), Some(arm_name)) = (args.config.clone(), args.arm.clone()) else {
        anyhow::bail!("--config needs --arm NAME");
    };
    let exp = experiment::load(&config)?;
    let mut plan = exp.arm(&arm_name)?.clone();
    if args.speed_only {
        plan.settings = plan.settings.without_quality();
    }
    let plan = &plan;
    let catalog = match &args.catalog {
        Some(p) => std::sync::Arc::new(logscan::Catalog::from_file(p)?),
        None => std::sync::Arc::new(logscan::Catalog::parse(
            logscan::DEFAULT_CATALOG,
            "embedded catalog",
        )?),
    };
    let opts = arm::ArmOptions {
        out_dir: args
            .out_dir
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from(".")),
        output: args.settings.output.clone(),
        catalog,
        quiet: args.settings.quiet,
    };
    if args.dry_run {
        print!("{}", arm::dry_run_redacted(plan, &opts)?);
        return Ok(ExitCode::SUCCESS);
    }
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone());
    let mut run = arm::run_arm(plan, &opts, &cancel).await?;
    if let Some(executor) = &args.executor {
        run.result.placement = Some(result::Placement {
            executor: executor.clone(),
            job_id: args.job_id.clone(),
            devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            host: nix::unistd::gethostname()
                .ok()
                .map(|h| h.to_string_lossy().into_owned()),
            gathered_from: None,
        });
        result::write_json(&run.path, &run.result)?;
    }
    if args.print_result {
        println!(
            "{}{}",
            executor::ray::RESULT_MARKER,
            serde_json::to_string(&run.result)?
        );
    }
    let r = &run.result;
    if !args.settings.quiet && r.failure.is_none() {
        print!("{}", output::summary(r));
    }
    for w in r.warnings.iter().filter(|w| w.id != "other") {
        if !args.settings.quiet {
            println!(
                "  warning     {} (×{}, {} rank(s))",
                output::printable(&w.id),
                w.count,
                w.ranks
            );
        }
    }
    if !args.settings.quiet {
        println!("\n  result      {}", run.path.display());
    }
    if let Some(f) = &r.failure {
        let message = format!(
            "arm {:?}: {}: {} (log: {})",
            plan.name,
            f.kind,
            f.message,
            r.server.facts.log.as_deref().unwrap_or("?")
        );
        if f.kind == result::FailureKind::Interrupted {
            eprintln!("kvbench: {message}");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        anyhow::bail!(message);
    }
    if r.interrupted {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) use signals::cancel_on_signals;

async fn dispatch(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Run(args) if args.config.is_some() => run_arm_command(*args).await,
        cli::Command::Run(args) => {
            let cfg = args.into_config()?;
            if cfg.sweep.as_ref().is_some_and(|s| s.kv_fill) {
                anyhow::bail!("--sweep concurrency=kv sizes its levels from the KV cache of a server kvbench launches (kvbench ab, or kvbench run --config): with --url, give the levels (concurrency=1,8,32)");
            }
            let quiet = cfg.progress == runner::ProgressMode::Quiet;
            let output = cfg.output.clone();
            let cancel = CancellationToken::new();
            cancel_on_signals(cancel.clone());
            let result = runner::run(cfg, cancel).await?;
            if !quiet {
                let text = output::summary(&result);
                if output.as_os_str() == "-" {
                    eprint!("{text}");
                } else {
                    print!("{text}");
                    println!("\n  result      {}", output.display());
                    if let Some(j) = &result.journal {
                        println!("  journal     {j}");
                    }
                }
            }
            if let Some(f) = &result.failure {
                anyhow::bail!(
                    "{}; what was measured is in {}",
                    f.message,
                    output.display()
                );
            }
            if result.interrupted {
                eprintln!(
                    "kvbench: interrupted; results so far written to {}",
                    output.display()
                );
                return Ok(ExitCode::from(EXIT_INTERRUPTED));
            }
            if result.outcome == result::Outcome::AllFailed {
                let errs: Vec<String> = result
                    .errors
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                anyhow::bail!(
                    "all {} measured requests failed ({}); details in {}",
                    result.requests.total,
                    errs.join(", "),
                    result.journal.as_deref().unwrap_or("the journal")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Selftest(a) => selftest_command(a).await,
        cli::Command::ScanLogs(a) => scan_logs(&a),
        cli::Command::Report(a) => {
            report::run(&a.comparison, a.html.as_deref(), a.md.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        cli::Command::Compare(a) => ab::compare_command(&a),
        cli::Command::Ab(a) => ab::ab_command(&a).await,
        cli::Command::ErrorRates(a) => error_rates(&a),
        cli::Command::TestServer(a) => {
            if let Some(p) = &a.print {
                print!("{}", std::fs::read_to_string(p)?);
                std::io::Write::flush(&mut std::io::stdout())?;
            }
            if let Some(code) = a.exit {
                std::process::exit(code);
            }
            let drift = testserver::run_drift_factor(a.run_drift_pct, a.seed);
            if a.run_drift_pct > 0.0 {
                println!("kvbench test server: run drift factor {drift:.4}");
            }
            let cfg = testserver::TestServerConfig {
                ttft: std::time::Duration::from_millis(a.ttft_ms).mul_f64(drift),
                itl: std::time::Duration::from_millis(a.itl_ms).mul_f64(drift),
                trend_pct_per_min: a.trend_pct_per_min,
                output_tokens: a.tokens,
                reasoning_tokens: a.reasoning_tokens,
                flavor: a.flavor,
                ..Default::default()
            };
            let server = testserver::start(cfg, a.listen).await?;
            println!("kvbench test server on {} (Ctrl-C to stop)", server.url());
            std::io::Write::flush(&mut std::io::stdout())?;
            tokio::signal::ctrl_c().await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn selftest_command(a: cli::SelftestArgs) -> anyhow::Result<ExitCode> {
    let ttft = std::time::Duration::from_millis(a.ttft_ms);
    if let Some(addr) = a.serve {
        // --itl-ms is bounded by its parser; the gap from --events-per-s is checked here.
        let itl = match a.itl_ms {
            Some(ms) => std::time::Duration::from_secs_f64(ms / 1e3),
            None => selftest::itl_for(a.concurrency, a.events_per_s)?,
        };
        let cfg = selftest::server::FastServerConfig {
            ttft,
            itl,
            default_tokens: a.max_tokens,
            vary_length: a.vary_length,
            ..Default::default()
        };
        selftest::serve(cfg, addr).await?;
        return Ok(ExitCode::SUCCESS);
    }
    selftest::itl_for(a.concurrency, a.events_per_s)?;
    let cfg = selftest::SelftestConfig {
        concurrency: a.concurrency,
        events_per_s: a.events_per_s,
        max_tokens: a.max_tokens,
        input_len: a.input_len,
        ttft,
        requests_per_stream: a.requests_per_stream,
        endpoint: a.endpoint,
        server_exe: std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("cannot find the kvbench executable: {e}"))?,
    };
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone());
    let report = selftest::run(cfg, cancel).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", selftest::table(&report));
    }
    Ok(ExitCode::SUCCESS)
}
