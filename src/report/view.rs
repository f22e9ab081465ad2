//! The comparison JSON turned into what a report shows: a header (the verdict) and sections of
//! paragraphs, tables, charts and log excerpts. HTML and Markdown both render this one view, so
//! they cannot drift apart in content; only the charts are HTML-only.
//!
//! Every lookup is defensive: the comparison is read as a `serde_json::Value`, any field may be
//! missing or `null` (a failed arm has no metrics), and a missing value shows as "—", never 0.

use serde::Serialize;
use serde_json::Value;

use super::svg;

static NULL: Value = Value::Null;

/// Shown where a value is missing or `null`.
pub const MISSING: &str = "—";

/// The latency summaries in the order a reader expects them.
const LATENCY_METRICS: &[(&str, &str)] = &[
    ("ttft_ms", "TTFT"),
    ("ttft_answer_ms", "answer TTFT"),
    ("itl_ms", "ITL"),
    ("tpot_ms", "TPOT"),
    ("e2e_ms", "E2E"),
];

/// Throughput keys of `arms[].throughput`, with their labels.
const THROUGHPUT_METRICS: &[(&str, &str)] = &[
    ("output_tok_per_s", "output tok/s"),
    ("requests_per_s", "requests/s"),
    ("total_tok_per_s", "total tok/s"),
];

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Page title.
    pub title: String,
    /// `apply`, `monitor`, `keep`, `inconclusive`, or `unknown` (missing or unrecognised).
    pub decision: String,
    /// The decision as shown: "APPLY", "MONITOR", ...
    pub decision_label: String,
    /// One line under the verdict, e.g. "recommended arm: fp8-calibrated · baseline: fp8".
    pub headline: String,
    /// The overall recommendation's reason.
    pub overall_reason: String,
    /// Experiment, creation time, kvbench version.
    pub meta: Vec<Kv>,
    /// Everything below the verdict, in order.
    pub sections: Vec<Section>,
}

/// A label and its value.
#[derive(Debug, Serialize)]
pub struct Kv {
    pub key: String,
    pub value: String,
}

/// One titled part of the report.
#[derive(Debug, Serialize)]
pub struct Section {
    /// HTML anchor.
    pub id: String,
    pub title: String,
    pub blocks: Vec<Block>,
}

/// A piece of a section.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Block {
    /// A heading inside a section.
    Subheading {
        text: String,
    },
    /// A paragraph; `class` colours it (e.g. `note`, `flag`).
    Para {
        text: String,
        class: String,
    },
    /// Bullet points.
    List {
        items: Vec<String>,
    },
    Table(Table),
    /// A chart (HTML only): an SVG built by [`svg`], its text already escaped.
    Chart {
        title: String,
        svg: String,
    },
    /// Verbatim text, such as a server log's tail.
    Pre {
        label: String,
        text: String,
    },
}

/// A table; both renderers lay it out the same way.
#[derive(Debug, Serialize)]
pub struct Table {
    pub head: Vec<String>,
    /// Right-aligned (numeric) columns.
    pub right: Vec<bool>,
    pub rows: Vec<Vec<Cell>>,
}

/// One table cell.
#[derive(Debug, Serialize, Clone)]
pub struct Cell {
    pub text: String,
    /// CSS class (e.g. `v-apply`, `worse`, `flag`); empty for none.
    pub class: String,
    /// Shown as code (identifiers, log lines).
    pub code: bool,
}

impl Cell {
    fn plain(text: impl Into<String>) -> Self {
        Cell {
            text: text.into(),
            class: String::new(),
            code: false,
        }
    }
    fn code(text: impl Into<String>) -> Self {
        let text = text.into();
        let code = text != MISSING;
        Cell {
            text,
            class: String::new(),
            code,
        }
    }
    fn class(mut self, class: &str) -> Self {
        self.class = class.to_owned();
        self
    }
}

impl Table {
    fn new(head: &[&str], right: &[bool]) -> Self {
        Table {
            head: head.iter().map(|s| (*s).to_owned()).collect(),
            right: right.to_vec(),
            rows: Vec::new(),
        }
    }
    fn with_head(head: Vec<String>, right: Vec<bool>) -> Self {
        Table {
            head,
            right,
            rows: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON access and formatting

fn g<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&NULL)
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

fn text(v: &Value) -> String {
    text_of(v).unwrap_or_else(|| MISSING.to_owned())
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// `1234.5` → "1,234.5"; one decimal from 10 up, two below, thousands separated.
pub fn fmt_num(x: f64) -> String {
    let decimals = if x.abs() >= 10.0 { 1 } else { 2 };
    group_thousands(&format!("{x:.decimals$}"))
}

fn fmt_opt(v: &Value) -> String {
    num(v).map(fmt_num).unwrap_or_else(|| MISSING.to_owned())
}

/// Integers with thousands separators ("6,741,744"); other numbers as [`fmt_num`].
fn fmt_count(v: &Value) -> String {
    match (v.as_u64(), v.as_i64()) {
        (Some(n), _) => group_thousands(&n.to_string()),
        (None, Some(n)) => group_thousands(&n.to_string()),
        _ => fmt_opt(v),
    }
}

fn group_thousands(s: &str) -> String {
    let (sign, rest) = match s.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", s),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (rest, None),
    };
    if !int.bytes().all(|b| b.is_ascii_digit()) {
        return s.to_owned();
    }
    let mut out = String::from(sign);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

/// "+5.6 %" with an explicit sign.
fn fmt_pct(v: &Value) -> String {
    num(v)
        .map(|x| format!("{x:+.1} %"))
        .unwrap_or_else(|| MISSING.to_owned())
}

/// "+1.2 … +9.8 %".
fn fmt_pct_ci(lo: &Value, hi: &Value) -> String {
    match (num(lo), num(hi)) {
        (Some(l), Some(h)) => format!("{l:+.1} … {h:+.1} %"),
        _ => MISSING.to_owned(),
    }
}

/// A fraction 0..1 as "95.0 %".
fn fmt_acc(v: &Value) -> String {
    num(v)
        .map(|x| format!("{:.1} %", x * 100.0))
        .unwrap_or_else(|| MISSING.to_owned())
}

/// A value with its interval: "1,234.5 [1,203.6 … 1,265.4]".
fn fmt_interval(v: &Value) -> String {
    let value = fmt_opt(g(v, "value"));
    match (num(g(v, "ci_low")), num(g(v, "ci_high"))) {
        (Some(l), Some(h)) => format!("{value} [{} … {}]", fmt_num(l), fmt_num(h)),
        _ => value,
    }
}

/// Evidence (any JSON) as one readable line: `key: value, ...`, strings unquoted.
fn fmt_evidence(v: &Value) -> String {
    match v {
        Value::Null => MISSING.to_owned(),
        Value::Object(m) if m.is_empty() => MISSING.to_owned(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}: {s}"),
                other => format!("{k}: {other}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The verdict's CSS key: one of the four known verdicts, else `unknown`.
fn verdict_key(v: &Value) -> &'static str {
    match v.as_str() {
        Some("apply") => "apply",
        Some("monitor") => "monitor",
        Some("keep") => "keep",
        Some("inconclusive") => "inconclusive",
        _ => "unknown",
    }
}

fn verdict_cell(v: &Value) -> Cell {
    Cell::plain(text(v)).class(&format!("v-{}", verdict_key(v)))
}

/// "decided after 2 runs per arm in 3.4 min" (or why the runs stopped before a decision).
pub fn effort_line(c: &Value) -> Option<String> {
    let e = c.get("effort")?;
    let runs = e["runs_per_arm"].as_object()?;
    let counts: std::collections::BTreeSet<u64> = runs.values().filter_map(Value::as_u64).collect();
    let runs_text = match counts.iter().collect::<Vec<_>>().as_slice() {
        [n] => format!("{n} run{} per arm", if **n == 1 { "" } else { "s" }),
        _ => {
            runs.iter()
                .map(|(a, n)| format!("{a}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
                + " runs"
        }
    };
    let min = e["wall_s"].as_f64().unwrap_or(0.0) / 60.0;
    Some(match e["stopped"].as_str().unwrap_or("") {
        "decided" => format!("decided after {runs_text} in {min:.1} min"),
        "max_runs" => format!(
            "not settled within the cap of {} runs per arm ({runs_text}, {min:.1} min): the verdict follows the point estimates; the open criteria say what would settle them",
            e["max_runs"]
        ),
        "budget" => format!(
            "stopped by the time budget after {runs_text} ({min:.1} min), verdict not settled: the verdict follows the point estimates"
        ),
        "interrupted" => format!("interrupted after {runs_text} ({min:.1} min)"),
        _ => format!("{runs_text}, {min:.1} min (fixed design)"),
    })
}

/// What the verdict cost and, for `--until-decided`, how each speed criterion's interval
/// narrowed round by round; `None` for comparisons without `effort` (`kvbench compare`).
fn effort_section(c: &Value) -> Option<Section> {
    let e = c.get("effort")?;
    let mut blocks = vec![Block::Para {
        text: effort_line(c)?,
        class: if e["stopped"] == "decided" || e["stopped"] == "fixed" {
            "note"
        } else {
            "flag"
        }
        .into(),
    }];
    let mut t = Table::new(
        &[
            "arm",
            "runs",
            "launch s",
            "warmup s",
            "quality s",
            "workload s",
            "teardown s",
        ],
        &[false, true, true, true, true, true, true],
    );
    if let Some(secs) = e["seconds"].as_object() {
        for (arm, s) in secs {
            let mut row = vec![
                Cell::code(arm.clone()),
                Cell::plain(fmt_count(&e["runs_per_arm"][arm])),
            ];
            for k in [
                "launch_s",
                "warmup_s",
                "quality_s",
                "workload_s",
                "teardown_s",
            ] {
                row.push(Cell::plain(fmt_opt(g(s, k))));
            }
            t.rows.push(row);
        }
    }
    blocks.push(Block::Table(t));
    let rounds = arr(g(e, "rounds"));
    if !rounds.is_empty() {
        blocks.push(Block::Subheading {
            text: "How the verdict narrowed, round by round".into(),
        });
        let mut t = Table::new(
            &[
                "round",
                "candidate",
                "criterion",
                "change",
                "95 % CI",
                "verdict",
                "settled",
            ],
            &[true, false, false, true, true, false, false],
        );
        for r in rounds {
            for cand in arr(g(r, "candidates")) {
                for k in arr(g(cand, "criteria"))
                    .iter()
                    .filter(|k| !g(k, "change_pct").is_null())
                {
                    t.rows.push(vec![
                        Cell::plain(text(g(r, "round"))),
                        Cell::code(text(g(cand, "arm"))),
                        Cell::code(text(g(k, "criterion"))),
                        Cell::plain(fmt_pct(g(k, "change_pct"))),
                        Cell::plain(fmt_pct_ci(g(k, "ci_low_pct"), g(k, "ci_high_pct"))),
                        verdict_cell(g(k, "verdict")),
                        Cell::plain(if g(k, "settled") == &Value::Bool(true) {
                            "yes"
                        } else {
                            "open"
                        }),
                    ]);
                }
            }
        }
        blocks.push(Block::Table(t));
    }
    Some(Section {
        id: "effort".into(),
        title: "What the verdict cost".into(),
        blocks,
    })
}

// ---------------------------------------------------------------------------------------------
// Building the report

/// Reads a comparison JSON into the report view.
pub fn build(c: &Value) -> Report {
    let decision = verdict_key(g(c, "decision"));
    let baseline = text_of(g(c, "baseline"));
    let recs = arr(g(c, "recommendations"));
    let overall = recs
        .iter()
        .rev()
        .find(|r| g(r, "criterion").as_str() == Some("overall"));
    let overall_reason = overall
        .and_then(|r| text_of(g(r, "reason")))
        .unwrap_or_else(|| "The comparison gives no overall reason.".to_owned());
    let mut headline = Vec::new();
    if let Some(a) = text_of(g(c, "recommended_arm")) {
        headline.push(format!("recommended arm: {a}"));
    }
    if let Some(b) = &baseline {
        headline.push(format!("baseline: {b}"));
    }
    if let Some(e) = effort_line(c) {
        headline.push(e);
    }
    let mut meta = Vec::new();
    for (key, label) in [
        ("experiment", "experiment"),
        ("created_at", "created"),
        ("kvbench_version", "kvbench"),
        ("schema_version", "schema"),
    ] {
        if let Some(t) = text_of(g(c, key)) {
            meta.push(Kv {
                key: label.to_owned(),
                value: t,
            });
        }
    }
    let title = match text_of(g(c, "experiment")) {
        Some(e) => format!("kvbench report · {e}"),
        None => "kvbench report".to_owned(),
    };

    let ctx = Ctx::new(c);
    let mut sections = vec![recommendations_section(c)];
    sections.extend(effort_section(c));
    sections.extend([
        arms_section(&ctx),
        latency_section(&ctx),
        throughput_section(&ctx),
        deltas_section(&ctx),
        quality_section(&ctx),
        warnings_section(&ctx),
        server_section(&ctx),
        policy_section(c),
    ]);
    Report {
        title,
        decision: decision.to_owned(),
        decision_label: if decision == "unknown" {
            "NO VERDICT".to_owned()
        } else {
            decision.to_uppercase()
        },
        headline: headline.join(" · "),
        overall_reason,
        meta,
        sections,
    }
}

/// What several sections need: the arms, their names, the candidates.
struct Ctx<'a> {
    arms: &'a [Value],
    names: Vec<String>,
    baseline: Option<String>,
    candidates: Vec<&'a Value>,
    /// The quality reference arm and every other arm's comparison with it.
    reference: Option<String>,
    reference_arms: &'a [Value],
}

impl<'a> Ctx<'a> {
    fn new(c: &'a Value) -> Self {
        let arms = arr(g(c, "arms"));
        let names = arms
            .iter()
            .enumerate()
            .map(|(i, a)| text_of(g(a, "name")).unwrap_or_else(|| format!("arm {}", i + 1)))
            .collect();
        let mut candidates: Vec<&Value> = arr(g(c, "candidates")).iter().collect();
        // An older or hand-made comparison may carry only the top-level (first candidate's)
        // tables: show those as one unnamed candidate.
        if candidates.is_empty()
            && (g(c, "deltas").is_object()
                || g(c, "warnings").is_object()
                || g(c, "quality").is_object())
        {
            candidates.push(c);
        }
        Ctx {
            arms,
            names,
            baseline: text_of(g(c, "baseline")),
            candidates,
            reference: text_of(g(g(c, "reference"), "arm")),
            reference_arms: arr(g(g(c, "reference"), "arms")),
        }
    }

    fn is_ok(arm: &Value) -> bool {
        matches!(g(arm, "outcome").as_str(), Some("ok") | None) && g(arm, "failure").is_null()
    }

    fn role(&self, name: &str) -> &'static str {
        if self.baseline.as_deref() == Some(name) {
            "baseline"
        } else if self.reference.as_deref() == Some(name) {
            "reference"
        } else {
            "candidate"
        }
    }

    fn candidate_name(&self, cand: &Value) -> String {
        text_of(g(cand, "arm")).unwrap_or_else(|| "candidate".to_owned())
    }

    fn baseline_name(&self) -> String {
        self.baseline
            .clone()
            .unwrap_or_else(|| "baseline".to_owned())
    }
}

fn recommendations_section(c: &Value) -> Section {
    let adaptive = g(g(c, "effort"), "design").as_str() == Some("adaptive")
        && g(c, "settled") != &Value::Bool(true);
    let mut blocks = Vec::new();
    let recs = arr(g(c, "recommendations"));
    if recs.is_empty() {
        blocks.push(Block::Para {
            text: "The comparison has no recommendations.".into(),
            class: "note".into(),
        });
    } else {
        blocks.push(Block::Table(rec_table(recs, adaptive)));
    }
    // With one candidate its table is the one above; with several, each gets its own.
    let candidates = arr(g(c, "candidates"));
    for cand in candidates.iter().filter(|_| candidates.len() > 1) {
        let crecs = arr(g(cand, "recommendations"));
        if crecs.is_empty() {
            continue;
        }
        blocks.push(Block::Subheading {
            text: format!(
                "Candidate {}: {}",
                text(g(cand, "arm")),
                text(g(cand, "decision"))
            ),
        });
        blocks.push(Block::Table(rec_table(crecs, adaptive)));
    }
    Section {
        id: "recommendations".into(),
        title: "Recommendations".into(),
        blocks,
    }
}

/// One row per recommendation; with `adaptive`, open criteria say what is still open.
fn rec_table(recs: &[Value], adaptive: bool) -> Table {
    let mut t = Table::new(&["criterion", "verdict", "reason", "evidence"], &[false; 4]);
    for r in recs {
        t.rows.push(vec![
            Cell::code(text(g(r, "criterion"))),
            verdict_cell(g(r, "verdict")),
            Cell::plain(match text_of(g(r, "open")).filter(|_| adaptive) {
                Some(open) => format!("{} (still open: {open})", text(g(r, "reason"))),
                None => text(g(r, "reason")),
            }),
            Cell::plain(fmt_evidence(g(r, "evidence"))),
        ]);
    }
    t
}

fn arms_section(ctx: &Ctx) -> Section {
    let mut blocks = Vec::new();
    if ctx.arms.is_empty() {
        blocks.push(Block::Para {
            text: "The comparison lists no arms.".into(),
            class: "flag".into(),
        });
    }
    let mut t = Table::new(
        &[
            "arm", "role", "outcome", "requests", "errors", "repeats", "results",
        ],
        &[false, false, false, false, false, true, false],
    );
    for (arm, name) in ctx.arms.iter().zip(&ctx.names) {
        let ok = Ctx::is_ok(arm);
        let req = g(arm, "requests");
        let requests = if req.is_object() {
            format!(
                "{} of {} completed, {} failed",
                fmt_count(g(req, "completed")),
                fmt_count(g(req, "total")),
                fmt_count(g(req, "failed"))
            )
        } else {
            MISSING.to_owned()
        };
        let errors = match g(arm, "errors").as_object() {
            Some(m) if !m.is_empty() => m
                .iter()
                .map(|(k, v)| format!("{k}: {}", fmt_count(v)))
                .collect::<Vec<_>>()
                .join(", "),
            Some(_) => "none".to_owned(),
            None => MISSING.to_owned(),
        };
        let results: Vec<String> = arr(g(arm, "results")).iter().map(text).collect();
        t.rows.push(vec![
            Cell::code(name.clone()),
            Cell::plain(ctx.role(name)),
            Cell::plain(text(g(arm, "outcome"))).class(if ok { "ok" } else { "flag" }),
            Cell::plain(requests),
            Cell::plain(errors),
            Cell::plain(fmt_count(g(arm, "repeats"))),
            Cell::plain(if results.is_empty() {
                MISSING.to_owned()
            } else {
                results.join(", ")
            }),
        ]);
    }
    if !t.rows.is_empty() {
        blocks.push(Block::Table(t));
    }
    for (arm, name) in ctx.arms.iter().zip(&ctx.names) {
        let failure = g(arm, "failure");
        if Ctx::is_ok(arm) {
            continue;
        }
        blocks.push(Block::Para {
            text: format!(
                "{name} failed ({}): {}",
                text_of(g(failure, "kind")).unwrap_or_else(|| text(g(arm, "outcome"))),
                text_of(g(failure, "message")).unwrap_or_else(|| "no message".to_owned())
            ),
            class: "flag".into(),
        });
        if let Some(tail) = text_of(g(failure, "log_tail")).filter(|t| !t.trim().is_empty()) {
            blocks.push(Block::Pre {
                label: format!("{name}: server log tail"),
                text: tail,
            });
        }
    }
    Section {
        id: "arms".into(),
        title: "Arms".into(),
        blocks,
    }
}

/// The arms with a usable 0..100 % quantile array under `distributions[key]`.
fn series<'a>(ctx: &'a Ctx, key: &str) -> (Vec<svg::Series<'a>>, Vec<String>) {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (i, (arm, name)) in ctx.arms.iter().zip(&ctx.names).enumerate() {
        let q: Vec<f64> = arr(g(g(arm, "distributions"), key))
            .iter()
            .filter_map(num)
            .collect();
        if q.len() >= 2 && q.len() == arr(g(g(arm, "distributions"), key)).len() {
            out.push(svg::Series {
                name,
                color: i,
                quantiles: q,
            });
        } else {
            missing.push(name.clone());
        }
    }
    (out, missing)
}

fn latency_section(ctx: &Ctx) -> Section {
    let mut blocks = Vec::new();
    for (key, label) in [("ttft_ms", "TTFT"), ("itl_ms", "ITL")] {
        let (s, missing) = series(ctx, key);
        let title = format!("{label} distribution (CDF) per arm");
        if let Some(chart) = svg::cdf(&title, &format!("{label} (ms)"), &s) {
            blocks.push(Block::Chart { title, svg: chart });
        }
        if !missing.is_empty() {
            blocks.push(Block::Para {
                text: format!("No {label} distribution for: {}.", missing.join(", ")),
                class: "note".into(),
            });
        }
    }
    let mut t = Table::new(
        &[
            "arm",
            "metric (ms)",
            "mean ± σ",
            "p50",
            "p90",
            "p95",
            "p99",
            "min … max",
            "count",
        ],
        &[false, false, true, true, true, true, true, true, true],
    );
    for (arm, name) in ctx.arms.iter().zip(&ctx.names) {
        let metrics = g(arm, "metrics");
        if !metrics.is_object() {
            t.rows.push(vec![
                Cell::code(name.clone()),
                Cell::plain("no metrics"),
                Cell::plain(MISSING),
                Cell::plain(MISSING),
                Cell::plain(MISSING),
                Cell::plain(MISSING),
                Cell::plain(MISSING),
                Cell::plain(MISSING),
                Cell::plain(MISSING),
            ]);
            continue;
        }
        for (key, label) in LATENCY_METRICS {
            let m = g(metrics, key);
            if m.is_null() {
                continue;
            }
            let mean = match (num(g(m, "mean")), num(g(m, "std"))) {
                (Some(a), Some(s)) => format!("{} ± {}", fmt_num(a), fmt_num(s)),
                (Some(a), None) => fmt_num(a),
                _ => MISSING.to_owned(),
            };
            let range = match (num(g(m, "min")), num(g(m, "max"))) {
                (Some(a), Some(b)) => format!("{} … {}", fmt_num(a), fmt_num(b)),
                _ => MISSING.to_owned(),
            };
            t.rows.push(vec![
                Cell::code(name.clone()),
                Cell::plain(*label),
                Cell::plain(mean),
                Cell::plain(fmt_opt(g(m, "p50"))),
                Cell::plain(fmt_opt(g(m, "p90"))),
                Cell::plain(fmt_opt(g(m, "p95"))),
                Cell::plain(fmt_opt(g(m, "p99"))),
                Cell::plain(range),
                Cell::plain(fmt_count(g(m, "count"))),
            ]);
        }
    }
    if !t.rows.is_empty() {
        blocks.push(Block::Table(t));
    }
    Section {
        id: "latency".into(),
        title: "Latency per arm".into(),
        blocks,
    }
}

fn throughput_section(ctx: &Ctx) -> Section {
    let mut blocks = Vec::new();
    let items: Vec<svg::Interval> = ctx
        .arms
        .iter()
        .zip(&ctx.names)
        .enumerate()
        .filter_map(|(i, (arm, name))| {
            let t = g(g(arm, "throughput"), "output_tok_per_s");
            Some(svg::Interval {
                name,
                color: i,
                value: num(g(t, "value"))?,
                low: num(g(t, "ci_low")),
                high: num(g(t, "ci_high")),
            })
        })
        .collect();
    let title = "Output throughput per arm (dot: value, whiskers: 95 % interval)".to_owned();
    if let Some(chart) = svg::intervals(&title, "output tokens/s", &items) {
        blocks.push(Block::Chart { title, svg: chart });
    }
    let mut head = vec!["arm".to_owned()];
    head.extend(
        THROUGHPUT_METRICS
            .iter()
            .map(|(_, l)| format!("{l} [95 % interval]")),
    );
    let mut t = Table::with_head(head, vec![false, true, true, true]);
    for (arm, name) in ctx.arms.iter().zip(&ctx.names) {
        let tp = g(arm, "throughput");
        let mut row = vec![Cell::code(name.clone())];
        for (key, _) in THROUGHPUT_METRICS {
            let v = g(tp, key);
            row.push(Cell::plain(if v.is_null() {
                MISSING.to_owned()
            } else {
                fmt_interval(v)
            }));
        }
        t.rows.push(row);
    }
    if !t.rows.is_empty() {
        blocks.push(Block::Table(t));
    }
    Section {
        id: "throughput".into(),
        title: "Throughput per arm".into(),
        blocks,
    }
}

/// Delta keys in reading order; keys this list does not know follow, sorted.
fn delta_keys(d: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut keys = Vec::new();
    for (m, _) in LATENCY_METRICS {
        for p in ["p50", "p90", "p95", "p99"] {
            keys.push(format!("{m}.{p}"));
        }
    }
    keys.push("output_tok_per_s".into());
    keys.push("requests_per_s".into());
    keys.push("total_tok_per_s".into());
    let mut out: Vec<String> = keys.into_iter().filter(|k| d.contains_key(k)).collect();
    let mut rest: Vec<String> = d.keys().filter(|k| !out.contains(k)).cloned().collect();
    rest.sort();
    out.extend(rest);
    out
}

/// "significant (worse)" / "within noise", and the cell's class.
fn significance(d: &Value) -> Cell {
    match g(d, "significant").as_bool() {
        Some(true) => {
            let change = num(g(d, "change_pct")).unwrap_or(0.0);
            let dir = match g(d, "better").as_str() {
                Some("lower") if change < 0.0 => Some("better"),
                Some("lower") => Some("worse"),
                Some("higher") if change > 0.0 => Some("better"),
                Some("higher") => Some("worse"),
                _ => None,
            };
            match dir {
                Some(dir) => Cell::plain(format!("significant ({dir})")).class(dir),
                None => Cell::plain("significant").class("worse"),
            }
        }
        Some(false) => Cell::plain("within noise").class("noise"),
        None => Cell::plain(MISSING),
    }
}

fn deltas_section(ctx: &Ctx) -> Section {
    let mut blocks = Vec::new();
    for cand in &ctx.candidates {
        let name = ctx.candidate_name(cand);
        blocks.push(Block::Subheading {
            text: format!("{name} vs {}", ctx.baseline_name()),
        });
        let Some(d) = g(cand, "deltas").as_object() else {
            blocks.push(Block::Para {
                text: format!("No deltas for {name}."),
                class: "note".into(),
            });
            continue;
        };
        let mut t = Table::new(
            &[
                "metric",
                "baseline",
                "candidate",
                "change",
                "95 % CI",
                "significance",
                "method",
            ],
            &[false, true, true, true, true, false, false],
        );
        for key in delta_keys(d) {
            let v = &d[&key];
            t.rows.push(vec![
                Cell::code(key.clone()),
                Cell::plain(fmt_opt(g(v, "baseline"))),
                Cell::plain(fmt_opt(g(v, "candidate"))),
                Cell::plain(fmt_pct(g(v, "change_pct"))),
                Cell::plain(fmt_pct_ci(g(v, "ci_low_pct"), g(v, "ci_high_pct"))),
                significance(v),
                Cell::plain(text(g(v, "method"))),
            ]);
        }
        blocks.push(Block::Table(t));
    }
    if ctx.candidates.is_empty() {
        blocks.push(Block::Para {
            text: "No candidate was compared with the baseline.".into(),
            class: "note".into(),
        });
    }
    Section {
        id: "deltas".into(),
        title: "Deltas against the baseline".into(),
        blocks,
    }
}

/// Suite names over all arms, in first-seen order.
fn suites(ctx: &Ctx) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for arm in ctx.arms {
        if let Some(q) = g(arm, "quality").as_object() {
            for k in q.keys() {
                if !out.contains(k) {
                    out.push(k.clone());
                }
            }
        }
    }
    out
}

fn accuracy_cell(s: &Value) -> Cell {
    if s.is_null() {
        return Cell::plain(MISSING);
    }
    let mut t = fmt_acc(g(s, "accuracy"));
    if let (Some(c), Some(n)) = (g(s, "correct").as_u64(), g(s, "items").as_u64()) {
        t.push_str(&format!(" ({c}/{n})"));
    }
    if let (Some(l), Some(h)) = (num(g(s, "ci_low")), num(g(s, "ci_high"))) {
        t.push_str(&format!(" [{:.1} … {:.1}]", l * 100.0, h * 100.0));
    }
    Cell::plain(t)
}

fn quality_section(ctx: &Ctx) -> Section {
    let mut blocks = Vec::new();
    let suites = suites(ctx);
    if suites.is_empty() {
        blocks.push(Block::Para {
            text: "No quality suite was run.".into(),
            class: "note".into(),
        });
    } else {
        let mut head = vec!["suite".to_owned()];
        head.extend(ctx.names.iter().cloned());
        let n = head.len();
        let mut t = Table::with_head(head, (0..n).map(|i| i > 0).collect());
        for suite in &suites {
            let mut row = vec![Cell::code(suite.clone())];
            for arm in ctx.arms {
                row.push(accuracy_cell(g(g(arm, "quality"), suite)));
            }
            t.rows.push(row);
        }
        blocks.push(Block::Para {
            text: "Accuracy per suite and arm: correct/items, [95 % interval in %].".into(),
            class: "note".into(),
        });
        blocks.push(Block::Table(t));
        // Retrieval suites report accuracy per context length.
        for suite in &suites {
            let mut lengths: Vec<String> = Vec::new();
            for arm in ctx.arms {
                if let Some(b) = g(g(g(arm, "quality"), suite), "by_length").as_object() {
                    for k in b.keys() {
                        if !lengths.contains(k) {
                            lengths.push(k.clone());
                        }
                    }
                }
            }
            if lengths.is_empty() {
                continue;
            }
            lengths.sort_by_key(|k| (k.parse::<u64>().unwrap_or(u64::MAX), k.clone()));
            blocks.push(Block::Subheading {
                text: format!("{suite} by context length (tokens)"),
            });
            let mut head = vec!["context length".to_owned()];
            head.extend(ctx.names.iter().cloned());
            let n = head.len();
            let mut t = Table::with_head(head, (0..n).map(|_| true).collect());
            for len in &lengths {
                let mut row = vec![Cell::plain(len.clone())];
                for arm in ctx.arms {
                    row.push(accuracy_cell(g(
                        g(g(g(arm, "quality"), suite), "by_length"),
                        len,
                    )));
                }
                t.rows.push(row);
            }
            blocks.push(Block::Table(t));
        }
    }
    for cand in &ctx.candidates {
        let Some(q) = g(cand, "quality").as_object().filter(|q| !q.is_empty()) else {
            continue;
        };
        let name = ctx.candidate_name(cand);
        blocks.push(Block::Subheading {
            text: format!("Paired: {name} vs {}", ctx.baseline_name()),
        });
        let mut t = Table::new(
            &[
                "suite",
                "baseline",
                "candidate",
                "change",
                "paired",
                "lost / gained",
                "McNemar p",
                "significance",
                "flips",
            ],
            &[false, true, true, true, true, true, true, false, false],
        );
        for (suite, s) in q {
            let flips: Vec<String> = arr(g(s, "flips"))
                .iter()
                .map(|f| {
                    let dir = match g(f, "lost").as_bool() {
                        Some(true) => "lost",
                        Some(false) => "gained",
                        None => "?",
                    };
                    format!("{} ({dir})", text(g(f, "id")))
                })
                .collect();
            let sig = match g(s, "significant").as_bool() {
                Some(true) => Cell::plain("significant").class("worse"),
                Some(false) => Cell::plain("within noise").class("noise"),
                None => Cell::plain(MISSING),
            };
            let [change, lost_gained, pval] = paired_figures(s);
            t.rows.push(vec![
                Cell::code(suite.clone()),
                Cell::plain(fmt_acc(g(s, "baseline_accuracy"))),
                Cell::plain(fmt_acc(g(s, "candidate_accuracy"))),
                Cell::plain(change),
                Cell::plain(fmt_count(g(s, "paired"))),
                Cell::plain(lost_gained),
                Cell::plain(pval),
                sig,
                Cell::plain(if flips.is_empty() {
                    "none".to_owned()
                } else {
                    flips.join(", ")
                }),
            ]);
        }
        blocks.push(Block::Table(t));
        let agr = g(cand, "agreement");
        if let Some(a) = agr.as_object().filter(|a| !a.is_empty()) {
            let mut t = Table::new(&["agreement", "value"], &[false, true]);
            for (k, v) in a {
                let value = match (k.as_str(), v) {
                    ("exact_match_rate" | "top1_agreement", v) if num(v).is_some() => fmt_acc(v),
                    ("mean_kl", v) if num(v).is_some() => format!("{:.4}", num(v).unwrap_or(0.0)),
                    (_, Value::Object(_)) => fmt_evidence(v),
                    (_, v) => text(v),
                };
                t.rows.push(vec![Cell::code(k.clone()), Cell::plain(value)]);
            }
            blocks.push(Block::Table(t));
        }
    }
    if let Some(r) = &ctx.reference {
        reference_blocks(ctx, r, &mut blocks);
    }
    Section {
        id: "quality".into(),
        title: "Quality".into(),
        blocks,
    }
}

/// A paired quality comparison's change in points, "lost / gained" and McNemar p, as shown.
fn paired_figures(s: &Value) -> [String; 3] {
    let change = num(g(s, "change_pts"))
        .map(|x| format!("{x:+.1} pts"))
        .unwrap_or_else(|| MISSING.to_owned());
    let lost_gained = format!(
        "{} / {}",
        fmt_count(g(s, "lost")),
        fmt_count(g(s, "gained"))
    );
    let pval = num(g(s, "mcnemar_p"))
        .map(|p| format!("{p:.3}"))
        .unwrap_or_else(|| MISSING.to_owned());
    [change, lost_gained, pval]
}

/// Every arm against the quality reference arm: accuracy per suite with the ratio (vLLM advises
/// calibrating when FP8 falls below about 95 % of the reference), and answer agreement.
fn reference_blocks(ctx: &Ctx, reference: &str, blocks: &mut Vec<Block>) {
    blocks.push(Block::Subheading {
        text: format!("Against the reference arm: {reference}"),
    });
    let mut t = Table::new(
        &[
            "arm",
            "suite",
            "reference",
            "arm accuracy",
            "change",
            "ratio",
            "lost / gained",
            "McNemar p",
        ],
        &[false, false, true, true, true, true, true, true],
    );
    let mut agreement = Table::new(
        &[
            "arm",
            "paired answers",
            "identical answers",
            "top-1 agreement",
            "mean KL (nats)",
            "max KL (nats)",
        ],
        &[false, true, true, true, true, true],
    );
    for a in ctx.reference_arms {
        let name = text(g(a, "arm"));
        if let Some(q) = g(a, "quality").as_object() {
            for (suite, s) in q {
                let ratio = num(g(g(a, "accuracy_ratio"), suite))
                    .map(|x| format!("{:.0} %", 100.0 * x))
                    .unwrap_or_else(|| MISSING.to_owned());
                let [change, lost_gained, pval] = paired_figures(s);
                t.rows.push(vec![
                    Cell::plain(name.clone()),
                    Cell::code(suite.clone()),
                    Cell::plain(fmt_acc(g(s, "baseline_accuracy"))),
                    Cell::plain(fmt_acc(g(s, "candidate_accuracy"))),
                    Cell::plain(change),
                    Cell::plain(ratio),
                    Cell::plain(lost_gained),
                    Cell::plain(pval),
                ]);
            }
        }
        let agr = g(a, "agreement");
        if agr.is_object() {
            let kl = |k: &str| {
                num(g(agr, k))
                    .map(|x| format!("{x:.4}"))
                    .unwrap_or_else(|| MISSING.to_owned())
            };
            agreement.rows.push(vec![
                Cell::plain(name.clone()),
                Cell::plain(fmt_count(g(agr, "paired"))),
                Cell::plain(fmt_acc(g(agr, "exact_match_rate"))),
                Cell::plain(fmt_acc(g(agr, "top1_agreement"))),
                Cell::plain(kl("mean_kl")),
                Cell::plain(kl("max_kl")),
            ]);
        }
    }
    blocks.push(Block::Para {
        text: "Accuracy of each arm against the reference on the same items; ratio = arm / \
               reference (vLLM's advice: calibrate when FP8 falls below about 95 % of the \
               reference). Agreement compares the answers token by token (KL over the returned \
               top-k log-probabilities)."
            .into(),
        class: "note".into(),
    });
    if !t.rows.is_empty() {
        blocks.push(Block::Table(t));
    }
    if !agreement.rows.is_empty() {
        blocks.push(Block::Table(agreement));
    }
}

fn warnings_section(ctx: &Ctx) -> Section {
    let mut blocks = Vec::new();
    for cand in &ctx.candidates {
        let w = g(cand, "warnings");
        let name = ctx.candidate_name(cand);
        blocks.push(Block::Subheading {
            text: format!("{name} vs {}", ctx.baseline_name()),
        });
        if !w.is_object() {
            blocks.push(Block::Para {
                text: format!("No warnings comparison for {name}."),
                class: "note".into(),
            });
            continue;
        }
        let mut facts = Vec::new();
        if let Some(ch) = text_of(g(w, "change_under_test")) {
            facts.push(format!("change under test: {ch}"));
        }
        if let Some(r) = text_of(g(w, "resolvable")) {
            facts.push(format!("warnings this change can resolve: {r}"));
        }
        if !facts.is_empty() {
            blocks.push(Block::Para {
                text: facts.join(" · "),
                class: "note".into(),
            });
        }
        let mut t = Table::new(
            &[
                "status",
                "warning",
                "meaning",
                "baseline",
                "candidate",
                "note",
            ],
            &[false, false, false, true, true, false],
        );
        for (status, class) in [
            ("resolved", "better"),
            ("persisting", "noise"),
            ("new", "worse"),
        ] {
            for e in arr(g(w, status)) {
                t.rows.push(vec![
                    Cell::plain(status).class(class),
                    Cell::code(text(g(e, "id"))),
                    Cell::plain(text(g(e, "meaning"))),
                    Cell::plain(fmt_count(g(e, "baseline_count"))),
                    Cell::plain(fmt_count(g(e, "candidate_count"))),
                    Cell::plain(text_of(g(e, "note")).unwrap_or_default()),
                ]);
            }
        }
        if t.rows.is_empty() {
            blocks.push(Block::Para {
                text: "No catalogued warning in either arm.".into(),
                class: "note".into(),
            });
        } else {
            blocks.push(Block::Table(t));
        }
        let notes: Vec<String> = arr(g(w, "notes")).iter().map(text).collect();
        if !notes.is_empty() {
            blocks.push(Block::List { items: notes });
        }
    }
    // What each server printed, with the first matching line as evidence.
    let mut t = Table::new(
        &["arm", "warning", "severity", "count", "ranks", "first line"],
        &[false, false, false, true, false, false],
    );
    for (arm, name) in ctx.arms.iter().zip(&ctx.names) {
        for w in arr(g(arm, "warnings")) {
            let ranks: Vec<String> = arr(g(w, "ranks")).iter().map(text).collect();
            let sev = text(g(w, "severity"));
            let class = match sev.as_str() {
                "error" => "worse",
                "warning" => "warn",
                _ => "",
            };
            t.rows.push(vec![
                Cell::code(name.clone()),
                Cell::code(text(g(w, "id"))),
                Cell::plain(sev).class(class),
                Cell::plain(fmt_count(g(w, "count"))),
                Cell::plain(if ranks.is_empty() {
                    MISSING.to_owned()
                } else {
                    ranks.join(", ")
                }),
                Cell::code(text(g(w, "first_line"))),
            ]);
        }
    }
    if !t.rows.is_empty() {
        blocks.push(Block::Subheading {
            text: "Server log warnings per arm".into(),
        });
        blocks.push(Block::Table(t));
    }
    Section {
        id: "warnings".into(),
        title: "Warnings".into(),
        blocks,
    }
}

fn server_section(ctx: &Ctx) -> Section {
    let mut blocks = Vec::new();
    let mut head = vec!["fact".to_owned()];
    head.extend(ctx.names.iter().cloned());
    let n = head.len();
    let mut t = Table::with_head(head, (0..n).map(|_| false).collect());
    let servers: Vec<&Value> = ctx.arms.iter().map(|a| g(a, "server")).collect();
    let row = |label: &str, f: &dyn Fn(&Value) -> Cell| {
        let mut r = vec![Cell::plain(label)];
        r.extend(servers.iter().map(|s| f(s)));
        r
    };
    t.rows
        .push(row("engine", &|s| Cell::plain(text(g(s, "engine")))));
    t.rows
        .push(row("version", &|s| Cell::plain(text(g(s, "version")))));
    // A differing version across arms is a confounder worth flagging.
    let versions: Vec<String> = servers
        .iter()
        .filter_map(|s| text_of(g(s, "version")))
        .collect();
    if versions.windows(2).any(|w| w[0] != w[1]) {
        if let Some(r) = t.rows.last_mut() {
            for c in r.iter_mut().skip(1) {
                c.class = "flag".into();
            }
        }
    }
    for (what, req, eff) in [
        (
            "KV dtype",
            "kv_cache_dtype_requested",
            "kv_cache_dtype_effective",
        ),
        (
            "calculate KV scales",
            "calculate_kv_scales_requested",
            "calculate_kv_scales_effective",
        ),
    ] {
        t.rows.push(row(&format!("{what} requested"), &|s| {
            Cell::code(text(g(s, req)))
        }));
        t.rows.push(row(&format!("{what} effective"), &|s| {
            let (r, e) = (g(s, req), g(s, eff));
            let cell = Cell::code(text(e));
            // "auto" resolves to the model's dtype: that is not a mismatch.
            if !r.is_null() && !e.is_null() && r != e && r.as_str() != Some("auto") {
                cell.class("flag")
            } else {
                cell
            }
        }));
    }
    t.rows.push(row("KV-cache capacity (tokens)", &|s| {
        Cell::plain(fmt_count(g(s, "kv_cache_tokens")))
    }));
    t.rows.push(row("start-up (s)", &|s| {
        Cell::plain(fmt_opt(g(s, "startup_s")))
    }));
    t.rows.push(row("config mismatches", &|s| {
        let m: Vec<String> = arr(g(s, "mismatches")).iter().map(text).collect();
        if m.is_empty() {
            Cell::plain(if s.is_null() { MISSING } else { "none" })
        } else {
            Cell::plain(m.join("; ")).class("flag")
        }
    }));
    if !ctx.arms.is_empty() {
        blocks.push(Block::Table(t));
    }
    let flagged: Vec<String> = ctx
        .arms
        .iter()
        .zip(&ctx.names)
        .filter(|(a, _)| !arr(g(g(a, "server"), "mismatches")).is_empty())
        .map(|(_, n)| n.clone())
        .collect();
    if !flagged.is_empty() {
        blocks.push(Block::Para {
            text: format!(
                "Did not run exactly as asked: {} (see config mismatches).",
                flagged.join(", ")
            ),
            class: "flag".into(),
        });
    }
    Section {
        id: "server".into(),
        title: "Server facts".into(),
        blocks,
    }
}

fn policy_section(c: &Value) -> Section {
    let mut blocks = Vec::new();
    match g(c, "policy").as_object() {
        Some(p) if !p.is_empty() => {
            let mut t = Table::new(&["policy key", "value"], &[false, false]);
            for (k, v) in p {
                let value = match v {
                    Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
                    other => text(other),
                };
                t.rows.push(vec![Cell::code(k.clone()), Cell::plain(value)]);
            }
            blocks.push(Block::Table(t));
        }
        _ => blocks.push(Block::Para {
            text: "The comparison does not say which policy decided.".into(),
            class: "note".into(),
        }),
    }
    Section {
        id: "policy".into(),
        title: "Decision policy".into(),
        blocks,
    }
}
