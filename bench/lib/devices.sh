#!/usr/bin/env bash
# bench/run devices: what an idle device connection costs at its hub.
#
# edist: one hub gateway ([devices] listen) and DEVICES_COUNT simulated devices (default 10000;
# crates/edist-gateway/examples/devices.rs: Rust clients speaking exactly what the Erlang
# connector edist_device_dist speaks: TLS 1.3 with a device certificate each, the control
# preface, heartbeats every third of the hub's idle timeout). Measured on the hub process: RSS
# before and after every device connected (per device), CPU over DEVICES_IDLE seconds of idle
# (default 30), and the connect time.
#
# OTP: a server BEAM with -proto_dist inet_tls (TLS 1.3, mutual) and DEVICES_TLS_CLIENTS client
# BEAMs (default 8) connected to it, idle: what each connection after the first adds to the
# server's RSS and erlang:memory(total), and its CPU over the same idle window.
#
# Everything runs in one network namespace of its own (its own loopback, epmd and port range).
# Writes bench/results/devices.json. Run through bench/run (which checks root and arguments).
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=$(dirname "$BENCH_DIR")
COUNT=${DEVICES_COUNT:-10000}
IDLE=${DEVICES_IDLE:-30}
TLS_CLIENTS=${DEVICES_TLS_CLIENTS:-8}
RESULTS=${BENCH_RESULTS:-$BENCH_DIR/results}
KEEP=${BENCH_KEEP:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
EDIST=$TARGET_DIR/release/edist
SIM=$TARGET_DIR/release/examples/devices

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  log "building edist and the devices example (release) ..."
  (cd "$ROOT" && cargo build --release --quiet -p edist && cargo build --release --quiet -p edist-gateway --example devices) \
    || die "cargo build failed"
fi
[ -x "$EDIST" ] && [ -x "$SIM" ] || die "$EDIST or $SIM missing"

WORK=$(mktemp -d /tmp/edist-bench-devices.XXXXXX)
NS=edd$$
FAILED=1
PIDS=()
cleanup() {
  local rc=$?
  set +e
  trap - EXIT
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  if [ "$FAILED" = 1 ] || [ "$KEEP" = 1 ]; then log "work directory (logs) kept: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
# Two sockets per device at the hub (its TLS connection and a loopback listener for
# connections to it) plus the clients' ends: the default port range and descriptor limit are
# too small for 10,000.
ip netns exec "$NS" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
ulimit -n "$(ulimit -Hn)"
inns() { ip netns exec "$NS" "$@"; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# utime + stime in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)

# --------------------------------------------------------------------------------------------
# edist: the hub and the simulated devices.

# Issuing 10,000 device certificates takes a while: they are kept (in the target directory) for
# the next run, as long as they are valid for a week more.
CERTS=${DEVICES_CERTS:-$TARGET_DIR/bench-devices-certs}
if [ -f "$CERTS/ca.pem" ] && ! openssl x509 -checkend $((7 * 86400)) -noout -in "$CERTS/gw-hub.pem" >/dev/null 2>&1; then
  rm -rf "$CERTS"
fi
if [ ! -f "$CERTS/ca.pem" ]; then
  "$EDIST" certs init --dir "$CERTS" --cluster bench >/dev/null 2>&1
  "$EDIST" certs issue gw-hub --dir "$CERTS" --days 30 >/dev/null
fi
cat >"$WORK/hub.toml" <<EOF
name = "gw-hub"
cookie = "bench"
[local]
control = "127.0.0.1:4370"
[fabric]
listen = "127.0.0.1:4371"
certs = "$CERTS"
[devices]
listen = "127.0.0.1:4372"
max_devices = $((COUNT + 100))
EOF
# `ip netns exec` execs the program: $! is the gateway itself (what /proc is read for).
ip netns exec "$NS" "$EDIST" gateway --config "$WORK/hub.toml" >"$WORK/hub.log" 2>&1 &
HUB=$!
disown
PIDS+=("$HUB")
for _ in $(seq 100); do grep -q 'devices hub listening' "$WORK/hub.log" && break; sleep 0.1; done
grep -q 'devices hub listening' "$WORK/hub.log" || die "the hub did not start (see $WORK/hub.log)"
sleep 1
HUB_RSS0=$(rss_kib "$HUB")
log "hub up (RSS $HUB_RSS0 KiB); issuing $COUNT device certificates and connecting the devices ..."

ip netns exec "$NS" "$SIM" 127.0.0.1:4372 gw-hub "$CERTS" "$COUNT" "$((IDLE + 15))" >"$WORK/sim.out" 2>"$WORK/sim.err" &
SIM_PID=$!
disown
PIDS+=("$SIM_PID")
for _ in $(seq 6000); do grep -q '^idle' "$WORK/sim.out" && break; kill -0 "$SIM_PID" 2>/dev/null || break; sleep 0.1; done
grep -q '^idle' "$WORK/sim.out" || die "the simulated devices did not all come up (see $WORK/sim.out, sim.err)"
CONNECTED=$(awk '/^connected/ {print $2}' "$WORK/sim.out")
SIM_FAILED=$(awk '/^failed/ {print $2}' "$WORK/sim.out")
CONNECT_S=$(awk '/^connect_s/ {print $2}' "$WORK/sim.out")
log "$CONNECTED devices connected in $CONNECT_S s ($SIM_FAILED failed); settling 5 s, then $IDLE s idle ..."
sleep 5
HUB_RSS1=$(rss_kib "$HUB")
HUB_DEVICES=$(inns "$EDIST" status --gateway 127.0.0.1:4370 --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("devices", [])))')
C0=$(cpu_ticks "$HUB")
sleep "$IDLE"
C1=$(cpu_ticks "$HUB")
HUB_RSS2=$(rss_kib "$HUB")
for _ in $(seq 300); do grep -q '^still_connected' "$WORK/sim.out" && break; sleep 0.1; done
STILL=$(awk '/^still_connected/ {print $2}' "$WORK/sim.out")
kill -KILL "$SIM_PID" "$HUB" 2>/dev/null || true
if [ "${DEVICES_HUB_ONLY:-0}" = 1 ]; then
  echo "hub: $CONNECTED devices, RSS $HUB_RSS0 -> $HUB_RSS1 KiB ($(( (HUB_RSS1 - HUB_RSS0) * 1000 / CONNECTED )) B/device), after idle $HUB_RSS2 KiB, CPU $(( (C1 - C0) * 10000 / TCK / IDLE )) /10000, still $STILL"
  FAILED=0; exit 0
fi

# --------------------------------------------------------------------------------------------
# OTP: a server node and client nodes with -proto_dist inet_tls.

[ -f "$CERTS/tls-node.pem" ] || "$EDIST" certs issue tls-node --dir "$CERTS" --days 30 >/dev/null
cat >"$WORK/ssl_dist.conf" <<EOF
[{server, [{certfile, "$CERTS/tls-node.pem"}, {keyfile, "$CERTS/tls-node.key"},
           {cacertfile, "$CERTS/ca.pem"}, {verify, verify_peer}, {fail_if_no_peer_cert, true},
           {versions, ['tlsv1.3']}]},
 {client, [{certfile, "$CERTS/tls-node.pem"}, {keyfile, "$CERTS/tls-node.key"},
           {cacertfile, "$CERTS/ca.pem"}, {verify, verify_none}, {versions, ['tlsv1.3']}]}].
EOF
HOST=$(hostname -s)
TLS_FLAGS=(-proto_dist inet_tls -ssl_dist_optfile "$WORK/ssl_dist.conf" -setcookie bench +sbwt none +sbwtdcpu none +sbwtdio none)
# The server prints its memory with one client connected (what the first connection loads, such
# as ssl's connection code, is not a connection's cost) and with every client connected, idle.
SERVER_EVAL="
Rss = fun() -> {ok, B} = file:read_file(\"/proc/self/status\"),
  [V] = [binary_to_integer(hd(binary:split(string:trim(R), <<\" \">>))) || L <- binary:split(B, <<\"\\n\">>, [global]), <<\"VmRSS:\", R/binary>> <- [L]], V end,
GC = fun() -> [erlang:garbage_collect(P) || P <- processes()], timer:sleep(500) end,
W = fun W(_, 0) -> timeout; W(K, N) -> case length(nodes()) >= K of true -> ok; false -> timer:sleep(200), W(K, N - 1) end end,
io:format(\"up~n\"),
ok = W(1, 600), timer:sleep(3000), GC(),
io:format(\"rest ~b ~b~n\", [erlang:memory(total), Rss()]),
ok = W($TLS_CLIENTS, 600), timer:sleep(3000), GC(),
io:format(\"connected ~b ~b ~b~n\", [length(nodes()), erlang:memory(total), Rss()]),
receive after infinity -> ok end."
ip netns exec "$NS" erl -sname tlssrv "${TLS_FLAGS[@]}" -noshell -eval "$SERVER_EVAL" >"$WORK/tlssrv.out" 2>&1 &
SRV=$!
disown
PIDS+=("$SRV")
for _ in $(seq 300); do grep -q '^up' "$WORK/tlssrv.out" && break; sleep 0.1; done
grep -q '^up' "$WORK/tlssrv.out" || die "the inet_tls_dist server did not start (see $WORK/tlssrv.out)"
log "inet_tls_dist: server up; starting $TLS_CLIENTS client nodes ..."
tls_client() {
  ip netns exec "$NS" erl -sname "tlsc$1" "${TLS_FLAGS[@]}" -noshell \
    -eval "pong = net_adm:ping('tlssrv@$HOST'), receive after infinity -> ok end." >"$WORK/tlsc$1.out" 2>&1 &
  PIDS+=("$!")
  disown
}
tls_client 1
for _ in $(seq 300); do grep -q '^rest' "$WORK/tlssrv.out" && break; sleep 0.1; done
for i in $(seq 2 "$TLS_CLIENTS"); do tls_client "$i"; done
for _ in $(seq 900); do grep -q '^connected' "$WORK/tlssrv.out" && break; sleep 0.1; done
grep -q '^connected' "$WORK/tlssrv.out" || die "the inet_tls_dist clients did not connect (see $WORK)"
T0=$(cpu_ticks "$SRV")
sleep "$IDLE"
T1=$(cpu_ticks "$SRV")
read -r _ VM0 SRV_RSS0 <<<"$(grep '^rest' "$WORK/tlssrv.out")"
read -r _ TLS_N VM1 SRV_RSS1 <<<"$(grep '^connected' "$WORK/tlssrv.out")"

# --------------------------------------------------------------------------------------------
# The table.

python3 - "$RESULTS/devices.json" <<EOF
import json, sys
n, tck, idle = $CONNECTED, $TCK, $IDLE
hub = {
  "devices": n, "failed": $SIM_FAILED, "registered_at_hub": $HUB_DEVICES, "still_connected_after_idle": ${STILL:-0},
  "connect_s": $CONNECT_S, "rss_kib_before": $HUB_RSS0, "rss_kib_connected": $HUB_RSS1, "rss_kib_after_idle": $HUB_RSS2,
  "kib_per_device": ($HUB_RSS1 - $HUB_RSS0) / max(n, 1),
  "cpu_pct_idle": 100.0 * ($C1 - $C0) / tck / idle,
}
added = max($TLS_N - 1, 1)
tls = {
  "connections": $TLS_N, "rss_kib_one_connection": $SRV_RSS0, "rss_kib_connected": $SRV_RSS1,
  "vm_bytes_one_connection": $VM0, "vm_bytes_connected": $VM1,
  "kib_per_connection_rss": ($SRV_RSS1 - $SRV_RSS0) / added,
  "kib_per_connection_vm": ($VM1 - $VM0) / 1024 / added,
  "cpu_pct_idle": 100.0 * ($T1 - $T0) / tck / idle,
}
print()
print(f"devices: idle connections at the server side, {idle} s idle (one network namespace, loopback)")
print(f"{'':44}{'edist hub':>16}{'OTP inet_tls_dist':>20}")
print(f"{'idle connections':44}{hub['devices']:>16}{tls['connections']:>20}")
print(f"{'server RSS with them (MiB)':44}{$HUB_RSS1 / 1024:>16.1f}{$SRV_RSS1 / 1024:>20.1f}")
print(f"{'memory per idle connection (RSS)':44}{hub['kib_per_device']:>13.1f} KiB{tls['kib_per_connection_rss']:>16.1f} KiB")
print(f"{'memory per idle connection (BEAM memory)':44}{'-':>16}{tls['kib_per_connection_vm']:>16.1f} KiB")
print(f"{'CPU while idle (one core = 100 %)':44}{hub['cpu_pct_idle']:>14.2f} %{tls['cpu_pct_idle']:>18.2f} %")
print(f"{'connect time (all, 64 handshakes at a time)':44}{hub['connect_s']:>14.1f} s{'':>20}")
print(f"{'still connected after the idle time':44}{hub['still_connected_after_idle']:>16}{'':>20}")
print(f"target: <= 16 KiB per idle device connection at the hub: {'met' if hub['kib_per_device'] <= 16 else 'MISSED'}")
json.dump({"edist_hub": hub, "otp_inet_tls_dist": tls}, open(sys.argv[1], "w"), indent=1)
EOF
FAILED=0
