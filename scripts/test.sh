#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The test command (`make test`; .ci/run calls it).  From a fresh clone on
# a fresh Debian machine, as root, it installs what it needs and runs:
#   1. rustfmt and clippy (-D warnings);
#   2. cargo test: unit and property tests, the header drift check, and the
#      C harness (plain, valgrind memcheck, AddressSanitizer).

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PCRS_ROOT"

step "install dependencies"
scripts/rust-deps.sh

step "rustfmt"
cargo fmt --all -- --check || die "code is not rustfmt-clean: run cargo fmt"

step "clippy"
cargo clippy --locked --all-targets -- -D warnings

step "cargo test"
cargo test --locked
