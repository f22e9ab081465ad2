//! What `kvbench ab` shows while it runs: one typed event API ([`Live`], [`Phase`]) that the
//! experiment loop, each arm and the runner's collector call, and two ways to show it.
//!
//! - With stderr on a terminal, a multi-line view (indicatif's `MultiProgress`): a header with
//!   the round, the elapsed time and an estimate of the time left, then one line per arm of the
//!   round that is not finished (pending, launching, healthy, warmup, quality k/n, workload with
//!   requests done, output tok/s and the running TTFT p50). A finished run leaves one permanent
//!   line above the view, and [`Live::finish`] writes a per-arm summary table.
//! - Otherwise, the plain `kvbench: ...` lines `ab` has always printed, byte for byte (tests and
//!   scripts parse them).
//!
//! Several arms may be in flight at once (executors that run the arms of a round side by side):
//! every event names its arm, and an executor that runs an arm elsewhere (a subprocess, a Ray
//! job) drives its line with [`Live::arm_phase`] alone (`Pending`, `Running`, `Done`).
//!
//! The state lives in [`Model`], which renders to strings with no terminal involved (unit
//! tests assert them); the terminal is redrawn from it by one thread at 5 Hz, so the collector
//! only stores numbers.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the terminal view is redrawn, and the collector's fastest update.
pub const REFRESH: Duration = Duration::from_millis(200);

/// Where an arm's run stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Planned in this round, not started yet.
    Pending,
    /// Started by an executor that reports no finer phase (a subprocess, a remote job).
    Running,
    /// The server is being launched; its output goes to `log`.
    Launching { log: PathBuf },
    /// The server answered its health checks after `startup_s` seconds at `url`.
    Healthy { startup_s: f64, url: String },
    /// Warmup requests (excluded from every statistic).
    Warmup,
    /// Quality suite `suite`: `done` of `total` items answered.
    Quality {
        suite: String,
        done: usize,
        total: usize,
    },
    /// The measured workload.
    Workload(WorkloadProgress),
    /// The run is over.
    Done(Finished),
}

/// The measured workload so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkloadProgress {
    /// Measured requests finished (warmup excluded), failed ones included.
    pub done: u64,
    /// Measured requests planned; `None` for a run bounded by time.
    pub total: Option<u64>,
    /// Measured requests that failed.
    pub failed: u64,
    /// Output tokens of the measured requests.
    pub output_tokens: u64,
    /// Median TTFT of the measured requests so far, in milliseconds (about 1 % resolution).
    pub ttft_p50_ms: Option<f64>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// A result was written to `path`.
    Measured {
        /// Requests completed.
        completed: u64,
        /// TTFT p50 of the run, in milliseconds.
        ttft_p50_ms: Option<f64>,
        /// Output throughput of the run, in tokens per second.
        output_tok_per_s: Option<f64>,
        path: PathBuf,
    },
    /// The server or the run failed (`kind`, e.g. `crashed`); its result is still written.
    Failed { kind: String, message: String },
    /// Not run: a complete run from an earlier `ab` is kept (`--resume`).
    Kept,
}

/// The state the view shows, and its rendering (terminal-free).
#[derive(Debug)]
pub struct Model {
    started: Instant,
    /// Current round (1-based) and the number of rounds planned.
    round: Option<(u32, u32)>,
    /// The rounds after the current one may hold fewer arms (adaptive design): the estimate
    /// is then an upper bound.
    upper_bound: bool,
    /// Arms run side by side (1: one after the other).
    parallel: usize,
    /// The arms of the current round, in order.
    arms: Vec<ArmLine>,
    /// Seconds each finished run took, per arm, in this `ab`.
    durations: BTreeMap<String, Vec<f64>>,
    /// Every finished run, for the summary table.
    finished: Vec<(String, Finished, Option<f64>)>,
}

#[derive(Debug, Clone)]
struct ArmLine {
    name: String,
    phase: Phase,
    /// When the run left `Pending`.
    since: Option<Instant>,
    /// When its workload phase began (for tok/s).
    workload_since: Option<Instant>,
}

/// "1m 05s", "12s", "2h 03m".
pub fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// One decimal, or "—" (as `ab`'s plain lines always wrote it).
fn opt1(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |x| format!("{x:.1}"))
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

impl Model {
    /// An empty model whose clock starts at `started`.
    pub fn new(started: Instant) -> Self {
        Model {
            started,
            round: None,
            upper_bound: false,
            parallel: 1,
            arms: Vec::new(),
            durations: BTreeMap::new(),
            finished: Vec::new(),
        }
    }

    /// A new round: its arms, all pending.
    pub fn round(&mut self, round: u32, of: u32, arms: &[&str], upper_bound: bool) {
        self.round = Some((round, of));
        self.upper_bound = upper_bound;
        self.arms = arms
            .iter()
            .map(|n| ArmLine {
                name: (*n).to_owned(),
                phase: Phase::Pending,
                since: None,
                workload_since: None,
            })
            .collect();
    }

    /// How many arms run at once (default 1), for the estimate.
    pub fn set_parallel(&mut self, n: usize) {
        self.parallel = n.max(1);
    }

    /// Records `arm`'s new phase at `now` (an arm the round did not list is added to it).
    pub fn arm_phase(&mut self, arm: &str, phase: Phase, now: Instant) {
        let i = match self.arms.iter().position(|a| a.name == arm) {
            Some(i) => i,
            None => {
                self.arms.push(ArmLine {
                    name: arm.to_owned(),
                    phase: Phase::Pending,
                    since: None,
                    workload_since: None,
                });
                self.arms.len() - 1
            }
        };
        let line = &mut self.arms[i];
        if line.since.is_none() && !matches!(phase, Phase::Pending | Phase::Done(_)) {
            line.since = Some(now);
        }
        if matches!(phase, Phase::Workload(_)) && line.workload_since.is_none() {
            line.workload_since = Some(now);
        }
        let took = line.since.map(|s| now.duration_since(s).as_secs_f64());
        if let Phase::Done(f) = &phase {
            if let (Some(t), false) = (took, matches!(f, Finished::Kept)) {
                self.durations.entry(arm.to_owned()).or_default().push(t);
            }
            self.finished.push((arm.to_owned(), f.clone(), took));
        }
        self.arms[i].phase = phase;
    }

    /// The expected seconds of one run of `arm`: the mean of its finished runs in this `ab`,
    /// else the mean of every finished run; `None` before any run finished.
    fn expected_s(&self, arm: &str) -> Option<f64> {
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        self.durations.get(arm).and_then(|v| mean(v)).or_else(|| {
            let all: Vec<f64> = self.durations.values().flatten().copied().collect();
            mean(&all)
        })
    }

    /// Estimated seconds left at `now`. The rule: every unfinished run of the current round
    /// costs its arm's expected time (see `expected_s`) less what it has already run (never
    /// below zero), and every later round costs the current round's arms once more; the sum is
    /// divided by the arms that run at once. `None` until a run has finished. With the
    /// adaptive design later rounds may drop arms or not happen at all: the estimate is then
    /// an upper bound.
    pub fn eta_s(&self, now: Instant) -> Option<f64> {
        let mut left = 0.0;
        for a in &self.arms {
            let expected = self.expected_s(&a.name)?;
            match (&a.phase, a.since) {
                (Phase::Done(_), _) => {}
                (_, Some(since)) => {
                    left += (expected - now.duration_since(since).as_secs_f64()).max(0.0)
                }
                (_, None) => left += expected,
            }
        }
        if let Some((round, of)) = self.round {
            let per_round: f64 = self
                .arms
                .iter()
                .map(|a| self.expected_s(&a.name))
                .sum::<Option<f64>>()?;
            left += per_round * f64::from(of.saturating_sub(round));
        }
        let slots = self.parallel.min(self.arms.len().max(1));
        Some(left / slots as f64)
    }

    /// The view's lines at `now`: the header, then one line per unfinished arm of the round.
    pub fn render(&self, now: Instant) -> Vec<String> {
        let mut head = String::from("kvbench ab");
        if let Some((r, of)) = self.round {
            head += &format!(" · round {r}/{of}");
        }
        head += &format!(
            " · elapsed {}",
            fmt_duration(now.duration_since(self.started).as_secs_f64())
        );
        head += &match self.eta_s(now) {
            Some(s) if self.upper_bound => format!(" · left at most ~{}", fmt_duration(s)),
            Some(s) => format!(" · left ~{}", fmt_duration(s)),
            None => " · left: after the first run".to_owned(),
        };
        let mut lines = vec![head];
        let n = self.arms.len();
        let width = self.arms.iter().map(|a| a.name.len()).max().unwrap_or(0);
        for (i, a) in self.arms.iter().enumerate() {
            if matches!(a.phase, Phase::Done(_)) {
                continue;
            }
            let mut l = format!(
                "  arm {}/{n} {:<width$}  {}",
                i + 1,
                crate::output::printable(&a.name),
                phase_text(&a.phase, a.workload_since, now)
            );
            if let Some(s) = a.since {
                l += &format!(" · {}", fmt_duration(now.duration_since(s).as_secs_f64()));
            }
            lines.push(l);
        }
        lines
    }

    /// The per-arm summary of every finished run: runs, failures, and the medians over the
    /// arm's measured runs of TTFT p50 and output tok/s, with the time the runs took.
    pub fn summary_table(&self) -> String {
        struct Row {
            runs: u32,
            failed: Vec<String>,
            kept: u32,
            ttft: Vec<f64>,
            tps: Vec<f64>,
            seconds: f64,
        }
        let mut rows: Vec<(String, Row)> = Vec::new();
        for (arm, f, took) in &self.finished {
            let i = match rows.iter().position(|(n, _)| n == arm) {
                Some(i) => i,
                None => {
                    rows.push((
                        arm.clone(),
                        Row {
                            runs: 0,
                            failed: Vec::new(),
                            kept: 0,
                            ttft: Vec::new(),
                            tps: Vec::new(),
                            seconds: 0.0,
                        },
                    ));
                    rows.len() - 1
                }
            };
            let r = &mut rows[i].1;
            match f {
                Finished::Measured {
                    ttft_p50_ms,
                    output_tok_per_s,
                    ..
                } => {
                    r.runs += 1;
                    r.ttft.extend(ttft_p50_ms.filter(|x| x.is_finite()));
                    r.tps.extend(output_tok_per_s.filter(|x| x.is_finite()));
                }
                Finished::Failed { kind, .. } => {
                    r.runs += 1;
                    r.failed.push(kind.clone());
                }
                Finished::Kept => r.kept += 1,
            }
            r.seconds += took.unwrap_or(0.0);
        }
        if rows.is_empty() {
            return String::new();
        }
        let head = [
            "arm",
            "runs",
            "TTFT p50 ms",
            "output tok/s",
            "took",
            "outcome",
        ];
        let body: Vec<[String; 6]> = rows
            .iter_mut()
            .map(|(name, r)| {
                let outcome = match (r.failed.len(), r.kept) {
                    (0, 0) => "ok".to_owned(),
                    (0, k) => format!("ok ({k} kept)"),
                    (_, _) => format!("failed: {}", r.failed.join(", ")),
                };
                [
                    crate::output::printable(name).into_owned(),
                    r.runs.to_string(),
                    opt1(median(&mut r.ttft)),
                    opt1(median(&mut r.tps)),
                    fmt_duration(r.seconds),
                    outcome,
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..head.len())
            .map(|i| {
                body.iter()
                    .map(|r| r[i].chars().count())
                    .chain([head[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<&str>| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = " ".repeat(widths[i].saturating_sub(c.chars().count()));
                // Numbers right-aligned, names and outcomes left.
                if (1..=4).contains(&i) {
                    s += &format!("  {pad}{c}");
                } else {
                    s += &format!("  {c}{pad}");
                }
            }
            s.trim_end().to_owned() + "\n"
        };
        let mut out = String::from("\nkvbench ab: per arm (medians over its runs)\n");
        out += &line(head.to_vec());
        for r in &body {
            out += &line(r.iter().map(String::as_str).collect());
        }
        out
    }
}

fn phase_text(p: &Phase, workload_since: Option<Instant>, now: Instant) -> String {
    match p {
        Phase::Pending => "pending".into(),
        Phase::Running => "running".into(),
        Phase::Launching { .. } => "launching".into(),
        Phase::Healthy { startup_s, .. } => format!("healthy after {startup_s:.1} s"),
        Phase::Warmup => "warmup".into(),
        Phase::Quality { suite, done, total } => {
            format!("quality {} {done}/{total}", crate::output::printable(suite))
        }
        Phase::Workload(w) => {
            let mut t = match w.total {
                Some(n) => format!("workload {}/{n} requests", w.done),
                None => format!("workload {} requests", w.done),
            };
            if w.failed > 0 {
                t += &format!(" ({} failed)", w.failed);
            }
            let secs = workload_since.map_or(0.0, |s| now.duration_since(s).as_secs_f64());
            if secs > 0.0 && w.done > 0 {
                t += &format!(" · {:.1} tok/s", w.output_tokens as f64 / secs);
            }
            t += &format!(" · TTFT p50 {} ms", opt1(w.ttft_p50_ms));
            t
        }
        Phase::Done(_) => "done".into(),
    }
}

/// The plain line of an event, as `ab` printed it before the live view (`None`: the event has
/// no line).
fn plain_line(arm: &str, phase: &Phase) -> Option<String> {
    match phase {
        Phase::Launching { log } => Some(format!(
            "kvbench: arm {arm:?}: launching ({})",
            log.display()
        )),
        Phase::Healthy { startup_s, url } => Some(format!(
            "kvbench: arm {arm:?}: healthy after {startup_s:.1} s at {url}"
        )),
        Phase::Done(Finished::Measured {
            completed,
            ttft_p50_ms,
            output_tok_per_s,
            path,
        }) => Some(format!(
            "kvbench: arm {arm:?}: {completed} requests, TTFT p50 {} ms, {} output tok/s → {}",
            opt1(*ttft_p50_ms),
            opt1(*output_tok_per_s),
            path.display()
        )),
        Phase::Done(Finished::Failed { kind, message }) => {
            Some(format!("kvbench: arm {arm:?} failed: {kind}: {message}"))
        }
        Phase::Done(Finished::Kept) => Some(format!(
            "kvbench: arm {arm:?}: kept from an earlier run (--resume)"
        )),
        _ => None,
    }
}

/// The terminal view: the bars it draws and the thread that redraws them.
struct Term {
    multi: indicatif::MultiProgress,
    bars: Arc<Mutex<Vec<indicatif::ProgressBar>>>,
    stop: Arc<AtomicBool>,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Term {
    fn start(model: Arc<Mutex<Model>>) -> Term {
        let multi = indicatif::MultiProgress::new();
        let bars: Arc<Mutex<Vec<indicatif::ProgressBar>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (multi, bars, stop) = (multi.clone(), bars.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kvbench-live".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let lines = match model.lock() {
                            Ok(m) => m.render(Instant::now()),
                            Err(_) => break,
                        };
                        if let Ok(mut bars) = bars.lock() {
                            redraw(&multi, &mut bars, &lines);
                        }
                        std::thread::sleep(REFRESH);
                    }
                })
                .ok()
        };
        Term {
            multi,
            bars,
            stop,
            ticker: Mutex::new(ticker),
        }
    }

    /// Stops redrawing and clears the view (idempotent).
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
        if let Ok(mut bars) = self.bars.lock() {
            for b in bars.drain(..) {
                b.finish_and_clear();
                self.multi.remove(&b);
            }
        }
        let _ = self.multi.clear();
    }
}

/// One bar per line; bars are added or removed as the number of lines changes.
fn redraw(
    multi: &indicatif::MultiProgress,
    bars: &mut Vec<indicatif::ProgressBar>,
    lines: &[String],
) {
    while bars.len() < lines.len() {
        let style = indicatif::ProgressStyle::with_template("{msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        bars.push(multi.add(indicatif::ProgressBar::new_spinner().with_style(style)));
    }
    while bars.len() > lines.len() {
        if let Some(b) = bars.pop() {
            b.finish_and_clear();
            multi.remove(&b);
        }
    }
    for (b, l) in bars.iter().zip(lines) {
        b.set_message(l.clone());
    }
}

enum Mode {
    Quiet,
    Plain,
    Term(Term),
}

struct Inner {
    mode: Mode,
    model: Arc<Mutex<Model>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Mode::Term(t) = &self.mode {
            t.stop();
        }
    }
}

/// The live view of one `kvbench ab` (cheap to clone; every clone shows the same view).
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

impl Live {
    /// Nothing with `quiet`; the terminal view when stderr is a terminal; plain lines otherwise.
    pub fn new(quiet: bool) -> Live {
        if !quiet && std::io::stderr().is_terminal() {
            let model = Arc::new(Mutex::new(Model::new(Instant::now())));
            let term = Term::start(model.clone());
            return Live {
                inner: Arc::new(Inner {
                    mode: Mode::Term(term),
                    model,
                }),
            };
        }
        Live::plain(quiet)
    }

    /// Plain lines (or nothing with `quiet`), whatever stderr is.
    pub fn plain(quiet: bool) -> Live {
        Live {
            inner: Arc::new(Inner {
                mode: if quiet { Mode::Quiet } else { Mode::Plain },
                model: Arc::new(Mutex::new(Model::new(Instant::now()))),
            }),
        }
    }

    /// Whether the terminal view is shown (the runner then draws no bar of its own).
    pub fn is_terminal(&self) -> bool {
        matches!(self.inner.mode, Mode::Term(_))
    }

    fn model(&self, f: impl FnOnce(&mut Model)) {
        if let Ok(mut m) = self.inner.model.lock() {
            f(&mut m);
        }
    }

    /// A line above the view (or on stderr): `kvbench: {text}`.
    pub fn note(&self, text: &str) {
        match &self.inner.mode {
            Mode::Quiet => {}
            Mode::Plain => eprintln!("kvbench: {text}"),
            Mode::Term(t) => {
                let _ = t.multi.println(format!("kvbench: {text}"));
            }
        }
    }

    /// Round `round` (1-based) of `of` starts with `arms`; `upper_bound`: later rounds may
    /// run fewer arms (the adaptive design).
    pub fn round(&self, round: u32, of: u32, arms: &[&str], upper_bound: bool) {
        self.model(|m| m.round(round, of, arms, upper_bound));
        if of > 1 && matches!(self.inner.mode, Mode::Plain) {
            eprintln!("kvbench: round {round}/{of}");
        }
    }

    /// How many arms run at once (for the estimate of the time left).
    pub fn set_parallel(&self, n: usize) {
        self.model(|m| m.set_parallel(n));
    }

    /// `arm` is now in `phase`.
    pub fn arm_phase(&self, arm: &str, phase: Phase) {
        let line = plain_line(arm, &phase);
        let done = matches!(phase, Phase::Done(_));
        self.model(|m| m.arm_phase(arm, phase, Instant::now()));
        match (&self.inner.mode, line) {
            (Mode::Plain, Some(l)) => eprintln!("{l}"),
            // Launching and healthy show in the arm's line; what a run produced stays.
            (Mode::Term(t), Some(l)) if done => {
                let _ = t.multi.println(l);
            }
            _ => {}
        }
    }

    /// The handle an in-process run reports through.
    pub fn arm(&self, name: &str) -> ArmLive {
        ArmLive {
            live: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Clears the view; on a terminal, writes the per-arm summary of the runs to stderr.
    pub fn finish(&self) {
        if let Mode::Term(t) = &self.inner.mode {
            t.stop();
            if let Ok(m) = self.inner.model.lock() {
                eprint!("{}", m.summary_table());
            }
        }
    }
}

/// One arm's side of the [`Live`] view.
#[derive(Clone)]
pub struct ArmLive {
    live: Live,
    name: String,
}

impl crate::quality::run::Reporter for ArmLive {
    fn note(&self, text: &str) {
        ArmLive::note(self, text);
    }
    fn progress(&self, suite: &str, done: usize, total: usize) {
        self.phase(Phase::Quality {
            suite: suite.to_owned(),
            done,
            total,
        });
    }
    fn is_terminal(&self) -> bool {
        ArmLive::is_terminal(self)
    }
}

impl ArmLive {
    /// The arm is now in `phase`.
    pub fn phase(&self, phase: Phase) {
        self.live.arm_phase(&self.name, phase);
    }

    /// A line above the view (or on stderr): `kvbench: {text}`.
    pub fn note(&self, text: &str) {
        self.live.note(text);
    }

    /// Whether the terminal view is shown.
    pub fn is_terminal(&self) -> bool {
        self.live.is_terminal()
    }
}

/// The running median of TTFT: counts in logarithmic buckets 2 % wide from 0.01 ms up (about
/// 40 minutes at the top), allocated once. Adding is O(1); the median walks the buckets, which
/// the collector does at most every [`REFRESH`].
pub struct RunningMedian {
    counts: Box<[u32]>,
    n: u64,
}

const BUCKETS: usize = 1200;
const BUCKET_RATIO: f64 = 1.02;
const BUCKET_MIN_MS: f64 = 0.01;

impl Default for RunningMedian {
    fn default() -> Self {
        RunningMedian {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            n: 0,
        }
    }
}

impl RunningMedian {
    /// Adds one value in milliseconds.
    pub fn add(&mut self, ms: f64) {
        if !ms.is_finite() {
            return;
        }
        let i = if ms <= BUCKET_MIN_MS {
            0
        } else {
            ((ms / BUCKET_MIN_MS).ln() / BUCKET_RATIO.ln()) as usize
        };
        let i = i.min(BUCKETS - 1);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.n += 1;
    }

    /// The median (the middle of its bucket); `None` when empty.
    pub fn p50(&self) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let half = self.n.div_ceil(2);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= half {
                return Some(BUCKET_MIN_MS * BUCKET_RATIO.powf(i as f64 + 0.5));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    fn measured(ttft: f64, tps: f64) -> Phase {
        Phase::Done(Finished::Measured {
            completed: 30,
            ttft_p50_ms: Some(ttft),
            output_tok_per_s: Some(tps),
            path: PathBuf::from("out/a.json"),
        })
    }

    #[test]
    fn the_estimate_follows_the_runs_so_far() {
        let t0 = Instant::now();
        let mut m = Model::new(t0);
        m.round(1, 2, &["base", "cand"], false);
        assert_eq!(m.eta_s(t0), None, "no run finished yet");
        let lines = m.render(t0);
        assert_eq!(
            lines[0],
            "kvbench ab · round 1/2 · elapsed 0s · left: after the first run"
        );
        assert_eq!(lines[1], "  arm 1/2 base  pending");
        assert_eq!(lines[2], "  arm 2/2 cand  pending");

        m.arm_phase(
            "base",
            Phase::Launching {
                log: "b.log".into(),
            },
            t0,
        );
        m.arm_phase("base", measured(41.0, 312.0), at(t0, 100));
        // cand: expected 100 s (the mean of every run so far), not started; round 2: 200 s.
        assert_eq!(m.eta_s(at(t0, 100)), Some(300.0));
        m.arm_phase("cand", Phase::Warmup, at(t0, 100));
        // 30 s into cand: 70 s left of it, then round 2.
        assert_eq!(m.eta_s(at(t0, 130)), Some(270.0));
        // An arm over its expected time counts zero, never less.
        assert_eq!(m.eta_s(at(t0, 250)), Some(200.0));
        let lines = m.render(at(t0, 130));
        assert_eq!(
            lines,
            vec![
                "kvbench ab · round 1/2 · elapsed 2m 10s · left ~4m 30s".to_owned(),
                "  arm 2/2 cand  warmup · 30s".to_owned(),
            ]
        );
        m.arm_phase("cand", measured(50.0, 300.0), at(t0, 160));
        // Round 2: its own means, base 100 s and cand 60 s; two side by side halve it.
        m.round(2, 2, &["cand", "base"], false);
        assert_eq!(m.eta_s(at(t0, 160)), Some(160.0));
        m.set_parallel(2);
        assert_eq!(m.eta_s(at(t0, 160)), Some(80.0));
        m.round(2, 3, &["cand", "base"], true);
        assert!(m.render(at(t0, 160))[0].ends_with("left at most ~2m 40s"));
    }

    #[test]
    fn lines_show_each_phase_and_several_arms_in_flight() {
        let t0 = Instant::now();
        let mut m = Model::new(t0);
        m.round(1, 1, &["a", "bb", "c"], false);
        m.arm_phase("a", Phase::Running, t0);
        m.arm_phase(
            "bb",
            Phase::Quality {
                suite: "passkey".into(),
                done: 12,
                total: 40,
            },
            t0,
        );
        m.arm_phase(
            "a",
            Phase::Workload(WorkloadProgress {
                done: 45,
                total: Some(100),
                failed: 1,
                output_tokens: 0,
                ttft_p50_ms: Some(41.234),
            }),
            at(t0, 2),
        );
        m.arm_phase(
            "a",
            Phase::Workload(WorkloadProgress {
                done: 46,
                total: Some(100),
                failed: 1,
                output_tokens: 800,
                ttft_p50_ms: Some(41.234),
            }),
            at(t0, 3),
        );
        let lines = m.render(at(t0, 4));
        assert_eq!(
            lines[1..],
            [
                "  arm 1/3 a   workload 46/100 requests (1 failed) · 400.0 tok/s · TTFT p50 41.2 ms · 4s",
                "  arm 2/3 bb  quality passkey 12/40 · 4s",
                "  arm 3/3 c   pending",
            ]
        );
        m.arm_phase(
            "c",
            Phase::Done(Finished::Failed {
                kind: "crashed".into(),
                message: "x".into(),
            }),
            at(t0, 5),
        );
        assert_eq!(
            m.render(at(t0, 5)).len(),
            3,
            "a finished arm leaves the view"
        );
    }

    #[test]
    fn the_summary_has_a_row_per_arm() {
        let t0 = Instant::now();
        let mut m = Model::new(t0);
        m.round(1, 2, &["base", "candidate"], false);
        m.arm_phase("base", Phase::Running, t0);
        m.arm_phase("base", measured(40.0, 300.0), at(t0, 60));
        m.arm_phase("candidate", Phase::Running, at(t0, 60));
        m.arm_phase(
            "candidate",
            Phase::Done(Finished::Failed {
                kind: "crashed".into(),
                message: "boom".into(),
            }),
            at(t0, 70),
        );
        m.round(2, 2, &["candidate", "base"], false);
        m.arm_phase("base", Phase::Running, at(t0, 70));
        m.arm_phase("base", measured(50.0, 320.0), at(t0, 140));
        assert_eq!(
            m.summary_table(),
            "\nkvbench ab: per arm (medians over its runs)\n  \
             arm        runs  TTFT p50 ms  output tok/s    took  outcome\n  \
             base          2         45.0         310.0  2m 10s  ok\n  \
             candidate     1            —             —     10s  failed: crashed\n"
        );
    }

    #[test]
    fn plain_lines_are_the_ones_ab_always_printed() {
        assert_eq!(
            plain_line(
                "fp8",
                &Phase::Launching {
                    log: "o/x.log".into()
                }
            )
            .unwrap(),
            "kvbench: arm \"fp8\": launching (o/x.log)"
        );
        assert_eq!(
            plain_line(
                "fp8",
                &Phase::Healthy {
                    startup_s: 1.26,
                    url: "http://127.0.0.1:1/".into()
                }
            )
            .unwrap(),
            "kvbench: arm \"fp8\": healthy after 1.3 s at http://127.0.0.1:1/"
        );
        assert_eq!(
            plain_line("fp8", &measured(41.26, 312.04)).unwrap(),
            "kvbench: arm \"fp8\": 30 requests, TTFT p50 41.3 ms, 312.0 output tok/s → out/a.json"
        );
        assert_eq!(plain_line("fp8", &Phase::Warmup), None);
    }

    #[test]
    fn the_running_median_is_within_two_percent() {
        let mut h = RunningMedian::default();
        assert_eq!(h.p50(), None);
        for ms in [10.0, 20.0, 30.0, 40.0, 1000.0] {
            h.add(ms);
        }
        let p = h.p50().unwrap();
        assert!((p / 30.0 - 1.0).abs() < 0.02, "{p}");
        h.add(f64::NAN);
        h.add(0.0);
        h.add(1e12);
        assert!(h.p50().is_some());
    }
}
