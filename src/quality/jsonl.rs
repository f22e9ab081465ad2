//! User quality suites: one JSON object per line,
//! `{"id": ..., "prompt": "..." | "messages": [...], "expected": "...",
//!   "match": "exact" | "contains" | "regex", "images": [...], "max_tokens": N}`.
//!
//! A malformed line is an error naming the file and line number, unless the user asked to skip
//! such lines; skipped lines are still reported (in the result, with their line numbers).

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use super::grade::Grader;
use super::Item;
use crate::workload::{images::file_data_url, Prompt, TokenCounter};

/// Output budget of a user item without its own `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

/// A line that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong with it.
    pub error: String,
}

/// A loaded user suite.
#[derive(Debug, Clone)]
pub struct UserSuite {
    /// Items, in file order.
    pub items: Vec<Item>,
    /// Lines skipped because they were malformed (only with `skip_invalid`).
    pub skipped: Vec<SkippedLine>,
}

/// Loads a user suite named `suite` from `path`.
pub fn load(
    path: &Path,
    suite: &str,
    skip_invalid: bool,
    tok: Option<&TokenCounter>,
) -> anyhow::Result<UserSuite> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read quality suite {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut items = Vec::new();
    let mut skipped = Vec::new();
    let mut ids = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let lineno = i + 1;
        match parse_line(line, lineno, suite, dir, tok, &mut ids) {
            Ok(item) => items.push(item),
            Err(e) if skip_invalid => skipped.push(SkippedLine {
                line: lineno,
                error: e,
            }),
            Err(e) => anyhow::bail!(
                "{}:{lineno}: {e} (--quality-skip-invalid skips such lines)",
                path.display()
            ),
        }
    }
    if items.is_empty() {
        anyhow::bail!("quality suite {} has no usable items", path.display());
    }
    Ok(UserSuite { items, skipped })
}

fn parse_line(
    line: &str,
    lineno: usize,
    suite: &str,
    dir: &Path,
    tok: Option<&TokenCounter>,
    ids: &mut HashSet<String>,
) -> Result<Item, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(o) = v else {
        return Err("expected a JSON object".into());
    };
    let id = match o.get("id") {
        None | Some(Value::Null) => format!("line-{lineno}"),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("\"id\" must be a non-empty string or a number".into()),
    };
    if !ids.insert(id.clone()) {
        return Err(format!("duplicate id {id:?}"));
    }
    let prompt = match (o.get("prompt"), o.get("messages")) {
        (Some(_), Some(_)) => return Err("give \"prompt\" or \"messages\", not both".into()),
        (Some(Value::String(s)), None) => Prompt::Text(s.clone()),
        (Some(_), None) => return Err("\"prompt\" must be a string".into()),
        (None, Some(Value::Array(m))) if !m.is_empty() => {
            if m.iter()
                .any(|msg| msg.get("role").and_then(Value::as_str).is_none())
            {
                return Err("every message needs a \"role\"".into());
            }
            Prompt::Messages(m.clone())
        }
        (None, Some(_)) => return Err("\"messages\" must be a non-empty array".into()),
        (None, None) => return Err("expected a \"prompt\" or \"messages\" field".into()),
    };
    let expected = match o.get("expected") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err("\"expected\" must be a string (or a number)".into()),
    };
    let grader = match o.get("match") {
        None | Some(Value::Null) => Grader::Exact,
        Some(Value::String(m)) => match m.as_str() {
            "exact" => Grader::Exact,
            "contains" => Grader::Contains,
            "regex" => {
                regex::Regex::new(&expected)
                    .map_err(|e| format!("\"expected\" is not a valid regex: {e}"))?;
                Grader::Regex
            }
            other => {
                return Err(format!(
                    "unknown \"match\" {other:?}: expected exact, contains or regex"
                ))
            }
        },
        Some(_) => return Err("\"match\" must be a string".into()),
    };
    let images = match o.get("images") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|img| {
                let s = img
                    .as_str()
                    .ok_or_else(|| "\"images\" must be an array of strings".to_owned())?;
                if s.starts_with("data:") || s.starts_with("http://") || s.starts_with("https://") {
                    Ok(s.to_owned())
                } else {
                    file_data_url(&dir.join(s)).map_err(|e| format!("{e:#}"))
                }
            })
            .collect::<Result<Vec<_>, String>>()?,
        Some(_) => return Err("\"images\" must be an array of strings".into()),
    };
    if !images.is_empty() && matches!(prompt, Prompt::Messages(_)) {
        return Err(
            "\"images\" goes with \"prompt\"; put images of \"messages\" in their content parts"
                .into(),
        );
    }
    let max_tokens = match o.get("max_tokens") {
        None | Some(Value::Null) => DEFAULT_MAX_TOKENS,
        Some(m) => m
            .as_u64()
            .filter(|n| (1..=u32::MAX as u64).contains(n))
            .ok_or_else(|| "\"max_tokens\" must be a positive integer".to_owned())?
            as u32,
    };
    let text = match &prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Messages(m) => m
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let prompt_tokens_est = Some(match tok {
        Some(t) => t.count(&text) as u64,
        None => crate::workload::synthetic::approx_tokens(&text) as u64,
    });
    Ok(Item {
        suite: suite.to_owned(),
        id,
        prompt,
        images,
        expected,
        grader,
        max_tokens,
        length: None,
        depth: None,
        prompt_tokens_est,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        f
    }

    #[test]
    fn good_lines_load_with_their_match_modes() {
        let f = file(&[
            r#"{"id": "a", "prompt": "Capital of France?", "expected": "Paris"}"#,
            "",
            r#"{"id": 2, "messages": [{"role": "user", "content": "2+2?"}], "expected": 4, "match": "contains", "max_tokens": 8}"#,
            r#"{"prompt": "Say hi", "expected": "^\\s*hi\\b", "match": "regex", "images": ["data:image/png;base64,AAAA"]}"#,
        ]);
        let s = load(f.path(), "jsonl:t", false, None).unwrap();
        assert_eq!(s.items.len(), 3);
        assert!(s.skipped.is_empty());
        assert_eq!(s.items[0].grader, Grader::Exact);
        assert_eq!(s.items[0].max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(s.items[1].id, "2");
        assert_eq!(s.items[1].expected, "4");
        assert_eq!(s.items[1].grader, Grader::Contains);
        assert_eq!(s.items[1].max_tokens, 8);
        assert_eq!(s.items[2].id, "line-4");
        assert_eq!(s.items[2].grader, Grader::Regex);
        assert_eq!(s.items[2].images.len(), 1);
    }

    #[test]
    fn a_malformed_line_is_reported_with_its_number() {
        let lines = [
            r#"{"id": "a", "prompt": "ok", "expected": "x"}"#,
            r#"{"id": "b", "prompt": "no expected"}"#,
            r#"{"id": "c", "prompt": "p", "expected": "x", "match": "fuzzy"}"#,
            r#"{not json"#,
            r#"{"id": "a", "prompt": "dup", "expected": "x"}"#,
            r#"{"id": "e", "prompt": "p", "expected": "(", "match": "regex"}"#,
            r#"{"id": "f", "prompt": "p", "messages": [], "expected": "x"}"#,
            r#"{"id": "g", "prompt": "p", "expected": "x", "images": ["missing.png"]}"#,
        ];
        let f = file(&lines);
        let err = load(f.path(), "s", false, None).unwrap_err().to_string();
        assert!(err.contains(":2: \"expected\""), "{err}");
        let s = load(f.path(), "s", true, None).unwrap();
        assert_eq!(s.items.len(), 1);
        let skipped: Vec<usize> = s.skipped.iter().map(|l| l.line).collect();
        assert_eq!(skipped, vec![2, 3, 4, 5, 6, 7, 8]);
        assert!(s.skipped[1].error.contains("fuzzy"));
        assert!(s.skipped[2].error.contains("not valid JSON"));
        assert!(s.skipped[3].error.contains("duplicate id"));
        assert!(s.skipped[4].error.contains("regex"));
        assert!(s.skipped[6].error.contains("missing.png"));
        // Nothing usable at all is an error even when skipping.
        let f = file(&[r#"{"id": "b"}"#]);
        assert!(load(f.path(), "s", true, None).is_err());
    }
}
