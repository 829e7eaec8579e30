#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Fetch Debian's QEMU 10.0.x source package (from trixie) and unpack it.
#
# Usage: scripts/qemu-fetch.sh [DEST]        (default DEST: build/qemu-src)
#
#   1. adds /etc/apt/sources.list.d/postcopy-rs-trixie-src.sources, a
#      deb-src entry for trixie (and trixie-security) reusing the archive
#      URI the system's apt sources already name;
#   2. unless the .dsc is already cached: apt-get update, then
#      apt-get source --download-only qemu=$QEMU_DEB_VERSION into
#      $PCRS_CACHE/qemu-src (default ~/.cache/postcopy-rs/qemu-src).  If
#      that exact version is gone from the archive, the newest 10.0.x that
#      trixie offers is taken instead;
#   3. removes DEST and runs dpkg-source -x into it (this applies Debian's
#      patches, including skip-unpack-edk2-blobs, see below).
#
# Environment:
#   QEMU_DEB_VERSION  default 1:10.0.13+ds-0+deb13u1
#   QEMU_DEB_SERIES   upstream series accepted as fallback, default 10.0
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

QEMU_DEB_VERSION=${QEMU_DEB_VERSION:-1:10.0.13+ds-0+deb13u1}
QEMU_DEB_SERIES=${QEMU_DEB_SERIES:-10.0}
DEST=${1:-$PCRS_ROOT/build/qemu-src}
DL=$PCRS_CACHE/qemu-src
SRC_LIST=/etc/apt/sources.list.d/postcopy-rs-trixie-src.sources

command -v dpkg-source >/dev/null 2>&1 || die "dpkg-source not found: run scripts/qemu-deps.sh first"

# "1:10.0.13+ds-0+deb13u1" -> "qemu_10.0.13+ds-0+deb13u1.dsc"
dsc_name() { printf 'qemu_%s.dsc\n' "${1#*:}"; }

mkdir -p "$DL"

step "deb-src entry for trixie"
uri=$(debian_mirror_uri main)
[ -n "$uri" ] || die "could not find the Debian archive URI in /etc/apt/sources.list{,.d/*}"
sec_uri=$(debian_mirror_uri security)
want=$(
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\n' "$uri"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$sec_uri" ]; then
        printf '\nTypes: deb-src\nURIs: %s\nSuites: trixie-security\nComponents: main\n' "$sec_uri"
        printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
)
added=0
if [ "$(cat "$SRC_LIST" 2>/dev/null || true)" != "$want" ]; then
    printf '%s\n' "$want" | as_root tee "$SRC_LIST" >/dev/null || die "could not write $SRC_LIST"
    echo "wrote $SRC_LIST (archive: $uri)"
    added=1
fi

version=""
if [ -f "$DL/$(dsc_name "$QEMU_DEB_VERSION")" ] && [ "$added" -eq 0 ]; then
    version=$QEMU_DEB_VERSION
    echo "cached: $DL/$(dsc_name "$version")"
else
    step "apt-get update"
    as_root apt-get update -q || die "apt-get update failed (is $SRC_LIST fine?)"

    step "choose qemu source version"
    mapfile -t avail < <(apt-cache showsrc --only-source qemu 2>/dev/null |
        awk '/^Version:/ { print $2 }' | sort -u)
    [ "${#avail[@]}" -gt 0 ] || die "apt-cache showsrc qemu found nothing: is the trixie deb-src entry working?"
    echo "available: ${avail[*]}"
    for v in "${avail[@]}"; do
        [ "$v" = "$QEMU_DEB_VERSION" ] && version=$v
    done
    if [ -z "$version" ]; then
        for v in "${avail[@]}"; do
            case ${v#*:} in
                "$QEMU_DEB_SERIES".*) ;;
                *) continue ;;
            esac
            if [ -z "$version" ] || dpkg --compare-versions "$v" gt "$version"; then
                version=$v
            fi
        done
        [ -n "$version" ] || die "neither qemu=$QEMU_DEB_VERSION nor any $QEMU_DEB_SERIES.x is available"
        warn "qemu=$QEMU_DEB_VERSION is not in the archive any more; using $version"
    fi

    if [ -f "$DL/$(dsc_name "$version")" ]; then
        echo "cached: $DL/$(dsc_name "$version")"
    else
        step "apt-get source --download-only qemu=$version"
        (cd "$DL" && apt-get source -q --download-only "qemu=$version") ||
            die "apt-get source --download-only qemu=$version failed"
    fi
fi
dsc=$DL/$(dsc_name "$version")
[ -f "$dsc" ] || die "expected $dsc after download"

step "dpkg-source -x into $DEST"
case $DEST in
    "" | / | "$HOME" | "$PCRS_ROOT") die "refusing to use $DEST as DEST" ;;
esac
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
dpkg-source -x "$dsc" "$DEST" >"$DL/dpkg-source.log" 2>&1 || {
    tail -20 "$DL/dpkg-source.log" >&2
    die "dpkg-source -x $dsc $DEST failed (log: $DL/dpkg-source.log)"
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
