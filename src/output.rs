//! The human summary of a run, printed after the result JSON is written.

use std::fmt::Write as _;

use crate::result::RunResult;
use crate::stats::Summary;

fn num(v: Option<f64>) -> String {
    match v {
        None => "—".to_owned(),
        Some(x) if x.abs() >= 1000.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 100.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn row(out: &mut String, name: &str, s: &Summary) {
    let mean = match (s.mean, s.std) {
        (Some(m), Some(sd)) => format!("{} ± {}", num(Some(m)), num(Some(sd))),
        (m, _) => num(m),
    };
    let _ = writeln!(
        out,
        "  {name:<24} {mean:>18} {:>9} {:>9} {:>9} {:>9}   {} … {}   (n={})",
        num(s.p50),
        num(s.p90),
        num(s.p95),
        num(s.p99),
        num(s.min),
        num(s.max),
        s.count
    );
}

/// Renders the summary table of a run.
pub fn summary(r: &RunResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "kvbench run · {} @ {} ({}{})",
        r.server.model,
        r.server.url,
        r.server.engine,
        r.server
            .version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  requests    {} completed, {} failed of {} (warmup {}){}",
        r.requests.completed,
        r.requests.failed,
        r.requests.total,
        r.requests.warmup,
        if r.interrupted {
            " — INTERRUPTED"
        } else {
            ""
        }
    );
    if !r.errors.is_empty() {
        let e: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(out, "  errors      {}", e.join(", "));
    }
    if !r.anomalies.is_empty() {
        let e: Vec<String> = r
            .anomalies
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(out, "  anomalies   {}", e.join(", "));
    }
    let _ = writeln!(
        out,
        "  duration    {} s · {} req/s · {} output tok/s · {} total tok/s",
        num(r.duration_s),
        num(r.throughput.requests_per_s),
        num(r.throughput.output_tok_per_s),
        num(r.throughput.total_tok_per_s)
    );
    let _ = writeln!(
        out,
        "  tokens      prompt {} ({}) · output {} ({}) · reasoning {}",
        r.tokens
            .prompt_total
            .map(|p| p.to_string())
            .unwrap_or_else(|| "—".into()),
        r.tokens.prompt_source.as_deref().unwrap_or("unknown"),
        r.tokens.output_total,
        r.tokens.output_source,
        r.tokens.reasoning_total
    );
    if !r.finish_reasons.is_empty() {
        let f: Vec<String> = r
            .finish_reasons
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(out, "  finish      {}", f.join(", "));
    }
    let _ = writeln!(
        out,
        "\n  {:<24} {:>18} {:>9} {:>9} {:>9} {:>9}   min … max",
        "metric (ms)", "mean ± σ", "p50", "p90", "p95", "p99"
    );
    let m = &r.metrics;
    row(&mut out, "ttft_ms", &m.ttft_ms);
    row(&mut out, "ttft_answer_ms", &m.ttft_answer_ms);
    row(&mut out, "itl_ms", &m.itl_ms);
    row(&mut out, "tpot_ms", &m.tpot_ms);
    row(&mut out, "e2e_ms", &m.e2e_ms);
    if let Some(s) = &m.queue_ms {
        row(&mut out, "queue_ms", s);
    }
    if let Some(s) = &m.ttft_from_scheduled_ms {
        row(&mut out, "ttft_from_scheduled_ms", s);
    }
    if let Some(s) = &m.e2e_from_scheduled_ms {
        row(&mut out, "e2e_from_scheduled_ms", s);
    }
    out
}
