#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The QEMU stage of the test command: real QEMUs with the patch series,
# linked with the one library, passing QEMU's own postcopy migration
# qtests, for every QEMU version the project targets (10.0.13 and 10.2.2).
#
#   1. install QEMU's build dependencies; install the library under
#      build/prefix (static library, header, pkg-config file): ONE
#      libpostcopy_rs.a, which every patched QEMU below links;
#   2. per version V, fetch Debian's source package three times:
#      build/qemu-V/src (unpatched), build/qemu-V/src-fixes (the series'
#      stock fixes alone) and build/qemu-V/src-patched (the whole series;
#      a series change rewrites only the files it changes), and build them
#      (only qemu-system-x86_64 and migration-test, with gnutls for the TLS
#      tests) into build/qemu-V/{unpatched,fixes,patched}, the fixes
#      without the library on PKG_CONFIG_PATH, the patched with
#      -Dpostcopy_rs=enabled: for the versions in QEMU_RUST_VERSIONS
#      (10.2.2) with --enable-rust, the crate built inside QEMU's tree by
#      the series' last patch, and no PKG_CONFIG_PATH (the external library
#      must not be findable); for the others against the external library;
#      and for the versions in QEMU_C_VERSIONS the
#      whole series again with -Dpostcopy_rs=disabled, QEMU's own C, into
#      build/qemu-V/no-library.  Those names are links into
#      build/qemu-V/trees/, where each tree sits beside its builds, so
#      that ccache compiles a file the patches leave alone once per
#      version (tree_layout below);
#   3. check that Rust is really in: each patched binary exports the
#      library's symbols and lacks the C fault thread, which a
#      -Dpostcopy_rs=disabled binary has, with none of the library's
#      symbols; that configure with -Dpostcopy_rs=enabled fails, naming
#      the library, when it is missing or declares another ABI (for the
#      versions in QEMU_C_VERSIONS); for the Rust builds, that the binary
#      holds one Rust runtime (rust_eh_personality, the allocator shims,
#      the panic handler once each) and that QEMU's own Rust tests pass
#      (meson test --suite rust: QEMU's crates' unit, integration and doc
#      tests, and this crate's unit tests under QEMU's flags; the Rust
#      HPET runs in every migration qtest on that build); and that
#      each series is what a maintainer can take (scripts/qemu-series.sh
#      check: git am onto upstream, checkpatch.pl, patch -p1 onto Debian);
#   4. under the machine lock (/tmp/pcrs-vm.lock): per version, every
#      postcopy qtest migration-test lists (TLS included) and one precopy
#      qtest on the patched build, 8 at a time, with the library's trace
#      events on; each test runs once; check that the library sent
#      discard runs and placed pages during postcopy/plain; the same
#      qtests on the no-library build of the last of QEMU_C_VERSIONS (the
#      stock fixes under Part 2's C); and postcopy/plain,
#      postcopy/preempt/plain and the precopy qtest on the other
#      no-library builds and on the stock-fixes builds;
#   5. interoperability, with migration-test's own guest RAM check: per
#      version, patched source to unpatched destination and back; across
#      versions, patched 10.0.13 to patched 10.2.2 on the 10.0 machine type
#      (pc-q35-10.0) and back;
#   6. mismatched page sizes (scripts/e2e.py check pagesize): a patched
#      destination's error-desc names both page sizes in words, whichever
#      the source; the source's error is stock QEMU's (nothing new on the
#      wire); an unpatched destination gives QEMU's old error; and the
#      stock fixes: each fix's e2e test sees its bug on unpatched QEMU
#      (e2e.py test --expect-bug) and passes on the build with the stock
#      fixes alone;
#   7. from 10.1 on (blocktime rework), scripts/e2e.py check blocktime on the
#      unpatched and on the patched build: after a postcopy migration with
#      postcopy-blocktime on, the destination's latency is non-zero and
#      its latency histogram adds up to the faults it accounted.
#
# The series for version V is qemu-patches/vV/ (its `series` file lists
# the order).  The 10.0.13 trees are also reachable under the names the
# other scripts use: build/qemu-src, build/qemu-src-patched,
# build/qemu-unpatched and build/qemu-patched are symbolic links into
# build/qemu-10.0.13/ (override with QEMU_LEGACY_VERSION).
#
# Environment:
#   QEMU_VERSIONS  the versions to test, default "10.0.13 10.2.2"
#   QEMU_C_VERSIONS  of those, the ones also built and tested with
#                  -Dpostcopy_rs=disabled, default "10.0.13 10.2.2"
#                  (the C of each series' Part 2 runs only there): the
#                  last through every postcopy qtest, the others
#                  through three
#   QEMU_RUST_VERSIONS  of those, the ones whose patched build is
#                  --enable-rust with the in-tree crate, default "10.2.2"
#   QTEST_JOBS     qtests run at once (default 8, scripts/qemu-qtest.sh)
#   QEMU_BUILD_ONLY=1  stop after the builds and their checks (steps 1-3;
#                  make bench-e2e uses it)
#
# Prints "N passed, N failed" per version and for the whole stage, and
# exits non-zero on any failure.  POSTCOPY_RS_SKIP_QEMU=1 makes the test
# command skip this stage.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PCRS_ROOT" || exit 1

B=$PCRS_ROOT/build
PREFIX=$B/prefix
read -r -a VERSIONS <<<"${QEMU_VERSIONS:-10.0.13 10.2.2}"
C_VERSIONS=" ${QEMU_C_VERSIONS-10.0.13 10.2.2} "
# The build option's meson code is the same in every series: configure's
# refusals are checked on one version, the last of QEMU_C_VERSIONS.
read -r -a c_list <<<"$C_VERSIONS"
LAST_C_VERSION=
[ ${#c_list[@]} -eq 0 ] || LAST_C_VERSION=${c_list[-1]}
RUST_VERSIONS=" ${QEMU_RUST_VERSIONS-10.2.2} "
LEGACY=${QEMU_LEGACY_VERSION:-10.0.13}
TRACE='postcopy_rs_*'
LOCK=${PCRS_VM_LOCK:-/tmp/pcrs-vm.lock}
PASSED=0
FAILED=0
declare -A VPASS=() VFAIL=() TOOK=()

vdir() { printf '%s/qemu-%s\n' "$B" "$1"; }

# The patch series for version $1.
series_dir() {
    if [ -f "qemu-patches/v$1/series" ]; then
        printf 'qemu-patches/v%s\n' "$1"
    else
        return 1
    fi
}

# check VERSION|- WHAT CMD...: one counted check.
check() {
    local v=$1 what=$2
    shift 2
    if "$@"; then
        echo "PASS  $what"
        PASSED=$((PASSED + 1))
        [ "$v" = - ] || VPASS[$v]=$((${VPASS[$v]:-0} + 1))
    else
        echo "FAIL  $what"
        FAILED=$((FAILED + 1))
        [ "$v" = - ] || VFAIL[$v]=$((${VFAIL[$v]:-0} + 1))
    fi
}

step "QEMU build dependencies"
timed deps scripts/qemu-deps.sh
# The page-size and blocktime checks run on qemu.qmp (scripts/e2e.py).
timed deps scripts/demo-deps.sh
# request-flush-2M, the test of stock fix 0002, runs the demo's Linux guest.
timed deps scripts/guest-build.sh

step "install the library under build/prefix"
timed library make --no-print-directory install PREFIX="$PREFIX" >/dev/null ||
    die "make install of the library failed"
LIB=$PREFIX/lib/libpostcopy_rs.a
LIB_SHA=$(sha256sum "$LIB" | cut -d' ' -f1)
echo "one library for every version: $LIB (sha256 ${LIB_SHA:0:16}...)"

step "the 10.0.13 trees under their usual names"
# Other scripts (demo.sh, e2e.py, migrate.py) use build/qemu-{src,
# src-patched,unpatched,patched}: point them at build/qemu-$LEGACY/.  A real
# directory there is a build from before the per-version layout: replace it.
mkdir -p "$(vdir "$LEGACY")"
for pair in qemu-src:src qemu-src-patched:src-patched qemu-unpatched:unpatched \
    qemu-patched:patched; do
    name=${pair%%:*} target=qemu-$LEGACY/${pair#*:}
    if [ -L "$B/$name" ] && [ "$(readlink "$B/$name")" = "$target" ]; then
        continue
    fi
    if [ -e "$B/$name" ] && [ ! -L "$B/$name" ]; then
        echo "replacing $B/$name (a tree from before the per-version layout) with a link to $target"
    fi
    rm -rf "${B:?}/$name"
    ln -s "$target" "$B/$name"
done

# Per version, each source tree lives in a directory of its own under
# trees/, beside the builds made from it: trees/stock/{qemu,unpatched},
# trees/fixes/{qemu,fixes}, trees/series/{qemu,patched,no-library}.  Every
# build then finds its source at ../qemu, and ccache (with base_dir, set by
# qemu-build.sh) sees one command line for a file in all of them: a file
# the series leaves alone is compiled once per version, not once per tree.
# The names the other scripts use (build/qemu-V/src, .../patched, ...) are
# links into trees/.  A real directory under such a name is from before
# this layout: it is moved into trees/ (a source tree is kept; a build
# directory is reconfigured by qemu-build.sh, as its source path changed).
TREE_LINKS=(src:stock/qemu unpatched:stock/unpatched src-fixes:fixes/qemu fixes:fixes/fixes
    src-patched:series/qemu patched:series/patched no-library:series/no-library)

tree_layout() {
    local d=$1 pair name target
    for pair in "${TREE_LINKS[@]}"; do
        name=${pair%%:*} target=trees/${pair#*:}
        mkdir -p "$d/${target%/*}"
        if [ -L "$d/$name" ] && [ "$(readlink "$d/$name")" = "$target" ]; then
            continue
        fi
        if [ -d "$d/$name" ] && [ ! -L "$d/$name" ] && [ ! -e "$d/$target" ]; then
            echo "moving $d/$name (from before trees/) to $d/$target"
            mv "$d/$name" "$d/$target"
        fi
        rm -rf "${d:?}/$name"
        ln -s "$target" "$d/$name"
    done
}

fetch_and_build() {
    local v=$1 d t src series
    d=$(vdir "$v")
    t=$d/trees
    tree_layout "$d"
    # Real paths from here on: qemu-fetch.sh and series_tree replace a
    # tree, and would replace a link with a directory.
    src=$t/stock/qemu
    series=$(series_dir "$v") || die "no patch series for QEMU $v (qemu-patches/v$v/series)"

    step "QEMU $v: fetch (unpatched tree)"
    if [ "$(cat "$src/VERSION" 2>/dev/null)" != "$v" ] || [ -e "$src/.postcopy-rs-patches" ]; then
        timed fetch env QEMU_VERSION="$v" scripts/qemu-fetch.sh "$src"
    fi
    step "QEMU $v: fetch (tree for the series $series)"
    timed fetch series_tree "$v" "$series" "$t/series/qemu" "$t/series/patched"
    step "QEMU $v: fetch (tree for the stock fixes of $series alone)"
    timed fetch series_tree "$v" "$series" "$t/fixes/qemu" "$t/fixes/fixes" --fixes-only

    step "QEMU $v: build unpatched"
    timed build nice -n 10 scripts/qemu-build.sh "$src" "$t/stock/unpatched"

    step "QEMU $v: build the stock fixes alone, without the library"
    # No PKG_CONFIG_PATH: the library must not be findable for this one.
    timed build env -u PKG_CONFIG_PATH nice -n 10 \
        scripts/qemu-build.sh "$t/fixes/qemu" "$t/fixes/fixes" --patches "$series" --fixes-only

    if [[ $RUST_VERSIONS == *" $v "* ]]; then
        step "QEMU $v: build patched with --enable-rust: the crate in QEMU's tree, no external library"
        timed deps scripts/qemu-rust-deps.sh
        timed build env -u PKG_CONFIG_PATH nice -n 10 \
            scripts/qemu-build.sh "$t/series/qemu" "$t/series/patched" --patches "$series" \
            --postcopy-rs enabled --rust
    else
        step "QEMU $v: build patched, linked with the library"
        relink_if_library_changed "$t/series/patched" "$LIB"
        timed build env PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" nice -n 10 \
            scripts/qemu-build.sh "$t/series/qemu" "$t/series/patched" --patches "$series" \
            --postcopy-rs enabled
    fi

    if [[ $C_VERSIONS == *" $v "* ]]; then
        step "QEMU $v: build the series with -Dpostcopy_rs=disabled (QEMU's own C)"
        # The library findable, so that only the option keeps it out.
        timed build env PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" nice -n 10 \
            scripts/qemu-build.sh "$t/series/qemu" "$t/series/no-library" --patches "$series" \
            --postcopy-rs disabled
    fi
}

exports_library() {
    local bin=$1 sym syms missing=0
    # Into a variable first: `nm | grep -q` fails under pipefail when grep
    # stops reading early.
    syms=$(nm "$bin")
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

# one_rust_runtime BINARY: the Rust runtime's symbols once each (a
# second Rust static library would bring a second std), and the library's
# exports.
one_rust_runtime() {
    local syms sym n ok=0
    syms=$(nm "$1" | sed 's/^[0-9a-f]* //') || return 1
    for sym in rust_eh_personality __rust_alloc __rdl_alloc rust_begin_unwind; do
        # v0-mangled names (_RNvCs<crate hash>7___rustc12___rust_alloc)
        # end in the name's length, a "_" before a name that starts with
        # one, and the name: a second std would be a second such symbol.
        n=$(grep -cE "^[Tt] (_R[A-Za-z0-9_]*[0-9]_?${sym}|${sym})\$" <<<"$syms" || true)
        echo "  $sym: $n"
        [ "$n" -eq 1 ] || ok=1
    done
    n=$(grep -c '^T postcopy_rs_' <<<"$syms" || true)
    echo "  postcopy_rs_* exports: $n"
    [ "$n" -gt 0 ] || ok=1
    return $ok
}

# c_fault_thread BINARY: BINARY has QEMU's C fault thread (a static
# function only ever called through a pointer, so never inlined away).
c_fault_thread() {
    local syms
    syms=$(nm "$1") || return 1
    grep -q " t postcopy_ram_fault_thread\$" <<<"$syms"
}

# library_replaces_c V: the patched binary lacks the C fault thread, the
# unpatched one has it (so that the check can fail), and a
# -Dpostcopy_rs=disabled build has it and none of the library.
library_replaces_c() {
    local d=$1 v=$2 ok=0 syms
    if c_fault_thread "$d/patched/qemu-system-x86_64"; then
        echo "  the patched binary still has the C fault thread"
        ok=1
    fi
    c_fault_thread "$d/unpatched/qemu-system-x86_64" ||
        { echo "  sanity: the unpatched binary lacks postcopy_ram_fault_thread"; ok=1; }
    if [[ $C_VERSIONS == *" $v "* ]]; then
        c_fault_thread "$d/no-library/qemu-system-x86_64" ||
            { echo "  the -Dpostcopy_rs=disabled binary lacks the C fault thread"; ok=1; }
        # Into a variable first: under pipefail, `nm | grep -q` fails when
        # grep stops reading at its first match.
        syms=$(nm "$d/no-library/qemu-system-x86_64")
        if grep -q ' postcopy_rs_' <<<"$syms"; then
            echo "  the -Dpostcopy_rs=disabled binary carries postcopy-rs symbols"
            ok=1
        fi
    fi
    return $ok
}

# configure_refuses V WHY PATTERN [ENV...]: configure of the series' tree
# with -Dpostcopy_rs=enabled fails, and its log matches PATTERN.
configure_refuses() {
    local v=$1 why=$2 pattern=$3 dir
    shift 3
    dir=$B/configure-refuses/$v-$why
    rm -rf "$dir"
    mkdir -p "$dir"
    if (cd "$dir" && env "$@" PATH="$PCRS_VENV/bin:$PATH" "$(vdir "$v")/src-patched/configure" \
        --target-list=x86_64-softmmu --without-default-features --disable-docs \
        --disable-rust --disable-download --python="$PCRS_VENV/bin/python3" \
        -Dpostcopy_rs=enabled) >"$dir/configure.log" 2>&1; then
        echo "  configure succeeded ($why)"
        return 1
    fi
    grep -E "$pattern" "$dir/configure.log" | head -n 3 | sed 's/^/  configure: /'
    grep -qE "$pattern" "$dir/configure.log"
}

# A prefix whose postcopy-rs is the right version but declares ABI 2.
wrong_abi_prefix() {
    local p=$B/wrong-abi
    rm -rf "$p"
    mkdir -p "$p/include" "$p/lib/pkgconfig"
    sed 's/^#define POSTCOPY_RS_ABI_VERSION .*/#define POSTCOPY_RS_ABI_VERSION 2/' \
        "$PREFIX/include/postcopy_rs.h" >"$p/include/postcopy_rs.h"
    cp "$LIB" "$p/lib/"
    sed "s|^prefix=.*|prefix=$p|" "$PREFIX/lib/pkgconfig/postcopy-rs.pc" \
        >"$p/lib/pkgconfig/postcopy-rs.pc"
    printf '%s\n' "$p/lib/pkgconfig"
}

for v in "${VERSIONS[@]}"; do
    fetch_and_build "$v"
    d=$(vdir "$v")
    step "QEMU $v: the patched binary carries the library"
    check "$v" "QEMU $v: patched qemu-system-x86_64 exports the library's symbols" \
        exports_library "$d/patched/qemu-system-x86_64"
    check "$v" "QEMU $v: the patched binary runs the library's fault thread, not the C one; -Dpostcopy_rs=disabled keeps the C" \
        library_replaces_c "$d" "$v"
    if [[ $RUST_VERSIONS == *" $v "* ]]; then
        check "$v" "QEMU $v --enable-rust: one Rust runtime in the binary, with the crate's exports" \
            one_rust_runtime "$d/patched/qemu-system-x86_64"
        check "$v" "QEMU $v --enable-rust: QEMU's own Rust tests and the crate's (meson test --suite rust)" \
            timed "rust tests" env PATH="${PCRS_RUST_VENV:-$PCRS_CACHE/meson-rust-venv}/bin:$PATH" \
            nice -n 10 "$d/patched/pyvenv/bin/meson" test -C "$d/patched" --suite rust \
            --print-errorlogs
    fi
    if [ "$v" = "$LAST_C_VERSION" ]; then
        check "$v" "QEMU $v: -Dpostcopy_rs=enabled without the library fails configure, naming it" \
            timed configure configure_refuses "$v" missing 'Dependency "postcopy-rs" not found' \
            -u PKG_CONFIG_PATH
        check "$v" "QEMU $v: -Dpostcopy_rs=enabled with another ABI fails configure, naming it" \
            timed configure configure_refuses "$v" wrong-abi "postcopy_rs.h does not declare ABI version 3" \
            PKG_CONFIG_PATH="$(wrong_abi_prefix)"
    fi
    if [[ $RUST_VERSIONS == *" $v "* ]]; then
        check "$v" "QEMU $v: the in-tree crate's patch is what src/ generates (scripts/qemu-intree.sh check)" \
            timed series scripts/qemu-intree.sh check
    fi
    step "QEMU $v: the series as a maintainer receives it"
    check "$v" "QEMU $v: the series applies with git am to upstream, is checkpatch-clean, applies with patch -p1 to Debian's source" \
        timed series nice -n 10 scripts/qemu-series.sh check "$v"
done
[ "$(sha256sum "$LIB" | cut -d' ' -f1)" = "$LIB_SHA" ] ||
    die "$LIB changed while the QEMUs were built"
if [ "${QEMU_BUILD_ONLY:-0}" = 1 ]; then
    echo "QEMU_BUILD_ONLY=1: built, no VM tests; ${PASSED} passed, ${FAILED} failed"
    [ "$FAILED" -eq 0 ]
    exit
fi

# The largest value of FIELD in TRACE lines of LOG ("... FIELD N ...").
max_field() {
    local log=$1 event=$2 field=$3
    grep -o "$event .*" "$log" 2>/dev/null |
        sed -n "s/.* $field \\([0-9][0-9]*\\).*/\\1/p" | sort -n | tail -n1
}

rust_ran() {
    local log=$1 runs placed timed p99
    runs=$(max_field "$log" postcopy_rs_discard_stats runs)
    placed=$(max_field "$log" postcopy_rs_incoming_stats placed)
    # Shown, not required: a test may end without a page fault.
    timed=$(max_field "$log" postcopy_rs_incoming_latency pages)
    p99=$(max_field "$log" postcopy_rs_incoming_latency p99_us)
    echo "  library counters in $(basename "$log"): discard runs ${runs:-none}, pages placed ${placed:-none}, fault latency ${timed:-no} pages (p99 <= ${p99:--} us)"
    [ "${runs:-0}" -gt 0 ] && [ "${placed:-0}" -gt 0 ]
}

# interop NAME BUILDDIR SIDE_VAR OTHER_BINARY EVENT FIELD [ENV...]:
# postcopy/plain with BUILDDIR's migration-test and binary on one side and
# OTHER_BINARY on the other (SIDE_VAR: QTEST_QEMU_BINARY_SRC or _DST); the
# patched side must have done its part through the library (EVENT FIELD).
interop() {
    local name=$1 build=$2 side_var=$3 other=$4 event=$5 field=$6
    local logdir=$B/interop-logs/$name n
    shift 6
    rm -rf "$logdir"
    env "$side_var=$other" QTEST_LOGDIR="$logdir" QTEST_LABEL="$name" "$@" \
        scripts/qemu-qtest.sh "$build" /x86_64/migration/postcopy/plain || return 1
    n=$(max_field "$logdir/x86_64_migration_postcopy_plain.log" "$event" "$field")
    echo "  $name: $event $field = ${n:-none}"
    [ "${n:-0}" -gt 0 ]
}

# pagesize LABEL ARGS...: scripts/e2e.py check pagesize, its logs by label.
pagesize() {
    local label=$1
    shift
    timed pagesize python3 scripts/e2e.py check pagesize --label "$label" \
        --workdir "$B/pagesize-logs/${label// /_}" "$@"
}

# The stock fixes' e2e tests, as scripts/e2e.py lists them.
mapfile -t BUG_TESTS < <(python3 scripts/e2e.py bug-tests)
[ ${#BUG_TESTS[@]} -gt 0 ] || die "scripts/e2e.py bug-tests listed no test"

# fresh_qtest_logs DIR: DIR without an earlier run's test logs, so that
# none can stand in for this run's (rust_ran reads one).
fresh_qtest_logs() {
    mkdir -p "$1"
    rm -f "$1"/*.log
}

# The qtests of the builds that run a few: the stock fixes alone, and the
# -Dpostcopy_rs=disabled builds but the last.
SMOKE_QTESTS=(/x86_64/migration/postcopy/plain /x86_64/migration/postcopy/preempt/plain
    /x86_64/migration/precopy/unix/plain)

vm_tests() {
    local v d
    export QTEST_TRACE=$TRACE
    for v in "${VERSIONS[@]}"; do
        d=$(vdir "$v")
        # One set after the other: the boot-block guests spin, so sets run
        # together only compete for the CPUs (three at once, 6 tests each,
        # took longer than in turn and timed out 7 tests on 10.2.2).
        step "QEMU $v: migration qtests on the patched build"
        fresh_qtest_logs "$d/patched/qtest-logs"
        check "$v" "QEMU $v: every postcopy qtest and a precopy qtest on the patched build" \
            timed "qtests $v" env QTEST_LOGDIR="$d/patched/qtest-logs" \
            QTEST_LABEL="QEMU $v patched qtests" scripts/qemu-qtest.sh "$d/patched"
        check "$v" "QEMU $v: postcopy/plain: the library sent discard runs and placed pages" \
            rust_ran "$d/patched/qtest-logs/x86_64_migration_postcopy_plain.log"

        # Every postcopy qtest on the C of the last of QEMU_C_VERSIONS, the
        # series upstream would take; the earlier series' Part 2 is the
        # same C, rebased: three qtests there.
        if [[ $C_VERSIONS == *" $v "* ]]; then
            local paths=("${SMOKE_QTESTS[@]}") what="postcopy (plain, preempt) and a precopy qtest"
            if [ "$v" = "$LAST_C_VERSION" ]; then
                paths=() what="every postcopy qtest and a precopy qtest"
            fi
            step "QEMU $v: migration qtests on the series built with -Dpostcopy_rs=disabled"
            fresh_qtest_logs "$d/no-library/qtest-logs"
            check "$v" "QEMU $v: $what with -Dpostcopy_rs=disabled" \
                timed "qtests $v no-library" env -u QTEST_TRACE QTEST_LOGDIR="$d/no-library/qtest-logs" \
                QTEST_LABEL="QEMU $v -Dpostcopy_rs=disabled qtests" scripts/qemu-qtest.sh "$d/no-library" \
                "${paths[@]}"
        fi

        # Every postcopy qtest runs over these fixes under Part 2's C (the
        # no-library set of the last of QEMU_C_VERSIONS); here they run
        # alone, as a maintainer may take them: each fix's own test below,
        # and three qtests.
        step "QEMU $v: migration qtests on the stock fixes alone (no library)"
        fresh_qtest_logs "$d/fixes/qtest-logs"
        check "$v" "QEMU $v: postcopy (plain, preempt) and a precopy qtest on the stock fixes alone" \
            timed "qtests $v fixes" env -u QTEST_TRACE QTEST_LOGDIR="$d/fixes/qtest-logs" \
            QTEST_LABEL="QEMU $v stock-fixes qtests" scripts/qemu-qtest.sh "$d/fixes" \
            "${SMOKE_QTESTS[@]}"

        step "QEMU $v: interoperability with unpatched QEMU (wire format unchanged)"
        check "$v" "QEMU $v postcopy: patched source -> unpatched destination, guest RAM verified" \
            timed interop interop "$v-patched-to-unpatched" "$d/patched" \
            QTEST_QEMU_BINARY_DST "$d/unpatched/qemu-system-x86_64" postcopy_rs_discard_stats runs
        check "$v" "QEMU $v postcopy: unpatched source -> patched destination, guest RAM verified" \
            timed interop interop "$v-unpatched-to-patched" "$d/patched" \
            QTEST_QEMU_BINARY_SRC "$d/unpatched/qemu-system-x86_64" postcopy_rs_incoming_stats placed
    done

    for v in "${VERSIONS[@]}"; do
        d=$(vdir "$v")
        step "QEMU $v: mismatched page sizes (4 KiB -> 2 MiB hugetlbfs)"
        check "$v" "QEMU $v: patched -> patched: the destination names both page sizes, the source fails as stock does" \
            pagesize "QEMU $v patched -> patched" --src "$d/patched/qemu-system-x86_64" \
            --dst "$d/patched/qemu-system-x86_64" --expect words
        check "$v" "QEMU $v: unpatched -> patched: the destination names both page sizes, the source fails as stock does" \
            pagesize "QEMU $v unpatched -> patched" --src "$d/unpatched/qemu-system-x86_64" \
            --dst "$d/patched/qemu-system-x86_64" --expect words
        check "$v" "QEMU $v: patched -> unpatched: QEMU's old errors on both sides" \
            pagesize "QEMU $v patched -> unpatched" --src "$d/patched/qemu-system-x86_64" \
            --dst "$d/unpatched/qemu-system-x86_64" --expect old

        step "QEMU $v: each stock fix's test fails on stock QEMU and passes with the fix"
        for t in "${BUG_TESTS[@]}"; do
            check "$v" "QEMU $v unpatched: $t sees the bug its fix removes" \
                timed "stock fixes" python3 scripts/e2e.py \
                --patched "$d/unpatched/qemu-system-x86_64" test --expect-bug --only "$t"
            check "$v" "QEMU $v with the stock fixes alone: $t passes" \
                timed "stock fixes" python3 scripts/e2e.py \
                --patched "$d/fixes/qemu-system-x86_64" test --only "$t"
        done
    done

    for v in "${VERSIONS[@]}"; do
        # The blocktime rework (10.1): ns latencies and their histogram.
        dpkg --compare-versions "$v" ge 10.1 || continue
        d=$(vdir "$v")
        step "QEMU $v: postcopy blocktime and latency accounting"
        for kind in unpatched patched; do
            check "$v" "QEMU $v $kind: postcopy latency and histogram add up to the faults accounted" \
                timed blocktime python3 scripts/e2e.py check blocktime \
                --src "$d/$kind/qemu-system-x86_64" --dst "$d/$kind/qemu-system-x86_64" \
                --bootblock "$d/src/tests/qtest/migration/i386/a-b-bootblock.h" \
                --workdir "$B/blocktime-logs/$v-$kind" --label "QEMU $v $kind"
        done
    done

    if [[ " ${VERSIONS[*]} " == *" 10.0.13 "* ]] && [[ " ${VERSIONS[*]} " == *" 10.2.2 "* ]]; then
        local old new
        old=$(vdir 10.0.13)/patched new=$(vdir 10.2.2)/patched
        step "across versions: patched 10.0.13 <-> patched 10.2.2, machine pc-q35-10.0"
        # 10.0.13's migration-test drives both: 10.2's passes -run-with
        # exit-with-parent=on, which 10.0 does not know.
        # QTEST_QEMU_MACHINE_TYPE pins the machine type both binaries know.
        check - "postcopy: patched 10.0.13 source -> patched 10.2.2 destination (pc-q35-10.0), guest RAM verified" \
            timed interop interop 10.0.13-to-10.2.2 "$old" \
            QTEST_QEMU_BINARY_DST "$new/qemu-system-x86_64" postcopy_rs_incoming_stats placed \
            QTEST_QEMU_MACHINE_TYPE=pc-q35-10.0
        check - "postcopy: patched 10.2.2 source -> patched 10.0.13 destination (pc-q35-10.0), guest RAM verified" \
            timed interop interop 10.2.2-to-10.0.13 "$old" \
            QTEST_QEMU_BINARY_SRC "$new/qemu-system-x86_64" postcopy_rs_incoming_stats placed \
            QTEST_QEMU_MACHINE_TYPE=pc-q35-10.0
    fi
}

step "VM tests (waiting for $LOCK)"
with_vm_lock vm_tests

step "summary"
for v in "${VERSIONS[@]}"; do
    echo "QEMU $v: ${VPASS[$v]:-0} passed, ${VFAIL[$v]:-0} failed"
done
echo "times: $(took_summary)"
echo "QEMU stage: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
