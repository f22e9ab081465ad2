//! The comparison JSON turned into what a report shows: a header (the verdict) and sections of
//! paragraphs, tables, charts and log excerpts. HTML and Markdown both render this one view, so
//! they cannot drift apart in content; only the charts are HTML-only.
//!
//! It renders from the typed [`Comparison`]; a file that lacks a field reads it as its default
//! (an older comparison), and what the model keeps as JSON (log warnings, quality suites,
//! evidence) is read defensively. A missing value shows as "—", never 0.

use serde::Serialize;
use serde_json::Value;

use super::svg::{self, Interval};
use crate::compare::{
    AgreementSummary, ArmSummary, Candidate, Comparison, DesignKind, QualityDelta, Stopped,
    ValueCi, Verdict,
};
use crate::quality::SuiteSummary;

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
    /// Folded in the HTML page (`<details>`) and left out of the Markdown: supporting numbers
    /// that the row's own text already states (a criterion's evidence).
    pub fold: bool,
}

impl Cell {
    fn plain(text: impl Into<String>) -> Self {
        Cell {
            text: text.into(),
            class: String::new(),
            code: false,
            fold: false,
        }
    }
    fn code(text: impl Into<String>) -> Self {
        let text = text.into();
        let code = text != MISSING;
        Cell {
            text,
            class: String::new(),
            code,
            fold: false,
        }
    }
    fn class(mut self, class: &str) -> Self {
        self.class = class.to_owned();
        self
    }
}

/// `t` without the columns `drop` names.
fn drop_columns(t: Table, drop: impl Fn(usize) -> bool) -> Table {
    fn keep<T>(v: Vec<T>, drop: &dyn Fn(usize) -> bool) -> Vec<T> {
        v.into_iter()
            .enumerate()
            .filter(|(i, _)| !drop(*i))
            .map(|(_, x)| x)
            .collect()
    }
    Table {
        head: keep(t.head, &drop),
        right: keep(t.right, &drop),
        rows: t.rows.into_iter().map(|r| keep(r, &drop)).collect(),
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

/// Evidence (any JSON) as one readable line: `key: value, ...`, strings unquoted, numbers at
/// four significant digits, `null`s left out, a list of more than four entries as its count
/// (the flipped items are listed in the quality section).
fn fmt_evidence(v: &Value) -> String {
    match v {
        Value::Null => MISSING.to_owned(),
        Value::Object(m) if m.values().all(Value::is_null) => MISSING.to_owned(),
        Value::Object(m) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}: {}", evidence_value(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => evidence_value(other),
    }
}

fn evidence_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => group_thousands(&i.to_string()),
            (None, Some(x)) => sig4(x),
            _ => n.to_string(),
        },
        Value::Array(a) if a.len() > 4 => format!("{} items", a.len()),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(evidence_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(_) => format!("({})", fmt_evidence(v)),
        Value::Bool(b) => b.to_string(),
        Value::Null => MISSING.to_owned(),
    }
}

/// A number at four significant digits, without trailing zeros: 950.6768655 → "950.7",
/// 0.0511703 → "0.05117", 12.0 → "12".
pub fn sig4(x: f64) -> String {
    if !x.is_finite() {
        return MISSING.to_owned();
    }
    if x == 0.0 {
        return "0".to_owned();
    }
    if x.abs() < 1e-3 {
        return format!("{x:.3e}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (3 - magnitude).clamp(0, 12) as usize;
    let s = format!("{x:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    };
    group_thousands(&s)
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
/// Which report a view is built for. The page and the Markdown hold the same facts; the
/// Markdown, read as text, says each one once: where the page repeats a number beside a chart
/// or in a second table, the Markdown points to where it stands (see [`Target::Markdown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The HTML page.
    Page,
    /// The Markdown twin: criteria as sentences, not tables; deltas as changes (the values are
    /// in the latency and throughput tables); accuracy as counts (percentages and intervals
    /// are in the top table); a repeated note written once; the policy on one line.
    Markdown,
}

/// The view of the HTML page (see [`build_for`]).
pub fn build(c: &Comparison) -> Report {
    build_for(c, Target::Page)
}

/// The view of the comparison for `target`.
pub fn build_for(c: &Comparison, target: Target) -> Report {
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

    let ctx = Ctx::new(c, target);
    let mut sections = vec![glance_section(c, &ctx), recommendations_section(c, target)];
    sections.extend(effort_section(c));
    sections.extend(capacity_section(c));
    sections.extend([
        arms_section(&ctx),
        latency_section(&ctx),
        throughput_section(&ctx),
        deltas_section(&ctx),
        quality_section(&ctx),
        warnings_section(&ctx),
        server_section(&ctx),
        policy_section(c, target),
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
    /// The Markdown twin (see [`Target::Markdown`]).
    md: bool,
}

impl<'a> Ctx<'a> {
    fn new(c: &'a Comparison, target: Target) -> Self {
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
            md: target == Target::Markdown,
        }
    }

    fn is_ok(arm: &ArmSummary) -> bool {
        arm.outcome == crate::result::Outcome::Ok && arm.failure.is_none()
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

/// The answer on one screen: a row per arm with what decides (warnings, KV cache, speed,
/// quality, answers), then the forest plot of the deltas against the policy's limits.
fn glance_section(c: &Comparison, ctx: &Ctx) -> Section {
    let cat = c
        .policy
        .as_ref()
        .map(|p| p.warning_category.clone())
        .unwrap_or_else(|| "fp8".into());
    // Catalog categories of the warnings, as the comparison's warning diffs carry them.
    let mut category: std::collections::BTreeMap<&str, &str> = Default::default();
    for cand in &ctx.candidates {
        let w = &cand.warnings;
        for e in w.resolved.iter().chain(&w.persisting).chain(&w.new) {
            if let Some(k) = &e.category {
                category.insert(e.id.as_str(), k.as_str());
            }
        }
    }
    // Answers: against the reference arm when there is one, else against the baseline.
    let mut answers: std::collections::BTreeMap<&str, String> = Default::default();
    let rate = |n: u64, of: u64| {
        if of == 0 {
            MISSING.to_owned()
        } else {
            format!("{:.0} %", 100.0 * n as f64 / of as f64)
        }
    };
    let mut degenerate: std::collections::BTreeMap<&str, String> = Default::default();
    for r in ctx.reference_arms {
        if let Some(a) = &r.agreement {
            answers.insert(r.arm.as_str(), acc_o(a.exact_match_rate));
            degenerate.insert(r.arm.as_str(), rate(a.degenerate_b, a.paired));
            if let Some(name) = &ctx.reference {
                degenerate.insert(name.as_str(), rate(a.degenerate_a, a.paired));
            }
        }
    }
    for cand in &ctx.candidates {
        if let Some(a) = &cand.agreement {
            if ctx.reference.is_none() {
                answers.insert(cand.arm.as_str(), acc_o(a.exact_match_rate));
            }
            degenerate
                .entry(cand.arm.as_str())
                .or_insert_with(|| rate(a.degenerate_b, a.paired));
            if let Some(b) = &ctx.baseline {
                degenerate
                    .entry(b.as_str())
                    .or_insert_with(|| rate(a.degenerate_a, a.paired));
            }
        }
    }
    let answers_head = match &ctx.reference {
        Some(r) => format!("same answer as {r}"),
        None => format!("same answer as {}", ctx.baseline_name()),
    };
    let suites = suites(ctx);
    let mut head: Vec<String> = vec![
        "arm".into(),
        format!("{cat} warnings"),
        "KV cache: dtype, tokens".into(),
        "start-up s".into(),
        "TTFT p50 / p99 ms".into(),
        "ITL p50 ms".into(),
        "output tok/s [95 %]".into(),
    ];
    head.extend(suites.iter().map(|s| format!("{s} [95 %]")));
    let goodput = ctx.arms.iter().any(|a| a.goodput.is_some());
    if goodput {
        head.push("goodput: share, req/s".into());
    }
    head.extend([answers_head, "degenerate answers".into(), "runs".into()]);
    let mut right = vec![false, true, false, true, true, true, true];
    right.extend(suites.iter().map(|_| true));
    if goodput {
        right.push(true);
    }
    right.extend([true, true, true]);
    let mut t = Table::with_head(head, right);
    for (arm, name) in ctx.arms.iter().zip(&ctx.names) {
        let warnings: u64 = arm
            .warnings
            .iter()
            .filter(|w| {
                w.severity == crate::logscan::Severity::Warning
                    && category.get(w.id.as_str()).is_some_and(|k| *k == cat)
            })
            .count() as u64;
        let server = arm.server.as_ref();
        let kv = match server {
            Some(s) => format!(
                "{}, {}",
                text_o(
                    s.kv_cache_dtype_effective
                        .as_deref()
                        .or(s.cache_type_k.as_deref())
                        .or(s.kv_cache_dtype_requested.as_deref())
                ),
                fmt_count(s.kv_cache_tokens.as_ref().unwrap_or(&NULL))
            ),
            None => MISSING.to_owned(),
        };
        let ttft = arm.metrics.get("ttft_ms");
        let quality = suites.iter().map(|suite| {
            let v = suite_of(arm, suite).map(|s| &s.score);
            let mut t = acc_o(v.and_then(|s| s.accuracy));
            if let Some((l, h)) = v.and_then(|s| s.ci_low.zip(s.ci_high)) {
                t += &format!(" [{:.0} … {:.0}]", l * 100.0, h * 100.0);
            }
            Cell::plain(t)
        });
        let ok = Ctx::is_ok(arm);
        let arm_cell = if ok {
            format!("{name} ({})", ctx.role(name))
        } else {
            format!("{name} ({}): {}", ctx.role(name), arm.outcome)
        };
        let mut row = vec![
            Cell::code(arm_cell).class(if ok { "" } else { "flag" }),
            Cell::plain(if arm.warnings.is_empty() && !ok {
                MISSING.to_owned()
            } else {
                fmt_u(warnings)
            }),
            Cell::plain(kv),
            Cell::plain(fmt_o(server.and_then(|s| s.startup_s))),
            Cell::plain(match ttft {
                Some(m) if m.count > 0 => format!("{} / {}", fmt_o(m.p50), fmt_o(m.p99)),
                _ => MISSING.to_owned(),
            }),
            Cell::plain(fmt_o(arm.metrics.get("itl_ms").and_then(|m| m.p50))),
            Cell::plain(fmt_value_ci(&arm.throughput.output_tok_per_s)),
        ];
        row.extend(quality);
        if goodput {
            row.push(Cell::plain(match &arm.goodput {
                Some(g) => format!("{}, {}", acc_o(g.share), fmt_o(g.requests_per_s)),
                None => MISSING.to_owned(),
            }));
        }
        row.extend([
            Cell::plain(
                answers
                    .get(arm.name.as_str())
                    .cloned()
                    .unwrap_or_else(|| MISSING.to_owned()),
            ),
            Cell::plain(
                degenerate
                    .get(arm.name.as_str())
                    .cloned()
                    .unwrap_or_else(|| MISSING.to_owned()),
            ),
            Cell::plain(fmt_u(arm.repeats as u64)),
        ]);
        t.rows.push(row);
    }
    let mut blocks = Vec::new();
    if !t.rows.is_empty() {
        blocks.push(Block::Table(t));
    }
    blocks.extend(forest_block(c, ctx));
    Section {
        id: "glance".into(),
        title: "At a glance".into(),
        blocks,
    }
}

/// "TTFT p50" for `ttft_ms.p50`, "output tok/s" for `output_tok_per_s` (the decision's
/// labels, with throughputs in their units to fit the chart).
fn short_metric(key: &str) -> String {
    match key {
        "output_tok_per_s" => "output tok/s".into(),
        "requests_per_s" => "requests/s".into(),
        "total_tok_per_s" => "total tok/s".into(),
        k => crate::compare::decision::label(k),
    }
}

/// Each candidate's speed changes as a regression (positive = worse) with its interval, against
/// the policy's noise floor and apply / monitor limits.
fn forest_block(c: &Comparison, ctx: &Ctx) -> Option<Block> {
    use crate::compare::Better;
    let policy = c.policy.clone().unwrap_or_default();
    let mut keys: Vec<String> = policy.regression_metrics.clone();
    for k in ["ttft_ms.p99", "itl_ms.p50", "e2e_ms.p50"] {
        if !keys.iter().any(|x| x == k) {
            keys.push(k.into());
        }
    }
    let names: Vec<String> = ctx
        .candidates
        .iter()
        .flat_map(|cand| {
            keys.iter()
                .filter(|k| cand.deltas.contains_key(*k))
                .map(|k| format!("{} · {}", ctx.candidate_name(cand), short_metric(k)))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut items = Vec::new();
    let mut i = 0;
    for (ci, cand) in ctx.candidates.iter().enumerate() {
        for k in &keys {
            let Some(d) = cand.deltas.get(k) else {
                continue;
            };
            let name = &names[i];
            i += 1;
            let Some(ch) = d.change_pct.filter(|x| x.is_finite()) else {
                continue;
            };
            let flip = |x: f64| if d.better == Better::Lower { x } else { -x };
            let (lo, hi) = match (d.ci_low_pct, d.ci_high_pct) {
                (Some(l), Some(h)) => {
                    let (a, b) = (flip(l), flip(h));
                    (Some(a.min(b)), Some(a.max(b)))
                }
                _ => (None, None),
            };
            items.push(Interval {
                name,
                color: ci + 1,
                value: flip(ch),
                low: lo,
                high: hi,
            });
        }
    }
    let marks = vec![
        (0.0, "0".to_owned()),
        (
            policy.noise_floor_pct,
            format!("noise {}", policy.noise_floor_pct),
        ),
        (
            policy.apply_max_regression_pct,
            format!("apply {}", policy.apply_max_regression_pct),
        ),
        (
            policy.monitor_max_regression_pct,
            format!("monitor {}", policy.monitor_max_regression_pct),
        ),
    ];
    let title =
        "Speed against the policy: regression in % (right = worse), 95 % interval".to_owned();
    svg::forest(&title, "regression vs baseline (%)", &items, &marks)
        .map(|svg| Block::Chart { title, svg })
}

fn recommendations_section(c: &Comparison, target: Target) -> Section {
    let md = target == Target::Markdown;
    let mut notes = Vec::new();
    let mut recs = |recs: &[crate::compare::decision::Recommendation], adaptive: bool| {
        if md {
            rec_lines(recs, adaptive, &mut notes)
        } else {
            Block::Table(rec_table(recs, adaptive))
        }
    };
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
    } else if c.candidates.len() > 1 {
        // The best candidate's criteria follow in its own table below. The Markdown states the
        // overall reason under the verdict already.
        let overall: Vec<_> = c
            .recommendations
            .iter()
            .filter(|r| r.criterion == "overall")
            .cloned()
            .collect();
        if !md {
            blocks.push(recs(&overall, adaptive));
        }
    } else {
        blocks.push(recs(&c.recommendations, adaptive));
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
        blocks.push(recs(&cand.recommendations, adaptive));
    }
    Section {
        id: "recommendations".into(),
        title: "Recommendations".into(),
        blocks,
    }
}

/// The Markdown's criteria: one sentence each, `criterion — verdict: reason`. A parenthetical
/// note that ends several reasons (the one-run caveat of each speed criterion) is written in
/// full the first time and by its first clause after that; `seen` holds the notes written.
fn rec_lines(
    recs: &[crate::compare::decision::Recommendation],
    adaptive: bool,
    seen: &mut Vec<String>,
) -> Block {
    let items = recs
        .iter()
        .map(|r| {
            let mut reason = text_o(nonempty(&r.reason));
            // Short notes (a McNemar p and its reading) stay whole.
            let note_at = reason
                .rfind(" (")
                .filter(|&at| reason.ends_with(')') && reason.len() - at >= 60);
            if let Some(at) = note_at {
                let note = reason[at..].to_owned();
                if seen.contains(&note) {
                    if let Some(colon) = note.find(':') {
                        reason = format!("{}{} …)", &reason[..at], &note[..colon]);
                    }
                } else {
                    seen.push(note);
                }
            }
            if let Some(open) = r.open.as_ref().filter(|_| adaptive) {
                reason = format!("{reason} (still open: {open})");
            }
            format!(
                "{} — {}: {reason}",
                text_o(nonempty(&r.criterion)),
                r.verdict.as_str()
            )
        })
        .collect();
    Block::List { items }
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
            Cell {
                fold: true,
                ..Cell::plain(fmt_evidence(&r.evidence))
            },
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
            Cell::plain(arm.outcome.to_string()).class(if ok { "ok" } else { "flag" }),
            Cell::plain(requests),
            Cell::plain(errors),
            Cell::plain(fmt_u(arm.repeats as u64)),
            Cell::plain(if arm.results.is_empty() {
                MISSING.to_owned()
            } else if ctx.md {
                // The file names: the folder is in the comparison JSON.
                arm.results
                    .iter()
                    .map(|p| p.rsplit('/').next().unwrap_or(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                arm.results.join(", ")
            }),
        ]);
    }
    if ctx.md {
        // Role and runs are in the top table.
        t = drop_columns(t, |i| matches!(i, 1 | 5));
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
                f.map_or_else(|| arm.outcome.to_string(), |f| f.kind.to_string()),
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
    // The Markdown keeps the percentiles; mean ± σ, range and count stay on the page.
    let md_drop = |i: usize| ctx.md && matches!(i, 2 | 7 | 8);
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
            // Without reasoning tokens the answer's first token is the first token.
            if *key == "ttft_answer_ms" && arm.metrics.get("ttft_ms") == Some(m) {
                continue;
            }
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
    if ctx.md {
        t = drop_columns(t, md_drop);
        blocks.push(Block::Para {
            text: "Mean ± σ, min … max and sample counts: HTML report and comparison JSON.".into(),
            class: "note".into(),
        });
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
    if ctx.md {
        // Output tok/s with its interval is a column of the top table.
        t = drop_columns(t, |i| i == 1);
        blocks.push(Block::Para {
            text: "Output tok/s with its 95 % interval: top table.".into(),
            class: "note".into(),
        });
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
    let with: Vec<&Candidate> = ctx
        .candidates
        .iter()
        .map(|c| c.as_ref())
        .filter(|c| !c.deltas.is_empty())
        .collect();
    for cand in ctx.candidates.iter().filter(|c| c.deltas.is_empty()) {
        blocks.push(Block::Para {
            text: format!("No deltas for {}.", ctx.candidate_name(cand)),
            class: "note".into(),
        });
    }
    if ctx.candidates.is_empty() {
        blocks.push(Block::Para {
            text: "No candidate was compared with the baseline.".into(),
            class: "note".into(),
        });
    }
    if with.is_empty() {
        return Section {
            id: "deltas".into(),
            title: "Deltas against the baseline".into(),
            blocks,
        };
    }
    let mut keys: std::collections::BTreeMap<String, ()> = Default::default();
    for c in &with {
        keys.extend(c.deltas.keys().map(|k| (k.clone(), ())));
    }
    let mut head = vec!["metric".to_owned(), ctx.baseline_name()];
    head.extend(with.iter().map(|c| ctx.candidate_name(c)));
    let n = head.len();
    let mut t = Table::with_head(head, (0..n).map(|i| i > 0).collect());
    // Without reasoning tokens the answer's first token is the first token (as in the latency
    // table): the Markdown leaves out `ttft_answer_ms` rows then.
    let same_ttft = ctx
        .arms
        .iter()
        .all(|a| a.metrics.get("ttft_answer_ms") == a.metrics.get("ttft_ms"));
    for key in delta_keys(&keys) {
        if ctx.md && same_ttft && key.starts_with("ttft_answer_ms.") {
            continue;
        }
        let base = with
            .iter()
            .find_map(|c| c.deltas.get(&key).and_then(|d| d.baseline));
        let mut row = vec![Cell::code(key.clone()), Cell::plain(fmt_o(base))];
        for c in &with {
            row.push(match c.deltas.get(&key) {
                Some(d) => delta_cell(d, !ctx.md),
                None => Cell::plain(MISSING),
            });
        }
        t.rows.push(row);
    }
    let mut methods: Vec<String> = with
        .iter()
        .flat_map(|c| c.deltas.values().map(|d| method_name(d.method)))
        .collect();
    methods.sort();
    methods.dedup();
    let cell = if ctx.md {
        "each candidate's change against the baseline and its 95 % interval (values: latency \
         and throughput tables)"
    } else {
        "the candidate's value, its change against the baseline and the 95 % interval of the \
         change"
    };
    blocks.push(Block::Para {
        text: format!(
            "Each cell: {cell}; (worse) or (better) when the change is significant (the interval \
             excludes 0 and the change exceeds the noise floor). Intervals: {}.",
            methods.join(", ")
        ),
        class: "note".into(),
    });
    if ctx.md {
        // The baseline's values are in the latency and throughput tables.
        t = drop_columns(t, |i| i == 1);
    }
    blocks.push(Block::Table(t));
    Section {
        id: "deltas".into(),
        title: "Deltas against the baseline".into(),
        blocks,
    }
}

/// "55.0 · +5.6 % [+1.2 … +9.8] (worse)", coloured by significance; without `value`, from
/// "+5.6 %" on.
fn delta_cell(d: &crate::compare::Delta, value: bool) -> Cell {
    let sig = significance(d);
    let mut text = format!(
        "{} [{}]",
        pct_o(d.change_pct),
        pct_ci_o(d.ci_low_pct, d.ci_high_pct).trim_end_matches(" %")
    );
    if value {
        text = format!("{} · {text}", fmt_o(d.candidate));
    }
    if matches!(sig.class.as_str(), "worse" | "better") {
        text += &format!(" ({})", sig.class);
    }
    Cell::plain(text).class(&sig.class)
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
fn suite_of<'a>(arm: &'a ArmSummary, suite: &str) -> Option<&'a SuiteSummary> {
    arm.quality.as_ref().and_then(|q| q.get(suite))
}

/// "95.0 % (38/40) [83.5 … 98.6]"; without `full`, "38/40".
fn accuracy_cell(s: Option<&SuiteSummary>, full: bool) -> Cell {
    let Some(s) = s.map(|s| &s.score) else {
        return Cell::plain(MISSING);
    };
    if !full {
        return Cell::plain(format!("{}/{}", s.correct, s.items));
    }
    let mut t = acc_o(s.accuracy);
    t.push_str(&format!(" ({}/{})", s.correct, s.items));
    if let Some((l, h)) = s.ci_low.zip(s.ci_high) {
        t.push_str(&format!(" [{:.1} … {:.1}]", l * 100.0, h * 100.0));
    }
    Cell::plain(t)
}

/// Flipped items: up to six ids, then how many more (every flip is in the comparison JSON).
fn flips_text(flips: &[crate::quality::agreement::Flip]) -> String {
    if flips.is_empty() {
        return "none".to_owned();
    }
    let shown: Vec<String> = flips
        .iter()
        .take(6)
        .map(|f| format!("{}{}", f.id, if f.lost { "" } else { " (gained)" }))
        .collect();
    let more = flips.len().saturating_sub(shown.len());
    let lost = flips.iter().filter(|f| f.lost).count();
    let mut t = format!(
        "{lost} lost, {} gained: {}",
        flips.len() - lost,
        shown.join(", ")
    );
    if more > 0 {
        t += &format!(" … and {more} more");
    }
    t
}

/// Answer agreement, one row per arm pair.
fn agreement_table(rows: &[(String, &AgreementSummary)]) -> Block {
    let mut t = Table::new(
        &[
            "arm",
            "paired",
            "identical",
            "top-1 agreement",
            "mean KL",
            "max KL",
            "first divergence (token)",
            "degenerate",
            "finish reason shifts",
        ],
        &[false, true, true, true, true, true, false, true, false],
    );
    let kl = |v: Option<f64>| v.map(sig4).unwrap_or_else(|| MISSING.to_owned());
    for (name, a) in rows {
        let div = &a.first_divergence_token;
        let divergence = match (div.count, div.p50) {
            (0, _) | (_, None) => MISSING.to_owned(),
            (n, Some(p)) => format!("median {} over {n} pairs", sig4(p)),
        };
        let shifts = if a.finish_reason_shifts.is_empty() {
            "none".to_owned()
        } else {
            a.finish_reason_shifts
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        t.rows.push(vec![
            Cell::code(name.clone()),
            Cell::plain(fmt_u(a.paired)),
            Cell::plain(acc_o(a.exact_match_rate)),
            Cell::plain(acc_o(a.top1_agreement)),
            Cell::plain(kl(a.mean_kl)),
            Cell::plain(kl(a.max_kl)),
            Cell::plain(divergence),
            Cell::plain(format!("{} → {}", a.degenerate_a, a.degenerate_b)),
            Cell::plain(shifts),
        ]);
    }
    Block::Table(t)
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
                row.push(accuracy_cell(suite_of(arm, suite), !ctx.md));
            }
            t.rows.push(row);
        }
        blocks.push(Block::Para {
            text: if ctx.md {
                "Correct answers per suite and arm (accuracy and 95 % interval: top table)."
            } else {
                "Accuracy per suite and arm: correct/items, [95 % interval in %]."
            }
            .into(),
            class: "note".into(),
        });
        blocks.push(Block::Table(t));
        // Retrieval suites report accuracy per context length.
        for suite in &suites {
            let mut lengths: Vec<String> = Vec::new();
            for arm in ctx.arms {
                if let Some(b) = suite_of(arm, suite).and_then(|s| s.by_length.as_ref()) {
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
                text: if ctx.md {
                    format!("{suite} by context length (tokens): correct/items")
                } else {
                    format!("{suite} by context length (tokens): accuracy (correct/items)")
                },
            });
            let mut head = vec!["context length".to_owned()];
            head.extend(ctx.names.iter().cloned());
            let n = head.len();
            let mut t = Table::with_head(head, (0..n).map(|_| true).collect());
            for len in &lengths {
                let mut row = vec![Cell::plain(len.clone())];
                for arm in ctx.arms {
                    let v = suite_of(arm, suite)
                        .and_then(|s| s.by_length.as_ref())
                        .and_then(|b| b.get(len))
                        .map(|l| &l.score);
                    let text = match (v, ctx.md) {
                        (Some(s), true) => format!("{}/{}", s.correct, s.items),
                        (Some(s), false) => {
                            format!("{} ({}/{})", acc_o(s.accuracy), s.correct, s.items)
                        }
                        (None, _) => acc_o(None),
                    };
                    row.push(Cell::plain(text));
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
            let flips = flips_text(&s.flips);
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
                Cell::plain(flips),
            ]);
        }
        if ctx.md {
            // Accuracies, change and lost / gained are in the quality criteria's reasons.
            t = drop_columns(t, |i| matches!(i, 1..=3 | 5));
        }
        blocks.push(Block::Table(t));
    }
    let with_agreement: Vec<(String, &AgreementSummary)> = ctx
        .candidates
        .iter()
        .filter_map(|c| Some((ctx.candidate_name(c), c.agreement.as_ref()?)))
        .collect();
    if !with_agreement.is_empty() {
        blocks.push(Block::Subheading {
            text: format!("Answers against {}", ctx.baseline_name()),
        });
        blocks.push(agreement_table(&with_agreement));
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
        .map(|p| {
            if p < 0.001 {
                "< 0.001".to_owned()
            } else {
                format!("{p:.3}")
            }
        })
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
        text: if ctx.md {
            "Each arm against the reference on the same items; ratio = arm / reference \
             accuracy (vLLM: calibrate below about 95 %). Agreement: answers token by token \
             (KL over the top-k log-probabilities)."
        } else {
            "Accuracy of each arm against the reference on the same items; ratio = arm / \
             reference (vLLM's advice: calibrate when FP8 falls below about 95 % of the \
             reference). Agreement compares the answers token by token (KL over the returned \
             top-k log-probabilities)."
        }
        .into(),
        class: "note".into(),
    });
    if ctx.md {
        // Both accuracies are columns of the top table.
        t = drop_columns(t, |i| matches!(i, 2 | 3));
    }
    if !t.rows.is_empty() {
        blocks.push(Block::Table(t));
    }
    if !agreement.rows.is_empty() {
        blocks.push(Block::Table(agreement));
    }
}

/// The Markdown's part of a candidate's warning table: the change under test and each
/// warning's note, if any.
fn md_warning_notes(
    ctx: &Ctx,
    name: &str,
    w: &crate::compare::WarningDiff,
    blocks: &mut Vec<Block>,
    meanings: &mut std::collections::BTreeMap<String, String>,
) {
    let mut items = Vec::new();
    if let Some(ch) = &w.change_under_test {
        let mut t = format!("change under test: {ch}");
        if let Some(r) = w.resolvable {
            t += &format!(" (can resolve {r})");
        }
        items.push(t);
    }
    for (status, list) in [
        ("resolved", &w.resolved),
        ("persisting", &w.persisting),
        ("new", &w.new),
    ] {
        for e in list {
            if let Some(m) = &e.meaning {
                meanings.entry(e.id.clone()).or_insert_with(|| m.clone());
            }
            if let Some(n) = e.note.as_deref().and_then(nonempty) {
                items.push(format!("{} ({status}): {n}", text_o(nonempty(&e.id))));
            }
        }
    }
    if !items.is_empty() {
        blocks.push(Block::Subheading {
            text: format!("{name} vs {}", ctx.baseline_name()),
        });
        blocks.push(Block::List { items });
    }
}

fn warnings_section(ctx: &Ctx) -> Section {
    let mut blocks = Vec::new();
    let mut meanings: std::collections::BTreeMap<String, String> = Default::default();
    for cand in &ctx.candidates {
        let w = &cand.warnings;
        let name = ctx.candidate_name(cand);
        if ctx.md {
            // Which warnings are resolved, persist or are new is in the warnings criterion's
            // reason, and the counts in the table per arm below: the Markdown adds the notes.
            md_warning_notes(ctx, &name, w, &mut blocks, &mut meanings);
            continue;
        }
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
            &["status", "warning", "baseline", "candidate", "note"],
            &[false, false, true, true, false],
        );
        for (status, class, list) in [
            ("resolved", "better", &w.resolved),
            ("persisting", "noise", &w.persisting),
            ("new", "worse", &w.new),
        ] {
            for e in list {
                if let Some(m) = &e.meaning {
                    meanings.entry(e.id.clone()).or_insert_with(|| m.clone());
                }
                t.rows.push(vec![
                    Cell::plain(status).class(class),
                    Cell::code(text_o(nonempty(&e.id))),
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
    }
    // What each server printed: one row per warning, a count per arm, what it means; then the
    // first line that matched, as evidence.
    let mut ids: Vec<(String, String)> = Vec::new();
    let mut first: Vec<String> = Vec::new();
    for (arm, name) in ctx.arms.iter().zip(&ctx.names) {
        for w in &arm.warnings {
            let id = w.id.clone();
            if !ids.iter().any(|(i, _)| *i == id) {
                ids.push((id.clone(), w.severity.as_str().to_owned()));
                // The Markdown shows the first line of a warning the catalog does not explain
                // (`other`); a catalogued one has its meaning (every first line is on the
                // page).
                let explained = ctx.md
                    && (w.meaning.is_some()
                        || ctx.candidates.iter().any(|c| {
                            let d = &c.warnings;
                            d.resolved
                                .iter()
                                .chain(&d.persisting)
                                .chain(&d.new)
                                .any(|e| e.id == id && e.meaning.is_some())
                        }));
                let line = nonempty(&w.first_line)
                    .filter(|_| !explained)
                    .map(str::to_owned);
                if let Some(line) = line {
                    // The whole line is in the arm's log and result file.
                    let line: String = if line.chars().count() > 200 {
                        line.chars().take(199).chain(['…']).collect()
                    } else {
                        line
                    };
                    first.push(format!("{id} ({name}): {line}"));
                }
            }
        }
    }
    if !ids.is_empty() {
        let mut head = vec!["warning".to_owned(), "severity".to_owned()];
        head.extend(ctx.names.iter().cloned());
        head.push("meaning".to_owned());
        let n = ctx.names.len();
        let mut right = vec![false, false];
        right.extend((0..n).map(|_| true));
        right.push(false);
        let mut t = Table::with_head(head, right);
        for (id, sev) in &ids {
            let class = match sev.as_str() {
                "error" => "worse",
                "warning" => "warn",
                _ => "",
            };
            let mut row = vec![
                Cell::code(id.clone()),
                Cell::plain(sev.clone()).class(class),
            ];
            for arm in ctx.arms {
                let w = arm.warnings.iter().find(|w| w.id == *id);
                row.push(Cell::plain(fmt_u(w.map_or(0, |w| w.count))));
            }
            row.push(Cell::plain(meanings.get(id).cloned().unwrap_or_default()));
            t.rows.push(row);
        }
        blocks.push(Block::Subheading {
            text: "Server log warnings per arm".into(),
        });
        blocks.push(Block::Table(t));
        let label = if ctx.md {
            "The first line of each warning the catalog does not explain (all first lines: \
             HTML report)"
        } else {
            "The first line of each warning, from the first arm that printed it"
        };
        if !ctx.md || !first.is_empty() {
            blocks.push(Block::Pre {
                label: label.into(),
                text: first.join("\n"),
            });
        }
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
    // Capacity and start-up are columns of the top table, which the Markdown does not repeat.
    if !ctx.md {
        t.rows.push(row("KV-cache capacity (tokens)", &|s| {
            Cell::plain(fmt_count(
                s.and_then(|s| s.kv_cache_tokens.as_ref()).unwrap_or(&NULL),
            ))
        }));
        t.rows.push(row("start-up (s)", &|s| {
            Cell::plain(fmt_o(s.and_then(|s| s.startup_s)))
        }));
    }
    t.rows.push(row("config mismatches", &|s| match s {
        None => Cell::plain(MISSING),
        Some(s) if s.mismatches.is_empty() => Cell::plain("none"),
        Some(s) => Cell::plain(s.mismatches.join("; ")).class("flag"),
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

fn policy_section(c: &Comparison, target: Target) -> Section {
    let mut blocks = Vec::new();
    match c.policy.as_ref().map(serde_json::to_value) {
        // Markdown: one line, `key value · key value` (a table of fourteen short rows reads
        // worse as text).
        Some(Ok(Value::Object(p))) if !p.is_empty() && target == Target::Markdown => {
            let pairs: Vec<String> = p
                .iter()
                .map(|(k, v)| match v {
                    Value::Array(a) => {
                        let items: Vec<String> = a.iter().map(text).collect();
                        format!("{k} {}", items.join(", "))
                    }
                    other => format!("{k} {}", text(other)),
                })
                .collect();
            blocks.push(Block::Para {
                text: pairs.join(" · "),
                class: String::new(),
            });
        }
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

/// Capacity: per arm its knee, the latency–load curve against the TTFT target, and its sweep's
/// levels (docs/metrics.md#capacity). `None` without a sweep.
fn capacity_section(c: &Comparison) -> Option<Section> {
    if c.capacity.is_empty() {
        return None;
    }
    let order: Vec<&str> = c.arms.iter().map(|a| a.name.as_str()).collect();
    let mut arms: Vec<(&String, &crate::compare::ArmCapacity)> = c.capacity.iter().collect();
    arms.sort_by_key(|(n, _)| order.iter().position(|o| o == n).unwrap_or(usize::MAX));
    let base = c.capacity.get(&c.baseline).and_then(|a| a.knee.as_ref());
    let kv = |arm: &str| {
        c.arms
            .iter()
            .find(|a| a.name == arm)
            .and_then(|a| a.server.as_ref()?.kv_cache_tokens.as_ref())
            .and_then(Value::as_f64)
    };
    let mut items = Vec::new();
    for (name, a) in &arms {
        let knee = match &a.knee {
            Some(k) => format!(
                "{} {}",
                k.by.as_str().replace('_', " "),
                whole_o(Some(k.value))
            ),
            None => "none (even the lowest level missed the targets)".to_owned(),
        };
        let mut line = format!("{name}: knee at {knee}");
        if let (Some(b), Some(k), false) = (base, &a.knee, **name == c.baseline) {
            line.push_str(&format!(", {} × the baseline's", sig4(k.value / b.value)));
            if let (Some(kb), Some(kc)) = (kv(&c.baseline), kv(name)) {
                line.push_str(&format!(
                    "; KV-cache tokens {} × the baseline's",
                    sig4(kc / kb)
                ));
            }
        }
        items.push(line);
    }
    let mut blocks = vec![
        Block::Para {
            text: format!(
                "The knee is the highest load whose goodput share stays at or above {} (the share of requests that met every latency target), counting up; the sweep stops past it.",
                share_o(arms.first().map(|(_, a)| a.share_target))
            ),
            class: "note".into(),
        },
        Block::List { items },
    ];
    let target = c
        .arms
        .iter()
        .find_map(|a| a.goodput.as_ref().and_then(|g| g.targets.ttft_ms))
        .map(|t| (t, format!("TTFT target {} ms", whole_o(Some(t)))));
    let curves: Vec<svg::Curve> = arms
        .iter()
        .map(|(name, a)| svg::Curve {
            name,
            color: order.iter().position(|o| o == name).unwrap_or(0),
            points: a
                .levels
                .iter()
                .filter_map(|l| Some((l.load, l.ttft_ms_p99?)))
                .collect(),
            knee: a.knee.as_ref().map(|k| k.value),
        })
        .collect();
    let by = arms
        .iter()
        .find_map(|(_, a)| a.knee.as_ref().map(|k| k.by))
        .unwrap_or(crate::capacity::LoadBy::Concurrency);
    if let Some(svg) = svg::load_curves(
        "TTFT p99 against load",
        by.as_str(),
        "TTFT p99, ms",
        &curves,
        target,
    ) {
        blocks.push(Block::Chart {
            title: "TTFT p99 against load, the knee ringed".into(),
            svg,
        });
    }
    let mut t = Table::new(
        &[
            "arm",
            "load",
            "goodput share",
            "goodput req/s",
            "TTFT p99 ms",
            "TPOT p99 ms",
            "output tok/s",
            "preemptions",
            "KV cache peak",
            "waiting peak",
        ],
        &[false, true, true, true, true, true, true, true, true, true],
    );
    for (name, a) in &arms {
        for l in &a.levels {
            let at_knee = a.knee.as_ref().is_some_and(|k| k.value == l.load);
            let mut load = whole_o(Some(l.load));
            if at_knee {
                load.push_str(" (knee)");
            }
            if l.oversaturated {
                load.push_str(" (oversaturated)");
            }
            t.rows.push(vec![
                Cell::code((*name).clone()),
                Cell::plain(load),
                Cell::plain(share_o(l.goodput_share)),
                Cell::plain(fmt_o(l.goodput_rps)),
                Cell::plain(fmt_o(l.ttft_ms_p99)),
                Cell::plain(fmt_o(l.tpot_ms_p99)),
                Cell::plain(fmt_o(l.output_tok_per_s)),
                Cell::plain(whole_o(l.preemptions)),
                Cell::plain(share_o(l.kv_cache_usage_peak)),
                Cell::plain(whole_o(l.waiting_peak)),
            ]);
        }
    }
    blocks.push(Block::Table(t));
    Some(Section {
        id: "capacity".into(),
        title: "Capacity: load sweep and knee".into(),
        blocks,
    })
}

/// A share (0..1) as a percentage, "96.1 %".
fn share_o(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map(|x| format!("{:.1} %", 100.0 * x))
        .unwrap_or_else(|| MISSING.to_owned())
}

/// A count or a load: whole numbers without decimals ("32"), others to 4 significant digits.
fn whole_o(v: Option<f64>) -> String {
    match v.filter(|x| x.is_finite()) {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => group_thousands(&format!("{x:.0}")),
        Some(x) => sig4(x),
        None => MISSING.to_owned(),
    }
}
