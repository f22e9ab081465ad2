//! End-to-end tests against real engines and infrastructure, in one binary: llama.cpp and vLLM
//! on CPU (`scripts/setup-engines.sh`), Docker Compose (`scripts/setup-docker.sh`) and a Ray
//! cluster (`scripts/setup-ray.sh`). `scripts/test.sh` sets them up and exports their variables;
//! without them each test prints why and skips (CI fails instead: `KVBENCH_REQUIRE_*`).
//!
//! One binary rather than one per file, because each binary links the whole crate and its
//! dependencies (issue 15, item 4). Run one former file's tests with its module as the filter:
//! `cargo test --test e2e engine_ab::` (or `ray::`, `compose::`, ...). Filters match substrings,
//! so `engines::` also runs `quality_engines::` (`cargo test --test e2e engines:: -- --skip
//! quality_engines::` leaves it out).
//!
//! Engines run one at a time in this binary (`common::engine::ENGINE_LOCK`, which every test
//! that starts an engine holds: the machine has two cores, and capacity's TTFT target and the
//! engines' timings assume no second engine beside them); the Ray tests also take one another's
//! turn on the cluster (`ray::CLUSTER`).

#[path = "../common/mod.rs"]
mod common;

mod capacity;
mod compose;
mod engine_ab;
mod engine_arms;
mod engine_stack;
mod engines;
mod quality_engines;
mod ray;
