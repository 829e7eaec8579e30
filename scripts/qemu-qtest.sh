#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Run QEMU's migration qtests, one migration-test process per test path,
# several at once.
#
# Usage: scripts/qemu-qtest.sh BUILDDIR [TEST-PATH ...]
#
# Default TEST-PATHs: every postcopy test that `migration-test --full -l`
# lists (each path with "postcopy" in it: postcopy/..., and since 10.1
# multifd+postcopy/...; the tls/psk ones when QEMU was built with gnutls),
# plus one quick precopy test, /x86_64/migration/precopy/unix/plain.
#
# Each runs, inside BUILDDIR, as
#   QTEST_QEMU_BINARY=./qemu-system-x86_64 \
#       ./tests/qtest/migration-test --full --tap -p PATH
# under `timeout $QTEST_TIMEOUT` (default 600 s), $QTEST_JOBS at a time
# (default 8: each test spends most of its time waiting for SeaBIOS and
# for the guest to dirty memory, so a 2-core machine runs 8 well).  Every
# test has its own log in BUILDDIR/qtest-logs/ (or $QTEST_LOGDIR); the
# tests share nothing else: migration-test makes its own temporary
# directory (serial files, TLS credentials, sockets) and listens on port 0.
# QTEST_QEMU_BINARY_SRC / QTEST_QEMU_BINARY_DST, when set, pass through
# (interoperability runs).
#
# Each test runs once: a failure fails, with no second attempt (a test that
# passes on its second try is a failing test).  Set QTEST_LOG=1 to keep
# migration-test's QMP exchanges in the logs too.
#
# Prints a per-test PASS/FAIL/SKIP line with its duration, then the summary
# line "N passed, N failed" (", N skipped" added when tests skip), prefixed
# with $QTEST_LABEL when set.  Exits 1 if any test fails or is not listed.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 1 ] || { echo "usage: $0 BUILDDIR [TEST-PATH ...]" >&2; exit 2; }
BUILDDIR=$1
shift
QTEST_TIMEOUT=${QTEST_TIMEOUT:-600}
# The qtests mostly wait (for the guest, for convergence): 18 postcopy
# qtests of 10.2.2 took 4m43s 4 at a time, 2m52s 8 at a time and 2m20s
# 18 at a time on this 2-core machine, their longest 98, 102 and 140 s
# (one run each, a QEMU build beside the first two).
QTEST_JOBS=${QTEST_JOBS:-8}
PRECOPY_TEST=/x86_64/migration/precopy/unix/plain

step "check $BUILDDIR"
[ -d "$BUILDDIR" ] || die "$BUILDDIR does not exist: run scripts/qemu-build.sh"
BUILDDIR=$(cd "$BUILDDIR" && pwd -P)
for f in qemu-system-x86_64 tests/qtest/migration-test; do
    [ -x "$BUILDDIR/$f" ] || die "$BUILDDIR/$f missing: run scripts/qemu-build.sh"
done
if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!! /dev/kvm is missing or not usable: tests fall back to TCG (slow) !!!"
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
fi
LOGDIR=${QTEST_LOGDIR:-$BUILDDIR/qtest-logs}
mkdir -p "$LOGDIR"
export QTEST_QEMU_BINARY=./qemu-system-x86_64

step "list tests"
listing=$(cd "$BUILDDIR" && ./tests/qtest/migration-test --full -l 2>&1) ||
    die "migration-test --full -l failed: $listing"
if [ $# -gt 0 ]; then
    TESTS=("$@")
else
    mapfile -t TESTS < <(grep -E '^/.*postcopy' <<<"$listing" || true)
    if [ "${#TESTS[@]}" -eq 0 ]; then
        echo "!!! migration-test lists no postcopy tests: userfaultfd is probably unavailable here !!!"
    fi
    grep -q '/tls/' <<<"$listing" ||
        echo "!!! migration-test lists no TLS tests: QEMU was built without gnutls !!!"
    TESTS+=("$PRECOPY_TEST")
    echo "${#TESTS[@]} tests (every postcopy test listed, and $PRECOPY_TEST)"
fi

# Run one test; write "VERDICT<TAB>line" to $LOGDIR/.result-N.
run_one() {
    local i=$1 t=$2 log t0 rc=0 dt verdict re line
    log=$LOGDIR/$(printf '%s' "${t#/}" | tr '/' '_').log
    # The path as a regex ("multifd+postcopy": + is special).
    re=$(printf '%s' "$t" | sed 's/[][\.*^$+?(){}|]/\\&/g')
    t0=$SECONDS
    (cd "$BUILDDIR" && exec timeout -k 10 "$QTEST_TIMEOUT" \
        ./tests/qtest/migration-test --full --tap -p "$t") >"$log" 2>&1 || rc=$?
    dt=$((SECONDS - t0))
    if [ "$rc" -eq 0 ] && grep -qE "^ok [0-9]+ $re # SKIP" "$log"; then
        verdict=SKIP
    elif [ "$rc" -eq 0 ] && grep -qE "^ok [0-9]+ $re( |$)" "$log"; then
        verdict=PASS
    else
        verdict=FAIL
    fi
    line=$(printf '%-4s  %s  (%ds, exit %d)' "$verdict" "$t" "$dt" "$rc")
    printf '%s\t%s\n' "$verdict" "$line" >"$LOGDIR/.result-$i"
    printf '%s\n' "$line"
    if [ "$verdict" = FAIL ]; then
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            echo "(timed out after ${QTEST_TIMEOUT}s)"
        fi
        # One block, so that parallel tests do not interleave it.
        printf -- '--- last lines of %s ---\n%s\n---\n' "$log" "$(tail -25 "$log")"
    fi
}

step "run ${#TESTS[@]} tests, $QTEST_JOBS at a time"
rm -f "$LOGDIR"/.result-*
running=0
for i in "${!TESTS[@]}"; do
    t=${TESTS[$i]}
    if ! grep -qxF -- "$t" <<<"$listing"; then
        printf 'FAIL\tFAIL  %s  (not in migration-test --full -l)\n' "$t" >"$LOGDIR/.result-$i"
        echo "FAIL  $t  (not in migration-test --full -l)"
        continue
    fi
    if [ "$running" -ge "$QTEST_JOBS" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    run_one "$i" "$t" &
    running=$((running + 1))
done
wait || true

step "summary"
pass=0 fail=0 skip=0
echo "results (logs in $LOGDIR):"
for i in "${!TESTS[@]}"; do
    r=$LOGDIR/.result-$i
    if [ ! -f "$r" ]; then
        printf '  FAIL  %s  (no result)\n' "${TESTS[$i]}"
        fail=$((fail + 1))
        continue
    fi
    IFS=$'\t' read -r verdict line <"$r"
    printf '  %s\n' "$line"
    case $verdict in
        PASS) pass=$((pass + 1)) ;;
        SKIP) skip=$((skip + 1)) ;;
        *) fail=$((fail + 1)) ;;
    esac
done
rm -f "$LOGDIR"/.result-*
summary="$pass passed, $fail failed"
[ "$skip" -eq 0 ] || summary="$summary, $skip skipped"
echo "${QTEST_LABEL:+$QTEST_LABEL: }$summary"
if [ "$fail" -ne 0 ]; then
    exit 1
fi
