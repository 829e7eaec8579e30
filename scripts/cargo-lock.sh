#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Write Cargo.lock from scripts/Cargo.lock.pinned: the exact crate versions
# every build and test uses, so that a new crate release cannot break a
# fresh clone (clippy runs with -D warnings and multiple_crate_versions
# denied).
#
# Why a template, not a committed Cargo.lock: cargo writes the registry's
# address into every package's `source` line, and this project names no
# registry host in what it commits.  The template has a placeholder there;
# this script asks cargo for the address of its default registry (the
# source line of a scratch crate's lockfile) and puts it in.
#
# Usage: scripts/cargo-lock.sh          write Cargo.lock unless it matches
#        scripts/cargo-lock.sh update   after a dependency change: run
#                                       `cargo update` first, then this, to
#                                       refresh the template

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PCRS_ROOT" || exit 1

TEMPLATE=scripts/Cargo.lock.pinned
PLACEHOLDER=@REGISTRY_SOURCE@

registry_source() {
    local scratch
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/pcrs-lock.XXXXXX")
    mkdir -p "$scratch/src"
    printf '[package]\nname = "scratch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nlibc = "0.2"\n' \
        >"$scratch/Cargo.toml"
    : >"$scratch/src/lib.rs"
    (cd "$scratch" && cargo generate-lockfile -q) || { rm -rf "$scratch"; return 1; }
    sed -n 's/^source = "\(registry+[^"]*\)"$/\1/p' "$scratch/Cargo.lock" | head -n1
    rm -rf "$scratch"
}

case ${1:-} in
    "")
        step "Cargo.lock from $TEMPLATE"
        src=$(registry_source)
        [ -n "$src" ] || die "cargo could not resolve a crate from its default registry"
        want=$(sed "s|$PLACEHOLDER|$src|" "$TEMPLATE")
        if [ "$(cat Cargo.lock 2>/dev/null)" = "$want" ]; then
            echo "Cargo.lock already pinned"
        else
            printf '%s\n' "$want" >Cargo.lock
            echo "Cargo.lock written: $(grep -c '^name = ' Cargo.lock) packages pinned"
        fi
        ;;
    update)
        step "refresh $TEMPLATE from Cargo.lock"
        src=$(registry_source)
        [ -n "$src" ] || die "cargo could not resolve a crate from its default registry"
        sed "s|^source = \"$src\"\$|source = \"$PLACEHOLDER\"|" Cargo.lock >"$TEMPLATE"
        ! grep -q '^source = "registry+' "$TEMPLATE" || die "a package comes from another registry"
        echo "$TEMPLATE refreshed"
        ;;
    *) echo "usage: $0 [update]" >&2; exit 2 ;;
esac
