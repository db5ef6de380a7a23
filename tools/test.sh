#!/usr/bin/env bash
# The test command (README, .ci/run): builds everything in release mode and runs every test.
# Needs only a Rust toolchain and crates.io; fixtures are committed, ../shared is read when present.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo build --release --locked --all-targets
cargo test --release --locked
