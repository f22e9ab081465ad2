//! The HTML report: one self-contained file (inline CSS and SVG, no script, no network; a
//! Content-Security-Policy forbids loading anything), rendered with `minijinja`.
//!
//! Why a template engine: the page's layout reads as HTML in `report.html`, and the template is
//! registered under an `.html` name so minijinja escapes every value by default. Server log lines
//! and failure messages from the comparison therefore cannot inject markup; the only value
//! marked safe is the charts' SVG, which [`super::svg`] builds with its text escaped.

use minijinja::value::Serde;
use minijinja::{context, Environment, UndefinedBehavior};

use super::view::Report;

const TEMPLATE: &str = include_str!("report.html");

/// Renders the view as an HTML page.
pub fn render(report: &Report) -> String {
    let mut env = Environment::new();
    // A misspelt field in the template is a bug to catch in tests, not an empty cell.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let result = env
        .add_template("report.html", TEMPLATE)
        .and_then(|()| env.get_template("report.html"))
        .and_then(|t| t.render(context! { r => Serde(report) }));
    match result {
        Ok(html) => html,
        // The template is fixed and the view is plain data: failing here is a kvbench bug. Still
        // produce a page that says so rather than panic after a long experiment.
        Err(e) => format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>kvbench report</title></head><body><h1>{}</h1><p>The report template failed: {}</p></body></html>",
            minijinja::HtmlEscape(&report.decision_label),
            minijinja::HtmlEscape(&format!("{e:#}"))
        ),
    }
}
