#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# The in-tree patch of the 10.2.2 series: the crate as rust/postcopy/ in
# QEMU's own Rust build (--enable-rust), generated from src/ and
# include/postcopy_rs.h so that the two can never drift.
#
# Usage:
#   scripts/qemu-intree.sh gen     write qemu-patches/v10.2.2/$PATCH
#   scripts/qemu-intree.sh check   fail if the committed patch differs from
#                                  what `gen` would write
#
# How: the upstream 10.2.2 tree (Debian's orig tarball, as
# scripts/qemu-series.sh uses) gets the series up to this patch with
# `git am`; then rust/postcopy/ is written from this repository (src/
# copied, Cargo.toml and meson.build written from Cargo.toml's metadata,
# the header copied beside them), rust/meson.build, rust/Cargo.toml and
# rust/Cargo.lock take the crate in, and the top-level meson.build takes
# postcopy_rs from it when Rust is enabled.  The commit, with a fixed
# author and date, is exported by `git format-patch`.
#
# The top-level hunk rewrites the statement of the build option's patch that
# finds the external library,
#   postcopy_rs = dependency('postcopy-rs', ..., required: get_option('postcopy_rs'))
# into a choice: the crate in rust/postcopy when Rust is enabled, that
# statement otherwise.  The ABI check after it applies to both.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PCRS_ROOT" || exit 1

VERSION=10.2.2
SERIES=$PCRS_ROOT/qemu-patches/v$VERSION
# The last patch of the series; its number follows the others' (counted
# without it, so that a series that does not list it yet numbers it right).
NAME=rust-postcopy-build-postcopy-rs-in-QEMU-s-Rust-build.patch
PATCH=$(printf '%04d' $(($(grep '^[0-9]\{4\}-' "$SERIES/series" | grep -vc -- "-$NAME\$") + 1)))-$NAME
ORIG=$PCRS_CACHE/qemu-src/qemu_$VERSION+ds.orig.tar.xz
GIT=(git -c user.name="postcopy-rs developers" -c user.email="dev@postcopy-rs.invalid" -c gc.auto=0
    -c commit.gpgsign=false -c core.autocrlf=false -c core.abbrev=12)
# A fixed date: the same inputs give the same patch, byte for byte.
export GIT_AUTHOR_DATE="2026-12-07T00:00:00+00:00" GIT_COMMITTER_DATE="2026-12-07T00:00:00+00:00"

usage() { echo "usage: $0 gen|check" >&2; exit 2; }
[ $# -eq 1 ] || usage

generate() {
    local out=$1 work
    work=$(mktemp -d "${TMPDIR:-/tmp}/pcrs-intree.XXXXXX")
    # shellcheck disable=SC2064  # expand now: $work is local
    trap "rm -rf '$work'" RETURN
    [ -f "$ORIG" ] || die "$ORIG not cached: run QEMU_VERSION=$VERSION scripts/qemu-fetch.sh first"
    local t=$work/qemu
    mkdir -p "$t"
    tar -xJf "$ORIG" -C "$t" --strip-components=1
    (cd "$t" && "${GIT[@]}" init -q && "${GIT[@]}" add -A >/dev/null &&
        "${GIT[@]}" commit -q -m "QEMU $VERSION (orig tarball)") || die "git init of $t failed"
    mapfile -t patches < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$SERIES/series" | grep -v '^$' |
        grep -vxF "$PATCH" | sed "s|^|$SERIES/|")
    (cd "$t" && "${GIT[@]}" am -q "${patches[@]}") || die "git am of $SERIES failed"

    grep -q "^  postcopy_rs = dependency('postcopy-rs'" "$t/meson.build" ||
        die "the series' meson.build does not find postcopy-rs as its build option's patch does"

    local d=$t/rust/postcopy
    mkdir -p "$d"
    cp -r src "$d/src"
    cp include/postcopy_rs.h "$d/postcopy_rs.h"
    python3 - "$t" Cargo.toml <<'PY' || die "could not write rust/postcopy"
import re, sys, tomllib
t, cargo = sys.argv[1], sys.argv[2]
pkg = tomllib.load(open(cargo, "rb"))["package"]
ver = pkg["version"]
major, minor, _ = ver.split(".")
d = f"{t}/rust/postcopy"
open(f"{d}/Cargo.toml", "w").write(f'''# SPDX-License-Identifier: GPL-2.0-or-later
[package]
name = "postcopy-rs"
version = "{ver}"
description = "{pkg['description']}"
resolver = "2"
publish = false

authors.workspace = true
edition.workspace = true
homepage.workspace = true
license.workspace = true
repository.workspace = true
rust-version.workspace = true

[lib]
name = "postcopy_rs"
path = "src/lib.rs"

[dependencies]
libc.workspace = true

[lints]
workspace = true
''')
open(f"{d}/meson.build", "w").write('''# SPDX-License-Identifier: GPL-2.0-or-later
#
# The postcopy-rs crate, generated from the postcopy-rs repository's src/
# (scripts/qemu-intree.sh there): change it there, not here.  It goes into
# each system target's one Rust static library, like the Rust devices,
# so that the binary has one Rust standard library.
_postcopy_rs = static_library(
  'postcopy_rs',
  files('src/lib.rs'),
  override_options: ['rust_std=2021', 'build.rust_std=2021'],
  rust_abi: 'rust',
  dependencies: [libc_rs],
)

rust_devices_ss.add(declare_dependency(
  link_whole: [_postcopy_rs],
  variables: {'crate': 'postcopy_rs'},
))

rust.test('rust-postcopy-rs-tests', _postcopy_rs,
          suite: ['unit', 'rust'])
''')

def insert_after(path, anchor, text, before=False):
    """Put text after (or before) the one place anchor is in path."""
    body = open(path).read()
    assert anchor in body, f"{path}: no {anchor!r}"
    body = body.replace(anchor, text + anchor if before else anchor + text, 1)
    open(path, "w").write(body)


insert_after(f"{t}/rust/meson.build", "subdir('hw')\n",
             "if postcopy_rs.found()\n  subdir('postcopy')\nendif\n")
insert_after(f"{t}/MAINTAINERS", "\nDetached LUKS header\n",
             "\nPostcopy RAM in Rust (postcopy-rs)\n"
             "M: postcopy-rs developers <dev@postcopy-rs.invalid>\n"
             "S: Maintained\n"
             "F: rust/postcopy/\n", before=True)
insert_after(f"{t}/rust/Cargo.toml", '    "hw/timer/hpet",\n', '    "postcopy",\n')

top = open(f"{t}/meson.build").read()
m = re.search(r"^  postcopy_rs = dependency\('postcopy-rs'.*?\)\n", top, re.M | re.S)
assert m, "no postcopy_rs = dependency('postcopy-rs', ...) in meson.build"
ext = "  " + m.group(0).rstrip("\n").replace("\n", "\n  ") + "\n"
top = top.replace(m.group(0),
    "  # Where postcopy-rs comes from: with Rust enabled, the crate in\n"
    "  # rust/postcopy, built into each target's one Rust static library (a\n"
    "  # second Rust static library would bring a second Rust standard\n"
    "  # library); without Rust, the external library found by pkg-config.\n"
    "  # -Dpostcopy_rs=disabled keeps QEMU's own C either way.\n"
    "  if have_rust and get_option('postcopy_rs').allowed()\n"
    "    postcopy_rs = declare_dependency(\n"
    "      include_directories: include_directories('rust/postcopy'),\n"
    f"      version: '{ver}')\n"
    "  else\n" + ext + "  endif\n", 1)
open(f"{t}/meson.build", "w").write(top)
PY
    # The lock file takes the new workspace member, in cargo's order; its
    # one dependency (libc) is locked already.  Written here rather than
    # by `cargo update`, which would also rewrite the file in its own
    # lock format version; scripts/qemu-rust-deps.sh's `cargo fetch
    # --locked` fails if cargo disagrees.
    python3 - "$t/rust/Cargo.lock" Cargo.toml <<'PY' || die "could not add postcopy-rs to rust/Cargo.lock"
import re, sys, tomllib
lock, cargo = sys.argv[1], sys.argv[2]
ver = tomllib.load(open(cargo, "rb"))["package"]["version"]
text = open(lock).read()
head, *pkgs = text.split("\n[[package]]\n")
entry = f'name = "postcopy-rs"\nversion = "{ver}"\ndependencies = [\n "libc",\n]\n'
names = [re.match(r'name = "([^"]+)"', p).group(1) for p in pkgs]
assert "postcopy-rs" not in names
i = next((k for k, n in enumerate(names) if n > "postcopy-rs"), len(pkgs))
if i == len(pkgs):
    pkgs[-1] = pkgs[-1].rstrip("\n") + "\n"
    entry = entry.rstrip("\n") + "\n"
pkgs.insert(i, entry)
open(lock, "w").write("\n[[package]]\n".join([head] + pkgs))
PY
    (cd "$t" && "${GIT[@]}" add -A && "${GIT[@]}" commit -q -F - <<'MSG') || die "git commit failed"
rust/postcopy: build postcopy-rs in QEMU's Rust build

With --enable-rust, QEMU links one Rust static library per target
(rust_<target>, whole-archive).  postcopy-rs as a second, external
Rust static library would bring a second copy of the Rust standard
library into the binary (std, compiler builtins, allocator shims:
rust_eh_personality, __rdl_alloc and others), which Rust does not
support and the linker may only resolve by accident of order.

So when Rust is enabled, take the crate from rust/postcopy instead:
it is built by meson like the Rust devices and goes into the same
static library; the C code keeps including "postcopy_rs.h", now from
rust/postcopy.  Without Rust, the external library found by
pkg-config is used as before; -Dpostcopy_rs=disabled keeps QEMU's C.

rust/postcopy/ is generated from the postcopy-rs repository
(scripts/qemu-intree.sh): src/ is the crate's own, postcopy_rs.h its
cbindgen header.  The crate depends on libc only, and builds with
QEMU's minimum Rust (1.83) and the rustc lints of rust/Cargo.toml.

Signed-off-by: postcopy-rs developers <dev@postcopy-rs.invalid>
MSG
    # Numbered as the last of the series, as format-patch numbers the rest.
    local n=$((${#patches[@]} + 1))
    (cd "$t" && "${GIT[@]}" format-patch -q --no-signature --stdout -1 HEAD) |
        sed -e '1s/^From [0-9a-f]\{40\} /From 0000000000000000000000000000000000000000 /' \
            -e "s/^Subject: \[PATCH\] /Subject: [PATCH $n\/$n] /" >"$out"
}

case $1 in
    gen)
        step "generate $PATCH"
        generate "$SERIES/$PATCH"
        grep -qxF "$PATCH" "$SERIES/series" || printf '%s\n' "$PATCH" >>"$SERIES/series"
        echo "wrote $SERIES/$PATCH ($(grep -c '^diff --git' "$SERIES/$PATCH") files)"
        ;;
    check)
        step "check $PATCH against src/ and include/"
        tmp=$(mktemp "${TMPDIR:-/tmp}/pcrs-intree-check.XXXXXX")
        generate "$tmp"
        if cmp -s "$tmp" "$SERIES/$PATCH" && grep -qxF "$PATCH" "$SERIES/series"; then
            rm -f "$tmp"
            echo "PASS  $VERSION: $PATCH is what src/ and include/postcopy_rs.h generate"
        else
            diff -u "$SERIES/$PATCH" "$tmp" | head -40 || true
            rm -f "$tmp"
            echo "FAIL  $VERSION: $PATCH differs from what src/ generates, or series lacks it: run $0 gen"
            exit 1
        fi
        ;;
    *) usage ;;
esac
