# SPDX-License-Identifier: GPL-2.0-or-later
"""Without postcopy-preempt, a huge page the destination asked for must
leave the source before the migration thread waits for the rate limit
in the next one (series patch "send a requested page at once").

The migration thread sends a requested page into its QEMUFile like any
other; the buffer goes out when it fills or the iteration flushes.
ram_save_host_page() calls migration_rate_limit() after each target
page, so the thread can go on to the next dirty huge page and sleep in
it to the end of the rate-limit window with the requested page's tail
still buffered: the destination places a huge page only whole, and its
vCPU waits out the window too.  The fix flushes after a requested page.

Read from both QEMUs' traces, timestamped (-msg timestamp=on; one host,
one clock): on the source, each requested host page dequeued
(get_queued_page), the target pages sent (ram_save_page) and the
rate-limit waits (migration_rate_limit_pre/post); on the destination,
each target page read from the stream (ram_load_postcopy_loop).  A
requested page whose last target page the destination read only after
the end of a wait of MIN_WAIT_MS or more, which the source began after
it had sent a target page of another host page, waited in the source's
buffer.  What is judged is an order of events around a wait far longer
than a local socket takes to carry a page, not a duration."""

import re
from datetime import datetime, timezone
from typing import Dict, List, Optional

from . import BugSeen, Failure, migrate_verified

# MiB/s: a 100 ms window carries about three 2 MiB pages, so the thread
# sleeps in most windows, often in a huge page it has just started.
POSTCOPY_BANDWIDTH = 64
SRC_EVENTS = ["get_queued_page", "ram_save_page", "migration_rate_limit_pre",
              "migration_rate_limit_post"]
DST_EVENTS = ["ram_load_postcopy_loop"]
MIN_WAIT_MS = 20.0          # a wait this long, and the page was not sent during it
MIN_JUDGED = 5              # requested pages followed by such a wait
ATTEMPTS = 4                # migrations to find them in
# -msg timestamp=on puts an ISO 8601 UTC time before each trace line
# (the log backend's own "pid@sec.usec:" where QEMU has no -msg stamp).
TRACE = re.compile(r"^(?:\d+@(\d+\.\d+):|(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z )(\w+) (.*)$")
QUEUED = re.compile(r"^(\S+)/0x([0-9a-f]+) ")
SAVED = re.compile(r"^(\S+): offset: 0x([0-9a-f]+) ")
LOADED = re.compile(r"addr=0x([0-9a-f]+) ")


def events(lines, names):
    """(time, event, args) of the trace lines of `names`, in file order."""
    for ln in lines:
        m = TRACE.match(ln)
        if m and m.group(3) in names:
            if m.group(1):
                t = float(m.group(1))
            else:
                t = datetime.strptime(m.group(2), "%Y-%m-%dT%H:%M:%S.%f").replace(
                    tzinfo=timezone.utc).timestamp()
            yield t, m.group(3), m.group(4)


def requested_pages(src_lines, host_page: int) -> List[dict]:
    """Each requested host page dequeued, with the first wait of
    MIN_WAIT_MS or more that began after the source sent a target page
    of another host page ("wait": (begin, end), or None)."""
    pages: List[dict] = []
    pre: Optional[float] = None
    for t, ev, args in events(src_lines, SRC_EVENTS):
        if ev == "get_queued_page":
            m = QUEUED.match(args)
            if m:
                pages.append({"block": m.group(1), "page": int(m.group(2), 16) // host_page,
                              "dequeued": t, "moved_on": None, "wait": None})
        elif ev == "ram_save_page":
            m = SAVED.match(args)
            if not m:
                continue
            key = (m.group(1), int(m.group(2), 16) // host_page)
            for p in pages:
                if p["moved_on"] is None and key != (p["block"], p["page"]):
                    p["moved_on"] = t
        elif ev == "migration_rate_limit_pre":
            pre = t
        elif ev == "migration_rate_limit_post" and pre is not None:
            if (t - pre) * 1000 >= MIN_WAIT_MS:
                for p in pages:
                    if p["moved_on"] is not None and p["wait"] is None and pre >= p["moved_on"]:
                        p["wait"] = (pre, t)
            pre = None
    return pages


def last_pieces(dst_lines, host_page: int, target_page: int) -> Dict[int, float]:
    """Host page number -> when the destination read its last target page."""
    last = {}
    for t, _, args in events(dst_lines, DST_EVENTS):
        m = LOADED.search(args)
        if m:
            addr = int(m.group(1), 16)
            if addr % host_page == host_page - target_page:
                last.setdefault(addr // host_page, t)
    return last


def judge(src_lines, dst_lines, host_page: int, target_page: int = 4096) -> Dict[str, int]:
    """Requested pages followed by a long wait ("judged"), and those of
    them the destination read the end of only after that wait ("waited")."""
    pages = requested_pages(src_lines, host_page)
    last = last_pieces(dst_lines, host_page, target_page)
    judged = waited = 0
    for p in pages:
        if p["wait"] is None or p["page"] not in last:
            continue
        judged += 1
        waited += last[p["page"]] > p["wait"][1]
    return {"requested": len(pages), "judged": judged, "waited": waited}


def request_flush(ctx, name: str, session, start, ram: str, host_page: int) -> str:
    args = ["-msg", "timestamp=on"]
    for ev in SRC_EVENTS + DST_EVENTS:
        args += ["-trace", ev]
    total = {"requested": 0, "judged": 0, "waited": 0}
    for attempt in range(1, ATTEMPTS + 1):
        # The demo's Linux guest: it dirties pages all over its RAM, so
        # that after the switch it faults on many huge pages, not on the
        # boot block's one cursor.
        with session(ctx, "%s-%d" % (name, attempt), guest="linux", src_ram=ram, dst_ram=ram,
                     postcopy_bandwidth=POSTCOPY_BANDWIDTH, qemu_args=args) as s:
            src, dst, _, v = migrate_verified(s, start)
            with open(src.stderr_path, errors="replace") as fs, \
                    open(dst.stderr_path, errors="replace") as fd:
                c = judge(fs, fd, host_page)
        for k in total:
            total[k] += c[k]
        if c["waited"]:
            raise BugSeen("%d of the %d requested huge pages followed by a rate-limit wait of "
                          "%g ms or more reached the destination only after that wait, which "
                          "the source began after moving on to another page (%s, migration %d)"
                          % (c["waited"], c["judged"], MIN_WAIT_MS, c, attempt))
        if total["judged"] >= MIN_JUDGED:
            return ("%s; %d migration(s), %d requested huge pages followed by a rate-limit "
                    "wait: each reached the destination before that wait ended (%s)"
                    % (v["line"], attempt, total["judged"], total))
    raise Failure("in %d migrations, %s: too few requested pages followed by a rate-limit wait "
                  "to tell; are the trace events compiled in?" % (ATTEMPTS, total))
