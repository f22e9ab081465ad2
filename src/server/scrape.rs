//! `/metrics` (Prometheus text) scraping while the workload runs: counter deltas, gauge peaks,
//! the configuration the server reports (`vllm:cache_config_info`), server-side latency means,
//! a warning when prefix-cache hits show the workload was not cold, and GPU memory and
//! utilisation peaks through `nvidia-smi` when it is present.
//!
//! The parser is hand-written: kvbench needs only sample lines (`name{labels} value`), and the
//! Prometheus crates pull in a client library to get them.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::client::body::{read_capped, MAX_METRICS_BODY};
use crate::result::MetricsDelta as Delta;
pub use crate::result::{GpuPeaks, ServerMetrics};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (e.g. `vllm:prompt_tokens_total`).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// Parses Prometheus text exposition format; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name_labels, rest) = match line.find('{') {
            Some(i) => match line[i..].find('}') {
                Some(j) => (&line[..i + j + 1], line[i + j + 1..].trim()),
                None => continue,
            },
            None => match line.split_once(char::is_whitespace) {
                Some((n, r)) => (n, r.trim()),
                None => continue,
            },
        };
        let value_text = rest.split_whitespace().next().unwrap_or("");
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse::<f64>() {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let (name, labels) = match name_labels.find('{') {
            Some(i) => (
                &name_labels[..i],
                parse_labels(&name_labels[i + 1..name_labels.len() - 1]),
            ),
            None => (name_labels, BTreeMap::new()),
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next() != Some('=') || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(o) => value.push(o),
                    None => break,
                },
                '"' => break,
                o => value.push(o),
            }
        }
        labels.insert(key.trim().to_owned(), value);
    }
    labels
}

/// Canonical names across engines and versions: (canonical, source names).
const COUNTERS: &[(&str, &[&str])] = &[
    (
        "prompt_tokens",
        &["vllm:prompt_tokens_total", "llamacpp:prompt_tokens_total"],
    ),
    (
        "generation_tokens",
        &[
            "vllm:generation_tokens_total",
            "llamacpp:tokens_predicted_total",
        ],
    ),
    (
        "preemptions",
        &["vllm:num_preemptions_total", "vllm:num_preemptions"],
    ),
    (
        "prefix_cache_queries",
        &[
            "vllm:prefix_cache_queries_total",
            "vllm:gpu_prefix_cache_queries_total",
        ],
    ),
    (
        "prefix_cache_hits",
        &[
            "vllm:prefix_cache_hits_total",
            "vllm:gpu_prefix_cache_hits_total",
        ],
    ),
];
const GAUGES: &[(&str, &[&str])] = &[
    (
        "kv_cache_usage_perc",
        &[
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",
            "llamacpp:kv_cache_usage_ratio",
        ],
    ),
    (
        "num_requests_running",
        &["vllm:num_requests_running", "llamacpp:requests_processing"],
    ),
    (
        "num_requests_waiting",
        &["vllm:num_requests_waiting", "llamacpp:requests_deferred"],
    ),
];
const HISTOGRAMS: &[(&str, &str)] = &[
    ("server_ttft_mean_ms", "vllm:time_to_first_token_seconds"),
    ("server_itl_mean_ms", "vllm:inter_token_latency_seconds"),
    ("server_e2e_mean_ms", "vllm:e2e_request_latency_seconds"),
    ("server_queue_mean_ms", "vllm:request_queue_time_seconds"),
];

fn sum(samples: &[Sample], name: &str) -> Option<f64> {
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

fn first_sum(samples: &[Sample], names: &[&str]) -> Option<f64> {
    names.iter().find_map(|n| sum(samples, n))
}

/// The labels of `vllm:cache_config_info`: what the server really runs with.
pub fn cache_config(samples: &[Sample]) -> Option<BTreeMap<String, String>> {
    samples
        .iter()
        .find(|s| s.name == "vllm:cache_config_info")
        .map(|s| s.labels.clone())
}

/// Finished requests by reason (`vllm:request_success_total{finished_reason=...}`).
fn finished(samples: &[Sample]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == "vllm:request_success_total")
    {
        let r = s
            .labels
            .get("finished_reason")
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        *m.entry(r).or_insert(0.0) += s.value;
    }
    m
}

/// Peaks of sampled gauges and of GPU figures.
#[derive(Debug, Default, Clone)]
struct Peaks {
    gauges: BTreeMap<&'static str, f64>,
    gpu_mem_mib: Option<f64>,
    gpu_util_pct: Option<f64>,
    samples: u64,
}

impl Peaks {
    fn add(&mut self, samples: &[Sample]) {
        self.samples += 1;
        for (canon, names) in GAUGES {
            if let Some(v) = first_sum(samples, names) {
                let e = self.gauges.entry(canon).or_insert(v);
                *e = e.max(v);
            }
        }
    }
}

/// Fetches and parses `/metrics` once; `None` when it cannot be had, or is larger than
/// [`MAX_METRICS_BODY`] (a page without end is not read to its end).
pub async fn fetch(http: &reqwest::Client, url: &str) -> Option<Vec<Sample>> {
    let r = http
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let body = read_capped(r, MAX_METRICS_BODY).await.ok()?;
    Some(parse(&String::from_utf8_lossy(&body)))
}

async fn nvidia_smi() -> Option<(f64, f64)> {
    let out = tokio::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.used,utilization.gpu",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut mem, mut util) = (0.0, 0.0f64);
    for line in text.lines() {
        let mut parts = line.split(',').map(|p| p.trim().parse::<f64>().ok());
        mem += parts.next().flatten()?;
        util = util.max(parts.next().flatten()?);
    }
    Some((mem, util))
}

/// A background scraper; [`Scraper::finish`] returns the summary.
pub struct Scraper {
    before: Option<Vec<Sample>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Peaks>,
    http: reqwest::Client,
    url: String,
}

impl Scraper {
    /// Takes the "before" snapshot and starts sampling every `interval`.
    pub async fn start(url: &str, interval: Duration) -> Scraper {
        let http = reqwest::Client::builder()
            .redirect(crate::client::same_origin_redirects())
            .build()
            .unwrap_or_default();
        let before = fetch(&http, url).await;
        let stop = CancellationToken::new();
        let (s, h, u) = (stop.clone(), http.clone(), url.to_owned());
        let task = tokio::spawn(async move {
            let mut peaks = Peaks::default();
            let has_gpu = nvidia_smi().await.is_some();
            loop {
                if let Some(samples) = fetch(&h, &u).await {
                    peaks.add(&samples);
                }
                if has_gpu {
                    if let Some((mem, util)) = nvidia_smi().await {
                        peaks.gpu_mem_mib = Some(peaks.gpu_mem_mib.unwrap_or(0.0).max(mem));
                        peaks.gpu_util_pct = Some(peaks.gpu_util_pct.unwrap_or(0.0).max(util));
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = s.cancelled() => break,
                }
            }
            peaks
        });
        Scraper {
            before,
            stop,
            task,
            http,
            url: url.to_owned(),
        }
    }

    /// The `before` snapshot, if `/metrics` answered.
    pub fn before(&self) -> Option<&[Sample]> {
        self.before.as_deref()
    }

    /// Takes the "after" snapshot and summarises; `None` when the server has no `/metrics`.
    pub async fn finish(self) -> Option<ServerMetrics> {
        let after = fetch(&self.http, &self.url).await;
        self.stop.cancel();
        let mut peaks = self.task.await.unwrap_or_default();
        let (before, after) = (self.before?, after?);
        peaks.add(&after);
        Some(summarise(&before, &after, &peaks))
    }
}

fn summarise(before: &[Sample], after: &[Sample], peaks: &Peaks) -> ServerMetrics {
    let mut deltas = BTreeMap::new();
    for (canon, names) in COUNTERS {
        if let (Some(a), Some(b)) = (first_sum(after, names), first_sum(before, names)) {
            deltas.insert((*canon).to_owned(), Delta::Value(a - b));
        }
    }
    let (fa, fb) = (finished(after), finished(before));
    if !fa.is_empty() {
        let m: BTreeMap<String, f64> = fa
            .iter()
            .map(|(k, v)| (k.clone(), v - fb.get(k).copied().unwrap_or(0.0)))
            .collect();
        deltas.insert("requests_finished".into(), Delta::ByLabel(m));
    }
    let mut server_latency = BTreeMap::new();
    for (canon, name) in HISTOGRAMS {
        let d = |suffix: &str| {
            Some(sum(after, &format!("{name}{suffix}"))? - sum(before, &format!("{name}{suffix}"))?)
        };
        if let (Some(s), Some(c)) = (d("_sum"), d("_count")) {
            if c > 0.0 {
                server_latency.insert((*canon).to_owned(), s / c * 1000.0);
            }
        }
    }
    let value = |k: &str| deltas.get(k).and_then(Delta::value);
    let hit_rate = match (value("prefix_cache_hits"), value("prefix_cache_queries")) {
        (Some(h), Some(q)) if q > 0.0 => Some(h / q),
        _ => None,
    };
    let mut warnings = Vec::new();
    if let Some(r) = hit_rate {
        if r > 0.05 {
            warnings.push(format!(
                "the prefix cache served {:.0} % of prompt tokens during the workload: results are not cold (identical prompts across requests or arms?)",
                r * 100.0
            ));
        }
    }
    if value("preemptions").unwrap_or(0.0) > 0.0 {
        warnings.push(
            "the server preempted requests (KV cache full): latency includes recomputation".into(),
        );
    }
    ServerMetrics {
        samples: peaks.samples,
        cache_config: cache_config(after),
        deltas,
        peaks: peaks
            .gauges
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        prefix_cache_hit_rate: hit_rate,
        server_latency,
        gpu: peaks.gpu_mem_mib.map(|m| GpuPeaks {
            memory_used_mib_peak: m,
            utilization_pct_peak: peaks.gpu_util_pct,
        }),
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="smollm2"} 100.0
vllm:generation_tokens_total{engine="0",model_name="smollm2"} 50.0
vllm:prefix_cache_queries_total{engine="0",model_name="smollm2"} 100.0
vllm:prefix_cache_hits_total{engine="0",model_name="smollm2"} 0.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="smollm2"} 1.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="smollm2"} 1.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="smollm2"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2"} 0.0
vllm:cache_config_info{block_size="128",cache_dtype="auto",calculate_kv_scales="False",enable_prefix_caching="True",kv_cache_size_tokens="46592"} 1.0
"#;
    const AFTER: &str = r#"vllm:prompt_tokens_total{engine="0",model_name="smollm2"} 1100.0
vllm:generation_tokens_total{engine="0",model_name="smollm2"} 250.0
vllm:prefix_cache_queries_total{engine="0",model_name="smollm2"} 1100.0
vllm:prefix_cache_hits_total{engine="0",model_name="smollm2"} 500.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="smollm2"} 3.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="smollm2"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="smollm2"} 3.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="smollm2"} 6.0
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2"} 0.25
vllm:cache_config_info{block_size="128",cache_dtype="auto",calculate_kv_scales="False",enable_prefix_caching="True",kv_cache_size_tokens="46592"} 1.0
"#;

    #[test]
    fn parses_labels_values_and_escapes() {
        let s =
            parse("a{x=\"1\",y=\"q\\\"z\"} 2.5\nb 3 1700000000\n# c\nbad line\nd{e=\"f\"} +Inf\n");
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].labels["y"], "q\"z");
        assert_eq!(s[0].value, 2.5);
        assert_eq!((s[1].name.as_str(), s[1].value), ("b", 3.0));
        assert!(s[2].value.is_infinite());
    }

    #[test]
    fn deltas_peaks_server_latency_and_cold_cache_warning() {
        let (b, a) = (parse(BEFORE), parse(AFTER));
        let mut peaks = Peaks::default();
        peaks.add(&b);
        peaks.add(&a);
        let v = serde_json::to_value(summarise(&b, &a, &peaks)).unwrap();
        assert_eq!(v["deltas"]["prompt_tokens"], 1000.0);
        assert_eq!(v["deltas"]["generation_tokens"], 200.0);
        assert_eq!(v["deltas"]["requests_finished"]["length"], 4.0);
        assert_eq!(v["deltas"]["requests_finished"]["stop"], 2.0);
        assert_eq!(v["peaks"]["kv_cache_usage_perc"], 0.25);
        assert_eq!(v["prefix_cache_hit_rate"], 0.5);
        // (3 - 1) s over (6 - 2) requests = 500 ms.
        assert_eq!(v["server_latency"]["server_ttft_mean_ms"], 500.0);
        assert_eq!(v["cache_config"]["kv_cache_size_tokens"], "46592");
        assert!(v["warnings"][0].as_str().unwrap().contains("not cold"));
    }

    #[test]
    fn llamacpp_names_map_to_the_same_keys() {
        let b = parse("llamacpp:prompt_tokens_total 10\nllamacpp:tokens_predicted_total 5\nllamacpp:requests_processing 0\n");
        let a = parse("llamacpp:prompt_tokens_total 110\nllamacpp:tokens_predicted_total 45\nllamacpp:requests_processing 2\n");
        let mut peaks = Peaks::default();
        peaks.add(&a);
        let v = serde_json::to_value(summarise(&b, &a, &peaks)).unwrap();
        assert_eq!(v["deltas"]["prompt_tokens"], 100.0);
        assert_eq!(v["deltas"]["generation_tokens"], 40.0);
        assert_eq!(v["peaks"]["num_requests_running"], 2.0);
        assert!(v["cache_config"].is_null());
        assert!(v["prefix_cache_hit_rate"].is_null());
    }
}
