//! Decoding of one SSE event's data into what the measurement needs.
//!
//! OpenAI-compatible servers differ in small ways (see docs/metrics.md and DOMAIN facts): a
//! role-only first chunk whose `content` is `""` or `null` is not a token; reasoning arrives in
//! `delta.reasoning` or `delta.reasoning_content`; usage may come in a last chunk with empty
//! `choices` or on the finish chunk itself; llama.cpp adds `timings`; errors may arrive inside the
//! stream as `{"error": {...}}` or vLLM's `{"object": "error", "message": ...}`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Token usage as counted by the server (defined with the record that keeps it).
pub use crate::record::Usage;

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
    /// Per-token log-probabilities of the first choice, when the server sent them.
    pub logprobs: Vec<TokenLogprob>,
}

/// One alternative at an output position: a token and its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// Token text as the server spells it.
    pub token: String,
    /// Natural-log probability.
    pub logprob: f64,
}

/// The log-probability of one output token and the server's top alternatives at its position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token that was produced.
    pub token: String,
    /// Its natural-log probability.
    pub logprob: f64,
    /// The top alternatives the server returned (it may include the token itself).
    #[serde(default)]
    pub top: Vec<TopLogprob>,
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

// The raw chunk borrows its strings from the event's data: a token's text is only copied
// when it has JSON escapes or when the caller keeps text (`ChunkRef::into_owned`). Of the
// `choices` array only the first element is read, without allocating a vector.
#[derive(Deserialize)]
struct RawChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<FirstChoice<'a>>,
    #[serde(default)]
    usage: Option<RawUsage>,
    #[serde(default)]
    timings: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default, borrow)]
    object: Option<Text<'a>>,
    #[serde(default, borrow)]
    message: Option<Text<'a>>,
}

/// A string borrowed from the input when it has no escapes (serde's own `Cow<str>` impl always
/// copies when nested in an `Option`).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

fn text(t: Option<Text<'_>>) -> Option<Cow<'_, str>> {
    t.map(|t| t.0)
}

/// The first element of a JSON array (`None` for `[]`); the others are skipped.
struct FirstChoice<'a>(Option<RawChoice<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstChoice<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = FirstChoice<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<RawChoice<'a>>()?;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(FirstChoice(first))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct RawChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<RawDelta<'a>>,
    #[serde(default, borrow)]
    text: Option<Text<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Text<'a>>,
    /// Kept as a raw value: an unexpected shape must never make the chunk malformed.
    #[serde(default)]
    logprobs: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Text<'a>>,
    #[serde(default, borrow)]
    reasoning: Option<Text<'a>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Text<'a>>,
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

fn non_empty(s: Option<Cow<'_, str>>) -> Option<Cow<'_, str>> {
    s.filter(|s| !s.is_empty())
}

/// What one event carried, borrowed from the event's data where it can be: the streaming
/// loop's view of a chunk, which allocates nothing for a plain token.
#[derive(Debug, Default, PartialEq)]
pub struct ChunkRef<'a> {
    /// Answer text (chat `delta.content` or completions `text`), if non-empty.
    pub content: Option<Cow<'a, str>>,
    /// Reasoning text (`delta.reasoning` or `delta.reasoning_content`), if non-empty.
    pub reasoning: Option<Cow<'a, str>>,
    /// `finish_reason` of the first choice, when set.
    pub finish_reason: Option<Cow<'a, str>>,
    /// Usage, when this chunk carries it.
    pub usage: Option<Usage>,
    /// Whether the chunk had llama.cpp `timings`.
    pub has_timings: bool,
    /// The first choice's raw `logprobs`, when present (read with [`parse_logprobs`]).
    pub logprobs: Option<serde_json::Value>,
}

impl ChunkRef<'_> {
    /// The owned form.
    pub fn into_owned(self) -> ChunkInfo {
        ChunkInfo {
            content: self.content.map(Cow::into_owned),
            reasoning: self.reasoning.map(Cow::into_owned),
            finish_reason: self.finish_reason.map(Cow::into_owned),
            usage: self.usage,
            has_timings: self.has_timings,
            logprobs: self
                .logprobs
                .as_ref()
                .map(parse_logprobs)
                .unwrap_or_default(),
        }
    }
}

/// The meaning of one SSE event, borrowed from its data.
#[derive(Debug, PartialEq)]
pub enum EventRef<'a> {
    /// `[DONE]`.
    Done,
    /// A normal chunk.
    Chunk(ChunkRef<'a>),
    /// An error object inside the stream, with its message.
    Error(String),
    /// Data that is not a JSON object we understand.
    Malformed,
}

/// Decodes one event's data.
pub fn decode(data: &[u8]) -> Event {
    match decode_ref(data) {
        EventRef::Done => Event::Done,
        EventRef::Chunk(c) => Event::Chunk(c.into_owned()),
        EventRef::Error(m) => Event::Error(m),
        EventRef::Malformed => Event::Malformed,
    }
}

/// Decodes one event's data without copying its text where it can (a token's text is copied
/// only when it has JSON escapes): what the streaming loop uses.
pub fn decode_ref(data: &[u8]) -> EventRef<'_> {
    let trimmed = data.trim_ascii();
    if trimmed == b"[DONE]" {
        return EventRef::Done;
    }
    let raw: RawChunk = match serde_json::from_slice(trimmed) {
        Ok(r) => r,
        Err(_) => return EventRef::Malformed,
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
        return EventRef::Error(msg);
    }
    if raw.object.as_ref().map(|o| o.0.as_ref()) == Some("error") {
        return EventRef::Error(
            text(raw.message)
                .map(Cow::into_owned)
                .unwrap_or_else(|| "error".to_owned()),
        );
    }
    let mut info = ChunkRef {
        has_timings: raw.timings.is_some(),
        ..ChunkRef::default()
    };
    if let Some(u) = raw.usage {
        info.usage = Some(Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            reasoning_tokens: u.completion_tokens_details.and_then(|d| d.reasoning_tokens),
        });
    }
    if let Some(choice) = raw.choices.and_then(|c| c.0) {
        info.finish_reason = text(choice.finish_reason);
        if let Some(d) = choice.delta {
            info.content = non_empty(text(d.content));
            info.reasoning =
                non_empty(text(d.reasoning)).or_else(|| non_empty(text(d.reasoning_content)));
        }
        if info.content.is_none() {
            info.content = non_empty(text(choice.text));
        }
        info.logprobs = choice.logprobs;
    }
    EventRef::Chunk(info)
}

/// Reads a choice's `logprobs` in either wire shape: chat's `{"content": [{"token", "logprob",
/// "top_logprobs": [{"token", "logprob"}]}]}` (OpenAI, vLLM, llama.cpp), or the legacy
/// completions shape `{"tokens": [...], "token_logprobs": [...], "top_logprobs": [{tok: lp}]}`.
/// Anything else (including `null`) gives nothing.
pub fn parse_logprobs(v: &serde_json::Value) -> Vec<TokenLogprob> {
    use serde_json::Value;
    let num = |v: Option<&Value>| v.and_then(Value::as_f64);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    if let Some(Value::Array(content)) = v.get("content") {
        return content
            .iter()
            .filter_map(|t| {
                let top = match t.get("top_logprobs") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|alt| {
                            Some(TopLogprob {
                                token: text(alt.get("token"))?,
                                logprob: num(alt.get("logprob"))?,
                            })
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                Some(TokenLogprob {
                    token: text(t.get("token"))?,
                    logprob: num(t.get("logprob"))?,
                    top,
                })
            })
            .collect();
    }
    let (Some(Value::Array(tokens)), Some(Value::Array(lps))) =
        (v.get("tokens"), v.get("token_logprobs"))
    else {
        return Vec::new();
    };
    let tops = v.get("top_logprobs").and_then(Value::as_array);
    tokens
        .iter()
        .zip(lps)
        .enumerate()
        .filter_map(|(i, (t, lp))| {
            let mut top: Vec<TopLogprob> = tops
                .and_then(|a| a.get(i))
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| {
                            Some(TopLogprob {
                                token: k.clone(),
                                logprob: v.as_f64()?,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
            Some(TokenLogprob {
                token: t.as_str()?.to_owned(),
                logprob: lp.as_f64()?,
                top,
            })
        })
        .collect()
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
    fn chat_logprobs_with_top_alternatives() {
        let c = chunk(
            r#"{"choices":[{"delta":{"content":" Paris"},"logprobs":{"content":[{"token":" Paris","logprob":-0.1,"bytes":[32],"top_logprobs":[{"token":" Paris","logprob":-0.1},{"token":" Lyon","logprob":-2.5}]}]},"finish_reason":null}]}"#,
        );
        assert_eq!(c.content.as_deref(), Some(" Paris"));
        assert_eq!(c.logprobs.len(), 1);
        assert_eq!(c.logprobs[0].token, " Paris");
        assert_eq!(c.logprobs[0].logprob, -0.1);
        assert_eq!(c.logprobs[0].top.len(), 2);
        assert_eq!(c.logprobs[0].top[1].token, " Lyon");
    }

    #[test]
    fn legacy_completion_logprobs_and_odd_shapes() {
        let c = chunk(
            r#"{"choices":[{"text":" a b","logprobs":{"tokens":[" a"," b"],"token_logprobs":[-0.5,-1.0],"top_logprobs":[{" a":-0.5," c":-1.5},{" d":-0.9," b":-1.0}],"text_offset":[0,2]}}]}"#,
        );
        assert_eq!(c.logprobs.len(), 2);
        assert_eq!(c.logprobs[1].token, " b");
        // Alternatives are ordered by probability.
        assert_eq!(c.logprobs[1].top[0].token, " d");
        // A shape kvbench does not know, or null, is ignored and the chunk is still a token.
        let c = chunk(r#"{"choices":[{"text":"x","logprobs":{"weird":1}}]}"#);
        assert!(c.logprobs.is_empty());
        assert_eq!(c.content.as_deref(), Some("x"));
        let c = chunk(r#"{"choices":[{"text":"x","logprobs":[1,2]}]}"#);
        assert!(c.logprobs.is_empty());
    }

    #[test]
    fn decode_ref_borrows_plain_text_and_unescapes_the_rest() {
        let data = br#"{"object":"chat.completion.chunk","choices":[{"delta":{"content":" hi"},"finish_reason":null},{"delta":{"content":"second choice ignored"}}]}"#;
        match decode_ref(data) {
            EventRef::Chunk(c) => {
                assert!(matches!(c.content, Some(Cow::Borrowed(" hi"))));
                assert_eq!(c.finish_reason, None);
            }
            other => panic!("expected a chunk, got {other:?}"),
        }
        match decode_ref(br#"{"choices":[{"delta":{"content":"a\nb \u00e9"}}]}"#) {
            EventRef::Chunk(c) => assert_eq!(c.content.as_deref(), Some("a\nb é")),
            other => panic!("expected a chunk, got {other:?}"),
        }
        assert_eq!(decode_ref(br#"{"choices":{"x":1}}"#), EventRef::Malformed);
        assert_eq!(
            decode(br#"{"choices":[{"text":" t","finish_reason":"stop"}]}"#),
            Event::Chunk(ChunkInfo {
                content: Some(" t".into()),
                finish_reason: Some("stop".into()),
                ..ChunkInfo::default()
            })
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
