#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Configure and build QEMU's qemu-system-x86_64 and tests/qtest/migration-test
# (and nothing else) from an unpacked source tree.
#
# Usage: scripts/qemu-build.sh SRC BUILDDIR [--patches DIR [--fixes-only | --postcopy-rs MODE]]
#                              [--apply-only] [--rust]
#
#   SRC       QEMU source tree, e.g. build/qemu-src from scripts/qemu-fetch.sh
#   BUILDDIR  build directory (created; out-of-tree)
#   --patches DIR
#             apply the patch series DIR/series to SRC first: one patch file
#             name per line, in order; blank lines and '#' comments are
#             ignored.  Patches are applied with `patch -p1 --fuzz=0` (git
#             format-patch / git am style patches are fine).  The patches
#             applied are recorded in SRC/.postcopy-rs-patches, so running
#             again with the same series skips them; a tree carrying a
#             different series is refused: re-run scripts/qemu-fetch.sh.
#   --apply-only
#             apply the series and stop (BUILDDIR is not touched).
#   --fixes-only
#             apply only the series' first part, the fixes to stock QEMU:
#             the patches listed before the line "#:end-of-stock-fixes".
#   --postcopy-rs MODE
#             the series' meson option, -Dpostcopy_rs=MODE: enabled (the
#             default with a whole series: configure fails unless it finds
#             the library, through PKG_CONFIG_PATH, with the ABI the series
#             was written against), disabled (QEMU's own C, the library
#             not even looked for) or auto.
#   --rust    configure --enable-rust instead of --disable-rust (10.2.x):
#             needs scripts/qemu-rust-deps.sh (bindgen, libclang, a venv
#             with meson >= 1.9, used instead of $PCRS_VENV), whose
#             `prepare` step is run on SRC first (the crates and their
#             meson builds, which the +ds tarball lacks).
#
# Environment:
#   QEMU_EXTRA_CONFIGURE  extra arguments for configure, split on white
#                         space, e.g. QEMU_EXTRA_CONFIGURE="-Dfoo=/path"
#                         (configure passes -Dopt=value through to meson);
#                         the build has no debug information unless it
#                         holds --enable-debug-info
#   NINJA_JOBS            ninja -j value (default: ninja's own)
#
# Firmware: the Debian +ds source carries none.  After building, every
# *.bin/*.rom of Debian's seabios, qemu-system-data and ipxe-qemu packages
# (installed by scripts/qemu-deps.sh) is copied into
# BUILDDIR/qemu-bundle/usr/local/share/qemu/, where a binary run from
# BUILDDIR looks first.  (--firmwarepath=/usr/share/seabios:... does NOT
# work for a binary run from the build tree: QEMU 10.0's
# get_relocated_path() rewrites every configured firmware dir to
# BUILDDIR/qemu-bundle/<dir> whenever BUILDDIR/qemu-bundle exists, so
# `qemu-system-x86_64 -L help` lists only qemu-bundle paths and SeaBIOS
# is not found.)
#
# Configure is re-run (in a wiped BUILDDIR) only when SRC or the configure
# arguments change; otherwise only ninja runs.
#
# The compiler runs under ccache (cache: ~/.cache/postcopy-rs/ccache, the
# build directory left out of its hash, paths under SRC's parent made
# relative), so that two builds of one source tree, e.g.
# -Dpostcopy_rs=enabled and disabled, compile only the files the option
# changes; and so do two builds of two trees of one version laid out
# alike (SRC's parent holding SRC and BUILDDIR, as scripts/qemu-test.sh
# lays them out), which then differ in the files the patches touch and,
# for a build with the library, the files its include path reaches
# (about half: the dependency is on the target's files).  Objects from a
# cache hit keep the first build's directory in their debug information.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    echo "usage: $0 SRC BUILDDIR [--patches DIR [--fixes-only | --postcopy-rs MODE]]" \
        "[--apply-only] [--rust]" >&2
    exit 2
}

[ $# -ge 2 ] || usage
SRC=$1
BUILDDIR=$2
shift 2
PATCHES=""
APPLY_ONLY=0
FIXES_ONLY=0
PCRS_MODE=""
RUST=0
while [ $# -gt 0 ]; do
    case $1 in
        --apply-only) APPLY_ONLY=1; shift ;;
        --fixes-only) FIXES_ONLY=1; shift ;;
        --postcopy-rs) [ $# -ge 2 ] || usage; PCRS_MODE=$2; shift 2 ;;
        --rust) RUST=1; shift ;;
        --patches) [ $# -ge 2 ] || usage; PATCHES=$2; shift 2 ;;
        --patches=*) PATCHES=${1#--patches=}; shift ;;
        *) usage ;;
    esac
done

FIRMWARE_PKGS=(seabios qemu-system-data ipxe-qemu)  # later ones win on clashes
TARGETS=(qemu-system-x86_64 tests/qtest/migration-test)

step "check inputs"
[ -x "$SRC/configure" ] || die "$SRC is not a QEMU source tree (no configure); run scripts/qemu-fetch.sh"
SRC=$(cd "$SRC" && pwd -P)
[ "$APPLY_ONLY" -eq 0 ] || [ -n "$PATCHES" ] || die "--apply-only needs --patches"
[ "$FIXES_ONLY" -eq 0 ] || [ -n "$PATCHES" ] || die "--fixes-only needs --patches"
if [ -n "$PCRS_MODE" ]; then
    if [ -z "$PATCHES" ] || [ "$FIXES_ONLY" -eq 1 ]; then
        die "--postcopy-rs needs a whole series (--patches without --fixes-only)"
    fi
    case $PCRS_MODE in
        enabled | disabled | auto) ;;
        *) die "--postcopy-rs: enabled, disabled or auto, not '$PCRS_MODE'" ;;
    esac
elif [ -n "$PATCHES" ] && [ "$FIXES_ONLY" -eq 0 ]; then
    PCRS_MODE=enabled
fi
mkdir -p "$BUILDDIR"
BUILDDIR=$(cd "$BUILDDIR" && pwd -P)
[ "$BUILDDIR" != "$SRC" ] || die "BUILDDIR must differ from SRC"
if [ "$RUST" -eq 1 ]; then
    PCRS_VENV=${PCRS_RUST_VENV:-$PCRS_CACHE/meson-rust-venv}
    command -v bindgen >/dev/null 2>&1 || die "bindgen not found: run scripts/qemu-rust-deps.sh"
    [ -x "$PCRS_VENV/bin/meson" ] || die "no meson in $PCRS_VENV: run scripts/qemu-rust-deps.sh"
fi
[ -x "$PCRS_VENV/bin/meson" ] || die "no meson in $PCRS_VENV: run scripts/qemu-deps.sh"
for tool in ninja cc pkg-config patch; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run scripts/qemu-deps.sh"
done
for f in /usr/share/seabios/bios-256k.bin /usr/share/qemu/kvmvapic.bin /usr/lib/ipxe/qemu/efi-e1000e.rom; do
    [ -e "$f" ] || die "firmware $f is missing: run scripts/qemu-deps.sh"
done

if [ -n "$PATCHES" ]; then
    step "apply patches from $PATCHES"
    [ -f "$PATCHES/series" ] || die "$PATCHES/series not found"
    PATCHES=$(cd "$PATCHES" && pwd)
    stamp=$SRC/.postcopy-rs-patches
    touch "$stamp"
    mapfile -t applied <"$stamp"
    n=0
    [ "$FIXES_ONLY" -eq 0 ] || grep -q '^#:end-of-stock-fixes' "$PATCHES/series" ||
        die "--fixes-only: $PATCHES/series has no #:end-of-stock-fixes line"
    while IFS= read -r line || [ -n "$line" ]; do
        if [ "$FIXES_ONLY" -eq 1 ] && [[ $line == "#:end-of-stock-fixes"* ]]; then
            break
        fi
        line=${line%%#*}
        line=$(printf '%s' "$line" | tr -d '[:space:]')
        [ -n "$line" ] || continue
        p=$PATCHES/$line
        [ -f "$p" ] || die "patch $line listed in $PATCHES/series does not exist"
        entry="$line $(sha256sum "$p" | cut -d' ' -f1)"
        if [ "$n" -lt "${#applied[@]}" ]; then
            [ "${applied[$n]}" = "$entry" ] ||
                die "SRC already carries a different patch series (at $line; see $stamp): re-run scripts/qemu-fetch.sh for a fresh tree"
            echo "already applied: $line"
        else
            popts=(-p1 --batch --forward --fuzz=0 --no-backup-if-mismatch --reject-file=-)
            # Dry run first, so a failing patch leaves the tree untouched.
            if ! out=$(cd "$SRC" && patch --dry-run "${popts[@]}" <"$p" 2>&1); then
                printf '%s\n' "$out" >&2
                die "patch $line does not apply to $SRC (patches before it in the series are applied and recorded in $stamp)"
            fi
            (cd "$SRC" && patch -s "${popts[@]}" <"$p") || die "patch $line failed to apply to $SRC after a good dry run"
            printf '%s\n' "$entry" >>"$stamp"
            echo "applied: $line"
        fi
        n=$((n + 1))
    done <"$PATCHES/series"
    [ "$n" -ge "${#applied[@]}" ] ||
        die "SRC carries ${#applied[@]} patches but $PATCHES/series lists $n: re-run scripts/qemu-fetch.sh"
    if [ "$APPLY_ONLY" -eq 1 ]; then
        exit 0
    fi
fi

if [ "$RUST" -eq 1 ]; then
    "$PCRS_ROOT/scripts/qemu-rust-deps.sh" prepare "$SRC" || die "qemu-rust-deps.sh prepare $SRC failed"
    step "configure arguments"
    rust_arg=--enable-rust
else
    rust_arg=--disable-rust
fi
# No debug information unless QEMU_EXTRA_CONFIGURE asks for it (the
# sanitizer build does, for reports with line numbers): it costs a fifth
# of each compile (savevm.c: 3.1 s with -g, 2.4 s without) and no test
# reads it; perf still finds the symbols.
debug_info=--disable-debug-info
[[ " ${QEMU_EXTRA_CONFIGURE:-} " != *" --enable-debug-info "* ]] || debug_info=--enable-debug-info
CONFIGURE_ARGS=(
    --target-list=x86_64-softmmu
    --disable-docs --disable-werror "$debug_info" "$rust_arg"
    --without-default-features
    --enable-slirp --enable-tcg --enable-kvm --enable-gnutls
    --disable-download --disable-install-blobs
    --python="$PCRS_VENV/bin/python3"
)
[ -z "$PCRS_MODE" ] || CONFIGURE_ARGS+=("-Dpostcopy_rs=$PCRS_MODE")
if command -v ccache >/dev/null 2>&1; then
    # configure writes --cc's words into meson's machine file, where a
    # leading ccache is what meson looks for.
    CONFIGURE_ARGS+=(--cc="ccache ${CC:-cc}")
    export CCACHE_DIR=${CCACHE_DIR:-$PCRS_CACHE/ccache} CCACHE_NOHASHDIR=1
    export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$(dirname "$SRC")}
    export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-4G}
    # The library's include directory reaches every file of the libraries
    # the migration code is in (a dependency of a source set is one of
    # the whole library), about half of the build, and it lies outside
    # base_dir: in the hash, it would make each of those files a miss
    # against the build without the library.  Left out, a file that does
    # include postcopy_rs.h is still told apart by its include list
    # (direct mode) or its preprocessed text.
    # (Not findable is no error: the unpatched build has no library.)
    lib_inc=
    [ "$PCRS_MODE" = disabled ] ||
        lib_inc=$(pkg-config --cflags-only-I postcopy-rs 2>/dev/null || true)
    [ -z "$lib_inc" ] ||
        export CCACHE_IGNOREOPTIONS="${CCACHE_IGNOREOPTIONS:+$CCACHE_IGNOREOPTIONS }$lib_inc"
fi
if [ -n "${QEMU_EXTRA_CONFIGURE:-}" ]; then
    read -r -a extra <<<"$QEMU_EXTRA_CONFIGURE"
    CONFIGURE_ARGS+=("${extra[@]}")
fi

cfg_stamp=$BUILDDIR/.postcopy-rs-configure
want_cfg=$(printf '%s\n' "$SRC" "${CONFIGURE_ARGS[@]}")
if [ -f "$BUILDDIR/build.ninja" ] && [ "$(cat "$cfg_stamp" 2>/dev/null || true)" = "$want_cfg" ]; then
    echo "already configured with the same arguments: $BUILDDIR"
else
    step "configure"
    # relink_if_library_changed (lib.sh) may have left its stamp in a new
    # build directory: that alone does not make it someone else's.
    if [ -n "$(find "$BUILDDIR" -mindepth 1 -maxdepth 1 ! -name .postcopy-rs-lib -print -quit)" ]; then
        if [ -f "$cfg_stamp" ] || [ -f "$BUILDDIR/build.ninja" ]; then
            echo "configure arguments changed: wiping $BUILDDIR"
            find "$BUILDDIR" -mindepth 1 -delete
        else
            die "$BUILDDIR is not empty and not a QEMU build directory; refusing to wipe it"
        fi
    fi
    echo "$SRC/configure ${CONFIGURE_ARGS[*]}"
    # PATH: let configure/meson see the venv's meson first.
    if ! (cd "$BUILDDIR" && PATH="$PCRS_VENV/bin:$PATH" "$SRC/configure" "${CONFIGURE_ARGS[@]}") \
        >"$BUILDDIR/configure.log.txt" 2>&1; then
        tail -40 "$BUILDDIR/configure.log.txt" >&2
        die "configure failed (full log: $BUILDDIR/configure.log.txt)"
    fi
    tail -5 "$BUILDDIR/configure.log.txt"
    printf '%s\n' "$want_cfg" >"$cfg_stamp"
fi

step "ninja ${TARGETS[*]}"
jobs=()
[ -z "${NINJA_JOBS:-}" ] || jobs=(-j "$NINJA_JOBS")
if ! PATH="$PCRS_VENV/bin:$PATH" ninja -C "$BUILDDIR" "${jobs[@]}" "${TARGETS[@]}" \
    >"$BUILDDIR/ninja.log.txt" 2>&1; then
    grep -E -B2 -A12 'error|FAILED' "$BUILDDIR/ninja.log.txt" | tail -60 >&2 || tail -40 "$BUILDDIR/ninja.log.txt" >&2
    die "ninja build failed (full log: $BUILDDIR/ninja.log.txt)"
fi
tail -2 "$BUILDDIR/ninja.log.txt"

step "copy firmware into $BUILDDIR/qemu-bundle/usr/local/share/qemu"
fwdir=$BUILDDIR/qemu-bundle/usr/local/share/qemu
mkdir -p "$fwdir"
nfw=0
for pkg in "${FIRMWARE_PKGS[@]}"; do
    mapfile -t files < <(dpkg -L "$pkg" 2>/dev/null | grep -E '\.(bin|rom)$' || true)
    [ "${#files[@]}" -gt 0 ] || die "package $pkg lists no *.bin/*.rom: run scripts/qemu-deps.sh"
    for f in "${files[@]}"; do
        [ -f "$f" ] || continue
        cp -fL "$f" "$fwdir/" || die "could not copy $f to $fwdir"
        nfw=$((nfw + 1))
    done
done
for f in bios-256k.bin kvmvapic.bin linuxboot_dma.bin efi-e1000e.rom vgabios-stdvga.bin; do
    [ -f "$fwdir/$f" ] || die "firmware $f missing from $fwdir after copying"
done
echo "copied $nfw firmware files"

step "check results"
for t in "${TARGETS[@]}"; do
    [ -x "$BUILDDIR/$t" ] || die "$BUILDDIR/$t was not built"
done
# The configure stamp only says what was asked: a reconfigure by ninja in
# a tree without the option (qemu-series.sh build-each) can drop it.
case $PCRS_MODE in
    enabled) grep -q '^#define CONFIG_POSTCOPY_RS' "$BUILDDIR/config-host.h" ||
        die "$BUILDDIR was asked for -Dpostcopy_rs=enabled but is built without it: delete $cfg_stamp and rebuild" ;;
    disabled) ! grep -q '^#define CONFIG_POSTCOPY_RS' "$BUILDDIR/config-host.h" ||
        die "$BUILDDIR was asked for -Dpostcopy_rs=disabled but is built with it: delete $cfg_stamp and rebuild" ;;
esac
"$BUILDDIR/qemu-system-x86_64" --version | head -1
echo "built: $BUILDDIR/qemu-system-x86_64 $BUILDDIR/tests/qtest/migration-test"
