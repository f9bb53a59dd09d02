#!/usr/bin/env bash
# bench/run devices: what an idle device connection costs at its hub, next to what an idle
# inet_tls_dist connection costs an OTP node, and what the connection costs the device.
#
# 1. edist hub: one hub gateway ([devices] listen) and DEVICES_COUNT simulated devices (default
#    10000; crates/edist-gateway/examples/devices.rs: Rust clients speaking exactly what the
#    Erlang connector edist_device_dist speaks: TLS 1.3 with a device certificate each, the
#    control preface, heartbeats every third of the hub's idle timeout). Measured on the hub
#    process: RSS before and after every device connected (per device), CPU over DEVICES_IDLE
#    seconds of idle (default 30), and the connect time.
# 2. The device side: two real device BEAMs (-proto_dist edist_device, OTP ssl) on a fresh hub.
#    One measures itself (erlang:memory(total) after a full GC, and the memory of the
#    connection's processes: its ssl processes and the connector's) with no connection yet,
#    with its control connection up, and with one distribution connection (to the other device,
#    through the hub) up as well.
# 3. OTP: a server BEAM with -proto_dist inet_tls (TLS 1.3, mutual) and DEVICES_TLS_CONNS
#    (default 1000) idle distribution connections to it from
#    crates/edist-gateway/examples/otp_tls_clients.rs (TLS 1.3 with a certificate, the standard
#    handshake as hidden nodes, ticks answered): a client BEAM per connection would weigh far
#    more than the server it measures. The server's RSS and erlang:memory(total) after a full
#    GC, with one connection (what the first loads, such as ssl's code, is no connection's
#    cost) and with all of them, per added connection; its CPU over the same idle window.
#
# Everything runs in one network namespace of its own (its own loopback, epmd and port range).
# DEVICES_HUB_ONLY=1: part 1 only, one line on stdout (for profiling the hub).
# Writes bench/results/devices.json. Run through bench/run (which checks root and arguments).
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=$(dirname "$BENCH_DIR")
COUNT=${DEVICES_COUNT:-10000}
IDLE=${DEVICES_IDLE:-30}
TLS_CONNS=${DEVICES_TLS_CONNS:-1000}
RESULTS=${BENCH_RESULTS:-$BENCH_DIR/results}
KEEP=${BENCH_KEEP:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
EDIST=$TARGET_DIR/release/edist
SIM=$TARGET_DIR/release/examples/devices
OTPSIM=$TARGET_DIR/release/examples/otp_tls_clients

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  log "building edist and the devices example (release) ..."
  (cd "$ROOT" && cargo build --release --quiet -p edist && cargo build --release --quiet -p edist-gateway --example devices --example otp_tls_clients) \
    || die "cargo build failed"
fi
[ -x "$EDIST" ] && [ -x "$SIM" ] && [ -x "$OTPSIM" ] || die "$EDIST, $SIM or $OTPSIM missing"

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
# A socket per device at the hub and one at the simulator: the default port range and
# descriptor limit are too small for 10,000.
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
sleep 1

# --------------------------------------------------------------------------------------------
# The device side: two device BEAMs with the Erlang connector, on a fresh hub.

HOST=$(hostname -s)
mkdir -p "$WORK/erl"
"$EDIST" erl-flags --device-source >"$WORK/erl/edist_device_dist.erl"
erlc -o "$WORK/erl" "$WORK/erl/edist_device_dist.erl" || die "erlc edist_device_dist.erl failed"
for d in devbeam devpeer devpeer2; do
  [ -f "$CERTS/$d@$HOST.pem" ] || "$EDIST" certs issue --device "$d@$HOST" --dir "$CERTS" --days 30 >/dev/null
done
DEV_ENV="[{hubs,[{\"gw-hub\",\"127.0.0.1\",4372}]},{certs_dir,\"$CERTS\"},{backoff_max_ms,500}]"
device_beam() {
  ip netns exec "$NS" env ERL_EPMD_PORT=1 erl -proto_dist edist_device -start_epmd false -sname "$1" \
    -setcookie bench -pa "$WORK/erl" -kernel edist_device "$DEV_ENV" +sbwt none +sbwtdcpu none +sbwtdio none \
    -noshell -eval "$2" >"$WORK/$1.out" 2>&1 &
  PIDS+=("$!")
  disown
}
# Each snapshot after a full GC: erlang:memory(total) less the code loaded (ssl's modules are
# loaded by the first connection: no connection's cost), then the count and memory of the ssl
# connection processes (receiver, sender, their supervisor) and of the connector's processes
# (the control process, a distribution controller per connection). Distribution connections
# to two nodes: the second one's figures are one connection's, without what the first loads.
DEV_EVAL="
Kind = fun(P) ->
  case erlang:process_info(P, [dictionary, current_function]) of
    [{dictionary, D}, {current_function, {M, _, _}}] ->
      case proplists:get_value('\$initial_call', D) of
        {tls_sender, _, _} -> ssl;
        {ssl_gen_statem, _, _} -> ssl;
        {supervisor, tls_dyn_connection_sup, _} -> ssl;
        _ when M =:= edist_device_dist -> connector;
        _ -> other
      end;
    _ -> other
  end end,
Snap = fun(Tag) ->
  [erlang:garbage_collect(P) || P <- processes()], timer:sleep(500),
  Ps = [{Kind(P), M} || P <- processes(), {memory, M} <- [erlang:process_info(P, memory)]],
  Sum = fun(K) -> lists:sum([M || {K2, M} <- Ps, K2 =:= K]) end,
  Cnt = fun(K) -> length([x || {K2, _} <- Ps, K2 =:= K]) end,
  io:format(\"~s ~b ~b ~b ~b ~b~n\", [Tag, erlang:memory(total) - erlang:memory(code), Cnt(ssl), Sum(ssl), Cnt(connector), Sum(connector)])
end,
Up = fun Up(0) -> timeout; Up(N) -> case catch maps:get(connected, edist_device_dist:info()) of true -> ok; _ -> timer:sleep(100), Up(N - 1) end end,
Go = fun Go(0) -> timeout; Go(N) -> case filelib:is_file(\"$WORK/go\") of true -> ok; false -> timer:sleep(100), Go(N - 1) end end,
io:format(\"up~n\"),
timer:sleep(3000), Snap(\"none\"),
ok = Go(600), ok = Up(300), timer:sleep(2000), Snap(\"control\"),
pong = net_adm:ping('devpeer@$HOST'), timer:sleep(2000), Snap(\"dist1\"),
pong = net_adm:ping('devpeer2@$HOST'), timer:sleep(2000), Snap(\"dist\"),
receive after infinity -> ok end."
# devbeam first, with no hub to reach: its first snapshot has no connection.
device_beam devbeam "$DEV_EVAL"
for _ in $(seq 300); do grep -q '^none' "$WORK/devbeam.out" && break; sleep 0.1; done
grep -q '^none' "$WORK/devbeam.out" || die "the device BEAM did not start (see $WORK/devbeam.out)"
ip netns exec "$NS" "$EDIST" gateway --config "$WORK/hub.toml" >"$WORK/hub2.log" 2>&1 &
PIDS+=("$!")
disown
for _ in $(seq 100); do grep -q 'devices hub listening' "$WORK/hub2.log" && break; sleep 0.1; done
device_beam devpeer "receive after infinity -> ok end."
device_beam devpeer2 "receive after infinity -> ok end."
touch "$WORK/go"
for _ in $(seq 300); do grep -q '^dist ' "$WORK/devbeam.out" && break; sleep 0.1; done
grep -q '^dist ' "$WORK/devbeam.out" || die "the device BEAM did not connect (see $WORK/devbeam.out, hub2.log)"
read -r _ DV0 _ _ _ _ <<<"$(grep '^none' "$WORK/devbeam.out")"
read -r _ DVC DSSLC DSSLMC DCONC DCONMC <<<"$(grep '^control' "$WORK/devbeam.out")"
read -r _ DV1 DSSL1 DSSLM1 DCON1 DCONM1 <<<"$(grep '^dist1' "$WORK/devbeam.out")"
read -r _ DV2 DSSL2 DSSLM2 DCON2 DCONM2 <<<"$(grep '^dist ' "$WORK/devbeam.out")"
log "device side: $(grep -E '^(none|control|dist)' "$WORK/devbeam.out" | tr '\n' ';')"
for p in $(ip netns pids "$NS"); do kill -KILL "$p" 2>/dev/null; done
sleep 1

# --------------------------------------------------------------------------------------------
# OTP: a server node with -proto_dist inet_tls and many idle distribution connections to it.

[ -f "$CERTS/tls-node.pem" ] || "$EDIST" certs issue tls-node --dir "$CERTS" --days 30 >/dev/null
printf '%s\n' "[{server, [{certfile, \"$CERTS/tls-node.pem\"}, {keyfile, \"$CERTS/tls-node.key\"}," \
  "           {cacertfile, \"$CERTS/ca.pem\"}, {verify, verify_peer}, {fail_if_no_peer_cert, true}," \
  "           {versions, ['tlsv1.3']}]}]." >"$WORK/ssl_dist.conf"
# The server prints its memory with one connection (what the first connection loads, such as
# ssl's connection code, is not a connection's cost) and with every connection, idle.
SERVER_EVAL="
Rss = fun() -> {ok, B} = file:read_file(\"/proc/self/status\"),
  [V] = [binary_to_integer(hd(binary:split(string:trim(R), <<\" \">>))) || L <- binary:split(B, <<\"\\n\">>, [global]), <<\"VmRSS:\", R/binary>> <- [L]], V end,
GC = fun() -> [erlang:garbage_collect(P) || P <- processes()], timer:sleep(500) end,
W = fun W(_, 0) -> timeout; W(K, N) -> case length(nodes(connected)) >= K of true -> ok; false -> timer:sleep(200), W(K, N - 1) end end,
io:format(\"up~n\"),
ok = W(1, 600), timer:sleep(3000), GC(),
io:format(\"rest ~b ~b~n\", [erlang:memory(total), Rss()]),
ok = W($TLS_CONNS + 1, 3000), timer:sleep(3000), GC(),
io:format(\"connected ~b ~b ~b~n\", [length(nodes(connected)), erlang:memory(total), Rss()]),
receive after infinity -> ok end."
ip netns exec "$NS" erl -sname tlssrv -proto_dist inet_tls -ssl_dist_optfile "$WORK/ssl_dist.conf" -setcookie bench \
  -kernel inet_dist_listen_min 4390 inet_dist_listen_max 4390 +sbwt none +sbwtdcpu none +sbwtdio none \
  +Q $((TLS_CONNS * 2 + 1024)) -noshell -eval "$SERVER_EVAL" >"$WORK/tlssrv.out" 2>&1 &
SRV=$!
disown
PIDS+=("$SRV")
for _ in $(seq 300); do grep -q '^up' "$WORK/tlssrv.out" && break; sleep 0.1; done
grep -q '^up' "$WORK/tlssrv.out" || die "the inet_tls_dist server did not start (see $WORK/tlssrv.out)"
otp_clients() {
  ip netns exec "$NS" "$OTPSIM" 127.0.0.1:4390 "tlssrv@$HOST" "$HOST" bench "$CERTS" tls-node "$1" "$2" \
    >"$WORK/otp$3.out" 2>"$WORK/otp$3.err" &
  PIDS+=("$!")
  disown
}
otp_clients 1 $((IDLE + 600)) 1
for _ in $(seq 300); do grep -q '^rest' "$WORK/tlssrv.out" && break; sleep 0.1; done
grep -q '^rest' "$WORK/tlssrv.out" || die "the first inet_tls_dist connection did not come up (see $WORK)"
log "inet_tls_dist: server up with one connection; connecting $TLS_CONNS more ..."
otp_clients "$TLS_CONNS" $((IDLE + 600)) N
for _ in $(seq 3000); do grep -q "^connected" "$WORK/tlssrv.out" && break; grep -q "^idle" "$WORK/otpN.out" && ! grep -q "^failed 0" "$WORK/otpN.out" && break; sleep 0.1; done
grep -q '^connected' "$WORK/tlssrv.out" || die "the inet_tls_dist clients did not all connect (see $WORK)"
# `ip netns exec` execs erl, which execs beam.smp: $SRV is the BEAM itself.
T0=$(cpu_ticks "$SRV")
sleep "$IDLE"
T1=$(cpu_ticks "$SRV")
read -r _ VM0 SRV_RSS0 <<<"$(grep '^rest' "$WORK/tlssrv.out")"
read -r _ TLS_N VM1 SRV_RSS1 <<<"$(grep '^connected' "$WORK/tlssrv.out")"
OTP_STILL=$(awk '/^connected/ {print $2}' "$WORK/otpN.out")

# --------------------------------------------------------------------------------------------
# The table.

python3 - "$RESULTS/devices.json" <<PY
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
  "connections": $TLS_N, "clients_connected": ${OTP_STILL:-0},
  "rss_kib_one_connection": $SRV_RSS0, "rss_kib_connected": $SRV_RSS1,
  "vm_bytes_one_connection": $VM0, "vm_bytes_connected": $VM1,
  "kib_per_connection_rss": ($SRV_RSS1 - $SRV_RSS0) / added,
  "kib_per_connection_vm": ($VM1 - $VM0) / 1024 / added,
  "cpu_pct_idle": 100.0 * ($T1 - $T0) / tck / idle,
}
dev = {
  "vm_bytes_less_code_no_connection": $DV0, "vm_bytes_less_code_control": $DVC,
  "vm_bytes_less_code_one_dist": $DV1, "vm_bytes_less_code_two_dist": $DV2,
  "control_kib_vm": ($DVC - $DV0) / 1024, "dist_kib_vm": ($DV2 - $DV1) / 1024,
  "control_ssl_processes": $DSSLC, "control_ssl_kib": $DSSLMC / 1024,
  "control_connector_processes": $DCONC, "control_connector_kib": $DCONMC / 1024,
  "dist_ssl_processes": $DSSL2 - $DSSL1, "dist_ssl_kib": ($DSSLM2 - $DSSLM1) / 1024,
  "dist_connector_processes": $DCON2 - $DCON1, "dist_connector_kib": ($DCONM2 - $DCONM1) / 1024,
}
w = 46
print()
print(f"devices: idle connections at the server side, {idle} s idle (one network namespace, loopback)")
print(f"{'':{w}}{'edist hub':>16}{'OTP inet_tls_dist':>20}")
print(f"{'idle connections (measured)':{w}}{hub['devices']:>16}{added:>20}")
print(f"{'server RSS with them (MiB)':{w}}{$HUB_RSS1 / 1024:>16.1f}{$SRV_RSS1 / 1024:>20.1f}")
print(f"{'memory per idle connection (RSS)':{w}}{hub['kib_per_device']:>12.1f} KiB{tls['kib_per_connection_rss']:>16.1f} KiB")
print(f"{'memory per idle connection (erlang:memory)':{w}}{'-':>16}{tls['kib_per_connection_vm']:>16.1f} KiB")
print(f"{'CPU while idle (one core = 100 %)':{w}}{hub['cpu_pct_idle']:>14.2f} %{tls['cpu_pct_idle']:>18.2f} %")
print(f"{'connect time (all)':{w}}{hub['connect_s']:>14.1f} s{'':>20}")
print(f"{'still connected after the idle time':{w}}{hub['still_connected_after_idle']:>16}{'':>20}")
print(f"target: <= 16 KiB per idle device connection at the hub: {'met' if hub['kib_per_device'] <= 16 else 'MISSED'}")
print()
print("the device side: one device BEAM (erlang:memory(total) less code, after a full GC; the processes' own memory)")
print(f"{'':{w}}{'erlang:memory':>16}{'ssl processes':>20}{'connector':>16}")
print(f"{'its control connection to the hub':{w}}{dev['control_kib_vm']:>12.1f} KiB{dev['control_ssl_kib']:>12.1f} KiB ({dev['control_ssl_processes']}){dev['control_connector_kib']:>9.1f} KiB ({dev['control_connector_processes']})")
print(f"{'+ a distribution connection (per node)':{w}}{dev['dist_kib_vm']:>12.1f} KiB{dev['dist_ssl_kib']:>12.1f} KiB ({dev['dist_ssl_processes']}){dev['dist_connector_kib']:>9.1f} KiB ({dev['dist_connector_processes']})")
print("(the control connection's erlang:memory figure includes what ssl keeps once: its caches, certificates, keys)")
json.dump({"edist_hub": hub, "otp_inet_tls_dist": tls, "device_side": dev}, open(sys.argv[1], "w"), indent=1)
PY
FAILED=0
