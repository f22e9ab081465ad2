//! Generated text suites: passkey, needle, arithmetic, copy. Seeded and deterministic: the same
//! settings give the same items on every arm, so answers can be compared item by item. Nothing
//! is downloaded; the filler text is a handful of plain sentences written for kvbench.
//!
//! Retrieval prompts are sized in tokens of the user message (the chat template comes on top):
//! exactly through `--tokenizer` when given (the largest prompt not above the target), else
//! with the estimate of one token per four characters.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::grade::Grader;
use super::{fnv1a64, Item};
use crate::workload::synthetic::approx_tokens;
use crate::workload::{Prompt, TokenCounter};

/// Output budget of retrieval answers.
pub const RETRIEVAL_MAX_TOKENS: u32 = 24;
/// Output budget of arithmetic answers.
pub const ARITHMETIC_MAX_TOKENS: u32 = 32;
/// Lengths (characters) of copy strings, cycled over the items.
pub const COPY_LENGTHS: [usize; 4] = [8, 16, 32, 64];
/// Key-value pairs in a needle prompt (one asked for, the rest distractors).
pub const NEEDLE_PAIRS: usize = 8;

const FILLER: [&str; 12] = [
    "The river runs past the old mill.",
    "Birds sing in the trees at dawn.",
    "The road turns left after the hill.",
    "A light wind moves the tall grass.",
    "The market opens early every day.",
    "Clouds drift slowly over the town.",
    "The lamp in the window stays on all night.",
    "Children play near the stone bridge.",
    "The baker sells fresh bread each morning.",
    "Rain falls softly on the roof.",
    "A cat sleeps in the warm sun.",
    "The train leaves the station at noon.",
];

const NEEDLE_NAMES: [&str; 24] = [
    "red fox",
    "blue whale",
    "green parrot",
    "silver wolf",
    "golden eagle",
    "black bear",
    "white owl",
    "brown rabbit",
    "grey heron",
    "orange tiger",
    "yellow canary",
    "purple moth",
    "pink flamingo",
    "spotted deer",
    "striped zebra",
    "small turtle",
    "tall giraffe",
    "quick otter",
    "quiet lynx",
    "young falcon",
    "old tortoise",
    "swift salmon",
    "shy badger",
    "bold raven",
];

/// Counts prompt tokens: exactly with a tokenizer, else the documented estimate.
pub struct Sizer<'a> {
    tok: Option<&'a TokenCounter>,
}

impl<'a> Sizer<'a> {
    /// A sizer using `tok` when given.
    pub fn new(tok: Option<&'a TokenCounter>) -> Self {
        Self { tok }
    }

    /// Tokens in `text`.
    pub fn count(&self, text: &str) -> usize {
        match self.tok {
            Some(t) => t.count(text),
            None => approx_tokens(text),
        }
    }

    /// The largest `n <= max_n` for which `build(n)` has at most `target` tokens (0 if even
    /// `build(0)` is longer), with that text and its count. `build` must grow with `n`.
    fn fit(
        &self,
        target: usize,
        max_n: usize,
        build: &dyn Fn(usize) -> String,
    ) -> (String, usize, usize) {
        let base = self.count(&build(0));
        let probe = 32.min(max_n.max(1));
        let per = ((self.count(&build(probe)).saturating_sub(base)) as f64 / probe as f64).max(1.0);
        let mut n = ((target.saturating_sub(base)) as f64 / per) as usize;
        // A few secant steps, then walk to the exact boundary.
        for _ in 0..3 {
            let c = self.count(&build(n)) as f64;
            let step = ((target as f64 - c) / per).trunc() as i64;
            if step == 0 {
                break;
            }
            n = (n as i64 + step).clamp(0, max_n as i64) as usize;
        }
        n = n.min(max_n);
        let mut c = self.count(&build(n));
        while c > target && n > 0 {
            n -= 1;
            c = self.count(&build(n));
        }
        while n < max_n {
            let next = self.count(&build(n + 1));
            if next > target {
                break;
            }
            n += 1;
            c = next;
        }
        (build(n), c, n)
    }
}

/// A per-item random stream: the suite, the cell and the index all change it.
fn rng_for(seed: u64, suite: &str, parts: &[u64]) -> StdRng {
    let mut h = fnv1a64(suite.as_bytes()) ^ seed.rotate_left(17);
    for p in parts {
        h = fnv1a64(&[h.to_le_bytes(), p.to_le_bytes()].concat());
    }
    StdRng::seed_from_u64(h)
}

fn filler(rng: &mut StdRng, sentences: usize) -> Vec<&'static str> {
    (0..sentences)
        .map(|_| FILLER[rng.random_range(0..FILLER.len())])
        .collect()
}

/// Joins `filler[..n]` with `inserts` (fraction of the way through, text) placed between
/// sentences.
fn assemble(
    head: &str,
    filler: &[&str],
    n: usize,
    inserts: &[(f64, String)],
    tail: &str,
) -> String {
    let mut placed: Vec<(usize, &str)> = inserts
        .iter()
        .map(|(f, t)| {
            (
                ((f.clamp(0.0, 1.0)) * n as f64).round() as usize,
                t.as_str(),
            )
        })
        .collect();
    placed.sort_by_key(|(p, _)| *p);
    let mut out = String::with_capacity(head.len() + tail.len() + n * 40);
    out.push_str(head);
    let mut k = 0;
    for (i, sentence) in filler[..n].iter().map(Some).chain([None]).enumerate() {
        while k < placed.len() && placed[k].0 == i {
            out.push(' ');
            out.push_str(placed[k].1);
            k += 1;
        }
        if let Some(s) = sentence {
            out.push(' ');
            out.push_str(s);
        }
    }
    out.push_str(tail);
    out
}

fn depth_label(d: f64) -> String {
    let s = format!("{d:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Items per (length, depth) cell so that there are at least `items` in all.
pub fn per_cell(items: u32, lengths: usize, depths: usize) -> u32 {
    let cells = (lengths * depths).max(1) as u32;
    items.div_ceil(cells).max(1)
}

/// Passkey: a random five-digit key hidden at `depth` in filler, the whole prompt `length`
/// tokens long; "what is the pass key?".
pub fn passkey(seed: u64, lengths: &[u32], depths: &[f64], items: u32, sizer: &Sizer) -> Vec<Item> {
    let k = per_cell(items, lengths.len(), depths.len());
    let mut out = Vec::new();
    for &len in lengths {
        for &depth in depths {
            for i in 0..k {
                let mut rng = rng_for(seed, "passkey", &[len as u64, depth.to_bits(), i as u64]);
                let key: u32 = rng.random_range(10_000..100_000);
                let pool = filler(&mut rng, len as usize / 5 + 64);
                let head =
                    "There is a pass key hidden inside a lot of unrelated text. Find it and \
                            remember it: you will be asked for it at the end.\n";
                let tail = "\n\nWhat is the pass key? Answer with the pass key only.";
                let needle = format!("The pass key is {key}. Remember it. {key} is the pass key.");
                let inserts = [(depth, needle)];
                let build = |n: usize| assemble(head, &pool, n, &inserts, tail);
                let (text, count, _) = sizer.fit(len as usize, pool.len(), &build);
                out.push(Item {
                    suite: "passkey".into(),
                    id: format!("{len}-d{}-{i}", depth_label(depth)),
                    prompt: Prompt::Text(text),
                    images: Vec::new(),
                    expected: key.to_string(),
                    grader: Grader::Retrieval {
                        distractors: Vec::new(),
                    },
                    max_tokens: RETRIEVAL_MAX_TOKENS,
                    length: Some(len),
                    depth: Some(depth),
                    prompt_tokens_est: Some(count as u64),
                });
            }
        }
    }
    out
}

/// Needle among distractors: [`NEEDLE_PAIRS`] "the secret number of the X is N" lines spread
/// through filler, the one asked for at `depth`; the others are distractors.
pub fn needle(seed: u64, lengths: &[u32], depths: &[f64], items: u32, sizer: &Sizer) -> Vec<Item> {
    let k = per_cell(items, lengths.len(), depths.len());
    let mut out = Vec::new();
    for &len in lengths {
        for &depth in depths {
            for i in 0..k {
                let mut rng = rng_for(seed, "needle", &[len as u64, depth.to_bits(), i as u64]);
                let mut names: Vec<&str> = NEEDLE_NAMES.to_vec();
                let mut chosen = Vec::new();
                for _ in 0..NEEDLE_PAIRS {
                    chosen.push(names.remove(rng.random_range(0..names.len())));
                }
                let mut values: Vec<u32> = Vec::new();
                while values.len() < NEEDLE_PAIRS {
                    let v = rng.random_range(100_000..1_000_000);
                    if !values.contains(&v) {
                        values.push(v);
                    }
                }
                let mut inserts = vec![(
                    depth,
                    format!("The secret number of the {} is {}.", chosen[0], values[0]),
                )];
                for j in 1..NEEDLE_PAIRS {
                    let at: f64 = rng.random_range(0.0..=1.0);
                    inserts.push((
                        at,
                        format!("The secret number of the {} is {}.", chosen[j], values[j]),
                    ));
                }
                let pool = filler(&mut rng, len as usize / 5 + 64);
                let head = "Some secret numbers are hidden inside the following text. Read it \
                            carefully.\n";
                let tail = format!(
                    "\n\nWhat is the secret number of the {}? Answer with the number only.",
                    chosen[0]
                );
                let build = |n: usize| assemble(head, &pool, n, &inserts, &tail);
                let (text, count, _) = sizer.fit(len as usize, pool.len(), &build);
                out.push(Item {
                    suite: "needle".into(),
                    id: format!("{len}-d{}-{i}", depth_label(depth)),
                    prompt: Prompt::Text(text),
                    images: Vec::new(),
                    expected: values[0].to_string(),
                    grader: Grader::Retrieval {
                        distractors: values[1..].iter().map(u32::to_string).collect(),
                    },
                    max_tokens: RETRIEVAL_MAX_TOKENS,
                    length: Some(len),
                    depth: Some(depth),
                    prompt_tokens_est: Some(count as u64),
                });
            }
        }
    }
    out
}

/// Multi-digit arithmetic, cycling addition (up to six digits), subtraction (five digits,
/// positive result) and multiplication (up to four by three digits).
pub fn arithmetic(seed: u64, items: u32, sizer: &Sizer) -> Vec<Item> {
    (0..items)
        .map(|i| {
            let mut rng = rng_for(seed, "arithmetic", &[i as u64]);
            let (a, op, b, r): (u64, &str, u64, u64) = match i % 3 {
                0 => {
                    let a = rng.random_range(10_000..1_000_000);
                    let b = rng.random_range(10_000..1_000_000);
                    (a, "+", b, a + b)
                }
                1 => {
                    let a = rng.random_range(20_000..100_000);
                    let b = rng.random_range(1_000..a);
                    (a, "-", b, a - b)
                }
                _ => {
                    let a = rng.random_range(100..10_000);
                    let b = rng.random_range(10..1_000);
                    (a, "*", b, a * b)
                }
            };
            let text = format!("What is {a} {op} {b}? Reply with the result as a number only.");
            Item {
                suite: "arithmetic".into(),
                id: i.to_string(),
                prompt_tokens_est: Some(sizer.count(&text) as u64),
                prompt: Prompt::Text(text),
                images: Vec::new(),
                expected: r.to_string(),
                grader: Grader::LastNumber,
                max_tokens: ARITHMETIC_MAX_TOKENS,
                length: None,
                depth: None,
            }
        })
        .collect()
}

/// Copy a random string of lower-case letters and digits exactly; lengths cycle through
/// [`COPY_LENGTHS`].
pub fn copy(seed: u64, items: u32, sizer: &Sizer) -> Vec<Item> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..items)
        .map(|i| {
            let mut rng = rng_for(seed, "copy", &[i as u64]);
            let len = COPY_LENGTHS[i as usize % COPY_LENGTHS.len()];
            let s: String = (0..len)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect();
            let text = format!(
                "Repeat the following string exactly, character for character, and write nothing \
                 else:\n{s}"
            );
            Item {
                suite: "copy".into(),
                id: format!("{len}-{i}"),
                prompt_tokens_est: Some(sizer.count(&text) as u64),
                prompt: Prompt::Text(text),
                images: Vec::new(),
                expected: s,
                grader: Grader::Copy,
                max_tokens: len as u32 + 16,
                length: None,
                depth: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::grade::{grade, numbers};

    fn text(item: &Item) -> &str {
        match &item.prompt {
            Prompt::Text(t) => t,
            Prompt::Messages(_) => panic!("text prompt expected"),
        }
    }

    #[test]
    fn passkey_is_seeded_sized_and_placed_at_its_depth() {
        let sizer = Sizer::new(None);
        let a = passkey(7, &[1000, 2000], &[0.0, 0.5, 1.0], 6, &sizer);
        let b = passkey(7, &[1000, 2000], &[0.0, 0.5, 1.0], 6, &sizer);
        assert_eq!(a, b, "same seed, same items");
        assert_eq!(a.len(), 6, "one item per cell");
        let other = passkey(8, &[1000], &[0.5], 1, &sizer);
        assert_ne!(
            text(&other[0]),
            text(&a[1]),
            "another seed changes the item"
        );
        for item in &a {
            let t = text(item);
            let len = item.length.unwrap() as usize;
            let est = approx_tokens(t);
            // The largest prompt not above the target: within one filler sentence of it.
            assert!(est <= len && est + 12 > len, "{est} vs {len}");
            assert_eq!(item.prompt_tokens_est, Some(est as u64));
            // The key is the only number in the prompt.
            assert_eq!(
                numbers(t),
                vec![item.expected.clone(), item.expected.clone()]
            );
            let at = t
                .find(&format!("The pass key is {}", item.expected))
                .unwrap() as f64;
            let body = t.len() as f64;
            let rel = at / body;
            let want = item.depth.unwrap();
            assert!((rel - want).abs() < 0.1, "depth {want}: found at {rel:.2}");
        }
    }

    #[test]
    fn needle_has_one_answer_and_distinct_distractors() {
        let sizer = Sizer::new(None);
        let items = needle(1, &[1500], &[0.25, 0.75], 4, &sizer);
        assert_eq!(items.len(), 4, "two per cell");
        for item in &items {
            let t = text(item);
            let Grader::Retrieval { distractors } = &item.grader else {
                panic!("retrieval grader")
            };
            assert_eq!(distractors.len(), NEEDLE_PAIRS - 1);
            assert!(!distractors.contains(&item.expected));
            let found = numbers(t);
            assert_eq!(found.len(), NEEDLE_PAIRS, "every value is in the prompt");
            assert!(found.contains(&item.expected));
            // The question names the pair whose value is expected.
            let q = t
                .rsplit("What is the secret number of the ")
                .next()
                .unwrap();
            let name = q.split('?').next().unwrap();
            assert!(t.contains(&format!(
                "The secret number of the {name} is {}.",
                item.expected
            )));
            assert!(grade(&item.grader, &item.expected, &item.expected).correct);
        }
    }

    #[test]
    fn arithmetic_answers_are_exact() {
        let sizer = Sizer::new(None);
        let items = arithmetic(3, 9, &sizer);
        assert_eq!(items.len(), 9);
        for item in &items {
            let n = numbers(text(item));
            let (a, b): (i64, i64) = (n[0].parse().unwrap(), n[1].parse().unwrap());
            let t = text(item);
            let want = if t.contains(" + ") {
                a + b
            } else if t.contains(" - ") {
                a - b
            } else {
                a * b
            };
            assert_eq!(item.expected, want.to_string(), "{t}");
            assert!(want > 0);
        }
        assert_eq!(items, arithmetic(3, 9, &sizer));
    }

    #[test]
    fn copy_strings_have_their_lengths() {
        let items = copy(5, 8, &Sizer::new(None));
        for (i, item) in items.iter().enumerate() {
            assert_eq!(item.expected.len(), COPY_LENGTHS[i % COPY_LENGTHS.len()]);
            assert!(text(item).ends_with(&item.expected));
            assert!(item.max_tokens as usize > item.expected.len());
        }
        assert_ne!(items[0].expected, items[4].expected);
    }

    #[test]
    fn per_cell_rounds_up() {
        assert_eq!(per_cell(20, 3, 5), 2);
        assert_eq!(per_cell(15, 3, 5), 1);
        assert_eq!(per_cell(1, 2, 2), 1);
    }
}
