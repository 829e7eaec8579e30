# SPDX-License-Identifier: GPL-2.0-or-later
"""Migration chains (`--chain N`): one guest migrated A -> B -> C -> ...
with postcopy, each hop to a new destination QEMU, the last destination
the next hop's source, the guest's VERIFY OK on every destination.

The hops are of four kinds (PLAN_KINDS); each is an operation's steps, not
a test's second try:

  plain     migrate to a new destination
  cut       the network cut mid-postcopy and recovered (scenarios/netcut.py
            and cutter.py: a cut, a recovery that is itself cut once, a
            second recovery; --cut-after, --cuts, --handshake-cuts shape it)
  mismatch  first to a destination whose RAM has other page sizes: it must
            refuse before the switch to postcopy, the source running and its
            guest verifying; then to a matching destination
  cancel    migrate_cancel during precopy (CANCEL_AT_MIB sent), the source
            back to running and its guest verifying; then to a new
            destination.  The source may say "failed" rather than
            "cancelled": stock QEMU's migration_cancel() shuts down the
            return path, the very socket the migration thread writes to,
            before it sets "cancelling", and a write error seen in between
            sets "failed" first (QEMU 10.0 and 10.2 alike).  That is
            accepted, and said in the summary with the states QEMU's
            migrate_set_state trace shows after its migration_cancel

Every QEMU runs in one of two network namespaces joined by a veth pair,
and every hop migrates over TCP from one to the other, as between two
hosts: a destination starts in the namespace its source is not in.  The
session's NetPair names the source's side "src" (and the netcut machinery
relies on that), so before each hop the chain swaps the pair's two names
when the source is in the other one (face()).

Each process's open fds, threads and VmRSS are sampled while it is a
source (before it migrates, and once it has) and as a destination at the
end of its hop; leakwatch.py says what is compared with what, and fails
the chain when an fd or thread count grows."""

import json
import os
import re
import time
from typing import List, Optional

from .. import leakwatch, migration
from ..options import PAGE_SIZES, ROOT, MiB, MigrateError, Options, RamBlock, ram_spec_str
from ..qmp import QMPError
from ..report import fmt_bytes
from ..session import Session
from ..vm import VM
from . import netcut
from .cutter import TCP_SETTINGS

PLAN_KINDS = ("plain", "cut", "mismatch", "cancel")
# The default plan puts each special hop after a plain one, from hop 3 on:
# hop 1's source was booted (a series of its own, see leakwatch.py), and
# the first sample of a series is what the next is compared with, so a
# special hop's leftovers show as growth over a plain hop's sample.
SPECIAL_HOPS = (("cut", 3), ("mismatch", 5), ("cancel", 7))
CANCEL_AT_MIB = 16       # precopy sent when migrate_cancel goes out
CANCEL_TIMEOUT = 30.0    # s for the source to say cancelled
CUT_AFTER_MIB = 64       # default --cut-after for a cut hop
HUMAN = {"4K": "4 KiB", "2M": "2 MiB", "1G": "1 GiB"}
# The figures of a hop's result the summary shows, of the last hop.
LAST_HOP_FIGURES = ("postcopy_started", "library_source", "library_destination",
                    "library_latency", "blocktime_ms", "vcpu_blocktime_ms")
# What a cancel did, as QEMU saw it (stock trace events).
TRACE_ARGS = ["-trace", "migration_cancel", "-trace", "migrate_set_state"]


class ChainError(MigrateError):
    """A hop did not do what it must; the message says which and why."""


def default_plan(hops: int) -> List[str]:
    plan = ["plain"] * hops
    for kind, hop in SPECIAL_HOPS:
        if hop <= hops:
            plan[hop - 1] = kind
    return plan


def parse_plan(text: str) -> List[str]:
    """"plain,plain,cut,cancel": one kind per hop."""
    plan = [k.strip() for k in text.split(",")]
    bad = [k for k in plan if k not in PLAN_KINDS]
    if bad or not plan:
        raise MigrateError("--chain-plan: %s is not a hop kind (%s)"
                           % (", ".join(repr(k) for k in bad) or "nothing",
                              ", ".join(PLAN_KINDS)))
    return plan


def rss_bound_kb(guest_mib: int) -> int:
    """VmRSS growth over the previous hop that fails a chain: an eighth of
    the guest's RAM, at least 64 MiB.  Each sample is a different process
    at the same point of the same life, so what differs between hops is
    the guest's working set (it keeps dirtying pages), the TCG translation
    cache and the allocator's arenas: within 1 MiB from hop to hop in a
    10-hop run of the default 512 MiB guest.  The bound leaves 64 times
    that for guests that move more (a higher --rate, a larger --mem), and
    still fails a kept buffer of an eighth of guest RAM, let alone a copy
    of it.  Smaller leaks (a bitmap of the guest's pages is 16 KiB) are
    for the fd and thread counts and the figures to show, not for this."""
    return max(64 << 10, guest_mib * 1024 // 8)


def states_after_cancel(path: str) -> List[str]:
    """The migration states a QEMU's trace shows after its last
    migration_cancel line, in order."""
    states: List[str] = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if re.search(r"\bmigration_cancel\b", line):
                    states = []
                m = re.search(r"\bmigrate_set_state new state (\S+)", line)
                if m:
                    states.append(m.group(1))
    except OSError:
        pass
    return states


def other_pagesize(ps: str) -> str:
    return "2M" if ps == "4K" else "4K"


class Chain:
    def __init__(self, s: Session, plan: List[str]):
        self.s = s
        self.plan = plan
        self.where = {}          # VM name -> the network namespace it runs in
        self.samples: List[leakwatch.Sample] = []
        self.hops: List[dict] = []

    # -- processes ---------------------------------------------------------

    def face(self, src: VM):
        """Make the source's namespace the pair's "src" for this hop."""
        net = self.s.net
        if net.ns["src"] != self.where[src.name]:
            for d in (net.ns, net.addr, net.veth):
                d["src"], d["dst"] = d["dst"], d["src"]

    def destination(self, src: VM, ram: Optional[str] = None, for_cut: bool = False) -> VM:
        """A new destination, in the namespace src is not in, listening
        (for a cut hop: not yet, the Cutter hands it its socket)."""
        self.face(src)
        vm = netcut.start_destination(self.s) if for_cut else self.s.start_destination(ram)
        self.where[vm.name] = self.s.net.ns["dst"]
        return vm

    @staticmethod
    def pid(vm: VM) -> int:
        """QEMU's pid: setpriv and `ip netns exec` exec it, no fork."""
        pid = vm.proc.pid
        try:
            exe = os.readlink("/proc/%d/exe" % pid)
        except OSError as e:
            raise ChainError("%s: cannot read /proc/%d/exe: %s" % (vm.name, pid, e))
        if os.path.realpath(exe) != os.path.realpath(vm.binary):
            raise ChainError("%s: pid %d runs %s, not %s: the leak watch would watch the "
                             "wrong process" % (vm.name, pid, exe, vm.binary))
        return pid

    @staticmethod
    def role(hop: int) -> str:
        """A hop's source's role (leakwatch.py: hop 1's never came in)."""
        return "booted source" if hop == 1 else "source"

    def sample(self, hop: int, vm: VM, role: str, point: str) -> leakwatch.Sample:
        smp = leakwatch.take(self.pid(vm), hop, vm.name, role, point)
        self.samples.append(smp)
        self.s.out.say("  leak watch: hop %d %s %-6s %s: %d fds, %d threads, VmRSS %s%s"
                       % (hop, role, point, vm.name, smp.fds, smp.threads,
                          fmt_bytes(smp.rss_kb * 1024),
                          "" if smp.settled else " (counts still moving after 10 s)"))
        return smp

    # -- checks ------------------------------------------------------------

    @staticmethod
    def completed(r: dict, what: str):
        if r["status"] != "completed" or r["error"]:
            raise ChainError("%s: %s: %s" % (what, r["status"], r["error"]))
        if not r["postcopy_started"]:
            raise ChainError("%s completed in precopy: postcopy never started (lower "
                             "--switch-after)" % what)

    def verify(self, vm: VM, what: str, rec: Optional[dict] = None) -> str:
        v = self.s.verify(vm)
        if not v["ok"]:
            raise ChainError("%s: the guest on %s: %s" % (what, vm.name, v["line"] or v["error"]))
        if rec is not None:
            rec["verify_seconds"] = v.get("seconds")
        return v["line"]

    def source_intact(self, src: VM, what: str) -> str:
        state = src.run_state()
        if not src.alive() or state != "running":
            raise ChainError("%s: the source VM is %s, not running" % (what, state))
        return self.verify(src, what + ", on the source")

    # -- hops --------------------------------------------------------------

    def plain(self, n: int, src: VM, rec: dict) -> VM:
        dst = self.destination(src)
        r = self.s.migrate(src, dst)
        self.completed(r, "hop %d" % n)
        rec.update(result=r)
        return dst

    def mismatch(self, n: int, src: VM, rec: dict) -> VM:
        bad_ram = ram_spec_str([RamBlock(b.mib, other_pagesize(b.pagesize)) for b in src.ram])
        for b in src.ram:
            if (b.mib * MiB) % PAGE_SIZES["2M"]:
                raise ChainError("hop %d: a RAM block of %d MiB has no 2 MiB-page twin"
                                 % (n, b.mib))
        bad = self.destination(src, bad_ram)
        r = self.s.migrate(src, bad)
        what = "hop %d, to %s (%s, source %s)" % (n, bad.name, bad_ram, ram_spec_str(src.ram))
        if r["status"] == "completed":
            raise ChainError("%s: the migration completed between different page sizes"
                             % what)
        if r["postcopy_started"]:
            raise ChainError("%s: refused only after the switch to postcopy (%s)"
                             % (what, r["error"]))
        err = r["destination_error"] or ""
        sizes = sorted({HUMAN[b.pagesize] for b in src.ram + bad.ram})
        rec["refusal"] = {"destination": bad.name, "ram": bad_ram, "error": err,
                          "names_page_sizes": all(w in err for w in sizes),
                          "source_error": r["source_error"]}
        if not r["source_running"]:
            raise ChainError("%s: the source is not running after the refusal (%s)"
                             % (what, r["error"]))
        self.s.stop(bad)
        rec["source_after_refusal"] = self.source_intact(src, what)
        self.s.out.say("hop %d: %s refused (%s); the source runs, %s"
                       % (n, bad.name, err or r["error"], rec["source_after_refusal"]))
        self.sample(n, src, self.role(n), "retry")
        return self.plain(n, src, rec)

    def cancel(self, n: int, src: VM, rec: dict) -> VM:
        doomed = self.destination(src)
        what = "hop %d, to %s" % (n, doomed.name)
        migration.configure_source(self.s, src)
        uri, _ = migration.source_uri(self.s, doomed)
        src.qmp.cmd("migrate", {"uri": uri})
        t0 = time.monotonic()
        while True:
            info = src.query_migrate()
            st, ram = info.get("status"), info.get("ram", {})
            if st == "active" and ram.get("transferred", 0) >= CANCEL_AT_MIB * MiB:
                break
            if st not in ("setup", "active") or time.monotonic() - t0 > 60:
                raise ChainError("%s: the migration was %s before %d MiB were sent (%s)"
                                 % (what, st, CANCEL_AT_MIB, info.get("error-desc")))
            time.sleep(0.02)
        src.qmp.cmd("migrate_cancel")
        sent = ram.get("transferred")
        self.s.out.say("hop %d: migrate_cancel at %s sent (precopy)" % (n, fmt_bytes(sent)))
        while True:
            info = src.query_migrate()
            if info.get("status") in ("cancelled", "failed"):
                break
            if info.get("status") not in ("active", "cancelling") or \
                    time.monotonic() - t0 > CANCEL_TIMEOUT:
                raise ChainError("%s: after migrate_cancel the source says %s"
                                 % (what, info.get("status", info.get("_qmp_error"))))
            time.sleep(0.05)
        ram = info.get("ram", {})
        rec["cancel"] = {"destination": doomed.name, "sent_bytes": sent,
                         "postcopy_bytes": ram.get("postcopy-bytes", 0),
                         "source_status": info.get("status"),
                         "source_error": info.get("error-desc"),
                         "source_states": states_after_cancel(src.stderr_path),
                         "destination_status": doomed.query_migrate().get("status")}
        if info.get("status") == "failed":
            self.s.out.warn("hop %d: after migrate_cancel the source says failed, not "
                            "cancelled (%s; states after migration_cancel: %s): stock QEMU's "
                            "cancel race, see scenarios/chain.py"
                            % (n, info.get("error-desc"),
                               ", ".join(rec["cancel"]["source_states"]) or "none traced"))
        if rec["cancel"]["postcopy_bytes"]:
            raise ChainError("%s: postcopy bytes were sent before the cancel" % what)
        self.s.stop(doomed)
        rec["source_after_cancel"] = self.source_intact(src, what)
        self.s.out.say("hop %d: cancelled; the source runs, %s"
                       % (n, rec["source_after_cancel"]))
        self.sample(n, src, self.role(n), "retry")
        return self.plain(n, src, rec)

    def cut(self, n: int, src: VM, rec: dict) -> VM:
        if self.s.net.method == "proxy":
            raise ChainError("a cut hop needs the QEMUs to talk TCP across the veth: drop "
                             "--netem-delay (this kernel has no sch_netem)")
        dst = self.destination(src, for_cut=True)
        res = {"status": None, "error": None, "source_error": None,
               "destination_error": None, "postcopy_started": False, "switch_at_bytes": None}
        try:
            info = netcut.run(self.s, src, dst, res)
        except MigrateError as e:
            res.update(status="failed", error=str(e))
            info = src.query_migrate()
        err = res["error"]
        migration.collect(self.s, src, dst, res, info, 0)
        if err and res["status"] == "completed":
            res["error"] = err
        self.completed(res, "hop %d (cut)" % n)
        rec.update(result=res, cuts=len(res["cuts"]), resumes=res["resumes"],
                   link_downs=res["link_downs"])
        return dst

    # -- the chain ---------------------------------------------------------

    def run(self, src: VM):
        self.where[src.name] = self.s.net.ns["src"]
        for n, kind in enumerate(self.plan, 1):
            self.s.out.say("")
            self.s.out.say("==== hop %d of %d (%s): %s -> a new destination"
                           % (n, len(self.plan), kind, src.name))
            rec = {"hop": n, "kind": kind, "source": src.name}
            self.hops.append(rec)
            t0 = time.monotonic()
            role = self.role(n)
            self.sample(n, src, role, "before")
            dst = getattr(self, kind)(n, src, rec)
            rec["destination"] = dst.name
            rec["verify"] = self.verify(dst, "hop %d" % n, rec)
            self.s.out.say("hop %d: %s on %s" % (n, rec["verify"], dst.name))
            self.sample(n, src, role, "after")
            self.sample(n, dst, "destination", "end")
            self.s.stop(src)
            rec["seconds"] = round(time.monotonic() - t0, 1)
            src = dst
        return src


def summary_lines(chain: Chain, bound_kb: int) -> list:
    """(label, text) lines: the hops, then the leak watch's table."""
    lines = []
    if chain.hops and "result" in chain.hops[-1]:
        lines.append(("figures above", "hop %d's (the last); each hop's below"
                      % chain.hops[-1]["hop"]))
    for h in chain.hops:
        r = h.get("result") or {}
        extra = ""
        if h["kind"] == "cut" and "cuts" in h:
            extra = "; %d cut(s), link down %d times, %d resumes" % (
                h["cuts"], h["link_downs"], h["resumes"])
        elif h.get("refusal"):
            extra = "; first %s (%s) refused: %r; source then %s" % (
                h["refusal"]["destination"], h["refusal"]["ram"], h["refusal"]["error"],
                h.get("source_after_refusal"))
        elif h.get("cancel"):
            c = h["cancel"]
            extra = "; first %s cancelled at %s sent, source %s%s; source then %s" % (
                c["destination"], fmt_bytes(c["sent_bytes"]), c["source_status"],
                " (stock QEMU's cancel race: states after migration_cancel %s)"
                % ", ".join(c["source_states"] or ["not traced"])
                if c["source_status"] != "cancelled" else "",
                h.get("source_after_cancel"))
        lines.append(("hop %d %s" % (h["hop"], h["kind"]),
                      "%s -> %s: %s, postcopy %s, %s s%s; %s"
                      % (h["source"], h.get("destination", "-"), r.get("status", "-"),
                         fmt_bytes(r.get("postcopy_bytes")), h.get("seconds", "-"), extra,
                         h.get("verify", "no verdict"))))
    cells = {(s.hop, s.series): s for s in chain.samples}
    growth = {(s.hop, s.series): d for s, d in leakwatch.rss_growth(chain.samples)}

    def cell(hop, series):
        s = cells.get((hop, series)) or cells.get((hop, "booted " + series))
        if s is None:
            return "%-22s" % "-"
        d = growth.get((hop, series))
        return "%3d %3d %5d%-9s" % (s.fds, s.threads, s.rss_kb // 1024,
                                    "" if d is None else " (%+d)" % (d // 1024))

    lines.append(("leak watch", "fds, threads, VmRSS MiB (growth over the previous hop's); "
                  "sources before migrating and once done, destinations at the end"))
    lines.append(("  hop", " | ".join("%-22s" % t for t in leakwatch.SERIES)))
    for h in chain.hops:
        lines.append(("  %d %s" % (h["hop"], h["kind"]),
                      " | ".join(cell(h["hop"], t) for t in leakwatch.SERIES)))
    for s in chain.samples:
        if s.point == "retry":
            lines.append(("  %d retry" % s.hop, "%s before its second attempt: %d fds, %d "
                          "threads, VmRSS %d MiB" % (s.vm, s.fds, s.threads, s.rss_kb // 1024)))
    lines.append(("  judged", "fd and thread counts must not grow (leakwatch.py); VmRSS "
                  "growth over %d MiB a hop fails" % (bound_kb // 1024)))
    return lines


def run_chain(opts: Options, plan: List[str]) -> dict:
    """Boot, migrate along the plan's hops, verify on each destination,
    watch the processes for leaks.  The result dict has "verify_ok" only
    if every hop verified and nothing grew."""
    t0 = time.monotonic()
    result = {"verify_ok": False, "error": None}
    opts.netem_delay = opts.netem_delay or 0.0
    opts.qemu_args = list(opts.qemu_args) + TRACE_ARGS
    if opts.cut_after is None and opts.cut_random is None:
        opts.cut_after = CUT_AFTER_MIB
    chain = None
    bound = None
    try:
        with Session(opts) as s:
            result["logdir"] = s.logdir
            result["qemu"] = os.path.relpath(s.src_binary, ROOT)
            result["driver"] = ("QMP (qemu.qmp), a new QEMU per hop, in two network "
                                "namespaces in turn")
            result["accel_note"] = s.accel_note
            s.net.set_sysctls(TCP_SETTINGS)
            chain = Chain(s, plan)
            src = s.start_source()
            result["workload"] = src.workload
            guest_mib = sum(b.mib for b in src.ram)
            bound = rss_bound_kb(guest_mib)
            result["src_ram"] = result["dst_ram"] = ram_spec_str(src.ram)
            result["transport"] = "TCP over a veth pair between two network namespaces, " \
                "each hop from one to the other"
            try:
                chain.run(src)
                # Every hop switched to postcopy (Chain.completed); the
                # summary's figures are the last hop's, as its verdict is.
                last = chain.hops[-1]
                result.update({k: last["result"].get(k) for k in LAST_HOP_FIGURES})
                result.update(status="completed", verify=last["verify"],
                              verify_seconds=last.get("verify_seconds"))
            except (MigrateError, QMPError) as e:
                result["status"] = "failed"
                result["error"] = "hop %d: %s" % (len(chain.hops), e) if not \
                    str(e).startswith("hop ") else str(e)
    except (MigrateError, QMPError) as e:
        result["error"] = str(e)
    if chain is not None:
        problems = leakwatch.count_problems(chain.samples)
        if bound is not None:
            problems += leakwatch.rss_problems(chain.samples, bound)
        result["leak_problems"] = problems
        if problems and not result["error"]:
            result["error"] = "the leak watch: " + "; ".join(problems)
        result["hops"] = chain.hops
        result["samples"] = [s.__dict__ for s in chain.samples]
        result["extra_summary"] = summary_lines(chain, bound or 0)
        if result.get("logdir"):
            with open(os.path.join(result["logdir"], "chain.json"), "w") as f:
                json.dump({"plan": plan, "hops": chain.hops, "samples": result["samples"],
                           "problems": problems}, f, indent=2, default=str)
        done = [h for h in chain.hops if h.get("verify", "").startswith("VERIFY OK")]
        result["verify_ok"] = (result.get("status") == "completed" and not result["error"]
                               and len(done) == len(plan))
    result["run_time_s"] = round(time.monotonic() - t0, 1)
    return result
