# SPDX-License-Identifier: GPL-2.0-or-later
"""With postcopy-preempt, a page the destination waits for must not wait
out a rate-limit window while precopy sends it (series patch "finish a
page precopy sends when the destination waits").

The return path thread leaves a requested host page to precopy when
precopy is sending it (postcopy_preempt_hit).  ram_save_host_page()
calls migration_rate_limit() between the target pages of a huge page,
so without the fix precopy may sleep in that page to the end of the
window ("urgent: 0") and the vCPU with it; with it, precopy finishes
the page first, and a hit during a wait ends the wait ("urgent: 1").
The check reads the source's trace in order: a target page of a hit
host page (ram_save_page) sent after a wait that ran to its end, which
came after the hit, is a page the destination waited a window for.  No
time is measured."""

import re
from typing import Dict, Iterable

from . import BugSeen, Failure, preempt_migrations

# MiB/s: a window (100 ms) carries less than a 2 MiB page, so precopy
# sleeps inside every huge page it sends.
POSTCOPY_BANDWIDTH = 16
EVENTS = ["postcopy_preempt_hit", "migration_rate_limit_post", "ram_save_page"]
MIN_SERVED = 4              # without the fix, nearly all of them wait
ATTEMPTS = 6                # migrations to see them in (2-3 a migration)
HIT = re.compile(r"postcopy_preempt_hit ramblock (\S+) offset 0x([0-9a-f]+)")
SAVE = re.compile(r"ram_save_page (\S+): offset: 0x([0-9a-f]+)")


def count_hits(lines: Iterable[str], host_page: int) -> Dict[str, int]:
    """Hits; hit host pages precopy went on sending ("served"); and those
    of them it sent more of after a wait that ran out ("waited")."""
    hit_at: Dict[tuple, int] = {}      # (block, host page) -> waits run out before its hit
    served, waited = set(), set()
    hits = sleeps = 0
    for ln in lines:
        if "migration_rate_limit_post" in ln:
            sleeps += ln.rstrip().endswith("urgent: 0")
            continue
        m = HIT.search(ln)
        if m:
            hits += 1
            hit_at.setdefault((m.group(1), int(m.group(2), 16) // host_page), sleeps)
            continue
        m = SAVE.search(ln)
        if m:
            k = (m.group(1), int(m.group(2), 16) // host_page)
            if k in hit_at:
                served.add(k)
                if sleeps > hit_at[k]:
                    waited.add(k)
    return {"hits": hits, "served": len(served), "waited": len(waited)}


def preempt_hit(ctx, name: str, session, start, ram: str, host_page: int) -> str:
    args = [a for ev in EVENTS for a in ("-trace", ev)]
    total = {"hits": 0, "served": 0, "waited": 0}
    for attempt, v, c, total in preempt_migrations(ctx, name, session, start, ram, ATTEMPTS,
                                                   POSTCOPY_BANDWIDTH, args,
                                                   lambda f: count_hits(f, host_page)):
        if c["waited"]:
            raise BugSeen("precopy slept out its rate-limit window inside %d of the %d host "
                          "pages the return path left it (%s, migration %d): the destination "
                          "waited a window for each" % (c["waited"], c["served"], c, attempt))
        if total["served"] >= MIN_SERVED:
            return "%s; %d migration(s), %d preempt hits: precopy finished each of the %d " \
                "hit host pages it was sending without sleeping out a window" % (
                    v["line"], attempt, total["hits"], total["served"])
    raise Failure("in %d migrations, %s: too few preempt hits to tell; are the trace events "
                  "compiled in?" % (ATTEMPTS, total))
