#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The test command (`make test`; .ci/run calls it).  From a fresh clone on
# a fresh Debian machine, as root, it installs what it needs and runs:
#   1. rustfmt and clippy (-D warnings); over scripts/ and guest/,
#      ruff check (ruff.toml) and shellcheck;
#   2. cargo test: unit and property tests, the header drift check, the C
#      harness (plain, valgrind memcheck, AddressSanitizer; the standalone
#      example linked with the README's line), and the tests on real
#      userfaultfd (4 KiB and 2 MiB hugetlbfs pages); then the library
#      built for x86_64-unknown-linux-musl, and the demo guest's workload
#      on this host (guest/test-workload.sh, no VM), and the unit tests of
#      the scripts' Python (scripts/tests: the benchmark's statistics,
#      the harness's reading of QEMU's stderr and its wait for QMP; with
#      the qemu.qmp venv of scripts/demo-deps.sh);
#   3. the QEMU stage (scripts/qemu-test.sh): Debian's QEMU 10.0.13 and
#      10.2.2, each with its patch series and the one library, every
#      postcopy qtest (TLS included), interoperability both ways and
#      across the two versions, 10.2.2's series with -Dpostcopy_rs=disabled
#      (qtests; configure refusing "enabled" without the library or with
#      another ABI), the stock fixes alone (three qtests, and each fix's
#      test failing on stock QEMU), mismatched page sizes, 10.2's blocktime;
#   4. the main command, `make demo`, at default settings: a real Linux
#      guest live-migrated with postcopy between two patched QEMUs; it
#      fails unless the guest verifies every page of its memory; then on
#      QEMU 10.2.2 built --enable-rust with the crate in QEMU's tree
#      (ARGS="--binary build/qemu-10.2.2/patched/qemu-system-x86_64"); then
#      along a 4-hop chain (a cancel, and a network cut mid-postcopy
#      recovered, among the hops; fds and threads must not grow);
#   5. the same demo under libvirt (`make demo ARGS=--libvirt`), at default
#      settings: two libvirt daemons standing for two hosts, virsh migrate
#      --live --postcopy, then virsh migrate-postcopy; the guest's VERIFY OK;
#      and QEMU as an unprivileged user, with vm.unprivileged_userfaultfd=0
#      (ARGS=--unprivileged, plain and under libvirt: the guest's VERIFY
#      OK; and with --deny-userfaultfd: refused before postcopy, in words
#      that name /dev/userfaultfd and the sysctl (stock fix 0006), the
#      source running with its memory verified);
#   6. end-to-end scenarios QEMU lacks (scripts/e2e.py): hugepage-backed
#      RAM (2 MiB, 1 GiB where granted), two blocks of different page
#      sizes, mismatched page sizes both ways (then a matching
#      destination), a page filled
#      behind the destination's back (postcopy pauses, EEXIST, the
#      library's words in the destination's error-desc), a page
#      request served past the source's exceeded rate limit, a requested
#      huge page precopy is sending finished without a rate-limit wait;
#   7. the end-to-end benchmark's smoke test, `make bench-e2e ARGS=--quick`:
#      one cell, one run of QEMU 10.2.2 unpatched and patched each; fails
#      unless every figure is produced (their values are not judged).
#      POSTCOPY_RS_SKIP_QEMU=1 skips 3 to 7: the Rust tests stand alone.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PCRS_ROOT" || exit 1

skipped=target/tmp/skipped-tests.txt
# Every step below, in this script and the ones it runs, names its start
# as time since this one (lib.sh's step).
export PCRS_TEST_START=${PCRS_TEST_START:-$(date +%s)}

step "install dependencies"
scripts/rust-deps.sh

step "rustfmt"
cargo fmt --all -- --check || die "code is not rustfmt-clean: run cargo fmt"

step "clippy"
cargo clippy --locked --all-targets -- -D warnings

step "the scripts' tools: qemu.qmp and ruff (a venv), shellcheck"
scripts/demo-deps.sh
PY_VENV=${PCRS_QMP_VENV:-$PCRS_CACHE/qmp-venv}

step "ruff check: the Python of scripts/ and guest/"
"$PY_VENV/bin/ruff" check --no-cache scripts guest || die "ruff check found problems"

step "shellcheck: the shell of scripts/ and guest/"
shellcheck -x scripts/*.sh guest/*.sh guest/init || die "shellcheck found problems"

step "cargo test"
rm -f "$skipped"
# A hugetlb test must not pass by skipping where this machine can reserve
# what the largest of them needs (64 x 2 MiB): probe, give it back, and
# then make a skip fail.
if reserve_hugepages_probe 2048 64; then
    export POSTCOPY_RS_NO_SKIP=1
    echo "64 x 2 MiB hugepages can be reserved here: a skipped test fails (POSTCOPY_RS_NO_SKIP=1)"
else
    warn "this machine cannot reserve 64 x 2 MiB hugepages: hugetlb tests may skip"
fi
cargo test --locked

step "the library builds for musl too"
# libc's ioctl request type is int on musl, unsigned long on glibc.
musl=x86_64-unknown-linux-musl
if rustup target list --installed 2>/dev/null | grep -qx "$musl" ||
    rustup target add "$musl"; then
    cargo build --lib --target "$musl" || die "the library does not build for $musl"
else
    mkdir -p "$(dirname "$skipped")"
    echo "SKIPPED: cargo build --target $musl: rustup could not add the target" | tee -a "$skipped"
fi
# cargo hides the output of passing tests: say here what was skipped.
if [ -s "$skipped" ]; then
    echo "==================== SKIPPED TESTS ===================="
    cat "$skipped"
    echo "======================================================="
fi

step "the guest workload, on this host"
guest/test-workload.sh

step "the scripts' Python unit tests (in the qemu.qmp venv)"
"$PY_VENV/bin/python3" -m unittest discover -s scripts/tests -v

step "the docs name only what the tree has (scripts/docs-check.py)"
scripts/docs-check.py

if [ "${POSTCOPY_RS_SKIP_QEMU:-0}" = 1 ]; then
    warn "POSTCOPY_RS_SKIP_QEMU=1: the QEMU stage is skipped"
    exit 0
fi

step "QEMU stage"
scripts/qemu-test.sh

step "the main command: make demo (defaults)"
make --no-print-directory demo

step "the demo on QEMU 10.2.2 --enable-rust, the crate in QEMU's tree: make demo ARGS=\"--binary build/qemu-10.2.2/patched/qemu-system-x86_64\""
if [[ " ${QEMU_VERSIONS:-10.2.2} " == *" 10.2.2 "* ]]; then
    DEMO_SKIP_BUILD=1 make --no-print-directory demo \
        ARGS="--binary build/qemu-10.2.2/patched/qemu-system-x86_64"
else
    warn "SKIPPED: the demo on 10.2.2 (QEMU_VERSIONS=$QEMU_VERSIONS lacks 10.2.2)"
fi

step "the demo under libvirt: make demo ARGS=--libvirt (defaults)"
make --no-print-directory demo ARGS=--libvirt

step "a migration chain of 4 hops, one cancelled and one cut: make demo ARGS=\"--chain-plan plain,plain,cancel,cut\""
# `make chain` runs 10 hops; these 4 take about a minute.  The cut hop is
# the demo's network cut (ARGS="--cut-after 64"): the same scenario
# (netcut.run), cut at the same point, so it does not run on its own too.
DEMO_SKIP_BUILD=1 with_vm_lock make --no-print-directory demo \
    ARGS="--chain-plan plain,plain,cancel,cut"

step "QEMU as an unprivileged user: make demo ARGS=--unprivileged"
DEMO_SKIP_BUILD=1 make --no-print-directory demo ARGS=--unprivileged

step "no access to /dev/userfaultfd: make demo ARGS=\"--unprivileged --deny-userfaultfd\""
DEMO_SKIP_BUILD=1 make --no-print-directory demo ARGS="--unprivileged --deny-userfaultfd"

step "libvirt running QEMU unprivileged: make demo ARGS=\"--libvirt --unprivileged\""
DEMO_SKIP_BUILD=1 make --no-print-directory demo ARGS="--libvirt --unprivileged"

step "end-to-end: hugepages, mismatched page sizes, a stray page, each stock fix's test, pre-paging with preempt"
python3 scripts/e2e.py test

step "the end-to-end benchmark, smoke test: make bench-e2e ARGS=--quick"
# On the QEMU 10.2.2 builds the QEMU stage made.
if [[ " ${QEMU_VERSIONS:-10.2.2} " == *" 10.2.2 "* ]]; then
    BENCH_SKIP_BUILD=1 make --no-print-directory bench-e2e ARGS=--quick
else
    warn "SKIPPED: make bench-e2e ARGS=--quick (QEMU_VERSIONS=$QEMU_VERSIONS lacks 10.2.2)"
fi
