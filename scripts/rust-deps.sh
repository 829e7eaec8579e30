#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Install what building and testing the Rust library needs on Debian:
# a C compiler (the C harness and the cc crate) and valgrind (memcheck run of
# the C harness), plus rustfmt/clippy for the toolchain.  Idempotent.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_PKGS=(build-essential pkg-config valgrind)

step "check Debian packages"
mapfile -t missing < <(apt_missing "${APT_PKGS[@]}")
if [ "${#missing[@]}" -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    as_root apt-get update -q || die "apt-get update failed"
    as_root apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        die "apt-get install failed for: ${missing[*]}"
fi

step "check the Rust toolchain"
command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (rustup) first"
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 || die "clippy/rustfmt missing and no rustup to add them"
    rustup component add clippy rustfmt || die "rustup component add clippy rustfmt failed"
fi

# The crate versions every build uses (Cargo.lock is not committed).
"$PCRS_ROOT/scripts/cargo-lock.sh"
