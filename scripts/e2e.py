#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""End-to-end postcopy tests that QEMU's qtests lack, on the demo's
machinery (scripts/postcopy_demo/) with QEMU's own boot block guest:
hugepage-backed guest RAM (2 MiB, 1 GiB where the kernel grants it), two
RAM blocks of 4 KiB and 2 MiB, mismatched page sizes both ways (the
source's error names both, its RAM stays intact, a retry works), a page
filled behind the destination's back (postcopy pauses on EEXIST), a page
request served at once by a source whose rate limit is exceeded; plus a
blocktime benchmark, patched against unpatched QEMU.

  e2e.py test [--only NAME ...]     the scenarios; "N passed, N failed"
  e2e.py blocktime [--runs N]       postcopy-blocktime, patched vs unpatched

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
from postcopy_demo.scenarios import blocktime_bench, e2e  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for kind in ("patched", "unpatched"):
        ap.add_argument("--" + kind, help="%s qemu-system-x86_64 (default build/qemu-%s/"
                        "qemu-system-x86_64)" % (kind, kind))
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("test")
    t.add_argument("--only", nargs="*", default=[], choices=list(e2e.TESTS))
    b = sub.add_parser("blocktime")
    b.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    binaries = {k: getattr(a, k) or os.path.join("build", "qemu-" + k, "qemu-system-x86_64")
                for k in ("patched", "unpatched")}

    def out(line):
        print(line, flush=True)

    with SignalGuard():
        try:
            if a.cmd == "test":
                return e2e.run_tests(set(a.only), binaries["patched"], out)
            return blocktime_bench.run_blocktime(a.runs, binaries, out)
        except KeyboardInterrupt:
            return 130
        finally:
            cleanup_all()


if __name__ == "__main__":
    sys.exit(main())
