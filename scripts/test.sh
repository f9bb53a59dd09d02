#!/usr/bin/env bash
# The test suite: formatting, lints, then every test of the workspace (unit, property,
# golden vectors and interop tests against real OTP 25 nodes), the gateway interop tests on both
# transports.
set -euo pipefail
cd "$(dirname "$0")/.."
EDIST_WITH_TEST_DEPS=1 . scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --all-targets
# The namespace interop suite once more, between gateways over TLS/TCP instead of QUIC.
EDIST_TEST_TRANSPORT=tcp cargo test -p edist --test gateway_fabric
