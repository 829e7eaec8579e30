# SPDX-License-Identifier: GPL-2.0-or-later
"""What the user sees: messages, the live progress line, the summary."""

import os
import sys
import time

from .options import MiB


class Out:
    """Messages and progress: a live line on a tty, periodic lines otherwise."""

    def __init__(self, mode: str = "auto", interval: float = 2.0, quiet: bool = False):
        self.quiet = quiet
        tty = sys.stdout.isatty()
        self.mode = "none" if quiet else ("tty" if (mode == "auto" and tty) else
                                          ("lines" if mode == "auto" else mode))
        self.interval = interval
        self.live = False
        self.last_line = 0.0
        self.last_key = None

    def say(self, msg: str = ""):
        if self.quiet:
            return
        if self.live:
            sys.stdout.write("\r\x1b[K")
            self.live = False
        print(msg, flush=True)

    def warn(self, msg: str):
        self.say("WARNING: " + msg)

    def progress(self, line: str, key=None, force=False):
        if self.mode == "none":
            return
        if self.mode == "tty":
            sys.stdout.write("\r\x1b[K" + line)
            sys.stdout.flush()
            self.live = True
            return
        now = time.monotonic()
        if force or key != self.last_key or now - self.last_line >= self.interval:
            print(line, flush=True)
            self.last_line = now
            self.last_key = key

    def end_progress(self):
        if self.live:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.live = False


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit, div in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if n >= div:
            return "%.1f %s" % (n / div, unit)
    return "%d B" % n


def fmt_ms(ms) -> str:
    if ms is None:
        return "-"
    return "%d ms" % ms if ms < 10000 else "%.1f s" % (ms / 1000.0)


def fmt_us(us) -> str:
    if us is None:
        return "-"
    if us < 1000:
        return "%d us" % us
    if us < 1000000:
        return "%.3g ms" % (us / 1000.0)
    return "%.3g s" % (us / 1000000.0)


def bucket_label(i: int, last: bool) -> str:
    """Bucket i of postcopy-latency-dist: [2^i, 2^(i+1)) us (from 0 for
    the first, no end for the last)."""
    lo = fmt_us(0 if i == 0 else 1 << i)
    if last:
        return lo + "+"
    hi = fmt_us(1 << (i + 1))
    if lo.split()[1] == hi.split()[1]:
        lo = lo.split()[0]
    return "%s-%s" % (lo, hi)


def latency_lines(lat: dict) -> list:
    """The library's fault-to-placement latency (postcopy_rs_incoming_latency),
    as summary lines: the figures, then the non-empty buckets."""
    lines = [("dst page latency",
              "p50 <= %s, p99 <= %s, max %s, mean %s over %s host pages "
              "(library: first fault read to placement; p50/p99 are bucket ends)"
              % (fmt_us(lat.get("p50_us")), fmt_us(lat.get("p99_us")),
                 fmt_us(lat.get("max_us")), fmt_us(lat.get("mean_us")), lat.get("pages"))
              + "".join("; %s %d not timed (%s)" % (k, lat[k], why)
                        for k, why in (("untracked", "no room in the library's table"),
                                       ("abandoned", "unresolved at the thread's stop"))
                        if lat.get(k)))]
    dist = lat.get("dist") or []
    cells = ["%s: %d" % (bucket_label(i, i == len(dist) - 1), n)
             for i, n in enumerate(dist) if n]
    if cells:
        lines.append(("  histogram", ", ".join(cells)))
    return lines


def progress_line(elapsed: float, info: dict, guest_dirty_rate=None) -> str:
    """One line from query-migrate's answer (and the guest's own dirty rate)."""
    ram = info.get("ram", {})
    parts = ["[%5.1fs] %-15s" % (elapsed, info.get("status", "?"))]
    if ram:
        parts.append("sent %s" % fmt_bytes(ram.get("transferred", 0)))
        parts.append("remaining %s" % fmt_bytes(ram.get("remaining", 0)))
        # QEMU's dirty-pages-rate is only measured at a bitmap sync (the end
        # of a precopy pass); the guest's own count is always there.
        rate = ram.get("dirty-pages-rate", 0)
        if rate:
            parts.append("dirty %d pages/s" % rate)
        elif guest_dirty_rate is not None:
            parts.append("guest dirties %d pages/s" % guest_dirty_rate)
        parts.append("%.0f Mbit/s" % ram.get("mbps", 0))
        parts.append("postcopy requests %d" % ram.get("postcopy-requests", 0))
    return parts[0] + " " + ", ".join(parts[1:])


def _rel(path: str) -> str:
    return os.path.relpath(path) if path.startswith(os.getcwd()) else path


def print_summary(r: dict, out=sys.stdout, title="postcopy migration summary"):
    """The summary of a run_migration() result; its last line is the verdict."""
    def p(label, value):
        print("  %-24s %s" % (label, value), file=out)

    print("", file=out)
    if r.get("status") is None:
        # It never got to migrate: only the error matters.
        print("ERROR: " + (r.get("error") or "unknown"), file=out)
        print("FAILED", file=out)
        return
    print("==== %s ====" % title, file=out)
    for label, key in (("driver", "driver"), ("QEMU", "qemu")):
        if r.get(key):
            p(label, r[key])
    if r.get("accel_note"):
        p("accelerator", r["accel_note"])
    if r.get("workload"):
        p("guest workload", r["workload"].replace("WORKLOAD ", ""))
    if r.get("src_ram"):
        p("guest RAM", "source %s -> destination %s" % (r["src_ram"], r["dst_ram"]))
    if r.get("transport"):
        p("transport", r["transport"])
    p("result", r["status"] + (
        "  (postcopy never started: precopy finished first)"
        if r["status"] == "completed" and not r.get("postcopy_started") else ""))
    if r["status"] != "completed":
        p("source after failure", "running, guest intact" if r.get("source_running") and
          (r.get("source_verify_after") or "").startswith("VERIFY OK") else
          "running" if r.get("source_running") else "NOT running")
    if r.get("total_time_ms") is not None:
        p("total time", "%s (%s), setup %s" % (fmt_ms(r["total_time_ms"]),
                                               r.get("total_time_by", "QEMU"),
                                               fmt_ms(r.get("setup_time_ms"))))
    if r.get("downtime_ms") is not None:
        p("downtime", fmt_ms(r["downtime_ms"]))
    sw = r.get("switch_at_bytes")
    switched = "  (switched to postcopy at %s sent, %.1f s in)" % (
        fmt_bytes(sw), r.get("switch_at_s", 0)) if sw else ""
    if r.get("precopy_bytes") is not None:
        p("precopy", fmt_bytes(r.get("precopy_bytes")) + switched)
        p("postcopy", fmt_bytes(r.get("postcopy_bytes")))
        p("while stopped", fmt_bytes(r.get("downtime_bytes")))
        switched = ""
    if r.get("transferred_bytes") is not None:
        p("total sent", fmt_bytes(r.get("transferred_bytes")) + switched)
    if r.get("postcopy_requests") is not None:
        p("page requests", "%d received by the source" % r["postcopy_requests"])
    ld = r.get("library_destination")
    if ld:
        p("dst fault thread", "faults %s, reads %s, pages requested %s, deduped %s, pauses %s"
          % (ld.get("faults"), ld.get("reads"), ld.get("requested"), ld.get("deduped"),
             ld.get("pauses")))
    if r.get("blocktime_ms") is not None:
        vb = r.get("vcpu_blocktime_ms")
        p("postcopy blocktime", "%s with every vCPU blocked at once%s" % (
            fmt_ms(r["blocktime_ms"]),
            "; per vCPU %s" % ", ".join(fmt_ms(x) for x in vb) if vb else ""))
    elif r.get("postcopy_started") and "blocktime_ms" in r:
        p("postcopy blocktime", "not reported by the destination")
    ls = r.get("library_source")
    if ls is not None or r.get("postcopy_started"):
        p("library (source)", "discard: blocks %s, runs %s, pages %s, hostpage bits set %s"
          % (ls.get("blocks"), ls.get("runs"), ls.get("pages"), ls.get("hostpage_bits_set"))
          if ls else "no postcopy_rs_discard_stats trace line (not a patched QEMU?)")
    if ld or r.get("postcopy_started"):
        p("library (destination)", "placed %s pages (+%s zero), EEXIST refused %s"
          % (ld.get("placed"), ld.get("zero"), ld.get("eexist"))
          if ld else "no postcopy_rs_incoming_stats trace line (not a patched QEMU?)")
    if r.get("library_latency"):
        for label, text in latency_lines(r["library_latency"]):
            p(label, text)
    for label, text in r.get("extra_summary") or ():
        p(label, text)
    if r.get("source_verify"):
        p("guest before", r["source_verify"] + " (on the source)")
    if r.get("source_verify_after"):
        p("guest after failure", r["source_verify_after"] + " (on the source)")
    if r.get("verify"):
        p("guest verdict", r["verify"] + " (on the destination, after %.1f s)"
          % (r.get("verify_seconds") or 0))
    if r.get("run_time_s") is not None:
        p("wall time", "%.1f s for the whole run" % r["run_time_s"])
    if r.get("logdir"):
        p("logs", _rel(r["logdir"]))
    if r.get("error"):
        print("", file=out)
        print("ERROR: " + r["error"], file=out)
        for k in ("source_stderr", "destination_stderr"):
            if r.get(k):
                print(r[k], file=out)
    print("", file=out)
    print(r.get("verdict", "VERIFY OK: postcopy migration preserved every guest page")
          if r.get("verify_ok") else "FAILED", file=out)
