//! Loop and gibberish detection. Bad KV-cache scales rarely produce a slightly wrong answer;
//! they produce a model that repeats itself or emits noise, often until the token budget runs
//! out. These heuristics flag such answers so a person looks at them; they are deliberately
//! simple and documented in docs/quality.md.

use std::collections::HashMap;

/// Word n-gram size for the repetition test.
const NGRAM: usize = 4;
/// Answers with fewer words than this are never called a word loop.
const MIN_WORDS: usize = 16;
/// Character span that must repeat with a short period at the end of the answer.
const MIN_TAIL_CHARS: usize = 24;

/// Why an answer looks degenerate.
pub fn degenerate(text: &str) -> Option<&'static str> {
    if is_gibberish(text) {
        return Some("gibberish");
    }
    if word_loop(text) || tail_loop(text) {
        return Some("loop");
    }
    None
}

/// At least half of the word 4-grams are repeats of an earlier one ("the cat sat on the cat sat
/// on ..."), over at least [`MIN_WORDS`] words.
fn word_loop(text: &str) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < MIN_WORDS {
        return false;
    }
    let grams = words.len() + 1 - NGRAM;
    let mut seen: HashMap<&[&str], u32> = HashMap::new();
    for w in words.windows(NGRAM) {
        *seen.entry(w).or_default() += 1;
    }
    let repeats = grams - seen.len();
    repeats * 2 >= grams
}

/// The answer ends in a block of at most 16 characters repeated over at least
/// [`MIN_TAIL_CHARS`] characters and three periods ("!!!!!!…", "ababab…", "1, 1, 1, …").
fn tail_loop(text: &str) -> bool {
    let chars: Vec<char> = text.trim_end().chars().collect();
    let n = chars.len();
    if n < MIN_TAIL_CHARS {
        return false;
    }
    (1..=16).any(|period| {
        let run = (period..n)
            .rev()
            .take_while(|&i| chars[i] == chars[i - period])
            .count()
            + period;
        run >= MIN_TAIL_CHARS.max(3 * period)
    })
}

/// More than 5 % of at least 20 characters are replacement characters (invalid UTF-8 from the
/// server's detokenizer), control characters other than whitespace, or private-use code points.
fn is_gibberish(text: &str) -> bool {
    let total = text.chars().count();
    if total < 20 {
        return false;
    }
    let bad = text
        .chars()
        .filter(|&c| {
            c == '\u{FFFD}'
                || (c.is_control() && !c.is_whitespace())
                || ('\u{E000}'..='\u{F8FF}').contains(&c)
        })
        .count();
    bad * 20 > total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_answers_are_fine() {
        assert_eq!(degenerate("The pass key is 40213."), None);
        assert_eq!(
            degenerate(
                "Paris is the capital of France. It lies on the Seine, has about two million \
                 inhabitants, and is known for its museums, cafes and the Eiffel Tower."
            ),
            None
        );
        assert_eq!(degenerate(""), None);
        // A short repeat is not a loop.
        assert_eq!(degenerate("no no no no"), None);
    }

    #[test]
    fn loops_are_flagged() {
        let looped = "The answer is the answer is the answer is the answer is the answer is the \
                      answer is the answer is";
        assert_eq!(degenerate(looped), Some("loop"));
        assert_eq!(
            degenerate("Sure! 42!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"),
            Some("loop")
        );
        assert_eq!(
            degenerate("Result: abcabcabcabcabcabcabcabcabcabc"),
            Some("loop")
        );
        // Twenty-six distinct letters do not repeat with a short period.
        assert_eq!(degenerate("abcdefghijklmnopqrstuvwxyz"), None);
    }

    #[test]
    fn gibberish_is_flagged() {
        assert_eq!(
            degenerate("Answer: \u{FFFD}\u{FFFD}x\u{FFFD}y z\u{FFFD} 12 \u{1}\u{2} ok fine"),
            Some("gibberish")
        );
    }
}
