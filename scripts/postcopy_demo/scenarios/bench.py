# SPDX-License-Identifier: GPL-2.0-or-later
"""`make bench-e2e`: postcopy on the demo's Linux guest, patched against
unpatched QEMU built from one tree, runs paired (ABAB...) and the cells
interleaved pair by pair, cell = access pattern x page size x
postcopy-preempt.

One run (guest/README.md, "For a benchmark driver"): boot with
workload.threads=0 (one pinned worker per vCPU, random writes at 2000
pages/s while precopy runs); just before migrate-start-postcopy the source
workers are armed idle on the pattern (`pattern P 0`); once the
destination is in postcopy-active, `stalls reset` and `rate max` there;
as soon as the destination completed, `stalls` (the guest's own view,
per thread), then `verify`.  QEMU's view comes from query-migrate on the
destination (postcopy-blocktime capability: blocktime total and per vCPU,
and from 10.1 on the fault latency) and on the source (page requests,
downtime, total time), the postcopy phase from both sides' MIGRATION
events (capability events).  Every run is one JSON line (results.jsonl); bench_e2e_report.py turns
them into ratios.

The two QEMUs run in network namespaces joined through a third
(bottleneck.py).  In the link mode (the default) the cap is the link: a
shaper on that middle hop, and no max-postcopy-bandwidth unless asked for
(then the same on both builds).  In the qemu-cap mode nothing is shaped
and both builds get max-postcopy-bandwidth.  Either way a sampler reads
the bytes leaving the middle hop toward the destination (wire.py), and
each run records their mean and peak rate over the source's postcopy
phase and whether any 1 s went over the link or the cap."""

import dataclasses
import json
import os
import re
import time
from typing import Dict, List, Optional

from .. import benchstats, threadcpu, wire
from ..bottleneck import Bottleneck, burst_bytes
from ..migration import Hooks
from ..options import MiB, MigrateError, Options
from ..qmp import QMPError
from ..session import Session

PATTERNS = ("random-write", "random-read", "seq", "mix")
PAGES = {"4k": "4K", "2m": "2M"}
PREEMPT = {"off": False, "on": True}
KINDS = (benchstats.BASE, benchstats.TEST)   # the two builds
ACTIVE_TIMEOUT = 60.0                   # s for the destination's postcopy-active
MODES = ("link", "qemu-cap")            # where the cap is (see the module's doc)


@dataclasses.dataclass
class Config:
    patterns: List[str]
    pages: List[str]
    preempt: List[str]
    runs: int
    binaries: Dict[str, str]
    outdir: str
    mem: int = 1024
    smp: int = 2
    switch_after: int = 64
    precopy_rate: str = "2000"
    accel: str = "auto"
    timeout: float = 300.0
    seed: int = 1
    prepage: int = 0      # x-postcopy-prepage-pages of the patched builds (0: off)
    postcopy_bandwidth: int = 0   # MiB/s, max-postcopy-bandwidth of both builds (0: none)
    mode: str = "link"            # MODES
    link_rate_bps: int = 512 * 10 ** 6   # the link mode's shaper, bits/s
    link_queue_ms: float = 100.0  # its buffer, in ms of the rate
    shaper: str = "tbf"           # tbf or htb (bottleneck.probe)
    qemu_args: List[str] = dataclasses.field(default_factory=list)  # both builds, both sides

    def shaped(self) -> bool:
        return self.mode == "link"

    def limits(self) -> dict:
        """What the bytes on the wire are judged against: {name: (bytes/s,
        allowance bytes)}."""
        out = {}
        if self.shaped():
            out["link"] = (self.link_rate_bps / 8.0, float(burst_bytes(self.link_rate_bps)))
        if self.postcopy_bandwidth:
            out["cap"] = (float(self.postcopy_bandwidth * MiB), 0.0)
        return out

    def cells(self):
        return [(p, pg, pe) for p in self.patterns for pg in self.pages for pe in self.preempt]


def cell_name(cell) -> str:
    return "%s/%s/preempt-%s" % cell


class WorkloadHooks(Hooks):
    """The guest's side of the switch (guest/README.md's driver protocol)."""

    def __init__(self, session: Session, pattern: str, rec: dict):
        self.s, self.pattern, self.rec = session, pattern, rec
        self.mark, self.stalls, self.error = None, None, None

    def before_switch(self, src, dst):
        m, _ = self.s.guest.command(src, "pattern %s 0" % self.pattern,
                                    r"^PATTERN name=%s rate=0\b" % re.escape(self.pattern), 30)
        if not m:
            raise MigrateError("the source guest did not take up pattern %s\n%s"
                               % (self.pattern, src.console_excerpt(10)))

    def after_switch(self, src, dst):
        deadline = time.monotonic() + ACTIVE_TIMEOUT
        while True:
            st = dst.query_migrate().get("status")
            if st in ("postcopy-active", "completed"):
                break
            if st == "failed" or time.monotonic() > deadline:
                raise MigrateError("the destination did not reach postcopy-active (%s)" % st)
            time.sleep(0.02)
        self.rec["dst_state_at_start"] = st
        self.mark = dst.console.mark()
        dst.console.send("stalls reset\nrate max")

    def completed(self, src, dst):
        """The guest's view as soon as the destination has every page: the
        same window on both builds (collecting QEMU's figures takes longer
        on one than on the other)."""
        deadline = time.monotonic() + ACTIVE_TIMEOUT
        while dst.query_migrate().get("status") not in ("completed", "failed") and \
                time.monotonic() < deadline:
            time.sleep(0.02)
        if not armed(dst, self.mark):
            self.error = ("the destination's workload did not answer `stalls reset` and "
                          "`rate max`\n%s" % dst.console_excerpt(10))
            return
        try:
            self.stalls = self.s.guest.stalls(dst)
        except MigrateError as e:
            self.error = str(e)


def armed(dst, mark: Optional[int]) -> bool:
    """The destination's workload restarted its statistics and runs flat out."""
    return mark is not None and all(
        dst.console.wait_for(rx, 10, since=mark, alive=dst.alive)
        for rx in (r"^STALLS RESET\b", r"^RATE max\b"))


def postcopy_phase(events):
    """From a side's MIGRATION events: (postcopy-active, completed) in
    wall-clock seconds, or None."""
    ts = {}
    for ev in events:
        if ev.get("event") == "MIGRATION":
            t = ev.get("timestamp", {})
            ts.setdefault(ev.get("data", {}).get("status"),
                          t.get("seconds", 0) + t.get("microseconds", 0) / 1e6)
    if "postcopy-active" in ts and "completed" in ts:
        return ts["postcopy-active"], ts["completed"]
    return None


def postcopy_ms(events) -> Optional[float]:
    """From a side's MIGRATION events: postcopy-active to completed."""
    ph = postcopy_phase(events)
    return None if ph is None else round((ph[1] - ph[0]) * 1000.0, 1)


def figures(rec: dict, r: dict, stalls: dict):
    """The run's figures from the migration result and the guest's STALLS."""
    dinfo, sinfo = r.get("destination_info") or {}, r.get("source_info") or {}
    rec.update({
        "blocktime_ms": dinfo.get("postcopy-blocktime"),
        "vcpu_blocktime_ms": dinfo.get("postcopy-vcpu-blocktime"),
        "postcopy_latency_ns": dinfo.get("postcopy-latency"),
        "destination_postcopy": {k: v for k, v in dinfo.items() if k.startswith("postcopy-")},
        "postcopy_requests": r.get("postcopy_requests"),
        "downtime_ms": r.get("downtime_ms"),
        "total_time_ms": r.get("total_time_ms"),
        "precopy_bytes": r.get("precopy_bytes"),
        "postcopy_bytes": r.get("postcopy_bytes"),
        "source_ram": sinfo.get("ram"),
        "library_destination": r.get("library_destination"),
    })
    keep = ("cpu", "accesses", "elapsed_ms", "busy_ms", "errors", "done_ms", "worst_us",
            "p50_us", "p99_us", "stalled", "stalled_ms", "hist")
    threads = [{k: t.get(k) for k in keep} for t in stalls.get("threads", [])]
    rec["stalls"] = threads
    rec["stalls_total"] = {k: stalls.get("total", {}).get(k) for k in keep}
    if threads:
        rec["guest_worst_us"] = max(t["worst_us"] or 0 for t in threads)
        rec["guest_p99_us"] = max(t["p99_us"] or 0 for t in threads)
        rec["guest_stalled_ms"] = sum(t["stalled_ms"] or 0 for t in threads)


def missing_figures(rec: dict, smp: int) -> List[str]:
    """The figures a completed run must have (their values are not judged)."""
    miss = [k for k in ("blocktime_ms", "postcopy_requests", "postcopy_ms", "downtime_ms",
                        "total_time_ms", "guest_worst_us", "guest_p99_us", "wire_mean_Bps",
                        "wire_peak_Bps")
            if not isinstance(rec.get(k), (int, float))]
    vb = rec.get("vcpu_blocktime_ms")
    if not (isinstance(vb, list) and len(vb) == smp):
        miss.append("vcpu_blocktime_ms (one per vCPU)")
    st = rec.get("stalls") or []
    if len(st) != smp or any(t.get("worst_us") is None or t.get("p99_us") is None for t in st):
        miss.append("STALLS worst_us/p99_us for each of the %d threads" % smp)
    return miss


def run_one(cfg: Config, cell, kind: str, seq: int, pair: int) -> dict:
    """One migration of the cell on one build; never raises for a failed run."""
    pattern, page, preempt = cell
    name = "%03d-%s-%s-%s-%s" % (seq, pattern, page, "preempt" if PREEMPT[preempt] else "plain",
                                 kind)
    rec = {"seq": seq, "pair": pair, "kind": kind, "pattern": pattern, "page": page,
           "preempt": preempt, "cell": cell_name(cell), "binary": cfg.binaries[kind],
           "mem_mib": cfg.mem, "smp": cfg.smp, "switch_after_mib": cfg.switch_after,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "loadavg_before": os.getloadavg()[0], "ok": False, "error": None,
           "prepage": cfg.prepage if kind == "patched" else 0,
           "postcopy_bandwidth_mib": cfg.postcopy_bandwidth, "mode": cfg.mode,
           "link_rate_bps": cfg.link_rate_bps if cfg.shaped() else None,
           "link_queue_ms": cfg.link_queue_ms if cfg.shaped() else None}
    caps = ["events"] + (["postcopy-preempt"] if PREEMPT[preempt] else [])
    opts = Options(mem=cfg.mem, smp=cfg.smp, rate=cfg.precopy_rate,
                   switch_after=cfg.switch_after, hugepages=None if page == "4k" else PAGES[page],
                   src_binary=cfg.binaries[kind], dst_binary=cfg.binaries[kind],
                   accel=cfg.accel, timeout=cfg.timeout, verify_source=False,
                   progress="none", quiet=True, logdir=os.path.join(cfg.outdir, "logs", name),
                   # the same workload seed for both runs of a pair
                   guest_args=["workload.threads=0", "workload.seed=%d" % (cfg.seed + pair)],
                   capabilities=caps, postcopy_bandwidth=cfg.postcopy_bandwidth or None,
                   # only a patched QEMU knows the property (unused on a source)
                   qemu_args=cfg.qemu_args + (
                       ["-global", "migration.x-postcopy-prepage-pages=%d" % cfg.prepage]
                       if cfg.prepage and kind == "patched" else []))
    t0 = time.monotonic()
    try:
        with Session(opts) as s:
            rec["logdir"], rec["accel"], rec["accel_note"] = s.logdir, s.accel, s.accel_note
            # the Session's network: the VMs and the migration URI follow s.net
            s.net = Bottleneck(s.out, s.logdir, cfg.link_rate_bps if cfg.shaped() else None,
                               cfg.link_queue_ms, cfg.shaper)
            s.net.setup()
            rec["link"] = s.net.describe()
            sampler = wire.WireSampler(*s.net.wire, path=os.path.join(s.logdir, "wire.log"))
            sampler.start()
            try:
                src = s.start_source()
                rec["workload"] = src.workload
                dst = s.start_destination()
                hooks = WorkloadHooks(s, pattern, rec)
                cpu = threadcpu.ThreadCPU(dst.proc.pid,
                                          (threadcpu.FAULT_THREAD,) + threadcpu.RECEIVE_THREADS)
                cpu.start()
                try:
                    r = s.migrate(src, dst, hooks=hooks)
                finally:
                    ns = cpu.stop()
                    rec["fault_thread_ns"] = ns.get(threadcpu.FAULT_THREAD)
                    got = [ns[n] for n in threadcpu.RECEIVE_THREADS if n in ns]
                    rec["receive_threads_ns"] = sum(got) if got else None
                # the destination's postcopy lasts until its last page is placed
                rec["postcopy_ms"] = postcopy_ms(dst.qmp.events() if dst.qmp else [])
                src_events = src.qmp.events() if src.qmp else []
                # the bytes go out while the source is in postcopy
                phase = postcopy_phase(src_events)
                # migrate() may return within a sample of the end: one more
                counted = not phase or sampler.wait_past(phase[1])
            finally:
                sampler.stop()
            rec["accel"] = s.accel           # a failed KVM boot falls back to TCG
            rec["shaper_stats"] = s.net.shaper_stats()
            rec["source_postcopy_ms"] = postcopy_ms(src_events)
            rows = sampler.rows()
            rec["wire"] = wire.wire_stats([r[:3] for r in rows], *phase, cfg.limits()) \
                if phase else {}
            if rec["wire"]:
                rec["wire"].update(wire.backlog_stats(rows, *phase))
            rec["wire_mean_Bps"] = rec["wire"].get("mean_Bps")
            rec["wire_peak_Bps"] = rec["wire"].get("peak_Bps")
            rec["wire_over"] = sorted(k for k, v in rec["wire"].get("over", {}).items() if v)
            rec["status"] = r["status"]
            if r["status"] != "completed" or r.get("error"):
                rec["error"] = r.get("error") or "migration %s" % r["status"]
            elif not counted:
                rec["error"] = "no byte count after the end of postcopy (see %s)" % sampler.path
            elif hooks.error or not hooks.stalls:
                rec["error"] = hooks.error or "no STALLS from the guest"
            else:
                figures(rec, r, hooks.stalls)
                v = s.verify(dst)
                rec["verify"] = v["line"] or v["error"]
                miss = missing_figures(rec, cfg.smp)
                if not v["ok"]:
                    rec["error"] = "the guest's check failed: %s" % rec["verify"]
                elif miss:
                    rec["error"] = "figures missing: " + ", ".join(miss)
                else:
                    rec["ok"] = True
    except (MigrateError, QMPError, OSError) as e:
        rec["error"] = str(e)
    rec["run_s"] = round(time.monotonic() - t0, 1)
    rec["loadavg_after"] = os.getloadavg()[0]
    return rec


def _mb(bps) -> str:
    return "-" if bps is None else "%.1f" % (bps / 1e6)


def run_bench(cfg: Config, out=print) -> List[dict]:
    """Every cell, cfg.runs pairs each, the cells interleaved pair by pair
    and the builds taking turns going first (benchstats.schedule), each run
    appended to
    cfg.outdir/results.jsonl as it ends."""
    os.makedirs(cfg.outdir, exist_ok=True)
    path = os.path.join(cfg.outdir, "results.jsonl")
    recs, seq = [], 0
    plan = benchstats.schedule(cfg.cells(), cfg.runs)
    with open(path, "a") as f:
        for cell, pair, kind in plan:
            rec = run_one(cfg, cell, kind, seq, pair)
            seq += 1
            recs.append(rec)
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            out("[%d/%d] %s %s: %s" % (
                seq, len(plan), cell_name(cell), kind,
                "blocktime %s ms, requests %s, postcopy %s ms, guest worst %s us, "
                "p99 %s us, wire mean/peak %s/%s MB/s%s (%.0f s)" % (
                    rec["blocktime_ms"], rec["postcopy_requests"], rec["postcopy_ms"],
                    rec["guest_worst_us"], rec["guest_p99_us"], _mb(rec["wire_mean_Bps"]),
                    _mb(rec["wire_peak_Bps"]),
                    " OVER " + "+".join(rec["wire_over"]) if rec["wire_over"] else "",
                    rec["run_s"])
                if rec["ok"] else "FAILED: %s" % (rec["error"] or "?").splitlines()[0]))
    return recs
