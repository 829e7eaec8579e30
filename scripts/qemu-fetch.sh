#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Fetch one of the Debian QEMU source packages the series target and
# unpack it.
#
# Usage: scripts/qemu-fetch.sh [DEST]        (default DEST: build/qemu-src)
#
#   1. writes /etc/apt/sources.list.d/postcopy-rs-trixie-src.sources, a
#      deb-src entry for trixie and sid (and trixie-security) reusing the
#      archive URI the system's apt sources already name;
#   2. unless the .dsc is already cached: apt-get update, then
#      apt-get source --download-only qemu=$QEMU_DEB_VERSION into
#      $PCRS_CACHE/qemu-src (default ~/.cache/postcopy-rs/qemu-src; all
#      versions share it, each under its own Debian file names).  If that
#      exact version is gone from the archive or its files do not download,
#      the other $QEMU_DEB_SERIES.x versions the indexes list are tried,
#      newest first, and the one used is named;
#   3. removes DEST and runs dpkg-source -x into it (this applies Debian's
#      patches, including skip-unpack-edk2-blobs, see below).  A DEST that
#      is a symbolic link is followed: the tree goes where it points.
#
# Environment:
#   QEMU_VERSION      the upstream release: 10.0.13 (default) or 10.2.2;
#                     picks the two below
#   QEMU_DEB_VERSION  default 1:10.0.13+ds-0+deb13u1 (trixie) for 10.0.13,
#                     1:10.2.2+ds-1 (sid) for 10.2.2
#   QEMU_DEB_SERIES   upstream series accepted as fallback, default the
#                     release's own (10.0, 10.2); "any" accepts every
#                     version (the newest that downloads is used)
#
# Why a fallback that downloads: Debian replaces old versions in a suite,
# and the indexes can list versions whose files are not (yet, or any
# more) on the mirror: in November 2026 sid, forky and trixie-backports
# list 11.1.x, whose files answer 404.
#
# skip-unpack-edk2-blobs: the +ds tarball carries no firmware, so
# pc-bios/edk2-*.fd.bz2 are missing, but upstream's pc-bios/meson.build
# unpacks them (for x86_64 and other edk2 targets) whenever bzip2 is found,
# which then fails.  Debian's debian/patches/skip-unpack-edk2-blobs.patch
# changes "if unpack_edk2_blobs" to "if unpack_edk2_blobs and false";
# dpkg-source -x applies it.  After unpacking, this script
# checks that the patch is in place and, if a future Debian source lacks
# it, makes the same change itself.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

QEMU_VERSION=${QEMU_VERSION:-10.0.13}
case $QEMU_VERSION in
    10.0.13) def_deb=1:10.0.13+ds-0+deb13u1 ;;
    10.2.2) def_deb=1:10.2.2+ds-1 ;;
    *) def_deb="" ;;
esac
QEMU_DEB_VERSION=${QEMU_DEB_VERSION:-$def_deb}
[ -n "$QEMU_DEB_VERSION" ] || die "no Debian version known for QEMU_VERSION=$QEMU_VERSION: set QEMU_DEB_VERSION"
QEMU_DEB_SERIES=${QEMU_DEB_SERIES:-$(printf '%s' "$QEMU_VERSION" | cut -d. -f1,2)}
DEST=${1:-$PCRS_ROOT/build/qemu-src}
DL=$PCRS_CACHE/qemu-src
SRC_LIST=/etc/apt/sources.list.d/postcopy-rs-trixie-src.sources

command -v dpkg-source >/dev/null 2>&1 || die "dpkg-source not found: run scripts/qemu-deps.sh first"

# "1:10.0.13+ds-0+deb13u1" -> "qemu_10.0.13+ds-0+deb13u1.dsc"
dsc_name() { printf 'qemu_%s.dsc\n' "${1#*:}"; }

mkdir -p "$DL"

step "deb-src entry for trixie and sid"
uri=$(debian_mirror_uri main)
[ -n "$uri" ] || die "could not find the Debian archive URI in /etc/apt/sources.list{,.d/*}"
sec_uri=$(debian_mirror_uri security)
want=$(
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie sid\nComponents: main\n' "$uri"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$sec_uri" ]; then
        printf '\nTypes: deb-src\nURIs: %s\nSuites: trixie-security\nComponents: main\n' "$sec_uri"
        printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
)
if [ "$(cat "$SRC_LIST" 2>/dev/null || true)" != "$want" ]; then
    printf '%s\n' "$want" | as_root tee "$SRC_LIST" >/dev/null || die "could not write $SRC_LIST"
    echo "wrote $SRC_LIST (archive: $uri)"
fi

# "1:10.2.2+ds-1" -> "qemu_10.2.2+ds.orig.tar.xz"
orig_name() { printf 'qemu_%s.orig.tar.xz\n' "$(printf '%s' "${1#*:}" | sed 's/-[^-]*$//')"; }

version=""
if [ -f "$DL/$(dsc_name "$QEMU_DEB_VERSION")" ] && [ -f "$DL/$(orig_name "$QEMU_DEB_VERSION")" ]; then
    # Cached (a rewritten deb-src entry does not make it stale).
    version=$QEMU_DEB_VERSION
    echo "cached: $DL/$(dsc_name "$version")"
else
    step "apt-get update"
    as_root apt-get -o DPkg::Lock::Timeout=600 update -q ||
        die "apt-get update failed (is $SRC_LIST fine?)"

    step "choose qemu source version"
    # Newest first.
    mapfile -t avail < <(apt-cache showsrc --only-source qemu 2>/dev/null |
        awk '/^Version:/ { print $2 }' | sort -u | sort -t: -k2 -V -r)
    [ "${#avail[@]}" -gt 0 ] || die "apt-cache showsrc qemu found nothing: is the deb-src entry working?"
    echo "listed in the indexes, newest first: ${avail[*]}"
    # The wanted version first, then the rest of its series, newest first.
    candidates=()
    for v in "${avail[@]}"; do
        [ "$v" = "$QEMU_DEB_VERSION" ] && candidates+=("$v")
    done
    [ "${#candidates[@]}" -gt 0 ] || warn "qemu=$QEMU_DEB_VERSION is not listed any more"
    for v in "${avail[@]}"; do
        [ "$v" != "$QEMU_DEB_VERSION" ] || continue
        up=${v#*:}
        case $QEMU_DEB_SERIES in
            any) ;;
            *) case $up in "$QEMU_DEB_SERIES".*) ;; *) continue ;; esac ;;
        esac
        candidates+=("$v")
    done
    [ "${#candidates[@]}" -gt 0 ] || die "neither qemu=$QEMU_DEB_VERSION nor any $QEMU_DEB_SERIES.x is listed"

    failed=()
    for v in "${candidates[@]}"; do
        if [ -f "$DL/$(dsc_name "$v")" ]; then
            echo "cached: $DL/$(dsc_name "$v")"
            version=$v
            break
        fi
        step "apt-get source --download-only qemu=$v"
        if (cd "$DL" && apt-get source -q --download-only "qemu=$v"); then
            version=$v
            break
        fi
        warn "qemu=$v is listed but its files do not download; trying the next one"
        failed+=("$v")
        rm -f "$DL/$(dsc_name "$v")"
    done
    [ -n "$version" ] || die "no qemu source downloads (tried: ${failed[*]})"
    if [ "$version" != "$QEMU_DEB_VERSION" ]; then
        warn "using qemu=$version instead of $QEMU_DEB_VERSION${failed:+ (did not download: ${failed[*]})}"
    fi
    echo "using qemu=$version${failed:+ (listed but did not download: ${failed[*]})}"
fi
dsc=$DL/$(dsc_name "$version")
[ -f "$dsc" ] || die "expected $dsc after download"

step "dpkg-source -x into $DEST"
# Follow a symbolic link (build/qemu-src -> qemu-10.0.13/src).
if [ -L "$DEST" ]; then
    DEST=$(readlink -f "$DEST")
fi
case $DEST in
    "" | / | "$HOME" | "$PCRS_ROOT") die "refusing to use $DEST as DEST" ;;
esac
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
xlog=$(dirname "$DEST")/dpkg-source-$(basename "$DEST").log
dpkg-source -x "$dsc" "$DEST" >"$xlog" 2>&1 || {
    tail -20 "$xlog" >&2
    die "dpkg-source -x $dsc $DEST failed (log: $xlog)"
}
echo "$version" >"$DEST/.postcopy-rs-debian-version"

step "check skip-unpack-edk2-blobs"
# Upstream pc-bios/meson.build has "if unpack_edk2_blobs" (true for
# x86_64-softmmu whenever bzip2 is installed) and then bunzip2s
# pc-bios/edk2-*.fd.bz2, which the +ds tarball lacks.  Debian's patch
# makes it "if unpack_edk2_blobs and false".  Verify it, or do the same.
pcbios=$DEST/pc-bios/meson.build
if ! grep -q '^if unpack_edk2_blobs and false' "$pcbios"; then
    grep -q '^if unpack_edk2_blobs$' "$pcbios" ||
        die "$pcbios has no 'if unpack_edk2_blobs' line: cannot disable edk2 blob unpacking"
    sed -i 's/^if unpack_edk2_blobs$/if unpack_edk2_blobs and false/' "$pcbios"
    warn "Debian's skip-unpack-edk2-blobs.patch was not applied; made the same change in $pcbios"
fi
echo "edk2 blob unpacking is disabled in pc-bios/meson.build"

upstream=$(cat "$DEST/VERSION" 2>/dev/null || echo '?')
echo "QEMU $upstream (Debian $version) unpacked in $DEST"
