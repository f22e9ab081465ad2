//! What a server says about itself in its log: catalogued warnings (de-duplicated across
//! tensor-parallel ranks), other WARNING/ERROR lines, facts (KV-cache capacity, version,
//! backend), and the classification of a server that died before it was healthy.
//!
//! The catalog is data (`catalog.toml`, embedded; `--catalog FILE` replaces it), so a new
//! warning text needs no code change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use regex::Regex;
use serde::{Deserialize, Serialize};

/// The embedded default catalog.
pub const DEFAULT_CATALOG: &str = include_str!("catalog.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    warning: Vec<RawWarning>,
    #[serde(default)]
    failure: Vec<RawFailure>,
    #[serde(default)]
    fact: Vec<RawFact>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarning {
    id: String,
    severity: Severity,
    #[serde(default)]
    category: Option<String>,
    patterns: Vec<String>,
    /// Lines that continue a message of this warning printed over several lines: not counted,
    /// and not reported as `other`.
    #[serde(default)]
    continuation: Vec<String>,
    meaning: String,
    #[serde(default)]
    resolved_by: Vec<String>,
    #[serde(default)]
    silenced_by: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailure {
    kind: String,
    patterns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFact {
    name: String,
    pattern: String,
}

/// Severity of a catalogued line.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Informational (e.g. proof that the FP8 KV cache is in use).
    Info,
    /// A warning.
    Warning,
    /// An error.
    Error,
}

impl Severity {
    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// A catalogued warning.
#[derive(Debug, Clone)]
pub struct WarningDef {
    /// Stable id.
    pub id: String,
    /// Severity.
    pub severity: Severity,
    /// Category (`fp8`, `platform`, `startup`).
    pub category: Option<String>,
    patterns: Vec<Regex>,
    continuation: Vec<Regex>,
    /// What it means, in words.
    pub meaning: String,
    /// Settings expected to resolve it.
    pub resolved_by: Vec<String>,
    /// Settings that hide it without changing behaviour.
    pub silenced_by: Vec<String>,
}

/// A compiled catalog.
#[derive(Debug)]
pub struct Catalog {
    /// Warnings, in catalog order.
    pub warnings: Vec<WarningDef>,
    failures: Vec<(String, Vec<Regex>)>,
    facts: Vec<(String, Regex)>,
}

fn compile(p: &str, what: &str) -> anyhow::Result<Regex> {
    Regex::new(p).with_context(|| format!("{what}: invalid pattern {p:?}"))
}

impl Catalog {
    /// Parses and compiles a catalog; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let raw: RawCatalog = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin}: {}", one_line(&e.to_string())))?;
        let mut warnings = Vec::new();
        let mut seen = BTreeSet::new();
        for w in raw.warning {
            if !seen.insert(w.id.clone()) {
                anyhow::bail!("{origin}: warning id {:?} appears twice", w.id);
            }
            if w.patterns.is_empty() {
                anyhow::bail!("{origin}: warning {:?} has no patterns", w.id);
            }
            let patterns = w
                .patterns
                .iter()
                .map(|p| compile(p, &format!("{origin}: warning {}", w.id)))
                .collect::<anyhow::Result<_>>()?;
            let continuation = w
                .continuation
                .iter()
                .map(|p| compile(p, &format!("{origin}: warning {} continuation", w.id)))
                .collect::<anyhow::Result<_>>()?;
            warnings.push(WarningDef {
                id: w.id,
                severity: w.severity,
                category: w.category,
                patterns,
                continuation,
                meaning: w.meaning,
                resolved_by: w.resolved_by,
                silenced_by: w.silenced_by,
            });
        }
        let failures = raw
            .failure
            .into_iter()
            .map(|f| {
                let ps = f
                    .patterns
                    .iter()
                    .map(|p| compile(p, &format!("{origin}: failure {}", f.kind)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok((f.kind, ps))
            })
            .collect::<anyhow::Result<_>>()?;
        let facts = raw
            .fact
            .into_iter()
            .map(|f| {
                Ok((
                    f.name.clone(),
                    compile(&f.pattern, &format!("{origin}: fact {}", f.name))?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            warnings,
            failures,
            facts,
        })
    }

    /// The embedded catalog.
    pub fn default_catalog() -> &'static Catalog {
        static C: OnceLock<Catalog> = OnceLock::new();
        C.get_or_init(|| {
            Catalog::parse(DEFAULT_CATALOG, "embedded catalog")
                .expect("the embedded catalog is valid")
        })
    }

    /// Loads `--catalog FILE`.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read catalog {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The definition of a warning id.
    pub fn get(&self, id: &str) -> Option<&WarningDef> {
        self.warnings.iter().find(|w| w.id == id)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One warning found in a log, de-duplicated across ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WarningHit {
    /// Catalog id, or `other` for an uncatalogued WARNING/ERROR line.
    pub id: String,
    /// `info`, `warning` or `error`.
    pub severity: Severity,
    /// How many times it was printed (all ranks together).
    pub count: u64,
    /// How many distinct processes (tensor-parallel ranks, workers) printed it.
    pub ranks: u64,
    /// The first line that matched, as printed (ANSI codes removed).
    pub first_line: String,
    /// For `other`: the normalised text used to de-duplicate. For catalogued ids: `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// What it means (catalogued ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meaning: Option<String>,
}

/// Everything read from one log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogReport {
    /// Warnings in order of first appearance.
    pub warnings: Vec<WarningHit>,
    /// Facts (first match of each).
    pub facts: BTreeMap<String, serde_json::Value>,
}

struct Patterns {
    ansi: Regex,
    proc_prefix: Regex,
    compose_prefix: Regex,
    level: Regex,
    header: Regex,
    numbers: Regex,
    llama: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| Patterns {
        ansi: Regex::new(r"\x1b\[[0-9;?]*[A-Za-z]").expect("valid"),
        proc_prefix: Regex::new(r"^\s*\(([^()]*?)\s+pid=(\d+)\)\s*").expect("valid"),
        compose_prefix: Regex::new(r"^[\w.-]+(?:-\d+)?\s+\|\s?").expect("valid"),
        level: Regex::new(r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\b").expect("valid"),
        header: Regex::new(
            r"^(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s+(?:\d\d-\d\d\s+)?(?:\d\d:\d\d:\d\d(?:\.\d+)?\s+)?(?:\[[^\]]*\]\s+)?",
        )
        .expect("valid"),
        numbers: Regex::new(r"0x[0-9a-fA-F]+|\d+(?:\.\d+)?").expect("valid"),
        llama: Regex::new(r"^\d+\.\d+\.\d+\.\d+ ([IWED]) ").expect("valid"),
    })
}

/// A log line taken apart: which process printed it, and its message.
struct Line<'a> {
    raw: &'a str,
    rank: String,
    level: Option<&'static str>,
    message: String,
}

fn split_line(raw: &str) -> Line<'_> {
    let p = patterns();
    let clean = p.ansi.replace_all(raw, "");
    let mut rest: &str = &clean;
    if let Some(m) = p.compose_prefix.find(rest) {
        if m.start() == 0 && !rest.starts_with('(') {
            rest = &rest[m.end()..];
        }
    }
    let mut rank = "main".to_owned();
    if let Some(c) = p.proc_prefix.captures(rest) {
        rank = format!("{} pid={}", &c[1], &c[2]);
        rest = &rest[c.get(0).map_or(0, |m| m.end())..];
    }
    // The level is the first level word near the start of the message (vLLM: `WARNING 11-27 ...`).
    let level = p
        .level
        .find(rest)
        .filter(|m| m.start() < 40)
        .map(|m| match m.as_str() {
            "DEBUG" => "DEBUG",
            "INFO" => "INFO",
            "WARNING" | "WARN" => "WARNING",
            "ERROR" => "ERROR",
            _ => "CRITICAL",
        });
    // llama.cpp: `0.00.008.702 W srv  llama_server: ...` (I, W, E).
    if let Some(c) = p.llama.captures(rest) {
        let level = match &c[1] {
            "W" => Some("WARNING"),
            "E" => Some("ERROR"),
            _ => Some("INFO"),
        };
        let message = rest[c.get(0).map_or(0, |m| m.end())..].trim().to_owned();
        return Line {
            raw,
            rank,
            level,
            message,
        };
    }
    let message = p.header.replace(rest, "").trim().to_owned();
    Line {
        raw,
        rank,
        level,
        message,
    }
}

#[derive(Default)]
struct Acc {
    count: u64,
    ranks: BTreeSet<String>,
    first_line: String,
    order: usize,
}

/// Longest part of a line that is scanned: the rest of a longer line (a binary blob, a
/// progress bar without line ends) is skipped, never held.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Longest `first_line` and `text` kept for a warning.
pub const MAX_KEPT_CHARS: usize = 2000;
/// Distinct uncatalogued (`other`) lines kept one by one; further distinct lines are counted
/// together in one last `other` entry whose `text` is [`MORE_OTHERS`].
pub const MAX_OTHERS: usize = 1000;
/// The `text` of the entry that counts the distinct `other` lines beyond [`MAX_OTHERS`].
pub const MORE_OTHERS: &str = "(more distinct lines than kvbench keeps one by one)";
/// Distinct processes remembered per warning (its `ranks` stops growing there).
const MAX_RANKS: usize = 4096;

/// Applies a catalog to a log one line at a time, holding only what it reports: a log of any
/// length (or a stream that never ends) scans in bounded memory.
pub struct Scanner<'c> {
    catalog: &'c Catalog,
    hits: BTreeMap<(String, String), Acc>,
    facts: BTreeMap<String, serde_json::Value>,
    order: usize,
    others: usize,
}

impl<'c> Scanner<'c> {
    /// A scanner with nothing read yet.
    pub fn new(catalog: &'c Catalog) -> Self {
        Self {
            catalog,
            hits: BTreeMap::new(),
            facts: BTreeMap::new(),
            order: 0,
            others: 0,
        }
    }

    /// Reads one line (without its line end).
    pub fn line(&mut self, raw: &str) {
        let p = patterns();
        if raw.trim().is_empty() {
            return;
        }
        let raw = cut(raw, MAX_LINE_BYTES);
        let line = split_line(raw);
        let clean = p.ansi.replace_all(line.raw, "").trim().to_owned();
        for (name, re) in &self.catalog.facts {
            if self.facts.contains_key(name) {
                continue;
            }
            if let Some(c) = re.captures(&line.message).or_else(|| re.captures(&clean)) {
                if let Some(v) = c.get(1) {
                    self.facts.insert(name.clone(), fact_value(v.as_str()));
                }
            }
        }
        let def = self
            .catalog
            .warnings
            .iter()
            .find(|w| w.patterns.iter().any(|r| r.is_match(&clean)));
        if def.is_none()
            && self
                .catalog
                .warnings
                .iter()
                .any(|w| w.continuation.iter().any(|r| r.is_match(&clean)))
        {
            return;
        }
        let mut key = match (def, line.level) {
            (Some(d), _) => (d.id.clone(), String::new()),
            (None, Some("WARNING" | "ERROR" | "CRITICAL")) => {
                let norm = p.numbers.replace_all(&line.message, "N");
                ("other".to_owned(), keep(&norm))
            }
            _ => return,
        };
        if key.0 == "other" && !self.hits.contains_key(&key) {
            if self.others >= MAX_OTHERS {
                key.1 = MORE_OTHERS.to_owned();
            } else {
                self.others += 1;
            }
        }
        let order = &mut self.order;
        let acc = self.hits.entry(key).or_insert_with(|| {
            *order += 1;
            Acc {
                first_line: keep(&clean),
                order: *order,
                ..Acc::default()
            }
        });
        acc.count += 1;
        if acc.ranks.len() < MAX_RANKS {
            acc.ranks.insert(line.rank);
        }
    }

    /// Reads a whole log from `reader`, line by line, whatever its bytes (invalid UTF-8
    /// becomes U+FFFD); about [`MAX_LINE_BYTES`] of any line are held, the rest skipped.
    pub fn read(&mut self, mut reader: impl std::io::BufRead) -> std::io::Result<()> {
        let mut line: Vec<u8> = Vec::new();
        let mut cut_short = false;
        loop {
            let buf = match reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                break;
            }
            let (piece, ends, used) = match memchr::memchr(b'\n', buf) {
                Some(i) => (&buf[..i], true, i + 1),
                None => (buf, false, buf.len()),
            };
            if !cut_short {
                // A few bytes more than are scanned: a character cut at the limit is decoded
                // whole, and then cut as `scan` cuts it, so both read the same line.
                let room = (MAX_LINE_BYTES + 4).saturating_sub(line.len());
                line.extend_from_slice(&piece[..piece.len().min(room)]);
                cut_short = piece.len() > room;
            }
            reader.consume(used);
            if ends {
                self.line_bytes(&line);
                line.clear();
                cut_short = false;
            }
        }
        if !line.is_empty() {
            self.line_bytes(&line);
        }
        Ok(())
    }

    fn line_bytes(&mut self, bytes: &[u8]) {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        self.line(&String::from_utf8_lossy(bytes));
    }

    /// The report: warnings in order of first appearance, facts.
    pub fn finish(self) -> LogReport {
        let catalog = self.catalog;
        let mut list: Vec<((String, String), Acc)> = self.hits.into_iter().collect();
        list.sort_by_key(|(_, a)| a.order);
        let warnings = list
            .into_iter()
            .map(|((id, norm), acc)| {
                let def = catalog.get(&id);
                let severity = match def {
                    Some(d) => d.severity,
                    None if acc.first_line.contains("ERROR")
                        || acc.first_line.contains("CRITICAL") =>
                    {
                        Severity::Error
                    }
                    None => Severity::Warning,
                };
                WarningHit {
                    severity,
                    count: acc.count,
                    ranks: acc.ranks.len() as u64,
                    first_line: acc.first_line,
                    text: (id == "other").then_some(norm),
                    meaning: def.map(|d| d.meaning.clone()),
                    id,
                }
            })
            .collect();
        LogReport {
            warnings,
            facts: self.facts,
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` as kept in a report: at most [`MAX_KEPT_CHARS`] characters.
fn keep(s: &str) -> String {
    match s.char_indices().nth(MAX_KEPT_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Applies `catalog` to a whole log text.
pub fn scan(catalog: &Catalog, text: &str) -> LogReport {
    let mut scanner = Scanner::new(catalog);
    for raw in text.lines() {
        scanner.line(raw);
    }
    scanner.finish()
}

fn fact_value(s: &str) -> serde_json::Value {
    let plain = s.replace(',', "");
    if let Ok(n) = plain.parse::<u64>() {
        return n.into();
    }
    if let Ok(x) = plain.parse::<f64>() {
        if let Some(n) = serde_json::Number::from_f64(x) {
            return n.into();
        }
    }
    s.into()
}

/// Classifies a server that exited before it was healthy: the first failure kind whose pattern
/// matches a line, with that line; `None` when nothing matches (the caller says `crashed`).
pub fn classify_failure(catalog: &Catalog, log: &str) -> Option<(String, String)> {
    let ansi = &patterns().ansi;
    let lines: Vec<String> = log
        .lines()
        .map(|l| ansi.replace_all(l, "").into_owned())
        .collect();
    // Kinds in catalog order, and within a kind the most specific pattern (listed first) wins,
    // so the reported line is the one that says why (e.g. "requires x86 with AVX-512" rather
    // than a bare `raise NotImplementedError` line of the traceback).
    for (kind, pats) in &catalog.failures {
        for p in pats {
            if let Some(line) = lines.iter().find(|l| p.is_match(l)) {
                return Some((kind.clone(), line.trim().to_owned()));
            }
        }
    }
    None
}

/// Reads a server log whatever its bytes: invalid UTF-8 (a progress bar, a crash dump, a binary
/// blob) becomes U+FFFD and every other line is kept, so one stray byte cannot hide the
/// warnings. An `Err` means the file could not be read at all; callers must say so rather than
/// treat the log as empty (an empty log would read as "every warning is gone").
pub fn read_log(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// The last `n` lines of a log, ANSI codes removed.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let ansi = &patterns().ansi;
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| ansi.replace_all(l, "").into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests;
