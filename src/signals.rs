//! Signals that end a run early, handled as one path: Ctrl-C (SIGINT), SIGTERM (`timeout`, a CI
//! cancel, `docker stop`) and SIGHUP (a closed terminal).
//!
//! The first cancels the run's token: kvbench stops measuring, tears the server down, writes
//! what was measured and exits with [`crate::EXIT_INTERRUPTED`]. A further signal never exits at
//! once: the server runs in its own process group, so an exit would orphan it (no `Drop` runs)
//! and lose the result. Instead it hurries the teardown: servers still running are killed
//! instead of being given time to exit on their own.
//!
//! Signals are process-wide, so the hurry is too: a flag set only here and read by teardown
//! code through [`hurried`].

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

static HURRY: AtomicBool = AtomicBool::new(false);

/// Whether a second signal asked the teardown to kill rather than wait.
pub fn hurried() -> bool {
    HURRY.load(Ordering::SeqCst)
}

/// Cancels `token` on the first SIGINT, SIGTERM or SIGHUP; every further one hurries the
/// teardown ([`hurried`]). Call it from within the runtime: the handlers are installed before it
/// returns, so a signal that comes right after is never fatal.
pub fn cancel_on_signals(token: CancellationToken) {
    let mut streams: Vec<(Signal, &'static str)> = [
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::hangup(), "SIGHUP"),
    ]
    .into_iter()
    .filter_map(|(kind, name)| match signal(kind) {
        Ok(s) => Some((s, name)),
        Err(e) => {
            say(&format!("kvbench: warning: cannot handle {name}: {e}"));
            None
        }
    })
    .collect();
    tokio::spawn(async move {
        let Some(first) = next(&mut streams).await else {
            return;
        };
        token.cancel();
        say(&format!(
            "kvbench: interrupted ({first}): stopping, tearing the server down and writing what was measured (signal again to kill the server without waiting)"
        ));
        while let Some(sig) = next(&mut streams).await {
            HURRY.store(true, Ordering::SeqCst);
            say(&format!(
                "kvbench: {sig} again: killing the server now; what was measured is still written"
            ));
        }
    });
}

/// The name of the next signal to arrive; `None` once no stream can deliver any.
async fn next(streams: &mut Vec<(Signal, &'static str)>) -> Option<&'static str> {
    while !streams.is_empty() {
        let (got, i, _) =
            futures_util::future::select_all(streams.iter_mut().map(|(s, _)| Box::pin(s.recv())))
                .await;
        if got.is_some() {
            return Some(streams[i].1);
        }
        // The runtime's signal driver is gone: that stream will never deliver again.
        drop(streams.remove(i));
    }
    None
}

/// Writes a line to stderr, ignoring failure: after SIGHUP the terminal may be gone, and the
/// teardown must go on regardless.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
