//! Grading: how an answer is normalised, what is extracted from it, and when it counts as
//! correct. Every rule here is documented in docs/quality.md; change both together.
//!
//! Only the answer channel is graded. Reasoning that a server sends in its own channel
//! (`reasoning` / `reasoning_content`) never reaches these functions, and a `<think>…</think>`
//! block left inside the answer text (a server without a reasoning parser) is split off first by
//! [`split_think`].

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// How one item is graded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Grader {
    /// Retrieval (passkey, needle): the expected number appears in the answer as a whole number,
    /// and none of the `distractors` (other values present in the prompt) does.
    Retrieval {
        /// Values from the prompt that must not be given.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        distractors: Vec<String>,
    },
    /// Arithmetic: the last number in the answer equals the expected value.
    LastNumber,
    /// Images: the first number in the answer (digits, or an English number word up to
    /// twenty) equals the expected value.
    FirstNumber,
    /// Copy: the expected string appears in the answer, with no letter or digit touching it on
    /// either side (so a longer or shorter variant fails).
    Copy,
    /// User suite `"match": "exact"`: equal after [`normalize`] of both sides.
    Exact,
    /// User suite `"match": "contains"`: the normalised expected text is a substring of the
    /// normalised answer.
    Contains,
    /// User suite `"match": "regex"`: the expected text is a regular expression (Rust `regex`
    /// syntax) that must match somewhere in the raw answer.
    Regex,
}

/// The outcome of grading one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Grade {
    /// Whether the answer is correct.
    pub correct: bool,
    /// What was extracted and compared (e.g. the number found), for inspection.
    pub extracted: Option<String>,
}

/// Splits a `<think>…</think>` block off answer text: returns (answer, reasoning). Text after
/// the last `</think>` is the answer and what comes before it is reasoning; an opened
/// `<think>` that never closes (the budget ran out while thinking) leaves an empty answer.
pub fn split_think(text: &str) -> (String, Option<String>) {
    if let Some(end) = text.rfind("</think>") {
        let before = text[..end].trim();
        let reasoning = before.strip_prefix("<think>").unwrap_or(before).trim();
        let answer = text[end + "</think>".len()..].to_owned();
        return (answer, Some(reasoning.to_owned()));
    }
    let trimmed = text.trim_start();
    if let Some(rest) = trimmed.strip_prefix("<think>") {
        return (String::new(), Some(rest.trim().to_owned()));
    }
    (text.to_owned(), None)
}

/// Normalisation for `exact` and `contains`: lower case, whitespace runs collapsed to one space
/// and trimmed, one pair of wrapping quotes or backticks removed, and trailing `.`, `!`, `?`
/// removed. Applied to the answer and the expected text alike.
pub fn normalize(s: &str) -> String {
    let mut t: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    t = t.to_lowercase();
    loop {
        let before = t.len();
        t = t.trim_end_matches(['.', '!', '?']).trim().to_owned();
        for (open, close) in [
            ('"', '"'),
            ('\'', '\''),
            ('`', '`'),
            ('“', '”'),
            ('‘', '’'),
            ('*', '*'),
        ] {
            if t.chars().count() >= 2 && t.starts_with(open) && t.ends_with(close) {
                t = t[open.len_utf8()..t.len() - close.len_utf8()]
                    .trim()
                    .to_owned();
            }
        }
        if t.len() == before {
            return t;
        }
    }
}

static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    // Thousands separators are commas in groups of three; the sign is read by hand (the regex
    // crate has no look-behind).
    Regex::new(r"(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?").expect("valid regex")
});

static NUMBER_OR_WORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty)\b|(\d[\d,]*)",
    )
    .expect("valid regex")
});

const NUMBER_WORDS: [&str; 21] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
];

/// The numbers in `text`, in order, canonicalised: thousands separators removed, a decimal
/// part of zeros dropped (`12.0` → `12`), leading zeros dropped, the sign kept as `-`.
pub fn numbers(text: &str) -> Vec<String> {
    let glued = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    NUMBER
        .captures_iter(text)
        .filter_map(|c| {
            let whole = c.get(0)?;
            let mut before = text[..whole.start()].chars().rev();
            let prev = before.next();
            if glued(prev) {
                // Digits glued to a word ("abc123") are not a number.
                return None;
            }
            // A minus counts when nothing word-like precedes it: "-4" and "= −4", not "5-3".
            let negative = matches!(prev, Some('-' | '−')) && !glued(before.next());
            let int = c[1].replace(',', "");
            let int = int.trim_start_matches('0');
            let int = if int.is_empty() { "0" } else { int };
            let frac = c
                .get(2)
                .map(|m| m.as_str().trim_end_matches('0'))
                .filter(|f| *f != ".")
                .unwrap_or("");
            Some(if int == "0" && frac.is_empty() {
                "0".to_owned()
            } else if negative {
                format!("-{int}{frac}")
            } else {
                format!("{int}{frac}")
            })
        })
        .collect()
}

/// Canonical form of an expected number (same rules as [`numbers`]).
fn canonical_number(s: &str) -> String {
    numbers(s)
        .into_iter()
        .next()
        .unwrap_or_else(|| s.trim().to_owned())
}

/// Grades `answer` (the answer channel only) against `expected` with `grader`. A `Regex`
/// grader with an invalid pattern grades wrong (patterns are checked when a suite is loaded).
pub fn grade(grader: &Grader, expected: &str, answer: &str) -> Grade {
    match grader {
        Grader::Retrieval { distractors } => {
            let found = numbers(answer);
            let want = canonical_number(expected);
            let has = found.contains(&want);
            let wrong = distractors
                .iter()
                .map(|d| canonical_number(d))
                .any(|d| found.contains(&d));
            Grade {
                correct: has && !wrong,
                extracted: (!found.is_empty()).then(|| found.join(" ")),
            }
        }
        Grader::LastNumber => {
            let last = numbers(answer).pop();
            Grade {
                correct: last.as_deref() == Some(canonical_number(expected).as_str()),
                extracted: last,
            }
        }
        Grader::FirstNumber => {
            let first = NUMBER_OR_WORD.captures(answer).map(|c| {
                if let Some(w) = c.get(1) {
                    let w = w.as_str().to_lowercase();
                    NUMBER_WORDS
                        .iter()
                        .position(|n| *n == w)
                        .unwrap_or(0)
                        .to_string()
                } else {
                    canonical_number(&c[2])
                }
            });
            Grade {
                correct: first.as_deref() == Some(canonical_number(expected).as_str()),
                extracted: first,
            }
        }
        Grader::Copy => {
            let correct = !expected.is_empty()
                && answer.match_indices(expected).any(|(i, m)| {
                    let before = answer[..i].chars().next_back();
                    let after = answer[i + m.len()..].chars().next();
                    !before.is_some_and(char::is_alphanumeric)
                        && !after.is_some_and(char::is_alphanumeric)
                });
            Grade {
                correct,
                extracted: None,
            }
        }
        Grader::Exact => {
            let a = normalize(answer);
            Grade {
                correct: a == normalize(expected),
                extracted: Some(a),
            }
        }
        Grader::Contains => Grade {
            correct: normalize(answer).contains(&normalize(expected)),
            extracted: None,
        },
        Grader::Regex => {
            let m = Regex::new(expected)
                .ok()
                .and_then(|re| re.find(answer).map(|m| m.as_str().to_owned()));
            Grade {
                correct: m.is_some(),
                extracted: m,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(g: &Grader, expected: &str, answer: &str) -> bool {
        grade(g, expected, answer).correct
    }

    #[test]
    fn numbers_are_canonical() {
        assert_eq!(
            numbers("The key is 68,921. Also 007 and 12.50, -4 and 3.0"),
            vec!["68921", "7", "12.5", "-4", "3"]
        );
        // A hyphen between digits is not a sign; a Unicode minus is.
        assert_eq!(numbers("5-3 = 2"), vec!["5", "3", "2"]);
        assert_eq!(numbers("−12"), vec!["-12"]);
        // Digits inside words do not form separate numbers, but digit runs stay whole.
        assert_eq!(numbers("abc123 456789"), vec!["456789"]);
        assert!(numbers("no digits").is_empty());
    }

    #[test]
    fn retrieval_needs_the_key_and_no_distractor() {
        let g = Grader::Retrieval {
            distractors: vec!["555123".into(), "777000".into()],
        };
        assert!(ok(&g, "314159", "The secret number is 314159."));
        assert!(ok(&g, "314159", "314,159"));
        // Part of a longer number does not count.
        assert!(!ok(&g, "314159", "3141590"));
        // Listing a distractor too is wrong, even with the key.
        assert!(!ok(&g, "314159", "It is 314159 or 555123."));
        assert!(!ok(&g, "314159", "I don't know."));
        let passkey = Grader::Retrieval {
            distractors: vec![],
        };
        assert!(ok(&passkey, "40213", "The pass key is 40213"));
    }

    #[test]
    fn arithmetic_takes_the_last_number() {
        let g = Grader::LastNumber;
        assert!(ok(&g, "178377", "4821 * 37 = 178377"));
        assert!(ok(&g, "178377", "178,377."));
        assert!(ok(&g, "-1200", "The result is -1200"));
        assert!(!ok(&g, "178377", "178377, no wait, 178378"));
        assert!(!ok(&g, "178377", ""));
    }

    #[test]
    fn images_take_the_first_number_or_word() {
        let g = Grader::FirstNumber;
        assert!(ok(&g, "3", "There are three circles."));
        assert!(ok(&g, "3", "3"));
        assert!(ok(&g, "407", "The number is 407."));
        assert!(!ok(&g, "3", "I see 4 circles, not 3"));
        // "one" inside "someone" is not a number word.
        assert!(!ok(&g, "1", "someone drew 2 squares"));
    }

    #[test]
    fn copy_needs_the_exact_string_standing_alone() {
        let g = Grader::Copy;
        assert!(ok(&g, "k3j9x2", "k3j9x2"));
        assert!(ok(&g, "k3j9x2", "Here it is: \"k3j9x2\""));
        assert!(!ok(&g, "k3j9x2", "k3j9x2a"));
        assert!(!ok(&g, "k3j9x2", "k3j9x"));
        assert!(!ok(&g, "k3j9x2", "K3J9X2"));
    }

    #[test]
    fn exact_contains_and_regex() {
        assert_eq!(normalize("  \"Paris.\"  "), "paris");
        assert_eq!(normalize("**New   York!**"), "new york");
        assert!(ok(&Grader::Exact, "Paris", "paris."));
        assert!(!ok(&Grader::Exact, "Paris", "It is Paris"));
        assert!(ok(&Grader::Contains, "Paris", "It is Paris."));
        assert!(!ok(&Grader::Contains, "Paris", "Lyon"));
        assert!(ok(&Grader::Regex, r"^\s*4[02]\b", " 42 is the answer"));
        assert!(!ok(&Grader::Regex, r"^\s*4[02]\b", "it is 42"));
        // An invalid pattern never matches.
        assert!(!ok(&Grader::Regex, r"(", "("));
    }

    #[test]
    fn think_blocks_are_split_off() {
        let (a, r) = split_think("<think>\nlet me see, 12?\n</think>\n\n42");
        assert_eq!(a.trim(), "42");
        assert_eq!(r.as_deref(), Some("let me see, 12?"));
        let (a, r) = split_think("<think> still thinking about 12");
        assert_eq!(a, "");
        assert_eq!(r.as_deref(), Some("still thinking about 12"));
        let (a, r) = split_think("plain 42");
        assert_eq!(a, "plain 42");
        assert_eq!(r, None);
        // Grading the answer alone ignores the numbers in the reasoning.
        let (a, _) = split_think("<think>maybe 12</think>The answer is 42");
        assert!(ok(&Grader::LastNumber, "42", &a));
        assert!(!ok(&Grader::FirstNumber, "12", &a));
    }
}
