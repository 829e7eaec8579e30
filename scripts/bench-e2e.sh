#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# `make bench-e2e`: postcopy end to end, patched against unpatched QEMU
# 10.2.2 on the demo's Linux guest (scripts/bench-e2e.py; --help for the
# options, e.g. make bench-e2e ARGS="--patterns seq --pages 4k --runs 9").
# As root on Debian 12; installs and builds what it needs:
#
#   0. scripts/demo-deps.sh                 qemu.qmp in a venv
#   1. QEMU_VERSIONS=10.2.2 QEMU_BUILD_ONLY=1 scripts/qemu-test.sh
#                                           the library, and QEMU 10.2.2
#                                           unpatched and patched from one
#                                           tree with the same flags, into
#                                           build/qemu-10.2.2/{unpatched,patched}
#                                           (incremental; no tests)
#   2. scripts/guest-build.sh               build/guest/{vmlinuz,initramfs.cpio.gz}
#   3. scripts/bench-e2e.py "$@"            under the machine lock
#                                           (lib.sh's with_vm_lock; VMs only)
#
# BENCH_SKIP_BUILD=1 skips step 1 (the QEMUs are used as they are).

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PCRS_ROOT" || exit 1

step "check"
[ "$(id -u)" -eq 0 ] ||
    die "make bench-e2e must run as root: it reserves hugepages and uses userfaultfd and /dev/kvm"

step "the demo's own dependencies (qemu.qmp)"
scripts/demo-deps.sh
PY=${PYTHON:-${PCRS_QMP_VENV:-$PCRS_CACHE/qmp-venv}/bin/python3}
command -v "$PY" >/dev/null 2>&1 || die "$PY not found"

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    step "QEMU 10.2.2, unpatched and patched, from one tree"
    QEMU_VERSIONS=10.2.2 QEMU_BUILD_ONLY=1 scripts/qemu-test.sh
else
    step "BENCH_SKIP_BUILD=1: using build/qemu-10.2.2/{unpatched,patched} as they are"
fi

step "the guest: Debian kernel + busybox + workload"
scripts/guest-build.sh

step "the benchmark (waiting for the machine lock)"
with_vm_lock "$PY" scripts/bench-e2e.py "$@"
