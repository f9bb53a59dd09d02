#!/usr/bin/env bash
# The test suite: formatting, lints, then every test of the workspace (unit, property,
# golden vectors and interop tests against real OTP 25 nodes), the gateway interop tests on both
# transports, and OTP's own pg, rpc and erpc suites and distribution_SUITE's busy-port cases
# across two gateways (set
# EDIST_OTP_SUITES=0 to leave those out; scripts/otp-suites.sh runs the whole set).
set -euo pipefail
cd "$(dirname "$0")/.."
EDIST_WITH_TEST_DEPS=1 . scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --all-targets
# The namespace interop suite once more, between gateways over TLS/TCP instead of QUIC.
EDIST_TEST_TRANSPORT=tcp cargo test -p edist --test gateway_fabric
# OTP 25.2.3's own pg_SUITE, rpc_SUITE and erpc_SUITE with the suite's control node behind one
# gateway and every node it starts behind another, so that the relay carries each connection
# (about 5 minutes; the suites' sources come from Debian's erlang source package, fetched once
# into ~/.cache/otpsuites). `--release`: the gateway as users run it (a debug build loses
# pg_SUITE's netsplit race about half of the time). `--epmd a`: erpc_SUITE's C node registers with the gateway.
# `--retry`: a case that fails runs once more on its own (pg_SUITE's netsplit races a relayed
# close, docs/otp-suites.md); a case that fails twice fails the run.
if [ "${EDIST_OTP_SUITES:-1}" != 0 ]; then
  bash scripts/otp-suites.sh --release --retry --epmd a pg rpc erpc
  # distribution_SUITE's busy-port cases (a frozen far node: its gateway tells ours, which
  # stops reading from our node; README, "Backpressure"), about a minute.
  bash scripts/otp-suites.sh --release --retry --cases "link_to_busy exit_to_busy lost_exit" distribution
fi
