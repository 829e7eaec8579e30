#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""The stray EEXIST on 2 MiB hugetlbfs with preempt, reproduced and counted.

A postcopy placement (UFFDIO_COPY) that finds its 2 MiB page already
present fails with EEXIST, and stock QEMU pauses postcopy
(docs/QEMU.md, "The stray EEXIST").  This script repeats one bench-e2e
cell (the demo's Linux guest; default random-read/2m/preempt-on, QEMU's
postcopy cap 64 MiB/s, the cell where it was first seen) on one QEMU
build, by default unpatched 10.2.2, and counts the migrations that reach
postcopy and the ones whose destination reports EEXIST, with a 95 %
Wilson interval for the rate.

--pressure churn runs, beside the migrations, another user of 2 MiB
hugepages, as the library's hugetlbfs tests were when the EEXIST was first
seen: a process that adds 64 pages to the pool, maps and touches them,
unmaps them and takes them out of the pool again, every 0-50 ms.  A run
whose QEMU could not start is counted, but not as one that reached
postcopy.  --pressure tests runs the library's own hugetlbfs tests
(`cargo test --release --test uffd_real --test prepage_real hugetlb`) in
a loop instead: what ran beside the migrations then.

For each EEXIST the destination's trace says whether QEMU had placed that
page before (postcopy_place_page*).  The kernel's trace (tracefs,
pagecache_trace.py; --no-ftrace leaves it off) says for every run which
path put each 2 MiB page into the destination's memfd after its discard:
anything but a placement's UFFDIO_COPY is named, with its thread and
stack, as the page an EEXIST would meet.

  eexist-repro.py [--binary QEMU] [--runs N] [--pressure churn|tests|none]
                  [--cell random-read/2m/on] [--out DIR]

As root; exits 0 when every run was classified (whatever the rate)."""

import argparse
import glob
import json
import mmap
import multiprocessing
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from postcopy_demo.qmp_venv import use_qmp_venv  # noqa: E402

use_qmp_venv()
from postcopy_demo import eexist, pagecache_trace  # noqa: E402
from postcopy_demo.benchstats import wilson  # noqa: E402
from postcopy_demo.procs import SignalGuard, cleanup_all  # noqa: E402
from postcopy_demo.scenarios import bench  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NR = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
HUGE = 2 << 20
MAP_HUGETLB = 0x40000
# what eexist.read_log() reads: placements, and the discard's ranges
TRACE = ["postcopy_place_page*", "ram_discard_range"]


def adjust(by: int):
    with open(NR) as f:
        now = int(f.read())
    with open(NR, "w") as f:
        f.write("%d\n" % max(0, now + by))


def churn(stop, n: int = 64):
    """Another hugetlbfs user beside the QEMUs: n more pages into the pool,
    mapped, touched, unmapped, and out of the pool again."""
    while not stop.is_set():
        adjust(n)
        try:
            # no MAP_NORESERVE: a pool too small fails here, not with SIGBUS
            m = mmap.mmap(-1, n * HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB)
            for i in range(n):
                m[i * HUGE] = 1
            m.close()
        except OSError:
            pass
        adjust(-n)
        time.sleep(random.uniform(0, 0.05))


def tests(stop):
    """The library's own hugetlbfs tests, over and over, as when the EEXIST
    was first seen."""
    cmd = ["cargo", "test", "--release", "--locked", "--test", "uffd_real", "--test",
           "prepage_real", "hugetlb"]
    subprocess.run(cmd + ["--no-run"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    while not stop.is_set():
        subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def classify(rec: dict) -> dict:
    """What the destination's log says of this run's EEXIST, if any."""
    text = ""
    for p in glob.glob(os.path.join(rec.get("logdir") or "/nonexistent", "dst*.stderr.log")):
        with open(p, errors="replace") as f:
            text += f.read()
    got = eexist.read_log(text)
    return {"eexist_hosts": got["hosts"], "placed_before": got["placed_before"],
            "library_refusals": got["library"], "discards": got["discards"],
            "reached_postcopy": rec.get("dst_state_at_start") is not None}


def traced_run(cfg, cell, kind, seq: int, outdir: str, ftrace: bool) -> dict:
    """bench.run_one, with the kernel's page cache trace around it: which
    path put each 2 MiB page into the destination's memfd after its
    discard (pagecache_trace.py)."""
    tr = pagecache_trace.PageCacheTrace() if ftrace else None
    note = None
    if tr:
        try:
            tr.start()
        except pagecache_trace.Unavailable as e:
            tr, note = None, str(e)
    lost = 0
    try:
        rec = bench.run_one(cfg, cell, kind, seq, seq)
    finally:
        if tr:
            path = os.path.join(outdir, "pagecache-%03d.txt" % seq)
            lost = tr.stop(path)
    if tr:
        with open(path) as f:
            events, unread = pagecache_trace.parse(f.read())
        rec["pagecache"] = pagecache_trace.destination_adds(events)
        rec["pagecache_events"], rec["pagecache_unread"] = len(events), unread
        rec["pagecache_lost"] = lost
    elif note:
        rec["pagecache_unavailable"] = note
    return rec


def pagecache_line(rec: dict) -> str:
    if "pagecache" not in rec:
        return "; not traced: %s" % rec["pagecache_unavailable"] \
            if rec.get("pagecache_unavailable") else ""
    bad = ""
    if rec["pagecache_lost"] or rec["pagecache_unread"]:
        bad = " (TRACE INCOMPLETE: %d events lost, %d lines unread)" % (
            rec["pagecache_lost"], rec["pagecache_unread"])
    if not rec["pagecache"]:
        return "; no destination file in the trace%s" % bad
    return "; destination's memfd: %s%s" % ("; ".join(
        "%d added in precopy, %d deleted, then %s%s" % (
            v["added_before"], v["deleted"], v["adds_by_path"] or "nothing",
            " STRAY %s" % v["strays"] if v["strays"] else "")
        for v in rec["pagecache"].values()), bad)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(
        ROOT, "build/qemu-10.2.2/unpatched/qemu-system-x86_64"))
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--pressure", choices=["churn", "tests", "none"], default="churn")
    ap.add_argument("--cell", default="random-read/2m/on", help="pattern/page/preempt")
    ap.add_argument("--out", help="results directory (default build/eexist-repro/<time>)")
    ap.add_argument("--no-ftrace", action="store_true",
                    help="without the kernel's trace of who adds 2 MiB pages to page caches")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("eexist-repro.py must run as root (hugepages, userfaultfd)")
    pattern, page, preempt = a.cell.split("/")
    if pattern not in bench.PATTERNS or page not in bench.PAGES or preempt not in bench.PREEMPT:
        sys.exit("--cell: pattern in %s, page in %s, preempt in %s"
                 % (bench.PATTERNS, list(bench.PAGES), list(bench.PREEMPT)))
    binary = os.path.abspath(a.binary)
    if not os.access(binary, os.X_OK):
        sys.exit("%s is missing (make bench-e2e builds it)" % binary)
    outdir = a.out or os.path.join(ROOT, "build", "eexist-repro", time.strftime("%Y%m%d-%H%M%S"))
    cfg = bench.Config(patterns=[pattern], pages=[page], preempt=[preempt], runs=a.runs,
                       binaries={k: binary for k in bench.KINDS}, outdir=outdir,
                       mode="qemu-cap", postcopy_bandwidth=64,
                       qemu_args=[w for ev in TRACE for w in ("-trace", ev)])
    os.makedirs(outdir, exist_ok=True)
    stop = multiprocessing.Event()
    pressure = None
    if a.pressure != "none":
        pressure = multiprocessing.Process(target=churn if a.pressure == "churn" else tests,
                                           args=(stop,), daemon=True)
        pressure.start()
    kind = bench.KINDS[0]
    reached = hits = strays = traced = 0
    print("eexist-repro: %d run(s) of %s on %s, pressure %s; results in %s"
          % (a.runs, a.cell, binary, a.pressure, outdir), flush=True)
    try:
        with SignalGuard(), open(os.path.join(outdir, "results.jsonl"), "a") as f:
            for i in range(a.runs):
                rec = traced_run(cfg, (pattern, page, preempt), kind, i, outdir, not a.no_ftrace)
                rec.update(classify(rec))
                strays += sum(len(v["strays"]) for v in (rec.get("pagecache") or {}).values())
                traced += bool(rec.get("pagecache"))
                reached += rec["reached_postcopy"]
                hits += bool(rec["eexist_hosts"] or rec["library_refusals"])
                f.write(json.dumps(rec, default=str) + "\n")
                f.flush()
                print("[%d/%d] %s%s%s; EEXIST so far %d of %d that reached postcopy"
                      % (i + 1, a.runs, "ok" if rec["ok"] else
                         "FAILED: %s" % (rec["error"] or "?").splitlines()[0][:120],
                         " EEXIST at %s (placed before: %s)"
                         % (",".join(rec["eexist_hosts"]), rec["placed_before"])
                         if rec["eexist_hosts"] else "", pagecache_line(rec), hits, reached),
                      flush=True)
    except KeyboardInterrupt:
        return 130
    finally:
        stop.set()
        if pressure:
            pressure.join(5)
            if pressure.is_alive():
                pressure.terminate()
        cleanup_all()
    lo, hi = wilson(hits, reached)
    print("eexist-repro: EEXIST in %d of %d migrations that reached postcopy (%.1f %%, "
          "95 %% Wilson [%.1f, %.1f] %%); %d run(s) in all%s"
          % (hits, reached, 100.0 * hits / reached if reached else 0.0, 100 * lo, 100 * hi,
             a.runs, "" if a.no_ftrace else "; in the %d run(s) whose destination's memfd the "
             "kernel's trace shows, pages put there after its discard by anything but a "
             "placement: %d" % (traced, strays)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
