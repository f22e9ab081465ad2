//! Runs a load sweep against a server that is up (docs/metrics.md#capacity); the types and the
//! knee are in `crate::capacity`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::capacity::{knee, oversaturated, Capacity, Level, LoadBy, Sweep};
use crate::config::RunConfig;
use crate::record::RequestRecord;
use crate::result::RunResult;
use crate::workload::arrivals::{Arrival, ArrivalKind};

/// The run configuration of one level: the workload's at `load`, without quality, one warm-up
/// request, its own journal.
fn level_config(cfg: &RunConfig, by: LoadBy, load: f64, journal: PathBuf) -> RunConfig {
    let mut c = cfg.clone();
    c.arrival = match by {
        LoadBy::Concurrency => Arrival::Closed {
            concurrency: load as usize,
        },
        LoadBy::RequestRate => Arrival::Open {
            rate: load,
            kind: ArrivalKind::Poisson,
            burstiness: 1.0,
            max_concurrency: None,
        },
    };
    c.quality = None;
    c.warmup = 1;
    c.journal = journal;
    c.progress = crate::config::ProgressMode::Quiet;
    c
}

/// The journal of level `i` beside the run's own: `<stem>.level<i>.requests.jsonl`.
fn level_journal(journal: &Path, i: usize) -> PathBuf {
    let s = journal.display().to_string();
    let stem = s.strip_suffix(".requests.jsonl").unwrap_or(&s);
    PathBuf::from(format!("{stem}.level{i}.requests.jsonl"))
}

/// Runs the sweep against the server at `cfg.url` (already up and warmed by the workload),
/// saying each level's outcome through `say` (a line without the `kvbench: ` prefix).
pub async fn run(
    cfg: &RunConfig,
    sweep: &Sweep,
    metrics_interval: Duration,
    cancel: &CancellationToken,
    say: &dyn Fn(&str),
) -> Capacity {
    let mut levels = Vec::new();
    let mut skipped = Vec::new();
    let mut past_knee = false;
    for (i, &load) in sweep.levels.iter().enumerate() {
        if past_knee || cancel.is_cancelled() {
            skipped.push(load);
            continue;
        }
        let journal = level_journal(&cfg.journal, i + 1);
        let c = level_config(cfg, sweep.by, load, journal.clone());
        let scraper = crate::server::scrape::Scraper::start(&cfg.url, metrics_interval).await;
        let r = super::measure(c, cancel.clone()).await;
        let sm = scraper.finish().await;
        let Ok(r) = r else {
            skipped.push(load);
            past_knee = true;
            continue;
        };
        let records = crate::record::read_records(&journal).unwrap_or_default();
        let level = level_of(load, &r, sm.as_ref(), &records, &journal);
        {
            say(&format!(
                "sweep {} {load}: goodput share {}, TTFT p99 {} ms{}",
                sweep.by.as_str(),
                level
                    .goodput_share
                    .map_or("—".into(), |s| format!("{:.1} %", 100.0 * s)),
                level.ttft_ms_p99.map_or("—".into(), |v| format!("{v:.0}")),
                if level.oversaturated {
                    ", oversaturated"
                } else {
                    ""
                }
            ));
        }
        if level.goodput_share.is_none_or(|s| s < cfg.knee_share) || r.interrupted {
            past_knee = true;
        }
        levels.push(level);
    }
    Capacity {
        by: sweep.by,
        share_target: cfg.knee_share,
        knee: knee(&levels, cfg.knee_share),
        levels,
        skipped,
        sized_from_kv_tokens: None,
    }
}

fn level_of(
    load: f64,
    r: &RunResult,
    sm: Option<&crate::result::ServerMetrics>,
    records: &[RequestRecord],
    journal: &Path,
) -> Level {
    let g = r.goodput.as_ref();
    Level {
        load,
        requests: r.requests.completed + r.requests.failed,
        goodput_rps: g.and_then(|g| g.requests_per_s),
        goodput_share: g.and_then(|g| g.share),
        ttft_ms_p50: r.metrics.ttft_ms.p50,
        ttft_ms_p99: r.metrics.ttft_ms.p99,
        tpot_ms_p99: r.metrics.tpot_ms.p99,
        output_tok_per_s: r.throughput.output_tok_per_s,
        preemptions: sm
            .and_then(|m| m.deltas.get("preemptions"))
            .and_then(|d| d.value()),
        kv_cache_usage_peak: sm.and_then(|m| m.peaks.get("kv_cache_usage_perc").copied()),
        waiting_peak: sm.and_then(|m| m.peaks.get("num_requests_waiting").copied()),
        oversaturated: oversaturated(records),
        journal: Some(journal.display().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_has_its_own_journal_beside_the_runs() {
        assert_eq!(
            level_journal(Path::new("/r/benchmark_e_a_1.requests.jsonl"), 2),
            PathBuf::from("/r/benchmark_e_a_1.level2.requests.jsonl")
        );
    }
}
