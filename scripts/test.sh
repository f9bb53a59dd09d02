#!/usr/bin/env bash
# The test suite: formatting, lints, then every test of the workspace (unit, property,
# golden vectors and interop tests against real OTP 25 nodes).
set -euo pipefail
cd "$(dirname "$0")/.."
EDIST_WITH_TEST_DEPS=1 . scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --all-targets
