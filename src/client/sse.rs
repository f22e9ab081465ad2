//! Incremental Server-Sent Events parser.
//!
//! Why not an SSE crate: kvbench needs the arrival instant of the network read that completed
//! each event (that instant *is* the token timestamp), byte-level input that may split anywhere
//! (inside a UTF-8 sequence, between `\r` and `\n`), and a hot path without per-event
//! allocations beyond the event's own data. The parser is small and covered by property tests
//! that split the same stream at arbitrary byte boundaries.
//!
//! Accepted: LF, CRLF and lone CR line ends; `:` comment lines; `data:` with or without the
//! single leading space; several `data:` lines joined with `\n`; other fields (`event:`, `id:`,
//! `retry:`) are ignored. At end of input, a pending event without its terminating blank line is
//! still delivered (servers that close right after the last `data:` line exist).
//!
//! A line or an event longer than the parser's limit ([`MAX_EVENT_BYTES`] unless set) is not
//! buffered: the parser stops, [`SseParser::too_large`] says so, and the caller ends the
//! request as `response_too_large`. A server decides what it sends; the parser's memory must
//! not follow it.

use super::body::MAX_EVENT_BYTES;

/// Incremental SSE parser: feed bytes with [`SseParser::push`], receive each event's `data`.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the current, not yet terminated line.
    line: Vec<u8>,
    /// Data of the current event (lines joined with `\n`).
    data: Vec<u8>,
    /// Whether the current event has at least one `data` field.
    has_data: bool,
    /// The previous byte was a `\r`: a following `\n` belongs to the same line end.
    after_cr: bool,
    /// Bytes that were neither in a complete line nor consumed: for diagnostics of non-SSE bodies.
    total_bytes: u64,
    /// Longest line, and largest event data, accepted.
    limit: usize,
    /// A line or an event went over `limit`: input is no longer read.
    too_large: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_limit(MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A new parser with no pending input, accepting lines and events up to
    /// [`MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A new parser accepting lines and events of at most `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            after_cr: false,
            total_bytes: 0,
            limit,
            too_large: false,
        }
    }

    /// Whether a line or an event went over the limit; the parser then ignores all input.
    pub fn too_large(&self) -> bool {
        self.too_large
    }

    /// Total bytes fed so far.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Feeds `input`; calls `on_event` with the data of each event it completes.
    pub fn push(&mut self, mut input: &[u8], on_event: &mut impl FnMut(&[u8])) {
        // An empty read between a `\r` and its `\n` must not forget the `\r` (found by
        // tests/fast/fuzz.rs: the `\n` then read as a blank line and split the event in two).
        if self.too_large || input.is_empty() {
            return;
        }
        self.total_bytes += input.len() as u64;
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = input.strip_prefix(b"\n") {
                input = rest;
            }
        }
        while !input.is_empty() {
            match memchr::memchr2(b'\n', b'\r', input) {
                Some(pos) => {
                    let is_cr = input[pos] == b'\r';
                    if self.line.is_empty() {
                        self.process_line(&input[..pos], on_event);
                    } else {
                        if self.line.len() + pos > self.limit {
                            self.too_large = true;
                            return;
                        }
                        self.line.extend_from_slice(&input[..pos]);
                        let line = std::mem::take(&mut self.line);
                        self.process_line(&line, on_event);
                        self.line = line;
                        self.line.clear();
                    }
                    if self.too_large {
                        return;
                    }
                    input = &input[pos + 1..];
                    if is_cr {
                        if input.is_empty() {
                            self.after_cr = true;
                        } else if input[0] == b'\n' {
                            input = &input[1..];
                        }
                    }
                }
                None => {
                    if self.line.len() + input.len() > self.limit {
                        self.too_large = true;
                        return;
                    }
                    self.line.extend_from_slice(input);
                    break;
                }
            }
        }
    }

    /// Ends the input: delivers a pending line and event, if any.
    pub fn finish(&mut self, on_event: &mut impl FnMut(&[u8])) {
        if self.too_large {
            return;
        }
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, on_event);
        }
        self.dispatch(on_event);
        self.after_cr = false;
    }

    /// Whether bytes are pending that do not form a complete line or event.
    pub fn has_pending(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn process_line(&mut self, line: &[u8], on_event: &mut impl FnMut(&[u8])) {
        if line.len() > self.limit {
            self.too_large = true;
            return;
        }
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if field == b"data" {
            if self.data.len() + usize::from(self.has_data) + value.len() > self.limit {
                self.too_large = true;
                return;
            }
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&[u8])) {
        if self.has_data {
            on_event(&self.data);
            self.data.clear();
            self.has_data = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<String> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut |d| {
                out.push(String::from_utf8_lossy(d).into_owned())
            });
        }
        p.finish(&mut |d| out.push(String::from_utf8_lossy(d).into_owned()));
        out
    }

    #[test]
    fn lf_crlf_cr_comments_and_no_space() {
        let s = b": keep-alive\n\ndata: {\"a\":1}\n\ndata:{\"b\":2}\r\n\r\ndata: x\rdata: y\r\r: c\r\ndata: [DONE]\n\n";
        assert_eq!(
            parse_all(&[s]),
            vec!["{\"a\":1}", "{\"b\":2}", "x\ny", "[DONE]"]
        );
    }

    #[test]
    fn other_fields_ignored_and_trailing_event_delivered() {
        let s = b"event: message\nid: 3\nretry: 10\ndata: one\n\ndata: tail";
        assert_eq!(parse_all(&[s]), vec!["one", "tail"]);
    }

    #[test]
    fn crlf_split_between_cr_and_lf() {
        assert_eq!(
            parse_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]),
            vec!["a", "b"]
        );
    }

    #[test]
    fn lines_and_events_over_the_limit_stop_the_parser() {
        let run = |chunks: &[&[u8]]| {
            let mut p = SseParser::with_limit(16);
            let mut out = Vec::new();
            for c in chunks {
                p.push(c, &mut |d| out.push(d.to_vec()));
            }
            p.finish(&mut |d| out.push(d.to_vec()));
            (out, p.too_large())
        };
        // Exactly at the limit is fine, split or whole.
        let ok = b"data: 0123456789\n\n";
        assert_eq!(run(&[ok]), (vec![b"0123456789".to_vec()], false));
        assert!(!run(&[&ok[..5], &ok[5..]]).1);
        // A line without end, whole or in pieces.
        assert!(run(&[b"data: 0123456789abcdef"]).1);
        assert!(run(&[b"data: 01234", b"56789", b"abcdef"]).1);
        // An event of many short lines.
        let (events, big) = run(&[b"data: aaaa\ndata: bbbb\ndata: cccc\ndata: dddd\n\n"]);
        assert!(big && events.is_empty());
        // Events before the overflow are delivered; nothing after it is read.
        let (events, big) = run(&[b"data: a\n\ndata: xxxxxxxxxxxxxxxxxxxxxxx\n\ndata: b\n\n"]);
        assert_eq!((events, big), (vec![b"a".to_vec()], true));
    }

    #[test]
    fn an_empty_read_between_cr_and_lf_keeps_one_line_end() {
        assert_eq!(
            parse_all(&[b"data: a\r", b"", b"\ndata: b\r\n\r\n"]),
            vec!["a\nb"]
        );
    }

    #[test]
    fn empty_data_line_is_an_event() {
        assert_eq!(parse_all(&[b"data:\n\n"]), vec![""]);
    }

    fn stream_strategy() -> impl Strategy<Value = Vec<u8>> {
        let event = (
            "[ -~]{0,40}",
            prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(payload, eol, space, comment)| {
                let mut s = String::new();
                if comment {
                    s.push_str(": ping");
                    s.push_str(eol);
                }
                s.push_str(if space { "data: " } else { "data:" });
                s.push_str(payload.trim_start_matches(' '));
                s.push_str(eol);
                s.push_str(eol);
                s.into_bytes()
            });
        prop::collection::vec(event, 0..20).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn split_anywhere_parses_the_same(stream in stream_strategy(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
            let whole = parse_all(&[&stream]);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&stream[last..p]);
                last = p;
            }
            chunks.push(&stream[last..]);
            prop_assert_eq!(parse_all(&chunks), whole);
        }

        #[test]
        fn byte_by_byte_parses_the_same(stream in stream_strategy()) {
            let whole = parse_all(&[&stream]);
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(parse_all(&bytes), whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), cut in any::<prop::sample::Index>()) {
            let c = cut.index(bytes.len() + 1);
            let _ = parse_all(&[&bytes[..c], &bytes[c..]]);
        }
    }
}
