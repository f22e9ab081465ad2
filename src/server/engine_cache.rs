//! Persistent engine caches for servers kvbench starts itself (the `process` launcher), shared
//! by every arm and every run: vLLM's `VLLM_CACHE_ROOT` (torch.compile artifacts),
//! TorchInductor's `TORCHINDUCTOR_CACHE_DIR` (in /tmp by default, so lost at reboot) and
//! Triton's `TRITON_CACHE_DIR` (compiled kernels), under `$KVBENCH_CACHE/engine-cache` (default
//! `~/.cache/kvbench/engine-cache`). A restarted arm then reuses what an earlier start compiled
//! instead of compiling again. The engines key their entries by model and configuration, so arms
//! share the directories, not the results.
//!
//! A variable the user set (in the experiment's `env` tables, or in kvbench's own environment,
//! which the server inherits) is left as it is; `[server] engine_cache = false` sets none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The variables kvbench sets, with their directory under the cache root.
pub const VARS: [(&str, &str); 3] = [
    ("VLLM_CACHE_ROOT", "vllm"),
    ("TORCHINDUCTOR_CACHE_DIR", "torchinductor"),
    ("TRITON_CACHE_DIR", "triton"),
];

/// The engine caches of one server launch (defined with the result that records it).
pub use crate::result::EngineCache;

/// `$KVBENCH_CACHE/engine-cache`, else `$HOME/.cache/kvbench/engine-cache` (the cache root that
/// scripts/setup-engines.sh uses too).
pub fn default_root() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("KVBENCH_CACHE")
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("kvbench")))
        .map(|c| c.join("engine-cache"))
}

impl EngineCache {
    /// What kvbench would set for a server started with `user_env`, from its own environment;
    /// creates nothing (see [`EngineCache::create`]).
    pub fn plan(enabled: bool, user_env: &BTreeMap<String, String>) -> Self {
        let root = if enabled { default_root() } else { None };
        Self::plan_in(root.as_deref(), user_env, |k| std::env::var_os(k).is_some())
    }

    /// [`EngineCache::plan`] with the root and the inherited environment given.
    pub fn plan_in(
        root: Option<&Path>,
        user_env: &BTreeMap<String, String>,
        inherited: impl Fn(&str) -> bool,
    ) -> Self {
        let mut c = Self {
            dir: root.map(Path::to_path_buf),
            ..Self::default()
        };
        for (var, sub) in VARS {
            if user_env.contains_key(var) || inherited(var) {
                c.user_set.push(var.to_owned());
            } else if let Some(r) = root {
                c.set
                    .insert(var.to_owned(), r.join(sub).display().to_string());
            }
        }
        c
    }

    /// Creates the directories it sets; if one cannot be created, sets none and says why (the
    /// server then uses its own defaults rather than failing on an unwritable path).
    pub fn create(mut self) -> Self {
        for dir in self.set.values() {
            if let Err(e) = std::fs::create_dir_all(dir) {
                self.error = Some(format!("cannot create {dir}: {e}"));
                self.set.clear();
                self.dir = None;
                break;
            }
        }
        self
    }

    /// As recorded in `server.facts.engine_cache`.
    pub fn fact(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_s_variables_win() {
        let mut user = BTreeMap::new();
        user.insert("TRITON_CACHE_DIR".to_owned(), "/mine/triton".to_owned());
        let c = EngineCache::plan_in(Some(Path::new("/c/engine-cache")), &user, |k| {
            k == "TORCHINDUCTOR_CACHE_DIR"
        });
        assert_eq!(c.dir.as_deref(), Some(Path::new("/c/engine-cache")));
        assert_eq!(
            c.set.into_iter().collect::<Vec<_>>(),
            [(
                "VLLM_CACHE_ROOT".to_owned(),
                "/c/engine-cache/vllm".to_owned()
            )]
        );
        assert_eq!(c.user_set, ["TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"]);
    }

    #[test]
    fn off_sets_nothing() {
        let c = EngineCache::plan_in(None, &BTreeMap::new(), |_| false);
        assert_eq!(c, EngineCache::default());
        assert_eq!(
            c.fact(),
            serde_json::json!({"dir": null, "set": {}, "user_set": []})
        );
    }

    #[test]
    fn an_unwritable_root_sets_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let c = EngineCache::plan_in(Some(&file.join("engine-cache")), &BTreeMap::new(), |_| {
            false
        })
        .create();
        assert!(c.set.is_empty() && c.dir.is_none());
        assert!(c.error.unwrap().starts_with("cannot create"));
    }
}
