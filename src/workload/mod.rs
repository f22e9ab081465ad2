//! What is sent: prompt sources (synthetic text at a target length, JSONL, ShareGPT), images for
//! vision-language models, and the unique per-request prefix that keeps prefix caches cold.

pub mod arrivals;
pub mod images;
pub mod synthetic;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rand::SeedableRng;
use serde_json::Value;

pub use synthetic::TokenCounter;

/// A prompt: raw text (completions, or one user message for chat) or a list of chat messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Plain text.
    Text(String),
    /// OpenAI chat messages, sent as given.
    Messages(Vec<Value>),
}

/// One unit of work: a prompt and what goes with it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    /// The prompt.
    pub prompt: Prompt,
    /// Image data URLs to attach (chat only).
    pub images: Vec<String>,
    /// Per-item output limit (JSONL `max_tokens`, ShareGPT reference length).
    pub max_tokens: Option<u32>,
    /// Prompt tokens as counted by `--tokenizer`, or estimated without one.
    pub prompt_tokens_est: Option<u64>,
}

impl WorkItem {
    /// A plain-text item.
    pub fn text(s: &str) -> Self {
        Self {
            prompt: Prompt::Text(s.to_owned()),
            images: Vec::new(),
            max_tokens: None,
            prompt_tokens_est: None,
        }
    }
}

/// Where prompts come from (`--dataset`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DatasetSpec {
    /// Generated text at `--input-len` tokens.
    Synthetic,
    /// `{"prompt": ...}` or `{"messages": [...]}` per line, optional `max_tokens`.
    Jsonl {
        /// File path.
        path: PathBuf,
    },
    /// A ShareGPT JSON file (first human turn is the prompt; the reply's length sets max_tokens).
    Sharegpt {
        /// File path.
        path: PathBuf,
    },
}

impl std::str::FromStr for DatasetSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "synthetic" {
            return Ok(Self::Synthetic);
        }
        if let Some(p) = s.strip_prefix("jsonl:") {
            return Ok(Self::Jsonl { path: p.into() });
        }
        if let Some(p) = s.strip_prefix("sharegpt:") {
            return Ok(Self::Sharegpt { path: p.into() });
        }
        Err(format!(
            "unknown dataset {s:?}: expected synthetic, jsonl:PATH or sharegpt:PATH"
        ))
    }
}

/// Images attached to each request.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct ImageSpec {
    /// Images per request.
    pub count: u32,
    /// Generated image width in pixels (ignored with `files`).
    pub width: u32,
    /// Generated image height in pixels.
    pub height: u32,
    /// Image files to send instead of generated ones (cycled).
    pub files: Vec<PathBuf>,
}

/// Settings of the prompt source.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Prompt source.
    pub dataset: DatasetSpec,
    /// Target prompt length in tokens (synthetic).
    pub input_len: u32,
    /// Seed for prompts, prefixes and images.
    pub seed: u64,
    /// Put a unique random prefix in front of every prompt.
    pub unique_prefix: bool,
    /// Images per request, if any.
    pub images: Option<ImageSpec>,
}

/// A deterministic source of work items, indexed by request id.
pub struct Workload {
    spec: WorkloadSpec,
    tokenizer: Option<Arc<TokenCounter>>,
    items: Vec<WorkItem>,
    image_files: Vec<String>,
}

impl Workload {
    /// Loads datasets and image files; fails with a one-line cause on unreadable input.
    pub fn new(spec: WorkloadSpec, tokenizer: Option<Arc<TokenCounter>>) -> anyhow::Result<Self> {
        let items = match &spec.dataset {
            DatasetSpec::Synthetic => Vec::new(),
            DatasetSpec::Jsonl { path } => load_jsonl(path, tokenizer.as_deref())?,
            DatasetSpec::Sharegpt { path } => load_sharegpt(path, tokenizer.as_deref())?,
        };
        if !matches!(spec.dataset, DatasetSpec::Synthetic) && items.is_empty() {
            bail!("the dataset has no usable prompts");
        }
        let mut image_files = Vec::new();
        if let Some(img) = &spec.images {
            for f in &img.files {
                image_files.push(images::file_data_url(f)?);
            }
        }
        Ok(Self {
            spec,
            tokenizer,
            items,
            image_files,
        })
    }

    fn prefix_tokens(&self, prefix: &str) -> u64 {
        match &self.tokenizer {
            _ if prefix.is_empty() => 0,
            Some(t) => t.count(prefix) as u64,
            None => synthetic::PREFIX_TOKENS_EST,
        }
    }

    /// Whether any item carries chat messages (which need the chat endpoint).
    pub fn has_messages(&self) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i.prompt, Prompt::Messages(_)))
    }

    /// Number of distinct dataset items (0 for synthetic).
    pub fn dataset_len(&self) -> usize {
        self.items.len()
    }

    /// The work item for request `id` and its unique prefix (empty when turned off).
    /// Synthetic prompts are generated from `(seed, id)`; dataset items are cycled in order.
    pub fn item(&self, id: u64) -> (WorkItem, String) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(self.spec.seed, id));
        let prefix = if self.spec.unique_prefix {
            synthetic::unique_prefix(&mut rng)
        } else {
            String::new()
        };
        let mut item = match &self.spec.dataset {
            DatasetSpec::Synthetic => {
                let (text, n) = synthetic::text(
                    &mut rng,
                    self.spec.input_len,
                    &prefix,
                    self.tokenizer.as_deref(),
                );
                let mut it = WorkItem::text(&text);
                it.prompt_tokens_est = Some(n as u64);
                it
            }
            _ => {
                let mut it = self.items[(id as usize) % self.items.len()].clone();
                if let Some(n) = it.prompt_tokens_est.as_mut() {
                    *n += self.prefix_tokens(&prefix);
                }
                it
            }
        };
        if let Some(img) = &self.spec.images {
            for k in 0..img.count {
                if self.image_files.is_empty() {
                    item.images
                        .push(images::generated_data_url(&mut rng, img.width, img.height));
                } else {
                    let i =
                        (id as usize * img.count as usize + k as usize) % self.image_files.len();
                    item.images.push(self.image_files[i].clone());
                }
            }
        }
        (item, prefix)
    }
}

/// Splits a seed into independent per-request streams (SplitMix64 finaliser).
fn mix(seed: u64, id: u64) -> u64 {
    let mut z = seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The text of a chat message: its string content, or its text parts joined with spaces.
pub fn message_text(m: &Value) -> Option<String> {
    match m.get("content")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

fn count_prompt(prompt: &Prompt, tok: Option<&TokenCounter>) -> Option<u64> {
    let text = match prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Messages(m) => m
            .iter()
            .filter_map(message_text)
            .collect::<Vec<_>>()
            .join("\n"),
    };
    Some(match tok {
        Some(t) => t.count(&text) as u64,
        None => synthetic::approx_tokens(&text) as u64,
    })
}

/// Reads a JSONL prompt file: one object per non-empty line.
pub fn load_jsonl(path: &Path, tok: Option<&TokenCounter>) -> anyhow::Result<Vec<WorkItem>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read dataset {}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let lineno = i + 1;
        let v: Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{lineno}: not valid JSON: {e}", path.display()))?;
        let prompt = if let Some(p) = v.get("prompt") {
            match p {
                Value::String(s) => Prompt::Text(s.clone()),
                _ => bail!("{}:{lineno}: \"prompt\" must be a string", path.display()),
            }
        } else if let Some(m) = v.get("messages") {
            match m {
                Value::Array(a) if !a.is_empty() => Prompt::Messages(a.clone()),
                _ => bail!(
                    "{}:{lineno}: \"messages\" must be a non-empty array",
                    path.display()
                ),
            }
        } else {
            bail!(
                "{}:{lineno}: expected a \"prompt\" or \"messages\" field",
                path.display()
            );
        };
        let max_tokens = match v.get("max_tokens") {
            None | Some(Value::Null) => None,
            Some(m) => Some(
                m.as_u64()
                    .filter(|n| *n > 0 && *n <= u32::MAX as u64)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{}:{lineno}: \"max_tokens\" must be a positive integer",
                            path.display()
                        )
                    })? as u32,
            ),
        };
        let prompt_tokens_est = count_prompt(&prompt, tok);
        items.push(WorkItem {
            prompt,
            images: Vec::new(),
            max_tokens,
            prompt_tokens_est,
        });
    }
    Ok(items)
}

/// Reads a ShareGPT file: a JSON array of `{"conversations": [{"from", "value"}, ...]}`. The
/// first human turn is the prompt; the following assistant turn's length (in tokens) becomes the
/// item's `max_tokens`, as `vllm bench serve` does. Conversations without both are skipped.
pub fn load_sharegpt(path: &Path, tok: Option<&TokenCounter>) -> anyhow::Result<Vec<WorkItem>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read dataset {}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not valid JSON: {e}", path.display()))?;
    let Value::Array(convs) = v else {
        bail!("{}: expected a JSON array of conversations", path.display());
    };
    let mut items = Vec::new();
    for c in convs {
        let Some(Value::Array(turns)) = c.get("conversations") else {
            continue;
        };
        let mut human = None;
        let mut reply = None;
        for t in turns {
            let from = t.get("from").and_then(Value::as_str).unwrap_or("");
            let value = t.get("value").and_then(Value::as_str);
            match (from, value, human.is_some()) {
                ("human" | "user", Some(v), false) => human = Some(v.to_owned()),
                ("gpt" | "assistant", Some(v), true) => {
                    reply = Some(v.to_owned());
                    break;
                }
                _ => {}
            }
        }
        let (Some(h), Some(r)) = (human, reply) else {
            continue;
        };
        if h.trim().is_empty() {
            continue;
        }
        let out_len = match tok {
            Some(t) => t.count(&r),
            None => synthetic::approx_tokens(&r),
        }
        .max(1) as u32;
        let prompt = Prompt::Text(h);
        let prompt_tokens_est = count_prompt(&prompt, tok);
        items.push(WorkItem {
            prompt,
            images: Vec::new(),
            max_tokens: Some(out_len),
            prompt_tokens_est,
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spec(dataset: DatasetSpec, unique_prefix: bool) -> WorkloadSpec {
        WorkloadSpec {
            dataset,
            input_len: 100,
            seed: 1,
            unique_prefix,
            images: None,
        }
    }

    #[test]
    fn synthetic_is_reproducible_and_unique_per_request() {
        let w = Workload::new(spec(DatasetSpec::Synthetic, true), None).unwrap();
        let (a1, p1) = w.item(1);
        let (a1b, p1b) = w.item(1);
        let (a2, p2) = w.item(2);
        assert_eq!(a1, a1b);
        assert_eq!(p1, p1b);
        assert_ne!(p1, p2);
        assert_ne!(a1.prompt, a2.prompt);
        let est = a1.prompt_tokens_est.unwrap();
        assert!((90..=110).contains(&est), "estimate {est}");
    }

    #[test]
    fn no_prefix_when_turned_off() {
        let w = Workload::new(spec(DatasetSpec::Synthetic, false), None).unwrap();
        assert_eq!(w.item(3).1, "");
    }

    #[test]
    fn jsonl_prompts_messages_and_errors() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, r#"{{"prompt": "one", "max_tokens": 5}}"#).unwrap();
        writeln!(f).unwrap();
        writeln!(
            f,
            r#"{{"messages": [{{"role": "user", "content": "two"}}]}}"#
        )
        .unwrap();
        let items = load_jsonl(f.path(), None).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].max_tokens, Some(5));
        assert!(matches!(items[1].prompt, Prompt::Messages(_)));

        let mut bad = tempfile::NamedTempFile::new().unwrap();
        writeln!(bad, r#"{{"prompt": "ok"}}"#).unwrap();
        writeln!(bad, r#"{{"text": "no prompt"}}"#).unwrap();
        let err = load_jsonl(bad.path(), None).unwrap_err().to_string();
        assert!(err.contains(":2:"), "{err}");
        let mut bad2 = tempfile::NamedTempFile::new().unwrap();
        writeln!(bad2, "{{oops").unwrap();
        let err = load_jsonl(bad2.path(), None).unwrap_err().to_string();
        assert!(err.contains(":1: not valid JSON"), "{err}");
    }

    #[test]
    fn sharegpt_takes_first_human_turn_and_reply_length() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        write!(
            f,
            r#"[{{"conversations": [{{"from": "human", "value": "hi there"}}, {{"from": "gpt", "value": "one two three four"}}]}},
               {{"conversations": [{{"from": "human", "value": "alone"}}]}}]"#
        )
        .unwrap();
        let items = load_sharegpt(f.path(), None).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].prompt, Prompt::Text("hi there".into()));
        // "one two three four" is 18 characters: ceil(18 / 4) = 5 estimated tokens.
        assert_eq!(items[0].max_tokens, Some(5));
    }

    #[test]
    fn dataset_spec_parsing() {
        assert_eq!(
            "synthetic".parse::<DatasetSpec>(),
            Ok(DatasetSpec::Synthetic)
        );
        assert_eq!(
            "jsonl:a.jsonl".parse::<DatasetSpec>(),
            Ok(DatasetSpec::Jsonl {
                path: "a.jsonl".into()
            })
        );
        assert!("csv:x".parse::<DatasetSpec>().is_err());
    }
}
