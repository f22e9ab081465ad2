//! Reports: a comparison JSON (`kvbench compare`'s output) rendered for people, as Markdown
//! and as one self-contained HTML page with the verdict on top.
//!
//! The reports render the typed [`Comparison`]. `kvbench report C.json` renders any comparison
//! file of this schema version or older: a field an older file lacks takes its default, and a
//! missing value shows as "—". A file whose fields have the wrong type is refused with the
//! field's path.
//!
//! - [`view`] turns the comparison into one view (verdict, then sections of tables and charts);
//! - [`html`] renders it with `minijinja` (escaping by default), [`markdown`] by hand;
//! - [`svg`] draws the charts (hand-written SVG; its module doc says why not `plotters`).

pub mod html;
pub mod markdown;
pub mod svg;
pub mod view;

pub use view::effort_line;

#[cfg(test)]
mod tests;

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::compare::Comparison;

/// The comparison as Markdown: the same content as the HTML report, as tables.
pub fn markdown(c: &Comparison) -> String {
    markdown::render(&view::build_for(c, view::Target::Markdown))
}

/// The comparison as one self-contained HTML page.
pub fn html(c: &Comparison) -> String {
    html::render(&view::build(c))
}

/// Reads a comparison JSON file.
pub fn read_comparison(path: &Path) -> anyhow::Result<Comparison> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the comparison {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if !v.is_object() {
        anyhow::bail!(
            "{} is not a comparison: expected a JSON object",
            path.display()
        );
    }
    let known = crate::compare::COMPARISON_SCHEMA_VERSION as u64;
    match v.get("schema_version").map(|x| x.as_u64()) {
        Some(Some(n)) if n <= known => {}
        Some(Some(n)) => anyhow::bail!(
            "{}: comparison schema version {n} is newer than this kvbench reads ({known}); update kvbench",
            path.display()
        ),
        Some(None) => anyhow::bail!(
            "{}: schema_version is not a whole number",
            path.display()
        ),
        // Hand-made or very early comparisons have none: rendered as far as they go.
        None => {}
    }
    from_value(v)
        .with_context(|| format!("{} is not a comparison kvbench can read", path.display()))
}

/// A comparison from JSON; an error names the first field of the wrong type by its path
/// (`arms[0].requests.total: invalid type: string "x", expected u64`).
///
/// A `null` reads as missing (its default: `None`, empty, 0), as older and hand-made files
/// write `null` for what was not measured; inside a criterion's `evidence` (free-form JSON)
/// it stays.
pub fn from_value(mut v: Value) -> anyhow::Result<Comparison> {
    if !v.is_object() {
        anyhow::bail!("not a comparison: expected a JSON object");
    }
    strip_nulls(&mut v);
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(v, &mut track);
    match <Comparison as serde::Deserialize>::deserialize(de) {
        Ok(c) => Ok(c),
        Err(e) => anyhow::bail!("{}: {e}", track.path()),
    }
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            for (k, x) in m.iter_mut() {
                if k != "evidence" {
                    strip_nulls(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Writes `text` to `path`, or to stdout when `path` is `-`.
pub fn write_output(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => Ok(()),
            // `kvbench report C.json --md - | head` is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(e).context("cannot write the report to stdout"),
        }
    } else {
        std::fs::write(path, text)
            .with_context(|| format!("cannot write the report {}", path.display()))
    }
}

/// `kvbench report C.json [--html F] [--md F]`: renders the comparison again, then prints the
/// verdict and the paths written.
pub fn run(input: &Path, html_out: Option<&Path>, md_out: Option<&Path>) -> anyhow::Result<()> {
    if html_out.is_none() && md_out.is_none() {
        anyhow::bail!("nothing to write: give --html FILE and/or --md FILE (`-` for stdout)");
    }
    if html_out.is_some_and(|p| p.as_os_str() == "-")
        && md_out.is_some_and(|p| p.as_os_str() == "-")
    {
        anyhow::bail!("only one of --html and --md can be `-` (stdout)");
    }
    let c = read_comparison(input)?;
    let report = view::build(&c);
    if let Some(p) = md_out {
        let md = view::build_for(&c, view::Target::Markdown);
        write_output(p, &markdown::render(&md))?;
    }
    if let Some(p) = html_out {
        write_output(p, &html::render(&report))?;
    }
    // The verdict and where to look, on stderr when a report went to stdout.
    let mut lines = vec![format!("verdict     {}", report.decision_label)];
    for (label, p) in [("html", html_out), ("markdown", md_out)] {
        if let Some(p) = p.filter(|p| p.as_os_str() != "-") {
            lines.push(format!("{label:<11} {}", p.display()));
        }
    }
    let text = lines.join("\n");
    if md_out.is_some_and(|p| p.as_os_str() == "-")
        || html_out.is_some_and(|p| p.as_os_str() == "-")
    {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(())
}
