#!/usr/bin/env bash
# OTP's own distribution test suites (OTP 25.2.3: pg, erpc, rpc, erts distribution, global,
# erl_distribution) run ACROSS TWO edist GATEWAYS, so that the relay carries every connection
# between the suite's control node and the nodes it starts.
#
#   scripts/otp-suites.sh [OPTIONS] [SUITE...]
#
#   SUITE...      default: pg_SUITE erpc_SUITE rpc_SUITE distribution_SUITE global_SUITE
#                 erl_distribution_SUITE ("_SUITE" may be left off: `pg rpc`)
#   --plain       also run each suite on plain OTP (epmd, no edist)
#   --one         also run each suite with every node behind one gateway (tests the plug:
#                 nodes behind one gateway connect to each other directly, not via the relay)
#   --no-two      skip the two-gateway run (with --plain/--one)
#   --epmd a|b    export ERL_EPMD_PORT=<control port of gw-a or gw-b>, so that C nodes
#                 (erpc_SUITE's ei node, started by the control node: use `a`) register with
#                 the gateway instead of an epmd
#   --cases "C1 C2"   run only these cases (run.sh ONLY_CASES)
#   --skip "C1 C2"    skip these cases (run.sh SKIP_CASES)
#   --out DIR     where logs go (default $OTPSUITES_WORK/edist/<date-time>)
#   --fabric 'KEY = VALUE'   a line for both gateways' [fabric] table (repeatable), e.g.
#                 --fabric 'lanes = 0' or --fabric 'relay_buffer = 1048576'
#   --retry       run the cases that failed once more, on their own in a fresh namespace;
#                 cases that pass then count as passed and are listed as flaky
#   --release     build edist with --release (throughput-bound cases such as
#                 distribution_SUITE:exit_dist_fragments time out with a debug build)
#
# Environment: EDIST_BIN (an `edist` binary; default: `cargo build -p edist` here and use
# target/debug/edist, or target/release/edist with --release), OTPSUITES_HARNESS (the
# harness folder with run.sh; default scripts/otp-suites), OTPSUITES_WORK (where the harness
# keeps the fetched OTP sources, default ~/.cache/otpsuites), SUITE_TIMEOUT (seconds per suite
# run, default 2400), EDIST_LOG (gateway log filter, default info). The gateways take the
# cookie of ~/.erlang.cookie (the suites' nodes use it), which is created if missing.
#
# How: the OTP sources are fetched at run time by the harness (scripts/otp-suites/run.sh: the
# orig tarball of Debian's erlang 25.2.3 source package, which is OTP's own archive of tag
# OTP-25.2.3, from the system's Debian mirror with retries, checked by SHA-256, kept in
# OTPSUITES_WORK; nothing of OTP goes into git) and compiled first, with the network. Then,
# for each suite and mode, a fresh network namespace of its own (only `lo`): a throw-away CA
# and certificates for gw-a and gw-b (`edist certs`), both gateways started in the namespace
# (each a [[peers]] of the other; gw-a control 127.0.0.1:4370 fabric :4371, gw-b control :4380
# fabric :4381), and ct_run started there too: the control node with
# CT_ERL_ARGS="-edist_gateway 127.0.0.1:4370" (gw-a), every other node with
# ERL_FLAGS="$(edist erl-flags --gateway 127.0.0.1:4380)" (gw-b; a node takes the first
# -edist_gateway of its command line). On exit everything left in the namespaces is killed and
# the namespaces deleted.
#
# Output: one line per suite run, then a table
#   | suite | plain OTP | one gateway | two gateways |    (passed/failed/skipped)
# and the failing cases per suite and mode (auto-skipped cases, e.g. after a failing
# init_per_group, in brackets). Everything is kept under the output directory:
#   <mode>/<SUITE>/...              CT logs (ct_run.*/…/run.*/suite.log, per-case HTML)
#   <mode>/<SUITE>.*.console.log    ct_run's console
#   <mode>/<SUITE>.out              run.sh's output
#   <mode>/<SUITE>.gw/gw-{a,b}.log  gateway logs; .toml configs, certs/, status-*.json at the end
#   <mode>/<SUITE>.gw/refused.txt   the gateways' refusals (relays refused, counted by reason)
#   summary.md                      the table and failing cases
# Exit status 0 when no suite run had a failure.
#
# Needs root (network namespaces, apt-get for what is missing: erlang-base erlang-dev
# erlang-common-test erlang-os-mon gcc iproute2).
#
# Results next to plain OTP, and why each case that differs does: docs/otp-suites.md. CI
# (scripts/test.sh) runs `--retry --epmd a pg rpc erpc`.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALL_SUITES="pg_SUITE erpc_SUITE rpc_SUITE distribution_SUITE global_SUITE erl_distribution_SUITE"
A_CONTROL=127.0.0.1:4370 A_FABRIC=127.0.0.1:4371
B_CONTROL=127.0.0.1:4380 B_FABRIC=127.0.0.1:4381

die() { echo "otp-suites: $*" >&2; exit 2; }
say() { echo "otp-suites: $*" >&2; }

# ------------------------------------------------------------------ options
PLAIN=0 ONE=0 TWO=1 RETRY=0 EPMD="" CASES="" SKIP="" OUT="" FABRIC="" PROFILE=debug
SUITES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --plain) PLAIN=1 ;;
        --one) ONE=1 ;;
        --no-two) TWO=0 ;;
        --release) PROFILE=release ;;
        --retry) RETRY=1 ;;
        --epmd) EPMD="${2:-}"; shift ;;
        --cases) CASES="${2:-}"; shift ;;
        --skip) SKIP="${2:-}"; shift ;;
        --out) OUT="${2:-}"; shift ;;
        --fabric) FABRIC="$FABRIC${2:-}"$'\n'; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) s="${1%.erl}"; s="${s%_SUITE}_SUITE"; SUITES+=("$s") ;;
    esac
    shift
done
[ ${#SUITES[@]} -gt 0 ] || read -r -a SUITES <<<"$ALL_SUITES"
case "$EPMD" in "" | a | b) ;; *) die "--epmd takes a or b" ;; esac
[ -n "$CASES" ] && [ -n "$SKIP" ] && die "--cases and --skip do not combine"
MODES=()
[ "$PLAIN" = 1 ] && MODES+=(plain)
[ "$ONE" = 1 ] && MODES+=(one)
[ "$TWO" = 1 ] && MODES+=(two)
[ ${#MODES[@]} -gt 0 ] || die "nothing to run (--no-two without --plain or --one)"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"

# ------------------------------------------------------------------ prerequisites
missing=""
command -v erl >/dev/null 2>&1 || missing="$missing erlang-base"
command -v ct_run >/dev/null 2>&1 || missing="$missing erlang-common-test"
for p in erlang-dev erlang-os-mon; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
command -v gcc >/dev/null 2>&1 || missing="$missing gcc"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
if [ -n "$missing" ]; then
    say "installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    for try in 1 2 3 4; do
        # shellcheck disable=SC2086
        apt-get update -qq && apt-get install -y -qq $missing >/dev/null && break
        [ "$try" = 4 ] && die "apt-get install$missing failed"
        say "apt-get failed (try $try), again in $((try * 10)) s"
        sleep $((try * 10))
    done
fi

HARNESS="${OTPSUITES_HARNESS:-$REPO/scripts/otp-suites}"
[ -x "$HARNESS/run.sh" ] || die "no harness (run.sh): set OTPSUITES_HARNESS"

if [ -n "${EDIST_BIN:-}" ]; then
    EDIST="$EDIST_BIN"
else
    if [ "$PROFILE" = release ]; then set -- --release; else set --; fi
    # shellcheck disable=SC1091
    (cd "$REPO" && . scripts/setup.sh && cargo build --quiet "$@" -p edist) || die "cargo build -p edist failed"
    EDIST="${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE/edist"
fi
[ -x "$EDIST" ] || die "no edist binary at $EDIST"
EDIST="$(cd "$(dirname "$EDIST")" && pwd)/$(basename "$EDIST")"

WORK="${OTPSUITES_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/otpsuites}"
export OTPSUITES_WORK="$WORK"
OUT="${OUT:-$WORK/edist/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT" || die "cannot create $OUT"
OUT="$(cd "$OUT" && pwd)"

# The suites' nodes use ~/.erlang.cookie; the gateways must know it (they answer handshakes).
COOKIE_FILE="$HOME/.erlang.cookie"
if [ ! -s "$COOKIE_FILE" ]; then
    (umask 077 && tr -dc '[:upper:]' </dev/urandom | head -c 20 >"$COOKIE_FILE") && chmod 400 "$COOKIE_FILE"
fi
COOKIE="$(cat "$COOKIE_FILE")"

# Fetch (with retries: scripts/otp-suites/run.sh) and build the suites now: the namespaces
# have no network.
installed="$(dpkg-query -W -f '${Version}' erlang-base 2>/dev/null)"
case "$installed" in *:25.2.3+dfsg*) ;; *) say "erlang-base is '$installed', not 25.2.3: the suites are OTP 25.2.3's" ;; esac
for s in "${SUITES[@]}"; do
    PREPARE_ONLY=1 "$HARNESS/run.sh" "$s" >"$OUT/prepare.$s.log" 2>&1 \
        || die "preparing $s failed, see $OUT/prepare.$s.log"
done
FLAGS_A="$("$EDIST" erl-flags --gateway "$A_CONTROL")" || die "edist erl-flags failed"
FLAGS_B="$("$EDIST" erl-flags --gateway "$B_CONTROL")" || die "edist erl-flags failed"

# ------------------------------------------------------------------ namespaces
NAMESPACES=()
NS_N=0
ns_kill() {  # kills every process left in namespace $1, then deletes it
    local pids
    pids="$(ip netns pids "$1" 2>/dev/null)"
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -TERM $pids 2>/dev/null && sleep 1
    pids="$(ip netns pids "$1" 2>/dev/null)"
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null && sleep 0.5
    ip netns del "$1" 2>/dev/null
}
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    local ns
    for ns in "${NAMESPACES[@]}"; do [ -n "$ns" ] && ns_kill "$ns"; done
    NAMESPACES=()
}
trap cleanup EXIT
trap 'say interrupted; exit 130' INT TERM

new_ns() {
    NS_N=$((NS_N + 1))
    NS="otp-$$-$NS_N"
    ip netns add "$NS" || die "ip netns add $NS failed"
    NAMESPACES+=("$NS")
    ip -n "$NS" link set lo up || die "no loopback in $NS"
}

# gateway NAME CONTROL FABRIC PEER PEER_FABRIC DIR: writes DIR/NAME.toml, starts it in $NS
gateway() {
    local name=$1 control=$2 fabric=$3 peer=$4 peer_fabric=$5 dir=$6
    cat >"$dir/$name.toml" <<EOF
name = "$name"
cookie = "$COOKIE"

[local]
control = "$control"

[fabric]
listen = "$fabric"
certs = "$dir/certs"
$FABRIC
[[peers]]
name = "$peer"
addr = "$peer_fabric"
EOF
    # The gateways run ahead of the suite's nodes (nice 5 against 10), as the systemd unit runs
    # them ahead of a host's nodes (examples/systemd: Nice=-5).
    NO_COLOR=1 EDIST_LOG="${EDIST_LOG:-info}" ip netns exec "$NS" nice -n 5 "$EDIST" gateway --config "$dir/$name.toml" \
        >"$dir/$name.log" 2>&1 </dev/null &
}

# status CONTROL: the gateway's status as JSON (empty when it does not answer)
status() { ip netns exec "$NS" "$EDIST" status --gateway "$1" --json 2>/dev/null; }

# start_gateways DIR: certs, gw-a and gw-b in $NS, linked to each other
start_gateways() {
    local dir=$1
    mkdir -p "$dir/certs"
    if ! { "$EDIST" certs init --dir "$dir/certs" --cluster otp-suites \
            && "$EDIST" certs issue gw-a --dir "$dir/certs" \
            && "$EDIST" certs issue gw-b --dir "$dir/certs"; } >"$dir/certs.log" 2>&1; then
        cat "$dir/certs.log" >&2
        die "edist certs failed"
    fi
    gateway gw-a "$A_CONTROL" "$A_FABRIC" gw-b "$B_FABRIC" "$dir"
    gateway gw-b "$B_CONTROL" "$B_FABRIC" gw-a "$A_FABRIC" "$dir"
    for _ in $(seq 100); do
        if status "$A_CONTROL" | grep -q '"gw-b"' && status "$B_CONTROL" | grep -q '"gw-a"'; then
            return 0
        fi
        sleep 0.2
    done
    tail -n 20 "$dir"/gw-*.log >&2
    die "the gateways did not link within 20 s (logs in $dir)"
}

# ------------------------------------------------------------------ runs
# run_one MODE SUITE: runs the suite, leaves "P/F/S" in $OUT/MODE/SUITE.result and the
# failing cases in $OUT/MODE/SUITE.failed
run_one() {
    local mode=$1 suite=$2 cases=${3:-$CASES} to="$OUT/${4:-$1}" dir log rc t0 t1 last
    local -a envs=()
    dir="$to/$suite.gw"
    log="$to/$suite.out"
    mkdir -p "$to"
    new_ns
    case "$mode" in
        plain) ;;
        one)
            mkdir -p "$dir"; start_gateways "$dir"
            envs=("ERL_FLAGS=$FLAGS_A") ;;
        two)
            mkdir -p "$dir"; start_gateways "$dir"
            envs=("ERL_FLAGS=$FLAGS_B" "CT_ERL_ARGS=-edist_gateway $A_CONTROL") ;;
    esac
    if [ "$mode" != plain ] && [ -n "$EPMD" ]; then
        if [ "$EPMD" = a ]; then envs+=("ERL_EPMD_PORT=${A_CONTROL##*:}"); else envs+=("ERL_EPMD_PORT=${B_CONTROL##*:}"); fi
    fi
    if [ -n "$cases" ]; then envs+=("ONLY_CASES=$cases"); elif [ -n "$SKIP" ]; then envs+=("SKIP_CASES=$SKIP"); fi
    t0=$(date +%s)
    ip netns exec "$NS" env -u ERL_FLAGS -u CT_ERL_ARGS -u ERL_EPMD_PORT -u ONLY_CASES -u SKIP_CASES -u SKIP_KNOWN \
        "${envs[@]}" LOGROOT="$to" nice -n 10 "$HARNESS/run.sh" "$suite" >"$log" 2>&1 </dev/null
    rc=$?
    t1=$(date +%s)
    if [ -n "${dir:-}" ] && [ -d "$dir" ] && [ "$mode" != plain ]; then
        status "$A_CONTROL" >"$dir/status-gw-a.json"
        status "$B_CONTROL" >"$dir/status-gw-b.json"
    fi
    ns_kill "$NS"
    NAMESPACES=("${NAMESPACES[@]/$NS/}")
    last="$(tail -n 1 "$log")"
    local p f s
    p="$(sed -n 's/.* passed=\([0-9]*\).*/\1/p' <<<"$last")"
    f="$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$last")"
    s="$(sed -n 's/.* skipped=\([0-9]*\).*/\1/p' <<<"$last")"
    if [ -z "$p" ]; then
        echo "error" >"$to/$suite.result"
    else
        echo "$p/$f/$s" >"$to/$suite.result"
    fi
    # "run.sh:   failed       case" lines; auto_skipped ones in brackets
    awk '$1=="run.sh:" && $2=="failed" {c=$3; sub(/^[^:]*:/,"",c); printf "%s ", c}
         $1=="run.sh:" && $2=="auto_skipped" {c=$3; sub(/^[^:]*:/,"",c); printf "[%s] ", c}' "$log" >"$to/$suite.failed"
    if grep -q "no 'TEST COMPLETE'" "$log"; then printf '(ct_run did not complete) ' >>"$to/$suite.failed"; fi
    if [ "$mode" != plain ]; then
        # Refused relays say much about a failure (a node the gateway does not know, a
        # handshake it could not complete): each message with its count.
        grep -h 'refused' "$dir"/gw-*.log 2>/dev/null | sed -e 's/^.*relay ended: //' \
            | sort | uniq -c | sort -rn >"$dir/refused.txt"
        if [ -s "$dir/refused.txt" ] && [ -s "$to/$suite.failed" ]; then
            printf '(gateways refused %s relays: %s) ' "$(awk '{n += $1} END {print n}' "$dir/refused.txt")" \
                "$dir/refused.txt" >>"$to/$suite.failed"
        fi
    fi
    say "${4:-$mode} $suite: $(cat "$to/$suite.result") (p/f/s) rc=$rc $((t1 - t0))s  $(cat "$to/$suite.failed")"
}

# retry_failed MODE SUITE: with --retry, the cases of a completed run that failed run once
# more, on their own in a fresh namespace (logs in $OUT/MODE.retry); if they pass there, the
# run counts them as passed and lists them as flaky.
retry_failed() {
    local mode=$1 suite=$2 failed cases r rr
    failed="$(cat "$OUT/$mode/$suite.failed")"
    r="$(cat "$OUT/$mode/$suite.result")"
    # only plain failures: nothing auto-skipped, the run completed
    case "$failed" in *"["* | *"did not complete"*) return ;; esac
    cases="$(sed 's/(.*//' <<<"$failed" | xargs)"
    [[ -n "$cases" && "$r" =~ ^([0-9]+)/([0-9]+)/([0-9]+)$ ]] || return
    local p=${BASH_REMATCH[1]} f=${BASH_REMATCH[2]} s=${BASH_REMATCH[3]}
    say "$mode $suite: running the failed cases once more: $cases"
    run_one "$mode" "$suite" "$cases" "$mode.retry"
    rr="$(cat "$OUT/$mode.retry/$suite.result")"
    if [[ "$rr" =~ ^[0-9]+/0/[0-9]+$ ]]; then
        echo "$((p + f))/0/$s" >"$OUT/$mode/$suite.result"
        echo "(flaky: failed, then passed when run again: $cases)" >"$OUT/$mode/$suite.failed"
        say "$mode $suite: flaky: $cases failed, then passed when run again"
    fi
}

say "edist: $EDIST"
say "harness: $HARNESS; logs: $OUT"
for suite in "${SUITES[@]}"; do
    for mode in "${MODES[@]}"; do
        run_one "$mode" "$suite"
        [ "$RETRY" = 1 ] && retry_failed "$mode" "$suite"
    done
done

# ------------------------------------------------------------------ report
label() { case "$1" in plain) echo "plain OTP" ;; one) echo "one gateway" ;; two) echo "two gateways" ;; esac; }
{
    printf '| suite |'
    for m in "${MODES[@]}"; do printf ' %s |' "$(label "$m")"; done
    printf '\n|---|'
    for _ in "${MODES[@]}"; do printf -- '---|'; done
    printf '\n'
    for suite in "${SUITES[@]}"; do
        printf '| %s |' "$suite"
        for m in "${MODES[@]}"; do printf ' %s |' "$(cat "$OUT/$m/$suite.result")"; done
        printf '\n'
    done
    printf '\n(passed/failed/skipped; %s)\n\nFailing cases ([auto-skipped], flaky):\n' "$("$EDIST" --version 2>/dev/null)"
    for suite in "${SUITES[@]}"; do
        for m in "${MODES[@]}"; do
            [ -s "$OUT/$m/$suite.failed" ] && printf -- '- %s, %s: %s\n' "$suite" "$(label "$m")" "$(cat "$OUT/$m/$suite.failed")"
        done
    done
    printf '\nLogs: %s\n' "$OUT"
} | tee "$OUT/summary.md"

# One closing line over all runs (a run that did not complete counts as one failure).
TP=0 TF=0 TS=0 RC=0
for suite in "${SUITES[@]}"; do
    for m in "${MODES[@]}"; do
        r="$(cat "$OUT/$m/$suite.result")"
        case "$r" in
            */0/*) ;;
            *) RC=1 ;;
        esac
        if [[ "$r" =~ ^([0-9]+)/([0-9]+)/([0-9]+)$ ]]; then
            TP=$((TP + BASH_REMATCH[1])) TF=$((TF + BASH_REMATCH[2])) TS=$((TS + BASH_REMATCH[3]))
        else
            TF=$((TF + 1))
        fi
    done
done
echo "otp-suites: $TP passed, $TF failed, $TS skipped"
exit $RC
