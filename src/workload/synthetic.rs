//! Synthetic prompts at a target token length.
//!
//! Text is a random sequence of common lower-case English words chosen because byte-pair
//! tokenizers (GPT-2, Llama, SmolLM2, Qwen) encode each of them, with its leading space, as one
//! token. Without `--tokenizer`, the length in tokens is estimated as the number of words; with
//! one, words are added or removed until the tokenizer's count equals the target exactly (when
//! a one-token word exists to close the gap). Either way the server's own prompt count is
//! reported next to it, and the chat template adds its own tokens on top.

use std::collections::HashMap;
use std::path::Path;

use rand::{Rng, RngExt};

/// Words that are a single token with a leading space in common BPE vocabularies.
pub const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "she",
    "other",
    "its",
    "may",
    "these",
    "what",
    "them",
    "than",
    "some",
    "him",
    "time",
    "into",
    "only",
    "do",
    "my",
    "new",
    "about",
    "out",
    "also",
    "two",
    "any",
    "up",
    "first",
    "could",
    "our",
    "then",
    "most",
    "see",
    "me",
    "should",
    "after",
    "said",
    "your",
    "very",
    "between",
    "many",
    "over",
    "like",
    "those",
    "did",
    "now",
    "even",
    "well",
    "where",
    "must",
    "people",
    "through",
    "how",
    "same",
    "work",
    "being",
    "because",
    "man",
    "life",
    "before",
    "each",
    "much",
    "under",
    "years",
    "way",
    "great",
    "state",
    "both",
    "use",
    "upon",
    "own",
    "used",
    "however",
    "us",
    "part",
    "good",
    "world",
    "make",
    "three",
    "while",
    "long",
    "day",
    "without",
    "just",
    "men",
    "general",
    "during",
    "another",
    "little",
    "found",
    "here",
    "system",
    "does",
    "de",
    "down",
    "number",
    "case",
    "against",
    "might",
    "still",
    "back",
    "right",
    "know",
    "place",
    "every",
    "government",
    "too",
    "high",
    "old",
    "different",
    "since",
    "power",
    "take",
    "last",
    "water",
    "come",
    "small",
    "house",
    "give",
    "year",
    "law",
    "large",
    "school",
    "again",
    "end",
    "point",
    "never",
    "public",
    "per",
    "go",
    "help",
    "form",
    "think",
    "less",
    "following",
    "important",
    "national",
    "family",
    "group",
    "course",
    "city",
    "country",
    "order",
    "light",
    "line",
    "name",
    "book",
    "word",
    "team",
    "night",
    "land",
    "music",
    "field",
    "story",
    "road",
    "money",
    "food",
    "river",
    "market",
    "table",
    "heart",
    "paper",
    "voice",
    "horse",
    "garden",
];

/// Prompt-length counting with a Hugging Face `tokenizer.json` (no downloads).
pub struct TokenCounter {
    tok: tokenizers::Tokenizer,
    word_tokens: HashMap<&'static str, usize>,
}

impl TokenCounter {
    /// Loads `tokenizer.json`; a one-line error when it cannot be read or parsed, or when it
    /// gives no token for any of the words prompts are made of (no prompt could reach its
    /// length).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let tok = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        let mut c = Self {
            tok,
            word_tokens: HashMap::new(),
        };
        for w in WORDS {
            let n = c.count(&format!(" {w}"));
            c.word_tokens.insert(w, n);
        }
        if c.word_tokens.values().all(|&n| n == 0) {
            anyhow::bail!(
                "tokenizer {}: it gives no token for any word (is it the model's tokenizer.json?)",
                path.display()
            );
        }
        Ok(c)
    }

    /// Tokens in `text`, without special tokens.
    pub fn count(&self, text: &str) -> usize {
        self.tok
            .encode(text, false)
            .map(|e| e.get_ids().len())
            .unwrap_or_else(|_| approx_tokens(text))
    }
}

/// The documented estimate for text that kvbench did not generate: one token per four
/// characters (rounded up), the usual rule of thumb for English with BPE tokenizers.
pub fn approx_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// A unique per-request prefix: eight random words and a newline (about 8 tokens, 2^60 choices),
/// so two requests never share a cacheable prefix.
pub fn unique_prefix(rng: &mut impl Rng) -> String {
    let mut s = String::with_capacity(64);
    for i in 0..8 {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s.push('\n');
    s
}

/// Estimated tokens of a [`unique_prefix`] without a tokenizer: eight words and a newline.
pub const PREFIX_TOKENS_EST: u64 = 9;

/// Random text such that `prefix + text` has `target` tokens. Returns the text and the token
/// count of `prefix + text` (exact when a tokenizer is given, else words plus
/// [`PREFIX_TOKENS_EST`] for a non-empty prefix).
pub fn text(
    rng: &mut impl Rng,
    target: u32,
    prefix: &str,
    tok: Option<&TokenCounter>,
) -> (String, usize) {
    let prefix_tokens = match (tok, prefix.is_empty()) {
        (_, true) => 0,
        (Some(t), false) => t.count(prefix),
        (None, false) => PREFIX_TOKENS_EST as usize,
    };
    let full = target as usize;
    let target = full.saturating_sub(prefix_tokens).max(1);
    let mut words: Vec<&'static str> = Vec::with_capacity(target);
    let Some(tok) = tok else {
        for _ in 0..target {
            words.push(WORDS[rng.random_range(0..WORDS.len())]);
        }
        return (words.join(" "), target + prefix_tokens);
    };
    // Sum per-word counts (pre-tokenization splits on spaces), then correct with real encodes.
    // A word counted as no token still counts as one here, so the loop ends.
    let mut est = 0;
    while est < target {
        let w = WORDS[rng.random_range(0..WORDS.len())];
        est += tok.word_tokens.get(w).copied().unwrap_or(1).max(1);
        words.push(w);
    }
    let one_token: Vec<&'static str> = WORDS
        .iter()
        .copied()
        .filter(|w| tok.word_tokens.get(w) == Some(&1))
        .collect();
    let count = |words: &[&str]| tok.count(&format!("{prefix}{}", words.join(" ")));
    let target = full.max(prefix_tokens + 1);
    let mut n = count(&words);
    for _ in 0..8 {
        if n == target {
            break;
        }
        if n > target {
            let excess = n - target;
            let keep = words.len().saturating_sub(excess.max(1));
            words.truncate(keep.max(1));
        } else if !one_token.is_empty() {
            for _ in 0..(target - n) {
                words.push(one_token[rng.random_range(0..one_token.len())]);
            }
        } else {
            break;
        }
        n = count(&words);
    }
    (words.join(" "), n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn text_without_tokenizer_has_target_words() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (t, n) = text(&mut rng, 50, "", None);
        assert_eq!(n, 50);
        assert_eq!(t.split(' ').count(), 50);
        let (t, n) = text(&mut rng, 50, "a prefix\n", None);
        assert_eq!(n, 50);
        assert_eq!(t.split(' ').count(), 50 - PREFIX_TOKENS_EST as usize);
    }

    #[test]
    fn prefixes_differ() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let a = unique_prefix(&mut rng);
        let b = unique_prefix(&mut rng);
        assert_ne!(a, b);
        assert!(a.ends_with('\n'));
        assert_eq!(a.trim().split(' ').count(), 8);
    }

    #[test]
    fn approx_is_chars_over_four() {
        assert_eq!(approx_tokens(""), 0);
        assert_eq!(approx_tokens("abcd"), 1);
        assert_eq!(approx_tokens("abcde"), 2);
    }
}
