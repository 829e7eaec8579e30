# SPDX-License-Identifier: GPL-2.0-or-later
"""The end-to-end tests (scripts/e2e.py test): their registry (TESTS,
MAY_SKIP) and runner (run_tests), the settings and Session every one of
them starts from (Context, options, session), and the page-size scenarios
themselves.

All run QEMU's own boot block guest (guests.BootBlockGuest), which keeps
dirtying memory through precopy and the switch (leaving partly dirty host
pages on hugepage-backed RAM).  Here: hugepage-backed guest RAM (host page
!= target page), two RAM blocks of different page sizes, and mismatched
page sizes between source and destination.  Registered from their own
modules: a page filled behind the destination's back (straypage.py), the
source serving a page request when the rate limit is exceeded
(urgent.py), precopy finishing a requested page it is sending without a
rate-limit wait (preempthit.py), the return path sending only the first
page of a range request (preemptrange.py), the source's unsent data on
the main channel in postcopy over a shaped link (unsentbound.py).  Each
returns a detail line or raises Failure/Skip.

run_check runs one of scripts/qemu-test.sh's checks between two given
builds (scripts/e2e.py check): pagesize_error.py, latency_accounting.py."""

import os
import shutil
import time

from ..options import ROOT, HugepagesUnavailable, MigrateError, Options
from ..qmp import QMPError
from ..session import Session
from . import (
    BugSeen,
    Failure,
    Skip,
    migrate_verified,
    preempthit,
    preemptrange,
    ratelimitleak,
    requestflush,
    straypage,
    unsentbound,
    urgent,
)

GUEST_MB = 256
# x-postcopy-prepage-pages of hugepages-1G-prepage.
PREPAGE_1G = 16
HUMAN = {"4K": "4 KiB", "2M": "2 MiB", "1G": "1 GiB"}


class Context:
    """Where a test run's logs go and which QEMU it tests."""

    def __init__(self, logroot: str, binary: str):
        self.logroot, self.binary = logroot, binary


def options(logdir: str, **kw) -> Options:
    """The e2e settings: QEMU's boot block, one vCPU, a switch at 8 MiB and a
    precopy that cannot converge on its own (the switch is ours to make);
    a scenario may override any of them."""
    settings = dict(guest="bootblock", smp=1, mem=GUEST_MB, switch_after=8, max_bandwidth=100,
                    downtime_limit=1, timeout=120, verify_source=False, progress="none")
    settings.update(kw)
    return Options(logdir=logdir, **settings)


def session(ctx: Context, name: str, **kw) -> Session:
    kw.setdefault("src_binary", ctx.binary)
    kw.setdefault("dst_binary", ctx.binary)
    s = Session(options(os.path.join(ctx.logroot, name), **kw))
    s.out.quiet = True
    return s


def _start(s: Session, fn, *a):
    try:
        return fn(*a)
    except HugepagesUnavailable as e:
        raise Skip(str(e))
    except MigrateError as e:
        raise Failure(str(e))


def postcopy_on(ctx, name, ram: str, need_bits_set: bool) -> str:
    """Boot, migrate with postcopy, check the destination's RAM and the
    library's counters on both sides."""
    with session(ctx, name, src_ram=ram, dst_ram=ram) as s:
        _, _, r, v = migrate_verified(s, _start)
        disc, inc = r["library_source"] or {}, r["library_destination"] or {}
        if not disc.get("runs"):
            raise Failure("the library sent no discard runs: %s" % disc)
        if not inc.get("placed"):
            raise Failure("the library placed no pages: %s" % inc)
        if need_bits_set and not disc.get("hostpage_bits_set"):
            raise Failure("no partly dirty host page was canonicalised: %s" % disc)
        return "%s; blocktime %s ms; discard %s; incoming %s" % (
            v["line"], r["blocktime_ms"], disc, inc)


def gigantic_prepage(ctx, name) -> str:
    """1 GiB pages with pre-paging on: the migration must complete with the
    RAM verified, and no request may carry a page beyond its faulting one
    (a request carries at most 2 MiB beyond it, POSTCOPY_RS_PREPAGE_MAX_BYTES,
    less than one such page).  One 1 GiB page a side, as hugepages-1G: the
    machines this runs on grant two such pages, not four, so here the
    block's end stops a range before the byte cap does; the cap itself is
    prepage.rs's gigantic_pages_are_never_prepaged."""
    args = ["-global", "migration.x-postcopy-prepage-pages=%d" % PREPAGE_1G]
    with session(ctx, name, src_ram="1024M@1G", dst_ram="1024M@1G", qemu_args=args) as s:
        _, dst, r, v = migrate_verified(s, _start)
        inc = r["library_destination"] or {}
        if not inc.get("placed"):
            raise Failure("the library placed no pages: %s" % inc)
        pre = dst.counters("prepage_stats")
        if pre is None:
            raise Failure("the destination traced no postcopy_rs_prepage_stats: "
                          "is pre-paging on?")
        if pre.get("requests") or pre.get("pages"):
            raise Failure("a request carried pages beyond its 1 GiB faulting page: %s" % pre)
        return "%s; pre-paging %d, no page asked ahead (%s); incoming %s" % (
            v["line"], PREPAGE_1G, pre, inc)


def mismatch(ctx, name, src_ps: str, dst_ps: str) -> str:
    """A postcopy migration between different page sizes must fail, the
    destination's error (its query-migrate error-desc) naming both sizes
    in words, leave the source running with its RAM intact, and a second
    migration, to a destination with matching pages, must then succeed."""
    same = "%dM@%s" % (GUEST_MB, src_ps)
    with session(ctx, name, src_ram=same, dst_ram="%dM@%s" % (GUEST_MB, dst_ps)) as s:
        src = _start(s, s.start_source)
        bad = _start(s, s.start_destination)
        r = s.migrate(src, bad)
        if r["status"] == "completed":
            raise Failure("the migration completed, but it had to fail")
        err = r["destination_error"] or ""
        missing = [HUMAN[ps] for ps in (src_ps, dst_ps) if HUMAN[ps] not in err]
        if missing:
            raise Failure("the destination's error does not name %s: %r (%s)"
                          % (" and ".join(missing), err, r["error"]))
        if not r["source_running"]:
            raise Failure("the source VM is %s after the failed migration" % src.run_state())
        s.stop(bad)
        before = s.verify(src)
        if not before["ok"]:
            raise Failure("source RAM after the failed migration: %s" % before["error"])
        good = _start(s, s.start_destination, same)
        r = s.migrate(src, good)
        if r["status"] != "completed" or r["error"]:
            raise Failure("the migration to a matching destination: %s: %s"
                          % (r["status"], r["error"]))
        after = s.verify(good)
        if not after["ok"]:
            raise Failure("the migration to a matching destination: %s" % after["error"])
        return ("destination error: %r; source RAM intact (%s); a matching destination "
                "verified (%s)" % (err, before["line"], after["line"]))


TESTS = {
    "hugepages-2M": lambda c: postcopy_on(c, "hugepages-2M", "%dM@2M" % GUEST_MB, True),
    "hugepages-1G": lambda c: postcopy_on(c, "hugepages-1G", "1024M@1G", True),
    "hugepages-1G-prepage": lambda c: gigantic_prepage(c, "hugepages-1G-prepage"),
    # The boot block dirties 1..100 MiB: node 0, 2 MiB-backed.
    "two-blocks-4K-2M": lambda c: postcopy_on(c, "two-blocks-4K-2M", "128M@2M,128M@4K", True),
    "mismatch-4K-to-2M": lambda c: mismatch(c, "mismatch-4K-to-2M", "4K", "2M"),
    "mismatch-2M-to-4K": lambda c: mismatch(c, "mismatch-2M-to-4K", "2M", "4K"),
    "stray-page-2M": lambda c: straypage.stray_page(c, "stray-page-2M", session, _start),
    "urgent-requests-4K": lambda c: urgent.urgent_requests(c, "urgent-requests-4K", session,
                                                           _start),
    "request-flush-2M": lambda c: requestflush.request_flush(c, "request-flush-2M", session,
                                                             _start, "%dM@2M" % GUEST_MB,
                                                             2 << 20),
    "rate-limit-leak-4K": lambda c: ratelimitleak.rate_limit_leak(c, "rate-limit-leak-4K",
                                                                 session, _start),
    "unsent-bound-4K": lambda c: unsentbound.unsent_bound(c, "unsent-bound-4K", session,
                                                          _start),
    "preempt-hit-2M": lambda c: preempthit.preempt_hit(c, "preempt-hit-2M", session, _start,
                                                       "%dM@2M" % GUEST_MB, 2 << 20),
    "preempt-range-2M": lambda c: preemptrange.preempt_range(c, "preempt-range-2M", session,
                                                             _start, "%dM@2M" % GUEST_MB,
                                                             2 << 20),
}
# Skipping these is allowed (said loudly); the others must run.
MAY_SKIP = {"hugepages-1G", "hugepages-1G-prepage"}


# The tests of the series' stock fixes: each raises BugSeen on a QEMU
# without its fix (`e2e.py test --expect-bug` on stock QEMU).
BUG_TESTS = {
    "urgent-requests-4K": "serve urgent postcopy page requests past the rate limit",
    "request-flush-2M": "send a requested page at once",
    "rate-limit-leak-4K": "take back the wake-up of a page request freed unsent",
    "unsent-bound-4K": "keep little unsent on the main channel during postcopy",
    "preempt-hit-2M": "finish a page precopy sends when the destination waits",
}


def run_tests(only, binary: str, out=print, expect_bug: bool = False) -> int:
    """Run the scenarios on QEMU `binary`; "N passed, N failed"; 1 if any
    failed.  With expect_bug (only BUG_TESTS), a test passes when it sees
    the bug its fix removes, and fails when it does not, or cannot tell."""
    if os.geteuid() != 0:
        out("ERROR: the end-to-end tests need root (hugepages, KVM)")
        return 1
    if expect_bug and (not only or not set(only) <= set(BUG_TESTS)):
        out("ERROR: --expect-bug takes --only with tests of %s" % ", ".join(BUG_TESTS))
        return 1
    logroot = os.path.join(ROOT, "build", "e2e-runs", time.strftime("%Y%m%d-%H%M%S"))
    ctx = Context(logroot, binary)
    passed = failed = skipped = 0
    for name, fn in TESTS.items():
        if only and name not in only:
            continue
        t0 = time.time()
        took = lambda: "%.0fs" % (time.time() - t0)  # noqa: E731
        try:
            detail = fn(ctx)
            if expect_bug:
                out("FAIL  %s (%s): the bug that \"%s\" fixes must show on this build, "
                    "but the test passed: %s" % (name, took(), BUG_TESTS[name], detail))
                failed += 1
            else:
                out("PASS  %s (%s): %s" % (name, took(), detail))
                passed += 1
        except Skip as e:
            if name in MAY_SKIP and not expect_bug:
                out("SKIPPED  %s: %s" % (name, e))
                skipped += 1
            else:
                out("FAIL  %s: cannot run: %s" % (name, e))
                failed += 1
        except BugSeen as e:
            if expect_bug:
                out("PASS  %s (%s): the bug that \"%s\" fixes shows: %s"
                    % (name, took(), BUG_TESTS[name], e))
                passed += 1
            else:
                out("FAIL  %s (%s): %s" % (name, took(), e))
                failed += 1
        except (Failure, MigrateError) as e:
            out("FAIL  %s (%s): %s" % (name, took(), e))
            failed += 1
    out("%d passed, %d failed%s (logs: %s)" % (passed, failed,
        ", %d skipped" % skipped if skipped else "", os.path.relpath(logroot)))
    return 1 if failed else 0


def run_check(name: str, label: str, workdir, check, out=print) -> int:
    """One check between two given builds: check(logdir) returns
    [(criterion, met)]; "PASS/FAIL  label: criterion" for each; 1 if any
    is not met, or the check could not run.  The logs go to workdir (made
    afresh), else to build/e2e-runs/NAME-<time>."""
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)
        logdir = workdir
    else:
        logdir = os.path.join(ROOT, "build", "e2e-runs",
                              "%s-%s" % (name, time.strftime("%Y%m%d-%H%M%S")))
    try:
        checks = check(logdir)
    except (Failure, Skip, MigrateError, QMPError) as e:
        out("FAIL  %s: %s (logs in %s)" % (label, e, logdir))
        return 1
    for what, met in checks:
        out("%s  %s: %s" % ("PASS" if met else "FAIL", label, what))
    return 0 if all(met for _, met in checks) else 1
