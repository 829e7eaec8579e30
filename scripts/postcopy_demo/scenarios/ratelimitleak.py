# SPDX-License-Identifier: GPL-2.0-or-later
"""A page request still queued when a migration ends must not leave the
source's rate limit off for its next migration (series patch "take back
the wake-up of a page request freed unsent").

ram_save_queue_pages() posts rate_limit_sem for each request and
unqueue_page() takes the post back when it dequeues the request.  A
request that reaches the source after its last page was sent stays
queued until cleanup frees it; without the fix its post stays, for the
life of the process, and every later migration_rate_limit() of that
QEMU finds the semaphore posted and returns "urgent: 1" at once instead
of sleeping: max-bandwidth is not kept.

The first migration runs over a shaped link, slowed to TAIL_BPS once
postcopy has less than TAIL_BYTES of RAM left to send, so that when the
source has sent its last page, pages are still on the way for a while
(the data the kernel holds unsent, then the link's queue), and the
destination's vCPU, which touches page after page, faults on them: each
fault is a request that arrives after the source's last iteration.
Without the slower tail, that window is what the unsent data takes at
the full rate, and the stock fix that bounds it ("keep little unsent on
the main channel during postcopy") shortens it to a few milliseconds,
in which the guest may fault on nothing.  The source's trace counts the
late requests (requests queued less requests dequeued; QEMU's
destination asks for one host page per request).  The same source then
migrates again, precopy only, to `exec:cat >/dev/null` at a
max-bandwidth that binds: there nothing asks for pages, so any "urgent:
1" is a post left over.  Counts from the trace, in order; no time is
judged."""

import os
import time
from typing import Dict, Iterable

from ..bottleneck import Bottleneck, probe
from ..migration import Hooks, configure_source
from . import BugSeen, Failure, Skip, migrate_verified

EVENTS = ["migration_rate_limit_post", "get_queued_page", "get_queued_page_not_dirty",
          "ram_save_queue_pages"]
# The link: slow enough that the pages in the source's socket buffer and
# the shaper's queue take a while to drain after the last one is sent.
LINK_BPS = 80 * 10 ** 6
LINK_QUEUE_MS = 500.0
# The tail: at 2 MB/s, the source's last 256 KiB unsent (with the fix
# that bounds it; megabytes without) take 130 ms or more, in which the
# guest faults 20-30 times (seen here), against 0-7 times at the full
# rate.  The guest's RAM is little more than the boot block's 1-100 MiB,
# so that few zero pages are left to send (which go at once, and which
# the guest never touches).  The migration is polled every 250 ms, in
# which the link moves 2.5 MB and the zero pages another 5 MiB at most:
# TAIL_BYTES leaves room for a poll to see it.
TAIL_BPS = 16 * 10 ** 6
TAIL_BYTES = 16 << 20
GUEST_MIB = 104
# The second migration: a max-bandwidth (MiB/s) a pipe exceeds at once,
# and how long to watch it.
SECOND_BANDWIDTH = 8
SECOND_WATCH_S = 5.0
MIN_WAITS = 3               # rate-limit waits the second migration must show


def count(lines: Iterable[str]) -> Dict[str, int]:
    """Requests queued and dequeued, and rate-limit waits by outcome."""
    c = {"queued": 0, "dequeued": 0, "urgent": 0, "slept": 0}
    for ln in lines:
        if "ram_save_queue_pages" in ln:
            c["queued"] += 1
        elif "get_queued_page" in ln:       # also get_queued_page_not_dirty
            c["dequeued"] += 1
        elif "migration_rate_limit_post" in ln:
            c["urgent" if ln.rstrip().endswith("urgent: 1") else "slept"] += 1
    return c


def watch(path: str, mark: int) -> Dict[str, int]:
    """The counts of `path` from offset `mark` on, read until the rate
    limit has waited or been cut short often enough to tell, or
    SECOND_WATCH_S.  A leaked post makes the migration thread spin, a
    million trace lines a second: stop early rather than log them all."""
    deadline = time.monotonic() + SECOND_WATCH_S
    while True:
        with open(path, errors="replace") as f:
            f.seek(mark)
            c = count(f)
        if c["urgent"] >= MIN_WAITS or c["slept"] >= 2 * MIN_WAITS \
                or time.monotonic() > deadline:
            return c
        time.sleep(0.05)


class SlowTail(Hooks):
    """Slows the link to TAIL_BPS once the source, in postcopy, has less
    than TAIL_BYTES of RAM left to send."""

    def __init__(self, net: Bottleneck):
        self.net = net
        self.slowed_at = None       # RAM left to send then, bytes
        self.dropped_before = None  # the shaper's drops until then

    def polled(self, src, dst, info: dict):
        left = info.get("ram", {}).get("remaining")
        if self.slowed_at is None and info.get("status") == "postcopy-active" \
                and left is not None and left <= TAIL_BYTES:
            before = self.net.shaper_stats().get("dropped")
            self.net.set_rate(TAIL_BPS)
            self.slowed_at = left
            self.dropped_before = before


def rate_limit_leak(ctx, name: str, session, start) -> str:
    kind, tried = probe()
    if not kind:
        raise Skip("no traffic shaper in this kernel (%s)" % tried)
    args = [a for ev in EVENTS for a in ("-trace", ev)]
    with session(ctx, name, qemu_args=args, mem=GUEST_MIB) as s:
        s.net = Bottleneck(s.out, s.logdir, LINK_BPS, LINK_QUEUE_MS, kind)
        s.net.setup()
        tail = SlowTail(s.net)
        src, dst, _, v = migrate_verified(s, start, tail)
        s.stop(dst)
        drops = "the shaper dropped %s packet(s) before the slowing, %s in all" % (
            tail.dropped_before, s.net.shaper_stats().get("dropped"))
        if tail.slowed_at is None:
            raise Failure("the migration was never seen in postcopy with less than %d MiB "
                          "left: the link was not slowed for its tail" % (TAIL_BYTES >> 20))
        with open(src.stderr_path, errors="replace") as f:
            first = count(f)
        late = first["queued"] - first["dequeued"]
        if late <= 0:
            raise Failure("no page request reached the source after its last page (%s), "
                          "with the link slowed to %d Mbit/s for the last %.1f MiB: "
                          "nothing was left to leak (%s)"
                          % (first, TAIL_BPS // 10 ** 6, tail.slowed_at / (1 << 20), drops))
        mark = os.path.getsize(src.stderr_path)

        # QEMU migrates no VM paused by a finished migration: run it again
        # (its RAM is as the switch to postcopy left it; nothing reads it).
        src.qmp.cmd("cont")
        s.opts.max_bandwidth = SECOND_BANDWIDTH
        configure_source(s, src)
        src.qmp.cmd("migrate-set-capabilities", {"capabilities": [
            {"capability": "postcopy-ram", "state": False}]})
        src.qmp.cmd("migrate", {"uri": "exec:cat >/dev/null"})
        second = watch(src.stderr_path, mark)
        src.qmp.cmd("migrate_cancel")
        if second["queued"]:
            raise Failure("a precopy migration to a pipe queued page requests (%s)" % second)
        if second["urgent"]:
            raise BugSeen("%d request(s) reached the source after its last page and were freed "
                          "unsent (%s); in its next migration, precopy only, "
                          "migration_rate_limit() returned \"urgent\" %d times with no request "
                          "queued (%s): max-bandwidth is not kept"
                          % (late, first, second["urgent"], second))
        if second["slept"] < MIN_WAITS:
            raise Failure("the second migration waited for the rate limit only %d times (%s): "
                          "does max-bandwidth bind?" % (second["slept"], second))
        return ("%s; %d request(s) freed unsent at the end (%s; the link slowed to %d Mbit/s "
                "with %.1f MiB left, %s); the next migration kept max-bandwidth: %d "
                "rate-limit waits, none cut short (%s)"
                % (v["line"], late, first, TAIL_BPS // 10 ** 6, tail.slowed_at / (1 << 20),
                   drops, second["slept"], second))
