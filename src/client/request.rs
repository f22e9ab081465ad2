//! Request bodies: sampling parameters are always explicit, and engine-specific fields are only
//! sent to the engine that understands them.

use serde_json::{json, Map, Value};

use super::{Endpoint, Engine};
use crate::workload::{message_text, Prompt, WorkItem};

/// Sampling parameters sent with every request.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Sampling {
    /// `max_tokens` unless the work item sets its own.
    pub max_tokens: u32,
    /// `temperature` (0 = greedy).
    pub temperature: f64,
    /// `top_p`.
    pub top_p: f64,
    /// `seed`, when set.
    pub seed: Option<u64>,
    /// Ask the server to ignore end-of-sequence (vLLM, llama.cpp), so output length is fixed.
    pub ignore_eos: bool,
    /// Ask for `logprobs` with this many alternatives (quality agreement), when set.
    pub top_logprobs: Option<u32>,
}

/// Everything that shapes the body besides the work item.
#[derive(Debug, Clone)]
pub struct BodySpec {
    /// Endpoint called.
    pub endpoint: Endpoint,
    /// Served model name.
    pub model: String,
    /// Detected or chosen engine.
    pub engine: Engine,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// Send `cache_prompt: false` to llama.cpp (prefix reuse off).
    pub no_prompt_cache: bool,
}

/// Builds the JSON body for one work item. `prefix` (the unique per-request prefix, possibly
/// empty) is put in front of the prompt text.
pub fn build_body(spec: &BodySpec, item: &WorkItem, prefix: &str) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(spec.model));
    match (spec.endpoint, &item.prompt) {
        (Endpoint::Completions, Prompt::Text(t)) => {
            body.insert("prompt".into(), json!(format!("{prefix}{t}")));
        }
        (Endpoint::Completions, Prompt::Messages(m)) => {
            // Validated earlier: messages need the chat endpoint. Join texts to stay total.
            let text: Vec<String> = m.iter().filter_map(message_text).collect();
            body.insert(
                "prompt".into(),
                json!(format!("{prefix}{}", text.join("\n"))),
            );
        }
        (Endpoint::Chat, Prompt::Text(t)) => {
            let text = format!("{prefix}{t}");
            let content = if item.images.is_empty() {
                json!(text)
            } else {
                let mut parts = vec![json!({"type": "text", "text": text})];
                for url in &item.images {
                    parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                }
                Value::Array(parts)
            };
            body.insert(
                "messages".into(),
                json!([{"role": "user", "content": content}]),
            );
        }
        (Endpoint::Chat, Prompt::Messages(m)) => {
            let mut msgs = m.clone();
            if !prefix.is_empty() {
                prepend_text(&mut msgs, prefix);
            }
            body.insert("messages".into(), Value::Array(msgs));
        }
    }
    let s = &spec.sampling;
    body.insert(
        "max_tokens".into(),
        json!(item.max_tokens.unwrap_or(s.max_tokens)),
    );
    body.insert("temperature".into(), json!(s.temperature));
    body.insert("top_p".into(), json!(s.top_p));
    if let Some(seed) = s.seed {
        body.insert("seed".into(), json!(seed));
    }
    if s.ignore_eos {
        body.insert("ignore_eos".into(), json!(true));
    }
    if let Some(k) = s.top_logprobs {
        match spec.endpoint {
            Endpoint::Chat => {
                body.insert("logprobs".into(), json!(true));
                body.insert("top_logprobs".into(), json!(k));
            }
            Endpoint::Completions => {
                body.insert("logprobs".into(), json!(k));
            }
        }
    }
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    if spec.engine == Engine::Llamacpp && spec.no_prompt_cache {
        body.insert("cache_prompt".into(), json!(false));
    }
    Value::Object(body)
}

/// Puts `prefix` in front of the first message's text (a system or user message alike).
fn prepend_text(msgs: &mut [Value], prefix: &str) {
    let Some(first) = msgs.first_mut() else {
        return;
    };
    match first.get_mut("content") {
        Some(Value::String(s)) => *s = format!("{prefix}{s}"),
        Some(Value::Array(parts)) => parts.insert(0, json!({"type": "text", "text": prefix})),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(endpoint: Endpoint, engine: Engine) -> BodySpec {
        BodySpec {
            endpoint,
            model: "m".into(),
            engine,
            sampling: Sampling {
                max_tokens: 16,
                temperature: 0.0,
                top_p: 1.0,
                seed: Some(7),
                ignore_eos: true,
                top_logprobs: None,
            },
            no_prompt_cache: true,
        }
    }

    #[test]
    fn chat_body_has_explicit_sampling_and_usage() {
        let item = WorkItem::text("hello");
        let b = build_body(&spec(Endpoint::Chat, Engine::Vllm), &item, "[x] ");
        assert_eq!(b["messages"][0]["content"], "[x] hello");
        assert_eq!(b["max_tokens"], 16);
        assert_eq!(b["temperature"], 0.0);
        assert_eq!(b["top_p"], 1.0);
        assert_eq!(b["seed"], 7);
        assert_eq!(b["ignore_eos"], true);
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert!(
            b.get("cache_prompt").is_none(),
            "only llama.cpp gets cache_prompt"
        );
    }

    #[test]
    fn llamacpp_gets_cache_prompt_false() {
        let item = WorkItem::text("hello");
        let b = build_body(&spec(Endpoint::Completions, Engine::Llamacpp), &item, "");
        assert_eq!(b["prompt"], "hello");
        assert_eq!(b["cache_prompt"], false);
    }

    #[test]
    fn images_become_content_parts_and_item_max_tokens_wins() {
        let mut item = WorkItem::text("what is this?");
        item.images = vec!["data:image/png;base64,AAAA".into()];
        item.max_tokens = Some(3);
        let b = build_body(&spec(Endpoint::Chat, Engine::Vllm), &item, "");
        assert_eq!(b["messages"][0]["content"][0]["type"], "text");
        assert_eq!(
            b["messages"][0]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );
        assert_eq!(b["max_tokens"], 3);
    }

    #[test]
    fn messages_get_prefix_on_first_message() {
        let item = WorkItem {
            prompt: Prompt::Messages(vec![
                json!({"role": "system", "content": "be brief"}),
                json!({"role": "user", "content": "hi"}),
            ]),
            ..WorkItem::text("")
        };
        let b = build_body(&spec(Endpoint::Chat, Engine::Vllm), &item, "[p] ");
        assert_eq!(b["messages"][0]["content"], "[p] be brief");
        assert_eq!(b["messages"][1]["content"], "hi");
    }
}
