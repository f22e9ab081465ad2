//! kvbench: A/B benchmarks of LLM inference server configurations.
//!
//! The binary is a thin shell over [`main_entry`]; integration tests call the library directly.

pub mod cli;
pub mod client;
pub mod experiment;
pub mod logscan;
pub mod metrics;
pub mod output;
pub mod quality;
pub mod record;
pub mod result;
pub mod runner;
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
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvbench: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvbench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `token` on the first Ctrl-C; a second Ctrl-C exits at once.
fn cancel_on_ctrl_c(token: CancellationToken) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("kvbench: interrupted: stopping, writing what was measured (Ctrl-C again to quit now)");
            token.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(EXIT_INTERRUPTED as i32);
            }
        }
    });
}

async fn dispatch(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Run(args) => {
            let cfg = args.into_config()?;
            let quiet = cfg.progress == runner::ProgressMode::Quiet;
            let output = cfg.output.clone();
            let cancel = CancellationToken::new();
            cancel_on_ctrl_c(cancel.clone());
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
            if result.interrupted {
                eprintln!(
                    "kvbench: interrupted; results so far written to {}",
                    output.display()
                );
                return Ok(ExitCode::from(EXIT_INTERRUPTED));
            }
            if result.outcome == "all_failed" {
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
        cli::Command::TestServer(a) => {
            let cfg = testserver::TestServerConfig {
                ttft: std::time::Duration::from_millis(a.ttft_ms),
                itl: std::time::Duration::from_millis(a.itl_ms),
                output_tokens: a.tokens,
                reasoning_tokens: a.reasoning_tokens,
                flavor: a.flavor,
                ..Default::default()
            };
            let server = testserver::start(cfg, a.listen).await?;
            println!("kvbench test server on {} (Ctrl-C to stop)", server.url());
            tokio::signal::ctrl_c().await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
