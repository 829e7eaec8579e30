#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Postcopy end to end: patched against unpatched QEMU, run by run.

`make bench-e2e` (scripts/bench-e2e.sh builds what it needs, then runs
this): the demo's Linux guest, one workload thread per vCPU, cells =
access pattern x page size x postcopy-preempt, runs paired (one run of
each build, the same workload seed, the builds taking turns going
first) and the cells interleaved pair by pair.  By default the four
patterns on 4 KiB pages with postcopy-preempt, 7 runs of each build;
the whole matrix is --pages 4k,2m --preempt off,on.

Where the cap is (--mode):
  link          (default) the link itself: the QEMUs in two network
                namespaces joined through a third whose port toward the
                destination is shaped (tc tbf, else htb) at --link-rate
                with --link-queue-ms of buffer; no max-postcopy-bandwidth
                on either build unless --postcopy-bandwidth is given
  qemu-cap      the same namespaces, nothing shaped, and
                max-postcopy-bandwidth (--postcopy-bandwidth, default 64
                MiB/s) on both builds
Either way the bytes on the wire are sampled every 0.1 s, and every run
reports their mean and highest 1 s over the postcopy phase and whether
they went over the link or the cap.

Raw results: build/bench-e2e/<time>/results.jsonl; the report (per cell,
the median patched/unpatched ratio and its 95 % bootstrap interval):
report.md there and, unless --quick or --no-doc, docs/BENCHMARKS.md
between the run's markers (the link mode: a short block there, every
figure in docs/bench/<block>.md).

  --quick       smoke test: one cell (seq, 4 KiB, preempt on) in the
                link mode, one run of each build, a 256 MiB guest; fails
                unless every figure was produced (their values are not
                judged)
  --report-from FILE
                no runs: the report of an earlier results.jsonl

Exit status 0 only if every run completed, the guest verified its memory
on the destination and every figure was there.  Needs root (userfaultfd,
hugepages, network namespaces); KVM where it boots the guest, else TCG."""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from postcopy_demo.qmp_venv import use_qmp_venv  # noqa: E402

use_qmp_venv()
from postcopy_demo import bench_e2e_report, bottleneck  # noqa: E402
from postcopy_demo.options import ROOT  # noqa: E402
from postcopy_demo.procs import SignalGuard, cleanup_all  # noqa: E402
from postcopy_demo.scenarios import bench  # noqa: E402

QEMU_VERSION = "10.2.2"
# Preempt on by default.  In the qemu-cap mode (the matrix of docs/BENCHMARKS.md
# up to issue 30) without the cap the local socket sends the whole guest in
# about a second, and without preempt the cap binds the guest's own requests
# too.  The qemu-cap default fit in 45 minutes on the 2-core machine this was
# written on (TCG, 1 GiB: 4 cells x 7 pairs = 56 runs of 12-14 s, 13 min when
# little else ran).  The link mode's runs last longer: the whole guest goes
# through the link, about 17 s of postcopy at 512mbit for 1 GiB.
DEFAULT_PATTERNS = list(bench.PATTERNS)
DEFAULT_PAGES = ["4k"]
DEFAULT_PREEMPT = ["on"]


def csv(choices):
    def parse(s):
        vals = [v.strip() for v in s.split(",") if v.strip()]
        bad = [v for v in vals if v not in choices]
        if bad or not vals:
            raise argparse.ArgumentTypeError("choose from %s" % ", ".join(choices))
        return vals
    return parse


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--patterns", type=csv(bench.PATTERNS), default=DEFAULT_PATTERNS,
                    help="comma-separated (default: %s)" % ",".join(DEFAULT_PATTERNS))
    ap.add_argument("--pages", type=csv(list(bench.PAGES)), default=DEFAULT_PAGES,
                    help="4k, 2m (hugetlbfs) or both (default %s)" % ",".join(DEFAULT_PAGES))
    ap.add_argument("--preempt", type=csv(list(bench.PREEMPT)), default=DEFAULT_PREEMPT,
                    help="postcopy-preempt off, on or both (default %s)"
                    % ",".join(DEFAULT_PREEMPT))
    ap.add_argument("--runs", type=int, default=7, help="runs of each build per cell "
                    "(default %(default)s)")
    ap.add_argument("--quick", action="store_true", help="the smoke test (see above)")
    ap.add_argument("--mem", type=int, help="guest MiB (default 1024; --quick 256)")
    ap.add_argument("--smp", type=int, help="vCPUs (default 4 on hosts with 4 CPUs or more, "
                    "else 2)")
    ap.add_argument("--switch-after", type=int, default=64, metavar="MiB",
                    help="MiB of precopy before the switch (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1, help="workload seed of the first pair")
    ap.add_argument("--prepage", type=int, default=0, metavar="N",
                    help="patched destination pre-pages up to N host pages per fault "
                    "(x-postcopy-prepage-pages; default 0: off); reported in its own "
                    "block of the document")
    ap.add_argument("--mode", choices=bench.MODES, default="link",
                    help="where the cap is (see above; default %(default)s)")
    ap.add_argument("--link-rate", default=bench_e2e_report.DEFAULT_LINK_RATE,
                    metavar="RATE", help="the link mode's rate, in tc's bit units "
                    "(bit, kbit, mbit, gbit, kibit, mibit, gibit; default %(default)s)")
    ap.add_argument("--link-queue-ms", type=float, default=100.0, metavar="MS",
                    help="the link mode's buffer in ms of the rate (default %(default)s: "
                    "as a bottleneck router's, the classic one round trip of a WAN path)")
    ap.add_argument("--postcopy-bandwidth", type=int, metavar="MiB/s",
                    help="max-postcopy-bandwidth of both builds (0: none; default: none in "
                    "the link mode, %d in the qemu-cap mode). Unshaped, the background "
                    "stream otherwise sends the whole guest in about a second and the guest "
                    "barely faults; a cap stands for a link shared with other traffic. QEMU "
                    "sends requested pages past the cap (pre-paged ones too: they ride in the "
                    "same request)" % bench_e2e_report.DEFAULT_POSTCOPY_BANDWIDTH)
    ap.add_argument("--block", metavar="NAME", help="the document's block to rewrite "
                    "(default bench-e2e, with -prepage, and -uncapped or -capped-N off the default "
                    "cap, as the run has them)")
    for kind in bench.KINDS:
        ap.add_argument("--" + kind, metavar="QEMU", default=os.path.join(
            "build", "qemu-" + QEMU_VERSION, kind, "qemu-system-x86_64"),
            help="%s qemu-system-x86_64 (default %%(default)s)" % kind)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--kvm", dest="accel", action="store_const", const="kvm",
                   help="KVM (default: KVM where it boots the guest, else TCG)")
    g.add_argument("--tcg", dest="accel", action="store_const", const="tcg", help="TCG")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per migration")
    ap.add_argument("--out", help="results directory (default build/bench-e2e/<time>)")
    ap.add_argument("--doc", default=os.path.join("docs", "BENCHMARKS.md"),
                    help="document whose bench-e2e section is rewritten (default %(default)s; "
                    "never with --quick)")
    ap.add_argument("--no-doc", action="store_true", help="leave the document alone")
    ap.add_argument("--caveat", help="a sentence printed in bold above the tables")
    ap.add_argument("--report-from", metavar="JSONL", help="report an earlier run's results")
    return ap


def qemu_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
        return out.splitlines()[0].replace("QEMU emulator version ", "") if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def where_the_cap_is(cfg) -> str:
    cap = "max-postcopy-bandwidth %d MiB/s on both builds" % cfg.postcopy_bandwidth \
        if cfg.postcopy_bandwidth else "no max-postcopy-bandwidth"
    if not cfg.shaped():
        return "the qemu-cap mode: nothing shaped, " + cap
    return "the link mode: tc %s at %s, %g ms of queue, %s" % (
        cfg.shaper, bottleneck.rate_text(cfg.link_rate_bps), cfg.link_queue_ms, cap)


def command_line(argv) -> str:
    """The make command that ran (without --caveat: it is printed anyway)."""
    args, skip = [], False
    for x in argv:
        if skip or x.startswith("--caveat"):
            skip = x == "--caveat"
            continue
        args.append(x)
    return 'make bench-e2e ARGS="%s"' % " ".join(args) if args else "make bench-e2e"


def main() -> int:
    a = parser().parse_args()
    if a.quick:
        a.patterns, a.pages, a.runs = ["seq"], ["4k"], 1
        a.mem = a.mem or 256
        a.no_doc = True
    if a.runs < 1:
        sys.exit("--runs must be >= 1")
    if a.postcopy_bandwidth is None:
        a.postcopy_bandwidth = 0 if a.mode == "link" else \
            bench_e2e_report.DEFAULT_POSTCOPY_BANDWIDTH
    try:
        link_bps = bottleneck.parse_rate(a.link_rate)
    except ValueError as e:
        sys.exit("--link-rate %s: %s" % (a.link_rate, e))
    if a.link_queue_ms <= 0:
        sys.exit("--link-queue-ms must be > 0")
    binaries = {k: os.path.abspath(os.path.join(ROOT, getattr(a, k)) if not
                                   os.path.isabs(getattr(a, k)) else getattr(a, k))
                for k in bench.KINDS}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = a.out or os.path.join(ROOT, "build", "bench-e2e", stamp +
                                   ("-quick" if a.quick else ""))
    smp = a.smp or (4 if (os.cpu_count() or 1) >= 4 else 2)
    cfg = bench.Config(patterns=a.patterns, pages=a.pages, preempt=a.preempt, runs=a.runs,
                       binaries=binaries, outdir=outdir, mem=a.mem or 1024, smp=smp,
                       switch_after=a.switch_after, accel=a.accel or "auto",
                       timeout=a.timeout, seed=a.seed, prepage=a.prepage,
                       postcopy_bandwidth=a.postcopy_bandwidth, mode=a.mode,
                       link_rate_bps=link_bps, link_queue_ms=a.link_queue_ms)
    if a.postcopy_bandwidth < 0 or a.prepage < 0:
        sys.exit("--postcopy-bandwidth and --prepage must be >= 0")
    load_start = "%.1f" % os.getloadavg()[0]
    load_end, shaper_probe = None, None
    if a.report_from:
        with open(a.report_from) as f:
            recs = [json.loads(ln) for ln in f if ln.strip()]
        outdir = os.path.dirname(os.path.abspath(a.report_from))
        load_start = "%.1f" % recs[0]["loadavg_before"] if recs else "?"
        load_end = "%.1f" % recs[-1]["loadavg_after"] if recs else "?"
    else:
        for k, b in binaries.items():
            if not os.access(b, os.X_OK):
                sys.exit("ERROR: %s QEMU %s is missing (make bench-e2e builds it)" % (k, b))
        if cfg.shaped():
            kind, shaper_probe = bottleneck.probe()
            if not kind:
                sys.exit("ERROR: the link mode needs tc's tbf or htb qdisc (%s); "
                         "--mode qemu-cap does without" % shaper_probe)
            cfg.shaper = kind
        print("bench-e2e: %d cell(s) x %d run(s) of each build, %d MiB, %d vCPUs; %s; "
              "results in %s"
              % (len(cfg.cells()), cfg.runs, cfg.mem, cfg.smp, where_the_cap_is(cfg),
                 os.path.relpath(outdir, ROOT)), flush=True)
        with SignalGuard():
            try:
                recs = bench.run_bench(cfg, out=lambda s: print(s, flush=True))
            except KeyboardInterrupt:
                return 130
            finally:
                cleanup_all()
    first = recs[0] if recs else {}
    meta = dict(bench_e2e_report.machine())
    meta.update({
        "date": (recs[-1]["started"] if a.report_from and recs else
                 time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())),
        "command": command_line(sys.argv[1:]) if not a.report_from else
        "make bench-e2e (report regenerated from its results.jsonl)",
        "load_start": load_start, "load_end": load_end or "%.1f" % os.getloadavg()[0],
        "accel_note": first.get("accel_note"),
        "qemu_version": qemu_version(first.get("binary") or binaries["patched"]),
        "patched": os.path.relpath(binaries["patched"], ROOT),
        "unpatched": os.path.relpath(binaries["unpatched"], ROOT),
        "mem": first.get("mem_mib", cfg.mem), "smp": first.get("smp", cfg.smp),
        "precopy_rate": cfg.precopy_rate,
        "switch_after": first.get("switch_after_mib", cfg.switch_after),
        "runs": max((r["pair"] + 1 for r in recs), default=0),
        "results": os.path.relpath(os.path.join(outdir, "results.jsonl"), ROOT),
        "caveat": a.caveat,
        "prepage": max((r.get("prepage") or 0 for r in recs), default=0)
        if a.report_from else a.prepage,
        "postcopy_bandwidth": max((r.get("postcopy_bandwidth_mib") or 0 for r in recs),
                                  default=0) if a.report_from else a.postcopy_bandwidth,
        # records from before the link mode ran with QEMU's cap over a unix socket
        "mode": first.get("mode") if a.report_from else a.mode,
        "link": first.get("link"),
        "link_rate_bps": first.get("link_rate_bps"),
        "link_rate": bottleneck.rate_text(first["link_rate_bps"])
        if first.get("link_rate_bps") else None,
        "shaper_probe": None if a.report_from else shaper_probe,
    })
    modes = {r.get("mode") for r in recs}
    if len(modes) > 1:
        sys.exit("ERROR: results of both modes (%s): report them separately"
                 % ", ".join(sorted(str(m) for m in modes)))
    meta_path = os.path.join(outdir, "meta.json")
    if a.report_from and os.path.exists(meta_path):
        # the run's own date, command line, load and caveat
        with open(meta_path) as f:
            meta.update({k: v for k, v in json.load(f).items()
                         if v is not None and not (k == "caveat" and a.caveat)})
    section = bench_e2e_report.render(recs, meta)
    os.makedirs(outdir, exist_ok=True)
    if not a.report_from:
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write(section)
    print("\n" + section)
    if not a.no_doc:
        doc = a.doc if os.path.isabs(a.doc) else os.path.join(ROOT, a.doc)
        block = a.block or bench_e2e_report.block_name(meta)
        if meta.get("mode") == "link":
            # the document keeps the overview; every figure goes to a file of its own
            rel = os.path.join("bench", block + ".md")
            detail = os.path.join(os.path.dirname(doc), rel)
            os.makedirs(os.path.dirname(detail), exist_ok=True)
            with open(detail, "w") as f:
                f.write("<!-- generated by make bench-e2e; rewritten by the next run of "
                        "this block -->\n" + section.replace("## ", "# ", 1))
            print("bench-e2e: %s written" % os.path.relpath(detail, ROOT))
            section = bench_e2e_report.render_short(recs, meta, rel)
        bench_e2e_report.write_doc(doc, section, block)
        print("bench-e2e: %s updated (between its %s markers)"
              % (os.path.relpath(doc, ROOT), block))
    failed = [r for r in recs if not r.get("ok")]
    for r in failed:
        print("FAILED run %d (%s, %s): %s" % (r["seq"], r["cell"], r["kind"],
                                             (r.get("error") or "?").splitlines()[0]))
    miss = bench_e2e_report.missing(recs)
    for m in miss:
        print("MISSING figure: " + m)
    print("bench-e2e: %d run(s), %d failed, %d figure(s) missing; report %s"
          % (len(recs), len(failed), len(miss), os.path.relpath(os.path.join(outdir, "report.md"),
                                                                 ROOT)))
    return 1 if failed or miss else 0


if __name__ == "__main__":
    sys.exit(main())
