//! The fast path of [`super::decode_ref`]: a scanner for the chunks servers send on every token.
//!
//! Why hand-written: serde_json spent about a microsecond per 250-byte token chunk walking and
//! skipping fields kvbench never reads (`id`, `model`, `created`, ...), a sizeable share of
//! the client's own user-space CPU per event (docs/performance.md). This scanner checks the
//! JSON grammar as it walks, takes only the fields the measurement needs, and gives up
//! (`None`) on anything that is not plain: escapes in a key, a `logprobs` or `error` value, an
//! `object` of `"error"`, a duplicate field, a number that is not a plain `u64` where one is
//! read, deep nesting, invalid UTF-8. The caller then runs the full serde decoder, so the
//! result is always the full decoder's; property tests in `chunk.rs` check that on every wire
//! variant and on random mutations of them.

use std::borrow::Cow;

use super::{non_empty, ChunkRef, Usage};

/// Nesting deeper than this is left to serde (whose own limit is 128).
const MAX_DEPTH: u32 = 64;

/// Bytes that end the plain run of a JSON string: `"`, `\\` and the control characters.
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The chunk, when `data` (trimmed, not `[DONE]`) is a plain JSON object the scanner reads
/// exactly as serde would; `None` otherwise.
pub(super) fn scan(data: &[u8]) -> Option<ChunkRef<'_>> {
    let text = std::str::from_utf8(data).ok()?;
    let mut s = Scanner {
        s: text,
        b: data,
        i: 0,
    };
    let chunk = s.chunk()?;
    s.ws();
    (s.i == data.len()).then_some(chunk)
}

struct Scanner<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

#[derive(Default)]
struct Choice<'a> {
    content: Option<Cow<'a, str>>,
    reasoning: Option<Cow<'a, str>>,
    reasoning_content: Option<Cow<'a, str>>,
    text: Option<Cow<'a, str>>,
    finish_reason: Option<Cow<'a, str>>,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// The top-level object.
    fn chunk(&mut self) -> Option<ChunkRef<'a>> {
        let mut info = ChunkRef::default();
        let mut choice: Option<Choice<'a>> = None;
        let mut seen = [false; 6];
        self.object(|s, key| {
            let slot = match key {
                "choices" => 0,
                "usage" => 1,
                "timings" => 2,
                "error" => 3,
                "object" => 4,
                "message" => 5,
                _ => return s.skip(0),
            };
            if std::mem::replace(&mut seen[slot], true) {
                return None; // serde: duplicate field
            }
            match slot {
                0 => {
                    if !s.null()? {
                        choice = s.choices()?;
                    }
                }
                1 => {
                    if !s.null()? {
                        info.usage = Some(s.usage()?);
                    }
                }
                2 => {
                    if !s.null()? {
                        s.skip(0)?;
                        info.has_timings = true;
                    }
                }
                // An error (in either shape) is for the full decoder.
                3 => {
                    if !s.null()? {
                        return None;
                    }
                }
                4 => {
                    if s.opt_str()?.is_some_and(|o| o == "error") {
                        return None;
                    }
                }
                _ => {
                    s.opt_str()?;
                }
            }
            Some(())
        })?;
        if let Some(c) = choice {
            info.finish_reason = c.finish_reason;
            info.content = non_empty(c.content);
            info.reasoning = non_empty(c.reasoning).or_else(|| non_empty(c.reasoning_content));
            if info.content.is_none() {
                info.content = non_empty(c.text);
            }
        }
        Some(info)
    }

    /// `[first, ...]`: the first choice (an object), the others skipped; `None` inside for `[]`.
    fn choices(&mut self) -> Option<Option<Choice<'a>>> {
        self.eat(b'[')?;
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(None);
        }
        let first = self.choice()?;
        loop {
            self.ws();
            match self.peek()? {
                b']' => {
                    self.i += 1;
                    return Some(Some(first));
                }
                b',' => {
                    self.i += 1;
                    self.skip(1)?;
                }
                _ => return None,
            }
        }
    }

    fn choice(&mut self) -> Option<Choice<'a>> {
        let mut c = Choice::default();
        let mut seen = [false; 4];
        self.object(|s, key| {
            let slot = match key {
                "delta" => 0,
                "text" => 1,
                "finish_reason" => 2,
                "logprobs" => 3,
                _ => return s.skip(1),
            };
            if std::mem::replace(&mut seen[slot], true) {
                return None;
            }
            match slot {
                0 => {
                    if !s.null()? {
                        s.delta(&mut c)?;
                    }
                }
                1 => c.text = s.opt_str()?,
                2 => c.finish_reason = s.opt_str()?,
                // Log-probabilities (asked only by quality runs) are for the full decoder.
                _ => {
                    if !s.null()? {
                        return None;
                    }
                }
            }
            Some(())
        })?;
        Some(c)
    }

    fn delta(&mut self, c: &mut Choice<'a>) -> Option<()> {
        let mut seen = [false; 3];
        self.object(|s, key| {
            let slot = match key {
                "content" => 0,
                "reasoning" => 1,
                "reasoning_content" => 2,
                _ => return s.skip(2),
            };
            if std::mem::replace(&mut seen[slot], true) {
                return None;
            }
            let v = s.opt_str()?;
            match slot {
                0 => c.content = v,
                1 => c.reasoning = v,
                _ => c.reasoning_content = v,
            }
            Some(())
        })
    }

    fn usage(&mut self) -> Option<Usage> {
        let mut u = Usage::default();
        let mut seen = [false; 3];
        self.object(|s, key| {
            let slot = match key {
                "prompt_tokens" => 0,
                "completion_tokens" => 1,
                "completion_tokens_details" => 2,
                _ => return s.skip(1),
            };
            if std::mem::replace(&mut seen[slot], true) {
                return None;
            }
            match slot {
                0 => u.prompt_tokens = s.opt_u64()?,
                1 => u.completion_tokens = s.opt_u64()?,
                _ => {
                    if !s.null()? {
                        let mut seen_r = false;
                        s.object(|s, key| {
                            if key != "reasoning_tokens" {
                                return s.skip(2);
                            }
                            if std::mem::replace(&mut seen_r, true) {
                                return None;
                            }
                            u.reasoning_tokens = s.opt_u64()?;
                            Some(())
                        })?;
                    }
                }
            }
            Some(())
        })?;
        Some(u)
    }

    /// An object; `field` reads each value (the scanner stands before it).
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            let key = self.plain_str()?;
            self.eat(b':')?;
            self.ws();
            field(self, key)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// `null` (consumed: `true`) or something else (not consumed: `false`).
    fn null(&mut self) -> Option<bool> {
        self.ws();
        if self.b[self.i..].starts_with(b"null") {
            self.i += 4;
            Some(true)
        } else {
            self.peek().map(|_| false)
        }
    }

    /// A string or `null`; anything else gives up (serde: invalid type).
    fn opt_str(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.null()? {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// A non-negative integer that fits `u64`, or `null`.
    fn opt_u64(&mut self) -> Option<Option<u64>> {
        if self.null()? {
            return Some(None);
        }
        let start = self.i;
        self.number()?;
        let digits = &self.s[start..self.i];
        // `-1`, `1.0` and `1e3` are not u64 to serde: the full decoder says so.
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Some)
    }

    /// The index of the first `"`, `\\` or control character at or after `from` (or the end):
    /// a plain loop, faster than `memchr` on the short strings of a chunk.
    fn string_stop(&self, from: usize) -> usize {
        let mut j = from;
        while j < self.b.len() && !STRING_STOP[self.b[j] as usize] {
            j += 1;
        }
        j
    }

    /// A string without escapes, borrowed (keys; an escaped key is left to serde).
    fn plain_str(&mut self) -> Option<&'a str> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let end = self.string_stop(start);
        if self.b.get(end) != Some(&b'"') {
            return None;
        }
        self.i = end + 1;
        Some(&self.s[start..end])
    }

    /// A string value: borrowed without escapes, unescaped by serde_json with them.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i;
        let escaped = self.skip_string()?;
        let literal = &self.s[start..self.i];
        if escaped {
            serde_json::from_str::<String>(literal).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(&literal[1..literal.len() - 1]))
        }
    }

    /// Moves past a string, checking it as serde does; `Some(true)` when it had escapes.
    fn skip_string(&mut self) -> Option<bool> {
        self.i += 1;
        let mut escaped = false;
        loop {
            let j = self.string_stop(self.i);
            match self.b.get(j)? {
                b'"' => {
                    self.i = j + 1;
                    return Some(escaped);
                }
                b'\\' => self.i = j + 1,
                _ => return None, // a control character: invalid JSON
            }
            escaped = true;
            match self.peek()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                b'u' => {
                    let hex = self.b.get(self.i + 1..self.i + 5)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    self.i += 5;
                }
                _ => return None,
            }
        }
    }

    /// A JSON number, checked against the grammar.
    fn number(&mut self) -> Option<()> {
        let digits = |s: &mut Self| {
            let start = s.i;
            while s.peek().is_some_and(|c| c.is_ascii_digit()) {
                s.i += 1;
            }
            (s.i > start).then_some(())
        };
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        if self.peek()? == b'0' {
            self.i += 1;
        } else {
            digits(self)?;
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            digits(self)?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            digits(self)?;
        }
        Some(())
    }

    /// Moves past any JSON value, checking it.
    fn skip(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'"' => self.skip_string().map(|_| ()),
            b'{' => {
                self.i += 1;
                self.ws();
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    if self.peek()? != b'"' {
                        return None;
                    }
                    self.skip_string()?;
                    self.eat(b':')?;
                    self.skip(depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.skip(depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }
}
