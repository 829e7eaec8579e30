# SPDX-License-Identifier: GPL-2.0-or-later
"""scripts/qemu-test.sh's blocktime check (scripts/e2e.py check
blocktime): QEMU 10.1+'s postcopy blocktime and latency accounting.

Boots migration-test's guest (the boot sector of
tests/qtest/migration/i386/a-b-bootblock.h: it writes a byte of every page
of 1-100 MiB, over and over) on the source build and migrates it with
postcopy (postcopy-ram and postcopy-blocktime on both sides; the switch
comes after 20 MiB of precopy at 30 MiB/s, and postcopy's background
stream is held to 20 MiB/s, so the destination faults) to the destination
build, until the destination has completed; then reads the destination's
query-migrate and its trace of the blocktime events
(postcopy_blocktime_begin, one per fault accounted, and
postcopy_blocktime_end_one, one per fault resolved).  It passes when the
destination reports
  - a non-zero postcopy-latency, and a postcopy-latency-dist whose counts
    are not all zero;
  - histogram counts adding up exactly to the faults QEMU accounted (the
    begin events), every one of them resolved (the end_one events);
  - the guest still running (a fresh 'B' on its serial port);
  - on a patched build, postcopy-rs's own page latency
    (postcopy_rs_incoming_latency) in the same 24 buckets, adding up to
    the pages it timed: at least one, and no more than QEMU's count (QEMU
    counts every blocked thread per page, the library each page once).
Once the destination has completed every page has been placed, so no fault
can begin or end any more: the figures are final and the check is exact.
A fault path that skips the begin mark leaves the histogram empty and
fails it."""

from typing import List, Tuple

from ..options import Options
from ..session import Session
from ..vm import has_trace_event, parse_latency, trace_events
from . import Failure

RAM = "150M@4K"
LIB_LATENCY = "postcopy_rs_incoming_latency"
LATENCY_FIELDS = ("postcopy-latency", "postcopy-latency-dist", "postcopy-vcpu-latency",
                  "postcopy-non-vcpu-latency")


def options(src: str, dst: str, bootblock: str, logdir: str) -> Options:
    return Options(
        guest="bootblock", bootblock=bootblock, smp=1, src_ram=RAM, dst_ram=RAM,
        src_binary=src, dst_binary=dst,
        capabilities=["postcopy-blocktime"],
        qemu_args=["-trace", "enable=postcopy_blocktime_*"],
        # Precopy must not converge before the switch: the destination is
        # to fault on pages it does not have.  After it, the background
        # stream is held back too, so that the guest, which keeps writing
        # every page, faults on the destination whatever the timing (else
        # it may find every page there already).
        switch_after=20, max_bandwidth=30, postcopy_bandwidth=20, downtime_limit=1,
        timeout=120, verify_source=False, progress="none", quiet=True, logdir=logdir)


def check(label: str, src: str, dst: str, bootblock: str, logdir: str,
          out=print) -> List[Tuple[str, bool]]:
    """Run the migration; (criterion, met) per criterion."""
    with Session(options(src, dst, bootblock, logdir)) as s:
        vm_src = s.start_source()
        vm_dst = s.start_destination()
        r = s.migrate(vm_src, vm_dst)
        if r["status"] != "completed" or r["error"]:
            raise Failure("migration %s: %s\n%s\n%s" % (
                r["status"], r["error"], r.get("source_stderr", ""),
                r.get("destination_stderr", "")))
        info = r["destination_info"]
        bs = vm_dst.console.count("B")
        if not vm_dst.console.wait_count("B", bs, 30):
            raise Failure("no fresh 'B' from the guest on the destination within 30 s")
        # Stopped before their traces are read: QEMU has written them all.
        s.stop(vm_src)
        s.stop(vm_dst)
        trace, dst_binary = vm_dst.stderr_path, vm_dst.binary
    begins = len(trace_events(trace, "postcopy_blocktime_begin"))
    ends = len(trace_events(trace, "postcopy_blocktime_end_one"))
    dist = info.get("postcopy-latency-dist") or []
    latency = info.get("postcopy-latency", 0)
    out("  %s: postcopy-blocktime %s ms, postcopy-vcpu-blocktime %s ms"
        % (label, info.get("postcopy-blocktime"), info.get("postcopy-vcpu-blocktime")))
    out("  %s: postcopy-latency %s ns, postcopy-vcpu-latency %s ns, "
        "postcopy-non-vcpu-latency %s ns" % (label, latency, info.get("postcopy-vcpu-latency"),
                                             info.get("postcopy-non-vcpu-latency")))
    out("  %s: postcopy-latency-dist %s (sum %d)" % (label, dist, sum(dist)))
    out("  %s: faults accounted (postcopy_blocktime_begin) %d, resolved "
        "(postcopy_blocktime_end_one) %d" % (label, begins, ends))
    checks = []
    if has_trace_event(dst_binary, LIB_LATENCY):
        lib = parse_latency(trace) or {}
        ldist = lib.get("dist") or []
        out("  %s: postcopy-rs page latency %s (pages %s, p50 <= %s us, p99 <= %s us, "
            "max %s us, mean %s us)" % (label, ldist, lib.get("pages"), lib.get("p50_us"),
                                        lib.get("p99_us"), lib.get("max_us"),
                                        lib.get("mean_us")))
        # QEMU counts each blocked thread per page, the library each page
        # once: never more than QEMU, and the same buckets.
        checks += [
            ("postcopy-rs traced its page latency in 24 buckets adding up to its pages",
             len(ldist) == 24 and sum(ldist) == lib.get("pages", -1)),
            ("postcopy-rs timed at least one page, and no more than the faults QEMU accounted",
             0 < lib.get("pages", 0) <= sum(dist)),
        ]
    return checks + [
        ("query-migrate has the 10.1+ latency fields", all(k in info for k in LATENCY_FIELDS)),
        ("postcopy-latency is non-zero", latency > 0),
        ("postcopy-latency-dist has 24 buckets, not all zero",
         len(dist) == 24 and sum(dist) > 0),
        ("the histogram adds up to the faults QEMU accounted, all resolved",
         sum(dist) == begins == ends),
    ]
