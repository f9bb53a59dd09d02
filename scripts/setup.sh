#!/usr/bin/env bash
# Installs what edist's demo and tests need on a fresh Debian/Ubuntu machine, if missing:
# Erlang/OTP (erlang-base, 25+), for the tests also Elixir, rebar3 and iproute2, and a Rust toolchain. Safe to run again.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# erlang-base: real OTP nodes; elixir: the second real client in the tests (and mix, for the
# mix release example); rebar3: the rebar3 release example; iproute2: network namespaces for
# multi-host tests.
missing=""
command -v erl >/dev/null 2>&1 || missing="$missing erlang-base"
[ "${EDIST_WITH_TEST_DEPS:-0}" = 1 ] && { command -v elixir >/dev/null 2>&1 || missing="$missing elixir"; }
[ "${EDIST_WITH_TEST_DEPS:-0}" = 1 ] && { command -v ip >/dev/null 2>&1 || missing="$missing iproute2"; }
[ "${EDIST_WITH_TEST_DEPS:-0}" = 1 ] && { command -v rebar3 >/dev/null 2>&1 || missing="$missing rebar3"; }
if [ -n "$missing" ]; then
  echo "setup: installing$missing ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  # shellcheck disable=SC2086
  as_root apt-get install -y -qq $missing >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: no Rust toolchain found; install one with rustup (https://rustup.rs) and retry." >&2
    exit 1
  fi
fi
