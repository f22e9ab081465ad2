//! The human summary of a run, printed after the result JSON is written, and [`printable`]:
//! how text a server controls (model ids, error bodies, log lines) may reach a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::result::RunResult;
use crate::stats::Summary;

/// `s` with every control character shown escaped (`\u{1b}`), line ends and tabs too, so
/// that text from a server prints as one line and no escape sequence in it reaches the
/// terminal (clearing the screen, setting the clipboard with OSC 52, retitling the window,
/// overwriting what was printed with CR or BS). Bidirectional overrides, which reorder what
/// a reader sees, are escaped as well.
pub fn printable(s: &str) -> Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "{}", c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`printable`] for text of several lines (kvbench's own): line ends and tabs are kept, every
/// other control character is shown escaped.
pub fn printable_text(s: &str) -> Cow<'_, str> {
    let parts = || s.split(['\n', '\t']);
    if parts().all(|p| matches!(printable(p), Cow::Borrowed(_))) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    while let Some(i) = rest.find(['\n', '\t']) {
        out.push_str(&printable(&rest[..i]));
        out.push_str(&rest[i..i + 1]);
        rest = &rest[i + 1..];
    }
    out.push_str(&printable(rest));
    Cow::Owned(out)
}

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
        printable(&r.server.model),
        printable(&r.server.url),
        r.server.engine,
        r.server
            .version
            .as_deref()
            .map(|v| format!(" {}", printable(v)))
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
        let e: Vec<String> = r
            .errors
            .iter()
            .map(|(k, v)| format!("{}: {v}", printable(k)))
            .collect();
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
            .map(|(k, v)| format!("{}: {v}", printable(k)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert!(matches!(printable("plain text · ok"), Cow::Borrowed(_)));
        assert_eq!(
            printable("m\u{1b}]52;c;eA==\u{7}\r\n\u{9b}x\u{202e}"),
            "m\\u{1b}]52;c;eA==\\u{7}\\u{d}\\u{a}\\u{9b}x\\u{202e}"
        );
        assert_eq!(printable_text("a\tb\nc\u{1b}[2J\n"), "a\tb\nc\\u{1b}[2J\n");
        assert!(matches!(printable_text("a\tb\nc\n"), Cow::Borrowed(_)));
    }
}
