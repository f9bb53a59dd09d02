#!/usr/bin/env bash
# The main job: builds edist and runs `edist demo` (a throw-away OTP node, pinged and called
# from the Rust-native node, with rpc both ways and a 20 MB binary round trip).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release --quiet -p edist
exec target/release/edist demo
