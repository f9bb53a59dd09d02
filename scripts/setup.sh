#!/usr/bin/env bash
# Installs what edist's demo and tests need on a fresh Debian/Ubuntu machine, if missing:
# Erlang/OTP (erlang-base, 25+) and a Rust toolchain. Safe to run again.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v erl >/dev/null 2>&1; then
  echo "setup: installing Erlang/OTP (erlang-base) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq erlang-base >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: no Rust toolchain found; install one with rustup (https://rustup.rs) and retry." >&2
    exit 1
  fi
fi
