#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Work on a patch series as git commits, and check it as a maintainer
# would receive it.
#
# Usage:
#   scripts/qemu-series.sh tree VERSION DIR
#       DIR becomes a git repository holding the upstream tree of QEMU
#       VERSION (Debian's orig tarball, which is upstream's release
#       tarball minus firmware blobs) as its first commit, with the series
#       qemu-patches/vVERSION applied on top by `git am`: edit, commit
#       (git commit --amend, git rebase -i), then export.
#   scripts/qemu-series.sh export VERSION DIR
#       git format-patch --cover-letter of DIR's commits after the first
#       into qemu-patches/vVERSION/, rewriting its `series`; the cover
#       letter keeps the subject and text of the one already there.
#   scripts/qemu-series.sh check VERSION
#       the series applies with `git am` to a fresh upstream tree, its
#       first part (up to "#:end-of-stock-fixes" in `series`) is fixes to
#       stock QEMU, each with a Fixes: tag (or "This fixes no single
#       commit:" and why) and none naming postcopy-rs,
#       no patch adds a return-path message or a migration capability,
#       every patch passes QEMU's scripts/checkpatch.pl, and the whole series
#       applies with `patch -p1` to Debian's source (dry run).
#   scripts/qemu-series.sh build-each VERSION SRC BUILDDIR
#       each patch builds on its own: SRC carries the whole series (as
#       scripts/qemu-build.sh --patches leaves it) and BUILDDIR is its
#       build; the series is reverted with `patch -R`, then re-applied one
#       patch at a time with an incremental build of qemu-system-x86_64
#       and migration-test after each (and one before the first); a
#       compiler warning fails the step, as -Werror would; from the patch
#       that adds the postcopy_rs meson option on, each step is configured
#       -Dpostcopy_rs=enabled.  The tree ends as it started.  Needs
#       PKG_CONFIG_PATH as for the build.
#
# The orig tarball and the Debian source come from scripts/qemu-fetch.sh's
# cache (~/.cache/postcopy-rs/qemu-src); run it first for VERSION
# (QEMU_VERSION=VERSION scripts/qemu-fetch.sh DEST).

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PCRS_ROOT" || exit 1

usage() {
    echo "usage: $0 tree VERSION DIR | export VERSION DIR | check VERSION |" \
        "build-each VERSION SRC BUILDDIR" >&2
    exit 2
}
[ $# -ge 2 ] || usage
CMD=$1 VERSION=$2
SERIES=$PCRS_ROOT/qemu-patches/v$VERSION
DL=$PCRS_CACHE/qemu-src
ORIG=$DL/qemu_$VERSION+ds.orig.tar.xz
GIT=(git -c user.name="postcopy-rs developers" -c user.email="dev@postcopy-rs.invalid" -c gc.auto=0
    -c commit.gpgsign=false -c core.autocrlf=false)

upstream_tree() {
    local dir=$1
    [ -f "$ORIG" ] || die "$ORIG not cached: run QEMU_VERSION=$VERSION scripts/qemu-fetch.sh first"
    rm -rf "$dir"
    mkdir -p "$dir"
    tar -xJf "$ORIG" -C "$dir" --strip-components=1
    (cd "$dir" && "${GIT[@]}" init -q && "${GIT[@]}" add -A >/dev/null &&
        "${GIT[@]}" commit -q -m "QEMU $VERSION (orig tarball)")
}

series_files() {
    sed -e 's/#.*//' -e 's/[[:space:]]//g' "$SERIES/series" | grep -v '^$' |
        while read -r p; do printf '%s/%s\n' "$SERIES" "$p"; done
}

# The first part of the series: the fixes to stock QEMU, up to the line
# "#:end-of-stock-fixes" (none if the series has no such line).
fixes_files() {
    grep -q '^#:end-of-stock-fixes' "$SERIES/series" || return 0
    sed -e '/^#:end-of-stock-fixes/,$d' -e 's/#.*//' -e 's/[[:space:]]//g' "$SERIES/series" |
        grep -v '^$' | while read -r p; do printf '%s/%s\n' "$SERIES" "$p"; done
}

# A Part-1 patch that fixes a defect no one commit brought in says so in
# its message, in these words, with the reason after them, instead of a
# Fixes: tag.
NO_SINGLE_COMMIT="This fixes no single commit:"

# The Part-1 patches with neither a Fixes: tag nor that sentence.
untagged() {
    local p
    for p in "$@"; do
        grep -q '^Fixes: [0-9a-f]\{10,\} ("' "$p" || grep -qF "$NO_SINGLE_COMMIT" "$p" ||
            printf '%s\n' "$p"
    done
}

case $CMD in
    tree)
        [ $# -eq 3 ] || usage
        step "upstream $VERSION tree with the series in $3"
        upstream_tree "$3"
        mapfile -t patches < <(series_files)
        (cd "$3" && "${GIT[@]}" am -q "${patches[@]}") || die "git am of $SERIES failed in $3"
        (cd "$3" && git log --oneline | head -n $((${#patches[@]} + 1)))
        ;;
    export)
        [ $# -eq 3 ] || usage
        DIR=$(cd "$3" && pwd)
        step "export $DIR into $SERIES"
        base=$(cd "$DIR" && git rev-list --max-parents=0 HEAD)
        out=$(mktemp -d)
        # The project's identity for the cover letter too (format-patch
        # writes the committer's), not this machine's.
        (cd "$DIR" && "${GIT[@]}" format-patch -q --cover-letter -o "$out" "$base") ||
            die "git format-patch failed"
        cover=$out/0000-cover-letter.patch
        if [ -f "$SERIES/0000-cover-letter.patch" ]; then
            # Keep the subject and the text (up to the shortlog) written
            # for the last export.
            python3 - "$SERIES/0000-cover-letter.patch" "$cover" <<'EOF'
import re, sys
old = open(sys.argv[1]).read()
new = open(sys.argv[2]).read()
subj = re.search(r"^Subject: \[PATCH [0-9]+/[0-9]+\] (.*(?:\n .*)*)", old, re.M).group(1)
blurb = re.search(r"\n\n(.*?)\n\npostcopy-rs developers \(", old, re.S).group(1)
new = new.replace("*** SUBJECT HERE ***", subj).replace("*** BLURB HERE ***", blurb)
open(sys.argv[2], "w").write(new)
EOF
        fi
        mkdir -p "$SERIES"
        rm -f "$SERIES"/*.patch
        for f in "$out"/*.patch; do
            # No commit ids: they only name this machine's commits.
            sed -e '1s/^From [0-9a-f]\{40\} /From 0000000000000000000000000000000000000000 /' \
                "$f" >"$SERIES/$(basename "$f")"
        done
        # The new names go into the old series' slots, so that its comments
        # and its end-of-fixes marker stay after as many patches as before.
        touch "$SERIES/series"
        (cd "$SERIES" && for f in [0-9]*.patch; do
            case $f in
                0000-*) ;;
                *) printf '%s\n' "$f" ;;
            esac
        done) >"$out/names"
        python3 - "$SERIES/series" "$out/names" <<'PY'
import sys
old = open(sys.argv[1]).read().splitlines()
names = open(sys.argv[2]).read().split()
out = []
for line in old:
    if line.strip() and not line.lstrip().startswith("#"):
        if names:
            out.append(names.pop(0))
    else:
        out.append(line)
out += names
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
        rm -rf "$out"
        cat "$SERIES/series"
        ! grep -q '\*\*\* SUBJECT HERE \*\*\*' "$SERIES/0000-cover-letter.patch" ||
            warn "write the cover letter's subject and text in $SERIES/0000-cover-letter.patch"
        ;;
    build-each)
        [ $# -eq 4 ] || usage
        SRC=$(cd "$3" && pwd -P) BUILDDIR=$(cd "$4" && pwd -P)
        [ -f "$BUILDDIR/build.ninja" ] || die "$BUILDDIR is not a configured build"
        mapfile -t patches < <(series_files)
        popts=(-s -p1 --batch --fuzz=0 --no-backup-if-mismatch --reject-file=-)
        # The build is configured --disable-werror (release tarballs build
        # so), but QEMU's own git builds use -Werror: a warning a patch
        # brings in fails its step too.
        build() {
            # Before the series' meson option exists, a reconfigure drops
            # it; from the patch that adds it on, the library is wanted.
            if grep -q "^option('postcopy_rs'" "$SRC/meson_options.txt"; then
                "$BUILDDIR/pyvenv/bin/meson" configure "$BUILDDIR" -Dpostcopy_rs=enabled \
                    >"$BUILDDIR/build-each.log" 2>&1 || { tail -20 "$BUILDDIR/build-each.log" >&2; return 1; }
            fi
            PATH="$PCRS_VENV/bin:$PATH" ninja -C "$BUILDDIR" qemu-system-x86_64 \
                tests/qtest/migration-test >"$BUILDDIR/build-each.log" 2>&1 || {
                grep -E -A12 'error|FAILED' "$BUILDDIR/build-each.log" | head -40 >&2
                return 1
            }
            if grep -q 'warning:' "$BUILDDIR/build-each.log"; then
                grep -A6 'warning:' "$BUILDDIR/build-each.log" | head -40 >&2
                return 1
            fi
        }
        step "revert the series in $SRC"
        for ((i = ${#patches[@]} - 1; i >= 0; i--)); do
            (cd "$SRC" && patch -R "${popts[@]}" <"${patches[$i]}") ||
                die "$(basename "${patches[$i]}") does not revert cleanly: is the whole series applied to $SRC?"
        done
        fail=0
        step "build without the series"
        if build; then echo "PASS  $VERSION: builds without the series"; else
            echo "FAIL  $VERSION: does not build without the series"; fail=1; fi
        for p in "${patches[@]}"; do
            step "apply and build $(basename "$p")"
            (cd "$SRC" && patch "${popts[@]}" <"$p") || die "$(basename "$p") does not apply"
            if build; then
                echo "PASS  $VERSION: builds with the series up to $(basename "$p")"
            else
                echo "FAIL  $VERSION: does not build with the series up to $(basename "$p")"
                fail=1
            fi
        done
        exit "$fail"
        ;;
    check)
        [ $# -eq 2 ] || usage
        [ -f "$SERIES/series" ] || die "$SERIES/series not found"
        work=$(mktemp -d "${TMPDIR:-/tmp}/pcrs-series-$VERSION.XXXXXX")
        trap 'rm -rf "$work" || true' EXIT
        mapfile -t patches < <(series_files)
        fail=0

        step "git am onto upstream $VERSION"
        upstream_tree "$work/git"
        if (cd "$work/git" && "${GIT[@]}" am -q "${patches[@]}"); then
            echo "PASS  $VERSION: all ${#patches[@]} patches apply with git am to the upstream tree"
        else
            echo "FAIL  $VERSION: git am onto the upstream tree"
            fail=1
        fi

        step "the stock fixes stand alone"
        mapfile -t fixes < <(fixes_files)
        if [ "${#fixes[@]}" -eq 0 ]; then
            echo "FAIL  $VERSION: the series marks no stock fixes (#:end-of-stock-fixes)"
            fail=1
        elif grep -iH 'postcopy.rs' "${fixes[@]}" | grep -vE ':(From|Signed-off-by): '; then
            echo "FAIL  $VERSION: a stock fix above names postcopy-rs (beyond its author)"
            fail=1
        elif ! untagged "${fixes[@]}" | grep -q . ; then
            echo "PASS  $VERSION: ${#fixes[@]} stock fixes come first, each with a Fixes: tag (or the reason it has none), none naming postcopy-rs"
        else
            echo "FAIL  $VERSION: stock fixes with neither a Fixes: tag nor \"$NO_SINGLE_COMMIT\":"
            untagged "${fixes[@]}"
            fail=1
        fi

        step "nothing new on the wire"
        # No private return-path message and no new migration capability:
        # both need upstream's agreement first.
        if grep -HnE '^\+[[:space:]]*MIG_RP_MSG_[A-Z0-9_]+[[:space:]]*(=[^,]*)?,|^\+.*DEFINE_PROP_MIG_CAP\(' "${patches[@]}"; then
            echo "FAIL  $VERSION: a patch adds a return-path message or a migration capability"
            fail=1
        else
            echo "PASS  $VERSION: no patch adds a return-path message or a migration capability"
        fi

        step "checkpatch.pl"
        bad=0
        for p in "${patches[@]}"; do
            # -q prints nothing for a clean patch; warnings count too.
            rc=0
            out=$(cd "$work/git" && ./scripts/checkpatch.pl -q "$p" 2>&1) || rc=$?
            if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
                printf '%s:\n%s\n' "$(basename "$p")" "$out"
                bad=1
            fi
        done
        if [ "$bad" -eq 0 ]; then
            echo "PASS  $VERSION: checkpatch.pl is clean on every patch"
        else
            echo "FAIL  $VERSION: checkpatch.pl"
            fail=1
        fi

        step "patch -p1 onto Debian's source"
        dsc=$(printf '%s\n' "$DL"/qemu_"$VERSION"+ds-*.dsc | sort -V | tail -n1)
        [ -e "$dsc" ] || die "no Debian source for $VERSION in $DL: run scripts/qemu-fetch.sh"
        dpkg-source -x "$dsc" "$work/deb" >/dev/null 2>&1 || die "dpkg-source -x $dsc failed"
        ok=1
        for p in "${patches[@]}"; do
            if ! (cd "$work/deb" && patch -s -p1 --batch --forward --fuzz=0 \
                --no-backup-if-mismatch --reject-file=- <"$p") >/dev/null; then
                echo "  $(basename "$p") does not apply to $(basename "$dsc" .dsc)"
                ok=0
                break
            fi
        done
        if [ "$ok" -eq 1 ]; then
            echo "PASS  $VERSION: the series applies with patch -p1 to $(basename "$dsc" .dsc)"
        else
            echo "FAIL  $VERSION: patch -p1 onto Debian's source"
            fail=1
        fi
        exit "$fail"
        ;;
    *) usage ;;
esac
