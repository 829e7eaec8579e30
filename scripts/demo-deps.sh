#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Install what the demo and the end-to-end tests (scripts/postcopy_demo/)
# need beyond QEMU's build dependencies:
#   - Debian packages: python3-venv, iproute2 (network namespaces, tc),
#     util-linux (setpriv);
#   - QEMU's own QMP library, qemu.qmp==$QEMU_QMP_VERSION, in a venv of
#     Debian's python3 at $PCRS_QMP_VENV (default
#     ~/.cache/postcopy-rs/qmp-venv); scripts/migrate.py and scripts/e2e.py
#     re-run themselves with its python;
#   - the linters of scripts/test.sh: ruff==$RUFF_VERSION in the same
#     venv, and Debian's shellcheck;
#   - with --libvirt: Debian's libvirt daemon for QEMU and virsh
#     (libvirt-daemon-driver-qemu, libvirt-daemon, libvirt-clients), and
#     the system user libvirt-qemu the QEMU driver looks up at start-up.
#
# Usage: scripts/demo-deps.sh [--libvirt]
# Idempotent: apt-get and pip run only when something is missing.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

QEMU_QMP_VERSION=0.0.6
RUFF_VERSION=0.17.6
PCRS_QMP_VENV=${PCRS_QMP_VENV:-$PCRS_CACHE/qmp-venv}

APT_PKGS=(python3 python3-venv iproute2 util-linux shellcheck)
if [ "${1:-}" = --libvirt ]; then
    # The monolithic libvirtd (libvirt-daemon) runs the QEMU driver
    # (libvirt-daemon-driver-qemu); virsh is in libvirt-clients.
    APT_PKGS+=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)
fi

step "check Debian packages"
mapfile -t missing < <(apt_missing "${APT_PKGS[@]}")
if [ "${#missing[@]}" -gt 0 ]; then
    echo "missing: ${missing[*]}"
    as_root apt-get -o DPkg::Lock::Timeout=600 update -q || die "apt-get update failed"
    # --no-install-recommends: no system libvirtd service, dnsmasq,
    # firewall or QEMU of Debian's are wanted (see README: the daemons of
    # the libvirt demo are started by the demo itself).
    as_root apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends \
        "${missing[@]}" || die "apt-get install failed for: ${missing[*]}"
    mapfile -t still < <(apt_missing "${APT_PKGS[@]}")
    [ "${#still[@]}" -eq 0 ] || die "still not installed after apt-get install: ${still[*]}"
else
    echo "all ${#APT_PKGS[@]} Debian packages already installed"
fi

if [ "${1:-}" = --libvirt ] && ! getent passwd libvirt-qemu >/dev/null; then
    step "system user libvirt-qemu"
    # libvirt's QEMU driver resolves its default user at start-up, before it
    # reads qemu.conf (which says root for the demo); Debian's
    # libvirt-daemon-system would create it, and the demo does not want
    # that package's system daemons and default network.
    as_root useradd --system --user-group --no-create-home --home-dir /var/lib/libvirt \
        --shell /usr/sbin/nologin --comment "Libvirt Qemu" libvirt-qemu ||
        die "could not create the system user libvirt-qemu"
fi

step "venv with qemu.qmp==$QEMU_QMP_VERSION and ruff==$RUFF_VERSION at $PCRS_QMP_VENV"
# Debian's python3 explicitly (python3-venv belongs to it), not whatever
# python3 comes first in PATH.
PY=/usr/bin/python3
[ -x "$PY" ] || die "/usr/bin/python3 not found"
want="$QEMU_QMP_VERSION $RUFF_VERSION"
have=$("$PCRS_QMP_VENV/bin/python3" -c 'import importlib.metadata as m
print(m.version("qemu.qmp"), m.version("ruff"))' 2>/dev/null || true)
if [ "$have" = "$want" ]; then
    echo "venv already has qemu.qmp and ruff: $have"
else
    if [ ! -x "$PCRS_QMP_VENV/bin/python3" ]; then
        mkdir -p "$(dirname "$PCRS_QMP_VENV")"
        "$PY" -m venv "$PCRS_QMP_VENV" || die "could not create venv at $PCRS_QMP_VENV"
    fi
    "$PCRS_QMP_VENV/bin/python3" -m pip install -q "qemu.qmp==$QEMU_QMP_VERSION" \
        "ruff==$RUFF_VERSION" || die "pip install of qemu.qmp and ruff ($want) failed"
    "$PCRS_QMP_VENV/bin/python3" -c 'import qemu.qmp.legacy' ||
        die "qemu.qmp does not import in $PCRS_QMP_VENV"
    "$PCRS_QMP_VENV/bin/ruff" --version || die "ruff does not run in $PCRS_QMP_VENV"
fi
echo "python: $PCRS_QMP_VENV/bin/python3 (qemu.qmp $QEMU_QMP_VERSION), $PCRS_QMP_VENV/bin/ruff"
