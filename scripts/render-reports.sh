#!/usr/bin/env bash
# Re-renders every committed comparison under docs/validation/ with this kvbench (`kvbench
# report`: HTML and Markdown beside each JSON, same stem), and takes the screenshot of the H100
# report's first screen at 1280 px that the README shows (docs/images/report-first-screen.png;
# needs Debian's chromium). tests/fast/report.rs fails when a committed report differs from what
# `kvbench report` renders, so run this after changing the report.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
bin=target/debug/kvbench
for json in docs/validation/*/comparison*.json; do
    stem=${json%.json}
    "$bin" report "$json" --html "$stem.html" --md "$stem.md" >/dev/null
    echo "rendered $stem.{html,md}"
done
if command -v chromium >/dev/null 2>&1; then
    mkdir -p docs/images
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,1000 \
        --screenshot="$PWD/docs/images/report-first-screen.png" \
        "file://$PWD/docs/validation/h100-vllm-0.26/comparison.html" 2>/dev/null
    echo "screenshot docs/images/report-first-screen.png"
else
    echo "chromium missing: screenshot not taken" >&2
fi
