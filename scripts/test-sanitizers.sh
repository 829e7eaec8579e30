#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# `make test-sanitizers`: the patched QEMU 10.2.2 built with AddressSanitizer
# and UBSan, run where the library meets QEMU's threads, RAMBlocks and
# receivedmap.  As root on Debian; installs what it needs.  Not part of
# `make test`: it takes longer than that command's budget.
#
#   1. QEMU's build dependencies, the qemu.qmp venv, and a check that the C
#      compiler's sanitizers work and that a report is caught: two canaries
#      (a heap overflow, a signed overflow), built and run with the options
#      below, must each die and leave their report where the scan finds it;
#   2. the library: `make install` (build/prefix), and the same sources
#      built with AddressSanitizer too (nightly rustc -Zsanitizer=address,
#      with debug assertions and overflow checks: Rust's UBSan; into
#      target/asan; rustup installs a nightly toolchain if there is none),
#      installed under build/prefix-sanitizers; a third canary, a C program
#      that hands the library a bitmap shorter than it says, must die with
#      ASan's report of the library's own read;
#   3. the tree build/qemu-10.2.2/trees/series/qemu (Debian's source with
#      qemu-patches/v10.2.2, shared with scripts/qemu-test.sh), built with
#      --enable-asan --enable-ubsan into build/qemu-10.2.2/patched-asan and
#      linked with the instrumented library (relinked only when it
#      changed); the binary must carry the library's symbols, the
#      sanitizer runtimes and instrumented Rust; the demo's guest;
#   4. under the machine lock: every postcopy qtest migration-test lists
#      (and one precopy qtest), scripts/qemu-qtest.sh on that build; the
#      hugepage e2e scenarios (scripts/e2e.py test: 2 MiB pages, 4 KiB and
#      2 MiB blocks, a stray page, preempt hit and range; 1 GiB pages
#      where the kernel grants them); one network cut and recovery during
#      postcopy with the demo's Linux guest (scripts/migrate.py
#      --cut-after 64, as `make demo` runs it);
#   5. every QEMU's stderr (and migration-test's: the qtest logs hold
#      both) is scanned for sanitizer reports; one report fails the run,
#      and each is printed with its stack.
#
# Sanitizer options, for every process started (QEMU and migration-test):
#   ASAN_OPTIONS=halt_on_error=1:detect_leaks=0:...  an error is fatal (QEMU
#       exits 1 and the test fails); no leak check at exit: QEMU does not
#       free everything before it exits, and upstream runs its tests under
#       ASan with detect_leaks=0 too (tests/docker/test-debug,
#       tests/qemu-iotests/testrunner.py);
#   UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1  upstream's CI makes
#       UBSan fatal with -fno-sanitize-recover=undefined; this does the same
#       at run time.
# Override either from the environment (SANITIZER_ASAN_OPTIONS,
# SANITIZER_UBSAN_OPTIONS replace them whole).
#
# Why the library is instrumented: linked as `make install` builds it
# (stable Rust, no instrumentation), its heap allocations go through ASan's
# malloc and its calls into libc (memcpy, read, ioctl...) through ASan's
# interceptors, but its own loads and stores are not checked: a read past
# QEMU's receivedmap or dirty bitmap by the library goes unseen (the third
# canary shows it: linked with the plain library it returns normally).
# docs/QEMU.md says more.
#
# Environment:
#   QTEST_JOBS, QTEST_TIMEOUT   as for scripts/qemu-qtest.sh
#   SANITIZER_LIBRARY=plain     link the library as `make install` builds it
#                               instead (no nightly toolchain needed; the
#                               library's own accesses are then unchecked)
#   SANITIZER_KIND=unpatched    build Debian's unpatched 10.2.2 the same way
#                               (build/qemu-10.2.2/unpatched-asan) and run the
#                               qtests and the network cut on it: to tell
#                               whether a report is upstream's.  The e2e
#                               scenarios are skipped there (they check the
#                               library's counters).
#
# Prints a PASS/FAIL line per stage, every report found, the times, and
# "sanitizers: N passed, N failed, N reports"; exits 1 on any failure or
# report.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PCRS_ROOT" || exit 1

V=10.2.2
B=$PCRS_ROOT/build
D=$B/qemu-$V
PREFIX=$B/prefix
SERIES=qemu-patches/v$V
KIND=${SANITIZER_KIND:-patched}
case $KIND in
    # Real paths, as scripts/qemu-test.sh lays the trees out (its
    # tree_layout): fetching replaces a tree, and would replace a link.
    patched) SRC=$D/trees/series/qemu ;;
    unpatched) SRC=$D/trees/stock/qemu ;;
    *) die "SANITIZER_KIND must be patched or unpatched, not $KIND" ;;
esac
BUILD=$D/$KIND-asan
BIN=$BUILD/qemu-system-x86_64
OUT=$B/sanitizers/$KIND
LIBKIND=${SANITIZER_LIBRARY:-asan}
case $LIBKIND in
    asan | plain) ;;
    *) die "SANITIZER_LIBRARY must be asan or plain, not $LIBKIND" ;;
esac
# The sanitized QEMU links the library from here, whichever kind: meson
# records the archive's path at configure time, so a switch of kind is a
# relink, not a new configure.
LIBPREFIX=$B/prefix-sanitizers
LIB=$LIBPREFIX/lib/libpostcopy_rs.a
ASAN_TARGET=$PCRS_ROOT/target/asan
RUST_TARGET=x86_64-unknown-linux-gnu
# -Zsanitizer=address: the library's loads and stores checked.  The
# standard library is not rebuilt (-Zbuild-std needs rust-src): std's own
# compiled code stays unchecked, its generics used here are checked.
# debug-assertions also turns on core's checks of unsafe preconditions.
ASAN_RUSTFLAGS="-Zsanitizer=address -Cunsafe-allow-abi-mismatch=sanitizer -Cdebug-assertions=on -Coverflow-checks=on"
E2E_TESTS=(hugepages-2M two-blocks-4K-2M stray-page-2M preempt-hit-2M preempt-range-2M hugepages-1G
    hugepages-1G-prepage)
# What a sanitizer report starts with (ASan's deadly signals too), UBSan's
# one-line reports, and LeakSanitizer's, should leak checking be turned on.
# A panic in the library (an overflow or a debug assertion) is caught at
# the C boundary and becomes an error, but it is a bug all the same: Rust's
# panic message, and core's unsafe-precondition aborts, count too.
REPORT_RE='ERROR: AddressSanitizer|runtime error:|LeakSanitizer|SUMMARY: (Address|UndefinedBehavior)Sanitizer|panicked at|unsafe precondition'
export ASAN_OPTIONS=${SANITIZER_ASAN_OPTIONS:-halt_on_error=1:detect_leaks=0:abort_on_error=0:symbolize=1:print_summary=1}
export UBSAN_OPTIONS=${SANITIZER_UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1:print_summary=1}
PASSED=0
FAILED=0
REPORTS=0
declare -A TOOK=()

# check WHAT CMD...: one counted stage.
check() {
    local what=$1
    shift
    if "$@"; then
        echo "PASS  $what"
        PASSED=$((PASSED + 1))
    else
        echo "FAIL  $what"
        FAILED=$((FAILED + 1))
    fi
}

# reports_in FILE: how many sanitizer report lines FILE holds.
reports_in() {
    grep -cE "$REPORT_RE" "$1" || true
}

# scan LABEL FILE...: print every sanitizer report in FILEs (its first
# lines: the error, the stack, the allocation's stack); count them in
# REPORTS; fail if there is one, or if there is no file to scan.
scan() {
    local label=$1 f n found=0
    shift
    if [ $# -eq 0 ]; then
        echo "  $label: no QEMU stderr to scan"
        return 1
    fi
    for f in "$@"; do
        n=$(reports_in "$f")
        [ "$n" -gt 0 ] || continue
        found=$((found + n))
        printf -- '--- sanitizer report in %s ---\n' "$f"
        grep -nE -A60 "$REPORT_RE" "$f" | head -n 200
        echo "---"
    done
    echo "  $label: scanned $# logs, $found sanitizer report lines"
    REPORTS=$((REPORTS + found))
    [ "$found" -eq 0 ]
}

# canary NAME CFLAGS CODE [LINK...]: a program with one bug, built with
# the sanitizer, run with the options above; it must die and the scan must
# find its report.
canary() {
    local name=$1 cflags=$2 code=$3 dir=$OUT/canary rc=0
    shift 3
    mkdir -p "$dir"
    printf '%s\n' "$code" >"$dir/$name.c"
    # shellcheck disable=SC2086  # cflags: several flags
    cc -g -O0 $cflags -I"$PCRS_ROOT/include" -o "$dir/$name" "$dir/$name.c" "$@" ||
        { echo "  cannot build $name with $cflags"; return 1; }
    "$dir/$name" >"$dir/$name.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "  $name exited 0: its bug was not fatal"
        return 1
    fi
    if [ "$(reports_in "$dir/$name.log")" -eq 0 ]; then
        echo "  $name died (exit $rc) but the scan found no report in $dir/$name.log"
        return 1
    fi
    echo "  $name: exit $rc, report found: $(grep -m1 -oE "$REPORT_RE.{0,60}" "$dir/$name.log")"
}

# all_of_binary BIN CMDLINE...: every .cmdline a run wrote names BIN (the
# reports scanned are from the sanitized QEMU, not another one).
all_of_binary() {
    local bin=$1 f
    shift
    [ $# -gt 0 ] || { echo "  no .cmdline files"; return 1; }
    for f in "$@"; do
        grep -qF "$bin " "$f" || { echo "  $f does not run $bin"; return 1; }
    done
}

step "dependencies"
timed deps scripts/qemu-deps.sh
timed deps scripts/demo-deps.sh
PY=${PCRS_QMP_VENV:-$PCRS_CACHE/qmp-venv}/bin/python3

step "the compiler's sanitizers, and the scan, on two canaries"
rm -rf "$OUT"
mkdir -p "$OUT"
check "a heap overflow is fatal under ASan and its report is found" \
    canary heap-overflow "-fsanitize=address" \
    '#include <stdlib.h>
int main(void) { volatile char *p = malloc(8); p[8] = 1; free((void *)p); return 0; }'
check "a signed overflow is fatal under UBSan and its report is found" \
    canary signed-overflow "-fsanitize=undefined" \
    '#include <limits.h>
int main(int argc, char **argv) { volatile int i = INT_MAX; (void)argv; return (i + argc) == 0; }'
[ "$FAILED" -eq 0 ] || die "the sanitizers or the scan do not work here (see above)"

step "the library, installed under build/prefix"
if [ "$KIND" = patched ]; then
    timed library make --no-print-directory install PREFIX="$PREFIX" >/dev/null ||
        die "make install of the library failed"
fi

if [ "$KIND" = patched ] && [ "$LIBKIND" = asan ]; then
    step "the library with AddressSanitizer (nightly)"
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
        timed library rustup toolchain install nightly --profile minimal ||
            die "no nightly Rust toolchain, and rustup could not install one (SANITIZER_LIBRARY=plain runs without)"
    fi
    echo "$(rustup run nightly rustc --version), RUSTFLAGS=$ASAN_RUSTFLAGS"
    # --target: the flags reach the library, not build.rs or its tools.
    timed library env CARGO_TARGET_DIR="$ASAN_TARGET" RUSTFLAGS="$ASAN_RUSTFLAGS" \
        nice -n 10 cargo +nightly build --release --locked --target "$RUST_TARGET" ||
        die "the library does not build with -Zsanitizer=address"
    archive=$ASAN_TARGET/$RUST_TARGET/release/libpostcopy_rs.a
    # Into a variable first: `nm | grep -q` fails under pipefail.
    syms=$(nm "$archive" 2>/dev/null)
    grep -q ' U __asan_report_load8$' <<<"$syms" || die "$archive is not instrumented"
else
    archive=$PREFIX/lib/libpostcopy_rs.a
fi
if [ "$KIND" = patched ]; then
    step "the library ($LIBKIND) under $LIBPREFIX"
    install -C -D -m 0644 "$archive" "$LIB"
    install -C -D -m 0644 include/postcopy_rs.h "$LIBPREFIX/include/postcopy_rs.h"
    # make install's pkg-config file, pointing here.
    sed "s|$PREFIX|$LIBPREFIX|g" "$PREFIX/lib/pkgconfig/postcopy-rs.pc" >"$OUT/postcopy-rs.pc"
    install -C -D -m 0644 "$OUT/postcopy-rs.pc" "$LIBPREFIX/lib/pkgconfig/postcopy-rs.pc"
    echo "$LIB: $LIBKIND ($(sha256sum "$LIB" | cut -c1-16)...)"
fi
if [ "$KIND" = patched ] && [ "$LIBKIND" = asan ]; then
    read -r -a libs < <(pkg-config --static --libs "$LIBPREFIX/lib/pkgconfig/postcopy-rs.pc")
    check "the instrumented library's own read past a bitmap is fatal and its report is found" \
        canary library-overread "-fsanitize=address" \
        '#include <stdlib.h>
#include "postcopy_rs.h"
/* One long (64 target pages) that the library is told holds 128. */
int main(void) { unsigned long *b = calloc(1, sizeof(*b)); b[0] = 1;
    postcopy_chunk_hostpages(b, 128, 2); free(b); return 0; }' \
        "${libs[@]}"
    [ "$FAILED" -eq 0 ] || die "the library's accesses are not checked (see above)"
fi

step "QEMU $V source: $SRC"
mkdir -p "$(dirname "$SRC")"
if [ "$KIND" = patched ]; then
    timed fetch series_tree "$V" "$SERIES" "$SRC" "$D/trees/series/patched"
elif [ "$(cat "$SRC/VERSION" 2>/dev/null)" != "$V" ] || [ -e "$SRC/.postcopy-rs-patches" ]; then
    timed fetch env QEMU_VERSION="$V" scripts/qemu-fetch.sh "$SRC"
fi

step "QEMU $V ($KIND) with --enable-asan --enable-ubsan: $BUILD"
if [ "$KIND" = patched ]; then
    if [ -f "$BUILD/build.ninja" ] && ! grep -qF "$LIB" "$BUILD/build.ninja"; then
        # Configured against another prefix: meson keeps the first
        # PKG_CONFIG_PATH it saw, its own option overrides it (a relink).
        echo "$BUILD links another library than $LIB: reconfiguring it"
        PATH="$PCRS_VENV/bin:$PATH" "$BUILD/pyvenv/bin/meson" setup --reconfigure \
            -Dpkg_config_path="$LIBPREFIX/lib/pkgconfig" "$BUILD" "$SRC" >"$OUT/reconfigure.log" 2>&1 ||
            { tail -20 "$OUT/reconfigure.log"; die "meson setup --reconfigure failed"; }
    fi
    relink_if_library_changed "$BUILD" "$LIB"
    timed build env PKG_CONFIG_PATH="$LIBPREFIX/lib/pkgconfig" \
        QEMU_EXTRA_CONFIGURE="--enable-asan --enable-ubsan --enable-debug-info" nice -n 10 \
        scripts/qemu-build.sh "$SRC" "$BUILD" --patches "$SERIES"
    grep -qF "$LIB" "$BUILD/build.ninja" || die "$BUILD does not link $LIB"
else
    timed build env -u PKG_CONFIG_PATH QEMU_EXTRA_CONFIGURE="--enable-asan --enable-ubsan --enable-debug-info" \
        nice -n 10 scripts/qemu-build.sh "$SRC" "$BUILD"
fi

runtimes() {
    local libs syms
    libs=$(ldd "$1")
    grep -q 'libasan\.so' <<<"$libs" || { echo "  $1 does not link libasan"; return 1; }
    grep -q 'libubsan\.so' <<<"$libs" || { echo "  $1 does not link libubsan"; return 1; }
    syms=$(nm "$1")
    grep -q ' U __asan_report_load8' <<<"$syms" || { echo "  $1 is not instrumented"; return 1; }
    if [ "$KIND" = patched ] && [[ $1 == */qemu-system-x86_64 ]]; then
        grep -q ' T postcopy_rs_place_page$' <<<"$syms" ||
            { echo "  $1 does not carry the library"; return 1; }
        # Linked with the archive under $LIBPREFIX as it is now (the
        # relink stamp is its sha256), which for asan is instrumented.
        [ "$(cat "$BUILD/.postcopy-rs-lib")" = "$(sha256sum "$LIB" | cut -d' ' -f1)" ] ||
            { echo "  $1 was not linked with $LIB as it is now"; return 1; }
        if [ "$LIBKIND" = asan ]; then
            syms=$(nm "$LIB" 2>/dev/null)
            grep -q ' U __asan_report_load8$' <<<"$syms" ||
                { echo "  $LIB is not instrumented"; return 1; }
        fi
    fi
    local lib=""
    [ "$LIBKIND" = asan ] || lib=" (the library's Rust not: SANITIZER_LIBRARY=plain)"
    echo "  $(basename "$1"): ASan and UBSan runtimes linked, code instrumented$lib"
}
check "QEMU $V $KIND: qemu-system-x86_64 instrumented, with the ASan and UBSan runtimes" \
    runtimes "$BIN"
check "QEMU $V $KIND: migration-test instrumented, with the ASan and UBSan runtimes" \
    runtimes "$BUILD/tests/qtest/migration-test"

step "the demo's guest"
timed guest scripts/guest-build.sh

qtests() {
    local logdir=$OUT/qtest-logs rc=0
    timed qtests env QTEST_LOGDIR="$logdir" QTEST_LABEL="QEMU $V $KIND-asan qtests" \
        scripts/qemu-qtest.sh "$BUILD" || rc=$?
    scan "qtests" "$logdir"/*.log || rc=1
    return "$rc"
}

e2e() {
    local marker=$OUT/e2e.start rc=0 logs cmds
    touch "$marker"
    timed e2e python3 scripts/e2e.py --patched "$BIN" test --only "${E2E_TESTS[@]}" || rc=$?
    mapfile -t logs < <(find "$B/e2e-runs" -name '*.stderr.log' -newer "$marker" | sort)
    mapfile -t cmds < <(find "$B/e2e-runs" -name '*.cmdline' -newer "$marker" | sort)
    all_of_binary "$BIN" "${cmds[@]}" || rc=1
    scan "e2e" "${logs[@]}" || rc=1
    return "$rc"
}

netcut() {
    local logdir=$OUT/netcut rc=0
    rm -rf "$logdir"
    timed netcut "$PY" scripts/migrate.py --binary "$BIN" --cut-after 64 \
        --logdir "$logdir" --progress lines || rc=$?
    all_of_binary "$BIN" "$logdir"/*.cmdline || rc=1
    scan "network cut" "$logdir"/*.stderr.log || rc=1
    return "$rc"
}

vm_tests() {
    step "every postcopy qtest on $BUILD"
    check "QEMU $V $KIND-asan: every postcopy qtest and a precopy qtest, no sanitizer report" qtests
    if [ "$KIND" = patched ]; then
        step "hugepage e2e scenarios on $BIN"
        check "QEMU $V $KIND-asan: hugepage e2e scenarios (${E2E_TESTS[*]}), no sanitizer report" e2e
    fi
    step "a network cut during postcopy, and its recovery, on $BIN"
    check "QEMU $V $KIND-asan: a Linux guest through a network cut and recovery, VERIFY OK, no sanitizer report" netcut
}

step "VM tests (waiting for ${PCRS_VM_LOCK:-/tmp/pcrs-vm.lock})"
with_vm_lock vm_tests

step "summary"
echo "times: $(took_summary)"
echo "sanitizers ($KIND): $PASSED passed, $FAILED failed, $REPORTS sanitizer report lines"
[ "$FAILED" -eq 0 ] && [ "$REPORTS" -eq 0 ]
