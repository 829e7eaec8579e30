# SPDX-License-Identifier: GPL-2.0-or-later
"""With postcopy-preempt, a request for more than one host page must
send only its first page on the preempt channel (series patch "send
only the first page of a request from the return path").

The destination pre-pages (x-postcopy-prepage-pages): on the boot
block's sequential walk it asks for the faulting huge page and the next
one in one request.  A stock source's return-path thread sends the
whole range on the preempt channel before it reads the next request,
so the page ahead delays the next fault's; the fixed one sends the
first page and queues the rest for the migration thread.  The check
reads the return-path thread's own events in order (ram_save_queue_pages,
then one postcopy_preempt_send_host_page per host page it sends): a
range request followed by more than one send sent its tail on the
preempt channel.  No time is measured."""

import re
from typing import Dict, Iterable

from . import Failure, preempt_migrations

PREPAGE = 16
# MiB/s: the background stream slow enough that the walk faults often
POSTCOPY_BANDWIDTH = 16
EVENTS = ["ram_save_queue_pages", "postcopy_preempt_send_host_page", "get_queued_page",
          "get_queued_page_not_dirty"]
MIN_RANGES = 8
ATTEMPTS = 3
REQUEST = re.compile(r"ram_save_queue_pages \S*: start: 0x([0-9a-f]+) len: 0x([0-9a-f]+)")
SEND = "postcopy_preempt_send_host_page "
QUEUED = re.compile(r"get_queued_page(_not_dirty)? ")


def count_ranges(lines: Iterable[str], host_page: int) -> Dict[str, int]:
    """Requests of more than one host page ("ranges"); those whose tail the
    return-path thread sent itself ("tail_on_preempt"); and the pages the
    migration thread took off the request queue ("queued")."""
    ranges = tail = queued = 0
    sends = None            # host pages sent for the current range request
    for ln in lines:
        m = REQUEST.search(ln)
        if m:
            if sends is not None and sends > 1:
                tail += 1
            if int(m.group(2), 16) > host_page:
                ranges += 1
                sends = 0
            else:
                sends = None
            continue
        if SEND in ln:
            if sends is not None:
                sends += 1
        elif QUEUED.search(ln):
            queued += 1
    if sends is not None and sends > 1:
        tail += 1
    return {"ranges": ranges, "tail_on_preempt": tail, "queued": queued}


def preempt_range(ctx, name: str, session, start, ram: str, host_page: int) -> str:
    args = [a for ev in EVENTS for a in ("-trace", ev)]
    args += ["-global", "migration.x-postcopy-prepage-pages=%d" % PREPAGE]
    total = {"ranges": 0, "tail_on_preempt": 0, "queued": 0}
    for attempt, v, c, total in preempt_migrations(ctx, name, session, start, ram, ATTEMPTS,
                                                   POSTCOPY_BANDWIDTH, args,
                                                   lambda f: count_ranges(f, host_page)):
        if c["tail_on_preempt"]:
            raise Failure("the return path sent the pages ahead of %d of %d range requests on "
                          "the preempt channel, in front of the next request (%s, migration %d)"
                          % (c["tail_on_preempt"], c["ranges"], c, attempt))
        if total["ranges"] >= MIN_RANGES:
            if not total["queued"]:
                raise Failure("%s: the tails of the ranges never reached the request queue"
                              % total)
            return "%s; %d migration(s): %d range requests, each sent one host page on the " \
                "preempt channel; the migration thread took %d queued pages" % (
                    v["line"], attempt, total["ranges"], total["queued"])
    raise Failure("in %d migrations, %s: too few range requests to tell; does the "
                  "destination pre-page, are the trace events compiled in?" % (ATTEMPTS, total))
