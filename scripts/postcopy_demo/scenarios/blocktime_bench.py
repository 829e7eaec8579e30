# SPDX-License-Identifier: GPL-2.0-or-later
"""scripts/e2e.py blocktime: a benchmark of postcopy-blocktime, patched
against unpatched QEMU, on 4 KiB and 2 MiB backed RAM (the boot block
guest; runs of each, median and spread)."""

import os
import statistics
import time

from ..options import ROOT
from . import Failure
from .e2e import GUEST_MB, HUMAN, Context, session


def run_blocktime(runs: int, binaries: dict, out=print) -> int:
    logroot = os.path.join(ROOT, "build", "e2e-runs", "blocktime-" + time.strftime("%Y%m%d-%H%M%S"))
    ctx = Context(logroot, binaries["patched"])
    rows = []
    for ps in ("4K", "2M"):
        for kind in ("unpatched", "patched"):
            samples = []
            for i in range(runs):
                ram = "%dM@%s" % (GUEST_MB, ps)
                with session(ctx, "%s-%s-%d" % (ps, kind, i), src_ram=ram, dst_ram=ram,
                             src_binary=binaries[kind], dst_binary=binaries[kind]) as s:
                    src = s.start_source()
                    dst = s.start_destination()
                    t0 = time.time()
                    r = s.migrate(src, dst)
                    total = time.time() - t0
                    if r["status"] != "completed" or not s.verify(dst)["ok"]:
                        raise Failure("%s %s run %d: %s" % (kind, ps, i, r["error"]))
                    samples.append((r["blocktime_ms"] or 0, total))
            rows.append((ps, kind, samples))
    out("| backing | QEMU | runs | postcopy-blocktime ms (median) | min-max | "
        "migration s (median) |")
    out("|---|---|---:|---:|---:|---:|")
    med = {}
    for ps, kind, s in rows:
        bt = [x[0] for x in s]
        med[(ps, kind)] = statistics.median(bt)
        out("| %s | %s | %d | %.0f | %s-%s | %.1f |" % (
            HUMAN[ps], kind, len(s), med[(ps, kind)], min(bt), max(bt),
            statistics.median(x[1] for x in s)))
    for ps in ("4K", "2M"):
        u, p = med[(ps, "unpatched")], med[(ps, "patched")]
        out("\n%s: patched / unpatched blocktime = %s" % (
            HUMAN[ps], "%.2fx" % (p / u) if u else "n/a"))
    return 0
