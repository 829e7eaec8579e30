#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The test command (`make test`; .ci/run calls it).  From a fresh clone on
# a fresh Debian machine, as root, it installs what it needs and runs:
#   1. rustfmt and clippy (-D warnings);
#   2. cargo test: unit and property tests, the header drift check, the C
#      harness (plain, valgrind memcheck, AddressSanitizer), and the tests
#      on real userfaultfd (4 KiB and 2 MiB hugetlbfs pages);
#   3. the QEMU stage (scripts/qemu-test.sh): Debian's QEMU 10.0.13 and
#      10.2.2, each with its patch series and the one library, every
#      postcopy qtest (TLS included), interoperability both ways and
#      across the two versions, the page-size report, 10.2's blocktime;
#   4. the main command, `make demo`, at default settings: a real Linux
#      guest live-migrated with postcopy between two patched QEMUs; it
#      fails unless the guest verifies every page of its memory;
#   5. end-to-end scenarios QEMU lacks (scripts/e2e.py): hugepage-backed
#      RAM (2 MiB, 1 GiB where granted), two blocks of different page
#      sizes, mismatched page sizes both ways with a retry.
#      POSTCOPY_RS_SKIP_QEMU=1 skips 3 to 5: the Rust tests stand alone.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PCRS_ROOT" || exit 1

skipped=target/tmp/skipped-tests.txt

step "install dependencies"
scripts/rust-deps.sh

step "rustfmt"
cargo fmt --all -- --check || die "code is not rustfmt-clean: run cargo fmt"

step "clippy"
cargo clippy --all-targets -- -D warnings

step "cargo test"
rm -f "$skipped"
cargo test
# cargo hides the output of passing tests: say here what was skipped.
if [ -s "$skipped" ]; then
    echo "==================== SKIPPED TESTS ===================="
    cat "$skipped"
    echo "======================================================="
fi

if [ "${POSTCOPY_RS_SKIP_QEMU:-0}" = 1 ]; then
    warn "POSTCOPY_RS_SKIP_QEMU=1: the QEMU stage is skipped"
    exit 0
fi

step "QEMU stage"
scripts/qemu-test.sh

step "the main command: make demo (defaults)"
make --no-print-directory demo

step "end-to-end: hugepages and mismatched page sizes"
python3 scripts/e2e.py test
