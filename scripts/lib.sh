# shellcheck shell=bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Shared helpers for scripts/qemu-*.sh.  Source it, do not run it:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# What it gives:
#   step NAME          announce a step (under the test command, with the time
#                      since it started); on any failure the error names it
#   die MSG...         print "ERROR ... step NAME: MSG" and exit 1
#   warn MSG...        print a warning to stderr
#   as_root CMD...     run CMD as root (directly, or through sudo)
#   apt_missing PKG... print the packages among PKG that are not installed
#   debian_mirror_uri [security]
#                      the archive URI the system's apt sources already use
#                      (read at run time; never hard-coded)
#   fmt_secs N         "1m 02s"
#   relink_if_library_changed BUILDDIR ARCHIVE
#                      make ninja relink BUILDDIR's QEMU only when the
#                      library archive changed since its last link
#   timed NAME CMD...  run CMD, adding its seconds to TOOK[NAME] (the
#                      caller declares TOOK); took_summary prints them
#   reserve_hugepages_probe SIZE_KB N
#                      can N more hugepages of SIZE_KB be reserved now?
#   sync_tree NEW OLD  make OLD's content NEW's, rewriting only what differs
#   series_tree VERSION SERIES TREE BUILDDIR [--fixes-only]
#                      TREE: Debian's source of VERSION with SERIES applied
#   with_vm_lock CMD...
#                      run CMD holding the machine lock $PCRS_VM_LOCK
#                      (default /tmp/pcrs-vm.lock), as everything that
#                      boots VMs, runs qtests or reserves hugepages does
#
# Variables (all may be overridden from the environment):
#   PCRS_ROOT   the repository's top directory
#   PCRS_CACHE  download cache, default ~/.cache/postcopy-rs
#   PCRS_VENV   Python venv holding meson==1.5.0 and pycotap,
#               default $PCRS_CACHE/meson-venv

set -Eeuo pipefail

PCRS_SCRIPT=$(basename "${0}")
# shellcheck disable=SC2034  # used by the scripts that source this file
PCRS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PCRS_CACHE=${PCRS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/postcopy-rs}
PCRS_VENV=${PCRS_VENV:-$PCRS_CACHE/meson-venv}
PCRS_STEP="start"
PCRS_T0=$SECONDS
export DEBIAN_FRONTEND=noninteractive

step() {
    local at=""
    PCRS_STEP=$1
    # Under the test command, each step says how far into it it starts:
    # CI keeps only the tail of a run that times out.
    [ -z "${PCRS_TEST_START:-}" ] || at=" +$(fmt_secs $(($(date +%s) - PCRS_TEST_START)))"
    printf '==> [%s%s] %s\n' "$PCRS_SCRIPT" "$at" "$PCRS_STEP"
}

die() {
    printf 'ERROR [%s] step "%s": %s\n' "$PCRS_SCRIPT" "$PCRS_STEP" "$*" >&2
    exit 1
}

warn() {
    printf 'WARNING [%s]: %s\n' "$PCRS_SCRIPT" "$*" >&2
}

pcrs_on_err() {
    local rc=$1 line=$2 cmd=$3
    printf 'ERROR [%s] step "%s" failed (exit %s at line %s): %s\n' \
        "$PCRS_SCRIPT" "$PCRS_STEP" "$rc" "$line" "$cmd" >&2
}
trap 'pcrs_on_err $? $LINENO "$BASH_COMMAND"' ERR

fmt_secs() {
    printf '%dm %02ds' $(($1 / 60)) $(($1 % 60))
}

pcrs_on_exit() {
    local rc=$?
    if [ "$rc" -eq 0 ]; then
        printf '==> [%s] done in %s\n' "$PCRS_SCRIPT" "$(fmt_secs $((SECONDS - PCRS_T0)))"
    fi
}
trap pcrs_on_exit EXIT

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -E "$@"
    else
        die "this step needs root (or sudo) to run: $*"
    fi
}

# Print the packages among the arguments that are not installed.
apt_missing() {
    local p status
    for p in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        case $status in
            *" installed") ;;
            *) printf '%s\n' "$p" ;;
        esac
    done
}

# The archive URI that apt is already configured with.  With "security",
# the URI of the security archive instead (empty if none is configured).
# Reads deb822 /etc/apt/sources.list.d/*.sources first, then one-line
# /etc/apt/sources.list{,.d/*.list}.
debian_mirror_uri() {
    local want=${1:-main} f uri=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri=$(awk -v want="$want" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    if (line ~ /^Types:/)   { sub(/^Types:[ \t]*/, "", line);   types = line }
                    if (line ~ /^URIs:/)    { sub(/^URIs:[ \t]*/, "", line);    uris = line }
                    if (line ~ /^Suites:/)  { sub(/^Suites:[ \t]*/, "", line);  suites = line }
                    if (line ~ /^Enabled:/) { sub(/^Enabled:[ \t]*/, "", line); enabled = line }
                }
                if (enabled == "no" || uris == "" || types !~ /(^|[ \t])deb($|[ \t])/) next
                n = split(suites, s, /[ \t]+/)
                for (j = 1; j <= n; j++) {
                    sec = (s[j] ~ /-security$/)
                    if ((want == "security") == sec) {
                        split(uris, u, /[ \t]+/); print u[1]; exit
                    }
                }
            }' "$f")
        [ -n "$uri" ] && break
    done
    if [ -z "$uri" ]; then
        # One-line format: "deb [opts] URI SUITE COMPONENTS..."
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk -v want="$want" '
                /^[ \t]*deb[ \t]/ {
                    i = 2
                    if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                    sec = ($(i + 1) ~ /-security$/ || $(i + 1) ~ /\/updates$/)
                    if ((want == "security") == sec) { print $i; exit }
                }')
    fi
    printf '%s\n' "$uri"
}

# relink_if_library_changed BUILDDIR ARCHIVE
# The library is a link argument, not a file ninja tracks: remove
# BUILDDIR/qemu-system-x86_64 (so ninja relinks it) when ARCHIVE's content
# differs from the one it was last linked with (BUILDDIR/.postcopy-rs-lib),
# and leave it alone otherwise, so that a second build is a no-op.
relink_if_library_changed() {
    local builddir=$1 archive=$2 stamp=$1/.postcopy-rs-lib sum
    sum=$(sha256sum "$archive" | cut -d' ' -f1) || die "cannot read $archive"
    if [ -x "$builddir/qemu-system-x86_64" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]; then
        echo "library unchanged since the last link: no relink"
        return 0
    fi
    echo "library changed (or first link): relinking qemu-system-x86_64"
    rm -f "$builddir/qemu-system-x86_64"
    # Written before the build: should it fail, the binary is gone and the
    # next build relinks anyway.
    mkdir -p "$builddir"
    printf '%s\n' "$sum" >"$stamp"
}

# timed NAME CMD...: run CMD, adding its seconds to TOOK[NAME] (an
# associative array the calling script declares: declare -A TOOK=()).
timed() {
    local name=$1 t0=$SECONDS rc=0
    shift
    "$@" || rc=$?
    # shellcheck disable=SC2004  # TOOK is associative: $name is a key
    TOOK[$name]=$((${TOOK[$name]:-0} + SECONDS - t0))
    return "$rc"
}

# took_summary: "NAME 1m 02s, ..." of TOOK, by name.
took_summary() {
    local k times=""
    while IFS= read -r k; do
        times+="$k $(fmt_secs "${TOOK[$k]}"), "
    done < <(printf '%s\n' "${!TOOK[@]}" | sort)
    printf '%s\n' "${times%, }"
}

# reserve_hugepages_probe SIZE_KB N: can N more hugepages of SIZE_KB be
# reserved now?  Reserves them, reads what the kernel granted, and gives
# them back whatever happened.
reserve_hugepages_probe() {
    local f=/sys/kernel/mm/hugepages/hugepages-$1kB/nr_hugepages prev got
    prev=$(cat "$f" 2>/dev/null) || return 1
    echo $((prev + $2)) >"$f" 2>/dev/null || { echo "$prev" >"$f" 2>/dev/null; return 1; }
    got=$(cat "$f")
    echo "$prev" >"$f"
    [ "$got" -ge $((prev + $2)) ]
}

# One run that boots VMs (or qtests, hugepages, namespaces) at a time on a
# host.  The lock stays with this shell: nothing CMD starts inherits it.
# (Not `CMD || ...`: that would turn errexit off inside CMD; a failure
# exits, and the lock goes with the process.)
with_vm_lock() {
    local lock=${PCRS_VM_LOCK:-/tmp/pcrs-vm.lock} t0=$SECONDS
    exec 9>"$lock"
    flock 9
    echo "holding $lock (waited $((SECONDS - t0))s)"
    "$@" 9>&-
    flock -u 9
    exec 9>&-
}

# sync_tree NEW OLD: make OLD's content NEW's, rewriting only the files
# whose content differs (their mtime changes, the others' does not).
sync_tree() {
    python3 - "$1" "$2" <<'PY'
import filecmp, os, shutil, sys
new, old = sys.argv[1], sys.argv[2]
changed = removed = 0
for root, dirs, files in os.walk(new):
    rel = os.path.relpath(root, new)
    oroot = os.path.join(old, rel)
    os.makedirs(oroot, exist_ok=True)
    for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
        n, o = os.path.join(root, name), os.path.join(oroot, name)
        if os.path.islink(n):
            if not (os.path.islink(o) and os.readlink(o) == os.readlink(n)):
                if os.path.lexists(o):
                    shutil.rmtree(o) if os.path.isdir(o) and not os.path.islink(o) else os.remove(o)
                os.symlink(os.readlink(n), o)
                changed += 1
            continue
        if os.path.isfile(o) and not os.path.islink(o) and filecmp.cmp(n, o, shallow=False):
            if os.stat(n).st_mode != os.stat(o).st_mode:
                os.chmod(o, os.stat(n).st_mode)
            continue
        if os.path.lexists(o):
            shutil.rmtree(o) if os.path.isdir(o) and not os.path.islink(o) else os.remove(o)
        shutil.copyfile(n, o)
        os.chmod(o, os.stat(n).st_mode)
        changed += 1
for root, dirs, files in os.walk(old, topdown=False):
    rel = os.path.relpath(root, old)
    for name in files + dirs:
        o = os.path.join(root, name)
        if not os.path.lexists(os.path.join(new, rel, name)):
            shutil.rmtree(o) if os.path.isdir(o) and not os.path.islink(o) else os.remove(o)
            removed += 1
print(f"{changed} files rewritten, {removed} removed in {old}")
PY
}

# series_tree VERSION SERIES TREE BUILDDIR [--fixes-only]: TREE holds
# Debian's source of VERSION with SERIES (or its stock fixes) applied, for
# BUILDDIR (scripts/qemu-test.sh's build/qemu-V/src-patched and
# src-fixes; scripts/test-sanitizers.sh shares the first).  When the series
# changed, a fresh tree is made and only the files that differ are written
# into the old one: ninja rebuilds what changed, not everything.
series_tree() {
    local v=$1 series=$2 tree=$3 builddir=$4 stamp
    shift 4
    stamp=$(cat "$series/series" "$series"/*.patch | sha256sum | cut -d' ' -f1)
    stamp="$stamp $*"
    if [ "$(cat "$tree/VERSION" 2>/dev/null)" = "$v" ] &&
        [ "$(cat "$tree/.postcopy-rs-series" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    env QEMU_VERSION="$v" "$PCRS_ROOT/scripts/qemu-fetch.sh" "$tree.next"
    "$PCRS_ROOT/scripts/qemu-build.sh" "$tree.next" "$builddir" --patches "$series" "$@" --apply-only
    echo "$stamp" >"$tree.next/.postcopy-rs-series"
    if [ "$(cat "$tree/VERSION" 2>/dev/null)" = "$v" ]; then
        sync_tree "$tree.next" "$tree"
        rm -rf "$tree.next"
    else
        rm -rf "$tree"
        mv "$tree.next" "$tree"
    fi
}
