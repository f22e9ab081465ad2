//! Decoding of one SSE event's data into what the measurement needs.
//!
//! OpenAI-compatible servers differ in small ways (see docs/metrics.md and DOMAIN facts): a
//! role-only first chunk whose `content` is `""` or `null` is not a token; reasoning arrives in
//! `delta.reasoning` or `delta.reasoning_content`; usage may come in a last chunk with empty
//! `choices` or on the finish chunk itself; llama.cpp adds `timings`; errors may arrive inside the
//! stream as `{"error": {...}}` or vLLM's `{"object": "error", "message": ...}`.

use serde::{Deserialize, Serialize};

/// Token usage as counted by the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens counted by the server.
    pub prompt_tokens: Option<u64>,
    /// Output tokens counted by the server (reasoning included).
    pub completion_tokens: Option<u64>,
    /// Reasoning tokens, when the server breaks them out.
    pub reasoning_tokens: Option<u64>,
}

/// What one event carried.
#[derive(Debug, Default, PartialEq)]
pub struct ChunkInfo {
    /// Answer text in this chunk (chat `delta.content` or completions `text`), if non-empty.
    pub content: Option<String>,
    /// Reasoning text in this chunk (`delta.reasoning` or `delta.reasoning_content`), if non-empty.
    pub reasoning: Option<String>,
    /// `finish_reason` of the first choice, when set.
    pub finish_reason: Option<String>,
    /// Usage, when this chunk carries it.
    pub usage: Option<Usage>,
    /// Whether the chunk had llama.cpp `timings`.
    pub has_timings: bool,
}

/// The meaning of one SSE event.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// `[DONE]`.
    Done,
    /// A normal chunk.
    Chunk(ChunkInfo),
    /// An error object inside the stream, with its message.
    Error(String),
    /// Data that is not a JSON object we understand.
    Malformed,
}

#[derive(Deserialize)]
struct RawChunk {
    #[serde(default)]
    choices: Option<Vec<RawChoice>>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    timings: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct RawChoice {
    #[serde(default)]
    delta: Option<RawDelta>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct RawDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens_details: Option<RawDetails>,
}

#[derive(Deserialize)]
struct RawDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// Decodes one event's data.
pub fn decode(data: &[u8]) -> Event {
    let trimmed = data.trim_ascii();
    if trimmed == b"[DONE]" {
        return Event::Done;
    }
    let raw: RawChunk = match serde_json::from_slice(trimmed) {
        Ok(r) => r,
        Err(_) => return Event::Malformed,
    };
    if let Some(err) = raw.error {
        let msg = match &err {
            serde_json::Value::Object(o) => o
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| err.to_string()),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return Event::Error(msg);
    }
    if raw.object.as_deref() == Some("error") {
        return Event::Error(raw.message.unwrap_or_else(|| "error".to_owned()));
    }
    let mut info = ChunkInfo {
        has_timings: raw.timings.is_some(),
        ..ChunkInfo::default()
    };
    if let Some(u) = raw.usage {
        info.usage = Some(Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            reasoning_tokens: u.completion_tokens_details.and_then(|d| d.reasoning_tokens),
        });
    }
    if let Some(choice) = raw.choices.and_then(|c| c.into_iter().next()) {
        info.finish_reason = choice.finish_reason;
        if let Some(d) = choice.delta {
            info.content = non_empty(d.content);
            info.reasoning = non_empty(d.reasoning).or_else(|| non_empty(d.reasoning_content));
        }
        if info.content.is_none() {
            info.content = non_empty(choice.text);
        }
    }
    Event::Chunk(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(s: &str) -> ChunkInfo {
        match decode(s.as_bytes()) {
            Event::Chunk(c) => c,
            other => panic!("expected a chunk, got {other:?}"),
        }
    }

    #[test]
    fn vllm_role_chunk_is_not_a_token() {
        let c = chunk(
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
        );
        assert_eq!(c.content, None);
        assert_eq!(c.reasoning, None);
    }

    #[test]
    fn llamacpp_null_role_chunk_is_not_a_token() {
        let c = chunk(
            r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"object":"chat.completion.chunk"}"#,
        );
        assert_eq!(c.content, None);
    }

    #[test]
    fn reasoning_in_either_field() {
        assert_eq!(
            chunk(r#"{"choices":[{"delta":{"reasoning":"hm"}}]}"#).reasoning,
            Some("hm".into())
        );
        assert_eq!(
            chunk(r#"{"choices":[{"delta":{"reasoning_content":"hm","content":null}}]}"#).reasoning,
            Some("hm".into())
        );
    }

    #[test]
    fn usage_only_chunk_with_empty_choices() {
        let c = chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"completion_tokens_details":{"reasoning_tokens":2}}}"#,
        );
        assert_eq!(c.content, None);
        assert_eq!(c.finish_reason, None);
        assert_eq!(
            c.usage,
            Some(Usage {
                prompt_tokens: Some(12),
                completion_tokens: Some(5),
                reasoning_tokens: Some(2)
            })
        );
    }

    #[test]
    fn llamacpp_completion_finish_chunk_with_usage_and_timings() {
        let c = chunk(
            r#"{"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],"id":"chatcmpl-x","object":"text_completion","usage":{"completion_tokens":8,"prompt_tokens":20,"total_tokens":28},"timings":{"prompt_n":20,"predicted_n":8}}"#,
        );
        assert_eq!(c.content, None);
        assert_eq!(c.finish_reason.as_deref(), Some("length"));
        assert_eq!(c.usage.unwrap().completion_tokens, Some(8));
        assert!(c.has_timings);
    }

    #[test]
    fn completion_text_is_content() {
        assert_eq!(
            chunk(r#"{"choices":[{"text":" hi","finish_reason":null}]}"#).content,
            Some(" hi".into())
        );
    }

    #[test]
    fn errors_in_stream() {
        assert_eq!(
            decode(br#"{"error":{"message":"boom","type":"InternalServerError","code":500}}"#),
            Event::Error("boom".into())
        );
        assert_eq!(
            decode(br#"{"object":"error","message":"bad","type":"BadRequestError","code":400}"#),
            Event::Error("bad".into())
        );
    }

    #[test]
    fn done_and_malformed() {
        assert_eq!(decode(b"[DONE]"), Event::Done);
        assert_eq!(decode(b" [DONE] "), Event::Done);
        assert_eq!(decode(b"{not json"), Event::Malformed);
        assert_eq!(decode(b"[1,2]"), Event::Malformed);
        assert_eq!(decode(b""), Event::Malformed);
    }
}
