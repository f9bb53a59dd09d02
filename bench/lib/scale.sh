#!/usr/bin/env bash
# bench/run scale: what the number of nodes costs.
#
# Part 1, BEAM nodes side by side: SCALE_HOSTS network namespaces on one bridge (default 8), each
# with SCALE_BEAMS BEAM nodes (default 4), every node connected to every other (net_adm:ping),
# net_ticktime SCALE_TICKTIME (default 8 s) everywhere; plain OTP distribution, then the same
# through edist gateways. Reports the connections between hosts, the time until every node
# reached every other, and the idle traffic between the hosts (the hosts' eth0 byte counters
# over SCALE_IDLE seconds, default 16: plain OTP ticks there; edist keeps ticks on each host).
#
# Part 2, Rust-native nodes at the size of the issue (crates/edist-gateway/examples/scale.rs):
# SCALE_GATEWAYS processes (default 50), each one gateway with SCALE_NODES Rust-native nodes
# (default 20) behind it, each node messaging SCALE_FANOUT random others (default 20), then idle,
# then one host killed. Reports links, convergence, idle bytes/s, nodedown time, memory; run
# twice, with a link between every two gateways and with SWIM membership and lazy links.
#
# Writes bench/results/scale.json. Run through bench/run (which checks root and arguments).
set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=$(dirname "$BENCH_DIR")
HOSTS=${SCALE_HOSTS:-8}
BEAMS=${SCALE_BEAMS:-4}
TICKTIME=${SCALE_TICKTIME:-8}
IDLE=${SCALE_IDLE:-16}
GATEWAYS=${SCALE_GATEWAYS:-50}
NODES=${SCALE_NODES:-20}
FANOUT=${SCALE_FANOUT:-20}
MODES=${BENCH_MODES:-"plain edist"}
RESULTS=${BENCH_RESULTS:-$BENCH_DIR/results}
KEEP=${BENCH_KEEP:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
EDIST=$TARGET_DIR/release/edist
SCALE_BIN=$TARGET_DIR/release/examples/scale

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  log "building edist and the scale example (release) ..."
  (cd "$ROOT" && cargo build --release --quiet -p edist && cargo build --release --quiet -p edist-gateway --example scale) \
    || die "cargo build failed"
fi
[ -x "$EDIST" ] && [ -x "$SCALE_BIN" ] || die "$EDIST or $SCALE_BIN missing"

WORK=$(mktemp -d /tmp/edist-bench-scale.XXXXXX)
PFX=eds$$
COOKIE=scale_$$_$RANDOM
FAILED=1
# The kernel's ARP cache is shared by all namespaces (gc_thresh3 1024 by default): 50 hosts
# knowing 49 neighbours each overflow it, and links silently fail to form. Raised for the run.
NEIGH_OLD=$(sysctl -n net.ipv4.neigh.default.gc_thresh1 net.ipv4.neigh.default.gc_thresh2 net.ipv4.neigh.default.gc_thresh3 | tr '\n' ' ')
sysctl -qw net.ipv4.neigh.default.gc_thresh1=4096 net.ipv4.neigh.default.gc_thresh2=8192 net.ipv4.neigh.default.gc_thresh3=16384
cleanup() {
  local rc=$?
  set +e
  trap - EXIT
  read -r t1 t2 t3 <<<"$NEIGH_OLD"
  sysctl -qw net.ipv4.neigh.default.gc_thresh1="$t1" net.ipv4.neigh.default.gc_thresh2="$t2" net.ipv4.neigh.default.gc_thresh3="$t3"
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PFX" || true); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  if [ "$FAILED" = 1 ] || [ "$KEEP" = 1 ]; then log "work directory (logs) kept: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT

# add_host NS BRIDGE PORT ADDR/PREFIX: namespace NS whose eth0 (ADDR) is port PORT of BRIDGE in
# the switch namespace ${PFX}sw.
add_host() {
  ip netns add "$1"
  ip -n "$1" link set lo up
  ip -n "${PFX}sw" link add "$3" type veth peer name eth0 netns "$1"
  ip -n "${PFX}sw" link set "$3" master "$2" up
  ip -n "$1" addr add "$4" dev eth0
  ip -n "$1" link set eth0 up
}

# Hosts h0..h(N-1) on bridge br0 in namespace ${PFX}sw; host i has 10.79.0.(i+1).
ip netns add "${PFX}sw"
for br in br0 br1; do
  ip -n "${PFX}sw" link add $br type bridge
  ip -n "${PFX}sw" link set $br up
done
for i in $(seq 0 $((HOSTS - 1))); do add_host "${PFX}h$i" br0 "p$i" "10.79.0.$((i + 1))/24"; done

wire_bytes() {  # total bytes through all hosts' eth0 (each frame counted once: tx only)
  local t=0 i
  for i in $(seq 0 $((HOSTS - 1))); do
    t=$((t + $(ip netns exec "${PFX}h$i" cat /sys/class/net/eth0/statistics/tx_bytes)))
  done
  echo $t
}

# An Erlang node: connects to every name in the file $WORK/names, prints "meshed MS NODES"
# (ms since it started trying), then idles.
MESH='{ok, [Names]} = file:consult(os:getenv("SCALE_NAMES")),
  Others = [N || N <- Names, N =/= node()], T0 = erlang:monotonic_time(millisecond),
  Loop = fun L(Left) -> Down = [N || N <- Left, net_adm:ping(N) =/= pong],
    case Down of [] -> ok; _ -> timer:sleep(100), L(Down) end end,
  Loop(Others), io:format("meshed ~b ~b~n", [erlang:monotonic_time(millisecond) - T0, length(nodes())]),
  receive after infinity -> ok end.'

declare -A R
run_beams() {
  local mode=$1 names=() i k
  log "---- scale: $mode, $HOSTS hosts x $BEAMS BEAM nodes"
  local certs=$WORK/certs
  if [ "$mode" = edist ]; then
    "$EDIST" certs init --dir "$certs" >/dev/null
    for i in $(seq 0 $((HOSTS - 1))); do "$EDIST" certs issue "gw-$i" --dir "$certs" >/dev/null; done
    for i in $(seq 0 $((HOSTS - 1))); do
      {
        printf 'name = "gw-%s"\ncookie = "%s"\n[local]\nnet_ticktime = %s\n[fabric]\nlisten = "10.79.0.%s:4371"\ncerts = "%s"\n' \
          "$i" "$COOKIE" "$TICKTIME" "$((i + 1))" "$certs"
        for k in $(seq 0 $((i - 1))); do printf '[[peers]]\nname = "gw-%s"\naddr = "10.79.0.%s:4371"\n' "$k" "$((k + 1))"; done
      } >"$WORK/gw-$i.toml"
      # In a subshell, so that this shell has no jobs to report when they are killed.
      (ip netns exec "${PFX}h$i" env EDIST_LOG=warn "$EDIST" gateway --config "$WORK/gw-$i.toml" >"$WORK/gw-$i.log" 2>&1 &)
    done
    sleep 1
  fi
  for i in $(seq 0 $((HOSTS - 1))); do
    for k in $(seq 1 "$BEAMS"); do
      if [ "$mode" = plain ]; then names+=("'h${i}n$k@10.79.0.$((i + 1))'"); else names+=("'h${i}n$k@$(hostname -s)'"); fi
    done
  done
  (IFS=,; echo "[${names[*]}].") >"$WORK/names-$mode"
  local plug
  plug=$(XDG_CACHE_HOME=$WORK/cache "$EDIST" erl-flags)
  local t0=$SECONDS
  for i in $(seq 0 $((HOSTS - 1))); do
    local ns=${PFX}h$i
    [ "$mode" = plain ] && { ip netns exec "$ns" epmd -daemon; sleep 0.2; }
    for k in $(seq 1 "$BEAMS"); do
      local flags
      if [ "$mode" = plain ]; then flags="-name h${i}n$k@10.79.0.$((i + 1))"
      else flags="$plug -kernel inet_dist_use_interface {127,0,0,1} -sname h${i}n$k"; fi
      # shellcheck disable=SC2086
      (ip netns exec "$ns" env -u ERL_FLAGS SCALE_NAMES="$WORK/names-$mode" $([ "$mode" = edist ] && echo ERL_EPMD_PORT=1) \
        erl -noshell +sbwt none +sbwtdcpu none +sbwtdio none $flags -setcookie "$COOKIE" \
        -kernel net_ticktime "$TICKTIME" -eval "$MESH" >"$WORK/$mode-h${i}n$k.log" 2>&1 &)
    done
  done
  local n=$((HOSTS * BEAMS)) end=$((SECONDS + 180)) meshed=0
  while [ $SECONDS -lt $end ]; do
    meshed=$(cat "$WORK"/$mode-h*.log 2>/dev/null | grep -c '^meshed' || true)
    [ "$meshed" -ge $n ] && break
    sleep 0.5
  done
  [ "$meshed" -ge $n ] || { log "$mode: only $meshed of $n nodes meshed in 180 s"; return 1; }
  local worst
  worst=$(cat "$WORK"/$mode-h*.log | awk '/^meshed/ {if ($2 > m) m = $2} END {print m / 1000}')
  R[$mode.mesh_s]=$worst
  R[$mode.node_connections]=$((n * (n - 1) / 2))
  local links=0
  if [ "$mode" = plain ]; then
    for i in $(seq 0 $((HOSTS - 1))); do
      links=$((links + $(ip netns exec "${PFX}h$i" ss -Htn state established | awk '$4 !~ /^127\./ && $4 !~ /:4369$/ && $5 !~ /:4369$/' | wc -l)))
    done
  else
    for i in $(seq 0 $((HOSTS - 1))); do
      links=$((links + $(ip netns exec "${PFX}h$i" "$EDIST" status --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["peers"]))')))
    done
  fi
  R[$mode.host_links]=$((links / 2))
  sleep 2
  local b0 b1
  b0=$(wire_bytes); sleep "$IDLE"; b1=$(wire_bytes)
  R[$mode.idle_bytes_per_s_per_host]=$(( (b1 - b0) / IDLE / HOSTS ))
  log "$mode: all $n nodes meshed within ${worst} s; ${R[$mode.host_links]} connections between hosts; idle $(( (b1 - b0) / IDLE / HOSTS )) B/s per host"
  for i in $(seq 0 $((HOSTS - 1))); do
    for p in $(ip netns pids "${PFX}h$i"); do kill -KILL "$p" 2>/dev/null || true; done
  done
  sleep 1
}

for m in $MODES; do
  case "$m" in plain|edist) run_beams "$m" || exit 1 ;; *) log "scale: mode $m does not apply (plain, edist)" ;; esac
done

log "---- scale: $GATEWAYS gateways x $NODES Rust-native nodes, fanout $FANOUT"
# One namespace per gateway (its own loopback and port space), on a bridge of their own;
# gateway i at 10.80.(i/250).(i%250+1).
for i in $(seq 0 $((GATEWAYS - 1))); do add_host "${PFX}g$i" br1 "q$i" "10.80.$((i / 250)).$((i % 250 + 1))/16"; done
# Twice: links to every gateway (the registry on the links), then SWIM membership with lazy links.
for fabric in mesh swim; do
  log "  fabric: $fabric"
  SCALE_MEMBERSHIP=$([ $fabric = swim ] && echo 1 || echo 0) SCALE_NETNS=${PFX}g SCALE_NET=10.80 \
    "$SCALE_BIN" "$GATEWAYS" "$NODES" "$FANOUT" 10 >"$WORK/rust-$fabric.txt" 2>"$WORK/rust-$fabric.log" \
    || { cat "$WORK/rust-$fabric.log" >&2; die "the scale example failed ($fabric)"; }
  [ -s "$WORK/rust-$fabric.log" ] && { log "connections that failed, by host and reason:"; sed 's/^/    /' "$WORK/rust-$fabric.log" >&2; }
done

python3 - "$WORK/rust-mesh.txt" "$WORK/rust-swim.txt" "$RESULTS/scale.json" "$HOSTS" "$BEAMS" "$TICKTIME" "$IDLE" \
  "$(for k in "${!R[@]}"; do echo "$k=${R[$k]}"; done)" <<'EOF'
import json, sys
mesh_txt, swim_txt, out, hosts, beams, ticktime, idle, kv = sys.argv[1:9]
beam = {}
for line in kv.split("\n"):
    if "=" in line:
        k, v = line.split("=", 1)
        mode, key = k.split(".", 1)
        beam.setdefault(mode, {})[key] = float(v) if "." in v else int(v)
def figures(path):
    r = {}
    for line in open(path):
        k, _, v = line.strip().partition(" ")
        try:
            r[k] = float(v) if "." in v else int(v)
        except ValueError:
            r[k] = v
    return r
rust, swim = figures(mesh_txt), figures(swim_txt)
print(f"\nscale: BEAM nodes, {hosts} hosts x {beams} nodes, every node connected to every other, net_ticktime {ticktime} s")
rows = [("connections between nodes", "node_connections"), ("connections between hosts", "host_links"),
        ("slowest node meshed (s)", "mesh_s"), (f"idle bytes/s per host ({idle} s)", "idle_bytes_per_s_per_host")]
modes = [m for m in ("plain", "edist") if m in beam]
print(f"{'':34}" + "".join(f"{m:>12}" for m in modes) + ("     edist/plain" if len(modes) == 2 else ""))
for label, key in rows:
    vals = [beam[m].get(key) for m in modes]
    ratio = ""
    if len(vals) == 2 and vals[0] and vals[1] is not None:
        ratio = f"{vals[1] / vals[0]:>16.3f}"
    print(f"{label:34}" + "".join(f"{v if v is not None else '-':>12}" for v in vals) + ratio)
print(f"\nscale: Rust-native nodes, {rust.get('gateways')} gateways x {rust.get('nodes_per_gateway')} nodes, fanout {rust.get('fanout')}")
print(f"  {'':50} {'full mesh':>16} {'swim + lazy':>16}")
for k in list(rust) + [k for k in swim if k not in rust]:
    if k not in ("gateways", "nodes_per_gateway", "fanout", "membership"):
        print(f"  {k:50} {str(rust.get(k, '-')):>16} {str(swim.get(k, '-')):>16}")
json.dump({"scenario": "scale", "beam": beam, "rust": rust, "rust_swim": swim,
           "params": {"hosts": int(hosts), "beams_per_host": int(beams), "net_ticktime_s": int(ticktime), "idle_s": int(idle)}},
          open(out, "w"), indent=2)
print(f"\nwrote {out}")
EOF
FAILED=0
