//! The Markdown report: the same view as the HTML page, as headings and tables (no charts),
//! readable in a terminal (columns padded to equal width) and on GitHub.
//!
//! Text from the comparison is escaped so it stays text: `|` cannot break a table, and `<`,
//! `` ` ``, `*`, `](` cannot become HTML, code, emphasis or links. Log excerpts go into fenced blocks.

use std::fmt::Write;

use super::view::{Block, Cell, Report, Table};

/// Renders the view as Markdown.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# {}\n", esc(&r.title));
    let _ = writeln!(o, "## Verdict: **{}**\n", esc(&r.decision_label));
    if !r.headline.is_empty() {
        let _ = writeln!(o, "{}\n", esc(&r.headline));
    }
    let _ = writeln!(o, "> {}\n", esc(&r.overall_reason));
    if !r.meta.is_empty() {
        let meta: Vec<String> = r
            .meta
            .iter()
            .map(|m| format!("{}: {}", esc(&m.key), esc(&m.value)))
            .collect();
        let _ = writeln!(o, "{}\n", meta.join(" · "));
    }
    for s in &r.sections {
        let _ = writeln!(o, "## {}\n", esc(&s.title));
        for b in &s.blocks {
            match b {
                Block::Subheading { text } => {
                    let _ = writeln!(o, "### {}\n", esc(text));
                }
                Block::Para { text, class } => {
                    if class == "flag" {
                        let _ = writeln!(o, "**{}**\n", esc(text));
                    } else {
                        let _ = writeln!(o, "{}\n", esc(text));
                    }
                }
                Block::List { items } => {
                    for i in items {
                        let _ = writeln!(o, "- {}", esc(i));
                    }
                    o.push('\n');
                }
                // Charts are HTML-only; the tables beside them carry the same numbers.
                Block::Chart { .. } => {}
                Block::Pre { label, text } => {
                    let fence = fence_for(text);
                    let _ = writeln!(
                        o,
                        "{}:\n\n{fence}\n{}\n{fence}\n",
                        esc(label),
                        text.trim_end()
                    );
                }
                Block::Table(t) => table(&mut o, t),
            }
        }
    }
    o
}

fn cell_text(c: &Cell) -> String {
    if c.code {
        code_span(&c.text)
    } else {
        esc(&c.text)
    }
}

fn table(o: &mut String, t: &Table) {
    let head: Vec<String> = t.head.iter().map(|h| esc(h)).collect();
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| r.iter().map(cell_text).collect())
        .collect();
    let n = head.len().max(rows.iter().map(Vec::len).max().unwrap_or(0));
    let width = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .chain(head.get(i))
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
            .max(3)
    };
    let widths: Vec<usize> = (0..n).map(width).collect();
    let right = |i: usize| t.right.get(i).copied().unwrap_or(false);
    let line = |o: &mut String, cells: &[String]| {
        o.push('|');
        for (i, w) in widths.iter().enumerate() {
            let c = cells.get(i).map(String::as_str).unwrap_or("");
            let pad = w.saturating_sub(c.chars().count());
            if right(i) {
                let _ = write!(o, " {}{c} |", " ".repeat(pad));
            } else {
                let _ = write!(o, " {c}{} |", " ".repeat(pad));
            }
        }
        o.push('\n');
    };
    line(o, &head);
    o.push('|');
    for (i, w) in widths.iter().enumerate() {
        if right(i) {
            let _ = write!(o, " {}: |", "-".repeat(w - 1));
        } else {
            let _ = write!(o, " {} |", "-".repeat(*w));
        }
    }
    o.push('\n');
    for r in &rows {
        line(o, r);
    }
    o.push('\n');
}

/// Escapes text for Markdown (tables included): one line, no markup.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev = ' ';
    for ch in s.chars() {
        match ch {
            '\\' | '|' | '<' | '>' | '`' | '*' => {
                out.push('\\');
                out.push(ch);
            }
            // `[text](url)` is a link; a bracket alone is text (and reads better unescaped).
            '(' if prev == ']' => out.push_str("\\("),
            '\r' | '\n' | '\t' => out.push(' '),
            c => out.push(c),
        }
        prev = ch;
    }
    out
}

/// A code span that holds any text: a fence longer than any backtick run inside, and `|`
/// escaped (GitHub splits table cells on `|` even inside code spans).
fn code_span(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| {
            if matches!(c, '\r' | '\n' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect();
    let longest = longest_run(&flat, '`');
    let fence = "`".repeat(longest + 1);
    let pad = if flat.starts_with('`') || flat.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{}{pad}{fence}", flat.replace('|', "\\|"))
}

fn longest_run(s: &str, c: char) -> usize {
    let (mut best, mut cur) = (0, 0);
    for ch in s.chars() {
        cur = if ch == c { cur + 1 } else { 0 };
        best = best.max(cur);
    }
    best
}

fn fence_for(s: &str) -> String {
    "`".repeat(longest_run(s, '`').max(2) + 1)
}
