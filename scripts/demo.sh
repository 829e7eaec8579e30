#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The main command (`make demo`): build everything, boot a real Linux guest
# on a patched QEMU, live-migrate it with postcopy to a second patched QEMU,
# and show what happened.  As root on Debian 12; installs what it needs.
#
# Usage: scripts/demo.sh [migrate.py options...]
#        make demo ARGS="--hugepages 2M --netem-delay 20"
#        make demo ARGS=--libvirt            the same guest under libvirt
#
#   0. scripts/demo-deps.sh [--libvirt]     qemu.qmp in a venv (and libvirt)
#   1. scripts/qemu-deps.sh                 QEMU's build dependencies
#   2. make install PREFIX=build/prefix     the library (cargo build --release)
#   3. scripts/qemu-fetch.sh build/qemu-src-patched
#                                           only if the tree is missing, or
#                                           carries another version of the
#                                           series than qemu-patches/v10.0.13/
#   4. scripts/qemu-build.sh build/qemu-src-patched build/qemu-patched
#      --patches qemu-patches/v10.0.13      relinked only when the library
#                                           archive changed
#   5. scripts/guest-build.sh               build/guest/{vmlinuz,initramfs.cpio.gz}
#   6. scripts/migrate.py "$@"              the migration, its summary; exit 0
#                                           only if the guest verified every page
#
# DEMO_SKIP_BUILD=1 skips steps 1-4 (the QEMU at build/qemu-patched is used
# as it is).  PYTHON picks the interpreter for migrate.py (default: the
# qemu.qmp venv's python, see scripts/demo-deps.sh).

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PCRS_ROOT" || exit 1

B=$PCRS_ROOT/build
PREFIX=$B/prefix
SRC=$B/qemu-src-patched
QEMU_BUILD=$B/qemu-patched
# The series for the QEMU in build/qemu-src-patched (a link to the
# 10.0.13 tree that scripts/qemu-test.sh builds).
SERIES=qemu-patches/v10.0.13
declare -A took=()

timed() {
    local name=$1 t0=$SECONDS
    shift
    "$@"
    took[$name]=$((SECONDS - t0))
}

step "check"
[ "$(id -u)" -eq 0 ] ||
    die "make demo must run as root: it installs Debian packages, reserves hugepages, creates network namespaces and uses userfaultfd and /dev/kvm"

step "the demo's own dependencies (qemu.qmp; libvirt with --libvirt)"
deps_args=()
for a in "$@"; do [ "$a" = --libvirt ] && deps_args=(--libvirt); done
timed demodeps scripts/demo-deps.sh "${deps_args[@]}"
PY=${PYTHON:-${PCRS_QMP_VENV:-$PCRS_CACHE/qmp-venv}/bin/python3}
command -v "$PY" >/dev/null 2>&1 || die "$PY not found"

if [ "${DEMO_SKIP_BUILD:-0}" != 1 ]; then
    step "QEMU build dependencies"
    timed deps scripts/qemu-deps.sh

    step "the library, installed under build/prefix"
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install a Rust toolchain (rustup) first"
    timed library make --no-print-directory install PREFIX="$PREFIX"

    step "QEMU source for the patch series"
    # Fetch when the tree is missing, or when it carries patches that are not
    # the current series (scripts/qemu-build.sh records them in
    # .postcopy-rs-patches and refuses a tree with a different series).
    want_patches=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$SERIES/series" | grep -v '^$' |
        while read -r p; do echo "$p $(sha256sum "$SERIES/$p" | cut -d' ' -f1)"; done)
    have_patches=$(cat "$SRC/.postcopy-rs-patches" 2>/dev/null || true)
    if [ ! -f "$SRC/VERSION" ]; then
        timed fetch scripts/qemu-fetch.sh "$SRC"
    elif [ -n "$have_patches" ] && [[ "$want_patches"$'\n' != "$have_patches"$'\n'* ]]; then
        # (a tree carrying the first patches of the series is fine:
        # qemu-build.sh applies the rest)
        echo "$SRC carries another version of the patch series: fetching a fresh tree"
        timed fetch scripts/qemu-fetch.sh "$SRC"
    else
        echo "using $SRC (QEMU $(cat "$SRC/VERSION"))"
    fi

    step "build the patched QEMU"
    relink_if_library_changed "$QEMU_BUILD" "$PREFIX/lib/libpostcopy_rs.a"
    timed qemu env PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig" \
        scripts/qemu-build.sh "$SRC" "$QEMU_BUILD" --patches "$SERIES"
else
    step "DEMO_SKIP_BUILD=1: using $QEMU_BUILD as it is"
fi
[ -x "$QEMU_BUILD/qemu-system-x86_64" ] || die "$QEMU_BUILD/qemu-system-x86_64 is missing"

step "the guest: Debian kernel + busybox + workload"
timed guest scripts/guest-build.sh

step "postcopy live migration"
rc=0
t0=$SECONDS
"$PY" scripts/migrate.py "$@" || rc=$?
took[migration]=$((SECONDS - t0))

summary=""
for k in demodeps deps library fetch qemu guest migration; do
    [ -n "${took[$k]:-}" ] && summary+="$k $(fmt_secs "${took[$k]}"), "
done
echo "==> [demo.sh] times: ${summary%, }"
[ "$rc" -eq 0 ] || die "the migration demo failed (migrate.py exit $rc)"
