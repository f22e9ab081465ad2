//! Fuzz targets for what a server (or its log) controls, run for a bounded time with every
//! `cargo test` (issue 19): the SSE parser and chunk decoder, the lean HTTP/1.1 reader (head
//! parser, chunked decoder, and the whole stream loop over a real socket), and the log
//! scanner. Inputs are generated near the valid wire formats, then mutated byte by byte, and
//! split at arbitrary points, so that the paths behind the first byte check are reached.
//!
//! Each target runs `KVBENCH_FUZZ_CASES` cases (default: 6 to 10 s per target in the debug test
//! build on an idle 2-core machine, so under 30 s on a busy one). To fuzz longer by hand:
//!
//! ```text
//! KVBENCH_FUZZ_CASES=200000 cargo test --release --test fast fuzz:: -- --nocapture
//! ```
//!
//! Each run draws new inputs from a new seed, printed first (`KVBENCH_FUZZ_SEED=N` replays a
//! run); a failing case is shrunk by proptest and printed whole: add it to the unit tests of
//! the module it broke.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvbench::client::chunk::{decode_ref, EventRef};
use kvbench::client::h1::{parse_head, Chunked};
use kvbench::client::sse::SseParser;
use kvbench::logscan::{self, Catalog, Scanner};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Cases per target: `KVBENCH_FUZZ_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("KVBENCH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> Config {
    Config {
        cases: cases(default),
        // Shrinking a failure can take long; CI only needs the failure.
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Runs `test` on `cases` inputs of `strategy`, then prints what ran (`--nocapture` shows it).
fn fuzz<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    // One target at a time, and never beside a test that compares measured speeds.
    let _cpu = crate::common::cpu_bound_lock();
    let cfg = config(default_cases);
    let n = cfg.cases;
    let mut runner = TestRunner::new_with_rng(
        cfg,
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &seed(),
        ),
    );
    let t0 = Instant::now();
    let ran = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&strategy, |v| {
        ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        test(v)
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!(
        "fuzz {name}: {} cases (of {n} asked) in {:.1} s",
        ran.into_inner(),
        t0.elapsed().as_secs_f64()
    );
}

/// How often each kind of case came up in a target: printed after it, to show that the
/// inputs reach past the first checks (complete heads, token events, catalogued warnings).
#[derive(Default)]
struct Tally(Mutex<std::collections::BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, what: impl Into<String>) {
        *self.0.lock().unwrap().entry(what.into()).or_default() += 1;
    }
    fn print(&self, name: &str) {
        let t = self.0.lock().unwrap();
        let parts: Vec<String> = t.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!("fuzz {name}: {}", parts.join(", "));
    }
}

/// A new seed per run (`KVBENCH_FUZZ_SEED` to replay one), printed so a failure can be rerun.
fn seed() -> [u8; 32] {
    let s: u64 = std::env::var("KVBENCH_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("fuzz seed: KVBENCH_FUZZ_SEED={s}");
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (s >> ((i % 8) * 8)) as u8 ^ i as u8;
    }
    out
}

// ---- shared generators ----

/// Text a server might put in a token: ASCII, any Unicode, JSON's special characters,
/// control characters (serde escapes them on the wire).
fn token_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ -~]{0,12}",
        2 => prop::collection::vec(any::<char>(), 0..8).prop_map(String::from_iter),
        1 => Just("\"\\\n\t\u{1b}[2J".to_owned()),
        1 => Just(String::new()),
    ]
}

/// One SSE event's data, near what servers send.
fn event_data() -> impl Strategy<Value = String> {
    use serde_json::json;
    prop_oneof![
        6 => token_text().prop_map(|t| json!({"choices": [{"index": 0, "delta": {"content": t}}]}).to_string()),
        2 => token_text().prop_map(|t| json!({"choices": [{"index": 0, "delta": {"reasoning_content": t}}]}).to_string()),
        1 => token_text().prop_map(|t| json!({"choices": [{"index": 0, "delta": {"reasoning": t, "content": null}}]}).to_string()),
        1 => token_text().prop_map(|t| json!({"choices": [{"index": 0, "text": t, "logprobs": null, "finish_reason": null}]}).to_string()),
        1 => Just(json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}).to_string()),
        1 => (any::<u32>(), any::<u64>()).prop_map(|(p, c)| json!({"choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c}}).to_string()),
        1 => prop_oneof![Just("stop"), Just("length"), Just("\u{1b}x")].prop_map(|f| json!({"choices": [{"index": 0, "delta": {}, "finish_reason": f}], "timings": {"predicted_n": 3}}).to_string()),
        1 => token_text().prop_map(|t| json!({"error": {"message": t, "code": 500}}).to_string()),
        1 => token_text().prop_map(|t| json!({"object": "error", "message": t}).to_string()),
        1 => Just("[DONE]".to_owned()),
        1 => "[ -~]{0,30}",
    ]
}

/// An SSE stream: events with any line end, comments, other fields, multi-line data, junk.
fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    let eol = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
    let piece = (
        prop_oneof![
            8 => event_data().prop_map(|d| format!("data: {d}")),
            1 => event_data().prop_map(|d| format!("data:{d}")),
            1 => (event_data(), event_data()).prop_map(|(a, b)| format!("data: {a}\ndata: {b}")),
            1 => Just(": keep-alive".to_owned()),
            1 => prop_oneof![Just("event: message"), Just("id: 7"), Just("retry: 100"), Just("data")].prop_map(str::to_owned),
            1 => prop::collection::vec(any::<u8>(), 0..24).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ],
        eol.clone(),
        eol,
        any::<bool>(),
    )
        .prop_map(|(line, e1, e2, blank)| {
            let mut s = line;
            s.push_str(e1);
            if blank {
                s.push_str(e2);
            }
            s.into_bytes()
        });
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

/// Up to `max` random edits (replace, insert, delete a byte) at random places.
fn mutated(input: impl Strategy<Value = Vec<u8>>, max: usize) -> impl Strategy<Value = Vec<u8>> {
    let edit = (0u8..3, any::<prop::sample::Index>(), any::<u8>());
    (input, prop::collection::vec(edit, 0..=max)).prop_map(|(mut bytes, edits)| {
        for (kind, at, b) in edits {
            let i = at.index(bytes.len() + 1);
            match kind {
                0 if i < bytes.len() => bytes[i] = b,
                1 => bytes.insert(i, b),
                _ if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => {}
            }
        }
        bytes
    })
}

/// `bytes` cut at the (sorted) points `cuts`.
fn split<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for p in points {
        out.push(&bytes[last..p]);
        last = p;
    }
    out.push(&bytes[last..]);
    out
}

// ---- target 1: SSE parser and chunk decoder ----

fn parse(pieces: &[&[u8]], limit: usize) -> (Vec<Vec<u8>>, bool) {
    let mut p = SseParser::with_limit(limit);
    let mut out = Vec::new();
    for piece in pieces {
        p.push(piece, &mut |d| out.push(d.to_vec()));
    }
    p.finish(&mut |d| out.push(d.to_vec()));
    (out, p.too_large())
}

#[test]
fn fuzz_sse_parser_and_chunk_decoder() {
    let tally = Tally::default();
    let limit = prop_oneof![Just(16usize), Just(200), Just(4096), Just(8 << 20)];
    let cuts = prop::collection::vec(any::<prop::sample::Index>(), 0..16);
    fuzz(
        "sse+chunk",
        40_000,
        (mutated(sse_stream(), 6), limit, cuts),
        |(stream, limit, cuts)| {
            let whole = parse(&[&stream], limit);
            prop_assert_eq!(&parse(&split(&stream, &cuts), limit), &whole);
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(&parse(&bytes, limit), &whole);
            if whole.1 {
                tally.add("streams over the limit");
            }
            for data in &whole.0 {
                prop_assert!(data.len() <= limit, "an event over the limit was delivered");
                let event = decode_ref(data);
                tally.add(match &event {
                    EventRef::Done => "done",
                    EventRef::Error(_) => "error events",
                    EventRef::Malformed => "malformed events",
                    EventRef::Chunk(c) if c.content.is_some() || c.reasoning.is_some() => {
                        "token events"
                    }
                    EventRef::Chunk(_) => "other chunks",
                });
                if let EventRef::Chunk(c) = event {
                    prop_assert!(c.content.as_deref().is_none_or(|s| !s.is_empty()));
                    prop_assert!(c.reasoning.as_deref().is_none_or(|s| !s.is_empty()));
                    let _ = c.into_owned();
                }
            }
            Ok(())
        },
    );
    tally.print("sse+chunk");
}

// ---- target 2: the lean HTTP/1.1 reader, offline ----

/// A response head near what servers send: interim answers, framing headers in many forms
/// (valid, duplicated, conflicting, malformed), LF or CRLF line ends.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let header = prop_oneof![
        3 => (0u64..100_000).prop_map(|n| format!("Content-Length: {n}")),
        1 => Just("Content-Length: 5, 5".to_owned()),
        1 => Just("content-length: -1".to_owned()),
        1 => Just("Content-Length: 18446744073709551616".to_owned()),
        3 => prop_oneof![Just("chunked"), Just("gzip, chunked"), Just("chunked, gzip"), Just("CHUNKED"), Just("")].prop_map(|v| format!("Transfer-Encoding: {v}")),
        2 => prop_oneof![Just("close"), Just("keep-alive"), Just("Keep-Alive, Upgrade"), Just("")].prop_map(|v| format!("Connection: {v}")),
        1 => "[ -~]{0,40}".prop_map(|v| format!("Location: {v}")),
        3 => ("[A-Za-z-]{1,12}", "[ -~]{0,30}").prop_map(|(k, v)| format!("{k}: {v}")),
        1 => prop::collection::vec(any::<u8>(), 0..20).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    let status = prop_oneof![
        12 => prop_oneof![Just(200u16), Just(204), Just(304), Just(307), Just(404), Just(500), Just(503)].prop_map(|c| format!("HTTP/1.1 {c} X")),
        1 => Just("HTTP/1.0 200 OK".to_owned()),
        1 => Just("HTTP/1.1 101 Switching".to_owned()),
        1 => "[ -~]{0,20}",
    ];
    (
        prop::collection::vec(prop_oneof![Just(100u16), Just(102), Just(103)], 0..3),
        status,
        prop::collection::vec(header, 0..8),
        prop_oneof![Just("\r\n"), Just("\n")],
    )
        .prop_map(|(interim, status, headers, eol)| {
            let mut s = String::new();
            for c in interim {
                s += &format!("HTTP/1.1 {c} Continue{eol}{eol}");
            }
            s += &status;
            s += eol;
            for h in headers {
                s += &h;
                s += eol;
            }
            s += eol;
            s.into_bytes()
        })
}

/// A chunked body of `payloads` (chunk sizes in either case, with extensions and trailers
/// sometimes, bare LF sometimes).
fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let chunk = (
        prop::collection::vec(any::<u8>(), 1..200),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    );
    (
        prop::collection::vec(chunk, 0..8),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(chunks, trailer, lf)| {
            let eol: &[u8] = if lf { b"\n" } else { b"\r\n" };
            let mut body = Vec::new();
            let mut payload = Vec::new();
            for (data, upper, ext, _) in &chunks {
                let size = if *upper {
                    format!("{:X}", data.len())
                } else {
                    format!("{:x}", data.len())
                };
                body.extend_from_slice(size.as_bytes());
                if *ext {
                    body.extend_from_slice(b";name=\"v\"");
                }
                body.extend_from_slice(eol);
                body.extend_from_slice(data);
                body.extend_from_slice(eol);
                payload.extend_from_slice(data);
            }
            body.extend_from_slice(b"0");
            body.extend_from_slice(eol);
            if trailer {
                body.extend_from_slice(b"X-Trailer: 1");
                body.extend_from_slice(eol);
            }
            body.extend_from_slice(eol);
            (body, payload)
        })
}

/// Decodes `pieces` in order, stopping at the end of the body or the first error: the
/// payload, whether the body ended, and the error.
fn dechunk(pieces: &[&[u8]]) -> (Vec<u8>, bool, Option<&'static str>) {
    let mut d = Chunked::default();
    let mut out = Vec::new();
    for p in pieces {
        if d.is_done() {
            break;
        }
        if let Err(e) = d.decode(p, &mut |b| out.extend_from_slice(b)) {
            return (out, false, Some(e));
        }
    }
    (out, d.is_done(), None)
}

#[test]
fn fuzz_http1_head_and_chunked_decoder() {
    let tally = Tally::default();
    let cuts = prop::collection::vec(any::<prop::sample::Index>(), 0..12);
    let prefixes = prop::collection::vec(any::<prop::sample::Index>(), 0..12);
    fuzz(
        "h1 head+chunked",
        100_000,
        (
            prop_oneof![2 => head(), 1 => mutated(head(), 3)],
            chunked_body(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cuts,
            prefixes,
        ),
        |(head, (body, payload), edits, cuts, prefixes)| {
            // The head: a complete head is never rejected when read in pieces (every shorter
            // prefix asks for more), and never claims more bytes than it was given.
            let parsed = parse_head(&head);
            tally.add(match &parsed {
                Ok(Some(_)) => "complete heads",
                Ok(None) => "partial heads",
                Err(_) => "rejected heads",
            });
            if let Ok(Some(h)) = parsed {
                prop_assert!(h.len <= head.len());
                for p in &prefixes {
                    let cut = p.index(h.len);
                    let got = parse_head(&head[..cut]);
                    prop_assert!(
                        matches!(got, Ok(None)),
                        "the prefix of {} bytes of a head of {} reads as {:?}",
                        cut,
                        h.len,
                        got.map(|o| o.map(|h| h.status))
                    );
                }
            }
            // The chunked decoder: a valid body gives its payload, split anywhere.
            let (out, done, err) = dechunk(&[&body]);
            prop_assert_eq!(&out, &payload);
            prop_assert!(done && err.is_none());
            prop_assert_eq!(dechunk(&split(&body, &cuts)), (payload.clone(), true, None));
            // A mutated body: the same answer whole, in pieces, and byte by byte.
            let mut bad = body.clone();
            for (at, b) in edits {
                let i = at.index(bad.len() + 1);
                if i < bad.len() {
                    bad[i] = b;
                } else {
                    bad.push(b);
                }
            }
            let whole = dechunk(&[&bad]);
            tally.add(match &whole {
                (_, true, _) => "mutated bodies read to their end",
                (_, _, Some(_)) => "mutated bodies rejected",
                _ => "mutated bodies cut short",
            });
            prop_assert_eq!(&dechunk(&split(&bad, &cuts)), &whole);
            let bytes: Vec<&[u8]> = bad.chunks(1).collect();
            prop_assert_eq!(&dechunk(&bytes), &whole);
            Ok(())
        },
    );
    tally.print("h1 head+chunked");
}

// ---- target 3: the whole stream loop over a real socket ----

/// A response as a server might send it: a head with some framing, an SSE body framed by it,
/// optionally mutated and cut short.
#[derive(Debug, Clone)]
struct Wire {
    bytes: Vec<u8>,
    /// The body as the stream loop should see it, when the response is well-formed.
    clean_body: Option<Vec<u8>>,
    /// Split points for the server's writes.
    writes: Vec<prop::sample::Index>,
}

fn wire() -> impl Strategy<Value = Wire> {
    (
        sse_stream(),
        0u8..3,
        prop::collection::vec(1usize..64, 1..6),
        prop_oneof![
            2 => Just(Vec::new()),
            1 => prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ],
        prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        prop_oneof![4 => Just(200u16), 1 => Just(500), 1 => Just(307)],
    )
        .prop_map(|(body, framing, sizes, edits, writes, status)| {
            let mut head = format!("HTTP/1.1 {status} X\r\nContent-Type: text/event-stream\r\n");
            let framed = match framing {
                0 => {
                    head += "Transfer-Encoding: chunked\r\n\r\n";
                    let mut out = Vec::new();
                    let mut rest: &[u8] = &body;
                    let mut k = 0;
                    while !rest.is_empty() {
                        let n = sizes[k % sizes.len()].min(rest.len());
                        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                        out.extend_from_slice(&rest[..n]);
                        out.extend_from_slice(b"\r\n");
                        rest = &rest[n..];
                        k += 1;
                    }
                    out.extend_from_slice(b"0\r\n\r\n");
                    out
                }
                1 => {
                    head += &format!("Content-Length: {}\r\n\r\n", body.len());
                    body.clone()
                }
                _ => {
                    head += "Connection: close\r\n\r\n";
                    body.clone()
                }
            };
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&framed);
            let clean = edits.is_empty() && status == 200;
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            Wire {
                bytes,
                clean_body: clean.then_some(body),
                writes,
            }
        })
}

/// Token events the stream loop should count in `body`: chunks with answer or reasoning
/// text, up to `[DONE]` or an error event.
fn expected_tokens(body: &[u8]) -> usize {
    let (events, _) = parse(&[body], 8 << 20);
    let mut n = 0;
    for e in &events {
        match decode_ref(e) {
            EventRef::Done | EventRef::Error(_) => break,
            EventRef::Chunk(c) if c.content.is_some() || c.reasoning.is_some() => n += 1,
            _ => {}
        }
    }
    n
}

/// A loopback server that answers every connection's first request with the current
/// `answer`, written in the given pieces, then closes.
async fn wire_server() -> (String, Arc<Mutex<(Vec<u8>, Vec<usize>)>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer: Arc<Mutex<(Vec<u8>, Vec<usize>)>> = Arc::default();
    let a = answer.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let a = a.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    let Ok(n) = sock.read(&mut tmp).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let (bytes, cuts) = a.lock().unwrap().clone();
                let mut last = 0;
                for c in cuts.into_iter().chain([bytes.len()]) {
                    if sock.write_all(&bytes[last..c]).await.is_err() {
                        return;
                    }
                    let _ = sock.flush().await;
                    last = c;
                }
            });
        }
    });
    (format!("http://{addr}"), answer)
}

#[test]
fn fuzz_stream_loop_over_a_socket() {
    use kvbench::client::{api_base, Client, ClientOptions, Endpoint};
    use kvbench::record::RequestRecord;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (url, answer) = rt.block_on(wire_server());
    let lean_base = api_base(&url).unwrap();
    let reqwest_base = api_base(&url.replacen("http://", "http://u:p@", 1)).unwrap();
    let tally = Tally::default();
    fuzz("stream loop", 1500, wire(), |w| {
        let mut cuts: Vec<usize> = w
            .writes
            .iter()
            .map(|c| c.index(w.bytes.len() + 1))
            .collect();
        cuts.sort_unstable();
        *answer.lock().unwrap() = (w.bytes.clone(), cuts);
        for base in [&lean_base, &reqwest_base] {
            let client = Client::new(&ClientOptions {
                api_base: base.clone(),
                api_key: None,
                headers: Vec::new(),
                timeout: Duration::from_secs(5),
                pool_size: 1,
            })
            .unwrap();
            let origin = Instant::now();
            let mut rec = RequestRecord::default();
            let cancel = tokio_util::sync::CancellationToken::new();
            rt.block_on(client.stream(
                Endpoint::Chat,
                bytes::Bytes::from_static(b"{}"),
                &mut rec,
                origin,
                true,
                &cancel,
            ));
            let path = if client.uses_fast_path() {
                "lean"
            } else {
                "reqwest"
            };
            tally.add(format!(
                "{path} {}",
                rec.error.map_or("ok".to_owned(), |k| k.key(rec.status))
            ));

            // The record is consistent, whatever came.
            prop_assert!(rec.end_ns >= rec.sent_ns, "{path}: {rec:?}");
            if let Some(fb) = rec.first_byte_ns {
                prop_assert!(fb >= rec.sent_ns && fb <= rec.end_ns, "{path}: {rec:?}");
            }
            prop_assert!(rec.chunk_ns.windows(2).all(|w| w[0] <= w[1]), "{path}");
            prop_assert_eq!(
                rec.first_token_ns,
                rec.chunk_ns.first().copied(),
                "{}",
                path
            );
            prop_assert!(
                rec.chunk_ns.last().is_none_or(|&t| t <= rec.end_ns),
                "{path}"
            );
            prop_assert!(
                rec.error_message
                    .as_ref()
                    .is_none_or(|m| m.chars().count() <= 300),
                "{path}"
            );
            prop_assert!(
                rec.error.is_some() || rec.status.is_some_and(|s| (200..300).contains(&s))
            );
            prop_assert_ne!(
                rec.error,
                Some(kvbench::record::ErrorKind::Timeout),
                "{}: hung",
                path
            );
            // A well-formed response reads as its body says, on both paths.
            if let Some(body) = &w.clean_body {
                prop_assert_eq!(
                    rec.chunk_ns.len(),
                    expected_tokens(body),
                    "{}: {:?} {:?}",
                    path,
                    rec.error,
                    rec.error_message
                );
            }
        }
        Ok(())
    });
    tally.print("stream loop");
}

// ---- target 4: the log scanner ----

fn fixture_lines() -> Vec<String> {
    let dir = format!("{}/tests/fixtures/logs", env!("CARGO_MANIFEST_DIR"));
    let mut lines = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        lines.extend(
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned),
        );
    }
    lines
}

fn log_line(real: Arc<Vec<String>>) -> impl Strategy<Value = String> {
    let level = prop_oneof![
        Just("INFO"),
        Just("WARNING"),
        Just("WARN"),
        Just("ERROR"),
        Just("CRITICAL"),
        Just("DEBUG"),
        Just("")
    ];
    let prefix = prop_oneof![
        Just(String::new()),
        (0u32..99_999).prop_map(|p| format!("(VllmWorker rank=1 pid={p}) ")),
        Just("vllm-1  | ".to_owned()),
        Just("\u{1b}[1;36m(EngineCore pid=12)\u{1b}[0m ".to_owned()),
        Just("0.00.008.702 W ".to_owned()),
    ];
    let any_text = prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter);
    let n = real.len();
    prop_oneof![
        4 => any::<prop::sample::Index>().prop_map(move |i| real[i.index(n)].clone()),
        3 => (prefix, level, "[ -~]{0,60}").prop_map(|(p, l, m)| format!("{p}{l} 01-02 03:04:05 [x.py:1] {m}")),
        1 => any_text,
        1 => (1usize..4).prop_map(|k| format!("WARNING {}", "é".repeat(k * 40_000))),
    ]
}

#[test]
fn fuzz_log_scanner() {
    let catalog = Catalog::default_catalog();
    let real = Arc::new(fixture_lines());
    let tally = Tally::default();
    let log = (
        prop::collection::vec(log_line(real), 0..40),
        prop_oneof![Just("\n"), Just("\r\n")],
        any::<bool>(),
    )
        .prop_map(|(lines, eol, last)| {
            let mut s = lines.join(eol);
            if last {
                s += eol;
            }
            s.into_bytes()
        });
    fuzz(
        "log scanner",
        3000,
        (mutated(log, 8), 1usize..200),
        |(bytes, cap)| {
            let text = String::from_utf8_lossy(&bytes);
            let whole = logscan::scan(catalog, &text);
            // Streamed through a reader that hands out a few bytes at a time: the same report.
            let mut s = Scanner::new(catalog);
            s.read(std::io::BufReader::with_capacity(
                cap,
                std::io::Cursor::new(&bytes),
            ))
            .unwrap();
            let streamed = s.finish();
            prop_assert_eq!(&streamed, &whole);
            let lines = text.lines().filter(|l| !l.trim().is_empty()).count() as u64;
            let counted: u64 = whole.warnings.iter().map(|w| w.count).sum();
            prop_assert!(counted <= lines);
            for w in &whole.warnings {
                tally.add(if w.id == "other" {
                    "other warnings"
                } else {
                    "catalogued warnings"
                });
                prop_assert!(w.count >= 1 && w.ranks >= 1 && w.ranks <= w.count);
                prop_assert!(w.first_line.chars().count() <= logscan::MAX_KEPT_CHARS + 1);
                if w.id == "other" {
                    prop_assert!(w.text.is_some());
                }
            }
            let _ = logscan::classify_failure(catalog, &text);
            let _ = logscan::tail(&text, 5);
            Ok(())
        },
    );
    tally.print("log scanner");
}

/// The cap on distinct `other` lines holds whatever their number, and every line is counted.
#[test]
fn fuzz_log_scanner_many_distinct_lines() {
    let catalog = Catalog::default_catalog();
    let mut s = Scanner::new(catalog);
    let n = 5 * logscan::MAX_OTHERS;
    for i in 0..n {
        let word: String = (0..5)
            .map(|k| (b'a' + ((i >> (k * 4)) & 15) as u8) as char)
            .collect();
        s.line(&format!("ERROR 01-02 03:04:05 [x.py:1] failed {word}"));
    }
    let r = s.finish();
    assert_eq!(r.warnings.len(), logscan::MAX_OTHERS + 1);
    assert_eq!(r.warnings.iter().map(|w| w.count).sum::<u64>(), n as u64);
    let last = r.warnings.last().unwrap();
    assert_eq!(last.text.as_deref(), Some(logscan::MORE_OTHERS));
    assert_eq!(last.count, (n - logscan::MAX_OTHERS) as u64);
}
