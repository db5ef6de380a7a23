#!/usr/bin/env bash
# The test command (README, .ci/run): builds everything in release mode and runs every test.
# Needs only a Rust toolchain and crates.io; fixtures are committed, ../shared is read when present.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo build --release --locked --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over all test binaries (cargo prints one "test result" line per binary).
passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s += $1} END {print s + 0}')
ignored=$(grep -Eo '[0-9]+ ignored;' "$log" | awk '{s += $1} END {print s + 0}')
echo "tests: ${passed} passed, ${failed} failed, ${ignored} skipped"
exit "$status"
