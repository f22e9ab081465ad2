//! Per-event cost of the client's hot path on a recorded-shape vLLM stream: SSE framing, chunk
//! decoding (borrowed, as the streaming loop does, and owned, as `decode` returns it), and
//! both together with timestamp bookkeeping. Run: `cargo bench --bench hot_path`.
//!
//! A plain timing loop (no harness): it prints nanoseconds per event, best of five rounds.

use std::hint::black_box;
use std::time::Instant;

use kvbench::client::chunk::{decode, decode_ref, EventRef};
use kvbench::client::sse::SseParser;

fn vllm_stream(tokens: usize) -> Vec<u8> {
    let head = r#"data: {"id":"chatcmpl-0123456789abcdef0123456789abcdef","object":"chat.completion.chunk","created":1700000000,"model":"Qwen/Qwen3-VL-32B-Thinking-AWQ","choices":[{"index":0,"#;
    let mut s = String::new();
    s.push_str(head);
    s.push_str(
        r#""delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
    );
    s.push_str("\n\n");
    for k in 0..tokens {
        s.push_str(head);
        s.push_str(&format!(
            r#""delta":{{"content":" word{k}"}},"logprobs":null,"finish_reason":null}}]}}"#
        ));
        s.push_str("\n\n");
    }
    s.push_str(r#"data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":9,"total_tokens":19,"completion_tokens":10}}"#);
    s.push_str("\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn best_ns_per_event(events: usize, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64 / events as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let tokens = 2000;
    let stream = vllm_stream(tokens);
    // Reads of about one event each, as a streaming server delivers them.
    let pieces: Vec<&[u8]> = stream.split_inclusive(|b| *b == b'\n').collect();
    let events = tokens + 3;
    let reps = 50;

    let sse = best_ns_per_event(events * reps, || {
        for _ in 0..reps {
            let mut p = SseParser::new();
            let mut n = 0usize;
            for piece in &pieces {
                p.push(piece, &mut |d| n += d.len());
            }
            black_box(n);
        }
    });
    let mut datas = Vec::new();
    let mut p = SseParser::new();
    p.push(&stream, &mut |d| datas.push(d.to_vec()));
    let owned = best_ns_per_event(events * reps, || {
        for _ in 0..reps {
            for d in &datas {
                black_box(decode(d));
            }
        }
    });
    let borrowed = best_ns_per_event(events * reps, || {
        for _ in 0..reps {
            for d in &datas {
                black_box(decode_ref(d));
            }
        }
    });
    let origin = Instant::now();
    let full = best_ns_per_event(events * reps, || {
        for _ in 0..reps {
            let mut p = SseParser::new();
            let mut chunk_ns: Vec<u64> = Vec::new();
            for piece in &pieces {
                let t = origin.elapsed().as_nanos() as u64;
                p.push(piece, &mut |d| {
                    if let EventRef::Chunk(c) = decode_ref(d) {
                        if c.content.is_some() || c.reasoning.is_some() {
                            chunk_ns.push(t);
                        }
                    }
                });
            }
            black_box(chunk_ns);
        }
    });
    println!("hot path, ns per SSE event (vLLM chat chunks, one read per line, best of 5):");
    println!("  sse framing                 {sse:8.1}");
    println!("  decode (owned strings)      {owned:8.1}");
    println!("  decode_ref (borrowed)       {borrowed:8.1}");
    println!("  sse + decode_ref + timestamp {full:7.1}");
}
