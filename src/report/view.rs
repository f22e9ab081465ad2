//! The comparison JSON turned into what a report shows: a header (the verdict) and sections of
//! paragraphs, tables, charts and log excerpts. HTML and Markdown both render this one view, so
//! they cannot drift apart in content; only the charts are HTML-only.
//!
//! It renders from the typed [`Comparison`]; a file that lacks a field reads it as its default
//! (an older comparison), and what the model keeps as JSON (log warnings, quality suites,
//! evidence) is read defensively. A missing value shows as "—", never 0.

use serde::Serialize;
use serde_json::Value;

use super::svg;
use crate::compare::{
    AgreementSummary, ArmSummary, Candidate, Comparison, DesignKind, QualityDelta, Stopped,
    ValueCi, Verdict,
};

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

/// A fraction 0..1 as "95.0 %".
fn fmt_acc(v: &Value) -> String {
    num(v)
        .map(|x| format!("{:.1} %", x * 100.0))
        .unwrap_or_else(|| MISSING.to_owned())
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

/// An optional number as shown, "—" when missing.
fn fmt_o(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map(fmt_num)
        .unwrap_or_else(|| MISSING.to_owned())
}

/// A count with thousands separators.
fn fmt_u(n: u64) -> String {
    group_thousands(&n.to_string())
}

fn fmt_uo(n: Option<u64>) -> String {
    n.map(fmt_u).unwrap_or_else(|| MISSING.to_owned())
}

/// "+5.6 %".
fn pct_o(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map(|x| format!("{x:+.1} %"))
        .unwrap_or_else(|| MISSING.to_owned())
}

/// "+1.2 … +9.8 %".
fn pct_ci_o(lo: Option<f64>, hi: Option<f64>) -> String {
    match (lo.filter(|x| x.is_finite()), hi.filter(|x| x.is_finite())) {
        (Some(l), Some(h)) => format!("{l:+.1} … {h:+.1} %"),
        _ => MISSING.to_owned(),
    }
}

/// A fraction 0..1 as "95.0 %".
fn acc_o(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map(|x| format!("{:.1} %", x * 100.0))
        .unwrap_or_else(|| MISSING.to_owned())
}

fn text_o(v: Option<&str>) -> String {
    v.map(str::to_owned).unwrap_or_else(|| MISSING.to_owned())
}

/// A value with its interval: "1,234.5 [1,203.6 … 1,265.4]".
fn fmt_value_ci(v: &ValueCi) -> String {
    let value = fmt_o(v.value);
    match (v.ci_low, v.ci_high) {
        (Some(l), Some(h)) if l.is_finite() && h.is_finite() => {
            format!("{value} [{} … {}]", fmt_num(l), fmt_num(h))
        }
        _ => value,
    }
}

/// The verdict's CSS key: one of the four verdicts, else `unknown` (none given).
fn verdict_key(v: Option<Verdict>) -> &'static str {
    v.map(Verdict::as_str).unwrap_or("unknown")
}

fn verdict_cell(v: Option<Verdict>) -> Cell {
    Cell::plain(text_o(v.map(Verdict::as_str))).class(&format!("v-{}", verdict_key(v)))
}

/// "decided after 2 runs per arm in 3.4 min" (or why the runs stopped before a decision).
pub fn effort_line(c: &Comparison) -> Option<String> {
    let e = c.effort.as_ref()?;
    let counts: std::collections::BTreeSet<u32> = e.runs_per_arm.values().copied().collect();
    let runs_text = match counts.iter().collect::<Vec<_>>().as_slice() {
        [n] => format!("{n} run{} per arm", if **n == 1 { "" } else { "s" }),
        _ => {
            e.runs_per_arm
                .iter()
                .map(|(a, n)| format!("{a}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
                + " runs"
        }
    };
    let min = e.wall_s / 60.0;
    Some(match e.stopped {
        Stopped::Decided => format!("decided after {runs_text} in {min:.1} min"),
        Stopped::MaxRuns => format!(
            "not settled within the cap of {} runs per arm ({runs_text}, {min:.1} min): the verdict follows the point estimates; the open criteria say what would settle them",
            e.max_runs
        ),
        Stopped::Budget => format!(
            "stopped by the time budget after {runs_text} ({min:.1} min), verdict not settled: the verdict follows the point estimates"
        ),
        Stopped::Interrupted => format!("interrupted after {runs_text} ({min:.1} min)"),
        Stopped::Fixed => format!("{runs_text}, {min:.1} min (fixed design)"),
    })
}

/// What the verdict cost and, for `--until-decided`, how each speed criterion's interval
/// narrowed round by round; `None` for comparisons without `effort` (`kvbench compare`).
fn effort_section(c: &Comparison) -> Option<Section> {
    let e = c.effort.as_ref()?;
    let mut blocks = vec![Block::Para {
        text: effort_line(c)?,
        class: if matches!(e.stopped, Stopped::Decided | Stopped::Fixed) {
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
    for (arm, s) in &e.seconds {
        let mut row = vec![
            Cell::code(arm.clone()),
            Cell::plain(fmt_uo(e.runs_per_arm.get(arm).map(|n| u64::from(*n)))),
        ];
        for v in [
            s.launch_s,
            s.warmup_s,
            s.quality_s,
            s.workload_s,
            s.teardown_s,
        ] {
            row.push(Cell::plain(fmt_o(v)));
        }
        t.rows.push(row);
    }
    blocks.push(Block::Table(t));
    if !e.rounds.is_empty() {
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
        for r in &e.rounds {
            for cand in &r.candidates {
                for k in cand.criteria.iter().filter(|k| k.change_pct.is_some()) {
                    t.rows.push(vec![
                        Cell::plain(r.round.to_string()),
                        Cell::code(cand.arm.clone()),
                        Cell::code(k.criterion.clone()),
                        Cell::plain(pct_o(k.change_pct)),
                        Cell::plain(pct_ci_o(k.ci_low_pct, k.ci_high_pct)),
                        verdict_cell(Some(k.verdict)),
                        Cell::plain(if k.settled { "yes" } else { "open" }),
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

fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The comparison turned into the report view.
pub fn build(c: &Comparison) -> Report {
    let decision = verdict_key(c.decision);
    let baseline = nonempty(&c.baseline);
    let overall_reason = c
        .recommendations
        .iter()
        .rev()
        .find(|r| r.criterion == "overall")
        .and_then(|r| nonempty(&r.reason))
        .map(str::to_owned)
        .unwrap_or_else(|| "The comparison gives no overall reason.".to_owned());
    let mut headline = Vec::new();
    if let Some(a) = &c.recommended_arm {
        headline.push(format!("recommended arm: {a}"));
    }
    if let Some(b) = baseline {
        headline.push(format!("baseline: {b}"));
    }
    if let Some(e) = effort_line(c) {
        headline.push(e);
    }
    let mut meta = Vec::new();
    let schema = (c.schema_version > 0).then(|| c.schema_version.to_string());
    for (value, label) in [
        (c.experiment.clone(), "experiment"),
        (nonempty(&c.created_at).map(str::to_owned), "created"),
        (nonempty(&c.kvbench_version).map(str::to_owned), "kvbench"),
        (schema, "schema"),
    ] {
        if let Some(t) = value {
            meta.push(Kv {
                key: label.to_owned(),
                value: t,
            });
        }
    }
    let title = match &c.experiment {
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
    arms: &'a [ArmSummary],
    names: Vec<String>,
    baseline: Option<String>,
    candidates: Vec<std::borrow::Cow<'a, Candidate>>,
    /// The quality reference arm and every other arm's comparison with it.
    reference: Option<String>,
    reference_arms: &'a [crate::compare::ReferenceArm],
}

impl<'a> Ctx<'a> {
    fn new(c: &'a Comparison) -> Self {
        let names = c
            .arms
            .iter()
            .enumerate()
            .map(|(i, a)| {
                nonempty(&a.name)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("arm {}", i + 1))
            })
            .collect();
        let mut candidates: Vec<std::borrow::Cow<'a, Candidate>> = c
            .candidates
            .iter()
            .map(std::borrow::Cow::Borrowed)
            .collect();
        // An older or hand-made comparison may carry only the top-level (first candidate's)
        // tables: show those as one unnamed candidate.
        let warnings_given = c.warnings != Default::default();
        if candidates.is_empty()
            && (!c.deltas.is_empty() || warnings_given || !c.quality.is_empty())
        {
            candidates.push(std::borrow::Cow::Owned(Candidate {
                deltas: c.deltas.clone(),
                warnings: c.warnings.clone(),
                quality: c.quality.clone(),
                agreement: c.agreement.clone(),
                ..Candidate::default()
            }));
        }
        Ctx {
            arms: &c.arms,
            names,
            baseline: nonempty(&c.baseline).map(str::to_owned),
            candidates,
            reference: c.reference.as_ref().map(|r| r.arm.clone()),
            reference_arms: c.reference.as_ref().map_or(&[], |r| r.arms.as_slice()),
        }
    }

    fn is_ok(arm: &ArmSummary) -> bool {
        matches!(arm.outcome.as_str(), "ok" | "") && arm.failure.is_none()
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

    fn candidate_name(&self, cand: &Candidate) -> String {
        nonempty(&cand.arm)
            .map(str::to_owned)
            .unwrap_or_else(|| "candidate".to_owned())
    }

    fn baseline_name(&self) -> String {
        self.baseline
            .clone()
            .unwrap_or_else(|| "baseline".to_owned())
    }
}

fn recommendations_section(c: &Comparison) -> Section {
    let adaptive = c
        .effort
        .as_ref()
        .is_some_and(|e| e.design == DesignKind::Adaptive)
        && !c.settled;
    let mut blocks = Vec::new();
    if c.recommendations.is_empty() {
        blocks.push(Block::Para {
            text: "The comparison has no recommendations.".into(),
            class: "note".into(),
        });
    } else {
        blocks.push(Block::Table(rec_table(&c.recommendations, adaptive)));
    }
    // With one candidate its table is the one above; with several, each gets its own.
    for cand in c.candidates.iter().filter(|_| c.candidates.len() > 1) {
        if cand.recommendations.is_empty() {
            continue;
        }
        blocks.push(Block::Subheading {
            text: format!(
                "Candidate {}: {}",
                text_o(nonempty(&cand.arm)),
                cand.decision.as_str()
            ),
        });
        blocks.push(Block::Table(rec_table(&cand.recommendations, adaptive)));
    }
    Section {
        id: "recommendations".into(),
        title: "Recommendations".into(),
        blocks,
    }
}

/// One row per recommendation; with `adaptive`, open criteria say what is still open.
fn rec_table(recs: &[crate::compare::decision::Recommendation], adaptive: bool) -> Table {
    let mut t = Table::new(&["criterion", "verdict", "reason", "evidence"], &[false; 4]);
    for r in recs {
        let reason = text_o(nonempty(&r.reason));
        t.rows.push(vec![
            Cell::code(text_o(nonempty(&r.criterion))),
            verdict_cell(Some(r.verdict)),
            Cell::plain(match r.open.as_ref().filter(|_| adaptive) {
                Some(open) => format!("{reason} (still open: {open})"),
                None => reason,
            }),
            Cell::plain(fmt_evidence(&r.evidence)),
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
        let req = &arm.requests;
        let requests = format!(
            "{} of {} completed, {} failed",
            fmt_u(req.completed),
            fmt_u(req.total),
            fmt_u(req.failed)
        );
        let errors = if arm.errors.is_empty() {
            "none".to_owned()
        } else {
            arm.errors
                .iter()
                .map(|(k, v)| format!("{k}: {}", fmt_u(*v)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        t.rows.push(vec![
            Cell::code(name.clone()),
            Cell::plain(ctx.role(name)),
            Cell::plain(text_o(nonempty(&arm.outcome))).class(if ok { "ok" } else { "flag" }),
            Cell::plain(requests),
            Cell::plain(errors),
            Cell::plain(fmt_u(arm.repeats as u64)),
            Cell::plain(if arm.results.is_empty() {
                MISSING.to_owned()
            } else {
                arm.results.join(", ")
            }),
        ]);
    }
    if !t.rows.is_empty() {
        blocks.push(Block::Table(t));
    }
    for (arm, name) in ctx.arms.iter().zip(&ctx.names) {
        if Ctx::is_ok(arm) {
            continue;
        }
        let f = arm.failure.as_ref();
        blocks.push(Block::Para {
            text: format!(
                "{name} failed ({}): {}",
                f.map(|f| f.kind.clone())
                    .unwrap_or_else(|| text_o(nonempty(&arm.outcome))),
                f.and_then(|f| nonempty(&f.message)).unwrap_or("no message")
            ),
            class: "flag".into(),
        });
        if let Some(tail) = f.map(|f| &f.log_tail).filter(|t| !t.trim().is_empty()) {
            blocks.push(Block::Pre {
                label: format!("{name}: server log tail"),
                text: tail.clone(),
            });
        }
    }
    Section {
        id: "arms".into(),
        title: "Arms".into(),
        blocks,
    }
}

/// The arms with a usable 0..100 % quantile array in `distributions`.
fn series<'a>(ctx: &'a Ctx, key: &str) -> (Vec<svg::Series<'a>>, Vec<String>) {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (i, (arm, name)) in ctx.arms.iter().zip(&ctx.names).enumerate() {
        let q: &[f64] = match (&arm.distributions, key) {
            (Some(d), "ttft_ms") => &d.ttft_ms,
            (Some(d), "itl_ms") => &d.itl_ms,
            _ => &[],
        };
        if q.len() >= 2 && q.iter().all(|x| x.is_finite()) {
            out.push(svg::Series {
                name,
                color: i,
                quantiles: q.to_vec(),
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
        // A failed arm measured nothing: its summaries are empty.
        if arm.metrics.values().all(|m| m.count == 0) {
            let mut row = vec![Cell::code(name.clone()), Cell::plain("no metrics")];
            row.extend((0..7).map(|_| Cell::plain(MISSING)));
            t.rows.push(row);
            continue;
        }
        for (key, label) in LATENCY_METRICS {
            let Some(m) = arm.metrics.get(*key) else {
                continue;
            };
            let mean = match (m.mean, m.std) {
                (Some(a), Some(s)) => format!("{} ± {}", fmt_num(a), fmt_num(s)),
                (Some(a), None) => fmt_num(a),
                _ => MISSING.to_owned(),
            };
            let range = match (m.min, m.max) {
                (Some(a), Some(b)) => format!("{} … {}", fmt_num(a), fmt_num(b)),
                _ => MISSING.to_owned(),
            };
            t.rows.push(vec![
                Cell::code(name.clone()),
                Cell::plain(*label),
                Cell::plain(mean),
                Cell::plain(fmt_o(m.p50)),
                Cell::plain(fmt_o(m.p90)),
                Cell::plain(fmt_o(m.p95)),
                Cell::plain(fmt_o(m.p99)),
                Cell::plain(range),
                Cell::plain(fmt_u(m.count)),
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
            let t = &arm.throughput.output_tok_per_s;
            Some(svg::Interval {
                name,
                color: i,
                value: t.value.filter(|x| x.is_finite())?,
                low: t.ci_low.filter(|x| x.is_finite()),
                high: t.ci_high.filter(|x| x.is_finite()),
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
        let mut row = vec![Cell::code(name.clone())];
        for (key, _) in THROUGHPUT_METRICS {
            row.push(Cell::plain(
                arm.throughput
                    .get(key)
                    .map(fmt_value_ci)
                    .unwrap_or_else(|| MISSING.to_owned()),
            ));
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
fn delta_keys<V>(d: &std::collections::BTreeMap<String, V>) -> Vec<String> {
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
fn significance(d: &crate::compare::Delta) -> Cell {
    use crate::compare::Better;
    match d.significant {
        Some(true) => {
            let change = d.change_pct.unwrap_or(0.0);
            let dir = match d.better {
                Better::Lower if change < 0.0 => "better",
                Better::Lower => "worse",
                Better::Higher if change > 0.0 => "better",
                Better::Higher => "worse",
            };
            Cell::plain(format!("significant ({dir})")).class(dir)
        }
        Some(false) => Cell::plain("within noise").class("noise"),
        None => Cell::plain(MISSING),
    }
}

fn method_name(m: crate::compare::Method) -> String {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| MISSING.to_owned())
}

fn deltas_section(ctx: &Ctx) -> Section {
    let mut blocks = Vec::new();
    for cand in &ctx.candidates {
        let name = ctx.candidate_name(cand);
        blocks.push(Block::Subheading {
            text: format!("{name} vs {}", ctx.baseline_name()),
        });
        if cand.deltas.is_empty() {
            blocks.push(Block::Para {
                text: format!("No deltas for {name}."),
                class: "note".into(),
            });
            continue;
        }
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
        for key in delta_keys(&cand.deltas) {
            let v = &cand.deltas[&key];
            t.rows.push(vec![
                Cell::code(key.clone()),
                Cell::plain(fmt_o(v.baseline)),
                Cell::plain(fmt_o(v.candidate)),
                Cell::plain(pct_o(v.change_pct)),
                Cell::plain(pct_ci_o(v.ci_low_pct, v.ci_high_pct)),
                significance(v),
                Cell::plain(method_name(v.method)),
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
        for k in arm.quality.iter().flat_map(|q| q.keys()) {
            if !out.contains(k) {
                out.push(k.clone());
            }
        }
    }
    out
}

/// A suite of an arm's `quality` (as the run result holds it).
fn suite_of<'a>(arm: &'a ArmSummary, suite: &str) -> &'a Value {
    arm.quality
        .as_ref()
        .and_then(|q| q.get(suite))
        .unwrap_or(&NULL)
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

/// The agreement summary's fields as (key, value) rows, in key order.
fn agreement_rows(a: &AgreementSummary) -> Vec<(String, String)> {
    let Ok(Value::Object(m)) = serde_json::to_value(a) else {
        return Vec::new();
    };
    m.iter()
        .map(|(k, v)| {
            let value = match (k.as_str(), v) {
                ("exact_match_rate" | "top1_agreement", v) if num(v).is_some() => fmt_acc(v),
                ("mean_kl", v) if num(v).is_some() => format!("{:.4}", num(v).unwrap_or(0.0)),
                ("first_divergence_char" | "first_divergence_token", _) => {
                    let s = if k == "first_divergence_char" {
                        &a.first_divergence_char
                    } else {
                        &a.first_divergence_token
                    };
                    match (s.count, s.p50) {
                        (0, _) | (_, None) => MISSING.to_owned(),
                        (n, Some(p50)) => format!(
                            "median {} (min {}, max {}) over {n} differing pairs",
                            fmt_num(p50),
                            fmt_o(s.min),
                            fmt_o(s.max)
                        ),
                    }
                }
                (_, Value::Object(_)) => fmt_evidence(v),
                (_, v) => text(v),
            };
            (k.clone(), value)
        })
        .collect()
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
                row.push(accuracy_cell(suite_of(arm, suite)));
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
                if let Some(b) = g(suite_of(arm, suite), "by_length").as_object() {
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
                    row.push(accuracy_cell(g(g(suite_of(arm, suite), "by_length"), len)));
                }
                t.rows.push(row);
            }
            blocks.push(Block::Table(t));
        }
    }
    for cand in &ctx.candidates {
        if cand.quality.is_empty() {
            continue;
        }
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
        for (suite, s) in &cand.quality {
            let flips: Vec<String> = s
                .flips
                .iter()
                .map(|f| format!("{} ({})", f.id, if f.lost { "lost" } else { "gained" }))
                .collect();
            let sig = match s.significant {
                Some(true) => Cell::plain("significant").class("worse"),
                Some(false) => Cell::plain("within noise").class("noise"),
                None => Cell::plain(MISSING),
            };
            let [change, lost_gained, pval] = paired_figures(s);
            t.rows.push(vec![
                Cell::code(suite.clone()),
                Cell::plain(acc_o(s.baseline_accuracy)),
                Cell::plain(acc_o(s.candidate_accuracy)),
                Cell::plain(change),
                Cell::plain(fmt_uo(s.paired)),
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
        if let Some(a) = &cand.agreement {
            let mut t = Table::new(&["agreement", "value"], &[false, true]);
            for (k, v) in agreement_rows(a) {
                t.rows.push(vec![Cell::code(k), Cell::plain(v)]);
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
fn paired_figures(s: &QualityDelta) -> [String; 3] {
    let change = s
        .change_pts
        .filter(|x| x.is_finite())
        .map(|x| format!("{x:+.1} pts"))
        .unwrap_or_else(|| MISSING.to_owned());
    let lost_gained = format!("{} / {}", fmt_uo(s.lost), fmt_uo(s.gained));
    let pval = s
        .mcnemar_p
        .filter(|x| x.is_finite())
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
        let name = text_o(nonempty(&a.arm));
        for (suite, s) in &a.quality {
            let ratio = a
                .accuracy_ratio
                .get(suite)
                .copied()
                .flatten()
                .filter(|x| x.is_finite())
                .map(|x| format!("{:.0} %", 100.0 * x))
                .unwrap_or_else(|| MISSING.to_owned());
            let [change, lost_gained, pval] = paired_figures(s);
            t.rows.push(vec![
                Cell::plain(name.clone()),
                Cell::code(suite.clone()),
                Cell::plain(acc_o(s.baseline_accuracy)),
                Cell::plain(acc_o(s.candidate_accuracy)),
                Cell::plain(change),
                Cell::plain(ratio),
                Cell::plain(lost_gained),
                Cell::plain(pval),
            ]);
        }
        if let Some(agr) = &a.agreement {
            let kl = |v: Option<f64>| {
                v.filter(|x| x.is_finite())
                    .map(|x| format!("{x:.4}"))
                    .unwrap_or_else(|| MISSING.to_owned())
            };
            agreement.rows.push(vec![
                Cell::plain(name.clone()),
                Cell::plain(fmt_u(agr.paired)),
                Cell::plain(acc_o(agr.exact_match_rate)),
                Cell::plain(acc_o(agr.top1_agreement)),
                Cell::plain(kl(agr.mean_kl)),
                Cell::plain(kl(agr.max_kl)),
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
        let w = &cand.warnings;
        let name = ctx.candidate_name(cand);
        blocks.push(Block::Subheading {
            text: format!("{name} vs {}", ctx.baseline_name()),
        });
        let mut facts = Vec::new();
        if let Some(ch) = &w.change_under_test {
            facts.push(format!("change under test: {ch}"));
        }
        if let Some(r) = w.resolvable {
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
        for (status, class, list) in [
            ("resolved", "better", &w.resolved),
            ("persisting", "noise", &w.persisting),
            ("new", "worse", &w.new),
        ] {
            for e in list {
                t.rows.push(vec![
                    Cell::plain(status).class(class),
                    Cell::code(text_o(nonempty(&e.id))),
                    Cell::plain(text_o(e.meaning.as_deref())),
                    Cell::plain(fmt_u(e.baseline_count)),
                    Cell::plain(fmt_u(e.candidate_count)),
                    Cell::plain(e.note.clone().unwrap_or_default()),
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
        if !w.notes.is_empty() {
            blocks.push(Block::List {
                items: w.notes.clone(),
            });
        }
    }
    // What each server printed, with the first matching line as evidence.
    let mut t = Table::new(
        &["arm", "warning", "severity", "count", "ranks", "first line"],
        &[false, false, false, true, false, false],
    );
    for (arm, name) in ctx.arms.iter().zip(&ctx.names) {
        for w in &arm.warnings {
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
    use crate::compare::ServerSummary;
    let mut blocks = Vec::new();
    let mut head = vec!["fact".to_owned()];
    head.extend(ctx.names.iter().cloned());
    let n = head.len();
    let mut t = Table::with_head(head, (0..n).map(|_| false).collect());
    let servers: Vec<Option<&ServerSummary>> = ctx.arms.iter().map(|a| a.server.as_ref()).collect();
    let row = |label: &str, f: &dyn Fn(Option<&ServerSummary>) -> Cell| {
        let mut r = vec![Cell::plain(label)];
        r.extend(servers.iter().map(|s| f(*s)));
        r
    };
    t.rows.push(row("engine", &|s| {
        Cell::plain(text_o(s.and_then(|s| nonempty(&s.engine))))
    }));
    t.rows.push(row("version", &|s| {
        Cell::plain(text_o(s.and_then(|s| s.version.as_deref())))
    }));
    // A differing version across arms is a confounder worth flagging.
    let versions: Vec<&str> = servers
        .iter()
        .filter_map(|s| s.and_then(|s| s.version.as_deref()))
        .collect();
    if versions.windows(2).any(|w| w[0] != w[1]) {
        if let Some(r) = t.rows.last_mut() {
            for c in r.iter_mut().skip(1) {
                c.class = "flag".into();
            }
        }
    }
    type Pair = fn(&ServerSummary) -> (Option<String>, Option<String>);
    let dtype: Pair = |s| {
        (
            s.kv_cache_dtype_requested.clone(),
            s.kv_cache_dtype_effective.clone(),
        )
    };
    let scales: Pair = |s| {
        (
            s.calculate_kv_scales_requested.map(|b| b.to_string()),
            s.calculate_kv_scales_effective.map(|b| b.to_string()),
        )
    };
    for (what, pair) in [("KV dtype", dtype), ("calculate KV scales", scales)] {
        t.rows.push(row(&format!("{what} requested"), &|s| {
            Cell::code(text_o(s.and_then(|s| pair(s).0).as_deref()))
        }));
        t.rows.push(row(&format!("{what} effective"), &|s| {
            let (r, e) = s.map(pair).unwrap_or_default();
            let cell = Cell::code(text_o(e.as_deref()));
            // "auto" resolves to the model's dtype: that is not a mismatch.
            match (r, e) {
                (Some(r), Some(e)) if r != e && r != "auto" => cell.class("flag"),
                _ => cell,
            }
        }));
    }
    t.rows.push(row("KV-cache capacity (tokens)", &|s| {
        Cell::plain(fmt_count(
            s.and_then(|s| s.kv_cache_tokens.as_ref()).unwrap_or(&NULL),
        ))
    }));
    t.rows.push(row("start-up (s)", &|s| {
        Cell::plain(fmt_o(s.and_then(|s| s.startup_s)))
    }));
    t.rows.push(row("config mismatches", &|s| match s {
        None => Cell::plain(MISSING),
        Some(s) if s.mismatches.is_empty() => Cell::plain("none"),
        Some(s) => {
            let m: Vec<String> = s.mismatches.iter().map(text).collect();
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
        .filter(|(a, _)| a.server.as_ref().is_some_and(|s| !s.mismatches.is_empty()))
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

fn policy_section(c: &Comparison) -> Section {
    let mut blocks = Vec::new();
    match c.policy.as_ref().map(serde_json::to_value) {
        Some(Ok(Value::Object(p))) if !p.is_empty() => {
            let mut t = Table::new(&["policy key", "value"], &[false, false]);
            for (k, v) in &p {
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
