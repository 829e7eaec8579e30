#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""End-to-end postcopy tests that QEMU's qtests lack, on the demo's
machinery (scripts/postcopy_demo/) with QEMU's own boot block guest:
hugepage-backed guest RAM (2 MiB, 1 GiB where the kernel grants it), two
RAM blocks of 4 KiB and 2 MiB, mismatched page sizes both ways (the
destination's error names both, the source's RAM stays intact, a second
migration to a matching destination works), a page
filled behind the destination's back (postcopy pauses on EEXIST), a page
request served at once by a source whose rate limit is exceeded; plus a
blocktime benchmark, patched against unpatched QEMU; and the checks
scripts/qemu-test.sh makes between given builds.

  e2e.py test [--only NAME ...]     the scenarios; "N passed, N failed"
  e2e.py --patched STOCK test --expect-bug --only NAME ...
                                    on a QEMU without the stock fixes, each
                                    fix's test must see its bug
  e2e.py blocktime [--runs N]       postcopy-blocktime, patched vs unpatched
  e2e.py check pagesize --src BIN --dst BIN --expect {words,old}
                        [--workdir DIR] [--label TEXT]
                                    a 4 KiB -> 2 MiB postcopy migration must
                                    fail, the source as stock QEMU does and
                                    the destination with the error --expect
                                    names (scenarios/pagesize_error.py)
  e2e.py check blocktime --src BIN --dst BIN --bootblock HEADER
                         [--workdir DIR] [--label TEXT]
                                    QEMU 10.1+'s blocktime and latency
                                    accounting add up to the faults
                                    (scenarios/latency_accounting.py)

A check prints its figures and a "PASS"/"FAIL" line per criterion, and
exits 1 if any fails.

Needs root (hugepage reservations), KVM where /dev/kvm works (else TCG).
Every QEMU started is killed on every exit path; hugepage reservations are
given back."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from postcopy_demo.qmp_venv import use_qmp_venv  # noqa: E402

use_qmp_venv()
from postcopy_demo.procs import SignalGuard, cleanup_all  # noqa: E402
from postcopy_demo.scenarios import (  # noqa: E402
    blocktime_bench,
    e2e,
    latency_accounting,
    pagesize_error,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for kind in ("patched", "unpatched"):
        ap.add_argument("--" + kind, help="%s qemu-system-x86_64 (default build/qemu-%s/"
                        "qemu-system-x86_64)" % (kind, kind))
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("test")
    t.add_argument("--only", nargs="*", default=[], choices=list(e2e.TESTS))
    t.add_argument("--expect-bug", action="store_true",
                   help="on a QEMU without the series' stock fixes: each test (of %s) "
                   "must see the bug its fix removes" % ", ".join(e2e.BUG_TESTS))
    sub.add_parser("bug-tests", help="the names of the stock fixes' tests (test "
                   "--expect-bug takes them), one a line")
    b = sub.add_parser("blocktime")
    b.add_argument("--runs", type=int, default=3)
    c = sub.add_parser("check").add_subparsers(dest="check", required=True)
    for name in ("pagesize", "blocktime"):
        p = c.add_parser(name)
        p.add_argument("--src", required=True, help="the source's qemu-system-x86_64")
        p.add_argument("--dst", required=True, help="the destination's qemu-system-x86_64")
        p.add_argument("--workdir", help="logs here (emptied first)")
        p.add_argument("--label", default=name, help="names the check in its output")
        if name == "blocktime":
            p.add_argument("--bootblock", required=True,
                           help="QEMU's tests/qtest/migration/i386/a-b-bootblock.h")
        else:
            p.add_argument("--expect", choices=list(pagesize_error.EXPECTATIONS),
                           required=True, help="what the destination's error must say")
    a = ap.parse_args()
    binaries = {k: getattr(a, k) or os.path.join("build", "qemu-" + k, "qemu-system-x86_64")
                for k in ("patched", "unpatched")}

    def out(line):
        print(line, flush=True)

    if a.cmd == "bug-tests":
        for name in e2e.BUG_TESTS:
            out(name)
        return 0

    with SignalGuard():
        try:
            if a.cmd == "test":
                return e2e.run_tests(set(a.only), binaries["patched"], out, a.expect_bug)
            if a.cmd == "check" and a.check == "pagesize":
                return e2e.run_check(a.check, a.label, a.workdir, lambda logdir: (
                    pagesize_error.check(a.label, a.src, a.dst, a.expect, logdir, out)), out)
            if a.cmd == "check":
                return e2e.run_check(a.check, a.label, a.workdir, lambda logdir: (
                    latency_accounting.check(a.label, a.src, a.dst, a.bootblock, logdir,
                                             out)), out)
            return blocktime_bench.run_blocktime(a.runs, binaries, out)
        except KeyboardInterrupt:
            return 130
        finally:
            cleanup_all()


if __name__ == "__main__":
    sys.exit(main())
