#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# What QEMU 10.2's --enable-rust build needs here, on top of
# scripts/qemu-deps.sh.
#
# Usage:
#   scripts/qemu-rust-deps.sh
#       install the tools: libclang (Debian's libclang-dev, for bindgen),
#       bindgen-cli $BINDGEN_VERSION (cargo install, into cargo's bin
#       directory), and a second Python venv at $PCRS_RUST_VENV with
#       meson==$MESON_VERSION and pycotap: QEMU 10.2 wants meson >= 1.9
#       for Rust (pythondeps.toml, group meson-rust), while every other
#       build here keeps the venv of scripts/qemu-deps.sh (meson 1.5.0).
#   scripts/qemu-rust-deps.sh prepare SRC
#       make the QEMU source tree SRC buildable with --enable-rust
#       offline (configure --disable-download):
#         - subprojects/packagecache/: every crate a subprojects/*-rs.wrap
#           names, at the version rust/Cargo.lock pins (the same ones), as
#           `cargo fetch --locked` brings them through cargo's own
#           registry configuration; each checked against the wrap's
#           source_hash;
#         - subprojects/packagefiles/<crate>/meson.build: the meson build
#           of each crate, which a wrap's patch_directory overlays on the
#           unpacked crate.  Debian's +ds tarball drops the upstream ones
#           (debian/copyright, Files-Excluded), so this script writes its
#           own from the table below; a tree that still has them (an
#           upstream tarball or git tree) is left alone.
#       Idempotent.
#
# Why not meson's `method = cargo` for the wraps: QEMU 10.2 keeps it
# commented out in its wraps, and meson would not run the crates' build.rs
# scripts, whose cfgs (proc-macro2's wrap_proc_macro, libc's, anyhow's)
# the table gives explicitly, as QEMU's own packagefiles do.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MESON_VERSION=1.9.0
BINDGEN_VERSION=0.73.2
PCRS_RUST_VENV=${PCRS_RUST_VENV:-$PCRS_CACHE/meson-rust-venv}

install_tools() {
    step "check Debian packages"
    mapfile -t missing < <(apt_missing libclang-dev)
    if [ "${#missing[@]}" -gt 0 ]; then
        as_root apt-get -o DPkg::Lock::Timeout=600 update -q || die "apt-get update failed"
        as_root apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" ||
            die "apt-get install failed for: ${missing[*]}"
    else
        echo "libclang-dev already installed"
    fi

    step "bindgen-cli $BINDGEN_VERSION"
    command -v cargo >/dev/null 2>&1 || die "cargo not found: run scripts/rust-deps.sh"
    if [ "$(bindgen --version 2>/dev/null)" = "bindgen $BINDGEN_VERSION" ]; then
        echo "bindgen $BINDGEN_VERSION already installed: $(command -v bindgen)"
    else
        nice -n 10 cargo install -q --locked "bindgen-cli@$BINDGEN_VERSION" ||
            die "cargo install bindgen-cli@$BINDGEN_VERSION failed"
        [ "$(bindgen --version 2>/dev/null)" = "bindgen $BINDGEN_VERSION" ] ||
            die "bindgen $BINDGEN_VERSION is not the first bindgen in PATH after cargo install"
    fi

    step "Python venv with meson==$MESON_VERSION and pycotap at $PCRS_RUST_VENV"
    PY=/usr/bin/python3
    [ -x "$PY" ] || PY=$(command -v python3) || die "python3 not found"
    if [ "$("$PCRS_RUST_VENV/bin/meson" --version 2>/dev/null)" = "$MESON_VERSION" ] &&
        "$PCRS_RUST_VENV/bin/python3" -c 'import pycotap' 2>/dev/null; then
        echo "venv already has meson $MESON_VERSION and pycotap"
    else
        [ -x "$PCRS_RUST_VENV/bin/python3" ] || "$PY" -m venv "$PCRS_RUST_VENV" ||
            die "could not create venv at $PCRS_RUST_VENV"
        "$PCRS_RUST_VENV/bin/python3" -m pip install -q "meson==$MESON_VERSION" pycotap ||
            die "pip install meson==$MESON_VERSION pycotap failed"
    fi
    echo "meson: $PCRS_RUST_VENV/bin/meson ($("$PCRS_RUST_VENV/bin/meson" --version))"
}

prepare() {
    local src=$1
    if [ ! -f "$src/rust/Cargo.lock" ] || [ ! -d "$src/subprojects" ]; then
        die "$src is not a QEMU source tree with rust/ (10.x)"
    fi
    src=$(cd "$src" && pwd -P)

    step "crates into $src/subprojects/packagecache"
    # rust/Cargo.lock pins the crates the wraps name; cargo fetches them
    # into its own cache, from which they are copied under the wraps'
    # file names.
    (cd "$src/rust" && cargo fetch -q --locked) || die "cargo fetch --locked in $src/rust failed"
    local home=${CARGO_HOME:-$HOME/.cargo}
    mkdir -p "$src/subprojects/packagecache"
    local wrap dir file hash crate n=0
    for wrap in "$src"/subprojects/*-rs.wrap; do
        dir=$(sed -n 's/^directory = //p' "$wrap")
        file=$(sed -n 's/^source_filename = //p' "$wrap")
        hash=$(sed -n 's/^source_hash = //p' "$wrap")
        if [ -z "$dir" ] || [ -z "$file" ] || [ -z "$hash" ]; then
            die "$wrap: no directory/source_filename/source_hash"
        fi
        if [ -f "$src/subprojects/packagecache/$file" ] &&
            [ "$(sha256sum <"$src/subprojects/packagecache/$file" | cut -d' ' -f1)" = "$hash" ]; then
            n=$((n + 1))
            continue
        fi
        crate=$(find "$home"/registry/cache -name "$dir.crate" -print -quit 2>/dev/null)
        [ -n "$crate" ] || die "$dir.crate not in cargo's cache after cargo fetch ($(basename "$wrap") asks for it)"
        [ "$(sha256sum <"$crate" | cut -d' ' -f1)" = "$hash" ] ||
            die "$crate does not have the sha256 $(basename "$wrap") names"
        cp "$crate" "$src/subprojects/packagecache/$file"
        n=$((n + 1))
    done
    echo "$n crates in packagecache"

    step "meson builds of the crates in $src/subprojects/packagefiles"
    python3 - "$src/subprojects" <<'PY'
import os
import re
import shutil
import sys

sub = sys.argv[1]

# wrap name: (library name, edition, kind, native, cfgs, dependencies)
# kind "lib" is an rlib, "proc" a proc-macro crate.  cfgs stand for what
# the crate's features and its build.rs give under cargo with a current
# rustc (QEMU's minimum is 1.83).  native: used by proc-macro crates,
# so built for the build machine.
CRATES = {
    "unicode-ident-1-rs": ("unicode_ident", "2018", "lib", True, [], []),
    "proc-macro2-1-rs": ("proc_macro2", "2021", "lib", True,
                         ['feature="proc-macro"', "wrap_proc_macro"],
                         ["unicode-ident-1-rs"]),
    "quote-1-rs": ("quote", "2018", "lib", True, ['feature="proc-macro"'],
                   ["proc-macro2-1-rs"]),
    "syn-2-rs": ("syn", "2021", "lib", True,
                 ['feature="%s"' % f for f in ("full", "derive", "parsing", "printing",
                                              "clone-impls", "proc-macro", "extra-traits")],
                 ["proc-macro2-1-rs", "quote-1-rs", "unicode-ident-1-rs"]),
    "either-1-rs": ("either", "2018", "lib", True, ['feature="use_std"'], []),
    "itertools-0.11-rs": ("itertools", "2018", "lib", True,
                          ['feature="use_std"', 'feature="use_alloc"'], ["either-1-rs"]),
    "proc-macro-error-attr-1-rs": ("proc_macro_error_attr", "2018", "proc", True, [],
                                   ["proc-macro2-1-rs", "quote-1-rs"]),
    # use_fallback: its build.rs on a stable rustc.  syn 2, not the syn 1
    # it names: it only converts syn::Error, which is the same in both.
    "proc-macro-error-1-rs": ("proc_macro_error", "2018", "lib", True,
                              ["use_fallback", 'feature="syn-error"'],
                              ["proc-macro-error-attr-1-rs", "proc-macro2-1-rs",
                               "quote-1-rs", "syn-2-rs"]),
    "bilge-impl-0.2-rs": ("bilge_impl", "2021", "proc", True, [],
                          ["itertools-0.11-rs", "proc-macro-error-attr-1-rs",
                           "proc-macro-error-1-rs", "quote-1-rs", "syn-2-rs",
                           "proc-macro2-1-rs"]),
    "attrs-0.2-rs": ("attrs", "2021", "lib", True, [], ["proc-macro2-1-rs", "syn-2-rs"]),
    "arbitrary-int-1-rs": ("arbitrary_int", "2021", "lib", False, [], []),
    "bilge-0.2-rs": ("bilge", "2021", "lib", False, [],
                     ["arbitrary-int-1-rs", "bilge-impl-0.2-rs"]),
    # libc's build.rs, for rustc >= 1.83 outside the standard library.
    "libc-0.2-rs": ("libc", "2015", "lib", False,
                    ['feature="std"', "freebsd11", "libc_priv_mod_use", "libc_union",
                     "libc_const_size_of", "libc_align", "libc_int128", "libc_core_cvoid",
                     "libc_packedN", "libc_cfg_target_vendor", "libc_non_exhaustive",
                     "libc_long_array", "libc_ptr_addr_of", "libc_underscore_const_names",
                     "libc_const_extern_fn"], []),
    # glib itself is linked by QEMU's C side.
    "glib-sys-0.21-rs": ("glib_sys", "2021", "lib", False,
                         ['feature="v2_%d"' % v for v in range(58, 68, 2)], ["libc-0.2-rs"]),
    "foreign-0.3-rs": ("foreign", "2021", "lib", False, [], ["libc-0.2-rs"]),
    "anyhow-1-rs": ("anyhow", "2018", "lib", False, ['feature="std"', "std_backtrace"], []),
}


def wrap_field(path, key):
    m = re.search(r"^%s = (.*)$" % key, open(path).read(), re.M)
    return m.group(1).strip() if m else None


def q(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


wrote = kept = 0
for w in sorted(os.listdir(sub)):
    if not w.endswith("-rs.wrap"):
        continue
    name = w[:-5]
    patchdir = wrap_field(os.path.join(sub, w), "patch_directory")
    if patchdir is None:
        continue
    out = os.path.join(sub, "packagefiles", patchdir, "meson.build")
    if os.path.exists(out) and "postcopy-rs" not in open(out).read():
        kept += 1
        continue
    if name not in CRATES:
        sys.exit(f"ERROR: {w}: no entry for {name} in scripts/qemu-rust-deps.sh")
    lib, edition, kind, native, cfgs, deps = CRATES[name]
    version = wrap_field(os.path.join(sub, w), "directory").rsplit("-", 1)[1]
    nat = ", native: true" if native else ""
    lines = [
        "# Written by postcopy-rs's scripts/qemu-rust-deps.sh: the +ds tarball",
        "# carries no subprojects/packagefiles.",
        f"project({q(name)}, 'rust', meson_version: '>=1.5.0', version: {q(version)})",
        "",
    ]
    for d in deps:
        lines.append(f"subproject({q(d)}, required: true)")
    deps_v = [f"dependency({q(d)}, native: {'true' if d in CRATES and CRATES[d][3] else 'false'})"
              for d in deps]
    args = ["'--cap-lints', 'allow'"] + [f"'--cfg', {q(c)}" for c in cfgs]
    common = [
        f"  files('src/lib.rs'),",
        f"  override_options: ['rust_std={edition}', 'build.rust_std={edition}'],",
        f"  rust_args: [{', '.join(args)}],",
        f"  dependencies: [{', '.join(deps_v)}],",
    ]
    if kind == "proc":
        lines += ["_lib = import('rust').proc_macro(", f"  {q(lib)},"] + common + [")"]
        # Asked for both with native: true (by proc-macro crates) and
        # without (by bilge); one override serves both in a native build,
        # where meson counts them as one machine and refuses a second.
        override = f"meson.override_dependency({q(name)}, declare_dependency(link_with: _lib))"
    else:
        lines += ["_lib = static_library(", f"  {q(lib)},"] + common + [
            "  rust_abi: 'rust',",
            "  gnu_symbol_visibility: 'hidden',",
            f"  native: {'true' if native else 'false'},",
            ")",
        ]
        override = f"meson.override_dependency({q(name)}, declare_dependency(link_with: _lib){nat})"
    lines.append(override)
    text = "\n".join(lines) + "\n"
    if os.path.exists(out) and open(out).read() == text:
        kept += 1
        continue
    # meson overlays the patch directory only when it unpacks the crate:
    # a crate unpacked with an older meson.build would keep it.
    unpacked = os.path.join(sub, wrap_field(os.path.join(sub, w), "directory"))
    if os.path.isdir(unpacked):
        shutil.rmtree(unpacked)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    open(out, "w").write(text)
    wrote += 1
print(f"{wrote} meson.build written, {kept} up to date or from the source tree")
PY
}

case ${1:-} in
    "") install_tools ;;
    prepare)
        [ $# -eq 2 ] || { echo "usage: $0 [prepare SRC]" >&2; exit 2; }
        prepare "$2"
        ;;
    *) echo "usage: $0 [prepare SRC]" >&2; exit 2 ;;
esac
