//! The hermetic integration tests, in one binary: kvbench against its in-process test servers,
//! `kvbench test-server` children, raw hostile sockets, stand-in `docker` and executors. Nothing
//! outside the repository is needed (the Chromium report check skips without `chromium`).
//!
//! One binary rather than one per file, because each binary links the whole crate and its
//! dependencies (issue 15, item 4); tests/e2e holds the tests of real engines and infrastructure,
//! and tests/accuracy.rs stays alone. Run one former file's tests with its module as the filter:
//! `cargo test --test fast cli::` (or `cli::name_of_a_test`).
//!
//! Tests of every module run side by side (`--test-threads`), so none may change what the
//! process shares: no `std::env::set_var` (tests/fast/examples.rs hands its variables to a
//! child copy of this binary instead), no current directory, rlimit or signal disposition;
//! signals go to child processes only; ports come from the OS (`:0`, `port = "auto"`); files
//! live in each test's own temporary directory; `pgrep` markers are unique per test.
//! The fuzz targets, which keep a core busy for seconds, run one at a time
//! (`common::cpu_bound_lock`). No test here compares verdicts of runs measured at different
//! moments: load from a neighbouring test may tip one of them.

#[path = "../common/mod.rs"]
mod common;

mod ab;
mod arms;
mod cli;
mod examples;
mod executors;
mod fuzz;
mod hostile;
mod inputs;
mod launcher;
mod quality;
mod report;
mod schema;
mod selftest;
mod signals;
mod wire;
