//! The Markdown report: the view built for it ([`super::view::Target::Markdown`]: the page's
//! facts, each stated once), as headings and tables (no charts), readable as text and on
//! GitHub. Cells are not padded (a padded column is as wide as its longest cell, which made
//! whole tables unreadable). A table whose only long column (over [`MAX_CELL`] characters) is
//! the last is written without it, that column following as notes under the rows' first
//! cells; any other table with a long cell is written as a list, one item per row, so no line
//! runs on for hundreds of characters inside a table.
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

/// Longest cell of a table written as a table; longer cells turn the table into a list.
pub const MAX_CELL: usize = 120;

fn table(o: &mut String, t: &Table) {
    // Folded columns (supporting numbers) stay in the HTML page and the JSON.
    let keep: Vec<bool> = (0..t.head.len())
        .map(|i| t.rows.is_empty() || !t.rows.iter().all(|r| r.get(i).is_some_and(|c| c.fold)))
        .collect();
    let kept = |i: &usize| keep.get(*i).copied().unwrap_or(true);
    let head: Vec<String> = t
        .head
        .iter()
        .enumerate()
        .filter(|(i, _)| kept(i))
        .map(|(_, h)| esc(h))
        .collect();
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .filter(|(i, _)| kept(i))
                .map(|(_, c)| cell_text(c))
                .collect()
        })
        .collect();
    let right_of: Vec<bool> = (0..t.head.len())
        .filter(|i| kept(i))
        .map(|i| t.right.get(i).copied().unwrap_or(false))
        .collect();
    let long = |i: usize| {
        rows.iter()
            .any(|r| r.get(i).is_some_and(|c| c.chars().count() > MAX_CELL))
    };
    let long_cols: Vec<usize> = (0..head.len()).filter(|&i| long(i)).collect();
    match long_cols.as_slice() {
        [] => {}
        // Only the last column is long (a meaning, a list of items): the table without it,
        // then that column as notes under the rows' first cells.
        [last] if *last + 1 == head.len() && *last >= 2 => {
            let short: Vec<Vec<String>> = rows.iter().map(|r| r[..*last].to_vec()).collect();
            grid(o, &head[..*last], &right_of[..*last], &short);
            let _ = writeln!(o, "{} per {}:\n", head[*last], head[0]);
            for r in &rows {
                if let (Some(first), Some(note)) = (r.first(), r.get(*last)) {
                    if !note.is_empty() && note != super::view::MISSING {
                        let _ = writeln!(o, "- {first}: {note}");
                    }
                }
            }
            o.push('\n');
            return;
        }
        _ => return list(o, &head, &rows),
    }
    grid(o, &head, &right_of, &rows);
}

/// A table of short cells, unpadded.
fn grid(o: &mut String, head: &[String], right_of: &[bool], rows: &[Vec<String>]) {
    let n = head.len().max(rows.iter().map(Vec::len).max().unwrap_or(0));
    let right = |i: usize| right_of.get(i).copied().unwrap_or(false);
    let line = |o: &mut String, cells: &[String]| {
        o.push('|');
        for i in 0..n {
            let c = cells.get(i).map(String::as_str).unwrap_or("");
            let _ = write!(o, " {c} |");
        }
        o.push('\n');
    };
    line(o, head);
    o.push('|');
    for i in 0..n {
        o.push_str(if right(i) { " ---: |" } else { " --- |" });
    }
    o.push('\n');
    for r in rows {
        line(o, r);
    }
    o.push('\n');
}

/// A table as a list: the first cell leads each item, the others follow as `head: value`
/// (empty and missing values left out).
fn list(o: &mut String, head: &[String], rows: &[Vec<String>]) {
    for r in rows {
        let mut item = format!("- **{}**", r.first().map(String::as_str).unwrap_or(""));
        for (h, c) in head.iter().zip(r).skip(1) {
            if c.is_empty() || c == super::view::MISSING {
                continue;
            }
            let _ = write!(item, "; {h}: {c}");
        }
        o.push_str(&item);
        o.push('\n');
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
