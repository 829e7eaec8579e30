#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The QEMU stage of the test command: a real QEMU with the patch series,
# linked with the library, passing QEMU's own postcopy migration qtests.
#
#   1. install QEMU's build dependencies; install the library under
#      build/prefix (static library, header, pkg-config file);
#   2. fetch QEMU from Debian's source package twice: build/qemu-src
#      (unpatched) and build/qemu-src-patched (a fresh tree whenever
#      qemu-patches/ changes);
#   3. build both (qemu-system-x86_64 and migration-test only);
#   4. check that Rust is really in: the patched binary exports the
#      library's symbols, and the replaced C functions are gone from the
#      patched tree;
#   5. run the 7 postcopy qtests and one precopy qtest on the patched
#      build, with the library's trace events on, and check that the
#      library sent discard runs and placed pages during postcopy/plain;
#   6. interoperability, both ways, with migration-test's own guest RAM
#      check: patched source to unpatched destination, and back.
#
# Prints "N passed, N failed" for all of it and exits non-zero on any
# failure.  POSTCOPY_RS_SKIP_QEMU=1 makes the test command skip this stage.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PCRS_ROOT" || exit 1

B=$PCRS_ROOT/build
PREFIX=$B/prefix
UNPATCHED_SRC=$B/qemu-src
PATCHED_SRC=$B/qemu-src-patched
UNPATCHED=$B/qemu-unpatched
PATCHED=$B/qemu-patched
TRACE='postcopy_rs_*'
PASSED=0
FAILED=0

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

step "QEMU build dependencies"
scripts/qemu-deps.sh

step "install the library under build/prefix"
make --no-print-directory install PREFIX="$PREFIX" >/dev/null ||
    die "make install of the library failed"

step "fetch QEMU (unpatched tree)"
if [ ! -f "$UNPATCHED_SRC/VERSION" ] || [ -e "$UNPATCHED_SRC/.postcopy-rs-patches" ]; then
    scripts/qemu-fetch.sh "$UNPATCHED_SRC"
fi

step "fetch QEMU (tree for the patch series)"
series_stamp=$(cat qemu-patches/series qemu-patches/*.patch | sha256sum | cut -d' ' -f1)
if [ ! -f "$PATCHED_SRC/VERSION" ] ||
    [ "$(cat "$PATCHED_SRC/.postcopy-rs-series" 2>/dev/null)" != "$series_stamp" ]; then
    scripts/qemu-fetch.sh "$PATCHED_SRC"
    echo "$series_stamp" > "$PATCHED_SRC/.postcopy-rs-series"
fi

step "build unpatched QEMU"
scripts/qemu-build.sh "$UNPATCHED_SRC" "$UNPATCHED"

step "build patched QEMU linked with the library"
relink_if_library_changed "$PATCHED" "$PREFIX/lib/libpostcopy_rs.a"
PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig scripts/qemu-build.sh \
    "$PATCHED_SRC" "$PATCHED" --patches qemu-patches

step "the patched binary carries the library"
exports_library() {
    local sym syms missing=0
    # Into a variable first: `nm | grep -q` fails under pipefail when grep
    # stops reading early.
    syms=$(nm "$PATCHED/qemu-system-x86_64")
    for sym in postcopy_rs_send_discard_bitmap postcopy_chunk_hostpages \
        postcopy_rs_place_page postcopy_rs_place_page_zero \
        postcopy_rs_fault_thread_start postcopy_rs_fault_thread_stop; do
        if ! grep -q " T $sym\$" <<<"$syms"; then
            echo "  missing symbol: $sym"
            missing=1
        fi
    done
    return $missing
}
check "patched qemu-system-x86_64 exports the library's symbols" exports_library

c_functions_gone() {
    local fn found=0
    for fn in postcopy_each_ram_send_discard postcopy_chunk_hostpages_pass \
        postcopy_send_discard_bm_ram \
        postcopy_ram_fault_thread postcopy_pause_fault_thread \
        qemu_ufd_copy_ioctl; do
        # A definition: a return type at the start of the line, then the
        # name and its parameter list (comments start with a space).
        if grep -nE "^(static )?[a-z_]+[ *]+$fn\\(" \
            "$PATCHED_SRC/migration/ram.c" "$PATCHED_SRC/migration/postcopy-ram.c"; then
            echo "  still defined in C: $fn"
            found=1
        fi
    done
    # ...and the unpatched tree does define them, so the check can fail.
    grep -qE '^static void postcopy_chunk_hostpages_pass\(' "$UNPATCHED_SRC/migration/ram.c" ||
        { echo "  sanity: unpatched ram.c lacks postcopy_chunk_hostpages_pass"; found=1; }
    return $found
}
check "replaced C functions are gone from the patched tree" c_functions_gone

step "QEMU's migration qtests on the patched build"
export QTEST_TRACE=$TRACE
if QTEST_LOGDIR=$PATCHED/qtest-logs scripts/qemu-qtest.sh "$PATCHED"; then
    echo "PASS  qtests on the patched build"
    PASSED=$((PASSED + 1))
else
    echo "FAIL  qtests on the patched build"
    FAILED=$((FAILED + 1))
fi

# The largest value of FIELD in TRACE lines of LOG ("... FIELD N ...").
max_field() {
    local log=$1 event=$2 field=$3
    grep -o "$event .*" "$log" 2>/dev/null |
        sed -n "s/.* $field \\([0-9][0-9]*\\).*/\\1/p" | sort -n | tail -n1
}

rust_ran() {
    local log=$1 runs placed
    runs=$(max_field "$log" postcopy_rs_discard_stats runs)
    placed=$(max_field "$log" postcopy_rs_incoming_stats placed)
    echo "  library counters in $(basename "$log"): discard runs ${runs:-none}, pages placed ${placed:-none}"
    [ "${runs:-0}" -gt 0 ] && [ "${placed:-0}" -gt 0 ]
}
check "postcopy/plain: the library sent discard runs and placed pages" \
    rust_ran "$PATCHED/qtest-logs/x86_64_migration_postcopy_plain.log"

step "interoperability with unpatched QEMU (wire format unchanged)"
interop() {
    # migration-test takes one of QTEST_QEMU_BINARY_SRC/_DST; the other side
    # is QTEST_QEMU_BINARY, which qemu-qtest.sh sets to the patched build.
    local name=$1 side_var=$2 event=$3 field=$4 logdir=$B/interop-logs/$1 n
    rm -rf "$logdir"
    env "$side_var=$UNPATCHED/qemu-system-x86_64" QTEST_LOGDIR="$logdir" \
        scripts/qemu-qtest.sh "$PATCHED" /x86_64/migration/postcopy/plain || return 1
    # The patched side must have done its part through the library.
    n=$(max_field "$logdir/x86_64_migration_postcopy_plain.log" "$event" "$field")
    echo "  $name: $event $field = ${n:-none}"
    [ "${n:-0}" -gt 0 ]
}
check "postcopy: patched source -> unpatched destination, guest RAM verified" \
    interop patched-to-unpatched QTEST_QEMU_BINARY_DST postcopy_rs_discard_stats runs
check "postcopy: unpatched source -> patched destination, guest RAM verified" \
    interop unpatched-to-patched QTEST_QEMU_BINARY_SRC postcopy_rs_incoming_stats placed

echo "QEMU stage: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
