# SPDX-License-Identifier: GPL-2.0-or-later
"""Without postcopy-preempt, a page request must be served when it wakes
the source's rate-limit wait, not a window later (series patch "serve
urgent postcopy page requests past the rate limit").

ram_save_queue_pages() posts rate_limit_sem for each request, and
unqueue_page() takes it back when the request is dequeued, so while a
request is queued migration_rate_limit() returns "urgent: 1" at once.
With the fix, each such return leads to ram_save_iterate(), which
dequeues (get_queued_page or get_queued_page_not_dirty).  Without it,
qemu_savevm_state_iterate() returns on the exceeded rate first, and the
migration thread spins: "urgent: 1" again and again with nothing
dequeued, until the window ends.  The check counts those repeats in the
source's trace, in trace order: no timing is measured.

4 KiB pages only: with huge pages ram_save_host_page() calls
migration_rate_limit() between the target pages of one host page, where
repeats are expected."""

from typing import Dict, Iterable

from . import BugSeen, Failure, migrate_verified

# MiB/s: the background stream uses up each 100 ms window in a few
# milliseconds, so nearly every request finds the rate exceeded.
POSTCOPY_BANDWIDTH = 32
EVENTS = ["migration_rate_limit_post", "get_queued_page", "get_queued_page_not_dirty",
          "ram_save_queue_pages"]
MIN_WAKES = 5               # fewer and the run exercised nothing


def count_spins(lines: Iterable[str]) -> Dict[str, int]:
    """Wake-ups by a request ("urgent: 1"), and how many of them followed
    another with no request queued or dequeued in between."""
    wakes = spins = dequeued = 0
    prev_wake = False
    for ln in lines:
        if "migration_rate_limit_post" in ln:
            urgent = ln.rstrip().endswith("urgent: 1")
            if urgent:
                wakes += 1
                spins += prev_wake
            prev_wake = urgent
        elif "get_queued_page" in ln:
            dequeued += 1
            prev_wake = False
        elif "ram_save_queue_pages" in ln:
            prev_wake = False
    return {"wakes": wakes, "spins": spins, "dequeued": dequeued}


def urgent_requests(ctx, name: str, session, start) -> str:
    args = [a for ev in EVENTS for a in ("-trace", ev)]
    with session(ctx, name, postcopy_bandwidth=POSTCOPY_BANDWIDTH, qemu_args=args) as s:
        src, _, _, v = migrate_verified(s, start)
        with open(src.stderr_path, errors="replace") as f:
            c = count_spins(f)
        if c["wakes"] < MIN_WAKES or not c["dequeued"]:
            raise Failure("too few requests woke the source to tell (%s): is the rate limit "
                          "binding, and are the trace events compiled in?" % c)
        if c["spins"]:
            raise BugSeen("the source's migration thread woke for a request %d times without "
                          "dequeuing one (%s): requests wait for the next rate-limit window"
                          % (c["spins"], c))
        return "%s; %d wake-ups by a request, each followed by a dequeue (%d pages dequeued)" % (
            v["line"], c["wakes"], c["dequeued"])
