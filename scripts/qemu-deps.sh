#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Install what fetching, building and testing QEMU 10.0.x and 10.2.x needs on
# Debian 12:
#   - Debian packages: build tools and libraries, dpkg-dev (dpkg-source),
#     binutils (nm, for the test that the library is linked in), and the
#     firmware packages seabios, qemu-system-data and ipxe-qemu (the +ds source
#     ships no firmware);
#   - a Python venv with meson==1.5.0 and pycotap (Debian 12's meson is too
#     old), at $PCRS_VENV (default ~/.cache/postcopy-rs/meson-venv).
#
# Usage: scripts/qemu-deps.sh
# Idempotent: apt-get update/install and pip only run when something is
# missing.  Needs root (or sudo) for apt-get.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MESON_VERSION=1.5.0

APT_PKGS=(
    # toolchain and build
    build-essential ninja-build pkg-config flex bison patch git
    ca-certificates
    # the builds of one version share most objects (scripts/qemu-build.sh)
    ccache
    # QEMU libraries (--without-default-features + slirp)
    libglib2.0-dev libpixman-1-dev libfdt-dev libslirp-dev zlib1g-dev
    # TLS (--enable-gnutls): migration-test's tls/psk variants
    libgnutls28-dev
    # Python for QEMU's configure (mkvenv) and our meson venv
    python3 python3-venv
    # fetching / unpacking the Debian source package
    dpkg-dev xz-utils
    # nm, to check the patched binary carries the library
    binutils
    # firmware (bios-256k.bin, vgabios, option ROMs, efi-*.rom)
    seabios qemu-system-data ipxe-qemu
)

step "check Debian packages"
command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script is for Debian"
mapfile -t missing < <(apt_missing "${APT_PKGS[@]}")
if [ "${#missing[@]}" -gt 0 ]; then
    echo "missing: ${missing[*]}"
    step "apt-get update"
    as_root apt-get -o DPkg::Lock::Timeout=600 update -q || die "apt-get update failed"
    step "apt-get install ${missing[*]}"
    as_root apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" ||
        die "apt-get install failed for: ${missing[*]}"
    mapfile -t still < <(apt_missing "${APT_PKGS[@]}")
    [ "${#still[@]}" -eq 0 ] || die "still not installed after apt-get install: ${still[*]}"
else
    echo "all ${#APT_PKGS[@]} Debian packages already installed"
fi

step "Python venv with meson==$MESON_VERSION and pycotap at $PCRS_VENV"
# Use Debian's python3 explicitly (python3-venv belongs to it), not
# whatever python3 comes first in PATH (pyenv shims, etc.).
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3) || die "python3 not found"
venv_ok() {
    [ -x "$PCRS_VENV/bin/python3" ] &&
        [ "$("$PCRS_VENV/bin/meson" --version 2>/dev/null)" = "$MESON_VERSION" ] &&
        "$PCRS_VENV/bin/python3" -c 'import pycotap' 2>/dev/null
}
if venv_ok; then
    echo "venv already has meson $MESON_VERSION and pycotap"
else
    if [ ! -x "$PCRS_VENV/bin/python3" ]; then
        mkdir -p "$(dirname "$PCRS_VENV")"
        "$PY" -m venv "$PCRS_VENV" || die "could not create venv at $PCRS_VENV with $PY -m venv"
    fi
    "$PCRS_VENV/bin/python3" -m pip install -q "meson==$MESON_VERSION" pycotap ||
        die "pip install meson==$MESON_VERSION pycotap failed"
    venv_ok || die "venv at $PCRS_VENV still lacks meson $MESON_VERSION or pycotap"
fi
echo "meson: $PCRS_VENV/bin/meson ($("$PCRS_VENV/bin/meson" --version))"
