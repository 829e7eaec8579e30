#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Run QEMU's migration qtests, one migration-test process per test path.
#
# Usage: scripts/qemu-qtest.sh BUILDDIR [TEST-PATH ...]
#
# Default TEST-PATHs: the 7 postcopy tests and one quick precopy test:
#   /x86_64/migration/postcopy/plain
#   /x86_64/migration/postcopy/suspend
#   /x86_64/migration/postcopy/recovery/plain
#   /x86_64/migration/postcopy/recovery/double-failures/handshake
#   /x86_64/migration/postcopy/recovery/double-failures/reconnect
#   /x86_64/migration/postcopy/preempt/plain
#   /x86_64/migration/postcopy/preempt/recovery/plain
#   /x86_64/migration/precopy/unix/plain
#
# Each runs, inside BUILDDIR, as
#   QTEST_QEMU_BINARY=./qemu-system-x86_64 \
#       ./tests/qtest/migration-test --full --tap -p PATH
# under `timeout $QTEST_TIMEOUT` (default 600 s).  Logs go to
# BUILDDIR/qtest-logs/ (or $QTEST_LOGDIR).  The paths are first checked against
# `migration-test --full -l`.  Prints a per-test PASS/FAIL/SKIP line with
# its duration, then the summary line "N passed, N failed" (", N skipped"
# added when tests skip).  Exits 1 if any test fails or is not listed.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 1 ] || { echo "usage: $0 BUILDDIR [TEST-PATH ...]" >&2; exit 2; }
BUILDDIR=$1
shift
if [ $# -gt 0 ]; then
    TESTS=("$@")
else
    TESTS=(
        /x86_64/migration/postcopy/plain
        /x86_64/migration/postcopy/suspend
        /x86_64/migration/postcopy/recovery/plain
        /x86_64/migration/postcopy/recovery/double-failures/handshake
        /x86_64/migration/postcopy/recovery/double-failures/reconnect
        /x86_64/migration/postcopy/preempt/plain
        /x86_64/migration/postcopy/preempt/recovery/plain
        /x86_64/migration/precopy/unix/plain
    )
fi
QTEST_TIMEOUT=${QTEST_TIMEOUT:-600}

step "check $BUILDDIR"
[ -d "$BUILDDIR" ] || die "$BUILDDIR does not exist: run scripts/qemu-build.sh"
BUILDDIR=$(cd "$BUILDDIR" && pwd)
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
if ! grep -qx '/x86_64/migration/postcopy/plain' <<<"$listing"; then
    echo "!!! migration-test lists no postcopy tests: userfaultfd is probably unavailable here !!!"
fi

pass=0 fail=0 skip=0
results=()
for t in "${TESTS[@]}"; do
    step "run $t"
    log=$LOGDIR/$(printf '%s' "${t#/}" | tr '/' '_').log
    if ! grep -qxF -- "$t" <<<"$listing"; then
        echo "FAIL  $t  (not in migration-test --full -l)"
        results+=("FAIL  $t  (not listed)")
        fail=$((fail + 1))
        continue
    fi
    t0=$SECONDS
    rc=0
    (cd "$BUILDDIR" && timeout -k 10 "$QTEST_TIMEOUT" ./tests/qtest/migration-test --full --tap -p "$t") \
        >"$log" 2>&1 || rc=$?
    dt=$((SECONDS - t0))
    if [ "$rc" -eq 0 ] && grep -qE "^ok [0-9]+ $t # SKIP" "$log"; then
        verdict=SKIP
        skip=$((skip + 1))
    elif [ "$rc" -eq 0 ] && grep -qE "^ok [0-9]+ $t( |$)" "$log"; then
        verdict=PASS
        pass=$((pass + 1))
    else
        verdict=FAIL
        fail=$((fail + 1))
        [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] || echo "(timed out after ${QTEST_TIMEOUT}s)"
        echo "--- last lines of $log ---"
        tail -25 "$log"
        echo "---"
    fi
    line=$(printf '%-4s  %s  (%ds, exit %d)' "$verdict" "$t" "$dt" "$rc")
    echo "$line"
    results+=("$line")
done

step "summary"
echo "results (logs in $LOGDIR):"
printf '  %s\n' "${results[@]}"
summary="$pass passed, $fail failed"
[ "$skip" -eq 0 ] || summary="$summary, $skip skipped"
echo "$summary"
if [ "$fail" -ne 0 ]; then
    exit 1
fi
