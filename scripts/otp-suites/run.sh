#!/usr/bin/env bash
# run.sh SUITE [EXTRA_ERL_FLAGS]
#
# Compiles what SUITE needs and runs it with ct_run against the installed
# Erlang/OTP (25.2.3 from Debian), using OTP's own test suites taken from
# the OTP-25.2.3 source (see README.md next to this script).
#
#   SUITE            erpc_SUITE | rpc_SUITE | pg_SUITE | global_SUITE |
#                    erl_distribution_SUITE | distribution_SUITE  (".erl" optional)
#                    (also flags_probe_SUITE: the ERL_FLAGS propagation probe)
#   EXTRA_ERL_FLAGS  optional; appended to ERL_FLAGS and exported, so they reach
#                    the ct_run node AND every node it starts (peer, slave,
#                    test_server:start_node, os:cmd("erl ...")), exactly like an
#                    ERL_FLAGS value set in the caller's environment.
#
# Environment knobs (all optional):
#   ERL_FLAGS        honoured and inherited by all nodes (see above)
#   SKIP_CASES       space separated test cases to skip (via a CT test spec)
#   SKIP_KNOWN=1     also skip the cases listed in known_failures/SUITE.txt
#   ONLY_CASES       space separated test cases to run (ct_run -case); not
#                    combinable with SKIP_CASES/SKIP_KNOWN
#   SUITE_TIMEOUT    wall-clock limit in seconds for ct_run (default 2400)
#   CT_ERL_ARGS      flags for the ct_run node only (e.g. -edist_gateway H:P: a node takes
#                    the first -edist_gateway on its command line, so the control node and
#                    the nodes it starts can sit behind different gateways)
#   PREPARE_ONLY=1   fetch and build the suites, run nothing (needs the package network)
#   LOGROOT          where CT logs go (default: $OTPSUITES_WORK/logs)
#
# Last line printed:  SUITE passed=N failed=M skipped=K
# Exit status: 0 when the run completed with failed=0, 1 otherwise.

set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Downloaded sources, built tests and logs live outside any git tree.
ROOT="${OTPSUITES_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/otpsuites}"
mkdir -p "$ROOT"
[ -d "$ROOT/known_failures" ] || cp -r "$HERE/known_failures" "$ROOT/"
[ -d "$ROOT/probe" ] || cp -r "$HERE/probe" "$ROOT/"
SRC="$ROOT/otp-OTP-25.2.3"
TESTS="$ROOT/tests"
TS_DIR="$TESTS/test_server"

die() { echo "run.sh: $*" >&2; exit 2; }

# ---------------------------------------------------------------- source tree
# tests/ is built from the pristine OTP-25.2.3 sources the way OTP's
# "make release_tests" lays it out (kernel_test/, emulator_test/,
# test_server/ side by side; ts_install_cth finds ../test_server from the
# suite's data dir).  The sources come from Debian's source package of the
# installed erlang (its orig tarball is the GitHub archive of tag OTP-25.2.3).
ORIG="$ROOT/debsrc/erlang_25.2.3+dfsg.orig.tar.xz"
ORIG_SHA256=65c77675af31235d19ee7888fb2a9d858759b1089ba33126344697be7600d271
ORIG_POOL=pool/main/e/erlang/erlang_25.2.3+dfsg.orig.tar.xz
# The Debian mirrors this system uses (deb822 or one-line sources), then deb.debian.org.
mirrors() {
    {
        sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n'
        sed -n 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\).*/\2/p' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
        echo http://deb.debian.org/debian
    } | grep -v -e security -e '^$' | sed 's:/*$::' | awk '!seen[$0]++'
}
# Fetches the orig tarball (checked against its SHA-256), with retries: straight from a
# mirror's pool with apt's own downloader (no source lists needed), else `apt-get source`.
fetch_orig() {
    local try m A
    mkdir -p "$ROOT/debsrc"
    for try in 1 2 3 4 5; do
        for m in $(mirrors); do
            rm -f "$ORIG.part"
            if /usr/lib/apt/apt-helper download-file "$m/$ORIG_POOL" "$ORIG.part" "SHA256:$ORIG_SHA256" \
                    >>"$ROOT/debsrc/fetch.log" 2>&1; then
                mv "$ORIG.part" "$ORIG" && return 0
            fi
        done
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
            A="-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$ROOT/apt/parts -o Dir::State::Lists=$ROOT/apt/lists -o Dir::Cache=$ROOT/apt/cache"
            mkdir -p "$ROOT/apt/parts" "$ROOT/apt/lists/partial" "$ROOT/apt/cache/archives/partial"
            sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$ROOT/apt/parts/src.sources"
            # shellcheck disable=SC2086
            apt-get $A -qq update >>"$ROOT/debsrc/fetch.log" 2>&1 \
                && (cd "$ROOT/debsrc" && apt-get $A -qq source --download-only erlang) >>"$ROOT/debsrc/fetch.log" 2>&1
            if [ -f "$ORIG" ] && echo "$ORIG_SHA256  $ORIG" | sha256sum -c --quiet >/dev/null 2>&1; then
                return 0
            fi
            rm -f "$ORIG"
        fi
        echo "run.sh: fetching $ORIG_POOL failed (try $try), see $ROOT/debsrc/fetch.log" >&2
        sleep $((try * 5))
    done
    return 1
}
setup_tree() {
    if [ ! -d "$SRC/lib/kernel/test" ]; then
        if [ ! -f "$ORIG" ]; then
            fetch_orig || die "could not download erlang 25.2.3's source (Debian's $ORIG_POOL), see $ROOT/debsrc/fetch.log"
        fi
        (cd "$ROOT" && tar xJf "$ORIG" \
            otp-OTP-25.2.3/OTP_VERSION \
            otp-OTP-25.2.3/lib/kernel/test \
            otp-OTP-25.2.3/lib/kernel/examples/gen_tcp_dist/src/gen_tcp_dist.erl \
            otp-OTP-25.2.3/lib/kernel/examples/erl_uds_dist/src/erl_uds_dist.erl \
            otp-OTP-25.2.3/lib/common_test/test_server \
            otp-OTP-25.2.3/erts/emulator/test) || die "tar failed on $ORIG"
    fi
    if [ ! -d "$TESTS/kernel_test" ]; then
        mkdir -p "$TESTS/kernel_test" "$TESTS/emulator_test" "$TS_DIR"
        cp -r "$SRC/lib/kernel/test/." "$TESTS/kernel_test/"
        # lib/kernel/test/Makefile copies these two from lib/kernel/examples
        cp "$SRC/lib/kernel/examples/gen_tcp_dist/src/gen_tcp_dist.erl" \
           "$SRC/lib/kernel/examples/erl_uds_dist/src/erl_uds_dist.erl" \
           "$TESTS/kernel_test/"
        cp -r "$SRC/erts/emulator/test/." "$TESTS/emulator_test/"
        (cd "$SRC/lib/common_test/test_server" && \
            cp ts.erl ts_run.erl ts_lib.erl ts_make.erl ts_erl_config.erl \
               ts_autoconf_win32.erl ts_install.erl ts_install_cth.erl \
               ts_benchmark.erl ts.hrl conf_vars.in ts.config ts.unix.config \
               ts.win32.config configure config.sub config.guess install-sh \
               cross.cover "$TS_DIR/")
    fi
}

[ $# -ge 1 ] || die "usage: run.sh SUITE [EXTRA_ERL_FLAGS]"
SUITE="$(basename "${1%.erl}")"
EXTRA="${2:-}"

case "$SUITE" in
    flags_probe_SUITE)  DIR="$ROOT/probe";          HELPERS="" ;;
    distribution_SUITE) DIR="$TESTS/emulator_test"
                        HELPERS="erts_test_utils ignore_cores" ;;
    *_SUITE)            DIR="$TESTS/kernel_test"
                        # non-suite modules from lib/kernel/test/Makefile that
                        # the distribution suites use (gen_tcp_dist/erl_uds_dist
                        # are alternative -proto_dist carriers used by
                        # erl_distribution_SUITE)
                        HELPERS="kernel_test_lib kernel_test_global_sys_monitor
                                 kernel_test_sys_monitor gen_tcp_dist erl_uds_dist
                                 cleanup ignore_cores" ;;
    *) die "not a suite name: $SUITE" ;;
esac
[ "$SUITE" = flags_probe_SUITE ] || setup_tree
[ -f "$DIR/$SUITE.erl" ] || die "no such suite: $DIR/$SUITE.erl"

# ---------------------------------------------------------------- prepare
# Preparation runs with a clean Erlang environment: the gateway flags are for
# the nodes under test, not for the compiler or the ts configure step.
clean_env() { env -u ERL_FLAGS -u ERL_AFLAGS -u ERL_ZFLAGS "$@"; }

prepare() {
    local f b
    # test_server support modules (ts_install_cth is the suites' CT hook)
    for f in "$TS_DIR"/ts*.erl; do
        b="$TS_DIR/$(basename "${f%.erl}").beam"
        if [ ! -f "$b" ] || [ "$f" -nt "$b" ]; then
            clean_env erlc -o "$TS_DIR" "$f" || die "erlc failed: $f"
        fi
    done
    # 'variables' file (C compiler, erl_interface paths ...) used by
    # ts_install_cth to build the C helpers in *_SUITE_data directories.
    if [ ! -f "$TS_DIR/variables" ]; then
        (cd "$TS_DIR" && clean_env erl -noshell -pa . \
            -eval 'ok = ts:install(), halt().' >"$TS_DIR/install.log" 2>&1) \
            || die "ts:install() failed, see $TS_DIR/install.log"
    fi
    # Debian does not ship erl_interface/src/eidefs.mk (generated by OTP's
    # configure); the erpc_SUITE_data C helper (fwd_node.c) includes it.
    # Provide an equivalent and point 'variables' at it.
    local eimk
    eimk="$(sed -n 's/^{erl_interface_mk_include,"\(.*\)"}\.$/\1/p' "$TS_DIR/variables")"
    if [ -n "$eimk" ] && [ ! -f "$eimk" ]; then
        cat >"$TS_DIR/eidefs.mk" <<'EOF'
# stand-in for erl_interface/src/eidefs.mk (not shipped by Debian)
EI_THREADS=true
THR_DEFS=-D_THREAD_SAFE -D_REENTRANT -DPOSIX_THREADS -D_POSIX_THREAD_SAFE_FUNCTIONS
THR_LIBS=-lpthread
EOF
        sed -i "s|^{erl_interface_mk_include,\".*\"}\.\$|{erl_interface_mk_include,\"$TS_DIR/eidefs.mk\"}.|" \
            "$TS_DIR/variables"
    fi
    # helper modules the suites call (not compiled by ct_run itself)
    for f in $HELPERS; do
        if [ ! -f "$DIR/$f.beam" ] || [ "$DIR/$f.erl" -nt "$DIR/$f.beam" ]; then
            clean_env erlc +debug_info -I "$DIR" -o "$DIR" "$DIR/$f.erl" \
                || die "erlc failed: $DIR/$f.erl"
        fi
    done
    # the suite itself (ct_run would do it too, but fail loudly here instead)
    if [ ! -f "$DIR/$SUITE.beam" ] || [ "$DIR/$SUITE.erl" -nt "$DIR/$SUITE.beam" ]; then
        clean_env erlc +debug_info -I "$DIR" -o "$DIR" "$DIR/$SUITE.erl" 2>&1 \
            | grep -v -e 'Warning' -e '^%' -e '^[[:space:]]*$' >&2
        [ -f "$DIR/$SUITE.beam" ] || die "erlc failed: $DIR/$SUITE.erl"
    fi
}
prepare
[ "${PREPARE_ONLY:-0}" = 1 ] && { echo "run.sh: prepared $SUITE"; exit 0; }

# ---------------------------------------------------------------- flags
if [ -n "$EXTRA" ]; then
    export ERL_FLAGS="${ERL_FLAGS:+$ERL_FLAGS }$EXTRA"
fi

LOGROOT="${LOGROOT:-$ROOT/logs}"
STAMP="$(date +%Y%m%d-%H%M%S)"
LOGDIR="$LOGROOT/$SUITE"
mkdir -p "$LOGDIR"
CONSOLE="$LOGROOT/$SUITE.$STAMP.console.log"

SKIPS="${SKIP_CASES:-}"
if [ "${SKIP_KNOWN:-0}" = 1 ] && [ -f "$ROOT/known_failures/$SUITE.txt" ]; then
    SKIPS="$SKIPS $(grep -v '^#' "$ROOT/known_failures/$SUITE.txt" | awk '{print $1}' | tr '\n' ' ')"
fi
SKIPS="$(echo $SKIPS)"   # squeeze blanks

CT_ARGS=(-noshell -sname "ct_${SUITE}_$$" -logdir "$LOGDIR" -pa "$TS_DIR"
         -include "$DIR")
if [ -n "${ONLY_CASES:-}" ]; then
    [ -z "$SKIPS" ] || die "ONLY_CASES cannot be combined with SKIP_CASES/SKIP_KNOWN"
    CT_ARGS+=(-dir "$DIR" -suite "$SUITE" -case $ONLY_CASES)
elif [ -n "$SKIPS" ]; then
    SPEC="$LOGROOT/$SUITE.$STAMP.spec"
    {
        echo "{suites, \"$DIR\", $SUITE}."
        echo "{skip_cases, \"$DIR\", $SUITE, [$(echo "$SKIPS" | sed 's/ /, /g')], \"excluded by run.sh (SKIP_CASES/SKIP_KNOWN)\"}."
    } >"$SPEC"
    CT_ARGS+=(-spec "$SPEC")
else
    CT_ARGS+=(-dir "$DIR" -suite "$SUITE")
fi

# CT_ERL_ARGS go on the ct_run node's own command line only
# (before ERL_FLAGS, so e.g. its -edist_gateway wins over the one in ERL_FLAGS)
if [ -n "${CT_ERL_ARGS:-}" ]; then CT_ARGS+=(-erl_args $CT_ERL_ARGS); fi
echo "run.sh: $SUITE  ERL_FLAGS='${ERL_FLAGS:-}'  skip='${SKIPS}'" | tee "$CONSOLE"
echo "run.sh: ct_run ${CT_ARGS[*]}" | tee -a "$CONSOLE"
START=$(date +%s)
( cd "$DIR" && timeout --kill-after=30 "${SUITE_TIMEOUT:-2400}" ct_run "${CT_ARGS[@]}" ) \
    >>"$CONSOLE" 2>&1 </dev/null
RC=$?
END=$(date +%s)

# ---------------------------------------------------------------- summary
LINE="$(grep -a 'TEST COMPLETE' "$CONSOLE" | tail -1)"
num() { echo "$LINE" | grep -oE "[0-9]+ $1" | head -1 | awk '{print $1}'; }
PASSED="$(num ok)"; FAILED="$(num failed)"; SKIPPED="$(num skipped)"
PASSED="${PASSED:-0}"; FAILED="${FAILED:-0}"; SKIPPED="${SKIPPED:-0}"

# per-case results from the newest suite.log of this run
SUITELOG="$(ls -t "$LOGDIR"/ct_run.*/*/run.*/suite.log 2>/dev/null | head -1)"
CONFFAIL=0
if [ -n "$SUITELOG" ]; then
    awk '/^=case/{c=$2} /^=result/{r=$2; sub(/:.*/,"",r);
         if (c!="" && r!="ok") printf "  %-12s %s\n", r, c; c=""}' "$SUITELOG" \
        | sed 's/^/run.sh: /'
    # a failing init_per_suite/end_per_suite (or group config function) is
    # not counted by CT as a failed test case: count it here
    CONFFAIL="$(awk '/^=case/{c=$2} /^=result/{r=$2; sub(/:.*/,"",r);
         if (c ~ /:(init|end)_per_(suite|group)$/ && r=="failed") n++; c=""}
         END{print n+0}' "$SUITELOG")"
fi
FAILED=$((FAILED + CONFFAIL))
echo "run.sh: rc=$RC duration=$((END-START))s console=$CONSOLE"
echo "run.sh: ct logs: ${SUITELOG:+$(dirname "$SUITELOG")}"
if [ -z "$LINE" ]; then
    echo "run.sh: no 'TEST COMPLETE' line from ct_run (crashed or timed out?)"
    FAILED=$((FAILED > 0 ? FAILED : 1))
fi
echo "$SUITE passed=$PASSED failed=$FAILED skipped=$SKIPPED"
[ -n "$LINE" ] && [ "$FAILED" = 0 ]
