#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Build the demo guest: a Debian kernel and a small initramfs whose only
# job is guest/workload.c (see there), for scripts/migrate.py.
#
# Usage: scripts/guest-build.sh [OUTDIR]        (default OUTDIR: build/guest)
#
# Produces OUTDIR/vmlinuz, OUTDIR/initramfs.cpio.gz and OUTDIR/guest.txt
# (what went in).
#
#   kernel     Debian's kernel for this suite: the linux-image-<abi>-amd64
#              package that linux-image-amd64 depends on, fetched with
#              `apt-get download` into $PCRS_CACHE/guest (default
#              ~/.cache/postcopy-rs/guest) and unpacked with dpkg-deb -x
#              into a temporary directory; nothing is installed, the host's
#              /boot is not touched.  It boots the initramfs with no module:
#              8250 serial console, initramfs/gzip, devtmpfs, NUMA and
#              memory hotplug are built in.
#   initramfs  /init (guest/init), /bin/busybox from Debian's busybox-static
#              (also apt-get download + dpkg-deb -x, not installed), and
#              /workload (guest/workload.c, gcc -static -O2 -pthread); packed with
#              cpio -H newc and gzip.
#
# Needs: dpkg-deb, apt-get, gcc with static glibc (build-essential), cpio
# and gzip; cpio and build-essential are apt-get installed when missing
# (root).  With no network, the cached .debs are used.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OUT=${1:-$PCRS_ROOT/build/guest}
DL=$PCRS_CACHE/guest
GUEST_SRC=$PCRS_ROOT/guest

step "check tools"
[ "$(dpkg --print-architecture 2>/dev/null)" = amd64 ] ||
    die "this builds an amd64 guest on a Debian amd64 host (dpkg architecture: $(dpkg --print-architecture 2>/dev/null || echo none))"
mapfile -t missing < <(apt_missing cpio gzip build-essential libc6-dev)
if [ "${#missing[@]}" -gt 0 ]; then
    step "apt-get install ${missing[*]}"
    as_root apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        { as_root apt-get update -q && as_root apt-get install -y -q --no-install-recommends "${missing[@]}"; } ||
        die "apt-get install ${missing[*]} failed"
fi
for t in gcc cpio gzip dpkg-deb apt-get apt-cache; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found"
done
mkdir -p "$DL" "$OUT"

# The .deb file name apt-get download gives PKG at VERSION ("1:2" -> "1%3a2").
deb_name() { printf '%s_%s_amd64.deb\n' "$1" "${2//:/%3a}"; }

# Newest candidate version of PKG, or empty.
candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2 }'
}

# fetch PKG: print the path of its .deb in $DL, downloading it if needed.
# Falls back to any cached .deb of PKG when apt cannot help (offline).
fetch() {
    local pkg=$1 ver file tmp cached
    ver=$(candidate "$pkg")
    if [ -z "$ver" ]; then
        as_root apt-get update -q >&2 || warn "apt-get update failed"
        ver=$(candidate "$pkg")
    fi
    if [ -n "$ver" ]; then
        file=$DL/$(deb_name "$pkg" "$ver")
        if [ -s "$file" ]; then
            echo "cached: $file" >&2
            printf '%s\n' "$file"
            return 0
        fi
        # apt drops privileges to _apt for downloads: give it a directory
        # it can write (avoids "Download is performed unsandboxed").
        tmp=$(mktemp -d)
        if id _apt >/dev/null 2>&1; then chown _apt "$tmp" 2>/dev/null || true; fi
        if (cd "$tmp" && apt-get download -q "$pkg=$ver" >&2); then
            mv "$tmp"/*.deb "$file"
            rm -rf "$tmp"
            echo "downloaded: $file" >&2
            printf '%s\n' "$file"
            return 0
        fi
        rm -rf "$tmp"
        warn "apt-get download $pkg=$ver failed"
    fi
    cached=$(find "$DL" -maxdepth 1 -name "${pkg}_*_amd64.deb" -size +0 2>/dev/null | sort -V | tail -n1)
    [ -n "$cached" ] || die "cannot get $pkg: not in apt's lists (apt-get update?) and not cached in $DL"
    warn "using the cached $cached"
    printf '%s\n' "$cached"
}

step "kernel package"
# linux-image-amd64 is a metapackage; the kernel is the linux-image-*
# package it depends on (e.g. linux-image-6.1.0-56-amd64).
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
if [ -z "$kpkg" ]; then
    as_root apt-get update -q || warn "apt-get update failed"
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
fi
if [ -z "$kpkg" ]; then
    # Offline and apt knows nothing: whatever kernel is cached.
    kpkg=$(find "$DL" -maxdepth 1 -name 'linux-image-[0-9]*_amd64.deb' -printf '%f\n' 2>/dev/null |
        sort -V | tail -n1 | cut -d_ -f1)
    [ -n "$kpkg" ] || die "apt-cache knows no linux-image-amd64 and no kernel .deb is cached in $DL"
fi
echo "kernel package: $kpkg"
kdeb=$(fetch "$kpkg")

step "busybox-static package"
bdeb=$(fetch busybox-static)

WORK=$(mktemp -d)
# Keep lib.sh's exit report (it reads $?), and clean up.
trap 'rc=$?; rm -rf "$WORK"; (exit $rc); pcrs_on_exit' EXIT

step "unpack the kernel (dpkg-deb -x into a temporary directory)"
dpkg-deb -x "$kdeb" "$WORK/kernel" || die "dpkg-deb -x $kdeb failed"
mapfile -t vmlinuz < <(find "$WORK/kernel/boot" -maxdepth 1 -name 'vmlinuz-*' 2>/dev/null)
[ "${#vmlinuz[@]}" -eq 1 ] || die "expected one boot/vmlinuz-* in $kdeb, found ${#vmlinuz[@]}"
kver=${vmlinuz[0]##*/vmlinuz-}
kconfig=$WORK/kernel/boot/config-$kver
if [ -f "$kconfig" ]; then
    # What booting this initramfs on QEMU's pc machine needs, built in.
    for opt in BLK_DEV_INITRD RD_GZIP DEVTMPFS SERIAL_8250 SERIAL_8250_CONSOLE PROC_FS SYSFS NUMA; do
        grep -q "^CONFIG_$opt=y" "$kconfig" || die "kernel $kver lacks built-in CONFIG_$opt (needed without modules)"
    done
fi
install -m 0644 "${vmlinuz[0]}" "$OUT/vmlinuz.new"
mv -f "$OUT/vmlinuz.new" "$OUT/vmlinuz"
echo "kernel $kver -> $OUT/vmlinuz"

step "build the workload (gcc -static -O2 -pthread)"
gcc -static -O2 -pthread -Wall -Wextra -Werror -o "$WORK/workload" "$GUEST_SRC/workload.c" ||
    die "gcc -static failed for guest/workload.c (static glibc: libc6-dev)"
install -m 0755 "$WORK/workload" "$OUT/workload"

step "assemble the initramfs"
root=$WORK/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,etc}
dpkg-deb -x "$bdeb" "$WORK/busybox" || die "dpkg-deb -x $bdeb failed"
[ -x "$WORK/busybox/bin/busybox" ] || die "no bin/busybox in $bdeb"
install -m 0755 "$WORK/busybox/bin/busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
install -m 0755 "$GUEST_SRC/init" "$root/init"
install -m 0755 "$WORK/workload" "$root/workload"
# The kernel opens /dev/console for init before anything is mounted.
mknod -m 0600 "$root/dev/console" c 5 1 || die "mknod /dev/console failed (root needed)"
mknod -m 0666 "$root/dev/null" c 1 3 || die "mknod /dev/null failed"
(cd "$root" && find . -print0 | LC_ALL=C sort -z |
    cpio --null -o -H newc --owner=0:0 --quiet) | gzip -9 >"$OUT/initramfs.cpio.gz.new" ||
    die "cpio | gzip failed"
mv -f "$OUT/initramfs.cpio.gz.new" "$OUT/initramfs.cpio.gz"

bver=$(dpkg-deb -f "$bdeb" Version)
kdver=$(dpkg-deb -f "$kdeb" Version)
{
    echo "kernel: $kpkg $kdver ($kver)"
    echo "busybox-static: $bver"
    echo "workload: $(sha256sum "$GUEST_SRC/workload.c" | cut -d' ' -f1)  guest/workload.c"
    echo "init: $(sha256sum "$GUEST_SRC/init" | cut -d' ' -f1)  guest/init"
} >"$OUT/guest.txt"
cat "$OUT/guest.txt"
ls -l "$OUT/vmlinuz" "$OUT/initramfs.cpio.gz"
